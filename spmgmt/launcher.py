# -*- test-case-name: tests.test_launcher -*-
"""
The developer launcher: runs a whole local array on loopback, each SP as its
own C{twistd} process, with dev certificates and generated secrets.

    python -m spmgmt.launcher run   --config etc/spmgmt.toml   # foreground
    python -m spmgmt.launcher start --config etc/spmgmt.toml   # background
    python -m spmgmt.launcher stop  --config etc/spmgmt.toml

This is a plain blocking program on purpose: it is a supervisor for a
developer's terminal, not part of any daemon.  The test harness
(L{spmgmt.testing}) reuses its helpers.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from typing import Sequence
from pathlib import Path

from spmgmt.config import ArrayConfig, ConfigError, parseConfig
from spmgmt.passwords import hashPassword
from spmgmt.pki import ensurePKI

USERS = ("admin", "monitor")


def ensureSecrets(secretsDir: Path) -> None:
    """
    Create a random password and its hash for each dev user, once: an
    existing password is kept so a running shell's variables stay valid.
    """
    secretsDir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for user in USERS:
        password = secretsDir / f"{user}.password"
        digest = secretsDir / f"{user}.hash"
        if not password.exists():
            _writePrivate(password, secrets.token_urlsafe(18) + "\n")
        if not digest.exists():
            _writePrivate(digest, hashPassword(password.read_text().strip()) + "\n")
    peer = secretsDir / "peer.secret"
    if not peer.exists():
        _writePrivate(peer, secrets.token_urlsafe(32) + "\n")


def _writePrivate(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def prepare(configPath: Path, varDir: Path) -> ArrayConfig:
    """Secrets, certificates and directories for a local array."""
    ensureSecrets(varDir / "secrets")
    config = parseConfig(configPath)
    names = [sp.id for sp in config.sps] + [a.id for a in config.arbiters] + ["proxy"]
    ensurePKI(config.ca.parent, names)
    for sub in ("run", "log"):
        (varDir / sub).mkdir(parents=True, exist_ok=True)
    return config


def twistdArgv(python: str, configPath: Path, name: str, varDir: Path, arbiters: Sequence[str] = ()) -> list[str]:
    """
    The command line that runs C{name} (an SP id, one of the C{arbiters}
    ids, or C{proxy}, or C{proxyN} for another proxy) in the foreground.
    """
    if name == "proxy" or (name.startswith("proxy") and name[5:].isdigit()):
        command = ["proxy"]
    elif name in arbiters:
        command = ["arbiter", f"--id={name}"]
    else:
        command = ["sp", f"--id={name}"]
    return [
        str(Path(python).parent / "twistd"),
        "--nodaemon",
        f"--pidfile={varDir / 'run' / (name + '.pid')}",
        f"--logfile={varDir / 'log' / (name + '.log')}",
        "spmgmt",
        command[0],
        f"--config={configPath}",
        *command[1:],
    ]


def portOpen(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to C{host:port} is accepted (blocking)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def healthzOK(host: str, port: int, serverName: str, ca: Path, timeout: float = 1.0) -> bool:
    """Whether C{https://host:port/healthz} answers 200 (blocking)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the address is an IP; the chain is what we check
    try:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        connection.request("GET", "/healthz")
        ok = connection.getresponse().status == 200
        connection.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


def _names(config: ArrayConfig) -> list[str]:
    """
    Every process of the array: the SPs, then the arbiter (the SPs are up
    when it starts, so the token goes by preference), then the proxy.
    """
    proxy = ["proxy"] if config.proxy is not None else []
    return [sp.id for sp in config.sps] + [a.id for a in config.arbiters] + proxy


def _ready(config: ArrayConfig, name: str) -> bool:
    if name == "proxy":
        assert config.proxy is not None
        tls = config.proxy.tls
        return healthzOK(tls.host, tls.port, "proxy", config.ca)
    if name in {a.id for a in config.arbiters}:
        address = config.arbiter(name).address
        return portOpen(address.host, address.port)
    sp = config.sp(name)
    return healthzOK(sp.web.host, sp.web.port, name, config.ca)


def _waitReady(config: ArrayConfig, procs: dict[str, subprocess.Popen], deadline: float) -> None:
    pending = list(procs)
    while pending:
        for name in list(pending):
            if procs[name].poll() is not None:
                raise SystemExit(
                    f"spmgmt: {name} exited with status {procs[name].returncode}; "
                    f"see var/log/{name}.log and var/log/{name}.out"
                )
            if _ready(config, name):
                pending.remove(name)
        if pending and time.monotonic() > deadline:
            raise SystemExit(f"spmgmt: not ready in time: {', '.join(pending)}")
        time.sleep(0.1)


def start(configPath: Path, varDir: Path, detach: bool) -> tuple[ArrayConfig, dict[str, subprocess.Popen]]:
    config = prepare(configPath, varDir)
    procs = {}
    for name in _names(config):
        argv = twistdArgv(sys.executable, configPath, name, varDir, [a.id for a in config.arbiters])
        # Early errors (before twistd's log is open) land in <name>.out.
        with open(varDir / "log" / f"{name}.out", "ab") as out:
            procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=detach,
            )
    try:
        _waitReady(config, procs, time.monotonic() + 30)
    except BaseException:
        _terminate(procs.values())
        raise
    return config, procs


def _terminate(procs: object) -> None:
    procs = list(procs)  # type: ignore[call-overload]
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _banner(config: ArrayConfig, varDir: Path) -> str:
    ca = os.path.relpath(config.ca)
    password = os.path.relpath(varDir / "secrets" / "admin.password")
    lines = [f"spmgmt: array {config.name!r} is up:"]
    if config.proxy is not None:
        proxy = config.proxy
        plain = f", http://{proxy.plain}/" if proxy.plain is not None else ""
        lines.append(f"  proxy: https://{proxy.tls}/{plain}  (log var/log/proxy.log)")
    for arbiter in config.arbiters:
        lines.append(f"  arbiter {arbiter.id}: {arbiter.address}  (log var/log/{arbiter.id}.log)")
    for sp in config.sps:
        lines.append(f"  {sp.id}: https://{sp.web.host}:{sp.web.port}/  (log var/log/{sp.id}.log)")
    first = config.sps[0]
    # Clients talk to the proxy: the one address that survives failover.
    front = config.proxy.tls if config.proxy is not None else first.web
    lines += [
        "",
        "Try:",
        f"  curl --cacert {ca} -u admin:$(cat {password}) "
        f"https://{front.host}:{front.port}/api/v1/array",
        f"  openssl s_client -quiet -CAfile {ca} -connect {front.host}:{front.port}",
        "    then type: GET /healthz HTTP/1.1, Host: x, and an empty line",
        f"  touch var/{first.id}.maintenance   # {first.id} turns unhealthy: the token moves",
    ]
    return "\n".join(lines)


def stop(configPath: Path, varDir: Path) -> None:
    config = parseConfig(configPath)
    for name in _names(config):
        pidfile = varDir / "run" / f"{name}.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
            print(f"spmgmt: stopping {name} (pid {pid})")
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
    deadline = time.monotonic() + 10
    for name in _names(config):
        pidfile = varDir / "run" / f"{name}.pid"
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spmgmt.launcher", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("run", "start", "stop"))
    parser.add_argument("--config", type=Path, default=Path("etc/spmgmt.toml"))
    parser.add_argument("--var", type=Path, default=Path("var"), help="where secrets, pids and logs go")
    args = parser.parse_args(argv)
    configPath = args.config.resolve()
    varDir = args.var.resolve()
    try:
        if args.action == "stop":
            stop(configPath, varDir)
            return
        config, procs = start(configPath, varDir, detach=args.action == "start")
    except ConfigError as e:
        raise SystemExit(f"spmgmt: {e}") from None
    print(_banner(config, varDir), flush=True)
    if args.action == "start":
        print("\nStop with: make stop")
        return
    print("\nCtrl-C stops the array.", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    reported: set[str] = set()
    try:
        # A dead SP is reported, not restarted and not fatal: killing one is
        # how a developer watches the others carry on.
        while True:
            for name, p in procs.items():
                if p.poll() is not None and name not in reported:
                    reported.add(name)
                    print(f"spmgmt: {name} exited with status {p.returncode}", file=sys.stderr)
            time.sleep(0.5)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        _terminate(procs.values())
        print("spmgmt: stopped")


if __name__ == "__main__":
    main()
