#!/usr/bin/env bash
# Create or update the queue-worker stack (deploy/cloudformation/queue-worker.yml) with the AWS
# CLI, wait until it is done, then print the queue URLs and the commands of the scale-to-zero
# walkthrough. Safe to run again: an unchanged stack is left alone, a changed one is updated
# through a change set.
#
# Usage: scripts/deploy-cfn.sh --image URI --subnets SUBNET[,SUBNET...] --security-group SG
#            [--stack-name NAME] [--cluster NAME] [--min N] [--max N] [--concurrency N]
#            [--job-seconds N] [--public-ip] [--parameter KEY=VALUE]... [--profile NAME] [--region NAME]
#   --image, --subnets and --security-group are needed to create the stack; an update keeps the
#   values it has for whatever is not given. Defaults on create: --stack-name queue-worker, a new
#   cluster (--cluster NAME runs in an existing one, which needs Container Insights on), --min 0,
#   --max 4, --concurrency 10, --job-seconds 30. --parameter sets any other template parameter.
# Needs: the AWS CLI (v1 or v2) and credentials allowed to create the stack's resources,
# IAM roles included (the stack is deployed with CAPABILITY_IAM). The image must already be in
# a registry the tasks can pull from (build it from the Dockerfile).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stack=queue-worker
overrides=()
aws_args=()
# add_override KEY VALUE: one template parameter
add_override() { overrides+=("$1=$2"); }

while (($#)); do
    case "$1" in
        --stack-name) stack="${2:?--stack-name needs a value}"; shift 2 ;;
        --image) add_override Image "${2:?--image needs a value}"; shift 2 ;;
        --subnets) add_override Subnets "${2:?--subnets needs a value}"; shift 2 ;;
        --security-group) add_override SecurityGroup "${2:?--security-group needs a value}"; shift 2 ;;
        --cluster) add_override ExistingCluster "${2:?--cluster needs a value}"; shift 2 ;;
        --min) add_override MinTasks "${2:?--min needs a value}"; shift 2 ;;
        --max) add_override MaxTasks "${2:?--max needs a value}"; shift 2 ;;
        --concurrency) add_override Concurrency "${2:?--concurrency needs a value}"; shift 2 ;;
        --job-seconds) add_override JobSeconds "${2:?--job-seconds needs a value}"; shift 2 ;;
        --public-ip) add_override AssignPublicIp ENABLED; shift ;;
        --parameter)
            [[ "${2:-}" == *=* ]] || die "--parameter needs KEY=VALUE"
            overrides+=("$2"); shift 2 ;;
        --profile) aws_args+=(--profile "${2:?--profile needs a value}"); shift 2 ;;
        --region) aws_args+=(--region "${2:?--region needs a value}"); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

TEMPLATE="$REPO_ROOT/deploy/cloudformation/queue-worker.yml"
command -v aws >/dev/null 2>&1 || die "the AWS CLI is not on PATH (https://aws.amazon.com/cli/)"
# `aws` with the chosen profile and region
awsc() { aws "${aws_args[@]}" "$@"; }
awsc sts get-caller-identity >/dev/null 2>&1 ||
    die "no valid AWS credentials (aws sts get-caller-identity failed); run 'aws configure' or pass --profile"

# Creating needs the three values the template has no default for.
if ! awsc cloudformation describe-stacks --stack-name "$stack" >/dev/null 2>&1; then
    for key in Image Subnets SecurityGroup; do
        printf '%s\n' "${overrides[@]}" | grep -q "^$key=" ||
            die "stack $stack does not exist yet: creating it needs --image, --subnets and --security-group"
    done
    step "creating stack $stack"
else
    step "updating stack $stack (parameters not given keep their values)"
fi

deploy_args=(--template-file "$TEMPLATE" --stack-name "$stack" --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset)
((${#overrides[@]})) && deploy_args+=(--parameter-overrides "${overrides[@]}")
# `deploy` creates a change set, executes it and waits for the stack to settle.
awsc cloudformation deploy "${deploy_args[@]}" ||
    die "deploy failed; see: aws cloudformation describe-stack-events --stack-name $stack"

# output KEY: one of the stack's outputs (dies when the stack does not have it)
output() {
    local value
    value="$(awsc cloudformation describe-stacks --stack-name "$stack" \
        --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text)"
    [[ -n "$value" && "$value" != None ]] || die "stack $stack has no output $1"
    echo "$value"
}
queue_url="$(output QueueUrl)"
dlq_url="$(output DeadLetterQueueUrl)"
cluster="$(output ClusterName)"
service="$(output ServiceName)"

cat <<EOF

Stack $stack is ready.
  queue:             $queue_url
  dead-letter queue: $dlq_url
  cluster / service: $cluster / $service

Send one 6-minute job (the service starts a task within a few minutes if it is at 0):
  queue-worker send --queue-url $queue_url --count 1 --duration 6m

Once a task runs it, scale to zero and watch protection hold the task until the job is done:
  queue-worker ecs scale --cluster $cluster --service $service --desired 0 --watch
EOF
