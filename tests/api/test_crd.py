"""The generated CRD: up to date on disk, structural, and agreeing with the models.

Aspects: the checked-in file equals a fresh generation; the schema is structural (every node typed, no
$ref/title/nullable unions/additionalProperties/uniqueItems, junctors only constrain); every golden
GatewayRoute the models accept is accepted by the schema; invalid objects are rejected by both (with a
list of the known, documented gaps, and of those refused by CEL rules or list types, which jsonschema
does not evaluate); CEL rules name existing fields; compiler statuses validate against the status
schema.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import yaml

from kubegate.api import crd, models
from kubegate.compiler import compile as compiler
from kubegate.compiler import resources

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "compiler" / "golden"
CHECKED_IN = ROOT / "crds" / crd.CRD_FILENAME

# Golden routes the models reject but the API server schema accepts, and why that is acceptable.
KNOWN_SCHEMA_GAPS = {
    "default/unknown-spec-field": "unknown fields are pruned (or refused by strict field validation)",
    "default/unknown-match-field": "unknown fields are pruned (or refused by strict field validation)",
    "default/url-bad-port": "the url pattern checks the port's digits, not its range",
    "default/retry-unknown-field": "unknown fields are pruned (or refused by strict field validation)",
}

# Golden routes the API server refuses with what jsonschema does not evaluate: a CEL rule (by its message)
# or a list type, at a node of the spec's schema (dotted path). Each must be in the CRD, at that node.
_LB_RULE = "hashOn is required with type ConsistentHash and allowed only with it"
_HASH_ON_RULE = "set exactly one of header, cookie, sourceIP, queryParam"
_UNCHANGEABLE = "cannot be changed by a transform (hop-by-hop, framing, or set by the gateway)"
SERVER_SIDE_CHECKS = {
    "default/retry-on-duplicate": ("retry.retryOn", "x-kubernetes-list-type: set"),
    "default/retry-per-try-timeout-zero": ("retry.perTryTimeout", "must be at least 1ms"),
    "default/retry-backoff-max-below-base": ("retry.backoff", "max must be at least base"),
    "default/lb-consistent-hash-without-hash-on": ("loadBalancer", _LB_RULE),
    "default/lb-hash-on-with-round-robin": ("loadBalancer", _LB_RULE),
    "default/lb-hash-on-default-type": ("loadBalancer", _LB_RULE),
    "default/lb-hash-on-two-keys": ("loadBalancer.hashOn", _HASH_ON_RULE),
    "default/lb-hash-on-empty": ("loadBalancer.hashOn", _HASH_ON_RULE),
    "default/service-and-url": ("backends[]", "set either service (with port) or url, not both"),
    "default/url-with-port-field": ("backends[]", "port is only used with service; put the port in the url"),
    "default/neither-service-nor-url": ("backends[]", "a backend needs either service (with port) or url"),
    "default/service-without-port": ("backends[]", "port is required with service"),
    "default/tls-on-http": ("backends[]", "tls on a url backend needs an https:// url"),
    "default/ca-and-insecure": ("backends[].tls", "caSecretRef and insecureSkipVerify exclude each other"),
    "default/cb-window-too-short": ("circuitBreaker.window", "must be at least 100ms"),
    "default/outlier-ejection-time-zero": ("outlierDetection.ejectionTime", "must be at least 100ms"),
    "default/health-interval-too-short": ("healthCheck.interval", "must be at least 100ms"),
    "default/health-timeout-over-interval": ("healthCheck", "timeout must not be longer than interval"),
    "default/no-backends": ("", "a route needs at least one backend, or a redirect and no backends"),
    "default/no-hosts": ("", "a route with tls must list match.hosts"),
    "default/empty-backends": ("", "a route needs at least one backend, or a redirect and no backends"),
    "shop/credentials-with-any-origin": ("cors", "allowCredentials cannot be used with the origin '*'"),
    "shop/set-host": ("requestHeaders.set[].name", _UNCHANGEABLE),
    "shop/remove-content-length": ("responseHeaders.remove[]", _UNCHANGEABLE),
    "shop/rewrite-both": ("rewrite", "set exactly one of pathPrefix or fullPath"),
    "shop/rewrite-dot-segments": ("rewrite.fullPath", "must not contain '.' or '..' segments or '//'"),
    "shop/redirect-with-backends": ("", "a route needs at least one backend, or a redirect and no backends"),
    "default/hmac-from-a-uri": (
        "auth.jwt",
        "HS256/384/512 need a secret key: secretRef or jwksSecretRef, never jwksUri",
    ),
    "default/rsa-with-an-hmac-key": (
        "auth.jwt",
        "secretRef (an HMAC key) allows HS256, HS384 and HS512 only",
    ),
    "default/two-key-sources": ("auth.jwt", "set exactly one of jwksUri, jwksSecretRef or secretRef"),
    "default/api-key-header-and-query": ("auth.apiKey", "set exactly one of header or query"),
    "default/empty-auth": ("auth", "set jwt, apiKey or both"),
    "default/claim-to-host": ("auth.jwt.claimsToHeaders[].header", _UNCHANGEABLE),
    "shop/limit-header-without-key-header": (
        "rateLimit",
        "header is required with key Header, and only used with it",
    ),
}


def schema_validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(crd.openapi_schema())


def golden_routes() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(GOLDEN.glob("*.in.yaml")):
        bundle = resources.load_yaml(path.read_text(encoding="utf-8"), source=path.name)
        for raw in bundle.routes:
            yield raw.key, dict(raw.body)


def model_accepts(body: dict[str, Any]) -> bool:
    if set(body) - {"apiVersion", "kind", "metadata", "spec", "status"} or body.get("spec") is None:
        return False
    try:
        models.GatewayRouteSpec.model_validate(body["spec"])
    except pydantic.ValidationError:
        return False
    return True


def test_checked_in_crd_is_up_to_date() -> None:
    assert CHECKED_IN.exists(), f"{CHECKED_IN} is missing: run `python -m kubegate.api.crd --write`"
    assert CHECKED_IN.read_text(encoding="utf-8") == crd.render_crd(), (
        f"{CHECKED_IN.name} is stale (the models changed): run `python -m kubegate.api.crd --write`"
    )


def test_crd_shape() -> None:
    body = yaml.safe_load(crd.render_crd())
    assert body["metadata"]["name"] == "gatewayroutes.kubegate.dev"
    spec = body["spec"]
    assert spec["group"] == "kubegate.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "GatewayRoute",
        "listKind": "GatewayRouteList",
        "plural": "gatewayroutes",
        "singular": "gatewayroute",
        "shortNames": ["gwr"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Accepted"]["jsonPath"] == '.status.conditions[?(@.type=="Accepted")].status'
    assert columns["Programmed"]["jsonPath"] == '.status.conditions[?(@.type=="Programmed")].status'
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    root = version["schema"]["openAPIV3Schema"]
    assert root["properties"]["metadata"] == {"type": "object"}
    conditions = root["properties"]["status"]["properties"]["conditions"]
    assert conditions["type"] == "array"
    assert conditions["items"]["type"] == "object"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


FORBIDDEN_KEYS = {"$ref", "$defs", "title", "additionalProperties", "uniqueItems", "nullable", "const"}
JUNCTORS = ("oneOf", "anyOf", "allOf", "not")


def _walk(node: dict[str, Any], path: str, *, in_junctor: bool = False) -> Iterator[str]:
    """Yield a description of every structural-schema violation under ``node``."""
    for key in FORBIDDEN_KEYS & set(node):
        yield f"{path}: has {key}"
    if in_junctor:
        for key in {"type", "description", "default", "items", "properties"} & set(node):
            yield f"{path}: {key} inside a logical junctor"
    elif "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        yield f"{path}: no type"  # (a field of any shape, as cache.keyQueryParams, says so instead)
    if node.get("default", 0) is None:
        yield f"{path}: default null"
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}", in_junctor=in_junctor)
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]", in_junctor=in_junctor)
    if "not" in node:
        yield from _walk(node["not"], f"{path}.not", in_junctor=True)
    for junctor in JUNCTORS[:3]:
        for i, sub in enumerate(node.get(junctor, ())):
            yield from _walk(sub, f"{path}.{junctor}[{i}]", in_junctor=True)
    if node.get("type") == "object" and "properties" in node:
        for name in node.get("required", ()):
            assert name in node["properties"], f"{path}: required {name} is not a property"


def test_schema_is_structural() -> None:
    schema = crd.openapi_schema()
    jsonschema.Draft4Validator.check_schema(schema)
    assert list(_walk(schema, "openAPIV3Schema")) == []


def test_every_field_is_documented() -> None:
    def undocumented(node: dict[str, Any], path: str) -> Iterator[str]:
        for name, sub in node.get("properties", {}).items():
            if name != "metadata" and not sub.get("description"):
                yield f"{path}.{name}"
            yield from undocumented(sub, f"{path}.{name}")
        if "items" in node:
            yield from undocumented(node["items"], f"{path}[]")

    assert list(undocumented(crd.openapi_schema(), "")) == []


@pytest.mark.parametrize(
    ("key", "body"), list(golden_routes()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_golden_routes_schema_agrees_with_models(key: str, body: dict[str, Any]) -> None:
    errors = [e.message for e in schema_validator().iter_errors(body)]
    if model_accepts(body):
        assert errors == [], f"{key}: the models accept it but the CRD schema rejects it"
    elif key in KNOWN_SCHEMA_GAPS:
        assert errors == [], f"{key} is now rejected by the schema: remove it from KNOWN_SCHEMA_GAPS"
    elif key in SERVER_SIDE_CHECKS:
        assert errors == [], f"{key} is now rejected by the schema: remove it from SERVER_SIDE_CHECKS"
        path, check = SERVER_SIDE_CHECKS[key]
        assert check in _server_side_checks(_spec_node(path)), f"{key}: no {check!r} at spec.{path}"
    else:
        assert errors, f"{key}: the models reject it but the CRD schema accepts it"


def _spec_node(path: str) -> dict[str, Any]:
    node: dict[str, Any] = crd.openapi_schema()["properties"]["spec"]
    for name in path.split(".") if path else ():  # "name[]": the items of the list at name
        node = node["properties"][name.removesuffix("[]")]
        if name.endswith("[]"):
            node = node["items"]
    return node


def _server_side_checks(node: dict[str, Any]) -> list[str]:
    checks = [rule["message"] for rule in node.get("x-kubernetes-validations", ())]
    if "x-kubernetes-list-type" in node:
        checks.append(f"x-kubernetes-list-type: {node['x-kubernetes-list-type']}")
    return checks


def _cel_rules(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    for rule in node.get("x-kubernetes-validations", ()):
        yield path, node, rule
    for name, sub in node.get("properties", {}).items():
        yield from _cel_rules(sub, f"{path}.{name}")
    if "items" in node:
        yield from _cel_rules(node["items"], f"{path}[]")


def test_cel_rules_name_existing_fields_and_have_messages() -> None:
    """No CEL evaluator here: at least every ``self.<field>`` of a rule is a property of its node, the
    parentheses balance, and each rule has a message (what ``kubectl apply`` prints)."""
    rules = list(_cel_rules(crd.openapi_schema(), "openAPIV3Schema"))
    assert len(rules) >= 10
    for path, node, rule in rules:
        assert set(rule) == {"rule", "message"} and rule["message"], path
        text = rule["rule"]
        assert text.count("(") == text.count(")"), f"{path}: {text}"
        fields = re.findall(r"\bself\.(\w+)\b(?!\s*\()", text)  # self.name(...) is a method call
        for name in fields:
            assert name in node.get("properties", {}), f"{path}: {text} names {name}, not a property"
        if node.get("type") == "string":
            assert not fields, f"{path}: {text}"


VALID = {
    "apiVersion": "kubegate.dev/v1alpha1",
    "kind": "GatewayRoute",
    "metadata": {"name": "users", "namespace": "default"},
    "spec": {
        "match": {
            "path": {"type": "Prefix", "value": "/api/v1/users"},
            "methods": ["GET", "POST"],
            "hosts": ["api.example.com", "*.example.com"],
            "headers": [{"name": "X-Env", "value": "canary"}],
            "queryParams": [{"name": "v", "value": "2", "type": "RegularExpression"}],
        },
        "backends": [
            {"service": "user-service", "port": 8080, "weight": 3},
            {"url": "http://127.0.0.1:9001", "weight": 1},
        ],
        "timeout": "30s",
        "loadBalancer": {"type": "ConsistentHash", "hashOn": {"header": "X-User-Id"}},
        "retry": {
            "attempts": 2,
            "retryOn": ["connect-failure", "reset", "gateway-error", "503"],
            "perTryTimeout": "2s",
            "backoff": {"base": "25ms", "max": "250ms"},
            "budgetPercent": 20,
            "retryNonIdempotent": False,
        },
        "circuitBreaker": {
            "consecutiveFailures": 5,
            "failureRatio": 0.5,
            "minimumRequests": 20,
            "window": "10s",
            "openDuration": "30s",
            "halfOpenRequests": 3,
        },
        "outlierDetection": {"consecutiveFailures": 5, "ejectionTime": "30s", "maxEjectionPercent": 50},
        "healthCheck": {
            "path": "/healthz",
            "interval": "5s",
            "timeout": "1s",
            "unhealthyThreshold": 3,
            "healthyThreshold": 2,
        },
        "bulkhead": {"maxConcurrent": 100, "maxQueue": 0, "queueTimeout": "1s"},
    },
}


def _with(path: str, value: object) -> dict[str, Any]:
    """A copy of VALID with the field at dotted ``path`` (list indexes as numbers) set to ``value``."""
    body = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return body


_DELETE = object()


def test_valid_example_is_accepted() -> None:
    assert model_accepts(VALID)
    assert list(schema_validator().iter_errors(VALID)) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec", _DELETE),
        ("spec.backends.0.port", 65536),
        ("spec.backends.0.port", "8080"),
        ("spec.backends.0.weight", -1),
        ("spec.backends.0.service", "User_Service"),
        ("spec.backends.1", {"url": "ftp://example.com"}),
        ("spec.backends.1", {"url": "http://example.com/path"}),
        ("spec.backends.1", {"url": "http://user@example.com"}),
        ("spec.match.path.type", "Regex"),
        ("spec.match.path.value", "api"),
        ("spec.match.methods", ["get"]),
        ("spec.match.hosts", ["API.example.com"]),
        ("spec.match.hosts", ["api.*.com"]),
        ("spec.match.headers", [{"name": "X Env", "value": "a"}]),
        ("spec.match.headers", [{"name": "X-Env"}]),
        ("spec.match.queryParams", [{"name": "v", "value": 2}]),
        ("spec.timeout", "1.5s"),
        ("spec.timeout", "30"),
        ("spec.loadBalancer.type", "LeastConnections"),
        ("spec.loadBalancer.hashOn", {"sourceIP": False}),
        ("spec.loadBalancer.hashOn", {"cookie": "a b"}),
        ("spec.retry.attempts", 11),
        ("spec.retry.retryOn", ["sometimes"]),
        ("spec.retry.retryOn", ["200"]),
        ("spec.retry.retryOn", []),
        ("spec.retry.perTryTimeout", "2"),
        ("spec.retry.backoff.base", "-1ms"),
        ("spec.retry.budgetPercent", 101),
        ("spec.retry.retryNonIdempotent", "false"),
        ("spec.circuitBreaker.failureRatio", 1.5),
        ("spec.circuitBreaker.failureRatio", 0),
        ("spec.circuitBreaker.failureRatio", "0.5"),
        ("spec.circuitBreaker.consecutiveFailures", 0),
        ("spec.circuitBreaker.halfOpenRequests", 1001),
        ("spec.circuitBreaker.window", "10"),
        ("spec.outlierDetection.maxEjectionPercent", 101),
        ("spec.healthCheck.path", "healthz"),
        ("spec.healthCheck.healthyThreshold", 0),
        ("spec.bulkhead.maxConcurrent", 0),
        ("spec.bulkhead.maxQueue", -1),
    ],
)
def test_invalid_objects_are_rejected_by_schema_and_models(path: str, value: object) -> None:
    body = _with(path, value)
    assert list(schema_validator().iter_errors(body)), "the CRD schema accepts it"
    assert not model_accepts(body), "the models accept it"


_NOT_BOTH = "set either service (with port) or url, not both"
_PORT_WITH_URL = "port is only used with service; put the port in the url"
_NO_TARGET = "a backend needs either service (with port) or url"
_NO_PORT = "port is required with service"


@pytest.mark.parametrize(
    ("path", "value", "node", "message"),
    [
        ("spec.backends.0.port", _DELETE, "backends[]", _NO_PORT),
        ("spec.backends.1", {"service": "x"}, "backends[]", _NO_PORT),
        ("spec.backends.1", {"url": "http://example.com", "port": 80}, "backends[]", _PORT_WITH_URL),
        ("spec.backends.1", {"url": "http://example.com", "service": "x"}, "backends[]", _NOT_BOTH),
        ("spec.backends.1", {"url": "http://example.com", "service": "x", "port": 80}, "backends[]",
         _NOT_BOTH),
        ("spec.backends.1", {"weight": 1}, "backends[]", _NO_TARGET),
        ("spec.backends.1", {"port": 80}, "backends[]", _NO_TARGET),
        ("spec.loadBalancer.hashOn", {}, "loadBalancer.hashOn", _HASH_ON_RULE),
        ("spec.loadBalancer.hashOn", {"header": "X-User-Id", "sourceIP": True}, "loadBalancer.hashOn",
         _HASH_ON_RULE),
        ("spec.loadBalancer.hashOn", {"cookie": "a", "queryParam": "b"}, "loadBalancer.hashOn",
         _HASH_ON_RULE),
    ],
)  # fmt: skip
def test_cross_field_rules_are_cel_rules_with_the_models_messages(
    path: str, value: object, node: str, message: str
) -> None:
    """BackendRef's target and hashOn's key: no oneOf/not (the API server would name only the object, with
    a generic message), but a CEL rule at the node whose message is the models' (their error is at that
    node too). jsonschema does not evaluate CEL; tests/kube/test_crd_real.py checks the real API server."""
    body = _with(path, value)
    assert list(schema_validator().iter_errors(body)) == []
    with pytest.raises(pydantic.ValidationError) as raised:
        models.GatewayRouteSpec.model_validate(body["spec"])
    [error] = raised.value.errors()
    assert error["msg"].removeprefix("Value error, ").startswith(message), error
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    assert re.sub(r"\[\d+\]", "[]", where).removeprefix(".") == node, f"the models' error is at {where}"
    assert message in _server_side_checks(_spec_node(node)), f"no {message!r} at spec.{node}"


def test_compiler_statuses_fit_the_status_schema() -> None:
    bundle = resources.load_yaml((GOLDEN / "conflict.in.yaml").read_text(encoding="utf-8"))
    result = compiler.compile_bundle(bundle, now=datetime(2024, 6, 1, tzinfo=UTC))
    status_schema = crd.openapi_schema()["properties"]["status"]
    for status in result.statuses.values():
        wire = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        assert list(jsonschema.Draft4Validator(status_schema).iter_errors(wire)) == []


def test_main_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.main([]) == 0
    assert capsys.readouterr().out == crd.render_crd()
    target = tmp_path / "out" / crd.CRD_FILENAME
    assert crd.main(["--write", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == crd.render_crd()
