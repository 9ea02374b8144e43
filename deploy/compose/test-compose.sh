#!/usr/bin/env bash
# make test-compose: build the compose stack (users in PostgreSQL), start it, run the integration and security
# suites through its nginx, and always tear it down with its volumes. Then, with the same
# images, a clean clone of the repository brought up by `docker compose up -d` alone
# (tests/compose/test_compose_fresh_clone.py).
#
# On the way it installs Docker's engine and compose from Debian's packages when missing,
# starts dockerd when none runs (and stops it afterwards), and, when no image registry can
# be reached, builds stand-in base images from Debian packages (debootstrap) and passes them
# as build arguments. Python wheels are always downloaded on the host, from the hashed lock,
# into build/wheels/; the image build installs from them offline.
set -euo pipefail

: "${MG_VENV:?run through make test-compose}" "${MG_ROOT:?run through make test-compose}"
cd "$MG_ROOT"
PY="$MG_VENV/bin/python"
WORK="$MG_VAR_DIR/compose"
mkdir -p "$WORK"

export COMPOSE_PROJECT_NAME="${MG_COMPOSE_PROJECT:-modelgate-test}"
# Users in PostgreSQL (the overlay), so the suites run through nginx against auth on
# PostgreSQL here and on SQLite in the native `make test`.
export COMPOSE_FILE=compose.yaml:deploy/compose/postgres.yaml:deploy/compose/test-override.yaml
# The audit log the suites read, as on the native stack: <MG_VAR_DIR>/log/audit.jsonl.
TEST_VAR_DIR="$WORK/var"
export MG_TEST_LOG_DIR="$TEST_VAR_DIR/log"
# Not the defaults of compose.yaml, so a `docker compose up` of one's own may run beside it.
export MG_INTERNAL_NET="${MG_TEST_INTERNAL_NET:-172.31.252}"
TIER=compose
# shellcheck source=deploy/docker-lib.sh
. deploy/docker-lib.sh

docker_ready
teardown() {
    local status=$?
    if ((status != 0)) && [[ -n ${COMPOSE_UP:-} ]]; then
        compose ps >&2 || true
        compose logs --no-color --tail=30 >&2 || true
        # Every line of every service, kept: a failure mid-suite is often explained by a
        # warning long before the last 30 lines (a rate-limit store that timed out, say).
        compose logs --no-color >"$WORK/failed-run.log" 2>&1 || true
        say "every container's log: $WORK/failed-run.log; warnings and errors:"
        grep -E '"level":"(warning|error|critical)"' "$WORK/failed-run.log" | tail -40 >&2 || true
    fi
    if [[ -n ${COMPOSE_UP:-} ]]; then
        compose down --volumes --remove-orphans --timeout 40 >/dev/null 2>&1 || true
        say "stack and its volumes removed"
    fi
    stop_dockerd
    printf '== compose: done in %ss, exit %s\n' "$((SECONDS - started))" "$status"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM
phase "Docker ready ($("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -1))"

prepare_images

export MG_STACK=compose MG_BASE_URL="https://localhost:$MG_HTTPS_PORT"
export MG_COMPOSE_COMMAND="${COMPOSE[*]}"
COMPOSE_UP=1
compose up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "up failed"; }
"$PY" - <<'EOF' || die "the stack did not become healthy"
import os
from pathlib import Path

from tests.compose.conftest import ComposeProject

project = ComposeProject(
    os.environ["MG_COMPOSE_COMMAND"].split(), os.environ["COMPOSE_PROJECT_NAME"], Path.cwd()
)
project.wait_healthy(os.environ["MG_BASE_URL"], "certs/ca.pem")
EOF
phase "stack up, every container healthy, https://localhost:$MG_HTTPS_PORT answers"

# --- the suites, through nginx -----------------------------------------------------------------
MG_VAR_DIR="$TEST_VAR_DIR" "$PY" -m pytest -m "stack and not native and not swarm and not clone" tests "$@"
phase "suites passed"

# --- a clean clone, on the same ports once this stack is gone ----------------------------------
compose down --volumes --remove-orphans --timeout 40 >/dev/null 2>&1
COMPOSE_UP=""
"$PY" -m pytest -m clone tests/compose "$@"
phase "a clean clone came up with docker compose alone, kept its users across down/up, down -v removed it"
