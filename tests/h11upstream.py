"""An upstream that parses what the gateway sends with h11, a strict HTTP/1.1 parser, and records it.

Why: the framing tests must see requests the way a careful backend would, including the ones a smuggled
body would turn into (a second request on a pooled connection, or a request that never ends). Every
request is recorded with its connection, method, target, raw headers and body; a message h11 refuses is
recorded as an error. The answer is 200 with a small body, unless a scripted raw response is registered for
the request's target (for the response-side tests: the bytes are written as they are).
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import threading
import time
from dataclasses import dataclass, field

import h11


@dataclass
class Seen:
    conn: int
    method: bytes = b""
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False
    error: str = ""

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


@dataclass
class _Conn:
    sock: socket.socket
    id: int
    received: int = 0
    thread: threading.Thread | None = None


class H11Upstream:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[Seen] = []
        self.scripted: dict[bytes, bytes] = {}
        self._ids = itertools.count(1)
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            c = _Conn(conn, next(self._ids))
            c.thread = threading.Thread(target=self._serve, args=(c,), daemon=True)
            with self._lock:
                self._conns.append(c)
            c.thread.start()

    def _serve(self, c: _Conn) -> None:
        """One request, its answer with ``connection: close``, then every byte until the gateway closes.

        Closing after each answer makes the record complete and deterministic: the gateway sees EOF and
        closes its side, so when this thread ends, whatever the gateway sent on the connection (a smuggled
        second request included) has been read and parsed.
        """
        sock = c.sock
        with sock:
            h = h11.Connection(h11.SERVER)
            seen = self._one(c, h, read_more=True)
            if seen is None or not seen.complete:
                return
            self._respond(sock, seen)
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
            rest = h.trailing_data[0]
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                c.received += len(data)
                rest += data
            while rest:  # anything more is a request the gateway should never have sent
                h = h11.Connection(h11.SERVER)
                h.receive_data(rest)
                h.receive_data(b"")
                extra = self._one(c, h, read_more=False)
                if extra is None or not extra.complete:
                    break
                rest = h.trailing_data[0]

    def _one(self, c: _Conn, h: h11.Connection, *, read_more: bool) -> Seen | None:
        conn_id = c.id
        current: Seen | None = None
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                return self._record(current or Seen(conn_id), error=str(exc))
            if event is h11.NEED_DATA:
                data = b""
                if read_more:
                    with contextlib.suppress(OSError):
                        data = c.sock.recv(65536)
                    c.received += len(data)
                h.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                current = Seen(conn_id, event.method, event.target, list(event.headers.raw_items()))
            elif isinstance(event, h11.Data) and current is not None:
                current.body += event.data
            elif isinstance(event, h11.EndOfMessage) and current is not None:
                current.complete = True
                return self._record(current)
            else:  # ConnectionClosed before a request (or in the middle of one)
                return self._record(current, error="connection closed mid-request") if current else None

    def _record(self, seen: Seen, error: str = "") -> Seen:
        seen.error = error
        with self._lock:
            self.seen.append(seen)
        return seen

    def _respond(self, sock: socket.socket, seen: Seen) -> None:
        raw = self.scripted.get(seen.target)
        if raw is None:
            body = b"ok " + seen.target
            raw = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        with contextlib.suppress(OSError):
            sock.sendall(raw)

    def settle(self, timeout: float = 10.0) -> list[Seen]:
        """Wait until everything the gateway has sent so far is read; return all records, in order.

        Settled means: no connection waits to be accepted, and every connection has either ended or has
        received nothing and has nothing to read (a fresh connection the gateway keeps idle in its pool).
        On loopback, bytes the gateway sent before its client got an answer are already readable here.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                conns = list(self._conns)
            busy = bool(select.select([self.sock], [], [], 0)[0])
            for c in conns:
                if busy:
                    break
                if c.thread is not None and c.thread.is_alive():
                    busy = c.received > 0 or bool(select.select([c.sock], [], [], 0)[0])
            if not busy:
                return self.requests()
            if time.monotonic() > deadline:
                raise TimeoutError("an upstream connection is still open: the gateway kept it")
            time.sleep(0.005)

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def stop(self) -> None:
        self._stopped = True
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
