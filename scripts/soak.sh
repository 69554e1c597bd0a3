#!/usr/bin/env bash
# The soak: N messages (5 % always failing, some failing once, some longer than the shutdown
# deadline) through a local-ecs fleet of queue-worker tasks that are stopped with SIGTERM at
# random while messages flow, then exact accounting (tests/it/soak.rs says what is checked).
#   scripts/soak.sh                                  100000 messages, 10 restarts, 3 tasks
#   scripts/soak.sh --messages 3000 --restarts 2     the short form CI runs
#   scripts/soak.sh --messages 1000000 --restarts 30 the long one: about 40 minutes on 2 busy
#                                                    cores (15 with a release --worker-bin)
#   --worker-bin PATH                                run that queue-worker (e.g. a release
#                                                    build) instead of cargo test's debug one
# At most 1,000,000 messages: each message's number rides in its job's duration as nanoseconds
# and must stay below 1 ms (tests/it/soak.rs).
# The counts are printed (a "DRILL {...}" line) and written to target/drill-reports/soak.json.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

messages=100000
restarts=10
tasks=3
worker_bin=
usage="usage: $(basename "$0") [--messages N] [--restarts R] [--tasks T] [--worker-bin PATH]"
number() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1 needs a whole number, got '${2:-}' ($usage)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) number "$1" "${2:-}"; messages="$2"; shift 2 ;;
    --restarts) number "$1" "${2:-}"; restarts="$2"; shift 2 ;;
    --tasks) number "$1" "${2:-}"; tasks="$2"; shift 2 ;;
    --worker-bin) [ -f "${2:-}" ] && [ -x "$2" ] || die "--worker-bin needs an executable, got '${2:-}'"
      worker_bin="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) die "unknown argument '$1' ($usage)" ;;
  esac
done
[ "$messages" -ge 1 ] && [ "$messages" -le 1000000 ] || die "--messages must be 1..1000000"
[ "$tasks" -ge 1 ] || die "--tasks must be at least 1"
cd "$REPO_ROOT"

command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
bash scripts/setup.sh
# Dummy AWS settings: nothing in the soak may reach real AWS.
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
export SOAK_MESSAGES="$messages" SOAK_RESTARTS="$restarts" SOAK_TASKS="$tasks"
if [ -n "$worker_bin" ]; then export SOAK_WORKER_BIN="$worker_bin"; else unset SOAK_WORKER_BIN; fi
step "soak: $messages messages, $restarts restarts, $tasks tasks, worker ${worker_bin:-the debug build from cargo test}"
started=$(date +%s)
cargo test --locked --test it soak::soak -- --ignored --exact --nocapture
step "soak passed in $(( $(date +%s) - started ))s (counts in target/drill-reports/soak.json)"
