"""Rate limiting per route: GCRA in memory (the ``Local`` scope, and ``Global``'s fallback), and its headers.

A route's ``rateLimit`` (``requestsPerSecond`` R, ``burst`` B, a key kind) gets one :class:`Gcra` per
replica for the Local scope; the Global scope evaluates the same algorithm in Redis
(:mod:`kubegate.dataplane.redislimit`) and falls back to a :class:`ReplicaShare` (R and B shared by the
replicas, see below) while Redis is away. This module is pure: no I/O, no clock of its own (``now`` is
passed in, monotonic seconds), O(1) per call, so the proxy can call it inline on the request head.

**GCRA** (the generic cell rate algorithm, a token bucket kept as one number per key): each key has a
*theoretical arrival time* TAT; a request at ``now`` is admitted when ``TAT - now <= tau`` and then moves
TAT to ``max(TAT, now) + 1/R``; a refused request changes nothing (hammering does not push a client's
window further out). ``tau = B / R``. What that means, exactly:

- a fresh key (or one idle for ``(B + 1) / R`` seconds: its bucket is full) admits **B + 1** requests at
  the same instant: the one the rate allows now plus ``burst`` extra, as the API says;
- from a full bucket, a key flooded with requests over the half-open window ``[t, t + T)`` is admitted
  exactly ``ceil(R * T) + B`` of them, and no window of length T ever admits more (so "R sustained plus B
  at once": 100/s with burst 200 admits 1200 in 10 s);
- the admitted requests then come one per ``1/R`` seconds; fractional rates work the same way
  (R = 0.5: one request every 2 s), and ``burst: 0`` is a strict ``1/R`` spacing.

:class:`Decision` says ``allowed``, ``retry_after`` (seconds until a request would be admitted, 0 when
this one was), ``remaining`` (requests that would still be admitted at this instant, after this one) and
``reset`` (seconds until the key's bucket is full again, when it would admit B + 1 at once). Times are
floats; comparisons allow :data:`EPSILON` (a microsecond) for the rounding of repeated additions.

**Key table**: a key whose TAT is in the past has a full bucket and needs no entry, so the table only
holds keys that are being limited; it is an LRU of at most ``max_keys`` entries (the order of last use,
refusals included, so that a hammering client stays at the young end). A new key first drops the oldest
entries whose TAT has passed (at most a few per call: O(1) amortised); when the table is still full, the
least recently used key is evicted (counted in ``evicted``), which hands that client a full bucket early.
A flood of distinct keys therefore costs at most ``max_keys`` entries, never unbounded memory. Keys longer
than :data:`MAX_KEY_LENGTH` (a client-chosen header value, say) are replaced by a 128-bit BLAKE2b digest,
so that an entry's size is bounded too.

**Headers** (draft-ietf-httpapi-ratelimit-headers-09, Structured Fields): :class:`RateLimitHeaders`,
built once per route, holds ``ratelimit-policy: "<name>";q=<quota>;w=<window>``, where the window ``w``
is 1 s (or the whole seconds one request takes, for rates under 1/s) and ``q = ceil(R * w) + B`` is the
most a window of ``w`` seconds can admit; :func:`ratelimit_headers` adds, per response,
``ratelimit: "<name>";r=<remaining>;t=<reset in whole seconds, rounded up>`` and, on a refusal,
``retry-after`` (whole seconds, rounded up, at least 1). Header lines are lower-case ``name: value``
bytes, as :mod:`kubegate.dataplane.httpbits` builds them.

:class:`LocalLimiter` binds a :class:`Gcra` to a clock and has the shape the proxy calls for both scopes
(:class:`Limiter`): ``decide(key, resume)`` returns the decision now, or None when it must wait (the
Global scope, while Redis answers) and calls ``resume(decision)`` later.

**The replicas' share** (the Global scope without Redis, or while Redis is away): each replica enforces
``R / N`` and ``B // N``, N being the number of data-plane replicas, so that N replicas together admit
about the Global limit. N is run-time state, not part of the route table: the operator tells each replica
(``PUT /replicas`` on the admin API, or the ``kubegate-replicas`` header of a table push) whenever the
replica set changes, often with the table unchanged; standalone, and until told, it is 1. It is kept in
one :class:`ReplicaCount` per process, shared by every route; a :class:`ReplicaShare` (the fallback's
GCRA) compares the count with the share it was sized for on each check (one integer comparison) and,
when they differ, resizes itself in place (:meth:`Gcra.resize`) before deciding. So a new count takes
effect at the next request of every route, with no table rebuild, and the admin thread only ever writes
one attribute: the buckets are changed on the traffic loop, by the check itself. Resizing keeps every
key's TAT (the instant its bucket is full again): ``tau = B / R`` is about the same at any share (both
are divided by N), so a client that had used up its bucket stays limited for about as long, and the new
spacing ``N / R`` applies from its next admitted request.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Final, Protocol

__all__ = [
    "EPSILON",
    "MAX_KEYS",
    "MAX_KEY_LENGTH",
    "MAX_REPLICAS",
    "Decision",
    "Gcra",
    "Key",
    "Limiter",
    "LocalLimiter",
    "RateLimitHeaders",
    "ReplicaCount",
    "ReplicaShare",
    "compact_key",
    "parse_replicas",
    "policy_window",
    "ratelimit_headers",
    "retry_after_seconds",
    "validate",
]

Key = str | bytes
#: Default bound of a :class:`Gcra`'s key table.
MAX_KEYS: Final = 100_000
#: Keys longer than this (characters of a str, bytes of a bytes) are stored as a digest.
MAX_KEY_LENGTH: Final = 64
#: Slack of the time comparisons (seconds): repeated additions of ``1/R`` round.
EPSILON: Final = 1e-6
#: Expired entries dropped from the old end of the table per new key, at most.
_SWEEP: Final = 4
#: The most replicas a :class:`ReplicaCount` accepts (a sanity bound on what the operator sends).
MAX_REPLICAS: Final = 10_000


class Decision:
    """The answer for one request (see the module docstring); times in seconds. A plain class rather than
    a NamedTuple: compiled by mypyc it is a native object, where a NamedTuple's ``__new__`` would run as
    interpreted code on every rate-limited request."""

    __slots__ = ("allowed", "remaining", "reset", "retry_after")

    def __init__(self, allowed: bool, retry_after: float, remaining: int, reset: float) -> None:
        self.allowed = allowed
        self.retry_after = retry_after
        self.remaining = remaining
        self.reset = reset

    def _fields(self) -> tuple[bool, float, int, float]:
        return (self.allowed, self.retry_after, self.remaining, self.reset)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Decision(allowed={self.allowed!r}, retry_after={self.retry_after!r}, "
            f"remaining={self.remaining!r}, reset={self.reset!r})"
        )


def compact_key(key: Key) -> Key:
    """``key`` itself, or for one longer than :data:`MAX_KEY_LENGTH` a tagged 128-bit digest of it."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    # NUL cannot occur in a header value or an address, so no short key can look like a digest.
    return b"\x00#" + hashlib.blake2b(raw, digest_size=16).digest()


def validate(rate: float, burst: float) -> None:
    """ValueError unless ``rate`` is a positive finite number and ``burst`` a whole number >= 0 (a float
    that is not whole is refused here, as the compiled build could not refuse it by its type)."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests per second, not {rate!r}")
    if burst < 0 or burst != int(burst):
        raise ValueError(f"burst must be a whole number >= 0, not {burst!r}")


class Gcra:
    """GCRA over a bounded table of keys (see the module docstring).

    ``rate``: requests per second (> 0, may be fractional); ``burst``: extra requests at once (>= 0).
    Counters: ``allowed``, ``denied``, ``evicted`` (keys dropped from a full table before their bucket
    was full again).
    """

    __slots__ = ("_interval", "_table", "_tau", "allowed", "burst", "denied", "evicted", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, *, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys!r}")
        self.max_keys = max_keys
        # key -> TAT, least recently used first (a plain dict keeps insertion order: "move to the end" is
        # a delete and an insert, which the compiled build does without a method call)
        self._table: dict[Key, float] = {}
        self.resize(rate, burst)
        self.allowed = 0
        self.denied = 0
        self.evicted = 0

    def resize(self, rate: float, burst: float) -> None:
        """Enforce ``rate`` and ``burst`` from now on, keeping the table: every key keeps its TAT (see
        "The replicas' share" in the module docstring). ValueError (and nothing changed) for bad values."""
        validate(rate, burst)
        self.rate = float(rate)
        self.burst = int(burst)
        self._interval = 1.0 / self.rate
        self._tau = self.burst * self._interval

    def check(self, key: Key, now: float) -> Decision:
        """Admit or refuse one request of ``key`` at ``now`` (monotonic seconds); admitting consumes."""
        if len(key) > MAX_KEY_LENGTH:
            key = compact_key(key)
        table = self._table
        stored = table.get(key)
        tat: float = now
        if stored is not None:
            del table[key]  # put back below, as the most recently used
            if stored > now:
                tat = stored
        ahead = tat - now
        tau = self._tau
        if ahead > tau + EPSILON:
            self.denied += 1
            table[key] = tat  # (it was stored: its TAT is in the future)
            return Decision(False, ahead - tau, 0, ahead)
        self.allowed += 1
        tat += self._interval
        if stored is None:
            self._insert(key, tat, now)
        else:
            table[key] = tat
        ahead = tat - now
        return Decision(True, 0.0, math.floor((tau - ahead) * self.rate + EPSILON) + 1, ahead)

    def _insert(self, key: Key, tat: float, now: float) -> None:
        table = self._table
        for _ in range(_SWEEP):  # the oldest entries are the likeliest to be full buckets again
            if not table:
                break
            oldest, oldest_tat = next(iter(table.items()))
            if oldest_tat > now:
                break
            del table[oldest]
        if len(table) >= self.max_keys:
            del table[next(iter(table))]
            self.evicted += 1
        table[key] = tat

    def forget(self, now: float) -> int:
        """Drop every entry whose bucket is full again (O(n): for a timer, not the hot path); how many."""
        expired = [key for key, tat in self._table.items() if tat <= now]
        for key in expired:
            del self._table[key]
        return len(expired)

    def __len__(self) -> int:
        """Keys in the table (keys being limited, plus full ones not swept yet)."""
        return len(self._table)

    def __bool__(self) -> bool:
        # Stated, not left to __len__: compiled by mypyc, "if x" on an "X | None" tests only for None
        # unless X defines __bool__.
        return len(self) > 0

    def __repr__(self) -> str:
        return (
            f"<Gcra {self.rate:g}/s burst={self.burst} keys={len(self._table)}/{self.max_keys}"
            f" allowed={self.allowed} denied={self.denied} evicted={self.evicted}>"
        )


def parse_replicas(value: object) -> int:
    """A replica count as the admin API receives it (a JSON value): a whole number (an int, not a float
    or a string) from 1 to :data:`MAX_REPLICAS`; ValueError naming what is wrong otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"replicas must be a whole number, not {str(value)[:40]!r}")
    if not 1 <= value <= MAX_REPLICAS:
        raise ValueError(f"replicas must be from 1 to {MAX_REPLICAS}, not {value}")
    return value


class ReplicaCount:
    """How many data-plane replicas share a Global limit (see "The replicas' share" in the module
    docstring): one per process, written by the admin API's thread, read by the traffic loop."""

    __slots__ = ("count",)

    def __init__(self, count: int = 1) -> None:
        self.count = parse_replicas(count)

    def set(self, count: int) -> int:
        """Make it ``count`` (ValueError, and nothing changed, unless :func:`parse_replicas` accepts
        it); returns the previous count."""
        count = parse_replicas(count)
        previous, self.count = self.count, count
        return previous

    def __repr__(self) -> str:
        return f"<ReplicaCount {self.count}>"


class ReplicaShare(Gcra):
    """A :class:`Gcra` at this replica's share of ``rate`` and ``burst``: ``rate / N`` and ``burst // N``
    for the current count N of ``replicas``, resized in place when N changes (see the module docstring).
    ``full_rate`` and ``full_burst`` are the route's whole limit, ``share`` the N it is sized for."""

    __slots__ = ("full_burst", "full_rate", "replicas", "share")

    def __init__(
        self, rate: float, burst: float, replicas: ReplicaCount, *, max_keys: int = MAX_KEYS
    ) -> None:
        validate(rate, burst)
        self.full_rate = float(rate)
        self.full_burst = int(burst)
        self.replicas = replicas
        self.share = share = replicas.count
        super().__init__(self.full_rate / share, self.full_burst // share, max_keys=max_keys)

    def check(self, key: Key, now: float) -> Decision:
        share = self.replicas.count
        if share != self.share:
            self.resize(self.full_rate / share, self.full_burst // share)
            self.share = share
        return Gcra.check(self, key, now)

    def __repr__(self) -> str:
        whole = f"{self.full_rate:g}/s burst={self.full_burst}"
        return f"<ReplicaShare 1/{self.share} of {whole}: {Gcra.__repr__(self)}>"


class Limiter(Protocol):
    """What the proxy calls for a rate-limited route, whatever the scope."""

    def decide(self, key: Key, resume: Callable[[Decision], None]) -> Decision | None:
        """The decision now; or None, and then ``resume(decision)`` is called once, later, from the loop."""
        ...


class LocalLimiter:
    """A :class:`Gcra` on a clock: the Local scope. ``decide`` always answers at once."""

    __slots__ = ("clock", "gcra")

    def __init__(self, gcra: Gcra, clock: Callable[[], float]) -> None:
        self.gcra = gcra
        self.clock = clock

    def check(self, key: Key) -> Decision:
        return self.gcra.check(key, self.clock())

    def decide(self, key: Key, resume: Callable[[Decision], None]) -> Decision:
        return self.gcra.check(key, self.clock())

    def __repr__(self) -> str:
        return f"<LocalLimiter {self.gcra!r}>"


def policy_window(rate: float) -> int:
    """The ``w`` of ``RateLimit-Policy``: 1 s, or for rates under 1/s the whole seconds one request takes."""
    return 1 if rate >= 1 else math.ceil(1 / rate - EPSILON)


def _sf_string(name: str) -> bytes:
    """``name`` as a Structured Fields String (printable ASCII; others become ``?``)."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in name)
    return b'"' + clean.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


class RateLimitHeaders:
    """What a route's rate-limit headers need, computed once when the route is loaded.

    ``policy`` is the ``ratelimit-policy: "<name>";q=<quota>;w=<window>`` line (shared by every response
    of the route); ``name`` the policy's name as a Structured Fields String.
    """

    __slots__ = ("burst", "name", "policy", "quota", "rate", "window")

    def __init__(self, name: str, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.window = policy_window(rate)
        self.quota = math.ceil(rate * self.window - EPSILON) + burst
        self.name = _sf_string(name)
        self.policy = b"ratelimit-policy: %s;q=%d;w=%d" % (self.name, self.quota, self.window)

    def __repr__(self) -> str:
        return f"<RateLimitHeaders {self.policy.decode()}>"


def retry_after_seconds(decision: Decision) -> int:
    """``Retry-After`` for a refusal: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(decision.retry_after - EPSILON))


def ratelimit_headers(limit: RateLimitHeaders, decision: Decision) -> list[bytes]:
    """The header lines for a response of the route: ``ratelimit-policy``, ``ratelimit:
    "<name>";r=<remaining>;t=<reset>`` and, when refused, ``retry-after`` (so a 429 built with these
    needs no ``retry_after`` of its own). A new list each time: the caller may extend it."""
    reset = max(0, math.ceil(decision.reset - EPSILON))
    lines = [limit.policy, b"ratelimit: %s;r=%d;t=%d" % (limit.name, decision.remaining, reset)]
    if not decision.allowed:
        lines.append(b"retry-after: %d" % retry_after_seconds(decision))
    return lines
