# -*- test-case-name: tests.test_events -*-
"""
The event history: token moves, health changes, command runs.

The arbiter is its single writer (L{EventLog}: ids only grow, persisted as
JSON lines, bounded); every SP keeps a bounded copy (L{EventBuffer}) fed by
the arbiter and caught up by id after a reconnect, so any SP, active or
not, can serve the history and the event stream.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from twisted.logger import Logger

_log = Logger()

Event = dict[str, Any]


class EventBuffer:
    """
    The last C{size} events, in id order, with listeners for new ones.
    """

    def __init__(self, size: int = 1000) -> None:
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
        if not isinstance(event.get("id"), int) or event["id"] <= self.lastId:
            return False
        self._events.append(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.failure("event listener failed")
        return True

    def since(self, eventId: int, limit: int | None = None) -> list[Event]:
        """The events with an id above C{eventId}, oldest first."""
        found = [e for e in self._events if e["id"] > eventId]
        return found[:limit] if limit is not None else found

    def listen(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call C{listener(event)} for each new event; returns the way to stop."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None


class EventLog(EventBuffer):
    """
    The arbiter's history: appends each event to a JSON-lines file and
    starts, after a restart, from the ids already written.  The file is
    rewritten (atomically) to the last C{size} events when it grows to twice
    that.  Events are not fsynced one by one: losing the last few on a power
    cut is acceptable for a history, unlike for the epoch.
    """

    def __init__(self, path: Path, size: int = 1000, clock: Callable[[], float] = time.time) -> None:
        super().__init__(size)
        self._path = Path(path)
        self._size = size
        self._clock = clock
        self._lines = 0
        for event in self._read():
            super().add(event)
            self._lines += 1
        self._nextId = self.lastId + 1

    def _read(self) -> Iterable[Event]:
        try:
            lines = self._path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            _log.error("cannot read the event history {path}: {why}", path=str(self._path), why=str(e))
            return []
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash
            if isinstance(event, dict) and isinstance(event.get("id"), int):
                events.append(event)
        return sorted(events, key=lambda e: e["id"])

    def record(self, kind: str, data: dict[str, Any]) -> Event:
        """A new event of C{kind}, numbered, stored and announced."""
        event = {"id": self._nextId, "kind": kind, "time": self._clock(), **data}
        self._nextId += 1
        self._append(event)
        self.add(event)
        return event

    def _append(self, event: Event) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event, default=str) + "\n")
            self._lines += 1
            if self._lines >= 2 * self._size:
                self._compact()
        except OSError as e:
            _log.error("cannot write the event history {path}: {why}", path=str(self._path), why=str(e))

    def _compact(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        keep = self.since(0)
        tmp.write_text("".join(json.dumps(e, default=str) + "\n" for e in keep), encoding="utf-8")
        os.replace(tmp, self._path)
        self._lines = len(keep)
