# -*- test-case-name: tests.test_harness -*-
"""
JSON-lines logging for twistd: C{twistd --logger spmgmt.logs.jsonLines ...}.

twistd calls the factory with no arguments, so the destination comes from
the environment: C{SPMGMT_JSON_LOG} names a file to append to; without it
the events go to standard output (the journal, under systemd).  Each event
is one JSON object per line, with no record-separator byte, so C{jq} and
log shippers read it as is.
"""

from __future__ import annotations

import os
import sys
from typing import IO

from twisted.logger import ILogObserver, jsonFileLogObserver


def jsonLines() -> ILogObserver:
    """A log observer writing one JSON object per line."""
    path = os.environ.get("SPMGMT_JSON_LOG")
    output: IO[str] = open(path, "a", encoding="utf-8") if path else sys.stdout
    return jsonFileLogObserver(output, recordSeparator="")
