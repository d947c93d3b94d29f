"""TLS termination end to end: ``kubegate serve --routes FILE --tls-port P`` with ``kubernetes.io/tls``
Secrets in the routes file, real handshakes with Python's ``ssl``.

Aspects: SNI selects the route's certificate (exact host and wildcard host; checked on the peer
certificate's SAN), ALPN http/1.1, TLS 1.1 refused; an unknown name or no SNI fails the handshake without a
default certificate and gets the ``--default-certificate`` with one; ``X-Forwarded-Proto: https`` reaches
the upstream over TLS and ``http`` over the plain port; ``redirectHTTP`` answers plain requests with 301 to
the TLS port; a certificate changed in the routes file is served to new handshakes after the reload while a
connection opened before keeps its certificate; a route whose Secret is missing serves plain HTTP and no
certificate; no private key appears in ``/routes``, ``/table``, the log or ``kubegate compile``.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509

from tests import tlscerts
from tests.gateway import GatewayProcess, free_port
from tests.upstreams import UpstreamServer, wait_for

API = ["api.example.com"]
WILD = ["*.wild.example.com"]


def _routes(up: str, api: tlscerts.Pair, wild: tlscerts.Pair) -> str:
    docs: list[dict[str, Any]] = [
        tlscerts.tls_secret("api-tls", api),
        tlscerts.tls_secret("wild-tls", wild),
        _route("api", API, "/", {"certificateRefs": [{"name": "api-tls"}], "redirectHTTP": True}, up),
        _route("wild", WILD, "/", {"certificateRefs": [{"name": "wild-tls"}]}, up),
        _route("broken", ["broken.example.com"], "/", {"certificateRefs": [{"name": "nowhere"}]}, up),
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _route(name: str, hosts: list[str], path: str, tls: dict[str, Any], up: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubegate.dev/v1alpha1",
        "kind": "GatewayRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"match": {"hosts": hosts, "path": {"value": path}}, "backends": [{"url": up}], "tls": tls},
    }


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed test certificates: the test checks the SAN itself
    context.set_alpn_protocols(["http/1.1"])
    return context


def _connect(port: int, server_name: str | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return _client_context().wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def _names(conn: ssl.SSLSocket) -> list[str]:
    der = conn.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


def _get(
    conn: socket.socket, host: str, target: str = "/echo", close: bool = True
) -> tuple[int, dict[str, str], bytes]:
    extra = "connection: close\r\n" if close else ""
    conn.sendall(f"GET {target} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), headers, body


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer("tls-up").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def certs() -> dict[str, tlscerts.Pair]:
    return {
        "api": tlscerts.make_pair(API),
        "wild": tlscerts.make_pair(WILD),
        "rotated": tlscerts.make_pair([*API, "rotated.example.com"]),
        "default": tlscerts.make_pair(["default.example.com"]),
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer, certs: dict[str, tlscerts.Pair]
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("tls")
    routes = tmp / "routes.yaml"
    routes.write_text(_routes(upstream.url, certs["api"], certs["wild"]))
    tls_port = free_port()
    gw = GatewayProcess(tmp, routes=routes, extra=["--tls-port", str(tls_port), "--watch-interval", "0.2"])
    gw.tls_port = tls_port  # type: ignore[attr-defined]
    gw.routes_path = routes  # type: ignore[attr-defined]
    wait_for(lambda: _port_open(tls_port))
    yield gw
    gw.stop()


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _tls_port(gw: GatewayProcess) -> int:
    return int(gw.tls_port)  # type: ignore[attr-defined]


def test_sni_selects_the_routes_certificate(gateway: GatewayProcess) -> None:
    with _connect(_tls_port(gateway), "api.example.com") as conn:
        assert _names(conn) == API
        assert conn.selected_alpn_protocol() == "http/1.1"
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
    with _connect(_tls_port(gateway), "a.wild.example.com") as conn:
        assert _names(conn) == WILD


def test_unknown_name_or_no_sni_fails_without_a_default_certificate(gateway: GatewayProcess) -> None:
    for name in ("unknown.example.org", "broken.example.com", None):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _connect(_tls_port(gateway), name).close()


def test_tls_1_1_is_refused(gateway: GatewayProcess) -> None:
    raw = socket.create_connection(("127.0.0.1", _tls_port(gateway)), timeout=5)
    context = _client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 is deprecated: the point here
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)), context.wrap_socket(raw, server_hostname=API[0]):
        pass
    raw.close()


def test_x_forwarded_proto_is_https_over_tls(gateway: GatewayProcess) -> None:
    with _connect(_tls_port(gateway), "a.wild.example.com") as conn:
        status, _, body = _get(conn, "a.wild.example.com")
    assert status == 200
    assert json.loads(body)["headers"]["x-forwarded-proto"] == "https"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as plain:
        status, _, body = _get(plain, "a.wild.example.com")  # no redirectHTTP on this route
    assert status == 200
    assert json.loads(body)["headers"]["x-forwarded-proto"] == "http"


def test_redirect_http_answers_301_to_the_tls_port(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as plain:
        status, headers, _ = _get(plain, f"api.example.com:{gateway.port}", "/a/b?c=d")
    assert status == 301
    assert headers["location"] == f"https://api.example.com:{_tls_port(gateway)}/a/b?c=d"
    with _connect(_tls_port(gateway), "api.example.com") as conn:  # and over TLS it is proxied
        status, _, _ = _get(conn, "api.example.com")
    assert status == 200


def test_a_route_whose_secret_is_missing_serves_plain_http(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as plain:
        status, _, _ = _get(plain, "broken.example.com")
    assert status == 200


def test_no_private_key_is_shown(gateway: GatewayProcess) -> None:
    for path in ("/routes", "/table"):
        text = httpx.get(gateway.admin + path, timeout=5).text
        assert "PRIVATE KEY" not in text, path
    routes = {r["id"]: r for r in httpx.get(gateway.admin + "/routes", timeout=5).json()["routes"]}
    assert routes["default/api"]["tls"]["certificates"][0]["dnsNames"] == API
    assert "nowhere" in routes["default/broken"]["tls"]["error"]
    assert "PRIVATE KEY" not in gateway.log()
    routes_path: Path = gateway.routes_path  # type: ignore[attr-defined]
    done = subprocess.run(
        [sys.executable, "-m", "kubegate.cli", "compile", str(routes_path)], capture_output=True, timeout=60
    )
    assert b"BEGIN CERTIFICATE" in done.stdout
    assert b"PRIVATE KEY" not in done.stdout + done.stderr


def test_a_rotated_certificate_is_served_to_new_handshakes(
    gateway: GatewayProcess, upstream: UpstreamServer, certs: dict[str, tlscerts.Pair]
) -> None:
    port = _tls_port(gateway)
    before = _connect(port, "api.example.com")
    try:
        assert _names(before) == API
        routes_path: Path = gateway.routes_path  # type: ignore[attr-defined]
        routes_path.write_text(_routes(upstream.url, certs["rotated"], certs["wild"]))

        def rotated() -> bool:
            with _connect(port, "api.example.com") as conn:
                return "rotated.example.com" in _names(conn)

        wait_for(rotated, timeout=15)
        # the connection opened before keeps its certificate and still works
        assert _names(before) == API
        status, _, _ = _get(before, "api.example.com", close=False)
        assert status == 200
    finally:
        before.close()
    assert "PRIVATE KEY" not in gateway.log()


def test_default_certificate(
    tmp_path: Path, upstream: UpstreamServer, certs: dict[str, tlscerts.Pair]
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(_routes(upstream.url, certs["api"], certs["wild"]))
    cert, key = tmp_path / "default.crt", tmp_path / "default.key"
    cert.write_text(certs["default"].cert)
    key.write_text(certs["default"].key)
    tls_port = free_port()
    gw = GatewayProcess(
        tmp_path, routes=routes, extra=["--tls-port", str(tls_port), "--default-certificate", f"{cert},{key}"]
    )
    try:
        wait_for(lambda: _port_open(tls_port))
        for name in ("unknown.example.org", None):
            with _connect(tls_port, name) as conn:
                assert _names(conn) == ["default.example.com"]
        with _connect(tls_port, "api.example.com") as conn:
            assert _names(conn) == API
    finally:
        gw.stop()
