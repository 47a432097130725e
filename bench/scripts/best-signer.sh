#!/usr/bin/env bash
# Best signer per CPU (issue 13): OpenSSL's libcrypto (`openssl speed`) against aws-lc-rs (the
# harness's raw-signer measurement) on the same CPU, in one run: openssl, aws-lc-rs, openssl
# again, so drift within the run shows. Both sides are read per CPU second (openssl speed divides
# by user CPU time; the harness prints thread CPU µs/op), which a shared machine distorts less than
# wall time. Usage: bench/scripts/best-signer.sh [HARNESS] (default target/release/harness; the
# `keycore` binary must sit next to it). Runs ~45 s, all traffic on 127.0.0.1.
set -euo pipefail
harness=${1:-target/release/harness}
cpu=${CPU:-0}
speed() { taskset -c "$cpu" openssl speed -seconds 3 rsa2048 ecdsap256 2>&1 | grep -E '^rsa 2048|nistp256'; }
echo "# $(date -u +%FT%TZ) $(openssl version); load $(cut -d' ' -f1-3 /proc/loadavg)"
grep -o 'avx512ifma\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
speed
"$harness" --quick --skip-memory --skip-latency --server-cpu "$cpu" 2>&1 | grep -E '^\| (RSA-2048|ECDSA P-256)'
speed
echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
