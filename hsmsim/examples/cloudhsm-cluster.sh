#!/usr/bin/env bash
# Worked example: keycore in front of a simulated 3-HSM AWS CloudHSM cluster
# (hsm2m.medium profile), driven by the load generator. Loopback only.
#
#   bash hsmsim/examples/cloudhsm-cluster.sh [WORKDIR]
#
# Three copies of the simulator (hsm1.so .. hsm3.so), each over its own copy of
# SoftHSM2, all reading one token directory: the same key on three devices, which
# keycore groups into one HA group (same SKI) and spreads requests over.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-/tmp/keycore-cloudhsm-cluster}
PROFILE=${PROFILE:-aws-cloudhsm-hsm2m.medium}
DURATION=${DURATION:-20}
PIN=1234
MODULE=/usr/lib/softhsm/libsofthsm2.so

cargo build --release -q -p keycore -p keycore-hsmsim
KC=$PWD/target/release/keycore
rm -rf "$W" && mkdir -p "$W/tokens"
"$KC" pki --dir "$W/pki" >/dev/null

# One SoftHSM2 token with an RSA-2048 and an EC P-256 key.
cat > "$W/softhsm2.conf" <<CONF
directories.tokendir = $W/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF=$W/softhsm2.conf
softhsm2-util --init-token --free --label cluster --so-pin 1111 --pin $PIN >/dev/null
for k in rsa:rsa_keygen_bits:2048:01 ec:ec_paramgen_curve:P-256:02; do
  IFS=: read -r alg opt val id <<<"$k"
  algo=$([ "$alg" = rsa ] && echo RSA || echo EC)
  openssl genpkey -algorithm "$algo" -pkeyopt "$opt:$val" -out "$W/$alg.pem" 2>/dev/null
  openssl pkey -in "$W/$alg.pem" -outform DER -out "$W/$alg.der"
  openssl pkey -in "$W/$alg.pem" -pubout -outform DER -out "$W/$alg.pub.der"
  openssl pkey -in "$W/$alg.pem" -pubout -out "$W/$alg.pub.pem"
  for ty in privkey:"$W/$alg.der" pubkey:"$W/$alg.pub.der"; do
    pkcs11-tool --module $MODULE --token-label cluster --login --pin $PIN \
      --write-object "${ty#*:}" --type "${ty%%:*}" --id "$id" --label "$alg" >/dev/null
  done
done

# Three simulated HSMs.
for i in 1 2 3; do
  cp target/release/libkeycore_hsmsim.so "$W/hsm$i.so"
  cp $MODULE "$W/softhsm$i.so"
  echo "{\"profile\": \"$PROFILE\", \"module\": \"$W/softhsm$i.so\"}" > "$W/hsm$i.json"
done
export KEYCORE_HSMSIM_CONFIG="$W/{module}.json"

# keycore: one reactor on CPU 0; each HSM is a partition with 16 sessions
# (worker threads) per core, offloaded (the default for non-SoftHSM modules).
{
  echo "port: 24079"
  echo "metrics_port: 24078"
  echo "listen_address: 127.0.0.1"
  echo "metrics_address: 127.0.0.1"
  echo "cores: [0]"
  echo "loglevel: 2"
  echo "auth_cert: $W/pki/server.pem"
  echo "auth_key: $W/pki/server.key.pem"
  echo "cloudflare_ca_cert: $W/pki/ca.pem"
  echo "private_key_stores:"
  for i in 1 2 3; do
    for obj in rsa ec; do
      echo "  - uri: \"pkcs11:token=cluster;object=$obj?module-path=$W/hsm$i.so&pin-value=$PIN&x-sessions-per-core=16\""
    done
  done
} > "$W/gokeyless.yaml"
"$KC" serve -c "$W/gokeyless.yaml" 2>"$W/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:24078/metrics >/dev/null 2>&1 && break
  sleep 0.2
done

LG=("$KC" loadgen --server 127.0.0.1:24079 --server-name localhost
    --ca "$W/pki/ca.pem" --cert "$W/pki/client.pem" --key "$W/pki/client.key.pem"
    --first-cpu 1 --quiet)
echo "== capacity, ECDSA P-256 (published ceiling for 3 x $PROFILE: see hsmsim/README.md)"
"${LG[@]}" --keys "$W/ec.pub.pem" --mix ecdsa-p256-sha256=1 --capacity --slo-p99-ms 50 \
  --start-rate 500 --step-factor 1.25 --step-duration 5 --connections 8
echo "== open loop at 4,000 ECDSA P-256 sign/s for ${DURATION}s"
"${LG[@]}" --keys "$W/ec.pub.pem" --mix ecdsa-p256-sha256=1 --rate 4000 --duration "$DURATION" \
  --warmup 3 --connections 8
echo "== open loop at 1,000 RSA-2048 PKCS#1 sign/s for ${DURATION}s"
"${LG[@]}" --keys "$W/rsa.pub.pem" --mix rsa-pkcs1-sha256=1 --rate 1000 --duration "$DURATION" \
  --warmup 3 --connections 8
echo "== partition health"
curl -s http://127.0.0.1:24078/metrics | grep -E '^keycore_pkcs11_partition_healthy|^keycore_pkcs11_op_timeouts_total'
