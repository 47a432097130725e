#!/usr/bin/env bash
# Fail-first evidence for issue 20: does each vendor test catch the bug its fix removed?
#
# Each scripts/fail-first/*.patch undoes *just one fix* in today's code (a mutation: e.g. open
# sessions read-only again, reuse the discovery session's object handle). Its header names the
# test(s) that should catch it, one per line:
#     test: <cargo test arguments, e.g. -p keycore-pkcs11 --test pkcs11_vendors -- --exact NAME>
# For a scratch copy of HEAD (git archive; the working tree is never touched), this script
#   1. runs every named test on the unpatched copy (each must PASS: the fix works), then
#   2. for each patch: applies it, runs its test(s), reverts it (git apply -R),
# and prints a table: patch -> test -> "FAILED as expected" or "PASSED" (= a test that does not
# catch its bug: strengthen it). A patch that no longer applies or compiles is reported as such.
#
# Slow (a rebuild of the patched crate and its test per patch): not a CI step; run by hand and
# copy the table into docs/vendor-evidence.md.
#
# usage: bash scripts/fail-first.sh [PATCH ...]    (default: every scripts/fail-first/*.patch)
# env:   FAIL_FIRST_DIR (scratch directory, with the copy and its own cargo target under it;
#        default a new temporary one, removed at the end; give one to keep the build between runs),
#        FAIL_FIRST_TIMEOUT (seconds per test run, default 600; a timeout counts as a failure
#        and is shown as such).
set -uo pipefail

repo=$(git rev-parse --show-toplevel)
cd "$repo"
if [ $# -gt 0 ]; then patches=("$@"); else patches=(scripts/fail-first/*.patch); fi
for i in "${!patches[@]}"; do patches[$i]=$(realpath "${patches[$i]}"); done
timeout_s=${FAIL_FIRST_TIMEOUT:-600}

if [ -n "${FAIL_FIRST_DIR:-}" ]; then
    scratch=$FAIL_FIRST_DIR
    rm -rf "$scratch/tree"
    keep=1
else
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/keycore-fail-first.XXXXXX")
    keep=0
fi
cleanup() { [ "$keep" = 1 ] || rm -rf "$scratch"; }
trap cleanup EXIT
tree=$scratch/tree
logs=$scratch/logs
mkdir -p "$tree" "$logs"
# Never the caller's CARGO_TARGET_DIR: cargo fingerprints a workspace member's sources by their
# path relative to the workspace root, so a patched build made here would look up to date to a
# build of the real tree whose files are older than it (a mutant in your next test run).
export CARGO_TARGET_DIR=$scratch/target
git archive HEAD | tar -x -C "$tree"
# Fresh mtimes: git archive stamps every file with the commit time, which can be older than a
# build left in CARGO_TARGET_DIR by an earlier run's last (patched) state; cargo would then take
# that build as up to date.
find "$tree" -type f -exec touch {} +
# Its own repository, so `git apply` works relative to it wherever the scratch directory is.
git init -q "$tree"
commit=$(git rev-parse --short HEAD)
echo "fail-first: commit $commit, scratch copy $tree, target $CARGO_TARGET_DIR"
echo "started $(date -u '+%Y-%m-%d %H:%M:%S UTC'); load: $(cut -d' ' -f1-3 /proc/loadavg)"

# The test lines of a patch (after "test: ").
tests_of() { sed -n 's/^test: //p' "$1"; }

# Run one `cargo test` argument string in the scratch copy; prints PASSED / FAILED / TIMEOUT /
# BUILD-FAILED / NO-TEST (the filter matched nothing: a renamed test must not look like a pass).
run_test() {
    local args=$1 log=$2 build_args=${1%% -- *}
    # shellcheck disable=SC2086 # the header's arguments are meant to split
    if ! (cd "$tree" && nice -n 10 cargo test $build_args --no-run) >"$log" 2>&1; then
        echo BUILD-FAILED
        return
    fi
    # shellcheck disable=SC2086
    (cd "$tree" && timeout "$timeout_s" nice -n 10 cargo test $args) >>"$log" 2>&1
    local rc=$?
    if [ $rc = 124 ]; then
        echo TIMEOUT
    elif grep -q '^test result: .* [1-9][0-9]* failed' "$log" || [ $rc != 0 ]; then
        echo FAILED
    elif grep -q '^test result: ok\. [1-9][0-9]* passed' "$log"; then
        echo PASSED
    else
        echo NO-TEST
    fi
}

# 1. Every named test passes without any patch.
declare -A baseline
n=0
while IFS= read -r t; do
    [ -n "${baseline[$t]+x}" ] && continue
    n=$((n + 1))
    r=$(run_test "$t" "$logs/baseline-$n.log")
    baseline[$t]=$r
    echo "baseline: $r  $t"
done < <(for p in "${patches[@]}"; do tests_of "$p"; done)

# 2. Each patch on its own.
rows=()
bad=0
for p in "${patches[@]}"; do
    name=$(basename "$p" .patch)
    if ! (cd "$tree" && git apply "$p") 2>"$logs/$name.apply"; then
        rows+=("$name|(all)|-|DOES NOT APPLY (see $logs/$name.apply)")
        bad=1
        continue
    fi
    k=0
    while IFS= read -r t; do
        k=$((k + 1))
        r=$(run_test "$t" "$logs/$name-$k.log")
        case $r in
            FAILED) verdict="FAILED as expected" ;;
            TIMEOUT) verdict="FAILED as expected (timed out after ${timeout_s}s)" ;;
            PASSED) verdict="PASSED: the test does not catch this bug"; bad=1 ;;
            *) verdict="$r (log $logs/$name-$k.log)"; bad=1 ;;
        esac
        [ "${baseline[$t]}" = PASSED ] || { verdict="$verdict; but it also fails WITHOUT the patch"; bad=1; }
        rows+=("$name|${t##* }|${baseline[$t]}|$verdict")
        echo "$name: $verdict  ($t)"
    done < <(tests_of "$p")
    (cd "$tree" && git apply -R "$p") || { echo "could not revert $name" >&2; exit 2; }
done

echo
echo "finished $(date -u '+%Y-%m-%d %H:%M:%S UTC'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| patch (fix undone) | test | without the patch | with the patch |"
echo "|---|---|---|---|"
for r in "${rows[@]}"; do
    IFS='|' read -r a b c d <<<"$r"
    echo "| \`$a\` | \`$b\` | $c | $d |"
done
[ "$keep" = 1 ] && echo "logs: $logs"
exit $bad
