"""A route's rate limit at run time: the key of each request, the limiter of its scope, the headers.

Built by :class:`~kubegate.dataplane.edge.EdgeRuntime` from the table's
:class:`~kubegate.compiler.edge.RateLimit`; the limiters themselves are :mod:`.policies.ratelimit` (GCRA,
pure, the Local scope) and :mod:`.redislimit` (the same GCRA in one Redis script, the Global scope, with a
local fallback while Redis does not answer within its budget). Scope: ``Global`` when the route says so or
says nothing and the data plane has ``--redis-url``; ``Local`` otherwise. A Global limit without Redis is
enforced as a Local one of ``requestsPerSecond / replicas``, as it is while Redis is down.

The key of a request (:meth:`RouteLimit.key`): ``ClientIP`` is the socket peer, unless the peer is one of
``--trusted-proxies``: then ``X-Forwarded-For`` is read right to left and the first address that is not a
trusted proxy is the client (a client cannot choose its key by sending the header itself, since only
entries added by trusted proxies are skipped). ``User`` is the identity auth admitted, ``Header`` the
header's value; without one, the request falls back to its client address. ``Route`` is one key.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence

from kubegate.compiler.edge import RateLimit
from kubegate.dataplane.policies.ratelimit import Decision, Gcra, Limiter, LocalLimiter, RateLimitHeaders
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
    __slots__ = ("header", "headers", "kind", "limiter", "scope", "trusted")

    def __init__(
        self,
        config: RateLimit,
        route_id: str,
        *,
        redis: RedisBackend | None,
        replicas: int,
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
        if scope == "Local":
            self.limiter = LocalLimiter(Gcra(rate, burst), time.monotonic)
        else:
            share = max(1, replicas)
            fallback = Gcra(rate / share, burst // share)
            if redis is None:  # a Global limit without Redis: each replica its share
                self.limiter = LocalLimiter(fallback, time.monotonic)
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
