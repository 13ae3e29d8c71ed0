# -*- test-case-name: tests.test_etcd -*-
"""
Real etcd for tests: one member, or a cluster of three, on 127.0.0.1 with
ephemeral ports, each member a real C{etcd} process (Debian's
C{etcd-server}) that the test can kill, stop and start again.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from attrs import define, field
from twisted.internet.task import deferLater

from spmgmt.etcd import EtcdClient, EtcdError, EtcdUnavailable
from spmgmt.testing import _PDEATHSIG_EXEC, _Process, endProcesses, freePorts

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@define
class EtcdCluster:
    """
    C{size} etcd members under C{directory}; L{start} runs them all.

    Elections are tuned for loopback (heartbeat 50 ms, election timeout
    500 ms) so a lost member or leader is replaced within a second.
    """

    reactor: Any
    directory: Path
    size: int = 1
    names: list[str] = field(init=False)
    clientPorts: list[int] = field(init=False)
    peerPorts: list[int] = field(init=False)
    _procs: dict[str, _Process] = field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        ports = freePorts(2 * self.size)
        self.names = [f"etcd{i}" for i in range(self.size)]
        self.clientPorts = ports[: self.size]
        self.peerPorts = ports[self.size :]

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.clientPorts]

    def _argv(self, name: str) -> list[str]:
        i = self.names.index(name)
        cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peerPorts))
        return [
            ETCD,
            f"--name={name}",
            f"--data-dir={self.directory / name}",
            f"--listen-client-urls=http://127.0.0.1:{self.clientPorts[i]}",
            f"--advertise-client-urls=http://127.0.0.1:{self.clientPorts[i]}",
            f"--listen-peer-urls=http://127.0.0.1:{self.peerPorts[i]}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peerPorts[i]}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token=spmgmt-test-{os.getpid()}",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--logger=zap",
            "--log-level=warn",
        ]

    def startMember(self, name: str) -> None:
        """Start (or start again) the member C{name}."""
        self.directory.mkdir(parents=True, exist_ok=True)
        wrapped = [sys.executable, "-c", _PDEATHSIG_EXEC, str(os.getpid()), *self._argv(name)]
        proto = _Process(self.directory / f"{name}.log")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.reactor.spawnProcess(proto, wrapped[0], wrapped, env=env, path=str(self.directory))
        self._procs[name] = proto

    async def start(self, timeout: float = 20.0) -> None:
        """Start every member and wait until the cluster answers writes."""
        for name in self.names:
            self.startMember(name)
        await self.waitWritable(timeout)

    async def waitWritable(self, timeout: float = 20.0, endpoints: list[str] | None = None) -> None:
        """Wait until a write through C{endpoints} (default: all) succeeds."""
        client = EtcdClient(self.reactor, endpoints or self.endpoints, timeout=1.0)
        try:
            deadline = self.reactor.seconds() + timeout
            while True:
                try:
                    await client.put(b"/spmgmt-test/ready", b"1")
                    return
                except (EtcdError, EtcdUnavailable) as e:
                    if self.reactor.seconds() > deadline:
                        raise AssertionError(f"etcd not writable after {timeout}s: {e}\n{self.logTail()}")
                await deferLater(self.reactor, 0.1, lambda: None)
        finally:
            await client.close()

    def signal(self, name: str, signum: int) -> None:
        pid = self._procs[name].pid
        assert pid is not None
        os.kill(pid, signum)

    async def kill(self, name: str) -> None:
        """SIGKILL the member and wait until it is gone."""
        self.signal(name, signal.SIGKILL)
        await self._procs[name].ended

    def logTail(self, lines: int = 20) -> str:
        out = []
        for name in self.names:
            path = self.directory / f"{name}.log"
            if path.exists():
                out.append(f"--- {name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    async def stop(self) -> None:
        """End every member (SIGCONT first, for stopped ones)."""
        await endProcesses(self._procs.values())


async def startEtcd(testCase: Any, size: int = 1) -> EtcdCluster:
    """A running etcd cluster of C{size} members, stopped and removed after the test."""
    import tempfile

    from twisted.internet import reactor

    directory = Path(tempfile.mkdtemp(prefix="spmgmt-etcd-"))
    testCase.addCleanup(shutil.rmtree, directory, True)
    cluster = EtcdCluster(reactor, directory, size)
    testCase.addCleanup(cluster.stop)
    await cluster.start()
    return cluster
