# -*- test-case-name: tests.test_agent -*-
"""
Built-in facts about this SP's host and process, for its status.  Each read
is a small procfs or statvfs call; a fact that cannot be read is reported as
L{None} rather than failing the whole status.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def _meminfo() -> dict[str, int] | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0]) * 1024
    return {
        "total_bytes": values.get("MemTotal"),
        "available_bytes": values.get("MemAvailable"),
    }


def _systemUptime() -> float | None:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _diskFree(path: Path) -> dict[str, Any] | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return {
        "path": str(path),
        "free_bytes": st.f_bavail * st.f_frsize,
        "total_bytes": st.f_blocks * st.f_frsize,
    }


def hostFacts(stateDir: Path, processUptime: float) -> dict[str, Any]:
    """Facts about the host and this process."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "uptime_s": round(processUptime, 3),
        "system_uptime_s": _systemUptime(),
        "load": load,
        "memory": _meminfo(),
        "disk": _diskFree(stateDir),
    }
