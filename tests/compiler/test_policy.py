"""Traffic policies from the GatewayRoute spec to the table: what golden files do not show.

Aspects: a route with every policy field survives compile → wire JSON → ``RouteTable`` validation
unchanged (hash included), and a route without policies has no ``policy`` at all; the compiler's defaults
are the table models' defaults; equal effective policies compile to equal table policies (the data plane
keeps runtime state across table swaps exactly when a route's policy is equal); a pushed table with an
invalid policy is refused; a memoised compile still equals a full one through policy edits.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from kubegate.compiler import compile as compiler
from kubegate.compiler import policy, resources, table

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)

FULL_POLICY: dict[str, Any] = {
    "loadBalancer": {"type": "ConsistentHash", "hashOn": {"cookie": "session"}},
    "retry": {
        "attempts": 3,
        "retryOn": ["reset", "503", "connect-failure", "timeout"],
        "perTryTimeout": "1500ms",
        "backoff": {"base": "10ms", "max": "2s"},
        "budgetPercent": 30,
        "retryNonIdempotent": True,
    },
    "circuitBreaker": {
        "consecutiveFailures": 8,
        "failureRatio": 0.75,
        "minimumRequests": 40,
        "window": "1m",
        "openDuration": "1m30s",
        "halfOpenRequests": 2,
    },
    "outlierDetection": {"consecutiveFailures": 4, "ejectionTime": "20s", "maxEjectionPercent": 25},
    "healthCheck": {
        "path": "/ready?deep=1",
        "interval": "3s",
        "timeout": "250ms",
        "unhealthyThreshold": 2,
        "healthyThreshold": 5,
    },
    "bulkhead": {"maxConcurrent": 64, "maxQueue": 16, "queueTimeout": "750ms"},
}


def _route(name: str, policies: dict[str, Any] | None = None, *, rv: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "kubegate.dev/v1alpha1",
        "kind": "GatewayRoute",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": str(rv),
                     "generation": rv},
        "spec": {
            "match": {"path": {"value": f"/{name}"}},
            "backends": [{"url": "http://127.0.0.1:9001"}, {"url": "http://127.0.0.1:9002", "weight": 2}],
            **(policies or {}),
        },
    }  # fmt: skip


def _compile(*routes: dict[str, Any], memo: compiler.CompileMemo | None = None) -> compiler.CompileResult:
    result = compiler.compile_bundle(resources.from_objects(copy.deepcopy(list(routes))), now=NOW, memo=memo)
    assert result.rejected() == []
    return result


def _policy_of(policies: dict[str, Any]) -> policy.RoutePolicy | None:
    (route,) = _compile(_route("r", policies)).table.routes
    return route.policy


def test_every_policy_field_round_trips_through_the_wire() -> None:
    compiled = _compile(_route("full", FULL_POLICY), _route("plain")).table
    wire = json.loads(json.dumps(compiled.to_wire()))  # what the operator pushes
    assert table.RouteTable.model_validate(wire) == compiled
    assert table.RouteTable.from_wire(wire) == compiled
    assert table.RouteTable.from_wire(wire).content_hash() == compiled.content_hash()
    # encode() is assembled from cached per-route encodings (models with caches set no longer compare equal)
    again = table.RouteTable.model_validate(json.loads(compiled.encode()))
    assert again.to_wire() == wire and again.content_hash() == compiled.content_hash()

    full, plain = compiled.routes
    assert plain.policy is None and "policy" not in wire["routes"][1]
    assert full.policy == policy.RoutePolicy(
        loadBalancer=policy.LoadBalancerPolicy(type="ConsistentHash", hashOn=policy.HashOn(cookie="session")),
        retry=policy.RetryPolicy(
            attempts=3,
            retryOn=("503", "connect-failure", "reset", "timeout"),
            perTryTimeoutMs=1500,
            backoffBaseMs=10,
            backoffMaxMs=2000,
            budgetPercent=30,
            retryNonIdempotent=True,
        ),
        circuitBreaker=policy.CircuitBreakerPolicy(
            consecutiveFailures=8,
            failureRatio=0.75,
            minimumRequests=40,
            windowMs=60_000,
            openMs=90_000,
            halfOpenRequests=2,
        ),
        outlierDetection=policy.OutlierDetectionPolicy(
            consecutiveFailures=4, ejectionMs=20_000, maxEjectionPercent=25
        ),
        healthCheck=policy.HealthCheckPolicy(
            path="/ready?deep=1", intervalMs=3000, timeoutMs=250, unhealthyThreshold=2, healthyThreshold=5
        ),
        bulkhead=policy.BulkheadPolicy(maxConcurrent=64, maxQueue=16, queueTimeoutMs=750),
    )


def test_compiler_defaults_are_the_table_models_defaults() -> None:
    """The defaults live in the API models (the CRD shows them) and in the table models (a hand-written
    table may leave them out): empty policies compile to exactly the table models' defaults."""
    empty: dict[str, Any] = {name: {} for name in FULL_POLICY}
    assert _policy_of(empty) == policy.RoutePolicy(
        loadBalancer=policy.LoadBalancerPolicy(),
        retry=policy.RetryPolicy(),
        circuitBreaker=policy.CircuitBreakerPolicy(),
        outlierDetection=policy.OutlierDetectionPolicy(),
        healthCheck=policy.HealthCheckPolicy(),
        bulkhead=policy.BulkheadPolicy(),
    )


@pytest.mark.parametrize(
    ("written", "same_as"),
    [
        ({"retry": {}}, {"retry": {"attempts": 0, "retryOn": ["gateway-error", "reset", "connect-failure"],
                                   "backoff": {"base": "25ms", "max": "250ms"}, "budgetPercent": 20}}),
        ({"retry": {"backoff": {"base": "1s"}}}, {"retry": {"backoff": {"base": "1000ms", "max": "10s"}}}),
        ({"healthCheck": {}}, {"healthCheck": {"interval": "5000ms", "timeout": "1s", "path": "/healthz"}}),
        ({"healthCheck": {"interval": "300ms"}}, {"healthCheck": {"interval": "300ms", "timeout": "300ms"}}),
        ({"circuitBreaker": {"failureRatio": 1}}, {"circuitBreaker": {"failureRatio": 1.0, "window": "10s"}}),
        ({"loadBalancer": {}}, {"loadBalancer": {"type": "RoundRobin"}}),
        ({"bulkhead": {"queueTimeout": "1m"}}, {"bulkhead": {"queueTimeout": "60s", "maxQueue": 0}}),
    ],
)  # fmt: skip
def test_equal_effective_policies_compile_equal(written: dict[str, Any], same_as: dict[str, Any]) -> None:
    assert _policy_of(written) == _policy_of(same_as)


def test_a_changed_policy_compiles_unequal() -> None:
    assert _policy_of({"retry": {"attempts": 1}}) != _policy_of({"retry": {"attempts": 2}})
    assert _policy_of({"bulkhead": {}}) != _policy_of({"bulkhead": {}, "retry": {}})
    assert _policy_of({}) is None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("loadBalancer", {"type": "RoundRobin", "hashOn": {"header": "X-User"}}),
        ("loadBalancer", {"type": "ConsistentHash"}),
        ("loadBalancer", {"type": "ConsistentHash", "hashOn": {"header": "X-User", "sourceIP": True}}),
        ("retry", {"retryOn": ["sometimes"]}),
        ("retry", {"backoffBaseMs": 100, "backoffMaxMs": 10}),
        ("circuitBreaker", {"failureRatio": 1.5}),
        ("circuitBreaker", {"windowMs": 10}),
        ("healthCheck", {"intervalMs": 1000, "timeoutMs": 2000}),
        ("bulkhead", {"maxConcurrent": 0}),
    ],
)
def test_a_pushed_table_with_an_invalid_policy_is_refused(path: str, value: dict[str, Any]) -> None:
    wire = _compile(_route("r", {"bulkhead": {}})).table.to_wire()
    routes: Any = wire["routes"]
    routes[0]["policy"] = {path: value}
    with pytest.raises(pydantic.ValidationError, match=path):
        table.RouteTable.from_wire(wire)


def test_memoised_compile_follows_policy_edits() -> None:
    objects = {"a": _route("a", FULL_POLICY), "b": _route("b", {"retry": {"attempts": 1}}), "c": _route("c")}
    memo = compiler.CompileMemo()
    first = _compile(*objects.values(), memo=memo)
    objects["b"] = _route("b", {"retry": {"attempts": 2}}, rv=2)  # a policy edit: a new generation
    objects["c"] = _route("c", {"bulkhead": {"maxConcurrent": 5}}, rv=2)  # a policy added
    second = _compile(*objects.values(), memo=memo)
    full = _compile(*objects.values())
    assert second.table.to_wire() == full.table.to_wire()
    assert second.table.content_hash() == full.table.content_hash()
    assert second.statuses == full.statuses
    a, b, c = second.table.routes
    assert a is first.table.routes[0]  # unchanged: the same compiled route, policy included
    assert b.policy is not None and b.policy.retry is not None and b.policy.retry.attempts == 2
    assert c.policy == policy.RoutePolicy(bulkhead=policy.BulkheadPolicy(maxConcurrent=5))
