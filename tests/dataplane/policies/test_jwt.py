"""JWT verification on an injected clock, with fixed keys (:class:`StaticKeys`) or a fake key source.

Aspects: valid RS256/PS256/ES256/EdDSA/HS256 tokens; ``alg: none`` (even when listed); algorithm
confusion (HS256 signed with the RSA public key PEM) and keys bound to their own alg; ``exp`` required,
expired, ``nbf``/``iat`` in the future, the skew; wrong ``iss``/``aud`` (403); unknown ``kid`` asking the
key source for a refresh; ``jku``/``x5u``/``jwk`` headers ignored; malformed base64, JSON, segment counts
and characters; oversized tokens refused before parsing; ``crit``; the ``Bearer`` scheme; claims copied to
headers (and unsafe values skipped); failures never echo the token; the verified-token cache (hits do no
signature work, expiry on the clock, key-set generation, LRU bound, failures not cached); pending and
unavailable key sources; lenient JWKS parsing (private members, ``use``, symmetric keys) and ``state()``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from kubegate.dataplane.policies.jwt import (
    FAILED,
    MAX_TOKEN_BYTES,
    OK,
    PENDING,
    UNAVAILABLE,
    JwtResult,
    JwtVerifier,
    KeySet,
    StaticKeys,
)
from tests.jwtkit import (
    NOW,
    SigningKey,
    assemble,
    b64json,
    b64url,
    claims,
    ec_key,
    ed_key,
    hmac_key,
    hmac_sign,
    jwks,
    rsa_key,
)

ISSUER = "https://issuer.test"
ALL = ("RS256", "RS384", "PS256", "ES256", "EdDSA", "HS256")


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeKeys:
    """A key source under the test's control that counts how often the verifier asks for the keys."""

    def __init__(self, keys: KeySet | None, loading: bool = False) -> None:
        self.keys = keys
        self.generation = 1
        self.loading = loading
        self.current_calls = 0
        self.unknown_kid_calls = 0
        self.waiters: list[Callable[[], None]] = []

    def current(self) -> KeySet | None:
        self.current_calls += 1
        return self.keys

    def refresh_unknown_kid(self) -> None:
        self.unknown_kid_calls += 1

    def add_waiter(self, callback: Callable[[], None]) -> None:
        self.waiters.append(callback)


@pytest.fixture(scope="module")
def rsa() -> SigningKey:
    return rsa_key("rsa-1")


@pytest.fixture(scope="module")
def ec() -> SigningKey:
    return ec_key("ec-1")


def _verifier(
    *keys: SigningKey | dict[str, Any],
    algorithms: tuple[str, ...] = ALL,
    clock: Clock | None = None,
    audiences: tuple[str, ...] = ("orders-api",),
    issuer: str | None = ISSUER,
    skew: float = 30.0,
    **kwargs: Any,
) -> JwtVerifier:
    source = StaticKeys.from_jwks(json.dumps(jwks(*keys)))
    return JwtVerifier(algorithms, issuer, audiences, skew, source, clock or Clock(), **kwargs)


def _bearer(token: str) -> bytes:
    return b"Bearer " + token.encode()


def _fails(result: JwtResult, reason: str, status: int = 401) -> None:
    assert (result.outcome, result.reason, result.status) == (FAILED, reason, status), result


# -- valid tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: rsa_key("r", "RS256"),
        lambda: rsa_key("r", "RS384"),
        lambda: rsa_key("r", "PS256"),
        lambda: ec_key("e", "ES256"),
        lambda: ed_key("d"),
        lambda: hmac_key(kid="h"),
    ],
    ids=["RS256", "RS384", "PS256", "ES256", "EdDSA", "HS256"],
)
def test_valid_tokens_of_each_algorithm(make: Callable[[], SigningKey]) -> None:
    key = make()
    verifier = _verifier(key)
    result = verifier.verify(_bearer(key.sign(claims(scope="read"))))
    assert result.outcome == OK and result.ok and result.status == 200
    assert result.identity == "alice"
    assert result.claims["scope"] == "read"
    assert repr(result) == "<JwtResult ok identity='alice' headers=0>"


def test_hmac_secret_from_a_secret(rsa: SigningKey) -> None:
    key = hmac_key()
    source = StaticKeys.from_hmac(key.key, ("HS256", "HS384"))
    verifier = JwtVerifier(("HS256", "HS384", "HS512", "RS256"), ISSUER, (), 0, source, Clock())
    assert verifier.verify(_bearer(key.sign(claims()))).ok
    assert verifier.verify(_bearer(key.sign(claims(), alg="HS384"))).ok
    # A kid in the token does not matter to a secret without one.
    assert verifier.verify(_bearer(key.sign(claims(), headers={"kid": "whatever"}))).ok
    # HS512 was not among the secret's algorithms; another secret does not verify.
    _fails(verifier.verify(_bearer(key.sign(claims(), alg="HS512"))), "algorithm")
    other = hmac_key(b"another secret that is long enough...")
    _fails(verifier.verify(_bearer(other.sign(claims()))), "bad_signature")
    # An RS256 token finds no RSA key.
    _fails(verifier.verify(_bearer(rsa.sign(claims(), headers={"kid": None}))), "algorithm")
    assert StaticKeys.from_hmac(b"").current() is None


def test_key_without_alg_serves_the_allowed_algorithms_of_its_type(rsa: SigningKey) -> None:
    verifier = _verifier(rsa.jwk(with_alg=False), algorithms=("RS256", "RS512", "PS256"))
    assert verifier.verify(_bearer(rsa.sign(claims(), alg="RS512"))).ok
    assert verifier.verify(_bearer(rsa.sign(claims(), alg="PS256"))).ok
    _fails(verifier.verify(_bearer(rsa.sign(claims(), alg="RS384"))), "algorithm")  # not allowed


def test_key_with_alg_serves_only_that_alg(rsa: SigningKey) -> None:
    verifier = _verifier(rsa, algorithms=("RS256", "RS512"))
    assert verifier.verify(_bearer(rsa.sign(claims()))).ok
    _fails(verifier.verify(_bearer(rsa.sign(claims(), alg="RS512"))), "algorithm")


# -- algorithms -----------------------------------------------------------------------------------------


def test_alg_none_is_never_accepted(rsa: SigningKey) -> None:
    verifier = _verifier(rsa, algorithms=("RS256", "none"))
    assert verifier.algorithms == frozenset({"RS256"})
    for alg in ("none", "None", "NONE"):
        token = assemble({"alg": alg, "typ": "JWT", "kid": "rsa-1"}, claims())
        _fails(verifier.verify(_bearer(token)), "algorithm")
        _fails(verifier.verify(_bearer(token + "AAAA")), "algorithm")


def test_algorithm_confusion_hs256_with_the_rsa_public_key_fails(rsa: SigningKey) -> None:
    pem = rsa.public_pem()
    for header in ({"alg": "HS256", "typ": "JWT"}, {"alg": "HS256", "kid": "rsa-1"}):
        token = hmac_sign(header, claims(), pem)
        # HS256 not allowed: refused on the algorithm alone.
        _fails(_verifier(rsa, algorithms=("RS256",)).verify(_bearer(token)), "algorithm")
        # Even with HS256 allowed, the RSA key never serves as an HMAC secret.
        both = _verifier(rsa, rsa.jwk(with_alg=False, kid="rsa-2"), algorithms=("RS256", "HS256"))
        _fails(both.verify(_bearer(token)), "algorithm")


def test_alg_must_fit_the_key_type_and_curve() -> None:
    p256 = ec_key("e", "ES256")
    p384 = ec_key("e", "ES384")
    verifier = _verifier(p256.jwk(with_alg=False), algorithms=("ES256", "ES384"))
    assert verifier.verify(_bearer(p256.sign(claims()))).ok
    # ES384 with a P-256 key in the set: the curve does not fit, no key serves it.
    _fails(verifier.verify(_bearer(p384.sign(claims()))), "algorithm")


# -- time and claims ------------------------------------------------------------------------------------


def test_expiry_with_skew(rsa: SigningKey) -> None:
    clock = Clock()
    verifier = _verifier(rsa, clock=clock, skew=30)
    token = _bearer(rsa.sign(claims(ttl=60)))  # exp = NOW + 60
    clock.now = NOW + 89
    assert verifier.verify(token).ok
    clock.now = NOW + 90
    _fails(verifier.verify(token), "expired")
    _fails(_verifier(rsa, skew=0).verify(_bearer(rsa.sign(claims(ttl=-1)))), "expired")


def test_exp_is_required_and_must_be_a_number(rsa: SigningKey) -> None:
    verifier = _verifier(rsa)
    _fails(verifier.verify(_bearer(rsa.sign(claims(exp=None)))), "no_exp")
    bad = claims()
    bad["exp"] = "tomorrow"
    _fails(verifier.verify(_bearer(rsa.sign(bad))), "malformed")
    bad["exp"] = True
    _fails(verifier.verify(_bearer(rsa.sign(bad))), "malformed")


def test_not_before_and_issued_at_in_the_future(rsa: SigningKey) -> None:
    verifier = _verifier(rsa, skew=30)
    assert verifier.verify(_bearer(rsa.sign(claims(nbf=NOW + 30)))).ok  # within the skew
    _fails(verifier.verify(_bearer(rsa.sign(claims(nbf=NOW + 31)))), "not_yet_valid")
    assert verifier.verify(_bearer(rsa.sign(claims(iat=NOW + 30)))).ok
    _fails(verifier.verify(_bearer(rsa.sign(claims(iat=NOW + 31)))), "not_yet_valid")
    _fails(verifier.verify(_bearer(rsa.sign(claims(nbf="soon")))), "malformed")


def test_wrong_issuer_or_audience_is_403(rsa: SigningKey) -> None:
    verifier = _verifier(rsa, audiences=("orders-api", "billing-api"))
    for bad in (claims(iss="https://evil.test"), claims(iss=None)):
        result = verifier.verify(_bearer(rsa.sign(bad)))
        _fails(result, "issuer", 403)
        assert result.www_authenticate is not None
        assert result.www_authenticate.startswith(b'Bearer error="insufficient_scope"')
    for bad in (claims(aud="other-api"), claims(aud=None), claims(aud=["x", "y"]), claims(aud=7)):
        _fails(verifier.verify(_bearer(rsa.sign(bad))), "audience", 403)
    assert verifier.verify(_bearer(rsa.sign(claims(aud=["x", "billing-api"])))).ok
    # Unset issuer and audiences check nothing.
    assert _verifier(rsa, issuer=None, audiences=()).verify(_bearer(rsa.sign(claims(iss=None, aud="x")))).ok


def test_time_failures_come_before_issuer_and_audience(rsa: SigningKey) -> None:
    _fails(_verifier(rsa).verify(_bearer(rsa.sign(claims(ttl=-100, iss="https://evil.test")))), "expired")


# -- key selection --------------------------------------------------------------------------------------


def test_unknown_kid_asks_the_source_for_a_refresh(rsa: SigningKey) -> None:
    source = FakeKeys(KeySet.from_jwks(jwks(rsa), allow_secret=False))
    verifier = JwtVerifier(("RS256",), ISSUER, (), 0, source, Clock())
    stranger = rsa_key("rsa-9")
    _fails(verifier.verify(_bearer(stranger.sign(claims()))), "unknown_kid")
    assert source.unknown_kid_calls == 1
    # Without a kid the keys of the right type are tried: a bad signature, no refresh.
    _fails(verifier.verify(_bearer(stranger.sign(claims(), headers={"kid": None}))), "bad_signature")
    assert source.unknown_kid_calls == 1
    assert verifier.verify(_bearer(rsa.sign(claims(), headers={"kid": None}))).ok


def test_without_kid_only_a_few_keys_are_tried() -> None:
    signer = rsa_key(None)
    others = [rsa_key(f"k{i}").jwk(kid=None) for i in range(3)]
    too_far = _verifier(*others, signer.jwk(), algorithms=("RS256",))
    _fails(too_far.verify(_bearer(signer.sign(claims()))), "bad_signature")
    near = _verifier(*others[:2], signer.jwk(), algorithms=("RS256",))
    assert near.verify(_bearer(signer.sign(claims()))).ok


@pytest.mark.parametrize("where", ["jwk", "jku", "x5u", "x5c"])
def test_key_headers_pointing_elsewhere_are_ignored(rsa: SigningKey, where: str) -> None:
    attacker = rsa_key("rsa-1")  # even claims the legitimate kid
    planted: dict[str, Any] = {
        "jwk": attacker.jwk(),
        "jku": "https://evil.test/jwks.json",
        "x5u": "https://evil.test/cert.pem",
        "x5c": ["MIIB"],
    }
    verifier = _verifier(rsa)
    headers = {where: planted[where]}
    _fails(verifier.verify(_bearer(attacker.sign(claims(), headers=headers))), "bad_signature")
    headers["kid"] = "attacker"
    _fails(verifier.verify(_bearer(attacker.sign(claims(), headers=headers))), "unknown_kid")
    # The legitimate issuer's token with such headers is judged on its own key.
    assert verifier.verify(_bearer(rsa.sign(claims(), headers={where: planted[where]}))).ok


def test_crit_is_refused(rsa: SigningKey) -> None:
    verifier = _verifier(rsa)
    for crit in (["exp"], ["b64"], ["urn:example"]):
        _fails(verifier.verify(_bearer(rsa.sign(claims(), headers={"crit": crit}))), "crit")


# -- malformed and oversized ----------------------------------------------------------------------------


def test_malformed_tokens(rsa: SigningKey) -> None:
    verifier = _verifier(rsa, hmac_key())
    good = rsa.sign(claims())
    head, body, sig = good.split(".")
    key = hmac_key().key
    cases = {
        "two segments": f"{head}.{body}",
        "four segments": f"{good}.{sig}",
        "five segments (JWE)": f"{head}.{body}.{sig}.{sig}.{sig}",
        "empty": "..",
        "header not base64": f"!!!!.{body}.{sig}",
        "header shifted": f"A{head}.{body}.{sig}",
        "header not JSON": assemble(b64url(b"{not json"), claims()),
        "header a JSON list": assemble(b64url(b'["alg","RS256"]'), claims()),
        "header alg not a string": assemble({"alg": ["RS256"]}, claims()),
        "header kid not a string": assemble({"alg": "RS256", "kid": 1}, claims()),
        "padding": f"{head}==.{body}.{sig}",
        "standard base64 characters": f"{head}.{body}.{sig[:-2]}+/",
        "signature bad length": f"{head}.{body}.{sig[:-1]}",  # 341 characters: 1 mod 4
        "payload not JSON (signed)": hmac_sign({"alg": "HS256"}, b64url(b"not json"), key),
        "payload a JSON list (signed)": hmac_sign({"alg": "HS256"}, b64json([1, 2]), key),
        "payload not base64 (signed)": hmac_sign({"alg": "HS256"}, "e30A", key),
    }
    assert len(sig) == 342
    for name, token in cases.items():
        _fails(verifier.verify(_bearer(token)), "malformed")
        assert verifier.verify(_bearer(token)).reason == "malformed", name


def test_oversized_tokens_are_refused_before_parsing(rsa: SigningKey) -> None:
    source = FakeKeys(KeySet.from_jwks(jwks(rsa), allow_secret=False))
    verifier = JwtVerifier(("RS256",), ISSUER, (), 0, source, Clock())
    big = rsa.sign(claims(padding="x" * 5600))
    assert MAX_TOKEN_BYTES - 500 < len(big) <= MAX_TOKEN_BYTES
    assert verifier.verify(_bearer(big)).ok
    calls = source.current_calls
    too_big = rsa.sign(claims(padding="x" * MAX_TOKEN_BYTES))
    _fails(verifier.verify(_bearer(too_big)), "too_large")
    _fails(verifier.verify(b"Bearer " + b"A" * 1_000_000), "too_large")
    assert source.current_calls == calls


# -- the Authorization header ---------------------------------------------------------------------------


def test_bearer_scheme(rsa: SigningKey) -> None:
    verifier = _verifier(rsa)
    token = rsa.sign(claims()).encode()
    for value in (b"Bearer " + token, b"bearer " + token, b"BEARER " + token, b"  Bearer   " + token + b" "):
        assert verifier.verify(value).ok, value[:12]
    for missing in (None, b"", b"Bearer", b"Bearer ", b"Basic dXNlcjpwYXNz", token, b"Token " + token):
        result = verifier.verify(missing)
        _fails(result, "missing")
        assert result.www_authenticate == b"Bearer"
    _fails(verifier.verify(b"Bearer " + token + b" extra"), "malformed")


def test_failures_name_the_problem_and_never_echo_the_token(rsa: SigningKey) -> None:
    verifier = _verifier(rsa)
    token = rsa.sign(claims(ttl=-100))
    result = verifier.verify(_bearer(token))
    _fails(result, "expired")
    assert (
        result.www_authenticate == b'Bearer error="invalid_token", error_description="the token has expired"'
    )
    assert result.description == "the token has expired"
    garbage = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"
    for value in (token, garbage):
        failed = verifier.verify(_bearer(value))
        for segment in value.split("."):
            assert segment not in failed.description
            assert failed.www_authenticate is not None and segment.encode() not in failed.www_authenticate
            assert segment not in repr(failed)


# -- claims to headers ----------------------------------------------------------------------------------


def test_claims_to_headers_copies_safe_scalars_only(rsa: SigningKey) -> None:
    mapping = (
        ("sub", "X-User"),
        ("tier", "X-Tier"),
        ("admin", "X-Admin"),
        ("groups", "X-Groups"),
        ("evil", "X-Evil"),
        ("nul", "X-Nul"),
        ("name", "X-Name"),
        ("absent", "X-Absent"),
        ("ratio", "X-Ratio"),
    )
    verifier = _verifier(rsa, claims_to_headers=mapping)
    token = rsa.sign(
        claims(
            tier=3,
            admin=False,
            groups=["a", "b"],
            evil="x\r\nX-Injected: 1",
            nul="a\x00b",
            name="Zoë",
            ratio=0.5,
        )
    )
    result = verifier.verify(_bearer(token))
    assert result.ok
    assert result.headers == (
        (b"X-User", b"alice"),
        (b"X-Tier", b"3"),
        (b"X-Admin", b"false"),
        (b"X-Name", "Zoë".encode()),
    )


def test_identity_is_the_sub_claim(rsa: SigningKey) -> None:
    verifier = _verifier(rsa)
    assert verifier.verify(_bearer(rsa.sign(claims(sub="bob")))).identity == "bob"
    assert verifier.verify(_bearer(rsa.sign(claims(sub=None)))).identity is None


# -- the verified-token cache ---------------------------------------------------------------------------


def test_cache_hits_do_no_signature_work(rsa: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    source = FakeKeys(KeySet.from_jwks(jwks(rsa), allow_secret=False))
    verifier = JwtVerifier(("RS256",), ISSUER, (), 0, source, Clock())
    token = _bearer(rsa.sign(claims()))
    first = verifier.verify(token)
    assert first.ok and source.current_calls == 1
    from kubegate.dataplane.policies import jwt as module

    def no_crypto(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("signature verified again")

    monkeypatch.setattr(module._JWS, "decode_complete", no_crypto)
    for _ in range(5):
        assert verifier.verify(token) is first
    assert source.current_calls == 1
    assert (verifier.hits, verifier.misses, verifier.cached) == (5, 1, 1)
    assert repr(verifier) == "<JwtVerifier algorithms=RS256 cached=1/10000 hits=5 misses=1>"
    # The cache is keyed by the header value: another spelling of the scheme is verified once more.
    monkeypatch.undo()
    again = verifier.verify(b"bearer  " + token[7:])
    assert again.ok and again is not first and (verifier.misses, verifier.cached) == (2, 2)


def test_cached_token_still_expires_on_the_clock(rsa: SigningKey) -> None:
    clock = Clock()
    source = FakeKeys(KeySet.from_jwks(jwks(rsa), allow_secret=False))
    verifier = JwtVerifier(("RS256",), ISSUER, (), 10, source, clock)
    token = _bearer(rsa.sign(claims(ttl=60)))
    assert verifier.verify(token).ok
    clock.now = NOW + 69.9
    assert verifier.verify(token).ok and verifier.hits == 1
    clock.now = NOW + 70
    _fails(verifier.verify(token), "expired")
    assert verifier.cached == 0


def test_cache_entries_live_at_most_five_minutes(rsa: SigningKey) -> None:
    clock = Clock()
    source = FakeKeys(KeySet.from_jwks(jwks(rsa), allow_secret=False))
    verifier = JwtVerifier(("RS256",), ISSUER, (), 0, source, clock)
    token = _bearer(rsa.sign(claims(ttl=3600)))
    verifier.verify(token)
    clock.now = NOW + 299
    verifier.verify(token)
    assert source.current_calls == 1
    clock.now = NOW + 300
    assert verifier.verify(token).ok
    assert source.current_calls == 2


def test_a_new_key_set_generation_drops_cached_tokens(rsa: SigningKey) -> None:
    other = rsa_key("rsa-2")
    source = FakeKeys(KeySet.from_jwks(jwks(rsa, other), allow_secret=False))
    verifier = JwtVerifier(("RS256",), ISSUER, (), 0, source, Clock())
    old, new = _bearer(rsa.sign(claims())), _bearer(other.sign(claims()))
    assert verifier.verify(old).ok and verifier.verify(new).ok
    # rsa-1 leaves the set: its cached token must stop being admitted.
    source.keys = KeySet.from_jwks(jwks(other), allow_secret=False)
    source.generation += 1
    _fails(verifier.verify(old), "unknown_kid")
    assert verifier.verify(new).ok
    assert verifier.hits == 0


def test_cache_is_a_bounded_lru(rsa: SigningKey) -> None:
    source = FakeKeys(KeySet.from_jwks(jwks(rsa), allow_secret=False))
    verifier = JwtVerifier(("RS256",), ISSUER, (), 0, source, Clock(), cache_size=2)
    a, b, c = (_bearer(rsa.sign(claims(sub=name))) for name in "abc")
    verifier.verify(a)
    verifier.verify(b)
    verifier.verify(a)  # a is now the most recent
    verifier.verify(c)  # evicts b
    assert verifier.cached == 2
    calls = source.current_calls
    verifier.verify(a)
    verifier.verify(c)
    assert source.current_calls == calls
    verifier.verify(b)
    assert source.current_calls == calls + 1


def test_failures_are_not_cached(rsa: SigningKey) -> None:
    source = FakeKeys(KeySet.from_jwks(jwks(rsa), allow_secret=False))
    verifier = JwtVerifier(("RS256",), "https://other.test", (), 0, source, Clock())
    token = _bearer(rsa.sign(claims()))
    _fails(verifier.verify(token), "issuer", 403)
    _fails(verifier.verify(token), "issuer", 403)
    assert source.current_calls == 2 and verifier.cached == 0


# -- key sources ----------------------------------------------------------------------------------------


def test_pending_while_the_first_load_is_in_flight_then_unavailable(rsa: SigningKey) -> None:
    source = FakeKeys(None, loading=True)
    verifier = JwtVerifier(("RS256",), ISSUER, (), 0, source, Clock())
    token = _bearer(rsa.sign(claims()))
    result = verifier.verify(token)
    assert result.outcome == PENDING and repr(result) == "<JwtResult pending 0 pending>"
    source.loading = False
    result = verifier.verify(token)
    assert (result.outcome, result.status, result.reason) == (UNAVAILABLE, 503, "keys_unavailable")
    # A missing or broken credential is still a 401, keys or not.
    _fails(verifier.verify(None), "missing")
    _fails(verifier.verify(b"Bearer a.b"), "malformed")
    source.keys = KeySet.from_jwks(jwks(rsa), allow_secret=False)
    assert verifier.verify(token).ok


def test_static_jwks_lenient_per_key(rsa: SigningKey, ec: SigningKey) -> None:
    secret = hmac_key(kid="h")
    document = jwks(
        rsa.private_jwk(),  # private members: reduced to the public key (a Secret is private)
        ec.jwk(use="enc"),  # not for signatures
        {"kty": "XYZ", "kid": "odd"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB", "e": ""},
        rsa.jwk(kid="wrong-alg", alg="ES256"),
        secret.jwk(),
    )
    source = StaticKeys.from_jwks(json.dumps(document))
    keys = source.current()
    assert keys is not None and keys.kids == ["h", "rsa-1"]
    assert keys.skipped == (
        "ec-1: use is not sig",
        "odd: unsupported kty",
        "broken: invalid key material",
        "wrong-alg: unsupported alg",
    )
    verifier = JwtVerifier(("RS256", "HS256", "ES256"), ISSUER, (), 0, source, Clock())
    assert verifier.verify(_bearer(rsa.sign(claims()))).ok
    assert verifier.verify(_bearer(secret.sign(claims()))).ok
    _fails(verifier.verify(_bearer(ec.sign(claims()))), "unknown_kid")
    state = source.state()
    assert state["kids"] == ["h", "rsa-1"] and state["keys"] == 2 and state["error"] is None
    text = repr(state)
    for material in (rsa.private_jwk()["n"], rsa.private_jwk()["d"], secret.jwk()["k"]):
        assert material not in text


def test_published_key_sets_refuse_secrets_and_private_keys(rsa: SigningKey, ec: SigningKey) -> None:
    keys = KeySet.from_jwks(jwks(rsa.private_jwk(), hmac_key(kid="h"), ec), allow_secret=False)
    assert keys.kids == ["ec-1"]
    assert keys.skipped == (
        "rsa-1: private key material in a published key set",
        "h: symmetric key in a published key set",
    )


def test_static_keys_that_cannot_be_used() -> None:
    for document in ("not json", '{"keys": 3}', "[]", '{"keys": []}', '{"keys": [{"kty": "RSA"}]}'):
        source = StaticKeys.from_jwks(document)
        assert source.current() is None and source.error
        verifier = JwtVerifier(("RS256",), None, (), 0, source, Clock())
        assert verifier.verify(_bearer(rsa_key().sign(claims()))).outcome == UNAVAILABLE
    woken: list[int] = []
    StaticKeys(None).add_waiter(lambda: woken.append(1))
    assert woken == [1]
