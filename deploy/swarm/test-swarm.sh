#!/usr/bin/env bash
# make test-swarm: build the images, deploy the stack on a single-node Docker Swarm with
# deploy/swarm/deploy.sh (3 inference, 2 auth, 2 crypto replicas; users in PostgreSQL),
# run the integration and security suites through its nginx and then tests/swarm
# (limits and revocations across replicas, a killed replica, a rolling update), and
# always remove the stack with its volumes and secrets.
#
# Like make test-compose it installs Docker when missing, starts dockerd when none runs,
# and builds stand-in base images when no registry answers. It initialises a swarm when
# the engine is in none (advertising 127.0.0.1) and leaves it again afterwards.
set -euo pipefail

: "${MG_VENV:?run through make test-swarm}" "${MG_ROOT:?run through make test-swarm}"
cd "$MG_ROOT"
PY="$MG_VENV/bin/python"
WORK="$MG_VAR_DIR/swarm"
mkdir -p "$WORK"
TIER=swarm
# shellcheck source=deploy/docker-lib.sh
. deploy/docker-lib.sh

export MG_STACK_NAME="${MG_SWARM_STACK:-modelgate-test}"
# Not the defaults of stack.yaml, so a deployment of one's own may run beside it.
export MG_SWARM_EDGE_SUBNET="${MG_TEST_SWARM_EDGE_SUBNET:-10.232.0.0/24}"
export MG_SWARM_BACKEND_SUBNET="${MG_TEST_SWARM_BACKEND_SUBNET:-10.232.1.0/24}"
# Every test client reaches nginx from one address (Swarm's port publishing), so the
# per-address sign-in limits are raised, as on compose (the per-address tests are native).
export MG_NGINX_LOGIN_RATE=1000r/s MG_NGINX_LOGIN_BURST=1000 MG_RATELIMIT_LOGIN=100000/minute
export MG_SWARM_RESOLVE_IMAGE=never  # the images exist on this node only
TEST_VAR_DIR="$WORK/var"
export MG_TEST_LOG_DIR="$TEST_VAR_DIR/log"

docker_ready
SWARM_STARTED=""
DEPLOYED=""
remove_stack() {
    docker stack rm "$MG_STACK_NAME" >/dev/null 2>&1 || true
    # Volumes can go once the stack's containers are gone.
    for _ in $(seq 1 120); do
        [[ -z $(docker ps -aq --filter "label=com.docker.stack.namespace=$MG_STACK_NAME") ]] && break
        sleep 0.5
    done
    docker volume ls -q --filter "label=com.docker.stack.namespace=$MG_STACK_NAME" |
        xargs -r docker volume rm >/dev/null 2>&1 || true
}
teardown() {
    local status=$?
    if ((status != 0)) && [[ -n $DEPLOYED ]]; then
        docker service ls --filter "label=com.docker.stack.namespace=$MG_STACK_NAME" >&2 || true
        for service in $(docker service ls -q --filter "label=com.docker.stack.namespace=$MG_STACK_NAME"); do
            docker service ps --no-trunc "$service" 2>&1 | head -5 >&2 || true
        done
    fi
    if [[ -n $DEPLOYED ]]; then
        remove_stack
        say "stack, its volumes and secrets removed"
    fi
    if [[ -n $SWARM_STARTED ]]; then
        docker swarm leave --force >/dev/null 2>&1 || true
        say "left the swarm this run initialised"
    fi
    stop_dockerd
    printf '== swarm: done in %ss, exit %s\n' "$((SECONDS - started))" "$status"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM
if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') != active ]]; then
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    SWARM_STARTED=1
fi
phase "Docker ready, swarm active ($(docker version --format '{{.Server.Version}}'))"

COMPOSE_FILE=compose.yaml prepare_images

# A stack left by an interrupted run would keep its old volumes (users, counters).
remove_stack
DEPLOYED=1
deploy/swarm/deploy.sh -c deploy/swarm/test-override.yaml | sed 's/^/   /'
export MG_STACK=swarm MG_BASE_URL="https://localhost:$MG_HTTPS_PORT"
"$PY" - <<'PYTHON' || die "nginx does not answer"
import os
import time

import httpx

from tests.conftest import make_client

deadline = time.monotonic() + 60
while True:
    try:
        with make_client(os.environ["MG_BASE_URL"], "certs/ca.pem") as client:
            if client.get("/healthz").status_code == 200:
                break
    except httpx.HTTPError:
        if time.monotonic() > deadline:
            raise
    time.sleep(1)
PYTHON
phase "stack deployed, every replica healthy, https://localhost:$MG_HTTPS_PORT answers"

MG_VAR_DIR="$TEST_VAR_DIR" "$PY" -m pytest -m "stack and not native and not compose" tests "$@"
phase "suites passed"
