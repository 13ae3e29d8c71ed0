# -*- test-case-name: tests.test_failover,tests.test_arbiter -*-
"""
The arbiter's PB face: what a logged-in SP (L{ControlAvatar}) and a
logged-in proxy (L{FollowerAvatar}) may ask of it, and the realm that
hands each its avatar once the certificate is bound to the login name.
Arguments come from the network: each method checks their types first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.spread import pb
from zope.interface import implementer

from spmgmt import token
from spmgmt.events import PAGE
from spmgmt.pb.server import boundName
from spmgmt.pb.wire import error, ok

if TYPE_CHECKING:
    from spmgmt.arbiter.service import Arbiter

#: The login name (and certificate name) of a proxy.
PROXY = "proxy"

#: Epochs stay below this: they must fit the 18 digits a stamp may carry.
MAX_EPOCH = 10**18

#: The longest string a reported field may carry.
MAX_REPORTED = 256


class ControlAvatar(pb.Avatar):
    """One SP's control session with the arbiter."""

    def __init__(self, arbiter: Arbiter, sp: str) -> None:
        self._arbiter = arbiter
        self.sp = sp
        self._first = True

    def perspective_heartbeat(
        self, healthy: object, holds: object, claim: object = None, newest: object = None
    ) -> dict[str, Any]:
        if not isinstance(healthy, bool):
            return error("bad_request", "healthy must be a boolean")
        for name, value in (("holds", holds), ("claim", claim), ("newest", newest)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_EPOCH
            ):
                return error("bad_request", f"{name} must be an epoch or None")
        first, self._first = self._first, False
        return ok(
            self._arbiter.heartbeat(self.sp, healthy, holds, claim, first, newest)  # type: ignore[arg-type]
        )

    def perspective_events(self, since: object) -> dict[str, Any]:
        if not isinstance(since, int) or isinstance(since, bool):
            return error("bad_request", "since must be an event id")
        return ok(self._arbiter.events.since(since, limit=PAGE))

    def perspective_report(self, kind: object, data: object) -> dict[str, Any]:
        if kind != "command" or not isinstance(data, dict):
            return error("bad_request", "only command runs are reported")
        allowed = ("command", "rc", "timed_out", "duration_s", "user", "via")
        fields = {k: data[k] for k in allowed if k in data}
        for key, value in fields.items():
            # Events stay small: a catch-up page of them must fit a PB message.
            if not (value is None or isinstance(value, (bool, int, float)) or
                    (isinstance(value, str) and len(value) <= MAX_REPORTED)):
                return error("bad_request", f"{key} must be a number, a boolean or a string of at most {MAX_REPORTED}")
        self._arbiter.report(self.sp, "command", fields)
        return ok(None)

    def perspective_switchover(self, to: object) -> Any:
        if to is not None and not isinstance(to, str):
            return error("bad_request", "to must be an SP id or None")
        holder = self._arbiter.state.holder
        if holder != self.sp:
            return error("requires_active", f"only the active SP asks for a switchover ({holder} is)")
        try:
            d = self._arbiter.switchover(to)
        except token.SwitchoverRefused as e:
            return error("switchover_refused", str(e))

        def done(epoch: int) -> dict[str, Any]:
            return ok(self._arbiter.view())

        def failed(reason: Any) -> dict[str, Any]:
            return error("switchover_unconfirmed", "the new holder did not acknowledge in time")

        return d.addCallbacks(done, failed)


class FollowerAvatar(pb.Avatar):
    """
    A proxy's session: the route is pushed to its mind (L{Arbiter.follow});
    it pulls the arbiter's view for its own C{/api/v1/array}.
    """

    def __init__(self, arbiter: Arbiter) -> None:
        self._arbiter = arbiter

    def perspective_view(self) -> dict[str, Any]:
        return ok(self._arbiter.view())


@implementer(IRealm)
class ArbiterRealm:
    """
    SPs and proxies, bound to their certificates: an SP gets a control
    avatar, a proxy a follower avatar.
    """

    def __init__(self, arbiter: Arbiter, sps: set[str]) -> None:
        self._arbiter = arbiter
        self._sps = sps

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("only PB perspectives")
        name = boundName(avatarId, mind)
        if name in self._sps:
            detach = self._arbiter.attach(name, mind)
            return pb.IPerspective, ControlAvatar(self._arbiter, name), detach
        if name == PROXY:
            unfollow = self._arbiter.follow(name, mind)
            return pb.IPerspective, FollowerAvatar(self._arbiter), unfollow
        raise UnauthorizedLogin(f"{name} is neither an SP nor the proxy")
