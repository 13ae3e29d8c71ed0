# -*- test-case-name: tests.test_election -*-
"""
Which arbiter leads, as a pure state machine over an etcd lease: no I/O,
time passed in.

An arbiter holds a lease and campaigns for the leader key with it (a
transaction: create the key if it is absent).  The key's create revision is
its I{term}: every epoch the leader issues is a transaction that compares
it, so a deposed leader can never issue one.  Fencing makes issuing safe;
this machine makes the leader I{know} when to stop: it counts on its lease
only until the TTL has passed since the last renewal was I{sent} (not
answered), so it gives up leading no later than etcd can expire the key.

The shell (L{spmgmt.arbiter.leadership}) feeds it ticks and the answers
of the calls it asked for, one call at a time, and carries out the
effects.
"""

from __future__ import annotations

from typing import Union

from attrs import evolve, frozen


@frozen
class State:
    """
    @ivar lease: our lease, or L{None}.
    @ivar leaseUntil: until when the lease certainly lives (the send time of
        its last renewal plus its TTL).
    @ivar renewedAt: when the last renewal was sent.
    @ivar checkedAt: when the leader key was last read (campaigned for).
    @ivar term: the create revision of our leader key while we lead.
    @ivar leader: who leads as last seen (us included), or L{None}.
    @ivar busy: the call in flight (C{"grant"}, C{"renew"}, C{"campaign"}),
        or L{None}; the next waits for its answer.
    """

    name: str
    ttl: int
    lease: int | None = None
    leaseUntil: float = 0.0
    renewedAt: float = 0.0
    checkedAt: float = float("-inf")
    term: int | None = None
    leader: str | None = None
    busy: str | None = None

    @property
    def leading(self) -> bool:
        return self.term is not None


def initial(name: str, ttl: int) -> State:
    return State(name=name, ttl=ttl)


# -- inputs ---------------------------------------------------------------------


@frozen
class Tick:
    now: float


@frozen
class LeaseGranted:
    """A lease was granted; C{sentAt} is when it was asked for."""

    lease: int
    ttl: int
    sentAt: float


@frozen
class Renewed:
    """A renewal sent at C{sentAt} answered C{ttl} (0: the lease is gone)."""

    ttl: int
    sentAt: float


@frozen
class Campaigned:
    """
    A campaign's answer: C{leader} holds the key, created at C{term}
    (C{leader} is us if we won, or hold it already).
    """

    leader: str
    term: int
    lease: int


@frozen
class CallFailed:
    """The call in flight failed or timed out (its outcome unknown)."""

    now: float


@frozen
class Deposed:
    """A fenced transaction found the key no longer ours."""

    now: float


Input = Union[Tick, LeaseGranted, Renewed, Campaigned, CallFailed, Deposed]

# -- effects --------------------------------------------------------------------


@frozen
class GrantLease:
    ttl: int


@frozen
class Renew:
    lease: int


@frozen
class Campaign:
    """Create the leader key with C{lease} if absent; answer who holds it."""

    lease: int


@frozen
class Lead:
    """We lead from now, in C{term}."""

    term: int


@frozen
class StepDown:
    """We no longer lead (C{why}); stop issuing at once."""

    term: int
    why: str


Effect = Union[GrantLease, Renew, Campaign, Lead, StepDown]


def step(state: State, event: Input) -> tuple[State, list[Effect]]:
    """Apply C{event}; the new state and the effects to carry out, in order."""
    effects: list[Effect] = []
    if isinstance(event, Tick):
        now = event.now
        if state.lease is not None and now >= state.leaseUntil:
            state, effects = _loseLease(state, "the lease may have expired (no renewal answered in time)")
        if state.busy:
            return state, effects
        if state.lease is None:
            return evolve(state, busy="grant"), effects + [GrantLease(state.ttl)]
        if now - state.renewedAt >= state.ttl / 3:
            return evolve(state, busy="renew", renewedAt=now), effects + [Renew(state.lease)]
        # A follower campaigns every tick (it takes over as soon as the
        # key is gone); a leader checks the key as often as it renews.
        if state.term is None or now - state.checkedAt >= state.ttl / 3:
            return evolve(state, busy="campaign", checkedAt=now), effects + [Campaign(state.lease)]
        return state, effects
    if isinstance(event, LeaseGranted):
        return (
            evolve(
                state,
                busy=None,
                lease=event.lease,
                ttl=event.ttl,  # etcd may raise a short TTL to its minimum
                leaseUntil=event.sentAt + event.ttl,
                renewedAt=event.sentAt,
            ),
            effects,
        )
    if isinstance(event, Renewed):
        state = evolve(state, busy=None)
        if event.ttl <= 0:
            return _loseLease(state, "the lease expired")
        return evolve(state, leaseUntil=max(state.leaseUntil, event.sentAt + event.ttl)), effects
    if isinstance(event, Campaigned):
        state = evolve(state, busy=None, leader=event.leader)
        if event.leader == state.name and event.lease == state.lease and state.term is None:
            return evolve(state, term=event.term), [Lead(event.term)]
        if state.term is not None and (event.term != state.term or event.lease != state.lease):
            return _stepDown(state, "the leader key is not ours")
        return state, effects
    if isinstance(event, CallFailed):
        # A failed renewal is tried again at the next tick, not a third
        # of the TTL later: the lease is running out meanwhile.
        if state.busy == "renew":
            return evolve(state, busy=None, renewedAt=float("-inf")), effects
        return evolve(state, busy=None), effects
    if isinstance(event, Deposed):
        if state.term is None:
            return state, effects
        return _stepDown(state, "a fenced write found the leader key changed")
    raise TypeError(f"not an election input: {event!r}")


def _loseLease(state: State, why: str) -> tuple[State, list[Effect]]:
    effects: list[Effect] = []
    if state.term is not None:
        state, effects = _stepDown(state, why)
    return evolve(state, lease=None, leaseUntil=0.0, leader=None), effects


def _stepDown(state: State, why: str) -> tuple[State, list[Effect]]:
    assert state.term is not None
    return evolve(state, term=None), [StepDown(state.term, why)]
