# -*- test-case-name: tests.test_web -*-
"""
Tests for L{spmgmt.sp.web} and L{spmgmt.problem}: the SP's site driven with
raw HTTP bytes over memory transports, no sockets and no real time.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import shutil
import tempfile
from typing import Any

from attrs import define
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from spmgmt.auth import BearerTokenChecker, FailureLimiter, RoleRealm, portalFromConfig
from spmgmt.commands import CommandResult
from spmgmt.config import ArrayConfig
from spmgmt.problem import CONTENT_TYPE, Problem
from spmgmt.sp.agent import FULL, SPAgent
from spmgmt.sp.web import ROUTES, ManagementWeb, SPSite, _shielded
from spmgmt.testing import ArrayHarness

PROBLEM = "application/problem+json"
PEER = IPv4Address("TCP", "192.0.2.7", 40000)
SERVICE_ROUTES = [
    "GET /healthz",
    "GET /metrics",
    "GET /api/v1/openapi.json",
    "GET /api/v1/array",
    "GET /api/v1/events",
    "GET /api/v1/events/stream",
    "GET /api/v1/sps/<sp>/status",
    "GET /api/v1/sps/<sp>/health",
    "POST /api/v1/sps/<sp>/commands/<name>",
]

_harness: ArrayHarness | None = None


def arrayHarness() -> ArrayHarness:
    """
    A harness (configuration, PKI, secrets; nothing started) for spa and spb,
    made once per run: it is only read.
    """
    global _harness
    if _harness is None:
        directory = tempfile.mkdtemp(prefix="spmgmt-test-web-")
        atexit.register(shutil.rmtree, directory, True)
        _harness = ArrayHarness(MemoryReactorClock(), directory, spIds=("spa", "spb"))
    assert _harness is not None
    return _harness


def arrayConfig() -> ArrayConfig:
    return arrayHarness().config


def basicAuth(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


ADMIN = basicAuth("admin", "admin-pw")
MONITOR = basicAuth("monitor", "monitor-pw")


def memoryPortal() -> Portal:
    """A portal whose checks answer at once: two users and an admin token."""
    return Portal(
        RoleRealm({"admin": "admin", "monitor": "monitor", "ci": "admin"}),
        [
            InMemoryUsernamePasswordDatabaseDontUse(admin=b"admin-pw", monitor=b"monitor-pw"),
            BearerTokenChecker({"ci": hashlib.sha256(b"ci-token").hexdigest()}),
        ],
    )


@define
class Response:
    """One HTTP response read back from a transport."""

    code: int
    reason: bytes
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def parseResponses(data: bytes, head: bool = False) -> list[Response]:
    """
    Split what a server wrote into responses (Content-Length, chunked, or to
    the end of the data); C{head} if every request was a HEAD.
    """
    responses = []
    while data:
        headBytes, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {headBytes!r}"
        statusLine, *headerLines = headBytes.split(b"\r\n")
        version, code, reason = statusLine.split(b" ", 2)
        assert version == b"HTTP/1.1", statusLine
        headers: dict[bytes, list[bytes]] = {}
        for line in headerLines:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        if head or code in (b"100", b"204", b"304"):
            body = b""
        elif b"content-length" in headers:
            length = int(headers[b"content-length"][0])
            body, data = data[:length], data[length:]
        elif headers.get(b"transfer-encoding") == [b"chunked"]:
            body = b""
            while True:
                size, _, data = data.partition(b"\r\n")
                n = int(size, 16)
                body += data[:n]
                assert data[n : n + 2] == b"\r\n"
                data = data[n + 2 :]
                if n == 0:
                    break
        else:
            body, data = data, b""
        responses.append(Response(int(code), reason, headers, body))
    return responses


def request(
    method: bytes,
    path: bytes,
    headers: dict[bytes, bytes] | None = None,
    body: bytes | None = None,
) -> bytes:
    """The bytes of one HTTP/1.1 request."""
    allHeaders = {b"Host": b"spa"}
    if body is not None:
        allHeaders[b"Content-Length"] = str(len(body)).encode()
    allHeaders.update(headers or {})
    lines = [method + b" " + path + b" HTTP/1.1"] + [k + b": " + v for k, v in allHeaders.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


class ManualRunAgent(SPAgent):
    """
    An agent whose commands, once validated and allowed, wait for the test
    to finish them instead of spawning a process.
    """

    def startRecording(self) -> None:
        self.runs: list[tuple[str, list[str], Deferred[CommandResult]]] = []
        self.cancelled: list[str] = []

    async def _run(self, command: Any, argv: list[str]) -> CommandResult:
        if command.name == "status":
            return result("status", rc=0, stdout="status output")
        d: Deferred[CommandResult] = Deferred(lambda _: self.cancelled.append(command.name))
        self.runs.append((command.name, argv, d))
        outcome = await d
        self.metrics.commandRuns.labels(command.name, "ok").inc()
        return outcome


def result(name: str, rc: int = 0, stdout: str = "") -> CommandResult:
    return CommandResult(name, (name,), rc, None, stdout, "", 0.5, False, False)


class WebTestCase(SynchronousTestCase):
    """Base: an SP agent for spa, its web face and a way to talk HTTP to it."""

    def setUpWeb(self, portal: Portal | None = None, healthy: bool = True, maxFailures: int = 10) -> None:
        self.clock = MemoryReactorClock()
        config = arrayConfig()
        self.agent = ManualRunAgent(self.clock, config, config.sp("spa"), healthy=healthy)
        self.agent.startRecording()
        self.limiter = FailureLimiter(self.clock, maxFailures=maxFailures)
        self.web = ManagementWeb(self.agent, portal or memoryPortal(), self.limiter)
        # SPSite takes the global reactor for connection timeouts unless told
        # otherwise (see SiteTests.test_siteUsesAgentReactor).
        self.web.site.reactor = self.clock
        self.maxBody = config.limits.max_body

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.web.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, data: bytes, head: bool = False) -> list[Response]:
        """Send C{data} on a new connection; the responses written so far."""
        protocol, transport = self.connect()
        protocol.dataReceived(data)
        return parseResponses(transport.value(), head)

    def get(self, path: bytes, auth: bytes | None = None, method: bytes = b"GET", body: bytes | None = None) -> Response:
        headers = {b"Authorization": auth} if auth is not None else {}
        [response] = self.exchange(request(method, path, headers, body))
        return response

    def assertProblem(self, response: Response, status: int) -> dict[str, Any]:
        self.assertEqual(response.code, status)
        self.assertEqual(response.header(b"Content-Type"), PROBLEM.encode())
        self.assertEqual(response.header(b"X-SPMgmt-Served-By"), b"spa")
        problem = response.json()
        self.assertEqual(problem["status"], status)
        self.assertEqual(problem["type"], "about:blank")
        self.assertIsInstance(problem["detail"], str)
        return problem

    def sample(self, name: str, **labels: str) -> float | None:
        return self.agent.metrics.registry.get_sample_value(name, labels)


class ModeSwitchTests(WebTestCase):
    """The site serves the full app while healthy and the service app while not."""

    def setUp(self) -> None:
        self.setUpWeb()

    def test_healthyServesFullApp(self) -> None:
        """A healthy SP serves the full app: full-only routes answer."""
        self.assertEqual(self.agent.webServer, FULL)
        self.assertEqual(self.get(b"/api/v1/sps/spa", MONITOR).code, 200)
        self.assertEqual(self.get(b"/healthz").json()["web_server"], "full")

    def test_swapAndBack(self) -> None:
        """
        C{healthChanged(False)} swaps the same site's resource to the service
        app and C{healthChanged(True)} swaps the original resource back.
        """
        site = self.web.site
        full = site.resource
        self.agent.healthChanged(False)
        self.assertIs(self.web.site, site)
        service = site.resource
        self.assertIsNot(service, full)
        self.assertEqual(self.get(b"/api/v1/sps/spa", MONITOR).code, 503)
        self.assertEqual(self.get(b"/healthz").json()["web_server"], "service")
        self.agent.healthChanged(True)
        self.assertIs(self.web.site, site)
        self.assertIs(site.resource, full)
        self.assertEqual(self.get(b"/api/v1/sps/spa", MONITOR).code, 200)
        self.agent.healthChanged(False)
        self.assertIs(site.resource, service)

    def test_openConnectionFollowsSwap(self) -> None:
        """A connection opened before the swap gets the new app on its next request."""
        protocol, transport = self.connect()
        protocol.dataReceived(request(b"GET", b"/api/v1/sps/spa", {b"Authorization": MONITOR}))
        self.agent.healthChanged(False)
        protocol.dataReceived(request(b"GET", b"/api/v1/sps/spa", {b"Authorization": MONITOR}))
        self.assertEqual([r.code for r in parseResponses(transport.value())], [200, 503])

    def test_startsUnhealthy(self) -> None:
        """A web face built for an agent that is already unhealthy serves the service app."""
        self.setUpWeb(healthy=False)
        self.assertEqual(self.get(b"/api/v1/sps/spa", MONITOR).code, 503)
        self.agent.healthChanged(True)
        self.assertEqual(self.get(b"/api/v1/sps/spa", MONITOR).code, 200)


class RoutesTests(WebTestCase):
    """The route table and the two apps built from it."""

    def test_serviceRoutes(self) -> None:
        """The service-mode routes are healthz, metrics, the API description, array, events, status, health and commands."""
        self.assertEqual(
            sorted(r.handler for r in ROUTES if r.service),
            ["array", "eventStream", "events", "healthz", "metrics", "openapi", "spCommand", "spHealth", "spStatus"],
        )
        self.assertEqual([f"{r.method} {r.path}" for r in ROUTES if r.service], SERVICE_ROUTES)

    def test_roles(self) -> None:
        """Only healthz and the API description are open; commands and switchover need admin; every other route needs monitor."""
        roles = {r.handler: r.role for r in ROUTES}
        self.assertEqual(
            roles,
            {
                "healthz": None,
                "metrics": "monitor",
                "openapi": None,
                "array": "monitor",
                "switchover": "admin",
                "events": "monitor",
                "eventStream": "monitor",
                "sps": "monitor",
                "spSummary": "monitor",
                "spStatus": "monitor",
                "spHealth": "monitor",
                "spCommand": "admin",
            },
        )

    def test_appsFromTable(self) -> None:
        """The full app routes every route; the service app the service routes plus its catch-all."""
        self.setUpWeb()
        full = {rule.rule for rule in self.web.fullApp.url_map.iter_rules()}
        service = {rule.rule for rule in self.web.serviceApp.url_map.iter_rules()}
        self.assertEqual(full, {r.path for r in ROUTES})
        self.assertEqual(service, {r.path for r in ROUTES if r.service} | {"/", "/<path:rest>"})


class ServiceModeTests(WebTestCase):
    """What the service-mode app answers."""

    def setUp(self) -> None:
        self.setUpWeb()
        self.agent.healthChanged(False)

    def test_otherRoutes503(self) -> None:
        """
        Routes the service app does not serve answer 503 problem+json naming
        the mode and the routes that remain, without asking for credentials.
        """
        for method, path in [
            (b"GET", b"/api/v1/sps/spa"),
            (b"GET", b"/"),
            (b"GET", b"/nope/at/all"),
            (b"PUT", b"/api/v1/sps/spa"),
            (b"DELETE", b"/api/v1/sps/spa/status"),
        ]:
            response = self.get(path, method=method)
            problem = self.assertProblem(response, 503)
            self.assertEqual(problem["title"], "Service mode")
            self.assertEqual(problem["mode"], "service")
            self.assertEqual(problem["routes"], SERVICE_ROUTES)
            self.assertEqual(problem["instance"], path.decode())
        self.assertEqual(
            self.sample("spmgmt_http_requests_total", route="(service mode)", method="GET", status="503"), 3.0
        )

    def test_serviceRoutesServed(self) -> None:
        """healthz, health and metrics still answer in service mode."""
        self.assertEqual(self.get(b"/healthz").json(), {"status": "ok", "sp": "spa", "web_server": "service"})
        health = self.get(b"/api/v1/sps/spa/health", MONITOR)
        self.assertEqual(health.code, 200)
        self.assertEqual(health.json()["web_server"], "service")
        self.assertEqual(self.get(b"/metrics", MONITOR).code, 200)

    def test_serviceRoutesStillAuthenticated(self) -> None:
        """The service routes need credentials in service mode too."""
        self.assertProblem(self.get(b"/api/v1/sps/spa/health"), 401)
        self.assertProblem(self.get(b"/api/v1/sps/spa/commands/uptime", MONITOR, b"POST", b"{}"), 403)

    def test_status(self) -> None:
        """The status route answers in service mode, saying which web server runs."""
        response = self.get(b"/api/v1/sps/spa/status", MONITOR)
        self.assertEqual(response.code, 200)
        status = response.json()
        self.assertEqual((status["sp"], status["web_server"]), ("spa", "service"))
        self.assertEqual(status["status_command"]["stdout"], "status output")

    def test_nonServiceCommand(self) -> None:
        """A command not marked for service mode answers 503 naming the mode; nothing runs."""
        response = self.get(b"/api/v1/sps/spa/commands/echo", ADMIN, b"POST", b'{"params": {"message": "x"}}')
        problem = self.assertProblem(response, 503)
        self.assertEqual(problem["mode"], "service")
        self.assertEqual(problem["routes"], SERVICE_ROUTES)
        self.assertIn("'echo'", problem["detail"])
        self.assertEqual(self.agent.runs, [])

    def test_serviceCommand(self) -> None:
        """A service command runs in service mode."""
        protocol, transport = self.connect()
        protocol.dataReceived(request(b"POST", b"/api/v1/sps/spa/commands/uptime", {b"Authorization": ADMIN}, b"{}"))
        [(name, argv, d)] = self.agent.runs
        self.assertEqual((name, argv), ("uptime", ["uptime"]))
        d.callback(result("uptime", stdout="up"))
        [response] = parseResponses(transport.value())
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["stdout"], "up")


class RequestTests(WebTestCase):
    """Requests through L{SPSite} and L{SPRequest}, from raw bytes."""

    def setUp(self) -> None:
        self.setUpWeb()

    def test_healthz(self) -> None:
        """C{GET /healthz} needs no credentials and answers uncached JSON naming the SP."""
        response = self.get(b"/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header(b"Content-Type"), b"application/json")
        self.assertEqual(response.header(b"Cache-Control"), b"no-store")
        self.assertEqual(response.header(b"X-SPMgmt-Served-By"), b"spa")
        self.assertEqual(response.json(), {"status": "ok", "sp": "spa", "web_server": "full"})

    def test_head(self) -> None:
        """C{HEAD /healthz} answers 200 with the headers and no body."""
        [response] = self.exchange(request(b"HEAD", b"/healthz"), head=True)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header(b"X-SPMgmt-Served-By"), b"spa")

    def test_servedByEverywhere(self) -> None:
        """Every answer, success or problem, names the SP that served it."""
        for method, path, auth in [
            (b"GET", b"/healthz", None),
            (b"GET", b"/nope", None),
            (b"POST", b"/healthz", None),
            (b"GET", b"/api/v1/sps/spa", None),
            (b"GET", b"/api/v1/sps/spa", MONITOR),
            (b"GET", b"/metrics", MONITOR),
        ]:
            response = self.get(path, auth, method)
            self.assertEqual(response.header(b"X-SPMgmt-Served-By"), b"spa", (method, path))

    def test_notFound(self) -> None:
        """An unknown route answers 404 problem+json whose instance is the path."""
        problem = self.assertProblem(self.get(b"/nope?x=1"), 404)
        self.assertEqual(problem, {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": "There is no such route.",
            "instance": "/nope",
        })
        self.assertEqual(
            self.sample("spmgmt_http_requests_total", route="(unmatched)", method="GET", status="404"), 1.0
        )

    def test_oddMethodsShareOneLabel(self) -> None:
        """
        Methods outside the usual set are counted under one label: any
        token is a valid method, and each label value would be kept forever.
        """
        for method in (b"A1", b"A2", b"BREW"):
            self.assertProblem(self.get(b"/healthz", None, method), 405)
        self.assertEqual(self.sample("spmgmt_http_requests_total", route="(unmatched)", method="other", status="405"), 3.0)
        self.assertIsNone(self.sample("spmgmt_http_requests_total", route="(unmatched)", method="A1", status="405"))

    def test_methodNotAllowed(self) -> None:
        """A known route with the wrong method answers 405 problem+json and an C{Allow} header."""
        response = self.get(b"/api/v1/sps/spa/status", MONITOR, b"DELETE")
        problem = self.assertProblem(response, 405)
        self.assertEqual(problem["allowed"], ["GET", "HEAD"])
        self.assertEqual(response.header(b"Allow"), b"GET, HEAD")

    def test_noCredentials(self) -> None:
        """An authenticated route without credentials answers 401 with a Basic and Bearer challenge."""
        response = self.get(b"/api/v1/sps/spa/health")
        self.assertProblem(response, 401)
        challenge = response.header(b"WWW-Authenticate")
        self.assertIn(b'Basic realm="spmgmt"', challenge)
        self.assertIn(b'Bearer realm="spmgmt"', challenge)

    def test_noCredentialsNotAFailure(self) -> None:
        """Asking without credentials does not count as a failed login."""
        self.setUpWeb(maxFailures=1)
        self.get(b"/api/v1/sps/spa/health")
        self.assertIsNone(self.limiter.retryAfter(PEER.host))

    def test_wrongCredentials(self) -> None:
        """Wrong passwords, malformed headers and unknown tokens answer 401 with a challenge."""
        for auth in (basicAuth("admin", "wrong"), basicAuth("nobody", "x"), b"Basic !!", b"Digest x", b"Bearer nope"):
            response = self.get(b"/api/v1/sps/spa/health", auth)
            self.assertProblem(response, 401)
            self.assertIsNotNone(response.header(b"WWW-Authenticate"), auth)

    def test_bearerToken(self) -> None:
        """A configured bearer token is accepted with its role."""
        response = self.get(b"/api/v1/sps/spa", b"Bearer ci-token")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["id"], "spa")

    def test_forbidden(self) -> None:
        """A monitor may not run commands: 403 naming the role needed; nothing runs."""
        response = self.get(b"/api/v1/sps/spa/commands/uptime", MONITOR, b"POST", b"{}")
        problem = self.assertProblem(response, 403)
        self.assertIn("admin", problem["detail"])
        self.assertEqual(self.agent.runs, [])

    def test_tooManyFailures(self) -> None:
        """
        Past C{maxFailures} failed logins a peer gets 429 with C{Retry-After},
        even with good credentials, until the window ends.
        """
        self.setUpWeb(maxFailures=2)
        for _ in range(2):
            self.assertEqual(self.get(b"/api/v1/sps/spa", basicAuth("admin", "wrong")).code, 401)
        response = self.get(b"/api/v1/sps/spa", ADMIN)
        self.assertProblem(response, 429)
        self.assertEqual(response.header(b"Retry-After"), b"61")
        self.clock.advance(30)
        self.assertEqual(self.get(b"/api/v1/sps/spa", ADMIN).header(b"Retry-After"), b"31")
        self.clock.advance(30)
        self.assertEqual(self.get(b"/api/v1/sps/spa", ADMIN).code, 200)

    def test_summary(self) -> None:
        """C{GET /api/v1/sps/spa} answers the agent's summary, collected by and via spa."""
        response = self.get(b"/api/v1/sps/spa", MONITOR)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.json(),
            {
                "id": "spa",
                "role": "passive",
                "epoch": None,
                "healthy": True,
                "web_server": "full",
                "collected_by": "spa",
                "via": "spa",
            },
        )

    def test_sps(self) -> None:
        """C{GET /api/v1/sps} lists this SP as reachable (and no peers when it has no peer clients)."""
        response = self.get(b"/api/v1/sps", MONITOR)
        self.assertEqual(response.code, 200)
        listing = response.json()
        self.assertEqual(listing["via"], "spa")
        [me] = listing["sps"]
        self.assertEqual((me["id"], me["reachable"], me["last_seen_s"]), ("spa", True, 0.0))

    def test_unknownSP(self) -> None:
        """Asking about an SP that is not in the array answers 404 naming the known SPs; nothing runs."""
        for method, path in [
            (b"GET", b"/api/v1/sps/spz"),
            (b"GET", b"/api/v1/sps/spz/status"),
            (b"GET", b"/api/v1/sps/spz/health"),
            (b"POST", b"/api/v1/sps/spz/commands/uptime"),
        ]:
            problem = self.assertProblem(self.get(path, ADMIN, method, b"{}" if method == b"POST" else None), 404)
            self.assertEqual((problem["sp"], problem["known"]), ("spz", ["spa", "spb"]))
        self.assertEqual(self.agent.runs, [])

    def test_metrics(self) -> None:
        """C{/metrics} exposes request counts by route pattern, method and status, and the health gauge."""
        self.get(b"/api/v1/sps/spa/health", MONITOR)
        response = self.get(b"/metrics", MONITOR)
        self.assertEqual(response.code, 200)
        self.assertTrue(response.header(b"Content-Type").startswith(b"text/plain"))
        text = response.body.decode()
        self.assertIn(
            'spmgmt_http_requests_total{method="GET",route="/api/v1/sps/<sp>/health",status="200"} 1.0', text
        )
        self.assertIn("spmgmt_sp_healthy 1.0", text)

    def test_command(self) -> None:
        """An admin's command runs with its validated arguments and answers its result when it ends."""
        protocol, transport = self.connect()
        body = json.dumps({"params": {"message": "hi; rm -rf /"}}).encode()
        protocol.dataReceived(request(b"POST", b"/api/v1/sps/spa/commands/echo", {b"Authorization": ADMIN}, body))
        [(name, argv, d)] = self.agent.runs
        self.assertEqual((name, argv), ("echo", ["printf", "%s\\n", "hi; rm -rf /"]))
        self.assertEqual(transport.value(), b"")
        d.callback(result("echo", stdout="hi; rm -rf /\n"))
        [response] = parseResponses(transport.value())
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header(b"Content-Type"), b"application/json")
        self.assertEqual(response.json()["stdout"], "hi; rm -rf /\n")

    def test_commandProblems(self) -> None:
        """Unknown commands, bad parameters, bad bodies and passive-SP commands answer problems; nothing runs."""
        path = b"/api/v1/sps/spa/commands/"
        cases = [
            (b"rm-rf", b"{}", 404),
            (b"echo", b'{"params": {"message": "a", "extra": 1}}', 422),
            (b"echo", b"{not json", 400),
            (b"echo", b"\xff\xfe", 400),
            (b"echo", b"[1, 2]", 400),
            (b"failover-drill", b"", 409),
        ]
        for name, body, status in cases:
            problem = self.assertProblem(self.get(path + name, ADMIN, b"POST", body), status)
            if status == 422:
                self.assertIn("extra", problem["problems"])
            if name == b"rm-rf":
                self.assertEqual(problem["command"], "rm-rf")
        self.assertEqual(self.agent.runs, [])

    def test_internalErrorHidden(self) -> None:
        """An unexpected exception answers 500 problem+json without its details, and is logged."""

        def broken() -> dict[str, Any]:
            raise RuntimeError("secret detail /etc/passwd")

        self.agent.healthSnapshot = broken
        response = self.get(b"/api/v1/sps/spa/health", MONITOR)
        problem = self.assertProblem(response, 500)
        self.assertNotIn("secret", response.body.decode())
        self.assertNotIn("Traceback", response.body.decode())
        self.assertEqual(problem["detail"], "An internal error occurred; it has been logged.")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_nonUTF8Path(self) -> None:
        """A path whose percent-decoding is not UTF-8 answers 400 problem+json."""
        for path in (b"/%ff", b"/api/v1/sps/%ff/health"):
            response = self.get(path, MONITOR)
            self.assertProblem(response, 400)
        self.flushLoggedErrors(UnicodeDecodeError)

    def test_idleTimeout(self) -> None:
        """An idle connection is closed after C{limits.idle_timeout} seconds."""
        protocol, transport = self.connect()
        self.clock.advance(arrayConfig().limits.idle_timeout - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)


class BodyLimitTests(WebTestCase):
    """Request bodies are bounded by C{limits.max_body}."""

    def setUp(self) -> None:
        self.setUpWeb()
        self.path = b"/api/v1/sps/spa/commands/echo"
        self.headers = {b"Authorization": ADMIN}

    def assertRefused(self, transport: StringTransport) -> None:
        """Exactly one answer was written: 413 problem+json, then the connection was closed."""
        responses = parseResponses(transport.value())
        self.assertEqual([r.code for r in responses], [413])
        [response] = responses
        self.assertEqual(response.header(b"Content-Type"), PROBLEM.encode())
        self.assertEqual(response.header(b"X-SPMgmt-Served-By"), b"spa")
        self.assertEqual(response.header(b"Connection"), b"close")
        problem = response.json()
        self.assertEqual(problem["status"], 413)
        self.assertIn(str(self.maxBody), problem["detail"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.agent.runs, [])
        self.assertEqual(
            self.sample("spmgmt_http_requests_total", route="(body too large)", method="?", status="413"), 1.0
        )

    def test_contentLengthTooLarge(self) -> None:
        """
        A C{Content-Length} over the limit is answered 413 as soon as the
        headers are in; the body and a pipelined request are not processed.
        """
        protocol, transport = self.connect()
        headers = {**self.headers, b"Content-Length": str(self.maxBody + 1).encode()}
        body = b"{}" + b" " * (self.maxBody - 1)
        protocol.dataReceived(request(b"POST", self.path, headers) + body + request(b"GET", b"/healthz"))
        self.assertRefused(transport)

    def test_contentLengthAtLimit(self) -> None:
        """A body of exactly C{limits.max_body} bytes is accepted."""
        body = b'{"params": {"message": "x"}}'
        body += b" " * (self.maxBody - len(body))
        protocol, transport = self.connect()
        protocol.dataReceived(request(b"POST", self.path, self.headers, body))
        [(name, _, d)] = self.agent.runs
        d.callback(result(name))
        self.assertEqual([r.code for r in parseResponses(transport.value())], [200])

    def test_bodyAfterRefusal(self) -> None:
        """
        Body bytes that still arrive after the 413 (a TLS connection keeps
        delivering what the client already sent) are dropped without error.
        """
        protocol, transport = self.connect()
        headers = {**self.headers, b"Content-Length": str(self.maxBody + 1).encode()}
        protocol.dataReceived(request(b"POST", self.path, headers))
        protocol.dataReceived(b"x" * (self.maxBody + 1))
        self.assertRefused(transport)

    def test_expectContinueRefused(self) -> None:
        """A request over the limit that expects C{100 Continue} gets only the 413, never a 100 after it."""
        protocol, transport = self.connect()
        headers = {**self.headers, b"Content-Length": str(self.maxBody + 1).encode(), b"Expect": b"100-continue"}
        protocol.dataReceived(request(b"POST", self.path, headers))
        self.assertRefused(transport)

    def test_chunkedTooLarge(self) -> None:
        """A chunked body that grows past the limit is refused the same way; the rest is ignored."""
        protocol, transport = self.connect()
        headers = {**self.headers, b"Transfer-Encoding": b"chunked"}
        protocol.dataReceived(request(b"POST", self.path, headers))
        half = b"x" * (self.maxBody // 2)
        chunk = b"%x\r\n%s\r\n" % (len(half), half)
        protocol.dataReceived(chunk + chunk)
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"1\r\nx\r\n")
        self.assertRefused(transport)
        protocol.dataReceived(chunk + b"0\r\n\r\n" + request(b"GET", b"/healthz"))
        self.assertRefused(transport)

    def test_chunkedWithinLimit(self) -> None:
        """A chunked body within the limit is processed."""
        protocol, transport = self.connect()
        headers = {**self.headers, b"Transfer-Encoding": b"chunked"}
        body = b'{"params": {"message": "chunked"}}'
        protocol.dataReceived(request(b"POST", self.path, headers) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        [(name, argv, d)] = self.agent.runs
        self.assertEqual(argv[-1], "chunked")
        d.callback(result(name))
        self.assertEqual([r.code for r in parseResponses(transport.value())], [200])


class RealPortalTests(WebTestCase):
    """The web face with L{portalFromConfig}'s scrypt checker (run on a synchronous thread pool)."""

    def test_configuredPassword(self) -> None:
        """The configured monitor password is accepted; a wrong one is not."""
        from tests.test_auth import FakeThreadReactor

        harness = arrayHarness()
        self.setUpWeb(portal=portalFromConfig(FakeThreadReactor(), harness.config))
        self.assertEqual(self.get(b"/api/v1/sps/spa", basicAuth("monitor", harness.passwords["monitor"])).code, 200)
        self.assertEqual(self.get(b"/api/v1/sps/spa", basicAuth("monitor", "wrong")).code, 401)


class DisconnectTests(WebTestCase):
    """A client that leaves while its command runs does not stop the command."""

    def setUp(self) -> None:
        self.setUpWeb()
        self.protocol, self.transport = self.connect()
        self.protocol.dataReceived(
            request(b"POST", b"/api/v1/sps/spa/commands/uptime", {b"Authorization": ADMIN}, b"{}")
        )
        [(_, _, self.work)] = self.agent.runs
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def test_commandNotCancelled(self) -> None:
        """The command's work is not cancelled and, when it ends, it is recorded."""
        self.assertEqual(self.agent.cancelled, [])
        self.assertNoResult(self.work)
        self.work.callback(result("uptime"))
        self.assertEqual(self.sample("spmgmt_command_runs_total", command="uptime", outcome="ok"), 1.0)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.transport.value(), b"")

    def test_lateFailureLogged(self) -> None:
        """A command that fails after its client left is logged."""
        self.work.errback(ValueError("late"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class StampedDisconnectTests(WebTestCase):
    """
    A stamped (active-role) command stays in flight until it ends, even if
    its client leaves: a step-down waits for the command, not the socket.
    """

    def test_inFlightUntilCommandEnds(self) -> None:
        """The in-flight count holds the command after the client left."""
        from spmgmt.sp import role

        self.setUpWeb()
        self.agent.lease = 10.0
        self.agent.roleState, _ = role.granted(role.heard(self.agent.roleState, 0.0), 4, 0.0)
        self.patch(self.agent, "monotonic", lambda: 0.0)
        protocol, transport = self.connect()
        protocol.dataReceived(
            request(
                b"POST",
                b"/api/v1/sps/spa/commands/uptime",
                {b"Authorization": ADMIN, b"X-SPMgmt-Epoch": b"4"},
                b"{}",
            )
        )
        [(_, _, work)] = self.agent.runs
        self.assertGreaterEqual(self.agent.roleState.inFlight, 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertGreaterEqual(self.agent.roleState.inFlight, 1)
        self.agent.roleState = role.revoked(self.agent.roleState, 4, 0.0)
        self.assertEqual(self.agent.role, role.STEPPING_DOWN)
        work.callback(result("uptime"))
        self.assertEqual(self.agent.roleState.inFlight, 0)
        self.assertEqual(self.agent.role, role.PASSIVE)


class ShieldedTests(SynchronousTestCase):
    """Tests for L{_shielded}."""

    def setUp(self) -> None:
        self.cancelled: list[Deferred[Any]] = []
        self.work: Deferred[Any] = Deferred(self.cancelled.append)
        self.shield = _shielded(self.work)

    def test_result(self) -> None:
        """The shield fires with the work's result."""
        self.assertNoResult(self.shield)
        self.work.callback(42)
        self.assertEqual(self.successResultOf(self.shield), 42)

    def test_failure(self) -> None:
        """The shield fails with the work's failure, which is then not logged."""
        self.work.errback(ValueError("x"))
        self.failureResultOf(self.shield, ValueError)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_alreadyFired(self) -> None:
        """Work that has already finished gives a shield that has already fired."""
        self.assertEqual(self.successResultOf(_shielded(succeed(7))), 7)
        self.failureResultOf(_shielded(fail(KeyError("k"))), KeyError)

    def test_cancelShield(self) -> None:
        """Cancelling the shield fails it with L{CancelledError} and does not cancel the work."""
        self.shield.cancel()
        self.failureResultOf(self.shield, CancelledError)
        self.assertEqual(self.cancelled, [])
        self.assertNoResult(self.work)

    def test_resultAfterCancel(self) -> None:
        """A result after the shield was cancelled is dropped: no L{AlreadyCalledError}, nothing logged."""
        self.shield.cancel()
        self.failureResultOf(self.shield, CancelledError)
        self.work.callback(42)
        self.assertIsNone(self.successResultOf(self.work))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_failureAfterCancel(self) -> None:
        """A failure after the shield was cancelled is logged, not left unhandled."""
        self.shield.cancel()
        self.failureResultOf(self.shield, CancelledError)
        self.work.errback(ValueError("late"))
        self.assertIsNone(self.successResultOf(self.work))
        [logged] = self.flushLoggedErrors(ValueError)
        self.assertEqual(str(logged.value), "late")

    def test_cancelAfterResult(self) -> None:
        """Cancelling a shield that already has its result changes nothing."""
        self.work.callback(1)
        self.shield.cancel()
        self.assertEqual(self.successResultOf(self.shield), 1)


class SiteTests(WebTestCase):
    """Tests for L{SPSite}."""

    def test_noTracebacks(self) -> None:
        """The site never displays tracebacks."""
        self.setUpWeb()
        self.assertFalse(self.web.site.displayTracebacks)

    def test_idleTimeoutFromConfig(self) -> None:
        """The site's idle timeout is C{limits.idle_timeout}."""
        self.setUpWeb()
        self.assertEqual(self.web.site.timeOut, arrayConfig().limits.idle_timeout)

    def test_siteUsesAgentReactor(self) -> None:
        """The site schedules its connection timeouts on the agent's reactor, not the global one."""
        clock = MemoryReactorClock()
        config = arrayConfig()
        agent = SPAgent(clock, config, config.sp("spa"))
        site = SPSite(None, agent)
        self.assertIs(site.reactor, clock)


class FakeRequest(DummyRequest):
    """A L{DummyRequest} with the C{path} a real request has."""

    def __init__(self, path: bytes | None) -> None:
        super().__init__([])
        if path is not None:
            self.path = path


class ProblemTests(SynchronousTestCase):
    """Tests for L{Problem}."""

    def test_asJSON(self) -> None:
        """The problem object has type, title (the status phrase by default), status and detail."""
        self.assertEqual(
            Problem(404, "No such thing.").asJSON(),
            {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "No such thing."},
        )

    def test_asJSONInstanceAndExtras(self) -> None:
        """The instance and the extra members are added to the problem object."""
        problem = Problem(503, "Down.", title="Service mode", mode="service", routes=["GET /healthz"])
        self.assertEqual(
            problem.asJSON("/x"),
            {
                "type": "about:blank",
                "title": "Service mode",
                "status": 503,
                "detail": "Down.",
                "instance": "/x",
                "mode": "service",
                "routes": ["GET /healthz"],
            },
        )

    def test_exception(self) -> None:
        """A problem is an exception whose text is its detail."""
        problem = Problem(400, "Bad.")
        self.assertIsInstance(problem, Exception)
        self.assertEqual(str(problem), "Bad.")
        self.assertEqual((problem.status, problem.headers, problem.extra), (400, {}, {}))

    def test_render(self) -> None:
        """Rendering sets the status, problem+json, no-store and the extra headers, and returns the JSON body."""
        request = FakeRequest(b"/api/v1/sps/spa")
        body = Problem(401, "Who?", headers={b"WWW-Authenticate": b"Basic"}, why="none").render(request)
        self.assertEqual(CONTENT_TYPE, b"application/problem+json")
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"Content-Type"), [CONTENT_TYPE])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"Cache-Control"), [b"no-store"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"WWW-Authenticate"), [b"Basic"])
        self.assertEqual(
            json.loads(body),
            {
                "type": "about:blank",
                "title": "Unauthorized",
                "status": 401,
                "detail": "Who?",
                "instance": "/api/v1/sps/spa",
                "why": "none",
            },
        )

    def test_reasonPhrases(self) -> None:
        """Statuses Twisted has no phrase for get the standard one, not "Unknown Status"."""
        for status, phrase in ((421, b"Misdirected Request"), (422, b"Unprocessable Entity"), (429, b"Too Many Requests")):
            request = FakeRequest(b"/")
            Problem(status, "x").render(request)
            self.assertEqual((request.responseCode, request.responseMessage), (status, phrase))

    def test_renderWithoutPath(self) -> None:
        """A request without a path gives a problem without an instance."""
        request = FakeRequest(None)
        request.path = None
        self.assertNotIn("instance", json.loads(Problem(500, "Oops.").render(request)))


class EpochStampTests(SynchronousTestCase):
    """A request's epoch stamp is checked, never learnt from."""

    def test_stampTeachesNothing(self) -> None:
        """
        A stamp with a huge epoch answers no, leaves the newest epoch as it
        was, and a later grant from the arbiter is still accepted (a client
        cannot make every grant refused).
        """
        from spmgmt.sp import role

        config = arrayConfig()
        agent = SPAgent(MemoryReactorClock(), config, config.sp("spa"), monotonic=lambda: 10.0, lease=1.0)
        agent.roleState, accepted = role.granted(agent.roleState, 3, 10.0)
        self.assertTrue(accepted)
        self.assertTrue(agent.servesEpoch(3))
        self.assertFalse(agent.servesEpoch(1_000_000))
        self.assertEqual(agent.newestEpoch, 3)
        self.assertTrue(agent.isActive())
        agent.roleState, accepted = role.granted(agent.roleState, 4, 10.0)
        self.assertTrue(accepted)


class CommandLimitTests(SynchronousTestCase):
    """Commands run at most C{max_commands} at once, with as many waiting."""

    def test_busy(self) -> None:
        """
        With every slot taken and as many waiting, the next run is refused
        as busy (503); a finished run lets a waiting one start.
        """
        import attrs

        from spmgmt.sp import agent as agentModule
        from spmgmt.sp.agent import Busy

        started: list[Deferred[CommandResult]] = []

        def fakeRun(reactor: Any, command: Any, argv: Any, monotonic: Any = None) -> Deferred[CommandResult]:
            d: Deferred[CommandResult] = Deferred()
            started.append(d)
            return d

        self.patch(agentModule, "runCommand", fakeRun)
        config = arrayConfig()
        config = attrs.evolve(config, limits=attrs.evolve(config.limits, max_commands=2))
        agent = SPAgent(MemoryReactorClock(), config, config.sp("spa"))
        runs = [agent.runCommand("uptime", {}) for _ in range(4)]
        self.assertEqual(len(started), 2)
        self.failureResultOf(agent.runCommand("uptime", {}), Busy)
        started[0].callback(result("uptime"))
        self.assertEqual(self.successResultOf(runs[0]).rc, 0)
        self.assertEqual(len(started), 3)
        for d in runs[1:]:
            self.assertNoResult(d)
        while len([d for d in started if not d.called]):
            next(d for d in started if not d.called).callback(result("uptime"))
        self.assertEqual([self.successResultOf(d).rc for d in runs[1:]], [0, 0, 0])

        from spmgmt.sp.refusals import problemFor, refusal

        self.assertEqual(problemFor(refusal(Busy()), []).status, 503)


class ParallelGuessTests(WebTestCase):
    """Guesses sent in parallel from one address all count against it."""

    def slowLogins(self) -> list[Deferred[bytes]]:
        """Serve with a checker whose answers the test gives (the pending Deferreds)."""
        from twisted.cred.checkers import ICredentialsChecker
        from twisted.cred.credentials import IUsernamePassword
        from zope.interface import implementer

        from spmgmt.auth import RoleRealm

        pending: list[Deferred[bytes]] = []

        @implementer(ICredentialsChecker)
        class SlowChecker:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
                d: Deferred[bytes] = Deferred()
                pending.append(d)
                return d

        self.setUpWeb(portal=Portal(RoleRealm({"admin": "admin"}), [SlowChecker()]), maxFailures=3)
        return pending

    def test_inFlightLoginsCount(self) -> None:
        """
        With C{maxFailures} logins still being checked, the next one from the
        same address answers 429 before any of them finished; a login that
        succeeds takes its count back.
        """
        pending = self.slowLogins()
        guesses = [b"Basic " + base64.b64encode(b"admin:guess%d" % i) for i in range(4)]
        connections = [self.connect() for _ in range(4)]
        for (protocol, _), guess in zip(connections[:3], guesses):
            protocol.dataReceived(request(b"GET", b"/api/v1/sps/spa/health", {b"Authorization": guess}))
        self.assertEqual(len(pending), 3)
        protocol, transport = connections[3]
        protocol.dataReceived(request(b"GET", b"/api/v1/sps/spa/health", {b"Authorization": guesses[3]}))
        [refused] = parseResponses(transport.value())
        self.assertEqual(refused.code, 429)
        self.assertEqual(len(pending), 3)
        for d in pending:
            d.callback(b"admin")
        for _, transport in connections[:3]:
            [answer] = parseResponses(transport.value())
            self.assertEqual(answer.code, 200)
        self.assertIsNone(self.limiter.retryAfter(PEER.host))

    def test_sameCredentialsInParallelAreOneGuess(self) -> None:
        """
        Many connections opened at once with the same good password (a
        client behind one address) are not locked out while it is checked.
        """
        pending = self.slowLogins()
        connections = [self.connect() for _ in range(10)]
        for protocol, _ in connections:
            protocol.dataReceived(request(b"GET", b"/api/v1/sps/spa/health", {b"Authorization": ADMIN}))
        self.assertEqual(len(pending), 10)
        for d in pending:
            d.callback(b"admin")
        codes = [parseResponses(transport.value())[0].code for _, transport in connections]
        self.assertEqual(codes, [200] * 10)
        self.assertIsNone(self.limiter.retryAfter(PEER.host))
        # A wrong password sent in parallel is one failure too.
        from twisted.cred.error import UnauthorizedLogin

        pending.clear()
        wrong = b"Basic " + base64.b64encode(b"admin:wrong")
        for protocol, _ in connections[:5]:
            protocol.dataReceived(request(b"GET", b"/api/v1/sps/spa/health", {b"Authorization": wrong}))
        for d in pending:
            d.errback(UnauthorizedLogin())
        self.assertIsNone(self.limiter.retryAfter(PEER.host))
        self.assertEqual(self.limiter._peers[PEER.host].failures, 1)
