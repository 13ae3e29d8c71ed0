# -*- test-case-name: tests.test_proxy_integration -*-
"""
The proxy process's service tree (C{twistd spmgmt proxy}): the link to
the arbiter and the router that follows it, the backends, the client listeners (TLS, and
plain TCP if configured), a probe of each SP's web port, and the
reload of every TLS identity on SIGHUP.
"""

from __future__ import annotations

import resource
import time
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import gatherResults
from twisted.logger import Logger

from spmgmt.auth import authThreadPool, portalFromConfig
from spmgmt.config import ArrayConfig, ConfigError
from spmgmt.httpserver import ConnectionCap
from spmgmt.metrics import ProxyMetrics
from spmgmt.proxy.backend import Backends
from spmgmt.proxy.follower import ArbiterFollower
from spmgmt.proxy.frontend import Proxy, ProxySite
from spmgmt.proxy.router import Router
from spmgmt.tls import (
    ReloadableServerTLS,
    ReloadOnHangup,
    TLSConfigurationError,
    serverOptions,
    tlsServerFactory,
)

_log = Logger()

#: File descriptors kept for everything but client connections.
_SPARE_FDS = 256


class Listener(Service):
    """
    A TCP listener whose port is known (to pause it, L{HandshakeThrottle}).
    A failed bind raises from C{privilegedStartService}, so twistd exits.
    """

    #: Connections the kernel may queue while accepting is paused.
    backlog = 1024

    def __init__(self, reactor: Any, address: Any, factory: Any, onPort: Any = None) -> None:
        self._reactor = reactor
        self._address = address
        self._factory = factory
        self._onPort = onPort
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        address = self._address
        self.port = self._reactor.listenTCP(
            address.port, self._factory, backlog=self.backlog, interface=address.host
        )
        if self._onPort is not None:
            self._onPort(self.port)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def _raiseFileLimit(wanted: int) -> int:
    """
    Raise this process's descriptor limit towards C{wanted} (at most the
    hard limit); the number of client connections it leaves room for.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + _SPARE_FDS
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    room = wanted if soft == resource.RLIM_INFINITY else max(1, min(wanted, soft - _SPARE_FDS))
    if room < wanted:
        _log.warn(
            "only {room} client connections fit the descriptor limit ({soft}); "
            "proxy.max_connections is {wanted}",
            room=room, soft=soft, wanted=wanted,
        )
    return room


def makeProxyService(reactor: Any, config: ArrayConfig) -> MultiService:
    """
    The whole proxy process.  Listening goes through C{strports.service},
    so a failed bind stops the process with an error.
    """
    settings = config.proxy
    assert settings is not None
    top = MultiService()
    metrics = ProxyMetrics()
    router = Router(reactor, time.monotonic, onGap=metrics.failoverGap.observe)
    arbiter = ArbiterFollower(reactor, config, router)
    arbiter.setServiceParent(top)
    backends = Backends(reactor, config, router, timeout=settings.upstream_timeout)
    portal = portalFromConfig(reactor, config, authThreadPool(reactor))
    proxy = Proxy(reactor, config, router, backends, metrics, portal, arbiter)
    site = ProxySite(proxy)
    metrics.held.set_function(lambda: router.waiting)

    limit = _raiseFileLimit(settings.max_connections)
    try:
        tls = ReloadableServerTLS(
            lambda: serverOptions(settings.cert, settings.key, acceptableProtocols=[b"http/1.1"]), "front end"
        )
    except TLSConfigurationError as e:
        raise ConfigError(config.path, "proxy.cert", str(e)) from None
    listeners = [("tls", settings.tls, tlsServerFactory(site, tls, reactor))]  # type: ignore[arg-type]
    if settings.plain is not None:
        listeners.append(("plain", settings.plain, site))
    for name, address, factory in listeners:
        cap = ConnectionCap(factory, limit, lambda: metrics.refused.labels("connection limit").inc())
        metrics.connections.labels(name).set_function(lambda cap=cap: len(cap.protocols))
        onPort = site.throttle.watch if name == "tls" else None
        Listener(reactor, address, cap, onPort).setServiceParent(top)
    # SIGHUP: the front end, and the proxy's client certificate towards
    # the SPs and the arbiter.
    ReloadOnHangup(reactor, [tls, arbiter.tls, *backends.endpoints.tls]).setServiceParent(top)

    def probe() -> Any:
        def record(results: list[bool]) -> None:
            for sp, up in zip(ids, results):
                proxy.reachable[sp] = up
                metrics.backendUp.labels(sp).set(1 if up else 0)

        return gatherResults([backends.probe(sp, 1.0) for sp in ids]).addCallback(record)

    ids = [sp.id for sp in config.sps]
    probing = TimerService(1.0, probe)
    probing.clock = reactor
    probing.setServiceParent(top)
    top.proxy = proxy  # type: ignore[attr-defined]
    return top
