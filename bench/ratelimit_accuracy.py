"""How many requests a flooded rate limit admits, against the ideal, for the Global and the Local scope.

The promise (issue text): with 3 data-plane replicas behind one Redis and clients offering 3x the limit for
10 s spread over all replicas, the admitted count is within +-2% of ``requestsPerSecond x 10 + burst``;
Local scope, one replica: within +-1%.

What runs, all on 127.0.0.1 and all stopped at the end (also on Ctrl-C or an exception):

- a ``redis-server`` on a free port (temporary directory, ``--save '' --appendonly no``), Global only;
- a trivial keep-alive HTTP/1.1 upstream answering 200 "ok" at once (this script re-run as a child
  process with ``--serve-upstream PORT``, so that it does not share the client's interpreter);
- ``kubegate serve`` processes with a routes file of two routes to that upstream (``url:`` backend):
  ``/limited`` with ``rateLimit: {requestsPerSecond: R, burst: B, key: Route, scope: ...}`` (one bucket
  for the whole route, so the figure does not depend on client addresses) and ``/warm``, limited far
  above anything sent, used to open the client and upstream connections and the Redis connections
  (and load the Redis script) before the measurement.

In the Global scenario each replica is told how many replicas there are (``PUT /replicas``, as the
operator does in a cluster; ``--no-replica-count`` skips it), so that while Redis does not answer a
replica falls back to ``R / N`` and ``B // N`` rather than the whole limit; a build without that endpoint
is reported as such. Each replica's checks that Redis did not answer (its budget expired, or it was not
even asked while the backend backed off) are printed, from ``/health``'s ``answered`` counter.

The client is one asyncio loop sending an **open-loop** schedule: request ``i`` is due at
``t0 + i / (factor x R)`` whatever happened to the earlier ones, round-robin over the replicas, each on
an idle keep-alive connection of that replica (a new connection when none is idle). 200s are admitted,
429s refused, anything else (another status, a reset, no answer within 10 s of the end) is an error and
printed. The ideal is GCRA's exact figure: from a full bucket, a key flooded over the half-open window
``[t, t + T)`` is admitted ``ceil(R x T) + B`` requests (see ``kubegate/dataplane/policies/ratelimit.py``).
The achieved offered rate, how late the sends were and the largest gap between two sends are printed:
the figure only means something if the limiter was flooded all along (any gap shorter than
``(B + 1) / R`` keeps it flooded) and the sends span T. The figures are reported, not asserted: the exit
code is 0 unless something failed to start.

    python bench/ratelimit_accuracy.py                       # R 200/s, B 100, 10 s, 3 replicas, 3x
    python bench/ratelimit_accuracy.py --rate 100 --burst 50 --seconds 5 --replicas 2
    python bench/ratelimit_accuracy.py --only Local
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchlib import free_port, wait_port

LIMITED = b"GET /limited HTTP/1.1\r\nHost: bench\r\n\r\n"
WARM = b"GET /warm HTTP/1.1\r\nHost: bench\r\n\r\n"
#: Seconds the responses still in flight at the end of the schedule are waited for.
DRAIN = 10.0
#: Connections per replica, at most (a request finding none idle at the cap waits for one: it is late).
MAX_CONNS = 64
#: Connections per replica opened (and warmed) before the measurement.
WARM_CONNS = 6
#: The push token of the replicas (for PUT /replicas).
TOKEN = "ratelimit-accuracy-bench"


class StartError(RuntimeError):
    """Something the benchmark needs did not start (the message says what, with its log's tail)."""


# --- the upstream (a child process) -------------------------------------------------------------------

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class _Upstream(asyncio.Protocol):
    """Answers every request head (and its Content-Length body, if any) with 200 "ok", keep-alive."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(_OK)


def serve_upstream(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# --- child processes ----------------------------------------------------------------------------------


class Children:
    """The processes this script started; :meth:`stop` ends each of them by its own id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes], Path]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log_path = self.directory / f"{name}.log"
        log = log_path.open("wb")
        # A session of its own: a Ctrl-C at the terminal reaches this script only, which then stops them.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc, log, log_path))
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        for n, _, _, path in self.procs:
            if n == name:
                with contextlib.suppress(OSError):
                    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, keep: frozenset[str] = frozenset()) -> None:
        """SIGTERM every process but those named in ``keep``, SIGKILL what is left after 5 s."""
        stopping = [entry for entry in self.procs if entry[0] not in keep]
        for _, proc, _, _ in stopping:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for entry in stopping:
            _, proc, log, _ = entry
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
            self.procs.remove(entry)


def start_redis(children: Children) -> int:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    directory = children.directory / "redis"
    directory.mkdir()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(directory)]  # fmt: skip
    try:
        proc = children.start("redis", argv)
    except OSError as exc:
        raise StartError(f"redis-server could not be run ({binary}): {exc}") from exc
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                return port
        time.sleep(0.05)
    raise StartError(f"redis-server on port {port} did not answer PING:\n{children.log_tail('redis')}")


def start_upstream(children: Children) -> int:
    port = free_port()
    proc = children.start("upstream", [sys.executable, str(Path(__file__).resolve()), "--serve-upstream",
                                       str(port)])  # fmt: skip
    try:
        wait_port(port, timeout=10)
    except TimeoutError:
        raise StartError(f"the upstream did not listen on {port}:\n{children.log_tail('upstream')}") from None
    if proc.poll() is not None:
        raise StartError(f"the upstream exited:\n{children.log_tail('upstream')}")
    return port


def routes_yaml(upstream: int, rate: float, burst: int, scope: str) -> str:
    def route(name: str, r: float, b: int) -> str:
        number = str(int(r)) if float(r).is_integer() else repr(float(r))  # YAML reads 1e+06 as a string
        return (
            "apiVersion: kubegate.dev/v1alpha1\nkind: GatewayRoute\n"
            f"metadata: {{name: {name}, namespace: default}}\n"
            "spec:\n"
            f"  match: {{path: {{type: Prefix, value: /{name}}}}}\n"
            f'  backends: [{{url: "http://127.0.0.1:{upstream}"}}]\n'
            f"  rateLimit: {{requestsPerSecond: {number}, burst: {b}, key: Route, scope: {scope}}}\n"
        )

    return route("limited", rate, burst) + "---\n" + route("warm", 1_000_000, 1_000_000)


@dataclass
class Gateway:
    name: str
    port: int
    admin: int


def admin_get(admin: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def tell_replicas(gateways: list[Gateway], token: str) -> str:
    """``PUT /replicas {"replicas": N}`` on each replica, as the operator does in a cluster, so that a Global
    limit falls back to ``R / N`` (not ``R``) while Redis does not answer; what happened, in words."""
    body = json.dumps({"replicas": len(gateways)}).encode()
    answers = set()
    for gw in gateways:
        request = urllib.request.Request(
            f"http://127.0.0.1:{gw.admin}/replicas",
            data=body,
            method="PUT",
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                answers.add(response.status)
        except urllib.error.HTTPError as exc:
            answers.add(exc.code)
        except OSError as exc:
            return f"PUT /replicas failed ({exc}): the fallback runs at the full rate"
    if answers == {200}:
        return f"replica count set to {len(gateways)} (PUT /replicas): the fallback runs at R/{len(gateways)}"
    return (
        f"PUT /replicas answered {sorted(answers)} (not in this build?): the fallback runs at the full rate"
    )


def start_gateways(
    children: Children, routes: Path, count: int, redis_url: str | None, tag: str, token_file: Path
) -> list[Gateway]:
    gateways = []
    for n in range(count):
        name = f"{tag}-kubegate-{n}"
        gw = Gateway(name, free_port(), free_port())
        argv = [sys.executable, "-m", "kubegate.cli", "serve", "--routes", str(routes),
                "--host", "127.0.0.1", "--port", str(gw.port), "--admin-port", str(gw.admin),
                "--log-level", "warning", "--watch-interval", "0", "--drain-timeout", "1",
                "--drain-linger", "0", "--push-token-file", str(token_file)]  # fmt: skip
        if redis_url:
            argv += ["--redis-url", redis_url]
        children.start(name, argv)
        gateways.append(gw)
    for gw in gateways:  # started together, waited for one by one
        proc = next(p for n, p, _, _ in children.procs if n == gw.name)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise StartError(f"{gw.name} exited with {proc.returncode}:\n{children.log_tail(gw.name)}")
            with contextlib.suppress(OSError):
                if admin_get(gw.admin, "/ready", timeout=1)[0] == 200:
                    break
            if "routes file not applied" in children.log_tail(gw.name) or time.monotonic() > deadline:
                raise StartError(
                    f"{gw.name} did not become ready (routes refused, or 60 s passed):\n"
                    + children.log_tail(gw.name)
                )
            time.sleep(0.1)
        wait_port(gw.port, timeout=10)
    return gateways


# --- the client ---------------------------------------------------------------------------------------


class ProtocolError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One response: (status, does the server close the connection?)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ProtocolError(f"not an HTTP/1.1 response: {head[:40]!r}")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        await reader.readexactly(int(lower[at + 17 : lower.index(b"\r\n", at + 2)]))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            await reader.readexactly(size + 2)
    elif status not in (204, 304):
        raise ProtocolError("a response without a length")
    return status, b"\r\nconnection: close" in lower


class Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


class Pool:
    """Keep-alive connections to one replica: idle ones, at most ``cap`` open, waiters beyond."""

    def __init__(self, port: int, cap: int) -> None:
        self.port = port
        self.cap = cap
        self.idle: deque[Conn] = deque()
        self.open = 0
        self.opened = 0
        self.waited = 0
        self.waiters: deque[asyncio.Future[Conn | None]] = deque()

    async def acquire(self) -> Conn:
        while True:
            if self.idle:
                return self.idle.pop()
            if self.open < self.cap:
                self.open += 1
                self.opened += 1
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except BaseException:
                    self.open -= 1
                    raise
                writer.transport.set_write_buffer_limits(high=1 << 20)
                return Conn(reader, writer)
            self.waited += 1
            waiter: asyncio.Future[Conn | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            conn = await waiter
            if conn is not None:
                return conn  # None: a connection was discarded, there is room to open one

    def release(self, conn: Conn) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def discard(self, conn: Conn) -> None:
        self.open -= 1
        conn.writer.close()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        while self.idle:
            self.discard(self.idle.pop())


@dataclass
class Run:
    """What one schedule produced; times are time.monotonic() seconds."""

    n: int
    due: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)  # 0: no answer (yet); -1: an error
    errors: Counter[str] = field(default_factory=Counter)
    cpu: float = 0.0  # the client's CPU seconds during the schedule
    before: Any = None  # what offer's ``before()`` returned (the replicas' Redis counters)
    pools: list[Pool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.due = [0.0] * self.n
        self.sent = [0.0] * self.n
        self.done = [0.0] * self.n
        self.status = [0] * self.n


async def exchange(pool: Pool, conn: Conn | None, request: bytes) -> tuple[int, float]:
    """Send ``request`` (already written when ``conn`` is given) and read the answer; (status, sent at)."""
    sent = time.monotonic()
    if conn is None:
        conn = await pool.acquire()
        conn.writer.write(request)
        sent = time.monotonic()
    try:
        status, closing = await read_response(conn.reader)
    except BaseException:
        pool.discard(conn)
        raise
    if closing:
        pool.discard(conn)
    else:
        pool.release(conn)
    return status, sent


async def warm_up(pools: list[Pool]) -> None:
    """Open WARM_CONNS connections per replica and send a few /warm requests on each (this also opens the
    replica's upstream connections and, in the Global scope, its Redis connections)."""

    async def one(pool: Pool) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", pool.port)
        conn = Conn(reader, writer)
        for _ in range(5):
            writer.write(WARM)
            status, _ = await read_response(reader)
            if status != 200:
                raise StartError(f"warm-up request to port {pool.port} answered {status}")
        return conn

    for pool in pools:
        conns = await asyncio.gather(*(one(pool) for _ in range(WARM_CONNS)))
        pool.open += len(conns)
        pool.opened += len(conns)
        pool.idle.extend(conns)


async def offer(ports: list[int], rate: float, seconds: float, before: Callable[[], Any]) -> Run:
    """Send ``rate x seconds`` requests to /limited at ``rate`` per second, round-robin over ``ports``;
    ``before()`` is called between the warm-up and the schedule (its result is ``Run.before``)."""
    pools = [Pool(port, MAX_CONNS) for port in ports]
    await warm_up(pools)
    await asyncio.sleep(0.5)
    n = round(rate * seconds)
    run = Run(n, pools=pools)
    run.before = before()  # blocking, on purpose: nothing else is going on
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, pool: Pool, conn: Conn | None) -> None:
        try:
            status, sent = await exchange(pool, conn, LIMITED)
            run.status[i] = status
            if conn is None:
                run.sent[i] = sent
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError) as exc:
            run.status[i] = -1
            run.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
        run.done[i] = time.monotonic()

    interval = 1.0 / rate
    cpu = time.process_time()
    t0 = time.monotonic() + 0.02
    for i in range(n):
        due = t0 + i * interval
        run.due[i] = due
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pool = pools[i % len(pools)]
        conn = pool.idle.pop() if pool.idle else None
        if conn is not None:  # the common case: written now, not when the task first runs
            conn.writer.write(LIMITED)
        run.sent[i] = time.monotonic()
        task = asyncio.create_task(one(i, pool, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    run.cpu = time.process_time() - cpu
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=DRAIN)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)
    for pool in pools:
        pool.close()
    return run


def run_client(ports: list[int], rate: float, seconds: float, before: Callable[[], Any]) -> Run:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(offer(ports, rate, seconds, before))
    return asyncio.run(offer(ports, rate, seconds, before))


# --- one scenario -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def rate_limited_total(admin: int) -> int | None:
    """The replica's ``kubegate_rate_limited`` counter of the /limited route (None if unreadable)."""
    try:
        _, text = admin_get(admin, "/metrics")
    except OSError:
        return None
    total = 0.0
    for line in text.decode(errors="replace").splitlines():
        name, _, rest = line.partition("{")
        if name in ("kubegate_rate_limited", "kubegate_rate_limited_total") and "/limited" in rest:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


@dataclass
class Outcome:
    scope: str
    replicas: int
    rate: float
    burst: int
    seconds: float
    factor: float
    tolerance: float
    run: Run
    redis: list[dict[str, Any]]
    refused_by_gateways: int | None
    fallback: str

    @property
    def ideal(self) -> int:
        return math.ceil(self.rate * self.seconds - 1e-9) + self.burst

    @property
    def admitted(self) -> int:
        return sum(1 for s in self.run.status if s == 200)

    @property
    def refused(self) -> int:
        return sum(1 for s in self.run.status if s == 429)

    @property
    def error_pct(self) -> float:
        return (self.admitted - self.ideal) / self.ideal * 100

    @property
    def span(self) -> float:
        """Seconds from the first send to one interval after the last: the window the load covered."""
        return self.run.sent[-1] - self.run.sent[0] + 1 / (self.rate * self.factor)

    @property
    def achieved(self) -> float:
        return self.run.n / self.span

    def report(self) -> list[str]:
        run = self.run
        late = [(s - d) * 1000 for s, d in zip(run.sent, run.due, strict=True)]
        gaps = [(b - a) * 1000 for a, b in zip(run.sent, run.sent[1:], strict=False)]
        latency = [(d - s) * 1000 for s, d, st in zip(run.sent, run.done, run.status, strict=True) if st > 0]
        other = Counter(s for s in run.status if s not in (200, 429, 0, -1))
        unanswered = sum(1 for s in run.status if s == 0)
        target = self.rate * self.factor
        late_ms = " / ".join(f"{percentile(late, q):.2f}" for q in (50, 99, 100))
        latency_ms = " / ".join(f"{percentile(latency, q):.2f}" for q in (50, 99, 100))
        lines = [
            f"== {self.scope}: {self.replicas} replica(s), R {self.rate:g}/s, burst {self.burst}, "
            f"{self.seconds:g} s, offered {self.factor:g}x = {target:g}/s",
            f"   sent {run.n} over {self.span:.3f} s: achieved {self.achieved:.1f}/s "
            f"({self.achieved / target * 100:.1f}% of the target)",
            f"   sends late by p50 / p99 / max {late_ms} ms; largest gap between two sends "
            f"{max(gaps, default=0):.2f} ms; client CPU {run.cpu / self.seconds * 100:.0f}% of a core",
            f"   connections opened per replica {[p.opened for p in run.pools]}, requests that waited "
            f"for one {sum(p.waited for p in run.pools)}; latency p50 / p99 / max {latency_ms} ms",
            f"   admitted (200) {self.admitted}, refused (429) {self.refused}, other statuses "
            f"{dict(other) or 0}, errors {sum(run.errors.values())}, unanswered {unanswered}; "
            f"429s counted by the replicas {self.refused_by_gateways}",
        ]
        for reason, count in run.errors.most_common(10):
            lines.append(f"   error: {count} x {reason}")
        # Admitted per second of the schedule (by send time): the burst, then R per second.
        per_second = Counter(
            int((s - run.sent[0]) // 1) for s, st in zip(run.sent, run.status, strict=True) if st == 200
        )
        lines.append(
            "   admitted per second of the schedule: "
            + " ".join(str(per_second[k]) for k in sorted(per_second))
        )
        ideal_span = math.ceil(self.rate * self.span - 1e-9) + self.burst
        lines.append(
            f"   ideal ceil(R x T) + B = {self.ideal} (for the span the sends actually covered: "
            f"{ideal_span}); admitted - ideal = {self.admitted - self.ideal:+d} ({self.error_pct:+.2f}%)"
        )
        if self.fallback:
            lines.append(f"   {self.fallback}")
        before = run.before or [{} for _ in self.redis]
        for n, (start, end) in enumerate(zip(before, self.redis, strict=True)):
            if not end:
                continue
            # Every request of the schedule reaches the limiter; the ones Redis did not answer were decided
            # by the local fallback (budget expired, or not even sent while the backend backed off).
            checks = sum(1 for i in range(run.n) if i % len(self.redis) == n)
            delta = {k: v - start.get(k, 0) for k, v in end.items() if isinstance(v, int)}
            lines.append(
                f"   replica {n}: during the schedule {checks} checks, "
                f"{checks - delta.get('answered', 0)} not answered by Redis (local fallback), "
                f"timeouts {delta.get('timeouts', '?')}, up->down {delta.get('transitions', '?')}; "
                f"before it (warm-up): timeouts {start.get('timeouts', '?')}, "
                f"not answered {WARM_CONNS * 5 - start.get('answered', 0)}"
            )
            lines.append(f"     /health redis at the end: {json.dumps(end, separators=(',', ':'))}")
        if self.achieved < 0.97 * target or max(gaps, default=0) / 1000 >= (self.burst + 1) / self.rate:
            lines.append(
                "   !! the client did not keep up with the schedule on this machine: the limiter was not "
                "flooded as the promise assumes, so this figure does not test it"
            )
        return lines

    @property
    def verdict(self) -> str:
        return "within" if abs(self.error_pct) <= self.tolerance * 100 else "OUTSIDE"


def redis_status(gateways: list[Gateway]) -> list[dict[str, Any]]:
    """Each replica's ``/health`` "redis" object (empty without Redis, or when unreadable)."""
    status = []
    for gw in gateways:
        try:
            health = json.loads(admin_get(gw.admin, "/health")[1])
        except (OSError, ValueError):
            health = {}
        status.append(health.get("redis", {}) if isinstance(health, dict) else {})
    return status


def scenario(
    children: Children,
    upstream: int,
    *,
    scope: str,
    replicas: int,
    rate: float,
    burst: int,
    seconds: float,
    factor: float,
    tolerance: float,
    tell: bool,
) -> Outcome:
    redis_url = None
    if scope == "Global":
        redis_url = f"redis://127.0.0.1:{start_redis(children)}/0"
    routes = children.directory / f"routes-{scope.lower()}.yaml"
    routes.write_text(routes_yaml(upstream, rate, burst, scope))
    token_file = children.directory / "push-token"
    token_file.write_text(TOKEN)
    gateways = start_gateways(children, routes, replicas, redis_url, scope.lower(), token_file)
    fallback = ""
    if scope == "Global":
        fallback = tell_replicas(gateways, TOKEN) if tell else "replica count not set: fallback at full rate"
    run = run_client([gw.port for gw in gateways], rate * factor, seconds, lambda: redis_status(gateways))
    redis = redis_status(gateways)
    refused: int | None = 0
    for gw in gateways:
        count = rate_limited_total(gw.admin)
        refused = None if count is None or refused is None else refused + count
    return Outcome(scope, replicas, rate, burst, seconds, factor, tolerance, run, redis, refused, fallback)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the offered load (10)")
    ap.add_argument("--rate", type=float, default=200.0, help="requestsPerSecond of the limit (200)")
    ap.add_argument("--burst", type=int, default=100, help="burst of the limit (100)")
    ap.add_argument("--replicas", type=int, default=3, help="data-plane replicas of the Global scenario (3)")
    ap.add_argument("--factor", type=float, default=3.0, help="offered load as a multiple of the rate (3)")
    ap.add_argument("--only", choices=["Global", "Local"], help="run one scenario only")
    ap.add_argument(
        "--no-replica-count",
        action="store_true",
        help="do not tell the replicas how many they are (PUT /replicas, as the operator does): a Global "
        "limit then falls back to its full rate, not R/replicas, while Redis does not answer",
    )
    ap.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    if args.seconds <= 0 or args.rate <= 0 or args.burst < 0 or args.replicas < 1 or args.factor <= 1:
        ap.error("--seconds, --rate and --replicas must be positive, --burst >= 0, --factor > 1")

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    outcomes: list[Outcome] = []
    plan = [("Global", args.replicas, 0.02), ("Local", 1, 0.01)]
    with tempfile.TemporaryDirectory(prefix="kubegate-rl-") as tmp:
        children = Children(Path(tmp))
        try:
            upstream = start_upstream(children)
            for scope, replicas, tolerance in plan:
                if args.only and scope != args.only:
                    continue
                outcome = scenario(
                    children, upstream, scope=scope, replicas=replicas, rate=args.rate, burst=args.burst,
                    seconds=args.seconds, factor=args.factor, tolerance=tolerance,
                    tell=not args.no_replica_count,
                )  # fmt: skip
                print("\n".join(outcome.report()), flush=True)
                outcomes.append(outcome)
                children.stop(keep=frozenset({"upstream"}))  # the next scenario starts from nothing
        except StartError as exc:
            print(f"failed to start: {exc}", file=sys.stderr)
            return 1
        finally:
            children.stop()
    print()
    print("| scope | replicas | offered/s (target) | sent | admitted | ideal | error | tolerance | verdict |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for o in outcomes:
        offered = f"{o.achieved:.1f} ({o.rate * o.factor:g})"
        print(
            f"| {o.scope} | {o.replicas} | {offered} | {o.run.n} | {o.admitted} | {o.ideal} "
            f"| {o.error_pct:+.2f}% | ±{o.tolerance * 100:g}% | {o.verdict} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
