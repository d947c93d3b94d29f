"""Path normalisation: decoding of unreserved escapes, slash merging, dot-segment removal, rejections.

Aspects: the already-normal fast path returns its input unchanged; traversal bypass attempts (plain and
percent-encoded dots, mixed case) resolve to the path a route is matched against or are rejected; encoded
slashes and backslashes are refused, unescaped or kept as data by the ``escaped_slashes`` setting; malformed
input raises BadPath.
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
    ("/%c3%a9t%c3%a9", "/%C3%A9t%C3%A9"),  # non-ASCII stays encoded, upper-case hex
    ("/%252e%252e/admin", "/%252e%252e/admin"),  # decoded once only
    ("/%20", "/%20"),
    ("/%0a", "/%0A"),
]

# escaped_slashes="keep": an encoded slash or backslash is data, never a separator
KEPT = [
    ("/a%2fb", "/a%2Fb"),
    ("/a%2Fb", "/a%2Fb"),
    ("/a%5cb", "/a%5Cb"),
    ("/a/..%2f..%2fadmin", "/a/..%2F..%2Fadmin"),
    ("/a/%2e%2e%2fadmin", "/a/..%2Fadmin"),
]

# escaped_slashes="unescape": both become "/" before dot segments are removed (what a decoding backend sees)
UNESCAPED = [
    ("/a%2fb", "/a/b"),
    ("/public/..%2Finternal/x", "/internal/x"),
    ("/public/..%5Cinternal/x", "/internal/x"),
    ("/a/%2e%2e%2fadmin", "/admin"),
    ("/a%2F%2F", "/a/"),
    ("/%2F", "/"),
]

# escaped_slashes="reject" (the default)
ESCAPED_REJECTED = ["/a%2fb", "/a%2Fb", "/public/..%2Finternal/x", "/a%5Cb", "/a%5cb", "/%2F"]

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


@pytest.mark.parametrize(("raw", "expected"), KEPT, ids=[r for r, _ in KEPT])
def test_keeps_escaped_slashes_as_data(raw: str, expected: str) -> None:
    assert pathnorm.normalize_path(raw, "keep") == expected
    assert pathnorm.normalize_path(expected, "keep") == expected


@pytest.mark.parametrize(("raw", "expected"), UNESCAPED, ids=[r for r, _ in UNESCAPED])
def test_unescapes_escaped_slashes(raw: str, expected: str) -> None:
    assert pathnorm.normalize_path(raw, "unescape") == expected


@pytest.mark.parametrize("raw", ESCAPED_REJECTED)
def test_rejects_escaped_slashes_by_default(raw: str) -> None:
    with pytest.raises(pathnorm.BadPath, match="encoded slash or backslash"):
        pathnorm.normalize_path(raw)
    with pytest.raises(pathnorm.BadPath, match="encoded slash or backslash"):
        pathnorm.normalize_path(raw, "reject")


def test_other_escapes_are_untouched_by_every_mode() -> None:
    for mode in pathnorm.ESCAPED_SLASH_MODES:
        assert pathnorm.normalize_path("/a%20b%2e", mode) == "/a%20b."


def test_fast_path_returns_the_same_object() -> None:
    raw = "/api/v1/users/42/orders"
    assert pathnorm.normalize_path(raw) is raw


def test_bad_path_is_a_value_error() -> None:
    assert issubclass(pathnorm.BadPath, ValueError)


def _fast_path(raw: str) -> bool:
    """normalize_path's own fast-path test, restated: what is_normal must decide on the bytes."""
    return (
        raw[:1] == "/"
        and "%" not in raw
        and "//" not in raw
        and "/." not in raw
        and "\\" not in raw
        and raw.isascii()
        and raw.isprintable()
    )


def test_is_normal_decides_as_the_fast_path_does() -> None:
    import itertools
    import random

    alphabet = [0x2F, 0x2E, 0x25, 0x5C, 0x61, 0x20, 0x00, 0x1F, 0x7E, 0x7F, 0x80, 0xFF, 0x3B, 0x3F]
    cases = [bytes(t) for n in range(5) for t in itertools.product(alphabet, repeat=n)]
    rng = random.Random(1729)
    letters = alphabet + [0x61, 0x62, 0x2D, 0x7A] * 6  # mostly path characters: many paths are normal
    cases += [b"/" + bytes(rng.choice(letters) for _ in range(rng.randrange(4, 40))) for _ in range(20_000)]
    normal = 0
    for raw in cases:
        text = raw.decode("latin-1")
        assert pathnorm.is_normal(raw) == _fast_path(text), raw
        if pathnorm.is_normal(raw):
            normal += 1
            assert pathnorm.normalize_path(text) == text
    assert normal > 1000  # the corpus holds plenty of both kinds
