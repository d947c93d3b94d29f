"""The ``kubegate`` command as a user runs it: ``serve --demo`` (the README's quickstart) and ``compile``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.gateway import GatewayProcess, free_port
from tests.upstreams import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(not _port_free(9001), reason="port 9001 (the demo echo backend) is in use")
def test_demo_serves_the_quickstart(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, token=None, extra=["--demo"])
    try:
        wait_for(lambda: httpx.get(gw.admin + "/ready").status_code == 200)
        r = wait_for(lambda: (r := httpx.get(gw.url + "/api/v1/users/7")).status_code == 200 and r)
        assert r.json()["backend"] == "echo-9001" and r.json()["path"] == "/api/v1/users/7"
        routes = {x["id"] for x in httpx.get(gw.admin + "/routes").json()["routes"]}
        assert routes == {"default/echo", "default/users"}
    finally:
        assert gw.stop() == 0


def test_examples_quickstart_is_the_packaged_demo() -> None:
    assert (ROOT / "examples/quickstart.yaml").read_text() == (
        ROOT / "dataplane/kubegate/quickstart.yaml"
    ).read_text()


def _compile(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubegate.cli", "compile", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compile_ok_and_failing(tmp_path: Path) -> None:
    ok = _compile(ROOT / "examples/quickstart.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "default/users" in ok.stdout and "Accepted" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: b}\n"
        f"spec:\n  backends: [{{url: 'http://127.0.0.1:{free_port()}', weight: -1}}]\n"
    )
    out = _compile(bad, "-o", "json")
    assert out.returncode == 1
    assert "spec.backends[0].weight" in out.stdout + out.stderr
