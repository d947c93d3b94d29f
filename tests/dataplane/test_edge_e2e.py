"""Edge policies end to end: ``kubegate serve --routes`` with GatewayRoutes that use CORS, header transforms,
rewrites and redirects, in front of a real upstream that echoes what it received.

Aspects: CORS preflights answered by the gateway (allowed, denied, lookalike origins, credentials) without
reaching the backend, CORS headers on actual responses, request and response header transforms (and that
the gateway's own headers cannot be touched), prefix and full-path rewrites keeping the query, redirects
with their Location. The policies' own rules are unit-tested in ``tests/dataplane/policies``; the
compiler's acceptance and refusals in the golden files ``edge-*.in.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway import GatewayProcess
from tests.upstreams import UpstreamServer, wait_for

ROUTES = """
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: api}}
spec:
  match: {{path: {{type: Prefix, value: /api}}, hosts: [api.test]}}
  backends: [{{url: "{up}"}}]
  cors:
    allowOrigins: ["https://app.example.com", "https://*.example.com"]
    allowMethods: [GET, POST, PUT]
    allowHeaders: [Content-Type, Authorization]
    exposeHeaders: [X-Backend]
    allowCredentials: true
    maxAge: 10m
  requestHeaders:
    set: [{{name: X-Env, value: prod}}]
    add: [{{name: X-Via, value: kubegate}}]
    remove: [X-Debug]
  responseHeaders:
    set: [{{name: Cache-Control, value: no-store}}]
    remove: [X-Backend]
  rewrite: {{pathPrefix: /v2}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: status}}
spec:
  match: {{path: {{type: Exact, value: /health-check}}, hosts: [api.test]}}
  backends: [{{url: "{up}"}}]
  rewrite: {{fullPath: /status-page}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: to-https}}
spec:
  match: {{hosts: [old.test]}}
  redirect: {{scheme: https, statusCode: 301}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: moved}}
spec:
  match: {{hosts: [moved.test]}}
  redirect: {{hostname: new.example.com, port: 8443, path: /landing}}
"""


@pytest.fixture(scope="module")
def up() -> Iterator[UpstreamServer]:
    server = UpstreamServer("edge").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, up: UpstreamServer) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("edge")
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES.format(up=up.url))
    proc = GatewayProcess(tmp, routes=routes)
    try:
        _wait_for_table(proc)
        yield proc
    finally:
        proc.stop()


def _wait_for_table(proc: GatewayProcess) -> None:
    wait_for(lambda: proc.table().get("routes") == 4, timeout=20)


def req(gw: GatewayProcess, method: str, path: str, host: str = "api.test", **headers: str) -> httpx.Response:
    return httpx.request(
        method,
        gw.url + path,
        headers={"host": host, **{k.replace("_", "-"): v for k, v in headers.items()}},
        timeout=10,
    )


def seen(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# --- CORS -----------------------------------------------------------------------------------------------
def test_preflight_from_an_allowed_origin_is_answered_by_the_gateway(
    gw: GatewayProcess, up: UpstreamServer
) -> None:
    before = len(up.requests)
    r = req(
        gw,
        "OPTIONS",
        "/api/users",
        Origin="https://app.example.com",
        Access_Control_Request_Method="PUT",
        Access_Control_Request_Headers="content-type",
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "PUT" in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"].lower()
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-max-age"] == "600"
    assert "origin" in r.headers["vary"].lower()
    assert "content-length" not in r.headers  # a 204 has none
    assert len(up.requests) == before  # never reached the backend


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil-example.com",
        "https://example.com.evil.io",
        "https://example.com",
        "http://app.example.com",
        "null",
    ],
)
def test_preflight_from_a_lookalike_origin_gets_403_without_cors_headers(
    gw: GatewayProcess, up: UpstreamServer, origin: str
) -> None:
    before = len(up.requests)
    r = req(gw, "OPTIONS", "/api/users", Origin=origin, Access_Control_Request_Method="GET")
    assert r.status_code == 403
    assert not [h for h in r.headers if h.startswith("access-control-")]
    assert len(up.requests) == before


def test_preflight_for_a_method_or_header_not_allowed_gets_403(gw: GatewayProcess) -> None:
    origin = "https://shop.example.com"
    assert (
        req(gw, "OPTIONS", "/api/x", Origin=origin, Access_Control_Request_Method="DELETE").status_code == 403
    )
    r = req(
        gw,
        "OPTIONS",
        "/api/x",
        Origin=origin,
        Access_Control_Request_Method="GET",
        Access_Control_Request_Headers="x-secret-header",
    )
    assert r.status_code == 403


def test_actual_request_from_an_allowed_origin_gets_cors_headers(gw: GatewayProcess) -> None:
    r = req(gw, "GET", "/api/users", Origin="https://shop.example.com")
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "x-backend" in r.headers["access-control-expose-headers"].lower()
    assert "origin" in r.headers["vary"].lower()


def test_actual_request_from_another_origin_gets_none_but_vary(gw: GatewayProcess) -> None:
    r = req(gw, "GET", "/api/users", Origin="https://evil-example.com")
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
    assert "origin" in r.headers["vary"].lower()


# --- transforms and rewrites ------------------------------------------------------------------------------
def test_request_headers_are_set_added_and_removed(gw: GatewayProcess) -> None:
    r = req(gw, "GET", "/api/users?page=2", X_Env="dev", X_Debug="1", X_Via="client")
    body = seen(r)
    lines = [(n.lower(), v) for n, v in body["headerLines"]]
    assert [v for n, v in lines if n == "x-env"] == ["prod"]  # set replaces the client's value
    assert sorted(v for n, v in lines if n == "x-via") == ["client", "kubegate"]  # add keeps it
    assert not [n for n, _ in lines if n == "x-debug"]
    assert [v for n, v in lines if n == "host"] == ["api.test"]  # the gateway's own headers stay
    assert [n for n, _ in lines].count("x-request-id") == 1


def test_response_headers_are_transformed(gw: GatewayProcess) -> None:
    r = req(gw, "GET", "/api/users")
    assert r.status_code == 200
    assert "x-backend" not in r.headers
    assert r.headers["cache-control"] == "no-store"
    assert "x-request-id" in r.headers


def test_prefix_rewrite_keeps_the_rest_of_the_path_and_the_query(gw: GatewayProcess) -> None:
    assert seen(req(gw, "GET", "/api/users/7?full=1"))["path"] == "/v2/users/7"
    body = seen(req(gw, "GET", "/api?x=1"))
    assert (body["path"], body["query"]) == ("/v2", "x=1")


def test_full_path_rewrite(gw: GatewayProcess) -> None:
    body = seen(req(gw, "GET", "/health-check?verbose=1"))
    assert (body["path"], body["query"]) == ("/status-page", "verbose=1")


def test_a_rewritten_route_still_refuses_dot_segments_and_encoded_slashes(gw: GatewayProcess) -> None:
    # normalised before matching: /api/../admin is /admin, which no route of api.test takes
    assert req(gw, "GET", "/api/../admin").status_code == 404
    assert req(gw, "GET", "/api/..%2Fadmin").status_code == 400


# --- redirects --------------------------------------------------------------------------------------------
def test_redirect_to_https_keeps_host_path_and_query(gw: GatewayProcess, up: UpstreamServer) -> None:
    before = len(up.requests)
    r = req(gw, "GET", "/some/page?q=1", host="old.test")
    assert r.status_code == 301
    assert r.headers["location"] == "https://old.test/some/page?q=1"
    assert r.headers["content-length"] == "0"
    assert len(up.requests) == before


def test_redirect_with_hostname_port_and_path(gw: GatewayProcess) -> None:
    r = req(gw, "GET", "/anything?keep=yes", host="moved.test")
    assert r.status_code == 302
    assert r.headers["location"] == "http://new.example.com:8443/landing?keep=yes"


def test_routes_view_names_the_edge_policies(gw: GatewayProcess) -> None:
    routes = {r["id"]: r for r in httpx.get(gw.admin + "/routes", timeout=5).json()["routes"]}
    assert routes["default/to-https"]["backends"] == [] and routes["default/to-https"]["edge"] == ["redirect"]
    assert routes["default/api"]["edge"] == ["cors", "requestHeaders", "responseHeaders", "rewrite"]
