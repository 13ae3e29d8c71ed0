# -*- test-case-name: tests.test_proxy_frontend -*-
"""
Limits of an HTTP server facing untrusted clients (RELIABILITY H5-H7, H10,
F22), for Twisted's L{HTTPChannel} and L{Site}:

  - L{GuardedChannel}: a deadline for reading one whole request once its
    first byte arrived (slowloris, bare-LF requests that are never parsed)
    and for finishing the TLS handshake; then 408 and close.  An idle
    keep-alive connection (no request started) is left to the idle timeout.
  - L{ConnectionCap}: at most so many connections; the next is closed at
    once, and those already open are untouched.
  - L{refuseRaw}: answer a request with a problem and close, without
    reading the rest of it (a body too large, a read deadline).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.interfaces import IHandshakeListener, INegotiated
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.http import HTTPChannel, RESPONSES
from zope.interface import implementer

from spmgmt.problem import CONTENT_TYPE, Problem

_log = Logger()


def refuseRaw(channel: Any, problem: Problem, extra: dict[bytes, bytes] | None = None) -> None:
    """
    Write C{problem} as a whole response straight to C{channel}'s transport
    and close: nothing more of the request is read or parsed.
    """
    body = json.dumps(problem.asJSON()).encode("utf-8")
    reason = RESPONSES.get(problem.status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (problem.status, reason),
        b"Content-Type: " + CONTENT_TYPE,
        b"Connection: close",
        b"Content-Length: %d" % (len(body),),
    ]
    lines += [name + b": " + value for name, value in (extra or {}).items()]
    channel.dataReceived = lambda data: None
    channel.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    channel.transport.loseConnection()


@implementer(IHandshakeListener)
class GuardedChannel(HTTPChannel):
    """
    An L{HTTPChannel} with a deadline on reading each request.

    @ivar readTimeout: seconds from a request's first byte (or a TLS
        connection's start) until the request is fully read.
    @ivar onRefused: called with the reason when a deadline closes the
        connection (for metrics).
    """

    readTimeout: float = 10.0
    onRefused: Callable[[str], None] = staticmethod(lambda why: None)
    _readCall: Any = None
    _handshaking = False

    def connectionMade(self) -> None:
        super().connectionMade()
        if INegotiated.providedBy(self.transport):
            self._handshaking = True
            self._armRead()

    def handshakeCompleted(self) -> None:
        self._handshaking = False
        self._disarmRead()

    def dataReceived(self, data: bytes) -> None:
        # _handlingRequest: a response is being made; bytes that arrive now
        # are the next (pipelined) request, timed when it is parsed.
        if self._readCall is None and not self._handlingRequest and data:
            self._armRead()
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._disarmRead()
        super().allContentReceived()

    def connectionLost(self, reason: Any) -> None:
        self._disarmRead()
        super().connectionLost(reason)

    def _armRead(self) -> None:
        self._readCall = self.callLater(self.readTimeout, self._readTimedOut)

    def _disarmRead(self) -> None:
        if self._readCall is not None and self._readCall.active():
            self._readCall.cancel()
        self._readCall = None

    def _readTimedOut(self) -> None:
        self._readCall = None
        if self._handshaking:
            self.onRefused("handshake timeout")
            self.transport.abortConnection()
            return
        self.onRefused("read timeout")
        refuseRaw(self, Problem(408, f"The request was not received within {self.readTimeout:g} s."))


class ConnectionCap(WrappingFactory):
    """
    At most C{limit} connections through C{wrappedFactory}; one more is
    closed as soon as it is accepted (building no protocol for it).
    """

    def __init__(self, wrappedFactory: Any, limit: int, onRefused: Callable[[], None] = lambda: None) -> None:
        super().__init__(wrappedFactory)
        self.limit = limit
        self._onRefused = onRefused

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.limit:
            self._onRefused()
            return None
        return super().buildProtocol(addr)
