#!/usr/bin/env python
"""
The client of C{proxy_idle_bench.py}: many TLS keep-alive connections to
one HTTPS server from one asyncio process (standard library only).

It reads one JSON command a line on standard input and answers each with
one JSON line on standard output:

  - C{{"cmd": "open", "n": N, "concurrency": C}}: open N connections (TLS,
    the array CA, certificate name C{--name}), at most C at a time, and
    send one C{GET --path} on each, so each is a live keep-alive
    connection; the answer counts statuses and failures;
  - C{{"cmd": "alive"}}: how many connections the server has not closed
    (no bytes are sent: an idle connection the server closed reads EOF);
  - C{{"cmd": "get", "concurrency": C}}: one more GET on every connection
    that was opened, C at a time; the answer counts statuses (by the SP
    that served them) and failures, and how long it took;
  - C{{"cmd": "close"}}: close everything and exit.

It raises its own descriptor limit to the hard limit first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import resource
import ssl
import sys
import time
from typing import Any


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.broken = False


async def exchange(conn: Conn, request: bytes, timeout: float) -> tuple[int, str]:
    """Send C{request}, read the whole answer; (status, served-by)."""
    conn.writer.write(request)
    await conn.writer.drain()
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    servedBy = "-"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "x-spmgmt-served-by":
            servedBy = value.strip()
    if length:
        await asyncio.wait_for(conn.reader.readexactly(length), timeout)
    return status, servedBy


def failure(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "closed by the server (EOF)"
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    return type(e).__name__


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--name", default="proxy")
    parser.add_argument("--user", default="monitor")
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--path", default="/api/v1/sps")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    password = open(args.password_file).read().strip()
    auth = base64.b64encode(f"{args.user}:{password}".encode()).decode("ascii")
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.name}\r\nAuthorization: Basic {auth}\r\n\r\n"
    ).encode("ascii")
    context = ssl.create_default_context(cafile=args.ca)
    context.set_alpn_protocols(["http/1.1"])
    conns: list[Conn] = []
    loop = asyncio.get_running_loop()

    def answer(value: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    async def openOne(sem: asyncio.Semaphore, counts: collections.Counter[str]) -> None:
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(args.host, args.port, ssl=context, server_hostname=args.name,
                                            limit=64 * 1024),
                    args.timeout,
                )
            except Exception as e:  # noqa: BLE001 - every failure is data
                counts["connect failed: " + failure(e)] += 1
                return
            conn = Conn(reader, writer)
            conns.append(conn)
            try:
                status, servedBy = await exchange(conn, request, args.timeout)
            except Exception as e:  # noqa: BLE001
                conn.broken = True
                counts["first GET failed: " + failure(e)] += 1
                return
            counts[f"{status} from {servedBy}"] += 1

    async def getOne(sem: asyncio.Semaphore, conn: Conn, counts: collections.Counter[str], times: list[float]) -> None:
        async with sem:
            if conn.broken:
                counts["not usable before"] += 1
                return
            started = time.monotonic()
            try:
                status, servedBy = await exchange(conn, request, args.timeout)
            except Exception as e:  # noqa: BLE001
                conn.broken = True
                counts["failed: " + failure(e)] += 1
                return
            times.append(time.monotonic() - started)
            counts[f"{status} from {servedBy}"] += 1

    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        started = time.monotonic()
        if cmd["cmd"] == "open":
            counts: collections.Counter[str] = collections.Counter()
            sem = asyncio.Semaphore(cmd["concurrency"])
            await asyncio.gather(*(openOne(sem, counts) for _ in range(cmd["n"])))
            answer({"counts": dict(counts), "connections": len(conns), "seconds": time.monotonic() - started,
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]})
        elif cmd["cmd"] == "alive":
            # Let pending EOFs arrive first.
            await asyncio.sleep(0.5)
            alive = sum(1 for c in conns if not c.broken and not c.reader.at_eof())
            answer({"alive": alive, "connections": len(conns)})
        elif cmd["cmd"] == "get":
            counts = collections.Counter()
            times: list[float] = []
            sem = asyncio.Semaphore(cmd["concurrency"])
            await asyncio.gather(*(getOne(sem, c, counts, times) for c in conns))
            times.sort()
            answer({
                "counts": dict(counts), "seconds": time.monotonic() - started,
                "p50": times[len(times) // 2] if times else None,
                "p99": times[int(len(times) * 0.99)] if times else None,
                "max": times[-1] if times else None,
            })
        elif cmd["cmd"] == "close":
            for c in conns:
                c.writer.close()
            answer({"closed": len(conns)})
            break
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
