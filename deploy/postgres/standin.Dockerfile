# A stand-in for the official PostgreSQL image, for machines that reach no image registry
# (make test-compose and make test-swarm build it then): Debian's postgresql package behind
# an entrypoint that honours the part of the official image's interface modelgate uses
# (POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE, PGDATA, uid 999 or any --user,
# port 5432).
# With a registry, compose.yaml and the stack file use the official image instead.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/sh postgres \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 libnss-wrapper \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* \
    && rm -rf /var/lib/postgresql/15 /etc/postgresql/15 \
    && install -d -o postgres -g postgres -m 1777 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
