"""Authentication end to end: ``kubegate serve --routes`` with Secrets and GatewayRoutes in one file, a real
JWKS server, and an upstream that echoes what it received.

Aspects: API keys (right, wrong, missing, header and query, the client's name sent upstream and never
taken from the client, a Secret change taking effect on reload without a restart); JWTs signed with an
HMAC key from a Secret and with RSA keys from a JWKS URI (valid, forged, expired, other audience: 403,
claims copied to headers, forwardToken false, key rotation at the issuer, a request arriving before the
first JWKS fetch waits for it); a route whose Secret is missing answers 500; refusals are counted in
/metrics by reason and never echo the credential; neither ``/routes`` nor ``kubegate compile`` shows a key.
The verifiers' own rules (the JWT hardening set) are unit-tested in ``tests/dataplane/policies``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import jwtkit
from tests.gateway import GatewayProcess
from tests.upstreams import UpstreamServer, wait_for

HMAC_SECRET = b"an-hmac-key-of-the-auth-e2e-test-0123456789"

ROUTES = """
apiVersion: v1
kind: Secret
metadata: {{name: partner-keys}}
stringData:
  acme: {acme_key}
  globex: globex-key-2
---
apiVersion: v1
kind: Secret
metadata: {{name: signing}}
stringData:
  hmac: {hmac}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: partners}}
spec:
  match: {{path: {{value: /partners}}}}
  backends: [{{url: "{up}"}}]
  auth:
    apiKey: {{header: X-API-Key, secretRef: {{name: partner-keys}}, clientHeader: X-Client}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: partners-query}}
spec:
  match: {{path: {{value: /by-query}}}}
  backends: [{{url: "{up}"}}]
  auth:
    apiKey: {{query: api_key, secretRef: {{name: partner-keys}}}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: hmac}}
spec:
  match: {{path: {{value: /hmac}}}}
  backends: [{{url: "{up}"}}]
  auth:
    jwt:
      algorithms: [HS256]
      secretRef: {{name: signing, key: hmac}}
      audiences: [orders-api]
      claimsToHeaders: [{{claim: sub, header: X-User}}]
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: orders}}
spec:
  match: {{path: {{value: /orders}}}}
  backends: [{{url: "{up}"}}]
  auth:
    jwt:
      algorithms: [RS256]
      issuer: https://issuer.test
      audiences: [orders-api]
      jwksUri: "{jwks}"
      forwardToken: false
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: either}}
spec:
  match: {{path: {{value: /either}}}}
  backends: [{{url: "{up}"}}]
  auth:
    jwt: {{algorithms: [HS256], secretRef: {{name: signing, key: hmac}}}}
    apiKey: {{header: X-API-Key, secretRef: {{name: partner-keys}}}}
---
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: misconfigured}}
spec:
  match: {{path: {{value: /misconfigured}}}}
  backends: [{{url: "{up}"}}]
  auth:
    apiKey: {{header: X-API-Key, secretRef: {{name: no-such-secret}}}}
"""

RSA = jwtkit.rsa_key("rsa-1")


@pytest.fixture(scope="module")
def up() -> Iterator[UpstreamServer]:
    server = UpstreamServer("auth").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def issuer() -> Iterator[jwtkit.JwksServer]:
    with jwtkit.JwksServer(RSA) as server:
        yield server


def write_routes(
    path: Path, up: UpstreamServer, issuer: jwtkit.JwksServer, acme_key: str = "acme-key-1"
) -> None:
    path.write_text(ROUTES.format(up=up.url, jwks=issuer.url, hmac=HMAC_SECRET.decode(), acme_key=acme_key))


@pytest.fixture(scope="module")
def routes_file(
    tmp_path_factory: pytest.TempPathFactory, up: UpstreamServer, issuer: jwtkit.JwksServer
) -> Path:
    path = tmp_path_factory.mktemp("auth") / "routes.yaml"
    write_routes(path, up, issuer)
    return path


@pytest.fixture(scope="module")
def gw(routes_file: Path) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(routes_file.parent, routes=routes_file, extra=["--watch-interval", "0.2"])
    try:
        wait_for(lambda: proc.table().get("routes") == 6, timeout=20)
        yield proc
    finally:
        proc.stop()


def get(gw: GatewayProcess, path: str, **headers: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers=headers, timeout=10)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def hs_token(**claims: Any) -> str:
    return jwtkit.hmac_key(HMAC_SECRET).sign(jwtkit.claims(now=time.time(), **claims))


def metric(gw: GatewayProcess, reason: str, route: str) -> float:
    text = httpx.get(gw.admin + "/metrics", timeout=5).text
    for line in text.splitlines():
        if (
            line.startswith("kubegate_auth_failures_total{")
            and f'reason="{reason}"' in line
            and route in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- API keys ---------------------------------------------------------------------------------------------
def test_api_key_admits_and_names_the_client(gw: GatewayProcess) -> None:
    r = get(gw, "/partners/x", **{"X-API-Key": "acme-key-1", "X-Client": "spoofed"})
    assert r.status_code == 200
    lines = [(n.lower(), v) for n, v in r.json()["headerLines"]]
    assert [v for n, v in lines if n == "x-client"] == ["acme"]  # the client's own X-Client is dropped


@pytest.mark.parametrize(("headers", "reason"), [({}, "missing"), ({"X-API-Key": "acme-key-2"}, "invalid")])
def test_a_missing_or_wrong_api_key_gets_401(
    gw: GatewayProcess, up: UpstreamServer, headers: dict[str, str], reason: str
) -> None:
    before, counted = len(up.requests), metric(gw, reason, "default/partners")
    r = get(gw, "/partners/x", **headers)
    assert r.status_code == 401
    assert "apikey" in r.headers["www-authenticate"].lower()
    assert "acme-key-2" not in r.text
    assert len(up.requests) == before  # the backend never saw it
    assert metric(gw, reason, "default/partners") == counted + 1


def test_api_key_in_the_query(gw: GatewayProcess) -> None:
    assert httpx.get(gw.url + "/by-query?api_key=globex-key-2&x=1", timeout=10).status_code == 200
    assert httpx.get(gw.url + "/by-query?api_key=nope", timeout=10).status_code == 401


# --- JWT: an HMAC key from a Secret ------------------------------------------------------------------------
def test_hmac_token_admits_and_claims_become_headers(gw: GatewayProcess) -> None:
    r = get(gw, "/hmac", Authorization=bearer(hs_token(sub="carol")), X_User="mallory")
    assert r.status_code == 200
    lines = [(n.lower(), v) for n, v in r.json()["headerLines"]]
    assert [v for n, v in lines if n == "x-user"] == ["carol"]
    assert [n for n, _ in lines].count("authorization") == 1  # forwardToken defaults to true


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda: None, 401, "missing"),
        (lambda: hs_token(ttl=-120), 401, "expired"),
        (lambda: hs_token(aud="billing"), 403, "audience"),
        (
            lambda: jwtkit.assemble({"alg": "none", "typ": "JWT"}, jwtkit.claims(now=time.time())),
            401,
            "algorithm",
        ),
        (
            lambda: jwtkit.hmac_key(b"another-secret-another-secret-another").sign(
                jwtkit.claims(now=time.time())
            ),
            401,
            "bad_signature",
        ),
    ],
)
def test_bad_tokens_are_refused(gw: GatewayProcess, make: Any, status: int, reason: str) -> None:
    token = make()
    r = get(gw, "/hmac", **({"Authorization": bearer(token)} if token else {}))
    assert (r.status_code, r.json()["status"]) == (status, status)
    assert r.headers["www-authenticate"].lower().startswith("bearer")
    if token:
        assert token not in r.text and token.split(".")[1] not in r.text
    assert metric(gw, reason, "default/hmac") >= 1


def test_either_credential_admits_and_neither_gets_both_challenges(gw: GatewayProcess) -> None:
    assert get(gw, "/either", Authorization=bearer(hs_token())).status_code == 200
    assert get(gw, "/either", **{"X-API-Key": "globex-key-2"}).status_code == 200
    r = get(gw, "/either")
    assert r.status_code == 401
    challenges = r.headers.get_list("www-authenticate")
    assert any(c.lower().startswith("bearer") for c in challenges)
    assert any(c.lower().startswith("apikey") for c in challenges)


# --- JWT: a JWKS URI ---------------------------------------------------------------------------------------
def test_rs256_token_from_the_jwks_and_forward_token_false(gw: GatewayProcess) -> None:
    token = RSA.sign(jwtkit.claims(now=time.time()))
    r = get(gw, "/orders/1", Authorization=bearer(token))
    assert r.status_code == 200
    assert "authorization" not in {n.lower() for n, _ in r.json()["headerLines"]}


def test_issuer_key_rotation(gw: GatewayProcess, issuer: jwtkit.JwksServer) -> None:
    new = jwtkit.rsa_key("rsa-2")
    token = new.sign(jwtkit.claims(now=time.time()))
    issuer.set_keys(RSA, new)
    # a kid the gateway does not know makes it refetch (at most once per 30 s): the token then passes
    assert wait_for(lambda: get(gw, "/orders/1", Authorization=bearer(token)).status_code == 200, timeout=10)
    issuer.set_keys(RSA)


def test_a_request_before_the_first_jwks_fetch_waits_for_it(
    tmp_path: Path, up: UpstreamServer, issuer: jwtkit.JwksServer
) -> None:
    routes = tmp_path / "routes.yaml"
    write_routes(routes, up, issuer)
    with jwtkit.JwksServer(RSA) as slow_start:
        slow_start.delay = 3.0  # the first fetch is still in flight when the request comes
        routes.write_text(routes.read_text().replace(issuer.url, slow_start.url))
        proc = GatewayProcess(tmp_path, routes=routes)
        try:
            token = RSA.sign(jwtkit.claims(now=time.time()))
            # the request waits for the keys instead of getting 503, then goes through
            assert get(proc, "/orders/1", Authorization=bearer(token)).status_code == 200
            assert slow_start.requests == 1
        finally:
            proc.stop()


def test_an_issuer_that_never_answers_gives_503(
    tmp_path: Path, up: UpstreamServer, issuer: jwtkit.JwksServer
) -> None:
    routes = tmp_path / "routes.yaml"
    dead = jwtkit.JwksServer(RSA)
    dead.close()
    write_routes(routes, up, issuer)
    routes.write_text(routes.read_text().replace(issuer.url, dead.url))
    proc = GatewayProcess(tmp_path, routes=routes)
    try:
        r = get(proc, "/orders/1", Authorization=bearer(RSA.sign(jwtkit.claims(now=time.time()))))
        assert r.status_code == 503 and "signing keys" in r.json()["message"]
        # /routes says why, and the log too
        [source] = httpx.get(proc.admin + "/routes", timeout=5).json()["jwks"]
        assert source["uri"] == dead.url and source["last_error"]
        assert dead.url in proc.log()
    finally:
        proc.stop()


# --- configuration ------------------------------------------------------------------------------------------
def test_a_missing_secret_answers_500_never_admits(gw: GatewayProcess, up: UpstreamServer) -> None:
    before = len(up.requests)
    r = get(gw, "/misconfigured", **{"X-API-Key": "acme-key-1"})
    assert r.status_code == 500
    assert len(up.requests) == before


def test_a_changed_secret_takes_effect_on_reload(
    gw: GatewayProcess, routes_file: Path, up: UpstreamServer, issuer: jwtkit.JwksServer
) -> None:
    write_routes(routes_file, up, issuer, acme_key="acme-key-rotated")
    try:
        assert wait_for(
            lambda: get(gw, "/partners/x", **{"X-API-Key": "acme-key-rotated"}).status_code == 200
        )
        assert get(gw, "/partners/x", **{"X-API-Key": "acme-key-1"}).status_code == 401
    finally:
        write_routes(routes_file, up, issuer)
        wait_for(lambda: get(gw, "/partners/x", **{"X-API-Key": "acme-key-1"}).status_code == 200)


def test_no_view_shows_a_key(gw: GatewayProcess, routes_file: Path) -> None:
    shown = httpx.get(gw.admin + "/routes", timeout=5).text + httpx.get(gw.admin + "/table", timeout=5).text
    compiled = subprocess.run(
        [sys.executable, "-m", "kubegate.cli", "compile", str(routes_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    log = gw.log()
    for secret in ("acme-key-1", "globex-key-2", HMAC_SECRET.decode()):
        for text in (shown, compiled, log):
            assert secret not in text
    import hashlib

    assert hashlib.sha256(b"acme-key-1").hexdigest() not in compiled
    assert "(redacted)" in compiled
