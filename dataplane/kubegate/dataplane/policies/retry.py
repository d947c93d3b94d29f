"""Retries: which failures may be retried, how long to wait first, and a budget against retry storms.

What the proxy asks, in order, when an attempt fails (before any byte of the response went to the client,
and with a replayable body; both are the proxy's to know):

1. :meth:`Retrier.should_retry` (or :func:`should_retry`): does ``retryOn`` cover this failure?
   ``failure`` is ``"connect-failure"`` (nothing reached the upstream), ``"reset"`` (the connection broke
   before a response head), ``"timeout"`` (the per-try timeout) or ``"status"`` (a response head with
   ``status``; ``gateway-error`` covers 502, 503 and 504, ``5xx`` all of them, ``"503"`` itself). A method
   that is not idempotent (POST, PATCH, CONNECT, and any method RFC 9110 does not call idempotent) is
   retried only after a connect failure, unless ``retryNonIdempotent`` is set.
2. ``attempts`` left?
3. :meth:`RetryBudget.try_start_retry`: retries in flight stay at most ``budgetPercent`` % of the route's
   requests that are on their first try, or at most ``minConcurrentRetries``, whichever allows more.
   Measuring against first tries (rather than all requests, as Envoy does) is what bounds the load when
   every endpoint fails: per unit of time, upstream attempts <= (1 + budgetPercent/100) x requests, plus
   the minimum. The retry holds its budget slot from this call until :meth:`RetryBudget.retry_finished`
   (after the backoff and the retried attempt).
4. :meth:`Retrier.backoff`: sleep a random time in [0, min(max, base x 2^n)) before retry n (n = 0 for
   the first retry): exponential with *full jitter*, which spreads the retries of many clients that
   failed at once instead of sending them back together.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Final

from kubegate.compiler.policy import RetryPolicy

#: The methods RFC 9110 (section 9.2.2) calls idempotent; every other one counts as not idempotent.
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
FAILURES: Final = ("connect-failure", "reset", "timeout", "status")


class RetryBudget:
    """Concurrent retries of one route, against its requests in flight (see the module docstring)."""

    __slots__ = ("_fraction", "allowed", "denied", "min_concurrent", "requests", "retries")

    def __init__(self, config: RetryPolicy) -> None:
        self._fraction = config.budget_percent / 100
        self.min_concurrent = config.min_concurrent_retries
        self.requests = 0  # requests in flight, retrying or not
        self.retries = 0  # retries in flight
        self.allowed = 0
        self.denied = 0

    def request_started(self) -> None:
        self.requests += 1

    def request_finished(self) -> None:
        if self.requests > 0:
            self.requests -= 1

    def try_start_retry(self) -> bool:
        """Take a retry slot if the budget allows one (counted in ``allowed`` or ``denied``)."""
        retries = self.retries
        # After this one starts: retries + 1 in flight, requests - retries - 1 of them on their first try.
        if retries < self.min_concurrent or retries + 1 <= self._fraction * (self.requests - retries - 1):
            self.retries = retries + 1
            self.allowed += 1
            return True
        self.denied += 1
        return False

    def retry_finished(self) -> None:
        if self.retries > 0:
            self.retries -= 1

    def __repr__(self) -> str:
        return (
            f"<RetryBudget {self.retries} retries / {self.requests} requests in flight, "
            f"allowed={self.allowed} denied={self.denied}>"
        )


class RetryRules:
    """``retryOn`` and ``retryNonIdempotent`` digested once: :meth:`should_retry` is a few comparisons."""

    __slots__ = ("_any_5xx", "_codes", "_connect", "_gateway", "_non_idempotent", "_reset", "_timeout")

    def __init__(self, config: RetryPolicy) -> None:
        words = set(config.retry_on)
        self._connect = "connect-failure" in words
        self._reset = "reset" in words
        self._timeout = "timeout" in words
        self._any_5xx = "5xx" in words
        self._gateway = "gateway-error" in words
        self._codes = frozenset(int(word) for word in words if word.isdigit())
        self._non_idempotent = config.retry_non_idempotent

    def should_retry(self, method: bytes, failure: str, status: int | None) -> bool:
        if failure == "connect-failure":
            return self._connect
        if not self._non_idempotent and method not in IDEMPOTENT_METHODS:
            return False
        if failure == "status":
            if status is None:
                return False
            return (
                status in self._codes
                or (self._any_5xx and 500 <= status <= 599)
                or (self._gateway and status in (502, 503, 504))
            )
        if failure == "reset":
            return self._reset
        if failure == "timeout":
            return self._timeout
        raise ValueError(f"unknown failure {failure!r}; one of {', '.join(FAILURES)}")


class Retrier:
    """A route's retry policy at run time: the rules, the budget, the backoff, the per-try timeout."""

    __slots__ = ("_base", "_cap", "attempts", "budget", "per_try_timeout", "rules")

    def __init__(self, config: RetryPolicy) -> None:
        self.attempts = config.attempts
        self.per_try_timeout = config.per_try_timeout_ms / 1000 if config.per_try_timeout_ms else None
        self._base = config.backoff_base_ms / 1000
        self._cap = config.backoff_max_ms / 1000
        self.rules = RetryRules(config)
        self.budget = RetryBudget(config)

    def should_retry(self, method: bytes, failure: str, status: int | None) -> bool:
        return self.rules.should_retry(method, failure, status)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``attempt`` (0 = the first retry)."""
        return _backoff(self._base, self._cap, attempt, rng)

    def __repr__(self) -> str:
        return f"<Retrier attempts={self.attempts} {self.budget!r}>"


def backoff(config: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds before retry ``attempt`` (0 = the first): uniform in [0, min(max, base x 2^attempt))."""
    return _backoff(config.backoff_base_ms / 1000, config.backoff_max_ms / 1000, attempt, rng)


def _backoff(base: float, cap: float, attempt: int, rng: random.Random) -> float:
    return min(cap, base * (1 << min(max(attempt, 0), 32))) * rng.random()


def should_retry(config: RetryPolicy, method: bytes, failure: str, status: int | None) -> bool:
    """May this failure of a request with ``method`` be retried under ``config``? (See the module.)"""
    return _rules(config).should_retry(method, failure, status)


@lru_cache(maxsize=256)
def _rules(config: RetryPolicy) -> RetryRules:
    return RetryRules(config)
