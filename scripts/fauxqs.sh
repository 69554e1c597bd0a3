#!/usr/bin/env bash
# fauxqs.sh start [PORT] | stop | status
# Runs scripts/fauxqs-server.mjs in the background (for the demo or a manual session);
# pid, port and log go to the git-ignored .run/. Tests should rather spawn fauxqs-server.mjs
# themselves with a piped stdin, so it dies with them.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PID_FILE="$RUN_DIR/fauxqs.pid"
PORT_FILE="$RUN_DIR/fauxqs.port"
LOG_FILE="$RUN_DIR/fauxqs.log"

running_pid() {
  local pid
  [ -f "$PID_FILE" ] || return 1
  pid="$(cat "$PID_FILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'fauxqs-server.mjs' \
    && echo "$pid"
}

case "${1:-}" in
  start)
    if pid="$(running_pid)"; then
      step "already running (pid $pid)"; echo "FAUXQS_PORT=$(cat "$PORT_FILE")"; exit 0
    fi
    [ -x "$NODE22" ] && [ -f "$FAUXQS_DIR/dist/app.js" ] || die "fauxqs is not installed: run scripts/setup.sh"
    mkdir -p "$RUN_DIR"
    out="$RUN_DIR/fauxqs.out"; : >"$out"; rm -f "$PORT_FILE"
    nohup "$NODE22" "$FAUXQS_SERVER" --port "${2:-0}" --no-stdin-watch </dev/null >"$out" 2>"$LOG_FILE" &
    pid=$!
    echo "$pid" >"$PID_FILE"
    for _ in $(seq 100); do
      port="$(sed -n 's/^FAUXQS_PORT=//p' "$out")"
      [ -n "$port" ] && break
      kill -0 "$pid" 2>/dev/null || die "fauxqs-server exited: $(tail -n 1 "$LOG_FILE")"
      sleep 0.1
    done
    [ -n "${port:-}" ] || { kill "$pid" 2>/dev/null || true; die "fauxqs-server did not report its port within 10 s"; }
    echo "$port" >"$PORT_FILE"
    step "started (pid $pid): AWS_ENDPOINT_URL=http://127.0.0.1:$port"
    echo "FAUXQS_PORT=$port"
    ;;
  stop)
    if pid="$(running_pid)"; then
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      step "stopped (pid $pid)"
    else
      step "not running"
    fi
    rm -f "$PID_FILE" "$PORT_FILE"
    ;;
  status)
    if pid="$(running_pid)"; then step "running (pid $pid) on port $(cat "$PORT_FILE")"; else step "not running"; exit 1; fi
    ;;
  *) die "usage: fauxqs.sh start [PORT] | stop | status" ;;
esac
