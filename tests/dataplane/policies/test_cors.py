"""CORS policy: origin matching, preflight answers and the headers of actual responses.

Aspects: configuration checks (``*`` with credentials, misplaced wildcards, paths, userinfo, ``null``, too
broad wildcards, bad tokens, negative max-age); exact and wildcard-subdomain origins against a list of
lookalikes (suffix tricks, scheme and port changes, userinfo, paths, ``null``, case); default-port and case
normalisation; preflight detection; preflights allowed, denied (origin, method, header) and credentialed;
safelisted methods and case-sensitive methods; case-insensitive headers; ``*`` for methods and headers with
and without credentials; ``Vary`` always present; shared precomputed lists and the bounded memo.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubegate.dataplane.policies import cors
from kubegate.dataplane.policies.cors import CorsPolicy

VARY_ACTUAL = (b"vary", b"Origin")
VARY_PREFLIGHT = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")


def _policy(**fields: Any) -> CorsPolicy:
    config: dict[str, Any] = {
        "allow_origins": ("https://app.example.com", "https://*.example.com"),
        "allow_methods": ("GET", "POST", "PUT"),
        "allow_headers": ("Authorization", "Content-Type"),
        "expose_headers": ("X-Request-Id",),
        "allow_credentials": False,
        "max_age": 600,
    }
    config.update(fields)
    return CorsPolicy(**config)


# --- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"allow_origins": ("*",), "allow_credentials": True}, "cannot be used with allowCredentials"),
        ({"allow_origins": ("*", "https://a.example.com")}, "cannot be combined"),
        ({"allow_origins": ("https://app.example.com/",)}, "must not have a path"),
        ({"allow_origins": ("https://app.example.com/x",)}, "must not have a path"),
        ({"allow_origins": ("https://user@app.example.com",)}, "userinfo"),
        ({"allow_origins": ("null",)}, "'null'"),
        ({"allow_origins": ("app.example.com",)}, "is not an origin"),
        ({"allow_origins": ("ftp://app.example.com",)}, "is not an origin"),
        ({"allow_origins": ("https://app.example.com:0",)}, "is not an origin"),
        ({"allow_origins": ("https://app.example.com:70000",)}, "is not an origin"),
        ({"allow_origins": ("https://*example.com",)}, "misplaced '*'"),
        ({"allow_origins": ("https://a.*.example.com",)}, "misplaced '*'"),
        ({"allow_origins": ("https://*.*.example.com",)}, "misplaced '*'"),
        ({"allow_origins": ("*.example.com",)}, "misplaced '*'"),
        ({"allow_origins": ("https://*",)}, "misplaced '*'"),
        ({"allow_origins": ("https://*.com",)}, "too broad"),
        ({"allow_origins": ("https://bücher.example",)}, "must be ASCII"),
        ({"allow_methods": ("GET", "*")}, "allowMethods: '*' cannot be combined"),
        ({"allow_methods": ("GET", "BAD METHOD")}, "allowMethods[1]"),
        ({"allow_headers": ("X-Ok", "X:Bad")}, "allowHeaders[1]"),
        ({"expose_headers": ("*",), "allow_credentials": True}, "exposeHeaders"),
        ({"max_age": -1}, "maxAge"),
    ],
)
def test_invalid_configuration_is_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        _policy(**fields)
    assert message in str(info.value)


def test_origin_errors_name_the_entry() -> None:
    with pytest.raises(ValueError, match=r"^allowOrigins\[1\]: 'https://x.example.com/'"):
        _policy(allow_origins=("https://ok.example.com", "https://x.example.com/"))


def test_credentials_with_explicit_origins_are_fine() -> None:
    policy = _policy(allow_credentials=True)
    assert repr(policy) == "<CorsPolicy origins=1 exact, 1 wildcard credentials=True>"
    assert repr(_policy(allow_origins=("*",))) == "<CorsPolicy origins=* credentials=False>"


# --- origin matching ----------------------------------------------------------------------------------------
ALLOWED = [
    b"https://app.example.com",
    b"https://x.example.com",
    b"https://a.b.c.example.com",  # one or more labels
    b"https://x-y.example.com",
    b"https://APP.Example.COM",  # scheme and host are case-insensitive
    b"HTTPS://x.EXAMPLE.com",
    b"https://x.example.com:443",  # the default port is no port
    b"https://app.example.com:443",
]
LOOKALIKES = [
    b"https://example.com",  # the wildcard needs at least one label in front
    b"https://evil-example.com",
    b"https://evilexample.com",
    b"https://example.com.evil.io",
    b"https://x.example.com.evil.io",
    b"https://app.example.com.evil.io",
    b"https://x.example.co",
    b"https://x.example.comm",
    b"http://x.example.com",  # scheme
    b"http://app.example.com",
    b"https://x.example.com:8443",  # port
    b"https://app.example.com:8443",
    b"https://x.example.com:80",
    b"https://user@x.example.com",  # userinfo
    b"https://x.example.com@evil.io",
    b"https://evil.io#@x.example.com",
    b"https://evil.io?.example.com",
    b"https://x.example.com/",  # paths
    b"https://x.example.com/path",
    b"https://evil.io/.example.com",
    b"https://evil.io\\.example.com",
    b"https://.example.com",  # empty labels
    b"https://..example.com",
    b"https://x..example.com",
    b"https://x.example.com.",
    b"null",
    b"",
    b"*",
    b"https://*.example.com",
    b"https://app.example.com ",
    b" https://app.example.com",
    b"https://app.example.com\r\nx-evil: 1",
    b"https://app.example.com,https://evil.io",
    b"https://x.example.com\x00",
    b"https://x.ex\xc3\xa4mple.com",
    b"ws://x.example.com",
    b"//x.example.com",
    b"https:x.example.com",
    b"https://x.example.com:",
    b"https://x.example.com:0",
    b"https://x.example.com:99999",
]


@pytest.mark.parametrize("origin", ALLOWED)
def test_allowed_origins_are_echoed_as_sent(origin: bytes) -> None:
    policy = _policy()
    assert policy.origin_allowed(origin)
    assert policy.response_headers(origin) == [
        (b"access-control-allow-origin", origin),
        (b"access-control-expose-headers", b"X-Request-Id"),
        VARY_ACTUAL,
    ]


@pytest.mark.parametrize("origin", LOOKALIKES)
def test_lookalike_origins_get_no_cors_headers(origin: bytes) -> None:
    policy = _policy()
    assert not policy.origin_allowed(origin)
    assert policy.response_headers(origin) == [VARY_ACTUAL]
    assert policy.preflight(origin, b"GET", None) == (403, [VARY_PREFLIGHT])


@pytest.mark.parametrize("credentials", [False, True])
@pytest.mark.parametrize("origin", LOOKALIKES)
def test_lookalikes_also_fail_with_credentials(origin: bytes, credentials: bool) -> None:
    assert not _policy(allow_credentials=credentials).origin_allowed(origin)


def test_wildcard_with_a_port_matches_only_that_port() -> None:
    policy = _policy(allow_origins=("https://*.example.com:8443", "http://localhost:3000"))
    assert policy.origin_allowed(b"https://x.example.com:8443")
    assert not policy.origin_allowed(b"https://x.example.com")
    assert not policy.origin_allowed(b"https://x.example.com:443")
    assert policy.origin_allowed(b"http://localhost:3000")
    assert not policy.origin_allowed(b"http://localhost")
    assert not policy.origin_allowed(b"http://localhost:3001")


def test_configured_origins_are_normalised() -> None:
    policy = _policy(allow_origins=("HTTPS://App.Example.COM:443", "http://*.Example.org:80"))
    assert policy.origin_allowed(b"https://app.example.com")
    assert policy.origin_allowed(b"http://x.example.org")
    assert not policy.origin_allowed(b"https://x.example.org")


def test_ip_literal_origins() -> None:
    policy = _policy(allow_origins=("http://127.0.0.1:8080", "http://[::1]:3000"))
    assert policy.origin_allowed(b"http://127.0.0.1:8080")
    assert policy.origin_allowed(b"http://[::1]:3000")
    assert not policy.origin_allowed(b"http://[::1]")
    assert not policy.origin_allowed(b"http://127.0.0.1")


def test_no_origins_allows_nothing() -> None:
    policy = _policy(allow_origins=())
    assert not policy.origin_allowed(b"https://app.example.com")
    assert policy.response_headers(b"https://app.example.com") == [VARY_ACTUAL]


def test_any_origin_answers_star_without_echoing() -> None:
    policy = _policy(allow_origins=("*",))
    for origin in (b"https://anything.io", b"null", b"garbage"):
        assert policy.origin_allowed(origin)
        assert policy.response_headers(origin) == [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-expose-headers", b"X-Request-Id"),
            VARY_ACTUAL,
        ]


# --- actual responses ---------------------------------------------------------------------------------------
def test_vary_origin_is_always_set_even_without_origin() -> None:
    for policy in (_policy(), _policy(allow_origins=("*",)), _policy(allow_credentials=True)):
        assert policy.response_headers(None) == [VARY_ACTUAL]


def test_credentialed_response_headers() -> None:
    policy = _policy(allow_credentials=True, expose_headers=())
    assert policy.response_headers(b"https://x.example.com") == [
        (b"access-control-allow-origin", b"https://x.example.com"),
        (b"access-control-allow-credentials", b"true"),
        VARY_ACTUAL,
    ]


def test_response_lists_are_shared_and_the_memo_is_bounded() -> None:
    policy = _policy()
    first = policy.response_headers(b"https://x.example.com")
    assert policy.response_headers(b"https://x.example.com") is first
    assert policy.response_headers(None) is policy.response_headers(b"https://evil.io")
    star = _policy(allow_origins=("*",))
    assert star.response_headers(b"https://a.io") is star.response_headers(b"https://b.io")
    for number in range(cors._MEMO_SIZE * 3):
        origin = b"https://n%d.example.com" % number
        assert policy.origin_allowed(origin)
        assert len(policy._memo) <= cors._MEMO_SIZE


# --- preflight ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "origin", "acr_method", "expected"),
    [
        (b"OPTIONS", b"https://app.example.com", b"PUT", True),
        (b"OPTIONS", b"https://app.example.com", b"", True),  # present but empty: ours to refuse
        (b"OPTIONS", None, b"PUT", False),
        (b"OPTIONS", b"https://app.example.com", None, False),  # a plain OPTIONS goes to the backend
        (b"GET", b"https://app.example.com", b"PUT", False),
        (b"options", b"https://app.example.com", b"PUT", False),  # methods are case-sensitive
    ],
)
def test_is_preflight(method: bytes, origin: bytes | None, acr_method: bytes | None, expected: bool) -> None:
    assert CorsPolicy.is_preflight(method, origin, acr_method) is expected
    assert _policy().is_preflight(method, origin, acr_method) is expected


def test_preflight_allowed() -> None:
    status, headers = _policy().preflight(b"https://app.example.com", b"PUT", b"authorization,content-type")
    assert status == 204
    assert headers == [
        (b"access-control-allow-origin", b"https://app.example.com"),
        (b"access-control-allow-methods", b"GET, POST, PUT"),
        (b"access-control-allow-headers", b"Authorization, Content-Type"),
        (b"access-control-max-age", b"600"),
        VARY_PREFLIGHT,
    ]


def test_preflight_credentialed() -> None:
    policy = _policy(allow_credentials=True, max_age=None)
    status, headers = policy.preflight(b"https://x.example.com", b"POST", None)
    assert status == 204
    assert headers == [
        (b"access-control-allow-origin", b"https://x.example.com"),
        (b"access-control-allow-methods", b"GET, POST, PUT"),
        (b"access-control-allow-headers", b"Authorization, Content-Type"),
        (b"access-control-allow-credentials", b"true"),
        VARY_PREFLIGHT,
    ]


@pytest.mark.parametrize(
    ("origin", "acr_method", "acr_headers"),
    [
        (b"https://evil.io", b"GET", None),  # origin
        (b"https://evil-example.com", b"PUT", None),
        (b"null", b"GET", None),
        (b"https://app.example.com", b"DELETE", None),  # method
        (b"https://app.example.com", b"put", None),  # methods are case-sensitive
        (b"https://app.example.com", b"", None),
        (b"https://app.example.com", b"PUT", b"x-custom"),  # header
        (b"https://app.example.com", b"PUT", b"authorization, x-custom"),
        (b"https://app.example.com", b"PUT", b"authorization,content-type,cookie"),
    ],
)
def test_preflight_denied_gets_403_and_only_vary(
    origin: bytes, acr_method: bytes, acr_headers: bytes | None
) -> None:
    assert _policy().preflight(origin, acr_method, acr_headers) == (403, [VARY_PREFLIGHT])


def test_preflight_headers_are_case_insensitive_and_tolerate_spacing() -> None:
    policy = _policy()
    for requested in (
        b"Authorization",
        b"CONTENT-TYPE",
        b" authorization ,\tContent-Type ",
        b"authorization,,",
        b"",
    ):
        status, _ = policy.preflight(b"https://app.example.com", b"GET", requested)
        assert status == 204, requested


def test_safelisted_methods_are_always_allowed() -> None:
    policy = _policy(allow_methods=("PATCH",))
    for method in (b"GET", b"HEAD", b"POST", b"PATCH"):
        assert policy.preflight(b"https://app.example.com", method, None)[0] == 204
    assert policy.preflight(b"https://app.example.com", b"PUT", None)[0] == 403
    assert policy.preflight(b"https://app.example.com", b"patch", None)[0] == 403
    no_methods = _policy(allow_methods=(), allow_headers=(), max_age=None)
    assert no_methods.preflight(b"https://app.example.com", b"GET", None) == (
        204,
        [(b"access-control-allow-origin", b"https://app.example.com"), VARY_PREFLIGHT],
    )


def test_any_origin_preflight_is_one_shared_list() -> None:
    policy = _policy(allow_origins=("*",))
    first = policy.preflight(b"https://a.io", b"PUT", b"content-type")
    second = policy.preflight(b"https://b.io", b"GET", None)
    assert first == (
        204,
        [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-methods", b"GET, POST, PUT"),
            (b"access-control-allow-headers", b"Authorization, Content-Type"),
            (b"access-control-max-age", b"600"),
            VARY_PREFLIGHT,
        ],
    )
    assert first[1] is second[1]
    assert policy.preflight(b"https://a.io", b"DELETE", None) == (403, [VARY_PREFLIGHT])


def test_star_methods_without_credentials() -> None:
    policy = _policy(allow_methods=("*",), allow_headers=(), max_age=None)
    assert policy.preflight(b"https://app.example.com", b"PURGE", None) == (
        204,
        [
            (b"access-control-allow-origin", b"https://app.example.com"),
            (b"access-control-allow-methods", b"*"),
            VARY_PREFLIGHT,
        ],
    )
    assert policy.preflight(b"https://app.example.com", b"BAD METHOD", None)[0] == 403


def test_star_methods_with_credentials_echo_the_method() -> None:
    policy = _policy(allow_methods=("*",), allow_headers=(), max_age=None, allow_credentials=True)
    assert policy.preflight(b"https://app.example.com", b"PURGE", None) == (
        204,
        [
            (b"access-control-allow-origin", b"https://app.example.com"),
            (b"access-control-allow-methods", b"PURGE"),
            (b"access-control-allow-credentials", b"true"),
            VARY_PREFLIGHT,
        ],
    )


@pytest.mark.parametrize("credentials", [False, True])
def test_star_headers_echo_the_requested_ones(credentials: bool) -> None:
    policy = _policy(allow_headers=("*",), max_age=None, allow_credentials=credentials)
    status, headers = policy.preflight(b"https://app.example.com", b"GET", b"X-Custom, authorization")
    assert status == 204
    assert (b"access-control-allow-headers", b"x-custom, authorization") in headers
    status, headers = policy.preflight(b"https://app.example.com", b"GET", None)
    assert status == 204
    assert all(name != b"access-control-allow-headers" for name, _ in headers)
    assert policy.preflight(b"https://app.example.com", b"GET", b"x-ok, bad header")[0] == 403
    assert policy.preflight(b"https://app.example.com", b"GET", b"x:evil")[0] == 403


def test_star_headers_with_any_origin() -> None:
    policy = _policy(allow_origins=("*",), allow_headers=("*",), max_age=None)
    assert policy.preflight(b"https://a.io", b"GET", b"x-a") == (
        204,
        [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-methods", b"GET, POST, PUT"),
            (b"access-control-allow-headers", b"x-a"),
            VARY_PREFLIGHT,
        ],
    )


def test_duplicates_in_configuration_are_dropped() -> None:
    policy = _policy(allow_methods=("GET", "GET", "PUT"), allow_headers=("X-A", "X-A"), max_age=0)
    _, headers = policy.preflight(b"https://app.example.com", b"PUT", None)
    assert (b"access-control-allow-methods", b"GET, PUT") in headers
    assert (b"access-control-allow-headers", b"X-A") in headers
    assert (b"access-control-max-age", b"0") in headers


def test_own_headers_cover_everything_the_policy_answers_with() -> None:
    policy = _policy(allow_credentials=True)
    _, preflight = policy.preflight(b"https://app.example.com", b"PUT", None)
    names = {name for name, _ in (*preflight, *policy.response_headers(b"https://app.example.com"))}
    assert names - {b"vary"} == cors.OWN_HEADERS
