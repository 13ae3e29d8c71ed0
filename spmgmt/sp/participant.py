# -*- test-case-name: tests.test_failover -*-
"""
The SP's side of the token: a control connection to the arbiter (PB over
mutual TLS, a fresh login on every connection, reconnect with backoff), a
heartbeat every interval carrying the SP's health and the epoch it holds,
and grants and revocations arriving through the mind it passes at login.

The role itself is the pure machine in L{spmgmt.sp.role}; this module only
feeds it.  The lease is checked on every beat, so an SP that stops hearing
from the arbiter steps down by itself.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.spread import pb

from spmgmt.config import Address
from spmgmt.pb.session import PBSession
from spmgmt.sp import role
from spmgmt.sp.agent import SPAgent

_log = Logger()

#: Reports kept while the arbiter is away (a command run each).
MAX_UNSENT = 1000


def controlIdleTimeout(missWindow: float) -> float:
    """
    How long the control link may stay silent before the SP drops it: ten
    miss windows, at least 3 s.  Dropping it adds no safety (the lease
    already makes the SP step down after C{lease_timeout}); it only finds
    an arbiter host that vanished without a reset.  So an arbiter stall
    shorter than this (a GC pause, swap, a slow fsync) costs the holder its
    lease for the length of the stall, and is then renewed with the same
    epoch, but costs no link, and so no token move.
    """
    return max(3.0, 10 * missWindow)


class ControlMind(pb.Referenceable):
    """What the arbiter calls on this SP: grant and revoke."""

    def __init__(self, participant: "Participant") -> None:
        self._participant = participant

    def remote_grant(self, epoch: object) -> bool:
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            return False
        return self._participant.granted(epoch)

    def remote_revoke(self, epoch: object) -> None:
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            self._participant.revoked(epoch)

    def remote_event(self, event: object) -> None:
        if isinstance(event, dict):
            self._participant.eventArrived(event)


class Participant(PBSession):
    """This SP's membership in the token protocol."""

    def __init__(
        self,
        reactor: Any,
        agent: SPAgent,
        arbiterId: str,
        arbiter: Address,
        ca: Any,
        cert: Any,
        key: Any,
        secret: bytes,
        interval: float,
        misses: int,
        monotonic: Callable[[], float],
    ) -> None:
        self._interval = interval
        self._timeout = interval * misses
        super().__init__(
            reactor,
            agent.sp.id,
            arbiterId,
            arbiter,
            ca,
            cert,
            key,
            secret,
            loginTimeout=self._timeout + 1,
            idleTimeout=controlIdleTimeout(self._timeout),
            maxDelay=0.5,
        )
        self._agent = agent
        self._monotonic = monotonic
        self._beat: Any = None
        self._catchUpRetry: Any = None
        self._unsent: deque[tuple[str, dict[str, Any]]] = deque(maxlen=MAX_UNSENT)
        agent.reporter = self.report
        # A health change is news for the arbiter now, not at the next beat.
        agent.onModeChange(lambda kind: self._sendBeat())

    # -- lifecycle -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._scheduleBeat()

    def stopService(self) -> Deferred[None]:
        for call in (self._beat, self._catchUpRetry):
            if call is not None and call.active():
                call.cancel()
        self._beat = self._catchUpRetry = None
        return super().stopService()

    def mind(self) -> pb.Referenceable:
        return ControlMind(self)

    def sessionStarted(self, perspective: Any) -> None:
        self._sendBeat()
        self._catchUp(perspective)
        self._sendReports()

    def sessionEnded(self, perspective: Any) -> None:
        # The arbiter regrants at once when it sees the holder's connection
        # drop: step down now, not at the end of the lease, so two SPs never
        # act as active together.  The claim stays, so a restarted arbiter
        # can hand it back.
        self._stepDown("lost the arbiter connection")

    # -- events -------------------------------------------------------------------

    def eventArrived(self, event: dict[str, Any]) -> None:
        self._agent.events.pushed(event)

    def _catchUp(self, perspective: Any) -> None:
        """
        Fetch the events missed while disconnected, a page at a time, on
        this session only; a failed page is asked again while the session
        lasts (the next session starts its own catch-up).
        """
        copy = self._agent.events
        self._fetchPage(perspective, copy.beginCatchUp())

    def _fetchPage(self, perspective: Any, since: int) -> None:
        d = perspective.callRemote("events", since)
        d.addTimeout(5.0, self._reactor)

        def arrived(reply: Any) -> None:
            if self.perspective is not perspective:
                return
            if not (isinstance(reply, dict) and isinstance(reply.get("ok"), list)):
                _log.warn("the arbiter refused the event catch-up: {reply!r}", reply=reply)
                self._catchUpRetry = self._reactor.callLater(1.0, again)
                return
            page = [e for e in reply["ok"] if isinstance(e, dict) and isinstance(e.get("id"), int)]
            after = self._agent.events.page(page)
            if after is not None:
                self._fetchPage(perspective, after)

        def failed(reason: Any) -> None:
            if self.perspective is perspective:
                _log.warn("event catch-up failed: {why}; asking again", why=reason.getErrorMessage())
                self._catchUpRetry = self._reactor.callLater(1.0, again)

        def again() -> None:
            if self.perspective is perspective:
                self._fetchPage(perspective, self._agent.events.lastId)

        d.addCallbacks(arrived, failed)

    def report(self, kind: str, data: dict[str, Any]) -> None:
        """
        Tell the arbiter something for the history (a command run).  While
        there is no session the report waits (the newest L{MAX_UNSENT}) and
        goes out when the next one starts: a command that ran while the
        arbiter was away still shows in the history.  A report lost in
        flight is logged, not sent again (it may have been recorded).
        """
        if len(self._unsent) == MAX_UNSENT:
            _log.warn("the arbiter is away: the oldest unsent report is dropped from the history")
        self._unsent.append((kind, data))
        self._sendReports()

    def _sendReports(self) -> None:
        perspective = self.perspective
        while perspective is not None and self._unsent:
            kind, data = self._unsent[0]
            try:
                d = perspective.callRemote("report", kind, data)
            except pb.DeadReferenceError:
                return  # the session is ending; the next one sends it
            self._unsent.popleft()
            d.addTimeout(5.0, self._reactor)
            d.addErrback(
                lambda reason, kind=kind: _log.warn(
                    "a {kind} report may be missing from the history: {why}",
                    kind=kind,
                    why=reason.getErrorMessage(),
                )
            )

    # -- the role ------------------------------------------------------------------

    def granted(self, epoch: int) -> bool:
        state, accepted = role.granted(self._agent.roleState, epoch, self._monotonic())
        self._agent.roleState = state
        _log.info(
            "{verdict} the active token, epoch {epoch}",
            verdict="took" if accepted else "refused",
            epoch=epoch,
        )
        return accepted

    def revoked(self, epoch: int) -> None:
        before = self._agent.role
        self._agent.roleState = role.revoked(self._agent.roleState, epoch, self._monotonic())
        if before != self._agent.role:
            _log.info("epoch {epoch} revoked: now {role}", epoch=epoch, role=self._agent.role)

    # -- heartbeats ----------------------------------------------------------------

    def _scheduleBeat(self) -> None:
        self._beat = self._reactor.callLater(self._interval, self._onBeat)

    def _onBeat(self) -> None:
        # Survive anything: this loop is also what enforces the lease.  A
        # beat goes every interval even while earlier ones are unanswered
        # (a slow link must not halve the tolerated round trip), and the
        # lease is judged after this iteration's I/O: timers run first, and
        # after a stall the answers already received must count.
        try:
            self._sendBeat()
        except Exception:
            _log.failure("heartbeat failed")
        self._reactor.callLater(0, self._checkLeaseSafely)
        if self.running:
            self._scheduleBeat()

    def _checkLeaseSafely(self) -> None:
        try:
            self._checkLease()
        except Exception:
            _log.failure("lease check failed")

    def _checkLease(self) -> None:
        before = self._agent.role
        self._agent.roleState = role.tick(self._agent.roleState, self._monotonic(), self._agent.lease)
        if before == role.ACTIVE and self._agent.role != role.ACTIVE:
            _log.warn("lease expired without word from the arbiter: stepping down")

    def _stepDown(self, why: str) -> None:
        if self._agent.role == role.ACTIVE:
            self._agent.roleState = role.tick(self._agent.roleState, float("inf"), self._agent.lease)
            _log.warn("stepping down: {why}", why=why)

    def _sendBeat(self) -> None:
        perspective = self.perspective
        if perspective is None:
            return
        # The lease counts from when this beat left, not from when its
        # answer came back: a slow return path must not stretch it past the
        # arbiter's miss window.
        sentAt = self._monotonic()
        state = self._agent.roleState
        d = perspective.callRemote("heartbeat", self._agent.healthy, state.holds, state.claim, state.newest)
        d.addTimeout(self._timeout, self._reactor)

        def answered(reply: Any) -> None:
            if isinstance(reply, dict) and isinstance(reply.get("ok"), dict):
                view = reply["ok"]
                state = role.heard(self._agent.roleState, sentAt)
                epoch = (view.get("token") or {}).get("epoch")
                if isinstance(epoch, int) and not isinstance(epoch, bool):
                    # The arbiter's word on the newest epoch: a stale active
                    # steps down, stale peer calls are refused.
                    state = role.seen(state, epoch)
                self._agent.roleState = state
                self._agent.arrayView = view

        def failed(reason: Any) -> None:
            _log.debug("heartbeat unanswered: {why}", why=reason.getErrorMessage())

        d.addCallbacks(answered, failed)

    async def switchover(self, to: str | None) -> dict[str, Any]:
        """
        Ask the arbiter to move the token; its reply (plain data).

        @raise ConnectionError: no control connection.
        """
        perspective = self.perspective
        if perspective is None:
            raise ConnectionError("no connection to the arbiter")
        d = perspective.callRemote("switchover", to)
        d.addTimeout(5.0, self._reactor)
        reply = await d
        if not isinstance(reply, dict):
            raise ConnectionError("the arbiter answered something unexpected")
        return reply
