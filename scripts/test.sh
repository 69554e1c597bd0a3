#!/usr/bin/env bash
# The one test command: installs what the tests need (idempotent), then runs the whole suite.
#   scripts/test.sh            everything: unit + integration (fauxqs, agent double) tests
#   scripts/test.sh -- NAME    extra arguments go to `cargo test` (e.g. a test name filter)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
bash scripts/setup.sh
[ "${1:-}" = "--" ] && shift
step "cargo test (unit + integration)"
# Dummy AWS settings: nothing in the tests may reach real AWS.
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
rm -rf target/drill-reports
cargo test --locked --workspace --all-targets "$@"
# The fault drills' counts (each drill writes one JSON line there).
if compgen -G "target/drill-reports/*.json" >/dev/null; then
  step "drill reports"
  for f in target/drill-reports/*.json; do cat "$f"; echo; done
fi
# The CloudFormation stack on moto, and the worker built above against its queue (skipped when
# arguments narrow the cargo tests).
if [ "$#" -eq 0 ]; then
  step "deploy/cloudformation stack on moto (tests/deploy/stack_on_moto.py)"
  "$TOOLS_DIR/moto/bin/python" tests/deploy/stack_on_moto.py --worker "${CARGO_TARGET_DIR:-target}/debug/queue-worker"
fi
