"""
Hostile clients against a real SP's PB port: real C{twistd} processes
(spa and spb) on 127.0.0.1, real TLS, and a PB client driven by hand.

After every case spa must still be serving: its own HTTPS API answers, and
spb still reaches it over the real peer link (spa's status through spb is
collected by spa).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.spread import banana, jelly, pb
from twisted.trial.unittest import TestCase

from spmgmt.config import readPeerSecret
from spmgmt.pb.wire import MAX_MESSAGE_BYTES, securityOptions
from spmgmt.pki import certificatePEM, createCA, issueCertificate, keyPEM
from spmgmt.testing import ArrayHarness, ArrayTestMixin
from spmgmt.tls import clientOptions
from tests.test_peer import encode, listHeader


async def outcome(d: Deferred[Any], timeout: float = 10.0) -> Any:
    """C{d}'s result, or its L{Failure} as the result; a timeout is a failure too."""
    d.addTimeout(timeout, reactor)
    (result,) = await d.addBoth(lambda result: [result])
    return result


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


# -- banana bytes, built by hand so the client's own encoder limits don't apply --


def stringHeader(length: int) -> bytes:
    out: list[bytes] = []
    banana.int2b128(length, out.append)
    return b"".join(out) + banana.STRING


def nestedLists(depth: int) -> bytes:
    """A list holding a list holding ... C{depth} lists deep: 2 bytes a level."""
    return listHeader(1) * (depth - 1) + listHeader(0)


def messageBytes(requestID: int, objectID: Any, method: bytes, argument: bytes) -> bytes:
    """A PB message calling C{method} with one jellied argument."""
    return (
        listHeader(7)
        + encode(b"message", requestID, objectID, method, 1)
        + listHeader(2)
        + encode(b"tuple")
        + argument
        + encode([b"dictionary"])
    )


class ProbeBroker(pb.Broker):
    """A PB client broker that records whether PB got ready and when it ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ready = False
        self.ended = False
        self.lost: Deferred[None] = Deferred()

    def connectionReady(self) -> None:
        self.ready = True
        super().connectionReady()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.ended = True
        # Endpoints never tell the factory; pending logins must fail.
        self.factory.clientConnectionLost(None, reason)
        if not self.lost.called:  # a waiter may have timed out
            self.lost.callback(None)


class ProbeFactory(pb.PBClientFactory):
    protocol = ProbeBroker


class Evil(pb.Copyable):
    """A copyable the SP never registered."""

    def __init__(self) -> None:
        self.command = "rm -rf /"


class Collector(Protocol):
    """Plain TCP: sends C{greeting}, keeps what comes back."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.received = b""
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        if not self.ended.called:  # a waiter may have timed out
            self.ended.callback(None)


class PeerPortSecurityTests(ArrayTestMixin, TestCase):
    """Who may reach spa's PB port, and what a logged-in peer may send."""

    timeout = 60

    async def startPair(self) -> ArrayHarness:
        array = await self.startArray(spIds=("spa", "spb"))
        self.array = array
        self.secret = readPeerSecret(array.config)

        async def linkUp() -> bool:
            response = await array.request("spb", "GET", "/api/v1/sps/spa/status")
            return response.code == 200

        await array.waitFor(linkUp, 15.0, "spb's peer link to spa", "spb")
        return array

    async def assertServing(self, case: str) -> None:
        """spa answers over HTTPS, and spb still reaches it over PB."""
        health = await self.array.request("spa", "GET", "/api/v1/sps/spa/health")
        self.assertEqual(health.code, 200, f"{case}: spa no longer answers: {health.body!r}")
        status = await self.array.request("spb", "GET", "/api/v1/sps/spa/status")
        self.assertEqual(status.code, 200, f"{case}: spb no longer reaches spa: {status.body!r}")
        self.assertEqual(status.json()["collected_by"], "spa", case)

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.array.path(f"var/pki/{name}.pem"), self.array.path(f"var/pki/{name}.key")

    def writePair(self, name: str, certificate: x509.Certificate, key: Any) -> tuple[Path, Path]:
        directory = self.array.path("hostile")
        directory.mkdir(exist_ok=True)
        certPath, keyPath = directory / f"{name}.pem", directory / f"{name}.key"
        certPath.write_bytes(certificatePEM(certificate))
        keyPath.write_bytes(keyPEM(key))
        return certPath, keyPath

    def arrayCA(self) -> tuple[x509.Certificate, Any]:
        caCert = x509.load_pem_x509_certificate(self.array.path("var/pki/ca.pem").read_bytes())
        caKey = load_pem_private_key(self.array.path("var/pki/ca.key").read_bytes(), None)
        return caCert, caKey

    async def connect(self, identity: tuple[Path, Path] | None) -> ProbeBroker:
        """A TLS connection to spa's PB port, presenting C{identity} if given."""
        sp = self.array.config.sp("spa")
        certPath, keyPath = identity if identity is not None else (None, None)
        creator = clientOptions("spa", self.array.config.ca, certPath, keyPath, tls13Only=True)
        factory = ProbeFactory(security=securityOptions())
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, sp.pb.host, sp.pb.port, timeout=5))
        broker = await outcome(endpoint.connect(factory))
        if isinstance(broker, Failure):
            broker.raiseException()
        self.addCleanup(self.close, broker)
        return broker

    async def close(self, broker: ProbeBroker) -> None:
        if not broker.ended:
            broker.transport.loseConnection()
        await outcome(broker.lost)

    async def login(self, broker: ProbeBroker, name: bytes, secret: bytes) -> Any:
        credentials = UsernamePassword(name, secret)
        return await outcome(broker.factory.login(credentials, client=pb.Referenceable()))

    async def loggedIn(self, case: str) -> tuple[ProbeBroker, Any]:
        """A connection logged in as spb, the way spb's own client does."""
        broker = await self.connect(self.pair("spb"))
        perspective = await self.login(broker, b"spb", self.secret)
        self.assertFalse(isinstance(perspective, Failure), f"{case}: the good login failed: {perspective}")
        return broker, perspective

    async def assertDropped(self, broker: ProbeBroker, case: str) -> None:
        await outcome(broker.lost)
        self.assertTrue(broker.ended, f"{case}: spa kept the connection open")

    # -- who may connect ---------------------------------------------------------

    async def test_handshakeRefusals(self) -> None:
        """
        Without a certificate from the array CA (none, another CA's, an
        expired one) or without TLS at all, no client ever speaks PB.
        """
        await self.startPair()
        foreignCA, foreignKey = createCA("not the array CA")
        caCert, caKey = self.arrayCA()
        now = datetime.datetime.now(datetime.timezone.utc)
        cases = {
            "(a) no client certificate": None,
            "(b) a certificate for spb from another CA": self.writePair(
                "foreign-spb", *issueCertificate(foreignCA, foreignKey, "spb")
            ),
            "(b') an expired array certificate for spb": self.writePair(
                "expired-spb",
                *issueCertificate(
                    caCert,
                    caKey,
                    "spb",
                    notBefore=now - datetime.timedelta(days=10),
                    notAfter=now - datetime.timedelta(days=1),
                ),
            ),
        }
        for case, identity in cases.items():
            broker = await self.connect(identity)
            result = await self.login(broker, b"spb", self.secret)
            self.assertIsInstance(result, Failure, f"{case}: the login succeeded")
            await self.assertDropped(broker, case)
            self.assertFalse(broker.ready, f"{case}: PB got ready")
            await self.assertServing(case)

        case = "plain TCP"
        sp = self.array.config.sp("spa")
        login = [b"message", 1, b"root", b"login", 1, [b"tuple", b"spb"], [b"dictionary"]]
        greeting = encode(b"pb") + encode(login)
        collector = Collector(greeting)
        await connectProtocol(TCP4ClientEndpoint(reactor, sp.pb.host, sp.pb.port, timeout=5), collector)
        self.addCleanup(lambda: collector.ended.called or collector.transport.abortConnection())
        ended = await outcome(collector.ended)
        self.assertFalse(isinstance(ended, Failure), f"{case}: spa kept the connection open")
        self.assertNotIn(b"none", collector.received, f"{case}: spa offered PB dialects")
        self.assertFalse(collector.received.startswith(listHeader(2)), f"{case}: a banana answer")
        await self.assertServing(case)

    async def test_loginRules(self) -> None:
        """
        With a valid array certificate, only the name it certifies and the
        peer secret log in; then PB calls work.
        """
        await self.startPair()
        caCert, caKey = self.arrayCA()
        spc = self.writePair("spc", *issueCertificate(caCert, caKey, "spc"))
        refused = [
            ("(c) the proxy's certificate logging in as spb", self.pair("proxy"), b"spb", self.secret),
            ("(c) spb's certificate logging in as spa", self.pair("spb"), b"spa", self.secret),
            ("(c) an array certificate for spc logging in as spc", spc, b"spc", self.secret),
            ("(d) spb with a wrong secret", self.pair("spb"), b"spb", b"not-the-secret-at-all"),
            ("(d) spb with an empty secret", self.pair("spb"), b"spb", b""),
        ]
        for case, identity, name, secret in refused:
            broker = await self.connect(identity)
            result = await self.login(broker, name, secret)
            self.assertIsInstance(result, Failure, f"{case}: the login succeeded")
            self.assertTrue(result.check(UnauthorizedLogin), f"{case}: {result}")
            self.assertTrue(broker.ready, f"{case}: PB should be up; only the login is refused")
            await self.assertServing(case)

        case = "anonymous login"
        broker = await self.connect(self.pair("spb"))
        result = await outcome(broker.factory.login(Anonymous(), client=pb.Referenceable()))
        self.assertIsInstance(result, Failure, f"{case}: the login succeeded")
        self.assertTrue(result.check(UnhandledCredentials), f"{case}: {result}")

        case = "(d) the positive control: spb, its certificate and the secret"
        broker, perspective = await self.loggedIn(case)
        reply = await outcome(perspective.callRemote("ping"))
        self.assertEqual(set(reply), {"ok"}, f"{case}: {reply}")
        self.assertEqual(reply["ok"]["id"], "spa", case)
        health = await outcome(perspective.callRemote("health"))
        self.assertEqual(health["ok"]["sp"], "spa", case)
        await self.assertServing(case)

    # -- what a logged-in peer may send ------------------------------------------

    async def test_hostileMessages(self) -> None:
        """
        Non-basic objects are refused; oversized messages and garbage end the
        connection; spa keeps serving throughout.
        """
        await self.startPair()

        case = "(e) a Copyable instance as an argument"
        broker, perspective = await self.loggedIn(case)
        result = await outcome(perspective.callRemote("runCommand", Evil(), {}, None))
        self.assertIsInstance(result, Failure, f"{case}: spa accepted it: {result}")
        self.assertTrue(result.check(jelly.InsecureJelly, pb.PBConnectionLost), f"{case}: {result}")
        if not broker.ended:
            reply = await outcome(perspective.callRemote("ping"))
            self.assertEqual(reply["ok"]["id"], "spa", f"{case}: the connection is broken: {reply}")
        await self.assertServing(case)

        case = "(e) a class as an argument"
        broker, perspective = await self.loggedIn(case)
        result = await outcome(perspective.callRemote("runCommand", Evil, {}, None))
        self.assertIsInstance(result, Failure, f"{case}: spa accepted it: {result}")
        self.assertTrue(result.check(jelly.InsecureJelly, pb.PBConnectionLost), f"{case}: {result}")
        await self.assertServing(case)

        case = "(e) a remote reference as the command name"
        broker, perspective = await self.loggedIn(case)
        reply = await outcome(perspective.callRemote("runCommand", pb.Referenceable(), {}, None))
        self.assertEqual(reply["error"]["kind"], "bad_request", f"{case}: {reply}")
        await self.assertServing(case)

        case = "(f) a message of two 600 kB strings"
        broker, perspective = await self.loggedIn(case)
        half = MAX_MESSAGE_BYTES // 2 + 100_000
        result = await outcome(
            perspective.callRemote("runCommand", "echo", {"message": ["x" * half, "y" * half]}, None)
        )
        self.assertIsInstance(result, Failure, f"{case}: spa answered: {str(result)[:200]}")
        self.assertTrue(result.check(pb.PBConnectionLost), f"{case}: {result}")
        await self.assertDropped(broker, case)
        await self.assertServing(case)

        case = "(f) a 2 MB string, written raw"
        broker, perspective = await self.loggedIn(case)
        size = 2 * 1024 * 1024
        broker.transport.write(
            messageBytes(broker.newRequestID(), perspective.luid, b"ping", stringHeader(size) + b"z" * size)
        )
        await self.assertDropped(broker, case)
        await self.assertServing(case)

        garbage = {
            "(h) random bytes": b"\xff" + os.urandom(4095),
            "(h) an endless number prefix": b"\x01" * 100,
            "(h) a bare integer instead of a list": encode(5),
            "(h) an unknown type byte after a valid message": encode([b"version", 6]) + b"\x00\x9f",
        }
        for case, data in garbage.items():
            broker, perspective = await self.loggedIn(case)
            broker.transport.write(data)
            await self.assertDropped(broker, case)
            await self.assertServing(case)

    async def test_deepNesting(self) -> None:
        """
        A message nested far deeper than MAX_DEPTH ends the connection,
        whether it arrives in pieces or in one go (5000 levels are 10 kB: one
        TLS record, so one delivery to the broker), and spa keeps serving.
        """
        await self.startPair()
        depth = 5000
        for case, pieces in [("(g) 5000 levels, in two writes", 2), ("(g) 5000 levels, in one write", 1)]:
            broker, perspective = await self.loggedIn(case)
            requestID = broker.newRequestID()
            answer: Deferred[Any] = Deferred()
            broker.waitingForAnswers[requestID] = answer
            data = messageBytes(requestID, perspective.luid, b"ping", nestedLists(depth))
            cut = len(data) // pieces
            for start in range(0, len(data), cut):
                if broker.ended:
                    break
                broker.transport.write(data[start : start + cut])
                await sleep(0.2)
            result = await outcome(answer)
            self.assertIsInstance(result, Failure, f"{case}: spa answered {result}")
            self.assertTrue(result.check(pb.PBConnectionLost), f"{case}: spa answered instead: {result}")
            await self.assertDropped(broker, case)
            await self.assertServing(case)
