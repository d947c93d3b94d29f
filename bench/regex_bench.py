"""How long a hostile request takes against a route whose header match is ``(a+)+$`` (issue 14).

Not a test: it prints figures and asserts nothing. ``python bench/regex_bench.py [--cap SECONDS]``.

Three tables:

1. RE2 (what kubegate runs): ``Matcher.match`` for a request whose ``X-R`` header is ``n`` times ``a``
   then ``!``, for n = 20..26 and for 10,000 and 30,000 (the header limit is 32 KiB).
2. Python ``re`` (what kubegate ran before): ``re.fullmatch("(a+)+$", "a" * n + "!")`` for n = 20..26, each
   in a child process killed after ``--cap`` seconds; after the first one that hits the cap, the longer
   ones are not tried (each ``a`` doubles the time).
3. A real ``kubegate serve`` process (standalone, a routes file): the wall-clock time of whole requests
   with the 10,000-character hostile header, over fresh connections, next to a plain request.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubegate.compiler import table
from kubegate.dataplane import matcher

PATTERN = "(a+)+$"
SMALL = range(20, 27)


def re2_matcher_figures(repeat: int) -> None:
    route = table.CompiledRoute.model_validate(
        {
            "id": "ns/r",
            "namespace": "ns",
            "name": "r",
            "backends": [{"name": "b"}],
            "match": {"headers": [{"name": "X-R", "value": PATTERN, "type": "RegularExpression"}]},
        }
    )
    m = matcher.Matcher([(route, route.id)])
    print(f"RE2: Matcher.match with header X-R: 'a' * n + '!' (route: {PATTERN}), best of {repeat}")
    for n in [*SMALL, 10_000, 30_000]:
        headers = {"x-r": "a" * n + "!"}
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            found = m.match("GET", "h", "/", "", headers)
            times.append(time.perf_counter() - start)
        print(f"  n = {n:>6}: {min(times) * 1e6:9.1f} µs  (route found: {found is not None})")


_RE_CHILD = (
    "import re, sys, time\n"
    "text = 'a' * int(sys.argv[1]) + '!'\n"
    "start = time.perf_counter()\n"
    f"found = re.fullmatch({PATTERN!r}, text)\n"
    "print(time.perf_counter() - start, found is not None)\n"
)


def python_re_figures(cap: float) -> None:
    print(f"Python re: re.fullmatch({PATTERN!r}, 'a' * n + '!'), one child process each, cap {cap:g} s")
    for n in SMALL:
        try:
            done = subprocess.run(
                [sys.executable, "-c", _RE_CHILD, str(n)], capture_output=True, text=True, timeout=cap
            )
        except subprocess.TimeoutExpired:
            print(f"  n = {n:>6}: > {cap:g} s (stopped; each further 'a' doubles it)")
            return
        elapsed, found = done.stdout.split()
        print(f"  n = {n:>6}: {float(elapsed) * 1e3:9.1f} ms  (matched: {found})")
    print("  n =  10000: about 2^10000 steps: never")


ROUTES = """\
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {name: nested, namespace: default}
spec:
  match:
    path: {value: /h}
    headers: [{name: X-R, value: "(a+)+$", type: RegularExpression}]
  backends: [{url: "http://127.0.0.1:9"}]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, extra: str) -> tuple[float, bytes]:
    head = f"GET /h HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n{extra}\r\n".encode()
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return time.perf_counter() - start, b"".join(chunks).split(b"\r\n", 1)[0]


def serve_figures(requests: int) -> None:
    port, admin = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        routes = Path(tmp) / "routes.yaml"
        routes.write_text(ROUTES)
        args = [sys.executable, "-m", "kubegate.cli", "serve", "--routes", str(routes)]
        args += ["--port", str(port), "--admin-port", str(admin), "--log-level", "warning"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEGATE_")}
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", admin), timeout=1) as s:
                        s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        if b" 200 " in s.recv(1024):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("kubegate serve did not become ready")
                time.sleep(0.1)
            print(f"kubegate serve: whole requests to /h on fresh connections, {requests} each")
            for label, header in [
                ("no X-R header", ""),
                ("X-R: 'a' * 10,000 + '!'", f"X-R: {'a' * 10_000}!\r\n"),
            ]:
                times, statuses = [], set()
                for _ in range(requests):
                    elapsed, status = _request(port, header)
                    times.append(elapsed)
                    statuses.add(status.decode())
                print(
                    f"  {label:<24} p50 {statistics.median(times) * 1e3:6.2f} ms, "
                    f"max {max(times) * 1e3:6.2f} ms, answered {sorted(statuses)}"
                )
        finally:
            proc.terminate()
            proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cap", type=float, default=10.0, help="seconds per Python re run (default 10)")
    parser.add_argument("--repeat", type=int, default=200, help="RE2 matcher runs per length (best of)")
    parser.add_argument("--requests", type=int, default=50, help="requests per kind to kubegate serve")
    args = parser.parse_args()
    re2_matcher_figures(args.repeat)
    print()
    python_re_figures(args.cap)
    print()
    serve_figures(args.requests)


if __name__ == "__main__":
    main()
