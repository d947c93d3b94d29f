"""X-Forwarded-Proto from a trusted proxy: a balancer in front that terminated TLS says so, and only it.

Aspects: with ``--trusted-proxies`` covering the peer, the client's ``X-Forwarded-Proto: https`` reaches
the backend (other values than http/https are ignored); from a peer that is not trusted, or without the
flag, the gateway always says ``http`` on its plain port, whatever the client sent. (Over the HTTPS
listener it is always ``https``: ``test_tls_e2e.py``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway import GatewayProcess
from tests.upstreams import UpstreamServer, wait_for

ROUTES = """
apiVersion: kubegate.dev/v1alpha1
kind: GatewayRoute
metadata: {{name: all}}
spec:
  backends: [{{url: "{up}"}}]
"""


@pytest.fixture(scope="module")
def up() -> Iterator[UpstreamServer]:
    server = UpstreamServer("proto").start()
    yield server
    server.stop()


def gateway(tmp: Path, up: UpstreamServer, *extra: str) -> GatewayProcess:
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES.format(up=up.url))
    proc = GatewayProcess(tmp, routes=routes, extra=list(extra))
    wait_for(lambda: proc.table().get("routes") == 1, timeout=20)
    return proc


def proto_seen(gw: GatewayProcess, sent: str | None) -> list[str]:
    headers = {"X-Forwarded-Proto": sent} if sent is not None else {}
    r = httpx.get(gw.url + "/x", headers=headers, timeout=10)
    assert r.status_code == 200
    return [v for n, v in r.json()["headerLines"] if n.lower() == "x-forwarded-proto"]


@pytest.mark.parametrize(
    ("trusted", "sent", "seen"),
    [
        ("127.0.0.1/32", "https", ["https"]),
        ("127.0.0.1/32", "HTTPS", ["https"]),
        ("127.0.0.1/32", None, ["http"]),
        ("127.0.0.1/32", "javascript", ["http"]),
        ("10.0.0.0/8", "https", ["http"]),  # the peer (127.0.0.1) is not a trusted proxy
        ("", "https", ["http"]),
    ],
)
def test_forwarded_proto_is_kept_only_from_a_trusted_proxy(
    tmp_path: Path, up: UpstreamServer, trusted: str, sent: str | None, seen: list[str]
) -> None:
    gw = gateway(tmp_path, up, *(["--trusted-proxies", trusted] if trusted else []))
    try:
        assert proto_seen(gw, sent) == seen
    finally:
        gw.stop()
