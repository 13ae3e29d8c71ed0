"""
Tests for the arbiter's I/O shell (L{spmgmt.arbiter.service.Arbiter}) on a
Clock with recording minds: what leaves the arbiter, and when.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.spread.pb import DeadReferenceError
from twisted.trial.unittest import SynchronousTestCase

from spmgmt import token
from spmgmt.arbiter.epochstore import EpochStore, EpochStoreError
from spmgmt.arbiter.service import Arbiter, makeArbiterService
from spmgmt.config import ConfigError
from spmgmt.testing import ArrayHarness


class RecordingMind:
    """A mind that records calls and acknowledges grants."""

    def __init__(self, calls: list[tuple[str, str, Any]], name: str, ack: bool = True) -> None:
        self._calls = calls
        self._name = name
        self._ack = ack

    def callRemote(self, method: str, *args: Any) -> Deferred[Any]:
        self._calls.append((self._name, method, args[0] if args else None))
        if method == "grant":
            return succeed(self._ack)
        return succeed(None)


class BrokenStore(EpochStore):
    """An epoch store whose writes fail (a full disk)."""

    def store(self, epoch: int, holder: str | None = None) -> None:
        raise EpochStoreError(f"cannot store epoch {epoch}: No space left on device")


class ArbiterShellTests(SynchronousTestCase):
    """The shell persists before granting and never grants what it could not persist."""

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.clock = Clock()
        self.now = [100.0]
        self.calls: list[tuple[str, str, Any]] = []
        self.policy = token.Policy(preference=("spa", "spb"), startupGrace=0.0)

    def arbiter(self, store: EpochStore) -> Arbiter:
        arbiter = Arbiter(self.clock, self.policy, store, monotonic=lambda: self.now[0])
        arbiter.startService()
        self.addCleanup(arbiter.stopService)
        for sp in ("spa", "spb"):
            arbiter.attach(sp, RecordingMind(self.calls, sp))
        return arbiter

    def test_grantAfterPersist(self) -> None:
        """The first grant is stored (with its holder) before it is sent, then acknowledged."""
        store = EpochStore(self.directory / "epoch.json")
        arbiter = self.arbiter(store)
        arbiter.heartbeat("spa", True, None, None, first=True)
        arbiter.heartbeat("spb", True, None, None, first=True)
        self.assertEqual(store.loadState(), (1, "spa"))
        self.assertIn(("spa", "grant", 1), self.calls)
        self.assertEqual(token.arrayState(arbiter.state), "active")
        kinds = [e["kind"] for e in arbiter.events.since(0)]
        self.assertIn("token", kinds)

    def test_noGrantWithoutPersist(self) -> None:
        """
        When the epoch cannot be stored, no grant leaves, the array stays
        unavailable, one alarm is recorded, and no epoch is used up.
        """
        arbiter = self.arbiter(BrokenStore(self.directory / "epoch.json"))
        arbiter.heartbeat("spa", True, None, None, first=True)
        arbiter.heartbeat("spb", True, None, None, first=True)
        for _ in range(5):
            self.now[0] += 0.1
            self.clock.advance(0.1)
            arbiter.heartbeat("spa", True, None, None, first=False)
        self.assertEqual([c for c in self.calls if c[1] == "grant"], [])
        self.assertEqual(token.arrayState(arbiter.state), "unavailable")
        self.assertEqual(arbiter.state.issued, 0)
        alarms = [e for e in arbiter.events.since(0) if e["kind"] == "alarm"]
        self.assertEqual(len(alarms), 1)
        self.assertIn("No space left", alarms[0]["why"])
        self.assertNotIn("grant", [e["kind"] for e in arbiter.events.since(0)])

    def test_tickSurvivesErrors(self) -> None:
        """A failing step inside the tick is logged and the tick goes on."""
        arbiter = self.arbiter(EpochStore(self.directory / "epoch.json"))
        original = arbiter.feed

        def explode(event: Any) -> None:
            raise RuntimeError("boom")

        arbiter.feed = explode  # type: ignore[method-assign]
        self.clock.advance(self.policy.interval)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        arbiter.feed = original  # type: ignore[method-assign]
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_hungHolderJudgedAtItsDeadline(self) -> None:
        """
        A holder that stops is judged just after its miss window ends
        (from its last heartbeat), not at the next tick up to an interval
        later.
        """
        arbiter = self.arbiter(EpochStore(self.directory / "epoch.json"))
        arbiter.heartbeat("spa", True, None, None, first=True)
        arbiter.heartbeat("spb", True, None, None, first=True)
        self.assertEqual(arbiter.route(), (1, "spa"))

        def advance(seconds: float) -> None:
            self.now[0] += seconds
            self.clock.advance(seconds)

        advance(0.05)  # between two ticks
        arbiter.heartbeat("spa", True, 1, 1, first=False)
        lastHeard = self.now[0]
        moved = None
        for _ in range(40):
            advance(0.01)
            if round((self.now[0] - lastHeard) * 100) % 10 == 0:
                arbiter.heartbeat("spb", True, None, None, first=False)
            if arbiter.state.holder != "spa" and moved is None:
                moved = self.now[0] - lastHeard
        assert moved is not None
        # The miss window is 0.3 s; the next tick after it would be 0.35 s.
        self.assertGreater(moved, self.policy.missWindow)
        self.assertLess(moved, self.policy.missWindow + 0.015)

    def test_deadMindDoesNotSilenceOthers(self) -> None:
        """
        A mind whose connection is gone but not yet detached (PB raises at
        once) does not keep the event from the SPs after it.
        """
        arbiter = self.arbiter(EpochStore(self.directory / "epoch.json"))

        class DeadMind:
            def callRemote(self, method: str, *args: Any) -> Deferred[Any]:
                raise DeadReferenceError("Calling Stale Broker")

        arbiter._minds = {"spa": DeadMind(), "spb": RecordingMind(self.calls, "spb")}
        event = arbiter.events.record("x", {})
        self.assertIn(("spb", "event", event), self.calls)

    def test_lostHistoryIsAnAlarm(self) -> None:
        """
        A history that lost lines, or is empty although epochs were issued,
        starts with an alarm event saying so.
        """
        store = EpochStore(self.directory / "epoch.json")
        store.store(4, "spa")
        arbiter = Arbiter(self.clock, self.policy, store, monotonic=lambda: self.now[0])
        (alarm,) = arbiter.events.since(0)
        self.assertEqual((alarm["kind"], alarm["id"]), ("alarm", 1))
        self.assertIn("empty though epoch 4", alarm["why"])
        with (self.directory / "events.jsonl").open("a") as f:
            f.write("not an event\n")
        arbiter.events.record("x", {})
        again = Arbiter(self.clock, self.policy, store, monotonic=lambda: self.now[0])
        self.assertIn("1 lines of the event history", again.events.since(0)[-1]["why"])
        self.assertEqual(again.events.lastId, 3)

    def test_unreadableHistoryStopsStart(self) -> None:
        """An unreadable history ends the arbiter's start with a one-line error naming it."""
        harness = ArrayHarness(MemoryReactorClock(), self.directory / "array", arbiter=True)
        history = harness.config.token.state_file.parent / "events.jsonl"
        history.parent.mkdir(parents=True)
        history.write_bytes(b"\xff\n")
        error = self.assertRaises(ConfigError, makeArbiterService, MemoryReactorClock(), harness.config, "arbiter")
        self.assertIn("token.state_file", str(error))
        self.assertIn(f"cannot read the event history {history}", str(error))
        self.assertEqual(len(str(error).splitlines()), 1)

    def test_followersHearEveryRoute(self) -> None:
        """A proxy hears the route when it logs in and at every change, once the holder acknowledged."""
        arbiter = self.arbiter(EpochStore(self.directory / "epoch.json"))
        heard: list[tuple[str, str, Any]] = []
        unfollow = arbiter.follow("proxy", RecordingMind(heard, "proxy"))
        self.assertEqual(heard, [("proxy", "route", None)])
        arbiter.heartbeat("spa", True, None, None, first=True)
        arbiter.heartbeat("spb", True, None, None, first=True)
        self.assertEqual(heard[-1], ("proxy", "route", 1))
        unfollow()
        arbiter.feed(token.Disconnected("spa", self.now[0]))
        self.assertEqual(heard[-1], ("proxy", "route", 1))  # no longer told
