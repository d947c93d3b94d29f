"""API keys: hashed at rest, found by header or query parameter, the client name as the identity.

Aspects: the right key (header and query), a wrong one, a missing one (absent, empty, blank), the
``clientHeader`` sent upstream, query parsing (first occurrence, percent-encoding, other parameters,
look-alike names), oversized keys, configuration errors (both or neither place, keys not SHA-256 hex,
client names with control characters), that nothing but hashes is held from the table, and the memo of
keys that verified (only those, bounded, never a look-alike admitted through it).
"""

from __future__ import annotations

import hashlib

import pytest

from kubegate.dataplane.policies.apikey import (
    MAX_KEY_BYTES,
    MAX_REMEMBERED,
    ApiKeyResult,
    ApiKeyVerifier,
    hash_key,
)

KEYS = {hash_key("k-partner-1"): "partner-1", hash_key("k-partner-2/é"): "partner-2"}


def _by_header(client_header: bytes | None = b"X-Client") -> ApiKeyVerifier:
    return ApiKeyVerifier(b"X-API-Key", None, KEYS, client_header)


def _by_query() -> ApiKeyVerifier:
    return ApiKeyVerifier(None, "api_key", KEYS, None)


def _fails(result: ApiKeyResult, reason: str) -> None:
    assert (result.ok, result.status, result.reason) == (False, 401, reason), result


def test_hash_key_is_hex_sha256_of_utf8() -> None:
    assert hash_key("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_key("é") == hashlib.sha256("é".encode()).hexdigest()


def test_right_key_in_the_header() -> None:
    verifier = _by_header()
    result = verifier.verify(b"k-partner-1", "")
    assert result.ok and result.status == 200 and result.client == result.identity == "partner-1"
    assert result.headers == ((b"X-Client", b"partner-1"),)
    assert repr(result) == "<ApiKeyResult ok client='partner-1'>"
    assert verifier.verify(b"  k-partner-1\t", "").client == "partner-1"  # optional whitespace
    assert verifier.verify("k-partner-2/é".encode(), "").client == "partner-2"
    assert _by_header(None).verify(b"k-partner-1", "").headers == ()
    assert repr(verifier) == "<ApiKeyVerifier header=X-API-Key clients=2>"


def test_wrong_and_missing_keys_in_the_header() -> None:
    verifier = _by_header()
    for value in (b"k-partner-3", b"K-PARTNER-1", b"k-partner-1x", hash_key("k-partner-1").encode()):
        _fails(verifier.verify(value, ""), "invalid")
    for value in (None, b"", b"   "):
        result = verifier.verify(value, "api_key=k-partner-1")  # the query is not where this route looks
        _fails(result, "missing")
        assert result.www_authenticate == b'ApiKey header="X-API-Key"'
        assert result.description == 'no API key (header="X-API-Key")'
    invalid = verifier.verify(b"k-wrong", "")
    assert invalid.description == "the API key is not valid" and b"k-wrong" not in (
        invalid.www_authenticate or b""
    )
    _fails(verifier.verify(b"x" * (MAX_KEY_BYTES + 1), ""), "invalid")


def test_right_key_in_the_query() -> None:
    verifier = _by_query()
    assert verifier.verify(None, "api_key=k-partner-1").client == "partner-1"
    assert verifier.verify(None, "a=1&api_key=k-partner-1&b=2").client == "partner-1"
    assert verifier.verify(None, "api_key=k-partner-2%2F%C3%A9").client == "partner-2"
    assert verifier.verify(None, "api%5Fkey=k-partner-1").client == "partner-1"
    # The first occurrence counts.
    assert verifier.verify(None, "api_key=k-partner-1&api_key=nope").client == "partner-1"
    _fails(verifier.verify(None, "api_key=nope&api_key=k-partner-1"), "invalid")
    assert repr(verifier) == "<ApiKeyVerifier query=api_key clients=2>"


def test_wrong_and_missing_keys_in_the_query() -> None:
    verifier = _by_query()
    _fails(verifier.verify(None, "api_key=k-partner-3"), "invalid")
    for query in ("", "api_key=", "api_key", "x_api_key=k-partner-1", "api_keys=k-partner-1", "a=1"):
        result = verifier.verify(b"k-partner-1", query)  # a header is not where this route looks
        _fails(result, "missing")
        assert result.www_authenticate == b'ApiKey query="api_key"'


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ApiKeyVerifier(b"X-API-Key", "api_key", KEYS, None)
    with pytest.raises(ValueError, match="exactly one"):
        ApiKeyVerifier(None, None, KEYS, None)
    with pytest.raises(ValueError):
        ApiKeyVerifier(b"X-API-Key", None, {"k-partner-1": "partner-1"}, None)  # a key in clear
    with pytest.raises(ValueError, match="SHA-256"):
        ApiKeyVerifier(b"X-API-Key", None, {"abcd": "partner-1"}, None)
    with pytest.raises(ValueError, match="control"):
        ApiKeyVerifier(b"X-API-Key", None, {hash_key("k"): "evil\r\nX-Admin: 1"}, b"X-Client")


def test_no_key_is_held_in_clear() -> None:
    verifier = _by_header()
    # every attribute, by dir() (a class compiled by mypyc has no __slots__ to list them)
    held = repr([getattr(verifier, name) for name in dir(verifier) if not name.startswith("__")])
    assert "_clients" in dir(verifier)
    assert "k-partner-1" not in held and "k-partner-2" not in held


def test_a_key_that_verified_is_remembered_and_no_other_key_is() -> None:
    verifier = _by_header()
    assert verifier.remembered == 0
    first = verifier.verify(b"k-partner-1", "")
    assert first.ok and verifier.remembered == 1
    assert verifier.verify(b" k-partner-1\t", "") is first  # the same key, found in the memo
    for i in range(50):  # wrong keys, look-alikes of the remembered one among them
        _fails(verifier.verify(b"k-partner-1%d" % i, ""), "invalid")
    _fails(verifier.verify(b"k-partner-", ""), "invalid")
    _fails(verifier.verify(b"K-PARTNER-1", ""), "invalid")
    assert verifier.remembered == 1
    assert verifier.verify(b"k-partner-2/\xc3\xa9", "").client == "partner-2"
    assert verifier.remembered == 2
    assert "k-partner" not in repr(verifier)


def test_the_memo_is_bounded_and_keys_past_the_bound_still_verify() -> None:
    count = MAX_REMEMBERED + 5
    keys = {hash_key(f"key-{i}"): f"client-{i}" for i in range(count)}
    verifier = ApiKeyVerifier(b"X-API-Key", None, keys, None)
    for _ in range(2):
        for i in range(count):
            assert verifier.verify(b"key-%d" % i, "").client == f"client-{i}"
    assert verifier.remembered == MAX_REMEMBERED
