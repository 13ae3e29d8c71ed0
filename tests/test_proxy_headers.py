"""Re-framing: what the proxy sends to an SP, and what it sends back."""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from spmgmt.proxy.headers import BadRequestId, forwarded, requestId, responseHeaders, upstreamHeaders


def _headers(pairs: list[tuple[bytes, bytes]]) -> Headers:
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


class UpstreamHeadersTests(SynchronousTestCase):
    def test_spoofableAndHopByHopDropped(self) -> None:
        client = _headers(
            [
                (b"Authorization", b"Basic eDp5"),
                (b"Accept", b"application/json"),
                (b"Connection", b"keep-alive, X-Secret, authorization"),
                (b"X-Secret", b"1"),
                (b"Keep-Alive", b"timeout=5"),
                (b"TE", b"trailers"),
                (b"Transfer-Encoding", b"chunked"),
                (b"Upgrade", b"h2c"),
                (b"Proxy-Authorization", b"Basic eDp5"),
                (b"X-SPMgmt-Epoch", b"999"),
                (b"x-spmgmt-served-by", b"spb"),
                (b"X-Forwarded-For", b"10.0.0.1"),
                (b"Forwarded", b"for=10.0.0.1"),
                (b"Host", b"evil"),
                (b"Content-Length", b"5"),
                (b"Last-Event-ID", b"3"),
                (b"X-Request-Id", b"client-id"),
            ]
        )
        headers = upstreamHeaders(client, b"rid-1", 42, b"for=127.0.0.1;proto=https")
        names = sorted(name.lower() for name, _ in headers.getAllRawHeaders())
        # Authorization is named in Connection: a hop-by-hop header now.
        self.assertEqual(names, [b"accept", b"forwarded", b"x-request-id", b"x-spmgmt-epoch"])
        self.assertEqual(headers.getRawHeaders(b"x-spmgmt-epoch"), [b"42"])
        self.assertEqual(headers.getRawHeaders(b"x-request-id"), [b"rid-1"])
        self.assertEqual(headers.getRawHeaders(b"forwarded"), [b"for=127.0.0.1;proto=https"])

    def test_endToEndKept(self) -> None:
        client = _headers([(b"Authorization", b"Bearer t"), (b"Content-Type", b"application/json")])
        headers = upstreamHeaders(client, b"r", 1, b"proto=http", lastEventId=b"17")
        self.assertEqual(headers.getRawHeaders(b"authorization"), [b"Bearer t"])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(headers.getRawHeaders(b"last-event-id"), [b"17"])


class RequestIdTests(SynchronousTestCase):
    def test_createdWhenMissing(self) -> None:
        first, second = requestId(Headers()), requestId(Headers())
        self.assertEqual(len(first), 32)
        self.assertNotEqual(first, second)

    def test_keptWhenValid(self) -> None:
        self.assertEqual(requestId(_headers([(b"X-Request-Id", b"job-7:step.2")])), b"job-7:step.2")

    def test_refused(self) -> None:
        for value in (b"x" * 129, b"a b", b"\xff", b"-leading", b"a;b", b""):
            with self.subTest(value=value):
                self.assertRaises(BadRequestId, requestId, _headers([(b"X-Request-Id", value)]))
        twice = _headers([(b"X-Request-Id", b"a"), (b"X-Request-Id", b"b")])
        self.assertRaises(BadRequestId, requestId, twice)


class ForwardedTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(forwarded("127.0.0.1", "https", b"array:8443"), b'for=127.0.0.1;host="array:8443";proto=https')
        self.assertEqual(forwarded("::1", "http", None), b'for="[::1]";proto=http')
        self.assertEqual(forwarded(None, "https", b'bad"host'), b"proto=https")
        self.assertEqual(forwarded("unix", "https", None), b"for=unknown;proto=https")


class ResponseHeadersTests(SynchronousTestCase):
    def test_ourHeadersAndHopByHopDropped(self) -> None:
        upstream = _headers(
            [
                (b"Content-Type", b"application/json"),
                (b"Content-Length", b"10"),
                (b"Connection", b"close"),
                (b"Transfer-Encoding", b"chunked"),
                (b"X-SPMgmt-Served-By", b"spa"),
                (b"X-Request-Id", b"other"),
                (b"Date", b"Wed, 25 Nov 2026 00:00:00 GMT"),
            ]
        )
        names = sorted(name.lower() for name, _ in responseHeaders(upstream))
        self.assertEqual(names, [b"content-type", b"date"])
