#!/usr/bin/env bash
# Recording cost (issue 17): the harness's closed-loop ECDSA P-256 throughput
# run (`--quick --only ecdsa-p256-sha256`: release `keycore serve` with
# `cores: [0]`, the generator on CPU 1) with record_file off and on,
# alternating in ROUNDS rounds so both settings see the same machine. The
# harness prints ops/s, the server's CPU time per operation (every thread of
# the process, the recording writer included) and the load average; after
# each "on" run this prints what the recording holds (records written; drops
# would show as fewer records than requests).
#
# Needs the release build: cargo build --release -p keycore -p keycore-bench
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
H=target/release/harness
[ -x "$H" ] && [ -x target/release/keycore ] || {
    echo "build first: cargo build --release -p keycore -p keycore-bench" >&2
    exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq "$ROUNDS"); do
    for mode in off on; do
        printf 'round %s, recording %s: ' "$r" "$mode"
        if [ "$mode" = off ]; then
            env -u KEYLESS_RECORD_FILE "$H" --quick --only ecdsa-p256-sha256
        else
            rm -f "$tmp"/rec*
            KEYLESS_RECORD_FILE="$tmp/rec" "$H" --quick --only ecdsa-p256-sha256
            bytes=$(cat "$tmp"/rec* | wc -c)
            files=$(ls "$tmp"/rec* | wc -l)
            echo "  recording: $files file(s), $(( (bytes - 32 * files) / 36 )) records"
        fi
    done
done
