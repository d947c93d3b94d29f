"""The GatewayRoute CRD on a real kube-apiserver (built by ``hack/tools.sh``), not on an emulator.

Aspects: ``kubectl apply -f crds/`` installs the CRD and it becomes Established with its names accepted;
``kubectl explain`` shows the models' field documentation; every example in ``examples/`` is accepted
as it is; ``kubectl get gwr`` prints the printer columns (what the route matches, filled from its spec,
and its conditions, from a status the compiler computed and written through the status subresource;
ResolvedRefs with ``-o wide``), and ``kubectl get kubegate`` lists routes; a status condition without a
message is refused; a corpus of invalid GatewayRoutes where each case states its outcome: **rejected** by
the API server at apply time (OpenAPI schema, CEL rule, list type or strict field validation) with the
field named in the error, or **accepted** by it (the schema cannot say it) and then refused by the
compiler (``Accepted=False``) with the same field named in the condition; the API server refuses exactly
the paths and the duplicates the models refuse; server-side apply merges the items of a map list from
two managers and replaces an atomic one whole.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
import yaml

from kubegate.api import crd, models
from kubegate.compiler import compile as compiler
from kubegate.compiler import resources
from kubegate_operator import status as status_mod
from tests import controlplane

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "kubegate" / "crds"
EXAMPLES = ROOT / "examples"
NAMESPACE = "crd-real"


@pytest.fixture(scope="module")
def kube(control_plane: controlplane.ControlPlane) -> controlplane.ControlPlane:
    """The session's control plane with the CRD applied (and Established) and the test namespace."""
    applied = control_plane.kubectl("apply", "-f", str(CRDS))
    assert f"customresourcedefinition.apiextensions.k8s.io/{crd.CRD_NAME}" in applied.stdout
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{crd.CRD_NAME}", "--timeout=30s")
    control_plane.kubectl("create", "namespace", NAMESPACE)
    return control_plane


def _crd_conditions(kube: controlplane.ControlPlane) -> dict[str, str]:
    body = json.loads(kube.kubectl("get", f"crd/{crd.CRD_NAME}", "-o", "json").stdout)
    return {c["type"]: c["status"] for c in body["status"]["conditions"]}


def test_crd_is_established_with_its_names(kube: controlplane.ControlPlane) -> None:
    conditions = _crd_conditions(kube)
    assert conditions.get("Established") == "True", conditions
    assert conditions.get("NamesAccepted") == "True", conditions
    resources_out = kube.kubectl("api-resources", f"--api-group={models.GROUP}", "-o", "wide").stdout
    [row] = [line.split() for line in resources_out.splitlines() if line.startswith("gatewayroutes")]
    assert row[:5] == ["gatewayroutes", "gwr", models.API_VERSION, "true", models.KIND]


def test_the_readmes_crd_upgrade_command_works_on_the_charts_copy(kube: controlplane.ControlPlane) -> None:
    """``kubectl apply --server-side --force-conflicts -f charts/kubegate/crds/`` over the CRD that a
    client-side apply installed (as the README says to upgrade it; helm never upgrades CRDs)."""
    result = kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART_CRDS))
    assert f"customresourcedefinition.apiextensions.k8s.io/{crd.CRD_NAME} serverside-applied" in result.stdout
    assert _crd_conditions(kube).get("Established") == "True"


def _words(text: str) -> str:
    return " ".join(text.split())


def _explain(kube: controlplane.ControlPlane, field: str) -> str:
    """``kubectl explain`` (retried for a few seconds: the OpenAPI document lags the CRD's Established)."""
    deadline = time.monotonic() + 20
    while True:
        result = kube.kubectl("explain", field, check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr
    return _words(result.stdout)


@pytest.mark.parametrize(
    ("field", "model"),
    [
        ("gatewayroute.spec", models.GatewayRouteSpec),
        ("gatewayroute.spec.backends", models.BackendRef),
        ("gatewayroute.spec.retry", models.RetrySpec),
    ],
)
def test_explain_shows_the_models_documentation(
    kube: controlplane.ControlPlane, field: str, model: type[models.LeanModel]
) -> None:
    text = _explain(kube, field)
    assert f"GROUP: {models.GROUP} KIND: {models.KIND} VERSION: {models.VERSION}" in text
    for name, info in model.model_fields.items():
        wire = info.alias or name
        assert info.description, f"{model.__name__}.{name} has no description"
        assert f"{wire} <" in text, f"{field}: no field {wire}"
        assert _words(info.description) in text, f"{field}.{wire}: its description is not shown"
    required = [f.alias or n for n, f in model.model_fields.items() if f.is_required()]
    for wire in required:
        assert f"{wire} <" in text and "-required-" in text.split(f"{wire} <", 1)[1].split(">", 1)[1][:20]


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc is not None
    ]


def test_every_example_is_accepted(kube: controlplane.ControlPlane) -> None:
    routes = [doc for _, doc in _example_documents() if doc.get("kind") == models.KIND]
    assert len(routes) >= 15
    # --dry-run=server: the API server validates (schema, CEL, strict fields) and stores nothing.
    result = kube.kubectl("apply", "-n", NAMESPACE, "--dry-run=server", "-f", str(EXAMPLES), check=False)
    assert result.returncode == 0, result.stderr
    for doc in routes:
        assert (
            f"gatewayroute.kubegate.dev/{doc['metadata']['name']} created (server dry run)" in result.stdout
        )


def _stored(kube: controlplane.ControlPlane, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(kube.kubectl("get", "gwr", name, "-n", NAMESPACE, "-o", "json").stdout)
    return body


def _compiled_status(body: dict[str, Any]) -> dict[str, Any]:
    """The status the compiler gives this (stored) object, as JSON for the API server."""
    result = compiler.compile_bundle(resources.from_objects([body]), now=datetime.now(tz=UTC))
    status = result.statuses[f"{body['metadata']['namespace']}/{body['metadata']['name']}"]
    wire: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return wire


def _table(text: str) -> list[dict[str, str]]:
    """``kubectl get``'s aligned table as one dict per row (cells cut at the header's column starts, so
    that an empty cell stays empty instead of shifting the others)."""
    header, *rows = text.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = [*starts[1:], None]
    return [{n: row[a:b].strip() for n, a, b in zip(names, starts, bounds, strict=True)} for row in rows]


def test_get_gwr_prints_the_columns_of_a_status(kube: controlplane.ControlPlane) -> None:
    kube.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES / "route-prefix.yaml"))
    stored = _stored(kube, "prefix")
    assert stored["metadata"]["generation"] == 1
    assert stored["spec"]["backends"] == [{"service": "echo", "port": 80, "weight": 1}]  # weight defaulted
    [version] = crd.build_crd()["spec"]["versions"]
    columns = [c["name"].upper() for c in version["additionalPrinterColumns"] if not c.get("priority")]
    [row] = _table(kube.kubectl("get", "gwr", "prefix", "-n", NAMESPACE).stdout)
    assert list(row) == ["NAME", *columns]
    assert (row["NAME"], row["HOSTS"], row["PATH"]) == ("prefix", "", "/echo")  # no hosts: any host
    assert (row["ACCEPTED"], row["PROGRAMMED"]) == ("", "")  # no status yet

    # No operator runs here: write the status it would (the compiler's conditions and Programmed 3/3)
    # through the status subresource, as it does.
    status = status_mod.desired_status(
        _compiled_status(stored), acked=3, replicas=3, previous=None, now=datetime.now(tz=UTC)
    )
    kube.kubectl(
        "patch", "gwr", "prefix", "-n", NAMESPACE, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    after = _stored(kube, "prefix")
    assert after["metadata"]["generation"] == 1, "a status write must not bump the generation"
    assert after["status"] == status
    [row] = _table(kube.kubectl("get", "gwr", "prefix", "-n", NAMESPACE).stdout)
    # No Service "echo" exists in the compiled bundle: accepted, its backend unresolved (a wide column).
    assert (row["NAME"], row["ACCEPTED"], row["PROGRAMMED"]) == ("prefix", "True", "True")
    assert re.fullmatch(r"\d+s", row["AGE"]), row
    [wide] = _table(kube.kubectl("get", "gwr", "prefix", "-n", NAMESPACE, "-o", "wide").stdout)
    assert list(wide) == ["NAME", *[c["name"].upper() for c in version["additionalPrinterColumns"]]]
    assert (wide["ACCEPTED"], wide["PROGRAMMED"], wide["RESOLVEDREFS"]) == ("True", "True", "False")

    # The status subresource ignores a spec, and a spec write bumps the generation.
    kube.kubectl(
        "patch", "gwr", "prefix", "-n", NAMESPACE, "--subresource=status", "--type=merge",
        "-p", json.dumps({"spec": {"timeout": "5s"}}),
    )  # fmt: skip
    assert "timeout" not in _stored(kube, "prefix")["spec"]
    kube.kubectl(
        "patch", "gwr", "prefix", "-n", NAMESPACE, "--type=merge", "-p", '{"spec": {"timeout": "5s"}}'
    )
    assert _stored(kube, "prefix")["metadata"]["generation"] == 2


def test_columns_show_what_a_route_matches(kube: controlplane.ControlPlane) -> None:
    """Hosts (the list) and Path; a route without a match gets the default path stored (match and
    match.path default to {}), so its Path column says / rather than nothing."""
    kube.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES / "route-hosts.yaml"))
    [row] = _table(kube.kubectl("get", "gwr", "hosts", "-n", NAMESPACE).stdout)
    assert (row["HOSTS"], row["PATH"]) == ('["echo.example.com","*.demo.example.com"]', "/")
    body = {**BASE, "metadata": {"name": "everything", "namespace": NAMESPACE}, "spec": {
        "backends": [{"service": "shop", "port": 8080}]}}  # fmt: skip
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(body))
    assert _stored(kube, "everything")["spec"]["match"] == {"path": {"type": "Prefix", "value": "/"}}
    [row] = _table(kube.kubectl("get", "gwr", "everything", "-n", NAMESPACE).stdout)
    assert (row["HOSTS"], row["PATH"]) == ("", "/")


def test_get_kubegate_lists_routes(kube: controlplane.ControlPlane) -> None:
    """The category: ``kubectl get kubegate`` lists the GatewayRoutes (and whatever kubegate adds later)."""
    kube.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES / "route-exact.yaml"))
    deadline = time.monotonic() + 20  # discovery lags the CRD's Established a little
    while True:
        result = kube.kubectl("get", "kubegate", "-n", NAMESPACE, "-o", "name", check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr
    assert f"{crd.SINGULAR}.{models.GROUP}/exact" in result.stdout.split()


def test_a_condition_without_a_message_is_refused(kube: controlplane.ControlPlane) -> None:
    """metav1.Condition's required fields, message included, through the status subresource."""
    kube.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES / "route-methods.yaml"))
    name = yaml.safe_load((EXAMPLES / "route-methods.yaml").read_text(encoding="utf-8"))["metadata"]["name"]
    condition = {"type": "Accepted", "status": "True", "reason": "Accepted",
                 "lastTransitionTime": "2024-06-01T00:00:00Z"}  # fmt: skip
    result = kube.kubectl(
        "patch", "gwr", name, "-n", NAMESPACE, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"conditions": [condition]}}), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "status.conditions[0].message: Required value" in result.stderr, result.stderr
    # As in metav1.Condition, an empty message is a message.
    kube.kubectl(
        "patch", "gwr", name, "-n", NAMESPACE, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"conditions": [{**condition, "message": ""}]}}),
    )  # fmt: skip


def test_server_side_apply_merges_map_lists_and_replaces_atomic_ones(kube: controlplane.ControlPlane) -> None:
    """Two managers: each one's header condition (a map keyed by name) and host (a set) stay side by side;
    backends (atomic) are the last applier's whole list."""
    base = {**BASE, "metadata": {"name": "merged", "namespace": NAMESPACE}}
    first = {**base, "spec": {
        "match": {"hosts": ["a.example.com"], "headers": [{"name": "X-A", "value": "1"}]},
        "backends": [{"service": "a", "port": 80}, {"service": "b", "port": 80}],
    }}  # fmt: skip
    second = {**base, "spec": {
        "match": {"hosts": ["b.example.com"], "headers": [{"name": "X-B", "value": "2"}]},
        "backends": [{"service": "c", "port": 80, "weight": 1}],
    }}  # fmt: skip
    apply = ("apply", "--server-side", "-f", "-")
    kube.kubectl(*apply, "--field-manager=team-a", stdin=json.dumps(first))
    result = kube.kubectl(*apply, "--field-manager=team-b", stdin=json.dumps(second), check=False)
    assert result.returncode != 0 and "conflict" in result.stderr.lower(), result  # backends: team-a's
    kube.kubectl(*apply, "--field-manager=team-b", "--force-conflicts", stdin=json.dumps(second))
    spec = _stored(kube, "merged")["spec"]
    assert sorted(spec["match"]["hosts"]) == ["a.example.com", "b.example.com"]
    assert sorted(h["name"] for h in spec["match"]["headers"]) == ["X-A", "X-B"]
    assert spec["backends"] == [{"service": "c", "port": 80, "weight": 1}]
    # the merged route is valid for the compiler too
    assert _accepted_condition(_stored(kube, "merged"))["status"] == "True"


# --- the corpus of invalid routes --------------------------------------------------------------------

BASE: dict[str, Any] = {
    "apiVersion": models.API_VERSION,
    "kind": models.KIND,
    "metadata": {"name": "case", "namespace": NAMESPACE},
    "spec": {
        "match": {"path": {"type": "Prefix", "value": "/shop"}},
        "backends": [{"service": "shop", "port": 8080}],
    },
}
_DELETE = object()
Outcome = Literal["rejected", "accepted"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One invalid route: ``BASE`` with ``edits`` (dotted path → value, ``_DELETE`` removes it).

    ``rejected``: ``kubectl apply`` fails and its error names ``field`` (and contains ``says``).
    ``accepted``: the API server stores it; the compiler then marks it ``Accepted=False`` with a message
    that names ``field`` (and contains ``says``).
    """

    id: str
    edits: dict[str, object]
    outcome: Outcome
    field: str
    says: str = ""

    def body(self) -> dict[str, Any]:
        body = copy.deepcopy(BASE)
        body["metadata"]["name"] = self.id
        for path, value in self.edits.items():
            *parents, last = path.split(".")
            node: Any = body
            for part in parents:
                node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
            key: int | str = int(last) if last.isdigit() else last
            if value is _DELETE:
                del node[key]
            else:
                node[key] = value
        return body


_SERVICE = {"service": "shop", "port": 8080}
_REGEX = {"name": "X-A", "value": "a", "type": "RegularExpression"}

CASES = [
    # -- wrong types
    Case("port-string", {"spec.backends.0.port": "8080"}, "rejected", "spec.backends[0].port", "integer"),
    Case("weight-float", {"spec.backends.0.weight": 1.5}, "rejected", "spec.backends[0].weight", "integer"),
    Case("methods-not-a-list", {"spec.match.methods": "GET"}, "rejected", "spec.match.methods", "array"),
    Case("retry-non-idempotent-string", {"spec.retry": {"retryNonIdempotent": "false"}}, "rejected",
         "spec.retry.retryNonIdempotent", "boolean"),
    Case("failure-ratio-string", {"spec.circuitBreaker": {"failureRatio": "0.5"}}, "rejected",
         "spec.circuitBreaker.failureRatio", "number"),
    # -- unknown fields (kubectl's default --validate=strict: the server refuses them, it does not prune)
    Case("unknown-spec-field", {"spec.hosts": ["a.example.com"]}, "rejected", "spec.hosts", "unknown field"),
    Case("unknown-backend-field", {"spec.backends.0.namespace": "other"}, "rejected",
         "spec.backends[0].namespace", "unknown field"),
    Case("unknown-retry-field", {"spec.retry": {"tries": 3}}, "rejected", "spec.retry.tries",
         "unknown field"),
    # -- enums
    Case("path-type-regex", {"spec.match.path.type": "Regex"}, "rejected", "spec.match.path.type",
         "Unsupported value"),
    Case("method-lower-case", {"spec.match.methods": ["get"]}, "rejected", "spec.match.methods[0]",
         "Unsupported value"),
    Case("lb-type-unknown", {"spec.loadBalancer": {"type": "LeastConnections"}}, "rejected",
         "spec.loadBalancer.type", "Unsupported value"),
    Case("header-type-unknown", {"spec.match.headers": [{"name": "X-A", "value": "a", "type": "Prefix"}]},
         "rejected", "spec.match.headers[0].type", "Unsupported value"),
    # -- patterns, bounds, required
    Case("no-spec", {"spec": _DELETE}, "rejected", "spec", "Required value"),
    Case("no-backends", {"spec.backends": []}, "rejected", "spec", "at least one backend"),
    Case("port-too-big", {"spec.backends.0.port": 65536}, "rejected", "spec.backends[0].port", "65535"),
    Case("weight-negative", {"spec.backends.0.weight": -1}, "rejected", "spec.backends[0].weight", "0"),
    Case("service-name-upper-case", {"spec.backends.0.service": "Shop"}, "rejected",
         "spec.backends[0].service", "should match"),
    Case("path-relative", {"spec.match.path.value": "shop"}, "rejected", "spec.match.path.value",
         "should match"),
    Case("host-upper-case", {"spec.match.hosts": ["API.example.com"]}, "rejected", "spec.match.hosts[0]",
         "should match"),
    Case("header-name-space", {"spec.match.headers": [{"name": "X A", "value": "a"}]}, "rejected",
         "spec.match.headers[0].name", "should match"),
    Case("timeout-fraction", {"spec.timeout": "1.5s"}, "rejected", "spec.timeout", "should match"),
    Case("url-ftp", {"spec.backends.0": {"url": "ftp://example.com"}}, "rejected",
         "spec.backends[0].url", "should match"),
    Case("url-with-path", {"spec.backends.0": {"url": "http://example.com/api"}}, "rejected",
         "spec.backends[0].url", "should match"),
    Case("retry-on-200", {"spec.retry": {"retryOn": ["200"]}}, "rejected", "spec.retry.retryOn[0]",
         "should match"),
    Case("attempts-over-10", {"spec.retry": {"attempts": 11}}, "rejected", "spec.retry.attempts", "10"),
    # -- a backend's target and hashOn's key: CEL rules with the compiler's messages, which name the fields
    # (not oneOf / not, for which the API server says only "must validate one and only one schema")
    Case("service-without-port", {"spec.backends.0": {"service": "shop"}}, "rejected", "spec.backends[0]",
         "port is required with service"),
    Case("tls-on-http-url", {"spec.backends.0": {"url": "http://example.com", "tls": {}}}, "rejected",
         "spec.backends[0]", "tls on a url backend needs an https:// url"),
    Case("ca-and-insecure", {"spec.backends.0": {"url": "https://example.com", "tls": {
         "caSecretRef": {"name": "ca"}, "insecureSkipVerify": True}}}, "rejected", "spec.backends[0].tls",
         "caSecretRef and insecureSkipVerify exclude each other"),
    Case("port-without-service", {"spec.backends.0": {"port": 80}}, "rejected", "spec.backends[0]",
         "a backend needs either service (with port) or url"),
    Case("no-target", {"spec.backends.0": {"weight": 1}}, "rejected", "spec.backends[0]",
         "a backend needs either service (with port) or url"),
    Case("url-with-service", {"spec.backends.0": {"url": "http://example.com", "service": "shop"}},
         "rejected", "spec.backends[0]", "set either service (with port) or url, not both"),
    Case("url-with-service-and-port", {"spec.backends.0": {"url": "http://example.com", **_SERVICE}},
         "rejected", "spec.backends[0]", "set either service (with port) or url, not both"),
    Case("url-with-port", {"spec.backends.0": {"url": "http://example.com", "port": 80}}, "rejected",
         "spec.backends[0]", "port is only used with service; put the port in the url"),
    Case("second-backend-without-port", {"spec.backends": [_SERVICE, {"service": "cart"}]}, "rejected",
         "spec.backends[1]", "port is required with service"),
    Case("hash-on-two-keys", {"spec.loadBalancer": {"type": "ConsistentHash",
                                                    "hashOn": {"header": "X-A", "cookie": "a"}}},
         "rejected", "spec.loadBalancer.hashOn", "set exactly one of header, cookie, sourceIP, queryParam"),
    Case("hash-on-empty", {"spec.loadBalancer": {"type": "ConsistentHash", "hashOn": {}}}, "rejected",
         "spec.loadBalancer.hashOn", "set exactly one of header, cookie, sourceIP, queryParam"),
    # -- cross-field and duration rules (CEL, x-kubernetes-validations)
    Case("consistent-hash-without-hash-on", {"spec.loadBalancer": {"type": "ConsistentHash"}}, "rejected",
         "spec.loadBalancer", "hashOn is required with type ConsistentHash"),
    Case("hash-on-with-round-robin",
         {"spec.loadBalancer": {"type": "RoundRobin", "hashOn": {"sourceIP": True}}}, "rejected",
         "spec.loadBalancer", "hashOn is required with type ConsistentHash"),
    Case("backoff-max-below-base", {"spec.retry": {"backoff": {"base": "100ms", "max": "50ms"}}}, "rejected",
         "spec.retry.backoff", "max must be at least base"),
    Case("per-try-timeout-zero", {"spec.retry": {"perTryTimeout": "0s"}}, "rejected",
         "spec.retry.perTryTimeout", "must be at least 1ms"),
    Case("cb-window-too-short", {"spec.circuitBreaker": {"window": "10ms"}}, "rejected",
         "spec.circuitBreaker.window", "must be at least 100ms"),
    Case("health-timeout-over-interval", {"spec.healthCheck": {"interval": "1s", "timeout": "2s"}},
         "rejected", "spec.healthCheck", "timeout must not be longer than interval"),
    Case("regex-too-long", {"spec.match.headers": [{**_REGEX, "value": "a" * 1025}]}, "rejected",
         "spec.match.headers[0]", "at most 1024 characters"),
    Case("too-many-regex-matches",
         {"spec.match.headers": [_REGEX] * 9, "spec.match.queryParams": [_REGEX] * 8}, "rejected",
         "spec.match", "at most 16 RegularExpression matches"),
    # -- the edge policies' CEL rules (rewrite, redirect, header transforms, CORS)
    Case("redirect-with-backends", {"spec.redirect": {"hostname": "www.example.com"}}, "rejected", "spec",
         "a route needs at least one backend, or a redirect and no backends"),
    Case("redirect-with-rewrite",
         {"spec.backends": _DELETE, "spec.redirect": {"hostname": "www.example.com"},
          "spec.rewrite": {"pathPrefix": "/v2"}}, "rejected", "spec",
         "a route with a redirect cannot have rewrite or requestHeaders"),
    Case("rewrite-both-paths", {"spec.rewrite": {"pathPrefix": "/v2", "fullPath": "/v2"}}, "rejected",
         "spec.rewrite", "set exactly one of pathPrefix or fullPath"),
    Case("rewrite-dot-segment", {"spec.rewrite": {"pathPrefix": "/a/../b"}}, "rejected",
         "spec.rewrite.pathPrefix", "must not contain '.' or '..' segments or '//'"),
    Case("rewrite-encoded-slash", {"spec.rewrite": {"fullPath": "/a%2Fb"}}, "rejected",
         "spec.rewrite.fullPath", "must not contain a backslash, or an encoded dot, slash or backslash"),
    Case("redirect-double-slash",
         {"spec.backends": _DELETE, "spec.redirect": {"path": "/a//b"}}, "rejected", "spec.redirect.path",
         "must not contain '.' or '..' segments or '//'"),
    Case("set-host-header", {"spec.requestHeaders": {"set": [{"name": "Host", "value": "x"}]}}, "rejected",
         "spec.requestHeaders.set[0].name", "cannot be changed by a transform"),
    Case("remove-content-length", {"spec.responseHeaders": {"remove": ["Content-Length"]}}, "rejected",
         "spec.responseHeaders.remove[0]", "cannot be changed by a transform"),
    Case("cors-credentials-any-origin", {"spec.cors": {"allowOrigins": ["*"], "allowCredentials": True}},
         "rejected", "spec.cors", "allowCredentials cannot be used with the origin '*'"),
    # -- the match path: in normal form (the pattern, and CEL rules with the compiler's messages)
    Case("path-double-slash", {"spec.match.path.value": "/shop//cart"}, "rejected", "spec.match.path.value",
         "must not contain '.' or '..' segments or '//'"),
    Case("path-dot-dot", {"spec.match.path.value": "/public/../shop"}, "rejected", "spec.match.path.value",
         "must not contain '.' or '..' segments or '//'"),
    Case("path-encoded-dots", {"spec.match.path.value": "/public/%2e%2e/shop"}, "rejected",
         "spec.match.path.value", "must not contain a backslash, or an encoded dot, slash or backslash"),
    Case("path-encoded-slash", {"spec.match.path.value": "/shop%2Fcart"}, "rejected",
         "spec.match.path.value", "must not contain a backslash, or an encoded dot, slash or backslash"),
    Case("path-backslash", {"spec.match.path.value": "/shop\\cart"}, "rejected", "spec.match.path.value",
         "must not contain a backslash, or an encoded dot, slash or backslash"),
    Case("path-bad-escape", {"spec.match.path.value": "/100%"}, "rejected", "spec.match.path.value",
         "must not contain a '%' that does not start an escape"),
    Case("path-non-ascii", {"spec.match.path.value": "/caf\u00e9"}, "rejected", "spec.match.path.value",
         "must be printable ASCII"),
    Case("glob-dot-segment", {"spec.match.path": {"type": "Glob", "value": "/a/*/../**"}}, "rejected",
         "spec.match.path.value", "must not contain '.' or '..' segments or '//'"),
    # -- list types: a set or map refuses a duplicate, a CEL rule header names of two cases
    Case("retry-on-duplicate", {"spec.retry": {"retryOn": ["reset", "reset"]}}, "rejected",
         "spec.retry.retryOn[1]", "Duplicate value"),
    Case("method-twice", {"spec.match.methods": ["GET", "POST", "GET"]}, "rejected",
         "spec.match.methods[2]", "Duplicate value"),
    Case("host-twice", {"spec.match.hosts": ["a.example.com", "a.example.com"]}, "rejected",
         "spec.match.hosts[1]", "Duplicate value"),
    Case("header-match-twice", {"spec.match.headers": [{"name": "X-A", "value": "1"},
                                                       {"name": "X-A", "value": "2"}]},
         "rejected", "spec.match.headers[1]", "Duplicate value"),
    Case("header-match-two-cases", {"spec.match.headers": [{"name": "X-A", "value": "1"},
                                                           {"name": "x-a", "value": "2"}]},
         "rejected", "spec.match.headers", "header names must be unique (compared case-insensitively)"),
    Case("query-param-twice", {"spec.match.queryParams": [{"name": "v", "value": "1"},
                                                          {"name": "v", "value": "2"}]},
         "rejected", "spec.match.queryParams[1]", "Duplicate value"),
    Case("set-header-two-cases", {"spec.requestHeaders": {"set": [{"name": "X-A", "value": "1"},
                                                                 {"name": "X-a", "value": "2"}]}},
         "rejected", "spec.requestHeaders.set", "header names must be unique"),
    Case("remove-header-two-cases", {"spec.responseHeaders": {"remove": ["Server", "server"]}}, "rejected",
         "spec.responseHeaders.remove", "header names must be unique"),
    Case("cache-key-header-twice", {"spec.cache": {"keyHeaders": ["Accept", "Accept"]}}, "rejected",
         "spec.cache.keyHeaders[1]", "Duplicate value"),
    Case("cors-origin-twice", {"spec.cors": {"allowOrigins": ["https://a.example.com"] * 2}}, "rejected",
         "spec.cors.allowOrigins[1]", "Duplicate value"),
    Case("certificate-twice", {"spec.match.hosts": ["a.example.com"],
                               "spec.tls": {"certificateRefs": [{"name": "a"}, {"name": "a"}]}},
         "rejected", "spec.tls.certificateRefs", "each name must be unique"),
    # -- accepted by the API server, refused by the compiler (what a schema cannot say)
    Case("url-port-out-of-range", {"spec.backends.0": {"url": "http://example.com:70000"}}, "accepted",
         "spec.backends[0].url", "65535"),
    Case("regex-invalid", {"spec.match.headers": [{**_REGEX, "value": "(unclosed"}]}, "accepted",
         "spec.match.headers[0].value"),
    Case("regex-backreference", {"spec.match.queryParams": [{**_REGEX, "value": r"(a)\1"}]}, "accepted",
         "spec.match.queryParams[0].value"),
    Case("glob-double-star-inside", {"spec.match.path": {"type": "Glob", "value": "/a/**/b"}}, "accepted",
         "spec.match.path.value", "'**' is only allowed as the last segment"),
    Case("glob-partial-segment", {"spec.match.path": {"type": "Glob", "value": "/a/b*"}}, "accepted",
         "spec.match.path.value", "whole path segments"),
    Case("all-weights-zero", {"spec.backends.0.weight": 0}, "accepted", "spec.backends", "all weights are 0"),
    Case("duplicate-backends", {"spec.backends": [_SERVICE, _SERVICE]}, "accepted", "spec.backends[1]",
         "duplicates spec.backends[0]"),
    # 1,000 characters of 'é' are 2,000 bytes: CEL counts characters, RE2 (and the compiler) bytes.
    Case("regex-long-in-bytes", {"spec.match.headers": [{**_REGEX, "value": "é" * 1000}]}, "accepted",
         "spec.match.headers[0].value", "more than 1024"),
]  # fmt: skip


def _accepted_condition(body: dict[str, Any]) -> dict[str, Any]:
    condition: dict[str, Any] = {c["type"]: c for c in _compiled_status(body)["conditions"]}["Accepted"]
    return condition


def test_each_case_is_refused_by_the_compiler() -> None:
    """Offline: every case of the corpus is invalid for the compiler too (an ``accepted`` case naming the
    field the test expects), so that no case passes only because the API server is lenient or strict."""
    assert len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        body = case.body()
        if "spec" not in body:
            continue
        accepted = _accepted_condition(body)
        assert accepted["status"] == "False", f"{case.id}: the compiler accepts it"
        if case.outcome == "accepted":
            assert case.field in accepted["message"] and case.says in accepted["message"], accepted


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.outcome}-{case.id}")
def test_invalid_route(kube: controlplane.ControlPlane, case: Case) -> None:
    result = kube.kubectl("apply", "-f", "-", stdin=json.dumps(case.body()), check=False)
    if case.outcome == "rejected":
        assert result.returncode != 0, f"the API server accepted it: {result.stdout}"
        error = result.stderr
        assert case.field in error, f"the error does not name {case.field}:\n{error}"
        assert case.says in error, f"the error does not say {case.says!r}:\n{error}"
        return
    assert result.returncode == 0, f"the API server refused it:\n{result.stderr}"
    # What the operator compiles is the object as stored (defaults applied), not what was sent.
    accepted = _accepted_condition(_stored(kube, case.id))
    assert accepted["status"] == "False"
    assert case.field in accepted["message"] and case.says in accepted["message"], accepted["message"]


def _model_error(model: type[models.LeanModel], body: dict[str, Any]) -> str | None:
    """The message of the models' error for ``body`` (without pydantic's "Value error, "), or None."""
    try:
        model.model_validate(body)
    except pydantic.ValidationError as error:
        [detail] = error.errors()
        return str(detail["msg"]).removeprefix("Value error, ")
    return None


def _dry_run_errors(kube: controlplane.ControlPlane, bodies: list[dict[str, Any]]) -> dict[str, str]:
    """``kubectl apply --dry-run=server`` of ``bodies`` at once: each refused object's name → its error
    (kubectl goes on after a refusal and prints one error per object, naming it)."""
    result = kube.kubectl(
        "apply", "--dry-run=server", "-f", "-", stdin="\n---\n".join(map(json.dumps, bodies)), check=False
    )
    errors: dict[str, str] = {}
    for chunk in re.split(r"(?=^Error from server)", result.stderr, flags=re.MULTILINE):
        if found := re.search(rf'{models.KIND}\.{models.GROUP} "([^"]+)" is invalid', chunk):
            errors[found[1]] = chunk
    for body in bodies:
        name = body["metadata"]["name"]
        assert (name in errors) != (f"{name} created (server dry run)" in result.stdout), result
    return errors


def _refused_at(field: str, message: str, error: str) -> bool:
    """Whether ``error`` refuses ``field`` with ``message`` (a CEL rule's, at that node): the API server
    says ``<field>: Invalid value: <message>`` (older ones put ``"object": `` before the message)."""
    pattern = rf'{re.escape(field)}: Invalid value: ("object": )?{re.escape(message)}'
    return re.search(pattern, error) is not None


_BACKEND_FIELDS = {"service": "shop", "port": 8080, "url": "http://example.com"}
_BACKEND_MESSAGES = (
    "set either service (with port) or url, not both",
    "port is only used with service; put the port in the url",
    "a backend needs either service (with port) or url",
    "port is required with service",
)


def test_backend_target_rules_agree_with_the_models(kube: controlplane.ControlPlane) -> None:
    """Every combination of service, port and url: the API server refuses exactly what the models refuse,
    with the models' message alone (the CEL rules exclude each other as the validator's branches do)."""
    combos = [
        {k: v for k, v in _BACKEND_FIELDS.items() if k in keys}
        for n in range(len(_BACKEND_FIELDS) + 1)
        for keys in itertools.combinations(_BACKEND_FIELDS, n)
    ]
    bodies = [Case(f"target-{'-'.join(c) or 'none'}", {"spec.backends.0": c}, "rejected", "").body()
              for c in combos]  # fmt: skip
    errors = _dry_run_errors(kube, bodies)
    for combo, body in zip(combos, bodies, strict=True):
        expected = _model_error(models.BackendRef, combo)
        error = errors.get(body["metadata"]["name"])
        assert (error is None) == (expected is None), (combo, expected, error)
        if expected is not None and error is not None:
            assert _refused_at("spec.backends[0]", expected, error), (combo, error)
            assert [m for m in _BACKEND_MESSAGES if m in error] == [expected], (combo, error)


_HASH_KEYS = {"header": "X-A", "cookie": "a", "sourceIP": True, "queryParam": "q"}


def test_hash_on_rule_agrees_with_the_models(kube: controlplane.ControlPlane) -> None:
    """Every combination of hashOn's keys: refused by the API server exactly when the models refuse it."""
    combos = [
        {k: v for k, v in _HASH_KEYS.items() if k in keys}
        for n in range(len(_HASH_KEYS) + 1)
        for keys in itertools.combinations(_HASH_KEYS, n)
    ]
    bodies = [
        Case(f"hash-on-{'-'.join(c).lower() or 'none'}",
             {"spec.loadBalancer": {"type": "ConsistentHash", "hashOn": c}}, "rejected", "").body()
        for c in combos
    ]  # fmt: skip
    errors = _dry_run_errors(kube, bodies)
    for combo, body in zip(combos, bodies, strict=True):
        expected = _model_error(models.HashOnSpec, combo)
        error = errors.get(body["metadata"]["name"])
        assert (error is None) == (expected is None), (combo, expected, error)
        if expected is not None and error is not None:
            rule = "set exactly one of header, cookie, sourceIP, queryParam"
            assert expected.startswith(rule), expected
            assert _refused_at("spec.loadBalancer.hashOn", rule, error), (combo, error)


_PATHS = [
    "/", "/shop/", "/a/*/b/**", "/files/.../x", "/.well-known/x", "/caf%C3%A9", "/a%25b", "/~u", "/a..b",
    "/a b", "/a?x", "/a#x", "/caf\u00e9", "/a\tb",
    "shop", "//", "/a//b", "/.", "/..", "/a/.", "/a/..", "/./a", "/a/../b",
    "/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb", "/a\\b", "/a%2eb", "/%2E%2E/x",
    "/100%", "/a%2", "/a%zz", "/a%2g", "/a%%41",
]  # fmt: skip


@pytest.mark.parametrize("field", ["spec.match.path.value", "spec.rewrite.fullPath", "spec.redirect.path"])
def test_path_rules_agree_with_the_models(kube: controlplane.ControlPlane, field: str) -> None:
    """Each path, in a match, a rewrite and a redirect: the API server refuses exactly what the models
    refuse, and its error has the models' message (one of its CEL rules) at that field."""
    edits: dict[str, object] = {}
    if field.startswith("spec.redirect"):
        edits["spec.backends"] = _DELETE
    bodies = [
        Case(f"{field.split('.')[1].lower()}-{index}", {**edits, field: path}, "rejected", "").body()
        for index, path in enumerate(_PATHS)
    ]
    errors = _dry_run_errors(kube, bodies)
    for path, body in zip(_PATHS, bodies, strict=True):
        try:
            models.check_path(path)
            expected = None
        except ValueError as error:
            expected = str(error).removeprefix(f"path {path!r} ")
        error = errors.get(body["metadata"]["name"])
        assert (error is None) == (expected is None), (path, expected, error)
        if expected is not None and error is not None:
            # `<field>: Invalid value: "<the path, quoted>": <message>`, on one line
            said = rf"{re.escape(field)}: Invalid value: [^\n]*: {re.escape(expected)}"
            assert re.search(said, error), (path, expected, error)


def test_list_types_agree_with_the_models(kube: controlplane.ControlPlane) -> None:
    """A duplicate in every list that refuses one (exact, and header names of two cases): the API server
    refuses exactly what the models refuse."""
    lists: dict[str, tuple[object, object]] = {
        "spec.match.methods": ("GET", "POST"),
        "spec.match.hosts": ("a.example.com", "b.example.com"),
        "spec.match.headers": ({"name": "X-A", "value": "1"}, {"name": "X-B", "value": "1"}),
        "spec.match.queryParams": ({"name": "a", "value": "1"}, {"name": "b", "value": "1"}),
        "spec.retry.retryOn": ("reset", "503"),
        "spec.cors.allowHeaders": ("X-A", "X-B"),
        "spec.cors.exposeHeaders": ("X-A", "X-B"),
        "spec.cache.keyHeaders": ("X-A", "X-B"),
        "spec.requestHeaders.set": ({"name": "X-A", "value": "1"}, {"name": "X-B", "value": "1"}),
        "spec.requestHeaders.add": ({"name": "X-A", "value": "1"}, {"name": "X-B", "value": "1"}),
        "spec.responseHeaders.remove": ("X-A", "X-B"),
    }
    cases: list[tuple[str, list[object]]] = []
    for path, (one, other) in lists.items():
        upper = {**one, "name": one["name"].upper()} if isinstance(one, dict) else str(one).upper()
        lower = {**one, "name": one["name"].lower()} if isinstance(one, dict) else str(one).lower()
        for items in ([one, other], [one, one], [upper, lower]):
            cases.append((path, items))
    bodies = []
    for index, (path, items) in enumerate(cases):
        edits: dict[str, object] = {path: items}
        if path.startswith("spec.cors"):
            edits["spec.cors.allowOrigins"] = ["https://a.example.com"]
        bodies.append(Case(f"list-{index}", edits, "rejected", "").body())
    errors = _dry_run_errors(kube, bodies)
    for (path, items), body in zip(cases, bodies, strict=True):
        try:
            models.GatewayRouteSpec.model_validate(body["spec"])
            refused = False
        except pydantic.ValidationError:
            refused = True
        error = errors.get(body["metadata"]["name"])
        assert (error is not None) == refused, (path, items, error)
        if error is not None:
            assert path in error, (path, items, error)
