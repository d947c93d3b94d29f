"""The in-memory GCRA and the rate-limit headers, on an injected clock (no sleeps).

Aspects: exact admitted counts of a flooded key over half-open windows (``ceil(R * T) + burst``), for
integral and fractional rates and ``burst: 0``; no window ever admitting more (random arrivals); a fresh
key's ``burst + 1`` at once; ``remaining``/``retry_after``/``reset`` values; refusals not pushing the
window; refill after idling; keys independent; the key table's bound (expired entries dropped first, then
the least recently used, refusals counting as use; a flood of distinct keys), long keys digested;
argument checks; ``repr``; ``LocalLimiter``; the ``RateLimit-Policy``/``RateLimit``/``Retry-After`` lines.
"""

from __future__ import annotations

import math
import random

import pytest

from kubegate.dataplane.policies.ratelimit import (
    MAX_KEY_LENGTH,
    Decision,
    Gcra,
    LocalLimiter,
    RateLimitHeaders,
    compact_key,
    policy_window,
    ratelimit_headers,
    retry_after_seconds,
)


def _flood(gcra: Gcra, key: str, start: float, seconds: float, step: float = 0.001, tries: int = 3) -> int:
    """Offer ``tries`` requests at every ``step`` of ``[start, start + seconds)``; how many were admitted."""
    admitted = 0
    for tick in range(round(seconds / step)):
        now = start + tick * step
        for _ in range(tries):
            admitted += gcra.check(key, now).allowed
    return admitted


@pytest.mark.parametrize(
    ("rate", "burst", "seconds", "expected"),
    [
        (100, 200, 10, 1200),  # the example: 100/s sustained, 200 extra at once
        (100, 0, 10, 1000),
        (0.5, 0, 10, 5),  # one every 2 s: t = 0, 2, 4, 6, 8
        (0.5, 3, 10, 8),
        (3, 5, 7, 26),
        (4, 1, 2.5, 11),
        (0.3, 2, 20, 8),  # ceil(6) + 2
        (0.3, 2, 21, 9),  # ceil(6.3) + 2
        (1000, 0, 1, 1000),
    ],
)
def test_flooded_key_admits_exactly_rate_times_window_plus_burst(
    rate: float, burst: int, seconds: float, expected: int
) -> None:
    assert expected == math.ceil(rate * seconds - 1e-9) + burst
    gcra = Gcra(rate, burst)
    assert _flood(gcra, "client", 1000.0, seconds) == expected
    assert gcra.allowed == expected and gcra.denied == round(seconds / 0.001) * 3 - expected


def test_no_window_admits_more_than_the_bound_with_random_arrivals() -> None:
    rng = random.Random(11)
    rate, burst, window = 20.0, 7, 1.5
    gcra = Gcra(rate, burst)
    now, admitted = 0.0, []
    for _ in range(20_000):
        now += rng.expovariate(60.0)  # ~3x the rate, in clumps
        if gcra.check("k", now).allowed:
            admitted.append(now)
    bound = math.ceil(rate * window) + burst
    right = 0
    for left, start in enumerate(
        admitted
    ):  # every window [start, start + window) that begins at an admission
        while right < len(admitted) and admitted[right] < start + window:
            right += 1
        assert right - left <= bound
    # ... and over the whole run the long-term rate is respected
    assert len(admitted) <= math.ceil(rate * now) + burst + 1
    assert len(admitted) >= rate * now * 0.95


def test_fresh_key_admits_burst_plus_one_at_once_with_exact_values() -> None:
    gcra = Gcra(2, 3)
    decisions = [gcra.check("a", 10.0) for _ in range(5)]
    assert decisions == [
        Decision(True, 0.0, 3, 0.5),
        Decision(True, 0.0, 2, 1.0),
        Decision(True, 0.0, 1, 1.5),
        Decision(True, 0.0, 0, 2.0),
        Decision(False, 0.5, 0, 2.0),
    ]
    assert gcra.check("a", 10.25) == Decision(False, 0.25, 0, 1.75)
    assert gcra.check("a", 10.5) == Decision(True, 0.0, 0, 2.0)  # exactly when retry_after said
    assert gcra.check("a", 10.5).allowed is False


def test_refusals_do_not_push_the_window() -> None:
    gcra = Gcra(1, 0)
    assert gcra.check("a", 0.0).allowed
    for tick in range(1, 1000):  # hammering for a whole second
        assert not gcra.check("a", tick / 1000).allowed
    assert gcra.check("a", 1.0).allowed


def test_burst_zero_spaces_requests_and_fractional_rates() -> None:
    gcra = Gcra(0.5, 0)
    assert gcra.check("a", 0.0) == Decision(True, 0.0, 0, 2.0)
    refused = gcra.check("a", 1.999)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.001)
    assert gcra.check("a", 2.0).allowed
    assert not gcra.check("a", 3.0).allowed


def test_idle_key_refills_partly_then_fully() -> None:
    gcra = Gcra(10, 4)
    assert _flood(gcra, "a", 0.0, 0.001, tries=10) == 5  # burst + 1 at once
    # 0.2 s later two cells came back: two more at once, not three
    assert [gcra.check("a", 0.2).allowed for _ in range(3)] == [True, True, False]
    # seven admitted since 0.0 at 10/s: the TAT is 0.7, when the bucket is full again
    full_at = 0.2 + gcra.check("a", 0.2).reset
    assert full_at == pytest.approx(0.7)
    assert _flood(gcra, "a", full_at, 0.001, tries=10) == 5
    assert gcra.check("b", 0.0).remaining == 4  # another key has its own bucket


def test_key_table_drops_expired_entries_before_evicting_live_ones() -> None:
    gcra = Gcra(1, 0, max_keys=3)
    gcra.check("a", 0.0)
    gcra.check("b", 0.0)  # a, b: TAT 1.0
    gcra.check("c", 0.5)  # TAT 1.5
    assert len(gcra) == 3
    gcra.check("d", 1.2)  # a and b have full buckets again: dropped, nothing evicted
    assert len(gcra) == 2 and gcra.evicted == 0
    assert gcra.check("c", 1.2).allowed is False  # c was kept: still limited
    gcra.check("e", 1.2)
    gcra.check("f", 1.2)  # full, nothing expired: the least recently used (d) goes
    assert gcra.evicted == 1 and len(gcra) == 3
    assert gcra.check("c", 1.3).allowed is False  # c was used recently (refusals count): kept
    assert gcra.check("e", 1.3).allowed is False
    assert gcra.check("d", 1.3).allowed is True  # d was evicted: a full bucket again (counted above)


def test_flood_of_distinct_keys_is_bounded() -> None:
    gcra = Gcra(1, 5, max_keys=1000)
    for i in range(50_000):
        assert gcra.check(f"10.0.{i // 256}.{i % 256}", 7.0).allowed
    assert len(gcra) == 1000 and gcra.evicted == 49_000
    assert gcra.forget(100.0) == 1000 and len(gcra) == 0


def test_long_keys_are_digested() -> None:
    short = "x" * MAX_KEY_LENGTH
    assert compact_key(short) == short and compact_key(short.encode()) == short.encode()
    long_a, long_b = "t" * 5000 + "a", "t" * 5000 + "b"
    digest = compact_key(long_a)
    assert isinstance(digest, bytes) and len(digest) == 18 and digest == compact_key(long_a.encode())
    assert digest != compact_key(long_b)
    gcra = Gcra(1, 0)
    assert gcra.check(long_a, 0.0).allowed and not gcra.check(long_a, 0.1).allowed
    assert gcra.check(long_b, 0.1).allowed
    assert len(gcra) == 2 and all(len(key) == 18 for key in gcra._table)


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 1), (-1, 1), (math.nan, 1), (math.inf, 1), (1, -1), (1, 1.5)]
)
def test_bad_arguments_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Gcra(rate, burst)
    with pytest.raises(ValueError):
        Gcra(1, 0, max_keys=0)


def test_repr_and_counters() -> None:
    gcra = Gcra(0.5, 2, max_keys=10)
    _flood(gcra, "a", 0.0, 0.001, tries=4)
    assert repr(gcra) == "<Gcra 0.5/s burst=2 keys=1/10 allowed=3 denied=1 evicted=0>"


def test_local_limiter_answers_at_once_on_its_clock() -> None:
    now = [5.0]
    resumed: list[Decision] = []
    limiter = LocalLimiter(Gcra(1, 0), lambda: now[0])
    assert limiter.decide("a", resumed.append) == Decision(True, 0.0, 0, 1.0)
    assert limiter.check("a") == Decision(False, 1.0, 0, 1.0)
    now[0] = 6.0
    assert limiter.decide("a", resumed.append).allowed
    assert resumed == []


@pytest.mark.parametrize(
    ("rate", "burst", "line"),
    [
        (100, 200, b'ratelimit-policy: "r";q=300;w=1'),
        (2.5, 0, b'ratelimit-policy: "r";q=3;w=1'),
        (0.5, 0, b'ratelimit-policy: "r";q=1;w=2'),
        (0.3, 2, b'ratelimit-policy: "r";q=4;w=4'),
        (0.1, 0, b'ratelimit-policy: "r";q=1;w=10'),
    ],
)
def test_policy_header(rate: float, burst: int, line: bytes) -> None:
    limit = RateLimitHeaders("r", rate, burst)
    assert limit.policy == line
    # q is what a window of w seconds admits at most, from a full bucket
    assert _flood(Gcra(rate, burst), "k", 0.0, limit.window, step=0.01) == limit.quota


def test_policy_name_is_a_structured_fields_string() -> None:
    limit = RateLimitHeaders('httproute/ns/a"b\\c/rule/0 é', 1, 0)
    assert limit.name == b'"httproute/ns/a\\"b\\\\c/rule/0 ?"'
    assert policy_window(1) == 1 and policy_window(0.25) == 4


def test_ratelimit_lines_for_admitted_and_refused_requests() -> None:
    limit = RateLimitHeaders("default", 100, 200)
    assert ratelimit_headers(limit, Decision(True, 0.0, 199, 0.01)) == [
        b'ratelimit-policy: "default";q=300;w=1',
        b'ratelimit: "default";r=199;t=1',
    ]
    assert ratelimit_headers(limit, Decision(True, 0.0, 0, 2.0)) == [
        b'ratelimit-policy: "default";q=300;w=1',
        b'ratelimit: "default";r=0;t=2',  # 2.0 exactly stays 2
    ]
    assert ratelimit_headers(limit, Decision(False, 0.004, 0, 2.004)) == [
        b'ratelimit-policy: "default";q=300;w=1',
        b'ratelimit: "default";r=0;t=3',
        b"retry-after: 1",  # rounded up, never 0
    ]
    assert retry_after_seconds(Decision(False, 2.5, 0, 4.0)) == 3
    lines = ratelimit_headers(limit, Decision(True, 0.0, 1, 0.0))
    lines.append(b"x: y")  # a fresh list: the caller may extend it
    assert ratelimit_headers(limit, Decision(True, 0.0, 1, 0.0))[-1] == b'ratelimit: "default";r=1;t=0'
