"""What one Global rate-limit check costs the gateway's CPU on the Redis client side (issue 11).

Not a test: it prints figures and asserts nothing. ``python bench/redis_client_bench.py [-n N]``.

It starts a ``redis-server`` (no persistence) pinned to core 0, and on this process (pin it elsewhere with
``taskset -c 1``) sends N GCRA checks (``EVALSHA`` of :data:`kubegate.dataplane.redislimit.GCRA_SCRIPT`)
in batches of 64, the way :class:`~kubegate.dataplane.redislimit.RedisBackend` sends the checks of one
loop turn, and reports this process's CPU time per check (``time.process_time``), for:

- ``pipeline``: redis-py's ``Pipeline`` (what the backend uses), with the pure-Python reply parser and
  with hiredis;
- ``prepacked``: the commands encoded by hand into one RESP buffer and sent on a pooled redis-py
  connection, replies read with ``read_response`` (hiredis): what a leaner client path would cost.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from typing import Any

from benchlib import free_port, wait_port
from redis.asyncio.connection import _AsyncHiredisParser, _AsyncRESP2Parser

from kubegate.dataplane import redislimit
from kubegate.dataplane.redislimit import GCRA_SCRIPT

BATCH = 64


def _pack(command: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def measure(url: str, parser: Any, mode: str, n: int) -> float:
    client = redislimit.connect(url, budget=5.0, parser_class=parser)
    await client.script_load(GCRA_SCRIPT)
    sha = client.register_script(GCRA_SCRIPT).sha
    commands = [(b"EVALSHA", sha, 1, b"kubegate:rl:bench", b"1", b"1000000")] * BATCH
    packed = b"".join(_pack(c) for c in commands)
    start = time.process_time()
    for _ in range(n // BATCH):
        if mode == "pipeline":
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            await pipe.execute(raise_on_error=False)
        else:
            pool = client.connection_pool
            conn = await pool.get_connection()
            try:
                await conn.send_packed_command(packed, check_health=False)
                for _ in commands:
                    await conn.read_response()
            finally:
                await pool.release(conn)
    cpu = time.process_time() - start
    await client.aclose()
    return cpu / (n // BATCH * BATCH) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20000, help="checks per measurement (20000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the best of them is reported (3)")
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
        server = subprocess.Popen(
            ["taskset", "-c", "0", "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(port)
            url = f"redis://127.0.0.1:{port}/0"
            cases = [
                ("pipeline, Python parser", _AsyncRESP2Parser, "pipeline"),
                ("pipeline, hiredis", _AsyncHiredisParser, "pipeline"),
                ("prepacked, hiredis", _AsyncHiredisParser, "prepacked"),
            ]
            best: dict[str, float] = {}
            for _ in range(args.rounds):
                for label, parser, mode in cases:
                    figure = asyncio.run(measure(url, parser, mode, args.n))
                    best[label] = min(best.get(label, figure), figure)
            for label, _, _ in cases:
                print(f"{label:28s} {best[label]:7.2f} µs of client CPU per check (best of {args.rounds})")
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
