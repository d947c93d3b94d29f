"""Hot-path request statistics, exported to Prometheus at scrape time.

``prometheus_client`` metric objects take a lock and allocate per ``labels()`` call; at tens of thousands
of requests per second that is a visible share of the per-request budget. The proxy therefore only bumps
plain integers in dictionaries (one event loop, no lock needed), and :class:`StatsCollector` turns them
into Prometheus metric families when ``/metrics`` is scraped. Exposition format, naming and histogram
semantics still come from ``prometheus_client``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

_STATUS_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


class Stats:
    """Counters the proxy bumps per request. Single-threaded (the event loop), so no locks."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        # route -> [bucket counts..., +Inf count], plus sums
        self.latency_counts: dict[str, list[int]] = {}
        self.latency_sums: dict[str, float] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.table_version = "none"
        self.table_swaps = 0

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, _STATUS_CLASS[status // 100] if 0 < status < 600 else "0xx")
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        counts = self.latency_counts.get(route)
        if counts is None:
            counts = self.latency_counts[route] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.latency_sums[route] = 0.0
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sums[route] += seconds

    def upstream_error(self, route: str, kind: str) -> None:
        key = (route, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1


class StatsCollector(Collector):
    """A ``prometheus_client`` collector that reads :class:`Stats` at scrape time."""

    def __init__(self, stats: Stats, *, table_info: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats
        self._table_info = table_info

    def collect(self) -> Iterator[Any]:
        s = self._stats
        req = CounterMetricFamily(
            "kubegate_requests", "Requests handled, by route, method and status class",
            labels=["route", "method", "status_class"],
        )  # fmt: skip
        for (route, method, cls), n in sorted(s.requests.items()):
            req.add_metric([route, method, cls], n)
        yield req

        hist = HistogramMetricFamily(
            "kubegate_request_duration_seconds", "Request latency through the gateway", labels=["route"]
        )
        for route, counts in sorted(s.latency_counts.items()):
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([route], buckets, s.latency_sums[route])
        yield hist

        errs = CounterMetricFamily(
            "kubegate_upstream_errors", "Upstream failures by route and kind", labels=["route", "kind"]
        )
        for (route, kind), n in sorted(s.upstream_errors.items()):
            errs.add_metric([route, kind], n)
        yield errs

        info = self._table_info()
        ver = GaugeMetricFamily(
            "kubegate_table_info", "The route table being served (value is always 1)",
            labels=["version", "hash"],
        )  # fmt: skip
        ver.add_metric([str(info.get("version", "none")), str(info.get("hash", ""))], 1)
        yield ver
        routes = GaugeMetricFamily("kubegate_table_routes", "Routes in the table being served")
        routes.add_metric([], float(info.get("routes", 0)))
        yield routes
        swaps = CounterMetricFamily("kubegate_table_swaps", "Route tables swapped in since start")
        swaps.add_metric([], s.table_swaps)
        yield swaps
