#!/usr/bin/env python
"""
Failover gap seen by a client of the proxy, on one persistent TLS
connection (loopback only).

Starts the arbiter, the proxy (TLS front end, C{twistd spmgmt proxy}), spa and
spb as real C{twistd} processes with L{ArrayHarness}, once for the whole
run, and one client process (C{bench/_gap_client.py}) that keeps one TLS
connection to the proxy and sends C{GET --path} on it every C{--interval}
(5 ms) for the whole run, writing down every answer.  Then, C{--trials}
times, for each fault kind in turn, on the SP holding the token:

  - C{sigkill}: SIGKILL;
  - C{sigstop}: SIGSTOP (only the arbiter's miss window notices);
  - C{unhealthy}: its maintenance file (it swaps to the service-mode web
    server, which answers the route with 503 until the token moves);
  - C{switchover}: C{POST /api/v1/array/switchover} on it (as admin,
    directly, not through the proxy), a planned move.

Each trial first waits for the array to settle (both SPs up, healthy,
reachable, connected to the arbiter, the same token three polls in a row,
and the proxy's C{/healthz} routing to that holder), waits a random part
of one heartbeat interval, records C{t0} (C{time.monotonic()}, the
client's clock too) and injects the fault; it waits for the arbiter's move
to be acknowledged and for the client's first 200 stamped with the new
epoch, then undoes the fault (restart, SIGCONT, remove the file).

From the client's log, per trial, over the window from 200 ms before
C{t0} to the first answer with the new epoch:

  - gap = the longest time between two consecutive 200 answers (so the
    client's own pace, one GET every 5 ms, is the floor);
  - t0 → new = from the fault to the first 200 from the new holder;
  - errors = answers that were not 200 and requests without an answer;
  - reconnects = TLS connections the client had to open again.

Run from the repository root::

    .venv/bin/python bench/proxy_gap_bench.py [--trials N] [--record]

C{--record} rewrites the section between the proxy-gap-bench markers in
C{bench/RESULTS.md}.  Every process is stopped at the end, on error too, and
the whole run is bounded by C{--deadline} seconds.
"""

from __future__ import annotations

import argparse
import datetime
import random
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
from _common import REPO, RESULTS, CPUWindow, codeUnderTest, command, cpuLine, machine, milliseconds
from _common import disturbed, percentile, processMemory, endRun, record, withDeadline
from failover_bench import settle, sleep

from spmgmt.testing import ArrayHarness

FAULTS = ("sigkill", "sigstop", "unhealthy", "switchover")
SPS = ("spa", "spb")
MARKER = "proxy-gap-bench"

#: What the arbiter's C{last_move.reason} should say for each fault.
EXPECTED_REASON = {
    "sigkill": "connection lost",
    "sigstop": "missed heartbeats",
    "unhealthy": "unhealthy",
    "switchover": "switchover",
}

#: How far before the fault the window of a trial starts.
LEAD = 0.2


def ms(seconds: float) -> str:
    return milliseconds(seconds, 1)


# -- the client ------------------------------------------------------------------


class _Client(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[Any] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class ClientLog:
    """The client's records, read from its file as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""
        self.records: list[dict[str, Any]] = []
        self.ready = False

    def poll(self) -> None:
        try:
            with self.path.open() as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith("#"):
                self.ready = self.ready or line.strip() == "# ready"
                continue
            sent, done, status, servedBy, epoch, conn, detail = line.split("\t", 6)
            self.records.append(
                {
                    "sent": float(sent),
                    "done": float(done),
                    "status": int(status),
                    "sp": servedBy,
                    "epoch": int(epoch) if epoch.isdigit() else None,
                    "conn": int(conn),
                    "detail": detail,
                }
            )


async def startClient(reactor: Any, harness: ArrayHarness, args: argparse.Namespace) -> tuple[Any, ClientLog]:
    assert harness.config.proxy is not None
    out = harness.path("var/gap-client.tsv")
    argv = [
        sys.executable,
        str(REPO / "bench" / "_gap_client.py"),
        "--host", harness.config.proxy.tls.host,
        "--port", str(harness.config.proxy.tls.port),
        "--ca", str(harness.config.ca),
        "--name", "proxy",
        "--user", "monitor",
        "--password-file", str(harness.path("var/secrets/monitor.password")),
        "--path", args.path,
        "--interval", str(args.interval),
        "--out", str(out),
    ]
    proto = _Client()
    transport = reactor.spawnProcess(proto, argv[0], argv, env=None)
    log = ClientLog(out)

    async def ready() -> bool:
        log.poll()
        return log.ready

    await harness.waitFor(ready, 30.0, "the gap client's first 200")
    return (transport, proto), log


# -- one trial ---------------------------------------------------------------------


async def proxyRoutes(harness: ArrayHarness, token: dict[str, Any]) -> bool:
    try:
        response = await harness.request("proxy", "GET", "/healthz", user=None, timeout=2.0)
    except Exception:
        return False
    return response.code == 200 and response.json().get("token") == {
        "epoch": token["epoch"], "holder": token["holder"]
    }


async def settleAll(harness: ArrayHarness) -> dict[str, Any]:
    """The array settled (L{settle}) and the proxy routing to its holder."""
    for _ in range(5):
        token = await settle(harness)
        try:
            await harness.waitFor(lambda: proxyRoutes(harness, token), 5.0, "the proxy to route to the holder")
        except AssertionError:
            continue
        return token
    raise RuntimeError("the proxy never routed to the settled holder")


async def inject(harness: ArrayHarness, fault: str, holder: str, other: str) -> Deferred[Any] | None:
    if fault == "sigkill":
        harness.signal(holder, signal.SIGKILL)
    elif fault == "sigstop":
        harness.signal(holder, signal.SIGSTOP)
    elif fault == "unhealthy":
        harness.path(f"var/{holder}.maintenance").touch()
    elif fault == "switchover":
        # Not awaited here: it answers once the new holder acknowledged.
        return Deferred.fromCoroutine(
            harness.request(holder, "POST", "/api/v1/array/switchover", body={"to": other}, timeout=10.0)
        )
    else:
        raise ValueError(fault)
    return None


async def undo(harness: ArrayHarness, fault: str, holder: str) -> None:
    if fault == "sigkill":
        await harness.restart(holder)
    elif fault == "sigstop":
        harness.signal(holder, signal.SIGCONT)
    elif fault == "unhealthy":
        harness.path(f"var/{holder}.maintenance").unlink()


async def trial(
    reactor: Any, harness: ArrayHarness, log: ClientLog, fault: str, jitter: float
) -> dict[str, Any]:
    token = await settleAll(harness)
    holder, before = token["holder"], int(token["epoch"])
    other = next(sp for sp in SPS if sp != holder)
    await sleep(reactor, jitter)
    t0wall = time.time()
    t0 = time.monotonic()
    pending = await inject(harness, fault, holder, other)
    switched: dict[str, Any] = {}
    try:
        if pending is not None:
            answer = await pending
            switched = {"code": answer.code}
            if answer.code != 200:
                raise RuntimeError(f"switchover answered {answer.code}: {answer.body[:300]!r}")

        async def newEpochServed() -> bool:
            log.poll()
            return any(r["status"] == 200 and (r["epoch"] or 0) > before and r["sent"] >= t0 - LEAD
                       for r in log.records[-400:])

        await harness.waitFor(newEpochServed, 15.0, f"the client's first 200 from {other} after {fault}")
        await sleep(reactor, 0.05)
        log.poll()
    finally:
        await undo(harness, fault, holder)
    sample = analyse(log, fault, holder, other, before, t0, switched)
    sample["t0wall"] = t0wall
    return sample


def analyse(
    log: ClientLog, fault: str, holder: str, other: str, before: int, t0: float, switched: dict[str, Any],
) -> dict[str, Any]:
    window = [r for r in log.records if r["done"] >= t0 - LEAD]
    firstNew = next(r for r in window if r["status"] == 200 and (r["epoch"] or 0) > before)
    inside = [r for r in window if r["done"] <= firstNew["done"]]
    oks = [r for r in inside if r["status"] == 200]
    gap = max((b["done"] - a["done"] for a, b in zip(oks, oks[1:])), default=0.0)
    lastOld = max((r["done"] for r in oks if r is not firstNew), default=None)
    errors = [r for r in inside if r["status"] != 200]
    conns = {r["conn"] for r in inside}
    slowest = max(inside, key=lambda r: r["done"] - r["sent"])
    return {
        "fault": fault,
        "t0": t0,
        "from": holder,
        "to": other,
        "before": before,
        "new_epoch": firstNew["epoch"],
        "gap": gap,
        "to_new": firstNew["done"] - t0,
        "last_old_after_t0": None if lastOld is None else lastOld - t0,
        "held": slowest["done"] - slowest["sent"],
        "errors": len(errors),
        "error_kinds": sorted({f"{r['status']} {r['detail']}" for r in errors}),
        "reconnects": len(conns) - 1,
        "requests": len(inside),
    }


def arbiterEvents(harness: ArrayHarness) -> list[dict[str, Any]]:
    """The arbiter's event history (C{events.jsonl} beside its epoch file; the log rotates)."""
    import json

    path = harness.path("var/state/arbiter/events.jsonl")
    events = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def addBreakdown(samples: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """
    Split each gap with the arbiter's own events (wall clock, same host):
    noticed = the revoke of the old epoch (the arbiter decided the holder is
    gone; for a switchover, the planned revoke), granted = the first grant
    of the new epoch (after its fsync), routed = the new holder's
    acknowledgement (the C{token} event: the proxy's router switches there,
    in the same process), then the proxy's retry on the new holder until
    the client has its answer.  Also the move's reason and how many epochs
    it took, from the same events.
    """
    for s in samples:
        t0 = s["t0wall"]
        revoke = [e for e in events if e["kind"] == "revoke" and e.get("epoch") == s["before"]]
        grants = [e for e in events if e["kind"] == "grant" and e.get("epoch", 0) > s["before"]
                  and e["time"] >= t0 - 1.0]
        firstGrant = grants[0] if grants else None
        token = [e for e in events if e["kind"] == "token" and firstGrant is not None
                 and e.get("epoch") == firstGrant["epoch"]]
        s["reason"] = firstGrant.get("reason", "") if firstGrant else ""
        s["epochs"] = s["new_epoch"] - s["before"]
        if not (revoke and firstGrant and token):
            continue
        served = t0 + s["to_new"]
        s["noticed"] = revoke[0]["time"] - t0
        s["granted"] = firstGrant["time"] - revoke[0]["time"]
        s["routed"] = token[0]["time"] - firstGrant["time"]
        s["retry"] = served - token[0]["time"]
        s["epochs"] = s["new_epoch"] - s["before"]


# -- report --------------------------------------------------------------------------


def table(samples: list[dict[str, Any]], p: dict[str, float]) -> str:
    bound = {
        "sigkill": "target: median ≤ 20 ms, p99 ≤ 50 ms, 0 errors",
        "sigstop": f"target: ≤ {p['interval'] * 1000:.0f} ms × {int(p['misses'])} + 50 ms = "
        f"{p['window'] * 1000 + 50:.0f} ms",
        "unhealthy": "(no target; detection is the maintenance check, every "
        f"{p['checkInterval'] * 1000:.0f} ms)",
        "switchover": "(no target; a planned move)",
    }
    lines = [
        "| fault | trials | gap median ms | p90 ms | p99 ms | max ms | fault → first new-holder 200 median / max ms "
        "| longest single request median / max ms | errors | reconnects | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for fault in FAULTS:
        rows = [s for s in samples if s["fault"] == fault]
        if not rows:
            continue
        gap = [s["gap"] for s in rows]
        new = [s["to_new"] for s in rows]
        held = [s["held"] for s in rows]
        lines.append(
            f"| `{fault}` | {len(rows)} | {ms(percentile(gap, 50))} | {ms(percentile(gap, 90))} "
            f"| {ms(percentile(gap, 99))} | {ms(max(gap))} | {ms(percentile(new, 50))} / {ms(max(new))} "
            f"| {ms(percentile(held, 50))} / {ms(max(held))} "
            f"| {sum(s['errors'] for s in rows)} | {sum(s['reconnects'] for s in rows)} | {bound[fault]} |"
        )
    return "\n".join(lines)


def breakdownTable(samples: list[dict[str, Any]]) -> list[str]:
    rows = [s for s in samples if "noticed" in s]
    lines = [
        "Where the time from the fault to the first new-holder 200 goes (the token events in the "
        f"arbiter's history (`events.jsonl`), wall clock; {len(rows)} of {len(samples)} trials matched), median / max ms:",
        "",
        "| fault | fault → arbiter revokes the holder | → grant sent (epoch fsynced) | → new holder acknowledged "
        "(the proxy routes to it) | → the client's first 200 (the proxy's retry on the new holder) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def mm(values: list[float]) -> str:
        return f"{ms(percentile(values, 50))} / {ms(max(values))}" if values else "–"

    for fault in FAULTS:
        mine = [s for s in rows if s["fault"] == fault]
        if not mine:
            continue
        lines.append(
            f"| `{fault}` | {mm([s['noticed'] for s in mine])} | {mm([s['granted'] for s in mine])} "
            f"| {mm([s['routed'] for s in mine])} | {mm([s['retry'] for s in mine])} |"
        )
    return lines


def verdicts(samples: list[dict[str, Any]], p: dict[str, float]) -> list[str]:
    out = []

    def rows(fault: str) -> list[dict[str, Any]]:
        return [s for s in samples if s["fault"] == fault]

    kill = rows("sigkill")
    if kill:
        gap = [s["gap"] for s in kill]
        med, p99 = percentile(gap, 50), percentile(gap, 99)
        errs = sum(s["errors"] + s["reconnects"] for s in kill)
        parts = [
            f"median {ms(med)} ms " + ("≤ 20 ms: met" if med <= 0.020 else f"> 20 ms: **missed by {ms(med - 0.020)} ms**"),
            f"p99 {ms(p99)} ms " + ("≤ 50 ms: met" if p99 <= 0.050 else f"> 50 ms: **missed by {ms(p99 - 0.050)} ms**"),
            "no errors or reconnects: met" if errs == 0 else f"**{errs} errors/reconnects: missed**",
        ]
        out.append("- `sigkill`: " + "; ".join(parts) + ".")
    stop = rows("sigstop")
    if stop:
        limit = p["window"] + 0.050
        worst = max(s["gap"] for s in stop)
        over = [s for s in stop if s["gap"] > limit]
        out.append(
            f"- `sigstop`: limit {ms(limit)} ms; max gap {ms(worst)} ms, "
            + ("every trial within: met" if not over else
               f"**{len(over)} of {len(stop)} trials over, the worst by {ms(worst - limit)} ms: missed**")
            + f" (median {ms(percentile([s['gap'] for s in stop], 50))} ms); errors "
            f"{sum(s['errors'] for s in stop)}, reconnects {sum(s['reconnects'] for s in stop)}."
        )
    return out


def anomalies(samples: list[dict[str, Any]]) -> list[str]:
    out = []
    for n, s in enumerate(samples):
        problems = []
        if EXPECTED_REASON[s["fault"]] not in s["reason"]:
            problems.append(f"reason {s['reason']!r}")
        if s["epochs"] != 1:
            problems.append(f"epoch +{s['epochs']}")
        if s["errors"] or s["reconnects"]:
            problems.append(f"{s['errors']} error(s) {s['error_kinds']}, {s['reconnects']} reconnect(s)")
        if problems:
            out.append(f"- trial {n + 1} (`{s['fault']}` {s['from']} → {s['to']}, gap {ms(s['gap'])} ms): "
                       + "; ".join(problems))
    return out


def parameters(harness: ArrayHarness) -> dict[str, float]:
    t = harness.config.token
    maintenance = next(c for c in harness.config.checks if c.kind == "maintenance_file")
    assert harness.config.proxy is not None
    return {
        "interval": t.heartbeat_interval,
        "misses": t.heartbeat_misses,
        "window": t.missWindow,
        "checkInterval": maintenance.interval,
        "failoverWait": harness.config.proxy.failover_wait,
    }


def report(
    samples: list[dict[str, Any]], outside: dict[str, Any], p: dict[str, float], cpu: dict[str, float],
    args: argparse.Namespace, elapsed: float, rss: dict[str, float], baseline: dict[str, float],
) -> str:
    m = machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    odd = anomalies(samples)
    holders = {f: sum(1 for s in samples if s["fault"] == f and s["from"] == "spa") for f in FAULTS}
    return "\n".join(
        [
            "## Proxy failover gap on one client connection (`bench/proxy_gap_bench.py`)",
            "",
            f"- date: {when}",
            f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, Linux {m['kernel']}",
            f"- software: Python {m['python']}, Twisted {m['twisted']} (TLS: pyOpenSSL on {m['tls']}), clients' Python ssl on {m['openssl']}, {m['reactor']}",
            f"- code: {codeUnderTest()}",
            f"- command (repo root): `{command('bench/proxy_gap_bench.py')}`",
            f"- run: arbiter + proxy (TLS front end) + spa + spb (`twistd`, 127.0.0.1) for the whole run; "
            f"one client process, one TLS connection to the proxy, `GET {args.path}` (Basic auth, monitor) "
            f"every {args.interval * 1000:g} ms, sequential; {args.trials} trials × {len(FAULTS)} faults; heartbeat "
            f"{p['interval'] * 1000:.0f} ms × {int(p['misses'])} misses, maintenance check every "
            f"{p['checkInterval'] * 1000:.0f} ms, proxy `failover_wait` {p['failoverWait']:g} s; faults on "
            "spa/spb: "
            + ", ".join(f"{f} {holders[f]}/{sum(1 for s in samples if s['fault'] == f) - holders[f]}" for f in FAULTS)
            + f"; wall time {elapsed:.1f} s",
            cpuLine(cpu, "during the trials", "bench + client + array", "tails may be inflated"),
            f"- client pace without faults (between trials): 200 → 200 interval median "
            f"{ms(baseline['p50'])} ms, p99 {ms(baseline['p99'])} ms, request round trip median "
            f"{ms(baseline['rtt50'])} ms, p99 {ms(baseline['rtt99'])} ms; that is the floor of every gap",
            f"- the whole run on the client's one connection: {outside['requests']} requests, "
            f"{outside['errors']} not 200 ({', '.join(outside['kinds']) or 'none'}), "
            f"{outside['connections']} TLS connection(s) opened (so {outside['connections'] - 1} reconnects)",
            f"- proxy resident set at the end: {rss.get('VmRSS', 0):.0f} MB (peak {rss.get('VmHWM', 0):.0f} MB)",
            "- gap = the longest time between two consecutive 200 answers on the connection, from "
            f"{LEAD * 1000:.0f} ms before the fault until the first 200 stamped with the new epoch; fault → "
            "new = from the fault (`time.monotonic()` in the bench, the client's clock too) to that 200; "
            "longest single request = the request the proxy held longest.  With 20 trials p99 is "
            "interpolated between the two largest samples.",
            "",
            table(samples, p),
            "",
            *breakdownTable(samples),
            "",
            "Targets (issue 5):",
            "",
            *verdicts(samples, p),
            "",
            *(["Trials that did not go as expected:", "", *odd, ""] if odd else
              ["Every move had the reason its fault predicts, took exactly one new epoch, and the client saw "
               "no error and no reconnect.", ""]),
        ]
    )


def wholeRun(log: ClientLog) -> dict[str, Any]:
    errors = [r for r in log.records if r["status"] != 200]
    return {
        "requests": len(log.records),
        "errors": len(errors),
        "kinds": sorted({f"{r['status']} {r['detail']}" for r in errors}),
        "connections": len({r["conn"] for r in log.records}),
    }


def baselinePace(log: ClientLog, trials: list[dict[str, Any]], windows: list[tuple[float, float]]) -> dict[str, float]:
    """
    The client's pace away from the faults: while each trial waited for the
    array to settle, before its fault (from the fault to 0.3 s after the
    trial's end is left out).
    """
    def quiet(t: float) -> bool:
        return not any(a - 0.01 <= t <= b + 0.3 for a, b in windows)

    oks = [r for r in log.records if r["status"] == 200 and quiet(r["done"])]
    intervals = [b["done"] - a["done"] for a, b in zip(oks, oks[1:]) if b["done"] - a["done"] < 1.0]
    rtts = [r["done"] - r["sent"] for r in oks]
    return {
        "p50": percentile(intervals, 50), "p99": percentile(intervals, 99),
        "rtt50": percentile(rtts, 50), "rtt99": percentile(rtts, 99),
    }


# -- main ----------------------------------------------------------------------------


async def run(reactor: Any, args: argparse.Namespace) -> None:
    began = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="spmgmt-proxy-gap-bench-"))
    harness = None
    client = None
    ok = False
    rng = random.Random(args.seed)
    try:
        harness = ArrayHarness(reactor, directory, spIds=SPS, arbiter=True)
        await harness.start()
        await settleAll(harness)
        client, log = await startClient(reactor, harness, args)
        p = parameters(harness)
        window = CPUWindow(harness, irqApart=False)
        samples: list[dict[str, Any]] = []
        spans: list[tuple[float, float]] = []
        faults = [f for f in FAULTS if f in args.faults]
        for n in range(args.trials):
            for fault in faults:
                s = await trial(reactor, harness, log, fault, rng.uniform(0.0, p["interval"]))
                spans.append((s["t0"], time.monotonic()))
                samples.append(s)
                print(
                    f"trial {n + 1:2}/{args.trials} {fault:10} {s['from']}→{s['to']} gap {ms(s['gap']):>6} ms  "
                    f"fault→new {ms(s['to_new']):>6} ms  held {ms(s['held']):>6} ms  errors {s['errors']} "
                    f"reconnects {s['reconnects']}  (epoch {s['before']} → {s['new_epoch']})",
                    file=sys.stderr,
                )
        cpu = window.close()
        log.poll()
        addBreakdown(samples, arbiterEvents(harness))
        rss = processMemory(harness.pid("proxy"))
        text = report(samples, wholeRun(log), p, cpu, args, time.monotonic() - began, rss,
                      baselinePace(log, samples, spans))
        print(text)
        if args.record:
            if disturbed(cpu, args.force_record):
                raise SystemExit(3)
            record(text, MARKER)
            print(f"recorded in {RESULTS.relative_to(REPO)}", file=sys.stderr)
        ok = True
    finally:
        if client is not None:
            transport, proto = client
            transport.closeStdin()
            try:
                transport.signalProcess("TERM")
            except Exception:
                pass
            await proto.ended
            if proto.output:
                print(f"gap client said: {proto.output.decode(errors='replace')[-2000:]}", file=sys.stderr)
        await endRun(harness, ok, directory, args.keep)


def main(reactor: Any, argv: list[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip() if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20, help="trials per fault kind (default 20)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}")
    parser.add_argument("--path", default="/api/v1/sps", help="the route the client GETs (default /api/v1/sps)")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between GETs (default 0.005)")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    parser.add_argument("--force-record", action="store_true", help="record even if others used the CPUs")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random pre-fault pauses (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the array directory (config, logs, client log)")
    parser.add_argument("--deadline", type=float, default=600.0, help="give up after this many seconds (600)")
    args = parser.parse_args(argv)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if args.trials < 1 or not args.faults or set(args.faults) - set(FAULTS):
        parser.error("--trials must be positive and --faults a subset of " + ",".join(FAULTS))
    return withDeadline(reactor, run(reactor, args), args.deadline, "proxy_gap_bench")


if __name__ == "__main__":
    react(main, [sys.argv[1:]])
