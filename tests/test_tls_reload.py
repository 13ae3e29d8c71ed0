"""
Every TLS identity of every process reloads on SIGHUP (L{spmgmt.tls}
C{ReloadableServerTLS}, C{ReloadableClientTLS}, C{ReloadOnHangup}): an
array runs on certificates that expire within a minute, they are renewed
(new keys, same CA) and every process gets SIGHUP; once the old ones have
expired, the links that must be made again (SP to arbiter, proxy to
arbiter, proxy to SP, SP to SP) are made, with no process restarted.
"""

from __future__ import annotations

import datetime
import shutil
import signal
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from spmgmt.pki import _load, certificatePEM, issueCertificate, keyPEM
from spmgmt.testing import ArrayHarness

#: Seconds the first certificates live.
LIFE = 30.0

LEAVES = ("spa", "spb", "arbiter", "proxy")


def _issue(pki: Path, notAfter: datetime.datetime | None) -> None:
    """New keys and certificates for every leaf (a renewal when C{notAfter} is None)."""
    caCert, caKey = _load(pki / "ca.pem", pki / "ca.key")
    for name in LEAVES:
        cert, key = issueCertificate(caCert, caKey, name, notAfter=notAfter)
        (pki / f"{name}.key").write_bytes(keyPEM(key))
        (pki / f"{name}.pem").write_bytes(certificatePEM(cert))


async def _sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class ReloadEverywhereTests(TestCase):
    timeout = 180

    async def test_renewedCertificatesAfterTheOldExpire(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="spmgmt-reload-"))
        self.addCleanup(shutil.rmtree, directory, True)
        # SP web ports drop idle connections after 2 s, so the proxy must
        # open new ones to them (with its renewed certificate) later on.
        array = ArrayHarness(reactor, directory, arbiter=True, extra="\n[limits]\nidle_timeout = 2.0\n")
        self.addCleanup(array.stopAll)
        pki = array.path("var/pki")
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=LIFE)
        _issue(pki, expires)
        await array.start()
        await array.waitHolder("proxy", "spa")

        _issue(pki, None)  # renewed: new keys, a year, same CA
        for name in array.names:
            array.signal(name, signal.SIGHUP)

        # Each listener and each link of each process: an SP's web and peer
        # ports and its links to the other SP and the arbiter; the
        # arbiter's port; the proxy's front end and its links to the
        # arbiter and both SPs.
        identities = {"spa": 4, "spb": 4, "arbiter": 1, "proxy": 4}

        async def reloaded() -> bool:
            return all(
                array.logTail(name, 400).count("reloaded its TLS certificate") == count
                for name, count in identities.items()
            )

        await array.waitFor(reloaded, 10.0, "every process to reload")
        self.assertEqual([n for n in array.names if "TLS reload failed" in array.logTail(n, 400)], [])
        left = (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        self.assertGreater(left, 0, "the array took longer to start than the certificates live")
        await _sleep(left + 1.0)
        logins = {name: array.logTail(name, 2000).count("logged in to arbiter") for name in ("spb", "proxy")}

        # Cut the links for real, without a restart: a stopped SP loses its
        # peer's and the arbiter's links, a stopped arbiter every SP's and
        # the proxy's; each is made again with the renewed certificates.
        for name, stopped in (("spb", 2.5), ("arbiter", 4.0)):
            array.signal(name, signal.SIGSTOP)
            await _sleep(stopped)
            array.signal(name, signal.SIGCONT)

        async def linked() -> bool:
            answer = await array.request("proxy", "GET", "/api/v1/array")
            if answer.code != 200 or answer.json()["state"] != "active":
                return False
            view = answer.json()
            return all(sp["arbiter_connected"] for sp in view["proxy"]["sps"].values())

        await array.waitFor(linked, 20.0, "every link to the arbiter again", "proxy")
        for name in ("spb", "proxy"):
            self.assertGreater(array.logTail(name, 2000).count("logged in to arbiter"), logins[name], name)
        # The links were cut, so the token may have moved: ask the holder for
        # the other SP's status (proxy -> holder -> peer link -> other).
        holder = (await array.request("proxy", "GET", "/api/v1/array")).json()["token"]["holder"]
        other = "spb" if holder == "spa" else "spa"
        status = await array.request("proxy", "GET", f"/api/v1/sps/{other}/status")
        self.assertEqual(status.code, 200, status.body)
        self.assertEqual((status.json()["collected_by"], status.json()["via"]), (other, holder))
