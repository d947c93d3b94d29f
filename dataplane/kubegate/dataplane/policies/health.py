"""Active health checks, the decision half: when does a run of probe results flip an endpoint's health.

Every data-plane replica probes each endpoint of a backend with a ``healthCheck`` (``GET path`` every
``interval``, ``timeout`` each); the prober, with its sockets and timers, lives elsewhere and reports each
result here. An endpoint turns unhealthy after ``unhealthyThreshold`` failed probes in a row and healthy
again after ``healthyThreshold`` successful ones in a row; a single result the other way resets the run.
The verdict is written to :attr:`EndpointState.healthy`, which the balancers read: an unhealthy endpoint
leaves rotation (unless the whole backend is out: panic mode, see :mod:`.endpoints`). Endpoints start
healthy, so that a new replica serves before its first probes have answered.
"""

from __future__ import annotations

from kubegate.compiler.policy import HealthCheckPolicy
from kubegate.dataplane.policies.endpoints import Addr, EndpointSet, EndpointState


class HealthState:
    """One endpoint's probe thresholds. ``successes``/``failures``: the current run of each."""

    __slots__ = (
        "_healthy_after",
        "_unhealthy_after",
        "endpoint",
        "failed",
        "failures",
        "passed",
        "successes",
    )

    def __init__(self, config: HealthCheckPolicy, endpoint: EndpointState) -> None:
        self._healthy_after = config.healthy_threshold
        self._unhealthy_after = config.unhealthy_threshold
        self.endpoint = endpoint
        self.successes = 0
        self.failures = 0
        self.passed = 0  # probes that passed, in total
        self.failed = 0  # ... and that failed

    def observe(self, ok: bool) -> bool:
        """Count one probe result; True when it flipped the endpoint's health."""
        ep = self.endpoint
        if ok:
            self.passed += 1
            self.failures = 0
            self.successes += 1
            if not ep.healthy and self.successes >= self._healthy_after:
                ep.healthy = True
                return True
        else:
            self.failed += 1
            self.successes = 0
            self.failures += 1
            if ep.healthy and self.failures >= self._unhealthy_after:
                ep.healthy = False
                return True
        return False

    def __repr__(self) -> str:
        host, port = self.endpoint.addr
        verdict = "healthy" if self.endpoint.healthy else "unhealthy"
        return f"<HealthState {host}:{port} {verdict} successes={self.successes} failures={self.failures}>"


class HealthCheck:
    """A backend's check, for the prober: what to ask, how often, and a :class:`HealthState` per endpoint."""

    __slots__ = ("interval", "path", "states", "timeout")

    def __init__(self, config: HealthCheckPolicy, endpoints: EndpointSet) -> None:
        self.path = config.path
        self.interval = config.interval_ms / 1000
        self.timeout = config.timeout_ms / 1000
        self.states: dict[Addr, HealthState] = {ep.addr: HealthState(config, ep) for ep in endpoints}

    def observe(self, addr: Addr, ok: bool) -> bool:
        """A probe result for ``addr`` (False for an endpoint no longer in the set)."""
        state = self.states.get(addr)
        return state.observe(ok) if state is not None else False

    def __repr__(self) -> str:
        unhealthy = sum(1 for s in self.states.values() if not s.endpoint.healthy)
        total = len(self.states)
        return f"<HealthCheck GET {self.path} every {self.interval:g}s: {unhealthy}/{total} unhealthy>"
