"""The proxy end to end: a real ``kubegate serve`` process between real clients and real upstreams.

Aspects: forwarding and headers (X-Forwarded-*: a client's own X-Forwarded-Proto/Host never reach the
upstream, X-Request-ID, hop-by-hop both ways), bodies both ways (length, chunked, large, streaming), HEAD,
keep-alive and pooling (idle client connections closed after ``--keepalive-timeout``; one retry on a
pooled upstream connection the upstream closed while idle; back-pressure from a slow client reaches the
upstream), 100-continue and 417 for any other expectation, the body limit at its boundary for both
framings, load balancing, every error status the proxy produces (400, 404, 408, 413, 414, 417, 431, 500,
502, 503, 504), and ``/metrics`` values after known traffic.
Behaviour variants are selected by Host (one route per host) so that upstream paths stay as sent.
Waits are hang guards (``GUARD``), never measures.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubegate.compiler.table import RouteTable, TableDelta
from tests.gateway import GatewayProcess, free_port, route, table
from tests.upstreams import UpstreamServer, wait_for

GUARD = 20.0  # seconds: a hang guard, never a measure


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[UpstreamServer, UpstreamServer]]:
    a, b = UpstreamServer("a").start(), UpstreamServer("b").start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, upstreams: tuple[UpstreamServer, UpstreamServer]
) -> Iterator[GatewayProcess]:
    a, b = upstreams
    proc = GatewayProcess(tmp_path_factory.mktemp("gw"), extra=["--header-timeout", "1"])
    dead = f"http://127.0.0.1:{free_port()}"
    t = table(
        route("echo", a.url, match={"hosts": ["a", "127.0.0.1"]}),
        route("split", a.url, b.url, match={"hosts": ["split.test"]}),
        route(
            "rr",
            match={"hosts": ["rr.test"]},
            backends=[
                {
                    "name": "url:ab",
                    "endpoints": [
                        {"host": "127.0.0.1", "port": a.port},
                        {"host": "127.0.0.1", "port": b.port},
                    ],
                }
            ],
        ),
        route("timeout", a.url, match={"hosts": ["timeout.test"]}, timeoutMs=500),
        route("small", a.url, match={"hosts": ["small.test"]}, maxBodyBytes=1024),
        route(
            "missing",
            match={"hosts": ["missing.test"]},
            backends=[{"name": "service:default/nope:80", "error": "service default/nope not found"}],
        ),
        route("empty", match={"hosts": ["empty.test"]}, backends=[{"name": "service:default/empty:80"}]),
        route("dead", dead, match={"hosts": ["dead.test"]}),
        route(
            "public", a.url, match={"hosts": ["norm.test"], "path": {"type": "Prefix", "value": "/public"}}
        ),
    )
    t["routes"][1]["backends"][0]["weight"] = 3
    resp = proc.push(t)
    assert resp.status_code == 200, resp.text
    yield proc
    proc.stop()


def raw(gw: GatewayProcess, data: bytes, *, timeout: float = 5.0, read_all: bool = True) -> bytes:
    """Send raw bytes, return everything the gateway answers until it closes (or the first response)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not c:
                break
            chunks.append(c)
            if not read_all:
                break
        return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_json(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


# --- forwarding ---------------------------------------------------------------------------------------
def test_get_is_proxied_with_forwarding_headers(gw: GatewayProcess) -> None:
    r = httpx.get(gw.url + "/hello/world?x=1&y=2", headers={"x-forwarded-for": "10.0.0.9"})
    assert r.status_code == 200
    seen = r.json()
    assert seen["path"] == "/hello/world" and seen["query"] == "x=1&y=2"
    h = seen["headers"]
    assert h["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert h["host"] == f"127.0.0.1:{gw.port}"
    assert h["x-request-id"] == r.headers["x-request-id"] and len(r.headers["x-request-id"]) > 8


def test_client_request_id_is_kept(gw: GatewayProcess) -> None:
    r = httpx.get(gw.url + "/", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["headers"]["x-request-id"] == "abc-123"


def test_request_ids_differ(gw: GatewayProcess) -> None:
    ids = {httpx.get(gw.url + "/").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_hop_by_hop_headers_are_stripped(gw: GatewayProcess) -> None:
    r = httpx.get(
        gw.url + "/",
        headers={
            "connection": "keep-alive, x-private",
            "x-private": "secret",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "proxy-authorization": "Basic eA==",
            "x-public": "ok",
        },
    )
    h = r.json()["headers"]
    assert h["x-public"] == "ok"
    for name in ("connection", "x-private", "keep-alive", "te", "proxy-authorization"):
        assert name not in h


def test_response_hop_by_hop_headers_are_stripped(gw: GatewayProcess) -> None:
    """The upstream's hop-by-hop headers (the fixed list and those its Connection names) end at the
    gateway; its end-to-end headers reach the client."""
    r = httpx.get(gw.url + "/hop-by-hop")
    assert r.status_code == 200
    names = [name.decode("latin-1").lower() for name, _ in r.headers.raw]
    for name in ("connection", "x-internal", "keep-alive", "proxy-authenticate", "trailer"):
        assert name not in names, r.headers
    assert r.headers["x-end-to-end"] == "kept" and r.headers["cache-control"] == "no-store"


def test_client_forwarded_proto_and_host_are_replaced_not_added_to(gw: GatewayProcess) -> None:
    """A client's own X-Forwarded-Proto/Host are dropped: the upstream sees each exactly once, with the
    gateway's values (a second copy would let whichever the backend reads first win)."""
    r = httpx.get(
        gw.url + "/xf",
        headers=[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ],
    )
    lines = [(name, value) for name, value in r.json()["headerLines"] if name.startswith("x-forwarded-")]
    assert sorted(lines) == [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-host", f"127.0.0.1:{gw.port}"),
        ("x-forwarded-proto", "http"),
    ]


def test_post_bodies_content_length_and_chunked(gw: GatewayProcess) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    r = httpx.post(gw.url + "/up", content=body)
    assert r.json()["bodyBytes"] == len(body)

    def gen() -> Iterator[bytes]:
        for i in range(64):
            yield bytes([i]) * 10000

    r = httpx.post(gw.url + "/up", content=gen())
    seen = r.json()
    assert seen["bodyBytes"] == 640000
    assert seen["headers"]["transfer-encoding"] == "chunked"


def test_large_response_is_streamed(gw: GatewayProcess) -> None:
    size = 32 * 1024 * 1024
    got = 0
    with httpx.stream("GET", gw.url + f"/big/{size}", timeout=30) as r:
        assert r.headers["content-length"] == str(size)
        for chunk in r.iter_raw():
            got += len(chunk)
    assert got == size


def test_chunked_and_close_delimited_responses(gw: GatewayProcess) -> None:
    r = httpx.get(gw.url + "/chunked/5")
    assert r.text == "".join(f"chunk-{i};" for i in range(5))
    r = httpx.get(gw.url + "/close-delimited")
    assert r.text == "all of this until close"


def test_head(gw: GatewayProcess) -> None:
    out = raw(
        gw, b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"content-length:" in first.lower()
    assert rest.startswith(b"HTTP/1.1 200")  # no body bytes between the HEAD response and the next one
    assert b'"path": "/y"' in rest


def test_keepalive_and_pooling(gw: GatewayProcess, upstreams: tuple[UpstreamServer, UpstreamServer]) -> None:
    a, _ = upstreams
    with httpx.Client() as c:
        c.get(gw.url + "/warm")
        before = a.connections
        for _ in range(50):
            assert c.get(gw.url + "/k").status_code == 200
    assert a.connections - before <= 1  # the pooled upstream connection is reused


def test_pipelined_requests_are_answered_in_order(gw: GatewayProcess) -> None:
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    out = raw(gw, reqs + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    paths = [seg.split(b'"', 1)[0] for seg in out.split(b'"path": "')[1:]]
    assert paths == [b"/p0", b"/p1", b"/p2", b"/p3", b"/p4", b"/last"]


def test_expect_100_continue(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"hello")
        resp = s.recv(65536)
        assert resp.startswith(b"HTTP/1.1 200") and b'"bodyBytes": 5' in resp


def test_unknown_expectation_is_417_and_not_forwarded(
    gw: GatewayProcess, upstreams: tuple[UpstreamServer, UpstreamServer]
) -> None:
    a, _ = upstreams
    out = raw(
        gw,
        b"POST /expect-other HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: something-else\r\n"
        b"Connection: close\r\n\r\nhello",
    )
    assert status_of(out) == 417, out
    assert b"100 Continue" not in out
    assert not any(target == "/expect-other" for _, target, _, _ in a.requests)


# --- load balancing -----------------------------------------------------------------------------------
def test_weighted_split_is_exact(gw: GatewayProcess) -> None:
    with httpx.Client() as c:
        seen = [c.get(gw.url + "/", headers={"host": "split.test"}).json()["backend"] for _ in range(40)]
    assert seen.count("a") == 30 and seen.count("b") == 10
    assert "bb" not in "".join(seen)  # smooth: the light backend never gets two in a row


def test_round_robin_across_endpoints(gw: GatewayProcess) -> None:
    with httpx.Client() as c:
        seen = [c.get(gw.url + "/", headers={"host": "rr.test"}).json()["backend"] for _ in range(10)]
    assert seen.count("a") == 5 and seen.count("b") == 5


# --- errors -------------------------------------------------------------------------------------------
def test_no_route_is_404_with_json(gw: GatewayProcess) -> None:
    r = httpx.get(gw.url + "/other", headers={"host": "norm.test"})
    assert r.status_code == 404
    assert r.json()["requestId"] == r.headers["x-request-id"]
    assert r.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (b"/public/../admin", 404),
        (b"/public/%2e%2e/admin", 404),
        (b"/public/%2E%2E/%2e/admin", 404),
        (b"/public/x/../../admin", 404),
        (b"/..", 400),
        (b"/%2e%2e/public", 400),
        (b"/public/../../public", 400),
        (b"/public/x%00", 400),
        (b"/public/%zz", 400),
        (b"/public/..;/admin", 400),
        (b"/public\\..\\admin", 400),
    ],
)
def test_path_normalisation_blocks_bypass(gw: GatewayProcess, path: bytes, status: int) -> None:
    out = raw(gw, b"GET " + path + b" HTTP/1.1\r\nHost: norm.test\r\nConnection: close\r\n\r\n")
    assert status_of(out) == status


def test_normalised_path_is_forwarded(gw: GatewayProcess) -> None:
    out = raw(gw, b"GET //public/./a//b/../c HTTP/1.1\r\nHost: norm.test\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200
    assert body_json(out)["path"] == "/public/a/c"


@pytest.mark.parametrize(
    "request_bytes",
    [
        # conflicting framing (request smuggling)
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        # malformed heads
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET nothing HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_malformed_and_smuggling_requests_get_400(gw: GatewayProcess, request_bytes: bytes) -> None:
    out = raw(gw, request_bytes)
    assert status_of(out) == 400, out
    assert b"connection: close" in out.lower()


def test_declared_body_over_limit_is_413_before_body(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(
            b"POST / HTTP/1.1\r\nHost: small.test\r\nContent-Length: 2048\r\nExpect: 100-continue\r\n\r\n"
        )
        resp = s.recv(65536)
    assert status_of(resp) == 413 and b"100 Continue" not in resp


def test_default_body_limit_is_10_mib(gw: GatewayProcess) -> None:
    out = raw(gw, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (10 * 1024 * 1024 + 1))
    assert status_of(out) == 413


@pytest.mark.parametrize(("size", "status"), [(1023, 200), (1024, 200), (1025, 413)])
def test_body_limit_boundary_with_content_length(gw: GatewayProcess, size: int, status: int) -> None:
    """maxBodyBytes 1024: a body of exactly the limit passes, one byte more does not (declared length;
    over the limit, the gateway answers before the body is sent)."""
    head = b"POST /cl HTTP/1.1\r\nHost: small.test\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size
    out = raw(gw, head + (b"y" * size if status == 200 else b""))
    assert status_of(out) == status, out
    if status == 200:
        assert body_json(out)["bodyBytes"] == size


@pytest.mark.parametrize(("size", "status"), [(1023, 200), (1024, 200), (1025, 413)])
def test_body_limit_boundary_with_many_small_chunks(gw: GatewayProcess, size: int, status: int) -> None:
    """The same boundary for a chunked body in 10-byte chunks: payload bytes count, not chunk framing."""
    body = bytes(i % 251 for i in range(size))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 10]), body[i : i + 10]) for i in range(0, size, 10))
    out = raw(
        gw,
        b"POST /chunks HTTP/1.1\r\nHost: small.test\r\nTransfer-Encoding: chunked\r\nConnection: close"
        b"\r\n\r\n" + chunks + b"0\r\n\r\n",
    )
    assert status_of(out) == status, out
    if status == 200:
        seen = body_json(out)
        assert seen["bodyBytes"] == size and seen["headers"]["transfer-encoding"] == "chunked"


def test_chunked_body_over_limit_is_413(gw: GatewayProcess) -> None:
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    out = raw(
        gw,
        b"POST / HTTP/1.1\r\nHost: small.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunk * 3
        + b"0\r\n\r\n",
    )
    assert status_of(out) == 413


def test_oversized_headers_431_and_url_414(gw: GatewayProcess) -> None:
    big = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
    assert status_of(raw(gw, b"GET / HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n")) == 431
    assert status_of(raw(gw, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")) == 414


def test_one_endless_header_gets_431_before_it_fills_memory(gw: GatewayProcess) -> None:
    """httptools buffers a header until its end: the limit must hold for a header that never ends."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        answer = b""
        for _ in range(64):  # up to 2 MiB, sent in pieces; the answer must come well before the end
            try:
                s.sendall(b"v" * 32768)
            except (BrokenPipeError, ConnectionResetError):
                break
            s.settimeout(0.05)
            try:
                answer += s.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        s.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            answer += s.recv(65536)
    assert status_of(answer) == 431, answer[:200]


def test_a_large_pipelined_body_does_not_count_against_the_next_head(gw: GatewayProcess) -> None:
    body = b"b" * 200_000  # arrives in the same reads as the next request's head
    data = (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        + b"GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        + b"X-H: v\r\n" * 100
        + b"\r\n"
    )
    out = raw(gw, data)
    assert out.count(b"HTTP/1.1 200 ") == 2, out[:300]


def test_slow_header_client_gets_408(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and never finish the head
        resp = s.recv(65536)
    assert status_of(resp) == 408


def test_unresolved_backend_is_500_and_empty_is_503(gw: GatewayProcess) -> None:
    r = httpx.get(gw.url + "/", headers={"host": "missing.test"})
    assert r.status_code == 500 and "nope" in r.json()["message"]
    r = httpx.get(gw.url + "/", headers={"host": "empty.test"})
    assert r.status_code == 503


@pytest.mark.parametrize(
    ("host", "path", "status"),
    [
        ("dead.test", "/", 502),  # connection refused
        ("a", "/reset", 502),
        ("a", "/malformed", 502),
        ("a", "/huge-headers", 502),
        ("timeout.test", "/stall", 504),
    ],
)
def test_upstream_failures(gw: GatewayProcess, host: str, path: str, status: int) -> None:
    r = httpx.get(gw.url + path, headers={"host": host}, timeout=10)
    assert r.status_code == status
    assert r.json()["status"] == status and r.json()["requestId"] == r.headers["x-request-id"]


def test_client_disconnect_mid_response_does_not_hurt(gw: GatewayProcess) -> None:
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /big/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (64 * 1024 * 1024))
            s.recv(1000)
    assert httpx.get(gw.url + "/after").status_code == 200
    assert gw.proc.poll() is None


# --- admin --------------------------------------------------------------------------------------------
def test_admin_views(gw: GatewayProcess) -> None:
    assert httpx.get(gw.admin + "/health").status_code == 200
    assert httpx.get(gw.admin + "/ready").json()["ready"] is True
    routes = httpx.get(gw.admin + "/routes").json()["routes"]
    assert {r["id"] for r in routes} >= {"default/echo", "default/split"}
    services = httpx.get(gw.admin + "/services").json()["services"]
    assert any(s["name"] == "service:default/nope:80" and s["error"] for s in services)
    one = httpx.get(gw.admin + "/services/nope")
    assert one.status_code == 200 and one.json()["services"][0]["routes"] == ["default/missing"]
    assert httpx.get(gw.admin + "/services/absent").status_code == 404
    info = gw.table()
    assert info["version"] == "t1" and info["hash"].startswith("sha256:") and info["routes"] == 9


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(gw: GatewayProcess) -> Samples:
    text = httpx.get(gw.admin + "/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_known_traffic(gw: GatewayProcess) -> None:
    """Counters move by exactly the traffic sent (other tests of this module ran before: deltas)."""
    before = samples(gw)
    with httpx.Client() as c:
        for _ in range(3):
            assert c.get(gw.url + "/m").status_code == 200
        assert c.post(gw.url + "/m", content=b"abc").status_code == 200
        assert c.get(gw.url + "/status/404").status_code == 404
        assert c.get(gw.url + "/", headers={"host": "dead.test"}).status_code == 502
    after = samples(gw)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    requests = "kubegate_requests_total"
    assert delta(requests, method="GET", route="default/echo", status_class="2xx") == 3
    assert delta(requests, method="POST", route="default/echo", status_class="2xx") == 1
    assert delta(requests, method="GET", route="default/echo", status_class="4xx") == 1
    assert delta(requests, method="GET", route="default/dead", status_class="5xx") == 1
    assert delta("kubegate_request_duration_seconds_count", route="default/echo") == 5
    assert delta("kubegate_request_duration_seconds_bucket", route="default/echo", le="+Inf") == 5
    assert delta("kubegate_request_duration_seconds_sum", route="default/echo") > 0
    assert delta("kubegate_upstream_errors_total", route="default/dead", kind="connect") == 1
    assert delta("kubegate_upstream_errors_total", route="default/echo", kind="connect") == 0
    info = gw.table()
    assert after[("kubegate_table_info", frozenset({"version": "t1", "hash": info["hash"]}.items()))] == 1
    assert after[("kubegate_table_routes", frozenset())] == info["routes"] == 9
    assert after[("kubegate_table_swaps_total", frozenset())] >= 1


def test_push_requires_token(gw: GatewayProcess) -> None:
    t = table(route("x", "http://127.0.0.1:1"), version="evil")
    assert httpx.put(gw.admin + "/table", json=t).status_code == 401
    assert gw.push(t, token="wrong").status_code == 403
    assert gw.table()["version"] == "t1"


@pytest.mark.parametrize(
    "bad",
    [
        {"routes": "nope"},
        {"version": "v", "routes": [{"id": "a/b", "namespace": "a", "name": "b", "backends": []}]},
        {
            "version": "v",
            "routes": [
                {
                    "id": "a/b",
                    "namespace": "a",
                    "name": "b",
                    "backends": [{"name": "x"}],
                    "match": {"headers": [{"name": "x", "value": "(", "type": "RegularExpression"}]},
                }
            ],
        },
        {"version": "v", "apiVersion": "other/v1", "routes": []},
    ],
)
def test_bad_push_is_400_and_old_table_serves(gw: GatewayProcess, bad: dict[str, Any]) -> None:
    r = gw.push(bad)
    assert r.status_code == 400 and r.json()["reasons"], r.text
    assert gw.table()["version"] == "t1"
    assert httpx.get(gw.url + "/still").status_code == 200


def test_patch_applies_a_delta_and_refuses_one_for_another_table(tmp_path: Path) -> None:
    """``PATCH /table``: a delta against the table served swaps in the result; a delta made for another
    table gets 409 (the operator then pushes the whole table); a delta whose result cannot be built gets
    400; with a wrong token, 403; every refusal keeps the old table serving."""
    up = UpstreamServer("delta").start()
    proc = GatewayProcess(tmp_path)
    try:
        first = RouteTable.from_wire(table(route("a", up.url, path="/a"), route("b", up.url, path="/b")))

        def patch(body: dict[str, Any], token: str | None = None) -> httpx.Response:
            return httpx.patch(
                proc.admin + "/table",
                content=json.dumps(body),
                headers={"authorization": f"Bearer {token or proc.token}"},
            )

        second = RouteTable.from_wire(
            table(route("a", up.url, path="/a"), route("c", up.url, path="/c"), version="t2")
        )
        delta = TableDelta.between(first, second).to_wire()
        r = patch(delta)
        assert r.status_code == 409 and r.json()["hash"] is None, r.text  # nothing served yet
        assert proc.push(first.to_wire()).status_code == 200

        assert patch(delta, token="wrong").status_code == 403
        r = patch(delta)
        assert r.status_code == 200 and r.json() == {
            **r.json(),
            "version": "t2",
            "hash": second.content_hash(),
        }
        assert httpx.get(proc.url + "/c").status_code == 200
        assert httpx.get(proc.url + "/b").status_code == 404

        r = patch(delta)  # made for the first table, which is no longer served
        assert r.status_code == 409 and r.json()["hash"] == second.content_hash(), r.text
        bad_glob = route("g", up.url, path="/x/**/y", ptype="Glob")
        third = RouteTable.model_construct(
            version="t3", routes=(*second.routes, RouteTable.from_wire(table(bad_glob)).routes[0])
        )
        r = patch(TableDelta.between(second, third).to_wire())
        assert r.status_code == 400 and "glob" in r.text, r.text
        assert patch({"version": "t4", "base": second.content_hash()}).status_code == 400  # no hash
        assert proc.table()["version"] == "t2" and httpx.get(proc.url + "/c").status_code == 200
    finally:
        proc.stop()
        up.stop()


def test_push_without_configured_token_is_refused(tmp_path: Path) -> None:
    proc = GatewayProcess(tmp_path, token=None)
    try:
        assert httpx.get(proc.admin + "/ready").status_code == 503
        r = httpx.put(proc.admin + "/table", json=table(), headers={"authorization": "Bearer x"})
        assert r.status_code == 403 and r.json() == {"error": "invalid bearer token"}  # nothing more said
        assert httpx.get(proc.url + "/").status_code == 503
    finally:
        proc.stop()


def test_pooled_connection_is_usable_after_a_backpressured_response(tmp_path: Path) -> None:
    """A client that does not read holds the upstream back (the gateway stops reading from it rather than
    buffering the response), and a response that ends while the client is slow does not leave its
    upstream connection paused: the next request reuses it."""
    up = UpstreamServer("solo").start()
    proc = GatewayProcess(tmp_path)
    size = 256 * 1024 * 1024
    # What the socket buffers between the upstream and this client can hold (upstream send buffer,
    # gateway receive and send buffers, client receive buffer: a few tens of MiB on Linux at most); an
    # upstream that got further than this while the client read nothing was not held back.
    held_back = 128 * 1024 * 1024
    try:
        assert proc.push(table(route("r", up.url))).status_code == 200
        for _ in range(2):
            up.big_written = 0
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                s.settimeout(GUARD)
                s.connect(("127.0.0.1", proc.port))
                s.sendall(b"GET /big/%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % size)
                wait_for(lambda: up.big_written > 0, timeout=GUARD)  # the response is flowing
                # Read nothing for a moment: a gateway without back-pressure would read the whole body
                # from the upstream meanwhile (this window can only make the check miss, never fail).
                time.sleep(1.0)
                assert up.big_written < held_back, f"{up.big_written} bytes written: no back-pressure"
                got = 0
                while chunk := s.recv(1 << 20):
                    got += len(chunk)
            assert got > size and up.big_written == size
            r = httpx.get(proc.url + "/after", timeout=5)  # reuses the pooled upstream connection
            assert r.status_code == 200
        assert up.connections == 1
    finally:
        proc.stop()
        up.stop()


def test_idle_client_connection_is_closed_after_keepalive_timeout(tmp_path: Path) -> None:
    """``--keepalive-timeout``: the sweeper closes a client connection idle for longer (and not one that
    is in use: a second request on it is answered first)."""
    up = UpstreamServer("ka").start()
    proc = GatewayProcess(tmp_path, extra=["--keepalive-timeout", "1"])
    try:
        assert proc.push(table(route("r", up.url))).status_code == 200
        with socket.create_connection(("127.0.0.1", proc.port), timeout=GUARD) as s:
            for path in (b"/one", b"/two"):  # keep-alive: both on this connection
                s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(65536)
                assert head.startswith(b"HTTP/1.1 200 "), head
                assert b"connection: close" not in head.lower()
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += s.recv(65536)
            # Now idle: closed by the gateway after about a second (75 s by default: the guard is shorter).
            assert s.recv(1) == b""
        assert proc.proc.poll() is None
    finally:
        proc.stop()
        up.stop()


def test_stale_pooled_upstream_connection_is_retried_once(tmp_path: Path) -> None:
    """An upstream that closes keep-alive connections idle for over 50 ms, as its request arrives: the
    request on that stale pooled connection is sent again, once, on a fresh one, and succeeds."""
    up = UpstreamServer("stale").start()
    up.idle_close_ms = 50
    proc = GatewayProcess(tmp_path)
    try:
        assert proc.push(table(route("r", up.url))).status_code == 200
        with httpx.Client() as c:
            assert c.get(proc.url + "/first").status_code == 200
            assert (up.connections, up.stale_closed) == (1, 0)
            time.sleep(0.2)  # the pooled connection goes stale (a longer pause changes nothing)
            r = c.get(proc.url + "/second")
        assert r.status_code == 200 and r.json()["path"] == "/second", r.text
        assert (up.connections, up.stale_closed) == (2, 1)  # sent on the stale one, then on a fresh one
        assert [target for _, target, _, _ in up.requests] == ["/first", "/second"]
    finally:
        proc.stop()
        up.stop()
