"""
Tests for L{spmgmt.election}: the leadership machine, with time passed in.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from spmgmt import election
from spmgmt.election import (
    CallFailed,
    Campaign,
    Campaigned,
    Deposed,
    GrantLease,
    Lead,
    LeaseGranted,
    Renew,
    Renewed,
    StepDown,
    Tick,
)


def leading(name: str = "a1", ttl: int = 3, now: float = 0.0) -> election.State:
    """A machine that leads in term 10 with lease 7, granted at C{now}."""
    state = election.initial(name, ttl)
    state, _ = election.step(state, Tick(now))
    state, _ = election.step(state, LeaseGranted(7, ttl, now))
    state, effects = election.step(state, Tick(now))
    assert effects == [Campaign(7)], effects
    state, effects = election.step(state, Campaigned(name, 10, 7))
    assert effects == [Lead(10)], effects
    return state


class ElectionTests(SynchronousTestCase):
    def test_campaignAndLead(self) -> None:
        """A lease first, then a campaign; winning it leads in the key's term."""
        state = election.initial("a1", 3)
        state, effects = election.step(state, Tick(0.0))
        self.assertEqual(effects, [GrantLease(3)])
        state, effects = election.step(state, Tick(0.1))
        self.assertEqual(effects, [])  # one call at a time
        state = leading()
        self.assertTrue(state.leading)
        self.assertEqual((state.term, state.leader), (10, "a1"))

    def test_followerCampaignsEveryTick(self) -> None:
        """Someone else leads: campaign again at each tick until the key is free."""
        state = election.initial("a2", 3)
        state, _ = election.step(state, Tick(0.0))
        state, _ = election.step(state, LeaseGranted(8, 3, 0.0))
        for now in (0.1, 0.2, 0.3):
            state, effects = election.step(state, Tick(now))
            self.assertEqual(effects, [Campaign(8)])
            state, effects = election.step(state, Campaigned("a1", 10, 7))
            self.assertEqual((effects, state.leading, state.leader), ([], False, "a1"))
        state, effects = election.step(state, Tick(0.4))
        state, effects = election.step(state, Campaigned("a2", 15, 8))
        self.assertEqual(effects, [Lead(15)])

    def test_renewsAtAThirdOfTheTTL(self) -> None:
        """The lease is renewed once a third of its TTL has passed since the last renewal was sent."""
        state = leading(ttl=3)
        state, effects = election.step(state, Tick(0.9))
        self.assertEqual(effects, [])
        state, effects = election.step(state, Tick(1.0))
        self.assertEqual(effects, [Renew(7)])
        state, effects = election.step(state, Renewed(3, 1.0))
        self.assertEqual((effects, state.leaseUntil), ([], 4.0))

    def test_stepsDownWhenRenewalsGoUnanswered(self) -> None:
        """
        With no renewal answered, the leader steps down when the TTL has
        passed since the last renewal was sent: no later than etcd can
        expire its key and let another lead.
        """
        state = leading(ttl=3)
        state, effects = election.step(state, Tick(1.0))
        self.assertEqual(effects, [Renew(7)])
        state, _ = election.step(state, CallFailed(2.0))
        state, effects = election.step(state, Tick(2.0))
        self.assertEqual(effects, [Renew(7)])  # at once; the lease still counts from 0.0
        state, _ = election.step(state, CallFailed(2.9))
        state, effects = election.step(state, Tick(2.95))
        self.assertEqual(effects, [Renew(7)])
        state, _ = election.step(state, CallFailed(2.98))
        self.assertTrue(state.leading)
        state, effects = election.step(state, Tick(3.0))
        self.assertEqual(effects[0], StepDown(10, "the lease may have expired (no renewal answered in time)"))
        self.assertEqual(effects[1:], [GrantLease(3)])  # and starts over
        self.assertFalse(state.leading)
        self.assertIsNone(state.lease)

    def test_lateRenewalCountsFromItsSending(self) -> None:
        """A renewal answered late extends the lease from when it was sent, not answered."""
        state = leading(ttl=3)
        state, _ = election.step(state, Tick(1.0))
        state, _ = election.step(state, Renewed(3, 1.0))
        self.assertEqual(state.leaseUntil, 4.0)
        state, _ = election.step(state, Tick(2.0))
        state, _ = election.step(state, Renewed(3, 2.0))
        self.assertEqual(state.leaseUntil, 5.0)

    def test_leaseGone(self) -> None:
        """A renewal that finds the lease gone steps down and starts over with a new lease."""
        state = leading(ttl=3)
        state, _ = election.step(state, Tick(1.0))
        state, effects = election.step(state, Renewed(0, 1.0))
        self.assertEqual(effects, [StepDown(10, "the lease expired")])
        state, effects = election.step(state, Tick(1.1))
        self.assertEqual(effects, [GrantLease(3)])

    def test_keyChangedUnderTheLeader(self) -> None:
        """The leader's periodic check finds another term on the key: it steps down."""
        state = leading(ttl=3)
        state, effects = election.step(state, Tick(0.5))
        self.assertEqual(effects, [])
        state, _ = election.step(state, Tick(1.0))  # renew first
        state, _ = election.step(state, Renewed(3, 1.0))
        state, effects = election.step(state, Tick(1.05))
        self.assertEqual(effects, [Campaign(7)])
        state, effects = election.step(state, Campaigned("a2", 12, 9))
        self.assertEqual(effects, [StepDown(10, "the leader key is not ours")])
        self.assertEqual(state.leader, "a2")

    def test_deposed(self) -> None:
        """A fenced write that failed steps the leader down; a follower ignores it."""
        state, effects = election.step(leading(), Deposed(1.0))
        self.assertEqual(effects, [StepDown(10, "a fenced write found the leader key changed")])
        state, effects = election.step(state, Deposed(1.1))
        self.assertEqual(effects, [])
