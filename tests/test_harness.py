"""
Tests for the integration harness (L{spmgmt.testing}) and the JSON log
observer: the harness really stops, resumes, restarts and ends processes,
and leaves none behind even when the test runner itself is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

from spmgmt.testing import ArrayTestMixin


def _alive(pid: int) -> bool:
    """Whether C{pid} runs (a zombie, reaped or not, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class HarnessTests(ArrayTestMixin, TestCase):
    """The harness drives real processes."""

    timeout = 90

    async def test_stopContinueRestart(self) -> None:
        """
        SIGSTOP makes an SP stop answering; SIGCONT brings it back; restart
        gives a new process that answers; stopAll leaves none running.
        """
        array = await self.startArray(spIds=("spa",))
        first = array.pid("spa")
        array.signal("spa", signal.SIGSTOP)
        with self.assertRaises(Exception):
            await array.request("spa", "GET", "/healthz", user=None, timeout=0.5)
        array.signal("spa", signal.SIGCONT)
        await array.waitReady("spa", 10)
        await array.restart("spa")
        second = array.pid("spa")
        self.assertNotEqual(first, second)
        self.assertFalse(_alive(first))
        self.assertEqual((await array.request("spa", "GET", "/api/v1/sps/spa/status")).json()["pid"], second)
        await array.stopAll()
        self.assertFalse(_alive(second))

    async def test_noProcessOutlivesAKilledRunner(self) -> None:
        """
        When the process running the harness is SIGKILLed (an interrupted
        test run), its SP processes die too.
        """
        directory = Path(tempfile.mkdtemp(prefix="spmgmt-runner-"))
        self.addCleanup(__import__("shutil").rmtree, directory, True)
        script = textwrap.dedent(
            f"""
            import sys
            from pathlib import Path
            from twisted.internet import reactor, defer
            from spmgmt.testing import ArrayHarness

            async def main():
                array = ArrayHarness(reactor, Path({str(directory)!r}), spIds=("spa", "spb"))
                await array.start()
                print(array.pid("spa"), array.pid("spb"), flush=True)

            defer.Deferred.fromCoroutine(main()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
            reactor.run()
            """
        )
        runner = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.addCleanup(runner.wait)
        self.addCleanup(lambda: runner.poll() is None and runner.kill())
        line = await deferToThread(runner.stdout.readline)  # type: ignore[union-attr]
        pids = [int(p) for p in line.split()]
        self.assertEqual(len(pids), 2, runner.stderr.read() if not line else line)  # type: ignore[union-attr]
        self.assertTrue(all(_alive(p) for p in pids))
        runner.kill()
        for _ in range(100):
            if not any(_alive(p) for p in pids):
                break
            await deferLater(reactor, 0.05, lambda: None)
        survivors = [p for p in pids if _alive(p)]
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        self.assertEqual(survivors, [])


class JSONLogTests(SynchronousTestCase):
    """C{spmgmt.logs.jsonLines} writes one JSON object per line."""

    def test_linesToFile(self) -> None:
        """With SPMGMT_JSON_LOG set, events are appended there as JSON lines."""
        from spmgmt.logs import jsonLines

        path = Path(tempfile.mkdtemp()) / "log.json"
        self.addCleanup(__import__("shutil").rmtree, path.parent, True)
        self.patch(os, "environ", {**os.environ, "SPMGMT_JSON_LOG": str(path)})
        observer = jsonLines()
        log = Logger(namespace="spmgmt.test", observer=observer)
        log.info("command {command} ran", command="uptime", sock=object())
        log.warn("second\nline")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("it failed")
        lines = path.read_text().splitlines()
        self.assertEqual(len(lines), 3)
        first = json.loads(lines[0])
        self.assertEqual(
            {k: v for k, v in first.items() if k != "time"},
            {"level": "info", "namespace": "spmgmt.test", "message": "command uptime ran", "command": "uptime"},
        )
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        second = json.loads(lines[1])
        self.assertEqual((second["level"], second["message"]), ("warn", "second\nline"))
        third = json.loads(lines[2])
        self.assertEqual(third["level"], "critical")
        self.assertIn("ZeroDivisionError", third["traceback"])
