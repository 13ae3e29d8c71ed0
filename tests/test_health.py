# -*- test-case-name: tests.test_health -*-
"""
Tests for L{spmgmt.health}.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

from twisted.application.service import IService, MultiService
from twisted.internet.defer import CancelledError, Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spmgmt.config import CheckConfig
from spmgmt.health import (
    MINIMAL_ENV,
    CheckResult,
    CheckState,
    DiskFreeCheck,
    ExecCheck,
    HealthMonitor,
    HttpSelfCheck,
    MaintenanceFileCheck,
    ReactorLagCheck,
    buildChecks,
    isHealthy,
    observe,
)

def tempPath(case: SynchronousTestCase) -> str:
    """
    A path in a fresh temporary directory removed after the test (not
    C{mktemp}, which under pytest litters the working directory).
    """
    directory = tempfile.mkdtemp(prefix="spmgmt-health-")
    case.addCleanup(shutil.rmtree, directory, True)
    return os.path.join(directory, "x")


def play(sequence: str, fall: int = 3, rise: int = 2) -> str:
    """
    Feed C{sequence} (C{P} pass, C{F} fail) to L{observe} from a pending
    state and spell the resulting C{up} after each result (C{U} up, C{D}
    down).
    """
    state = CheckState(name="c", critical=True)
    ups = []
    for now, outcome in enumerate(sequence):
        state = observe(state, outcome == "P", outcome, None, float(now), fall, rise)
        ups.append("U" if state.up else "D")
    return "".join(ups)


class ObserveTests(SynchronousTestCase):
    """
    L{observe} applies the fall/rise hysteresis, the first result deciding.
    """

    def test_pendingCountsAsUp(self) -> None:
        """
        A check with no result yet is pending and up, so the SP starts
        healthy.
        """
        state = CheckState(name="c", critical=True)
        self.assertEqual((state.pending, state.up, state.lastRun), (True, True, None))
        self.assertTrue(isHealthy([state]))

    def test_table(self) -> None:
        """
        With fall=3 and rise=2 a check goes down after 3 failures in a row
        and up after 2 passes in a row, except that its first result decides
        at once.
        """
        table = [
            ("P", "U"),
            ("F", "D"),  # first result decisive: no waiting for fall
            ("PF", "UU"),
            ("PFF", "UUU"),
            ("PFFF", "UUUD"),
            ("PFFPFFF", "UUUUUUD"),  # failures not in a row do not add up
            ("PFFFP", "UUUDD"),
            ("PFFFPP", "UUUDDU"),
            ("PFFFPFPP", "UUUDDDDU"),  # a failure restarts the rise count
            ("FP", "DD"),
            ("FPP", "DDU"),
            ("FPPF", "DDUU"),
            ("FPPFFF", "DDUUUD"),
        ]
        for sequence, expected in table:
            self.assertEqual(play(sequence), expected, sequence)

    def test_fallAndRiseOfOne(self) -> None:
        """
        fall=1, rise=1 follows every result.
        """
        self.assertEqual(play("PFPFFPP", fall=1, rise=1), "UDUDDUU")

    def test_counts(self) -> None:
        """
        The state counts consecutive passes and failures and keeps the last
        result's detail, value and time.
        """
        state = CheckState(name="disk", critical=False)
        state = observe(state, True, "ok", 1.5, 10.0, 3, 2)
        state = observe(state, True, "ok", 2.5, 11.0, 3, 2)
        self.assertEqual(
            state,
            CheckState(
                name="disk",
                critical=False,
                up=True,
                pending=False,
                passes=2,
                fails=0,
                detail="ok",
                value=2.5,
                lastRun=11.0,
            ),
        )
        state = observe(state, False, "bad", None, 12.0, 3, 2)
        self.assertEqual((state.passes, state.fails, state.detail, state.value), (0, 1, "bad", None))


class IsHealthyTests(SynchronousTestCase):
    """
    L{isHealthy} only looks at critical checks.
    """

    def state(self, critical: bool, up: bool) -> CheckState:
        return CheckState(name="c", critical=critical, up=up, pending=False)

    def test_empty(self) -> None:
        """
        No checks, nothing wrong.
        """
        self.assertTrue(isHealthy([]))

    def test_nonCriticalNeverUnhealthy(self) -> None:
        """
        Down non-critical checks do not make the SP unhealthy.
        """
        self.assertTrue(isHealthy([self.state(False, False), self.state(True, True)]))

    def test_criticalDown(self) -> None:
        """
        One critical check down makes the SP unhealthy.
        """
        self.assertFalse(isHealthy([self.state(True, True), self.state(True, False)]))


class ScriptedCheck:
    """
    A check whose runs follow a script.  Each entry is C{True}/C{False} (a
    result), an exception (raised), C{"hang"} (a Deferred that never fires)
    or a L{Deferred} (returned).  The last entry repeats.
    """

    def __init__(self, *script: object) -> None:
        self.script = list(script)
        self.runs = 0
        self.pending: list[Deferred[CheckResult]] = []
        self.cancelled = 0

    def run(self) -> object:
        step = self.script[min(self.runs, len(self.script) - 1)]
        self.runs += 1
        if isinstance(step, BaseException):
            raise step
        if step == "hang":
            d: Deferred[CheckResult] = Deferred(lambda d: self._cancelled())
            self.pending.append(d)
            return d
        if isinstance(step, (Deferred, CheckResult)):
            return step
        if isinstance(step, bool):
            return CheckResult(step, "scripted pass" if step else "scripted fail", 1.0)
        return step

    def _cancelled(self) -> None:
        self.cancelled += 1


class StartStopCheck(ScriptedCheck):
    """
    A scripted check with its own machinery, recording start and stop.
    """

    def __init__(self, *script: object) -> None:
        super().__init__(*script)
        self.events: list[str] = []
        self.stopped: Deferred[None] = Deferred()

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> Deferred[None]:
        self.events.append("stop")
        return self.stopped


def checkConfig(name: str = "c", **kw: object) -> CheckConfig:
    values: dict[str, object] = dict(
        name=name, kind="exec", interval=1.0, timeout=0.5, fall=3, rise=2, critical=True
    )
    values.update(kw)
    return CheckConfig(**values)  # type: ignore[arg-type]


class HealthMonitorTests(SynchronousTestCase):
    """
    L{HealthMonitor} runs checks on their schedules and reports flips, driven
    by a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.changes: list[tuple[bool, dict]] = []

    def monitor(self, *checks: tuple[CheckConfig, object]) -> HealthMonitor:
        monitor = HealthMonitor(
            self.clock, self.clock.seconds, list(checks), lambda h, s: self.changes.append((h, s))
        )
        self.addCleanup(self.stopped, monitor)
        return monitor

    def stopped(self, monitor: HealthMonitor) -> None:
        if monitor.running:
            self.successResultOf(monitor.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_isService(self) -> None:
        """
        The monitor is a service, to be put in the SP's service tree.
        """
        self.assertTrue(IService.providedBy(self.monitor()))

    def test_inServiceTree(self) -> None:
        """
        A parent service starts the monitor and waits for it to stop.
        """
        machinery = StartStopCheck(True)
        parent = MultiService()
        monitor = self.monitor((checkConfig(), machinery))
        monitor.setServiceParent(parent)
        parent.startService()
        self.assertEqual((monitor.running, machinery.runs), (1, 1))
        stopped = parent.stopService()
        self.assertNoResult(stopped)
        machinery.stopped.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(monitor.running, 0)

    def test_schedule(self) -> None:
        """
        Every check runs at start, then every C{interval} seconds after its
        previous run finished, each on its own schedule.
        """
        fast, slow = ScriptedCheck(True), ScriptedCheck(True)
        monitor = self.monitor(
            (checkConfig("fast", interval=1.0), fast), (checkConfig("slow", interval=3.0), slow)
        )
        monitor.startService()
        self.assertEqual((fast.runs, slow.runs), (1, 1))
        self.clock.advance(0.999)
        self.assertEqual((fast.runs, slow.runs), (1, 1))
        self.clock.advance(0.001)
        self.assertEqual((fast.runs, slow.runs), (2, 1))
        self.clock.pump([1.0, 1.0])
        self.assertEqual((fast.runs, slow.runs), (4, 2))

    def test_intervalAfterFinish(self) -> None:
        """
        The next run is scheduled C{interval} seconds after the previous run
        finished, so a slow check never overlaps itself.
        """
        answer: Deferred[CheckResult] = Deferred()
        check = ScriptedCheck(answer, True)
        self.monitor((checkConfig(interval=1.0, timeout=10.0), check)).startService()
        self.clock.advance(5)
        self.assertEqual(check.runs, 1)
        answer.callback(CheckResult(True, "late"))
        self.clock.advance(0.999)
        self.assertEqual(check.runs, 1)
        self.clock.advance(0.001)
        self.assertEqual(check.runs, 2)

    def test_firstResultDecides(self) -> None:
        """
        A synchronous critical check failing its first run makes the SP
        unhealthy before C{startService} returns.
        """
        monitor = self.monitor((checkConfig("maint", fall=3), ScriptedCheck(False)))
        monitor.startService()
        self.assertFalse(monitor.healthy)
        self.assertEqual([h for h, _ in self.changes], [False])

    def test_raisingCheckKeepsRunning(self) -> None:
        """
        A check that raises counts as a failure, is logged (once while it
        keeps failing the same way), and runs again on schedule.
        """
        check = ScriptedCheck(ZeroDivisionError("boom"))
        monitor = self.monitor((checkConfig(fall=2), check))
        monitor.startService()
        self.clock.pump([1.0, 1.0, 1.0])
        self.assertEqual(check.runs, 4)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        [snap] = monitor.snapshot()["checks"]
        self.assertEqual(
            (snap["up"], snap["fails"], snap["detail"]),
            (False, 4, "error: ZeroDivisionError: boom"),
        )

    def test_failedDeferredCountsAsFailure(self) -> None:
        """
        A check whose Deferred fails counts as a failure.
        """
        check = ScriptedCheck(fail(ValueError("nope")), True)
        monitor = self.monitor((checkConfig(rise=1), check))
        monitor.startService()
        self.assertFalse(monitor.healthy)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.clock.advance(1.0)
        self.assertTrue(monitor.healthy)

    def test_wrongResultCountsAsFailure(self) -> None:
        """
        A check returning something other than a L{CheckResult} fails.
        """
        monitor = self.monitor((checkConfig(), ScriptedCheck(True, "yes")))
        monitor.startService()
        self.clock.advance(1.0)
        [snap] = monitor.snapshot()["checks"]
        self.assertEqual(snap["fails"], 1)
        self.assertIn("not a CheckResult", snap["detail"])

    def test_timeout(self) -> None:
        """
        A check that never answers is cancelled after C{timeout}, counts as
        a failure and runs again C{interval} later.
        """
        check = ScriptedCheck("hang")
        monitor = self.monitor((checkConfig(interval=1.0, timeout=2.0, fall=1), check))
        monitor.startService()
        self.assertTrue(monitor.healthy)
        self.clock.advance(1.999)
        self.assertTrue(monitor.healthy)
        self.clock.advance(0.001)
        self.assertEqual(check.cancelled, 1)
        self.assertFalse(monitor.healthy)
        [snap] = monitor.snapshot()["checks"]
        self.assertEqual(snap["detail"], "timed out after 2s")
        self.clock.advance(1.0)
        self.assertEqual(check.runs, 2)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_onChangeOnFlipsOnly(self) -> None:
        """
        C{onChange} is called exactly when the aggregate health flips, with
        the snapshot of that moment.
        """
        script = [True, False, False, True, False, False, False, True, True, True]
        check = ScriptedCheck(*script)
        monitor = self.monitor((checkConfig(fall=2, rise=2), check))
        monitor.startService()
        ups = [monitor.healthy]
        for _ in script[1:]:
            self.clock.advance(1.0)
            ups.append(monitor.healthy)
        self.assertEqual(ups, [True, True, False, False, False, False, False, False, True, True])
        self.assertEqual([h for h, _ in self.changes], [False, True])
        self.assertEqual([s["healthy"] for _, s in self.changes], [False, True])

    def test_nonCriticalNeverUnhealthy(self) -> None:
        """
        A failing non-critical check is reported but never makes the SP
        unhealthy.
        """
        monitor = self.monitor((checkConfig(critical=False, fall=1), ScriptedCheck(False)))
        monitor.startService()
        self.clock.pump([1.0] * 5)
        self.assertTrue(monitor.healthy)
        self.assertEqual(self.changes, [])
        self.assertFalse(monitor.snapshot()["checks"][0]["up"])

    def test_onChangeErrorKeepsRunning(self) -> None:
        """
        A listener that raises is logged and does not stop the checks.
        """
        check = ScriptedCheck(False, True)

        def broken(healthy: bool, snapshot: dict) -> None:
            raise RuntimeError("listener")

        monitor = HealthMonitor(self.clock, self.clock.seconds, [(checkConfig(rise=1), check)], broken)
        self.addCleanup(self.stopped, monitor)
        monitor.startService()
        self.clock.advance(1.0)
        self.assertEqual(check.runs, 2)
        self.assertTrue(monitor.healthy)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_snapshot(self) -> None:
        """
        The snapshot is plain JSON-able data about every check.
        """
        monitor = self.monitor(
            (checkConfig("a", kind="disk_free"), ScriptedCheck(True)),
            (checkConfig("b", kind="http_self", critical=False, timeout=5.0), ScriptedCheck("hang")),
        )
        monitor.startService()
        self.clock.advance(0.25)
        snapshot = monitor.snapshot()
        self.assertEqual(json.loads(json.dumps(snapshot)), snapshot)
        self.assertEqual(
            snapshot,
            {
                "healthy": True,
                "checks": [
                    {
                        "name": "a",
                        "kind": "disk_free",
                        "critical": True,
                        "up": True,
                        "pending": False,
                        "passes": 1,
                        "fails": 0,
                        "detail": "scripted pass",
                        "value": 1.0,
                        "age_s": 0.25,
                    },
                    {
                        "name": "b",
                        "kind": "http_self",
                        "critical": False,
                        "up": True,
                        "pending": True,
                        "passes": 0,
                        "fails": 0,
                        "detail": "pending",
                        "value": None,
                        "age_s": None,
                    },
                ],
            },
        )

    def test_stop(self) -> None:
        """
        C{stopService} cancels scheduled and running checks, stops the
        checks' own machinery, leaves no delayed call and fires once the
        checks have stopped.
        """
        hanging = ScriptedCheck("hang")
        machinery = StartStopCheck(True)
        monitor = self.monitor((checkConfig("h"), hanging), (checkConfig("m"), machinery))
        monitor.startService()
        self.assertEqual(machinery.events, ["start"])
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        stopped = monitor.stopService()
        self.assertEqual(hanging.cancelled, 1)
        self.assertEqual(machinery.events, ["start", "stop"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoResult(stopped)
        machinery.stopped.callback(None)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertFalse(monitor.running)
        self.clock.advance(100)
        self.assertEqual((hanging.runs, machinery.runs), (1, 1))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_restart(self) -> None:
        """
        A restarted monitor starts from pending states and runs its checks
        again; C{onChange} still only hears of flips.
        """
        check = ScriptedCheck(False, False, True)
        monitor = self.monitor((checkConfig(), check))
        monitor.startService()
        self.successResultOf(monitor.stopService())
        self.assertEqual([h for h, _ in self.changes], [False])
        monitor.startService()
        self.assertEqual(check.runs, 2)
        self.assertFalse(monitor.healthy)
        self.assertEqual([h for h, _ in self.changes], [False])
        self.clock.advance(1.0)
        self.assertEqual(monitor.snapshot()["checks"][0]["passes"], 1)


class MaintenanceFileCheckTests(SynchronousTestCase):
    """
    L{MaintenanceFileCheck} fails while its file exists.
    """

    def test_maintenanceFile(self) -> None:
        """
        Absent: pass; present: fail; removed again: pass.
        """
        path = tempPath(self)
        check = MaintenanceFileCheck(path)
        self.assertTrue(check.run().passed)
        with open(path, "w"):
            pass
        result = check.run()
        self.assertEqual(result, CheckResult(False, f"maintenance file {path} exists"))
        os.remove(path)
        self.assertTrue(check.run().passed)

    def test_parentIsAFile(self) -> None:
        """
        A path below a regular file cannot exist: pass.
        """
        parent = tempPath(self)
        with open(parent, "w"):
            pass
        self.assertTrue(MaintenanceFileCheck(os.path.join(parent, "x")).run().passed)


def fakeStatvfs(freeMB: float):
    def statvfs(path: str) -> SimpleNamespace:
        statvfs.calls.append(path)
        return SimpleNamespace(f_bavail=int(freeMB * 256), f_frsize=4096)

    statvfs.calls = []
    return statvfs


class DiskFreeCheckTests(SynchronousTestCase):
    """
    L{DiskFreeCheck} compares the space free to unprivileged writers with
    its minimum.
    """

    def test_enough(self) -> None:
        """
        At or above the minimum: pass, the value being the free MB.
        """
        statvfs = fakeStatvfs(64)
        result = self.successResultOf(DiskFreeCheck("/var/x", 64, statvfs).run())
        self.assertEqual(result, CheckResult(True, "64.0 MB free at /var/x (>= 64 MB)", 64.0))
        self.assertEqual(statvfs.calls, ["/var/x"])

    def test_notEnough(self) -> None:
        """
        Below the minimum: fail.
        """
        result = self.successResultOf(DiskFreeCheck("/var/x", 64, fakeStatvfs(10.5)).run())
        self.assertEqual(result, CheckResult(False, "10.5 MB free at /var/x (< 64 MB)", 10.5))

    def test_error(self) -> None:
        """
        A C{statvfs} error is a failure naming the path and the error.
        """

        def statvfs(path: str) -> None:
            raise FileNotFoundError(2, "No such file or directory")

        result = self.successResultOf(DiskFreeCheck("/nope", 1, statvfs).run())
        self.assertEqual(
            result, CheckResult(False, "cannot statvfs /nope: No such file or directory")
        )

    def test_hungStatvfs(self) -> None:
        """
        While a C{statvfs} has not returned, runs fail at once without
        starting another; a cancelled run does not count as returned.
        """
        threads: list[Deferred[object]] = []

        def runInThread(f, *args):
            d: Deferred[object] = Deferred()
            threads.append(d)
            d.addCallback(lambda _: f(*args))
            return d

        check = DiskFreeCheck("/mnt/dead", 1, fakeStatvfs(5), runInThread)
        first = check.run()
        first.cancel()
        self.failureResultOf(first, CancelledError)
        second = self.successResultOf(check.run())
        self.assertFalse(second.passed)
        self.assertIn("has not returned yet", second.detail)
        self.assertEqual(len(threads), 1)
        threads[0].callback(None)
        third = check.run()
        self.assertEqual(len(threads), 2)
        threads[1].callback(None)
        self.assertTrue(self.successResultOf(third).passed)


class FakeMonotonic:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ReactorLagCheckTests(SynchronousTestCase):
    """
    L{ReactorLagCheck} reports the worst event-loop lag since its last run.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.monotonic = FakeMonotonic()
        self.check = ReactorLagCheck(self.clock, 0.5, self.monotonic, sampleInterval=0.05)
        self.check.start()
        self.addCleanup(self.check.stop)

    def advance(self, seconds: float, late: float = 0.0) -> None:
        """Time passes; the loop runs C{late} seconds behind it."""
        self.monotonic.now += seconds
        self.clock.advance(seconds - late)
        self.monotonic.now += late
        self.clock.advance(late)

    def test_normal(self) -> None:
        """
        A loop on time reports (near) zero lag.
        """
        for _ in range(20):
            self.clock.advance(0.05)
            self.monotonic.now += 0.05
        result = self.check.run()
        self.assertTrue(result.passed)
        self.assertAlmostEqual(result.value, 0.0, places=6)

    def test_stall(self) -> None:
        """
        A stall shows as the lateness of the sample it delayed; the next run
        only reports what happened since.
        """
        self.monotonic.now += 2.0
        self.clock.advance(2.0)
        result = self.check.run()
        self.assertFalse(result.passed)
        self.assertAlmostEqual(result.value, 1.95)
        self.assertIn("reactor lag 1.950s", result.detail)
        for _ in range(10):
            self.monotonic.now += 0.05
            self.clock.advance(0.05)
        result = self.check.run()
        self.assertTrue(result.passed)
        self.assertAlmostEqual(result.value, 0.0, places=6)

    def test_stallInProgress(self) -> None:
        """
        A run that happens before the delayed sample includes the lateness
        of that overdue sample.
        """
        self.monotonic.now += 3.0
        result = self.check.run()
        self.assertFalse(result.passed)
        self.assertAlmostEqual(result.value, 2.95)

    def test_stop(self) -> None:
        """
        Stopping leaves no delayed call; running again starts sampling.
        """
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.check.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.check.run().passed)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class HttpSelfCheckTests(SynchronousTestCase):
    """
    L{HttpSelfCheck} passes iff the probe answers 200.
    """

    def test_ok(self) -> None:
        """
        200 passes.
        """
        result = self.successResultOf(HttpSelfCheck(lambda: succeed(200)).run())
        self.assertEqual(result, CheckResult(True, "HTTP 200", 200.0))

    def test_unavailable(self) -> None:
        """
        Any other status fails.
        """
        result = self.successResultOf(HttpSelfCheck(lambda: succeed(503)).run())
        self.assertEqual(result, CheckResult(False, "HTTP 503", 503.0))

    def test_requestFailed(self) -> None:
        """
        A failed request is a plain failure of the check.
        """
        check = HttpSelfCheck(lambda: fail(ConnectionRefusedError("refused")))
        result = self.successResultOf(check.run())
        self.assertEqual(result, CheckResult(False, "request failed: refused"))

    def test_cancelPropagates(self) -> None:
        """
        Cancelling the run cancels the probe and stays a cancellation, so the
        monitor reports its timeout.
        """
        probe: Deferred[int] = Deferred()
        run = HttpSelfCheck(lambda: probe).run()
        run.cancel()
        self.failureResultOf(probe, CancelledError)

    def test_timeoutInMonitor(self) -> None:
        """
        A probe that never answers is reported as a timeout by the monitor.
        """
        clock = Clock()
        config = checkConfig("self", kind="http_self", timeout=2.0, fall=1, critical=False)
        monitor = HealthMonitor(clock, clock.seconds, [(config, HttpSelfCheck(Deferred))], print)
        monitor.startService()
        clock.advance(2.0)
        self.assertEqual(monitor.snapshot()["checks"][0]["detail"], "timed out after 2s")
        self.successResultOf(monitor.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])


class BuildChecksTests(SynchronousTestCase):
    """
    L{buildChecks} makes checks from configuration for one SP.
    """

    def test_build(self) -> None:
        """
        Every kind maps to its check, with C{{id}} replaced by the SP id.
        """
        clock = Clock()
        clock.getThreadPool = lambda: None  # type: ignore[attr-defined]
        probe = lambda: succeed(200)  # noqa: E731
        configs = (
            checkConfig("m", kind="maintenance_file", path="/r/var/{id}.maintenance"),
            checkConfig("d", kind="disk_free", path="/r/var/state/{id}", min_free_mb=64.0),
            checkConfig("l", kind="reactor_lag", max_lag=0.5),
            checkConfig("e", kind="exec", argv=("check-sp", "--sp", "{id}"), timeout=3.0),
            checkConfig("s", kind="http_self"),
        )
        built = buildChecks(clock, configs, "spa", probe, monotonic=clock.seconds)
        [(m, mc), (d, dc), (l, lc), (e, ec), (s, sc)] = built
        self.assertEqual(mc, MaintenanceFileCheck("/r/var/spa.maintenance"))
        self.assertEqual(m.path, "/r/var/spa.maintenance")
        self.assertIsInstance(dc, DiskFreeCheck)
        self.assertEqual((dc.path, dc.minFreeMB, d.path), ("/r/var/state/spa", 64.0, "/r/var/state/spa"))
        self.assertIsInstance(lc, ReactorLagCheck)
        self.assertEqual((lc.clock, lc.maxLag), (clock, 0.5))
        self.assertIsInstance(ec, ExecCheck)
        self.assertEqual((tuple(ec.argv), ec.timeout), (("check-sp", "--sp", "spa"), 3.0))
        self.assertEqual(ec.env, dict(MINIMAL_ENV, SPMGMT_SP_ID="spa"))
        self.assertEqual(e.argv, ("check-sp", "--sp", "spa"))
        self.assertEqual(sc, HttpSelfCheck(probe))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_sampleConfig(self) -> None:
        """
        The checks of the sample configuration build.
        """
        import shutil
        import tempfile
        from pathlib import Path

        from spmgmt.testing import sampleConfig

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        config = sampleConfig(Path(directory))
        clock = Clock()
        clock.getThreadPool = lambda: None  # type: ignore[attr-defined]
        built = buildChecks(clock, config.checks, "spa", lambda: succeed(200))
        self.assertEqual([c.kind for c, _ in built], [c.kind for c in config.checks])
        self.assertTrue(built[0][0].path.endswith("var/spa.maintenance"))


class ExecCheckTests(TestCase):
    """
    L{ExecCheck} runs real processes with the real reactor.
    """

    timeout = 20

    def setUp(self) -> None:
        # The real reactor, imported here rather than at module level so that
        # importing the tests does not install one.
        from twisted.internet import reactor

        self.reactor = reactor

    def check(self, argv: list[str], timeout: float = 10.0) -> ExecCheck:
        check = ExecCheck(self.reactor, argv, timeout)
        self.addCleanup(check.stop)
        return check

    @inlineCallbacks
    def test_true(self):
        """
        Exit status 0 passes.
        """
        result = yield self.check(["true"]).run()
        self.assertEqual(result, CheckResult(True, "exit 0", 0.0))

    @inlineCallbacks
    def test_false(self):
        """
        Any other exit status fails.
        """
        result = yield self.check(["false"]).run()
        self.assertEqual(result, CheckResult(False, "exit 1", 1.0))

    @inlineCallbacks
    def test_output(self):
        """
        The first line of the output explains a failure; the program runs
        without a shell, with the minimal environment and no input.
        """
        os.environ["SPMGMT_TEST_LEAK"] = "leaked"
        self.addCleanup(os.environ.pop, "SPMGMT_TEST_LEAK")
        script = 'read x; echo "broken ${SPMGMT_TEST_LEAK:-clean} $LC_ALL [$x]" $1; exit 3'
        result = yield self.check(["sh", "-c", script, "sh", "$HOME"]).run()
        self.assertEqual(result, CheckResult(False, "exit 3: broken clean C [] $HOME", 3.0))

    @inlineCallbacks
    def test_outputCapped(self):
        """
        Only the first C{outputCap} bytes of output are kept.
        """
        check = ExecCheck(self.reactor, [sys.executable, "-c", "print('x' * 100000)"], 10.0, outputCap=10)
        self.addCleanup(check.stop)
        result = yield check.run()
        self.assertEqual(result, CheckResult(True, "exit 0: xxxxxxxxxx", 0.0))

    @inlineCallbacks
    def test_notFound(self):
        """
        A program not on the minimal C{PATH} fails without running.
        """
        result = yield self.check(["no-such-program-spmgmt"]).run()
        self.assertEqual(result, CheckResult(False, "program 'no-such-program-spmgmt' not found"))

    @inlineCallbacks
    def test_timeout(self):
        """
        A program running past the timeout is killed and fails.
        """
        started = time.monotonic()
        check = self.check(["sleep", "5"], timeout=0.3)
        result = yield check.run()
        self.assertEqual(result, CheckResult(False, "timed out after 0.3s, killed"))
        self.assertLess(time.monotonic() - started, 4)
        yield check.stop()

    @inlineCallbacks
    def test_cancel(self):
        """
        Cancelling a run kills the process; C{stop} waits until it ended.
        """
        started = time.monotonic()
        check = self.check(["sleep", "5"])
        run = check.run()
        run.cancel()
        yield self.assertFailure(run, CancelledError)
        yield check.stop()
        self.assertLess(time.monotonic() - started, 4)

    @inlineCallbacks
    def test_inMonitor(self):
        """
        In a monitor with the real reactor, a hanging program times out,
        counts as a failure and is killed; stopping leaves nothing behind.
        """
        config = checkConfig("exec", timeout=0.3, interval=60.0, fall=1)
        check = ExecCheck(self.reactor, ["sleep", "5"], 0.3)
        flipped: Deferred[bool] = Deferred()
        monitor = HealthMonitor(self.reactor, time.monotonic, [(config, check)], lambda h, s: flipped.callback(h))
        started = time.monotonic()
        monitor.startService()
        healthy = yield flipped
        self.assertFalse(healthy)
        self.assertIn("timed out after 0.3s", monitor.snapshot()["checks"][0]["detail"])
        yield monitor.stopService()
        self.assertLess(time.monotonic() - started, 4)

    @inlineCallbacks
    def test_diskFreeInThread(self):
        """
        With the reactor's thread pool, C{statvfs} runs in a thread.
        """
        path = tempPath(self)
        os.mkdir(path)
        pool = self.reactor.getThreadPool()
        check = DiskFreeCheck(
            path, 0.001, runInThread=lambda f, *a: deferToThreadPool(self.reactor, pool, f, *a)
        )
        result = yield check.run()
        self.assertTrue(result.passed, result.detail)
        self.assertGreater(result.value, 0)
