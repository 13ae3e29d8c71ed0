"""
Integration tests of the SP agent: real C{twistd spmgmt sp} processes on
127.0.0.1 with ephemeral ports and real TLS, asked over HTTPS.
"""

from __future__ import annotations

import os
import socket
import ssl

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from spmgmt.testing import ArrayTestMixin

PROBLEM = "application/problem+json"


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class SPAgentTests(ArrayTestMixin, TestCase):
    """One real SP answering over HTTPS."""

    timeout = 60

    async def test_statusHasFacts(self) -> None:
        """
        C{GET /api/v1/sps/spa/status} answers 200 with spa's own facts and
        its status command's output; every answer names the SP that served it.
        """
        array = await self.startArray(spIds=("spa",))
        response = await array.request("spa", "GET", "/api/v1/sps/spa/status")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("X-SPMgmt-Served-By"), "spa")
        status = response.json()
        self.assertEqual(status["sp"], "spa")
        self.assertEqual(status["pid"], array.pid("spa"))
        self.assertEqual(status["hostname"], socket.gethostname())
        self.assertEqual(status["web_server"], "full")
        self.assertEqual(status["role"], "passive")
        self.assertEqual(status["status_command"]["rc"], 0)
        self.assertIn(os.uname().sysname, status["status_command"]["stdout"])
        for fact in ("uptime_s", "load", "memory", "disk", "collected_at", "epoch", "health"):
            self.assertIn(fact, status)
        self.assertGreater(status["disk"]["free_bytes"], 0)

    async def test_problemsEverywhere(self) -> None:
        """
        Unknown routes, wrong methods, unknown SPs, unknown commands, bad
        parameters and oversized bodies all answer problem+json naming the SP.
        """
        array = await self.startArray(spIds=("spa",))
        cases = [
            ("GET", "/nope", None, 404),
            ("DELETE", "/api/v1/sps/spa/status", None, 405),
            ("GET", "/api/v1/sps/spz/status", None, 404),
            ("POST", "/api/v1/sps/spa/commands/rm-rf", {}, 404),
            ("POST", "/api/v1/sps/spa/commands/sleep", {"params": {"seconds": "x"}}, 422),
            ("POST", "/api/v1/sps/spa/commands/echo", {"params": {"message": "a", "extra": 1}}, 422),
            ("POST", "/api/v1/sps/spa/commands/echo", {"params": {"message": "m" * 201}}, 422),
            ("POST", "/api/v1/sps/spa/commands/failover-drill", {}, 409),
            ("POST", "/api/v1/sps/spa/commands/echo", {"params": {"message": "x" * 2_000_000}}, 413),
        ]
        for method, path, body, code in cases:
            response = await array.request("spa", method, path, body=body)
            self.assertEqual((method, path, response.code), (method, path, code))
            self.assertEqual(response.header("Content-Type"), PROBLEM)
            self.assertEqual(response.header("X-SPMgmt-Served-By"), "spa")
            problem = response.json()
            self.assertEqual(problem["status"], code)
            self.assertNotIn("Traceback", response.body.decode())
        # Bad parameters are named one by one.
        response = await array.request(
            "spa", "POST", "/api/v1/sps/spa/commands/echo", body={"params": {"message": "a", "extra": 1}}
        )
        self.assertIn("extra", response.json()["problems"])

    async def test_auth(self) -> None:
        """
        No credentials: 401 with a challenge; wrong password: 401; a monitor
        may read but not run commands (403); an admin may (200).
        """
        array = await self.startArray(spIds=("spa",))
        path = "/api/v1/sps/spa/commands/echo"
        body = {"params": {"message": "hi"}}
        anonymous = await array.request("spa", "POST", path, user=None, body=body)
        self.assertEqual(anonymous.code, 401)
        self.assertIn("Basic", anonymous.header("WWW-Authenticate") or "")
        self.assertEqual(anonymous.header("Content-Type"), PROBLEM)
        array.passwords["monitor"], real = "wrong", array.passwords["monitor"]
        self.assertEqual((await array.request("spa", "GET", "/api/v1/sps/spa/health", user="monitor")).code, 401)
        array.passwords["monitor"] = real
        self.assertEqual((await array.request("spa", "GET", "/api/v1/sps/spa/health", user="monitor")).code, 200)
        forbidden = await array.request("spa", "POST", path, user="monitor", body=body)
        self.assertEqual(forbidden.code, 403)
        self.assertEqual(forbidden.header("Content-Type"), PROBLEM)
        allowed = await array.request("spa", "POST", path, user="admin", body=body)
        self.assertEqual(allowed.code, 200)
        self.assertEqual(allowed.json()["stdout"], "hi\n")
        self.assertEqual((await array.request("spa", "GET", "/healthz", user=None)).code, 200)
        self.assertEqual((await array.request("spa", "GET", "/metrics", user=None)).code, 401)

    async def test_commandArgumentsAreLiteral(self) -> None:
        """
        Shell syntax in a parameter arrives as one literal argument: nothing
        is interpreted, nothing extra runs.
        """
        array = await self.startArray(spIds=("spa",))
        marker = array.path("pwned")
        hostile = f"a; touch {marker} $(touch {marker}) `touch {marker}` | x"
        response = await array.request(
            "spa", "POST", "/api/v1/sps/spa/commands/echo", body={"params": {"message": hostile}}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["stdout"], hostile + "\n")
        self.assertFalse(marker.exists())

    async def test_outputCapped(self) -> None:
        """100 MB of output is capped at the command's output_cap."""
        array = await self.startArray(spIds=("spa",))
        response = await array.request("spa", "POST", "/api/v1/sps/spa/commands/flood", body={})
        self.assertEqual(response.code, 200)
        result = response.json()
        self.assertTrue(result["truncated"])
        self.assertEqual(len(result["stdout"]), 65536)
        self.assertEqual(result["rc"], 0)

    async def test_reactorNotBlocked(self) -> None:
        """
        While a 5-second command runs, the SP keeps answering and its
        reactor_lag check stays under 50 ms.
        """
        array = await self.startArray(spIds=("spa",))
        command = array.request(
            "spa", "POST", "/api/v1/sps/spa/commands/sleep", body={"params": {"seconds": 5}}
        )
        command = Deferred.fromCoroutine(command)
        lags = []
        while not command.called:
            health = (await array.request("spa", "GET", "/api/v1/sps/spa/health")).json()
            (reactorCheck,) = [c for c in health["checks"] if c["name"] == "reactor"]
            if reactorCheck["value"] is not None:
                lags.append(reactorCheck["value"])
            await sleep(0.2)
        result = (await command).json()
        self.assertEqual(result["rc"], 0)
        self.assertGreaterEqual(result["duration_s"], 5.0)
        self.assertGreater(len(lags), 10)
        self.assertLess(max(lags), 0.05, lags)

    async def test_metrics(self) -> None:
        """C{/metrics} exposes request counts by route and the health state."""
        array = await self.startArray(spIds=("spa",))
        await array.request("spa", "GET", "/api/v1/sps/spa/health")
        text = (await array.request("spa", "GET", "/metrics", user="monitor")).body.decode()
        self.assertIn('spmgmt_http_requests_total{method="GET",route="/api/v1/sps/<sp>/health",status="200"}', text)
        self.assertIn("spmgmt_sp_healthy 1.0", text)
        self.assertIn("spmgmt_sp_service_mode 0.0", text)

    async def test_tlsOnly(self) -> None:
        """The web port speaks TLS 1.2+ with ALPN http/1.1 and the SP's certificate."""
        array = await self.startArray(spIds=("spa",))
        sp = array.config.sp("spa")
        context = ssl.create_default_context(cafile=str(array.config.ca))
        context.set_alpn_protocols(["h2", "http/1.1"])

        def handshake() -> tuple[str | None, str | None]:
            with socket.create_connection((sp.web.host, sp.web.port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="spa") as tls:
                    return tls.selected_alpn_protocol(), tls.version()

        from twisted.internet.threads import deferToThread

        alpn, version = await deferToThread(handshake)
        self.assertEqual(alpn, "http/1.1")
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))


class ServiceModeTests(ArrayTestMixin, TestCase):
    """An unhealthy SP swaps to the service-mode web server and back."""

    timeout = 60

    async def test_maintenanceFileSwapsWebServer(self) -> None:
        """
        With its maintenance file present, spa serves the service-mode app
        within interval x fall: full-only routes answer 503 problem+json
        naming the mode and the routes that remain, status and service
        commands still work.  Once the file is gone, the full app is back
        after rise.
        """
        array = await self.startArray(spIds=("spa",))
        maintenance = array.path("var/spa.maintenance")
        summary = await array.request("spa", "GET", "/api/v1/sps/spa")
        self.assertEqual(summary.json()["web_server"], "full")

        async def webServer() -> str:
            return (await array.request("spa", "GET", "/healthz", user=None)).json()["web_server"]

        maintenance.touch()
        start = reactor.seconds()

        async def inService() -> bool:
            return await webServer() == "service"

        await array.waitFor(inService, 5.0, "service mode", "spa", interval=0.02)
        # interval 0.2 s x fall 1, plus scheduling slack.
        self.assertLess(reactor.seconds() - start, 1.0)

        refused = await array.request("spa", "GET", "/api/v1/sps/spa")
        self.assertEqual(refused.code, 503)
        self.assertEqual(refused.header("Content-Type"), PROBLEM)
        problem = refused.json()
        self.assertEqual(problem["mode"], "service")
        self.assertIn("GET /api/v1/sps/<sp>/status", problem["routes"])
        self.assertNotIn("GET /api/v1/sps/<sp>", problem["routes"])

        notService = await array.request(
            "spa", "POST", "/api/v1/sps/spa/commands/echo", body={"params": {"message": "x"}}
        )
        self.assertEqual(notService.code, 503)
        self.assertEqual(notService.json()["mode"], "service")

        uptime = await array.request("spa", "POST", "/api/v1/sps/spa/commands/uptime", body={})
        self.assertEqual(uptime.code, 200)
        self.assertEqual(uptime.json()["rc"], 0)

        status = await array.request("spa", "GET", "/api/v1/sps/spa/status")
        self.assertEqual(status.code, 200)
        self.assertEqual(status.json()["web_server"], "service")
        self.assertEqual(status.json()["health"]["failing"], ["maintenance"])

        health = (await array.request("spa", "GET", "/api/v1/sps/spa/health")).json()
        self.assertFalse(health["healthy"])

        maintenance.unlink()

        async def inFull() -> bool:
            return await webServer() == "full"

        await array.waitFor(inFull, 5.0, "the full web server", "spa", interval=0.02)
        self.assertEqual((await array.request("spa", "GET", "/api/v1/sps/spa")).code, 200)

    async def test_startsInServiceMode(self) -> None:
        """An SP started with its maintenance file present never serves the full app."""
        import tempfile
        from pathlib import Path

        from spmgmt.testing import ArrayHarness

        directory = Path(tempfile.mkdtemp(prefix="spmgmt-array-"))
        array = ArrayHarness(reactor, directory, spIds=("spa",))
        self.addCleanup(array.stopAll)
        array.path("var/spa.maintenance").touch()
        await array.start()
        self.assertEqual((await array.request("spa", "GET", "/healthz", user=None)).json()["web_server"], "service")
