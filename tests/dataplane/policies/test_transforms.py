"""Header transforms, path rewrites and redirects.

Aspects: header name and value validation (tokens, forbidden hop-by-hop / Host / Content-Length names, CR,
LF, NUL, control characters, non-ASCII, surrounding whitespace) with the field named in the message;
duplicate names; set / add / remove and their Gateway API order (set, add, remove) on head lines and on
pairs, case-insensitive names, a leading request or status line left alone, the input never modified;
rewrites: the Gateway API ``ReplacePrefixMatch`` table, prefix ``/``, rewrite to ``/``, trailing slashes,
encoded characters, full paths, invalid configured paths, never ``..`` or ``//`` in the result; redirects:
status codes, scheme changes and default ports, explicit ports, hostnames (IPv6 too), path replacement,
query kept, requests without Host, Location never carrying unsafe characters.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from kubegate.dataplane import pathnorm
from kubegate.dataplane.policies.transforms import (
    FORBIDDEN,
    HeaderTransform,
    Redirect,
    Rewrite,
    is_token,
    validate_header_name,
    validate_header_value,
)


# --- validation ---------------------------------------------------------------------------------------------
def test_header_names() -> None:
    assert validate_header_name("X-Env") == b"x-env"
    assert validate_header_name("x_a.b~c!#$%&'*+^`|") == b"x_a.b~c!#$%&'*+^`|"
    assert is_token("Content-Type") and not is_token("") and not is_token("a b")
    for bad in ("", "X Env", "X-Env:", "X\r\nEvil", "(x)", "x,y", "ü", "x\x00", 'a"b', "a/b"):
        with pytest.raises(ValueError, match="not a valid header name"):
            validate_header_name(bad)


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "keep-alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Host",
        "content-length",
    ],
)
def test_forbidden_names(name: str) -> None:
    assert name.lower().encode() in FORBIDDEN
    with pytest.raises(ValueError, match="cannot be set, added or removed"):
        validate_header_name(name)
    for fields in ({"set": ((name, "x"),)}, {"add": ((name, "x"),)}, {"remove": (name,)}):
        with pytest.raises(ValueError, match="cannot be set, added or removed"):
            HeaderTransform(**fields)


def test_header_values() -> None:
    assert validate_header_value("prod") == b"prod"
    assert validate_header_value("a, b;q=1\t c") == b"a, b;q=1\t c"
    assert validate_header_value("") == b""
    for bad, problem in [
        ("a\rb", "CR"),
        ("a\nb", "LF"),
        ("a\r\nx-evil: 1", "CR"),
        ("a\x00b", "NUL"),
        ("a\x07b", "control"),
        ("a\x7fb", "control"),
        ("café", "non-ASCII"),
        (" a", "whitespace"),
        ("a\t", "whitespace"),
    ]:
        with pytest.raises(ValueError, match=problem):
            validate_header_value(bad)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"set": (("X-A", "1"), ("X A", "2"))}, r"^set\[1\]\.name: 'X A' is not a valid header name"),
        ({"add": (("X-A", "bad\r\nx: y"),)}, r"^add\[0\]\.value: header value .* contains CR"),
        ({"remove": ("x-a", "Host")}, r"^remove\[1\]: 'Host' cannot be set"),
        ({"set": (("X-A", "1"), ("x-a", "2"))}, r"^set\[1\]\.name: 'x-a' is already in set\[0\]"),
        ({"add": (("X-A", "1"), ("X-A", "2"))}, r"^add\[1\]\.name: 'X-A' is already in add\[0\]"),
        ({"remove": ("x-a", "X-A")}, r"^remove\[1\]: 'X-A' is already listed as remove\[0\]"),
    ],
)
def test_transform_errors_name_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeaderTransform(**fields)


# --- header transforms --------------------------------------------------------------------------------------
REQUEST = [b"GET /a HTTP/1.1", b"host: h", b"x-a: 1", b"x-b: 2", b"x-b: 3", b"x-c: 4"]


def test_set_replaces_every_header_of_that_name_or_adds_it() -> None:
    t = HeaderTransform(set=(("X-B", "9"), ("X-New", "n")))
    assert t.apply(REQUEST[1:]) == [b"host: h", b"x-a: 1", b"x-c: 4", b"x-b: 9", b"x-new: n"]


def test_add_appends_after_existing_ones() -> None:
    t = HeaderTransform(add=(("X-B", "9"), ("X-New", "n")))
    assert t.apply(REQUEST[1:]) == [*REQUEST[1:], b"x-b: 9", b"x-new: n"]


def test_remove_drops_every_header_of_that_name() -> None:
    t = HeaderTransform(remove=("X-B", "x-absent"))
    assert t.apply(REQUEST[1:]) == [b"host: h", b"x-a: 1", b"x-c: 4"]


def test_names_are_case_insensitive_on_both_sides() -> None:
    # The response side copies the upstream's names as they came: match them whatever their case.
    lines = [b"Server: nginx", b"X-Powered-By: php", b"SERVER: again", b"Content-Type: text/plain"]
    t = HeaderTransform(set=(("x-powered-by", "kubegate"),), remove=("server",))
    assert t.apply(lines) == [b"Content-Type: text/plain", b"x-powered-by: kubegate"]


def test_order_is_set_then_add_then_remove() -> None:
    # The example of the class docstring.
    t = HeaderTransform(set=(("X-B", "9"),), add=(("x-a", "5"), ("x-d", "6")), remove=("x-c",))
    assert t.apply(REQUEST[2:]) == [b"x-a: 1", b"x-b: 9", b"x-a: 5", b"x-d: 6"]
    # set then add on one name: the set value, then the added one
    t = HeaderTransform(set=(("X-B", "9"),), add=(("X-B", "10"),))
    assert t.apply(REQUEST[2:]) == [b"x-a: 1", b"x-c: 4", b"x-b: 9", b"x-b: 10"]
    # remove comes last: it also takes what set and add put there
    t = HeaderTransform(set=(("X-B", "9"),), add=(("X-A", "5"),), remove=("x-b", "x-a"))
    assert t.apply(REQUEST[2:]) == [b"x-c: 4"]
    assert repr(t) == "<HeaderTransform set=x-b add=x-a remove=x-a,x-b>"


def test_start_leaves_the_request_or_status_line_alone() -> None:
    t = HeaderTransform(set=(("X-B", "9"),))
    assert t.apply(REQUEST, 1) == [b"GET /a HTTP/1.1", b"host: h", b"x-a: 1", b"x-c: 4", b"x-b: 9"]
    status = [b"HTTP/1.1 200 OK", b"server: x"]
    assert HeaderTransform(remove=("server",)).apply(status, 1) == [b"HTTP/1.1 200 OK"]
    # A start line that looks like a header of a removed name is kept all the same.
    lines = [b"GET http://h:80/ HTTP/1.1", b"get: 1"]
    assert HeaderTransform(remove=("get",)).apply(lines, 1) == [b"GET http://h:80/ HTTP/1.1"]


def test_input_is_not_modified() -> None:
    lines = list(REQUEST)
    for t in (
        HeaderTransform(set=(("x-a", "0"),)),
        HeaderTransform(add=(("x-a", "0"),)),
        HeaderTransform(remove=("x-a",)),
        HeaderTransform(),
    ):
        t.apply(lines, 1)
        t.apply_pairs([(b"x-a", b"1")])
        assert lines == REQUEST


def test_empty_transform_is_falsy_and_returns_its_input() -> None:
    t = HeaderTransform()
    assert not t
    assert t.apply(REQUEST) is REQUEST
    assert HeaderTransform(add=(("x", "1"),)) and HeaderTransform(remove=("x",))
    # set and add entirely undone by remove still drop existing headers: not empty
    assert HeaderTransform(set=(("x", "1"),), remove=("x",))


def test_apply_pairs() -> None:
    headers = [(b"Server", b"nginx"), (b"x-a", b"1"), (b"X-A", b"2"), (b"x-b", b"3")]
    t = HeaderTransform(set=(("X-A", "9"),), add=(("x-b", "4"),), remove=("server",))
    assert t.apply_pairs(headers) == [(b"x-b", b"3"), (b"x-a", b"9"), (b"x-b", b"4")]
    assert HeaderTransform(add=(("x-c", "5"),)).apply_pairs(headers) == [*headers, (b"x-c", b"5")]
    assert HeaderTransform().apply_pairs(headers) is headers


def test_values_keep_their_case_and_names_are_lower_cased() -> None:
    t = HeaderTransform(set=(("X-Mixed-Case", "Some Value"),))
    assert t.set == ((b"x-mixed-case", b"Some Value"),)
    assert t.apply([]) == [b"x-mixed-case: Some Value"]


def test_lines_without_space_after_the_colon() -> None:
    assert HeaderTransform(remove=("x-a",)).apply([b"x-a:1", b"x-ab: 2", b"x: a"]) == [b"x-ab: 2", b"x: a"]


# --- rewrites -----------------------------------------------------------------------------------------------
# The Gateway API's ReplacePrefixMatch table (request path, prefix match, replace prefix, modified path).
GATEWAY_API_TABLE = [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
]


@pytest.mark.parametrize(("path", "matched", "replacement", "expected"), GATEWAY_API_TABLE)
def test_replace_prefix_match_follows_the_gateway_api_table(
    path: str, matched: str, replacement: str, expected: str
) -> None:
    assert Rewrite(path_prefix=replacement).apply(path, matched) == expected


@pytest.mark.parametrize(
    ("path", "matched", "replacement", "expected"),
    [
        ("/api/users", "/api", "/v2", "/v2/users"),  # the docstring's table
        ("/api", "/api", "/v2", "/v2"),
        ("/api/users/", "/api", "/v2", "/v2/users/"),
        ("/api/a/b/c", "/api/a", "/x/y/z", "/x/y/z/b/c"),
        ("/users", "/", "/v2", "/v2/users"),  # prefix "/": no "//"
        ("/", "/", "/v2", "/v2/"),
        ("/", "/", "/", "/"),
        ("/users/", "/", "/v2/", "/v2/users/"),
        ("/users", None, "/v2", "/v2/users"),  # no prefix counts as "/"
        ("/api/users", "/api", "/", "/users"),  # rewrite to "/"
        ("/api/", "/api/", "/", "/"),
        ("/a%20b/c%2Fd", "/a%20b", "/x", "/x/c%2Fd"),  # escapes are kept as they are
        ("/api/%C3%A9t%C3%A9", "/api", "/v2", "/v2/%C3%A9t%C3%A9"),
        ("/api/users", "/api", "/v%201", "/v%201/users"),
        ("/api/users", "/api", "/~x/a:b@c", "/~x/a:b@c/users"),
    ],
)
def test_prefix_rewrite(path: str, matched: str | None, replacement: str, expected: str) -> None:
    assert Rewrite(path_prefix=replacement).apply(path, matched) == expected


def test_prefix_rewrite_refuses_a_path_outside_the_prefix() -> None:
    rewrite = Rewrite(path_prefix="/v2")
    for path in ("/apiary", "/other", "/ap"):
        with pytest.raises(ValueError, match="does not start with the matched prefix"):
            rewrite.apply(path, "/api")


def test_full_path_rewrite() -> None:
    rewrite = Rewrite(full_path="/status")
    assert rewrite.apply("/anything/at/all", "/anything") == "/status"
    assert rewrite.apply("/", None) == "/status"
    assert Rewrite(full_path="/").apply("/x/y", None) == "/"
    assert Rewrite(full_path="/dir/").apply("/x", None) == "/dir/"
    assert repr(rewrite) == "<Rewrite fullPath=/status>"
    assert repr(Rewrite(path_prefix="/v2")) == "<Rewrite pathPrefix=/v2>"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of pathPrefix and fullPath"),
        ({"path_prefix": "/a", "full_path": "/b"}, "exactly one"),
        ({"full_path": ""}, r"^fullPath: '' is not an absolute path"),
        ({"full_path": "status"}, "not an absolute path"),
        ({"full_path": "/a?x=1"}, "not an absolute path"),
        ({"full_path": "/a#x"}, "not an absolute path"),
        ({"full_path": "/a b"}, "not an absolute path"),
        ({"full_path": "/a\r\nx"}, "not an absolute path"),
        ({"path_prefix": "v2"}, r"^pathPrefix: 'v2' is not an absolute path"),
        (
            {"path_prefix": "/v2/../admin"},
            r"^pathPrefix: '/v2/\.\./admin' is not in normal form; write '/admin'",
        ),
        ({"path_prefix": "//v2"}, "not in normal form; write '/v2'"),
        ({"path_prefix": "/v2//x"}, "not in normal form"),
        ({"path_prefix": "/./v2"}, "not in normal form"),
        ({"path_prefix": "/%7Ev2"}, "not in normal form; write '/~v2'"),
        ({"path_prefix": "/%2e%2e"}, "climbs above the root"),
        ({"path_prefix": "/../x"}, "climbs above the root"),
        ({"path_prefix": "/a%2Fb"}, "encoded slash"),
        ({"path_prefix": "/a%zz"}, "malformed percent-escape"),
        ({"path_prefix": "/a%00"}, "NUL"),
        ({"full_path": "/x/..;y"}, "dot segment with path parameters"),
    ],
)
def test_invalid_rewrites(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rewrite(**fields)


def test_rewrites_never_produce_dot_segments_or_double_slashes() -> None:
    prefixes = ["/", "/a", "/a/", "/a/b", "/a/b/"]
    replacements = ["", "/", "/v2", "/v2/", "/v2/x", "/v2/x/"]
    rests = ["", "/", "/c", "/c/", "/c/d", "/c/d/", "/.c", "/c..", "/%2E%2Fx"]
    seen = 0
    for prefix, replacement, rest in itertools.product(prefixes, replacements, rests):
        base = prefix.rstrip("/")
        path = base + rest or "/"
        if path != pathnorm.normalize_path(path, "keep"):
            continue  # the proxy only ever passes normalised paths
        result = Rewrite(path_prefix=replacement).apply(path, prefix)
        seen += 1
        assert result.startswith("/"), (prefix, replacement, rest, result)
        assert "//" not in result, (prefix, replacement, rest, result)
        assert ".." not in result.split("/") and "." not in result.split("/"), (prefix, replacement, rest)
        assert result == pathnorm.normalize_path(result, "keep")
    assert seen > 200


# --- redirects ----------------------------------------------------------------------------------------------
def test_redirect_status_codes() -> None:
    for code in (301, 302, 303, 307, 308):
        assert Redirect(status_code=code).status_code == code
    assert Redirect().status_code == 302
    for code in (200, 300, 304, 305, 306, 309, 400):
        with pytest.raises(ValueError, match=rf"^statusCode: {code} is not one of 301, 302, 303, 307, 308"):
            Redirect(status_code=code)


@pytest.mark.parametrize(
    ("fields", "request_scheme", "host", "path", "query", "expected"),
    [
        # nothing configured: the same URL (a loop, but well-formed)
        ({}, "http", "example.com", "/a", "", b"http://example.com/a"),
        # scheme change: the new scheme's default port, left out
        ({"scheme": "https"}, "http", "example.com", "/a", "q=1", b"https://example.com/a?q=1"),
        ({"scheme": "https"}, "http", "example.com:8080", "/a", "q=1", b"https://example.com/a?q=1"),
        ({"scheme": "http"}, "https", "example.com:8443", "/a", "", b"http://example.com/a"),
        ({"scheme": "HTTPS"}, "https", "example.com:8443", "/a", "", b"https://example.com/a"),
        # an explicit port, left out when it is the scheme's default
        ({"scheme": "https", "port": 8443}, "http", "example.com", "/a", "", b"https://example.com:8443/a"),
        ({"scheme": "https", "port": 443}, "http", "example.com:80", "/a", "", b"https://example.com/a"),
        ({"port": 443}, "https", "example.com:8443", "/a", "", b"https://example.com/a"),
        ({"port": 8080}, "http", "example.com", "/a", "", b"http://example.com:8080/a"),
        ({"port": 80}, "https", "example.com", "/a", "", b"https://example.com:80/a"),
        # no scheme, no port: the port the request came to
        ({"hostname": "other.example"}, "http", "example.com:8080", "/a", "", b"http://other.example:8080/a"),
        ({"hostname": "other.example"}, "https", "example.com", "/a", "", b"https://other.example/a"),
        ({"hostname": "other.example"}, "http", "example.com:80", "/a", "", b"http://other.example/a"),
        ({"hostname": "Other.Example"}, "http", "example.com", "/a", "", b"http://other.example/a"),
        # everything configured
        (
            {"scheme": "https", "hostname": "new.example", "port": 9443, "path": "/b"},
            "http",
            "old.example:8080",
            "/a",
            "x=1&y=2",
            b"https://new.example:9443/b?x=1&y=2",
        ),
        (
            {"scheme": "https", "hostname": "new.example"},
            "http",
            "old:8080",
            "/a",
            "",
            b"https://new.example/a",
        ),
        # path: full replacement, query kept
        (
            {"path": "/login"},
            "https",
            "example.com",
            "/account/x",
            "next=%2F",
            b"https://example.com/login?next=%2F",
        ),
        ({"path": "/"}, "https", "example.com", "/account/x", "", b"https://example.com/"),
        # IPv6 hosts keep their brackets
        ({"scheme": "https"}, "http", "[::1]:8080", "/a", "", b"https://[::1]/a"),
        ({}, "http", "[::1]:8080", "/a", "", b"http://[::1]:8080/a"),
        ({}, "http", "[2001:db8::1]", "/a", "", b"http://[2001:db8::1]/a"),
        ({"port": 8443, "scheme": "https"}, "http", "[2001:DB8::1]", "/", "", b"https://[2001:db8::1]:8443/"),
        ({"hostname": "::1"}, "http", "example.com:8080", "/a", "", b"http://[::1]:8080/a"),
        ({"hostname": "[::1]", "scheme": "https"}, "http", "example.com", "/a", "", b"https://[::1]/a"),
        # IPv4 and host case / trailing dot
        ({"scheme": "https"}, "http", "10.0.0.1:8080", "/a", "", b"https://10.0.0.1/a"),
        ({"scheme": "https"}, "http", "Example.COM.", "/a", "", b"https://example.com/a"),
        # no Host at all: a relative reference, unless a hostname is configured
        ({}, "http", "", "/a", "q", b"/a?q"),
        ({"scheme": "https"}, "http", "", "/a", "", b"/a"),
        ({"hostname": "h.example"}, "http", "", "/a", "", b"http://h.example/a"),
    ],
)
def test_redirect_location(
    fields: dict[str, Any], request_scheme: str, host: str, path: str, query: str, expected: bytes
) -> None:
    assert Redirect(**fields).location(request_scheme, host, path, query) == expected


def test_redirect_with_prefix_replacement() -> None:
    redirect = Redirect(path_prefix="/new", status_code=301)
    assert (
        redirect.location("https", "example.com", "/old/page", "a=1", "/old")
        == b"https://example.com/new/page?a=1"
    )
    assert redirect.location("https", "example.com", "/old", "", "/old") == b"https://example.com/new"
    assert repr(redirect) == "<Redirect 301 pathPrefix=/new>"


def test_redirect_location_is_header_safe() -> None:
    redirect = Redirect(scheme="https")
    # Raw characters from the request-target that may not appear in a header are percent-encoded.
    assert redirect.location("http", "h", "/a", "x=\xe9 y\r\nz") == b"https://h/a?x=%E9%20y%0D%0Az"
    assert redirect.location("http", "h", "/a b", "") == b"https://h/a%20b"
    assert (
        redirect.location("http", "h", "/a", "x=%20&y=~!$'()*+,;:@/?")
        == b"https://h/a?x=%20&y=~!$'()*+,;:@/?"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scheme": "ftp"}, r"^scheme: 'ftp' is not http or https"),
        ({"port": 0}, r"^port: 0 is not between 1 and 65535"),
        ({"port": 65536}, "^port:"),
        ({"hostname": "example.com:8080"}, r"^hostname: .*\(no port: use the port field\)"),
        ({"hostname": "-bad.example"}, r"^hostname: '-bad.example' is not a valid hostname"),
        ({"hostname": "a b"}, "^hostname:"),
        ({"hostname": "*.example.com"}, "^hostname:"),
        ({"hostname": "example.com/x"}, "^hostname:"),
        ({"hostname": "user@example.com"}, "^hostname:"),
        ({"hostname": ""}, "^hostname:"),
        ({"path": "relative"}, r"^path: fullPath: 'relative' is not an absolute path"),
        ({"path": "/a/../b"}, r"^path: fullPath: .* not in normal form"),
        ({"path_prefix": "/a?b"}, r"^path: pathPrefix:"),
        ({"path": "/a", "path_prefix": "/b"}, "not both"),
    ],
)
def test_invalid_redirects(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Redirect(**fields)


def test_redirect_repr() -> None:
    assert repr(Redirect()) == "<Redirect 302 same URL>"
    assert (
        repr(Redirect(scheme="https", port=8443, status_code=308)) == "<Redirect 308 scheme=https port=8443>"
    )
