"""Operator parts in isolation: debounce (fake clock), state, publisher (real data planes and an
unreachable one), status diffing and Programmed, bootstrap encoding and its size limit, settings.

Aspects: a burst is one compile and the maximum delay bounds it; state ignores status-only updates and
finds replicas (not-ready included, terminating excluded); an incremental state gives the same table as a
full load; one unreachable replica never holds back the others, a restarted replica is re-pushed, and
Programmed counts only replicas that acknowledged this generation; unchanged statuses are not rewritten;
a table over the limit is refused; flags and KUBEGATE_* variables; leader election judges expiry by the
candidate's own clock (not the holder's renewTime), a released Lease is taken over at once, and a leader
steps down as soon as another replica holds the Lease.
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
from kubegate_operator import bootstrap, debounce, leader, publisher, settings, state, status
from kubegate_operator import metrics as metrics_mod
from tests.gateway import TOKEN, GatewayProcess, free_port
from tests.operator.conftest import endpoint_slice, gatewayroute

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


def test_trigger_waits_for_the_holdoff_with_a_fake_clock() -> None:
    now = [0.0]

    async def scenario() -> float:
        trigger = debounce.Trigger(holdoff=0.0, max_delay=0.0, clock=lambda: now[0])
        trigger.poke()
        return await asyncio.wait_for(trigger.wait(), 5)

    assert asyncio.run(scenario()) == 0.0


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


async def test_status_writer_writes_only_changes() -> None:
    calls: list[tuple[str, str]] = []
    events: list[tuple[str, str]] = []

    async def patch(ns: str, name: str, st: dict[str, Any]) -> bool:
        calls.append((ns, name))
        return name != "gone"

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
    """The three Lease calls of :class:`~kubegate_operator.kube.Kube`, in memory, optimistic like the API."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    async def get_lease(self, ref: settings.ObjectRef) -> dict[str, Any] | None:
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


async def test_leader_steps_down_when_another_holds_the_lease() -> None:
    leases = FakeLeases()
    changes: list[bool] = []
    a = leader.LeaderElector(
        kube=cast(Any, leases),
        ref=settings.ObjectRef("ns", "lease"),
        identity="a",
        duration=0.6,  # renews every 0.2 s
        on_change=changes.append,
    )
    task = asyncio.create_task(a.run())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while not a.leading:
            assert asyncio.get_running_loop().time() < deadline, "never acquired"
            await asyncio.sleep(0.01)
        assert leases.lease is not None
        leases.put({**leases.lease["spec"], "holderIdentity": "b"})  # b took over (say, a was paused)
        while a.leading:
            assert asyncio.get_running_loop().time() < deadline, "still leading"
            await asyncio.sleep(0.01)
        assert changes == [True, False]
        assert leases.lease["spec"]["holderIdentity"] == "b", "a took the valid Lease back"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_burst_max_delay_grows_with_compile_time() -> None:
    from kubegate_operator.reconciler import BURST_FACTOR, burst_max_delay

    assert burst_max_delay(0.5, 0.01) == 0.5  # fast compiles: the configured bound
    assert burst_max_delay(0.5, 1.0) == BURST_FACTOR * 1.0  # slow ones: fewer compiles in a long burst
