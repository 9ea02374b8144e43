#!/usr/bin/env bash
# make test-trixie: the unit suite on Debian trixie's Python 3.13 (make test runs everything
# on the host's Python), then `make up` and `make down` of the native stack, in a container
# whose PID 1 is `sleep`, which never reaps a child, as in most container-based CI:
# supervisord daemonizes, so its parent is that PID 1, and once stopped it stays a zombie
# that `make down` must count as stopped.
#
# Wheels for Python 3.13 come from the hashed lock, downloaded on the host (a container
# cannot verify the package index's TLS here); the container runs without a network.
set -euo pipefail

: "${MG_VENV:?run through make test-trixie}" "${MG_ROOT:?run through make test-trixie}"
cd "$MG_ROOT"
WORK="$MG_VAR_DIR/trixie"
mkdir -p "$WORK"
TIER=trixie
# shellcheck source=deploy/docker-lib.sh
. deploy/docker-lib.sh

STANDIN_TRIXIE=modelgate-standin/debian:trixie
IMAGE=modelgate-ci/trixie-python:2
# Kept outside the clone so another run on this machine reuses them.
WHEELS="${MG_TRIXIE_WHEELS:-/var/tmp/modelgate-wheels-py313}"
CONTAINER="modelgate-trixie-$$"

docker_ready
cleanup() {
    local status=$?
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    stop_dockerd
    printf '== trixie: done in %ss, exit %s\n' "$((SECONDS - started))" "$status"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! have_image "$IMAGE"; then
    if ! have_image "$STANDIN_TRIXIE"; then
        command -v debootstrap >/dev/null || apt_install debootstrap
        rootfs=$(mktemp -d /var/tmp/modelgate-rootfs.XXXXXX)
        debootstrap --variant=minbase trixie "$rootfs" >"$WORK/debootstrap.log" 2>&1 ||
            die "debootstrap failed; see $WORK/debootstrap.log"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | docker import - "$STANDIN_TRIXIE" >/dev/null
        rm -rf "$rootfs"
    fi
    DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" -f deploy/ci/trixie.Dockerfile \
        --build-arg "DEBIAN_IMAGE=$STANDIN_TRIXIE" deploy/ci >"$WORK/build.log" 2>&1 ||
        { tail -n 30 "$WORK/build.log" >&2; die "the trixie image did not build"; }
fi
python=$(docker run --rm "$IMAGE" python3 -c 'import platform; print(platform.python_version())')
phase "image $IMAGE (Python $python)"

# The lock as it applies to that Python (pip download judges markers by the host's).
"$MG_VENV/bin/python" deploy/requirements-for.py "$python" <requirements-dev.txt >"$WORK/requirements.txt"
lock_sum=$(sha256sum "$WORK/requirements.txt" | cut -d' ' -f1)
if [[ $(cat "$WHEELS/.lock-sha256" 2>/dev/null) != "$lock_sum" ]]; then
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    platforms=()
    for minor in $(seq 5 39); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
    "$MG_VENV/bin/pip" download -q --disable-pip-version-check --require-hashes \
        --only-binary=:all: --implementation cp --python-version "$python" "${platforms[@]}" \
        --platform manylinux2014_x86_64 --platform linux_x86_64 \
        -r "$WORK/requirements.txt" -d "$WHEELS" >"$WORK/wheels.log" 2>&1 ||
        { grep -v '^WARNING: Location' "$WORK/wheels.log" >&2; die "wheel download failed"; }
    echo "$lock_sum" >"$WHEELS/.lock-sha256"
fi
# The build backend `pip install -e .` needs (pyproject.toml's build-system), fetched as
# pip's build isolation fetches it on a host with an index.
if ! compgen -G "$WHEELS/setuptools-*.whl" >/dev/null; then
    mapfile -t backend < <("$MG_VENV/bin/python" -c \
        'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")')
    "$MG_VENV/bin/pip" download -q --disable-pip-version-check --only-binary=:all: --no-deps \
        "${backend[@]}" -d "$WHEELS" >>"$WORK/wheels.log" 2>&1 ||
        { grep -v '^WARNING: Location' "$WORK/wheels.log" >&2; die "build backend download failed"; }
fi
phase "wheels: $(find "$WHEELS" -name '*.whl' | wc -l) in $WHEELS"

# The committed tree, as a clean clone has it.
git archive --format=tar HEAD >"$WORK/src.tar"
docker run -d --name "$CONTAINER" --network none \
    -v "$WORK/src.tar:/src.tar:ro" -v "$WHEELS:/wheels:ro" "$IMAGE" sleep infinity >/dev/null
workdir=/
in_container() {
    docker exec -e PIP_NO_INDEX=1 -e PIP_FIND_LINKS=/wheels -e PIP_DISABLE_PIP_VERSION_CHECK=1 \
        -w "$workdir" "$CONTAINER" "$@"
}
[[ $(in_container cat /proc/1/comm) == sleep ]] || die "PID 1 is not sleep"
in_container sh -c 'mkdir -p /src && tar -xf /src.tar -C /src'
workdir=/src
in_container make -s venv PYTHON=python3 >"$WORK/venv.log" 2>&1 ||
    { tail -n 30 "$WORK/venv.log" >&2; die "make venv failed on Python $python"; }
phase "make venv on Python $python"

in_container .venv/bin/python -m pytest -m "not stack" -q -p no:cacheprovider "$@"
phase "unit suite passed on Python $python"

in_container make -s up >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "make up failed"; }
supervisord=$(in_container cat var/run/supervisord.pid)
[[ $(in_container sh -c "cut -d' ' -f4 /proc/$supervisord/stat") == 1 ]] ||
    die "supervisord's parent is not PID 1"
in_container make -s down
state=$(in_container sh -c "sed 's/.*) //' /proc/$supervisord/stat | cut -c1")
[[ $state == Z ]] || die "supervisord is in state $state after make down, not a zombie"
phase "make up, then make down with supervisord a zombie under PID 1"
