# -*- test-case-name: tests.test_peer -*-
"""
What both ends of the peer channel share.

Only plain data crosses: every reply is C{{"ok": value}} or
C{{"error": {"kind": ..., "detail": ..., ...}}}, so expected failures never
depend on PB's failure copying and the caller can map each kind to an HTTP
answer.  Jelly is restricted to basic types; a broker drops a peer that
sends an oversized or too deeply nested message.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.policies import TimeoutMixin
from twisted.spread import jelly, pb

#: Bytes one message may take on the wire before the peer is dropped.
MAX_MESSAGE_BYTES = 1024 * 1024
#: Nesting depth of lists in one message before the peer is dropped.
MAX_DEPTH = 32
#: Serialized size of one reply; larger replies become an error.
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


class GuardedBroker(pb.Broker, TimeoutMixin):
    """
    A broker that bounds what a peer can make it hold: the bytes of one
    message, the nesting depth while decoding, and how long the connection
    may stay silent (keepalives arrive well within it).
    """

    idleTimeout: float | None = None
    _messageBytes = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.idleTimeout is not None:
            self.setTimeout(self.idleTimeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._messageBytes += len(data)
        if self._messageBytes > MAX_MESSAGE_BYTES:
            self._drop("message too large")
            return
        try:
            super().dataReceived(data)
        except RecursionError:
            self._drop("message nested too deeply")
            return
        if len(self.listStack) > MAX_DEPTH:
            self._drop("message nested too deeply")
            return
        if not self.listStack and not self.buffer:
            self._messageBytes = 0

    def timeoutConnection(self) -> None:
        self._drop("idle too long")

    def _drop(self, why: str) -> None:
        from twisted.logger import Logger

        Logger().warn("dropping peer connection: {why}", why=why)
        self.listStack = []
        self.buffer = b""
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)


def ok(value: Any) -> dict[str, Any]:
    """A successful reply."""
    return {"ok": value}


def error(kind: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A refused or failed call, as plain data."""
    return {"error": {"kind": kind, "detail": detail, **extra}}
