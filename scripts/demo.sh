#!/usr/bin/env bash
# The local demo, in two acts: queue-worker tasks under `local-ecs` (a local stand-in for an ECS
# service) against fauxqs. No AWS account needed.
#
#   Act 1, scale to zero: two tasks, a mix of short, long and one invalid job, then desired
#   count 0 while the long jobs run. Watch ECS refuse to stop the protected tasks, then stop
#   them once their jobs are done.
#   Act 2, yield to ECS: three busy tasks and a producer that keeps the queue full, then a
#   rolling deployment and a scale-in to one task. The old tasks, then the excess ones, stop
#   taking messages, finish their jobs and release protection, and ECS stops them; the backlog
#   waits in the queue for the tasks that stay.
#
# Usage: scripts/demo.sh [--protect before-receive|on-receipt] [--protection agent|off]
#   --protect       when the worker takes protection (default before-receive)
#   --protection    off: no protection, so scale-in and the deployment stop tasks mid-job; their
#                   messages go back to the queue at the worker's shutdown deadline (the
#                   summaries show them)
# Exit 0 only if no message was lost or processed twice, every change completed, every task
# stopped and (with protection) no job of act 2 was interrupted.
# Installs fauxqs into .tools/ (scripts/setup.sh), builds the debug binaries (into
# $CARGO_TARGET_DIR if set), keeps its files in .run/demo/: per act, the workers' logs, the
# local-ecs timeline and its picture (timeline.svg, drawn by scripts/timeline.py). Timings are
# shortened so that it takes about 70 s once the binaries are built (act 1 ~45 s, act 2 ~20 s).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

protect=before-receive
protection=agent
while (($#)); do
  case "$1" in
    --protect) protect="${2:?--protect needs before-receive or on-receipt}"; shift 2 ;;
    --protection) protection="${2:?--protection needs agent or off}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
done
case "$protect" in before-receive | on-receipt) ;; *) die "--protect must be before-receive or on-receipt" ;; esac
case "$protection" in agent | off) ;; *) die "--protection must be agent or off" ;; esac

DEMO_DIR="$RUN_DIR/demo"
started_at=$(date +%s)
failures=() # what went wrong, said once at the end (both acts run whatever happens)
fail() { failures+=("$*"); }

step "installing fauxqs (idempotent)"
bash "$REPO_ROOT/scripts/setup.sh" >/dev/null

# Debug build: it is what the tests build too, so it is usually already there, and a fresh debug
# build is several times faster than the release profile (thin LTO); speed does not matter here.
step "building queue-worker and local-ecs (cargo build, debug profile)"
(cd "$REPO_ROOT" && cargo build --quiet --workspace --bins) || die "cargo build failed"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_ROOT/$TARGET_DIR" ;; esac # cargo ran in REPO_ROOT
WORKER="$TARGET_DIR/debug/queue-worker"
LOCAL_ECS="$TARGET_DIR/debug/local-ecs"

rm -rf "$DEMO_DIR"; mkdir -p "$DEMO_DIR"

# ---- fauxqs: reuse a running one (scripts/fauxqs.sh start), else start our own and stop it after
own_fauxqs=0
if bash "$REPO_ROOT/scripts/fauxqs.sh" status >/dev/null 2>&1; then
  port="$(cat "$RUN_DIR/fauxqs.port")"
else
  port="$(bash "$REPO_ROOT/scripts/fauxqs.sh" start | sed -n 's/^FAUXQS_PORT=//p')"
  own_fauxqs=1
fi
[ -n "$port" ] || die "fauxqs did not start (see $RUN_DIR/fauxqs.log)"
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true

ecs_pid=""
producer_pid=""
producer_stop=""
stop_producer() {
  if [ -n "$producer_pid" ]; then
    touch "$producer_stop"
    for _ in $(seq 100); do kill -0 "$producer_pid" 2>/dev/null || break; sleep 0.1; done
    kill "$producer_pid" 2>/dev/null || true
    wait "$producer_pid" 2>/dev/null || true
    producer_pid=""
  fi
}
stop_fleet() { # SIGTERM to local-ecs, which stops its tasks the way ECS would
  if [ -n "$ecs_pid" ] && kill -0 "$ecs_pid" 2>/dev/null; then
    kill "$ecs_pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$ecs_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$ecs_pid" 2>/dev/null || true
  fi
  [ -z "$ecs_pid" ] || wait "$ecs_pid" 2>/dev/null || true
  ecs_pid=""
}
cleanup() {
  stop_producer
  stop_fleet
  if [ "$own_fauxqs" = 1 ]; then bash "$REPO_ROOT/scripts/fauxqs.sh" stop >/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# sqs OPERATION JSON: one SQS call in the AWS JSON 1.0 protocol (fauxqs needs no signature)
sqs() {
  curl -sS --fail-with-body -X POST "$AWS_ENDPOINT_URL/" \
    -H "X-Amz-Target: AmazonSQS.$1" -H 'Content-Type: application/x-amz-json-1.0' -d "$2"
}
# json EXPR: evaluates EXPR on the JSON read from stdin (as `j`), with the Node that setup installed
json() { "$NODE22" -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const j=JSON.parse(s);console.log($1)})"; }
queue_count() { # URL -> visible + in flight + delayed
  sqs GetQueueAttributes "{\"QueueUrl\":\"$1\",\"AttributeNames\":[\"All\"]}" \
    | json '["ApproximateNumberOfMessages","ApproximateNumberOfMessagesNotVisible","ApproximateNumberOfMessagesDelayed"].map(k=>+(j.Attributes[k]||0)).reduce((a,b)=>a+b)'
}
say() { echo "  >>> $*"; }
now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# start_fleet DIR TASKS [local-ecs up flags]: local-ecs in the background, its control port in
# DIR/control.port, the tasks' logs in DIR/logs, its timeline in DIR/timeline.jsonl; the tasks
# read their settings from the environment.
start_fleet() {
  local dir="$1" tasks="$2"; shift 2
  mkdir -p "$dir/logs"
  echo "------------------------------------------------------------------ local-ecs timeline"
  "$LOCAL_ECS" up --tasks "$tasks" --control-port 0 --port-file "$dir/control.port" \
    --log-dir "$dir/logs" --timeline "$dir/timeline.jsonl" "$@" &
  ecs_pid=$!
  for _ in $(seq 100); do [ -s "$dir/control.port" ] && break; sleep 0.1; done
  [ -s "$dir/control.port" ] || die "local-ecs did not start"
  export LOCAL_ECS_PORT_FILE="$dir/control.port"
  for _ in $(seq 100); do [ "$(running)" = "$tasks" ] && break; sleep 0.1; done
}
running() { "$LOCAL_ECS" status --json | json 'j.running+j.stopping'; }
# status_is EXPR: whether EXPR holds for local-ecs's status (as `j`)
status_is() { [ "$("$LOCAL_ECS" status --json | json "($1) ? 1 : 0")" = 1 ]; }
# wait_status SECONDS EXPR: polls status_is every 0.25 s; fails after SECONDS
wait_status() {
  local end=$(($(date +%s) + $1))
  until status_is "$2"; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.25
  done
}

# books LOG_DIR [BEFORE_EPOCH_S]: from the workers' JSON logs, "processed twice interrupted" and,
# per yield reason, the tasks that started yielding before BEFORE (e.g. "deployment=1,2,3").
# processed: distinct message ids with a "done" log line (a job that ran to success and whose
# message was handed to the deleter); interrupted: jobs cancelled at the shutdown deadline.
books() {
  "$NODE22" -e '
    const fs = require("fs"), path = require("path");
    const [dir, before] = [process.argv[1], +(process.argv[2] || Infinity) * 1000];
    const done = new Map(), yielders = {}; let cancelled = 0;
    for (const f of fs.readdirSync(dir)) {
      const m = /^task-(\d+)\.log$/.exec(f); if (!m) continue;
      for (const line of fs.readFileSync(path.join(dir, f), "utf8").split("\n")) {
        let e; try { e = JSON.parse(line); } catch { continue; }
        const id = e.span && e.span.message_id;
        if (e.message === "done" && id) done.set(id, (done.get(id) || 0) + 1);
        if (/^cancelled at the shutdown deadline/.test(e.message || "")) cancelled++;
        if (e.yield === "start" && Date.parse(e.timestamp) < before)
          (yielders[e.reason] ||= new Set()).add(+m[1]);
      }
    }
    const twice = [...done.values()].filter(n => n > 1).length;
    const ys = Object.entries(yielders).map(([r, s]) => r + "=" + [...s].sort((a, b) => a - b).join(","));
    console.log(done.size, twice, cancelled, ...ys);
  ' "$@"
}
# yielders REASON BOOKS...: the tasks of "REASON=1,2" among the books' words, or "none"
yielders() {
  local reason="$1" w; shift
  for w in "$@"; do [ "${w%%=*}" = "$reason" ] && { echo "${w#*=}"; return; }; done
  echo none
}
# draw DIR TITLE: DIR/timeline.svg from DIR/timeline.jsonl and DIR/logs
draw() {
  python3 "$REPO_ROOT/scripts/timeline.py" --events "$1/timeline.jsonl" --logs "$1/logs" \
    --out "$1/timeline.svg" --title "$2" >/dev/null || fail "scripts/timeline.py could not draw $1"
}

suffix="$(date +%H%M%S)-$$"

# =============================================================================== act 1
# Scale to zero mid-job: ECS waits for the protected tasks' long jobs, then stops them.
LONG_JOB=40s          # the jobs still running when we scale to zero
STOP_TIMEOUT=15s      # ECS stopTimeout: SIGKILL this long after SIGTERM
SHUTDOWN_TIMEOUT=10s  # the worker's drain deadline, below STOP_TIMEOUT
WAIT_FOR_STOP=120     # seconds to wait for the tasks to stop after scale-in
ACT1_DIR="$DEMO_DIR/scale-to-zero"
act1_started=$(date +%s)

echo
step "act 1: scale to zero while long jobs run"
dlq_url="$(sqs CreateQueue "{\"QueueName\":\"demo-dlq-$suffix\"}" | json j.QueueUrl)"
dlq_arn="$(sqs GetQueueAttributes "{\"QueueUrl\":\"$dlq_url\",\"AttributeNames\":[\"QueueArn\"]}" | json j.Attributes.QueueArn)"
policy="{\\\"deadLetterTargetArn\\\":\\\"$dlq_arn\\\",\\\"maxReceiveCount\\\":\\\"2\\\"}"
queue_url="$(sqs CreateQueue "{\"QueueName\":\"demo-$suffix\",\"Attributes\":{\"RedrivePolicy\":\"$policy\"}}" | json j.QueueUrl)"
step "queue $queue_url (dead-letter queue after 2 receives: ${dlq_url##*/})"

# ---- the service: 2 tasks; the workers read their settings from the environment
export QUEUE_URL="$queue_url" WORKER_LOG_FORMAT=json \
  WORKER_PROTECT="$protect" WORKER_PROTECTION="$protection" WORKER_PROTECTION_DURATION=1m \
  WORKER_WAIT_TIME=5s WORKER_IDLE_WINDOW=2s WORKER_SHUTDOWN_TIMEOUT="$SHUTDOWN_TIMEOUT" \
  WORKER_RETRY_BASE=1s WORKER_VISIBILITY_TIMEOUT=30s
step "starting local-ecs with 2 tasks (protect: $protect, protection: $protection); worker logs in ${ACT1_DIR#"$REPO_ROOT"/}/logs"
start_fleet "$ACT1_DIR" 2 --reconcile 1s --stop-timeout "$STOP_TIMEOUT"
sleep 2 # let the workers start polling

# ---- the work: 12 short jobs, 4 long ones, one invalid body
say "sending 12 short jobs (1-3 s), 4 long jobs ($LONG_JOB) and 1 invalid body"
"$WORKER" send --durations "$LONG_JOB,1s,2s,3s" --count 4 | sed 's/^/  >>> /'
"$WORKER" send --body 'this is not a job' | sed 's/^/  >>> /'
sent=17

sleep 8
say "scaling to zero while the long jobs run: local-ecs scale --desired 0"
"$LOCAL_ECS" scale --desired 0 >/dev/null
scaled_at=$(date +%s)
stopped=0
for _ in $(seq $((WAIT_FOR_STOP * 2))); do
  if [ "$(running)" = 0 ]; then stopped=1; break; fi
  sleep 0.5
done
stop_secs=$(($(date +%s) - scaled_at))
blocked_s="$("$LOCAL_ECS" status --json | json 'j.blocked_s.toFixed(1)')"
sleep 1.5 # the dead-letter move and the last deletes settle
stop_fleet
echo "------------------------------------------------------------------"

# ---- the summary, from the workers' JSON logs and the queues
read -r processed twice interrupted _ <<<"$(books "$ACT1_DIR/logs")"
dead="$(queue_count "$dlq_url")"
left="$(queue_count "$queue_url")"
lost=$((sent - processed - dead - left))
draw "$ACT1_DIR" "act 1: scale to zero while long jobs run (protect: $protect, protection: $protection)"

echo "summary, act 1: scale to zero (protect: $protect, protection: $protection)"
printf '  %-34s %s\n' "sent" "$sent" \
  "processed (each exactly once)" "$processed" \
  "processed twice" "$twice" \
  "dead-lettered (invalid body)" "$dead" \
  "interrupted by scale-in" "$interrupted" \
  "back in the queue (not processed)" "$left" \
  "lost" "$lost" \
  "scale-in blocked by protection" "${blocked_s}s" \
  "desired 0 -> all tasks stopped" "$([ "$stopped" = 1 ] && echo "${stop_secs}s" || echo "NOT within ${WAIT_FOR_STOP}s")" \
  "timeline" "${ACT1_DIR#"$REPO_ROOT"/}/timeline.svg" \
  "act 1 took" "$(($(date +%s) - act1_started))s"
if [ "$protection" = off ] && [ "$left" -gt 0 ]; then
  echo "  without protection, scale-in stopped the tasks mid-job: $left messages went back to the queue"
  echo "  at the ${SHUTDOWN_TIMEOUT} shutdown deadline and wait for the next task (nothing lost, work redone)."
fi
[ "$lost" = 0 ] || fail "act 1: $lost messages lost"
[ "$twice" = 0 ] || fail "act 1: $twice messages processed twice"
[ "$stopped" = 1 ] || fail "act 1: the tasks did not stop within ${WAIT_FOR_STOP}s of scale-in"

# =============================================================================== act 2
# Yield to ECS under load: the queue never empties, so the tasks never go idle on their own and
# their protection never lapses. Each worker asks ECS (DescribeServices, every YIELD_POLL) whether
# its service wants it gone; the tasks that ECS wants gone stop receiving, finish their jobs and
# release protection.
JOB=2s             # every job of this act; also the longest
JOB_S=2
CONCURRENCY=4      # jobs at once per task
YIELD_POLL=1s      # the worker's --yield-poll
YIELD_POLL_S=1
RECONCILE=250ms    # local-ecs's scheduler period
RECONCILE_S=0.25
TASKS=3
SCALE_TO=1         # the scale-in's desired count
BACKLOG=60         # up-front: 10 s of work for the 3 tasks (6 jobs/s)
RATE=8             # then jobs/s from the producer: more than the fleet does, so the queue stays full
# A job outlasts the worker's drain deadline, as the long jobs of act 1 do: a SIGTERM mid-job
# would cut it (and does, with --protection off). Yielding is what keeps every job whole.
STOP_TIMEOUT2=5s
SHUTDOWN_TIMEOUT2=1s
WAIT_FOR_CHANGE=60 # seconds each change may take before the act gives up on it
# How long a change should take: the longest job, one poll period (with its 20 % jitter) and
# two reconciles (the one that sees protection released, the one that sees the task gone).
bound_s="$(awk -v j="$JOB_S" -v p="$YIELD_POLL_S" -v r="$RECONCILE_S" 'BEGIN { printf "%.1f", j + 1.2 * p + 2 * r }')"
ACT2_DIR="$DEMO_DIR/yield"
act2_started=$(date +%s)

echo
step "act 2: a rolling deployment and a scale-in while a producer keeps the queue busy"
queue_url="$(sqs CreateQueue "{\"QueueName\":\"demo-yield-$suffix\"}" | json j.QueueUrl)"
step "queue $queue_url"
export QUEUE_URL="$queue_url" WORKER_CONCURRENCY="$CONCURRENCY" WORKER_YIELD_POLL="$YIELD_POLL" \
  WORKER_WAIT_TIME=1s WORKER_IDLE_WINDOW=1s WORKER_PROTECTION_MIN_HOLD=0s \
  WORKER_SHUTDOWN_TIMEOUT="$SHUTDOWN_TIMEOUT2"
sent_file="$ACT2_DIR/sent"
producer_stop="$ACT2_DIR/producer.stop"
mkdir -p "$ACT2_DIR"
: >"$sent_file"

# send_jobs N: N more jobs of $JOB; the number sent (from send's summary line) goes to $sent_file
send_jobs() {
  local out
  out="$("$WORKER" send --duration "$JOB" --count "$1" 2>/dev/null || true)"
  sed -n 's/^sent \([0-9]*\) of .*/\1/p' <<<"$out" >>"$sent_file"
}
say "a backlog of $BACKLOG jobs ($JOB each), then a producer adding $RATE a second until the end of the act"
send_jobs "$BACKLOG"
step "starting local-ecs with $TASKS tasks (concurrency $CONCURRENCY, yield poll $YIELD_POLL); worker logs in ${ACT2_DIR#"$REPO_ROOT"/}/logs"
start_fleet "$ACT2_DIR" "$TASKS" --reconcile "$RECONCILE" --stop-timeout "$STOP_TIMEOUT2"
(
  while [ ! -e "$producer_stop" ]; do send_jobs "$RATE"; sleep 1; done
) &
producer_pid=$!

# Every task busy before the changes: each has started a job.
for _ in $(seq 120); do
  busy="$( (grep -l "\"working for $((JOB_S * 1000)) ms\"" "$ACT2_DIR"/logs/task-*.log 2>/dev/null || true) | wc -l)"
  [ "$busy" -ge "$TASKS" ] && break
  sleep 0.25
done
[ "$busy" -ge "$TASKS" ] || fail "act 2: not every task got to work ($busy of $TASKS)"
sleep 4

say "rolling deployment (maximum 200 %, minimum healthy 100 %): local-ecs deploy"
queued_at_deploy="$(queue_count "$queue_url")"
t0="$(now)"
revision="$( ("$LOCAL_ECS" deploy || true) | sed -n 's/^deployment of revision \([0-9]*\) started$/\1/p')"
[ -n "$revision" ] || die "local-ecs deploy did not say which revision it deploys"
if wait_status "$WAIT_FOR_CHANGE" "j.deployments.length == 1 && j.deployments[0].revision == $revision \
    && j.deployments[0].rollout_state == 'COMPLETED' && j.tasks.every(t => !t.stopping)"; then
  deploy_s="$(secs_since "$t0")"
  say "deployment of revision $revision completed in ${deploy_s}s"
else
  deploy_s=""
  fail "act 2: the deployment did not complete within ${WAIT_FOR_CHANGE}s"
fi
sleep 4

say "scale-in to $SCALE_TO task while the queue is still full: local-ecs scale --desired $SCALE_TO"
queued_at_scale="$(queue_count "$queue_url")"
t0="$(now)"
"$LOCAL_ECS" scale --desired "$SCALE_TO" >/dev/null
if wait_status "$WAIT_FOR_CHANGE" "j.tasks.length == $SCALE_TO && j.tasks.every(t => !t.stopping)"; then
  scale_s="$(secs_since "$t0")"
  say "scale-in completed in ${scale_s}s"
else
  scale_s=""
  fail "act 2: the scale-in did not complete within ${WAIT_FOR_CHANGE}s"
fi
sleep 3

# The end: the producer stops, then the last task is drained by scaling to zero (it yields like
# the others and stops cleanly), instead of a SIGTERM to a busy fleet, which would cut its jobs
# at the 1 s drain deadline: that would be the demo's doing, not ECS's. So every job cancelled
# in this act's logs counts as interrupted, the drain's included.
stop_producer
say "producer stopped; draining the last task: local-ecs scale --desired 0"
t0="$(now)"
"$LOCAL_ECS" scale --desired 0 >/dev/null
if wait_status "$WAIT_FOR_CHANGE" "j.tasks.length == 0"; then
  drain_s="$(secs_since "$t0")"
else
  drain_s=""
  fail "act 2: the last task did not stop within ${WAIT_FOR_CHANGE}s of desired 0"
fi
stop_fleet
echo "------------------------------------------------------------------"

sent2="$(awk '{ s += $1 } END { print s + 0 }' "$sent_file")"
read -r -a words <<<"$(books "$ACT2_DIR/logs" "$t0")" # yields before the drain
processed2="${words[0]}" twice2="${words[1]}" interrupted2="${words[2]}"
left2="$(queue_count "$queue_url")"
lost2=$((sent2 - processed2 - left2))
draw "$ACT2_DIR" "act 2: deployment, scale-in $TASKS -> $SCALE_TO, drain to 0, queue kept busy (protect: $protect, protection: $protection)"
took() { if [ -n "$1" ]; then echo "${1}s (bound ${bound_s}s)"; else echo "NOT within ${WAIT_FOR_CHANGE}s"; fi; }

echo "summary, act 2: yield to ECS under load (protect: $protect, protection: $protection)"
printf '  %-34s %s\n' \
  "deployment rev 1 -> $revision completed" "$(took "$deploy_s")" \
  "scale-in $TASKS -> $SCALE_TO completed" "$(took "$scale_s")" \
  "in the queue as each began" "$queued_at_deploy, then $queued_at_scale messages" \
  "tasks that yielded: deployment" "$(yielders deployment "${words[@]:3}") (the old ones)" \
  "tasks that yielded: scale-in" "$(yielders scale-in "${words[@]:3}") (the excess: $((TASKS - SCALE_TO)))" \
  "sent" "$sent2" \
  "processed (each exactly once)" "$processed2" \
  "processed twice" "$twice2" \
  "jobs interrupted" "$interrupted2" \
  "backlog left in the queue" "$left2" \
  "lost (sent - processed - left)" "$lost2" \
  "last task drained (desired 0)" "$([ -n "$drain_s" ] && echo "${drain_s}s" || echo "NOT within ${WAIT_FOR_CHANGE}s")" \
  "timeline" "${ACT2_DIR#"$REPO_ROOT"/}/timeline.svg" \
  "act 2 took" "$(($(date +%s) - act2_started))s"
echo "  bound: the longest job ($JOB) + one yield poll ($YIELD_POLL, up to 20 % more with its jitter)"
echo "  + two local-ecs reconciles ($RECONCILE each); the backlog is what the producer sent that the"
echo "  tasks had no time for: it waits in the queue for the next task."
if [ "$protection" = off ] && [ "$interrupted2" -gt 0 ]; then
  echo "  without protection, ECS stopped busy tasks at once: $interrupted2 jobs were cut at the"
  echo "  ${SHUTDOWN_TIMEOUT2} shutdown deadline and their messages went back to the queue (nothing lost, work redone)."
fi
[ "$lost2" = 0 ] || fail "act 2: $lost2 messages lost"
[ "$twice2" = 0 ] || fail "act 2: $twice2 messages processed twice"
[ "$left2" -gt 0 ] || fail "act 2: the queue ran dry (the producer did not keep up)"
if [ "$protection" = agent ]; then
  [ "$interrupted2" = 0 ] || fail "act 2: $interrupted2 jobs interrupted"
fi

echo
step "demo took $(($(date +%s) - started_at))s"
if ((${#failures[@]})); then
  for f in "${failures[@]}"; do printf '%s: %s\n' "$(basename "$0")" "$f" >&2; done
  exit 1
fi
step "ok"
