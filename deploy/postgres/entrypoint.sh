#!/bin/sh
# The official postgres image's first-start behaviour, reduced to what modelgate uses:
# an empty PGDATA gets a cluster whose superuser is POSTGRES_USER (password from
# POSTGRES_PASSWORD_FILE or POSTGRES_PASSWORD), a database POSTGRES_DB, and password
# (scram-sha-256) authentication for every network client. Like the official image it
# runs as any user (compose runs it as the owner of secrets/): PGDATA is then a folder of
# its own below the volume, and an unknown uid gets a passwd entry through nss_wrapper.
set -eu
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
mkdir -p "$PGDATA"
chmod 700 "$PGDATA"
if ! getent passwd "$(id -u)" >/dev/null 2>&1; then
    NSS_WRAPPER_PASSWD=$(mktemp) NSS_WRAPPER_GROUP=$(mktemp)
    echo "postgres:x:$(id -u):$(id -g):PostgreSQL:$PGDATA:/bin/false" >"$NSS_WRAPPER_PASSWD"
    echo "postgres:x:$(id -g):" >"$NSS_WRAPPER_GROUP"
    LD_PRELOAD=$(ls /usr/lib/*/libnss_wrapper.so)
    export LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
fi
if [ "${1:-postgres}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
    fi
    [ -n "${POSTGRES_PASSWORD:-}" ] || {
        echo "postgres: set POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD)" >&2
        exit 1
    }
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres -q \
            -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres: initialised $PGDATA (database $POSTGRES_DB, owner $POSTGRES_USER)"
fi
if [ "${1:-postgres}" = postgres ]; then
    shift || true
    exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
