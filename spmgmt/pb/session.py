# -*- test-case-name: tests.test_peer,tests.test_failover -*-
"""
A reconnecting, logged-in PB client session: what an SP keeps to each peer
and to the arbiter, and a proxy to the arbiter.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.spread import pb

from spmgmt.config import Address
from spmgmt.pb.wire import GuardedBroker, securityOptions
from spmgmt.tls import ReloadableClientTLS, clientOptions

_log = Logger()


class _PBClientFactory(pb.PBClientFactory):
    """Tells its owner when PB is ready on the connection."""

    protocol = GuardedBroker

    def __init__(self, onReady: Callable[[GuardedBroker], None]) -> None:
        super().__init__(security=securityOptions())
        self._onReady = onReady

    def clientConnectionMade(self, broker: GuardedBroker) -> None:
        super().clientConnectionMade(broker)
        self._onReady(broker)


class _BrokerFactory(Factory):
    """
    A fresh PB client factory per connection, so no state (pending root
    requests, a dead broker) leaks from one connection into the next.

    Login happens once PB is ready, not in C{ClientService}'s
    C{prepareConnection}: a connection lost during C{prepareConnection}
    meets a state machine with no transition for it (Twisted 26.10).  The
    broker's idle timeout ends a connection whose peer never answers (a
    TLS handshake with a stopped process, say), and C{ClientService}
    reconnects with backoff.
    """

    def __init__(self, clock: Any, onReady: Callable[[GuardedBroker], None], idleTimeout: float) -> None:
        self._clock = clock
        self._onReady = onReady
        self._idleTimeout = idleTimeout

    def buildProtocol(self, addr: Any) -> GuardedBroker:
        broker = _PBClientFactory(self._onReady).buildProtocol(addr)
        broker.idleTimeout = self._idleTimeout
        broker.callLater = self._clock.callLater  # the idle timer runs on our clock
        return broker


class PBSession(Service):
    """
    A reconnecting, logged-in PB session to one server: TLS with our own
    certificate (TLS 1.3, the server's name checked against the array CA),
    C{ClientService} with backoff, and a fresh cred login, passing
    L{mind}, on every new connection.  Subclasses hear about each session
    through L{sessionStarted} and L{sessionEnded}.

    @ivar perspective: the logged-in server's avatar, or L{None}.
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        serverName: str,
        address: Address,
        ca: Any,
        cert: Any,
        key: Any,
        secret: bytes,
        loginTimeout: float,
        idleTimeout: float,
        maxDelay: float,
    ) -> None:
        self._reactor = reactor
        self._name = name
        self._serverName = serverName
        self._secret = secret
        self._loginTimeout = loginTimeout
        self.perspective: Any = None
        #: Our certificate and the CA, reloaded on SIGHUP (L{ReloadOnHangup}).
        self.tls = ReloadableClientTLS(
            lambda: clientOptions(serverName, ca, cert, key, tls13Only=True), f"link to {serverName}"
        )
        endpoint = wrapClientTLS(
            self.tls,
            HostnameEndpoint(reactor, address.host.encode(), address.port, timeout=loginTimeout),
            clock=reactor,
        )
        self._service = ClientService(
            endpoint,
            _BrokerFactory(reactor, self._login, idleTimeout=idleTimeout),
            retryPolicy=backoffPolicy(initialDelay=min(0.1, maxDelay), maxDelay=maxDelay, factor=2.0),
            clock=reactor,
        )

    def mind(self) -> pb.Referenceable:
        """What to pass at login (the server binds our certificate through it)."""
        raise NotImplementedError()

    def sessionStarted(self, perspective: Any) -> None:
        """Logged in on a new connection."""

    def sessionEnded(self, perspective: Any) -> None:
        """That connection is gone."""

    def loginFailed(self) -> None:
        """A connection was made but its login failed (it is being closed)."""

    def startService(self) -> None:
        super().startService()
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.perspective = None
        return self._service.stopService()

    def _login(self, broker: GuardedBroker) -> None:
        credentials = UsernamePassword(self._name.encode(), self._secret)
        d = broker.factory.login(credentials, client=self.mind())
        d.addTimeout(self._loginTimeout, self._reactor)

        def loggedIn(perspective: Any) -> None:
            self.perspective = perspective
            _log.info("logged in to {server}", server=self._serverName)

            def lost() -> None:
                if self.perspective is perspective:
                    self.perspective = None
                    _log.info("disconnected from {server}", server=self._serverName)
                    self.sessionEnded(perspective)

            broker.notifyOnDisconnect(lost)
            self.sessionStarted(perspective)

        def failed(reason: Any) -> None:
            _log.warn("login to {server} failed: {why}", server=self._serverName, why=reason.getErrorMessage())
            self.loginFailed()
            if broker.transport is not None:
                broker.transport.abortConnection()

        d.addCallbacks(loggedIn, failed)
