# -*- test-case-name: tests.test_agent -*-
"""
The SP agent's core: what one SP knows and does, independent of how it is
asked (HTTP today, Perspective Broker for peers).

Every rule about what may run lives here, so the HTTP and PB layers cannot
disagree: which commands exist, which are allowed in service mode, which need
the active role.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

from attrs import Factory, define, field
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from spmgmt.commands import CommandResult, UnknownCommand, buildArgv, runCommand, validateParameters
from spmgmt.config import ArrayConfig, CommandConfig, SPConfig
from spmgmt.events import EventCopy
from spmgmt.metrics import SPMetrics
from spmgmt.sp import role
from spmgmt.sp.facts import hostFacts
from spmgmt.sp.role import RoleState

FULL = "full"
SERVICE = "service"


class NotInServiceMode(Exception):
    """The command is not one of those allowed while the SP is in service mode."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class RequiresActive(Exception):
    """The command changes state and may run only on the active SP."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Busy(Exception):
    """As many commands as allowed are running and as many again wait."""


class StaleEpoch(Exception):
    """A state-changing call carries an epoch older than the newest seen."""

    def __init__(self, epoch: int, newest: int) -> None:
        super().__init__(f"epoch {epoch} is older than {newest}, the newest this SP has seen")
        self.epoch = epoch
        self.newest = newest


def _utcNow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@define
class SPAgent:
    """
    One SP's state and actions.

    @ivar roleState: this SP's view of the token (L{spmgmt.sp.role}); the
        participant moves it, the web layer reads it.  No SP is active
        without an arbiter.
    @ivar lease: seconds the SP stays active without word from the arbiter.
    @ivar arrayView: the arbiter's last word on the array (token, state,
        members), or L{None} before it has spoken.
    """

    reactor: Any
    config: ArrayConfig
    sp: SPConfig
    metrics: SPMetrics = field(factory=SPMetrics)
    monotonic: Callable[[], float] = time.monotonic
    roleState: RoleState = field(factory=RoleState)
    lease: float = 0.3
    arrayView: dict[str, Any] | None = None
    events: EventCopy = field(
        default=Factory(lambda self: EventCopy(self.config.events.history), takes_self=True)
    )
    reporter: Callable[[str, dict[str, Any]], None] | None = None
    healthy: bool = True
    healthSnapshot: Callable[[], dict[str, Any]] = lambda: {"healthy": True, "checks": []}
    _modeListeners: list[Callable[[str], None]] = field(factory=list)
    _startedAt: float = field(init=False)
    _runs: DeferredSemaphore = field(init=False)
    _log: Logger = field(init=False, factory=Logger)

    def __attrs_post_init__(self) -> None:
        self._startedAt = self.monotonic()
        # Every command (the status command too) is a process and three
        # pipes: bounded, so requests cannot exhaust processes or fds.
        self._runs = DeferredSemaphore(self.config.limits.max_commands)
        self.metrics.healthy.set(1)
        self.metrics.serviceMode.set(0)

    @property
    def role(self) -> str:
        """C{passive}, C{active} or C{stepping_down}."""
        return self.roleState.role

    @property
    def epoch(self) -> int | None:
        """The epoch held as active, or L{None}."""
        return self.roleState.epoch

    @property
    def newestEpoch(self) -> int:
        """The newest epoch this SP has seen."""
        return self.roleState.newest

    @newestEpoch.setter
    def newestEpoch(self, epoch: int) -> None:
        self.roleState = role.seen(self.roleState, epoch)

    def isActive(self) -> bool:
        """Active now: holding an epoch with a live lease."""
        epoch = self.roleState.epoch
        return epoch is not None and role.serves(self.roleState, epoch, self.monotonic(), self.lease)

    def servesEpoch(self, epoch: int) -> bool:
        """
        Whether a request stamped with C{epoch} may be served as active.
        The stamp teaches nothing: epochs are learnt only from the arbiter,
        or any client could push C{newest} up and make every grant refused.
        """
        return role.serves(self.roleState, epoch, self.monotonic(), self.lease)

    def beginActive(self) -> None:
        """An active-role request starts (a step-down waits for it)."""
        self.roleState = role.begin(self.roleState)

    def endActive(self) -> None:
        self.roleState = role.end(self.roleState)

    @property
    def webServer(self) -> str:
        """Which kind of web server this SP runs now."""
        return FULL if self.healthy else SERVICE

    def onModeChange(self, listener: Callable[[str], None]) -> None:
        """Call C{listener(webServer)} whenever the web-server kind changes."""
        self._modeListeners.append(listener)

    def healthChanged(self, healthy: bool, snapshot: dict[str, Any] | None = None) -> None:
        """
        The health monitor's verdict flipped: switch the web server kind.
        """
        if healthy == self.healthy:
            return
        self.healthy = healthy
        self.metrics.healthy.set(1 if healthy else 0)
        self.metrics.serviceMode.set(0 if healthy else 1)
        self._log.info(
            "SP {sp} is {state}: serving the {kind} web server",
            sp=self.sp.id,
            state="healthy" if healthy else "unhealthy",
            kind=self.webServer,
        )
        for listener in self._modeListeners:
            listener(self.webServer)

    def summary(self) -> dict[str, Any]:
        """This SP in a few words, as C{GET /api/v1/sps/{id}} shows it."""
        return {
            "id": self.sp.id,
            "role": self.role,
            "epoch": self.epoch,
            "healthy": self.healthy,
            "web_server": self.webServer,
        }

    def health(self) -> dict[str, Any]:
        """Every check's state, as C{GET /api/v1/sps/{id}/health} shows it."""
        snapshot = dict(self.healthSnapshot())
        snapshot.update(sp=self.sp.id, web_server=self.webServer)
        return snapshot

    async def status(self) -> dict[str, Any]:
        """
        Run the local status command and add the built-in facts.  Allowed in
        every mode: an unhealthy SP must still be able to say how it is.
        """
        result = await self._run(self.config.status, list(self.config.status.argv))
        # In a thread: statvfs can hang on a dead mount, procfs reads can stall.
        # (A reactor without threads, a test's fake, runs it inline.)
        args = (self.config.stateDirFor(self.sp.id), self.monotonic() - self._startedAt)
        if IReactorThreads.providedBy(self.reactor):
            facts = await deferToThreadPool(self.reactor, self.reactor.getThreadPool(), hostFacts, *args)
        else:
            facts = hostFacts(*args)
        health = self.healthSnapshot()
        return {
            "sp": self.sp.id,
            "array": self.config.name,
            **facts,
            "role": self.role,
            "epoch": self.epoch,
            "web_server": self.webServer,
            "health": {
                "healthy": self.healthy,
                "failing": [c["name"] for c in health.get("checks", []) if not c.get("up", True)],
            },
            "status_command": result.asJSON(),
            "collected_at": _utcNow(),
        }

    def command(self, name: str) -> CommandConfig:
        """
        The whitelisted command C{name}.

        @raise UnknownCommand: there is none.
        """
        command = self.config.commands.get(name)
        if command is None:
            raise UnknownCommand(name)
        return command

    def checkAllowed(self, command: CommandConfig, epoch: int | None = None) -> None:
        """
        Apply the SP's own rules to C{command}.

        @param epoch: the epoch the caller acts under, if it says one.
        @raise StaleEpoch: C{epoch} is older than the newest seen here.
        @raise NotInServiceMode: the SP is in service mode and the command is
            not marked C{service = true}.
        @raise RequiresActive: the command needs the active role (and, when
            the caller names an epoch, this SP's current one).
        """
        if epoch is not None and epoch < self.newestEpoch:
            raise StaleEpoch(epoch, self.newestEpoch)
        if not self.healthy and not command.service:
            raise NotInServiceMode(command.name)
        if command.requires_active and (
            not self.isActive() or (epoch is not None and epoch != self.epoch)
        ):
            raise RequiresActive(command.name)

    def runCommand(self, name: str, params: object, epoch: int | None = None) -> Deferred[CommandResult]:
        """
        Validate and run the whitelisted command C{name}.

        @raise UnknownCommand, InvalidParameters, NotInServiceMode,
            RequiresActive, StaleEpoch: before anything runs.
        """
        command = self.command(name)
        self.checkAllowed(command, epoch)
        argv = buildArgv(command, validateParameters(command, params))
        return Deferred.fromCoroutine(self._run(command, argv))

    async def _run(self, command: CommandConfig, argv: list[str]) -> CommandResult:
        if len(self._runs.waiting) >= self._runs.limit:
            raise Busy()
        await self._runs.acquire()
        try:
            result = await runCommand(self.reactor, command, argv, monotonic=self.monotonic)
        finally:
            self._runs.release()
        outcome = "timeout" if result.timed_out else ("ok" if result.rc == 0 else "failed")
        self.metrics.commandRuns.labels(command.name, outcome).inc()
        self.metrics.commandSeconds.labels(command.name).observe(result.duration_s)
        if self.reporter is not None and command is not self.config.status:
            self.reporter(
                "command",
                {
                    "command": command.name,
                    "rc": result.rc,
                    "timed_out": result.timed_out,
                    "duration_s": round(result.duration_s, 3),
                },
            )
        self._log.info(
            "command {command} on {sp}: rc={rc} timed_out={timedOut} in {duration:.3f}s",
            command=command.name,
            sp=self.sp.id,
            rc=result.rc,
            timedOut=result.timed_out,
            duration=result.duration_s,
        )
        return result
