# -*- test-case-name: tests.test_proxy_integration -*-
"""
The proxy's link to the arbiter: it logs in like an SP does (mutual TLS,
the peer secret, its certificate naming C{proxy}), routes by the token the
arbiter pushes to it, and pulls the arbiter's view for its own
C{/api/v1/array}.  It never grants.

Without the arbiter the proxy does not know who is active: it routes
nowhere, so requests wait (C{failover_wait}) for the arbiter to come back
rather than go to an SP that has stepped down meanwhile.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.spread import pb

from spmgmt.config import ArrayConfig, readPeerSecret
from spmgmt.pb.session import PBSession
from spmgmt.proxy.router import Router

_log = Logger()

#: Seconds between pulls of the arbiter's view (they also keep the link alive).
VIEW_INTERVAL = 0.5


class RouteMind(pb.Referenceable):
    """What the arbiter calls on the proxy: the route changed."""

    def __init__(self, follower: "ArbiterFollower") -> None:
        self._follower = follower

    def remote_route(self, epoch: object, holder: object) -> None:
        if epoch is None and holder is None:
            self._follower.routed(None)
        elif isinstance(epoch, int) and not isinstance(epoch, bool) and isinstance(holder, str):
            self._follower.routed((epoch, holder))


class ArbiterFollower(PBSession):
    """
    @ivar lastView: the arbiter's view as last pulled, or L{None} while
        not connected.
    """

    def __init__(self, reactor: Any, config: ArrayConfig, router: Router) -> None:
        assert config.proxy is not None
        arbiter = config.arbiters[0]
        super().__init__(
            reactor,
            "proxy",
            arbiter.id,
            arbiter.address,
            config.ca,
            config.proxy.cert,
            config.proxy.key,
            readPeerSecret(config),
            loginTimeout=5.0,
            idleTimeout=6 * VIEW_INTERVAL,
            maxDelay=0.5,
        )
        self._router = router
        self._pull: Any = None
        self.lastView: dict[str, Any] | None = None

    def mind(self) -> pb.Referenceable:
        return RouteMind(self)

    def routed(self, route: tuple[int, str] | None) -> None:
        self._router.update(route)

    def view(self) -> dict[str, Any]:
        """The arbiter's view as last pulled (no members while not connected)."""
        return self.lastView if self.lastView is not None else {"members": {}}

    def sessionStarted(self, perspective: Any) -> None:
        self._pullView(perspective)

    def sessionEnded(self, perspective: Any) -> None:
        _log.warn("lost the arbiter: requests wait until it is back")
        self.lastView = None
        self._router.update(None)

    def loginFailed(self) -> None:
        # The arbiter pushes the route as it accepts a login, before its
        # answer: a login that then fails must not leave that route in use.
        self._router.update(None)

    def stopService(self) -> Any:
        if self._pull is not None and self._pull.active():
            self._pull.cancel()
        self._pull = None
        return super().stopService()

    def _pullView(self, perspective: Any) -> None:
        if self.perspective is not perspective or not self.running:
            return
        d = perspective.callRemote("view")
        d.addTimeout(2 * VIEW_INTERVAL, self._reactor)

        def answered(reply: Any) -> None:
            if self.perspective is perspective and isinstance(reply, dict) and isinstance(reply.get("ok"), dict):
                self.lastView = reply["ok"]

        d.addCallbacks(answered, lambda reason: None)
        self._pull = self._reactor.callLater(VIEW_INTERVAL, self._pullView, perspective)
