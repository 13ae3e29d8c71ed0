"""
C{spmgmtctl}, the real console script, run as a child process against a
real array behind its proxy: every command with and without C{--json}, how
it finds its settings, its exit codes, and C{watch} across a failover.

The CLI runs in an empty directory unless a test says otherwise, so it can
never pick up the C{var/} of the checkout the tests run from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from spmgmt.pki import ensurePKI
from spmgmt.testing import ArrayHarness, ArrayTestMixin, freePorts, temporaryDirectory

SPMGMTCTL = Path(sys.executable).parent / "spmgmtctl"
TOKEN = "ci-bearer-token-for-spmgmtctl"
TOKENS = f"""
[[tokens]]
name = "ci"
role = "monitor"
sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
"""
#: A wide miss window (2 s): a loaded machine (or this file's own bursts of
#: processes) must move no token.  A SIGKILLed holder still loses it at once:
#: the arbiter sees its connection close.
WIDE_WINDOW = """
[token]
heartbeat_interval = 0.2
heartbeat_misses = 10
"""
FAILOVER = re.compile(r"failover: (\w+) -> (\w+) \(epoch (\d+) -> (\d+)\), gap (\d+\.\d+) s")


class Result:
    """How one run of spmgmtctl ended."""

    def __init__(self, code: int | None, signal: int | None, out: bytes, err: bytes) -> None:
        self.code, self.signal = code, signal
        self.out = out.decode("utf-8", "replace")
        self.err = err.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"<exit {self.code} signal {self.signal}\nstdout:\n{self.out}\nstderr:\n{self.err}>"


class CLI(ProcessProtocol):
    """A running spmgmtctl: its output so far, and a Deferred L{Result}."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred[Result] = Deferred()
        self._waiting: list[tuple[Callable[[str], bool], Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data
        text = self.text
        for item in list(self._waiting):
            if item[0](text):
                self._waiting.remove(item)
                item[1].callback(None)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace")

    def waitOutput(self, predicate: Callable[[str], bool]) -> Deferred[None]:
        """Fires once stdout so far satisfies C{predicate} (fails if the process ends first)."""
        d: Deferred[None] = Deferred()
        if predicate(self.text):
            d.callback(None)
        elif self.ended.called:
            d.errback(AssertionError(f"spmgmtctl ended first:\n{self.text}\n{self.err.decode()}"))
        else:
            self._waiting.append((predicate, d))
        return d

    def interrupt(self) -> None:
        """Ctrl-C."""
        self.transport.signalProcess("INT")

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        result = Result(value.exitCode, value.signal, bytes(self.out), bytes(self.err))
        for _, d in self._waiting:
            d.errback(AssertionError(f"spmgmtctl ended while waited for: {result!r}"))
        self._waiting = []
        self.ended.callback(result)


def environment(**extra: str) -> dict[str, str]:
    """A clean environment: none of the runner's SPMGMT_* variables leak in."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env.update(extra)
    return env


def spawn(argv: list[str], cwd: Path, env: dict[str, str] | None = None, usePTY: bool = False) -> CLI:
    if not SPMGMTCTL.exists():
        raise AssertionError(
            f"{SPMGMTCTL} is missing: pip install -e '.[test]' --config-settings editable_mode=compat"
        )
    proto = CLI()
    args = [str(SPMGMTCTL), *argv]
    reactor.spawnProcess(proto, args[0], args, env=env or environment(), path=str(cwd), usePTY=usePTY)
    return proto


class CLITestMixin:
    """Runs spmgmtctl, by default with every setting on the command line."""

    array: ArrayHarness
    #: An empty directory to run in: nothing there to discover.
    nowhere: Path

    def options(self, user: str = "admin") -> list[str]:
        return [
            "--url", self.array.url("proxy", ""),
            "--cacert", str(self.array.config.ca),
            "--user", user,
            "--password-file", str(self.array.path(f"var/secrets/{user}.password")),
        ]

    def spawn(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, usePTY: bool = False) -> CLI:
        """L{spawn}, and SIGKILL it in cleanup if a failed test left it running."""
        cli = spawn(argv, cwd, env, usePTY)

        async def reap() -> None:
            if not cli.ended.called:
                cli.transport.signalProcess("KILL")
                await cli.ended

        self.addCleanup(reap)  # type: ignore[attr-defined]
        return cli

    def ctl(self, *argv: str, user: str | None = "admin", cwd: Path | None = None,
            env: dict[str, str] | None = None) -> CLI:
        options = self.options(user) if user is not None else []
        return self.spawn([*options, *argv], cwd or self.nowhere, env)

    def runCtl(self, *argv: str, **kwargs: Any) -> Deferred[Result]:
        return self.ctl(*argv, **kwargs).ended

    async def runAll(self, runs: dict[str, Callable[[], CLI]]) -> dict[str, Result]:
        """Every run, a few at a time (a burst of starting processes starves the array's heartbeats)."""
        slots = DeferredSemaphore(3)
        results = await gatherResults([slots.run(lambda start=start: start().ended) for start in runs.values()])
        return dict(zip(runs, results))

    def assertOK(self, result: Result) -> str:
        self.assertEqual((result.code, result.err), (0, ""), result)  # type: ignore[attr-defined]
        return result.out

    def assertFails(self, result: Result, code: int, line: str) -> None:
        """Exit C{code}, nothing on stdout, and exactly the one line C{line} (a regex) on stderr."""
        self.assertEqual(result.code, code, result)  # type: ignore[attr-defined]
        self.assertEqual(result.out, "", result)  # type: ignore[attr-defined]
        self.assertNotIn("Traceback", result.err)  # type: ignore[attr-defined]
        self.assertEqual(len(result.err.splitlines()), 1, result)  # type: ignore[attr-defined]
        self.assertRegex(result.err.rstrip("\n"), "^spmgmtctl: " + line + "$")  # type: ignore[attr-defined]


async def settled(array: ArrayHarness) -> int:
    """
    Wait until spa holds the token and, through the proxy, every SP is
    reachable with a role (the peer links are up: the tables are complete);
    the epoch.
    """
    token = await array.waitHolder("proxy", "spa")

    async def everyone() -> bool:
        try:
            view = (await array.request("proxy", "GET", "/api/v1/array")).json()
            return all(sp.get("reachable") and sp.get("role") in ("active", "passive") for sp in view["sps"])
        except Exception:
            return False

    await array.waitFor(everyone, 15.0, "every SP reachable through the proxy")
    return int(token["epoch"])


def rows(table: str) -> dict[str, list[str]]:
    """A human table's rows by their first cell."""
    return {cells[0]: cells for cells in (line.split() for line in table.splitlines()) if cells}


class UsageTests(CLITestMixin, TestCase):
    """What needs no array: usage errors, --help, a closed port, missing files."""

    def setUp(self) -> None:
        self.nowhere = temporaryDirectory(self)

    async def test_usageErrorsExit2(self) -> None:
        """Every malformed command line exits 2 with argparse's message, never a traceback."""
        bad = [
            [],
            ["frobnicate"],
            ["run", "spa"],
            ["run", "spa", "echo", "message"],
            ["run", "spa", "echo", "message=a", "message=b"],
            ["sp", "spa", "bogus"],
            ["events", "--since", "x"],
            ["events", "--since", "-1"],
            ["watch", "--interval", "0"],
            ["watch", "--count", "0"],
            ["--token", "t", "--user", "admin", "sps"],
        ]
        results = await gatherResults([self.spawn(argv, self.nowhere).ended for argv in bad])
        for argv, result in zip(bad, results):
            self.assertEqual(result.code, 2, (argv, result))
            self.assertEqual(result.out, "", (argv, result))
            self.assertIn("spmgmtctl", result.err, (argv, result))
            self.assertNotIn("Traceback", result.err, (argv, result))
        helped = await self.spawn(["--help"], self.nowhere).ended
        self.assertEqual(helped.code, 0)
        for command in ("status", "sps", "sp", "run", "switchover", "events", "watch", "SPMGMT_URL", "exit codes"):
            self.assertIn(command, helped.out)

    async def test_closedPortExits3(self) -> None:
        """Nobody listening: exit 3, one line naming the URL and the reason."""
        [port] = freePorts(1)
        url = f"https://127.0.0.1:{port}"
        results = await gatherResults([
            self.spawn(["--url", url, "status"], self.nowhere).ended,
            self.spawn(["--url", url, "watch", "--count", "3"], self.nowhere).ended,
            self.spawn(["--url", url, "events", "--follow"], self.nowhere).ended,
        ])
        for result in results:
            self.assertFails(result, 3, re.escape(f"{url}: cannot connect: connection refused"))

    async def test_missingFilesExit2(self) -> None:
        """A CA or password file that cannot be read is a usage error, named."""
        missing = str(self.nowhere / "missing.pem")
        ca, password = await gatherResults([
            self.spawn(["--cacert", missing, "sps"], self.nowhere).ended,
            self.spawn(["--password-file", missing, "sps"], self.nowhere).ended,
        ])
        self.assertFails(ca, 2, re.escape(f"--cacert {missing}: No such file or directory"))
        self.assertFails(password, 2, re.escape(f"--password-file {missing}: No such file or directory"))


class ReadTests(CLITestMixin, ArrayTestMixin, TestCase):
    """The read commands, their errors, and where the settings come from (one array)."""

    timeout = 120

    async def test_readCommandsErrorsAndSettings(self) -> None:
        """
        status, sps, sp, sp status, sp health and events show what the API
        says, as tables or (--json) its JSON as is; errors are one line with
        their exit code; settings come from options, SPMGMT_* or a checkout.
        """
        self.nowhere = temporaryDirectory(self)
        self.array = array = await self.startArray(arbiter=True, extra=TOKENS + WIDE_WINDOW)
        epoch = await settled(array)
        otherDirectory = temporaryDirectory(self)
        ensurePKI(otherDirectory, ["other"])
        otherCA = str(otherDirectory / "ca.pem")
        url = array.url("proxy", "")
        ca = str(array.config.ca)
        admin = str(array.path("var/secrets/admin.password"))
        wrong = str(self.nowhere / "wrong.password")
        Path(wrong).write_text("not the password\n")
        def bare(*argv: str, cwd: Path | None = None, **env: str) -> Callable[[], CLI]:
            """No options but C{argv}; the environment C{env}."""
            return lambda: self.spawn(list(argv), cwd or self.nowhere, environment(**env))

        def ctl(*argv: str, **kwargs: Any) -> Callable[[], CLI]:
            return lambda: self.ctl(*argv, **kwargs)

        runs = {
            "status": ctl("status"),
            "status-json": ctl("status", "--json"),
            "sps": ctl("sps"),
            "sps-json": ctl("--json", "sps"),
            "sp": ctl("sp", "spb"),
            "sp-json": ctl("sp", "spb", "--json"),
            "sp-status": ctl("sp", "spb", "status"),
            "sp-status-json": ctl("--json", "sp", "spb", "status"),
            "sp-health": ctl("sp", "spa", "health"),
            "sp-health-json": ctl("sp", "spa", "health", "--json"),
            "events": ctl("events"),
            "events-json": ctl("events", "--since", "2", "--json"),
            "unknown-sp": ctl("sp", "spx", "status"),
            "unknown-sp-json": ctl("--json", "sp", "spx", "health"),
            "wrong-password": bare("--url", url, "--cacert", ca, "--user", "admin", "--password-file", wrong, "status"),
            "no-credentials": bare("--url", url, "--cacert", ca, "status"),
            "wrong-ca": bare("--url", url, "--cacert", otherCA, "--user", "admin", "--password-file", admin, "status"),
            "wrong-host": bare("--url", url.replace("127.0.0.1", "localhost"), "--cacert", ca, "sps"),
            "token": bare("--url", url, "--cacert", ca, "--token", TOKEN, "--json", "sps"),
            "token-env": bare("sps", SPMGMT_URL=url, SPMGMT_CACERT=ca, SPMGMT_TOKEN=TOKEN),
            "token-monitor": bare("--url", url, "--cacert", ca, "--token", TOKEN, "run", "spa", "uptime"),
            "env": bare("--json", "status", SPMGMT_URL=url, SPMGMT_CACERT=ca, SPMGMT_USER="monitor",
                        SPMGMT_PASSWORD_FILE=str(array.path("var/secrets/monitor.password"))),
            # Options win over the environment, credentials as a whole.
            "options-win": bare("--url", url, "--user", "admin", "--password-file", admin, "sps",
                                SPMGMT_URL="https://127.0.0.1:1", SPMGMT_CACERT=ca, SPMGMT_TOKEN="not-the-token"),
            # What `make run` leaves in a checkout: var/pki/ca.pem, var/secrets/admin.password.
            "discovered": bare("--json", "sp", "spa", cwd=array.directory, SPMGMT_URL=url),
            "discovered-below": bare("status", cwd=array.path("etc"), SPMGMT_URL=url),
            "discovered-monitor": bare("--user", "monitor", "run", "spa", "uptime", cwd=array.directory,
                                       SPMGMT_URL=url),
        }
        results = await self.runAll(runs)

        # status: the array summary, the token, and every SP's role, health, web server.
        status = self.assertOK(results["status"])
        self.assertIn(f"array testarray: active, token epoch {epoch} held by spa", status)
        self.assertRegex(status, rf"answered by spa \(epoch {epoch}\)")
        self.assertIn("proxy: routing to spa", status)
        table = rows(status.split("\n\n", 1)[1])
        self.assertEqual(table["SP"][-2:], ["PROXY", "PROBE"])
        # The proxy's own 1 s probe of each web port: not heard yet (-), or its last outcome.
        self.assertEqual(table["spa"][:7], ["spa", "active", str(epoch), "healthy", "full", "yes", "yes"])
        self.assertEqual(table["spb"][:7], ["spb", "passive", "-", "healthy", "full", "yes", "yes"])
        self.assertIn(table["spa"][7], {"yes", "no", "-"})
        view = results["status-json"].json()  # one JSON document, as the API sent it
        self.assertEqual(view["token"], {"epoch": epoch, "holder": "spa"}, view)
        self.assertEqual(view["proxy"]["routing_to"], "spa")
        self.assertEqual([sp["id"] for sp in view["sps"]], ["spa", "spb"])

        sps = rows(self.assertOK(results["sps"]))
        self.assertEqual(sps["spa"][:5], ["spa", "active", str(epoch), "healthy", "full"])
        self.assertEqual(sps["spb"][:5], ["spb", "passive", "-", "healthy", "full"])
        self.assertEqual([(sp["id"], sp["role"]) for sp in results["sps-json"].json()["sps"]],
                         [("spa", "active"), ("spb", "passive")])

        self.assertEqual(self.assertOK(results["sp"]),
                         "spb: passive, epoch -, healthy, web server full (collected by spb via spa)\n")
        self.assertEqual(results["sp-json"].json()["collected_by"], "spb")

        spStatus = self.assertOK(results["sp-status"])
        self.assertTrue(spStatus.startswith("spb\n"), spStatus)
        self.assertIn("collected by spb via spa", spStatus)
        self.assertIn("status command (uname -a): rc 0", spStatus)
        detail = results["sp-status-json"].json()
        self.assertEqual((detail["sp"], detail["role"], detail["status_command"]["rc"]), ("spb", "passive", 0))
        self.assertIn(detail["status_command"]["stdout"].strip(), spStatus)

        health = self.assertOK(results["sp-health"])
        self.assertTrue(health.startswith("spa: healthy, web server full"), health)
        checks = rows(health.split("\n\n", 1)[1])
        self.assertEqual(checks["maintenance"][:4], ["maintenance", "maintenance_file", "yes", "up"])
        self.assertEqual(checks["reactor"][:4], ["reactor", "reactor_lag", "yes", "up"])
        self.assertEqual([c["name"] for c in results["sp-health-json"].json()["checks"]], ["maintenance", "reactor"])

        events = self.assertOK(results["events"]).splitlines()
        self.assertRegex(events[0], r"^\s+1  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  ")
        self.assertTrue(any(re.search(rf"\bgrant\s+to=spa epoch={epoch}\b", line) for line in events), events)
        history = results["events-json"].json()
        ids = [e["id"] for e in history["events"]]
        self.assertTrue(ids and ids[0] == 3 and ids == sorted(ids), ids)
        self.assertEqual(history["last_id"], ids[-1])

        # Errors: one line each, with the problem's title and detail.
        self.assertFails(results["unknown-sp"], 1, re.escape("404 Not Found: There is no SP 'spx' in this array."))
        self.assertFails(results["unknown-sp-json"], 1, re.escape("404 Not Found: There is no SP 'spx' in this array."))
        self.assertFails(results["wrong-password"], 1, "401 Unauthorized: .*not accepted.*")
        self.assertFails(results["no-credentials"], 1,
                         r"401 Unauthorized: .* \(give --user and --password-file, or --token\)")
        self.assertFails(results["wrong-ca"], 3,
                         re.escape(f"{url}: cannot connect: TLS: certificate verify failed: ") + ".*")
        self.assertFails(results["wrong-host"], 3, ".*localhost.*: cannot connect: TLS: .*[Hh]ostname mismatch.*")
        self.assertFails(results["token-monitor"], 1, "403 Forbidden: .*")
        self.assertFails(results["discovered-monitor"], 1, "403 Forbidden: .*monitor.*")

        # Settings from the options, the environment, a checkout.
        self.assertEqual(len(results["token"].json()["sps"]), 2)
        self.assertEqual(set(rows(self.assertOK(results["token-env"]))), {"SP", "spa", "spb"})
        self.assertEqual(results["env"].json()["token"]["holder"], "spa", results["env"].out)
        self.assertIn("spa", rows(self.assertOK(results["options-win"])))
        self.assertEqual(results["discovered"].json()["collected_by"], "spa")
        self.assertIn(f"token epoch {epoch} held by spa", self.assertOK(results["discovered-below"]))


class ActionTests(CLITestMixin, ArrayTestMixin, TestCase):
    """Commands, switchover, the live event stream, and the proxy going away (one array)."""

    timeout = 120

    async def test_runSwitchoverFollowProxyDown(self) -> None:
        """
        run and switchover act and show the outcome; events --follow prints
        each event once, in order, until Ctrl-C (130) or the proxy goes away
        (3, with where to resume); watch reports the reopened connection.
        """
        self.nowhere = temporaryDirectory(self)
        self.array = array = await self.startArray(arbiter=True, extra=WIDE_WINDOW)
        first = await settled(array)
        last = (await array.request("proxy", "GET", "/api/v1/events")).json()["last_id"]
        followed = self.ctl("events", "--follow")
        followedJSON = self.ctl("--json", "events", "--follow", "--since", str(last))

        ran = await gatherResults([
            self.runCtl("run", "spa", "echo", "message=hello world"),
            self.runCtl("--json", "run", "spb", "echo", "message=from spb"),
            self.runCtl("run", "spa", "sleep", "seconds=99"),
            self.runCtl("run", "spa", "nope"),
            self.runCtl("run", "spa", "echo", "message=x", user="monitor"),
        ])
        self.assertRegex(self.assertOK(ran[0]), r"^echo on spa: rc 0 in \d+\.\d\d s\n--- stdout ---\nhello world\n$")
        result = ran[1].json()
        self.assertEqual((result["rc"], result["stdout"], result["collected_by"]), (0, "from spb\n", "spb"))
        self.assertFails(ran[2], 1, re.escape("422 Unprocessable Entity: The parameters are not valid. "
                                              "(seconds: must be at most 15)"))
        self.assertFails(ran[3], 1, re.escape("404 Not Found: There is no command 'nope'."))
        self.assertFails(ran[4], 1, "403 Forbidden: .*")

        moved = await self.runCtl("switchover", "--to", "spb")
        self.assertEqual(self.assertOK(moved), f"switched over: token epoch {first + 1} held by spb\n")
        back = await self.runCtl("switchover", "--json")
        self.assertEqual(back.json()["token"], {"epoch": first + 2, "holder": "spa"})
        self.assertFails(await self.runCtl("switchover", "--to", "spx"), 1, "422 .*")

        # Both streams saw the runs and both moves, each event once, in order.
        await followed.waitOutput(lambda text: re.search(rf"token\s+holder=spa epoch={first + 2}\b", text) is not None)
        await followedJSON.waitOutput(lambda text: any(
            '"kind": "token"' in line and f'"epoch": {first + 2}' in line for line in text.splitlines()))
        human = followed.text.splitlines()
        self.assertEqual([int(line.split()[0]) for line in human], list(range(1, len(human) + 1)))
        self.assertTrue(any(re.search(r"\bcommand\s+command=echo rc=0\b.* sp=spb\b", line) for line in human), human)
        self.assertTrue(any(re.search(rf"\bgrant\s+to=spb epoch={first + 1}\b", line) for line in human), human)
        streamed = [json.loads(line) for line in followedJSON.text.splitlines()]
        self.assertEqual([e["id"] for e in streamed], list(range(last + 1, last + 1 + len(streamed))))
        self.assertIn({"kind": "token", "holder": "spb", "epoch": first + 1},
                      [{k: e.get(k) for k in ("kind", "holder", "epoch")} for e in streamed])

        # Ctrl-C: exit 130, nothing said.
        followed.interrupt()
        stopped = await followed.ended
        self.assertEqual((stopped.code, stopped.err), (130, ""), stopped)

        # The proxy goes away: the stream ends with how to resume, and a
        # new command cannot connect.  watch reports that its connection
        # was reopened once the proxy is back.
        watch = self.ctl("watch", "--interval", "0.2")
        await watch.waitOutput(lambda text: "served by spa" in text)
        await array.kill("proxy")
        lost = await followedJSON.ended
        lastId = json.loads(followedJSON.text.splitlines()[-1])["id"]
        self.assertEqual((lost.code, lost.err), (3, f"spmgmtctl: {array.url('proxy', '')}: the server closed "
                                                    f"the event stream after event {lastId} "
                                                    f"(resume with --since {lastId})\n"))
        down = await self.runCtl("status")
        self.assertFails(down, 3, re.escape(f"{array.url('proxy', '')}: cannot connect: connection refused"))
        await watch.waitOutput(lambda text: "cannot connect: connection refused" in text)
        await array.restart("proxy")
        await array.waitHolder("proxy", "spa")
        await watch.waitOutput(lambda text: "reconnect: the connection was reopened (connection 2)" in text
                               and "served by spa" in text.rsplit("reconnect:", 1)[1])
        self.assertRegex(watch.text, r"reconnect: the connection was reopened \(connection 2\) after: [^?\s]")
        watch.interrupt()
        stopped = await watch.ended
        self.assertEqual((stopped.code, stopped.err), (130, ""), stopped)
        self.assertNotIn("Traceback", stopped.out)


class WatchTests(CLITestMixin, ArrayTestMixin, TestCase):
    """watch keeps its one connection across a SIGKILL failover and reports it."""

    timeout = 120

    async def test_watchAcrossSIGKILL(self) -> None:
        """
        A terminal gets a redrawn screen; a pipe gets a line per refresh, one
        marked failover line with its gap when the active SP is SIGKILLed,
        no reconnect (the proxy keeps the connection), and the summary.
        """
        self.nowhere = temporaryDirectory(self)
        self.array = array = await self.startArray(arbiter=True, extra=WIDE_WINDOW)
        first = await settled(array)

        # On a terminal: a redrawn screen.
        screen = self.spawn([*self.options(), "watch", "--count", "2", "--interval", "0.2"], self.nowhere, usePTY=True)
        drawn = await screen.ended
        self.assertEqual(drawn.code, 0, drawn)
        self.assertEqual(drawn.out.count("\x1b[H\x1b[2J"), 2, drawn)
        last = drawn.out.rsplit("\x1b[2J", 1)[1].replace("\r\n", "\n")
        self.assertIn(f"array testarray: active, token epoch {first} held by spa", last)
        self.assertRegex(last, rf"served by spa in \d+ ms \(epoch {first}\); connection 1, no reconnect")
        self.assertEqual(rows(last)["spb"], ["spb", "passive", "healthy", "full", "yes"])
        self.assertIn("failovers seen: none", last)

        watch = self.ctl("watch", "--count", "15", "--interval", "0.2")
        await watch.waitOutput(lambda text: text.count("served by spa") >= 3)
        await array.kill("spa")
        result = await watch.ended
        out = self.assertOK(result)
        self.assertNotIn("reconnect:", out)
        self.assertNotIn("connection:", out)
        lines = out.splitlines()
        refreshes = [line for line in lines if " | served by " in line]
        self.assertEqual(len(refreshes), 15, out)
        marked = [line for line in lines if FAILOVER.search(line) and not line.startswith("  ")]
        self.assertEqual(len(marked), 1, out)
        old, new, before, after, gap = FAILOVER.search(marked[0]).groups()  # type: ignore[union-attr]
        self.assertEqual((old, new, int(before)), ("spa", "spb", first))
        self.assertGreater(int(after), first)
        # The gap spans the poll interval and the token's move: more than
        # nothing, and far less than the proxy's 10 s hold.
        self.assertTrue(0.0 < float(gap) < 5.0, gap)
        # Before the line only spa answered; from it on only spb.
        at = lines.index(marked[0])
        before_ = [line for line in lines[:at] if " | served by " in line]
        after_ = [line for line in lines[at:] if " | served by " in line]
        self.assertTrue(before_ and all("served by spa" in line for line in before_), out)
        self.assertTrue(after_ and all("served by spb" in line for line in after_), out)
        self.assertIn(f"token epoch {after} held by spb", after_[-1])
        self.assertIn("spa unreachable", after_[-1])
        self.assertRegex(lines[-2], r"^watch: 15 refreshes \(0 failed\) in [\d.]+ s, 1 connection \(no reconnect\), "
                                    r"1 failover$")
        self.assertEqual(lines[-1].strip(), marked[0])

        # --json: a record per refresh, then the summary.
        records = [json.loads(line) for line in self.assertOK(
            await self.runCtl("--json", "watch", "--count", "3", "--interval", "0.2")).splitlines()]
        self.assertEqual([r["served_by"] for r in records[:3]], ["spb"] * 3)
        self.assertEqual(records[0]["array"]["token"], {"epoch": int(after), "holder": "spb"})
        self.assertEqual(records[3]["summary"]["connections"], 1)
        self.assertEqual(records[3]["summary"]["reconnects"], 0)
