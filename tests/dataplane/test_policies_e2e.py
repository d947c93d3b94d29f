"""Traffic policies end to end: a real ``kubegate serve`` in front of upstreams that fail on command.

Aspects: retries (to another endpoint, on connect failure, on 5xx status, per-try timeout; never for POST
beyond a connect failure unless retryNonIdempotent); the circuit breaker failing fast with Retry-After and
without contacting the backend; outlier ejection taking a failing endpoint out of rotation; the bulkhead
refusing and queueing; consistent hashing keeping a key on one endpoint; policy state kept across a table
swap with an equal policy and reset by a changed one. Unit-level behaviour of each state machine is in
``tests/dataplane/policies``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway import GatewayProcess, free_port, route, table
from tests.upstreams import UpstreamServer, wait_for


def pooled(host: str, *ups: UpstreamServer | int, name: str = "pool", **policy: Any) -> dict[str, Any]:
    """A route for Host ``host`` with one backend whose endpoints are the given servers (or dead ports)."""
    endpoints = [{"host": "127.0.0.1", "port": u if isinstance(u, int) else u.port} for u in ups]
    return route(
        host.replace(".", "-"),
        match={"hosts": [host]},
        backends=[{"name": f"url:{name}", "endpoints": endpoints}],
        policy=policy or None,
    )


@pytest.fixture
def ups() -> Iterator[list[UpstreamServer]]:
    servers = [UpstreamServer(f"u{i}").start() for i in range(3)]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(tmp_path_factory.mktemp("gw"))
    yield proc
    proc.stop()


def push(gw: GatewayProcess, *routes: dict[str, Any], version: str = "t") -> None:
    r = gw.push(table(*routes, version=version))
    assert r.status_code == 200, r.text


def get(gw: GatewayProcess, host: str, path: str = "/x", **kw: Any) -> httpx.Response:
    return httpx.request(
        kw.pop("method", "GET"),
        gw.url + path,
        headers={"host": host, **kw.pop("headers", {})},
        timeout=10,
        **kw,
    )


RETRY = {
    "attempts": 2,
    "retryOn": ["connect-failure", "gateway-error", "reset"],
    "backoffBaseMs": 1,
    "backoffMaxMs": 5,
}


def test_connect_failure_is_retried_on_another_endpoint(
    gw: GatewayProcess, ups: list[UpstreamServer]
) -> None:
    push(gw, pooled("retry.test", free_port(), ups[0], retry=RETRY))
    answers = [get(gw, "retry.test") for _ in range(12)]
    assert [a.status_code for a in answers] == [200] * 12
    assert len(ups[0].requests) == 12


def test_without_retry_the_dead_endpoint_shows(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    """The control for the test above: same endpoints, no retry policy, so about half the requests fail."""
    push(gw, pooled("noretry.test", free_port(), ups[0], loadBalancer={"type": "RoundRobin"}))
    codes = [get(gw, "noretry.test").status_code for _ in range(12)]
    assert codes.count(502) == 6 and codes.count(200) == 6


def test_a_503_is_retried_on_the_other_endpoint(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    ups[0].forced_status = 503
    push(gw, pooled("status.test", ups[0], ups[1], retry=RETRY))
    answers = [get(gw, "status.test") for _ in range(10)]
    assert {(a.status_code, a.headers["x-backend"]) for a in answers} == {(200, "u1")}
    assert len(ups[1].requests) == 10 and 0 < len(ups[0].requests) <= 10
    retried = len(ups[0].requests)  # every try on u0 got 503 and was retried on u1
    assert metric(gw, "kubegate_retries_total", route="default/status-test", outcome="allowed") == retried
    assert metric(gw, "kubegate_upstream_attempts_total", route="default/status-test") == 10 + retried


def test_post_is_not_retried_after_a_response_unless_allowed(
    gw: GatewayProcess, ups: list[UpstreamServer]
) -> None:
    ups[0].forced_status = 503
    ups[1].forced_status = 503
    push(
        gw,
        pooled("post.test", ups[0], ups[1], retry=RETRY),
        pooled("post-ok.test", ups[0], ups[1], retry={**RETRY, "retryNonIdempotent": True}),
    )
    assert get(gw, "post.test", method="POST", content=b"x").status_code == 503
    assert len(ups[0].requests) + len(ups[1].requests) == 1
    assert get(gw, "post-ok.test", method="POST", content=b"x").status_code == 503
    assert len(ups[0].requests) + len(ups[1].requests) == 1 + 3  # the first try and two retries


def test_post_is_retried_after_a_connect_failure(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    push(gw, pooled("post-dead.test", free_port(), ups[0], retry=RETRY))
    answers = [get(gw, "post-dead.test", method="POST", content=b"body") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    assert [r[3] for r in ups[0].requests] == [4] * 6  # the body arrived every time


def test_per_try_timeout_moves_on_to_the_next_endpoint(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    ups[0].hold.clear()  # u0 answers only when released
    push(
        gw,
        pooled("slow.test", ups[0], ups[1], retry={**RETRY, "retryOn": ["timeout"], "perTryTimeoutMs": 200}),
    )
    try:
        answers = [get(gw, "slow.test") for _ in range(4)]
        assert {(a.status_code, a.headers["x-backend"]) for a in answers} == {(200, "u1")}
        assert ups[0].held >= 1
    finally:
        ups[0].hold.set()


def test_breaker_opens_and_fails_fast(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    ups[0].forced_status = 500
    breaker = {"consecutiveFailures": 3, "minimumRequests": 100, "windowMs": 10000, "openMs": 60000}
    push(gw, pooled("breaker.test", ups[0], circuitBreaker=breaker))
    assert [get(gw, "breaker.test").status_code for _ in range(3)] == [500] * 3
    fast = get(gw, "breaker.test")
    assert fast.status_code == 503 and fast.json()["message"] == "circuit open"
    labels = {"route": "default/breaker-test", "backend": "url:pool"}
    assert metric(gw, "kubegate_circuit_breaker_state", **labels) == 2  # open
    assert (
        metric(gw, "kubegate_circuit_breaker_transitions_total", **labels, **{"from": "closed", "to": "open"})
        == 1
    )
    assert 50 <= int(fast.headers["retry-after"]) <= 60
    assert len(ups[0].requests) == 3  # the fast answer never reached the backend
    # /routes shows it live, beside the route's summary
    shown = httpx.get(gw.admin + "/routes", timeout=5).json()
    [summary] = [r for r in shown["routes"] if r["id"] == "default/breaker-test"]
    assert summary["policies"] == ["circuitBreaker"] and summary["edge"] == []
    [backend] = shown["policyState"]["default/breaker-test"]["backends"]
    assert backend["circuitBreaker"] == "open"
    # an equal policy in a new table keeps the open circuit; a changed one starts closed
    push(gw, pooled("breaker.test", ups[0], circuitBreaker=breaker), version="t-same")
    assert get(gw, "breaker.test").status_code == 503
    push(
        gw,
        pooled("breaker.test", ups[0], circuitBreaker={**breaker, "consecutiveFailures": 4}),
        version="t-new",
    )
    assert get(gw, "breaker.test").status_code == 500 and len(ups[0].requests) == 4


def test_outlier_detection_ejects_the_failing_endpoint(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    ups[0].forced_status = 500
    outlier = {"consecutiveFailures": 2, "ejectionMs": 60000, "maxEjectionPercent": 50}
    push(gw, pooled("outlier.test", ups[0], ups[1], outlierDetection=outlier))
    codes = [get(gw, "outlier.test").status_code for _ in range(20)]
    assert codes.count(500) == 2 and len(ups[0].requests) == 2  # ejected after its second failure
    assert len(ups[1].requests) == 18
    # /services/{name} shows it: the failing endpoint ejected (for about a minute), the other one in rotation
    [svc] = httpx.get(gw.admin + "/services/url:pool", timeout=5).json()["services"]
    eps = {e["address"]: e for e in svc["policyState"]["default/outlier-test"]["endpoints"]}
    bad, good = eps[f"127.0.0.1:{ups[0].port}"], eps[f"127.0.0.1:{ups[1].port}"]
    assert bad["ejected"] and 0 < bad["ejectedForSeconds"] <= 60 and bad["ejections"] == 1
    assert not good["ejected"] and good["healthy"] and good["inFlight"] == 0


def metric(gw: GatewayProcess, name: str, **labels: str) -> float | None:
    """One sample of ``/metrics`` (None when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in httpx.get(gw.admin + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_bulkhead_refuses_beyond_capacity(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    push(gw, pooled("bulk.test", ups[0], bulkhead={"maxConcurrent": 1, "maxQueue": 0}))
    ups[0].hold.clear()
    first: list[httpx.Response] = []
    t = threading.Thread(target=lambda: first.append(get(gw, "bulk.test")))
    t.start()
    try:
        wait_for(lambda: ups[0].held == 1)  # the first request holds the only slot
        refused = get(gw, "bulk.test")
        assert refused.status_code == 503 and refused.json()["message"] == "route at capacity"
        assert refused.headers["retry-after"] == "1"
        assert metric(gw, "kubegate_bulkhead_rejections_total", route="default/bulk-test") == 1
        assert metric(gw, "kubegate_bulkhead_in_flight", route="default/bulk-test") == 1
    finally:
        ups[0].hold.set()
        t.join(15)
    assert [r.status_code for r in first] == [200]
    assert metric(gw, "kubegate_bulkhead_in_flight", route="default/bulk-test") == 0


def test_bulkhead_queues_and_hands_the_slot_over(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    push(
        gw,
        pooled("queue.test", ups[0], bulkhead={"maxConcurrent": 1, "maxQueue": 1, "queueTimeoutMs": 20000}),
    )
    ups[0].hold.clear()
    answers: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: answers.append(get(gw, "queue.test"))) for _ in range(2)]
    try:
        threads[0].start()
        wait_for(lambda: ups[0].held == 1)
        threads[1].start()
        wait_for(lambda: metric(gw, "kubegate_bulkhead_waiting", route="default/queue-test") == 1)
        refused = get(gw, "queue.test")  # the queue (1) is full too
        assert refused.status_code == 503
    finally:
        ups[0].hold.set()
        for t in threads:
            t.join(15)
    assert [r.status_code for r in answers] == [200, 200]
    assert metric(gw, "kubegate_bulkhead_queued_total", route="default/queue-test") == 1
    assert len(ups[0].requests) == 2


def test_bulkhead_queue_timeout(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    push(
        gw,
        pooled("qtimeout.test", ups[0], bulkhead={"maxConcurrent": 1, "maxQueue": 1, "queueTimeoutMs": 100}),
    )
    ups[0].hold.clear()
    first: list[httpx.Response] = []
    t = threading.Thread(target=lambda: first.append(get(gw, "qtimeout.test")))
    t.start()
    try:
        wait_for(lambda: ups[0].held == 1)
        late = get(gw, "qtimeout.test")  # waits for the queue timeout: the slot never frees
        assert late.status_code == 503 and late.json()["message"] == "route at capacity"
    finally:
        ups[0].hold.set()
        t.join(15)
    assert [r.status_code for r in first] == [200] and len(ups[0].requests) == 1


def test_health_checks_take_an_endpoint_out_and_back(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    ups[0].health_status = 503
    check = {
        "path": "/healthz",
        "intervalMs": 100,
        "timeoutMs": 100,
        "unhealthyThreshold": 2,
        "healthyThreshold": 1,
    }
    push(gw, pooled("health.test", ups[0], ups[1], healthCheck=check))
    labels = {"route": "default/health-test", "backend": "url:pool"}
    wait_for(lambda: metric(gw, "kubegate_unhealthy_endpoints", **labels) == 1)
    assert {get(gw, "health.test").headers["x-backend"] for _ in range(8)} == {"u1"}
    assert (metric(gw, "kubegate_health_checks_total", result="failed", **labels) or 0) >= 2
    ups[0].health_status = 200
    wait_for(lambda: metric(gw, "kubegate_unhealthy_endpoints", **labels) == 0)
    assert {get(gw, "health.test").headers["x-backend"] for _ in range(8)} == {"u0", "u1"}


def test_consistent_hash_keeps_a_key_on_one_endpoint(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    push(
        gw, pooled("hash.test", *ups, loadBalancer={"type": "ConsistentHash", "hashOn": {"header": "X-User"}})
    )
    seen: dict[str, set[str]] = {}
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        for _ in range(4):
            seen.setdefault(user, set()).add(
                get(gw, "hash.test", headers={"x-user": user}).headers["x-backend"]
            )
    assert all(len(backends) == 1 for backends in seen.values()), seen
    assert len(set().union(*seen.values())) >= 2  # keys spread over more than one endpoint


def test_plain_route_has_no_policy_state(gw: GatewayProcess, ups: list[UpstreamServer]) -> None:
    """A route without policies is served by the plain path: no policy series appear for it."""
    push(gw, pooled("plain.test", ups[0]), pooled("policy.test", ups[0], retry=RETRY))
    assert get(gw, "plain.test").status_code == 200 and get(gw, "policy.test").status_code == 200
    assert metric(gw, "kubegate_upstream_attempts_total", route="default/policy-test") == 1
    assert metric(gw, "kubegate_upstream_attempts_total", route="default/plain-test") is None


def test_access_log_names_the_attempts_and_the_endpoint_that_answered(
    tmp_path: Path, ups: list[UpstreamServer]
) -> None:
    import json

    proc = GatewayProcess(tmp_path, extra=["--access-log"])
    dead = free_port()
    try:
        push(proc, pooled("logged.test", dead, ups[0], retry=RETRY, loadBalancer={"type": "RoundRobin"}))
        for i in range(
            2
        ):  # round robin: each request starts on the dead endpoint (the retry moved the cursor)
            get(proc, "logged.test", headers={"x-request-id": f"logged-{i}"})
    finally:
        proc.stop()  # the held lines are written at shutdown
    entries = {
        e["requestId"]: e
        for e in (json.loads(x) for x in proc.log().splitlines() if x.startswith("{") and "logged-" in x)
        if e.get("logger") == "kubegate.access"
    }
    assert sorted((e["attempts"], e["upstream"], e["status"]) for e in entries.values()) == [
        (2, f"127.0.0.1:{ups[0].port}", 200),
        (2, f"127.0.0.1:{ups[0].port}", 200),
    ]
    assert all(e["bytes"] > 0 for e in entries.values())
