"""
Tests for the fault-injecting relay (L{spmgmt.testing.relay}): each mode over
memory transports and a clock, then the real thing on loopback with a tiny
echo server (flow control, nothing lost across a freeze, stop).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spmgmt.testing.relay import BLACKHOLE, FREEZE, PASS, REFUSE, RESET, Relay, delay


class _Memory:
    """A relay on a memory reactor, and a way to open connections through it."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.reactor = MemoryReactorClock()
        self.relay = Relay(self.reactor, ("127.0.0.1", 4321), name="test", monotonic=self.reactor.seconds)
        case.successResultOf(ensureDeferred(self.relay.listen(0)))
        self.factory = self.reactor.tcpServers[0][1]

    def accept(self) -> tuple[Any, StringTransport]:
        """A client connects to the relay: its relay-side protocol and transport."""
        client = self.factory.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        return client, transport

    def dialled(self) -> tuple[Any, StringTransport]:
        """The target accepts the relay's latest connection attempt."""
        host, port, factory = self.reactor.tcpClients[-1][:3]
        assert (host, port) == ("127.0.0.1", 4321)
        server = factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        return server, transport

    def connection(self) -> tuple[Any, StringTransport, Any, StringTransport]:
        return self.accept() + self.dialled()


class MemoryRelayTests(SynchronousTestCase):
    """Each mode, deterministically."""

    def setUp(self) -> None:
        self.m = _Memory(self)
        self.relay = self.m.relay

    def test_passBothWays(self) -> None:
        """In C{pass}, bytes go through both ways and are counted."""
        client, ct, server, st = self.m.connection()
        client.dataReceived(b"request")
        server.dataReceived(b"answer")
        self.assertEqual(st.value(), b"request")
        self.assertEqual(ct.value(), b"answer")
        self.assertEqual(self.relay.count(PASS).connections, 1)
        self.assertEqual(self.relay.count(PASS).bytes, len(b"requestanswer"))

    def test_earlyBytesWaitForTheTarget(self) -> None:
        """Bytes read before the target answers are written once it does."""
        client, ct = self.m.accept()
        client.dataReceived(b"hello")
        server, st = self.m.dialled()
        self.assertEqual(st.value(), b"hello")

    def test_closePropagates(self) -> None:
        """One side closing closes the other."""
        client, ct, server, st = self.m.connection()
        client.dataReceived(b"last words")
        client.connectionLost(None)
        self.assertEqual(st.value(), b"last words")
        self.assertTrue(st.disconnecting)
        server.connectionLost(None)
        self.assertEqual(self.relay._links, set())

    def test_freezeAndResume(self) -> None:
        """
        C{freeze} pauses both ends, forwards nothing and closes nothing;
        C{pass} delivers what was held, in order, and resumes reading.
        """
        client, ct, server, st = self.m.connection()
        client.dataReceived(b"a")
        self.relay.setMode(FREEZE)
        self.assertEqual((ct.producerState, st.producerState), ("paused", "paused"))
        client.dataReceived(b"b")  # already in flight when the freeze began
        server.dataReceived(b"z")
        self.assertEqual((st.value(), ct.value()), (b"a", b""))
        # A new connection is accepted, dialled, and frozen too.
        late, lt = self.m.accept()
        self.assertEqual(lt.producerState, "paused")
        lateServer, lst = self.m.dialled()
        late.dataReceived(b"late")
        self.assertEqual(lst.value(), b"")
        self.assertEqual(self.relay.count(FREEZE).connections, 2)
        self.relay.setMode(PASS)
        self.assertEqual((st.value(), ct.value()), (b"ab", b"z"))
        self.assertEqual(lst.value(), b"late")
        self.assertEqual(lt.producerState, "producing")
        self.assertEqual([mode for _, mode in self.relay.history], [FREEZE, PASS])

    def test_closeWaitsForTheThaw(self) -> None:
        """A close seen while frozen reaches the other side only after the thaw."""
        client, ct, server, st = self.m.connection()
        self.relay.setMode(FREEZE)
        client.dataReceived(b"bye")
        client.connectionLost(None)
        self.m.reactor.advance(60)
        self.assertEqual(st.value(), b"")
        self.assertFalse(st.disconnecting)
        self.relay.setMode(PASS)
        self.assertEqual(st.value(), b"bye")
        self.assertTrue(st.disconnecting)

    def test_refuse(self) -> None:
        """C{refuse} closes new connections at once and leaves existing ones alone."""
        client, ct, server, st = self.m.connection()
        self.relay.setMode(REFUSE)
        refused, rt = self.m.accept()
        self.assertTrue(rt.disconnecting)
        self.assertEqual(len(self.m.reactor.tcpClients), 1)  # never dialled
        client.dataReceived(b"still")
        self.assertEqual(st.value(), b"still")
        self.assertEqual(self.relay.count(REFUSE).connections, 1)

    def test_blackhole(self) -> None:
        """C{blackhole} accepts, never dials, never forwards, never closes."""
        self.relay.setMode(BLACKHOLE)
        client, ct = self.m.accept()
        client.dataReceived(b"into the void")
        self.assertEqual(self.m.reactor.tcpClients, [])
        self.assertFalse(ct.disconnecting)
        self.m.reactor.advance(3600)
        self.assertFalse(ct.disconnecting)
        self.assertEqual(self.relay.count(BLACKHOLE).connections, 1)
        self.assertEqual(self.relay.count(BLACKHOLE).bytes, len(b"into the void"))
        # It stays a black hole after the relay passes again.
        self.relay.setMode(PASS)
        client.dataReceived(b"more")
        self.assertEqual(self.m.reactor.tcpClients, [])

    def test_delay(self) -> None:
        """C{delay} forwards each chunk that late, in order, also across a switch back to C{pass}."""
        client, ct, server, st = self.m.connection()
        self.relay.setMode(delay(0.5))
        client.dataReceived(b"1")
        self.m.reactor.advance(0.3)
        client.dataReceived(b"2")
        self.m.reactor.advance(0.19)
        self.assertEqual(st.value(), b"")
        self.m.reactor.advance(0.02)
        self.assertEqual(st.value(), b"1")
        self.relay.setMode(PASS)
        client.dataReceived(b"3")  # due now, but queued behind "2"
        self.assertEqual(st.value(), b"1")
        self.m.reactor.advance(0.3)
        self.assertEqual(st.value(), b"123")
        self.assertEqual(self.relay.count("delay").connections, 1)
        self.assertEqual(self.relay.count("delay").bytes, 2)
        self.assertEqual(self.relay.history[0][1], "delay(0.5)")
        self.assertEqual(self.m.reactor.getDelayedCalls(), [])

    def test_reset(self) -> None:
        """C{reset} aborts every current connection; the mode stays."""
        first = self.m.connection()
        second = self.m.connection()
        self.relay.setMode(RESET)
        for transport in (first[1], first[3], second[1], second[3]):
            self.assertTrue(transport.disconnected)
        self.assertEqual(self.relay.mode, PASS)
        self.assertEqual(self.relay.count(RESET).connections, 2)
        # A new connection passes.
        client, ct, server, st = self.m.connection()
        client.dataReceived(b"again")
        self.assertEqual(st.value(), b"again")

    def test_targetRefuses(self) -> None:
        """A target that cannot be reached aborts the client."""
        client, ct = self.m.accept()
        factory = self.m.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(None, ConnectionRefusedError())
        self.assertTrue(ct.disconnected)
        client.connectionLost(None)
        self.assertEqual(self.relay._links, set())

    def test_history(self) -> None:
        """Every change is recorded with its (monotonic) time."""
        self.m.reactor.advance(10)
        self.relay.setMode(FREEZE)
        self.m.reactor.advance(1)
        self.relay.setMode(RESET)
        self.assertEqual(self.relay.history, [(10.0, FREEZE), (11.0, RESET)])
        self.assertEqual(self.relay.mode, FREEZE)

    def test_unknownMode(self) -> None:
        """An unknown mode is refused and not recorded."""
        self.assertRaises(ValueError, self.relay.setMode, "teleport")
        self.assertRaises(ValueError, delay, -1)
        self.assertEqual(self.relay.history, [])


class _Echo(Protocol):
    def connectionMade(self) -> None:
        self.factory.live.append(self)  # type: ignore[attr-defined]
        self.gone: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(None)


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.gone: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(None)


class LoopbackRelayTests(TestCase):
    """The relay with real sockets on 127.0.0.1 and an echo server."""

    timeout = 20

    async def setUp(self) -> None:  # type: ignore[override]
        from twisted.internet import reactor

        self.reactor = reactor
        echo = Factory.forProtocol(_Echo)
        echo.live = []  # type: ignore[attr-defined]
        self.echo = echo
        port = reactor.listenTCP(0, echo, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.relay = Relay(reactor, ("127.0.0.1", port.getHost().port))
        self.port = await self.relay.listen()
        self.addCleanup(lambda: DeferredList([p.gone for p in echo.live]))
        self.addCleanup(self.relay.stop)

    async def connect(self) -> _Collect:
        proto = _Collect()
        await connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port), proto)
        self.addCleanup(lambda: proto.gone)
        self.addCleanup(proto.transport.abortConnection)
        return proto

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        for _ in range(int(timeout / 0.01)):
            if predicate():
                return
            await deferLater(self.reactor, 0.01, lambda: None)
        self.fail("condition not reached in time")

    async def test_freezeHoldsNothingAndLosesNothing(self) -> None:
        """
        4 MiB sent while frozen: nothing arrives, the relay holds almost
        nothing itself (TCP flow control holds the rest), and all of it
        comes back, in order, once the relay passes again.
        """
        proto = await self.connect()
        proto.transport.write(b"ping")
        await self.until(lambda: bytes(proto.data) == b"ping")
        self.relay.setMode(FREEZE)
        payload = bytes(range(256)) * (4 * 4096)
        proto.transport.write(payload)
        await deferLater(self.reactor, 0.3, lambda: None)
        self.assertEqual(bytes(proto.data), b"ping")
        held = sum(side.queued for link in self.relay._links for side in link.sides())
        self.assertLess(held, 1 << 20)
        self.relay.setMode(PASS)
        await self.until(lambda: len(proto.data) == 4 + len(payload))
        self.assertEqual(bytes(proto.data), b"ping" + payload)
        self.assertEqual(self.relay.count(FREEZE).connections, 1)

    async def test_refuseAndReset(self) -> None:
        """Refused connections close; a reset closes the established one."""
        kept = await self.connect()
        self.relay.setMode(REFUSE)
        refused = await self.connect()
        await refused.gone
        kept.transport.write(b"still here")
        await self.until(lambda: bytes(kept.data) == b"still here")
        self.relay.setMode(RESET)
        await kept.gone
        self.assertEqual(self.relay.count(RESET).connections, 1)

    async def test_stop(self) -> None:
        """C{stop} closes connections and the listening port."""
        proto = await self.connect()
        await self.relay.stop()
        await proto.gone
        with self.assertRaises(ConnectionRefusedError):
            await self.connect()
