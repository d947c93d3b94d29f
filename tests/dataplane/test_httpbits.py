"""The HTTP/1.1 facts of ``httpbits``, tested without sockets (cases found by ``bench/mutation.py httpbits``).

Aspects: the hop-by-hop and proxy-set header names are exactly the listed ones; status lines and reason
phrases, known and unknown; Connection header tokens (common values and lists); host validation and its
bounded memo; ``only_chunked``; the exact bytes of an error response (JSON body, request ID, Retry-After,
Connection: close, HEAD without body); request IDs (per-process prefix, counter from 1) and the
acceptance rule for client-supplied IDs at its boundaries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from kubegate.dataplane import httpbits


def test_hop_by_hop_headers_are_the_rfc_9110_ones_plus_the_de_facto_ones() -> None:
    assert {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    } == httpbits.HOP_BY_HOP


def test_headers_the_proxy_sets_itself() -> None:
    assert {
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-for",
        b"x-request-id",
        b"expect",
        b"host",
    } == httpbits.PROXY_SET


@pytest.mark.parametrize(
    ("status", "line", "phrase"),
    [
        (200, b"HTTP/1.1 200 OK", b"OK"),
        (101, b"HTTP/1.1 101 Switching Protocols", b"Switching Protocols"),
        (404, b"HTTP/1.1 404 Not Found", b"Not Found"),
        (431, b"HTTP/1.1 431 Request Header Fields Too Large", b"Request Header Fields Too Large"),
        (599, b"HTTP/1.1 599 Unknown", b"Unknown"),
        (299, b"HTTP/1.1 299 Unknown", b"Unknown"),
    ],
)
def test_status_lines_and_reasons(status: int, line: bytes, phrase: bytes) -> None:
    assert httpbits.status_line(status) == line
    assert httpbits.reason(status) == phrase


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        (b"keep-alive", {b"keep-alive"}),
        (b"Keep-Alive", {b"keep-alive"}),
        (b"close", {b"close"}),
        (b"Close", {b"close"}),
        (b"CLOSE", {b"close"}),
        (b"close, X-Internal", {b"close", b"x-internal"}),
        (b" Upgrade ,, keep-alive ,", {b"upgrade", b"keep-alive"}),
        (b"", set()),
        (b" , ", set()),
    ],
)
def test_connection_tokens(value: bytes, tokens: set[bytes]) -> None:
    assert httpbits.connection_tokens(value) == frozenset(tokens)


@pytest.fixture
def empty_hosts() -> Iterator[dict[bytes, str]]:
    httpbits.HOSTS.clear()
    yield httpbits.HOSTS
    httpbits.HOSTS.clear()


VALID_HOSTS = [
    b"",
    b"example.com",
    b"Example.COM:8080",
    b"a-b_c~d.example:1",
    b"127.0.0.1:65535",
    b"[::1]",
    b"[2001:db8::1]:443",
    b"[::ffff:10.0.0.1]",
]
INVALID_HOSTS = [
    b"a b",
    b"a/b",
    b"user@example.com",
    b"a,b",
    b"a%2fb",
    b"example.com:123456",
    b"example.com:",
    b"example.com:8a",
    b"[::1",
    b"[g::1]",
    b"exa\x00mple",
    b"caf\xe9.example",
    b"example.com\r\nx: y",
]


@pytest.mark.parametrize("value", VALID_HOSTS)
def test_valid_hosts_are_decoded_and_remembered(value: bytes, empty_hosts: dict[bytes, str]) -> None:
    assert httpbits.host_str(value) == value.decode("latin-1")
    assert empty_hosts == {value: value.decode("latin-1")}
    assert httpbits.host_str(value) == value.decode("latin-1")


@pytest.mark.parametrize("value", INVALID_HOSTS)
def test_invalid_hosts_are_empty_and_remembered(value: bytes, empty_hosts: dict[bytes, str]) -> None:
    assert httpbits.host_str(value) == ""
    assert empty_hosts == {value: ""}
    assert httpbits.host_str(value) == ""


def test_host_memo_is_consulted_first(empty_hosts: dict[bytes, str]) -> None:
    empty_hosts[b"example.com"] = "seen-before"
    assert httpbits.host_str(b"example.com") == "seen-before"


def test_host_memo_is_bounded_to_1024_entries(empty_hosts: dict[bytes, str]) -> None:
    for i in range(1024):
        httpbits.host_str(b"h%d.example" % i)
    assert len(empty_hosts) == 1024
    assert httpbits.host_str(b"one-more.example") == "one-more.example"
    assert empty_hosts == {b"one-more.example": "one-more.example"}


@pytest.mark.parametrize(
    ("value", "chunked"),
    [
        (b"chunked", True),
        (b"Chunked", True),
        (b" CHUNKED \t", True),
        (b"gzip, chunked", False),
        (b"chunked, chunked", False),
        (b"chunked;x=1", False),
        (b"identity", False),
        (b"", False),
    ],
)
def test_only_chunked(value: bytes, chunked: bool) -> None:
    assert httpbits.only_chunked(value) is chunked


def _body(status: int, reason: str, message: str, rid: str) -> bytes:
    return b'{"error":"%s","status":%d,"message":%s,"requestId":"%s"}' % (
        reason.encode(),
        status,
        json.dumps(message).encode(),
        rid.encode(),
    )


def test_error_response_bytes() -> None:
    body = _body(404, "Not Found", 'no route for "/x"', "abc-1")
    assert (
        httpbits.error_response(404, 'no route for "/x"', b"abc-1", close=False)
        == (
            b"HTTP/1.1 404 Not Found\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"x-request-id: abc-1\r\n"
            b"\r\n" % len(body)
        )
        + body
    )
    assert json.loads(body) == {
        "error": "Not Found",
        "status": 404,
        "message": 'no route for "/x"',
        "requestId": "abc-1",
    }


def test_error_response_with_retry_after_and_close() -> None:
    body = _body(503, "Service Unavailable", "overloaded", "r")
    assert (
        httpbits.error_response(503, "overloaded", b"r", close=True, retry_after=7)
        == (
            b"HTTP/1.1 503 Service Unavailable\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"x-request-id: r\r\n"
            b"retry-after: 7\r\n"
            b"connection: close\r\n"
            b"\r\n" % len(body)
        )
        + body
    )


def test_error_response_to_head_has_the_length_but_no_body() -> None:
    body = _body(400, "Bad Request", "bad", "r")
    assert httpbits.error_response(400, "bad", b"r", close=True, head=True) == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\n"
        b"x-request-id: r\r\n"
        b"connection: close\r\n"
        b"\r\n" % len(body)
    )


def test_error_response_retry_after_zero_is_sent() -> None:
    assert b"\r\nretry-after: 0\r\n" in httpbits.error_response(429, "m", b"r", close=False, retry_after=0)


def test_request_ids_have_a_random_prefix_and_count_from_one() -> None:
    ids = httpbits.RequestIds()
    first, second = ids.next(), ids.next()
    match = re.fullmatch(rb"([0-9a-f]{12})-1", first)
    assert match is not None, first
    assert second == match.group(1) + b"-2"
    for _ in range(14):
        last = ids.next()
    assert last == match.group(1) + b"-16"  # decimal
    assert httpbits.RequestIds().next() != first  # another process, another prefix
    assert httpbits.valid_request_id(first)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (b"", False),
        (b"a", True),
        (b"a" * 128, True),
        (b"a" * 129, False),
        (b"!", True),  # 0x21, the first printable non-space
        (b"~", True),  # 0x7E, the last printable
        (b"id-\x20", False),
        (b"id-\x7f", False),
        (b"a b", False),
        (b"\x00", False),
        (b"id\r\nx-evil: 1", False),
        (b"\xff", False),
        (b"!" * 128, True),
    ],
)
def test_client_request_ids(value: bytes, valid: bool) -> None:
    assert httpbits.valid_request_id(value) is valid


def test_lower_name_is_bytes_lower_and_its_memo_stays_bounded() -> None:
    assert httpbits.lower_name(b"Content-Type") == b"content-type"
    assert httpbits.lower_name(b"content-type") is httpbits.lower_name(b"CONTENT-TYPE")  # one object
    for i in range(3000):  # a client inventing names: each still lowered, the memo never over its bound
        name = b"X-Made-Up-%d-AbC" % i
        assert httpbits.lower_name(name) == name.lower()
        assert len(httpbits.NAMES) <= 1024
    assert httpbits.NAMES[b"Host"] == b"host"  # the usual names survive a reset
