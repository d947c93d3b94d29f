"""Convergence benchmark: GatewayRoute created → first successful proxied request on every replica.

Against the kmock Kubernetes API emulator (tests/operator/kube.py), a real operator process
(``python -m kubegate_operator``) and 3 real ``kubegate serve`` processes, with 1, 1,000 and 10,000 routes
already present (inserted straight into the emulator before the operator starts). For each size it
prints p50/p99 of the convergence time over the repeats, the compile duration (from the operator's
metrics) and the operator's RSS. Prints figures; asserts nothing.

    /work/venv/bin/python bench/convergence_bench.py --sizes 1 1000 10000 --repeats 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gateway import GatewayProcess, free_port  # noqa: E402
from tests.operator.conftest import Cluster, endpoint_slice  # noqa: E402
from tests.operator.kube import ROUTES, SLICES, KubeAPI  # noqa: E402
from tests.upstreams import UpstreamServer  # noqa: E402


def route_body(name: str, path: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubegate.dev/v1alpha1",
        "kind": "GatewayRoute",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"match": {"path": {"type": "Prefix", "value": path}}, "backends": [{"url": url}]},
    }


def preload(api: KubeAPI, count: int, url: str) -> None:
    """Insert ``count`` routes directly into the emulator (as if created earlier)."""
    assert api.emulator is not None
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for i in range(count):
        body = route_body(f"pre-{i}", f"/pre/{i}", url)
        body["metadata"].update(
            uid=str(uuid.uuid4()), resourceVersion=str(i + 1), generation=1, creationTimestamp=stamp
        )
        api.emulator.objects[ROUTES, "bench", f"pre-{i}"] = body


def scrape(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return ""


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_until(pred: Any, timeout: float, interval: float = 0.005) -> bool:
    """Poll ``pred`` until it is true; an HTTP error (a data plane busy swapping in a whole table does
    not answer for a moment) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return False


def served(gws: list[GatewayProcess], client: httpx.Client, path: str, pending: set[int]) -> bool:
    for i in list(pending):
        try:
            if client.get(gws[i].url + path).status_code == 200:
                pending.discard(i)
        except httpx.HTTPError:
            pass
    return not pending


def run_size(size: int, repeats: int, upstream: UpstreamServer) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="kg-bench-"))
    api = KubeAPI()
    cluster = Cluster(tmp, api)
    out: dict[str, Any] = {"size": size}
    try:
        preload(api, size, upstream.url)
        cluster.start_gateways(3)
        port = free_port()
        started = time.monotonic()
        cluster.start_operator("--metrics-port", str(port), "--log-level", "warning")
        assert cluster.operator is not None
        client = httpx.Client(timeout=2)
        # Waits that are not measured poll every 0.1 s, with one client: the benchmark shares the
        # machine's two cores with what it measures.
        ok = wait_until(
            lambda: all(client.get(gw.admin + "/table").json()["routes"] == size for gw in cluster.gateways),
            300,
            interval=0.1,
        )
        out["initial_s"] = time.monotonic() - started if ok else float("nan")
        out["rss_initial_mb"] = rss_mb(cluster.operator.pid)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        # let the initial status writes (and their Events) finish so that they do not pollute the
        # measurement: every route written, then no write for 2 s
        writes = 'kubegate_operator_status_writes_total{result="ok"}'
        seen: list[tuple[float, float]] = []

        def statuses_settled() -> bool:
            count = metric(client.get(metrics_url).text, writes)
            if not seen or seen[-1][1] != count:
                seen.append((time.monotonic(), count))
            return count >= size and time.monotonic() - seen[-1][0] >= 2.0

        wait_until(statuses_settled, 600, interval=0.1)
        out["initial_writes"] = seen[-1][1] if seen else float("nan")
        out["status_s"] = time.monotonic() - started
        out["rss_status_mb"] = rss_mb(cluster.operator.pid)
        times = []
        for r in range(repeats):
            name = f"new-{r}"
            path = f"/new/{r}"
            t0 = time.monotonic()
            api.create(ROUTES, route_body(name, path, upstream.url))
            pending = {0, 1, 2}
            if wait_until(lambda p=path, q=pending: served(cluster.gateways, client, p, q), 60):  # type: ignore[misc]
                times.append(time.monotonic() - t0)
        # EndpointSlice change → traffic moves
        moves = []
        other = UpstreamServer("moved").start()
        try:
            api.create(
                ROUTES,
                {
                    **route_body("svc-route", "/svc", upstream.url),
                    "spec": {
                        "match": {"path": {"type": "Prefix", "value": "/svc"}},
                        "backends": [{"service": "svc", "port": 80}],
                    },
                },
            )
            api.create(SLICES, endpoint_slice("svc-1", "svc", ["127.0.0.1"], upstream.port, "bench"))
            wait_until(lambda: served(cluster.gateways, client, "/svc", {0, 1, 2}), 60)
            for r in range(max(1, repeats // 2)):
                target = other if r % 2 == 0 else upstream
                t0 = time.monotonic()
                api.patch(
                    SLICES,
                    "bench",
                    "svc-1",
                    {"ports": [{"name": "http", "port": target.port, "protocol": "TCP"}]},
                )

                def moved(target: UpstreamServer = target) -> bool:
                    return all(
                        client.get(gw.url + "/svc").headers.get("x-backend") == target.name
                        for gw in cluster.gateways
                    )

                if wait_until(moved, 60):
                    moves.append(time.monotonic() - t0)
        finally:
            other.stop()
        text = scrape(metrics_url)
        count = metric(text, "kubegate_operator_compile_duration_seconds_count")
        out.update(
            converge=times,
            moves=moves,
            compile_avg_s=metric(text, "kubegate_operator_compile_duration_seconds_sum") / max(count, 1),
            compiles=count,
            table_bytes=metric(text, "kubegate_operator_table_bytes"),
            bootstrap_gzip_bytes=metric(text, "kubegate_operator_bootstrap_bytes"),
            rss_mb=rss_mb(cluster.operator.pid),
        )
        client.close()
    finally:
        cluster.close()
        api.close()
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 1000, 10000])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    upstream = UpstreamServer("bench").start()
    try:
        for size in args.sizes:
            r = run_size(size, args.repeats, upstream)
            conv, moves = r["converge"], r["moves"]
            move_max = max(moves, default=float("nan"))
            print(
                f"routes={size:>6}  initial sync {r['initial_s']:.2f} s "
                f"({r['initial_writes']:.0f} statuses written by {r['status_s']:.1f} s)  "
                f"converge p50 {pct(conv, 0.5) * 1000:.0f} ms p99 {pct(conv, 0.99) * 1000:.0f} ms "
                f"(n={len(conv)})  endpoint move p50 {pct(moves, 0.5) * 1000:.0f} ms "
                f"max {move_max * 1000:.0f} ms  "
                f"compile avg {r['compile_avg_s'] * 1000:.0f} ms ({r['compiles']:.0f} compiles)  "
                f"table {r['table_bytes'] / 1024:.0f} KiB, "
                f"bootstrap gzip {r['bootstrap_gzip_bytes'] / 1024:.0f} KiB  "
                f"operator RSS {r['rss_mb']:.0f} MB (after the initial sync {r['rss_initial_mb']:.0f} MB, "
                f"after its status writes {r['rss_status_mb']:.0f} MB)",
                flush=True,
            )
    finally:
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
