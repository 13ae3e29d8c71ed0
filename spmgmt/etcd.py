# -*- test-case-name: tests.test_etcd -*-
"""
A small etcd v3 client over etcd's JSON gateway (C{/v3/...}, served by
etcd 3.4 and later on its client port), on Twisted's non-blocking HTTP
client.

Only what the coordinator needs: read one key, put, delete, transactions
with compares, and leases.  Keys and values are bytes (the gateway carries
them base64-encoded); 64-bit integers arrive as JSON strings.

Endpoints are tried in turn: a request moves to the next endpoint only
when it provably never reached the current one (the connection was
refused or could not be made), so no write is ever sent twice.  Anything
else (a timeout, a dropped answer) raises L{EtcdUnavailable}: the caller
knows the outcome is unknown and reads back what it needs; its next call
goes to the next endpoint (this one may be cut off from the quorum).
"""

from __future__ import annotations

import base64
import json
from io import BytesIO
from typing import Any, Sequence

from attrs import frozen
from twisted.internet import error as netError
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseFailed, readBody
from twisted.web.http_headers import Headers

_NOT_SENT = (
    netError.ConnectionRefusedError,
    netError.ConnectError,
    netError.DNSLookupError,
    netError.NoRouteError,
)


class EtcdError(Exception):
    """etcd answered with an error (C{code} is its gRPC status code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd: {message} (code {code})")
        self.code = code
        self.message = message


class EtcdUnavailable(Exception):
    """No endpoint answered, or an answer was lost: the outcome is unknown."""


@frozen
class KeyValue:
    """One key as etcd holds it."""

    key: bytes
    value: bytes
    createRevision: int
    modRevision: int
    version: int
    lease: int


@frozen
class TxnResult:
    """
    A transaction's outcome: whether its compares held, the revision after
    it, and the answer of each operation that ran (a range's key, if any,
    or L{None}).
    """

    succeeded: bool
    revision: int
    responses: tuple[KeyValue | None, ...]


@frozen
class Compare:
    """One compare of a transaction: C{target} of C{key} equals C{value}."""

    key: bytes
    target: str  # "CREATE", "MOD", "VERSION" or "VALUE"
    value: int | bytes

    def json(self) -> dict[str, Any]:
        field = {"CREATE": "create_revision", "MOD": "mod_revision", "VERSION": "version", "VALUE": "value"}
        value = _b64(self.value) if isinstance(self.value, bytes) else str(self.value)
        return {"key": _b64(self.key), "result": "EQUAL", "target": self.target, field[self.target]: value}


def createRevisionIs(key: bytes, revision: int) -> Compare:
    """C{key} was created at C{revision} (0: C{key} does not exist)."""
    return Compare(key, "CREATE", revision)


def valueIs(key: bytes, value: bytes) -> Compare:
    return Compare(key, "VALUE", value)


def absent(key: bytes) -> Compare:
    return Compare(key, "VERSION", 0)


@frozen
class Op:
    """One operation of a transaction (L{put}, L{get} or L{delete})."""

    request: dict[str, Any]


def put(key: bytes, value: bytes, lease: int = 0) -> Op:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return Op({"request_put": body})


def get(key: bytes) -> Op:
    return Op({"request_range": {"key": _b64(key)}})


def delete(key: bytes) -> Op:
    return Op({"request_delete_range": {"key": _b64(key)}})


class EtcdClient:
    """
    Calls to an etcd cluster through its JSON gateway.

    @param endpoints: base URLs (C{http://127.0.0.1:2379}); C{https://}
        ones use C{contextFactory} (an L{IPolicyForHTTPS}).
    @param timeout: seconds for each call, answer included.
    """

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[str],
        timeout: float = 2.0,
        contextFactory: Any = None,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self._reactor = reactor
        self._endpoints = [e.rstrip("/").encode("ascii") for e in endpoints]
        self._current = 0
        self._timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.retryAutomatically = False  # a write is never sent twice
        self._pool.maxPersistentPerHost = 4
        kwargs = {"contextFactory": contextFactory} if contextFactory is not None else {}
        self._agent = Agent(reactor, pool=self._pool, connectTimeout=timeout, **kwargs)

    def close(self) -> Deferred[None]:
        """Close the pooled connections (for a clean stop)."""
        return self._pool.closeCachedConnections()

    # -- keys --------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        """C{key}'s value and revisions, or L{None} if it does not exist."""
        answer = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        return _keyValue(kvs[0]) if kvs else None

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Set C{key}; the revision after it."""
        answer = await self._call("/v3/kv/put", put(key, value, lease).request["request_put"])
        return _revision(answer)

    async def delete(self, key: bytes) -> int:
        """Delete C{key}; how many keys were deleted (0 or 1)."""
        answer = await self._call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(answer.get("deleted", 0))

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """Run C{success} if every compare holds, else C{failure}, atomically."""
        body = {
            "compare": [c.json() for c in compare],
            "success": [op.request for op in success],
            "failure": [op.request for op in failure],
        }
        answer = await self._call("/v3/kv/txn", body)
        responses = []
        for response in answer.get("responses") or []:
            kvs = (response.get("response_range") or {}).get("kvs") or []
            responses.append(_keyValue(kvs[0]) if kvs else None)
        return TxnResult(bool(answer.get("succeeded", False)), _revision(answer), tuple(responses))

    # -- leases ------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of C{ttl} seconds: its id and the TTL etcd gave it."""
        answer = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"]), int(answer["TTL"])

    async def keepAlive(self, lease: int) -> int:
        """Renew C{lease}; its TTL now, or 0 if it has expired."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = answer.get("result", answer)
        return int(result.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """End C{lease} now (its keys are deleted)."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as e:
            if "not found" not in e.message:
                raise

    # -- the call ------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode("utf-8")
        refused: list[str] = []
        for _ in range(len(self._endpoints)):
            endpoint = self._endpoints[self._current]
            try:
                return await self._post(endpoint + path.encode("ascii"), data)
            except _NOT_SENT as e:
                refused.append(f"{endpoint.decode()}: {e.__class__.__name__}")
                self._next()
            except EtcdUnavailable:
                # Not sent again (its outcome is unknown), but the next call
                # tries another member: this one may be cut off from quorum.
                self._next()
                raise
        raise EtcdUnavailable("no etcd endpoint answered (" + "; ".join(refused) + ")")

    def _next(self) -> None:
        self._current = (self._current + 1) % len(self._endpoints)

    async def _post(self, url: bytes, data: bytes) -> dict[str, Any]:
        async def exchange() -> tuple[Any, bytes]:
            response = await self._agent.request(
                b"POST", url, Headers({b"content-type": [b"application/json"]}), FileBodyProducer(BytesIO(data))
            )
            return response, await readBody(response)

        # One deadline for the whole exchange, the answer's body included.
        d = Deferred.fromCoroutine(exchange())
        d.addTimeout(self._timeout, self._reactor)
        try:
            response, body = await d
        except _NOT_SENT:
            raise
        except ResponseFailed as e:
            raise EtcdUnavailable(f"{url.decode()}: the answer was lost ({e.reasons[0].getErrorMessage()})") from None
        except Exception as e:  # timeouts, resets: the outcome is unknown
            raise EtcdUnavailable(f"{url.decode()}: {e.__class__.__name__}: {e}") from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise EtcdUnavailable(f"{url.decode()}: answered {response.code} with no JSON") from None
        if not isinstance(answer, dict):
            raise EtcdUnavailable(f"{url.decode()}: answered {response.code} with unexpected JSON")
        failure = answer.get("error")
        if isinstance(failure, dict):  # a streamed call's error
            answer = failure
        if response.code != 200 or "code" in answer and "message" in answer and answer.get("code"):
            raise EtcdError(int(answer.get("code") or 0), str(answer.get("message") or answer.get("error")))
        return answer


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _keyValue(kv: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(kv.get("key", "")),
        value=base64.b64decode(kv.get("value", "")),
        createRevision=int(kv.get("create_revision", 0)),
        modRevision=int(kv.get("mod_revision", 0)),
        version=int(kv.get("version", 0)),
        lease=int(kv.get("lease", 0)),
    )


def _revision(answer: dict[str, Any]) -> int:
    return int((answer.get("header") or {}).get("revision", 0))
