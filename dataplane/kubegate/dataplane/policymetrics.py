"""Prometheus metrics of the traffic policies, read from their state objects at scrape time.

Like :mod:`kubegate.dataplane.stats`, nothing is counted twice: the breakers, bulkheads, retry budgets,
outlier detectors and health checks already count what they do, and this collector turns the current
table's objects into metric families when ``/metrics`` is scraped. Series exist only for routes of the
table being served (a route that leaves takes its series along), and counters restart when a route's
policy changes (its state starts afresh, as Prometheus counters may).

It also renders the same state as JSON for ``/routes``-style admin views (:func:`policy_state`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kubegate.dataplane.policies.breaker import STATE_NAMES
from kubegate.dataplane.policies.runtime import RoutePolicies
from kubegate.dataplane.snapshot import Snapshot


class PolicyCollector(Collector):
    def __init__(self, current: Callable[[], Snapshot | None]) -> None:
        self._current = current

    def collect(self) -> Iterator[Any]:
        snapshot = self._current()
        routes = (
            [(rid, rt.policies) for rid, rt in list(snapshot.routes.items()) if rt.policies is not None]
            if snapshot is not None
            else []
        )
        state = GaugeMetricFamily(
            "kubegate_circuit_breaker_state",
            "Circuit breaker state per route and backend: 0 closed, 1 half-open, 2 open",
            labels=["route", "backend"],
        )
        transitions = CounterMetricFamily(
            "kubegate_circuit_breaker_transitions",
            "Circuit breaker state changes",
            labels=["route", "backend", "from", "to"],
        )
        ejected = GaugeMetricFamily(
            "kubegate_outlier_ejected_endpoints", "Endpoints out of rotation now", labels=["route", "backend"]
        )
        ejections = CounterMetricFamily(
            "kubegate_outlier_ejections",
            "Endpoint ejections by outlier detection",
            labels=["route", "backend"],
        )
        panics = CounterMetricFamily(
            "kubegate_panic_picks",
            "Picks made among all endpoints because none was available (panic mode)",
            labels=["route", "backend"],
        )
        health = CounterMetricFamily(
            "kubegate_health_checks", "Active health check probes", labels=["route", "backend", "result"]
        )
        unhealthy = GaugeMetricFamily(
            "kubegate_unhealthy_endpoints",
            "Endpoints failing their health checks",
            labels=["route", "backend"],
        )
        retries = CounterMetricFamily(
            "kubegate_retries", "Retries by outcome of the retry budget", labels=["route", "outcome"]
        )
        attempts = CounterMetricFamily(
            "kubegate_upstream_attempts",
            "Upstream attempts (tries and retries) of policy routes",
            labels=["route"],
        )
        bh_in = GaugeMetricFamily(
            "kubegate_bulkhead_in_flight", "Requests holding a bulkhead slot", labels=["route"]
        )
        bh_wait = GaugeMetricFamily(
            "kubegate_bulkhead_waiting", "Requests queued for a slot", labels=["route"]
        )
        bh_rejected = CounterMetricFamily(
            "kubegate_bulkhead_rejections", "Requests refused (queue full or queue timeout)", labels=["route"]
        )
        bh_queued = CounterMetricFamily(
            "kubegate_bulkhead_queued", "Requests that had to queue", labels=["route"]
        )
        for rid, pol in sorted(routes, key=lambda x: x[0]):
            now = time.monotonic()  # the event loop's clock (uvloop and asyncio both use CLOCK_MONOTONIC)
            for b in pol.backends:
                labels = [rid, b.name]
                if b.breaker is not None:
                    state.add_metric(labels, b.breaker.state)
                    for (old, new), n in sorted(list(b.breaker.transitions.items())):
                        transitions.add_metric([*labels, STATE_NAMES[old], STATE_NAMES[new]], n)
                if b.outlier is not None:
                    ejected.add_metric(labels, b.endpoints.ejected(now))
                    ejections.add_metric(labels, b.outlier.ejections)
                panics.add_metric(labels, b.endpoints.panics)
                if b.health is not None:
                    states = list(b.health.states.values())
                    health.add_metric([*labels, "passed"], sum(s.passed for s in states))
                    health.add_metric([*labels, "failed"], sum(s.failed for s in states))
                    unhealthy.add_metric(labels, sum(1 for s in states if not s.endpoint.healthy))
            if pol.retrier is not None:
                retries.add_metric([rid, "allowed"], pol.retrier.budget.allowed)
                retries.add_metric([rid, "denied"], pol.retrier.budget.denied)
            attempts.add_metric([rid], pol.attempts)
            if pol.bulkhead is not None:
                bh = pol.bulkhead
                bh_in.add_metric([rid], bh.in_flight)
                bh_wait.add_metric([rid], bh.waiting)
                bh_rejected.add_metric([rid], bh.rejected + pol.queue_timeouts)
                bh_queued.add_metric([rid], bh.queued)
        yield from (state, transitions, ejected, ejections, panics, health, unhealthy, retries, attempts)
        yield from (bh_in, bh_wait, bh_rejected, bh_queued)


def policy_state(pol: RoutePolicies, now: float) -> dict[str, Any]:
    """A route's policy state for the admin API: each backend's breaker and each endpoint's standing."""
    backends = []
    for b in pol.backends:
        endpoints = []
        for ep in b.endpoints:
            host, port = ep.addr
            entry: dict[str, Any] = {
                "address": f"{host}:{port}",
                "inFlight": ep.in_flight,
                "healthy": ep.healthy,
                "ejected": ep.ejected_until > now,
            }
            if ep.ejected_until > now:
                entry["ejectedForSeconds"] = round(ep.ejected_until - now, 3)
            if ep.ejections:
                entry["ejections"] = ep.ejections
            if b.health is not None and (hs := b.health.states.get(ep.addr)) is not None:
                entry["healthChecks"] = {
                    "passed": hs.passed,
                    "failed": hs.failed,
                    "failingInARow": hs.failures,
                }
            endpoints.append(entry)
        backend: dict[str, Any] = {"name": b.name, "endpoints": endpoints}
        if b.breaker is not None:
            backend["circuitBreaker"] = b.breaker.state_name
        backends.append(backend)
    out: dict[str, Any] = {"backends": backends}
    if pol.bulkhead is not None:
        out["bulkhead"] = {"inFlight": pol.bulkhead.in_flight, "waiting": pol.bulkhead.waiting}
    return out
