"""Fixtures for the operator suite: the Kubernetes API emulator, real data planes, real operator processes.

The operator runs as ``python -m kubegate_operator`` with ``KUBECONFIG`` pointing at the emulator (kopf
must not share the test's event loop), against 2 real ``kubegate serve`` processes discovered through
the EndpointSlice of the data-plane Service, and real upstream servers. A cluster can run several
operators (leader election); each has its own log file and metrics port, scraped over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubegate.api import crd
from tests.gateway import TOKEN, GatewayProcess, free_port
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


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Operator:
    """One ``python -m kubegate_operator`` process: its log file and its metrics endpoint."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        given = [a.split("=", 1)[1] for a in args if a.startswith("--metrics-port=")]
        given += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--metrics-port"]
        if given:  # the caller chose the port (bench/convergence_bench.py does)
            self.metrics_port = int(given[-1])
        else:
            self.metrics_port = free_port()
            args = [*args, "--metrics-port", str(self.metrics_port)]
        log = open(log_path, "ab")  # noqa: SIM115
        # unbuffered: a test reads the log while the process runs (a block-buffered stdout holds lines back)
        env = {**env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def samples(self) -> Samples | None:
        """Every sample of ``GET /metrics`` by (name, labels); None while the endpoint does not answer."""
        try:
            response = httpx.get(self.metrics_url, timeout=2)
        except httpx.HTTPError:
            return None
        response.raise_for_status()
        out: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                out[sample.name, frozenset(sample.labels.items())] = float(sample.value)
        return out

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent, as for a counter never incremented)."""
        samples = self.samples()
        if samples is None:
            raise AssertionError(f"operator {self.name}: {self.metrics_url} does not answer")
        return samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str) -> float:
        """The sum of a metric over all its label values."""
        samples = self.samples() or {}
        return sum(value for (sample, _), value in samples.items() if sample == name)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []


def assert_json_log(lines: list[str]) -> list[dict[str, Any]]:
    """Every line is one JSON object with time, level, logger and message (kubegate.logs)."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record), line
        records.append(record)
    return records


class Cluster:
    """The emulator, the data planes and the operator process(es) of one test module."""

    def __init__(self, tmp: Path, api: KubeAPI) -> None:
        self.tmp = tmp
        self.api = api
        self.kubeconfig = api.kubeconfig(tmp / "kubeconfig")
        self.token_file = tmp / "push-token"
        self.token_file.write_text(TOKEN + "\n")
        self.gateways: list[GatewayProcess] = []
        self.operators: dict[str, Operator] = {}

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

    def start_operator(self, *extra: str, name: str = "operator") -> Operator:
        """Start an operator process (``name`` also names its log file, ``TMP/NAME.log``)."""
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
        if name in self.operators:
            self.operators[name].stop()
        operator = Operator(name, args, env, self.tmp / f"{name}.log")
        self.operators[name] = operator
        return operator

    @property
    def operator(self) -> Operator:
        return self.operators["operator"]

    def stop_operator(self, name: str = "operator", sig: int = signal.SIGTERM) -> None:
        operator = self.operators.get(name)
        if operator is not None:
            operator.stop(sig)

    def close(self) -> None:
        for operator in self.operators.values():
            operator.stop()
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
        return "\n".join(
            f"--- {op.name}:\n" + "\n".join(op.log_lines()[-lines:]) for op in self.operators.values()
        )

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


REPLICAS = 3  # data-plane processes behind the module-wide cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, kube_api: KubeAPI) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("operator")
    c = Cluster(tmp, kube_api)
    try:
        c.start_gateways(REPLICAS)
        c.start_operator()
        yield c
    finally:
        c.close()


__all__ = [
    "REPLICAS",
    "ROUTES",
    "SERVICES",
    "SLICES",
    "Cluster",
    "Operator",
    "Samples",
    "assert_json_log",
    "endpoint_slice",
    "gatewayroute",
    "service",
]
