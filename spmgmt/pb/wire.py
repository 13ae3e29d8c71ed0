# -*- test-case-name: tests.test_peer,tests.test_peer_security -*-
"""
What both ends of every PB channel share.

Only plain data crosses: every reply is C{{"ok": value}} or
C{{"error": {"kind": ..., "detail": ..., ...}}}, so expected failures never
depend on PB's failure copying and the caller can map each kind to an HTTP
answer.  Jelly is restricted to basic types; a broker drops a peer that
sends an oversized or too deeply nested message.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.policies import TimeoutMixin
from twisted.spread import banana, jelly, pb

#: Bytes one message may take on the wire before the peer is dropped.
MAX_MESSAGE_BYTES = 1024 * 1024
#: Nesting depth of lists in one message before the peer is dropped.
MAX_DEPTH = 32
#: Wire size of one reply; larger replies become an error.
MAX_REPLY_BYTES = 512 * 1024


def securityOptions() -> jelly.SecurityOptions:
    """
    Basic types only, plus PB's own failure copies so that an unexpected
    remote error arrives as an error rather than an InsecureJelly.
    """
    options = jelly.SecurityOptions()
    options.allowBasicTypes()
    # References to the other side's objects (the login challenger, the
    # avatar, the mind): PB itself needs them; cached/copied kinds stay out.
    options.allowTypes("remote", "local")
    options.allowInstancesOf(pb.CopyableFailure)
    return options


class _TooDeep(Exception):
    """Raised by L{_DepthLimitedStack} while banana decodes."""


class _DepthLimitedStack(list):  # type: ignore[type-arg]
    """
    Banana's stack of lists being decoded, refusing to grow past
    C{MAX_DEPTH}: the check must run inside the decoder, since one delivery
    can carry a whole message thousands of levels deep.
    """

    def append(self, item: Any) -> None:
        if len(self) >= MAX_DEPTH:
            raise _TooDeep()
        super().append(item)


#: Slice size for feeding banana, so the message-size count sees message
#: boundaries however the bytes were chunked.
_SLICE = 16 * 1024


class GuardedBroker(pb.Broker, TimeoutMixin):
    """
    A broker that bounds what a peer can make it hold: the bytes of one
    message, the nesting depth while decoding, and how long the connection
    may stay silent (keepalives arrive well within it).
    """

    idleTimeout: float | None = None
    _messageBytes = 0
    _dropped = False
    _completed = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listStack = _DepthLimitedStack()

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.idleTimeout is not None:
            self.setTimeout(self.idleTimeout)

    def dataReceived(self, data: bytes) -> None:
        if self._dropped:
            return
        self.resetTimeout()
        for start in range(0, len(data), _SLICE):
            piece = data[start : start + _SLICE]
            self._messageBytes += len(piece)
            if self._messageBytes > MAX_MESSAGE_BYTES:
                self._drop("message too large")
                return
            self._completed = False
            try:
                super().dataReceived(piece)
            except (_TooDeep, RecursionError):
                self._drop("message nested too deeply")
                return
            if self._dropped:
                return
            if not self.listStack and not self.buffer:
                self._messageBytes = 0
            elif self._completed:
                # A message ended inside this slice and the next began: its
                # bytes so far are at most this slice.
                self._messageBytes = len(piece)

    def callExpressionReceived(self, obj: Any) -> None:
        self._completed = True
        super().callExpressionReceived(obj)

    def timeoutConnection(self) -> None:
        self._drop("idle too long")

    def _drop(self, why: str) -> None:
        from twisted.logger import Logger

        Logger().warn("dropping peer connection: {why}", why=why)
        self._dropped = True
        self.listStack = _DepthLimitedStack()
        self.buffer = b""
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)


def wireSize(value: Any) -> int:
    """
    How many bytes C{value} takes on the peer channel, as jelly and banana
    encode it.

    @raise banana.BananaError: it cannot be sent at all.
    """
    return len(banana.encode(jelly.jelly(value)))


def ok(value: Any) -> dict[str, Any]:
    """A successful reply."""
    return {"ok": value}


def error(kind: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A refused or failed call, as plain data."""
    return {"error": {"kind": kind, "detail": detail, **extra}}
