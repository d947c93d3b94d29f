"""The route cache's decisions (RFC 9111, shared cache), as tables of cases, on an injected wall clock.

Aspects: what a response may be stored for and why not (status, no-store, private with and without a
per-user key, no-cache, credentials, Set-Cookie, Vary: *, size), its lifetime (s-maxage, max-age, Expires -
Date, the route's ttl, minus Age) and age; invalid and conflicting values (stale); Cache-Control parsing
(case, quoted strings with commas, repeated headers); request and response end to end; what a request does
(lookup, refresh, bypass and why); key equalities and inequalities (query order and modes,
percent-escapes, key headers absent vs empty, per-user identities, host case, route id, concatenation);
Vary values and their normalisation; HTTP date forms; the rules' own checks.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any, cast

import pytest

from kubegate.dataplane.policies.cachecontrol import (
    BYPASS,
    LOOKUP,
    MAX_DELTA_SECONDS,
    REFRESH,
    CacheRules,
    StoreDecision,
    cache_key,
    classify_request,
    decide_store,
    delta_seconds,
    http_date,
    parse_cache_control,
    vary_values,
)

NOW = 1_700_000_000.0
RULES = CacheRules(ttl=300.0, max_entry_bytes=1000)
PER_USER = CacheRules(ttl=300.0, max_entry_bytes=1000, per_user=True)

Headers = list[tuple[bytes, bytes]]


def date(offset: float) -> bytes:
    """An IMF-fixdate ``offset`` seconds from :data:`NOW`."""
    return formatdate(NOW + offset, usegmt=True).encode()


def cc(*values: str) -> Headers:
    return [(b"Cache-Control", value.encode()) for value in values]


def stored(lifetime: float, age: float = 0.0, vary: tuple[bytes, ...] = ()) -> StoreDecision:
    return StoreDecision(True, "", lifetime, age, vary)


def refused(reason: str) -> StoreDecision:
    return StoreDecision(False, reason, 0.0, 0.0, ())


# (status, response headers, decide_store keywords besides now, expected decision)
STORE_CASES: dict[str, tuple[int, Headers, dict[str, Any], StoreDecision]] = {
    # freshness sources
    "nothing-said-uses-route-ttl": (200, [], {}, stored(300.0)),
    "max-age": (200, cc("max-age=60"), {}, stored(60.0)),
    "max-age-upper-case-name": (200, cc("MAX-AGE=60"), {}, stored(60.0)),
    "max-age-quoted-value": (200, cc('max-age="60"'), {}, stored(60.0)),
    "s-maxage-beats-max-age": (200, cc("max-age=60, s-maxage=120"), {}, stored(120.0)),
    "s-maxage-zero-beats-max-age": (200, cc("max-age=60, s-maxage=0"), {}, refused("stale")),
    "max-age-beats-invalid-expires": (200, [*cc("max-age=60"), (b"Expires", b"0")], {}, stored(60.0)),
    "max-age-beats-past-expires": (200, [*cc("max-age=60"), (b"Expires", date(-10))], {}, stored(60.0)),
    "expires-minus-date": (200, [(b"Date", date(-100)), (b"Expires", date(500))], {}, stored(600.0)),
    "expires-minus-date-ignores-our-clock": (
        200,
        [(b"Date", date(10_000)), (b"Expires", date(10_060))],
        {},
        stored(60.0),
    ),
    "expires-without-date-minus-now": (200, [(b"Expires", date(500))], {}, stored(500.0)),
    "expires-with-invalid-date-minus-now": (
        200,
        [(b"Date", b"yesterday"), (b"Expires", date(500))],
        {},
        stored(500.0),
    ),
    "expires-rfc850-form": (200, [(b"Expires", b"Tuesday, 14-Nov-23 22:15:00 GMT")], {}, stored(100.0)),
    "expires-asctime-form": (200, [(b"Expires", b"Tue Nov 14 22:15:00 2023")], {}, stored(100.0)),
    "expires-zero-is-expired": (200, [(b"Expires", b"0")], {}, refused("stale")),
    "expires-garbage-is-expired": (200, [(b"Date", date(0)), (b"Expires", b"soon")], {}, refused("stale")),
    "expires-in-the-past": (200, [(b"Date", date(0)), (b"Expires", date(-1))], {}, refused("stale")),
    "expires-equal-to-date": (200, [(b"Date", date(0)), (b"Expires", date(0))], {}, refused("stale")),
    "expires-conflicting-lines": (
        200,
        [(b"Expires", date(500)), (b"Expires", date(600))],
        {},
        refused("stale"),
    ),
    "expires-identical-lines": (200, [(b"Expires", date(500)), (b"Expires", date(500))], {}, stored(500.0)),
    "route-ttl-zero-and-nothing-said": (
        200,
        [],
        {"rules": CacheRules(ttl=0.0, max_entry_bytes=10)},
        refused("stale"),
    ),
    "huge-max-age-capped": (200, cc("max-age=99999999999999"), {}, stored(float(MAX_DELTA_SECONDS))),
    "max-age-of-5000-digits-capped": (200, cc("max-age=" + "9" * 5000), {}, stored(float(MAX_DELTA_SECONDS))),
    # Age
    "age-reduces-max-age": (200, [*cc("max-age=60"), (b"Age", b"20")], {}, stored(40.0, 20.0)),
    "age-reduces-route-ttl": (200, [(b"Age", b"100")], {}, stored(200.0, 100.0)),
    "age-reduces-expires": (
        200,
        [(b"Date", date(0)), (b"Expires", date(500)), (b"Age", b"50")],
        {},
        stored(450.0, 50.0),
    ),
    "age-equal-to-max-age-is-stale": (200, [*cc("max-age=60"), (b"Age", b"60")], {}, refused("stale")),
    "age-beyond-max-age-is-stale": (200, [*cc("max-age=60"), (b"Age", b"61")], {}, refused("stale")),
    "invalid-age-ignored": (200, [*cc("max-age=60"), (b"Age", b"abc")], {}, stored(60.0)),
    "negative-age-ignored": (200, [*cc("max-age=60"), (b"Age", b"-5")], {}, stored(60.0)),
    "age-list-ignored": (200, [*cc("max-age=60"), (b"Age", b"5, 6")], {}, stored(60.0)),
    "conflicting-age-lines-ignored": (
        200,
        [*cc("max-age=60"), (b"Age", b"5"), (b"Age", b"6")],
        {},
        stored(60.0),
    ),
    # invalid and conflicting values: stale
    "max-age-not-a-number": (200, cc("max-age=abc"), {}, refused("stale")),
    "max-age-negative": (200, cc("max-age=-1"), {}, refused("stale")),
    "max-age-fraction": (200, cc("max-age=1.5"), {}, refused("stale")),
    "max-age-without-value": (200, cc("max-age"), {}, refused("stale")),
    "max-age-empty": (200, cc("max-age="), {}, refused("stale")),
    "max-age-zero": (200, cc("max-age=0"), {}, refused("stale")),
    "max-age-conflicting-duplicates": (200, cc("max-age=60, max-age=120"), {}, refused("stale")),
    "max-age-conflicting-across-lines": (200, cc("max-age=60", "max-age=120"), {}, refused("stale")),
    "max-age-identical-duplicates": (200, cc("max-age=60", "max-age=60"), {}, stored(60.0)),
    "invalid-s-maxage-does-not-fall-back": (200, cc("max-age=60, s-maxage=x"), {}, refused("stale")),
    # what forbids storing
    "no-store": (200, cc("no-store"), {}, refused("no-store")),
    "no-store-mixed-case": (200, cc("max-age=60, No-Store"), {}, refused("no-store")),
    "no-store-on-a-second-line": (200, cc("max-age=60", "no-store"), {}, refused("no-store")),
    "no-store-lower-case-header-name": (200, [(b"cache-control", b"no-store")], {}, refused("no-store")),
    "no-store-inside-quotes-is-not-a-directive": (
        200,
        cc('ext="no-store, private", max-age=60'),
        {},
        stored(60.0),
    ),
    "private": (200, cc("private, max-age=60"), {}, refused("private")),
    "private-with-field-names": (200, cc('private="set-cookie", max-age=60'), {}, refused("private")),
    "private-per-user": (200, cc("private, max-age=60"), {"private_ok": True}, stored(60.0)),
    "private-quoted-comma-keeps-parse": (
        200,
        cc('private="set-cookie, x-user", max-age=30'),
        {"private_ok": True},
        stored(30.0),
    ),
    "no-cache": (200, cc("no-cache, max-age=60"), {}, refused("no-cache")),
    "no-cache-with-field-names": (200, cc('no-cache="set-cookie", max-age=60'), {}, refused("no-cache")),
    "set-cookie": (200, [*cc("public, max-age=60"), (b"Set-Cookie", b"sid=1")], {}, refused("set-cookie")),
    "set-cookie-upper-case": (200, [(b"SET-COOKIE", b"sid=1")], {}, refused("set-cookie")),
    "vary-star": (200, [(b"Vary", b"*")], {}, refused("vary-star")),
    "vary-star-in-a-list": (200, [(b"Vary", b"Accept-Encoding, *")], {}, refused("vary-star")),
    "vary-star-on-a-second-line": (200, [(b"Vary", b"Origin"), (b"vary", b" * ")], {}, refused("vary-star")),
    "too-large": (200, [], {"content_length": 1001}, refused("too-large")),
    "exactly-max-entry-bytes": (200, [], {"content_length": 1000}, stored(300.0)),
    "credentials-not-per-user": (200, cc("max-age=60"), {"credentials": True}, refused("authorization")),
    "credentials-public": (200, cc("public, max-age=60"), {"credentials": True}, stored(60.0)),
    "credentials-s-maxage": (200, cc("s-maxage=60"), {"credentials": True}, stored(60.0)),
    "credentials-must-revalidate": (
        200,
        cc("must-revalidate, max-age=6"),
        {"credentials": True},
        stored(6.0),
    ),
    "credentials-per-user": (200, cc("max-age=60"), {"credentials": True, "private_ok": True}, stored(60.0)),
    # Vary names
    "vary-names-lower-cased-deduplicated": (
        200,
        [(b"Vary", b"Accept-Encoding, accept-encoding"), (b"VARY", b"Origin,,Accept-Language")],
        {},
        stored(300.0, 0.0, (b"accept-encoding", b"origin", b"accept-language")),
    ),
    # statuses
    "status-203": (203, [], {}, stored(300.0)),
    "status-204": (204, [], {}, stored(300.0)),
    "status-301": (301, cc("max-age=5"), {}, stored(5.0)),
    "status-308": (308, [], {}, stored(300.0)),
    "status-404": (404, [], {}, stored(300.0)),
    "status-410": (410, [], {}, stored(300.0)),
    "status-501": (501, [], {}, stored(300.0)),
    "status-206-never": (206, cc("max-age=60"), {}, refused("status")),
    "status-302": (302, cc("max-age=60"), {}, refused("status")),
    "status-304": (304, cc("max-age=60"), {}, refused("status")),
    "status-500": (500, [], {}, refused("status")),
    "status-503": (503, cc("max-age=60"), {}, refused("status")),
    "status-checked-first": (500, cc("no-store"), {"content_length": 10**9}, refused("status")),
    "no-store-before-set-cookie": (200, [*cc("no-store"), (b"Set-Cookie", b"a=b")], {}, refused("no-store")),
    "too-large-before-stale": (200, cc("max-age=0"), {"content_length": 5000}, refused("too-large")),
}


@pytest.mark.parametrize(
    ("status", "headers", "options", "expected"), STORE_CASES.values(), ids=STORE_CASES.keys()
)
def test_decide_store(
    status: int, headers: Headers, options: dict[str, Any], expected: StoreDecision
) -> None:
    options = dict(options)
    rules = options.pop("rules", RULES)
    options.setdefault("content_length", None)
    options.setdefault("private_ok", False)
    assert decide_store(rules, status, headers, now=NOW, **options) == expected


# (method, request headers, keywords, rules, expected (action, reason))
CLASSIFY_CASES: dict[str, tuple[bytes, Headers, dict[str, Any], CacheRules, tuple[str, str]]] = {
    "get": (b"GET", [], {}, RULES, (LOOKUP, "")),
    "head": (b"HEAD", [], {}, RULES, (LOOKUP, "")),
    "post": (b"POST", [], {}, RULES, (BYPASS, "method")),
    "put": (b"PUT", [], {}, RULES, (BYPASS, "method")),
    "options": (b"OPTIONS", [], {}, RULES, (BYPASS, "method")),
    "lower-case-get-is-another-method": (b"get", [], {}, RULES, (BYPASS, "method")),
    "method-before-body": (b"POST", [], {"has_body": True}, RULES, (BYPASS, "method")),
    "get-with-body": (b"GET", [], {"has_body": True}, RULES, (BYPASS, "body")),
    "range": (b"GET", [(b"Range", b"bytes=0-99")], {}, RULES, (BYPASS, "range")),
    "range-lower-case": (b"GET", [(b"range", b"bytes=0-")], {}, RULES, (BYPASS, "range")),
    "range-before-credentials": (
        b"GET",
        [(b"Range", b"bytes=0-")],
        {"credentials": True},
        RULES,
        (BYPASS, "range"),
    ),
    "credentials-flag": (b"GET", [], {"credentials": True}, RULES, (BYPASS, "credentials")),
    "authorization-header": (b"GET", [(b"authorization", b"Bearer x")], {}, RULES, (BYPASS, "credentials")),
    "credentials-with-identity-not-per-user": (
        b"GET",
        [],
        {"credentials": True, "identity": "alice"},
        RULES,
        (BYPASS, "credentials"),
    ),
    "credentials-per-user-without-identity": (
        b"GET",
        [],
        {"credentials": True},
        PER_USER,
        (BYPASS, "credentials"),
    ),
    "credentials-per-user-with-identity": (
        b"GET",
        [(b"Authorization", b"Bearer x")],
        {"credentials": True, "identity": "alice"},
        PER_USER,
        (LOOKUP, ""),
    ),
    "per-user-empty-identity-counts": (
        b"GET",
        [],
        {"credentials": True, "identity": ""},
        PER_USER,
        (LOOKUP, ""),
    ),
    "credentials-before-no-store": (
        b"GET",
        cc("no-store"),
        {"credentials": True},
        RULES,
        (BYPASS, "credentials"),
    ),
    "no-store": (b"GET", cc("no-store"), {}, RULES, (BYPASS, "no-store")),
    "no-store-wins-over-no-cache": (b"GET", cc("no-cache, no-store"), {}, RULES, (BYPASS, "no-store")),
    "no-cache": (b"GET", cc("no-cache"), {}, RULES, (REFRESH, "no-cache")),
    "no-cache-upper-case": (b"GET", [(b"CACHE-CONTROL", b"No-Cache")], {}, RULES, (REFRESH, "no-cache")),
    "max-age-zero": (b"GET", cc("max-age=0"), {}, RULES, (REFRESH, "no-cache")),
    "max-age-invalid-is-zero": (b"GET", cc("max-age=abc"), {}, RULES, (REFRESH, "no-cache")),
    "max-age-positive-looks-up": (b"GET", cc("max-age=10"), {}, RULES, (LOOKUP, "")),
    "head-no-cache": (b"HEAD", cc("no-cache"), {}, RULES, (REFRESH, "no-cache")),
    "pragma-no-cache": (b"GET", [(b"Pragma", b"no-cache")], {}, RULES, (REFRESH, "no-cache")),
    "pragma-in-a-list": (b"GET", [(b"pragma", b"x-foo, No-Cache")], {}, RULES, (REFRESH, "no-cache")),
    "pragma-other": (b"GET", [(b"Pragma", b"x-no-cache")], {}, RULES, (LOOKUP, "")),
    "pragma-ignored-with-cache-control": (
        b"GET",
        [(b"Pragma", b"no-cache"), *cc("max-age=10")],
        {},
        RULES,
        (LOOKUP, ""),
    ),
    "unrelated-directives": (
        b"GET",
        cc("max-stale=100, min-fresh=5, only-if-cached"),
        {},
        RULES,
        (LOOKUP, ""),
    ),
}


@pytest.mark.parametrize(
    ("method", "headers", "options", "rules", "expected"), CLASSIFY_CASES.values(), ids=CLASSIFY_CASES.keys()
)
def test_classify_request(
    method: bytes, headers: Headers, options: dict[str, Any], rules: CacheRules, expected: tuple[str, str]
) -> None:
    options = {"has_body": False, "credentials": False, "identity": None, **options}
    assert classify_request(rules, method, headers, **options) == expected


def exchange(
    rules: CacheRules,
    request: Headers,
    status: int,
    response: Headers,
    *,
    credentials: bool = False,
    identity: str | None = None,
) -> str:
    """What the proxy would do with one ``GET``: ``bypass:<reason>``, or ``<action>:`` and then
    ``store <lifetime>/<age>`` or ``skip <reason>``."""
    action, reason = classify_request(
        rules, b"GET", request, has_body=False, credentials=credentials, identity=identity
    )
    if action == BYPASS:
        return f"bypass:{reason}"
    private_ok = rules.per_user and identity is not None
    decision = decide_store(
        rules, status, response, now=NOW, content_length=None, private_ok=private_ok, credentials=credentials
    )
    if decision.store:
        return f"{action}:store {decision.lifetime:g}/{decision.age:g}"
    return f"{action}:skip {decision.reason}"


BEARER = [(b"Authorization", b"Bearer t")]

# (rules, request headers, status, response headers, identity, expected outcome)
EXCHANGE_CASES: dict[str, tuple[CacheRules, Headers, int, Headers, str | None, str]] = {
    "plain": (RULES, [], 200, cc("max-age=60"), None, "lookup:store 60/0"),
    "plain-with-age": (RULES, [], 200, [*cc("max-age=60"), (b"Age", b"15")], None, "lookup:store 45/15"),
    "client-no-cache-refreshes-and-stores": (
        RULES,
        cc("no-cache"),
        200,
        cc("max-age=60"),
        None,
        "refresh:store 60/0",
    ),
    "client-no-store": (RULES, cc("no-store"), 200, cc("max-age=60"), None, "bypass:no-store"),
    "authorization-shared-route": (RULES, BEARER, 200, cc("public, max-age=60"), None, "bypass:credentials"),
    "authorization-per-user-private": (
        PER_USER,
        BEARER,
        200,
        cc("private, max-age=60"),
        "alice",
        "lookup:store 60/0",
    ),
    "authorization-per-user-plain": (PER_USER, BEARER, 200, cc("max-age=60"), "alice", "lookup:store 60/0"),
    "anonymous-private": (RULES, [], 200, cc("private, max-age=60"), None, "lookup:skip private"),
    "per-user-route-anonymous-private": (
        PER_USER,
        [],
        200,
        cc("private, max-age=60"),
        None,
        "lookup:skip private",
    ),
    "upstream-no-cache": (RULES, [], 200, cc("no-cache"), None, "lookup:skip no-cache"),
    "upstream-session-cookie": (RULES, [], 200, [(b"Set-Cookie", b"s=1")], None, "lookup:skip set-cookie"),
    "upstream-error": (RULES, [], 502, [], None, "lookup:skip status"),
    "pragma-refresh-expires": (
        RULES,
        [(b"Pragma", b"no-cache")],
        200,
        [(b"Date", date(0)), (b"Expires", date(90))],
        None,
        "refresh:store 90/0",
    ),
}


@pytest.mark.parametrize(
    ("rules", "request_headers", "status", "response_headers", "identity", "expected"),
    EXCHANGE_CASES.values(),
    ids=EXCHANGE_CASES.keys(),
)
def test_request_and_response(
    rules: CacheRules,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    identity: str | None,
    expected: str,
) -> None:
    credentials = any(name.lower() == b"authorization" for name, _ in request_headers)
    outcome = exchange(
        rules, request_headers, status, response_headers, credentials=credentials, identity=identity
    )
    assert outcome == expected


# Keys: each case is a pair of requests and whether they share a key.
BASE: dict[str, Any] = {
    "rules": RULES,
    "route_id": "default/api",
    "host": "api.example.com",
    "path": "/items",
    "query": "",
    "headers": [],
    "identity": None,
}
ONLY_A = CacheRules(ttl=1.0, max_entry_bytes=1, key_query_params=("a", "c"))
NO_QUERY = CacheRules(ttl=1.0, max_entry_bytes=1, key_query_params="none")
KEY_HEADERS = CacheRules(ttl=1.0, max_entry_bytes=1, key_headers=(b"x-tenant", b"accept-language"))

KEY_CASES: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "same-request": ({}, {}, True),
    "query-order": ({"query": "a=1&b=2"}, {"query": "b=2&a=1"}, True),
    "query-repeated-name-order": ({"query": "a=1&a=2"}, {"query": "a=2&a=1"}, True),
    "query-value-differs": ({"query": "a=1"}, {"query": "a=2"}, False),
    "query-repeated-vs-single": ({"query": "a=1&a=2"}, {"query": "a=1"}, False),
    "query-present-vs-none": ({"query": "a="}, {"query": ""}, False),
    "query-blank-forms": ({"query": "a"}, {"query": "a="}, True),
    "query-percent-decoded": ({"query": "a=%41&%62=1"}, {"query": "a=A&b=1"}, True),
    "query-plus-is-space": ({"query": "q=a+b"}, {"query": "q=a%20b"}, True),
    "query-non-utf8-escapes-distinct": ({"query": "id=%FF"}, {"query": "id=%FE"}, False),
    "query-non-utf8-vs-replacement-char": ({"query": "id=%FF"}, {"query": "id=%EF%BF%BD"}, False),
    "query-escaped-separator": ({"query": "a=1&b=2"}, {"query": "a=1%26b%3D2"}, False),
    "query-name-value-boundary": ({"query": "ab=c"}, {"query": "a=bc"}, False),
    "query-none-ignores-params": (
        {"rules": NO_QUERY, "query": "a=1"},
        {"rules": NO_QUERY, "query": "a=2"},
        True,
    ),
    "query-none-vs-no-query": ({"rules": NO_QUERY, "query": "a=1"}, {"rules": NO_QUERY}, True),
    "query-list-ignores-others": (
        {"rules": ONLY_A, "query": "a=1&b=2"},
        {"rules": ONLY_A, "query": "b=3&a=1"},
        True,
    ),
    "query-list-listed-differs": (
        {"rules": ONLY_A, "query": "a=1&b=2"},
        {"rules": ONLY_A, "query": "a=2&b=2"},
        False,
    ),
    "query-list-order": ({"rules": ONLY_A, "query": "c=3&a=1"}, {"rules": ONLY_A, "query": "a=1&c=3"}, True),
    "query-list-absent-vs-blank": (
        {"rules": ONLY_A, "query": "a="},
        {"rules": ONLY_A, "query": "b=1"},
        False,
    ),
    "query-list-name-case-matters": ({"rules": ONLY_A, "query": "A=1"}, {"rules": ONLY_A, "query": ""}, True),
    "host-case": ({"host": "API.Example.COM"}, {"host": "api.example.com"}, True),
    "host-differs": ({"host": "api.example.com"}, {"host": "api.example.org"}, False),
    "host-port-matters": ({"host": "api.example.com:8080"}, {"host": "api.example.com"}, False),
    "path-case-matters": ({"path": "/Items"}, {"path": "/items"}, False),
    "path-trailing-slash-matters": ({"path": "/items/"}, {"path": "/items"}, False),
    "route-id": ({"route_id": "default/api"}, {"route_id": "default/api2"}, False),
    "route-host-boundary": ({"route_id": "r1", "host": "x"}, {"route_id": "r", "host": "1x"}, False),
    "host-path-boundary": ({"host": "a.io", "path": "/x"}, {"host": "a.io/", "path": "x"}, False),
    "path-query-boundary": ({"path": "/a", "query": "b=1"}, {"path": "/a?b=1"}, False),
    "unkeyed-header-ignored": ({"headers": [(b"X-Tenant", b"a")]}, {"headers": [(b"X-Tenant", b"b")]}, True),
    "key-header-value": (
        {"rules": KEY_HEADERS, "headers": [(b"X-Tenant", b"a")]},
        {"rules": KEY_HEADERS, "headers": [(b"X-Tenant", b"b")]},
        False,
    ),
    "key-header-name-case": (
        {"rules": KEY_HEADERS, "headers": [(b"X-TENANT", b"a")]},
        {"rules": KEY_HEADERS, "headers": [(b"x-tenant", b"a")]},
        True,
    ),
    "key-header-absent-vs-empty": (
        {"rules": KEY_HEADERS, "headers": []},
        {"rules": KEY_HEADERS, "headers": [(b"x-tenant", b"")]},
        False,
    ),
    "key-header-repeated-lines-joined": (
        {"rules": KEY_HEADERS, "headers": [(b"Accept-Language", b"en"), (b"Accept-Language", b"fr")]},
        {"rules": KEY_HEADERS, "headers": [(b"accept-language", b"en,fr")]},
        True,
    ),
    "key-headers-not-swappable": (
        {"rules": KEY_HEADERS, "headers": [(b"x-tenant", b"en")]},
        {"rules": KEY_HEADERS, "headers": [(b"accept-language", b"en")]},
        False,
    ),
    "key-header-other-headers-ignored": (
        {"rules": KEY_HEADERS, "headers": [(b"x-tenant", b"a"), (b"cookie", b"1")]},
        {"rules": KEY_HEADERS, "headers": [(b"cookie", b"2"), (b"x-tenant", b"a")]},
        True,
    ),
    "per-user-identities": (
        {"rules": PER_USER, "identity": "alice"},
        {"rules": PER_USER, "identity": "bob"},
        False,
    ),
    "per-user-none-vs-empty": (
        {"rules": PER_USER, "identity": None},
        {"rules": PER_USER, "identity": ""},
        False,
    ),
    "per-user-same-identity": (
        {"rules": PER_USER, "identity": "alice"},
        {"rules": PER_USER, "identity": "alice"},
        True,
    ),
    "shared-route-ignores-identity": ({"identity": "alice"}, {"identity": "bob"}, True),
}


@pytest.mark.parametrize(("first", "second", "same"), KEY_CASES.values(), ids=KEY_CASES.keys())
def test_cache_key(first: dict[str, Any], second: dict[str, Any], same: bool) -> None:
    key_a = cache_key(**{**BASE, **first})
    key_b = cache_key(**{**BASE, **second})
    assert (key_a == key_b) is same


def test_cache_key_is_fixed_length_hex_and_stable() -> None:
    key = cache_key(**{**BASE, "query": "x=" + "y" * 10_000})
    assert len(key) == 64
    assert set(key) <= set(b"0123456789abcdef")
    # Pinned: a change of the encoding changes every key (and orphans every entry in Redis).
    assert cache_key(**BASE) == b"2684fae52695d9135836f1a1c75d629154476f198f792a142e3876caecae26e7"


# (Vary names, request headers, expected values)
VARY_CASES: dict[str, tuple[tuple[bytes, ...], Headers, tuple[bytes | None, ...]]] = {
    "none": ((), [(b"Accept-Encoding", b"gzip")], ()),
    "absent": ((b"accept-encoding",), [], (None,)),
    "empty-is-not-absent": ((b"accept-encoding",), [(b"Accept-Encoding", b"")], (b"",)),
    "spaces-after-commas": ((b"accept-encoding",), [(b"Accept-Encoding", b"gzip, br")], (b"gzip,br",)),
    "spaces-around-commas": ((b"accept-encoding",), [(b"accept-encoding", b" gzip ,\tbr ")], (b"gzip,br",)),
    "repeated-lines-joined": (
        (b"accept-encoding",),
        [(b"Accept-Encoding", b"gzip"), (b"ACCEPT-ENCODING", b"br")],
        (b"gzip,br",),
    ),
    "value-case-kept": ((b"accept-language",), [(b"Accept-Language", b"EN")], (b"EN",)),
    "order-of-names": (
        (b"origin", b"accept-encoding", b"x-absent"),
        [(b"Accept-Encoding", b"br"), (b"Origin", b"https://a.io")],
        (b"https://a.io", b"br", None),
    ),
}


@pytest.mark.parametrize(("vary", "headers", "expected"), VARY_CASES.values(), ids=VARY_CASES.keys())
def test_vary_values(vary: tuple[bytes, ...], headers: Headers, expected: tuple[bytes | None, ...]) -> None:
    assert vary_values(vary, headers) == expected


def test_vary_values_of_equivalent_requests_are_equal() -> None:
    vary = decide_store(
        RULES, 200, [(b"Vary", b"Accept-Encoding")], now=NOW, content_length=None, private_ok=False
    ).vary
    assert vary == (b"accept-encoding",)
    assert vary_values(vary, [(b"accept-encoding", b"gzip, br")]) == vary_values(
        vary, [(b"Accept-Encoding", b"gzip,br")]
    )
    assert vary_values(vary, [(b"accept-encoding", b"gzip")]) != vary_values(
        vary, [(b"Accept-Encoding", b"br")]
    )


# (Cache-Control values, expected directives)
PARSE_CASES: dict[str, tuple[list[bytes], dict[str, str | None]]] = {
    "empty": ([], {}),
    "blank-and-stray-commas": ([b" , ,"], {}),
    "flags-and-values": ([b"public, max-age=60"], {"public": None, "max-age": "60"}),
    "case-and-spaces": ([b"  Max-Age = 60 ,NO-STORE"], {"max-age": "60", "no-store": None}),
    "quoted-with-comma": (
        [b'private="set-cookie, x-user", max-age=5'],
        {"private": "set-cookie, x-user", "max-age": "5"},
    ),
    "quoted-with-escapes": ([b'ext="a\\"b,c", x'], {"ext": 'a"b,c', "x": None}),
    "unterminated-quote-swallows-rest": ([b'ext="a, max-age=5'], {"ext": '"a, max-age=5'}),
    "lines-combine": ([b"max-age=5", b"no-transform"], {"max-age": "5", "no-transform": None}),
    "identical-repetition": ([b"max-age=5, max-age=5"], {"max-age": "5"}),
    "conflicting-repetition-joined": ([b"max-age=5", b"max-age=6"], {"max-age": "5,6"}),
    "valueless-repetition-absorbs": ([b'private="a", private'], {"private": None}),
    "field-lists-united": ([b'no-cache="a", no-cache="b"'], {"no-cache": "a,b"}),
}


@pytest.mark.parametrize(("values", "expected"), PARSE_CASES.values(), ids=PARSE_CASES.keys())
def test_parse_cache_control(values: list[bytes], expected: dict[str, str | None]) -> None:
    assert parse_cache_control(values) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("60", 60),
        (" 60 ", 60),
        ("007", 7),
        (b"60", 60),
        ("2147483648", MAX_DELTA_SECONDS),
        ("99999999999", MAX_DELTA_SECONDS),
        ("", None),
        ("-1", None),
        ("+1", None),
        ("1.0", None),
        ("1e3", None),
        ("٣", None),
        ("²", None),
        (None, None),
    ],
)
def test_delta_seconds(value: str | bytes | None, expected: int | None) -> None:
    assert delta_seconds(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"Sun, 06 Nov 1994 08:49:37 GMT",
        b"Sunday, 06-Nov-94 08:49:37 GMT",
        b"Sun Nov  6 08:49:37 1994",
        b"  Sun, 06 Nov 1994 08:49:37 GMT  ",
        b"Sun, 06 Nov 1994 08:49:37 -0000",
    ],
)
def test_http_date_forms(value: bytes) -> None:
    assert http_date(value) == 784111777.0


@pytest.mark.parametrize(
    "value", [b"", b"0", b"-1", b"soon", b"Sun, 06 Nov 1994", b"Sun, 32 Nov 1994 08:49:37 GMT", b"\xff\xfe"]
)
def test_http_date_invalid(value: bytes) -> None:
    assert http_date(value) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl": -1.0}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"max_entry_bytes": -1}, "max_entry_bytes"),
        ({"key_query_params": "some"}, "key_query_params"),
        ({"key_query_params": ("a", 1)}, "key_query_params"),
        ({"key_headers": (b"",)}, "key_headers"),
        ({"key_headers": (b"x tenant",)}, "key_headers"),
        ({"key_headers": (b"x-tenant:",)}, "key_headers"),
        ({"key_headers": ("x-tenant",)}, "key_headers"),
    ],
)
def test_rules_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CacheRules(**{"ttl": 1.0, "max_entry_bytes": 1, **options})


def test_rules_normalised() -> None:
    rules = CacheRules(
        ttl=1.0,
        max_entry_bytes=1,
        key_query_params=cast(tuple[str, ...], ["b", "a"]),  # a list, as the API model hands it over
        key_headers=(b"X-Tenant", b"accept-language", b"x-tenant"),
    )
    assert rules.key_query_params == ("b", "a")
    assert rules.key_headers == (b"x-tenant", b"accept-language")
    assert hash(rules) == hash(CacheRules(1.0, 1, ("b", "a"), (b"x-tenant", b"accept-language")))
    spelled = cache_key(**{**BASE, "rules": rules, "query": "a=1&c=2", "headers": [(b"x-tenant", b"t")]})
    lower = CacheRules(1.0, 1, ("a", "b"), (b"x-tenant", b"accept-language"))
    assert spelled == cache_key(
        **{**BASE, "rules": lower, "query": "a=1&c=3", "headers": [(b"X-TENANT", b"t")]}
    )
