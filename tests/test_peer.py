"""
Tests for the peer channel (L{spmgmt.pb}, L{spmgmt.sp.peers}, L{spmgmt.sp.peerserver}) and L{spmgmt.sp.refusals}, without sockets.

The realm and the secret checker are driven directly; the guarded broker is
fed hand-made banana bytes through a L{StringTransport}; PB logins over an
unverified connection go through L{twisted.test.iosim}; and L{PeerClient}
talks to a real L{PeerServerFactory} over real TLS (OpenSSL in memory,
joined by an iosim pump on a L{MemoryReactorClock}).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.spread import banana, jelly, pb
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from spmgmt.commands import CommandResult, InvalidParameters, UnknownCommand
from spmgmt.config import readPeerSecret
from spmgmt.pb.wire import (
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    MAX_REPLY_BYTES,
    GuardedBroker,
    securityOptions,
)
from spmgmt.pb.server import PeerSecretChecker, PeerServerFactory
from spmgmt.sp.agent import SERVICE, NotInServiceMode, RequiresActive, SPAgent, StaleEpoch
from spmgmt.sp.peers import PeerClient, PeerFailed, PeerRefused, PeerUnavailable
from spmgmt.sp.peerserver import PeerAvatar, PeerRealm, peerPortal
from spmgmt.sp.role import RoleState
from spmgmt.sp.refusals import problemFor, refusal
from spmgmt.testing import ArrayHarness
from spmgmt.tls import serverOptions, tlsServerFactory


@functools.cache
def sharedArray() -> ArrayHarness:
    """
    An array's configuration, PKI and secrets, written once per test process
    (nothing is started: the harness only writes files).
    """
    directory = Path(tempfile.mkdtemp(prefix="spmgmt-peer-tests-"))
    atexit.register(shutil.rmtree, directory, True)
    return ArrayHarness(MemoryReactorClock(), directory, spIds=("spa", "spb"))


def peerSecret() -> bytes:
    return readPeerSecret(sharedArray().config)


def loadCertificate(name: str) -> x509.Certificate:
    """The array certificate C{var/pki/NAME.pem}."""
    path = sharedArray().path(f"var/pki/{name}.pem")
    return x509.load_pem_x509_certificate(path.read_bytes())


class StubAgent(SPAgent):
    """
    A real agent whose processes are not started: C{_run} records the argv
    and answers with C{stdout} (once C{hold} fires, when it is set).
    """

    stdout = "ran\n"
    hold: Deferred[None] | None = None

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.ran: list[tuple[str, list[str]]] = []

    async def _run(self, command: Any, argv: list[str]) -> CommandResult:
        self.ran.append((command.name, argv))
        if self.hold is not None:
            await self.hold
        return CommandResult(
            name=command.name,
            argv=tuple(argv),
            rc=0,
            signal=None,
            stdout=self.stdout,
            stderr="",
            duration_s=0.0,
            timed_out=False,
            truncated=False,
        )


def makeAgent(reactor: Any = None, spId: str = "spa") -> StubAgent:
    config = sharedArray().config
    reactor = reactor if reactor is not None else Clock()
    return StubAgent(reactor, config, config.sp(spId), monotonic=reactor.seconds)


class FakeTLSTransport:
    """
    What L{spmgmt.tls.peerIdentity} reads from a TLS transport: the OpenSSL
    connection (for its verify mode) and the peer's certificate.
    """

    def __init__(self, certificate: x509.Certificate | None, verify: bool = True) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_verify(SSL.VERIFY_PEER if verify else SSL.VERIFY_NONE, lambda *args: True)
        self._connection = SSL.Connection(context, None)
        self._certificate = None if certificate is None else X509.from_cryptography(certificate)

    def getHandle(self) -> SSL.Connection:
        return self._connection

    def getPeerCertificate(self) -> X509 | None:
        return self._certificate


def mindOn(transport: object) -> SimpleNamespace:
    """A login mind (a remote reference) whose broker runs on C{transport}."""
    return SimpleNamespace(broker=SimpleNamespace(transport=transport))


def challengeResponse(username: object, secret: bytes) -> pb._PortalAuthChallenger:
    """The credentials PB's login builds from a client's response to a challenge."""
    challenge = pb.challenge()
    credentials = pb._PortalAuthChallenger(None, None, username, challenge)
    credentials.response = pb.respond(challenge, secret)
    return credentials


class PeerRealmTests(SynchronousTestCase):
    """L{PeerRealm} binds the verified certificate's name to the login name."""

    def setUp(self) -> None:
        self.agent = makeAgent()
        self.realm = PeerRealm(self.agent)

    def test_matchingCertificateGetsAvatar(self) -> None:
        """A login as C{spb} over a connection verified as C{spb} gets an avatar for spb."""
        mind = mindOn(FakeTLSTransport(loadCertificate("spb")))
        interface, avatar, logout = self.realm.requestAvatar(b"spb", mind, pb.IPerspective)
        self.assertIs(interface, pb.IPerspective)
        self.assertIsInstance(avatar, PeerAvatar)
        self.assertEqual(avatar.peer, "spb")
        self.assertEqual(avatar.perspective_ping(), {"ok": self.agent.summary()})
        self.assertIsNone(logout())

    def test_otherCertificateRefused(self) -> None:
        """A certificate naming anything but the login name is refused."""
        for cert, login in [("proxy", b"spb"), ("spa", b"spb"), ("spb", b"spa"), ("spb", b"spb ")]:
            mind = mindOn(FakeTLSTransport(loadCertificate(cert)))
            with self.assertRaises(UnauthorizedLogin, msg=(cert, login)):
                self.realm.requestAvatar(login, mind, pb.IPerspective)

    def test_noMindRefused(self) -> None:
        """Without a mind there is no connection to bind: refused."""
        with self.assertRaises(UnauthorizedLogin):
            self.realm.requestAvatar(b"spb", None, pb.IPerspective)
        with self.assertRaises(UnauthorizedLogin):
            self.realm.requestAvatar(b"spb", "not a reference", pb.IPerspective)

    def test_unverifiedConnectionRefused(self) -> None:
        """
        Plain TCP, a TLS connection that did not verify its peer, or one
        without a peer certificate: no identity, so refused.
        """
        for transport in [
            StringTransport(),
            FakeTLSTransport(loadCertificate("spb"), verify=False),
            FakeTLSTransport(None),
        ]:
            with self.assertRaises(UnauthorizedLogin, msg=transport):
                self.realm.requestAvatar(b"spb", mindOn(transport), pb.IPerspective)

    def test_onlyPerspectives(self) -> None:
        """Only PB perspectives are handed out."""
        mind = mindOn(FakeTLSTransport(loadCertificate("spb")))
        with self.assertRaises(NotImplementedError):
            self.realm.requestAvatar(b"spb", mind, pb.IPBRoot)


class PeerSecretCheckerTests(SynchronousTestCase):
    """L{PeerSecretChecker} accepts the known peer names with the peer secret."""

    def setUp(self) -> None:
        self.secret = peerSecret()
        self.checker = PeerSecretChecker({"spb"}, self.secret)

    def test_rightSecret(self) -> None:
        """A known name answering the challenge with the secret is that name."""
        credentials = challengeResponse(b"spb", self.secret)
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(credentials)), b"spb")

    def test_wrongSecret(self) -> None:
        """Any other secret is refused, including a prefix or the empty one."""
        for wrong in [b"wrong", self.secret[:-1], self.secret + b"x", b""]:
            credentials = challengeResponse(b"spb", wrong)
            self.failureResultOf(self.checker.requestAvatarId(credentials), UnauthorizedLogin)

    def test_unknownName(self) -> None:
        """
        Names that are not peers (including this SP's own, and the right name
        sent as text rather than bytes) are refused even with the secret.
        """
        for name in [b"spc", b"spa", b"proxy", b"", "spb", None, 7]:
            credentials = challengeResponse(name, self.secret)
            self.failureResultOf(self.checker.requestAvatarId(credentials), UnauthorizedLogin)

    def test_portal(self) -> None:
        """
        The portal needs both: the secret and a certificate for the login
        name.
        """
        portal = peerPortal(makeAgent(), {"spb"}, self.secret)
        good = mindOn(FakeTLSTransport(loadCertificate("spb")))
        _, avatar, _ = self.successResultOf(
            portal.login(challengeResponse(b"spb", self.secret), good, pb.IPerspective)
        )
        self.assertEqual(avatar.peer, "spb")
        self.failureResultOf(
            portal.login(challengeResponse(b"spb", b"wrong"), good, pb.IPerspective),
            UnauthorizedLogin,
        )
        proxy = mindOn(FakeTLSTransport(loadCertificate("proxy")))
        self.failureResultOf(
            portal.login(challengeResponse(b"spb", self.secret), proxy, pb.IPerspective),
            UnauthorizedLogin,
        )


def connectPB(
    clientFactory: pb.PBClientFactory, serverFactory: pb.PBServerFactory, clock: Clock | None = None
) -> tuple[pb.Broker, pb.Broker, iosim.IOPump]:
    """A PB client and server broker joined by an iosim pump (no TLS)."""
    return iosim.connectedServerAndClient(
        lambda: serverFactory.buildProtocol(None),
        lambda: clientFactory.buildProtocol(None),
        clock=clock,
    )


class PlainPBLoginTests(SynchronousTestCase):
    """
    Logins through the real PB machinery on a connection without TLS: the
    secret alone never suffices.
    """

    def setUp(self) -> None:
        self.secret = peerSecret()
        self.clock = Clock()
        self.patch(GuardedBroker, "callLater", lambda broker, delay, f: self.clock.callLater(delay, f))
        server = PeerServerFactory(peerPortal(makeAgent(), {"spb"}, self.secret), idleTimeout=30.0)
        self.client = pb.PBClientFactory(security=securityOptions())
        self.clientBroker, self.serverBroker, self.pump = connectPB(self.client, server, self.clock)

    def login(self, credentials: Any) -> Failure:
        d = self.client.login(credentials, client=pb.Referenceable())
        self.pump.flush()
        return self.failureResultOf(d)

    def test_rightSecretWithoutCertificate(self) -> None:
        """
        The right name and secret over a connection with no verified
        certificate: UnauthorizedLogin arrives as a remote failure and the
        connection stays up.
        """
        failure = self.login(UsernamePassword(b"spb", self.secret))
        self.assertTrue(failure.check(UnauthorizedLogin), failure)
        self.assertEqual(len(self.flushLoggedErrors(UnauthorizedLogin)), 1)
        self.assertFalse(self.pump.serverIO.disconnecting)

    def test_wrongSecret(self) -> None:
        """A wrong secret is refused the same way."""
        failure = self.login(UsernamePassword(b"spb", b"not the secret"))
        self.assertTrue(failure.check(UnauthorizedLogin), failure)
        self.assertEqual(len(self.flushLoggedErrors(UnauthorizedLogin)), 1)

    def test_anonymous(self) -> None:
        """Anonymous login is not offered."""
        failure = self.login(Anonymous())
        self.assertTrue(failure.check(UnhandledCredentials), failure)
        self.assertEqual(len(self.flushLoggedErrors(UnhandledCredentials)), 1)

    def test_serverKeepsNoTracebacks(self) -> None:
        """Failures the server sends carry no traceback."""
        failure = self.login(UsernamePassword(b"spb", self.secret))
        self.flushLoggedErrors(UnauthorizedLogin)
        self.assertEqual(failure.traceback, "Traceback unavailable\n")


class PeerAvatarTests(SynchronousTestCase):
    """What a logged-in peer may ask, and how each refusal comes back as data."""

    def setUp(self) -> None:
        self.agent = makeAgent()
        self.avatar = PeerAvatar(self.agent, "spb")

    def assertRefused(self, reply: Any, kind: str) -> dict[str, Any]:
        self.assertEqual(set(reply), {"error"}, reply)
        self.assertEqual(reply["error"]["kind"], kind, reply)
        self.assertIsInstance(reply["error"]["detail"], str)
        return reply["error"]

    def runCommand(self, *args: Any) -> Any:
        result = self.avatar.perspective_runCommand(*args)
        if isinstance(result, Deferred):
            return self.successResultOf(result)
        return result

    def test_pingSummaryHealth(self) -> None:
        """ping, summary and health answer C{{"ok": ...}} with this SP's state."""
        summary = {"id": "spa", "role": "passive", "epoch": None, "healthy": True, "web_server": "full"}
        self.assertEqual(self.avatar.perspective_ping(), {"ok": summary})
        self.assertEqual(self.avatar.perspective_summary(), {"ok": summary})
        health = self.avatar.perspective_health()
        self.assertEqual(health, {"ok": {"healthy": True, "checks": [], "sp": "spa", "web_server": "full"}})

    def test_status(self) -> None:
        """status answers the agent's status, its command's output included."""
        reply = self.successResultOf(self.avatar.perspective_status())
        self.assertEqual(reply["ok"]["sp"], "spa")
        self.assertEqual(reply["ok"]["status_command"]["stdout"], "ran\n")

    def test_runCommand(self) -> None:
        """A valid command runs and its result comes back as plain data."""
        reply = self.runCommand("echo", {"message": "hi"}, None)
        self.assertEqual(reply["ok"]["name"], "echo")
        self.assertEqual(reply["ok"]["rc"], 0)
        self.assertEqual(reply["ok"]["argv"], ["printf", "%s\\n", "hi"])
        self.assertEqual(self.agent.ran, [("echo", ["printf", "%s\\n", "hi"])])

    def test_badArgumentTypes(self) -> None:
        """Arguments of the wrong type are refused before anything is looked up."""
        for args in [
            (5, {}, None),
            (b"echo", {}, None),
            (None, {}, None),
            ("e" * 65, {}, None),
            (["echo"], {}, None),
            ("echo", {"message": "x"}, "3"),
            ("echo", {"message": "x"}, 1.5),
            ("echo", {"message": "x"}, True),
            ("echo", {"message": "x"}, [3]),
        ]:
            self.assertRefused(self.runCommand(*args), "bad_request")
        self.assertEqual(self.agent.ran, [])

    def test_unknownCommand(self) -> None:
        """An unknown command is named in the refusal."""
        error = self.assertRefused(self.runCommand("rm-rf", {}, None), "unknown_command")
        self.assertEqual(error["command"], "rm-rf")

    def test_invalidParameters(self) -> None:
        """Every problem with the parameters is listed."""
        error = self.assertRefused(
            self.runCommand("echo", {"message": 5, "extra": 1}, None), "invalid_parameters"
        )
        self.assertEqual(set(error["problems"]), {"message", "extra"})
        error = self.assertRefused(self.runCommand("echo", ["message"], None), "invalid_parameters")
        self.assertIn("(params)", error["problems"])

    def test_requiresActive(self) -> None:
        """A requires_active command on a passive SP is refused."""
        error = self.assertRefused(self.runCommand("failover-drill", {}, None), "requires_active")
        self.assertEqual(error["command"], "failover-drill")

    def test_staleEpoch(self) -> None:
        """An epoch older than the newest seen is refused, naming both."""
        self.agent.newestEpoch = 5
        error = self.assertRefused(self.runCommand("echo", {"message": "x"}, 3), "stale_epoch")
        self.assertEqual((error["epoch"], error["newest"]), (3, 5))
        self.assertEqual(self.runCommand("echo", {"message": "x"}, 5)["ok"]["rc"], 0)

    def test_serviceMode(self) -> None:
        """In service mode only service commands run."""
        self.agent.healthChanged(False)
        self.assertRefused(self.runCommand("echo", {"message": "x"}, None), "not_in_service_mode")
        self.assertEqual(self.runCommand("uptime", {}, None)["ok"]["name"], "uptime")

    def test_unexpectedErrorsPropagate(self) -> None:
        """An error that is no refusal is not disguised as one."""

        class Broken(StubAgent):
            def runCommand(self, name: str, params: object, epoch: int | None = None) -> Any:
                raise RuntimeError("broken")

        config = sharedArray().config
        avatar = PeerAvatar(Broken(Clock(), config, config.sp("spa")), "spb")
        self.assertRaises(RuntimeError, avatar.perspective_runCommand, "echo", {}, None)

    def test_tooLargeCommandReply(self) -> None:
        """A command result too large for the channel becomes too_large."""
        self.agent.stdout = "x" * MAX_REPLY_BYTES
        error = self.assertRefused(self.runCommand("echo", {"message": "x"}, None), "too_large")
        self.assertIn(str(MAX_REPLY_BYTES), error["detail"])

    def test_tooLargeHealthAndStatus(self) -> None:
        """health and status replies are bounded too."""
        self.agent.healthSnapshot = lambda: {"healthy": True, "checks": [], "blob": "y" * MAX_REPLY_BYTES}
        self.assertRefused(self.avatar.perspective_health(), "too_large")
        self.agent.stdout = "z" * MAX_REPLY_BYTES
        self.assertRefused(self.successResultOf(self.avatar.perspective_status()), "too_large")

    def test_replyJustUnderLimit(self) -> None:
        """A reply under the limit is not refused."""
        self.agent.stdout = "x" * (MAX_REPLY_BYTES // 2)
        reply = self.runCommand("echo", {"message": "x"}, None)
        self.assertEqual(len(reply["ok"]["stdout"]), MAX_REPLY_BYTES // 2)


# -- banana bytes ------------------------------------------------------------


def encode(*items: Any) -> bytes:
    """Banana bytes for C{items}, one after another (no vocabulary)."""
    return b"".join(banana.encode(item) for item in items)


def listHeader(length: int) -> bytes:
    """The banana header of a list of C{length} items."""
    out: list[bytes] = []
    banana.int2b128(length, out.append)
    return b"".join(out) + banana.LIST


def nestedArgument(depth: int) -> bytes:
    """A jellied list holding a list holding ... C{depth} lists deep."""
    return (listHeader(2) + encode(b"list")) * (depth - 1) + listHeader(1) + encode(b"list")


def messageBytes(requestID: int, objectID: Any, method: bytes, argsBytes: bytes) -> bytes:
    """A PB message whose jellied positional arguments are C{argsBytes} (one argument)."""
    return (
        listHeader(7)
        + encode(b"message", requestID, objectID, method, 1)
        + listHeader(2)
        + encode(b"tuple")
        + argsBytes
        + encode([b"dictionary"])
    )


def loginMessage(requestID: int, username: Any) -> bytes:
    """Ask the server's root object for a login challenge for C{username}."""
    return encode([b"message", requestID, b"root", b"login", 1, jelly.jelly((username,)), [b"dictionary"]])


def decodeAll(data: bytes) -> list[Any]:
    """Every expression in C{data}, as a PB client decodes them."""
    decoder = banana.Banana(isClient=True)
    decoder.connectionMade()
    decoder.currentDialect = b"pb"
    out: list[Any] = []
    decoder.expressionReceived = out.append
    decoder.dataReceived(data)
    return out


class RecordingTransport(StringTransport):
    """A StringTransport that counts C{abortConnection} calls."""

    aborts = 0

    def abortConnection(self) -> None:
        self.aborts += 1
        super().abortConnection()


class GuardedBrokerTests(SynchronousTestCase):
    """
    L{GuardedBroker} drops a peer that sends too much, too deep, or nothing
    for too long; well-formed traffic goes through.
    """

    idleTimeout = 30.0

    def setUp(self) -> None:
        self.connect()

    def connect(self) -> None:
        """A fresh server broker, past the dialect negotiation."""
        self.clock = Clock()
        factory = PeerServerFactory(
            peerPortal(makeAgent(), {"spb"}, peerSecret()), idleTimeout=self.idleTimeout
        )
        self.broker = factory.buildProtocol(None)
        self.broker.callLater = self.clock.callLater
        self.transport = RecordingTransport()
        self.broker.makeConnection(self.transport)
        # The client picks the dialect the server offered.
        self.broker.dataReceived(encode(b"pb"))
        self.transport.clear()

    def feed(self, data: bytes, chunk: int | None = None) -> int:
        """Deliver C{data} in chunks; stop once dropped.  The bytes delivered."""
        chunk = chunk or len(data)
        delivered = 0
        for start in range(0, len(data), chunk):
            if self.transport.aborts:
                break
            piece = data[start : start + chunk]
            self.broker.dataReceived(piece)
            delivered += len(piece)
        return delivered

    def answers(self) -> dict[int, Any]:
        return {e[1]: e for e in decodeAll(self.transport.value()) if e[0] in (b"answer", b"error")}

    def test_wellFormedMessagesAnswered(self) -> None:
        """Small well-formed messages are answered and the connection stays."""
        self.feed(loginMessage(1, b"spb") + loginMessage(2, b"spb"))
        answers = self.answers()
        self.assertEqual(sorted(answers), [1, 2])
        self.assertEqual(answers[1][0], b"answer")
        self.assertEqual(self.transport.aborts, 0)
        self.assertFalse(self.transport.disconnecting)

    def test_oversizedMessageDropped(self) -> None:
        """
        A message over MAX_MESSAGE_BYTES is dropped as soon as its bytes pass
        the limit, though each string in it is within banana's own limit.
        """
        half = MAX_MESSAGE_BYTES // 2 + 100
        big = messageBytes(3, b"root", b"login", listHeader(3) + encode(b"list", b"x" * half, b"y" * half))
        delivered = self.feed(big, chunk=16 * 1024)
        self.assertEqual(self.transport.aborts, 1)
        self.assertGreater(delivered, MAX_MESSAGE_BYTES)
        self.assertLessEqual(delivered - 16 * 1024, MAX_MESSAGE_BYTES)
        self.assertEqual(self.answers(), {})
        self.assertEqual(self.broker.listStack, [])

    def test_oversizedChunkDropped(self) -> None:
        """A single delivery over the limit is dropped before it is decoded."""
        half = MAX_MESSAGE_BYTES // 2 + 100
        big = messageBytes(3, b"root", b"login", listHeader(3) + encode(b"list", b"x" * half, b"y" * half))
        self.feed(big)
        self.assertEqual(self.transport.aborts, 1)
        self.assertEqual(self.answers(), {})

    def test_largeMessageUnderLimitAnswered(self) -> None:
        """A message just under the limit is decoded and answered."""
        size = (MAX_MESSAGE_BYTES - 1000) // 2
        argument = listHeader(3) + encode(b"list", b"x" * size, b"y" * size)
        message = messageBytes(4, b"root", b"login", argument)
        self.assertLess(len(message), MAX_MESSAGE_BYTES)
        self.feed(message, chunk=16 * 1024)
        self.assertEqual(self.transport.aborts, 0)
        self.assertEqual(list(self.answers()), [4])

    def test_limitIsPerMessage(self) -> None:
        """Many messages adding up to more than the limit are all answered."""
        messages = b"".join(loginMessage(i, b"u" * 60_000) for i in range(1, 21))
        self.assertGreater(len(messages), MAX_MESSAGE_BYTES)
        for i in range(1, 21):
            self.feed(loginMessage(i, b"u" * 60_000))
        self.assertEqual(self.transport.aborts, 0)
        self.assertEqual(sorted(self.answers()), list(range(1, 21)))

    def test_limitIsPerMessageWhateverTheChunking(self) -> None:
        """
        The limit counts the bytes of one message: a stream of small
        messages whose deliveries never end exactly on a message boundary is
        not dropped.
        """
        messages = b"".join(loginMessage(i, b"u" * 60_000) for i in range(1, 21))
        self.feed(messages, chunk=7001)
        self.assertEqual(self.transport.aborts, 0)
        self.assertEqual(sorted(self.answers()), list(range(1, 21)))

    def test_deepNestingAcrossDeliveriesDropped(self) -> None:
        """
        A message whose lists are still open deeper than MAX_DEPTH at the end
        of a delivery is dropped, and nothing after it is decoded.
        """
        message = messageBytes(5, b"root", b"login", nestedArgument(MAX_DEPTH * 4))
        opening = message.index(listHeader(1))
        self.feed(message[:opening])
        self.assertEqual(self.transport.aborts, 1)
        self.assertEqual(self.broker.listStack, [])
        self.assertEqual(self.answers(), {})

    def test_deepNestingInOneDeliveryDropped(self) -> None:
        """
        A message nested deeper than MAX_DEPTH is dropped even when it
        arrives complete in one delivery (one TLS record holds thousands of
        levels); it never reaches PB.
        """
        for depth in (MAX_DEPTH * 3, 5000):
            self.connect()
            self.feed(messageBytes(6, b"root", b"login", nestedArgument(depth)))
            self.flushLoggedErrors(RecursionError)
            self.assertEqual((depth, self.transport.aborts), (depth, 1))
            self.assertEqual((depth, self.answers()), (depth, {}))

    def test_nestingWithinLimitAnswered(self) -> None:
        """Nesting within MAX_DEPTH is fine, even split between deliveries."""
        depth = MAX_DEPTH - 3  # + the message and the argument tuple
        message = messageBytes(7, b"root", b"login", nestedArgument(depth))
        opening = message.index(listHeader(1))
        self.feed(message[:opening])
        self.feed(message[opening:])
        self.assertEqual(self.transport.aborts, 0)
        self.assertEqual(list(self.answers()), [7])

    def test_idleTimeout(self) -> None:
        """A connection silent for idleTimeout is dropped; any data resets the clock."""
        self.clock.advance(self.idleTimeout - 1)
        self.feed(loginMessage(8, b"spb"))
        self.clock.advance(self.idleTimeout - 1)
        self.assertEqual(self.transport.aborts, 0)
        self.clock.advance(1)
        self.assertEqual(self.transport.aborts, 1)

    def test_connectionLostCancelsTimeout(self) -> None:
        """A lost connection leaves no idle timer behind."""
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.broker.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noIdleTimeout(self) -> None:
        """A broker without idleTimeout (the default) sets no timer."""
        clock = Clock()
        broker = GuardedBroker(isClient=False, security=securityOptions())
        broker.callLater = clock.callLater
        broker.makeConnection(StringTransport())
        self.assertEqual(clock.getDelayedCalls(), [])


class Plain:
    """An ordinary class: its instances must not cross."""

    def __init__(self) -> None:
        self.command = "rm -rf /"


class Copyable(pb.Copyable):
    """A PB copyable no side registered."""

    def __init__(self) -> None:
        self.x = 1


class SecurityOptionsTests(SynchronousTestCase):
    """Only basic types (and PB's references and failures) unjelly."""

    def test_basicTypesRoundTrip(self) -> None:
        """Dicts, lists, tuples, sets, text, bytes, numbers, booleans and None cross."""
        value = {
            "text": "h\u00e9llo",
            "bytes": b"\x00\xff",
            "numbers": [0, -1, 2**40, -(2**40), 1.5],
            "flags": (True, False, None),
            "set": {1, 2},
            "frozen": frozenset({"a"}),
            "nested": {"a": [{"b": ()}]},
        }
        self.assertEqual(jelly.unjelly(jelly.jelly(value), securityOptions()), value)

    def test_instancesRefused(self) -> None:
        """Instances of other classes raise InsecureJelly."""
        for obj in [Plain(), Copyable(), OrderedDict(a=1), ValueError("x")]:
            sexp = jelly.jelly(obj)
            with self.assertRaises(jelly.InsecureJelly, msg=obj):
                jelly.unjelly(sexp, securityOptions())

    def test_classesFunctionsModulesRefused(self) -> None:
        """Classes, functions and modules raise InsecureJelly."""
        import os

        for obj in [Plain, os.system, os]:
            sexp = jelly.jelly(obj)
            with self.assertRaises(jelly.InsecureJelly, msg=obj):
                jelly.unjelly(sexp, securityOptions())

    def test_handMadeInstanceRefused(self) -> None:
        """A hand-written instance of an importable class raises InsecureJelly."""
        sexp = [b"os.popen", [b"dictionary"]]
        with self.assertRaises(jelly.InsecureJelly):
            jelly.unjelly(sexp, securityOptions())


class ProblemForTests(SynchronousTestCase):
    """L{problemFor} and L{refusal}: each refusal kind's HTTP answer."""

    routes = ["GET /api/v1/sps/<sp>/status"]

    def test_statuses(self) -> None:
        """Each kind has its status; the kind is named in the problem."""
        for kind, status in [
            ("unknown_command", 404),
            ("invalid_parameters", 422),
            ("requires_active", 409),
            ("stale_epoch", 409),
        ]:
            problem = problemFor({"kind": kind, "detail": "d", "command": "c"}, self.routes, sp="spa")
            self.assertEqual((kind, problem.status), (kind, status))
            self.assertEqual(problem.detail, "d")
            self.assertEqual(problem.extra, {"refusal": kind, "command": "c", "sp": "spa"})

    def test_unknownKinds(self) -> None:
        """Kinds this SP does not know, or no kind at all, are a bad gateway."""
        for error in [{"kind": "too_large", "detail": "big"}, {"kind": "from_the_future"}, {}]:
            problem = problemFor(error, self.routes)
            self.assertEqual(problem.status, 502, error)
            self.assertIsInstance(problem.detail, str)

    def test_notInServiceMode(self) -> None:
        """not_in_service_mode is a 503 naming the mode and the routes left."""
        problem = problemFor(
            {"kind": "not_in_service_mode", "detail": "d", "command": "echo"}, self.routes, via="spb"
        )
        self.assertEqual(problem.status, 503)
        self.assertEqual(problem.title, "Service mode")
        self.assertEqual(problem.extra["mode"], SERVICE)
        self.assertEqual(problem.extra["routes"], self.routes)
        self.assertEqual((problem.extra["command"], problem.extra["via"]), ("echo", "spb"))

    def test_refusal(self) -> None:
        """Each refusal exception becomes its kind; anything else is none."""
        cases = [
            (UnknownCommand("x"), "unknown_command"),
            (InvalidParameters({"a": "bad"}, "echo"), "invalid_parameters"),
            (NotInServiceMode("echo"), "not_in_service_mode"),
            (RequiresActive("drill"), "requires_active"),
            (StaleEpoch(3, 5), "stale_epoch"),
        ]
        for exception, kind in cases:
            self.assertEqual(refusal(exception)["kind"], kind)
        self.assertEqual(refusal(StaleEpoch(3, 5))["newest"], 5)
        self.assertEqual(refusal(InvalidParameters({"a": "bad"}))["problems"], {"a": "bad"})
        self.assertIsNone(refusal(RuntimeError("x")))


# -- the client, against a server over TLS in memory ---------------------------


class InMemoryLink:
    """
    spb's L{PeerClient} to spa's PB server, as L{makeSPService} builds them,
    on a L{MemoryReactorClock}: real TLS, no sockets.
    """

    timeout = 2.0
    keepalive = 0.5

    def __init__(
        self,
        test: SynchronousTestCase,
        clientCert: str = "spb",
        secret: bytes | None = None,
    ) -> None:
        array = sharedArray()
        config = array.config
        self.reactor = MemoryReactorClock()
        reactor = self.reactor
        # Idle timers and TLS write batching run on the clock each side is
        # given (the client gets the test's reactor below).
        spa = config.sp("spa")
        self.secret = peerSecret()
        self.agent = makeAgent(reactor)
        pbFactory = PeerServerFactory(
            peerPortal(self.agent, {"spb"}, self.secret), idleTimeout=10.0, clock=reactor
        )
        context = serverOptions(spa.cert, spa.key, config.ca, requireClientCertificate=True, tls13Only=True)
        reactor.listenTCP(spa.pb.port, tlsServerFactory(pbFactory, context, reactor=reactor))
        self.client = PeerClient(
            reactor,
            "spb",
            spa,
            config.ca,
            array.path(f"var/pki/{clientCert}.pem"),
            array.path(f"var/pki/{clientCert}.key"),
            self.secret if secret is None else secret,
            timeout=self.timeout,
            keepalive=self.keepalive,
            monotonic=reactor.seconds,
        )
        self.completer = iosim.ConnectionCompleter(reactor)
        self.pump: iosim.IOPump | None = None

    def connect(self) -> iosim.IOPump:
        """Let the pending connection attempt through and run TLS and login."""
        pump = self.completer.succeedOnce()
        assert pump is not None, "no connection attempt pending"
        self.pump = pump
        pump.flush()
        return pump

    def start(self) -> iosim.IOPump:
        self.client.startService()
        return self.connect()

    def call(self, method: str, *args: Any) -> Deferred[Any]:
        d = Deferred.fromCoroutine(self.client.call(method, *args))
        if self.pump is not None:
            self.pump.flush()
        return d


class PeerClientTests(SynchronousTestCase):
    """L{PeerClient}: login on connect, call timeouts, keepalive, stopping."""

    def test_notConnected(self) -> None:
        """Before any connection, a call fails at once and nothing is known."""
        link = InMemoryLink(self)
        for started in (False, True):
            if started:
                link.client.startService()
            self.assertFalse(link.client.connected)
            self.assertFalse(link.client.reachable())
            self.assertIsNone(link.client.lastKnown("ping"))
            self.assertIsNone(link.client.lastSeen)
            self.assertIsNone(link.client.lastSummary)
            failure = self.failureResultOf(Deferred.fromCoroutine(link.client.call("ping")), PeerUnavailable)
            self.assertEqual(failure.value.peer, "spa")
        self.successResultOf(link.client.stopService())

    def test_loginOnConnect(self) -> None:
        """Once TLS is up the client logs in; calls answer the ok value."""
        link = InMemoryLink(self)
        link.start()
        self.assertTrue(link.client.connected)
        self.assertTrue(link.client.reachable())
        self.assertEqual(link.client.lastSeen, link.reactor.seconds())
        summary = self.successResultOf(link.call("ping"))
        self.assertEqual(summary, link.agent.summary())
        self.assertEqual(link.client.lastKnown("ping"), (summary, 0.0))
        link.reactor.advance(0.25)
        self.assertEqual(link.client.lastKnown("ping"), (summary, 0.25))
        self.assertIsNone(link.client.lastKnown("health"))

    def test_refusalsAndFailures(self) -> None:
        """A refusal is PeerRefused with its data; an unexpected error is PeerFailed."""
        link = InMemoryLink(self)
        link.start()
        refused = self.failureResultOf(link.call("runCommand", "rm-rf", {}, None), PeerRefused)
        self.assertEqual(refused.value.error["kind"], "unknown_command")
        failed = self.failureResultOf(link.call("noSuchMethod"), PeerFailed)
        self.assertIn("noSuchMethod", failed.value.detail)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        self.assertTrue(link.client.connected)
        result = self.successResultOf(link.call("runCommand", "echo", {"message": "hi"}, None))
        self.assertEqual(result["rc"], 0)

    def test_callTimeout(self) -> None:
        """
        A peer that never answers: PeerUnavailable after the timeout, and the
        connection is dropped.
        """
        link = InMemoryLink(self)
        pump = link.start()
        link.agent.hold = Deferred()
        d = link.call("status")
        self.assertNoResult(d)
        link.reactor.advance(link.timeout - 0.5)
        self.assertNoResult(d)
        link.reactor.advance(0.5)
        failure = self.failureResultOf(d, PeerUnavailable)
        self.assertIn("no answer", failure.value.detail)
        self.assertFalse(link.client.connected)
        self.assertFalse(link.client.reachable())
        pump.flush()
        self.assertTrue(pump.clientIO.disconnected)
        self.assertTrue(pump.serverIO.disconnected)

    def test_reconnectsAfterAbandoning(self) -> None:
        """After dropping a hung peer, the client connects and logs in again."""
        link = InMemoryLink(self)
        pump = link.start()
        link.agent.hold = Deferred()
        d = link.call("status")
        link.reactor.advance(link.timeout)
        self.failureResultOf(d, PeerUnavailable)
        pump.flush()
        link.agent.hold = None
        link.reactor.advance(2.0)
        link.connect()
        self.assertTrue(link.client.connected)
        self.assertEqual(self.successResultOf(link.call("ping"))["id"], "spa")

    def test_keepalive(self) -> None:
        """Each keepalive updates lastSeen and lastSummary."""
        link = InMemoryLink(self)
        pump = link.start()
        self.assertIsNone(link.client.lastSummary)
        link.reactor.advance(link.keepalive)
        pump.flush()
        self.assertEqual(link.client.lastSummary, link.agent.summary())
        self.assertEqual(link.client.lastSeen, link.keepalive)
        link.agent.roleState = RoleState(role="active", epoch=7, newest=7)
        link.reactor.advance(link.keepalive)
        pump.flush()
        self.assertEqual((link.client.lastSummary["role"], link.client.lastSummary["epoch"]), ("active", 7))
        self.assertEqual(link.client.lastSeen, 2 * link.keepalive)
        self.assertTrue(link.client.reachable())

    def test_stopServiceLeavesNothingBehind(self) -> None:
        """Stopping closes the connection and leaves no delayed call."""
        link = InMemoryLink(self)
        pump = link.start()
        link.reactor.advance(link.keepalive)
        pump.flush()
        d = link.client.stopService()
        pump.flush()
        self.successResultOf(d)
        self.assertTrue(pump.clientIO.disconnected)
        self.assertEqual(link.reactor.getDelayedCalls(), [])
        self.assertFalse(link.client.connected)

    def test_wrongSecret(self) -> None:
        """With a wrong secret the login is refused and the connection dropped."""
        link = InMemoryLink(self, secret=b"not-the-peer-secret")
        pump = link.start()
        self.assertEqual(len(self.flushLoggedErrors(UnauthorizedLogin)), 1)
        self.assertFalse(link.client.connected)
        self.assertTrue(pump.clientIO.disconnected)
        self.failureResultOf(link.call("ping"), PeerUnavailable)

    def test_certificateMustNameTheLogin(self) -> None:
        """
        The array's proxy certificate with spb's name and the right secret:
        refused, since the certificate does not name spb.
        """
        link = InMemoryLink(self, clientCert="proxy")
        pump = link.start()
        self.assertEqual(len(self.flushLoggedErrors(UnauthorizedLogin)), 1)
        self.assertFalse(link.client.connected)
        self.assertTrue(pump.clientIO.disconnected)

    def test_loginTimeout(self) -> None:
        """A server that never finishes the login is dropped after the timeout."""
        self.patch(PeerSecretChecker, "requestAvatarId", lambda checker, credentials: Deferred())
        link = InMemoryLink(self)
        pump = link.start()
        self.assertFalse(link.client.connected)
        self.assertFalse(pump.clientIO.disconnecting)
        link.reactor.advance(link.timeout)
        pump.flush()
        self.assertTrue(pump.clientIO.disconnected)
        self.assertFalse(link.client.connected)

    def test_unsendableArgument(self) -> None:
        """
        Arguments PB cannot send (a string over banana's 640 KiB, an integer
        over its 448 bits) end in one of the documented errors, not in an
        exception from the encoder, and the link stays usable.
        """
        link = InMemoryLink(self)
        link.start()
        for args in [("echo", {"message": "x" * 700_000}, None), ("sleep", {"seconds": 10**200}, None)]:
            d = link.call("runCommand", *args)
            failure = self.failureResultOf(d)
            self.assertTrue(failure.check(PeerUnavailable, PeerRefused, PeerFailed), failure)
        self.assertEqual(self.successResultOf(link.call("ping"))["id"], "spa")

    def test_replyWithinLimitFitsTheChannel(self) -> None:
        """
        A reply under MAX_REPLY_BYTES as JSON arrives; one that does not fit
        the channel is too_large.  Either way the connection stays up.
        """
        link = InMemoryLink(self)
        link.start()
        checks = [""] * 120_000
        link.agent.healthSnapshot = lambda: {"healthy": True, "checks": checks}
        d = link.call("health")
        d.addCallback(lambda health: ("ok", len(health["checks"])))
        d.addErrback(lambda failure: ("refused", failure.trap(PeerRefused) and failure.value.error["kind"]))
        self.assertIn(self.successResultOf(d), [("ok", 120_000), ("refused", "too_large")])
        self.assertTrue(link.client.connected)
        link.agent.healthSnapshot = lambda: {"healthy": True, "checks": []}
        self.assertEqual(self.successResultOf(link.call("health"))["sp"], "spa")
