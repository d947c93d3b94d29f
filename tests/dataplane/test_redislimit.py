"""The Global scope against a real ``redis-server`` (tests/redisserver.py), one private server per test.

Aspects: the script's decisions match the in-memory GCRA (burst + 1 at once, remaining, retry_after,
reset) and leave a TTL of the time until the bucket is full; atomicity (many concurrent checks from three
clients, i.e. three replicas, admit exactly ``burst + 1`` on a key that does not refill) and accuracy
(three replicas flooding one key for 2 s: within ±2% of ``rate * T + burst``); batching into pipelines;
an error reply for one check failing only that check; ``NOSCRIPT`` after a flush; callbacks never called
synchronously. Outages: Redis killed (each check bounded by the budget, then skipped during the backoff,
logged once), paused with SIGSTOP (checks time out within the budget and fall back), restarted (recovers
by itself, empty buckets); the backoff doubling to its cap and probing one check at a time, on a fake
clock; :class:`GlobalLimit` answering from the local fallback; ``connect``'s settings.
Bounds on wall-clock durations are generous (a 50 ms budget is asserted as "under 0.5 s").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from kubegate.dataplane import redislimit
from kubegate.dataplane.policies.ratelimit import Decision, Gcra
from kubegate.dataplane.redislimit import GlobalLimit, RedisBackend, RedisLimiter
from tests.redisserver import RedisServer, ping, require_redis_server

#: What "bounded by the 50 ms budget" means on a loaded CI machine.
BOUNDED = 0.5


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(require_redis_server()) as s:
        yield s


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = redislimit.connect(server.url)
    yield c
    await c.aclose()


async def _timed(limiter: RedisLimiter, key: str) -> tuple[Decision | None, float]:
    start = time.monotonic()
    decision = await limiter.check(key)
    return decision, time.monotonic() - start


async def _until_answered(limiter: RedisLimiter, key: str, within: float = 10.0) -> Decision:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        decision = await limiter.check(key)
        if decision is not None:
            return decision
        await asyncio.sleep(0.05)
    raise AssertionError(f"no answer from redis within {within}s: {limiter.backend.status()}")


async def test_decisions_match_the_local_gcra_and_keys_expire_when_full(
    client: redis.asyncio.Redis,
) -> None:
    limiter = RedisLimiter(client, 2, 3, "t:")
    decisions = [await limiter.check("a") for _ in range(5)]
    assert [d.allowed for d in decisions if d] == [True, True, True, True, False]
    assert [d.remaining for d in decisions if d] == [3, 2, 1, 0, 0]
    first, last = decisions[0], decisions[-1]
    assert first is not None and last is not None
    assert first.retry_after == 0 and first.reset == 0.5  # the first check's TAT is exact
    # Redis's clock moved a little between the checks: values within one emission interval.
    assert 0.4 < last.retry_after <= 0.5 and 1.9 < last.reset <= 2.0
    ttl_ms = await client.pttl(b"t:a")
    assert 1800 < ttl_ms <= 2000  # the key lives until the bucket is full again
    assert await client.exists(b"t:b") == 0  # a key never checked has no entry
    assert limiter.calls == 5 and limiter.fallbacks == 0
    assert repr(limiter.backend) == "<RedisBackend up calls=5 answered=5 failures=0 skipped=0 in_flight=0>"
    assert limiter.backend.status() == {
        "state": "up",
        "calls": 5,
        "answered": 5,
        "failures": 0,
        "timeouts": 0,
        "skipped": 0,
        "batches": 5,
        "transitions": 0,
    }


async def test_long_keys_are_digested_in_redis(client: redis.asyncio.Redis) -> None:
    limiter = RedisLimiter(client, 1, 0, "t:")
    long_key = "tenant-" + "x" * 1000
    assert (await limiter.check(long_key)) is not None
    keys = await client.keys(b"t:*")
    assert keys == [limiter.redis_key(long_key)] and len(keys[0]) == len(b"t:") + 18


async def test_concurrent_checks_from_three_replicas_are_atomic(server: RedisServer) -> None:
    clients = [redislimit.connect(server.url, budget=2.0) for _ in range(3)]
    try:
        # A rate that does not refill during the test: exactly burst + 1 may ever be admitted.
        limiters = [RedisLimiter(c, 0.001, 50, "t:", budget=2.0) for c in clients]
        checks = [limiters[i % 3].check("shared") for i in range(600)]
        decisions = await asyncio.gather(*checks)
        assert None not in decisions
        assert sum(d.allowed for d in decisions if d) == 51
        assert all(limiter.backend.batches < 600 for limiter in limiters)  # pipelined, not one by one
    finally:
        for c in clients:
            await c.aclose()


async def test_three_replicas_flooding_one_key_stay_within_two_percent(server: RedisServer) -> None:
    rate, burst, seconds = 200.0, 20, 2.0
    clients = [redislimit.connect(server.url, budget=2.0) for _ in range(3)]
    limiters = [RedisLimiter(c, rate, burst, "t:", budget=2.0) for c in clients]
    # Open the pools' connections first: connecting is not what is measured.
    await asyncio.gather(*(limiter.check("warm-up") for limiter in limiters for _ in range(40)))
    admitted = [0, 0, 0]
    offered = [0, 0, 0]
    start = time.monotonic()
    stop = start + seconds

    async def worker(replica: int) -> None:
        while time.monotonic() < stop:
            decision = await limiters[replica].check("route")
            assert decision is not None, limiters[replica].backend.status()
            offered[replica] += 1
            admitted[replica] += decision.allowed

    try:
        await asyncio.gather(*(worker(i % 3) for i in range(3 * 8)))
    finally:
        elapsed = time.monotonic() - start
        for c in clients:
            await c.aclose()
    ideal = rate * seconds + burst
    assert sum(offered) > 3 * ideal  # a real flood: over three times the limit was offered
    assert abs(sum(admitted) - ideal) <= 0.02 * ideal, (admitted, offered, elapsed)
    assert all(admitted), admitted  # every replica got a share of the same bucket


async def test_an_error_reply_fails_only_its_own_check(client: redis.asyncio.Redis) -> None:
    await client.hset(b"t:wrong", b"field", b"value")  # GET on a hash: WRONGTYPE
    limiter = RedisLimiter(client, 1, 0, "t:")
    bad, good = await asyncio.gather(limiter.check("wrong"), limiter.check("right"))
    assert bad is None and good is not None and good.allowed
    assert limiter.backend.state == "up" and limiter.backend.failures == 1
    assert limiter.fallbacks == 1


async def test_script_is_sent_again_after_a_flush(client: redis.asyncio.Redis) -> None:
    limiter = RedisLimiter(client, 1, 0, "t:")
    assert (await limiter.check("a")) is not None
    await client.script_flush()
    decision = await limiter.check("b")
    assert decision is not None and decision.allowed
    assert (await client.script_exists(limiter.backend.sha)) == [True]


async def test_callbacks_are_never_called_synchronously(client: redis.asyncio.Redis) -> None:
    limiter = RedisLimiter(client, 1, 0, "t:")
    seen: list[Decision | None] = []
    limiter.check_cb("a", seen.append)
    assert seen == []
    while not seen:
        await asyncio.sleep(0.01)
    assert seen[0] is not None and seen[0].allowed


async def test_killed_redis_falls_back_within_the_budget_then_is_skipped(
    server: RedisServer, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kubegate.redis")
    limiter = RedisLimiter(client, 10, 5, "t:")
    assert (await limiter.check("a")) is not None
    server.kill()
    decision, took = await _timed(limiter, "a")
    assert decision is None and took < BOUNDED
    backend = limiter.backend
    assert backend.state == "down" and backend.failures == 1 and backend.skipped == 0
    for _ in range(50):  # within the backoff nobody waits for Redis
        decision, took = await _timed(limiter, "a")
        assert decision is None and took < BOUNDED
    assert backend.skipped == 50 and backend.failures == 1
    assert limiter.fallbacks == 51
    warnings = [r for r in caplog.records if r.name == "kubegate.redis" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "redis unavailable (ConnectionError" in warnings[0].getMessage()
    status = backend.status()
    assert status["state"] == "down" and "ConnectionError" in status["lastError"]


async def test_paused_redis_times_out_within_the_budget_and_recovers(
    server: RedisServer, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kubegate.redis")
    backend = RedisBackend(client, backoff_first=0.2)
    limiter = RedisLimiter(client, 10, 5, "t:", backend=backend)
    assert (await limiter.check("a")) is not None
    server.pause()
    try:
        start = time.monotonic()
        decisions = await asyncio.gather(*(limiter.check(f"k{i}") for i in range(20)))
        assert decisions == [None] * 20 and time.monotonic() - start < BOUNDED
        assert backend.state == "down" and backend.timeouts == 20
        decision, took = await _timed(limiter, "a")  # skipped, not another wait
        assert decision is None and took < BOUNDED and backend.skipped == 1
    finally:
        server.resume()
    decision = await _until_answered(limiter, "a")
    assert backend.state == "up"
    messages = [r.getMessage() for r in caplog.records if r.name == "kubegate.redis"]
    assert len(messages) == 2, messages
    assert "no answer within 50 ms" in messages[0] and "available again" in messages[1]


async def test_close_settles_pending_checks_at_once(server: RedisServer, client: redis.asyncio.Redis) -> None:
    backend = RedisBackend(client, budget=5.0)
    limiter = RedisLimiter(client, 10, 5, "t:", backend=backend)
    assert (await limiter.check("a")) is not None
    server.pause()
    try:
        pending = asyncio.ensure_future(limiter.check("a"))
        await asyncio.sleep(0.05)  # sent, stuck in a paused Redis
        assert not pending.done()
        backend.close()
        assert (await asyncio.wait_for(pending, BOUNDED)) is None
    finally:
        server.resume()


async def test_restarted_redis_is_used_again_with_empty_buckets(
    server: RedisServer, client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kubegate.redis")
    backend = RedisBackend(client, backoff_first=0.2)
    limiter = RedisLimiter(client, 0.001, 0, "t:", backend=backend)
    first = await limiter.check("a")
    assert first is not None and first.allowed
    refused = await limiter.check("a")
    assert refused is not None and not refused.allowed
    server.restart()  # same port, no data, no scripts; the pooled connection is dead
    decision = await _until_answered(limiter, "a")
    assert decision.allowed  # a fresh bucket: the restart lost the old one
    assert backend.state == "up"
    assert backend.transitions <= 1  # the pool may replace the dead connection before anyone notices
    messages = [r.getMessage() for r in caplog.records if r.name == "kubegate.redis"]
    assert len(messages) == 2 * backend.transitions, messages  # down and up again, once each


async def test_backoff_doubles_to_its_cap_and_probes_one_check_at_a_time(
    server: RedisServer, client: redis.asyncio.Redis
) -> None:
    clock = Clock()
    backend = RedisBackend(client, backoff_first=0.5, backoff_max=3.0, clock=clock)
    limiter = RedisLimiter(client, 10, 5, "t:", backend=backend)
    server.kill()
    assert (await limiter.check("a")) is None
    assert (backend.state, backend.backoff, backend.retry_at) == ("down", 0.5, 1000.5)
    assert limiter.skipping
    backoffs = []
    for _ in range(5):
        clock.now = backend.retry_at
        assert not limiter.skipping
        probe = limiter.check("a")  # the probe ...
        others = [limiter.check("b") for _ in range(3)]  # ... and checks skipped meanwhile
        assert await asyncio.gather(probe, *others) == [None] * 4
        backoffs.append(backend.backoff)
    assert backoffs == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert backend.skipped == 15 and backend.failures == 6 and backend.transitions == 1
    server.start()
    clock.now = backend.retry_at
    decision = await limiter.check("a")
    assert decision is not None and backend.state == "up" and backend.backoff == 0


async def test_global_limit_answers_from_the_local_fallback_while_redis_is_away(
    server: RedisServer, client: redis.asyncio.Redis
) -> None:
    clock = Clock(50.0)
    backend = RedisBackend(client, clock=clock)
    limit = GlobalLimit(RedisLimiter(client, 100, 0, "t:", backend=backend), Gcra(1, 1), clock)
    resumed: list[Decision] = []
    assert limit.decide("a", resumed.append) is None  # Redis up: wait for it
    while not resumed:
        await asyncio.sleep(0.01)
    assert resumed[0].allowed and limit.fallbacks == 0
    server.kill()
    decision = await limit.check("a")  # Redis fails: the local limiter decides (1/s, burst 1)
    assert decision == Decision(True, 0.0, 1, 1.0) and limit.fallbacks == 1
    resumed.clear()
    now = limit.decide("a", resumed.append)  # within the backoff: answered at once, locally
    assert now == Decision(True, 0.0, 0, 2.0)
    assert limit.decide("a", resumed.append) == Decision(False, 1.0, 0, 2.0)
    await asyncio.sleep(0.05)
    assert resumed == [] and limit.fallbacks == 3 and limit.calls == 4


def test_connect_sets_budget_timeouts_and_no_retries() -> None:
    client = redislimit.connect("redis://127.0.0.1:1/0", budget=0.07)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.07 and kwargs["socket_connect_timeout"] == 0.07
    assert kwargs["health_check_interval"] == 30 and kwargs["client_name"] == "kubegate"
    assert kwargs["retry"].get_retries() == 0
    assert client.connection_pool.max_connections == 16
    with pytest.raises(ValueError, match="rate"):
        RedisLimiter(client, 0, 1)
    with pytest.raises(ValueError, match="another client"):
        RedisLimiter(client, 1, 1, backend=RedisBackend(redislimit.connect("redis://127.0.0.1:1/0")))


def test_server_helper_skips_or_fails_without_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEGATE_REDIS_SERVER", "/nonexistent/redis-server")
    monkeypatch.delenv("KUBEGATE_REQUIRE_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server not found"):
        require_redis_server()
    monkeypatch.setenv("KUBEGATE_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="KUBEGATE_REQUIRE_TOOLS=1"):
        require_redis_server()


def test_server_helper_pauses_resumes_kills_and_restarts(server: RedisServer) -> None:
    assert ping(server.port) and "running" in repr(server)
    server.pause()
    assert not ping(server.port, timeout=0.2) and "paused" in repr(server)
    server.resume()
    assert ping(server.port)
    server.kill()
    assert not ping(server.port) and "stopped" in repr(server)
    server.restart()
    assert ping(server.port)


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    assert redislimit.pack((b"GET", "kubegate:cache:\u00e9", 5)) == (
        b"*3\r\n$3\r\nGET\r\n$17\r\nkubegate:cache:\xc3\xa9\r\n$1\r\n5\r\n"
    )
    assert redislimit.pack((b"SET", b"k", b"a\r\nb")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n"
