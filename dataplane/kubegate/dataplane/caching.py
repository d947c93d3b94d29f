"""A route's response cache at run time: the lookup point, single flight, and the fill of a miss.

The decisions are pure and live elsewhere: what may be looked up or stored, for how long, under which key
(:mod:`kubegate.dataplane.policies.cachecontrol`, RFC 9111 for a shared cache), and the entry and the
in-memory LRU (:mod:`kubegate.dataplane.policies.cachestore`). This module wires them to the proxy's
exchange at two named points:

1. :meth:`RouteCache.lookup`, after the edge request point (so auth has established the identity and the
   rate limit has counted the request: a hit is still a request), before a backend is chosen. It returns
   True when the request goes upstream (with a :class:`Fill` on its :class:`Visit`, ``ex.cache``, when
   the response may be stored) and False when it was answered from the cache (``ex.from_cache``) or has
   to wait: for Redis's answer, or for another request that is already fetching the same key. The
   exchange then starts over from the edge point (``ex.restart``) with what it waited for in ``visit.entry``;
   ``visit.state`` says which wait it was, so that a request waits at most once for each.
2. :class:`Fill`, on the upstream's response: :meth:`Fill.head` decides whether it is stored and gives
   the ``X-Cache`` line, :meth:`Fill.body` keeps the body while it fits ``maxEntryBytes`` (a larger one
   streams on, uncached), :meth:`Fill.complete` stores it, and :meth:`Fill.release` (from the exchange's
   end, whatever it was) hands the entry, or nothing, to the requests that waited.

**Single flight**: concurrent misses for one key in one replica wait for the first one's response instead
of each going upstream. A waiter gets the entry directly from the leader (not from the store: a Redis
``SET`` may still be on its way). When the leader's response cannot be stored, or the leader fails, the
waiters go upstream each on their own (they do not queue behind one another); a waiter never waits longer
than :data:`FLIGHT_WAIT` seconds. With the ``Redis`` store the leader is chosen before Redis is asked (the
first request that finds no flight; the others wait on it from the start, so one lookup per key and
replica is in flight) and it leads across replicas too (:class:`RedisFill`): its lookup is one script that
reads the entry and, when there is none, takes the key's **fill lock** (``kubegate:cache-lock:`` + the
entry's digest, a random token, ``NX``, :data:`LOCK_TTL` seconds). The holder goes upstream, then stores
the entry and deletes the lock in one script (or deletes the lock alone, token checked, when nothing is
stored). A leader that finds the lock taken reads the entry again every :data:`LOCK_POLL` seconds and
answers from it, as a ``HIT``; when the lock goes away without an entry, or after :data:`LOCK_WAIT`
seconds (a holder that died, a slow fill), it goes upstream without a lock: a lock never stalls a request
longer than that bound, one poll interval and one Redis budget. So a stampede on a cold key reaches the
backend once in all, or at worst once per replica. The lock outcomes are counted
(``kubegate_cache_fill_lock_total``), and ``remoteWaiting`` (``/health``, ``/routes``) says how many
requests wait for another replica's fill. The memory store never meets any of it.

**Stores**: ``Memory`` is the replica's :class:`~kubegate.dataplane.policies.cachestore.MemoryStore`
(``--cache-memory-bytes``), shared by every route, keyed by the key's material itself (no hash to compute
on a hit); ``Redis`` keeps entries under ``kubegate:cache:`` + the material's SHA-256, with a TTL of
their freshness lifetime, through the same :class:`~kubegate.dataplane.redislimit.RedisBackend`
as the Global rate limits (one budget of 50 ms, one backoff, one log line per outage). While Redis does not
answer, requests bypass the cache (``X-Cache: BYPASS``, counted with reason ``redis``; a leader's waiters
with it), and no lock is taken or waited for: never a 5xx.

``X-Cache`` is ``HIT`` (answered from the cache, with ``Age``), ``MISS`` (looked up or refreshed, then
fetched) or ``BYPASS`` (not eligible: see
:func:`~kubegate.dataplane.policies.cachecontrol.classify_request`, or Redis away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Container, Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kubegate.compiler.edge import Cache
from kubegate.dataplane.policies.cachecontrol import (
    BYPASS,
    REFRESH,
    CacheRules,
    StoreDecision,
    classify_request,
    decide_store,
    digest,
    key_material,
    vary_values,
)
from kubegate.dataplane.policies.cachestore import CachedResponse, MemoryStore
from kubegate.dataplane.redislimit import NO_REPLY, RedisBackend

logger = logging.getLogger("kubegate.cache")

#: The default size of a replica's in-memory cache (``--cache-memory-bytes``).
DEFAULT_MEMORY_BYTES = 64 * 1024 * 1024
#: Seconds a request waits for another one fetching the same key before it goes upstream itself.
FLIGHT_WAIT = 10.0
#: Prefix of the entries' keys in Redis.
REDIS_PREFIX = b"kubegate:cache:"
#: Prefix of the fill locks' keys in Redis (followed by the same digest as the entry's key).
LOCK_PREFIX = b"kubegate:cache-lock:"
#: Seconds a replica waits for another replica's fill of a key (its lock) before going upstream itself.
#: One second: a cold key's fill is one upstream request, usually well under it, and a request must not
#: pay much more than that for a lock whose holder died or a fill that is slow.
LOCK_WAIT = 1.0
#: Seconds between two reads of the entry while waiting (the wait costs Redis at most 40 reads per key and
#: replica, and the answer reaches the waiters at most this late).
LOCK_POLL = 0.025
#: Lifetime of a fill lock in Redis, in seconds. It only has to outlive a normal fill (the holder deletes
#: it as it stores the entry, or when the fill fails); it is the bound on how long a lock whose holder died
#: (a crash, a partition, its delete lost with Redis) keeps making other replicas' first requests wait
#: (each at most LOCK_WAIT). Three times LOCK_WAIT: a fill that takes longer than the wait has lost its
#: waiters already, but a newcomer still waits for it rather than fetching the same key a second time.
LOCK_TTL = 3.0

#: KEYS[1]: the entry, KEYS[2]: its fill lock; ARGV[1]: a token, ARGV[2]: the lock's lifetime (ms).
#: Reply: the entry when there is one; else 1 (the lock was free and is now ours) or 0 (someone holds it).
LOOKUP_SCRIPT = """\
local entry = redis.call('GET', KEYS[1])
if entry then return entry end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
#: KEYS as LOOKUP_SCRIPT's. Reply: the entry; else 1 (the lock is still held) or 0 (it is gone).
POLL_SCRIPT = """\
local entry = redis.call('GET', KEYS[1])
if entry then return entry end
return redis.call('EXISTS', KEYS[2])
"""
#: KEYS as LOOKUP_SCRIPT's; ARGV[1]: our token, then optionally ARGV[2]: the entry, ARGV[3]: its TTL (ms).
#: Stores the entry (when given) and deletes the lock if it still holds our token, in one step: a waiter
#: never sees the lock gone before the entry is there, and never deletes a lock taken after ours expired.
UNLOCK_SCRIPT = """\
if ARGV[2] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
#: Outcomes of the fill lock (``kubegate_cache_fill_lock_total{result}``).
LOCK_RESULTS = ("acquired", "waited_hit", "waited_miss", "waited_timeout", "unavailable")

X_HIT = b"x-cache: HIT"
X_MISS = b"x-cache: MISS"
X_BYPASS = b"x-cache: BYPASS"

# Visit.state: what the request has waited for already.
FRESH, ASKED_REDIS, WAITED, REDIS_AWAY = 0, 1, 2, 3


class Exchange(Protocol):
    """What the cache needs of the proxy's exchange."""

    method: bytes
    raw_headers: list[tuple[bytes, bytes]]
    identity: str | None
    chunked: bool
    content_length: int | None
    cache: Visit | None

    def from_cache(self, entry: CachedResponse, age: int, not_modified: bool) -> None: ...
    def restart(self) -> None: ...


class Visit:
    """One request's dealings with its route's cache, kept on the exchange (``ex.cache``, None for routes
    without a cache: the proxy's hot path tests that one attribute): what it waited for (``state``,
    ``entry``), the fill of its miss, and the ``X-Cache`` line of a response from upstream."""

    __slots__ = ("entry", "fill", "mark", "state")

    def __init__(self) -> None:
        self.state = FRESH
        self.entry: CachedResponse | None = None
        self.fill: Fill | None = None
        self.mark: bytes | None = None

    def body(self, data: bytes) -> None:
        if self.fill is not None:
            self.fill.body(data)

    def complete(self) -> None:
        if self.fill is not None:
            self.fill.complete()

    def release(self) -> None:
        fill, self.fill = self.fill, None
        if fill is not None:
            fill.release()


class CacheContext:
    """What every route's cache shares in one replica, across tables: the memory store, the Redis backend
    (None without ``--redis-url``), the flights in progress, the wall clock (``Age`` and ``Expires`` are
    wall-clock times) and the counters that ``/metrics`` and ``/health`` show."""

    def __init__(
        self,
        memory: MemoryStore | None = None,
        redis: RedisBackend | None = None,
        *,
        clock: Callable[[], float] = time.time,
        flight_wait: float = FLIGHT_WAIT,
        lock_wait: float = LOCK_WAIT,
        lock_poll: float = LOCK_POLL,
        lock_ttl: float = LOCK_TTL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.memory = memory if memory is not None else MemoryStore(DEFAULT_MEMORY_BYTES)
        self.redis = redis
        self.clock = clock
        self.flight_wait = flight_wait
        self.flights: dict[bytes, Flight] = {}
        #: The fill lock (Redis): the bounded wait, read on ``monotonic``, the poll interval, the lifetime.
        self.lock_wait = lock_wait
        self.lock_poll = lock_poll
        self.lock_ttl_ms = max(1, int(lock_ttl * 1000))
        self.monotonic = monotonic
        #: Leaders waiting for another replica's fill (each with its flight's waiters behind it).
        self.remote: set[RedisFill] = set()
        #: Tokens of this replica's locks: a random prefix (per process) and a counter.
        self._token_prefix = os.urandom(8).hex().encode() + b"-"
        self._tokens = 0
        self.lookup_sha = self.poll_sha = self.unlock_sha = ""
        if redis is not None:
            self.lookup_sha = redis.script(LOOKUP_SCRIPT)
            self.poll_sha = redis.script(POLL_SCRIPT)
            self.unlock_sha = redis.script(UNLOCK_SCRIPT)
        #: (route, result) -> count; result is hit, miss or bypass
        self.lookups: dict[tuple[str, str], int] = {}
        #: (route, reason) -> bypassed requests
        self.bypassed: dict[tuple[str, str], int] = {}
        #: route -> responses stored
        self.stored: dict[str, int] = {}
        #: (route, result) -> fill lock outcomes (LOCK_RESULTS)
        self.locks: dict[tuple[str, str], int] = {}

    def count(self, route: str, result: str) -> None:
        key = (route, result)
        self.lookups[key] = self.lookups.get(key, 0) + 1

    def bypass(self, route: str, reason: str) -> None:
        self.count(route, "bypass")
        key = (route, reason)
        self.bypassed[key] = self.bypassed.get(key, 0) + 1

    def lock(self, route: str, result: str) -> None:
        key = (route, result)
        self.locks[key] = self.locks.get(key, 0) + 1

    def token(self) -> bytes:
        """A new fill lock token, unique across replicas (the random prefix) and in this one."""
        self._tokens += 1
        return b"%s%d" % (self._token_prefix, self._tokens)

    def status(self) -> dict[str, Any]:
        """For ``/health``: the memory store's size, the flights in progress, the requests waiting for
        another request's fill (``waiting``) and, of those and their leaders, the ones waiting for
        another replica's fill (``remoteWaiting``)."""
        flights = list(self.flights.values())
        remote = list(self.remote)
        return {
            "memory": self.memory.status(),
            "flights": len(flights),
            "waiting": sum(len(flight.waiters) for flight in flights),
            "remoteWaiting": sum(
                1 + (len(fill.flight.waiters) if fill.flight is not None else 0) for fill in remote
            ),
        }

    def retain(self, routes: Container[str]) -> None:
        """Drop the counters of routes a new table no longer has (``/metrics`` must not grow with churn)."""
        for key in [k for k in self.lookups if k[0] not in routes]:
            del self.lookups[key]
        for key in [k for k in self.bypassed if k[0] not in routes]:
            del self.bypassed[key]
        for route in [r for r in self.stored if r not in routes]:
            del self.stored[route]
        for key in [k for k in self.locks if k[0] not in routes]:
            del self.locks[key]


class CacheCollector(Collector):
    """The cache's counters and the memory store's size for ``/metrics``, read at scrape time (the proxy
    bumps plain integers, as :mod:`kubegate.dataplane.stats` explains)."""

    def __init__(self, context: CacheContext) -> None:
        self._context = context

    def collect(self) -> Iterator[Any]:
        ctx = self._context
        requests = CounterMetricFamily(
            "kubegate_cache_requests",
            "Requests to routes with a cache, by result: hit (answered from the cache), miss (fetched), "
            "bypass (not eligible, or Redis unavailable)",
            labels=["route", "result"],
        )
        for (route, result), n in sorted(list(ctx.lookups.items())):
            requests.add_metric([route, result], n)
        yield requests
        bypassed = CounterMetricFamily(
            "kubegate_cache_bypassed",
            "Requests that bypassed a route's cache, by reason (method, body, range, credentials, no-store, "
            "redis: the Redis store did not answer)",
            labels=["route", "reason"],
        )
        for (route, reason), n in sorted(list(ctx.bypassed.items())):
            bypassed.add_metric([route, reason], n)
        yield bypassed
        stored = CounterMetricFamily("kubegate_cache_stored", "Responses stored, by route", labels=["route"])
        for route, n in sorted(list(ctx.stored.items())):
            stored.add_metric([route], n)
        yield stored
        locks = CounterMetricFamily(
            "kubegate_cache_fill_lock",
            "Fill locks of cold Redis keys, by result: acquired (this replica filled the key), waited_hit "
            "(another replica's fill arrived during the wait), waited_miss (its lock went away without an "
            "entry), waited_timeout (the wait reached its bound), unavailable (Redis did not answer)",
            labels=["route", "result"],
        )
        for (route, result), n in sorted(list(ctx.locks.items())):
            locks.add_metric([route, result], n)
        yield locks
        memory = ctx.memory.status()
        size = GaugeMetricFamily("kubegate_cache_memory_bytes", "Bytes held by the replica's memory cache")
        size.add_metric([], memory["bytes"])
        yield size
        entries = GaugeMetricFamily("kubegate_cache_memory_entries", "Entries in the replica's memory cache")
        entries.add_metric([], memory["entries"])
        yield entries
        evictions = CounterMetricFamily(
            "kubegate_cache_memory_evictions", "Entries the memory cache dropped to stay within its size"
        )
        evictions.add_metric([], memory["evictions"])
        yield evictions


class Flight:
    """The requests waiting for one key's fill; settled once (by the fill's end or the wait's timer)."""

    __slots__ = ("context", "key", "timer", "waiters")

    def __init__(self, context: CacheContext, key: bytes) -> None:
        self.context = context
        self.key = key
        self.waiters: list[Exchange] = []
        self.timer: asyncio.TimerHandle | None = None

    def wait(self, ex: Exchange) -> None:
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.context.flight_wait, self.settle, None)
        self.waiters.append(ex)

    def settle(self, entry: CachedResponse | None) -> None:
        """Wake every waiter with ``entry`` (None: go upstream alone) and end the flight."""
        self._end(WAITED, entry)

    def away(self) -> None:
        """Redis did not answer the leader (Redis store): every waiter bypasses the cache, as the leader
        does, and as each would have had it asked Redis itself."""
        self._end(REDIS_AWAY, None)

    def _end(self, state: int, entry: CachedResponse | None) -> None:
        """End the flight: every waiter starts over in ``state`` with ``entry``."""
        if self.context.flights.get(self.key) is self:
            del self.context.flights[self.key]
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiters, self.waiters = self.waiters, []
        for ex in waiters:
            visit = ex.cache
            if visit is not None:
                visit.state = state
                visit.entry = entry
            try:
                ex.restart()
            except Exception:  # one exchange's bug must not strand the others
                logger.exception("cache waiter failed to restart")


class RouteCache:
    """One route's ``cache`` policy, built once per table."""

    __slots__ = ("authenticated", "context", "redis", "route_id", "rules", "store")

    def __init__(
        self,
        policy: Cache,
        route_id: str,
        context: CacheContext,
        *,
        authenticated: bool = False,
    ) -> None:
        self.route_id = route_id
        self.context = context
        self.rules = CacheRules(
            ttl=policy.ttl_seconds,
            max_entry_bytes=policy.max_entry_bytes,
            key_query_params=policy.key_query_params,
            key_headers=tuple(h.encode("latin-1") for h in policy.key_headers),
            per_user=policy.per_user,
        )
        wanted = policy.store or ("Redis" if context.redis is not None else "Memory")
        #: The Redis backend when entries live in Redis (None: the memory store).
        self.redis = context.redis if wanted == "Redis" else None
        self.store = "Redis" if self.redis is not None else "Memory"
        #: The route has auth: every request that reaches the lookup point was admitted on a credential (a
        #: JWT or an API key, in a header or the query), so it counts as one without looking for it again.
        self.authenticated = authenticated

    # --- the lookup point --------------------------------------------------------------------------------
    def lookup(self, ex: Exchange, host: str, path: str, query: str) -> bool:
        """True: the request goes upstream (``ex.cache.fill`` set when its response may be stored);
        False: answered from the cache, or waiting (the exchange starts over later)."""
        ctx = self.context
        rules = self.rules
        headers = ex.raw_headers
        action, reason = classify_request(
            rules,
            ex.method,
            headers,
            has_body=ex.chunked or bool(ex.content_length),
            credentials=self.authenticated,
            identity=ex.identity,
        )
        visit = ex.cache
        if visit is None:
            visit = ex.cache = Visit()
        if action == BYPASS:
            return self._bypass(visit, reason)
        state = visit.state
        if state == REDIS_AWAY:
            return self._bypass(visit, "redis")
        key = key_material(
            rules, self.route_id, host, path, query, headers, ex.identity if rules.per_user else None
        )
        head_only = ex.method == b"HEAD"
        if action == REFRESH:  # the client asked for a fresh answer: fetch it, and store it for the others
            ctx.count(self.route_id, "miss")
            visit.mark = X_MISS
            if not head_only:
                visit.fill = Fill(self, key, None)
            return True
        now = ctx.clock()
        entry: CachedResponse | None = None
        if state == FRESH:
            flight = ctx.flights.get(key)
            if flight is not None and not head_only:
                flight.wait(ex)
                return False
            redis = self.redis
            if redis is not None:
                if redis.skipping:
                    return self._bypass(visit, "redis")
                visit.state = ASKED_REDIS
                if head_only:  # a HEAD response fills nothing: it only looks
                    redis.command((b"GET", REDIS_PREFIX + digest(key)), _redis_reply(ex, visit))
                    return False
                # This request leads the key's fill in this replica: its lookup takes the fill lock along
                flight = ctx.flights[key] = Flight(ctx, key)
                leader = RedisFill(self, key, flight, redis, ex, visit)
                visit.fill = leader
                leader.lookup()
                return False
            entry = ctx.memory.get(key, now)
        else:  # ASKED_REDIS or WAITED: what the wait brought (for a Redis leader: RedisFill.restart)
            entry, visit.entry = visit.entry, None
        if entry is not None and entry.fresh(now) and entry.matches(vary_values(entry.vary, headers)):
            ctx.count(self.route_id, "hit")
            ex.from_cache(entry, entry.age(now), _not_modified(entry, headers))
            return False
        ctx.count(self.route_id, "miss")
        visit.mark = X_MISS
        if head_only:  # a HEAD response has no body to store: it goes upstream as it is
            return True
        flight = None
        if state != WAITED:  # a request that waited once goes upstream alone
            flight = ctx.flights.get(key)
            if flight is not None:
                fill = visit.fill
                if fill is not None and fill.flight is flight:  # this request leads it (Redis): upstream
                    return True
                # another request started the fill while Redis answered this one
                visit.mark = None
                flight.wait(ex)
                return False
            flight = ctx.flights[key] = Flight(ctx, key)
        visit.fill = Fill(self, key, flight)
        return True

    def _bypass(self, visit: Visit, reason: str) -> bool:
        self.context.bypass(self.route_id, reason)
        visit.mark = X_BYPASS
        return True

    # --- storing -----------------------------------------------------------------------------------------
    def store_entry(self, fill: Fill, entry: CachedResponse, lifetime: float) -> None:
        redis = self.redis
        if redis is None:
            if self.context.memory.put(fill.key, entry):
                self._stored()
            return
        ttl_ms = max(1, int(lifetime * 1000))
        if isinstance(fill, RedisFill) and fill.locked:  # stored and unlocked in one step
            data = entry.encode()
            fill.locked = False
            redis.command(
                (
                    b"EVALSHA",
                    self.context.unlock_sha,
                    2,
                    REDIS_PREFIX + fill.digest,
                    LOCK_PREFIX + fill.digest,
                    fill.token,
                    data,
                    ttl_ms,
                ),
                self._redis_stored,
            )
            return
        redis.command(
            (b"SET", REDIS_PREFIX + digest(fill.key), entry.encode(), b"PX", ttl_ms), self._redis_stored
        )

    def _redis_stored(self, reply: Any) -> None:
        if reply is not NO_REPLY:
            self._stored()

    def _stored(self) -> None:
        stored = self.context.stored
        stored[self.route_id] = stored.get(self.route_id, 0) + 1

    def status(self) -> dict[str, Any]:
        """For ``/routes``: the store and the route's counters."""
        lookups = self.context.lookups
        rid = self.route_id
        return {
            "store": self.store,
            "hits": lookups.get((rid, "hit"), 0),
            "misses": lookups.get((rid, "miss"), 0),
            "bypassed": lookups.get((rid, "bypass"), 0),
            "stored": self.context.stored.get(rid, 0),
        }


def _redis_reply(ex: Exchange, visit: Visit) -> Callable[[Any], None]:
    def done(reply: Any) -> None:
        visit.entry = None
        if reply is NO_REPLY:
            visit.state = REDIS_AWAY
        elif reply is not None:
            # not ours, or from another version: a miss (the fill replaces it)
            with contextlib.suppress(ValueError):
                visit.entry = CachedResponse.decode(bytes(reply))
        ex.restart()

    return done


def _not_modified(entry: CachedResponse, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request's If-None-Match names the entry's ETag (weak comparison, RFC 9110 §13.1.2)."""
    inm = None
    for name, value in headers:
        if name.lower() == b"if-none-match":
            inm = value if inm is None else inm + b"," + value
    if inm is None or entry.status != 200:
        return False
    etag = None
    for line in entry.lines:
        name, _, value = line.partition(b":")
        if name.lower() == b"etag":
            etag = value.strip()
    if etag is None:
        return False
    if inm.strip() == b"*":
        return True
    bare = etag[2:] if etag.startswith(b"W/") else etag
    for tag in inm.split(b","):
        tag = tag.strip()
        if (tag[2:] if tag.startswith(b"W/") else tag) == bare:
            return True
    return False


class Fill:
    """A miss on its way from the upstream: decides, keeps the body, stores it, releases the waiters."""

    __slots__ = ("cache", "chunks", "decision", "entry", "flight", "key", "lines", "size", "status", "vary")

    def __init__(self, cache: RouteCache, key: bytes, flight: Flight | None) -> None:
        self.cache = cache
        self.key = key
        self.flight = flight
        self.decision: StoreDecision | None = None
        self.chunks: list[bytes] | None = None  # None: not storing
        self.size = 0
        self.status = 0
        self.lines: list[bytes] = []
        self.vary: tuple[bytes | None, ...] = ()
        self.entry: CachedResponse | None = None

    def head(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        lines: list[bytes],
        content_length: int | None,
        request_headers: list[tuple[bytes, bytes]],
        identity: str | None,
    ) -> None:
        """The upstream's response head: ``headers`` as received, ``lines`` the end-to-end lines the
        proxy will send (status line first, before the edge transforms), ``identity`` the one auth
        admitted. Decides whether to store (``private`` only into a per-user key with an identity)."""
        cache = self.cache
        decision = decide_store(
            cache.rules,
            status,
            headers,
            now=cache.context.clock(),
            content_length=content_length,
            private_ok=cache.rules.per_user and identity is not None,
        )
        self.decision = decision
        if not decision.store:
            return
        self.status = status
        self.lines = [line for line in lines[1:] if line[:4].lower() != b"age:"]
        self.vary = vary_values(decision.vary, request_headers)
        self.chunks = []

    def body(self, data: bytes) -> None:
        chunks = self.chunks
        if chunks is None:
            return
        self.size += len(data)
        if self.size > self.cache.rules.max_entry_bytes:
            self.chunks = None  # too large: it streams on, uncached
            return
        chunks.append(data)

    def complete(self) -> None:
        """The whole response arrived: store it (when it was storable and fitted)."""
        chunks, decision = self.chunks, self.decision
        if chunks is None or decision is None or not decision.store:
            return
        self.chunks = None
        now = self.cache.context.clock()
        entry = CachedResponse(
            status=self.status,
            lines=self.lines,
            body=b"".join(chunks),
            stored_at=now,
            expires_at=now + decision.lifetime,
            age_at_store=decision.age,
            vary=decision.vary,
            vary_values=self.vary,
        )
        self.entry = entry
        self.cache.store_entry(self, entry, decision.lifetime)

    def release(self) -> None:
        """The exchange ended: the waiters get the entry, or go upstream on their own."""
        flight, self.flight = self.flight, None
        if flight is not None:
            flight.settle(self.entry)


class RedisFill(Fill):
    """The fill of a key whose entries live in Redis, by the replica's leader for that key (the first
    request that found no flight): the other requests of this replica wait on its flight, as for any fill.

    Its :meth:`lookup` reads the entry and, when there is none, takes the key's fill lock in the same
    script (:data:`LOOKUP_SCRIPT`). Lock taken (``locked``): the leader goes upstream; the entry is stored
    and the lock deleted in one script (:data:`UNLOCK_SCRIPT`), or the lock alone is deleted when nothing
    is stored (:meth:`release`). Lock held by another replica: the leader reads the entry again every
    ``lock_poll`` seconds (:data:`POLL_SCRIPT`) and answers from it as a hit when it comes; when the lock
    goes away without an entry, or after ``lock_wait`` seconds, it goes upstream without a lock. When Redis
    does not answer, the leader and its waiters bypass the cache. Each ending restarts the leader's
    exchange (``visit.state`` ASKED_REDIS, what it found in ``visit.entry``); :meth:`RouteCache.lookup`
    recognises its own flight and lets it go upstream.
    """

    __slots__ = ("deadline", "digest", "ex", "locked", "redis", "timer", "token", "visit")

    def __init__(
        self,
        cache: RouteCache,
        key: bytes,
        flight: Flight,
        redis: RedisBackend,
        ex: Exchange,
        visit: Visit,
    ) -> None:
        super().__init__(cache, key, flight)
        self.redis = redis
        self.ex: Exchange | None = ex  # None once released
        self.visit = visit
        self.digest = digest(key)
        self.token = cache.context.token()
        self.locked = False
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def lookup(self) -> None:
        ctx = self.cache.context
        d = self.digest
        self.redis.command(
            (b"EVALSHA", ctx.lookup_sha, 2, REDIS_PREFIX + d, LOCK_PREFIX + d, self.token, ctx.lock_ttl_ms),
            self._looked_up,
        )

    def _looked_up(self, reply: Any) -> None:
        if self.ex is None:  # the leader ended meanwhile (its client went away)
            if isinstance(reply, int) and reply == 1:  # a lock nobody will fill: give it back at once
                self._unlock()
            return
        if reply is NO_REPLY:
            self._away()
        elif isinstance(reply, int):
            if reply == 1:
                self.locked = True
                self.cache.context.lock(self.cache.route_id, "acquired")
                self._restart(None)
            else:  # another replica is filling it: wait for its entry
                ctx = self.cache.context
                self.deadline = ctx.monotonic() + ctx.lock_wait
                ctx.remote.add(self)
                self._schedule()
        else:
            self._restart(_decoded(reply))

    def _schedule(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.cache.context.lock_poll, self._poll)

    def _poll(self) -> None:
        self.timer = None
        if self.ex is None:
            return
        ctx = self.cache.context
        d = self.digest
        self.redis.command((b"EVALSHA", ctx.poll_sha, 2, REDIS_PREFIX + d, LOCK_PREFIX + d), self._polled)

    def _polled(self, reply: Any) -> None:
        if self.ex is None:
            return
        ctx = self.cache.context
        if reply is NO_REPLY:
            self._away()
            return
        if isinstance(reply, int):
            if reply != 0 and ctx.monotonic() < self.deadline:
                self._schedule()  # still filling elsewhere
                return
            result = "waited_miss" if reply == 0 else "waited_timeout"
            entry = None  # the other fill left nothing (or is too slow): go upstream, without a lock
        else:
            entry = _decoded(reply)
            result = "waited_hit" if entry is not None else "waited_miss"  # (not ours: replaced by our fill)
        ctx.remote.discard(self)
        ctx.lock(self.cache.route_id, result)
        self._restart(entry)

    def _restart(self, entry: CachedResponse | None) -> None:
        """Start the leader's exchange over with what it found: ``entry`` (a hit, if it is fresh and its
        Vary matches), or None (upstream, as this flight's leader)."""
        ex, visit = self.ex, self.visit
        if ex is None:
            return
        visit.state = ASKED_REDIS
        visit.entry = entry
        if entry is not None:
            self.entry = entry  # what the waiters get if the leader answers from it (see release)
        ex.restart()

    def _away(self) -> None:
        """Redis did not answer: the leader and its waiters bypass the cache (no fill, no lock)."""
        ex, visit = self.ex, self.visit
        ctx = self.cache.context
        ctx.remote.discard(self)
        ctx.lock(self.cache.route_id, "unavailable")
        self.ex = None
        if visit.fill is self:
            visit.fill = None
        flight, self.flight = self.flight, None
        if flight is not None:
            flight.away()
        if ex is not None:
            visit.state = REDIS_AWAY
            visit.entry = None
            ex.restart()

    def _unlock(self) -> None:
        d = self.digest
        ctx = self.cache.context
        self.redis.command(
            (b"EVALSHA", ctx.unlock_sha, 2, REDIS_PREFIX + d, LOCK_PREFIX + d, self.token), _ignore
        )

    def release(self) -> None:
        """The leader's exchange ended: stop waiting, give the lock back if nothing took it with an
        entry (:meth:`RouteCache.store_entry`), and hand the entry, or nothing, to the waiters."""
        self.ex = None
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        self.cache.context.remote.discard(self)
        if self.locked:
            self.locked = False
            self._unlock()
        super().release()


def _decoded(reply: Any) -> CachedResponse | None:
    """An entry read from Redis; None when it is not one of ours (or of another version): a miss, which
    the fill replaces."""
    try:
        return CachedResponse.decode(bytes(reply))
    except (TypeError, ValueError):
        return None


def _ignore(reply: Any) -> None:
    pass
