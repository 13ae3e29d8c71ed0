# -*- test-case-name: tests.test_relay -*-
"""
A fault-injecting TCP relay for tests (RELIABILITY.md section 2.3): it
listens on 127.0.0.1, dials one target for every connection it accepts and
copies bytes both ways, and a test switches it between modes to break the
link the way a network would:

  - C{pass}: forward both ways.
  - C{refuse}: close new connections at once; existing ones are untouched.
  - C{blackhole}: accept new connections, never forward, never close;
    existing ones are untouched (set C{freeze} first, or C{reset}, to cut
    them too).
  - C{freeze}: existing and new connections stay open but nothing moves
    either way (the network twin of SIGSTOP); both ends stop being read, so
    TCP flow control, not the relay, holds what the peers keep sending.
  - C{delay(seconds)}: every chunk is forwarded C{seconds} after it was
    read, in order.
  - C{reset}: an action, not a state: abort every current connection now;
    the mode stays what it was.

C{pass}, C{freeze} and C{delay} apply to existing connections too.  Every
mode change is logged (L{Relay.history} and C{twisted.logger}), and
L{Relay.counts} says how many connections and bytes each mode touched, so a
test can check that its fault hit something.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Union

from attrs import define, frozen
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger

_log = Logger()

PASS, REFUSE, BLACKHOLE, FREEZE, DELAY, RESET = "pass", "refuse", "blackhole", "freeze", "delay", "reset"

#: Bytes a direction may hold (under C{delay}) before its source is paused.
HIGH_WATER = 1 << 20


@frozen
class Delay:
    """The C{delay(seconds)} mode."""

    seconds: float

    def __str__(self) -> str:
        return f"delay({self.seconds:g})"


def delay(seconds: float) -> Delay:
    """The mode that forwards every chunk C{seconds} late."""
    if seconds < 0:
        raise ValueError("a delay cannot be negative")
    return Delay(seconds)


Mode = Union[str, Delay]


@define
class Count:
    """
    How many connections a mode was applied to (accepted, switched or reset
    under it) and how many bytes were read under it.
    """

    connections: int = 0
    bytes: int = 0


class _Side(Protocol):
    """One end of a relayed connection: the accepted client or the dialled target."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.peer: _Side | None = None
        self.queue: deque[tuple[float, bytes]] = deque()  # read here, due for the peer
        self.queued = 0
        self.call: Any = None
        self.paused = False
        self.ended = False
        self.gone: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self is self.link.client:
            self.link.relay._accepted(self.link)
        else:
            self.peer, self.link.client.peer = self.link.client, self
            self.link.client.pump()
        self.pump()

    def dataReceived(self, data: bytes) -> None:
        link = self.link
        link.relay._touch(link.mode, 0, len(data))
        if link.mode == BLACKHOLE:
            return
        self.queue.append((link.relay._reactor.seconds() + link.delay, data))
        self.queued += len(data)
        self.pump()

    def connectionLost(self, reason: Any = None) -> None:
        self.ended = True
        self.pump()
        self.link.relay._maybeForget(self.link)
        self.gone.callback(None)

    def pump(self) -> None:
        """Write to the peer what is due, then pause or resume reading here."""
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        peer = self.peer
        if self.link.dead or (peer is not None and peer.ended):
            self.queue.clear()
            self.queued = 0
            return
        if self.link.mode != FREEZE and peer is not None and peer.transport is not None:
            reactor = self.link.relay._reactor
            now = reactor.seconds()
            while self.queue and self.queue[0][0] <= now:
                chunk = self.queue.popleft()[1]
                self.queued -= len(chunk)
                peer.transport.write(chunk)
            if self.queue:
                self.call = reactor.callLater(self.queue[0][0] - now, self.pump)
            elif self.ended:
                peer.transport.loseConnection()
        hold = self.link.mode == FREEZE or self.queued > HIGH_WATER
        if hold != self.paused and not self.ended and self.transport is not None:
            self.paused = hold
            (self.transport.pauseProducing if hold else self.transport.resumeProducing)()


class _Link:
    """One relayed connection: its two sides and the mode it follows."""

    def __init__(self, relay: Relay, mode: str, delay: float) -> None:
        self.relay = relay
        self.mode = mode
        self.delay = delay
        self.dead = False
        self.connector: Any = None
        self.client = _Side(self)
        self.server: _Side | None = None

    def sides(self) -> list[_Side]:
        return [side for side in (self.client, self.server) if side is not None]

    def abort(self) -> None:
        self.dead = True
        if self.server is None and self.connector is not None:
            self.connector.stopConnecting()
        for side in self.sides():
            side.pump()  # drops the queue, cancels the timer
            if not side.ended and side.transport is not None:
                side.transport.abortConnection()


class _TargetFactory(ClientFactory):
    def __init__(self, link: _Link) -> None:
        self._link = link

    def buildProtocol(self, addr: Any) -> _Side:
        self._link.server = _Side(self._link)
        return self._link.server

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self._link.connector = None
        self._link.abort()
        self._link.relay._maybeForget(self._link)


class Relay:
    """
    A TCP relay from a port on 127.0.0.1 to C{target}, in one mode at a time.

    @ivar mode: the current mode (a name, or a L{Delay}).
    @ivar history: C{(monotonic time, mode)} for every mode change, oldest first.
    @ivar counts: per mode name (C{delay} for every delay), a L{Count}.
    """

    def __init__(
        self,
        reactor: Any,
        target: tuple[str, int],
        name: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reactor = reactor
        self.target = target
        self.name = name or f"relay to {target[0]}:{target[1]}"
        self._monotonic = monotonic
        self.mode: Mode = PASS
        self.history: list[tuple[float, str]] = []
        self.counts: dict[str, Count] = {}
        self._links: set[_Link] = set()
        self._port: Any = None

    async def listen(self, port: int = 0) -> int:
        """Listen on 127.0.0.1:C{port} (0: any free port); the port."""
        self._port = self._reactor.listenTCP(port, Factory.forProtocol(self._newLink), interface="127.0.0.1")
        return int(self._port.getHost().port)

    def count(self, mode: str) -> Count:
        """What C{mode} touched so far."""
        return self.counts.get(mode, Count())

    def setMode(self, mode: Mode) -> None:
        """Switch to C{mode}: a name from the module docstring, or L{delay}C{(s)}."""
        if not isinstance(mode, Delay) and mode not in (PASS, REFUSE, BLACKHOLE, FREEZE, RESET):
            raise ValueError(f"unknown relay mode {mode!r}")
        self.history.append((self._monotonic(), str(mode)))
        _log.info("{relay}: mode {mode}", relay=self.name, mode=str(mode))
        if mode == RESET:
            for link in list(self._links):
                self._touch(RESET, 1, 0)
                link.abort()
            return
        self.mode = mode
        if mode in (REFUSE, BLACKHOLE):
            return
        kind, seconds = (DELAY, mode.seconds) if isinstance(mode, Delay) else (str(mode), 0.0)
        for link in self._links:
            if link.mode in (PASS, DELAY, FREEZE):
                link.mode, link.delay = kind, seconds
                self._touch(kind, 1, 0)
                for side in link.sides():
                    side.pump()

    def stop(self) -> Deferred[None]:
        """Stop listening and abort every connection; fires once all are gone."""
        waiting: list[Deferred[Any]] = []
        if self._port is not None:
            waiting.append(maybeDeferred(self._port.stopListening))
            self._port = None
        for link in list(self._links):
            link.abort()
            waiting += [side.gone for side in link.sides() if not side.gone.called]
        return DeferredList(waiting).addCallback(lambda _: None)

    # -- internals ---------------------------------------------------------------

    def _newLink(self) -> _Side:
        mode = self.mode
        link = _Link(self, DELAY if isinstance(mode, Delay) else mode, getattr(mode, "seconds", 0.0))
        self._links.add(link)
        return link.client

    def _accepted(self, link: _Link) -> None:
        self._touch(link.mode, 1, 0)
        if link.mode == REFUSE:
            link.dead = True
            link.client.transport.loseConnection()
        elif link.mode != BLACKHOLE:
            host, port = self.target
            link.connector = self._reactor.connectTCP(host, port, _TargetFactory(link), timeout=5)

    def _maybeForget(self, link: _Link) -> None:
        """Forget C{link} once every side ended and no dial is pending."""
        dialling = link.server is None and link.connector is not None and not link.dead
        if all(side.ended for side in link.sides()) and not dialling:
            self._links.discard(link)

    def _touch(self, mode: str, connections: int, nbytes: int) -> None:
        count = self.counts.setdefault(mode, Count())
        count.connections += connections
        count.bytes += nbytes
