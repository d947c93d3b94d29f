"""Response caching end to end: ``kubegate serve --routes`` in front of a real upstream, the Memory store in
one replica, the Redis store shared by two replicas through a real ``redis-server``, and Redis going away.

Aspects: a miss then a hit (``X-Cache``, ``Age``, the same body, one upstream request); HEAD answered from
the GET entry; what the upstream's headers forbid is not stored (no-store, private, Set-Cookie, Vary: *,
max-age=0); the client's no-cache refetches; the key's query (order-free) and key headers; a body over
maxEntryBytes streams through uncached; credentials bypass unless perUser, which keys on the identity;
If-None-Match on a hit gets 304; a stampede on a cold key reaches the upstream once (single flight); the
Redis store is shared by replicas, and with Redis killed requests bypass the cache (never a 5xx). The
decisions themselves are a table of cases in ``tests/dataplane/test_cachecontrol.py``.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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
  cache: {{ttl: 60s, maxEntryBytes: 4096, keyHeaders: [Accept-Language], store: {store}}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: params}}
spec:
  match: {{path: {{value: /cacheable/params}}}}
  backends: [{{url: "{up}"}}]
  cache: {{keyQueryParams: [page], store: {store}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: partners}}
stringData: {{alice: alice-key-0123456789, bob: bob-key-0123456789}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: per-user}}
spec:
  match: {{path: {{value: /cacheable/mine}}}}
  backends: [{{url: "{up}"}}]
  auth: {{apiKey: {{header: X-API-Key, secretRef: {{name: partners}}}}}}
  cache: {{perUser: true, store: {store}}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: shared-only}}
spec:
  match: {{path: {{value: /cacheable/shared}}}}
  backends: [{{url: "{up}"}}]
  auth: {{apiKey: {{header: X-API-Key, secretRef: {{name: partners}}}}}}
  cache: {{store: {store}}}
"""


def target(path: str = "/cacheable", *headers: str, **params: str) -> str:
    query = [("h", h) for h in headers] + list(params.items())
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


@pytest.fixture(scope="module")
def up() -> Iterator[UpstreamServer]:
    server = UpstreamServer("cached").start()
    yield server
    server.stop()


def gateway(tmp: Path, up: UpstreamServer, store: str, *extra: str) -> GatewayProcess:
    routes = tmp / f"routes-{store}.yaml"
    routes.write_text(ROUTES.format(up=up.url, store=store))
    proc = GatewayProcess(tmp, routes=routes, extra=list(extra))
    wait_for(lambda: proc.table().get("routes") == 4, timeout=20)
    return proc


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory, up: UpstreamServer) -> Iterator[GatewayProcess]:
    proc = gateway(tmp_path_factory.mktemp("memory"), up, "Memory")
    yield proc
    proc.stop()


def get(gw: GatewayProcess, path: str, method: str = "GET", **headers: str) -> httpx.Response:
    return httpx.request(method, gw.url + path, headers=headers, timeout=10)


def served(response: httpx.Response) -> int:
    """Which upstream answer this body is (the upstream numbers its /cacheable answers)."""
    return int(response.json()["served"])


def test_a_miss_then_a_hit_with_age_and_one_upstream_request(memory: GatewayProcess) -> None:
    path = target("/cacheable", "Cache-Control:max-age=120", case="hit")
    first = get(memory, path)
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    second = get(memory, path)
    assert second.headers["x-cache"] == "HIT"
    assert served(second) == served(first)  # the same answer, not a new one
    assert int(second.headers["age"]) >= 0
    assert second.headers["cache-control"] == "max-age=120"
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    head = get(memory, path, "HEAD")
    assert head.headers["x-cache"] == "HIT" and head.content == b""
    assert int(head.headers["content-length"]) == len(first.content)


def test_what_the_upstream_forbids_is_not_stored(memory: GatewayProcess) -> None:
    for header in ("Cache-Control:no-store", "Cache-Control:private", "Set-Cookie:a=b", "Vary:*",
                   "Cache-Control:max-age=0", "Cache-Control:no-cache"):  # fmt: skip
        path = target("/cacheable", header, case=header)
        first, second = get(memory, path), get(memory, path)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "MISS"), header
        assert served(second) == served(first) + 1, header


def test_the_client_s_no_cache_refetches_and_refreshes(memory: GatewayProcess) -> None:
    path = target("/cacheable", case="refresh")
    first = get(memory, path)
    refreshed = get(memory, path, **{"Cache-Control": "no-cache"})
    assert refreshed.headers["x-cache"] == "MISS" and served(refreshed) == served(first) + 1
    after = get(memory, path)
    assert after.headers["x-cache"] == "HIT" and served(after) == served(refreshed)


def test_query_order_does_not_matter_and_key_headers_do(memory: GatewayProcess) -> None:
    a = get(memory, "/cacheable?x=1&y=2")
    b = get(memory, "/cacheable?y=2&x=1")
    assert b.headers["x-cache"] == "HIT" and served(b) == served(a)
    en = get(memory, "/cacheable?lang", **{"Accept-Language": "en"})
    de = get(memory, "/cacheable?lang", **{"Accept-Language": "de"})
    assert de.headers["x-cache"] == "MISS" and served(de) == served(en) + 1
    assert get(memory, "/cacheable?lang", **{"Accept-Language": "en"}).headers["x-cache"] == "HIT"
    # keyQueryParams [page]: other parameters are not part of the key
    p1 = get(memory, "/cacheable/params?page=1&utm=a")
    p1b = get(memory, "/cacheable/params?utm=b&page=1")
    p2 = get(memory, "/cacheable/params?page=2")
    assert p1b.headers["x-cache"] == "HIT" and served(p1b) == served(p1)
    assert p2.headers["x-cache"] == "MISS"


def test_vary_names_a_request_header_that_must_match(memory: GatewayProcess) -> None:
    path = target("/cacheable", "Vary:Accept-Encoding", case="vary")
    gz = get(memory, path, **{"Accept-Encoding": "gzip"})
    assert get(memory, path, **{"Accept-Encoding": "gzip"}).headers["x-cache"] == "HIT"
    br = get(memory, path, **{"Accept-Encoding": "br"})
    assert br.headers["x-cache"] == "MISS" and served(br) == served(gz) + 1


def test_a_body_over_max_entry_bytes_streams_through_uncached(memory: GatewayProcess) -> None:
    path = target("/cacheable", case="big", size="10000")
    first, second = get(memory, path), get(memory, path)
    assert len(first.content) == 10000 and len(second.content) == 10000
    assert second.headers["x-cache"] == "MISS" and served(second) == served(first) + 1


def test_credentials_bypass_unless_per_user_which_keys_on_the_identity(memory: GatewayProcess) -> None:
    shared = target("/cacheable/shared", case="creds")
    a = get(memory, shared, **{"X-API-Key": "alice-key-0123456789"})
    b = get(memory, shared, **{"X-API-Key": "alice-key-0123456789"})
    assert (a.headers["x-cache"], b.headers["x-cache"]) == ("BYPASS", "BYPASS")
    assert served(b) == served(a) + 1
    mine = target("/cacheable/mine", "Cache-Control:private, max-age=60", case="mine")
    alice = get(memory, mine, **{"X-API-Key": "alice-key-0123456789"})
    bob = get(memory, mine, **{"X-API-Key": "bob-key-0123456789"})
    assert (alice.headers["x-cache"], bob.headers["x-cache"]) == ("MISS", "MISS")
    again = get(memory, mine, **{"X-API-Key": "alice-key-0123456789"})
    assert again.headers["x-cache"] == "HIT" and served(again) == served(alice)
    assert get(memory, mine).status_code == 401  # auth runs before the cache: a hit needs credentials
    plain = get(memory, target("/cacheable", case="authz"), Authorization="Bearer x")
    assert plain.headers["x-cache"] == "BYPASS"


def test_if_none_match_on_a_hit_gets_304(memory: GatewayProcess) -> None:
    path = target("/cacheable", 'ETag:"v1"', case="etag")
    get(memory, path)
    hit = get(memory, path, **{"If-None-Match": 'W/"v1"'})
    assert hit.status_code == 304 and hit.content == b"" and hit.headers["etag"] == '"v1"'
    assert get(memory, path, **{"If-None-Match": '"v2"'}).status_code == 200


def test_a_stampede_on_a_cold_key_reaches_the_upstream_once(
    memory: GatewayProcess, up: UpstreamServer
) -> None:
    path = target("/cacheable", case="stampede")
    before = up.cache_served
    answers: list[httpx.Response] = []

    async def stampede() -> None:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            answers.extend(await asyncio.gather(*(client.get(memory.url + path) for _ in range(200))))

    up.hold.clear()  # the first request waits at the upstream until the other 199 wait at the gateway
    clients = threading.Thread(target=asyncio.run, args=(stampede(),))
    clients.start()
    try:
        wait_for(lambda: up.held >= 1 and _waiting(memory) == 199, timeout=30)
    finally:
        up.hold.set()
        clients.join(30)
    assert [r.status_code for r in answers] == [200] * 200
    assert len({served(r) for r in answers}) == 1
    assert up.cache_served == before + 1
    assert sorted(r.headers["x-cache"] for r in answers) == ["HIT"] * 199 + ["MISS"]


def _waiting(gw: GatewayProcess) -> int:
    """Requests waiting at the gateway for another one's fill of the same key."""
    return int(httpx.get(gw.admin + "/health", timeout=5).json()["cache"]["waiting"])


def test_metrics_count_hits_misses_and_bypasses(memory: GatewayProcess) -> None:
    text = httpx.get(memory.admin + "/metrics", timeout=5).text
    assert 'kubegate_cache_requests_total{result="hit",route="default/cached"}' in text
    assert 'kubegate_cache_requests_total{result="miss",route="default/cached"}' in text
    assert 'kubegate_cache_bypassed_total{reason="credentials",route="default/shared-only"}' in text
    shown = httpx.get(memory.admin + "/routes", timeout=5).json()
    assert shown["cache"]["memory"]["entries"] >= 1


def _route_cache(gw: GatewayProcess, route: str) -> dict[str, object]:
    return dict(httpx.get(gw.admin + "/routes", timeout=5).json()["cache"]["routes"][route])


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer() as server:
        yield server


def test_the_redis_store_is_shared_by_replicas(
    tmp_path: Path, up: UpstreamServer, redis_server: RedisServer
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = gateway(tmp_path / "a", up, "Redis", "--redis-url", redis_server.url)
    b = gateway(tmp_path / "b", up, "Redis", "--redis-url", redis_server.url)
    try:
        path = target("/cacheable", "Cache-Control:max-age=30", case="shared")
        first = get(a, path, Host="api.example.com")  # the key has the host: clients of both use one name
        assert first.headers["x-cache"] == "MISS"
        # the client has the answer before the SET reaches Redis: wait until replica a counts it stored
        wait_for(lambda: _route_cache(a, "default/cached")["stored"] == 1, timeout=5)
        hit = get(b, path, Host="api.example.com")
        assert hit.headers["x-cache"] == "HIT" and served(hit) == served(first)
        assert 0 <= int(hit.headers["age"]) <= 30
        assert _route_cache(b, "default/cached") == {
            "store": "Redis",
            "hits": 1,
            "misses": 0,
            "bypassed": 0,
            "stored": 0,
        }
    finally:
        a.stop()
        b.stop()


def test_with_redis_gone_requests_bypass_the_cache_never_a_5xx(tmp_path: Path, up: UpstreamServer) -> None:
    require_redis_server()
    with RedisServer() as server:
        gw = gateway(tmp_path, up, "Redis", "--redis-url", server.url)
        try:
            path = target("/cacheable", case="outage")
            get(gw, path)
            # the client has the answer before the SET reaches Redis: wait until it is counted stored
            wait_for(lambda: _route_cache(gw, "default/cached")["stored"] == 1, timeout=5)
            assert get(gw, path).headers["x-cache"] == "HIT"
            server.kill()
            answers = [get(gw, path) for _ in range(5)]
            assert [r.status_code for r in answers] == [200] * 5
            assert {r.headers["x-cache"] for r in answers} == {"BYPASS"}
            text = httpx.get(gw.admin + "/metrics", timeout=5).text
            assert 'kubegate_cache_bypassed_total{reason="redis",route="default/cached"} 5.0' in text
            assert httpx.get(gw.admin + "/health", timeout=5).json()["redis"]["state"] in ("down", "probing")
        finally:
            gw.stop()
