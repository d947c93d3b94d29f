"""A private ``redis-server`` for the tests: started on a free port, killed, restarted and paused at will.

The Global rate-limit scope (and the outage behaviour that goes with it) is only worth testing against a
real Redis: its scripting, its clock, its connection handling. :class:`RedisServer` runs
``redis-server --bind 127.0.0.1 --port N --save '' --appendonly no`` in a temporary directory (no
persistence: a restart starts empty, like a fresh pod without a volume) and offers the outages the tests
need: :meth:`~RedisServer.kill` (SIGKILL: connections reset, the port refuses), :meth:`~RedisServer.pause`
and :meth:`~RedisServer.resume` (SIGSTOP/SIGCONT: the kernel still accepts connections, nothing answers,
so clients time out) and :meth:`~RedisServer.restart` (same port, empty data set).

:func:`redis_server_binary` finds the binary (``$KUBEGATE_REDIS_SERVER``, else ``redis-server`` on PATH,
else ``/usr/bin/redis-server``); when there is none, :func:`require_redis_server` skips the test with one
line saying how to get it, or fails it when ``KUBEGATE_REQUIRE_TOOLS=1`` (CI), so that CI cannot go green
with the Redis tests unrun. Readiness is checked with a raw ``PING`` over a socket, so this module needs
no Redis client library.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import pytest

REQUIRE_TOOLS = "KUBEGATE_REQUIRE_TOOLS"
BINARY_ENV = "KUBEGATE_REDIS_SERVER"
HOW_TO_GET = "redis-server not found (apt-get install redis-server, or set $KUBEGATE_REDIS_SERVER)"
#: How long ``start`` waits for the server to answer PING.
START_TIMEOUT = 10.0


class RedisServerError(RuntimeError):
    """The server did not start (the message ends with the tail of its log)."""


def redis_server_binary() -> str | None:
    """The ``redis-server`` to run, or None when there is none."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


def missing(reason: str) -> NoReturn:
    """A tool this test needs is not there: skip, or fail when ``KUBEGATE_REQUIRE_TOOLS=1``."""
    if os.environ.get(REQUIRE_TOOLS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_TOOLS}=1: a missing tool is a failure)", pytrace=False)
    pytest.skip(reason)


def require_redis_server() -> str:
    """The binary, or skip (fail under ``KUBEGATE_REQUIRE_TOOLS=1``) with one line."""
    binary = redis_server_binary()
    if binary is None:
        missing(HOW_TO_GET)
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """Does a Redis on 127.0.0.1:``port`` answer ``PING`` within ``timeout`` seconds?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (see the module docstring). A context manager."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        self.binary = binary or require_redis_server()
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="kubegate-redis-"))
        self._log = self._dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._started = False  # once: later starts keep the port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING (RedisServerError after START_TIMEOUT)."""
        if self.process is not None and self.process.poll() is None:
            return
        command = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self._dir),
        ]  # fmt: skip
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self._dir
            )
        self.paused = False
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if ping(self.port):
                self._started = True
                return
            time.sleep(0.02)
        in_use = "Address already in use" in self.log_tail()
        self.kill()
        if in_use and not self._started:
            # Somebody took the free port between free_port() and the bind: once, try another one.
            self._started = True
            self.port = free_port()
            self.start()
            return
        raise RedisServerError(f"redis-server on port {self.port} did not start:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server and reap it (connections reset; the port refuses until :meth:`start`)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()  # SIGKILL works on a stopped process too
        process.wait(timeout=10)
        self.paused = False

    def restart(self) -> None:
        """Kill and start again on the same port: an empty data set, every client must reconnect."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, but nothing answers."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """Kill the server and remove its directory."""
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self.process is None:
            state = "stopped"
        else:
            state = "paused" if self.paused else f"running pid={self.process.pid}"
        return f"<RedisServer 127.0.0.1:{self.port} {state}>"
