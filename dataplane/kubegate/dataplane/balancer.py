"""Choosing an upstream for a request: a weighted split across backends, round robin inside one backend.

Backends are split with nginx's *smooth weighted round robin*: deterministic (tests can count exact
shares), interleaved (weights 3:1 give a,a,b,a rather than a,a,a,b) and O(number of backends) per pick,
which is a handful. Endpoints inside a backend rotate round robin (:class:`BackendPool`); a route with
traffic policies splits over :class:`~kubegate.dataplane.policies.runtime.PolicyBackend` objects instead,
whose balancers (least request, consistent hash, ...) live in :mod:`kubegate.dataplane.policies`.

State lives in the snapshot's runtime routes: a route left unchanged by a table swap keeps its position,
a changed route starts afresh; requests in flight keep the objects of the table they started with.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from kubegate.compiler.table import CompiledBackend
from kubegate.dataplane.upstreamtls import CONTEXTS


class BackendPool:
    """One backend's endpoints, picked round robin. ``error``/empty endpoints decide 500/503."""

    __slots__ = ("_next", "endpoints", "error", "name", "tls", "weight")

    def __init__(self, backend: CompiledBackend) -> None:
        self.name = backend.name
        self.weight = backend.weight
        self.error = backend.error
        #: TLS to this backend (dataplane/upstreamtls.py); None: plain HTTP
        self.tls = CONTEXTS.get(backend.tls) if backend.tls is not None else None
        self.endpoints: tuple[tuple[str, int], ...] = tuple((e.host, e.port) for e in backend.endpoints)
        self._next = 0

    def pick(self) -> tuple[str, int] | None:
        eps = self.endpoints
        if not eps:
            return None
        i = self._next
        if i >= len(eps):
            i = 0
        self._next = i + 1
        return eps[i]

    def __repr__(self) -> str:
        return f"<BackendPool {self.name} weight={self.weight} endpoints={len(self.endpoints)}>"


class Weighted(Protocol):
    @property
    def weight(self) -> int: ...
    @property
    def name(self) -> str: ...


B = TypeVar("B", bound=Weighted)


class WeightedSplit(Generic[B]):
    """Smooth weighted round robin over a route's backends (weight 0 backends never get traffic)."""

    __slots__ = ("_current", "_total", "_weights", "backends")

    def __init__(self, backends: Iterable[B]) -> None:
        self.backends: tuple[B, ...] = tuple(b for b in backends if b.weight > 0)
        self._weights = tuple(b.weight for b in self.backends)
        self._total = sum(self._weights)
        self._current = [0] * len(self.backends)

    def pick(self) -> B | None:
        backends = self.backends
        if len(backends) == 1:
            return backends[0]
        if not backends:
            return None
        current = self._current
        best = 0
        for i, w in enumerate(self._weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return backends[best]

    def __repr__(self) -> str:
        parts = ", ".join(f"{b.name}={b.weight}" for b in self.backends)
        return f"<WeightedSplit {parts}>"


def plain_split(backends: tuple[CompiledBackend, ...]) -> WeightedSplit[BackendPool]:
    """The split of a route without traffic policies: round robin inside each backend."""
    return WeightedSplit(BackendPool(b) for b in backends)
