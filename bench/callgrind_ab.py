"""Instructions per request of ``kubegate serve`` on the plain proxy path, deterministic on a busy machine.

Why: on a shared 2-core machine wall-clock benchmarks (``proxy_bench.py``) move by 30 % from run to run,
too much to see a change of a few percent in the hot path. ``valgrind --tool=callgrind`` counts
instructions instead: the same code and inputs give the same count (to about 0.1 %), whatever else runs.
This script starts nginx as the upstream, runs ``kubegate serve --routes`` (this checkout, and optionally
another checkout as the baseline) under callgrind, sends 200 warm-up requests, zeroes the counters, sends
N requests on 4 keep-alive connections, dumps, and prints instructions per request (every thread of the
process; the load generator is another process and is not counted).

    python bench/callgrind_ab.py                       # this checkout
    python bench/callgrind_ab.py --baseline /tmp/base  # and a worktree of another commit, for comparison
    python bench/callgrind_ab.py --variant plain --variant jwt   # routes with policies, auth (ratios)
    python bench/callgrind_ab.py --variant plain --variant global  # a Global limit (starts redis-server)

Needs valgrind and nginx (Debian: valgrind, nginx-light). Each measurement takes about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchlib import free_port

ROOT = Path(__file__).resolve().parent.parent
REQUEST = b"GET /bench HTTP/1.1\r\nHost: localhost\r\nUser-Agent: callgrind-ab\r\nAccept: */*\r\n\r\n"


def variant(name: str) -> tuple[str, bytes]:
    """The route spec lines and the request of a variant (those of ``proxy_bench.py``'s kubegate-*)."""
    import proxy_bench

    if name == "plain":
        return "", REQUEST
    if name == "policies":
        return proxy_bench.POLICY_SPEC, REQUEST
    if name == "accesslog":  # the plain route, kubegate serve --access-log (one JSON line per request)
        return "", REQUEST
    if name == "plain-keyheader":  # the plain route, sent the apikey variant's request (its extra header)
        return "", REQUEST[:-2] + b"X-API-Key: bench-api-key-0123456789\r\n\r\n"
    if name == "apikey":
        return proxy_bench.APIKEY_SPEC, REQUEST[:-2] + b"X-API-Key: bench-api-key-0123456789\r\n\r\n"
    if name == "ratelimit":  # a Local limit high enough that every request is admitted
        return "  rateLimit: {requestsPerSecond: 1000000, burst: 1000000, scope: Local}\n", REQUEST
    if name == "global":  # the same limit, Global: one Redis script per request (redis-server started here)
        return "  rateLimit: {requestsPerSecond: 1000000, burst: 1000000, scope: Global}\n", REQUEST
    if name == "cache":  # every request after the first answered from the Memory store (a hit)
        return proxy_bench.CACHE_SPEC, REQUEST
    if name == "jwt":
        spec, token = proxy_bench._jwt_variant()
        return spec, REQUEST[:-2] + b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    raise SystemExit(f"unknown variant {name!r}")


def load(port: int, n: int, conns: int = 4, request: bytes = REQUEST) -> None:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(conns)]
    try:
        for _ in range(n // conns):
            for s in socks:
                s.sendall(request)
            for s in socks:
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise RuntimeError("kubegate closed the connection")
                    data += chunk
                    head, sep, body = data.partition(b"\r\n\r\n")
                    if sep:
                        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
                        if len(body) >= length:
                            break
    finally:
        for s in socks:
            s.close()


def wait_for_traffic(
    port: int, proc: subprocess.Popen[bytes], request: bytes = REQUEST, timeout: float = 600
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("kubegate exited")
        try:
            load(port, 1, conns=1, request=request)
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError("kubegate did not answer in time")


def measure(
    label: str,
    src: Path,
    upstream: int,
    work: Path,
    n: int,
    spec: str,
    request: bytes,
    extra: tuple[str, ...] = (),
) -> int:
    port, admin = free_port(), free_port()
    routes = work / f"routes-{label}.yaml"
    routes.write_text(
        "apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: bench, namespace: default}\n"
        "spec:\n  match: {path: {type: Prefix, value: /}}\n"
        f'  backends: [{{url: "http://127.0.0.1:{upstream}"}}]\n' + spec
    )
    out = work / f"{label}.callgrind"
    env = {**os.environ, "PYTHONPATH": str(src / "dataplane")}
    cmd = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, "-m", "kubegate.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--admin-port", str(admin), "--routes", str(routes), "--log-level", "warning",
        *(["--access-log"] if label == "accesslog" else []), *extra,
    ]  # fmt: skip
    with open(work / f"{label}.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_traffic(port, proc, request)
        load(port, 200, request=request)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        load(port, n, request=request)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    dump = Path(f"{out}.1")
    total = next(
        int(line.split()[1]) for line in dump.read_text().splitlines() if line.startswith("summary:")
    )
    return total // n


@contextlib.contextmanager
def _redis(work: Path) -> Iterator[str]:
    """A redis-server on a free port (no persistence) for the ``global`` variant; its URL."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=work,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="root of another kubegate checkout to measure too")
    ap.add_argument("-n", type=int, default=2000, help="measured requests (2000)")
    ap.add_argument("--keep", type=Path, help="keep the callgrind dumps here, for callgrind_annotate")
    ap.add_argument(
        "--variant",
        action="append",
        choices=(
            "plain",
            "plain-keyheader",
            "accesslog",
            "policies",
            "apikey",
            "jwt",
            "ratelimit",
            "global",
            "cache",
        ),
        help="route variants to measure (repeatable; default plain): proxy_bench.py's kubegate-* routes",
    )
    args = ap.parse_args()
    variants = args.variant or ["plain"]
    with tempfile.TemporaryDirectory(prefix="callgrind-ab-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        upstream = free_port()
        (work / "nginx.conf").write_text(
            f"daemon off; master_process off; worker_processes 1; pid {work}/nginx.pid; "
            f"error_log {work}/nginx.err;\nevents {{ worker_connections 1024; }}\n"
            f"http {{ access_log off; keepalive_requests 10000000; server {{ listen 127.0.0.1:{upstream}; "
            f'location / {{ return 200 "{"x" * 100}"; }} }} }}\n'
        )
        nginx = subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)])
        try:
            results = []
            for name in variants:
                spec, request = variant(name)
                with contextlib.ExitStack() as stack:
                    extra: tuple[str, ...] = ()
                    if name == "global":
                        extra = ("--redis-url", stack.enter_context(_redis(work)))
                    measured = measure(name, ROOT, upstream, work, args.n, spec, request, extra)
                results.append((f"this checkout, {name}", measured))
            if args.baseline is not None:
                spec, request = variant("plain")
                measured = measure("base", args.baseline, upstream, work, args.n, spec, request)
                results.append((f"baseline {args.baseline}, plain", measured))
        finally:
            nginx.terminate()
            nginx.wait(10)
    first = results[0][1]
    for label, per_request in results:
        print(f"{label:48s} {per_request:>9,} instructions/request  {per_request / first:6.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
