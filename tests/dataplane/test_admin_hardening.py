"""The admin port, hardened like the traffic port, with real ``kubegate serve`` processes and raw sockets.

Aspects, without a token: a request head over 32 KiB gets 431; silent connections, slow heads and slow
bodies are answered 408 and closed; idle admin connections cannot use up the process's file descriptors
(traffic keeps being served); ``/routes`` follows the table served; series of removed routes leave
``/metrics``; the push token file is re-read on every push (rotation), and an unreadable, undecodable or
absent one refuses pushes with 403 (never 500), says so once in the log, and tells an unauthenticated
caller nothing about it. With a valid token: deep JSON, too many JSON values, too many routes, a body
over 64 MiB (declared or streamed) and a body that never ends are refused (400/413/408); two routes with
one id are refused; a refusal lists at most 100 reasons. The wire limits themselves (routes, endpoints,
errors, duplicate ids, version length, deltas) are also tested in-process on
:class:`~kubegate.compiler.table.WireLimits`. No refusal leaves a traceback in the log.

Timing claims (what an admin request costs the traffic port) are in ``bench/admin_bench.py``; timeouts
here are short settings of the process under test, and the test's own waits are hang guards only.
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from kubegate.compiler.table import RouteTable, TableDelta, TableTooLarge, WireLimits, check_size
from tests.gateway import TOKEN, GatewayProcess, free_port, route, table
from tests.upstreams import UpstreamServer, wait_for

GUARD = 20.0  # seconds: a hang guard, never a measure


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    up = UpstreamServer("adm").start()
    yield up
    up.stop()


class ServeProcess(GatewayProcess):
    """``serve(ServeOptions(...))`` in a child process: for options without a flag (the admin body
    timeout, the admin connection cap) and for a descriptor limit set before it starts. Only the start
    differs from :class:`GatewayProcess`: health, logs, pushes and stopping are its."""

    def __init__(self, tmp: Path, *, nofile: int | None = None, **options: Any) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.admin_port = free_port()
        self.token = TOKEN
        self.token_file = tmp / f"token-{self.port}"
        self.token_file.write_text(TOKEN + "\n")
        opts = {
            "host": "127.0.0.1",
            "port": self.port,
            "admin_host": "127.0.0.1",
            "admin_port": self.admin_port,
            "push_token_file": str(self.token_file),
            "drain_timeout": 5.0,
            **options,
        }
        code = (
            "import json, sys, uvloop\n"
            "from pathlib import Path\n"
            "from kubegate.logs import setup_logging\n"
            "from kubegate.dataplane.server import ServeOptions, serve\n"
            "setup_logging('info')\n"
            "o = json.loads(sys.argv[1])\n"
            "o['push_token_file'] = Path(o['push_token_file'])\n"
            "sys.exit(uvloop.run(serve(ServeOptions(**o))))\n"
        )

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.log_path = tmp / f"serve-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k != "KUBEGATE_PUSH_TOKEN"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(opts)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=limit,  # only setrlimit, before exec
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        wait_for(self._healthy, timeout=GUARD)


def _answer(sock: socket.socket, feed: bytes | None = None, every: float = 0.05) -> bytes:
    """Everything the server sends until it closes the connection, sending ``feed`` (if any) every
    ``every`` seconds meanwhile; fails if the connection is still open after the hang guard."""
    received = b""
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if feed is not None:
            try:
                sock.sendall(feed)
            except OSError:
                feed = None  # the server closed its side: read what it said
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
    raise AssertionError(f"connection still open after {GUARD} s; received {received[:200]!r}")


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _no_traceback(log: str) -> None:
    assert "Traceback" not in log, log[-3000:]


# --- the request head -----------------------------------------------------------------------------------
def test_admin_head_over_32_kib_gets_431_and_one_within_is_served(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        for head in (
            b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (40 * 1024) + b"\r\n\r\n",  # whole
            b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (33 * 1024),  # still incomplete
        ):
            with socket.create_connection(("127.0.0.1", gw.admin_port)) as s:
                s.sendall(head)
                answer = _answer(s)
            assert _status(answer) == 431 and b"too large" in answer, answer[:300]
        ok = httpx.get(gw.admin + "/health", headers={"x-filler": "a" * (24 * 1024)})
        assert ok.status_code == 200
        _no_traceback(gw.log())
    finally:
        gw.stop()


def test_silent_and_slow_head_connections_get_408_and_are_closed(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, extra=["--header-timeout", "0.5"])
    try:
        with socket.create_connection(("127.0.0.1", gw.admin_port)) as s:
            assert _status(_answer(s)) == 408  # sent nothing at all
        with socket.create_connection(("127.0.0.1", gw.admin_port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            answer = _answer(s, feed=b"a")  # a byte every 50 ms, forever
        assert _status(answer) == 408 and b"head" in answer, answer
        assert httpx.get(gw.admin + "/health").status_code == 200
        _no_traceback(gw.log())
    finally:
        gw.stop()


# --- the request body -----------------------------------------------------------------------------------
def test_slow_and_endless_bodies_get_408(tmp_path: Path) -> None:
    """A push whose body trickles (Content-Length never reached) or never ends (chunked) is cut once the
    body timeout has passed, however steadily bytes keep coming."""
    gw = ServeProcess(tmp_path, admin_body_timeout=1.0)
    try:
        auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
        with socket.create_connection(("127.0.0.1", gw.admin_port)) as s:
            s.sendall(b"PUT /table HTTP/1.1\r\nHost: a\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n")
            answer = _answer(s, feed=b"1\r\n \r\n")
        assert _status(answer) == 408 and b"body" in answer, answer
        with socket.create_connection(("127.0.0.1", gw.admin_port)) as s:
            s.sendall(b"PUT /table HTTP/1.1\r\nHost: a\r\n" + auth + b"Content-Length: 1000000\r\n\r\n")
            answer = _answer(s, feed=b" ")
        assert _status(answer) == 408, answer
        assert gw.push(table(route("a", "http://127.0.0.1:1"))).status_code == 200  # still accepts pushes
        _no_traceback(gw.log())
    finally:
        gw.stop()


def test_push_over_64_mib_gets_413_declared_or_streamed(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
        limit = 64 * 1024 * 1024
        with socket.create_connection(("127.0.0.1", gw.admin_port)) as s:
            s.sendall(
                b"PUT /table HTTP/1.1\r\nHost: a\r\n" + auth + b"Content-Length: %d\r\n\r\n" % (limit + 1)
            )
            answer = _answer(s)  # answered before any of the body is sent
        assert _status(answer) == 413, answer

        def chunks() -> Iterator[bytes]:
            piece = b" " * (1024 * 1024)
            for _ in range(65):
                yield piece

        try:
            r = httpx.put(gw.admin + "/table", content=chunks(), headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 413, r.text
        except httpx.WriteError:
            pass  # answered and closed while the client was still sending: the answer must be 413 then
        assert gw.table()["version"] is None
        _no_traceback(gw.log())
    finally:
        gw.stop()


# --- connections ----------------------------------------------------------------------------------------
def test_idle_admin_connections_cannot_use_up_descriptors(tmp_path: Path, upstream: UpstreamServer) -> None:
    """With 256 descriptors, 300 idle admin connections used to leave the traffic port none (502); the
    admin port now holds at most 64 and answers the others 503 at once."""
    gw = ServeProcess(tmp_path, nofile=256)
    socks: list[socket.socket] = []
    try:
        assert gw.push(table(route("a", upstream.url))).status_code == 200
        for _ in range(300):
            socks.append(socket.create_connection(("127.0.0.1", gw.admin_port)))
        refused = _answer(socks[-1])
        assert _status(refused) == 503, refused
        assert httpx.get(gw.url + "/x", timeout=GUARD).status_code == 200
        for s in socks:
            s.close()
        socks.clear()
        wait_for(lambda: httpx.get(gw.admin + "/health").status_code == 200, timeout=GUARD)
        _no_traceback(gw.log())
    finally:
        for s in socks:
            s.close()
        gw.stop()


# --- read views and metrics -----------------------------------------------------------------------------
def test_routes_view_follows_the_table_served(tmp_path: Path, upstream: UpstreamServer) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        assert httpx.get(gw.admin + "/routes").json() == {"version": None, "routes": []}
        assert gw.push(table(route("a", upstream.url), version="v1")).status_code == 200
        first = httpx.get(gw.admin + "/routes").json()
        assert first["version"] == "v1" and [r["id"] for r in first["routes"]] == ["default/a"]
        assert httpx.get(gw.admin + "/services/default/a").status_code == 404
        assert gw.push(table(route("b", upstream.url), version="v2")).status_code == 200
        second = httpx.get(gw.admin + "/routes").json()
        assert second["version"] == "v2" and [r["id"] for r in second["routes"]] == ["default/b"]
        services = httpx.get(gw.admin + "/services").json()["services"]
        assert [s["routes"] for s in services] == [["default/b"]]
    finally:
        gw.stop()


def test_series_of_removed_routes_leave_metrics(tmp_path: Path, upstream: UpstreamServer) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        assert gw.push(
            table(route("a", upstream.url, path="/a"), route("b", upstream.url, path="/b"))
        ).is_success
        assert httpx.get(gw.url + "/a").status_code == 200
        assert httpx.get(gw.url + "/b").status_code == 200
        assert httpx.get(gw.url + "/b").status_code == 200
        text = httpx.get(gw.admin + "/metrics").text
        assert 'kubegate_requests_total{method="GET",route="default/b",status_class="2xx"} 2.0' in text
        assert gw.push(table(route("a", upstream.url, path="/a"), version="t2")).status_code == 200
        text = httpx.get(gw.admin + "/metrics").text
        assert 'kubegate_requests_total{method="GET",route="default/a",status_class="2xx"} 1.0' in text
        assert 'route="default/b"' not in text
    finally:
        gw.stop()


# --- the push token -------------------------------------------------------------------------------------
def _token_file(gw: GatewayProcess, tmp: Path) -> Path:
    return tmp / f"token-{gw.port}"


def test_rotated_token_file_takes_effect_without_restart(tmp_path: Path) -> None:
    # No grace for the previous token here (its grace: tests/operator/test_push_token.py).
    gw = GatewayProcess(tmp_path, extra=["--push-token-grace", "0"])
    try:
        assert gw.push(table(version="old-token")).status_code == 200
        _token_file(gw, tmp_path).write_text("rotated-token-abcdef\n")
        assert gw.push(table(version="refused"), token=TOKEN).status_code == 403
        assert gw.push(table(version="new-token"), token="rotated-token-abcdef").status_code == 200
        assert gw.table()["version"] == "new-token"
    finally:
        gw.stop()


def test_undecodable_token_file_refuses_pushes_with_403_once_logged(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        _token_file(gw, tmp_path).write_bytes(b"\xff\xfe\x00 not text")
        for _ in range(3):
            assert gw.push(table(), token="anything").status_code == 403
        assert gw.log().count("is not UTF-8 text") == 1
        _token_file(gw, tmp_path).write_text(TOKEN)
        assert gw.push(table(version="back")).status_code == 200
        assert "readable again" in gw.log()
        _no_traceback(gw.log())
    finally:
        gw.stop()


def test_missing_token_file_is_logged_once_not_per_request(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        _token_file(gw, tmp_path).unlink()
        for _ in range(3):
            assert httpx.put(gw.admin + "/table", json=table()).status_code == 401
            assert gw.push(table(), token="guess").status_code == 403
        assert gw.log().count("cannot read push token file") == 1
        _no_traceback(gw.log())
    finally:
        gw.stop()


def test_unauthenticated_callers_are_not_told_pushes_are_disabled(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, token=None)
    try:
        anonymous = httpx.put(gw.admin + "/table", json=table())
        guessed = httpx.put(gw.admin + "/table", json=table(), headers={"authorization": "Bearer guess"})
        assert (anonymous.status_code, guessed.status_code) == (401, 403)
        assert guessed.json() == {"error": "invalid bearer token"}
        assert "disabled" not in anonymous.text + guessed.text
    finally:
        gw.stop()


# --- what a valid token may push ------------------------------------------------------------------------
def _put(gw: GatewayProcess, body: bytes) -> httpx.Response:
    return httpx.put(
        gw.admin + "/table", content=body, timeout=60, headers={"authorization": f"Bearer {TOKEN}"}
    )


def test_hostile_tables_are_refused_with_small_answers(tmp_path: Path, upstream: UpstreamServer) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        assert gw.push(table(route("keep", upstream.url), version="kept")).status_code == 200

        deep = _put(gw, b"[" * 100_000 + b"]" * 100_000)
        assert deep.status_code == 400 and "nested" in deep.text, deep.text

        values = _put(gw, b'{"version":"v","routes":[' + b",".join([b"{}"] * 1_000_000) + b"]}")
        assert values.status_code == 413 and "JSON values" in values.text and len(values.content) < 1000

        minimal = b'{"id":"a/r%d","namespace":"a","name":"r%d","backends":[{"name":"b"}]}'
        many = b",".join(minimal % (i, i) for i in range(50_001))
        routes = _put(gw, b'{"version":"v","routes":[' + many + b"]}")
        assert routes.status_code == 413 and "50001 routes" in routes.text, routes.text[:300]

        invalid = _put(gw, json.dumps(table(*[{"id": f"a/{i}"} for i in range(5000)])).encode())
        assert invalid.status_code == 400 and len(invalid.json()["reasons"]) == 101, invalid.text[:300]
        assert len(invalid.content) < 20_000

        twice = table(route("same", upstream.url, path="/one"), route("same", upstream.url, path="/two"))
        dup = gw.push(twice)
        assert dup.status_code == 400 and "routes.1.id" in dup.text and "also the id of routes.0" in dup.text

        assert gw.table()["version"] == "kept"
        assert httpx.get(gw.url + "/still").status_code == 200
        _no_traceback(gw.log())
    finally:
        gw.stop()


def test_delta_with_two_upserts_of_one_id_is_refused(tmp_path: Path, upstream: UpstreamServer) -> None:
    gw = GatewayProcess(tmp_path)
    try:
        base = RouteTable.from_wire(table(route("a", upstream.url)))
        assert gw.push(base.to_wire()).status_code == 200
        delta = {
            "version": "d",
            "base": base.content_hash(),
            "hash": "sha256:whatever",
            "upsert": [route("b", upstream.url, path="/1"), route("b", upstream.url, path="/2")],
        }
        r = httpx.patch(gw.admin + "/table", json=delta, headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 400 and "upsert.1.id" in r.text, r.text
        _no_traceback(gw.log())
    finally:
        gw.stop()


# --- the wire limits, in-process ------------------------------------------------------------------------
def _routes(n: int, endpoints: int = 1) -> list[dict[str, Any]]:
    ends = [{"host": "10.0.0.1", "port": 8000 + i} for i in range(endpoints)]
    return [
        {"id": f"a/r{i}", "namespace": "a", "name": f"r{i}", "backends": [{"name": "b", "endpoints": ends}]}
        for i in range(n)
    ]


def test_wire_limits_on_routes_endpoints_and_version() -> None:
    limits = WireLimits(max_routes=3, max_endpoints=6, max_version_chars=8)
    assert len(RouteTable.from_wire(table(*_routes(3, 2)), limits=limits).routes) == 3
    with pytest.raises(TableTooLarge, match="4 routes"):
        RouteTable.from_wire(table(*_routes(4)), limits=limits)
    with pytest.raises(TableTooLarge, match="9 endpoints"):
        RouteTable.from_wire(table(*_routes(3, 3)), limits=limits)
    with pytest.raises(ValidationError, match="longer than 8"):
        RouteTable.from_wire(table(*_routes(1), version="123456789"), limits=limits)
    big = RouteTable.from_wire(table(*_routes(4)))
    with pytest.raises(TableTooLarge, match="4 routes"):
        check_size(big, limits)


def test_wire_errors_are_capped_and_located() -> None:
    bad = table(*_routes(2), *[{"id": f"x/{i}"} for i in range(300)])
    with pytest.raises(ValidationError) as caught:
        RouteTable.from_wire(bad, limits=WireLimits(max_errors=10))
    errors = caught.value.errors()
    assert len(errors) == 11 and "more errors not listed" in errors[-1]["msg"]
    assert "validation stopped after 128 of 302 routes" in errors[-1]["msg"]  # the first chunk had 10
    assert errors[0]["loc"][:2] == ("routes", 2)


def test_delta_limits() -> None:
    limits = WireLimits(max_routes=2)
    ok = {"version": "d", "base": "b", "hash": "h", "upsert": _routes(2), "remove": ["a/x"]}
    assert len(TableDelta.from_wire(ok, limits=limits).upsert) == 2
    with pytest.raises(TableTooLarge):
        TableDelta.from_wire({**ok, "upsert": _routes(3)}, limits=limits)
    with pytest.raises(TableTooLarge):
        TableDelta.from_wire({**ok, "remove": ["a", "b", "c"]}, limits=limits)
