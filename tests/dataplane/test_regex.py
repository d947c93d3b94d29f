"""Route regexes against hostile clients and bad pushes, on a real ``kubegate serve`` process.

Aspects:
- a route whose header (or query-parameter) match is ``(a+)+$``, which backtracks catastrophically in
  Python's ``re``: a request carrying 10,000 ``a`` and a ``!`` is answered (404: no route takes it), a
  matching one is proxied, and the process keeps answering afterwards. The 5 s socket timeout only guards
  against a hang; how long an answer takes is measured by ``bench/regex_bench.py``, not asserted here.
- a pushed table (``PUT /table``) with a regex RE2 cannot run, one over 1024 bytes, or more than 16 regex
  matches in a route gets 400 with the reason, and the old table keeps serving; so does a delta
  (``PATCH /table``) carrying such a route.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway import GatewayProcess, route, table
from tests.upstreams import UpstreamServer

HOSTILE = "a" * 10_000 + "!"
NESTED = {"value": "(a+)+$", "type": "RegularExpression"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    up = UpstreamServer("up").start()
    proc = GatewayProcess(tmp_path_factory.mktemp("gw"))
    resp = proc.push(
        table(
            route("header", up.url, match={"path": {"value": "/h"}, "headers": [{"name": "X-R", **NESTED}]}),
            route("query", up.url, match={"path": {"value": "/q"}, "queryParams": [{"name": "q", **NESTED}]}),
            route("plain", up.url, path="/plain"),
        )
    )
    assert resp.status_code == 200, resp.text
    yield proc
    proc.stop()
    up.stop()


def get(gw: GatewayProcess, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection; the timeout is a hang guard, not a measurement."""
    head = f"GET {target} HTTP/1.1\r\nHost: regex.test\r\nConnection: close\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5.0) as s:
        s.sendall((head + "\r\n").encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    return int(response.split(b" ", 2)[1]), response.split(b"\r\n\r\n", 1)[1]


def test_hostile_header_is_answered(gw: GatewayProcess) -> None:
    status, body = get(gw, "/h", {"X-R": HOSTILE})
    assert status == 404, body
    assert json.loads(body)["error"]
    assert get(gw, "/h", {"X-R": "aaaa"})[0] == 200
    assert get(gw, "/plain")[0] == 200  # the process is still serving


def test_hostile_query_parameter_is_answered(gw: GatewayProcess) -> None:
    assert get(gw, "/q?q=" + "a" * 5_000 + "!")[0] == 404
    assert get(gw, "/q?q=aaaa")[0] == 200


def _pushed(match: dict[str, Any]) -> dict[str, Any]:
    return table(
        route("bad", "http://127.0.0.1:1", match={"path": {"value": "/bad"}, **match}), version="bad"
    )


def _regex(value: str, name: str = "X-R") -> dict[str, str]:
    return {"name": name, "value": value, "type": "RegularExpression"}


@pytest.mark.parametrize(
    ("match", "reason"),
    [
        ({"headers": [_regex("a" * 1025)]}, "regular expression is 1025 bytes long, more than 1024"),
        ({"headers": [_regex(r"(a)\1")]}, "RE2 has no backreferences"),
        ({"queryParams": [_regex("(?<=a)b", name="q")]}, "RE2 has no lookaround"),
        (
            {"headers": [_regex("a", name=f"x-{i}") for i in range(17)]},
            "17 RegularExpression matches, more than 16",
        ),
    ],
)
def test_bad_regex_push_is_400_and_old_table_serves(
    gw: GatewayProcess, match: dict[str, Any], reason: str
) -> None:
    before = gw.table()
    r = gw.push(_pushed(match))
    assert r.status_code == 400, r.text
    assert any(reason in text for text in r.json()["reasons"]), r.text
    after = gw.table()
    assert (after["version"], after["hash"]) == (before["version"], before["hash"])
    assert after["version"] == "t1"
    assert get(gw, "/h", {"X-R": "aaaa"})[0] == 200
    assert httpx.get(gw.url + "/bad", headers={"X-R": "a"}).status_code == 404


def test_bad_regex_in_a_delta_is_400_and_old_table_serves(gw: GatewayProcess) -> None:
    before = gw.table()
    bad = _pushed({"headers": [_regex("(a)\\1")]})["routes"][0]
    delta = {"version": "bad", "base": before["hash"], "hash": before["hash"], "upsert": [bad], "remove": []}
    r = httpx.patch(
        gw.admin + "/table", json=delta, timeout=30, headers={"authorization": f"Bearer {gw.token}"}
    )
    assert r.status_code == 400, r.text
    assert any("RE2 has no backreferences" in text for text in r.json()["reasons"]), r.text
    assert gw.table() == before
    assert get(gw, "/h", {"X-R": "aaaa"})[0] == 200
