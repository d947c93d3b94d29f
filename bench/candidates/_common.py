"""What every candidate proxy shares, so that they differ only in the server framework and upstream client:
the upstream and pool size from the environment, the hop-by-hop headers (kubegate's own list) and reading
a request body."""

from __future__ import annotations

import os
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
