# -*- test-case-name: tests.test_harness -*-
"""
JSON-lines logging for twistd: C{twistd --logger spmgmt.logs.jsonLines ...}.

twistd calls the factory with no arguments, so the destination comes from
the environment: C{SPMGMT_JSON_LOG} names a file to append to; without it
the events go to standard output (the journal, under systemd).

Each event is one JSON object on one line, with a fixed core that log
shippers and C{jq} can rely on (documented in docs/deploy.md):

  - C{time}: ISO 8601 UTC with milliseconds;
  - C{level}: debug, info, warn, error, critical;
  - C{namespace}: the module (logger) that logged it;
  - C{message}: the event's text, formatted;
  - C{traceback}: for a logged failure;

and then the event's own fields (e.g. C{sp}, C{epoch}, C{event}) whose
values are JSON, unchanged.  Twisted's internal C{log_*} keys are left out.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent

#: Keys of legacy (twisted.python.log) events that repeat the core fields.
_LEGACY = frozenset({"message", "time", "system", "isError", "format", "why", "failure"})


def _line(event: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(event.get("log_time", 0.0), datetime.timezone.utc)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY or key in record:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        record[key] = value
    return json.dumps(record, default=str) + "\n"


def jsonLines() -> ILogObserver:
    """A log observer writing one JSON object per line."""
    path = os.environ.get("SPMGMT_JSON_LOG")
    output: IO[str] = open(path, "a", encoding="utf-8") if path else sys.stdout
    return FileLogObserver(output, _line)
