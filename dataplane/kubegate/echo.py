"""``kubegate echo``: a tiny HTTP backend that answers with what it received, for the quickstart and demos.

It answers every request with JSON describing the request (method, path, query, headers, body size) and
its own name, so that a newcomer can see routing, forwarded headers and load balancing at work.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import uvicorn

logger = logging.getLogger("kubegate.echo")


def make_echo_app(name: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            digest.update(chunk)
            if not message.get("more_body"):
                break
        body = (
            json.dumps(
                {
                    "backend": name,
                    "method": scope["method"],
                    "path": scope["path"],
                    "query": scope["query_string"].decode("latin-1"),
                    "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
                    "bodyBytes": size,
                    "bodySha256": digest.hexdigest(),
                },
                indent=2,
            ).encode()
            + b"\n"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def run_echo(host: str, port: int, name: str) -> None:
    """Serve until interrupted; logs (JSON, set up by the caller) say where, and why it could not start."""
    logger.info("echo backend %r on http://%s:%d", name, host, port)
    uvicorn.run(make_echo_app(name), host=host, port=port, log_config=None, access_log=False, lifespan="off")
