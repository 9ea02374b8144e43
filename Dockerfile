# Every Python image of modelgate: the three services and the operator CLI, the package a
# build argument. Build context: the repository root (compose.yaml builds them all):
#     docker build --build-arg MG_PACKAGE=auth -t modelgate/auth:local .
#     docker build --build-arg MG_PACKAGE=cli --target cli -t modelgate/cli:local .
# MG_PACKAGE: auth, inference or crypto (a service: gunicorn, the default target `service`),
# or cli (`modelgate` with every package it drives, target `cli`).
#
# Everything up to the package's own source is the same for every package, so Docker builds
# the dependencies once and the images share those layers.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
# Every dependency from the hash-pinned lock, as wheels only (no compiler anywhere).
# When build/wheels/ holds wheels (make test-compose downloads them on the host when
# the build cannot reach the package index), pip installs offline from them.
COPY requirements.txt build/wheel[s] /tmp/deps/
RUN set -eu; \
    python3 -m venv /opt/venv; \
    source=""; if ls /tmp/deps/*.whl >/dev/null 2>&1; then source="--no-index --find-links=/tmp/deps"; fi; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes \
        --only-binary=:all: $source -r /tmp/deps/requirements.txt; \
    /opt/venv/bin/pip uninstall --yes --no-cache-dir pip setuptools >/dev/null 2>&1 || true; \
    echo /app/src > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/modelgate.pth"; \
    rm -rf /tmp/deps

# Swagger UI's release files for /docs (MG_PUBLIC_DOCS=1), for the CLI image, which writes
# the folder nginx serves: the npm package swagger-ui-dist exactly as
# nginx/docs/package-lock.json pins it (version and SHA-512). When build/docs-ui/ holds it
# (`make docs-ui`, which make test-compose runs where a build cannot reach a registry), it is
# taken once its installed version and hash are the lock's; otherwise Debian's npm, in this
# throwaway stage only, installs it with `npm ci` from that lock.
FROM ${PYTHON_IMAGE} AS docs-ui
COPY nginx/docs/package.json nginx/docs/package-lock.json /tmp/docs-ui/
# (the lock is named here too: a COPY whose every source is missing fails)
COPY nginx/docs/package-lock.json build/docs-ui/node_module[s] /tmp/docs-ui/prepared/
RUN set -eu; \
    cd /tmp/docs-ui; \
    if [ -d prepared/swagger-ui-dist ]; then \
        python3 -c 'import json, sys; \
pin = lambda lock: {k: json.load(open(lock))["packages"]["node_modules/swagger-ui-dist"][k] for k in ("version", "integrity")}; \
pin("package-lock.json") == pin("prepared/.package-lock.json") or sys.exit("build/docs-ui/ was not installed from nginx/docs/package-lock.json: run make docs-ui")'; \
        mv prepared/swagger-ui-dist dist; \
    else \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm >/dev/null; \
        npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; \
        mv node_modules/swagger-ui-dist dist; \
    fi; \
    mkdir /opt/swagger-ui; \
    cp dist/LICENSE dist/*.js dist/*.css dist/*.png dist/*.html /opt/swagger-ui/

# The package's source and what it imports, byte-compiled now: the root file system is
# read-only at run time.
FROM ${PYTHON_IMAGE} AS source
ARG MG_PACKAGE
COPY libs/common/src/ /app/src/
COPY services/auth/src/ /tmp/services/auth/src/
COPY services/inference/src/ /tmp/services/inference/src/
COPY services/crypto/src/ /tmp/services/crypto/src/
COPY cli/src/ /tmp/cli/
RUN set -eu; \
    case "${MG_PACKAGE:-}" in \
        auth|inference|crypto) cp -r "/tmp/services/$MG_PACKAGE/src/." /app/src/ ;; \
        cli) for s in /tmp/services/*/src; do cp -r "$s/." /app/src/; done; cp -r /tmp/cli/. /app/src/ ;; \
        *) echo "MG_PACKAGE must be auth, inference, crypto or cli, not '${MG_PACKAGE:-}'" >&2; exit 1 ;; \
    esac; \
    python3 -m compileall -q /app/src

FROM ${PYTHON_IMAGE} AS runtime
ARG MG_UID=10001
ARG MG_GID=10001
ENV MG_SERVICE_BIND=0.0.0.0 \
    MG_VAR_DIR=/var/lib/modelgate \
    MG_SECRETS_DIR=/run/secrets \
    XDG_RUNTIME_DIR=/var/lib/modelgate/run \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# libgomp1: the OpenMP runtime LightGBM and XGBoost models load with.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && groupadd --non-unique --gid "$MG_GID" modelgate \
    && useradd --non-unique --uid "$MG_UID" --gid "$MG_GID" --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin modelgate \
    && mkdir -p /var/lib/modelgate/data /var/lib/modelgate/log /var/lib/modelgate/run \
    && chown -R "$MG_UID:$MG_GID" /var/lib/modelgate
COPY --from=deps /opt/venv /opt/venv
COPY deploy/gunicorn.conf.py /app/gunicorn.conf.py
COPY --from=source /app/src/ /app/src/
ARG MG_PACKAGE
ENV MG_SERVICE=${MG_PACKAGE}
USER ${MG_UID}:${MG_GID}
WORKDIR /var/lib/modelgate

# The operator CLI, as compose runs it (`init`, `cli`): modelgate_cli.container runs the
# command as the right user and hands each service its copies of the files it reads.
FROM runtime AS cli
COPY --from=docs-ui /opt/swagger-ui/ /opt/swagger-ui/
ENV MG_SWAGGER_UI_DIR=/opt/swagger-ui
ENTRYPOINT ["python3", "-m", "modelgate_cli.container"]
CMD ["--help"]

# A service (the default target): gunicorn with the app MG_SERVICE names.
FROM runtime AS service
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2)"]
CMD ["gunicorn", "-c", "/app/gunicorn.conf.py"]
