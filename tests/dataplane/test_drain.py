"""SIGTERM on a real ``kubegate serve``: readiness, keep-alive connections and requests in flight.

Aspects: readiness turns 503 as the drain starts; a keep-alive connection that was idle when the drain
began still gets its next request answered (with ``Connection: close``) instead of being cut off (the
``--drain-linger``), and so does one whose response promised keep-alive before the drain and ended during
it; a request in flight finishes; the process exits 0 once every connection is done.
``bench/drain_bench.py`` measures the same under load (32 and 64 clients: 0 requests lost).
"""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

import httpx

from tests.gateway import GatewayProcess, route, table
from tests.upstreams import UpstreamServer, wait_for


def _get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    return int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])


def test_an_idle_keepalive_connection_is_answered_during_the_drain(tmp_path: Path) -> None:
    up, slow = UpstreamServer("u").start(), UpstreamServer("slow").start()
    gw = GatewayProcess(tmp_path, extra=["--drain-linger", "30", "--drain-timeout", "30"])
    try:
        assert (
            gw.push(table(route("r", up.url, path="/x"), route("s", slow.url, path="/busy"))).status_code
            == 200
        )
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as idle:
            first = _get(idle)
            assert first.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in first.lower()
            slow.hold.clear()  # a request in flight keeps the drain going while we look at readiness
            busy: list[httpx.Response] = []
            t = threading.Thread(target=lambda: busy.append(httpx.get(gw.url + "/busy", timeout=20)))
            t.start()
            wait_for(lambda: slow.held == 1)
            gw.signal(signal.SIGTERM)
            wait_for(lambda: httpx.get(gw.admin + "/ready", timeout=2).status_code == 503)
            second = _get(idle)  # the connection was idle when the drain began: still answered
            assert second.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close\r\n" in second.lower()
            assert idle.recv(1) == b""  # ... and then closed
            slow.hold.set()
            t.join(20)
        assert [r.status_code for r in busy] == [200]
        assert gw.proc.wait(20) == 0
    finally:
        slow.hold.set()
        gw.stop()
        up.stop()
        slow.stop()


def test_a_response_that_promised_keep_alive_before_the_drain_keeps_its_connection(tmp_path: Path) -> None:
    up = UpstreamServer("u").start()
    gw = GatewayProcess(tmp_path, extra=["--drain-linger", "30", "--drain-timeout", "30"])
    try:
        assert gw.push(table(route("r", up.url))).status_code == 200
        up.body_hold.clear()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"GET /held-body HTTP/1.1\r\nHost: a\r\n\r\n")
            data = b""
            while b"first" not in data:  # the head went out before the drain: it promises keep-alive
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            assert b"connection: close" not in data.lower()
            gw.signal(signal.SIGTERM)
            wait_for(lambda: httpx.get(gw.admin + "/ready", timeout=2).status_code == 503)
            up.body_hold.set()  # the response ends during the drain
            while not data.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            second = _get(sock)  # sent on the connection that response kept: answered, then closed
            assert second.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close\r\n" in second.lower()
            assert sock.recv(1) == b""
        assert gw.proc.wait(20) == 0
    finally:
        up.body_hold.set()
        gw.stop()
        up.stop()
