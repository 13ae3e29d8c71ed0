"""
Tests for L{spmgmt.clock}: timers follow the monotonic clock, so a
wall-clock step moves no token (RELIABILITY C1, F11).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spmgmt.clock import AlreadyScheduled, useMonotonicTime
from spmgmt.testing import ArrayTestMixin

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


class UseMonotonicTimeTests(SynchronousTestCase):
    """L{useMonotonicTime} switches a reactor's clock only when it is safe."""

    def test_switches(self) -> None:
        """With nothing scheduled, C{seconds} becomes C{time.monotonic}."""
        clock = Clock()
        useMonotonicTime(clock)
        self.assertIs(clock.seconds, time.monotonic)
        useMonotonicTime(clock)  # idempotent

    def test_refusesWithPendingCalls(self) -> None:
        """A pending delayed call would be misplaced: refused."""
        clock = Clock()
        clock.callLater(1, lambda: None)
        self.assertRaises(AlreadyScheduled, useMonotonicTime, clock)


class WallClockStepTests(ArrayTestMixin, TestCase):
    """
    libfaketime steps the wall clock of the active SP and of the arbiter by
    an hour, back and forth, while the array runs: no token moves.
    """

    timeout = 120
    skip = None if LIBFAKETIME.exists() else "libfaketime is not installed (scripts/install-debian-packages)"

    async def test_stepsMoveNoToken(self) -> None:
        """Steps of -1 h and +1 h on the holder and the arbiter keep the token in place."""
        import tempfile

        offsets = Path(tempfile.mkdtemp(prefix="spmgmt-faketime-")) / "offset"
        offsets.write_text("+0\n")
        self.addCleanup(offsets.unlink)
        environment = {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(offsets),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        array = await self.startArray(
            spIds=("spa", "spb"), arbiter=True, environment={"spa": environment, "arbiter": environment}
        )
        before = await array.waitHolder("spb", "spa")
        for step in ("-1h", "+1h", "+0"):
            offsets.write_text(step + "\n")
            await deferLater(reactor, 1.5, lambda: None)
            view = await array.array("spb")
            self.assertEqual((step, view["state"], view["token"]), (step, "active", before))

            async def serves() -> bool:
                # A faked process reads the offset file at every clock call:
                # on a loaded machine spa's lease may lapse for a moment and
                # be renewed with the same epoch.  A moved token never serves.
                response = await array.request(
                    "spa", "GET", "/api/v1/sps/spa/health", headers={"X-SPMgmt-Epoch": str(before["epoch"])}
                )
                return response.code == 200

            await array.waitFor(serves, 5.0, f"spa to serve epoch {before['epoch']} after {step}", "spa")
        events = (await array.request("spb", "GET", "/api/v1/events")).json()["events"]
        moves = {(e["kind"], e.get("epoch")) for e in events if e["kind"] in ("grant", "revoke")}
        self.assertEqual(moves, {("grant", before["epoch"])})  # no revoke, no other epoch
        self.assertTrue(os.path.exists(offsets))
