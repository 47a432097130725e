#!/usr/bin/env bash
# RSA-2048 and ECDSA P-256 sign rates with keys in SoftHSM2, in one run:
#   1. SoftHSM2's own in-process rate and keycore's PKCS#11 layer without the
#      server (engine bench, one thread): the ceiling;
#   2. through `keycore serve` (release, one reactor pinned to CPU 0) driven
#      by `keycore loadgen` (closed loop, pinned to CPU 1), for
#      inline dispatch (keycore's default for SoftHSM), offload with 2
#      sessions per core, and offload with ONE session (the reference's
#      default of one session per key).
# Loopback only. Usage: bash scripts/softhsm-serve-bench.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
W=/tmp/keycore-softhsm-bench
PIN=1234
MODULE=/usr/lib/softhsm/libsofthsm2.so
cargo build --release -q -p keycore
KC=$PWD/target/release/keycore
rm -rf "$W" && mkdir -p "$W/tokens"
"$KC" pki --dir "$W/pki" >/dev/null
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$W/tokens" > "$W/softhsm2.conf"
export SOFTHSM2_CONF=$W/softhsm2.conf
softhsm2-util --init-token --free --label bench --so-pin 1111 --pin $PIN >/dev/null
for k in rsa:rsa_keygen_bits:2048:01 ec:ec_paramgen_curve:P-256:02; do
  IFS=: read -r alg opt val id <<<"$k"
  algo=$([ "$alg" = rsa ] && echo RSA || echo EC)
  openssl genpkey -algorithm "$algo" -pkeyopt "$opt:$val" -out "$W/$alg.pem" 2>/dev/null
  openssl pkey -in "$W/$alg.pem" -outform DER -out "$W/$alg.der"
  openssl pkey -in "$W/$alg.pem" -pubout -outform DER -out "$W/$alg.pub.der"
  openssl pkey -in "$W/$alg.pem" -pubout -out "$W/$alg.pub.pem"
  for ty in privkey:"$W/$alg.der" pubkey:"$W/$alg.pub.der"; do
    pkcs11-tool --module $MODULE --token-label bench --login --pin $PIN \
      --write-object "${ty#*:}" --type "${ty%%:*}" --id "$id" --label "$alg" >/dev/null
  done
done
echo "== uptime: $(uptime)"
echo "== 1. SoftHSM2 in-process and keycore's PKCS#11 layer (engine bench; SoftHSM's C code sets the pace)"
unset SOFTHSM2_CONF
cargo test -q -p keycore-pkcs11 --test pkcs11_softhsm -- --ignored --exact bench_softhsm_inline_vs_offload --nocapture 2>&1 | grep -vE "^(running|test |$)" || true
export SOFTHSM2_CONF=$W/softhsm2.conf
run() { # $1 label, $2 extra URI query
  {
    echo "port: 24077"; echo "metrics_port: 0"; echo "listen_address: 127.0.0.1"
    echo "cores: [0]"; echo "loglevel: 2"
    echo "auth_cert: $W/pki/server.pem"; echo "auth_key: $W/pki/server.key.pem"
    echo "cloudflare_ca_cert: $W/pki/ca.pem"
    echo "private_key_stores:"
    for obj in rsa ec; do
      echo "  - uri: \"pkcs11:token=bench;object=$obj?module-path=$MODULE&pin-value=$PIN$2\""
    done
  } > "$W/gokeyless.yaml"
  "$KC" serve -c "$W/gokeyless.yaml" 2>"$W/serve.log" &
  local pid=$!
  sleep 1.5
  for op in rsa-pkcs1-sha256:rsa ecdsa-p256-sha256:ec; do
    printf '%-34s ' "$1 ${op%%:*}"
    "$KC" loadgen --server 127.0.0.1:24077 --server-name localhost \
      --ca "$W/pki/ca.pem" --cert "$W/pki/client.pem" --key "$W/pki/client.key.pem" \
      --keys "$W/${op##*:}.pub.pem" --mix "${op%%:*}=1" --mode closed --concurrency 64 \
      --connections 4 --duration "$SECS" --warmup 2 --verify-fraction 0.02 --first-cpu 1 --quiet \
      | awk '/^all /{printf "%10s ops/s  p50 %s  p99 %s  errors %s\n", $5, $6, $8, $3}'
  done
  kill -TERM $pid; wait $pid || true
}
echo "== 2. through keycore serve (1 reactor on CPU 0; loadgen on CPU 1, closed loop 64 in flight)"
run "inline (default)" "&x-dispatch=inline"
run "offload, 2 sessions/core" "&x-dispatch=offload&x-sessions-per-core=2"
run "offload, 1 session (reference-like)" "&x-dispatch=offload&x-sessions-per-core=1"
echo "== uptime: $(uptime)"
