"""Edge policies in the compiled table: CORS, header transforms, rewrite and redirect, as plain frozen config.

The public API (``GatewayRoute.spec.cors``, ``requestHeaders``, ``responseHeaders``, ``rewrite``,
``redirect``) is validated in :mod:`kubegate.api.models`; the compiler turns it into these models, with
header names in lower case, durations in seconds and every default filled in, so that the data plane never
interprets user syntax. The data plane builds its runtime objects from them
(:mod:`kubegate.dataplane.edge`).

A route without any edge policy has ``edge = None`` and costs the hot path nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from kubegate.api import duration, models
from kubegate.api.lean import LeanModel


class _Frozen(LeanModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class CorsPolicy(_Frozen):
    allow_origins: tuple[str, ...] = Field(min_length=1, alias="allowOrigins")
    allow_methods: tuple[str, ...] = Field(alias="allowMethods")
    allow_headers: tuple[str, ...] = Field(default=(), alias="allowHeaders")  # lower case
    expose_headers: tuple[str, ...] = Field(default=(), alias="exposeHeaders")  # lower case
    allow_credentials: bool = Field(default=False, alias="allowCredentials")
    max_age_seconds: int | None = Field(default=None, ge=0, alias="maxAgeSeconds")


class HeaderOps(_Frozen):
    """Applied in this order: set, add, remove (as the Gateway API's header modifiers). Names lower case."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


class Rewrite(_Frozen):
    """Exactly one of ``path_prefix`` (replaces ``matched_prefix``, the route's Prefix match) or
    ``full_path``."""

    path_prefix: str | None = Field(default=None, alias="pathPrefix")
    matched_prefix: str | None = Field(default=None, alias="matchedPrefix")
    full_path: str | None = Field(default=None, alias="fullPath")


class Redirect(_Frozen):
    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str | None = None
    status_code: Literal[301, 302, 303, 307, 308] = Field(default=302, alias="statusCode")


class EdgePolicy(_Frozen):
    """Every edge policy of one route; a field left None is a policy the route does not use."""

    cors: CorsPolicy | None = None
    request_headers: HeaderOps | None = Field(default=None, alias="requestHeaders")
    response_headers: HeaderOps | None = Field(default=None, alias="responseHeaders")
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None


def _ops(spec: models.HeaderOpsSpec | None) -> dict[str, object] | None:
    if spec is None:
        return None
    return {
        "set": [(h.name.lower(), h.value) for h in spec.set],
        "add": [(h.name.lower(), h.value) for h in spec.add],
        "remove": [name.lower() for name in spec.remove],
    }


def edge_problems(spec: models.GatewayRouteSpec) -> list[str]:
    """What the models cannot check alone: rules that need the route's match."""
    problems = []
    if spec.rewrite is not None and spec.rewrite.path_prefix is not None and spec.match.path.type != "Prefix":
        problems.append(
            f"spec.rewrite.pathPrefix: needs a Prefix path match (spec.match.path.type is "
            f"{spec.match.path.type}; use fullPath)"
        )
    return problems


def edge_policy(spec: models.GatewayRouteSpec) -> dict[str, object] | None:
    """The route's edge policies in table form, or None when it has none."""
    edge: dict[str, object] = {}
    if spec.cors is not None:
        c = spec.cors
        edge["cors"] = {
            "allowOrigins": sorted(set(c.allow_origins)),
            "allowMethods": sorted(set(c.allow_methods)),
            "allowHeaders": sorted({h.lower() for h in c.allow_headers}),
            "exposeHeaders": sorted({h.lower() for h in c.expose_headers}),
            "allowCredentials": c.allow_credentials,
            "maxAgeSeconds": duration.parse_duration(c.max_age) // 1000 if c.max_age is not None else None,
        }
    if spec.request_headers is not None:
        edge["requestHeaders"] = _ops(spec.request_headers)
    if spec.response_headers is not None:
        edge["responseHeaders"] = _ops(spec.response_headers)
    if spec.rewrite is not None:
        r = spec.rewrite
        edge["rewrite"] = {
            "pathPrefix": r.path_prefix,
            "matchedPrefix": spec.match.path.value if r.path_prefix is not None else None,
            "fullPath": r.full_path,
        }
    if spec.redirect is not None:
        d = spec.redirect
        edge["redirect"] = {
            "scheme": d.scheme,
            "hostname": d.hostname,
            "port": d.port,
            "path": d.path,
            "statusCode": d.status_code,
        }
    return edge or None
