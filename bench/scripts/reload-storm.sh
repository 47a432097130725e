#!/usr/bin/env bash
# Reload under load (issue 14): one `keycore serve` (1 core) under closed-loop ECDSA P-256 load
# from `keycore loadgen`, in three phases of one run: quiet, a SIGHUP every 100 ms (each reload
# re-reads the config, every key file and the TLS material and swaps them in), quiet again.
# The server's own `keycore_responses_total` is scraped every second, so each phase's rate comes
# from the same counter in the same run; the loadgen report gives failed requests (must be 0).
# Usage: bench/scripts/reload-storm.sh [KEYCORE] (default target/release/keycore). ~40 s, all
# traffic on 127.0.0.1. PHASE=seconds per phase (default 10).
set -euo pipefail
bin=${1:-target/release/keycore}
phase=${PHASE:-10}
d=$(mktemp -d)
trap 'kill $srv 2>/dev/null || true; rm -rf "$d"' EXIT
"$bin" pki --dir "$d/p" >/dev/null
mkdir "$d/keys"
cp "$d/p/keys/p256.key" "$d/p/keys/ed25519.key" "$d/p/keys/rsa2048.key" "$d/keys/"
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
mport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat >"$d/g.yaml" <<EOF
port: $port
metrics_port: $mport
listen_address: 127.0.0.1
metrics_address: 127.0.0.1
cores: [0]
auth_cert: $d/p/server.pem
auth_key: $d/p/server.key.pem
cloudflare_ca_cert: $d/p/ca.pem
pid_file: $d/k.pid
private_key_stores:
  - dir: $d/keys
EOF
KEYCORE_LOG=info "$bin" serve -c "$d/g.yaml" 2>"$d/server.log" &
srv=$!
for _ in $(seq 100); do [ -s "$d/k.pid" ] && break; sleep 0.1; done
scrape() { curl -s "http://127.0.0.1:$mport/metrics" | awk -v n="$1" '$1 ~ "^"n {s+=$2} END {print s+0}'; }
echo "# $(date -u +%FT%TZ) $("$bin" --version); load $(cut -d' ' -f1-3 /proc/loadavg)"
taskset -c 1 "$bin" loadgen --server "127.0.0.1:$port" --ca "$d/p/ca.pem" --cert "$d/p/client.pem" \
  --key "$d/p/client.key.pem" --server-name localhost --keys "$d/keys/p256.key" \
  --mix ecdsa-p256-sha256=100 --mode closed --concurrency 64 --connections 8 \
  --duration $((3 * phase + 2)) --warmup 1 --quiet --json >"$d/report.json" &
lg=$!
sleep 2
rate() { # responses per second over one phase
  local a b; a=$(scrape keycore_responses_total); sleep "$phase"; b=$(scrape keycore_responses_total)
  echo $(( (b - a) / phase ))
}
q1=$(rate)
a=$(scrape keycore_responses_total); end=$(( $(date +%s%N) + phase * 1000000000 )); n=0
while [ "$(date +%s%N)" -lt "$end" ]; do
  kill -HUP "$srv"; n=$((n + 1)); sleep 0.1
done
b=$(scrape keycore_responses_total); storm=$(( (b - a) / phase ))
q2=$(rate)
wait $lg
ok=$(scrape 'keycore_reload_total{result="ok"}'); err=$(scrape 'keycore_reload_total{result="error"}')
python3 - "$d/report.json" <<EOF
import json,sys
r=json.load(open(sys.argv[1]))
t=r["total"]
print("loadgen: sent %s, ok %s, failed %s, verified %s, error kinds %s" % (r["sent"], t["ok"], t["errors"], t["verified"], r["errors"]))
EOF
echo "SIGHUPs sent: $n; reloads ok: $ok, error: $err"
echo "responses/s  quiet: $q1  during reloads: $storm  quiet again: $q2"
python3 -c "print('during / quiet (mean of both): %.3f' % ($storm / (($q1 + $q2) / 2)))"
grep -m3 'reload applied' "$d/server.log" || true
echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
