"""
Tests for the event history: L{spmgmt.events} on its own, and the history
and stream served by every SP of a real array.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spmgmt.events import EventBuffer, EventLog
from spmgmt.testing import ArrayHarness, ArrayTestMixin


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

    def test_bounded(self) -> None:
        """The file is compacted to the last C{size} events when it doubles."""
        log = EventLog(self.path, size=5)
        for i in range(12):
            log.record("x", {"n": i})
        lines = self.path.read_text().splitlines()
        self.assertLessEqual(len(lines), 10)
        self.assertEqual([e["id"] for e in log.since(0)], [8, 9, 10, 11, 12])
        self.assertEqual(EventLog(self.path, size=5).lastId, 12)


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
