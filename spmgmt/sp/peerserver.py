# -*- test-case-name: tests.test_peer -*-
"""
What an SP serves its peers on its C{pb} port: the realm and the avatar
(ping, summary, health, status, commands).  Logins are checked by
L{spmgmt.pb.server}: a client certificate from the array CA, the peer
secret, and the certificate's name bound to the login name.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.spread import banana, pb
from zope.interface import implementer

from spmgmt.pb.server import PeerSecretChecker, boundName
from spmgmt.pb.wire import MAX_REPLY_BYTES, error, ok, wireSize
from spmgmt.sp.agent import SPAgent
from spmgmt.sp.refusals import refusal

_log = Logger()


def _reply(value: Any) -> dict[str, Any]:
    """C{ok(value)}, or a too_large error when it would not fit the channel."""
    try:
        size = wireSize(ok(value))
    except banana.BananaError as e:
        return error("too_large", f"the reply cannot be sent: {e}")
    if size > MAX_REPLY_BYTES:
        return error("too_large", f"the reply would be {size} bytes (limit {MAX_REPLY_BYTES})")
    return ok(value)


def _refused(failure: Any) -> Any:
    """A refusal that surfaced while running (busy) as an error reply."""
    refused = refusal(failure.value)
    return failure if refused is None else {"error": refused}


class PeerAvatar(pb.Avatar):
    """
    What a logged-in peer may ask of this SP.  Arguments come from the
    network: each method checks their types before using them.
    """

    def __init__(self, agent: SPAgent, peer: str) -> None:
        self._agent = agent
        self.peer = peer

    def perspective_ping(self) -> dict[str, Any]:
        return ok(self._agent.summary())

    def perspective_summary(self) -> dict[str, Any]:
        return ok(self._agent.summary())

    def perspective_health(self) -> dict[str, Any]:
        return _reply(self._agent.health())

    def perspective_status(self) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._agent.status()).addCallbacks(_reply, _refused)

    def perspective_runCommand(self, name: object, params: object, epoch: object) -> Any:
        if not isinstance(name, str) or len(name) > 64:
            return error("bad_request", "name must be a short string")
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
            return error("bad_request", "epoch must be an integer or None")
        try:
            d = self._agent.runCommand(name, params, epoch=epoch)
        except Exception as e:
            refused = refusal(e)
            if refused is None:
                raise
            return {"error": refused}
        _log.info("peer {peer} runs {command}", peer=self.peer, command=name)
        return d.addCallbacks(lambda result: _reply(result.asJSON()), _refused)


@implementer(IRealm)
class PeerRealm:
    """
    Hands a L{PeerAvatar} to a peer whose verified TLS certificate names
    the same SP as its login.  The login's mind (a reference the client
    passes) leads to the connection; a login without one is refused.
    """

    def __init__(self, agent: SPAgent) -> None:
        self._agent = agent

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("only PB perspectives")
        avatar = PeerAvatar(self._agent, boundName(avatarId, mind))
        return pb.IPerspective, avatar, lambda: None


def peerPortal(agent: SPAgent, names: set[str], secret: bytes) -> Portal:
    """The portal of an SP's PB server."""
    return Portal(PeerRealm(agent), [PeerSecretChecker(names, secret)])
