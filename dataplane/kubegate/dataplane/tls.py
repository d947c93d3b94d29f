"""The HTTPS listener's certificates: one ``SSLContext`` that picks a certificate by SNI.

The listener (``kubegate serve --tls-port``) is served with :attr:`TlsContexts.context`. It holds no
certificate of its own (only the ``--default-certificate``, if given); its ``sni_callback`` looks the
client's SNI name up in the hosts of the table's routes that have TLS (``CompiledRoute.tls`` without an
error: exact names first, then ``*.example.com`` for one more label) and switches the connection to that
certificate's own context. A handshake without SNI, or for a name no route serves, gets the default
certificate, and fails with ``unrecognized_name`` without one.

:meth:`TlsContexts.sync` runs on every table swap (``SnapshotStore.on_swap``): it rebuilds the
name → context maps, so new handshakes get a rotated certificate, while a connection in flight keeps the
context (and certificate) its handshake chose. A context is built once per distinct certificate (keyed by
the digest of chain and key) and kept while a table uses it.

Every context: TLS 1.2 and 1.3 only; TLS 1.2 with the ECDHE AEAD suites of :data:`CIPHERS` (forward
secrecy, no CBC, no RSA key exchange); TLS 1.3 with OpenSSL's default suites (AES-GCM, ChaCha20-Poly1305,
which ``set_ciphers`` cannot change); no renegotiation; ALPN ``http/1.1`` (HTTP/2 is out of scope).
Private keys reach OpenSSL through an anonymous in-memory file (``memfd``) where the platform has one, a
0600 temporary file otherwise, and are never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kubegate.compiler.tls import Certificate
from kubegate.dataplane.snapshot import Snapshot

logger = logging.getLogger("kubegate.tls")

#: TLS 1.2 suites (OpenSSL names), in order of preference: Mozilla's "intermediate" list without DHE.
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
ALPN = ["http/1.1"]


def server_context() -> ssl.SSLContext:
    """A server context with the settings above and no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(ALPN)
    return context


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from, gone when the block ends."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("kubegate-tls", 0)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="kubegate-tls-") as handle:  # created 0600
        handle.write(data)
        handle.flush()
        yield handle.name


def certificate_context(chain: bytes, key: bytes) -> ssl.SSLContext:
    """A context serving this chain and key; ``ssl.SSLError`` when OpenSSL refuses them."""
    context = server_context()
    with _pem_file(chain) as cert_path, _pem_file(key) as key_path:
        context.load_cert_chain(cert_path, key_path)
    return context


def load_default(cert: Path, key: Path) -> ssl.SSLContext:
    """The ``--default-certificate CERT,KEY`` context (files); ``ssl.SSLError``/``OSError`` if unusable."""
    context = server_context()
    context.load_cert_chain(str(cert), str(key))
    return context


def _digest(certificate: Certificate) -> str:
    return hashlib.sha256(f"{certificate.chain}\0{certificate.key}".encode()).hexdigest()


def _covers(names: tuple[str, ...], server_name: str) -> bool:
    if server_name in names:
        return True
    _, dot, rest = server_name.partition(".")
    return bool(dot) and f"*.{rest}" in names


class TlsContexts:
    """The listener's context and the per-certificate contexts its ``sni_callback`` switches to."""

    def __init__(self, default: ssl.SSLContext | None = None) -> None:
        self.default = default
        self.context = server_context()
        self.context.sni_callback = self._select
        self._by_digest: dict[str, ssl.SSLContext] = {}
        # host pattern (exact name, or "*.example.com") → [(certificate's DNS names, context)]
        self._hosts: dict[str, list[tuple[tuple[str, ...], ssl.SSLContext]]] = {}

    def sync(self, snapshot: Snapshot) -> None:
        """Serve the certificates of ``snapshot``'s routes to new handshakes (on every table swap)."""
        contexts: dict[str, ssl.SSLContext] = {}
        hosts: dict[str, list[tuple[tuple[str, ...], ssl.SSLContext]]] = {}
        # Routes in precedence order (oldest first, then by id): the first route naming a host decides.
        routes = sorted((rt.route for rt in snapshot.routes.values()), key=lambda r: (r.created, r.id))
        for route in routes:
            tls = route.tls
            if tls is None or tls.error is not None or not tls.certificates:
                continue
            served = []
            for certificate in tls.certificates:
                digest = _digest(certificate)
                context = contexts.get(digest) or self._by_digest.get(digest)
                if context is None:
                    try:
                        context = certificate_context(certificate.chain.encode(), certificate.key.encode())
                    except (ssl.SSLError, OSError) as exc:
                        logger.error(
                            "route %s: certificate of Secret %s not served: %s",
                            route.id,
                            certificate.secret,
                            getattr(exc, "reason", None) or type(exc).__name__,
                        )
                        continue
                contexts[digest] = context
                served.append((certificate.dns_names, context))
            if served:
                for host in route.match.hosts:
                    hosts.setdefault(host.lower(), served)
        self._by_digest, self._hosts = contexts, hosts

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for a handshake naming ``server_name``; None: the default (or failure)."""
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        found = self._hosts.get(name)
        if found is None:
            _, dot, rest = name.partition(".")
            found = self._hosts.get(f"*.{rest}") if dot else None
        if not found:
            return None
        for names, context in found:
            if _covers(names, name):
                return context
        return found[0][1]

    def _select(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        context = self.select(server_name) or self.default
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = context
        return None

    def __repr__(self) -> str:
        default = "a default certificate" if self.default is not None else "no default certificate"
        return f"<TlsContexts {len(self._by_digest)} certificates, {len(self._hosts)} hosts, {default}>"
