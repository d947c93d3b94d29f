"""Versioned snapshots of the route table and the atomic swap between them.

A :class:`Snapshot` is everything the hot path needs, built once from a validated
:class:`~kubegate.compiler.table.RouteTable`: the matcher and, per route, its pre-encoded runtime form
(balancer, timeout, body limit, and the runtime of its traffic policies if it has any). Building happens
*before* the swap, so a table that cannot be built is rejected while the old one keeps serving. The swap
itself is one attribute assignment on the single event-loop thread: a request picks the snapshot once when
its headers are complete and keeps using the objects it got, so requests in flight finish on the table
they started with.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kubegate import gcpause
from kubegate.compiler.table import CompiledRoute, RouteTable
from kubegate.dataplane.balancer import BackendPool, WeightedSplit, plain_split
from kubegate.dataplane.edge import EdgeContext, EdgeRuntime
from kubegate.dataplane.matcher import Matcher
from kubegate.dataplane.policies.runtime import RoutePolicies


class RuntimeRoute:
    """A compiled route plus the per-table runtime state the proxy uses.

    ``edge`` is None for a route without edge policies (CORS, transforms, rewrite, redirect).
    ``https_port`` is set for a route whose TLS says ``redirectHTTP`` (see :mod:`kubegate.dataplane.tls`).
    ``policies`` is None for a route without traffic policies (``split`` then picks round-robin backend
    pools); otherwise the proxy uses ``policies.split`` and the policies' hooks, and ``split`` is empty.
    A route rebuilt for a new table keeps its policies' state when its policy is equal (``previous``).
    """

    __slots__ = ("edge", "https_port", "id", "max_body", "policies", "route", "split", "timeout")

    def __init__(
        self, route: CompiledRoute, previous: RuntimeRoute | None = None, context: EdgeContext | None = None
    ) -> None:
        self.route = route
        self.id = route.id
        self.policies: RoutePolicies | None = None
        self.split: WeightedSplit[BackendPool]
        if route.policy is None:
            self.split = plain_split(route.backends)
        else:
            before = previous.policies if previous is not None else None
            self.policies = RoutePolicies(route.policy, route.backends, previous=before)
            self.split = plain_split(())
        self.edge = EdgeRuntime(route.edge, route.id, context) if route.edge is not None else None
        self.timeout: float | None = route.timeout_ms / 1000.0 if route.timeout_ms else None
        self.max_body = route.max_body_bytes
        # redirectHTTP: plain requests get 301 to this HTTPS port; only while the route's TLS is served and
        # the data plane has a TLS listener (None otherwise: one attribute read per request)
        tls = route.tls
        self.https_port: int | None = (
            context.https_port
            if context is not None and tls is not None and tls.redirect_http and tls.error is None
            else None
        )

    def __repr__(self) -> str:
        return f"<RuntimeRoute {self.id} {self.split!r}>"


class Snapshot:
    __slots__ = ("hash", "loaded_at", "matcher", "routes", "table", "version")

    def __init__(
        self,
        table: RouteTable,
        *,
        loaded_at: float,
        previous: Snapshot | None = None,
        context: EdgeContext | None = None,
    ) -> None:
        self.table = table
        self.version = table.version
        self.hash = table.content_hash()
        # A route that did not change keeps its runtime state (balancer position) across the swap.
        before: dict[str, RuntimeRoute] = previous.routes if previous is not None else {}
        self.routes: dict[str, RuntimeRoute] = {}
        for r in table.routes:
            kept = before.get(r.id)
            self.routes[r.id] = (
                kept if kept is not None and kept.route is r else RuntimeRoute(r, kept, context)
            )
        self.matcher: Matcher[RuntimeRoute] = Matcher(
            ((rt.route, rt) for rt in self.routes.values()),
            previous=previous.matcher if previous is not None else None,
        )
        self.loaded_at = loaded_at

    def __repr__(self) -> str:
        return f"<Snapshot version={self.version} routes={len(self.routes)} {self.hash[:19]}>"


class SnapshotStore:
    """Holds the current snapshot; ``None`` until the first table arrives (the data plane is not ready)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, context: EdgeContext | None = None) -> None:
        self.current: Snapshot | None = None
        self._clock = clock
        #: What the edge policies share (JWKS sources, Redis, trusted proxies; see dataplane/edge.py).
        self.context = context
        self._listeners: list[Callable[[Snapshot], None]] = []

    def build(self, table: RouteTable) -> Snapshot:
        """Build (and so validate) a snapshot without serving it."""
        with gcpause.paused():
            return Snapshot(table, loaded_at=self._clock(), previous=self.current, context=self.context)

    def swap(self, snapshot: Snapshot) -> Snapshot | None:
        previous, self.current = self.current, snapshot
        for listener in self._listeners:
            listener(snapshot)
        return previous

    def load(self, table: RouteTable) -> Snapshot:
        snapshot = self.build(table)
        self.swap(snapshot)
        return snapshot

    def on_swap(self, listener: Callable[[Snapshot], None]) -> None:
        self._listeners.append(listener)

    @property
    def ready(self) -> bool:
        return self.current is not None
