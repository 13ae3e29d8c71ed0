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
from typing import Any, Awaitable, Callable

from attrs import frozen
from klein import Klein
from twisted.cred.error import LoginFailed
from twisted.cred.portal import Portal
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from spmgmt.auth import (
    BadAuthorizationHeader,
    FailureLimiter,
    IPrincipal,
    Principal,
    credentialsFromHeader,
)
from spmgmt.commands import InvalidParameters, UnknownCommand
from spmgmt.problem import Problem
from spmgmt.sp.agent import FULL, SERVICE, NotInServiceMode, RequiresActive, SPAgent

_log = Logger()
_CHALLENGE = b'Basic realm="spmgmt", charset="UTF-8", Bearer realm="spmgmt"'
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


ROUTES = (
    Route("/healthz", "GET", "healthz", None, True),
    Route("/metrics", "GET", "metrics", "monitor", True),
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

    def __init__(self, agent: SPAgent, portal: Portal, limiter: FailureLimiter) -> None:
        self._agent = agent
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
            result = await handler(request, principal, **kwargs)
            if isinstance(result, bytes):
                return result
            request.setHeader(b"Content-Type", JSON)
            request.setHeader(b"Cache-Control", b"no-store")
            return json.dumps(result).encode("utf-8")

        def endpoint(request: Any, **kwargs: Any) -> Deferred[bytes]:
            return Deferred.fromCoroutine(serve(request, **kwargs))

        return endpoint

    def _renderError(self, request: Any, failure: Failure) -> bytes | None:
        if failure.check(CancelledError):
            return None
        problem = failure.value if failure.check(Problem) else _problemFor(failure, request)
        return problem.render(request)

    async def _authenticate(self, request: Any, role: str) -> Principal:
        peer = getattr(request.getClientAddress(), "host", "unknown")
        wait = self._limiter.retryAfter(peer)
        if wait is not None:
            raise Problem(
                429,
                "Too many failed logins from this address.",
                headers={b"Retry-After": str(int(wait) + 1).encode()},
            )
        unauthorized = {b"WWW-Authenticate": _CHALLENGE}
        try:
            credentials = credentialsFromHeader(request.getHeader(b"authorization"))
        except BadAuthorizationHeader as e:
            self._limiter.failed(peer)
            raise Problem(401, str(e), headers=unauthorized) from None
        if credentials is None:
            raise Problem(401, "Credentials are required.", headers=unauthorized)
        try:
            _, principal, _ = await self._portal.login(credentials, None, IPrincipal)
        except LoginFailed:
            self._limiter.failed(peer)
            raise Problem(401, "The credentials were not accepted.", headers=unauthorized) from None
        if not principal.mayAct(role):
            raise Problem(403, f"This needs the {role} role; {principal.name} is {principal.role}.")
        return principal

    def _ownId(self, sp: str) -> None:
        if sp == self._agent.sp.id:
            return
        known = [s.id for s in self._agent.config.sps]
        if sp in known:
            raise Problem(404, f"This SP answers only for itself ({self._agent.sp.id}).", sp=sp)
        raise Problem(404, f"There is no SP {sp!r} in this array.", sp=sp, known=known)

    # -- handlers ------------------------------------------------------------

    async def _healthz(self, request: Any, principal: None) -> dict[str, Any]:
        return {"status": "ok", "sp": self._agent.sp.id, "web_server": self._agent.webServer}

    async def _metrics(self, request: Any, principal: Principal) -> bytes:
        contentType, body = self._agent.metrics.exposition()
        request.setHeader(b"Content-Type", contentType)
        return body

    async def _spSummary(self, request: Any, principal: Principal, sp: str) -> dict[str, Any]:
        self._ownId(sp)
        return self._agent.summary()

    async def _spStatus(self, request: Any, principal: Principal, sp: str) -> dict[str, Any]:
        self._ownId(sp)
        return await Deferred.fromCoroutine(self._agent.status())

    async def _spHealth(self, request: Any, principal: Principal, sp: str) -> dict[str, Any]:
        self._ownId(sp)
        return self._agent.health()

    async def _spCommand(
        self, request: Any, principal: Principal, sp: str, name: str
    ) -> dict[str, Any]:
        self._ownId(sp)
        params = _jsonBody(request).get("params", {})
        result = await _shielded(self._agent.runCommand(name, params))
        _log.info(
            "{user} ran {command} on {sp}: rc={rc}",
            user=principal.name,
            command=name,
            sp=sp,
            rc=result.rc,
        )
        return result.asJSON()


def _jsonBody(request: Any) -> dict[str, Any]:
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "The request body is not JSON.") from None
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
    if isinstance(e, UnknownCommand):
        return Problem(404, f"There is no command {e.name!r}.", command=e.name)
    if isinstance(e, InvalidParameters):
        return Problem(422, "The parameters are not valid.", problems=e.problems)
    if isinstance(e, NotInServiceMode):
        return Problem(
            503,
            f"This SP is in service mode; {e.name!r} is not a service command.",
            title="Service mode",
            mode=SERVICE,
            routes=[f"{r.method} {r.path}" for r in ROUTES if r.service],
        )
    if isinstance(e, RequiresActive):
        return Problem(409, f"{e.name!r} runs only on the active SP.", command=e.name)
    _log.failure("unexpected error answering {path}", failure, path=getattr(request, "path", b"?"))
    return Problem(500, "An internal error occurred; it has been logged.")


class SPRequest(Request):
    """
    A request of an SP's site: stamps C{X-SPMgmt-Served-By}, bounds the body,
    and records metrics when it is done.
    """

    spmgmtRoute = "(unmatched)"
    _tooLarge = False

    def gotLength(self, length: int | None) -> None:
        self._bodyBytes = 0
        if length is not None and length > self.channel.site.agent.config.limits.max_body:
            self._refuseBody()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._tooLarge:
            return
        self._bodyBytes += len(data)
        if self._bodyBytes > self.channel.site.agent.config.limits.max_body:
            self._refuseBody()
            return
        super().handleContentChunk(data)

    def _refuseBody(self) -> None:
        """
        Answer 413 at once and close: waiting for (and storing) a body that
        will be refused anyway is what an attacker wants.
        """
        self._tooLarge = True
        limit = self.channel.site.agent.config.limits.max_body
        body = json.dumps(
            Problem(413, f"The request body is larger than {limit} bytes.").asJSON()
        ).encode()
        head = (
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: application/problem+json\r\n"
            b"X-SPMgmt-Served-By: " + self.channel.site.agent.sp.id.encode() + b"\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        self.channel.transport.write(head + body)
        self.channel.transport.loseConnection()
        self.channel.site.agent.metrics.requests.labels("(body too large)", "?", "413").inc()

    def process(self) -> None:
        if self._tooLarge:
            return
        self._started = time.monotonic()
        self.setHeader(b"X-SPMgmt-Served-By", self.channel.site.agent.sp.id.encode())
        try:
            self.path.decode("utf-8")
        except UnicodeDecodeError:
            self.write(Problem(400, "The URL is not UTF-8.").render(self))
            self.finish()
            return
        super().process()

    def finish(self) -> None:
        metrics = self.channel.site.agent.metrics if self.channel is not None else None
        if metrics is not None and hasattr(self, "_started"):
            method = self.method.decode("ascii", "replace") if self.method else "?"
            metrics.requests.labels(self.spmgmtRoute, method, str(self.code)).inc()
            metrics.latency.labels(self.spmgmtRoute).observe(time.monotonic() - self._started)
        super().finish()


class SPSite(Site):
    """
    The SP's site.  Tracebacks are never displayed (the default, kept on
    purpose); C{resource} is swapped between the two apps.
    """

    requestFactory = SPRequest
    displayTracebacks = False

    def __init__(self, resource: Any, agent: SPAgent, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", agent.config.limits.idle_timeout)
        super().__init__(resource, **kwargs)
        self.agent = agent
