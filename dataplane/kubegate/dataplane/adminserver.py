"""The admin port's HTTP server: its own thread and event loop, the traffic port's head limits and timeouts.

The admin API (:mod:`kubegate.dataplane.admin`) used to share the traffic port's event loop, so whatever
an admin request cost — parsing a 100 MB header, rendering ``/routes`` for 10,000 routes, validating a
pushed table — was a stall of every proxied request. Here it runs as a uvicorn server (h11) on an event
loop of its own, in a thread of its own; the traffic loop only ever runs the one-line swap of a new
snapshot (see ``run_on_traffic_loop`` in :mod:`kubegate.dataplane.server`). Both threads still share the
interpreter lock, which Python hands over every few milliseconds of Python code; the admin app therefore
does its heavy work in small steps (see :func:`kubegate.compiler.table.load_json`) rather than in one long
C call. ``bench/admin_bench.py`` measures the traffic latency this leaves.

:class:`AdminProtocol` is uvicorn's h11 protocol with what the traffic port's protocol enforces too:

- a request head of at most ``max_head_bytes`` (431 beyond: h11 refuses a head still incomplete past
  the limit, :class:`HeadLimit` one that arrived whole in a single read);
- a head complete within ``head_timeout`` of its first byte — or of the connection's opening, so that a
  silent connection is closed too (408);
- a request body complete within ``body_timeout`` of its head, however slowly it trickles (408);
- a response the client does not read for ``body_timeout`` ends the connection;
- an idle keep-alive connection closes after ``keepalive_timeout``;
- at most ``max_connections`` connections: more are answered 503 and closed at once, so that idle admin
  connections cannot use up the process's file descriptors (which the traffic port needs); and at most
  ``backlog`` accepted per turn of the loop (asyncio accepts that many before any is refused, and
  uvicorn's default is 2048).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("kubegate.admin")


@dataclass(frozen=True)
class AdminLimits:
    max_head_bytes: int = 32 * 1024  # the traffic port's max_header_bytes
    head_timeout: float = 10.0  # the traffic port's header_timeout (--header-timeout)
    body_timeout: float = 60.0  # the traffic port's body_idle_timeout, here for the whole body
    keepalive_timeout: float = 75.0  # --keepalive-timeout
    max_connections: int = 64
    backlog: int = 32  # the listen queue, and connections accepted per turn of the loop
    shutdown_timeout: float = 5.0  # requests still running when the server stops get this long


_HEAD, _BODY, _WRITE = 1, 2, 3
_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_REASONS[503] = b"Service Unavailable"


class _Connection(h11.Connection):
    """h11's connection, remembering the status h11 suggests for the error it raised (431: head too big)."""

    refusal = 400

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = exc.error_status_hint
            raise


class HeadLimit:
    """ASGI middleware: 431 for a request whose head is over ``limit`` bytes (request target and header
    lines, as the traffic port counts them). h11 only bounds a head that is still incomplete, so one
    that arrives whole in one read (up to 256 KiB) would otherwise pass."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            size = len(scope["raw_path"]) + len(scope["query_string"])
            size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.limit:
                body = b'{"error":"request header fields too large"}'
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": 431, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class AdminConfig(uvicorn.Config):
    """A uvicorn Config carrying :class:`AdminLimits` to the :class:`AdminProtocol` instances."""

    def __init__(self, app: Any, limits: AdminLimits, **kwargs: Any) -> None:
        self.limits = limits
        super().__init__(
            HeadLimit(app, limits.max_head_bytes),
            http=AdminProtocol,
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            h11_max_incomplete_event_size=limits.max_head_bytes,
            timeout_graceful_shutdown=max(1, round(limits.shutdown_timeout)),
            backlog=limits.backlog,
            **kwargs,
        )


class AdminProtocol(H11Protocol):
    def __init__(
        self,
        config: AdminConfig,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = config.limits
        self.conn = self._h11 = _Connection(h11.SERVER, config.limits.max_head_bytes)
        self.timeout_keep_alive = config.limits.keepalive_timeout  # type: ignore[assignment]
        self.logger = logging.getLogger("kubegate.admin.http")
        self._timer: asyncio.TimerHandle | None = None
        self._phase = 0

    # --- connection lifecycle ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._answer_and_close(503, "too many admin connections")
            return
        self._arm(_HEAD, self.limits.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm(_WRITE, self.limits.body_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._phase == _WRITE:
            self._disarm()
            self._follow()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 refused: 431 when the head was too large, else 400."""
        status = 431 if self._h11.refusal == 431 else 400
        self._answer_and_close(status, "request header fields too large" if status == 431 else msg)

    # --- timeouts ---------------------------------------------------------------------------------------
    def _follow(self) -> None:
        """Set the timer that fits where the client is in its request."""
        if self.transport.is_closing() or self._phase == _WRITE:
            return
        state = self.conn.their_state
        if state is h11.IDLE:  # (part of) a request head arrived
            if self._phase != _HEAD:
                self._arm(_HEAD, self.limits.head_timeout)
        elif state is h11.SEND_BODY:
            if self._phase != _BODY:
                self._arm(_BODY, self.limits.body_timeout)
        else:
            self._disarm()

    def _arm(self, phase: int, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = 0

    def _expired(self) -> None:
        phase, self._timer, self._phase = self._phase, None, 0
        if self.transport.is_closing():
            return
        if phase == _WRITE:
            self.transport.abort()
        elif phase == _HEAD:
            self._answer_and_close(408, "request head not received in time")
        else:
            self._answer_and_close(408, "request body not received in time")

    def _answer_and_close(self, status: int, message: str) -> None:
        """A small JSON error, written directly (the request, if any, is abandoned), then close."""
        cycle = self.cycle  # the request being served, or the last one of this connection
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's own answer, if it comes, is dropped
            cycle.message_event.set()
        if cycle is None or cycle.response_complete or not cycle.response_started:
            body = json.dumps({"error": message}).encode()
            head = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
            )
            self.transport.write(head + body)
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # the client does not read: do not wait for it
        else:
            self.transport.close()


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that installs no signal handlers (``kubegate serve`` handles signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class AdminServer:
    """The admin app served by :class:`AdminProtocol` on an event loop in a thread of its own."""

    def __init__(self, app: Any, *, host: str, port: int, limits: AdminLimits) -> None:
        self.server = _ThreadServer(AdminConfig(app, limits, host=host, port=port))
        self._thread = threading.Thread(target=self._run, name="kubegate-admin", daemon=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.server.serve())
        except SystemExit:  # uvicorn exits when it cannot bind; it has logged why
            pass
        finally:
            loop.close()

    async def start(self) -> bool:
        """Start the thread; True once the port listens, False if the server could not start."""
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            await asyncio.sleep(0.01)
        return self.server.started

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self._thread.join)
