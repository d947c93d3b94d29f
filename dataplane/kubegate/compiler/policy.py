"""Traffic policies in the compiled table: plain frozen config, what the data plane builds runtime state from.

The public API (``GatewayRoute.spec.loadBalancer``, ``retry``, ``circuitBreaker``, ``outlierDetection``,
``healthCheck``, ``bulkhead``) is validated in :mod:`kubegate.api.models`; the compiler turns it into these
models, with durations as integer milliseconds and every default filled in, so that the data plane never
interprets user syntax and two routes with the same effective policy compare equal (the data plane keeps
runtime state, such as an open circuit, across table swaps exactly when a route's policy is equal).

A route without any policy has ``policy = None`` and costs the hot path nothing.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from kubegate.api import models
from kubegate.api.lean import LeanModel

LoadBalancerType = Literal["RoundRobin", "LeastRequest", "Random", "ConsistentHash"]
#: What a retry may be triggered by: ``connect-failure`` (nothing reached the upstream), ``reset`` (the
#: connection broke before a response), ``timeout`` (per-try timeout), ``gateway-error`` (502, 503, 504),
#: ``5xx`` (any 5xx), or one 4xx or 5xx status code as a string ("503", "429").
RETRY_ON_WORDS = models.RETRY_ON_WORDS
_RETRY_ON = re.compile(models.RETRY_ON_PATTERN)


class _Frozen(LeanModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class HashOn(_Frozen):
    """Exactly one source of the ConsistentHash key."""

    header: str | None = Field(default=None, min_length=1, description="a request header (case-insensitive)")
    cookie: str | None = Field(default=None, min_length=1)
    source_ip: bool = Field(default=False, alias="sourceIP")
    query_param: str | None = Field(default=None, min_length=1, alias="queryParam")

    @model_validator(mode="after")
    def _exactly_one(self) -> HashOn:
        chosen = [
            self.header is not None,
            self.cookie is not None,
            self.source_ip,
            self.query_param is not None,
        ]
        if sum(chosen) != 1:
            raise ValueError("hashOn needs exactly one of header, cookie, sourceIP, queryParam")
        return self


class LoadBalancerPolicy(_Frozen):
    type: LoadBalancerType = "RoundRobin"
    hash_on: HashOn | None = Field(default=None, alias="hashOn")

    @model_validator(mode="after")
    def _hash_on_only_for_consistent_hash(self) -> LoadBalancerPolicy:
        if (self.type == "ConsistentHash") != (self.hash_on is not None):
            raise ValueError("hashOn is required with type ConsistentHash and allowed only there")
        return self


class RetryPolicy(_Frozen):
    attempts: int = Field(default=0, ge=0, le=10, description="retries after the first try")
    retry_on: tuple[str, ...] = Field(
        default=("connect-failure", "gateway-error", "reset"), alias="retryOn", max_length=16
    )
    per_try_timeout_ms: int | None = Field(default=None, ge=1, alias="perTryTimeoutMs")
    backoff_base_ms: int = Field(default=25, ge=1, alias="backoffBaseMs")
    backoff_max_ms: int = Field(default=250, ge=1, alias="backoffMaxMs")
    budget_percent: int = Field(default=20, ge=0, le=100, alias="budgetPercent")
    min_concurrent_retries: int = Field(default=3, ge=0, alias="minConcurrentRetries")
    retry_non_idempotent: bool = Field(default=False, alias="retryNonIdempotent")

    @model_validator(mode="after")
    def _check(self) -> RetryPolicy:
        for word in self.retry_on:
            if not _RETRY_ON.fullmatch(word):
                raise ValueError(
                    f"retryOn: {word!r} is not one of {', '.join(RETRY_ON_WORDS)} or a 4xx or 5xx code"
                )
        if self.backoff_max_ms < self.backoff_base_ms:
            raise ValueError("backoff max must be at least backoff base")
        return self


class CircuitBreakerPolicy(_Frozen):
    consecutive_failures: int = Field(default=5, ge=1, alias="consecutiveFailures")
    failure_ratio: float = Field(default=0.5, gt=0, le=1, alias="failureRatio")
    minimum_requests: int = Field(default=20, ge=1, alias="minimumRequests")
    window_ms: int = Field(default=10_000, ge=100, alias="windowMs")
    open_ms: int = Field(default=30_000, ge=100, alias="openMs")
    half_open_requests: int = Field(default=3, ge=1, alias="halfOpenRequests")


class OutlierDetectionPolicy(_Frozen):
    consecutive_failures: int = Field(default=5, ge=1, alias="consecutiveFailures")
    ejection_ms: int = Field(default=30_000, ge=100, alias="ejectionMs")
    max_ejection_percent: int = Field(default=50, ge=0, le=100, alias="maxEjectionPercent")


class HealthCheckPolicy(_Frozen):
    path: str = Field(default="/healthz", min_length=1, pattern=models.HEALTH_PATH_PATTERN)
    interval_ms: int = Field(default=5_000, ge=100, alias="intervalMs")
    timeout_ms: int = Field(default=1_000, ge=1, alias="timeoutMs")
    unhealthy_threshold: int = Field(default=3, ge=1, alias="unhealthyThreshold")
    healthy_threshold: int = Field(default=2, ge=1, alias="healthyThreshold")

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheckPolicy:
        if self.timeout_ms > self.interval_ms:
            raise ValueError("timeoutMs must not be longer than intervalMs")
        return self


class BulkheadPolicy(_Frozen):
    max_concurrent: int = Field(default=100, ge=1, alias="maxConcurrent")
    max_queue: int = Field(default=0, ge=0, alias="maxQueue")
    queue_timeout_ms: int = Field(default=1_000, ge=1, alias="queueTimeoutMs")


class RoutePolicy(_Frozen):
    """Every traffic policy of one route; a field left None is a policy the route does not use."""

    load_balancer: LoadBalancerPolicy | None = Field(default=None, alias="loadBalancer")
    retry: RetryPolicy | None = None
    circuit_breaker: CircuitBreakerPolicy | None = Field(default=None, alias="circuitBreaker")
    outlier_detection: OutlierDetectionPolicy | None = Field(default=None, alias="outlierDetection")
    health_check: HealthCheckPolicy | None = Field(default=None, alias="healthCheck")
    bulkhead: BulkheadPolicy | None = None
