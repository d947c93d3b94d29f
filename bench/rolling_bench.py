"""A rolling restart of 3 data planes behind nginx, under steady load: how many client requests fail.

The shape of a Kubernetes rollout, with nginx as the Service: for each of 3 ``kubegate serve`` replicas in
turn, the replica is taken out of nginx's upstream (a config reload: what the endpoints controller does
once readiness fails or the pod is deleted), a preStop-like pause follows, then SIGTERM drains it, a new
replica starts on the same port, and once it answers it goes back into nginx. nginx retries nothing
(``proxy_next_upstream off``), so every request a drain cuts off reaches the client as a 502.

Load: ``--clients`` threads sending GETs back to back through nginx (a new client connection per
request; nginx keeps a keep-alive pool to the replicas) to an upstream that answers after 20 ms. Prints
the requests answered and failed (by status or error) and exits 1 on any failure. Needs nginx (Debian:
nginx-light). Traffic goes to 127.0.0.1 only; everything is bounded in time.

    python bench/rolling_bench.py
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import free_port, slow_upstream, wait_port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between leaving nginx and SIGTERM (1)")
    args = ap.parse_args()
    upstream, upstream_port = slow_upstream(0.02)
    work = Path(tempfile.mkdtemp(prefix="rolling-"))
    routes = work / "routes.yaml"
    routes.write_text(
        "apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: r, namespace: default}\n"
        f'spec:\n  backends: [{{url: "http://127.0.0.1:{upstream_port}"}}]\n'
    )
    ports = [free_port() for _ in range(3)]
    front = free_port()
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(port: int) -> None:
        log = open(work / f"dp-{port}.log", "ab")  # noqa: SIM115
        procs[port] = subprocess.Popen(
            [sys.executable, "-m", "kubegate.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--admin-port", str(free_port()), "--routes", str(routes), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_port(port)

    def nginx_conf(out: set[int]) -> None:
        servers = "".join(f"server 127.0.0.1:{p}{' down' if p in out else ''}; " for p in ports)
        (work / "nginx.conf").write_text(
            f"daemon on; pid {work}/nginx.pid; error_log {work}/nginx.err; worker_processes 1;\n"
            "events { worker_connections 4096; }\n"
            f"http {{ access_log off; upstream dps {{ {servers} keepalive 64; }}\n"
            f"server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://dps; "
            'proxy_http_version 1.1; proxy_set_header Connection ""; proxy_next_upstream off; } } }\n'
        )

    for p in ports:
        start(p)
    nginx_conf(set())
    subprocess.run(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], check=True)
    wait_port(front)
    counts: dict[str, int] = {"answered": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        # A connection per request to nginx: nginx's own reload closes idle client keep-alive connections
        # (a client racing it sees a disconnect that says nothing about kubegate). nginx keeps its own
        # keep-alive pool to the replicas, which is what the drains are tested against.
        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", front, timeout=10)
            try:
                conn.request("GET", "/x", headers={"connection": "close"})
                resp = conn.getresponse()
                resp.read()
                key = "answered" if resp.status == 200 else f"status {resp.status}"
            except (OSError, http.client.HTTPException) as exc:
                key = f"error {exc.__class__.__name__}"
            finally:
                conn.close()
            with lock:
                counts[key] = counts.get(key, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        for p in ports:
            nginx_conf({p})
            subprocess.run(
                ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-s", "reload"], check=True
            )
            time.sleep(args.pause)  # preStop: nginx's old workers finish with this replica
            procs[p].send_signal(signal.SIGTERM)
            procs[p].wait(60)
            start(p)
            nginx_conf(set())
            subprocess.run(
                ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-s", "reload"], check=True
            )
            time.sleep(1)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        subprocess.run(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-s", "stop"], check=False)
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        upstream.shutdown()
    failed = sum(n for k, n in counts.items() if k != "answered")
    print(f"rolling restart of 3 replicas behind nginx, {args.clients} clients, pause {args.pause:g} s")
    for key, n in sorted(counts.items()):
        print(f"  {key}: {n}")
    print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
