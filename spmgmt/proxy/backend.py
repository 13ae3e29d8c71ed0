# -*- test-case-name: tests.test_proxy_integration -*-
"""
The proxy's side of each SP's web port: persistent TLS connections that
trust only the array CA and expect that SP's certificate, one attempt at a
time, each classified for L{spmgmt.proxy.policy}.

The pool's own retry is off (RELIABILITY H13): every second send is the
policy's decision.  Whether a request "provably never reached" the SP is
known from its body producer: Twisted writes the request head and then
starts the producer, so a producer never started means nothing was written.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from attrs import define
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from twisted.web._newclient import RequestNotSent
from zope.interface import implementer

from spmgmt.config import ArrayConfig
from spmgmt.problem import Problem
from spmgmt.proxy.policy import IDEMPOTENT, Outcome
from spmgmt.proxy.router import Route, Router
from spmgmt.tls import ReloadableClientTLS, clientOptions

_log = Logger()

#: The largest answer (not a stream) the proxy holds before passing it on.
MAX_RESPONSE = 16 * 1024 * 1024


@implementer(IBodyProducer)
class ProvenBody:
    """
    A request body that knows whether Twisted began writing the request:
    L{started} stays false until the head was written to the connection.
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)
        self.started = False

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self.started = True
        if self._body:
            consumer.write(self._body)
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@implementer(IAgentEndpointFactory)
class ArrayEndpoints:
    """
    The endpoint of C{https://<sp id>/...}: that SP's web address, over TLS
    that expects that SP's certificate from the array CA and presents the
    proxy's.
    """

    def __init__(self, reactor: Any, config: ArrayConfig, connectTimeout: float) -> None:
        assert config.proxy is not None
        self._reactor = reactor
        self._timeout = connectTimeout
        proxy = config.proxy
        self._sps = {
            sp.id: (
                sp.web,
                ReloadableClientTLS(
                    lambda spId=sp.id: clientOptions(
                        spId, config.ca, proxy.cert, proxy.key, acceptableProtocols=[b"http/1.1"]
                    ),
                    f"proxy to {sp.id}",
                ),
            )
            for sp in config.sps
        }

    @property
    def tls(self) -> list[ReloadableClientTLS]:
        """The client TLS settings towards each SP (reloaded on SIGHUP)."""
        return [creator for _, creator in self._sps.values()]

    def endpointForURI(self, uri: Any) -> Any:
        address, creator = self._sps[uri.host.decode("ascii")]
        try:
            literal = ipaddress.ip_address(address.host)
        except ValueError:
            tcp: Any = HostnameEndpoint(self._reactor, address.host.encode("idna"), address.port, self._timeout)
        else:
            kind = TCP6ClientEndpoint if literal.version == 6 else TCP4ClientEndpoint
            tcp = kind(self._reactor, address.host, address.port, timeout=self._timeout)
        return wrapClientTLS(creator, tcp)


class ResponseTooLarge(Exception):
    """An SP's answer exceeded L{MAX_RESPONSE}."""


class _Collect(Protocol):
    """A response body, whole, up to a size."""

    def __init__(self, cap: int) -> None:
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())
        self._parts: list[bytes] = []
        self._size = 0
        self._cap = cap

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._cap:
            self._parts = []
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(ResponseTooLarge(f"more than {self._cap} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Any) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)


@define
class Attempt:
    """
    One send of a request to one SP, and what became of it.

    @ivar response: the SP's answer (for ANSWERED and the two refusals).
    @ivar body: its body, read whole, unless it is an event stream.
    @ivar stream: the answer is C{text/event-stream}: its body is to be
        delivered with L{IResponse.deliverBody}, still unread.
    """

    route: Route
    outcome: Outcome
    response: IResponse | None = None
    body: bytes | None = None
    stream: bool = False
    detail: str = ""


def isEventStream(response: IResponse) -> bool:
    values = response.headers.getRawHeaders(b"content-type", [])
    return response.code == 200 and bool(values) and values[0].split(b";")[0].strip().lower() == b"text/event-stream"


def _neverSent(failure: Any, body: ProvenBody | None) -> bool:
    if failure.check(ConnectError, ConnectingCancelledError, DNSLookupError, RequestNotSent):
        return True
    return body is not None and not body.started


class Backends:
    """The proxy's connections to every SP's web port."""

    def __init__(
        self,
        reactor: Any,
        config: ArrayConfig,
        router: Router,
        timeout: float,
        connectTimeout: float = 2.0,
        maxPerSP: int = 256,
        maxInFlight: int = 64,
    ) -> None:
        self._reactor = reactor
        self._router = router
        self._timeout = timeout
        self._ports = {sp.id: sp.web.port for sp in config.sps}
        # Requests released at once by a token move (a thousand held ones)
        # go out a bounded number at a time, so they cannot starve the
        # rest of the proxy's reactor.
        self._slots = DeferredSemaphore(maxInFlight)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        # Never resend on our behalf: the policy alone decides (H13).
        self.pool.retryAutomatically = False
        self.pool.maxPersistentPerHost = maxPerSP
        self.endpoints = ArrayEndpoints(reactor, config, connectTimeout)
        self.agent = Agent.usingEndpointFactory(reactor, self.endpoints, pool=self.pool)

    def url(self, sp: str, target: bytes) -> bytes:
        return b"https://%s:%d%s" % (sp.encode("ascii"), self._ports[sp], target)

    async def attempt(
        self, route: Route, method: bytes, target: bytes, headers: Headers, body: bytes | None
    ) -> Attempt:
        """
        Send the request to the SP of C{route} and classify the result.
        An idempotent request is abandoned (LOST) when a newer epoch
        becomes active meanwhile; every attempt has the upstream deadline.
        """
        await self._slots.acquire()
        try:
            return await self._attempt(route, method, target, headers, body)
        finally:
            self._slots.release()

    async def _attempt(
        self, route: Route, method: bytes, target: bytes, headers: Headers, body: bytes | None
    ) -> Attempt:
        epoch, sp = route
        producer = ProvenBody(body) if body is not None else None
        try:
            d = self.agent.request(method, self.url(sp, target), headers, producer)
        except ValueError as e:
            # Twisted's client refuses bytes it cannot send (H11).
            raise Problem(400, f"The request cannot be forwarded: {e}") from None
        unwatch = self._watch(epoch, method, d)
        d.addTimeout(self._timeout, self._reactor)
        try:
            response = await d
        except Exception as e:
            unwatch()
            failure = Failure(e)
            outcome = Outcome.NOT_SENT if _neverSent(failure, producer) else Outcome.LOST
            return Attempt(route, outcome, detail=_describe(failure))
        if method == b"GET" and isEventStream(response):
            # (A HEAD answer has no body to follow: it is read as usual.)
            unwatch()
            return Attempt(route, Outcome.ANSWERED, response, stream=True)
        collect = _Collect(MAX_RESPONSE)
        response.deliverBody(collect)
        unwatch()
        reading = collect.done
        unwatch = self._watch(epoch, method, reading)
        reading.addTimeout(self._timeout, self._reactor)
        try:
            content = await reading
        except ResponseTooLarge as e:
            return Attempt(route, Outcome.ANSWERED, response, None, detail=str(e))
        except Exception as e:
            return Attempt(route, Outcome.LOST, detail=_describe(Failure(e)))
        finally:
            unwatch()
        return Attempt(route, _classify(response), response, content)

    def _watch(self, epoch: int, method: bytes, d: Deferred[Any]) -> Any:
        if method not in IDEMPOTENT:
            # It may be running on the old active (a planned switchover
            # lets it finish): wait for its answer, up to the deadline.
            return lambda: None
        return self._router.watch(epoch, d.cancel)

    def probe(self, sp: str, timeout: float) -> Deferred[bool]:
        """Whether C{sp}'s web port answers C{GET /healthz} (unstamped)."""
        d = self.agent.request(b"GET", self.url(sp, b"/healthz"))

        def answered(response: IResponse) -> Deferred[bool]:
            collect = _Collect(64 * 1024)
            response.deliverBody(collect)
            return collect.done.addCallback(lambda _: response.code == 200)

        d.addCallback(answered)
        d.addTimeout(timeout, self._reactor)
        return d.addErrback(lambda _: False)


def _classify(response: IResponse) -> Outcome:
    if response.code == 421:
        return Outcome.MISDIRECTED
    if response.code == 503 and response.headers.getRawHeaders(b"x-spmgmt-mode") == [b"service"]:
        return Outcome.SERVICE_MODE
    return Outcome.ANSWERED


def _describe(failure: Any) -> str:
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() or r.type.__name__ for r in reasons)
    if failure.check(CancelledError):
        return "abandoned"
    return failure.getErrorMessage() or failure.type.__name__
