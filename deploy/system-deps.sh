#!/usr/bin/env bash
# The Debian packages a make target needs: installed with apt-get when missing and run as
# root, else named with the command that installs them.
#   stack: what the native stack runs (nginx, Redis): make run, make up
#   test:  the stack's, PostgreSQL (the auth tests start a throwaway cluster), Chromium and
#          certutil (the browser test of the API docs): make test
#   docs:  npm, which installs Swagger UI's files for /docs: make docs-ui
set -euo pipefail

missing=()
need() { # package, then the check that tells it is there
    local package=$1; shift
    "$@" >/dev/null 2>&1 || missing+=("$package")
}
has() { command -v "$1"; }
postgres() { [[ -n ${MG_TEST_POSTGRES_BINDIR:-} ]] || ls /usr/lib/postgresql/*/bin/initdb; }

case "${1:-}" in
stack | test)
    need nginx has nginx
    need redis-server has redis-server
    ;;&
test)
    need postgresql postgres
    need chromium has chromium
    need libnss3-tools has certutil
    ;;
stack) ;;
docs)
    need npm has npm
    ;;
*)
    echo "usage: system-deps.sh stack|test|docs" >&2; exit 2
    ;;
esac

((${#missing[@]})) || exit 0
if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "modelgate needs: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
    exit 1
fi
