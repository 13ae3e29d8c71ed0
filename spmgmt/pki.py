# -*- test-case-name: tests.test_pki -*-
"""
The development PKI: one array CA and, for each SP and the proxy, a leaf
certificate signed by it.

Every process in the array authenticates every other one with mutual TLS, so
they all need certificates from one CA.  Production installs bring their own;
for development and tests, L{ensurePKI} makes a throw-away CA and leaves in a
directory, and C{python -m spmgmt.pki --out var/pki spa spb proxy} does the
same from the command line (C{make pki}).

Each leaf is used both as a TLS server certificate (HTTPS, PB listener) and
as a TLS client certificate (PB connections to peers), so it carries both the
serverAuth and clientAuth extended key usages.  Its identity is its name, as
a DNS subject alternative name: the TLS client checks the server's name
against the SP id it meant to reach, and the PB server binds the login name
to the client certificate's name.

Keys are EC P-256: small, fast to generate (tests mint many) and universally
supported by TLS 1.2 and 1.3 stacks.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "ca"
DEFAULT_HOSTS = ("127.0.0.1",)
DEFAULT_DAYS = 825
# The CA must outlive every leaf it signs, including leaves added long after
# it was made; leaves are clamped to the CA's lifetime in any case.
CA_DAYS = 3650
# Certificates are valid from a little in the past so that a peer whose clock
# is slightly behind does not reject a freshly made certificate.
_BACKDATE = datetime.timedelta(minutes=5)
# Names become file names and DNS names: keep them to one DNS label.  An
# underscore, although allowed in SP ids by some tools, is not valid in a host
# name and is refused by Twisted's IDNA encoding of the expected name.
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

PrivateKey = ec.EllipticCurvePrivateKey


class PKIError(Exception):
    """
    The PKI cannot be created or used.  C{str()} is the one line to show.
    """


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _newKey() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _generalName(host: str) -> x509.GeneralName:
    """
    A subject alternative name for C{host}: an IP address if it parses as
    one (TLS clients match IP literals only against IP SANs), else a DNS name.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def createCA(
    commonName: str = "spmgmt array CA", days: int = CA_DAYS
) -> tuple[x509.Certificate, PrivateKey]:
    """
    Make a self-signed CA that may sign leaves only (path length 0).

    @return: the CA certificate and its private key.
    """
    key = _newKey()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
    now = _now()
    publicKey = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(publicKey), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def issueCertificate(
    caCert: x509.Certificate,
    caKey: PrivateKey,
    name: str,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """
    Make a new key and a leaf certificate for it, signed by the CA, usable as
    both a TLS server and a TLS client certificate.

    @param name: the identity: the common name and the first DNS SAN.
    @param hosts: further SANs; IP literals become IP SANs, others DNS SANs.
    @param days: lifetime from now, cut to the CA's own lifetime.
    @param notBefore: overrides the start of validity (tests: expired
        certificates).
    @param notAfter: overrides the end of validity, without the cut.

    @return: the certificate and its private key.
    """
    key = _newKey()
    now = _now()
    if notBefore is None:
        notBefore = now - _BACKDATE
    if notAfter is None:
        notAfter = min(now + datetime.timedelta(days=days), caCert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        general = _generalName(host)
        if general not in sans:
            sans.append(general)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(caCert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caCert.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    return certificate, key


def certificatePEM(certificate: x509.Certificate) -> bytes:
    """C{certificate} as PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def keyPEM(key: PrivateKey) -> bytes:
    """C{key} as unencrypted PKCS#8 PEM, the form every TLS stack reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _writeAtomically(path: Path, data: bytes, mode: int) -> None:
    """
    Write C{data} to C{path} through a temporary file in the same directory
    renamed into place, so a crash never leaves a half-written key or
    certificate that a later run would keep.  The temporary file is created
    0600, so a key is never readable by others, not even briefly.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _describe(e: OSError) -> str:
    return e.strerror or str(e)


def _load(path: Path, keyPath: Path) -> tuple[x509.Certificate, PrivateKey]:
    """
    Load an existing certificate and its key, checking that they belong
    together.

    @raise PKIError: unreadable, not PEM, or not a pair.
    """
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as e:
        raise PKIError(f"cannot read {path}: {_describe(e)}") from None
    except ValueError:
        raise PKIError(f"{path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(keyPath.read_bytes(), password=None)
    except OSError as e:
        raise PKIError(f"cannot read {keyPath}: {_describe(e)}") from None
    except (ValueError, TypeError):
        raise PKIError(f"{keyPath} is not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise PKIError(f"{keyPath} does not match the certificate {path}")
    return certificate, key  # type: ignore[return-value]


def _pairExists(certPath: Path, keyPath: Path) -> bool:
    """
    Whether the pair exists.

    @raise PKIError: only one of the two exists; guessing which one to trust
        would silently break TLS, so a person decides.
    """
    certExists, keyExists = certPath.exists(), keyPath.exists()
    if certExists != keyExists:
        present, missing = (certPath, keyPath) if certExists else (keyPath, certPath)
        raise PKIError(f"{present} exists but {missing} does not; remove {present} to remake both")
    return certExists


def _checkCurrent(certificate: x509.Certificate, certPath: Path, keyPath: Path) -> None:
    """
    @raise PKIError: C{certificate} has expired: keeping it would make every
        handshake fail with a less obvious error.
    """
    if certificate.not_valid_after_utc <= _now():
        raise PKIError(
            f"{certPath} expired on {certificate.not_valid_after_utc:%Y-%m-%d}; "
            f"remove {certPath} and {keyPath} to remake them"
        )


def ensurePKI(
    directory: Path,
    names: Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
) -> list[Path]:
    """
    Make sure C{directory} holds the array CA (C{ca.pem}, C{ca.key}) and, for
    each name, C{NAME.pem} and C{NAME.key} signed by it.  Existing files are
    kept, so running it again only adds what is missing.

    An existing leaf not signed by the CA in the directory (left over after
    the CA was remade), or an expired certificate, is reported rather than
    kept silently, since every TLS connection using it would fail.

    @param names: leaf names (SP ids, C{"proxy"}): single DNS labels.
    @param hosts: extra SANs for every new leaf.
    @param days: lifetime of new leaves.

    @return: the files created, in creation order.

    @raise PKIError: with a one-line explanation.
    """
    directory = Path(directory)
    for name in names:
        if not _NAME_RE.match(name):
            raise PKIError(
                f"{name!r} is not a valid name: use letters, digits and '-' "
                "(a DNS label, at most 63 characters)"
            )
        if name.lower() == CA_NAME:
            raise PKIError(f"{name!r} is reserved for the CA")
    if days <= 0:
        raise PKIError(f"days must be greater than 0, not {days}")

    created: list[Path] = []
    try:
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True)
            directory.chmod(0o700)

        caPath, caKeyPath = directory / "ca.pem", directory / "ca.key"
        if _pairExists(caPath, caKeyPath):
            caCert, caKey = _load(caPath, caKeyPath)
            _checkCurrent(caCert, caPath, caKeyPath)
        else:
            caCert, caKey = createCA(days=max(days, CA_DAYS))
            # The key first: a certificate without its key is never left.
            _writeAtomically(caKeyPath, keyPEM(caKey), 0o600)
            _writeAtomically(caPath, certificatePEM(caCert), 0o644)
            created += [caPath, caKeyPath]

        for name in dict.fromkeys(names):
            certPath, keyPath = directory / f"{name}.pem", directory / f"{name}.key"
            if _pairExists(certPath, keyPath):
                certificate, _ = _load(certPath, keyPath)
                try:
                    certificate.verify_directly_issued_by(caCert)
                except (ValueError, TypeError, InvalidSignature):
                    raise PKIError(
                        f"{certPath} was not issued by {caPath}; "
                        f"remove {certPath} and {keyPath} to remake them"
                    ) from None
                _checkCurrent(certificate, certPath, keyPath)
                continue
            certificate, key = issueCertificate(caCert, caKey, name, hosts, days)
            _writeAtomically(keyPath, keyPEM(key), 0o600)
            _writeAtomically(certPath, certificatePEM(certificate), 0o644)
            created += [certPath, keyPath]
    except OSError as e:
        where = e.filename if e.filename is not None else directory
        raise PKIError(f"cannot write {where}: {_describe(e)}") from None
    return created


def main(argv: Sequence[str] | None = None) -> int:
    """
    C{python -m spmgmt.pki}: make the development PKI.

    @return: the exit status: 0, or 1 after a one-line error on stderr.
    """
    parser = argparse.ArgumentParser(
        prog="python -m spmgmt.pki",
        description="Create the array CA and a certificate per name, keeping existing files.",
    )
    parser.add_argument("--out", type=Path, required=True, help="the PKI directory")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="HOST",
        help="extra SAN (IP or DNS) for every new certificate; repeatable "
        "(default: 127.0.0.1)",
    )
    parser.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help="lifetime of new certificates"
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="SP ids, proxy")
    options = parser.parse_args(argv)
    try:
        created = ensurePKI(
            options.out,
            options.names,
            options.hosts if options.hosts is not None else DEFAULT_HOSTS,
            options.days,
        )
    except PKIError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    for path in created:
        print(f"created {path}")
    if not created:
        print(f"{options.out}: nothing to do, every file exists")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
