"""The operator end to end: a kmock Kubernetes API, a real operator process, 3 real data planes.

Aspects: a new route is served by every replica (real HTTP) and its status says Programmed 3/3 with
observedGeneration; an edit moves generation, status and traffic; an EndpointSlice change moves traffic
to the new endpoints only; a deletion gives 404; an invalid route is Accepted=False naming the field while
other routes keep serving; a missing Service gives ResolvedRefs=False and 500; a restarted data plane is
re-pushed; the bootstrap Secret holds the table and a new data plane serves from it with the operator
stopped; the operator's ``/metrics`` (scraped over HTTP) show compile duration, table size, pushes by
result, replicas in sync and reconcile lag after a route is applied (observed, not timed: durations are
for bench/); an Accepted → rejected → Accepted round trip posts one Event per transition on the route; the
operator never lists or watches CRDs or Namespaces (kopf scanning off: the chart's RBAC does not grant
them) and logs only JSON lines. Every GatewayRoute used here is validated against the CRD schema first.
"""

from __future__ import annotations

import base64
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.gateway import GatewayProcess
from tests.operator.conftest import (
    BOOTSTRAP,
    REPLICAS,
    Cluster,
    Samples,
    assert_json_log,
    endpoint_slice,
    gatewayroute,
    service,
)
from tests.operator.kube import EVENTS, ROUTES, SECRETS, SERVICES, SLICES
from tests.upstreams import UpstreamServer


def programmed(cluster: Cluster, name: str, generation: int, replicas: int) -> bool:
    cond = cluster.condition(name, "Programmed")
    return (
        cond.get("status") == "True"
        and cond.get("message") == f"{replicas}/{replicas} replicas"
        and cond.get("observedGeneration") == generation
        and cluster.status(name).get("observedGeneration") == generation
    )


def test_route_is_served_by_every_replica_and_programmed(
    cluster: Cluster, upstreams: dict[str, UpstreamServer]
) -> None:
    alpha = upstreams["alpha"]
    cluster.api.create(SERVICES, service("alpha", 80))
    cluster.api.create(SLICES, endpoint_slice("alpha-1", "alpha", ["127.0.0.1"], alpha.port))
    spec = {
        "match": {"path": {"type": "Prefix", "value": "/a"}},
        "backends": [{"service": "alpha", "port": 80}],
    }
    cluster.api.create(ROUTES, gatewayroute("route-a", spec))

    cluster.wait(lambda: cluster.serves_everywhere("/a/x", "alpha"), what="route-a served by every replica")
    cluster.wait(lambda: programmed(cluster, "route-a", 1, REPLICAS), what="route-a Programmed 3/3")
    assert cluster.condition("route-a", "Accepted")["status"] == "True"
    assert cluster.condition("route-a", "ResolvedRefs")["status"] == "True"
    versions = {gw.table()["version"] for gw in cluster.gateways}
    assert len(versions) == 1


def test_a_route_with_traffic_policies_is_programmed_and_enforced(
    cluster: Cluster, upstreams: dict[str, UpstreamServer]
) -> None:
    """Policies go through the CRD, the compiler and the pushed table: every replica enforces them."""
    alpha = upstreams["alpha"]
    cluster.api.create(SERVICES, service("policed", 80))
    cluster.api.create(SLICES, endpoint_slice("policed-1", "policed", ["127.0.0.1"], alpha.port))
    spec = {
        "match": {"path": {"type": "Prefix", "value": "/pol"}},
        "backends": [{"service": "policed", "port": 80}],
        "loadBalancer": {"type": "LeastRequest"},
        "retry": {"attempts": 1, "retryOn": ["connect-failure"], "perTryTimeout": "2s"},
        "circuitBreaker": {"consecutiveFailures": 2, "openDuration": "60s"},
        "outlierDetection": {"consecutiveFailures": 3},
        "bulkhead": {"maxConcurrent": 50},
    }
    cluster.api.create(ROUTES, gatewayroute("route-pol", spec))
    cluster.wait(lambda: cluster.serves_everywhere("/pol/x", "alpha"), what="route-pol served everywhere")
    cluster.wait(lambda: programmed(cluster, "route-pol", 1, REPLICAS), what="route-pol Programmed 3/3")
    gw = cluster.gateways[0]
    alpha.forced_status = 500
    try:
        for _ in range(2):  # two 500s open the breaker on this replica ...
            assert httpx.get(gw.url + "/pol/x", timeout=5).status_code == 500
    finally:
        alpha.forced_status = None
    fast = httpx.get(gw.url + "/pol/x", timeout=5)
    assert fast.status_code == 503 and fast.json()["message"] == "circuit open"  # ... which fails fast
    assert httpx.get(cluster.gateways[1].url + "/pol/x", timeout=5).status_code == 200  # per replica


def test_edit_moves_generation_status_and_traffic(
    cluster: Cluster, upstreams: dict[str, UpstreamServer]
) -> None:
    beta = upstreams["beta"]
    spec = {
        "match": {"path": {"type": "Prefix", "value": "/e"}},
        "backends": [{"url": upstreams["alpha"].url}],
    }
    cluster.api.create(ROUTES, gatewayroute("route-e", spec))
    cluster.wait(
        lambda: programmed(cluster, "route-e", 1, REPLICAS), what="route-e Programmed at generation 1"
    )
    before = cluster.condition("route-e", "Programmed")["lastTransitionTime"]

    edited = {**spec, "backends": [{"url": beta.url}]}
    gatewayroute("route-e", edited)  # schema check
    obj = cluster.api.patch(ROUTES, "default", "route-e", {"spec": edited})
    assert obj["metadata"]["generation"] == 2
    cluster.wait(lambda: cluster.serves_everywhere("/e/1", "beta"), what="route-e moved to beta")
    cluster.wait(
        lambda: programmed(cluster, "route-e", 2, REPLICAS), what="route-e Programmed at generation 2"
    )
    accepted = cluster.condition("route-e", "Accepted")
    assert accepted["observedGeneration"] == 2
    # Programmed was True before and is True now (it may have been False in between: a truthful gap).
    assert cluster.condition("route-e", "Programmed")["lastTransitionTime"] >= before


def test_endpointslice_change_moves_traffic(cluster: Cluster, upstreams: dict[str, UpstreamServer]) -> None:
    alpha, gamma = upstreams["alpha"], upstreams["gamma"]
    cluster.api.create(SERVICES, service("moving", 80))
    cluster.api.create(SLICES, endpoint_slice("moving-1", "moving", ["127.0.0.1"], alpha.port))
    spec = {
        "match": {"path": {"type": "Prefix", "value": "/m"}},
        "backends": [{"service": "moving", "port": 80}],
    }
    cluster.api.create(ROUTES, gatewayroute("route-m", spec))
    cluster.wait(lambda: cluster.serves_everywhere("/m", "alpha"), what="route-m served by alpha")

    cluster.api.patch(
        SLICES, "default", "moving-1", {"ports": [{"name": "http", "port": gamma.port, "protocol": "TCP"}]}
    )
    cluster.wait(lambda: cluster.serves_everywhere("/m", "gamma"), what="traffic moved to gamma")
    seen = {
        httpx.get(gw.url + "/m", timeout=2).headers.get("x-backend")
        for gw in cluster.gateways
        for _ in range(5)
    }
    assert seen == {"gamma"}, "a removed endpoint still gets traffic"


def test_delete_gives_404(cluster: Cluster, upstreams: dict[str, UpstreamServer]) -> None:
    spec = {
        "match": {"path": {"type": "Prefix", "value": "/d"}},
        "backends": [{"url": upstreams["alpha"].url}],
    }
    cluster.api.create(ROUTES, gatewayroute("route-d", spec))
    cluster.wait(lambda: cluster.serves_everywhere("/d", "alpha"), what="route-d served")
    cluster.api.delete(ROUTES, "default", "route-d")
    cluster.wait(lambda: cluster.statuses_everywhere("/d") == {404}, what="route-d gone: 404")


def test_invalid_route_is_rejected_others_unaffected(
    cluster: Cluster, upstreams: dict[str, UpstreamServer]
) -> None:
    good = {
        "match": {"path": {"type": "Prefix", "value": "/g"}},
        "backends": [{"url": upstreams["beta"].url}],
    }
    cluster.api.create(ROUTES, gatewayroute("route-good", good))
    cluster.wait(lambda: programmed(cluster, "route-good", 1, REPLICAS), what="route-good Programmed")
    # The schema cannot catch a bad regular expression; the compiler does.
    bad = {
        "match": {
            "path": {"type": "Prefix", "value": "/bad"},
            "headers": [{"name": "X-V", "type": "RegularExpression", "value": "(["}],
        },
        "backends": [{"url": upstreams["alpha"].url}],
    }
    cluster.api.create(ROUTES, gatewayroute("route-bad", bad))
    cluster.wait(
        lambda: cluster.condition("route-bad", "Accepted").get("status") == "False", what="route-bad rejected"
    )
    accepted = cluster.condition("route-bad", "Accepted")
    assert accepted["reason"] == "Invalid"
    assert "spec.match.headers[0].value" in accepted["message"]
    assert cluster.condition("route-bad", "Programmed")["status"] == "False"
    assert cluster.serves_everywhere("/g", "beta")
    assert programmed(cluster, "route-good", 1, REPLICAS)
    assert cluster.statuses_everywhere("/bad") == {404}


def test_missing_service_is_resolvedrefs_false_and_500(
    cluster: Cluster, upstreams: dict[str, UpstreamServer]
) -> None:
    spec = {
        "match": {"path": {"type": "Prefix", "value": "/missing"}},
        "backends": [{"service": "nope", "port": 80}],
    }
    cluster.api.create(ROUTES, gatewayroute("route-missing", spec))
    cluster.wait(
        lambda: cluster.condition("route-missing", "ResolvedRefs").get("reason") == "BackendNotFound",
        what="route-missing ResolvedRefs=False",
    )
    assert cluster.condition("route-missing", "ResolvedRefs")["status"] == "False"
    assert "Service default/nope not found" in cluster.condition("route-missing", "ResolvedRefs")["message"]
    cluster.wait(lambda: cluster.statuses_everywhere("/missing") == {500}, what="route-missing gives 500")


def test_operator_metrics_over_http(cluster: Cluster, upstreams: dict[str, UpstreamServer]) -> None:
    op = cluster.operator
    before = cluster.wait(op.samples, what="the operator serves /metrics")

    def value(samples: Samples, name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    spec = {
        "match": {"path": {"type": "Prefix", "value": "/metrics-route"}},
        "backends": [{"url": upstreams["gamma"].url}],
    }
    cluster.api.create(ROUTES, gatewayroute("route-metrics", spec))
    cluster.wait(lambda: cluster.serves_everywhere("/metrics-route", "gamma"), what="route-metrics served")
    lag = "kubegate_operator_reconcile_lag_seconds_count"

    def settled() -> Samples | None:
        now = op.samples()
        if now is None or value(now, lag) <= value(before, lag):
            return None
        return now if value(now, "kubegate_operator_replicas_in_sync") == REPLICAS else None

    after = cluster.wait(settled, what="a reconcile lag observed for the new table, every replica in sync")

    # How long compiles and reconciles take is measured in bench/, not asserted here: only that they
    # were observed.
    compiles = value(after, "kubegate_operator_compile_duration_seconds_count") - value(
        before, "kubegate_operator_compile_duration_seconds_count"
    )
    compile_time = value(after, "kubegate_operator_compile_duration_seconds_sum") - value(
        before, "kubegate_operator_compile_duration_seconds_sum"
    )
    assert compiles >= 1 and compile_time > 0, (compiles, compile_time)

    served = {gw.table()["routes"] for gw in cluster.gateways}
    assert served == {value(after, "kubegate_operator_table_routes")}, "table size differs from the replicas'"
    assert 100 * served.pop() < value(after, "kubegate_operator_table_bytes") < 1_000_000

    ok = value(after, "kubegate_operator_pushes_total", result="ok")
    assert ok - value(before, "kubegate_operator_pushes_total", result="ok") >= REPLICAS, (
        "one push per replica"
    )
    assert value(after, "kubegate_operator_replicas") == REPLICAS
    assert value(after, "kubegate_operator_replicas_in_sync") == REPLICAS

    lags = value(after, lag) - value(before, lag)
    lag_time = value(after, "kubegate_operator_reconcile_lag_seconds_sum") - value(
        before, "kubegate_operator_reconcile_lag_seconds_sum"
    )
    assert lags >= 1 and lag_time > 0, (lags, lag_time)
    every = value(after, "kubegate_operator_reconcile_lag_seconds_bucket", le="+Inf")
    assert every == value(after, lag), "the histogram's buckets disagree with its count"
    assert value(after, "kubegate_operator_leader") == 1  # no election: this replica publishes
    assert value(after, "kubegate_operator_status_writes_total", result="ok") >= 1


def test_accept_reject_transitions_post_events(
    cluster: Cluster, upstreams: dict[str, UpstreamServer]
) -> None:
    good = {
        "match": {"path": {"type": "Prefix", "value": "/ev"}},
        "backends": [{"url": upstreams["alpha"].url}],
    }
    bad = {
        "match": {
            "path": {"type": "Prefix", "value": "/ev"},
            "headers": [{"name": "X-V", "type": "RegularExpression", "value": "(["}],
        },
        "backends": [{"url": upstreams["alpha"].url}],
    }
    gatewayroute("route-ev", bad)  # schema check of the edit
    created = cluster.api.create(ROUTES, gatewayroute("route-ev", good))
    uid = created["metadata"]["uid"]

    def accepted(status: str) -> bool:
        return cluster.condition("route-ev", "Accepted").get("status") == status

    def events() -> list[dict[str, Any]]:
        found = [e for e in cluster.api.list(EVENTS, "default") if e["involvedObject"]["name"] == "route-ev"]
        return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def reasons() -> list[tuple[str, str]]:
        return [(e["type"], e["reason"]) for e in events()]

    cluster.wait(lambda: accepted("True"), what="route-ev accepted")
    cluster.wait(lambda: reasons() == [("Normal", "Accepted")], what="an Accepted event")
    cluster.api.patch(ROUTES, "default", "route-ev", {"spec": bad})
    cluster.wait(lambda: accepted("False"), what="route-ev rejected")
    cluster.wait(
        lambda: reasons() == [("Normal", "Accepted"), ("Warning", "Invalid")], what="a rejection event"
    )
    cluster.api.patch(ROUTES, "default", "route-ev", {"spec": {"match": {"headers": None}}})  # merge patch
    assert cluster.api.get(ROUTES, "default", "route-ev")["spec"] == good  # type: ignore[index]
    cluster.wait(lambda: accepted("True"), what="route-ev accepted again")
    expected = [("Normal", "Accepted"), ("Warning", "Invalid"), ("Normal", "Accepted")]
    cluster.wait(lambda: reasons() == expected, what="an event on acceptance again")

    found = events()
    for event in found:
        assert event["involvedObject"] == {
            "apiVersion": "kubegate.dev/v1alpha1",
            "kind": "GatewayRoute",
            "name": "route-ev",
            "namespace": "default",
            "uid": uid,
        }
        assert event["metadata"]["namespace"] == "default"
        assert event["source"] == {"component": "kubegate-operator"}
    assert "spec.match.headers[0].value" in str(found[1]["message"])
    assert len({e["metadata"]["name"] for e in found}) == 3


def test_no_cluster_scanning_and_json_logs(cluster: Cluster) -> None:
    emulator = cluster.api.emulator
    assert emulator is not None
    # The operator did watch what it needs ...
    assert "GET /apis/kubegate.dev/v1alpha1/gatewayroutes?watch" in emulator.requested("gatewayroutes")
    # ... and never what the chart's RBAC does not grant (kopf's scanning of CRDs and Namespaces).
    assert emulator.requested("customresourcedefinitions") == set()
    assert {p for p in emulator.requested("/namespaces") if p.split("?")[0].endswith("/namespaces")} == set()
    records = assert_json_log(cluster.operator.log_lines())
    assert any(r["logger"] == "kubegate.operator" and "compiled table" in r["message"] for r in records)


def test_restarted_dataplane_is_repushed(cluster: Cluster) -> None:
    victim = cluster.gateways[0]
    version = victim.table()["version"]
    victim.signal(signal.SIGKILL)
    victim.proc.wait(10)
    fresh = GatewayProcess(cluster.tmp)  # new ports: a new pod behind the Service
    cluster.gateways[0] = fresh
    victim.stop()
    cluster.publish_dataplane()
    cluster.wait(lambda: fresh.table()["version"] == version, what="the new replica got the table")
    cluster.wait(lambda: cluster.serves_everywhere("/a/x", "alpha"), what="the new replica serves")
    cluster.wait(lambda: programmed(cluster, "route-a", 1, REPLICAS), what="route-a Programmed 3/3 again")


def test_bootstrap_secret_serves_a_new_replica_without_the_operator(cluster: Cluster, tmp_path: Path) -> None:
    ns, name = BOOTSTRAP.split("/")
    version = cluster.gateways[1].table()["version"]

    def stored() -> bool:
        secret = cluster.api.get(SECRETS, ns, name)
        return (
            secret is not None and secret["metadata"]["annotations"]["kubegate.dev/table-version"] == version
        )

    cluster.wait(stored, what="bootstrap Secret holds the served table")
    secret = cluster.api.get(SECRETS, ns, name)
    assert secret is not None
    path = tmp_path / "table.json.gz"
    path.write_bytes(base64.b64decode(secret["data"]["table.json.gz"]))
    cluster.stop_operator()
    assert cluster.serves_everywhere("/a/x", "alpha"), "replicas stop serving without the operator"
    newcomer = GatewayProcess(tmp_path, bootstrap=path)
    try:
        assert newcomer.table()["version"] == version
        response = httpx.get(newcomer.url + "/a/x", timeout=2)
        assert response.status_code == 200 and response.headers["x-backend"] == "alpha"
    finally:
        newcomer.stop()
