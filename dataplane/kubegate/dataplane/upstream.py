"""Upstream HTTP/1.1 connections and the keep-alive pool they live in.

This is the purpose-built upstream client that ``bench/`` chose over httpx and aiohttp (see
``bench/README.md``): an :class:`asyncio.Protocol` per connection with llhttp (``httptools``) parsing the
response, delivering head and body chunks straight to the exchange that owns the connection, with no
coroutine, future or stream object per request. Parsing stays in the maintained parser; this module only
moves bytes and decides connection reuse.

Pool decisions follow httpcore's lesson: they are plain state transitions (pop an idle connection, push
one back, drop closed or expired ones) with a few state predicates on the connection, and the clock is
injected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final, Protocol, cast

import httptools

from kubegate.dataplane.upstreamtls import PoolKey

MAX_RESPONSE_HEAD: Final = 64 * 1024  # an upstream response head larger than this is a protocol error (502)


class UpstreamSink(Protocol):
    """What a connection reports to the exchange that currently owns it."""

    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_flush(self) -> None: ...
    def upstream_done(self) -> None: ...
    def upstream_lost(self, exc: BaseException | None) -> None: ...
    def upstream_bad_response(self, exc: BaseException) -> None: ...
    def upstream_write_paused(self, paused: bool) -> None: ...
    def upstream_switched(
        self, headers: list[tuple[bytes, bytes]], transport: asyncio.Transport, rest: bytes
    ) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to one endpoint. Owned by at most one exchange at a time."""

    __slots__ = (
        "_headers",
        "_in_head",
        "_window",
        "closed",
        "head_only",
        "idle_since",
        "keep",
        "key",
        "message_done",
        "parser",
        "read_paused",
        "received",
        "reused",
        "sink",
        "switched",
        "transport",
        "upgrade",
        "write_paused",
    )

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: UpstreamSink | None = None
        self.closed = False
        self.reused = False
        self.head_only = False
        self.message_done = False
        self.received = False  # any response byte for the current request
        self.write_paused = False
        self.read_paused = False  # paused because the client is slow to read the response
        self.keep = True  # the last response allowed keep-alive
        self.idle_since = 0.0
        self.upgrade = False  # the current request asked for a WebSocket upgrade
        self.switched: list[tuple[bytes, bytes]] | None = None  # the head of the upstream's 101
        self._headers: list[tuple[bytes, bytes]] = []
        # The response head's size is bounded without a count per header: every byte read before the
        # final head is complete belongs to a head (interim ones included), so `_window` bounds it.
        self._in_head = False
        self._window = 0

    # --- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # an idle connection must not talk: the server is closing or misbehaving
            self.close()
            return
        self.received = True
        in_head = self._in_head
        if in_head:
            self._window += len(data)
        try:
            self.parser.feed_data(data)
            if in_head and self._in_head and self._window > MAX_RESPONSE_HEAD:
                # still inside the head (perhaps inside one header, which httptools would buffer unbounded)
                raise httptools.HttpParserError("upstream response head too large")
        except httptools.HttpParserUpgrade as exc:
            switched, transport = self.switched, self.transport
            self.sink = None
            if switched is None or transport is None:
                self.close()
                sink.upstream_bad_response(exc)
                return
            # The transport is the tunnel's from now on; this object never touches it again.
            self.closed = True
            self.transport = None
            offset = int(exc.args[0]) if exc.args else len(data)
            sink.upstream_switched(switched, transport, data[offset:])
            return
        except httptools.HttpParserError as exc:
            if not self.message_done:
                self.close()
                sink.upstream_bad_response(exc)
                return
        if self.sink is not sink:  # the exchange let go of this connection while it parsed (a retry)
            return
        sink.upstream_flush()
        if self.message_done:
            self.sink = None
            sink.upstream_done()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        sink, self.sink = self.sink, None
        if sink is not None and not self.message_done:
            sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.sink is not None:
            self.sink.upstream_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.sink is not None:
            self.sink.upstream_write_paused(False)

    # --- httptools callbacks ----------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers, self._headers = self._headers, []
        if self._window > MAX_RESPONSE_HEAD and head_size(headers) > MAX_RESPONSE_HEAD:
            raise ValueError("upstream response head too large")
        if status < 200 or status > 599:
            if status < 100 or status > 599:
                raise ValueError(f"upstream status {status} out of range")
            if status == 101:
                # Switching protocols is accepted only for a WebSocket upgrade that was asked for, and
                # must say what it switched to; llhttp then stops (HttpParserUpgrade) and data_received
                # hands the transport over.
                if not self.upgrade or not _switches_to_websocket(headers):
                    raise ValueError("unexpected 101 Switching Protocols")
                self.switched = headers
            return  # interim responses are not forwarded (the proxy answers 100-continue itself)
        self._in_head = False
        self.keep = self.parser.should_keep_alive()
        if self.sink is not None and not self.message_done:
            self.sink.upstream_head(status, headers)
        if self.head_only or status in (204, 304):
            # llhttp (via httptools) cannot be told the request was HEAD; finish here and use a fresh
            # parser for the next request on this connection.
            self.message_done = True
            self.head_only = True

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self.message_done:
            self.sink.upstream_body(body)

    def on_message_complete(self) -> None:
        if not self._in_head:  # the final response (an interim one leaves the head unfinished)
            self.message_done = True

    # --- use by the pool and exchanges ------------------------------------------------------------------
    def start(self, sink: UpstreamSink, payload: bytes, *, head_only: bool, upgrade: bool = False) -> None:
        """Attach to an exchange and send the request head (and any body bytes already available)."""
        self.sink = sink
        self.head_only = head_only
        self.upgrade = upgrade
        self.message_done = False
        self.received = False
        self._in_head = True
        self._window = 0
        assert self.transport is not None
        self.transport.write(payload)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def reset_for_reuse(self) -> bool:
        """After a finished response: True if the connection may go back to the pool."""
        if self.closed or not self.keep:
            return False
        # The response may have ended while the client was slow (reading paused for back-pressure):
        # an idle connection must read, to notice the upstream closing it and for its next response.
        self.resume_reading()
        if self.head_only:
            self.parser = httptools.HttpResponseParser(self)
            self.head_only = False
        self.message_done = False
        return True

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.sink = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.sink = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("active" if self.sink is not None else "idle")
        return f"<UpstreamConnection {self.key[0]}:{self.key[1]} {state}>"


def head_size(headers: list[tuple[bytes, bytes]]) -> int:
    """The size of a head's header fields as the limits count it (name, value and 4 bytes of framing)."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


def _switches_to_websocket(headers: list[tuple[bytes, bytes]]) -> bool:
    upgrade = connection = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"upgrade":
            upgrade = upgrade or value.strip().lower() == b"websocket"
        elif lname == b"connection":
            connection = connection or b"upgrade" in (t.strip().lower() for t in value.split(b","))
    return upgrade and connection


class UpstreamPool:
    """Idle keep-alive connections per endpoint, most recently used first."""

    def __init__(
        self,
        *,
        max_idle_per_endpoint: int = 256,
        idle_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self.max_idle_per_endpoint = max_idle_per_endpoint
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._clock = clock

    def acquire_idle(self, key: PoolKey) -> UpstreamConnection | None:
        """The most recently used idle connection to ``key``; idle expiry is the sweeper's job."""
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect(self, key: PoolKey) -> UpstreamConnection:
        """A new connection to ``key``'s endpoint, with TLS when the key says so (the handshake is part of
        the connect timeout; a failed verification raises ``ssl.SSLError``)."""
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(key)
        if len(key) == 3:
            tls = key[2]
            connecting = loop.create_connection(
                lambda: conn,
                key[0],
                key[1],
                ssl=tls.context,
                server_hostname=tls.server_name,
                ssl_handshake_timeout=self.connect_timeout,
            )
        else:
            connecting = loop.create_connection(lambda: conn, key[0], key[1])
        await asyncio.wait_for(connecting, self.connect_timeout)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if not conn.reset_for_reuse():
            conn.close()
            return
        stack = self._idle.setdefault(conn.key, [])
        if len(stack) >= self.max_idle_per_endpoint:
            conn.close()
            return
        conn.idle_since = self._clock()
        stack.append(conn)

    def sweep(self) -> int:
        """Close idle connections past the idle timeout; returns how many were closed."""
        deadline = self._clock() - self.idle_timeout
        closed = 0
        for key, stack in list(self._idle.items()):
            keep = []
            for c in stack:
                if c.closed:
                    continue
                if c.idle_since < deadline:
                    c.close()
                    closed += 1
                else:
                    keep.append(c)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def close_all(self) -> None:
        for stack in self._idle.values():
            for c in stack:
                c.close()
        self._idle.clear()

    def idle_count(self) -> int:
        return sum(len(s) for s in self._idle.values())

    def __repr__(self) -> str:
        return f"<UpstreamPool {len(self._idle)} endpoints, {self.idle_count()} idle>"
