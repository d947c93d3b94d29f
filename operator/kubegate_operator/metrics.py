"""The operator's Prometheus metrics, on a registry of its own, served on ``--metrics-port``.

One :class:`Metrics` object is created at start-up and handed to the parts that observe something
(reconciler, publisher, status writer, bootstrap writer); tests create their own and read the values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.compile_seconds = Histogram(
            "kubegate_operator_compile_duration_seconds",
            "Time to compile the whole table.",
            buckets=_SECONDS,
            registry=r,
        )
        self.table_routes = Gauge(
            "kubegate_operator_table_routes", "Routes in the current table.", registry=r
        )
        self.table_bytes = Gauge(
            "kubegate_operator_table_bytes",
            "Size of the current table's JSON (what a whole-table push sends).",
            registry=r,
        )
        self.routes_rejected = Gauge(
            "kubegate_operator_routes_rejected",
            "GatewayRoutes whose Accepted condition is not True.",
            registry=r,
        )
        self.pushes = Counter(
            "kubegate_operator_pushes_total",
            "Table pushes (PUT or PATCH) by result: ok, error, rejected, conflict (delta for another table).",
            ["result"],
            registry=r,
        )
        self.delta_pushes = Counter(
            "kubegate_operator_delta_pushes_total",
            "PATCH /table (delta) attempts by result; a conflict is followed by a whole-table PUT.",
            ["result"],
            registry=r,
        )
        self.replicas = Gauge("kubegate_operator_replicas", "Data-plane replicas discovered.", registry=r)
        self.replica_count_updates = Counter(
            "kubegate_operator_replica_count_updates_total",
            "PUT /replicas (the replica count told to a replica whose table is unchanged) by result: ok, "
            "error, rejected.",
            ["result"],
            registry=r,
        )
        self.replicas_in_sync = Gauge(
            "kubegate_operator_replicas_in_sync", "Replicas serving the current table.", registry=r
        )
        self.reconcile_lag = Histogram(
            "kubegate_operator_reconcile_lag_seconds",
            "From the first input change of a batch to every replica acknowledging its table.",
            buckets=_SECONDS,
            registry=r,
        )
        self.status_writes = Counter(
            "kubegate_operator_status_writes_total",
            "GatewayRoute status patches by result: ok, gone (no such route), stale (the route changed "
            "since: not written), cleared (removed from a route that left the gateway class), error.",
            ["result"],
            registry=r,
        )
        self.bootstrap_bytes = Gauge(
            "kubegate_operator_bootstrap_bytes",
            "Size of the gzip-compressed table for the bootstrap Secret.",
            registry=r,
        )
        self.bootstrap_writes = Counter(
            "kubegate_operator_bootstrap_writes_total",
            "Bootstrap Secret writes by result (ok, error, too_large).",
            ["result"],
            registry=r,
        )
        self.leader = Gauge(
            "kubegate_operator_leader", "1 while this replica holds the leader Lease.", registry=r
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (for tests and logs); 0 when absent."""
        found = self.registry.get_sample_value(name, labels or {})
        return float(found) if found is not None else 0.0
