# -*- test-case-name: tests.test_events -*-
"""
The event history: token moves, health changes, command runs.

The arbiter is its single writer (L{EventLog}: ids only grow, persisted as
JSON lines, bounded); every SP keeps a bounded copy (L{EventCopy}) fed by
the arbiter and caught up by id after a reconnect, so any SP, active or
not, can serve the history and the event stream.

Two rules keep every id in every copy once and in order: an event is kept
in memory and made durable before anyone hears of it, and a copy takes
pushed events only while it is known to be caught up.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from twisted.logger import Logger

from spmgmt.durable import appendDurably, replaceDurably

_log = Logger()

Event = dict[str, Any]

#: The most events one catch-up answer holds; a full page means "ask again".
#: Events are small (reported fields are bounded), so a page stays far
#: below the PB channel's message limit.
PAGE = 200

#: The default number of events the arbiter and every SP keep.
HISTORY = 1000


class EventHistoryError(Exception):
    """The history file exists but cannot be read; the message says why."""


class EventBuffer:
    """
    The last C{size} events, in id order, with listeners for new ones.
    """

    def __init__(self, size: int = HISTORY) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self._listeners: list[Callable[[Event], None]] = []

    @property
    def lastId(self) -> int:
        """The id of the newest event held, or 0."""
        return self._events[-1]["id"] if self._events else 0

    def add(self, event: Event) -> bool:
        """
        Keep C{event} if it is newer than everything held (duplicates and
        stragglers from a catch-up are dropped); tell the listeners.
        """
        if not self._keep(event):
            return False
        self._announce(event)
        return True

    def _keep(self, event: Event) -> bool:
        if not isinstance(event.get("id"), int) or event["id"] <= self.lastId:
            return False
        self._events.append(event)
        return True

    def _announce(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.failure("event listener failed")

    def since(self, eventId: int, limit: int | None = None) -> list[Event]:
        """The events with an id above C{eventId}, oldest first."""
        found = [e for e in self._events if e["id"] > eventId]
        return found[:limit] if limit is not None else found

    def listen(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call C{listener(event)} for each new event; returns the way to stop."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None


class EventCopy(EventBuffer):
    """
    An SP's copy of the arbiter's history.

    After each (re)connect the copy catches up by pages of L{PAGE}: a
    short page means it has everything the arbiter had recorded when it
    answered.  Until then pushed events are ignored rather than held: the
    arbiter pushes each event before it answers a later catch-up request on
    the same connection, so the last page holds every one of them, and a
    catch-up that fails can leave no event applied ahead of a missing one.

    @ivar catchingUp: a catch-up is under way (pushed events are ignored).
    """

    catchingUp = False

    def beginCatchUp(self) -> int:
        """A session started: ignore pushes; fetch the events after the id returned."""
        self.catchingUp = True
        return self.lastId

    def pushed(self, event: Event) -> None:
        """The arbiter announced C{event} on the current session."""
        if not self.catchingUp:
            self.add(event)

    def page(self, events: list[Event]) -> int | None:
        """
        One catch-up answer arrived: keep it; the id to fetch after next,
        or L{None} when caught up.
        """
        for event in sorted(events, key=lambda e: e["id"]):
            self.add(event)
        if len(events) >= PAGE:
            return self.lastId
        self.catchingUp = False
        return None


class EventLog(EventBuffer):
    """
    The arbiter's history: appends each event to a JSON-lines file and
    starts, after a restart, from the ids already written.  The file is
    rewritten (atomically) to the last C{size} events when it grows to twice
    that.  Each event is on disk (fdatasync) before it is announced, so an
    id an SP has seen is not issued again after a restart, unless its write
    failed (logged; the next good write rewrites the file) and the arbiter
    died before that.
    """

    def __init__(self, path: Path, size: int = HISTORY, clock: Callable[[], float] = time.time) -> None:
        super().__init__(size)
        self._path = Path(path)
        self._size = size
        self._clock = clock
        self._lines = 0
        self._unwritten = False  # the file lacks what memory holds: rewrite it
        #: Lines of the file that were not events (a torn last line aside).
        self.unreadable = 0
        for event in self._read():
            self._keep(event)
            self._lines += 1
        self._nextId = self.lastId + 1

    def _read(self) -> Iterable[Event]:
        """
        The events in the file, in id order.

        @raise EventHistoryError: it exists but cannot be read: starting
            empty would issue its ids again.
        """
        try:
            lines = self._path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or str(e)
            raise EventHistoryError(f"cannot read the event history {self._path}: {why}") from None
        events = []
        for number, line in enumerate(lines, 1):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and isinstance(event.get("id"), int) and not isinstance(event["id"], bool):
                events.append(event)
            elif number < len(lines):  # a torn last line is what a crash leaves
                self.unreadable += 1
            else:
                # The next append would continue the torn line and be lost
                # with it: the next write rewrites the file instead.
                self._unwritten = True
        return sorted(events, key=lambda e: e["id"])

    def record(self, kind: str, data: dict[str, Any]) -> Event:
        """
        A new event of C{kind}: numbered, kept (a compaction rewrites the
        file from memory, so the event must be there first), stored, and
        only then announced.
        """
        event = {"id": self._nextId, "kind": kind, "time": self._clock(), **data}
        self._nextId += 1
        self._keep(event)
        self._store(event)
        self._announce(event)
        return event

    def _store(self, event: Event) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if self._unwritten or self._lines + 1 >= 2 * self._size:
                self._compact()
            else:
                appendDurably(self._path, _line(event))
                self._lines += 1
        except OSError as e:
            # The history goes on in memory and on the SPs; the next write
            # that works rewrites the whole file from memory.
            self._unwritten = True
            _log.error("cannot write the event history {path}: {why}", path=str(self._path), why=str(e))

    def _compact(self) -> None:
        """Rewrite the file to the events held in memory (the newest included)."""
        keep = self.since(0)
        replaceDurably(self._path, b"".join(_line(e) for e in keep))
        self._lines = len(keep)
        self._unwritten = False


def _line(event: Event) -> bytes:
    return (json.dumps(event, default=str) + "\n").encode("utf-8")
