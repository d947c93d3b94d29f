"""End-to-end suite: a kind cluster, both images built and loaded, the chart installed, the demo backend
and the example routes applied; then real HTTP through the gateway.

Run it with ``pytest e2e`` on a machine with a Docker engine, kind, helm and kubectl (helm and kubectl
may also be in ``.ci/bin``). Without them, every test is skipped before any fixture runs, with one
reason saying what is missing (pytest folds skips by mark into one summary line per file).

``KUBEGATE_E2E_CLUSTER=NAME`` reuses an existing kind cluster created by an earlier run with
``KUBEGATE_E2E_KEEP=1`` (kept afterwards); otherwise a cluster ``kubegate-e2e`` is created and deleted.
The main suite (``pytest``: testpaths = tests) never collects this directory; its fixtures live here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from e2e import cluster as c

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in item.path.parents]
    missing = c.missing_requirements() if mine else []
    for item in mine:
        item.add_marker(pytest.mark.e2e)
        if missing:
            item.add_marker(pytest.mark.skip(reason="e2e needs " + ", ".join(missing)))


def _host_port(name: str) -> int:
    out = c.run(["docker", "port", f"{name}-control-plane", f"{c.NODE_PORT}/tcp"]).strip().splitlines()
    return int(out[0].rsplit(":", 1)[1])


def _create_cluster(name: str, workdir: Path) -> None:
    if name in c.run(["kind", "get", "clusters"]).split():
        c.run(["kind", "delete", "cluster", "--name", name], timeout=300)
    config = workdir / "kind.yaml"
    config.write_text(c.kind_config(c.free_port()))
    c.run(
        ["kind", "create", "cluster", "--name", name, "--config", str(config), "--wait", "180s"], timeout=600
    )


def _build_and_load(name: str) -> None:
    for component in ("dataplane", "operator"):
        c.run(
            [
                "docker",
                "build",
                "-f",
                str(c.ROOT / f"Dockerfile.{component}"),
                "-t",
                c.image(component),
                str(c.ROOT),
            ],
            timeout=1200,
        )
        c.run(["kind", "load", "docker-image", c.image(component), "--name", name], timeout=600)


def _install(kube: c.Cluster, workdir: Path) -> None:
    values = workdir / "values.yaml"
    values.write_text(yaml.safe_dump(c.chart_values()))
    kube.helm(
        "upgrade", "--install", c.RELEASE, str(c.CHART), "--namespace", c.NAMESPACE, "--create-namespace",
        "-f", str(values), "--timeout", "5m",
    )  # fmt: skip
    kube.apply(c.demo_backend(), c.APPS)
    for deployment in ("echo", "echo-canary"):
        kube.rollout(f"deployment/{deployment}", c.APPS)
    kube.rollout(f"deployment/{c.RELEASE}-operator", c.NAMESPACE)
    kube.apply(c.example_routes(), c.APPS)
    # A data-plane pod turns ready once the operator has pushed it a table.
    kube.rollout(f"deployment/{c.RELEASE}-dataplane", c.NAMESPACE)


def _report(request: pytest.FixtureRequest, workdir: Path, kube: c.Cluster) -> None:
    report = workdir / "diagnostics.txt"
    report.write_text(kube.diagnostics())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"e2e: cluster state written to {report}")


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[c.Cluster]:
    workdir = tmp_path_factory.mktemp("e2e")
    reuse = os.environ.get("KUBEGATE_E2E_CLUSTER")
    name = reuse or "kubegate-e2e"
    keep = bool(reuse) or os.environ.get("KUBEGATE_E2E_KEEP") == "1"
    if not reuse:
        _create_cluster(name, workdir)
    try:
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(c.run(["kind", "get", "kubeconfig", "--name", name]))
        kube = c.Cluster(name=name, kubeconfig=kubeconfig, host_port=_host_port(name))
        _build_and_load(name)
        installed = False
        try:
            _install(kube, workdir)
            installed = True
            yield kube
        finally:
            if not installed or request.session.testsfailed:
                _report(request, workdir, kube)
    finally:
        if not keep:
            c.run(["kind", "delete", "cluster", "--name", name], timeout=300)
