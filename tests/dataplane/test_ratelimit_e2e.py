"""Rate limiting end to end: ``kubegate serve --routes`` in front of a real upstream, Local limits in one
replica, Global limits shared by two replicas through a real ``redis-server``, and Redis going away.

Aspects: 429 with Retry-After and the RateLimit headers once a key's budget is spent (and the RateLimit
header on admitted responses); keys by client address, by header and per route; X-Forwarded-For read
only from a --trusted-proxies peer; a Global limit admits the same total through two replicas as through
one; with Redis killed the gateway keeps answering (never a 5xx) from its local fallback. The limiter's
arithmetic is unit-tested on a fake clock in ``tests/dataplane/policies/test_ratelimit.py``; accuracy under
load is measured in ``bench/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway import GatewayProcess
from tests.redisserver import RedisServer, require_redis_server
from tests.upstreams import UpstreamServer, wait_for

# A rate of one request per 100 s: over a test's few seconds a key gets exactly burst + 1 requests.
ROUTES = """
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: by-ip}}
spec:
  match: {{path: {{value: /by-ip}}}}
  backends: [{{url: "{up}"}}]
  rateLimit: {{requestsPerSecond: 0.01, burst: 2, scope: {scope}}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: by-tenant}}
spec:
  match: {{path: {{value: /by-tenant}}}}
  backends: [{{url: "{up}"}}]
  rateLimit: {{requestsPerSecond: 0.01, burst: 1, key: Header, header: X-Tenant, scope: {scope}}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: whole-route}}
spec:
  match: {{path: {{value: /whole-route}}}}
  backends: [{{url: "{up}"}}]
  rateLimit: {{requestsPerSecond: 0.01, burst: 3, key: Route, scope: {scope}}}
"""


@pytest.fixture(scope="module")
def up() -> Iterator[UpstreamServer]:
    server = UpstreamServer("limited").start()
    yield server
    server.stop()


def gateway(tmp: Path, up: UpstreamServer, scope: str, *extra: str) -> GatewayProcess:
    routes = tmp / f"routes-{scope}.yaml"
    routes.write_text(ROUTES.format(up=up.url, scope=scope))
    proc = GatewayProcess(tmp, routes=routes, extra=list(extra))
    wait_for(lambda: proc.table().get("routes") == 3, timeout=20)
    return proc


def codes(gw: GatewayProcess, path: str, n: int, **headers: str) -> list[int]:
    return [httpx.get(gw.url + path, headers=headers, timeout=10).status_code for _ in range(n)]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, up: UpstreamServer) -> Iterator[GatewayProcess]:
    proc = gateway(tmp_path_factory.mktemp("local"), up, "Local", "--trusted-proxies", "127.0.0.1/32")
    yield proc
    proc.stop()


def test_over_the_limit_gets_429_with_retry_after_and_ratelimit_headers(local: GatewayProcess) -> None:
    first = httpx.get(local.url + "/by-ip", headers={"X-Forwarded-For": "10.0.0.1"}, timeout=10)
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"].startswith('"default/by-ip";q=')
    assert first.headers["ratelimit"].startswith('"default/by-ip";r=2;')
    assert codes(local, "/by-ip", 3, **{"X-Forwarded-For": "10.0.0.1"}) == [200, 200, 429]
    refused = httpx.get(local.url + "/by-ip", headers={"X-Forwarded-For": "10.0.0.1"}, timeout=10)
    assert refused.status_code == 429 and refused.json()["message"] == "rate limit exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert ";r=0;" in refused.headers["ratelimit"]
    metrics = httpx.get(local.admin + "/metrics", timeout=5).text
    assert 'kubegate_rate_limited_total{route="default/by-ip"} 2.0' in metrics


def test_a_trusted_proxy_s_forwarded_for_names_the_client(local: GatewayProcess) -> None:
    # the peer (127.0.0.1) is trusted: each X-Forwarded-For client has its own budget
    assert codes(local, "/by-ip", 3, **{"X-Forwarded-For": "10.0.0.2"}) == [200, 200, 200]
    assert codes(local, "/by-ip", 1, **{"X-Forwarded-For": "10.0.0.3, 127.0.0.1"}) == [200]


def test_without_trusted_proxies_forwarded_for_is_ignored(tmp_path: Path, up: UpstreamServer) -> None:
    gw = gateway(tmp_path, up, "Local")
    try:
        spoofed = [codes(gw, "/by-ip", 1, **{"X-Forwarded-For": f"10.1.0.{i}"})[0] for i in range(5)]
        assert spoofed == [200, 200, 200, 429, 429]  # one budget: the socket peer's
    finally:
        gw.stop()


def test_header_and_route_keys(local: GatewayProcess) -> None:
    assert codes(local, "/by-tenant", 3, **{"X-Tenant": "a"}) == [200, 200, 429]
    assert codes(local, "/by-tenant", 2, **{"X-Tenant": "b"}) == [200, 200]
    assert codes(local, "/whole-route", 5, **{"X-Forwarded-For": "10.9.9.9"}) == [200] * 4 + [429]
    assert codes(local, "/whole-route", 1, **{"X-Forwarded-For": "10.9.9.8"}) == [429]  # one budget


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer() as server:
        yield server


def test_a_global_limit_is_shared_by_replicas_through_redis(
    tmp_path: Path, up: UpstreamServer, redis_server: RedisServer
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = gateway(tmp_path / "a", up, "Global", "--redis-url", redis_server.url)
    b = gateway(tmp_path / "b", up, "Global", "--redis-url", redis_server.url)
    try:
        answers = []
        for i in range(8):  # alternate replicas: together they admit one budget (burst 3 + 1)
            answers += codes(a if i % 2 else b, "/whole-route", 1)
        assert answers.count(200) == 4 and answers.count(429) == 4
        assert httpx.get(a.admin + "/routes", timeout=5).json()["redis"]["state"] == "up"
    finally:
        a.stop()
        b.stop()


def test_redis_down_never_turns_into_a_5xx(tmp_path: Path, up: UpstreamServer) -> None:
    require_redis_server()
    with RedisServer() as server:
        gw = gateway(tmp_path, up, "Global", "--redis-url", server.url)
        try:
            assert codes(gw, "/by-tenant", 1, **{"X-Tenant": "r"}) == [200]
            server.kill()
            # the local fallback (rate / 1 replica) decides now: the same budget, counted afresh
            answers = codes(gw, "/by-tenant", 4, **{"X-Tenant": "r"})
            assert all(code in (200, 429) for code in answers) and 429 in answers
            assert "redis" in gw.log().lower()
            shown = httpx.get(gw.admin + "/routes", timeout=5).json()["redis"]
            assert shown["state"] in ("down", "probing") and shown["failures"] >= 1
            health = httpx.get(gw.admin + "/health", timeout=5)
            assert health.status_code == 200 and health.json()["redis"]["state"] in ("down", "probing")
            metrics = httpx.get(gw.admin + "/metrics", timeout=5).text
            assert "kubegate_redis_up 0.0" in metrics
            fallbacks = [
                line for line in metrics.splitlines()
                if line.startswith('kubegate_rate_limit_fallbacks_total{route="default/by-tenant"}')
            ]  # fmt: skip
            assert len(fallbacks) == 1 and float(fallbacks[0].split()[-1]) >= 4
        finally:
            gw.stop()


def test_a_limited_route_whose_cache_waits_on_redis_sends_its_ratelimit_headers_once(
    tmp_path: Path, up: UpstreamServer
) -> None:
    """A request of a route with a limit and a Redis cache waits for the cache's lookup after the limit
    admitted it, then goes on: the RateLimit lines chosen before the wait are sent once, not twice."""
    require_redis_server()
    routes = tmp_path / "routes.yaml"
    routes.write_text(f"""\
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: limited-cache}}
spec:
  match: {{path: {{value: /lc}}}}
  backends: [{{url: "{up.url}"}}]
  rateLimit: {{requestsPerSecond: 0.01, burst: 5, scope: Local, key: Route}}
  cache: {{ttl: 60s, store: Redis}}
""")
    with RedisServer() as server:
        gw = GatewayProcess(tmp_path, routes=routes, extra=["--redis-url", server.url])
        try:
            wait_for(lambda: gw.table().get("routes") == 1, timeout=20)
            for expected in ("MISS", "HIT"):
                answer = httpx.get(gw.url + "/lc/x", timeout=10)
                assert (answer.status_code, answer.headers["x-cache"]) == (200, expected)
                assert len(answer.headers.get_list("ratelimit-policy")) == 1, answer.headers
                assert len(answer.headers.get_list("ratelimit")) == 1, answer.headers
        finally:
            gw.stop()
