"""``--namespace``: the operator watches GatewayRoutes only in the namespaces given (plus the data plane's).

Aspects: a route in a watched namespace is served by every replica and gets a status; a route in another
namespace is neither served nor given a status; kopf really watches per namespace (the emulator saw
namespaced watches and no cluster-wide one), without listing Namespaces or CRDs (scanning off: the chart's
RBAC does not grant them); the logs are JSON lines.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.operator.conftest import Cluster, assert_json_log, endpoint_slice, gatewayroute, service
from tests.operator.kube import NAMESPACES, ROUTES, SERVICES, SLICES, KubeAPI
from tests.upstreams import UpstreamServer

WATCHED = "team-a"
OTHER = "team-b"


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory, kube_api: KubeAPI) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("namespaced"), kube_api)
    try:
        c.start_gateways(2)
        c.start_operator("--namespace", WATCHED)
        yield c
    finally:
        c.close()


def test_only_watched_namespaces_are_served(scoped: Cluster, upstreams: dict[str, UpstreamServer]) -> None:
    api = scoped.api
    # The ignored route first: had the operator seen it, it would be in the table the watched one lands in.
    other = {
        "match": {"path": {"type": "Prefix", "value": "/other"}},
        "backends": [{"url": upstreams["beta"].url}],
    }
    api.create(ROUTES, gatewayroute("route-other", other, OTHER))
    api.create(SERVICES, service("alpha", 80, WATCHED))
    api.create(SLICES, endpoint_slice("alpha-1", "alpha", ["127.0.0.1"], upstreams["alpha"].port, WATCHED))
    watched = {
        "match": {"path": {"type": "Prefix", "value": "/watched"}},
        "backends": [{"service": "alpha", "port": 80}],
    }
    api.create(ROUTES, gatewayroute("route-watched", watched, WATCHED))

    scoped.wait(lambda: scoped.serves_everywhere("/watched", "alpha"), what="the watched route is served")
    scoped.wait(
        lambda: scoped.condition("route-watched", "Programmed", WATCHED).get("message") == "2/2 replicas",
        what="the watched route is Programmed 2/2",
    )
    assert scoped.statuses_everywhere("/other") == {404}
    for gw in scoped.gateways:
        ids = [r["id"] for r in httpx.get(gw.admin + "/routes", timeout=2).json()["routes"]]
        assert ids == [f"{WATCHED}/route-watched"], ids
    assert scoped.status("route-other", OTHER) == {}, "a route outside the watched namespaces got a status"
    assert {n["metadata"]["name"] for n in api.list(NAMESPACES)} >= {WATCHED, OTHER}  # it does exist

    emulator = api.emulator
    assert emulator is not None
    routes = emulator.requested("gatewayroutes")
    assert f"GET /apis/kubegate.dev/v1alpha1/namespaces/{WATCHED}/gatewayroutes?watch" in routes, routes
    assert not any(OTHER in p for p in routes), routes
    assert not any(p.startswith("GET /apis/kubegate.dev/v1alpha1/gatewayroutes") for p in routes), routes
    assert emulator.requested("customresourcedefinitions") == set()
    assert {p for p in emulator.requested("/namespaces") if p.split("?")[0].endswith("/namespaces")} == set()
    assert_json_log(scoped.operator.log_lines())
