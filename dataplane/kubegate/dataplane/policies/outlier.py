"""Passive outlier detection: take an endpoint that keeps failing out of rotation for a while.

Where the circuit breaker judges a whole backend, this judges its endpoints one by one, from the results
of real requests (no probes): ``consecutiveFailures`` failures in a row eject the endpoint for
``ejectionTime`` x the number of times it has been ejected, at most 10x (an endpoint that flaps is kept
out longer each time). That multiplier decays as Envoy's does: each full ``ejectionTime`` an endpoint
spends back in rotation takes one off it, computed lazily when the endpoint's next result arrives (an
endpoint that failed once a day for weeks is ejected for ``ejectionTime``, not 10x). The ejection ends by
itself: :meth:`EndpointState.available` compares
``ejected_until`` with the clock, there is no timer to run. A success resets the endpoint's count of
consecutive failures, and so does an ejection; failures that arrive while it is ejected (requests sent
before) are not counted.

At most ``maxEjectionPercent`` of the set's endpoints are ejected at once (those whose ``ejected_until``
is still ahead): a failure that would go beyond it is counted in ``capped`` and ejects nothing, so that a
backend-wide outage does not empty the rotation (that is the breaker's job). The count of ejected
endpoints is a scan of the set, done only when an endpoint reaches the threshold.
"""

from __future__ import annotations

from typing import Final

from kubegate.compiler.policy import OutlierDetectionPolicy
from kubegate.dataplane.policies.endpoints import EndpointSet, EndpointState

#: The longest ejection, as a multiple of ``ejectionTime``.
MAX_MULTIPLIER: Final = 10


class OutlierDetector:
    """Per-endpoint failure counting and ejection over one :class:`EndpointSet`."""

    __slots__ = ("_max_percent", "_threshold", "capped", "ejection_s", "ejections", "endpoints")

    def __init__(self, config: OutlierDetectionPolicy, endpoints: EndpointSet) -> None:
        self._threshold = config.consecutive_failures
        self._max_percent = config.max_ejection_percent
        self.ejection_s = config.ejection_ms / 1000
        self.endpoints = endpoints
        self.ejections = 0  # endpoints ejected, in total
        self.capped = 0  # ejections refused by maxEjectionPercent

    def record(self, ep: EndpointState, success: bool, now: float) -> bool:
        """Count one result of ``ep``; True when this failure ejected it."""
        if success:
            ep.consecutive_failures = 0
            if ep.ejections:
                self._decay(ep, now)
            return False
        if now < ep.ejected_until:
            return False  # a late result of a request sent before the ejection
        ep.consecutive_failures += 1
        if ep.consecutive_failures < self._threshold:
            return False
        if ep.ejections:
            self._decay(ep, now)
        eps = self.endpoints.endpoints
        ejected = sum(1 for other in eps if other.ejected_until > now)
        if (ejected + 1) * 100 > self._max_percent * len(eps):
            self.capped += 1
            return False
        ep.ejections += 1
        ep.ejected_until = now + self.ejection_s * min(ep.ejections, MAX_MULTIPLIER)
        ep.consecutive_failures = 0
        self.ejections += 1
        return True

    def _decay(self, ep: EndpointState, now: float) -> None:
        """One ejection forgotten per full ejectionTime spent in rotation since the last ejection ended."""
        periods = int((now - ep.ejected_until) / self.ejection_s) if now > ep.ejected_until else 0
        if periods:
            forgotten = min(periods, ep.ejections)
            ep.ejections -= forgotten
            # the reference point moves on by what was counted (it stays in the past: still available)
            ep.ejected_until += forgotten * self.ejection_s

    def __repr__(self) -> str:
        return (
            f"<OutlierDetector after {self._threshold} failures for {self.ejection_s:g}s, "
            f"max {self._max_percent}%: ejections={self.ejections} capped={self.capped}>"
        )
