"""API-key authentication for a route: a key in a header or a query parameter names a client.

The keys come from a Secret (each of its keys is a client name, the value that client's API key). The
compiler replaces every key by its SHA-256 (:func:`hash_key`) before it goes into the route table, so a
data plane, the table it receives, ``/table`` and ``/routes`` never hold a key in clear; this module only
ever sees hashes. A request's key is hashed, looked up, and the stored hash compared with
:func:`hmac.compare_digest`. The lookup itself is a dict lookup *on the hash*: whatever timing it leaks is
about the SHA-256 of the presented key, which tells an attacker nothing about any stored key without a
preimage, so no comparison ever runs on a key itself.

**Keys seen before**: hashing costs more than the rest of the check (OpenSSL's SHA-256 through
``hashlib`` was about 8,000 instructions per request, a tenth of proxying one), and a client sends the
same key with every request. So a key that verified is remembered, as presented, with its client's
result: a request bringing it again is found by one dict lookup, without hashing. Only keys that verified
are remembered (one per client of the Secret at most, and never more than :data:`MAX_REMEMBERED`), so
wrong keys cannot grow the memo. The lookup compares a presented key's bytes with a remembered one only
when their SipHash values (seeded per process) are equal, which a client cannot aim at; that is what
stands in for a constant-time comparison on this path. The memo lives in the replica's memory, as the
keys do in every request it reads, never in the table, a log or the admin API, and it goes with the
verifier when a new table arrives (a key removed from the Secret is forgotten with it).

``verify`` is synchronous and allocation-light: success results are built once per client (the client
name and the ``clientHeader`` to add upstream), failures are two shared objects. The client name is the
identity that "per user" rate limits and private caching key on. A 401 carries an informational
``WWW-Authenticate: ApiKey header="..."`` (or ``query="..."``) challenge: HTTP wants a challenge on 401,
and no standard scheme exists for API keys.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final
from urllib.parse import unquote_plus

#: Longest API key looked at (longer ones are refused without hashing).
MAX_KEY_BYTES: Final = 4096
#: Read from a C static when compiled (``hmac.compare_digest`` would be a module attribute lookup per call).
_compare_digest: Final = hmac.compare_digest
#: Keys remembered after they verified, per verifier, at most (see "Keys seen before").
MAX_REMEMBERED: Final = 1024


def hash_key(key: str) -> str:
    """The form in which a key travels and is stored: lower-case hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyResult:
    """``ok``: ``client`` (the identity) and ``headers`` to add upstream; else 401 with ``reason``
    ("missing" or "invalid"), ``description`` for the error body and the ``www_authenticate`` challenge."""

    __slots__ = ("client", "description", "headers", "ok", "reason", "status", "www_authenticate")

    def __init__(
        self,
        ok: bool,
        status: int,
        reason: str,
        description: str = "",
        www_authenticate: bytes | None = None,
        client: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.ok = ok
        self.status = status
        self.reason = reason
        self.description = description
        self.www_authenticate = www_authenticate
        self.client = client
        self.headers = headers

    @property
    def identity(self) -> str | None:
        return self.client

    def __repr__(self) -> str:
        if self.ok:
            return f"<ApiKeyResult ok client={self.client!r}>"
        return f"<ApiKeyResult {self.status} {self.reason}>"


class ApiKeyVerifier:
    """One route's API-key check. ``header`` (a header name) or ``query`` (a parameter name) says where
    the key is; ``keys`` maps :func:`hash_key` digests to client names; ``client_header``, when set,
    carries the client name upstream."""

    __slots__ = ("_clients", "_invalid", "_missing", "_seen", "header", "query")

    def __init__(
        self,
        header: bytes | None,
        query: str | None,
        keys: dict[str, str],
        client_header: bytes | None,
    ) -> None:
        if (header is None) == (query is None):
            raise ValueError("an API key is read from a header or from a query parameter (exactly one)")
        self.header = header
        self.query = query
        self._clients: dict[bytes, tuple[bytes, ApiKeyResult]] = {}
        #: A key that verified, as presented -> its client's result: see "Keys seen before".
        self._seen: dict[bytes, ApiKeyResult] = {}
        for digest_hex, client in keys.items():
            digest = bytes.fromhex(digest_hex)  # ValueError on anything but hex
            if len(digest) != 32:
                raise ValueError("API keys are given as SHA-256 hex digests")
            headers: tuple[tuple[bytes, bytes], ...] = ()
            if client_header is not None:
                if not client.isprintable():
                    raise ValueError("a client name must not hold control characters")
                headers = ((client_header, client.encode()),)
            self._clients[digest] = (digest, ApiKeyResult(True, 200, "ok", client=client, headers=headers))
        where = f'header="{header.decode("latin-1")}"' if header is not None else f'query="{query}"'
        challenge = f"ApiKey {where}".encode("latin-1")
        self._missing = ApiKeyResult(False, 401, "missing", f"no API key ({where})", challenge)
        self._invalid = ApiKeyResult(False, 401, "invalid", "the API key is not valid", challenge)

    def verify(self, header_value: bytes | None, query: str) -> ApiKeyResult:
        """Check a request: ``header_value`` is the value of the configured header (None: absent),
        ``query`` the raw query string (without ``?``; only read when the key is a query parameter)."""
        if self.header is not None:
            key = header_value if header_value is not None else b""
            if key and (key[0] == 0x20 or key[0] == 0x09 or key[-1] == 0x20 or key[-1] == 0x09):
                key = key.strip(b" \t")  # (rare: only then the strip call)
        else:
            key = self._from_query(query)
        if not key:
            return self._missing
        seen = self._seen.get(key)  # (found only when equal to a key that verified)
        if seen is not None:
            return seen
        if len(key) > MAX_KEY_BYTES:
            return self._invalid
        digest = hashlib.sha256(key).digest()
        found = self._clients.get(digest)
        if found is None or not _compare_digest(found[0], digest):
            return self._invalid
        if len(self._seen) < MAX_REMEMBERED:
            self._seen[key] = found[1]
        return found[1]

    def _from_query(self, query: str) -> bytes:
        """The first value of the configured parameter, percent-decoded (b"" when absent)."""
        name = self.query
        if not query or name is None:
            return b""
        for pair in query.split("&"):
            raw_name, _, raw_value = pair.partition("=")
            if raw_name == name or (("%" in raw_name or "+" in raw_name) and unquote_plus(raw_name) == name):
                return unquote_plus(raw_value).encode()
        return b""

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def remembered(self) -> int:
        """Keys remembered after they verified (see "Keys seen before")."""
        return len(self._seen)

    def __repr__(self) -> str:
        where = (
            f"header={self.header.decode('latin-1')}" if self.header is not None else f"query={self.query}"
        )
        return f"<ApiKeyVerifier {where} clients={len(self._clients)}>"
