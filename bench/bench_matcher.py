"""Micro-benchmark of the per-request hot path: ``normalize_path`` + ``Matcher.match`` on 10,000 routes.

Not a test: it prints figures and asserts nothing (unit tests check correctness only). Run it alone on a
quiet machine: ``python bench/bench_matcher.py [--routes N] [--lookups N]``. It reports µs per match
(p50 and mean, per-call timed with ``perf_counter_ns`` minus the timer's own cost, and the mean of an
untimed batch), the build time, and the process RSS from ``resource.getrusage``.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from kubegate.compiler import table
from kubegate.dataplane import matcher, pathnorm

Request = tuple[str, str, str, str, dict[str, str]]


def build_routes(count: int, rng: random.Random) -> list[table.CompiledRoute]:
    """Mixed table: ~60% Prefix, 20% Exact, 10% Glob, 10% header-conditioned; ~20% with hosts."""
    routes = []
    for i in range(count):
        roll = rng.random()
        match: dict[str, Any] = {}
        if roll < 0.6:
            match["path"] = {"type": "Prefix", "value": f"/svc{i}/v{i % 3}"}
            if i % 5 == 0:
                match["methods"] = ["GET", "HEAD"]
        elif roll < 0.8:
            match["path"] = {"type": "Exact", "value": f"/svc{i}/health"}
        elif roll < 0.9:
            match["path"] = {"type": "Glob", "value": f"/svc{i}/*/items/**"}
        else:
            match["path"] = {"type": "Prefix", "value": f"/svc{i}"}
            match["headers"] = [
                {"name": "X-Tenant", "value": f"t{i % 7}"},
                {"name": "X-Version", "value": "v[0-9]+", "type": "RegularExpression"},
            ]
        if rng.random() < 0.2:
            host = f"*.zone{i % 10}.example.com" if i % 4 == 0 else f"api{i % 100}.example.com"
            match["hosts"] = [host]
        routes.append(
            table.CompiledRoute.model_validate(
                {
                    "id": f"bench/r{i:05d}",
                    "namespace": "bench",
                    "name": f"r{i:05d}",
                    "created": f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
                    "match": match,
                    "backends": [{"name": "b"}],
                }
            )
        )
    return routes


def host_for(route: table.CompiledRoute, i: int) -> str:
    if not route.match.hosts:
        return "gateway.example.com"
    host = route.match.hosts[0]
    return ("pod-" + str(i) + host[1:]) if host.startswith("*.") else host.upper() + ":443"


def hit_for(route: table.CompiledRoute, i: int) -> Request:
    m = route.match
    value = m.path.value
    if m.path.type == "Exact":
        path = value
    elif m.path.type == "Glob":
        path = value.replace("/*/", "/x/").replace("/**", "/1/2")
    else:
        path = value + "/users/42/orders"
    headers = {"accept": "application/json", "user-agent": "bench/1.0"}
    if m.headers:
        headers |= {"x-tenant": m.headers[0].value, "x-version": "v2"}
    return ("GET", host_for(route, i), path, "page=2&size=50", headers)


def miss_for(i: int) -> Request:
    # Shares a literal prefix with real routes (so the trie walk goes a few levels deep) but fails.
    kind = i % 3
    path = (f"/svc{i}x/v0/a", f"/svc{i}/nope/a/b", f"/unknown/{i}/deep/path")[kind]
    return ("POST", "nomatch.example.org", path, "", {"accept": "*/*"})


def timer_overhead_ns() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        t0 = clock()
        t1 = clock()
        samples.append(t1 - t0)
    return statistics.median(samples)


def per_call_ns(fn: Callable[..., object], requests: Sequence[Request], passes: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(passes):
        for method, host, path, query, headers in requests:
            t0 = clock()
            fn(method, host, path, query, headers)
            samples.append(clock() - t0)
    return samples


def batch_mean_ns(fn: Callable[..., object], requests: Sequence[Request], passes: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(passes):
        for method, host, path, query, headers in requests:
            fn(method, host, path, query, headers)
    return (time.perf_counter_ns() - t0) / (passes * len(requests))


def report(label: str, samples: list[int], overhead: float, batch: float) -> None:
    p50 = (statistics.median(samples) - overhead) / 1000
    p99 = (statistics.quantiles(samples, n=100)[98] - overhead) / 1000
    mean = (statistics.fmean(samples) - overhead) / 1000
    print(
        f"  {label:<22} p50 {p50:6.2f} µs   mean {mean:6.2f} µs   p99 {p99:6.2f} µs"
        f"   untimed-batch mean {batch / 1000:6.2f} µs"
    )


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=10_000, help="distinct requests of each kind")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)

    rss_start = maxrss_mib()
    routes = build_routes(args.routes, rng)
    rss_routes = maxrss_mib()
    t0 = time.perf_counter()
    m = matcher.Matcher((r, r) for r in routes)
    build_s = time.perf_counter() - t0
    rss_matcher = maxrss_mib()

    picks = [rng.randrange(len(routes)) for _ in range(args.lookups)]
    hits = [hit_for(routes[i], i) for i in picks]
    misses = [miss_for(i) for i in picks]
    mixed = [r for pair in zip(hits, misses, strict=True) for r in pair]
    found = sum(m.match(*r) is not None for r in hits) + sum(m.match(*r) is not None for r in misses)

    print(f"{m!r}")
    print(f"  build {build_s * 1000:.0f} ms; {found}/{len(hits) + len(misses)} lookups matched (hits first)")
    overhead = timer_overhead_ns()
    print(f"  perf_counter_ns overhead {overhead:.0f} ns (subtracted from per-call figures)")
    for label, requests in (("match, hits", hits), ("match, misses", misses), ("match, 50/50 mix", mixed)):
        samples = per_call_ns(m.match, requests, args.passes)
        report(label, samples, overhead, batch_mean_ns(m.match, requests, args.passes))

    def norm(method: str, host: str, path: str, query: str, headers: dict[str, str]) -> object:
        return pathnorm.normalize_path(path)

    # The same hits spelled with dot segments, a double slash and escapes: every one takes the slow path.
    dotted = [(r[0], r[1], "/a/./b/../..//" + r[2][1:].replace("v", "%76", 1), r[3], r[4]) for r in hits]
    report("normalize_path, normal", per_call_ns(norm, hits, 2), overhead, batch_mean_ns(norm, hits, 2))
    report("normalize_path, dots/%", per_call_ns(norm, dotted, 2), overhead, batch_mean_ns(norm, dotted, 2))

    print(
        f"  max RSS: {rss_start:.1f} MiB at start, {rss_routes:.1f} MiB with {len(routes)} route models, "
        f"{rss_matcher:.1f} MiB with the matcher built (+{rss_matcher - rss_routes:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
