"""Small pieces the standalone load scripts share: free ports, waiting for a listener, a slow upstream, a
self-signed certificate, and a relay that tells which TLS handshakes a client made (full or resumed).

The scripts in ``bench/`` run as ``python bench/<name>.py``, so this module is importable as ``benchlib``.
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import socketserver
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    """Until something accepts connections on 127.0.0.1:``port`` (TimeoutError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class _Threading(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def slow_upstream(delay: float) -> tuple[http.server.HTTPServer, int]:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 answering every GET with 200 "ok" after ``delay`` seconds,
    serving from a daemon thread; returns it (``shutdown()`` it when done) and its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(delay)
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = _Threading(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


# --------------------------------------------------------------------------------------------------------
# TLS: a self-signed certificate, and what a client's handshakes negotiated (read off the wire)
# --------------------------------------------------------------------------------------------------------

KEY_TYPES = ("ec-p256", "rsa-2048")


def self_signed(names: list[str], key_type: str = "ec-p256", days: int = 7) -> tuple[str, str]:
    """A self-signed certificate for the DNS ``names`` (SAN; the first is the CN) and its private key, both
    PEM; ``key_type``: ``ec-p256`` (ECDSA P-256) or ``rsa-2048``. For benchmarks on 127.0.0.1 only."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ec-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif key_type == "rsa-2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"key type {key_type!r}: one of {KEY_TYPES}")
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


#: OpenSSL configuration for a server that must only do full handshakes: no TLS 1.3 session tickets
#: (``NumTickets = 0``), so a client has nothing to resume. Applied to every SSL_CTX of a process started
#: with ``OPENSSL_CONF=<this file>`` (OpenSSL's ``system_default`` section; Debian's own has none).
NO_TICKETS_CONF = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
NumTickets = 0
"""

_TLS_VERSIONS = {0x0301: "TLSv1.0", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
_GROUPS = {0x001D: "x25519", 0x0017: "P-256", 0x0018: "P-384", 0x001E: "x448"}
_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
    0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305",
    0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
}
#: ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3)
_HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
_EXT_PRE_SHARED_KEY, _EXT_SUPPORTED_VERSIONS, _EXT_KEY_SHARE = 41, 43, 51


def _hello(data: bytes, msg_type: int) -> tuple[bytes, int, bytes, dict[int, bytes]] | None:
    """The first handshake message of a TLS stream if it is a ClientHello (1) / ServerHello (2) held whole
    in ``data``: (random, cipher suite (0 for a ClientHello), session id, extensions). None: not (yet)."""
    if len(data) < 9 or data[0] != 22 or data[5] != msg_type:
        return None
    end = 9 + int.from_bytes(data[6:9], "big")
    if len(data) < end:
        return None
    body = memoryview(data)[9:end]
    random = bytes(body[2:34])
    sid_len = body[34]
    session_id = bytes(body[35 : 35 + sid_len])
    i = 35 + sid_len
    suite = 0
    if msg_type == 1:
        i += 2 + int.from_bytes(body[i : i + 2], "big")  # cipher suites
        i += 1 + body[i]  # compression methods
    else:
        suite = int.from_bytes(body[i : i + 2], "big")
        i += 3
    extensions: dict[int, bytes] = {}
    if i + 2 <= len(body):
        stop = i + 2 + int.from_bytes(body[i : i + 2], "big")
        i += 2
        while i + 4 <= stop:
            kind, size = int.from_bytes(body[i : i + 2], "big"), int.from_bytes(body[i + 2 : i + 4], "big")
            extensions[kind] = bytes(body[i + 4 : i + 4 + size])
            i += 4 + size
    return random, suite, session_id, extensions


def describe_handshake(client_first: bytes, server_first: bytes) -> str | None:
    """What one connection's handshake was, from the first bytes each side sent: e.g.
    ``"TLSv1.3 TLS_AES_256_GCM_SHA384 x25519 full"`` or ``"... resumed"`` (TLS 1.3: the server accepted a
    pre-shared key; TLS 1.2: it echoed the client's session id). None while either hello is incomplete."""
    ch, sh = _hello(client_first, 1), _hello(server_first, 2)
    if ch is None or sh is None:
        return None
    random, suite, session_id, ext = sh
    if random == _HRR_RANDOM:
        return "HelloRetryRequest"
    selected = ext.get(_EXT_SUPPORTED_VERSIONS, b"")  # TLS 1.3 names itself here, not in legacy_version
    version = selected if len(selected) == 2 else bytes(server_first[9:11])
    name = _TLS_VERSIONS.get(int.from_bytes(version, "big"), version.hex())
    if name == "TLSv1.3":
        resumed = _EXT_PRE_SHARED_KEY in ext
        share = ext.get(_EXT_KEY_SHARE, b"")
        group = _GROUPS.get(int.from_bytes(share[:2], "big"), share[:2].hex()) if share else "no key share"
    else:
        resumed = bool(session_id) and session_id == ch[2]
        group = "-"
    how = "resumed" if resumed else "full"
    offered = " (client offered a ticket)" if not resumed and _EXT_PRE_SHARED_KEY in ch[3] else ""
    return f"{name} {_SUITES.get(suite, hex(suite))} {group} {how}{offered}"


class HandshakeSniffer:
    """A TCP relay on 127.0.0.1 in front of a TLS server that reads each connection's ClientHello and
    ServerHello as they pass: which TLS version, suite and group were negotiated, and whether the handshake
    was full or resumed. Runs in a thread (``start``/``stop``, or ``with``); ``port`` is where to connect;
    ``seen`` counts :func:`describe_handshake`'s answers (``"closed mid-handshake"``: a hello was not seen,
    e.g. the client stopped)."""

    def __init__(self, target_port: int) -> None:
        import collections

        self.target_port = target_port
        self.port = 0
        self.seen: collections.Counter[str] = collections.Counter()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> HandshakeSniffer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> HandshakeSniffer:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the handshake sniffer did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0, backlog=1024)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        firsts = [b"", b""]  # what the client and the server sent first, until both hellos are read
        done = False

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, side: int) -> None:
            nonlocal done
            try:
                while data := await r.read(65536):
                    if not done and len(firsts[side]) < 65536:
                        firsts[side] += data
                        found = describe_handshake(firsts[0], firsts[1])
                        if found is not None:
                            self.seen[found] += 1
                            done = True
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            self.seen["connect to server failed"] += 1
            return
        await asyncio.gather(pump(client_r, up_w, 0), pump(up_r, client_w, 1))
        if not done:
            self.seen["closed mid-handshake" if firsts[0] else "no TLS (a connect test)"] += 1
