"""
The systemd units in etc/systemd: valid for systemd, hardened, and their
command lines really start spmgmt.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from spmgmt.logs import jsonLines
from spmgmt.testing import ArrayHarness

UNITS = Path(__file__).resolve().parent.parent / "etc" / "systemd"
TWISTD = str(Path(sys.executable).parent / "twistd")
UNIT_NAMES = ("spmgmt-sp@.service", "spmgmt-arbiter@.service", "spmgmt-proxy.service")


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(UNITS / name)
    return parser


def _execStart(name: str, instance: str = "spa") -> list[str]:
    return shlex.split(_unit(name)["Service"]["ExecStart"].replace("%i", instance))


class UnitFileTests(SynchronousTestCase):
    def test_hardened(self) -> None:
        for name in UNIT_NAMES:
            service = _unit(name)["Service"]
            with self.subTest(unit=name):
                for key, value in {
                    "NoNewPrivileges": "yes",
                    "ProtectSystem": "strict",
                    "PrivateTmp": "yes",
                    "Restart": "always",
                    "User": "spmgmt",
                    "CapabilityBoundingSet": "",
                }.items():
                    self.assertEqual(service.get(key), value, key)
                argv = _execStart(name)
                self.assertEqual(argv[:3], ["/opt/spmgmt/bin/twistd", "--nodaemon", "--pidfile="])

    def test_commandLinesParse(self) -> None:
        """twistd accepts each unit's arguments and finds the spmgmt command in them."""
        for name, command in (
            ("spmgmt-sp@.service", "sp"),
            ("spmgmt-arbiter@.service", "arbiter"),
            ("spmgmt-proxy.service", "proxy"),
        ):
            options = ServerOptions()
            options.parseOptions(_execStart(name, "a1" if command == "arbiter" else "spa")[1:])
            self.assertEqual((options.subCommand, options.subOptions.subCommand), ("spmgmt", command))
            self.assertIs(options["logger"], jsonLines)
            self.assertEqual(options.subOptions.subOptions["config"], "/etc/spmgmt/spmgmt.toml")
        self.assertEqual(options.subOptions.subOptions.parent, options.subOptions)

    def test_reloadIsHangup(self) -> None:
        """C{systemctl reload} sends SIGHUP: every process reloads its TLS identities on it."""
        for name in UNIT_NAMES:
            self.assertEqual(_unit(name)["Service"]["ExecReload"], "/bin/kill -HUP $MAINPID", name)


class SystemdVerifyTests(TestCase):
    async def test_verify(self) -> None:
        """C{systemd-analyze verify} finds nothing wrong (twistd put where the unit expects it)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        directory = Path(tempfile.mkdtemp(prefix="spmgmt-units-"))
        self.addCleanup(shutil.rmtree, directory, True)
        targets = {
            "spmgmt-sp@.service": "spmgmt-sp@spa.service",
            "spmgmt-arbiter@.service": "spmgmt-arbiter@a1.service",
            "spmgmt-proxy.service": "spmgmt-proxy.service",
        }
        for source, target in targets.items():
            text = (UNITS / source).read_text().replace("/opt/spmgmt/bin/twistd", TWISTD)
            (directory / target).write_text(text)
        out, err, code = await getProcessOutputAndValue(
            analyze, ["verify", *targets.values()],
            env={"PATH": os.environ.get("PATH", "")}, path=str(directory),
        )
        self.assertEqual((code, err.decode()), (0, ""), out)


class UnitCommandRunsTests(TestCase):
    """The SP unit's command line, pointed at a test array, runs an SP that answers."""

    timeout = 60

    async def test_spUnitCommand(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="spmgmt-unit-"))
        self.addCleanup(shutil.rmtree, directory, True)
        array = ArrayHarness(reactor, directory, spIds=("spa",))
        argv = [TWISTD] + [
            a.replace("/etc/spmgmt/spmgmt.toml", str(array.configPath)) for a in _execStart("spmgmt-sp@.service")[1:]
        ]
        logPath = array.path("var/log/unit.jsonl")
        env = {"PATH": os.environ.get("PATH", ""), "SPMGMT_JSON_LOG": str(logPath)}
        ended: Deferred[None] = Deferred()
        process = reactor.spawnProcess(_Ends(ended), TWISTD, argv, env=env, path=str(array.directory))

        async def stop() -> None:
            if not ended.called:
                process.signalProcess("KILL")
                await ended

        self.addCleanup(stop)
        self.addCleanup(array.stopAll)  # the harness's connection pool
        await array.waitFor(lambda: _healthz(array), 20.0, "the unit's SP to answer /healthz")
        lines = [json.loads(line) for line in logPath.read_text().splitlines()]
        self.assertTrue(lines)
        self.assertTrue(all({"time", "level", "namespace", "message"} <= set(line) for line in lines))
        self.assertIn("spmgmt.health", [line["namespace"] for line in lines])


async def _healthz(array: ArrayHarness) -> bool:
    try:
        return (await array.request("spa", "GET", "/healthz", user=None)).code == 200
    except Exception:
        return False


class _Ends(ProcessProtocol):
    def __init__(self, ended: Deferred[None]) -> None:
        self._ended = ended

    def processEnded(self, reason: object) -> None:
        self._ended.callback(None)
