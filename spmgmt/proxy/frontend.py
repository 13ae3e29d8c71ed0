# -*- test-case-name: tests.test_proxy_integration -*-
"""
The client side of the proxy: HTTP/1.1 keep-alive over TLS (and optionally
plain TCP), each request re-framed and sent to the active SP, held and
retried across a failover as L{spmgmt.proxy.policy} decides, so the
client's connection never notices more than a pause.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import INegotiated, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spmgmt.auth import PRINCIPAL_HEADER, FailureLimiter, Principal, authenticate, identify
from spmgmt.config import ArrayConfig
from spmgmt.httpserver import BoundedRequest, GuardedSite, HandshakeThrottle
from spmgmt.metrics import ProxyMetrics, methodLabel
from spmgmt.problem import Problem
from spmgmt.proxy import policy
from spmgmt.proxy.backend import Attempt, Backends
from spmgmt.proxy.headers import BadRequestId, forwarded, requestId, responseHeaders, upstreamHeaders
from spmgmt.proxy.policy import Action, Outcome
from spmgmt.proxy.router import Router
from spmgmt.proxy.sse import EventSplitter, EventStreamTooLarge

_log = Logger()
#: TLS handshakes in progress before the front end stops accepting for a
#: moment (one handshake is ~1-2 ms of CPU; this bounds a reactor turn).
MAX_HANDSHAKES = 64
_EVENT_ID = re.compile(rb"[0-9]{1,18}")
#: Methods whose request carries a body (so its length is always sent).
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class Proxy:
    """
    What the proxy knows and does, shared by its listeners.

    @ivar arbiter: the link to the arbiter (its view is part of ours).
    @ivar reachable: per SP, whether its web port answered the last probe.
    """

    def __init__(
        self,
        reactor: Any,
        config: ArrayConfig,
        router: Router,
        backends: Backends,
        metrics: ProxyMetrics,
        portal: Portal,
        arbiter: Any,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        assert config.proxy is not None
        self.reactor = reactor
        self.config = config
        self.settings = config.proxy
        self.router = router
        self.backends = backends
        self.metrics = metrics
        self.arbiter = arbiter
        self.monotonic = monotonic
        self.reachable: dict[str, bool | None] = {sp.id: None for sp in config.sps}
        self._portal = portal
        self._limiter = FailureLimiter(reactor)

    # -- requests ------------------------------------------------------------

    def handle(self, request: "ProxyRequest") -> None:
        """Answer C{request}: ours (/healthz, /metrics) or the active SP's."""
        d = Deferred.fromCoroutine(self._handle(request))

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, Problem):
                self.answer(request, failure.value.status, failure.value.render(request))
                return
            _log.failure("proxying {method} {uri} failed", failure, method=request.method, uri=request.uri)
            self.answer(request, 500, Problem(500, "The proxy failed; see its log.").render(request))

        d.addErrback(failed)

    async def _handle(self, request: "ProxyRequest") -> None:
        if not request.uri.startswith(b"/"):
            raise Problem(400, "Only origin-form request targets (starting with /) are accepted.")
        try:
            request.requestId = requestId(request.requestHeaders)
        except BadRequestId as e:
            raise Problem(400, str(e)) from None
        request.setHeader(b"X-Request-Id", request.requestId)
        if request.path in (b"/healthz", b"/metrics") and request.method not in (b"GET", b"HEAD"):
            raise Problem(405, "Only GET and HEAD.", headers={b"Allow": b"GET, HEAD"})
        if request.path == b"/healthz":
            self.answerJSON(request, 200, self.healthz())
            return
        if request.path == b"/metrics":
            await authenticate(self._portal, self._limiter, request, "monitor")
            contentType, body = self.metrics.exposition()
            request.setHeader(b"Content-Type", contentType)
            self.answer(request, 200, body)
            return
        await self._forward(request)

    def healthz(self) -> dict[str, Any]:
        route = self.router.route
        return {
            "status": "ok",
            "role": "proxy",
            "state": "active" if route else "unavailable",
            "token": {"epoch": route[0], "holder": route[1]} if route else None,
        }

    def view(self) -> dict[str, Any]:
        """The proxy's part of C{GET /api/v1/array}."""
        route = self.router.route
        members = self.arbiter.view()["members"]
        vacant = self.router.vacantSince
        return {
            "token": {"epoch": route[0], "holder": route[1]} if route else None,
            "routing_to": route[1] if route else None,
            "vacant_s": None if vacant is None else round(self.monotonic() - vacant, 3),
            "held_requests": self.router.waiting,
            "sps": {
                sp.id: {
                    "reachable": self.reachable[sp.id],
                    "arbiter_connected": bool(members.get(sp.id, {}).get("connected")),
                }
                for sp in self.config.sps
            },
        }

    async def _forward(self, request: "ProxyRequest") -> None:
        method = request.method
        body = request.content.read() if request.content is not None else b""
        if not body and method not in _BODY_METHODS and method in policy.IDEMPOTENT:
            send: bytes | None = None
        else:
            send = body
        lastEventId = request.getHeader(b"last-event-id")
        if lastEventId is not None and not _EVENT_ID.fullmatch(lastEventId):
            lastEventId = None
        # Checked here, once: an SP new to the token need not check a
        # password (scrypt) on the first request after a failover.
        request.principal = await identify(self._portal, self._limiter, request)
        attempt, action = await self.exchange(request, send, lastEventId)
        if action is Action.OUTCOME_UNKNOWN:
            self.metrics.outcomeUnknown.inc()
            _log.warn(
                "{method} {uri} ({id}) may or may not have run on {sp}: {why}",
                method=method, uri=request.uri, id=request.requestId, sp=attempt.route[1], why=attempt.detail,
            )
            raise Problem(
                502,
                f"The request reached {attempt.route[1]}, which failed before answering "
                f"({attempt.detail}); it may or may not have been carried out.  "
                "Check before sending it again.",
                title="Outcome unknown",
                outcome="unknown",
                request_id=request.requestId.decode("ascii"),
                sp=attempt.route[1],
            )
        if action is Action.UNAVAILABLE:
            raise Problem(
                503,
                f"No SP could serve the request within {self.settings.failover_wait:g} s.",
                title="No active SP",
                request_id=request.requestId.decode("ascii"),
                headers={b"Retry-After": self._retryAfter()},
            )
        if attempt.stream:
            await self._stream(request, attempt)
            return
        self._deliver(request, attempt)

    async def exchange(
        self, request: "ProxyRequest", body: bytes | None, lastEventId: bytes | None
    ) -> tuple[Attempt, Action]:
        """
        Send C{request} to the active SP until the policy says to stop:
        the last attempt and what to do with it.
        """
        method = request.method
        deadline = self.monotonic() + self.settings.failover_wait
        client = getattr(request.getClientAddress(), "host", None)
        proto = "https" if INegotiated.providedBy(request.channel.transport) else "http"
        forwardedFor = forwarded(client, proto, request.getHeader(b"host"))
        retries = 0
        delay = 0.0
        last: Attempt | None = None
        while True:
            route = await self.router.wait(delay, deadline)
            # A client that left would learn nothing of a send: stop too.
            if route is None or request.gone:
                if last is not None and last.outcome is Outcome.SERVICE_MODE and not request.gone:
                    return last, Action.DELIVER
                return last or Attempt((0, ""), Outcome.NOT_SENT), Action.UNAVAILABLE
            headers = upstreamHeaders(request.requestHeaders, request.requestId, route[0], forwardedFor, lastEventId)
            if request.principal is not None:
                # SPs never see the client's secret, only whom we vouch for.
                headers.removeHeader(b"authorization")
                headers.setRawHeaders(PRINCIPAL_HEADER, [request.principal.name.encode("utf-8")])
            attempt = await self.backends.attempt(route, method, request.uri, headers, body)
            decision = policy.decide(method, attempt.outcome, retries, self.monotonic(), deadline)
            if decision.action is not Action.RETRY:
                return attempt, decision.action
            self.metrics.retries.labels(attempt.outcome.value).inc()
            _log.debug(
                "retrying {method} {uri} ({id}) after {outcome} from {sp}: {why}",
                method=method, uri=request.uri, id=request.requestId,
                outcome=attempt.outcome.value, sp=route[1], why=attempt.detail,
            )
            retries += 1
            delay = decision.delay
            last = attempt

    def _deliver(self, request: "ProxyRequest", attempt: Attempt) -> None:
        response = attempt.response
        assert response is not None
        body = attempt.body
        if body is None:
            raise Problem(502, f"{attempt.route[1]}'s answer was too large: {attempt.detail}.")
        self._copyHead(request, attempt)
        if attempt.outcome is Outcome.SERVICE_MODE:
            request.setHeader(b"Retry-After", self._retryAfter())
        if (
            request.method == b"GET"
            and request.path == b"/api/v1/array"
            and response.code == 200
        ):
            try:
                array = json.loads(body)
            except ValueError:
                pass
            else:
                array["proxy"] = self.view()
                body = json.dumps(array).encode("utf-8")
        if request.method == b"HEAD" and not request.gone:
            # The length of the answer a GET would get.
            length = response.headers.getRawHeaders(b"content-length", [b"0"])[0]
            request.setResponseCode(response.code, response.phrase)
            request.setHeader(b"Content-Length", length)
            request.finish()
            return
        self.answer(request, response.code, body, response.phrase)

    def _retryAfter(self) -> bytes:
        """When a client held in vain should try again: half the hold."""
        return b"%d" % max(1, round(self.settings.failover_wait / 2))

    def _copyHead(self, request: "ProxyRequest", attempt: Attempt) -> None:
        response = attempt.response
        assert response is not None
        for name, values in responseHeaders(response.headers):
            request.responseHeaders.setRawHeaders(name, values)
        epoch, sp = attempt.route
        request.setHeader(b"X-SPMgmt-Served-By", sp.encode("ascii"))
        request.setHeader(b"X-SPMgmt-Epoch", b"%d" % epoch)

    def answer(self, request: "ProxyRequest", code: int, body: bytes, phrase: bytes | None = None) -> None:
        if request.gone:
            return
        request.setResponseCode(code, phrase)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def answerJSON(self, request: "ProxyRequest", code: int, value: Any) -> None:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        self.answer(request, code, json.dumps(value).encode("utf-8"))

    # -- event streams -----------------------------------------------------

    async def _stream(self, request: "ProxyRequest", attempt: Attempt) -> None:
        """
        Pass an event stream through, one whole event at a time; when its
        SP fails or loses the token, resume it on the active SP from the
        last event id delivered, on the same client response.
        """
        self._copyHead(request, attempt)
        request.responseHeaders.removeHeader(b"content-length")
        request.setResponseCode(200)
        splitter = EventSplitter(lastId=request.getHeader(b"last-event-id"))
        pump = _StreamPump(request, splitter, self.reactor)
        request.registerProducer(pump, True)
        while not request.gone:
            assert attempt.response is not None
            unwatch = self.router.watch(attempt.route[0], pump.abandon)
            ended = pump.follow(attempt.response)
            try:
                await ended
            finally:
                unwatch()
            if request.gone:
                return
            splitter.discardPartial()
            self.metrics.streamResumes.inc()
            lastId = splitter.lastId if splitter.lastId and _EVENT_ID.fullmatch(splitter.lastId) else None
            attempt, action = await self.exchange(request, None, lastId)
            if action is not Action.DELIVER or not attempt.stream or request.gone:
                break
        if not request.gone:
            request.unregisterProducer()
            request.finish()


@implementer(IPushProducer)
class _StreamPump:
    """
    Carries one event stream from the current SP response to the client,
    pausing the SP's connection while the client's is full (H8).
    """

    #: An SP sends a comment every 15 s: a stream silent for longer than
    #: this (and not paused by us) is stuck on a broken path (F07).
    silence = 45.0

    def __init__(self, request: "ProxyRequest", splitter: EventSplitter, clock: Any) -> None:
        self._request = request
        self._splitter = splitter
        self._clock = clock
        self._upstream: Any = None
        self._paused = False
        self._watchdog: Any = None
        request.notifyFinish().addBoth(lambda _: self.abandon())

    def follow(self, response: Any) -> Deferred[None]:
        """Relay C{response}'s events; fires when it ends (or is abandoned)."""
        body = _StreamBody(self)
        response.deliverBody(body)
        return body.ended

    def attached(self, transport: Any) -> None:
        self._upstream = transport
        if self._paused:
            transport.pauseProducing()
        self._rearm()

    def detached(self) -> None:
        self._upstream = None
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()

    def _rearm(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self.silence)
        else:
            self._watchdog = self._clock.callLater(self.silence, self._silent)

    def _silent(self) -> None:
        if self._paused:
            self._rearm()  # our client is slow, not the SP
            return
        _log.warn("the event stream from the SP is silent; resuming it")
        self.abandon()

    def received(self, data: bytes) -> None:
        self._rearm()
        try:
            events = self._splitter.feed(data)
        except EventStreamTooLarge:
            _log.warn("an event from the SP is too large; resuming the stream")
            self.abandon()
            return
        if events and not self._request.gone:
            self._request.write(b"".join(events))

    def abandon(self) -> None:
        if self._upstream is not None:
            self._upstream.stopProducing()

    def pauseProducing(self) -> None:
        self._paused = True
        if self._upstream is not None:
            self._upstream.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._upstream is not None:
            self._upstream.resumeProducing()

    def stopProducing(self) -> None:
        self.abandon()


class _StreamBody:
    """The body protocol of one SP's event stream."""

    def __init__(self, pump: _StreamPump) -> None:
        self._pump = pump
        self.ended: Deferred[None] = Deferred()

    def makeConnection(self, transport: Any) -> None:
        self._pump.attached(transport)

    def dataReceived(self, data: bytes) -> None:
        self._pump.received(data)

    def connectionLost(self, reason: Any) -> None:
        self._pump.detached()
        if not self.ended.called:
            self.ended.callback(None)


class ProxyRequest(BoundedRequest):
    """
    A client request: its body is bounded (413 without reading the rest),
    its id is known, and it is answered by L{Proxy.handle}.
    """

    requestId = b""
    #: Who sent it, as the proxy checked (L{None}: no credentials).
    principal: Principal | None = None

    @property
    def gone(self) -> bool:
        """The client left (or the request was already answered)."""
        return bool(self._disconnected or self.finished)

    @property
    def proxy(self) -> Proxy:
        return self.channel.site.proxy  # type: ignore[no-any-return]

    def maxBody(self) -> int:
        return self.proxy.config.limits.max_body

    def refusedBody(self) -> dict[bytes, bytes]:
        self.proxy.metrics.refused.labels("body too large").inc()
        return {}

    def process(self) -> None:
        if self._tooLarge:
            return
        self._started = time.monotonic()
        self.proxy.handle(self)

    def finish(self) -> None:
        proxy = self.proxy if self.channel is not None else None
        if proxy is not None and hasattr(self, "_started"):
            proxy.metrics.requests.labels(methodLabel(self.method), str(self.code)).inc()
            proxy.metrics.latency.observe(time.monotonic() - self._started)
        super().finish()


class ProxySite(GuardedSite):
    """The proxy's site: L{ProxyRequest}s on L{GuardedChannel}s."""

    requestFactory = ProxyRequest

    def __init__(self, proxy: Proxy, **kwargs: Any) -> None:
        settings = proxy.settings
        kwargs.setdefault("timeout", proxy.config.limits.idle_timeout)
        kwargs.setdefault("reactor", proxy.reactor)
        super().__init__(None, **kwargs)
        self.proxy = proxy
        self._readTimeout = settings.read_timeout
        self._maxHeaderBytes = settings.max_header_bytes
        self.throttle = HandshakeThrottle(MAX_HANDSHAKES)

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.readTimeout = self._readTimeout
        channel.throttle = self.throttle
        channel.totalHeadersSize = self._maxHeaderBytes
        channel.onRefused = lambda why: self.proxy.metrics.refused.labels(why).inc()
        return channel
