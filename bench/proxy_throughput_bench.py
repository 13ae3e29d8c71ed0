#!/usr/bin/env python
"""
Throughput and latency over TLS: directly to the active SP, through the
spmgmt proxy, and through HAProxy 2.6 (Debian) in front of the same SPs,
side by side in one run (loopback only).

Starts the proxy (TLS front end, following the arbiter process), spa and spb as real C{twistd}
processes with L{ArrayHarness}, and HAProxy (C{haproxy -db}) with a TLS
front end (the proxy's certificate and key) and the two SPs as backends
over TLS (C{verify required} against the array CA, SNI and C{verifyhost}
the SP id), the active SP as server and the other as C{backup}, HTTP
keep-alive on both sides and C{http-reuse always}.  The Debian packages of
C{scripts/bench-packages.txt} (C{haproxy}, C{wrk}) are installed first if
missing.

Then C{--rounds} times, for each route and each concurrency, it runs
C{wrk --latency} (HTTPS keep-alive, one thread, C{--duration} seconds)
against the three targets in turn, rotating their order every round, and
notes each process's CPU time over each run.  Reported per target: the
median over the rounds of requests/s and of wrk's p50 and p99 latency, the
ratio to HAProxy (medians, and the median of the per-round ratios), and
the CPU share of each process.

Run from the repository root::

    .venv/bin/python bench/proxy_throughput_bench.py [--rounds N] [--duration S] [--record]

C{--record} rewrites the section between the proxy-throughput-bench
markers in C{bench/RESULTS.md}.  Every process is stopped at the end, on
error too, and the whole run is bounded by C{--deadline} seconds.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import react
from twisted.internet.threads import deferToThread

# From bench/ (on sys.path when run as a script); it puts the repository root there too.
from _common import REPO, RESULTS, CPUWindow, codeUnderTest, command, cpuLine, ensureDebianPackages, machine
from _common import disturbed, percentile, processCPU, processMemory, endRun, record, withDeadline
from failover_bench import settle

from spmgmt.testing import ArrayHarness, _PDEATHSIG_EXEC, freePorts

SPS = ("spa", "spb")
MARKER = "proxy-throughput-bench"
TARGETS = ("direct", "proxy", "haproxy")


# -- HAProxy -----------------------------------------------------------------------


def haproxyConfig(harness: ArrayHarness, port: int, pem: Path, holder: str, threads: int) -> str:
    ca = harness.config.ca
    servers = []
    for sp in harness.config.sps:
        backup = "" if sp.id == holder else " backup"
        servers.append(
            f"    server {sp.id} {sp.web.host}:{sp.web.port} sni str({sp.id}) verifyhost {sp.id}{backup}"
        )
    return textwrap.dedent(
        f"""\
        # Written by bench/proxy_throughput_bench.py: HAProxy as active/backup
        # in front of the array's SPs, TLS on both sides.
        global
            nbthread {threads}
            maxconn 4096
            ssl-server-verify required

        defaults
            mode http
            option http-keep-alive
            timeout connect 2s
            timeout client 60s
            timeout server 60s
            timeout http-keep-alive 60s
            timeout http-request 10s

        frontend front
            bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1
            default_backend sps

        backend sps
            http-reuse always
            option httpchk GET /healthz
            http-check expect status 200
            default-server ssl verify required ca-file {ca} check inter 1s fall 2 rise 1
        """
    ) + "\n".join(servers) + "\n"


class _Child(ProcessProtocol):
    """A child's output and its end."""

    def __init__(self) -> None:
        self.ended: Deferred[Any] = Deferred()
        self.output = b""
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


def spawn(reactor: Any, argv: list[str], dieWithUs: bool = False) -> _Child:
    proto = _Child()
    if dieWithUs:
        argv = [sys.executable, "-c", _PDEATHSIG_EXEC, str(os.getpid()), *argv]
    reactor.spawnProcess(proto, argv[0], argv, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return proto


def httpsGet(port: int, path: str, ca: Path, auth: str | None) -> int:
    """One blocking GET (for readiness checks); the status, 0 if it failed."""
    import http.client
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=2.0)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2.0)
        conn.sock = context.wrap_socket(raw, server_hostname="proxy")
        conn.request("GET", path, headers={"Authorization": auth} if auth else {})
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


# -- wrk -----------------------------------------------------------------------------

#: Counts the answers by status (wrk itself only says how many were not 2xx/3xx).
STATUS_SCRIPT = """\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("status %d %d\\n", k, v)) end
end
"""

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parseWrk(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"non2xx": 0, "socket_errors": 0}
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)\s*$", text, re.M)
        if m:
            out[f"p{q}"] = _seconds(m.group(1))
    m = re.search(r"^\s+(\d+) requests in ([0-9.]+\w+),", text, re.M)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(v) for v in m.groups())
    out["statuses"] = {int(k): int(v) for k, v in re.findall(r"^status (\d+) (\d+)$", text, re.M)}
    if "rps" not in out or "p99" not in out:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    return out


async def runWrk(
    reactor: Any, port: int, path: str, auth: str | None, connections: int, duration: float,
    pids: dict[str, int], script: Path,
) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "10s", "-s", str(script)]
    if auth:
        argv += ["-H", f"Authorization: {auth}"]
    argv.append(f"https://127.0.0.1:{port}{path}")
    before = {name: processCPU(pid) for name, pid in pids.items()}
    children = os.times()
    wall = time.monotonic()
    proto = spawn(reactor, [shutil.which("wrk") or "wrk", *argv[1:]])
    await proto.ended
    wall = time.monotonic() - wall
    after = os.times()
    result = parseWrk(proto.output.decode(errors="replace"))
    cpu = {name: (processCPU(pid) - before[name]) / wall for name, pid in pids.items()}
    cpu["wrk"] = (after.children_user + after.children_system - children.children_user - children.children_system) / wall
    result["cpu"] = cpu
    result["wall"] = wall
    return result


# -- report ----------------------------------------------------------------------------


def fmtMs(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def cases(args: argparse.Namespace, holder: str) -> list[tuple[str, bool, int]]:
    """(route, authenticated, connections) of every measurement."""
    routes = [(f"/api/v1/sps/{holder}/health", True), ("/healthz", False)]
    return [(path, auth, c) for path, auth in routes for c in args.connections]


def _kinds(runs: list[dict[str, Any]]) -> str:
    """The non-200 answers and socket errors of C{runs}, in words (empty if none)."""
    counts: dict[str, int] = {}
    for r in runs:
        for status, n in r.get("statuses", {}).items():
            if status != 200:
                counts[str(status)] = counts.get(str(status), 0) + n
        if r["socket_errors"]:
            counts["socket errors"] = counts.get("socket errors", 0) + r["socket_errors"]
    return " (" + ", ".join(f"{v} × {k}" for k, v in sorted(counts.items())) + ")" if counts else ""


def caseTable(runs: list[dict[str, Any]], path: str, c: int) -> list[str]:
    rows = [r for r in runs if r["path"] == path and r["c"] == c]
    med: dict[str, dict[str, float]] = {}
    for t in TARGETS:
        mine = [r for r in rows if r["target"] == t]
        med[t] = {
            "rps": percentile([r["rps"] for r in mine], 50),
            "lo": min(r["rps"] for r in mine),
            "hi": max(r["rps"] for r in mine),
            "p50": percentile([r["p50"] for r in mine], 50),
            "p99": percentile([r["p99"] for r in mine], 50),
            "errors": sum(r["non2xx"] + r["socket_errors"] for r in mine),
            "kinds": _kinds(mine),
            "n": len(mine),
            **{f"cpu_{k}": percentile([r["cpu"][k] for r in mine], 50) for k in mine[0]["cpu"]},
        }
    # Per-round ratio to HAProxy (paired: the same round, minutes apart at most).
    byRound: dict[int, dict[str, float]] = {}
    for r in rows:
        byRound.setdefault(r["round"], {})[r["target"]] = r["rps"]
    ratios = {t: percentile([v[t] / v["haproxy"] for v in byRound.values() if "haproxy" in v and t in v], 50)
              for t in TARGETS}
    lines = [
        f"`GET {path}`, {c} connection{'s' if c > 1 else ''}:",
        "",
        "| target | req/s median (min–max) | × HAProxy (medians / per-round median) | p50 ms | p99 ms "
        "| errors | CPU: active SP | proxy process | HAProxy | wrk |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in TARGETS:
        m = med[t]
        lines.append(
            f"| {t} | {m['rps']:.0f} ({m['lo']:.0f}–{m['hi']:.0f}) "
            f"| {m['rps'] / med['haproxy']['rps']:.2f} / {ratios[t]:.2f} | {fmtMs(m['p50'])} | {fmtMs(m['p99'])} "
            f"| {m['errors']:.0f}{m['kinds']} | {m['cpu_active']:.2f} | {m['cpu_proxy']:.2f} | {m['cpu_haproxy']:.2f} "
            f"| {m['cpu_wrk']:.2f} |"
        )
    lines.append("")
    return lines


def summary(runs: list[dict[str, Any]], holder: str, args: argparse.Namespace) -> list[str]:
    """The target: proxy ≥ 0.9 × HAProxy, on every case."""
    out = ["Target (issue 5): proxy throughput ≥ 0.9 × HAProxy's on the same backends.", ""]
    for path, _auth, c in cases(args, holder):
        rows = [r for r in runs if r["path"] == path and r["c"] == c]
        proxy = percentile([r["rps"] for r in rows if r["target"] == "proxy"], 50)
        ha = percentile([r["rps"] for r in rows if r["target"] == "haproxy"], 50)
        ratio = proxy / ha
        verdict = "met" if ratio >= 0.9 else f"**missed: {ratio:.2f}×, {(0.9 - ratio) * ha:.0f} req/s short of 0.9×**"
        note = " (the proxy answers `/healthz` itself; HAProxy forwards it to the SP)" if path == "/healthz" else ""
        out.append(f"- `GET {path}`, {c} conn.: proxy {proxy:.0f} req/s, HAProxy {ha:.0f} req/s → {verdict}{note}")
    return out


def report(
    runs: list[dict[str, Any]], holder: str, cpu: dict[str, float], args: argparse.Namespace, elapsed: float,
    versions: dict[str, str], config: str, rss: dict[str, dict[str, float]],
) -> str:
    m = machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = []
    for path, _auth, c in cases(args, holder):
        body += caseTable(runs, path, c)
    return "\n".join(
        [
            "## Proxy throughput and latency against HAProxy (`bench/proxy_throughput_bench.py`)",
            "",
            f"- date: {when}",
            f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, Linux {m['kernel']}",
            f"- software: Python {m['python']}, Twisted {m['twisted']} (TLS: pyOpenSSL on {m['tls']}), clients' Python ssl on {m['openssl']}, {m['reactor']}; "
            f"{versions['haproxy']}; {versions['wrk']}",
            f"- code: {codeUnderTest()}",
            f"- command (repo root): `{command('bench/proxy_throughput_bench.py')}`",
            f"- run: arbiter + proxy (TLS front end) + spa + spb (`twistd`, 127.0.0.1), {holder} active; "
            f"HAProxy `nbthread {args.haproxy_threads}`, {holder} as server and the other SP as `backup`, "
            "TLS to the SPs with `verify required` + SNI/`verifyhost`, `http-reuse always`; wrk: one thread, "
            f"HTTPS keep-alive, {args.duration:g} s per run, {args.rounds} rounds, the three targets in a rotated "
            f"order every round; Basic auth (monitor, the SP's login cache warm) on the API route; wall time "
            f"{elapsed:.1f} s",
            cpuLine(cpu, "during the runs", "bench + wrk + array + HAProxy", "figures may be low"),
            f"- resident sets at the end: proxy {rss['proxy'].get('VmRSS', 0):.0f} MB, active SP "
            f"{rss['active'].get('VmRSS', 0):.0f} MB, HAProxy {rss['haproxy'].get('VmRSS', 0):.0f} MB",
            "- `direct` = wrk to the active SP's web port (requests not stamped); `proxy` = wrk to the spmgmt "
            "proxy's TLS port (it stamps the epoch and forwards on its pool of TLS connections to the SP); "
            "`haproxy` = wrk to HAProxy.  req/s and latencies are wrk's, medians over the rounds; CPU = CPU "
            "seconds per second of wall time of each process during the run (1.00 = one core; the machine has "
            f"{m['nproc']}); the proxy process also runs the arbiter (heartbeats every 100 ms), which is its "
            "whole CPU in the `direct` and `haproxy` rows.",
            "",
            *body,
            *summary(runs, holder, args),
            "",
            "<details><summary>HAProxy configuration used</summary>",
            "",
            "```",
            config.rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    )


# -- main ----------------------------------------------------------------------------


async def run(reactor: Any, args: argparse.Namespace) -> None:
    began = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="spmgmt-proxy-throughput-bench-"))
    harness = None
    haproxy = None
    ok = False
    try:
        harness = ArrayHarness(reactor, directory, spIds=SPS, arbiter=True)
        assert harness.config.proxy is not None
        await harness.start()
        token = await settle(harness, timeout=60.0)
        holder = token["holder"]
        auth = "Basic " + base64.b64encode(f"monitor:{harness.passwords['monitor']}".encode()).decode("ascii")

        pem = harness.path("var/pki/haproxy.pem")
        pem.write_bytes(harness.config.proxy.cert.read_bytes() + harness.config.proxy.key.read_bytes())
        pem.chmod(0o600)
        (haPort,) = freePorts(1)
        config = haproxyConfig(harness, haPort, pem, holder, args.haproxy_threads)
        cfg = harness.path("etc/haproxy.cfg")
        cfg.write_text(config)
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejected its configuration:\n{check.stdout}{check.stderr}")
        haproxy = spawn(reactor, [shutil.which("haproxy") or "haproxy", "-db", "-f", str(cfg)], dieWithUs=True)

        async def haproxyServes() -> bool:
            if haproxy.ended.called:
                raise RuntimeError(f"haproxy ended: {haproxy.output.decode(errors='replace')}")
            path = f"/api/v1/sps/{holder}/health"
            return await deferToThread(httpsGet, haPort, path, harness.config.ca, auth) == 200

        await harness.waitFor(haproxyServes, 20.0, "HAProxy to serve through its active server")
        versions = {
            "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
            .split(" - ")[0],
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
            .split(" [")[0],
        }
        assert haproxy.pid is not None
        pids = {
            "active": harness.pid(holder),
            "passive": harness.pid(next(sp for sp in SPS if sp != holder)),
            "proxy": harness.pid("proxy"),
            "haproxy": haproxy.pid,
        }
        ports = {
            "direct": harness.config.sp(holder).web.port,
            "proxy": harness.config.proxy.tls.port,
            "haproxy": haPort,
        }
        script = harness.path("etc/statuses.lua")
        script.write_text(STATUS_SCRIPT)
        # Warm up: logins cached on the SP, pools filled, code paths hot.
        for path, withAuth, c in cases(args, holder):
            for target in TARGETS:
                await runWrk(reactor, ports[target], path, auth if withAuth else None, c, 1.0, pids, script)

        window = CPUWindow(harness, irqApart=False)
        runs: list[dict[str, Any]] = []
        for n in range(args.rounds):
            order = TARGETS[n % 3:] + TARGETS[: n % 3]
            for path, withAuth, c in cases(args, holder):
                for target in order:
                    r = await runWrk(
                        reactor, ports[target], path, auth if withAuth else None, c, args.duration, pids, script
                    )
                    r.update(round=n, target=target, path=path, c=c)
                    runs.append(r)
                    print(
                        f"round {n + 1}/{args.rounds} {path:28} c={c:<3} {target:8} {r['rps']:8.0f} req/s "
                        f"p50 {fmtMs(r['p50']):>7} ms p99 {fmtMs(r['p99']):>7} ms  errors "
                        f"{r['non2xx'] + r['socket_errors']}  CPU SP {r['cpu']['active']:.2f} proxy "
                        f"{r['cpu']['proxy']:.2f} haproxy {r['cpu']['haproxy']:.2f} wrk {r['cpu']['wrk']:.2f}",
                        file=sys.stderr,
                    )
        cpu = window.close()
        rss = {name: processMemory(pid) for name, pid in pids.items()}
        text = report(runs, holder, cpu, args, time.monotonic() - began, versions, config, rss)
        print(text)
        if args.record:
            if disturbed(cpu, args.force_record):
                raise SystemExit(3)
            record(text, MARKER)
            print(f"recorded in {RESULTS.relative_to(REPO)}", file=sys.stderr)
        ok = True
    finally:
        if haproxy is not None and not haproxy.ended.called:
            try:
                os.kill(haproxy.pid, signal.SIGTERM)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
            await haproxy.ended
        if not ok and haproxy is not None:
            print(f"\n===== haproxy =====\n{haproxy.output.decode(errors='replace')[-3000:]}", file=sys.stderr)
        await endRun(harness, ok, directory, args.keep)


def main(reactor: Any, argv: list[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip() if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument(
        "--connections", default="1,16", help="comma-separated wrk connection counts (default 1,16)"
    )
    parser.add_argument("--haproxy-threads", type=int, default=1, help="HAProxy nbthread (default 1)")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    parser.add_argument("--force-record", action="store_true", help="record even if others used the CPUs")
    parser.add_argument("--keep", action="store_true", help="keep the array directory (config, logs)")
    parser.add_argument("--deadline", type=float, default=900.0, help="give up after this many seconds (900)")
    args = parser.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    if args.rounds < 1 or args.duration <= 0 or not args.connections:
        parser.error("--rounds, --duration and --connections must be positive")
    ensureDebianPackages()
    return withDeadline(reactor, run(reactor, args), args.deadline, "proxy_throughput_bench")


if __name__ == "__main__":
    react(main, [sys.argv[1:]])
