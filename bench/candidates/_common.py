"""What every candidate proxy shares, so that they differ only in the server framework and upstream client:
the upstream and pool size from the environment, the hop-by-hop headers (kubegate's own list), reading
a request body, and for the plain ASGI candidates the lifespan loop, the upstream URL and the 502."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from kubegate.dataplane.httpbits import HOP_BY_HOP as HOP_BY_HOP_BYTES

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:8081").rstrip("/")
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "100"))
HOP_BY_HOP = frozenset(name.decode("latin-1") for name in HOP_BY_HOP_BYTES)


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += bytes(message.get("body", b""))
        if not message.get("more_body", False):
            return body


async def lifespan(
    receive: Any, send: Any, start: Callable[[], None], stop: Callable[[], Awaitable[None]]
) -> None:
    """The ASGI lifespan protocol: ``start()`` opens the client, ``stop()`` closes it."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


def upstream_url(scope: dict[str, Any]) -> str:
    """The upstream URL for the request: raw path and query, as received."""
    url = UPSTREAM + scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        url += "?" + scope["query_string"].decode("latin-1")
    return url


async def bad_gateway(send: Any, exc: BaseException) -> None:
    """A 502 naming the upstream error (before any response byte was sent)."""
    msg = f"upstream error: {exc!r}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 502,
            "headers": [(b"content-length", str(len(msg)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": msg})
