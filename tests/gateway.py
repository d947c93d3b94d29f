"""Real ``kubegate serve`` processes for end-to-end tests, on free ports of 127.0.0.1 (or ``host``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.upstreams import wait_for

TOKEN = "test-push-token-0123456789"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    def __init__(
        self,
        tmp: Path,
        *,
        routes: Path | None = None,
        extra: list[str] | None = None,
        token: str | None = TOKEN,
        bootstrap: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.admin_port = free_port(host)
        self.token = token
        args = [
            sys.executable,
            "-m",
            "kubegate.cli",
            "serve",
            "--host",
            host,
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
            "--drain-timeout",
            "5",
        ]
        if token is not None:
            tf = tmp / f"token-{self.port}"
            tf.write_text(token + "\n")
            args += ["--push-token-file", str(tf)]
        if routes is not None:
            args += ["--routes", str(routes)]
        if bootstrap is not None:
            args += ["--bootstrap", str(bootstrap)]
        args += extra or []
        self.log_path = tmp / f"gateway-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k != "KUBEGATE_PUSH_TOKEN"}
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://{host}:{self.port}"
        self.admin = f"http://{host}:{self.admin_port}"
        wait_for(self._healthy, timeout=20)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"kubegate serve exited early:\n{self.log()}")
        try:
            if httpx.get(self.admin + "/health", timeout=1).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
        try:  # the admin port opens first: wait for the traffic port too
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def table(self) -> dict[str, Any]:
        return dict(httpx.get(self.admin + "/table", timeout=5).json())

    def push(self, table: dict[str, Any], token: str | None = None) -> httpx.Response:
        return httpx.put(
            self.admin + "/table",
            json=table,
            timeout=30,
            headers={"authorization": f"Bearer {token or self.token}"},
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def table(*routes: dict[str, Any], version: str = "t1") -> dict[str, Any]:
    return {"apiVersion": "kubegate.dev/v1alpha1", "version": version, "routes": list(routes)}


def route(
    name: str, *urls: str, path: str = "/", ptype: str = "Prefix", ns: str = "default", **extra: Any
) -> dict[str, Any]:
    """A compiled route (wire form) sending to static endpoints given as http://host:port URLs."""
    backends = []
    for i, u in enumerate(urls):
        host, port = u.removeprefix("http://").rsplit(":", 1)
        backends.append(
            {"name": f"url:{u}#{i}", "weight": 1, "endpoints": [{"host": host, "port": int(port)}]}
        )
    r: dict[str, Any] = {
        "id": f"{ns}/{name}",
        "namespace": ns,
        "name": name,
        "match": {"path": {"type": ptype, "value": path}},
        "backends": backends,
    }
    r.update(extra)
    return r
