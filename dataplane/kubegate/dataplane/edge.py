"""A route's edge policies at run time: CORS, auth, header transforms, rewrite and redirect, at two points.

Built once per table from the compiled :class:`~kubegate.compiler.edge.EdgePolicy` (only for routes that
have one: ``RuntimeRoute.edge`` is None otherwise and the proxy skips both points). The proxy calls:

1. :meth:`EdgeRuntime.request`, after the route matched and the request head was found valid, before any
   traffic policy or backend is chosen, in this order: a CORS preflight is answered (browsers send no
   credentials with it); the credentials are checked (:mod:`.auth`: 401/403/500/503 answered here, or a
   wait for the first JWKS); a redirect is answered; otherwise the path is rewritten, the request's header
   lines are transformed, and the CORS headers for the response are chosen (kept on the exchange; the
   gateway's refusals carry them too, so a browser page can read a 401).
2. :meth:`EdgeRuntime.response`, on the upstream's response head, before the gateway adds its framing:
   the response's header lines are transformed and the CORS headers added.

Each policy is its own module under :mod:`kubegate.dataplane.policies` (``cors``, ``transforms``), pure and
tested alone; this module only wires them to the exchange. Header lines are the proxy's own form:
``b"name: value"`` with the name in lower case, without framing, Host or the X-Forwarded-* set (those are
added after the transforms, so a transform can never change them; the compiler refuses them too).
"""

from __future__ import annotations

from typing import Protocol

from kubegate.compiler.edge import EdgePolicy, HeaderOps
from kubegate.dataplane.auth import RouteAuth
from kubegate.dataplane.jwkssources import JwksSources
from kubegate.dataplane.policies.cors import CorsPolicy
from kubegate.dataplane.policies.transforms import HeaderTransform, Redirect, Rewrite


class Exchange(Protocol):
    """What the edge policies need of the proxy's exchange."""

    method: bytes
    raw_headers: list[tuple[bytes, bytes]]
    path: bytes
    cors_lines: list[bytes] | None
    identity: str | None

    def answer(self, status: int, lines: list[bytes]) -> None: ...
    def refused(self, status: int, message: str, lines: list[bytes], kind: str, reason: str) -> None: ...
    def restart(self) -> None: ...


def _lines(pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name + b": " + value for name, value in pairs]


class EdgeRuntime:
    __slots__ = (
        "auth",
        "cors",
        "jwks_uri",
        "matched_prefix",
        "redirect",
        "request_ops",
        "response_ops",
        "rewrite",
    )

    def __init__(self, policy: EdgePolicy, jwks: JwksSources | None = None) -> None:
        a = policy.auth
        self.auth = RouteAuth(a, jwks) if a is not None else None
        self.jwks_uri = a.jwt.jwks_uri if a is not None and a.jwt is not None and a.error is None else None
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
        self, ex: Exchange, host: str, path: str, query: str, lines: list[bytes]
    ) -> list[bytes] | None:
        """The request point; returns the request's header lines to send, or None when it was answered
        (or waits for a JWKS: the exchange then starts over)."""
        cors = self.cors
        auth = self.auth
        origin = acr_method = acr_headers = authorization = api_key = None
        key_header = auth.api_key_header if auth is not None else None
        for name, value in ex.raw_headers:
            lname = name.lower()
            if lname == b"authorization":
                authorization = value
            elif lname == key_header:
                api_key = value
            elif lname == b"origin":
                origin = value
            elif lname == b"access-control-request-method":
                acr_method = value
            elif lname == b"access-control-request-headers":
                acr_headers = value if acr_headers is None else acr_headers + b"," + value
        if cors is not None:
            if (
                origin is not None
                and acr_method is not None
                and cors.is_preflight(ex.method, origin, acr_method)
            ):
                status, headers = cors.preflight(origin, acr_method, acr_headers)
                ex.answer(status, _lines(headers))
                return None
            ex.cors_lines = _lines(cors.response_headers(origin))
        if auth is not None:
            verdict = auth.check(authorization, api_key, query)
            if verdict is None:  # the keys are loading: the exchange starts over once they are
                auth.wait(ex.restart)
                return None
            if verdict.status:
                extra = [*verdict.challenge, *(ex.cors_lines or ())]
                ex.refused(verdict.status, verdict.message, extra, verdict.kind, verdict.reason)
                return None
            ex.identity = verdict.identity
            if auth.drop:
                lines = [line for line in lines if line.partition(b":")[0] not in auth.drop]
            if verdict.lines:
                lines = [*lines, *verdict.lines]
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
        """The response point: ``lines`` are the response's header lines after the status line."""
        if self.response_ops is not None:
            lines = self.response_ops.apply(lines)
        if ex.cors_lines:
            lines.extend(ex.cors_lines)
        return lines


def _transform(ops: HeaderOps | None) -> HeaderTransform | None:
    return HeaderTransform(set=ops.set, add=ops.add, remove=ops.remove) if ops is not None else None
