"""Convergence benchmark: GatewayRoute created → first successful proxied request on every replica.

Against the kmock Kubernetes API emulator (tests/operator/kube.py), a real operator process
(``python -m kubegate_operator``) and 3 real ``kubegate serve`` processes, with 1, 1,000 and 10,000 routes
already present (inserted straight into the emulator before the operator starts). For each size it
prints p50/p99 of the convergence time over the repeats, the compile duration (from the operator's
metrics) and the operator's RSS. Prints figures; asserts nothing.

    /work/venv/bin/python bench/convergence_bench.py --sizes 1 1000 10000 --repeats 10

``--api real`` runs the same scenarios against a real etcd + kube-apiserver (``tests/controlplane.py``,
binaries from ``bash hack/tools.sh``; one control plane per size) with the CRD from ``crds/`` applied and
the operator using the admin's kubeconfig. The routes present are created through the API (8 concurrent
POSTs) before the operator starts. The real API server refuses loopback EndpointSlice addresses, so the
data planes and the upstreams bind a non-loopback address of this machine (``local_address()`` of
``tests/kube/test_operator_real.py``); the route ``/svc`` also gets the Service ``svc`` that its slice
belongs to, as in a real cluster. ``--api both`` runs the emulator, then the real server, for each size.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import ssl
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

from tests import controlplane  # noqa: E402
from tests.gateway import GatewayProcess, free_port  # noqa: E402
from tests.kube.test_operator_real import local_address  # noqa: E402
from tests.operator.conftest import DP_NS, DP_SERVICE, Cluster, endpoint_slice, service  # noqa: E402
from tests.operator.kube import ROUTES, SERVICES, SLICES, KubeAPI, KubeClient  # noqa: E402
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


class RealAPI(KubeClient):
    """A real etcd + kube-apiserver with the CRD applied, behind the calls of :class:`KubeAPI` that the
    benchmark and :class:`Cluster` make (the tiny kubectl of :class:`KubeClient`, kubeconfig, close)."""

    def __init__(self, workdir: Path) -> None:
        missing = controlplane.missing_tools()
        if missing:
            raise SystemExit(f"{', '.join(missing)} not built: run `{controlplane.BUILD_COMMAND}`")
        self.plane = controlplane.ControlPlane(workdir=workdir)
        self.plane.start()
        try:
            self.plane.kubectl("apply", "-f", str(ROOT / "crds"))
            self.plane.kubectl(
                "wait", "--for=condition=Established", "crd/gatewayroutes.kubegate.dev", "--timeout=60s"
            )
            self.client = self._client()
            for ns in ("bench", DP_NS):
                self._check(
                    self.client.post(
                        "/api/v1/namespaces",
                        json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                    )
                )
            # a freshly established CRD may 404 for a moment: wait until its list answers
            wait_until(lambda: self.client.get(self._base(ROUTES, "bench")).status_code == 200, 30, 0.1)
        except BaseException:
            self.plane.stop()
            raise

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.plane.url,
            verify=ssl.create_default_context(cafile=str(self.plane.ca_file)),
            headers={"Authorization": f"Bearer {self.plane.admin_token}"},
            trust_env=False,
            timeout=30,
        )

    def close(self) -> None:
        self.client.close()
        self.plane.stop()

    def kubeconfig(self, path: Path) -> Path:
        shutil.copyfile(self.plane.kubeconfig, path)
        path.chmod(0o600)
        return path

    def preload(self, count: int, url: str, workers: int = 8) -> None:
        """Create ``count`` routes through the API server (``workers`` clients in parallel)."""

        def create_range(start: int) -> None:
            with self._client() as client:
                for i in range(start, count, workers):
                    response = client.post(
                        self._base(ROUTES, "bench"), json=route_body(f"pre-{i}", f"/pre/{i}", url)
                    )
                    self._check(response)

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(create_range, w) for w in range(workers)]:
                future.result()


class RealCluster(Cluster):
    """:class:`Cluster` with the data planes on ``host`` (not loopback: the real API server refuses
    127.0.0.0/8 in an EndpointSlice), each listed by a slice of its own."""

    def __init__(self, tmp: Path, api: RealAPI, host: str) -> None:
        super().__init__(tmp, api)  # type: ignore[arg-type]
        self.host = host

    def start_gateways(self, count: int) -> None:
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            starting = [pool.submit(GatewayProcess, self.tmp, host=self.host) for _ in range(count)]
            self.gateways += [future.result() for future in starting]
        self.publish_dataplane()

    def publish_dataplane(self) -> None:
        for gw in self.gateways:
            self.api.create(
                SLICES,
                endpoint_slice(
                    f"{DP_SERVICE}-{gw.admin_port}",
                    DP_SERVICE,
                    [self.host],
                    gw.admin_port,
                    DP_NS,
                    port_name="admin",
                    ready=False,
                ),
            )


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


def run_size(size: int, repeats: int, upstream: UpstreamServer, mode: str = "emulator") -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="kg-bench-"))
    api: KubeAPI | RealAPI
    cluster: Cluster
    out: dict[str, Any] = {"size": size, "api": mode}
    t = time.monotonic()
    if mode == "real":
        api = RealAPI(tmp / "controlplane")
        out["plane_s"] = time.monotonic() - t
        cluster = RealCluster(tmp, api, upstream.host)
    else:
        api = KubeAPI()
        out["plane_s"] = time.monotonic() - t
        cluster = Cluster(tmp, api)
    try:
        t = time.monotonic()
        if isinstance(api, RealAPI):
            api.preload(size, upstream.url)
        else:
            preload(api, size, upstream.url)
        out["preload_s"] = time.monotonic() - t
        cluster.start_gateways(3)
        port = free_port()
        started = time.monotonic()
        cluster.start_operator("--metrics-port", str(port), "--log-level", "warning")
        assert cluster.operator is not None
        client = httpx.Client(timeout=2, trust_env=False)
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
        other = UpstreamServer("moved", host=upstream.host).start()
        try:
            if mode == "real":
                api.create(SERVICES, service("svc", 80, "bench"))
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
            api.create(SLICES, endpoint_slice("svc-1", "svc", [upstream.host], upstream.port, "bench"))
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
    p.add_argument(
        "--api",
        choices=["emulator", "real", "both"],
        default="emulator",
        help="the kmock emulator, a real etcd + kube-apiserver, or both in turn for each size",
    )
    args = p.parse_args()
    modes = ["emulator", "real"] if args.api == "both" else [args.api]
    host = "127.0.0.1"
    if "real" in modes:
        found = local_address()
        if found is None:
            print("no non-loopback IPv4 address (EndpointSlices refuse 127.0.0.0/8)", file=sys.stderr)
            return 1
        host = found  # both modes then use it, so that they differ by the API server only
    upstream = UpstreamServer("bench", host=host).start()
    try:
        for size in args.sizes:
            for mode in modes:
                report(run_size(size, args.repeats, upstream, mode))
    finally:
        upstream.stop()
    return 0


def report(r: dict[str, Any]) -> None:
    size = r["size"]
    conv, moves = r["converge"], r["moves"]
    move_max = max(moves, default=float("nan"))
    print(
        f"api={r['api']:<8} routes={size:>6}  (start {r['plane_s']:.1f} s, preload {r['preload_s']:.1f} s)  "
        f"initial sync {r['initial_s']:.2f} s "
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


if __name__ == "__main__":
    sys.exit(main())
