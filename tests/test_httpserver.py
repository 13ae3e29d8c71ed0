"""
Client-facing HTTP limits (L{spmgmt.httpserver}) on an injected clock and
memory transports.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from spmgmt.httpserver import ConnectionCap, GuardedChannel, HandshakeThrottle


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class GuardedChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        site = Site(_Hello(), reactor=self.clock, timeout=1000)
        site.protocol = GuardedChannel
        self.refused: list[str] = []
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.channel.readTimeout = 2.0
        self.channel.onRefused = self.refused.append
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_idleConnectionIsNotTimed(self) -> None:
        """No request started: only the idle timeout (1000 s here) applies."""
        self.clock.advance(100)
        self.assertFalse(self.transport.disconnecting)

    def test_slowRequestGets408(self) -> None:
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(1.9)
        self.channel.dataReceived(b"X-Drip: 1\r\n")  # dripping does not extend it
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertIn(b"application/problem+json", self.transport.value())
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.refused, ["read timeout"])

    def test_bareLFRequestGets408(self) -> None:
        """Never parsed (RELIABILITY H10): the deadline ends it."""
        self.channel.dataReceived(b"GET / HTTP/1.1\nHost: x\n\n")
        self.clock.advance(2.0)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))

    def test_wholeRequestsInTimeKeepTheConnection(self) -> None:
        for _ in range(3):
            self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.clock.advance(1.5)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(self.refused, [])
        self.clock.advance(100)
        self.assertFalse(self.transport.disconnecting)


class _Echo(Protocol):
    pass


class ConnectionCapTests(SynchronousTestCase):
    def test_beyondTheCapClosed(self) -> None:
        refused: list[None] = []
        cap = ConnectionCap(Factory.forProtocol(_Echo), 2, lambda: refused.append(None))
        address = IPv4Address("TCP", "127.0.0.1", 1)
        protocols = [cap.buildProtocol(address) for _ in range(2)]
        for p in protocols:
            p.makeConnection(StringTransport())
        self.assertIsNone(cap.buildProtocol(address))
        self.assertEqual(len(refused), 1)
        protocols[0].connectionLost(None)
        self.assertIsNotNone(cap.buildProtocol(address))


class _TLSLikeTransport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class _Port:
    def __init__(self) -> None:
        self.reading = True
        self.connected = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class HandshakeThrottleTests(SynchronousTestCase):
    def test_pausesAcceptingAtTheLimit(self) -> None:
        throttle = HandshakeThrottle(2)
        port = _Port()
        throttle.watch(port)
        throttle.started()
        self.assertTrue(port.reading)
        throttle.started()
        self.assertFalse(port.reading)
        throttle.finished()
        self.assertTrue(port.reading)
        throttle.finished()
        self.assertEqual(throttle.inProgress, 0)

    def test_channelCountsItsHandshake(self) -> None:
        """A TLS connection counts until its handshake ends, or it does."""
        from twisted.internet.interfaces import INegotiated
        from zope.interface import directlyProvides

        throttle = HandshakeThrottle(10)
        site = Site(_Hello(), reactor=Clock(), timeout=1000)
        site.protocol = GuardedChannel
        for ending in ("handshake", "lost"):
            channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
            channel.throttle = throttle
            transport = _TLSLikeTransport()
            directlyProvides(transport, INegotiated)
            channel.makeConnection(transport)
            self.assertEqual(throttle.inProgress, 1)
            if ending == "handshake":
                channel.handshakeCompleted()
            channel.connectionLost(None)
            self.assertEqual(throttle.inProgress, 0, ending)
