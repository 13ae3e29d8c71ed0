# -*- test-case-name: tests.test_auth -*-
"""
Password hashes for the users in the configuration: scrypt, salted, in one
self-describing string, so the configuration never holds a plaintext secret.

C{python -m spmgmt.passwords < secret} prints the hash of the first line of
its standard input.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys

_PREFIX = "scrypt"
# n=2**14, r=8, p=1: about 16 MiB and tens of milliseconds per check, the
# usual interactive-login setting; checks run in a thread, off the reactor.
_N, _R, _P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hashPassword(password: str, salt: bytes | None = None) -> str:
    """The storable hash of C{password}."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"{_PREFIX}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def _split(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        return None
    if n < 2 or n & (n - 1) or n > 2**20 or not 0 < r <= 32 or not 0 < p <= 16 or not digest:
        return None
    return n, r, p, salt, digest


def isPasswordHash(stored: str) -> bool:
    """Whether C{stored} is a hash this module can check."""
    return _split(stored) is not None


def checkPassword(password: str, stored: str) -> bool:
    """
    Whether C{password} matches C{stored}, compared in constant time.  Slow on
    purpose: call it off the reactor.
    """
    parts = _split(stored)
    if parts is None:
        return False
    n, r, p, salt, digest = parts
    candidate = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=256 * 1024 * 1024
    )
    return hmac.compare_digest(candidate, digest)


def main() -> None:
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        sys.exit("spmgmt.passwords: no password on standard input")
    print(hashPassword(line))


if __name__ == "__main__":
    main()
