# -*- test-case-name: tests.test_proxy_frontend -*-
"""
Limits of an HTTP server facing untrusted clients (RELIABILITY H5-H7, H10,
F22), for Twisted's L{HTTPChannel} and L{Site}:

  - L{GuardedChannel}: a deadline for reading one whole request once its
    first byte arrived (slowloris, bare-LF requests that are never parsed)
    and for finishing the TLS handshake; then 408 and close.  An idle
    keep-alive connection (no request started) is left to the idle timeout.
    A refused connection gets the same deadline to close (a TLS peer that
    never answers our close alert is cut off), and a C{Transfer-Encoding}
    other than C{chunked} is refused (H1).
  - L{ConnectionCap}: at most so many connections; the next is closed at
    once, and those already open are untouched.
  - L{refuseRaw}: answer a request with a problem and close, without
    reading the rest of it (a body too large, a read deadline).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from twisted.internet.interfaces import IHandshakeListener, INegotiated
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.http import HTTPChannel, datetimeToLogString
from twisted.web.server import Request, Site
from zope.interface import implementer

from spmgmt.problem import CONTENT_TYPE, Problem, reasonPhrase

_log = Logger()

#: A request target: visible ASCII only (RFC 9112 section 3.2).
_TARGET = re.compile(rb"[\x21-\x7e]+")


def refuseRaw(channel: Any, problem: Problem, extra: dict[bytes, bytes] | None = None) -> None:
    """
    Write C{problem} as a whole response straight to C{channel}'s transport
    and close: nothing more of the request is read or parsed.
    """
    body = json.dumps(problem.asJSON()).encode("utf-8")
    reason = reasonPhrase(problem.status) or b"Error"
    lines = [
        b"HTTP/1.1 %d %s" % (problem.status, reason),
        b"Content-Type: " + CONTENT_TYPE,
        b"Connection: close",
        b"Content-Length: %d" % (len(body),),
    ]
    lines += [name + b": " + value for name, value in (extra or {}).items()]
    channel.dataReceived = lambda data: None
    channel.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    refused = getattr(channel, "refused", None)
    if refused is not None:
        refused()
    if isinstance(channel, HTTPChannel):
        # Not transport.loseConnection(): the channel is the transport's
        # producer, and TLS does not close (not even send its close alert)
        # while a producer is registered, so the connection would stay open,
        # its bytes read and dropped, until the idle timeout.
        channel.loseConnection()
    else:
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
    #: No more requests are read: the connection is being closed.
    _closing = False
    #: Answered with L{refuseRaw}: nothing more is processed.
    _refused = False
    _idleTimeout: float | None = None

    #: Counts this connection's TLS handshake while it is in progress.
    throttle: "HandshakeThrottle | None" = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._idleTimeout = self.timeOut
        if INegotiated.providedBy(self.transport):
            self._handshaking = True
            if self.throttle is not None:
                self.throttle.started()
            self._armRead()

    def _handshakeEnded(self) -> None:
        if self._handshaking:
            self._handshaking = False
            if self.throttle is not None:
                self.throttle.finished()

    def handshakeCompleted(self) -> None:
        self._handshakeEnded()
        if not self._closing:
            self._disarmRead()

    def dataReceived(self, data: bytes) -> None:
        # _handlingRequest: a response is being made; bytes that arrive now
        # are the next (pipelined) request, timed when it is parsed.
        if self._readCall is None and not self._handlingRequest and not self._closing and data:
            self._armRead()
        super().dataReceived(data)
        # A request answered at once (while the bytes above were parsed) was
        # followed by the start of another in the same bytes: that one is
        # timed from now, or it would wait for the idle timeout.
        if (
            self._readCall is None
            and not self._handlingRequest
            and not self._closing
            and (self.requests or self._buffer)
        ):
            self._armRead()

    def headerReceived(self, line: bytes) -> bool:
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"transfer-encoding" and value.strip(b" \t").lower() != b"chunked":
            # Twisted ignores "identity", so the body would be read as the
            # next request: a front end that honours it would disagree (H1).
            refuseRaw(self, Problem(400, "Transfer-Encoding must be chunked."))
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        if not _TARGET.fullmatch(self._path):
            # Twisted's parser lets through 0x7F-0xB0 (it compares with 176,
            # meaning octal 0176); its client then refuses such a target
            # with a ValueError (H11).
            self.requests[-1].gotLength(0)
            refuseRaw(self, Problem(400, "The request target must be visible ASCII (RFC 9112 3.2)."))
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self._refused:
            return  # answered already: the request is not processed
        if not self._closing:  # else the deadline bounds the close
            self._disarmRead()
        super().allContentReceived()

    def loseConnection(self) -> None:
        self._closing = True
        # The idle timeout is off while a request is handled; a TLS peer
        # that never answers our close alert would keep the connection.
        if self.timeOut is None and self._idleTimeout:
            self.setTimeout(self._idleTimeout)
        super().loseConnection()

    def refused(self) -> None:
        """
        We answered with a refusal and close (L{refuseRaw}): the peer has
        C{readTimeout} to let the connection close, then it is cut off.
        """
        self._refused = self._closing = True
        self._disarmRead()
        self._armRead()

    def timeoutConnection(self) -> None:
        if self._closing:
            self.transport.abortConnection()
            return
        super().timeoutConnection()

    def connectionLost(self, reason: Any) -> None:
        self._handshakeEnded()
        self._closing = True
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
        if self._closing or self.transport.disconnecting:
            # Already answered (a refusal, or Twisted's own 400) and closing.
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


class BoundedRequest(Request):
    """
    A request whose body may be at most L{maxBody} bytes: a larger one is
    answered 413 at once and the connection closed, before (or while) the
    body arrives.  Waiting for, and storing, a body that will be refused
    anyway is what an attacker wants (H6).
    """

    _tooLarge = False
    _bodyBytes = 0

    def maxBody(self) -> int:
        raise NotImplementedError

    def refusedBody(self) -> dict[bytes, bytes]:
        """Note the refusal (metrics); extra headers for the 413."""
        return {}

    def gotLength(self, length: int | None) -> None:
        self._bodyBytes = 0
        if length is not None and length > self.maxBody():
            # Twisted reads on after this method: give it an empty body to
            # write into, then refuse.
            super().gotLength(0)
            self._refuseBody()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._tooLarge:
            return
        self._bodyBytes += len(data)
        if self._bodyBytes > self.maxBody():
            self._refuseBody()
            return
        super().handleContentChunk(data)

    def _refuseBody(self) -> None:
        self._tooLarge = True
        # No "100 Continue" after the refusal.
        self.requestHeaders.removeHeader(b"expect")
        extra = self.refusedBody()
        refuseRaw(self.channel, Problem(413, f"The request body is larger than {self.maxBody()} bytes."), extra)


class HandshakeThrottle:
    """
    At most C{limit} TLS handshakes in progress at once: past it, the
    listening ports stop accepting (the kernel queues new connections in
    the listen backlog) until one finishes.

    A handshake costs the most CPU of anything a client can ask for, and
    the proxy's reactor also runs the arbiter: a burst of thousands of
    handshakes in one reactor turn would delay heartbeats past the miss
    window and move the token with no fault (RELIABILITY F22, G6).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inProgress = 0
        self._ports: list[Any] = []

    def watch(self, port: Any) -> None:
        """Pause and resume C{port} with the handshakes in progress."""
        self._ports.append(port)

    def started(self) -> None:
        self.inProgress += 1
        if self.inProgress == self.limit:
            for port in self._ports:
                port.stopReading()

    def finished(self) -> None:
        self.inProgress -= 1
        if self.inProgress == self.limit - 1:
            for port in self._ports:
                if port.connected:
                    port.startReading()


class GuardedSite(Site):
    """
    A site of L{GuardedChannel}s (HTTP/1.1 only) that never shows
    tracebacks, with a wall-clock access-log date.
    """

    protocol = GuardedChannel
    displayTracebacks = False

    def _updateLogDateTime(self) -> None:
        # The reactor may run on a monotonic clock (spmgmt.clock): the
        # access log's date must still be the wall-clock date.
        self._logDateTime = datetimeToLogString(time.time())
        self._logDateTimeCall = self.reactor.callLater(1, self._updateLogDateTime)
