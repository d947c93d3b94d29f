"""JWT bearer authentication for a route: check ``Authorization: Bearer <token>`` on the hot path.

The proxy has no coroutine per request, so :meth:`JwtVerifier.verify` is synchronous: it reads the keys
that a :class:`KeySource` holds *now* and answers at once. Only getting the keys may take time, and that
is the key source's business, in the background: :class:`StaticKeys` has them from the start (a JWKS
document or an HMAC secret from a Secret); :class:`~kubegate.dataplane.policies.jwks.JwksSource` fetches
them from the issuer. Before the very first fetch has finished, ``verify`` answers *pending*, and the
caller parks the exchange with :meth:`KeySource.add_waiter` and calls ``verify`` again when woken; when no
key set could ever be loaded it answers *unavailable* (503: the gateway cannot tell, so it does not admit).

Hardening, all before or around PyJWT (no crypto here; PyJWT with ``cryptography`` checks signatures):

- The algorithm comes from the route's allow-list, never from the token: a token whose ``alg`` is not in
  the list is refused before any key is looked at, ``none`` is never accepted (dropped from the list),
  and PyJWT gets ``algorithms=[that one alg]`` plus a :class:`jwt.PyJWK` bound to it.
- A key serves only algorithms of its own ``kty`` (and curve), and only its own ``alg`` when the JWK
  names one (:meth:`Key.for_alg`): an RSA public key can never be used as an HMAC secret, so a token
  "HS256-signed with the issuer's public key" finds no key (algorithm confusion fails).
- ``jku``, ``x5u``, ``x5c`` and ``jwk`` headers are never read: keys come only from the key source, and
  ``kid`` only selects among them. A token without ``kid`` tries at most :data:`MAX_KEYS_TRIED` keys of the
  right type; a ``kid`` that no key has falls back to the keys without a ``kid`` (an HMAC secret), and when
  there are none it is *unknown*: the key source may refresh (rate limited there), the token fails.
- ``crit`` is refused whatever it lists: this verifier understands no JWS extension.
- Tokens over :data:`MAX_TOKEN_BYTES` are refused before parsing; only the compact JWS form is accepted.
- ``exp`` is required; ``exp``, ``nbf`` and ``iat`` are checked against the injected clock with the
  route's skew (an ``iat`` in the future beyond the skew is refused). The clock is **wall-clock** seconds
  (``time.time``): token times are Unix times, unlike the monotonic ``now`` of the traffic policies. That
  is why the claims are checked here rather than by ``jwt.decode``, which reads the system clock.
- A bad signature, a bad time or a malformed token is 401 with ``WWW-Authenticate: Bearer
  error="invalid_token"``; no credential at all is 401 with a bare ``Bearer`` challenge; a token whose
  signature is good but whose ``iss`` or ``aud`` does not fit this route is 403 (challenge
  ``error="insufficient_scope"``: the client needs a token for this API, not a fresh one). Every failure is
  a shared, precomputed :class:`JwtResult` with a fixed description, so nothing from the token can be
  echoed back or into a log; its ``reason`` is a short code for metrics.

**Verified-token cache.** Signature verification costs tens of microseconds; a client normally reuses
its token, so successful results are kept in a bounded LRU (an ``OrderedDict``) keyed by the request's
``Authorization`` value itself (its SHA-256 when it is longer than :data:`CACHE_KEY_BYTES`, which bounds
the cache's memory to about 20 MB at 10,000 entries), each entry holding the result, the time it stops
being valid and the key source's ``generation``. A hit is looked up before any parsing: it costs the
dict's own hash of the value (``proxy_bench``'s RS256 token: about 0.2 µs, against 1 µs for its SHA-256
plus the parsing), and it is correct because:

- the entry is only for this verifier (its issuer, audiences and algorithms are fixed);
- the header bytes are the key (the token, with its scheme), and the result of checking the same bytes
  against the same keys can only change with time or with the keys;
- time: the entry is dropped once ``now`` reaches ``min(exp + skew, verified_at + CACHE_TTL)``, so an
  expired token is re-verified (and refused) exactly when an uncached one would be. ``nbf``/``iat`` only
  make a token valid later, never invalid later, so a token that was admitted stays admissible;
- keys: a key source bumps ``generation`` whenever the *content* of its key set changes (a key added or
  removed, not a refetch of the same set); an entry from another generation is dropped and the token
  re-verified, so a token signed by a key that left the set stops being admitted with the next request;
- only successes are cached: failures are cheap to produce again and must not outlive a key rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import jwt as pyjwt
from jwt import exceptions as jwt_errors

#: The algorithms a route may allow, and the key type (and curve) each one needs.
ALGORITHMS: Final[dict[str, tuple[str, str | None]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
    "HS256": ("oct", None),
    "HS384": ("oct", None),
    "HS512": ("oct", None),
}
SUPPORTED_ALGORITHMS: Final = frozenset(ALGORITHMS)
HMAC_ALGORITHMS: Final = ("HS256", "HS384", "HS512")
#: Longest token accepted (the token itself, after ``Bearer``).
MAX_TOKEN_BYTES: Final = 8192
#: Authorization values up to this size are their own cache key; longer ones are keyed by their SHA-256.
CACHE_KEY_BYTES: Final = 2048
#: Keys tried for a token without ``kid`` (or whose ``kid`` falls back to key-less-id keys).
MAX_KEYS_TRIED: Final = 3
#: How long a verified token stays in the cache at most, whatever its ``exp``.
CACHE_TTL: Final = 300.0

# The public members of each key type (private ones, such as RSA's "d", are never used to verify).
_PUBLIC_MEMBERS: Final = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x"), "oct": ("k",)}
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth")
_DEFAULT_ALG: Final = {"RSA": "RS256", "OKP": "EdDSA", "oct": "HS256"}
_EC_ALG: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
# What may appear in a compact JWS (base64url without padding, and the two dots).
_TOKEN_CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
# Only signature checks are PyJWT's; claims are checked here against the injected clock.
_JWS: Final = pyjwt.PyJWS(algorithms=sorted(SUPPORTED_ALGORITHMS))

OK: Final = 0
FAILED: Final = 1
UNAVAILABLE: Final = 2
PENDING: Final = 3
OUTCOME_NAMES: Final = ("ok", "failed", "unavailable", "pending")


class Key:
    """One verification key of a key set (public members only), and the PyJWT key per algorithm."""

    __slots__ = ("_by_alg", "_jwk", "alg", "crv", "fingerprint", "kid", "kty")

    def __init__(self, jwk: dict[str, str], *, kid: str | None, alg: str | None) -> None:
        self._jwk = jwk
        self.kty = jwk["kty"]
        self.crv = jwk.get("crv")
        self.kid = kid
        self.alg = alg  # the one algorithm the JWK names, or None: any of its kty's
        self.fingerprint = json.dumps([kid, alg, jwk], sort_keys=True)
        self._by_alg: dict[str, pyjwt.PyJWK | None] = {}

    def for_alg(self, alg: str) -> pyjwt.PyJWK | None:
        """The PyJWT key bound to ``alg``, or None when this key may not verify ``alg`` tokens."""
        try:
            return self._by_alg[alg]
        except KeyError:
            pass
        key: pyjwt.PyJWK | None = None
        spec = ALGORITHMS.get(alg)
        if (
            spec is not None
            and (self.alg is None or self.alg == alg)
            and spec[0] == self.kty
            and (spec[1] is None or spec[1] == self.crv)
        ):
            try:
                key = pyjwt.PyJWK(dict(self._jwk), algorithm=alg)
            except jwt_errors.PyJWTError:
                key = None
        self._by_alg[alg] = key
        return key

    def __repr__(self) -> str:
        return f"<Key kid={self.kid!r} kty={self.kty} alg={self.alg or '*'}>"


def parse_key(obj: object, *, allow_secret: bool) -> Key | str:
    """A :class:`Key` from one member of a JWKS's ``keys``, or the reason it is skipped.

    Keys are taken leniently one by one: a key with an unsupported ``kty`` or ``alg``, a ``use`` other
    than ``sig``, ``key_ops`` without ``verify``, or unusable material is skipped, not the whole set.
    ``key_ops`` must include ``verify`` (or ``sign``, for a private key whose public half is taken).
    Symmetric (``oct``) keys are only taken when ``allow_secret`` (a JWKS from a Secret, never one that is
    published). A key that carries private members (``d``...) is skipped when ``allow_secret`` is false
    (an issuer that publishes its private key has leaked it: anyone could sign), and otherwise reduced to
    its public members. The reasons are fixed strings (never PyJWT's messages, which quote key material).
    """
    if not isinstance(obj, dict):
        return "not a JSON object"
    kty = obj.get("kty")
    if not isinstance(kty, str) or kty not in _PUBLIC_MEMBERS:
        return "unsupported kty"
    if kty == "oct" and not allow_secret:
        return "symmetric key in a published key set"
    kid = obj.get("kid")
    if kid is not None and not isinstance(kid, str):
        return "kid is not a string"
    use = obj.get("use")
    if use is not None and use != "sig":
        return "use is not sig"
    private = any(member in obj for member in _PRIVATE_MEMBERS)
    ops = obj.get("key_ops")
    # A private key is listed for "sign"; its public half verifies.
    if ops is not None and (
        not isinstance(ops, list) or not ("verify" in ops or (private and "sign" in ops))
    ):
        return "key_ops without verify"
    alg = obj.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in ALGORITHMS or ALGORITHMS[alg][0] != kty):
        return "unsupported alg"
    if kty != "oct" and private and not allow_secret:
        return "private key material in a published key set"
    jwk: dict[str, str] = {"kty": kty}
    for member in _PUBLIC_MEMBERS[kty]:
        value = obj.get(member)
        if not isinstance(value, str) or not value:
            return "invalid key material"
        jwk[member] = value
    key = Key(jwk, kid=kid, alg=alg)
    probe = alg or (_EC_ALG.get(jwk.get("crv", "")) if kty == "EC" else _DEFAULT_ALG[kty])
    if probe is None or key.for_alg(probe) is None:
        return "invalid key material"
    return key


class KeySet:
    """The keys a route verifies with: by ``kid``, plus those without one. Immutable once built."""

    __slots__ = ("by_kid", "fingerprint", "keys", "kidless", "skipped")

    def __init__(self, keys: Iterable[Key], skipped: Iterable[str] = ()) -> None:
        self.keys = tuple(keys)
        self.skipped = tuple(skipped)  # "kid: reason" of each key left out, for the admin view
        by_kid: dict[str, list[Key]] = {}
        for key in self.keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
        self.by_kid = {kid: tuple(keys) for kid, keys in by_kid.items()}
        self.kidless = tuple(key for key in self.keys if key.kid is None)
        self.fingerprint = hashlib.sha256(
            "\n".join(sorted(k.fingerprint for k in self.keys)).encode()
        ).digest()

    @classmethod
    def from_jwks(cls, document: str | bytes | Mapping[str, Any], *, allow_secret: bool) -> KeySet:
        """Parse a JWKS document (see :func:`parse_key`); ValueError when it is not one at all."""
        data = json.loads(document) if isinstance(document, str | bytes) else document
        members = data.get("keys") if isinstance(data, Mapping) else None
        if not isinstance(members, list):
            raise ValueError('not a JWKS document (no "keys" list)')
        keys: list[Key] = []
        skipped: list[str] = []
        for number, member in enumerate(members):
            parsed = parse_key(member, allow_secret=allow_secret)
            if isinstance(parsed, Key):
                keys.append(parsed)
            else:
                kid = member.get("kid") if isinstance(member, dict) else None
                skipped.append(f"{kid if isinstance(kid, str) else f'#{number}'}: {parsed}")
        return cls(keys, skipped)

    @classmethod
    def from_hmac(cls, secret: bytes, algorithms: Iterable[str] = HMAC_ALGORITHMS) -> KeySet:
        """One HMAC secret, as a key without ``kid`` for each HS algorithm of ``algorithms``."""
        if not secret:
            return cls((), ("secret: empty",))
        k = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
        wanted = [alg for alg in dict.fromkeys(algorithms) if alg in HMAC_ALGORITHMS]
        keys = [Key({"kty": "oct", "k": k}, kid=None, alg=alg) for alg in wanted]
        usable = [key for key in keys if key.for_alg(key.alg or "") is not None]
        return cls(usable, () if usable or not keys else ("secret: not usable as an HMAC key",))

    @property
    def kids(self) -> list[str]:
        return sorted(self.by_kid)

    def select(self, kid: str | None, alg: str) -> tuple[list[pyjwt.PyJWK], str | None]:
        """The keys to try on an ``alg`` token with this ``kid``, or ``([], reason)``."""
        if kid is not None:
            named = self.by_kid.get(kid)
            if named is not None:
                found = [jwk for jwk in (key.for_alg(alg) for key in named) if jwk is not None]
                return (found[:MAX_KEYS_TRIED], None) if found else ([], "algorithm")
            pool: Sequence[Key] = self.kidless
            if not pool:
                return [], "unknown_kid"
        else:
            pool = self.keys
        found = []
        for key in pool:
            jwk = key.for_alg(alg)
            if jwk is not None:
                found.append(jwk)
                if len(found) == MAX_KEYS_TRIED:
                    break
        if found:
            return found, None
        return [], ("unknown_kid" if kid is not None else "algorithm")

    def __len__(self) -> int:
        return len(self.keys)

    def __bool__(self) -> bool:
        # Stated, not left to __len__: compiled by mypyc, "if x" on an "X | None" tests only for None
        # unless X defines __bool__.
        return len(self) > 0

    def __repr__(self) -> str:
        return f"<KeySet keys={len(self.keys)} kids={self.kids} skipped={len(self.skipped)}>"


class KeySource(Protocol):
    """Where a verifier gets its keys: a fixed set, or a JWKS fetched in the background.

    ``current()`` is the key set to use now (None until one was loaded); ``generation`` changes whenever
    the content of that set does (the token cache depends on it); ``loading`` is true while the *first*
    load is in flight; ``add_waiter(callback)`` calls ``callback()`` once when that first load finishes,
    successfully or not; ``refresh_unknown_kid()`` asks for a refresh because a token named a ``kid``
    that is not in the set (the source rate-limits it).
    """

    generation: int
    loading: bool

    def current(self) -> KeySet | None: ...

    def refresh_unknown_kid(self) -> None: ...

    def add_waiter(self, callback: Callable[[], None]) -> None: ...


class StaticKeys:
    """A :class:`KeySource` whose keys never change: a JWKS document or an HMAC secret (from a Secret).

    The source of a new Secret version is a new object (with a new verifier): nothing is refreshed here.
    A document without a usable key makes ``current()`` None, hence 503 *unavailable* for the route.
    """

    __slots__ = ("_keys", "_parsed", "error", "generation", "loading")

    def __init__(self, keys: KeySet | None, error: str | None = None) -> None:
        self._parsed = keys
        self._keys = keys if keys else None
        self.error = error if error is not None or self._keys is not None else "no usable key"
        self.generation = 1
        self.loading = False

    @classmethod
    def from_jwks(cls, document: str | bytes) -> StaticKeys:
        """From a JWKS document (symmetric keys allowed: the document is private)."""
        try:
            return cls(KeySet.from_jwks(document, allow_secret=True))
        except (ValueError, RecursionError):
            return cls(None, "not a JWKS document")

    @classmethod
    def from_hmac(cls, secret: bytes, algorithms: Iterable[str] = HMAC_ALGORITHMS) -> StaticKeys:
        """From an HMAC secret, for the HS algorithms among ``algorithms``."""
        return cls(KeySet.from_hmac(secret, algorithms))

    def current(self) -> KeySet | None:
        return self._keys

    def refresh_unknown_kid(self) -> None:
        pass

    def add_waiter(self, callback: Callable[[], None]) -> None:
        callback()  # never loading: "the first load" is over already

    def state(self) -> dict[str, Any]:
        """For the admin view: never any key material."""
        keys = self._parsed
        return {
            "source": "static",
            "keys": len(keys) if keys is not None else 0,
            "kids": keys.kids if keys is not None else [],
            "skipped": list(keys.skipped) if keys is not None else [],
            "generation": self.generation,
            "error": self.error,
        }

    def __repr__(self) -> str:
        return f"<StaticKeys keys={len(self._keys) if self._keys else 0} error={self.error!r}>"


class JwtResult:
    """What :meth:`JwtVerifier.verify` decided. ``outcome`` is OK, FAILED, UNAVAILABLE or PENDING.

    OK: ``claims``, ``identity`` (the ``sub`` claim as a string, None without one) and ``headers`` (the
    ``(name, value)`` pairs to add to the upstream request). FAILED: ``status`` 401 or 403,
    ``www_authenticate`` (the challenge to send), ``description`` (for the error body: says what is wrong
    with the token, never quotes it) and ``reason`` (a short code for metrics). UNAVAILABLE: 503, no key
    set could be loaded. PENDING: the first key set is still loading; wait with ``keys.add_waiter``.
    Results are shared (failures by all requests, a success by every hit of its token): read only.
    """

    __slots__ = (
        "claims",
        "description",
        "headers",
        "identity",
        "outcome",
        "reason",
        "status",
        "www_authenticate",
    )

    def __init__(
        self,
        outcome: int,
        status: int,
        reason: str,
        description: str = "",
        www_authenticate: bytes | None = None,
        claims: dict[str, Any] | None = None,
        identity: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.outcome = outcome
        self.status = status
        self.reason = reason
        self.description = description
        self.www_authenticate = www_authenticate
        self.claims: dict[str, Any] = claims if claims is not None else {}
        self.identity = identity
        self.headers = headers

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    def __repr__(self) -> str:
        if self.outcome == OK:
            return f"<JwtResult ok identity={self.identity!r} headers={len(self.headers)}>"
        return f"<JwtResult {OUTCOME_NAMES[self.outcome]} {self.status} {self.reason}>"


def _failure(status: int, reason: str, description: str, error: str | None = "invalid_token") -> JwtResult:
    challenge = (
        b"Bearer" if error is None else f'Bearer error="{error}", error_description="{description}"'.encode()
    )
    return JwtResult(FAILED, status, reason, description, challenge)


#: The failures, by reason: shared objects with fixed texts.
FAILURES: Final[dict[str, JwtResult]] = {
    r.reason: r
    for r in (
        _failure(401, "missing", "no bearer token in the Authorization header", None),
        _failure(401, "too_large", f"the token is larger than {MAX_TOKEN_BYTES} bytes"),
        _failure(401, "malformed", "the token is not a well-formed signed JWT (compact JWS)"),
        _failure(401, "crit", "the token requires an extension (crit) that is not supported"),
        _failure(401, "algorithm", "the token's signing algorithm is not accepted here"),
        _failure(401, "unknown_kid", "the token's key id (kid) is not among the issuer's current keys"),
        _failure(401, "bad_signature", "the token's signature does not verify"),
        _failure(401, "no_exp", "the token has no expiry (exp claim)"),
        _failure(401, "expired", "the token has expired"),
        _failure(401, "not_yet_valid", "the token is not valid yet (nbf or iat in the future)"),
        _failure(403, "issuer", "the token's issuer (iss) is not accepted here", "insufficient_scope"),
        _failure(403, "audience", "the token's audience (aud) is not this API", "insufficient_scope"),
    )
}
UNAVAILABLE_RESULT: Final = JwtResult(
    UNAVAILABLE, 503, "keys_unavailable", "the token signing keys could not be loaded"
)
PENDING_RESULT: Final = JwtResult(PENDING, 0, "pending", "the token signing keys are loading")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _header_value(value: object) -> bytes | None:
    """A claim as a header value: str, int and bool only, and no control characters."""
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str) and value.isprintable():
        return value.encode()
    return None


def _segment_json(segment: bytes) -> Any:
    """Decode one base64url segment holding JSON (charset checked by the caller); None when it is not."""
    if len(segment) % 4 == 1:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
    except (ValueError, RecursionError, binascii.Error):
        return None


class JwtVerifier:
    """One route's JWT check (see the module docstring); ``verify`` is synchronous and O(1) on a cache hit."""

    __slots__ = (
        "_audiences",
        "_cache",
        "_cache_size",
        "_claims_to_headers",
        "_clock",
        "_issuer",
        "_skew",
        "algorithms",
        "hits",
        "keys",
        "misses",
    )

    def __init__(
        self,
        algorithms: tuple[str, ...],
        issuer: str | None,
        audiences: tuple[str, ...],
        clock_skew: float,
        keys: KeySource,
        clock: Callable[[], float],
        claims_to_headers: tuple[tuple[str, str], ...] = (),
        cache_size: int = 10_000,
    ) -> None:
        # Unknown names and "none" are dropped (the compiler reports them): they can never verify.
        self.algorithms = frozenset(a for a in algorithms if a in SUPPORTED_ALGORITHMS)
        self._issuer = issuer
        self._audiences = frozenset(audiences)
        self._skew = clock_skew
        self.keys = keys
        self._clock = clock
        self._claims_to_headers = tuple(
            (claim, header.encode("ascii")) for claim, header in claims_to_headers
        )
        self._cache: OrderedDict[bytes, tuple[JwtResult, float, int]] = OrderedDict()
        self._cache_size = cache_size
        self.hits = 0  # verifications answered from the cache
        self.misses = 0  # ... and the others that got as far as the cache

    def verify(self, authorization: bytes | None) -> JwtResult:
        """Check the value of the request's ``Authorization`` header (None: the request had none)."""
        if not authorization:
            return FAILURES["missing"]
        size = len(authorization)
        if size > MAX_TOKEN_BYTES + 64:
            return FAILURES["too_large"]
        key = authorization if size <= CACHE_KEY_BYTES else hashlib.sha256(authorization).digest()
        cache = self._cache
        entry = cache.get(key)
        now = self._clock()
        if entry is not None:
            if now < entry[1] and entry[2] == self.keys.generation:
                cache.move_to_end(key)
                self.hits += 1
                return entry[0]
            del cache[key]
        scheme, _, token = authorization.strip(b" \t").partition(b" ")
        if scheme.lower() != b"bearer":
            return FAILURES["missing"]  # another scheme, or a bare token: no bearer credential
        token = token.lstrip(b" ")
        if not token:
            return FAILURES["missing"]
        if len(token) > MAX_TOKEN_BYTES:
            return FAILURES["too_large"]
        if token.translate(None, _TOKEN_CHARS):
            return FAILURES["malformed"]
        self.misses += 1
        generation = self.keys.generation  # before verifying: a set swapped meanwhile invalidates the entry
        result, until = self._verify(token, now)
        if result.outcome == OK:
            cache[key] = (result, until, generation)
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return result

    def _verify(self, token: bytes, now: float) -> tuple[JwtResult, float]:
        parts = token.split(b".")
        if len(parts) != 3:
            return FAILURES["malformed"], 0.0
        header = _segment_json(parts[0])
        if not isinstance(header, dict):
            return FAILURES["malformed"], 0.0
        alg = header.get("alg")
        kid = header.get("kid")
        if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
            return FAILURES["malformed"], 0.0
        if "crit" in header:
            return FAILURES["crit"], 0.0
        if alg not in self.algorithms:
            return FAILURES["algorithm"], 0.0
        keyset = self.keys.current()
        if keyset is None:
            return (PENDING_RESULT if self.keys.loading else UNAVAILABLE_RESULT), 0.0
        candidates, problem = keyset.select(kid, alg)
        if problem is not None:
            if problem == "unknown_kid":
                self.keys.refresh_unknown_kid()
            return FAILURES[problem], 0.0
        payload: bytes | None = None
        for jwk in candidates:
            try:
                payload = _JWS.decode_complete(token, key=jwk, algorithms=[alg])["payload"]
                break
            except (jwt_errors.InvalidSignatureError, jwt_errors.InvalidKeyError):
                continue
            except jwt_errors.InvalidAlgorithmError:
                return FAILURES["algorithm"], 0.0
            except jwt_errors.PyJWTError:
                return FAILURES["malformed"], 0.0
        if payload is None:
            return FAILURES["bad_signature"], 0.0
        try:
            claims = json.loads(payload)
        except (ValueError, RecursionError):
            return FAILURES["malformed"], 0.0
        if not isinstance(claims, dict):
            return FAILURES["malformed"], 0.0
        return self._check_claims(claims, now)

    def _check_claims(self, claims: dict[str, Any], now: float) -> tuple[JwtResult, float]:
        skew = self._skew
        exp = claims.get("exp")
        if exp is None:
            return FAILURES["no_exp"], 0.0
        nbf = claims.get("nbf")
        iat = claims.get("iat")
        if not _number(exp) or not (nbf is None or _number(nbf)) or not (iat is None or _number(iat)):
            return FAILURES["malformed"], 0.0
        if now >= exp + skew:
            return FAILURES["expired"], 0.0
        if (nbf is not None and nbf > now + skew) or (iat is not None and iat > now + skew):
            return FAILURES["not_yet_valid"], 0.0
        if self._issuer is not None and claims.get("iss") != self._issuer:
            return FAILURES["issuer"], 0.0
        if self._audiences:
            aud = claims.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(isinstance(a, str) and a in self._audiences for a in auds):
                return FAILURES["audience"], 0.0
        sub = claims.get("sub")
        identity = sub if isinstance(sub, str) else None
        headers: list[tuple[bytes, bytes]] = []
        for claim, header in self._claims_to_headers:
            value = _header_value(claims.get(claim))
            if value is not None:
                headers.append((header, value))
        result = JwtResult(OK, 200, "ok", claims=claims, identity=identity, headers=tuple(headers))
        return result, min(float(exp) + skew, now + CACHE_TTL)

    @property
    def cached(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        return (
            f"<JwtVerifier algorithms={','.join(sorted(self.algorithms))} cached={len(self._cache)}/"
            f"{self._cache_size} hits={self.hits} misses={self.misses}>"
        )
