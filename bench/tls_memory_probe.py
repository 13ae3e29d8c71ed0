#!/usr/bin/env python
"""
What one server-side TLS connection costs in memory, per TLS stack, in
one process and without sockets (so nothing but TLS state is counted).

For each stack it keeps C{--connections} server-side connections, each
after a TLS handshake over memory BIOs with a client and one small
request/answer exchange (as an idle keep-alive connection of the proxy
has had), frees the clients, and reports glibc's heap growth
(C{mallinfo2}: bytes in use plus blocks mapped on their own) per
connection:

  - C{pyOpenSSL + Twisted context}: the proxy's own settings
    (C{spmgmt.tls.serverOptions}, Twisted's C{CertificateOptions}: release
    buffers, no tickets), on the OpenSSL that C{cryptography} bundles
    (what Twisted's TLS in the proxy and the SPs runs on);
  - the same at most TLS 1.2;
  - C{ssl (stdlib)}: Python's own C{ssl} module with C{MemoryBIO}, on the
    system OpenSSL (the one HAProxy links too).

Run from the repository root::

    .venv/bin/python bench/tls_memory_probe.py [--connections N]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

# From bench/ (on sys.path when run as a script); it puts the repository root there too.
import _common  # puts the repository root on sys.path

from OpenSSL import SSL

from spmgmt.pki import ensurePKI
from spmgmt.tls import serverOptions

assert _common.REPO.is_dir()

REQUEST = b"GET /api/v1/sps HTTP/1.1\r\nHost: proxy\r\nAuthorization: Basic bW9uaXRvcjp4eHh4eHh4eHh4eHh4eA==\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 270\r\n\r\n" + b"x" * 270


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heapInUse() -> int:
    gc.collect()
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def pyOpenSSLPair(serverContext: Any, clientContext: Any) -> tuple[Any, Any]:
    server = SSL.Connection(serverContext, None)
    server.set_accept_state()
    client = SSL.Connection(clientContext, None)
    client.set_connect_state()

    def pump() -> None:
        moved = True
        while moved:
            moved = False
            for a, b in ((server, client), (client, server)):
                try:
                    data = a.bio_read(65536)
                except SSL.WantReadError:
                    continue
                if data:
                    b.bio_write(data)
                    moved = True

    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
        pump()
    client.send(REQUEST)
    pump()
    server.recv(65536)
    server.send(ANSWER)
    pump()
    client.recv(65536)
    return server, client


def stdlibPair(serverContext: ssl.SSLContext, clientContext: ssl.SSLContext) -> tuple[Any, Any]:
    sIn, sOut, cIn, cOut = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = serverContext.wrap_bio(sIn, sOut, server_side=True)
    client = clientContext.wrap_bio(cIn, cOut, server_hostname="proxy")

    def pump() -> None:
        for source, sink in ((cOut, sIn), (sOut, cIn)):
            data = source.read()
            if data:
                sink.write(data)

    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        pump()
    client.write(REQUEST)
    pump()
    server.read(65536)
    server.write(ANSWER)
    pump()
    client.read(65536)
    return (server, sIn, sOut), (client, cIn, cOut)


def measure(n: int, pair: Callable[[], tuple[Any, Any]]) -> tuple[float, str]:
    servers, clients = [], []
    base = heapInUse()
    for _ in range(n):
        server, client = pair()
        servers.append(server)
        clients.append(client)
    del clients
    per = (heapInUse() - base) / n
    first = servers[0][0] if isinstance(servers[0], tuple) else servers[0]
    version = first.version() if hasattr(first, "version") else first.get_protocol_version_name()
    return per, version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip() if __doc__ else None)
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    pki = Path(tempfile.mkdtemp(prefix="spmgmt-tls-probe-"))
    ensurePKI(pki, ["proxy"])
    cert, key = pki / "proxy.pem", pki / "proxy.key"

    def twistedContext() -> Any:
        return serverOptions(cert, key, acceptableProtocols=[b"http/1.1"]).getContext()

    client = SSL.Context(SSL.TLS_METHOD)
    client.set_verify(SSL.VERIFY_NONE, lambda *a: True)
    tls12 = twistedContext()
    tls12.set_max_proto_version(SSL.TLS1_2_VERSION)
    stdServer = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    stdServer.load_cert_chain(str(cert), str(key))
    stdServer.options |= ssl.OP_NO_TICKET
    stdClient = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stdClient.check_hostname = False
    stdClient.verify_mode = ssl.CERT_NONE
    twisted = twistedContext()
    bundled = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    rows = [
        (f"pyOpenSSL + Twisted context (the proxy's), {bundled}", lambda: pyOpenSSLPair(twisted, client)),
        (f"pyOpenSSL + Twisted context at most TLS 1.2, {bundled}", lambda: pyOpenSSLPair(tls12, client)),
        (f"Python `ssl` + `MemoryBIO`, {ssl.OPENSSL_VERSION}", lambda: stdlibPair(stdServer, stdClient)),
    ]
    print(f"Server-side TLS connection after a handshake and one request/answer ({args.connections} kept):\n")
    print("| TLS stack | protocol | heap bytes per connection |")
    print("| --- | --- | ---: |")
    for name, pair in rows:
        per, version = measure(args.connections, pair)
        print(f"| {name} | {version} | {per:,.0f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
