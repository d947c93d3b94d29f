"""The access log writer: one JSON object per line, escaped when needed, written in batches.

Aspects: every field is there and parses as JSON; values that need escaping (quotes, backslashes, latin-1)
are escaped; lines are held until a batch is full or flush() is called; the time stamp follows the clock.
"""

from __future__ import annotations

import json

from kubegate.dataplane import accesslog
from kubegate.dataplane.accesslog import AccessLog


def _log(clock: float = 1_700_000_000.25) -> tuple[AccessLog, list[bytes]]:
    written: list[bytes] = []
    return AccessLog(written.append, clock=lambda: clock), written


def test_a_line_carries_every_field() -> None:
    log, written = _log()
    log.line(
        b"rid-1", "default/r", b"GET", b"/a?b=1", 200, 0.0123456, b"10.0.0.1", ("127.0.0.1", 8080), 2, 512
    )
    assert written == []  # held until a batch is full or flushed
    log.flush()
    [entry] = [json.loads(x) for x in b"".join(written).splitlines()]
    assert entry == {
        "time": "2023-11-14T22:13:20.250Z",
        "level": "info",
        "logger": "kubegate.access",
        "message": "request",
        "requestId": "rid-1",
        "route": "default/r",
        "method": "GET",
        "path": "/a?b=1",
        "status": 200,
        "durationMs": 12.346,
        "client": "10.0.0.1",
        "upstream": "127.0.0.1:8080",
        "attempts": 2,
        "bytes": 512,
    }


def test_values_that_need_it_are_escaped() -> None:
    log, written = _log()
    log.line(b'a"b\\c', "", b"GET", b"/caf\xe9", 400, 0.0, b"::1", None, 0, 0)
    log.flush()
    entry = json.loads(b"".join(written))
    assert entry["requestId"] == 'a"b\\c' and entry["path"] == "/caf\u00e9" and entry["upstream"] == "-"


def test_lines_are_written_in_batches() -> None:
    log, written = _log()
    for i in range(accesslog.BATCH + 3):
        log.line(b"r%d" % i, "x", b"GET", b"/", 200, 0.0, b"c", None, 0, 0)
    assert len(written) == 1 and written[0].count(b"\n") == accesslog.BATCH
    log.flush()
    log.flush()  # nothing held: nothing written
    assert len(written) == 2 and written[1].count(b"\n") == 3


def test_control_characters_and_odd_route_ids_are_escaped_every_time() -> None:
    log, written = _log()
    for _ in range(2):  # the second line takes the route's JSON string from the memo
        log.line(b"r", 'ns/"odd\\id"', b"GET", b"/a\x01b\x7f\x1f", 200, 0.0, b"c", ("::1", 80), 1, 0)
    log.flush()
    entries = [json.loads(x) for x in b"".join(written).splitlines()]
    assert len(entries) == 2
    for entry in entries:
        assert entry["route"] == 'ns/"odd\\id"' and entry["path"] == "/a\x01b\x7f\x1f"
        assert entry["upstream"] == "::1:80"


def test_durations_keep_microseconds_and_the_time_its_milliseconds() -> None:
    for seconds, expected in (
        (0.0, 0.0),
        (0.0000004, 0.0),
        (0.0000006, 0.001),
        (1.5, 1500.0),
        (83.000123, 83000.123),
    ):
        log, written = _log(clock=1_700_000_000.999)
        log.line(b"r", "x", b"GET", b"/", 200, seconds, b"c", None, 0, 0)
        log.flush()
        entry = json.loads(b"".join(written))
        assert entry["durationMs"] == expected, seconds
        assert entry["time"] == "2023-11-14T22:13:20.999Z"
