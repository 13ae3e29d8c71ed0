# -*- test-case-name: tests.test_peer,tests.test_peer_security -*-
"""
The server side of every PB listener (an SP's peer port, the arbiter).

Who may log in is decided twice, on purpose: TLS requires a client
certificate from the array CA (strangers never reach banana), and
twisted.cred checks the login name and the array's peer secret.  The realm
then binds the two (L{boundName}): the name in the verified certificate
must equal the login name, so a valid certificate for C{spb} cannot log in
as C{spa}.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from spmgmt.pb.wire import GuardedBroker, securityOptions
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
