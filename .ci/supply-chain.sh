#!/usr/bin/env bash
# Supply-chain checks (issue 18), run by .ci/run:
#   1. tools: cargo-deny, cargo-audit, cargo-cyclonedx, installed from
#      crates.io with `cargo install --locked` at pinned versions only when
#      missing (each install is timed; see supply-chain/README.md for costs);
#   2. the advisory database: the vendored snapshot supply-chain/advisory-db
#      (CI reaches crates.io, not the database's git host) laid out where
#      cargo-deny and cargo-audit read it, with fetching turned off;
#   3. self-test: auditing supply-chain/selftest/Cargo.lock (a crate version
#      the snapshot names as vulnerable) must FAIL, or the snapshot is not
#      being read and a green result below would mean nothing;
#   4. cargo deny check: advisories (snapshot), bans (ring, openssl,
#      serde_yaml...; duplicates reported), licences (deny.toml's allow
#      list), sources (crates.io only);
#   5. cargo audit of Cargo.lock and fuzz/Cargo.lock against the snapshot;
#   6. the SBOM of the release binary (scripts/sbom.sh), checked to list
#      every crate the binary links.
# What is NOT covered: advisories published after the snapshot's date
# (supply-chain/advisory-db/SNAPSHOT) and advisories of crates the snapshot
# does not carry; refresh with scripts/refresh-advisory-db.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

CARGO_DENY=0.20.2
CARGO_AUDIT=0.22.2
CARGO_CYCLONEDX=0.5.9

t0=$(date +%s)
last=$t0
step() {
  local now
  now=$(date +%s)
  echo "== supply-chain: $1 (previous step $((now - last))s, total $((now - t0))s)"
  last=$now
}
fail() { echo "FAIL: $*" >&2; exit 1; }

step "tools"
install() { # BINARY CRATE VERSION
  if ! command -v "$1" >/dev/null 2>&1; then
    local s
    s=$(date +%s)
    cargo install --locked "$2" --version "$3"
    echo "installed $2 $3 in $(($(date +%s) - s))s"
  fi
}
install cargo-deny cargo-deny "$CARGO_DENY"
install cargo-audit cargo-audit "$CARGO_AUDIT"
install cargo-cyclonedx cargo-cyclonedx "$CARGO_CYCLONEDX"
cargo deny --version
cargo audit --version
cargo cyclonedx --version

step "advisory database (vendored snapshot)"
target=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TARGET_DIR=$target
db="$target/advisory-db"
rm -rf "$db" "$target/advisory-dbs"
mkdir -p "$target/advisory-dbs"
cp -r supply-chain/advisory-db "$db"
# Both tools open the database as a git repository (for its date): make the
# snapshot one, dated when it was taken, so the staleness is honest.
taken=$(sed -n 's/^taken: //p' supply-chain/advisory-db/SNAPSHOT)
(
  cd "$db"
  git init -q
  git add -A
  GIT_AUTHOR_DATE="$taken" GIT_COMMITTER_DATE="$taken" \
    git -c user.name=snapshot -c user.email=snapshot@keycore.invalid commit -q -m "advisory-db snapshot $taken"
)
# cargo-deny keeps each database under db-path in a directory named after
# its URL; it is linked to the same snapshot.
ln -s "$db" "$target/advisory-dbs/advisory-db-3157b0e258782691"
n=$(find "$db/crates" -name 'RUSTSEC-*.md' | wc -l)
echo "snapshot taken $taken: $n advisories for $(ls "$db/crates" | wc -l) crates"

step "self-test: a known-vulnerable lockfile must fail the audit"
set +e
selftest=$(cargo audit --no-fetch --db "$db" --file supply-chain/selftest/Cargo.lock 2>&1)
rc=$?
set -e
echo "$selftest" | tail -n 5
[ "$rc" != 0 ] || fail "cargo audit passed a lockfile with crossbeam-channel 0.5.13: the snapshot is not being read"
grep -q RUSTSEC-2025-0024 <<<"$selftest" || fail "cargo audit failed the self-test without naming RUSTSEC-2025-0024"
echo "ok self-test: RUSTSEC-2025-0024 reported for crossbeam-channel 0.5.13"

step "cargo deny check (advisories, bans, licenses, sources)"
cargo deny --frozen check --show-stats

step "cargo audit (Cargo.lock, fuzz/Cargo.lock)"
# audit fails on vulnerabilities; unmaintained/unsound notices are printed
# as warnings (cargo-deny above refuses them for the Linux graph).
cargo audit --no-fetch --stale --db "$db"
cargo audit --no-fetch --stale --db "$db" --file fuzz/Cargo.lock

step "SBOM (CycloneDX) of the release binary"
bash scripts/sbom.sh "$target/sbom"

step "done"
