# -*- test-case-name: tests.test_epochstore,tests.test_events -*-
"""
Files that survive a crash or a power cut once a call returns: the
arbiter's epoch and its event history.  Raises L{OSError}; callers say what
the file was.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable


def replaceDurably(path: Path, data: bytes) -> None:
    """
    Replace C{path} with C{data}: written to C{<name>.tmp} beside it,
    fsynced, renamed over it, and the directory fsynced, so a crash at any
    point leaves the old content or the new, never neither and never a torn
    file.
    """
    tmp = path.with_name(path.name + ".tmp")
    _writeSynced(tmp, data, os.O_TRUNC, os.fsync)
    os.replace(tmp, path)
    _syncDirectory(path.parent)


def appendDurably(path: Path, data: bytes) -> None:
    """
    Append C{data} to C{path} (created 0600) and fdatasync it; a file it
    creates is made durable in its directory too.
    """
    created = not path.exists()
    _writeSynced(path, data, os.O_APPEND, os.fdatasync)
    if created:
        _syncDirectory(path.parent)


def _writeSynced(path: Path, data: bytes, mode: int, sync: Callable[[int], None]) -> None:
    """Write C{data} to C{path} (created 0600, opened with C{mode}) and C{sync} it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o600)
    try:
        _writeAll(fd, data)
        sync(fd)
    finally:
        os.close(fd)


def _syncDirectory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _writeAll(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]
