"""A new user's first runs of ``kubegate serve`` and ``kubegate compile``, with real processes.

Aspects: a truncated or emptied routes file never replaces the table served (a file with objects but no
route does, with a warning); a routes file that does not exist yet is waited for and picked up; a data
plane with no table source says that it waits for a push; a backend Service that does not exist is warned
about once per table, naming the route; ``/services/{name}`` answers to the names a user sees (the
Service, the URL, the demo's echo name) and the admin port's unknown paths answer in JSON; a refused route
is reported with its file and line; the log says each thing once and in plain words.
"""

from __future__ import annotations

import io
import json
import signal
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from kubegate.compiler import render
from tests.gateway import GatewayProcess
from tests.upstreams import UpstreamServer, wait_for

GUARD = 30.0  # a hang guard, not a timing requirement


def route_doc(name: str, backend: str, path: str = "/") -> str:
    return (
        "apiVersion: kubegate.dev/v1alpha1\n"
        "kind: GatewayRoute\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  match: {{path: {{type: Prefix, value: {path}}}}}\n"
        f"  backends: [{backend}]\n"
    )


def messages(gw: GatewayProcess) -> list[str]:
    """The ``message`` of every JSON log line so far."""
    out = []
    for line in gw.log().splitlines():
        if line.startswith("{"):
            out.append(str(json.loads(line)["message"]))
    return out


def logged(gw: GatewayProcess, *parts: str) -> list[str]:
    """The log messages holding every one of ``parts``."""
    return [m for m in messages(gw) if all(p in m for p in parts)]


def wait_logged(gw: GatewayProcess, *parts: str, count: int = 1) -> list[str]:
    return list(wait_for(lambda: len(found := logged(gw, *parts)) >= count and found, timeout=GUARD))


def ready(gw: GatewayProcess) -> bool:
    return httpx.get(gw.admin + "/ready", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    up = UpstreamServer("a").start()
    yield up
    up.stop()


# --- the routes file: truncated, empty, missing -------------------------------------------------------------
def test_an_emptied_routes_file_never_replaces_the_table(tmp_path: Path, upstream: UpstreamServer) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text(route_doc("demo", f"{{url: '{upstream.url}'}}", "/v1"))
    gw = GatewayProcess(tmp_path, routes=f)
    try:
        wait_for(lambda: ready(gw), timeout=GUARD)
        served = gw.table()["version"]

        f.write_text("")  # `: > routes.yaml`, or an editor that truncates before it writes
        wait_logged(gw, f"routes file {f} is empty", f"still serving table {served}")
        assert gw.table()["version"] == served and ready(gw)
        assert httpx.get(gw.url + "/v1/x").status_code == 200

        f.write_text("# nothing here yet\n\n---\n   \n--- # still nothing\n")
        wait_logged(gw, f"routes file {f} is empty", count=2)
        assert gw.table()["version"] == served
        assert httpx.get(gw.url + "/v1/x").status_code == 200

        # objects, but no route: an explicit empty table, served with a warning
        f.write_text("apiVersion: v1\nkind: List\nitems: []\n")
        wait_logged(gw, f"routes file {f} holds no GatewayRoute", "serving an empty table")
        assert gw.table()["routes"] == 0 and gw.table()["version"] != served
        assert httpx.get(gw.url + "/v1/x").status_code == 404

        f.write_text(route_doc("demo", f"{{url: '{upstream.url}'}}", "/v2"))
        wait_for(lambda: gw.table()["routes"] == 1, timeout=GUARD)
        assert httpx.get(gw.url + "/v2/x").status_code == 200
    finally:
        assert gw.stop() == 0


def test_a_missing_routes_file_is_waited_for(tmp_path: Path, upstream: UpstreamServer) -> None:
    f = tmp_path / "later.yaml"
    gw = GatewayProcess(tmp_path, routes=f)
    try:
        [line] = wait_logged(gw, f"routes file {f} does not exist", "waiting for it")
        assert "nothing is served yet" in line
        assert not ready(gw)

        f.write_text(route_doc("later", f"{{url: '{upstream.url}'}}"))
        wait_for(lambda: ready(gw), timeout=GUARD)  # the watcher picks it up
        assert httpx.get(gw.url + "/anything").status_code == 200
        assert logged(gw, "serving table", str(f), "(1 route,")

        f.unlink()  # gone again: the table stays, and the file is waited for
        wait_logged(gw, f"routes file {f} does not exist", "still serving table file-1-")
        assert ready(gw) and httpx.get(gw.url + "/anything").status_code == 200
    finally:
        assert gw.stop() == 0


def test_a_missing_routes_file_without_polling_says_sighup(tmp_path: Path) -> None:
    f = tmp_path / "later.yaml"
    gw = GatewayProcess(tmp_path, routes=f, extra=["--watch-interval", "0"])
    try:
        wait_logged(gw, f"routes file {f} does not exist", "send SIGHUP once it is there")
    finally:
        gw.stop()


# --- no table source ----------------------------------------------------------------------------------------
def test_serve_without_a_table_source_says_it_waits_for_a_push(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        [line] = wait_logged(gw, "no route table yet", "waiting for one to be pushed")
        assert "no --routes, --bootstrap or --demo" in line and "PUT /table" in line
        assert f":{gw.admin_port}" in line
    finally:
        gw.stop()


def test_serve_without_a_table_source_or_a_token_says_nothing_can_be_served(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, token=None)
    try:
        wait_logged(gw, "nothing to serve", "no table can be pushed without a push token")
    finally:
        gw.stop()


# --- backends that do not resolve ---------------------------------------------------------------------------
def test_a_missing_backend_service_is_warned_once_per_table(tmp_path: Path, upstream: UpstreamServer) -> None:
    f = tmp_path / "routes.yaml"
    users = route_doc("users", "{service: user-service, port: 8080}", "/users")
    f.write_text(users)
    gw = GatewayProcess(tmp_path, routes=f)
    try:
        wait_for(lambda: ready(gw), timeout=GUARD)
        [line] = wait_logged(gw, "GatewayRoute default/users", "Service default/user-service not found")
        assert f"{f}:1:" in line and "BackendNotFound" in line
        assert httpx.get(gw.url + "/users").status_code == 500

        gw.signal(signal.SIGHUP)  # the same table again: no second warning
        wait_logged(gw, "re-read: no change")
        assert len(logged(gw, "Service default/user-service not found")) == 1

        f.write_text(users + "---\n" + route_doc("other", f"{{url: '{upstream.url}'}}", "/other"))
        wait_for(lambda: gw.table()["routes"] == 2, timeout=GUARD)
        wait_logged(gw, "GatewayRoute default/users", "Service default/user-service not found", count=2)
        assert not logged(gw, "GatewayRoute default/other", "not found")
    finally:
        assert gw.stop() == 0


# --- the admin port -----------------------------------------------------------------------------------------
SERVICE_FILE = """\
apiVersion: v1
kind: Service
metadata: {{name: user-service}}
spec:
  ports: [{{name: http, port: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: user-service-1
  labels: {{kubernetes.io/service-name: user-service}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
"""


def test_services_are_found_by_the_names_users_see(tmp_path: Path, upstream: UpstreamServer) -> None:
    port = upstream.url.rsplit(":", 1)[1]
    f = tmp_path / "routes.yaml"
    f.write_text(
        SERVICE_FILE.format(port=port)
        + route_doc("users", "{service: user-service, port: 8080}", "/users")
        + "---\n"
        + route_doc("static", f"{{url: '{upstream.url}'}}", "/static")
    )
    gw = GatewayProcess(tmp_path, routes=f)
    try:
        wait_for(lambda: ready(gw), timeout=GUARD)
        assert httpx.get(gw.url + "/users/1").status_code == 200

        def names(name: str) -> list[str]:
            r = httpx.get(f"{gw.admin}/services/{name}", timeout=5)
            assert r.status_code == 200, (name, r.text)
            return [s["name"] for s in r.json()["services"]]

        service = ["service:default/user-service:8080"]
        for name in (
            "user-service",
            "default/user-service",
            "user-service:8080",
            "default/user-service:8080",
        ):
            assert names(name) == service
        static = [f"url:{upstream.url}"]
        for name in (f"url:{upstream.url}", upstream.url, upstream.url.removeprefix("http://")):
            assert names(name) == static

        unknown = httpx.get(gw.admin + "/services/nobody")
        assert unknown.status_code == 404 and "GET /services lists them" in unknown.json()["error"]
        # a route's id is not a backend's name
        assert httpx.get(gw.admin + "/services/default/users").status_code == 404
    finally:
        gw.stop()


def test_admin_errors_are_json(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        missing = httpx.get(gw.admin + "/no/such/thing")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/json"
        assert "/services/{name}" in missing.json()["error"]
        wrong = httpx.post(gw.admin + "/health")
        assert wrong.status_code == 405 and wrong.json() == {"error": "method not allowed"}
        assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}
    finally:
        gw.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(not _port_free(9001), reason="port 9001 (the demo echo backend) is in use")
def test_demo_backend_is_found_by_the_name_its_answers_show(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, token=None, extra=["--demo"])
    try:
        answer = wait_for(
            lambda: (r := httpx.get(gw.url + "/api/v1/users/7")).status_code == 200 and r, timeout=GUARD
        )
        shown = answer.json()["backend"]
        assert shown == "echo-9001"
        r = httpx.get(f"{gw.admin}/services/{shown}")
        assert r.status_code == 200
        [entry] = r.json()["services"]
        assert entry["name"] == "url:http://127.0.0.1:9001"
        assert entry["routes"] == ["default/echo", "default/users"]
        wait_logged(gw, "demo echo backend 'echo-9001' listening on http://127.0.0.1:9001")
    finally:
        assert gw.stop() == 0


# --- where a refused route is -------------------------------------------------------------------------------
BAD_SECOND = "{url: 'http://127.0.0.1:99999'}"


def test_serve_names_the_line_of_a_refused_route(tmp_path: Path, upstream: UpstreamServer) -> None:
    f = tmp_path / "routes.yaml"
    good = route_doc("good", f"{{url: '{upstream.url}'}}", "/good")
    f.write_text(good)
    gw = GatewayProcess(tmp_path, routes=f)
    try:
        wait_for(lambda: ready(gw), timeout=GUARD)
        f.write_text("# two routes\n" + good + "---\n" + route_doc("bad", BAD_SECOND, "/bad"))
        bad_line = 2 + good.count("\n") + 1  # the comment, the first document, its '---'
        [line] = wait_logged(gw, "routes file not applied", "GatewayRoute default/bad")
        assert f"{f}:{bad_line}: GatewayRoute default/bad: Invalid: spec.backends[0].url" in line
        assert gw.table()["routes"] == 1
    finally:
        assert gw.stop() == 0


def test_compile_names_the_line_of_a_refused_route(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    good = route_doc("good", "{url: 'http://127.0.0.1:9001'}", "/good")
    f.write_text(good + "---\n" + route_doc("bad", BAD_SECOND, "/bad"))
    out, err = io.StringIO(), io.StringIO()
    assert render.compile_main(str(f), "yaml", out, err, datetime.now(UTC)) == 1
    bad_line = good.count("\n") + 2
    assert (
        f"{f}:{bad_line}: error: default/bad: Accepted=False (Invalid): spec.backends[0].url"
        in err.getvalue()
    )


def test_a_list_item_is_reported_at_its_own_line(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: kubegate.dev/v1alpha1\n  kind: GatewayRoute\n  metadata: {name: a}\n"
        "  spec: {backends: [{url: 'http://127.0.0.1:9001'}]}\n"
        "- apiVersion: kubegate.dev/v1alpha1\n  kind: GatewayRoute\n  metadata: {name: b}\n"
        f"  spec: {{backends: [{BAD_SECOND}]}}\n"
    )
    out, err = io.StringIO(), io.StringIO()
    render.compile_main(str(f), "yaml", out, err, datetime.now(UTC))
    assert f"{f}:8: error: default/b:" in err.getvalue()


# --- the log, read by a person ------------------------------------------------------------------------------
def test_each_start_and_stop_line_comes_once_and_in_plain_words(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text(route_doc("one", f"{{url: '{upstream.url}'}}"))
    gw = GatewayProcess(tmp_path, routes=f)
    try:
        wait_logged(gw, "traffic port listening on")
        assert logged(gw, "serving table", "(1 route, sha256:")
    finally:
        assert gw.stop() == 0
    found = messages(gw)
    assert len(logged(gw, "admin port listening on http://127.0.0.1:")) == 1
    assert len(logged(gw, f"traffic port listening on http://127.0.0.1:{gw.port}")) == 1
    assert found[-1] == "stopped"
    assert not [m for m in found if "Uvicorn running" in m or "server process" in m or m == "Shutting down"]


def test_a_refused_file_is_described_sensibly(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text(
        "apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\nmetadata: {name: x}\n---\nfoo: bar\n"
    )
    gw = GatewayProcess(tmp_path, routes=f)
    try:
        [line] = wait_logged(gw, "routes file not applied")
        assert line.startswith("routes file not applied, nothing is served yet: ")
        assert f"{f}:5 (document index 1): not a Kubernetes object: no apiVersion and no kind" in line
        assert "None" not in line and "(ignored)" not in line and "(none)" not in line
    finally:
        gw.stop()
