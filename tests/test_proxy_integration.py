"""
The front proxy with real processes: one client connection across every
kind of failover (DESIGN "The proxy", RELIABILITY G3-G5, F01-F04, F15,
F19, F20).
"""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import ssl
import shutil
import threading
import time
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from spmgmt.testing import ArrayHarness, ArrayTestMixin
from tests.test_events import openStream


class KeepAliveClient:
    """
    Sends GETs back to back on one TLS connection to the proxy, in a
    thread, and counts what it sees: answers by SP, errors, reconnects,
    the longest time between two successes.
    """

    def __init__(
        self, array: ArrayHarness, path: str = "/api/v1/sps", pause: float = 0.002, proxy: str = "proxy"
    ) -> None:
        settings = array.proxyConfigs[proxy][1].proxy
        assert settings is not None
        self._address = settings.tls
        self._context = ssl.create_default_context(cafile=str(array.config.ca))
        secret = f"monitor:{array.passwords['monitor']}".encode()
        self._auth = "Basic " + base64.b64encode(secret).decode()
        self._path = path
        self._pause = pause
        self._stop = threading.Event()
        self.servedBy: list[str] = []
        self.errors: list[str] = []
        self.reconnects = 0
        self.maxGap = 0.0
        self.done: Deferred[None] | None = None

    def start(self) -> None:
        self.done = deferToThread(self._run)

    def _run(self) -> None:
        connection = http.client.HTTPSConnection(
            self._address.host, self._address.port, context=self._context, timeout=30
        )
        sock = None
        lastOK = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    connection.request("GET", self._path, headers={"Authorization": self._auth})
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as e:
                    self.errors.append(repr(e))
                    connection.close()
                    continue
                if sock is None:
                    sock = connection.sock
                elif connection.sock is not sock:
                    self.reconnects += 1
                    sock = connection.sock
                if response.status != 200:
                    self.errors.append(f"{response.status} {body[:300]!r}")
                else:
                    now = time.monotonic()
                    self.maxGap = max(self.maxGap, now - lastOK)
                    lastOK = now
                    self.servedBy.append(response.getheader("X-SPMgmt-Served-By") or "?")
                time.sleep(self._pause)
        finally:
            connection.close()

    async def stop(self) -> None:
        self._stop.set()
        assert self.done is not None
        await self.done

    def countOf(self, sp: str) -> int:
        return self.servedBy.count(sp)


class KeepAliveAcrossFailoverTests(ArrayTestMixin, TestCase):
    """
    G4 on one keep-alive TLS connection: zero errors and zero reconnects
    across each kind of token move, and the next request is served by the
    new active SP.
    """

    timeout = 120

    async def _across(self, fault: Any, heal: Any = None) -> KeepAliveClient:
        array = await self.startArray(arbiter=True)
        await array.waitHolder("proxy", "spa")
        client = KeepAliveClient(array)
        client.start()
        self.addCleanup(client._stop.set)
        await array.waitFor(lambda: _true(client.countOf("spa") >= 20), 10.0, "requests served by spa")
        await fault(array)
        await array.waitHolder("proxy", "spb")
        before = client.countOf("spb")
        await array.waitFor(lambda: _true(client.countOf("spb") >= before + 20), 10.0, "requests served by spb")
        if heal is not None:
            await heal(array)
        await client.stop()
        self.assertEqual(client.errors, [])
        self.assertEqual(client.reconnects, 0)
        # Once spb served, only spb serves: no flapping back.
        firstB = client.servedBy.index("spb")
        self.assertEqual(set(client.servedBy[firstB:]), {"spb"})
        self.assertEqual(set(client.servedBy[:firstB]), {"spa"})
        return client

    async def test_sigkill(self) -> None:
        async def fault(array: ArrayHarness) -> None:
            await array.kill("spa")

        client = await self._across(fault)
        self.assertLess(client.maxGap, 2.0)

    async def test_sigstopBeyondTheMissWindow(self) -> None:
        async def fault(array: ArrayHarness) -> None:
            array.signal("spa", signal.SIGSTOP)

        async def heal(array: ArrayHarness) -> None:
            array.signal("spa", signal.SIGCONT)
            await _sleep(0.5)  # the old active wakes up: still no error

        client = await self._across(fault, heal)
        self.assertLess(client.maxGap, 3.0)

    async def test_maintenanceFile(self) -> None:
        async def fault(array: ArrayHarness) -> None:
            array.path("var/spa.maintenance").touch()

        await self._across(fault)

    async def test_switchover(self) -> None:
        async def fault(array: ArrayHarness) -> None:
            moved = await array.request("proxy", "POST", "/api/v1/array/switchover", body={"to": "spb"})
            self.assertEqual(moved.code, 200, moved.body)

        await self._across(fault)


class OpenSSLClientTests(ArrayTestMixin, TestCase):
    """A person in C{openssl s_client}: one session across a SIGKILL."""

    timeout = 120

    async def test_sClientAcrossSIGKILL(self) -> None:
        array = await self.startArray(arbiter=True)
        await array.waitHolder("proxy", "spa")
        assert array.config.proxy is not None
        address = array.config.proxy.tls
        client = _SClient()
        argv = [
            "openssl", "s_client", "-quiet", "-verify_return_error",
            "-CAfile", str(array.config.ca), "-servername", "proxy",
            "-alpn", "http/1.1", "-connect", f"{address.host}:{address.port}",
        ]
        reactor.spawnProcess(client, "openssl", argv, env=None)
        self.addCleanup(client.close)
        secret = base64.b64encode(f"monitor:{array.passwords['monitor']}".encode()).decode()
        get = (
            "GET /api/v1/array HTTP/1.1\r\nHost: array\r\n"
            f"Authorization: Basic {secret}\r\n\r\n"
        ).encode()

        first = await client.ask(get)
        self.assertEqual(first.status, 200, first.body)
        self.assertEqual(first.headers["x-spmgmt-served-by"], "spa")
        self.assertEqual(json.loads(first.body)["proxy"]["routing_to"], "spa")

        await array.kill("spa")
        second = await client.ask(get)
        self.assertEqual(second.status, 200, second.body)
        self.assertEqual(second.headers["x-spmgmt-served-by"], "spb")
        self.assertGreater(int(second.headers["x-spmgmt-epoch"]), int(first.headers["x-spmgmt-epoch"]))
        self.assertFalse(client.ended.called, "s_client's session ended")


class _Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _SClient(ProcessProtocol):
    """Drives C{openssl s_client -quiet}: writes requests, parses answers."""

    def __init__(self) -> None:
        self._buffer = b""
        self._waiting: Deferred[_Answer] | None = None
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        head, sep, rest = self._buffer.partition(b"\r\n\r\n")
        if not sep or self._waiting is None:
            return
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            return
        self._buffer = rest[length:]
        waiting, self._waiting = self._waiting, None
        waiting.callback(_Answer(int(lines[0].split()[1]), headers, rest[:length]))

    def ask(self, request: bytes) -> Deferred[_Answer]:
        self._waiting = Deferred()
        self._waiting.addTimeout(30, reactor)
        self.transport.write(request)
        self._parse()
        return self._waiting

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        if self._waiting is not None and not self._waiting.called:
            self._waiting.errback(reason)

    def close(self) -> Deferred[None] | None:
        if self.ended.called:
            return None
        self.transport.signalProcess("KILL")
        return self.ended


class NonIdempotentTests(ArrayTestMixin, TestCase):
    """G5 with real processes: a POST that reached an SP that died."""

    timeout = 120

    async def test_postWhoseBackendDiesIsNotResent(self) -> None:
        array = await self.startArray(arbiter=True)
        await array.waitHolder("proxy", "spa")
        running = array.request(
            "proxy", "POST", "/api/v1/sps/spa/commands/sleep", body={"params": {"seconds": 10}},
            headers={"X-Request-Id": "drill-42"}, timeout=30,
        )
        running = Deferred.fromCoroutine(running)

        await _sleep(1.0)  # the command is running on spa
        await array.kill("spa")
        answer = await running
        self.assertEqual(answer.code, 502, answer.body)
        problem = answer.json()
        self.assertEqual(problem["outcome"], "unknown")
        self.assertEqual(problem["request_id"], "drill-42")
        self.assertEqual(problem["sp"], "spa")
        self.assertEqual(answer.header("Content-Type"), "application/problem+json")
        await array.waitHolder("proxy", "spb")
        # Nothing ran on spb: no command in the history at all.
        events = (await array.request("proxy", "GET", "/api/v1/events")).json()["events"]
        self.assertEqual([e for e in events if e["kind"] == "command"], [])


class EventStreamAcrossFailoverTests(ArrayTestMixin, TestCase):
    """F20: one event stream through the proxy across a SIGKILL failover."""

    timeout = 120

    async def test_everyIdOnceInOrder(self) -> None:
        array = await self.startArray(arbiter=True)
        await array.waitHolder("proxy", "spa")
        reader = await openStream(array, "proxy")
        for _ in range(3):
            ran = await array.request("proxy", "POST", "/api/v1/sps/spa/commands/uptime", body={})
            self.assertEqual(ran.code, 200)
        await array.kill("spa")
        await array.waitHolder("proxy", "spb")
        for _ in range(3):
            ran = await array.request("proxy", "POST", "/api/v1/sps/spb/commands/uptime", body={})
            self.assertEqual(ran.code, 200)
        history = (await array.request("spb", "GET", "/api/v1/events")).json()["events"]
        last = history[-1]["id"]
        await array.waitFor(lambda: _true(bool(reader.ids()) and reader.ids()[-1] >= last), 10.0, "the stream")
        self.assertFalse(reader.ended.called, "the client's stream ended")
        await reader.close()
        ids = reader.ids()
        # Every event the history has from the first one streamed, once, in order.
        self.assertEqual(ids, [e["id"] for e in history if ids[0] <= e["id"] <= ids[-1]])
        kinds = {e["id"]: e["kind"] for e in history}
        self.assertIn("grant", [kinds[i] for i in ids])
        # spb's three runs at least (spa's reports may die with it).
        self.assertGreaterEqual(len([i for i in ids if kinds[i] == "command"]), 3)
        metrics = await array.request("spb", "GET", "/metrics")
        self.assertEqual(metrics.code, 200)


class HoldTests(ArrayTestMixin, TestCase):
    """F18 through the proxy: no SP can be active."""

    timeout = 120

    async def test_heldThen503ConnectionKept(self) -> None:
        array = await self.startArray(arbiter=True, proxyExtra="failover_wait = 1.0\n")
        await array.waitHolder("proxy", "spa")
        for sp in ("spa", "spb"):
            array.path(f"var/{sp}.maintenance").touch()
        await array.waitHolder("spb", None)
        started = time.monotonic()
        answer = await array.request("proxy", "GET", "/api/v1/sps")
        waited = time.monotonic() - started
        self.assertEqual(answer.code, 503, answer.body)
        self.assertEqual(answer.header("Retry-After"), "1")
        self.assertEqual(answer.header("Content-Type"), "application/problem+json")
        self.assertGreaterEqual(waited, 0.9)
        self.assertLess(waited, 3.0)
        # The first SP to recover is served, on the same pooled connection.
        array.path("var/spb.maintenance").unlink()
        await array.waitHolder("proxy", "spb")
        answer = await array.request("proxy", "GET", "/api/v1/sps")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("X-SPMgmt-Served-By"), "spb")


async def _underLoad(
    testCase: ArrayTestMixin, proxy: str = "proxy", **kwargs: Any
) -> tuple[ArrayHarness, KeepAliveClient, dict[str, Any]]:
    """
    A running array, its token as C{proxy} routes it, and a client sending
    back-to-back GETs through C{proxy} that spa has answered 20 times.
    """
    array = await testCase.startArray(arbiter=True, **kwargs)
    before = await array.waitHolder(proxy, "spa")
    client = KeepAliveClient(array, proxy=proxy)
    client.start()
    testCase.addCleanup(client._stop.set)  # type: ignore[attr-defined]
    await array.waitFor(lambda: _true(client.countOf("spa") >= 20), 10.0, f"requests through {proxy}")
    return array, client, before


class SeparateProcessesTests(ArrayTestMixin, TestCase):
    """
    The arbiter and the proxy are processes of their own: the proxy only
    follows, so its loss moves no token, and while the arbiter is away the
    proxy holds requests on the client's connection until it is back.
    """

    timeout = 120

    async def test_proxyLossMovesNoToken(self) -> None:
        """SIGKILL the proxy: the token stays; a new proxy routes to the same holder and epoch."""
        array = await self.startArray(arbiter=True)
        before = await array.waitHolder("proxy", "spa")
        await array.kill("proxy")
        await _sleep(1.0)  # three miss windows
        self.assertEqual((await array.array("spb"))["token"], before)
        array.startProcess("proxy")
        await array.waitReady("proxy")
        self.assertEqual(await array.waitHolder("proxy", "spa"), before)
        events = (await array.request("spa", "GET", "/api/v1/events")).json()["events"]
        moves = [(e["kind"], e["epoch"]) for e in events if e["kind"] in ("grant", "revoke")]
        self.assertEqual(moves, [("grant", before["epoch"])])

    async def test_arbiterAwayRequestsHeld(self) -> None:
        """
        SIGKILL the arbiter under a client's back-to-back GETs on one TLS
        connection: the GETs wait while no arbiter says who is active, and
        once it is back (after 1 s) the same holder serves them, on the
        same connection, with no error.
        """
        array, client, before = await _underLoad(self)
        await array.kill("arbiter")

        async def unrouted() -> bool:
            return (await array.request("proxy", "GET", "/healthz", user=None)).json()["state"] == "unavailable"

        await array.waitFor(unrouted, 10.0, "the proxy to stop routing")
        served = client.countOf("spa")
        await _sleep(1.0)
        self.assertLessEqual(client.countOf("spa"), served + 1)  # held, not served by a stepped-down SP
        array.startProcess("arbiter")
        await array.waitReady("arbiter")
        after = await array.waitHolder("proxy", "spa")
        await array.waitFor(lambda: _true(client.countOf("spa") >= served + 20), 10.0, "requests served again")
        await client.stop()
        self.assertEqual((client.errors, client.reconnects), ([], 0))
        self.assertEqual(after, before)  # the last holder is back: same epoch
        self.assertGreater(client.maxGap, 1.0)


class TwoProxiesTests(ArrayTestMixin, TestCase):
    """
    Two proxies follow the one arbiter at once (two management hosts would
    share the configuration and bind their own addresses; here they differ
    in their ports).  Losing one costs only its own clients' connections.
    """

    timeout = 120

    async def test_oneProxyLost(self) -> None:
        array, client, before = await _underLoad(self, proxy="proxy2", extraProxies=1)
        self.assertEqual(await array.waitHolder("proxy", "spa"), before)
        await array.kill("proxy")
        served = client.countOf("spa")
        await array.waitFor(lambda: _true(client.countOf("spa") >= served + 50), 10.0, "more requests through proxy2")
        # A failover while one proxy is gone: the other follows it.
        await array.kill("spa")
        await array.waitHolder("proxy2", "spb")
        await array.waitFor(lambda: _true(client.countOf("spb") >= 20), 10.0, "requests served by spb")
        await client.stop()
        self.assertEqual((client.errors, client.reconnects), ([], 0))
        firstB = client.servedBy.index("spb")
        self.assertEqual((set(client.servedBy[:firstB]), set(client.servedBy[firstB:])), ({"spa"}, {"spb"}))
        array.startProcess("proxy")  # it comes back and follows the current holder
        await array.waitReady("proxy")
        self.assertEqual(await array.waitHolder("proxy", "spb"), await array.waitHolder("proxy2", "spb"))


class StallTests(ArrayTestMixin, TestCase):
    """
    A stall of the arbiter that is shorter than the control links' idle
    timeout (SIGSTOP for 1 s, under a client's back-to-back GETs) moves no
    token and drops no link: the holder's lease lapses for the stall and
    is renewed with the same epoch, and the proxy holds the requests
    meanwhile.
    """

    timeout = 120

    async def test_arbiterStoppedForASecond(self) -> None:
        array, client, before = await _underLoad(self)
        logins = {name: array.logTail(name, 5000).count("logged in to arbiter") for name in ("spa", "spb", "proxy")}
        array.signal("arbiter", signal.SIGSTOP)
        await _sleep(1.0)
        array.signal("arbiter", signal.SIGCONT)
        served = client.countOf("spa")
        await array.waitFor(lambda: _true(client.countOf("spa") >= served + 20), 10.0, "requests served again")
        await client.stop()
        self.assertEqual((client.errors, client.reconnects), ([], 0))
        self.assertEqual(set(client.servedBy), {"spa"})
        self.assertEqual(await array.waitHolder("proxy", "spa"), before)
        events = (await array.request("spa", "GET", "/api/v1/events")).json()["events"]
        moves = {(e["kind"], e.get("epoch")) for e in events if e["kind"] in ("grant", "revoke")}
        self.assertEqual(moves, {("grant", before["epoch"])})  # renewals at most, no revoke
        after = {name: array.logTail(name, 5000).count("logged in to arbiter") for name in ("spa", "spb", "proxy")}
        self.assertEqual(after, logins)


class ProxyOwnRoutesTests(ArrayTestMixin, TestCase):
    timeout = 120

    async def test_healthzMetricsAndArrayView(self) -> None:
        array = await self.startArray(arbiter=True)
        await array.waitHolder("proxy", "spa")
        healthz = await array.request("proxy", "GET", "/healthz", user=None)
        self.assertEqual(healthz.code, 200)
        self.assertEqual(healthz.json()["role"], "proxy")
        self.assertEqual(healthz.json()["token"]["holder"], "spa")
        self.assertEqual((await array.request("proxy", "GET", "/metrics", user=None)).code, 401)
        metrics = await array.request("proxy", "GET", "/metrics", user="monitor")
        self.assertEqual(metrics.code, 200)
        for name in (
            b"spmgmt_proxy_client_connections",
            b"spmgmt_proxy_requests_total",
            b"spmgmt_proxy_retries_total",
            b"spmgmt_proxy_held_requests",
            b"spmgmt_proxy_failover_gap_seconds_bucket",
        ):
            self.assertIn(name, metrics.body)
        view = (await array.request("proxy", "GET", "/api/v1/array")).json()
        self.assertEqual(view["proxy"]["token"]["holder"], "spa")

        async def probed() -> bool:
            view = (await array.request("proxy", "GET", "/api/v1/array")).json()
            return all(s["reachable"] for s in view["proxy"]["sps"].values())

        await array.waitFor(probed, 5.0, "the proxy to probe both SPs")
        # Only the proxy's certificate may vouch for a user.
        forged = await array.request(
            "spa", "POST", "/api/v1/array/switchover", user=None, headers={"X-SPMgmt-Principal": "admin"}
        )
        self.assertEqual(forged.code, 401)
        self.assertEqual((await array.request("proxy", "GET", "/api/v1/sps", user=None)).code, 401)
        # The head of a stream is an answer, not a stream to follow.
        head = await array.request("proxy", "HEAD", "/api/v1/events/stream", timeout=5)
        self.assertEqual(head.code, 200)
        self.assertTrue(head.header("Content-Type").startswith("text/event-stream"))
        invalid = await array.request("proxy", "POST", "/api/v1/sps/spa/commands/echo", body={"params": {"x": 1}})
        self.assertEqual(invalid.code, 422)
        await array.kill("spb")

        async def unreachable() -> bool:
            view = (await array.request("proxy", "GET", "/api/v1/array")).json()
            return view["proxy"]["sps"]["spb"] == {"reachable": False, "arbiter_connected": False}

        await array.waitFor(unreachable, 5.0, "the proxy to see spb gone")


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def _true(value: bool) -> bool:
    return value


class ProxyProcessTests(ArrayTestMixin, TestCase):
    """The proxy process: certificate reload on SIGHUP, fatal bind errors."""

    timeout = 120

    async def test_sighupReloadsTheCertificate(self) -> None:
        """
        New connections get the new certificate; an established connection
        keeps working; a broken file leaves the old certificate in use.
        """
        from cryptography import x509

        from spmgmt.pki import _load, certificatePEM, issueCertificate, keyPEM

        array = await self.startArray(arbiter=True)
        await array.waitHolder("proxy", "spa")
        assert array.config.proxy is not None
        address = array.config.proxy.tls
        context = ssl.create_default_context(cafile=str(array.config.ca))

        def serial() -> int:
            with socket.create_connection((address.host, address.port)) as raw:
                with context.wrap_socket(raw, server_hostname="proxy") as tls:
                    der = tls.getpeercert(binary_form=True)
            return int(x509.load_der_x509_certificate(der).serial_number)

        established = http.client.HTTPSConnection(address.host, address.port, context=context, timeout=10)
        self.addCleanup(established.close)

        def get() -> int:
            established.request("GET", "/healthz")
            response = established.getresponse()
            response.read()
            return response.status

        self.assertEqual(await deferToThread(get), 200)
        sock = established.sock
        before = await deferToThread(serial)
        pki = array.path("var/pki")
        caCert, caKey = _load(pki / "ca.pem", pki / "ca.key")
        cert, key = issueCertificate(caCert, caKey, "proxy")
        (pki / "proxy.key").write_bytes(keyPEM(key))
        (pki / "proxy.pem").write_bytes(certificatePEM(cert))
        array.signal("proxy", signal.SIGHUP)

        async def reloaded() -> bool:
            return bool(await deferToThread(serial) == cert.serial_number)

        await array.waitFor(reloaded, 10.0, "the new certificate", "proxy")
        self.assertNotEqual(before, cert.serial_number)
        self.assertEqual(await deferToThread(get), 200)
        self.assertIs(established.sock, sock)

        # A half-written certificate: the old one stays, the proxy serves on.
        (pki / "proxy.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        array.signal("proxy", signal.SIGHUP)
        await array.waitFor(
            lambda: _true("front end: TLS reload failed" in array.logTail("proxy")), 10.0, "the reload error", "proxy"
        )
        self.assertEqual(await deferToThread(serial), cert.serial_number)
        self.assertEqual(await deferToThread(get), 200)

    async def test_failedBindExits(self) -> None:
        """A front-end port in use ends the proxy with an error, not a half-up proxy."""
        directory = Path(mkdtemp(prefix="spmgmt-bind-"))
        self.addCleanup(shutil.rmtree, directory, True)
        array = ArrayHarness(reactor, directory, arbiter=True)
        self.addCleanup(array.stopAll)
        assert array.config.proxy is not None
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((array.config.proxy.tls.host, array.config.proxy.tls.port))
        taken.listen(1)
        array.startProcess("proxy")
        reason = await array._procs["proxy"].ended
        self.assertNotEqual(reason.exitCode, 0)
        self.assertIn("Address already in use", array.logTail("proxy"))
