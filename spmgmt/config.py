# -*- test-case-name: tests.test_config -*-
"""
Parse and validate the array's TOML configuration into frozen attrs values.

One file describes the whole array (every SP, the proxy, users, checks and
commands), so every process reads the same truth.  Every problem is reported
as a L{ConfigError} whose text is one line naming the file, the key and the
problem: operators fix configuration from a log line, not a traceback.

Attribute names mirror the TOML keys so that code, errors and the file speak
the same names.  Relative paths are resolved against C{[array] root}, which
is itself relative to the directory of the configuration file.
"""

from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path
from typing import Any, Mapping

from attrs import frozen

ROLES = ("monitor", "admin")
CHECK_KINDS = ("exec", "disk_free", "reactor_lag", "maintenance_file", "http_self")
PARAM_TYPES = ("string", "int", "enum")
_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class ConfigError(Exception):
    """
    The configuration cannot be used.  C{str()} is the one line to show.
    """

    def __init__(self, path: str | Path, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = str(path)
        self.key = key
        self.problem = problem


@frozen
class Address:
    """A TCP listening or connecting address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@frozen
class SPConfig:
    """
    One SP.  C{arbiter}, when set, is the address this SP dials to reach
    the arbiter (a different route than the arbiter's C{address}, e.g.
    through a NAT or a test relay); by default it dials that address.
    """

    id: str
    web: Address
    pb: Address
    cert: Path
    key: Path
    arbiter: Address | None = None


@frozen
class ArbiterConfig:
    """
    One arbiter process: where it listens for SPs and proxies (PB over
    mutual TLS) and its certificate, which names its C{id}.
    """

    id: str
    address: Address
    cert: Path
    key: Path


@frozen
class ProxyConfig:
    """
    The front proxy (it follows the arbiter; it never grants).

    @ivar failover_wait: how long a request waits for an active SP before
        the client gets 503 with C{Retry-After}.
    @ivar upstream_timeout: the deadline of one call to an SP (longer than
        any command's timeout, or a slow command would be cut off).
    @ivar read_timeout: the time a client has to send a whole request once
        it started one (slowloris), and to finish the TLS handshake.
    @ivar max_connections: client connections per listener; more are
        closed at once.
    @ivar max_header_bytes: the size of a request's header block.
    """

    tls: Address
    plain: Address | None
    cert: Path
    key: Path
    failover_wait: float = 10.0
    upstream_timeout: float = 60.0
    read_timeout: float = 10.0
    max_connections: int = 16384
    max_header_bytes: int = 16384


@frozen
class UserConfig:
    name: str
    role: str
    password_hash: str


@frozen
class TokenConfig:
    name: str
    role: str
    sha256: str


@frozen
class ParamConfig:
    name: str
    type: str
    required: bool
    default: str | int | None
    pattern: str | None
    max_length: int
    min: int | None
    max: int | None
    choices: tuple[str, ...]


@frozen
class CommandConfig:
    name: str
    argv: tuple[str, ...]
    timeout: float
    output_cap: int
    kill_grace: float
    service: bool
    requires_active: bool
    params: tuple[ParamConfig, ...]


@frozen
class CheckConfig:
    """
    A health check.  C{path} may contain C{{id}}, replaced by the SP's id, so
    one definition serves every SP.
    """

    name: str
    kind: str
    interval: float
    timeout: float
    fall: int
    rise: int
    critical: bool
    argv: tuple[str, ...] = ()
    path: str | None = None
    min_free_mb: float = 0.0
    max_lag: float = 0.0


@frozen
class PeerConfig:
    """
    The peer channel: the array-wide secret peers log in with (on top of
    their certificates), the timeout of every remote call, and how often a
    keepalive goes to each peer.
    """

    secret_file: Path
    timeout: float
    keepalive: float


@frozen
class TokenPolicyConfig:
    """
    The active token: heartbeats, the miss window, the SP's lease, the
    preference order, opt-in failback, and where the arbiter keeps the last
    epoch it issued.
    """

    heartbeat_interval: float
    heartbeat_misses: int
    lease_timeout: float
    preference: tuple[str, ...]
    preferred: str | None
    failback_after: float | None
    state_file: Path

    @property
    def missWindow(self) -> float:
        return self.heartbeat_interval * self.heartbeat_misses


#: Events kept by the arbiter and each SP.  The arbiter rewrites its file
#: on its reactor when it compacts: about 55 ms for 10,000 events here,
#: well inside the miss window; ten times that would not be.
MAX_HISTORY = 10_000


@frozen
class EventsConfig:
    """
    The event history: how many events the arbiter and every SP keep
    (the arbiter's file grows to twice that before it is compacted).
    """

    history: int


@frozen
class LimitsConfig:
    """
    Limits of an SP's web port (and the body and idle limits of the
    proxy's front end).

    @ivar read_timeout: a whole request within this many seconds of its
        first byte (and a TLS handshake within it), else 408 or a close.
    @ivar max_connections: client connections to an SP's web port.
    """

    max_body: int
    idle_timeout: float
    max_commands: int
    read_timeout: float = 10.0
    max_connections: int = 1024


@frozen
class ArrayConfig:
    path: Path
    name: str
    root: Path
    ca: Path
    state_dir: Path
    sps: tuple[SPConfig, ...]
    proxy: ProxyConfig | None
    users: tuple[UserConfig, ...]
    tokens: tuple[TokenConfig, ...]
    status: CommandConfig
    commands: Mapping[str, CommandConfig]
    checks: tuple[CheckConfig, ...]
    limits: LimitsConfig
    peer: PeerConfig
    token: TokenPolicyConfig
    events: EventsConfig = EventsConfig(history=1000)
    arbiters: tuple[ArbiterConfig, ...] = ()

    def arbiter(self, arbiterId: str) -> ArbiterConfig:
        """
        The arbiter called C{arbiterId}.

        @raise ConfigError: no such arbiter.
        """
        return _byId(self, self.arbiters, arbiterId, "arbiter", "arbiter.id")

    def sp(self, spId: str) -> SPConfig:
        """
        The SP called C{spId}.

        @raise ConfigError: no such SP.
        """
        return _byId(self, self.sps, spId, "SP", "sp.id")

    def stateDirFor(self, spId: str) -> Path:
        """Where the SP C{spId} keeps its state."""
        return self.state_dir / spId


def _byId(config: ArrayConfig, entries: tuple[Any, ...], wanted: str, noun: str, key: str) -> Any:
    """The entry whose C{id} is C{wanted}, or a one-line error naming the known ones."""
    for entry in entries:
        if entry.id == wanted:
            return entry
    known = ", ".join(entry.id for entry in entries) or "none"
    raise ConfigError(config.path, key, f"no {noun} {wanted!r} (known: {known})")


class _Table:
    """
    One TOML table being read: remembers which keys were taken so unknown
    keys can be reported, and names every key by its dotted path.
    """

    def __init__(self, path: Path, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, where, f"must be a table, not {_typeName(data)}")
        self.path = path
        self.where = where
        self.data = data
        self.taken: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.taken.add(name)
        if name not in self.data:
            if default is ...:
                raise self.fail(name, "missing")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python, but never a valid number here.
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(name, f"must be {_kindName(kinds)}, not bool")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise self.fail(name, f"must be {_kindName(kinds)}, not {_typeName(value)}")
        return value

    def positive(self, name: str, kind: type, default: Any = ...) -> Any:
        value = self.get(name, kind, default)
        if value is not None and value <= 0:
            raise self.fail(name, "must be greater than 0")
        return value

    def table(self, name: str, default: Any = ...) -> "_Table":
        return _Table(self.path, self.key(name), self.get(name, dict, default))

    def tables(self, name: str) -> list["_Table"]:
        items = self.get(name, list, [])
        return [_Table(self.path, f"{self.key(name)}[{i}]", d) for i, d in enumerate(items)]

    def strings(self, name: str, default: Any = ...) -> tuple[str, ...]:
        items = self.get(name, list, default)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ConfigError(
                    self.path, f"{self.key(name)}[{i}]", f"must be a string, not {_typeName(item)}"
                )
        return tuple(items)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.taken)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _typeName(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _kindName(kinds: tuple[type, ...]) -> str:
    return " or ".join(_typeName(k()) if k is not type(None) else "none" for k in kinds)


def parseAddress(table: _Table, name: str, default: Any = ...) -> Address | None:
    text = table.get(name, str, default)
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise table.fail(name, f"must be 'host:port' with a port from 1 to 65535, not {text!r}")
    return Address(host.strip("[]"), int(port))


def _path(table: _Table, root: Path, name: str, default: Any = ...) -> Path:
    value = table.get(name, str, default)
    return (root / value).resolve() if value is not None else None


def _readable(path: Path, cfg: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(cfg, key, f"cannot read {path}: {e.strerror}") from None


def checkKeyPair(cfg: Path, certKey: str, cert: Path, keyKey: str, key: Path) -> None:
    """
    Check that C{cert} and C{key} are readable PEM files that belong together.

    @raise ConfigError: naming the offending key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    certBytes = _readable(cert, cfg, certKey)
    keyBytes = _readable(key, cfg, keyKey)
    try:
        certificate = x509.load_pem_x509_certificate(certBytes)
    except ValueError:
        raise ConfigError(cfg, certKey, f"{cert} is not a PEM certificate") from None
    try:
        privateKey = load_pem_private_key(keyBytes, password=None)
    except (ValueError, TypeError):
        raise ConfigError(cfg, keyKey, f"{key} is not an unencrypted PEM private key") from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*spki) != privateKey.public_key().public_bytes(*spki):
        raise ConfigError(cfg, keyKey, f"{key} does not match the certificate {cert}")


def checkCA(config: ArrayConfig) -> None:
    """@raise ConfigError: the array CA is not a readable PEM certificate."""
    from cryptography import x509

    data = _readable(config.ca, config.path, "array.ca")
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(config.path, "array.ca", f"{config.ca} is not a PEM certificate") from None


def _parseParam(table: _Table, name: str) -> ParamConfig:
    if not _NAME_RE.match(name):
        raise ConfigError(table.path, table.where, "parameter names are letters, digits, - and _")
    kind = table.get("type", str, "string")
    if kind not in PARAM_TYPES:
        raise table.fail("type", f"must be one of {', '.join(PARAM_TYPES)}, not {kind!r}")
    pattern = table.get("pattern", str, None)
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as e:
            raise table.fail("pattern", f"is not a regular expression: {e}") from None
    choices = table.strings("choices", [])
    if kind == "enum" and not choices:
        raise table.fail("choices", "an enum parameter needs at least one choice")
    default = table.get("default", (str, int), None)
    param = ParamConfig(
        name=name,
        type=kind,
        required=table.get("required", bool, default is None),
        default=default,
        pattern=pattern,
        max_length=table.positive("max_length", int, 256),
        min=table.get("min", int, None),
        max=table.get("max", int, None),
        choices=choices,
    )
    table.done()
    return param


def _parseCommand(table: _Table, name: str) -> CommandConfig:
    argv = table.strings("argv")
    if not argv or not argv[0]:
        raise table.fail("argv", "must name a program to run")
    params = {}
    paramsTable = table.table("params", {})
    for paramName in paramsTable.data:
        params[paramName] = _parseParam(paramsTable.table(paramName), paramName)
    paramsTable.done()
    for i, arg in enumerate(argv):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(arg) if f is not None]
        except ValueError as e:
            raise ConfigError(table.path, f"{table.key('argv')}[{i}]", str(e)) from None
        for field in fields:
            if field not in params:
                raise ConfigError(
                    table.path,
                    f"{table.key('argv')}[{i}]",
                    f"uses {{{field}}} but no parameter {field!r} is declared",
                )
    if "{" in argv[0]:
        raise table.fail("argv", "the program itself cannot be a parameter")
    command = CommandConfig(
        name=name,
        argv=argv,
        timeout=table.positive("timeout", float, 10.0),
        output_cap=table.positive("output_cap", int, 65536),
        kill_grace=table.positive("kill_grace", float, 2.0),
        service=table.get("service", bool, False),
        requires_active=table.get("requires_active", bool, False),
        params=tuple(params.values()),
    )
    table.done()
    return command


def _parseCheck(table: _Table, root: Path) -> CheckConfig:
    name = table.get("name", str)
    kind = table.get("kind", str)
    if kind not in CHECK_KINDS:
        raise table.fail("kind", f"must be one of {', '.join(CHECK_KINDS)}, not {kind!r}")
    fields: dict[str, Any] = {}
    if kind == "exec":
        fields["argv"] = table.strings("argv")
        if not fields["argv"] or not fields["argv"][0]:
            raise table.fail("argv", "must name a program to run")
    if kind in ("disk_free", "maintenance_file"):
        fields["path"] = str(root / table.get("path", str))
    if kind == "disk_free":
        fields["min_free_mb"] = table.positive("min_free_mb", float)
    if kind == "reactor_lag":
        fields["max_lag"] = table.positive("max_lag", float)
    check = CheckConfig(
        name=name,
        kind=kind,
        interval=table.positive("interval", float, 1.0),
        timeout=table.positive("timeout", float, 5.0),
        fall=table.positive("fall", int, 3),
        rise=table.positive("rise", int, 2),
        critical=table.get("critical", bool, True),
        **fields,
    )
    table.done()
    return check


def _parsePasswordHash(table: _Table, root: Path) -> str:
    from spmgmt.passwords import isPasswordHash

    inline = table.get("password_hash", str, None)
    fileName = table.get("password_hash_file", str, None)
    if (inline is None) == (fileName is None):
        raise table.fail("password_hash", "give exactly one of password_hash or password_hash_file")
    key = "password_hash"
    if fileName is not None:
        key = "password_hash_file"
        inline = _readable(root / fileName, table.path, table.key(key)).decode("ascii", "replace").strip()
    if not isPasswordHash(inline):
        raise table.fail(key, "is not a hash made by 'python -m spmgmt.passwords'")
    return inline


def parseConfig(path: str | Path) -> ArrayConfig:
    """
    Read and validate the configuration file at C{path}.

    Checks structure, values and cross references (duplicate ids, port
    clashes); certificate files are checked by L{checkKeyPair} and L{checkCA}
    for the process that will use them, since in production each host holds
    only its own keys.

    @raise ConfigError: the first problem found.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(path, "(file)", f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "(file)", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "(syntax)", str(e)) from None
    top = _Table(path, "", raw)

    array = top.table("array")
    root = (path.parent / array.get("root", str, ".")).resolve()
    name = array.get("name", str)
    ca = _path(array, root, "ca")
    stateDir = _path(array, root, "state_dir", "var/state")
    array.done()

    sps = []
    seen: dict[str, str] = {}

    def claim(address: Address | None, key: str) -> None:
        if address is None:
            return
        if str(address) in seen:
            raise ConfigError(path, key, f"{address} is already used by {seen[str(address)]}")
        seen[str(address)] = key

    for table in top.tables("sp"):
        spId = table.get("id", str)
        if not _ID_RE.match(spId):
            raise table.fail("id", "must be lower-case letters, digits, - or _, starting with a letter")
        if any(sp.id == spId for sp in sps):
            raise table.fail("id", f"duplicate SP id {spId!r}")
        sp = SPConfig(
            id=spId,
            web=parseAddress(table, "web"),
            pb=parseAddress(table, "pb"),
            cert=_path(table, root, "cert"),
            key=_path(table, root, "key"),
            arbiter=parseAddress(table, "arbiter", None),
        )
        claim(sp.web, table.key("web"))
        claim(sp.pb, table.key("pb"))
        table.done()
        sps.append(sp)
    if not sps:
        raise top.fail("sp", "at least one [[sp]] is needed")

    arbiters: list[ArbiterConfig] = []
    for table in top.tables("arbiter"):
        arbiterId = table.get("id", str)
        if not _ID_RE.match(arbiterId):
            raise table.fail("id", "must be lower-case letters, digits, - or _, starting with a letter")
        if arbiterId == "proxy" or any(sp.id == arbiterId for sp in sps):
            raise table.fail("id", f"{arbiterId!r} is already an SP or the proxy (each certificate names one role)")
        if any(a.id == arbiterId for a in arbiters):
            raise table.fail("id", f"duplicate arbiter id {arbiterId!r}")
        arbiter = ArbiterConfig(
            id=arbiterId,
            address=parseAddress(table, "address"),
            cert=_path(table, root, "cert"),
            key=_path(table, root, "key"),
        )
        claim(arbiter.address, table.key("address"))
        table.done()
        arbiters.append(arbiter)
    if len(arbiters) > 1:
        raise top.fail("arbiter", "only one [[arbiter]] is supported (with the file coordinator)")

    proxy = None
    if "proxy" in raw:
        table = top.table("proxy")
        if "arbiter" in table.data:
            raise table.fail(
                "arbiter", "moved: the arbiter is a process of its own; give its address in [[arbiter]] address"
            )
        if not arbiters:
            raise top.fail("arbiter", "the proxy follows an arbiter: add an [[arbiter]] table")
        proxy = ProxyConfig(
            tls=parseAddress(table, "tls"),
            plain=parseAddress(table, "plain", None),
            cert=_path(table, root, "cert"),
            key=_path(table, root, "key"),
            failover_wait=table.positive("failover_wait", float, 10.0),
            upstream_timeout=table.positive("upstream_timeout", float, 60.0),
            read_timeout=table.positive("read_timeout", float, 10.0),
            max_connections=table.positive("max_connections", int, 16384),
            max_header_bytes=table.positive("max_header_bytes", int, 16384),
        )
        claim(proxy.tls, "proxy.tls")
        claim(proxy.plain, "proxy.plain")
        table.done()

    users = []
    for table in top.tables("users"):
        user = UserConfig(
            name=table.get("name", str),
            role=table.get("role", str),
            password_hash=_parsePasswordHash(table, root),
        )
        if user.role not in ROLES:
            raise table.fail("role", f"must be one of {', '.join(ROLES)}, not {user.role!r}")
        if any(u.name == user.name for u in users):
            raise table.fail("name", f"duplicate user {user.name!r}")
        table.done()
        users.append(user)

    tokens = []
    for table in top.tables("tokens"):
        token = TokenConfig(
            name=table.get("name", str),
            role=table.get("role", str),
            sha256=table.get("sha256", str).lower(),
        )
        if token.role not in ROLES:
            raise table.fail("role", f"must be one of {', '.join(ROLES)}, not {token.role!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", token.sha256):
            raise table.fail("sha256", "must be the hex SHA-256 of the token (64 hex digits)")
        if any(u.name == token.name for u in users) or any(t.name == token.name for t in tokens):
            # One namespace of roles: a token named like a user would hand
            # the user the token's role.
            raise table.fail("name", f"{token.name!r} is already a user or token name")
        table.done()
        tokens.append(token)

    commands = {}
    commandsTable = top.table("commands", {})
    for commandName in commandsTable.data:
        if not _NAME_RE.match(commandName):
            raise commandsTable.fail(commandName, "command names are letters, digits, - and _")
        commands[commandName] = _parseCommand(commandsTable.table(commandName), commandName)
    commandsTable.done()

    status = _parseCommand(top.table("status"), "status")
    if status.params:
        raise top.fail("status.params", "the status command takes no parameters")

    checks = []
    for table in top.tables("checks"):
        check = _parseCheck(table, root)
        if any(c.name == check.name for c in checks):
            raise table.fail("name", f"duplicate check {check.name!r}")
        checks.append(check)

    if proxy is not None:
        slowest = max([status, *commands.values()], key=lambda c: c.timeout + c.kill_grace)
        if proxy.upstream_timeout <= slowest.timeout + slowest.kill_grace:
            raise ConfigError(
                path,
                "proxy.upstream_timeout",
                f"must be longer than the slowest command ({slowest.name}: "
                f"{slowest.timeout + slowest.kill_grace:g} s with its kill grace)",
            )

    limits = top.table("limits", {})
    limitsConfig = LimitsConfig(
        max_body=limits.positive("max_body", int, 1024 * 1024),
        idle_timeout=limits.positive("idle_timeout", float, 3600.0),
        max_commands=limits.positive("max_commands", int, 16),
        read_timeout=limits.positive("read_timeout", float, 10.0),
        max_connections=limits.positive("max_connections", int, 1024),
    )
    limits.done()

    peer = top.table("peer", {})
    peerConfig = PeerConfig(
        secret_file=_path(peer, root, "secret_file", "var/secrets/peer.secret"),
        timeout=peer.positive("timeout", float, 2.0),
        keepalive=peer.positive("keepalive", float, 0.5),
    )
    peer.done()

    token = top.table("token", {})
    interval = token.positive("heartbeat_interval", float, 0.1)
    misses = token.positive("heartbeat_misses", int, 3)
    ids = [sp.id for sp in sps]
    preference = token.strings("preference", ids)
    for i, spId in enumerate(preference):
        if spId not in ids:
            raise ConfigError(path, f"token.preference[{i}]", f"no SP {spId!r}")
    preferred = token.get("preferred", str, None)
    failbackAfter = token.positive("failback_after", float, None)
    if (preferred is None) != (failbackAfter is None):
        raise token.fail("preferred", "failback needs both preferred and failback_after")
    if preferred is not None and preferred not in ids:
        raise token.fail("preferred", f"no SP {preferred!r}")
    tokenConfig = TokenPolicyConfig(
        heartbeat_interval=interval,
        heartbeat_misses=misses,
        # As long as the arbiter's miss window: a stall too short to move
        # the token is too short to make the SP step down (no false
        # failover), and epochs fence the rest.
        lease_timeout=token.positive("lease_timeout", float, interval * misses),
        preference=tuple(preference),
        preferred=preferred,
        failback_after=failbackAfter,
        state_file=_path(token, root, "state_file", "var/state/arbiter/epoch.json"),
    )
    if tokenConfig.lease_timeout > tokenConfig.missWindow:
        raise token.fail(
            "lease_timeout",
            f"must not exceed heartbeat_interval x heartbeat_misses ({tokenConfig.missWindow:g}s): "
            "an SP must step down before another can be granted",
        )
    token.done()

    events = top.table("events", {})
    eventsConfig = EventsConfig(history=events.positive("history", int, 1000))
    if eventsConfig.history > MAX_HISTORY:
        raise events.fail("history", f"must be at most {MAX_HISTORY}")
    events.done()
    top.done()

    return ArrayConfig(
        path=path,
        name=name,
        root=root,
        ca=ca,
        state_dir=stateDir,
        sps=tuple(sps),
        proxy=proxy,
        users=tuple(users),
        tokens=tuple(tokens),
        status=status,
        commands=commands,
        checks=tuple(checks),
        limits=limitsConfig,
        peer=peerConfig,
        token=tokenConfig,
        events=eventsConfig,
        arbiters=tuple(arbiters),
    )


def readPeerSecret(config: ArrayConfig) -> bytes:
    """
    The array's peer secret.

    @raise ConfigError: unreadable, or too short to be a secret.
    """
    secret = _readable(config.peer.secret_file, config.path, "peer.secret_file").strip()
    if len(secret) < 16:
        raise ConfigError(config.path, "peer.secret_file", f"{config.peer.secret_file} holds fewer than 16 bytes")
    return secret


def loadForArbiter(path: str | Path, arbiterId: str) -> tuple[ArrayConfig, ArbiterConfig]:
    """
    Parse the configuration and check what the arbiter C{arbiterId} will
    use: its certificate and key, the array CA and the peer secret.

    @raise ConfigError: the first problem found.
    """
    config = parseConfig(path)
    arbiter = config.arbiter(arbiterId)
    _checkIdentity(config, f"arbiter[{config.arbiters.index(arbiter)}]", arbiter.cert, arbiter.key)
    return config, arbiter


def loadForProxy(path: str | Path) -> ArrayConfig:
    """
    Parse the configuration and check what the proxy will use: its
    certificate and key (also its client certificate towards SPs and the
    arbiter), the array CA and the peer secret.

    @raise ConfigError: the first problem found, or no [proxy] table.
    """
    config = parseConfig(path)
    if config.proxy is None:
        raise ConfigError(config.path, "proxy", "missing: the proxy needs a [proxy] table")
    _checkIdentity(config, "proxy", config.proxy.cert, config.proxy.key)
    return config


def loadForSP(path: str | Path, spId: str) -> tuple[ArrayConfig, SPConfig]:
    """
    Parse the configuration and check everything the SP C{spId} will use:
    its own certificate and key, and the array CA.

    @raise ConfigError: the first problem found.
    """
    config = parseConfig(path)
    sp = config.sp(spId)
    _checkIdentity(config, f"sp[{config.sps.index(sp)}]", sp.cert, sp.key)
    return config, sp


def _checkIdentity(config: ArrayConfig, table: str, cert: Path, key: Path) -> None:
    """The array CA, this process's certificate and key under C{table}, and the peer secret."""
    checkCA(config)
    checkKeyPair(config.path, f"{table}.cert", cert, f"{table}.key", key)
    readPeerSecret(config)

