"""``kubegate serve``: one process, two uvicorn servers, and their lifecycle.

The traffic port runs :class:`~kubegate.dataplane.proxy.ProxyProtocol` on the main event loop; the admin
port runs the Starlette admin app on an event loop in a thread of its own
(:class:`~kubegate.dataplane.adminserver.AdminServer`), so that no admin request stalls traffic, and a
new table is swapped in on the main loop (:func:`run_on_traffic_loop`). This module owns what is around
them: where the first table comes from (a routes file in standalone mode, a bootstrap file, or nothing
until the operator pushes), re-reading the routes file on change or SIGHUP, the once-a-second timeout
sweeper, and graceful shutdown on SIGTERM (readiness goes 503, listeners close, in-flight requests finish
up to the drain timeout, then exit; the admin port stops last).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import uvicorn

from kubegate import _compiled, pushtoken
from kubegate.dataplane import caching, redislimit, tls
from kubegate.dataplane.admin import build_admin_app, to_oldest_generation
from kubegate.dataplane.adminserver import AdminLimits, AdminServer
from kubegate.dataplane.edge import EdgeContext
from kubegate.dataplane.healthprober import HealthProber
from kubegate.dataplane.jwkssources import JwksSources
from kubegate.dataplane.pathnorm import EscapedSlashes
from kubegate.dataplane.policies.cachestore import MemoryStore
from kubegate.dataplane.proxy import Gateway, GatewayConfig, ProxySettings
from kubegate.dataplane.ratelimiting import parse_trusted_proxies
from kubegate.dataplane.redislimit import RedisBackend
from kubegate.dataplane.routesfile import (
    RoutesFile,
    RoutesFileEmpty,
    RoutesFileError,
    RoutesFileMissing,
    load_bootstrap,
)
from kubegate.dataplane.snapshot import Snapshot, SnapshotStore

logger = logging.getLogger("kubegate.serve")

_T = TypeVar("_T")

DEMO_ECHO_NAME, DEMO_ECHO_PORT = "echo-9001", 9001  # --demo's echo backend, the quickstart's target


@dataclass
class ServeOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    admin_host: str = "0.0.0.0"
    admin_port: int = 9090
    routes: Path | None = None
    bootstrap: Path | None = None
    push_token_file: Path | None = None
    push_token_grace: float = pushtoken.GRACE_SECONDS  # the previous token is admitted this long
    drain_timeout: float = 25.0
    watch_interval: float = 1.0
    access_log: bool = False
    demo: bool = False  # also run the echo backend on 127.0.0.1:9001 (the quickstart's target)
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    admin_body_timeout: float = 60.0  # a request body on the admin port must be complete within this
    admin_max_connections: int = 64
    tunnel_idle_timeout: float = 300.0
    drain_linger: float = 2.0
    escaped_slashes: EscapedSlashes = "reject"
    redis_url: str | None = None  # Global rate limits (shared by replicas) when set
    trusted_proxies: str = ""  # CIDRs whose X-Forwarded-For names the client (rate-limit keys)
    tls_port: int | None = None  # the HTTPS listener (dataplane/tls.py); None: none
    default_certificate: tuple[Path, Path] | None = None  # CERT, KEY files for unknown or no SNI
    tls_redirect_port: int | None = None  # the port redirectHTTP names (default tls_port)
    cache_memory_bytes: int = caching.DEFAULT_MEMORY_BYTES  # the replica's in-memory response cache


def push_token_source(token_file: Path | None) -> Callable[[], str | None]:
    """The push token, re-read on every push so that a rotated Secret takes effect without a restart
    (:class:`~kubegate.pushtoken.RotatingToken` keeps the previous one for a grace period).

    None when there is none: the file cannot be read, is not UTF-8 text or is empty (or, without a file,
    ``$KUBEGATE_PUSH_TOKEN`` is unset). Such a problem is logged once when it starts and once when it
    ends, not once per push attempt.
    """
    problem: list[str | None] = [None]

    def report(now: str | None) -> None:
        if now != problem[0]:
            if now is not None:
                logger.error("table pushes are refused: %s", now)
            elif token_file is not None:
                logger.info("push token file %s readable again", token_file)
            problem[0] = now

    def read() -> str | None:
        if token_file is None:
            return os.environ.get("KUBEGATE_PUSH_TOKEN") or None
        try:
            token = token_file.read_bytes().decode().strip()
        except OSError as exc:
            report(f"cannot read push token file {token_file}: {exc.strerror}")
            return None
        except UnicodeDecodeError:
            report(f"push token file {token_file} is not UTF-8 text")
            return None
        if not token:
            report(f"push token file {token_file} is empty")
            return None
        report(None)
        return token

    return read


def run_on_traffic_loop(loop: asyncio.AbstractEventLoop) -> Callable[[Callable[[], _T]], Awaitable[_T]]:
    """For the admin thread: run a function on the traffic loop (the snapshot swap) and await its result."""

    async def call(fn: Callable[[], _T]) -> _T:
        return fn()

    def run(fn: Callable[[], _T]) -> Awaitable[_T]:
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(fn), loop))

    return run


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling (this module handles signals for both), saying in
    one line of its own what it is once it listens (uvicorn's own start and stop lines are left out by
    :func:`kubegate.logs.setup_logging`: with three servers in one process they came three times)."""

    def __init__(self, config: uvicorn.Config, what: str) -> None:
        super().__init__(config)
        self.what = what

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            url = _url(self.config.host, self.config.port, "https" if self.config.ssl else "http")
            logger.info("%s listening on %s", self.what, url)


def _url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def serve(opts: ServeOptions) -> int:
    loop = asyncio.get_running_loop()
    jwks = JwksSources()  # the key sets of routes with auth.jwt.jwksUri, fetched in the background
    redis = RedisBackend(redislimit.connect(opts.redis_url)) if opts.redis_url else None
    tls_contexts: tls.TlsContexts | None = None
    if opts.tls_port is not None:
        default = None
        if opts.default_certificate is not None:
            cert, key = opts.default_certificate
            try:
                default = tls.load_default(cert, key)
            except (OSError, ssl.SSLError) as exc:
                logger.error("--default-certificate %s,%s cannot be served: %s", cert, key, exc)
                return 1
        tls_contexts = tls.TlsContexts(default)
    trusted_proxies = parse_trusted_proxies(opts.trusted_proxies)
    cache = caching.CacheContext(MemoryStore(opts.cache_memory_bytes), redis)  # the routes' response caches
    context = EdgeContext(
        jwks=jwks,
        redis=redis,
        trusted_proxies=trusted_proxies,
        https_port=(opts.tls_redirect_port or opts.tls_port) if opts.tls_port is not None else None,
        cache=cache,
    )
    store = SnapshotStore(context=context)
    if tls_contexts is not None:  # first, so that the first table's certificates are there at once
        store.on_swap(tls_contexts.sync)
    gateway = Gateway(
        store=store,
        settings=ProxySettings(
            access_log=opts.access_log,
            header_timeout=opts.header_timeout,
            keepalive_timeout=opts.keepalive_timeout,
            tunnel_idle_timeout=opts.tunnel_idle_timeout,
            drain_linger=opts.drain_linger,
            escaped_slashes=opts.escaped_slashes,
            trusted_proxies=trusted_proxies,
        ),
    )

    # Series of routes a new table no longer has leave /metrics (the listener runs where swaps do).
    store.on_swap(lambda snapshot: gateway.stats.retain(snapshot.routes))
    store.on_swap(lambda snapshot: cache.retain(snapshot.routes))
    prober = HealthProber()  # active health checks of the backends that have one
    store.on_swap(prober.sync)
    store.on_swap(lambda snapshot: jwks.sync(_jwks_uris(snapshot)))
    routes_file = RoutesFile(opts.routes) if opts.routes is not None else None
    if opts.bootstrap is not None:
        _load_bootstrap(opts.bootstrap, store)
    if routes_file is not None:
        _reload(routes_file, store, gateway, watching=opts.watch_interval > 0)

    pushes = opts.push_token_file is not None or bool(os.environ.get("KUBEGATE_PUSH_TOKEN"))
    if not pushes:
        logger.warning("no push token configured (--push-token-file): PUT and PATCH /table are refused")
    if routes_file is None and store.current is None:
        why = (
            "no --routes, --bootstrap or --demo"
            if opts.bootstrap is None
            else "the bootstrap table was not loaded"
        )
        if pushes:
            logger.info(
                "no route table yet (%s): waiting for one to be pushed (PUT /table on the admin port, %s); "
                "/ready answers 503 until then",
                why,
                _url(opts.admin_host, opts.admin_port),
            )
        else:
            logger.warning(
                "nothing to serve (%s), and no table can be pushed without a push token "
                "(--push-token-file or $KUBEGATE_PUSH_TOKEN): every request gets 503, and so does /ready",
                why,
            )
    admin_app = build_admin_app(
        gateway,
        push_token=pushtoken.RotatingToken(
            push_token_source(opts.push_token_file), grace=opts.push_token_grace
        ),
        on_traffic_loop=run_on_traffic_loop(loop),
        # what the demo's echo backend calls itself in its answers, as a name for /services/{name}
        service_aliases={DEMO_ECHO_NAME: f"127.0.0.1:{DEMO_ECHO_PORT}"} if opts.demo else None,
    )
    traffic = _Server(
        GatewayConfig(
            gateway,
            host=opts.host,
            port=opts.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(opts.drain_timeout),
        ),
        "traffic port",
    )
    secure: _Server | None = None
    if tls_contexts is not None:
        assert opts.tls_port is not None
        secure = _Server(
            GatewayConfig(
                gateway,
                tls=tls_contexts.context,
                host=opts.host,
                port=opts.tls_port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=int(opts.drain_timeout),
            ),
            "TLS port",
        )
    admin = AdminServer(
        admin_app,
        host=opts.admin_host,
        port=opts.admin_port,
        limits=AdminLimits(
            max_head_bytes=gateway.settings.max_header_bytes,
            head_timeout=opts.header_timeout,
            body_timeout=opts.admin_body_timeout,
            keepalive_timeout=opts.keepalive_timeout,
            max_connections=opts.admin_max_connections,
        ),
    )

    stopping = asyncio.Event()

    def on_stop() -> None:
        if not stopping.is_set():
            logger.info("shutting down: draining for up to %.0fs", opts.drain_timeout)
            gateway.start_draining(loop.time())
            traffic.should_exit = True
            if secure is not None:
                secure.should_exit = True
            stopping.set()
        else:
            traffic.force_exit = True
            if secure is not None:
                secure.force_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    if routes_file is not None:
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: _reload(routes_file, store, gateway, force=True, watching=opts.watch_interval > 0),
        )

    async def housekeeping() -> None:
        last_check = loop.time()
        while True:
            await asyncio.sleep(min(1.0, opts.watch_interval or 1.0))
            now = loop.time()
            gateway.sweep(now)
            if (
                routes_file is not None
                and opts.watch_interval > 0
                and now - last_check >= opts.watch_interval
            ):
                last_check = now
                if routes_file.changed():
                    _reload(routes_file, store, gateway)

    # Everything allocated so far (modules, the first table) lives for the whole process: keep it out of
    # the garbage collector's full scans, which would otherwise show up as latency spikes under load.
    gc.collect()
    gc.freeze()
    # The admin thread hands the interpreter back every millisecond instead of every 5 (the default):
    # while it renders /metrics or validates a push, a proxied request waits for the interpreter a few
    # times, and that wait is what bench/admin_bench.py measures as added traffic latency (p50 12 ms →
    # 4 ms while /metrics of 10,000 routes renders). With one thread busy nothing changes.
    sys.setswitchinterval(0.001)
    if not await admin.start():
        logger.error("admin port %s:%d could not be opened", opts.admin_host, opts.admin_port)
        return 1
    logger.info("admin port listening on %s", _url(opts.admin_host, opts.admin_port))
    compiled = _compiled.compiled_modules()
    logger.info(
        "hot path %s",
        f"compiled with mypyc ({len(compiled)} modules)" if compiled else "interpreted (plain Python)",
    )
    keeper = asyncio.create_task(housekeeping())
    echo: _Server | None = None
    if opts.demo:
        from kubegate.echo import make_echo_app

        echo = _Server(
            uvicorn.Config(
                make_echo_app(DEMO_ECHO_NAME),
                host="127.0.0.1",
                port=DEMO_ECHO_PORT,
                lifespan="off",
                log_config=None,
                access_log=False,
            ),
            f"demo echo backend {DEMO_ECHO_NAME!r}",
        )
        echo_task = asyncio.create_task(echo.serve())
    secure_failed = False

    async def serve_secure(server: _Server) -> None:
        nonlocal secure_failed
        try:
            await server.serve()
        except SystemExit:  # uvicorn's answer to a port it cannot open (logged by uvicorn)
            secure_failed = True
            logger.error("TLS port %s:%d could not be opened: stopping", opts.host, opts.tls_port)
            on_stop()

    secure_task = asyncio.create_task(serve_secure(secure)) if secure is not None else None
    try:
        await traffic.serve()
    finally:
        if secure is not None and secure_task is not None:
            secure.should_exit = True
            await secure_task
        gateway.draining = True
        keeper.cancel()
        gateway.pool.close_all()
        if gateway.access is not None:
            gateway.access.flush()  # the lines of the last requests, drained or not
        await prober.close()
        jwks.close()
        if redis is not None:
            redis.close()
            await redis.client.aclose()
        await admin.stop()
        if echo is not None:
            echo.should_exit = True
            await echo_task
    if traffic.started:
        logger.info("stopped")
    return 0 if traffic.started and not secure_failed else 1


def _reload(
    routes_file: RoutesFile,
    store: SnapshotStore,
    gateway: Gateway,
    *,
    force: bool = False,
    watching: bool = True,
) -> None:
    """Compile the routes file and swap it in only if it compiles cleanly; otherwise keep serving.

    A missing or empty file (truncated, or being written) is a warning, never an empty table; a file
    with objects but no route is served, with a warning. Backends that do not resolve are warned about
    once per table, when it is swapped in. ``watching``: the file is polled for changes (else SIGHUP
    alone re-reads it), which the warnings say.
    """
    try:
        compiled = routes_file.compile(force=force)
    except RoutesFileMissing:
        logger.warning(
            "routes file %s does not exist, %s: waiting for it (%s)",
            routes_file.path,
            _still_serving(store),
            "read as soon as it appears" if watching else "send SIGHUP once it is there",
        )
        return
    except RoutesFileEmpty:
        logger.warning(
            "routes file %s is empty (nothing but whitespace, comments or '---'), %s: %s (read again %s)",
            routes_file.path,
            _still_serving(store),
            "an empty file never replaces the table served" if store.current else "waiting for routes in it",
            "as soon as it changes" if watching else "on SIGHUP",
        )
        return
    except RoutesFileError as exc:
        logger.error("routes file not applied, %s: %s", _still_serving(store), exc)
        return
    if compiled is None:
        return
    table = compiled.table
    if store.current is not None and store.current.hash == table.content_hash():
        logger.info("routes file %s re-read: no change", routes_file.path)
        return
    try:
        snapshot = store.build(table)
    except ValueError as exc:
        logger.error("routes file not applied, %s: %s", _still_serving(store), exc)
        return
    to_oldest_generation()
    store.swap(snapshot)
    gateway.stats.table_swaps += 1
    logger.info(
        "serving table %s from %s (%s, %s)",
        table.version,
        routes_file.path,
        _routes(len(table.routes)),
        snapshot.hash,
    )
    if not table.routes:
        logger.warning(
            "routes file %s holds no GatewayRoute: serving an empty table (every request gets 404)",
            routes_file.path,
        )
    for warning in compiled.warnings:
        logger.warning("%s", warning)


def _load_bootstrap(path: Path, store: SnapshotStore) -> None:
    """Serve the bootstrap table; if it cannot be (unreadable, too large, invalid, or a route the matcher
    refuses), say why in one line and start unready, waiting for a push."""
    try:
        table = load_bootstrap(path)
        store.load(table)
    except RoutesFileError as exc:
        logger.error("bootstrap table not loaded: %s", exc)
        return
    except (ValueError, TypeError, RecursionError) as exc:
        logger.error("bootstrap table not loaded: %s: %s", path, str(exc)[:1000])
        return
    logger.info("serving bootstrap table %s from %s (%s)", table.version, path, _routes(len(table.routes)))


def _still_serving(store: SnapshotStore) -> str:
    if store.current is None:
        return "nothing is served yet"
    return f"still serving table {store.current.version}"


def _routes(count: int) -> str:
    return f"{count} route" if count == 1 else f"{count} routes"


def _jwks_uris(snapshot: Snapshot) -> set[str]:
    return {rt.edge.jwks_uri for rt in snapshot.routes.values() if rt.edge is not None and rt.edge.jwks_uri}
