#!/usr/bin/env bash
# Deploy the queue-worker Worker Service with AWS Copilot: application,
# "test"-style environment and the service. Safe to run again: steps whose
# result already exists are skipped, and `deploy` steps update in place.
#
# Usage: scripts/deploy.sh [--app NAME] [--env NAME] [--name NAME] [--profile NAME]
#   defaults: --app queue-worker-demo --env test --name queue-worker --profile default
# Needs: copilot on PATH, AWS credentials, a running Docker daemon (Copilot
# builds the image locally and pushes it to ECR).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

profile="${AWS_PROFILE:-default}"

while (($#)); do
    if copilot_name "$@"; then shift 2; continue; fi
    case "$1" in
        --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

cd "$REPO_ROOT"

command -v copilot >/dev/null 2>&1 ||
    die "copilot not found on PATH; install AWS Copilot v1.33+ (https://aws.github.io/copilot-cli/docs/getting-started/install/)"
if command -v aws >/dev/null 2>&1; then
    aws sts get-caller-identity --profile "$profile" >/dev/null 2>&1 ||
        die "no valid AWS credentials for profile '$profile' (aws sts get-caller-identity failed); run 'aws configure' or set AWS_PROFILE"
else
    echo "deploy: note: aws CLI not found, skipping the credentials check (copilot will fail if there are none)"
fi

[[ -f copilot/.workspace ]] || die "copilot/.workspace missing; run from a checkout of this repository"
[[ -f "copilot/$name/manifest.yml" ]] || die "copilot/$name/manifest.yml missing"

# The application: the workspace names it; `app init` creates it in the account.
if copilot app show --name "$app" >/dev/null 2>&1; then
    echo "deploy: application $app exists"
else
    echo "deploy: creating application $app"
    copilot app init "$app"
fi

# The environment (as in the AWS sample: default VPC config, given profile).
# `env init` keeps an existing copilot/environments/<env>/manifest.yml.
if copilot env show --app "$app" --name "$env_name" >/dev/null 2>&1; then
    echo "deploy: environment $env_name exists"
else
    echo "deploy: creating environment $env_name"
    copilot env init --app "$app" --name "$env_name" --profile "$profile" --default-config
fi
copilot env deploy --app "$app" --name "$env_name"

# The service: builds the Dockerfile, pushes the image, deploys the stack with
# the addon (copilot/$name/addons/).
if ! copilot svc show --app "$app" --name "$name" >/dev/null 2>&1; then
    echo "deploy: registering service $name"
    # The manifest exists already, so init only registers the service (and its
    # ECR repository); the flags keep it from prompting.
    copilot svc init --app "$app" --name "$name" --svc-type "Worker Service" --dockerfile ./Dockerfile
fi
copilot svc deploy --app "$app" --name "$name" --env "$env_name"

echo "deploy: done. Send work with: scripts/send-messages.sh --app $app --env $env_name --name $name"
