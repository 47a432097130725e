#!/usr/bin/env bash
# Chaos soak (issue 12): `keycore serve` (one reactor, CPU 0) under load while everything goes
# wrong at once, for DURATION seconds, loopback only:
#   * HSM faults: a P-256 key behind hsmsim over SoftHSM2 with issue 19's four faults together
#     (2% CKR_DEVICE_ERROR on C_Sign, logouts, all sessions invalidated 3x, 1.5 s hangs);
#   * load: kload closed loop on the HSM key (4 conns x 16 in flight) and on a software P-384
#     key (2 x 8), every signature verified;
#   * connection churn, slow readers, clients that never read, stalled handshakes
#     (scripts/chaos_clients.py, every ping answer checked);
#   * a signal storm: SIGHUP, SIGUSR1, SIGUSR2 in turn every 200 ms;
#   * VmRSS of the server sampled every 5 s.
# At the end: SIGTERM, and the drain must end with exit 0. Prints the figures and PASS/FAIL:
# every request answered (a signature that verifies, or an explicit error code), none wrong,
# the server alive throughout, memory flat (the last minute's lowest VmRSS sample within
# 10% + 8 MiB of the second minute's highest: bursts may raise peaks, a leak raises the floor).
#
#   bash scripts/chaos-soak.sh [DURATION_SECONDS]        (default 300)
#
# Environment: KC (default target/debug/keycore), SIM (target/debug/libkeycore_hsmsim.so),
# KLOAD (/tmp/kload-target/release/kload, built from /work/shared/tools/kload), OUT (work dir).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-300}
KC=${KC:-$PWD/target/debug/keycore}
SIM=${SIM:-$PWD/target/debug/libkeycore_hsmsim.so}
KLOAD=${KLOAD:-/tmp/kload-target/release/kload}
W=${OUT:-/tmp/keycore-chaos-soak}
CLIENTS=$PWD/scripts/chaos_clients.py
PIN=1234
PORT=${PORT:-24279}
MPORT=$((PORT - 1))
for f in "$KC" "$SIM" "$KLOAD"; do
  [ -e "$f" ] || { echo "missing $f" >&2; exit 2; }
done
rm -rf "$W" && mkdir -p "$W/tokens"
"$KC" pki --dir "$W/pki" >/dev/null
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$W/tokens" >"$W/softhsm2.conf"
export SOFTHSM2_CONF=$W/softhsm2.conf
softhsm2-util --init-token --free --label chaos --so-pin 1111 --pin $PIN >/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$W/ec.pem" 2>/dev/null
openssl pkey -in "$W/ec.pem" -outform DER -out "$W/ec.der"
openssl pkey -in "$W/ec.pem" -pubout -outform DER -out "$W/ec.pub.der"
openssl pkey -in "$W/ec.pem" -pubout -out "$W/ec.pub.pem"
for ty in privkey:"$W/ec.der" pubkey:"$W/ec.pub.der"; do
  pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label chaos --login --pin $PIN \
    --write-object "${ty#*:}" --type "${ty%%:*}" --id 02 --label ec >/dev/null
done
openssl pkey -in "$W/pki/keys/p384.key" -pubout -out "$W/soft.pub.pem"

cat >"$W/hsmsim.json" <<'JSON'
{"rtt": {"fixed_us": 300}, "capacity": {"max_concurrent": 8},
 "latency": {"mechanisms": {"CKM_ECDSA": {"fixed_us": 1000}}},
 "faults": [
  {"kind": "error", "rv": "CKR_DEVICE_ERROR", "rate": 0.02, "functions": ["C_Sign"]},
  {"kind": "logout", "rate": 0.0005},
  {"kind": "invalidate_sessions", "scope": "all", "after_ops": 3000, "max_fires": 3},
  {"kind": "hang", "at": "network", "duration_ms": 1500, "then_rv": "CKR_DEVICE_ERROR", "rate": 0.001, "functions": ["C_Sign"]}]}
JSON
cat >"$W/gokeyless.yaml" <<YAML
port: $PORT
metrics_port: $MPORT
listen_address: 127.0.0.1
metrics_address: 127.0.0.1
cores: [0]
loglevel: 2
handshake_timeout: 3s
idle_timeout: 10s
pid_file: $W/keycore.pid
auth_cert: $W/pki/server.pem
auth_key: $W/pki/server.key.pem
cloudflare_ca_cert: $W/pki/ca.pem
private_key_stores:
  - dir: $W/pki/keys
  - uri: "pkcs11:token=chaos;object=ec?module-path=$SIM&pin-value=$PIN&x-sessions-per-core=16&x-op-timeout=500ms"
YAML

echo "== $(date -u +%FT%TZ) start; uptime: $(uptime)"
echo "== keycore $KC ($(git rev-parse --short HEAD)), $DURATION s"
KEYCORE_HSMSIM_CONFIG=$W/hsmsim.json taskset -c 0 "$KC" serve -c "$W/gokeyless.yaml" 2>"$W/serve.log" &
SERVER=$!
for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$MPORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$MPORT/readyz" >/dev/null || { echo "server not ready" >&2; kill $SERVER; exit 1; }

PIDS=()
K=(--addr "127.0.0.1:$PORT" --ca "$W/pki/ca.pem" --cert "$W/pki/client.pem" --key "$W/pki/client.key.pem"
   --duration "${DURATION}s" --warmup 0s --verify-every 1)
taskset -c 1 "$KLOAD" "${K[@]}" --pubkey "$W/ec.pub.pem" --op ecdsa-sha256 --conns 4 --inflight 16 \
  >"$W/kload-hsm.json" 2>"$W/kload-hsm.err" &
PIDS+=($!)
taskset -c 1 "$KLOAD" "${K[@]}" --pubkey "$W/soft.pub.pem" --op ecdsa-sha256 --conns 2 --inflight 8 \
  >"$W/kload-soft.json" 2>"$W/kload-soft.err" &
PIDS+=($!)
for mode in churn slow nonreader stall; do
  taskset -c 1 python3 "$CLIENTS" $mode "127.0.0.1:$PORT" "$W/pki/ca.pem" "$W/pki/client.pem" \
    "$W/pki/client.key.pem" "$DURATION" >"$W/clients-$mode.json" 2>"$W/clients-$mode.err" &
  PIDS+=($!)
done
# Signal storm and memory samples, bounded by the duration.
(
  end=$((SECONDS + DURATION)); n=0
  while [ $SECONDS -lt $end ]; do
    case $((n % 3)) in 0) s=HUP ;; 1) s=USR1 ;; *) s=USR2 ;; esac
    kill -s $s $SERVER 2>/dev/null || { echo "server gone at signal $n" >>"$W/signals.txt"; break; }
    n=$((n + 1)); sleep 0.2
  done
  echo "signals sent: $n" >>"$W/signals.txt"
) &
STORM=$!
(
  end=$((SECONDS + DURATION)); t=0
  while [ $SECONDS -lt $end ]; do
    awk -v t=$t '/^VmRSS/ {print t, $2}' /proc/$SERVER/status >>"$W/rss.txt" 2>/dev/null || break
    sleep 5; t=$((t + 5))
  done
) &
RSS=$!
for p in "${PIDS[@]}"; do wait "$p" || true; done
wait $STORM $RSS || true
ALIVE=yes; kill -0 $SERVER 2>/dev/null || ALIVE=no
grep -E '^(Rss|Anonymous)' /proc/$SERVER/smaps_rollup >"$W/smaps.txt" 2>/dev/null || true
ls /proc/$SERVER/task 2>/dev/null | wc -l >"$W/threads.txt" || true
curl -s "http://127.0.0.1:$MPORT/metrics" >"$W/metrics.txt" || true
kill -TERM $SERVER 2>/dev/null || true
set +e; wait $SERVER; STATUS=$?; set -e
echo "== $(date -u +%FT%TZ) end; uptime: $(uptime)"

python3 - "$W" "$ALIVE" "$STATUS" "$DURATION" <<'PY'
import json, sys, re
w, alive, status, duration = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ok = True
def fail(msg):
    global ok
    ok = False
    print("FAIL:", msg)
for name in ("hsm", "soft"):
    try:
        j = json.load(open(f"{w}/kload-{name}.json"))
    except Exception as e:
        fail(f"kload {name}: {e}"); continue
    ps = j.get("per_second") or [0]
    bad = j.get("verify_failures", 0) + j.get("protocol_errors", 0) + j.get("conn_errors", 0)
    print(f"kload {name}: signed+verified {j['completed']:,}, explicit errors {j['errors']:,}, "
          f"verify/protocol/connection failures {bad}, per second min {min(ps):,} max {max(ps):,}")
    if bad:
        fail(f"kload {name}: {bad} wrong or lost")
    if min(ps) == 0:
        fail(f"kload {name}: a second without answers")
for mode in ("churn", "slow", "nonreader", "stall"):
    try:
        c = json.loads(open(f"{w}/clients-{mode}.json").read().strip().splitlines()[-1])
    except Exception as e:
        fail(f"clients {mode}: {e}"); continue
    print(f"clients {mode}: " + ", ".join(f"{k} {v:,}" for k, v in c.items() if k != "mode"))
    if c["wrong"] or c["lost"]:
        fail(f"clients {mode}: {c['wrong']} wrong, {c['lost']} lost")
rss = [tuple(map(int, l.split())) for l in open(f"{w}/rss.txt")]
if rss:
    # Bursts (a non-reading client's queued answers, slow readers' buffers, replaced HSM
    # worker threads) raise peaks for a while; a leak raises the floor. Per minute: lowest
    # and highest sample. Flat: the last minute's lowest is within 10% + 8 MiB of the
    # second minute's highest (the first minute is start-up).
    mins = {}
    for t, kb in rss:
        mins.setdefault(t // 60, []).append(kb)
    print("VmRSS per minute (MiB, low-high): " + ", ".join(
        f"{m + 1}: {min(v)/1024:.1f}-{max(v)/1024:.1f}" for m, v in sorted(mins.items())))
    if duration >= 180 and len(mins) >= 3:
        second, last = mins[1], mins[max(mins)]
        if min(last) > max(second) * 1.10 + 8192:
            fail(f"memory grew: last minute's floor {min(last)/1024:.1f} MiB over the second minute's peak {max(second)/1024:.1f} MiB")
m = open(f"{w}/metrics.txt").read()
def metric(name):
    return sum(float(x) for x in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", m, re.M))
keys = ["keycore_requests_total", "keycore_responses_total", "keycore_requests_unanswered_total",
        "keycore_write_stalls_total", "keycore_idle_timeouts_total", "keycore_handshake_timeouts_total",
        "keycore_tls_failures_total", "keycore_connections_accepted_total",
        "keycore_pkcs11_retries_total", "keycore_pkcs11_session_reopens_total",
        "keycore_pkcs11_relogins_total", "keycore_pkcs11_op_timeouts_total",
        "keycore_pkcs11_partition_failures_total"]
print("server: " + ", ".join(f"{k.replace('keycore_', '')} {metric(k):,.0f}" for k in keys))
print(open(f"{w}/signals.txt").read().strip())
print("at the end: threads " + open(f"{w}/threads.txt").read().strip() + "; " +
      " ".join(open(f"{w}/smaps.txt").read().split()))
log = open(f"{w}/serve.log").read()
print(f"server log: {len(log.splitlines())} lines, {len(log):,} bytes")
if alive != "yes":
    fail("the server died during the soak")
if status != 0:
    fail(f"exit status {status} after SIGTERM")
print("PASS" if ok else "FAIL")
PY
