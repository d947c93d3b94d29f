"""Response caching per route: what may be answered from the cache, under which key, and what may be stored.

A route with ``cache`` is a **shared cache** in the sense of RFC 9111: one stored response answers many
clients. The compiler turns the route's ``CacheSpec`` into a frozen :class:`CacheRules`; the proxy asks this
module three questions and keeps the bytes elsewhere (:mod:`.cachestore` in memory, Redis for the shared
store). This module is pure: no I/O, no clock of its own (``now`` is wall-clock epoch seconds, passed in,
because HTTP dates are wall-clock times), no state. Headers are ``(name, value)`` byte pairs as received,
names in any case (compared case-insensitively); values are compared as bytes.

**The request** (:func:`classify_request`) gets one of three actions, with the reason for a bypass:

- :data:`BYPASS`: neither read nor write the cache, when the method is not ``GET`` or ``HEAD`` (methods
  are case-sensitive: ``get`` bypasses) → ``"method"``; the request has a body → ``"body"``; it has a
  ``Range`` header (partial responses are never cached) → ``"range"``; it carries credentials (the
  caller's ``credentials`` flag: an ``Authorization`` header or the route's API key seen by the proxy; an
  ``Authorization`` header among ``headers`` counts too) unless the route keys per user and auth admitted
  an identity → ``"credentials"``; its ``Cache-Control`` has ``no-store`` → ``"no-store"``. The first of
  these, in this order, is the reason.
- :data:`REFRESH` (reason ``"no-cache"``): go upstream and store the answer, when the request's
  ``Cache-Control`` has ``no-cache`` or ``max-age=0`` (or an invalid ``max-age``, which is 0), or it has
  ``Pragma: no-cache`` and no ``Cache-Control`` at all (RFC 9111 §5.4). This cache never revalidates
  (no conditional requests of its own): a refresh refetches.
- :data:`LOOKUP` (reason ``""``): answer from a fresh entry that :meth:`~.cachestore.CachedResponse.matches`
  the request's Vary values, else go upstream and offer the answer to :func:`decide_store`. ``HEAD`` is
  answered from the ``GET`` entry; the proxy stores only answers to ``GET``.

Other request directives (``max-age`` > 0, ``min-fresh``, ``max-stale``, ``only-if-cached``) are ignored:
entries are only ever served fresh, and a client cannot widen that.

**The key** (:func:`cache_key`) is the hex SHA-256 (64 ASCII bytes) of a versioned, length-prefixed
encoding of: the route id; the host, lower-cased; the path; the query, per ``key_query_params`` (``"none"``:
nothing; ``"all"``: every parameter; a tuple: only the parameters named), parsed with
:func:`urllib.parse.parse_qsl` (blank values kept) and sorted by (name, value), so ``?a=1&b=2`` and
``?b=2&a=1`` share a key (percent-escapes are decoded, so ``%61=1`` is ``a=1`` and ``+`` is a space; bytes
that are not UTF-8 are kept as they are, so ``%FF`` and ``%FE`` never share a key); each of
``key_headers`` with the request's value (repeated lines joined with ``,``; an absent header is not an
empty one); and, when ``per_user``, the identity (None is not ``""``). Every part is tagged and
length-prefixed, so no two different inputs can meet by concatenation. The method is not part of the key.
Vary is not part of it either: one entry per key, which records the Vary values of the request that
fetched it (:func:`vary_values`); a request whose values differ goes upstream and its answer replaces the
entry.

**The response** (:func:`decide_store`) is stored when all of these hold, checked in this order (the
first one that fails is the :attr:`StoreDecision.reason`):

- the status is one of :data:`CACHEABLE_STATUSES` (``"status"``);
- ``Cache-Control`` has no ``no-store`` (``"no-store"``); no ``private``, qualified with field names or
  not, unless ``private_ok`` (the key holds the user's identity) (``"private"``); no ``no-cache``,
  qualified or not, since this cache does not revalidate (``"no-cache"``);
- for a request with credentials (the optional ``credentials`` flag) that is not keyed per user, the
  response says ``public``, ``s-maxage`` or ``must-revalidate`` (RFC 9111 §3.5) (``"authorization"``);
- there is no ``Set-Cookie`` (``"set-cookie"``) and no ``Vary: *`` (``"vary-star"``);
- a known ``content_length`` is at most ``max_entry_bytes`` (``"too-large"``; a body of unknown length
  is for the proxy to count while it streams);
- the remaining freshness is positive (``"stale"``): the lifetime is ``s-maxage`` if present, else
  ``max-age``, else ``Expires`` - ``Date`` (``Expires`` - ``now`` when ``Date`` is absent or invalid; an
  invalid ``Expires``, such as ``0``, is already expired), else the route's ``ttl``; minus the
  upstream's ``Age``. The upstream's clock is not compared with ours beyond that: the apparent age
  ``now - Date`` is not used, so a skewed upstream clock neither erases nor extends a ``max-age``
  (RFC 9111 requires a cache between the origin and us to send ``Age``).

A refusal is ``StoreDecision(False, reason, 0.0, 0.0, ())``; a decision to store carries the lifetime
left from ``now`` (already reduced by ``Age``), the age (``Age``, or 0) and the Vary names.

**Parsing** (:func:`parse_cache_control`): directives are comma-separated over all ``Cache-Control``
lines, names case-insensitive, values tokens or quoted strings (a comma inside quotes is not a separator;
``\\`` escapes are undone). A delta-seconds value (``max-age``, ``s-maxage``, ``Age``) must be ASCII
digits (capped at 2**31); in ``max-age`` or ``s-maxage`` anything else — ``max-age=abc``, ``max-age=-1``,
``max-age`` without a value — counts as 0, that is stale (RFC 9111 §4.2.1); an invalid ``Age`` is
ignored (RFC 9111 §5.1). A directive repeated with different values is invalid
too: its values are joined with ``,`` (for a field list, the union of the names; for a number, an invalid
value, so **conflicting** ``max-age`` **directives make the response stale**, the second option RFC 9111
§4.2.1 offers); a repetition without a value absorbs the others (``private, private="x"`` is the plain
``private``); identical repetitions are one. Likewise several different ``Expires`` lines are an invalid
``Expires`` (expired), several different ``Date`` or ``Age`` lines are ignored. HTTP dates are read with
:func:`email.utils.parsedate_to_datetime` (IMF-fixdate, RFC 850 and asctime forms; no zone means GMT).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final
from urllib.parse import parse_qsl

__all__ = [
    "BYPASS",
    "CACHEABLE_STATUSES",
    "LOOKUP",
    "MAX_DELTA_SECONDS",
    "REFRESH",
    "CacheRules",
    "Headers",
    "StoreDecision",
    "cache_key",
    "classify_request",
    "decide_store",
    "delta_seconds",
    "http_date",
    "parse_cache_control",
    "vary_values",
]

Headers = Sequence[tuple[bytes, bytes]]

#: Request actions of :func:`classify_request`.
LOOKUP: Final = "lookup"
REFRESH: Final = "refresh"
BYPASS: Final = "bypass"

#: Statuses whose responses may be stored (RFC 9110 §15.1's heuristically cacheable ones, minus 206).
CACHEABLE_STATUSES: Final[frozenset[int]] = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})

#: The largest delta-seconds value (RFC 9111 §1.2.2); larger ones are this.
MAX_DELTA_SECONDS: Final = 2**31

_CACHEABLE_METHODS: Final = (b"GET", b"HEAD")
_KEY_VERSION: Final = b"kubegate-cache-key/1\x00"
_ESCAPE: Final = re.compile(r"\\(.)", re.DOTALL)
_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class CacheRules:
    """A route's compiled cache settings, checked and normalised here (``ValueError`` naming the field).

    ``ttl``: freshness in seconds when the upstream says nothing (finite, >= 0); ``max_entry_bytes``: the
    largest body stored (>= 0); ``key_query_params``: ``"all"``, ``"none"`` or the names of the query
    parameters that are part of the key (any sequence of names; kept as a tuple); ``key_headers``: the
    request header names that are part of the key (any case; kept lower-case, without repetitions);
    ``per_user``: the identity auth admitted is part of the key.
    """

    ttl: float
    max_entry_bytes: int
    # Sequence, not tuple, so that a list is normalised here rather than refused by the compiled build's
    # type check (and an element of the wrong type gets the ValueError naming the field)
    key_query_params: str | Sequence[str] = "all"
    key_headers: Sequence[bytes] = ()
    per_user: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ttl) and self.ttl >= 0):
            raise ValueError(f"ttl must be a finite number of seconds >= 0, not {self.ttl!r}")
        if self.max_entry_bytes < 0:
            raise ValueError(f"max_entry_bytes must be >= 0, not {self.max_entry_bytes!r}")
        params = self.key_query_params
        # the elements are read as objects: what the annotations promise is what is checked here
        if isinstance(params, str):
            if params not in ("all", "none"):
                raise ValueError(f'key_query_params must be "all", "none" or names, not {params!r}')
        elif all(isinstance(name, str) for name in _as_objects(params)):
            object.__setattr__(self, "key_query_params", tuple(params))
        else:
            raise ValueError(f"key_query_params must hold parameter names, not {params!r}")
        names: list[bytes] = []
        for name in _as_objects(self.key_headers):
            if not (isinstance(name, bytes) and name and _clean_name(name)):
                raise ValueError(f"key_headers must be header names, not {name!r}")
            if name.lower() not in names:
                names.append(name.lower())
        object.__setattr__(self, "key_headers", tuple(names))


def _as_objects(items: Sequence[object]) -> Sequence[object]:
    return items


def _clean_name(name: bytes) -> bool:
    """Whether ``name`` could be a header name (no separators, controls or spaces)."""
    return _TOKEN.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class StoreDecision:
    """Whether to store a response (see the module docstring); ``reason`` is ``""`` when it is stored."""

    store: bool
    reason: str
    lifetime: float
    age: float
    vary: tuple[bytes, ...]


def _refuse(reason: str) -> StoreDecision:
    return StoreDecision(False, reason, 0.0, 0.0, ())


def _directives(value: str) -> list[str]:
    """``value`` split at the commas that are not inside a quoted string."""
    if '"' not in value:
        return value.split(",")
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ",":
            parts.append(value[start:index])
            start = index + 1
    parts.append(value[start:])
    return parts


def parse_cache_control(values: Iterable[bytes]) -> dict[str, str | None]:
    """The directives of all these ``Cache-Control`` values: lower-case name → value (unquoted) or None.

    Repetitions: identical ones are one; one without a value makes the directive valueless; different
    values are joined with ``,`` (an invalid number for ``max-age``: see the module docstring).
    """
    directives: dict[str, str | None] = {}
    for raw in values:
        for part in _directives(raw.decode("latin-1")):
            name, equals, argument = part.partition("=")
            name = name.strip().lower()
            if not name:
                continue
            value: str | None = None
            if equals:
                value = argument.strip()
                if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                    value = _ESCAPE.sub(r"\1", value[1:-1])
            if name not in directives:
                directives[name] = value
                continue
            known = directives[name]
            if known is None or value is None:
                directives[name] = None
            elif known != value:
                directives[name] = f"{known},{value}"
    return directives


def delta_seconds(value: str | bytes | None) -> int | None:
    """A delta-seconds value (ASCII digits, capped at :data:`MAX_DELTA_SECONDS`), or None if invalid."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    if len(text) > 10:  # also keeps int() clear of its limit on digits
        return MAX_DELTA_SECONDS
    return min(int(text), MAX_DELTA_SECONDS)


def http_date(value: bytes) -> float | None:
    """An HTTP date as epoch seconds, or None if it is not one (a date without a zone is GMT)."""
    try:
        parsed = parsedate_to_datetime(value.decode("latin-1").strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        stamp = parsed.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return stamp if math.isfinite(stamp) else None


def _one(values: list[bytes]) -> bytes | None:
    """The value of a singleton field: the only one (or the same one repeated), else None."""
    if not values:
        return None
    first = values[0].strip()
    return first if all(value.strip() == first for value in values[1:]) else None


def _list_value(values: list[bytes]) -> bytes:
    """A list field's lines as one value: elements trimmed and joined with ``,``."""
    return b",".join(element.strip(b" \t") for value in values for element in value.split(b","))


def vary_values(vary: tuple[bytes, ...], headers: Headers) -> tuple[bytes | None, ...]:
    """The request's values of the header names in ``vary`` (lower-case), in that order: repeated lines
    joined with ``,``, whitespace around commas removed (``gzip, br`` is ``gzip,br``), None when absent."""
    if not vary:
        return ()
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in vary:
            found.setdefault(lower, []).append(value)
    result: list[bytes | None] = []
    for name in vary:
        lines = found.get(name)
        result.append(None if lines is None else _list_value(lines))
    return tuple(result)


def classify_request(
    rules: CacheRules,
    method: bytes,
    headers: Headers,
    *,
    has_body: bool,
    credentials: bool,
    identity: str | None,
) -> tuple[str, str]:
    """(:data:`LOOKUP`, ``""``), (:data:`REFRESH`, ``"no-cache"``) or (:data:`BYPASS`, why): see the
    module docstring."""
    if method not in _CACHEABLE_METHODS:
        return BYPASS, "method"
    if has_body:
        return BYPASS, "body"
    cache_control: list[bytes] = []
    pragma: list[bytes] = []
    ranged = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"cache-control":
            cache_control.append(value)
        elif lower == b"pragma":
            pragma.append(value)
        elif lower == b"range":
            ranged = True
        elif lower == b"authorization":
            credentials = True
    if ranged:
        return BYPASS, "range"
    if credentials and not (rules.per_user and identity is not None):
        return BYPASS, "credentials"
    if cache_control:
        directives = parse_cache_control(cache_control)
        if "no-store" in directives:
            return BYPASS, "no-store"
        if "no-cache" in directives:
            return REFRESH, "no-cache"
        if "max-age" in directives and not delta_seconds(directives["max-age"]):
            return REFRESH, "no-cache"
    elif any(token.strip().lower() == b"no-cache" for value in pragma for token in value.split(b",")):
        return REFRESH, "no-cache"
    return LOOKUP, ""


_NO_PAIRS: Final = (0).to_bytes(8, "big")


def _part(data: bytes | None) -> bytes:
    """One part of a key: tagged (absent or present) and length-prefixed."""
    if data is None:
        return b"\x00"
    return b"\x01" + len(data).to_bytes(8, "big") + data


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def cache_key(
    rules: CacheRules,
    route_id: str,
    host: str,
    path: str,
    query: str,
    headers: Headers,
    identity: str | None,
) -> bytes:
    """The key of a request's entry: 64 lower-case hex ASCII bytes (see the module docstring), the
    SHA-256 of :func:`key_material`."""
    return digest(key_material(rules, route_id, host, path, query, headers, identity))


def digest(material: bytes) -> bytes:
    """The fixed-length key (lower-case hex SHA-256) of a key's material, for Redis."""
    return hashlib.sha256(material).hexdigest().encode("ascii")


def key_material(
    rules: CacheRules,
    route_id: str,
    host: str,
    path: str,
    query: str,
    headers: Headers,
    identity: str | None,
) -> bytes:
    """The unambiguous encoding of everything a key depends on (see the module docstring). The memory
    store keys on it as it is (no hash to compute on a hit; its length counts against the store's
    bound); Redis on its :func:`digest`."""
    r, h, p = _utf8(route_id), _utf8(host.lower()), _utf8(path)
    parts = [
        b"%s\x01%s%s\x01%s%s\x01%s%s"
        % (
            _KEY_VERSION,
            len(r).to_bytes(8, "big"),
            r,
            len(h).to_bytes(8, "big"),
            h,
            len(p).to_bytes(8, "big"),
            p,
        )
    ]
    wanted = rules.key_query_params
    if wanted == "none" or not query:
        parts.append(_NO_PAIRS)
    else:
        # surrogateescape: undecodable escapes stay distinct (errors="replace" would make %FF == %FE).
        pairs = parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="surrogateescape")
        if wanted != "all":
            pairs = [pair for pair in pairs if pair[0] in wanted]
        pairs.sort()
        parts.append(len(pairs).to_bytes(8, "big"))
        for param, param_value in pairs:
            parts.append(_part(_utf8(param)))
            parts.append(_part(_utf8(param_value)))
    if rules.key_headers:
        found: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            lower = name.lower()
            if lower in rules.key_headers:
                found.setdefault(lower, []).append(value.strip(b" \t"))
        for name in rules.key_headers:
            lines = found.get(name)
            parts.append(_part(name))
            parts.append(_part(None if lines is None else b",".join(lines)))
    if rules.per_user:
        parts.append(_part(None if identity is None else _utf8(identity)))
    return b"".join(parts)


def _vary_names(values: list[bytes]) -> tuple[bytes, ...] | None:
    """The lower-case names of the Vary lines, deduplicated in order; None for ``Vary: *``."""
    names: list[bytes] = []
    for value in values:
        for element in value.split(b","):
            name = element.strip(b" \t").lower()
            if name == b"*":
                return None
            if name and name not in names:
                names.append(name)
    return tuple(names)


def _lifetime(
    rules: CacheRules, directives: dict[str, str | None], expires: list[bytes], date: list[bytes], now: float
) -> float:
    """The freshness lifetime the response was given (before its age is subtracted)."""
    for name in ("s-maxage", "max-age"):
        if name in directives:
            return float(delta_seconds(directives[name]) or 0)
    if expires:
        value = _one(expires)
        expires_at = None if value is None else http_date(value)
        if expires_at is None:
            return 0.0  # invalid (such as "0") or conflicting: already expired
        date_value = _one(date)
        date_at = None if date_value is None else http_date(date_value)
        return expires_at - (now if date_at is None else date_at)
    return float(rules.ttl)


def decide_store(
    rules: CacheRules,
    status: int,
    headers: Headers,
    *,
    now: float,
    content_length: int | None,
    private_ok: bool,
    credentials: bool = False,
) -> StoreDecision:
    """Whether to store this response to a ``GET``, for how long, under which Vary names: see the module
    docstring. ``now``: wall-clock epoch seconds; ``private_ok``: the key holds the user's identity;
    ``credentials``: the request carried credentials."""
    if status not in CACHEABLE_STATUSES:
        return _refuse("status")
    cache_control: list[bytes] = []
    expires: list[bytes] = []
    date: list[bytes] = []
    age: list[bytes] = []
    vary: list[bytes] = []
    set_cookie = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"cache-control":
            cache_control.append(value)
        elif lower == b"expires":
            expires.append(value)
        elif lower == b"date":
            date.append(value)
        elif lower == b"age":
            age.append(value)
        elif lower == b"vary":
            vary.append(value)
        elif lower == b"set-cookie":
            set_cookie = True
    directives = parse_cache_control(cache_control)
    if "no-store" in directives:
        return _refuse("no-store")
    if "private" in directives and not private_ok:
        return _refuse("private")
    if "no-cache" in directives:
        return _refuse("no-cache")
    if (
        credentials
        and not private_ok
        and directives.keys().isdisjoint(("public", "s-maxage", "must-revalidate"))
    ):
        return _refuse("authorization")
    if set_cookie:
        return _refuse("set-cookie")
    names = _vary_names(vary)
    if names is None:
        return _refuse("vary-star")
    if content_length is not None and content_length > rules.max_entry_bytes:
        return _refuse("too-large")
    age_value = _one(age)
    current_age = float((None if age_value is None else delta_seconds(age_value)) or 0)
    lifetime = _lifetime(rules, directives, expires, date, now) - current_age
    if not lifetime > 0:
        return _refuse("stale")
    return StoreDecision(True, "", lifetime, current_age, names)
