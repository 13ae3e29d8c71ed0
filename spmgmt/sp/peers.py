# -*- test-case-name: tests.test_peer -*-
"""
The client an SP keeps to each of its peers: one reconnecting PB connection
(C{ClientService} with backoff), a fresh login on every connection, a
timeout on every call, and an application-level keepalive that tells
whether the peer is reachable and drops a connection to a hung peer so the
next attempt can find it again.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.logger import Logger
from twisted.spread import pb

from spmgmt.config import SPConfig
from spmgmt.pb.session import PBSession

_log = Logger()


class PeerUnavailable(Exception):
    """The peer did not answer: not connected, hung, or the link broke."""

    def __init__(self, peer: str, detail: str) -> None:
        super().__init__(f"{peer}: {detail}")
        self.peer = peer
        self.detail = detail


class PeerRefused(Exception):
    """The peer answered with an error reply (its rules refused the call)."""

    def __init__(self, peer: str, error: dict[str, Any]) -> None:
        super().__init__(f"{peer}: {error.get('detail')}")
        self.peer = peer
        self.error = error


class PeerFailed(Exception):
    """The peer raised an unexpected error (its log has the details)."""

    def __init__(self, peer: str, detail: str) -> None:
        super().__init__(f"{peer}: {detail}")
        self.peer = peer
        self.detail = detail


class PeerMind(pb.Referenceable):
    """
    What this SP passes at login: the server binds the TLS identity of the
    connection it leads to, and (later) calls back through it.
    """


class PeerClient(PBSession):
    """
    This SP's link to one peer.

    @ivar lastSeen: monotonic time of the peer's last answer, or L{None}.
    @ivar lastSummary: the summary the peer sent with its last keepalive.
    """

    def __init__(
        self,
        reactor: Any,
        selfId: str,
        peer: SPConfig,
        ca: Any,
        cert: Any,
        key: Any,
        secret: bytes,
        timeout: float,
        keepalive: float,
        monotonic: Callable[[], float],
    ) -> None:
        super().__init__(
            reactor,
            selfId,
            peer.id,
            peer.pb,
            ca,
            cert,
            key,
            secret,
            loginTimeout=timeout,
            idleTimeout=timeout + keepalive,
            maxDelay=2.0,
        )
        self.peer = peer.id
        self._timeout = timeout
        self._keepalive = keepalive
        self._monotonic = monotonic
        self._ping: Any = None
        self._lastKnown: dict[str, tuple[Any, float]] = {}
        self.lastSeen: float | None = None
        self.lastSummary: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._schedulePing()

    def stopService(self) -> Deferred[None]:
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = None
        return super().stopService()

    def mind(self) -> pb.Referenceable:
        return PeerMind()

    def sessionStarted(self, perspective: Any) -> None:
        self._seen()

    # -- calls -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.perspective is not None

    def reachable(self) -> bool:
        """Connected, and answered within the last timeout + keepalive."""
        return (
            self.perspective is not None
            and self.lastSeen is not None
            and self._monotonic() - self.lastSeen <= self._timeout + self._keepalive
        )

    def _seen(self) -> None:
        self.lastSeen = self._monotonic()

    def lastKnown(self, method: str) -> tuple[Any, float] | None:
        """The last good answer to C{method} and its age in seconds."""
        known = self._lastKnown.get(method)
        if known is None:
            return None
        return known[0], self._monotonic() - known[1]

    async def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """
        Call C{method} on the peer; the value of its C{ok} reply.

        @param timeout: how long to wait; the peer timeout by default.  A
            long command passes its own run time: a hung peer is still found
            within the peer timeout by the keepalive, which drops the
            connection and so ends the call.
        @raise PeerUnavailable: not connected, or no answer within the timeout.
        @raise PeerRefused: the peer refused (an C{error} reply).
        @raise PeerFailed: the peer raised an unexpected error.
        """
        perspective = self.perspective
        if perspective is None:
            raise PeerUnavailable(self.peer, "not connected")
        wait = self._timeout if timeout is None else timeout
        try:
            d = perspective.callRemote(method, *args)
            d.addTimeout(wait, self._reactor)
            reply = await d
        except CancelledError:
            raise  # our caller gave up (its client left): the peer is fine
        except TimeoutError:
            self._abandon(perspective, f"no answer to {method} within {wait}s")
            raise PeerUnavailable(self.peer, f"no answer within {wait}s") from None
        except (pb.PBConnectionLost, pb.DeadReferenceError):
            raise PeerUnavailable(self.peer, "the connection was lost") from None
        except Exception as e:
            # A remote error, or one raised while sending (an argument PB
            # cannot encode): either way, not this SP's crash.
            raise PeerFailed(self.peer, f"{method} failed: {e}") from None
        self._seen()
        if not isinstance(reply, dict) or not ("ok" in reply or "error" in reply):
            raise PeerFailed(self.peer, f"{method} answered something that is not a reply")
        if "error" in reply:
            raise PeerRefused(self.peer, reply["error"] if isinstance(reply["error"], dict) else {})
        self._lastKnown[method] = (reply["ok"], self._monotonic())
        return reply["ok"]

    def _abandon(self, perspective: Any, why: str) -> None:
        """
        Drop the connection to a peer that stopped answering (SIGSTOP keeps
        TCP open): the reconnect loop then finds it again when it is back.
        """
        if self.perspective is perspective:
            self.perspective = None
            _log.warn("abandoning the connection to {peer}: {why}", peer=self.peer, why=why)
            transport = perspective.broker.transport
            if transport is not None:
                transport.abortConnection()

    # -- keepalive ---------------------------------------------------------------

    def _schedulePing(self) -> None:
        self._ping = self._reactor.callLater(self._keepalive, self._sendPing)

    def _sendPing(self) -> None:
        if self.perspective is None:
            self._schedulePing()
            return
        d = Deferred.fromCoroutine(self.call("ping"))

        def answered(summary: Any) -> None:
            if isinstance(summary, dict):
                self.lastSummary = summary

        def failed(reason: Any) -> None:
            # Keepalive failures are expected while a peer is down; the
            # loop must survive every one of them.
            if not reason.check(PeerUnavailable, PeerRefused, PeerFailed):
                _log.failure("keepalive to {peer} failed", reason, peer=self.peer)

        def again(_: Any) -> None:
            if self.running:
                self._schedulePing()

        d.addCallbacks(answered, failed).addBoth(again)
