# -*- test-case-name: tests.test_epochstore -*-
"""
Tests for L{spmgmt.arbiter.epochstore}.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

import spmgmt
from spmgmt.arbiter import epochstore
from spmgmt.arbiter.epochstore import EpochStore, EpochStoreError

# The source tree that holds the spmgmt package, for child processes.
SOURCE = str(Path(spmgmt.__file__).resolve().parent.parent)

# A child process storing an epoch; it reports on standard output (a pipe,
# so a file size limit set in the child does not apply to the report).
STORE = """
import sys
from spmgmt.arbiter.epochstore import EpochStore, EpochStoreError
try:
    EpochStore(sys.argv[1]).store(int(sys.argv[2]))
except EpochStoreError as e:
    print("error:", e)
else:
    print("stored")
"""

# The same, under a file size limit of 5 bytes (what `prlimit --fsize`
# does): the write of the epoch comes out short.
STORE_UNDER_FSIZE_LIMIT = (
    "import resource\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (5, resource.RLIM_INFINITY))\n" + STORE
)


def tempDirectory(case: SynchronousTestCase) -> Path:
    """
    A fresh temporary directory removed after the test (not C{mktemp},
    which under pytest litters the working directory).
    """
    directory = tempfile.mkdtemp(prefix="spmgmt-epochstore-")
    case.addCleanup(shutil.rmtree, directory, True)
    return Path(directory)


def runChild(code: str, path: Path, epoch: int, **env: str) -> subprocess.CompletedProcess[str]:
    """
    Run C{code} in a new Python process with the epoch file's path and
    C{epoch} as arguments and C{env} added to the environment.
    """
    environ = dict(os.environ)
    environ.pop("SPMGMT_CRASH_AT", None)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE, environ.get("PYTHONPATH")]))
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", code, str(path), str(epoch)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assertStoredOrKept(
    case: SynchronousTestCase, store: EpochStore, old: int, storing: Callable[[], None], new: int
) -> None:
    """
    Run C{storing}: it either stores C{new} (and the file loads it) or
    raises L{EpochStoreError} (and the file still loads C{old}); the file
    is never torn.
    """
    try:
        storing()
    except EpochStoreError:
        expected = old
    else:
        expected = new
    try:
        loaded = store.load()
    except EpochStoreError as e:
        case.fail(f"torn epoch file ({e}): {store.path.read_bytes()!r}")
    case.assertEqual(loaded, expected)


class LoadTests(SynchronousTestCase):
    """
    L{EpochStore.load} reads the last stored epoch.
    """

    def setUp(self) -> None:
        self.path = tempDirectory(self) / "epoch"

    def assertCorrupt(self, content: bytes) -> EpochStoreError:
        """
        A file holding C{content} cannot be loaded: L{EpochStoreError}
        with a one-line message naming the file.
        """
        self.path.write_bytes(content)
        error = self.assertRaises(EpochStoreError, EpochStore(self.path).load)
        message = str(error)
        self.assertIn(str(self.path), message)
        self.assertNotIn("\n", message)
        return error

    def test_missingFileIsZero(self) -> None:
        """
        Without a file yet the last epoch is 0, and loading creates nothing.
        """
        self.assertEqual(EpochStore(self.path).load(), 0)
        self.assertFalse(self.path.parent.joinpath("epoch.tmp").exists())
        self.assertFalse(self.path.exists())

    def test_missingDirectoryIsZero(self) -> None:
        """
        A file under a directory that does not exist yet is missing too.
        """
        self.assertEqual(EpochStore(self.path.parent / "not" / "yet" / "epoch").load(), 0)

    def test_acceptsStringPath(self) -> None:
        """
        The path may be given as a string.
        """
        EpochStore(self.path).store(4)
        self.assertEqual(EpochStore(str(self.path)).load(), 4)

    def test_notJSON(self) -> None:
        """
        A file that is not JSON is corrupt.
        """
        for content in [b"", b"\n", b"7", b"{", b'{"epoch": 7', b"garbage\n"]:
            self.assertIn("corrupt", str(self.assertCorrupt(content)), content)

    def test_notAnObjectWithAnEpoch(self) -> None:
        """
        JSON without an C{epoch} member is corrupt.
        """
        for content in [b"7\n", b'"7"\n', b"[7]\n", b"null\n", b"{}\n", b'{"epch": 7}\n']:
            self.assertCorrupt(content)

    def test_invalidEpoch(self) -> None:
        """
        An epoch that is negative, a bool, a float, a string or null is not
        valid.
        """
        for value in [b"-1", b"true", b"false", b"1.0", b"1e3", b'"7"', b"null", b"[7]"]:
            error = self.assertCorrupt(b'{"epoch": ' + value + b"}\n")
            self.assertIn("no valid epoch", str(error), value)

    def test_invalidHolder(self) -> None:
        """
        A holder that is not a string is not valid.
        """
        for value in [b"1", b"true", b'["spa"]', b"{}"]:
            error = self.assertCorrupt(b'{"epoch": 3, "holder": ' + value + b"}\n")
            self.assertIn("no valid holder", str(error), value)

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 (a torn or overwritten file) is corrupt
        too: L{EpochStoreError}, not a C{UnicodeDecodeError} that the
        arbiter does not expect.
        """
        self.assertCorrupt(b"\xff\xfe{\x00")

    def test_unreadable(self) -> None:
        """
        A path that cannot be read (a directory) gives L{EpochStoreError}
        with the reason.
        """
        self.path.mkdir()
        error = self.assertRaises(EpochStoreError, EpochStore(self.path).load)
        self.assertEqual(str(error), f"cannot read {self.path}: Is a directory")


class StoreTests(SynchronousTestCase):
    """
    L{EpochStore.store} durably replaces the stored epoch, or raises
    L{EpochStoreError} and leaves the old one.
    """

    def setUp(self) -> None:
        self.directory = tempDirectory(self)
        self.path = self.directory / "epoch"
        self.tmp = self.directory / "epoch.tmp"

    def assertOneLineError(self, error: EpochStoreError, epoch: int) -> None:
        """
        C{error} says in one line which epoch could not be stored where.
        """
        message = str(error)
        self.assertTrue(message.startswith(f"cannot store epoch {epoch} in {self.path}: "), message)
        self.assertNotIn("\n", message)
        self.assertNotIn("None", message)

    def test_roundTrip(self) -> None:
        """
        What is stored is loaded, by the same store or a new one.
        """
        store = EpochStore(self.path)
        for epoch in [0, 1, 2, 7, 2**40]:
            store.store(epoch)
            self.assertEqual(store.load(), epoch)
            self.assertEqual(EpochStore(self.path).load(), epoch)

    def test_format(self) -> None:
        """
        The file is one line of JSON with the epoch and the SP it was
        granted to, readable only by its owner.
        """
        EpochStore(self.path).store(12, "spb")
        content = self.path.read_bytes()
        self.assertTrue(content.endswith(b"\n"))
        self.assertNotIn(b"\n", content[:-1])
        self.assertEqual(json.loads(content), {"epoch": 12, "holder": "spb"})
        self.assertEqual(self.path.stat().st_mode & 0o777, 0o600)

    def test_holderRoundTrip(self) -> None:
        """
        The holder is stored with the epoch; without one it is L{None}.
        """
        store = EpochStore(self.path)
        self.assertEqual(store.loadState(), (0, None))
        store.store(4, "spa")
        self.assertEqual((store.load(), store.loadState()), (4, (4, "spa")))
        store.store(5)
        self.assertEqual(store.loadState(), (5, None))

    def test_fileWithoutHolder(self) -> None:
        """
        A file written before holders were stored loads with no holder.
        """
        self.path.write_bytes(b'{"epoch": 9}\n')
        self.assertEqual(EpochStore(self.path).loadState(), (9, None))

    def test_replacesAtomically(self) -> None:
        """
        Each store renames a new file over the old one (a new inode, the
        old content never rewritten in place) and leaves no temporary file.
        """
        store = EpochStore(self.path)
        store.store(1)
        for epoch in [2, 3, 4]:
            before = self.path.stat().st_ino
            old = open(self.path, "rb")
            self.addCleanup(old.close)
            oldContent = self.path.read_bytes()
            store.store(epoch)
            self.assertNotEqual(self.path.stat().st_ino, before)
            # The old file is untouched: a reader that opened it sees it whole.
            self.assertEqual(old.read(), oldContent)
            self.assertEqual(json.loads(oldContent)["epoch"], epoch - 1)
            self.assertEqual(sorted(p.name for p in self.directory.iterdir()), ["epoch"])

    def test_staleTemporaryFile(self) -> None:
        """
        A temporary file left by an earlier crash is overwritten, never
        read.
        """
        self.tmp.write_bytes(b'{"epoch": 99}\ngarbage that is longer than an epoch\n')
        EpochStore(self.path).store(5)
        self.assertEqual(EpochStore(self.path).load(), 5)
        self.assertFalse(self.tmp.exists())

    def test_createsDirectory(self) -> None:
        """
        A missing parent directory is created.
        """
        path = self.directory / "a" / "b" / "epoch"
        EpochStore(path).store(3)
        self.assertEqual(EpochStore(path).load(), 3)

    def test_parentIsRegularFile(self) -> None:
        """
        A path under a regular file cannot be written:
        L{EpochStoreError} with a one-line message, not an C{OSError} from
        creating the parent directory.
        """
        regular = self.directory / "regular"
        regular.write_text("not a directory\n")
        self.path = regular / "epoch"
        error = self.assertRaises(EpochStoreError, EpochStore(self.path).store, 1)
        self.assertOneLineError(error, 1)

    def test_parentIsUnderRegularFile(self) -> None:
        """
        A path two levels under a regular file cannot be written either.
        """
        regular = self.directory / "regular"
        regular.write_text("not a directory\n")
        self.path = regular / "sub" / "epoch"
        error = self.assertRaises(EpochStoreError, EpochStore(self.path).store, 1)
        self.assertOneLineError(error, 1)

    def test_diskFull(self) -> None:
        """
        When the write fails (a temporary file that is a link to
        C{/dev/full}: C{ENOSPC}) the store raises L{EpochStoreError} saying
        so in one line, and the old epoch is still there.
        """
        if not os.path.exists("/dev/full"):
            raise self.skipTest("no /dev/full")
        store = EpochStore(self.path)
        store.store(3, "spa")
        before = self.path.read_bytes()
        self.tmp.symlink_to("/dev/full")
        error = self.assertRaises(EpochStoreError, store.store, 4, "spb")
        self.assertOneLineError(error, 4)
        self.assertTrue(str(error).endswith(": No space left on device"), str(error))
        self.assertEqual(store.loadState(), (3, "spa"))
        self.assertEqual(self.path.read_bytes(), before)

    def test_fsyncFails(self) -> None:
        """
        When C{fsync} fails with C{EIO} the store raises L{EpochStoreError}
        and the old epoch is still the one loaded.
        """
        store = EpochStore(self.path)
        store.store(3, "spa")

        def fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.patch(os, "fsync", fsync)
        error = self.assertRaises(EpochStoreError, store.store, 4, "spb")
        self.assertOneLineError(error, 4)
        self.assertTrue(str(error).endswith(": Input/output error"), str(error))
        self.assertEqual(store.loadState(), (3, "spa"))

    def test_directoryFsyncFails(self) -> None:
        """
        When only the directory's C{fsync} fails, the store still reports
        failure (the rename may not be durable), so the arbiter does not
        grant the epoch.
        """
        store = EpochStore(self.path)
        store.store(3)
        realFsync = os.fsync
        calls: list[int] = []

        def fsync(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            realFsync(fd)

        self.patch(os, "fsync", fsync)
        error = self.assertRaises(EpochStoreError, store.store, 4)
        self.assertOneLineError(error, 4)
        self.assertEqual(len(calls), 2)

    def test_fsyncBeforeRename(self) -> None:
        """
        The new file is fsynced before it is renamed into place, and the
        directory after.
        """
        store = EpochStore(self.path)
        store.store(3)
        old = self.path.read_bytes()
        seen: list[tuple[str, bytes]] = []
        realFsync, realReplace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            seen.append(("fsync", self.path.read_bytes()))
            realFsync(fd)

        def replace(src: object, dst: object) -> None:
            seen.append(("replace", self.path.read_bytes()))
            realReplace(src, dst)  # type: ignore[arg-type]

        self.patch(os, "fsync", fsync)
        self.patch(os, "replace", replace)
        store.store(4)
        new = self.path.read_bytes()
        self.assertEqual(json.loads(new)["epoch"], 4)
        self.assertEqual(seen, [("fsync", old), ("replace", old), ("fsync", new)])

    def test_shortWrite(self) -> None:
        """
        A write that comes out short (as C{write} may) never leaves a torn
        file: either the store finishes writing and the new epoch is
        stored, or it raises L{EpochStoreError} and the old one stays.
        """
        store = EpochStore(self.path)
        store.store(3)
        realWrite = os.write

        def write(fd: int, data: bytes) -> int:
            return realWrite(fd, data[:5])

        self.patch(os, "write", write)
        assertStoredOrKept(self, store, 3, lambda: store.store(1234567), 1234567)


class ChildProcessTests(SynchronousTestCase):
    """
    L{EpochStore.store} in a process of its own: crash points and resource
    limits.
    """

    def setUp(self) -> None:
        self.path = tempDirectory(self) / "epoch"
        EpochStore(self.path).store(3)
        self.old = self.path.read_bytes()

    def test_noCrashPoint(self) -> None:
        """
        Without C{SPMGMT_CRASH_AT} the child stores the epoch and exits 0.
        """
        result = runChild(STORE, self.path, 7)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "stored\n", ""))
        self.assertEqual(EpochStore(self.path).load(), 7)

    def test_otherCrashPointIgnored(self) -> None:
        """
        A crash point that the store does not pass is ignored.
        """
        result = runChild(STORE, self.path, 7, SPMGMT_CRASH_AT="grant.after_send")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(EpochStore(self.path).load(), 7)

    def test_crashBeforePersist(self) -> None:
        """
        At C{grant.before_persist} the process dies (exit 86) before
        writing anything: the file still holds the old epoch.
        """
        result = runChild(STORE, self.path, 7, SPMGMT_CRASH_AT="grant.before_persist")
        self.assertEqual((result.returncode, result.stdout), (86, ""), result.stderr)
        self.assertEqual(EpochStore(self.path).load(), 3)
        self.assertFalse(self.path.with_name("epoch.tmp").exists())

    def test_crashAfterFsync(self) -> None:
        """
        At C{grant.after_fsync} the process dies (exit 86) after the new
        epoch is durable: the file holds it.
        """
        result = runChild(STORE, self.path, 7, SPMGMT_CRASH_AT="grant.after_fsync")
        self.assertEqual((result.returncode, result.stdout), (86, ""), result.stderr)
        self.assertEqual(EpochStore(self.path).load(), 7)
        self.assertFalse(self.path.with_name("epoch.tmp").exists())

    def test_crashPointInProcess(self) -> None:
        """
        The crash point calls C{os._exit(86)} when named, and nothing
        otherwise.
        """
        exits: list[int] = []
        self.patch(os, "_exit", exits.append)
        self.patch(os, "environ", {"SPMGMT_CRASH_AT": "grant.after_fsync"})
        epochstore._crashPoint("grant.before_persist")
        self.assertEqual(exits, [])
        epochstore._crashPoint("grant.after_fsync")
        self.assertEqual(exits, [86])

    def test_fileSizeLimit(self) -> None:
        """
        Under a file size limit too small for the epoch (C{prlimit
        --fsize}) the write comes out short; the store must fail and leave
        the old epoch, not rename a torn file into place.
        """
        result = runChild(STORE_UNDER_FSIZE_LIMIT, self.path, 1234567)
        self.assertEqual(result.returncode, 0, result.stderr)
        content = self.path.read_bytes()
        self.assertEqual(content, self.old, "torn epoch file: %r" % (content,))
        self.assertTrue(result.stdout.startswith("error: cannot store epoch 1234567 in "), result.stdout)
        self.assertNotIn("\n", result.stdout.rstrip("\n"))
