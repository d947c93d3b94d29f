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
import sys
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import uvicorn

from kubegate.dataplane.admin import build_admin_app, to_oldest_generation
from kubegate.dataplane.adminserver import AdminLimits, AdminServer
from kubegate.dataplane.healthprober import HealthProber
from kubegate.dataplane.pathnorm import EscapedSlashes
from kubegate.dataplane.proxy import Gateway, GatewayConfig, ProxySettings
from kubegate.dataplane.routesfile import RoutesFile, RoutesFileError, load_bootstrap
from kubegate.dataplane.snapshot import SnapshotStore

logger = logging.getLogger("kubegate.serve")

_T = TypeVar("_T")


@dataclass
class ServeOptions:
    host: str = "0.0.0.0"
    port: int = 8080
    admin_host: str = "0.0.0.0"
    admin_port: int = 9090
    routes: Path | None = None
    bootstrap: Path | None = None
    push_token_file: Path | None = None
    drain_timeout: float = 25.0
    watch_interval: float = 1.0
    access_log: bool = False
    demo: bool = False  # also run the echo backend on 127.0.0.1:9001 (the quickstart's target)
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    admin_body_timeout: float = 60.0  # a request body on the admin port must be complete within this
    admin_max_connections: int = 64
    tunnel_idle_timeout: float = 300.0
    escaped_slashes: EscapedSlashes = "reject"


def push_token_source(token_file: Path | None) -> Callable[[], str | None]:
    """The push token, re-read on every push so that a rotated Secret takes effect without a restart.

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
    """uvicorn's server without its own signal handling (this module handles signals for both)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(opts: ServeOptions) -> int:
    loop = asyncio.get_running_loop()
    store = SnapshotStore()
    gateway = Gateway(
        store=store,
        settings=ProxySettings(
            access_log=opts.access_log,
            header_timeout=opts.header_timeout,
            keepalive_timeout=opts.keepalive_timeout,
            tunnel_idle_timeout=opts.tunnel_idle_timeout,
            escaped_slashes=opts.escaped_slashes,
        ),
    )

    # Series of routes a new table no longer has leave /metrics (the listener runs where swaps do).
    store.on_swap(lambda snapshot: gateway.stats.retain(snapshot.routes))
    prober = HealthProber()  # active health checks of the backends that have one
    store.on_swap(prober.sync)
    routes_file = RoutesFile(opts.routes) if opts.routes is not None else None
    if opts.bootstrap is not None:
        _load_bootstrap(opts.bootstrap, store)
    if routes_file is not None:
        _reload(routes_file, store, gateway)

    if opts.push_token_file is None and not os.environ.get("KUBEGATE_PUSH_TOKEN"):
        logger.warning("no push token configured (--push-token-file): PUT and PATCH /table are refused")
    admin_app = build_admin_app(
        gateway,
        push_token=push_token_source(opts.push_token_file),
        on_traffic_loop=run_on_traffic_loop(loop),
    )
    traffic = _Server(
        GatewayConfig(
            gateway,
            host=opts.host,
            port=opts.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(opts.drain_timeout),
        )
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
            gateway.draining = True
            traffic.should_exit = True
            stopping.set()
        else:
            traffic.force_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    if routes_file is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(routes_file, store, gateway, force=True))

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
    keeper = asyncio.create_task(housekeeping())
    echo: _Server | None = None
    if opts.demo:
        from kubegate.echo import make_echo_app

        echo = _Server(
            uvicorn.Config(
                make_echo_app("echo-9001"),
                host="127.0.0.1",
                port=9001,
                lifespan="off",
                log_config=None,
                access_log=False,
            )
        )
        echo_task = asyncio.create_task(echo.serve())
    try:
        await traffic.serve()
    finally:
        gateway.draining = True
        keeper.cancel()
        gateway.pool.close_all()
        await prober.close()
        await admin.stop()
        if echo is not None:
            echo.should_exit = True
            await echo_task
    return 0 if traffic.started else 1


def _reload(routes_file: RoutesFile, store: SnapshotStore, gateway: Gateway, *, force: bool = False) -> None:
    """Compile the routes file and swap it in only if it compiles cleanly; otherwise keep serving."""
    try:
        table = routes_file.compile(force=force)
    except RoutesFileError as exc:
        logger.error("routes file not applied, still serving table %s: %s", _version(store), exc)
        return
    if table is None:
        return
    if store.current is not None and store.current.hash == table.content_hash():
        logger.info("routes file %s re-read: no change", routes_file.path)
        return
    try:
        snapshot = store.build(table)
    except ValueError as exc:
        logger.error("routes file not applied, still serving table %s: %s", _version(store), exc)
        return
    to_oldest_generation()
    store.swap(snapshot)
    gateway.stats.table_swaps += 1
    logger.info(
        "serving table %s from %s (%d routes, %s)",
        table.version,
        routes_file.path,
        len(table.routes),
        snapshot.hash,
    )


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
    logger.info("serving bootstrap table %s from %s (%d routes)", table.version, path, len(table.routes))


def _version(store: SnapshotStore) -> str:
    return store.current.version if store.current is not None else "(none)"
