# -*- test-case-name: tests.test_proxy_router -*-
"""
Where requests go: the token the arbiter in this process acknowledged.

Requests that find no active SP wait here (up to their deadline); a token
move wakes every waiter at once, and tells attempts still in flight to an
older epoch (see L{Router.watch}).
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import frozen
from twisted.internet.defer import Deferred

Route = tuple[int, str]


@frozen
class _Waiter:
    deferred: Deferred[Route | None]
    deadline: float


class Router:
    """
    @ivar route: C{(epoch, holder)} of the active SP, or L{None}.
    @ivar vacantSince: since when no SP has been active (monotonic).
    """

    def __init__(
        self,
        reactor: Any,
        monotonic: Callable[[], float],
        onGap: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._reactor = reactor
        self._monotonic = monotonic
        self._onGap = onGap
        self.route: Route | None = None
        self.vacantSince: float | None = monotonic()
        self._everRouted = False
        self._waiters: dict[_Waiter, Any] = {}
        self._watchers: dict[object, tuple[int, Callable[[], None]]] = {}

    @property
    def waiting(self) -> int:
        """Requests held for an active SP right now."""
        return len(self._waiters)

    def update(self, route: Route | None) -> None:
        """The arbiter's acknowledged token changed."""
        if route == self.route:
            return
        self.route = route
        now = self._monotonic()
        if route is None:
            if self.vacantSince is None:
                self.vacantSince = now
            return
        if self._everRouted:
            # A move, not this proxy's first route: how long no SP was active.
            self._onGap(0.0 if self.vacantSince is None else now - self.vacantSince)
        self._everRouted = True
        self.vacantSince = None
        for waiter in list(self._waiters):
            self._fire(waiter, route)
        for key, (epoch, abandon) in list(self._watchers.items()):
            if route[0] > epoch:
                del self._watchers[key]
                abandon()

    def wait(self, delay: float, deadline: float) -> Deferred[Route | None]:
        """
        The route to send to: after C{delay} seconds or the next token move,
        whichever comes first, once an SP is active; L{None} if none is by
        C{deadline}.
        """
        now = self._monotonic()
        if delay <= 0 and self.route is not None:
            d: Deferred[Route | None] = Deferred()
            d.callback(self.route)
            return d
        waiter = _Waiter(Deferred(lambda _: self._forget(waiter)), deadline)
        due = min(delay, deadline - now) if delay > 0 else deadline - now
        self._waiters[waiter] = self._reactor.callLater(max(0.0, due), self._due, waiter)
        return waiter.deferred

    def _due(self, waiter: _Waiter) -> None:
        if self.route is not None or self._monotonic() >= waiter.deadline:
            self._fire(waiter, self.route)
        else:
            self._waiters[waiter] = self._reactor.callLater(
                max(0.0, waiter.deadline - self._monotonic()), self._due, waiter
            )

    def _fire(self, waiter: _Waiter, route: Route | None) -> None:
        self._forget(waiter)
        waiter.deferred.callback(route)

    def _forget(self, waiter: _Waiter) -> None:
        call = self._waiters.pop(waiter, None)
        if call is not None and call.active():
            call.cancel()

    def watch(self, epoch: int, abandon: Callable[[], None]) -> Callable[[], None]:
        """
        Call C{abandon} when a newer epoch than C{epoch} becomes active
        (the SP that had C{epoch} was replaced); returns the way to stop
        watching.
        """
        key = object()
        self._watchers[key] = (epoch, abandon)
        return lambda: self._watchers.pop(key, None) and None
