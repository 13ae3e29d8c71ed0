# -*- test-case-name: tests.test_auth -*-
"""
Who is asking: HTTP Basic and bearer credentials checked with twisted.cred.

The realm hands out a L{Principal} (name and role).  Password checks are slow
on purpose (scrypt), so they run in a thread, and a successful check is
remembered for a short while under a keyed hash so that a script making many
requests does not pay for scrypt every time.  Repeated failures from one peer
are answered with 429 for a while (brute force).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any, Callable

from attrs import define, frozen
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword, UsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from zope.interface import Interface, implementer

from spmgmt.config import ArrayConfig
from spmgmt.passwords import checkPassword
from spmgmt.problem import Problem
from spmgmt.tls import peerIdentity

ROLE_RANK = {"monitor": 1, "admin": 2}


class IPrincipal(Interface):
    """The avatar interface: an authenticated name with a role."""


@frozen
class Principal:
    name: str
    role: str

    def mayAct(self, role: str) -> bool:
        """Whether this principal's role includes C{role}."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class IBearerToken(ICredentials):
    """A bearer token presented in C{Authorization: Bearer ...}."""


@implementer(IBearerToken)
@frozen
class BearerToken:
    token: bytes


class IVouched(ICredentials):
    """
    A name the proxy already authenticated, passed to an SP over the
    proxy's mutual-TLS connection (L{vouchedCredentials}).
    """


@implementer(IVouched)
@frozen
class Vouched:
    name: str


#: The header naming the principal the proxy vouches for.
PRINCIPAL_HEADER = b"x-spmgmt-principal"
#: The certificate identity that may vouch.
VOUCHER = "proxy"


@implementer(ICredentialsChecker)
class VouchedChecker:
    """Accepts a vouched name if it is a configured user or token."""

    credentialInterfaces = (IVouched,)

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names

    def requestAvatarId(self, credentials: Vouched) -> Deferred[bytes]:
        if credentials.name in self._names:
            return succeed(credentials.name.encode("utf-8"))
        return fail(UnauthorizedLogin(f"no user or token {credentials.name!r}"))


def vouchedCredentials(request: Any) -> Vouched | None:
    """
    The proxy's word for who sent C{request}: only over a TLS connection
    whose client certificate (from the array CA) names the proxy; a
    header from anyone else is ignored.
    """
    names = request.requestHeaders.getRawHeaders(PRINCIPAL_HEADER)
    if not names or len(names) != 1:
        return None
    transport = getattr(request.channel, "transport", None)
    if transport is None or peerIdentity(transport) != VOUCHER:
        return None
    return Vouched(names[0].decode("utf-8", "replace"))


@implementer(IRealm)
class RoleRealm:
    """
    Maps an avatar id (a user or token name) to its configured role.
    """

    def __init__(self, roles: dict[str, str]) -> None:
        self._roles = roles

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IPrincipal not in interfaces:
            raise NotImplementedError("only IPrincipal avatars")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        return IPrincipal, Principal(name, self._roles[name]), lambda: None


@implementer(ICredentialsChecker)
class PasswordHashChecker:
    """
    Checks user names and passwords against the configured scrypt hashes.

    @ivar _cache: keyed hash of (user, password) -> expiry, for recent
        successes only; bounded.
    """

    credentialInterfaces = (IUsernamePassword,)
    #: scrypt checks queued or running at most; more are refused (busy).
    maxPending = 32

    def __init__(
        self,
        reactor: Any,
        hashes: dict[str, str],
        cacheSeconds: float = 60.0,
        cacheSize: int = 1024,
        check: Callable[[str, str], bool] = checkPassword,
        threadPool: Any = None,
    ) -> None:
        self._reactor = reactor
        self._threadPool = threadPool
        self._pending = 0
        self._hashes = hashes
        self._cacheSeconds = cacheSeconds
        self._cacheSize = cacheSize
        self._check = check
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        # A syntactically valid hash to spend the same time on unknown users.
        from spmgmt.passwords import hashPassword

        self._decoy = hashPassword(base64.b64encode(os.urandom(12)).decode())

    def _cacheKey(self, user: bytes, password: bytes) -> bytes:
        # Length-prefixed, so no (user, password) pair can collide with another.
        message = len(user).to_bytes(4, "big") + user + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes]:
        user, password = credentials.username, credentials.password
        key = self._cacheKey(user, password)
        now = self._reactor.seconds()
        expiry = self._cache.get(key)
        if expiry is not None and expiry > now:
            return succeed(user)
        stored = self._hashes.get(user.decode("utf-8", "replace"), self._decoy)
        known = user.decode("utf-8", "replace") in self._hashes

        def checked(ok: bool) -> bytes:
            if not (ok and known):
                raise UnauthorizedLogin()
            self._cache[key] = self._reactor.seconds() + self._cacheSeconds
            self._cache.move_to_end(key)
            while len(self._cache) > self._cacheSize:
                self._cache.popitem(last=False)
            return user

        if self._pending >= self.maxPending:
            # A flood of logins waits for nobody: refuse at once rather than
            # queue scrypt work without bound.
            from twisted.internet.defer import fail

            return fail(AuthBusy())
        self._pending += 1

        def done(result: Any) -> Any:
            self._pending -= 1
            return result

        pool = self._threadPool if self._threadPool is not None else self._reactor.getThreadPool()
        d = deferToThreadPool(self._reactor, pool, self._check, password.decode("utf-8", "replace"), stored)
        return d.addBoth(done).addCallback(checked)


@implementer(ICredentialsChecker)
class BearerTokenChecker:
    """Checks bearer tokens against the SHA-256 digests in the config."""

    credentialInterfaces = (IBearerToken,)

    def __init__(self, digests: dict[str, str]) -> None:
        self._digests = [(name, bytes.fromhex(digest)) for name, digest in digests.items()]

    def requestAvatarId(self, credentials: Any) -> Deferred[str]:
        presented = hashlib.sha256(credentials.token).digest()
        found = None
        for name, digest in self._digests:
            # Compare with every entry, in constant time each.
            if hmac.compare_digest(presented, digest):
                found = name
        if found is None:
            from twisted.internet.defer import fail

            return fail(UnauthorizedLogin())
        return succeed(found)


def portalFromConfig(reactor: Any, config: ArrayConfig, threadPool: Any = None) -> Portal:
    """The portal for the users and tokens of C{config}."""
    roles = {u.name: u.role for u in config.users}
    roles.update({t.name: t.role for t in config.tokens})
    return Portal(
        RoleRealm(roles),
        [
            PasswordHashChecker(reactor, {u.name: u.password_hash for u in config.users}, threadPool=threadPool),
            BearerTokenChecker({t.name: t.sha256 for t in config.tokens}),
            VouchedChecker(frozenset(roles)),
        ],
    )


class AuthBusy(LoginFailed):
    """Too many password checks are waiting; try again shortly."""


def authThreadPool(reactor: Any) -> Any:
    """
    A small thread pool of its own for scrypt, started and stopped with the
    reactor: a login flood must not starve the reactor's shared pool, which
    health checks and status facts rely on.
    """
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=0, maxthreads=2, name="spmgmt-auth")
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    return pool


class BadAuthorizationHeader(Exception):
    """The Authorization header is present but cannot be parsed."""


def credentialsFromHeader(header: bytes | None) -> ICredentials | None:
    """
    Parse an C{Authorization} header value.

    @return: credentials, or L{None} when there is no header.
    @raise BadAuthorizationHeader: malformed or an unsupported scheme.
    """
    if header is None:
        return None
    scheme, _, value = header.strip().partition(b" ")
    value = value.strip()
    if scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except ValueError:
            raise BadAuthorizationHeader("Basic credentials are not base64") from None
        user, sep, password = decoded.partition(b":")
        if not sep or not user:
            raise BadAuthorizationHeader("Basic credentials are not user:password")
        return UsernamePassword(user, password)
    if scheme.lower() == b"bearer" and value:
        return BearerToken(value)
    raise BadAuthorizationHeader("use Basic or Bearer authorization")


@frozen
class _Window:
    start: float
    failures: int


@define
class _Guess:
    """Logins in flight with the same credentials from one peer."""

    pending: int = 0
    forgiven: bool = False
    refused: bool = False


def _credentialKey(credentials: Any) -> bytes:
    """Tells credentials apart without keeping them."""
    if IUsernamePassword.providedBy(credentials):
        secret = b"basic\0" + credentials.username + b"\0" + credentials.password
    else:
        secret = b"bearer\0" + getattr(credentials, "token", b"")
    return hashlib.sha256(secret).digest()


class FailureLimiter:
    """
    Counts failed logins per peer address in a fixed window; past
    C{maxFailures} the peer is refused until the window ends.
    """

    def __init__(
        self, clock: IReactorTime, maxFailures: int = 10, window: float = 60.0, maxPeers: int = 4096
    ) -> None:
        self._clock = clock
        self._max = maxFailures
        self._window = window
        self._maxPeers = maxPeers
        self._peers: OrderedDict[str, _Window] = OrderedDict()
        self._guesses: dict[tuple[str, bytes], _Guess] = {}

    def _current(self, peer: str) -> _Window | None:
        entry = self._peers.get(peer)
        if entry is not None and self._clock.seconds() - entry.start >= self._window:
            del self._peers[peer]
            return None
        return entry

    def retryAfter(self, peer: str) -> float | None:
        """Seconds until C{peer} may try again, or L{None} if it may now."""
        entry = self._current(peer)
        if entry is None or entry.failures < self._max:
            return None
        return max(0.0, entry.start + self._window - self._clock.seconds())

    def failed(self, peer: str) -> None:
        """Record a failed login from C{peer}."""
        entry = self._current(peer)
        if entry is None:
            entry = _Window(self._clock.seconds(), 0)
        self._peers[peer] = _Window(entry.start, entry.failures + 1)
        self._peers.move_to_end(peer)
        while len(self._peers) > self._maxPeers:
            self._peers.popitem(last=False)

    def forgive(self, peer: str) -> None:
        """Take back one failure of C{peer} (a login counted while in flight succeeded)."""
        entry = self._current(peer)
        if entry is not None and entry.failures > 0:
            self._peers[peer] = _Window(entry.start, entry.failures - 1)

    def checking(self, peer: str, key: bytes) -> Callable[[bool | None], None]:
        """
        A login from C{peer} with credentials C{key} is being checked: it
        counts as a failure until it succeeds, so guesses sent in parallel
        all count.  Parallel logins with the same credentials are one
        guess, counted once: a client opening many connections at once
        with a good password is not locked out.

        @return: call it with the outcome: C{True} accepted, C{False}
            refused, L{None} not checked at all.
        """
        guess = self._guesses.get((peer, key))
        if guess is None:
            guess = self._guesses[(peer, key)] = _Guess()
            self.failed(peer)
        guess.pending += 1

        def done(accepted: bool | None) -> None:
            guess.pending -= 1
            if accepted is True and not guess.forgiven:
                guess.forgiven = True
                self.forgive(peer)
            elif accepted is False:
                guess.refused = True
            if guess.pending == 0:
                self._guesses.pop((peer, key), None)
                if not guess.forgiven and not guess.refused:
                    self.forgive(peer)  # nobody checked it

        return done


_CHALLENGE = b'Basic realm="spmgmt", charset="UTF-8", Bearer realm="spmgmt"'


async def identify(portal: Portal, limiter: "FailureLimiter", request: Any) -> Principal | None:
    """
    The principal of C{request}'s credentials (or of the proxy's word for
    it, L{vouchedCredentials}); L{None} if it has none; else a L{Problem}
    (401, 429 after repeated failures from one address, 503 while too many
    logins are being checked).
    """
    unauthorized = {b"WWW-Authenticate": _CHALLENGE}
    vouched = vouchedCredentials(request)
    if vouched is not None:
        try:
            _, principal, _ = await portal.login(vouched, None, IPrincipal)
        except LoginFailed:
            raise Problem(401, "The proxy vouched for an unknown name.", headers=unauthorized) from None
        return principal  # type: ignore[no-any-return]
    peer = getattr(request.getClientAddress(), "host", "unknown")
    wait = limiter.retryAfter(peer)
    if wait is not None:
        raise Problem(
            429,
            "Too many failed logins from this address.",
            headers={b"Retry-After": str(int(wait) + 1).encode()},
        )
    try:
        credentials = credentialsFromHeader(request.getHeader(b"authorization"))
    except BadAuthorizationHeader as e:
        limiter.failed(peer)
        raise Problem(401, str(e), headers=unauthorized) from None
    if credentials is None:
        return None
    done = limiter.checking(peer, _credentialKey(credentials))
    try:
        _, principal, _ = await portal.login(credentials, None, IPrincipal)
    except AuthBusy:
        done(None)
        raise Problem(503, "Too many logins are being checked; retry shortly.", headers={b"Retry-After": b"1"}) from None
    except LoginFailed:
        done(False)
        raise Problem(401, "The credentials were not accepted.", headers=unauthorized) from None
    except BaseException:
        done(None)
        raise
    done(True)
    return principal  # type: ignore[no-any-return]


async def authenticate(portal: Portal, limiter: "FailureLimiter", request: Any, role: str) -> Principal:
    """
    The principal of C{request} (L{identify}), if it may act as C{role};
    else a L{Problem}: 401 without credentials, 403 for a lesser role.
    """
    principal = await identify(portal, limiter, request)
    if principal is None:
        raise Problem(401, "Credentials are required.", headers={b"WWW-Authenticate": _CHALLENGE})
    if not principal.mayAct(role):
        raise Problem(403, f"This needs the {role} role; {principal.name} is {principal.role}.")
    return principal
