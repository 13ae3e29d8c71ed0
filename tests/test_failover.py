"""
Integration tests of the active token: a real arbiter (C{twistd spmgmt
proxy}) and real SP processes; faults are real signals and real files.
"""

from __future__ import annotations

import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from spmgmt.testing import ArrayHarness, ArrayTestMixin
from tests.test_peer_integration import waitRelay

PROBLEM = "application/problem+json"

#: A wider miss window (0.2 s x 5) for the tests that stop a process for
#: less than it: a loaded CI machine must not turn them into failovers.
WIDE_WINDOW = """
[token]
heartbeat_interval = 0.2
heartbeat_misses = 5
"""


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def startedArray(case: ArrayTestMixin, spIds: tuple[str, ...] = ("spa", "spb"), **kw: object) -> ArrayHarness:
    """A running array with its arbiter, once spa holds the token."""
    array = await case.startArray(spIds=spIds, arbiter=True, **kw)
    await array.waitHolder(spIds[0], spIds[0])
    return array


async def stamped(array: ArrayHarness, spId: str, epoch: int) -> int:
    """The status of an active-role request stamped with C{epoch}."""
    response = await array.request(
        spId, "GET", f"/api/v1/sps/{spId}/health", headers={"X-SPMgmt-Epoch": str(epoch)}
    )
    return response.code


class FailoverTests(ArrayTestMixin, TestCase):
    """The token moves when the active SP dies, hangs or turns unhealthy."""

    timeout = 120

    async def test_sigkillActive(self) -> None:
        """
        SIGKILL the active SP: the other becomes active in a new epoch, and
        the move says the connection was lost.
        """
        array = await startedArray(self)
        before = await array.waitHolder("spb", "spa")
        await array.kill("spa")
        after = await array.waitHolder("spb", "spb")
        self.assertGreater(after["epoch"], before["epoch"])
        view = await array.array("spb")
        self.assertIn("connection lost", view["last_move"]["reason"])
        self.assertEqual(await stamped(array, "spb", after["epoch"]), 200)

    async def test_sigstopActive(self) -> None:
        """
        SIGSTOP the active beyond the miss window: failover.  After SIGCONT
        the old SP answers 421 to a request stamped with its old epoch,
        becomes passive, and never serves as active in the old epoch.
        """
        array = await startedArray(self)
        before = await array.waitHolder("spb", "spa")
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 200)
        array.signal("spa", signal.SIGSTOP)
        after = await array.waitHolder("spb", "spb")
        self.assertGreater(after["epoch"], before["epoch"])
        view = await array.array("spb")
        self.assertIn("missed heartbeats", view["last_move"]["reason"])
        array.signal("spa", signal.SIGCONT)
        # The very first request after waking must already be fenced.
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 421)
        response = await array.request(
            "spa", "GET", "/api/v1/sps/spa/health", headers={"X-SPMgmt-Epoch": str(before["epoch"])}
        )
        self.assertEqual(response.header("Content-Type"), PROBLEM)
        self.assertEqual(response.json()["title"], "Misdirected Request")

        async def passive() -> bool:
            summary = (await array.request("spa", "GET", "/api/v1/sps/spa")).json()
            return summary["role"] == "passive"

        await array.waitFor(passive, 10.0, "spa to become passive", "spa")
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 421)
        self.assertEqual(await stamped(array, "spb", after["epoch"]), 200)
        # The token stays where it went: no failback.
        await sleep(1.0)
        self.assertEqual((await array.array("spb"))["token"], after)

    async def test_unhealthyActive(self) -> None:
        """
        The maintenance file on the active: failover with reason unhealthy;
        removing it does not move the token back (failback is off).
        """
        array = await startedArray(self)
        before = await array.waitHolder("spb", "spa")
        array.path("var/spa.maintenance").touch()
        after = await array.waitHolder("spb", "spb")
        self.assertGreater(after["epoch"], before["epoch"])
        view = await array.array("spb")
        self.assertIn("unhealthy", view["last_move"]["reason"])
        # spa is in service mode and knows it is not active.
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 421)
        array.path("var/spa.maintenance").unlink()

        async def spaHealthy() -> bool:
            return (await array.request("spa", "GET", "/healthz", user=None)).json()["web_server"] == "full"

        await array.waitFor(spaHealthy, 10.0, "spa healthy again", "spa")
        await sleep(1.0)
        self.assertEqual((await array.array("spb"))["token"], after)

    async def test_threeSPsTwoFailovers(self) -> None:
        """Three SPs: two failovers in a row, each to a healthy SP."""
        array = await startedArray(self, spIds=("spa", "spb", "spc"))
        first = await array.waitHolder("spc", "spa")
        await array.kill("spa")
        second = await array.waitHolder("spc", "spb")
        array.path("var/spb.maintenance").touch()
        third = await array.waitHolder("spc", "spc")
        self.assertLess(first["epoch"], second["epoch"])
        self.assertLess(second["epoch"], third["epoch"])

    async def test_noHealthySP(self) -> None:
        """
        Both SPs unhealthy: the array is unavailable and service-mode routes
        still answer; the first SP to recover is promoted.
        """
        array = await startedArray(self)
        array.path("var/spa.maintenance").touch()
        array.path("var/spb.maintenance").touch()
        for spId in ("spa", "spb"):

            async def inService(spId: str = spId) -> bool:
                healthz = await array.request(spId, "GET", "/healthz", user=None)
                return healthz.json()["web_server"] == "service"

            await array.waitFor(inService, 10.0, f"{spId} in service mode", spId)
        await array.waitHolder("spa", None)
        await array.waitHolder("spb", None)
        view = await array.array("spb")
        self.assertEqual(view["state"], "unavailable", view)
        self.assertIsNone(view["token"]["holder"])
        # (spa's peer link may still be coming up: the test can get here
        # within a second of starting the array.)
        await waitRelay(array, "spa", "spb")
        status = await array.request("spa", "GET", "/api/v1/sps/spb/status")
        self.assertEqual(status.code, 200, status.body)
        self.assertEqual(status.json()["web_server"], "service")
        uptime = await array.request("spb", "POST", "/api/v1/sps/spb/commands/uptime", body={})
        self.assertEqual(uptime.code, 200)
        array.path("var/spb.maintenance").unlink()
        await array.waitHolder("spa", "spb")


class NoFalseFailoverTests(ArrayTestMixin, TestCase):
    """Stalls shorter than the miss window move nothing."""

    timeout = 120

    async def test_shortSigstop(self) -> None:
        """SIGSTOP the active for less than the miss window: no token move."""
        array = await startedArray(self, extra=WIDE_WINDOW)
        before = await array.waitHolder("spb", "spa")
        for _ in range(3):
            array.signal("spa", signal.SIGSTOP)
            await sleep(0.3)  # the window is 1.0 s
            array.signal("spa", signal.SIGCONT)
            await sleep(0.5)
        self.assertEqual((await array.array("spb"))["token"], before)
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 200)


class ArbiterRestartTests(ArrayTestMixin, TestCase):
    """The arbiter can die and come back without reusing an epoch."""

    timeout = 120

    async def test_sigkillArbiter(self) -> None:
        """
        SIGKILL the arbiter and restart it: the SPs reconnect, the same SP
        holds the token, and no epoch is reused.
        """
        array = await startedArray(self)
        before = await array.waitHolder("spb", "spa")
        await array.kill("arbiter")

        async def arbiterGone() -> bool:
            return (await array.array("spb"))["arbiter"]["reachable"] is False

        await array.waitFor(arbiterGone, 10.0, "spb to miss the arbiter", "spb")
        array.startProcess("arbiter")
        await array.waitReady("arbiter")
        after = await array.waitHolder("spb", "spa")
        self.assertGreaterEqual(after["epoch"], before["epoch"])
        epochs = {before["epoch"], after["epoch"]}
        self.assertEqual(await stamped(array, "spa", after["epoch"]), 200)
        # Every SP reconnects to the new arbiter.

        async def allConnected() -> bool:
            view = await array.array("spa")
            return all(entry["arbiter_connected"] for entry in view["sps"])

        await array.waitFor(allConnected, 10.0, "every SP to reconnect to the arbiter", "spa")
        # A later move takes a new epoch, above everything seen.
        await array.kill("spa")
        moved = await array.waitHolder("spb", "spb")
        self.assertGreater(moved["epoch"], max(epochs))


class SwitchoverTests(ArrayTestMixin, TestCase):
    """The token moves on purpose."""

    timeout = 120

    async def test_switchover(self) -> None:
        """
        C{POST /api/v1/array/switchover} on the active SP moves the token to
        the other SP and answers with the new token; asked of a passive SP
        it is refused; a monitor may not ask.
        """
        array = await startedArray(self)
        before = await array.waitHolder("spb", "spa")
        refused = await array.request("spb", "POST", "/api/v1/array/switchover", body={})
        self.assertEqual(refused.code, 409)
        monitor = await array.request("spa", "POST", "/api/v1/array/switchover", body={}, user="monitor")
        self.assertEqual(monitor.code, 403)
        response = await array.request("spa", "POST", "/api/v1/array/switchover", body={"to": "spb"})
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json()["token"]["holder"], "spb")
        self.assertGreater(response.json()["token"]["epoch"], before["epoch"])
        after = await array.waitHolder("spa", "spb")
        self.assertEqual(await stamped(array, "spb", after["epoch"]), 200)
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 421)
