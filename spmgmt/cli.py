"""
spmgmtctl: the operator's command-line client of the management API.

Synchronous on purpose (stdlib C{http.client}, C{ssl}, C{argparse}): a
command-line tool makes a few requests in a row, and one kept-alive
connection through the proxy is exactly what the proxy holds across
failover, so C{watch} shows that failover as any client lives it.

Exit codes: 0 ok, 1 the request failed (the problem+json on one line),
2 usage, 3 cannot connect or TLS failure, 130 Ctrl-C.  Never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import http.client
import json
import os
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO
from urllib.parse import quote, urlsplit

DEFAULT_URL = "https://127.0.0.1:8443"
FAILED, USAGE, UNREACHABLE, INTERRUPTED = 1, 2, 3, 130
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
#: What a server sends is printed, not obeyed: no terminal escapes from it.
_CONTROLS = {c: "?" for c in [*range(0x20), *range(0x7F, 0xA0)] if c not in (0x09, 0x0A)}


class Failure(Exception):
    """The one line for stderr and the exit code that ends the run."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code = code
        self.line = " ".join(line.translate(_CONTROLS).split())  # one line, whatever a server said


# -- the connection ------------------------------------------------------------


class _Counting:
    """Counts real connects, so a reopened connection cannot go unnoticed."""

    connects = 0

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.connects += 1


class _HTTPS(_Counting, http.client.HTTPSConnection):
    pass


class _HTTP(_Counting, http.client.HTTPConnection):
    pass


class Answer:
    """One HTTP answer, read whole, and when it came."""

    def __init__(self, response: http.client.HTTPResponse, body: bytes, latency: float) -> None:
        self.status, self.reason, self.headers = response.status, response.reason, response.headers
        self.body, self.latency, self.received = body, latency, time.monotonic()
        self.servedBy = self.headers.get("X-SPMgmt-Served-By")
        self.epoch = self.headers.get("X-SPMgmt-Epoch")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise Failure(FAILED, f"{self.status} {self.reason}: the answer is not JSON.") from None


def _reason(e: BaseException) -> str:
    """Why a connection failed, in words (no class names, no errno tuples)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host: {e.strerror}"
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def problemLine(answer: Answer) -> str:
    """C{404 Not Found: There is no SP 'spx' in this array.}: title and detail of the problem+json."""
    try:
        problem = json.loads(answer.body)
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = answer.body.decode("utf-8", "replace").strip()[:200]
        return f"{answer.status} {answer.reason}" + (f": {text}" if text else "")
    line = f"{answer.status} {problem.get('title') or answer.reason}: {problem.get('detail') or ''}".rstrip(": ")
    if isinstance(problem.get("problems"), dict):
        line += " (" + "; ".join(f"{k}: {v}" for k, v in problem["problems"].items()) + ")"
    if problem.get("request_id"):
        line += f" [request id {problem['request_id']}]"
    return line


class Client:
    """
    One connection for the whole run, reopened only when it breaks (and
    counted, for C{watch}).  The server certificate is verified against the
    array CA: the proxy's names C{proxy} and 127.0.0.1.
    """

    def __init__(self, url: str, auth: str | None, cacert: Path | None, timeout: float) -> None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("https", "http") or not parts.hostname or port == -1:
            raise Failure(USAGE, f"--url {url}: use https://HOST[:PORT]")
        self.url = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # never a password in a message
        self.cacert = cacert
        self._prefix = parts.path.rstrip("/")
        self._headers = {"User-Agent": "spmgmtctl", "Accept": "application/json"}
        if auth is not None:
            self._headers["Authorization"] = auth
        #: Why the connection was last dropped, for a reconnect report.
        self.lastDrop = "?"
        self._open = False
        self.connection: _HTTPS | _HTTP
        if parts.scheme == "http":
            self.connection = _HTTP(parts.hostname, port, timeout=timeout)
            return
        try:
            context = ssl.create_default_context(cafile=str(cacert) if cacert else None)
        except (OSError, ssl.SSLError) as e:
            raise Failure(USAGE, f"--cacert {cacert}: {_reason(e)}") from None
        self.connection = _HTTPS(parts.hostname, port, timeout=timeout, context=context)

    @property
    def connects(self) -> int:
        return self.connection.connects

    def close(self, why: str = "closed") -> None:
        if self._open:  # the first word on a connection that was up
            self.lastDrop, self._open = why, False
        self.connection.close()

    def _unreachable(self, e: BaseException, what: str = "cannot connect") -> Failure:
        self.close(_reason(e))
        line = f"{self.url}: {what}: {_reason(e)}"
        if isinstance(e, ssl.SSLCertVerificationError) and e.verify_code != 62:  # 62: hostname mismatch
            line += f" (CA {self.cacert})" if self.cacert else " (no --cacert: the system CAs)"
        return Failure(UNREACHABLE, line)

    def _lost(self, e: BaseException, method: str) -> Failure:
        what = "the connection was lost before an answer"
        if method != "GET":
            what += " (the request may or may not have been carried out)"
        return self._unreachable(e, what)

    def send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """
        Send one request; the response with its body unread.

        A GET whose kept-alive connection turns out to be closed is sent
        again once on a new connection; a POST is not (it may have run).
        """
        allHeaders = {**self._headers, **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            allHeaders["Content-Type"] = "application/json"
        dropped = None
        while True:
            fresh = self.connection.sock is None
            if fresh:
                try:
                    self.connection.connect()
                    self._open = True
                except (OSError, ssl.SSLError) as e:
                    what = "cannot connect" if dropped is None else f"connection lost ({dropped}), then cannot connect"
                    raise self._unreachable(e, what) from None
            try:
                self.connection.request(method, self._prefix + path, payload, allHeaders)
                return self.connection.getresponse()
            except _STALE as e:
                if fresh or method != "GET":
                    raise self._lost(e, method) from None
                dropped = _reason(e)
                self.close(dropped)
            except (OSError, http.client.HTTPException) as e:
                raise self._lost(e, method) from None

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        """One request, read whole; an error answer raises its L{Failure}."""
        started = time.monotonic()
        response = self.send(method, path, body)
        try:
            answer = Answer(response, response.read(), time.monotonic() - started)
        except (OSError, http.client.HTTPException) as e:
            raise self._lost(e, method) from None
        if answer.status >= 400:
            line = problemLine(answer)
            if answer.status == 401 and "Authorization" not in self._headers:
                line += " (give --user and --password-file, or --token)"
            raise Failure(FAILED, line)
        return answer


# -- where the settings come from ----------------------------------------------


def _checkout(start: Path) -> Path | None:
    """The nearest directory (C{start} or a parent) where C{make run} keeps C{var/pki/ca.pem}."""
    for directory in (start, *start.parents):
        if (directory / "var" / "pki" / "ca.pem").is_file():
            return directory
    return None


def settings(args: argparse.Namespace, env: dict[str, str], cwd: Path) -> tuple[str, str | None, Path | None]:
    """
    The URL, the Authorization header and the CA file: options first, then
    C{SPMGMT_*} variables, then what C{make run} left in a checkout.

    Credentials come whole from one place: an option never mixes with a
    variable (a C{--user} with someone else's C{SPMGMT_PASSWORD_FILE}).
    """
    url = getattr(args, "url", None) or env.get("SPMGMT_URL") or DEFAULT_URL
    checkout = _checkout(cwd)
    cacert = getattr(args, "cacert", None) or env.get("SPMGMT_CACERT")
    if cacert is None and checkout is not None:
        cacert = str(checkout / "var" / "pki" / "ca.pem")
    names = ["--token", "--user", "--password-file"]
    token, user, passwordFile = (getattr(args, n[2:].replace("-", "_"), None) for n in names)
    if not (token or user or passwordFile):
        names = ["SPMGMT_TOKEN", "SPMGMT_USER", "SPMGMT_PASSWORD_FILE"]
        token, user, passwordFile = (env.get(n) for n in names)
    if token and (user or passwordFile):
        raise Failure(USAGE, f"{names[0]} and {names[1]}/{names[2]} exclude each other")
    if token and (not token.isprintable() or " " in token):
        raise Failure(USAGE, f"{names[0]}: a token is one word of printable characters")
    auth = f"Bearer {token}" if token else None
    if not token and passwordFile is None and checkout is not None:
        # `make run` writes var/secrets/<user>.password (admin and monitor).
        found = checkout / "var" / "secrets" / f"{user or 'admin'}.password"
        if found.is_file():
            user, passwordFile = user or "admin", str(found)
    if not token and (user or passwordFile):
        user = user or "admin"
        if passwordFile is not None:
            try:
                password = Path(passwordFile).read_text().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise Failure(USAGE, f"{names[2]} {passwordFile}: {getattr(e, 'strerror', None) or e}") from None
        elif sys.stdin.isatty():
            password = getpass.getpass(f"password for {user}: ")
        else:
            raise Failure(USAGE, f"{names[1]} {user} needs {names[2]}")
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return url, auth, Path(cacert) if cacert else None


# -- showing answers -----------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.3f}".rstrip("0")
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _health(healthy: Any) -> str:
    return {True: "healthy", False: "UNHEALTHY"}.get(healthy, "?")


def _token(token: Any) -> str:
    if not isinstance(token, dict):
        return "no token"
    return f"epoch {_cell(token.get('epoch'))} held by {_cell(token.get('holder'))}"


def _when(stamp: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if not isinstance(stamp, (int, float)):
        return _cell(stamp)
    return time.strftime(fmt, time.localtime(stamp)) + f".{int(stamp % 1 * 1000):03d}"


def _clock() -> str:
    return _when(time.time(), "%H:%M:%S")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _sps(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [sp for sp in view.get("sps") or [] if isinstance(sp, dict)]


def showArray(view: dict[str, Any], answer: Answer, args: Any) -> str:
    lines = [f"array {view.get('name')}: {view.get('state')}, token {_token(view.get('token'))}"]
    move = view.get("last_move")
    if isinstance(move, dict):
        lines.append(f"last move: to {move.get('to')} (epoch {move.get('epoch')}, {move.get('reason')}) "
                     f"at {_when(move.get('time'))}")
    reachable = (view.get("arbiter") or {}).get("reachable")
    served = answer.servedBy or view.get("via")
    lines.append(f"arbiter {'reachable' if reachable else 'NOT heard'}; answered by {served}"
                 + (f" (epoch {answer.epoch})" if answer.epoch else ""))
    proxy = view.get("proxy") if isinstance(view.get("proxy"), dict) else None
    headers = ["SP", "ROLE", "EPOCH", "HEALTH", "WEB SERVER", "REACHABLE", "ARBITER"]
    rows = [[sp.get("id"), sp.get("role"), sp.get("epoch"), _health(sp.get("healthy")), sp.get("web_server"),
             sp.get("reachable"), sp.get("arbiter_connected")] for sp in _sps(view)]
    if proxy is not None:  # through the proxy: its own view too
        line = f"proxy: routing to {proxy.get('routing_to') or 'nobody'}, {proxy.get('held_requests')} request(s) held"
        if proxy.get("vacant_s") is not None:
            line += f", no active SP for {proxy['vacant_s']} s"
        lines.append(line)
        headers.append("PROXY PROBE")
        for row in rows:
            row.append(((proxy.get("sps") or {}).get(row[0]) or {}).get("reachable"))
    return "\n".join(lines) + "\n\n" + table(headers, rows)


def showSPs(view: dict[str, Any], answer: Answer, args: Any) -> str:
    rows = [[sp.get("id"), sp.get("role"), sp.get("epoch"), _health(sp.get("healthy")), sp.get("web_server"),
             sp.get("reachable"), sp.get("last_seen_s")] for sp in _sps(view)]
    return table(["SP", "ROLE", "EPOCH", "HEALTH", "WEB SERVER", "REACHABLE", "LAST SEEN (s)"], rows)


def _collected(view: dict[str, Any]) -> str:
    return f"collected by {view.get('collected_by')} via {view.get('via')}"


def showSP(view: dict[str, Any], answer: Answer, args: Any) -> str:
    return (f"{args.id}: {view.get('role')}, epoch {_cell(view.get('epoch'))}, {_health(view.get('healthy'))}, "
            f"web server {view.get('web_server')} ({_collected(view)})")


def showStatus(view: dict[str, Any], answer: Answer, args: Any) -> str:
    health, memory, disk = (view.get(k) or {} for k in ("health", "memory", "disk"))
    failing = ", ".join(health.get("failing") or [])
    gib = lambda n: f"{(n or 0) / 1024 ** 3:.1f}"  # noqa: E731
    fields = {
        "role": f"{view.get('role')} (epoch {_cell(view.get('epoch'))})",
        "health": _health(health.get("healthy")) + (f": failing {failing}" if failing else ""),
        "web server": view.get("web_server"),
        "host": f"{view.get('hostname')}, pid {view.get('pid')}, up {_cell(view.get('uptime_s'))} s",
        "load": " ".join(f"{x:.2f}" for x in view.get("load") or []),
        "memory": f"{gib(memory.get('available_bytes'))} of {gib(memory.get('total_bytes'))} GiB available",
        "disk": f"{gib(disk.get('free_bytes'))} of {gib(disk.get('total_bytes'))} GiB free on {disk.get('path')}",
        "collected": f"{view.get('collected_at')}, {_collected(view)}",
    }
    out = f"{args.id}\n" + "\n".join(f"  {k + ':':<12}{_cell(v)}" for k, v in fields.items())
    command = view.get("status_command")
    if isinstance(command, dict):
        out += "\n\n" + showRun(command, answer, args, f"status command ({' '.join(command.get('argv') or [])})")
    return out


def showHealth(view: dict[str, Any], answer: Answer, args: Any) -> str:
    rows = [[c.get("name"), c.get("kind"), c.get("critical"),
             "pending" if c.get("pending") else ("up" if c.get("up") else "DOWN"),
             c.get("passes"), c.get("fails"), c.get("age_s"), c.get("detail")] for c in view.get("checks") or []]
    head = f"{args.id}: {_health(view.get('healthy'))}, web server {view.get('web_server')} ({_collected(view)})"
    return head + "\n\n" + table(["CHECK", "KIND", "CRITICAL", "STATE", "PASSES", "FAILS", "AGE (s)", "DETAIL"], rows)


def showRun(result: dict[str, Any], answer: Answer, args: Any, what: str | None = None) -> str:
    outcome = f"rc {result.get('rc')}" if result.get("signal") is None else f"killed by signal {result['signal']}"
    outcome += ", timed out" * bool(result.get("timed_out")) + ", output truncated" * bool(result.get("truncated"))
    if isinstance(result.get("duration_s"), (int, float)):
        outcome += f" in {result['duration_s']:.2f} s"
    lines = [f"{what or f'{args.name} on {args.id}'}: {outcome}"]
    for stream in ("stdout", "stderr"):
        if result.get(stream):
            lines.append(f"--- {stream} ---\n{str(result[stream]).rstrip()}")
    return "\n".join(lines)


def showSwitchover(view: dict[str, Any], answer: Answer, args: Any) -> str:
    return f"switched over: token {_token(view.get('token'))}"


def eventLine(event: dict[str, Any]) -> str:
    rest = " ".join(f"{k}={_cell(v)}" for k, v in event.items() if k not in ("id", "kind", "time"))
    return f"{_cell(event.get('id')):>6}  {_when(event.get('time'))}  {_cell(event.get('kind')):<9} {rest}".rstrip()


def showEvents(view: dict[str, Any], answer: Answer, args: Any) -> str:
    events = [e for e in view.get("events") or [] if isinstance(e, dict)]
    lines = [eventLine(e) for e in events]
    if events and isinstance(events[-1].get("id"), int) and events[-1]["id"] < (view.get("last_id") or 0):
        lines.append(f"(more: spmgmtctl events --since {events[-1]['id']})")
    return "\n".join(lines) or "(no events)"


# -- commands --------------------------------------------------------------------


def _print(out: TextIO, text: str, clean: bool = True) -> None:
    out.write((text.translate(_CONTROLS) if clean else text).rstrip("\n") + "\n")
    out.flush()


def once(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """Every command that is one request and one answer."""
    sp = quote(getattr(args, "id", None) or "", safe="")
    show: Callable[[dict[str, Any], Answer, Any], str]
    body: Any = None
    if args.command == "status":
        method, path, show = "GET", "/api/v1/array", showArray
    elif args.command == "sps":
        method, path, show = "GET", "/api/v1/sps", showSPs
    elif args.command == "sp":
        path = f"/api/v1/sps/{sp}" + (f"/{args.what}" if args.what else "")
        method, show = "GET", {"status": showStatus, "health": showHealth, None: showSP}[args.what]
    elif args.command == "run":
        method, path, show = "POST", f"/api/v1/sps/{sp}/commands/{quote(args.name, safe='')}", showRun
        body = {"params": args.params}
    elif args.command == "switchover":
        method, path, show = "POST", "/api/v1/array/switchover", showSwitchover
        body = {"to": args.to} if args.to else {}
    else:
        method, path, show = "GET", f"/api/v1/events?since={args.since}", showEvents
    answer = client.request(method, path, body)
    if args.json:
        _print(out, answer.body.decode("utf-8", "replace"), clean=False)  # JSON escapes its own controls
        return 0
    view = answer.json()
    _print(out, show(view, answer, args) if isinstance(view, dict) else answer.body.decode("utf-8", "replace"))
    return 0


def _sse(response: Any) -> Iterator[tuple[str | None, str]]:
    """(id, data) of each whole Server-Sent Event; comments (keepalives) are skipped."""
    ident, data = None, []
    while raw := response.readline():
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield ident, "\n".join(data)
            ident, data = None, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                ident = value
            elif name == "data":
                data.append(value)


def follow(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """Print each event as it comes, until Ctrl-C; the proxy resumes the stream across failover."""
    response = client.send("GET", "/api/v1/events/stream",
                           headers={"Accept": "text/event-stream", "Last-Event-ID": str(args.since)})
    if response.status != 200:
        raise Failure(FAILED, problemLine(Answer(response, response.read(), 0.0)))
    last = args.since
    try:
        for ident, data in _sse(response):
            last = int(ident) if ident and ident.isdigit() else last
            if args.json:
                _print(out, data, clean=False)
                continue
            try:
                event = json.loads(data)
            except ValueError:
                event = None
            _print(out, eventLine(event) if isinstance(event, dict) else f"{ident}: {data}")
    except (OSError, http.client.HTTPException) as e:
        client.close()
        why = f"the event stream was lost after event {last}: {_reason(e)}"
    else:
        why = f"the server closed the event stream after event {last}"
    raise Failure(UNREACHABLE, f"{client.url}: {why} (resume with --since {last})")


class Watch:
    """
    C{watch}: GET /api/v1/array on the one connection every interval, and
    note each change of the SP that answered (or of its epoch) with the gap
    between the last answer from the old SP and the first from the new one:
    the failover as a client of the proxy lives it.
    """

    def __init__(self, client: Client, args: argparse.Namespace, out: TextIO) -> None:
        self.client, self.args, self.out = client, args, out
        self.tty = out.isatty() and not args.json
        self.failovers: list[str] = []
        self.notes: list[str] = []  # every marked line, for the screen
        self.reconnects = self.failed = 0
        self._last: tuple[str, str | None, float] | None = None  # served by, epoch, when
        self._connects = 0

    def run(self) -> int:
        started, refreshes = time.monotonic(), 0
        while True:
            due = time.monotonic() + self.args.interval
            self.refresh(first=refreshes == 0)
            refreshes += 1
            if refreshes == self.args.count:
                break
            time.sleep(max(0.0, due - time.monotonic()))
        connects, failovers = self.client.connects, len(self.failovers)
        if self.args.json:
            self._emit({"summary": {"refreshes": refreshes, "failed": self.failed, "connections": connects,
                                    "reconnects": self.reconnects, "failovers": self.failovers}})
        else:
            _print(self.out, "\n".join([
                f"watch: {refreshes} refreshes ({self.failed} failed) in {time.monotonic() - started:.1f} s, "
                f"{connects} connection{'s' * (connects != 1)} ({self.reconnects or 'no'} reconnect"
                f"{'s' * (self.reconnects > 1)}), {failovers} failover{'s' * (failovers != 1)}",
                *[f"  {f}" for f in self.failovers]]))
        return 0

    def _emit(self, record: dict[str, Any]) -> None:
        _print(self.out, json.dumps({"time": round(time.time(), 3), **record}), clean=False)

    def _note(self, line: str, record: dict[str, Any]) -> str:
        """A marked line: appended at once, or kept for the screen."""
        stamped = f"{_clock()} {line}"
        self.notes.append(stamped)
        if self.args.json:
            self._emit(record)
        elif not self.tty:
            _print(self.out, stamped)
        return stamped

    def refresh(self, first: bool) -> None:
        client = self.client
        try:
            answer = client.request("GET", "/api/v1/array")
        except Failure as e:
            # Nothing to watch (exit 3), or credentials that will not get better.
            if (first and e.code == UNREACHABLE) or e.line[:4] in ("401 ", "403 "):
                raise
            self.failed += 1
            self._note(f"{'connection' if e.code == UNREACHABLE else 'error'}: {e.line}", {"error": e.line})
            self._draw(None, None)
            return
        if client.connects != self._connects:
            if self._connects:
                self.reconnects += 1
                self._note(f"reconnect: the connection was reopened (connection {client.connects}) "
                           f"after: {client.lastDrop}", {"reconnect": client.connects, "after": client.lastDrop})
            self._connects = client.connects
        if answer.servedBy is not None:
            if self._last is not None and (answer.servedBy, answer.epoch) != self._last[:2]:
                old, oldEpoch, then = self._last
                gap = answer.received - then
                self.failovers.append(self._note(
                    f"failover: {old} -> {answer.servedBy} (epoch {oldEpoch} -> {answer.epoch}), gap {gap:.2f} s",
                    {"failover": {"from": old, "to": answer.servedBy, "from_epoch": oldEpoch,
                                  "to_epoch": answer.epoch, "gap_s": round(gap, 3)}}))
            self._last = (answer.servedBy, answer.epoch, answer.received)
        self._draw(answer, answer.json())

    def _draw(self, answer: Answer | None, view: Any) -> None:
        if self.args.json:
            if answer is not None:
                self._emit({"served_by": answer.servedBy, "epoch": answer.epoch, "latency_s": round(answer.latency, 4),
                            "connections": self.client.connects, "array": view})
            return
        if answer is None or not isinstance(view, dict):
            if self.tty:  # keep the marked lines on screen until an answer comes
                self._screen(["", *self._marked()])
            return
        served = f"served by {answer.servedBy} in {answer.latency * 1000:.0f} ms"
        state = f"{view.get('state')}, token {_token(view.get('token'))}"
        if not self.tty:
            each = " | ".join(
                f"{sp.get('id')} unreachable" if sp.get("reachable") is False
                else f"{sp.get('id')} {sp.get('role')} {_health(sp.get('healthy'))} {_cell(sp.get('web_server'))}"
                for sp in _sps(view))
            _print(self.out, f"{_clock()} {state} | {each} | {served}")
            return
        rows = [[sp.get("id"), sp.get("role"), _health(sp.get("healthy")), sp.get("web_server"), sp.get("reachable")]
                for sp in _sps(view)]
        self._screen([
            f"array {view.get('name')}: {state}",
            f"{served} (epoch {answer.epoch}); connection {self.client.connects}, "
            f"{self.reconnects or 'no'} reconnect(s)",
            "",
            table(["SP", "ROLE", "HEALTH", "WEB SERVER", "REACHABLE"], rows),
            "",
            *self._marked(),
        ])

    def _marked(self) -> list[str]:
        others = [n for n in self.notes[-5:] if n not in self.failovers]
        return [f"failovers seen: {len(self.failovers) or 'none'}", *[f"  {f}" for f in self.failovers],
                *([""] + others if others else [])]

    def _screen(self, lines: list[str]) -> None:
        head = f"spmgmtctl watch {self.client.url}, every {self.args.interval:g} s (Ctrl-C to stop)  {_clock()}"
        self.out.write("\x1b[H\x1b[2J" + "\n".join([head, *lines]).translate(_CONTROLS) + "\n")
        self.out.flush()


# -- the command line --------------------------------------------------------------


def _param(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return name, value


def _number(kind: type, least: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= least:  # NaN too
            raise argparse.ArgumentTypeError(f"{text!r} is less than {least}")
        return value

    return parse


EPILOG = """\
environment: SPMGMT_URL, SPMGMT_USER, SPMGMT_PASSWORD_FILE, SPMGMT_TOKEN,
SPMGMT_CACERT (options win).  In a checkout where `make run` is up (var/pki/ca.pem
and var/secrets/admin.password in this directory or a parent) nothing is needed.

exit codes: 0 ok, 1 the request failed, 2 usage, 3 cannot connect or TLS failure, 130 Ctrl-C.
"""


def parser() -> argparse.ArgumentParser:
    # Global options go before or after the command; SUPPRESS keeps the
    # command's parser from resetting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    option = lambda *names, **kw: common.add_argument(*names, default=argparse.SUPPRESS, **kw)  # noqa: E731
    option("--url", help=f"the proxy (default {DEFAULT_URL})")
    option("--user", help="HTTP Basic user (admin if only a password file is given or found)")
    option("--password-file", metavar="FILE", help="the user's password, in a file")
    option("--token", help="a bearer token instead of a user")
    option("--cacert", metavar="FILE", help="the array CA (PEM) to verify the server with")
    option("--timeout", type=_number(float, 0.001), metavar="S", help="to wait for an answer (default 90)")
    option("--json", action="store_true", help="print the API's JSON as is")
    top = argparse.ArgumentParser(prog="spmgmtctl", parents=[common], epilog=EPILOG,
                                  description="Manage an spmgmt array through its proxy.",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = lambda name, text: commands.add_parser(name, parents=[common], help=text, description=text)  # noqa: E731
    add("status", "the array: state, token, every SP's role, health and web server")
    add("sps", "every SP: role, health, web server, reachability")
    sp = add("sp", "one SP: its summary, status or health checks")
    sp.add_argument("id")
    sp.add_argument("what", nargs="?", choices=["status", "health"])
    run = add("run", "run a configured command on an SP: rc, stdout, stderr")
    run.add_argument("id")
    run.add_argument("name", metavar="COMMAND")
    run.add_argument("params", nargs="*", default=[], type=_param, metavar="key=value")
    switchover = add("switchover", "move the token (to ID)")
    switchover.add_argument("--to", metavar="ID")
    events = add("events", "the event history; --follow: then each new event until Ctrl-C")
    events.add_argument("--since", type=_number(int, 0), default=0, metavar="N", help="only events after id N")
    events.add_argument("--follow", "-f", action="store_true")
    watch = add("watch", "redraw the array every second on one connection; report failovers")
    watch.add_argument("--interval", type=_number(float, 0.01), default=1.0, metavar="S", help="default 1")
    watch.add_argument("--count", type=_number(int, 1), metavar="N", help="stop after N refreshes")
    return top


def main(argv: list[str] | None = None) -> int:
    """The console script; returns the exit code (see the module docstring)."""
    top = parser()
    client = None
    try:
        args = top.parse_args(argv)
        args.json = getattr(args, "json", False)
        if args.command == "run":
            if len({name for name, _ in args.params}) != len(args.params):
                top.error("run: a parameter is given twice")
            args.params = dict(args.params)
        url, auth, cacert = settings(args, dict(os.environ), Path.cwd())
        client = Client(url, auth, cacert, getattr(args, "timeout", 90.0))
        if args.command == "watch":
            return Watch(client, args, sys.stdout).run()
        if args.command == "events" and args.follow:
            return follow(client, args, sys.stdout)
        return once(client, args, sys.stdout)
    except Failure as e:
        print(f"spmgmtctl: {e.line}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # The reader left (`| head`): no complaint when Python exits either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except SystemExit as e:  # argparse: --help (0), usage errors (2)
        return e.code if isinstance(e.code, int) else USAGE
    except Exception as e:  # never a traceback
        print(f"spmgmtctl: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return FAILED
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
