# Debian trixie with its Python (3.13) and what the unit suite and a native `make up` need,
# for make test-trixie (libgomp1: the OpenMP runtime LightGBM and XGBoost models load with).
# Built on a debootstrap'ed trixie (deploy/ci/test-trixie.sh).
ARG DEBIAN_IMAGE=modelgate-standin/debian:trixie
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv make nginx redis-server postgresql ca-certificates \
        libgomp1 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
ENV LANG=C.UTF-8
