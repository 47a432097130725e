#!/usr/bin/env bash
# Fuzz smoke run for the wire codec: a bounded libFuzzer session of the `decode` target
# (fuzz/fuzz_targets/decode.rs) on STABLE Rust, seeded with the golden vectors.
#
# Why cargo-fuzz with `-s none`: the sanitizers need nightly (-Zsanitizer); without one,
# cargo-fuzz only passes stable -C flags (sancov passes), so libFuzzer's coverage guidance
# works on stable. The codec is `forbid(unsafe_code)`, so ASan would add little.
#
# What fails the run: any panic in the target (decoder panic, an allocation during
# frame::check + decode, a round-trip mismatch), which libFuzzer reports as a crash and
# saves under fuzz/artifacts/decode/; this script then exits non-zero.
#
# Cost (measured, 2 cores): installing cargo-fuzz ~30 s, building the target ~25 s (the
# fuzz crate builds keycore-protocol without aws-lc), fuzzing FUZZ_SECONDS (default 45).
#
# Knobs: FUZZ_SECONDS (default 45), FUZZ_MAX_LEN (default 4200: past every padded
# message shape; longer inputs add no new code paths, only slower mutation).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-45}"
FUZZ_MAX_LEN="${FUZZ_MAX_LEN:-4200}"
CARGO_FUZZ_VERSION="0.13.2"
start=$(date +%s)
stamp() { echo "fuzz-smoke: $* (t=$(( $(date +%s) - start ))s)"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  stamp "installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
  cargo install --locked cargo-fuzz --version "${CARGO_FUZZ_VERSION}"
fi
stamp "using $(cargo fuzz --version)"

corpus=fuzz/corpus/decode
mkdir -p "$corpus"
seeds=(protocol/testdata/*.bin)
cp "${seeds[@]}" "$corpus"/
stamp "seeded $corpus with ${#seeds[@]} golden vectors"

cargo fuzz build --fuzz-dir fuzz -s none decode
stamp "built"

cargo fuzz run --fuzz-dir fuzz -s none decode "$corpus" -- \
  -max_total_time="${FUZZ_SECONDS}" \
  -max_len="${FUZZ_MAX_LEN}" \
  -timeout=10 \
  -rss_limit_mb=2048 \
  -print_final_stats=1
stamp "no crash in ${FUZZ_SECONDS}s of fuzzing decode"

# The parser and state-machine targets (fuzz/README.md): one build with their
# features, then a short run of each from its seed corpus (fuzz/corpus-seed).
# This is a smoke (does each target still build, run and hold its asserts on
# the seeds and a few seconds of mutation), not the campaign: that is
# fuzz/campaign.sh, with its results in fuzz/README.md.
FUZZ_TARGETS="${FUZZ_TARGETS:-config_yaml pkcs11_uri kms_uri kms_answer conn_state}"
FUZZ_SECONDS_EACH="${FUZZ_SECONDS_EACH:-15}"
if [ -n "$FUZZ_TARGETS" ]; then
  cargo fuzz build --fuzz-dir fuzz -s none --features config,pkcs11,kms,engine
  stamp "built the feature targets"
  for t in $FUZZ_TARGETS; do
    mkdir -p "fuzz/corpus/$t"
    cp fuzz/corpus-seed/"$t"/* "fuzz/corpus/$t"/
    # Start from the last campaign's minimized corpus, so 15 s re-checks the
    # coverage it reached instead of rediscovering it.
    if [ -f "fuzz/corpus-min/$t.tar.xz" ]; then tar -C "fuzz/corpus/$t" -xJf "fuzz/corpus-min/$t.tar.xz"; fi
    log="fuzz/artifacts/smoke-$t.log"
    mkdir -p fuzz/artifacts
    if ! cargo fuzz run --fuzz-dir fuzz -s none --features config,pkcs11,kms,engine "$t" "fuzz/corpus/$t" -- \
      -max_total_time="${FUZZ_SECONDS_EACH}" \
      -max_len=8192 \
      -timeout=10 \
      -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "fuzz target $t failed (crash input under fuzz/artifacts/$t/)" >&2
      exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
    stamp "no crash in ${FUZZ_SECONDS_EACH}s of $t"
  done
fi
