"""Active health-check thresholds: runs of probe results flip ``EndpointState.healthy``.

Aspects: unhealthy after exactly ``unhealthyThreshold`` failures in a row and healthy after
``healthyThreshold`` successes in a row, an interrupted run starting over, the flip reported once,
the counters, and the per-backend container the prober uses (seconds, lookup by address).
"""

from __future__ import annotations

from kubegate.compiler.policy import HealthCheckPolicy
from kubegate.dataplane.policies.endpoints import EndpointSet, EndpointState
from kubegate.dataplane.policies.health import HealthCheck, HealthState

A, B = ("10.0.0.1", 80), ("10.0.0.2", 80)
CONFIG = HealthCheckPolicy(unhealthy_threshold=3, healthy_threshold=2, interval_ms=5000, timeout_ms=1500)


def test_thresholds_flip_health_once() -> None:
    ep = EndpointState(A)
    state = HealthState(CONFIG, ep)
    assert [state.observe(False) for _ in range(2)] == [False, False]
    assert ep.healthy and ep.available(0.0)
    assert state.observe(False) is True  # the third failure in a row
    assert not ep.healthy and not ep.available(0.0)
    assert state.observe(False) is False  # already unhealthy: no second flip
    assert state.observe(True) is False
    assert state.observe(True) is True  # the second success in a row
    assert ep.healthy
    assert (state.passed, state.failed) == (2, 4)
    assert repr(state) == "<HealthState 10.0.0.1:80 healthy successes=2 failures=0>"


def test_an_interrupted_run_starts_over() -> None:
    ep = EndpointState(A)
    state = HealthState(CONFIG, ep)
    for ok in (False, False, True, False, False):
        assert state.observe(ok) is False
    assert ep.healthy and state.failures == 2
    state.observe(False)
    assert not ep.healthy
    for ok in (True, False, True):
        assert state.observe(ok) is False
    assert not ep.healthy and state.successes == 1


def test_health_check_container_for_the_prober() -> None:
    eps = EndpointSet([A, B])
    check = HealthCheck(CONFIG, eps)
    assert (check.path, check.interval, check.timeout) == ("/healthz", 5.0, 1.5)
    assert [check.observe(B, False) for _ in range(3)] == [False, False, True]
    assert [ep.addr for ep in eps.available(0.0)] == [A]
    assert check.observe(("10.9.9.9", 1), False) is False  # no longer in the set
    assert repr(check) == "<HealthCheck GET /healthz every 5s: 1/2 unhealthy>"
