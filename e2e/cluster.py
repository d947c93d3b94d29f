"""Helpers of the end-to-end suite: commands, polling, a kind cluster with kubegate installed, and a steady
request stream that records every failed request.

Nothing here runs unless ``e2e/conftest.py`` found Docker and kind; every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "kubegate"
EXAMPLES = ROOT / "examples"
NAMESPACE = "kubegate-system"  # the release
APPS = "default"  # the demo backend and the example routes (route-url-backend.yaml names it)
RELEASE = "kubegate"
NODE_PORT = 30080
IMAGE_TAG = "e2e"

T = TypeVar("T")


def tool(name: str) -> str | None:
    """A binary on PATH, else the one .ci/run installs into .ci/bin."""
    found = shutil.which(name)
    if found:
        return found
    local = ROOT / ".ci" / "bin" / name
    return str(local) if local.is_file() else None


def missing_requirements() -> list[str]:
    """What this machine lacks to run the suite (empty: everything is there)."""
    missing = []
    if shutil.which("docker") is None:
        missing.append("the docker CLI")
    else:
        try:
            info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
            if info.returncode != 0:
                missing.append("a running Docker engine (`docker info` failed)")
        except subprocess.TimeoutExpired:
            missing.append("a responsive Docker engine (`docker info` timed out)")
    for name in ("kind", "helm", "kubectl"):
        if tool(name) is None:
            missing.append(f"{name} on PATH" + ("" if name == "kind" else " or in .ci/bin"))
    return missing


def run(
    args: Sequence[str], *, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 300
) -> str:
    result = subprocess.run(
        list(args), capture_output=True, text=True, env=env, input=input, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def wait_until(what: str, check: Callable[[], T | None], *, timeout: float = 180, every: float = 1.0) -> T:
    """Call ``check`` until it returns something truthy; its last exception is reported on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as error:  # reported below if it never succeeds
            last = error
        else:
            if value:
                return value
            last = value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Cluster:
    """A kind cluster and the tools pointed at it."""

    name: str
    kubeconfig: Path
    host_port: int  # 127.0.0.1:host_port → every node's NodePort 30080 → the gateway Service

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        return run([tool("kubectl") or "kubectl", *args], env=self.env, input=input, timeout=timeout)

    def kubectl_result(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [tool("kubectl") or "kubectl", *args]
        return subprocess.run(
            command, capture_output=True, text=True, env=self.env, input=input, timeout=120, check=False
        )

    def helm(self, *args: str, timeout: float = 300) -> str:
        return run([tool("helm") or "helm", *args], env=self.env, timeout=timeout)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, docs: list[dict[str, Any]], namespace: str) -> str:
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))

    def rollout(self, kind_name: str, namespace: str, timeout: int = 240) -> None:
        self.kubectl(
            "rollout", "status", kind_name, "-n", namespace, f"--timeout={timeout}s", timeout=timeout + 30
        )

    def pods(self, namespace: str, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
        items: list[dict[str, Any]] = self.get_json("pods", "-n", namespace, "-l", selector)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def via_pod(self, pod: str, path: str) -> Any:
        """GET ``path`` from one data-plane pod's traffic port, through the API server's pod proxy."""
        raw = self.kubectl("get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}:8080/proxy{path}")
        return json.loads(raw)

    def routes(self, namespace: str = APPS) -> dict[str, dict[str, dict[str, Any]]]:
        """name → condition type → condition, from ``kubectl get gatewayroutes``."""
        items = self.get_json("gatewayroutes", "-n", namespace)["items"]
        return {
            item["metadata"]["name"]: {c["type"]: c for c in item.get("status", {}).get("conditions", [])}
            for item in items
        }

    def diagnostics(self) -> str:
        out = []
        for args in (
            ["get", "pods,svc,endpointslices", "-A", "-o", "wide"],
            ["get", "gatewayroutes", "-A"],
            ["logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator", "--tail=80", "--prefix"],
            ["logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=dataplane", "--tail=40", "--prefix"],
            ["get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"],
        ):
            result = self.kubectl_result(*args)
            out.append(f"$ kubectl {' '.join(args)}\n{result.stdout}{result.stderr}")
        return "\n".join(out)


def kind_config(host_port: int) -> str:
    return yaml.safe_dump(
        {
            "kind": "Cluster",
            "apiVersion": "kind.x-k8s.io/v1alpha4",
            "nodes": [
                {
                    "role": "control-plane",
                    "extraPortMappings": [
                        {"containerPort": NODE_PORT, "hostPort": host_port, "listenAddress": "127.0.0.1"}
                    ],
                },
                {"role": "worker"},
            ],
        }
    )


def image(component: str) -> str:
    return f"kubegate/{component}:{IMAGE_TAG}"


def chart_values() -> dict[str, Any]:
    """The e2e install: the images just built and loaded, reached through a NodePort on the host."""
    return {
        "operator": {"image": {"repository": "kubegate/operator", "tag": IMAGE_TAG, "pullPolicy": "Never"}},
        "dataplane": {
            "replicas": 2,
            "image": {"repository": "kubegate/dataplane", "tag": IMAGE_TAG, "pullPolicy": "Never"},
            # A quicker hand-over in tests; still longer than the sleep + drain, as the chart requires.
            "preStopSleepSeconds": 5,
            "drainTimeoutSeconds": 10,
            "terminationGracePeriodSeconds": 20,
        },
        "service": {"type": "NodePort", "nodePort": NODE_PORT},
    }


def demo_backend() -> list[dict[str, Any]]:
    """examples/demo-backend.yaml with the image built for the test."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "demo-backend.yaml").read_text()) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["image"] = image("dataplane")
                container["imagePullPolicy"] = "Never"
    return docs


def example_routes() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("route-*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


class RequestStream:
    """A steady stream of requests (a new connection each) in a thread; records every failure."""

    def __init__(self, url: str, *, interval: float = 0.02, timeout: float = 5.0) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-stream", daemon=True)

    def _run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=self.timeout, limits=limits) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.get(self.url)
                    if response.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{time.strftime('%X')} HTTP {response.status_code}")
                except httpx.HTTPError as error:
                    self.failures.append(f"{time.strftime('%X')} {type(error).__name__}: {error}")
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> RequestStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)
