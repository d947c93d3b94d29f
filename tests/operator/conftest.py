"""Fixtures for the operator suite: the Kubernetes API emulator, real data planes, a real operator process.

The operator runs as ``python -m kubegate_operator`` with ``KUBECONFIG`` pointing at the emulator (kopf
must not share the test's event loop), against 2 real ``kubegate serve`` processes discovered through
the EndpointSlice of the data-plane Service, and real upstream servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from kubegate.api import crd
from tests.gateway import TOKEN, GatewayProcess
from tests.operator.kube import ROUTES, SERVICES, SLICES, KubeAPI
from tests.upstreams import UpstreamServer, wait_for

DP_NS = "kubegate-system"
DP_SERVICE = "kubegate-dataplane"
BOOTSTRAP = f"{DP_NS}/kubegate-bootstrap"

_VALIDATOR = jsonschema.Draft4Validator(crd.openapi_schema())


def gatewayroute(
    name: str, spec: dict[str, Any], ns: str = "default", *, valid: bool = True
) -> dict[str, Any]:
    """A GatewayRoute, checked against the CRD schema (kmock validates nothing)."""
    body = {
        "apiVersion": "kubegate.dev/v1alpha1",
        "kind": "GatewayRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }
    errors = [e.message for e in _VALIDATOR.iter_errors(body)]
    assert (errors == []) == valid, f"CRD schema verdict on {name}: {errors}"
    return body


def endpoint_slice(
    name: str,
    service: str,
    addresses: list[str],
    port: int,
    ns: str = "default",
    *,
    port_name: str = "http",
    ready: bool = True,
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses],
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


def service(name: str, port: int, ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": port}]},
    }


class Cluster:
    """The emulator, the data planes and the operator process of one test."""

    def __init__(self, tmp: Path, api: KubeAPI) -> None:
        self.tmp = tmp
        self.api = api
        self.kubeconfig = api.kubeconfig(tmp / "kubeconfig")
        self.token_file = tmp / "push-token"
        self.token_file.write_text(TOKEN + "\n")
        self.gateways: list[GatewayProcess] = []
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log = tmp / "operator.log"

    def start_gateways(self, count: int) -> None:
        for _ in range(count):
            self.gateways.append(GatewayProcess(self.tmp))
        self.publish_dataplane()

    def publish_dataplane(self) -> None:
        """The data-plane Service's EndpointSlice lists every gateway's admin port (all on 127.0.0.1,
        so each replica gets its own slice: one slice has one port)."""
        existing = {s["metadata"]["name"] for s in self.api.list(SLICES, DP_NS)}
        wanted = set()
        for gw in self.gateways:
            name = f"{DP_SERVICE}-{gw.admin_port}"
            wanted.add(name)
            if name not in existing:
                body = endpoint_slice(
                    name, DP_SERVICE, ["127.0.0.1"], gw.admin_port, DP_NS, port_name="admin", ready=False
                )
                self.api.create(SLICES, body)
        for name in existing - wanted:
            self.api.delete(SLICES, DP_NS, name)

    def start_operator(self, *extra: str) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "NO_PROXY": "*"}
        args = [
            sys.executable,
            "-m",
            "kubegate_operator",
            "--dataplane-service",
            f"{DP_NS}/{DP_SERVICE}",
            "--push-token-file",
            str(self.token_file),
            "--bootstrap-secret",
            BOOTSTRAP,
            "--resync-interval",
            "0.5",
            "--holdoff",
            "0.02",
            "--max-delay",
            "0.2",
            *extra,
        ]
        log = open(self.operator_log, "ab")  # noqa: SIM115
        self.operator = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
        self.operator = None

    def close(self) -> None:
        self.stop_operator()
        for gw in self.gateways:
            gw.stop()

    # --- helpers for assertions -------------------------------------------------------------

    def status(self, name: str, ns: str = "default") -> dict[str, Any]:
        obj = self.api.get(ROUTES, ns, name)
        return dict((obj or {}).get("status") or {})

    def condition(self, name: str, type_: str, ns: str = "default") -> dict[str, Any]:
        for cond in self.status(name, ns).get("conditions", []):
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def wait(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        try:
            return wait_for(predicate, timeout=timeout, interval=0.02)
        except TimeoutError:
            raise AssertionError(
                f"not in {timeout} s: {what}\n--- operator log tail:\n{self.log_tail()}"
            ) from None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.operator_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def serves_everywhere(self, path: str, backend: str) -> bool:
        """A real request through every data plane reaches ``backend``."""
        for gw in self.gateways:
            try:
                response = httpx.get(gw.url + path, timeout=2)
            except httpx.HTTPError:
                return False
            if response.status_code != 200 or response.headers.get("x-backend") != backend:
                return False
        return True

    def statuses_everywhere(self, path: str) -> set[int]:
        return {httpx.get(gw.url + path, timeout=2).status_code for gw in self.gateways}


@pytest.fixture(scope="module")
def kube_api() -> Iterator[KubeAPI]:
    api = KubeAPI()
    yield api
    api.close()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, UpstreamServer]]:
    servers = {name: UpstreamServer(name).start() for name in ("alpha", "beta", "gamma")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, kube_api: KubeAPI) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("operator")
    c = Cluster(tmp, kube_api)
    try:
        c.start_gateways(2)
        c.start_operator()
        yield c
    finally:
        c.close()


__all__ = ["ROUTES", "SERVICES", "SLICES", "Cluster", "endpoint_slice", "gatewayroute", "service"]
