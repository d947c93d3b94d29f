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


def _kubegate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "kubegate.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "99999"], {}, "argument --port: 99999 is not a port number from 1 to 65535"),
        (["--port", "0"], {}, "argument --port: 0 is not a port number"),
        ([], {"KUBEGATE_PORT": "abc"}, "'abc' is not a port number (flag or KUBEGATE_PORT)"),
        (["--admin-port", "-1"], {}, "argument --admin-port: -1 is not a port number"),
        (["--log-level", "verbose"], {}, "argument --log-level: invalid choice: 'verbose'"),
        (["--watch-interval", "-1"], {}, "argument --watch-interval: -1 seconds: must be 0 or more"),
        (["--header-timeout", "0"], {}, "argument --header-timeout: 0 seconds: must be more than 0"),
        ([], {"KUBEGATE_DRAIN_TIMEOUT": "soon"}, "'soon' is not a number of seconds (flag or KUBEGATE_DRAIN"),
        (["--demo", "--routes", "x.yaml"], {}, "--demo serves the built-in quickstart routes"),
        (["--escaped-slashes", "maybe"], {}, "argument --escaped-slashes: invalid choice: 'maybe'"),
    ],
)
def test_serve_refuses_bad_flags_with_a_message(args: list[str], env: dict[str, str], message: str) -> None:
    out = _kubegate("serve", *args, env=env)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_log_level_is_case_insensitive() -> None:
    from kubegate.cli import build_parser

    assert build_parser().parse_args(["serve", "--log-level", "DEBUG"]).log_level == "debug"


def test_operator_without_its_extra_says_which_extra() -> None:
    code = (
        "import sys; sys.modules['kopf'] = None\n"  # as if the operator extra were not installed
        "from kubegate.cli import main; sys.exit(main(['operator']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "pip install 'kubegate[operator]'" in out.stderr and "'kopf'" in out.stderr
    assert "Traceback" not in out.stderr


def test_echo_says_where_it_listens_in_json() -> None:
    import json

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubegate.cli", "echo", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = json.loads(proc.stderr.readline())
        assert first["message"] == f"echo backend 'echo-{port}' on http://127.0.0.1:{port}"
        assert first["level"] == "info"
    finally:
        proc.terminate()
        proc.wait(10)


def test_compile_help_says_dash_reads_stdin() -> None:
    assert "- reads standard input" in _kubegate("compile", "--help").stdout
