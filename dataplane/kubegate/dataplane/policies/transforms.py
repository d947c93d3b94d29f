"""Request and response transformations of a route: header edits, path rewrites and redirects.

Three small immutable objects, built once per route when the table is loaded and then applied per request
with no parsing or validation left to do:

* :class:`HeaderTransform` (``requestHeaders`` / ``responseHeaders``): ``set``, ``add`` and ``remove``
  applied to the head lines the proxy builds (``b"name: value"``), in the Gateway API ``HTTPHeaderFilter``
  order **set, then add, then remove**;
* :class:`Rewrite` (``rewrite``): ``pathPrefix`` replaces the matched prefix (Gateway API
  ``ReplacePrefixMatch``), ``fullPath`` the whole path (``ReplaceFullPath``); the result is a normalised
  path;
* :class:`Redirect` (``redirect``): the ``Location`` of a Gateway API ``HTTPRequestRedirectFilter`` and its
  status code; a redirect route has no backends.

Everything a user writes is checked in the constructors, which raise ``ValueError`` with a message that
starts with the offending field (``set[1].name: ...``) for the compiler to turn into a field error: header
names must be RFC 9110 tokens and not one of :data:`FORBIDDEN` (hop-by-hop framing and routing headers the
proxy owns), values must be visible ASCII without CR, LF or NUL, paths must already be in the normal form of
:func:`kubegate.dataplane.pathnorm.normalize_path`. The query string is the caller's: a rewrite keeps it as
it is, a redirect copies it into ``Location``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import islice
from typing import Final
from urllib.parse import quote

from kubegate.dataplane import httpbits, pathnorm

__all__ = [
    "DEFAULT_PORTS",
    "FORBIDDEN",
    "REDIRECT_CODES",
    "HeaderTransform",
    "Redirect",
    "Rewrite",
    "is_token",
    "validate_header_name",
    "validate_header_value",
]

#: Headers a transform can never set, add or remove: the hop-by-hop ones (RFC 9110 §7.6.1, the proxy
#: frames each hop itself), ``host`` (routing; rewrite it with a hostname rewrite, not a header edit) and
#: ``content-length`` (framing: a wrong value is request smuggling).
FORBIDDEN: Final[frozenset[bytes]] = httpbits.HOP_BY_HOP | {b"host", b"content-length"}
REDIRECT_CODES: Final[frozenset[int]] = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS: Final[dict[str, int]] = {"http": 80, "https": 443}

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
# An absolute path of pchars (RFC 3986 §3.3): no query, fragment, space or control character.
_PATH_RE: Final = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)+")
_HOSTNAME_RE: Final = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
# What may go into a Location header unescaped: printable ASCII but space (and "%", already an escape).
_LOCATION_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F))


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 9110 token (the syntax of header names and methods)."""
    return _TOKEN_RE.fullmatch(text) is not None


def validate_header_name(name: str) -> bytes:
    """``name`` lower-cased and encoded, if a transform may touch it; else ``ValueError`` saying why."""
    if not is_token(name):
        raise ValueError(f"{name!r} is not a valid header name (an RFC 9110 token)")
    encoded = name.lower().encode("ascii")
    if encoded in FORBIDDEN:
        raise ValueError(
            f"{name!r} cannot be set, added or removed: the gateway manages it"
            " (hop-by-hop, Host and Content-Length headers)"
        )
    return encoded


def validate_header_value(value: str) -> bytes:
    """``value`` encoded, if it is a safe header value; else ``ValueError`` saying why.

    Refused: CR, LF and NUL (header injection), other control characters, non-ASCII characters (obsolete in
    RFC 9110 §5.5; percent-encode them) and leading or trailing whitespace (recipients strip it).
    """
    for bad, label in (("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")):
        if bad in value:
            raise ValueError(f"header value {value!r} contains {label}")
    if not value.isascii():
        raise ValueError(f"header value {value!r} contains non-ASCII characters (percent-encode them)")
    if not value.replace("\t", " ").isprintable():
        raise ValueError(f"header value {value!r} contains control characters")
    if value != value.strip(" \t"):
        raise ValueError(f"header value {value!r} has leading or trailing whitespace")
    return value.encode("ascii")


class HeaderTransform:
    """Edits of a request's or a response's headers, in the Gateway API order: set, add, remove.

    * ``set``: every header of that name is replaced by the one given (it is added when absent);
    * ``add``: the header is appended after any existing ones of that name (also after a ``set`` one);
    * ``remove``: every header of that name is dropped, **including** what ``set`` and ``add`` put there
      (remove comes last).

    Names are case-insensitive (``X-Env`` and ``x-env`` are one header) and written in lower case. A name
    may appear at most once in each list (as in the Gateway API, where each list is keyed by name).
    Headers kept keep their order; set and added headers come after them, set before add.

    Example: on ``x-a: 1``, ``x-b: 2``, ``x-b: 3``, ``x-c: 4`` with ``set=(("X-B", "9"),)``,
    ``add=(("x-a", "5"), ("x-d", "6"))``, ``remove=("x-c",)`` the result is ``x-a: 1``, ``x-b: 9``,
    ``x-a: 5``, ``x-d: 6``.
    """

    __slots__ = ("_drop", "_lines", "_pairs", "add", "remove", "set")

    def __init__(
        self,
        *,
        set: tuple[tuple[str, str], ...] = (),  # the API's field name (shadows the builtin in here only)
        add: tuple[tuple[str, str], ...] = (),
        remove: tuple[str, ...] = (),
    ) -> None:
        set_pairs = _header_pairs("set", set)
        add_pairs = _header_pairs("add", add)
        seen: dict[bytes, int] = {}
        for index, name in enumerate(remove):
            field = f"remove[{index}]"
            encoded = _checked(field, validate_header_name, name)
            if encoded in seen:
                raise ValueError(f"{field}: {name!r} is already listed as remove[{seen[encoded]}]")
            seen[encoded] = index
        removed = frozenset(seen)
        #: The normalised configuration: (lower-case name, value) pairs, names to remove.
        self.set: tuple[tuple[bytes, bytes], ...] = set_pairs
        self.add: tuple[tuple[bytes, bytes], ...] = add_pairs
        self.remove: frozenset[bytes] = removed
        # Existing headers of these names go (set replaces them, remove drops them); then these are appended.
        self._drop: frozenset[bytes] = removed.union(name for name, _ in set_pairs)
        self._pairs: tuple[tuple[bytes, bytes], ...] = tuple(
            (name, value) for name, value in (*set_pairs, *add_pairs) if name not in removed
        )
        self._lines: tuple[bytes, ...] = tuple(name + b": " + value for name, value in self._pairs)

    def apply(self, lines: list[bytes], start: int = 0) -> list[bytes]:
        """Head lines (``b"name: value"``, names of any case) after the edits; ``lines[:start]`` (a request
        or status line) are left alone. ``lines`` itself is not modified (but may be returned as is)."""
        drop = self._drop
        if drop:
            # The name is what precedes the first ":" (a valid field name has no ":" and no whitespace).
            kept = lines[:start]
            kept.extend(
                [line for line in islice(lines, start, None) if line.partition(b":")[0].lower() not in drop]
            )
            kept.extend(self._lines)
            return kept
        if self._lines:
            return [*lines, *self._lines]
        return lines

    def apply_pairs(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The same edits on ``(name, value)`` pairs (names of any case); ``headers`` is not modified."""
        drop = self._drop
        if drop:
            kept = [pair for pair in headers if pair[0].lower() not in drop]
            kept.extend(self._pairs)
            return kept
        if self._pairs:
            return [*headers, *self._pairs]
        return headers

    def __bool__(self) -> bool:
        """False when the transform changes nothing (the proxy may skip it)."""
        return bool(self._drop or self._pairs)

    def __repr__(self) -> str:
        set_names = ",".join(name.decode() for name, _ in self.set) or "-"
        add_names = ",".join(name.decode() for name, _ in self.add) or "-"
        remove_names = ",".join(sorted(name.decode() for name in self.remove)) or "-"
        return f"<HeaderTransform set={set_names} add={add_names} remove={remove_names}>"


def _checked(field: str, check: Callable[[str], bytes], value: str) -> bytes:
    """``check(value)``, its ValueError prefixed with ``field``."""
    try:
        return check(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def _header_pairs(field: str, pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    out: dict[bytes, bytes] = {}
    first: dict[bytes, int] = {}
    for index, (name, value) in enumerate(pairs):
        encoded = _checked(f"{field}[{index}].name", validate_header_name, name)
        if encoded in out:
            raise ValueError(
                f"{field}[{index}].name: {name!r} is already in {field}[{first[encoded]}]"
                " (header names are case-insensitive; join several values with ', ')"
            )
        first[encoded] = index
        out[encoded] = _checked(f"{field}[{index}].value", validate_header_value, value)
    return tuple(out.items())


def _config_path(field: str, path: str) -> str:
    """A configured path, checked to be an absolute path already in normal form."""
    if _PATH_RE.fullmatch(path) is None:
        raise ValueError(
            f"{field}: {path!r} is not an absolute path (it must start with '/' and may not hold a query,"
            " a fragment, spaces or control characters)"
        )
    try:
        normal = pathnorm.normalize_path(path)
    except pathnorm.BadPath as exc:
        raise ValueError(f"{field}: {exc}") from None
    if normal != path:
        raise ValueError(f"{field}: {path!r} is not in normal form; write {normal!r}")
    return path


class Rewrite:
    """The path a request is forwarded with: Gateway API ``HTTPURLRewriteFilter`` path modifiers.

    ``full_path`` (``ReplaceFullPath``) replaces the whole path. ``path_prefix`` (``ReplacePrefixMatch``)
    replaces the prefix the route matched, **whole segments only and ignoring trailing slashes** on both the
    matched prefix and the replacement; what followed the prefix (including a trailing ``/``) is kept, and
    an empty result is ``/``::

        request path   matched prefix   pathPrefix   forwarded path
        /api/users     /api             /v2          /v2/users
        /api/users     /api/            /v2/         /v2/users
        /api           /api             /v2          /v2
        /api/          /api             /v2          /v2/
        /api/users     /api             / or ""      /users
        /api           /api             / or ""      /
        /api/          /api             /            /
        /users         /                /v2          /v2/users
        /              /                /v2          /v2/   (the "/" after the empty prefix is kept)
        /a%20b/c       /a%20b           /x           /x/c

    (the first seven rows restate the Gateway API's own table). Exactly one of the two is given; the value
    must already be in normal form (``"/v2/../x"``, ``"//v2"`` or ``"/v2?x=1"`` are ``ValueError``).

    :meth:`apply` takes the *normalised* request path (as routed) and returns a normalised path: it never
    holds ``..`` segments or ``//``. The query string is not part of it and is kept by the caller.
    """

    __slots__ = ("_replacement", "full_path", "path_prefix")

    def __init__(self, *, path_prefix: str | None = None, full_path: str | None = None) -> None:
        if (path_prefix is None) == (full_path is None):
            raise ValueError("exactly one of pathPrefix and fullPath must be given")
        self.path_prefix = path_prefix
        self.full_path = full_path if full_path is None else _config_path("fullPath", full_path)
        if path_prefix is not None and path_prefix != "":
            _config_path("pathPrefix", path_prefix)
        self._replacement = (path_prefix or "").rstrip("/")  # "/v2/" -> "/v2", "/" -> ""

    def apply(self, path: str, matched_prefix: str | None) -> str:
        """The forwarded path for the normalised request ``path``; ``matched_prefix`` is the route's
        ``PathPrefix`` value that matched it (``None``, as for a route without a path match, counts as
        ``/``). ``ValueError`` if ``path`` does not start with that prefix at a segment boundary."""
        full = self.full_path
        if full is not None:
            return full
        prefix = matched_prefix.rstrip("/") if matched_prefix else ""
        size = len(prefix)
        if prefix and (not path.startswith(prefix) or (len(path) > size and path[size] != "/")):
            raise ValueError(f"path {path[:80]!r} does not start with the matched prefix {matched_prefix!r}")
        # Both parts are normal and the replacement ends without "/", the rest starts with one (or is
        # empty): no "//" or dot segment can appear. normalize_path checks it anyway (its fast path), with
        # "keep" because escaped slashes in ``path`` have already been through the gateway's setting.
        return pathnorm.normalize_path(self._replacement + path[size:] or "/", "keep")

    def __repr__(self) -> str:
        if self.full_path is not None:
            return f"<Rewrite fullPath={self.full_path}>"
        return f"<Rewrite pathPrefix={self.path_prefix}>"


def _split_host(host: str) -> tuple[str, int | None]:
    """``host[:port]`` (a Host header value) as (lower-case hostname, port or None)."""
    if host[:1] == "[":  # IPv6 literal: "[::1]:8080"
        end = host.find("]")
        if end != -1:
            rest = host[end + 1 :]
            port = int(rest[1:]) if rest[:1] == ":" and rest[1:].isdigit() else None
            return host[: end + 1].lower(), port
        return host.lower(), None
    name, colon, port_text = host.rpartition(":")
    if colon and port_text.isdigit():
        return name.rstrip(".").lower(), int(port_text)
    return host.rstrip(".").lower(), None


def _location_part(text: str) -> str:
    """``text`` as it may appear in a Location header: percent-encode what is not printable ASCII."""
    if text.isascii() and text.isprintable() and " " not in text:
        return text
    return quote(text, safe=_LOCATION_SAFE, encoding="latin-1", errors="strict")


class Redirect:
    """A redirect route's answer: Gateway API ``HTTPRequestRedirectFilter`` semantics.

    The ``Location`` is ``scheme://hostname[:port]path[?query]``:

    * ``scheme``: the configured one, else the request's;
    * ``hostname``: the configured one, else the request's ``Host`` without its port;
    * ``port``: the configured one; else, when a scheme is configured, that scheme's well-known port (80 for
      http, 443 for https); else the port the request came to (its ``Host`` port, or the request scheme's
      default when ``Host`` has none). It is left out when it is the default port of the final scheme;
    * ``path``: the configured full path (``ReplaceFullPath``), or the matched prefix replaced by
      ``path_prefix`` as in :class:`Rewrite` (``ReplacePrefixMatch``), else the request path;
    * the request's query string, unchanged.

    Examples, for a request ``http://example.com:8080/a?q=1``: ``scheme="https"`` →
    ``https://example.com/a?q=1``; ``scheme="https", port=8443`` → ``https://example.com:8443/a?q=1``;
    ``hostname="other.example"`` → ``http://other.example:8080/a?q=1``; ``path="/b"`` →
    ``http://example.com:8080/b?q=1``. An IPv6 ``Host`` keeps its brackets: ``https://[::1]/a``.

    ``status_code`` is one of 301, 302 (the default), 303, 307, 308; the response itself (status line,
    ``location``, an empty body) is the proxy's to build.
    """

    __slots__ = ("_authority", "_rewrite", "hostname", "path", "path_prefix", "port", "scheme", "status_code")

    def __init__(
        self,
        *,
        scheme: str | None = None,
        hostname: str | None = None,
        port: int | None = None,
        path: str | None = None,
        path_prefix: str | None = None,
        status_code: int = 302,
    ) -> None:
        if status_code not in REDIRECT_CODES:
            raise ValueError(f"statusCode: {status_code} is not one of 301, 302, 303, 307, 308")
        if scheme is not None:
            scheme = scheme.lower()
            if scheme not in DEFAULT_PORTS:
                raise ValueError(f"scheme: {scheme!r} is not http or https")
        if hostname is not None:
            hostname = _config_hostname(hostname)
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port: {port} is not between 1 and 65535")
        if path is not None and path_prefix is not None:
            raise ValueError("path: give a full path or a prefix replacement, not both")
        self.scheme = scheme
        self.hostname = hostname
        self.port = port
        self.path = path
        self.path_prefix = path_prefix
        self.status_code = status_code
        self._rewrite: Rewrite | None = None
        if path is not None or path_prefix is not None:
            try:
                self._rewrite = Rewrite(full_path=path, path_prefix=path_prefix)
            except ValueError as exc:
                raise ValueError(f"path: {exc}") from None
        # scheme and hostname configured: the whole authority is known now.
        self._authority: str | None = None
        if scheme is not None and hostname is not None:
            self._authority = _authority(scheme, hostname, port or DEFAULT_PORTS[scheme])

    def location(
        self, request_scheme: str, host: str, path: str, query: str, matched_prefix: str | None = None
    ) -> bytes:
        """The ``Location`` value for a request: its scheme (``http``/``https``), ``Host`` value
        (``host[:port]``, as validated by the proxy), normalised path, query string (without ``?``, may be
        empty) and, for a ``path_prefix`` redirect, the route's matched ``PathPrefix``. A request without
        ``Host`` on a redirect without ``hostname`` gets a relative reference (``/path?query``)."""
        scheme = self.scheme or request_scheme
        authority = self._authority
        if authority is None:
            request_host, request_port = _split_host(host)
            hostname = self.hostname or request_host
            port: int | None
            if self.port is not None:
                port = self.port
            elif self.scheme is not None:
                port = DEFAULT_PORTS[self.scheme]
            else:  # the port the request came to
                port = request_port or DEFAULT_PORTS.get(request_scheme)
            authority = _authority(scheme, hostname, port) if hostname else ""
        rewrite = self._rewrite
        if rewrite is not None:
            path = rewrite.apply(path, matched_prefix)
        target = _location_part(path) + ("?" + _location_part(query) if query else "")
        if not authority:
            return target.encode("ascii")
        return f"{scheme}://{authority}{target}".encode("ascii")

    def __repr__(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("scheme", self.scheme),
                ("hostname", self.hostname),
                ("port", self.port),
                ("path", self.path),
                ("pathPrefix", self.path_prefix),
            )
            if value is not None
        ]
        return f"<Redirect {self.status_code} {' '.join(parts) or 'same URL'}>"


def _authority(scheme: str, hostname: str, port: int | None) -> str:
    return hostname if port is None or port == DEFAULT_PORTS.get(scheme) else f"{hostname}:{port}"


def _config_hostname(hostname: str) -> str:
    """A configured redirect hostname: a DNS name or an IP address (IPv6 written with or without [])."""
    name = hostname.lower()
    if ":" in name:  # IPv6
        bare = name.removeprefix("[").removesuffix("]")
        if re.fullmatch(r"[0-9a-f:.]+", bare) is None or bare.count(":") < 2:
            raise ValueError(f"hostname: {hostname!r} is not a hostname (no port: use the port field)")
        return f"[{bare}]"
    if len(name) > 253 or _HOSTNAME_RE.fullmatch(name) is None:
        raise ValueError(f"hostname: {hostname!r} is not a valid hostname (letters, digits, '-' and '.')")
    return name
