#!/usr/bin/env bash
# Check that a binary needs no shared library beyond what the runtime image
# gcr.io/distroless/cc-debian12 provides (glibc and libgcc_s; notably NOT
# libssl, libcrypto or libstdc++).
#
# Usage: scripts/check-ldd.sh [BINARY]    (default: target/release/queue-worker)
# Prints every needed library with its verdict; exits 0 if all are allowed,
# 1 if any is not (or cannot be found), 2 on a usage error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="${1:-$ROOT/target/release/queue-worker}"

# glibc of Debian 12 (bookworm), the base of distroless/cc-debian12: a binary
# built on a newer glibc can need symbol versions the image does not have.
MAX_GLIBC=2.36

# Sonames shipped by distroless/cc-debian12 (libc6 and libgcc-s1).
ALLOWED=(
    linux-vdso.so.1
    libc.so.6
    libm.so.6
    libgcc_s.so.1
    libpthread.so.0
    libdl.so.2
    librt.so.1
    ld-linux-x86-64.so.2
)

if [[ ! -f "$binary" ]]; then
    echo "check-ldd: $binary does not exist (build it with: cargo build --release --locked)" >&2
    exit 2
fi
if ! command -v ldd >/dev/null 2>&1; then
    echo "check-ldd: ldd not found on PATH" >&2
    exit 2
fi

# ldd exits non-zero for a static binary ("not a dynamic executable").
if ! output="$(ldd "$binary" 2>&1)"; then
    if grep -qE 'not a dynamic executable|statically linked' <<<"$output"; then
        echo "check-ldd: $binary is statically linked: needs no shared library"
        echo "check-ldd: OK"
        exit 0
    fi
    echo "check-ldd: ldd failed on $binary:" >&2
    echo "$output" >&2
    exit 2
fi
if grep -q 'statically linked' <<<"$output"; then
    echo "check-ldd: $binary is statically linked: needs no shared library"
    echo "check-ldd: OK"
    exit 0
fi

is_allowed() {
    local name="$1" ok
    for ok in "${ALLOWED[@]}"; do
        [[ "$name" == "$ok" ]] && return 0
    done
    return 1
}

echo "check-ldd: shared libraries needed by $binary"
bad=0
while IFS= read -r line; do
    line="${line#"${line%%[![:space:]]*}"}" # trim leading whitespace
    [[ -z "$line" ]] && continue
    # Forms: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)",
    #        "linux-vdso.so.1 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
    #        "libfoo.so.1 => not found".
    soname="${line%% *}"
    soname="${soname##*/}"
    if [[ "$line" == *"=> not found"* ]]; then
        printf '  %-28s NOT FOUND on this machine\n' "$soname"
        bad=1
    elif is_allowed "$soname"; then
        printf '  %-28s ok\n' "$soname"
    else
        printf '  %-28s NOT in distroless/cc-debian12\n' "$soname"
        bad=1
    fi
done <<<"$output"

# Newest glibc symbol version the binary asks for (objdump is in binutils).
if command -v objdump >/dev/null 2>&1; then
    newest="$(objdump -T "$binary" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1 || true)"
    if [[ -z "$newest" ]]; then
        echo "  glibc symbol versions: none found"
    elif [[ "$(printf '%s\n%s\n' "$newest" "$MAX_GLIBC" | sort -V | tail -n 1)" == "$MAX_GLIBC" ]]; then
        printf '  %-28s ok (image has %s)\n' "GLIBC_$newest" "$MAX_GLIBC"
    else
        printf '  %-28s NEWER than the image'"'"'s glibc %s\n' "GLIBC_$newest" "$MAX_GLIBC"
        bad=1
    fi
else
    echo "  (objdump not found: glibc symbol versions not checked)"
fi

if ((bad)); then
    echo "check-ldd: FAIL: $binary needs libraries the runtime image lacks"
    exit 1
fi
echo "check-ldd: OK: every library is in distroless/cc-debian12"
