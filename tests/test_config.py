"""
Tests for L{spmgmt.config}: every kind of bad configuration is one line that
names the file, the key and the problem.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from spmgmt.config import ConfigError, loadForSP, parseConfig
from spmgmt.passwords import hashPassword
from spmgmt.pki import ensurePKI

_HASH = hashPassword("secret")

BASE = f"""
[array]
name = "t"
ca = "pki/ca.pem"

[[sp]]
id = "spa"
web = "127.0.0.1:9701"
pb = "127.0.0.1:9711"
cert = "pki/spa.pem"
key = "pki/spa.key"

[[sp]]
id = "spb"
web = "127.0.0.1:9702"
pb = "127.0.0.1:9712"
cert = "pki/spb.pem"
key = "pki/spb.key"

[[users]]
name = "admin"
role = "admin"
password_hash = "{_HASH}"

[status]
argv = ["uname", "-a"]

[peer]
secret_file = "pki/peer.secret"

[[checks]]
name = "maintenance"
kind = "maintenance_file"
path = "var/{{id}}.maintenance"

[commands.echo]
argv = ["echo", "{{message}}"]
[commands.echo.params.message]
type = "string"
"""


@functools.cache
def _sharedPKI() -> Path:
    """A dev PKI made once per test process (key generation is the slow part)."""
    directory = Path(tempfile.mkdtemp(prefix="spmgmt-config-tests-"))
    atexit.register(shutil.rmtree, directory, True)
    ensurePKI(directory / "pki", ["spa", "spb"])
    (directory / "pki" / "peer.secret").write_text("a-peer-secret-of-some-length\n")
    return directory / "pki"


class ConfigTestsMixin:
    """Writes configurations next to a shared dev PKI."""

    @property
    def pkiDir(self) -> Path:
        return _sharedPKI()

    def write(self, text: str) -> Path:
        path = self.pkiDir.parent / f"c{id(text)}-{len(text)}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    def assertConfigError(self, text: str, key: str, words: str, spId: str = "spa") -> ConfigError:
        path = self.write(text)
        with self.assertRaises(ConfigError) as raised:  # type: ignore[attr-defined]
            loadForSP(path, spId)
        message = str(raised.exception)
        self.assertEqual(message.count("\n"), 0, message)  # type: ignore[attr-defined]
        self.assertTrue(message.startswith(f"{path}: {key}: "), message)  # type: ignore[attr-defined]
        self.assertIn(words, message)  # type: ignore[attr-defined]
        return raised.exception


class ParseConfigTests(ConfigTestsMixin, SynchronousTestCase):
    """Good and bad configurations."""

    def test_sampleConfigParses(self) -> None:
        """
        The sample C{etc/spmgmt.toml} parses once the secrets it names exist,
        with the ports the launcher and the docs rely on.
        """
        from spmgmt.testing import sampleConfig

        config = sampleConfig(self.pkiDir.parent)
        secrets = self.pkiDir.parent / "var" / "secrets"
        self.assertEqual([sp.id for sp in config.sps], ["spa", "spb"])
        self.assertEqual(
            [(sp.web.port, sp.pb.port) for sp in config.sps], [(8701, 8711), (8702, 8712)]
        )
        assert config.proxy is not None
        self.assertEqual(
            (config.proxy.tls.port, config.proxy.plain and config.proxy.plain.port), (8443, 8080)
        )
        self.assertEqual([(a.id, a.address.port) for a in config.arbiters], [("a1", 8700)])
        self.assertEqual(
            (config.proxy.failover_wait, config.proxy.read_timeout, config.proxy.max_connections),
            (10.0, 10.0, 16384),
        )
        self.assertEqual(config.users[0].password_hash, (secrets / "admin.hash").read_text().strip())
        self.assertIn("maintenance", [c.name for c in config.checks])
        self.assertEqual(config.peer.secret_file, secrets / "peer.secret")
        self.assertEqual((config.peer.timeout, config.peer.keepalive), (2.0, 0.5))

    def test_good(self) -> None:
        """A good configuration loads; relative paths resolve against its root."""
        config, sp = loadForSP(self.write(BASE), "spb")
        self.assertEqual(sp.web.port, 9702)
        self.assertEqual(sp.cert, self.pkiDir / "spb.pem")
        self.assertEqual(config.commands["echo"].params[0].name, "message")
        self.assertEqual(config.checks[0].path, str(self.pkiDir.parent / "var/{id}.maintenance"))
        self.assertEqual(config.limits.max_body, 1024 * 1024)

    def test_eventsHistory(self) -> None:
        """[events] history: positive, at most 10000 (the arbiter compacts it on its reactor)."""
        config, _ = loadForSP(self.write(BASE + "\n[events]\nhistory = 50\n"), "spa")
        self.assertEqual(config.events.history, 50)
        self.assertConfigError(BASE + "\n[events]\nhistory = 10001\n", "events.history", "at most 10000")
        self.assertConfigError(BASE + "\n[events]\nhistory = 0\n", "events.history", "greater than 0")

    def test_arbiters(self) -> None:
        """
        [[arbiter]] entries: their ids are unique and name no SP or proxy,
        the file coordinator takes one, a proxy needs one, and the old
        C{[proxy] arbiter} key says where the address went.
        """
        arbiter = '\n[[arbiter]]\nid = "{id}"\naddress = "127.0.0.1:{port}"\ncert = "pki/spa.pem"\nkey = "pki/spa.key"\n'
        proxy = '\n[proxy]\ntls = "127.0.0.1:9443"\ncert = "pki/spa.pem"\nkey = "pki/spa.key"\n'
        config, _ = loadForSP(self.write(BASE + arbiter.format(id="a1", port=9700)), "spa")
        self.assertEqual([(a.id, str(a.address)) for a in config.arbiters], [("a1", "127.0.0.1:9700")])
        self.assertConfigError(BASE + arbiter.format(id="spb", port=9700), "arbiter[0].id", "already an SP")
        self.assertConfigError(BASE + arbiter.format(id="proxy", port=9700), "arbiter[0].id", "already an SP")
        two = BASE + arbiter.format(id="a1", port=9700) + arbiter.format(id="a2", port=9699)
        self.assertConfigError(two, "arbiter", "only one [[arbiter]]")
        self.assertConfigError(BASE + arbiter.format(id="a1", port=9702), "arbiter[0].address", "already used")
        self.assertConfigError(BASE + proxy, "arbiter", "the proxy follows an arbiter")
        moved = BASE + arbiter.format(id="a1", port=9700) + proxy + 'arbiter = "127.0.0.1:9700"\n'
        self.assertConfigError(moved, "proxy.arbiter", "moved: the arbiter is a process of its own")

    def test_proxyUpstreamTimeoutCoversCommands(self) -> None:
        """The proxy's deadline on SP calls must outlast the slowest command."""
        proxy = (
            '\n[[arbiter]]\nid = "a1"\naddress = "127.0.0.1:9700"\ncert = "pki/spa.pem"\nkey = "pki/spa.key"\n'
            '\n[proxy]\ntls = "127.0.0.1:9443"\n'
            'cert = "pki/spa.pem"\nkey = "pki/spa.key"\nupstream_timeout = 5.0\n'
        )
        self.assertConfigError(BASE + proxy, "proxy.upstream_timeout", "slowest command (status: 12 s")
        config, _ = loadForSP(self.write(BASE + proxy.replace("5.0", "12.5")), "spa")
        assert config.proxy is not None
        self.assertEqual((config.proxy.upstream_timeout, config.proxy.failover_wait), (12.5, 10.0))

    def test_syntax(self) -> None:
        """A TOML syntax error names the line."""
        self.assertConfigError(BASE + "\n[array\n", "(syntax)", "line")

    def test_missingFile(self) -> None:
        """A missing file is one line."""
        with self.assertRaises(ConfigError) as raised:
            parseConfig(self.pkiDir / "nope.toml")
        self.assertIn("cannot read", str(raised.exception))

    def test_missingKey(self) -> None:
        """A missing required key is named with its table."""
        self.assertConfigError(BASE.replace('web = "127.0.0.1:9702"\n', ""), "sp[1].web", "missing")

    def test_unknownKey(self) -> None:
        """An unknown key (a typo, usually) is refused, not ignored."""
        self.assertConfigError(BASE.replace('name = "t"', 'name = "t"\nnmae = "x"'), "array.nmae", "unknown key")

    def test_wrongType(self) -> None:
        """A value of the wrong type says what was expected."""
        self.assertConfigError(
            BASE.replace('argv = ["echo"', 'timeout = "5"\nargv = ["echo"'),
            "commands.echo.timeout",
            "must be a number, not a string",
        )

    def test_boolIsNotANumber(self) -> None:
        """C{true} is not accepted where a number is expected."""
        self.assertConfigError(
            BASE.replace('path = "var/', 'fall = true\npath = "var/'), "checks[0].fall", "not bool"
        )

    def test_duplicateSP(self) -> None:
        """Two SPs with one id are refused."""
        self.assertConfigError(BASE.replace('id = "spb"', 'id = "spa"'), "sp[1].id", "duplicate SP id")

    def test_portClash(self) -> None:
        """Two listeners on one address are refused, naming both keys."""
        self.assertConfigError(
            BASE.replace('pb = "127.0.0.1:9712"', 'pb = "127.0.0.1:9701"'),
            "sp[1].pb",
            "already used by sp[0].web",
        )

    def test_badAddress(self) -> None:
        """An address without a valid port is refused."""
        self.assertConfigError(BASE.replace("127.0.0.1:9701", "127.0.0.1:99999"), "sp[0].web", "host:port")

    def test_unreadableCertificate(self) -> None:
        """A certificate that cannot be read names the file."""
        self.assertConfigError(BASE.replace("pki/spa.pem", "pki/missing.pem"), "sp[0].cert", "cannot read")

    def test_notACertificate(self) -> None:
        """A file that is not a PEM certificate is refused."""
        self.assertConfigError(BASE.replace("pki/spa.pem", "pki/spa.key"), "sp[0].cert", "not a PEM certificate")

    def test_mismatchedKey(self) -> None:
        """A key that does not belong to the certificate is refused."""
        self.assertConfigError(BASE.replace("pki/spa.key", "pki/spb.key"), "sp[0].key", "does not match")

    def test_badCA(self) -> None:
        """An unreadable CA names array.ca."""
        self.assertConfigError(BASE.replace("pki/ca.pem", "pki/none.pem"), "array.ca", "cannot read")

    def test_commandUndeclaredParameter(self) -> None:
        """A placeholder in argv needs a declared parameter."""
        self.assertConfigError(
            BASE.replace('["echo", "{message}"]', '["echo", "{msg}"]'),
            "commands.echo.argv[1]",
            "no parameter 'msg'",
        )

    def test_commandProgramIsParameter(self) -> None:
        """The program to run can never come from a parameter."""
        self.assertConfigError(
            BASE.replace('["echo", "{message}"]', '["{message}"]'), "commands.echo.argv", "program itself"
        )

    def test_commandBadPattern(self) -> None:
        """A parameter's pattern must compile."""
        self.assertConfigError(
            BASE.replace('type = "string"', 'type = "string"\npattern = "(["'),
            "commands.echo.params.message.pattern",
            "not a regular expression",
        )

    def test_badCheckKind(self) -> None:
        """An unknown check kind lists the known ones."""
        self.assertConfigError(
            BASE.replace('kind = "maintenance_file"', 'kind = "ping"'), "checks[0].kind", "maintenance_file"
        )

    def test_checkThresholds(self) -> None:
        """fall and rise must be at least one."""
        self.assertConfigError(
            BASE.replace('path = "var/', 'rise = 0\npath = "var/'), "checks[0].rise", "greater than 0"
        )

    def test_tokenNamedLikeUser(self) -> None:
        """A bearer token may not share a user's name (one role namespace)."""
        self.assertConfigError(
            BASE + '\n[[tokens]]\nname = "admin"\nrole = "monitor"\nsha256 = "' + "a" * 64 + '"\n',
            "tokens[0].name",
            "already a user or token name",
        )

    def test_badRole(self) -> None:
        """A user's role is monitor or admin."""
        self.assertConfigError(BASE.replace('role = "admin"', 'role = "root"'), "users[0].role", "monitor, admin")

    def test_plaintextPassword(self) -> None:
        """A password that is not a hash is refused."""
        self.assertConfigError(BASE.replace(_HASH, "hunter2"), "users[0].password_hash", "spmgmt.passwords")

    def test_shortPeerSecret(self) -> None:
        """A peer secret shorter than 16 bytes is refused."""
        self.assertConfigError(BASE.replace("pki/peer.secret", "pki/spa.pem.short"), "peer.secret_file", "cannot read")
        short = self.pkiDir / "short.secret"
        short.write_text("abc\n")
        self.assertConfigError(
            BASE.replace("pki/peer.secret", "pki/short.secret"), "peer.secret_file", "fewer than 16 bytes"
        )

    def test_unknownSP(self) -> None:
        """An --id that is not configured lists the known ids."""
        self.assertConfigError(BASE, "sp.id", "known: spa, spb", spId="spc")


class TwistdConfigErrorTests(ConfigTestsMixin, SynchronousTestCase):
    """
    C{twistd spmgmt sp} with a bad configuration exits non-zero with one line
    and no traceback.
    """

    def test_oneLineAndExitStatus(self) -> None:
        """A real twistd run on a bad file prints exactly one line and exits 1."""
        path = self.write(BASE.replace('id = "spb"', 'id = "spa"'))
        twistd = str(Path(sys.executable).parent / "twistd")
        run = subprocess.run(
            [twistd, "--nodaemon", "--pidfile=", "spmgmt", "sp", "--config", str(path), "--id", "spa"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ},
        )
        output = (run.stdout + run.stderr).strip()
        self.assertNotEqual(run.returncode, 0)
        self.assertEqual(output, f"spmgmt: {path}: sp[1].id: duplicate SP id 'spa'")
        self.assertNotIn("Traceback", output)
