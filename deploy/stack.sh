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
    # One process, not three: each `modelgate` start pays the imports (~1.5 s).
    "$MODELGATE" prepare
}

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid; pid=$(cat "$PIDFILE")
    kill -0 "$pid" 2>/dev/null && echo "$pid"
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
        kill -0 "$pid" 2>/dev/null || { echo "stack stopped"; exit 0; }
        sleep 0.1
    done
    echo "supervisord $pid did not stop within 60 s" >&2; exit 1
    ;;
*)
    echo "usage: stack.sh run|up|down" >&2; exit 2
    ;;
esac
