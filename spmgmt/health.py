# -*- test-case-name: tests.test_health -*-
"""
Health checks of one SP, and the monitor that runs them.

The SP serves its full application only while it is healthy; while any
critical check is down it serves the service-mode web server instead, so an
operator (or the proxy) can see and repair what is wrong without the array
being driven by a sick controller.

The decisions live in pure code: L{observe} folds one check result into a
L{CheckState} (the fall/rise hysteresis), L{isHealthy} aggregates the states,
and small functions turn raw observations (a C{statvfs} result, an exit
status, a lag) into L{CheckResult}s.  Everything that touches the world (the
file system, processes, the clock, the network) is a thin shell around them,
with the clock, the monotonic time source, the thread runner, C{statvfs} and
the HTTP probe injected so the tests drive them deterministically.

Decisions worth knowing:

  - Before its first result a check is I{pending} and counts as up: the SP
    starts healthy.  The I{first} result decides the state of a check
    directly, without waiting for C{fall} failures, so an SP started while
    its maintenance file exists never serves the full application.  Checks
    that answer synchronously (the maintenance file) have decided before
    L{HealthMonitor.startService} returns.

  - A check that raises, whose L{Deferred} fails, that returns something
    other than a L{CheckResult}, or that exceeds its C{timeout}, counts as a
    failed run; the monitor always schedules the next run.  Unexpected errors
    are logged with their traceback once per distinct error, not once per
    run, so a broken check cannot flood the log every half second.

  - C{onChange} is called on every flip of the aggregate health, including
    the first flip away from the initial "healthy" assumption, and never
    otherwise.  Listeners assume healthy until told otherwise.
"""

from __future__ import annotations

import os
import shutil
import time
from functools import partial
from typing import Any, Callable, Iterable, Protocol, Sequence, TypeVar

from attrs import define, evolve, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from spmgmt.config import CheckConfig

log = Logger()

_T = TypeVar("_T")

#: The environment of an exec check: enough to find programs, nothing of the
#: daemon's own environment (which may hold secrets or odd locales).
MINIMAL_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
}

#: How much of an exec check's output is kept (for the detail); the rest is
#: read and thrown away, so a chatty check cannot fill the daemon's memory.
EXEC_OUTPUT_CAP = 4096

#: How long L{ExecCheck.stop} waits for killed processes to be reaped.
EXEC_STOP_GRACE = 5.0

_DETAIL_MAX = 200


# --------------------------------------------------------------------------
# Pure state


@frozen
class CheckResult:
    """
    The outcome of one run of a check.

    @ivar passed: the check passed.
    @ivar detail: one line for operators, saying what was seen.
    @ivar value: the measured quantity, if any (free MB, lag seconds...), so
        dashboards can graph it without parsing C{detail}.
    """

    passed: bool
    detail: str
    value: float | None = None


@frozen
class CheckState:
    """
    What is known about one check, after all its results so far.

    @ivar up: the check counts as passing for the SP's health.
    @ivar pending: no result yet (and so C{up}, by decision).
    @ivar passes: consecutive passes up to the last result.
    @ivar fails: consecutive failures up to the last result.
    @ivar detail: the detail of the last result.
    @ivar value: the value of the last result.
    @ivar lastRun: monotonic time of the last result, L{None} if pending.
    """

    name: str
    critical: bool
    up: bool = True
    pending: bool = True
    passes: int = 0
    fails: int = 0
    detail: str = "pending"
    value: float | None = None
    lastRun: float | None = None


def observe(
    state: CheckState,
    passed: bool,
    detail: str,
    value: float | None,
    now: float,
    fall: int,
    rise: int,
) -> CheckState:
    """
    Fold one result into C{state}.

    A check goes down after C{fall} failures in a row and up again after
    C{rise} passes in a row, so one flaky run does not flip the SP.  The
    first result decides directly: at startup there is no history to
    protect, and waiting C{fall} intervals would let an SP whose maintenance
    file is already there serve the full application meanwhile.
    """
    passes = state.passes + 1 if passed else 0
    fails = 0 if passed else state.fails + 1
    if state.pending:
        up = passed
    elif passed:
        up = state.up or passes >= rise
    else:
        up = state.up and fails < fall
    return evolve(
        state,
        up=up,
        pending=False,
        passes=passes,
        fails=fails,
        detail=detail,
        value=value,
        lastRun=now,
    )


def isHealthy(states: Iterable[CheckState]) -> bool:
    """
    The SP is healthy unless a critical check is down; non-critical checks
    are only reported, so a failing nicety never takes the SP out of service.
    """
    return all(state.up for state in states if state.critical)


def _oneLine(text: str) -> str:
    """The first non-empty line of C{text}, shortened for a detail."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= _DETAIL_MAX else line[: _DETAIL_MAX - 3] + "..."
    return ""


def _seconds(value: float) -> str:
    return f"{value:g}s"


def diskFreeResult(path: str, freeBytes: int, minFreeMB: float) -> CheckResult:
    """
    Judge the free space of C{path}.  Free space is what an unprivileged
    writer can use (C{f_bavail}), since the daemon does not run as root.
    """
    freeMB = freeBytes / (1024 * 1024)
    passed = freeMB >= minFreeMB
    detail = f"{freeMB:.1f} MB free at {path} ({'>=' if passed else '<'} {minFreeMB:g} MB)"
    return CheckResult(passed, detail, freeMB)


def lagResult(lag: float, maxLag: float) -> CheckResult:
    """Judge the worst event-loop lag seen since the previous run."""
    lag = max(0.0, lag)
    passed = lag < maxLag
    return CheckResult(passed, f"reactor lag {lag:.3f}s ({'<' if passed else '>='} {maxLag:g}s)", lag)


def exitResult(reason: BaseException, output: bytes) -> CheckResult:
    """
    Judge how a check process ended: it passes iff it exited with status 0.
    The first line of its output explains a failure to operators.
    """
    said = _oneLine(output.decode("utf-8", "replace"))
    if isinstance(reason, ProcessDone):
        return CheckResult(True, "exit 0" + (f": {said}" if said else ""), 0.0)
    if isinstance(reason, ProcessTerminated) and reason.exitCode is not None:
        detail = f"exit {reason.exitCode}" + (f": {said}" if said else "")
        return CheckResult(False, detail, float(reason.exitCode))
    if isinstance(reason, ProcessTerminated) and reason.signal is not None:
        return CheckResult(False, f"killed by signal {reason.signal}", None)
    return CheckResult(False, f"ended abnormally: {reason}", None)


def httpResult(status: int) -> CheckResult:
    """Our own /healthz passes only with a plain 200."""
    return CheckResult(status == 200, f"HTTP {status}", float(status))


# --------------------------------------------------------------------------
# Checks


class HealthCheck(Protocol):
    """
    Something the monitor can run.  It may also have C{start()} and
    C{stop()} (which may return a L{Deferred}); the monitor calls them when
    it starts and stops.
    """

    def run(self) -> CheckResult | Deferred[CheckResult]:
        """Run the check once."""


@frozen
class MaintenanceFileCheck:
    """
    Fails while something exists at C{path}: operators take an SP out of
    service with C{touch}, without needing the daemon to answer.

    A single C{lstat} of a local file is cheap, so it is done synchronously;
    this also lets the check decide before the SP starts serving.
    """

    path: str

    def run(self) -> CheckResult:
        try:
            os.lstat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return CheckResult(True, f"no maintenance file {self.path}")
        except OSError as e:
            # We cannot tell whether the operator wants maintenance: report
            # it rather than guess, and say why.
            return CheckResult(False, f"cannot check {self.path}: {e.strerror}")
        return CheckResult(False, f"maintenance file {self.path} exists")


def _callNow(f: Callable[..., _T], *args: Any) -> Deferred[_T]:
    return maybeDeferred(f, *args)


@define(eq=False)
class DiskFreeCheck:
    """
    Fails while the free space of the file system holding C{path} is below
    C{minFreeMB}.

    C{statvfs} can hang forever on a dead mount, and a hung reactor would
    stop the whole SP (failover included), so in production the call runs in
    a thread: L{buildChecks} passes the reactor's thread pool as
    C{runInThread}.  The default runs it synchronously, which is fine for
    local disks and for tests.  A hung C{statvfs} would pin one thread; the
    check never starts a second one while the first has not returned (it
    fails at once instead), so a dead mount costs one thread, not the pool.

    @ivar runInThread: called as C{runInThread(f, *args)}, returns a
        L{Deferred} with C{f(*args)}.
    """

    path: str
    minFreeMB: float
    statvfs: Callable[[str], Any] = os.statvfs
    runInThread: Callable[..., Deferred[Any]] = _callNow
    _busy: bool = field(default=False, init=False)

    def run(self) -> Deferred[CheckResult]:
        if self._busy:
            return succeed(
                CheckResult(False, f"statvfs of {self.path} has not returned yet (dead mount?)")
            )
        self._busy = True
        inner = self.runInThread(self.statvfs, self.path)
        inner.addBoth(self._returned)
        inner.addCallbacks(self._judge, self._unreadable)
        # Cancelling (a timeout) must not be mistaken for the thread having
        # returned, so the caller gets its own Deferred; a late result is
        # then dropped by the cancelled Deferred.
        outer: Deferred[CheckResult] = Deferred()
        inner.chainDeferred(outer)
        return outer

    def _returned(self, result: _T) -> _T:
        self._busy = False
        return result

    def _judge(self, st: Any) -> CheckResult:
        return diskFreeResult(self.path, st.f_bavail * st.f_frsize, self.minFreeMB)

    def _unreadable(self, reason: Failure) -> CheckResult:
        reason.trap(OSError)
        return CheckResult(False, f"cannot statvfs {self.path}: {reason.value.strerror}")


@define(eq=False)
class ReactorLagCheck:
    """
    Fails when the event loop stalled for C{maxLag} seconds or more since
    the previous run.

    A stall is invisible to a check that only runs every interval (the run
    itself is simply late), so between runs a sampler asks to be called
    every C{sampleInterval} seconds and records how late it was called,
    measured on C{monotonic} so that wall-clock steps are not lag (a
    backward step of the reactor's own clock can still delay a sample; NTP
    slews, so this is rare).  A run reports the worst lateness seen since
    the previous run, including that of a sample overdue right now.

    @ivar clock: schedules the samples.
    @ivar monotonic: measures their lateness.
    """

    clock: IReactorTime
    maxLag: float
    monotonic: Callable[[], float]
    sampleInterval: float = 0.05
    _call: IDelayedCall | None = field(default=None, init=False)
    _due: float = field(default=0.0, init=False)
    _worst: float = field(default=0.0, init=False)

    def start(self) -> None:
        """Start sampling; does nothing if already sampling."""
        if self._call is None:
            self._worst = 0.0
            self._schedule()

    def stop(self) -> None:
        """Stop sampling, leaving no delayed call behind."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        self._due = self.monotonic() + self.sampleInterval
        self._call = self.clock.callLater(self.sampleInterval, self._sample)

    def _sample(self) -> None:
        self._worst = max(self._worst, self.monotonic() - self._due)
        self._schedule()

    def run(self) -> CheckResult:
        # Started lazily, so that the check also works outside a monitor.
        if self._call is None:
            self.start()
        worst = max(self._worst, self.monotonic() - self._due)
        self._worst = 0.0
        return lagResult(worst, self.maxLag)


class _CheckProcess(ProcessProtocol):
    """
    Collects the first C{cap} bytes of a check process's output (the rest is
    discarded) and fires C{ended} with the reason it ended.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.output = bytearray()
        self.ended: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        # Checks get no input: a check waiting on stdin ends, not hangs.
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        room = self.cap - len(self.output)
        if room > 0:
            self.output += data[:room]

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


@define(eq=False)
class ExecCheck:
    """
    Runs C{argv} (directly, never through a shell) and passes iff it exits
    with status 0 within C{timeout} seconds; otherwise it is killed with
    C{SIGKILL} (a check has no state worth a graceful stop).

    The program runs with only C{env} as its environment, so C{argv[0]} is
    looked up on C{env["PATH"]} here (C{posix_spawnp} would search the
    daemon's own C{PATH}).  Cancelling the L{Deferred} from L{run} kills the
    process too, so the monitor's timeout and shutdown do not leak processes.

    A check program that leaves children holding its output open is only
    considered ended when they close it; the monitor's timeout bounds that.
    """

    reactor: Any
    argv: Sequence[str]
    timeout: float
    env: dict[str, str] = field(factory=lambda: dict(MINIMAL_ENV))
    outputCap: int = EXEC_OUTPUT_CAP
    _running: dict[_CheckProcess, IDelayedCall] = field(factory=dict, init=False)

    def run(self) -> Deferred[CheckResult]:
        program = self.argv[0]
        executable = program if "/" in program else shutil.which(program, path=self.env.get("PATH", ""))
        if executable is None:
            return succeed(CheckResult(False, f"program {program!r} not found"))
        process = _CheckProcess(self.outputCap)
        try:
            transport = self.reactor.spawnProcess(
                process, executable, list(self.argv), env=self.env
            )
        except OSError as e:
            return succeed(CheckResult(False, f"cannot run {program}: {e.strerror}"))
        timedOut = False

        def kill() -> None:
            try:
                transport.signalProcess("KILL")
            except (ProcessExitedAlready, OSError):
                pass

        def onTimeout() -> None:
            nonlocal timedOut
            timedOut = True
            kill()

        def onCancel(result: Deferred[CheckResult]) -> None:
            if timer.active():
                timer.cancel()
            kill()

        def onEnded(reason: BaseException) -> None:
            self._running.pop(process, None)
            if timer.active():
                timer.cancel()
            if result.called:  # cancelled
                return
            if timedOut:
                result.callback(
                    CheckResult(False, f"timed out after {_seconds(self.timeout)}, killed")
                )
            else:
                result.callback(exitResult(reason, bytes(process.output)))

        result: Deferred[CheckResult] = Deferred(onCancel)
        timer = self.reactor.callLater(self.timeout, onTimeout)
        self._running[process] = timer
        process.ended.addCallback(onEnded)
        return result

    def stop(self) -> Deferred[object]:
        """
        Kill every check process still running and fire once they have ended
        (or after L{EXEC_STOP_GRACE} seconds), so shutdown leaves none behind.
        """
        waits = []
        for process, timer in list(self._running.items()):
            if timer.active():
                timer.cancel()
            try:
                process.transport.signalProcess("KILL")
            except (ProcessExitedAlready, OSError):
                pass
            waits.append(process.ended)
        if not waits:
            return succeed(None)
        gathered: Deferred[object] = Deferred()
        DeferredList(waits, consumeErrors=True).chainDeferred(gathered)
        return gathered.addTimeout(EXEC_STOP_GRACE, self.reactor).addErrback(self._notReaped)

    @staticmethod
    def _notReaped(reason: Failure) -> None:
        reason.trap(TimeoutError)
        log.warn("Killed check processes have not ended after {grace}s", grace=EXEC_STOP_GRACE)


@frozen
class HttpSelfCheck:
    """
    Passes iff our own HTTPS C{/healthz} answers 200: the process is up, yet
    may be unable to serve (TLS, the web stack).  C{probe} makes the request
    and fires with the status code; the SP service provides it.  A failed
    request is an ordinary failure of the check, reported without traceback.
    """

    probe: Callable[[], Deferred[int]]

    def run(self) -> Deferred[CheckResult]:
        return maybeDeferred(self.probe).addCallbacks(httpResult, self._failed)

    @staticmethod
    def _failed(reason: Failure) -> CheckResult | Failure:
        if reason.check(CancelledError):
            # Let the monitor see its own timeout or shutdown.
            return reason
        return CheckResult(False, f"request failed: {reason.getErrorMessage()}")


def buildChecks(
    reactor: Any,
    checks: Iterable[CheckConfig],
    spId: str,
    httpProbe: Callable[[], Deferred[int]],
    monotonic: Callable[[], float] = time.monotonic,
) -> list[tuple[CheckConfig, HealthCheck]]:
    """
    Make the checks of the SP C{spId} from their configuration.

    C{{id}} in a path or an C{argv} element is replaced by C{spId}; the
    returned configurations carry the substituted values, so what operators
    see is what is checked.  Exec checks also get C{SPMGMT_SP_ID} in their
    environment.

    @param reactor: provides time, processes and a thread pool.
    @param httpProbe: fires with the status of our own C{/healthz}.
    """

    def sub(text: str) -> str:
        return text.replace("{id}", spId)

    built: list[tuple[CheckConfig, HealthCheck]] = []
    for config in checks:
        check: HealthCheck
        if config.path is not None:
            config = evolve(config, path=sub(config.path))
        if config.argv:
            config = evolve(config, argv=tuple(sub(arg) for arg in config.argv))
        if config.kind == "maintenance_file":
            check = MaintenanceFileCheck(config.path)
        elif config.kind == "disk_free":
            check = DiskFreeCheck(
                config.path,
                config.min_free_mb,
                runInThread=partial(deferToThreadPool, reactor, reactor.getThreadPool()),
            )
        elif config.kind == "reactor_lag":
            check = ReactorLagCheck(reactor, config.max_lag, monotonic)
        elif config.kind == "exec":
            check = ExecCheck(
                reactor, config.argv, config.timeout, env=dict(MINIMAL_ENV, SPMGMT_SP_ID=spId)
            )
        elif config.kind == "http_self":
            check = HttpSelfCheck(httpProbe)
        else:
            raise ValueError(f"unknown check kind {config.kind!r} for check {config.name!r}")
        built.append((config, check))
    return built


# --------------------------------------------------------------------------
# The monitor


@define(eq=False)
class _Slot:
    """One check being run by the monitor, and what the monitor knows of it."""

    config: CheckConfig
    check: HealthCheck
    state: CheckState
    nextRun: IDelayedCall | None = None
    inFlight: Deferred[None] | None = None


@define(eq=False)
class HealthMonitor(Service):
    """
    Runs the checks, each on its own schedule, and tells C{onChange} when
    the SP's health flips.

    Each check runs at start and then C{interval} seconds after its previous
    run finished (so a slow check never overlaps itself), each run bounded
    by C{timeout}.  Nothing a check does stops its loop.

    @ivar clock: schedules runs and timeouts.
    @ivar monotonic: dates results (for C{age_s}).
    @ivar onChange: called as C{onChange(healthy, snapshot)} on each flip.
    """

    clock: IReactorTime
    monotonic: Callable[[], float]
    checks: Sequence[tuple[CheckConfig, HealthCheck]]
    onChange: Callable[[bool, dict[str, Any]], None]
    _slots: list[_Slot] = field(factory=list, init=False)
    _reported: bool = field(default=True, init=False)
    _generation: int = field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = [self._freshSlot(config, check) for config, check in self.checks]

    @staticmethod
    def _freshSlot(config: CheckConfig, check: HealthCheck) -> _Slot:
        return _Slot(config, check, CheckState(name=config.name, critical=config.critical))

    @property
    def healthy(self) -> bool:
        """The SP is healthy now (L{isHealthy} of every check's state)."""
        return isHealthy(slot.state for slot in self._slots)

    def startService(self) -> None:
        """
        Start every check's own machinery, then run every check at once.
        Synchronous checks have decided when this returns.
        """
        super().startService()
        self._generation += 1
        self._slots = [self._freshSlot(slot.config, slot.check) for slot in self._slots]
        for slot in self._slots:
            start = getattr(slot.check, "start", None)
            if start is not None:
                try:
                    start()
                except Exception:
                    log.failure("Cannot start health check {name}", name=slot.config.name)
        for slot in self._slots:
            self._run(slot, self._generation)
        # After a restart every check is pending again, which counts as up.
        self._update()

    def stopService(self) -> Deferred[None]:
        """
        Cancel every scheduled and running check and stop the checks' own
        machinery.

        @return: fires once every check has stopped.
        """
        super().stopService()
        self._generation += 1
        waits = []
        for slot in self._slots:
            if slot.nextRun is not None and slot.nextRun.active():
                slot.nextRun.cancel()
            slot.nextRun = None
            if slot.inFlight is not None:
                waits.append(slot.inFlight)
                slot.inFlight.cancel()
            stop = getattr(slot.check, "stop", None)
            if stop is not None:
                waits.append(maybeDeferred(stop))
        stopped: Deferred[None] = Deferred()
        DeferredList(waits, consumeErrors=True).addBoth(lambda _: None).chainDeferred(stopped)
        return stopped

    def _run(self, slot: _Slot, generation: int) -> None:
        slot.nextRun = None
        running = maybeDeferred(slot.check.run).addTimeout(slot.config.timeout, self.clock)
        slot.inFlight = running
        # A synchronous check has already answered: these run right away.
        running.addCallbacks(
            self._checkedResult, self._failedRun, errbackArgs=(slot, generation)
        )
        running.addCallback(self._finished, slot, generation)
        running.addErrback(self._bug, slot)

    @staticmethod
    def _checkedResult(result: object) -> CheckResult:
        if not isinstance(result, CheckResult):
            return CheckResult(False, f"check returned {result!r}, not a CheckResult")
        return result

    def _failedRun(self, reason: Failure, slot: _Slot, generation: int) -> CheckResult | None:
        if generation != self._generation:
            return None  # Cancelled by stopService: nothing to record.
        if reason.check(TimeoutError):
            return CheckResult(False, f"timed out after {_seconds(slot.config.timeout)}")
        detail = f"error: {reason.type.__name__}: {reason.getErrorMessage()}"
        if detail != slot.state.detail:
            log.failure("Health check {name} failed with an error", reason, name=slot.config.name)
        return CheckResult(False, detail)

    @staticmethod
    def _bug(reason: Failure, slot: _Slot) -> None:
        log.failure("Health monitor failed handling check {name}", reason, name=slot.config.name)

    def _finished(self, result: CheckResult | None, slot: _Slot, generation: int) -> None:
        if result is None or generation != self._generation:
            return
        slot.inFlight = None
        before = slot.state
        slot.state = observe(
            before,
            result.passed,
            result.detail,
            result.value,
            self.monotonic(),
            slot.config.fall,
            slot.config.rise,
        )
        slot.nextRun = self.clock.callLater(slot.config.interval, self._run, slot, generation)
        if before.pending or before.up != slot.state.up:
            emit = log.info if slot.state.up else log.warn
            emit(
                "Health check {name} is {status}: {detail}",
                name=slot.config.name,
                status="up" if slot.state.up else "down",
                detail=result.detail,
            )
        self._update()

    def _update(self) -> None:
        """Tell C{onChange} if the aggregate health differs from what it was told."""
        healthy = self.healthy
        if healthy == self._reported:
            return
        self._reported = healthy
        snapshot = self.snapshot()
        if healthy:
            log.info("SP is healthy again")
        else:
            down = ", ".join(c["name"] for c in snapshot["checks"] if c["critical"] and not c["up"])
            log.warn("SP is unhealthy: critical checks down: {down}", down=down)
        try:
            self.onChange(healthy, snapshot)
        except Exception:
            log.failure("Health change listener failed")

    def snapshot(self) -> dict[str, Any]:
        """
        The health of the SP and of each check, as plain JSON-able data for
        the status pages and the proxy.  C{age_s} is the age of the last
        result in seconds, L{None} while pending.
        """
        now = self.monotonic()
        return {
            "healthy": self.healthy,
            "checks": [
                {
                    "name": slot.state.name,
                    "kind": slot.config.kind,
                    "critical": slot.state.critical,
                    "up": slot.state.up,
                    "pending": slot.state.pending,
                    "passes": slot.state.passes,
                    "fails": slot.state.fails,
                    "detail": slot.state.detail,
                    "value": slot.state.value,
                    "age_s": None if slot.state.lastRun is None else max(0.0, now - slot.state.lastRun),
                }
                for slot in self._slots
            ],
        }
