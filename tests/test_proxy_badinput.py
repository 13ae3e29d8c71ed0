# -*- test-case-name: tests.test_proxy_badinput -*-
"""
Bad input through the front proxy (issue 5; RELIABILITY.md H1-H15, T1, T3,
F22): each case gets a 4xx or a close, no SP ever sees a header the client
forged, and the proxy keeps serving other clients.

Two halves:

  - L{ProxyBadInputTests}: a real array (the proxy process and one SP, real
    C{twistd} processes on 127.0.0.1) probed with raw bytes over plain TCP
    and TLS from blocking sockets in a thread.  That the SP never saw a
    forged C{X-SPMgmt-Epoch} is shown by the SP itself: it fences stamped
    requests (421 unless it holds exactly that epoch; 400 if malformed), so
    a forged stamp that still gets 200 was replaced by the proxy's.
  - L{ReframingTests}: the proxy's front end (L{ProxySite}, L{Proxy},
    L{Backends}, a L{Router} set by hand) in this process, in front of a
    recording fake SP with the array's TLS: the exact headers the SP
    received, and exactly one upstream request per client request (none
    for a refused one).
"""

from __future__ import annotations

import base64
import re
import select
import socket
import ssl
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import attrs
from attrs import define
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from spmgmt.auth import portalFromConfig
from spmgmt.config import Address
from spmgmt.httpserver import GuardedChannel
from spmgmt.metrics import ProxyMetrics
from spmgmt.proxy.backend import Backends
from spmgmt.proxy.frontend import Proxy, ProxySite
from spmgmt.proxy.router import Router
from spmgmt.testing import ArrayHarness, ArrayTestMixin, temporaryDirectory
from spmgmt.tls import serverOptions, tlsServerFactory

#: Slack on top of a deadline, for a loaded machine.
MARGIN = 2.5


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


# -- a raw HTTP client: blocking sockets, run in a thread -----------------------


@define
class Exchange:
    """What one raw connection saw."""

    data: bytes = b""
    #: The server closed the connection (FIN, reset, or a TLS alert).
    closed: bool = False
    #: Seconds from the first byte sent to a complete answer, or the close.
    elapsed: float = 0.0
    #: Bytes written before the server answered or the writes failed.
    sent: int = 0
    #: Why the connection or the TLS handshake failed, if it did.
    error: str = ""
    alpn: str | None = None
    version: str | None = None

    @property
    def final(self) -> bytes:
        """The data after any interim (1xx) answers."""
        data = self.data
        while re.match(rb"HTTP/1\.[01] 1\d\d ", data) and b"\r\n\r\n" in data:
            data = data.split(b"\r\n\r\n", 1)[1]
        return data

    @property
    def head(self) -> bytes:
        return self.final.split(b"\r\n\r\n", 1)[0]

    @property
    def status(self) -> int | None:
        match = re.match(rb"HTTP/1\.[01] (\d{3})", self.final)
        return int(match.group(1)) if match else None

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def body(self) -> bytes:
        parts = self.final.split(b"\r\n\r\n", 1)
        return parts[1] if len(parts) == 2 else b""

    @property
    def complete(self) -> bool:
        """A whole final response with a C{Content-Length} arrived."""
        if self.status is None or b"\r\n\r\n" not in self.final:
            return False
        length = self.header(b"content-length")
        return length is not None and len(self.body) >= int(length)

    def __str__(self) -> str:
        shown = self.data[:300] + (b"..." if len(self.data) > 300 else b"")
        return (
            f"status={self.status} closed={self.closed} elapsed={self.elapsed:.2f}s "
            f"sent={self.sent} error={self.error!r} data={shown!r}"
        )


class RawConnection:
    """One client connection, plain or TLS; every method blocks."""

    def __init__(self, address: Address, context: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
        self.exchange = Exchange()
        self._timeout = timeout
        self.sock: Any = socket.create_connection((address.host, address.port), timeout=timeout)
        if context is not None:
            try:
                self.sock = context.wrap_socket(self.sock, server_hostname="proxy")
            except (ssl.SSLError, OSError) as e:
                self.exchange.error = f"{type(e).__name__}: {e}"
                self.exchange.closed = True
                self.sock.close()
                return
            self.exchange.alpn = self.sock.selected_alpn_protocol()
            self.exchange.version = self.sock.version()

    @property
    def ok(self) -> bool:
        return not self.exchange.error

    def _answered(self, wait: float) -> bool:
        """
        Whether the server answered (or closed) within C{wait} seconds;
        what it sent is kept.  TLS records of its own (session tickets)
        are no answer.
        """
        deadline = time.monotonic() + wait
        while True:
            if not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                readable, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
                if not readable:
                    return False
            self.sock.setblocking(False)
            try:
                chunk = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                if time.monotonic() >= deadline:
                    return False
                continue
            except (ssl.SSLError, OSError):
                self.exchange.closed = True
                return True
            finally:
                self.sock.settimeout(self._timeout)
            if chunk:
                self.exchange.data += chunk
            else:
                self.exchange.closed = True
            return True

    def send(self, pieces: Sequence[bytes], gap: float = 0.0) -> None:
        """
        Write C{pieces}, C{gap} seconds apart, until all are written, the
        server answers, or a write fails.
        """
        for i, piece in enumerate(pieces):
            if i and gap and self._answered(gap):
                return
            try:
                self.sock.sendall(piece)
            except OSError:
                return
            self.exchange.sent += len(piece)

    def read(self, wait: float, linger: float = 0.0) -> Exchange:
        """
        Read until a whole response arrived (then up to C{linger} more
        seconds for the close), the server closes, or C{wait} seconds pass.
        """
        ex = self.exchange
        start = time.monotonic()
        deadline = start + wait
        completeAt: float | None = start if ex.complete else None
        while not ex.closed:
            limit = deadline if completeAt is None else min(deadline, completeAt + linger)
            left = limit - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            except (ssl.SSLError, OSError):
                ex.closed = True
                break
            if not chunk:
                ex.closed = True
                break
            ex.data += chunk
            if completeAt is None and ex.complete:
                completeAt = time.monotonic()
        return ex

    def request(self, data: bytes, wait: float = 10.0) -> Exchange:
        """One more request on this connection: its own L{Exchange}."""
        self.exchange = Exchange()
        start = time.monotonic()
        self.send([data])
        ex = self.read(wait)
        ex.elapsed = time.monotonic() - start
        return ex

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _talk(
    address: Address,
    pieces: Sequence[bytes],
    context: ssl.SSLContext | None,
    gap: float,
    wait: float,
    linger: float,
) -> Exchange:
    connection = RawConnection(address, context)
    if not connection.ok:
        return connection.exchange
    try:
        start = time.monotonic()
        connection.send(pieces, gap)
        ex = connection.read(wait, linger)
        ex.elapsed = time.monotonic() - start
        return ex
    finally:
        connection.close()


def talk(
    address: Address,
    data: bytes | Sequence[bytes],
    context: ssl.SSLContext | None = None,
    gap: float = 0.0,
    wait: float = 10.0,
    linger: float = 0.0,
) -> Deferred[Exchange]:
    """
    Send C{data} (or its pieces, C{gap} seconds apart) on a new connection
    and read the answer; see L{RawConnection.read}.
    """
    pieces = [data] if isinstance(data, bytes) else list(data)
    return deferToThread(_talk, address, pieces, context, gap, wait, linger)


def _upload(address: Address, context: ssl.SSLContext | None, head: bytes, total: int, wait: float) -> Exchange:
    """
    Send C{head} and then up to C{total} bytes of chunked body as fast as
    the server takes them; stop at its first answer or a failed write.
    """
    connection = RawConnection(address, context, timeout=wait)
    if not connection.ok:
        return connection.exchange
    chunk = b"x" * 65536
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    start = time.monotonic()
    try:
        connection.send([head])
        ex = connection.exchange
        body = 0
        while body < total and time.monotonic() - start < wait:
            if connection._answered(0):
                break
            try:
                connection.sock.sendall(framed)
            except OSError:  # reset, broken pipe, or a write timeout
                break
            ex.sent += len(framed)
            body += len(chunk)
        connection.read(wait, linger=wait)
        ex.elapsed = time.monotonic() - start
        return ex
    finally:
        connection.close()


def upload(
    address: Address, context: ssl.SSLContext | None, head: bytes, total: int, wait: float = 20.0
) -> Deferred[Exchange]:
    return deferToThread(_upload, address, context, head, total, wait)


def tlsContext(ca: Path, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
    """A TLS client that trusts the array CA and expects the proxy's name."""
    context = ssl.create_default_context(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def requestBytes(
    target: bytes = b"/healthz",
    headers: Sequence[tuple[bytes, bytes]] = (),
    method: bytes = b"GET",
    body: bytes = b"",
    host: bytes = b"127.0.0.1",
) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: " + host]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- corpora ---------------------------------------------------------------------

_POST = b"POST /api/v1/sps/spa/commands/uptime HTTP/1.1\r\nHost: 127.0.0.1\r\n"
_SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
_CHUNKED = _POST + b"Transfer-Encoding: chunked\r\n\r\n"

#: Framing a parser must refuse (400 or close): H1, H2, H3.  Each carries a
#: smuggled request after it, which must never reach an SP either.
BAD_FRAMING: dict[str, bytes] = {
    # H1: Content-Length and Transfer-Encoding; two lengths; odd codings.
    "H1 CL+TE": _POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    "H1 TE+CL": _POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    "H1 two CLs": _POST + b"Content-Length: 5\r\nContent-Length: 44\r\n\r\nhello" + _SMUGGLED,
    "H1 CL list": _POST + b"Content-Length: 5, 44\r\n\r\nhello" + _SMUGGLED,
    "H1 TE chunked, chunked": _POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    "H1 TE gzip, chunked": _POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    "H1 TE chunked then gzip": _POST
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n"
    + _SMUGGLED,
    "H1 TE xchunked": _POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    "H1 TE identity": _POST + b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello" + _SMUGGLED,
    "H1 TE with a space before the colon": _POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    "H1 TE chunked and a vertical tab": _POST + b"Transfer-Encoding:\tchunked\x0b\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    # H2: lenient numbers and whitespace.
    "H2 CL +5": _POST + b"Content-Length: +5\r\n\r\nhello" + _SMUGGLED,
    "H2 CL -1": _POST + b"Content-Length: -1\r\n\r\n" + _SMUGGLED,
    "H2 CL 0x5": _POST + b"Content-Length: 0x5\r\n\r\nhello" + _SMUGGLED,
    "H2 CL 5 with junk": _POST + b"Content-Length: 5 5\r\n\r\nhello" + _SMUGGLED,
    "H2 chunk size 0x5": _CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n" + _SMUGGLED,
    "H2 chunk size +5": _CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n" + _SMUGGLED,
    "H2 chunk size -0": _CHUNKED + b"-0\r\n\r\n" + _SMUGGLED,
    "H2 space before a colon": _POST + b"Content-Length : 5\r\n\r\nhello" + _SMUGGLED,
    "H2 NUL in a value": _POST + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n" + _SMUGGLED,
    "H2 bare CR in a value": _POST + b"X-A: a\rTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    # H3: funky chunks.
    "H3 bare LF after the chunk size": _CHUNKED + b"5\nhello\r\n0\r\n\r\n" + _SMUGGLED,
    "H3 bare LF in an extension": _CHUNKED + b"5;a=b\nc\r\nhello\r\n0\r\n\r\n" + _SMUGGLED,
    "H3 bare CR in an extension": _CHUNKED + b"5;a\rb\r\nhello\r\n0\r\n\r\n" + _SMUGGLED,
    "H3 CRLF in a quoted extension": _POST
    + b'Transfer-Encoding: chunked\r\n\r\n5;a="b\r\n0\r\n\r\n' + _SMUGGLED + b'"\r\nhello\r\n0\r\n\r\n',
    "H3 bare LF after the data": _CHUNKED + b"5\r\nhello\n0\r\n\r\n" + _SMUGGLED,
    "H3 data longer than its size": _CHUNKED + b"2\r\nhello\r\n0\r\n\r\n" + _SMUGGLED,
    "H3 bare LF ending the last chunk": _CHUNKED + b"0\n\n" + _SMUGGLED,
    "H3 2 kB chunk size line": _CHUNKED + b"0" * 2000 + b"5\r\nhello\r\n0\r\n\r\n",
    # Request lines and header blocks a lenient parser might accept.
    "bare-LF request with a smuggled one": b"GET /healthz HTTP/1.1\nHost: x\n\n" + _SMUGGLED,
    "header line starting with a space": b"GET /healthz HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n\r\n"
    + _SMUGGLED,
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "HTTP/0.9 request": b"GET /healthz\r\n\r\n",
    "HTTP/1.2": b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n",
    "NUL in the method": b"G\x00T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
}


def _targets() -> dict[str, bytes]:
    """H11: odd request targets, each byte value among them."""
    cases = {
        "absolute-form http": b"http://127.0.0.1/healthz",
        "absolute-form https to an SP": b"https://spa/api/v1/sps/spa/health",
        "authority-form": b"127.0.0.1:443",
        "asterisk-form": b"*",
        "empty-looking": b"?x",
        "percent-encoded CRLF": b"/api/v1/sps/spa/health%0d%0aX-SPMgmt-Epoch:%20999999",
        "backslashes and quotes": b'/a\\b{}|^`"<>',
        "double slash": b"//evil.example/x",
        "fragment": b"/#@evil.example/x",
        "10 kB path": b"/" + b"a" * 10_000,
    }
    for byte in list(range(0, 0x21)) + [0x7F, 0x80, 0xC3, 0xFF]:
        cases[f"byte {byte:#04x} in the target"] = b"/api/v1/sps/spa/he" + bytes([byte]) + b"alth"
    return cases


TARGETS = _targets()


class ProxyBadInputTests(ArrayTestMixin, TestCase):
    """Raw bytes from hostile clients at the real proxy process."""

    timeout = 120

    async def startProxy(self, proxyExtra: str = "", **kwargs: Any) -> ArrayHarness:
        extra = "failover_wait = 3.0\n" + proxyExtra
        array = await self.startArray(spIds=("spa",), arbiter=True, proxyExtra=extra, **kwargs)
        self.array = array
        self.token = await array.waitHolder("proxy", "spa")
        assert array.config.proxy is not None and array.config.proxy.plain is not None
        self.plain = array.config.proxy.plain
        self.tls = array.config.proxy.tls
        self.context = tlsContext(array.config.ca)
        credentials = base64.b64encode(f"admin:{array.passwords['admin']}".encode())
        self.auth = (b"Authorization", b"Basic " + credentials)
        return array

    def health(self, *headers: tuple[bytes, bytes], auth: bool = True) -> bytes:
        """An authenticated, stamped-route request whose answer is 200."""
        allHeaders = ([self.auth] if auth else []) + list(headers)
        return requestBytes(b"/api/v1/sps/spa/health", allHeaders)

    async def assertServing(self, case: str) -> None:
        """Another client, over each listener, still gets a normal answer."""
        response = await self.array.request("proxy", "GET", "/api/v1/sps/spa/health")
        self.assertEqual(response.code, 200, f"after {case}: TLS client got {response.code}: {response.body!r}")
        self.assertEqual(response.header("X-SPMgmt-Served-By"), "spa", f"after {case}")
        plain = await talk(self.plain, self.health((b"Connection", b"close")))
        self.assertEqual(plain.status, 200, f"after {case}: plain client: {plain}")

    def assertRefused(self, ex: Exchange, case: str, statuses: Sequence[int] = range(400, 500)) -> None:
        """A 4xx answer, or a close with no answer; never anything else."""
        if ex.status is None:
            self.assertTrue(ex.closed, f"{case}: no answer and not closed: {ex}")
            self.assertEqual(ex.data, b"", f"{case}: garbage instead of an answer: {ex}")
        else:
            self.assertIn(ex.status, statuses, f"{case}: {ex}")

    def assertNoSmuggled(self, ex: Exchange, case: str) -> None:
        """At most one answer came back: the smuggled request was not served."""
        self.assertLessEqual(ex.final.count(b"HTTP/1.1 "), 1, f"{case}: two answers: {ex}")
        self.assertNotIn(b"smuggled", ex.data, f"{case}: {ex}")

    # -- H1-H3 ---------------------------------------------------------------------

    async def test_framing(self) -> None:
        """
        H1-H3: every ambiguous or lenient framing gets a 400 (or a close),
        the request smuggled behind it is never answered, over plain TCP and
        TLS; the proxy then still serves others.
        """
        await self.startProxy(proxyExtra="read_timeout = 2.0\n")
        for case, data in BAD_FRAMING.items():
            for listener, context in (("plain", None), ("tls", self.context)):
                address = self.plain if listener == "plain" else self.tls
                ex = await talk(address, data, context, wait=2.0 + MARGIN, linger=MARGIN)
                label = f"{case} ({listener})"
                self.assertRefused(ex, label)
                self.assertNoSmuggled(ex, label)
                if ex.status is not None and ex.status != 408:
                    self.assertTrue(ex.closed, f"{label}: answered {ex.status} but kept the connection: {ex}")
        await self.assertServing("the framing corpus")

        # A well-framed chunked body with a request inside it is one request.
        body = b"0\r\n\r\n" + _SMUGGLED
        data = (
            b"POST /api/v1/sps/spa/commands/uptime HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + self.auth[0] + b": " + self.auth[1]
            + b"\r\nContent-Type: application/json\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
        )
        ex = await talk(self.plain, data)
        self.assertEqual(ex.status, 400, f"the body is not JSON, so the SP refuses it: {ex}")
        self.assertEqual(ex.header(b"X-SPMgmt-Served-By"), b"spa", str(ex))
        self.assertNoSmuggled(ex, "a request inside a chunk")
        await self.assertServing("a request inside a chunk")

    # -- H5, H6, H12 (request id) -------------------------------------------------

    async def test_oversized(self) -> None:
        """
        H5/H6: a too-long header line or header block, too many headers, a
        10 kB or invalid X-Request-Id, and bodies over the limit (declared,
        or 1 GB chunked) get 4xx or a close, the body is not read, and the
        proxy keeps serving.
        """
        await self.startProxy(proxyExtra="max_header_bytes = 12288\n")
        kilobyte = b"k" * 1000
        cases: dict[str, tuple[bytes, Sequence[int]]] = {
            "a 20 000-byte header line": (self.health((b"X-Big", b"b" * 20_000)), (400, 431)),
            "13 headers of 1000 bytes (max_header_bytes 12288)": (
                self.health(*[(b"X-Big-%d" % i, kilobyte) for i in range(13)]),
                (400, 431),
            ),
            "501 headers": (self.health(*[(b"X-N-%d" % i, b"n") for i in range(501)]), (400, 431)),
            "a 10 kB X-Request-Id": (self.health((b"X-Request-Id", b"r" * 10_240)), (400,)),
            "a 129-character X-Request-Id": (self.health((b"X-Request-Id", b"r" * 129)), (400,)),
            "an X-Request-Id with a space": (self.health((b"X-Request-Id", b"a b")), (400,)),
            "an X-Request-Id with markup": (self.health((b"X-Request-Id", b"<script>")), (400,)),
            "a request id with a NUL (refused by the parser)": (self.health((b"X-Request-Id", b"a\x00b")), (400,)),
            "an X-Request-Id with UTF-8": (self.health((b"X-Request-Id", "\u00e9t\u00e9".encode())), (400,)),
            "an empty X-Request-Id": (self.health((b"X-Request-Id", b"")), (400,)),
            "two X-Request-Ids": (self.health((b"X-Request-Id", b"a"), (b"X-Request-Id", b"b")), (400,)),
            "a 10 000-byte method": (requestBytes(b"/api/v1/sps/spa/health", method=b"G" * 10_000), (400, 405, 501)),
        }
        for case, (data, statuses) in cases.items():
            ex = await talk(self.plain, data, wait=5.0)
            self.assertRefused(ex, case, statuses)
            if "X-Request-Id" in case:
                self.assertIn(b"X-Request-Id", ex.body, f"{case}: refused for another reason: {ex}")
                self.assertIsNone(ex.header(b"X-SPMgmt-Served-By"), f"{case}: reached the SP: {ex}")
        await self.assertServing("oversized headers")

        # Within the limits: 11 kB of headers and a 128-character id pass.
        ex = await talk(
            self.plain,
            self.health(*[(b"X-Big-%d" % i, kilobyte) for i in range(11)], (b"X-Request-Id", b"r" * 128),
                        (b"Connection", b"close")),
        )
        self.assertEqual(ex.status, 200, str(ex))
        self.assertEqual(ex.header(b"X-Request-Id"), b"r" * 128, str(ex))

        gigabyte = 1 << 30
        declared = {
            "Content-Length: 1 GB": [(b"Content-Length", b"%d" % gigabyte)],
            "Content-Length: 1 GB with Expect: 100-continue": [
                (b"Content-Length", b"%d" % gigabyte),
                (b"Expect", b"100-continue"),
            ],
            "a 40-digit Content-Length": [(b"Content-Length", b"9" * 40)],
        }
        for case, headers in declared.items():
            for listener, address, context in (("plain", self.plain, None), ("tls", self.tls, self.context)):
                label = f"{case} ({listener})"
                data = requestBytes(b"/api/v1/sps/spa/commands/uptime", [self.auth, *headers], method=b"POST")
                ex = await talk(address, data, context, wait=5.0, linger=5.0)
                self.assertEqual(ex.status, 413, f"{label}: {ex}")
                self.assertTrue(ex.closed, f"{label}: kept open: {ex}")
                self.assertNotIn(b"100 Continue", ex.data, label)

        head = requestBytes(
            b"/api/v1/sps/spa/commands/uptime",
            [self.auth, (b"Transfer-Encoding", b"chunked")],
            method=b"POST",
        )
        for listener, address, context in (("plain", self.plain, None), ("tls", self.tls, self.context)):
            label = f"1 GB chunked body ({listener})"
            ex = await upload(address, context, head, gigabyte)
            self.assertEqual(ex.status, 413, f"{label}: {ex}")
            self.assertTrue(ex.closed, f"{label}: kept open: {ex}")
            # The limit is 1 MiB; socket buffers hold a few MB more.
            self.assertLess(ex.sent, 64 << 20, f"{label}: the proxy read on: {ex}")
            await self.assertServing(label)

    # -- H7, H10 -----------------------------------------------------------------------

    async def test_slowClients(self) -> None:
        """
        H7/H10: headers or a body dripped slower than read_timeout, a bare-LF
        request, a stalled or silent TLS handshake: 408 or a close within
        read_timeout (plus slack); meanwhile and afterwards others are
        served, and an idle keep-alive connection is not cut by the deadline.
        """
        readTimeout = 1.0
        await self.startProxy(proxyExtra=f"read_timeout = {readTimeout}\n")
        bound = readTimeout + MARGIN
        drip = [b"GET /api/v1/sps/spa/health HTTP/1.1\r\n"] + [b"X-Drip: %d\r\n" % i for i in range(40)]
        slowBody = [
            requestBytes(b"/api/v1/sps/spa/commands/uptime", [self.auth, (b"Content-Length", b"100")], b"POST")
        ] + [b"x"] * 40
        cases: dict[str, tuple[Address, ssl.SSLContext | None, list[bytes]]] = {
            "headers dripped (plain)": (self.plain, None, drip),
            "headers dripped (tls)": (self.tls, self.context, drip),
            "one byte at a time (plain)": (self.plain, None, [bytes([b]) for b in self.health()[:60]]),
            "body dripped (plain)": (self.plain, None, slowBody),
            "body dripped (tls)": (self.tls, self.context, slowBody),
            "bare-LF request (plain)": (self.plain, None, [b"GET /healthz HTTP/1.1\nHost: x\n\n"]),
            "bare-LF request (tls)": (self.tls, self.context, [b"GET /healthz HTTP/1.1\nHost: x\n\n"]),
            "a partial request behind an answered one (plain)": (
                self.plain, None, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nX-A: "]
            ),
            "a partial request behind a refused one (plain)": (
                self.plain, None, [b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nX-A: "]
            ),
            "a partial request line behind an answered one (tls)": (
                self.tls, self.context, [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /hea"]
            ),
            "a partial request behind a proxied one (plain)": (
                self.plain, None, [self.health() + b"GET /healthz HTTP/1.1\r\nX-A: "]
            ),
        }
        # All at once: each is timed in its own thread from its first byte.
        running = {
            case: talk(address, pieces, context, gap=0.25, wait=bound + 1.0, linger=bound)
            for case, (address, context, pieces) in cases.items()
        }
        # TLS handshakes that never finish are cut off too.
        handshakes = {"silent TLS client": b"", "half a ClientHello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"}
        stalled = {
            case: deferToThread(_silent, self.tls, greeting, bound + 2.0) for case, greeting in handshakes.items()
        }
        # Others are served while they drip.
        response = await self.array.request("proxy", "GET", "/api/v1/sps/spa/health")
        self.assertEqual(response.code, 200, "during the slow clients")

        for case, d in running.items():
            ex = await d
            self.assertTrue(ex.closed, f"{case}: still open after {ex.elapsed:.2f}s: {ex}")
            self.assertLessEqual(ex.elapsed, bound, f"{case}: {ex}")
            last = ex.data.rsplit(b"HTTP/1.1 ", 1)
            self.assertTrue(ex.data == b"" or last[-1].startswith(b"408 "), f"{case}: {ex}")
        for case, d in stalled.items():
            ex = await d
            self.assertTrue(ex.closed, f"{case}: still open: {ex}")
            self.assertLessEqual(ex.elapsed, bound, f"{case}: {ex}")
            self.assertEqual(ex.data, b"", f"{case}: {ex}")
        await self.assertServing("slow clients")

        # An idle keep-alive connection (no request started) outlives the
        # read deadline, on both listeners.
        async def idle(address: Address, context: ssl.SSLContext | None) -> tuple[Exchange, Exchange]:
            connection = await deferToThread(RawConnection, address, context)
            self.addCleanup(connection.close)
            first = await deferToThread(connection.request, self.health())
            await sleep(readTimeout + 0.5)
            second = await deferToThread(connection.request, self.health())
            return first, second

        idlers = {
            listener: Deferred.fromCoroutine(idle(address, context))
            for listener, address, context in (("plain", self.plain, None), ("tls", self.tls, self.context))
        }
        for listener, d in idlers.items():
            first, second = await d
            self.assertEqual(first.status, 200, f"{listener}: {first}")
            self.assertEqual(second.status, 200, f"{listener}: keep-alive connection cut: {second}")

    # -- H11 and the absolute form ----------------------------------------------------

    async def test_requestTargets(self) -> None:
        """
        H11: targets that are not origin-form get 400; control, space and
        non-ASCII bytes in the target get 400 (from the parser: they never
        reach Twisted's client, whose ValueError would otherwise be a 500);
        printable oddities are passed on as they are.  Never a 5xx.
        """
        await self.startProxy(proxyExtra="read_timeout = 2.0\n")
        for case, target in TARGETS.items():
            data = requestBytes(target, [self.auth, (b"Connection", b"close")])
            ex = await talk(self.plain, data, wait=2.0 + MARGIN)
            self.assertTrue(ex.status is None or ex.status < 500, f"{case}: {ex}")
            self.assertRefused(ex, case, statuses=range(400, 500))
            if case.endswith("-form") or case.startswith("asterisk"):
                self.assertEqual(ex.status, 400, f"{case}: {ex}")
                self.assertIn(b"origin-form", ex.body, f"{case}: {ex}")
        await self.assertServing("odd targets")

    # -- H12: forged and hop-by-hop headers -------------------------------------------

    async def test_forgedHeaders(self) -> None:
        """
        A forged X-SPMgmt-Epoch never reaches the SP, however it is sent: the
        SP, which fences stamped requests (421 for another epoch, 400 for a
        malformed one), answers 200 with the proxy's epoch.  A header the
        client names in Connection (even Authorization) is dropped.
        """
        await self.startProxy()
        epoch = str(self.token["epoch"]).encode()
        forged = {
            "a future epoch": [(b"X-SPMgmt-Epoch", b"999999")],
            "an old epoch": [(b"X-SPMgmt-Epoch", b"0")],
            "a malformed epoch": [(b"X-SPMgmt-Epoch", b"abc")],
            "a negative epoch": [(b"X-SPMgmt-Epoch", b"-1")],
            "two epochs": [(b"X-SPMgmt-Epoch", b"999999"), (b"X-SPMgmt-Epoch", epoch)],
            "lower case": [(b"x-spmgmt-epoch", b"999999")],
            "odd case": [(b"X-sPmGmT-ePoCh", b"999999")],
            "folded onto the next line": [(b"X-SPMgmt-Epoch", b"999999\r\n 1")],
            "named in Connection": [(b"Connection", b"close, X-SPMgmt-Epoch"), (b"X-SPMgmt-Epoch", b"999999")],
            "with forged proxy headers": [
                (b"X-SPMgmt-Epoch", b"999999"),
                (b"X-SPMgmt-Served-By", b"spb"),
                (b"X-SPMgmt-Mode", b"service"),
                (b"X-Forwarded-For", b"10.0.0.1"),
                (b"Forwarded", b"for=10.0.0.1;proto=https"),
            ],
        }
        for case, headers in forged.items():
            for listener, address, context in (("plain", self.plain, None), ("tls", self.tls, self.context)):
                label = f"{case} ({listener})"
                ex = await talk(address, self.health(*headers, (b"Connection", b"close")), context)
                self.assertEqual(ex.status, 200, f"{label}: the SP saw a forged stamp: {ex}")
                self.assertEqual(ex.header(b"X-SPMgmt-Epoch"), epoch, f"{label}: {ex}")
                self.assertEqual(ex.header(b"X-SPMgmt-Served-By"), b"spa", f"{label}: {ex}")
        await self.assertServing("forged stamps")

        # Who the client is cannot be forged either: without credentials a
        # principal header gets 401; a monitor claiming admin gets 403.
        credentials = base64.b64encode(f"monitor:{self.array.passwords['monitor']}".encode())
        monitor = (b"Authorization", b"Basic " + credentials)
        uptime = b"/api/v1/sps/spa/commands/uptime"
        claims = {
            "a principal header, no credentials": (
                requestBytes(b"/api/v1/sps/spa/health", [(b"X-SPMgmt-Principal", b"admin")]),
                401,
            ),
            "a principal header named in Connection": (
                requestBytes(
                    b"/api/v1/sps/spa/health",
                    [(b"Connection", b"X-SPMgmt-Principal"), (b"X-SPMgmt-Principal", b"admin")],
                ),
                401,
            ),
            "a monitor claiming admin": (
                requestBytes(uptime, [monitor, (b"X-SPMgmt-Principal", b"admin"),
                                      (b"Content-Type", b"application/json")], b"POST", b"{}"),
                403,
            ),
        }
        for case, (data, status) in claims.items():
            for listener, address, context in (("plain", self.plain, None), ("tls", self.tls, self.context)):
                ex = await talk(address, data, context)
                self.assertEqual(ex.status, status, f"{case} ({listener}): {ex}")

        # Hop-by-hop by nomination (RFC 9110 7.6.1): the SP never gets the
        # Authorization header (the proxy either drops it, 401, or checks
        # it itself and vouches for the user, 200); never a 5xx.
        for names in (b"authorization", b"Authorization, close", b"keep-alive, AUTHORIZATION"):
            ex = await talk(self.plain, self.health((b"Connection", names)))
            self.assertIn(ex.status, (200, 401), f"Connection: {names!r}: {ex}")
        await self.assertServing("Connection-named headers")

    # -- TLS: T1, T3/H15 -------------------------------------------------------------------

    async def test_tls(self) -> None:
        """
        T3/H15: an ALPN offer of h2 gets http/1.1 or no protocol, never h2;
        T1: TLS 1.0 and 1.1 are refused; F21: a client that does not trust
        the proxy or names another host fails; plain HTTP on the TLS port is
        refused.  The proxy keeps serving.
        """
        await self.startProxy()
        ca = self.array.config.ca
        offers = {
            "h2 only": ["h2"],
            "h2 then http/1.1": ["h2", "http/1.1"],
            "http/1.1 then h2": ["http/1.1", "h2"],
            "an unknown protocol": ["spdy/3"],
            "no ALPN": [],
        }
        for case, alpn in offers.items():
            context = tlsContext(ca, alpn)
            ex = await talk(self.tls, self.health((b"Connection", b"close")), context)
            self.assertNotEqual(ex.alpn, "h2", f"ALPN {case}: {ex}")
            if ex.error:
                # Twisted refuses a handshake offering no protocol it has.
                self.assertNotIn("http/1.1", alpn, f"ALPN {case}: refused: {ex}")
                continue
            self.assertIn(ex.alpn, (None, "http/1.1"), f"ALPN {case}")
            self.assertEqual(ex.status, 200, f"ALPN {case}: {ex}")
        await self.assertServing("ALPN offers")

        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.load_verify_locations(cafile=str(ca))
                context.minimum_version = version
                context.maximum_version = version
            try:
                context.set_ciphers("ALL:@SECLEVEL=0")
            except ssl.SSLError:
                raise SkipTest("this OpenSSL cannot offer TLS 1.0/1.1 at all")
            ex = await talk(self.tls, self.health(), context)
            if "NO_PROTOCOLS_AVAILABLE" in ex.error or "NO_SUITABLE" in ex.error.upper():
                raise SkipTest(f"this OpenSSL cannot offer {version.name}: {ex.error}")
            self.assertTrue(ex.error, f"{version.name} accepted: {ex}")
            self.assertTrue(
                any(why in ex.error for why in ("PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "WRONG_VERSION")),
                f"{version.name}: refused for another reason: {ex.error}",
            )
            self.assertIsNone(ex.status, f"{version.name}: {ex}")
        await self.assertServing("old TLS versions")

        other = temporaryDirectory(self)
        from spmgmt.pki import ensurePKI

        ensurePKI(other, ["proxy"])
        for case, context in {
            "a client trusting another CA": tlsContext(other / "ca.pem"),
            "plain HTTP on the TLS port": None,
        }.items():
            ex = await talk(self.tls, self.health(), context, wait=5.0)
            self.assertIsNone(ex.status, f"{case}: {ex}")
            self.assertTrue(ex.closed, f"{case}: {ex}")
        wrongName = tlsContext(ca)
        ex = await deferToThread(_handshakeAs, self.tls, wrongName, "spa")
        self.assertIn("CERTIFICATE_VERIFY_FAILED", ex.error, f"wrong host name: {ex}")
        await self.assertServing("bad TLS clients")

    # -- F22 -----------------------------------------------------------------------------

    async def test_connectionCap(self) -> None:
        """
        F22: with max_connections = 4, a fifth connection to a listener is
        closed at once without an answer, the four keep being served, the
        other listener is unaffected, and a slot freed is usable again.
        """
        cap = 4
        await self.startProxy(proxyExtra=f"max_connections = {cap}\n")
        held = []
        for i in range(cap):
            connection = await deferToThread(RawConnection, self.plain)
            self.addCleanup(connection.close)
            ex = await deferToThread(connection.request, self.health())
            self.assertEqual(ex.status, 200, f"connection {i}: {ex}")
            held.append(connection)

        for attempt in range(3):
            ex = await talk(self.plain, self.health(), wait=5.0)
            self.assertIsNone(ex.status, f"connection over the cap, attempt {attempt}: {ex}")
            self.assertTrue(ex.closed, f"connection over the cap, attempt {attempt}: {ex}")

        for i, connection in enumerate(held):
            ex = await deferToThread(connection.request, self.health())
            self.assertEqual(ex.status, 200, f"held connection {i} after refusals: {ex}")
        response = await self.array.request("proxy", "GET", "/api/v1/sps/spa/health")
        self.assertEqual(response.code, 200, "the TLS listener has its own cap")

        held.pop().close()
        served: list[Exchange] = []
        for _ in range(100):
            ex = await talk(self.plain, self.health((b"Connection", b"close")), wait=5.0)
            served.append(ex)
            if ex.status == 200:
                break
            await sleep(0.05)
        self.assertEqual(served[-1].status, 200, f"a freed slot was not reused: {served[-1]}")


def _silent(address: Address, greeting: bytes, wait: float) -> Exchange:
    """A TCP client to a TLS port that sends C{greeting} and then nothing."""
    connection = RawConnection(address)
    try:
        start = time.monotonic()
        connection.send([greeting] if greeting else [])
        ex = connection.read(wait)
        ex.elapsed = time.monotonic() - start
        return ex
    finally:
        connection.close()


def _handshakeAs(address: Address, context: ssl.SSLContext, name: str) -> Exchange:
    ex = Exchange()
    sock = socket.create_connection((address.host, address.port), timeout=10.0)
    try:
        context.wrap_socket(sock, server_hostname=name).close()
    except (ssl.SSLError, OSError) as e:
        ex.error = f"{type(e).__name__}: {e}"
    finally:
        sock.close()
    return ex


# -- the front end in this process, before a recording fake SP ----------------------


@define
class Seen:
    """One request as the fake SP received it."""

    method: bytes
    uri: bytes
    headers: dict[bytes, list[bytes]]
    body: bytes


class RecordingSP(Resource):
    """Answers 200 to anything, keeping what it received."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []

    def render(self, request: Any) -> bytes:
        headers = {name.lower(): list(values) for name, values in request.requestHeaders.getAllRawHeaders()}
        body = request.content.read() if request.content is not None else b""
        self.seen.append(Seen(request.method, request.uri, headers, body))
        request.setHeader(b"Content-Type", b"application/json")
        # Hop-by-hop answers the proxy must not pass on.
        request.setHeader(b"Connection", b"X-Internal")
        request.setHeader(b"X-Internal", b"secret")
        request.setHeader(b"Keep-Alive", b"timeout=5")
        request.setHeader(b"Proxy-Authenticate", b"Basic")
        request.setHeader(b"Upgrade", b"h2c")
        request.setHeader(b"Trailer", b"X-T")
        request.setHeader(b"X-Request-Id", b"from-the-sp")
        return b'{"ok": true}'


@define
class _Stub:
    """The arbiter, as far as the proxy asks (only for GET /api/v1/array)."""

    def view(self) -> dict[str, Any]:
        return {"members": {}}


EPOCH = 7
READ_TIMEOUT = 2.0
IDLE_TIMEOUT = 3.0


class ReframingTests(TestCase):
    """
    The exact request an SP receives for hostile client requests, from the
    proxy's own front end in this process.
    """

    timeout = 60

    async def setUp(self) -> None:
        directory = temporaryDirectory(self)
        # Only the configuration, PKI and secrets of a harness: nothing runs.
        harness = ArrayHarness(reactor, directory, spIds=("spa",), arbiter=True)
        config = harness.config
        spa = config.sp("spa")

        self.sp = RecordingSP()
        spFactory = WrappingFactory(
            tlsServerFactory(Site(self.sp), serverOptions(spa.cert, spa.key), reactor)
        )
        spPort = reactor.listenTCP(0, spFactory, interface="127.0.0.1")
        self.addCleanup(self.drained, spFactory, "the fake SP")
        self.addCleanup(spPort.stopListening)

        assert config.proxy is not None
        config = attrs.evolve(
            config,
            sps=(attrs.evolve(spa, web=Address("127.0.0.1", spPort.getHost().port)),),
            proxy=attrs.evolve(config.proxy, read_timeout=READ_TIMEOUT, failover_wait=2.0, upstream_timeout=5.0),
            limits=attrs.evolve(config.limits, idle_timeout=IDLE_TIMEOUT),
        )
        self.config = config
        router = Router(reactor, time.monotonic)
        router.update((EPOCH, "spa"))
        backends = Backends(reactor, config, router, timeout=5.0)
        self.addCleanup(backends.pool.closeCachedConnections)
        proxy = Proxy(reactor, config, router, backends, ProxyMetrics(), portalFromConfig(reactor, config), _Stub())
        site = ProxySite(proxy)

        plain = WrappingFactory(site)
        tls = WrappingFactory(
            tlsServerFactory(site, serverOptions(config.proxy.cert, config.proxy.key,
                                                 acceptableProtocols=[b"http/1.1"]), reactor)
        )
        self.plain = self.listen(plain)
        self.tls = self.listen(tls)
        self.tlsFactory = tls
        self.context = tlsContext(config.ca)
        self.spPort = spPort.getHost().port
        self.credentials = b"Basic " + base64.b64encode(f"admin:{harness.passwords['admin']}".encode())

    def listen(self, factory: WrappingFactory) -> Address:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.drained, factory, "the proxy")
        self.addCleanup(port.stopListening)
        return Address("127.0.0.1", port.getHost().port)

    async def drained(self, factory: WrappingFactory, what: str) -> None:
        """Wait (bounded) until every connection of C{factory} has ended."""
        for _ in range(200):
            if not factory.protocols:
                return
            await sleep(0.02)
        for protocol in list(factory.protocols):
            protocol.transport.abortConnection()
        for _ in range(50):
            if not factory.protocols:
                return
            await sleep(0.02)
        self.fail(f"{what} kept {len(factory.protocols)} connections open")

    async def send(self, data: bytes, tls: bool = False, wait: float = 5.0) -> Exchange:
        address, context = (self.tls, self.context) if tls else (self.plain, None)
        return await talk(address, data, context, wait=wait)

    def expectedForwarded(self, proto: bytes, host: bytes = b"127.0.0.1") -> bytes:
        return b'for=127.0.0.1;host="' + host + b'";proto=' + proto

    async def test_exactHeaders(self) -> None:
        """
        What the SP receives: the client's end-to-end headers, the proxy's
        stamp, request id and Forwarded, and nothing the client forged or
        marked hop-by-hop; exactly one request.  The client, in turn, gets
        none of the SP's hop-by-hop headers.
        """
        client = [
            (b"Accept", b"application/json"),
            (b"X-Request-Id", b"client-id_1.2:3@4/5+6=7"),
            (b"X-SPMgmt-Epoch", b"999999"),
            (b"X-SPMgmt-Served-By", b"spb"),
            (b"X-SPMgmt-Mode", b"service"),
            (b"X-SPMgmt-Principal", b"admin"),
            (b"x-spmgmt-anything", b"1"),
            (b"X-Forwarded-For", b"10.9.9.9"),
            (b"X-Forwarded-Proto", b"http"),
            (b"X-Forwarded-Host", b"evil.example"),
            (b"Forwarded", b"for=10.9.9.9;proto=https"),
            (b"Connection", b"keep-alive, X-Custom-Hop, X-Other-Hop"),
            (b"X-Custom-Hop", b"1"),
            (b"X-Other-Hop", b"2"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"Basic c3RvbGVu"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-T"),
            (b"Upgrade", b"websocket"),
            (b"Expect", b"100-continue"),
            (b"Last-Event-ID", b"12"),
            (b"X-End-To-End", b"kept"),
        ]
        for tls, proto in ((False, b"http"), (True, b"https")):
            before = len(self.sp.seen)
            ex = await self.send(requestBytes(b"/api/v1/thing?x=1", client), tls=tls)
            self.assertEqual(ex.status, 200, str(ex))
            self.assertEqual(len(self.sp.seen), before + 1, "exactly one upstream request")
            seen = self.sp.seen[-1]
            self.assertEqual((seen.method, seen.uri, seen.body), (b"GET", b"/api/v1/thing?x=1", b""))
            self.assertEqual(
                seen.headers,
                {
                    b"host": [b"spa:%d" % self.spPort],
                    b"accept": [b"application/json"],
                    b"x-end-to-end": [b"kept"],
                    b"x-request-id": [b"client-id_1.2:3@4/5+6=7"],
                    b"x-spmgmt-epoch": [b"%d" % EPOCH],
                    b"forwarded": [self.expectedForwarded(proto)],
                    b"last-event-id": [b"12"],
                },
            )
            # The answer: the SP's end-to-end headers, the proxy's own.
            self.assertEqual(ex.header(b"X-Request-Id"), b"client-id_1.2:3@4/5+6=7", str(ex))
            self.assertEqual(ex.header(b"X-SPMgmt-Epoch"), b"%d" % EPOCH, str(ex))
            self.assertEqual(ex.header(b"X-SPMgmt-Served-By"), b"spa", str(ex))
            # (Not X-Internal, which the SP's Connection header names: Twisted's
            # client keeps Connection out of the response headers it hands
            # over, so the proxy cannot know what it named.)
            for name in (b"Keep-Alive", b"Proxy-Authenticate", b"Upgrade", b"Trailer"):
                self.assertIsNone(ex.header(name), f"{name!r} passed back to the client: {ex}")

    async def test_credentials(self) -> None:
        """
        With valid credentials and a forged principal, the SP gets either
        the client's Authorization or the proxy's word for the user it
        checked, never the forged name, never both.
        """
        for forged in ([(b"X-SPMgmt-Principal", b"root")], [(b"x-spmgmt-principal", b"root"),
                                                             (b"Connection", b"X-SPMgmt-Principal")]):
            before = len(self.sp.seen)
            ex = await self.send(requestBytes(b"/x", [(b"Authorization", self.credentials), *forged]))
            self.assertEqual(ex.status, 200, str(ex))
            self.assertEqual(len(self.sp.seen), before + 1)
            headers = self.sp.seen[-1].headers
            got = (headers.get(b"authorization"), headers.get(b"x-spmgmt-principal"))
            self.assertIn(got, [([self.credentials], None), (None, [b"admin"])], f"{forged}: {headers}")

    async def test_connectionNamed(self) -> None:
        """
        Headers named in Connection are dropped, including ones the proxy
        sets itself (which it then sets anyway) and Authorization.
        """
        cases = {
            b"X-SPMgmt-Epoch": {b"x-spmgmt-epoch": [b"%d" % EPOCH]},
            b"x-spmgmt-epoch, X-Request-Id": {b"x-spmgmt-epoch": [b"%d" % EPOCH], b"x-request-id": [b"mine"]},
            b"Authorization": {b"authorization": None, b"x-spmgmt-principal": (None, [b"admin"])},
            b"Forwarded, Host": {b"forwarded": [self.expectedForwarded(b"http", b"front.example")],
                                 b"host": [b"spa:%d" % self.spPort]},
            b"Accept ,  X-End-To-End,,": {b"accept": None, b"x-end-to-end": None},
            b"content-length, transfer-encoding": {b"content-length": [b"5"]},
        }
        for named, expected in cases.items():
            before = len(self.sp.seen)
            headers = [
                (b"Connection", named),
                (b"X-SPMgmt-Epoch", b"999999"),
                (b"X-Request-Id", b"mine"),
                (b"Authorization", self.credentials),
                (b"Accept", b"*/*"),
                (b"X-End-To-End", b"kept"),
                (b"Content-Length", b"5"),
            ]
            ex = await self.send(requestBytes(b"/x", headers, b"POST", b"hello", host=b"front.example"))
            self.assertEqual(ex.status, 200, f"Connection: {named!r}: {ex}")
            self.assertEqual(len(self.sp.seen), before + 1, f"Connection: {named!r}")
            seen = self.sp.seen[-1]
            self.assertEqual(seen.body, b"hello", f"Connection: {named!r}")
            for name, values in expected.items():
                allowed = values if isinstance(values, tuple) else (values,)
                self.assertIn(seen.headers.get(name), allowed, f"Connection: {named!r}: {name!r}")

    async def test_framingReachesNoSP(self) -> None:
        """
        H1-H3: a refused framing sends nothing upstream, not even the request
        smuggled behind it; a chunked body with a request in it is one
        upstream request, re-framed with a Content-Length.
        """
        for case, data in BAD_FRAMING.items():
            for tls in (False, True):
                before = len(self.sp.seen)
                ex = await self.send(data, tls=tls, wait=2.0 + MARGIN)
                label = f"{case} ({'tls' if tls else 'plain'})"
                self.assertTrue(ex.status is None or 400 <= ex.status < 500, f"{label}: {ex}")
                self.assertEqual(self.sp.seen[before:], [], f"{label}: reached the SP")

        body = b"0\r\n\r\n" + _SMUGGLED
        for tls in (False, True):
            before = len(self.sp.seen)
            data = (
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
            )
            ex = await self.send(data, tls=tls)
            self.assertEqual(ex.status, 200, str(ex))
            self.assertEqual(len(self.sp.seen), before + 1, "exactly one upstream request")
            seen = self.sp.seen[-1]
            self.assertEqual((seen.method, seen.uri, seen.body), (b"POST", b"/x", body))
            self.assertEqual(seen.headers.get(b"content-length"), [b"%d" % len(body)])
            self.assertNotIn(b"transfer-encoding", seen.headers)

    async def test_refusedRequestsReachNoSP(self) -> None:
        """
        Bad request ids, non-origin targets, bodies over the limit: 4xx from
        the proxy and nothing upstream; then a normal request is one.
        """
        cases = {
            "10 kB X-Request-Id": requestBytes(b"/x", [(b"X-Request-Id", b"r" * 10_240)]),
            "X-Request-Id with a space": requestBytes(b"/x", [(b"X-Request-Id", b"a b")]),
            "absolute-form": requestBytes(b"http://127.0.0.1/x"),
            "authority-form": requestBytes(b"127.0.0.1:443", method=b"CONNECT"),
            "asterisk-form": requestBytes(b"*", method=b"OPTIONS"),
            "Content-Length over max_body": requestBytes(
                b"/x", [(b"Content-Length", b"%d" % (self.config.limits.max_body + 1))], b"POST"
            ),
            "chunked over max_body": requestBytes(b"/x", [(b"Transfer-Encoding", b"chunked")], b"POST")
            + (b"10000\r\n" + b"z" * 0x10000 + b"\r\n") * (self.config.limits.max_body // 0x10000 + 1),
        }
        for case, data in cases.items():
            ex = await self.send(data)
            self.assertTrue(ex.status is not None and 400 <= ex.status < 500, f"{case}: {ex}")
            self.assertEqual(self.sp.seen, [], f"{case}: reached the SP")
        ex = await self.send(requestBytes(b"/x"))
        self.assertEqual(ex.status, 200, str(ex))
        self.assertEqual(len(self.sp.seen), 1)

    async def test_refusedClientCutOff(self) -> None:
        """
        A client that ignores the 413 and keeps sending is cut off within
        read_timeout of the refusal, over plain TCP and over TLS (where the
        proxy's close waits for the client's close alert, which never comes).
        """
        head = requestBytes(b"/x", [(b"Transfer-Encoding", b"chunked")], b"POST")
        for tls in (False, True):
            address, context = (self.tls, self.context) if tls else (self.plain, None)
            ex = await deferToThread(_flood, address, context, head, 2 * READ_TIMEOUT + 3 * MARGIN)
            label = "tls" if tls else "plain"
            self.assertTrue(ex.closed, f"{label}: still taking bytes: {ex}")
            self.assertLessEqual(ex.elapsed, 2 * READ_TIMEOUT + MARGIN, f"{label}: {ex}")
            self.assertEqual(self.sp.seen, [], label)

    async def test_closeNotHeldByTLSPeer(self) -> None:
        """
        After a Connection: close answer over TLS, a client that never
        answers the close alert (and keeps its socket) does not keep the
        connection past the idle timeout.
        """
        connection = await deferToThread(RawConnection, self.tls, self.context)
        self.addCleanup(connection.close)
        ex = await deferToThread(connection.request, requestBytes(b"/x", [(b"Connection", b"close")]))
        self.assertEqual(ex.status, 200, str(ex))
        start = time.monotonic()
        for _ in range(int((IDLE_TIMEOUT + MARGIN) / 0.05)):
            if not self.tlsFactory.protocols:
                break
            await sleep(0.05)
        self.assertEqual(len(self.tlsFactory.protocols), 0, "the proxy still holds the connection")
        self.assertLessEqual(time.monotonic() - start, IDLE_TIMEOUT + MARGIN)


def _flood(address: Address, context: ssl.SSLContext | None, head: bytes, wait: float) -> Exchange:
    """Send C{head} and then chunks without end, never reading, until a write fails."""
    connection = RawConnection(address, context, timeout=wait)
    ex = connection.exchange
    frame = b"10000\r\n" + b"f" * 0x10000 + b"\r\n"
    start = time.monotonic()
    try:
        connection.sock.sendall(head)
        while time.monotonic() - start < wait:
            try:
                connection.sock.sendall(frame)
            except OSError:
                ex.closed = True
                break
            ex.sent += len(frame)
        ex.elapsed = time.monotonic() - start
        return ex
    finally:
        connection.close()


# -- the channel's own rules, on a clock -----------------------------------------------


class _Counting(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.served = 0

    def render(self, request: Any) -> bytes:
        self.served += 1
        return b"hello"


class _Transport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class ChannelRulesTests(SynchronousTestCase):
    """
    What L{GuardedChannel} refuses before any request is processed, and
    how long a connection it answered may take to close.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = _Counting()
        site = Site(self.resource, reactor=self.clock, timeout=100)
        site.protocol = GuardedChannel
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.channel.readTimeout = 2.0
        self.transport = _Transport()
        self.channel.makeConnection(self.transport)

    def assertRefused400(self, case: str) -> None:
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 400 "), f"{case}: {self.transport.value()!r}")
        self.assertTrue(self.transport.disconnecting, case)
        self.assertEqual(self.resource.served, 0, f"{case}: processed")

    def test_transferEncodingOnlyChunked(self) -> None:
        """H1: identity (which Twisted ignores), other codings, odd spaces: 400."""
        for value in (b"identity", b"gzip", b"chunked\x0b", b"", b"chunked;q=1"):
            self.setUp()
            self.channel.dataReceived(
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + value + b"\r\nContent-Length: 5\r\n\r\nhello"
                + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            self.assertRefused400(repr(value))

    def test_targetVisibleASCII(self) -> None:
        """H11: Twisted's parser passes 0x7F-0xB0 in a target; refused here."""
        for byte in (0x7F, 0x80, 0x9B, 0xB0):
            self.setUp()
            self.channel.dataReceived(b"GET /a" + bytes([byte]) + b"b HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertRefused400(hex(byte))

    def test_partialRequestBehindAnsweredOne(self) -> None:
        """
        H7: a request started in the same bytes as one answered at once is
        timed too (it used to wait for the idle timeout).
        """
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nX-A: ")
        self.assertEqual(self.resource.served, 1)
        self.clock.advance(2.0)
        self.assertIn(b"HTTP/1.1 408 ", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_refusedCloseBounded(self) -> None:
        """
        A refused connection that does not close (a TLS peer that never
        answers the close alert) is aborted after readTimeout.
        """
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(2.0)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertFalse(self.transport.aborted)
        self.clock.advance(2.0)
        self.assertTrue(self.transport.aborted)
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 "), 1, "one answer only")

    def test_closeAfterAnswerBounded(self) -> None:
        """
        After a Connection: close answer the idle timeout runs again, and
        then the connection is aborted, not left to the peer.
        """
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(99)
        self.assertFalse(self.transport.aborted)
        self.clock.advance(1)
        self.assertTrue(self.transport.aborted)
