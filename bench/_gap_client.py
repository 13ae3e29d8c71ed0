#!/usr/bin/env python
"""
The client of C{proxy_gap_bench.py}: one persistent HTTPS connection, a GET
every C{--interval} seconds, every answer written down.

It runs as its own process (so the bench's reactor and this loop do not
share a GIL) with the standard library only: C{http.client} over an
C{ssl} context that trusts the array CA and expects the certificate name
C{--name}.  Requests go one at a time (HTTP/1.1 keep-alive, no
pipelining); the next is sent C{--interval} after the previous one was
sent, or at once if that answer took longer.

One line per request on C{--out} (flushed at once), tab-separated:

    sent  done  status  served_by  epoch  connection  detail

C{sent}/C{done} are C{time.monotonic()} (CLOCK_MONOTONIC, the same clock
as the bench process's); C{status} is the HTTP status, or C{0} when no
answer came (the exception is in C{detail}); C{connection} numbers the TLS
connections this client opened (it only changes on a reconnect).  The
first line is C{# ready} once the first answer came.  The client ends when
its standard input closes (or on SIGTERM).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import signal
import socket
import ssl
import sys
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--name", default="proxy", help="the certificate name expected")
    parser.add_argument("--user", default="monitor")
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--path", default="/api/v1/sps")
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    password = open(args.password_file).read().strip()
    auth = "Basic " + base64.b64encode(f"{args.user}:{password}".encode()).decode("ascii")
    context = ssl.create_default_context(cafile=args.ca)
    context.set_alpn_protocols(["http/1.1"])

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watchStdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            stop.set()

    threading.Thread(target=watchStdin, daemon=True).start()

    out = open(args.out, "w", buffering=1)
    serial = 0
    conn: http.client.HTTPSConnection | None = None
    sock: object = None
    ready = False

    def connect() -> http.client.HTTPSConnection:
        nonlocal serial, sock
        c = http.client.HTTPSConnection(args.host, args.port, context=context, timeout=args.timeout)
        raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Connected here, not by http.client: the certificate names the
        # proxy (--name), not the address.
        c.sock = context.wrap_socket(raw, server_hostname=args.name)
        serial += 1
        sock = c.sock
        return c

    nextSend = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < nextSend:
            time.sleep(nextSend - now)
        sent = time.monotonic()
        nextSend = sent + args.interval
        status, servedBy, epoch, detail = 0, "-", "-", "-"
        try:
            if conn is None:
                conn = connect()
            elif conn.sock is not sock:
                # http.client dropped the socket (the server closed it) and
                # would open a new one by itself: that is a reconnect.
                conn.close()
                conn = connect()
            conn.request("GET", args.path, headers={"Authorization": auth})
            response = conn.getresponse()
            response.read()
            status = response.status
            servedBy = response.getheader("X-SPMgmt-Served-By", "-")
            epoch = response.getheader("X-SPMgmt-Epoch", "-")
            if response.will_close:
                detail = "server-close"
                conn.close()
                conn = None
        except Exception as e:  # noqa: BLE001 - every failure is data
            detail = type(e).__name__ + ":" + str(e).replace("\t", " ").replace("\n", " ")[:120]
            if conn is not None:
                conn.close()
            conn = None
        done = time.monotonic()
        out.write(f"{sent:.6f}\t{done:.6f}\t{status}\t{servedBy}\t{epoch}\t{serial}\t{detail}\n")
        if not ready and status == 200:
            ready = True
            out.write("# ready\n")
    out.close()
    os._exit(0)


if __name__ == "__main__":
    main()
