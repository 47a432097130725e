#!/usr/bin/env bash
# Issue 19's table: `keycore serve` (one reactor) in front of hsmsim over SoftHSM2 (one token, one
# EC P-256 key), driven closed-loop by the independent load client kload, once per fault row.
# Every signature is verified. Loopback only; each run is bounded by DURATION seconds.
#
#   bash scripts/pkcs11-faults-at-load.sh [DURATION_SECONDS] [ROW...]
#
# Rows: none error logout invalidate hang all (default: every row). Environment:
#   KC       keycore binary (default target/debug/keycore; build it first)
#   SIM      hsmsim module  (default target/debug/libkeycore_hsmsim.so)
#   KLOAD    kload binary   (default /tmp/kload-target/release/kload, built from a copy of
#            /work/shared/tools/kload: the shared folder is read-only)
#   OUT      work directory (default /tmp/keycore-faults-at-load)
# Prints one line per row (signed, errors, per-second min/max) and the PKCS#11 metrics after it.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-4}
shift || true
ROWS=("$@")
[ ${#ROWS[@]} -eq 0 ] && ROWS=(none error logout invalidate hang all)
KC=${KC:-$PWD/target/debug/keycore}
SIM=${SIM:-$PWD/target/debug/libkeycore_hsmsim.so}
KLOAD=${KLOAD:-/tmp/kload-target/release/kload}
W=${OUT:-/tmp/keycore-faults-at-load}
PIN=1234
PORT=${PORT:-24179}
MPORT=$((PORT - 1))
for f in "$KC" "$SIM" "$KLOAD"; do
  [ -x "$f" ] || [ -f "$f" ] || { echo "missing $f" >&2; exit 2; }
done
rm -rf "$W" && mkdir -p "$W/tokens"
"$KC" pki --dir "$W/pki" >/dev/null
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$W/tokens" >"$W/softhsm2.conf"
export SOFTHSM2_CONF=$W/softhsm2.conf
softhsm2-util --init-token --free --label faults --so-pin 1111 --pin $PIN >/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$W/ec.pem" 2>/dev/null
openssl pkey -in "$W/ec.pem" -outform DER -out "$W/ec.der"
openssl pkey -in "$W/ec.pem" -pubout -outform DER -out "$W/ec.pub.der"
openssl pkey -in "$W/ec.pem" -pubout -out "$W/ec.pub.pem"
for ty in privkey:"$W/ec.der" pubkey:"$W/ec.pub.der"; do
  pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label faults --login --pin $PIN \
    --write-object "${ty#*:}" --type "${ty%%:*}" --id 02 --label ec >/dev/null
done

BASE='"rtt": {"fixed_us": 300}, "capacity": {"max_concurrent": 8}, "latency": {"mechanisms": {"CKM_ECDSA": {"fixed_us": 1000}}}'
F_ERROR='{"kind": "error", "rv": "CKR_DEVICE_ERROR", "rate": 0.02, "functions": ["C_Sign"]}'
F_LOGOUT='{"kind": "logout", "rate": 0.0005}'
F_INVAL='{"kind": "invalidate_sessions", "scope": "all", "after_ops": 3000, "max_fires": 3}'
# "at": "network": the stall of an HA client or a lost reply, holding no device core (a
# device-side hang at this rate would exceed the 8 cores at full speed; see F_HANG in
# pkcs11/tests/pkcs11_faults.rs).
F_HANG='{"kind": "hang", "at": "network", "duration_ms": 1500, "then_rv": "CKR_DEVICE_ERROR", "rate": 0.001, "functions": ["C_Sign"]}'
faults() {
  case $1 in
    none) echo "" ;;
    error) echo "$F_ERROR" ;;
    logout) echo "$F_LOGOUT" ;;
    invalidate) echo "$F_INVAL" ;;
    hang) echo "$F_HANG" ;;
    all) echo "$F_ERROR, $F_LOGOUT, $F_INVAL, $F_HANG" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}
cat >"$W/gokeyless.yaml" <<YAML
port: $PORT
metrics_port: $MPORT
listen_address: 127.0.0.1
metrics_address: 127.0.0.1
cores: [0]
loglevel: ${LOGLEVEL:-3}
auth_cert: $W/pki/server.pem
auth_key: $W/pki/server.key.pem
cloudflare_ca_cert: $W/pki/ca.pem
private_key_stores:
  - uri: "pkcs11:token=faults;object=ec?module-path=$SIM&pin-value=$PIN&x-sessions-per-core=16&x-op-timeout=500ms"
YAML
echo "== $(date -u +%FT%TZ) uptime: $(uptime)"
echo "== keycore $KC, hsmsim $SIM, $DURATION s per row, kload --conns 4 --inflight 16 --verify-every 1"
printf '%-11s %9s %8s %8s %8s %7s  %s\n' row signed errors err% min/s max/s "metrics (pkcs11, after the run)"
for row in "${ROWS[@]}"; do
  echo "{$BASE, \"faults\": [$(faults "$row")]}" >"$W/hsmsim.json"
  KEYCORE_HSMSIM_CONFIG=$W/hsmsim.json taskset -c 0 "$KC" serve -c "$W/gokeyless.yaml" 2>"$W/serve-$row.log" &
  SERVER=$!
  for _ in $(seq 150); do
    curl -sf "http://127.0.0.1:$MPORT/metrics" >/dev/null 2>&1 && break
    sleep 0.2
  done
  taskset -c 1 "$KLOAD" --addr "127.0.0.1:$PORT" --ca "$W/pki/ca.pem" --cert "$W/pki/client.pem" \
    --key "$W/pki/client.key.pem" --pubkey "$W/ec.pub.pem" --op ecdsa-sha256 --conns 4 --inflight 16 \
    --duration "${DURATION}s" --warmup 0s --verify-every 1 >"$W/kload-$row.json" 2>"$W/kload-$row.err" || true
  M=$(curl -s "http://127.0.0.1:$MPORT/metrics" | grep -E '^keycore_pkcs11_' | sed -E 's/\{[^}]*\}//' |
    awk '{sub("keycore_pkcs11_", "", $1); printf "%s=%s ", $1, $2}')
  # The server's CPU time (reactor, workers and the simulator inside it, all on CPU 0): on a
  # shared machine a row can be CPU-bound, and then the cost per signature decides its rate.
  CPU=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' /proc/$SERVER/stat)
  M="cpu_s=$CPU $M"
  kill -TERM $SERVER 2>/dev/null || true
  wait $SERVER 2>/dev/null || true
  python3 - "$row" "$W/kload-$row.json" "$M" <<'PY'
import json, sys
row, path, m = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    j = json.load(open(path))
except Exception as e:
    print(f"{row:<11} kload failed: {e}"); sys.exit(0)
done, err = j["completed"], j["errors"]
ps = j.get("per_second") or [0]
pct = 100.0 * err / max(1, done + err)
bad = j.get("verify_failures", 0) + j.get("protocol_errors", 0) + j.get("conn_errors", 0)
cpu = float(m.split()[0].split("=")[1]) if m.startswith("cpu_s=") else 0.0
per = f"{1e6 * cpu / max(1, done):.0f} us/op" if cpu else ""
print(f"{row:<11} {done:9d} {err:8d} {pct:7.2f}% {min(ps):8d} {max(ps):7d}  {per} {m}" + (f" BAD={bad}" if bad else ""))
PY
done
echo "== $(date -u +%FT%TZ) uptime: $(uptime)"
