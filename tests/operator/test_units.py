"""Operator parts in isolation: debounce (fake clock), state, publisher (real data planes, an
unreachable one, and in-process fake replicas that answer a push when the test says so), status diffing
and Programmed, the reconciler's status loop, bootstrap encoding and its size limit, settings.

Aspects: a burst is one compile and the maximum delay bounds it, by the injected clock; state ignores
status-only updates and finds replicas (not-ready included, terminating excluded); an incremental state
gives the same table as a full load; one unreachable or slow replica never holds back the others (the
pushes run concurrently), a restarted replica is re-pushed, and Programmed counts only replicas that
acknowledged this generation; the push token file is read again for every push (a rotation end to end:
``test_push_token.py``); unchanged statuses are not rewritten, status writes run at most ``concurrency``
at a time, and a route that is not accepted is never Programmed, even while every replica still serves a
table holding it; a new table's statuses are written once, after its pushes ended ("3/3", not "0/3"
first), and a replica whose push failed is not waited for; a table over the limit is refused; flags and
KUBEGATE_* variables; leader election judges expiry by the candidate's own clock (not the holder's
renewTime), a released Lease is taken over at once, a leader steps down as soon as another replica holds
the Lease, and by its own clock when it cannot renew. No test sleeps to let time pass: waits are hang
guards (``GUARD``) on events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from kubegate.compiler import compile as compiler
from kubegate.compiler import table as tables
from kubegate.dataplane.routesfile import load_bootstrap
from kubegate_operator import bootstrap, debounce, leader, publisher, reconciler, settings, state, status
from kubegate_operator import metrics as metrics_mod
from tests.gateway import TOKEN, GatewayProcess, free_port
from tests.operator.conftest import endpoint_slice, gatewayroute

GUARD = 20.0  # seconds: a hang guard, never a measure

# --- debounce -------------------------------------------------------------------------------------


def test_debounce_burst_is_one_compile_and_max_delay_bounds_it() -> None:
    d = debounce.Debounce(holdoff=0.05, max_delay=0.5)
    assert d.deadline() is None and not d.due(100.0)
    d.poke(10.0)
    assert d.deadline() == pytest.approx(10.05)
    assert not d.due(10.04) and d.due(10.05)
    for i in range(1, 100):  # a steady trickle every 10 ms
        d.poke(10.0 + i * 0.01)
        assert d.deadline() == pytest.approx(min(10.0 + i * 0.01 + 0.05, 10.5))
    assert d.due(10.5)
    assert d.take() == 10.0
    assert not d.pending and d.deadline() is None
    assert "idle" in repr(d)


async def _spin(rounds: int = 20) -> None:
    """Let every ready task of the loop run a few steps (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_trigger_follows_its_clock_through_a_burst() -> None:
    """A trickle of pokes keeps the compile waiting until max_delay after the first one, judged by the
    injected clock only: the real time the test takes does not matter."""
    now = [100.0]
    trigger = debounce.Trigger(holdoff=0.05, max_delay=0.5, clock=lambda: now[0])
    trigger.poke()
    waiter = asyncio.create_task(trigger.wait())
    try:
        for _ in range(12):  # a poke every 40 ms of the fake clock: the holdoff never runs out
            await _spin()
            assert not waiter.done(), f"due at {now[0]} before max_delay"
            now[0] += 0.04
            trigger.poke()
        assert now[0] == pytest.approx(100.48)
        await _spin()
        assert not waiter.done()
        now[0] += 0.04  # 100.52: past first change + max_delay
        trigger.poke()
        assert await asyncio.wait_for(waiter, GUARD) == 100.0  # the burst's first change
    finally:
        waiter.cancel()


async def test_trigger_fires_after_the_holdoff_of_its_clock() -> None:
    now = [10.0]
    trigger = debounce.Trigger(holdoff=0.05, max_delay=0.5, clock=lambda: now[0])
    trigger.poke()
    waiter = asyncio.create_task(trigger.wait())
    try:
        await _spin()
        assert not waiter.done()
        now[0] = 10.06  # the waiter sleeps the 50 ms it computed, then finds its clock there
        assert await asyncio.wait_for(waiter, GUARD) == 10.0
        assert not trigger.debounce.pending
    finally:
        waiter.cancel()


# --- state ----------------------------------------------------------------------------------------


ROUTE_SPEC = {
    "match": {"path": {"type": "Prefix", "value": "/x"}},
    "backends": [{"service": "svc", "port": 80}],
}


def _route(name: str, generation: int = 1, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    body = gatewayroute(name, spec or ROUTE_SPEC)
    body["metadata"].update(generation=generation, creationTimestamp="2024-01-01T00:00:00Z", uid=name)
    return body


def test_state_ignores_status_only_changes_and_finds_replicas() -> None:
    st = state.ClusterState(dataplane_service=("sys", "dp"))
    body = _route("r1")
    assert st.upsert(state.GATEWAYROUTE, body)
    with_status = {**copy.deepcopy(body), "status": {"conditions": []}}
    with_status["metadata"]["resourceVersion"] = "99"
    assert not st.upsert(state.GATEWAYROUTE, with_status), "a status write must not trigger a compile"
    assert st.observed_status == {"default/r1": {"conditions": []}}

    dp = endpoint_slice("dp-1", "dp", ["10.0.0.1", "10.0.0.2"], 9090, "sys", port_name="admin", ready=False)
    dp["endpoints"].append({"addresses": ["10.0.0.3"], "conditions": {"ready": False, "terminating": True}})
    dp["ports"].append({"name": "http", "port": 8080})
    assert st.upsert(state.ENDPOINTSLICE, dp)
    assert [str(r) for r in st.replicas()] == ["10.0.0.1:9090", "10.0.0.2:9090"]
    other = endpoint_slice("other-1", "other", ["10.0.0.9"], 9090, "sys", port_name="admin")
    st.upsert(state.ENDPOINTSLICE, other)
    assert len(st.replicas()) == 2
    assert st.delete(state.ENDPOINTSLICE, dp) and st.replicas() == []


def test_state_counts_listed_objects_until_events_bring_them() -> None:
    st = state.ClusterState(namespaces=("default",), dataplane_service=("sys", "dp"))
    st.expect(state.GATEWAYROUTE, {("default", "r1"), ("default", "r2"), ("elsewhere", "r3")})
    st.expect(state.ENDPOINTSLICE, {("sys", "dp-1")})
    assert st.missing == 3  # r3 is out of scope: no event will ever bring it
    st.upsert(state.GATEWAYROUTE, _route("r1"))
    st.upsert(state.GATEWAYROUTE, _route("r1"))
    assert st.missing == 2
    st.delete(state.GATEWAYROUTE, _route("r2"))  # deleted before kopf listed it
    st.upsert(state.ENDPOINTSLICE, endpoint_slice("dp-1", "dp", ["10.0.0.1"], 1, "sys", port_name="admin"))
    assert st.missing == 0
    st.expect(state.GATEWAYROUTE, {("default", "r1")})  # already seen: not missing
    assert st.missing == 0


def test_namespaces_limit_routes_but_not_the_dataplane() -> None:
    st = state.ClusterState(namespaces=("team",), dataplane_service=("sys", "dp"))
    assert not st.upsert(state.GATEWAYROUTE, _route("r1"))  # in "default"
    assert st.upsert(
        state.ENDPOINTSLICE, endpoint_slice("dp-1", "dp", ["10.0.0.1"], 1, "sys", port_name="admin")
    )


def test_incremental_state_compiles_like_a_full_load() -> None:
    now = datetime(2024, 6, 1, tzinfo=UTC)
    routes = [
        _route(f"r{i}", spec={**ROUTE_SPEC, "match": {"path": {"type": "Prefix", "value": f"/p{i}"}}})
        for i in range(20)
    ]
    slices = [endpoint_slice("svc-1", "svc", ["10.1.0.1"], 8080)]
    full = state.ClusterState()
    for obj in routes + slices:
        full.upsert(state.ENDPOINTSLICE if obj["kind"] == "EndpointSlice" else state.GATEWAYROUTE, obj)

    incremental = state.ClusterState()
    for obj in reversed(routes):  # other order, with detours: edits, deletions, re-creations
        incremental.upsert(state.GATEWAYROUTE, {**obj, "spec": {**ROUTE_SPEC, "timeout": "5s"}})
        incremental.upsert(state.GATEWAYROUTE, obj)
    incremental.upsert(state.ENDPOINTSLICE, endpoint_slice("svc-1", "svc", ["10.9.9.9"], 1))
    incremental.upsert(state.GATEWAYROUTE, _route("gone"))
    incremental.delete(state.GATEWAYROUTE, _route("gone"))
    incremental.upsert(state.ENDPOINTSLICE, slices[0])

    a = compiler.compile_bundle(full.bundle(), now=now).table
    b = compiler.compile_bundle(incremental.bundle(), now=now).table
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() == compiler.compile_bundle(full.bundle(), now=now).table.content_hash()


# --- publisher against real data planes ----------------------------------------------------------


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("planes")
    gws = [GatewayProcess(tmp), GatewayProcess(tmp)]
    yield gws
    for gw in gws:
        gw.stop()


def _table(version: str, generation: int = 1) -> tables.RouteTable:
    return tables.RouteTable.from_wire(
        {
            "version": version,
            "routes": [
                {
                    "id": "default/r1",
                    "namespace": "default",
                    "name": "r1",
                    "generation": generation,
                    "backends": [
                        {"name": "url:http://127.0.0.1:9", "endpoints": [{"host": "127.0.0.1", "port": 9}]}
                    ],
                }
            ],
        }
    )


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_publisher_one_dead_replica_never_holds_back_the_others(planes: list[GatewayProcess]) -> None:
    m = metrics_mod.Metrics()
    dead = state.Replica("127.0.0.1", free_port())  # nothing listens there
    live = [state.Replica("127.0.0.1", gw.admin_port) for gw in planes]
    async with httpx.AsyncClient() as client:
        pub = publisher.Publisher(
            client=client, token=lambda: TOKEN, backoff_initial=0.05, backoff_max=0.2, timeout=2, metrics=m
        )
        pub.set_replicas([dead, *live])
        pub.publish(_table("v1"))
        await _until(lambda: pub.in_sync() == 2)
        assert [gw.table()["version"] for gw in planes] == ["v1", "v1"]
        assert pub.programmed("default/r1", 1) == (2, 3)
        assert pub.programmed("default/r1", 2) == (0, 3)
        assert pub.syncs[dead].failures >= 1 and "Connect" in pub.syncs[dead].last_error
        assert m.value("kubegate_operator_pushes_total", {"result": "ok"}) == 2
        assert "2/3 replicas in sync" in repr(pub)

        pub.set_replicas(live)  # the dead one leaves the Service
        assert pub.all_in_sync() and pub.programmed("default/r1", 1) == (2, 2)

        pub.publish(_table("v2", generation=2))
        await _until(lambda: pub.in_sync() == 2)
        assert pub.programmed("default/r1", 2) == (2, 2) and pub.programmed("default/r1", 1) == (0, 2)
        await pub.close()


async def test_publisher_check_repushes_a_replica_that_serves_something_else(
    planes: list[GatewayProcess],
) -> None:
    live = [state.Replica("127.0.0.1", gw.admin_port) for gw in planes]
    async with httpx.AsyncClient() as client:
        pub = publisher.Publisher(client=client, token=lambda: TOKEN, backoff_initial=0.05, timeout=2)
        pub.set_replicas(live)
        pub.publish(_table("v3"))
        await _until(lambda: pub.in_sync() == 2)
        # Someone else (a restart with a bootstrap file, a stray push) changes replica 0's table.
        assert planes[0].push(_table("other").to_wire()).status_code == 200
        assert pub.in_sync() == 2  # the publisher does not know yet...
        await pub.check()  # ... until it looks
        await _until(lambda: pub.in_sync() == 2 and planes[0].table()["version"] == "v3")
        await pub.close()


def _wide_table(version: str, ports: dict[str, int]) -> tables.RouteTable:
    return tables.RouteTable.model_validate(
        {
            "version": version,
            "routes": [
                {
                    "id": f"default/{name}",
                    "namespace": "default",
                    "name": name,
                    "generation": 1,
                    "match": {"path": {"type": "Prefix", "value": f"/{name}"}},
                    "backends": [{"name": f"b-{name}", "endpoints": [{"host": "127.0.0.1", "port": port}]}],
                }
                for name, port in sorted(ports.items())
            ],
        }
    )


async def test_publisher_sends_deltas_and_the_whole_table_to_a_replica_that_serves_another(
    planes: list[GatewayProcess],
) -> None:
    m = metrics_mod.Metrics()
    live = [state.Replica("127.0.0.1", gw.admin_port) for gw in planes]
    ports = {f"r{i}": 9000 + i for i in range(10)}
    async with httpx.AsyncClient() as client:
        pub = publisher.Publisher(
            client=client, token=lambda: TOKEN, backoff_initial=0.05, timeout=2, metrics=m
        )
        pub.set_replicas(live)
        pub.publish(_wide_table("d1", ports))
        await _until(lambda: pub.in_sync() == 2)
        assert m.value("kubegate_operator_delta_pushes_total", {"result": "ok"}) == 0  # nothing to build on

        pub.publish(_wide_table("d2", {**ports, "r3": 1, "new": 2}))
        await _until(lambda: pub.in_sync() == 2)
        assert m.value("kubegate_operator_delta_pushes_total", {"result": "ok"}) == 2
        assert [gw.table()["version"] for gw in planes] == ["d2", "d2"]
        assert pub.desired is not None
        assert [gw.table()["hash"] for gw in planes] == [pub.desired.hash] * 2

        # Replica 0 starts serving another table behind the publisher's back: its delta gets 409, and it
        # gets the whole table right away; replica 1 still takes the delta.
        assert planes[0].push(_wide_table("elsewhere", {"x": 1}).to_wire()).status_code == 200
        pub.publish(_wide_table("d3", {**ports, "r3": 1, "new": 3}))
        await _until(lambda: pub.in_sync() == 2)
        assert m.value("kubegate_operator_delta_pushes_total", {"result": "conflict"}) == 1
        assert m.value("kubegate_operator_delta_pushes_total", {"result": "ok"}) == 3
        assert [gw.table()["version"] for gw in planes] == ["d3", "d3"]
        await pub.close()


async def test_publisher_pushes_nothing_to_a_replica_that_already_serves_the_table(
    planes: list[GatewayProcess],
) -> None:
    """After an operator restart the replicas serve the table it compiles again: it asks, and pushes
    nothing (at 10,000 routes that saves a 3.4 MB push and a table swap per replica)."""
    m = metrics_mod.Metrics()
    table = _wide_table("same", {"a": 1, "b": 2})
    assert planes[0].push(table.to_wire()).status_code == 200
    async with httpx.AsyncClient() as client:
        pub = publisher.Publisher(
            client=client, token=lambda: TOKEN, backoff_initial=0.05, timeout=2, metrics=m
        )
        pub.set_replicas([state.Replica("127.0.0.1", planes[0].admin_port)])
        pub.publish(table)
        await _until(lambda: pub.in_sync() == 1)
        assert m.value("kubegate_operator_pushes_total", {"result": "ok"}) == 0
        assert pub.programmed("default/a", 1) == (1, 1)
        await pub.close()


async def test_publisher_refused_token_is_reported(planes: list[GatewayProcess]) -> None:
    m = metrics_mod.Metrics()
    async with httpx.AsyncClient() as client:
        pub = publisher.Publisher(
            client=client, token=lambda: "wrong", backoff_initial=0.05, timeout=2, metrics=m
        )
        pub.set_replicas([state.Replica("127.0.0.1", planes[0].admin_port)])
        pub.publish(_table("v4"))
        await _until(lambda: m.value("kubegate_operator_pushes_total", {"result": "rejected"}) >= 1)
        assert pub.in_sync() == 0 and "403" in next(iter(pub.syncs.values())).last_error
        await pub.close()


def test_token_reader_reads_the_file_on_every_call(tmp_path: Path) -> None:
    path = tmp_path / "push-token"
    read = publisher.token_reader(path)
    assert read() is None  # not there (yet): no token, the push is not attempted
    path.write_text("first-token\n")
    assert read() == "first-token"
    path.write_text("rotated-token\n")
    assert read() == "rotated-token"
    path.write_text(" \n")
    assert read() is None
    assert publisher.token_reader(None)() is None


class FakeReplicas:
    """Data-plane admin APIs in-process, as an httpx transport: ``GET /table`` says what a replica
    serves; ``PUT /table`` is acknowledged once the replica's gate is open (``hold``), or refused
    (``refuse``); ``PATCH`` gets 409, so the publisher sends whole tables; an ``unreachable`` replica
    refuses connections. ``arrived[host]`` is set when a push reached it; replicas are told apart by host.
    A ``GET /table`` is answered with what the replica serves when it arrives, sent once its
    ``answer_gates`` gate is open (``asked[host]`` is set when it arrived); ``puts`` counts the pushes."""

    def __init__(self) -> None:
        self.serving: dict[str, tuple[str, str]] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.unreachable: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.refuse = False
        self.answer_gates: dict[str, asyncio.Event] = {}
        self.asked: dict[str, asyncio.Event] = {}
        self.puts: dict[str, int] = {}

    def hold(self, *hosts: str) -> None:
        for host in hosts:
            self.gates[host] = asyncio.Event()

    def release(self, *hosts: str) -> None:
        for host in hosts:
            self.gates[host].set()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    async def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.attempts[host] = self.attempts.get(host, 0) + 1
        if host in self.unreachable:
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "GET":
            version, hash_ = self.serving.get(host, (None, None))
            self.asked.setdefault(host, asyncio.Event()).set()
            gate = self.answer_gates.get(host)
            if gate is not None:
                await gate.wait()
            return httpx.Response(200, json={"version": version, "hash": hash_})
        if request.method == "PATCH":
            return httpx.Response(409, json={"error": "not the base table"})
        self.puts[host] = self.puts.get(host, 0) + 1
        self.arrived.setdefault(host, asyncio.Event()).set()
        gate = self.gates.get(host)
        if gate is not None:
            await gate.wait()
        if self.refuse:
            return httpx.Response(400, json={"reasons": ["refused by the test"]})
        table = tables.RouteTable.from_wire(json.loads(request.content))
        self.serving[host] = (table.version, table.content_hash())
        return httpx.Response(200, json={"version": table.version, "hash": table.content_hash()})

    async def wait_arrived(self, *hosts: str) -> None:
        for host in hosts:
            await asyncio.wait_for(self.arrived.setdefault(host, asyncio.Event()).wait(), GUARD)


REPLICA_HOSTS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")


async def test_publisher_check_ignores_an_answer_that_a_push_overtook() -> None:
    """The periodic ``GET /table`` is answered (v1) while a push of v2 is on its way, and its answer
    arrives after v2's acknowledgement: it is ignored, rather than taking the replica back to v1, out of
    sync, and pushing it the whole table again (found on the real API server's run, where the check
    runs every 0.5 s: tests/kube/test_operator_real.py)."""
    fake = FakeReplicas()
    host = REPLICA_HOSTS[0]
    replica = state.Replica(host, 9090)
    async with fake.client() as client:
        pub = publisher.Publisher(client=client, token=lambda: TOKEN, timeout=GUARD)
        pub.set_replicas([replica])
        pub.publish(_table("v1"))
        await _until(lambda: pub.in_sync() == 1)
        fake.answer_gates[host] = asyncio.Event()
        check = asyncio.create_task(pub.check())
        await asyncio.wait_for(fake.asked.setdefault(host, asyncio.Event()).wait(), GUARD)
        pub.publish(_table("v2", generation=2))
        await _until(lambda: pub.in_sync() == 1)
        assert fake.puts[host] == 2
        fake.answer_gates[host].set()  # the check's answer: v1
        await asyncio.wait_for(check, GUARD)
        ack = pub.syncs[replica].ack
        assert ack is not None and ack.version == "v2"
        assert pub.in_sync() == 1 and pub.programmed("default/r1", 2) == (1, 1)
        await _spin()
        assert fake.puts[host] == 2, "the replica was pushed v2 again"
        del fake.answer_gates[host]
        await pub.check()  # a check answered after the push sees v2: nothing to do
        assert pub.syncs[replica].ack is ack and fake.puts[host] == 2
        await pub.close()


async def test_publisher_a_slow_replica_never_holds_back_the_others() -> None:
    """Pushes run concurrently: the three are under way at once, and the two fast replicas are
    acknowledged while the slow one still has not answered."""
    fake = FakeReplicas()
    slow, *fast = REPLICA_HOSTS
    fake.hold(*REPLICA_HOSTS)
    async with fake.client() as client:
        pub = publisher.Publisher(client=client, token=lambda: TOKEN, timeout=GUARD)
        pub.set_replicas([state.Replica(host, 9090) for host in REPLICA_HOSTS])
        pub.publish(_table("v1"))
        await fake.wait_arrived(*REPLICA_HOSTS)  # one push at a time would never get all three here
        fake.release(*fast)
        await _until(lambda: pub.in_sync() == 2)
        assert not pub.settled() and slow not in fake.serving
        assert pub.programmed("default/r1", 1) == (2, 3)
        fake.release(slow)
        await _until(lambda: pub.in_sync() == 3)
        assert pub.settled() and pub.programmed("default/r1", 1) == (3, 3)
        await pub.close()


# --- status ---------------------------------------------------------------------------------------


def _compiled(generation: int = 3) -> dict[str, Any]:
    result = compiler.compile_bundle(
        state_with(_route("r1", generation)).bundle(), now=datetime(2024, 1, 1, tzinfo=UTC)
    )
    return dict(result.statuses["default/r1"].model_dump(mode="json", by_alias=True, exclude_none=True))


def state_with(*routes: dict[str, Any]) -> state.ClusterState:
    st = state.ClusterState()
    for body in routes:
        st.upsert(state.GATEWAYROUTE, body)
    return st


def test_programmed_condition_counts_replicas() -> None:
    now = datetime(2024, 2, 1, tzinfo=UTC)
    compiled = _compiled()
    st = status.desired_status(compiled, acked=1, replicas=2, previous=None, now=now)
    prog = next(c for c in st["conditions"] if c["type"] == "Programmed")
    assert (prog["status"], prog["reason"], prog["message"], prog["observedGeneration"]) == (
        "False",
        "Pending",
        "1/2 replicas",
        3,
    )
    later = datetime(2024, 3, 1, tzinfo=UTC)
    done = status.desired_status(compiled, acked=2, replicas=2, previous=st, now=later)
    prog2 = next(c for c in done["conditions"] if c["type"] == "Programmed")
    assert (prog2["status"], prog2["message"], prog2["lastTransitionTime"]) == (
        "True",
        "2/2 replicas",
        "2024-03-01T00:00:00Z",
    )
    again = status.desired_status(
        compiled, acked=2, replicas=2, previous=done, now=datetime(2024, 4, 1, tzinfo=UTC)
    )
    assert again == done, "an unchanged status must compare equal (so it is not rewritten)"
    none = status.desired_status(compiled, acked=0, replicas=0, previous=None, now=now)
    assert [c["reason"] for c in none["conditions"] if c["type"] == "Programmed"] == ["NoReplicas"]


@pytest.mark.parametrize("why", ["Invalid", "Conflicted"])
def test_a_route_that_is_not_accepted_is_never_programmed(why: str) -> None:
    """Whatever the replicas acknowledged (a rejected route may still be in the table they serve while
    new pushes fail), Programmed stays False for a route that is not Accepted."""
    if why == "Invalid":
        regex = {"name": "X", "type": "RegularExpression", "value": "(["}
        bad = {**ROUTE_SPEC, "match": {"headers": [regex]}}
        routes = [_route("r1", spec=bad)]
    else:  # same match as r0, and not older: r0 wins
        routes = [_route("r0"), _route("r1")]
    result = compiler.compile_bundle(state_with(*routes).bundle(), now=datetime(2024, 1, 1, tzinfo=UTC))
    compiled = result.statuses["default/r1"].model_dump(mode="json", by_alias=True, exclude_none=True)
    accepted = next(c for c in compiled["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", why)
    for acked, replicas in [(3, 3), (1, 1), (0, 2), (0, 0)]:
        st = status.desired_status(
            compiled, acked=acked, replicas=replicas, previous=None, now=datetime(2024, 2, 1, tzinfo=UTC)
        )
        prog = next(c for c in st["conditions"] if c["type"] == "Programmed")
        assert (prog["status"], prog["reason"]) == ("False", "NotAccepted"), (acked, replicas)


async def test_status_writes_run_at_most_concurrency_at_a_time() -> None:
    in_flight: list[str] = []
    full, release = asyncio.Event(), asyncio.Event()

    async def patch(ns: str, name: str, st: dict[str, Any]) -> status.PatchResult:
        in_flight.append(name)
        if len(in_flight) == 4:
            full.set()
        await release.wait()
        in_flight.remove(name)
        return "ok"

    writer = status.StatusWriter(patch=patch, concurrency=4)
    now = datetime(2024, 2, 1, tzinfo=UTC)
    st = status.desired_status(_compiled(), acked=1, replicas=1, previous=None, now=now)
    task = asyncio.create_task(writer.write({f"default/r{i}": st for i in range(40)}, {}))
    await asyncio.wait_for(full.wait(), GUARD)
    await _spin()  # the other 36 writes had every chance to start
    assert len(in_flight) == 4
    release.set()
    assert await asyncio.wait_for(task, GUARD) == 40


async def test_status_writer_writes_only_changes() -> None:
    calls: list[tuple[str, str]] = []
    events: list[tuple[str, str]] = []

    async def patch(ns: str, name: str, st: dict[str, Any]) -> status.PatchResult:
        calls.append((ns, name))
        return "gone" if name == "gone" else "ok"

    async def event(ns: str, name: str, uid: str | None, kind: str, reason: str, message: str) -> None:
        events.append((name, reason))
        assert uid == f"uid-{name}"

    writer = status.StatusWriter(patch=patch, event=event, uid=lambda key: "uid-" + key.split("/")[1])
    now = datetime(2024, 2, 1, tzinfo=UTC)
    st = status.desired_status(_compiled(), acked=2, replicas=2, previous=None, now=now)
    observed = {"default/same": st}
    desired = {"default/r1": st, "default/same": st, "default/gone": st}
    assert await writer.write(desired, observed) == 1
    assert sorted(calls) == [("default", "gone"), ("default", "r1")]
    assert events == [("r1", "Accepted")]
    calls.clear()
    assert await writer.write(desired, observed) == 0
    assert calls == [("default", "gone")]  # a deleted route is retried (it may come back); r1 is not


async def test_a_route_created_again_under_its_name_gets_its_status_written() -> None:
    """Deleted and created again at once (``kubectl replace --force``): the same name, generation and spec,
    so the desired status of the new object equals the one written to the old object, but the new object
    carries none, and it must be written (found on the real API server, tests/kube/test_operator_real.py)."""
    uids = {"default/r": "uid-1"}
    written_to: list[str] = []

    async def patch(ns: str, name: str, st: dict[str, Any]) -> status.PatchResult:
        written_to.append(uids[f"{ns}/{name}"])
        return "ok"

    writer = status.StatusWriter(patch=patch, uid=uids.get)
    now = datetime(2024, 2, 1, tzinfo=UTC)
    st = status.desired_status(_compiled(), acked=2, replicas=2, previous=None, now=now)
    assert await writer.write({"default/r": st}, {}) == 1
    assert await writer.write({"default/r": st}, {}) == 0  # a steady state writes nothing
    uids["default/r"] = "uid-2"  # created again; no watch event has brought a status for it
    assert writer.previous("default/r", {}) is None
    assert await writer.write({"default/r": st}, {}) == 1
    assert await writer.write({"default/r": st}, {}) == 0
    assert written_to == ["uid-1", "uid-2"]


# --- the reconciler's status loop ----------------------------------------------------------------


class StatusRig:
    """A :class:`~kubegate_operator.reconciler.Reconciler` with its loops running, fake replicas behind
    its publisher, and a status writer that records every patch."""

    def __init__(self, fake: FakeReplicas, *, status_settle: float) -> None:
        self.fake = fake
        self.client = fake.client()
        self.writes: list[tuple[str, dict[str, Any]]] = []

        async def patch(ns: str, name: str, st: dict[str, Any]) -> status.PatchResult:
            self.writes.append((name, st))
            return "ok"

        pusher = publisher.Publisher(
            client=self.client, token=lambda: TOKEN, backoff_initial=0.05, backoff_max=0.2, timeout=GUARD
        )
        self.rec = reconciler.Reconciler(
            cluster=state.ClusterState(dataplane_service=("sys", "dp")),
            pusher=pusher,
            writer=status.StatusWriter(patch=patch),
            bootstrapper=None,
            metrics=metrics_mod.Metrics(),
            holdoff=0.0,
            max_delay=0.0,
            status_settle=status_settle,
        )
        self.rec.start(resync_interval=3600)
        dp = endpoint_slice("dp-1", "dp", list(REPLICA_HOSTS), 9090, "sys", port_name="admin")
        self.rec.upsert(state.ENDPOINTSLICE, dp)

    def programmed(self, name: str) -> list[tuple[str, str]]:
        """(status, message) of Programmed in each write of ``name``'s status, in order."""
        return [
            (c["status"], c["message"])
            for written, st in self.writes
            if written == name
            for c in st["conditions"]
            if c["type"] == "Programmed"
        ]

    async def close(self) -> None:
        await self.rec.stop()
        await self.client.aclose()


URL_SPEC = {
    "match": {"path": {"type": "Prefix", "value": "/one"}},
    "backends": [{"url": "http://127.0.0.1:9"}],
}


async def test_status_is_written_once_after_the_pushes_end() -> None:
    """README: a route is written once as "Programmed 3/3", not as "0/3" first, although one replica
    takes its time to acknowledge (the status loop waits for the pushes; at most status_settle)."""
    fake = FakeReplicas()
    fake.hold(*REPLICA_HOSTS)
    rig = StatusRig(fake, status_settle=3600)
    try:
        rig.rec.upsert(state.GATEWAYROUTE, _route("r1", spec=URL_SPEC))
        await fake.wait_arrived(*REPLICA_HOSTS)
        fake.release(*REPLICA_HOSTS[1:])
        await _until(lambda: rig.rec.publisher.in_sync() == 2)
        await _spin()
        assert rig.writes == [], "a status was written while a push was still under way"
        fake.release(REPLICA_HOSTS[0])
        await _until(lambda: rig.writes != [])
        await _until(lambda: rig.rec.publisher.in_sync() == 3)
        await _spin()
        assert rig.programmed("r1") == [("True", "3/3 replicas")]
    finally:
        await rig.close()


async def test_status_does_not_wait_for_an_unreachable_replica() -> None:
    """README: an unreachable replica is not waited for (status_settle is an hour here: waiting for it
    would hang the test); its failing retries rewrite nothing."""
    fake = FakeReplicas()
    fake.unreachable.add(REPLICA_HOSTS[0])
    rig = StatusRig(fake, status_settle=3600)
    try:
        rig.rec.upsert(state.GATEWAYROUTE, _route("r1", spec=URL_SPEC))
        await _until(lambda: rig.writes != [])
        assert rig.programmed("r1") == [("False", "2/3 replicas")]
        tries = fake.attempts[REPLICA_HOSTS[0]]
        await _until(lambda: fake.attempts[REPLICA_HOSTS[0]] >= tries + 3)  # retried with backoff ...
        await _spin()
        assert len(rig.writes) == 1  # ... and nothing new to write
    finally:
        await rig.close()


async def test_a_route_rejected_while_pushes_fail_is_not_programmed() -> None:
    """Every replica still serves the table holding r2 (generation 1) when r2 becomes Conflicted and the
    pushes of the new table are refused: r2 is counted on 3/3 replicas, and still not Programmed."""
    fake = FakeReplicas()
    rig = StatusRig(fake, status_settle=3600)
    two = {**URL_SPEC, "match": {"path": {"type": "Prefix", "value": "/two"}}}
    try:
        rig.rec.upsert(state.GATEWAYROUTE, _route("r1", spec=URL_SPEC))
        rig.rec.upsert(state.GATEWAYROUTE, _route("r2", spec=two))
        await _until(lambda: ("True", "3/3 replicas") in rig.programmed("r2"))
        fake.refuse = True
        rig.rec.upsert(state.GATEWAYROUTE, _route("r1", generation=2, spec=two))  # r1 is older: it wins

        def last(name: str, type_: str) -> dict[str, Any]:
            st = [s for written, s in rig.writes if written == name][-1]
            return dict(next(c for c in st["conditions"] if c["type"] == type_))

        await _until(lambda: last("r2", "Accepted")["status"] == "False")
        assert last("r2", "Accepted")["reason"] == "Conflicted"
        assert rig.rec.publisher.programmed("default/r2", 1) == (3, 3)  # what the replicas still serve
        assert (last("r2", "Programmed")["status"], last("r2", "Programmed")["reason"]) == (
            "False",
            "NotAccepted",
        )
    finally:
        await rig.close()


# --- bootstrap ------------------------------------------------------------------------------------


def big_table(routes: int) -> tables.RouteTable:
    st = state.ClusterState()
    for i in range(routes):
        spec = {
            "match": {
                "path": {"type": "Prefix", "value": f"/api/v1/team-{i % 97}/service-{i}"},
                "methods": ["GET", "POST"],
                "hosts": [f"svc-{i % 13}.example.com"],
            },
            "backends": [{"service": f"svc-{i}", "port": 8080}],
            "timeout": "30s",
        }
        st.upsert(state.GATEWAYROUTE, _route(f"route-{i}", spec=spec))
        st.upsert(
            state.ENDPOINTSLICE,
            endpoint_slice(
                f"svc-{i}-1", f"svc-{i}", [f"10.{i // 250 % 250}.{i % 250}.{j}" for j in (1, 2)], 8080
            ),
        )
    return compiler.compile_bundle(st.bundle(), now=datetime(2024, 1, 1, tzinfo=UTC), version="big").table


async def test_bootstrap_round_trip_and_limit(tmp_path: Path) -> None:
    table = big_table(200)
    stored: dict[str, Any] = {}

    async def get(ref: settings.ObjectRef) -> dict[str, Any] | None:
        return stored.get("body")

    async def put(ref: settings.ObjectRef, body: Any, exists: bool) -> None:
        stored["body"] = body
        stored["exists"] = exists

    ref = settings.ObjectRef("sys", "boot")
    m = metrics_mod.Metrics()
    writer = bootstrap.BootstrapWriter(ref=ref, get=get, put=put, metrics=m)
    assert await writer.write(table) == "ok" and stored["exists"] is False
    assert await writer.write(table) == "unchanged"
    path = tmp_path / bootstrap.DATA_KEY
    path.write_bytes(base64.b64decode(stored["body"]["data"][bootstrap.DATA_KEY]))
    assert load_bootstrap(path).content_hash() == table.content_hash()
    assert json.loads(gzip.decompress(path.read_bytes()))["version"] == "big"

    tiny = bootstrap.BootstrapWriter(ref=ref, get=get, put=put, metrics=m, limit=1000)
    assert await tiny.write(big_table(50)) == "too_large"
    assert m.value("kubegate_operator_bootstrap_writes_total", {"result": "too_large"}) == 1
    assert stored["body"]["metadata"]["annotations"][bootstrap.HASH_ANNOTATION] == table.content_hash()


# --- settings -------------------------------------------------------------------------------------


def test_settings_from_flags_and_environment() -> None:
    env = {
        "KUBEGATE_DATAPLANE_SERVICE": "sys/dp",
        "KUBEGATE_NAMESPACES": "a, b",
        "KUBEGATE_METRICS_PORT": "9300",
    }
    s = settings.parse([], env)
    assert s.dataplane_service == settings.ObjectRef("sys", "dp")
    assert s.namespaces == ("a", "b") and s.metrics_port == 9300
    assert s.watched_namespaces() == ("a", "b", "sys")
    s = settings.parse(["--namespace", "c", "--bootstrap-secret", "sys/boot", "--push-token-file", "/t"], env)
    assert s.namespaces == ("c",) and s.bootstrap_secret == settings.ObjectRef("sys", "boot")
    assert s.push_token_file == Path("/t") and settings.parse([], {}).watched_namespaces() == ()
    with pytest.raises(SystemExit):
        settings.parse(["--dataplane-service", "no-slash"], {})


# --- leader election ------------------------------------------------------------------------------


class FakeLeases:
    """The three Lease calls of :class:`~kubegate_operator.kube.Kube`, in memory, optimistic like the API.
    ``calls`` counts reads; with ``broken`` set, the API server cannot be reached."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.calls = 0
        self.broken = False

    async def get_lease(self, ref: settings.ObjectRef) -> dict[str, Any] | None:
        self.calls += 1
        if self.broken:
            raise ConnectionError("the API server cannot be reached")
        return copy.deepcopy(self.lease)

    async def create_lease(self, ref: settings.ObjectRef, spec: dict[str, Any]) -> bool:
        if self.lease is not None:
            return False
        self.put(spec)
        return True

    async def update_lease(self, ref: settings.ObjectRef, version: str, spec: dict[str, Any]) -> bool:
        if self.lease is None or self.lease["metadata"]["resourceVersion"] != version:
            return False
        self.put(spec)
        return True

    def put(self, spec: dict[str, Any]) -> None:
        self.version += 1
        self.lease = {"metadata": {"resourceVersion": str(self.version)}, "spec": copy.deepcopy(spec)}


def elector(
    leases: FakeLeases, identity: str, clock: list[float], changes: list[bool] | None = None
) -> leader.LeaderElector:
    return leader.LeaderElector(
        kube=cast(Any, leases),
        ref=settings.ObjectRef("ns", "lease"),
        identity=identity,
        duration=3.0,
        on_change=(changes if changes is not None else []).append,
        clock=lambda: clock[0],
    )


async def test_lease_expiry_is_judged_by_the_candidates_own_clock() -> None:
    leases, clock = FakeLeases(), [100.0]
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    # The holder's renewTime is far in the past by the wall clock (clock skew between nodes): irrelevant,
    # the candidate only counts how long it has seen the Lease unchanged.
    assert leases.lease is not None
    leases.put({**leases.lease["spec"], "renewTime": "2000-01-01T00:00:00.000000Z"})
    assert not await b.try_acquire()
    clock[0] += 2.9
    assert not await b.try_acquire(), "taken over before the lease duration passed"
    assert await a.try_acquire()  # a renewal restarts the candidate's count ...
    assert not await b.try_acquire()  # ... from when the candidate sees it
    clock[0] += 2.9
    assert not await b.try_acquire()
    clock[0] += 0.2
    assert await b.try_acquire(), "not taken over after the lease duration"
    assert leases.lease["spec"]["holderIdentity"] == "b"
    assert leases.lease["spec"]["leaseTransitions"] == 1
    assert not await a.try_acquire()


async def test_release_lets_a_candidate_take_over_at_once() -> None:
    leases, clock = FakeLeases(), [0.0]
    changes: list[bool] = []
    a, b = elector(leases, "a", clock, changes), elector(leases, "b", clock)
    assert await a.try_acquire()
    a._set(True)
    assert not await b.try_acquire()
    assert await a.release()
    assert changes == [True, False] and not a.leading
    assert leases.lease is not None and leases.lease["spec"]["holderIdentity"] == ""
    assert await b.try_acquire()  # no waiting for expiry
    assert not await a.release(), "only the holder releases"
    assert leases.lease["spec"]["holderIdentity"] == "b"


async def _running(a: leader.LeaderElector) -> asyncio.Task[None]:
    task = asyncio.create_task(a.run())
    await _until(lambda: a.leading, timeout=GUARD)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_leader_steps_down_when_another_holds_the_lease() -> None:
    """At its next look at the Lease, whatever the time: the injected clock never moves here."""
    leases = FakeLeases()
    changes: list[bool] = []
    a = leader.LeaderElector(
        kube=cast(Any, leases),
        ref=settings.ObjectRef("ns", "lease"),
        identity="a",
        duration=0.6,  # looks every 0.2 s
        on_change=changes.append,
        clock=lambda: 0.0,
    )
    task = await _running(a)
    try:
        assert leases.lease is not None
        leases.put({**leases.lease["spec"], "holderIdentity": "b"})  # b took over (say, a was paused)
        await _until(lambda: not a.leading, timeout=GUARD)
        assert changes == [True, False]
        assert leases.lease["spec"]["holderIdentity"] == "b", "a took the valid Lease back"
    finally:
        await _stop(task)


async def test_leader_that_cannot_renew_steps_down_by_its_own_clock() -> None:
    """Renewals failing, a leader gives up once 2/3 of the duration passed since its last renewal by its
    own clock (before a standby may take over), and not before."""
    leases, clock = FakeLeases(), [50.0]
    changes: list[bool] = []
    a = leader.LeaderElector(
        kube=cast(Any, leases),
        ref=settings.ObjectRef("ns", "lease"),
        identity="a",
        duration=0.6,  # steps down 0.4 s after its last renewal; looks every 0.2 s (real time)
        on_change=changes.append,
        clock=lambda: clock[0],
    )
    task = await _running(a)
    try:
        leases.broken = True
        clock[0] += 0.39
        calls = leases.calls
        await _until(lambda: leases.calls >= calls + 2, timeout=GUARD)  # two failed renewals ...
        assert a.leading and changes == [True]  # ... within 2/3 of the duration
        clock[0] += 0.02
        await _until(lambda: not a.leading, timeout=GUARD)
        assert changes == [True, False]
    finally:
        await _stop(task)


def test_burst_max_delay_grows_with_compile_time() -> None:
    from kubegate_operator.reconciler import BURST_FACTOR, burst_max_delay

    assert burst_max_delay(0.5, 0.01) == 0.5  # fast compiles: the configured bound
    assert burst_max_delay(0.5, 1.0) == BURST_FACTOR * 1.0  # slow ones: fewer compiles in a long burst
