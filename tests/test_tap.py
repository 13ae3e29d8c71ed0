# -*- test-case-name: tests.test_tap -*-
"""
Tests for L{spmgmt.tap}: the options and service of C{twistd spmgmt}.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.application.service import IService, IServiceMaker
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from spmgmt.tap import Options, SPOptions, makeService
from spmgmt.testing import ArrayHarness


class RecordingPort:
    """A listening port that knows whether it was stopped."""

    def __init__(self, port: int, interface: str) -> None:
        self.port, self.interface = port, interface
        self.stopped = False

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.stopped = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.interface or "0.0.0.0", self.port)


class RecordingReactor(MemoryReactorClock):
    """A memory reactor whose listening ports record being stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[RecordingPort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> RecordingPort:
        super().listenTCP(port, factory, backlog, interface)
        self.ports.append(RecordingPort(port, interface))
        return self.ports[-1]

    def listening(self) -> set[tuple[int, str]]:
        """(port, interface) of every port listening now."""
        return {(p.port, p.interface) for p in self.ports if not p.stopped}


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def makeHarness(case: SynchronousTestCase, spIds: tuple[str, ...] = ("spa",)) -> ArrayHarness:
    """A complete configuration (PKI and secrets too) in a temporary directory; nothing started."""
    directory = tempfile.mkdtemp(prefix="spmgmt-test-tap-")
    case.addCleanup(shutil.rmtree, directory, True)
    return ArrayHarness(MemoryReactorClock(), directory, spIds=spIds)


class OptionsTests(SynchronousTestCase):
    """Tests for L{Options} and L{SPOptions}."""

    def test_sp(self) -> None:
        """C{sp --config X --id spa} selects the sp command with both values."""
        options = parse("sp", "--config", "etc/x.toml", "--id", "spa")
        self.assertEqual(options.subCommand, "sp")
        self.assertIsInstance(options.subOptions, SPOptions)
        self.assertEqual((options.subOptions["config"], options.subOptions["id"]), ("etc/x.toml", "spa"))

    def test_shortOptions(self) -> None:
        """C{-c} and C{-i} are short for C{--config} and C{--id}."""
        options = parse("sp", "-c", "x.toml", "-i", "spb")
        self.assertEqual((options.subOptions["config"], options.subOptions["id"]), ("x.toml", "spb"))

    def test_missingId(self) -> None:
        """Without C{--id}, parsing fails naming the option."""
        with self.assertRaises(usage.UsageError) as e:
            parse("sp", "--config", "x.toml")
        self.assertIn("--id", str(e.exception))

    def test_missingConfig(self) -> None:
        """Without C{--config}, parsing fails naming the option."""
        with self.assertRaises(usage.UsageError) as e:
            parse("sp", "--id", "spa")
        self.assertIn("--config", str(e.exception))

    def test_emptyValue(self) -> None:
        """An empty value counts as missing."""
        self.assertRaises(usage.UsageError, parse, "sp", "--config", "", "--id", "spa")

    def test_noCommand(self) -> None:
        """Without a sub-command, parsing fails naming the commands."""
        with self.assertRaises(usage.UsageError) as e:
            parse()
        self.assertEqual(str(e.exception), "name a command: sp, arbiter or proxy")

    def test_unknownCommand(self) -> None:
        """An unknown sub-command is refused."""
        self.assertRaises(usage.UsageError, parse, "grant", "--config", "x.toml")

    def test_arbiter(self) -> None:
        """C{arbiter --config X --id A} selects the arbiter command; both options are required."""
        options = parse("arbiter", "--config", "etc/x.toml", "--id", "a1")
        self.assertEqual((options.subCommand, options.subOptions["id"]), ("arbiter", "a1"))
        self.assertRaises(usage.UsageError, parse, "arbiter", "--config", "etc/x.toml")

    def test_proxy(self) -> None:
        """C{proxy --config X} selects the proxy command; --config is required."""
        options = parse("proxy", "--config", "etc/x.toml")
        self.assertEqual((options.subCommand, options.subOptions["config"]), ("proxy", "etc/x.toml"))
        self.assertRaises(usage.UsageError, parse, "proxy")

    def test_unknownOption(self) -> None:
        """An unknown option of C{sp} is refused."""
        self.assertRaises(usage.UsageError, parse, "sp", "--config", "x", "--id", "spa", "--port", "1")

    def test_spHelp(self) -> None:
        """The help of C{sp} describes both options."""
        text = str(SPOptions())
        self.assertIn("--config", text)
        self.assertIn("--id", text)
        self.assertIn("configuration file", text)

    def test_topHelp(self) -> None:
        """The help of C{twistd spmgmt} lists the sp command."""
        text = str(Options())
        self.assertIn("Commands:", text)
        self.assertIn("Run one service processor's agent.", text)


class MakeServiceTests(SynchronousTestCase):
    """Tests for L{makeService}."""

    def assertOneLineExit(self, options: Options) -> str:
        with self.assertRaises(SystemExit) as e:
            makeService(options, reactor=MemoryReactorClock())
        message = e.exception.code
        self.assertIsInstance(message, str)
        self.assertTrue(message.startswith("spmgmt: "), message)
        self.assertNotIn("\n", message)
        return message

    def test_missingConfigFile(self) -> None:
        """A configuration file that cannot be read ends the process with one line naming it."""
        directory = tempfile.mkdtemp(prefix="spmgmt-test-tap-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "missing.toml")
        message = self.assertOneLineExit(parse("sp", "--config", path, "--id", "spa"))
        self.assertIn(path, message)

    def test_badConfigFile(self) -> None:
        """A configuration file that is not valid ends the process with one line."""
        directory = tempfile.mkdtemp(prefix="spmgmt-test-tap-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "bad.toml")
        Path(path).write_text("[array\nname = 1\n")
        message = self.assertOneLineExit(parse("sp", "--config", path, "--id", "spa"))
        self.assertIn(path, message)

    def test_unknownSP(self) -> None:
        """An id that is not in the configuration ends the process with one line naming the known ids."""
        harness = makeHarness(self)
        message = self.assertOneLineExit(parse("sp", "--config", str(harness.configPath), "--id", "spz"))
        self.assertIn("'spz'", message)
        self.assertIn("spa", message)

    def test_listens(self) -> None:
        """
        The service listens on the SP's web port on its address when started,
        nowhere before, and stops listening when stopped.
        """
        harness = makeHarness(self)
        sp = harness.config.sp("spa")
        reactor = RecordingReactor()
        service = makeService(parse("sp", "--config", str(harness.configPath), "--id", "spa"), reactor=reactor)
        self.assertTrue(IService.providedBy(service))
        self.assertEqual(reactor.tcpServers, [])
        service.startService()
        self.assertTrue(service.running)
        self.assertEqual(sp.web.host, "127.0.0.1")
        self.assertIn((sp.web.port, "127.0.0.1"), reactor.listening())
        self.assertTrue(harness.config.stateDirFor("spa").is_dir())
        self.successResultOf(service.stopService())
        self.assertFalse(service.running)
        self.assertEqual(reactor.listening(), set())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_stopsWithPeers(self) -> None:
        """
        With a peer that never answers, the service still starts and stops
        at once, leaving nothing listening and nothing scheduled.
        """
        harness = makeHarness(self, spIds=("spa", "spb"))
        reactor = RecordingReactor()
        service = makeService(parse("sp", "--config", str(harness.configPath), "--id", "spb"), reactor=reactor)
        service.startService()
        self.assertIn((harness.config.sp("spb").web.port, "127.0.0.1"), reactor.listening())
        reactor.advance(1)
        self.successResultOf(service.stopService())
        self.assertEqual(reactor.listening(), set())
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_webSiteServesAgent(self) -> None:
        """The factory listening on the web port wraps the SP's site (over TLS, under a connection cap)."""
        harness = makeHarness(self)
        sp = harness.config.sp("spa")
        reactor = MemoryReactorClock()
        service = makeService(parse("sp", "--config", str(harness.configPath), "--id", "spa"), reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [factory] = [factory for port, factory, _, _ in reactor.tcpServers if port == sp.web.port]
        # The connection cap, around TLS, around the site.
        self.assertEqual(factory.limit, harness.config.limits.max_connections)
        self.assertIs(factory.wrappedFactory.wrappedFactory, service.web.site)
        self.assertIs(service.web.site.agent, service.agent)
        self.assertEqual(service.agent.sp.id, "spa")


    def test_proxyListeners(self) -> None:
        """
        The proxy listens for clients on TLS and plain TCP (each under a
        connection cap, around its site), and on nothing else: it dials
        the arbiter.
        """
        from spmgmt.proxy.frontend import ProxySite

        directory = tempfile.mkdtemp(prefix="spmgmt-test-tap-")
        self.addCleanup(shutil.rmtree, directory, True)
        harness = ArrayHarness(MemoryReactorClock(), directory, arbiter=True)
        proxy = harness.config.proxy
        assert proxy is not None and proxy.plain is not None
        reactor = MemoryReactorClock()
        service = makeService(parse("proxy", "--config", str(harness.configPath)), reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        factories = {port: factory for port, factory, _, _ in reactor.tcpServers}
        self.assertEqual(set(factories), {proxy.tls.port, proxy.plain.port})
        arbiter = harness.config.arbiter("arbiter").address
        self.assertIn((arbiter.host, arbiter.port), [(host, port) for host, port, *_ in reactor.tcpClients])
        tls, plain = factories[proxy.tls.port], factories[proxy.plain.port]
        self.assertEqual((tls.limit, plain.limit), (proxy.max_connections, proxy.max_connections))
        self.assertIsInstance(tls.wrappedFactory.wrappedFactory, ProxySite)
        self.assertIs(plain.wrappedFactory, tls.wrappedFactory.wrappedFactory)

    def test_arbiterListener(self) -> None:
        """The arbiter listens on its [[arbiter]] address, and on nothing else."""
        directory = tempfile.mkdtemp(prefix="spmgmt-test-tap-")
        self.addCleanup(shutil.rmtree, directory, True)
        harness = ArrayHarness(MemoryReactorClock(), directory, arbiter=True)
        reactor = MemoryReactorClock()
        service = makeService(parse("arbiter", "--config", str(harness.configPath), "--id", "arbiter"), reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        address = harness.config.arbiter("arbiter").address
        self.assertEqual([(interface, port) for port, _, _, interface in reactor.tcpServers], [(address.host, address.port)])


class PluginTests(SynchronousTestCase):
    """The C{twistd spmgmt} plugin."""

    def test_discoverable(self) -> None:
        """A service maker called spmgmt is found among twistd's plugins and builds with L{spmgmt.tap}."""
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "spmgmt"]
        self.assertEqual(len(makers), 1)
        [maker] = makers
        self.assertIs(maker.options, Options)
        self.assertIs(maker.makeService, makeService)
        self.assertTrue(maker.description)
