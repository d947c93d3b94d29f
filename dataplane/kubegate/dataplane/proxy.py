"""The traffic listener's hot path: an HTTP/1.1 reverse proxy as a uvicorn protocol class.

Why a protocol class and not an ASGI app: in ``bench/proxy_bench.py`` the best ASGI candidates (a plain
ASGI callable under uvicorn with aiohttp or aiosonic as the upstream client) reach 0.07-0.09x nginx's
requests/s, and Starlette + httpx 0.005x; this design reaches about 0.4x (``bench/README.md``). uvicorn
accepts a custom HTTP protocol class (``Config(http=...)``), so the data plane stays a uvicorn server
(lifecycle, graceful shutdown, connection tracking) while requests on the traffic port are parsed by
llhttp (``httptools``) and proxied by callbacks, with no coroutine per request. The admin API, the
lifespan and everything else off the hot path stay a Starlette application on the admin port.

Pipeline per request: parse (llhttp) → refuse what is ambiguous → normalise path → match (snapshot's
matcher) → pick backend and endpoint (balancer) → upstream connection (pool) → stream the body both ways
with back-pressure.

Framing is the gateway's own, in both directions: the message it sends carries a ``Content-Length`` or
chunked encoding computed from what llhttp parsed, never the sender's header copied through, and
``Connection`` can only remove end-to-end headers, never framing or ``Host``. A request that two parsers
could read differently (a transfer coding other than ``chunked``, ``Transfer-Encoding`` in HTTP/1.0, a
fragment, user info, a bad ``Host``) is refused, not forwarded.

Upgrades: ``Upgrade: websocket`` on a body-less HTTP/1.1 GET is forwarded, and after the upstream's 101 both
connections are handed to :mod:`kubegate.dataplane.tunnel`; any other upgrade is stripped and the request
(with its body) is proxied as plain HTTP; ``CONNECT`` gets 405 and the connection closes.

Every failure gets a small JSON error with the request ID: 400 malformed / bad path, 404 no route,
405 CONNECT, 408 slow headers, 413 body too large, 417 unknown expectation, 431 headers too large,
500 unresolved backend, 501 unsupported transfer coding, 502 upstream failure, 503 no endpoint,
504 timeout, 505 HTTP version.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, cast

import httptools
import uvicorn

from kubegate.dataplane import httpbits
from kubegate.dataplane.accesslog import AccessLog
from kubegate.dataplane.attempts import Attempts
from kubegate.dataplane.caching import Visit
from kubegate.dataplane.pathnorm import BadPath, EscapedSlashes, is_normal, normalize_path
from kubegate.dataplane.policies.balancing import hash_key
from kubegate.dataplane.policies.cachestore import CachedResponse
from kubegate.dataplane.policies.ratelimit import Decision
from kubegate.dataplane.ratelimiting import Network, is_trusted
from kubegate.dataplane.snapshot import RuntimeRoute, SnapshotStore
from kubegate.dataplane.stats import Stats
from kubegate.dataplane.tunnel import Tunnel
from kubegate.dataplane.upstream import UpstreamConnection, UpstreamPool, head_size
from kubegate.dataplane.upstreamtls import PoolKey, UpstreamTls, tls_failure

logger: Final = logging.getLogger("kubegate.proxy")
#: Read from a C static when compiled (``time.perf_counter`` would be an attribute lookup per call).
_perf_counter: Final = time.perf_counter

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
BODY_BUFFER_LIMIT: Final = 256 * 1024  # request body held while the upstream connection is being set up
MAX_PIPELINED: Final = 16

# What the proxy does with a header, by lower-case name (one dict lookup per header on the hot path).
_DROP: Final = 0
_HOST: Final = 1
_CONTENT_LENGTH: Final = 2
_CONNECTION: Final = 3
_TRANSFER_ENCODING: Final = 4
_XFF: Final = 5
_REQUEST_ID: Final = 6
_EXPECT: Final = 7
_XFP: Final = 8
_REQUEST_SPECIAL: Final[dict[bytes, int]] = {
    **dict.fromkeys(httpbits.HOP_BY_HOP, _DROP),
    **dict.fromkeys(httpbits.PROXY_SET, _DROP),
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"connection": _CONNECTION,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"x-forwarded-for": _XFF,
    b"x-request-id": _REQUEST_ID,
    b"expect": _EXPECT,
    b"x-forwarded-proto": _XFP,  # kept only from a --trusted-proxies peer (a TLS-terminating balancer)
}
_RESPONSE_SPECIAL: Final[dict[bytes, int]] = {
    **dict.fromkeys(httpbits.HOP_BY_HOP, _DROP),
    b"x-request-id": _DROP,
    b"content-length": _CONTENT_LENGTH,
    b"connection": _CONNECTION,
    b"transfer-encoding": _TRANSFER_ENCODING,
}
# Connection header values that name no end-to-end header (the common case: nothing to filter).
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close"})

# connection phases for the timeout sweeper
IDLE: Final = 0
HEADERS: Final = 1
BODY: Final = 2
WAITING: Final = 3
TUNNEL: Final = 4

# What llhttp's upgrade flag (Connection: upgrade + Upgrade, or CONNECT) leads to, decided per request.
_NO_UPGRADE: Final = 0
_TUNNEL: Final = 1
_STRIP: Final = 2
_STRIP_WITH_BODY: Final = 3
_DISCARD: Final = 4
_VERSIONS: Final = frozenset({"1.1", "1.0", "0.9"})  # anything else on this port gets 505
_METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")
}
_HOSTS: Final = httpbits.HOSTS


@dataclass
class ProxySettings:
    max_header_bytes: int = 32 * 1024
    max_url_bytes: int = 8 * 1024
    header_timeout: float = 10.0  # whole request head must arrive within this (slowloris)
    body_idle_timeout: float = 60.0  # no request body byte for this long: close
    keepalive_timeout: float = 75.0
    tunnel_idle_timeout: float = 300.0  # a WebSocket tunnel with no byte either way for this long: close
    escaped_slashes: EscapedSlashes = "reject"  # %2F / %5C in paths: reject (400) | unescape | keep
    # During a drain an idle keep-alive connection stays open this long (from the drain's start or its
    # last response, whichever is later) before it is closed: a request a client sent on it just as the
    # drain began is answered (with Connection: close) instead of being cut off.
    drain_linger: float = 2.0
    access_log: bool = False
    # --trusted-proxies: a request from one of these keeps its X-Forwarded-Proto (a balancer in front
    # terminated TLS) and, for rate limits, names its client in X-Forwarded-For
    trusted_proxies: tuple[Network, ...] = ()


@dataclass
class Gateway:
    """Everything shared by the traffic listener's connections."""

    store: SnapshotStore
    pool: UpstreamPool = field(default_factory=UpstreamPool)
    stats: Stats = field(default_factory=Stats)
    settings: ProxySettings = field(default_factory=ProxySettings)
    ids: httpbits.RequestIds = field(default_factory=httpbits.RequestIds)
    connections: set[ProxyProtocol] = field(default_factory=set)
    draining: bool = False
    drain_started: float = 0.0  # the loop's clock when draining began
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    access: AccessLog | None = None  # set when settings.access_log is on (see __post_init__)

    def __post_init__(self) -> None:
        if self.settings.access_log and self.access is None:
            self.access = AccessLog()

    def start_draining(self, now: float) -> None:
        """SIGTERM: readiness turns 503; every response from now on closes its connection; idle
        connections close after ``settings.drain_linger``."""
        if not self.draining:
            self.draining = True
            self.drain_started = now

    def sweep(self, now: float) -> None:
        """Enforce the client-side timeouts; called about once a second with the loop's clock."""
        s = self.settings
        for conn in list(self.connections):
            conn.check_timeouts(now, s)
        self.pool.sweep()
        if self.access is not None:
            self.access.flush()


class GatewayConfig(uvicorn.Config):
    """A uvicorn Config that carries the :class:`Gateway` to the protocol instances it creates. With
    ``tls`` (the HTTPS listener's context, see dataplane/tls.py) it serves :class:`TlsProxyProtocol`."""

    def __init__(self, gateway: Gateway, *, tls: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        self.gateway = gateway
        if tls is not None:
            kwargs["ssl_context_factory"] = lambda config, default: tls
        http = ProxyProtocol if tls is None else TlsProxyProtocol
        super().__init__(app=_unused_app, http=http, lifespan="off", **kwargs)


async def _unused_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise RuntimeError("the traffic listener is served by ProxyProtocol, not by an ASGI app")


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ProxyProtocol(asyncio.Protocol):
    """One client connection on the traffic port."""

    tls = False  # TlsProxyProtocol: the connection came over TLS (the HTTPS listener)
    forwarded_proto = b"x-forwarded-proto: http"
    # the peer is a --trusted-proxies address (decided once per connection): its X-Forwarded-Proto is kept,
    # and rate limits read its X-Forwarded-For
    peer_trusted = False

    def __init__(
        self,
        config: GatewayConfig,
        server_state: Any,
        app_state: Any = None,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.gw = config.gateway
        self.server_state = server_state
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.closing = False
        self.write_paused = False
        self.reading_paused = False
        # request being parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        # Head size, bounded without a count per header: `window` is at least the current head's size (the
        # bytes read since the start of the read in which the previous message ended), `window_base` the
        # part of it that may precede the head. See data_received() and on_headers_complete().
        self.max_head = self.gw.settings.max_header_bytes
        self.read_len = 0
        self.window = 0
        self.window_base = 0
        self.parsing: Exchange | None = None
        # request being served and the ones pipelined behind it
        self.active: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.phase = IDLE
        self.phase_since = 0.0
        # upgrades and the end of input
        self.upgrade = _NO_UPGRADE  # for the request being parsed
        self.last = False  # the request being parsed is the connection's last (not keep-alive)
        self.input_done = False  # read nothing more as HTTP (after a last request, CONNECT or an upgrade)
        self.early = b""  # bytes a WebSocket client sent after its head, held until the upstream's 101
        self.tunnel: Tunnel | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0]).encode()
            trusted = self.gw.settings.trusted_proxies
            if trusted and is_trusted(self.client_ip, trusted):
                self.peer_trusted = True
        self.server_state.connections.add(self)
        self.gw.connections.add(self)
        self.phase = IDLE
        self.phase_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server_state.connections.discard(self)
        self.gw.connections.discard(self)
        if self.active is not None:
            self.active.client_gone()
        for ex in self.queue:
            ex.client_gone()
        self.queue.clear()
        self.active = self.parsing = None

    def data_received(self, data: bytes) -> None:
        if self.closing or self.input_done:
            return
        phase = self.phase
        if phase == IDLE:  # a request starts: its head must be complete within header_timeout
            self.phase = HEADERS
            self.phase_since = self.loop.time()
        elif phase == BODY:  # body bytes arrive: the body-idle clock restarts
            self.phase_since = self.loop.time()
        n = self.read_len = len(data)
        self.window += n
        try:
            self.parser.feed_data(data)
            # A head still incomplete after this read: every byte read since the read in which the last
            # message ended is part of it, so past the limit it is too large, even if llhttp is still
            # inside one header (which httptools would otherwise buffer without a bound).
            if self.url and self.window - self.window_base > self.max_head:
                self.reject(431, "request header fields too large")
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            self.upgraded(data[offset:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self.reject(cause.status, cause.message)
            else:
                logger.exception("internal error while parsing a request", exc_info=cause)
                self.reject(400, "malformed request")
        except httptools.HttpParserInvalidMethodError:
            self.reject(400, "invalid method")
        except httptools.HttpParserError as exc:
            self.parse_error(exc)

    def parse_error(self, exc: httptools.HttpParserError) -> None:
        if self.input_done:  # bytes after a request that ended the connection: never a request, ignored
            return
        self.reject(400, f"malformed request: {exc}")

    def upgraded(self, rest: bytes) -> None:
        """llhttp stopped after a request head it took as an upgrade; ``rest`` is what followed it.

        llhttp assumes an upgrade request has no body, so the head's own framing decides what ``rest`` is.
        """
        kind, self.upgrade = self.upgrade, _NO_UPGRADE
        if kind == _TUNNEL:  # WebSocket: rest is for the upstream once it has switched protocols
            self.early = rest
            self.input_done = True
            self.pause_reading()
        elif kind == _STRIP:  # an upgrade the gateway does not do, without a body: next request follows
            self.parser = httptools.HttpRequestParser(self)
            if rest:
                self.data_received(rest)
        elif kind == _STRIP_WITH_BODY:  # ... with a body: parse it with llhttp, then the next requests
            # upgrade_kind() read the framing: a Content-Length over 0, else (None) chunked
            length = self.parsing.content_length if self.parsing is not None else 0
            cont = _AfterStrippedUpgrade(self)
            self.parser = httptools.HttpRequestParser(cont)
            framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
            self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
            if rest:
                self.data_received(rest)
        else:  # CONNECT, or a body the gateway cannot frame: what follows is never served as a request
            self.input_done = True
            self.pause_reading()

    def start_tunnel(self, upstream: asyncio.Transport, from_upstream: bytes) -> None:
        """The upstream switched protocols for this connection's WebSocket request: copy bytes both ways."""
        assert self.transport is not None
        self.tunnel = Tunnel(self.transport, upstream, clock=self.loop.time, on_closed=self._tunnel_closed)
        self.phase = TUNNEL
        self.reading_paused = False
        early, self.early = self.early, b""
        self.tunnel.start(early, from_upstream)

    def _tunnel_closed(self) -> None:
        self.connection_lost(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.active
        if ex is not None and ex.conn is not None:
            ex.conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None and ex.conn is not None:
            ex.conn.resume_reading()

    # --- httptools callbacks ----------------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.gw.settings.max_url_bytes:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.closing:
            return
        if self.window > self.max_head and head_size(self.headers) > self.max_head:
            # (window bounds the head from above: only a read larger than the limit needs the exact sum)
            raise _Reject(431, "request header fields too large")
        p = self.parser
        keep_alive = p.should_keep_alive()
        ex = Exchange(
            self,
            p.get_method(),
            self.url,
            self.headers,
            p.get_http_version(),
            keep_alive and not self.gw.draining,
        )
        self.last = not keep_alive
        if p.should_upgrade():
            self.upgrade = ex.upgrade_kind()
        self.url = b""
        self.headers = []
        self.server_state.total_requests += 1
        self.parsing = ex
        self.phase = BODY  # phase_since is the time of this read
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.queue.append(ex)
            if len(self.queue) >= MAX_PIPELINED:
                self.pause_reading()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.client_body(body)

    def on_message_complete(self) -> None:
        if self.upgrade == _STRIP_WITH_BODY:  # llhttp skipped the body of an upgrade request; see upgraded()
            return
        self.window = self.window_base = self.read_len  # the next head starts in this read at the earliest
        if self.last:  # Connection: close (or HTTP/1.0): answer this request, then read nothing more
            self.input_done = True
            self.pause_reading()
        ex, self.parsing = self.parsing, None
        self.phase = WAITING if self.active is not None else IDLE
        if ex is not None:
            ex.client_body_done()

    # --- connection control -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closing and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closing and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def reject(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answer it if nothing else is on the wire, and close."""
        ex = self.parsing
        active = self.active
        if ex is not None and ex is active and not ex.done and not ex.resp_started:
            ex.keep_alive = False
            ex.fail(status, message)
            self.close()
            return
        if active is not None and not active.done:
            # A response is in flight for an earlier request: there is no clean way to answer.
            active.client_gone()
            self.abort()
            return
        rid = self.gw.ids.next()
        self.write(httpbits.error_response(status, message, rid, close=True))
        self.gw.stats.observe("", "-", status, 0.0)
        if self.gw.access is not None:
            self.gw.access.line(rid, "", b"-", self.url or b"-", status, 0.0, self.client_ip, None, 0, 0)
        self.close()

    def exchange_finished(self, ex: Exchange, keep_alive: bool) -> None:
        if ex is not self.active:
            return
        self.active = None
        if self.tunnel is not None:  # the connection is the tunnel's now
            return
        # keep_alive is what the response promised. During a drain a response written before it began
        # promised keep-alive, and the client may already be sending its next request: the connection
        # stays, that request is answered with Connection: close, and an idle one goes after drain_linger.
        if not keep_alive or self.closing:
            self.close()
            return
        if self.reading_paused:  # paused for this exchange's back-pressure or the pipeline queue
            self.resume_reading()
        if self.queue:
            nxt = self.active = self.queue.popleft()
            nxt.start()
        elif self.parsing is None:
            self.phase = IDLE
            self.phase_since = self.loop.time()

    def shutdown(self) -> None:
        """Called by uvicorn on graceful shutdown. Nothing to do now: a busy connection closes after its
        response (which says ``Connection: close``), an idle one after ``drain_linger`` (the sweeper), a
        WebSocket tunnel when it ends or the drain timeout ends the process."""

    def check_timeouts(self, now: float, s: ProxySettings) -> None:
        if self.closing:
            return
        phase, since = self.phase, self.phase_since
        if phase == IDLE and self.active is None:
            gw = self.gw
            if gw.draining:
                if now - max(since, gw.drain_started) > s.drain_linger:
                    self.close()
            elif now - since > s.keepalive_timeout:
                self.close()
        elif phase == HEADERS and now - since > s.header_timeout:
            self.reject(408, "request head not received in time")
        elif phase == BODY and self.parsing is not None and now - since > s.body_idle_timeout:
            self.reject(408, "request body stalled")
        elif phase == TUNNEL:
            tunnel = self.tunnel
            if tunnel is not None and tunnel.idle_for(now) > s.tunnel_idle_timeout:
                tunnel.close()


class TlsProxyProtocol(ProxyProtocol):
    """One client connection on the HTTPS listener: the same proxy, decrypted by the transport."""

    tls = True
    forwarded_proto = b"x-forwarded-proto: https"


class _AfterStrippedUpgrade:
    """Parser callbacks for a connection whose last request was an upgrade the gateway strips (``h2c``).

    llhttp skips the body of any request it takes as an upgrade. To read that body with llhttp all the same,
    a fresh parser is fed a synthetic head carrying the original request's framing, whose callbacks are
    swallowed here; its body and end, and every request after it, go to the connection as usual.
    """

    __slots__ = ("proto", "synthetic")

    def __init__(self, proto: ProxyProtocol) -> None:
        self.proto = proto
        self.synthetic = True

    def on_url(self, url: bytes) -> None:
        if not self.synthetic:
            self.proto.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.synthetic:
            self.proto.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.synthetic:
            self.synthetic = False
        else:
            self.proto.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.proto.on_body(body)

    def on_message_complete(self) -> None:
        self.proto.on_message_complete()


class Exchange:
    """One request/response through the proxy. Implements the upstream connection's sink interface."""

    __slots__ = (
        "attempts",
        "body_buf",
        "body_buffered",
        "body_done",
        "body_sent",
        "cache",
        "chunked",
        "client",
        "conn",
        "content_length",
        "done",
        "hdict",
        "head",
        "head_only",
        "identity",
        "keep_alive",
        "limit_decision",
        "method",
        "no_host",
        "out",
        "path",
        "raw_headers",
        "received",
        "request_id",
        "resp_chunked",
        "resp_close_delimited",
        "resp_lines",
        "resp_started",
        "resume_args",
        "retried",
        "route",
        "sent",
        "status",
        "t0",
        "timer",
        "upstream",
        "url",
        "version",
        "websocket",
    )

    def __init__(
        self,
        client: ProxyProtocol,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        version: str,
        keep_alive: bool,
    ) -> None:
        self.client = client
        self.method = method
        self.url = url
        self.raw_headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.request_id = b""
        self.t0 = _perf_counter()
        self.route: RuntimeRoute | None = None
        self.conn: UpstreamConnection | None = None
        self.head = b""
        self.head_only = method == b"HEAD"
        self.path = b""
        self.content_length: int | None = None
        self.chunked = False
        self.body_buf: list[bytes] = []
        self.body_buffered = 0
        self.body_done = False
        self.body_sent = 0
        self.resp_started = False
        self.resp_chunked = False
        self.resp_close_delimited = False
        self.out: list[bytes] = []
        self.status = 0
        self.done = False
        self.retried = False
        self.timer: asyncio.TimerHandle | None = None
        self.websocket = False
        self.attempts: Attempts | None = None  # routes with traffic policies only
        self.received = 0  # request body payload bytes (without chunk framing)
        self.sent = 0  # response body payload bytes relayed to the client
        self.upstream: PoolKey | None = None  # the endpoint of the last attempt (for the access log)
        self.no_host = False  # HTTP/1.0 without Host: the endpoint's authority is sent as Host
        self.hdict: dict[str, str] | None = None  # the headers by lower-case str name, built on first get()
        self.resp_lines: list[bytes] | None = None  # edge lines for the response (CORS, RateLimit)
        self.limit_decision: Decision | None = None  # a Global rate limit's answer, on the restart it causes
        #: What :meth:`proceed` was called with, kept for a route with edge policies: an edge or cache step
        #: that waits (a Global limit's Redis answer, a JWKS, a cache fill) goes on from there (resume()).
        self.resume_args: _ResumeArgs | None = None
        self.identity: str | None = None  # who the route's auth admitted (JWT sub, API-key client)
        self.cache: Visit | None = None  # the route's response cache's state (dataplane/caching.py)

    def get(self, name: str) -> str | None:
        """A request header by lower-case name (repeated ones joined with ","), for the matcher's header
        conditions and consistent hashing: decoded only for requests that meet such a route."""
        d = self.hdict
        if d is None:
            d = self.hdict = {}
            for raw_name, raw_value in self.raw_headers:
                key = raw_name.decode("latin-1").lower()
                v = raw_value.decode("latin-1")
                d[key] = d[key] + "," + v if key in d else v
        return d.get(name)

    # --- upgrades (rare: only requests llhttp flagged as upgrades get here) -----------------------------
    def upgrade_kind(self) -> int:
        """What to do with a request llhttp took as an upgrade; called once its head is complete."""
        if self.method == b"CONNECT":
            self.keep_alive = False
            return _DISCARD
        upgrade = b""
        te_chunked = has_te = has_body = False
        for name, value in self.raw_headers:
            lname = name.lower()
            if lname == b"upgrade":
                upgrade += b"," + value.lower()
            elif lname == b"transfer-encoding":
                has_te = True
                te_chunked = httpbits.only_chunked(value)
            elif lname == b"content-length":
                self.content_length = int(value)  # llhttp has validated it; start() reads it the same
                has_body = self.content_length > 0
        if (
            self.method == b"GET"
            and self.version == "1.1"
            and not has_te
            and not has_body
            and b"websocket" in (t.strip() for t in upgrade.split(b","))
        ):
            self.websocket = True
            self.keep_alive = False  # unless the upstream switches, the connection ends with the response
            return _TUNNEL
        if has_te and not te_chunked:  # refused in start(); its body cannot be framed, so nothing follows
            self.keep_alive = False
            return _DISCARD
        return _STRIP_WITH_BODY if has_te or has_body else _STRIP

    # --- request side -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Route the request and set the upstream request in motion (headers are complete)."""
        client = self.client
        gw = client.gw
        if self.version not in _VERSIONS:
            self.refuse(505, "HTTP version not supported on this port")
            return
        if self.method == b"CONNECT":
            self.refuse(405, "CONNECT is not supported")
            return
        host = b""
        hosts = 0
        xff = b""
        rid = b""
        expect = b""
        te = b""
        tes = 0
        tokens: frozenset[bytes] | None = None
        out: list[bytes] = []
        special = _REQUEST_SPECIAL
        proto = client.forwarded_proto
        for name, value in self.raw_headers:
            lname = httpbits.lower_name(name)
            act = special.get(lname)
            if act is None:
                out.append(lname + b": " + value)
            elif act == _HOST:
                host = value
                hosts += 1
            elif act == _CONTENT_LENGTH:
                # llhttp has validated it (digits, one header); the value sent upstream is the gateway's own
                self.content_length = int(value)
            elif act == _CONNECTION:
                tokens = (
                    httpbits.connection_tokens(value)
                    if tokens is None
                    else tokens | httpbits.connection_tokens(value)
                )
            elif act == _TRANSFER_ENCODING:
                te = value
                tes += 1
            elif act == _XFF:
                xff = xff + b", " + value if xff else value
            elif act == _REQUEST_ID:
                rid = value
            elif act == _EXPECT:
                expect = value.lower()
            elif act == _XFP and client.peer_trusted and not client.tls:
                scheme = value.strip().lower()
                if scheme == b"https" or scheme == b"http":
                    proto = b"x-forwarded-proto: " + scheme
            # _DROP: other hop-by-hop headers and X-Forwarded-Host, which the proxy sets itself
        if tokens is not None and not tokens <= _PLAIN_CONNECTION:
            # Only end-to-end headers are in `out`: framing, Host and the X-Forwarded-* set are added below.
            out = [line for line in out if line.split(b":", 1)[0] not in tokens]
        self.request_id = rid if rid and httpbits.valid_request_id(rid) else gw.ids.next()
        if tes:
            if tes > 1:
                self.refuse(400, "more than one Transfer-Encoding header")
                return
            if self.version != "1.1":
                self.refuse(400, "Transfer-Encoding in an HTTP/1.0 request")
                return
            if not httpbits.only_chunked(te):
                if te.rsplit(b",", 1)[-1].strip().lower() != b"chunked":  # RFC 9112 §6.3: length unknown
                    self.refuse(400, "the final transfer coding is not chunked")
                else:
                    self.refuse(501, "transfer codings other than chunked are not supported")
                return
            self.chunked = True

        # request target: origin-form, or absolute-form (whose authority replaces Host)
        url = self.url
        if b"#" in url:
            self.fail(400, "a request target cannot carry a fragment")
            return
        if url[:1] != b"/":
            if url[:7].lower() in (b"http://", b"https:/"):
                try:
                    parsed = httptools.parse_url(url)
                except httptools.HttpParserInvalidURLError:
                    self.fail(400, "malformed request target")
                    return
                if parsed.userinfo:
                    self.fail(400, "user info in the request target")
                    return
                host = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
                hosts = 1
            else:
                self.fail(400, "request target must be a path")
                return
        if hosts > 1 or (hosts == 0 and self.version == "1.1"):
            self.fail(400, "exactly one Host header is required")
            return
        host_s = _HOSTS.get(host) or httpbits.host_str(host)  # decoded, "" if invalid
        if not host_s and host:
            self.fail(400, "invalid Host")
            return
        qpos = url.find(b"?")
        raw_path, query = (url, b"") if qpos < 0 else (url[:qpos], url[qpos + 1 :])
        path = raw_path.decode("latin-1")
        if is_normal(raw_path):  # (the common case, checked on the bytes: nothing to normalise)
            self.path = raw_path
        else:
            try:
                path = normalize_path(path, gw.settings.escaped_slashes)
            except BadPath as exc:
                self.fail(400, f"bad request path: {exc}")
                return
            self.path = path.encode("latin-1")

        snapshot = gw.store.current
        if snapshot is None:
            self.fail(503, "no route table loaded yet")
            return
        route = snapshot.matcher.match(
            _METHODS.get(self.method) or self.method.decode("latin-1"),
            host_s,
            path,
            query.decode("latin-1") if query else "",
            self,  # looked up through get() only when a route has header conditions
        )
        if route is None:
            self.fail(404, "no route matches this request")
            return
        self.route = route
        if route.https_port is not None and not client.tls:  # tls.redirectHTTP
            self.answer(301, [b"location: " + _https_location(host_s, route.https_port, url)])
            return
        if self.content_length is not None and self.content_length > route.max_body:
            self.fail(413, f"request body larger than {route.max_body} bytes")
            return
        if expect and expect != b"100-continue":
            self.fail(417, "unsupported expectation")
            return
        self.proceed(route, host, host_s, path, query, qpos >= 0, out, xff, proto, bool(expect))

    def proceed(
        self,
        route: RuntimeRoute,
        host: bytes,
        host_s: str,
        path: str,
        query: bytes,
        has_query: bool,
        out: list[bytes],
        xff: bytes,
        proto: bytes,
        expect: bool,
    ) -> None:
        """The request from the edge point on: its head was valid and matched ``route`` (:meth:`start`);
        ``out`` holds its end-to-end header lines. Run again, with the same arguments, by :meth:`resume`
        when an edge or cache step waited."""
        client = self.client
        gw = client.gw
        edge = route.edge
        if edge is not None:  # CORS, redirect, rewrite, request header transforms (dataplane/edge.py)
            self.resume_args = (route, host, host_s, path, query, has_query, out, xff, proto, expect)
            edited = edge.request(
                self,
                host_s,
                path,
                query.decode("latin-1") if query else "",
                out,
                client.client_ip,
                client.peer_trusted,
            )
            if edited is None:  # answered by the gateway
                return
            out = edited
            cache = edge.cache
            if cache is not None and not cache.lookup(  # the response cache (dataplane/caching.py)
                self, host_s, path, query.decode("latin-1") if query else ""
            ):
                return  # answered from the cache, or waiting for it
        policies = route.policies
        endpoint: tuple[str, int] | None = None
        if policies is None:
            backend = route.split.pick()
            if backend is None or backend.error is not None:
                self.fail(
                    500, backend.error if backend is not None and backend.error else "no usable backend"
                )
                return
            endpoint = backend.pick()
            if endpoint is None:
                self.fail(503, f"no ready endpoint for backend {backend.name}")
                return
            if backend.tls is not None:  # a backend that speaks TLS: its settings are part of the pool key
                pool_key: PoolKey = (endpoint[0], endpoint[1], backend.tls)
            else:
                pool_key = endpoint

        lines = [b"%s %s%s HTTP/1.1" % (self.method, self.path, b"?" + query if has_query else b"")]
        if host:
            lines.append(b"host: " + host)
        else:  # HTTP/1.0 may come without Host; HTTP/1.1 upstreams need one: the endpoint's, in attach()
            self.no_host = True
        lines.extend(out)
        if self.chunked:
            lines.append(b"transfer-encoding: chunked")
        elif self.content_length is not None:
            lines.append(b"content-length: %d" % self.content_length)
        if self.websocket:
            lines.append(b"connection: upgrade\r\nupgrade: websocket")
        lines.append(b"x-forwarded-for: " + (xff + b", " + client.client_ip if xff else client.client_ip))
        lines.append(proto)
        if host:
            lines.append(b"x-forwarded-host: " + host)
        lines.append(b"x-request-id: " + self.request_id)
        self.head = b"\r\n".join(lines) + b"\r\n\r\n"

        if expect and self.version == "1.1" and not self.body_done:
            client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if route.timeout is not None:
            self.timer = client.loop.call_later(route.timeout, self.on_timeout)
        if endpoint is not None:  # no policies: straight to the endpoint (send(), inline)
            conn = gw.pool.acquire_idle(pool_key)
            if conn is not None:
                self.attach(conn)
            else:
                self.connect(pool_key)
            return
        assert policies is not None
        key = None
        if policies.hash_on is not None:
            cookie = next((v.decode("latin-1") for n, v in self.raw_headers if n.lower() == b"cookie"), None)
            key = hash_key(
                policies.hash_on,
                self,
                query.decode("latin-1"),
                cookie,
                client.client_ip,
            )
        self.attempts = Attempts(self, policies, client.loop, key)
        self.attempts.admit()  # sends through send() when admitted, or answers 503

    def send(self, endpoint: tuple[str, int], tls: UpstreamTls | None = None) -> None:
        """Send an attempt to ``endpoint`` (with TLS when its backend speaks it) on an idle pooled
        connection, or on a new one."""
        key: PoolKey = endpoint if tls is None else (endpoint[0], endpoint[1], tls)
        conn = self.client.gw.pool.acquire_idle(key)
        if conn is not None:
            self.attach(conn)
        else:
            self.connect(key)

    def connect(self, key: PoolKey) -> None:
        gw = self.client.gw
        task = self.client.loop.create_task(gw.pool.connect(key))
        gw.tasks.add(task)
        task.add_done_callback(functools.partial(self._connected, key))

    def _connected(self, key: PoolKey, task: asyncio.Task[UpstreamConnection]) -> None:
        gw = self.client.gw
        gw.tasks.discard(task)
        if task.cancelled():
            if not self.done:
                self.fail(502, "upstream connect cancelled")
            return
        exc = task.exception()
        if exc is not None:
            if self.done:
                return
            route = self.route.id if self.route else ""
            timed_out = isinstance(exc, asyncio.TimeoutError)
            handshake = isinstance(exc, ssl.SSLError)
            gw.stats.upstream_error(
                route, "connect_timeout" if timed_out else "tls" if handshake else "connect"
            )
            if handshake:  # the reason (an unknown CA, a name mismatch) is for the operator, not the client
                tls_failure(route, key, exc)
            if self.attempts is not None and self.attempts.failed("connect-failure"):
                return
            if timed_out:
                self.fail(504, "upstream connect timed out")
            elif handshake:
                self.fail(502, "upstream TLS handshake failed")
            else:
                self.fail(502, f"upstream connect failed: {exc.__class__.__name__}")
            return
        conn = task.result()
        if self.done:
            gw.pool.release(conn)  # a fresh, unused connection: keep it for the next request
            return
        self.attach(conn)

    def attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.upstream = conn.key
        head = self.head
        if self.no_host:
            line, rest = head.split(b"\r\n", 1)
            head = line + b"\r\nhost: " + _authority(conn.key) + b"\r\n" + rest
        parts = [head]
        attempts = self.attempts
        if attempts is not None and attempts.flushed:  # a retry after body bytes went out: all again
            if attempts.replay:
                parts.extend(attempts.replay)
        elif self.body_buf:
            parts.extend(self.body_buf)
            self.body_sent += self.body_buffered
            self.body_buf = []
            self.body_buffered = 0
        if self.body_done and self.chunked:
            parts.append(b"0\r\n\r\n")
        if attempts is not None:
            attempts.flushed = True
        conn.start(self, b"".join(parts), head_only=self.head_only, upgrade=self.websocket)
        client = self.client
        if client.write_paused:
            conn.pause_reading()
        if client.reading_paused:
            client.resume_reading()

    def client_body(self, data: bytes) -> None:
        if self.done:
            return
        self.received += len(data)  # payload only: the limit is on the body, not on its chunk framing
        route = self.route
        if route is not None and self.received > route.max_body:
            self.fail(413, f"request body larger than {route.max_body} bytes")
            return
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self.attempts is not None:
            self.attempts.body(data)
        conn = self.conn
        if conn is not None:
            conn.write(data)
            self.body_sent += len(data)
            if conn.write_paused:
                self.client.pause_reading()
        else:
            self.body_buf.append(data)
            self.body_buffered += len(data)
            if self.body_buffered > BODY_BUFFER_LIMIT:
                self.client.pause_reading()

    def client_body_done(self) -> None:
        self.body_done = True
        if self.done:
            return
        if self.conn is not None and self.chunked:
            self.conn.write(b"0\r\n\r\n")

    def client_gone(self) -> None:
        """The client connection closed: drop the upstream connection (its state is unknown)."""
        if self.done:
            return
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        self.finish(499 if not self.resp_started else self.status, keep_alive=False)

    # --- upstream side (UpstreamSink) -------------------------------------------------------------------
    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.done:
            return
        attempts = self.attempts
        if attempts is not None:
            if status < 500:
                attempts.succeeded()
            elif attempts.failed("status", status):  # retried: this response is dropped unread
                conn, self.conn = self.conn, None
                if conn is not None:
                    conn.close()
                return
        tokens: frozenset[bytes] | None = None
        length = b""
        te = b""
        # The standard reason phrase, not the upstream's (reason phrases carry no meaning; RFC 9112 §4).
        lines = [httpbits.status_line(status)]
        special = _RESPONSE_SPECIAL
        for name, value in headers:
            lname = httpbits.lower_name(name)
            act = special.get(lname)
            if act is None:
                lines.append(name + b": " + value)
            elif act == _CONTENT_LENGTH:
                length = value  # llhttp allows one (or equal duplicates) and has checked the digits
            elif act == _CONNECTION:
                tokens = (
                    httpbits.connection_tokens(value)
                    if tokens is None
                    else tokens | httpbits.connection_tokens(value)
                )
            elif act == _TRANSFER_ENCODING:
                te = te + b"," + value if te else value
            # _DROP: other hop-by-hop headers, and X-Request-ID (the proxy sets its own)
        upstream_chunked = bool(te)
        if upstream_chunked and not httpbits.only_chunked(te):
            # llhttp reads such a body until close, but it is still encoded: refuse rather than relay
            # it without its coding. Raised into the parser: the connection reports a bad response (502).
            raise ValueError("upstream used a transfer coding other than chunked")
        self.status = status
        self.resp_started = True
        if tokens is not None and not tokens <= _PLAIN_CONNECTION:
            # Only end-to-end headers are in `lines`: framing is added below, whatever Connection says.
            lines = [line for line in lines if line.split(b":", 1)[0].lower() not in tokens]
        visit = self.cache
        fill = visit.fill if visit is not None else None
        if fill is not None:  # a cache miss: stored if the response allows (dataplane/caching.py)
            fill.head(
                status,
                headers,
                lines,
                int(length) if length and not upstream_chunked else None,
                self.raw_headers,
                self.identity,
            )
        route = self.route
        edge = route.edge if route is not None else None
        if edge is not None and edge.transforms_response:  # header transforms, CORS (dataplane/edge.py)
            lines = edge.response(self, lines)
        if visit is not None and visit.mark is not None:
            lines.append(visit.mark)
        no_body = self.head_only or status in (204, 304)
        has_length = bool(length) and not upstream_chunked and status != 204
        if has_length:
            lines.append(b"content-length: %d" % int(length))
        elif not no_body:
            if self.version == "1.1":
                self.resp_chunked = True
                lines.append(b"transfer-encoding: chunked")
            else:
                self.keep_alive = False  # HTTP/1.0 client: the body ends when we close
            self.resp_close_delimited = not upstream_chunked
        lines.append(b"x-request-id: " + self.request_id)
        if not self.keep_alive or self.client.gw.draining:
            self.keep_alive = False
            lines.append(b"connection: close")
        elif self.version == "1.0":
            lines.append(b"connection: keep-alive")
        self.out.append(b"\r\n".join(lines) + b"\r\n\r\n")

    def upstream_switched(
        self, headers: list[tuple[bytes, bytes]], transport: asyncio.Transport, rest: bytes
    ) -> None:
        """The upstream answered 101 to this WebSocket request: relay the head, then tunnel both ways."""
        if self.done:
            transport.close()
            return
        self.status = 101
        self.resp_started = True
        self.conn = None
        lines = [httpbits.status_line(101)]
        special = _RESPONSE_SPECIAL
        for name, value in headers:
            if special.get(name.lower()) is None:  # end-to-end headers (Sec-WebSocket-Accept, ...)
                lines.append(name + b": " + value)
        lines.append(b"connection: upgrade\r\nupgrade: websocket\r\nx-request-id: " + self.request_id)
        client = self.client
        client.write(b"\r\n".join(lines) + b"\r\n\r\n")
        client.start_tunnel(transport, rest)
        self.finish(101, keep_alive=False)

    def upstream_body(self, data: bytes) -> None:
        self.sent += len(data)
        if self.cache is not None:
            self.cache.body(data)
        if self.resp_chunked:
            self.out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.out.append(data)

    def upstream_flush(self) -> None:
        out = self.out
        if out:
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def upstream_done(self) -> None:
        if self.done:
            return
        if self.cache is not None:
            self.cache.complete()
        if self.resp_chunked:
            self.client.write(b"0\r\n\r\n")
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.body_done:
                self.client.gw.pool.release(conn)
            else:
                conn.close()  # the upstream answered before reading the whole body: not reusable
        self.finish(self.status, keep_alive=self.keep_alive and self.body_done)

    def upstream_lost(self, exc: BaseException | None) -> None:
        if self.done:
            return
        conn, self.conn = self.conn, None
        if self.resp_started:
            if self.resp_close_delimited:
                self.upstream_flush()
                if self.resp_chunked:
                    self.client.write(b"0\r\n\r\n")
                self.finish(self.status, keep_alive=self.keep_alive and self.body_done)
            else:
                self._upstream_error("reset_mid_response")
                self.client.abort()
                self.finish(self.status, keep_alive=False)
            return
        if (
            conn is not None
            and conn.reused
            and not conn.received
            and not self.retried
            and self.method in IDEMPOTENT
            and not self.chunked
            and not self.content_length
        ):
            # A pooled connection the upstream had closed while idle: resend once on a fresh one.
            self.retried = True
            self.connect(conn.key)
            return
        self._upstream_error("reset")
        if self.attempts is not None and self.attempts.failed("reset"):
            return
        self.fail(502, "upstream closed the connection before responding")

    def upstream_bad_response(self, exc: BaseException) -> None:
        if self.done:
            return
        self.conn = None
        self._upstream_error("protocol")
        if self.attempts is not None:
            self.attempts.gave_up()
        self._give_up(502, "upstream sent a malformed response")

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.client.pause_reading()
        else:
            self.client.resume_reading()

    def on_timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self._upstream_error("timeout")
        if self.attempts is not None:
            self.attempts.gave_up()
        self._give_up(504, "upstream did not answer in time")

    def try_timed_out(self) -> None:
        """The route's retry.perTryTimeout passed before the attempt's response head."""
        if self.done:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self._upstream_error("timeout")
        if self.attempts is not None and self.attempts.failed("timeout"):
            return
        self._give_up(504, "upstream did not answer in time")

    # --- endings ----------------------------------------------------------------------------------------
    def _give_up(self, status: int, message: str) -> None:
        """The upstream failed: answer ``status`` if nothing was sent yet, else cut the client off (a
        response already under way cannot be ended cleanly)."""
        if self.resp_started:
            self.client.abort()
            self.finish(self.status, keep_alive=False)
        else:
            self.fail(status, message)

    def answer(self, status: int, lines: list[bytes]) -> None:
        """Answer with an empty body and these header lines (a redirect, a CORS preflight) and end the
        exchange; the gateway frames it, as every answer of its own."""
        if self.done:
            return
        keep = self._keepable()
        self.client.write(httpbits.bodiless_response(status, lines, self.request_id, close=not keep))
        self.finish(status, keep_alive=keep)

    def from_cache(self, entry: CachedResponse, age: int, not_modified: bool) -> None:
        """Answer from the route's cache (dataplane/caching.py): the stored response, framed by the
        gateway, with the edge response point applied as to a response from upstream, ``Age`` and
        ``X-Cache: HIT``; 304 when the request's If-None-Match names the entry's ETag."""
        if self.done:
            return
        status = 304 if not_modified else entry.status
        lines = [httpbits.status_line(status), *entry.lines]
        route = self.route
        edge = route.edge if route is not None else None
        if edge is not None and edge.transforms_response:
            lines = edge.response(self, lines)
        lines.append(b"age: %d\r\nx-cache: HIT" % age)
        body = entry.body
        if status == 304 or status == 204:
            body = b""
        else:
            lines.append(b"content-length: %d" % len(body))
        if self.head_only:
            body = b""
        lines.append(b"x-request-id: " + self.request_id)
        keep = self._keepable()
        if not keep:
            lines.append(b"connection: close")
        elif self.version == "1.0":
            lines.append(b"connection: keep-alive")
        self.status = status
        self.resp_started = True
        self.sent = len(body)
        self.client.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        self.finish(status, keep_alive=keep)

    def _keepable(self) -> bool:
        """Whether the connection can stay open after an answer of the gateway's own: the client wants it,
        no drain, and nothing of the request body is left unread (a request without a body has none, even
        before llhttp reports its end)."""
        return (
            self.keep_alive
            and (self.body_done or (not self.chunked and not self.content_length))
            and not self.client.gw.draining
        )

    def refused(self, status: int, message: str, lines: list[bytes], kind: str, reason: str) -> None:
        """The route's auth refused the request (dataplane/auth.py): the answer, counted by reason."""
        if kind:
            route = self.route
            self.client.gw.stats.auth_failure(route.id if route is not None else "", kind, reason)
        self.fail(status, message, extra=lines)

    def limited(self, decision: Decision) -> None:
        """A Global rate limit's decision came back (from Redis, or its local fallback): go on with it."""
        if not self.done and not self.client.closing:
            self.limit_decision = decision
            self.resume()

    def rate_limited(self, lines: list[bytes]) -> None:
        """Over the route's rate limit: 429, with Retry-After and the RateLimit headers in ``lines``."""
        route = self.route
        self.client.gw.stats.rate_limited(route.id if route is not None else "")
        self.fail(429, "rate limit exceeded", extra=lines)

    def restart(self) -> None:
        """Go on after a wait at the edge point (the route's first JWKS fetch) or the cache's lookup."""
        if not self.done and not self.client.closing:
            self.resume()

    def resume(self) -> None:
        """Run :meth:`proceed` again from the edge point, with what it was first given: the head is not
        parsed, checked and matched a second time, and the request keeps its route (and table)."""
        args = self.resume_args
        if args is None:  # (a wait comes only from the edge point, which kept them)
            self.start()
            return
        self.proceed(*args)

    def refuse(self, status: int, message: str) -> None:
        """A request the gateway will not read further (its framing or version is in doubt): answer, close."""
        self.keep_alive = False
        self.fail(status, message)

    def _upstream_error(self, kind: str) -> None:
        self.client.gw.stats.upstream_error(self.route.id if self.route else "", kind)

    def fail(
        self, status: int, message: str, *, retry_after: int | None = None, extra: list[bytes] | None = None
    ) -> None:
        """Answer with a JSON error (nothing has been sent yet) and end the exchange."""
        if self.done:
            return
        if not self.request_id:
            self.request_id = self.client.gw.ids.next()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        # Unread request body: close rather than read and discard it. (A request refused while its head
        # is being read closes too: whatever the client sends next on it is not trusted.)
        keep = self.keep_alive and self.body_done and not self.client.gw.draining
        self.client.write(
            httpbits.error_response(
                status,
                message,
                self.request_id,
                close=not keep,
                head=self.head_only,
                retry_after=retry_after,
                extra=extra,
            )
        )
        self.finish(status, keep_alive=keep)

    def finish(self, status: int, *, keep_alive: bool) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.attempts is not None:
            self.attempts.finished()
        if self.cache is not None:  # the requests that waited for this response get it, or go alone
            self.cache.release()
        client = self.client
        gw = client.gw
        seconds = _perf_counter() - self.t0
        route = self.route.id if self.route is not None else ""
        gw.stats.observe(route, _METHODS.get(self.method) or self.method.decode("latin-1"), status, seconds)
        access = gw.access
        if access is not None:
            attempts = self.attempts
            access.line(
                self.request_id,
                route,
                self.method,
                self.path or self.url,
                status,
                seconds,
                client.client_ip,
                self.upstream,
                attempts.count if attempts is not None else (1 if self.upstream is not None else 0),
                self.sent,
            )
        # Attempts refers back to this exchange: break that cycle now rather than leave both to the cyclic
        # garbage collector (which, run for them, cost a route with policies half its overhead).
        self.attempts = None
        client.exchange_finished(self, keep_alive)


#: :meth:`Exchange.proceed`'s arguments, kept for :meth:`Exchange.resume`.
_ResumeArgs = tuple[RuntimeRoute, bytes, str, str, bytes, bool, list[bytes], bytes, bytes, bool]


def _https_location(host: str, port: int, target: bytes) -> bytes:
    """Where redirectHTTP sends a plain request: the same host (a route name, so never an IP literal)
    and request target over https, on ``port`` (left out when it is 443)."""
    name = host.rsplit(":", 1)[0].encode("latin-1")
    return b"https://" + name + (b"" if port == 443 else b":%d" % port) + target


def _authority(endpoint: PoolKey) -> bytes:
    host = endpoint[0]
    return (b"[%s]:%d" if ":" in host else b"%s:%d") % (host.encode("latin-1"), endpoint[1])
