#!/usr/bin/env python
"""
Latency of the SP peer channel on a real two-SP array (loopback only).

Starts spa and spb as real C{twistd} processes with L{ArrayHarness} (real
TLS, ephemeral ports on 127.0.0.1, a temporary directory), then measures:

  1. PB ping round trip: a L{PeerClient} in this process, logged in to spa's
     PB port exactly as spb would (spb's certificate and key, the array's
     peer secret, TLS 1.3 only), N sequential C{ping} calls through
     C{PeerClient.call}; also the same N through a bare C{callRemote} on
     the same perspective, to show what C{call} itself adds, and N
     C{health} calls (the PB part of a relayed C{GET .../health}).
  2. Relay overhead: on one persistent HTTPS connection to spb, alternate
     C{GET /api/v1/sps/spb/<what>} (answered by spb itself) and
     C{GET /api/v1/sps/spa/<what>} (relayed by spb to spa over PB), for
     C{<what>} = C{status} (runs C{uname -a}: a process spawn per request)
     and C{health} (no spawn: the pure relay cost).  The order inside each
     pair alternates too, so neither kind always goes first.

Run from the repository root::

    .venv/bin/python bench/peer_bench.py [--samples N] [--record]

C{--record} rewrites the section between the peer-bench markers in
C{bench/RESULTS.md}, unless other processes used more than 0.10 CPUs on
average while measuring (exit status 3; C{--force-record} records anyway).  Every process is stopped at the end, on error too, and
the whole run is bounded by C{--deadline} seconds.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.spread import banana, jelly

# From bench/ (on sys.path when run as a script); it puts the repository root there too.
from _common import OTHERS_LIMIT, REPO, RESULTS, CPUWindow, codeUnderTest, command, cpuLine, machine, milliseconds
from _common import percentile, endRun, record, withDeadline

from spmgmt.config import readPeerSecret
from spmgmt.sp.peers import PeerClient
from spmgmt.testing import ArrayHarness

# Our own PeerClient's keepalive: long enough that it never fires during the
# run, so every call on the connection is one that is timed.  (The SPs' own
# clients keep pinging each other every 0.5 s, as they do in production.)
BENCH_KEEPALIVE = 3600.0


# -- statistics ------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def ms(seconds: float) -> str:
    return milliseconds(seconds, 3)


# -- measurements ------------------------------------------------------------------


async def waitUntil(reactor: Any, predicate: Callable[[], bool], timeout: float, what: str) -> None:
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


async def timeSequential(
    call: Callable[[], Awaitable[Any]], warmup: int, samples: int, check: Callable[[Any], None]
) -> list[float]:
    """Run C{call} C{warmup} + C{samples} times, one after the other."""
    for _ in range(warmup):
        check(await call())
    out = []
    clock = time.perf_counter
    for _ in range(samples):
        t0 = clock()
        result = await call()
        out.append(clock() - t0)
        check(result)
    return out


def perspectiveOf(client: PeerClient) -> Any:
    """The client's logged-in perspective (public since PBSession, private before)."""
    perspective = getattr(client, "perspective", None) or getattr(client, "_perspective", None)
    if perspective is None:
        raise RuntimeError("the bench PeerClient is not logged in")
    return perspective


async def pingBench(reactor: Any, harness: ArrayHarness, warmup: int, samples: int) -> dict[str, Any]:
    """PB ping round trips from a PeerClient that logs in to spa as spb."""
    config = harness.config
    me = config.sp("spb")
    client = PeerClient(
        reactor,
        "spb",
        config.sp("spa"),
        config.ca,
        me.cert,
        me.key,
        readPeerSecret(config),
        timeout=config.peer.timeout,
        keepalive=BENCH_KEEPALIVE,
        monotonic=time.monotonic,
    )
    client.startService()
    try:
        await waitUntil(reactor, lambda: client.connected, 20.0, "the bench PeerClient to log in to spa")

        def isSummary(value: Any) -> None:
            if not (isinstance(value, dict) and value.get("id") == "spa"):
                raise RuntimeError(f"unexpected ping answer: {value!r}")

        viaCall = await timeSequential(lambda: client.call("ping"), warmup, samples, isSummary)

        perspective = perspectiveOf(client)

        def isReply(value: Any) -> None:
            isSummary(value.get("ok") if isinstance(value, dict) else None)

        raw = await timeSequential(lambda: perspective.callRemote("ping"), warmup, samples, isReply)

        def isHealth(value: Any) -> None:
            if not (isinstance(value, dict) and value.get("sp") == "spa"):
                raise RuntimeError(f"unexpected health answer: {value!r}"[:400])

        health = await timeSequential(lambda: client.call("health"), warmup, samples, isHealth)
        if perspectiveOf(client) is not perspective:
            raise RuntimeError("the PB connection was replaced during the run")
        # What the replies weigh on the wire (jelly + banana, before TLS).
        sizes = {}
        for method in ("ping", "health"):
            reply = await perspective.callRemote(method)
            sizes[method] = len(banana.encode(jelly.jelly(reply)))
        return {"call": viaCall, "raw": raw, "health": health, "sizes": sizes}
    finally:
        await client.stopService()


async def relayBench(harness: ArrayHarness, what: str, warmup: int, samples: int) -> dict[str, Any]:
    """
    Alternate local (spb) and relayed (spb -> spa) C{what} on one HTTPS
    connection; the round trips of each, and for C{status} the run time of
    the status command that each answer reports.
    """
    paths = {"local": f"/api/v1/sps/spb/{what}", "relayed": f"/api/v1/sps/spa/{what}"}
    expect = {"local": "spb", "relayed": "spa"}
    times: dict[str, list[float]] = {"local": [], "relayed": []}
    commandTimes: list[float] = []
    clock = time.perf_counter
    first: list[Any] = []
    for i in range(warmup + samples):
        if i == warmup:
            first = spbConnections(harness)
        order = ("local", "relayed") if i % 2 == 0 else ("relayed", "local")
        for kind in order:
            t0 = clock()
            response = await harness.request("spb", "GET", paths[kind])
            elapsed = clock() - t0
            if response.code != 200:
                raise RuntimeError(f"GET {paths[kind]} answered {response.code}: {response.body[:300]!r}")
            body = response.json()
            if body.get("collected_by") != expect[kind] or body.get("via") != "spb":
                raise RuntimeError(f"GET {paths[kind]}: unexpected collected_by/via in {body!r}"[:400])
            if i >= warmup:
                times[kind].append(elapsed)
                if what == "status":
                    commandTimes.append(float(body["status_command"]["duration_s"]))
    last = spbConnections(harness)
    return {
        **times,
        "command": commandTimes,
        "oneConnection": len(first) == 1 and first == last,
    }


def spbConnections(harness: ArrayHarness) -> list[Any]:
    """
    The idle connections the harness's pool keeps to spb's web port (the
    pool's private state: a bench-only check that one connection served a
    whole loop).
    """
    sp = harness.config.sp("spb")
    key = (b"https", sp.web.host.encode(), sp.web.port)
    return list(getattr(harness._pool, "_connections", {}).get(key, []))


async def spbSeesSpa(harness: ArrayHarness) -> bool:
    try:
        response = await harness.request("spb", "GET", "/api/v1/sps")
    except Exception:
        return False
    if response.code != 200:
        return False
    return any(e.get("id") == "spa" and e.get("reachable") is True for e in response.json()["sps"])


# -- report ------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    lines = [
        "| measurement | n | p50 ms | p90 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(name: str, values: list[float]) -> None:
        s = summary(values)
        lines.append(
            f"| {name} | {s['n']} | {ms(s['p50'])} | {ms(s['p90'])} | {ms(s['p99'])} | {ms(s['max'])} |"
        )

    row("PB `ping` round trip (`PeerClient.call`)", results["ping"]["call"])
    row("PB `ping` round trip (bare `callRemote`)", results["ping"]["raw"])
    row("PB `health` round trip (`PeerClient.call`)", results["ping"]["health"])
    for what in ("health", "status"):
        t = results[what]
        row(f"HTTPS `GET /api/v1/sps/spb/{what}` (local on spb)", t["local"])
        row(f"HTTPS `GET /api/v1/sps/spa/{what}` (relayed spb → spa)", t["relayed"])

    lines += [
        "",
        "| relay overhead (relayed − local) | Δp50 ms | Δp99 ms | median of per-pair Δ ms | relayed/local (p50) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for what, note in (("health", "no process spawn"), ("status", "`uname -a` on each side")):
        t = results[what]
        local, relayed = t["local"], t["relayed"]
        pairs = [r - l for r, l in zip(relayed, local)]
        lines.append(
            f"| `{what}` ({note}) | {ms(percentile(relayed, 50) - percentile(local, 50))} "
            f"| {ms(percentile(relayed, 99) - percentile(local, 99))} "
            f"| {ms(percentile(pairs, 50))} "
            f"| {percentile(relayed, 50) / percentile(local, 50):.2f}× |"
        )
    return "\n".join(lines)


def report(results: dict[str, Any], args: argparse.Namespace, elapsed: float) -> str:
    m = machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sizes = results["ping"]["sizes"]
    one = all(results[what]["oneConnection"] for what in ("health", "status"))
    return "\n".join(
        [
            "## Peer channel latency (`bench/peer_bench.py`)",
            "",
            f"- date: {when}",
            f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, Linux {m['kernel']}",
            f"- software: Python {m['python']}, Twisted {m['twisted']}, {m['openssl']}, {m['reactor']}",
            f"- code: {codeUnderTest()}",
            f"- command (repo root): `{command('bench/peer_bench.py')}`",
            f"- run: two SPs (`twistd`, 127.0.0.1, TLS 1.3 mutual TLS on PB), "
            f"{args.warmup} + {args.samples} pings, {args.http_warmup} + {args.http_samples} pairs "
            f"per HTTPS loop, "
            f"{'one persistent HTTPS connection to spb throughout' if one else 'WARNING: the HTTPS connection to spb changed'}, "
            f"wall time {elapsed:.1f} s",
            cpuLine(results["cpu"], "while measuring", "bench + SPs", "figures are inflated"),
            f"- PB reply sizes (jelly + banana, before TLS): `ping` {sizes['ping']} B, `health` {sizes['health']} B",
            "",
            table(results),
            "",
            *breakdown(results),
            "",
        ]
    )


def breakdown(results: dict[str, Any]) -> list[str]:
    """A few derived figures: what the relay and the status command cost."""
    health, status = results["health"], results["status"]
    pbHealth = percentile(results["ping"]["health"], 50)
    relay = percentile([r - l for r, l in zip(health["relayed"], health["local"])], 50)
    command = percentile(status["command"], 50)
    localStatus = percentile(status["local"], 50)
    return [
        "Where the time goes (p50s of this run):",
        "",
        f"- relaying `health` adds {ms(relay)} ms (median per-pair Δ); a PB `health` round trip "
        f"from a client like spb's takes {ms(pbHealth)} ms ({pbHealth / relay:.0%} of that): "
        f"the relay costs about one PB round trip, spb's own part (the `PeerClient.call` "
        f"coroutine and its timeout, merging the answer) is small next to it.",
        f"- the status command (`uname -a`, started through a Python trampoline that calls "
        f"`setsid` then execs it) runs {ms(command)} ms as the SPs report it in `status_command.duration_s`, "
        f"{command / localStatus:.0%} of a local `status` ({ms(localStatus)} ms).",
    ]


# -- main --------------------------------------------------------------------------


async def run(reactor: Any, args: argparse.Namespace) -> None:
    began = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="spmgmt-bench-"))
    harness = None
    ok = False
    try:
        harness = ArrayHarness(reactor, directory, spIds=("spa", "spb"))
        await harness.start()
        await harness.waitFor(lambda: spbSeesSpa(harness), 30.0, "spb to report spa reachable", "spb")
        window = CPUWindow(harness, irqApart=True)
        results: dict[str, Any] = {}
        results["ping"] = await pingBench(reactor, harness, args.warmup, args.samples)
        for what in ("health", "status"):
            results[what] = await relayBench(harness, what, args.http_warmup, args.http_samples)
        results["cpu"] = window.close()
        text = report(results, args, time.monotonic() - began)
        print(text)
        ok = True
        if args.record:
            cpu = results["cpu"]
            if cpu["others"] / cpu["wall"] > OTHERS_LIMIT and not args.force_record:
                print(
                    f"not recorded: other processes used more than {OTHERS_LIMIT:g} CPUs on average while "
                    "measuring; rerun on a quiet machine (or pass --force-record)",
                    file=sys.stderr,
                )
                raise SystemExit(3)
            record(text, "peer-bench")
            print(f"recorded in {RESULTS.relative_to(REPO)}", file=sys.stderr)
    finally:
        await endRun(harness, ok, directory, args.keep)


def main(reactor: Any, argv: list[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip() if __doc__ else None)
    parser.add_argument("--samples", type=int, default=2000, help="timed PB pings (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed PB pings first (default 200)")
    parser.add_argument(
        "--http-samples", type=int, default=300, help="timed local/relayed pairs per HTTPS loop (default 300)"
    )
    parser.add_argument("--http-warmup", type=int, default=30, help="untimed pairs first (default 30)")
    parser.add_argument(
        "--record",
        action="store_true",
        help="write the results into bench/RESULTS.md, unless other processes disturbed the run",
    )
    parser.add_argument("--force-record", action="store_true", help="with --record: record even a disturbed run")
    parser.add_argument(
        "--keep", action="store_true", help="keep the array directory (config, PKI, SP logs) afterwards"
    )
    parser.add_argument(
        "--deadline", type=float, default=110.0, help="give up (and stop everything) after this many seconds"
    )
    args = parser.parse_args(argv)
    if min(args.samples, args.http_samples) < 1 or min(args.warmup, args.http_warmup) < 0:
        parser.error("sample counts must be positive and warm-up counts not negative")
    return withDeadline(reactor, run(reactor, args), args.deadline, "peer_bench")


if __name__ == "__main__":
    react(main, [sys.argv[1:]])
