"""A route's authentication at run time: which credential admits a request, and what the backend learns.

Built by :class:`~kubegate.dataplane.edge.EdgeRuntime` from the table's
:class:`~kubegate.compiler.edge.Auth`, it combines the verifiers of :mod:`.policies.jwt` and
:mod:`.policies.apikey` (each pure and tested alone) into one decision per request:

- a route with both ``jwt`` and ``apiKey`` admits a request that either one admits; a request that offers
  neither credential gets the ``missing`` answer (401 with both challenges), one that offers a bad one gets
  that credential's own answer (401, or 403 for a valid token of another issuer or audience);
- a Secret the compiler could not resolve (``Auth.error``) answers 500 for every request, as a missing
  Service does: a route that should be protected never admits anyone by accident;
- a JWKS not loaded yet (the replica just started, or the route is new) makes the request wait for the
  first fetch (:data:`WAIT`), without a coroutine: the exchange starts over once it ended; a JWKS that
  could not be loaded at all answers 503.

What the backend then receives: the claims and client name configured as headers (a client's own headers
of those names are dropped first), and the Authorization header unless ``forwardToken`` is false. The
identity (the token's ``sub``, or the API-key client's name) is kept on the exchange for the policies that
key on it (rate limits, private caching).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Final

from kubegate.compiler.edge import Auth
from kubegate.dataplane.jwkssources import JwksSources
from kubegate.dataplane.policies import jwt
from kubegate.dataplane.policies.apikey import ApiKeyResult, ApiKeyVerifier

#: What :meth:`RouteAuth.check` returns besides a :class:`Verdict`: wait for the keys, then start over.
WAIT: Final = None


#: An admitted request's result, as its verifier made it (shared: read only).
Admitted = jwt.JwtResult | ApiKeyResult


class Verdict:
    """A refusal: ``status``, ``message``, ``challenge`` lines, and ``kind``/``reason`` for the metrics."""

    __slots__ = ("challenge", "kind", "message", "reason", "status")

    def __init__(
        self,
        status: int,
        *,
        message: str = "",
        challenge: tuple[bytes, ...] = (),
        kind: str = "",
        reason: str = "",
    ) -> None:
        self.status = status
        self.message = message
        self.challenge = challenge
        self.kind = kind
        self.reason = reason


class RouteAuth:
    __slots__ = ("_broken", "api_key", "api_key_header", "drop", "forward_token", "jwt", "keys")

    def __init__(
        self, config: Auth, jwks: JwksSources | None, clock: Callable[[], float] = time.time
    ) -> None:
        self._broken = config.error
        self.jwt: jwt.JwtVerifier | None = None
        self.keys: jwt.KeySource | None = None
        self.forward_token = True
        drop: set[bytes] = set()
        j = config.jwt
        if j is not None and config.error is None:
            if j.jwks_uri is not None:
                if jwks is None:
                    raise ValueError("a route with auth.jwt.jwksUri needs the gateway's JWKS sources")
                self.keys = jwks.source(j.jwks_uri)
            elif j.jwks is not None:
                self.keys = jwt.StaticKeys.from_jwks(j.jwks)
            else:
                assert j.hmac_secret is not None
                self.keys = jwt.StaticKeys.from_hmac(base64.b64decode(j.hmac_secret), j.algorithms)
            self.jwt = jwt.JwtVerifier(
                algorithms=j.algorithms,
                issuer=j.issuer,
                audiences=j.audiences,
                clock_skew=j.clock_skew_seconds,
                keys=self.keys,
                clock=clock,
                claims_to_headers=j.claims_to_headers,
            )
            self.forward_token = j.forward_token
            drop.update(header.encode() for _, header in j.claims_to_headers)
            if not j.forward_token:
                drop.add(b"authorization")
        self.api_key: ApiKeyVerifier | None = None
        self.api_key_header: bytes | None = None
        a = config.api_key
        if a is not None and config.error is None:
            self.api_key_header = a.header.encode() if a.header is not None else None
            client_header = a.client_header.encode() if a.client_header is not None else None
            self.api_key = ApiKeyVerifier(
                header=self.api_key_header, query=a.query, keys=dict(a.keys), client_header=client_header
            )
            if client_header is not None:
                drop.add(client_header)
        #: Request headers the backend must only get from the gateway (claims, client name), or not at all.
        self.drop = frozenset(drop)

    def check(
        self, authorization: bytes | None, api_key: bytes | None, query: str
    ) -> Admitted | Verdict | None:
        """The decision for a request's credentials (its Authorization header, the configured API-key
        header, the query string): the verifier's own shared result when admitted (its ``identity`` and
        ``headers``: nothing is allocated on the hot path), a :class:`Verdict` when refused, or None
        (:data:`WAIT`): wait with :meth:`wait`, then ask again."""
        if self._broken is not None:
            return Verdict(500, message="the route's credentials are not configured (see its status)")
        refusal: Verdict | None = None
        if self.jwt is not None:
            result = self.jwt.verify(authorization)
            outcome = result.outcome
            if outcome == jwt.OK:
                return result
            if outcome == jwt.PENDING:
                return WAIT
            if outcome == jwt.UNAVAILABLE:
                refusal = Verdict(
                    503,
                    message="the token signing keys could not be loaded",
                    kind="jwt",
                    reason=result.reason,
                )
            else:
                refusal = _refusal(
                    result.status, result.description, result.www_authenticate, "jwt", result.reason
                )
        if self.api_key is not None:
            key_result = self.api_key.verify(api_key, query)
            if key_result.ok:
                return key_result
            if refusal is None or refusal.reason == "missing":
                refusal = _api_key_refusal(key_result, refusal)
        assert refusal is not None
        return refusal

    def wait(self, callback: Callable[[], None]) -> None:
        assert self.keys is not None
        self.keys.add_waiter(callback)


def _refusal(status: int, description: str, challenge: bytes | None, kind: str, reason: str) -> Verdict:
    return Verdict(
        status,
        message=description,
        challenge=(b"www-authenticate: " + challenge,) if challenge else (),
        kind=kind,
        reason=reason,
    )


def _api_key_refusal(result: ApiKeyResult, jwt_refusal: Verdict | None) -> Verdict:
    verdict = _refusal(result.status, result.description, result.www_authenticate, "apiKey", result.reason)
    if jwt_refusal is not None and result.reason == "missing":
        # neither credential offered: both challenges, so a client learns what it may send
        verdict.challenge = jwt_refusal.challenge + verdict.challenge
    return verdict
