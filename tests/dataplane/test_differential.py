"""Differential framing test: what the gateway forwards, a strict parser reads as the client's one request.

A corpus of request messages (framing, versions, headers, targets, methods, upgrades) is sent, one per
connection, to a real ``kubegate serve`` in front of :class:`tests.h11upstream.H11Upstream`. h11, a
maintained pure-Python HTTP/1.1 implementation, is the referee twice: it reads the original message (what a
careful server would make of it) and it reads what the gateway sent upstream. For every case:

* if the gateway forwarded anything, the upstream read exactly one complete request, and the referee accepted
  the original with the same method, the same target (in the gateway's normal form) and the same body;
* if the gateway refused the message, the client got a 4xx/5xx (or a closed connection), and the upstream
  read nothing, or (for a body found malformed while it was being streamed) at most one request that
  never completed: the gateway aborted that upstream connection.

Add every new hostile message here; the cases of the smuggling issue are in the corpus already.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import h11
import pytest

from kubegate.dataplane.pathnorm import BadPath, normalize_path
from tests.gateway import GatewayProcess, route, table
from tests.h11upstream import H11Upstream

H = b"Host: x\r\n"
CORPUS: dict[str, bytes] = {
    # --- framing
    "get": b"GET /public/a HTTP/1.1\r\n" + H + b"\r\n",
    "cl": b"POST /public/a HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    "cl-zero": b"POST /public/a HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n",
    "cl-leading-zeros": b"POST /public/a HTTP/1.1\r\n" + H + b"Content-Length: 0005\r\n\r\nhello",
    "cl-trailing-space": b"POST /public/a HTTP/1.1\r\n" + H + b"Content-Length: 5  \r\n\r\nhello",
    "cl-plus": b"POST /public/a HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello",
    "cl-negative": b"POST /public/a HTTP/1.1\r\n" + H + b"Content-Length: -5\r\n\r\nhello",
    "cl-hex": b"POST /public/a HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello",
    "cl-list": b"POST /public/a HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello",
    "cl-twice-same": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl-twice-different": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-space-before-colon": b"POST /public/a HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\nhello",
    "cl-connection-named": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Content-Length: 43\r\nConnection: Content-Length\r\n\r\n"
    + b"GET /admin/delete-all HTTP/1.1\r\nHost: x\r\n\r\n",
    "chunked": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "chunked-ext": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n",
    "chunked-trailer": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "chunked-upper": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "chunked-connection-named": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "chunked-size-overflow": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff5\r\nhello\r\n0\r\n\r\n",
    "chunked-size-0x": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunked-bad-crlf": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "cl-and-te": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "te-chunked-identity": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-gzip-chunked": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-gzip": b"POST /public/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nhello",
    "te-twice": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-vertical-tab": b"POST /public/a HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "te-http10": b"POST /public/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "bare-lf": b"GET /public/a HTTP/1.1\n" + b"Host: x\n\n",
    "bare-cr": b"GET /public/a HTTP/1.1\r" + b"Host: x\r\r",
    "obs-fold": b"GET /public/a HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n",
    "nul-in-header": b"GET /public/a HTTP/1.1\r\n" + H + b"X-Nul: a\x00b\r\n\r\n",
    "empty-header-name": b"GET /public/a HTTP/1.1\r\n" + H + b": nothing\r\n\r\n",
    # --- versions
    "http10": b"GET /public/a HTTP/1.0\r\n\r\n",
    "http10-host-keepalive": b"GET /public/a HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n",
    "http09-line": b"GET /public/a HTTP/0.9\r\n\r\n",
    "http20": b"GET /public/a HTTP/2.0\r\n" + H + b"\r\n",
    "http12": b"GET /public/a HTTP/1.2\r\n" + H + b"\r\n",
    "http-lower": b"GET /public/a http/1.1\r\n" + H + b"\r\n",
    # --- Host
    "host-missing": b"GET /public/a HTTP/1.1\r\n\r\n",
    "host-twice": b"GET /public/a HTTP/1.1\r\n" + H + H + b"\r\n",
    "host-space": b"GET /public/a HTTP/1.1\r\nHost: x y\r\n\r\n",
    "host-slash": b"GET /public/a HTTP/1.1\r\nHost: x/internal\r\n\r\n",
    "host-at": b"GET /public/a HTTP/1.1\r\nHost: evil@x\r\n\r\n",
    "host-port": b"GET /public/a HTTP/1.1\r\nHost: x:8080\r\n\r\n",
    "host-ipv6": b"GET /public/a HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    "host-empty": b"GET /public/a HTTP/1.1\r\nHost:\r\n\r\n",
    # --- targets
    "absolute": b"GET http://x/public/a?q=1 HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-userinfo": b"GET http://u:p@x/public/a HTTP/1.1\r\n" + H + b"\r\n",
    "fragment": b"GET /public/x#/../../internal/frag HTTP/1.1\r\n" + H + b"\r\n",
    "fragment-absolute": b"GET http://x/public/x#/../../internal/frag HTTP/1.1\r\n" + H + b"\r\n",
    "query-hash": b"GET /public/a?x=1#frag HTTP/1.1\r\n" + H + b"\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    "authority-form": b"GET x:443 HTTP/1.1\r\n" + H + b"\r\n",
    "dot-segments": b"GET /public/../public/./a HTTP/1.1\r\n" + H + b"\r\n",
    "climb": b"GET /public/../../a HTTP/1.1\r\n" + H + b"\r\n",
    "encoded-slash": b"GET /public/..%2Finternal/x HTTP/1.1\r\n" + H + b"\r\n",
    "encoded-backslash": b"GET /public/..%5Cinternal/x HTTP/1.1\r\n" + H + b"\r\n",
    "raw-space-in-target": b"GET /public/a b HTTP/1.1\r\n" + H + b"\r\n",
    # --- methods
    "connect": b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\nGET /public/after HTTP/1.1\r\n" + H + b"\r\n",
    "lowercase-method": b"get /public/a HTTP/1.1\r\n" + H + b"\r\n",
    "unknown-method": b"FOO /public/a HTTP/1.1\r\n" + H + b"\r\n",
    "method-with-slash": b"G/T /public/a HTTP/1.1\r\n" + H + b"\r\n",
    "head": b"HEAD /public/a HTTP/1.1\r\n" + H + b"\r\n",
    "expect-continue": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    "expect-unknown": b"POST /public/a HTTP/1.1\r\n"
    + H
    + b"Expect: 200-ok\r\nContent-Length: 5\r\n\r\nhello",
    # --- upgrades
    "h2c-body": b"POST /public/up HTTP/1.1\r\n"
    + H
    + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    + b"Content-Length: 44\r\n\r\nGET /internal/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    "h2c-chunked": b"POST /public/up HTTP/1.1\r\n"
    + H
    + b"Connection: Upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "upgrade-unknown": b"GET /public/up HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: foo\r\n\r\n",
    "websocket-post-body": b"POST /public/ws HTTP/1.1\r\n"
    + H
    + b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
    "upgrade-http10": b"GET /public/up HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "close-then-more": b"GET /public/a HTTP/1.1\r\n"
    + H
    + b"Connection: close\r\n\r\nGET /internal/next HTTP/1.1\r\n"
    + H
    + b"\r\n",
}


@dataclass
class Referee:
    """What h11 makes of the original message: its first request, or why it refused it."""

    method: bytes = b""
    target: bytes = b""
    body: bytes = b""
    error: str = ""


def referee(data: bytes) -> Referee:
    h = h11.Connection(h11.SERVER)
    h.receive_data(data)
    h.receive_data(b"")
    out = Referee()
    try:
        while True:
            event = h.next_event()
            if isinstance(event, h11.Request):
                out.method, out.target = event.method, event.target
            elif isinstance(event, h11.Data):
                out.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return out
            else:
                return Referee(error=f"incomplete: {event!r}")
    except h11.RemoteProtocolError as exc:
        return Referee(error=str(exc))


def normal_target(target: bytes) -> bytes | None:
    """The origin-form target the gateway should send for ``target`` (None when it must refuse it)."""
    if b"#" in target:
        return None
    if target.lower().startswith(b"http://"):
        rest = target[7:]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    path, sep, query = target.partition(b"?")
    try:
        return normalize_path(path.decode("latin-1")).encode("latin-1") + sep + query
    except BadPath:
        return None


@pytest.fixture(scope="module")
def up() -> Iterator[H11Upstream]:
    u = H11Upstream()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, up: H11Upstream) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(tmp_path_factory.mktemp("gw"))
    resp = proc.push(
        table(route("public", up.url, path="/public"), route("internal", up.url, path="/internal"))
    )
    assert resp.status_code == 200, resp.text
    yield proc
    proc.stop()


def first_status(gw: GatewayProcess, data: bytes) -> int | None:
    """The status of the gateway's first answer (None if it closed without one)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(data)
        got = b""
        while b"\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        while got.startswith(b"HTTP/1.1 100 "):  # an interim 100 Continue precedes the answer
            end = got.find(b"\r\n\r\n")
            while end < 0 or b"\r\n" not in got[end + 4 :]:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                got += chunk
                end = got.find(b"\r\n\r\n")
            got = got[end + 4 :]
    return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else None


@pytest.mark.parametrize("name", list(CORPUS))
def test_forwarded_exactly_as_a_strict_parser_reads_it(
    gw: GatewayProcess, up: H11Upstream, name: str
) -> None:
    data = CORPUS[name]
    before = len(up.settle())
    status = first_status(gw, data)
    forwarded = up.settle()[before:]
    ref = referee(data)
    if status is None or status >= 400:
        assert len(forwarded) <= 1 and not any(s.complete for s in forwarded), (
            f"{name}: {status}: {forwarded}"
        )
        return
    assert forwarded, f"{name}: answered {status} without forwarding anything"
    assert len(forwarded) == 1, f"{name}: the upstream read {len(forwarded)} requests: {forwarded}"
    seen = forwarded[0]
    assert seen.complete and not seen.error, f"{name}: upstream could not read it: {seen.error}"
    assert not ref.error, f"{name}: forwarded although a strict parser refuses it: {ref.error}"
    assert (seen.method, seen.target, seen.body) == (ref.method, normal_target(ref.target), ref.body), name


def test_the_corpus_has_cases_both_ways(gw: GatewayProcess, up: H11Upstream) -> None:
    """The referee accepts some of the corpus and refuses some (a corpus of one kind proves little)."""
    verdicts = {name: not referee(data).error for name, data in CORPUS.items()}
    assert 10 < sum(verdicts.values()) < len(CORPUS) - 10
