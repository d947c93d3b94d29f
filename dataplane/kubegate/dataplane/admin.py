"""The admin API (a Starlette app on the admin port, never on the traffic port).

Liveness, readiness, Prometheus metrics, read-only views of what is being served, and ``PUT /table``:
the operator's way to replace the route table. ``PATCH /table`` takes a
:class:`~kubegate.compiler.table.TableDelta` instead (the routes that changed, a few kilobytes where the
whole table of 10,000 routes is 3.4 MB): 409 when it was made for another table than the one served, and
the operator then pushes the whole table. A push is authenticated with a bearer token (no token
configured means pushes are refused; through a rotation of the token, the previous one is admitted for
a grace period, sent as ``Authorization`` or as ``kubegate-previous-token``: see
:mod:`kubegate.pushtoken`; refusals are counted in ``kubegate_push_refusals_total``), validated
completely — model, then snapshot build — before the atomic swap, and rejected with 400 and the reasons
otherwise, while the old table keeps serving.

``PUT /replicas`` (``{"replicas": N}``, the same token) is the operator's way to say how many data-plane
replicas there are: a Global rate limit falls back to ``1/N`` of its rate while Redis is away (and without
Redis), and N changes with the replica set while the table often does not (see "The replicas' share" in
:mod:`kubegate.dataplane.policies.ratelimit`). A table push may carry the count too, in a
``kubegate-replicas`` header, applied with the table in the same step on the traffic loop, so that the
usual case (a new table) needs no second request. A bad count is 400 and changes nothing (a push with one
is refused whole). ``GET /replicas``, ``GET /table``, ``/health`` and ``/routes`` show the count; it is 1
until told (standalone, always).

The app is served on an event loop of its own (:mod:`kubegate.dataplane.adminserver`), and what costs more
than a dictionary lookup runs on one worker thread besides: parsing and validating a push (within
:class:`~kubegate.compiler.table.WireLimits`: 413 past them), rendering ``/metrics``, and rendering the
``/routes`` and ``/services`` views, once per table (they are then served from memory). Concurrent
requests for the same rendering share one run. Only the swap itself runs on the traffic loop, through
``on_traffic_loop``. Refusals are small JSON bodies, never a traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kubegate import gcpause, pushtoken
from kubegate.compiler.table import (
    WIRE_LIMITS,
    BackendTls,
    DeltaConflict,
    RouteTable,
    TableDelta,
    TableTooLarge,
    WireLimits,
    check_size,
    load_json,
)
from kubegate.compiler.tls import RouteTls
from kubegate.dataplane.caching import CacheCollector
from kubegate.dataplane.policies.ratelimit import ReplicaCount, parse_replicas
from kubegate.dataplane.policymetrics import PolicyCollector, policy_state
from kubegate.dataplane.proxy import Gateway
from kubegate.dataplane.ratelimiting import RateLimitCollector, RouteLimit
from kubegate.dataplane.snapshot import Snapshot
from kubegate.dataplane.stats import StatsCollector

logger = logging.getLogger("kubegate.admin")

MAX_TABLE_BYTES = 64 * 1024 * 1024
MAX_REASON_CHARS = 1000  # one reason of a refusal (a message may quote what was pushed)
MAX_REPLICAS_BYTES = 1024  # the body of PUT /replicas
#: The header of a table push that carries the replica count along.
REPLICAS_HEADER = "kubegate-replicas"

_T = TypeVar("_T")


class LoopRunner(Protocol):
    """Runs a function on the traffic loop (where the snapshot is swapped) and returns its result."""

    def __call__(self, fn: Callable[[], _T], /) -> Awaitable[_T]: ...


async def _inline(fn: Callable[[], _T]) -> _T:
    return fn()


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
                    {
                        "name": b.name,
                        "weight": b.weight,
                        "endpoints": len(b.endpoints),
                        "error": b.error,
                        **({"tls": _backend_tls_summary(b.tls)} if b.tls is not None else {}),
                    }
                    for b in r.backends
                ],
                "timeoutMs": r.timeout_ms,
                "policies": sorted(r.policy.model_dump(by_alias=True, exclude_none=True)) if r.policy else [],
                "edge": sorted(r.edge.model_dump(by_alias=True, exclude_none=True)) if r.edge else [],
                "tls": _tls_summary(r.tls),
            }
        )
    return out


def _backend_tls_summary(tls: BackendTls) -> dict[str, Any]:
    """A backend's TLS: the name verified and where its CAs come from, never the CA's PEM."""
    return {
        "serverName": tls.server_name,
        "verify": tls.verify,
        "ca": "system" if tls.ca is None else "secret",
    }


def _tls_summary(tls: RouteTls | None) -> dict[str, Any] | None:
    """A route's TLS without the certificates' PEM (and so without their private keys)."""
    if tls is None:
        return None
    certificates = [
        {"secret": c.secret, "dnsNames": list(c.dns_names), "notAfter": c.not_after} for c in tls.certificates
    ]
    return {"certificates": certificates, "redirectHTTP": tls.redirect_http, "error": tls.error}


def _route_limits(snapshot: Snapshot | None) -> list[tuple[str, RouteLimit]]:
    """The rate limits of the table being served, by route (for ``/metrics``)."""
    if snapshot is None:
        return []
    return [(rid, rt.edge.limit) for rid, rt in snapshot.routes.items() if rt.edge and rt.edge.limit]


def _routes_policy_state(snapshot: Snapshot) -> dict[str, Any]:
    """Live, per route with traffic policies: each backend's breaker and each endpoint's standing (the
    routes without policies have no state to show)."""
    now = time.monotonic()  # the traffic loop's clock (uvloop and asyncio both read CLOCK_MONOTONIC)
    return {rid: policy_state(rt.policies, now) for rid, rt in snapshot.routes.items() if rt.policies}


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


def _with_policy_state(entry: dict[str, Any], snapshot: Snapshot) -> dict[str, Any]:
    """A ``/services/{name}`` entry plus, live, the policy state each route keeps for this backend: the
    circuit breaker and every endpoint's standing (in flight, healthy, ejected and for how long)."""
    states = {}
    now = time.monotonic()  # the traffic loop's clock (uvloop and asyncio both read CLOCK_MONOTONIC)
    for rid in entry["routes"]:
        rt = snapshot.routes.get(rid)
        if rt is None or rt.policies is None:
            continue
        for backend in policy_state(rt.policies, now)["backends"]:
            if backend["name"] == entry["name"]:
                states[rid] = backend
    return {**entry, "policyState": states} if states else entry


def _service_aliases(name: str) -> set[str]:
    """The names ``/services/{name}`` finds a backend by, besides its own: ``service:default/users:8080``
    is also ``default/users:8080``, ``users:8080``, ``default/users`` and ``users`` (the Service, in
    whatever namespace); ``url:http://127.0.0.1:9001`` is also ``http://127.0.0.1:9001`` (as written in
    the route) and ``127.0.0.1:9001``."""
    aliases = {name}
    if name.startswith("service:"):
        with_port = name[len("service:") :]
        ref = with_port.rsplit(":", 1)[0]
        aliases.update((with_port, with_port.split("/", 1)[-1], ref, ref.split("/", 1)[-1]))
    elif name.startswith("url:"):
        url = name[len("url:") :]
        aliases.update((url, url.removeprefix("http://")))
    return aliases


def _encode(value: object) -> bytes:
    """JSON as Starlette's ``JSONResponse`` writes it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _encode_list(items: list[Any]) -> bytes:
    """A JSON array encoded an item at a time: many short C calls rather than one long one."""
    return b"[" + b",".join(_encode(item) for item in items) + b"]"


class Views:
    """The read-only views of one snapshot, rendered once (0.4 s of work at 10,000 routes)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        version = _encode(snapshot.version)
        self.routes = b'{"version":' + version + b',"routes":' + _encode_list(_route_summary(snapshot))
        self.with_policies = any(rt.policies is not None for rt in snapshot.routes.values())
        services = _services(snapshot)
        ordered = sorted(services.values(), key=lambda s: s["name"])
        self.services = b'{"services":' + _encode_list(ordered) + b"}"
        self.by_alias: dict[str, list[dict[str, Any]]] = {}
        for name, entry in services.items():
            for alias in _service_aliases(name):
                self.by_alias.setdefault(alias, []).append(entry)


def to_oldest_generation() -> None:
    """Move every object the collector tracks into its oldest generation.

    A table of 10,000 routes is about a million objects, allocated with the collector paused. Left in
    the young generation, they would be scanned by the next young collection, then again by the next
    middle one (60-200 ms each, holding the interpreter: on whatever thread allocates next, often the
    traffic loop's), and counted as new long-lived objects, which starts a full collection soon after.
    ``freeze()`` moves everything into the permanent generation and ``unfreeze()`` all of it into the
    oldest one: two list splices. Nothing leaks: young garbage, if any, waits for the next full
    collection instead of the next young one (and the objects frozen at start-up, a few tens of
    thousands, become collectable again).
    """
    gc.freeze()
    gc.unfreeze()


def _render_metrics(registry: CollectorRegistry) -> bytes:
    with gcpause.paused():  # as for the views
        return generate_latest(registry)


def install(
    gateway: Gateway, snapshot: Snapshot, on_table: Callable[[Snapshot], None] | None
) -> Snapshot | None:
    """Swap ``snapshot`` in (on the traffic loop); returns the snapshot it replaces."""
    previous = gateway.store.swap(snapshot)
    gateway.stats.table_swaps += 1
    if on_table is not None:
        on_table(snapshot)
    return previous


def _reasons(exc: ValidationError, limits: WireLimits) -> list[str]:
    reasons = []
    for e in exc.errors()[: limits.max_errors + 1]:
        reasons.append(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}")
    return [_clip(r) for r in reasons]


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."


def _refuse(status: int, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A refusal of a push whose body may be left unread: the connection is not kept."""
    return JSONResponse(
        {"error": error}, status_code=status, headers={"connection": "close", **(headers or {})}
    )


class PushAuthCollector:
    """``/metrics`` of push authentication: refusals by reason (``missing``: no bearer token, ``invalid``:
    no presented token is accepted), rotations of the token seen, and the seconds left of the previous
    token's grace. Never a token."""

    def __init__(self, tokens: pushtoken.RotatingToken) -> None:
        self.tokens = tokens
        self.refusals = {"missing": 0, "invalid": 0}

    def collect(self) -> list[Metric]:
        refusals = CounterMetricFamily(
            "kubegate_push_refusals",
            "Pushes (PUT/PATCH /table, PUT /replicas) refused for their token, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(self.refusals.items()):
            refusals.add_metric([reason], count)
        rotations = CounterMetricFamily(
            "kubegate_push_token_rotations", "Changes of the push token seen since start"
        )
        rotations.add_metric([], self.tokens.rotations)
        grace = GaugeMetricFamily(
            "kubegate_push_token_grace_seconds",
            "Seconds the push token before the last rotation is still accepted (0: none)",
        )
        grace.add_metric([], self.tokens.grace_left())
        return [refusals, rotations, grace]


def build_admin_app(
    gateway: Gateway,
    *,
    push_token: Callable[[], str | None] | pushtoken.RotatingToken,
    on_table: Callable[[Snapshot], None] | None = None,
    on_traffic_loop: LoopRunner | None = None,
    limits: WireLimits = WIRE_LIMITS,
    max_table_bytes: int = MAX_TABLE_BYTES,
    worker: concurrent.futures.Executor | None = None,
    service_aliases: Mapping[str, str] | None = None,
    replicas: ReplicaCount | None = None,
) -> Starlette:
    """The admin app. ``on_traffic_loop`` runs the swap where the proxy runs (default: right here, for an
    app served on the traffic loop itself); ``worker`` runs the heavy work (default: one thread);
    ``service_aliases`` are more names for ``/services/{name}``, each standing for another name it
    accepts (``kubegate serve --demo``: its echo backend's ``echo-9001`` for ``127.0.0.1:9001``);
    ``replicas`` is the count ``PUT /replicas`` sets (default: the store's ``EdgeContext.replicas``, the
    one the rate limits read; a store without a context gets one of its own)."""
    store = gateway.store
    tokens = (
        push_token if isinstance(push_token, pushtoken.RotatingToken) else pushtoken.RotatingToken(push_token)
    )
    push_auth = PushAuthCollector(tokens)
    count = replicas if replicas is not None else ReplicaCount()
    if replicas is None and store.context is not None:
        count = store.context.replicas
    run_swap: LoopRunner = on_traffic_loop or _inline
    pool = worker or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kubegate-admin-work")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        StatsCollector(
            gateway.stats,
            table_info=lambda: table_info(store.current),
            live_routes=lambda: store.current.routes if store.current is not None else {},
        )
    )
    registry.register(PolicyCollector(lambda: store.current))
    registry.register(push_auth)
    if store.context is not None and store.context.cache is not None:
        registry.register(CacheCollector(store.context.cache))
    registry.register(
        RateLimitCollector(
            lambda: _route_limits(store.current), store.context.redis if store.context is not None else None
        )
    )
    shared: dict[object, asyncio.Future[Any]] = {}
    push_lock = asyncio.Lock()
    views_cache: list[Views] = []

    async def in_worker(fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def once(key: object, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` in the worker; callers asking for the same ``key`` meanwhile share that run."""
        job = shared.get(key)
        if job is None:
            job = shared[key] = asyncio.ensure_future(in_worker(fn))
            job.add_done_callback(lambda _: shared.pop(key, None))
        result: _T = await asyncio.shield(job)
        return result

    async def views() -> Views | None:
        snap = store.current
        if snap is None:
            return None
        if views_cache and views_cache[0].snapshot is snap:
            return views_cache[0]

        def render() -> Views:
            with gcpause.paused():  # its garbage is freed as it goes: leave the collector no debt
                rendered = Views(snap)
            views_cache[:] = [rendered]
            return rendered

        return await once(("views", id(snap)), render)

    async def health(request: Request) -> Response:
        """Always 200 while the process serves; a Redis that is down is a detail here (the data plane
        still serves: Global rate limits fall back to local ones), never a failed probe."""
        context = store.context
        body: dict[str, Any] = {"status": "ok", "replicas": count.count}
        if context is not None and context.redis is not None:
            body["redis"] = context.redis.status()
        if context is not None and context.cache is not None:  # the memory store, requests waiting for a fill
            body["cache"] = context.cache.status()
        return JSONResponse(body)

    async def ready(request: Request) -> Response:
        if gateway.draining:
            return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
        if store.current is None:
            return JSONResponse({"ready": False, "reason": "no route table loaded"}, status_code=503)
        return JSONResponse({"ready": True, "version": store.current.version})

    async def metrics(request: Request) -> Response:
        text = await once("metrics", lambda: _render_metrics(registry))
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def routes(request: Request) -> Response:
        v = await views()
        if v is None:
            return Response(b'{"version":null,"routes":[]}', media_type="application/json")
        live = b""
        if v.with_policies:  # the summary is rendered once per table; the policy state is read now
            live = b',"policyState":' + _encode(_routes_policy_state(v.snapshot))
        context = store.context
        if context is not None and context.jwks is not None:  # the issuers' key sets (no key material)
            jwks = context.jwks.state()["jwks"]
            if jwks:
                live += b',"jwks":' + _encode(jwks)
        if context is not None and context.redis is not None:  # the Redis of Global rate limits
            live += b',"redis":' + _encode(context.redis.status())
        live += b',"replicas":%d' % count.count  # Global limits fall back to 1/replicas of their rate
        caches = {
            rid: rt.edge.cache.status() for rid, rt in v.snapshot.routes.items() if rt.edge and rt.edge.cache
        }
        if caches and context is not None and context.cache is not None:  # each route's store and counters
            live += b',"cache":' + _encode({**context.cache.status(), "routes": caches})
        return Response(v.routes + live + b"}", media_type="application/json")

    async def services(request: Request) -> Response:
        v = await views()
        return Response(v.services if v else b'{"services":[]}', media_type="application/json")

    async def service(request: Request) -> Response:
        name = request.path_params["name"]
        v = await views()
        found = v.by_alias.get(name, []) if v else []
        if not found and service_aliases and name in service_aliases:
            found = v.by_alias.get(service_aliases[name], []) if v else []
        if not found:
            return JSONResponse(
                {
                    "error": f"no backend named {name!r} in the current table (GET /services lists them; "
                    "a Service is also found by its name or namespace/name, a url backend by its URL "
                    "or host:port)"
                },
                status_code=404,
            )
        snapshot = store.current
        if snapshot is not None:
            found = [_with_policy_state(entry, snapshot) for entry in found]
        return JSONResponse({"services": found})

    async def http_error(request: Request, exc: Exception) -> Response:
        """Unknown paths (404) and methods (405) answer in JSON, like everything else here."""
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            error = (
                "not found: the admin port serves /health, /ready, /metrics, /routes, /services, "
                "/services/{name}, /table and /replicas"
            )
        else:
            error = exc.detail.lower()
        return JSONResponse({"error": error}, status_code=exc.status_code, headers=exc.headers)

    async def get_table(request: Request) -> Response:
        return JSONResponse({**table_info(store.current), "replicas": count.count})

    async def read_push(
        request: Request, limit: int = max_table_bytes, what: str = "table"
    ) -> bytearray | Response:
        """The authenticated, size-checked body of a push, or the error response. The token is read
        only for a request that carries one, and a wrong or unset token gets the same answer. The bearer
        token and the sender's previous token (``kubegate-previous-token``, sent during a rotation) are
        each compared with the current token and, during its grace, the previous one."""
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            push_auth.refusals["missing"] += 1
            return _refuse(401, "missing bearer token", {"www-authenticate": "Bearer"})
        presented = [auth[7:].strip(), request.headers.get(pushtoken.PREVIOUS_HEADER, "").strip()]
        if not pushtoken.admits(presented, tokens.accepted()):
            push_auth.refusals["invalid"] += 1
            return _refuse(403, "invalid bearer token")
        too_large = f"{what} larger than {limit} bytes"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _refuse(413, too_large)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return _refuse(413, too_large)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it
        return body  # not copied: 64 MiB take a tenth of a second to copy, in one step

    def pushed_count(request: Request) -> int | Response | None:
        """The ``kubegate-replicas`` header of a table push: the count, None without one, or the 400."""
        value = request.headers.get(REPLICAS_HEADER)
        if value is None:
            return None
        try:
            text = value.strip()
            if not (text.isascii() and text.isdigit()):
                raise ValueError(f"replicas must be a whole number, not {value[:40]!r}")
            return parse_replicas(int(text))
        except ValueError as exc:
            return JSONResponse(
                {"error": f"invalid {REPLICAS_HEADER} header", "reasons": [_clip(str(exc))]}, status_code=400
            )

    def counted(new: int, previous: int) -> None:
        if previous != new:
            logger.info(
                "%d data-plane replicas (was %d): Global rate limits fall back to 1/%d of their rate",
                new,
                previous,
                new,
            )

    async def get_replicas(request: Request) -> Response:
        return JSONResponse({"replicas": count.count})

    async def put_replicas(request: Request) -> Response:
        """``{"replicas": N}``, authenticated as a push: 200 with the count and the previous one; 400 and
        nothing changed for anything but a whole number from 1 to MAX_REPLICAS."""
        body = await read_push(request, MAX_REPLICAS_BYTES, "replica count")
        if isinstance(body, Response):
            return body
        try:
            document = json.loads(body)
            if not isinstance(document, dict) or set(document) != {"replicas"}:
                raise ValueError('expected {"replicas": N}')
            new = parse_replicas(document["replicas"])
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError included
            return JSONResponse(
                {"error": "invalid replica count", "reasons": [_clip(str(exc))]}, status_code=400
            )
        previous = count.set(new)  # one attribute: the rate limits resize at their next check
        counted(new, previous)
        return JSONResponse({"replicas": new, "previous": previous})

    async def swap_in(build: Callable[[], RouteTable], replicas: int | None = None) -> Response:
        """Build the table and its snapshot in the worker, then swap it in on the traffic loop (with the
        replica count the push carried, if any); 400 (413 over the limits, 409 for a delta that does not
        fit) with the old table, and the old count, kept when that fails."""

        def work() -> Snapshot:
            with gcpause.paused():
                snapshot = store.build(build())
                to_oldest_generation()
                return snapshot

        try:
            snapshot = await in_worker(work)
        except TableTooLarge as exc:
            return JSONResponse(
                {"error": "route table too large", "reasons": [_clip(str(exc))]}, status_code=413
            )
        except ValidationError as exc:
            return JSONResponse(
                {"error": "invalid route table", "reasons": _reasons(exc, limits)}, status_code=400
            )
        except DeltaConflict as exc:
            return JSONResponse(
                {
                    "error": "the delta does not fit the table served",
                    "reasons": [_clip(str(exc))],
                    **table_info(store.current),
                },
                status_code=409,
            )
        except (ValueError, TypeError, RecursionError) as exc:
            return JSONResponse(
                {"error": "invalid route table", "reasons": [_clip(str(exc))]}, status_code=400
            )

        was = count.count

        def swap() -> Snapshot | None:
            if replicas is not None:  # the table and the count change in the same step
                count.set(replicas)
            return install(gateway, snapshot, on_table)

        replaced: list[object] = [await run_swap(swap), *views_cache]
        views_cache.clear()
        await in_worker(replaced.clear)  # the old table is freed there, not on the traffic loop
        logger.info(
            "table %s swapped in (%d routes, %s)", snapshot.version, len(snapshot.routes), snapshot.hash
        )
        if replicas is not None:
            counted(replicas, was)
        return JSONResponse({**table_info(snapshot), "replicas": count.count})

    async def put_table(request: Request) -> Response:
        body = await read_push(request)
        if isinstance(body, Response):
            return body
        replicas = pushed_count(request)
        if isinstance(replicas, Response):
            return replicas
        async with push_lock:
            previous = store.current.table if store.current else None
            return await swap_in(
                lambda: RouteTable.from_wire(load_json(body, limits), previous=previous, limits=limits),
                replicas,
            )

    async def patch_table(request: Request) -> Response:
        body = await read_push(request)
        if isinstance(body, Response):
            return body
        replicas = pushed_count(request)
        if isinstance(replicas, Response):
            return replicas
        async with push_lock:
            current = store.current
            if current is None:
                return JSONResponse(
                    {"error": "no table is served yet: push the whole table with PUT", **table_info(None)},
                    status_code=409,
                )

            def build() -> RouteTable:
                table = TableDelta.from_wire(load_json(body, limits), limits=limits).apply(current.table)
                check_size(table, limits)
                return table

            return await swap_in(build, replicas)

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
            Route("/replicas", get_replicas, methods=["GET"]),
            Route("/replicas", put_replicas, methods=["PUT"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
