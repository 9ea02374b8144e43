# Shared by make test-compose and make test-swarm (sourced, not run): a Docker engine,
# base images (official, or local stand-ins when no registry answers), wheels from the
# hashed lock, the images built, and a tidy exit. Callers set WORK, MG_VENV, MG_ROOT.
# shellcheck shell=bash

STANDIN_DEBIAN=modelgate-standin/debian:bookworm-slim
STANDIN_PYTHON=modelgate-standin/python:3.11-slim-bookworm
STANDIN_POSTGRES=modelgate-standin/postgres:bookworm
OFFICIAL_DEBIAN=debian:bookworm-slim
OFFICIAL_PYTHON=python:3.11-slim-bookworm
OFFICIAL_POSTGRES=postgres:16-bookworm

started=$SECONDS
phase_start=$SECONDS
phase() {
    printf '== %s: %s (%ss)\n' "$TIER" "$1" "$((SECONDS - phase_start))"
    phase_start=$SECONDS
}
say() { printf '   %s\n' "$*"; }
die() { printf 'test-%s: %s\n' "$TIER" "$*" >&2; exit 1; }
is_root() { [[ $(id -u) == 0 ]]; }

apt_install() {
    is_root && command -v apt-get >/dev/null || die "missing: $* (as root: apt-get install $*)"
    say "installing $* (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Docker's engine and compose, installed when missing; a dockerd started when none answers
# (stop_dockerd stops only that one). Sets COMPOSE to the compose command line.
DOCKERD_PID=""
docker_ready() {
    local need=()
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
    if ! docker info >/dev/null 2>&1; then
        command -v dockerd >/dev/null || apt_install docker.io
        is_root || die "no Docker daemon answers; start one (or run as root to have it started)"
        say "starting dockerd (log: $WORK/dockerd.log)"
        dockerd >"$WORK/dockerd.log" 2>&1 &
        DOCKERD_PID=$!
        for _ in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
        docker info >/dev/null 2>&1 || { stop_dockerd; die "dockerd did not start; see $WORK/dockerd.log"; }
    fi
}
compose() { "${COMPOSE[@]}" "$@"; }
stop_dockerd() {
    [[ -n $DOCKERD_PID ]] || return 0
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    say "stopped the dockerd this run started"
}

# Official base images when a registry answers, else stand-ins built from Debian packages
# (debootstrap), passed to the builds and stack files through MG_*_IMAGE.
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
reachable() { have_image "$1" || timeout 180 docker pull -q "$1" >/dev/null 2>&1; }
base_images() {
    if [[ -n ${MG_PYTHON_IMAGE:-}${MG_DEBIAN_IMAGE:-} ]] ||
        { reachable "$OFFICIAL_PYTHON" && reachable "$OFFICIAL_DEBIAN" && reachable "$OFFICIAL_POSTGRES"; }; then
        return 0
    fi
    say "no image registry reachable: stand-in base images from Debian packages"
    if ! have_image "$STANDIN_DEBIAN"; then
        command -v debootstrap >/dev/null || apt_install debootstrap
        local rootfs
        rootfs=$(mktemp -d /var/tmp/modelgate-rootfs.XXXXXX)
        debootstrap --variant=minbase bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 ||
            die "debootstrap failed; see $WORK/debootstrap.log"
        cat >"$rootfs/etc/apt/sources.list" <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | docker import - "$STANDIN_DEBIAN" >/dev/null
        rm -rf "$rootfs"
        say "imported $STANDIN_DEBIAN"
    fi
    standin_build "$STANDIN_PYTHON" deploy/compose/python-standin.Dockerfile deploy/compose
    standin_build "$STANDIN_POSTGRES" deploy/postgres/standin.Dockerfile deploy/postgres
    export MG_DEBIAN_IMAGE="$STANDIN_DEBIAN" MG_PYTHON_IMAGE="$STANDIN_PYTHON" \
        MG_POSTGRES_IMAGE="$STANDIN_POSTGRES"
}
standin_build() {  # image dockerfile context
    DOCKER_BUILDKIT=0 docker build -q -t "$1" --build-arg "DEBIAN_IMAGE=$STANDIN_DEBIAN" \
        -f "$2" "$3" >"$WORK/standin.log" 2>&1 ||
        { cat "$WORK/standin.log" >&2; die "the stand-in image $1 did not build"; }
}
base_images_said() {
    echo "base images: ${MG_PYTHON_IMAGE:-$OFFICIAL_PYTHON}, ${MG_DEBIAN_IMAGE:-$OFFICIAL_DEBIAN}, ${MG_POSTGRES_IMAGE:-$OFFICIAL_POSTGRES}"
}

# Python wheels from the hashed lock, fetched on the host into build/wheels/ (a build
# cannot verify the package index's TLS); the image builds install from them offline.
# The lock is universal: its markers are evaluated for the base image's Python
# (deploy/requirements-for.py), not the host's.
fetch_wheels() {
    local lock_sum target
    target=$(docker run --rm --network none "${MG_PYTHON_IMAGE:-$OFFICIAL_PYTHON}" \
        python3 -c 'import platform; print(platform.python_version())') ||
        die "the base image ${MG_PYTHON_IMAGE:-$OFFICIAL_PYTHON} runs no python3"
    lock_sum="$(sha256sum requirements.txt | cut -d' ' -f1) python $target"
    if [[ $(cat build/wheels/.lock-sha256 2>/dev/null) != "$lock_sum" ]]; then
        rm -rf build/wheels
        mkdir -p build/wheels
        "$MG_VENV/bin/python" deploy/requirements-for.py "$target" <requirements.txt \
            >"$WORK/requirements-image.txt"
        "$MG_VENV/bin/pip" download -q --disable-pip-version-check --require-hashes \
            --only-binary=:all: --python-version "$target" -r "$WORK/requirements-image.txt" \
            -d build/wheels \
            >"$WORK/wheels.log" 2>&1 ||
            { grep -v '^WARNING: Location' "$WORK/wheels.log" >&2; die "wheel download failed"; }
        echo "$lock_sum" >build/wheels/.lock-sha256
    fi
}

# What both tiers do before they start anything: base images, wheels, the same first-run
# command as the native stack (`modelgate init`), a fresh test log folder the containers
# may write (TEST_VAR_DIR, MG_TEST_LOG_DIR), and the images built (COMPOSE_FILE decides
# which).
prepare_images() {
    base_images
    phase "$(base_images_said)"
    fetch_wheels
    phase "wheels: $(find build/wheels -name '*.whl' | wc -l) in build/wheels"

    "$MG_VENV/bin/modelgate" init | sed 's/^/   /'
    rm -rf "$TEST_VAR_DIR"
    mkdir -p "$MG_TEST_LOG_DIR"
    local uid_gid
    # shellcheck disable=SC1091
    uid_gid=$(set -a && . ./.env && echo "$MG_UID:$MG_GID")
    [[ $(id -u) != 0 ]] || chown "$uid_gid" "$MG_TEST_LOG_DIR"
    phase "modelgate init"

    compose build >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; die "build failed"; }
    phase "images built (log: $WORK/build.log)"
}
