# -*- test-case-name: tests.test_arbiter -*-
"""
The arbiter's I/O shell around L{spmgmt.token} (C{twistd spmgmt arbiter}):
a PB server SPs and proxies log in to (mutual TLS and cred, as on the peer
channel; L{spmgmt.arbiter.control}), heartbeats in, grants and revocations
out through each SP's mind, the route out to each proxy's, the epoch
persisted before any grant leaves, and a tick on the heartbeat interval.

Decisions compare a monotonic clock; only the scheduling of the tick uses
the reactor.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.spread.pb import DeadReferenceError

from spmgmt import token
from spmgmt.arbiter.control import PROXY, ArbiterRealm
from spmgmt.arbiter.epochstore import EpochStore, EpochStoreError
from spmgmt.config import ArrayConfig, ConfigError, readPeerSecret
from spmgmt.events import HISTORY, EventHistoryError, EventLog
from spmgmt.pb.server import PeerSecretChecker, PeerServerFactory
from spmgmt.tls import ReloadableServerTLS, ReloadOnHangup, serverOptions, tlsServerFactory

_log = Logger()

#: The holder is judged this long after its miss window ends.
HOLDER_DEADLINE_SLACK = 0.002


def policyFor(config: ArrayConfig) -> token.Policy:
    """The token policy of C{config}."""
    t = config.token
    return token.Policy(
        interval=t.heartbeat_interval,
        misses=t.heartbeat_misses,
        preference=t.preference,
        # Long enough for every SP to reconnect after an arbiter restart.
        startupGrace=max(1.5, 2 * t.lease_timeout),
        ackTimeout=max(0.5, t.missWindow),
        preferred=t.preferred,
        failbackAfter=t.failback_after,
    )


class Arbiter(Service):
    """
    Grants the active token.

    @ivar state: the token machine's state.
    @ivar events: the event history (bounded, persisted beside the epoch).
    """

    def __init__(
        self,
        reactor: Any,
        policy: token.Policy,
        store: EpochStore,
        monotonic: Callable[[], float] = time.monotonic,
        history: int = HISTORY,
    ) -> None:
        self._reactor = reactor
        self.policy = policy
        self._store = store
        self._monotonic = monotonic
        self._minds: dict[str, Any] = {}
        self._tick: Any = None
        self._holderDeadline: Any = None
        self._ackWaiters: list[tuple[int, Deferred[int]]] = []
        self.events = EventLog(store.path.parent / "events.jsonl", size=history)
        self.events.listen(self._push)
        self.lastMove: dict[str, Any] | None = None
        #: Every logged-in proxy's name and mind, by the mind's identity
        #: (remote references do not compare across connections): several
        #: proxies share the name C{proxy}, their role, so each connection
        #: is a follower of its own.
        self._followers: dict[int, tuple[str, Any]] = {}
        self._announced: tuple[int, str] | None = None
        epoch, lastHolder = store.loadState()
        self.state = token.initial(epoch, monotonic(), lastHolder)
        if self.events.unreadable:
            why = f"{self.events.unreadable} lines of the event history could not be read and were left out"
            self._record("alarm", {"why": why})
        if epoch and not self.events.lastId:
            why = f"the event history is empty though epoch {epoch} was issued: it was lost"
            self._record("alarm", {"why": why})

    # -- lifecycle ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.state = token.initial(self.state.issued, self._monotonic(), self.state.lastHolder)
        self._scheduleTick()

    def stopService(self) -> None:
        super().stopService()
        for call in (self._tick, self._holderDeadline):
            if call is not None and call.active():
                call.cancel()
        self._tick = self._holderDeadline = None

    def _scheduleTick(self) -> None:
        self._tick = self._reactor.callLater(self.policy.interval, self._onTick)

    def _onTick(self, periodic: bool = True) -> None:
        # Judge liveness only after reading what arrived meanwhile: timers
        # run before I/O in a reactor iteration, so after a stall of this
        # process queued heartbeats would otherwise count as missed.
        self._reactor.callLater(0, self._judge)
        if periodic and self.running:
            self._scheduleTick()

    def _judge(self) -> None:
        # The tick must survive anything: it is what notices a hung holder.
        try:
            self.feed(token.Tick(self._monotonic()))
        except Exception:
            _log.failure("arbiter tick failed")

    # -- the machine ---------------------------------------------------------------

    def feed(self, event: token.Input) -> None:
        """Apply C{event} and carry out what the machine decides."""
        self.state, effects = token.step(self.state, event, self.policy)
        self._carryOut(effects)
        self._announceRoute()

    def route(self) -> tuple[int, str] | None:
        """
        C{(epoch, holder)} of the acknowledged token, or L{None} while no SP
        is active: where the proxy sends requests.
        """
        state = self.state
        if state.holder is None or not state.acked:
            return None
        return (state.issued, state.holder)

    def _announceRoute(self) -> None:
        route = self.route()
        if route == self._announced:
            return
        self._announced = route
        for name, mind in list(self._followers.values()):
            self._sendRoute(name, mind, route)

    def _sendRoute(self, name: str, mind: Any, route: tuple[int, str] | None) -> None:
        epoch, holder = route if route is not None else (None, None)
        try:
            d = mind.callRemote("route", epoch, holder)
        except DeadReferenceError:
            return  # it is detached in a moment; it hears the route when it logs in again
        d.addTimeout(self.policy.ackTimeout, self._reactor)
        d.addErrback(
            lambda reason: _log.info("route to {name} not acknowledged: {why}", name=name, why=reason.getErrorMessage())
        )

    def _carryOut(self, effects: list[token.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, token.Persist):
                try:
                    self._store.store(effect.epoch, effect.holder)
                except EpochStoreError as e:
                    _log.error("cannot persist epoch {epoch}: {why}", epoch=effect.epoch, why=str(e))
                    # Everything after a Persist depends on it: carry out
                    # none of it, and let the machine undo the epoch.
                    self.feed(token.PersistFailed(effect.epoch, str(e), self._monotonic()))
                    return
                self.state = token.persisted(self.state)
            elif isinstance(effect, token.Grant):
                self._sendGrant(effect.sp, effect.epoch)
            elif isinstance(effect, token.Revoke):
                self._sendRevoke(effect.sp, effect.epoch)
            elif isinstance(effect, token.Event):
                self._record(effect.kind, dict(effect.data))

    def _sendGrant(self, sp: str, epoch: int) -> None:
        mind = self._minds.get(sp)
        if mind is None:
            return
        d = mind.callRemote("grant", epoch)
        d.addTimeout(self.policy.ackTimeout, self._reactor)

        def answered(accepted: object) -> None:
            if accepted is True:
                self.feed(token.GrantAcked(sp, epoch, self._monotonic()))
            else:
                _log.warn("{sp} refused the grant of epoch {epoch}", sp=sp, epoch=epoch)

        def failed(reason: Any) -> None:
            # The ack timeout in the machine moves on; nothing else to do.
            _log.warn("grant of {epoch} to {sp} failed: {why}", epoch=epoch, sp=sp, why=reason.getErrorMessage())

        d.addCallbacks(answered, failed)

    def _sendRevoke(self, sp: str, epoch: int) -> None:
        mind = self._minds.get(sp)
        if mind is None:
            return
        d = mind.callRemote("revoke", epoch)
        d.addTimeout(self.policy.ackTimeout, self._reactor)
        d.addErrback(lambda reason: None)  # the SP's lease covers a lost revoke

    def _record(self, kind: str, data: dict[str, Any]) -> None:
        event = self.events.record(kind, data)
        _log.info("event {event}", event=event)
        if kind == "grant":
            self.lastMove = {k: v for k, v in event.items() if k != "kind"}
        elif kind in ("token", "adopt") and self.lastMove is not None:
            if self.lastMove.get("epoch") == data.get("epoch"):
                self.lastMove["acked_at"] = event["time"]
        if kind in ("token", "adopt"):
            waiters, self._ackWaiters = self._ackWaiters, []
            for epoch, d in waiters:
                if data.get("epoch") == epoch:
                    d.callback(epoch)
                else:
                    self._ackWaiters.append((epoch, d))

    def _push(self, event: dict[str, Any]) -> None:
        """Send a new event to every connected SP (each keeps a copy)."""
        for sp, mind in list(self._minds.items()):
            try:
                d = mind.callRemote("event", event)
            except DeadReferenceError:
                # Its connection is gone but not yet detached: it catches
                # up on reconnect, and the others must still hear of it.
                _log.info("{sp} is disconnecting; it catches up on reconnect", sp=sp)
                continue
            d.addTimeout(self.policy.ackTimeout, self._reactor)
            d.addErrback(lambda reason: None)  # it catches up by id on reconnect

    def report(self, sp: str, kind: str, data: dict[str, Any]) -> None:
        """An SP reports something for the history (a command run)."""
        self._record(kind, {**data, "sp": sp})

    # -- what SPs see ----------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The array as the arbiter sees it, for heartbeat replies."""
        now = self._monotonic()
        state = self.state
        return {
            "state": token.arrayState(state),
            "token": {
                "epoch": state.issued if state.acked else None,
                "holder": state.holder if state.acked else None,
            },
            "last_move": self.lastMove,
            "members": {
                sp: {
                    "connected": m.connected,
                    "healthy": m.healthy,
                    "heard_s": round(now - m.lastHeard, 3),
                }
                for sp, m in state.members.items()
            },
        }

    def attach(self, sp: str, mind: Any) -> Callable[[], None]:
        """An SP logged in; the logout callable detaches it."""
        old = self._minds.get(sp)
        self._minds[sp] = mind
        if old is not None and old is not mind:
            old.broker.transport.abortConnection()

        def detach() -> None:
            if self._minds.get(sp) is mind:
                del self._minds[sp]
                self.feed(token.Disconnected(sp, self._monotonic()))

        return detach

    def follow(self, name: str, mind: Any) -> Callable[[], None]:
        """
        A proxy logged in: it hears the route now and at every change; the
        logout callable forgets it.  Each proxy (each connection) follows on
        its own, however many share the name.
        """
        self._followers[id(mind)] = (name, mind)
        self._sendRoute(name, mind, self.route())

        def unfollow() -> None:
            self._followers.pop(id(mind), None)

        return unfollow

    def heartbeat(
        self,
        sp: str,
        healthy: bool,
        holds: int | None,
        claim: int | None,
        first: bool,
        newest: int | None = None,
    ) -> dict[str, Any]:
        kind = token.Joined if first else token.Heartbeat
        self.feed(kind(sp, healthy, holds, self._monotonic(), claim, newest))
        if sp == self.state.holder:
            self._armHolderDeadline()
        return self.view()

    def _armHolderDeadline(self) -> None:
        """
        Judge again just after the holder's miss window ends: a hung holder
        is noticed within the window, not up to a tick later.
        """
        delay = self.policy.missWindow + HOLDER_DEADLINE_SLACK
        if self._holderDeadline is not None and self._holderDeadline.active():
            self._holderDeadline.reset(delay)
        else:
            self._holderDeadline = self._reactor.callLater(delay, self._onTick, False)

    def switchover(self, to: str | None) -> Deferred[int]:
        """
        Move the token on purpose; fires with the new epoch once the new
        holder acknowledged it.

        @raise token.SwitchoverRefused: it cannot happen now.
        """
        self.feed(token.Switchover(to, self._monotonic()))
        epoch = self.state.issued
        d: Deferred[int] = Deferred()
        waiter = (epoch, d)
        self._ackWaiters.append(waiter)

        def forget(result: Any) -> Any:
            if waiter in self._ackWaiters:
                self._ackWaiters.remove(waiter)
            return result

        d.addTimeout(self.policy.ackTimeout + self.policy.interval, self._reactor)
        return d.addBoth(forget)


def makeArbiterService(reactor: Any, config: ArrayConfig, arbiterId: str) -> MultiService:
    """
    The arbiter C{arbiterId} and its PB listener: SPs and proxies log in
    with client certificates from the array CA, TLS 1.3 only.
    """
    settings = config.arbiter(arbiterId)
    top = MultiService()
    store = EpochStore(config.token.state_file)
    try:
        arbiter = Arbiter(reactor, policyFor(config), store, history=config.events.history)
    except (EpochStoreError, EventHistoryError) as e:
        raise ConfigError(config.path, "token.state_file", str(e)) from None
    arbiter.setServiceParent(top)
    sps = {sp.id for sp in config.sps}
    portal = Portal(ArbiterRealm(arbiter, sps), [PeerSecretChecker(sps | {PROXY}, readPeerSecret(config))])
    factory = PeerServerFactory(portal, idleTimeout=max(5.0, 20 * config.token.missWindow), clock=reactor)
    context = ReloadableServerTLS(
        lambda: serverOptions(settings.cert, settings.key, config.ca, requireClientCertificate=True, tls13Only=True),
        f"arbiter {arbiterId}",
    )
    address = settings.address
    strports.service(
        f"tcp:{address.port}:interface={address.host}",
        tlsServerFactory(factory, context, reactor),
        reactor=reactor,
    ).setServiceParent(top)
    ReloadOnHangup(reactor, [context]).setServiceParent(top)
    top.arbiter = arbiter  # type: ignore[attr-defined]
    return top
