"""Small pieces the standalone load scripts share: free ports, waiting for a listener, a slow upstream.

The scripts in ``bench/`` run as ``python bench/<name>.py``, so this module is importable as ``benchlib``.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    """Until something accepts connections on 127.0.0.1:``port`` (TimeoutError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class _Threading(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def slow_upstream(delay: float) -> tuple[http.server.HTTPServer, int]:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 answering every GET with 200 "ok" after ``delay`` seconds,
    serving from a daemon thread; returns it (``shutdown()`` it when done) and its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(delay)
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = _Threading(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])
