#!/usr/bin/env bash
# The benchmark: queue-worker against sqs-consumer on one fauxqs instance, on loopback and with
# network distance (a delay proxy between the workers and the emulator).
#
#   scripts/bench.sh               full run: 20,000 zero-length jobs x 3 runs, 200 ms scenario,
#                                  idle workers alongside; then network distance: at 0, 20 and
#                                  40 ms round trip, 3,000 jobs of 200 ms and 3,000 zero-length
#                                  jobs for every consumer (about 15 minutes)
#   scripts/bench.sh --quick       smoke run: 2,000 jobs, 1 run, 20 s idle; 500 jobs at 40 ms
#                                  round trip only (about a minute and a half); its results go
#                                  to .run/bench/quick.json and .run/bench/latency-quick.svg
#   scripts/bench.sh [--runs N] [--messages N] [--concurrency N] [--idle-seconds S]
#                    [--rtt-ms 0,20,40] [--latency-messages N] [--latency-runs N]
#                    [--delete-linger 20ms] [--worker-env KEY=VALUE]... [--worker-arg ARG]...
#                    [--worker-bin PATH] [--skip compare,slow,idle,latency]
#
# Network distance: the test kit's delay-proxy sits between the consumers and fauxqs, half the
# round trip each way (0 ms: through the relay without delay; the loopback runs go direct).
# --worker-env / --worker-arg reach `queue-worker run` in every drain; --worker-bin runs another
# build of the worker (the default is this tree's release build).
#
# Installs what it needs (scripts/setup.sh for Node 22 + fauxqs; sqs-consumer from
# bench/package-lock.json into .tools/bench with npm ci), builds the release binary and the
# test kit's agent-double and delay-proxy, then runs bench/bench.py. Prints tables; writes
# bench/results/latest.json and bench/results/latency.svg (not --quick), and keeps each
# consumer's log under .run/bench/.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

args=()
# The committed results are the full run's: a smoke run writes beside its logs instead.
json_out=bench/results/latest.json
svg_out=bench/results/latency.svg
while [ $# -gt 0 ]; do
  case "$1" in
    --quick)
      args+=(--runs 1 --messages 2000 --idle-seconds 20 --rtt-ms 40 --latency-messages 500)
      json_out="$RUN_DIR/bench/quick.json"
      svg_out="$RUN_DIR/bench/latency-quick.svg"
      ;;
    -h|--help) usage; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done

command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
command -v python3 >/dev/null 2>&1 || die "python3 not found (the driver needs only its standard library)"
python3 -c 'import os, sys; sys.exit(0 if hasattr(os, "wait4") and sys.version_info >= (3, 9) else 1)' \
  || die "python3 >= 3.9 is needed (os.wait4, os.waitstatus_to_exitcode)"

BENCH_HOME="$TOOLS_DIR/bench"
install_tools() {
  bash scripts/setup.sh
  # sqs-consumer, exactly as locked in bench/package-lock.json
  local want
  want="$(cat bench/package.json bench/package-lock.json | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$BENCH_HOME/.installed" 2>/dev/null)" != "$want" ] || [ ! -d "$BENCH_HOME/node_modules/sqs-consumer" ]; then
    step "installing sqs-consumer into ${BENCH_HOME#"$REPO_ROOT"/} with npm ci"
    mkdir -p "$BENCH_HOME"
    cp bench/package.json bench/package-lock.json "$BENCH_HOME/"
    ( cd "$BENCH_HOME" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error ) \
      || die "npm ci failed in $BENCH_HOME (see npm's messages above)"
    echo "$want" >"$BENCH_HOME/.installed"
  fi
  # ES modules resolve packages from the script's own folder: run a copy beside node_modules.
  cp bench/sqs-consumer.mjs "$BENCH_HOME/sqs-consumer.mjs"
}

# The installs wait on the network and the build on the CPU: do both at once (on a fresh clone
# this saves the minute and a half the installs take). The installs' output goes to a log,
# shown if they fail.
mkdir -p "$RUN_DIR"
tools_log="$RUN_DIR/bench-setup.log"
step "installing Node 22, fauxqs and sqs-consumer in the background (log: ${tools_log#"$REPO_ROOT"/})"
install_tools >"$tools_log" 2>&1 &
tools_pid=$!

step "cargo build --release (queue-worker, and the test kit's agent-double and delay-proxy)"
if ! cargo build --release --locked --workspace --bin queue-worker --bin agent-double --bin delay-proxy; then
  wait "$tools_pid" || true
  die "cargo build --release failed (see cargo's messages above)"
fi
if ! wait "$tools_pid"; then
  cat "$tools_log" >&2
  die "installing the benchmark's tools failed (their output is above)"
fi
step "tools installed"

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
mkdir -p "$RUN_DIR/bench" bench/results
step "running the benchmark"
python3 bench/bench.py \
  --worker-bin "$TARGET_DIR/release/queue-worker" \
  --agent-bin "$TARGET_DIR/release/agent-double" \
  --delay-proxy-bin "$TARGET_DIR/release/delay-proxy" \
  --node "$NODE22" \
  --fauxqs-server "$FAUXQS_SERVER" \
  --consumer-js "$BENCH_HOME/sqs-consumer.mjs" \
  --out-dir "$RUN_DIR/bench" \
  --json "$json_out" \
  --svg "$svg_out" \
  "${args[@]}"
