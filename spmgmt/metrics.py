# -*- test-case-name: tests.test_web -*-
"""
Prometheus metrics of one process, in a registry of its own (never the
global one), so tests and several agents in one process do not collide.
"""

from __future__ import annotations

from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


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
        """The content type and body for C{GET /metrics}."""
        return CONTENT_TYPE_LATEST.encode("ascii"), generate_latest(self.registry)
