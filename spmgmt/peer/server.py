# -*- test-case-name: tests.test_peer -*-
"""
The PB server every SP runs on its C{pb} port.

Who may log in is decided twice, on purpose: TLS requires a client
certificate from the array CA (strangers never reach banana), and
twisted.cred checks the login name and the array's peer secret.  The realm
then binds the two: the name in the verified certificate must equal the
login name, so a valid certificate for C{spb} cannot log in as C{spa}.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.spread import banana, pb
from zope.interface import implementer

from spmgmt.peer._common import MAX_REPLY_BYTES, GuardedBroker, error, ok, securityOptions, wireSize
from spmgmt.sp.agent import SPAgent
from spmgmt.sp.refusals import refusal
from spmgmt.tls import peerIdentity

_log = Logger()


@implementer(ICredentialsChecker)
class PeerSecretChecker:
    """
    Accepts the known peer names with the array's peer secret (PB's
    challenge-response: the secret itself never crosses).
    """

    credentialInterfaces = (IUsernameHashedPassword,)

    def __init__(self, names: set[str], secret: bytes) -> None:
        self._names = names
        self._secret = secret

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        name = credentials.username
        known = name.decode("utf-8", "replace") in self._names if isinstance(name, bytes) else False
        if known and credentials.checkPassword(self._secret):
            return succeed(name)
        return fail(UnauthorizedLogin())


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


def boundName(avatarId: Any, mind: Any) -> str:
    """
    The login name, if the verified TLS certificate of the connection the
    login's mind leads to names the same SP; the one place the TLS identity
    is bound to the cred identity.

    @raise UnauthorizedLogin: no mind, no verified certificate, or another name.
    """
    name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
    broker = getattr(mind, "broker", None)
    identity = peerIdentity(broker.transport) if broker is not None else None
    if identity != name:
        _log.warn("refused login as {name}: certificate names {identity}", name=name, identity=identity)
        raise UnauthorizedLogin("the certificate does not match the login name")
    return name


class PeerServerFactory(pb.PBServerFactory):
    """PB server with basic-types jelly, guarded brokers and no tracebacks."""

    protocol = GuardedBroker

    def __init__(self, portal: Portal, idleTimeout: float, clock: Any = None) -> None:
        super().__init__(portal, unsafeTracebacks=False, security=securityOptions())
        self._idleTimeout = idleTimeout
        self._clock = clock

    def buildProtocol(self, addr: Any) -> GuardedBroker:
        broker = super().buildProtocol(addr)
        broker.idleTimeout = self._idleTimeout
        if self._clock is not None:
            broker.callLater = self._clock.callLater
        return broker


def peerPortal(agent: SPAgent, names: set[str], secret: bytes) -> Portal:
    """The portal of an SP's PB server."""
    return Portal(PeerRealm(agent), [PeerSecretChecker(names, secret)])
