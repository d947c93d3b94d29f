"""Upstream-client candidate: a plain ASGI callable (no framework) over one ``aiosonic.HTTPClient``.

Identical to ``asgi_aiohttp`` except for the client: aiosonic's ``TCPConnector`` with a pool of
``$BENCH_POOL_SIZE`` connections and no per-connection request limit, the response streamed with
``read_chunks()``.

Run: ``BENCH_UPSTREAM=http://127.0.0.1:8081 uvicorn --app-dir bench/candidates asgi_aiosonic:app
--loop uvloop --http httptools --no-access-log``
"""

from __future__ import annotations

from typing import Any

import aiosonic
from _common import HOP_BY_HOP, POOL_SIZE, bad_gateway, lifespan, read_body, upstream_url
from aiosonic.exceptions import AiosonicError
from aiosonic.pools import PoolConfig
from aiosonic.timeout import Timeouts

# What a failed exchange raises (connection refused or reset, timeouts, parse errors).
UPSTREAM_ERRORS = (OSError, AiosonicError)

client: aiosonic.HTTPClient | None = None


def _start() -> None:
    global client
    connector = aiosonic.TCPConnector(
        pool_configs={":default": PoolConfig(size=POOL_SIZE, max_conn_requests=None, max_conn_idle_ms=60000)},
        timeouts=Timeouts(sock_connect=5, request_timeout=30),
    )
    client = aiosonic.HTTPClient(connector=connector)


async def _stop() -> None:
    if client is not None:
        await client.aclose()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, _start, _stop)
        return
    if scope["type"] != "http":
        return
    assert client is not None
    headers: list[tuple[str, str]] = []
    has_body = False
    for k, v in scope["headers"]:
        name = k.decode("latin-1")
        if name in HOP_BY_HOP:
            has_body = has_body or name == "transfer-encoding"
            continue
        has_body = has_body or name == "content-length"
        headers.append((name, v.decode("latin-1")))
    body = await read_body(receive) if has_body else None
    url = upstream_url(scope)
    started = False
    try:
        async with client.stream(scope["method"], url, headers=headers, data=body, follow=False) as resp:
            out = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in resp.raw_headers
                if k.lower() not in HOP_BY_HOP
            ]
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
            started = True
            # read_chunks() needs a body to read: none after HEAD, 204 or 304 (aiosonic has no public test).
            if resp._has_pending_body():
                async for chunk in resp.read_chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except UPSTREAM_ERRORS as exc:
        if started:
            raise
        await bad_gateway(send, exc)
