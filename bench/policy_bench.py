"""What one call of each traffic-policy state machine costs (issue 9), for the record.

Not a test: it prints figures and asserts nothing. ``python bench/policy_bench.py [--number N]``.

Each figure is the best of 5 ``timeit`` runs of N calls, in nanoseconds per call, on one core, with every
endpoint available (the common path) unless the line says otherwise. The existing ``BackendPool.pick``
(plain round robin over addresses, no policy) is the baseline. The "pick + start + finish" lines are what
a request pays when the proxy also keeps the in-flight counts that LeastRequest and bounded load read.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import timeit
from collections.abc import Callable
from functools import partial

from kubegate.compiler.policy import (
    BulkheadPolicy,
    CircuitBreakerPolicy,
    HashOn,
    OutlierDetectionPolicy,
    RetryPolicy,
)
from kubegate.compiler.table import CompiledBackend, Endpoint
from kubegate.dataplane.balancer import BackendPool
from kubegate.dataplane.policies.balancing import (
    ConsistentHash,
    LeastRequest,
    Random,
    RoundRobin,
    hash_key,
)
from kubegate.dataplane.policies.breaker import CircuitBreaker
from kubegate.dataplane.policies.bulkhead import Bulkhead
from kubegate.dataplane.policies.endpoints import EndpointSet
from kubegate.dataplane.policies.outlier import OutlierDetector
from kubegate.dataplane.policies.retry import Retrier


def _ns(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000, help="calls per timeit run")
    parser.add_argument("--endpoints", type=int, default=10)
    args = parser.parse_args()
    n = args.number
    addrs = [(f"10.0.{i // 250}.{i % 250 + 1}", 8080) for i in range(args.endpoints)]
    now = 1000.0
    rows: list[tuple[str, float]] = []

    def row(name: str, fn: Callable[[], object]) -> None:
        rows.append((name, _ns(fn, n)))
        print(f"{rows[-1][1]:9.0f} ns  {name}", flush=True)

    python = f"Python {platform.python_version()} on {platform.machine()}"
    print(f"{python}, {args.endpoints} endpoints, best of 5 x {n} calls")
    noop = lambda: None  # noqa: E731
    row("(an empty lambda call: the harness overhead included in every line)", noop)

    backend = CompiledBackend(name="b", weight=1, endpoints=tuple(Endpoint(host=h, port=p) for h, p in addrs))
    row("BackendPool.pick (baseline: round robin, no policy)", BackendPool(backend).pick)

    eps = EndpointSet(addrs)
    rr = RoundRobin(eps)
    row("RoundRobin.pick", lambda: rr.pick(now))
    rnd = Random(eps, random.Random(1))
    row("Random.pick", lambda: rnd.pick(now))
    lr = LeastRequest(eps, random.Random(1))
    row("LeastRequest.pick", lambda: lr.pick(now))

    def lr_cycle() -> None:
        ep = lr.pick(now)
        assert ep is not None
        eps.start(ep)
        eps.finish(ep)

    row("LeastRequest.pick + start + finish", lr_cycle)
    ring = ConsistentHash(eps)
    row("ConsistentHash.pick (key given)", lambda: ring.pick(now, b"user-12345"))
    row("ConsistentHash.pick (no key: round robin)", lambda: ring.pick(now))
    bounded = ConsistentHash(eps, balance_factor=1.25)
    row("ConsistentHash.pick, balance_factor=1.25", lambda: bounded.pick(now, b"user-12345"))
    on_header = HashOn(header="X-User-Id")
    headers = {"host": "api.example.com", "x-user-id": "user-12345", "accept": "*/*"}
    row("hash_key (header)", lambda: hash_key(on_header, headers, "", None, b"10.1.2.3"))
    on_cookie = HashOn(cookie="session")
    cookie = "theme=dark; session=abc123; lang=en"
    row("hash_key (cookie, 3 cookies)", lambda: hash_key(on_cookie, headers, "", cookie, b"10.1.2.3"))

    ejected = EndpointSet(addrs)
    for ep in ejected.endpoints[: len(addrs) // 2]:
        ep.ejected_until = 1e12
    lr_half = LeastRequest(ejected, random.Random(1))
    row("LeastRequest.pick, half the endpoints ejected", lambda: lr_half.pick(now))
    panic = EndpointSet(addrs)
    for ep in panic.endpoints:
        ep.healthy = False
    rr_panic = RoundRobin(panic)
    row("RoundRobin.pick, panic mode (all unhealthy)", lambda: rr_panic.pick(now))
    ring_panic = ConsistentHash(panic)
    row("ConsistentHash.pick, panic mode (all unhealthy)", lambda: ring_panic.pick(now, b"user-12345"))

    cb = CircuitBreaker(CircuitBreakerPolicy())

    def breaker_cycle() -> None:
        if cb.allow(now):
            cb.record(True, now)

    row("CircuitBreaker.allow + record(success)", breaker_cycle)
    row("CircuitBreaker.allow (closed)", lambda: cb.allow(now))
    clock = [now]

    def breaker_rolling() -> None:  # a new bucket every call: the window slides each time
        clock[0] += 1.0
        cb.allow(clock[0])
        cb.record(True, clock[0])

    row("CircuitBreaker.allow + record, window sliding every call", breaker_rolling)

    detector = OutlierDetector(OutlierDetectionPolicy(), eps)
    first = eps.endpoints[0]
    row("OutlierDetector.record(success)", lambda: detector.record(first, True, now))
    bulkhead = Bulkhead(BulkheadPolicy())

    def bulkhead_cycle() -> None:
        if bulkhead.try_acquire():
            bulkhead.release()

    row("Bulkhead.try_acquire + release", bulkhead_cycle)
    retrier = Retrier(RetryPolicy(attempts=2))
    budget = retrier.budget

    def budget_cycle() -> None:
        budget.request_started()
        budget.request_finished()

    row("RetryBudget.request_started + request_finished", budget_cycle)
    row("Retrier.should_retry (GET, status 503)", lambda: retrier.should_retry(b"GET", "status", 503))
    rng = random.Random(1)
    row("Retrier.backoff", lambda: retrier.backoff(1, rng))

    print()
    for count in (10, 100, 1000):
        ring_set = EndpointSet([(f"10.1.{i // 250}.{i % 250 + 1}", 80) for i in range(count)])
        built = min(timeit.repeat(partial(ConsistentHash, ring_set), number=1, repeat=3)) * 1e3
        print(f"{built:9.2f} ms  ConsistentHash ring build, {count} endpoints")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
