"""TLS to backends end to end: ``kubegate serve --routes`` in front of a real HTTPS upstream on 127.0.0.1
whose self-signed certificate names ``billing.internal``, its CA given to routes in Secrets of the routes
file.

Aspects: a verified backend is proxied, over one pooled TLS connection for several requests; a wrong CA,
a wrong server name, or no CA at all (the system's, which do not know this one) is a 502 with the reason in
the log and ``kubegate_upstream_errors_total{kind="tls"}``, never a plain-text fallback; the CA is hidden
from ``/table``; ``insecureSkipVerify`` connects unverified; with traffic policies a failed handshake is a
failure for the circuit breaker; an active health check probes the backend over TLS. What the compiler makes
of the API (names, CAs, problems) is in the golden file ``tests/compiler/golden/backend-tls.*.yaml``.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests import tlscerts
from tests.gateway import GatewayProcess
from tests.upstreams import UpstreamServer, wait_for


class TlsUpstreamServer(UpstreamServer):
    """The test upstream behind TLS (the handshake runs in the handler's thread, on the first read)."""

    def __init__(self, context: ssl.SSLContext, name: str = "tls-up") -> None:
        super().__init__(name)
        self.context = context

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


@pytest.fixture(scope="module")
def certs() -> dict[str, tlscerts.Pair]:
    return {
        "billing": tlscerts.make_pair(["billing.internal"]),
        "other": tlscerts.make_pair(["billing.internal"]),
    }


@pytest.fixture(scope="module")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, certs: dict[str, tlscerts.Pair]
) -> Iterator[UpstreamServer]:
    tmp = tmp_path_factory.mktemp("tls-upstream")
    (tmp / "cert.pem").write_text(certs["billing"].cert)
    (tmp / "key.pem").write_text(certs["billing"].key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    server = TlsUpstreamServer(context).start()
    yield server
    server.stop()


def _route(name: str, backend: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubegate.dev/v1alpha1",
        "kind": "GatewayRoute",
        "metadata": {"name": name},
        "spec": {"match": {"path": {"value": f"/{name}"}}, "backends": [backend], **spec},
    }


def _ca_secret(name: str, pair: tlscerts.Pair) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"ca.crt": pair.cert},
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer, certs: dict[str, tlscerts.Pair]
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("backend-tls")
    url = f"https://127.0.0.1:{upstream.port}"
    good = {"caSecretRef": {"name": "billing-ca"}, "serverName": "billing.internal"}
    docs: list[dict[str, Any]] = [
        _route("verified", {"url": url, "tls": good}),
        _route("wrong-ca", {"url": url, "tls": {**good, "caSecretRef": {"name": "other-ca"}}}),
        _route("wrong-name", {"url": url, "tls": {**good, "serverName": "other.internal"}}),
        _route("system-ca", {"url": url}),
        _route("insecure", {"url": url, "tls": {"insecureSkipVerify": True}}),
        _route(
            "breaker",
            {"url": url, "tls": {**good, "caSecretRef": {"name": "other-ca"}}},
            circuitBreaker={"consecutiveFailures": 2, "openDuration": "60s"},
        ),
        _route(
            "checked",
            {"url": url, "tls": good},
            healthCheck={"path": "/healthz", "interval": "200ms", "timeout": "200ms", "unhealthyThreshold": 1},  # noqa: E501
        ),
        _ca_secret("billing-ca", certs["billing"]),
        _ca_secret("other-ca", certs["other"]),
    ]  # fmt: skip
    routes = tmp / "routes.yaml"
    routes.write_text(yaml.safe_dump_all(docs))
    proc = GatewayProcess(tmp, routes=routes)
    wait_for(lambda: proc.table().get("routes") == 7, timeout=20)
    yield proc
    proc.stop()


def get(gw: GatewayProcess, path: str) -> httpx.Response:
    return httpx.get(gw.url + path, timeout=10)


def tls_errors(gw: GatewayProcess, route: str) -> float:
    for line in httpx.get(gw.admin + "/metrics", timeout=5).text.splitlines():
        if line.startswith(f'kubegate_upstream_errors_total{{kind="tls",route="default/{route}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_verified_backend_is_proxied_over_one_pooled_tls_connection(
    gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    before = upstream.connections
    answers = [get(gateway, "/verified/x") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert answers[0].json()["path"] == "/verified/x"
    assert answers[0].json()["headers"]["x-forwarded-proto"] == "http"  # the client's side, not the backend's
    assert upstream.connections == before + 1


@pytest.mark.parametrize("route", ["wrong-ca", "wrong-name", "system-ca"])
def test_an_unverifiable_backend_is_a_502_with_the_reason_logged(
    gateway: GatewayProcess, upstream: UpstreamServer, route: str
) -> None:
    answer = get(gateway, f"/{route}/x")
    assert answer.status_code == 502
    assert answer.json()["message"] == "upstream TLS handshake failed"
    assert not [target for _, target, _, _ in upstream.requests if target.startswith(f"/{route}")]
    assert tls_errors(gateway, route) >= 1
    logged = wait_for(
        lambda: [line for line in gateway.log().splitlines() if f"route default/{route}" in line]
    )
    assert "TLS handshake with 127.0.0.1" in logged[0] and "certificate" in logged[0].lower()


def test_the_admin_api_shows_the_backends_tls_but_not_the_ca(
    gateway: GatewayProcess, certs: dict[str, tlscerts.Pair]
) -> None:
    pem_line = certs["billing"].cert.splitlines()[1]
    for view in ("/routes", "/table", "/services"):
        assert pem_line not in httpx.get(gateway.admin + view, timeout=5).text, view
    routes = json.loads(httpx.get(gateway.admin + "/routes", timeout=5).text)["routes"]
    shown = {r["id"]: r["backends"][0].get("tls") for r in routes}
    assert shown["default/verified"] == {"serverName": "billing.internal", "verify": True, "ca": "secret"}
    assert shown["default/system-ca"] == {"serverName": "127.0.0.1", "verify": True, "ca": "system"}


def test_insecure_skip_verify_connects_unverified(gateway: GatewayProcess) -> None:
    assert get(gateway, "/insecure/x").status_code == 200


def test_a_failed_handshake_counts_for_the_circuit_breaker(gateway: GatewayProcess) -> None:
    assert [get(gateway, "/breaker/x").status_code for _ in range(2)] == [502, 502]
    opened = get(gateway, "/breaker/x")
    assert opened.status_code == 503 and "circuit" in opened.json()["message"]


def test_health_checks_probe_the_backend_over_tls(gateway: GatewayProcess, upstream: UpstreamServer) -> None:
    def healthy() -> bool:
        name = f"url:https://127.0.0.1:{upstream.port}"
        for service in httpx.get(gateway.admin + f"/services/{name}", timeout=5).json()["services"]:
            state = service.get("policyState", {}).get("default/checked")
            if state is not None:
                return bool(state["endpoints"][0]["healthy"])
        raise AssertionError("no health state for default/checked")

    wait_for(lambda: any(target == "/healthz" for _, target, _, _ in upstream.requests), timeout=10)
    assert healthy() and get(gateway, "/checked/x").status_code == 200
    upstream.health_status = 500
    try:
        wait_for(lambda: not healthy(), timeout=10)  # the probes see the 500: over TLS, verified
    finally:
        upstream.health_status = 200
    wait_for(healthy, timeout=10)
