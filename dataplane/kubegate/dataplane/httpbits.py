"""Small HTTP/1.1 facts the proxy needs as pre-encoded bytes: hop-by-hop headers, error responses.

Kept apart from the protocol code so that the rules (RFC 9110 §7.6.1 hop-by-hop headers, the JSON error
body) are readable in one place and testable without sockets.
"""

from __future__ import annotations

import json
import os
import re
from http import HTTPStatus
from typing import Final

# RFC 9110 §7.6.1 (and the de-facto Proxy-Connection / Keep-Alive); plus anything named in Connection.
HOP_BY_HOP: Final[frozenset[bytes]] = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# Headers the proxy sets itself on the upstream request (client-supplied copies are replaced or extended).
PROXY_SET: Final[frozenset[bytes]] = frozenset(
    {b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-for", b"x-request-id", b"expect", b"host"}
)

_REASONS: Final[dict[int, bytes]] = {s.value: s.phrase.encode() for s in HTTPStatus}


_STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"HTTP/1.1 %d %s" % (code, phrase) for code, phrase in _REASONS.items()
}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown" % status


_COMMON_CONNECTION: Final[dict[bytes, frozenset[bytes]]] = {
    v: frozenset({v.lower()}) for v in (b"keep-alive", b"Keep-Alive", b"close", b"Close")
}


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names listed in a Connection header value (lower-cased)."""
    common = _COMMON_CONNECTION.get(value)
    if common is not None:
        return common
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


# RFC 9110 §7.2 / RFC 3986 §3.2.2, narrowed to what real hosts use: a DNS-ish name (letters, digits, "-",
# ".", "_", "~") or a bracketed IP literal, then an optional port. No space, "/", "@", "," or "%": the value
# is routed on and copied into Host and X-Forwarded-Host, where anything else is ambiguity at best.
_HOST_RE: Final = re.compile(rb"(?:(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?)?")
#: Hosts seen lately, valid ones decoded (the matcher wants str), invalid ones as "": the proxy looks here
#: first (one dict lookup per request) and calls :func:`host_str` only for a host it has not seen.
HOSTS: Final[dict[bytes, str]] = {}


def host_str(value: bytes) -> str:
    """``value`` decoded if it is a plain host[:port] (or empty), else ``""`` (which callers refuse with
    400 unless ``value`` itself was empty)."""
    known = HOSTS.get(value)
    if known is not None:
        return known
    text = value.decode("latin-1") if _HOST_RE.fullmatch(value) is not None else ""
    if len(HOSTS) >= 1024:  # clients choose these values: keep the memo bounded
        HOSTS.clear()
    HOSTS[value] = text
    return text


#: Header names as they arrive -> the same in lower case: the proxy's one place to lower-case a name.
#: Seeded with the usual spellings, it learns the others (bounded like :data:`HOSTS`: clients choose
#: them), so a name is one dict lookup instead of a ``bytes.lower()`` call, and the lower-case name that
#: comes back is always the same object, whose hash is computed once for every later lookup.
NAMES: Final[dict[bytes, bytes]] = {}
_USUAL_NAMES: Final = (
    b"Accept", b"Accept-Encoding", b"Accept-Language", b"Accept-Ranges", b"Age", b"Authorization",
    b"Cache-Control", b"Connection", b"Content-Encoding", b"Content-Length", b"Content-Type", b"Cookie",
    b"Date", b"ETag", b"Expect", b"Expires", b"Host", b"If-Modified-Since", b"If-None-Match",
    b"Keep-Alive", b"Last-Modified", b"Location", b"Origin", b"Pragma", b"Referer", b"Server",
    b"Set-Cookie", b"Transfer-Encoding", b"Upgrade", b"User-Agent", b"Vary", b"Via",
    b"X-API-Key", b"X-Forwarded-For", b"X-Forwarded-Host", b"X-Forwarded-Proto", b"X-Request-Id",
    b"X-Request-ID",
)  # fmt: skip


def _seed_names() -> None:
    NAMES.clear()
    for name in _USUAL_NAMES:
        lowered = name.lower()
        NAMES[name] = NAMES[lowered] = lowered


_seed_names()


def lower_name(name: bytes) -> bytes:
    """``name.lower()``, through :data:`NAMES`."""
    lowered = NAMES.get(name)
    if lowered is None:
        if len(NAMES) >= 1022:  # clients choose these: at most 1,024 (a miss adds two), usual names kept
            _seed_names()
        computed = name.lower()
        lowered = NAMES.setdefault(computed, computed)  # one object per lower-case name
        NAMES[name] = lowered
    return lowered


def only_chunked(transfer_encoding: bytes) -> bool:
    """Whether a Transfer-Encoding value is exactly ``chunked`` (the only coding the gateway relays)."""
    return transfer_encoding.strip().lower() == b"chunked"


def error_response(
    status: int,
    message: str,
    request_id: bytes,
    *,
    close: bool,
    head: bool = False,
    retry_after: int | None = None,
    extra: list[bytes] | None = None,
) -> bytes:
    """A complete HTTP/1.1 error response with a small JSON body naming the request ID; ``extra`` are
    header lines to add (a WWW-Authenticate challenge, CORS headers)."""
    body = json.dumps(
        {
            "error": reason(status).decode(),
            "status": status,
            "message": message,
            "requestId": request_id.decode(),
        },
        separators=(",", ":"),
    ).encode()
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason(status)),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"x-request-id: " + request_id,
    ]
    if retry_after is not None:
        lines.append(b"retry-after: %d" % retry_after)
    if extra:
        lines.extend(extra)
    if close:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


def bodiless_response(status: int, lines: list[bytes], request_id: bytes, *, close: bool) -> bytes:
    """A complete HTTP/1.1 response without a body carrying ``lines`` (``content-length: 0``, except for
    a 204, which must not have one)."""
    head = [status_line(status), *lines]
    if status != 204:
        head.append(b"content-length: 0")
    head.append(b"x-request-id: " + request_id)
    if close:
        head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n"


class RequestIds:
    """Unique, cheap request IDs: a random per-process prefix and a decimal counter (no uuid4 per
    request; compiled, ``%s`` and ``%d`` are one concatenation, where ``%x`` went through the generic
    formatter)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex().encode()
        self._last = 0

    def next(self) -> bytes:
        self._last += 1
        return b"%s-%d" % (self._prefix, self._last)


def valid_request_id(value: bytes) -> bool:
    """Client-supplied IDs are kept only if short and printable (they end up in logs and headers)."""
    return 0 < len(value) <= 128 and all(0x21 <= c <= 0x7E for c in value)
