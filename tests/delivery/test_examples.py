"""The files in ``examples/``: GatewayRoutes (one per feature) and the demo backend they route to.

Aspects covered: every example route fits the CRD's ``openAPIV3Schema`` (the chart's copy, as a cluster
would check it; the check is shown to reject a broken route); together they compile with no route
rejected and, given endpoints for the demo backend's Services, every backend resolved; every service
backend names a Service and port of ``demo-backend.yaml``; the examples cover every feature of the
schema (path types, match fields and their match types, service/url backends, weights, timeout); the
demo backend is a valid Kubernetes manifest running ``kubegate echo`` with arguments the real CLI accepts.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kubegate import cli
from kubegate.compiler import compile as compiler
from kubegate.compiler import resources
from tests.delivery import helm as helmtools
from tests.delivery.conftest import NO_VALIDATOR, import_tool

EXAMPLES = helmtools.ROOT / "examples"
CRD = helmtools.CHART / "crds" / "gatewayroutes.kubegate.dev.yaml"
DEMO = EXAMPLES / "demo-backend.yaml"
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def example_routes() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in load(path):
            if doc.get("kind") == "GatewayRoute":
                found.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return found


def example_secrets() -> list[dict[str, Any]]:
    """The Secrets the auth examples ship beside their routes (placeholders a user replaces)."""
    return [
        doc for path in sorted(EXAMPLES.glob("*.yaml")) for doc in load(path) if doc.get("kind") == "Secret"
    ]


ROUTES = example_routes()
# quickstart.yaml is the standalone demo (static URLs on 127.0.0.1); the others are the cluster examples.
CLUSTER_ROUTES = [(key, doc) for key, doc in ROUTES if not key.startswith("quickstart.yaml:")]


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(crd_schema())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize(("key", "route"), ROUTES, ids=[k for k, _ in ROUTES])
def test_example_fits_the_crd_schema(key: str, route: dict[str, Any]) -> None:
    assert route["apiVersion"] == "kubegate.dev/v1alpha1"
    assert schema_errors(route) == []


def test_schema_check_rejects_a_broken_route() -> None:
    """Guard: the schema check above can fail."""
    _, route = CLUSTER_ROUTES[0]
    broken = copy.deepcopy(route)
    broken["spec"]["match"]["path"]["type"] = "Regex"
    broken["spec"]["backends"][0]["port"] = 0
    assert len(schema_errors(broken)) == 2


def demo_services() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in load(DEMO) if d["kind"] == "Service"}


def endpoint_slices_for_demo(namespace: str) -> list[dict[str, Any]]:
    """What Kubernetes would create for the demo Services once their pods are ready."""
    slices = []
    for i, (name, service) in enumerate(sorted(demo_services().items())):
        port = service["spec"]["ports"][0]
        slices.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-abcde",
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": port["name"], "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [f"10.0.0.{i + 1}"], "conditions": {"ready": True}}],
            }
        )
        slices.append({**service, "metadata": {**service["metadata"], "namespace": namespace}})
    return slices


def test_examples_compile_together_and_resolve_against_the_demo_backend() -> None:
    objects = [doc for _, doc in CLUSTER_ROUTES] + endpoint_slices_for_demo("default") + example_secrets()
    text = yaml.safe_dump_all(objects)
    result = compiler.compile_bundle(resources.load_yaml(text, source="examples"), now=NOW)
    assert result.problems == ()
    assert len(result.statuses) == len(CLUSTER_ROUTES)
    assert result.rejected() == []
    unresolved = {
        key: cond.message
        for key, status in result.statuses.items()
        if (cond := status.condition(compiler.RESOLVED_REFS)) is None or cond.status != "True"
    }
    assert unresolved == {}


def test_service_backends_name_demo_services() -> None:
    services = demo_services()
    for key, route in CLUSTER_ROUTES:
        for backend in route["spec"].get("backends", []):
            if "service" in backend:
                assert backend["service"] in services, f"{key}: no Service {backend['service']} in demo"
                ports = [p["port"] for p in services[backend["service"]]["spec"]["ports"]]
                assert backend["port"] in ports, f"{key}: {backend['service']} has no port {backend['port']}"


def _features_in_schema() -> set[str]:
    spec = crd_schema()["properties"]["spec"]["properties"]
    match = spec["match"]["properties"]
    backend = spec["backends"]["items"]["properties"]
    features = {f"match.{name}" for name in match}
    features |= {f"path.{t}" for t in match["path"]["properties"]["type"]["enum"]}
    for field in ("headers", "queryParams"):
        features |= {f"{field}.{t}" for t in match[field]["items"]["properties"]["type"]["enum"]}
    features |= {f"backend.{name}" for name in backend}
    features |= {name for name in spec if name not in ("match", "backends")}
    return features


def _features_used(route: dict[str, Any]) -> set[str]:
    spec = route["spec"]
    match = spec.get("match", {})
    used = {f"match.{name}" for name in match}
    if "path" in match:
        used.add(f"path.{match['path'].get('type', 'Prefix')}")
    for field in ("headers", "queryParams"):
        used |= {f"{field}.{c.get('type', 'Exact')}" for c in match.get(field, [])}
    for backend in spec.get("backends", []):
        used |= {f"backend.{name}" for name in backend}
    used |= {name for name in spec if name not in ("match", "backends")}
    return used


def test_examples_cover_every_feature_of_the_schema() -> None:
    used = set().union(*(_features_used(route) for _, route in CLUSTER_ROUTES))
    missing = _features_in_schema() - used
    assert not missing, f"no example uses {sorted(missing)}: add one to examples/"
    weighted = [
        k for k, r in CLUSTER_ROUTES if len({b.get("weight", 1) for b in r["spec"].get("backends", [])}) > 1
    ]
    assert weighted, "no example splits traffic between backends by weight"


def test_demo_backend_runs_kubegate_echo() -> None:
    deployments = [d for d in load(DEMO) if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == set(demo_services())
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = [c.replace("$(POD_NAME)", "echo-0") for c in container["command"]]
        assert command[:2] == ["kubegate", "echo"]
        args = cli.build_parser().parse_args(command[1:])
        assert (args.host, args.port) == ("0.0.0.0", container["ports"][0]["containerPort"])
        assert container["image"].startswith("kubegate/dataplane:")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = demo_services()[deployment["metadata"]["name"]]
        assert service["spec"]["selector"].items() <= labels.items()


def test_demo_backend_is_a_valid_manifest() -> None:
    kv = import_tool("kubernetes_validate.utils", NO_VALIDATOR)
    version = max(set(kv.all_versions()), key=lambda v: tuple(int(x) for x in v.split(".")))
    for doc in load(DEMO):
        kv.validate(doc, version, strict=True)
