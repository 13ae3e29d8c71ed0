# -*- test-case-name: tests.test_proxy_headers -*-
"""
Re-framing: the headers the proxy sends to an SP and back to the client.

The proxy never relays a client's bytes: it builds a new request with its
own framing (Twisted's client writes C{Content-Length}), keeping only
end-to-end headers the client may set (threat H12 of RELIABILITY.md).
"""

from __future__ import annotations

import ipaddress
import re
import uuid

from twisted.web.http_headers import Headers

#: RFC 9110 §7.6.1, plus the old proxy ones still seen in the wild.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

#: Set by the proxy itself, never taken from the client.
_OURS = frozenset({b"host", b"content-length", b"expect", b"forwarded", b"x-request-id", b"last-event-id"})
_SPOOFABLE_PREFIXES = (b"x-spmgmt-", b"x-forwarded-")

_REQUEST_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
_HOST = re.compile(rb"[A-Za-z0-9.:\[\]-]{1,255}")


class BadRequestId(ValueError):
    """The client's X-Request-Id is too long or has characters we refuse."""


def requestId(headers: Headers) -> bytes:
    """
    The client's C{X-Request-Id} if it is acceptable (1-128 characters:
    letters, digits and C{._:@/+=-}), else a new one.

    @raise BadRequestId: the client sent one we refuse (or several).
    """
    values = headers.getRawHeaders(b"x-request-id")
    if not values:
        return uuid.uuid4().hex.encode("ascii")
    if len(values) > 1 or not _REQUEST_ID.fullmatch(values[0]):
        raise BadRequestId("X-Request-Id must be 1-128 letters, digits or ._:@/+=- (one header)")
    return values[0]


def _connectionNamed(headers: Headers) -> set[bytes]:
    named = set()
    for value in headers.getRawHeaders(b"connection", []):
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                named.add(token)
    return named


def _endToEnd(headers: Headers, drop: frozenset[bytes]) -> list[tuple[bytes, list[bytes]]]:
    named = _connectionNamed(headers)
    kept = []
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower in drop or lower.startswith(_SPOOFABLE_PREFIXES):
            continue
        kept.append((name, values))
    return kept


def forwarded(client: str | None, proto: str, host: bytes | None) -> bytes:
    """An RFC 7239 C{Forwarded} element for the client at C{client}."""
    parts = []
    if client is not None:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            parts.append(b"for=unknown")
        else:
            node = f'"[{address}]"' if address.version == 6 else str(address)
            parts.append(b"for=" + node.encode("ascii"))
    if host is not None and _HOST.fullmatch(host):
        parts.append(b'host="' + host + b'"')
    parts.append(b"proto=" + proto.encode("ascii"))
    return b";".join(parts)


def upstreamHeaders(
    client: Headers, requestId: bytes, epoch: int, forwardedFor: bytes, lastEventId: bytes | None = None
) -> Headers:
    """
    The headers of the request the proxy sends to the active SP: the
    client's end-to-end headers, minus anything spoofable, plus the
    request id, the epoch stamp and C{Forwarded}.
    """
    headers = Headers()
    for name, values in _endToEnd(client, _OURS):
        headers.setRawHeaders(name, values)
    headers.setRawHeaders(b"x-request-id", [requestId])
    headers.setRawHeaders(b"x-spmgmt-epoch", [str(epoch).encode("ascii")])
    headers.setRawHeaders(b"forwarded", [forwardedFor])
    if lastEventId is not None:
        headers.setRawHeaders(b"last-event-id", [lastEventId])
    return headers


#: Response headers the proxy sets itself.
_RESPONSE_OURS = frozenset({b"content-length", b"x-request-id"})


def responseHeaders(upstream: Headers) -> list[tuple[bytes, list[bytes]]]:
    """The SP's end-to-end response headers, for the client."""
    return _endToEnd(upstream, _RESPONSE_OURS)
