#!/usr/bin/env bash
# Refresh the vendored RustSec advisory snapshot (supply-chain/advisory-db)
# from a full copy of the advisory database, keeping only the advisories of
# crates that appear in Cargo.lock or fuzz/Cargo.lock (so the snapshot stays
# small and every file in it is about a crate keycore can build).
#
#   scripts/refresh-advisory-db.sh [ADVISORY_DB_CHECKOUT]
#
# Without an argument it clones ADVISORY_DB_URL (default: the upstream
# RustSec repository) shallowly into a temporary directory; that needs a
# machine that reaches the database's git host (CI and the dev machines here
# do not: pass a checkout copied in by other means). Then review the diff
# (new advisories may need a dependency bump or a reasoned ignore in
# deny.toml) and commit it with the SNAPSHOT file it rewrites.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-}
tmp=
if [ -z "$src" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  git clone --quiet --depth 1 "${ADVISORY_DB_URL:-https://github.com/rustsec/advisory-db}" "$tmp/db"
  src="$tmp/db"
fi
[ -d "$src/crates" ] || { echo "$src is not an advisory-db checkout (no crates/)" >&2; exit 1; }
commit=$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)
taken=$(git -C "$src" log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)

dst=supply-chain/advisory-db
rm -rf "$dst/crates"
mkdir -p "$dst/crates"
names=$(cat Cargo.lock fuzz/Cargo.lock | sed -n 's/^name = "\(.*\)"/\1/p' | sort -u)
kept=0
for n in $names; do
  if [ -d "$src/crates/$n" ]; then
    mkdir -p "$dst/crates/$n"
    for f in "$src/crates/$n"/RUSTSEC-*.md; do
      [ -e "$f" ] || continue
      case "$f" in *RUSTSEC-0000-0000.md) continue ;; esac # upstream's template placeholder
      cp "$f" "$dst/crates/$n/"
      kept=$((kept + 1))
    done
    rmdir "$dst/crates/$n" 2>/dev/null || true
  fi
done
cat >"$dst/SNAPSHOT" <<META
source: RustSec advisory-db, commit $commit
taken: $taken
scope: advisories of crates named in Cargo.lock and fuzz/Cargo.lock ($kept files)
refreshed-by: scripts/refresh-advisory-db.sh
META
echo "kept $kept advisories; review 'git diff $dst' and commit"
