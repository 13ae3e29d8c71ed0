# -*- test-case-name: tests.test_epochstore -*-
"""
The last issued epoch, on disk: written to a temporary file, fsynced,
renamed over the old one, and the directory fsynced, so a crash at any
point leaves either the old or the new epoch, never neither and never a
torn file.  An epoch that cannot be stored is not granted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from spmgmt.durable import replaceDurably


class EpochStoreError(Exception):
    """The epoch file cannot be read or written; the message says why."""


def _crashPoint(name: str) -> None:
    """
    Die here if C{SPMGMT_CRASH_AT} names this point: how the fault tests
    crash the arbiter at each step of a grant.
    """
    if os.environ.get("SPMGMT_CRASH_AT") == name:
        os._exit(86)


class EpochStore:
    """The persisted last epoch of one arbiter."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> int:
        """
        The last stored epoch; 0 when there is no file yet.

        @raise EpochStoreError: the file exists but is unreadable or corrupt.
        """
        return self.loadState()[0]

    def loadState(self) -> tuple[int, str | None]:
        """
        The last stored epoch and the SP it was granted to; C{(0, None)}
        when there is no file yet.

        @raise EpochStoreError: the file exists but is unreadable or corrupt.
        """
        try:
            data = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0, None
        except (OSError, UnicodeDecodeError) as e:
            raise EpochStoreError(f"cannot read {self.path}: {getattr(e, 'strerror', None) or e}") from None
        try:
            record = json.loads(data)
            epoch = record["epoch"]
            holder = record.get("holder")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EpochStoreError(f"{self.path} is corrupt") from None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise EpochStoreError(f"{self.path} holds no valid epoch")
        if holder is not None and not isinstance(holder, str):
            raise EpochStoreError(f"{self.path} holds no valid holder")
        return epoch, holder

    def store(self, epoch: int, holder: str | None = None) -> None:
        """
        Durably replace the stored epoch with C{epoch}, granted to C{holder}.

        @raise EpochStoreError: it could not be made durable.
        """
        _crashPoint("grant.before_persist")
        data = json.dumps({"epoch": epoch, "holder": holder}).encode() + b"\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replaceDurably(self.path, data)
        except OSError as e:
            raise EpochStoreError(f"cannot store epoch {epoch} in {self.path}: {e.strerror}") from None
        _crashPoint("grant.after_fsync")
