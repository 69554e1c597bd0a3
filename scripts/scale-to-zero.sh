#!/usr/bin/env bash
# Set the worker service's desired count to 0 and watch ECS: tasks that hold
# scale-in protection keep running until their jobs finish (or the protection
# expires), then stop.
#
# Usage: scripts/scale-to-zero.sh [--app NAME] [--env NAME] [--name NAME] [-- ARGS...]
#   defaults: --app queue-worker-demo --env test --name queue-worker
#   Everything after `--` goes to `queue-worker ecs scale` unchanged.
# The binary is $QUEUE_WORKER, else target/release/queue-worker, else
# queue-worker on PATH.
# Note: the manifest's count.range has min 1, so Application Auto Scaling may
# raise the desired count back to 1 at its next scaling action; run
# scripts/deploy.sh to return to the manifest's settings afterwards.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

extra_args=()

while (($#)); do
    if copilot_name "$@"; then shift 2; continue; fi
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --) shift; extra_args=("$@"); break ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

worker="$(find_worker)"

if command -v aws >/dev/null 2>&1; then
    aws sts get-caller-identity >/dev/null 2>&1 ||
        die "no valid AWS credentials (aws sts get-caller-identity failed); run 'aws configure' or set AWS_PROFILE"
else
    echo "scale-to-zero: note: aws CLI not found, skipping the credentials check"
fi

exec "$worker" ecs scale --app "$app" --env "$env_name" --name "$name" --desired 0 --watch "${extra_args[@]}"
