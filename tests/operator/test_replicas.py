"""The operator tells every data-plane replica how many replicas there are (issue 11: a Global rate limit
falls back to ``requestsPerSecond / replicas`` while Redis is away, and is enforced so without Redis).

Aspects, with the publisher in process against real data-plane admin apps (in process too, through
httpx's ASGI transport; no sockets): the count goes with the first table (no request of its own); a
scale-up from 3 to 5 with the same table reaches the 3 old replicas with ``PUT /replicas`` and pushes no
table; a scale-down tells the rest; a replica that comes back at 1 while serving the same table is told
again by the periodic check, and one that already knows is told nothing (an operator restart); a refused
count (a wrong token) is counted and logged and retried with backoff until it is accepted; an unreachable
replica never holds back the others; a standby tells nothing. End to end, with the kube emulator, a real
operator process and real ``kubegate serve`` processes: the count follows the data-plane EndpointSlices
from 2 to 3 and back to 2 while the table stays the same, and a Global route without Redis admits each
replica's share (``burst // replicas + 1`` at once). No test sleeps to let time pass: waits are bounded
polls on conditions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from kubegate import pushtoken
from kubegate.compiler import table as tables
from kubegate.dataplane import admin
from kubegate.dataplane.edge import EdgeContext
from kubegate.dataplane.policies.ratelimit import LocalLimiter
from kubegate.dataplane.proxy import Gateway
from kubegate.dataplane.snapshot import SnapshotStore
from kubegate_operator import metrics as metrics_mod
from kubegate_operator import publisher, state
from tests.gateway import TOKEN, GatewayProcess
from tests.operator.conftest import Cluster, endpoint_slice, gatewayroute, service
from tests.operator.kube import ROUTES, SERVICES, SLICES, KubeAPI
from tests.upstreams import UpstreamServer

GUARD = 20.0  # seconds: a hang guard, never a measure

# --- the publisher against in-process data-plane admin apps ---------------------------------------------


class Plane:
    """One data plane's admin app (as ``kubegate serve`` wires it) and what it was asked."""

    def __init__(self, worker: concurrent.futures.Executor, token: str = TOKEN) -> None:
        self.context = EdgeContext()
        self.gateway = Gateway(store=SnapshotStore(context=self.context))
        self.token = token
        # No grace for a previous token: a changed token here is a wrong one (rotations: test_push_token.py).
        tokens = pushtoken.RotatingToken(lambda: self.token, grace=0)
        self.app = admin.build_admin_app(self.gateway, push_token=tokens, worker=worker)
        self.transport = httpx.ASGITransport(app=self.app)
        self.requests: list[str] = []

    @property
    def count(self) -> int:
        return self.context.replicas.count

    def version(self) -> str | None:
        current = self.gateway.store.current
        return current.version if current is not None else None


class Planes(httpx.AsyncBaseTransport):
    """An httpx transport sending each request to the plane of its host; unknown hosts refuse."""

    def __init__(self) -> None:
        self.worker = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="test-admin-work")
        self.by_host: dict[str, Plane] = {}

    def add(self, host: str, token: str = TOKEN) -> state.Replica:
        self.by_host[host] = Plane(self.worker, token)
        return state.Replica(host, 9090)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        plane = self.by_host.get(request.url.host)
        if plane is None:
            raise httpx.ConnectError("connection refused", request=request)
        plane.requests.append(f"{request.method} {request.url.path}")
        return await plane.transport.handle_async_request(request)


def _table(version: str) -> tables.RouteTable:
    rate_limit = {"requestsPerSecond": 10, "burst": 9, "key": "Route", "scope": "Global"}
    return tables.RouteTable.from_wire(
        {
            "version": version,
            "routes": [
                {
                    "id": "default/limited",
                    "namespace": "default",
                    "name": "limited",
                    "generation": 1,
                    "backends": [
                        {"name": "url:http://127.0.0.1:9", "endpoints": [{"host": "127.0.0.1", "port": 9}]}
                    ],
                    "edge": {"rateLimit": rate_limit},
                }
            ],
        }
    )


async def _until(predicate: Any, timeout: float = GUARD) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Rig:
    def __init__(self, planes: Planes, client: httpx.AsyncClient, metrics: metrics_mod.Metrics) -> None:
        self.planes = planes
        self.metrics = metrics
        self.pub = publisher.Publisher(
            client=client,
            token=lambda: TOKEN,
            backoff_initial=0.01,
            backoff_max=0.05,
            timeout=GUARD,
            metrics=metrics,
        )

    def hosts(self, *hosts: str) -> list[state.Replica]:
        return [state.Replica(h, 9090) for h in hosts]

    def counts(self, *hosts: str) -> list[int]:
        return [self.planes.by_host[h].count for h in hosts]

    def table_pushes(self) -> float:
        return self.metrics.value("kubegate_operator_pushes_total", {"result": "ok"})


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    planes = Planes()
    async with httpx.AsyncClient(transport=planes) as client:
        r = Rig(planes, client, metrics_mod.Metrics())
        try:
            yield r
        finally:
            await r.pub.close()
            planes.worker.shutdown(wait=True)


OLD = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
NEW = ("10.0.0.4", "10.0.0.5")


async def test_a_scale_up_with_the_same_table_reaches_the_old_replicas(rig: Rig) -> None:
    for host in OLD + NEW:
        rig.planes.add(host)
    rig.pub.set_replicas(rig.hosts(*OLD))
    rig.pub.publish(_table("v1"))
    await _until(lambda: rig.pub.in_sync() == 3 and rig.counts(*OLD) == [3, 3, 3])
    # the count went with the table: one GET /table and one PUT /table each, nothing else
    assert all(rig.planes.by_host[h].requests == ["GET /table", "PUT /table"] for h in OLD)
    assert rig.pub.tells == {} and rig.table_pushes() == 3

    rig.pub.set_replicas(rig.hosts(*OLD, *NEW))  # 3 → 5, the table unchanged
    await _until(lambda: rig.pub.in_sync() == 5 and rig.counts(*OLD, *NEW) == [5] * 5)
    assert all(rig.planes.by_host[h].requests[-1] == "PUT /replicas" for h in OLD)
    assert [rig.planes.by_host[h].version() for h in OLD + NEW] == ["v1"] * 5
    assert rig.table_pushes() == 5, "the old replicas got no table again"
    assert rig.pub.tells == {"ok": 3}
    assert "5/5 told the replica count" in repr(rig.pub)

    rig.pub.set_replicas(rig.hosts(*OLD[:2]))  # 5 → 2
    await _until(lambda: rig.counts(*OLD[:2]) == [2, 2])
    assert rig.counts(OLD[2], *NEW) == [5, 5, 5]  # the ones that left are not told
    assert rig.pub.tells == {"ok": 5} and rig.table_pushes() == 5


async def test_the_count_follows_into_the_data_plane_s_rate_limits(rig: Rig) -> None:
    """The count the publisher sends is the one the table's Global limit (no Redis) shares its rate by."""
    for host in OLD:
        rig.planes.add(host)
    rig.pub.set_replicas(rig.hosts(OLD[0]))
    rig.pub.publish(_table("v1"))
    plane = rig.planes.by_host[OLD[0]]
    await _until(lambda: plane.version() == "v1")
    snapshot = plane.gateway.store.current
    assert snapshot is not None
    edge = snapshot.routes["default/limited"].edge
    assert edge is not None and edge.limit is not None
    limiter = edge.limit.limiter
    assert isinstance(limiter, LocalLimiter)  # Global without Redis: this replica's share
    limiter.clock = lambda: 100.0  # no time passes

    def at_once(key: str) -> int:
        n = 0
        while limiter.check(key).allowed:
            n += 1
        return n

    assert at_once("alone") == 10  # 10/s, burst 9
    rig.pub.set_replicas(rig.hosts(*OLD))
    await _until(lambda: plane.count == 3)
    assert plane.gateway.store.current is snapshot
    assert at_once("one-of-three") == 4  # burst 9 // 3 + 1


async def test_a_replica_back_at_one_is_told_again_and_one_that_knows_is_not(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    for host in OLD:
        rig.planes.add(host)
    rig.pub.set_replicas(rig.hosts(*OLD))
    rig.pub.publish(_table("v1"))
    await _until(lambda: rig.pub.in_sync() == 3 and rig.counts(*OLD) == [3, 3, 3])
    restarted = rig.planes.by_host[OLD[1]]
    restarted.context.replicas.set(1)  # as a replica restarted from the bootstrap table would be
    caplog.set_level(logging.INFO, logger="kubegate.operator.publisher")
    await rig.pub.check()
    await _until(lambda: restarted.count == 3)
    assert rig.pub.tells == {"ok": 1} and rig.table_pushes() == 3
    assert "uses a replica count of 1, not 3" in caplog.text

    # Another operator (a restart, a fail-over) finds every replica at the right count: it tells nothing.
    async with httpx.AsyncClient(transport=rig.planes) as client:
        other = publisher.Publisher(client=client, token=lambda: TOKEN, backoff_initial=0.01, timeout=GUARD)
        other.set_replicas(rig.hosts(*OLD))
        other.publish(_table("v1"))
        await _until(lambda: other.in_sync() == 3 and all(s.told == 3 for s in other.syncs.values()))
        await other.check()
        assert other.tells == {}
        await other.close()


async def test_a_refused_count_is_counted_logged_and_retried(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    for host in OLD:
        rig.planes.add(host)
    rig.pub.set_replicas(rig.hosts(*OLD[:2]))
    rig.pub.publish(_table("v1"))
    await _until(lambda: rig.counts(*OLD[:2]) == [2, 2])
    stubborn = rig.planes.by_host[OLD[0]]
    stubborn.token = "rotated-token-0123456789"  # its Secret changed, the operator's not yet
    rig.pub.set_replicas(rig.hosts(*OLD))
    await _until(lambda: rig.pub.tells["rejected"] >= 3)  # retried, with backoff
    assert stubborn.count == 2 and rig.planes.by_host[OLD[1]].count == 3  # the other one is not held back
    assert rig.planes.by_host[OLD[2]].count == 3
    sync = rig.pub.syncs[state.Replica(OLD[0], 9090)]
    assert sync.failures >= 3 and "403" in sync.last_error
    assert "replica count 3 to 10.0.0.1:9090 refused: HTTP 403" in caplog.text
    stubborn.token = TOKEN
    await _until(lambda: stubborn.count == 3)
    assert sync.failures == 0 and sync.last_error == ""


async def _spin(rounds: int = 50) -> None:
    """Let every ready task of the loop run a few steps (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_an_unreachable_replica_and_a_standby(rig: Rig) -> None:
    for host in OLD[:2]:
        rig.planes.add(host)
    rig.pub.set_replicas(rig.hosts(*OLD))  # OLD[2] refuses connections
    rig.pub.publish(_table("v1"))
    await _until(lambda: rig.counts(*OLD[:2]) == [3, 3])
    dead = rig.pub.syncs[state.Replica(OLD[2], 9090)]
    await _until(lambda: dead.failures >= 2)
    rig.pub.set_active(False)  # a standby keeps its state and tells nothing
    rig.pub.set_replicas(rig.hosts(*OLD[:2]))
    await _spin()
    assert rig.counts(*OLD[:2]) == [3, 3]
    assert all(rig.planes.by_host[h].requests[-1] == "PUT /table" for h in OLD[:2])
    rig.pub.set_active(True)
    await _until(lambda: rig.counts(*OLD[:2]) == [2, 2])
    assert all(rig.planes.by_host[h].requests[-1] == "PUT /replicas" for h in OLD[:2])


# --- end to end: kmock, a real operator, real data planes -----------------------------------------------

# One request per 100 s and a burst of 5: over a test's few seconds, a fresh key gets 5 // N + 1 on a
# replica that knows of N replicas (a Global limit without Redis).
LIMITED = {
    "match": {"path": {"type": "Prefix", "value": "/limited"}},
    "backends": [{"service": "limited", "port": 80}],
    "rateLimit": {
        "requestsPerSecond": 0.01,
        "burst": 5,
        "key": "Header",
        "header": "X-Tenant",
        "scope": "Global",
    },
}


@pytest.fixture(scope="module")
def scaled(
    tmp_path_factory: pytest.TempPathFactory, kube_api: KubeAPI, upstreams: dict[str, UpstreamServer]
) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("replicas"), kube_api)
    try:
        c.start_gateways(2)
        c.start_operator()
        alpha = upstreams["alpha"]
        kube_api.create(SERVICES, service("limited", 80))
        kube_api.create(SLICES, endpoint_slice("limited-1", "limited", ["127.0.0.1"], alpha.port))
        kube_api.create(ROUTES, gatewayroute("limited", LIMITED))
        yield c
    finally:
        c.close()


_probes = itertools.count()


def serves(gw: GatewayProcess) -> bool:
    """A request through ``gw`` reaches the backend (a tenant of its own: the probes spend no budget
    that the test counts)."""
    headers = {"X-Tenant": f"probe-{next(_probes)}"}
    try:
        response = httpx.get(gw.url + "/limited/x", headers=headers, timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.headers.get("x-backend") == "alpha"


def told(gw: GatewayProcess) -> int | None:
    try:
        return int(httpx.get(gw.admin + "/replicas", timeout=2).json()["replicas"])
    except httpx.HTTPError:
        return None


def admitted(gw: GatewayProcess, tenant: str) -> int:
    """Requests of ``tenant`` admitted before the first 429 (at most 10)."""
    for n in range(10):
        if httpx.get(gw.url + "/limited/x", headers={"X-Tenant": tenant}, timeout=5).status_code == 429:
            return n
    return 10


def test_the_replica_count_follows_the_replica_set(scaled: Cluster) -> None:
    scaled.wait(lambda: all(serves(gw) for gw in scaled.gateways), what="the route served by both")
    scaled.wait(lambda: [told(gw) for gw in scaled.gateways] == [2, 2], what="both replicas told 2")
    version = scaled.gateways[0].table()["version"]
    assert [admitted(gw, "two") for gw in scaled.gateways] == [3, 3]  # burst 5 // 2 + 1 each

    scaled.gateways.append(GatewayProcess(scaled.tmp))  # a scale-up: the table does not change
    scaled.publish_dataplane()
    scaled.wait(lambda: [told(gw) for gw in scaled.gateways] == [3, 3, 3], what="all three replicas told 3")
    assert [gw.table()["version"] for gw in scaled.gateways] == [version] * 3
    assert [admitted(gw, "three") for gw in scaled.gateways] == [2, 2, 2]  # burst 5 // 3 + 1 each
    assert admitted(scaled.gateways[0], "two") == 0, "a spent bucket was refilled by the new count"

    gone = scaled.gateways.pop()  # a scale-down
    scaled.publish_dataplane()
    gone.stop()
    scaled.wait(lambda: [told(gw) for gw in scaled.gateways] == [2, 2], what="the two left told 2")
    assert [gw.table()["version"] for gw in scaled.gateways] == [version] * 2
    assert [admitted(gw, "two-again") for gw in scaled.gateways] == [3, 3]
    log = "\n".join(scaled.operator.log_lines())
    assert "told: 3 replicas" in log and "told: 2 replicas" in log
