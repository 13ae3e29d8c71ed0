# -*- test-case-name: tests.test_harness -*-
"""
A harness that runs a real array for integration tests: each SP is a real
C{twistd} process on 127.0.0.1 with ephemeral ports, a temporary
configuration, generated certificates and real TLS.

Processes are started with C{spawnProcess} (the test's reactor keeps
running) behind a tiny exec wrapper that asks the kernel to SIGKILL them if
the test runner dies (C{PR_SET_PDEATHSIG}), so no process outlives an
interrupted run; L{ArrayHarness.stopAll} ends them in a normal cleanup.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterable

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from spmgmt.config import ArrayConfig, parseConfig
from spmgmt.launcher import ensureSecrets, twistdArgv
from spmgmt.pki import ensurePKI
from spmgmt.testing.relay import Relay
from spmgmt.tls import clientOptions

# Exec the real program with PR_SET_PDEATHSIG (1) = SIGKILL.
_PDEATHSIG_EXEC = (
    "import ctypes,os,signal,sys;"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL);"
    "os.getppid() == int(sys.argv[1]) or os._exit(1);"
    "os.execv(sys.argv[2], sys.argv[2:])"
)

DEFAULT_CHECKS = """
[[checks]]
name = "maintenance"
kind = "maintenance_file"
path = "var/{id}.maintenance"
interval = 0.2
fall = 1
rise = 1

[[checks]]
name = "reactor"
kind = "reactor_lag"
max_lag = 0.5
interval = 0.5
fall = 3
rise = 1
"""

DEFAULT_COMMANDS = """
[commands.uptime]
argv = ["uptime"]
service = true

[commands.echo]
argv = ["printf", "%s\\\\n", "{message}"]
output_cap = 4096
[commands.echo.params.message]
type = "string"
max_length = 200

[commands.sleep]
argv = ["sleep", "{seconds}"]
timeout = 20.0
[commands.sleep.params.seconds]
type = "int"
min = 0
max = 15

[commands.flood]
argv = ["head", "-c", "100000000", "/dev/zero"]
output_cap = 65536
timeout = 20.0

[commands.failover-drill]
argv = ["true"]
requires_active = true
"""


def temporaryDirectory(testCase: Any) -> Path:
    """
    A new empty directory, removed after the test.

    Not C{self.mktemp()}: outside trial's runner (under pytest) it makes its
    directories under the current directory, that is in the checkout.
    """
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="spmgmt-test-"))
    testCase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def freePorts(count: int) -> list[int]:
    """
    C{count} distinct ephemeral TCP ports on 127.0.0.1 that were free a
    moment ago (all sockets stay open until every port is chosen, so the
    kernel cannot hand out one twice).
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


async def endProcesses(procs: Iterable[_Process]) -> None:
    """SIGCONT (for stopped ones), then SIGKILL, every process still running; wait for each to end."""
    waiting = []
    for proto in procs:
        if proto.ended.called or proto.pid is None:
            continue
        for signum in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(proto.pid, signum)
            except ProcessLookupError:
                pass
        waiting.append(proto.ended)
    await DeferredList(waiting)


@implementer(IPolicyForHTTPS)
class _ByPortPolicy:
    """Expect, on each SP's web port, that SP's certificate from the array CA."""

    def __init__(self, config: ArrayConfig, proxyPorts: Iterable[int] = ()) -> None:
        self._creators = {
            sp.web.port: clientOptions(sp.id, config.ca, acceptableProtocols=[b"http/1.1"])
            for sp in config.sps
        }
        for port in proxyPorts:
            self._creators[port] = clientOptions("proxy", config.ca, acceptableProtocols=[b"http/1.1"])

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self._creators[port]


class _Process(ProcessProtocol):
    """Keeps a child's stdout and stderr (early errors) and its end."""

    def __init__(self, out: Path) -> None:
        self._out = out.open("ab")
        self.ended: Deferred[Any] = Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self._out.close()
        self.ended.callback(reason.value)


@define
class Response:
    """An HTTP answer as the tests look at it."""

    code: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


@define
class ArrayHarness:
    """
    A real array of SP processes under one temporary directory.

    @ivar directory: holds etc/spmgmt.toml, var/pki, var/secrets, var/log.
    @ivar controlRelay: SP ids whose control link to the arbiter goes
        through a fault-injecting L{Relay} (needs C{arbiter=True}): their
        C{[[sp]] arbiter} is the relay's port, the relay dials
        the arbiter's address.  L{start} starts the relays before any process
        and L{stopAll} stops them.
    @ivar relays: those relays, by SP id.
    """

    reactor: Any
    directory: Path
    spIds: tuple[str, ...] = ("spa", "spb")
    arbiter: bool = False
    checks: str = DEFAULT_CHECKS
    commands: str = DEFAULT_COMMANDS
    extra: str = ""
    #: Lines added inside the C{[proxy]} table (with C{arbiter=True}).
    proxyExtra: str = ""
    #: Proxies beside C{proxy} (C{proxy2}, ...), each with a configuration
    #: of its own that differs only in the C{[proxy]} ports, as two proxy
    #: hosts would share one file but bind their own addresses.
    extraProxies: int = 0
    #: The configuration file and its parsed form of each proxy, by name.
    proxyConfigs: dict[str, tuple[Path, ArrayConfig]] = field(init=False, factory=dict)
    config: ArrayConfig = field(init=False)
    configPath: Path = field(init=False)
    passwords: dict[str, str] = field(init=False, factory=dict)
    #: Extra environment per process name (e.g. SPMGMT_CRASH_AT for the proxy).
    environment: dict[str, dict[str, str]] = field(factory=dict)
    controlRelay: tuple[str, ...] = ()
    relays: dict[str, Relay] = field(init=False, factory=dict)
    _procs: dict[str, _Process] = field(init=False, factory=dict)
    _pool: HTTPConnectionPool = field(init=False)
    _agent: Agent = field(init=False)

    def __attrs_post_init__(self) -> None:
        unknown = set(self.controlRelay) - set(self.spIds)
        if unknown or (self.controlRelay and not self.arbiter):
            raise ValueError(f"controlRelay needs arbiter=True and SPs of this array (not {sorted(unknown)})")
        self.directory = Path(self.directory).resolve()
        var = self.directory / "var"
        (self.directory / "etc").mkdir(parents=True, exist_ok=True)
        for sub in ("run", "log"):
            (var / sub).mkdir(parents=True, exist_ok=True)
        ensureSecrets(var / "secrets")
        self.passwords = {
            user: (var / "secrets" / f"{user}.password").read_text().strip()
            for user in ("admin", "monitor")
        }
        ensurePKI(var / "pki", list(self.spIds) + ["arbiter", "proxy"])
        self.configPath = self.directory / "etc" / "spmgmt.toml"
        text = self._configText()
        self.configPath.write_text(text)
        self.config = parseConfig(self.configPath)
        self.proxyConfigs = {"proxy": (self.configPath, self.config)}
        for i in range(2, 2 + self.extraProxies):
            assert self.config.proxy is not None
            tls, plain = freePorts(2)
            own = text.replace(f'tls = "{self.config.proxy.tls}"', f'tls = "127.0.0.1:{tls}"', 1).replace(
                f'plain = "{self.config.proxy.plain}"', f'plain = "127.0.0.1:{plain}"', 1
            )
            path = self.directory / "etc" / f"spmgmt-proxy{i}.toml"
            path.write_text(own)
            self.proxyConfigs[f"proxy{i}"] = (path, parseConfig(path))
        if self.config.arbiters:
            address = self.config.arbiter("arbiter").address
            target = (address.host, address.port)
            for spId in self.controlRelay:
                self.relays[spId] = Relay(self.reactor, target, name=f"{spId} control link")
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool.retryAutomatically = False
        proxyPorts = [c.proxy.tls.port for _, c in self.proxyConfigs.values() if c.proxy is not None]
        self._agent = Agent(self.reactor, contextFactory=_ByPortPolicy(self.config, proxyPorts), pool=self._pool)

    @property
    def names(self) -> list[str]:
        """
        Every process of the array, the arbiter and the proxy (if any)
        last: SPs that are already up all join within the arbiter's startup
        grace, so the token goes by preference even on a loaded machine.
        """
        proxies = ["proxy"] + [f"proxy{i}" for i in range(2, 2 + self.extraProxies)]
        return list(self.spIds) + (["arbiter", *proxies] if self.arbiter else [])

    def _configText(self) -> str:
        ports = iter(freePorts(2 * len(self.spIds) + 3 + len(self.controlRelay)))
        relayed = {spId: f'arbiter = "127.0.0.1:{next(ports)}"' for spId in self.controlRelay}
        sps = "".join(
            textwrap.dedent(
                f"""
                [[sp]]
                id = "{spId}"
                web = "127.0.0.1:{next(ports)}"
                pb = "127.0.0.1:{next(ports)}"
                cert = "var/pki/{spId}.pem"
                key = "var/pki/{spId}.key"
                """
            )
            + relayed.get(spId, "")
            + "\n"
            for spId in self.spIds
        )
        head = textwrap.dedent(
            """
            [array]
            name = "testarray"
            root = ".."
            ca = "var/pki/ca.pem"
            state_dir = "var/state"

            [[users]]
            name = "admin"
            role = "admin"
            password_hash_file = "var/secrets/admin.hash"

            [[users]]
            name = "monitor"
            role = "monitor"
            password_hash_file = "var/secrets/monitor.hash"

            [status]
            argv = ["uname", "-a"]
            timeout = 5.0
            """
        )
        proxy = ""
        if self.arbiter:
            proxy = textwrap.dedent(
                f"""
                [[arbiter]]
                id = "arbiter"
                address = "127.0.0.1:{next(ports)}"
                cert = "var/pki/arbiter.pem"
                key = "var/pki/arbiter.key"

                [proxy]
                tls = "127.0.0.1:{next(ports)}"
                plain = "127.0.0.1:{next(ports)}"
                cert = "var/pki/proxy.pem"
                key = "var/pki/proxy.key"
                """
            ) + textwrap.dedent(self.proxyExtra).strip() + "\n"
        return head + sps + proxy + self.checks + self.commands + self.extra

    # -- processes -----------------------------------------------------------

    def path(self, relative: str) -> Path:
        """A path inside the array's directory."""
        return self.directory / relative

    def startProcess(self, name: str) -> None:
        """Start C{name} (an SP id or C{proxy}); see L{waitReady}."""
        var = self.directory / "var"
        configPath = self.proxyConfigs[name][0] if name in self.proxyConfigs else self.configPath
        argv = twistdArgv(sys.executable, configPath, name, var, [a.id for a in self.config.arbiters])
        wrapped = [sys.executable, "-c", _PDEATHSIG_EXEC, str(os.getpid()), *argv]
        proto = _Process(var / "log" / f"{name}.out")
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME", "PYTHONPATH")}
        env.update(self.environment.get(name, {}))
        self.reactor.spawnProcess(proto, wrapped[0], wrapped, env=env, path=str(self.directory))
        self._procs[name] = proto

    startSP = startProcess

    async def start(self, timeout: float = 30.0) -> None:
        """Start the relays, then every process, and wait until each is ready."""
        for spId, relay in self.relays.items():
            address = self.config.sp(spId).arbiter
            assert address is not None
            await relay.listen(address.port)
        for name in self.names:
            self.startProcess(name)
        for name in self.names:
            await self.waitReady(name, timeout)

    def pid(self, spId: str) -> int:
        proto = self._procs[spId]
        assert proto.pid is not None
        return proto.pid

    def signal(self, spId: str, signum: int) -> None:
        """Send C{signum} to the SP's process (SIGKILL, SIGSTOP, SIGCONT...)."""
        os.kill(self.pid(spId), signum)

    async def kill(self, spId: str) -> None:
        """SIGKILL the SP and wait until it is gone."""
        self.signal(spId, signal.SIGKILL)
        await self._procs[spId].ended

    async def restart(self, spId: str, timeout: float = 30.0) -> None:
        """Kill the SP if it runs, start it again and wait until it is ready."""
        proto = self._procs.get(spId)
        if proto is not None and not proto.ended.called:
            await self.kill(spId)
        self.startProcess(spId)
        await self.waitReady(spId, timeout)

    async def waitReady(self, name: str, timeout: float = 30.0) -> None:
        """
        Poll until C{name} is ready (an SP or the proxy answers
        C{/healthz}, the arbiter accepts connections); fail if the process
        ends.
        """
        if name == "arbiter":
            from twisted.internet.threads import deferToThread

            from spmgmt.launcher import portOpen

            address = self.config.arbiter(name).address

            async def listening() -> bool:
                return bool(await deferToThread(portOpen, address.host, address.port))

            await self.waitFor(listening, timeout, "the arbiter to listen", name)
            return
        await self.waitFor(lambda: self._healthzOK(name), timeout, f"{name} to answer /healthz", name)

    async def array(self, via: str) -> dict[str, Any]:
        """C{GET /api/v1/array} on C{via}."""
        return (await self.request(via, "GET", "/api/v1/array")).json()  # type: ignore[no-any-return]

    async def waitHolder(self, via: str, holder: str | None, timeout: float = 15.0) -> dict[str, Any]:
        """
        Wait until C{via} reports C{holder} holding the token (L{None}: the
        array unavailable); the token then.
        """
        seen: dict[str, Any] = {}

        async def holds() -> bool:
            try:
                answer = await self.request(via, "GET", "/api/v1/array")
            except Exception:
                return False
            if answer.code != 200:
                return False  # e.g. the proxy's 503 while no SP is active
            view = answer.json()
            seen.update(view)
            if holder is None:
                return view["state"] == "unavailable"
            return view["state"] == "active" and view["token"]["holder"] == holder

        await self.waitFor(holds, timeout, f"{via} to report holder {holder}", via, interval=0.02)
        return seen["token"]  # type: ignore[no-any-return]

    async def _healthzOK(self, spId: str) -> bool:
        try:
            return (await self.request(spId, "GET", "/healthz", user=None)).code == 200
        except Exception:
            return False

    async def waitFor(
        self, predicate: Any, timeout: float, what: str, spId: str | None = None, interval: float = 0.05
    ) -> None:
        """
        Poll the async C{predicate} until it is true; raise with C{what} and
        the SP's log once C{timeout} passes.
        """
        deadline = self.reactor.seconds() + timeout
        while True:
            if spId is not None and self._procs[spId].ended.called:
                raise AssertionError(f"{spId} exited while waiting for {what}:\n{self.logTail(spId)}")
            if await predicate():
                return
            if self.reactor.seconds() > deadline:
                tail = self.logTail(spId) if spId else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
            await deferLater(self.reactor, interval, lambda: None)

    def logTail(self, spId: str, lines: int = 80) -> str:
        """The end of the SP's twistd log and early output."""
        out = []
        for suffix in ("log", "out"):
            path = self.directory / "var" / "log" / f"{spId}.{suffix}"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(out)

    async def stopAll(self) -> None:
        """End every process (SIGCONT first, for stopped ones), the relays and the pool."""
        await endProcesses(self._procs.values())
        await DeferredList([relay.stop() for relay in self.relays.values()])
        await self._pool.closeCachedConnections()

    # -- HTTP ------------------------------------------------------------------

    def url(self, spId: str, path: str) -> str:
        """The URL of C{path} on an SP, or on a proxy's TLS front end (C{"proxy"}, C{"proxy2"}, ...)."""
        if spId in self.proxyConfigs:
            proxy = self.proxyConfigs[spId][1].proxy
            assert proxy is not None
            address = proxy.tls
        else:
            address = self.config.sp(spId).web
        return f"https://{address.host}:{address.port}{path}"

    async def request(
        self,
        spId: str,
        method: str,
        path: str,
        user: str | None = "admin",
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """One HTTPS request to an SP (or C{"proxy"}), as C{user} (Basic auth) or anonymous."""
        import treq
        from treq.client import HTTPClient

        client = HTTPClient(self._agent)
        allHeaders = dict(headers or {})
        kwargs: dict[str, Any] = {"headers": allHeaders, "timeout": timeout}
        if user is not None:
            kwargs["auth"] = (user, self.passwords[user])
        if body is not None:
            kwargs["json"] = body
        response = await client.request(method, self.url(spId, path), **kwargs)
        content = await treq.content(response)
        return Response(response.code, response.headers, content)


class ArrayTestMixin:
    """
    For trial C{TestCase}s that run a real array: starts it, and in cleanup
    ends every process and, if the test failed, prints each SP's log tail
    (pytest shows it with the failure; trial prints it).
    """

    async def startArray(self, **kwargs: Any) -> ArrayHarness:
        import shutil
        import tempfile

        from twisted.internet import reactor

        directory = Path(tempfile.mkdtemp(prefix="spmgmt-array-"))
        harness = ArrayHarness(reactor, directory, **kwargs)
        self.addCleanup(shutil.rmtree, directory, True)  # type: ignore[attr-defined]
        self.addCleanup(self._endArray, harness)  # type: ignore[attr-defined]
        await harness.start()
        return harness

    async def _endArray(self, harness: ArrayHarness) -> None:
        # trial sets _passed once the test method itself has succeeded,
        # before cleanups run; absent means it did not.
        if not getattr(self, "_passed", False):
            for name in harness.names:
                print(f"\n===== {name} =====\n{harness.logTail(name)}")
        await harness.stopAll()


def sampleConfig(directory: Path) -> ArrayConfig:
    """
    The sample C{etc/spmgmt.toml} of this checkout, parsed with its root
    moved to C{directory}, where the secrets it names are generated: tests
    of the sample never depend on what C{make run} left in C{var/}.
    """
    sample = Path(__file__).resolve().parent.parent.parent / "etc" / "spmgmt.toml"
    text = sample.read_text().replace('root = ".."', f"root = {str(directory)!r}", 1)
    ensureSecrets(Path(directory) / "var" / "secrets")
    path = Path(directory) / "spmgmt.toml"
    path.write_text(text)
    return parseConfig(path)
