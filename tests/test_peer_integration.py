"""
Integration tests of the peer channel: one SP answers for another by asking
it over Perspective Broker; real processes, real TLS, real signals.
"""

from __future__ import annotations

import signal
import socket

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from spmgmt.testing import ArrayHarness, ArrayTestMixin

PROBLEM = "application/problem+json"


async def waitReachable(array: ArrayHarness, via: str, peer: str, reachable: bool = True) -> None:
    """
    Wait until C{via} sees C{peer} as (un)reachable; reachable also means
    its summary has arrived (the link comes up before the first summary).
    """

    async def seen() -> bool:
        sps = (await array.request(via, "GET", "/api/v1/sps")).json()["sps"]
        return any(
            e["id"] == peer and e["reachable"] is reachable and (not reachable or e.get("role") is not None)
            for e in sps
        )

    await array.waitFor(seen, 15.0, f"{via} to see {peer} reachable={reachable}", via)


async def waitRelay(array: ArrayHarness, via: str, peer: str) -> None:
    """Wait until C{via} relays for C{peer} (works in service mode too)."""

    async def relays() -> bool:
        return (await array.request(via, "GET", f"/api/v1/sps/{peer}/health")).code == 200

    await array.waitFor(relays, 15.0, f"{via} to relay for {peer}", via)


class RelayTests(ArrayTestMixin, TestCase):
    """An SP relays status, health and commands for its peers."""

    timeout = 90

    async def test_unhealthyPeerStatusViaOther(self) -> None:
        """
        spa is unhealthy and in service mode; asked through spb, its status
        is collected by spa itself (spa's pid and hostname, its service-mode
        web server) and relayed with collected_by spa and via spb.
        """
        array = await self.startArray(spIds=("spa", "spb"))
        await waitReachable(array, "spb", "spa")
        array.path("var/spa.maintenance").touch()

        async def inService() -> bool:
            health = await array.request("spa", "GET", "/healthz", user=None)
            return health.json()["web_server"] == "service"

        await array.waitFor(inService, 5.0, "spa in service mode", "spa")
        response = await array.request("spb", "GET", "/api/v1/sps/spa/status")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("X-SPMgmt-Served-By"), "spb")
        status = response.json()
        self.assertEqual(status["pid"], array.pid("spa"))
        self.assertNotEqual(status["pid"], array.pid("spb"))
        self.assertEqual(status["hostname"], socket.gethostname())
        self.assertEqual(status["web_server"], "service")
        self.assertEqual((status["collected_by"], status["via"]), ("spa", "spb"))
        self.assertEqual(status["status_command"]["rc"], 0)

        health = (await array.request("spb", "GET", "/api/v1/sps/spa/health")).json()
        self.assertEqual((health["sp"], health["collected_by"], health["via"]), ("spa", "spa", "spb"))
        self.assertFalse(health["healthy"])

        # The peer's own rules apply: in service mode only service commands.
        refused = await array.request(
            "spb", "POST", "/api/v1/sps/spa/commands/echo", body={"params": {"message": "x"}}
        )
        self.assertEqual(refused.code, 503)
        self.assertEqual(refused.json()["mode"], "service")
        ran = await array.request("spb", "POST", "/api/v1/sps/spa/commands/uptime", body={})
        self.assertEqual(ran.code, 200)
        self.assertEqual((ran.json()["rc"], ran.json()["collected_by"]), (0, "spa"))

        # A service-mode SP still relays status for others.
        await waitRelay(array, "spa", "spb")
        relayed = await array.request("spa", "GET", "/api/v1/sps/spb/status")
        self.assertEqual(relayed.code, 200, relayed.body)
        self.assertEqual(relayed.json()["pid"], array.pid("spb"))
        self.assertEqual(relayed.json()["via"], "spa")

    async def test_threeSPs(self) -> None:
        """
        With three SPs every SP answers for every other; the list shows each
        SP's role, health, web server and reachability.
        """
        ids = ("spa", "spb", "spc")
        array = await self.startArray(spIds=ids)
        for via in ids:
            for peer in ids:
                if peer != via:
                    await waitReachable(array, via, peer)
        for via in ids:
            for target in ids:
                response = await array.request(via, "GET", f"/api/v1/sps/{target}/status")
                self.assertEqual(response.code, 200, (via, target))
                status = response.json()
                self.assertEqual(status["pid"], array.pid(target), (via, target))
                self.assertEqual((status["collected_by"], status["via"]), (target, via))
        listing = (await array.request("spc", "GET", "/api/v1/sps")).json()
        self.assertEqual([e["id"] for e in listing["sps"]], list(ids))
        for entry in listing["sps"]:
            self.assertTrue(entry["reachable"], entry)
            self.assertEqual((entry["role"], entry["web_server"], entry["healthy"]), ("passive", "full", True))
        summary = (await array.request("spc", "GET", "/api/v1/sps/spa")).json()
        self.assertEqual((summary["id"], summary["collected_by"], summary["via"]), ("spa", "spa", "spc"))

    async def test_relayedCommandRefusals(self) -> None:
        """
        A relayed command runs on the peer with its arguments intact; the
        peer's refusals keep their HTTP meaning (404, 422, 409).
        """
        array = await self.startArray(spIds=("spa", "spb"))
        await waitReachable(array, "spb", "spa")
        ok = await array.request(
            "spb", "POST", "/api/v1/sps/spa/commands/echo", body={"params": {"message": "a;$(id) b"}}
        )
        self.assertEqual(ok.code, 200)
        self.assertEqual(ok.json()["stdout"], "a;$(id) b\n")
        self.assertEqual(ok.json()["collected_by"], "spa")
        cases = [
            ("nope", {}, 404),
            ("sleep", {"params": {"seconds": 99}}, 422),
            ("failover-drill", {}, 409),
        ]
        for name, body, code in cases:
            response = await array.request("spb", "POST", f"/api/v1/sps/spa/commands/{name}", body=body)
            self.assertEqual((name, response.code), (name, code))
            self.assertEqual(response.header("Content-Type"), PROBLEM)
            self.assertEqual(response.json()["via"], "spb")
        monitor = await array.request(
            "spb", "POST", "/api/v1/sps/spa/commands/uptime", body={}, user="monitor"
        )
        self.assertEqual(monitor.code, 403)
        unknown = await array.request("spb", "GET", "/api/v1/sps/spz/status")
        self.assertEqual(unknown.code, 404)


class UnreachablePeerTests(ArrayTestMixin, TestCase):
    """A hung or dead peer gives a bounded 504, never a hang or a 500."""

    timeout = 90

    async def test_stoppedPeer(self) -> None:
        """
        SIGSTOP spa: spb answers for spa with 504 problem+json within
        peer_timeout + 0.5 s, carrying spa's last known status and its age.
        SIGCONT: spa is reachable again without restarting anything.
        """
        array = await self.startArray(spIds=("spa", "spb"))
        await waitReachable(array, "spb", "spa")
        first = await array.request("spb", "GET", "/api/v1/sps/spa/status")
        self.assertEqual(first.code, 200)
        timeout = array.config.peer.timeout

        array.signal("spa", signal.SIGSTOP)
        started = reactor.seconds()
        response = await array.request("spb", "GET", "/api/v1/sps/spa/status")
        elapsed = reactor.seconds() - started
        self.assertEqual(response.code, 504)
        self.assertEqual(response.header("Content-Type"), PROBLEM)
        self.assertLess(elapsed, timeout + 0.5)
        problem = response.json()
        self.assertEqual((problem["sp"], problem["via"]), ("spa", "spb"))
        self.assertEqual(problem["last_known"]["pid"], array.pid("spa"))
        self.assertGreater(problem["age_s"], 0)

        # Every call stays bounded while spa is stopped.
        for path in ("/api/v1/sps/spa/health", "/api/v1/sps/spa"):
            started = reactor.seconds()
            response = await array.request("spb", "GET", path)
            self.assertEqual(response.code, 504, path)
            self.assertLess(reactor.seconds() - started, timeout + 0.5, path)
        await waitReachable(array, "spb", "spa", reachable=False)

        array.signal("spa", signal.SIGCONT)
        await waitReachable(array, "spb", "spa")
        again = await array.request("spb", "GET", "/api/v1/sps/spa/status")
        self.assertEqual(again.code, 200)
        self.assertEqual(again.json()["pid"], array.pid("spa"))

    async def test_killedPeer(self) -> None:
        """
        SIGKILL spa: spb answers 504 at once (not connected); a restarted spa
        is reachable again.
        """
        array = await self.startArray(spIds=("spa", "spb"))
        await waitReachable(array, "spb", "spa")
        await array.request("spb", "GET", "/api/v1/sps/spa/status")
        await array.kill("spa")
        await waitReachable(array, "spb", "spa", reachable=False)
        started = reactor.seconds()
        response = await array.request("spb", "GET", "/api/v1/sps/spa/status")
        self.assertEqual(response.code, 504)
        self.assertLess(reactor.seconds() - started, 0.5)
        self.assertIsNotNone(response.json()["last_known"])
        await array.restart("spa")
        await waitReachable(array, "spb", "spa")
        response = await array.request("spb", "GET", "/api/v1/sps/spa/status")
        self.assertEqual(response.json()["pid"], array.pid("spa"))
