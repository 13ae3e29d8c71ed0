#!/usr/bin/env python
"""
Failover time of the active token on a real two-SP array with its arbiter
(loopback only).

Starts the arbiter (C{twistd spmgmt arbiter}), the proxy, spa and spb as real C{twistd}
processes with L{ArrayHarness} (real TLS, ephemeral ports on 127.0.0.1, a
temporary directory), once for the whole run.  Then, C{--trials} times, for
each fault kind in turn:

  - C{sigkill}: SIGKILL the holder (the arbiter sees its PB connection close);
  - C{sigstop}: SIGSTOP the holder (it stops heartbeating; its connection
    stays open, so only the arbiter's miss window notices);
  - C{unhealthy}: create the holder's maintenance file (its health check
    fails, its next heartbeat says so).

Each trial first lets the array settle: both SPs up, healthy, reachable
from each other and connected to the arbiter, and three polls in a row
agreeing on the token.  After a random pause of up to one heartbeat
interval (so the fault lands at a random phase of the heartbeat and tick
timers), it records C{t0 = time.time()} immediately before the fault, then
polls the other SP O until C{last_move} shows a newer epoch granted to O and
acknowledged.  C{last_move.time} and C{last_move.acked_at} are the arbiter's
wall clock (C{time.time()}, same host), so

  - failover time = C{acked_at - t0} (no polling delay in it),
  - detection     = C{time - t0} (fault until the arbiter granted anew),
  - grant -> ack  = C{acked_at - time} (the grant's PB round trip).

The fault is then undone (restart, SIGCONT, remove the file).  The token
does not fail back, so the holder alternates between spa and spb.

Run from the repository root::

    .venv/bin/python bench/failover_bench.py [--trials N] [--record]

C{--record} rewrites the section between the failover-bench markers in
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
from twisted.internet.task import deferLater, react

# From bench/ (on sys.path when run as a script); it puts the repository root there too.
from _common import REPO, RESULTS, CPUWindow, codeUnderTest, command, cpuLine, machine, milliseconds
from _common import percentile, endRun, record, withDeadline

from spmgmt.testing import ArrayHarness

FAULTS = ("sigkill", "sigstop", "unhealthy")
SPS = ("spa", "spb")

#: What the arbiter's C{last_move.reason} should say for each fault.
EXPECTED_REASON = {
    "sigkill": "connection lost",
    "sigstop": "missed heartbeats",
    "unhealthy": "unhealthy",
}

# -- statistics ------------------------------------------------------------------


def ms(seconds: float) -> str:
    return milliseconds(seconds, 1)


# -- the array ---------------------------------------------------------------------


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def arrayView(harness: ArrayHarness, via: str) -> dict[str, Any]:
    """C{GET /api/v1/array} on C{via}, bounded to 2 s."""
    response = await harness.request(via, "GET", "/api/v1/array", timeout=2.0)
    if response.code != 200:
        raise RuntimeError(f"GET /api/v1/array on {via} answered {response.code}")
    return response.json()  # type: ignore[no-any-return]


async def settledToken(harness: ArrayHarness) -> dict[str, Any] | None:
    """
    The token if the array is settled now: both SPs answer, both report the
    same active token, every SP is healthy, reachable from the other and
    connected to the arbiter, and exactly the holder says it is active.
    """
    if any(harness.path(f"var/{sp}.maintenance").exists() for sp in SPS):
        return None
    tokens = []
    for via in SPS:
        try:
            view = await arrayView(harness, via)
        except Exception:
            return None
        tok = view.get("token") or {}
        holder = tok.get("holder")
        if view.get("state") != "active" or holder not in SPS or not view["arbiter"]["reachable"]:
            return None
        for entry in view["sps"]:
            if not (entry.get("reachable") and entry.get("healthy") and entry.get("arbiter_connected")):
                return None
            if entry.get("role") != ("active" if entry["id"] == holder else "passive"):
                return None
        tokens.append(tok)
    if tokens[0] != tokens[1]:
        return None
    return tokens[0]


async def settle(harness: ArrayHarness, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until L{settledToken} gives the same token three polls in a row."""
    seen: list[dict[str, Any]] = []

    async def stable() -> bool:
        tok = await settledToken(harness)
        if tok is None or (seen and seen[-1] != tok):
            seen.clear()
        if tok is not None:
            seen.append(tok)
        return len(seen) >= 3

    await harness.waitFor(stable, timeout, "the array to settle", interval=0.1)
    return seen[-1]


async def waitMove(harness: ArrayHarness, to: str, after: int, timeout: float = 10.0) -> dict[str, Any]:
    """
    Poll C{to} until its C{last_move} shows an epoch newer than C{after},
    acknowledged; that move.
    """
    found: dict[str, Any] = {}

    async def moved() -> bool:
        try:
            view = await arrayView(harness, to)
        except Exception:
            return False
        move = view.get("last_move") or {}
        if int(move.get("epoch") or 0) > after and move.get("acked_at") is not None:
            found.update(move)
            return True
        return False

    await harness.waitFor(moved, timeout, f"a new epoch granted to {to} and acknowledged", to, interval=0.02)
    if found.get("to") != to:
        raise RuntimeError(f"the token moved to {found.get('to')!r}, not {to}: {found!r}")
    return found


def rssMB(pid: int) -> float | None:
    """The resident set of process C{pid}, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


#: Timer lateness allowed for when predicting the maintenance check's next run.
PHASE_SLACK = 0.003


async def lastMaintenanceCheck(harness: ArrayHarness, sp: str) -> tuple[float, float, float]:
    """
    When (wall clock) C{sp} last ran its maintenance-file check, from the
    check's C{age_s} in C{GET /api/v1/sps/<sp>/health}; the check's
    interval; and how far off that time may be.  That is the phase of the
    check's timer, so a sample can be split into "waiting for the check" and
    "waiting for the next heartbeat".
    """
    sent = time.time()
    response = await harness.request(sp, "GET", f"/api/v1/sps/{sp}/health", timeout=2.0)
    got = time.time()
    check = next(c for c in response.json()["checks"] if c["kind"] == "maintenance_file")
    config = next(c for c in harness.config.checks if c.kind == "maintenance_file")
    # The SP computed age_s somewhere between sent and got: take the middle;
    # the uncertainty (half the round trip, plus timer lateness) is kept.
    return (sent + got) / 2 - float(check["age_s"]), config.interval, (got - sent) / 2 + PHASE_SLACK


def inject(harness: ArrayHarness, fault: str, sp: str) -> None:
    if fault == "sigkill":
        harness.signal(sp, signal.SIGKILL)
    elif fault == "sigstop":
        harness.signal(sp, signal.SIGSTOP)
    elif fault == "unhealthy":
        harness.path(f"var/{sp}.maintenance").touch()
    else:
        raise ValueError(fault)


async def undo(harness: ArrayHarness, fault: str, sp: str) -> None:
    if fault == "sigkill":
        # restart() waits for the killed process to end, then starts it and
        # waits for /healthz.
        await harness.restart(sp)
    elif fault == "sigstop":
        harness.signal(sp, signal.SIGCONT)
    elif fault == "unhealthy":
        harness.path(f"var/{sp}.maintenance").unlink()


async def trial(reactor: Any, harness: ArrayHarness, fault: str, jitter: float) -> dict[str, Any]:
    """One fault on the current holder; what the arbiter recorded."""
    tok = await settle(harness)
    holder = tok["holder"]
    other = next(sp for sp in SPS if sp != holder)
    extra: dict[str, Any] = {"reaped": None, "rss_mb": None, "check_wait": None}
    lastCheck, checkInterval, uncertainty = None, 0.0, 0.0
    if fault == "unhealthy":
        lastCheck, checkInterval, uncertainty = await lastMaintenanceCheck(harness, holder)
    elif fault == "sigkill":
        extra["rss_mb"] = rssMB(harness.pid(holder))
    await sleep(reactor, jitter)
    died: list[float] = []
    if fault == "sigkill":
        # When this process learns (SIGCHLD, reaped) that the SP is gone: a
        # reference for how soon the kernel ended it, seen from outside the
        # arbiter.  (The harness's private per-process state; bench only.)
        harness._procs[holder].ended.addBoth(lambda r: died.append(time.time()) or r)
    t0 = time.time()
    inject(harness, fault, holder)
    try:
        move = await waitMove(harness, other, tok["epoch"])
    finally:
        await undo(harness, fault, holder)
    if died:
        extra["reaped"] = died[0] - t0
    if lastCheck is not None:
        # The first run of the maintenance check at or after t0.
        due = lastCheck + checkInterval
        while due < t0:
            due += checkInterval
        wait = due - t0
        # A run predicted within the uncertainty of t0 may have come just
        # before the file existed (then the next run, 1 interval later,
        # found it) or just after: no split for such a sample.
        if uncertainty <= wait <= checkInterval - uncertainty:
            extra["check_wait"] = wait
        else:
            extra["check_ambiguous"] = True
    return {
        "fault": fault,
        "from": holder,
        "to": other,
        "before": int(tok["epoch"]),
        "epoch": int(move["epoch"]),
        "epochs": int(move["epoch"]) - int(tok["epoch"]),
        "t0": t0,
        **extra,
        "reason": move.get("reason", ""),
        "total": float(move["acked_at"]) - t0,
        "detect": float(move["time"]) - t0,
        "ack": float(move["acked_at"]) - float(move["time"]),
    }


def arbiterEvents(harness: ArrayHarness) -> list[dict[str, Any]]:
    """
    The token events the arbiter logged (one C{{'id': ..., 'kind': ...}}
    dict per line of its twistd log); empty if the format is not found.
    """
    import ast

    events = []
    try:
        text = harness.path("var/log/proxy.log").read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        at = line.find("{'id': ")
        if at == -1:
            continue
        try:
            event = ast.literal_eval(line[at:])
        except (ValueError, SyntaxError):
            continue
        if isinstance(event, dict) and "kind" in event and "time" in event:
            events.append(event)
    return events


def addBreakdown(samples: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """
    Split each sample's detection with the arbiter's own events: C{noticed}
    = the revoke of the old epoch (the arbiter decided the holder is gone),
    C{persist} = from there to the grant event (the epoch fsynced, the grant
    sent).
    """
    for s in samples:
        revoke = [e for e in events if e["kind"] == "revoke" and e.get("epoch") == s["before"]]
        grant = [e for e in events if e["kind"] == "grant" and e.get("epoch") == s["epoch"]]
        if revoke and grant:
            s["noticed"] = float(revoke[0]["time"]) - s["t0"]
            s["persist"] = float(grant[-1]["time"]) - float(revoke[0]["time"])
            if s.get("check_wait") is not None:
                s["beat_wait"] = s["noticed"] - s["check_wait"]


# -- report ------------------------------------------------------------------------


def parameters(harness: ArrayHarness) -> dict[str, float]:
    """The timing knobs of the array under test, from its configuration."""
    t = harness.config.token
    maintenance = next(c for c in harness.config.checks if c.kind == "maintenance_file")
    return {
        "interval": t.heartbeat_interval,
        "misses": t.heartbeat_misses,
        "window": t.missWindow,
        "lease": t.lease_timeout,
        "checkInterval": maintenance.interval,
        "fall": maintenance.fall,
    }


def bounds(p: dict[str, float]) -> dict[str, str]:
    """The expected bound of each fault, in words, from the configuration."""
    i, w = p["interval"] * 1000, p["window"] * 1000
    check = p["checkInterval"] * p["fall"] * 1000
    return {
        "sigkill": "noticed as soon as the killed SP's sockets close (kernel teardown) + epoch fsync + grant round trip",
        "sigstop": (
            f"noticed {w - i:.0f}–{w + i:.0f} ms ({int(p['misses'])} × {i:.0f} ms = {w:.0f} ms miss window "
            f"± one interval: heartbeat phase, tick granularity) + epoch fsync + grant round trip"
        ),
        "unhealthy": (
            f"noticed 0–{check:.0f} ms (check every {p['checkInterval'] * 1000:.0f} ms × fall "
            f"{int(p['fall'])}, then a heartbeat at once) + epoch fsync + grant round trip"
        ),
    }


def table(samples: list[dict[str, Any]], p: dict[str, float]) -> str:
    expected = bounds(p)
    lines = [
        "| fault | trials | median ms | p90 ms | p99 ms | max ms | detection median / max ms "
        "| grant→ack median / max ms | expected bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for fault in FAULTS:
        rows = [s for s in samples if s["fault"] == fault]
        if not rows:
            continue
        total = [s["total"] for s in rows]
        detect = [s["detect"] for s in rows]
        ack = [s["ack"] for s in rows]
        lines.append(
            f"| `{fault}` | {len(rows)} | {ms(percentile(total, 50))} | {ms(percentile(total, 90))} "
            f"| {ms(percentile(total, 99))} | {ms(max(total))} "
            f"| {ms(percentile(detect, 50))} / {ms(max(detect))} "
            f"| {ms(percentile(ack, 50))} / {ms(max(ack))} | {expected[fault]} |"
        )
    return "\n".join(lines)


def breakdownTable(samples: list[dict[str, Any]]) -> list[str]:
    """Detection split with the arbiter's log: noticed, then persist + send."""
    if not all("noticed" in s for s in samples):
        return ["(The arbiter's log could not be matched to every move: no breakdown.)"]

    def mm(values: list[float]) -> str:
        return f"{ms(percentile(values, 50))} / {ms(max(values))}" if values else "–"

    lines = [
        "Where the detection goes (from the token events in the arbiter's log):",
        "",
        "| fault | holder gone, seen by the arbiter (revoke − t0) median / p90 / max ms "
        "| revoke → grant (epoch fsync, grant sent) median / max ms | what the first column is made of |",
        "| --- | ---: | ---: | --- |",
    ]
    for fault in FAULTS:
        rows = [s for s in samples if s["fault"] == fault]
        if not rows:
            continue
        noticed = [s["noticed"] for s in rows]
        persist = [s["persist"] for s in rows]
        if fault == "sigkill":
            reaped = [s["reaped"] for s in rows if s.get("reaped") is not None]
            rss = [s["rss_mb"] for s in rows if s.get("rss_mb") is not None]
            made = (
                f"the killed SP reaped by the bench (SIGCHLD) at {mm(reaped)} ms; "
                f"SP resident set {percentile(rss, 50):.0f} MB (median)" if rss else "–"
            )
        elif fault == "unhealthy":
            check = [s["check_wait"] for s in rows if s.get("check_wait") is not None]
            beat = [s["beat_wait"] for s in rows if s.get("beat_wait") is not None]
            unsure = sum(1 for s in rows if s.get("check_ambiguous"))
            made = (
                f"waiting for the maintenance check {mm(check)} ms, then for the next heartbeat "
                f"to reach the arbiter {mm(beat)} ms (check phase from its `age_s` just before the "
                f"fault; {unsure} trial(s) with a check due within a few ms of the fault left out)"
            )
        else:
            made = "the miss window and the tick's phase (no finer split)"
        lines.append(
            f"| `{fault}` | {ms(percentile(noticed, 50))} / {ms(percentile(noticed, 90))} / {ms(max(noticed))} "
            f"| {ms(percentile(persist, 50))} / {ms(max(persist))} | {made} |"
        )
    return lines


def slowest(samples: list[dict[str, Any]]) -> list[str]:
    """The slowest trial of each fault, taken apart: where its time went."""
    out = ["The slowest trial of each fault:", ""]
    for fault in FAULTS:
        rows = [s for s in samples if s["fault"] == fault]
        if not rows:
            continue
        n = max(range(len(rows)), key=lambda k: rows[k]["total"])
        s = rows[n]
        parts = []
        if "noticed" in s:
            parts.append(f"noticed {ms(s['noticed'])} ms")
            if s.get("reaped") is not None:
                parts.append(f"(SP reaped at {ms(s['reaped'])} ms, RSS {s['rss_mb']:.0f} MB)")
            if s.get("check_wait") is not None:
                parts.append(f"(check {ms(s['check_wait'])} ms + heartbeat {ms(s['beat_wait'])} ms)")
            elif s.get("check_ambiguous"):
                parts.append("(a check was due within a few ms of the fault: no split)")
            parts.append(f"+ epoch fsync and grant {ms(s['persist'])} ms")
        else:
            parts.append(f"detection {ms(s['detect'])} ms")
        parts.append(f"+ grant→ack {ms(s['ack'])} ms")
        out.append(
            f"- `{fault}` trial {n + 1} ({s['from']} → {s['to']}): {ms(s['total'])} ms = " + " ".join(parts)
        )
    return out


def anomalies(samples: list[dict[str, Any]]) -> list[str]:
    """Moves that did not go as the fault predicts (other reason, extra epochs)."""
    out = []
    for n, s in enumerate(samples):
        want = EXPECTED_REASON[s["fault"]]
        if want not in s["reason"] or s["epochs"] != 1:
            out.append(
                f"- sample {n} (`{s['fault']}` {s['from']} → {s['to']}): reason {s['reason']!r}, "
                f"epoch +{s['epochs']}, {ms(s['total'])} ms"
            )
    return out


def limits(samples: list[dict[str, Any]], p: dict[str, float]) -> list[str]:
    """One sentence per fault on what limits it, with this run's figures."""

    def values(fault: str, key: str) -> list[float]:
        return [s[key] for s in samples if s["fault"] == fault and s.get(key) is not None]

    def med(fault: str, key: str) -> str:
        v = values(fault, key)
        return f"{ms(percentile(v, 50))} ms" if v else "n/a"

    def rng(fault: str, key: str) -> str:
        v = values(fault, key)
        return f"{ms(min(v))}–{ms(max(v))} ms" if v else "n/a"

    def med1(fault: str, key: str) -> str:
        v = values(fault, key)
        return f"{percentile(v, 50):.0f}" if v else "n/a"

    i, w = p["interval"] * 1000, p["window"] * 1000
    check = p["checkInterval"] * 1000
    out = ["What limits each fault (this run; medians unless said):", ""]
    if values("sigkill", "total"):
        out.append(
            f"- `sigkill`: no timer.  The arbiter notices when the kernel closes the dead SP's TCP "
            f"connection ({med('sigkill', 'noticed')} after the signal), about when this bench reaps "
            f"the process ({med('sigkill', 'reaped')}): that part is the kernel tearing the killed "
            f"process down, not spmgmt (Linux frees a dying process's memory before it closes its "
            f"files, so it grows with the SP's resident set, {med1('sigkill', 'rss_mb')} MB here, and "
            f"with how soon the dying process gets a CPU).  Then the arbiter fsyncs the new epoch and "
            f"sends the grant ({med('sigkill', 'persist')}), and the other SP acknowledges it over PB "
            f"({med('sigkill', 'ack')}); scheduling on a busy 2-CPU VM makes the tail."
        )
    if values("sigstop", "total"):
        out.append(
            f"- `sigstop`: the miss window.  A stopped SP keeps its TCP connection open, so only the "
            f"arbiter's tick (every {i:.0f} ms) can see its last heartbeat grow older than "
            f"{int(p['misses'])} × {i:.0f} ms = {w:.0f} ms; the last heartbeat arrived up to one interval "
            f"before the fault and the tick fires up to one interval after the window ends, so the "
            f"arbiter notices over {rng('sigstop', 'noticed')} (ideally {w - i:.0f}–{w + i:.0f} ms); "
            f"the epoch fsync + grant ({med('sigstop', 'persist')}) and the acknowledgement "
            f"({med('sigstop', 'ack')}) are small next to it.  Only a shorter interval or fewer misses "
            f"would cut it, at the price of failing over from a live SP that merely stalled."
        )
    if values("unhealthy", "total"):
        out.append(
            f"- `unhealthy`: the check timer.  The maintenance-file check runs every "
            f"{check:.0f} ms (fall {int(p['fall'])}: one failure turns the SP unhealthy; here it ran "
            f"{med('unhealthy', 'check_wait')} after the file appeared); the SP sends a heartbeat at once "
            f"on a health change, so the arbiter hears of it one round trip later "
            f"({med('unhealthy', 'beat_wait')} after the check): noticed over {rng('unhealthy', 'noticed')} "
            f"(ideally 0–{check * p['fall']:.0f} ms plus a round trip), then the epoch fsync + grant "
            f"({med('unhealthy', 'persist')}) and the acknowledgement ({med('unhealthy', 'ack')}).  "
            f"Only a shorter check interval would cut it."
        )
    return out


def report(
    samples: list[dict[str, Any]], p: dict[str, float], cpu: dict[str, float], args: argparse.Namespace, elapsed: float
) -> str:
    m = machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    odd = anomalies(samples)
    holders = {f: sum(1 for s in samples if s["fault"] == f and s["from"] == "spa") for f in FAULTS}
    return "\n".join(
        [
            "## Failover time (`bench/failover_bench.py`)",
            "",
            f"- date: {when}",
            f"- machine: {m['nproc']} CPUs (nproc), {m['cpu']}, Linux {m['kernel']}",
            f"- software: Python {m['python']}, Twisted {m['twisted']}, {m['openssl']}, {m['reactor']}",
            f"- code: {codeUnderTest()}",
            f"- command (repo root): `{command('bench/failover_bench.py')}`",
            f"- run: arbiter + spa + spb (`twistd`, 127.0.0.1, TLS 1.3 mutual TLS on PB) for the whole run; "
            f"{args.trials} trials × {len(FAULTS)} faults; heartbeat {p['interval'] * 1000:.0f} ms × "
            f"{int(p['misses'])} misses, lease {p['lease'] * 1000:.0f} ms, maintenance check every "
            f"{p['checkInterval'] * 1000:.0f} ms (fall {int(p['fall'])}); faults on spa/spb: "
            + ", ".join(f"{f} {holders[f]}/{sum(1 for s in samples if s['fault'] == f) - holders[f]}" for f in FAULTS)
            + f"; wall time {elapsed:.1f} s",
            cpuLine(cpu, "during the trials", "bench + array", "tails may be inflated"),
            "- failover = arbiter's `last_move.acked_at` − `t0` (`time.time()` just before the fault); "
            "detection = `last_move.time` − `t0`; grant→ack = `acked_at` − `time`.  The polling of "
            "`GET /api/v1/array` is not in any figure.  With 20 trials p99 is interpolated between "
            "the two largest samples.",
            "",
            table(samples, p),
            "",
            *breakdownTable(samples),
            "",
            *slowest(samples),
            "",
            *limits(samples, p),
            "",
            *(["Moves that did not go as expected:", "", *odd, ""] if odd else
              ["Every move had the reason its fault predicts and took exactly one new epoch.", ""]),
        ]
    )


# -- main --------------------------------------------------------------------------


async def run(reactor: Any, args: argparse.Namespace) -> None:
    began = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="spmgmt-failover-bench-"))
    harness = None
    ok = False
    rng = random.Random(args.seed)
    try:
        harness = ArrayHarness(reactor, directory, spIds=SPS, arbiter=True)
        await harness.start()
        await settle(harness, timeout=60.0)
        p = parameters(harness)
        window = CPUWindow(harness, irqApart=False)
        samples: list[dict[str, Any]] = []
        for n in range(args.trials):
            for fault in FAULTS:
                s = await trial(reactor, harness, fault, rng.uniform(0.0, p["interval"]))
                samples.append(s)
                print(
                    f"trial {n + 1:2}/{args.trials} {fault:9} {s['from']}→{s['to']} "
                    f"failover {ms(s['total']):>6} ms  detection {ms(s['detect']):>6} ms  "
                    f"grant→ack {ms(s['ack']):>5} ms  ({s['reason']}, epoch +{s['epochs']})",
                    file=sys.stderr,
                )
        cpu = window.close()
        addBreakdown(samples, arbiterEvents(harness))
        text = report(samples, p, cpu, args, time.monotonic() - began)
        print(text)
        if args.record:
            record(text, "failover-bench")
            print(f"recorded in {RESULTS.relative_to(REPO)}", file=sys.stderr)
        ok = True
    finally:
        await endRun(harness, ok, directory, args.keep)


def main(reactor: Any, argv: list[str]) -> Deferred[None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip() if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20, help="trials per fault kind (default 20)")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random pre-fault pauses (default 1)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the array directory (config, PKI, logs) afterwards"
    )
    parser.add_argument(
        "--deadline", type=float, default=280.0, help="give up (and stop everything) after this many seconds"
    )
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be positive")
    return withDeadline(reactor, run(reactor, args), args.deadline, "failover_bench")


if __name__ == "__main__":
    react(main, [sys.argv[1:]])
