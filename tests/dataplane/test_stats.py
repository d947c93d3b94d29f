"""Request statistics: each latency lands in the bucket Prometheus's ``le`` says (bounds inclusive).

Aspects: a duration equal to a bound counts in that bound's bucket, one just above it in the next; zero
in the first; one over the last bound only in +Inf; the sum and the request counter by status class.
"""

from __future__ import annotations

import bisect

from prometheus_client import CollectorRegistry, generate_latest

from kubegate.dataplane.stats import LATENCY_BUCKETS, Stats, StatsCollector


def test_every_duration_lands_where_bisect_left_puts_it() -> None:
    durations = [0.0, 1e-9, 31.0, 1e9]
    for bound in LATENCY_BUCKETS:
        durations += [bound, bound * (1 - 1e-12), bound * (1 + 1e-12)]
    stats = Stats()
    for seconds in durations:
        stats.observe("r", "GET", 200, seconds)
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    for seconds in durations:
        expected[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    assert stats.latency_counts["r"] == expected
    assert expected[-1] == 3 and expected[0] == 4  # (over 30 s: three; up to 0.5 ms: four)


def test_the_exposition_has_cumulative_inclusive_buckets_and_status_classes() -> None:
    stats = Stats()
    for seconds, status in ((0.005, 200), (0.0050001, 503), (0.0001, 404), (40.0, 200)):
        stats.observe("ns/r", "GET", status, seconds)
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats, table_info=lambda: {"version": "v", "hash": "h"}))
    text = generate_latest(registry).decode()
    assert 'kubegate_request_duration_seconds_bucket{le="0.0005",route="ns/r"} 1.0' in text
    assert 'kubegate_request_duration_seconds_bucket{le="0.005",route="ns/r"} 2.0' in text
    assert 'kubegate_request_duration_seconds_bucket{le="0.01",route="ns/r"} 3.0' in text
    assert 'kubegate_request_duration_seconds_bucket{le="30.0",route="ns/r"} 3.0' in text
    assert 'kubegate_request_duration_seconds_bucket{le="+Inf",route="ns/r"} 4.0' in text
    assert 'kubegate_requests_total{method="GET",route="ns/r",status_class="2xx"} 2.0' in text
    assert 'kubegate_requests_total{method="GET",route="ns/r",status_class="5xx"} 1.0' in text
    assert 'kubegate_requests_total{method="GET",route="ns/r",status_class="4xx"} 1.0' in text
