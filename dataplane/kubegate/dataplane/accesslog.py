"""JSON access log lines, formatted on the hot path without ``logging`` and written in batches.

Why not ``logging``: a ``LogRecord`` per request, the handler lock and ``JsonFormatter`` cost 77-92 µs per
request in the profile of issue 9, about as much as proxying the request. Here a line is one ``%``
format of pre-validated fields into bytes (escaping only the rare value that needs it), appended to a
list; :meth:`AccessLog.flush` writes the list with one ``write`` when it holds :data:`BATCH` lines, once a
second from the gateway's sweeper, and at shutdown, so no line is lost when the process stops normally.

The lines have the shape of every other log line (``time``, ``level``, ``logger``, ``message``), plus
``requestId``, ``route``, ``method``, ``path``, ``status``, ``durationMs``, ``client``, ``upstream`` (the
endpoint that answered, ``-`` when none did), ``attempts`` and ``bytes`` (response body bytes sent).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Final

from kubegate.dataplane.upstreamtls import PoolKey

#: Lines held before a write; the sweeper also writes whatever is held once a second.
BATCH: Final = 256
#: Routes and endpoints whose quoted form is remembered, at most (beyond, they are quoted per line).
MEMO: Final = 4096

#: ``b"000"`` to ``b"999"``: milliseconds of the time, and the fraction of ``durationMs``.
_THOUSANDTHS: Final = tuple(b"%03d" % i for i in range(1000))
_NO_UPSTREAM: Final = b"-"


def _escaped(value: bytes) -> bytes:
    """``value`` (latin-1) as the inside of a JSON string: itself, unless it holds a character outside
    printable ASCII, ``"`` or ``\\`` (rare: so a plain loop, which compiled is a few instructions a byte)."""
    for i in range(len(value)):
        c = value[i]
        if c < 32 or c > 126 or c == 34 or c == 92:
            return json.dumps(value.decode("latin-1"))[1:-1].encode()
    return value


class AccessLog:
    def __init__(
        self,
        write: Callable[[bytes], object] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._write = write or _stderr_write
        self._clock = clock
        self._lines: list[bytes] = []
        self._second = -1
        self._stamp = b""
        self._routes: dict[str, bytes] = {}  # route id -> its JSON string's inside
        self._upstreams: dict[PoolKey, bytes] = {}  # endpoint -> its JSON string's inside

    def line(
        self,
        request_id: bytes,
        route: str,
        method: bytes,
        path: bytes,
        status: int,
        seconds: float,
        client: bytes,
        upstream: PoolKey | None,  # the endpoint first (a TLS backend's key also holds its settings)
        attempts: int,
        sent: int,
    ) -> None:
        now = self._clock()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        millis = int((now - second) * 1000)
        micros = int(seconds * 1_000_000 + 0.5)  # (a duration is never negative)
        quoted_route = self._routes.get(route)
        if quoted_route is None:  # a pushed table's ids are not pattern-checked: quote them
            quoted_route = _escaped(route.encode("latin-1"))
            if len(self._routes) < MEMO:
                self._routes[route] = quoted_route
        if upstream is None:
            quoted_upstream = _NO_UPSTREAM
        else:
            found = self._upstreams.get(upstream)
            if found is None:
                found = _escaped(b"%s:%d" % (upstream[0].encode("latin-1"), upstream[1]))
                if len(self._upstreams) < MEMO:
                    self._upstreams[upstream] = found
            quoted_upstream = found
        lines = self._lines
        # A literal of only %s (bytes) and %d (int): compiled, the format is one concatenation.
        lines.append(
            b'{"time":"%s.%sZ","level":"info","logger":"kubegate.access","message":"request",'
            b'"requestId":"%s","route":"%s","method":"%s","path":"%s","status":%d,"durationMs":%d.%s,'
            b'"client":"%s","upstream":"%s","attempts":%d,"bytes":%d}\n'
            % (
                self._stamp,
                _THOUSANDTHS[min(max(millis, 0), 999)],
                _escaped(request_id),  # printable ASCII (validated), but it may hold '"' or '\\'
                quoted_route,
                method,  # an HTTP token (llhttp checked it): no '"' or '\\'
                _escaped(path),
                status,
                micros // 1000,
                _THOUSANDTHS[micros % 1000],
                client,  # an IP address
                quoted_upstream,
                attempts,
                sent,
            )
        )
        if len(lines) >= BATCH:
            self.flush()

    def flush(self) -> None:
        lines = self._lines
        if lines:
            self._lines = []
            self._write(b"".join(lines))


def _stderr_write(data: bytes) -> None:
    """Where every other log line goes (stderr), without the ``sys.stderr`` text layer."""
    sys.stderr.flush()  # keep order with lines logging wrote before
    view = memoryview(data)
    while view:
        try:
            written = os.write(2, view)
        except BlockingIOError:
            continue
        view = view[written:]
