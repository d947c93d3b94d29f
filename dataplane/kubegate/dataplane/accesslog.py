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

from kubegate.dataplane.upstreamtls import PoolKey

#: Lines held before a write; the sweeper also writes whatever is held once a second.
BATCH = 256

_LINE = (
    b'{"time":"%s.%03dZ","level":"info","logger":"kubegate.access","message":"request",'
    b'"requestId":%s,"route":%s,"method":%s,"path":%s,"status":%d,"durationMs":%.3f,'
    b'"client":%s,"upstream":%s,"attempts":%d,"bytes":%d}\n'
)


#: Printable ASCII but the two characters JSON strings escape.
_PLAIN = bytes(c for c in range(32, 127) if c not in b'"\\')


def _quoted(value: bytes) -> bytes:
    """A JSON string of ``value`` (latin-1): as is when it needs no escaping, which is the common case."""
    if not value.translate(None, _PLAIN):
        return b'"' + value + b'"'
    return json.dumps(value.decode("latin-1")).encode()


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
        lines = self._lines
        lines.append(
            _LINE
            % (
                self._stamp,
                int((now - second) * 1000),
                _quoted(request_id),  # printable ASCII (validated), but it may hold '"' or '\\'
                _quoted(route.encode("latin-1")),  # a pushed table's ids are not pattern-checked
                b'"%s"' % method,  # an HTTP token (llhttp checked it): no '"' or '\\'
                _quoted(path),
                status,
                seconds * 1000,
                b'"%s"' % client,  # an IP address
                b'"%s:%d"' % (upstream[0].encode("latin-1"), upstream[1]) if upstream is not None else b'"-"',
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
