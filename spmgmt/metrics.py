# -*- test-case-name: tests.test_web -*-
"""
Prometheus metrics of one process, in a registry of its own (never the
global one), so tests and several agents in one process do not collide.
"""

from __future__ import annotations

from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


#: HTTP methods with a label of their own; any token is a valid method, and
#: each label value is a new series held forever.
_METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def methodLabel(method: bytes | None) -> str:
    """The metrics label of a request's method: one of a fixed set."""
    name = method.decode("ascii", "replace") if method else "?"
    return name if name in _METHOD_LABELS else "other"


def exposition(registry: CollectorRegistry) -> tuple[bytes, bytes]:
    """The content type and body for C{GET /metrics}."""
    return CONTENT_TYPE_LATEST.encode("ascii"), generate_latest(registry)


@define
class SPMetrics:
    """The metrics an SP agent exports."""

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    requests: Counter = field(init=False)
    latency: Histogram = field(init=False)
    healthy: Gauge = field(init=False)
    serviceMode: Gauge = field(init=False)
    checkUp: Gauge = field(init=False)
    commandRuns: Counter = field(init=False)
    commandSeconds: Histogram = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "spmgmt_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "spmgmt_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.healthy = Gauge("spmgmt_sp_healthy", "1 while the SP is healthy", registry=r)
        self.serviceMode = Gauge(
            "spmgmt_sp_service_mode", "1 while the SP serves the service-mode web server", registry=r
        )
        self.checkUp = Gauge("spmgmt_health_check_up", "1 while the check is up", ["check"], registry=r)
        self.commandRuns = Counter(
            "spmgmt_command_runs", "Commands run", ["command", "outcome"], registry=r
        )
        self.commandSeconds = Histogram(
            "spmgmt_command_duration_seconds", "Command run time", ["command"], registry=r
        )

    def exposition(self) -> tuple[bytes, bytes]:
        return exposition(self.registry)


@define
class ProxyMetrics:
    """The metrics the front proxy exports."""

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    connections: Gauge = field(init=False)
    refused: Counter = field(init=False)
    requests: Counter = field(init=False)
    latency: Histogram = field(init=False)
    retries: Counter = field(init=False)
    outcomeUnknown: Counter = field(init=False)
    held: Gauge = field(init=False)
    failoverGap: Histogram = field(init=False)
    streamResumes: Counter = field(init=False)
    backendUp: Gauge = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.connections = Gauge(
            "spmgmt_proxy_client_connections", "Client connections open", ["listener"], registry=r
        )
        self.refused = Counter(
            "spmgmt_proxy_refused", "Client connections or requests refused by a limit", ["reason"], registry=r
        )
        self.requests = Counter(
            "spmgmt_proxy_requests", "Client requests answered", ["method", "status"], registry=r
        )
        self.latency = Histogram(
            "spmgmt_proxy_request_duration_seconds",
            "Time to answer a client request, holds and retries included",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.retries = Counter(
            "spmgmt_proxy_retries", "Requests sent again, by what became of the attempt before", ["outcome"], registry=r
        )
        self.outcomeUnknown = Counter(
            "spmgmt_proxy_outcome_unknown", "Non-idempotent requests answered 502 outcome unknown", registry=r
        )
        self.held = Gauge("spmgmt_proxy_held_requests", "Requests waiting for an active SP", registry=r)
        self.failoverGap = Histogram(
            "spmgmt_proxy_failover_gap_seconds",
            "Time with no active SP, per token move",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.streamResumes = Counter(
            "spmgmt_proxy_stream_resumes", "Event streams resumed on another SP or connection", registry=r
        )
        self.backendUp = Gauge(
            "spmgmt_proxy_backend_reachable", "1 while the SP's web port answers the proxy's probe", ["sp"], registry=r
        )

    def exposition(self) -> tuple[bytes, bytes]:
        return exposition(self.registry)
