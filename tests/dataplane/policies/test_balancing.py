"""Balancers inside a backend, with fixed seeds and an injected clock.

Aspects: round robin (exact order and shares, skipping unavailable endpoints without doubling a
neighbour's share); random (reproducible, roughly uniform); least request (power of two choices avoids
an endpoint holding requests, and shifts load off a slow endpoint in a simulation); consistent hash
(stickiness, independence from endpoint order and from Python's hash seed, spread, remapping only the
keys of an endpoint that leaves and about 1/N of them, an unavailable owner skipped and its keys coming
back, bounded load, round robin without a key); for every balancer: unavailable endpoints skipped, panic
mode using all of them and counting it, ``exclude`` honoured; the factory; hash-key extraction.
"""

from __future__ import annotations

import collections
import random
import subprocess
import sys

import pytest

from kubegate.compiler.policy import HashOn, LoadBalancerPolicy
from kubegate.dataplane.policies.balancing import (
    Balancer,
    ConsistentHash,
    LeastRequest,
    Random,
    RoundRobin,
    hash_key,
    make_balancer,
)
from kubegate.dataplane.policies.endpoints import Addr, EndpointSet, EndpointState

ADDRS: list[Addr] = [(f"10.0.0.{i}", 8080) for i in range(1, 11)]
KEYS = [f"user-{i}".encode() for i in range(10_000)]
KINDS = ("RoundRobin", "Random", "LeastRequest", "ConsistentHash")


def _make(kind: str, eps: EndpointSet, seed: int = 1) -> Balancer:
    policy = None
    if kind != "RoundRobin":
        hash_on = HashOn(header="x-user") if kind == "ConsistentHash" else None
        policy = LoadBalancerPolicy(type=kind, hash_on=hash_on)
    return make_balancer(policy, eps, random.Random(seed))


def _pick(b: Balancer, now: float = 0.0, key: bytes | None = None, exclude: Addr | None = None) -> Addr:
    ep = b.pick(now, key, exclude)
    assert ep is not None
    return ep.addr


# -- round robin -------------------------------------------------------------------------------------------


def test_round_robin_exact_order_and_shares() -> None:
    rr = RoundRobin(EndpointSet(ADDRS[:3]))
    picks = [_pick(rr) for _ in range(300)]
    assert picks[:6] == [ADDRS[0], ADDRS[1], ADDRS[2]] * 2
    assert collections.Counter(picks) == {ADDRS[0]: 100, ADDRS[1]: 100, ADDRS[2]: 100}


def test_round_robin_skips_unavailable_without_doubling_a_neighbour() -> None:
    eps = EndpointSet(ADDRS[:4])
    eps.endpoints[1].ejected_until = 50.0
    rr = RoundRobin(eps)
    picks = [_pick(rr, now=10.0) for _ in range(300)]
    assert collections.Counter(picks) == {ADDRS[0]: 100, ADDRS[2]: 100, ADDRS[3]: 100}
    back = [_pick(rr, now=50.0) for _ in range(400)]  # the ejection ended
    assert collections.Counter(back) == {a: 100 for a in ADDRS[:4]}


# -- random ------------------------------------------------------------------------------------------------


def test_random_is_reproducible_and_roughly_uniform() -> None:
    eps = EndpointSet(ADDRS[:5])

    def sequence(seed: int) -> list[Addr]:
        b = Random(eps, random.Random(seed))
        return [_pick(b) for _ in range(50)]

    assert sequence(42) == sequence(42) and sequence(42) != sequence(43)
    counts = collections.Counter(_pick(b) for b in [Random(eps, random.Random(42))] for _ in range(50_000))
    assert len(counts) == 5
    assert all(9_500 < c < 10_500 for c in counts.values()), counts


def test_random_uniform_over_the_available_ones() -> None:
    eps = EndpointSet(ADDRS[:5])
    eps.endpoints[0].healthy = False
    eps.endpoints[3].ejected_until = 1e9
    b = Random(eps, random.Random(5))
    counts = collections.Counter(_pick(b) for _ in range(30_000))
    assert set(counts) == {ADDRS[1], ADDRS[2], ADDRS[4]}
    assert all(9_500 < c < 10_500 for c in counts.values()), counts


# -- least request -----------------------------------------------------------------------------------------


def test_least_request_never_picks_the_endpoint_holding_requests() -> None:
    eps = EndpointSet(ADDRS[:4])
    slow = eps.endpoints[2]
    for _ in range(10):
        eps.start(slow)  # ten requests stuck on it
    b = LeastRequest(eps, random.Random(3))
    counts = collections.Counter(_pick(b) for _ in range(3_000))
    # Of two distinct endpoints, the one with fewer in flight wins: the slow one never does.
    assert slow.addr not in counts
    assert all(800 < c < 1_200 for c in counts.values()), counts


def _slow_endpoint_share(kind: str) -> float:
    """Requests arrive one per tick; each holds its endpoint for 2 ticks, 40 on the slow one."""
    eps = EndpointSet(ADDRS[:4])
    slow = eps.endpoints[0]
    b = _make(kind, eps, seed=11)
    running: list[tuple[int, EndpointState]] = []
    picked = collections.Counter[Addr]()
    for tick in range(4_000):
        for done in [r for r in running if r[0] <= tick]:
            running.remove(done)
            eps.finish(done[1])
        ep = b.pick(float(tick))
        assert ep is not None
        eps.start(ep)
        picked[ep.addr] += 1
        running.append((tick + (40 if ep is slow else 2), ep))
    return picked[slow.addr] / 4_000


def test_least_request_moves_load_off_a_slow_endpoint() -> None:
    assert _slow_endpoint_share("RoundRobin") == 0.25
    assert _slow_endpoint_share("Random") > 0.2
    assert _slow_endpoint_share("LeastRequest") < 0.1


# -- consistent hash ---------------------------------------------------------------------------------------


def _owners(ring: ConsistentHash, keys: list[bytes]) -> dict[bytes, Addr]:
    return {k: _pick(ring, key=k) for k in keys}


def test_consistent_hash_is_sticky_and_independent_of_endpoint_order() -> None:
    ring = ConsistentHash(EndpointSet(ADDRS))
    first = _owners(ring, KEYS[:1000])
    assert _owners(ring, KEYS[:1000]) == first
    shuffled = ADDRS[:]
    random.Random(9).shuffle(shuffled)
    assert _owners(ConsistentHash(EndpointSet(shuffled)), KEYS[:1000]) == first


def test_consistent_hash_does_not_depend_on_pythons_hash_seed() -> None:
    code = (
        "from kubegate.dataplane.policies.balancing import ConsistentHash\n"
        "from kubegate.dataplane.policies.endpoints import EndpointSet\n"
        f"ring = ConsistentHash(EndpointSet({ADDRS!r}))\n"
        "print([ring.pick(0.0, b'user-%d' % i).addr[0] for i in range(200)])"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1


def test_consistent_hash_spreads_keys_evenly() -> None:
    counts = collections.Counter(_owners(ConsistentHash(EndpointSet(ADDRS)), KEYS).values())
    assert len(counts) == 10
    assert all(700 < c < 1_300 for c in counts.values()), counts


def test_removing_one_endpoint_moves_only_its_keys() -> None:
    before = _owners(ConsistentHash(EndpointSet(ADDRS)), KEYS)
    gone = ADDRS[3]
    after = _owners(ConsistentHash(EndpointSet([a for a in ADDRS if a != gone])), KEYS)
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == gone}
    assert 0.07 < len(moved) / len(KEYS) < 0.13  # about 1/N of all keys
    # and the moved keys spread over the others rather than landing on one neighbour
    assert len({after[k] for k in moved}) >= 6
    back = _owners(ConsistentHash(EndpointSet(ADDRS)), KEYS)
    assert back == before


def test_unavailable_owner_is_skipped_and_gets_its_keys_back() -> None:
    eps = EndpointSet(ADDRS)
    ring = ConsistentHash(eps)
    before = _owners(ring, KEYS[:2000])
    out = eps.endpoints[5]
    out.ejected_until = 100.0
    during = {k: _pick(ring, now=50.0, key=k) for k in KEYS[:2000]}
    assert out.addr not in during.values()
    assert {k for k in during if during[k] != before[k]} == {k for k in before if before[k] == out.addr}
    # the same as if it had left the ring: the walk goes to the next endpoint on the ring
    without = _owners(ConsistentHash(EndpointSet([a for a in ADDRS if a != out.addr])), KEYS[:2000])
    assert during == without
    assert {k: _pick(ring, now=100.0, key=k) for k in KEYS[:2000]} == before
    owner = ring.owner(KEYS[0])
    assert owner is not None and owner.addr == before[KEYS[0]]


def test_consistent_hash_without_a_key_goes_round_robin() -> None:
    ring = ConsistentHash(EndpointSet(ADDRS[:3]))
    assert [_pick(ring) for _ in range(6)] == ADDRS[:3] * 2


def test_bounded_load_caps_a_hot_key() -> None:
    for factor, expected_max in ((None, 100), (1.25, 13)):
        eps = EndpointSet(ADDRS)
        ring = ConsistentHash(eps, balance_factor=factor)
        for _ in range(100):  # one hot key, 100 requests in flight at once
            ep = ring.pick(0.0, b"hot")
            assert ep is not None
            eps.start(ep)
        assert max(ep.in_flight for ep in eps) == expected_max  # ceil(1.25 * 100 / 10)
        assert eps.in_flight == 100


def test_bounded_load_keeps_keys_in_place_under_even_load() -> None:
    eps = EndpointSet(ADDRS)
    plain = _owners(ConsistentHash(eps), KEYS[:1000])
    assert _owners(ConsistentHash(eps, balance_factor=1.25), KEYS[:1000]) == plain


# -- for every balancer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unavailable_endpoints_are_skipped(kind: str) -> None:
    eps = EndpointSet(ADDRS[:5])
    eps.endpoints[1].healthy = False
    eps.endpoints[4].ejected_until = 10.0
    b = _make(kind, eps)
    picked = {_pick(b, now=5.0, key=k) for k in KEYS[:300]}
    assert picked == {ADDRS[0], ADDRS[2], ADDRS[3]}
    assert eps.panics == 0


@pytest.mark.parametrize("kind", KINDS)
def test_panic_mode_uses_every_endpoint_and_counts(kind: str) -> None:
    eps = EndpointSet(ADDRS[:4])
    for ep in eps:
        ep.healthy = False
    b = _make(kind, eps)
    picked = collections.Counter(_pick(b, key=k) for k in KEYS[:400])
    assert set(picked) == set(ADDRS[:4])
    assert eps.panics == 400
    if kind == "RoundRobin":
        assert set(picked.values()) == {100}


@pytest.mark.parametrize("kind", KINDS)
def test_exclude_is_honoured_when_another_endpoint_is_available(kind: str) -> None:
    eps = EndpointSet(ADDRS[:3])
    b = _make(kind, eps)
    for k in KEYS[:300]:
        first = _pick(b, key=k)
        assert _pick(b, key=k, exclude=first) != first
    eps.endpoints[1].healthy = False
    eps.endpoints[2].healthy = False
    assert _pick(b, key=b"k", exclude=ADDRS[0]) == ADDRS[0]  # the only one available
    assert eps.panics == 0
    eps.endpoints[0].healthy = False  # panic: all are usable, the excluded one still avoided
    assert {_pick(b, key=k, exclude=ADDRS[0]) for k in KEYS[:100]} <= {ADDRS[1], ADDRS[2]}
    assert eps.panics == 100


@pytest.mark.parametrize("kind", KINDS)
def test_single_and_empty_sets(kind: str) -> None:
    one = EndpointSet(ADDRS[:1])
    b = _make(kind, one)
    assert _pick(b, key=b"k", exclude=ADDRS[0]) == ADDRS[0]
    one.endpoints[0].ejected_until = 5.0
    assert _pick(b, key=b"k") == ADDRS[0] and one.panics == 1
    assert _make(kind, EndpointSet([])).pick(0.0, b"k") is None


def test_factory_types() -> None:
    eps = EndpointSet(ADDRS[:2])
    assert type(make_balancer(None, eps, random.Random())) is RoundRobin
    assert [type(_make(k, eps)) for k in KINDS] == [RoundRobin, Random, LeastRequest, ConsistentHash]
    assert repr(_make("LeastRequest", eps)) == "<LeastRequest 2 endpoints>"


# -- hash keys ---------------------------------------------------------------------------------------------


def test_hash_key_from_each_source() -> None:
    headers = {"x-user-id": "alice", "x-empty": ""}
    args = (headers, "a=1&user=bob%20b&plus=x+y", 'theme=dark; session="s-42" ;lang=en', b"10.1.2.3")
    assert hash_key(HashOn(header="X-User-Id"), *args) == b"alice"
    assert hash_key(HashOn(header="X-Other"), *args) is None
    assert hash_key(HashOn(header="X-Empty"), *args) is None
    assert hash_key(HashOn(cookie="session"), *args) == b"s-42"
    assert hash_key(HashOn(cookie="lang"), *args) == b"en"
    assert hash_key(HashOn(cookie="sess"), *args) is None
    assert hash_key(HashOn(cookie="session"), headers, "", None, b"") is None
    assert hash_key(HashOn(cookie="session"), headers, "", "xsession=1;session=2", b"") == b"2"
    assert hash_key(HashOn(cookie="session"), headers, "", "xsession=1; other=session=3", b"") is None
    assert hash_key(HashOn(cookie="session"), headers, "", "session=", b"") is None
    assert hash_key(HashOn(query_param="user"), *args) == b"bob b"
    assert hash_key(HashOn(query_param="plus"), *args) == b"x y"
    assert hash_key(HashOn(query_param="us"), *args) is None
    assert hash_key(HashOn(query_param="user"), headers, "", None, b"") is None
    assert hash_key(HashOn(query_param="user"), headers, "us%65r=enc", None, b"") == b"enc"
    assert hash_key(HashOn(source_ip=True), *args) == b"10.1.2.3"
    assert hash_key(HashOn(header="x-user-id"), {"x-user-id": "é"}, "", None, b"") == "é".encode()
