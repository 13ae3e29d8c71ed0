"""
Integration tests of network faults on the control link (RELIABILITY.md
F08): real arbiter and SP processes, with spa's PB connection to the
arbiter routed through a fault-injecting L{spmgmt.testing.relay.Relay}
while every HTTP path stays direct and working.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial.unittest import TestCase

from spmgmt.testing import ArrayHarness, ArrayTestMixin
from spmgmt.testing.relay import FREEZE, PASS, REFUSE, RESET
from tests.test_failover import PROBLEM, sleep, stamped

#: Loose slack on top of C{lease_timeout} for an SP to notice its lease ran
#: out (one heartbeat tick) and for the test to see it over HTTP.
MARGIN = 1.5


async def spaActive(case: ArrayTestMixin) -> ArrayHarness:
    """
    A running array, spa's control link through a relay, once spa holds
    the token.  On a loaded machine spa can miss the arbiter's startup
    grace and spb get the token first: then it is switched over to spa.
    """
    array = await case.startArray(spIds=("spa", "spb"), arbiter=True, controlRelay=("spa",))
    seen: dict[str, Any] = {}

    async def settled() -> bool:
        view = await array.array("spb")
        seen.update(view)
        return view["state"] == "active" and all(entry["arbiter_connected"] for entry in view["sps"])

    await array.waitFor(settled, 30.0, "a holder and every SP connected", "spb")
    holder = seen["token"]["holder"]
    if holder != "spa":
        moved = await array.request(holder, "POST", "/api/v1/array/switchover", body={"to": "spa"})
        assert moved.code == 200, moved.body
    await array.waitHolder("spa", "spa")
    return array


async def summary(array: ArrayHarness, spId: str) -> dict[str, Any]:
    """C{GET /api/v1/sps/{spId}} on that SP itself."""
    return (await array.request(spId, "GET", f"/api/v1/sps/{spId}")).json()  # type: ignore[no-any-return]


async def actives(array: ArrayHarness) -> list[str]:
    """The SPs that call themselves active."""
    return [spId for spId in array.spIds if (await summary(array, spId))["role"] == "active"]


async def waitPassive(array: ArrayHarness, spId: str, timeout: float) -> float:
    """Wait until C{spId} says it is passive; the seconds it took."""
    started = time.monotonic()

    async def passive() -> bool:
        return (await summary(array, spId))["role"] == "passive"

    await array.waitFor(passive, timeout, f"{spId} to become passive", spId, interval=0.02)
    return time.monotonic() - started


async def waitArbiterUnreachable(array: ArrayHarness, spId: str) -> None:
    """Wait until C{spId} itself says it cannot hear the arbiter."""

    async def unreachable() -> bool:
        return (await array.array(spId))["arbiter"]["reachable"] is False

    await array.waitFor(unreachable, 10.0, f"{spId} to miss the arbiter", spId)


async def waitConverged(case: TestCase, array: ArrayHarness, token: dict[str, Any]) -> None:
    """
    G8: every SP reports C{token}, every SP is connected to the arbiter,
    and exactly its holder calls itself active; still so a second later
    (no failback, no flapping).
    """
    for spId in array.spIds:
        case.assertEqual(await array.waitHolder(spId, token["holder"]), token)

    async def allConnected() -> bool:
        view = await array.array(token["holder"])
        return all(entry["arbiter_connected"] for entry in view["sps"])

    await array.waitFor(allConnected, 10.0, "every SP to be connected to the arbiter", token["holder"])
    async def oneActive() -> bool:
        return await actives(array) == [token["holder"]]

    await array.waitFor(oneActive, 10.0, "exactly one active SP", token["holder"])
    await sleep(1.0)
    case.assertEqual(await actives(array), [token["holder"]])
    for spId in array.spIds:
        case.assertEqual((await array.array(spId))["token"], token)


class ControlPartitionTests(ArrayTestMixin, TestCase):
    """The active SP loses its control link while its HTTP path works (F08)."""

    timeout = 120

    async def test_frozenControlLink(self) -> None:
        """
        Freeze spa's control link (sockets open, nothing forwarded): the
        arbiter grants spb a new epoch for missed heartbeats, spa steps
        down on its own lease and fences its old epoch with 421.  Once the
        link passes again spa reconnects and stays passive: the array
        converges on spb, the token never goes back.
        """
        array = await spaActive(self)
        relay = array.relays["spa"]
        lease = array.config.token.lease_timeout
        before = await array.waitHolder("spb", "spa")
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 200)

        relay.setMode(FREEZE)
        steppedDown = await waitPassive(array, "spa", lease + MARGIN)
        self.assertLess(steppedDown, lease + MARGIN)
        after = await array.waitHolder("spb", "spb")
        self.assertGreater(after["epoch"], before["epoch"])
        self.assertIn("spa missed heartbeats", (await array.array("spb"))["last_move"]["reason"])
        fenced = await array.request(
            "spa", "GET", "/api/v1/sps/spa/health", headers={"X-SPMgmt-Epoch": str(before["epoch"])}
        )
        self.assertEqual(fenced.code, 421)
        self.assertEqual(fenced.header("Content-Type"), PROBLEM)
        self.assertEqual(await stamped(array, "spb", after["epoch"]), 200)
        await waitArbiterUnreachable(array, "spa")
        self.assertGreaterEqual(relay.count(FREEZE).connections, 1)

        relay.setMode(PASS)
        await waitConverged(self, array, after)
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 421)
        self.assertEqual(await stamped(array, "spb", after["epoch"]), 200)
        self.assertEqual([mode for _, mode in relay.history], [FREEZE, PASS])

    async def test_resetControlLink(self) -> None:
        """
        Reset spa's control connection while it holds the token: the
        arbiter sees the connection lost and grants spb at once; spa
        reconnects through the relay, is told its epoch is stale (or
        runs out its lease) and turns passive; exactly one active, epochs
        never go back.

        (The arbiter cannot re-adopt spa here: the relay aborts the
        arbiter's side of the connection at the same moment as spa's,
        and spa needs a reconnect, a TLS handshake and a login before it
        can claim anything, by when its epoch is no longer the newest.)
        """
        array = await spaActive(self)
        relay = array.relays["spa"]
        lease = array.config.token.lease_timeout
        before = await array.waitHolder("spb", "spa")
        passedBefore = relay.count(PASS).connections

        relay.setMode(RESET)
        started = time.monotonic()
        after = await array.waitHolder("spb", "spb")
        moved = time.monotonic() - started
        self.assertGreater(after["epoch"], before["epoch"])
        self.assertIn("spa connection lost", (await array.array("spb"))["last_move"]["reason"])
        self.assertLess(moved, MARGIN)  # no miss window to wait out
        await waitPassive(array, "spa", lease + MARGIN)
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 421)

        await waitConverged(self, array, after)
        self.assertEqual(relay.count(RESET).connections, 1)
        self.assertGreater(relay.count(PASS).connections, passedBefore)  # spa came back through it
        self.assertEqual(relay.mode, PASS)

    async def test_refusedControlLink(self) -> None:
        """
        Cut spa's control connection and refuse its reconnects: the token
        moves to spb at once, spa (which hears nothing, not even a
        revoke) steps down on its lease, and only reconnects, as a
        passive SP, once the relay passes again.
        """
        array = await spaActive(self)
        relay = array.relays["spa"]
        lease = array.config.token.lease_timeout
        before = await array.waitHolder("spb", "spa")

        relay.setMode(REFUSE)
        relay.setMode(RESET)
        after = await array.waitHolder("spb", "spb")
        self.assertGreater(after["epoch"], before["epoch"])
        self.assertIn("spa connection lost", (await array.array("spb"))["last_move"]["reason"])
        await waitPassive(array, "spa", lease + MARGIN)
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 421)
        await waitArbiterUnreachable(array, "spa")

        async def refusedOnce() -> bool:
            return relay.count(REFUSE).connections >= 1

        await array.waitFor(refusedOnce, 10.0, "spa to try to reconnect", "spa")
        self.assertEqual(relay.count(RESET).connections, 1)

        relay.setMode(PASS)
        await waitConverged(self, array, after)
        self.assertEqual(await stamped(array, "spa", before["epoch"]), 421)


class ControlPartitionSafetyTests(ArrayTestMixin, TestCase):
    """G1 across a lost control connection: no two SPs active at once."""

    timeout = 120
    async def test_resetNoOverlap(self) -> None:
        """
        After spa's control connection is reset, no request stamped with
        spa's old epoch is served by spa once spb has said it is active
        under the new one.
        """
        array = await spaActive(self)
        relay = array.relays["spa"]
        before = await array.waitHolder("spb", "spa")
        newActiveSince: list[float] = []
        servedOld: list[float] = []  # invocation times of 200s from spa under the old epoch
        deadline = time.monotonic() + 1.0

        async def watchSPB() -> None:
            while time.monotonic() < deadline and not newActiveSince:
                entry = await summary(array, "spb")
                if entry["role"] == "active" and entry["epoch"] > before["epoch"]:
                    newActiveSince.append(time.monotonic())

        async def hitSPA() -> None:
            while time.monotonic() < deadline:
                invoked = time.monotonic()
                if await stamped(array, "spa", before["epoch"]) == 200:
                    servedOld.append(invoked)

        relay.setMode(RESET)
        await gatherResults([ensureDeferred(watchSPB()), ensureDeferred(hitSPA())])
        self.assertTrue(newActiveSince, "spb never became active")
        late = [t - newActiveSince[0] for t in servedOld if t > newActiveSince[0]]
        worst = max(late, default=0.0)
        self.assertEqual(late, [], f"spa served its old epoch up to {worst:.3f}s after spb was active")

