# -*- test-case-name: tests.test_clock -*-
"""
Run the reactor's timers on the monotonic clock.

Twisted schedules C{callLater} on C{reactor.seconds()}, which is the wall
clock (C{time.time}).  A wall-clock step of an hour back would stall every
timer for an hour: heartbeats stop, the arbiter's tick stops, and the
token moves for no reason (RELIABILITY C1, Twisted issue #2424).  Making
C{reactor.seconds} monotonic before anything is scheduled removes that.
The one wall-clock use inside twisted.web, the access log's date, is
handled by L{spmgmt.sp.web.SPSite}.
"""

from __future__ import annotations

import time
from typing import Any


class AlreadyScheduled(Exception):
    """Timers exist already: switching clocks would misplace them."""


def useMonotonicTime(reactor: Any) -> None:
    """
    Make C{reactor} schedule on C{time.monotonic}.

    @raise AlreadyScheduled: if any delayed call is pending.
    """
    if reactor.seconds is time.monotonic:
        return
    pending = reactor.getDelayedCalls()
    if pending:
        raise AlreadyScheduled(f"{len(pending)} delayed calls are already scheduled")
    reactor.seconds = time.monotonic
