"""``kubegate serve``: one process, two uvicorn servers on one event loop, and their lifecycle.

The traffic port runs :class:`~kubegate.dataplane.proxy.ProxyProtocol`; the admin port runs the Starlette
admin app. This module owns what is around them: where the first table comes from (a routes file in
standalone mode, a bootstrap file, or nothing until the operator pushes), re-reading the routes file on
change or SIGHUP, the once-a-second timeout sweeper, and graceful shutdown on SIGTERM (readiness goes 503,
listeners close, in-flight requests finish up to the drain timeout, then exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from kubegate.dataplane.admin import build_admin_app
from kubegate.dataplane.proxy import Gateway, GatewayConfig, ProxySettings
from kubegate.dataplane.routesfile import RoutesFile, RoutesFileError, load_bootstrap
from kubegate.dataplane.snapshot import SnapshotStore

logger = logging.getLogger("kubegate.serve")


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


def push_token_source(token_file: Path | None) -> Callable[[], str | None]:
    """The push token, re-read on every push so that a rotated Secret takes effect without a restart."""

    def read() -> str | None:
        if token_file is not None:
            try:
                return token_file.read_text().strip() or None
            except OSError:
                logger.error("cannot read push token file %s", token_file)
                return None
        return os.environ.get("KUBEGATE_PUSH_TOKEN") or None

    return read


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
        ),
    )

    routes_file = RoutesFile(opts.routes) if opts.routes is not None else None
    if opts.bootstrap is not None:
        try:
            table = load_bootstrap(opts.bootstrap)
            store.load(table)
            logger.info(
                "serving bootstrap table %s from %s (%d routes)",
                table.version,
                opts.bootstrap,
                len(table.routes),
            )
        except RoutesFileError as exc:
            logger.error("bootstrap table not loaded: %s", exc)
    if routes_file is not None:
        _reload(routes_file, store, gateway)

    admin_app = build_admin_app(gateway, push_token=push_token_source(opts.push_token_file))
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
    admin = _Server(
        uvicorn.Config(
            admin_app,
            host=opts.admin_host,
            port=opts.admin_port,
            lifespan="off",
            log_config=None,
            access_log=False,
        )
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
    keeper = asyncio.create_task(housekeeping())
    admin_task = asyncio.create_task(admin.serve())
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
        admin.should_exit = True
        await admin_task
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
    store.swap(snapshot)
    gateway.stats.table_swaps += 1
    logger.info(
        "serving table %s from %s (%d routes, %s)",
        table.version,
        routes_file.path,
        len(table.routes),
        snapshot.hash,
    )


def _version(store: SnapshotStore) -> str:
    return store.current.version if store.current is not None else "(none)"
