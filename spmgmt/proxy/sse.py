# -*- test-case-name: tests.test_proxy_sse -*-
"""
Server-sent events, cut into whole events (WHATWG HTML §9.2).

The proxy forwards an event stream one whole event at a time, so a backend
that dies in the middle of one never leaves half an event at the client,
and it knows the id of the last event it delivered: where the stream
resumes on the new active SP.
"""

from __future__ import annotations

import re

_BLANK_LINE = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE_END = re.compile(rb"\r\n|\n|\r")


class EventStreamTooLarge(Exception):
    """One event is larger than the splitter's limit."""


class EventSplitter:
    """
    Feed it stream bytes; it returns whole events (each with its blank
    line) and remembers the last id among them.

    @ivar lastId: the value of the last C{id:} field of an event returned,
        or L{None} before any.
    """

    def __init__(self, lastId: bytes | None = None, maxEvent: int = 1024 * 1024) -> None:
        self.lastId = lastId
        self._buffer = b""
        self._maxEvent = maxEvent

    def feed(self, data: bytes) -> list[bytes]:
        """
        The whole events completed by C{data}, in order.

        @raise EventStreamTooLarge: an event grows past the limit.
        """
        self._buffer += data
        events = []
        while True:
            match = _BLANK_LINE.search(self._buffer)
            if match is None:
                break
            event = self._buffer[: match.end()]
            self._buffer = self._buffer[match.end() :]
            self._noteId(event)
            events.append(event)
        if len(self._buffer) > self._maxEvent:
            raise EventStreamTooLarge(f"an event is larger than {self._maxEvent} bytes")
        return events

    def discardPartial(self) -> None:
        """The stream broke: forget the start of an event that will not end."""
        self._buffer = b""

    def _noteId(self, event: bytes) -> None:
        for line in _LINE_END.split(event):
            if line == b"id" or line.startswith(b"id:"):
                value = line[3:]
                if value.startswith(b" "):
                    value = value[1:]
                if b"\0" not in value:
                    self.lastId = value
