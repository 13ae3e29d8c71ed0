# -*- test-case-name: tests.test_tap -*-
"""
C{twistd spmgmt}: options and the service tree of each sub-command.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from spmgmt.config import ConfigError


class SPOptions(usage.Options):
    """Options of C{twistd spmgmt sp}."""

    synopsis = "--config FILE --id ID"
    longdesc = (
        "Run the agent of one service processor: its management web server "
        "(full or service mode, by its health) and its health checks.  "
        "SIGHUP reloads its certificates."
    )
    optParameters = [
        ["config", "c", None, "The array's configuration file (TOML), e.g. etc/spmgmt.toml."],
        ["id", "i", None, "This SP's id: one of the [[sp]] ids in the configuration."],
    ]

    def postOptions(self) -> None:
        for name in ("config", "id"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")


class ArbiterOptions(usage.Options):
    """Options of C{twistd spmgmt arbiter}."""

    synopsis = "--config FILE --id ID"
    longdesc = (
        "Run an arbiter: it grants the active token to one healthy SP at a "
        "time and tells the proxies where to route (PB over mutual TLS on "
        "its [[arbiter]] address).  SPs and proxies log in to it.  SIGHUP "
        "reloads its certificate."
    )
    optParameters = [
        ["config", "c", None, "The array's configuration file (TOML), e.g. etc/spmgmt.toml."],
        ["id", "i", None, "This arbiter's id: one of the [[arbiter]] ids in the configuration."],
    ]

    def postOptions(self) -> None:
        for name in ("config", "id"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")


class ProxyOptions(usage.Options):
    """Options of C{twistd spmgmt proxy}."""

    synopsis = "--config FILE"
    longdesc = (
        "Run the proxy process: the client-facing HTTPS front end on [proxy] "
        "tls (and plain HTTP on [proxy] plain, if set), which sends each "
        "request to the active SP and holds it across a failover.  It "
        "follows the arbiter's route; it never grants.  SIGHUP reloads its "
        "certificates (front end, and towards the SPs and the arbiter)."
    )
    optParameters = [
        ["config", "c", None, "The array's configuration file (TOML), e.g. etc/spmgmt.toml."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required")


class Options(usage.Options):
    """Options of C{twistd spmgmt}."""

    synopsis = "COMMAND [options]"
    longdesc = (
        "Service processor management.  COMMAND is: sp (one SP agent), "
        "arbiter (grants the active token) or proxy (the front proxy)."
    )
    subCommands = [
        ["sp", None, SPOptions, "Run one service processor's agent."],
        ["arbiter", None, ArbiterOptions, "Run an arbiter of the active token."],
        ["proxy", None, ProxyOptions, "Run the front proxy."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a command: sp, arbiter or proxy")


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the service of the chosen sub-command.  A configuration problem
    ends the process with one line naming the file, the key and the problem.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        from spmgmt.clock import useMonotonicTime

        reactor = globalReactor
        # Decisions and timers must not follow wall-clock steps.
        useMonotonicTime(reactor)
    sub = options.subOptions
    try:
        if options.subCommand == "sp":
            from spmgmt.config import loadForSP
            from spmgmt.sp.service import makeSPService

            config, sp = loadForSP(sub["config"], sub["id"])
            return makeSPService(reactor, config, sp)
        if options.subCommand == "arbiter":
            from spmgmt.arbiter.service import makeArbiterService
            from spmgmt.config import loadForArbiter

            config, arbiter = loadForArbiter(sub["config"], sub["id"])
            return makeArbiterService(reactor, config, arbiter.id)
        if options.subCommand == "proxy":
            from spmgmt.config import loadForProxy
            from spmgmt.proxy.service import makeProxyService

            return makeProxyService(reactor, loadForProxy(sub["config"]))
    except ConfigError as e:
        raise SystemExit(f"spmgmt: {e}") from None
    raise SystemExit(f"spmgmt: unknown command {options.subCommand!r}")
