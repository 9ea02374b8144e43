# A local stand-in for python:3.11-slim-bookworm, used only when no image registry
# can be reached (make test-compose builds it on top of a debootstrap'ed Debian).
# Debian bookworm's python3 is 3.11, the version of the lock; python3-venv brings
# ensurepip, as the official image has.
ARG DEBIAN_IMAGE=modelgate-standin/debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
ENV LANG=C.UTF-8
CMD ["python3"]
