# -*- test-case-name: tests.test_web -*-
"""
The SP's two kinds of web server, over one L{Site}.

The full app serves every route; the service-mode app serves only what is
needed to diagnose and recover an unhealthy SP, and answers every other route
with 503 problem+json naming the mode and the routes that remain.  Both apps
are built from one route table, so a route cannot behave differently in the
two modes by accident.  Switching modes reassigns C{Site.resource}, which
C{getResourceFor} reads on every request: nothing is rebound.
"""

from __future__ import annotations

import json
import time
from urllib.parse import unquote_to_bytes
from typing import Any, Awaitable, Callable

from attrs import frozen
from klein import Klein
from twisted.cred.portal import Portal
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from spmgmt.auth import (
    FailureLimiter,
    Principal,
    authenticate,
)
from spmgmt.commands import InvalidParameters, UnknownCommand, validateParameters
from spmgmt.sp.peers import PeerClient, PeerFailed, PeerRefused, PeerUnavailable
from spmgmt.events import EventBuffer
from spmgmt.metrics import methodLabel
from spmgmt.httpserver import BoundedRequest, GuardedSite
from spmgmt.openapi import documentBytes
from spmgmt.problem import Problem
from spmgmt.sp.agent import FULL, SERVICE, SPAgent
from spmgmt.sp.participant import Participant
from spmgmt.sp.refusals import problemFor, refusal

_log = Logger()
JSON = b"application/json"


@frozen
class Route:
    """
    One route of the management API.

    @ivar role: the least role that may use it, or L{None} for no auth.
    @ivar service: whether the service-mode app serves it too.
    """

    path: str
    method: str
    handler: str
    role: str | None
    service: bool
    #: Long-lived (a stream): fenced when stamped, but a step-down does not
    #: wait for it to end.
    stream: bool = False


ROUTES = (
    Route("/healthz", "GET", "healthz", None, True),
    Route("/metrics", "GET", "metrics", "monitor", True),
    Route("/api/v1/openapi.json", "GET", "openapi", None, True),
    Route("/api/v1/array", "GET", "array", "monitor", True),
    Route("/api/v1/array/switchover", "POST", "switchover", "admin", False),
    Route("/api/v1/events", "GET", "events", "monitor", True),
    Route("/api/v1/events/stream", "GET", "eventStream", "monitor", True, stream=True),
    Route("/api/v1/sps", "GET", "sps", "monitor", False),
    Route("/api/v1/sps/<sp>", "GET", "spSummary", "monitor", False),
    Route("/api/v1/sps/<sp>/status", "GET", "spStatus", "monitor", True),
    Route("/api/v1/sps/<sp>/health", "GET", "spHealth", "monitor", True),
    Route("/api/v1/sps/<sp>/commands/<name>", "POST", "spCommand", "admin", True),
)


def _shielded(d: Deferred[Any]) -> Deferred[Any]:
    """
    A Deferred with C{d}'s result whose cancellation does not cancel C{d}.

    Klein cancels a handler's Deferred when the client disconnects; a
    command or a state change that has started must still finish (and be
    recorded), so the work itself is shielded from that cancellation.
    """
    shield: Deferred[Any] = Deferred(lambda _: None)

    def relay(result: Any) -> None:
        if not shield.called:
            if isinstance(result, Failure):
                shield.errback(result)
            else:
                shield.callback(result)
        elif isinstance(result, Failure):
            _log.failure("work finished with an error after its client left", result)

    d.addBoth(relay)
    return shield


class ManagementWeb:
    """
    The HTTP face of an L{SPAgent}: two Klein apps and the L{Site} that
    serves whichever the agent's health calls for.
    """

    def __init__(
        self,
        agent: SPAgent,
        portal: Portal,
        limiter: FailureLimiter,
        peers: dict[str, PeerClient] | None = None,
        participant: Participant | None = None,
    ) -> None:
        self._agent = agent
        self._peers = peers or {}
        self._participant = participant
        self._portal = portal
        self._limiter = limiter
        self.fullApp = self._buildApp(FULL)
        self.serviceApp = self._buildApp(SERVICE)
        self._resources = {FULL: self.fullApp.resource(), SERVICE: self.serviceApp.resource()}
        self.site = SPSite(self._resources[agent.webServer], agent)
        agent.onModeChange(self._switch)

    def _switch(self, kind: str) -> None:
        self.site.resource = self._resources[kind]

    # -- building the apps ------------------------------------------------

    def _buildApp(self, kind: str) -> Klein:
        app = Klein()
        routes = [r for r in ROUTES if kind == FULL or r.service]
        for route in routes:
            app.route(route.path, methods=[route.method], endpoint=route.handler)(self._wrap(route))
        if kind == SERVICE:
            remaining = [f"{r.method} {r.path}" for r in routes]

            def serviceOnly(request: Any, rest: str = "") -> bytes:
                request.spmgmtRoute = "(service mode)"
                raise Problem(
                    503,
                    "This SP is unhealthy and serves only the service-mode web server.",
                    title="Service mode",
                    mode=SERVICE,
                    routes=remaining,
                    # For the proxy: nothing was done; the token is moving.
                    headers={b"X-SPMgmt-Mode": SERVICE.encode()},
                )

            methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
            app.route("/", methods=methods, endpoint="serviceOnlyRoot")(serviceOnly)
            app.route("/<path:rest>", methods=methods, endpoint="serviceOnly")(serviceOnly)
        app.handle_errors(Exception)(self._renderError)
        return app

    def _wrap(self, route: Route) -> Callable[..., Deferred[bytes]]:
        handler: Callable[..., Awaitable[Any]] = getattr(self, "_" + route.handler)

        async def serve(request: Any, **kwargs: Any) -> bytes:
            request.spmgmtRoute = route.path
            principal = None
            if route.role is not None:
                principal = await self._authenticate(request, route.role)
            stamp = _epochStamp(request)
            if stamp is None or route.role is None:
                result = await handler(request, principal, **kwargs)
            elif route.stream:
                self._fence(stamp)
                result = await handler(request, principal, **kwargs)
            else:
                result = await self._asActive(request, stamp, handler(request, principal, **kwargs))
            if not isinstance(result, bytes):
                request.setHeader(b"Content-Type", JSON)
                request.setHeader(b"Cache-Control", b"no-store")
                result = json.dumps(result).encode("utf-8")
            if not route.stream:
                # A length, not chunks: easier to read in openssl s_client.
                request.setHeader(b"Content-Length", str(len(result)).encode())
            return result

        def endpoint(request: Any, **kwargs: Any) -> Deferred[bytes]:
            return Deferred.fromCoroutine(serve(request, **kwargs))

        return endpoint

    def _holdActive(self, request: Any, work: Deferred[Any]) -> Deferred[Any]:
        """
        For a stamped (active-role) request, count C{work} as in flight
        until it ends, even if its client leaves first: a step-down waits
        for the command itself, not for the connection.
        """
        if _epochStamp(request) is None:
            return work
        self._agent.beginActive()

        def ended(result: Any) -> Any:
            self._agent.endActive()
            return result

        return work.addBoth(ended)

    def _fence(self, epoch: int) -> None:
        """421 unless this SP holds exactly C{epoch} as active."""
        agent = self._agent
        if not agent.servesEpoch(epoch):
            raise Problem(
                421,
                f"{agent.sp.id} does not hold epoch {epoch} as active.",
                title="Misdirected Request",
                sp=agent.sp.id,
                role=agent.role,
                epoch=agent.epoch,
            )

    async def _asActive(self, request: Any, epoch: int, work: Awaitable[Any]) -> Any:
        """
        Serve a request the proxy stamped with C{epoch} only while this SP
        holds exactly that epoch as active (fencing); a step-down waits for
        it to finish.
        """
        try:
            self._fence(epoch)
        except Problem:
            close = getattr(work, "close", None)
            if close is not None:
                close()  # never started: no "never awaited" warning
            raise
        agent = self._agent
        agent.beginActive()
        try:
            request.setHeader(b"X-SPMgmt-Epoch", str(epoch).encode())
            return await work
        finally:
            agent.endActive()

    def _renderError(self, request: Any, failure: Failure) -> bytes | None:
        if failure.check(CancelledError):
            return None
        problem = failure.value if failure.check(Problem) else _problemFor(failure, request)
        return problem.render(request)

    async def _authenticate(self, request: Any, role: str) -> Principal:
        return await authenticate(self._portal, self._limiter, request, role)

    def _isSelf(self, sp: str) -> bool:
        """Whether C{sp} is this SP; 404 if it is no SP of the array."""
        if sp == self._agent.sp.id:
            return True
        if sp in self._peers:
            return False
        known = [s.id for s in self._agent.config.sps]
        raise Problem(404, f"There is no SP {sp!r} in this array.", sp=sp, known=known)

    def _local(self, value: dict[str, Any]) -> dict[str, Any]:
        return {**value, "collected_by": self._agent.sp.id, "via": self._agent.sp.id}

    async def _relay(self, sp: str, method: str, *args: Any, timeout: float | None = None) -> dict[str, Any]:
        """
        Ask the peer C{sp} over PB; its answer with C{collected_by} and
        C{via}.  A peer that does not answer within the peer timeout gives
        504 with the last known state and its age, never a hang.
        """
        client = self._peers[sp]
        via = self._agent.sp.id
        try:
            # Shielded: a client that leaves must not cancel the PB call
            # (nor be mistaken for a hung peer).
            value = await _shielded(Deferred.fromCoroutine(client.call(method, *args, timeout=timeout)))
        except PeerUnavailable as e:
            known = client.lastKnown(method)
            if known is None and client.lastSummary is not None and client.lastSeen is not None:
                known = (client.lastSummary, self._agent.monotonic() - client.lastSeen)
            raise Problem(
                504,
                f"{sp} did not answer: {e.detail}.",
                title="Peer unavailable",
                sp=sp,
                via=via,
                last_known=known[0] if known else None,
                age_s=round(known[1], 3) if known else None,
            ) from None
        except PeerRefused as e:
            raise problemFor(e.error, _serviceRoutes(), sp=sp, via=via) from None
        except PeerFailed as e:
            raise Problem(502, f"{sp} failed to answer: {e.detail}", sp=sp, via=via) from None
        if not isinstance(value, dict):
            raise Problem(502, f"{sp} answered {method} with something unexpected.", sp=sp, via=via)
        return {**value, "collected_by": sp, "via": via}

    def _peerEntry(self, client: PeerClient) -> dict[str, Any]:
        summary = client.lastSummary or {"id": client.peer}
        lastSeen = client.lastSeen
        return {
            "id": client.peer,
            "role": summary.get("role"),
            "healthy": summary.get("healthy"),
            "web_server": summary.get("web_server"),
            "epoch": summary.get("epoch"),
            "reachable": client.reachable(),
            "last_seen_s": None if lastSeen is None else round(self._agent.monotonic() - lastSeen, 3),
        }

    # -- handlers ------------------------------------------------------------

    async def _healthz(self, request: Any, principal: None) -> dict[str, Any]:
        return {"status": "ok", "sp": self._agent.sp.id, "web_server": self._agent.webServer}

    async def _metrics(self, request: Any, principal: Principal) -> bytes:
        contentType, body = self._agent.metrics.exposition()
        request.setHeader(b"Content-Type", contentType)
        return body

    async def _openapi(self, request: Any, principal: None) -> bytes:
        request.setHeader(b"Content-Type", JSON)
        request.setHeader(b"Cache-Control", b"no-cache")
        return documentBytes()

    async def _array(self, request: Any, principal: Principal) -> dict[str, Any]:
        agent = self._agent
        view = agent.arrayView or {}
        members = view.get("members", {})
        arbiterFresh = (
            agent.roleState.lastHeard is not None
            and agent.monotonic() - agent.roleState.lastHeard <= max(agent.lease, 1.0)
        )
        entries = []
        for sp in agent.config.sps:
            if sp.id == agent.sp.id:
                entry = {**agent.summary(), "reachable": True}
            elif sp.id in self._peers:
                entry = self._peerEntry(self._peers[sp.id])
                if not entry["reachable"]:
                    entry["role"] = "unknown"
            else:
                entry = {"id": sp.id}
            member = members.get(sp.id)
            entry["arbiter_connected"] = bool(member and member.get("connected"))
            entries.append(entry)
        return {
            "name": agent.config.name,
            "state": view.get("state", "unknown") if arbiterFresh else "unknown",
            "token": view.get("token"),
            "last_move": view.get("last_move"),
            "arbiter": {"reachable": arbiterFresh},
            "sps": entries,
            "via": agent.sp.id,
        }

    async def _switchover(self, request: Any, principal: Principal) -> dict[str, Any]:
        agent = self._agent
        to = _jsonBody(request).get("to")
        if to is not None and (not isinstance(to, str) or to not in {s.id for s in agent.config.sps}):
            raise Problem(422, "to must name an SP of the array.", problems={"to": "unknown SP"})
        if not agent.isActive():
            raise Problem(409, f"Switchover is asked of the active SP; {agent.sp.id} is {agent.role}.")
        if self._participant is None:
            raise Problem(503, "No arbiter is configured.")
        try:
            reply = await _shielded(Deferred.fromCoroutine(self._participant.switchover(to)))
        except CancelledError:
            raise
        except Exception:
            _log.failure("switchover through the arbiter failed")
            raise Problem(504, "The arbiter did not confirm the switchover; see the SP's log.") from None
        if "error" in reply:
            refused = reply["error"] if isinstance(reply["error"], dict) else {}
            code = 504 if refused.get("kind") == "switchover_unconfirmed" else 409
            raise Problem(code, str(refused.get("detail", "refused")), refusal=refused.get("kind"))
        _log.info("{user} switched the token over: {view}", user=principal.name, view=reply["ok"])
        return {"via": agent.sp.id, **reply["ok"]}

    async def _events(self, request: Any, principal: Principal) -> dict[str, Any]:
        since = _intArg(request, b"since", 0)
        limit = min(_intArg(request, b"limit", 1000), 1000)
        events = self._agent.events.since(since, limit=limit)
        return {"events": events, "last_id": self._agent.events.lastId, "via": self._agent.sp.id}

    async def _eventStream(self, request: Any, principal: Principal) -> bytes:
        if request.method == b"HEAD":
            # The head of a stream, then done: a stream would hold the
            # connection for ever with nothing it may send.
            request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-store")
            return b""
        # A malformed since is refused even when Last-Event-ID overrides it.
        since = _intArg(request, b"since", 0)
        raw = request.getHeader(b"last-event-id")
        if raw is not None and raw.isdigit() and len(raw) < 19:
            since = int(raw)
        stream = EventStream(request, self._agent.events, since, self._agent.reactor)
        await stream.done
        return b""

    async def _sps(self, request: Any, principal: Principal) -> dict[str, Any]:
        me = {**self._agent.summary(), "reachable": True, "last_seen_s": 0.0}
        entries = {self._agent.sp.id: me}
        entries.update({peer: self._peerEntry(client) for peer, client in self._peers.items()})
        return {
            "via": self._agent.sp.id,
            "sps": [entries[sp.id] for sp in self._agent.config.sps if sp.id in entries],
        }

    async def _spSummary(self, request: Any, principal: Principal, sp: str) -> dict[str, Any]:
        if self._isSelf(sp):
            return self._local(self._agent.summary())
        return await self._relay(sp, "summary")

    async def _spStatus(self, request: Any, principal: Principal, sp: str) -> dict[str, Any]:
        if self._isSelf(sp):
            return self._local(await Deferred.fromCoroutine(self._agent.status()))
        return await self._relay(sp, "status")

    async def _spHealth(self, request: Any, principal: Principal, sp: str) -> dict[str, Any]:
        if self._isSelf(sp):
            return self._local(self._agent.health())
        return await self._relay(sp, "health")

    async def _spCommand(
        self, request: Any, principal: Principal, sp: str, name: str
    ) -> dict[str, Any]:
        params = _jsonBody(request).get("params", {})
        if self._isSelf(sp):
            running = self._holdActive(request, self._agent.runCommand(name, params))
            result = (await _shielded(running)).asJSON()
            result = self._local(result)
        else:
            # This SP's own mode still limits what it relays; the peer then
            # applies its own rules.  The array shares one configuration: an
            # unknown command (404) or invalid parameters (422) are refused
            # here as the peer would refuse them, and only checked values
            # cross to the peer (raw JSON could be what PB cannot carry: a
            # huge integer, a nesting so deep that the peer drops the link).
            if not self._agent.healthy:
                self._agent.checkAllowed(self._agent.command(name))
            try:
                command = self._agent.command(name)
                values = validateParameters(command, params)
            except (UnknownCommand, InvalidParameters) as e:
                refused = refusal(e)
                assert refused is not None
                raise problemFor(refused, _serviceRoutes(), sp=sp, via=self._agent.sp.id) from None
            # The peer may run it for its whole timeout, then kill it.
            wait = command.timeout + command.kill_grace + self._agent.config.peer.timeout
            relayed = self._relay(sp, "runCommand", name, values, self._agent.epoch, timeout=wait)
            result = await _shielded(self._holdActive(request, Deferred.fromCoroutine(relayed)))
        _log.info(
            "{user} ran {command} on {sp} via {via}: rc={rc}",
            user=principal.name,
            command=name,
            sp=sp,
            via=self._agent.sp.id,
            rc=result.get("rc"),
        )
        return result


def _serviceRoutes() -> list[str]:
    return [f"{r.method} {r.path}" for r in ROUTES if r.service]


def _intArg(request: Any, name: bytes, default: int) -> int:
    """A non-negative integer query argument; 400 if malformed."""
    values = request.args.get(name)
    if not values:
        return default
    raw = values[0]
    if not raw.isdigit() or len(raw) > 18:
        raise Problem(400, f"{name.decode()} must be a non-negative integer.")
    return int(raw)


@implementer(IPushProducer)
class EventStream:
    """
    One client's C{text/event-stream}: the backlog after C{since}, then each
    new event, with a comment every 15 s so idle proxies keep it open.

    Flow control: the request's transport pauses this producer when the
    client reads slowly; events then wait in a queue, and a client that
    falls C{maxQueued} events behind is dropped rather than buffered for.

    Each id goes out at most once and only above C{since}: a copy that is
    still catching up announces events the client already has.  Ids are
    consecutive, so a jump means events this SP no longer holds (a resume
    from further back than its bounded history): the client is told so
    with a C{gap} message (no id) rather than left to guess.
    """

    keepalive = 15.0
    maxQueued = 1000

    def __init__(self, request: Any, events: EventBuffer, since: int, clock: Any) -> None:
        self._request = request
        self._clock = clock
        self._paused = False
        self._queue: list[dict[str, Any]] = []
        self._lastSent = since
        self.done: Deferred[None] = Deferred(lambda d: self._close())
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.registerProducer(self, True)
        request.write(b": spmgmt event stream\n\n")
        self._unlisten = events.listen(self._arrived)
        for event in events.since(since):
            self._send(event)
        self._ping = clock.callLater(self.keepalive, self._keepalive)
        request.notifyFinish().addBoth(lambda _: self._close())

    def _arrived(self, event: dict[str, Any]) -> None:
        if self._paused:
            self._queue.append(event)
            if len(self._queue) > self.maxQueued:
                _log.warn("dropping a slow event-stream client")
                self._request.channel.transport.abortConnection()
            return
        self._send(event)

    def _send(self, event: dict[str, Any]) -> None:
        if event["id"] <= self._lastSent:
            return
        if self._lastSent and event["id"] > self._lastSent + 1:
            gap = {
                "kind": "gap",
                "after": self._lastSent,
                "next": event["id"],
                "detail": f"the events after {self._lastSent} and before {event['id']} are no longer held here",
            }
            self._request.write(f"event: gap\ndata: {json.dumps(gap)}\n\n".encode())
        self._lastSent = event["id"]
        kind = str(event.get("kind", "event")).replace("\n", " ")
        self._request.write(
            f"id: {event['id']}\nevent: {kind}\ndata: {json.dumps(event, default=str)}\n\n".encode()
        )

    def _keepalive(self) -> None:
        if not self._paused:
            self._request.write(b": keepalive\n\n")
        self._ping = self._clock.callLater(self.keepalive, self._keepalive)

    def _close(self) -> None:
        self._unlisten()
        if self._request.producer is self:
            self._request.unregisterProducer()
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = None
        if not self.done.called:
            self.done.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        queued, self._queue = self._queue, []
        for event in queued:
            self._send(event)

    def stopProducing(self) -> None:
        self._close()


def _epochStamp(request: Any) -> int | None:
    """The proxy's C{X-SPMgmt-Epoch} stamp, if any; 400 if malformed."""
    raw = request.getHeader(b"x-spmgmt-epoch")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise Problem(400, "X-SPMgmt-Epoch must be a non-negative integer.")
    return int(raw)


def _jsonBody(request: Any) -> dict[str, Any]:
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Problem(400, "The request body is not JSON (or is nested too deeply).") from None
    if not isinstance(body, dict):
        raise Problem(400, "The request body must be a JSON object.")
    return body


def _problemFor(failure: Failure, request: Any) -> Problem:
    """Map an exception to its problem; the one place that does it."""
    e = failure.value
    if isinstance(e, NotFound):
        return Problem(404, "There is no such route.")
    if isinstance(e, MethodNotAllowed):
        allowed = ", ".join(sorted(e.valid_methods or []))
        return Problem(
            405, f"Use {allowed}.", headers={b"Allow": allowed.encode()}, allowed=sorted(e.valid_methods or [])
        )
    if isinstance(e, HTTPException):
        return Problem(e.code or 400, e.description or "Bad request.")
    refused = refusal(e)
    if refused is not None:
        return problemFor(refused, _serviceRoutes())
    _log.failure("unexpected error answering {path}", failure, path=getattr(request, "path", b"?"))
    return Problem(500, "An internal error occurred; it has been logged.")


class SPRequest(BoundedRequest):
    """
    A request of an SP's site: stamps C{X-SPMgmt-Served-By}, bounds the body,
    and records metrics when it is done.
    """

    spmgmtRoute = "(unmatched)"

    def maxBody(self) -> int:
        return self.channel.site.agent.config.limits.max_body  # type: ignore[no-any-return]

    def refusedBody(self) -> dict[bytes, bytes]:
        agent = self.channel.site.agent
        agent.metrics.requests.labels("(body too large)", "?", "413").inc()
        return {b"X-SPMgmt-Served-By": agent.sp.id.encode()}

    def process(self) -> None:
        if self._tooLarge:
            return
        self._started = time.monotonic()
        self.setHeader(b"X-SPMgmt-Served-By", self.channel.site.agent.sp.id.encode())
        try:
            unquote_to_bytes(self.path).decode("utf-8")
        except UnicodeDecodeError:
            self.write(Problem(400, "The URL is not UTF-8.").render(self))
            self.finish()
            return
        super().process()

    def finish(self) -> None:
        metrics = self.channel.site.agent.metrics if self.channel is not None else None
        if metrics is not None and hasattr(self, "_started"):
            metrics.requests.labels(self.spmgmtRoute, methodLabel(self.method), str(self.code)).inc()
            metrics.latency.labels(self.spmgmtRoute).observe(time.monotonic() - self._started)
        super().finish()


class SPSite(GuardedSite):
    """
    The SP's site.  Tracebacks are never displayed (the default, kept on
    purpose); C{resource} is swapped between the two apps.
    """

    requestFactory = SPRequest

    def __init__(self, resource: Any, agent: SPAgent, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", agent.config.limits.idle_timeout)
        kwargs.setdefault("reactor", agent.reactor)
        super().__init__(resource, **kwargs)
        self.agent = agent

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.readTimeout = self.agent.config.limits.read_timeout
        return channel
