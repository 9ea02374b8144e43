#!/usr/bin/env bash
# Start, stop and wait for the native stack. The Makefile exports every MG_*
# setting; run it through `make run|up|down`, not directly.
set -euo pipefail

: "${MG_VAR_DIR:?run through make}" "${MG_VENV:?run through make}"
SUPERVISORD_CONF="$MG_ROOT/deploy/supervisord.conf"
PIDFILE="$MG_VAR_DIR/run/supervisord.pid"
MODELGATE="$MG_VENV/bin/modelgate"

prepare() {
    mkdir -p "$MG_VAR_DIR/run" "$MG_VAR_DIR/log" "$MG_VAR_DIR/redis" "$MG_VAR_DIR/data"
    # The services' Unix sockets, which only nginx's user may open: gunicorn believes
    # X-Forwarded-For only from there. nginx started by root runs its workers as nobody.
    local sockets="$MG_VAR_DIR/run/sockets"
    mkdir -p "$sockets"
    if ((EUID == 0)); then
        chgrp "$(id -gn nobody)" "$sockets" && chmod 0710 "$sockets"
    else
        chmod 0700 "$sockets"
    fi
    # One process, not three: each `modelgate` start pays the imports (~1.5 s).
    "$MODELGATE" prepare
}

# A process that has exited stays in the process table as a zombie (state Z) until its
# parent reaps it, and a zombie passes kill -0. supervisord daemonizes, so its parent is
# PID 1, which in many containers never reaps: only the state tells it has stopped.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    [[ -d /proc/self ]] || return 0 # no procfs: kill -0 is all there is
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # the state follows the command name, which may hold spaces
    [[ ${stat:0:1} != Z ]]
}

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid; pid=$(cat "$PIDFILE")
    alive "$pid" && echo "$pid"
}

case "${1:-}" in
run)
    if pid=$(running_pid); then echo "stack already running (supervisord pid $pid); make down first" >&2; exit 1; fi
    prepare
    echo "modelgate: https://localhost:$MG_HTTPS_PORT (Ctrl-C stops everything; logs in $MG_VAR_DIR/log)"
    exec "$MG_VENV/bin/supervisord" -n -c "$SUPERVISORD_CONF"
    ;;
up)
    if pid=$(running_pid); then echo "stack already running (supervisord pid $pid)"; exit 0; fi
    prepare
    "$MG_VENV/bin/supervisord" -c "$SUPERVISORD_CONF"
    if ! "$MODELGATE" status --wait "${MG_UP_TIMEOUT:-60}"; then
        echo "stack did not become ready; last log lines:" >&2
        tail -n 5 "$MG_VAR_DIR"/log/*.jsonl "$MG_VAR_DIR"/log/*.log >&2 || true
        exit 1
    fi
    ;;
down)
    if ! pid=$(running_pid); then echo "stack not running"; rm -f "$PIDFILE"; exit 0; fi
    kill -TERM "$pid"
    for _ in $(seq 1 600); do
        alive "$pid" || { echo "stack stopped"; exit 0; }
        sleep 0.1
    done
    echo "supervisord $pid did not stop within 60 s" >&2; exit 1
    ;;
pid)
    # The running supervisord's pid; exit status 1 when none runs.
    running_pid
    ;;
*)
    echo "usage: stack.sh run|up|down|pid" >&2; exit 2
    ;;
esac
