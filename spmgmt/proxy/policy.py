# -*- test-case-name: tests.test_proxy_policy -*-
"""
Every retry decision of the proxy, as one pure function.

The proxy sends a request to the active SP and classifies what happened
(L{Outcome}); L{decide} says what to do next.  The rules (RFC 9110 §9.2.2,
DESIGN "Across failover"):

  - an answer the SP gave is delivered, except the two that say it did
    nothing: 421 (it does not hold the stamped epoch) and a service-mode
    503 (it is unhealthy; the token is about to move);
  - a request that provably never reached the SP is sent again, whatever
    its method;
  - a request that may have reached the SP is sent again only if its
    method is idempotent; otherwise its outcome is unknown (502);
  - all of this only until the client's hold deadline (C{failover_wait}
    after it arrived); then 503 with C{Retry-After}, or the last
    service-mode answer, which names the routes that remain.

Twisted's connection pool retries on its own; the proxy turns that off so
this table is the only place a request is sent twice.
"""

from __future__ import annotations

import enum

from attrs import frozen

#: Methods a client may expect to be sent more than once (RFC 9110 §9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

#: Backoff before the n-th retry to the same route: the first is at once,
#: then it doubles from FIRST_BACKOFF up to MAX_BACKOFF.  A token move ends
#: the wait early (the router wakes every waiter).
FIRST_BACKOFF = 0.005
MAX_BACKOFF = 0.25


class Outcome(enum.Enum):
    """What became of one attempt to send a request to an SP."""

    #: The SP answered (anything but the two below).
    ANSWERED = "answered"
    #: 421: the SP does not hold the epoch the request was stamped with.
    MISDIRECTED = "misdirected"
    #: 503 from the service-mode web server: the SP is unhealthy.
    SERVICE_MODE = "service_mode"
    #: The request provably never left the proxy (no connection, or the
    #: connection was gone before the first byte was written).
    NOT_SENT = "not_sent"
    #: The request may have reached the SP, and no whole answer came back
    #: (connection lost, deadline passed, the token moved away meanwhile).
    LOST = "lost"


class Action(enum.Enum):
    DELIVER = "deliver"
    RETRY = "retry"
    #: 502 problem+json: the request may or may not have been carried out.
    OUTCOME_UNKNOWN = "outcome_unknown"
    #: 503 problem+json with Retry-After: no SP could serve it in time.
    UNAVAILABLE = "unavailable"


@frozen
class Decision:
    action: Action
    #: For RETRY: seconds to wait first (or until the token moves).
    delay: float = 0.0


def backoff(retries: int) -> float:
    """The wait before retry number C{retries} (1 is the first retry)."""
    if retries <= 1:
        return 0.0
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (retries - 2))


def decide(method: bytes, outcome: Outcome, retries: int, now: float, deadline: float) -> Decision:
    """
    What to do after an attempt of a C{method} request ended in C{outcome}.

    @param retries: how many times the request was already sent again.
    @param now: the time (any monotonic clock, as C{deadline}).
    @param deadline: until when the client may be held.
    """
    if outcome is Outcome.ANSWERED:
        return Decision(Action.DELIVER)
    if outcome is Outcome.LOST and method not in IDEMPOTENT:
        return Decision(Action.OUTCOME_UNKNOWN)
    delay = backoff(retries + 1)
    if now + delay >= deadline:
        if outcome is Outcome.SERVICE_MODE:
            return Decision(Action.DELIVER)
        return Decision(Action.UNAVAILABLE)
    return Decision(Action.RETRY, delay)
