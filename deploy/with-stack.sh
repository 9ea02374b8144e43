#!/usr/bin/env bash
# Run a command against a native stack started for it, and always stop that
# stack afterwards, whatever the command's outcome.
set -uo pipefail
here=$(dirname "$0")
if "$here/stack.sh" pid >/dev/null; then
    echo "a stack is already running from $MG_VAR_DIR; stop it (make down) so tests start from a known state" >&2
    exit 1
fi
"$here/stack.sh" up || { "$here/stack.sh" down; exit 1; }
trap '"$here/stack.sh" down' EXIT
"$@"
