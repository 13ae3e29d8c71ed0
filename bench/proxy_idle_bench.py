#!/usr/bin/env python
"""
Many idle TLS keep-alive connections to the proxy held through a SIGKILL
failover (loopback only).

Starts the proxy (TLS front end, following the arbiter process), spa and spb as real C{twistd}
processes with L{ArrayHarness}, and one asyncio client process
(C{bench/_idle_client.py}) that opens C{--connections} (10,000) TLS
connections to the proxy, C{--concurrency} at a time, and sends one
C{GET --path} (Basic auth) on each, so each is a live keep-alive
connection.  The connections then sit idle for C{--idle} seconds; the
bench SIGKILLs the SP holding the token, waits until the proxy routes to
the other SP, checks how many connections the proxy kept open (without
sending anything), and sends one more GET on every connection
(C{--concurrency} at a time), counting the 200s.

The proxy's resident set (C{VmRSS}, C{VmHWM} of C{/proc/<pid>/status}),
its open descriptors and its CPU time are noted at every step.

Run from the repository root::

    .venv/bin/python bench/proxy_idle_bench.py [--connections N] [--record]

C{--diagnose} runs the proxy with C{PYTHONTRACEMALLOC=1} and
C{bench/_memdump} on its C{PYTHONPATH}, and asks it (SIGUSR2) where its
memory is before the client connects and once every connection is open:
Python allocations by source line, live objects by class and glibc's heap
(which also holds OpenSSL's allocations); it reports what one connection
costs.  Tracing makes the proxy slower and bigger, so such a run is for the
breakdown, not for the figures of a normal run.

C{--record} rewrites the section between the proxy-idle-bench markers in
C{bench/RESULTS.md} (with C{--diagnose}: the proxy-idle-memory markers).  Every process is stopped at the end, on error too, and
the whole run is bounded by C{--deadline} seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import react

# From bench/ (on sys.path when run as a script); it puts the repository root there too.
from _common import REPO, RESULTS, CPUWindow, codeUnderTest, command, cpuLine, machine
from _common import disturbed, processCPU, processMemory, endRun, record, withDeadline
from failover_bench import settle, sleep

from spmgmt.testing import ArrayHarness

SPS = ("spa", "spb")
MARKER = "proxy-idle-bench"
DIAGNOSIS_MARKER = "proxy-idle-memory"


class _Client(ProcessProtocol):
    """The idle client: one JSON command a line in, one JSON answer a line out."""

    def __init__(self) -> None:
        self.ended: Deferred[Any] = Deferred()
        self._buffer = b""
        self._waiting: list[Deferred[dict[str, Any]]] = []
        self.stderr = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if self._waiting:
                self._waiting.pop(0).callback(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def ask(self, **command: Any) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append(d)
        self.transport.write(json.dumps(command).encode() + b"\n")
        return d

    def processEnded(self, reason: Any) -> None:
        for d in self._waiting:
            d.errback(RuntimeError(f"the idle client ended: {self.stderr.decode(errors='replace')[-2000:]}"))
        self._waiting = []
        self.ended.callback(None)


def snapshot(pid: int) -> dict[str, float]:
    """The proxy's memory, descriptors and CPU seconds now."""
    s: dict[str, float] = dict(processMemory(pid))
    try:
        s["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        s["fds"] = -1
    s["cpu"] = processCPU(pid)
    s["at"] = time.monotonic()
    return s


async def proxyHolder(harness: ArrayHarness) -> dict[str, Any] | None:
    try:
        response = await harness.request("proxy", "GET", "/healthz", user=None, timeout=2.0)
    except Exception:
        return None
    return response.json().get("token") if response.code == 200 else None  # type: ignore[no-any-return]


async def memoryDump(reactor: Any, harness: ArrayHarness, base: Path, n: int) -> dict[str, Any]:
    """Ask the proxy (SIGUSR2) where its memory is; its answer (see bench/_memdump)."""
    path = Path(f"{base}.{n}")
    harness.signal("proxy", signal.SIGUSR2)

    async def written() -> bool:
        return path.exists() and path.stat().st_size > 0

    await harness.waitFor(written, 120.0, "the proxy's memory dump", "proxy", interval=0.2)
    await sleep(reactor, 0.5)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def diagnosis(
    args: argparse.Namespace, before: dict[str, Any], after: dict[str, Any], rss: tuple[float, float], n: int
) -> str:
    """What one connection costs, from two dumps (see L{memoryDump})."""
    lines = []
    rssPer = (rss[1] - rss[0]) * 1024 * 1024 / n
    mb, ma = before["mallinfo"], after["mallinfo"]
    heap = (ma.get("arena", 0) + ma.get("hblkhd", 0)) - (mb.get("arena", 0) + mb.get("hblkhd", 0))
    used = ma.get("uordblks", 0) - mb.get("uordblks", 0)
    tb, ta = before["tracemalloc"], after["tracemalloc"]
    python = (ta["total"] - tb["total"]) if ta and tb else None
    m = machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += [
        "## Where an idle connection's memory goes in the proxy (`bench/proxy_idle_bench.py --diagnose`)",
        "",
        f"- date: {when}; code: {codeUnderTest()}; Python {m['python']}, Twisted {m['twisted']}, TLS: pyOpenSSL on {m['tls']}",
        f"- command (repo root): `{command('bench/proxy_idle_bench.py')}`",
        f"- the proxy runs with `PYTHONTRACEMALLOC=1` (tracing adds its own memory and time: these RSS figures "
        f"are not those of a normal run); dumps (SIGUSR2, `bench/_memdump/sitecustomize.py`) before the client "
        f"connects and with {n} connections open, each after one GET; a dump stops the proxy's reactor for "
        "a second or more, long enough for the arbiter in it to miss heartbeats and move the token (harmless "
        "here: only memory is measured)",
        "",
        "| per connection | bytes |",
        "| --- | ---: |",
        f"| RSS growth (VmRSS {rss[0]:.0f} → {rss[1]:.0f} MB) | {rssPer:,.0f} |",
        f"| glibc heap growth (`mallinfo2` arena + mmapped blocks; Python objects, OpenSSL, buffers) "
        f"| {heap / n:,.0f} |",
        f"| glibc heap bytes in use growth (`uordblks`) | {used / n:,.0f} |",
    ]
    if python is not None:
        lines.append(f"| Python allocations growth (tracemalloc, includes Python's own small-object arenas) "
                     f"| {python / n:,.0f} |")
        lines.append(f"| the rest (C allocations outside Python: OpenSSL's `SSL` objects, BIOs, libc) "
                     f"| {max(0, used - python) / n:,.0f} |")
    lines += ["", "Python allocations that grew, by source line (tracemalloc, bytes per connection):", "",
              "| source line | bytes / connection | blocks / connection |", "| --- | ---: | ---: |"]
    if ta and tb:
        old = {where: (size, count) for where, size, count in tb["top"]}
        grew = []
        for where, size, count in ta["top"]:
            s0, c0 = old.get(where, (0, 0))
            if size - s0 > 0.01 * n:
                grew.append((size - s0, count - c0, where))
        grew.sort(reverse=True)
        for size, count, where in grew[:20]:
            short = where.replace(str(REPO) + "/", "").split("site-packages/")[-1]
            lines.append(f"| `{short}` | {size / n:,.0f} | {count / n:.1f} |")
    lines += ["", "Live objects (tracked by the garbage collector) that grew by at least one per 4 connections:", "",
              "| class | objects / connection | `getsizeof` bytes / connection |", "| --- | ---: | ---: |"]
    grewTypes = []
    for cls, (count, size) in after["types"].items():
        c0, s0 = before["types"].get(cls, (0, 0))
        if count - c0 >= n / 4:
            grewTypes.append(((size - s0) / n, (count - c0) / n, cls))
    grewTypes.sort(reverse=True)
    for size, count, cls in grewTypes[:25]:
        lines.append(f"| `{cls}` | {count:.2f} | {size:,.0f} |")
    lines.append("")
    return "\n".join(lines)


def fmtCounts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} × {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def ok200(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.startswith("200 "))


def report(
    args: argparse.Namespace, steps: list[tuple[str, dict[str, float]]], opened: dict[str, Any],
    alive: dict[str, Any], got: dict[str, Any], failover: dict[str, Any], cpu: dict[str, float], elapsed: float,
) -> str:
    m = machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    usable = ok200(got["counts"])
    peak = max(s.get("VmHWM", 0.0) for _, s in steps)
    rssAfter = dict(steps)["after the GET on every connection"].get("VmRSS", 0.0)
    rows = ["| step | proxy VmRSS MB | VmHWM MB | open fds | proxy CPU s since the previous step | wall s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    previous = None
    for name, s in steps:
        dcpu = "" if previous is None else f"{s['cpu'] - previous['cpu']:.1f}"
        dwall = "" if previous is None else f"{s['at'] - previous['at']:.1f}"
        rows.append(f"| {name} | {s.get('VmRSS', 0):.0f} | {s.get('VmHWM', 0):.0f} | {s['fds']:.0f} | {dcpu} | {dwall} |")
        previous = s
    n = args.connections
    verdict = []
    verdict.append(
        f"- all {n} usable after the failover: "
        + ("met" if usable == n else f"**missed: {usable} of {n} answered 200 ({n - usable} did not)**")
    )
    verdict.append(
        "- proxy RSS ≤ 300 MB: " + (f"met ({rssAfter:.0f} MB after, peak {peak:.0f} MB)" if peak <= 300 else
                                     f"**missed: peak {peak:.0f} MB, {peak - 300:.0f} MB over** "
                                     f"({rssAfter:.0f} MB after)")
    )
    return "\n".join(
        [
            "## Idle TLS connections through a failover (`bench/proxy_idle_bench.py`)",
            "",
            f"- date: {when}",
            f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, Linux {m['kernel']}",
            f"- software: Python {m['python']}, Twisted {m['twisted']} (TLS: pyOpenSSL on {m['tls']}), clients' Python ssl on {m['openssl']}, {m['reactor']}",
            f"- code: {codeUnderTest()}",
            f"- command (repo root): `{command('bench/proxy_idle_bench.py')}`",
            f"- run: arbiter + proxy (TLS front end) + spa + spb (`twistd`, 127.0.0.1); one asyncio client "
            f"process opens {n} TLS connections to the proxy ({args.concurrency} at a time) and sends "
            f"`GET {args.path}` (Basic auth) on each; idle {args.idle:g} s; SIGKILL the holder "
            f"({failover['from']}); once the proxy routes to {failover['to']} "
            f"({failover['seconds'] * 1000:.0f} ms after the signal, polled), one more GET on every connection "
            f"({args.concurrency} at a time); wall time {elapsed:.1f} s",
            cpuLine(cpu, "during the run", "bench + client + array", "times may be long"),
            "",
            "| measurement | value |",
            "| --- | --- |",
            f"| connections opened | {opened['connections']} in {opened['seconds']:.1f} s "
            f"({opened['connections'] / opened['seconds']:.0f}/s, TLS handshake + first GET) |",
            f"| first GET on each | {fmtCounts(opened['counts'])} |",
            f"| still open after the idle time and the failover (no bytes sent) | {alive['alive']} of "
            f"{alive['connections']} |",
            f"| GET on every connection after the failover | {fmtCounts(got['counts'])} in {got['seconds']:.1f} s "
            f"(p50 {got['p50'] * 1000:.1f} ms, p99 {got['p99'] * 1000:.1f} ms, max {got['max'] * 1000:.1f} ms "
            f"per request, {args.concurrency} in flight) |"
            if got.get("p50") is not None else
            f"| GET on every connection after the failover | {fmtCounts(got['counts'])} in {got['seconds']:.1f} s |",
            f"| answered on the same connection after the failover (any status) | "
            f"{sum(v for k, v in got['counts'].items() if k[:1].isdigit())} of {n} |",
            f"| **usable after the failover (200)** | **{usable} of {n}** |",
            "",
            "The proxy process at each step:",
            "",
            *rows,
            "",
            "Targets (issue 5): 10,000 idle connections all usable, proxy RSS ≤ 300 MB.",
            "",
            *verdict,
            "",
        ]
    )


async def run(reactor: Any, args: argparse.Namespace) -> None:
    began = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="spmgmt-proxy-idle-bench-"))
    harness = None
    client = None
    transport = None
    ok = False
    dumps: list[dict[str, Any]] = []
    dumpBase = directory / "var" / "memdump"
    environment: dict[str, dict[str, str]] = {}
    if args.diagnose:
        paths = [str(REPO / "bench" / "_memdump")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        environment["proxy"] = {
            "PYTHONPATH": os.pathsep.join(paths), "PYTHONTRACEMALLOC": "1", "SPMGMT_BENCH_MEMDUMP": str(dumpBase),
        }
    try:
        harness = ArrayHarness(reactor, directory, spIds=SPS, arbiter=True, environment=environment)
        assert harness.config.proxy is not None
        await harness.start()
        token = await settle(harness, timeout=60.0)
        holder = token["holder"]
        other = next(sp for sp in SPS if sp != holder)
        proxyPid = harness.pid("proxy")
        if args.diagnose:
            dumps.append(await memoryDump(reactor, harness, dumpBase, 1))
        window = CPUWindow(harness, irqApart=False)
        steps: list[tuple[str, dict[str, float]]] = [("started, no client", snapshot(proxyPid))]

        argv = [
            sys.executable, str(REPO / "bench" / "_idle_client.py"),
            "--host", harness.config.proxy.tls.host,
            "--port", str(harness.config.proxy.tls.port),
            "--ca", str(harness.config.ca),
            "--password-file", str(harness.path("var/secrets/monitor.password")),
            "--path", args.path,
        ]
        client = _Client()
        transport = reactor.spawnProcess(client, argv[0], argv, env=None)
        opened = await client.ask(cmd="open", n=args.connections, concurrency=args.concurrency)
        print(f"opened: {opened}", file=sys.stderr)
        steps.append((f"{opened['connections']} connections open, one GET each", snapshot(proxyPid)))
        if args.diagnose:
            dumps.append(await memoryDump(reactor, harness, dumpBase, 2))
            steps.append(("after the memory dump", snapshot(proxyPid)))
        await sleep(reactor, args.idle)
        steps.append((f"after {args.idle:g} s idle", snapshot(proxyPid)))

        signalled = time.monotonic()
        harness.signal(holder, signal.SIGKILL)

        async def moved() -> bool:
            tok = await proxyHolder(harness)  # type: ignore[arg-type]
            return bool(tok and tok["holder"] == other and int(tok["epoch"]) > int(token["epoch"]))

        await harness.waitFor(moved, 30.0, f"the proxy to route to {other}", interval=0.01)
        failover = {"from": holder, "to": other, "seconds": time.monotonic() - signalled}
        steps.append(("failed over (the proxy routes to the other SP)", snapshot(proxyPid)))
        alive = await client.ask(cmd="alive")
        print(f"alive: {alive}", file=sys.stderr)
        got = await client.ask(cmd="get", concurrency=args.concurrency)
        print(f"get: {got}", file=sys.stderr)
        steps.append(("after the GET on every connection", snapshot(proxyPid)))
        await client.ask(cmd="close")
        await client.ended
        await sleep(reactor, 2.0)
        steps.append(("client gone, 2 s later", snapshot(proxyPid)))
        cpu = window.close()
        text = report(args, steps, opened, alive, got, failover, cpu, time.monotonic() - began)
        marker = MARKER
        if args.diagnose:
            rss = (steps[0][1].get("VmRSS", 0.0), steps[1][1].get("VmRSS", 0.0))
            text = diagnosis(args, dumps[0], dumps[1], rss, opened["connections"])
            marker = DIAGNOSIS_MARKER
        print(text)
        if args.record:
            if disturbed(cpu, args.force_record):
                raise SystemExit(3)
            record(text, marker)
            print(f"recorded in {RESULTS.relative_to(REPO)}", file=sys.stderr)
        ok = True
    finally:
        if client is not None and not client.ended.called:
            try:
                transport.signalProcess("KILL")  # type: ignore[union-attr]
            except Exception:
                pass
            await client.ended
        await endRun(harness, ok, directory, args.keep)


def main(reactor: Any, argv: list[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip() if __doc__ else None)
    parser.add_argument("--connections", type=int, default=10000, help="TLS connections (default 10000)")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes/GETs in flight (default 64)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before the kill (default 5)")
    parser.add_argument("--path", default="/api/v1/sps", help="the route each GET asks (default /api/v1/sps)")
    parser.add_argument("--diagnose", action="store_true", help="trace the proxy's memory (see above)")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    parser.add_argument("--force-record", action="store_true", help="record even if others used the CPUs")
    parser.add_argument("--keep", action="store_true", help="keep the array directory (config, logs)")
    parser.add_argument("--deadline", type=float, default=600.0, help="give up after this many seconds (600)")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.concurrency < 1:
        parser.error("--connections and --concurrency must be positive")
    return withDeadline(reactor, run(reactor, args), args.deadline, "proxy_idle_bench")


if __name__ == "__main__":
    react(main, [sys.argv[1:]])
