"""Hot-path request statistics, exported to Prometheus at scrape time.

``prometheus_client`` metric objects take a lock and allocate per ``labels()`` call; at tens of thousands
of requests per second that is a visible share of the per-request budget. The proxy therefore only bumps
plain integers in dictionaries (one event loop, no lock needed), and :class:`StatsCollector` turns them
into Prometheus metric families when ``/metrics`` is scraped. Exposition format, naming and histogram
semantics still come from ``prometheus_client``.

Per-route series exist for the routes of the table being served: when a table is swapped in,
:meth:`Stats.retain` drops the series of the routes it no longer has (a table churning through route
names would otherwise grow ``/metrics`` without bound), and the collector leaves out any a request still
in flight across the swap re-created. Scrapes run on the admin port's worker thread while the proxy
keeps counting: they read each dictionary with one C-level copy (``list(d.items())``), never iterating a
dictionary the proxy may change meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

_STATUS_CLASS: Final = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


class Stats:
    """Counters the proxy bumps per request. Single-threaded (the event loop), so no locks."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        # route -> [bucket counts..., +Inf count], plus sums
        self.latency_counts: dict[str, list[int]] = {}
        self.latency_sums: dict[str, float] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.auth_failures: dict[tuple[str, str, str], int] = {}  # (route, kind, reason)
        self.limited: dict[str, int] = {}  # route -> requests refused by its rate limit
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
        bucket = 0  # bisect_left, inline: compiled, a loop over a few floats beats a call into bisect
        for bound in LATENCY_BUCKETS:
            if bound >= seconds:
                break
            bucket += 1
        counts[bucket] += 1
        self.latency_sums[route] += seconds

    def upstream_error(self, route: str, kind: str) -> None:
        key = (route, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def auth_failure(self, route: str, kind: str, reason: str) -> None:
        key = (route, kind, reason)
        self.auth_failures[key] = self.auth_failures.get(key, 0) + 1

    def rate_limited(self, route: str) -> None:
        self.limited[route] = self.limited.get(route, 0) + 1

    def retain(self, routes: Container[str]) -> None:
        """Drop the series of every route not in ``routes`` (those of requests matching no route stay).
        Called on the traffic loop, where the counters are bumped."""
        for key in [k for k in self.requests if k[0] and k[0] not in routes]:
            del self.requests[key]
        for route in [r for r in self.latency_counts if r and r not in routes]:
            del self.latency_counts[route]
            self.latency_sums.pop(route, None)
        for err in [k for k in self.upstream_errors if k[0] and k[0] not in routes]:
            del self.upstream_errors[err]
        for fail in [k for k in self.auth_failures if k[0] not in routes]:
            del self.auth_failures[fail]
        for route in [r for r in self.limited if r not in routes]:
            del self.limited[route]


class StatsCollector(Collector):
    """A ``prometheus_client`` collector that reads :class:`Stats` at scrape time."""

    def __init__(
        self,
        stats: Stats,
        *,
        table_info: Callable[[], dict[str, Any]],
        live_routes: Callable[[], Container[str]] | None = None,
    ) -> None:
        self._stats = stats
        self._table_info = table_info
        self._live_routes = live_routes

    def collect(self) -> Iterator[Any]:
        s = self._stats
        live = self._live_routes() if self._live_routes is not None else None

        def shown(route: str) -> bool:
            return live is None or not route or route in live

        req = CounterMetricFamily(
            "kubegate_requests", "Requests handled, by route, method and status class",
            labels=["route", "method", "status_class"],
        )  # fmt: skip
        for (route, method, cls), n in sorted(list(s.requests.items())):
            if shown(route):
                req.add_metric([route, method, cls], n)
        yield req

        hist = HistogramMetricFamily(
            "kubegate_request_duration_seconds", "Request latency through the gateway", labels=["route"]
        )
        sums = dict(s.latency_sums)
        for route, counts in sorted(list(s.latency_counts.items())):
            if not shown(route):
                continue
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), list(counts), strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([route], buckets, sums.get(route, 0.0))
        yield hist

        errs = CounterMetricFamily(
            "kubegate_upstream_errors", "Upstream failures by route and kind", labels=["route", "kind"]
        )
        for (route, kind), n in sorted(list(s.upstream_errors.items())):
            if shown(route):
                errs.add_metric([route, kind], n)
        yield errs

        auth = CounterMetricFamily(
            "kubegate_auth_failures",
            "Requests refused by a route's auth, by credential kind (jwt, apiKey) and reason",
            labels=["route", "kind", "reason"],
        )
        for (route, kind, reason), n in sorted(list(s.auth_failures.items())):
            if shown(route):
                auth.add_metric([route, kind, reason], n)
        yield auth

        limited = CounterMetricFamily(
            "kubegate_rate_limited", "Requests refused (429) by a route's rate limit", labels=["route"]
        )
        for route, n in sorted(list(s.limited.items())):
            if shown(route):
                limited.add_metric([route], n)
        yield limited

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
