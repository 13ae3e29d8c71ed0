# -*- test-case-name: tests.test_commands -*-
"""
The whitelisted commands an SP runs for its clients, and running them safely.

A client names a command from C{[commands.*]} and sends parameters as
untrusted JSON.  L{validateParameters} turns them into strings (or says
precisely what is wrong with each one), L{buildArgv} places each value inside
exactly one argument of the configured argv, and L{runCommand} runs that argv
directly, never through a shell, with:

  - a minimal environment and C{/} as working directory, so nothing of the
    daemon's own environment leaks into the command or changes its meaning;
  - standard input empty, and no descriptor but 0, 1 and 2 inherited;
  - its own session and process group, so a timeout ends every process the
    command started, not just the first one;
  - bounded memory: at most C{output_cap} bytes of each of stdout and stderr
    are kept, the rest is read and dropped so the command never blocks on a
    full pipe;
  - a deadline: SIGTERM to the group at C{timeout}, SIGKILL C{kill_grace}
    later.

The result is a L{CommandResult}, delivered only once the process has been
reaped and its pipes closed, so no zombie or stray timer is left behind.
"""

from __future__ import annotations

import os
import re
import signal
import string
import sys
import time
from typing import Any, Callable, Mapping

from attrs import frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from spmgmt.config import CommandConfig, ParamConfig

log = Logger()

# The whole environment of a command: a fixed PATH so the whitelist means
# the same programs whatever the daemon was started with, and a UTF-8 locale
# so output decodes predictably.
SAFE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}

# Where commands run: a directory that always exists and that does not
# depend on where the daemon happened to be started.
COMMAND_CWD = "/"

# Twisted's spawnProcess cannot put the child in a new session, so the child
# is this tiny program: it calls setsid() (the child becomes the leader of a
# new session and process group whose id is its pid, which is what lets us
# signal every process the command starts), changes to the working directory
# given as its first argument and then execs the real argv.  Doing the chdir
# here rather than with spawnProcess(path=...) lets Twisted keep using
# posix_spawn() instead of fork() in a possibly threaded daemon.
# Python ignores SIGPIPE and SIGXFSZ at start-up and ignored dispositions
# survive exec, so they are restored first: commands like `yes | head` must
# behave as they do from a shell.  A program that cannot be executed gives
# the shell's exit codes (127 not found, 126 not executable) and a one-line
# message on stderr instead of an exception in the daemon.
_EXEC_IN_NEW_SESSION = """\
import os, signal, sys
for name in ("SIGPIPE", "SIGXFSZ"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
os.setsid()
os.chdir(sys.argv[1])
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    message = "spmgmt: cannot run %r: %s\\n" % (sys.argv[2], e.strerror)
    os.write(2, message.encode("utf-8", "replace"))
    os._exit(126 if isinstance(e, PermissionError) else 127)
"""

# After SIGKILL, how long to wait for the output pipes to close before
# closing our ends ourselves.  Only a process that left the command's process
# group (a daemon that called setsid()) can keep them open that long; it is
# not ours to wait for.
_ABANDON_PIPES_AFTER = 1.0

_INT_RE = re.compile(r"-?[0-9]{1,30}")
_MAX_SHOWN_NAME = 64


class CommandError(Exception):
    """
    A command cannot be run as asked.  C{str()} is a one-line explanation
    fit for the client.
    """


class UnknownCommand(CommandError):
    """
    No command of that name is configured.

    @ivar name: the name asked for, exactly as the client sent it.
    """

    def __init__(self, name: object) -> None:
        super().__init__(f"unknown command {_shortRepr(name)}")
        self.name = name


class InvalidParameters(CommandError):
    """
    The parameters sent for a command are not acceptable.

    @ivar problems: parameter name -> one-line problem, for every problem
        found (not only the first), so a client can fix all at once.
        Undeclared parameters appear under their own name; a body that is
        not an object at all appears under C{"(params)"}.
    """

    def __init__(self, problems: dict[str, str], command: str | None = None) -> None:
        details = "; ".join(f"{name}: {problem}" for name, problem in sorted(problems.items()))
        where = f" for {command}" if command is not None else ""
        super().__init__(f"invalid parameters{where}: {details}")
        self.problems = problems
        self.command = command


def _shortRepr(value: object) -> str:
    """
    A repr short enough for a log line or an error body: client-supplied
    names can be arbitrarily long.
    """
    text = repr(value)
    if len(text) > _MAX_SHOWN_NAME:
        text = text[: _MAX_SHOWN_NAME - 3] + "..."
    return text


def _shortName(name: object) -> str:
    """
    The key under which a problem with the client-supplied parameter C{name}
    is reported: the name itself when it is reasonable, shortened otherwise.
    """
    if isinstance(name, str) and len(name) <= _MAX_SHOWN_NAME:
        return name
    return _shortRepr(name)


def _jsonTypeName(value: object) -> str:
    """
    Name the type of a decoded JSON value the way the client wrote it.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def lookupCommand(commands: Mapping[str, CommandConfig], name: object) -> CommandConfig:
    """
    The configured command called C{name}.

    C{name} comes from the client, so it may be anything; only an exact
    string key of the whitelist is accepted.

    @raise UnknownCommand: there is no such command.
    """
    if isinstance(name, str) and name in commands:
        return commands[name]
    raise UnknownCommand(name)


def _checkValue(param: ParamConfig, value: object) -> str:
    """
    Convert one parameter value to the string that will be substituted.

    @raise ValueError: with the one-line problem.
    """
    if param.type == "int":
        if isinstance(value, bool):
            raise ValueError("must be an integer, not a boolean")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str):
            # ASCII digits only: int() would also accept "٣", " 3" and "3_0".
            if not _INT_RE.fullmatch(value):
                raise ValueError("must be an integer")
            number = int(value)
        else:
            raise ValueError(f"must be an integer, not {_jsonTypeName(value)}")
        if param.min is not None and number < param.min:
            raise ValueError(f"must be at least {param.min}")
        if param.max is not None and number > param.max:
            raise ValueError(f"must be at most {param.max}")
        return str(number)

    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_jsonTypeName(value)}")

    if param.type == "enum":
        if value not in param.choices:
            raise ValueError(f"must be one of {', '.join(param.choices)}")
        return value

    # "string"
    if len(value) > param.max_length:
        raise ValueError(f"must be at most {param.max_length} characters")
    if "\x00" in value:
        # execve() cannot pass it: arguments are NUL-terminated.
        raise ValueError("must not contain NUL characters")
    try:
        # JSON can carry lone surrogates ("\ud800"); they cannot become
        # argument bytes, and surrogate-escaped ones would smuggle raw bytes.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    if param.pattern is not None and not re.fullmatch(param.pattern, value):
        raise ValueError(f"must match {param.pattern}")
    return value


def validateParameters(command: CommandConfig, params: object) -> dict[str, str]:
    """
    Check the client's parameters for C{command} and convert them to strings.

    C{params} is decoded JSON straight from the client: it may be L{None}
    (no parameters), not an object at all, or hold values of any JSON type.
    Defaults are applied to parameters that were not given; optional
    parameters without a default are left out of the result (see
    L{buildArgv}).

    @return: parameter name -> value ready for substitution.

    @raise InvalidParameters: listing every problem found, so the client
        does not have to discover them one request at a time.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidParameters(
            {"(params)": f"must be an object, not {_jsonTypeName(params)}"},
            command.name,
        )

    declared = {param.name: param for param in command.params}
    problems: dict[str, str] = {}
    values: dict[str, str] = {}

    for name in params:
        if not isinstance(name, str) or name not in declared:
            problems[_shortName(name)] = "unknown parameter"

    for name, param in declared.items():
        if name in params:
            value = params[name]
        elif param.default is not None:
            value = param.default
        elif param.required:
            problems[name] = "is required"
            continue
        else:
            continue
        try:
            values[name] = _checkValue(param, value)
        except ValueError as e:
            problem = str(e)
            if name not in params:
                # The operator's default is wrong, not the client's request.
                problem = f"the configured default {problem}"
            problems[name] = problem

    if problems:
        raise InvalidParameters(problems, command.name)
    return values


def buildArgv(command: CommandConfig, values: Mapping[str, str]) -> list[str]:
    """
    Substitute validated values into the command's argv.

    Each C{{name}} is replaced by the value of the parameter C{name}; the
    value stays inside the one argument where the placeholder is, whatever
    it contains (spaces, quotes, C{;}, C{$(...)}): there is no shell to
    split or interpret it.  C{{{} and C{}}} are literal braces.

    Only plain names are substituted: no attribute or index lookups, no
    conversions or format specs, so a configuration cannot make formatting
    itself reach into Python objects.

    An argument that uses an optional parameter for which no value was given
    is left out entirely: dropping C{"/data/{sub}"} is safe, turning it into
    C{"/data/"} might not be.

    @raise CommandError: the argv uses a placeholder that is not a declared
        parameter, or a conversion or format spec (the configuration is
        wrong).
    """
    declared = {param.name for param in command.params}
    argv: list[str] = []
    for i, element in enumerate(command.argv):
        pieces: list[str] = []
        try:
            parsed = list(string.Formatter().parse(element))
        except ValueError as e:
            raise CommandError(f"{command.name}: argv[{i}]: {e}") from None
        keep = True
        for literal, field, spec, conversion in parsed:
            pieces.append(literal)
            if field is None:
                continue
            if field not in declared:
                raise CommandError(
                    f"{command.name}: argv[{i}]: {{{field}}} is not a declared parameter"
                )
            if spec or conversion:
                raise CommandError(
                    f"{command.name}: argv[{i}]: {{{field}}} may not have a conversion "
                    "or format spec"
                )
            if field not in values:
                keep = False
                continue
            pieces.append(values[field])
        if keep:
            arg = "".join(pieces)
            if "\x00" in arg:
                raise CommandError(f"{command.name}: argv[{i}] contains a NUL character")
            argv.append(arg)
    return argv


@frozen
class CommandResult:
    """
    How a command run ended.

    @ivar rc: the exit status, or L{None} if a signal ended the process.
    @ivar signal: the signal that ended the process, or L{None}.
    @ivar stdout: at most C{output_cap} bytes of standard output, decoded as
        UTF-8 (undecodable bytes replaced).
    @ivar stderr: likewise for standard error.
    @ivar duration_s: seconds from start until the process was reaped and
        its output pipes closed.
    @ivar timed_out: the command ran past its timeout and was killed.
    @ivar truncated: some stdout or stderr output was dropped.
    """

    name: str
    argv: tuple[str, ...]
    rc: int | None
    signal: int | None
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool
    truncated: bool

    def asJSON(self) -> dict[str, Any]:
        """
        The result as plain JSON-able values, for the HTTP API and PB (which
        must not depend on this class).
        """
        return {
            "name": self.name,
            "argv": list(self.argv),
            "rc": self.rc,
            "signal": self.signal,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration_s": self.duration_s,
            "timed_out": self.timed_out,
            "truncated": self.truncated,
        }


class _CappedBuffer:
    """
    Keep the first C{cap} bytes written; count the rest, which is dropped.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def write(self, data: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += data[:room]
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class _CommandProcess(ProcessProtocol):
    """
    One run of a command: collects output, enforces the deadline and fires
    C{self.deferred} with a L{CommandResult} once the process has ended.
    """

    def __init__(
        self,
        reactor: Any,
        command: CommandConfig,
        argv: list[str],
        monotonic: Callable[[], float],
    ) -> None:
        self.reactor = reactor
        self.command = command
        self.argv = tuple(argv)
        self.monotonic = monotonic
        self.stdout = _CappedBuffer(command.output_cap)
        self.stderr = _CappedBuffer(command.output_cap)
        self.timedOut = False
        self.ended = False
        self.pgid: int | None = None
        self.started = 0.0
        self.calls: list[IDelayedCall] = []
        self.deferred: Deferred[CommandResult] = Deferred(self._cancel)

    def start(self) -> Deferred[CommandResult]:
        """
        Spawn the process and arm the deadline.
        """
        self.started = self.monotonic()
        try:
            transport = self.reactor.spawnProcess(
                self,
                sys.executable,
                [sys.executable, "-I", "-S", "-c", _EXEC_IN_NEW_SESSION, COMMAND_CWD, *self.argv],
                env=dict(SAFE_ENV),
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except Exception as e:
            # fork() or pipe() failed: the system, not the command, is in
            # trouble.  Deferred-returning APIs report errors asynchronously.
            log.error("Cannot start command {name}: {error}", name=self.command.name, error=e)
            return fail(CommandError(f"cannot start {self.command.name}: {e}"))
        # After setsid() in the child, its pid is also its process group id.
        self.pgid = transport.pid
        log.info(
            "Started command {name} (pid {pid}): {argv!r}",
            name=self.command.name,
            pid=self.pgid,
            argv=self.argv,
        )
        if not self.ended:
            # Twisted documents that processEnded might, in principle, run
            # during spawnProcess; then there is nothing left to time out.
            self._later(self.command.timeout, self._timeout)
        return self.deferred

    def _later(self, delay: float, f: Callable[[], None]) -> None:
        self.calls.append(self.reactor.callLater(delay, f))

    # ProcessProtocol

    def connectionMade(self) -> None:
        # Standard input is empty: a command that reads it sees end of file
        # at once instead of waiting forever.
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.stdout.write(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr.write(data)

    def processEnded(self, reason: Failure) -> None:
        """
        The process is reaped and all its pipes are closed: the run is over.
        """
        self.ended = True
        for call in self.calls:
            if call.active():
                call.cancel()
        self.calls = []
        rc: int | None = None
        sig: int | None = None
        if reason.check(ProcessDone):
            rc = 0
        elif reason.check(ProcessTerminated):
            rc = reason.value.exitCode
            sig = reason.value.signal
        result = CommandResult(
            name=self.command.name,
            argv=self.argv,
            rc=rc,
            signal=sig,
            stdout=self.stdout.text(),
            stderr=self.stderr.text(),
            duration_s=self.monotonic() - self.started,
            timed_out=self.timedOut,
            truncated=bool(self.stdout.dropped or self.stderr.dropped),
        )
        log.info(
            "Command {name} (pid {pid}) ended: rc={rc} signal={signal} "
            "timed_out={timed_out} in {duration:.3f}s",
            name=result.name,
            pid=self.pgid,
            rc=rc,
            signal=sig,
            timed_out=result.timed_out,
            duration=result.duration_s,
        )
        if not self.deferred.called:
            self.deferred.callback(result)

    # Deadline

    def _timeout(self) -> None:
        """
        The command ran too long: ask every process of its group to stop,
        then make sure after the grace period.
        """
        self.timedOut = True
        log.warn(
            "Command {name} (pid {pid}) timed out after {timeout}s; terminating its process group",
            name=self.command.name,
            pid=self.pgid,
            timeout=self.command.timeout,
        )
        self._terminate()

    def _terminate(self) -> None:
        self._signal(signal.SIGTERM)
        self._later(self.command.kill_grace, self._kill)

    def _kill(self) -> None:
        log.warn(
            "Command {name} (pid {pid}) still running {grace}s after SIGTERM; "
            "killing its process group",
            name=self.command.name,
            pid=self.pgid,
            grace=self.command.kill_grace,
        )
        self._signal(signal.SIGKILL)
        self._later(_ABANDON_PIPES_AFTER, self._abandonPipes)

    def _abandonPipes(self) -> None:
        """
        The whole group has been killed yet the output pipes are still open:
        some process escaped the group (its own setsid()) while holding them.
        Stop waiting for it; processEnded follows as soon as the command's
        own process is reaped.
        """
        log.warn(
            "Command {name} (pid {pid}) has not ended {delay}s after SIGKILL: "
            "a process outside its group may hold its output open; closing our end",
            delay=_ABANDON_PIPES_AFTER,
            name=self.command.name,
            pid=self.pgid,
        )
        self.transport.loseConnection()

    def _signal(self, signum: int) -> None:
        """
        Send C{signum} to the command's whole process group.

        The group may be gone already (ProcessLookupError), or, in the
        instant between spawn and setsid(), not exist yet: then the process
        itself is signalled if it is still unreaped.
        """
        assert self.pgid is not None
        try:
            os.killpg(self.pgid, signum)
            return
        except ProcessLookupError:
            pass
        except OSError as e:
            # EPERM: e.g. the command became another user through sudo.
            log.warn(
                "Cannot signal process group {pgid} of command {name}: {error}",
                pgid=self.pgid,
                name=self.command.name,
                error=e,
            )
        try:
            self.transport.signalProcess(signum)
        except (ProcessExitedAlready, ProcessLookupError):
            pass
        except OSError as e:
            log.warn(
                "Cannot signal command {name} (pid {pid}): {error}",
                name=self.command.name,
                pid=self.pgid,
                error=e,
            )

    def _cancel(self, deferred: Deferred[CommandResult]) -> None:
        """
        The caller no longer wants the result (e.g. the client went away):
        stop the command as a timeout would.  The Deferred fails with
        L{CancelledError} at once; the process is still reaped later.
        """
        if self.pgid is not None and not self.timedOut:
            log.info("Command {name} (pid {pid}) cancelled", name=self.command.name, pid=self.pgid)
            self._terminate()


def runCommand(
    reactor: Any,
    command: CommandConfig,
    argv: list[str],
    monotonic: Callable[[], float] = time.monotonic,
) -> Deferred[CommandResult]:
    """
    Run C{argv} (from L{buildArgv}) under the limits of C{command}.

    The program is executed directly, never through a shell, in its own
    session and process group, with L{SAFE_ENV}, working directory C{/},
    empty standard input and only descriptors 0, 1 and 2.  On timeout the
    whole group gets SIGTERM, then SIGKILL C{kill_grace} seconds later.

    A program that does not exist or cannot be executed is not an error
    here: the result has rc 127 (or 126) and says why on stderr, as a shell
    would.

    @param reactor: an L{IReactorProcess} and L{IReactorTime}.
    @param monotonic: the clock for C{duration_s}.

    @return: fires with a L{CommandResult} once the process has exited and
        its output pipes are closed; fails with L{CommandError} if the
        process could not be started at all.  Cancelling it terminates the
        command.
    """
    if not argv:
        return fail(CommandError(f"{command.name}: empty argv"))
    return _CommandProcess(reactor, command, argv, monotonic).start()


__all__ = [
    "SAFE_ENV",
    "CommandError",
    "CommandResult",
    "InvalidParameters",
    "UnknownCommand",
    "buildArgv",
    "lookupCommand",
    "runCommand",
    "validateParameters",
]
