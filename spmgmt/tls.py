# -*- test-case-name: tests.test_tls -*-
"""
TLS connection settings for every listener and connector in the array, built
from PEM files with L{twisted.internet.ssl}.

Two kinds of servers exist:

  - the front/web servers (HTTPS for browsers and tools): Twisted's default
    floor (TLS 1.2) and cipher selection, optional ALPN;
  - the PB servers (SP peer channel, proxy arbiter): mutual TLS, where the
    client must present a certificate from the array CA, and TLS 1.3 only,
    since every peer is ours.

Clients always verify the server against the array CA I{and} check that its
certificate names the SP (or address) they meant to reach, via
L{optionsForClientTLS} and C{service_identity}.

Nothing here sets cipher strings or protocol methods by hand: Twisted's
defaults are maintained upstream and are better than anything pinned here.
Files are read when the options are built, so a bad path or a certificate
that does not match its key is reported at start-up, not at the first
connection.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509, PKey
from twisted.internet.error import VerifyError
from twisted.application.service import Service
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

PathLike = str | Path

_log = Logger()


class TLSConfigurationError(Exception):
    """
    TLS settings cannot be built from the given files.  C{str()} is the one
    line to show.
    """


def _read(path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigurationError(f"cannot read {path}: {e.strerror or e}") from None


def _loadAuthorities(caPath: PathLike) -> list[X509]:
    try:
        certificates = x509.load_pem_x509_certificates(_read(caPath))
    except ValueError:
        raise TLSConfigurationError(f"{caPath} is not a PEM certificate") from None
    return [X509.from_cryptography(c) for c in certificates]


def loadTrustRoot(caPath: PathLike) -> IOpenSSLTrustRoot:
    """
    Trust exactly the CA certificates in C{caPath}: one, or several while a
    CA is being replaced.  The platform's CAs are never trusted, so only
    members of this array can connect.

    @raise TLSConfigurationError: unreadable, or no PEM certificate in it.
    """
    return trustRootFromCertificates([Certificate(c) for c in _loadAuthorities(caPath)])


def loadPrivateCertificate(certPath: PathLike, keyPath: PathLike) -> PrivateCertificate:
    """
    The certificate in C{certPath} with the private key in C{keyPath}.

    @raise TLSConfigurationError: unreadable, not PEM, or the key does not
        belong to the certificate.
    """
    certData = _read(certPath)
    keyData = _read(keyPath)
    try:
        certificate = x509.load_pem_x509_certificate(certData)
    except ValueError:
        raise TLSConfigurationError(f"{certPath} is not a PEM certificate") from None
    # cryptography rather than pyOpenSSL's load_privatekey: given an
    # encrypted key, the latter lets OpenSSL prompt for a passphrase on the
    # terminal, hanging a daemon; the former raises.
    try:
        key = load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TLSConfigurationError(f"{keyPath} is not an unencrypted PEM private key") from None
    try:
        return PrivateCertificate.fromCertificateAndKeyPair(
            Certificate(X509.from_cryptography(certificate)),
            KeyPair(PKey.from_cryptography_key(key)),  # type: ignore[arg-type]
        )
    except VerifyError:
        raise TLSConfigurationError(
            f"{keyPath} does not match the certificate {certPath}"
        ) from None


def _identityOptions(privateCertificate: PrivateCertificate) -> dict[str, Any]:
    """
    The C{privateKey} and C{certificate} arguments of L{CertificateOptions}
    for C{privateCertificate}, as C{cryptography} objects.

    Twisted documents pyOpenSSL's C{PKey} and C{X509} here and passes them
    unchanged to C{Context.use_privatekey}/C{use_certificate}, which since
    pyOpenSSL 24.3 warn that those types are deprecated and accept the
    C{cryptography} equivalents instead; handing over the latter keeps every
    context free of warnings and ready for pyOpenSSL dropping C{X509}.
    """
    return {
        "privateKey": privateCertificate.privateKey.original.to_cryptography_key(),
        "certificate": privateCertificate.original.to_cryptography(),
    }


def serverOptions(
    certPath: PathLike,
    keyPath: PathLike,
    caPath: PathLike | None = None,
    requireClientCertificate: bool = False,
    tls13Only: bool = False,
    acceptableProtocols: Sequence[bytes] | None = None,
) -> CertificateOptions:
    """
    Settings for a TLS server presenting the certificate in C{certPath}.

    @param caPath: the array CA.  With C{requireClientCertificate}, a client
        must present a certificate it signed or the handshake fails.  Without
        it, a certificate is asked for but optional: one that is presented
        must still verify, and L{peerIdentity} is then its name.
    @param requireClientCertificate: mutual TLS (PB servers); needs
        C{caPath}.
    @param tls13Only: refuse anything older than TLS 1.3 (PB servers, whose
        clients are all ours).
    @param acceptableProtocols: ALPN protocols in order of preference, e.g.
        C{[b"http/1.1"]}; a client offering only others is refused.

    @return: an L{IOpenSSLServerConnectionCreator} (also an
        L{IOpenSSLContextFactory}), for L{tlsServerFactory}.

    @raise TLSConfigurationError: a file cannot be used.
    @raise ValueError: C{requireClientCertificate} without C{caPath}.
    """
    if requireClientCertificate and caPath is None:
        raise ValueError("requireClientCertificate needs caPath, the CA to verify clients with")
    privateCertificate = loadPrivateCertificate(certPath, keyPath)
    extra: dict[str, Any] = {}
    if caPath is not None:
        if requireClientCertificate:
            # A trustRoot makes CertificateOptions verify the peer and
            # require a certificate (VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT).
            extra["trustRoot"] = loadTrustRoot(caPath)
        else:
            # The older spelling is the only way to ask for a certificate
            # without requiring one (VERIFY_PEER alone).
            extra.update(verify=True, requireCertificate=False, caCerts=_loadAuthorities(caPath))
    if tls13Only:
        extra["raiseMinimumTo"] = TLSVersion.TLSv1_3
    return CertificateOptions(
        acceptableProtocols=acceptableProtocols,
        **_identityOptions(privateCertificate),
        **extra,
    )


def clientOptions(
    hostname: str,
    caPath: PathLike,
    certPath: PathLike | None = None,
    keyPath: PathLike | None = None,
    tls13Only: bool = False,
    acceptableProtocols: Sequence[bytes] | None = None,
) -> IOpenSSLClientConnectionCreator:
    """
    Settings for a TLS client that trusts only the array CA and checks that
    the server's certificate names C{hostname}.

    @param hostname: the expected server identity: an SP id (C{"spa"}), the
        proxy's name, or an IP address (matched against IP SANs).
    @param certPath: the client certificate for mutual TLS, with C{keyPath}.
    @param tls13Only: refuse servers older than TLS 1.3.
    @param acceptableProtocols: ALPN protocols to offer.

    @raise TLSConfigurationError: a file cannot be used, or C{hostname}
        cannot be a host name (e.g. it has an underscore).
    @raise ValueError: only one of C{certPath} and C{keyPath}.
    """
    if (certPath is None) != (keyPath is None):
        raise ValueError("give both certPath and keyPath, or neither")
    extra: dict[str, Any] = {}
    if certPath is not None:
        # What clientCertificate= would do, minus the deprecation warning:
        # see _identityOptions.
        identity = loadPrivateCertificate(certPath, keyPath)  # type: ignore[arg-type]
        extra.update(_identityOptions(identity))
    if tls13Only:
        extra["raiseMinimumTo"] = TLSVersion.TLSv1_3
    trustRoot = loadTrustRoot(caPath)
    try:
        return optionsForClientTLS(
            hostname,
            trustRoot=trustRoot,
            acceptableProtocols=acceptableProtocols,
            extraCertificateOptions=extra,
        )
    except UnicodeError as e:
        # idna's errors are UnicodeErrors: a name with "_" lands here.
        raise TLSConfigurationError(f"{hostname!r} is not a valid host name: {e}") from None


def peerIdentity(transport: object) -> str | None:
    """
    The identity of the verified peer on a TLS C{transport}: the first DNS
    subject alternative name of its certificate, or its common name if it has
    none.

    Only a peer certificate that OpenSSL was told to verify counts: on a
    connection built without verification (not one from this module) a peer
    could present any certificate, so C{None} is returned.  A failed
    verification never gets this far, since it ends the handshake.

    @return: the name, or C{None}: not TLS, not verified, or no certificate.
    """
    # Duck typing: TLSMemoryBIOProtocol does not declare ISSLTransport.
    getPeerCertificate = getattr(transport, "getPeerCertificate", None)
    getHandle = getattr(transport, "getHandle", None)
    if getPeerCertificate is None or getHandle is None:
        return None
    connection = getHandle()
    if not isinstance(connection, SSL.Connection):
        return None
    if not connection.get_verify_mode() & SSL.VERIFY_PEER:
        return None
    peer = getPeerCertificate()
    if peer is None:
        return None
    return certificateIdentity(peer.to_cryptography())


def certificateIdentity(certificate: x509.Certificate) -> str | None:
    """
    The identity a certificate claims: its first DNS subject alternative
    name (L{spmgmt.pki} puts the SP id or C{"proxy"} there), or else its
    common name.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        names = san.value.get_values_for_type(x509.DNSName)
        if names:
            return names[0]
    commonNames = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if commonNames:
        value = commonNames[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def tlsServerFactory(
    factory: IProtocolFactory,
    contextFactory: Any,
    reactor: IReactorTime | None = None,
) -> TLSMemoryBIOFactory:
    """
    Wrap C{factory} so that connections to it speak TLS with
    C{contextFactory}, for C{strports.service("tcp:PORT:interface=HOST",
    ...)}: listening on plain TCP and wrapping here keeps the listen error
    (port in use) fatal and the TLS settings ours rather than an endpoint
    string's.

    @param reactor: the clock TLS uses to batch small writes; the global
        reactor (looked up now, not at import) if not given.
    """
    return TLSMemoryBIOFactory(contextFactory, False, factory, clock=reactor)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    Server TLS settings that L{reload} replaces (SIGHUP): new connections
    get the new certificate, established ones keep theirs.

    @param load: makes the settings (L{serverOptions} with this listener's
        files); called now, and again by each L{reload}.
    @param what: names the listener in the log.
    """

    def __init__(self, load: Callable[[], CertificateOptions], what: str) -> None:
        self._load = load
        self.what = what
        self.options = load()

    def reload(self) -> bool:
        """Load the files again; keep the old settings (and say why) if they fail."""
        try:
            self.options = self._load()
        except TLSConfigurationError as e:
            _log.error(
                "{what}: TLS reload failed, keeping the old certificate: {why}", what=self.what, why=str(e)
            )
            return False
        except Exception:
            _log.failure("{what}: TLS reload failed, keeping the old certificate", what=self.what)
            return False
        _log.info("{what}: reloaded its TLS certificate", what=self.what)
        return True

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)


@implementer(IOpenSSLClientConnectionCreator)
class ReloadableClientTLS:
    """
    Client TLS settings (the trusted CA, the expected name, our own
    certificate) that L{reload} replaces: the next connection presents the
    new certificate.
    """

    def __init__(self, load: Callable[[], IOpenSSLClientConnectionCreator], what: str) -> None:
        self._load = load
        self.what = what
        self.options = load()

    reload = ReloadableServerTLS.reload

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self.options.clientConnectionForTLS(tlsProtocol)


class ReloadOnHangup(Service):
    """
    SIGHUP reloads every TLS identity of this process (in the reactor
    thread): listeners and the client sides of its links alike.
    """

    def __init__(self, reactor: Any, reloadables: Sequence[Any]) -> None:
        self._reactor = reactor
        self.reloadables = list(reloadables)
        self._previous: Any = None

    def reloadAll(self) -> None:
        for reloadable in self.reloadables:
            reloadable.reload()

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(
            signal.SIGHUP, lambda signum, frame: self._reactor.callFromThread(self.reloadAll)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
