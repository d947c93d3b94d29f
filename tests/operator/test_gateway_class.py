"""Several kubegate instances in one cluster: gateway classes (issue 13), against the emulator.

Aspects: which routes a state serves (``--gateway-class`` equal to ``spec.gatewayClassName``; the default
class ``kubegate`` also takes routes that name none; a value that is not a string counts as unset); routes
of another class never reach a compile (the same match in two classes is no conflict, their events cause
no compile, they count as arrived at start-up); only the Services and EndpointSlices that the class's
routes name are compiled, and a change to another one causes no compile; a route that moves to another
class is dropped with its Secrets, and its stale status is released for removal, unless the new owner's
status is already on it; the status writer's ``stale`` and ``gone`` results leave nothing recorded, and
removals report which routes are done with; ``--gateway-class`` and ``$KUBEGATE_GATEWAY_CLASS``, checked
by the model's own validator of ``gatewayClassName``.

Then two real operator processes, classes ``kubegate`` and ``internal``, each with data planes of its own
(2 and 1 replicas, so that a Programmed message ``x/2`` or ``x/1`` tells which one wrote it): each data
plane serves only its class's routes (the same path in both classes goes to two backends), every table
either operator stored holds only its class's routes, every status version of a route carries only its
owner's count, a route moved between classes changes data plane and owner without the old owner writing
over the new one, and a route moved to a class nobody serves is served by none and loses its status.
The same ownership against a real API server (field managers, the API server's patch semantics):
``tests/kube/test_gateway_classes.py``.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubegate.api import models
from kubegate.compiler import compile as compiler
from kubegate_operator import settings, state, status
from tests.gateway import GatewayProcess
from tests.operator.conftest import BOOTSTRAP, Cluster, assert_json_log, endpoint_slice, gatewayroute, service
from tests.operator.kube import ROUTES, SECRETS, SLICES, KubeAPI
from tests.upstreams import UpstreamServer

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _route(
    name: str,
    gateway_class: object = None,
    *,
    path: str = "/p",
    generation: int = 1,
    backends: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body_spec: dict[str, Any] = {
        "match": {"path": {"type": "Prefix", "value": path}},
        "backends": backends or [{"url": "http://127.0.0.1:9"}],
        **spec,
    }
    if gateway_class is not None:
        body_spec["gatewayClassName"] = gateway_class
    body = gatewayroute(name, body_spec, valid=isinstance(gateway_class, str | None))
    body["metadata"].update(generation=generation, creationTimestamp="2024-01-01T00:00:00Z", uid=name)
    return body


# --- which routes a state serves ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "route", "served"),
    [
        ("kubegate", None, True),  # the default class takes routes that name none ...
        ("kubegate", "kubegate", True),  # ... and those that name it
        ("kubegate", "internal", False),
        ("kubegate", 5, True),  # not a string: unset, so that the default class reports it invalid
        ("internal", None, False),  # another class takes only the routes that name it
        ("internal", "kubegate", False),
        ("internal", "internal", True),
        ("internal", "internal2", False),
    ],
)
def test_a_state_serves_its_class(operator: str, route: object, served: bool) -> None:
    st = state.ClusterState(gateway_class=operator)
    body = _route("r", route)
    assert st.serves(body) is served
    assert st.upsert(state.GATEWAYROUTE, body) is served
    assert [r.key for r in st.bundle().routes] == (["default/r"] if served else [])


def test_a_class_name_that_is_not_a_string_is_reported_by_the_default_class() -> None:
    st = state.ClusterState()
    st.upsert(state.GATEWAYROUTE, _route("r", 5))
    result = compiler.compile_bundle(st.bundle(), now=NOW)
    accepted = result.statuses["default/r"].condition(compiler.ACCEPTED)
    assert accepted is not None and accepted.status == "False" and "gatewayClassName" in accepted.message


def test_routes_of_another_class_never_reach_the_compile() -> None:
    default, internal = state.ClusterState(), state.ClusterState(gateway_class="internal")
    routes = [_route("a", None), _route("b", "internal"), _route("c", "internal", path="/c")]
    for st in (default, internal):
        st.expect(state.GATEWAYROUTE, {("default", n) for n in "abc"})
        assert st.missing == 3
        for body in routes:
            st.upsert(state.GATEWAYROUTE, body)
        assert st.missing == 0, "a route of another class has arrived too"
    # a and b have the same match: in two classes, that is no conflict (two gateways serve /p each)
    for st, names in ((default, {"default/a"}), (internal, {"default/b", "default/c"})):
        result = compiler.compile_bundle(st.bundle(), now=NOW)
        assert set(result.statuses) == names
        assert result.rejected() == []
        assert set(st.route_generations()) == names
    # the same match within one class still conflicts: c takes b's path, and b is the older by name
    assert internal.upsert(state.GATEWAYROUTE, _route("c", "internal", generation=2))
    result = compiler.compile_bundle(internal.bundle(), now=NOW)
    assert result.rejected() == ["default/c"]
    # another class's route changing (spec, or the status its own operator writes) causes no compile
    revision = default.revision
    with_status = {**_route("b", "internal", generation=2, path="/b2"), "status": {"conditions": []}}
    assert not default.upsert(state.GATEWAYROUTE, with_status)
    assert not default.delete(state.GATEWAYROUTE, with_status)
    assert default.revision == revision and default.observed_status == {}


def test_only_the_services_and_slices_that_the_class_names_are_compiled() -> None:
    st = state.ClusterState(gateway_class="internal", dataplane_service=("sys", "dp"))
    st.upsert(state.GATEWAYROUTE, _route("r", "internal", backends=[{"service": "a", "port": 80}]))
    # another class's route names b: that does not make b compiled here
    st.upsert(state.GATEWAYROUTE, _route("other", None, backends=[{"service": "b", "port": 80}]))
    assert st.services_named() == {("default", "a")}
    assert st.upsert(state.SERVICE, service("a", 80))
    assert st.upsert(state.ENDPOINTSLICE, endpoint_slice("a-1", "a", ["10.0.0.1"], 8080))
    revision = st.revision
    assert not st.upsert(state.SERVICE, service("b", 80))
    assert not st.upsert(state.ENDPOINTSLICE, endpoint_slice("b-1", "b", ["10.0.0.2"], 8080))
    assert st.revision == revision, "a Service no route of the class names caused a compile"
    bundle = st.bundle()
    assert [s.name for s in bundle.services] == ["a"]
    assert [s.service_name for s in bundle.endpoint_slices] == ["a"]
    # the data plane's replicas still count, although no route names their Service
    assert st.upsert(
        state.ENDPOINTSLICE, endpoint_slice("dp-1", "dp", ["10.0.1.1"], 9090, "sys", port_name="admin")
    )
    assert [str(r) for r in st.replicas()] == ["10.0.1.1:9090"]
    assert "dp" not in {s.service_name for s in st.bundle().endpoint_slices}

    # r names b instead: b (kept, slimmed, since it arrived) is compiled at once, a no longer
    assert st.upsert(
        state.GATEWAYROUTE, _route("r", "internal", generation=2, backends=[{"service": "b", "port": 80}])
    )
    bundle = st.bundle()
    assert [s.name for s in bundle.services] == ["b"]
    assert [s.service_name for s in bundle.endpoint_slices] == ["b"]
    assert not st.delete(state.ENDPOINTSLICE, endpoint_slice("a-1", "a", ["10.0.0.1"], 8080))
    # a slice relabelled away from a named Service changes what r compiles to
    assert st.upsert(state.ENDPOINTSLICE, endpoint_slice("b-1", "c", ["10.0.0.2"], 8080))
    assert st.bundle().endpoint_slices == []

    result = compiler.compile_bundle(st.bundle(), now=NOW)
    resolved = result.statuses["default/r"].condition(compiler.RESOLVED_REFS)
    assert resolved is not None and resolved.status == "True"  # b exists; it has no endpoints (503)


def test_a_route_that_moves_to_another_class_is_dropped_and_its_stale_status_released() -> None:
    st = state.ClusterState()
    auth = {"apiKey": {"header": "X-Key", "secretRef": {"name": "keys"}}}
    ours = {**_route("r", None, auth=auth), "status": {"observedGeneration": 1, "conditions": []}}
    assert st.upsert(state.GATEWAYROUTE, ours)
    assert st.secrets_named() == {("default", "keys")}
    assert st.observed_status == {"default/r": ours["status"]}

    moved = {**_route("r", "internal", generation=2, auth=auth), "status": ours["status"]}
    assert st.upsert(state.GATEWAYROUTE, moved), "the route must leave the table"
    assert st.bundle().routes == [] and st.secrets_named() == set() and st.observed_status == {}
    assert st.released == {"default/r": 1}  # our status, of generation 1: ours to remove
    assert not st.upsert(state.GATEWAYROUTE, moved)
    assert st.released == {"default/r": 1}

    # it comes back before the removal: ours again, nothing to remove
    assert st.upsert(state.GATEWAYROUTE, {**_route("r", "kubegate", generation=3), "status": ours["status"]})
    assert st.released == {}

    # it leaves when the new owner has written already (its status is of the current generation): kept
    assert st.upsert(
        state.GATEWAYROUTE,
        {**_route("r", "internal", generation=4), "status": {"observedGeneration": 4, "conditions": []}},
    )
    assert st.released == {}

    # a route of another class from the start is never ours to clean up; a deletion forgets a release
    assert not st.upsert(state.GATEWAYROUTE, moved | {"metadata": {**moved["metadata"], "name": "x"}})
    assert st.released == {}
    st.upsert(state.GATEWAYROUTE, {**_route("y", None), "status": {"observedGeneration": 1}})
    st.upsert(
        state.GATEWAYROUTE, {**_route("y", "internal", generation=2), "status": {"observedGeneration": 1}}
    )
    assert st.released == {"default/y": 1}
    st.delete(state.GATEWAYROUTE, _route("y", "internal", generation=2))
    assert st.released == {}


# --- the status writer ---------------------------------------------------------------------------------


def _status(generation: int) -> dict[str, Any]:
    return {"observedGeneration": generation, "conditions": []}


async def test_a_stale_or_gone_write_leaves_nothing_recorded() -> None:
    results: dict[str, status.PatchResult] = {"ok": "ok", "stale": "stale", "gone": "gone"}

    async def patch(ns: str, name: str, st: dict[str, Any]) -> status.PatchResult:
        return results[name]

    writer = status.StatusWriter(patch=patch)
    desired = {f"default/{name}": _status(2) for name in results}
    assert await writer.write(desired, {}) == 1
    assert set(writer.written) == {"default/ok"}
    results["stale"] = "ok"  # its next generation came, and with it the status of that generation
    assert await writer.write(desired, {}) == 1
    assert set(writer.written) == {"default/ok", "default/stale"}


async def test_removals_report_the_routes_done_with() -> None:
    calls: list[tuple[str, int]] = []
    results: dict[str, status.PatchResult | Exception] = {
        "removed": "ok",
        "rewritten": "stale",  # the new owner wrote first: its status stays
        "deleted": "gone",
        "failed": RuntimeError("connection refused"),
    }

    async def clear(ns: str, name: str, generation: int) -> status.PatchResult:
        calls.append((name, generation))
        result = results[name]
        if isinstance(result, Exception):
            raise result
        return result

    async def patch(ns: str, name: str, st: dict[str, Any]) -> status.PatchResult:
        raise AssertionError("no status is written")

    writer = status.StatusWriter(patch=patch, clear=clear)
    writer.written["default/removed"] = _status(1)
    done = await writer.clear({f"default/{name}": 1 for name in results})
    assert sorted(done) == ["default/deleted", "default/removed", "default/rewritten"]
    assert sorted(calls) == sorted((name, 1) for name in results)
    assert "default/removed" not in writer.written
    assert await status.StatusWriter(patch=patch).clear({"default/x": 1}) == []  # no clear: nothing done


# --- settings ------------------------------------------------------------------------------------------


def test_gateway_class_flag_and_variable() -> None:
    assert settings.parse([], {}).gateway_class == settings.DEFAULT_GATEWAY_CLASS == "kubegate"
    assert settings.parse([], {"KUBEGATE_GATEWAY_CLASS": "internal"}).gateway_class == "internal"
    flag = ["--gateway-class", "edge.example.com"]
    assert settings.parse(flag, {"KUBEGATE_GATEWAY_CLASS": "internal"}).gateway_class == "edge.example.com"


@pytest.mark.parametrize("name", ["Internal", "", "-edge", "edge_1", "a" * 254, "edge/1"])
def test_the_flag_refuses_what_a_route_cannot_name(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        settings.gateway_class(name)
    with pytest.raises(SystemExit):
        settings.parse(["--gateway-class", name], {})
    assert "--gateway-class" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        settings.parse([], {"KUBEGATE_GATEWAY_CLASS": name})
    spec = {"gatewayClassName": name, "backends": [{"url": "http://127.0.0.1:9"}]}
    with pytest.raises(ValueError):  # the very same verdict as the route's field
        models.GatewayRouteSpec.model_validate(spec)


@pytest.mark.parametrize("name", ["kubegate", "internal", "a", "edge-1.example.com", "a" * 253])
def test_the_flag_takes_what_a_route_can_name(name: str) -> None:
    assert settings.gateway_class(name) == name
    spec = {"gatewayClassName": name, "backends": [{"url": "http://127.0.0.1:9"}]}
    assert models.GatewayRouteSpec.model_validate(spec).gateway_class_name == name


# --- two operator processes, two classes, two data planes ------------------------------------------------

INTERNAL_NS = "internal-system"
INTERNAL_SERVICE = "internal-dataplane"
INTERNAL_BOOTSTRAP = f"{INTERNAL_NS}/internal-bootstrap"


class TwoClasses:
    """The module's cluster: data planes and an operator for each class (``kubegate``: 2 replicas,
    ``internal``: 1), one emulated API."""

    def __init__(self, tmp: Path, api: KubeAPI) -> None:
        self.cluster = Cluster(tmp, api)
        self.api = api
        self.internal: list[GatewayProcess] = []

    def start(self) -> None:
        self.cluster.start_gateways(2)
        self.internal.append(GatewayProcess(self.cluster.tmp))
        for gw in self.internal:
            body = endpoint_slice(
                f"{INTERNAL_SERVICE}-{gw.admin_port}",
                INTERNAL_SERVICE,
                ["127.0.0.1"],
                gw.admin_port,
                INTERNAL_NS,
                port_name="admin",
                ready=False,
            )
            self.api.create(SLICES, body)
        self.cluster.start_operator(name="kubegate")  # no --gateway-class: the default
        self.cluster.start_operator(
            "--gateway-class",
            "internal",
            "--dataplane-service",
            f"{INTERNAL_NS}/{INTERNAL_SERVICE}",
            "--bootstrap-secret",
            INTERNAL_BOOTSTRAP,
            name="internal",
        )

    def close(self) -> None:
        self.cluster.close()
        for gw in self.internal:
            gw.stop()

    def planes(self) -> dict[str, list[GatewayProcess]]:
        return {"kubegate": self.cluster.gateways, "internal": self.internal}

    def backend(self, plane: str, path: str) -> set[str | None]:
        """What every data plane of a class answers for ``path``: its backends, None for a 404."""
        out: set[str | None] = set()
        for gw in self.planes()[plane]:
            response = httpx.get(gw.url + path, timeout=2)
            out.add(None if response.status_code == 404 else response.headers.get("x-backend", "?"))
        return out

    def statuses(self, name: str) -> list[dict[str, Any]]:
        """Every status the route has had (in order; {} where it had none)."""
        return [dict(v.get("status") or {}) for v in self.api.history(ROUTES, "default", name)]

    def bootstrap_tables(self, ref: str) -> list[set[str]]:
        """The route ids of every table ever stored in a bootstrap Secret."""
        ns, name = ref.split("/")
        tables = []
        for version in self.api.history(SECRETS, ns, name):
            data = (version.get("data") or {}).get("table.json.gz")
            if data:
                table = json.loads(gzip.decompress(base64.b64decode(data)))
                tables.append({r["id"] for r in table["routes"]})
        return tables


def _programmed(st: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == "Programmed"), {})


def _counts(statuses: list[dict[str, Any]]) -> set[str]:
    """The replica counts of the Programmed messages in these statuses: "2" for "1/2 replicas"."""
    found = (re.search(r"\d+/(\d+) replicas", _programmed(st).get("message", "")) for st in statuses if st)
    return {match.group(1) if match else "?" for match in found}


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, kube_api: KubeAPI) -> Iterator[TwoClasses]:
    made = TwoClasses(tmp_path_factory.mktemp("classes"), kube_api)
    try:
        made.start()
        yield made
    finally:
        made.close()


def test_two_operators_serve_and_write_only_their_own_class(
    two: TwoClasses, upstreams: dict[str, UpstreamServer]
) -> None:
    url = {name: f"http://127.0.0.1:{server.port}" for name, server in upstreams.items()}
    wait = two.cluster.wait

    def create(name: str, gateway_class: str | None, path: str, backend: str) -> None:
        two.api.create(ROUTES, _route(name, gateway_class, path=path, backends=[{"url": url[backend]}]))

    create("shared", None, "/shared", "alpha")  # the same path in both classes, to two backends
    create("shared-internal", "internal", "/shared", "beta")
    create("mover", "kubegate", "/mover", "gamma")
    create("nobody", "nobody", "/nobody", "alpha")

    def programmed(name: str, generation: int, replicas: int) -> bool:
        st = two.cluster.status(name)
        cond = _programmed(st)
        return (
            st.get("observedGeneration") == generation
            and cond.get("status") == "True"
            and cond.get("message") == f"{replicas}/{replicas} replicas"
        )

    wait(lambda: two.backend("kubegate", "/shared/x") == {"alpha"}, what="/shared on the default data plane")
    wait(lambda: two.backend("internal", "/shared/x") == {"beta"}, what="/shared on the internal data plane")
    wait(lambda: two.backend("kubegate", "/mover") == {"gamma"}, what="/mover on the default data plane")
    assert two.backend("internal", "/mover") == {None}
    wait(lambda: programmed("shared", 1, 2), what="shared Programmed 2/2")
    wait(lambda: programmed("shared-internal", 1, 1), what="shared-internal Programmed 1/1")
    wait(lambda: programmed("mover", 1, 2), what="mover Programmed 2/2")
    for name in ("shared", "shared-internal"):
        accepted = two.cluster.condition(name, "Accepted")
        assert accepted["status"] == "True", accepted  # the same match in two classes: no conflict

    # mover moves to the internal class: the default data plane drops it, the internal one serves it,
    # and its status is the internal operator's, of generation 2
    two.api.patch(ROUTES, "default", "mover", {"spec": {"gatewayClassName": "internal"}})
    wait(lambda: two.backend("internal", "/mover") == {"gamma"}, what="/mover on the internal data plane")
    wait(lambda: two.backend("kubegate", "/mover") == {None}, what="/mover gone from the default data plane")
    wait(lambda: programmed("mover", 2, 1), what="mover Programmed 1/1 at generation 2")

    # ... and to a class nobody serves: no data plane serves it, and its status is removed
    two.api.patch(ROUTES, "default", "mover", {"spec": {"gatewayClassName": "nobody"}})
    wait(lambda: two.backend("internal", "/mover") == {None}, what="/mover gone from the internal data plane")
    wait(lambda: two.cluster.status("mover") == {}, what="mover's status removed")
    assert two.backend("kubegate", "/mover") == {None}
    assert two.backend("kubegate", "/nobody") == two.backend("internal", "/nobody") == {None}

    # The history says who wrote what: each status version carries its writer's replica count.
    assert _counts(two.statuses("shared")) == {"2"}
    assert _counts(two.statuses("shared-internal")) == {"1"}
    assert two.statuses("nobody") == [{}] * len(two.statuses("nobody"))
    history = two.statuses("mover")
    by_generation = [(st.get("observedGeneration"), _counts([st])) for st in history if st]
    assert {g for g, _ in by_generation} == {1, 2}
    assert all(counts == ({"2"} if g == 1 else {"1"}) for g, counts in by_generation), by_generation
    first_of_2 = next(i for i, (g, _) in enumerate(by_generation) if g == 2)
    assert all(g == 2 for g, _ in by_generation[first_of_2:]), "a stale status landed over the new owner's"

    # Nothing was ever stored for the wrong class, not even a first table.
    wait(lambda: two.bootstrap_tables(INTERNAL_BOOTSTRAP), what="the internal bootstrap table")
    wait(lambda: two.bootstrap_tables(BOOTSTRAP), what="the default bootstrap table")
    assert set().union(*two.bootstrap_tables(BOOTSTRAP)) <= {"default/shared", "default/mover"}
    assert set().union(*two.bootstrap_tables(INTERNAL_BOOTSTRAP)) <= {
        "default/shared-internal",
        "default/mover",
    }
    for operator in two.cluster.operators.values():
        errors = [r for r in assert_json_log(operator.log_lines()) if r["level"] in ("error", "critical")]
        assert errors == [], f"{operator.name}: {errors[:3]}"
