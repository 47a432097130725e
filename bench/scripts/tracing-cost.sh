#!/usr/bin/env bash
# Tracing cost (issue 14): the harness's closed-loop ECDSA P-256 throughput
# run (`--quick --only ecdsa-p256-sha256`: server on CPU 0, generator on
# CPU 1) with tracing off, at tracing_sample_rate 0.01 and at 1.0, spans sent
# to a local OTLP/HTTP sink (python, answers 200 to every POST), interleaved
# in ROUNDS rounds so the three settings see the same machine. The harness
# prints ops/s, the server's CPU time per operation (every thread of the
# process, the span exporter included) and the load average.
#
# Needs the release build: cargo build --release -p keycore -p keycore-bench
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-2}
H=target/release/harness
[ -x "$H" ] && [ -x target/release/keycore ] || {
    echo "build first: cargo build --release -p keycore -p keycore-bench" >&2
    exit 1
}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 - "$port" <<'PY' &
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
sink=$!
trap 'kill $sink 2>/dev/null' EXIT
sleep 0.5
for r in $(seq "$ROUNDS"); do
    for mode in off 0.01 1.0; do
        printf 'round %s, tracing %s: ' "$r" "$mode"
        if [ "$mode" = off ]; then
            env -u KEYLESS_TRACING_ENABLED "$H" --quick --only ecdsa-p256-sha256
        else
            KEYLESS_TRACING_ENABLED=true KEYLESS_TRACING_SAMPLE_RATE=$mode \
                KEYLESS_TRACING_ADDRESS=127.0.0.1:$port \
                "$H" --quick --only ecdsa-p256-sha256
        fi
    done
done
