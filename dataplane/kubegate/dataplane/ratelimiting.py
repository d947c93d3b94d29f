"""A route's rate limit at run time: the key of each request, the limiter of its scope, the headers.

Built by :class:`~kubegate.dataplane.edge.EdgeRuntime` from the table's
:class:`~kubegate.compiler.edge.RateLimit`; the limiters themselves are :mod:`.policies.ratelimit` (GCRA,
pure, the Local scope) and :mod:`.redislimit` (the same GCRA in one Redis script, the Global scope, with a
local fallback while Redis does not answer within its budget). Scope: ``Global`` when the route says so or
says nothing and the data plane has ``--redis-url``; ``Local`` otherwise. A Global limit without Redis is
enforced as a Local one of ``requestsPerSecond / replicas``, as it is while Redis is down: a
:class:`~kubegate.dataplane.policies.ratelimit.ReplicaShare` reading the process's
:class:`~kubegate.dataplane.policies.ratelimit.ReplicaCount` (``EdgeContext.replicas``, which the operator
sets through the admin API), so that the share follows the replica set without a new table and the
buckets' state is kept (see "The replicas' share" in that module).

The key of a request (:meth:`RouteLimit.key`): ``ClientIP`` is the socket peer, unless the peer is one of
``--trusted-proxies``: then ``X-Forwarded-For`` is read right to left and the first address that is not a
trusted proxy is the client (a client cannot choose its key by sending the header itself, since only
entries added by trusted proxies are skipped). ``User`` is the identity auth admitted, ``Header`` the
header's value; without one, the request falls back to its client address. ``Route`` is one key.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kubegate.compiler.edge import RateLimit
from kubegate.dataplane.policies.ratelimit import (
    Decision,
    Gcra,
    Limiter,
    LocalLimiter,
    RateLimitHeaders,
    ReplicaCount,
    ReplicaShare,
)
from kubegate.dataplane.policies.ratelimit import ratelimit_headers as _headers
from kubegate.dataplane.redislimit import GlobalLimit, RedisBackend, RedisLimiter

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """``--trusted-proxies``: comma-separated CIDRs or addresses; ValueError names a bad one."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ValueError(f"not an address or CIDR: {item!r}") from exc
    return tuple(networks)


def is_trusted(address: bytes, trusted: Sequence[Network]) -> bool:
    """Is ``address`` (an IP address as bytes) in one of the ``trusted`` networks?"""
    try:
        ip = ipaddress.ip_address(address.decode("latin-1").strip())
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(
    peer: bytes, peer_trusted: bool, forwarded_for: bytes | None, trusted: Sequence[Network]
) -> bytes:
    """The client of a request: ``peer``, or, when ``peer`` is a trusted proxy (``peer_trusted``, decided
    once per connection by the proxy), the rightmost address of ``X-Forwarded-For`` that is not one (the
    leftmost if all are)."""
    if not peer_trusted or forwarded_for is None:
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(b",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


class RouteLimit:
    __slots__ = ("header", "headers", "kind", "limiter", "local", "scope", "trusted")

    def __init__(
        self,
        config: RateLimit,
        route_id: str,
        *,
        redis: RedisBackend | None,
        replicas: ReplicaCount,
        trusted: tuple[Network, ...],
    ) -> None:
        self.kind = config.key
        self.header = config.header.encode() if config.header is not None else None
        self.trusted = trusted
        rate, burst = config.requests_per_second, config.burst
        scope = config.scope or ("Global" if redis is not None else "Local")
        self.scope = scope
        self.headers = RateLimitHeaders(route_id, rate, burst)
        self.limiter: Limiter
        #: The limiter when it is a :class:`LocalLimiter` (it always answers at once), else None.
        self.local: LocalLimiter | None = None
        if scope == "Local":
            self.limiter = self.local = LocalLimiter(Gcra(rate, burst), time.monotonic)
        else:
            fallback = ReplicaShare(rate, burst, replicas)  # follows the count, table or not
            if redis is None:  # a Global limit without Redis: each replica its share
                self.limiter = self.local = LocalLimiter(fallback, time.monotonic)
            else:
                limiter = RedisLimiter(
                    redis.client, rate, burst, key_prefix=f"kubegate:rl:{route_id}:", backend=redis
                )
                self.limiter = GlobalLimit(limiter, fallback)

    def key(
        self,
        peer: bytes,
        peer_trusted: bool,
        forwarded_for: bytes | None,
        header: bytes | None,
        identity: str | None,
    ) -> bytes:
        kind = self.kind
        if kind == "Route":
            return b"*"
        if kind == "User" and identity is not None:
            return b"u:" + identity.encode("utf-8", "surrogateescape")
        if kind == "Header" and header is not None:
            return b"h:" + header
        return b"ip:" + client_address(peer, peer_trusted, forwarded_for, self.trusted)

    def lines(self, decision: Decision) -> list[bytes]:
        """``RateLimit-Policy``, ``RateLimit`` and, for a refusal, ``Retry-After``."""
        return _headers(self.headers, decision)


class RateLimitCollector(Collector):
    """``/metrics`` for the limits' Redis side, read at scrape time: the decisions each Global limit took
    from its local share because Redis did not answer (``kubegate_rate_limit_fallbacks_total``; these
    counters belong to the table's limiters, so they start over when a new table is loaded), and the
    Redis backend's state and counters (shared with the response cache)."""

    def __init__(
        self, limits: Callable[[], Iterable[tuple[str, RouteLimit]]], redis: RedisBackend | None
    ) -> None:
        self._limits = limits
        self._redis = redis

    def collect(self) -> Iterator[Any]:
        fallbacks = CounterMetricFamily(
            "kubegate_rate_limit_fallbacks",
            "Decisions of Global rate limits taken by the replica's local share (requestsPerSecond / "
            "replicas) because Redis did not answer within its budget or was being skipped",
            labels=["route"],
        )
        for route, limit in sorted(self._limits(), key=lambda item: item[0]):
            limiter = limit.limiter
            if isinstance(limiter, GlobalLimit):
                fallbacks.add_metric([route], limiter.fallbacks)
        yield fallbacks
        redis = self._redis
        if redis is None:
            return
        status = redis.status()
        up = GaugeMetricFamily(
            "kubegate_redis_up", "1 while the Redis of Global limits and shared caches answers, else 0"
        )
        up.add_metric([], 1.0 if status["state"] == "up" else 0.0)
        yield up
        for name, help_text in (
            ("calls", "Commands sent to Redis or skipped (rate-limit checks, cache reads and writes)"),
            ("failures", "Commands Redis gave no usable answer to (errors, broken connections, the budget)"),
            ("timeouts", "Commands not answered within the budget (50 ms)"),
            ("skipped", "Commands not sent because Redis was down (within its backoff)"),
            ("transitions", "Times Redis went from up to down"),
        ):
            family = CounterMetricFamily(f"kubegate_redis_{name}", help_text)
            family.add_metric([], status[name])
            yield family
