"""The replica count a Global rate limit falls back to sharing: the limiter following it, and the admin API
that sets it (issue 11, "Redis outage").

Aspects, on a fake clock: ``Gcra.resize`` keeps every key's TAT; a Global limit without Redis, and one
whose Redis is down (the :class:`~kubegate.dataplane.redislimit.GlobalLimit` fallback), admits
``requestsPerSecond / N`` (``ceil(R / N * T) + burst // N`` over a window of T seconds) once the count is N,
at its next check, without a new limiter, a client that had spent its bucket staying limited; the count's
bounds. The admin app, in process: ``PUT /replicas`` refused without a bearer token (401), with a wrong or
unset one (403) and for anything but a whole number from 1 to 10,000 (400), each time with the count left
alone; accepted, it changes the limits of the table served without a new snapshot; the
``kubegate-replicas`` header of a table push sets it with the table, and a bad one refuses the push whole;
``GET /replicas``, ``GET /table``, ``/health`` and ``/routes`` show it. A real ``kubegate serve``: 1 in
standalone mode, and ``PUT /replicas`` changing what a Global route without Redis admits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubegate.compiler.edge import RateLimit
from kubegate.compiler.table import RouteTable, TableDelta
from kubegate.dataplane import admin, redislimit
from kubegate.dataplane.edge import EdgeContext
from kubegate.dataplane.policies.ratelimit import (
    MAX_REPLICAS,
    Decision,
    Gcra,
    LocalLimiter,
    ReplicaCount,
    ReplicaShare,
    parse_replicas,
)
from kubegate.dataplane.proxy import Gateway
from kubegate.dataplane.ratelimiting import RouteLimit
from kubegate.dataplane.redislimit import GlobalLimit, RedisBackend
from kubegate.dataplane.snapshot import SnapshotStore
from tests.gateway import TOKEN, GatewayProcess, route, table
from tests.upstreams import UpstreamServer, wait_for


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _at_once(check: Any, key: str) -> int:
    """How many requests of a fresh ``key`` are admitted at one instant."""
    admitted = 0
    while check(key).allowed:
        admitted += 1
        assert admitted < 10_000, "never refused"
    return admitted


def _flood(check: Any, clock: Clock, key: str, seconds: float, step: float = 0.001) -> int:
    """Offer two requests of ``key`` at every ``step`` of ``[now, now + seconds)``; how many got in."""
    start, admitted = clock.now, 0
    for tick in range(round(seconds / step)):
        clock.now = start + tick * step
        admitted += check(key).allowed + check(key).allowed
    return admitted


# --- the limiter ----------------------------------------------------------------------------------------


def test_resize_keeps_each_key_s_tat() -> None:
    gcra = Gcra(10, 9)
    assert sum(gcra.check("a", 0.0).allowed for _ in range(12)) == 10  # burst + 1; TAT is now 1.0
    gcra.resize(5, 4)  # tau = 0.8: "a" is 1.0 ahead, refused for 0.2 s more
    assert (gcra.rate, gcra.burst, len(gcra)) == (5.0, 4, 1)
    refused = gcra.check("a", 0.0)
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after == pytest.approx(0.2) and refused.reset == pytest.approx(1.0)
    assert gcra.check("a", 0.2).allowed and not gcra.check("a", 0.2).allowed  # then one per 0.2 s
    assert gcra.check("a", 0.4).allowed
    assert sum(gcra.check("b", 0.0).allowed for _ in range(9)) == 5  # a fresh key: the new burst + 1
    with pytest.raises(ValueError, match="rate"):
        gcra.resize(0, 1)
    assert (gcra.rate, gcra.burst) == (5.0, 4)


def test_replica_count_bounds() -> None:
    assert [parse_replicas(v) for v in (1, 7, MAX_REPLICAS)] == [1, 7, MAX_REPLICAS]
    bad: object
    for bad in (0, -1, MAX_REPLICAS + 1, 1.0, 2.5, True, None, "3", [], {}):
        with pytest.raises(ValueError, match="replicas"):
            parse_replicas(bad)
    count = ReplicaCount()
    assert count.count == 1 and count.set(4) == 1 and count.count == 4
    with pytest.raises(ValueError):
        count.set(0)
    assert count.count == 4 and repr(count) == "<ReplicaCount 4>"


GLOBAL = RateLimit.model_validate({"requestsPerSecond": 12, "burst": 6, "key": "Route", "scope": "Global"})


@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 5, 12, 13])
def test_a_global_limit_without_redis_admits_its_share_after_the_count_changes(replicas: int) -> None:
    clock = Clock()
    count = ReplicaCount()
    limit = RouteLimit(GLOBAL, "default/r", redis=None, replicas=count, trusted=())
    limiter = limit.limiter
    assert isinstance(limiter, LocalLimiter)
    share = limiter.gcra
    assert isinstance(share, ReplicaShare)
    limiter.clock = clock
    assert _at_once(limiter.check, "spent") == 7  # 12/s, burst 6: the whole limit while alone
    count.set(replicas)  # what PUT /replicas does, from the admin thread
    rate, burst = 12 / replicas, 6 // replicas
    assert _at_once(limiter.check, "fresh") == burst + 1
    clock.now += 100.0
    assert _flood(limiter.check, clock, "flooded", 3.0) == math.ceil(rate * 3.0 - 1e-9) + burst
    assert share.share == replicas and share.rate == pytest.approx(rate)


def test_the_share_keeps_the_buckets_when_the_count_changes() -> None:
    clock = Clock()
    count = ReplicaCount(2)
    limit = RouteLimit(GLOBAL, "default/r", redis=None, replicas=count, trusted=())
    limiter = limit.limiter
    assert isinstance(limiter, LocalLimiter) and isinstance(limiter.gcra, ReplicaShare)
    limiter.clock = clock
    gcra = limiter.gcra
    assert _at_once(limiter.check, "a") == 4  # 6/s, burst 3
    count.set(3)
    assert not limiter.check("a").allowed, "a spent bucket must not be refilled by a new count"
    assert gcra is limiter.gcra and len(gcra) == 1 and (gcra.rate, gcra.burst) == (4.0, 2)
    clock.now += 0.25  # 4/s now: one request every 0.25 s once the bucket's TAT is reached
    assert limiter.check("a").allowed
    count.set(1)
    assert _at_once(limiter.check, "b") == 7
    assert "1/1 of 12/s burst=6" in repr(gcra)


async def test_the_global_fallback_while_redis_is_down_follows_the_count() -> None:
    clock = Clock()
    client = redislimit.connect("redis://127.0.0.1:1/0")  # never reached: the backend is down
    try:
        backend = RedisBackend(client, clock=clock)
        backend.state, backend.retry_at = redislimit.DOWN, clock.now + 3600  # within its backoff
        count = ReplicaCount()
        limit = RouteLimit(GLOBAL, "default/r", redis=backend, replicas=count, trusted=())
        limiter = limit.limiter
        assert isinstance(limiter, GlobalLimit)
        limiter.clock = clock

        def check(key: str) -> Decision:
            decision = limiter.decide(key, lambda _: None)
            assert decision is not None, "Redis is down: the local fallback answers at once"
            return decision

        assert _at_once(check, "one") == 7
        count.set(4)  # 3/s, burst 1
        assert _at_once(check, "four") == 2
        clock.now += 100.0
        assert _flood(check, clock, "flooded", 2.0) == 6 + 1
        assert limiter.fallbacks == limiter.calls and backend.calls == 0
    finally:
        await client.aclose()


# --- the admin API, in process --------------------------------------------------------------------------


def limited_table(version: str = "t1") -> dict[str, Any]:
    rate_limit = {"requestsPerSecond": 12, "burst": 6, "key": "Route", "scope": "Global"}
    return table(route("limited", "http://127.0.0.1:9", edge={"rateLimit": rate_limit}), version=version)


class Admin:
    """The admin app over a store with an EdgeContext (as ``kubegate serve`` builds it), through httpx."""

    def __init__(self, token: str | None = TOKEN) -> None:
        self.context = EdgeContext()
        self.gateway = Gateway(store=SnapshotStore(clock=lambda: 0.0, context=self.context))
        self.app = admin.build_admin_app(self.gateway, push_token=lambda: token)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://admin")

    async def put(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        given = {"authorization": f"Bearer {TOKEN}"} if headers is None else headers
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.client.put("/replicas", content=content, headers=given)

    async def push(self, wire: dict[str, Any], method: str = "PUT", **headers: str) -> httpx.Response:
        return await self.client.request(
            method, "/table", json=wire, headers={"authorization": f"Bearer {TOKEN}", **headers}
        )


@pytest.fixture
async def adm() -> Any:
    a = Admin()
    yield a
    await a.client.aclose()


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": f"Basic {TOKEN}"}, {"authorization": TOKEN}, {"authorization": ""}]
)
async def test_put_replicas_without_a_bearer_token_is_401(adm: Admin, headers: dict[str, str]) -> None:
    answer = await adm.put({"replicas": 3}, headers)
    assert (answer.status_code, answer.json()) == (401, {"error": "missing bearer token"})
    assert answer.headers["www-authenticate"] == "Bearer"
    assert adm.context.replicas.count == 1


@pytest.mark.parametrize("configured", [TOKEN, None])
@pytest.mark.parametrize("sent", ["wrong", TOKEN + "x", TOKEN.upper()])
async def test_put_replicas_with_a_wrong_or_unset_token_is_403(configured: str | None, sent: str) -> None:
    a = Admin(configured)
    try:
        answer = await a.put({"replicas": 3}, {"authorization": f"Bearer {sent}"})
        assert (answer.status_code, answer.json()) == (403, {"error": "invalid bearer token"})
        assert a.context.replicas.count == 1
        assert (await a.client.get("/replicas")).json() == {"replicas": 1}
    finally:
        await a.client.aclose()


@pytest.mark.parametrize(
    "body",
    [
        {"replicas": 0},
        {"replicas": -3},
        {"replicas": 1.5},
        {"replicas": 2.0},
        {"replicas": "3"},
        {"replicas": True},
        {"replicas": None},
        {"replicas": [3]},
        {"replicas": MAX_REPLICAS + 1},
        {"replicas": 3, "extra": 1},
        {"count": 3},
        {},
        [3],
        3,
        b"",
        b"{not json",
        b'{"replicas": 3',
        b"\xff\xfe",
        b"[" * 600,
    ],
)
async def test_a_bad_replica_count_is_400_and_changes_nothing(adm: Admin, body: Any) -> None:
    assert (await adm.put({"replicas": 5})).status_code == 200
    answer = await adm.put(body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid replica count" and answer.json()["reasons"]
    assert adm.context.replicas.count == 5
    assert (await adm.client.get("/replicas")).json() == {"replicas": 5}


async def test_a_replica_count_body_over_its_limit_is_413(adm: Admin) -> None:
    answer = await adm.put(b'{"replicas": 3' + b" " * 2000 + b"}")
    assert answer.status_code == 413 and "larger than" in answer.json()["error"]
    assert adm.context.replicas.count == 1


async def test_put_replicas_changes_the_limits_of_the_table_served(adm: Admin) -> None:
    assert (await adm.push(limited_table())).status_code == 200
    snapshot = adm.gateway.store.current
    assert snapshot is not None
    edge = snapshot.routes["default/limited"].edge
    assert edge is not None and edge.limit is not None
    limiter = edge.limit.limiter
    assert isinstance(limiter, LocalLimiter)  # Global without Redis: this replica's share
    clock = Clock()
    limiter.clock = clock
    assert _at_once(limiter.check, "before") == 7

    answer = await adm.put({"replicas": 3})
    assert (answer.status_code, answer.json()) == (200, {"replicas": 3, "previous": 1})
    assert adm.gateway.store.current is snapshot, "the count needs no new table"
    assert _at_once(limiter.check, "after") == 3  # 4/s, burst 2
    assert (await adm.client.get("/replicas")).json() == {"replicas": 3}
    assert (await adm.client.get("/health")).json() == {"status": "ok", "replicas": 3}
    assert (await adm.client.get("/table")).json()["replicas"] == 3
    assert (await adm.client.get("/routes")).json()["replicas"] == 3
    again = await adm.put({"replicas": 3})
    assert again.json() == {"replicas": 3, "previous": 3}


async def test_a_push_carries_the_count_and_a_bad_one_refuses_the_push(adm: Admin) -> None:
    first = await adm.push(limited_table("t1"), **{admin.REPLICAS_HEADER: "4"})
    assert first.status_code == 200 and first.json()["replicas"] == 4
    assert adm.context.replicas.count == 4
    for bad in ("0", "x", "", "2.5", "-2", "+2", "3 3", "0x3", str(MAX_REPLICAS + 1)):
        answer = await adm.push(limited_table("t2"), **{admin.REPLICAS_HEADER: bad})
        assert answer.status_code == 400 and answer.json()["error"] == "invalid kubegate-replicas header"
        assert adm.context.replicas.count == 4
        assert (await adm.client.get("/table")).json()["version"] == "t1", "a refused push swapped a table"
    # a push without the header leaves the count; a push whose table is refused leaves it too
    assert (await adm.push(limited_table("t3"))).json()["replicas"] == 4
    refused = await adm.push({"version": "t4", "routes": [{"id": 1}]}, **{admin.REPLICAS_HEADER: "2"})
    assert refused.status_code == 400 and adm.context.replicas.count == 4
    # and a delta carries it as well
    current = adm.gateway.store.current
    assert current is not None
    delta = TableDelta.between(current.table, RouteTable.from_wire(limited_table("t5")))
    patched = await adm.push(delta.to_wire(), "PATCH", **{admin.REPLICAS_HEADER: "2"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["replicas"] == 2 and adm.context.replicas.count == 2
    unauthorized = await adm.push(limited_table("t6"), authorization="Bearer wrong")
    assert unauthorized.status_code == 403 and adm.context.replicas.count == 2


# --- a real `kubegate serve` ----------------------------------------------------------------------------

# One request per 100 s and a burst of 5: over a test's few seconds, a fresh key gets 5 // N + 1.
ROUTES = """
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: shared}}
spec:
  match: {{path: {{value: /shared}}}}
  backends: [{{url: "{up}"}}]
  rateLimit: {{requestsPerSecond: 0.01, burst: 5, key: Header, header: X-Tenant, scope: Global}}
"""


@pytest.fixture(scope="module")
def up() -> Iterator[UpstreamServer]:
    server = UpstreamServer("shared").start()
    yield server
    server.stop()


def admitted(gw: GatewayProcess, tenant: str) -> int:
    """Requests of ``tenant`` admitted before the first 429 (at most 10)."""
    for n in range(10):
        if httpx.get(gw.url + "/shared", headers={"X-Tenant": tenant}, timeout=10).status_code == 429:
            return n
    return 10


def test_a_standalone_replica_counts_one_until_told_otherwise(tmp_path: Path, up: UpstreamServer) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(up=up.url))
    gw = GatewayProcess(tmp_path, routes=routes)
    try:
        wait_for(lambda: gw.table().get("routes") == 1, timeout=20)
        assert httpx.get(gw.admin + "/replicas", timeout=5).json() == {"replicas": 1}
        assert httpx.get(gw.admin + "/health", timeout=5).json()["replicas"] == 1
        assert admitted(gw, "alone") == 6  # burst 5 + 1: the whole limit
        auth = {"authorization": f"Bearer {TOKEN}"}
        told = httpx.put(gw.admin + "/replicas", json={"replicas": 3}, headers=auth, timeout=5)
        assert told.json() == {"replicas": 3, "previous": 1}
        assert admitted(gw, "one-of-three") == 2  # burst 5 // 3 + 1
        assert admitted(gw, "alone") == 0  # still spent
        assert httpx.put(gw.admin + "/replicas", json={"replicas": 0}, headers=auth).status_code == 400
        assert httpx.put(gw.admin + "/replicas", json={"replicas": 2}).status_code == 401
        assert admitted(gw, "one-of-three-still") == 2
        assert httpx.put(gw.admin + "/replicas", json={"replicas": 2}, headers=auth).status_code == 200
        assert admitted(gw, "one-of-two") == 3
        assert "2 data-plane replicas (was 3)" in gw.log()
    finally:
        gw.stop()
