# -*- test-case-name: tests.test_leadership -*-
"""
This arbiter's campaign for leadership over etcd: the I/O shell around
L{spmgmt.election}.  It ticks every C{interval}, makes one etcd call at a
time (lease grant, renewal, campaign), feeds the answers back, and tells
its listeners when this arbiter starts or stops leading.

L{Leadership.fencedTxn} is how the leader writes what only the leader may
write (the token record, the event-id sequence): the transaction compares
the leader key's create revision with this leader's term, so it cannot
succeed once another arbiter leads.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from spmgmt import election, etcd
from spmgmt.etcd import EtcdClient, EtcdError, EtcdUnavailable, TxnResult

_log = Logger()


class NotLeading(Exception):
    """Only the leader may do this, and this arbiter does not lead (now)."""


class Leadership(Service):
    """
    @ivar resignOnStop: revoke the lease when the service stops, so a
        standby leads at once (a crash leaves it to expire instead).
    """

    resignOnStop = True

    def __init__(
        self, reactor: Any, client: EtcdClient, name: str, prefix: str, ttl: int, interval: float = 0.1
    ) -> None:
        self._reactor = reactor
        self._client = client
        self.key = (prefix.rstrip("/") + "/leader").encode("utf-8")
        self._interval = interval
        self.state = election.initial(name, ttl)
        self._tick: Any = None
        self._listeners: list[Callable[[int | None], None]] = []

    # -- what others see -----------------------------------------------------

    @property
    def leading(self) -> bool:
        """
        This arbiter leads: it won the key and its lease certainly still
        lives (the machine notices the deadline only at its next tick).
        """
        return self.state.leading and self._reactor.seconds() < self.state.leaseUntil

    @property
    def term(self) -> int | None:
        return self.state.term

    @property
    def leader(self) -> str | None:
        """Who leads as last seen (this arbiter included), or L{None}."""
        return self.state.leader

    def onChange(self, listener: Callable[[int | None], None]) -> None:
        """Call C{listener(term)} when this arbiter starts leading, C{listener(None)} when it stops."""
        self._listeners.append(listener)

    # -- lifecycle -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._onTick()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._tick is not None and self._tick.active():
            self._tick.cancel()
        self._tick = None
        lease, term = self.state.lease, self.state.term
        self.state = election.initial(self.state.name, self.state.ttl)
        if term is not None:
            self._tell(None)
        if not self.resignOnStop or lease is None:
            return succeed(None)
        d = Deferred.fromCoroutine(self._client.revoke(lease))
        d.addErrback(lambda reason: _log.warn("could not resign: {why}", why=reason.getErrorMessage()))
        return d

    def _onTick(self) -> None:
        try:
            self.feed(election.Tick(self._reactor.seconds()))
        except Exception:
            _log.failure("leadership tick failed")
        if self.running:
            self._tick = self._reactor.callLater(self._interval, self._onTick)

    # -- the machine -----------------------------------------------------------

    def feed(self, event: election.Input) -> None:
        self.state, effects = election.step(self.state, event)
        for effect in effects:
            self._carryOut(effect)

    def _carryOut(self, effect: election.Effect) -> None:
        sentAt = self._reactor.seconds()
        if isinstance(effect, election.GrantLease):
            self._call(self._client.grant(effect.ttl), lambda r: election.LeaseGranted(r[0], r[1], sentAt))
        elif isinstance(effect, election.Renew):
            self._call(self._client.keepAlive(effect.lease), lambda ttl: election.Renewed(ttl, sentAt))
        elif isinstance(effect, election.Campaign):
            self._call(self._campaign(effect.lease), lambda answer: answer)
        elif isinstance(effect, election.Lead):
            _log.info("leading, term {term}", term=effect.term)
            self._tell(effect.term)
        elif isinstance(effect, election.StepDown):
            _log.warn("no longer leading (term {term}): {why}", term=effect.term, why=effect.why)
            self._tell(None)

    def _call(self, coroutine: Any, answered: Callable[[Any], election.Input]) -> None:
        d = Deferred.fromCoroutine(coroutine)

        def ok(result: Any) -> None:
            if self.running:  # an answer after a stop belongs to nobody
                self.feed(answered(result))

        def failed(reason: Any) -> None:
            if reason.check(EtcdError, EtcdUnavailable):
                _log.debug("etcd call failed: {why}", why=reason.getErrorMessage())
            else:
                _log.failure("etcd call failed unexpectedly", reason)
            if self.running:
                self.feed(election.CallFailed(self._reactor.seconds()))

        d.addCallbacks(ok, failed)

    async def _campaign(self, lease: int) -> election.Input:
        """Create the leader key with our lease if it is absent; who holds it then."""
        name = self.state.name
        result = await self._client.txn(
            [etcd.absent(self.key)], [etcd.put(self.key, name.encode("utf-8"), lease)], [etcd.get(self.key)]
        )
        if result.succeeded:
            return election.Campaigned(name, result.revision, lease)
        (holder,) = result.responses
        if holder is None:  # it went between the compare and the read: ask again
            return election.CallFailed(self._reactor.seconds())
        return election.Campaigned(holder.value.decode("utf-8", "replace"), holder.createRevision, holder.lease)

    def _tell(self, term: int | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(term)
            except Exception:
                _log.failure("leadership listener failed")

    # -- fenced writes -----------------------------------------------------------

    async def fencedTxn(
        self, compare: Sequence[etcd.Compare], success: Sequence[etcd.Op], failure: Sequence[etcd.Op] = ()
    ) -> TxnResult:
        """
        Run a transaction only while this arbiter leads in its term.  The
        answer's C{responses} are those of the branch that ran, without the
        fence's own read.

        @raise NotLeading: this arbiter does not lead, or found out from
            this very transaction that it no longer does.
        """
        term = self.state.term
        if term is None or not self.leading:
            raise NotLeading("this arbiter does not lead")
        fence = etcd.createRevisionIs(self.key, term)
        result = await self._client.txn([fence, *compare], success, [*failure, etcd.get(self.key)])
        if result.succeeded:
            return result
        holder = result.responses[-1]
        if holder is None or holder.createRevision != term:
            if self.state.term == term:
                self.feed(election.Deposed(self._reactor.seconds()))
            raise NotLeading("another arbiter leads now")
        return TxnResult(False, result.revision, result.responses[:-1])
