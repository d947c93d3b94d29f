"""Requests lost when a loaded ``kubegate serve`` is stopped with SIGTERM (issue 14's drain target: 0).

32 client threads (by default) send GET requests back to back on keep-alive connections through one data
plane to an upstream that answers after 50 ms. After a few seconds the data plane gets SIGTERM. A client
counts:

- **answered**: a complete response (the ones after SIGTERM carry ``Connection: close``; the client then
  stops, as a client behind a Service would go to another replica);
- **lost**: a request written on an open keep-alive connection that got no complete response (reset or
  closed first) — what the drain must never produce;
- **refused**: a new connection refused once the listener has closed (not a loss: nothing was sent).

It prints the counts and exits 1 if any request was lost. Traffic goes to 127.0.0.1 only; every loop is
bounded in time.

    python bench/drain_bench.py                  # 32 clients, SIGTERM after 3 s
    python bench/drain_bench.py --clients 64 --before 5
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import free_port, slow_upstream, wait_port


def read_response(sock: socket.socket) -> tuple[bytes, bool]:
    """One response (head, closing?); raises ConnectionError when the connection ends first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lower = head.lower()
    length = int(lower.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a response")
        body += chunk
    return head, b"\r\nconnection: close" in lower


reasons: dict[str, int] = {}


def client(port: int, deadline: float, counts: dict[str, int], lock: threading.Lock) -> None:
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            with lock:
                counts["refused"] += 1
            return
        with sock:
            while time.monotonic() < deadline:
                try:
                    sock.sendall(b"GET /x HTTP/1.1\r\nHost: bench\r\n\r\n")
                    _, closing = read_response(sock)
                except (OSError, ConnectionError) as exc:
                    with lock:
                        counts["lost"] += 1
                        reasons[f"{exc.__class__.__name__}: {exc}"] = (
                            reasons.get(f"{exc.__class__.__name__}: {exc}", 0) + 1
                        )
                    return
                with lock:
                    counts["answered"] += 1
                if closing:
                    return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--before", type=float, default=3.0, help="seconds of load before SIGTERM (3)")
    args = ap.parse_args()
    upstream, upstream_port = slow_upstream(0.05)
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        routes = Path(tmp) / "routes.yaml"
        routes.write_text(
            "apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: r, namespace: default}\n"
            f'spec:\n  backends: [{{url: "http://127.0.0.1:{upstream_port}"}}]\n'
        )
        log = open(Path(tmp) / "gateway.log", "wb")  # noqa: SIM115
        gw = subprocess.Popen(
            [sys.executable, "-m", "kubegate.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--admin-port", str(admin), "--routes", str(routes), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_port(port)
            counts = {"answered": 0, "lost": 0, "refused": 0}
            lock = threading.Lock()
            deadline = time.monotonic() + args.before + 30
            threads = [
                threading.Thread(target=client, args=(port, deadline, counts, lock))
                for _ in range(args.clients)
            ]
            for t in threads:
                t.start()
            time.sleep(args.before)
            with lock:
                before = counts["answered"]
            gw.send_signal(signal.SIGTERM)
            code = gw.wait(60)
            for t in threads:
                t.join(35)
        finally:
            if gw.poll() is None:
                gw.kill()
            log.close()
            upstream.shutdown()
    print(
        f"clients {args.clients}, upstream 50 ms, SIGTERM after {args.before:g} s ({before} answered by then)"
    )
    print(
        f"answered {counts['answered']}  lost {counts['lost']}  refused (listener closed) {counts['refused']}"
    )
    print(f"kubegate exit code {code}")
    for reason, n in sorted(reasons.items()):
        print(f"  lost: {n} x {reason}")
    return 1 if counts["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
