#!/usr/bin/env bash
# Scale to zero on your laptop: two queue-worker tasks under `local-ecs` (a local stand-in for an
# ECS service) against fauxqs, a mix of short, long and one invalid job, then desired count 0
# while the long jobs run. Watch ECS refuse to stop the protected tasks, then stop them once their
# jobs are done. No AWS account needed.
#
# Usage: scripts/demo.sh [--protect before-receive|on-receipt] [--protection agent|off]
#   --protect       when the worker takes protection (default before-receive)
#   --protection    off: no protection, so scale-in interrupts the long jobs; their messages go
#                   back to the queue at the worker's shutdown deadline (the summary shows them)
# Exit 0 only if no message was lost and every task stopped.
# Installs fauxqs into .tools/ (scripts/setup.sh), builds the debug binaries, keeps its files in
# .run/demo/. Timings are shortened so that it takes about a minute and a half.
set -euo pipefail
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

# ---- timings (short, so the demo is quick)
LONG_JOB=40s          # the jobs still running when we scale to zero
STOP_TIMEOUT=15s      # ECS stopTimeout: SIGKILL this long after SIGTERM
SHUTDOWN_TIMEOUT=10s  # the worker's drain deadline, below STOP_TIMEOUT
WAIT_FOR_STOP=120     # seconds to wait for the tasks to stop after scale-in

DEMO_DIR="$RUN_DIR/demo"
LOG_DIR="$DEMO_DIR/logs"
started_at=$(date +%s)

step "installing fauxqs (idempotent)"
bash "$REPO_ROOT/scripts/setup.sh" >/dev/null

# Debug build: it is what the tests build too, so it is usually already there, and a fresh debug
# build is several times faster than the release profile (thin LTO); speed does not matter here.
step "building queue-worker and local-ecs (cargo build, debug profile)"
(cd "$REPO_ROOT" && cargo build --quiet --workspace --bins) || die "cargo build failed"
WORKER="$REPO_ROOT/target/debug/queue-worker"
LOCAL_ECS="$REPO_ROOT/target/debug/local-ecs"

rm -rf "$DEMO_DIR"; mkdir -p "$LOG_DIR"

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
cleanup() {
  if [ -n "$ecs_pid" ] && kill -0 "$ecs_pid" 2>/dev/null; then
    kill "$ecs_pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$ecs_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$ecs_pid" 2>/dev/null || true
  fi
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

suffix="$(date +%H%M%S)-$$"
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
step "starting local-ecs with 2 tasks (protect: $protect, protection: $protection); worker logs in ${LOG_DIR#"$REPO_ROOT"/}"
echo "------------------------------------------------------------------ local-ecs timeline"
"$LOCAL_ECS" up --tasks 2 --reconcile 1s --stop-timeout "$STOP_TIMEOUT" \
  --control-port 0 --port-file "$DEMO_DIR/control.port" --log-dir "$LOG_DIR" &
ecs_pid=$!
for _ in $(seq 100); do [ -s "$DEMO_DIR/control.port" ] && break; sleep 0.1; done
[ -s "$DEMO_DIR/control.port" ] || die "local-ecs did not start"
export LOCAL_ECS_PORT_FILE="$DEMO_DIR/control.port"
running() { "$LOCAL_ECS" status --json | json 'j.running+j.stopping'; }
for _ in $(seq 100); do [ "$(running)" = 2 ] && break; sleep 0.1; done
sleep 2 # let the workers start polling

# ---- the work: 12 short jobs, 4 long ones, one invalid body
say() { echo "  >>> $*"; }
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
kill "$ecs_pid"; wait "$ecs_pid" 2>/dev/null || true; ecs_pid=""
echo "------------------------------------------------------------------"

# ---- the summary, from the workers' JSON logs and the queues
# processed: distinct message ids with a "done" log line (a job that ran to success and whose
# message was handed to the deleter); interrupted: jobs cancelled at the shutdown deadline.
counts="$(cat "$LOG_DIR"/task-*.log | "$NODE22" -e '
  let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
    const done = new Map(); let cancelled = 0;
    for (const line of s.split("\n")) {
      let e; try { e = JSON.parse(line); } catch { continue; }
      const id = e.span && e.span.message_id;
      if (e.message === "done" && id) done.set(id, (done.get(id) || 0) + 1);
      if (/cancelled at the shutdown deadline/.test(e.message || "")) cancelled++;
    }
    const twice = [...done.values()].filter(n => n > 1).length;
    console.log(done.size, twice, cancelled);
  });')"
read -r processed twice interrupted <<<"$counts"
dead="$(queue_count "$dlq_url")"
left="$(queue_count "$queue_url")"
lost=$((sent - processed - dead - left))
elapsed=$(($(date +%s) - started_at))

echo "summary (protect: $protect, protection: $protection)"
printf '  %-34s %s\n' "sent" "$sent" \
  "processed (each exactly once)" "$processed" \
  "processed twice" "$twice" \
  "dead-lettered (invalid body)" "$dead" \
  "interrupted by scale-in" "$interrupted" \
  "back in the queue (not processed)" "$left" \
  "lost" "$lost" \
  "scale-in blocked by protection" "${blocked_s}s" \
  "desired 0 -> all tasks stopped" "$([ "$stopped" = 1 ] && echo "${stop_secs}s" || echo "NOT within ${WAIT_FOR_STOP}s")" \
  "demo took" "${elapsed}s"
if [ "$protection" = off ] && [ "$left" -gt 0 ]; then
  echo "  without protection, scale-in stopped the tasks mid-job: $left messages went back to the queue"
  echo "  at the ${SHUTDOWN_TIMEOUT} shutdown deadline and wait for the next task (nothing lost, work redone)."
fi
[ "$lost" = 0 ] || die "$lost messages lost"
[ "$twice" = 0 ] || die "$twice messages processed twice"
[ "$stopped" = 1 ] || die "the tasks did not stop within ${WAIT_FOR_STOP}s of scale-in"
step "ok"
