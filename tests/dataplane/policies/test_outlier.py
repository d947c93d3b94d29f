"""Passive outlier detection on an injected clock: ejection, growing ejection times, the caps.

Aspects: ejection at exactly ``consecutiveFailures`` failures in a row, a success resetting the run,
failures during an ejection not counted, ejection time x the number of ejections up to 10x,
``maxEjectionPercent`` counting only endpoints still ejected, the counters.
"""

from __future__ import annotations

from kubegate.compiler.policy import OutlierDetectionPolicy
from kubegate.dataplane.policies.endpoints import EndpointSet, EndpointState
from kubegate.dataplane.policies.outlier import OutlierDetector

ADDRS = [(f"10.0.0.{i}", 80) for i in range(1, 5)]


def _detector(max_percent: int = 100, n: int = 4) -> tuple[OutlierDetector, list[EndpointState]]:
    eps = EndpointSet(ADDRS[:n])
    config = OutlierDetectionPolicy(
        consecutive_failures=3, ejection_ms=30_000, max_ejection_percent=max_percent
    )
    return OutlierDetector(config, eps), list(eps.endpoints)


def _fail(det: OutlierDetector, ep: EndpointState, times: int, now: float) -> list[bool]:
    return [det.record(ep, False, now) for _ in range(times)]


def test_ejects_at_the_threshold_until_the_ejection_time() -> None:
    det, (a, b, *_) = _detector()
    assert _fail(det, a, 3, 100.0) == [False, False, True]
    assert a.ejected_until == 130.0 and a.ejections == 1 and det.ejections == 1
    assert not a.available(129.9) and a.available(130.0)
    assert a.consecutive_failures == 0  # the ejection starts a new run
    assert b.available(100.0)


def test_a_success_resets_the_run() -> None:
    det, (a, *_) = _detector()
    for ok in (False, False, True, False, False):
        assert det.record(a, ok, 1.0) is False
    assert a.available(1.0) and a.consecutive_failures == 2


def test_failures_while_ejected_are_not_counted() -> None:
    det, (a, *_) = _detector()
    _fail(det, a, 3, 0.0)
    assert _fail(det, a, 5, 10.0) == [False] * 5  # requests sent before the ejection
    assert a.consecutive_failures == 0 and a.ejections == 1
    assert _fail(det, a, 3, 30.0) == [False, False, True]  # back, and failing again


def test_ejection_time_grows_with_each_ejection_up_to_ten_times() -> None:
    det, (a, *_) = _detector()
    now = 0.0
    lengths = []
    for _ in range(12):
        _fail(det, a, 3, now)
        lengths.append(a.ejected_until - now)
        now = a.ejected_until
    assert lengths == [30.0 * k for k in range(1, 11)] + [300.0, 300.0]
    assert a.ejections == 12 and det.ejections == 12


def test_never_more_than_max_ejection_percent() -> None:
    det, (a, b, c, _) = _detector(max_percent=50)
    assert _fail(det, a, 3, 0.0)[-1] and _fail(det, b, 3, 1.0)[-1]
    assert _fail(det, c, 3, 2.0) == [False, False, False]  # a third of four would be 75 %
    assert det.capped == 1 and c.available(2.0)
    assert det.record(c, False, 29.0) is False and det.capped == 2  # a is still out until 30
    assert det.record(c, False, 30.0) is True  # a is back: c may go
    assert c.ejected_until == 60.0
    assert repr(det) == "<OutlierDetector after 3 failures for 30s, max 50%: ejections=3 capped=2>"


def test_max_percent_rounds_down() -> None:
    det, (a, *_) = _detector(max_percent=50, n=1)
    assert _fail(det, a, 3, 0.0) == [False] * 3  # one of one is 100 %
    det0, (a0, *_) = _detector(max_percent=0)
    assert _fail(det0, a0, 6, 0.0) == [False] * 6 and det0.capped == 4
    det100, (only, *_) = _detector(max_percent=100, n=1)
    assert _fail(det100, only, 3, 0.0)[-1]


def test_the_multiplier_decays_by_one_per_ejection_time_back_in_rotation() -> None:
    det, (a, *_) = _detector()
    now = 0.0
    for _ in range(3):  # ejected for 30, 60, 90 s, failing again as soon as it is back
        _fail(det, a, 3, now)
        now = a.ejected_until
    assert a.ejections == 3 and now == 180.0
    det.record(a, True, now + 59.9)  # back for less than two ejection times: one forgotten
    assert a.ejections == 2
    det.record(a, True, now + 60.0)  # the second full period
    assert a.ejections == 1
    assert a.available(now + 60.0)  # the moved reference point stays in the past
    _fail(det, a, 3, now + 75.0)  # not a full period since: ejected for 2 x 30 s
    assert a.ejections == 2 and a.ejected_until == now + 75.0 + 60.0


def test_a_long_healthy_stretch_forgets_every_ejection() -> None:
    det, (a, *_) = _detector()
    now = 0.0
    for _ in range(5):
        _fail(det, a, 3, now)
        now = a.ejected_until
    assert a.ejections == 5
    _fail(det, a, 3, now + 86_400.0)  # a day later, failing: the shortest ejection again
    assert a.ejections == 1 and a.ejected_until == now + 86_400.0 + 30.0
