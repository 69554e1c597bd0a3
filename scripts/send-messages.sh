#!/usr/bin/env bash
# Send test messages to the deployed worker's events queue with `queue-worker send`.
#
# Usage: scripts/send-messages.sh [--app NAME] [--env NAME] [--name NAME]
#                                 [--queue-url URL] [-- SEND-ARGS...]
#   defaults: --app queue-worker-demo --env test --name queue-worker
#   Everything after `--` goes to `queue-worker send` unchanged.
# The queue URL is found with the aws CLI (or, without it, `copilot svc show`)
# unless --queue-url or QUEUE_URL gives it. The binary is $QUEUE_WORKER, else
# target/release/queue-worker, else queue-worker on PATH.
# Sending needs kms:GenerateDataKey on the events queue's KMS key, which the key
# policy leaves to the account's IAM policies (an administrator has it).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

queue_url="${QUEUE_URL:-}"
send_args=()

while (($#)); do
    if copilot_name "$@"; then shift 2; continue; fi
    case "$1" in
        --queue-url) queue_url="${2:?--queue-url needs a value}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; send_args=("$@"); break ;;
        *) usage >&2; die "unknown argument: $1 (put arguments for 'queue-worker send' after --)" ;;
    esac
done


worker="$(find_worker)"

if [[ -z "$queue_url" ]]; then
    # Copilot's events queue has no explicit name, so CloudFormation names it
    # <stack>-EventsQueue-<suffix>, and the service stack is <app>-<env>-<svc>.
    prefix="$app-$env_name-$name-EventsQueue"
    if command -v aws >/dev/null 2>&1; then
        aws sts get-caller-identity >/dev/null 2>&1 ||
            die "no valid AWS credentials (aws sts get-caller-identity failed); run 'aws configure' or set AWS_PROFILE"
        queue_url="$(aws sqs list-queues --queue-name-prefix "$prefix" \
            --query 'QueueUrls[0]' --output text 2>/dev/null || true)"
        [[ "$queue_url" == "None" ]] && queue_url=""
    elif command -v copilot >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || die "python3 is needed to read 'copilot svc show --json'"
        # COPILOT_QUEUE_URI is among the service's variables in `svc show`.
        queue_url="$(copilot svc show --app "$app" --name "$name" --json 2>/dev/null |
            python3 -c '
import json, sys
env = sys.argv[1]
for var in json.load(sys.stdin).get("variables") or []:
    if var.get("name") == "COPILOT_QUEUE_URI" and var.get("environment") == env:
        print(var.get("value", ""))
        break
' "$env_name" || true)"
    else
        die "neither the aws CLI nor copilot is on PATH to find the queue URL; pass --queue-url"
    fi
    [[ -n "$queue_url" ]] ||
        die "no queue named $prefix-* found; deploy first (scripts/deploy.sh) or pass --queue-url"
fi

echo "send-messages: sending to $queue_url"
exec "$worker" send --queue-url "$queue_url" "${send_args[@]}"
