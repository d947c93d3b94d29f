"""Choosing an endpoint inside one backend: round robin, random, least request, consistent hash.

The split across a route's backends stays in :mod:`kubegate.dataplane.balancer` (smooth weighted round
robin); these balancers replace its round robin *inside* a backend when a route sets ``loadBalancer``.
Every balancer has the same call, ``pick(now, key=None, exclude=None)``:

- only *available* endpoints are picked (healthy and not ejected, see :mod:`.endpoints`); when none is,
  all of them are used (panic mode, counted in ``EndpointSet.panics``) rather than answering 503;
- ``exclude`` is the endpoint a retry should avoid: it is picked only if no other endpoint is available;
- ``key`` is the consistent-hash key (:func:`hash_key`), ignored by the others;
- the common path is O(1): a cursor, one or two random draws, or a binary search on the ring. Only when
  the first candidates are out (ejected, unhealthy, excluded) does a pick scan the endpoints.

**LeastRequest** is Envoy's *power of two choices*: two distinct random endpoints, the one with fewer
requests in flight wins. It needs no sorted structure and avoids the herd that "always the least loaded"
sends to a freshly added (empty) endpoint. **ConsistentHash** is a ring of 160 virtual nodes per endpoint
(ketama's count; the busiest of 10 endpoints gets about 1.1x its share), at most 65,536 points in all,
placed from SHAKE-128 of the address, which is stable across processes and machines, unlike ``hash()``.
Keys are hashed with CRC-32: 8x cheaper per request than BLAKE2b, and it spreads keys over the ring as
evenly. When one of N endpoints leaves, only the keys it held move (about 1/N); an unavailable owner is
skipped by walking the ring to the next endpoint, so its keys come back when it does. A request without
the key goes round robin. With ``balance_factor`` (1.25 means "no endpoint above 1.25x the mean in-flight
load") the walk also skips endpoints at that bound (*consistent hashing with bounded loads*, Mirrokni et
al.); it is off by default because it trades stickiness for balance even at low load: two concurrent
requests with the same key may land apart.
"""

from __future__ import annotations

import hashlib
import random
import struct
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import unquote_plus
from zlib import crc32

from kubegate.compiler.policy import HashOn, LoadBalancerPolicy
from kubegate.dataplane.matcher import HeaderLookup
from kubegate.dataplane.policies.endpoints import Addr, EndpointSet, EndpointState

#: Virtual nodes per endpoint on the consistent-hash ring ...
VNODES: Final = 160
#: ... unless the ring would get bigger than this: a ring of 1000 endpoints gets 65 each (and builds in
#: tens of milliseconds rather than hundreds). An endpoint's points are a prefix of one SHAKE-128 stream,
#: so crossing this limit (one endpoint more or less) moves only the keys of the points dropped or added.
MAX_RING: Final = 1 << 16


class Balancer:
    """The common part: the endpoint set and the slow path for when the fast one found nothing."""

    __slots__ = ("_eps", "endpoints")

    def __init__(self, endpoints: EndpointSet) -> None:
        self.endpoints = endpoints
        self._eps = endpoints.endpoints

    def pick(self, now: float, key: bytes | None = None, exclude: Addr | None = None) -> EndpointState | None:
        raise NotImplementedError

    def _candidates(self, now: float, exclude: Addr | None) -> list[EndpointState]:
        """Available endpoints but ``exclude``; else ``exclude`` if it is available; else all (panic)."""
        usable = [ep for ep in self._eps if ep.healthy and now >= ep.ejected_until]
        others = [ep for ep in usable if ep.addr != exclude]
        if others:
            return others
        if usable:
            return usable
        self.endpoints.panics += 1
        return [ep for ep in self._eps if ep.addr != exclude] or list(self._eps)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._eps)} endpoints>"


class RoundRobin(Balancer):
    """Each available endpoint in turn; skipping an unavailable one does not double its neighbour's share."""

    __slots__ = ("_next",)

    def __init__(self, endpoints: EndpointSet) -> None:
        super().__init__(endpoints)
        self._next = 0  # always < len(endpoints), or 0

    def pick(self, now: float, key: bytes | None = None, exclude: Addr | None = None) -> EndpointState | None:
        eps = self._eps
        n = len(eps)
        i = self._next
        if i < n:
            ep = eps[i]
            if ep.healthy and now >= ep.ejected_until and (exclude is None or ep.addr != exclude):
                i += 1
                self._next = i if i < n else 0
                return ep
        elif n == 0:
            return None
        for _ in range(n - 1):  # the cursor's endpoint is out: the next available one
            i += 1
            if i >= n:
                i = 0
            ep = eps[i]
            if ep.healthy and now >= ep.ejected_until and ep.addr != exclude:
                i += 1
                self._next = i if i < n else 0
                return ep
        if exclude is not None:  # nothing else is available: the excluded one, if it is
            only = self.endpoints.get(exclude)
            if only is not None and only.healthy and now >= only.ejected_until:
                return only
        self.endpoints.panics += 1
        if n == 1:
            return eps[0]
        i = self._next  # panic: keep rotating over all of them
        self._next = i + 1 if i + 1 < n else 0
        ep = eps[i]
        return ep if ep.addr != exclude else eps[self._next]


class _Drawing(Balancer):
    """A balancer that draws from the injected generator (seeded in tests)."""

    __slots__ = ("_random",)

    def __init__(self, endpoints: EndpointSet, rng: random.Random) -> None:
        super().__init__(endpoints)
        self._random = rng.random


class Random(_Drawing):
    """A uniformly random available endpoint, from the injected generator."""

    __slots__ = ()

    def pick(self, now: float, key: bytes | None = None, exclude: Addr | None = None) -> EndpointState | None:
        eps = self._eps
        n = len(eps)
        if n == 0:
            return None
        ep = eps[int(self._random() * n)]
        if ep.healthy and now >= ep.ejected_until and (exclude is None or ep.addr != exclude):
            return ep
        candidates = self._candidates(now, exclude)  # uniform over these: the draw above was rejected
        return candidates[int(self._random() * len(candidates))]


class LeastRequest(_Drawing):
    """Power of two choices on ``in_flight``: two distinct random endpoints, the less busy one wins."""

    __slots__ = ()

    def pick(self, now: float, key: bytes | None = None, exclude: Addr | None = None) -> EndpointState | None:
        eps = self._eps
        n = len(eps)
        if n > 1:
            m = n - 1
            pair = int(self._random() * (n * m))  # one draw for two distinct indices
            i = pair // m
            j = pair - i * m
            if j >= i:
                j += 1
            a = eps[i]
            b = eps[j]
            if a.healthy and now >= a.ejected_until and (exclude is None or a.addr != exclude):
                if b.in_flight < a.in_flight and b.healthy and now >= b.ejected_until and b.addr != exclude:
                    return b
                return a
            if b.healthy and now >= b.ejected_until and (exclude is None or b.addr != exclude):
                return b
            return _two_choices(self._candidates(now, exclude), self._random)
        if n == 1:
            ep = eps[0]
            if not (ep.healthy and now >= ep.ejected_until):
                self.endpoints.panics += 1
            return ep
        return None


def _two_choices(candidates: Sequence[EndpointState], rand: Callable[[], float]) -> EndpointState:
    n = len(candidates)
    if n == 1:
        return candidates[0]
    i = int(rand() * n)
    j = int(rand() * (n - 1))
    if j >= i:
        j += 1
    a, b = candidates[i], candidates[j]
    return b if b.in_flight < a.in_flight else a


class ConsistentHash(Balancer):
    """A ring of :data:`VNODES` points per endpoint; see the module docstring. ``key=None``: round robin."""

    __slots__ = ("_factor", "_owners", "_points", "_round_robin")

    def __init__(
        self,
        endpoints: EndpointSet,
        *,
        vnodes: int = VNODES,
        balance_factor: float | None = None,
    ) -> None:
        super().__init__(endpoints)
        # Sorted by (point, address): the order of the endpoints in the set does not matter, and neither
        # does a (rare) collision of two points. Packed into one int per point: sorting ints is fast.
        ranked = sorted(self._eps, key=lambda ep: ep.addr)
        per_endpoint = min(vnodes, max(1, MAX_RING // max(1, len(ranked))))
        shift = max(1, len(ranked).bit_length())
        packed: list[int] = []
        for rank, ep in enumerate(ranked):
            packed.extend((point << shift) | rank for point in _ring_points(ep.addr, per_endpoint))
        packed.sort()
        mask = (1 << shift) - 1
        self._points = [p >> shift for p in packed]
        self._owners = [ranked[p & mask] for p in packed]
        self._round_robin = RoundRobin(endpoints)
        self._factor = balance_factor

    def pick(self, now: float, key: bytes | None = None, exclude: Addr | None = None) -> EndpointState | None:
        if key is None:
            return self._round_robin.pick(now, None, exclude)
        points = self._points
        i = bisect_right(points, crc32(key))
        if i == len(points):
            if i == 0:
                return None
            i = 0
        ep = self._owners[i]
        if (
            ep.healthy
            and now >= ep.ejected_until
            and (exclude is None or ep.addr != exclude)
            and (self._factor is None or ep.in_flight * len(self._eps) < self._bound())
        ):
            return ep
        return self._walk(i, now, exclude)

    def owner(self, key: bytes) -> EndpointState | None:
        """The endpoint ``key`` belongs to on the ring, whatever its state (for tests and ``/services``)."""
        points = self._points
        if not points:
            return None
        i = bisect_right(points, crc32(key))
        return self._owners[i if i < len(points) else 0]

    def _bound(self) -> float:
        """Bounded load: an endpoint may take one more request while ``in_flight * n < bound``.

        That is ``in_flight < ceil(factor * (total + 1) / n)``, the paper's capacity, for integers.
        """
        assert self._factor is not None
        return self._factor * (self.endpoints.in_flight + 1)

    def _walk(self, start: int, now: float, exclude: Addr | None) -> EndpointState:
        """The next endpoint on the ring that is available (and under the load bound, if any)."""
        owners = self._owners
        size = len(owners)
        usable = sum(1 for ep in self._eps if ep.healthy and now >= ep.ejected_until and ep.addr != exclude)
        if usable:
            bound = self._bound() if self._factor is not None else 0.0
            n = len(self._eps)
            seen: set[EndpointState] = set()
            first: EndpointState | None = None  # the first available one, should all be at the bound
            for step in range(size):
                ep = owners[(start + step) % size]
                if ep in seen:
                    continue
                seen.add(ep)
                if ep.healthy and now >= ep.ejected_until and ep.addr != exclude:
                    if self._factor is None or ep.in_flight * n < bound:
                        return ep
                    if first is None:
                        first = ep
                    usable -= 1
                    if not usable:
                        break
            assert first is not None
            return first
        if exclude is not None:
            only = self.endpoints.get(exclude)
            if only is not None and only.healthy and now >= only.ejected_until:
                return only
        self.endpoints.panics += 1  # panic: the key's own endpoint, or the next one when it is excluded
        for step in range(size):
            ep = owners[(start + step) % size]
            if ep.addr != exclude:
                return ep
        return owners[start]


def _ring_points(addr: Addr, count: int) -> tuple[int, ...]:
    """``count`` 32-bit points of ``addr`` on the ring: a prefix of one SHAKE-128 stream of the address."""
    host, port = addr
    return struct.unpack(f">{count}I", hashlib.shake_128(f"{host}:{port}".encode()).digest(4 * count))


def make_balancer(
    policy: LoadBalancerPolicy | None,
    endpoints: EndpointSet,
    rng: random.Random,
    *,
    balance_factor: float | None = None,
) -> Balancer:
    """The balancer a route's ``loadBalancer`` asks for (None: round robin) over one backend's endpoints."""
    kind = policy.type if policy is not None else "RoundRobin"
    if kind == "LeastRequest":
        return LeastRequest(endpoints, rng)
    if kind == "Random":
        return Random(endpoints, rng)
    if kind == "ConsistentHash":
        return ConsistentHash(endpoints, balance_factor=balance_factor)
    return RoundRobin(endpoints)


def hash_key(
    hash_on: HashOn,
    headers: HeaderLookup,
    query: str,
    cookies: str | None,
    client_ip: bytes,
) -> bytes | None:
    """The consistent-hash key of a request, or None (round robin) when the request does not carry it.

    ``headers`` has lower-case names; ``query`` is the raw query string (no ``?``); ``cookies`` the value of
    the ``Cookie`` header (several joined with ``"; "``). A present but empty value counts as missing: it
    would send every such request to one endpoint.
    """
    if hash_on.header is not None:
        value = headers.get(hash_on.header.lower())
    elif hash_on.cookie is not None:
        value = _cookie(cookies, hash_on.cookie) if cookies else None
    elif hash_on.query_param is not None:
        value = _query_param(query, hash_on.query_param) if query else None
    else:
        return client_ip or None
    return value.encode("utf-8", "surrogateescape") if value else None


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


def _query_param(query: str, name: str) -> str | None:
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name or (("%" in key or "+" in key) and unquote_plus(key) == name):
            return unquote_plus(value) if ("%" in value or "+" in value) else value
    return None
