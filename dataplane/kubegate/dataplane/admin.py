"""The admin API (a Starlette app on the admin port, never on the traffic port).

Liveness, readiness, Prometheus metrics, read-only views of what is being served, and ``PUT /table``:
the operator's way to replace the route table. ``PATCH /table`` takes a
:class:`~kubegate.compiler.table.TableDelta` instead (the routes that changed, a few kilobytes where the
whole table of 10,000 routes is 3.4 MB): 409 when it was made for another table than the one served, and
the operator then pushes the whole table. A push is authenticated with a bearer token (no token
configured means pushes are refused), validated completely — model, then snapshot build — before the
atomic swap, and rejected with 400 and the reasons otherwise, while the old table keeps serving.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kubegate import gcpause
from kubegate.compiler.table import DeltaConflict, RouteTable, TableDelta
from kubegate.dataplane.proxy import Gateway
from kubegate.dataplane.snapshot import Snapshot
from kubegate.dataplane.stats import StatsCollector

logger = logging.getLogger("kubegate.admin")

MAX_TABLE_BYTES = 64 * 1024 * 1024


def table_info(snapshot: Snapshot | None) -> dict[str, Any]:
    if snapshot is None:
        return {"version": None, "hash": None, "routes": 0, "loadedAt": None}
    return {
        "version": snapshot.version,
        "hash": snapshot.hash,
        "routes": len(snapshot.routes),
        "loadedAt": snapshot.loaded_at,
    }


def _route_summary(snapshot: Snapshot) -> list[dict[str, Any]]:
    out = []
    for rt in snapshot.routes.values():
        r = rt.route
        out.append(
            {
                "id": r.id,
                "generation": r.generation,
                "match": r.match.model_dump(mode="json", by_alias=True, exclude_defaults=True),
                "backends": [
                    {"name": b.name, "weight": b.weight, "endpoints": len(b.endpoints), "error": b.error}
                    for b in r.backends
                ],
                "timeoutMs": r.timeout_ms,
            }
        )
    return out


def _services(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = {}
    for rt in snapshot.routes.values():
        for b in rt.route.backends:
            entry = services.setdefault(
                b.name,
                {
                    "name": b.name,
                    "endpoints": [f"{e.host}:{e.port}" for e in b.endpoints],
                    "error": b.error,
                    "routes": [],
                },
            )
            entry["routes"].append(rt.id)
    return services


def _service_aliases(name: str) -> set[str]:
    """``service:default/users:8080`` is also found as ``default/users`` and ``users``."""
    aliases = {name}
    if name.startswith("service:"):
        ref = name[len("service:") :].rsplit(":", 1)[0]
        aliases.add(ref)
        aliases.add(ref.split("/", 1)[-1])
    return aliases


def build_admin_app(
    gateway: Gateway,
    *,
    push_token: Callable[[], str | None],
    on_table: Callable[[Snapshot], None] | None = None,
) -> Starlette:
    store = gateway.store
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(gateway.stats, table_info=lambda: table_info(store.current)))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        if gateway.draining:
            return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
        if store.current is None:
            return JSONResponse({"ready": False, "reason": "no route table loaded"}, status_code=503)
        return JSONResponse({"ready": True, "version": store.current.version})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def routes(request: Request) -> Response:
        snap = store.current
        return JSONResponse(
            {"version": snap.version if snap else None, "routes": _route_summary(snap) if snap else []}
        )

    async def services(request: Request) -> Response:
        snap = store.current
        return JSONResponse(
            {"services": sorted(_services(snap).values(), key=lambda s: s["name"]) if snap else []}
        )

    async def service(request: Request) -> Response:
        name = request.path_params["name"]
        snap = store.current
        found = [s for key, s in _services(snap).items() if name in _service_aliases(key)] if snap else []
        if not found:
            return JSONResponse({"error": f"no backend named {name!r} in the current table"}, status_code=404)
        return JSONResponse({"services": found})

    async def get_table(request: Request) -> Response:
        return JSONResponse(table_info(store.current))

    async def read_push(request: Request) -> Response | object:
        """The authenticated, size-checked JSON body of a push, or the error response."""
        token = push_token()
        if not token:
            return JSONResponse(
                {"error": "table pushes are disabled: no push token is configured on this data plane"},
                status_code=403,
            )
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return JSONResponse(
                {"error": "missing bearer token"}, status_code=401, headers={"www-authenticate": "Bearer"}
            )
        if not hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return JSONResponse({"error": "invalid bearer token"}, status_code=403)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_TABLE_BYTES:
            return JSONResponse({"error": f"table larger than {MAX_TABLE_BYTES} bytes"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_TABLE_BYTES:
                return JSONResponse({"error": f"table larger than {MAX_TABLE_BYTES} bytes"}, status_code=413)
        try:
            with gcpause.paused():
                data: object = json.loads(body)
        except ValueError as exc:
            return JSONResponse({"error": "body is not valid JSON", "reasons": [str(exc)]}, status_code=400)
        return data

    def install(build: Callable[[], RouteTable]) -> Response:
        """Build the table and its snapshot, then swap it in; 400 (old table kept) when that fails."""
        try:
            with gcpause.paused():
                table = build()
            snapshot = store.build(table)
        except ValidationError as exc:
            reasons = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
            return JSONResponse({"error": "invalid route table", "reasons": reasons}, status_code=400)
        except DeltaConflict as exc:
            return JSONResponse(
                {
                    "error": "the delta does not fit the table served",
                    "reasons": [str(exc)],
                    **table_info(store.current),
                },
                status_code=409,
            )
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": "invalid route table", "reasons": [str(exc)]}, status_code=400)
        store.swap(snapshot)
        gateway.stats.table_swaps += 1
        if on_table is not None:
            on_table(snapshot)
        logger.info(
            "table %s swapped in (%d routes, %s)", snapshot.version, len(snapshot.routes), snapshot.hash
        )
        return JSONResponse(table_info(snapshot))

    async def put_table(request: Request) -> Response:
        data = await read_push(request)
        if isinstance(data, Response):
            return data
        previous = store.current.table if store.current else None
        return install(lambda: RouteTable.from_wire(data, previous=previous))

    async def patch_table(request: Request) -> Response:
        data = await read_push(request)
        if isinstance(data, Response):
            return data
        current = store.current
        if current is None:
            return JSONResponse(
                {"error": "no table is served yet: push the whole table with PUT", **table_info(None)},
                status_code=409,
            )
        return install(lambda: TableDelta.model_validate(data).apply(current.table))

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/metrics", metrics),
            Route("/routes", routes),
            Route("/services", services),
            Route("/services/{name:path}", service),
            Route("/table", get_table, methods=["GET"]),
            Route("/table", put_table, methods=["PUT"]),
            Route("/table", patch_table, methods=["PATCH"]),
        ]
    )
