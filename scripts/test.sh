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
