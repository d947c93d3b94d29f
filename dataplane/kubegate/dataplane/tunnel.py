"""Byte tunnels between a client and an upstream after ``101 Switching Protocols`` (WebSocket).

Why a module of its own: once the upstream has switched protocols, neither side speaks HTTP any more, so
neither HTTP parser may see another byte. Both transports are handed to a :class:`Tunnel` (with
``transport.set_protocol``), which only copies bytes, with back-pressure both ways (a side whose write buffer
fills stops the other side's reads) and an idle deadline that the gateway's once-a-second sweeper enforces.
The proxy decides *whether* to tunnel (only ``Upgrade: websocket`` on a body-less HTTP/1.1 GET that the
upstream accepted with 101); this module only moves bytes and closes both sides together.

End of stream: when one side closes or sends EOF, both are closed (after what was already written to the
other side is flushed). WebSocket ends with an in-band close handshake, so nothing is lost by not keeping
half-closed connections open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class _End(asyncio.Protocol):
    """One side of a tunnel: what it reads is written to the other side."""

    __slots__ = ("peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: _End | None = None

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or self.tunnel.closed:
            return
        self.tunnel.active_at = self.tunnel.clock()
        self.tunnel.bytes += len(data)
        peer.transport.write(data)

    def eof_received(self) -> bool | None:
        self.tunnel.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()

    def pause_writing(self) -> None:  # our write buffer is full: stop reading from the other side
        if self.peer is not None and not self.tunnel.closed:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.tunnel.closed:
            self.peer.transport.resume_reading()


class Tunnel:
    """Copies bytes both ways between two transports until either side ends or it is idle too long."""

    __slots__ = ("active_at", "bytes", "client", "clock", "closed", "on_closed", "upstream")

    def __init__(
        self,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        clock: Callable[[], float],
        on_closed: Callable[[], None],
    ) -> None:
        self.clock = clock
        self.active_at = clock()
        self.bytes = 0
        self.closed = False
        self.on_closed = on_closed
        self.client = _End(self, client)
        self.upstream = _End(self, upstream)
        self.client.peer, self.upstream.peer = self.upstream, self.client

    def start(self, to_upstream: bytes, to_client: bytes) -> None:
        """Take over both transports; the bytes each side sent after its HTTP head go to the other."""
        for end in (self.client, self.upstream):
            end.transport.set_protocol(end)
        if to_upstream:
            self.upstream.transport.write(to_upstream)
        if to_client:
            self.client.transport.write(to_client)
        # Reading may have been paused while the upgrade was pending (client) or for back-pressure.
        for end in (self.client, self.upstream):
            if not end.transport.is_closing():
                end.transport.resume_reading()

    def idle_for(self, now: float) -> float:
        return now - self.active_at

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.client.transport.close()
        self.upstream.transport.close()
        self.on_closed()
