"""
The proxy's retry rules end to end, in one process: a real L{ProxySite}
and real L{Backends} over loopback TLS, in front of scripted SPs that
refuse, drop or misdirect requests on cue (F19, F20, G5).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from spmgmt.auth import portalFromConfig
from spmgmt.metrics import ProxyMetrics
from spmgmt.proxy.backend import Backends
from spmgmt.proxy.frontend import Proxy, ProxySite
from spmgmt.proxy.router import Router
from spmgmt.testing import ArrayHarness
from spmgmt.tls import serverOptions, tlsServerFactory
from tests.test_events import _StreamReader

Behaviour = Callable[[Any], Any]


class _Scripted(Resource):
    isLeaf = True

    def __init__(self, sp: "ScriptedSP") -> None:
        super().__init__()
        self._sp = sp

    def render(self, request: Any) -> Any:
        self._sp.received.append(
            (request.method, request.uri, dict(request.requestHeaders.getAllRawHeaders()), request.content.read())
        )
        return self._sp.behaviour(request)


class ScriptedSP:
    """An SP's TLS web port whose answer to each request is L{behaviour}."""

    def __init__(self, name: str, harness: ArrayHarness) -> None:
        self.name = name
        self.received: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []
        self.behaviour: Behaviour = answer(200, {"sp": name})
        sp = harness.config.sp(name)
        options = serverOptions(sp.cert, sp.key, acceptableProtocols=[b"http/1.1"])
        factory = tlsServerFactory(Site(_Scripted(self)), options, reactor)
        self.port = reactor.listenTCP(sp.web.port, factory, interface=sp.web.host)

    def methods(self) -> list[bytes]:
        return [method for method, _, _, _ in self.received]


def answer(code: int, value: Any) -> Behaviour:
    def behave(request: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(value).encode()

    return behave


def drop(request: Any) -> Any:
    """Read the request, then die without answering."""
    request.channel.transport.abortConnection()
    return NOT_DONE_YET


class ProxyRetryTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="spmgmt-proxy-"))
        self.harness = ArrayHarness(reactor, directory, arbiter=True)
        config = self.harness.config
        assert config.proxy is not None
        config = attrs.evolve(config, proxy=attrs.evolve(config.proxy, failover_wait=2.0, upstream_timeout=5.0))
        self.router = Router(reactor, time.monotonic)
        self.backends = Backends(reactor, config, self.router, timeout=config.proxy.upstream_timeout)
        self.metrics = ProxyMetrics()

        class Arbiter:
            def view(self) -> dict[str, Any]:
                return {"members": {}}

        # A pool of our own, stopped with the test: one left running keeps
        # the interpreter from exiting (pytest never shuts the reactor down).
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-proxy-auth")
        pool.start()
        self.addCleanup(pool.stop)
        portal = portalFromConfig(reactor, config, pool)
        self.proxy = Proxy(reactor, config, self.router, self.backends, self.metrics, portal, Arbiter())
        self.port = reactor.listenTCP(0, ProxySite(self.proxy), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.backends.pool.closeCachedConnections)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.retryAutomatically = False
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    def sp(self, name: str) -> ScriptedSP:
        sp = ScriptedSP(name, self.harness)
        self.addCleanup(sp.port.stopListening)
        return sp

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    async def post(self, path: str = "/api/v1/sps/spa/commands/drill") -> Any:
        response = await self.client.post(self.url(path), data=b'{"params": {}}', headers={"X-Request-Id": "r-1"})
        return response, await response.content()

    async def test_postRefusedBeforeSendingGoesOnceToTheNewActive(self) -> None:
        """Nothing listens where spa was: provably not sent, so spb runs it once."""
        spb = self.sp("spb")
        self.router.update((1, "spa"))
        reactor.callLater(0.1, self.router.update, (2, "spb"))
        response, body = await self.post()
        self.assertEqual(response.code, 200, body)
        self.assertEqual(response.headers.getRawHeaders("X-SPMgmt-Served-By"), ["spb"])
        self.assertEqual(response.headers.getRawHeaders("X-SPMgmt-Epoch"), ["2"])
        self.assertEqual(spb.methods(), [b"POST"])
        _, _, headers, content = spb.received[0]
        self.assertEqual(content, b'{"params": {}}')
        self.assertEqual(headers[b"X-Spmgmt-Epoch"], [b"2"])
        self.assertEqual(headers[b"X-Request-Id"], [b"r-1"])
        self.assertGreater(self._retries("not_sent"), 0)

    async def test_postDroppedAfterReadingIsOutcomeUnknown(self) -> None:
        """spa read it and died: maybe done, so never sent to spb (G5)."""
        spa, spb = self.sp("spa"), self.sp("spb")
        spa.behaviour = drop
        self.router.update((1, "spa"))
        reactor.callLater(0.1, self.router.update, (2, "spb"))
        response, body = await self.post()
        self.assertEqual(response.code, 502, body)
        problem = json.loads(body)
        self.assertEqual((problem["outcome"], problem["request_id"], problem["sp"]), ("unknown", "r-1", "spa"))
        self.assertEqual(spa.methods(), [b"POST"])
        await _sleep(0.2)
        self.assertEqual(spb.received, [])

    async def test_getDroppedIsSentAgain(self) -> None:
        """A GET whose SP died goes to the new active; the client sees 200."""
        spa, spb = self.sp("spa"), self.sp("spb")
        spa.behaviour = drop
        self.router.update((1, "spa"))
        reactor.callLater(0.1, self.router.update, (2, "spb"))
        response = await self.client.get(self.url("/api/v1/sps"))
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(await response.content()), {"sp": "spb"})
        self.assertGreaterEqual(len(spa.received), 1)
        self.assertEqual(spb.methods(), [b"GET"])

    async def test_misdirectedPostGoesToTheNewActive(self) -> None:
        """421 means the SP did nothing: even a POST goes again."""
        spa, spb = self.sp("spa"), self.sp("spb")
        spa.behaviour = answer(421, {"title": "Misdirected Request"})
        self.router.update((1, "spa"))
        reactor.callLater(0.1, self.router.update, (2, "spb"))
        response, body = await self.post()
        self.assertEqual(response.code, 200, body)
        self.assertEqual(spb.methods(), [b"POST"])
        self.assertGreater(self._retries("misdirected"), 0)

    async def test_heldUntilAnSPIsActive(self) -> None:
        spb = self.sp("spb")
        reactor.callLater(0.3, self.router.update, (4, "spb"))
        started = time.monotonic()
        response = await self.client.get(self.url("/api/v1/sps"))
        self.assertEqual(response.code, 200)
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        self.assertEqual(spb.methods(), [b"GET"])

    async def test_streamResumesAfterTheLastWholeEvent(self) -> None:
        """
        spa streams events 1-3 and half of 4, then dies; the client gets
        1-3, then 4 and 5 from spb, asked from Last-Event-ID 3: no gap, no
        duplicate, no half event.
        """
        spa, spb = self.sp("spa"), self.sp("spb")

        def spaStream(request: Any) -> Any:
            spa.behaviour = answer(421, {})
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.write(b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n: keepalive\n\nid: 3\ndata: c\n\nid: 4\ndata: par")
            reactor.callLater(0.05, request.channel.transport.abortConnection)
            reactor.callLater(0.1, self.router.update, (2, "spb"))
            return NOT_DONE_YET

        finished: list[Deferred[None]] = []

        def spbStream(request: Any) -> Any:
            finished.append(request.notifyFinish())
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.write(b"id: 4\ndata: d\n\nid: 5\ndata: e\n\n")
            return NOT_DONE_YET

        spa.behaviour = spaStream
        spb.behaviour = spbStream
        self.router.update((1, "spa"))
        response = await self.client.get(self.url("/api/v1/events/stream"), unbuffered=True)
        self.assertEqual(response.code, 200)
        body = _StreamReader()
        response.deliverBody(body)
        deadline = time.monotonic() + 10
        while b"id: 5" not in body.data and time.monotonic() < deadline:
            await _sleep(0.02)
        self.assertEqual(
            body.data,
            b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n: keepalive\n\nid: 3\ndata: c\n\nid: 4\ndata: d\n\nid: 5\ndata: e\n\n",
        )
        self.assertFalse(body.ended.called)
        (get,) = spb.received
        self.assertEqual(get[2][b"Last-Event-Id"], [b"3"])
        # The client leaves: the proxy lets go of spb's stream too.
        body.transport.stopProducing()  # type: ignore[attr-defined]
        await body.ended
        await finished[0].addErrback(lambda _: None)

    async def test_silentStreamIsResumed(self) -> None:
        """A stream stuck on a broken path (no keepalive comments) is asked again."""
        from spmgmt.proxy import frontend

        self.patch(frontend._StreamPump, "silence", 0.3)
        spa = self.sp("spa")
        asked: list[bytes | None] = []
        finished: list[Deferred[None]] = []

        def stream(request: Any) -> Any:
            asked.append(request.getHeader(b"last-event-id"))
            finished.append(request.notifyFinish())
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.write(b"id: %d\ndata: x\n\n" % len(asked))
            return NOT_DONE_YET  # then nothing more: a blackholed path

        spa.behaviour = stream
        self.router.update((1, "spa"))
        response = await self.client.get(self.url("/api/v1/events/stream"), unbuffered=True)
        body = _StreamReader()
        response.deliverBody(body)
        deadline = time.monotonic() + 10
        while b"id: 2" not in body.data and time.monotonic() < deadline:
            await _sleep(0.05)
        self.assertEqual(body.data, b"id: 1\ndata: x\n\nid: 2\ndata: x\n\n")
        self.assertEqual(asked, [None, b"1"])
        body.transport.stopProducing()  # type: ignore[attr-defined]
        await body.ended
        for d in finished:
            await d.addErrback(lambda _: None)

    async def test_proxyChecksCredentialsAndVouches(self) -> None:
        """
        The SP gets the name the proxy checked, never the password; bad
        credentials stop at the proxy.
        """
        spa = self.sp("spa")
        self.router.update((1, "spa"))
        auth = ("monitor", self.harness.passwords["monitor"])
        response = await self.client.get(self.url("/api/v1/sps"), auth=auth)
        self.assertEqual(response.code, 200)
        (get,) = spa.received
        self.assertEqual(get[2][b"X-Spmgmt-Principal"], [b"monitor"])
        self.assertNotIn(b"Authorization", get[2])
        response = await self.client.get(self.url("/api/v1/sps"), auth=("monitor", "wrong"))
        self.assertEqual(response.code, 401)
        self.assertIn("Basic", response.headers.getRawHeaders("WWW-Authenticate")[0])
        self.assertEqual(len(spa.received), 1)
        anonymous = await self.client.get(self.url("/api/v1/sps"), headers={"X-SPMgmt-Principal": "admin"})
        self.assertEqual(anonymous.code, 200)
        self.assertNotIn(b"X-Spmgmt-Principal", spa.received[1][2])

    async def test_unsendableTargetIs400(self) -> None:
        """Bytes Twisted's client will not send are the client's error (H11)."""
        from twisted.web.http_headers import Headers

        from spmgmt.problem import Problem

        with self.assertRaises(Problem) as raised:
            await self.backends.attempt((7, "spa"), b"GET", b"/a\x7fb", Headers(), None)
        self.assertEqual(raised.exception.status, 400)

    async def test_ownRoutesOnlyGetAndHead(self) -> None:
        response = await self.client.post(self.url("/healthz"), data=b"x")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders("Allow"), ["GET, HEAD"])
        self.assertEqual((await self.client.head(self.url("/healthz"))).code, 200)

    async def test_boundedRequestsInFlight(self) -> None:
        """
        Held requests released at once by a token move go out a bounded
        number at a time (the reactor also runs the arbiter).
        """
        self.backends._slots = DeferredSemaphore(2)
        spa = self.sp("spa")
        waiting: list[Any] = []

        def hold(request: Any) -> Any:
            waiting.append(request)
            return NOT_DONE_YET

        spa.behaviour = hold
        answers = [Deferred.fromCoroutine(self._get("/api/v1/sps")) for _ in range(5)]
        self.router.update((1, "spa"))
        for expected in (2, 3, 4, 5):
            while len(waiting) < expected:
                await _sleep(0.01)
            await _sleep(0.05)
            self.assertEqual(len(waiting), expected)  # never more than 2 at once
            request = waiting[expected - 2]
            request.write(b"{}")
            request.finish()
        for request in waiting[-1:]:
            request.write(b"{}")
            request.finish()
        self.assertEqual([await d for d in answers], [200] * 5)

    async def _get(self, path: str) -> int:
        response = await self.client.get(self.url(path))
        await response.content()
        return int(response.code)

    def _retries(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value("spmgmt_proxy_retries_total", {"outcome": outcome})
        return value or 0.0


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)
