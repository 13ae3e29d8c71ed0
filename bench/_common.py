"""
What the benchmark scripts in C{bench/} share.

C{peer_bench.py} and C{failover_bench.py} report the same way: the machine
and the code measured, the command line, percentiles, who used the CPUs
during the measurements, a section of C{bench/RESULTS.md} rewritten between
the script's markers, and a deadline on the whole run.  That code lives
here once, so the two reports cannot drift apart; what differs between the
scripts (their name, their markers, the wording of their CPU line, how many
decimals their milliseconds get) is passed in.

The scripts run as C{.venv/bin/python bench/<script>.py}, which puts
C{bench/} on C{sys.path}: they import this module as C{_common}.  Importing
it puts the repository root on C{sys.path} too, so that C{spmgmt} imports
from the checkout.
"""

from __future__ import annotations

import os
import platform
import shlex
import ssl
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Coroutine

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import twisted  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

if TYPE_CHECKING:
    from spmgmt.testing import ArrayHarness

RESULTS = REPO / "bench" / "RESULTS.md"
HEADER = """\
# spmgmt benchmarks

Figures from the scripts in `bench/`, recorded with their `--record` option.
Each section says when, on which machine and with which command it was
measured; rerun that command to compare.
"""

#: Other processes' average CPU use (in CPUs) above which a run is flagged.
OTHERS_LIMIT = 0.10


# -- statistics ------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The C{q}-th percentile (0..100), linear interpolation between ranks."""
    s = sorted(values)
    if not s:
        raise ValueError("no samples")
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def milliseconds(seconds: float, places: int) -> str:
    """C{seconds} in milliseconds, with C{places} decimals."""
    return f"{seconds * 1000:.{places}f}"


# -- what was measured, where ------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from twisted.internet import reactor

    try:
        from OpenSSL import SSL

        tls = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except Exception:  # noqa: BLE001 - a fact for the report only
        tls = "unknown"
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": str(nproc),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "openssl": ssl.OPENSSL_VERSION,
        # What Twisted's TLS (pyOpenSSL) runs on: cryptography's own OpenSSL,
        # not the system one that Python's ssl module (and HAProxy) use.
        "tls": tls,
        "reactor": type(reactor).__module__ + "." + type(reactor).__name__,
    }


def codeUnderTest() -> str:
    """The commit measured, and whether the package differed from it."""
    import subprocess

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *argv], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "not a git checkout"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "spmgmt", "twisted").splitlines()]
    if not changed:
        return f"commit {head}, package unmodified"
    return f"commit {head} with local changes to {len(changed)} file(s) under spmgmt/ or twisted/"


def command(script: str) -> str:
    """The command line of this run of C{script} (e.g. C{bench/peer_bench.py}), from the repository root."""
    exe = Path(sys.executable)
    try:
        shown = str(exe.relative_to(REPO))
    except ValueError:
        shown = str(exe)
    return " ".join([shown, script, *map(shlex.quote, sys.argv[1:])])


# -- CPU accounting ------------------------------------------------------------------


def _machineSeconds() -> dict[str, float]:
    """
    CPU seconds since boot of the whole machine: process time (user, nice,
    system), interrupt time (irq, softirq: loopback networking lands there
    too, charged to no process) and time stolen by the hypervisor.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return {"process": (user + nice + system) / tick, "irq": (irq + softirq) / tick, "steal": steal / tick}


def _ourSeconds(harness: ArrayHarness) -> float:
    """
    CPU seconds of this process, of its reaped children (SPs killed during
    the run) and of the array's live processes (with their reaped commands).
    """
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    tick = os.sysconf("SC_CLK_TCK")
    for name in harness.names:
        try:
            stat = Path(f"/proc/{harness.pid(name)}/stat").read_text()
        except (OSError, KeyError, AssertionError):
            continue
        rest = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(v) for v in rest[11:15]) / tick  # utime stime cutime cstime
    return total


class CPUWindow:
    """
    Who used the CPUs while the measurements ran: us, or someone else.

    With C{irqApart}, interrupt time is reported on its own (C{"irq"}) and
    left out of the other processes' share; without, it counts as theirs.
    """

    def __init__(self, harness: ArrayHarness, irqApart: bool) -> None:
        self._harness = harness
        self._irqApart = irqApart
        self._wall = time.monotonic()
        self._machine = _machineSeconds()
        self._ours = _ourSeconds(harness)

    def close(self) -> dict[str, float]:
        machine = _machineSeconds()
        ours = _ourSeconds(self._harness) - self._ours
        delta = {k: machine[k] - self._machine[k] for k in machine}
        wall = time.monotonic() - self._wall
        if self._irqApart:
            others = delta["process"] - ours
            return {"wall": wall, "ours": ours, "others": max(0.0, others), "irq": delta["irq"], "steal": delta["steal"]}
        others = delta["process"] + delta["irq"] - ours
        return {"wall": wall, "ours": ours, "others": max(0.0, others), "steal": delta["steal"]}


def cpuLine(cpu: dict[str, float], during: str, ours: str, inflated: str) -> str:
    """
    The report's CPU line: C{during} names the window ("while measuring"),
    C{ours} what counts as ours ("bench + SPs"), C{inflated} what a busy
    machine does to the figures.  Interrupts are shown if C{cpu} has them.
    """
    others = cpu["others"] / cpu["wall"]
    irq = f", interrupts {cpu['irq']:.1f} s" if "irq" in cpu else ""
    line = (
        f"- CPU {during} ({cpu['wall']:.1f} s): {ours} {cpu['ours']:.1f} s "
        f"({cpu['ours'] / cpu['wall']:.2f} CPUs on average), other processes {cpu['others']:.1f} s "
        f"({others:.2f} CPUs){irq}, stolen by the hypervisor {cpu['steal']:.1f} s"
    )
    if others > OTHERS_LIMIT:
        line += f" — **other work shared the machine (> {OTHERS_LIMIT:.2f} CPUs): {inflated}**"
    return line


# -- running and recording ---------------------------------------------------------


def record(text: str, marker: str) -> None:
    """
    Put C{text} between the C{<!-- marker:start -->} and C{<!-- marker:end -->}
    lines of C{bench/RESULTS.md}, replacing what was there (or append the
    section).
    """
    start_, end_ = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    section = f"{start_}\n{text.rstrip()}\n{end_}"
    current = RESULTS.read_text() if RESULTS.exists() else HEADER
    start, end = current.find(start_), current.find(end_)
    if start != -1 and end > start:
        updated = current[:start] + section + current[end + len(end_) :]
    else:
        updated = current.rstrip() + "\n\n" + section + "\n"
    tmp = RESULTS.with_suffix(f".md.{marker}.tmp")
    tmp.write_text(updated)
    os.replace(tmp, RESULTS)


def withDeadline(reactor: Any, run: Coroutine[Any, Any, None], deadline: float, name: str) -> Deferred[None]:
    """
    Run C{run}, cancelled after C{deadline} seconds: then C{name} says it
    gave up and the process exits 2.  Cancelling raises inside C{run}
    (whatever it awaits at that moment), whose C{finally} still stops every
    process.
    """
    d = ensureDeferred(run)
    expired = []

    def giveUp() -> None:
        expired.append(True)
        d.cancel()

    timer = reactor.callLater(deadline, giveUp)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if expired and isinstance(result, Failure):
            print(f"{name}: gave up after the {deadline:g} s deadline", file=sys.stderr)
            raise SystemExit(2)
        return result

    return d.addBoth(done)


# -- Debian packages the benches need ---------------------------------------------

#: The benches' own list (scripts/install-debian-packages reads only
#: scripts/debian-packages.txt, the list the project needs for its tests).
BENCH_PACKAGES = REPO / "scripts" / "bench-packages.txt"


def debianPackages(listFile: Path = BENCH_PACKAGES) -> list[str]:
    """The package names in C{listFile} (one a line; blank lines and C{#} comments skipped)."""
    names = []
    for line in listFile.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


def ensureDebianPackages(listFile: Path = BENCH_PACKAGES) -> list[str]:
    """
    Install the packages of C{listFile} that are missing, as
    C{scripts/install-debian-packages} does for the project's own list:
    C{apt-get update} first, then C{apt-get install --no-install-recommends}.
    Needs root; returns what was installed.

    @raise SystemExit: not root and something is missing, or apt failed.
    """
    import subprocess

    def installed(name: str) -> bool:
        probe = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
        )
        return probe.returncode == 0 and "install ok installed" in probe.stdout

    missing = [name for name in debianPackages(listFile) if not installed(name)]
    if not missing:
        return []
    if os.geteuid() != 0:
        raise SystemExit(
            f"the bench needs the Debian packages {' '.join(missing)} (from {listFile.relative_to(REPO)}); "
            "install them as root: make bench-packages"
        )
    print(f"bench packages: installing {' '.join(missing)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env
        )
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"installing {' '.join(missing)} failed: {e}") from None
    return missing


def processCPU(pid: int) -> float:
    """CPU seconds (user + system, without children) of process C{pid} so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = stat[stat.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def processMemory(pid: int) -> dict[str, float]:
    """C{VmRSS} and C{VmHWM} of process C{pid}, in MB (empty if it is gone)."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def disturbed(cpu: dict[str, float], force: bool) -> bool:
    """
    Whether C{--record} must leave C{RESULTS.md} alone: other processes
    used more than L{OTHERS_LIMIT} CPUs on average during the measurement
    and C{--force-record} was not given (then say so on stderr).  The
    recorded CPU line always says how busy the machine was.
    """
    others = cpu["others"] / cpu["wall"]
    if others <= OTHERS_LIMIT or force:
        return False
    print(
        f"not recorded: other processes used {others:.2f} CPUs (> {OTHERS_LIMIT:.2f}) while measuring; "
        "rerun on a quiet machine or pass --force-record",
        file=sys.stderr,
    )
    return True


async def endRun(harness: ArrayHarness | None, ok: bool, directory: Path, keep: bool) -> None:
    """
    Stop the array (printing each process's log tail if the run failed)
    and remove its directory unless asked to keep it.
    """
    if harness is not None:
        if not ok:
            for name in harness.names:
                print(f"\n===== {name} =====\n{harness.logTail(name, 30)}", file=sys.stderr)
        await harness.stopAll()
    if keep:
        print(f"array directory kept: {directory}", file=sys.stderr)
    else:
        shutil.rmtree(directory, ignore_errors=True)
