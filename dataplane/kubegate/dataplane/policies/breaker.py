"""A circuit breaker per route and backend: stop sending requests to a backend that keeps failing.

States: **closed** (requests pass; results are counted), **open** (requests fail fast with 503 and a
``Retry-After`` of :meth:`CircuitBreaker.retry_after` seconds, nothing reaches the upstream), **half-open**
(after ``openDuration``: up to ``halfOpenRequests`` trial requests pass; when that many have succeeded
the breaker closes with fresh counters, the first failure opens it again).

It opens on ``consecutiveFailures`` failures in a row, or when failures make up ``failureRatio`` of the
requests that finished in the rolling ``window``, counted only once at least ``minimumRequests`` did. The
window is 10 buckets of ``window / 10`` seconds (a ring of counters and two running sums): a record costs
O(1), and a failure drops out of the ratio between 0.9 and 1 window after it happened. What a *failure*
is (connect failure, reset, timeout, 5xx from the upstream; not the gateway's own 503) is the caller's
decision; this module only counts.

The proxy calls ``allow(now)`` before picking an endpoint and ``record(success, now)`` when the attempt
ends; a request that was allowed but never sent (a full bulkhead, a client gone) calls ``abandon()`` so
that a half-open trial slot is not lost. ``epoch`` changes on every transition: a caller that passes the
epoch it saw at ``allow`` time to ``record`` keeps a slow request of a past state from deciding the
current one. Transitions are counted in ``transitions`` and reported to ``on_transition(old, new)``.
The open → half-open transition happens in ``allow``: ``state`` stays OPEN until a request asks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from kubegate.compiler.policy import CircuitBreakerPolicy

CLOSED: Final = 0
HALF_OPEN: Final = 1
OPEN: Final = 2
STATE_NAMES: Final = ("closed", "half-open", "open")
#: Buckets of the rolling window.
BUCKETS: Final = 10


class CircuitBreaker:
    """See the module docstring. ``state`` is CLOSED, HALF_OPEN or OPEN (the metric gauge's values)."""

    __slots__ = (
        "_bucket_s",
        "_fails",
        "_head",
        "_max_consecutive",
        "_min_requests",
        "_ratio",
        "_totals",
        "_trial_ok",
        "_trials",
        "_trials_since",
        "consecutive",
        "epoch",
        "failures",
        "half_open_requests",
        "on_transition",
        "open_s",
        "opened_at",
        "state",
        "total",
        "transitions",
    )

    def __init__(
        self,
        config: CircuitBreakerPolicy,
        on_transition: Callable[[int, int], None] | None = None,
    ) -> None:
        self._max_consecutive = config.consecutive_failures
        self._ratio = config.failure_ratio
        self._min_requests = config.minimum_requests
        self._bucket_s = config.window_ms / 1000 / BUCKETS
        self.open_s = config.open_ms / 1000
        self.half_open_requests = config.half_open_requests
        self.on_transition = on_transition
        self.state = CLOSED
        self.epoch = 0
        self.opened_at = 0.0
        self.transitions: dict[tuple[int, int], int] = {}
        self._totals = [0] * BUCKETS
        self._fails = [0] * BUCKETS
        self._head = -BUCKETS  # number of the newest bucket (now // bucket width)
        self.total = 0  # requests finished in the window
        self.failures = 0  # ... of which failed
        self.consecutive = 0
        self._trials = 0  # half-open: trials let through ...
        self._trial_ok = 0  # ... and those that succeeded
        self._trials_since = 0.0  # ... and when the last one was let through

    def allow(self, now: float) -> bool:
        """May a request go to the backend now? (Half-open: takes one of the trial slots.)"""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            if now < self.opened_at + self.open_s:
                return False
            self._to(HALF_OPEN, now)
        if self._trials < self.half_open_requests:
            self._trials += 1
            self._trials_since = now
            return True
        if now - self._trials_since >= self.open_s:
            # The missing trials never reported back (and nobody called abandon): presume them lost
            # rather than keep the backend cut off for ever.
            self._trials = self._trial_ok + 1
            self._trials_since = now
            return True
        return False

    def record(self, success: bool, now: float, epoch: int | None = None) -> None:
        """The result of a request that ``allow`` let through (ignored when ``epoch`` is a past one)."""
        if epoch is not None and epoch != self.epoch:
            return
        state = self.state
        if state == CLOSED:
            head = self._head
            # the common case, a result within the newest bucket, without the call to _roll
            slot = head % BUCKETS if int(now // self._bucket_s) <= head else self._roll(now)
            self._totals[slot] += 1
            self.total += 1
            if success:
                self.consecutive = 0
                return
            self._fails[slot] += 1
            self.failures += 1
            self.consecutive += 1
            if self.consecutive >= self._max_consecutive or (
                self.total >= self._min_requests and self.failures / self.total >= self._ratio
            ):
                self._to(OPEN, now)
        elif state == HALF_OPEN:
            if not success:
                self._to(OPEN, now)
                return
            self._trial_ok += 1
            if self._trial_ok >= self.half_open_requests:
                self._to(CLOSED, now)
        # OPEN: a request let through before the breaker opened changes nothing.

    def abandon(self, epoch: int | None = None) -> None:
        """A request ``allow`` let through was not sent after all: give back its half-open trial slot."""
        if (
            (epoch is None or epoch == self.epoch)
            and self.state == HALF_OPEN
            and self._trials > self._trial_ok
        ):
            self._trials -= 1

    def retry_after(self, now: float) -> int:
        """Whole seconds until the breaker half-opens (at least 1 when not closed; 0 when closed)."""
        if self.state == OPEN:
            return max(1, math.ceil(self.opened_at + self.open_s - now))
        return 1 if self.state == HALF_OPEN else 0

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    def _roll(self, now: float) -> int:
        """Advance the window to ``now``'s bucket, dropping buckets that left it; the bucket's slot."""
        bucket = int(now // self._bucket_s)
        head = self._head
        if bucket > head:
            totals, fails = self._totals, self._fails
            if bucket - head >= BUCKETS:
                for slot in range(BUCKETS):
                    totals[slot] = fails[slot] = 0
                self.total = self.failures = 0
            else:
                for number in range(head + 1, bucket + 1):
                    slot = number % BUCKETS
                    self.total -= totals[slot]
                    self.failures -= fails[slot]
                    totals[slot] = fails[slot] = 0
            self._head = head = bucket
        return head % BUCKETS  # a clock that went back counts into the newest bucket

    def _to(self, new: int, now: float) -> None:
        old = self.state
        self.state = new
        self.epoch += 1
        key = (old, new)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        if new == OPEN:
            self.opened_at = now
        elif new == HALF_OPEN:
            self._trials = self._trial_ok = 0
        else:
            for slot in range(BUCKETS):
                self._totals[slot] = self._fails[slot] = 0
            self.total = self.failures = self.consecutive = 0
        if self.on_transition is not None:
            self.on_transition(old, new)

    def __repr__(self) -> str:
        if self.state == OPEN:
            detail = f"since={self.opened_at:g} for={self.open_s:g}s"
        elif self.state == HALF_OPEN:
            detail = f"trials={self._trials}/{self.half_open_requests} ok={self._trial_ok}"
        else:
            detail = f"failures={self.failures}/{self.total} consecutive={self.consecutive}"
        return f"<CircuitBreaker {STATE_NAMES[self.state]} {detail}>"
