# -*- test-case-name: tests.test_auth -*-
"""
Tests for L{spmgmt.auth} and L{spmgmt.passwords}.
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, Callable

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from spmgmt import passwords
from spmgmt.auth import (
    Vouched,
    VouchedChecker,
    vouchedCredentials,
    BadAuthorizationHeader,
    BearerToken,
    BearerTokenChecker,
    FailureLimiter,
    IPrincipal,
    PasswordHashChecker,
    Principal,
    RoleRealm,
    credentialsFromHeader,
    portalFromConfig,
)
from spmgmt.config import TokenConfig, UserConfig
from spmgmt.passwords import checkPassword, hashPassword, isPasswordHash

PASSWORD = "correct horse battery staple"


@lru_cache(maxsize=None)
def passwordHash() -> str:
    """The real scrypt hash of L{PASSWORD}, computed once per run (it is slow)."""
    return hashPassword(PASSWORD)


def cheapHash(password: str, n: int = 2, r: int = 1, p: int = 1, salt: bytes = b"s" * 16) -> str:
    """A hash in L{hashPassword}'s format with cheap parameters."""
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(digest)}"


def basic(value: bytes) -> bytes:
    """An C{Authorization} header value for Basic credentials C{value}."""
    return b"Basic " + base64.b64encode(value)


class FakeThreadPool:
    """
    Runs work as L{twisted.python.threadpool.ThreadPool.callInThreadWithCallback}
    would, but at once in the calling thread (or, with C{synchronous} false,
    only when L{runPending} is called).
    """

    def __init__(self, synchronous: bool = True) -> None:
        self.synchronous = synchronous
        self.pending: list[Callable[[], None]] = []
        self.submitted = 0

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None], f: Any, *a: Any, **kw: Any) -> None:
        self.submitted += 1

        def work() -> None:
            try:
                result = f(*a, **kw)
            except BaseException:
                onResult(False, Failure())
            else:
                onResult(True, result)

        if self.synchronous:
            work()
        else:
            self.pending.append(work)

    def runPending(self) -> None:
        pending, self.pending = self.pending, []
        for work in pending:
            work()


class FakeThreadReactor:
    """
    Just enough reactor for L{twisted.internet.threads.deferToThreadPool}:
    C{getThreadPool}, C{callFromThread} (called directly) and a
    L{Clock}'s C{seconds}.
    """

    def __init__(self, clock: Clock | None = None, synchronous: bool = True) -> None:
        self.clock = Clock() if clock is None else clock
        self.pool = FakeThreadPool(synchronous)

    def getThreadPool(self) -> FakeThreadPool:
        return self.pool

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()


class CountingCheck:
    """A password check that answers C{answer} and records its calls."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str]] = []

    def __call__(self, password: str, stored: str) -> bool:
        self.calls.append((password, stored))
        return self.answer


DECOY = cheapHash("decoy")


def fastChecker(case: SynchronousTestCase, reactor: Any, hashes: dict[str, str], **kwargs: Any) -> PasswordHashChecker:
    """
    A L{PasswordHashChecker} whose decoy hash is made cheaply (the real one
    costs a scrypt per checker).
    """
    case.patch(passwords, "hashPassword", lambda password, salt=None: DECOY)
    return PasswordHashChecker(reactor, hashes, **kwargs)


class CredentialsFromHeaderTests(SynchronousTestCase):
    """Tests for L{credentialsFromHeader}."""

    def test_none(self) -> None:
        """No header means no credentials, not an error."""
        self.assertIsNone(credentialsFromHeader(None))

    def test_basic(self) -> None:
        """Basic credentials become a L{UsernamePassword}."""
        credentials = credentialsFromHeader(basic(b"admin:secret"))
        self.assertIsInstance(credentials, UsernamePassword)
        self.assertEqual((credentials.username, credentials.password), (b"admin", b"secret"))

    def test_basicSchemeCaseInsensitive(self) -> None:
        """The scheme name is matched without regard to case, and spaces around the value are ignored."""
        credentials = credentialsFromHeader(b"bAsIc   " + base64.b64encode(b"u:p") + b"  ")
        self.assertEqual((credentials.username, credentials.password), (b"u", b"p"))

    def test_basicColonInPassword(self) -> None:
        """Only the first colon separates the user from the password."""
        credentials = credentialsFromHeader(basic(b"admin:a:b::c"))
        self.assertEqual((credentials.username, credentials.password), (b"admin", b"a:b::c"))

    def test_basicEmptyPassword(self) -> None:
        """An empty password is still a password (and will simply be refused later)."""
        credentials = credentialsFromHeader(basic(b"admin:"))
        self.assertEqual((credentials.username, credentials.password), (b"admin", b""))

    def test_basicNotBase64(self) -> None:
        """Basic credentials that are not base64 are refused."""
        for value in (b"Basic !!!notbase64", b"Basic YWRtaW4", b"Basic \xff\xfe"):
            with self.assertRaises(BadAuthorizationHeader, msg=value) as e:
                credentialsFromHeader(value)
            self.assertIn("base64", str(e.exception))

    def test_basicNoColon(self) -> None:
        """Basic credentials without a colon, or empty ones, are refused."""
        for value in (basic(b"adminsecret"), b"Basic", b"Basic "):
            with self.assertRaises(BadAuthorizationHeader, msg=value) as e:
                credentialsFromHeader(value)
            self.assertIn("user:password", str(e.exception))

    def test_basicEmptyUser(self) -> None:
        """Basic credentials with an empty user name are refused."""
        with self.assertRaises(BadAuthorizationHeader):
            credentialsFromHeader(basic(b":secret"))

    def test_bearer(self) -> None:
        """A bearer token becomes a L{BearerToken} holding the token's bytes."""
        self.assertEqual(credentialsFromHeader(b"Bearer abc.def-ghi"), BearerToken(b"abc.def-ghi"))
        self.assertEqual(credentialsFromHeader(b"bearer  tok "), BearerToken(b"tok"))

    def test_bearerWithoutToken(self) -> None:
        """C{Bearer} with no token is refused."""
        for value in (b"Bearer", b"Bearer ", b"Bearer    "):
            with self.assertRaises(BadAuthorizationHeader, msg=value):
                credentialsFromHeader(value)

    def test_unknownScheme(self) -> None:
        """Schemes other than Basic and Bearer are refused, naming the two that work."""
        for value in (b"Digest username=x", b"Negotiate abc", b"", b"   ", b"secret"):
            with self.assertRaises(BadAuthorizationHeader, msg=value) as e:
                credentialsFromHeader(value)
            self.assertIn("Basic or Bearer", str(e.exception))


class PasswordHashCheckerTests(SynchronousTestCase):
    """Tests for L{PasswordHashChecker}."""

    def setUp(self) -> None:
        self.reactor = FakeThreadReactor()

    def test_rightPassword(self) -> None:
        """The right password (checked with real scrypt) yields the user name as avatar id."""
        checker = fastChecker(self, self.reactor, {"admin": passwordHash()})
        d = checker.requestAvatarId(UsernamePassword(b"admin", PASSWORD.encode()))
        self.assertEqual(self.successResultOf(d), b"admin")

    def test_wrongPassword(self) -> None:
        """A wrong password (checked with real scrypt) is refused with L{UnauthorizedLogin}."""
        checker = fastChecker(self, self.reactor, {"admin": passwordHash()})
        d = checker.requestAvatarId(UsernamePassword(b"admin", b"wrong"))
        self.failureResultOf(d, UnauthorizedLogin)

    def test_unknownUser(self) -> None:
        """
        An unknown user is refused even if the check passes, after a check
        against a decoy hash, so that unknown users take as long as known ones.
        """
        check = CountingCheck(answer=True)
        checker = fastChecker(self, self.reactor, {"admin": "stored"}, check=check)
        d = checker.requestAvatarId(UsernamePassword(b"nobody", b"pw"))
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(check.calls, [("pw", DECOY)])

    def test_realDecoyIsAHash(self) -> None:
        """The decoy checked for unknown users is a real, checkable hash."""
        check = CountingCheck(answer=False)
        checker = PasswordHashChecker(self.reactor, {}, check=check)
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"nobody", b"pw")), UnauthorizedLogin)
        [(_, stored)] = check.calls
        self.assertTrue(isPasswordHash(stored))

    def test_checkRunsInThreadPool(self) -> None:
        """The slow check runs in the reactor's thread pool, not in the caller."""
        reactor = FakeThreadReactor(synchronous=False)
        check = CountingCheck()
        checker = fastChecker(self, reactor, {"admin": "stored"}, check=check)
        d = checker.requestAvatarId(UsernamePassword(b"admin", b"pw"))
        self.assertNoResult(d)
        self.assertEqual(check.calls, [])
        reactor.pool.runPending()
        self.assertEqual(self.successResultOf(d), b"admin")
        self.assertEqual(check.calls, [("pw", "stored")])

    def test_checkErrorIsNotSuccess(self) -> None:
        """An exception raised by the check fails the login rather than passing it."""

        def broken(password: str, stored: str) -> bool:
            raise MemoryError("scrypt")

        checker = fastChecker(self, self.reactor, {"admin": "stored"}, check=broken)
        d = checker.requestAvatarId(UsernamePassword(b"admin", b"pw"))
        self.failureResultOf(d, MemoryError)

    def test_successCached(self) -> None:
        """A second check of the same user and password within 60 seconds does not run the check again."""
        check = CountingCheck()
        checker = fastChecker(self, self.reactor, {"admin": "stored"}, check=check)
        credentials = UsernamePassword(b"admin", b"pw")
        self.assertEqual(self.successResultOf(checker.requestAvatarId(credentials)), b"admin")
        self.reactor.clock.advance(59.9)
        self.assertEqual(self.successResultOf(checker.requestAvatarId(credentials)), b"admin")
        self.assertEqual(len(check.calls), 1)

    def test_cacheExpires(self) -> None:
        """Once the cache entry is 60 seconds old, the password is checked again."""
        check = CountingCheck()
        checker = fastChecker(self, self.reactor, {"admin": "stored"}, check=check)
        credentials = UsernamePassword(b"admin", b"pw")
        self.successResultOf(checker.requestAvatarId(credentials))
        self.reactor.clock.advance(60)
        self.successResultOf(checker.requestAvatarId(credentials))
        self.assertEqual(len(check.calls), 2)

    def test_cacheExpiresAfterPasswordChange(self) -> None:
        """After expiry a cached password that no longer passes is refused."""
        check = CountingCheck()
        checker = fastChecker(self, self.reactor, {"admin": "stored"}, check=check)
        credentials = UsernamePassword(b"admin", b"pw")
        self.successResultOf(checker.requestAvatarId(credentials))
        check.answer = False
        self.successResultOf(checker.requestAvatarId(credentials))
        self.reactor.clock.advance(61)
        self.failureResultOf(checker.requestAvatarId(credentials), UnauthorizedLogin)

    def test_cacheIsPerPassword(self) -> None:
        """A cached success for one password does not let another password in."""
        check = CountingCheck()
        checker = fastChecker(self, self.reactor, {"admin": "stored"}, check=check)
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"admin", b"pw")))
        check.answer = False
        d = checker.requestAvatarId(UsernamePassword(b"admin", b"other"))
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(len(check.calls), 2)

    def test_cacheIsPerUser(self) -> None:
        """A cached success for one user does not let another user in with the same password."""
        check = CountingCheck()
        checker = fastChecker(self, self.reactor, {"admin": "a", "monitor": "m"}, check=check)
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"admin", b"pw")))
        check.answer = False
        self.failureResultOf(checker.requestAvatarId(UsernamePassword(b"monitor", b"pw")), UnauthorizedLogin)

    def test_failureNotCached(self) -> None:
        """A wrong password is checked again every time: failures are never cached."""
        check = CountingCheck(answer=False)
        checker = fastChecker(self, self.reactor, {"admin": "stored"}, check=check)
        credentials = UsernamePassword(b"admin", b"wrong")
        for _ in range(3):
            self.failureResultOf(checker.requestAvatarId(credentials), UnauthorizedLogin)
        self.assertEqual(len(check.calls), 3)

    def test_unknownUserNotCached(self) -> None:
        """An unknown user whose decoy check passes is not cached as a success."""
        check = CountingCheck(answer=True)
        checker = fastChecker(self, self.reactor, {}, check=check)
        credentials = UsernamePassword(b"nobody", b"pw")
        self.failureResultOf(checker.requestAvatarId(credentials), UnauthorizedLogin)
        self.failureResultOf(checker.requestAvatarId(credentials), UnauthorizedLogin)
        self.assertEqual(len(check.calls), 2)

    def test_cacheBounded(self) -> None:
        """The cache keeps only the C{cacheSize} most recent successes."""
        check = CountingCheck()
        checker = fastChecker(self, self.reactor, {"a": "1", "b": "2", "c": "3"}, check=check, cacheSize=2)
        for user in (b"a", b"b", b"c"):
            self.successResultOf(checker.requestAvatarId(UsernamePassword(user, b"pw")))
        self.assertEqual(len(check.calls), 3)
        # b and c are cached; a was evicted.
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"c", b"pw")))
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"b", b"pw")))
        self.assertEqual(len(check.calls), 3)
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"a", b"pw")))
        self.assertEqual(len(check.calls), 4)

    def test_cacheEvictsOldestSuccess(self) -> None:
        """A success checked again after expiry counts as the newest, so an older one is evicted first."""
        check = CountingCheck()
        checker = fastChecker(self, self.reactor, {"a": "1", "b": "2", "c": "3"}, check=check, cacheSize=2)
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"a", b"pw")))
        self.reactor.clock.advance(30)
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"b", b"pw")))
        self.reactor.clock.advance(31)
        # a expired and is checked again: now newer than b.
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"a", b"pw")))
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"c", b"pw")))
        self.assertEqual([stored for _, stored in check.calls], ["1", "2", "1", "3"])
        self.successResultOf(checker.requestAvatarId(UsernamePassword(b"a", b"pw")))
        self.assertEqual(len(check.calls), 4)


class BearerTokenCheckerTests(SynchronousTestCase):
    """Tests for L{BearerTokenChecker}."""

    def setUp(self) -> None:
        self.checker = BearerTokenChecker(
            {
                "ci": hashlib.sha256(b"ci-token").hexdigest(),
                "grafana": hashlib.sha256(b"grafana-token").hexdigest(),
            }
        )

    def test_rightToken(self) -> None:
        """A configured token yields its name."""
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(BearerToken(b"ci-token"))), "ci")
        self.assertEqual(
            self.successResultOf(self.checker.requestAvatarId(BearerToken(b"grafana-token"))), "grafana"
        )

    def test_wrongToken(self) -> None:
        """An unknown token, or a configured digest presented as a token, is refused."""
        for token in (b"ci-token ", b"", hashlib.sha256(b"ci-token").hexdigest().encode()):
            self.failureResultOf(self.checker.requestAvatarId(BearerToken(token)), UnauthorizedLogin)

    def test_noTokens(self) -> None:
        """With no tokens configured every token is refused."""
        self.failureResultOf(BearerTokenChecker({}).requestAvatarId(BearerToken(b"x")), UnauthorizedLogin)


class RealmTests(SynchronousTestCase):
    """Tests for L{RoleRealm} and L{Principal}."""

    def test_mayAct(self) -> None:
        """An admin may act as admin and monitor; a monitor only as monitor."""
        admin, monitor = Principal("a", "admin"), Principal("m", "monitor")
        self.assertTrue(admin.mayAct("admin"))
        self.assertTrue(admin.mayAct("monitor"))
        self.assertTrue(monitor.mayAct("monitor"))
        self.assertFalse(monitor.mayAct("admin"))

    def test_bytesAvatarId(self) -> None:
        """A bytes avatar id (from a password check) is decoded into the principal's name."""
        interface, principal, logout = RoleRealm({"admin": "admin"}).requestAvatar(b"admin", None, IPrincipal)
        self.assertIs(interface, IPrincipal)
        self.assertEqual(principal, Principal("admin", "admin"))
        self.assertIsNone(logout())

    def test_otherInterface(self) -> None:
        """Only L{IPrincipal} avatars are handed out."""
        from zope.interface import Interface

        self.assertRaises(NotImplementedError, RoleRealm({"a": "admin"}).requestAvatar, "a", None, Interface)


class PortalFromConfigTests(SynchronousTestCase):
    """Tests for L{portalFromConfig}, logging in through L{Portal.login}."""

    def setUp(self) -> None:
        self.patch(passwords, "hashPassword", lambda password, salt=None: DECOY)
        config = SimpleNamespace(
            users=(
                UserConfig("admin", "admin", passwordHash()),
                UserConfig("monitor", "monitor", cheapHash("m-pw")),
            ),
            tokens=(TokenConfig("grafana", "monitor", hashlib.sha256(b"tok").hexdigest()),),
        )
        self.portal = portalFromConfig(FakeThreadReactor(), config)

    def login(self, credentials: Any) -> Any:
        return self.portal.login(credentials, None, IPrincipal)

    def test_adminPassword(self) -> None:
        """The admin's password (real scrypt) logs in as an admin principal."""
        interface, principal, _ = self.successResultOf(self.login(UsernamePassword(b"admin", PASSWORD.encode())))
        self.assertIs(interface, IPrincipal)
        self.assertEqual(principal, Principal("admin", "admin"))

    def test_monitorPassword(self) -> None:
        """The monitor's password logs in as a monitor principal."""
        _, principal, _ = self.successResultOf(self.login(UsernamePassword(b"monitor", b"m-pw")))
        self.assertEqual(principal, Principal("monitor", "monitor"))

    def test_token(self) -> None:
        """A configured bearer token logs in with its configured name and role."""
        _, principal, _ = self.successResultOf(self.login(BearerToken(b"tok")))
        self.assertEqual(principal, Principal("grafana", "monitor"))

    def test_refused(self) -> None:
        """Wrong passwords, unknown users and unknown tokens are refused."""
        for credentials in (
            UsernamePassword(b"monitor", b"wrong"),
            UsernamePassword(b"nobody", b"m-pw"),
            UsernamePassword(b"grafana", b"tok"),
            BearerToken(b"nope"),
        ):
            self.failureResultOf(self.login(credentials), UnauthorizedLogin)


class FailureLimiterTests(SynchronousTestCase):
    """Tests for L{FailureLimiter}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = FailureLimiter(self.clock, maxFailures=3, window=60.0)

    def fail(self, peer: str, times: int) -> None:
        for _ in range(times):
            self.limiter.failed(peer)

    def test_unknownPeer(self) -> None:
        """A peer that never failed may try."""
        self.assertIsNone(self.limiter.retryAfter("10.0.0.1"))

    def test_underLimit(self) -> None:
        """Fewer failures than the limit do not block."""
        self.fail("10.0.0.1", 2)
        self.assertIsNone(self.limiter.retryAfter("10.0.0.1"))

    def test_atLimit(self) -> None:
        """At the limit the peer must wait until the end of the window that began with its first failure."""
        self.fail("10.0.0.1", 1)
        self.clock.advance(10)
        self.fail("10.0.0.1", 2)
        self.assertEqual(self.limiter.retryAfter("10.0.0.1"), 50.0)
        self.clock.advance(15)
        self.assertEqual(self.limiter.retryAfter("10.0.0.1"), 35.0)

    def test_windowExpiryResets(self) -> None:
        """Once the window is over the peer may try again, and its count starts afresh."""
        self.fail("10.0.0.1", 3)
        self.clock.advance(59.5)
        self.assertIsNotNone(self.limiter.retryAfter("10.0.0.1"))
        self.clock.advance(0.5)
        self.assertIsNone(self.limiter.retryAfter("10.0.0.1"))
        self.fail("10.0.0.1", 2)
        self.assertIsNone(self.limiter.retryAfter("10.0.0.1"))
        self.fail("10.0.0.1", 1)
        self.assertEqual(self.limiter.retryAfter("10.0.0.1"), 60.0)

    def test_failuresInExpiredWindowDoNotCount(self) -> None:
        """Failures recorded after the window ended start a new window instead of adding to the old one."""
        self.fail("10.0.0.1", 2)
        self.clock.advance(61)
        self.fail("10.0.0.1", 2)
        self.assertIsNone(self.limiter.retryAfter("10.0.0.1"))

    def test_peersIndependent(self) -> None:
        """One peer's failures do not block another."""
        self.fail("10.0.0.1", 3)
        self.assertIsNotNone(self.limiter.retryAfter("10.0.0.1"))
        self.assertIsNone(self.limiter.retryAfter("10.0.0.2"))

    def test_boundedPeers(self) -> None:
        """Only the C{maxPeers} most recently failing peers are remembered."""
        limiter = FailureLimiter(self.clock, maxFailures=1, maxPeers=2)
        for peer in ("a", "b", "c"):
            limiter.failed(peer)
        self.assertIsNone(limiter.retryAfter("a"))
        self.assertIsNotNone(limiter.retryAfter("b"))
        self.assertIsNotNone(limiter.retryAfter("c"))
        # A new failure from b makes it the most recent, so d evicts c.
        limiter.failed("b")
        limiter.failed("d")
        self.assertIsNone(limiter.retryAfter("c"))
        self.assertIsNotNone(limiter.retryAfter("b"))
        self.assertIsNotNone(limiter.retryAfter("d"))


class PasswordsTests(SynchronousTestCase):
    """Tests for L{spmgmt.passwords}."""

    def test_roundTrip(self) -> None:
        """A hash accepts its password and nothing else."""
        stored = passwordHash()
        self.assertTrue(isPasswordHash(stored))
        self.assertTrue(checkPassword(PASSWORD, stored))
        self.assertFalse(checkPassword(PASSWORD + " ", stored))

    def test_format(self) -> None:
        """A hash names scrypt, its parameters, a 16-byte salt and a 32-byte digest; it never holds the password."""
        stored = passwordHash()
        prefix, n, r, p, salt, digest = stored.split("$")
        self.assertEqual((prefix, n, r, p), ("scrypt", "16384", "8", "1"))
        self.assertEqual(len(base64.b64decode(salt)), 16)
        self.assertEqual(len(base64.b64decode(digest)), 32)
        self.assertNotIn(PASSWORD, stored)

    def test_saltGiven(self) -> None:
        """With a given salt the hash is the scrypt of the password with that salt."""
        salt = b"0123456789abcdef"
        stored = hashPassword("pw", salt)
        expected = hashlib.scrypt(b"pw", salt=salt, n=2**14, r=8, p=1, dklen=32)
        self.assertEqual(stored.split("$")[4:], [base64.b64encode(salt).decode(), base64.b64encode(expected).decode()])

    def test_parametersFromHash(self) -> None:
        """The check uses the parameters and digest length written in the hash."""
        self.assertTrue(checkPassword("pw", cheapHash("pw", n=4, r=2, p=2)))
        self.assertFalse(checkPassword("px", cheapHash("pw", n=4, r=2, p=2)))

    def test_unicode(self) -> None:
        """Non-ASCII passwords are hashed as UTF-8."""
        self.assertTrue(checkPassword("pässwört", cheapHash("pässwört")))
        self.assertFalse(checkPassword("passwort", cheapHash("pässwört")))

    def test_isPasswordHashRejects(self) -> None:
        """Plaintext, junk, other schemes, bad base64 and odd scrypt parameters are not hashes."""
        good = cheapHash("pw")
        prefix, n, r, p, salt, digest = good.split("$")
        rejected = [
            "",
            "hunter2",
            "scrypt",
            "$".join([prefix, n, r, p, salt]),
            "$".join([prefix, n, r, p, salt, digest, "x"]),
            "$".join(["bcrypt", n, r, p, salt, digest]),
            "$".join([prefix, "x", r, p, salt, digest]),
            "$".join([prefix, "3", r, p, salt, digest]),
            "$".join([prefix, "1", r, p, salt, digest]),
            "$".join([prefix, "0", r, p, salt, digest]),
            "$".join([prefix, "-4", r, p, salt, digest]),
            "$".join([prefix, str(2**21), r, p, salt, digest]),
            "$".join([prefix, n, "0", p, salt, digest]),
            "$".join([prefix, n, "33", p, salt, digest]),
            "$".join([prefix, n, r, "0", salt, digest]),
            "$".join([prefix, n, r, "17", salt, digest]),
            "$".join([prefix, n, r, p, "not base64!", digest]),
            "$".join([prefix, n, r, p, salt, "not base64!"]),
            "$".join([prefix, n, r, p, salt, ""]),
        ]
        for stored in rejected:
            self.assertFalse(isPasswordHash(stored), stored)
            self.assertFalse(checkPassword("pw", stored), stored)
        self.assertTrue(isPasswordHash(good))

    def test_isPasswordHashLimits(self) -> None:
        """The largest accepted parameters are n=2**20, r=32, p=16."""
        self.assertTrue(isPasswordHash(cheapHash("pw").replace("scrypt$2$1$1$", f"scrypt${2**20}$32$16$")))

    def test_mainPrintsHash(self) -> None:
        """C{main} prints the hash of the first line of standard input, without its line ending."""
        self.patch(sys, "stdin", io.StringIO("s3cret\r\nsecond line\n"))
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        passwords.main()
        printed = out.getvalue()
        self.assertTrue(printed.endswith("\n"))
        self.assertEqual(printed.count("\n"), 1)
        self.assertTrue(checkPassword("s3cret", printed.strip()))

    def test_mainNoPassword(self) -> None:
        """C{main} exits with a message when standard input has no password."""
        for text in ("", "\n"):
            self.patch(sys, "stdin", io.StringIO(text))
            with self.assertRaises(SystemExit) as e:
                passwords.main()
            self.assertEqual(e.exception.code, "spmgmt.passwords: no password on standard input")

    def test_module(self) -> None:
        """C{python -m spmgmt.passwords} prints a hash of the password read on standard input."""
        done = subprocess.run(
            [sys.executable, "-m", "spmgmt.passwords"],
            input=b"from-stdin\n",
            capture_output=True,
            timeout=30,
        )
        self.assertEqual((done.returncode, done.stderr), (0, b""))
        self.assertTrue(checkPassword("from-stdin", done.stdout.decode().strip()))


class LoginFloodTests(SynchronousTestCase):
    """Password checks waiting for their thread are bounded."""

    def test_busyBeyondMaxPending(self) -> None:
        """
        Past C{maxPending} queued checks a login fails at once with
        L{AuthBusy} (answered 503), without queueing more scrypt work; once
        the queue drains, logins are checked again.
        """
        from twisted.cred.credentials import UsernamePassword

        from spmgmt.auth import AuthBusy, PasswordHashChecker

        reactor = FakeThreadReactor(synchronous=False)
        checker = PasswordHashChecker(reactor, {"admin": "x"}, check=CountingCheck(True))
        waiting = [
            checker.requestAvatarId(UsernamePassword(b"admin", b"pw%d" % i)) for i in range(checker.maxPending)
        ]
        refused = checker.requestAvatarId(UsernamePassword(b"admin", b"one more"))
        self.failureResultOf(refused, AuthBusy)
        self.assertEqual(reactor.pool.submitted, checker.maxPending)
        reactor.pool.runPending()
        for d in waiting:
            self.assertEqual(self.successResultOf(d), b"admin")
        later = checker.requestAvatarId(UsernamePassword(b"admin", b"later"))
        reactor.pool.runPending()
        self.assertEqual(self.successResultOf(later), b"admin")


class VouchedTests(SynchronousTestCase):
    """The proxy's word for a user: only a known name, only from the proxy."""

    def test_checker(self) -> None:
        checker = VouchedChecker(frozenset({"admin"}))
        self.assertEqual(self.successResultOf(checker.requestAvatarId(Vouched("admin"))), b"admin")
        self.failureResultOf(checker.requestAvatarId(Vouched("root")), UnauthorizedLogin)

    def test_notFromAPlainConnection(self) -> None:
        """Without a verified client certificate naming the proxy, the header is ignored."""
        from twisted.internet.testing import StringTransport
        from twisted.web.http_headers import Headers

        request = SimpleNamespace(
            requestHeaders=Headers({b"X-SPMgmt-Principal": [b"admin"]}),
            channel=SimpleNamespace(transport=StringTransport()),
        )
        self.assertIsNone(vouchedCredentials(request))
        request.requestHeaders = Headers()
        self.assertIsNone(vouchedCredentials(request))
