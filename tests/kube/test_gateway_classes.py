"""Two kubegate operators with two gateway classes on a real kube-apiserver (issue 13): status ownership.

Aspects: the operator's status calls on the real API server (the emulator's twin of this is
``tests/operator/test_kube.py``): a status lands under the class's field manager (``managedFields``), a
status computed from an older generation does not (``stale``: the JSON patch's ``test`` of
``metadata.generation`` fails with a 422 without causes), while a status the schema refuses is an error
and not taken for ``stale``; a removal happens only while the status has the ``observedGeneration`` given.

Then two operator processes, classes ``kubegate`` (by default, no flag) and ``internal``, watch one
namespace: each writes the status of its own routes only (routes naming no class, or ``kubegate``, for
the first; ``internal`` for the second), the same match in both classes is no conflict, a route naming a
class nobody serves gets no status; a route moved from ``internal`` to ``kubegate`` ends up with the
status of the new owner only (generation 2, its field manager alone), and a route moved to a class nobody
serves loses the status of its old owner; each bootstrap Secret holds its own class's routes only.

What it cannot check: traffic. No data plane runs here (the API server refuses EndpointSlices with the
loopback addresses local data planes would have), so every route is ``Programmed=False`` with "0/0
replicas": the two data planes each serving only their class are checked against the emulator, in
``tests/operator/test_gateway_class.py``.
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from kubegate.api import crd
from kubegate_operator.kube import Kube, field_manager
from tests import controlplane
from tests.operator.conftest import Operator, assert_json_log, gatewayroute
from tests.upstreams import wait_for

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "classes"
CALLS_NAMESPACE = "classes-calls"


@pytest.fixture(scope="module")
def kube(control_plane: controlplane.ControlPlane) -> controlplane.ControlPlane:
    """The session's control plane with the CRD applied (and Established) and the test namespaces."""
    control_plane.kubectl("apply", "-f", str(ROOT / "crds"))
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{crd.CRD_NAME}", "--timeout=30s")
    for namespace in (NAMESPACE, CALLS_NAMESPACE):
        control_plane.kubectl("create", "namespace", namespace)
    return control_plane


def _apply(kube: controlplane.ControlPlane, *bodies: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(b) for b in bodies))


def _route(name: str, gateway_class: str | None, path: str, ns: str = NAMESPACE) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "match": {"path": {"type": "Prefix", "value": path}},
        "backends": [{"url": "http://127.0.0.1:9"}],
    }
    if gateway_class is not None:
        spec["gatewayClassName"] = gateway_class
    return gatewayroute(name, spec, ns)


def _get(kube: controlplane.ControlPlane, name: str, ns: str = NAMESPACE) -> dict[str, Any]:
    out = kube.kubectl("get", "gatewayroute", name, "-n", ns, "-o", "json", "--show-managed-fields")
    body: dict[str, Any] = json.loads(out.stdout)
    return body


def _status_managers(body: dict[str, Any], field: str | None = None) -> set[str]:
    """The field managers owning a field of the route's status (or that one field, ``f:NAME``). A
    manager that set a field to the value it already had co-owns it: a status written by an operator
    that never wrote this route shows up here."""
    managers = set()
    for entry in body["metadata"].get("managedFields") or ():
        owned = (entry.get("fieldsV1") or {}).get("f:status") or {}
        if (field in owned) if field is not None else bool(set(owned) - {"."}):
            managers.add(entry["manager"])
    return managers


# --- the status calls --------------------------------------------------------------------------------------


@pytest.fixture
async def kube_calls(kube: controlplane.ControlPlane) -> AsyncIterator[Kube]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kube.kubeconfig), client_configuration=configuration)
    calls = Kube(client.ApiClient(configuration), manager=field_manager("calls"))
    try:
        yield calls
    finally:
        await calls.close()


async def test_status_patches_apply_only_to_the_generation_they_were_computed_from(
    kube: controlplane.ControlPlane, kube_calls: Kube
) -> None:
    _apply(kube, _route("calls", None, "/calls", CALLS_NAMESPACE))
    status = {"observedGeneration": 1, "conditions": []}
    assert await kube_calls.patch_route_status(CALLS_NAMESPACE, "calls", status) == "ok"
    body = _get(kube, "calls", CALLS_NAMESPACE)
    assert body["status"] == status
    assert _status_managers(body) == {"kubegate/calls"}
    assert await kube_calls.patch_route_status(CALLS_NAMESPACE, "missing", status) == "gone"

    _apply(kube, _route("calls", "internal", "/calls", CALLS_NAMESPACE))  # generation 2
    assert _get(kube, "calls", CALLS_NAMESPACE)["metadata"]["generation"] == 2
    late = {"observedGeneration": 1, "conditions": [{"type": "Late"}]}  # would be refused, if it got there
    assert await kube_calls.patch_route_status(CALLS_NAMESPACE, "calls", late) == "stale"
    assert _get(kube, "calls", CALLS_NAMESPACE)["status"] == status
    refused = {"observedGeneration": 2, "conditions": [{"type": "Late"}]}  # no status, reason, time
    with pytest.raises(ApiException) as raised:
        await kube_calls.patch_route_status(CALLS_NAMESPACE, "calls", refused)
    assert raised.value.status == 422, "a refused status is an error, not a stale write"
    current = {"observedGeneration": 2, "conditions": []}
    assert await kube_calls.patch_route_status(CALLS_NAMESPACE, "calls", current) == "ok"

    assert await kube_calls.clear_route_status(CALLS_NAMESPACE, "calls", 1) == "stale"
    assert _get(kube, "calls", CALLS_NAMESPACE)["status"] == current
    assert await kube_calls.clear_route_status(CALLS_NAMESPACE, "calls", 2) == "ok"
    body = _get(kube, "calls", CALLS_NAMESPACE)
    assert "status" not in body and _status_managers(body) == set()
    assert await kube_calls.clear_route_status(CALLS_NAMESPACE, "calls", 2) == "stale"
    assert await kube_calls.clear_route_status(CALLS_NAMESPACE, "missing", 2) == "gone"


# --- two operators ----------------------------------------------------------------------------------------


class Operators:
    """Two operator processes against the control plane, one per class, each with its own bootstrap
    Secret and (absent) data-plane Service."""

    def __init__(self, kube: controlplane.ControlPlane, tmp: Path) -> None:
        self.kube = kube
        self.tmp = tmp
        self.running: dict[str, Operator] = {}

    def start(self, gateway_class: str, *flags: str) -> Operator:
        env = {**self.kube.env(), "NO_PROXY": "*"}
        env.pop("KUBEGATE_GATEWAY_CLASS", None)
        args = [
            sys.executable,
            "-m",
            "kubegate_operator",
            *flags,
            "--namespace",
            NAMESPACE,
            "--dataplane-service",
            f"{NAMESPACE}/{gateway_class}-dataplane",
            "--bootstrap-secret",
            f"{NAMESPACE}/{gateway_class}-bootstrap",
            "--holdoff",
            "0.02",
            "--max-delay",
            "0.2",
        ]
        made = Operator(gateway_class, args, env, self.tmp / f"{gateway_class}.log")
        self.running[gateway_class] = made
        return made

    def stop(self) -> None:
        for operator in self.running.values():
            operator.stop()

    def wait(self, predicate: Any, what: str, timeout: float = 30.0) -> Any:
        try:
            return wait_for(predicate, timeout=timeout, interval=0.1)
        except TimeoutError:
            tails = "\n".join(
                f"--- {o.name}:\n" + "\n".join(o.log_lines()[-20:]) for o in self.running.values()
            )
            raise AssertionError(f"not in {timeout} s: {what}\n{tails}") from None

    def bootstrap_routes(self, gateway_class: str) -> set[str] | None:
        """The route ids of the table in a class's bootstrap Secret (None while there is none)."""
        name = f"{gateway_class}-bootstrap"
        found = self.kube.kubectl("get", "secret", name, "-n", NAMESPACE, "-o", "json", check=False)
        if found.returncode != 0:
            return None
        data = json.loads(found.stdout).get("data", {}).get("table.json.gz")
        table = json.loads(gzip.decompress(base64.b64decode(data))) if data else None
        return {r["id"] for r in table["routes"]} if table else None


@pytest.fixture
def operators(kube: controlplane.ControlPlane, tmp_path: Path) -> Iterator[Operators]:
    made = Operators(kube, tmp_path)
    try:
        yield made
    finally:
        made.stop()


def test_each_operator_writes_only_the_status_of_its_own_class(
    kube: controlplane.ControlPlane, operators: Operators
) -> None:
    _apply(
        kube,
        _route("plain", None, "/shared"),
        _route("named-default", "kubegate", "/named"),
        _route("internal", "internal", "/internal"),
        _route("internal-same", "internal", "/shared"),  # plain's match, in the other class
        _route("nobody", "nobody", "/nobody"),
    )
    default = operators.start("kubegate")  # no --gateway-class: the default class
    internal = operators.start("internal", "--gateway-class", "internal")
    manager = {"kubegate": field_manager("kubegate"), "internal": field_manager("internal")}
    owners = {
        "plain": "kubegate",
        "named-default": "kubegate",
        "internal": "internal",
        "internal-same": "internal",
    }

    def written(name: str, generation: int, owner: str, *, moved: bool = False) -> bool:
        body = _get(kube, name)
        st = body.get("status") or {}
        accepted = [c for c in st.get("conditions", ()) if c["type"] == "Accepted"]
        # A route that moved may keep its old owner as co-owner of the condition fields the new owner
        # wrote with the same values (type, status, reason); observedGeneration is the new owner's alone.
        managers = _status_managers(body, "f:observedGeneration" if moved else None)
        return (
            st.get("observedGeneration") == generation
            and [c["status"] for c in accepted] == ["True"]  # the same match in two classes: no conflict
            and managers == {manager[owner]}
        )

    for name, owner in owners.items():
        operators.wait(lambda n=name, o=owner: written(n, 1, o), f"{name}'s status by {owner}")
    assert "status" not in _get(kube, "nobody")

    # internal → kubegate: the new owner's status alone, of generation 2
    _apply(kube, _route("internal", "kubegate", "/internal"))
    operators.wait(
        lambda: written("internal", 2, "kubegate", moved=True), "internal's status by its new owner"
    )
    # named-default → a class nobody serves: its old owner removes its status
    _apply(kube, _route("named-default", "nobody", "/named"))
    operators.wait(lambda: "status" not in _get(kube, "named-default"), "named-default's status removed")

    # A steady state: each route still has the status of its owner (nobody wrote over it since).
    owners["internal"] = "kubegate"
    del owners["named-default"]
    operators.wait(
        lambda: operators.bootstrap_routes("kubegate") == {"classes/plain", "classes/internal"}, "tables"
    )
    operators.wait(
        lambda: operators.bootstrap_routes("internal") == {"classes/internal-same"}, "internal table"
    )
    for name, owner in owners.items():
        assert written(name, 2 if name == "internal" else 1, owner, moved=name == "internal"), name
    assert "status" not in _get(kube, "nobody") and "status" not in _get(kube, "named-default")
    for operator in (default, internal):
        assert operator.proc.poll() is None, f"{operator.name} exited"
        records = assert_json_log(operator.log_lines())
        assert [r for r in records if r["level"] in ("error", "critical")] == [], operator.name
        assert any(f"gateway class {operator.name!r}" in r["message"] for r in records), operator.name
