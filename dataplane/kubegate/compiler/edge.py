"""Edge policies in the compiled table: auth, rate limit, cache, CORS, header transforms, rewrite, redirect.

The public API (``GatewayRoute.spec.auth``, ``rateLimit``, ``cache``, ``cors``, ``requestHeaders``,
``responseHeaders``, ``rewrite``, ``redirect``) is validated in :mod:`kubegate.api.models`; the compiler
turns it into these models, with header names in lower case, durations in seconds and every default
filled in, so that the data plane never interprets user syntax. The data plane builds its runtime objects
from them (:mod:`kubegate.dataplane.edge`).

A route without any edge policy has ``edge = None`` and costs the hot path nothing.

Auth names Secrets of the route's namespace; :func:`auth_policy` resolves them (still pure: the Secrets
come in the bundle, from the cluster or the routes file). What a Secret holds travels in the table in the
form the data plane needs and nowhere else: API keys only as SHA-256 hashes, a JWKS document or an HMAC key
as is (the table is pushed with a token and stored in a Secret). :func:`redacted` is what every view of a
table (``kubegate compile``, the admin API) shows instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

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


class RateLimit(_Frozen):
    """``scope`` None: Global when the data plane has Redis, else Local. ``header`` in lower case."""

    requests_per_second: float = Field(gt=0, alias="requestsPerSecond")
    burst: int = Field(default=0, ge=0)
    key: Literal["ClientIP", "User", "Header", "Route"] = "ClientIP"
    header: str | None = None
    scope: Literal["Local", "Global"] | None = None


class Cache(_Frozen):
    """``store`` None: Redis when the data plane has Redis, else Memory. ``key_headers`` in lower case;
    ``key_query_params`` "all", "none" or the names (sorted)."""

    ttl_seconds: float = Field(gt=0, alias="ttlSeconds")
    store: Literal["Memory", "Redis"] | None = None
    max_entry_bytes: int = Field(ge=1, alias="maxEntryBytes")
    key_query_params: Literal["all", "none"] | tuple[str, ...] = Field(default="all", alias="keyQueryParams")
    key_headers: tuple[str, ...] = Field(default=(), alias="keyHeaders")
    per_user: bool = Field(default=False, alias="perUser")


class EdgePolicy(_Frozen):
    """Every edge policy of one route; a field left None is a policy the route does not use."""

    cors: CorsPolicy | None = None
    request_headers: HeaderOps | None = Field(default=None, alias="requestHeaders")
    response_headers: HeaderOps | None = Field(default=None, alias="responseHeaders")
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    auth: Auth | None = None
    rate_limit: RateLimit | None = Field(default=None, alias="rateLimit")
    cache: Cache | None = None


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
    if spec.cache is not None and spec.redirect is not None:
        problems.append(
            "spec.cache: a route with a redirect sends nothing upstream, so it has nothing to cache"
        )
    return problems


def edge_policy(
    spec: models.GatewayRouteSpec, auth: dict[str, object] | None = None
) -> dict[str, object] | None:
    """The route's edge policies in table form (``auth`` as :func:`auth_policy` resolved it), or None
    when it has none."""
    edge: dict[str, object] = {}
    if auth is not None:
        edge["auth"] = auth
    if spec.rate_limit is not None:
        limit = spec.rate_limit
        edge["rateLimit"] = {
            "requestsPerSecond": limit.requests_per_second,
            "burst": limit.burst,
            "key": limit.key,
            "header": limit.header.lower() if limit.header is not None else None,
            "scope": limit.scope,
        }
    if spec.cache is not None:
        cache = spec.cache
        params = cache.key_query_params
        edge["cache"] = {
            "ttlSeconds": cache.ttl_seconds(),
            "store": cache.store,
            "maxEntryBytes": cache.max_entry_bytes,
            "keyQueryParams": params if isinstance(params, str) else sorted(params),
            "keyHeaders": sorted({h.lower() for h in cache.key_headers}),
            "perUser": cache.per_user,
        }
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


# --- authentication: the table form, with the Secrets it names resolved ------------------------------------
class JwtAuth(_Frozen):
    """Keys from exactly one of ``jwks_uri`` (fetched by each replica), ``jwks`` (a JWKS document from a
    Secret) or ``hmac_secret`` (base64 of an HMAC key from a Secret). ``jwks`` and ``hmac_secret`` are
    secret: the table travels only by authenticated push or a Secret, and every view of it redacts them."""

    algorithms: tuple[str, ...] = Field(min_length=1)
    issuer: str | None = None
    audiences: tuple[str, ...] = ()
    jwks_uri: str | None = Field(default=None, alias="jwksUri")
    jwks: str | None = None
    hmac_secret: str | None = Field(default=None, alias="hmacSecret")
    clock_skew_seconds: float = Field(default=30.0, ge=0, alias="clockSkewSeconds")
    claims_to_headers: tuple[tuple[str, str], ...] = Field(default=(), alias="claimsToHeaders")
    forward_token: bool = Field(default=True, alias="forwardToken")


class ApiKeyAuth(_Frozen):
    """``keys`` are (SHA-256 hex of the key, client name) pairs: the table never holds a key in clear."""

    header: str | None = None  # lower case
    query: str | None = None
    keys: tuple[tuple[str, str], ...] = ()
    client_header: str | None = Field(default=None, alias="clientHeader")


class Auth(_Frozen):
    """``error`` is set when a Secret the route names is missing or unusable: the route answers 500 (as
    for a missing Service) rather than admitting anyone."""

    jwt: JwtAuth | None = None
    api_key: ApiKeyAuth | None = Field(default=None, alias="apiKey")
    error: str | None = None


#: The reasons of ``ResolvedRefs=False`` for auth Secrets.
SECRET_NOT_FOUND = "SecretNotFound"
KEY_NOT_FOUND = "KeyNotFound"
INVALID_SECRET = "InvalidSecret"

SecretData = Mapping[str, bytes]


def secret_data(body: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's data as bytes: ``data`` (base64, as the API server stores it) and ``stringData`` (plain,
    as written in a standalone routes file; it wins, as it does on the API server)."""
    out: dict[str, bytes] = {}
    data = body.get("data")
    if isinstance(data, Mapping):
        for key, value in data.items():
            if isinstance(key, str) and isinstance(value, str):
                try:
                    out[key] = base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    continue
    string_data = body.get("stringData")
    if isinstance(string_data, Mapping):
        for key, value in string_data.items():
            if isinstance(key, str) and isinstance(value, str):
                out[key] = value.encode()
    return out


def secret_refs(spec: models.GatewayRouteSpec) -> tuple[str, ...]:
    """The names of the Secrets (in the route's namespace) the route's auth needs."""
    auth = spec.auth
    if auth is None:
        return ()
    names = []
    if auth.jwt is not None:
        for ref in (auth.jwt.jwks_secret_ref, auth.jwt.secret_ref):
            if ref is not None:
                names.append(ref.name)
    if auth.api_key is not None:
        names.append(auth.api_key.secret_ref.name)
    return tuple(sorted(set(names)))


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def auth_policy(
    spec: models.GatewayRouteSpec, secrets: Mapping[str, SecretData]
) -> tuple[dict[str, object] | None, tuple[str, str] | None]:
    """The route's auth in table form, and the first problem met resolving its Secrets as (reason,
    message) — with a problem, the table form carries ``error`` and no key material. ``secrets`` maps the
    names of the route namespace's Secrets to their data."""
    auth = spec.auth
    if auth is None:
        return None, None

    def fetch(ref: models.SecretKeyRef, field: str) -> bytes | tuple[str, str]:
        data = secrets.get(ref.name)
        if data is None:
            return SECRET_NOT_FOUND, f"{field}: Secret {ref.name} not found"
        value = data.get(ref.key)
        if value is None:
            return KEY_NOT_FOUND, f"{field}: Secret {ref.name} has no key {ref.key!r}"
        return value

    out: dict[str, object] = {}
    if auth.jwt is not None:
        j = auth.jwt
        jwt: dict[str, object] = {
            "algorithms": sorted(set(j.algorithms)),
            "issuer": j.issuer,
            "audiences": sorted(set(j.audiences)),
            "clockSkewSeconds": duration.parse_duration(j.clock_skew) / 1000,
            "claimsToHeaders": [(c.claim, c.header.lower()) for c in j.claims_to_headers],
            "forwardToken": j.forward_token,
            "jwksUri": j.jwks_uri,
        }
        if j.jwks_secret_ref is not None:
            found = fetch(j.jwks_secret_ref, "spec.auth.jwt.jwksSecretRef")
            if isinstance(found, tuple):
                return {"error": found[1]}, found
            problem = _jwks_problem(found)
            if problem is not None:
                message = f"spec.auth.jwt.jwksSecretRef: Secret {j.jwks_secret_ref.name}: {problem}"
                return {"error": message}, (INVALID_SECRET, message)
            jwt["jwks"] = found.decode()
        if j.secret_ref is not None:
            found = fetch(j.secret_ref, "spec.auth.jwt.secretRef")
            if isinstance(found, tuple):
                return {"error": found[1]}, found
            if not found:
                ref = j.secret_ref
                message = f"spec.auth.jwt.secretRef: key {ref.key!r} of Secret {ref.name} is empty"
                return {"error": message}, (INVALID_SECRET, message)
            jwt["hmacSecret"] = base64.b64encode(found).decode()
        out["jwt"] = jwt
    if auth.api_key is not None:
        a = auth.api_key
        data = secrets.get(a.secret_ref.name)
        if data is None:
            message = f"spec.auth.apiKey.secretRef: Secret {a.secret_ref.name} not found"
            return {"error": message}, (SECRET_NOT_FOUND, message)
        keys = []
        for client, raw in sorted(data.items()):
            try:
                key = raw.decode().strip()  # a trailing newline from `--from-file` is not part of the key
            except UnicodeDecodeError:
                continue
            if key:
                keys.append((_hash_key(key), client))
        if not keys:
            message = f"spec.auth.apiKey.secretRef: Secret {a.secret_ref.name} holds no key"
            return {"error": message}, (KEY_NOT_FOUND, message)
        out["apiKey"] = {
            "header": a.header.lower() if a.header is not None else None,
            "query": a.query,
            "keys": keys,
            "clientHeader": a.client_header.lower() if a.client_header is not None else None,
        }
    return out, None


def _jwks_problem(document: bytes) -> str | None:
    """A first check of a JWKS document (the data plane parses each key)."""
    try:
        parsed = json.loads(document)
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(parsed, dict) or not isinstance(parsed.get("keys"), list) or not parsed["keys"]:
        return 'not a JWKS document (no "keys" list with a key)'
    return None


def redacted(wire: Mapping[str, Any]) -> dict[str, Any]:
    """A route's wire form with secret material replaced, for ``kubegate compile`` and admin views: auth's
    keys, the private keys of the route's TLS certificates (:mod:`kubegate.compiler.tls`) and its
    backends' CA certificates (:mod:`kubegate.compiler.backendtls`)."""
    out = dict(wire)
    edge = out.get("edge")
    if isinstance(edge, Mapping) and isinstance(edge.get("auth"), Mapping):
        auth = dict(edge["auth"])
        if isinstance(auth.get("jwt"), Mapping):
            jwt = dict(auth["jwt"])
            for key in ("jwks", "hmacSecret"):
                if key in jwt:
                    jwt[key] = REDACTED
            auth["jwt"] = jwt
        if isinstance(auth.get("apiKey"), Mapping):
            api_key = dict(auth["apiKey"])
            api_key["keys"] = [[REDACTED, client] for _, client in api_key.get("keys", [])]
            auth["apiKey"] = api_key
        out["edge"] = {**edge, "auth": auth}
    backends = out.get("backends")
    if isinstance(backends, list):  # CA certificates of backends' TLS: from Secrets, so not shown either
        out["backends"] = [
            {**b, "tls": {**b["tls"], "ca": REDACTED}}
            if isinstance(b, Mapping) and isinstance(b.get("tls"), Mapping) and "ca" in b["tls"]
            else b
            for b in backends
        ]
    tls = out.get("tls")
    if isinstance(tls, Mapping) and isinstance(tls.get("certificates"), list):
        certificates = [
            {**c, "key": REDACTED} if isinstance(c, Mapping) else REDACTED for c in tls["certificates"]
        ]
        out["tls"] = {**tls, "certificates": certificates}
    return out


REDACTED = "(redacted)"
