"""Hostile HTTP against a real ``kubegate serve``: what the upstream (a strict h11 parser) and the client see.

Aspects: the gateway frames every message itself (``Connection`` cannot remove Content-Length,
Transfer-Encoding or Host, on either side); upgrade requests other than WebSocket are proxied with their body
and what follows them is the next request, not part of the tunnel; fragments, user info, bad Host values,
non-chunked transfer codings, Transfer-Encoding in HTTP/1.0, HTTP/2.0 request lines and CONNECT are refused
with the right status and nothing reaches the upstream; encoded slashes follow ``--escaped-slashes``;
the upstream's odd answers (status 000, unknown transfer codings, unrequested 101) become 502.

Every upstream connection is answered with ``connection: close`` and read to its end (see
:mod:`tests.h11upstream`), so ``settle()`` returns everything the gateway sent, smuggled requests included.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from tests.gateway import GatewayProcess, route, table
from tests.h11upstream import H11Upstream, Seen


@pytest.fixture(scope="module")
def up() -> Iterator[H11Upstream]:
    u = H11Upstream()
    yield u
    u.stop()


def _routes(up: H11Upstream) -> dict[str, object]:
    return table(
        route("public", up.url, path="/public"),
        route("internal", up.url, path="/internal"),
    )


def _gateway(tmp: Path, up: H11Upstream, *extra: str) -> GatewayProcess:
    proc = GatewayProcess(tmp, extra=list(extra))
    resp = proc.push(_routes(up))
    assert resp.status_code == 200, resp.text
    return proc


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, up: H11Upstream) -> Iterator[GatewayProcess]:
    proc = _gateway(tmp_path_factory.mktemp("gw"), up)
    yield proc
    proc.stop()


class Answer:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


def talk(
    gw: GatewayProcess, data: bytes, responses: int = 1, *, until_closed: bool = False
) -> tuple[list[Answer], bool]:
    """Send raw bytes; parse up to ``responses`` answers with h11; return them and whether the gateway closed
    (after the answers, that is waited for, up to 2 s, only with ``until_closed``).

    Parsing with a strict client parser is the point: an unframed or doubly framed answer fails here.
    """
    answers: list[Answer] = []
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(data)
        h = h11.Connection(h11.CLIENT)
        closed = False
        for _ in range(responses):
            h.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            h.send(h11.EndOfMessage())
            status, headers, body = 0, [], b""
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    chunk = s.recv(65536)
                    closed = closed or not chunk
                    h.receive_data(chunk)
                    continue
                if isinstance(event, h11.Response):
                    status, headers = event.status_code, list(event.headers.raw_items())
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    answers.append(Answer(status, headers, body))
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return answers, True
            if h.our_state is h11.DONE and h.their_state is h11.DONE:
                h.start_next_cycle()
            else:
                break
        if until_closed and not closed:
            try:
                s.settimeout(2)
                closed = s.recv(1) == b""
            except TimeoutError:
                closed = False
        return answers, closed


def new_requests(up: H11Upstream, before: int) -> list[Seen]:
    return up.settle()[before:]


# --- framing: Connection can never remove Content-Length, Transfer-Encoding or Host ---------------------
SMUGGLED = b"GET /admin/delete-all HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "connection",
    [
        "Content-Length",
        "content-length, keep-alive",
        "Host",
        "X-Forwarded-For, X-Request-Id, X-Forwarded-Host",
    ],
)
def test_connection_cannot_remove_content_length_or_host(
    gw: GatewayProcess, up: H11Upstream, connection: str
) -> None:
    before = len(up.settle())
    head = b"POST /public/c HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n"
    answers, _ = talk(gw, head % (len(SMUGGLED), connection.encode()) + SMUGGLED)
    assert [a.status for a in answers] == [200]
    seen = new_requests(up, before)
    assert [(s.method, s.target, s.body, s.error) for s in seen] == [(b"POST", b"/public/c", SMUGGLED, "")]
    assert seen[0].header(b"content-length") == [b"%d" % len(SMUGGLED)]
    assert seen[0].header(b"host") == [b"x"]
    assert len(seen[0].header(b"x-forwarded-for")) == 1 and len(seen[0].header(b"x-request-id")) == 1


def test_connection_cannot_remove_transfer_encoding(gw: GatewayProcess, up: H11Upstream) -> None:
    before = len(up.settle())
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    data = (
        b"POST /public/te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: Transfer-Encoding\r\n\r\n"
    )
    answers, _ = talk(gw, data + chunked)
    assert [a.status for a in answers] == [200]
    seen = new_requests(up, before)
    assert [(s.method, s.target, s.body, s.error) for s in seen] == [(b"POST", b"/public/te", SMUGGLED, "")]


def test_a_longer_declared_body_never_swallows_the_next_clients_request(
    gw: GatewayProcess, up: H11Upstream
) -> None:
    """The attacker's body is exactly what it declared; the next client's request is its own request."""
    before = len(up.settle())
    body = b"x" * 100
    data = (
        b"POST /public/first HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: Content-Length\r\n\r\n"
    )
    assert [a.status for a in talk(gw, data + body)[0]] == [200]
    victim = b"GET /public/victim HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n\r\n"
    answers, _ = talk(gw, victim)
    assert [(a.status, a.body) for a in answers] == [(200, b"ok /public/victim")]
    seen = new_requests(up, before)
    assert [(s.target, len(s.body)) for s in seen] == [(b"/public/first", 100), (b"/public/victim", 0)]


@pytest.mark.parametrize(
    ("connection", "kept"),
    [
        (b"keep-alive, Content-Length", b"content-length"),
        (b"x-request-id", b"x-request-id"),
    ],
)
def test_connection_cannot_remove_framing_from_a_response(
    gw: GatewayProcess, up: H11Upstream, connection: bytes, kept: bytes
) -> None:
    target = b"/public/resp-" + kept
    up.scripted[target] = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: %s\r\nX-Request-Id: theirs\r\n\r\nhello"
        % connection
    )
    data = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\nGET /public/next HTTP/1.1\r\nHost: x\r\n\r\n" % target
    answers, _ = talk(gw, data, responses=2)
    assert [(a.status, a.body) for a in answers] == [(200, b"hello"), (200, b"ok /public/next")]
    assert answers[0].header(b"content-length") == [b"5"]
    assert len(answers[0].header(b"x-request-id")) == 1 and answers[0].header(b"x-request-id") != [b"theirs"]


def test_chunked_response_stays_chunked_whatever_connection_says(gw: GatewayProcess, up: H11Upstream) -> None:
    up.scripted[b"/public/resp-te"] = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    data = b"GET /public/resp-te HTTP/1.1\r\nHost: x\r\n\r\nGET /public/next HTTP/1.1\r\nHost: x\r\n\r\n"
    answers, _ = talk(gw, data, responses=2)
    assert [(a.status, a.body) for a in answers] == [(200, b"hello"), (200, b"ok /public/next")]
    assert answers[0].header(b"transfer-encoding") == [b"chunked"]


@pytest.mark.parametrize("value", [b"0005", b"5  "])
def test_content_length_is_sent_as_the_parsed_value(
    gw: GatewayProcess, up: H11Upstream, value: bytes
) -> None:
    before = len(up.settle())
    up.scripted[b"/public/cl-" + value.strip()] = (
        b"HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\nhello" % value
    )
    data = b"POST /public/cl-%s HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\nhello" % (
        value.strip(),
        value,
    )
    answers, _ = talk(gw, data)
    assert [(a.status, a.body, a.header(b"content-length")) for a in answers] == [(200, b"hello", [b"5"])]
    seen = new_requests(up, before)
    assert [(s.body, s.header(b"content-length")) for s in seen] == [(b"hello", [b"5"])]


# --- upgrades other than WebSocket: stripped, the body proxied, what follows is the next request ----------
INNER = b"GET /internal/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def test_h2c_upgrade_with_a_body_is_proxied_as_plain_http(gw: GatewayProcess, up: H11Upstream) -> None:
    before = len(up.settle())
    data = (
        b"POST /public/up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: %d\r\n\r\n%s" % (len(INNER), INNER)
    )
    answers, _ = talk(gw, data)
    assert [(a.status, a.body) for a in answers] == [(200, b"ok /public/up")]
    seen = new_requests(up, before)
    assert [(s.method, s.target, s.body) for s in seen] == [(b"POST", b"/public/up", INNER)]
    assert seen[0].header(b"upgrade") == [] and seen[0].header(b"http2-settings") == []


def test_h2c_upgrade_with_a_chunked_body_then_a_pipelined_request(
    gw: GatewayProcess, up: H11Upstream
) -> None:
    before = len(up.settle())
    data = (
        b"POST /public/up-chunked HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(INNER), INNER)
    ) + b"GET /public/after HTTP/1.1\r\nHost: x\r\n\r\n"
    answers, _ = talk(gw, data, responses=2)
    assert [(a.status, a.body) for a in answers] == [
        (200, b"ok /public/up-chunked"),
        (200, b"ok /public/after"),
    ]
    seen = new_requests(up, before)
    assert [(s.target, s.body) for s in seen] == [(b"/public/up-chunked", INNER), (b"/public/after", b"")]


def test_bodiless_unknown_upgrade_then_a_pipelined_request(gw: GatewayProcess, up: H11Upstream) -> None:
    before = len(up.settle())
    data = (
        b"GET /public/u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo/2\r\n\r\n"
        + INNER.replace(b"/internal/smuggled", b"/public/second")
    )
    answers, _ = talk(gw, data, responses=2)
    assert [(a.status, a.body) for a in answers] == [(200, b"ok /public/u"), (200, b"ok /public/second")]
    assert [s.target for s in new_requests(up, before)] == [b"/public/u", b"/public/second"]


def test_unrequested_101_from_the_upstream_is_502_without_a_traceback(
    gw: GatewayProcess, up: H11Upstream
) -> None:
    up.scripted[b"/public/switch"] = (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    answers, _ = talk(gw, b"GET /public/switch HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [a.status for a in answers] == [502]
    assert "Traceback" not in gw.log()


# --- refused requests: the right status, the connection closed, nothing forwarded ------------------------
@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /public/x#/../../internal/frag HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http://x/public/x#/../../internal/frag HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /public/..%2Finternal/x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /public/..%5cinternal/x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"POST /public/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
        (
            b"POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            b"POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (b"GET /public/a HTTP/1.1\r\nHost: x y\r\n\r\n", 400),
        (b"GET /public/a HTTP/1.1\r\nHost: x/internal\r\n\r\n", 400),
        (b"GET /public/a HTTP/1.1\r\nHost: a@b\r\n\r\n", 400),
        (b"GET http://user:pw@x/public/a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /public/a HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\nGET /public/after HTTP/1.1\r\nHost: x\r\n\r\n",
            405,
        ),
        (
            b"POST /public/up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Transfer-Encoding: gzip\r\n\r\nGET /public/after-gzip HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
    ],
)
def test_refused_and_never_forwarded(gw: GatewayProcess, up: H11Upstream, data: bytes, status: int) -> None:
    before = len(up.settle())
    answers, closed = talk(gw, data, responses=2, until_closed=True)
    assert [a.status for a in answers] == [status]
    assert answers[0].header(b"connection") == [b"close"] and closed
    assert new_requests(up, before) == []


def test_http10_without_host_is_sent_with_one(gw: GatewayProcess, up: H11Upstream) -> None:
    for version in (b"1.0", b"0.9"):
        before = len(up.settle())
        answers, closed = talk(gw, b"GET /public/old HTTP/%s\r\n\r\n" % version, until_closed=True)
        assert [a.status for a in answers] == [200] and closed
        seen = new_requests(up, before)
        assert [(s.target, s.header(b"host")) for s in seen] == [
            (b"/public/old", [b"127.0.0.1:%d" % up.port])
        ]
        assert seen[0].header(b"x-forwarded-host") == []


def test_connection_close_then_more_bytes_answers_the_first_request(
    gw: GatewayProcess, up: H11Upstream
) -> None:
    before = len(up.settle())
    data = (
        b"GET /public/first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET /public/second HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    answers, closed = talk(gw, data, responses=2, until_closed=True)
    assert [(a.status, a.body) for a in answers] == [(200, b"ok /public/first")] and closed
    assert [s.target for s in new_requests(up, before)] == [b"/public/first"]


# --- odd upstream answers --------------------------------------------------------------------------------
def test_an_endless_upstream_header_is_502_at_once(gw: GatewayProcess, up: H11Upstream) -> None:
    """A header that never ends is refused once it passes the response-head limit (64 KiB), not buffered
    until the route's timeout."""
    up.scripted[b"/public/endless-header"] = b"HTTP/1.1 200 OK\r\nX-Endless: " + b"v" * 200_000
    answers, _ = talk(gw, b"GET /public/endless-header HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [a.status for a in answers] == [502]


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        (b"status-000", b"HTTP/1.1 000 Nothing\r\nContent-Length: 1\r\n\r\nx"),
        (b"status-600", b"HTTP/1.1 600 Beyond\r\nContent-Length: 1\r\n\r\nx"),
        (b"te-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip"),
        (
            b"te-gzip-chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        ),
    ],
)
def test_odd_upstream_answers_are_502(gw: GatewayProcess, up: H11Upstream, name: bytes, raw: bytes) -> None:
    up.scripted[b"/public/" + name] = raw
    answers, _ = talk(gw, b"GET /public/%s HTTP/1.1\r\nHost: x\r\n\r\n" % name)
    assert [a.status for a in answers] == [502]


# --- --escaped-slashes ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gw_by_mode(
    tmp_path_factory: pytest.TempPathFactory, up: H11Upstream
) -> Iterator[dict[str, GatewayProcess]]:
    procs = {
        m: _gateway(tmp_path_factory.mktemp(m), up, "--escaped-slashes", m) for m in ("unescape", "keep")
    }
    yield procs
    for p in procs.values():
        p.stop()


@pytest.mark.parametrize(
    ("mode", "target", "expected"),
    [
        ("unescape", b"/public/..%2Finternal/x", b"/internal/x"),
        ("unescape", b"/public/a%5Cb", b"/public/a/b"),
        ("keep", b"/public/..%2finternal/x", b"/public/..%2Finternal/x"),
    ],
)
def test_escaped_slashes_setting(
    gw_by_mode: dict[str, GatewayProcess], up: H11Upstream, mode: str, target: bytes, expected: bytes
) -> None:
    before = len(up.settle())
    answers, _ = talk(gw_by_mode[mode], b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    assert [a.status for a in answers] == [200]
    assert [s.target for s in new_requests(up, before)] == [expected]
