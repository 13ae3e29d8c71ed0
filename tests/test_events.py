"""
Tests for the event history: L{spmgmt.events} on its own, and the history
and stream served by every SP of a real array.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from spmgmt import events
from spmgmt.config import Address
from spmgmt.durable import appendDurably
from spmgmt.events import PAGE, EventBuffer, EventCopy, EventHistoryError, EventLog
from spmgmt.sp.agent import SPAgent
from spmgmt.sp.participant import Participant
from spmgmt.sp.web import EventStream
from spmgmt.testing import ArrayHarness, ArrayTestMixin
from tests.test_web import arrayConfig


class EventBufferTests(SynchronousTestCase):
    """L{EventBuffer} keeps the newest events in id order."""

    def test_orderAndBound(self) -> None:
        """Only newer ids are kept, at most C{size}; listeners hear each new one."""
        buffer = EventBuffer(size=3)
        heard: list[int] = []
        stop = buffer.listen(lambda e: heard.append(e["id"]))
        for i in (1, 2, 2, 1, 3, 4, 5):
            buffer.add({"id": i, "kind": "x"})
        self.assertEqual([e["id"] for e in buffer.since(0)], [3, 4, 5])
        self.assertEqual(heard, [1, 2, 3, 4, 5])
        self.assertEqual([e["id"] for e in buffer.since(4)], [5])
        self.assertEqual(buffer.lastId, 5)
        stop()
        buffer.add({"id": 6})
        self.assertEqual(heard[-1], 5)
        self.assertFalse(buffer.add({"kind": "no id"}))


class EventLogTests(SynchronousTestCase):
    """L{EventLog} persists, continues ids after a restart, and stays bounded."""

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = self.directory / "events.jsonl"

    def test_idsContinueAfterRestart(self) -> None:
        """A new log over the same file continues the ids; a torn line is skipped."""
        log = EventLog(self.path, clock=lambda: 100.0)
        first = log.record("token", {"holder": "spa", "epoch": 1})
        log.record("health", {"sp": "spb", "healthy": False})
        self.assertEqual(first, {"id": 1, "kind": "token", "time": 100.0, "holder": "spa", "epoch": 1})
        with self.path.open("a") as f:
            f.write('{"id": 3, "kind": "tor')  # a crash mid-write
        again = EventLog(self.path)
        self.assertEqual([e["id"] for e in again.since(0)], [1, 2])
        self.assertEqual(again.record("grant", {})["id"], 3)

    def test_unreadableRefused(self) -> None:
        """
        A history that exists but cannot be read is an error naming the
        file, never an empty history (which would issue its ids again).
        """
        self.path.write_bytes(b'{"id": 1}\n\xff\xfe\n')
        error = self.assertRaises(EventHistoryError, EventLog, self.path)
        self.assertIn(str(self.path), str(error))
        self.assertEqual(len(str(error).splitlines()), 1)

    def test_tornLastLineNotContinued(self) -> None:
        """
        After a crash that tore the last line, the next event is not
        appended to the torn bytes (it would be unreadable after the next
        restart, and its id issued again): the file is rewritten.
        """
        log = EventLog(self.path)
        for n in range(4):
            log.record("x", {"n": n})
        with self.path.open("a") as f:
            f.write('{"id": 5, "kind": "to')  # a crash mid-write
        log = EventLog(self.path)
        self.assertEqual(log.record("grant", {})["id"], 5)
        log = EventLog(self.path)
        self.assertEqual(([e["id"] for e in log.since(0)], log.unreadable), ([1, 2, 3, 4, 5], 0))
        self.assertEqual(log.record("y", {})["id"], 6)

    def test_unreadableLinesCounted(self) -> None:
        """Lines that are not events (a torn last line aside) are counted for an alarm."""
        self.path.write_text('{"id": 1}\ngarbage\n{"id": true}\n{"id": 2}\n{"id": 3, "kind": "to')
        log = EventLog(self.path)
        self.assertEqual(([e["id"] for e in log.since(0)], log.unreadable), ([1, 2], 2))

    def test_bounded(self) -> None:
        """The file is compacted to the last C{size} events when it doubles."""
        log = EventLog(self.path, size=5)
        for i in range(12):
            log.record("x", {"n": i})
        lines = self.path.read_text().splitlines()
        self.assertLessEqual(len(lines), 10)
        self.assertEqual([e["id"] for e in log.since(0)], [8, 9, 10, 11, 12])
        self.assertEqual(EventLog(self.path, size=5).lastId, 12)

    def test_compactionKeepsItsTrigger(self) -> None:
        """
        Well past many compactions, and across restarts at every point,
        the file always holds the newest C{size} ids with no hole (the
        event that triggers a compaction is in the rewritten file), and a
        restart never issues an id again.
        """
        size = 3
        log = EventLog(self.path, size=size)
        issued: list[int] = []
        for n in range(40):
            issued.append(log.record("x", {"n": n})["id"])
            onDisk = [json.loads(line)["id"] for line in self.path.read_text().splitlines()]
            self.assertEqual(onDisk, list(range(onDisk[0], issued[-1] + 1)), f"after id {issued[-1]}")
            self.assertLessEqual(len(onDisk), 2 * size)
            self.assertGreaterEqual(len(onDisk), size if n >= size else n + 1)
            log = EventLog(self.path, size=size)  # an arbiter restart
            self.assertEqual([e["id"] for e in log.since(0)], issued[-size:])
        self.assertEqual(issued, list(range(1, 41)))

    def test_storedBeforeAnnounced(self) -> None:
        """A listener hears of an event only once it is in the file, compactions included."""
        log = EventLog(self.path, size=2)
        missing: list[int] = []

        def heard(event: dict[str, Any]) -> None:
            onDisk = [json.loads(line)["id"] for line in self.path.read_text().splitlines()]
            if event["id"] not in onDisk:
                missing.append(event["id"])

        log.listen(heard)
        for n in range(10):
            log.record("x", {"n": n})
        self.assertEqual(missing, [])

    def test_failedWriteHealed(self) -> None:
        """
        An event that could not be written is still announced, and the
        next write that works rewrites the file with it.
        """
        log = EventLog(self.path, size=100)
        log.record("x", {"n": 0})

        def full(path: Path, data: bytes) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(events, "appendDurably", full)
        heard: list[int] = []
        log.listen(lambda e: heard.append(e["id"]))
        log.record("x", {"n": 1})
        self.assertEqual(heard, [2])
        self.patch(events, "appendDurably", appendDurably)
        log.record("x", {"n": 2})
        self.assertEqual([e["id"] for e in EventLog(self.path).since(0)], [1, 2, 3])


class EventCopyTests(SynchronousTestCase):
    """L{EventCopy} takes pushes only once it has caught up."""

    def test_pushesWhileCatchingUpIgnored(self) -> None:
        """
        Pushed events are ignored during a catch-up (the last page holds
        them); a short page ends it, and pushes are kept again.
        """
        copy = EventCopy(size=100)
        copy.add({"id": 1})
        self.assertEqual(copy.beginCatchUp(), 1)
        copy.pushed({"id": 4})
        self.assertEqual(copy.lastId, 1)
        self.assertIsNone(copy.page([{"id": 3}, {"id": 2}, {"id": 4}]))
        self.assertFalse(copy.catchingUp)
        copy.pushed({"id": 5})
        self.assertEqual([e["id"] for e in copy.since(0)], [1, 2, 3, 4, 5])

    def test_fullPageAsksAgain(self) -> None:
        """A full page means more may follow: fetch again from its last id."""
        copy = EventCopy(size=10 * PAGE)
        copy.beginCatchUp()
        self.assertEqual(copy.page([{"id": i} for i in range(1, PAGE + 1)]), PAGE)
        self.assertTrue(copy.catchingUp)
        self.assertIsNone(copy.page([{"id": PAGE + 1}]))
        self.assertEqual(copy.lastId, PAGE + 1)


class FakePerspective:
    """The arbiter's side of one control session: each call waits for the test."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], Deferred[Any]]] = []

    def callRemote(self, method: str, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((method, args, d))
        return d

    def catchUps(self) -> list[tuple[tuple[Any, ...], Deferred[Any]]]:
        return [(args, d) for method, args, d in self.calls if method == "events"]


def _events(*ids: int) -> list[dict[str, Any]]:
    return [{"id": i, "kind": "x"} for i in ids]


class ParticipantFixture(SynchronousTestCase):
    """
    A L{Participant} on a Clock, never connected: the tests script the
    arbiter's side of each session.
    """

    def setUp(self) -> None:
        config = arrayConfig()
        self.clock = MemoryReactorClock()
        self.agent = SPAgent(self.clock, config, config.sp("spa"))
        sp = config.sp("spa")
        self.participant = Participant(
            self.clock,
            self.agent,
            "a1",
            Address("127.0.0.1", 9),  # never dialled: the service is not started
            config.ca,
            sp.cert,
            sp.key,
            b"x" * 32,
            interval=0.1,
            misses=3,
            monotonic=self.clock.seconds,
        )
        for event in _events(1, 2, 3):
            self.agent.events.add(event)

    def session(self) -> FakePerspective:
        perspective = FakePerspective()
        self.participant.perspective = perspective
        self.participant.sessionStarted(perspective)
        return perspective

    def lose(self, perspective: FakePerspective) -> None:
        self.participant.perspective = None
        self.participant.sessionEnded(perspective)
        for _, _, d in perspective.calls:
            if not d.called:
                d.errback(Failure(ConnectionLost("gone")))

    def ids(self) -> list[int]:
        return [e["id"] for e in self.agent.events.since(0)]


class ParticipantCatchUpTests(ParticipantFixture):
    """
    The SP's control session catches its copy up without a hole, whatever
    happens to the session meanwhile.
    """

    def test_sessionLostDuringCatchUp(self) -> None:
        """
        Events pushed while a catch-up is under way are not applied when
        its session drops (that left a hole: 1, 2, 3, 5, 6); the next
        session's catch-up brings every id in order.
        """
        first = self.session()
        ((args, _),) = first.catchUps()
        self.assertEqual(args, (3,))
        self.participant.eventArrived({"id": 5, "kind": "x"})
        self.participant.eventArrived({"id": 6, "kind": "x"})
        self.lose(first)
        self.assertEqual(self.ids(), [1, 2, 3])
        second = self.session()
        ((args, d),) = second.catchUps()
        self.assertEqual(args, (3,))
        d.callback({"ok": _events(4, 5, 6)})
        self.participant.eventArrived({"id": 7, "kind": "x"})
        self.assertEqual(self.ids(), [1, 2, 3, 4, 5, 6, 7])

    def test_failedPageAskedAgain(self) -> None:
        """A page that times out is asked again on the same session, from the copy's last id."""
        session = self.session()
        ((_, d),) = session.catchUps()
        self.participant.eventArrived({"id": 5, "kind": "x"})
        d.errback(Failure(TimeoutError("5 s")))
        self.assertEqual(self.ids(), [1, 2, 3])
        self.clock.advance(1.0)
        (_, (args, again)) = session.catchUps()
        self.assertEqual(args, (3,))
        again.callback({"ok": _events(4, 5)})
        self.assertEqual(self.ids(), [1, 2, 3, 4, 5])

    def test_pages(self) -> None:
        """A full page is followed by another from its last id, on the same session."""
        session = self.session()
        ((_, d),) = session.catchUps()
        d.callback({"ok": _events(*range(4, 4 + PAGE))})
        (_, (args, d2)) = session.catchUps()
        self.assertEqual(args, (3 + PAGE,))
        d2.callback({"ok": _events(4 + PAGE)})
        self.assertEqual(self.ids()[-1], 4 + PAGE)
        self.assertEqual(self.ids(), list(range(self.ids()[0], 5 + PAGE)))

    def test_oldSessionAnswerIgnored(self) -> None:
        """An answer for a session that has ended changes nothing and asks nothing."""
        first = self.session()
        ((_, d),) = first.catchUps()
        self.participant.perspective = None
        second = self.session()
        d.callback({"ok": _events(*range(4, 4 + PAGE))})
        self.assertEqual(self.ids(), [1, 2, 3])
        self.assertEqual(len(first.catchUps()), 1)
        self.assertEqual(len(second.catchUps()), 1)


class _PushRequest(DummyRequest):
    """A L{DummyRequest} that holds a push producer (its own loops on pull producers)."""

    producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class ParticipantReportTests(ParticipantFixture):
    """Command runs reported while the arbiter is away reach the history later."""

    def test_reportWaitsForSession(self) -> None:
        """A report made with no session goes out, in order, when the next one starts."""
        self.participant.report("command", {"command": "a"})
        self.participant.report("command", {"command": "b"})
        session = self.session()
        sent = [args for method, args, _ in session.calls if method == "report"]
        self.assertEqual(sent, [("command", {"command": "a"}), ("command", {"command": "b"})])
        self.participant.report("command", {"command": "c"})
        self.assertEqual(session.calls[-1][:2], ("report", ("command", {"command": "c"})))
        self.assertEqual(len(self.participant._unsent), 0)

    def test_reportLostInFlightNotResent(self) -> None:
        """A report whose session dropped under it is not sent again (it may have been recorded)."""
        first = self.session()
        self.participant.report("command", {"command": "a"})
        self.lose(first)
        second = self.session()
        self.assertEqual([m for m, _, _ in second.calls if m == "report"], [])


class EventStreamTests(SynchronousTestCase):
    """An SP's stream sends each id once, above C{since}, whatever its copy announces."""

    def test_copyCatchingUpRepeatsNothing(self) -> None:
        """
        A stream resumed from id 5 on an SP whose copy is still catching
        up from 0 sends 6, 7, 8 and then new events, nothing it already
        sent, nothing at or below 5.
        """
        copy = EventCopy(size=100)
        request = _PushRequest([b""])
        EventStream(request, copy, 5, Clock())
        copy.beginCatchUp()
        copy.page(_events(1, 2, 3, 4, 5, 6, 7, 8))
        copy.pushed({"id": 9, "kind": "x"})
        copy.add({"id": 9, "kind": "x"})
        copy.pushed({"id": 10, "kind": "x"})
        lines = b"".join(request.written).decode().splitlines()
        sent = [int(line[4:]) for line in lines if line.startswith("id: ")]
        self.assertEqual(sent, [6, 7, 8, 9, 10])
        request.finish()

    def test_gapSaid(self) -> None:
        """
        A resume from further back than the copy holds gets a C{gap}
        message (no id) naming what it cannot have, then the events.
        """
        copy = EventCopy(size=3)
        for event in _events(1, 2, 3, 4, 5, 6):
            copy.add(event)
        request = _PushRequest([b""])
        EventStream(request, copy, 2, Clock())
        copy.add({"id": 7, "kind": "x"})
        text = b"".join(request.written).decode()
        sent = [line for line in text.splitlines() if line.startswith("id: ")]
        self.assertEqual(sent, ["id: 4", "id: 5", "id: 6", "id: 7"])
        gap = json.loads(text.split("event: gap\ndata: ", 1)[1].split("\n", 1)[0])
        detail = "the events after 2 and before 4 are no longer held here"
        self.assertEqual(gap, {"kind": "gap", "after": 2, "next": 4, "detail": detail})
        self.assertLess(text.index("event: gap"), text.index("id: 4"))
        request.finish()


class _StreamReader(Protocol):
    """Collects an event stream; parses C{id:} lines."""

    def __init__(self) -> None:
        self.data = b""
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        if not self.ended.called:
            self.ended.callback(None)

    def ids(self) -> list[int]:
        return [int(line[4:]) for line in self.data.decode().splitlines() if line.startswith("id: ")]

    def close(self) -> Deferred[None]:
        self.transport.stopProducing()  # type: ignore[union-attr]
        return self.ended


async def openStream(array: ArrayHarness, spId: str, lastEventId: int | None = None) -> _StreamReader:
    """Open C{GET /api/v1/events/stream} on C{spId}."""
    from treq.client import HTTPClient

    headers = {"Last-Event-ID": str(lastEventId)} if lastEventId is not None else {}
    client = HTTPClient(array._agent)
    response = await client.get(
        array.url(spId, "/api/v1/events/stream"), auth=("monitor", array.passwords["monitor"]), headers=headers
    )
    assert response.code == 200, response.code
    assert response.headers.getRawHeaders("Content-Type")[0].startswith("text/event-stream")
    reader = _StreamReader()
    response.deliverBody(reader)
    return reader


class EventHistoryTests(ArrayTestMixin, TestCase):
    """Every SP serves the arbiter's history and its live stream."""

    timeout = 120

    async def test_historyAndStream(self) -> None:
        """
        A failover and a command run appear in the history of every SP, with
        growing ids; the stream delivers new events with C{id:} lines and
        resumes after C{Last-Event-ID} without a gap or a duplicate.
        """
        array = await self.startArray(spIds=("spa", "spb"), arbiter=True)
        await array.waitHolder("spb", "spa")
        reader = await openStream(array, "spb")
        ran = await array.request("spa", "POST", "/api/v1/sps/spa/commands/uptime", body={})
        self.assertEqual(ran.code, 200)
        await array.kill("spa")
        await array.waitHolder("spb", "spb")

        async def recorded() -> bool:
            events = (await array.request("spb", "GET", "/api/v1/events")).json()["events"]
            kinds = [e["kind"] for e in events]
            return "command" in kinds and any(
                e["kind"] == "grant" and e.get("to") == "spb" for e in events
            )

        await array.waitFor(recorded, 10.0, "the history to show the command and the failover", "spb")
        events = (await array.request("spb", "GET", "/api/v1/events")).json()["events"]
        ids = [e["id"] for e in events]
        self.assertEqual(ids, sorted(set(ids)))
        (move,) = [e for e in events if e["kind"] == "grant" and e.get("to") == "spb"]
        self.assertIn("connection lost", move["reason"])
        (command,) = [e for e in events if e["kind"] == "command"]
        self.assertEqual((command["sp"], command["command"], command["rc"]), ("spa", "uptime", 0))
        since = (await array.request("spb", "GET", f"/api/v1/events?since={ids[-2]}")).json()["events"]
        self.assertEqual([e["id"] for e in since], [ids[-1]])

        async def streamed() -> bool:
            return ids[-1] in reader.ids()

        await array.waitFor(streamed, 10.0, "the stream to deliver the failover", "spb")
        await reader.close()
        self.assertEqual(reader.ids(), sorted(set(reader.ids())))
        self.assertEqual(reader.ids(), [i for i in ids if i in reader.ids()])

        # Resume from the middle: exactly the events after it.
        middle = ids[len(ids) // 2]
        resumed = await openStream(array, "spb", lastEventId=middle)

        async def caughtUp() -> bool:
            return bool(resumed.ids()) and resumed.ids()[-1] >= ids[-1]

        await array.waitFor(caughtUp, 10.0, "the resumed stream to catch up", "spb")
        await resumed.close()
        self.assertEqual(resumed.ids()[: len([i for i in ids if i > middle])], [i for i in ids if i > middle])
        self.assertNotIn(middle, resumed.ids())

        # A restarted SP catches up with the history by id.
        await array.restart("spa")

        async def spaCaughtUp() -> bool:
            history = (await array.request("spa", "GET", "/api/v1/events")).json()["events"]
            return ids[-1] in [e["id"] for e in history]

        await array.waitFor(spaCaughtUp, 10.0, "spa to catch up with the history", "spa")
        self.assertIn(b'"kind"', json.dumps(events).encode())


class HistoryAcrossFaultsTests(ArrayTestMixin, TestCase):
    """
    With a history of 8 events (the arbiter compacts every 8), one client
    stream through the proxy gets every id exactly once, in order, across
    an SP's SIGKILL, its restart and catch-up, a resume on it by
    switchover, an arbiter restart (the stream stays open) and a proxy
    restart resumed by C{Last-Event-ID}; the arbiter's file and every SP's
    copy hold their last ids with no hole.
    """

    timeout = 180

    async def test_everyIdOnceAcrossCompactionsAndRestarts(self) -> None:
        array = await self.startArray(arbiter=True, extra="\n[events]\nhistory = 8\n")
        await array.waitHolder("proxy", "spa")
        streams = [await openStream(array, "proxy")]

        async def burst(spId: str, count: int) -> None:
            for _ in range(count):
                ran = await array.request("proxy", "POST", f"/api/v1/sps/{spId}/commands/uptime", body={})
                self.assertEqual(ran.code, 200, ran.body)

        async def lastRecorded() -> int:
            return int((await array.request("proxy", "GET", "/api/v1/events")).json()["last_id"])

        async def streamedUpTo(lastId: int) -> None:
            async def arrived() -> bool:
                ids = streams[-1].ids()
                return bool(ids) and ids[-1] >= lastId

            await array.waitFor(arrived, 15.0, f"the stream to deliver id {lastId}", "proxy")

        await burst("spa", 12)
        await array.kill("spa")  # the stream resumes on spb
        await array.waitHolder("proxy", "spb")
        await burst("spb", 12)
        await array.restart("spa")  # spa catches up after its restart
        await burst("spb", 6)
        moved = await array.request("proxy", "POST", "/api/v1/array/switchover", body={"to": "spa"})
        self.assertEqual(moved.code, 200, moved.body)
        await array.waitHolder("proxy", "spa")  # the stream resumes on the restarted spa
        await burst("spa", 12)
        beforeRestart = await lastRecorded()
        await streamedUpTo(beforeRestart)

        holder: list[str] = []

        async def active() -> bool:
            holder.clear()
            answer = await array.request("proxy", "GET", "/api/v1/array")
            if answer.code == 200 and answer.json()["state"] == "active":
                holder[:] = [answer.json()["token"]["holder"]]
            return bool(holder)

        await array.restart("arbiter")  # it starts again from its file; the stream stays open
        await array.waitFor(active, 15.0, "an SP to hold the token again", "proxy")
        await burst(holder[0], 12)
        afterArbiter = await lastRecorded()
        self.assertGreater(afterArbiter, beforeRestart + 12)
        await streamedUpTo(afterArbiter)
        self.assertFalse(streams[0].ended.called)

        await array.restart("proxy")  # the client's stream ends; it resumes with Last-Event-ID
        await streams[0].ended
        await array.waitFor(active, 15.0, "the proxy to route again", "proxy")
        streams.append(await openStream(array, "proxy", lastEventId=streams[0].ids()[-1]))
        await burst(holder[0], 6)
        final = await lastRecorded()
        await streamedUpTo(final)
        await streams[-1].close()

        received = streams[0].ids() + streams[1].ids()
        self.assertNotIn(b"event: gap", streams[0].data + streams[1].data)
        self.assertEqual(received, list(range(received[0], received[-1] + 1)))
        self.assertGreaterEqual(received[-1], final)
        self.assertGreater(final - received[0], 60)  # seven compactions at least

        # Events may still come (health, the stream's end): holes are what counts.
        onDisk = [
            json.loads(line)["id"]
            for line in array.path("var/state/arbiter/events.jsonl").read_text().splitlines()
        ]
        self.assertEqual(onDisk, list(range(onDisk[0], onDisk[-1] + 1)))
        self.assertGreaterEqual(onDisk[-1], final)
        self.assertLessEqual(len(onDisk), 16)
        for spId in ("spa", "spb"):  # spb, passive, may still be reconnecting

            async def caughtUp() -> bool:
                held = (await array.request(spId, "GET", "/api/v1/events")).json()["events"]
                return bool(held) and held[-1]["id"] >= final

            await array.waitFor(caughtUp, 15.0, f"{spId} to catch up with the restarted arbiter", spId)
            copy = [e["id"] for e in (await array.request(spId, "GET", "/api/v1/events")).json()["events"]]
            self.assertEqual(copy, list(range(copy[-1] - 7, copy[-1] + 1)), spId)
