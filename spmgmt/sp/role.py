# -*- test-case-name: tests.test_role -*-
"""
An SP's own view of the token, as a pure state machine (time passed in):
C{passive}, C{active} under one epoch, or C{stepping_down} (revoked, still
finishing requests it accepted as active).

The SP acts as active only while it holds an epoch AND has heard from the
arbiter within the lease: a process that wakes from SIGSTOP believing it is
active finds its lease expired and steps down by itself.  Epochs seen only
grow; a grant older than the newest seen is refused.
"""

from __future__ import annotations

from attrs import evolve, frozen

PASSIVE = "passive"
ACTIVE = "active"
STEPPING_DOWN = "stepping_down"


@frozen
class RoleState:
    """
    @ivar epoch: the epoch held as active (also while stepping down).
    @ivar newest: the newest epoch this SP has seen.
    @ivar lastHeard: when the arbiter was last heard from (monotonic).
    @ivar inFlight: active-role requests still being answered.
    @ivar claim: the last epoch granted and not revoked; kept after a
        step-down on the lease, so the arbiter may hand it back.
    """

    role: str = PASSIVE
    epoch: int | None = None
    newest: int = 0
    lastHeard: float | None = None
    inFlight: int = 0
    claim: int | None = None

    @property
    def holds(self) -> int | None:
        """The epoch to report in heartbeats: held and not being given up."""
        return self.epoch if self.role == ACTIVE else None


def heard(state: RoleState, now: float) -> RoleState:
    """The arbiter answered (a beat sent at C{now}) or called; never goes back."""
    if state.lastHeard is not None and state.lastHeard >= now:
        return state
    return evolve(state, lastHeard=now)


def granted(state: RoleState, epoch: int, now: float) -> tuple[RoleState, bool]:
    """
    The arbiter grants C{epoch}; the new state and whether it is accepted
    (a grant older than the newest epoch seen is not).
    """
    if epoch < state.newest or (epoch == state.newest and state.newest > 0 and state.claim != epoch):
        return state, False
    # The lease keeps counting from the last answered heartbeat: the arbiter
    # measures its miss window from that beat, not from this grant.
    lastHeard = state.lastHeard if state.lastHeard is not None else now
    return RoleState(ACTIVE, epoch, epoch, lastHeard, state.inFlight, claim=epoch), True


def _down(state: RoleState) -> RoleState:
    if state.inFlight > 0:
        return evolve(state, role=STEPPING_DOWN)
    return evolve(state, role=PASSIVE, epoch=None)


def revoked(state: RoleState, epoch: int, now: float) -> RoleState:
    """The arbiter revokes C{epoch} (a revoke of another epoch only teaches one)."""
    state = evolve(state, newest=max(state.newest, epoch), lastHeard=now)
    if state.claim is not None and epoch >= state.claim:
        state = evolve(state, claim=None)
    if state.epoch is not None and epoch >= state.epoch and state.role == ACTIVE:
        return _down(state)
    return state


def seen(state: RoleState, epoch: int) -> RoleState:
    """
    An epoch was seen on some message: remember the newest.  An active SP
    that sees a newer epoch than its own is stale and steps down.
    """
    if epoch <= state.newest:
        return state
    state = evolve(state, newest=epoch)
    if state.claim is not None and epoch > state.claim:
        state = evolve(state, claim=None)
    if state.role == ACTIVE and state.epoch is not None and epoch > state.epoch:
        return _down(state)
    return state


def tick(state: RoleState, now: float, lease: float) -> RoleState:
    """Step down when the lease ran out without word from the arbiter."""
    if state.role == ACTIVE and (state.lastHeard is None or now - state.lastHeard > lease):
        return _down(state)
    return state


def serves(state: RoleState, epoch: int, now: float, lease: float) -> bool:
    """Whether a request stamped with C{epoch} may be served as active."""
    return (
        state.role == ACTIVE
        and state.epoch == epoch
        and state.lastHeard is not None
        and now - state.lastHeard <= lease
    )


def begin(state: RoleState) -> RoleState:
    """An active-role request starts."""
    return evolve(state, inFlight=state.inFlight + 1)


def end(state: RoleState) -> RoleState:
    """An active-role request ended; the last one completes a step-down."""
    state = evolve(state, inFlight=max(0, state.inFlight - 1))
    if state.role == STEPPING_DOWN and state.inFlight == 0:
        return evolve(state, role=PASSIVE, epoch=None)
    return state
