#!/usr/bin/env bash
# Yielding to ECS under load: real queue-worker tasks under local-ecs, a queue that never
# empties (2 s jobs, concurrency 4 per task, --yield-poll 1s), and five changes ECS makes:
# a deployment at maximumPercent 200 and at 100, a scale-in 3 -> 1, 8 -> 4, and to zero.
# Prints, per change, how long it took against the bound (longest job + one poll period + two
# reconciles), how many tasks yielded (at most the excess at once), DescribeServices per task
# against one per poll period, and the books: sent = processed once + still queued, 0 lost,
# 0 processed twice, 0 jobs interrupted. scripts/test.sh (and so CI) runs the same tests.
#
# Usage: scripts/yield-check.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
case "${1:-}" in -h | --help) usage; exit 0 ;; "") ;; *) die "unknown argument: $1 (try --help)" ;; esac

command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
bash scripts/setup.sh >/dev/null
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
step "running the yield scenarios (cargo test --test it yielding::)"
out="$(cargo test --locked --test it yielding:: -- --nocapture --test-threads 1 2>&1)" \
  || { printf '%s\n' "$out" | tail -40 >&2; die "a yield scenario failed (its output is above)"; }
mkdir -p "$RUN_DIR"
printf '%s\n' "$out" | sed -n 's/^DRILL //p' >"$RUN_DIR/yield-check.jsonl"
python3 - "$RUN_DIR/yield-check.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'scenario':<26} {'took':>6} {'bound':>6} {'yielded':>8} {'at once':>8} {'DS/task':>8}  books")
for r in rows:
    c = r["counts"]
    took = c.get("completed_s", c.get("all_stopped_s"))
    yielded = c.get("tasks_that_yielded", c.get("old_tasks_yielded"))
    once = c.get("most_yielding_at_once", "-")
    if "unchanged_describe_services_most_per_task" in c:
        ds = f"{c['unchanged_describe_services_most_per_task']}/{c['unchanged_describe_services_allowed']}"
    else:
        ds = f"{c.get('describe_services_most_per_task', '-')}/{c.get('describe_services_allowed', '-')}"
    b = c["books"]
    books = (f"sent {b['sent']} = once {b['processed_once']} + queued {b['still_queued']}; "
             f"lost {b['lost']}, twice {b['processed_twice']}, interrupted {b['jobs_interrupted']}")
    print(f"{r['drill']:<26} {took:>5}s {c['bound_s']:>5}s {yielded:>8} {once:>8} {ds:>8}  {books}")
print("DS/task: the busiest task's DescribeServices calls / one per poll period (an unchanged")
print("service over 6 s where measured, else over the change)")
PY
step "ok"
