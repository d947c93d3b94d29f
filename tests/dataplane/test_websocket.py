"""WebSocket through a real ``kubegate serve``, to a real WebSocket server (the ``websockets`` package).

Aspects: the upgrade is forwarded and, after the upstream's 101, bytes flow both ways (text, a large binary
message, a burst that fills the buffers so back-pressure has to work); frames a client sends right behind
its upgrade request reach the upstream; an upstream that refuses the upgrade or does not speak WebSocket
answers normally and the connection then closes; an idle tunnel is closed after ``--tunnel-idle-timeout``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response
from websockets.sync.client import connect
from websockets.sync.server import Server, ServerConnection, serve

from tests.gateway import GatewayProcess, route, table
from tests.upstreams import UpstreamServer


class WsUpstream:
    """Echoes every message; refuses the upgrade for paths under /ws/refuse with 403."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.received: list[str | bytes] = []
        self.server: Server = serve(self._handle, "127.0.0.1", 0, process_request=self._check, max_size=None)
        self.port = int(self.server.socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _check(self, conn: ServerConnection, request: Any) -> Response | None:
        self.headers.append({k.lower(): v for k, v in request.headers.raw_items()})
        if request.path.startswith("/ws/refuse"):
            return conn.respond(403, "not you\n")
        return None

    def _handle(self, conn: ServerConnection) -> None:
        for message in conn:
            self.received.append(message)
            conn.send(message)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def ws_up() -> Iterator[WsUpstream]:
    u = WsUpstream()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def plain_up() -> Iterator[UpstreamServer]:
    u = UpstreamServer("plain").start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, ws_up: WsUpstream, plain_up: UpstreamServer
) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(tmp_path_factory.mktemp("gw"), extra=["--tunnel-idle-timeout", "2"])
    resp = proc.push(table(route("ws", ws_up.url, path="/ws"), route("plain", plain_up.url, path="/plain")))
    assert resp.status_code == 200, resp.text
    yield proc
    proc.stop()


def ws_url(gw: GatewayProcess, path: str) -> str:
    return f"ws://127.0.0.1:{gw.port}{path}"


def test_messages_both_ways(gw: GatewayProcess, ws_up: WsUpstream) -> None:
    big = os.urandom(1024 * 1024)
    with connect(ws_url(gw, "/ws/echo"), max_size=None, open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(big)
        assert ws.recv(timeout=10) == big
    seen = ws_up.headers[-1]
    assert seen["x-forwarded-for"] == "127.0.0.1" and seen["upgrade"] == "websocket"
    assert "x-request-id" in seen


def test_a_burst_larger_than_the_buffers_arrives_whole_and_in_order(gw: GatewayProcess) -> None:
    """64 messages of 256 KiB sent before reading any echo: 16 MiB in flight, so both directions pause."""
    messages = [bytes([i]) * (256 * 1024) for i in range(64)]
    with connect(ws_url(gw, "/ws/burst"), max_size=None, open_timeout=5) as ws:
        sender = threading.Thread(target=lambda: [ws.send(m) for m in messages])
        sender.start()
        echoed = [ws.recv(timeout=20) for _ in messages]
        sender.join(20)
    assert echoed == messages


def _frame(text: bytes) -> bytes:
    """A masked text frame, as a client sends it (RFC 6455 §5.2), for payloads under 126 bytes."""
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


def test_frames_sent_right_behind_the_upgrade_request_reach_the_upstream(
    gw: GatewayProcess, ws_up: WsUpstream
) -> None:
    head = (
        b"GET /ws/early HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head + _frame(b"early bird"))  # one write: the frame arrives with the head
        answer = b""
        while b"early bird" not in answer:
            chunk = s.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    assert "early bird" in ws_up.received


def test_a_refused_upgrade_is_answered_and_the_connection_closes(gw: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(gw, "/ws/refuse"), open_timeout=5)
    assert info.value.response.status_code == 403


def test_an_upstream_without_websocket_answers_and_the_connection_closes(gw: GatewayProcess) -> None:
    head = (
        b"GET /plain/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head + _frame(b"not a request"))
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close\r\n" in answer
    assert answer.count(b"HTTP/1.1") == 1


def test_an_idle_tunnel_is_closed(gw: GatewayProcess) -> None:
    with connect(ws_url(gw, "/ws/idle"), open_timeout=5) as ws:
        ws.send("once")
        assert ws.recv(timeout=5) == "once"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)  # hang guard only: the gateway closes it after 2 s of silence


def test_websocket_needs_no_route_of_its_own(tmp_path: Path) -> None:
    """Upgrades are routed like any request: no route, 404 (and no tunnel)."""
    proc = GatewayProcess(tmp_path)
    try:
        assert proc.push(table(route("other", "http://127.0.0.1:1", path="/other"))).status_code == 200
        with pytest.raises(InvalidStatus) as info:
            connect(ws_url(proc, "/ws/x"), open_timeout=5)
        assert info.value.response.status_code == 404
    finally:
        proc.stop()
