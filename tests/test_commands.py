"""
Tests for L{spmgmt.commands}: parameter validation, argv building and
running real processes under limits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spmgmt import commands
from spmgmt.commands import (
    SAFE_ENV,
    CommandError,
    CommandResult,
    InvalidParameters,
    UnknownCommand,
    buildArgv,
    lookupCommand,
    runCommand,
    validateParameters,
)
from spmgmt.config import CommandConfig, ParamConfig


def makeParam(
    name: str,
    type: str = "string",
    required: bool = True,
    default: str | int | None = None,
    pattern: str | None = None,
    max_length: int = 256,
    min: int | None = None,
    max: int | None = None,
    choices: tuple[str, ...] = (),
) -> ParamConfig:
    """A L{ParamConfig} with the configuration parser's defaults."""
    return ParamConfig(
        name=name,
        type=type,
        required=required,
        default=default,
        pattern=pattern,
        max_length=max_length,
        min=min,
        max=max,
        choices=choices,
    )


def makeCommand(
    argv: list[str] | tuple[str, ...],
    params: tuple[ParamConfig, ...] = (),
    timeout: float = 10.0,
    output_cap: int = 65536,
    kill_grace: float = 2.0,
    name: str = "test",
) -> CommandConfig:
    """A L{CommandConfig} with the configuration parser's defaults."""
    return CommandConfig(
        name=name,
        argv=tuple(argv),
        timeout=timeout,
        output_cap=output_cap,
        kill_grace=kill_grace,
        service=False,
        requires_active=False,
        params=params,
    )


def processState(pid: int) -> str | None:
    """
    The state letter of process C{pid} from /proc, or L{None} if there is no
    such process.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    # The command name is in parentheses and may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0]


def isDead(pid: int) -> bool:
    """
    Whether C{pid} has exited: gone, or a zombie waiting for its (new)
    parent, possibly an init that does not reap, to collect it.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return processState(pid) in (None, "Z", "X")


def killIfSleeping(pid: int) -> None:
    """
    Clean up after a failed test: kill C{pid} if it still is one of the
    C{sleep}s the tests start (and not some process that reused the pid).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return
    if b"sleep" in cmdline:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def readPids(path: str) -> list[int]:
    with open(path) as f:
        return [int(line) for line in f.read().split()]


def killRecorded(path: str) -> None:
    """
    Clean up after a failed test: kill the C{sleep}s whose pids were
    recorded in C{path}, if any.
    """
    try:
        pids = readPids(path)
    except (OSError, ValueError):
        return
    for pid in pids:
        killIfSleeping(pid)


class LookupCommandTests(SynchronousTestCase):
    """
    Tests for L{lookupCommand}.
    """

    def test_known(self) -> None:
        """
        A configured name gives its command.
        """
        command = makeCommand(["uptime"], name="uptime")
        self.assertIs(lookupCommand({"uptime": command}, "uptime"), command)

    def test_unknown(self) -> None:
        """
        Any other name raises L{UnknownCommand}, a L{CommandError} that keeps
        the name.
        """
        e = self.assertRaises(UnknownCommand, lookupCommand, {}, "rm")
        self.assertIsInstance(e, CommandError)
        self.assertEqual(e.name, "rm")
        self.assertIn("'rm'", str(e))

    def test_notAString(self) -> None:
        """
        A name that is not a string (decoded JSON can be anything) is
        unknown, not a crash.
        """
        e = self.assertRaises(UnknownCommand, lookupCommand, {"a": makeCommand(["a"])}, ["a"])
        self.assertEqual(e.name, ["a"])

    def test_longNameShortenedInMessage(self) -> None:
        """
        The message shows a bounded part of an arbitrarily long name.
        """
        e = self.assertRaises(UnknownCommand, lookupCommand, {}, "x" * 10000)
        self.assertLess(len(str(e)), 100)


class ValidateParametersTests(SynchronousTestCase):
    """
    Tests for L{validateParameters}.
    """

    def assertProblems(self, command: CommandConfig, params: object) -> dict[str, str]:
        """
        Validation fails; return the problems after checking each is one
        line.
        """
        e = self.assertRaises(InvalidParameters, validateParameters, command, params)
        self.assertIsInstance(e, CommandError)
        self.assertTrue(e.problems)
        for name, problem in e.problems.items():
            self.assertIsInstance(name, str)
            self.assertIsInstance(problem, str)
            self.assertNotIn("\n", problem)
        return e.problems

    def test_valid(self) -> None:
        """
        Values of each type are accepted and returned as strings.
        """
        command = makeCommand(
            ["x", "{s}", "{i}", "{e}"],
            (
                makeParam("s"),
                makeParam("i", type="int"),
                makeParam("e", type="enum", choices=("on", "off")),
            ),
        )
        self.assertEqual(
            validateParameters(command, {"s": "hello", "i": 42, "e": "off"}),
            {"s": "hello", "i": "42", "e": "off"},
        )

    def test_noParametersDeclared(self) -> None:
        """
        A command without parameters accepts L{None} or an empty object.
        """
        command = makeCommand(["uptime"])
        self.assertEqual(validateParameters(command, None), {})
        self.assertEqual(validateParameters(command, {}), {})

    def test_notAnObject(self) -> None:
        """
        Parameters that are not an object are rejected under C{"(params)"}.
        """
        command = makeCommand(["uptime"])
        for params in ([], ["a"], "a=b", 3, 1.5, True):
            problems = self.assertProblems(command, params)
            self.assertEqual(list(problems), ["(params)"], params)
            self.assertIn("must be an object", problems["(params)"])

    def test_unknownParameter(self) -> None:
        """
        A parameter that is not declared is rejected under its own name.
        """
        command = makeCommand(["echo", "{message}"], (makeParam("message"),))
        problems = self.assertProblems(command, {"message": "hi", "argv": "rm"})
        self.assertEqual(problems, {"argv": "unknown parameter"})

    def test_unknownParameterLongName(self) -> None:
        """
        An undeclared parameter with a huge name is reported under a
        shortened name.
        """
        problems = self.assertProblems(makeCommand(["uptime"]), {"y" * 5000: 1})
        [name] = problems
        self.assertLess(len(name), 100)
        self.assertEqual(problems[name], "unknown parameter")

    def test_missingRequired(self) -> None:
        """
        A required parameter must be given.
        """
        command = makeCommand(["echo", "{message}"], (makeParam("message"),))
        self.assertEqual(self.assertProblems(command, {}), {"message": "is required"})
        self.assertEqual(self.assertProblems(command, None), {"message": "is required"})

    def test_allProblemsReported(self) -> None:
        """
        Every problem is reported at once, not only the first.
        """
        command = makeCommand(
            ["x", "{a}", "{b}", "{c}"],
            (makeParam("a"), makeParam("b", type="int"), makeParam("c")),
        )
        problems = self.assertProblems(command, {"b": "many", "c": 1, "d": 1})
        self.assertEqual(
            problems,
            {
                "a": "is required",
                "b": "must be an integer",
                "c": "must be a string, not an integer",
                "d": "unknown parameter",
            },
        )

    def test_messageNamesCommand(self) -> None:
        """
        The exception's text names the command and each problem.
        """
        command = makeCommand(["echo", "{message}"], (makeParam("message"),), name="echo")
        e = self.assertRaises(InvalidParameters, validateParameters, command, {})
        self.assertIn("echo", str(e))
        self.assertIn("message: is required", str(e))

    def test_defaults(self) -> None:
        """
        Parameters not given take their default, converted to a string;
        given ones override it.
        """
        command = makeCommand(
            ["x", "{path}", "{count}"],
            (
                makeParam("path", required=False, default="/"),
                makeParam("count", type="int", required=False, default=5),
            ),
        )
        self.assertEqual(validateParameters(command, {}), {"path": "/", "count": "5"})
        self.assertEqual(
            validateParameters(command, {"path": "/var", "count": "7"}),
            {"path": "/var", "count": "7"},
        )

    def test_optionalWithoutDefault(self) -> None:
        """
        An optional parameter without default that is not given is absent
        from the result.
        """
        command = makeCommand(["x", "{opt}"], (makeParam("opt", required=False),))
        self.assertEqual(validateParameters(command, {}), {})
        self.assertEqual(validateParameters(command, {"opt": "v"}), {"opt": "v"})

    def test_badDefault(self) -> None:
        """
        A default that does not satisfy its own parameter is reported as the
        configuration's fault.
        """
        command = makeCommand(
            ["x", "{n}"], (makeParam("n", type="int", required=False, default="ten"),)
        )
        problems = self.assertProblems(command, {})
        self.assertIn("configured default", problems["n"])

    def test_stringWrongType(self) -> None:
        """
        A string parameter only takes a string.
        """
        command = makeCommand(["echo", "{m}"], (makeParam("m"),))
        for value in (5, 1.5, True, None, ["a"], {"a": "b"}):
            problems = self.assertProblems(command, {"m": value})
            self.assertIn("must be a string", problems["m"], value)

    def test_stringMaxLength(self) -> None:
        """
        A string may be as long as C{max_length} characters, no longer.
        """
        command = makeCommand(["echo", "{m}"], (makeParam("m", max_length=5),))
        self.assertEqual(validateParameters(command, {"m": "\u00e9" * 5}), {"m": "\u00e9" * 5})
        problems = self.assertProblems(command, {"m": "abcdef"})
        self.assertEqual(problems, {"m": "must be at most 5 characters"})

    def test_stringNul(self) -> None:
        """
        A string with a NUL character is rejected: no argument can hold it.
        """
        command = makeCommand(["echo", "{m}"], (makeParam("m"),))
        problems = self.assertProblems(command, {"m": "a\x00b"})
        self.assertIn("NUL", problems["m"])

    def test_stringLoneSurrogate(self) -> None:
        """
        A string with a lone surrogate (which JSON can encode) is rejected:
        it cannot become argument bytes.
        """
        command = makeCommand(["echo", "{m}"], (makeParam("m"),))
        for value in (json.loads('"\\ud800"'), "a\udcffb"):
            problems = self.assertProblems(command, {"m": value})
            self.assertIn("Unicode", problems["m"])

    def test_stringPattern(self) -> None:
        """
        A string must match the whole C{pattern}, not only a prefix, and not
        with a trailing newline.
        """
        command = makeCommand(
            ["df", "{path}"], (makeParam("path", pattern="^/[A-Za-z0-9_./-]*$"),)
        )
        self.assertEqual(validateParameters(command, {"path": "/var/log"}), {"path": "/var/log"})
        for bad in ("var", "/var; rm -rf /", "/var\n", "/var\nx", "/v a r", "/$(id)"):
            problems = self.assertProblems(command, {"path": bad})
            self.assertIn("must match", problems["path"], bad)
        unanchored = makeCommand(["x", "{a}"], (makeParam("a", pattern="[a-z]+"),))
        self.assertProblems(unanchored, {"a": "abc;def"})

    def test_int(self) -> None:
        """
        An int parameter takes an integer or a string of decimal digits and
        gives its canonical decimal form.
        """
        command = makeCommand(["sleep", "{n}"], (makeParam("n", type="int"),))
        for value, expected in ((3, "3"), ("3", "3"), ("007", "7"), (0, "0"), ("-4", "-4")):
            self.assertEqual(validateParameters(command, {"n": value}), {"n": expected}, value)

    def test_intBool(self) -> None:
        """
        Booleans are not integers, whatever Python thinks.
        """
        command = makeCommand(["sleep", "{n}"], (makeParam("n", type="int"),))
        for value in (True, False):
            problems = self.assertProblems(command, {"n": value})
            self.assertEqual(problems, {"n": "must be an integer, not a boolean"})

    def test_intWrongType(self) -> None:
        """
        Numbers with a fraction, non-numeric strings and other types are not
        integers; nor are strings Python's int() would forgive.
        """
        command = makeCommand(["sleep", "{n}"], (makeParam("n", type="int"),))
        for value in (1.0, 2.5, None, [1], {"n": 1}, "", "1e3", " 3", "3 ", "3_0",
                      "0x10", "+3", "\u0663", "1" * 31, "3\n"):
            problems = self.assertProblems(command, {"n": value})
            self.assertIn("must be an integer", problems["n"], value)

    def test_intRange(self) -> None:
        """
        An int parameter must lie within C{min} and C{max}, inclusive.
        """
        command = makeCommand(["sleep", "{n}"], (makeParam("n", type="int", min=0, max=25),))
        self.assertEqual(validateParameters(command, {"n": 0}), {"n": "0"})
        self.assertEqual(validateParameters(command, {"n": "25"}), {"n": "25"})
        self.assertEqual(self.assertProblems(command, {"n": -1}), {"n": "must be at least 0"})
        self.assertEqual(self.assertProblems(command, {"n": "26"}), {"n": "must be at most 25"})
        self.assertEqual(self.assertProblems(command, {"n": 10**100}), {"n": "must be at most 25"})

    def test_enum(self) -> None:
        """
        An enum parameter takes exactly one of its choices, as a string.
        """
        command = makeCommand(
            ["x", "{level}"], (makeParam("level", type="enum", choices=("1", "debug")),)
        )
        self.assertEqual(validateParameters(command, {"level": "debug"}), {"level": "debug"})
        self.assertEqual(validateParameters(command, {"level": "1"}), {"level": "1"})
        for value in ("DEBUG", "debug ", "", "trace"):
            problems = self.assertProblems(command, {"level": value})
            self.assertEqual(problems, {"level": "must be one of 1, debug"}, value)
        for value in (1, True, None, ["debug"]):
            problems = self.assertProblems(command, {"level": value})
            self.assertIn("must be a string", problems["level"], value)


class BuildArgvTests(SynchronousTestCase):
    """
    Tests for L{buildArgv}.
    """

    def test_noParameters(self) -> None:
        """
        An argv without placeholders is returned as a new list.
        """
        command = makeCommand(["uname", "-a"])
        argv = buildArgv(command, {})
        self.assertEqual(argv, ["uname", "-a"])
        self.assertIsInstance(argv, list)

    def test_substitution(self) -> None:
        """
        Placeholders are replaced inside their own argument, alone or among
        literal text, several per argument if need be.
        """
        command = makeCommand(
            ["tool", "{a}", "--b={b}", "{a}:{b}", "-x"], (makeParam("a"), makeParam("b"))
        )
        self.assertEqual(
            buildArgv(command, {"a": "1", "b": "two"}),
            ["tool", "1", "--b=two", "1:two", "-x"],
        )

    def test_hostileValueIsOneArgument(self) -> None:
        """
        Shell syntax in a value arrives as one literal argument.
        """
        value = "a b; rm -rf / $(touch /tmp/x) `id` 'q' \"dq\" | > < & \\ \t\n*"
        command = makeCommand(["echo", "{m}"], (makeParam("m"),))
        self.assertEqual(buildArgv(command, {"m": value}), ["echo", value])

    def test_valueNotExpandedAgain(self) -> None:
        """
        Braces in a value are not placeholders.
        """
        command = makeCommand(["x", "{a}", "{b}"], (makeParam("a"), makeParam("b")))
        self.assertEqual(
            buildArgv(command, {"a": "{b}", "b": "{0}{a.__class__}"}),
            ["x", "{b}", "{0}{a.__class__}"],
        )

    def test_literalBraces(self) -> None:
        """
        Doubled braces are literal braces.
        """
        command = makeCommand(["awk", "{{print ${n}}}"], (makeParam("n"),))
        self.assertEqual(buildArgv(command, {"n": "2"}), ["awk", "{print $2}"])

    def test_optionalMissingDropsArgument(self) -> None:
        """
        An argument using an optional parameter that was not given is left
        out, rather than run with the value missing.
        """
        command = makeCommand(
            ["rm", "-rf", "/data/{sub}", "--", "{keep}"],
            (makeParam("sub", required=False), makeParam("keep")),
        )
        self.assertEqual(buildArgv(command, {"keep": "k"}), ["rm", "-rf", "--", "k"])

    def test_undeclaredField(self) -> None:
        """
        A placeholder that is not a declared parameter, including attribute
        and index lookups, is a L{CommandError}.
        """
        for element in ("{nope}", "{p.__class__}", "{p[0]}", "{0}", "{}"):
            command = makeCommand(["x", element], (makeParam("p"),))
            self.assertRaises(CommandError, buildArgv, command, {"p": "v"})

    def test_conversionOrSpec(self) -> None:
        """
        Conversions and format specs are refused, not applied.
        """
        for element in ("{p!r}", "{p:>10}", "{p!s:{p}}"):
            command = makeCommand(["x", element], (makeParam("p"),))
            self.assertRaises(CommandError, buildArgv, command, {"p": "v"})

    def test_unbalancedBraces(self) -> None:
        """
        An argv element that is not a valid template is a L{CommandError}.
        """
        command = makeCommand(["x", "{p"], (makeParam("p"),))
        self.assertRaises(CommandError, buildArgv, command, {"p": "v"})


class CommandResultTests(SynchronousTestCase):
    """
    Tests for L{CommandResult}.
    """

    def test_asJSON(self) -> None:
        """
        L{CommandResult.asJSON} gives every field as plain JSON values.
        """
        result = CommandResult(
            name="echo",
            argv=("echo", "hi"),
            rc=0,
            signal=None,
            stdout="hi\n",
            stderr="",
            duration_s=0.25,
            timed_out=False,
            truncated=True,
        )
        data = result.asJSON()
        self.assertEqual(
            data,
            {
                "name": "echo",
                "argv": ["echo", "hi"],
                "rc": 0,
                "signal": None,
                "stdout": "hi\n",
                "stderr": "",
                "duration_s": 0.25,
                "timed_out": False,
                "truncated": True,
            },
        )
        self.assertEqual(json.loads(json.dumps(data)), data)


class FakeTransport:
    """
    Just enough of a process transport for L{runCommand}'s deadline logic.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []
        self.stdinClosed = False
        self.lost = False

    def closeStdin(self) -> None:
        self.stdinClosed = True

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)

    def loseConnection(self) -> None:
        self.lost = True


class FakeProcessReactor(Clock):
    """
    A clock that records spawnProcess calls instead of running anything.
    """

    def __init__(self, pid: int = 4242, error: Exception | None = None) -> None:
        super().__init__()
        self.pid = pid
        self.error = error
        self.spawned: list[tuple[Any, str, list[str], dict[str, Any]]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kwargs: Any) -> Any:
        if self.error is not None:
            raise self.error
        self.spawned.append((protocol, executable, args, kwargs))
        transport = FakeTransport(self.pid)
        protocol.makeConnection(transport)
        return transport


class RunCommandDeadlineTests(SynchronousTestCase):
    """
    Tests for the deadline logic of L{runCommand}, with a fake reactor and
    clock: every step happens exactly when it should.
    """

    def setUp(self) -> None:
        self.killed: list[tuple[int, int]] = []
        self.killpgError: Exception | None = None

        def killpg(pgid: int, signum: int) -> None:
            if self.killpgError is not None:
                raise self.killpgError
            self.killed.append((pgid, signum))

        self.patch(commands.os, "killpg", killpg)
        self.reactor = FakeProcessReactor()
        self.command = makeCommand(["sleep", "100"], timeout=5.0, kill_grace=2.0)

    def start(self) -> tuple[Deferred[CommandResult], Any]:
        d = runCommand(self.reactor, self.command, ["sleep", "100"], monotonic=self.reactor.seconds)
        [(protocol, _, _, _)] = self.reactor.spawned
        return d, protocol

    def test_spawnArguments(self) -> None:
        """
        The program runs through the new-session wrapper, with the safe
        environment, descriptors 0, 1 and 2 only, and standard input closed.
        """
        d, protocol = self.start()
        [(_, executable, args, kwargs)] = self.reactor.spawned
        self.assertEqual(executable, sys.executable)
        self.assertEqual(args[0], sys.executable)
        self.assertEqual(args[-3:], ["/", "sleep", "100"])
        self.assertIn("os.setsid()", args[args.index("-c") + 1])
        self.assertEqual(kwargs["env"], dict(SAFE_ENV))
        self.assertEqual(kwargs["childFDs"], {0: "w", 1: "r", 2: "r"})
        self.assertNotIn("usePTY", kwargs)
        self.assertTrue(protocol.transport.stdinClosed)

    def test_terminateThenKill(self) -> None:
        """
        At the timeout the process group gets SIGTERM, C{kill_grace} later
        SIGKILL; the result says it timed out and no timer is left.
        """
        d, protocol = self.start()
        self.reactor.advance(4.9)
        self.assertEqual(self.killed, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.killed, [(4242, signal.SIGTERM)])
        self.reactor.advance(1.9)
        self.assertEqual(self.killed, [(4242, signal.SIGTERM)])
        self.reactor.advance(0.1)
        self.assertEqual(self.killed, [(4242, signal.SIGTERM), (4242, signal.SIGKILL)])
        self.assertNoResult(d)
        protocol.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        result = self.successResultOf(d)
        self.assertTrue(result.timed_out)
        self.assertIsNone(result.rc)
        self.assertEqual(result.signal, signal.SIGKILL)
        self.assertEqual(result.duration_s, 7.0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_endsBeforeTimeout(self) -> None:
        """
        A process that ends in time is not signalled and leaves no timer.
        """
        d, protocol = self.start()
        self.reactor.advance(1.5)
        protocol.processEnded(Failure(ProcessTerminated(exitCode=2)))
        result = self.successResultOf(d)
        self.assertEqual((result.rc, result.signal, result.timed_out), (2, None, False))
        self.assertEqual(result.duration_s, 1.5)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(100)
        self.assertEqual(self.killed, [])

    def test_groupGone(self) -> None:
        """
        If the process group no longer exists (or does not yet), the process
        itself is signalled; L{ProcessLookupError} never escapes.
        """
        self.killpgError = ProcessLookupError()
        d, protocol = self.start()
        self.reactor.advance(5.0)
        self.reactor.advance(2.0)
        self.assertEqual(protocol.transport.signals, [signal.SIGTERM, signal.SIGKILL])

    def test_pipesAbandoned(self) -> None:
        """
        If the process still has not ended a while after SIGKILL (a process
        that left the group holds its output), our ends of the pipes are
        closed so the run can end.
        """
        d, protocol = self.start()
        self.reactor.advance(5.0)
        self.reactor.advance(2.0)
        self.assertEqual(self.killed, [(4242, signal.SIGTERM), (4242, signal.SIGKILL)])
        self.reactor.advance(commands._ABANDON_PIPES_AFTER - 0.1)
        self.assertFalse(protocol.transport.lost)
        self.reactor.advance(0.1)
        self.assertTrue(protocol.transport.lost)
        self.assertNoResult(d)
        protocol.processEnded(Failure(ProcessTerminated(exitCode=0)))
        self.assertTrue(self.successResultOf(d).timed_out)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        Cancelling the result fails it with L{CancelledError} and terminates
        the process group, then kills it after the grace period.
        """
        d, protocol = self.start()
        self.reactor.advance(1.0)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.killed, [(4242, signal.SIGTERM)])
        self.reactor.advance(2.0)
        self.assertEqual(self.killed, [(4242, signal.SIGTERM), (4242, signal.SIGKILL)])
        protocol.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_spawnFails(self) -> None:
        """
        If the process cannot be started at all, the result fails with a
        L{CommandError}.
        """
        self.reactor.error = OSError(11, "Resource temporarily unavailable")
        d = runCommand(self.reactor, self.command, ["sleep", "100"])
        failure = self.failureResultOf(d, CommandError)
        self.assertIn("Resource temporarily unavailable", str(failure.value))
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class RunCommandTests(TestCase):
    """
    Tests for L{runCommand} with real processes and the real reactor.
    """

    timeout = 20

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.tempdir = tempfile.mkdtemp(prefix="spmgmt-test-commands-")
        self.addCleanup(shutil.rmtree, self.tempdir, ignore_errors=True)

    def run_(self, argv: list[str], **kwargs: Any) -> Deferred[CommandResult]:
        """
        Run C{argv} with a command configured by C{kwargs}.
        """
        return runCommand(self.reactor, makeCommand(argv, **kwargs), argv)

    def python(self, code: str, *args: str) -> list[str]:
        """An argv running C{code} in this Python."""
        return [sys.executable, "-I", "-S", "-c", code, *args]

    @inlineCallbacks
    def waitFor(self, predicate: Callable[[], bool], within: float = 5.0) -> Any:
        """
        Let the reactor run until C{predicate()} holds; fail after C{within}
        seconds.
        """
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"{predicate} still false after {within}s")
            yield deferLater(self.reactor, 0.01, lambda: None)

    @inlineCallbacks
    def test_normalRun(self) -> Any:
        """
        The exit status, standard output and error and the duration are
        reported.
        """
        argv = ["sh", "-c", "printf 'out\\n'; printf 'err' >&2; exit 3"]
        started = time.monotonic()
        result = yield self.run_(argv, timeout=10.0)
        elapsed = time.monotonic() - started
        self.assertEqual(result.name, "test")
        self.assertEqual(result.argv, tuple(argv))
        self.assertEqual(result.rc, 3)
        self.assertIsNone(result.signal)
        self.assertEqual(result.stdout, "out\n")
        self.assertEqual(result.stderr, "err")
        self.assertFalse(result.timed_out)
        self.assertFalse(result.truncated)
        self.assertGreater(result.duration_s, 0)
        self.assertLessEqual(result.duration_s, elapsed)

    @inlineCallbacks
    def test_success(self) -> Any:
        """
        A program that succeeds has rc 0.
        """
        result = yield self.run_(["true"])
        self.assertEqual((result.rc, result.signal, result.timed_out), (0, None, False))

    @inlineCallbacks
    def test_injectedClock(self) -> Any:
        """
        The duration is measured with the given clock.
        """
        times = iter([100.0, 103.5])
        command = makeCommand(["true"])
        result = yield runCommand(self.reactor, command, ["true"], monotonic=lambda: next(times))
        self.assertEqual(result.duration_s, 3.5)

    @inlineCallbacks
    def test_killedBySignal(self) -> Any:
        """
        A process ended by a signal has no rc and reports the signal.
        """
        result = yield self.run_(["sh", "-c", "kill -USR1 $$; sleep 5"])
        self.assertIsNone(result.rc)
        self.assertEqual(result.signal, signal.SIGUSR1)
        self.assertFalse(result.timed_out)

    @inlineCallbacks
    def test_stdinEmpty(self) -> Any:
        """
        Standard input is at end of file at once: a program reading it does
        not wait.
        """
        result = yield self.run_(["cat"], timeout=5.0)
        self.assertEqual((result.rc, result.stdout, result.timed_out), (0, "", False))

    @inlineCallbacks
    def test_environment(self) -> Any:
        """
        The command sees only the safe environment, nothing of ours.
        """
        os.environ["SPMGMT_TEST_SECRET"] = "leaked"
        self.addCleanup(os.environ.pop, "SPMGMT_TEST_SECRET", None)
        result = yield self.run_(["env"])
        self.assertEqual(result.rc, 0)
        self.assertEqual(
            sorted(result.stdout.splitlines()),
            sorted(f"{k}={v}" for k, v in SAFE_ENV.items()),
        )

    @inlineCallbacks
    def test_workingDirectory(self) -> Any:
        """
        The command runs in C{/}.
        """
        result = yield self.run_(self.python("import os; print(os.getcwd())"))
        self.assertEqual(result.stdout, "/\n")

    @inlineCallbacks
    def test_ownSession(self) -> Any:
        """
        The command leads its own session and process group, separate from
        ours.
        """
        result = yield self.run_(
            self.python("import os; print(os.getpid(), os.getpgrp(), os.getsid(0))")
        )
        pid, pgid, sid = map(int, result.stdout.split())
        self.assertEqual(pgid, pid)
        self.assertEqual(sid, pid)
        self.assertNotEqual(pgid, os.getpgrp())

    @inlineCallbacks
    def test_signalsNotIgnored(self) -> Any:
        """
        The command starts with no signal ignored, SIGPIPE in particular
        (which the Python wrapper ignores at its start-up), so pipelines
        behave as in a shell.
        """
        result = yield self.run_(["grep", "^SigIgn:", "/proc/self/status"])
        ignored = int(result.stdout.split()[1], 16)
        self.assertFalse(ignored & (1 << (signal.SIGPIPE - 1)), result.stdout)
        self.assertFalse(ignored & (1 << (signal.SIGXFSZ - 1)), result.stdout)
        # Signals 32 and up are left out: glibc's posix_spawn() sets its
        # internal signals (32, 33) to ignored in the child, and no program
        # can change their disposition anyway.
        self.assertEqual(ignored & 0x7FFFFFFF, 0, result.stdout)

    @inlineCallbacks
    def test_noInheritedDescriptors(self) -> Any:
        """
        The command has descriptors 0, 1 and 2 only, even when this process
        holds inheritable ones.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        os.set_inheritable(r, True)
        os.set_inheritable(w, True)
        self.assertTrue(os.get_inheritable(w))
        code = (
            "import os\n"
            "def isOpen(fd):\n"
            "    try:\n"
            "        os.fstat(fd)\n"
            "    except OSError:\n"
            "        return False\n"
            "    return True\n"
            # The listing includes the descriptor of the listing itself,
            # closed by the time isOpen runs.
            "fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))\n"
            "print(' '.join(str(fd) for fd in fds if isOpen(fd)))\n"
        )
        result = yield self.run_(self.python(code))
        self.assertEqual(result.stderr, "")
        self.assertEqual(result.stdout, "0 1 2\n")

    @inlineCallbacks
    def test_parameterIsOneLiteralArgument(self) -> Any:
        """
        Shell syntax in a validated parameter reaches the program as exactly
        one argument, unchanged, and is never executed.
        """
        marker = os.path.join(self.tempdir, "pwned")
        value = f"a  b; touch {marker}; $(touch {marker}) `id` 'q' \"dq\" | cat > {marker} &"
        command = makeCommand(["printf", "%s\\n", "{message}"], (makeParam("message"),))
        argv = buildArgv(command, validateParameters(command, {"message": value}))
        self.assertEqual(argv, ["printf", "%s\\n", value])
        result = yield runCommand(self.reactor, command, argv)
        self.assertEqual(result.rc, 0)
        # printf repeats its format for every argument: one line, one argument.
        self.assertEqual(result.stdout, value + "\n")
        self.assertFalse(os.path.exists(marker))

    @inlineCallbacks
    def test_unknownProgram(self) -> Any:
        """
        A program that does not exist gives rc 127 and says so on stderr.
        """
        result = yield self.run_(["spmgmt-no-such-program"])
        self.assertEqual(result.rc, 127)
        self.assertIsNone(result.signal)
        self.assertIn("spmgmt-no-such-program", result.stderr)
        self.assertIn("No such file or directory", result.stderr)

    @inlineCallbacks
    def test_notExecutable(self) -> Any:
        """
        A file that cannot be executed gives rc 126.
        """
        path = os.path.join(self.tempdir, "script")
        with open(path, "w") as f:
            f.write("#!/bin/sh\necho hi\n")
        os.chmod(path, 0o644)
        result = yield self.run_([path])
        self.assertEqual(result.rc, 126)
        self.assertIn("Permission denied", result.stderr)

    @inlineCallbacks
    def test_hugeOutputCapped(self) -> Any:
        """
        100 MB of output keep only C{output_cap} bytes; the rest is drained
        so the program finishes normally.
        """
        result = yield self.run_(
            ["head", "-c", "100000000", "/dev/zero"], output_cap=1000, timeout=15.0
        )
        self.assertEqual(result.rc, 0)
        self.assertFalse(result.timed_out)
        self.assertTrue(result.truncated)
        self.assertEqual(result.stdout, "\x00" * 1000)

    @inlineCallbacks
    def test_stderrCapped(self) -> Any:
        """
        Standard error is capped separately from standard output.
        """
        result = yield self.run_(
            ["sh", "-c", "printf abc; head -c 1000000 /dev/zero | tr '\\0' e >&2"],
            output_cap=10,
        )
        self.assertEqual(result.rc, 0)
        self.assertEqual(result.stdout, "abc")
        self.assertEqual(result.stderr, "e" * 10)
        self.assertTrue(result.truncated)

    @inlineCallbacks
    def test_outputAtCapNotTruncated(self) -> Any:
        """
        Output of exactly C{output_cap} bytes is complete, not truncated.
        """
        result = yield self.run_(["head", "-c", "4096", "/dev/zero"], output_cap=4096)
        self.assertEqual(len(result.stdout), 4096)
        self.assertFalse(result.truncated)

    @inlineCallbacks
    def test_undecodableOutput(self) -> Any:
        """
        Output that is not UTF-8 is decoded with replacement characters.
        """
        result = yield self.run_(["printf", "caf\\303\\251 \\377"])
        self.assertEqual(result.stdout, "caf\u00e9 \ufffd")

    @inlineCallbacks
    def test_timeoutTerminates(self) -> Any:
        """
        A program still running at the timeout gets SIGTERM; if it stops,
        SIGKILL is never needed.
        """
        result = yield self.run_(["sleep", "1000"], timeout=0.3, kill_grace=10.0)
        self.assertTrue(result.timed_out)
        self.assertEqual(result.signal, signal.SIGTERM)
        self.assertIsNone(result.rc)
        self.assertLess(result.duration_s, 5.0)

    @inlineCallbacks
    def test_timeoutKillsWholeGroup(self) -> Any:
        """
        At the timeout a program that ignores SIGTERM, and the grandchild it
        started that holds its stdout, are both killed; the result arrives
        soon after C{timeout + kill_grace}.
        """
        pidFile = os.path.join(self.tempdir, "pids")
        script = (
            "trap '' TERM\n"
            'echo $$ > "$1"\n'
            "sleep 1000 &\n"
            'echo $! >> "$1"\n'
            "echo started\n"
            "wait\n"
        )
        self.addCleanup(killRecorded, pidFile)
        timeout, grace = 1.0, 0.5
        started = time.monotonic()
        result = yield self.run_(
            ["sh", "-c", script, "sh", pidFile], timeout=timeout, kill_grace=grace
        )
        elapsed = time.monotonic() - started
        pids = readPids(pidFile)
        self.assertEqual(len(pids), 2)
        self.assertEqual(result.stdout, "started\n")
        self.assertTrue(result.timed_out)
        self.assertIsNone(result.rc)
        self.assertEqual(result.signal, signal.SIGKILL)
        self.assertGreaterEqual(result.duration_s, timeout + grace - 0.05)
        self.assertLess(elapsed, timeout + grace + 2.0)
        # Our end of the pipe closes as the grandchild's process exits; it
        # may take a moment more to become a zombie (or be gone).
        yield self.waitFor(lambda: all(isDead(pid) for pid in pids), within=2.0)

    @inlineCallbacks
    def test_grandchildHoldsOutputAfterExit(self) -> Any:
        """
        A program that exits at once leaving a grandchild holding stdout
        does not make the run last forever: the grandchild is killed at the
        timeout.
        """
        pidFile = os.path.join(self.tempdir, "pids")
        self.addCleanup(killRecorded, pidFile)
        started = time.monotonic()
        result = yield self.run_(
            ["sh", "-c", 'sleep 1000 & echo $! > "$1"', "sh", pidFile],
            timeout=0.5,
            kill_grace=5.0,
        )
        elapsed = time.monotonic() - started
        [pid] = readPids(pidFile)
        self.assertEqual(result.rc, 0)
        self.assertTrue(result.timed_out)
        self.assertLess(elapsed, 0.5 + 2.0)
        yield self.waitFor(lambda: isDead(pid), within=2.0)

    @inlineCallbacks
    def test_escapedGrandchildHoldsOutput(self) -> Any:
        """
        Even a grandchild that left the process group (its own setsid())
        while holding stdout cannot make the run last forever: our end of
        the pipes is closed shortly after SIGKILL.
        """
        pidFile = os.path.join(self.tempdir, "pids")
        code = (
            "import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-I', '-S', '-c',"
            " 'import os, time; os.setsid(); time.sleep(1000)', 'sleep'])\n"
            "open(sys.argv[1], 'w').write(str(p.pid))\n"
        )
        # It escaped our process group: only this cleanup can end it.
        self.addCleanup(killRecorded, pidFile)
        timeout, grace = 0.3, 0.2
        started = time.monotonic()
        result = yield self.run_(self.python(code, pidFile), timeout=timeout, kill_grace=grace)
        elapsed = time.monotonic() - started
        self.assertEqual(len(readPids(pidFile)), 1)
        self.assertEqual(result.rc, 0)
        self.assertTrue(result.timed_out)
        self.assertLess(elapsed, timeout + grace + commands._ABANDON_PIPES_AFTER + 2.0)

    @inlineCallbacks
    def test_cancel(self) -> Any:
        """
        Cancelling a run fails it with L{CancelledError} and terminates the
        program, which is then reaped.
        """
        pidFile = os.path.join(self.tempdir, "pid")
        self.addCleanup(killRecorded, pidFile)
        d = self.run_(
            ["sh", "-c", 'echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 1000', "sh", pidFile]
        )
        yield self.waitFor(lambda: os.path.exists(pidFile))
        [pid] = readPids(pidFile)
        d.cancel()
        yield self.assertFailure(d, CancelledError)

        def reaped() -> bool:
            pending = [
                call
                for call in self.reactor.getDelayedCalls()
                if getattr(call.func, "__module__", None) == commands.__name__
            ]
            return processState(pid) is None and not pending

        yield self.waitFor(reaped)
