# -*- test-case-name: tests.test_peer -*-
"""
The SP's refusals (unknown command, bad parameters, service mode, not
active, stale epoch) as plain data, and the HTTP problem for each.

A refusal made here and one relayed from a peer over PB take the same
path to the client, so the same rule answers the same way on every SP.
"""

from __future__ import annotations

from typing import Any

from spmgmt.commands import InvalidParameters, UnknownCommand
from spmgmt.problem import Problem
from spmgmt.sp.agent import SERVICE, Busy, NotInServiceMode, RequiresActive, StaleEpoch


def _error(kind: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "detail": detail, **extra}


def refusal(e: BaseException) -> dict[str, Any] | None:
    """The refusal C{e} stands for, as plain data; L{None} if it is none."""
    if isinstance(e, UnknownCommand):
        return _error("unknown_command", f"There is no command {e.name!r}.", command=e.name)
    if isinstance(e, InvalidParameters):
        return _error("invalid_parameters", "The parameters are not valid.", problems=e.problems)
    if isinstance(e, NotInServiceMode):
        return _error(
            "not_in_service_mode",
            f"The SP is in service mode; {e.name!r} is not a service command.",
            command=e.name,
        )
    if isinstance(e, RequiresActive):
        return _error("requires_active", f"{e.name!r} runs only on the active SP.", command=e.name)
    if isinstance(e, StaleEpoch):
        return _error("stale_epoch", str(e), epoch=e.epoch, newest=e.newest)
    if isinstance(e, Busy):
        return _error("busy", "Too many commands are running here; retry shortly.")
    return None


_STATUS = {
    "unknown_command": 404,
    "invalid_parameters": 422,
    "not_in_service_mode": 503,
    "requires_active": 409,
    "stale_epoch": 409,
    "busy": 503,
}


def problemFor(error: dict[str, Any], serviceRoutes: list[str], **context: Any) -> Problem:
    """
    The HTTP problem for a refusal.  Kinds this SP does not know (a newer
    peer, a reply too large) are a bad gateway, never a 500.
    """
    kind = str(error.get("kind", "unknown"))
    detail = str(error.get("detail", "The SP refused."))
    extra = {k: v for k, v in error.items() if k not in ("kind", "detail")}
    extra.update(context)
    status = _STATUS.get(kind, 502)
    if kind == "not_in_service_mode":
        return Problem(status, detail, title="Service mode", mode=SERVICE, routes=serviceRoutes, **extra)
    return Problem(status, detail, refusal=kind, **extra)
