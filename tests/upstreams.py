"""Real upstream HTTP servers on 127.0.0.1 (or ``host``) for the proxy tests, well-behaved and misbehaving.

A threaded socket server that speaks just enough HTTP/1.1 (keep-alive, Content-Length and chunked request
bodies) and whose behaviour is chosen by the request path:

- ``/echo...``          200 with a JSON description of the request (method, path, headers, body size/hash)
- ``/status/N``         status N with a short body
- ``/chunked/N``        a chunked response of N chunks
- ``/close-delimited``  a body ended by closing the connection (no Content-Length, no chunked)
- ``/big/N``            N bytes of body, written in 64 KiB pieces (for streaming)
- ``/slow/MS``          answers after MS milliseconds
- ``/stall``            reads the request and never answers
- ``/reset``            closes the connection abruptly (RST) before answering
- ``/malformed``        answers with bytes that are not HTTP
- ``/huge-headers``     a response head of about 200 KiB
- ``/close``            answers with ``Connection: close`` and closes
- ``/cacheable...``     200 (or ``status=N``) whose headers come from the query (``h=Name:value``, repeatable)
                        and whose JSON body says how many /cacheable answers the server has sent
                        (``served``), padded to ``size=N`` bytes: for the response-cache tests
- ``/hop-by-hop``       200 with hop-by-hop headers (``Connection: x-internal`` naming ``X-Internal``,
                        ``Keep-Alive``, ``Proxy-Authenticate``, ``Trailer``) and end-to-end ones
                        (``X-End-To-End``, ``Cache-Control``) that a proxy must keep

``forced_status`` (set by a test) makes the server answer every request with that status instead (but
``/healthz``, answered with ``health_status``), and
``hold`` (an Event a test clears) makes it wait before answering: a failing or a slow endpoint on command.
``idle_close_ms`` (set by a test) makes it treat a keep-alive connection that stayed idle longer than that
as timed out: the next request on it is read and the connection closed without an answer (as when a
server's idle timer fires while that request is on its way; ``stale_closed`` counts them).

Every request is recorded twice: in ``requests`` as (method, target, headers as a dict, body size), and in
``header_lines`` as (target, every header line in order) where a header sent twice stays twice (a dict
keeps only the last one and would hide a duplicate). The ``/echo`` answer carries both, as ``headers`` and
``headerLines`` (a request dropped by ``idle_close_ms`` is in neither). ``big_written`` counts the body
bytes of the current ``/big/N`` answer written so far.
"""

from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from typing import Any


def _read_head(f: Any) -> tuple[str, str, list[tuple[str, str]]] | None:
    line = f.readline(65537)
    if not line:
        return None
    method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        h = f.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return method, target, headers


def _read_body(f: Any, headers: list[tuple[str, str]]) -> bytes:
    hd = dict(headers)
    if hd.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(f.readline().split(b";")[0].strip(), 16)
            if size == 0:
                f.readline()
                break
            parts.append(f.read(size))
            f.readline()
        return b"".join(parts)
    n = int(hd.get("content-length", "0") or 0)
    return f.read(n) if n else b""


class _Handler(socketserver.StreamRequestHandler):
    server: UpstreamServer

    def handle(self) -> None:
        self.server.connections += 1
        answered: float | None = None  # when the last answer on this connection was sent
        while True:
            try:
                head = _read_head(self.rfile)
            except (OSError, ValueError):
                return
            if head is None:
                return
            method, target, headers = head
            body = _read_body(self.rfile, headers)
            idle_close = self.server.idle_close_ms
            if (
                idle_close is not None
                and answered is not None
                and time.monotonic() - answered > idle_close / 1000
            ):
                self.server.stale_closed += 1
                return  # timed out while idle: this request is dropped with the connection
            self.server.requests.append((method, target, dict(headers), len(body)))
            self.server.header_lines.append((target, list(headers)))
            if not self.respond(method, target, headers, body):
                return
            answered = time.monotonic()

    def _send(
        self, status: int, body: bytes, extra: list[tuple[str, str]] = (), head_only: bool = False
    ) -> None:  # type: ignore[assignment]
        lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", "content-type: application/json"]
        lines += [f"{k}: {v}" for k, v in extra]
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body))

    def respond(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bool:
        path, _, query = target.partition("?")
        name = self.server.name
        if not self.server.hold.is_set():
            self.server.held += 1
            self.server.hold.wait(30)
        forced = self.server.forced_status
        if path == "/healthz":
            self._send(self.server.health_status, b"{}", head_only=method == "HEAD")
        elif forced is not None:
            self._send(forced, b'{"forced": true}', [("x-backend", name)], head_only=method == "HEAD")
        elif path.startswith("/status/"):
            self._send(int(path.split("/")[2]), b'{"status": true}', head_only=method == "HEAD")
        elif path == "/held-body":  # the head and a first chunk, then the rest once body_hold is set
            self.wfile.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            self.wfile.flush()
            self.server.body_held += 1
            self.server.body_hold.wait(30)
            self.wfile.write(b"4\r\nlast\r\n0\r\n\r\n")
        elif path.startswith("/chunked/"):
            n = int(path.split("/")[2])
            self.wfile.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(n):
                piece = f"chunk-{i};".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/close-delimited":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of this until close")
            return False
        elif path.startswith("/big/"):
            n = int(path.split("/")[2])
            self.server.big_written = 0
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
            piece = b"x" * 65536
            left = n
            while left > 0:
                self.wfile.write(piece[: min(left, len(piece))])
                left -= min(left, len(piece))
                self.server.big_written = n - left
        elif path.startswith("/slow/"):
            time.sleep(int(path.split("/")[2]) / 1000)
            self._send(200, b'{"slow": true}')
        elif path == "/stall":
            self.server.stalled.wait(30)
            return False
        elif path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return False
        elif path == "/malformed":
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            return False
        elif path == "/huge-headers":
            extra = [(f"x-filler-{i}", "y" * 1000) for i in range(200)]
            self._send(200, b"{}", extra)
        elif path == "/close":
            self._send(200, b'{"closing": true}', [("connection", "close")])
            return False
        elif path.startswith("/cacheable"):  # headers from the query: h=Name:value (repeatable), size=N
            params = urllib.parse.parse_qs(query, keep_blank_values=True)
            self.server.cache_served += 1
            extra = [tuple(h.split(":", 1)) for h in params.get("h", [])]
            size = int(params.get("size", ["0"])[0])
            payload = json.dumps({"served": self.server.cache_served, "path": path, "query": query})
            body = payload.encode() + b" " * max(0, size - len(payload))
            status = int(params.get("status", ["200"])[0])
            self._send(status, body, [("x-backend", name), *extra], head_only=method == "HEAD")  # type: ignore[list-item]
        elif path == "/hop-by-hop":
            hop = [
                ("connection", "x-internal"),
                ("x-internal", "secret"),
                ("keep-alive", "timeout=5, max=100"),
                ("proxy-authenticate", 'Basic realm="upstream"'),
                ("trailer", "x-checksum"),
            ]
            self._send(200, b"{}", [*hop, ("x-end-to-end", "kept"), ("cache-control", "no-store")])
        else:
            payload = {
                "backend": name,
                "method": method,
                "path": path,
                "query": query,
                "headers": dict(headers),
                "headerLines": headers,
                "bodyBytes": len(body),
                "bodySha256": hashlib.sha256(body).hexdigest(),
            }
            self._send(200, json.dumps(payload).encode(), [("x-backend", name)], head_only=method == "HEAD")
        return True


class UpstreamServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str = "up", *, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.name = name
        self.host = host
        self.requests: list[tuple[str, str, dict[str, str], int]] = []
        # (target, every header line in order, duplicates kept): what ``requests``' dict collapses
        self.header_lines: list[tuple[str, list[tuple[str, str]]]] = []
        self.connections = 0
        self.idle_close_ms: int | None = None
        self.stale_closed = 0
        self.big_written = 0
        self.stalled = threading.Event()
        self.forced_status: int | None = None
        self.health_status = 200  # the answer to /healthz
        self.hold = threading.Event()
        self.hold.set()
        self.body_hold = threading.Event()  # /held-body waits for it between its two chunks
        self.body_hold.set()
        self.body_held = 0
        self.held = 0
        self.cache_served = 0  # answers of /cacheable so far (each one's body says its number)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # misbehaving on purpose (resets, stalls) raises in handlers; that is not a test failure

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> UpstreamServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stalled.set()
        self.hold.set()
        self.body_hold.set()
        self.shutdown()
        self.server_close()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy (for processes and files outside the test's control)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)
