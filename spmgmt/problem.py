# -*- test-case-name: tests.test_web -*-
"""
RFC 9457 problem details: the one shape every HTTP error of spmgmt takes.

Handlers raise L{Problem}; the web layer renders it.  Nothing else writes an
error body, so no traceback, path or HTML can reach a client by accident.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

CONTENT_TYPE = b"application/problem+json"


class Problem(Exception):
    """
    An HTTP error answer.

    @ivar status: the HTTP status code.
    @ivar detail: one sentence for the human reading it.
    @ivar extra: further members of the problem object (plain JSON values).
    @ivar headers: extra response headers, e.g. C{WWW-Authenticate}.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[bytes, bytes] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def asJSON(self, instance: str | None = None) -> dict[str, Any]:
        """The problem object."""
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def render(self, request: Any) -> bytes:
        """Set status and headers on C{request} and return the body."""
        # Twisted knows no phrase for 421, 422 or 429 ("Unknown Status").
        request.setResponseCode(self.status, reasonPhrase(self.status))
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        for name, value in self.headers.items():
            request.setHeader(name, value)
        instance = request.path.decode("utf-8", "replace") if getattr(request, "path", None) else None
        return json.dumps(self.asJSON(instance)).encode("utf-8")


def reasonPhrase(status: int) -> bytes | None:
    """The RFC 9110 reason phrase of C{status}, if it has one."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return None
