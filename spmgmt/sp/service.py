# -*- test-case-name: tests.test_agent -*-
"""
The SP agent's service tree: the HTTPS site, the health monitor, and what
ties them to the agent.  Built by C{twistd spmgmt sp}.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from spmgmt.auth import FailureLimiter, authThreadPool, portalFromConfig
from spmgmt.config import ArrayConfig, SPConfig, readPeerSecret
from spmgmt.health import HealthMonitor, buildChecks
from spmgmt.httpserver import ConnectionCap
from spmgmt.sp.peers import PeerClient
from spmgmt.pb.server import PeerServerFactory
from spmgmt.sp.peerserver import peerPortal
from spmgmt.sp.agent import SPAgent
from spmgmt.sp.participant import Participant
from spmgmt.sp.web import ManagementWeb
from spmgmt.tls import ReloadableServerTLS, ReloadOnHangup, clientOptions, serverOptions, tlsServerFactory


@implementer(IPolicyForHTTPS)
class ArrayPolicy:
    """
    HTTPS policy for connections inside the array: trust only the array CA
    and expect the certificate of the SP we mean, whatever address we dial.
    """

    def __init__(self, serverName: str, caPath: Any, certPath: Any = None, keyPath: Any = None) -> None:
        self._creator = clientOptions(
            serverName, caPath, certPath, keyPath, acceptableProtocols=[b"http/1.1"]
        )

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self._creator


def listenDescription(address: Any) -> str:
    """A strports description for a TCP listener on C{address}."""
    host = address.host.replace(":", "\\:")
    return f"tcp:{address.port}:interface={host}"


def makeSPService(reactor: Any, config: ArrayConfig, sp: SPConfig) -> MultiService:
    """
    Build the service tree of the SP C{sp}.  Listening goes through
    C{strports.service}, so a failed bind stops the process.
    """
    config.stateDirFor(sp.id).mkdir(parents=True, exist_ok=True)
    top = MultiService()
    agent = SPAgent(reactor, config, sp, monotonic=time.monotonic, lease=config.token.lease_timeout)
    secret = readPeerSecret(config)
    peers = {
        peer.id: PeerClient(
            reactor,
            sp.id,
            peer,
            config.ca,
            sp.cert,
            sp.key,
            secret,
            timeout=config.peer.timeout,
            keepalive=config.peer.keepalive,
            monotonic=time.monotonic,
        )
        for peer in config.sps
        if peer.id != sp.id
    }
    for client in peers.values():
        client.setServiceParent(top)
    participant = None
    if config.arbiters:
        arbiter = config.arbiters[0]
        participant = Participant(
            reactor,
            agent,
            arbiter.id,
            sp.arbiter or arbiter.address,
            config.ca,
            sp.cert,
            sp.key,
            secret,
            interval=config.token.heartbeat_interval,
            misses=config.token.heartbeat_misses,
            monotonic=time.monotonic,
        )
        participant.setServiceParent(top)
    web = ManagementWeb(
        agent,
        portalFromConfig(reactor, config, authThreadPool(reactor)),
        FailureLimiter(reactor),
        peers,
        participant,
    )

    # One kept-alive connection: no per-probe connection churn in the log.
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    selfAgent = Agent(reactor, contextFactory=ArrayPolicy(sp.id, config.ca), pool=pool)
    selfURL = f"https://{sp.web.host}:{sp.web.port}/healthz".encode()

    def probe() -> Deferred[int]:
        d = selfAgent.request(b"GET", selfURL)

        def done(response: Any) -> int:
            response.deliverBody(_Discard())
            return response.code

        return d.addCallback(done)

    monitor = HealthMonitor(
        reactor,
        time.monotonic,
        buildChecks(reactor, config.checks, sp.id, probe),
        agent.healthChanged,
    )
    agent.healthSnapshot = monitor.snapshot
    monitor.setServiceParent(top)

    # A client certificate is asked for, not required: the proxy presents
    # its own, which lets it vouch for the users it authenticated.
    contextFactory = ReloadableServerTLS(
        lambda: serverOptions(sp.cert, sp.key, config.ca, acceptableProtocols=[b"http/1.1"]), f"{sp.id} web"
    )
    webFactory = ConnectionCap(tlsServerFactory(web.site, contextFactory, reactor), config.limits.max_connections)
    strports.service(listenDescription(sp.web), webFactory, reactor=reactor).setServiceParent(top)
    # The peer channel: client certificates from the array CA are required,
    # TLS 1.3 only; a peer silent for several keepalives is dropped.
    names = {peer.id for peer in config.sps if peer.id != sp.id}
    pbFactory = PeerServerFactory(
        peerPortal(agent, names, secret), idleTimeout=max(10.0, 10 * config.peer.keepalive), clock=reactor
    )
    pbContext = ReloadableServerTLS(
        lambda: serverOptions(sp.cert, sp.key, config.ca, requireClientCertificate=True, tls13Only=True),
        f"{sp.id} peer port",
    )
    strports.service(
        listenDescription(sp.pb), tlsServerFactory(pbFactory, pbContext, reactor), reactor=reactor
    ).setServiceParent(top)
    # SIGHUP: every identity of this SP, listeners and links alike.
    links = [client.tls for client in peers.values()] + ([participant.tls] if participant is not None else [])
    ReloadOnHangup(reactor, [contextFactory, pbContext, *links]).setServiceParent(top)
    top.agent = agent  # type: ignore[attr-defined]
    top.web = web  # type: ignore[attr-defined]
    return top


class _Discard:
    """Reads and drops a response body."""

    def makeConnection(self, transport: Any) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
