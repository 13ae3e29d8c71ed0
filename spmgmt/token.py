# -*- test-case-name: tests.test_token -*-
"""
The active token's decisions, as a pure state machine: no I/O, time passed
in.  The arbiter's I/O shell feeds it what happened (an SP joined, sent a
heartbeat, disconnected, acknowledged a grant; time passed; an operator
asked for a switchover) and carries out the effects it returns, in order.

A token is C{(epoch, holder)}.  Epochs only grow: the machine asks for an
epoch to be persisted before it is granted (L{Persist} comes first among the
effects), and a failed persist is fed back so the epoch is never used.
"""

from __future__ import annotations

from typing import Mapping, Union

from attrs import evolve, field, frozen

# -- configuration -------------------------------------------------------------


@frozen
class Policy:
    """
    @ivar interval: seconds between an SP's heartbeats.
    @ivar misses: heartbeats an SP may miss before it counts as hung.
    @ivar preference: SP ids in the order candidates are preferred.
    @ivar startupGrace: after the arbiter starts, how long it waits for the
        holder of the persisted epoch to come back before granting anew.
    @ivar ackTimeout: how long a granted SP has to acknowledge.
    @ivar preferred: with C{failbackAfter}, the SP the token returns to once
        it has been healthy that long (failback is off without them).
    """

    interval: float = 0.1
    misses: int = 3
    preference: tuple[str, ...] = ()
    startupGrace: float = 1.0
    ackTimeout: float = 1.0
    preferred: str | None = None
    failbackAfter: float | None = None

    @property
    def missWindow(self) -> float:
        return self.interval * self.misses


# -- state ---------------------------------------------------------------------


@frozen
class Member:
    """What the arbiter knows of one SP."""

    connected: bool = False
    healthy: bool = False
    lastHeard: float = 0.0
    healthySince: float | None = None


@frozen
class ArbiterState:
    """
    @ivar issued: the last epoch issued (and persisted).
    @ivar holder: the SP granted C{issued}, or L{None} while no SP is active.
    @ivar acked: whether C{holder} acknowledged its grant.
    @ivar grantedAt: when C{issued} was granted (for the ack timeout).
    @ivar vacantSince: since when no SP has been active (acknowledged).
    @ivar startedAt: when this arbiter started (for the startup grace).
    @ivar alarmed: a persist failure was reported and not yet cleared.
    @ivar lastHolder: the SP C{issued} was granted to (persisted with it),
        the only SP that may be handed C{issued} again.
    @ivar planned: during a planned move (switchover, failback) whose new
        epoch is not stored yet: the state before the move, restored if the
        store fails, so a full disk never costs the array its active SP.
    @ivar alarmedAt: when the last persist failed; grants are retried only
        every L{PERSIST_RETRY} seconds after that, not on every event.
    """

    issued: int
    startedAt: float
    lastHolder: str | None = None
    holder: str | None = None
    acked: bool = False
    grantedAt: float = 0.0
    vacantSince: float | None = None
    members: Mapping[str, Member] = field(factory=dict)
    alarmed: bool = False
    revokedEpoch: int = 0
    alarmedAt: float = 0.0
    planned: "ArbiterState | None" = None


def initial(persistedEpoch: int, now: float, lastHolder: str | None = None) -> ArbiterState:
    """
    The state of an arbiter that starts with C{persistedEpoch} (granted to
    C{lastHolder}) on disk.
    """
    return ArbiterState(issued=persistedEpoch, startedAt=now, vacantSince=now, lastHolder=lastHolder)


# -- inputs --------------------------------------------------------------------


@frozen
class Heartbeat:
    """
    An SP's periodic word.  C{holds}: the epoch it holds as active now;
    C{claim}: the last epoch it was granted and not revoked (it keeps that
    after stepping down on its lease, so a restarted arbiter can hand the
    token back without a new epoch); C{newest}: the newest epoch it has
    seen (so an arbiter that lost its epoch file learns how far epochs
    went).
    """

    sp: str
    healthy: bool
    holds: int | None
    now: float
    claim: int | None = None
    newest: int | None = None


@frozen
class Joined(Heartbeat):
    """The first heartbeat of a new login (the SP joined, or came back)."""


@frozen
class Disconnected:
    sp: str
    now: float


@frozen
class GrantAcked:
    sp: str
    epoch: int
    now: float


@frozen
class PersistFailed:
    epoch: int
    why: str
    now: float


@frozen
class Tick:
    now: float


@frozen
class Switchover:
    """A planned move; C{to} is L{None} for 'the best other SP'."""

    to: str | None
    now: float


Input = Union[Heartbeat, Disconnected, GrantAcked, PersistFailed, Tick, Switchover]

# -- effects -------------------------------------------------------------------


@frozen
class Persist:
    """
    Write C{epoch} (and the SP it goes to) durably before anything else;
    feed back a failure.
    """

    epoch: int
    holder: str | None = None


@frozen
class Grant:
    sp: str
    epoch: int


@frozen
class Revoke:
    sp: str
    epoch: int


@frozen
class Event:
    """Something for the event history: C{kind} and plain-data C{data}."""

    kind: str
    data: Mapping[str, object]


Effect = Union[Persist, Grant, Revoke, Event]


#: Seconds between grant attempts while the epoch cannot be stored.
PERSIST_RETRY = 5.0


class SwitchoverRefused(Exception):
    """A switchover cannot happen now; the message says why."""


# -- the machine ---------------------------------------------------------------


def _alive(member: Member, now: float, policy: Policy) -> bool:
    return member.connected and now - member.lastHeard <= policy.missWindow


def _eligible(state: ArbiterState, sp: str, now: float, policy: Policy) -> bool:
    member = state.members.get(sp)
    return member is not None and member.healthy and _alive(member, now, policy)


def _order(state: ArbiterState, policy: Policy) -> list[str]:
    ranked = [sp for sp in policy.preference if sp in state.members]
    return ranked + sorted(sp for sp in state.members if sp not in ranked)


def candidate(state: ArbiterState, now: float, policy: Policy, exclude: str | None = None) -> str | None:
    """The SP that should get the token next, if any."""
    for sp in _order(state, policy):
        if sp != exclude and _eligible(state, sp, now, policy):
            return sp
    return None


def arrayState(state: ArbiterState) -> str:
    """C{active} while an SP holds an acknowledged token, else C{unavailable}."""
    return "active" if state.holder is not None and state.acked else "unavailable"


def _grant(state: ArbiterState, sp: str, now: float, reason: str) -> tuple[ArbiterState, list[Effect]]:
    epoch = state.issued + 1
    effects: list[Effect] = [Persist(epoch, sp), Grant(sp, epoch)]
    new = evolve(state, issued=epoch, holder=sp, acked=False, grantedAt=now, lastHolder=sp)
    return new, effects + [Event("grant", {"to": sp, "epoch": epoch, "reason": reason})]


def _vacate(
    state: ArbiterState, now: float, reason: str, revoke: bool = True
) -> tuple[ArbiterState, list[Effect]]:
    """The holder loses the token (revoked if it may still hear us)."""
    if state.holder is None:
        return state, []
    effects: list[Effect] = []
    if revoke:
        effects.append(Revoke(state.holder, state.issued))
        state = evolve(state, revokedEpoch=state.issued)
    effects.append(Event("revoke", {"from": state.holder, "epoch": state.issued, "reason": reason}))
    vacantSince = now if state.acked else state.vacantSince
    return evolve(state, holder=None, acked=False, vacantSince=vacantSince), effects


def _fill(state: ArbiterState, now: float, policy: Policy, reason: str, previous: str | None) -> tuple[ArbiterState, list[Effect]]:
    """Grant to the best candidate if the token is vacant and one exists."""
    if state.holder is not None:
        return state, []
    everyone = all(sp in state.members for sp in policy.preference)
    if now - state.startedAt < policy.startupGrace and previous is None and not everyone:
        # Just started: wait a moment for every SP, so the token goes by
        # preference rather than to whoever connected first, and the holder
        # of the persisted epoch can take it back without a move.
        return state, []
    if state.alarmed and now - state.alarmedAt < PERSIST_RETRY:
        return state, []
    sp = candidate(state, now, policy, exclude=previous) or candidate(state, now, policy)
    if sp is None:
        return state, []
    return _grant(state, sp, now, reason)


def _setMember(state: ArbiterState, sp: str, member: Member) -> ArbiterState:
    members = dict(state.members)
    members[sp] = member
    return evolve(state, members=members)


def _observe(old: Member, healthy: bool, now: float) -> Member:
    healthySince = (old.healthySince if old.healthy and old.connected else now) if healthy else None
    return Member(connected=True, healthy=healthy, lastHeard=now, healthySince=healthySince)


def step(state: ArbiterState, event: Input, policy: Policy) -> tuple[ArbiterState, list[Effect]]:
    """
    Apply C{event}; the new state and the effects to carry out, in order.

    @raise SwitchoverRefused: for a L{Switchover} that cannot happen.
    """
    effects: list[Effect] = []
    reason = "no active SP"
    previous: str | None = None

    if isinstance(event, Heartbeat):
        if event.newest is not None and event.newest > state.issued and state.holder is None:
            # Epochs went further than this arbiter knows (its epoch file
            # was lost): never issue one of them again.  The next grant is
            # above it and is persisted before it leaves.
            effects.append(
                Event("alarm", {"why": "an SP has seen a newer epoch than stored", "epoch": event.newest})
            )
            state = evolve(state, issued=event.newest, lastHolder=None)
        old = state.members.get(event.sp, Member())
        member = _observe(old, event.healthy, event.now)
        state = _setMember(state, event.sp, member)
        if old.healthy != event.healthy or not old.connected:
            effects.append(
                Event("health", {"sp": event.sp, "healthy": event.healthy, "connected": True})
            )
        if event.holds is not None:
            state, more = _claim(state, event.sp, event.holds, event.now)
            effects += more
        elif (
            event.claim is not None
            and event.claim == state.issued
            and state.holder is None
            and event.sp == state.lastHolder
            and event.healthy
            and event.claim != state.revokedEpoch
        ):
            # The last holder comes back (after an arbiter restart, or a
            # lost connection) and no newer epoch exists: hand it the same
            # epoch again.  Nothing can have acted under a newer one.
            state = evolve(state, holder=event.sp, acked=False, grantedAt=event.now)
            effects += [
                Grant(event.sp, state.issued),
                Event("grant", {"to": event.sp, "epoch": state.issued, "reason": "last holder is back"}),
            ]
        elif (
            state.holder == event.sp
            and state.acked
            and event.healthy
            and event.claim == state.issued
        ):
            # It stepped down on its own lease (a stall just under the miss
            # window) but still claims the newest epoch: hand the same epoch
            # back rather than move the token (no false failover).
            state = evolve(state, acked=False, grantedAt=event.now)
            effects += [
                Grant(event.sp, state.issued),
                Event("grant", {"to": event.sp, "epoch": state.issued, "reason": "holder renewed"}),
            ]
        elif state.holder == event.sp and state.acked:
            # It acknowledged, yet no longer holds the token (it stepped
            # down on its own, or restarted): the token is vacant.
            previous = event.sp
            state, more = _vacate(state, event.now, "holder stepped down")
            effects += more
            reason = f"{event.sp} stepped down"
        if state.holder == event.sp and not event.healthy:
            previous = event.sp
            state, more = _vacate(state, event.now, "unhealthy")
            effects += more
            reason = f"{event.sp} unhealthy"
    elif isinstance(event, Disconnected):
        old = state.members.get(event.sp)
        if old is not None:
            state = _setMember(state, event.sp, evolve(old, connected=False, healthySince=None))
            effects.append(Event("health", {"sp": event.sp, "healthy": old.healthy, "connected": False}))
        if state.holder == event.sp:
            previous = event.sp
            state, more = _vacate(state, event.now, "connection lost", revoke=False)
            effects += more
            reason = f"{event.sp} connection lost"
    elif isinstance(event, GrantAcked):
        if state.holder == event.sp and state.issued == event.epoch and not state.acked:
            gap = None if state.vacantSince is None else max(0.0, event.now - state.vacantSince)
            state = evolve(state, acked=True, vacantSince=None, planned=None)
            effects.append(
                Event("token", {"holder": event.sp, "epoch": event.epoch, "gap_s": gap})
            )
        return state, effects
    elif isinstance(event, PersistFailed):
        if state.issued == event.epoch and not state.acked:
            # The epoch never left this process: undo it, so it is not
            # skipped, and alarm once until a persist succeeds.
            if state.planned is not None:
                state = evolve(state.planned, members=state.members, alarmed=state.alarmed)
            else:
                state = evolve(state, issued=event.epoch - 1, holder=None, acked=False)
            if not state.alarmed:
                effects.append(Event("alarm", {"epoch": event.epoch, "why": event.why}))
            state = evolve(state, alarmed=True, alarmedAt=event.now)
        return state, effects
    elif isinstance(event, Tick):
        now = event.now
        if state.holder is not None:
            holder = state.members.get(state.holder)
            if holder is None or not _alive(holder, now, policy):
                previous = state.holder
                state, more = _vacate(state, now, "missed heartbeats")
                effects += more
                reason = f"{previous} missed heartbeats"
            elif not state.acked and now - state.grantedAt > policy.ackTimeout:
                previous = state.holder
                state, more = _vacate(state, now, "grant not acknowledged")
                effects += more
                reason = f"{previous} did not acknowledge"
            elif state.acked:
                state, more = _failback(state, now, policy)
                effects += more
    elif isinstance(event, Switchover):
        return _switchover(state, event, policy)

    state, more = _fill(state, event.now, policy, reason, previous)
    return state, effects + more


def _claim(state: ArbiterState, sp: str, holds: int, now: float) -> tuple[ArbiterState, list[Effect]]:
    """
    An SP says it holds epoch C{holds}.  After a restart the arbiter adopts
    the holder of its persisted epoch; anyone else claiming is stale and is
    told so.
    """
    if holds == state.issued and state.holder in (None, sp) and holds != state.revokedEpoch:
        if state.holder is None:
            gap = None if state.vacantSince is None else max(0.0, now - state.vacantSince)
            state = evolve(state, holder=sp, acked=True, vacantSince=None)
            return state, [Event("adopt", {"holder": sp, "epoch": holds, "gap_s": gap})]
        return state, []
    if holds > state.issued:
        # Only possible if the persisted epoch was lost: never go back.
        return evolve(state, issued=holds, holder=sp, acked=True, vacantSince=None, lastHolder=sp), [
            Persist(holds, sp),
            Event("adopt", {"holder": sp, "epoch": holds, "gap_s": None, "note": "epoch ahead of storage"})
        ]
    if state.holder == sp and holds == state.issued:
        return state, []
    return state, [Revoke(sp, holds)]


def _failback(state: ArbiterState, now: float, policy: Policy) -> tuple[ArbiterState, list[Effect]]:
    preferred = policy.preferred
    if preferred is None or policy.failbackAfter is None or state.holder == preferred:
        return state, []
    member = state.members.get(preferred)
    if (
        member is None
        or not _eligible(state, preferred, now, policy)
        or member.healthySince is None
        or now - member.healthySince < policy.failbackAfter
    ):
        return state, []
    return _plannedMove(state, preferred, now, "failback")


def _plannedMove(state: ArbiterState, target: str, now: float, reason: str) -> tuple[ArbiterState, list[Effect]]:
    """
    Move the token from a healthy holder on purpose: store the new epoch
    first, and only then revoke and grant, so a failed store leaves the old
    holder in place (see L{ArbiterState.planned}).
    """
    planned = state
    state, vacating = _vacate(state, now, reason)
    state, granting = _grant(state, target, now, reason)
    persist = [e for e in granting if isinstance(e, Persist)]
    rest = [e for e in granting if not isinstance(e, Persist)]
    return evolve(state, planned=planned), persist + vacating + rest


def _switchover(state: ArbiterState, event: Switchover, policy: Policy) -> tuple[ArbiterState, list[Effect]]:
    now = event.now
    if event.to is not None:
        if event.to not in state.members:
            raise SwitchoverRefused(f"{event.to} is not connected to the arbiter")
        if event.to == state.holder:
            raise SwitchoverRefused(f"{event.to} already holds the token")
        if not _eligible(state, event.to, now, policy):
            raise SwitchoverRefused(f"{event.to} is not healthy and connected")
        target = event.to
    else:
        found = candidate(state, now, policy, exclude=state.holder)
        if found is None:
            raise SwitchoverRefused("no other healthy SP is connected")
        target = found
    return _plannedMove(state, target, now, "switchover")


def persisted(state: ArbiterState) -> ArbiterState:
    """A persist succeeded: clear the alarm, and nothing is left to undo."""
    if state.alarmed or state.planned is not None:
        return evolve(state, alarmed=False, planned=None)
    return state
