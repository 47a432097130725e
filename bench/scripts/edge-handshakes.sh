#!/usr/bin/env bash
# Handshake figures for `keycore edge`, in one run (issue 16):
#   A. full handshakes/s: the edge (key in `keycore serve`, software) vs the
#      same HTTPS server with the key local (bench's local_tls: same accept
#      loop, workers, page; rustls signs in-process); same certificate;
#   B. handshake p50/p99 at a fixed rate with the key in software, in SoftHSM2
#      and behind hsmsim's simulated network HSM profile.
# CPU sharing (2 cores): every server (key server reactor, edge, local_tls)
# on CPU 0, the generator on CPU 1. So A compares the same CPU budget: one
# core doing handshakes with its own key vs one core doing handshakes plus
# the key server's signatures.
# Loopback only; every run is bounded by --duration.
# Usage: bash bench/scripts/edge-handshakes.sh [SECONDS] [PROFILE]   (PROFILE: release|dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-8}
PROF=${2:-release}
W=/tmp/keycore-edge-bench
PIN=1234
MODULE=/usr/lib/softhsm/libsofthsm2.so
HSMSIM_PROFILE=${HSMSIM_PROFILE:-aws-cloudhsm-hsm2m.medium}
if [ "$PROF" = release ]; then
  cargo build --release -q -p keycore -p keycore-bench -p keycore-hsmsim; T=target/release
else
  cargo build -q -p keycore -p keycore-bench -p keycore-hsmsim; T=target/debug
fi
KC=$PWD/$T/keycore; LT=$PWD/$T/local_tls
rm -rf "$W" && mkdir -p "$W/tokens"
"$KC" pki --dir "$W/pki" >/dev/null
P=$W/pki
# The site certificate: localhost, key = the demo's P-256 key, signed by the demo CA.
openssl req -new -key "$P/keys/p256.key" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -out "$W/site.csr" 2>/dev/null
openssl x509 -req -in "$W/site.csr" -CA "$P/ca.pem" -CAkey "$P/ca.key.pem" -days 2 \
  -copy_extensions copy -out "$W/site.pem" 2>/dev/null
# The same key in a SoftHSM2 token (for B).
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$W/tokens" > "$W/softhsm2.conf"
export SOFTHSM2_CONF=$W/softhsm2.conf
softhsm2-util --init-token --free --label edge --so-pin 1111 --pin $PIN >/dev/null
openssl pkey -in "$P/keys/p256.key" -outform DER -out "$W/p256.der"
openssl pkey -in "$P/keys/p256.key" -pubout -outform DER -out "$W/p256.pub.der"
for ty in privkey:"$W/p256.der" pubkey:"$W/p256.pub.der"; do
  pkcs11-tool --module $MODULE --token-label edge --login --pin $PIN \
    --write-object "${ty#*:}" --type "${ty%%:*}" --id 01 --label site >/dev/null
done
cp "$T/libkeycore_hsmsim.so" "$W/hsm.so"
cp $MODULE "$W/softhsm-under-sim.so"
echo "{\"profile\": \"$HSMSIM_PROFILE\", \"module\": \"$W/softhsm-under-sim.so\"}" > "$W/hsm.json"
export KEYCORE_HSMSIM_CONFIG="$W/{module}.json"

KS_PID=; EDGE_PID=; LT_PID=
cleanup() { for p in $EDGE_PID $LT_PID $KS_PID; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

keyserver() { # $1: store line
  {
    echo "port: 24080"; echo "metrics_port: 24081"; echo "listen_address: 127.0.0.1"
    echo "metrics_address: 127.0.0.1"; echo "cores: [0]"; echo "loglevel: 2"
    echo "auth_cert: $P/server.pem"; echo "auth_key: $P/server.key.pem"; echo "cloudflare_ca_cert: $P/ca.pem"
    echo "private_key_stores:"; echo "  - $1"
  } > "$W/gokeyless.yaml"
  "$KC" serve -c "$W/gokeyless.yaml" 2>"$W/serve.log" & KS_PID=$!
  sleep 1.5
}
stop_keyserver() { kill -TERM "$KS_PID"; wait "$KS_PID" || true; KS_PID=; }
edge() {
  taskset -c 0 "$KC" edge --listen 127.0.0.1:24443 --metrics 127.0.0.1:24444 --cert "$W/site.pem" \
    --keyserver 127.0.0.1:24080 --keyserver-ca "$P/ca.pem" --client-cert "$P/client.pem" \
    --client-key "$P/client.key.pem" --keyless-timeout-ms 2000 >"$W/edge.out" 2>"$W/edge.log" & EDGE_PID=$!
  sleep 1
}
stop_edge() { kill -TERM "$EDGE_PID"; wait "$EDGE_PID" || true; EDGE_PID=; }
load() { # $1 port, $2 rate, $3 extra...
  local port=$1 rate=$2; shift 2
  "$KC" loadgen --handshakes --server "127.0.0.1:$port" --ca "$P/ca.pem" --server-name localhost \
    --rate "$rate" --duration "$SECS" --warmup 2 --first-cpu 1 --quiet "$@"
}

echo "== $(date -u +%FT%TZ) $(nproc) CPUs; uptime: $(uptime)"
echo "== git $(git rev-parse --short HEAD), profile $PROF; servers on CPU 0, generator on CPU 1"
echo
echo "== A. full handshakes/s (no resumption), offered 4000/s open loop, at most 64 in flight"
keyserver "dir: $P/keys"
edge
for round in 1 2; do
  echo "-- round $round: edge (key in keycore serve, software)"
  load 24443 4000 --max-outstanding-per-core 64 --keyserver-metrics http://127.0.0.1:24444/metrics
  echo "-- round $round: local key (rustls signs in-process)"
  taskset -c 0 "$LT" --listen 127.0.0.1:24445 --cert "$W/site.pem" --key "$P/keys/p256.key" \
    < <(sleep $((SECS + 8))) >/dev/null & LT_PID=$!
  sleep 0.5
  load 24445 4000 --max-outstanding-per-core 64
  kill "$LT_PID" 2>/dev/null || true; wait "$LT_PID" 2>/dev/null || true; LT_PID=
done
echo
echo "== B. handshake latency at 100 full handshakes/s (Poisson), by where the key is"
echo "-- software (keycore serve, key file)"
load 24443 100 --keyserver-metrics http://127.0.0.1:24444/metrics
stop_edge; stop_keyserver
echo "-- SoftHSM2 (keycore serve, PKCS#11)"
keyserver "uri: \"pkcs11:token=edge;object=site?module-path=$MODULE&pin-value=$PIN\""
edge
load 24443 100 --keyserver-metrics http://127.0.0.1:24444/metrics
stop_edge; stop_keyserver
echo "-- hsmsim $HSMSIM_PROFILE over SoftHSM2 (keycore serve, PKCS#11)"
keyserver "uri: \"pkcs11:token=edge;object=site?module-path=$W/hsm.so&pin-value=$PIN&x-dispatch=offload&x-sessions-per-core=16\""
edge
load 24443 100 --keyserver-metrics http://127.0.0.1:24444/metrics
stop_edge; stop_keyserver
echo "-- C. a slow key server (hsmsim: every ECDSA sign takes 200 ms) with half the visitors resuming:"
echo "   full handshakes wait for the signature, resumed ones on other workers must not"
echo "{\"module\": \"$W/softhsm-under-sim.so\", \"latency\": {\"mechanisms\": {\"CKM_ECDSA\": {\"fixed_us\": 200000}}}}" > "$W/hsm.json"
keyserver "uri: \"pkcs11:token=edge;object=site?module-path=$W/hsm.so&pin-value=$PIN&x-dispatch=offload&x-sessions-per-core=16\""
edge
load 24443 50 --resume-ratio 0.5 --keyserver-metrics http://127.0.0.1:24444/metrics
stop_edge; stop_keyserver
echo
echo "== uptime: $(uptime)"
