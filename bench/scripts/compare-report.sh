#!/usr/bin/env bash
# Issue 17 comparison report: the same ECDSA P-256 profile's open-loop capacity search against
# five backends behind `keycore serve` (software key file, SoftHSM2, hsmsim
# aws-cloudhsm-hsm2m.medium, hsmsim thales-luna7-a700, the AWS KMS stand-in), one HTML page
# (`keycore loadgen --compare-report`), then a headless Chromium screenshot of it.
# Servers on CPU 0 (`cores: [0]`), generator on CPU 1. Loopback only; every search is bounded
# (12 steps x (step + warm-up)).
# Usage: bash bench/scripts/compare-report.sh [dev|release] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
PROF=${1:-dev}
OUT=${2:-/tmp/keycore-compare}
W=/tmp/keycore-compare-work-$$
PIN=1234
MODULE=/usr/lib/softhsm/libsofthsm2.so
if [ "$PROF" = release ]; then
  cargo build --release -q -p keycore -p keycore-hsmsim -p keycore-kmssim; T=target/release
else
  cargo build -q -p keycore -p keycore-hsmsim -p keycore-kmssim; T=target/debug
fi
KC=$PWD/$T/keycore
mkdir -p "$W/tokens" "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
"$KC" pki --dir "$W/pki" >/dev/null
P=$W/pki
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$W/tokens" > "$W/softhsm2.conf"
export SOFTHSM2_CONF=$W/softhsm2.conf
softhsm2-util --init-token --free --label cmp --so-pin 1111 --pin $PIN >/dev/null
openssl pkey -in "$P/keys/p256.key" -outform DER -out "$W/p256.der"
openssl pkey -in "$P/keys/p256.key" -pubout -outform DER -out "$W/p256.pub.der"
for ty in privkey:"$W/p256.der" pubkey:"$W/p256.pub.der"; do
  pkcs11-tool --module $MODULE --token-label cmp --login --pin $PIN \
    --write-object "${ty#*:}" --type "${ty%%:*}" --id 01 --label site >/dev/null
done
mkdir -p "$W/pub" "$W/sw" && openssl pkey -in "$P/keys/p256.key" -pubout -out "$W/pub/p256.pem"
cp "$P/keys/p256.key" "$W/sw/p256.key"
# hsmsim: one module copy per profile, so each finds its own {module}.json.
cp $MODULE "$W/softhsm-under-sim.so"
for prof in aws-cloudhsm-hsm2m.medium thales-luna7-a700; do
  cp "$T/libkeycore_hsmsim.so" "$W/$prof.so"
  echo "{\"profile\": \"$prof\", \"module\": \"$W/softhsm-under-sim.so\"}" > "$W/$prof.json"
done
export KEYCORE_HSMSIM_CONFIG="$W/{module}.json"
# The AWS KMS stand-in, with its keys' public halves.
mkdir -p "$W/kms"
# --quota-rps 1000: the stand-in throttles above AWS KMS's default ECC request-rate quota
# (1,000/s per account and Region, docs/kms/aws.md), as a real account would.
"$PWD/$T/keycore-kmssim" --dir "$W/kms" --quota-rps 1000 > "$W/kms.env" 2>"$W/kms.log" & PIDS+=($!)
for _ in $(seq 50); do grep -q '^# serving' "$W/kms.env" 2>/dev/null && break; sleep 0.2; done
AWS_EC=$(grep -o 'arn:aws:kms:[^ ]*' "$W/kms.env" | tail -1)

serve() { # $1 port, $2 store line
  local cfg=$W/g-$1.yaml
  {
    echo "port: $1"; echo "metrics_port: 0"; echo "listen_address: 127.0.0.1"
    echo "cores: [0]"; echo "loglevel: 2"
    echo "auth_cert: $P/server.pem"; echo "auth_key: $P/server.key.pem"; echo "cloudflare_ca_cert: $P/ca.pem"
    echo "private_key_stores:"; echo "  - $2"
  } > "$cfg"
  "$KC" serve -c "$cfg" 2>"$W/serve-$1.log" & PIDS+=($!)
}
serve 24101 "dir: $W/sw"
serve 24102 "uri: \"pkcs11:token=cmp;object=site?module-path=$MODULE&pin-value=$PIN\""
serve 24103 "uri: \"pkcs11:token=cmp;object=site?module-path=$W/aws-cloudhsm-hsm2m.medium.so&pin-value=$PIN&x-dispatch=offload&x-sessions-per-core=8\""
serve 24104 "uri: \"pkcs11:token=cmp;object=site?module-path=$W/thales-luna7-a700.so&pin-value=$PIN&x-dispatch=offload&x-sessions-per-core=32\""
# The stand-in's endpoint and credentials (the other servers ignore them).
# shellcheck disable=SC1090
. <(grep '^export' "$W/kms.env")
serve 24105 "uri: $AWS_EC"
# Every server accepting (a cloud-backed one fetches its key first), at most 60 s.
for port in 24101 24102 24103 24104 24105; do
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
done

echo "== $(date -u +%FT%TZ) $(nproc) CPUs; uptime: $(uptime)"
echo "== git $(git rev-parse --short HEAD), profile $PROF; servers on CPU 0, generator on CPU 1"
"$KC" loadgen --compare-report "$OUT/compare.html" --server-name localhost \
  --ca "$P/ca.pem" --cert "$P/client.pem" --key "$P/client.key.pem" --keys "$W/pub" \
  --server 127.0.0.1:24101 --label 127.0.0.1:24101=software \
  --server 127.0.0.1:24102 --label 127.0.0.1:24102=softhsm2 \
  --server 127.0.0.1:24103 --label 127.0.0.1:24103=aws-cloudhsm-hsm2m.medium \
  --server 127.0.0.1:24104 --label 127.0.0.1:24104=thales-luna7-a700 \
  --server 127.0.0.1:24105 --label 127.0.0.1:24105=aws-kms \
  --backend-keys "127.0.0.1:24105=$W/kms/pub/aws/p256.pem" \
  --mix ecdsa-p256-sha256=1 --first-cpu 1 --connections 4 --slo-p99-ms "${SLO:-100}" \
  --start-rate 100 --step-factor 1.5 --step-duration ${STEP:-2} --warmup 0.5
echo "== uptime: $(uptime)"
if command -v chromium >/dev/null; then
  chromium --headless --no-sandbox --disable-gpu --screenshot="$OUT/compare.png" \
    --window-size=1100,2400 "file://$OUT/compare.html" 2>/dev/null || true
  echo "screenshot: $OUT/compare.png"
fi
