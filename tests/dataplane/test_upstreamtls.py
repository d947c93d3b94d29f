"""The backends' TLS settings at run time (dataplane/upstreamtls.py).

Aspects: one context per distinct (CAs, verify), reused across tables; settings equal by value make equal
pool keys (the context is not compared), different server names or CAs do not; a context verifies by
default (TLS 1.2 minimum, hostname checked) and insecureSkipVerify turns both checks off; failed handshakes
are logged at most once per route and endpoint per LOG_EVERY seconds (a fake clock). The handshakes
themselves are in test_backend_tls_e2e.py.
"""

from __future__ import annotations

import logging
import ssl

import pytest

from kubegate.compiler.table import BackendTls
from kubegate.dataplane import upstreamtls
from kubegate.dataplane.upstreamtls import TlsContexts, UpstreamTls
from tests import tlscerts


@pytest.fixture(scope="module")
def ca() -> str:
    return tlscerts.make_pair(["billing.internal"]).cert


def test_one_context_per_distinct_verification(ca: str) -> None:
    contexts = TlsContexts()
    a = contexts.get(BackendTls(serverName="a.internal", ca=ca))
    b = contexts.get(BackendTls(serverName="b.internal", ca=ca))
    system = contexts.get(BackendTls(serverName="a.internal"))
    insecure = contexts.get(BackendTls(serverName="a.internal", verify=False))
    assert a.context is b.context and len(contexts) == 3
    assert system.context is not a.context and insecure.context is not system.context
    again = contexts.get(BackendTls(serverName="a.internal", ca=ca))
    assert again == a and hash(again) == hash(a) and again.context is a.context
    assert a != b and a != system and system != insecure
    assert {a: 1}[again] == 1  # a pool key made from the next table finds this one's connections


def test_contexts_verify_unless_told_not_to(ca: str) -> None:
    contexts = TlsContexts()
    verified = contexts.get(BackendTls(serverName="a.internal", ca=ca)).context
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    assert verified.minimum_version == ssl.TLSVersion.TLSv1_2
    assert verified.cert_store_stats()["x509"] == 1  # the route's CA only, not the system's
    insecure = contexts.get(BackendTls(serverName="a.internal", verify=False)).context
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname


def test_failed_handshakes_are_logged_once_per_route_and_endpoint_per_interval(
    caplog: pytest.LogCaptureFixture, ca: str
) -> None:
    now = [100.0]
    log = upstreamtls._FailureLog(clock=lambda: now[0])
    tls = TlsContexts().get(BackendTls(serverName="billing.internal", ca=ca))
    key = ("10.0.0.7", 8443, tls)
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    with caplog.at_level(logging.WARNING, logger="kubegate.upstream"):
        assert log("default/a", key, error)
        assert not log("default/a", key, error)
        assert log("default/b", key, error)  # another route: its own line
        assert log("default/a", ("10.0.0.8", 8443, tls), error)  # another endpoint too
        now[0] += upstreamtls.LOG_EVERY
        assert log("default/a", key, error)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert lines[0] == (
        "TLS handshake with 10.0.0.7:8443 (server name billing.internal) for route default/a failed: "
        "certificate verify failed"
    )


def test_upstream_tls_is_a_value(ca: str) -> None:
    context = ssl.create_default_context()
    assert UpstreamTls("a", True, "x", context) == UpstreamTls("a", True, "x", ssl.create_default_context())
    assert UpstreamTls("a", True, "x", context) != UpstreamTls("a", False, "x", context)
