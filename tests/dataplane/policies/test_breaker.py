"""The circuit breaker on an injected clock: closed -> open -> half-open -> closed or open again.

Aspects: opening on consecutive failures and on the failure ratio, ``minimumRequests`` respected, the
rolling window forgetting old failures, the open duration, half-open trial slots (all must succeed, one
failure reopens), Retry-After, counters reset on closing, transitions (dict and callback), ``epoch``
ignoring late results, ``abandon`` and lost trials not wedging the breaker.
"""

from __future__ import annotations

from kubegate.compiler.policy import CircuitBreakerPolicy
from kubegate.dataplane.policies.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def _breaker(**fields: float) -> CircuitBreaker:
    defaults: dict[str, float] = {
        "consecutive_failures": 100,
        "failure_ratio": 0.5,
        "minimum_requests": 10,
        "window_ms": 10_000,
        "open_ms": 30_000,
        "half_open_requests": 3,
    }
    defaults.update(fields)
    return CircuitBreaker(CircuitBreakerPolicy(**defaults))


def _feed(cb: CircuitBreaker, results: str, now: float) -> None:
    for r in results:
        assert cb.allow(now)
        cb.record(r == "s", now)


def test_opens_on_consecutive_failures_only_when_in_a_row() -> None:
    seen: list[tuple[int, int]] = []
    cb = _breaker(consecutive_failures=3)
    cb.on_transition = lambda old, new: seen.append((old, new))
    _feed(cb, "ffsff", 1.0)
    assert cb.state == CLOSED and cb.consecutive == 2
    assert repr(cb) == "<CircuitBreaker closed failures=4/5 consecutive=2>"
    _feed(cb, "f", 2.0)
    assert cb.state == OPEN and cb.state_name == "open"
    assert not cb.allow(2.0) and not cb.allow(31.9)
    assert seen == [(CLOSED, OPEN)] and cb.transitions == {(CLOSED, OPEN): 1}


def test_opens_on_failure_ratio_once_minimum_requests_finished() -> None:
    cb = _breaker(minimum_requests=10, failure_ratio=0.5)
    _feed(cb, "sssssffff", 1.0)  # 4/9 failed, and under the minimum anyway
    assert cb.state == CLOSED
    _feed(cb, "f", 1.0)  # 5/10: the ratio is reached with the minimum
    assert cb.state == OPEN

    strict = _breaker(minimum_requests=11, failure_ratio=0.5)
    _feed(strict, "sssssfffff", 1.0)  # the same 5/10, but 11 are needed
    assert strict.state == CLOSED
    _feed(strict, "f", 1.0)
    assert strict.state == OPEN


def test_ratio_is_compared_exactly_for_decimal_ratios() -> None:
    cb = _breaker(minimum_requests=10, failure_ratio=0.3)
    _feed(cb, "sssssssff", 1.0)
    assert cb.state == CLOSED
    _feed(cb, "f", 1.0)  # 3/10 == 0.3 (0.3 * 10 is 3.0000000000000004 in floats)
    assert cb.state == OPEN


def test_window_rolls_old_failures_off() -> None:
    # Window 10 s in 10 buckets of 1 s. Eight failures at t=0.5, then two more: within the window
    # they make 10/10 and open the breaker; 12 s later the first eight are gone and 2 < minimum.
    recent = _breaker()
    _feed(recent, "ffffffff", 0.5)
    _feed(recent, "ff", 9.5)
    assert recent.state == OPEN

    late = _breaker()
    _feed(late, "ffffffff", 0.5)
    _feed(late, "ff", 12.0)
    assert late.state == CLOSED and (late.failures, late.total) == (2, 2)


def test_window_drops_exactly_the_buckets_that_left_it() -> None:
    cb = _breaker(minimum_requests=1000)
    _feed(cb, "ffff", 0.5)  # bucket 0
    _feed(cb, "sss", 4.2)  # bucket 4
    _feed(cb, "s", 9.9)  # bucket 9: the window holds buckets 0..9
    assert (cb.failures, cb.total) == (4, 8)
    _feed(cb, "s", 10.1)  # bucket 10: bucket 0 leaves
    assert (cb.failures, cb.total) == (0, 5)
    _feed(cb, "s", 14.0)  # bucket 14: bucket 4 leaves
    assert (cb.failures, cb.total) == (0, 3)
    _feed(cb, "f", 3.0)  # a clock that went back counts into the newest bucket
    assert (cb.failures, cb.total) == (1, 4)


def test_half_open_trials_all_succeed_then_closed_with_fresh_counters() -> None:
    cb = _breaker(consecutive_failures=2, half_open_requests=3)
    _feed(cb, "ff", 100.0)
    assert cb.state == OPEN and cb.opened_at == 100.0
    assert not cb.allow(129.999)
    assert cb.allow(130.0) and cb.state == HALF_OPEN
    assert cb.allow(130.1) and cb.allow(130.2)
    assert not cb.allow(130.3)  # three trials in flight: the fourth waits
    assert cb.retry_after(130.3) == 1
    assert repr(cb) == "<CircuitBreaker half-open trials=3/3 ok=0>"
    cb.record(True, 130.5)
    cb.record(True, 130.6)
    assert cb.state == HALF_OPEN
    cb.record(True, 130.7)
    assert cb.state == CLOSED
    assert (cb.failures, cb.total, cb.consecutive) == (0, 0, 0)
    _feed(cb, "f", 131.0)  # the failures before opening were forgotten: one is not two in a row
    assert cb.state == CLOSED
    assert cb.transitions == {(CLOSED, OPEN): 1, (OPEN, HALF_OPEN): 1, (HALF_OPEN, CLOSED): 1}


def test_half_open_failure_opens_again() -> None:
    cb = _breaker(consecutive_failures=1, half_open_requests=2)
    _feed(cb, "f", 0.0)
    assert cb.allow(30.0) and cb.allow(30.0)
    cb.record(True, 30.5)
    cb.record(False, 31.0)
    assert cb.state == OPEN and cb.opened_at == 31.0
    assert not cb.allow(60.9) and cb.retry_after(60.9) == 1
    assert cb.allow(61.0) and cb.state == HALF_OPEN
    assert cb.transitions[(HALF_OPEN, OPEN)] == 1 and cb.transitions[(OPEN, HALF_OPEN)] == 2


def test_retry_after_counts_whole_seconds_until_half_open() -> None:
    cb = _breaker(consecutive_failures=1)
    assert cb.retry_after(0.0) == 0  # closed
    _feed(cb, "f", 100.0)
    assert cb.retry_after(100.0) == 30
    assert cb.retry_after(115.5) == 15
    assert cb.retry_after(129.2) == 1
    assert cb.retry_after(140.0) == 1  # overdue: half-opens at the next allow
    assert repr(cb) == "<CircuitBreaker open since=100 for=30s>"


def test_late_results_of_a_past_epoch_are_ignored() -> None:
    cb = _breaker(consecutive_failures=1, half_open_requests=1)
    assert cb.allow(0.0)
    slow = cb.epoch  # a request let through while closed ...
    _feed(cb, "f", 1.0)  # ... then the breaker opens ...
    assert cb.allow(31.0) and cb.state == HALF_OPEN  # ... and half-opens
    cb.record(False, 31.5, epoch=slow)  # the slow request fails: not a trial's result
    assert cb.state == HALF_OPEN
    cb.record(True, 32.0, epoch=cb.epoch)
    assert cb.state == CLOSED


def test_results_while_open_change_nothing() -> None:
    cb = _breaker(consecutive_failures=1)
    _feed(cb, "f", 0.0)
    cb.record(True, 1.0)
    cb.record(False, 2.0)
    assert cb.state == OPEN and cb.opened_at == 0.0


def test_abandoned_trial_gives_its_slot_back() -> None:
    cb = _breaker(consecutive_failures=1, half_open_requests=1)
    _feed(cb, "f", 0.0)
    assert cb.allow(30.0)
    assert not cb.allow(30.1)
    cb.abandon()  # e.g. the bulkhead refused it
    assert cb.allow(30.2)
    cb.record(True, 30.3)
    assert cb.state == CLOSED
    cb.abandon()  # closed: nothing to give back
    assert cb.state == CLOSED


def test_lost_trials_do_not_wedge_the_breaker() -> None:
    cb = _breaker(consecutive_failures=1, half_open_requests=2, open_ms=10_000)
    _feed(cb, "f", 0.0)
    assert cb.allow(10.0) and cb.allow(10.0)  # two trials that never report back
    assert not cb.allow(19.9)
    assert cb.allow(20.0)  # an open duration later, another trial goes
    cb.record(True, 20.1)
    cb.record(True, 20.2)
    assert cb.state == CLOSED
