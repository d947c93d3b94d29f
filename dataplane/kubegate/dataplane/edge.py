"""A route's edge policies at run time: CORS, auth, header transforms, rewrite and redirect, at two points.

Built once per table from the compiled :class:`~kubegate.compiler.edge.EdgePolicy` (only for routes that
have one: ``RuntimeRoute.edge`` is None otherwise and the proxy skips both points). The proxy calls:

1. :meth:`EdgeRuntime.request`, after the route matched and the request head was found valid, before any
   traffic policy or backend is chosen, in this order: a CORS preflight is answered (browsers send no
   credentials with it); the credentials are checked (:mod:`.auth`: 401/403/500/503 answered here, or a
   wait for the first JWKS); the rate limit is applied (:mod:`.ratelimiting`: 429 answered here; a Global
   limit asks Redis and the exchange comes back to this point with the answer); a redirect is answered;
   otherwise the path is rewritten and the request's header lines are transformed. The CORS and
   RateLimit headers for the response are chosen on the way (kept on the exchange, afresh on every pass;
   the gateway's refusals carry them too, so a browser page can read a 401 or a 429).
2. :meth:`EdgeRuntime.response`, on the upstream's response head, before the gateway adds its framing:
   the response's header lines are transformed and the lines chosen at the request point (CORS,
   RateLimit) added.

Each policy is its own module under :mod:`kubegate.dataplane.policies` (``cors``, ``transforms``), pure and
tested alone; this module only wires them to the exchange. Header lines are the proxy's own form:
``b"name: value"`` with the name in lower case, without framing, Host or the X-Forwarded-* set (those are
added after the transforms, so a transform can never change them; the compiler refuses them too).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from kubegate.compiler.edge import EdgePolicy, HeaderOps
from kubegate.dataplane.auth import RouteAuth, Verdict
from kubegate.dataplane.caching import CacheContext, RouteCache
from kubegate.dataplane.httpbits import lower_name
from kubegate.dataplane.jwkssources import JwksSources
from kubegate.dataplane.policies.cors import CorsPolicy
from kubegate.dataplane.policies.ratelimit import ReplicaCount
from kubegate.dataplane.policies.transforms import HeaderTransform, Redirect, Rewrite
from kubegate.dataplane.ratelimiting import Network, RouteLimit
from kubegate.dataplane.redislimit import RedisBackend

if TYPE_CHECKING:  # the proxy imports this module; the compiled build reads the exchange's fields natively
    from kubegate.dataplane.proxy import Exchange


_AUTHORIZATION: Final = 0
_API_KEY: Final = 1
_ORIGIN: Final = 2
_ACR_METHOD: Final = 3
_ACR_HEADERS: Final = 4
_XFF: Final = 5
_LIMIT_HEADER: Final = 6


@dataclass(frozen=True)
class EdgeContext:
    """What the edge policies share across routes and tables: the JWKS sources, the Redis of Global rate
    limits (None: every limit is Local), the number of replicas a Global limit falls back to sharing
    (run-time state the admin API changes: the fallbacks follow it without a new table), the trusted
    proxies whose X-Forwarded-For names the client, and the HTTPS port that routes with
    ``tls.redirectHTTP`` send plain requests to (None without a TLS listener: no redirect)."""

    jwks: JwksSources | None = None
    redis: RedisBackend | None = None
    replicas: ReplicaCount = field(default_factory=ReplicaCount)  # 1 until the operator says otherwise
    trusted_proxies: tuple[Network, ...] = ()
    https_port: int | None = None  # the HTTPS port redirectHTTP sends to; None: no TLS listener
    cache: CacheContext | None = (
        None  # the response caches' stores (None: a memory store of the default size)
    )


def _lines(pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name + b": " + value for name, value in pairs]


class EdgeRuntime:
    __slots__ = (
        "auth",
        "cache",
        "cors",
        "jwks_uri",
        "limit",
        "matched_prefix",
        "redirect",
        "request_ops",
        "response_ops",
        "rewrite",
        "transforms_response",
        "wanted",
        "wanted_sizes",
    )

    def __init__(self, policy: EdgePolicy, route_id: str = "", context: EdgeContext | None = None) -> None:
        ctx = context if context is not None else EdgeContext()
        a = policy.auth
        self.auth = RouteAuth(a, ctx.jwks) if a is not None else None
        rl = policy.rate_limit
        self.limit = (
            RouteLimit(rl, route_id, redis=ctx.redis, replicas=ctx.replicas, trusted=ctx.trusted_proxies)
            if rl is not None
            else None
        )
        cache = policy.cache
        #: The response cache: the proxy calls its lookup point right after :meth:`request`.
        self.cache = (
            RouteCache(
                cache,
                route_id,
                ctx.cache if ctx.cache is not None else _default_cache_context(),
                authenticated=self.auth is not None,
            )
            if cache is not None
            else None
        )
        self.jwks_uri = a.jwt.jwks_uri if a is not None and a.jwt is not None and a.error is None else None
        #: The request headers the request point reads, by lower-case name (one dict lookup per header).
        self.wanted: dict[bytes, int] = {}
        if self.auth is not None:
            self.wanted[b"authorization"] = _AUTHORIZATION
            if self.auth.api_key_header is not None:
                self.wanted[self.auth.api_key_header] = _API_KEY
        if self.limit is not None:
            if ctx.trusted_proxies:
                self.wanted[b"x-forwarded-for"] = _XFF
            if self.limit.header is not None:
                self.wanted[self.limit.header] = _LIMIT_HEADER
        if policy.cors is not None:
            self.wanted.update(
                {
                    b"origin": _ORIGIN,
                    b"access-control-request-method": _ACR_METHOD,
                    b"access-control-request-headers": _ACR_HEADERS,
                }
            )
        #: ``wanted_sizes[n]``: whether a wanted name is ``n`` bytes long (a header of another length is
        #: passed over without lower-casing its name and looking it up).
        self.wanted_sizes = [False] * (max(map(len, self.wanted), default=0) + 1)
        for name in self.wanted:
            self.wanted_sizes[len(name)] = True
        c = policy.cors
        self.cors = (
            CorsPolicy(
                allow_origins=c.allow_origins,
                allow_methods=c.allow_methods,
                allow_headers=c.allow_headers,
                expose_headers=c.expose_headers,
                allow_credentials=c.allow_credentials,
                max_age=c.max_age_seconds,
            )
            if c is not None
            else None
        )
        self.request_ops = _transform(policy.request_headers)
        self.response_ops = _transform(policy.response_headers)
        #: Whether the response point has anything to do (the proxy skips it otherwise).
        self.transforms_response = (
            self.response_ops is not None or self.cors is not None or self.limit is not None
        )
        r = policy.rewrite
        self.rewrite = Rewrite(path_prefix=r.path_prefix, full_path=r.full_path) if r is not None else None
        self.matched_prefix = r.matched_prefix if r is not None else None
        d = policy.redirect
        self.redirect = (
            Redirect(
                scheme=d.scheme, hostname=d.hostname, port=d.port, path=d.path, status_code=d.status_code
            )
            if d is not None
            else None
        )

    def request(
        self,
        ex: Exchange,
        host: str,
        path: str,
        query: str,
        lines: list[bytes],
        peer: bytes,
        peer_trusted: bool,
    ) -> list[bytes] | None:
        """The request point; returns the request's header lines to send, or None when it was answered
        (or waits for a JWKS: the exchange then comes back to this point)."""
        cors = self.cors
        auth = self.auth
        # The lines for the response are chosen afresh on every pass: a request that waited after this
        # point (the cache's lookup) comes through again, and must not get them twice.
        ex.resp_lines = None
        origin = acr_method = acr_headers = authorization = api_key = xff = limit_header = None
        wanted = self.wanted
        sizes = self.wanted_sizes
        if wanted:  # (a route with only a cache, or a limit keyed on the peer or the route, reads none)
            for name, value in ex.raw_headers:
                size = len(name)
                if size >= len(sizes) or not sizes[size]:
                    continue
                which = wanted.get(lower_name(name))
                if which is None:
                    continue
                if which == _AUTHORIZATION:
                    authorization = value
                elif which == _API_KEY:
                    api_key = value
                elif which == _ORIGIN:
                    origin = value
                elif which == _ACR_METHOD:
                    acr_method = value
                elif which == _ACR_HEADERS:
                    acr_headers = value if acr_headers is None else acr_headers + b"," + value
                elif which == _XFF:
                    xff = value if xff is None else xff + b"," + value
                else:
                    limit_header = value
        if cors is not None:
            if (
                origin is not None
                and acr_method is not None
                and cors.is_preflight(ex.method, origin, acr_method)
            ):
                status, headers = cors.preflight(origin, acr_method, acr_headers)
                ex.answer(status, _lines(headers))
                return None
            ex.resp_lines = _lines(cors.response_headers(origin))
        if auth is not None:
            verdict = auth.check(authorization, api_key, query)
            if verdict is None:  # the keys are loading: the exchange comes back once they are
                auth.wait(ex.restart)
                return None
            if isinstance(verdict, Verdict):
                extra = [*verdict.challenge, *(ex.resp_lines or ())]
                ex.refused(verdict.status, verdict.message, extra, verdict.kind, verdict.reason)
                return None
            ex.identity = verdict.identity
            if auth.drop:
                lines = [line for line in lines if line.partition(b":")[0] not in auth.drop]
            if verdict.headers:
                lines = [*lines, *(name + b": " + value for name, value in verdict.headers)]
        limit = self.limit
        if limit is not None:
            decision = ex.limit_decision  # set when a Global decision came back (this is the second pass)
            if decision is None:
                key = limit.key(peer, peer_trusted, xff, limit_header, ex.identity)
                local = limit.local
                if local is not None:  # the Local scope answers at once: no callback to bind
                    decision = local.check(key)
                else:
                    decision = limit.limiter.decide(key, ex.limited)
                    if decision is None:  # asked Redis: the exchange comes back here with its answer
                        return None
                ex.limit_decision = decision  # counted once, however often the exchange comes through
            limit_lines = limit.lines(decision)
            if not decision.allowed:
                ex.rate_limited([*limit_lines, *(ex.resp_lines or ())])
                return None
            if ex.resp_lines:
                ex.resp_lines.extend(limit_lines)
            else:
                ex.resp_lines = limit_lines  # a new list per call (ratelimit_headers)
        redirect = self.redirect
        if redirect is not None:
            ex.answer(redirect.status_code, [b"location: " + redirect.location("http", host, path, query)])
            return None
        if self.rewrite is not None:
            ex.path = self.rewrite.apply(path, self.matched_prefix).encode("latin-1")
        if self.request_ops is not None:
            lines = self.request_ops.apply(lines)
        return lines

    def response(self, ex: Exchange, lines: list[bytes]) -> list[bytes]:
        """The response point: ``lines`` are the response's status line and header lines; returns them
        (the same list when only lines are added)."""
        if self.response_ops is not None:
            lines = self.response_ops.apply(lines, 1)  # the status line is left alone
        if ex.resp_lines:
            lines.extend(ex.resp_lines)
        return lines


@functools.cache
def _default_cache_context() -> CacheContext:
    """The cache context of routes built without one (tests, tools): one per process."""
    return CacheContext()


def _transform(ops: HeaderOps | None) -> HeaderTransform | None:
    return HeaderTransform(set=ops.set, add=ops.add, remove=ops.remove) if ops is not None else None
