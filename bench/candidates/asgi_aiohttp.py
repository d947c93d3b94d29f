"""Upstream-client candidate: a plain ASGI callable (no framework) over one ``aiohttp.ClientSession``.

Same conditions as the other candidates (uvicorn, uvloop, httptools, one worker, keep-alive pool of
``$BENCH_POOL_SIZE`` connections to ``$BENCH_UPSTREAM``); only the upstream client differs, so the
difference to ``starlette_httpx`` is framework + client, and to ``asgi_aiosonic`` the client alone.

Run: ``BENCH_UPSTREAM=http://127.0.0.1:8081 uvicorn --app-dir bench/candidates asgi_aiohttp:app
--loop uvloop --http httptools --no-access-log``
"""

from __future__ import annotations

from typing import Any

import aiohttp
from _common import HOP_BY_HOP_BYTES as HOP_BY_HOP
from _common import POOL_SIZE, bad_gateway, lifespan, read_body, upstream_url
from multidict import CIMultiDict
from yarl import URL

session: aiohttp.ClientSession | None = None


def _start() -> None:
    global session
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL_SIZE, limit_per_host=POOL_SIZE, keepalive_timeout=60),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=30, connect=5),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
    )


async def _stop() -> None:
    if session is not None:
        await session.close()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, _start, _stop)
        return
    if scope["type"] != "http":
        return
    assert session is not None
    headers: CIMultiDict[str] = CIMultiDict()
    has_body = False
    for k, v in scope["headers"]:
        if k in HOP_BY_HOP:
            has_body = has_body or k == b"transfer-encoding"
            continue
        has_body = has_body or k == b"content-length"
        headers.add(k.decode("latin-1"), v.decode("latin-1"))
    body = await read_body(receive) if has_body else None
    url = upstream_url(scope)
    started = False
    try:
        async with session.request(
            scope["method"], URL(url, encoded=True), headers=headers, data=body, allow_redirects=False
        ) as resp:
            out = [(k, v) for k, v in resp.raw_headers if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            started = True
            content = resp.content
            while True:
                chunk = await content.readany()
                if not chunk:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                done = content.at_eof()
                await send({"type": "http.response.body", "body": chunk, "more_body": not done})
                if done:
                    return
    except aiohttp.ClientError as exc:
        if started:
            raise
        await bad_gateway(send, exc)
