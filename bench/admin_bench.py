"""What the admin port costs the traffic port: traffic latency while the admin port is probed.

Starts an echo backend (``kubegate echo``) and a ``kubegate serve`` holding a pushed table of N routes
(default 10,000, all to the echo backend), then runs each probe while a *sampler* (a separate process, so
that the bench's own Python does not compete with it) sends one ``GET /lat`` every 5 ms on a keep-alive
connection to the traffic port. Prints, per probe, the traffic latency p50 / p99 / max during the probe
next to the same sampler with no probe, and what the admin port answered. Prints figures; asserts nothing.

    python bench/admin_bench.py                         # every probe, 10,000 routes
    python bench/admin_bench.py --probes none,routes    # a subset
    python bench/admin_bench.py --routes 2000 --seconds 3

Probes (``--probes``):

- ``none``          no probe: the baseline
- ``header``        one ``GET /health`` carrying a 100 MB header (no token needed)
- ``routes``        two clients polling ``GET /routes`` and ``GET /services`` (no token needed)
- ``metrics``       one request to every route, then ``GET /metrics`` in a loop; then a table with other
                    route ids is pushed and the size of ``/metrics`` is printed again (removed routes'
                    series must leave it)
- ``push``          ``PUT /table`` of two full tables that differ in every route, alternately (a valid token)
- ``patch``         ``PATCH /table`` deltas of one route, in a loop
- ``huge``          ``PUT /table`` of a million (minimal) routes, 66 MB (just under the 64 MiB limit)
- ``invalid``       ``PUT /table`` of a million invalid routes (3 MB): prints the size of the answer
- ``deep``          ``PUT /table`` of JSON nested 100,000 deep
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubegate.compiler.table import RouteTable, TableDelta

TOKEN = "bench-admin-token"
PROBES = ("none", "header", "routes", "metrics", "push", "patch", "huge", "invalid", "deep")


# --- the sampler (a child process) ----------------------------------------------------------------------
def sampler(port: int, interval: float) -> int:
    """One GET /lat every ``interval`` seconds until stdin says stop; prints the latencies (JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    lat: list[float] = []
    failed = 0
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], interval)
        if ready:
            break
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/lat")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failed += 1
        except (OSError, http.client.HTTPException):
            failed += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        lat.append(time.perf_counter() - t0)
    print(json.dumps({"latencies": lat, "failed": failed}), flush=True)
    return 0


class Sampling:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--sampler", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> dict[str, Any]:
        out, _ = self.proc.communicate("stop\n", timeout=300)
        return dict(json.loads(out.strip().splitlines()[-1]))


def figures(result: dict[str, Any]) -> str:
    lat = sorted(result["latencies"])
    if not lat:
        return "no samples"
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    text = (
        f"p50 {statistics.median(lat) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
        f"max {lat[-1] * 1000:8.1f} ms  ({len(lat)} requests"
    )
    return text + (f", {result['failed']} failed)" if result["failed"] else ")")


# --- the gateway under test -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited early ({proc.returncode})")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"port {port} not answering {path}")


def bench_route(i: int, echo: int, timeout_ms: int = 30_000, prefix: str = "r") -> dict[str, Any]:
    return {
        "id": f"ns{i % 20}/{prefix}{i}",
        "namespace": f"ns{i % 20}",
        "name": f"{prefix}{i}",
        "match": {"path": {"type": "Prefix", "value": f"/{prefix}{i}/"}},
        "backends": [
            {
                "name": f"url:http://127.0.0.1:{echo}#0",
                "weight": 1,
                "endpoints": [{"host": "127.0.0.1", "port": echo}],
            }
        ],
        "timeoutMs": timeout_ms,
    }


def bench_table(n: int, echo: int, version: str, timeout_ms: int = 30_000, prefix: str = "r") -> bytes:
    lat = bench_route(0, echo, prefix="lat")
    lat.update(
        id="bench/lat", namespace="bench", name="lat", match={"path": {"type": "Exact", "value": "/lat"}}
    )
    routes = [bench_route(i, echo, timeout_ms, prefix) for i in range(n)]
    return json.dumps(
        {"apiVersion": "kubegate.dev/v1alpha1", "version": version, "routes": [lat, *routes]}
    ).encode()


class Admin:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN
    ) -> tuple[int, bytes, float]:
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        t0 = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data, time.perf_counter() - t0
        except (OSError, http.client.HTTPException) as exc:
            return 0, repr(exc).encode(), time.perf_counter() - t0
        finally:
            conn.close()


# --- probes ---------------------------------------------------------------------------------------------
class Ctx:
    def __init__(self, port: int, admin: int, echo: int, routes: int, seconds: float, pid: int) -> None:
        self.port = port
        self.admin = Admin(admin)
        self.echo = echo
        self.routes = routes
        self.seconds = seconds
        self.pid = pid


def probe_none(ctx: Ctx) -> str:
    time.sleep(ctx.seconds)
    return "nothing sent"


def probe_header(ctx: Ctx) -> str:
    s = socket.create_connection(("127.0.0.1", ctx.admin.port))
    s.settimeout(600)
    head = b"GET /health HTTP/1.1\r\nHost: admin\r\nX-Big: "
    t0 = time.perf_counter()
    sent = 0
    try:
        s.sendall(head)
        chunk = b"a" * (1 << 20)
        for _ in range(100):
            s.sendall(chunk)
            sent += len(chunk)
        s.sendall(b"\r\n\r\n")
    except OSError:
        pass  # refused early: the server closed the connection
    try:
        answer = s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError as exc:
        answer = repr(exc)
    s.close()
    return f"{sent / 1e6:.0f} MB of header sent in {time.perf_counter() - t0:.1f} s; answer: {answer!r}"


def _loop(
    ctx: Ctx, work: Callable[[], tuple[int, bytes, float]], threads: int
) -> list[tuple[int, int, float]]:
    results: list[tuple[int, int, float]] = []
    end = time.monotonic() + ctx.seconds

    def run() -> None:
        while time.monotonic() < end:
            status, body, took = work()
            results.append((status, len(body), took))

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results


def _summary(results: list[tuple[int, int, float]]) -> str:
    if not results:
        return "no answer"
    statuses = sorted({r[0] for r in results})
    took = sorted(r[2] for r in results)
    return (
        f"{len(results)} answers, status {statuses}, {max(r[1] for r in results) / 1e6:.1f} MB, "
        f"{statistics.median(took) * 1000:.0f} ms median each"
    )


def probe_routes(ctx: Ctx) -> str:
    paths = ["/routes", "/services"]
    count = [0]

    def work() -> tuple[int, bytes, float]:
        count[0] += 1
        return ctx.admin.request("GET", paths[count[0] % 2], token=None)

    return _summary(_loop(ctx, work, threads=2))


def _touch_every_route(ctx: Ctx, prefix: str) -> None:
    def run(start: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", ctx.port, timeout=60)
        for i in range(start, ctx.routes, 2):
            conn.request("GET", f"/{prefix}{i}/x")
            conn.getresponse().read()
        conn.close()

    pool = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def probe_metrics(ctx: Ctx) -> str:
    def work() -> tuple[int, bytes, float]:
        return ctx.admin.request("GET", "/metrics", token=None)

    return _summary(_loop(ctx, work, threads=1))


def _metrics_size(ctx: Ctx) -> str:
    _, body, _ = ctx.admin.request("GET", "/metrics", token=None)
    lines = body.count(b"\n")
    return f"{len(body) / 1e6:.2f} MB, {lines} lines"


def probe_push(ctx: Ctx) -> str:
    tables = [bench_table(ctx.routes, ctx.echo, f"push-{k}", 30_000 + k) for k in range(2)]

    count = [0]

    def work() -> tuple[int, bytes, float]:
        count[0] += 1
        return ctx.admin.request("PUT", "/table", tables[count[0] % 2])

    return _summary(_loop(ctx, work, threads=1)) + f"; {len(tables[0]) / 1e6:.1f} MB each"


def probe_patch(ctx: Ctx) -> str:
    _, body, _ = ctx.admin.request("GET", "/table", token=None)
    info = json.loads(body)
    base = RouteTable.model_validate(json.loads(bench_table(ctx.routes, ctx.echo, "base")))
    # the served table is one of probe_push's, or the initial one: rebuild it from its version
    version = info["version"]
    k = {"push-0": 0, "push-1": 1}.get(version)
    if k is not None:
        base = RouteTable.model_validate(json.loads(bench_table(ctx.routes, ctx.echo, version, 30_000 + k)))
    current = [base]

    def work() -> tuple[int, bytes, float]:
        table = current[0]
        routes = list(table.routes)
        i = 1 + len(routes) // 2
        changed = routes[i].model_copy(update={"timeout_ms": (routes[i].timeout_ms or 1) + 1})
        routes[i] = changed
        ordered = tuple(sorted(routes, key=lambda r: r.id))
        target = RouteTable.model_construct(version=f"patch-{changed.timeout_ms}", routes=ordered)
        delta = TableDelta.between(table, target)
        result = ctx.admin.request("PATCH", "/table", json.dumps(delta.to_wire()).encode())
        if result[0] == 200:
            current[0] = target
        return result

    if base.content_hash() != info["hash"]:
        return f"served table unknown to the bench ({info['version']}): skipped"
    return _summary(_loop(ctx, work, threads=1))


def _one_push(ctx: Ctx, body: bytes) -> str:
    status, answer, took = ctx.admin.request("PUT", "/table", body)
    text = answer[:160].decode(errors="replace")
    return (
        f"{len(body) / 1e6:.1f} MB body: {status} in {took:.2f} s, answer {len(answer) / 1e6:.3f} MB "
        f"{text!r}; RSS {rss_mib(ctx.pid):.0f} MiB"
    )


def probe_huge(ctx: Ctx) -> str:
    route = b'{"id":"%x","namespace":"n","name":"n","backends":[{"name":""}]}'
    routes = b",".join(route % i for i in range(1_000_000))
    return _one_push(ctx, b'{"version":"huge","routes":[' + routes + b"]}")


def probe_invalid(ctx: Ctx) -> str:
    body = b'{"version":"bad","routes":[' + b",".join([b"{}"] * 1_000_000) + b"]}"
    return _one_push(ctx, body)


def probe_deep(ctx: Ctx) -> str:
    return _one_push(ctx, b"[" * 100_000 + b"]" * 100_000)


# --- main -----------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each looping probe")
    ap.add_argument("--probes", default=",".join(PROBES))
    ap.add_argument("--sampler", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sampler:
        return sampler(args.sampler, 0.005)
    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        ap.error(f"unknown probes {unknown}; known: {', '.join(PROBES)}")

    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text(TOKEN)
        port, admin, echo = free_port(), free_port(), free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KUBEGATE_PUSH_TOKEN", None)
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        up = subprocess.Popen(
            [sys.executable, "-m", "kubegate.cli", "echo", "--port", str(echo)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        gw = subprocess.Popen(
            [sys.executable, "-m", "kubegate.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--admin-port", str(admin), "--push-token-file", str(token), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_http(echo, "/", up)
            wait_http(admin, "/health", gw)
            ctx = Ctx(port, admin, echo, args.routes, args.seconds, gw.pid)
            status, body, took = ctx.admin.request("PUT", "/table", bench_table(args.routes, echo, "base"))
            print(f"{args.routes} routes pushed: {status} in {took:.2f} s; RSS {rss_mib(gw.pid):.0f} MiB")
            if status != 200:
                print(body[:500].decode(errors="replace"))
                return 1
            for name in probes:
                if name == "metrics":
                    t0 = time.perf_counter()
                    _touch_every_route(ctx, "r")
                    print(f"  (one request to each route: {time.perf_counter() - t0:.1f} s)")
                    print(f"  /metrics after one request to every route: {_metrics_size(ctx)}")
                run: Callable[[Ctx], str] = globals()[f"probe_{name}"]
                sampling = Sampling(port)
                t0 = time.perf_counter()
                what = run(ctx)
                took = time.perf_counter() - t0
                result = sampling.stop()
                print(f"{name:8s} traffic {figures(result)}")
                print(f"         admin ({took:.1f} s): {what}")
                if name == "metrics":
                    renamed = bench_table(args.routes, echo, "renamed", prefix="q")
                    ctx.admin.request("PUT", "/table", renamed)
                    print(f"  /metrics after a table with other route ids: {_metrics_size(ctx)}")
                    ctx.admin.request("PUT", "/table", bench_table(args.routes, echo, "base"))
                if gw.poll() is not None:
                    print("kubegate serve exited")
                    return 1
        finally:
            for proc in (gw, up):
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
