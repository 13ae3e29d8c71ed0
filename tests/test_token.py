# -*- test-case-name: tests.test_token -*-
"""
Tests for L{spmgmt.token}: table and scenario tests of the arbiter's
decisions, and a Hypothesis state machine that drives it with random
schedules of heartbeats, silences, disconnects, acks, storage failures,
arbiter restarts and switchovers (RELIABILITY.md section 2.5).
"""

from __future__ import annotations

import traceback
from typing import Callable, Iterable, Sequence

from attrs import define, field
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from spmgmt.token import (
    PERSIST_RETRY,
    ArbiterState,
    Disconnected,
    Effect,
    Event,
    Grant,
    GrantAcked,
    Heartbeat,
    Input,
    Joined,
    Persist,
    PersistFailed,
    Policy,
    Revoke,
    Switchover,
    SwitchoverRefused,
    Tick,
    arrayState,
    candidate,
    initial,
    persisted,
    step,
)

SPA, SPB, SPC = "spa", "spb", "spc"

# spa is preferred over spb.
POLICY = Policy(interval=0.1, misses=3, preference=(SPA, SPB), startupGrace=1.0, ackTimeout=1.0)


def only(*sps: str, **kw: object) -> Policy:
    """The test policy with C{sps} as the preference order."""
    return Policy(
        interval=0.1, misses=3, preference=sps, startupGrace=1.0, ackTimeout=1.0, **kw  # type: ignore[arg-type]
    )


def grants(effects: Iterable[Effect]) -> list[Grant]:
    return [e for e in effects if isinstance(e, Grant)]


def revokes(effects: Iterable[Effect]) -> list[Revoke]:
    return [e for e in effects if isinstance(e, Revoke)]


def persists(effects: Iterable[Effect]) -> list[Persist]:
    return [e for e in effects if isinstance(e, Persist)]


def events(effects: Iterable[Effect], kind: str) -> list[dict[str, object]]:
    """The data of the events of C{kind}, with gaps rounded to microseconds."""
    found = []
    for effect in effects:
        if isinstance(effect, Event) and effect.kind == kind:
            data = dict(effect.data)
            if isinstance(data.get("gap_s"), float):
                data["gap_s"] = round(data["gap_s"], 6)  # type: ignore[call-overload]
            found.append(data)
    return found


def actions(effects: Iterable[Effect]) -> list[Effect]:
    """The effects that reach the disk or an SP (no events)."""
    return [e for e in effects if not isinstance(e, Event)]


_HELD = object()


class Run:
    """
    One arbiter fed inputs by a scenario, with the time set explicitly, and
    what each SP holds (and claims) tracked from the grants it acked and
    the revokes it got, so heartbeats can report it.
    """

    def __init__(
        self, policy: Policy = POLICY, persistedEpoch: int = 0, now: float = 0.0, lastHolder: str | None = None
    ) -> None:
        self.policy = policy
        self.now = now
        self.state = initial(persistedEpoch, now, lastHolder)
        self.holding: dict[str, int] = {}
        self.claims: dict[str, int] = {}
        self.connected: set[str] = set()
        self.unhealthy: set[str] = set()

    def feed(self, event: Input) -> list[Effect]:
        self.state, effects = step(self.state, event, self.policy)
        for effect in effects:
            if isinstance(effect, Revoke):
                if self.holding.get(effect.sp, effect.epoch + 1) <= effect.epoch:
                    del self.holding[effect.sp]
                if self.claims.get(effect.sp, effect.epoch + 1) <= effect.epoch:
                    del self.claims[effect.sp]
        return effects

    def at(self, now: float) -> Run:
        self.now = now
        return self

    def join(self, sp: str, healthy: bool = True, holds: int | None = None, claim: int | None = None) -> list[Effect]:
        self.connected.add(sp)
        if holds is not None:
            self.holding[sp] = holds
        (self.unhealthy.discard if healthy else self.unhealthy.add)(sp)
        return self.feed(Joined(sp, healthy, holds, self.now, claim))

    def beat(self, sp: str, healthy: bool = True, holds: object = _HELD, claim: object = _HELD) -> list[Effect]:
        (self.unhealthy.discard if healthy else self.unhealthy.add)(sp)
        held = self.holding.get(sp) if holds is _HELD else holds
        claimed = self.claims.get(sp) if claim is _HELD else claim
        return self.feed(Heartbeat(sp, healthy, held, self.now, claimed))  # type: ignore[arg-type]

    def disconnect(self, sp: str) -> list[Effect]:
        self.connected.discard(sp)
        self.holding.pop(sp, None)
        self.claims.pop(sp, None)
        return self.feed(Disconnected(sp, self.now))

    def ack(self, sp: str, epoch: int | None = None) -> list[Effect]:
        epoch = self.state.issued if epoch is None else epoch
        self.holding[sp] = self.claims[sp] = epoch
        return self.feed(GrantAcked(sp, epoch, self.now))

    def tick(self) -> list[Effect]:
        return self.feed(Tick(self.now))

    def switchover(self, to: str | None) -> list[Effect]:
        return self.feed(Switchover(to, self.now))

    def live(self, until: float, silent: Sequence[str] = ()) -> list[Effect]:
        """
        Every heartbeat interval up to C{until}: every connected SP but the
        C{silent} ones sends its heartbeat, then the arbiter ticks.  The
        effects of it all.
        """
        effects: list[Effect] = []
        while self.now + self.policy.interval <= until + 1e-9:
            self.now = round(self.now + self.policy.interval, 6)
            for sp in sorted(self.connected):
                if sp not in silent:
                    effects += self.beat(sp, sp not in self.unhealthy)
            effects += self.tick()
        return effects


def activeArray(sps: Sequence[str] = (SPA, SPB), policy: Policy | None = None) -> Run:
    """
    A fresh arbiter at t=0 preferring C{sps} in order, all of which joined
    healthy; the first acked epoch 1.
    """
    run = Run(policy or only(*sps))
    for sp in sps:
        run.join(sp)
    assert (run.state.holder, run.state.issued) == (sps[0], 1), run.state
    run.ack(sps[0], 1)
    assert arrayState(run.state) == "active"
    return run


class GrantTests(SynchronousTestCase):
    """
    The first grant and its acknowledgement.
    """

    def test_firstGrant(self) -> None:
        """
        Once the SPs it prefers have joined, a fresh arbiter grants epoch 1
        to the first of them: persisted first (with the SP it goes to),
        then granted, then told as an event; the array is unavailable until
        the SP acks.
        """
        run = Run(only(SPA))
        effects = run.join(SPA)
        self.assertEqual(
            effects,
            [
                Event("health", {"sp": SPA, "healthy": True, "connected": True}),
                Persist(1, SPA),
                Grant(SPA, 1),
                Event("grant", {"to": SPA, "epoch": 1, "reason": "no active SP"}),
            ],
        )
        self.assertEqual((run.state.issued, run.state.holder, run.state.acked), (1, SPA, False))
        self.assertEqual(arrayState(run.state), "unavailable")

    def test_firstGrantByPreference(self) -> None:
        """
        At start the token goes by preference, not to the SP that connects
        first: the arbiter waits for the SPs it prefers (within the startup
        grace).
        """
        run = Run()
        self.assertEqual(actions(run.join(SPB)), [])
        self.assertEqual(actions(run.at(0.2).join(SPA)), [Persist(1, SPA), Grant(SPA, 1)])

    def test_firstGrantAfterGrace(self) -> None:
        """
        If a preferred SP does not come, the best one present is granted
        once the startup grace is over.
        """
        run = Run()
        run.join(SPB)
        self.assertEqual(actions(run.live(0.9)), [])
        self.assertEqual(actions(run.at(0.99).tick()), [])
        self.assertEqual(actions(run.at(1.0).tick()), [Persist(1, SPB), Grant(SPB, 1)])

    def test_unhealthyJoinGetsNothing(self) -> None:
        """
        An SP that joins unhealthy is not granted the token.
        """
        run = Run(only(SPA))
        self.assertEqual(actions(run.join(SPA, healthy=False)), [])
        self.assertEqual(actions(run.live(3.0)), [])
        self.assertEqual((run.state.holder, run.state.issued), (None, 0))

    def test_secondJoinChangesNothing(self) -> None:
        """
        Another SP joining while one is granted gets nothing.
        """
        run = Run()
        run.join(SPA)
        run.join(SPB)
        self.assertEqual(actions(run.at(0.1).join(SPC)), [])
        self.assertEqual(run.state.holder, SPA)

    def test_ack(self) -> None:
        """
        The ack of the grant makes the array active, with a C{token} event
        that says how long no SP was active (here: since the arbiter
        started).
        """
        run = Run(only(SPA), now=10.0)
        run.join(SPA)
        effects = run.at(10.25).ack(SPA, 1)
        self.assertEqual(effects, [Event("token", {"holder": SPA, "epoch": 1, "gap_s": 0.25})])
        self.assertEqual(arrayState(run.state), "active")
        self.assertIsNone(run.state.vacantSince)

    def test_ackGapAfterFailover(self) -> None:
        """
        After a failover the gap runs from when the old holder lost the
        token to the new holder's ack.
        """
        run = activeArray()
        run.live(5.0)
        run.at(5.05).disconnect(SPA)
        effects = run.at(5.25).ack(SPB, 2)
        self.assertEqual(events(effects, "token"), [{"holder": SPB, "epoch": 2, "gap_s": 0.2}])

    def test_wrongAckIgnored(self) -> None:
        """
        An ack from another SP, of another epoch, or a second ack changes
        nothing.
        """
        run = Run()
        run.join(SPA)
        run.join(SPB)
        before = run.state
        for sp, epoch in [(SPB, 1), (SPA, 0), (SPA, 2)]:
            self.assertEqual(run.at(0.1).feed(GrantAcked(sp, epoch, 0.1)), [])
            self.assertEqual(run.state, before)
        run.ack(SPA, 1)
        self.assertEqual(run.at(0.2).ack(SPA, 1), [])


class FailoverTests(SynchronousTestCase):
    """
    The token moves when the holder disconnects, reports unhealthy or
    misses heartbeats, to a healthy SP in preference order.
    """

    def test_holderDisconnects(self) -> None:
        """
        The holder's disconnect moves the token at once to the other SP;
        the disconnected SP is not sent a revoke (it cannot hear it).
        """
        run = activeArray()
        effects = run.at(0.05).disconnect(SPA)
        self.assertEqual(actions(effects), [Persist(2, SPB), Grant(SPB, 2)])
        self.assertEqual(revokes(effects), [])
        [revoke] = events(effects, "revoke")
        self.assertEqual((revoke["from"], revoke["epoch"]), (SPA, 1))
        self.assertIn("connection lost", str(revoke["reason"]))
        [grant] = events(effects, "grant")
        self.assertEqual((grant["to"], grant["epoch"]), (SPB, 2))
        self.assertIn("connection lost", str(grant["reason"]))
        self.assertEqual(events(effects, "health"), [{"sp": SPA, "healthy": True, "connected": False}])
        self.assertEqual(arrayState(run.state), "unavailable")

    def test_holderUnhealthy(self) -> None:
        """
        The holder reporting unhealthy is revoked and the other SP granted.
        """
        run = activeArray()
        effects = run.at(0.1).beat(SPA, healthy=False)
        self.assertEqual(actions(effects), [Revoke(SPA, 1), Persist(2, SPB), Grant(SPB, 2)])
        [grant] = events(effects, "grant")
        self.assertIn("unhealthy", str(grant["reason"]))
        [revoke] = events(effects, "revoke")
        self.assertEqual(revoke["reason"], "unhealthy")

    def test_unknownDisconnects(self) -> None:
        """
        A disconnect of an SP the arbiter never heard from changes nothing.
        """
        run = activeArray()
        before = run.state
        self.assertEqual(run.at(0.1).feed(Disconnected("spz", 0.1)), [])
        self.assertEqual(run.state, before)

    def test_heartbeatWithoutJoin(self) -> None:
        """
        A heartbeat from an SP that had not joined (the arbiter restarted
        under it) counts as joining.
        """
        run = Run(only(SPA))
        effects = run.beat(SPA)
        self.assertEqual(events(effects, "health"), [{"sp": SPA, "healthy": True, "connected": True}])
        self.assertEqual(actions(effects), [Persist(1, SPA), Grant(SPA, 1)])

    def test_passiveDisconnectOrUnhealthy(self) -> None:
        """
        A passive SP going away or unhealthy does not move the token.
        """
        run = activeArray((SPA, SPB, SPC))
        self.assertEqual(actions(run.at(0.1).beat(SPB, healthy=False)), [])
        self.assertEqual(actions(run.at(0.2).disconnect(SPC)), [])
        self.assertEqual((run.state.holder, run.state.issued, arrayState(run.state)), (SPA, 1, "active"))

    def test_shortSilenceNoMove(self) -> None:
        """
        A holder silent for less than the miss window (or exactly that
        long) keeps the token (G6).
        """
        run = activeArray()
        run.live(1.0)
        lastHeard = run.now
        self.assertEqual(actions(run.live(lastHeard + 0.3, silent=[SPA])), [])
        for gap in [0.29, 0.3]:
            self.assertEqual(actions(run.at(lastHeard + gap).tick()), [], gap)
        self.assertEqual((run.state.holder, run.state.issued, arrayState(run.state)), (SPA, 1, "active"))

    def test_silenceRepeatedlyShorterThanWindow(self) -> None:
        """
        Silences each shorter than the miss window, over and over, never
        move the token.
        """
        run = activeArray()
        effects: list[Effect] = []
        for _ in range(20):
            effects += run.live(run.now + 0.25, silent=[SPA])
            effects += run.live(run.now + 0.1)
        self.assertEqual(actions(effects), [])
        self.assertEqual(run.state.issued, 1)

    def test_longSilenceMoves(self) -> None:
        """
        A holder silent for longer than the miss window is revoked and the
        token moves, with "missed heartbeats" as the reason.
        """
        run = activeArray()
        run.live(1.0)
        lastHeard = run.now
        run.live(lastHeard + 0.3, silent=[SPA])
        effects = run.at(lastHeard + 0.31).tick()
        self.assertEqual(actions(effects), [Revoke(SPA, 1), Persist(2, SPB), Grant(SPB, 2)])
        [grant] = events(effects, "grant")
        self.assertIn("missed heartbeats", str(grant["reason"]))

    def test_silentCandidateSkipped(self) -> None:
        """
        A passive SP that is itself silent beyond the miss window is not a
        candidate.
        """
        run = activeArray((SPA, SPB, SPC))
        run.live(1.0, silent=[SPB])
        effects = run.at(run.now + 0.01).disconnect(SPA)
        self.assertEqual(grants(effects), [Grant(SPC, 2)])

    def test_noHealthySp(self) -> None:
        """
        With no healthy SP left the token is vacant and the array
        unavailable; the first SP to become healthy is granted at once.
        """
        run = activeArray()
        run.at(0.1).beat(SPB, healthy=False)
        effects = run.at(0.2).beat(SPA, healthy=False)
        self.assertEqual(actions(effects), [Revoke(SPA, 1)])
        self.assertEqual((run.state.holder, arrayState(run.state)), (None, "unavailable"))
        self.assertEqual(actions(run.live(1.0)), [])
        self.assertEqual(run.state.issued, 1)
        effects = run.at(1.05).beat(SPB, healthy=True)
        self.assertEqual(actions(effects), [Persist(2, SPB), Grant(SPB, 2)])
        self.assertEqual(events(run.at(1.1).ack(SPB), "token"), [{"holder": SPB, "epoch": 2, "gap_s": 0.9}])
        self.assertEqual(arrayState(run.state), "active")

    def test_twoFailoversInPreferenceOrder(self) -> None:
        """
        With three SPs, two failovers in a row each go to the most
        preferred healthy, connected SP.
        """
        run = activeArray((SPA, SPB, SPC))
        run.at(0.1).beat(SPB, healthy=False)
        effects = run.at(0.2).disconnect(SPA)
        self.assertEqual(grants(effects), [Grant(SPC, 2)])  # spb is unhealthy
        run.at(0.3).ack(SPC)
        run.at(0.4).join(SPA)
        run.at(0.4).beat(SPB, healthy=True)
        effects = run.at(0.5).beat(SPC, healthy=False)
        self.assertEqual(actions(effects), [Revoke(SPC, 2), Persist(3, SPA), Grant(SPA, 3)])  # spa before spb
        run.at(0.6).ack(SPA)
        self.assertEqual((run.state.holder, run.state.issued, arrayState(run.state)), (SPA, 3, "active"))

    def test_preferenceOverJoinOrder(self) -> None:
        """
        The preference order, not the order of joining, picks the holder;
        SPs not in the preference list come after, by name.
        """
        policy = only(SPC, SPB)
        run = Run(policy)
        for sp in [SPA, "spz", SPB]:
            self.assertEqual(actions(run.join(sp)), [])
        self.assertEqual(grants(run.join(SPC)), [Grant(SPC, 1)])
        run.ack(SPC)
        self.assertEqual(grants(run.at(0.1).disconnect(SPC)), [Grant(SPB, 2)])
        run.ack(SPB)
        self.assertEqual(grants(run.at(0.2).disconnect(SPB)), [Grant(SPA, 3)])
        run.ack(SPA)
        self.assertEqual(grants(run.at(0.3).disconnect(SPA)), [Grant("spz", 4)])
        self.assertEqual(candidate(run.state, 0.3, policy), "spz")

    def test_unackedHolderLost(self) -> None:
        """
        A granted SP that disconnects before acking loses the grant too.
        """
        run = Run()
        run.join(SPA)
        run.join(SPB)
        self.assertEqual(actions(run.at(0.1).disconnect(SPA)), [Persist(2, SPB), Grant(SPB, 2)])

    def test_ackTimeoutMovesOn(self) -> None:
        """
        A grant not acked within the ack timeout is revoked and the token
        moves on to another healthy SP, rather than being granted again to
        the SP that did not ack (which could stall the array for good).
        """
        run = Run()
        run.join(SPA)
        run.join(SPB)
        self.assertEqual(actions(run.live(1.0)), [])
        effects = run.live(1.1)
        self.assertEqual(actions(effects), [Revoke(SPA, 1), Persist(2, SPB), Grant(SPB, 2)])
        [grant] = events(effects, "grant")
        self.assertIn("did not acknowledge", str(grant["reason"]))

    def test_ackTimeoutOnlySp(self) -> None:
        """
        With no other SP, a grant not acked in time is revoked and granted
        anew under the next epoch; a late ack of the old one is ignored.
        """
        run = Run(only(SPA))
        run.join(SPA)
        self.assertEqual(actions(run.live(1.0)), [])
        self.assertEqual(actions(run.live(1.1)), [Revoke(SPA, 1), Persist(2, SPA), Grant(SPA, 2)])
        self.assertEqual(run.at(1.15).ack(SPA, 1), [])
        self.assertEqual(arrayState(run.state), "unavailable")

    def test_holderStepsDown(self) -> None:
        """
        A holder that acked and then heartbeats holding nothing (it stepped
        down or restarted) loses the token: its epoch is revoked, the array
        is unavailable until a new epoch is acked, and the old epoch is not
        accepted again.
        """
        run = activeArray()
        effects = run.at(0.1).beat(SPA, holds=None, claim=None)
        self.assertEqual(actions(effects)[:1], [Revoke(SPA, 1)])
        self.assertEqual([p.epoch for p in persists(effects)], [2])
        self.assertNotEqual((run.state.holder, run.state.issued), (SPA, 1))
        self.assertEqual(arrayState(run.state), "unavailable")
        self.assertEqual(run.at(0.2).ack(SPA, 1), [])
        self.assertEqual(arrayState(run.state), "unavailable")

    def test_holderRenewedAfterLeaseStepDown(self) -> None:
        """
        A holder that stepped down on its own lease but still claims the
        newest epoch (a stall just under the miss window) is handed the same
        epoch again: no new epoch, no move (G6).
        """
        run = activeArray()
        effects = run.at(0.1).beat(SPA, holds=None, claim=1)
        self.assertEqual(actions(effects), [Grant(SPA, 1)])
        self.assertEqual((run.state.holder, run.state.issued), (SPA, 1))
        run.at(0.12).ack(SPA, 1)
        self.assertEqual(arrayState(run.state), "active")

    def test_unackedHolderHeartbeatsNothing(self) -> None:
        """
        A granted SP that heartbeats holding nothing before its ack (the
        grant is still on its way) keeps the grant.
        """
        run = Run()
        run.join(SPA)
        run.join(SPB)
        self.assertEqual(actions(run.at(0.1).beat(SPA, holds=None)), [])
        self.assertEqual((run.state.holder, run.state.issued), (SPA, 1))

    def test_staleClaimRevoked(self) -> None:
        """
        An SP claiming an older epoch than the current one is told to give
        it up; the holder is not disturbed.
        """
        run = activeArray()
        run.at(0.1).disconnect(SPA)
        run.ack(SPB, 2)
        effects = run.at(0.2).join(SPA, holds=1)
        self.assertEqual(actions(effects), [Revoke(SPA, 1)])
        self.assertEqual((run.state.holder, run.state.issued, arrayState(run.state)), (SPB, 2, "active"))

    def test_staleClaimWhileVacant(self) -> None:
        """
        An SP claiming an older epoch while no SP holds the token is told
        to give it up, not adopted.
        """
        run = activeArray()
        run.at(0.1).disconnect(SPA)
        run.ack(SPB, 2)
        run.at(0.2).disconnect(SPB)
        effects = run.at(0.3).join(SPA, holds=1)
        self.assertEqual(actions(effects)[:1], [Revoke(SPA, 1)])
        self.assertNotEqual((run.state.holder, run.state.acked), (SPA, True))

    def test_revokedEpochNotAdopted(self) -> None:
        """
        A heartbeat still claiming an epoch the arbiter has just revoked
        (sent before the SP processed the revoke) does not make the arbiter
        adopt that epoch again: it told the SP to give the epoch up, so
        the SP is about to step down.
        """
        run = Run(only(SPA))
        run.join(SPA)
        run.ack(SPA, 1)
        self.assertEqual(actions(run.at(0.1).beat(SPA, healthy=False)), [Revoke(SPA, 1)])
        effects = run.at(0.15).feed(Heartbeat(SPA, True, 1, 0.15, 1))
        self.assertEqual(events(effects, "adopt"), [])
        self.assertNotEqual((run.state.holder, run.state.issued, run.state.acked), (SPA, 1, True))

    def test_revokedEpochNotHandedBack(self) -> None:
        """
        The last holder coming back with the claim of an epoch the arbiter
        revoked (a hung holder that woke, stepped down on its lease and
        heartbeats before it processes the revoke) is not handed that epoch
        again: the SP will refuse it once it processes the revoke, and the
        array would wait out the ack timeout.
        """
        run = Run(only(SPA))
        run.join(SPA)
        run.ack(SPA, 1)
        run.live(1.0)
        lastHeard = run.now
        effects = run.live(lastHeard + 0.4, silent=[SPA])
        self.assertEqual(actions(effects), [Revoke(SPA, 1)])
        effects = run.at(lastHeard + 0.5).feed(Heartbeat(SPA, True, None, lastHeard + 0.5, 1))
        self.assertEqual([g for g in grants(effects) if g.epoch == 1], [])


class LastHolderTests(SynchronousTestCase):
    """
    The SP that the stored epoch was granted to may get that same epoch
    back (no new epoch) if it comes back claiming it while no SP holds the
    token.
    """

    def test_afterRestart(self) -> None:
        """
        After a restart, the stored epoch's holder joining with a claim on
        it (it stepped down on its lease meanwhile) is granted it again,
        without a persist.
        """
        run = Run(only(SPA, SPB), persistedEpoch=5, now=100.0, lastHolder=SPB)
        effects = run.at(100.1).join(SPB, claim=5)
        self.assertEqual(actions(effects), [Grant(SPB, 5)])
        self.assertEqual(events(effects, "grant"), [{"to": SPB, "epoch": 5, "reason": "last holder is back"}])
        self.assertEqual(events(run.at(100.2).ack(SPB, 5), "token"), [{"holder": SPB, "epoch": 5, "gap_s": 0.2}])

    def test_notForOthers(self) -> None:
        """
        Only the SP the epoch was granted to, healthy and claiming exactly
        that epoch, gets it back.
        """
        for sp, healthy, claim in [(SPA, True, 5), (SPB, True, 4), (SPB, False, 5), (SPB, True, None)]:
            run = Run(only(SPA, SPB, SPC), persistedEpoch=5, now=100.0, lastHolder=SPB)
            self.assertEqual(grants(run.join(sp, healthy=healthy, claim=claim)), [], (sp, healthy, claim))

    def test_afterLostConnection(self) -> None:
        """
        The holder whose connection dropped, coming back with its claim
        while nobody else took the token, gets the same epoch back.
        """
        run = activeArray((SPA,))
        run.at(0.1).disconnect(SPA)
        self.assertEqual(actions(run.at(0.2).join(SPA, claim=1)), [Grant(SPA, 1)])

    def test_notOnceMovedOn(self) -> None:
        """
        Once a newer epoch was granted, the old holder's claim is stale and
        revoked rather than granted.
        """
        run = activeArray()
        run.at(0.1).disconnect(SPA)
        self.assertEqual(grants(run.at(0.2).join(SPA, claim=1)), [])


class FailbackTests(SynchronousTestCase):
    """
    Failback is off unless C{preferred} and C{failbackAfter} are set.
    """

    def failedOver(self, policy: Policy) -> Run:
        """spa held epoch 1, went unhealthy; spb acked epoch 2."""
        run = activeArray(policy=policy)
        run.at(0.1).beat(SPA, healthy=False)
        run.ack(SPB, 2)
        return run

    def test_offByDefault(self) -> None:
        """
        The old holder healthy again does not get the token back.
        """
        run = self.failedOver(POLICY)
        run.at(0.2).beat(SPA, healthy=True)
        self.assertEqual(actions(run.live(60.0)), [])
        self.assertEqual((run.state.holder, run.state.issued), (SPB, 2))

    def test_preferredWithoutDelayOff(self) -> None:
        """
        C{preferred} alone does not turn failback on.
        """
        run = self.failedOver(only(SPA, SPB, preferred=SPA))
        run.at(0.2).beat(SPA, healthy=True)
        self.assertEqual(actions(run.live(30.0)), [])

    def test_failbackAfterDelay(self) -> None:
        """
        With C{preferred} and C{failbackAfter}, the preferred SP gets the
        token back once it has been healthy that long, not before.
        """
        run = self.failedOver(only(SPA, SPB, preferred=SPA, failbackAfter=2.0))
        run.at(0.2).beat(SPA, healthy=True)
        self.assertEqual(actions(run.live(2.1)), [])
        effects = run.live(2.2)
        self.assertEqual(actions(effects), [Persist(3, SPA), Revoke(SPB, 2), Grant(SPA, 3)])
        self.assertEqual([e["reason"] for e in events(effects, "grant")], ["failback"])
        run.ack(SPA, 3)
        self.assertEqual(actions(run.live(10.0)), [])

    def test_failbackClockRestartsOnRelapse(self) -> None:
        """
        A preferred SP that goes unhealthy again restarts its wait.
        """
        run = self.failedOver(only(SPA, SPB, preferred=SPA, failbackAfter=2.0))
        run.at(0.2).beat(SPA, healthy=True)
        run.live(1.5)
        run.beat(SPA, healthy=False)
        run.at(1.6).beat(SPA, healthy=True)
        self.assertEqual(actions(run.live(3.5)), [])
        self.assertEqual(grants(run.live(3.7)), [Grant(SPA, 3)])

    def test_noFailbackWhilePreferredSilent(self) -> None:
        """
        A preferred SP that is silent beyond the miss window is not given
        the token back.
        """
        run = self.failedOver(only(SPA, SPB, preferred=SPA, failbackAfter=0.5))
        run.at(0.2).beat(SPA, healthy=True)
        run.live(0.4)
        self.assertEqual(actions(run.live(3.0, silent=[SPA])), [])


class SwitchoverTests(SynchronousTestCase):
    """
    A planned move of the token, and its refusals.
    """

    def test_named(self) -> None:
        """
        A switchover to a named SP revokes the holder and grants it.
        """
        run = activeArray((SPA, SPB, SPC))
        effects = run.at(0.1).switchover(SPC)
        self.assertEqual(actions(effects), [Persist(2, SPC), Revoke(SPA, 1), Grant(SPC, 2)])
        self.assertEqual([e["reason"] for e in events(effects, "grant")], ["switchover"])
        self.assertEqual([e["reason"] for e in events(effects, "revoke")], ["switchover"])
        self.assertEqual(events(run.at(0.15).ack(SPC), "token"), [{"holder": SPC, "epoch": 2, "gap_s": 0.05}])

    def test_bestOther(self) -> None:
        """
        A switchover without a target picks the best other healthy SP.
        """
        run = activeArray((SPA, SPB, SPC))
        self.assertEqual(actions(run.at(0.1).switchover(None)), [Persist(2, SPB), Revoke(SPA, 1), Grant(SPB, 2)])
        run.ack(SPB)
        self.assertEqual(grants(run.at(0.2).switchover(None)), [Grant(SPA, 3)])

    def test_bestOtherSkipsUnhealthy(self) -> None:
        """
        The best other SP is a healthy one.
        """
        run = activeArray((SPA, SPB, SPC))
        run.at(0.1).beat(SPB, healthy=False)
        self.assertEqual(grants(run.at(0.2).switchover(None)), [Grant(SPC, 2)])

    def test_vacant(self) -> None:
        """
        A switchover while no SP holds the token (during the startup grace
        after a restart) grants the target at once, revoking nothing.
        """
        run = Run(only(SPA, SPB, SPC), persistedEpoch=5, now=100.0)
        run.join(SPA)
        run.join(SPB)
        self.assertEqual(actions(run.at(100.2).switchover(SPB)), [Persist(6, SPB), Grant(SPB, 6)])

    def test_vacantBestOther(self) -> None:
        """
        Without a target and without a holder, the best SP is granted.
        """
        run = Run(only(SPA, SPB, SPC), persistedEpoch=5, now=100.0)
        run.join(SPB)
        run.join(SPA)
        self.assertEqual(actions(run.at(100.2).switchover(None)), [Persist(6, SPA), Grant(SPA, 6)])

    def test_unackedHolder(self) -> None:
        """
        A switchover away from a granted SP that has not acked revokes its
        grant.
        """
        run = Run()
        run.join(SPA)
        run.join(SPB)
        self.assertEqual(actions(run.at(0.1).switchover(SPB)), [Persist(2, SPB), Revoke(SPA, 1), Grant(SPB, 2)])

    def test_refused(self) -> None:
        """
        A switchover to an unknown, unhealthy, silent or disconnected SP,
        or to the holder, is refused and changes nothing.
        """
        run = activeArray((SPA, SPB, SPC, "spd"))
        run.at(0.1).beat(SPB, healthy=False)
        run.at(0.1).disconnect(SPC)
        run.live(1.0, silent=["spd"])
        before = run.state
        for to, says in [
            ("spz", "spz is not connected"),
            (SPB, "spb is not healthy"),
            (SPC, "spc is not healthy and connected"),
            ("spd", "spd is not healthy and connected"),
            (SPA, "spa already holds"),
        ]:
            error = self.assertRaises(SwitchoverRefused, run.switchover, to)
            self.assertIn(says, str(error), to)
            self.assertEqual(run.state, before)

    def test_refusedNoOther(self) -> None:
        """
        A switchover to the best other SP is refused when there is none.
        """
        run = activeArray()
        run.at(0.1).beat(SPB, healthy=False)
        error = self.assertRaises(SwitchoverRefused, run.switchover, None)
        self.assertIn("no other healthy SP", str(error))
        self.assertEqual((run.state.holder, run.state.issued), (SPA, 1))

    def test_refusedToUnackedHolder(self) -> None:
        """
        A switchover to the SP already granted (not yet acked) is refused.
        """
        run = Run()
        run.join(SPA)
        run.join(SPB)
        self.assertRaises(SwitchoverRefused, run.switchover, SPA)


class RestartTests(SynchronousTestCase):
    """
    An arbiter restarted from the persisted epoch adopts the SP that holds
    it and waits for it before granting anew.
    """

    def test_adopt(self) -> None:
        """
        An SP joining with the persisted epoch becomes the holder with no
        token move: no persist, no grant, the array active at once.
        """
        run = Run(only(SPA, SPB, SPC), persistedEpoch=5, now=100.0)
        effects = run.at(100.2).join(SPB, holds=5)
        self.assertEqual(actions(effects), [])
        self.assertEqual(events(effects, "adopt"), [{"holder": SPB, "epoch": 5, "gap_s": 0.2}])
        self.assertEqual((run.state.holder, run.state.issued, run.state.acked), (SPB, 5, True))
        self.assertEqual(arrayState(run.state), "active")
        self.assertEqual(actions(run.at(100.3).join(SPA)), [])
        self.assertEqual(actions(run.live(105.0)), [])

    def test_staleClaim(self) -> None:
        """
        An SP claiming an older epoch is revoked and not adopted.
        """
        run = Run(only(SPA, SPB, SPC), persistedEpoch=5, now=100.0)
        effects = run.join(SPB, holds=3)
        self.assertEqual(actions(effects), [Revoke(SPB, 3)])
        self.assertIsNone(run.state.holder)

    def test_nobodyClaims(self) -> None:
        """
        When no SP claims the persisted epoch, the arbiter waits for the
        startup grace and then grants the next epoch.
        """
        run = Run(only(SPA, SPB, SPC), persistedEpoch=5, now=100.0)
        self.assertEqual(actions(run.join(SPA)), [])
        self.assertEqual(actions(run.at(100.05).join(SPB)), [])
        self.assertEqual(actions(run.live(100.9)), [])
        self.assertEqual(actions(run.at(100.99).tick()), [])
        effects = run.at(101.0).tick()
        self.assertEqual(actions(effects), [Persist(6, SPA), Grant(SPA, 6)])

    def test_everyoneBackNobodyClaims(self) -> None:
        """
        Once every SP it knows of has joined and none claims the persisted
        epoch, nothing is left to wait for: the next epoch is granted at
        once.
        """
        run = Run(only(SPA, SPB), persistedEpoch=5, now=100.0)
        self.assertEqual(actions(run.join(SPB)), [])
        self.assertEqual(actions(run.at(100.1).join(SPA)), [Persist(6, SPA), Grant(SPA, 6)])

    def test_holderComesBackDuringGrace(self) -> None:
        """
        The holder of the persisted epoch joining late in the grace is
        adopted, after others joined holding nothing.
        """
        run = Run(only(SPA, SPB, SPC), persistedEpoch=5, now=100.0)
        run.join(SPA)
        run.live(100.8)
        effects = run.at(100.85).join(SPB, holds=5)
        self.assertEqual(actions(effects), [])
        self.assertEqual((run.state.holder, arrayState(run.state)), (SPB, "active"))
        self.assertEqual(actions(run.live(103.0)), [])

    def test_adoptedUnhealthy(self) -> None:
        """
        An SP that comes back holding the persisted epoch but unhealthy is
        revoked, and a healthy SP is granted at once, without waiting for
        the grace.
        """
        run = Run(only(SPA, SPB, SPC), persistedEpoch=5, now=100.0)
        run.join(SPA)
        effects = run.at(100.1).join(SPB, healthy=False, holds=5)
        self.assertEqual(actions(effects), [Revoke(SPB, 5), Persist(6, SPA), Grant(SPA, 6)])

    def test_claimAheadOfStorage(self) -> None:
        """
        An SP claiming an epoch newer than the stored one (the epoch file
        was lost) is adopted, the arbiter continues from that epoch, and it
        persists it at once (with its holder) so that another restart
        cannot go back below it (G2).
        """
        run = Run(only(SPA, SPB), persistedEpoch=3, now=100.0)
        effects = run.join(SPA, holds=7)
        self.assertEqual((run.state.holder, run.state.issued, run.state.acked), (SPA, 7, True))
        self.assertEqual([a["epoch"] for a in events(effects, "adopt")], [7])
        self.assertEqual(persists(effects), [Persist(7, SPA)])


class PersistFailedTests(SynchronousTestCase):
    """
    An epoch that could not be persisted is undone: none is skipped or
    reused, and the operator is alarmed once.
    """

    def test_undone(self) -> None:
        """
        The failed epoch is undone, no SP holds the token, one alarm is
        raised; the next grant uses the same epoch number again.
        """
        run = activeArray()
        run.live(2.0)
        self.assertEqual(persists(run.switchover(SPB)), [Persist(2, SPB)])
        effects = run.feed(PersistFailed(2, "Input/output error", 2.0))
        self.assertEqual(effects, [Event("alarm", {"epoch": 2, "why": "Input/output error"})])
        state = run.state
        # A planned move that cannot be stored leaves the old holder active.
        self.assertEqual((state.issued, state.holder, state.acked, state.alarmed), (1, SPA, True, True))
        self.assertEqual(arrayState(run.state), "active")
        # A holder lost meanwhile: the next grant reuses the number 2, but
        # only after the retry delay (no fsync storm on a failing disk).
        run.at(2.05).disconnect(SPA)
        self.assertEqual(arrayState(run.state), "unavailable")
        self.assertEqual(actions(run.at(2.1).tick()), [])
        effects = run.live(2.0 + PERSIST_RETRY + 0.1)
        self.assertEqual(actions(effects), [Persist(2, SPB), Grant(SPB, 2)])

    def test_alarmOnce(self) -> None:
        """
        Repeated failures alarm once until a persist succeeds; after that
        the next failure alarms again.
        """
        run = Run(only(SPA), now=10.0)
        run.join(SPA)
        alarms = []
        for now in [10.1, 10.1 + PERSIST_RETRY + 0.01, 10.1 + 2 * PERSIST_RETRY + 0.02]:
            alarms += events(run.at(now).feed(PersistFailed(1, "No space left on device", now)), "alarm")
            self.assertEqual((run.state.issued, run.state.holder), (0, None))
            self.assertEqual(actions(run.beat(SPA)), [])  # not before the retry delay
            self.assertEqual(actions(run.at(now + PERSIST_RETRY + 0.005).beat(SPA)), [Persist(1, SPA), Grant(SPA, 1)])
        self.assertEqual(len(alarms), 1)
        run.state = persisted(run.state)
        self.assertFalse(run.state.alarmed)
        run.ack(SPA, 1)
        later = run.now + 0.1
        run.at(later).join(SPB)
        run.at(later).switchover(SPB)
        self.assertEqual(run.state.issued, 2)
        self.assertEqual(len(events(run.feed(PersistFailed(2, "EIO", later)), "alarm")), 1)

    def test_persistedIsIdentityWithoutAlarm(self) -> None:
        """
        L{persisted} without an alarm returns the same state.
        """
        state = initial(3, 0.0)
        self.assertIs(persisted(state), state)

    def test_staleFailureIgnored(self) -> None:
        """
        A failure report for an epoch that is not the last issued, or for
        an acked one, changes nothing.
        """
        run = activeArray()
        before = run.state
        self.assertEqual(run.feed(PersistFailed(1, "late", 0.5)), [])
        self.assertEqual(run.feed(PersistFailed(0, "older", 0.5)), [])
        self.assertEqual(run.feed(PersistFailed(2, "newer", 0.5)), [])
        self.assertEqual(run.state, before)


# -- the state machine -----------------------------------------------------------

MACHINE_POLICY = only(SPB, SPA, SPC)

# Time steps: inside the miss window, about one window, past it, past the
# ack timeout and the startup grace.
STEPS = [0.05, 0.1, 0.2, 0.3, 0.31, 0.5, 1.05]


@define
class ModelSP:
    """
    What the model knows of one SP (a minimal L{spmgmt.sp.role}).

    @ivar up: connected to the arbiter.
    @ivar holds: the epoch it holds (from the grant it accepted) until it
        is revoked, gives it up, or its process restarts.
    @ivar claim: the last epoch granted to it and not revoked, kept when
        it steps down on its lease.
    @ivar newest: the newest epoch it has seen (grants older are refused).
    @ivar unacked: a grant it accepted and has not acknowledged yet.
    @ivar heardAt: when the arbiter last heard from it.
    @ivar inbox: grants and revokes sent to it and not yet processed, in
        order (one connection); lost when the connection drops.
    @ivar resigned: it gave up its epoch by itself (lease), not because it
        was told to.
    """

    up: bool = False
    healthy: bool = True
    holds: int | None = None
    claim: int | None = None
    newest: int = 0
    unacked: int | None = None
    heardAt: float = 0.0
    inbox: list[Grant | Revoke] = field(factory=list)
    resigned: bool = False


@define
class Model:
    now: float = 0.0
    sps: dict[str, ModelSP] = field(factory=lambda: {sp: ModelSP() for sp in (SPA, SPB, SPC)})
    persists: list[Persist] = field(factory=list)
    failPersists: int = 0
    grantedTo: dict[int, str] = field(factory=dict)
    ackedBy: dict[int, set[str]] = field(factory=dict)
    revokedNow: set[tuple[str, int]] = field(factory=set)
    joinedSinceStart: set[str] = field(factory=set)
    persistFailedNow: bool = False


class TokenMachine(RuleBasedStateMachine):
    """
    The arbiter's pure machine, driven by a shell that carries out its
    effects in order (a failed persist stops the rest of that list and is
    fed back at once) and a model of the SPs, which process grants and
    revokes when the schedule delivers them: a heartbeat may overtake a
    revoke on its way.
    """

    policy = MACHINE_POLICY

    def __init__(self) -> None:
        super().__init__()
        self.m = Model()
        self.state: ArbiterState = initial(0, 0.0)

    # -- the shell -------------------------------------------------------------

    @property
    def lastPersisted(self) -> Persist:
        return self.m.persists[-1] if self.m.persists else Persist(0, None)

    def feed(self, event: Input) -> None:
        self.state, effects = step(self.state, event, self.policy)
        self.carryOut(effects)

    def inGrace(self) -> bool:
        return self.m.now - self.state.startedAt < self.policy.startupGrace

    def everyoneJoined(self) -> bool:
        return set(self.policy.preference) <= self.m.joinedSinceStart

    def carryOut(self, effects: list[Effect], switchover: bool = False) -> None:
        m = self.m
        for i, effect in enumerate(effects):
            if isinstance(effect, Persist):
                # G2: every persisted epoch is above every earlier one.
                assert effect.epoch > self.lastPersisted.epoch, (effect, m.persists)
                if m.failPersists > 0:
                    m.failPersists -= 1
                    m.persistFailedNow = True
                    self.feed(PersistFailed(effect.epoch, "Input/output error", m.now))
                    return
                m.persists.append(effect)
                self.state = persisted(self.state)
            elif isinstance(effect, Grant):
                sp = m.sps[effect.sp]
                member = self.state.members[effect.sp]
                assert sp.up and sp.healthy, (effect, sp)
                assert m.now - sp.heardAt <= self.policy.missWindow, (effect, sp, m.now)
                assert member.connected and member.healthy, (effect, member)
                if Persist(effect.epoch, effect.sp) in effects[:i]:
                    # A new epoch, persisted (with its holder) earlier in the
                    # same step (first of all, for a planned move): granted
                    # once, ever.
                    assert effect.epoch not in m.grantedTo, (effect, m.grantedTo)
                    if self.inGrace() and not switchover and not self.everyoneJoined():
                        # While an SP may still come back with the stored
                        # epoch, a new one only follows a loss of the token.
                        assert any(isinstance(e, Event) and e.kind == "revoke" for e in effects), effects
                else:
                    # The stored epoch, handed back to the SP it was
                    # persisted for.
                    assert self.lastPersisted == Persist(effect.epoch, effect.sp), (effect, m.persists)
                    assert m.grantedTo.get(effect.epoch) == effect.sp, (effect, m.grantedTo)
                # Never an epoch this arbiter told the SP to give up.
                assert (effect.sp, effect.epoch) not in m.revokedNow, (effect, m.revokedNow)
                m.grantedTo[effect.epoch] = effect.sp
                sp.inbox.append(effect)
            elif isinstance(effect, Revoke):
                sp = m.sps[effect.sp]
                assert sp.up, (effect, sp)
                m.revokedNow.add((effect.sp, effect.epoch))
                sp.inbox.append(effect)

    def deliver(self, name: str) -> None:
        """The SP processes the next message from the arbiter."""
        sp = self.m.sps[name]
        message = sp.inbox.pop(0)
        if isinstance(message, Grant):
            if message.epoch > sp.newest or (message.epoch == sp.newest and sp.claim == message.epoch):
                sp.holds = sp.unacked = sp.newest = sp.claim = message.epoch
                sp.resigned = False
        else:
            sp.newest = max(sp.newest, message.epoch)
            if sp.holds is not None and message.epoch >= sp.holds:
                sp.holds = None
            if sp.claim is not None and message.epoch >= sp.claim:
                sp.claim = None
            if sp.unacked is not None and message.epoch >= sp.unacked:
                sp.unacked = None

    def eligible(self) -> list[str]:
        """The SPs that are connected, healthy and heard within the miss window."""
        return [
            name
            for name, sp in self.m.sps.items()
            if sp.up and sp.healthy and self.m.now - sp.heardAt <= self.policy.missWindow
        ]

    def dropConnection(self, sp: ModelSP) -> None:
        sp.up = False
        sp.unacked = None
        sp.inbox.clear()

    # -- rules -------------------------------------------------------------------

    @initialize(healthy=st.booleans())
    def start(self, healthy: bool) -> None:
        self.join(SPA, healthy)

    def names(self, data: st.DataObject, label: str, which: Callable[[ModelSP], object]) -> str:
        """Draw one of the SPs for which C{which} is true."""
        return data.draw(st.sampled_from([n for n, sp in self.m.sps.items() if which(sp)]), label=label)

    def someUp(self) -> bool:
        return any(sp.up for sp in self.m.sps.values())

    @precondition(lambda self: not all(sp.up for sp in self.m.sps.values()))
    @rule(data=st.data(), healthy=st.booleans())
    def connect(self, data: st.DataObject, healthy: bool) -> None:
        """An SP that is not connected (re)joins, reporting what it holds."""
        self.join(self.names(data, "joiner", lambda sp: not sp.up), healthy)

    def join(self, name: str, healthy: bool) -> None:
        sp = self.m.sps[name]
        sp.up, sp.healthy, sp.heardAt = True, healthy, self.m.now
        self.m.joinedSinceStart.add(name)
        self.feed(Joined(name, healthy, sp.holds, self.m.now, sp.claim))

    @precondition(someUp)
    @rule(data=st.data(), healthy=st.booleans())
    def heartbeat(self, data: st.DataObject, healthy: bool) -> None:
        """An SP heartbeats, maybe before it processed what was sent to it."""
        name = self.names(data, "beater", lambda sp: sp.up)
        sp = self.m.sps[name]
        sp.healthy, sp.heardAt = healthy, self.m.now
        self.feed(Heartbeat(name, healthy, sp.holds, self.m.now, sp.claim))

    @precondition(lambda self: any(sp.inbox for sp in self.m.sps.values()))
    @rule(data=st.data())
    def receive(self, data: st.DataObject) -> None:
        """An SP processes the next message sent to it."""
        self.deliver(self.names(data, "receiver", lambda sp: sp.inbox))

    @rule(dt=st.sampled_from([0.05, 0.1]))
    def everyoneBeats(self, dt: float) -> None:
        """
        The normal round: every connected SP processes what was sent to
        it, acknowledges a grant it accepted, and heartbeats as it is; then
        time passes and the arbiter ticks.
        """
        for name, sp in self.m.sps.items():
            while sp.inbox:
                self.deliver(name)
            if sp.up and sp.unacked is not None:
                self.ackFrom(name)
            if sp.up:
                sp.heardAt = self.m.now
                self.feed(Heartbeat(name, sp.healthy, sp.holds, self.m.now, sp.claim))
        self.advance(dt)

    @rule(dt=st.sampled_from(STEPS))
    def advance(self, dt: float) -> None:
        """Time passes (SPs that do not heartbeat miss); the arbiter ticks."""
        self.m.now = round(self.m.now + dt, 6)
        self.m.persistFailedNow = False
        self.feed(Tick(self.m.now))
        self.checkNotVacant()

    @precondition(someUp)
    @rule(data=st.data(), restarted=st.booleans())
    def disconnect(self, data: st.DataObject, restarted: bool) -> None:
        """
        An SP's control connection drops: its process died and restarts
        (it forgets what it held) or the connection broke (it keeps it).
        """
        name = self.names(data, "disconnected", lambda sp: sp.up)
        sp = self.m.sps[name]
        self.dropConnection(sp)
        if restarted:
            sp.holds, sp.claim, sp.newest = None, None, 0
        self.feed(Disconnected(name, self.m.now))

    @precondition(lambda self: any(sp.up and sp.unacked is not None for sp in self.m.sps.values()))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        """An SP acknowledges the grant it accepted."""
        self.ackFrom(self.names(data, "acker", lambda sp: sp.up and sp.unacked is not None))

    def ackFrom(self, name: str) -> None:
        sp = self.m.sps[name]
        epoch = sp.unacked
        assert epoch is not None and sp.holds == epoch
        sp.unacked = None
        self.m.ackedBy.setdefault(epoch, set()).add(name)
        # G1: no two SPs ever acknowledge the same epoch.
        assert len(self.m.ackedBy[epoch]) == 1, self.m.ackedBy
        self.feed(GrantAcked(name, epoch, self.m.now))

    @precondition(lambda self: any(sp.holds is not None for sp in self.m.sps.values()))
    @rule(data=st.data())
    def stepDown(self, data: st.DataObject) -> None:
        """An SP gives up its epoch by itself (its lease ran out); it keeps its claim."""
        sp = self.m.sps[self.names(data, "resigner", lambda sp: sp.holds is not None)]
        sp.holds = sp.unacked = None
        sp.resigned = True

    @rule(count=st.integers(1, 2))
    def breakStorage(self, count: int) -> None:
        """The next C{count} persists fail."""
        self.m.failPersists = count

    @rule(dt=st.sampled_from(STEPS), order=st.permutations([SPA, SPB, SPC]))
    def arbiterRestart(self, dt: float, order: list[str]) -> None:
        """
        The arbiter crashes and restarts from the last persisted epoch (and
        its holder); every SP's connection drops (with what was on its
        way), and those that were up join again, reporting what they hold.
        """
        self.m.now = round(self.m.now + dt, 6)
        wasUp = [name for name in order if self.m.sps[name].up]
        for sp in self.m.sps.values():
            self.dropConnection(sp)
        self.m.revokedNow.clear()
        self.m.joinedSinceStart.clear()
        self.state = initial(self.lastPersisted.epoch, self.m.now, self.lastPersisted.holder)
        for name in wasUp:
            self.join(name, self.m.sps[name].healthy)

    @rule(to=st.sampled_from([SPA, SPB, SPC, "spz", None]))
    def switchover(self, to: str | None) -> None:
        holder = self.state.holder
        eligible = self.eligible()
        try:
            self.state, effects = step(self.state, Switchover(to, self.m.now), self.policy)
        except SwitchoverRefused:
            # Refused only for a reason.
            if to is None:
                assert not [sp for sp in eligible if sp != holder], (eligible, holder)
            else:
                assert to not in eligible or to == holder, (to, eligible, holder)
            return
        assert to is None or (to in eligible and to != holder), (to, eligible, holder)
        self.carryOut(effects, switchover=True)

    # -- invariants ----------------------------------------------------------------

    def checkNotVacant(self) -> None:
        """
        After a tick, with an SP connected, healthy and heard within the
        miss window, the token is not vacant (unless its persist failed
        just now), except in the startup grace while an SP it prefers has
        not joined yet.
        """
        if self.state.holder is not None or self.m.persistFailedNow:
            return
        if self.state.alarmed and self.m.now - self.state.alarmedAt < PERSIST_RETRY:
            return  # grants wait out the retry delay after a failed store
        if self.inGrace() and not self.everyoneJoined():
            return
        assert not self.eligible(), (self.eligible(), self.state)

    @invariant()
    def holderConnectedAndHealthy(self) -> None:
        """The holder, if any, is connected and healthy."""
        holder = self.state.holder
        if holder is not None:
            member = self.state.members[holder]
            assert member.connected and member.healthy, (holder, member)
            assert self.m.sps[holder].up and self.m.sps[holder].healthy

    @invariant()
    def activeHolderHoldsIt(self) -> None:
        """
        While the array is active the holder holds exactly the issued
        epoch, unless it gave it up by itself and has not said so yet.
        """
        if arrayState(self.state) == "active":
            sp = self.m.sps[self.state.holder]  # type: ignore[index]
            assert sp.holds == self.state.issued or (sp.holds is None and sp.resigned), (self.state, sp)

    @invariant()
    def holdersKnown(self) -> None:
        """
        A connected SP that holds an epoch, and has processed all that was
        sent to it, is the holder the arbiter knows (nobody is left
        believing it is active without the arbiter knowing).
        """
        for name, sp in self.m.sps.items():
            if sp.up and not sp.inbox and sp.holds is not None:
                assert (self.state.holder, self.state.issued) == (name, sp.holds), (name, sp, self.state)

    @invariant()
    def revokedNeverActive(self) -> None:
        """
        The arbiter never routes to an SP under an epoch it told that SP
        to give up.
        """
        if arrayState(self.state) == "active":
            assert (self.state.holder, self.state.issued) not in self.m.revokedNow, self.state

    @invariant()
    def nothingSkippedOrReused(self) -> None:
        """The last issued epoch is the last persisted one."""
        assert self.state.issued == self.lastPersisted.epoch, (self.state.issued, self.m.persists)

    @invariant()
    def oneHolderPerEpoch(self) -> None:
        """No two SPs hold the same epoch; nobody holds an epoch not granted to it."""
        held = [(sp.holds, name) for name, sp in self.m.sps.items() if sp.holds is not None]
        assert len({e for e, _ in held}) == len(held), held
        for epoch, name in held:
            assert self.m.grantedTo.get(epoch) == name, (epoch, name, self.m.grantedTo)


class FailbackTokenMachine(TokenMachine):
    """The same, with failback on."""

    policy = only(SPB, SPA, SPC, preferred=SPA, failbackAfter=0.5)


def machineSettings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=40,
        deadline=None,
        database=None,
        derandomize=True,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


class TokenStateMachineTests(SynchronousTestCase):
    """
    Random schedules keep G1, G2 and the liveness rules.
    """

    def runMachine(self, machine: type[TokenMachine], examples: int) -> None:
        """
        Run C{machine}; on failure, fail with the shrunk schedule in the
        message (trial does not show the notes Hypothesis puts it in),
        without the invariant checks between steps.
        """
        try:
            run_state_machine_as_test(machine, settings=machineSettings(examples))
        except Exception as e:
            invariants = {
                f"state.{name}()"
                for name in dir(machine)
                if getattr(getattr(machine, name), "hypothesis_stateful_invariant", None)
            }
            schedule = [
                line
                for note in getattr(e, "__notes__", [])
                for line in note.splitlines()
                if line.strip() not in invariants
            ]
            where = traceback.extract_tb(e.__traceback__)[-1].name
            raise self.failureException("\n".join([f"{type(e).__name__} in {where}: {e}", *schedule])) from e

    def test_stateful(self) -> None:
        """
        The default policy (no failback).
        """
        self.runMachine(TokenMachine, 250)

    def test_statefulFailback(self) -> None:
        """
        Failback on.
        """
        self.runMachine(FailbackTokenMachine, 100)


class LostEpochFileTests(SynchronousTestCase):
    """An arbiter whose epoch file was lost learns how far epochs went."""

    def test_newestFromHeartbeats(self) -> None:
        """
        After a restart from nothing (epoch 0), SPs that have seen epoch 5
        make the next grant epoch 6, persisted first, with one alarm: no
        epoch is reused.
        """
        policy = Policy(preference=(SPA, SPB), startupGrace=0.0)
        state = initial(0, 0.0)
        state, effects = step(state, Joined(SPB, True, None, 0.0, None, 5), policy)
        self.assertEqual([e.kind for e in effects if isinstance(e, Event)][:1], ["alarm"])
        grants = [e for e in effects if isinstance(e, (Persist, Grant))]
        self.assertEqual(grants, [Persist(6, SPB), Grant(SPB, 6)])
        self.assertEqual(state.issued, 6)

    def test_olderNewestChangesNothing(self) -> None:
        """A newest epoch at or below the stored one teaches nothing."""
        policy = Policy(preference=(SPA,), startupGrace=0.0)
        state, effects = step(initial(7, 0.0), Joined(SPA, True, None, 0.0, None, 7), policy)
        self.assertEqual([e for e in effects if isinstance(e, Event) and e.kind == "alarm"], [])
        self.assertIn(Persist(8, SPA), effects)
