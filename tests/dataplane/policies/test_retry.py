"""Retries: what ``retryOn`` covers, idempotency, backoff bounds and spread, and the retry budget.

Aspects: the should_retry matrix (every failure kind against every retryOn word and literal codes), POST
and PATCH (and unknown methods) retried only after a connect failure unless retryNonIdempotent, backoff
never above min(max, base x 2^n) and covering that range with a fixed seed, the budget's minimum and
percentage, and a retry storm: with every endpoint failing, upstream attempts stay under
(1 + budgetPercent/100) x requests plus the minimum (and would not without the budget).
"""

from __future__ import annotations

import random
import statistics

import pytest

from kubegate.compiler.policy import RetryPolicy
from kubegate.dataplane.policies.retry import Retrier, RetryBudget, backoff, should_retry

ALL_WORDS = RetryPolicy(retry_on=("connect-failure", "reset", "timeout", "5xx"))


@pytest.mark.parametrize(
    ("retry_on", "failure", "status", "expected"),
    [
        (("connect-failure",), "connect-failure", None, True),
        (("reset",), "connect-failure", None, False),
        (("reset",), "reset", None, True),
        (("connect-failure",), "reset", None, False),
        (("timeout",), "timeout", None, True),
        (("reset", "gateway-error"), "timeout", None, False),
        (("gateway-error",), "status", 502, True),
        (("gateway-error",), "status", 503, True),
        (("gateway-error",), "status", 504, True),
        (("gateway-error",), "status", 500, False),
        (("5xx",), "status", 500, True),
        (("5xx",), "status", 599, True),
        (("5xx",), "status", 404, False),
        (("503",), "status", 503, True),
        (("503",), "status", 502, False),
        (("500", "connect-failure"), "status", 500, True),
        (("5xx",), "status", None, False),
        (("connect-failure", "reset", "timeout"), "status", 503, False),
    ],
)
def test_should_retry_matrix(
    retry_on: tuple[str, ...], failure: str, status: int | None, expected: bool
) -> None:
    config = RetryPolicy(retry_on=retry_on)
    assert should_retry(config, b"GET", failure, status) is expected
    assert Retrier(config).should_retry(b"PUT", failure, status) is expected  # idempotent too


@pytest.mark.parametrize("method", [b"POST", b"PATCH", b"CONNECT", b"LOCK", b"get"])
def test_non_idempotent_methods_only_after_connect_failure(method: bytes) -> None:
    assert should_retry(ALL_WORDS, method, "connect-failure", None)
    assert not should_retry(ALL_WORDS, method, "reset", None)
    assert not should_retry(ALL_WORDS, method, "timeout", None)
    assert not should_retry(ALL_WORDS, method, "status", 503)
    opted_in = ALL_WORDS.model_copy(update={"retry_non_idempotent": True})
    assert should_retry(opted_in, method, "reset", None)
    assert should_retry(opted_in, method, "status", 503)


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])
def test_idempotent_methods_on_every_listed_failure(method: bytes) -> None:
    for failure in ("connect-failure", "reset", "timeout"):
        assert should_retry(ALL_WORDS, method, failure, None)
    assert should_retry(ALL_WORDS, method, "status", 500)


def test_unknown_failure_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown failure"):
        should_retry(ALL_WORDS, b"GET", "refused", None)


def test_retrier_converts_milliseconds() -> None:
    r = Retrier(RetryPolicy(attempts=2, per_try_timeout_ms=2500, backoff_base_ms=25, backoff_max_ms=250))
    assert (r.attempts, r.per_try_timeout) == (2, 2.5)
    assert Retrier(RetryPolicy()).per_try_timeout is None


def test_backoff_stays_within_bounds_and_covers_them() -> None:
    config = RetryPolicy(backoff_base_ms=25, backoff_max_ms=250)
    rng = random.Random(7)
    for attempt in range(8):
        bound = min(0.25, 0.025 * 2**attempt)
        samples = [backoff(config, attempt, rng) for _ in range(2000)]
        assert all(0.0 <= s < bound for s in samples)
        assert max(samples) > 0.95 * bound and min(samples) < 0.05 * bound  # full jitter: from 0
        assert statistics.mean(samples) == pytest.approx(bound / 2, rel=0.06)
        quarter = sum(1 for s in samples if s < bound / 4)
        assert 400 < quarter < 600  # uniform: a quarter of the samples in the first quarter


def test_backoff_is_reproducible_from_the_seed() -> None:
    config = RetryPolicy(backoff_base_ms=10, backoff_max_ms=1000)
    a = [Retrier(config).backoff(n, rng) for rng in [random.Random(3)] for n in range(6)]
    b = [backoff(config, n, rng) for rng in [random.Random(3)] for n in range(6)]
    assert a == b
    assert a != [backoff(config, n, rng) for rng in [random.Random(4)] for n in range(6)]


def test_budget_minimum_of_concurrent_retries() -> None:
    budget = RetryBudget(RetryPolicy(budget_percent=20, min_concurrent_retries=3))
    budget.request_started()
    assert [budget.try_start_retry() for _ in range(4)] == [True, True, True, False]
    budget.retry_finished()
    assert budget.try_start_retry()
    assert (budget.allowed, budget.denied) == (4, 1)


def test_budget_percent_of_requests_on_their_first_try() -> None:
    budget = RetryBudget(RetryPolicy(budget_percent=20, min_concurrent_retries=3))
    for _ in range(100):
        budget.request_started()
    granted = 0
    while budget.try_start_retry():
        granted += 1
    # 16 retrying and 84 on their first try: 16 <= 20 % of 84; a 17th would be 17 > 20 % of 83.
    assert granted == 16
    assert repr(budget) == "<RetryBudget 16 retries / 100 requests in flight, allowed=16 denied=1>"
    for _ in range(16):  # the retrying requests end
        budget.retry_finished()
        budget.request_finished()
    granted = 0
    while budget.try_start_retry():
        granted += 1
    assert granted == 14  # 14 <= 20 % of 70; a 15th would be 15 > 20 % of 69


def _storm(config: RetryPolicy, arrivals: int, ticks: int, seed: int) -> tuple[int, int]:
    """Every upstream attempt fails and takes one tick; requests arrive ``arrivals`` per tick.

    Within a tick the failures of the attempts in flight and the new arrivals happen in a random order
    (seeded). A failed request retries while it has attempts left and the budget allows, else it ends.
    Returns (upstream attempts, requests).
    """
    rng = random.Random(seed)
    budget = RetryBudget(config)
    in_flight: list[tuple[int, bool]] = []  # (retries left, this attempt is a retry)
    attempts = requests = 0
    for _ in range(ticks):
        events: list[tuple[int, bool] | None] = [*in_flight, *([None] * arrivals)]
        rng.shuffle(events)
        in_flight = []
        for event in events:
            if event is None:
                budget.request_started()
                requests += 1
                attempts += 1
                in_flight.append((config.attempts, False))
                continue
            left, was_retry = event
            if was_retry:
                budget.retry_finished()
            if left > 0 and budget.try_start_retry():
                attempts += 1
                in_flight.append((left - 1, True))
            else:
                budget.request_finished()
    return attempts, requests


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_retry_storm_stays_within_the_budget(seed: int) -> None:
    config = RetryPolicy(attempts=3, budget_percent=20, min_concurrent_retries=3)
    attempts, requests = _storm(config, arrivals=50, ticks=200, seed=seed)
    assert requests == 10_000
    assert attempts <= 1.2 * requests + 3
    assert attempts > 1.1 * requests  # the budget is used, not just refused


def test_retry_storm_at_low_traffic_is_bounded_by_the_minimum() -> None:
    config = RetryPolicy(attempts=3, budget_percent=20, min_concurrent_retries=3)
    attempts, requests = _storm(config, arrivals=2, ticks=200, seed=1)
    assert attempts <= 1.2 * requests + 3 * 200  # at most 3 retries in flight at any tick


def test_retry_storm_without_a_budget_breaks_the_bound() -> None:
    # The control: what the storm test guards against. Every request takes all its retries.
    config = RetryPolicy(attempts=3, budget_percent=100, min_concurrent_retries=1_000_000)
    attempts, requests = _storm(config, arrivals=50, ticks=200, seed=1)
    assert attempts > 3.9 * requests
