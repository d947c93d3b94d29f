"""The Redis cache's fill lock end to end: two real ``kubegate serve`` replicas sharing one real
``redis-server``, in front of one real upstream that counts the responses it sends.

Aspects: a stampede on a cold key spread over both replicas reaches the upstream once in total (the
upstream holds its answer until every other request is seen waiting, at most half a second, so the
requests really overlap; one replica acquires the lock, the other's leader answers from the entry as a
hit); a lock planted by hand with a long TTL costs the requests the bounded wait, not an error: all get
200, the upstream is reached, the entry is stored and the foreign lock left alone; Redis killed or paused:
every request still gets 200, as ``BYPASS``. The timings that matter are in bench/; here only the wait's
bound (1 s) must be longer than the half second the upstream holds the fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.gateway import GatewayProcess
from tests.redisserver import RedisServer, require_redis_server
from tests.upstreams import UpstreamServer, wait_for

ROUTES = """
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: cached}}
spec:
  match: {{path: {{value: /cacheable}}}}
  backends: [{{url: "{up}"}}]
  cache: {{ttl: 60s, store: Redis}}
"""
HOST = {"Host": "api.example.com"}  # the key has the host: clients of both replicas use one name
PER_REPLICA = 20


@pytest.fixture(scope="module")
def up() -> Iterator[UpstreamServer]:
    server = UpstreamServer("filled").start()
    yield server
    server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def replicas(tmp_path: Path, up: UpstreamServer, redis_server: RedisServer) -> Iterator[list[GatewayProcess]]:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(up=up.url))
    started: list[GatewayProcess] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            gw = GatewayProcess(tmp_path / name, routes=routes, extra=["--redis-url", redis_server.url])
            started.append(gw)
            wait_for(lambda gw=gw: gw.table().get("routes") == 1, timeout=20)
        yield started
    finally:
        for gw in started:
            gw.stop()


def _cache(gw: GatewayProcess) -> dict[str, int]:
    return dict(httpx.get(gw.admin + "/health", timeout=5).json()["cache"])


def _waiting(replicas: list[GatewayProcess]) -> int:
    """Requests waiting for their replica's leader of the same key (``remoteWaiting`` counts those of a
    leader that waits for another replica's fill, and the leader)."""
    return sum(_cache(gw)["waiting"] for gw in replicas)


def _remote(replicas: list[GatewayProcess]) -> int:
    return sum(_cache(gw)["remoteWaiting"] for gw in replicas)


def _locks(gw: GatewayProcess) -> dict[str, float]:
    text = httpx.get(gw.admin + "/metrics", timeout=5).text
    found = re.findall(r'kubegate_cache_fill_lock_total\{result="(\w+)",route="default/cached"\} (\S+)', text)
    return {result: float(n) for result, n in found}


def _stampede(replicas: list[GatewayProcess], path: str, answers: list[httpx.Response]) -> threading.Thread:
    """PER_REPLICA concurrent requests to each replica, interleaved, from a thread (its answers appended)."""

    async def run() -> None:
        limits = httpx.Limits(max_connections=len(replicas) * PER_REPLICA)
        async with httpx.AsyncClient(limits=limits, timeout=30, headers=HOST) as client:
            requests = [client.get(gw.url + path) for _ in range(PER_REPLICA) for gw in replicas]
            answers.extend(await asyncio.gather(*requests))

    thread = threading.Thread(target=asyncio.run, args=(run(),))
    thread.start()
    return thread


def _served(response: httpx.Response) -> int:
    return int(response.json()["served"])


def test_a_stampede_over_two_replicas_reaches_the_upstream_once(
    replicas: list[GatewayProcess], up: UpstreamServer
) -> None:
    before, held = up.cache_served, up.held
    answers: list[httpx.Response] = []
    up.hold.clear()  # the lock holder's request waits at the upstream ...
    clients = _stampede(replicas, "/cacheable?case=stampede", answers)
    try:
        wait_for(lambda: up.held > held, timeout=10)
        # ... until every other request waits, for its replica's leader or (that leader) for the other
        # replica's fill; at most half a second, well within the other replica's bounded wait of 1 s (on a
        # machine too busy to see them all waiting by then, the late ones are hits of the stored entry)
        with contextlib.suppress(TimeoutError):
            wait_for(
                lambda: _waiting(replicas) == 2 * PER_REPLICA - 2 and _remote(replicas) >= 1, timeout=0.5
            )
    finally:
        up.hold.set()
        clients.join(30)
    assert [r.status_code for r in answers] == [200] * 2 * PER_REPLICA
    assert up.cache_served == before + 1
    assert len({_served(r) for r in answers}) == 1
    assert sorted(r.headers["x-cache"] for r in answers) == ["HIT"] * (2 * PER_REPLICA - 1) + ["MISS"]
    outcomes = [_locks(gw) for gw in replicas]
    assert sorted(outcomes, key=str) == [{"acquired": 1.0}, {"waited_hit": 1.0}], outcomes
    assert all(_cache(gw)["remoteWaiting"] == 0 for gw in replicas)


def test_a_lock_that_stays_costs_the_bounded_wait_not_an_error(
    replicas: list[GatewayProcess], up: UpstreamServer, redis_server: RedisServer
) -> None:
    a = replicas[0]
    path = "/cacheable?case=planted"
    store = redis.Redis(port=redis_server.port)
    try:
        httpx.get(a.url + path, headers=HOST, timeout=10)  # to learn the key's digest from its entry
        wait_for(lambda: len(store.keys(b"kubegate:cache:*")) == 1, timeout=5)
        (entry_key,) = store.keys(b"kubegate:cache:*")
        lock_key = b"kubegate:cache-lock:" + entry_key.removeprefix(b"kubegate:cache:")
        store.delete(entry_key)
        store.set(lock_key, b"planted", px=600_000)  # a holder that never comes back
        before = up.cache_served
        answers: list[httpx.Response] = []
        _stampede(replicas, path, answers).join(60)
        assert [r.status_code for r in answers] == [200] * 2 * PER_REPLICA
        fetched = up.cache_served - before
        assert 1 <= fetched <= len(replicas)  # each replica's leader at most, after the wait
        assert sorted(r.headers["x-cache"] for r in answers).count("MISS") == fetched
        assert {r.headers["x-cache"] for r in answers} <= {"HIT", "MISS"}
        assert sum(_locks(gw).get("waited_timeout", 0) for gw in replicas) == fetched
        assert store.get(lock_key) == b"planted"  # not ours to delete
        wait_for(lambda: store.exists(entry_key) == 1, timeout=5)  # stored without the lock
        assert httpx.get(replicas[1].url + path, headers=HOST, timeout=10).headers["x-cache"] == "HIT"
    finally:
        store.close()


@pytest.mark.parametrize("outage", ["killed", "paused"])
def test_with_redis_gone_a_stampede_bypasses_never_a_5xx(
    replicas: list[GatewayProcess], up: UpstreamServer, redis_server: RedisServer, outage: str
) -> None:
    if outage == "killed":
        redis_server.kill()
    else:
        redis_server.pause()
    try:
        answers: list[httpx.Response] = []
        _stampede(replicas, f"/cacheable?case={outage}", answers).join(60)
    finally:
        if outage == "paused":
            redis_server.resume()
    assert [r.status_code for r in answers] == [200] * 2 * PER_REPLICA
    assert {r.headers["x-cache"] for r in answers} == {"BYPASS"}
    for gw in replicas:
        assert set(_locks(gw)) <= {"unavailable"}
        assert _cache(gw)["remoteWaiting"] == 0 and _cache(gw)["flights"] == 0
