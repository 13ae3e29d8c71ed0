# -*- test-case-name: tests.test_pki -*-
"""
Tests for L{spmgmt.pki}.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store
from twisted.trial.unittest import SynchronousTestCase

from spmgmt.pki import (
    PKIError,
    certificatePEM,
    createCA,
    ensurePKI,
    issueCertificate,
    keyPEM,
    main,
)
from spmgmt.testing import temporaryDirectory


def _loadCertificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class EnsurePKITests(SynchronousTestCase):
    """
    Tests for L{ensurePKI}.
    """

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self) / "pki"

    def test_createsFiles(self) -> None:
        """
        L{ensurePKI} creates the directory, the CA pair and one pair per
        name, and returns the files it created, and no others are left.
        """
        created = ensurePKI(self.directory, ["spa", "spb", "proxy"])
        expected = [
            self.directory / name
            for name in [
                "ca.pem",
                "ca.key",
                "spa.pem",
                "spa.key",
                "spb.pem",
                "spb.key",
                "proxy.pem",
                "proxy.key",
            ]
        ]
        self.assertEqual(created, expected)
        self.assertEqual(sorted(self.directory.iterdir()), sorted(expected))

    def test_modes(self) -> None:
        """
        The directory is private (0700), keys are readable by their owner
        only (0600), certificates are public (0644).
        """
        ensurePKI(self.directory, ["spa"])
        self.assertEqual(_mode(self.directory), 0o700)
        self.assertEqual(_mode(self.directory / "ca.key"), 0o600)
        self.assertEqual(_mode(self.directory / "spa.key"), 0o600)
        self.assertEqual(_mode(self.directory / "ca.pem"), 0o644)
        self.assertEqual(_mode(self.directory / "spa.pem"), 0o644)

    def test_idempotent(self) -> None:
        """
        Running L{ensurePKI} again creates nothing and keeps every file as it
        was, above all the CA.
        """
        ensurePKI(self.directory, ["spa", "spb"])
        before = {p.name: p.read_bytes() for p in self.directory.iterdir()}
        self.assertEqual(ensurePKI(self.directory, ["spa", "spb"]), [])
        after = {p.name: p.read_bytes() for p in self.directory.iterdir()}
        self.assertEqual(before, after)

    def test_addsMissingNames(self) -> None:
        """
        A new name gets a new pair signed by the existing CA; existing files
        are kept.
        """
        ensurePKI(self.directory, ["spa"])
        caBytes = (self.directory / "ca.pem").read_bytes()
        spaBytes = (self.directory / "spa.pem").read_bytes()
        created = ensurePKI(self.directory, ["spa", "spb"])
        self.assertEqual(created, [self.directory / "spb.pem", self.directory / "spb.key"])
        self.assertEqual((self.directory / "ca.pem").read_bytes(), caBytes)
        self.assertEqual((self.directory / "spa.pem").read_bytes(), spaBytes)
        ca = _loadCertificate(self.directory / "ca.pem")
        _loadCertificate(self.directory / "spb.pem").verify_directly_issued_by(ca)

    def test_caExtensions(self) -> None:
        """
        The CA is self-signed, a CA that may sign leaves only (path length
        0), and may sign certificates and CRLs, nothing else.
        """
        ensurePKI(self.directory, ["spa"])
        ca = _loadCertificate(self.directory / "ca.pem")
        ca.verify_directly_issued_by(ca)
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertEqual((constraints.value.ca, constraints.value.path_length), (True, 0))
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.key_cert_sign)
        self.assertTrue(usage.crl_sign)
        self.assertFalse(usage.digital_signature)
        self.assertIsInstance(ca.public_key(), ec.EllipticCurvePublicKey)
        self.assertEqual(ca.public_key().curve.name, "secp256r1")

    def test_leafExtensions(self) -> None:
        """
        A leaf is named after its name (CN and first DNS SAN), also holds the
        hosts as IP SANs, serves as TLS server and client, and is not a CA.
        """
        ensurePKI(self.directory, ["spa"])
        leaf = _loadCertificate(self.directory / "spa.pem")
        self.assertEqual(
            leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "spa"
        )
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["spa"])
        self.assertEqual(
            sans.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("127.0.0.1")]
        )
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(
            list(usages), [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        self.assertFalse(leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)

    def test_hosts(self) -> None:
        """
        IP literals among the hosts (v4 and v6) become IP SANs, other hosts
        DNS SANs, after the name.
        """
        ensurePKI(self.directory, ["spa"], hosts=["10.0.0.1", "::1", "spa.example"])
        leaf = _loadCertificate(self.directory / "spa.pem")
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["spa", "spa.example"])
        self.assertEqual(
            sans.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")],
        )

    def test_leafVerifiesAgainstCA(self) -> None:
        """
        A leaf passes cryptography's RFC 5280 path validation against the CA
        both as a server certificate, for its name and its IP, and as a
        client certificate.
        """
        ensurePKI(self.directory, ["spa"])
        ca = _loadCertificate(self.directory / "ca.pem")
        leaf = _loadCertificate(self.directory / "spa.pem")
        builder = PolicyBuilder().store(Store([ca]))
        for name in [DNSName("spa"), IPAddress(ipaddress.ip_address("127.0.0.1"))]:
            chain = builder.build_server_verifier(name).verify(leaf, [])
            self.assertEqual(chain[-1], ca)
        verified = builder.build_client_verifier().verify(leaf, [])
        self.assertEqual(verified.chain[-1], ca)

    def test_days(self) -> None:
        """
        A leaf is valid for C{days} from about now.
        """
        ensurePKI(self.directory, ["spa"], days=30)
        leaf = _loadCertificate(self.directory / "spa.pem")
        lifetime = leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
        self.assertTrue(
            datetime.timedelta(days=29) < lifetime <= datetime.timedelta(days=30), lifetime
        )

    def test_keysAreUnencryptedPKCS8(self) -> None:
        """
        Keys are unencrypted PKCS#8 PEM and belong to their certificates.
        """
        ensurePKI(self.directory, ["spa"])
        for name in ["ca", "spa"]:
            data = (self.directory / f"{name}.key").read_bytes()
            self.assertTrue(data.startswith(b"-----BEGIN PRIVATE KEY-----\n"))
            key = load_pem_private_key(data, password=None)
            certificate = _loadCertificate(self.directory / f"{name}.pem")
            self.assertEqual(key.public_key(), certificate.public_key())

    def test_invalidNames(self) -> None:
        """
        Names that are not one DNS label, or that would overwrite the CA, are
        refused before anything is written.
        """
        for name in ["ca", "CA", "sp_a", "../spa", "", "-spa", "a" * 64]:
            error = self.assertRaises(PKIError, ensurePKI, self.directory, ["spa", name])
            self.assertIn(repr(name), str(error))
        self.assertFalse(self.directory.exists())

    def test_halfPair(self) -> None:
        """
        A certificate without its key (or the reverse) is reported, not
        silently replaced.
        """
        ensurePKI(self.directory, ["spa"])
        (self.directory / "spa.key").unlink()
        error = self.assertRaises(PKIError, ensurePKI, self.directory, ["spa"])
        self.assertEqual(
            str(error),
            f"{self.directory / 'spa.pem'} exists but {self.directory / 'spa.key'} "
            f"does not; remove {self.directory / 'spa.pem'} to remake both",
        )

    def test_leafFromOtherCA(self) -> None:
        """
        A leaf left over from a previous CA is reported, since it would fail
        every handshake.
        """
        ensurePKI(self.directory, ["spa"])
        (self.directory / "ca.pem").unlink()
        (self.directory / "ca.key").unlink()
        error = self.assertRaises(PKIError, ensurePKI, self.directory, ["spa"])
        self.assertIn("spa.pem was not issued by", str(error))

    def test_expiredLeaf(self) -> None:
        """
        An expired leaf is reported, not kept silently.
        """
        caCert, caKey = createCA()
        self.directory.mkdir(parents=True)
        (self.directory / "ca.pem").write_bytes(certificatePEM(caCert))
        (self.directory / "ca.key").write_bytes(keyPEM(caKey))
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate, key = issueCertificate(
            caCert,
            caKey,
            "spa",
            notBefore=now - datetime.timedelta(days=10),
            notAfter=now - datetime.timedelta(days=1),
        )
        (self.directory / "spa.pem").write_bytes(certificatePEM(certificate))
        (self.directory / "spa.key").write_bytes(keyPEM(key))
        error = self.assertRaises(PKIError, ensurePKI, self.directory, ["spa"])
        self.assertIn("spa.pem expired on ", str(error))

    def test_mismatchedKey(self) -> None:
        """
        A key that does not belong to its certificate is reported.
        """
        ensurePKI(self.directory, ["spa", "spb"])
        os.replace(self.directory / "spb.key", self.directory / "spa.key")
        (self.directory / "spb.key").write_bytes((self.directory / "spa.key").read_bytes())
        error = self.assertRaises(PKIError, ensurePKI, self.directory, ["spa"])
        self.assertIn("spa.key does not match the certificate", str(error))

    def test_unwritable(self) -> None:
        """
        A directory that cannot be created is reported in one line, as
        L{PKIError}.
        """
        regularFile = temporaryDirectory(self) / "file"
        regularFile.write_bytes(b"")
        error = self.assertRaises(PKIError, ensurePKI, regularFile / "pki", ["spa"])
        self.assertEqual(str(error), f"cannot write {regularFile / 'pki'}: Not a directory")


class IssueCertificateTests(SynchronousTestCase):
    """
    Tests for L{issueCertificate} and L{createCA}, used by tests to mint
    special certificates.
    """

    def setUp(self) -> None:
        self.caCert, self.caKey = createCA()

    def test_validityOverride(self) -> None:
        """
        C{notBefore} and C{notAfter} set the validity as given: an expired
        certificate.
        """
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
        certificate, _ = issueCertificate(
            self.caCert, self.caKey, "spa", ["127.0.0.1"], 825, notBefore=start, notAfter=end
        )
        self.assertEqual(
            (certificate.not_valid_before_utc, certificate.not_valid_after_utc), (start, end)
        )

    def test_clampedToCA(self) -> None:
        """
        A leaf never outlives its CA.
        """
        caCert, caKey = createCA(days=10)
        certificate, _ = issueCertificate(caCert, caKey, "spa", [], 825)
        self.assertEqual(certificate.not_valid_after_utc, caCert.not_valid_after_utc)

    def test_otherCA(self) -> None:
        """
        A certificate from another CA does not verify against this one.
        """
        otherCert, otherKey = createCA("another CA")
        certificate, _ = issueCertificate(otherCert, otherKey, "spa", [], 30)
        certificate.verify_directly_issued_by(otherCert)
        self.assertRaises(
            (ValueError, InvalidSignature), certificate.verify_directly_issued_by, self.caCert
        )

    def test_duplicateHosts(self) -> None:
        """
        A host equal to the name, or repeated, appears once among the SANs.
        """
        certificate, _ = issueCertificate(
            self.caCert, self.caKey, "spa", ["spa", "127.0.0.1", "127.0.0.1"], 30
        )
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(len(list(sans.value)), 2)


class MainTests(SynchronousTestCase):
    """
    Tests for L{main}, C{python -m spmgmt.pki}.
    """

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_createsAndReports(self) -> None:
        """
        L{main} makes the PKI in C{--out}, prints each created file and
        exits 0.
        """
        directory = temporaryDirectory(self) / "pki"
        self.assertEqual(main(["--out", str(directory), "spa", "proxy"]), 0)
        self.assertEqual(
            self.stdout.getvalue().splitlines(),
            [
                f"created {directory / name}"
                for name in ["ca.pem", "ca.key", "spa.pem", "spa.key", "proxy.pem", "proxy.key"]
            ],
        )
        self.assertEqual(self.stderr.getvalue(), "")

    def test_hostsAndDays(self) -> None:
        """
        C{--host} replaces the default extra SANs and C{--days} sets the
        lifetime.
        """
        directory = temporaryDirectory(self) / "pki"
        main(["--out", str(directory), "--host", "192.0.2.1", "--days", "10", "spa"])
        leaf = _loadCertificate(directory / "spa.pem")
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            sans.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("192.0.2.1")]
        )
        self.assertLess(
            leaf.not_valid_after_utc - leaf.not_valid_before_utc, datetime.timedelta(days=11)
        )

    def test_nothingToDo(self) -> None:
        """
        When every file exists, L{main} says so and exits 0.
        """
        directory = temporaryDirectory(self) / "pki"
        main(["--out", str(directory), "spa"])
        self.stdout.truncate(0)
        self.stdout.seek(0)
        self.assertEqual(main(["--out", str(directory), "spa"]), 0)
        self.assertEqual(self.stdout.getvalue(), f"{directory}: nothing to do, every file exists\n")

    def test_unwritableDirectory(self) -> None:
        """
        A directory under a regular file gives one line on stderr and exit
        status 1.
        """
        regularFile = temporaryDirectory(self) / "file"
        regularFile.write_bytes(b"")
        self.assertEqual(main(["--out", str(regularFile / "pki"), "spa"]), 1)
        self.assertEqual(
            self.stderr.getvalue(),
            f"python -m spmgmt.pki: error: cannot write {regularFile / 'pki'}: Not a directory\n",
        )
        self.assertEqual(self.stdout.getvalue(), "")

    def test_moduleEntryPoint(self) -> None:
        """
        C{python -m spmgmt.pki} reports an error in exactly one line, without
        a traceback, and exits 1.
        """
        regularFile = temporaryDirectory(self) / "file"
        regularFile.write_bytes(b"")
        result = subprocess.run(
            [sys.executable, "-m", "spmgmt.pki", "--out", str(regularFile / "pki"), "spa"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn("Not a directory", result.stderr)
