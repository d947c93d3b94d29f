"""The generated CRD: up to date on disk, structural, and agreeing with the models.

Aspects: the checked-in file equals a fresh generation; names (short name, category) and printer columns;
the schema is structural (every node typed, no $ref/title/nullable unions/additionalProperties/
uniqueItems, junctors only constrain); every list has a list type, and the models refuse the duplicates
a set or map refuses; every golden GatewayRoute the models accept is accepted by the schema; invalid
objects are rejected by both (with a list of the known, documented gaps, and of those refused by CEL
rules, which jsonschema does not evaluate; the list types it does not know are added to the validator
here); the path pattern and the path rules refuse the same paths (RE2 and Python ``re`` alike); CEL rules
name existing fields; compiler and operator statuses validate against the status schema, a condition's
message required.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import re2
import yaml

from kubegate.api import crd, models
from kubegate.compiler import compile as compiler
from kubegate.compiler import resources
from kubegate_operator import status as status_mod

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
_HEADER_NAMES = "header names must be unique (compared case-insensitively)"
SERVER_SIDE_CHECKS = {
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
    # header names of two cases: a set or map compares exactly, a CEL rule case-insensitively
    "default/header-name-twice": ("match.headers", _HEADER_NAMES),
    "shop/set-header-twice": ("requestHeaders.set", _HEADER_NAMES),
    "shop/allow-header-twice": ("cors.allowHeaders", _HEADER_NAMES),
    # an atomic list whose items must still differ
    "default/certificate-twice": ("tls.certificateRefs", "each name must be unique"),
}


def _list_type(
    validator: jsonschema.protocols.Validator, kind: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """What the API server does with ``x-kubernetes-list-type``: a set refuses a duplicate item, a map a
    duplicate key (jsonschema ignores the keyword)."""
    if kind == "atomic" or not validator.is_type(instance, "array"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", ())
    seen: list[object] = []
    for index, item in enumerate(instance):
        ident = tuple(item.get(key) for key in keys) if kind == "map" and isinstance(item, dict) else item
        if ident in seen:
            yield jsonschema.ValidationError(f"[{index}]: Duplicate value: {ident!r}")
        seen.append(ident)


_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"x-kubernetes-list-type": _list_type})


def schema_validator() -> jsonschema.protocols.Validator:
    """The CRD's schema as the API server reads it, CEL rules aside (list types included)."""
    return _Validator(crd.openapi_schema())


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
        "categories": ["kubegate"],
    }
    assert "conversion" not in spec  # one version: nothing to convert (see the module docstring of crd)
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Hosts", "Path", "Accepted", "Programmed", "ResolvedRefs", "Age"]
    assert columns["Hosts"]["jsonPath"] == ".spec.match.hosts"
    assert columns["Path"]["jsonPath"] == ".spec.match.path.value"
    assert columns["Accepted"]["jsonPath"] == '.status.conditions[?(@.type=="Accepted")].status'
    assert columns["Programmed"]["jsonPath"] == '.status.conditions[?(@.type=="Programmed")].status'
    assert columns["ResolvedRefs"]["jsonPath"] == '.status.conditions[?(@.type=="ResolvedRefs")].status'
    assert {name: c.get("priority", 0) for name, c in columns.items()} == {
        "Hosts": 0, "Path": 0, "Accepted": 0, "Programmed": 0, "ResolvedRefs": 1, "Age": 0
    }  # fmt: skip
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
        # paths in normal form only (the pattern; CEL rules give the messages)
        ("spec.match.path.value", "/api//users"),
        ("spec.match.path.value", "/api/../admin"),
        ("spec.match.path.value", "/api/."),
        ("spec.match.path.value", "/a/%2e%2e/admin"),
        ("spec.match.path.value", "/a%2Fb"),
        ("spec.match.path.value", "/a%5cb"),
        ("spec.match.path.value", "/a\\b"),
        ("spec.match.path.value", "/100%"),
        ("spec.match.path.value", "/caf\u00e9"),
        ("spec.match.path.value", "/a\tb"),
        # sets and maps (list types): no duplicate
        ("spec.match.methods", ["GET", "GET"]),
        ("spec.match.hosts", ["api.example.com", "api.example.com"]),
        ("spec.match.headers", [{"name": "X-Env", "value": "a"}, {"name": "X-Env", "value": "b"}]),
        ("spec.match.queryParams", [{"name": "v", "value": "1"}, {"name": "v", "value": "1"}]),
        ("spec.retry.retryOn", ["reset", "reset"]),
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


def test_a_condition_has_the_fields_of_metav1_condition() -> None:
    """type, status, reason, message and lastTransitionTime are required, as in metav1.Condition (message
    may be empty there; kubegate always writes one, see below)."""
    conditions = crd.openapi_schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    items = conditions["items"]
    assert set(items["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert items["properties"]["message"] == {
        "type": "string",
        "description": models.Condition.model_fields["message"].description,
        "maxLength": 32768,
    }
    now = datetime(2024, 6, 1, tzinfo=UTC)
    with pytest.raises(pydantic.ValidationError, match="message"):
        models.Condition.model_validate(
            {"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": now}
        )


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.glob("*.in.yaml")))
def test_compiler_and_operator_statuses_fit_the_status_schema(name: str) -> None:
    """Every status the compiler computes for the golden routes, and the operator's with Programmed,
    validates against the status schema, each condition with a message that says something."""
    bundle = resources.load_yaml((GOLDEN / name).read_text(encoding="utf-8"))
    now = datetime(2024, 6, 1, tzinfo=UTC)
    result = compiler.compile_bundle(bundle, now=now)
    validator = _Validator(crd.openapi_schema()["properties"]["status"])
    for status in result.statuses.values():
        wire = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        for acked, replicas in ((0, 0), (1, 2), (2, 2)):
            written = status_mod.desired_status(wire, acked=acked, replicas=replicas, previous=None, now=now)
            for body in (wire, written):
                assert list(validator.iter_errors(body)) == []
                assert all(condition["message"] for condition in body["conditions"]), body


def test_main_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.main([]) == 0
    assert capsys.readouterr().out == crd.render_crd()
    target = tmp_path / "out" / crd.CRD_FILENAME
    assert crd.main(["--write", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == crd.render_crd()


# --- list types ----------------------------------------------------------------------------------------

#: Every list of the schema and its list type: the decisions the README explains. ``set``/``map``: a
#: duplicate makes no sense (refused at apply time; server-side apply merges the items of several
#: managers); ``atomic``: order matters (weighted backends, certificates tried in order) and the list is
#: one value.
LIST_TYPES = {
    "spec.match.methods": "set",
    "spec.match.hosts": "set",
    "spec.match.headers": "map",  # by name: one value per header to compare, as Gateway API's HTTPRoute
    "spec.match.queryParams": "map",  # by name, as Gateway API's HTTPRoute
    "spec.backends": "atomic",  # weighted shares, no key (service+port or url): one owner's split
    "spec.retry.retryOn": "set",
    "spec.auth.jwt.algorithms": "set",
    "spec.auth.jwt.audiences": "set",
    "spec.auth.jwt.claimsToHeaders": "map",
    "spec.cache.keyHeaders": "set",
    "spec.cors.allowOrigins": "set",
    "spec.cors.allowMethods": "set",
    "spec.cors.allowHeaders": "set",
    "spec.cors.exposeHeaders": "set",
    "spec.requestHeaders.set": "map",
    "spec.requestHeaders.add": "map",
    "spec.requestHeaders.remove": "set",
    "spec.responseHeaders.set": "map",
    "spec.responseHeaders.add": "map",
    "spec.responseHeaders.remove": "set",
    "spec.tls.certificateRefs": "atomic",  # the first certificate that names the host wins: order matters
    "status.conditions": "map",
}
#: Lists of header names (compared case-insensitively), refused with two cases of a name by a CEL rule.
HEADER_NAME_LISTS = {
    "spec.match.headers",
    "spec.auth.jwt.claimsToHeaders",
    "spec.cache.keyHeaders",
    "spec.cors.allowHeaders",
    "spec.cors.exposeHeaders",
    "spec.requestHeaders.set",
    "spec.requestHeaders.add",
    "spec.requestHeaders.remove",
    "spec.responseHeaders.set",
    "spec.responseHeaders.add",
    "spec.responseHeaders.remove",
}


def _lists(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get("type") == "array":
        yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _lists(sub, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from _lists(node["items"], f"{path}[]")


def test_every_list_has_its_list_type() -> None:
    lists = dict(_lists(crd.openapi_schema(), ""))
    assert {path: node.get("x-kubernetes-list-type") for path, node in lists.items()} == LIST_TYPES
    for path, node in lists.items():
        items = node["items"]
        if node["x-kubernetes-list-type"] == "set":
            assert items["type"] in ("string", "integer", "number", "boolean"), path
        if node["x-kubernetes-list-type"] == "map":
            [key] = node["x-kubernetes-list-map-keys"]
            assert items["type"] == "object" and key in items["required"], path
        else:
            assert "x-kubernetes-list-map-keys" not in node, path
        rules = [rule["message"] for rule in node.get("x-kubernetes-validations", ())]
        assert ("header names must be unique (compared case-insensitively)" in rules) == (
            path in HEADER_NAME_LISTS
        ), path


def test_the_generator_refuses_a_list_without_a_list_type() -> None:
    class Untyped(pydantic.BaseModel):
        names: list[str]

    with pytest.raises(ValueError, match="x-kubernetes-list-type"):
        crd.structural_schema(Untyped)


_NOW = "2024-06-01T00:00:00Z"
#: A route holding every list with two different items (and a status with two conditions).
EVERY_LIST: dict[str, Any] = {
    "apiVersion": "kubegate.dev/v1alpha1",
    "kind": "GatewayRoute",
    "metadata": {"name": "lists", "namespace": "default"},
    "spec": {
        "match": {
            "methods": ["GET", "POST"],
            "hosts": ["a.example.com", "*.example.com"],
            "headers": [{"name": "X-A", "value": "1"}, {"name": "X-B", "value": "2"}],
            "queryParams": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}],
        },
        "backends": [{"url": "http://127.0.0.1:9001"}, {"url": "http://127.0.0.1:9002"}],
        "retry": {"retryOn": ["reset", "503"]},
        "auth": {
            "jwt": {
                "algorithms": ["RS256", "ES256"],
                "audiences": ["a", "b"],
                "jwksUri": "https://issuer.example.com/jwks.json",
                "claimsToHeaders": [
                    {"claim": "sub", "header": "X-User"},
                    {"claim": "sub", "header": "X-Sub"},
                ],
            }
        },
        "cache": {"keyHeaders": ["Accept", "Accept-Language"]},
        "cors": {
            "allowOrigins": ["https://a.example.com", "https://*.example.com"],
            "allowMethods": ["GET", "PUT"],
            "allowHeaders": ["X-A", "X-B"],
            "exposeHeaders": ["X-A", "X-B"],
        },
        "requestHeaders": {
            "set": [{"name": "X-A", "value": "1"}, {"name": "X-B", "value": "2"}],
            "add": [{"name": "X-C", "value": "1"}, {"name": "X-D", "value": "2"}],
            "remove": ["X-E", "X-F"],
        },
        "responseHeaders": {
            "set": [{"name": "X-A", "value": "1"}, {"name": "X-B", "value": "2"}],
            "add": [{"name": "X-C", "value": "1"}, {"name": "X-D", "value": "2"}],
            "remove": ["X-E", "X-F"],
        },
        "tls": {"certificateRefs": [{"name": "a"}, {"name": "b"}]},
    },
    "status": {
        "conditions": [
            {"type": t, "status": "True", "reason": t, "message": "m", "lastTransitionTime": _NOW}
            for t in ("Accepted", "Programmed")
        ]
    },
}


def _list_at(body: dict[str, Any], path: str) -> list[Any]:
    node: Any = body
    for name in path.split("."):
        node = node[name]
    assert isinstance(node, list)
    return node


def _models_refuse(body: dict[str, Any], path: str) -> str | None:
    """The models' error about the list at ``path``, or None when they accept the object."""
    section, _, rest = path.partition(".")
    model = models.GatewayRouteSpec if section == "spec" else models.GatewayRouteStatus
    try:
        model.model_validate(body[section])
    except pydantic.ValidationError as error:
        [detail] = error.errors()
        where = ".".join(str(part) for part in detail["loc"])
        assert where.startswith(f"{rest}.1"), f"{path}: the models' error is at {where}"
        return str(detail["msg"])
    return None


def _checked_lists() -> list[str]:
    """The lists whose items must differ: sets, maps, and atomic lists with a uniqueness rule."""
    return [
        path
        for path, node in _lists(crd.openapi_schema(), "")
        if node["x-kubernetes-list-type"] != "atomic" or node.get("x-kubernetes-validations")
    ]


def test_every_list_example_is_accepted() -> None:
    assert list(schema_validator().iter_errors(EVERY_LIST)) == []
    assert {path: _models_refuse(EVERY_LIST, path) for path in _checked_lists()} == dict.fromkeys(
        _checked_lists()
    )


@pytest.mark.parametrize("path", _checked_lists())
def test_a_duplicate_is_refused_by_the_list_type_and_the_models(path: str) -> None:
    """The second item made a duplicate of the first (for a map: its key): the API server refuses it (a
    set or map's own check; an atomic list's CEL rule), and so do the models, naming the second item."""
    body = copy.deepcopy(EVERY_LIST)
    items = _list_at(body, path)
    node = dict(_lists(crd.openapi_schema(), ""))[path]
    key = (node.get("x-kubernetes-list-map-keys") or [None])[0]
    if isinstance(items[0], dict):
        key = key or "name"
        items[1] = {**items[1], key: items[0][key]}
    else:
        items[1] = items[0]
    message = _models_refuse(body, path)
    assert message is not None and "is listed twice" in message, message
    errors = list(schema_validator().iter_errors(body))
    if node["x-kubernetes-list-type"] == "atomic":
        assert errors == []
        assert [rule["message"] for rule in node["x-kubernetes-validations"]] == [
            f"each {key} must be unique"
        ]
    else:
        assert [e.message for e in errors] == [
            f"[1]: Duplicate value: {(items[0][key],) if key else items[0]!r}"
        ]


@pytest.mark.parametrize("path", sorted(HEADER_NAME_LISTS))
def test_header_names_differing_in_case_are_refused_by_a_cel_rule_and_the_models(path: str) -> None:
    body = copy.deepcopy(EVERY_LIST)
    items = _list_at(body, path)
    if isinstance(items[0], dict):
        key = "header" if "header" in items[0] else "name"
        items[1] = {**items[1], key: items[0][key].lower()}
    else:
        items[1] = items[0].lower()
    message = _models_refuse(body, path)
    assert message is not None and "names are compared case-insensitively" in message, message
    assert list(schema_validator().iter_errors(body)) == []  # the API server's set or map: exact
    assert _HEADER_NAMES in _server_side_checks(dict(_lists(crd.openapi_schema(), ""))[path])


def test_query_parameter_names_of_two_cases_are_two_names() -> None:
    body = copy.deepcopy(EVERY_LIST)
    body["spec"]["match"]["queryParams"][1]["name"] = "A"
    assert _models_refuse(body, "spec.match.queryParams") is None
    assert list(schema_validator().iter_errors(body)) == []


# --- paths -------------------------------------------------------------------------------------------

_PRINTABLE = "must be printable ASCII without spaces, '?' or '#'"
_DOTS = "must not contain '.' or '..' segments or '//'"
_ENCODED = "must not contain a backslash, or an encoded dot, slash or backslash (%2E, %2F, %5C)"
_PERCENT = "must not contain a '%' that does not start an escape of two hex digits"
NORMAL_PATHS = [
    "/", "/api", "/api/", "/api/v1/users", "/api/*/users/**", "/files/.../x", "/.well-known/x", "/a.b",
    "/a..b", "/..a/", "/a./b", "/caf%C3%A9", "/caf%c3%a9", "/%41", "/a%20b", "/a%25b", "/~user", "/a:b@c",
    "/!$&'()*+,;=", '/"<>^`{|}',
]  # fmt: skip
PATHS_REFUSED = {
    "api": "must start with '/'",
    "": "must start with '/'",
    "/a b": _PRINTABLE,
    "/a\tb": _PRINTABLE,
    "/a?x=1": _PRINTABLE,
    "/a#top": _PRINTABLE,
    "/caf\u00e9": _PRINTABLE,
    "/a\x7fb": _PRINTABLE,
    "//": _DOTS,
    "/a//b": _DOTS,
    "/a/": None,  # (accepted: a trailing slash)
    "/.": _DOTS,
    "/..": _DOTS,
    "/./a": _DOTS,
    "/a/.": _DOTS,
    "/a/../b": _DOTS,
    "/a/..": _DOTS,
    "/a%2Fb": _ENCODED,
    "/a%2fb": _ENCODED,
    "/a%5Cb": _ENCODED,
    "/a%5cb": _ENCODED,
    "/a\\b": _ENCODED,
    "/a%2eb": _ENCODED,
    "/%2E%2E/admin": _ENCODED,
    "/100%": _PERCENT,
    "/a%2": _PERCENT,
    "/a%zz": _PERCENT,
    "/a%2g": _PERCENT,
    "/a%%41": _PERCENT,
}
_PATH_RE = re.compile(models.PATH_PATTERN)
_PATH_RE2 = re2.compile(models.PATH_PATTERN)


def _pattern_accepts(path: str) -> bool:
    """The CRD's pattern and minLength, in Python's ``re`` and in RE2 (what the API server runs): the two
    must agree."""
    python, google = _PATH_RE.fullmatch(path) is not None, _PATH_RE2.fullmatch(path) is not None
    assert python == google, path
    return python and path != ""


@pytest.mark.parametrize("path", NORMAL_PATHS)
def test_normal_paths_are_accepted(path: str) -> None:
    assert models.check_path(path) == path
    assert _pattern_accepts(path)
    assert models.PathMatchSpec(value=path).value == path


@pytest.mark.parametrize(("path", "message"), PATHS_REFUSED.items())
def test_paths_out_of_normal_form_are_refused(path: str, message: str | None) -> None:
    """The models give the first broken rule's message, the pattern refuses the path too."""
    if message is None:
        assert models.check_path(path) == path and _pattern_accepts(path)
        return
    with pytest.raises(ValueError, match=re.escape(f"path {path!r} {message}")):
        models.check_path(path)
    assert not _pattern_accepts(path)


def test_the_path_rules_and_the_pattern_refuse_the_same_paths() -> None:
    """Every path of up to five characters over an alphabet of the characters that matter: the rules
    (what the models check and the CEL rules say) refuse exactly what the pattern refuses."""
    count = 0
    for size in range(1, 6):
        for chars in itertools.product("/.a%2eF5c\\?", repeat=size):
            path = "".join(chars)
            rules = not any(rule.refuses(path) for rule in models.PATH_RULES)
            assert rules == _pattern_accepts(path), path
            count += 1
    assert count > 100_000


@pytest.mark.parametrize(
    "field", ["match.path.value", "rewrite.pathPrefix", "rewrite.fullPath", "redirect.path"]
)
def test_every_path_field_has_the_pattern_and_the_rules(field: str) -> None:
    node = _spec_node(field)
    assert node["pattern"] == models.PATH_PATTERN
    assert (node["minLength"], node["maxLength"]) == (1, 1024)
    assert node["x-kubernetes-validations"] == [
        {"rule": rule.rule, "message": rule.message} for rule in models.PATH_RULES
    ]


def test_the_path_column_always_has_a_value() -> None:
    """match and match.path default to {}, so the API server stores path {type: Prefix, value: /} for a
    route without one, and the Path column shows it (as Gateway API's HTTPRoute defaults its match)."""
    spec = crd.openapi_schema()["properties"]["spec"]
    match = spec["properties"]["match"]
    assert match["default"] == {}
    assert match["properties"]["path"]["default"] == {}
    path = match["properties"]["path"]["properties"]
    assert (path["type"]["default"], path["value"]["default"]) == ("Prefix", "/")
    assert models.GatewayRouteSpec.model_validate({"backends": [{"url": "http://a"}]}).match.path == (
        models.PathMatchSpec(type="Prefix", value="/")
    )
