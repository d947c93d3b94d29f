"""A route's edge policies at run time: CORS, header transforms, rewrite and redirect, at two named points.

Built once per table from the compiled :class:`~kubegate.compiler.edge.EdgePolicy` (only for routes that
have one: ``RuntimeRoute.edge`` is None otherwise and the proxy skips both points). The proxy calls:

1. :meth:`EdgeRuntime.request`, after the route matched and the request head was found valid, before any
   traffic policy or backend is chosen: a CORS preflight or a redirect is answered here (the backend is
   never contacted); otherwise the path is rewritten, the request's header lines are transformed, and the
   CORS headers for the response are chosen (kept on the exchange).
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
from kubegate.dataplane.policies.cors import CorsPolicy
from kubegate.dataplane.policies.transforms import HeaderTransform, Redirect, Rewrite


class Exchange(Protocol):
    """What the edge policies need of the proxy's exchange."""

    method: bytes
    raw_headers: list[tuple[bytes, bytes]]
    path: bytes
    cors_lines: list[bytes] | None

    def answer(self, status: int, lines: list[bytes]) -> None: ...


def _lines(pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name + b": " + value for name, value in pairs]


class EdgeRuntime:
    __slots__ = ("cors", "matched_prefix", "redirect", "request_ops", "response_ops", "rewrite")

    def __init__(self, policy: EdgePolicy) -> None:
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
        """The request point; returns the request's header lines to send, or None when it was answered."""
        cors = self.cors
        if cors is not None:
            origin = acr_method = acr_headers = None
            for name, value in ex.raw_headers:
                lname = name.lower()
                if lname == b"origin":
                    origin = value
                elif lname == b"access-control-request-method":
                    acr_method = value
                elif lname == b"access-control-request-headers":
                    acr_headers = value if acr_headers is None else acr_headers + b"," + value
            if (
                origin is not None
                and acr_method is not None
                and cors.is_preflight(ex.method, origin, acr_method)
            ):
                status, headers = cors.preflight(origin, acr_method, acr_headers)
                ex.answer(status, _lines(headers))
                return None
            ex.cors_lines = _lines(cors.response_headers(origin))
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
