"""Path normalisation: decoding of unreserved escapes, slash merging, dot-segment removal, rejections.

Aspects: the already-normal fast path returns its input unchanged; traversal bypass attempts (plain and
percent-encoded dots, mixed case) resolve to the path a route is matched against or are rejected; encoded
slashes stay data; malformed input raises BadPath.
"""

from __future__ import annotations

import pytest

from kubegate.dataplane import pathnorm

NORMALISED = [
    # already normal: returned as is
    ("/", "/"),
    ("/api/v1/users", "/api/v1/users"),
    ("/api/v1/users/", "/api/v1/users/"),
    ("/a;b=c/d;e", "/a;b=c/d;e"),  # ';' parameters are not interpreted
    ("/.well-known/x", "/.well-known/x"),
    ("/a/.b/..c/...", "/a/.b/..c/..."),
    ("/*", "/*"),
    # dot segments
    ("/api/v1/users/../admin", "/api/v1/admin"),
    ("/a/./b", "/a/b"),
    ("/a/b/.", "/a/b/"),
    ("/a/b/..", "/a/"),
    ("/a/..", "/"),
    ("/a/../", "/"),
    ("/.", "/"),
    ("/a/b/../../c", "/c"),
    ("/a/./../b/./c/.", "/b/c/"),
    # encoded dots are dots
    ("/api/%2e%2e/admin", "/admin"),
    ("/api/%2E%2E/%2e/admin", "/admin"),
    ("/api/.%2e/admin", "/admin"),
    ("/api/%2e./admin", "/admin"),
    ("/a/%2e", "/a/"),
    ("/a%2eb", "/a.b"),
    # duplicate slashes
    ("//api///v1", "/api/v1"),
    ("//", "/"),
    ("/a//", "/a/"),
    ("/a//../b", "/b"),  # slashes are merged before dot segments are removed
    # percent-escapes
    ("/%41", "/A"),
    ("/%7Euser", "/~user"),
    ("/%7euser", "/~user"),
    ("/%2d%5f%30", "/-_0"),
    ("/a%2fb", "/a%2Fb"),  # an encoded slash is data, never a separator
    ("/a%2Fb", "/a%2Fb"),
    ("/a/..%2f..%2fadmin", "/a/..%2F..%2Fadmin"),
    ("/a/%2e%2e%2fadmin", "/a/..%2Fadmin"),
    ("/%c3%a9t%c3%a9", "/%C3%A9t%C3%A9"),  # non-ASCII stays encoded, upper-case hex
    ("/%252e%252e/admin", "/%252e%252e/admin"),  # decoded once only
    ("/%20", "/%20"),
    ("/%0a", "/%0A"),
]

REJECTED = [
    ("", "start with '/'"),
    ("*", "start with '/'"),
    ("api/v1", "start with '/'"),
    ("%2fapi", "start with '/'"),
    ("/..", "above the root"),
    ("/../x", "above the root"),
    ("/a/../..", "above the root"),
    ("/a/../../b", "above the root"),
    ("/%2e%2e/", "above the root"),
    ("/%2E%2E", "above the root"),
    ("/a/%2e%2e/.%2e/x", "above the root"),
    ("//..", "above the root"),
    ("/%zz", "malformed"),
    ("/%4", "malformed"),
    ("/a%", "malformed"),
    ("/%%41", "malformed"),
    ("/%g1", "malformed"),
    ("/%00", "NUL"),
    ("/a\x00b", "control"),
    ("/a\tb", "control"),
    ("/a\r\nHost: evil", "control"),
    ("/a\x7f", "control"),
    ("/caf\u00e9", "non-ASCII"),
    ("/\u2025/admin", "non-ASCII"),  # TWO DOT LEADER
    ("/public/..;/admin", "dot segment with path parameters"),  # Tomcat/Spring read this as ..
    ("/public/%2e%2e;x/admin", "dot segment with path parameters"),
    ("/a/.;/b", "dot segment with path parameters"),
    ("/public\\..\\admin", "backslash"),  # a separator for IIS-style servers
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISED, ids=[r for r, _ in NORMALISED])
def test_normalises(raw: str, expected: str) -> None:
    assert pathnorm.normalize_path(raw) == expected


@pytest.mark.parametrize(("raw", "reason"), REJECTED, ids=[repr(r) for r, _ in REJECTED])
def test_rejects(raw: str, reason: str) -> None:
    with pytest.raises(pathnorm.BadPath, match=reason):
        pathnorm.normalize_path(raw)


@pytest.mark.parametrize(("raw", "expected"), NORMALISED, ids=[r for r, _ in NORMALISED])
def test_normal_form_is_a_fixed_point(raw: str, expected: str) -> None:
    assert pathnorm.normalize_path(expected) == expected


def test_fast_path_returns_the_same_object() -> None:
    raw = "/api/v1/users/42/orders"
    assert pathnorm.normalize_path(raw) is raw


def test_bad_path_is_a_value_error() -> None:
    assert issubclass(pathnorm.BadPath, ValueError)
