"""Endpoint state and the endpoint set: availability on an injected clock, panic mode, state kept by address.

Aspects: ``available(now)`` (health and ejection, an ejection ending by itself), the set's usable list and
panic mode (all endpoints, counted), the empty set, ``previous=`` keeping the state of shared endpoints,
the in-flight total kept by ``start``/``finish``.
"""

from __future__ import annotations

from kubegate.dataplane.policies.endpoints import EndpointSet, EndpointState

A, B, C = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)


def test_available_needs_health_and_no_ejection() -> None:
    ep = EndpointState(A)
    assert ep.healthy and ep.available(0.0)
    ep.ejected_until = 130.0
    assert not ep.available(129.999)
    assert ep.available(130.0)  # the ejection ends by itself
    ep.healthy = False
    assert not ep.available(500.0)
    assert repr(ep) == "<EndpointState 10.0.0.1:80 in_flight=0 unhealthy ejected_until=130 ejections=0>"


def test_set_lists_usable_endpoints_and_panics_when_none() -> None:
    eps = EndpointSet([A, B, C, A])
    assert [ep.addr for ep in eps] == [A, B, C]  # duplicates dropped, order kept
    b = eps.get(B)
    assert b is not None
    b.ejected_until = 10.0
    assert [ep.addr for ep in eps.available(5.0)] == [A, C]
    assert eps.ejected(5.0) == 1 and eps.ejected(10.0) == 0
    for ep in eps:
        ep.healthy = False
    assert [ep.addr for ep in eps.available(5.0)] == [A, B, C]  # panic mode: all of them
    assert eps.panics == 1
    assert repr(eps) == "<EndpointSet 3 endpoints, 3 unhealthy, in_flight=0 panics=1>"


def test_empty_set_is_empty_not_panicking() -> None:
    eps = EndpointSet([])
    assert eps.available(0.0) == [] and eps.panics == 0 and len(eps) == 0


def test_previous_set_keeps_state_of_shared_endpoints() -> None:
    old = EndpointSet([A, B])
    a = old.get(A)
    assert a is not None
    a.ejected_until, a.ejections, a.healthy = 99.0, 2, False
    new = EndpointSet([B, C, A], previous=old)
    assert new.get(A) is a and new.get(B) is old.get(B)
    c = new.get(C)
    assert c is not None and c.healthy and c.ejections == 0 and c is not old.get(C)


def test_start_and_finish_keep_the_total() -> None:
    eps = EndpointSet([A, B])
    a, b = eps.endpoints
    eps.start(a)
    eps.start(a)
    eps.start(b)
    assert (a.in_flight, b.in_flight, eps.in_flight) == (2, 1, 3)
    eps.finish(a)
    eps.finish(b)
    eps.finish(b)  # one finish too many does not go negative
    assert (a.in_flight, b.in_flight, eps.in_flight) == (1, 0, 1)
