#!/usr/bin/env python3
"""Misbehaving clients for the chaos soak (scripts/chaos-soak.sh), loopback only.

Each mode runs until its duration is over (every loop is bounded in time and
count) and prints one JSON line with its counts. Every request a client sends
is a ping with a unique payload; an answer counts only if it is the pong for
that id with that payload. A request is "lost" if the connection ended (or 10 s
passed) without its answer while the client was still reading.

Modes:
  churn      connect (mutual TLS), 1-3 pings, check them, close; again (a third
             of the closes are abrupt: no close_notify)
  slow       pipeline 300 pings of 1,000 bytes, read the answers 2 KiB every
             20 ms, check them all, close; again
  stall      hold 20 raw sockets that sent 3 bytes of a TLS record header and
             nothing more for 4 s, then close them; again
  nonreader  pipeline 2,000 pings of 1,000 bytes and never read; hold up to
             20 s (the server cuts it), then close; again

usage: chaos_clients.py MODE ADDR CA CERT KEY DURATION_S
"""
import json
import os
import socket
import ssl
import struct
import sys
import time

PING, PONG = 0xF1, 0xF2


def request(rid, payload):
    body = bytes([0x11, 0, 1, PING]) + bytes([0x12]) + struct.pack(">H", len(payload)) + payload
    return bytes([1, 0]) + struct.pack(">HI", len(body), rid) + body


def parse(body):
    items, i = {}, 0
    while i + 3 <= len(body):
        tag, n = body[i], struct.unpack(">H", body[i + 1:i + 3])[0]
        items[tag] = body[i + 3:i + 3 + n]
        i += 3 + n
    return items


class Reader:
    def __init__(self, s):
        self.s, self.buf = s, b""

    def fill(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def message(self):
        self.fill(8)
        n, rid = struct.unpack(">HI", self.buf[2:8])
        self.fill(8 + n)
        body, self.buf = self.buf[8:8 + n], self.buf[8 + n:]
        return rid, parse(body)


def tls_context(ca, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def connect(ctx, host, port):
    raw = socket.create_connection((host, port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def check(counts, sent, rid, items):
    payload = sent.pop(rid, None)
    if payload is None:
        counts["wrong"] += 1  # an id never sent, or answered twice
    elif items.get(0x11) == bytes([PONG]) and items.get(0x12, b"") == payload:
        counts["answered"] += 1
    else:
        counts["wrong"] += 1


def run(mode, addr, ca, cert, key, duration):
    host, port = addr.rsplit(":", 1)
    port = int(port)
    end = time.monotonic() + duration
    counts = {"mode": mode, "connections": 0, "connect_errors": 0, "sent": 0,
              "answered": 0, "wrong": 0, "lost": 0, "send_blocked_or_cut": 0}
    ctx = tls_context(ca, cert, key)
    rid = 1
    held = []
    while time.monotonic() < end and counts["connections"] < 1_000_000:
        try:
            if mode == "stall":
                for _ in range(20):
                    s = socket.create_connection((host, port), timeout=5)
                    s.sendall(b"\x16\x03\x01")
                    held.append(s)
                    counts["connections"] += 1
                time.sleep(4)
                for s in held:
                    s.close()
                held.clear()
                continue
            s = connect(ctx, host, port)
            counts["connections"] += 1
        except (OSError, ssl.SSLError):
            counts["connect_errors"] += 1
            time.sleep(0.1)
            continue
        sent = {}
        try:
            if mode == "churn":
                for _ in range(1 + rid % 3):
                    p = os.urandom(16)
                    sent[rid] = p
                    s.sendall(request(rid, p))
                    counts["sent"] += 1
                    rid += 1
                r = Reader(s)
                while sent:
                    check(counts, sent, *r.message())
                if rid % 3 == 0:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.close()  # abrupt: RST, no close_notify
                else:
                    s.close()
                time.sleep(0.02)
            elif mode == "slow":
                out = b""
                for _ in range(300):
                    p = os.urandom(1000)
                    sent[rid] = p
                    out += request(rid, p)
                    rid += 1
                s.sendall(out)
                counts["sent"] += 300
                s.settimeout(10)
                r = Reader(s)
                deadline = time.monotonic() + 60
                while sent and time.monotonic() < deadline:
                    # Read slowly: at most ~2 KiB per 20 ms from the socket.
                    if len(r.buf) < 8 or len(r.buf) < 8 + struct.unpack(">H", r.buf[2:4])[0]:
                        chunk = s.recv(2048)
                        if not chunk:
                            raise EOFError
                        r.buf += chunk
                        time.sleep(0.02)
                        continue
                    check(counts, sent, *r.message())
                s.close()
            elif mode == "nonreader":
                p = os.urandom(1000)
                s.settimeout(20)
                try:
                    for _ in range(2000):
                        s.sendall(request(rid, p))
                        rid += 1
                        counts["sent"] += 1
                    time.sleep(min(20, max(0, end - time.monotonic())))
                except OSError:
                    counts["send_blocked_or_cut"] += 1
                # Never read: nothing it sent is expected back.
                s.close()
                continue
        except (EOFError, OSError, ssl.SSLError):
            pass
        counts["lost"] += len(sent)
    for s in held:
        s.close()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    run(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]))
