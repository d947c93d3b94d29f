"""The cross-replica fill lock of the Redis response cache (dataplane/caching.py, :class:`RedisFill`), driven
through :meth:`RouteCache.lookup` by small stand-ins of the proxy's exchange.

Aspects, on a fake backend (it records the commands; each test answers them) and an injected monotonic
clock, with no sleeping: the single-flight leader's lookup takes the lock in the same command; the lock
holder stores the entry and deletes the lock in one script, or deletes it alone when nothing is stored;
a lock held elsewhere makes the leader read the entry again until it comes (a hit for the leader and its
waiters), until the lock goes away without one (or a value that is not an entry comes), or until the
bounded wait ends with the lock still there (upstream, once per replica); Redis silent at the lookup or
during the wait: the leader and its waiters bypass; the leader's client going away releases its waiters,
stops the reads and gives back a lock taken meanwhile; HEAD only reads; the counters and
``remoteWaiting``. Against a real ``redis-server``: the scripts themselves (the token, the TTL, a foreign
token left alone, ``NOSCRIPT`` after a flush), and two replicas (two contexts on one Redis) of which the
second answers from the first one's fill.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio

from kubegate.compiler.edge import Cache
from kubegate.dataplane import caching, redislimit
from kubegate.dataplane.caching import CacheCollector, CacheContext, RouteCache, Visit
from kubegate.dataplane.policies.cachecontrol import digest, key_material
from kubegate.dataplane.policies.cachestore import CachedResponse, MemoryStore
from kubegate.dataplane.redislimit import NO_REPLY, RedisBackend
from tests.redisserver import RedisServer, require_redis_server

ROUTE = "default/cached"
POLICY = Cache(ttlSeconds=60, maxEntryBytes=4096, store="Redis")
STORABLE = [(b"cache-control", b"max-age=60")]
NOT_STORABLE = [(b"cache-control", b"no-store")]


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeBackend(RedisBackend):
    """A backend that sends nothing: ``sent`` holds each command and its callback, for the test to answer."""

    def __init__(self) -> None:
        super().__init__(redis.asyncio.Redis())  # never connects: no command reaches it
        self.sent: list[tuple[tuple[Any, ...], Callable[[Any], None]]] = []
        self.down = False

    @property
    def skipping(self) -> bool:
        return self.down

    def command(self, command: tuple[Any, ...], done: Callable[[Any], None]) -> None:
        self.sent.append((command, done))

    def names(self) -> list[str]:
        """Each command sent, by what it is: GET, SET, or the script's name."""
        shas = {sha: name for name, sha in _shas(self).items()}
        return [shas.get(c[1], "?") if c[0] == b"EVALSHA" else c[0].decode() for c, _ in self.sent]

    def answer(self, reply: Any, index: int = -1) -> None:
        self.sent[index][1](reply)


def _shas(backend: RedisBackend) -> dict[str, str]:
    by_source = {source: sha for sha, source in backend.scripts.items()}
    return {
        "lookup": by_source[caching.LOOKUP_SCRIPT],
        "poll": by_source[caching.POLL_SCRIPT],
        "unlock": by_source[caching.UNLOCK_SCRIPT],
    }


class Ex:
    """The little of the proxy's exchange that the cache uses; ``start`` is the lookup point."""

    def __init__(self, cache: RouteCache, method: bytes = b"GET", path: str = "/cold") -> None:
        self.route = cache
        self.path = path
        self.method = method
        self.raw_headers: list[tuple[bytes, bytes]] = [(b"host", b"api.example.com")]
        self.identity: str | None = None
        self.chunked = False
        self.content_length: int | None = None
        self.cache: Visit | None = None
        self.done = False
        self.outcome = ""  # upstream, hit or waiting
        self.body = b""
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.outcome = "waiting"
        if self.route.lookup(self, "api.example.com", self.path, ""):
            self.outcome = "upstream"

    def restart(self) -> None:
        if not self.done:
            self.start()

    def from_cache(self, entry: CachedResponse, age: int, not_modified: bool) -> None:
        self.outcome = "hit"
        self.body = entry.body
        self.finish()

    def respond(self, body: bytes, headers: list[tuple[bytes, bytes]] = STORABLE) -> None:
        """The upstream's response to this request (which went upstream)."""
        assert self.outcome == "upstream", self.outcome
        visit = self.cache
        assert visit is not None
        fill = visit.fill
        if fill is not None:
            lines = [b"HTTP/1.1 200 OK", *(name + b": " + value for name, value in headers)]
            fill.head(200, headers, lines, len(body), self.raw_headers, self.identity)
            fill.body(body)
            fill.complete()
        self.body = body
        self.finish()

    def finish(self) -> None:
        """The exchange's end (an answer, or the client going away)."""
        self.done = True
        if self.cache is not None:
            self.cache.release()

    @property
    def mark(self) -> bytes | None:
        return self.cache.mark if self.cache is not None else None


def _entry(body: bytes, now: float) -> bytes:
    return CachedResponse(
        status=200,
        lines=[b"cache-control: max-age=60"],
        body=body,
        stored_at=now,
        expires_at=now + 60,
        age_at_store=0,
        vary=(),
        vary_values=(),
    ).encode()


@pytest.fixture
def wall() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
def mono() -> Clock:
    return Clock()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def ctx(backend: FakeBackend, wall: Clock, mono: Clock) -> CacheContext:
    return CacheContext(MemoryStore(1 << 20), backend, clock=wall, monotonic=mono, lock_poll=0.0)


@pytest.fixture
def route(ctx: CacheContext) -> RouteCache:
    return RouteCache(POLICY, ROUTE, ctx)


async def _until(predicate: Callable[[], bool], turns: int = 100) -> None:
    """Let the loop run (the wait's timers are due at once: lock_poll is 0) until ``predicate`` holds."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def _locks(ctx: CacheContext) -> dict[str, int]:
    return {result: n for (r, result), n in ctx.locks.items() if r == ROUTE}


async def test_the_leader_takes_the_lock_with_its_lookup_and_stores_and_unlocks_in_one_script(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache
) -> None:
    leader, waiter = Ex(route), Ex(route)
    leader.start()
    waiter.start()  # waits on the leader's flight: no command of its own
    assert (leader.outcome, waiter.outcome) == ("waiting", "waiting")
    assert backend.names() == ["lookup"]
    command = backend.sent[0][0]
    assert leader.cache is not None
    fill = leader.cache.fill
    assert isinstance(fill, caching.RedisFill)
    d = fill.digest
    assert command[2:] == (2, b"kubegate:cache:" + d, b"kubegate:cache-lock:" + d, fill.token, 3000)
    assert ctx.status()["waiting"] == 1

    backend.answer(1)  # the lock was free: ours
    assert leader.outcome == "upstream" and leader.mark == b"x-cache: MISS"
    assert _locks(ctx) == {"acquired": 1}
    leader.respond(b"filled")
    assert backend.names() == ["lookup", "unlock"]
    store = backend.sent[1][0]
    assert store[2:6] == (2, b"kubegate:cache:" + d, b"kubegate:cache-lock:" + d, fill.token)
    assert CachedResponse.decode(store[6]).body == b"filled" and store[7] == 60000
    assert waiter.outcome == "hit" and waiter.body == b"filled"  # from the leader, not from Redis
    backend.answer(1)
    assert ctx.stored == {ROUTE: 1}
    assert ctx.lookups == {(ROUTE, "miss"): 1, (ROUTE, "hit"): 1}
    assert ctx.flights == {} and ctx.status()["remoteWaiting"] == 0


async def test_a_response_that_is_not_stored_gives_the_lock_back_and_the_waiters_go_alone(
    backend: FakeBackend, route: RouteCache
) -> None:
    leader, waiter = Ex(route), Ex(route)
    leader.start()
    waiter.start()
    backend.answer(1)
    leader.respond(b"private", NOT_STORABLE)
    assert backend.names() == ["lookup", "unlock"]
    assert len(backend.sent[1][0]) == 6  # the token only: nothing to store
    assert waiter.outcome == "upstream" and waiter.mark == b"x-cache: MISS"
    waiter.respond(b"again")  # alone, without a lock: a plain SET
    assert backend.names() == ["lookup", "unlock", "SET"]


async def test_another_replica_s_entry_ends_the_wait_as_a_hit_for_the_leader_and_its_waiters(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache, wall: Clock
) -> None:
    leader, waiter = Ex(route), Ex(route)
    leader.start()
    waiter.start()
    backend.answer(0)  # another replica holds the lock
    assert ctx.status()["remoteWaiting"] == 2  # the leader and the request behind it
    await _until(lambda: len(backend.sent) == 2)
    assert backend.names() == ["lookup", "poll"]
    backend.answer(1)  # still filling elsewhere
    await _until(lambda: len(backend.sent) == 3)
    backend.answer(_entry(b"from the other replica", wall.now))
    assert (leader.outcome, waiter.outcome) == ("hit", "hit")
    assert leader.body == waiter.body == b"from the other replica"
    assert _locks(ctx) == {"waited_hit": 1}
    assert ctx.lookups == {(ROUTE, "hit"): 2}
    assert ctx.status()["remoteWaiting"] == 0 and ctx.flights == {}
    assert backend.names() == ["lookup", "poll", "poll"]  # no lock of ours to give back


async def test_a_lock_that_never_goes_away_bounds_the_wait_then_the_leader_goes_upstream(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache, mono: Clock
) -> None:
    leader, waiter = Ex(route), Ex(route)
    leader.start()
    waiter.start()
    backend.answer(0)
    polls = 0
    while leader.outcome == "waiting":
        await _until(lambda sent=polls + 2: len(backend.sent) == sent)
        polls += 1
        mono.now += 0.25  # a quarter of the bound between two answers
        backend.answer(1)  # the lock is still there
    assert polls == 4  # answered at 0.25, 0.5, 0.75 (wait on) and 1.0 s (the bound)
    assert leader.outcome == "upstream" and leader.mark == b"x-cache: MISS"
    assert waiter.outcome == "waiting"  # it keeps waiting on the leader, as for any fill
    assert _locks(ctx) == {"waited_timeout": 1}
    assert ctx.status()["remoteWaiting"] == 0
    leader.respond(b"fetched")
    assert backend.names()[-1] == "SET"  # without the lock: a plain SET, the lock is not ours
    assert waiter.outcome == "hit" and waiter.body == b"fetched"
    await _until(lambda: True)
    assert len(backend.sent) == polls + 2  # no read after the wait


async def test_a_lock_gone_without_an_entry_sends_the_leader_upstream_without_a_lock(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache
) -> None:
    leader = Ex(route)
    leader.start()
    backend.answer(0)
    await _until(lambda: len(backend.sent) == 2)
    backend.answer(0)  # the other fill ended with nothing stored
    assert leader.outcome == "upstream"
    assert _locks(ctx) == {"waited_miss": 1}
    leader.respond(b"not stored", NOT_STORABLE)
    assert backend.names() == ["lookup", "poll"]  # no lock to give back


@pytest.mark.parametrize("when", ["lookup", "poll"])
async def test_redis_silent_makes_the_leader_and_its_waiters_bypass(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache, when: str
) -> None:
    leader, waiter = Ex(route), Ex(route)
    leader.start()
    waiter.start()
    if when == "poll":
        backend.answer(0)
        await _until(lambda: len(backend.sent) == 2)
    backend.answer(NO_REPLY)
    assert (leader.outcome, waiter.outcome) == ("upstream", "upstream")
    assert leader.mark == waiter.mark == b"x-cache: BYPASS"
    assert leader.cache is not None and leader.cache.fill is None  # nothing to store, no lock
    assert ctx.bypassed == {(ROUTE, "redis"): 2}
    assert _locks(ctx) == {"unavailable": 1}
    leader.respond(b"a")
    waiter.respond(b"b")
    assert len(backend.sent) == (2 if when == "poll" else 1)
    assert ctx.flights == {} and ctx.status()["remoteWaiting"] == 0


async def test_redis_skipped_bypasses_without_a_lock(backend: FakeBackend, route: RouteCache) -> None:
    backend.down = True
    ex = Ex(route)
    ex.start()
    assert ex.outcome == "upstream" and ex.mark == b"x-cache: BYPASS" and backend.sent == []


async def test_the_leader_s_client_going_away_releases_its_waiters_and_stops_reading(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache
) -> None:
    leader, waiter = Ex(route), Ex(route)
    leader.start()
    waiter.start()
    backend.answer(0)
    await _until(lambda: len(backend.sent) == 2)
    leader.finish()  # the client went away during the wait
    assert waiter.outcome == "upstream" and waiter.mark == b"x-cache: MISS"  # alone, as after a failed fill
    assert ctx.status()["remoteWaiting"] == 0
    backend.answer(1)  # the read in flight returns: ignored
    await _until(lambda: True)
    assert backend.names() == ["lookup", "poll"]


async def test_a_lock_taken_after_the_leader_left_is_given_back_at_once(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache
) -> None:
    leader, waiter = Ex(route), Ex(route)
    leader.start()
    waiter.start()
    leader.finish()  # before Redis answered
    assert waiter.outcome == "upstream"
    backend.answer(1, index=0)
    assert backend.names()[-1] == "unlock"
    assert len(backend.sent[-1][0]) == 6 and _locks(ctx) == {}


async def test_head_only_reads_and_the_memory_store_sends_nothing(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache
) -> None:
    head = Ex(route, b"HEAD")
    head.start()
    assert backend.names() == ["GET"] and ctx.flights == {}
    backend.answer(None)
    assert head.outcome == "upstream"
    memory = RouteCache(Cache(ttlSeconds=60, maxEntryBytes=4096, store="Memory"), "default/memory", ctx)
    first, second = Ex(memory, path="/m"), Ex(memory, path="/m")
    first.start()
    second.start()
    first.respond(b"kept")
    assert second.outcome == "hit" and backend.names() == ["GET"]


async def test_the_counters_reach_metrics_and_are_dropped_with_the_route(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache
) -> None:
    ex = Ex(route)
    ex.start()
    backend.answer(1)
    families = {f.name: f for f in CacheCollector(ctx).collect()}
    samples = [(s.name, s.labels, s.value) for s in families["kubegate_cache_fill_lock"].samples]
    assert samples == [("kubegate_cache_fill_lock_total", {"route": ROUTE, "result": "acquired"}, 1)]
    ctx.retain(set())
    assert ctx.locks == {}


# --- against a real redis-server ------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(require_redis_server()) as s:
        yield s


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = redislimit.connect(server.url)
    yield c
    await c.aclose()


async def _run(backend: RedisBackend, *command: Any) -> Any:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    backend.command(command, future.set_result)
    return await future


async def test_the_scripts_in_redis(client: redis.asyncio.Redis) -> None:
    backend = RedisBackend(client, budget=2.0)
    CacheContext(None, backend)  # registers the scripts
    shas = _shas(backend)
    keys = (b"kubegate:cache:d", b"kubegate:cache-lock:d")
    assert (
        await _run(backend, b"EVALSHA", shas["lookup"], 2, *keys, b"ours", 3000) == 1
    )  # NOSCRIPT, then EVAL
    assert await client.get(keys[1]) == b"ours"
    assert 0 < await client.pttl(keys[1]) <= 3000
    assert await _run(backend, b"EVALSHA", shas["lookup"], 2, *keys, b"theirs", 3000) == 0
    assert await _run(backend, b"EVALSHA", shas["poll"], 2, *keys) == 1
    assert await _run(backend, b"EVALSHA", shas["unlock"], 2, *keys, b"theirs") == 1
    assert await client.get(keys[1]) == b"ours"  # a foreign token deletes nothing
    assert await _run(backend, b"EVALSHA", shas["unlock"], 2, *keys, b"ours", b"entry", 60000) == 1
    assert await client.exists(keys[1]) == 0 and 0 < await client.pttl(keys[0]) <= 60000
    assert await _run(backend, b"EVALSHA", shas["poll"], 2, *keys) == b"entry"
    await client.script_flush()
    assert await _run(backend, b"EVALSHA", shas["lookup"], 2, *keys, b"x", 3000) == b"entry"
    await client.delete(keys[0])
    assert await _run(backend, b"EVALSHA", shas["poll"], 2, *keys) == 0  # no entry, no lock
    assert backend.failures == 0


async def test_two_replicas_on_one_redis_fill_a_cold_key_once(client: redis.asyncio.Redis) -> None:
    replicas = [
        CacheContext(MemoryStore(1 << 20), RedisBackend(client, budget=2.0), lock_poll=0.001, lock_wait=30)
        for _ in range(2)
    ]
    routes = [RouteCache(POLICY, ROUTE, c) for c in replicas]
    first = [Ex(routes[0]) for _ in range(3)]
    second = [Ex(routes[1]) for _ in range(3)]
    for ex in first:
        ex.start()
    await _until(lambda: first[0].outcome == "upstream", turns=10_000)  # ours: the lock was free
    for ex in second:
        ex.start()
    await _until(lambda: replicas[1].status()["remoteWaiting"] == 3, turns=10_000)
    first[0].respond(b"once")
    await _until(lambda: all(ex.outcome == "hit" for ex in second), turns=100_000)
    assert [ex.outcome for ex in first] == ["upstream", "hit", "hit"]
    assert {ex.body for ex in first + second} == {b"once"}
    assert _locks(replicas[0]) == {"acquired": 1} and _locks(replicas[1]) == {"waited_hit": 1}
    d = digest(
        key_material(routes[0].rules, ROUTE, "api.example.com", "/cold", "", first[0].raw_headers, None)
    )
    assert await client.exists(b"kubegate:cache-lock:" + d) == 0
    assert await client.exists(b"kubegate:cache:" + d) == 1


async def test_a_value_that_is_not_an_entry_ends_the_wait_as_a_miss(
    backend: FakeBackend, ctx: CacheContext, route: RouteCache
) -> None:
    leader = Ex(route)
    leader.start()
    backend.answer(0)
    await _until(lambda: len(backend.sent) == 2)
    backend.answer(b"not an entry of ours")  # another version's, or something else's: our fill replaces it
    assert leader.outcome == "upstream" and _locks(ctx) == {"waited_miss": 1}
