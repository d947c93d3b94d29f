"""TLS to backends at run time: one ``SSLContext`` per distinct verification, and the pool key it makes.

The compiled table says, per backend, which name to verify and against which CAs
(:class:`~kubegate.compiler.table.BackendTls`, from :mod:`kubegate.compiler.backendtls`). Here that
becomes an :class:`UpstreamTls`: an immutable value (server name, whether to verify, a digest of the
CAs) carrying its ``SSLContext``. It is part of the upstream pool's key (``(host, port, tls)``; plain
endpoints stay ``(host, port)``), so a pooled TLS connection is only ever reused for a request to the same
endpoint with the same verification, and two tables with the same settings share connections (equality
is by value, the context is left out of it).

Contexts are built by :class:`TlsContexts`, once per distinct (CAs, verify) and kept across tables (a
context with a CA bundle costs a millisecond or more to build; tables are swapped often): TLS 1.2 or 1.3,
the standard library's default ciphers for a client (``ssl.create_default_context``: forward-secret AEAD
suites), ALPN ``http/1.1``, the system CAs or the route's, hostname checking on; ``verify`` False turns
both checks off (``insecureSkipVerify``). The handshake runs on the event loop's transport
(``loop.create_connection(ssl=...)``), inside the pool's connect timeout.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from kubegate.compiler.table import BackendTls

__all__ = ["PoolKey", "TlsContexts", "UpstreamTls", "tls_failure"]

logger: Final = logging.getLogger("kubegate.upstream")

#: Seconds between two log lines about failed handshakes with the same endpoint.
LOG_EVERY: Final = 30.0


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How to speak TLS to one backend; equal settings are equal keys (the context is not compared)."""

    server_name: str
    verify: bool
    ca_digest: str  # "" for the system CAs
    context: ssl.SSLContext = field(compare=False, repr=False)


#: An upstream connection's key in the pool: the endpoint, and for a backend that speaks TLS its settings,
#: so that a connection is reused only for the same endpoint and verification.
PoolKey = tuple[str, int] | tuple[str, int, UpstreamTls]


class TlsContexts:
    """The client contexts of the backends' TLS, by (CAs, verify), kept for the process's life (there are
    as many as distinct CA bundles the routes name, a handful)."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[str, bool], ssl.SSLContext] = {}

    def get(self, tls: BackendTls) -> UpstreamTls:
        digest = hashlib.sha256(tls.ca.encode()).hexdigest() if tls.ca is not None else ""
        key = (digest, tls.verify)
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = _context(tls.ca, tls.verify)
        return UpstreamTls(server_name=tls.server_name, verify=tls.verify, ca_digest=digest, context=context)

    def __len__(self) -> int:
        return len(self._contexts)

    def __bool__(self) -> bool:
        # Stated, not left to __len__: compiled by mypyc, "if x" on an "X | None" tests only for None
        # unless X defines __bool__.
        return len(self) > 0


def _context(ca: str | None, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _FailureLog:
    """Handshake failures are logged with their reason (the client only gets 502), at most once per
    route and endpoint every :data:`LOG_EVERY` seconds; each one is counted in
    ``kubegate_upstream_errors_total`` (kind ``tls``) by the proxy."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[tuple[str, str, int], float] = {}

    def __call__(self, route: str, key: PoolKey, exc: BaseException) -> bool:
        endpoint = (key[0], key[1])
        now = self._clock()
        which = (route, *endpoint)
        last = self._last.get(which)
        if last is not None and now - last < LOG_EVERY:
            return False
        if len(self._last) > 10_000:  # an endpoint churn must not grow this without bound
            self._last.clear()
        self._last[which] = now
        name = key[2].server_name if len(key) == 3 else endpoint[0]
        logger.warning(
            "TLS handshake with %s:%d (server name %s) for route %s failed: %s",
            endpoint[0],
            endpoint[1],
            name,
            route,
            getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc,
            extra={"route": route, "endpoint": f"{endpoint[0]}:{endpoint[1]}"},
        )
        return True


#: Logs a failed handshake (throttled); the proxy answers 502 and counts it.
tls_failure: Final = _FailureLog()

#: The process's contexts (the snapshot builds runtime backends without a context object of its own).
CONTEXTS: Final = TlsContexts()
