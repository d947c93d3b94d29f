"""One route's policies at run time: the state machines of this package, assembled from its RoutePolicy.

The snapshot builds a :class:`RoutePolicies` for every route whose compiled ``policy`` is not None (a route
without policies has none and its requests never reach this module). It holds, per backend, a
:class:`PolicyBackend` (the endpoints' state, the balancer, the circuit breaker, the outlier detector and
the health check) and, per route, the bulkhead and the retrier.

State survives table swaps exactly when the policy does: a new table whose route has an *equal*
``RoutePolicy`` gets a RoutePolicies built with ``previous=``, which keeps the bulkhead, the retry budget,
each backend's breaker (by backend name) and each endpoint's state (by address; see
:class:`~.endpoints.EndpointSet`), while backends and endpoints follow the new table. A route whose policy
changed starts afresh. All of it is per data-plane replica.

The proxy calls into it at named points of an exchange; see :mod:`kubegate.dataplane.proxy`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from kubegate.compiler.policy import HashOn, RoutePolicy
from kubegate.compiler.table import CompiledBackend
from kubegate.dataplane.balancer import WeightedSplit
from kubegate.dataplane.policies.balancing import Balancer, make_balancer
from kubegate.dataplane.policies.breaker import CircuitBreaker
from kubegate.dataplane.policies.bulkhead import Bulkhead
from kubegate.dataplane.policies.endpoints import EndpointSet
from kubegate.dataplane.policies.health import HealthCheck
from kubegate.dataplane.policies.outlier import OutlierDetector
from kubegate.dataplane.policies.retry import Retrier
from kubegate.dataplane.upstreamtls import CONTEXTS


class PolicyBackend:
    """One backend of a policy-carrying route (the counterpart of ``balancer.BackendPool``)."""

    __slots__ = ("balancer", "breaker", "endpoints", "error", "health", "name", "outlier", "tls", "weight")

    def __init__(
        self,
        backend: CompiledBackend,
        policy: RoutePolicy,
        rng: random.Random,
        previous: PolicyBackend | None,
    ) -> None:
        self.name = backend.name
        self.weight = backend.weight
        self.error = backend.error
        self.tls = CONTEXTS.get(backend.tls) if backend.tls is not None else None  # None: plain HTTP
        self.endpoints: EndpointSet = EndpointSet(
            ((e.host, e.port) for e in backend.endpoints),
            previous=previous.endpoints if previous is not None else None,
        )
        self.balancer: Balancer = make_balancer(policy.load_balancer, self.endpoints, rng)
        self.breaker: CircuitBreaker | None = None
        if policy.circuit_breaker is not None:
            kept = previous.breaker if previous is not None else None
            self.breaker = kept if kept is not None else CircuitBreaker(policy.circuit_breaker)
        self.outlier = (
            OutlierDetector(policy.outlier_detection, self.endpoints)
            if policy.outlier_detection is not None
            else None
        )
        if self.outlier is not None and previous is not None and previous.outlier is not None:
            self.outlier.ejections = previous.outlier.ejections
            self.outlier.capped = previous.outlier.capped
        self.health = HealthCheck(policy.health_check, self.endpoints) if policy.health_check else None
        if self.health is not None and previous is not None and previous.health is not None:
            for addr, state in previous.health.states.items():  # keep the counts of kept endpoints
                if addr in self.health.states:
                    self.health.states[addr] = state

    def __repr__(self) -> str:
        return f"<PolicyBackend {self.name} weight={self.weight} {self.endpoints!r}>"


class RoutePolicies:
    """A route's runtime policies; see the module docstring."""

    __slots__ = (
        "attempts",
        "backends",
        "bulkhead",
        "config",
        "hash_on",
        "queue_timeouts",
        "retrier",
        "rng",
        "split",
    )

    def __init__(
        self,
        config: RoutePolicy,
        backends: tuple[CompiledBackend, ...],
        *,
        rng: random.Random | None = None,
        previous: RoutePolicies | None = None,
    ) -> None:
        if previous is not None and previous.config != config:
            previous = None
        self.config: RoutePolicy = config
        self.rng: random.Random = rng or (previous.rng if previous is not None else random.Random())
        before = {b.name: b for b in previous.backends} if previous is not None else {}
        self.backends: tuple[PolicyBackend, ...] = tuple(
            PolicyBackend(b, config, self.rng, before.get(b.name)) for b in backends if b.weight > 0
        )
        self.split: WeightedSplit[PolicyBackend] = WeightedSplit(self.backends)
        lb = config.load_balancer
        self.hash_on: HashOn | None = lb.hash_on if lb is not None else None
        self.bulkhead: Bulkhead | None = None
        if config.bulkhead is not None:
            self.bulkhead = previous.bulkhead if previous is not None else Bulkhead(config.bulkhead)
        self.retrier: Retrier | None = None
        if config.retry is not None and config.retry.attempts > 0:
            self.retrier = previous.retrier if previous is not None else Retrier(config.retry)
        # counters for /metrics (the state machines count the rest)
        self.attempts: int = previous.attempts if previous is not None else 0  # upstream attempts made
        # bulkhead waits given up at the queue timeout
        self.queue_timeouts: int = previous.queue_timeouts if previous is not None else 0

    def health_checks(self) -> Iterator[PolicyBackend]:
        """The backends that have an active health check."""
        return (b for b in self.backends if b.health is not None)

    def __repr__(self) -> str:
        return f"<RoutePolicies {len(self.backends)} backends {self.config!r}>"
