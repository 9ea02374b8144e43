#!/usr/bin/env bash
# make test-compose: build the compose stack, start it, run the integration and security
# suites through its nginx, and always tear it down with its volumes.
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
export COMPOSE_FILE=compose.yaml:deploy/compose/test-override.yaml
# The audit log the suites read, as on the native stack: <MG_VAR_DIR>/log/audit.jsonl.
TEST_VAR_DIR="$WORK/var"
export MG_TEST_LOG_DIR="$TEST_VAR_DIR/log"
# Not the defaults of compose.yaml, so a `docker compose up` of one's own may run beside it.
export MG_INTERNAL_NET="${MG_TEST_INTERNAL_NET:-172.31.252}"
STANDIN_DEBIAN=modelgate-standin/debian:bookworm-slim
STANDIN_PYTHON=modelgate-standin/python:3.11-slim-bookworm
OFFICIAL_DEBIAN=debian:bookworm-slim
OFFICIAL_PYTHON=python:3.11-slim-bookworm

started=$SECONDS
phase_start=$SECONDS
phase() {
    printf '== compose: %s (%ss)\n' "$1" "$((SECONDS - phase_start))"
    phase_start=$SECONDS
}
say() { printf '   %s\n' "$*"; }
die() { printf 'test-compose: %s\n' "$*" >&2; exit 1; }
is_root() { [[ $(id -u) == 0 ]]; }

apt_install() {
    is_root && command -v apt-get >/dev/null || die "missing: $* (as root: apt-get install $*)"
    say "installing $* (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Docker engine and compose -------------------------------------------------------------
need=()
command -v docker >/dev/null || need+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    need+=(docker-compose)
fi
((${#need[@]} == 0)) || apt_install "${need[@]}"
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    COMPOSE=(docker-compose)
    # docker-compose 1.x builds through the Docker API (the classic builder), which also
    # finds the local stand-in base images.
    export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
fi

DOCKERD_PID=""
stop_dockerd() {
    [[ -n $DOCKERD_PID ]] || return 0
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    say "stopped the dockerd this run started"
}
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || apt_install docker.io
    is_root || die "no Docker daemon answers; start one (or run as root to have it started)"
    say "starting dockerd (log: $WORK/dockerd.log)"
    dockerd >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { stop_dockerd; die "dockerd did not start; see $WORK/dockerd.log"; }
fi

compose() { "${COMPOSE[@]}" "$@"; }
teardown() {
    local status=$?
    if ((status != 0)) && [[ -n ${COMPOSE_UP:-} ]]; then
        compose ps >&2 || true
        compose logs --no-color --tail=30 >&2 || true
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

# --- base images ---------------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
reachable() { have_image "$1" || timeout 180 docker pull -q "$1" >/dev/null 2>&1; }
if [[ -z ${MG_PYTHON_IMAGE:-}${MG_DEBIAN_IMAGE:-} ]] &&
    ! { reachable "$OFFICIAL_PYTHON" && reachable "$OFFICIAL_DEBIAN"; }; then
    say "no image registry reachable: stand-in base images from Debian packages"
    if ! have_image "$STANDIN_DEBIAN"; then
        command -v debootstrap >/dev/null || apt_install debootstrap
        rootfs=$(mktemp -d /var/tmp/modelgate-rootfs.XXXXXX)
        debootstrap --variant=minbase bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 ||
            die "debootstrap failed; see $WORK/debootstrap.log"
        cat >"$rootfs/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | docker import - "$STANDIN_DEBIAN" >/dev/null
        rm -rf "$rootfs"
        say "imported $STANDIN_DEBIAN"
    fi
    docker build -q -t "$STANDIN_PYTHON" --build-arg "DEBIAN_IMAGE=$STANDIN_DEBIAN" \
        -f deploy/compose/python-standin.Dockerfile deploy/compose >"$WORK/standin.log" 2>&1 ||
        { cat "$WORK/standin.log" >&2; die "the Python stand-in image did not build"; }
    export MG_DEBIAN_IMAGE="$STANDIN_DEBIAN" MG_PYTHON_IMAGE="$STANDIN_PYTHON"
fi
phase "base images: ${MG_PYTHON_IMAGE:-$OFFICIAL_PYTHON}, ${MG_DEBIAN_IMAGE:-$OFFICIAL_DEBIAN}"

# --- wheels from the hashed lock, fetched on the host ---------------------------------------
lock_sum=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ $(cat build/wheels/.lock-sha256 2>/dev/null) != "$lock_sum" ]]; then
    rm -rf build/wheels
    mkdir -p build/wheels
    "$MG_VENV/bin/pip" download -q --disable-pip-version-check --require-hashes \
        --only-binary=:all: -r requirements.txt -d build/wheels >"$WORK/wheels.log" 2>&1 ||
        { grep -v '^WARNING: Location' "$WORK/wheels.log" >&2; die "wheel download failed"; }
    echo "$lock_sum" >build/wheels/.lock-sha256
fi
phase "wheels: $(find build/wheels -name '*.whl' | wc -l) in build/wheels"

# --- the same first-run command as the native stack ------------------------------------------
"$MG_VENV/bin/modelgate" init | sed 's/^/   /'
rm -rf "$TEST_VAR_DIR"
mkdir -p "$MG_TEST_LOG_DIR"
# shellcheck disable=SC1091
uid_gid=$(set -a && . ./.env && echo "$MG_UID:$MG_GID")
[[ $(id -u) != 0 ]] || chown "$uid_gid" "$MG_TEST_LOG_DIR"
phase "modelgate init"

compose build >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; die "build failed"; }
phase "images built (log: $WORK/build.log)"

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
MG_VAR_DIR="$TEST_VAR_DIR" "$PY" -m pytest -m "stack and not native" tests "$@"
phase "suites passed"
