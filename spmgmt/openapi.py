# -*- test-case-name: tests.test_openapi -*-
"""
The OpenAPI 3.1 description of the management API.

The description itself is the data file C{openapi.json} beside this
module, written by hand: every route of L{spmgmt.sp.web.ROUTES} is one
operation there, with its role (C{x-spmgmt-role}) and whether the
service-mode web server keeps it (C{x-spmgmt-service-mode});
C{tests.test_openapi} checks the two against each other, so a route cannot
be added without being described.  Every SP serves the file as it is at
C{GET /api/v1/openapi.json}.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib.resources import files
from typing import Any

_PARAM = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")


@lru_cache(maxsize=1)
def documentBytes() -> bytes:
    """The description, as the bytes served."""
    return files("spmgmt").joinpath("openapi.json").read_bytes()


def document() -> dict[str, Any]:
    """The description, parsed (a new copy each time)."""
    return json.loads(documentBytes())  # type: ignore[no-any-return]


def openapiPath(route: str) -> str:
    """A Klein/werkzeug route path in OpenAPI's form: C{<sp>} becomes C{{sp}}."""
    return _PARAM.sub(r"{\1}", route)
