# -*- test-case-name: tests.test_role -*-
"""
Tests for L{spmgmt.sp.role}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from spmgmt.sp.role import (
    ACTIVE,
    PASSIVE,
    STEPPING_DOWN,
    RoleState,
    begin,
    end,
    granted,
    heard,
    revoked,
    seen,
    serves,
    tick,
)

LEASE = 1.0


def activeWith(epoch: int, now: float = 0.0, state: RoleState | None = None) -> RoleState:
    """A state that accepted a grant of C{epoch} at C{now}."""
    state, accepted = granted(state or RoleState(), epoch, now)
    assert accepted, (state, epoch)
    return state


class InitialTests(SynchronousTestCase):
    """
    A new SP is passive and serves nothing.
    """

    def test_passive(self) -> None:
        """
        The initial state is passive, holds nothing and has seen no epoch.
        """
        state = RoleState()
        self.assertEqual(
            (state.role, state.epoch, state.holds, state.newest, state.lastHeard, state.inFlight),
            (PASSIVE, None, None, 0, None, 0),
        )
        self.assertFalse(serves(state, 0, 0.0, LEASE))
        self.assertFalse(serves(state, 1, 0.0, LEASE))

    def test_tickPassive(self) -> None:
        """
        A tick changes nothing for a passive SP.
        """
        self.assertEqual(tick(RoleState(), 100.0, LEASE), RoleState())


class GrantTests(SynchronousTestCase):
    """
    L{granted} accepts grants that are not older than the newest epoch seen.
    """

    def test_grant(self) -> None:
        """
        A grant makes the SP active under that epoch, hears from the
        arbiter and teaches the epoch.
        """
        state, accepted = granted(RoleState(), 3, 10.0)
        self.assertTrue(accepted)
        self.assertEqual(
            (state.role, state.epoch, state.holds, state.newest, state.lastHeard), (ACTIVE, 3, 3, 3, 10.0)
        )
        self.assertTrue(serves(state, 3, 10.0, LEASE))

    def test_newerGrantReplaces(self) -> None:
        """
        A newer grant replaces the epoch held.
        """
        state = activeWith(4, 1.0, activeWith(3))
        self.assertEqual((state.role, state.epoch, state.newest), (ACTIVE, 4, 4))
        self.assertFalse(serves(state, 3, 1.0, LEASE))
        self.assertTrue(serves(state, 4, 1.0, LEASE))

    def test_olderGrantRefused(self) -> None:
        """
        A grant older than the newest epoch seen is refused and changes
        nothing.
        """
        for state in [activeWith(5), seen(RoleState(), 5), revoked(activeWith(5), 5, 1.0)]:
            for epoch in [1, 4]:
                self.assertEqual(granted(state, epoch, 2.0), (state, False), (state, epoch))

    def test_seenEpochGrantRefused(self) -> None:
        """
        A grant of the newest epoch seen, which this SP does not hold (it
        saw someone else's), is refused.
        """
        state = seen(RoleState(), 5)
        self.assertEqual(granted(state, 5, 1.0), (state, False))

    def test_duplicateGrantAccepted(self) -> None:
        """
        The same grant again (a retried message) is accepted but does not
        extend the lease: the lease counts from the last answered heartbeat,
        as the arbiter's miss window does.
        """
        state = activeWith(5, 0.0)
        again, accepted = granted(state, 5, 0.9)
        self.assertTrue(accepted)
        self.assertEqual((again.role, again.epoch, again.lastHeard), (ACTIVE, 5, 0.0))
        self.assertFalse(serves(again, 5, 1.8, LEASE))
        self.assertTrue(serves(heard(again, 0.9), 5, 1.8, LEASE))

    def test_revokedEpochNotGrantedAgain(self) -> None:
        """
        A grant of an epoch that was revoked is refused, whether or not the
        SP is still finishing requests under it: a revoked epoch never
        comes back.
        """
        passive = revoked(activeWith(5), 5, 1.0)
        self.assertEqual(granted(passive, 5, 2.0), (passive, False))
        steppingDown = revoked(begin(activeWith(5)), 5, 1.0)
        self.assertEqual(steppingDown.role, STEPPING_DOWN)
        self.assertEqual(granted(steppingDown, 5, 2.0), (steppingDown, False))

    def test_grantWhileSteppingDown(self) -> None:
        """
        A newer grant while stepping down makes the SP active under the new
        epoch; requests still in flight are kept count of.
        """
        state = revoked(begin(activeWith(5)), 5, 1.0)
        state = activeWith(6, 2.0, state)
        self.assertEqual((state.role, state.epoch, state.inFlight), (ACTIVE, 6, 1))
        state = end(state)
        self.assertEqual((state.role, state.epoch, state.inFlight), (ACTIVE, 6, 0))


class ClaimTests(SynchronousTestCase):
    """
    The claim is the last epoch granted and not revoked: kept across a
    step-down on the lease, so the arbiter can hand the same epoch back.
    """

    def test_grantSetsClaim(self) -> None:
        """
        An accepted grant is claimed; a refused one changes no claim.
        """
        state = activeWith(5)
        self.assertEqual(state.claim, 5)
        self.assertEqual(granted(state, 4, 1.0)[0].claim, 5)
        self.assertEqual(activeWith(6, 1.0, state).claim, 6)

    def test_keptAfterLeaseStepDown(self) -> None:
        """
        Stepping down on the lease keeps the claim (and reports no epoch
        held).
        """
        state = tick(activeWith(5, 0.0), 1.5, LEASE)
        self.assertEqual((state.role, state.holds, state.claim), (PASSIVE, None, 5))

    def test_claimedEpochGrantedBack(self) -> None:
        """
        The claimed epoch granted again after a step-down on the lease is
        accepted: the SP is active under it again.
        """
        state = tick(activeWith(5, 0.0), 1.5, LEASE)
        state, accepted = granted(heard(state, 1.9), 5, 2.0)
        self.assertTrue(accepted)
        self.assertEqual((state.role, state.epoch, state.claim), (ACTIVE, 5, 5))
        self.assertTrue(serves(state, 5, 2.0, LEASE))

    def test_revokeClearsClaim(self) -> None:
        """
        A revoke of the claimed epoch or a newer one clears the claim; a
        revoke of an older one does not.
        """
        self.assertEqual(revoked(activeWith(5), 4, 1.0).claim, 5)
        self.assertIsNone(revoked(activeWith(5), 5, 1.0).claim)
        self.assertIsNone(revoked(activeWith(5), 7, 1.0).claim)
        lapsed = tick(activeWith(5, 0.0), 1.5, LEASE)
        self.assertIsNone(revoked(lapsed, 5, 2.0).claim)

    def test_revokedClaimNotGrantedBack(self) -> None:
        """
        Once its claim was revoked, the epoch granted again is refused.
        """
        state = revoked(tick(activeWith(5, 0.0), 1.5, LEASE), 5, 2.0)
        self.assertEqual(granted(state, 5, 2.1), (state, False))

    def test_claimOlderThanSeen(self) -> None:
        """
        A claimed epoch older than the newest seen is not granted back.
        """
        state = seen(tick(activeWith(5, 0.0), 1.5, LEASE), 6)
        self.assertEqual(granted(state, 5, 2.0), (state, False))


class RevokeTests(SynchronousTestCase):
    """
    L{revoked} ends the active role for the epoch held (or an older one).
    """

    def test_revoke(self) -> None:
        """
        A revoke of the epoch held makes an idle SP passive.
        """
        state = revoked(activeWith(5), 5, 1.0)
        self.assertEqual(
            (state.role, state.epoch, state.holds, state.newest, state.lastHeard), (PASSIVE, None, None, 5, 1.0)
        )
        self.assertFalse(serves(state, 5, 1.0, LEASE))

    def test_revokeNewer(self) -> None:
        """
        A revoke of a newer epoch also ends the role and teaches the epoch.
        """
        state = revoked(activeWith(5), 7, 1.0)
        self.assertEqual((state.role, state.epoch, state.newest), (PASSIVE, None, 7))

    def test_revokeOlderOnlyTeaches(self) -> None:
        """
        A revoke of an older epoch leaves the role alone.
        """
        state = revoked(activeWith(5), 4, 1.0)
        self.assertEqual((state.role, state.epoch, state.newest, state.lastHeard), (ACTIVE, 5, 5, 1.0))
        self.assertTrue(serves(state, 5, 1.0, LEASE))

    def test_revokePassive(self) -> None:
        """
        A revoke reaching a passive SP teaches the epoch only.
        """
        state = revoked(RoleState(), 3, 1.0)
        self.assertEqual((state.role, state.epoch, state.newest), (PASSIVE, None, 3))


class StepDownTests(SynchronousTestCase):
    """
    With requests in flight, losing the role goes through C{stepping_down}
    until the last one ends.
    """

    def test_inFlightRevoke(self) -> None:
        """
        Revoked with two requests in flight, the SP steps down: it stops
        reporting the epoch and serving new requests at once, and becomes
        passive when the last request ends.
        """
        state = begin(begin(activeWith(5)))
        self.assertEqual(state.inFlight, 2)
        state = revoked(state, 5, 0.5)
        self.assertEqual((state.role, state.epoch, state.holds), (STEPPING_DOWN, 5, None))
        self.assertFalse(serves(state, 5, 0.5, LEASE))
        state = end(state)
        self.assertEqual((state.role, state.epoch, state.inFlight), (STEPPING_DOWN, 5, 1))
        state = end(state)
        self.assertEqual((state.role, state.epoch, state.inFlight), (PASSIVE, None, 0))

    def test_inFlightLeaseExpiry(self) -> None:
        """
        A lease that runs out with a request in flight steps down the same
        way.
        """
        state = tick(begin(activeWith(5, 0.0)), 1.5, LEASE)
        self.assertEqual((state.role, state.holds), (STEPPING_DOWN, None))
        self.assertEqual(end(state).role, PASSIVE)

    def test_endWhileActive(self) -> None:
        """
        Requests ending while active leave the role alone.
        """
        state = end(begin(activeWith(5)))
        self.assertEqual((state.role, state.epoch, state.inFlight), (ACTIVE, 5, 0))

    def test_endNeverNegative(self) -> None:
        """
        An unmatched C{end} does not count below zero.
        """
        self.assertEqual(end(RoleState()).inFlight, 0)
        self.assertEqual(end(end(begin(activeWith(5)))).inFlight, 0)

    def test_secondRevokeWhileSteppingDown(self) -> None:
        """
        Another revoke while stepping down keeps waiting for the requests.
        """
        state = revoked(begin(activeWith(5)), 5, 0.5)
        state = revoked(state, 5, 0.6)
        self.assertEqual((state.role, state.inFlight), (STEPPING_DOWN, 1))
        self.assertEqual(end(state).role, PASSIVE)


class LeaseTests(SynchronousTestCase):
    """
    An SP acts as active only while it has heard from the arbiter within
    the lease.
    """

    def test_leaseBoundary(self) -> None:
        """
        At exactly the lease the SP still serves and stays active; just
        after it neither serves nor, after a tick, stays active.
        """
        state = activeWith(5, 10.0)
        self.assertTrue(serves(state, 5, 11.0, LEASE))
        self.assertEqual(tick(state, 11.0, LEASE), state)
        self.assertFalse(serves(state, 5, 11.01, LEASE))
        self.assertEqual(tick(state, 11.01, LEASE).role, PASSIVE)

    def test_heardRenews(self) -> None:
        """
        Hearing from the arbiter renews the lease.
        """
        state = activeWith(5, 0.0)
        for now in [0.9, 1.8, 2.7]:
            state = tick(heard(state, now), now + 0.5, LEASE)
        self.assertEqual(state.role, ACTIVE)
        self.assertTrue(serves(state, 5, 3.7, LEASE))

    def test_sigstop(self) -> None:
        """
        Active at t=0 and then stopped (SIGSTOP) until t=5 with a lease of
        1 s: the first tick after waking steps down, and nothing is served
        even before that tick.
        """
        state = activeWith(5, 0.0)
        self.assertTrue(serves(state, 5, 0.0, LEASE))
        # Woken at t=5: a request that arrives before the tick is refused.
        self.assertFalse(serves(state, 5, 5.0, LEASE))
        state = tick(state, 5.0, LEASE)
        self.assertEqual((state.role, state.epoch, state.holds), (PASSIVE, None, None))
        self.assertFalse(serves(state, 5, 5.0, LEASE))
        # Hearing from the arbiter again does not bring the role back.
        self.assertFalse(serves(heard(state, 5.1), 5, 5.1, LEASE))

    def test_noLastHeard(self) -> None:
        """
        An active state that never heard from the arbiter does not serve
        and steps down at the first tick.
        """
        state = RoleState(role=ACTIVE, epoch=5, newest=5)
        self.assertFalse(serves(state, 5, 0.0, LEASE))
        self.assertEqual(tick(state, 0.0, LEASE).role, PASSIVE)


class ServesTests(SynchronousTestCase):
    """
    L{serves} admits a request only under the exact epoch held.
    """

    def test_exactEpoch(self) -> None:
        """
        An older or newer epoch than the one held is not served.
        """
        state = activeWith(5, 0.0)
        served = [serves(state, e, 0.5, LEASE) for e in [3, 4, 5, 6, 7]]
        self.assertEqual(served, [False, False, True, False, False])

    def test_newerEpochSeen(self) -> None:
        """
        An SP that has seen a newer epoch than the one it holds knows it is
        stale: it neither serves its old epoch nor reports holding it.
        """
        state = seen(activeWith(5, 0.0), 6)
        self.assertEqual(state.newest, 6)
        self.assertFalse(serves(state, 5, 0.5, LEASE), "an SP that saw epoch 6 still serves epoch 5")
        self.assertIsNone(state.holds, "an SP that saw epoch 6 still reports holding epoch 5")


class SeenTests(SynchronousTestCase):
    """
    L{seen} remembers the newest epoch.
    """

    def test_keepsNewest(self) -> None:
        """
        Older epochs do not lower what was seen.
        """
        state = RoleState()
        for epoch, newest in [(3, 3), (2, 3), (7, 7), (7, 7), (0, 7), (8, 8)]:
            state = seen(state, epoch)
            self.assertEqual(state.newest, newest)

    def test_unchangedIsSame(self) -> None:
        """
        Seeing an epoch that is not newer returns the state unchanged.
        """
        state = seen(RoleState(), 4)
        self.assertIs(seen(state, 4), state)
        self.assertIs(seen(state, 1), state)


# One operation on an SP's role, drawn by the property below.
operations = st.one_of(
    st.tuples(st.just("grant"), st.integers(0, 8)),
    st.tuples(st.just("revoke"), st.integers(0, 8)),
    st.tuples(st.just("seen"), st.integers(0, 8)),
    st.tuples(st.just("heard"), st.just(0)),
    st.tuples(st.just("begin"), st.just(0)),
    st.tuples(st.just("end"), st.just(0)),
    st.tuples(st.just("tick"), st.just(0)),
)


class RolePropertyTests(SynchronousTestCase):
    """
    Properties of any sequence of operations.
    """

    @settings(max_examples=300, database=None, derandomize=True, deadline=None)
    @given(st.lists(st.tuples(operations, st.sampled_from([0.0, 0.3, 0.7, 1.2]))))
    def test_invariants(self, ops: list[tuple[tuple[str, int], float]]) -> None:
        """
        Whatever happens: the newest epoch never falls; the SP only serves
        the epoch it holds, never one older than accepted before; a held
        epoch is never older than the newest seen by a grant; the role and
        epoch agree; the in-flight count is never negative.
        """
        state = RoleState()
        now = 0.0
        accepted: list[int] = []
        for (op, epoch), dt in ops:
            now += dt
            newest = state.newest
            if op == "grant":
                state, ok = granted(state, epoch, now)
                if ok:
                    self.assertTrue(not accepted or epoch >= accepted[-1])
                    accepted.append(epoch)
            elif op == "revoke":
                state = revoked(state, epoch, now)
            elif op == "seen":
                state = seen(state, epoch)
            elif op == "heard":
                state = heard(state, now)
            elif op == "begin":
                state = begin(state)
            elif op == "end":
                state = end(state)
            else:
                state = tick(state, now, LEASE)
            self.assertGreaterEqual(state.newest, newest)
            self.assertGreaterEqual(state.inFlight, 0)
            if state.claim is not None:
                self.assertLessEqual(state.claim, state.newest)
                self.assertIn(state.claim, accepted)
            self.assertEqual(state.role == PASSIVE, state.epoch is None, state)
            if state.epoch is not None:
                self.assertLessEqual(state.epoch, state.newest)
            for e in range(10):
                if serves(state, e, now, LEASE):
                    self.assertEqual((state.role, state.epoch, state.holds), (ACTIVE, e, e))
                    self.assertEqual(e, accepted[-1])
