#!/usr/bin/env bash
# The longer fuzz campaign (issue 18): each target for CAMPAIGN_SECONDS
# (default 180) from its seed corpus, one process at a time, on stable
# (`-s none`, libFuzzer coverage guidance through sancov). Prints one line
# per target: executions, final coverage, corpus size, peak RSS and crashes,
# plus the machine load, for fuzz/README.md's results table.
#
#   fuzz/campaign.sh [TARGET...]        (default: all six)
#
# A crash stops that target; its input is under fuzz/artifacts/<target>/ and
# `cargo fuzz run --fuzz-dir fuzz -s none --features ... <target> <file>`
# replays it.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${CAMPAIGN_SECONDS:-180}
features=config,pkcs11,kms,engine
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode config_yaml pkcs11_uri kms_uri kms_answer conn_state)
cargo fuzz build --fuzz-dir fuzz -s none --features "$features" || exit 1
# Run the built binaries directly (libFuzzer's own main), from a copy: no
# rebuild check between targets, and a checkout that changes meanwhile
# cannot swap a binary under a running campaign.
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
cp fuzz/target/x86_64-unknown-linux-gnu/release/{decode,config_yaml,pkcs11_uri,kms_uri,kms_answer,conn_state} "$bin"/
mkdir -p fuzz/artifacts
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  if [ "$t" = decode ]; then
    cp protocol/testdata/*.bin "fuzz/corpus/$t"/
  else
    cp fuzz/corpus-seed/"$t"/* "fuzz/corpus/$t"/
    # The previous campaign's minimized corpus (fuzz/README.md), if kept.
    if [ -f "fuzz/corpus-min/$t.tar.xz" ]; then tar -C "fuzz/corpus/$t" -xJf "fuzz/corpus-min/$t.tar.xz"; fi
  fi
  log="fuzz/artifacts/campaign-$t.log"
  start=$(date +%s)
  mkdir -p "fuzz/artifacts/$t"
  "$bin/$t" "fuzz/corpus/$t" -artifact_prefix="fuzz/artifacts/$t/" \
    -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | grep -c -E '^(crash|oom|timeout|leak)-' || true)
  echo "$t: ${secs}s, exit $rc, ${execs:-?} execs, cov ${cov:-?}, corpus $corpus, peak ${rss:-?} MB, crashes $crashes, took $(($(date +%s) - start))s, load $(cut -d' ' -f1-3 /proc/loadavg)"
done
