"""The JWKS key source against a real JWKS server on 127.0.0.1 (tests/jwtkit.py), on the test's event loop.

Aspects: the first load (pending, waiters woken once, also when it fails or the source is closed), 503
while no key set was ever loaded; rotation (a new key appears, the old one disappears: its cached tokens
stop being admitted; a refetch of the same keys keeps the generation and the token cache); the issuer
down or broken (non-200, not JSON, not a JWKS, no usable key, oversized with and without Content-Length,
a timeout): the last good key set keeps serving, ``state()`` shows the error, retries back off;
``Cache-Control`` max-age clamping and the refresh timer at 80% of the TTL; background refreshes;
unknown-kid refreshes, rate limited on a fake clock; URI checks; ``state()`` never holds key material and
redacts user-info.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubegate.dataplane.policies.jwks import BACKOFF_FIRST, MAX_BYTES, JwksSource, cache_ttl, redact_uri
from kubegate.dataplane.policies.jwt import OK, PENDING, UNAVAILABLE, JwtVerifier
from tests.jwtkit import NOW, JwksServer, SigningKey, claims, hmac_key, rsa_key

ISSUER = "https://issuer.test"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def key_a() -> SigningKey:
    return rsa_key("a")


@pytest.fixture(scope="module")
def key_b() -> SigningKey:
    return rsa_key("b")


@pytest.fixture
def server(key_a: SigningKey) -> Iterator[JwksServer]:
    with JwksServer(key_a) as s:
        yield s


def _verifier(source: JwksSource) -> JwtVerifier:
    return JwtVerifier(("RS256",), ISSUER, (), 0, source, Clock(NOW))


def _bearer(key: SigningKey, **extra: Any) -> bytes:
    return b"Bearer " + key.sign(claims(**extra)).encode()


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def _settle(source: JwksSource) -> None:
    await _until(lambda: not source.fetching)


async def test_first_load_is_awaited_by_waiters(server: JwksServer, key_a: SigningKey) -> None:
    source = JwksSource(server.url, Clock(100.0))
    verifier = _verifier(source)
    token = _bearer(key_a)
    assert verifier.verify(token).outcome == UNAVAILABLE  # not started
    source.start()
    assert source.loading and repr(source).endswith("loading keys=0 generation=0>")
    assert verifier.verify(token).outcome == PENDING
    woken: list[str] = []
    done = asyncio.Event()
    source.add_waiter(lambda: woken.append("first"))
    source.add_waiter(done.set)
    await asyncio.wait_for(done.wait(), 5)
    assert woken == ["first"] and not source.loading
    result = verifier.verify(token)
    assert result.outcome == OK and result.identity == "alice"
    state = source.state()
    assert state["loaded"] and state["keys"] == 1 and state["kids"] == ["a"]
    assert state["last_error"] is None and state["generation"] == 1 and state["last_success_ago"] == 0.0
    assert state["ttl"] == 300.0 and server.requests == 1
    # A waiter that comes late is called soon, on the loop.
    source.add_waiter(lambda: woken.append("late"))
    await asyncio.sleep(0)
    assert woken == ["first", "late"]
    source.close()


async def test_a_failed_first_load_wakes_waiters_and_gives_503(server: JwksServer, key_a: SigningKey) -> None:
    server.status = 500
    source = JwksSource(server.url, Clock(100.0))
    verifier = _verifier(source)
    woken: list[int] = []
    source.start()
    source.add_waiter(lambda: woken.append(1))
    await _until(lambda: not source.loading)
    assert woken == [1]
    result = verifier.verify(_bearer(key_a))
    assert (result.outcome, result.status) == (UNAVAILABLE, 503)
    assert source.state()["last_error"] == "HTTP 500" and not source.state()["loaded"]
    # The retry after the backoff is scheduled; an explicit refresh succeeds once the issuer is back.
    next_in = source.next_refresh_in
    assert next_in is not None and next_in <= BACKOFF_FIRST
    server.status = 200
    assert await source.refresh()
    assert verifier.verify(_bearer(key_a)).ok
    assert woken == [1]  # once only
    source.close()


async def test_rotation_new_key_appears_old_one_disappears(
    server: JwksServer, key_a: SigningKey, key_b: SigningKey
) -> None:
    source = JwksSource(server.url, Clock(100.0))
    source.start()
    assert await source.refresh()
    verifier = _verifier(source)
    token_a, token_b = _bearer(key_a), _bearer(key_b)
    assert verifier.verify(token_a).ok
    # The same keys again: the generation stays, and so does the token cache.
    assert await source.refresh()
    assert source.generation == 1
    assert verifier.verify(token_a).ok and verifier.hits == 1

    server.set_keys(key_a, key_b)
    assert await source.refresh()
    assert source.generation == 2 and source.state()["kids"] == ["a", "b"]
    assert verifier.verify(token_a).ok and verifier.verify(token_b).ok

    server.set_keys(key_b)
    assert await source.refresh()
    assert source.generation == 3 and source.state()["kids"] == ["b"]
    assert verifier.verify(token_a).reason == "unknown_kid"  # it was cached: the cache did not admit it
    assert verifier.verify(token_b).ok
    source.close()


async def test_issuer_down_keeps_the_last_good_key_set(server: JwksServer, key_a: SigningKey) -> None:
    source = JwksSource(server.url, Clock(100.0))
    source.start()
    assert await source.refresh()
    verifier = _verifier(source)
    assert verifier.verify(_bearer(key_a)).ok
    server.close()
    assert not await source.refresh()
    state = source.state()
    assert state["loaded"] and state["kids"] == ["a"] and state["failures"] == 1
    assert state["last_error"].startswith("ConnectError")
    assert repr(source).endswith("failing keys=1 generation=1>")
    # Cached and fresh tokens alike are still verified against the last good keys.
    assert verifier.verify(_bearer(key_a)).ok
    assert verifier.verify(_bearer(key_a, sub="bob")).identity == "bob"
    first = source.next_refresh_in
    assert first is not None and first <= BACKOFF_FIRST
    assert not await source.refresh()
    second = source.next_refresh_in
    assert second is not None and BACKOFF_FIRST < second <= 2 * BACKOFF_FIRST
    source.close()
    assert source.next_refresh_in is None


@pytest.mark.parametrize(
    ("body", "send_length", "error"),
    [
        (b"<html>oops</html>", True, "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
        (b'{"issuer": "x"}', True, 'ValueError: not a JWKS document (no "keys" list)'),
        (b"x" * (MAX_BYTES + 1), True, f"response larger than {MAX_BYTES} bytes"),
        (b"x" * (MAX_BYTES + 1), False, f"response larger than {MAX_BYTES} bytes"),
    ],
    ids=["not-json", "not-jwks", "oversized", "oversized-no-length"],
)
async def test_broken_responses_keep_the_last_good_set(
    server: JwksServer, key_a: SigningKey, body: bytes, send_length: bool, error: str
) -> None:
    source = JwksSource(server.url, Clock(100.0))
    assert await source.refresh()
    server.body = body
    server.send_length = send_length
    assert not await source.refresh()
    assert source.state()["last_error"] == error
    assert _verifier(source).verify(_bearer(key_a)).ok
    source.close()


async def test_a_published_set_without_usable_keys(server: JwksServer, key_a: SigningKey) -> None:
    server.set_keys(key_a.private_jwk(), hmac_key(kid="h"))
    source = JwksSource(server.url, Clock(100.0))
    assert not await source.refresh()
    error = source.state()["last_error"]
    assert error == (
        "no usable key in the key set (skipped: a: private key material in a published key set; "
        "h: symmetric key in a published key set)"
    )
    text = json.dumps(source.state())
    for material in (key_a.private_jwk()["d"], key_a.private_jwk()["n"], hmac_key(kid="h").jwk()["k"]):
        assert material not in text
    assert _verifier(source).verify(_bearer(key_a)).outcome == UNAVAILABLE
    source.close()


@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [
        ("max-age=120", 120.0),
        ("max-age=5", 30.0),
        ("public, max-age=999999999", 86400.0),
        ('max-age="600"', 600.0),
        (None, 300.0),
        ("no-store", 30.0),
    ],
)
async def test_cache_control_max_age_is_clamped(
    server: JwksServer, cache_control: str | None, ttl: float
) -> None:
    server.cache_control = cache_control
    source = JwksSource(server.url, Clock(100.0))
    assert await source.refresh()
    assert source.ttl == ttl
    next_in = source.next_refresh_in
    assert next_in is not None and 0.8 * ttl - 5 < next_in <= 0.8 * ttl
    source.close()


def test_cache_ttl_parsing() -> None:
    def ttl(value: str | None) -> float:
        return float(cache_ttl(value, default=300, low=30, high=3600))

    assert ttl("MAX-AGE=60") == 60
    assert ttl("max-age = 90") == 90
    assert ttl("max-age=abc") == 300
    assert ttl("max-age=-5") == 300
    assert ttl("max-age=0") == 30
    assert ttl("no-cache") == 30
    assert ttl("no-cache, max-age=100") == 100
    assert ttl("s-maxage=10") == 300
    assert ttl("") == 300


async def test_background_refresh_before_expiry(
    server: JwksServer, key_a: SigningKey, key_b: SigningKey
) -> None:
    server.cache_control = "max-age=0"  # clamped up to min_ttl: a refresh every 40 ms
    source = JwksSource(server.url, Clock(100.0), min_ttl=0.05)
    source.start()
    await _until(lambda: server.requests >= 3)
    server.set_keys(key_b)
    await _until(lambda: source.state()["kids"] == ["b"])
    source.close()
    await asyncio.sleep(0)
    seen = server.requests
    await asyncio.sleep(0.2)
    assert server.requests == seen  # closing cancelled the timer


async def test_unknown_kid_refresh_is_rate_limited(server: JwksServer, key_a: SigningKey) -> None:
    clock = Clock(1000.0)
    source = JwksSource(server.url, clock, unknown_kid_interval=30)
    assert await source.refresh()
    verifier = _verifier(source)
    rotated = rsa_key("c")
    stranger = _bearer(rotated)
    assert verifier.verify(stranger).reason == "unknown_kid"
    assert source.fetching and source.unknown_kid_refreshes == 1
    await _settle(source)
    assert server.requests == 2
    for _ in range(50):
        assert verifier.verify(stranger).reason == "unknown_kid"
    assert not source.fetching and source.unknown_kid_refreshes == 1
    clock.now += 29.9
    verifier.verify(stranger)
    assert not source.fetching
    # The interval is over, and the issuer has published the new key meanwhile: one refresh, then admitted.
    server.set_keys(key_a, rotated)
    clock.now += 0.1
    assert verifier.verify(stranger).reason == "unknown_kid"
    assert source.fetching
    await _settle(source)
    assert server.requests == 3 and source.unknown_kid_refreshes == 2
    assert verifier.verify(stranger).ok
    source.close()


async def test_close_while_loading_wakes_waiters() -> None:
    never: asyncio.Future[tuple[int, dict[str, str], bytes]] = asyncio.get_running_loop().create_future()

    async def fetch(uri: str) -> tuple[int, dict[str, str], bytes]:
        return await never

    source = JwksSource("https://issuer.test/jwks", Clock(0.0), fetch=fetch)
    source.start()
    woken: list[int] = []
    source.add_waiter(lambda: woken.append(1))
    await asyncio.sleep(0)
    assert source.fetching
    source.close()
    assert woken == [1] and not source.loading and not source.fetching
    assert _verifier(source).verify(b"Bearer a.b.c").reason == "malformed"
    assert not await source.refresh()


async def test_a_fetch_that_hangs_times_out(key_a: SigningKey) -> None:
    async def fetch(uri: str) -> tuple[int, dict[str, str], bytes]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    source = JwksSource("https://issuer.test/jwks", Clock(0.0), fetch=fetch, timeout=0.01)
    assert not await source.refresh()
    assert source.last_error == "TimeoutError"
    source.close()


async def test_same_keys_in_another_order_keep_the_generation(key_a: SigningKey, key_b: SigningKey) -> None:
    documents = [[key_a.jwk(), key_b.jwk()], [key_b.jwk(), key_a.jwk()]]

    async def fetch(uri: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {}, json.dumps({"keys": documents[0]}).encode()

    source = JwksSource("https://issuer.test/jwks", Clock(0.0), fetch=fetch)
    assert await source.refresh()
    documents.pop(0)
    assert await source.refresh()
    assert source.generation == 1 and source.fetches == 2
    source.close()


@pytest.mark.parametrize(
    "uri", ["file:///etc/passwd", "ftp://issuer.test/jwks", "/jwks.json", "https://", "jwks"]
)
def test_only_http_and_https_uris(uri: str) -> None:
    with pytest.raises(ValueError, match="http or https"):
        JwksSource(uri, Clock(0.0))


def test_state_redacts_user_info() -> None:
    source = JwksSource("https://user:hunter2@issuer.test/jwks?x=1", Clock(0.0))
    assert redact_uri(source.uri) == "https://***@issuer.test/jwks?x=1"
    assert source.state()["uri"] == "https://***@issuer.test/jwks?x=1"
    assert "hunter2" not in repr(source)
    assert redact_uri("https://issuer.test/jwks") == "https://issuer.test/jwks"
