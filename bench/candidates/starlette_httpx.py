"""The naive design: a Starlette app whose catch-all route forwards through one shared ``httpx.AsyncClient``.

This is what a Python gateway usually looks like when written the obvious way (and what kubegate's data
plane was measured against): Starlette request/response objects, ``client.send(..., stream=True)``, and a
``StreamingResponse`` over ``aiter_raw()``. The pool is sized so that 64 client connections never wait
for an upstream connection (httpx's default keeps only 20 idle).

Run: ``BENCH_UPSTREAM=http://127.0.0.1:8081 uvicorn --app-dir bench/candidates starlette_httpx:app
--loop uvloop --http httptools --no-access-log``
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from _common import HOP_BY_HOP, POOL_SIZE, UPSTREAM
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

client: httpx.AsyncClient | None = None


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global client
    client = httpx.AsyncClient(
        base_url=UPSTREAM,
        limits=httpx.Limits(
            max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE, keepalive_expiry=60
        ),
        timeout=httpx.Timeout(30.0, connect=5.0),
        follow_redirects=False,
    )
    try:
        yield
    finally:
        await client.aclose()


async def proxy(request: Request) -> Response:
    assert client is not None
    headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1") not in HOP_BY_HOP]
    url = httpx.URL(path=request.url.path, query=request.url.query.encode("latin-1"))
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    upstream_request = client.build_request(
        request.method, url, headers=headers, content=request.stream() if has_body else None
    )
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.TransportError as exc:
        return Response(f"upstream error: {exc!r}\n", status_code=502)
    out_headers = [(k, v) for k, v in upstream.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP]
    response = StreamingResponse(
        upstream.aiter_raw(), status_code=upstream.status_code, background=BackgroundTask(upstream.aclose)
    )
    response.raw_headers = out_headers
    return response


app = Starlette(routes=[Route("/{path:path}", proxy, methods=METHODS)], lifespan=lifespan)
