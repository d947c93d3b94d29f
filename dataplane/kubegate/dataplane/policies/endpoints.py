"""What the policies know about each endpoint of a backend, and which endpoints are in rotation.

An :class:`EndpointState` is the one record every policy writes to: the balancers read ``in_flight`` and
availability, :mod:`.outlier` writes ``consecutive_failures``, ``ejections`` and ``ejected_until``,
:mod:`.health` writes ``healthy``. An endpoint is *available* when it passes its health checks and is not
ejected (``now >= ejected_until``): ejections end by themselves as time passes, without a timer.

An :class:`EndpointSet` is one backend's endpoints. When none of them is available it hands out all of
them (*panic mode*, as Envoy does): a backend whose every endpoint is ejected or failing its checks is
more likely mis-measured than entirely down, and trying is better than answering 503. Each time that
happens ``panics`` counts it. A set built with ``previous=`` keeps the state of the endpoints the two
sets share, so an EndpointSlice change does not forget an ejection or a failing health check.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

Addr = tuple[str, int]


class EndpointState:
    """One endpoint's policy state. ``available(now)``: passing health checks and not ejected."""

    __slots__ = ("addr", "consecutive_failures", "ejected_until", "ejections", "healthy", "in_flight")

    def __init__(self, addr: Addr) -> None:
        self.addr = addr
        self.in_flight = 0
        self.ejected_until = 0.0
        self.ejections = 0
        self.consecutive_failures = 0
        self.healthy = True

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def __repr__(self) -> str:
        host, port = self.addr
        flags = "" if self.healthy else " unhealthy"
        if self.ejected_until:
            flags += f" ejected_until={self.ejected_until:g} ejections={self.ejections}"
        return f"<EndpointState {host}:{port} in_flight={self.in_flight}{flags}>"


class EndpointSet:
    """One backend's endpoints (in the given order, duplicates dropped); see the module docstring.

    ``start(ep)``/``finish(ep)`` keep ``ep.in_flight`` and the set's total ``in_flight`` (what bounded-load
    consistent hashing reads) together; a request must finish on the set it started on.
    """

    __slots__ = ("_by_addr", "endpoints", "in_flight", "panics")

    def __init__(self, addrs: Iterable[Addr], previous: EndpointSet | None = None) -> None:
        kept: dict[Addr, EndpointState] = previous._by_addr if previous is not None else {}
        by_addr: dict[Addr, EndpointState] = {}
        for addr in addrs:
            if addr not in by_addr:
                by_addr[addr] = kept.get(addr) or EndpointState(addr)
        self._by_addr: dict[Addr, EndpointState] = by_addr
        self.endpoints: tuple[EndpointState, ...] = tuple(by_addr.values())
        # Requests still running on a kept endpoint finish on the old set: the new total starts at 0.
        self.in_flight = 0
        self.panics = 0

    def available(self, now: float) -> list[EndpointState]:
        """The endpoints in rotation, or all of them (counted in ``panics``) when none is."""
        usable = [ep for ep in self.endpoints if ep.healthy and now >= ep.ejected_until]
        if usable or not self.endpoints:
            return usable
        self.panics += 1
        return list(self.endpoints)

    def ejected(self, now: float) -> int:
        """How many endpoints are ejected at ``now``."""
        return sum(1 for ep in self.endpoints if ep.ejected_until > now)

    def get(self, addr: Addr) -> EndpointState | None:
        return self._by_addr.get(addr)

    def start(self, ep: EndpointState) -> None:
        ep.in_flight += 1
        self.in_flight += 1

    def finish(self, ep: EndpointState) -> None:
        if ep.in_flight > 0:
            ep.in_flight -= 1
            if self.in_flight > 0:
                self.in_flight -= 1

    def __len__(self) -> int:
        return len(self.endpoints)

    def __bool__(self) -> bool:
        # Stated, not left to __len__: compiled by mypyc, "if x" on an "X | None" tests only for None
        # unless X defines __bool__.
        return len(self) > 0

    def __iter__(self) -> Iterator[EndpointState]:
        return iter(self.endpoints)

    def __repr__(self) -> str:
        unhealthy = sum(1 for ep in self.endpoints if not ep.healthy)
        return (
            f"<EndpointSet {len(self.endpoints)} endpoints, {unhealthy} unhealthy, "
            f"in_flight={self.in_flight} panics={self.panics}>"
        )
