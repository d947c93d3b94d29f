"""Route-table scale: compile time, push/swap time and data-plane memory with many routes.

Generates N GatewayRoutes (mixed Exact/Prefix/Glob paths, some hosts, some header matches, static URL
backends), compiles them with the pure compiler, starts a real ``kubegate serve`` with the routes file and
reports its resident memory once ready, then pushes the same table over ``PUT /table`` and times the swap.
Prints figures; asserts nothing.

    python bench/table_bench.py            # 10,000 routes
    python bench/table_bench.py --routes 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from kubegate.compiler.compile import compile_bundle
from kubegate.compiler.resources import load_file


def routes_yaml(n: int, seed: int = 7) -> str:
    rnd = random.Random(seed)
    docs = []
    for i in range(n):
        kind = rnd.choice(["Prefix", "Prefix", "Exact", "Glob"])
        base = f"/svc{i % 500}/v{i % 7}/r{i}"
        path = {"Prefix": base, "Exact": base + "/item", "Glob": base + "/*/detail/**"}[kind]
        match: dict[str, object] = {"path": {"type": kind, "value": path}}
        if i % 5 == 0:
            match["hosts"] = [f"h{i % 50}.example.com"]
        if i % 11 == 0:
            match["headers"] = [{"name": "x-env", "value": "canary"}]
        docs.append(
            {
                "apiVersion": "kubegate.dev/v1alpha1",
                "kind": "GatewayRoute",
                "metadata": {"name": f"r{i}", "namespace": f"ns{i % 20}"},
                "spec": {"match": match, "backends": [{"url": f"http://10.0.{i % 250}.{i % 200 + 1}:8080"}]},
            }
        )
    return yaml.safe_dump_all(docs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--routes", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "routes.yaml"
        f.write_text(routes_yaml(args.routes))
        t0 = time.perf_counter()
        bundle = load_file(f)
        t1 = time.perf_counter()
        result = compile_bundle(bundle, now=datetime.now(UTC))
        t2 = time.perf_counter()
        wire = result.table.model_copy(update={"version": "bench-push"}).to_wire()
        body = json.dumps(wire).encode()
        print(f"routes: {len(result.table.routes)} accepted of {args.routes}")
        print(f"load YAML: {t1 - t0:.2f} s   compile: {t2 - t1:.2f} s   table JSON: {len(body) / 1e6:.1f} MB")

        token = Path(tmp) / "token"
        token.write_text("bench-token")
        port, admin = free_port(), free_port()
        t3 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubegate.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--admin-port", str(admin), "--routes", str(f), "--push-token-file", str(token),
             "--log-level", "warning"],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            t4 = time.perf_counter()
            print(f"kubegate serve --routes: ready after {t4 - t3:.2f} s, RSS {rss_mib(proc.pid):.0f} MiB")
            t5 = time.perf_counter()
            r = httpx.put(
                f"http://127.0.0.1:{admin}/table", content=body, timeout=300,
                headers={"authorization": "Bearer bench-token", "content-type": "application/json"},
            )  # fmt: skip
            t6 = time.perf_counter()
            print(
                f"PUT /table ({r.status_code}): {t6 - t5:.2f} s, RSS after swap {rss_mib(proc.pid):.0f} MiB"
            )
        finally:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
