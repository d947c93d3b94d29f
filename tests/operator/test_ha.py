"""High availability: two operator processes elect a leader with a ``coordination.k8s.io/v1`` Lease.

Aspects: exactly one of them holds the Lease, and only that one pushes tables, writes status and the
bootstrap Secret, while the standby watches and compiles the same table (its own /metrics say so);
killing the leader (SIGKILL: no chance to release) lets the standby take over once the Lease expires —
not before: the Lease's history shows a whole lease duration between the dead leader's last renewal and
the take-over — and a route created afterwards is served by every replica and gets its status; a leader
stopped gracefully (SIGTERM) releases the Lease (the history shows the release right before the
take-over, so the standby did not wait for expiry; that it takes over at once is tested with a fake
clock in ``test_units.py``). How long a take-over takes is not asserted here (a loaded machine decides
that); waits are hang guards.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.operator.conftest import DP_NS, Cluster, Operator, assert_json_log, gatewayroute
from tests.operator.kube import LEASES, ROUTES, KubeAPI
from tests.upstreams import UpstreamServer

LEASE = "kubegate-operator"
DURATION = 3.0  # --lease-duration: short, so that a take-over after a crash is quick
GUARD = 30.0  # seconds: a hang guard for a take-over, never a measure


def start(cluster: Cluster, name: str) -> Operator:
    return cluster.start_operator(
        "--leader-lease", f"{DP_NS}/{LEASE}", "--lease-duration", str(DURATION), "--identity", name, name=name
    )


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory, kube_api: KubeAPI) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("ha"), kube_api)
    try:
        c.start_gateways(2)
        start(c, "op-a")
        start(c, "op-b")
        yield c
    finally:
        c.close()


def lease(cluster: Cluster) -> dict[str, Any]:
    return dict((cluster.api.get(LEASES, DP_NS, LEASE) or {}).get("spec") or {})


def take_over(cluster: Cluster, new: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Lease records right before and at the last time ``new`` became its holder."""
    specs = [dict(v.get("spec") or {}) for v in cluster.api.history(LEASES, DP_NS, LEASE)]
    for i in range(len(specs) - 1, 0, -1):
        if specs[i].get("holderIdentity") == new and specs[i - 1].get("holderIdentity") != new:
            return specs[i - 1], specs[i]
    raise AssertionError(f"{new} never took the Lease over: {specs}")


def stamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")


def holder(cluster: Cluster) -> str | None:
    value = lease(cluster).get("holderIdentity")
    return str(value) if value else None


def route(name: str, path: str, upstream: UpstreamServer) -> dict[str, Any]:
    spec = {"match": {"path": {"type": "Prefix", "value": path}}, "backends": [{"url": upstream.url}]}
    return gatewayroute(name, spec)


def programmed(cluster: Cluster, name: str) -> bool:
    cond = cluster.condition(name, "Programmed")
    return cond.get("status") == "True" and cond.get("message") == "2/2 replicas"


def warm(op: Operator, routes: int) -> bool:
    """The operator answers /metrics and has compiled a table of ``routes`` routes."""
    samples = op.samples()
    return samples is not None and samples.get(("kubegate_operator_table_routes", frozenset())) == routes


def test_exactly_one_leader_publishes(ha: Cluster, upstreams: dict[str, UpstreamServer]) -> None:
    ha.api.create(ROUTES, route("ha-1", "/ha-1", upstreams["alpha"]))
    ha.wait(lambda: ha.serves_everywhere("/ha-1", "alpha"), what="ha-1 served by both replicas")
    ha.wait(lambda: programmed(ha, "ha-1"), what="ha-1 Programmed 2/2")
    name = holder(ha)
    assert name in ("op-a", "op-b"), lease(ha)
    leader = ha.operators[name]
    standby = ha.operators["op-b" if name == "op-a" else "op-a"]
    # The standby is warm: it watched and compiled the same table; a push would have followed at once.
    ha.wait(lambda: warm(standby, 1) and warm(leader, 1), what="both operators compiled the table")
    ha.wait(
        lambda: leader.metric("kubegate_operator_replicas_in_sync") == 2,
        what="leader sees 2 replicas in sync",
    )

    assert leader.metric("kubegate_operator_leader") == 1
    assert standby.metric("kubegate_operator_leader") == 0
    assert leader.metric("kubegate_operator_pushes_total", result="ok") >= 2
    assert leader.metric("kubegate_operator_status_writes_total", result="ok") >= 1
    ha.wait(  # the Secret is written a moment after the pushes (reconciler.BOOTSTRAP_DELAY)
        lambda: leader.metric("kubegate_operator_bootstrap_writes_total", result="ok") >= 1,
        what="leader stored the bootstrap Secret",
    )
    assert standby.total("kubegate_operator_pushes_total") == 0, "the standby pushed a table"
    assert standby.total("kubegate_operator_status_writes_total") == 0, "the standby wrote a status"
    assert standby.total("kubegate_operator_bootstrap_writes_total") == 0, "the standby wrote the Secret"
    assert standby.metric("kubegate_operator_replicas_in_sync") == 0  # it does not even check them
    spec = lease(ha)
    assert spec["holderIdentity"] == name and spec["leaseTransitions"] == 0, spec
    assert spec["leaseDurationSeconds"] == DURATION


def test_standby_takes_over_after_the_leader_dies(ha: Cluster, upstreams: dict[str, UpstreamServer]) -> None:
    name = holder(ha)
    assert name is not None
    leader = ha.operators[name]
    standby = ha.operators["op-b" if name == "op-a" else "op-a"]
    pushed = standby.total("kubegate_operator_pushes_total")
    assert pushed == 0

    leader.stop(signal.SIGKILL)  # a crash: the Lease is not released, it has to expire
    ha.wait(lambda: holder(ha) == standby.name, timeout=GUARD, what="standby took over")
    # Not before the Lease expired: the standby counts a whole duration on its own clock from the first
    # time it saw the dead leader's last renewal, so at least that much lies between the two records'
    # timestamps (whatever the load: it can only make the gap longer; 0.1 s for the two clocks' rounding).
    last, taken = take_over(ha, standby.name)
    assert last["holderIdentity"] == name, (last, taken)
    gap = stamp(taken["acquireTime"]) - stamp(last["renewTime"])
    assert gap > timedelta(seconds=DURATION - 0.1), (gap, last, taken)
    assert lease(ha)["leaseTransitions"] == 1
    ha.wait(lambda: standby.metric("kubegate_operator_leader") == 1, what="the new leader says so")

    ha.api.create(ROUTES, route("ha-2", "/ha-2", upstreams["beta"]))
    ha.wait(lambda: ha.serves_everywhere("/ha-2", "beta"), what="ha-2 served after the take-over")
    ha.wait(lambda: programmed(ha, "ha-2"), what="ha-2 Programmed 2/2 by the new leader")
    assert ha.serves_everywhere("/ha-1", "alpha")
    assert programmed(ha, "ha-1")
    assert standby.metric("kubegate_operator_pushes_total", result="ok") >= 2
    assert standby.metric("kubegate_operator_status_writes_total", result="ok") >= 1
    assert "acquired leadership" in "\n".join(standby.log_lines())


def test_graceful_stop_releases_the_lease(ha: Cluster, upstreams: dict[str, UpstreamServer]) -> None:
    name = holder(ha)
    assert name is not None
    leader = ha.operators[name]
    comeback = start(ha, "op-b" if name == "op-a" else "op-a")  # the dead one, restarted: now a standby
    ha.wait(lambda: warm(comeback, 2), what="the restarted operator compiled the table")
    assert comeback.metric("kubegate_operator_leader") == 0
    transitions = lease(ha)["leaseTransitions"]

    leader.stop(signal.SIGTERM)
    assert leader.proc.returncode == 0
    ha.wait(lambda: holder(ha) == comeback.name, timeout=GUARD, what="hand-over after SIGTERM")
    # The standby took over a released Lease (empty holder), so it had no expiry to wait for.
    released, taken = take_over(ha, comeback.name)
    assert released["holderIdentity"] == "", (released, taken)
    assert lease(ha)["leaseTransitions"] == transitions + 1
    records = assert_json_log(leader.log_lines())
    assert any(r["message"].startswith("released leadership") for r in records)

    ha.api.create(ROUTES, route("ha-3", "/ha-3", upstreams["gamma"]))
    ha.wait(lambda: ha.serves_everywhere("/ha-3", "gamma"), what="ha-3 served after the hand-over")
    ha.wait(lambda: programmed(ha, "ha-3"), what="ha-3 Programmed 2/2")
    for op in ha.operators.values():
        assert_json_log(op.log_lines())
