"""The Global rate-limit scope: GCRA evaluated atomically in Redis, shared by every data-plane replica.

A limit enforced by each replica alone admits ``replicas`` times the limit; the Global scope keeps one bucket
per key in Redis instead. Each check is one server-side Lua script (:data:`GCRA_SCRIPT`, sent by
``EVALSHA``; ``EVAL`` once after a ``NOSCRIPT``, which caches it again) that reads the key's TAT, decides,
writes the new TAT with a TTL equal to the time until the bucket is full again (a full bucket needs no
key, so idle clients cost Redis nothing) and answers ``{allowed, remaining, retry_after µs, reset µs}``.
It reads the time with ``TIME`` inside the script: all replicas share Redis's clock, their own clocks do
not matter, and with effects replication (the default since Redis 5, the only mode since 7) a replica
of Redis applies the resulting ``SET`` rather than re-running ``TIME``. The algorithm and the meaning of
``rate``/``burst``/:class:`~kubegate.dataplane.policies.ratelimit.Decision` are those of
:mod:`kubegate.dataplane.policies.ratelimit`, in microseconds.

**Batching**: redis-py's asyncio client sends one command per connection at a time, so checks that
arrive in the same turn of the event loop are sent together as one pipeline (one round trip, one write,
one read for all of them); at most ``max_in_flight`` pipelines are in flight, later checks wait in the
next batch (which then grows: more load, bigger batches, not more connections).

**Outages** (:class:`RedisBackend`, shared by every route that uses the same Redis): every check gets an
answer within ``budget`` seconds (default 50 ms) from when its batch was opened: the Redis decision, or
:data:`NO_REPLY` when Redis failed, refused or did not answer in time (a timer settles the batch; the stuck
request is cancelled in the background). The first failure turns the backend *down*: checks are then not
sent at all (NO_REPLY at once, counted as ``skipped``) for a backoff that starts at :data:`BACKOFF_FIRST`
seconds and doubles up to :data:`BACKOFF_MAX`; after it the next check is a *probe* (the others keep being
skipped until it returns): its success turns the backend *up* again, its failure doubles the backoff. A
restarted Redis is therefore used again within the current backoff, with no reconnection logic of our own (the
connection pool replaces dead connections when one is taken). Up → down and down → up are logged once
each (logger ``kubegate.redis``), never per request. A reply that is an error for some checks of a batch
(and not all) fails only those, without changing the state. A check that timed out may still have been
counted by Redis (the script ran, the answer came late): under a slow Redis the shared bucket drains a
little faster than the decisions the callers saw, never slower.

The backend sends any command (:meth:`RedisBackend.command`), not only the script: the response cache
(:mod:`kubegate.dataplane.caching`) sends its ``GET``, ``SET`` and fill-lock scripts (registered with
:meth:`RedisBackend.script`, which ``NOSCRIPT`` then sends again) through the same backend, so that one
outage is noticed, backed off and logged once for both.

What to do without a decision is the caller's: :class:`GlobalLimit` is the one-call wiring of the
proxy (Redis first, a local :class:`~kubegate.dataplane.policies.ratelimit.Gcra` at ``rate / replicas``
when Redis gives no answer). :func:`connect` makes a client with timeouts that suit this: no retries
(the backoff is ours), socket timeouts of the budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio
import redis.exceptions
from mypy_extensions import mypyc_attr
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kubegate.dataplane.policies.ratelimit import Decision, Gcra, Key, compact_key, validate

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "BUDGET",
    "GCRA_SCRIPT",
    "KEY_PREFIX",
    "NO_REPLY",
    "GlobalLimit",
    "RedisBackend",
    "RedisLimiter",
    "connect",
]

logger = logging.getLogger("kubegate.redis")

#: Seconds a check may wait for Redis before it falls back.
BUDGET = 0.05
#: Seconds Redis is skipped after the first failure; doubled after each failed probe, up to BACKOFF_MAX.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
#: Pipelines in flight at once per backend.
MAX_IN_FLIGHT = 4
#: Default prefix of the bucket keys in Redis.
KEY_PREFIX = "kubegate:rl:"

UP = "up"
DOWN = "down"
PROBING = "probing"

#: KEYS[1]: the bucket. ARGV[1]: emission interval 1/R, ARGV[2]: tolerance tau = B/R (microseconds).
#: Reply: {allowed 0|1, remaining, retry_after, reset} (integers; times in microseconds, rounded up).
GCRA_SCRIPT = """\
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local ahead = tat - now
if ahead > tau + 1 then
  return {0, 0, math.ceil(ahead - tau), math.ceil(ahead)}
end
tat = tat + interval
ahead = tat - now
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil(ahead / 1000))
return {1, math.floor((tau - ahead) / interval + 0.000001) + 1, 0, math.ceil(ahead)}
"""

Reply = Any  # a command's reply, or NO_REPLY when Redis gave none
Done = Callable[[Reply], None]
Command = tuple[Any, ...]  # a Redis command and its arguments, as ``execute_command`` takes them


class _NoReply:
    """What a command's callback gets when Redis gave no usable answer (down, slow, an error). Distinct
    from None, which is a reply of its own (``GET`` of a missing key)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_REPLY"

    def __bool__(self) -> bool:
        return False


NO_REPLY: Any = _NoReply()


def connect(
    url: str, *, budget: float = BUDGET, max_connections: int = 16, **options: Any
) -> redis.asyncio.Redis:
    """A redis.asyncio client for ``url`` (``redis://``, ``rediss://``, ``unix://``) set up for the hot
    path: connect and socket timeouts of ``budget``, no retries (a failure is reported at once; the
    backoff is :class:`RedisBackend`'s), a PING before reusing a connection idle for 30 s, no
    ``CLIENT MAINT_NOTIFICATIONS`` handshake on connect (a managed-cloud feature; Redis 7 refuses it).
    ``options`` override or add ``Redis.from_url`` arguments."""
    settings: dict[str, Any] = {
        "socket_connect_timeout": budget,
        "socket_timeout": budget,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "max_connections": max_connections,
        "client_name": "kubegate",
        "decode_responses": False,
    }
    try:  # redis-py >= 6.4 would send CLIENT MAINT_NOTIFICATIONS on every connect (a cloud-only feature)
        from redis.maint_notifications import MaintNotificationsConfig

        settings["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    except ImportError:
        pass
    settings.update(options)
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url, **settings)
    return client


class _Batch:
    """Commands sent as one pipeline; settled exactly once (replies, failure or the budget's timer)."""

    __slots__ = ("items", "probe", "settled", "task", "timer")

    def __init__(self, probe: bool) -> None:
        self.items: list[tuple[Command, Done]] = []
        self.probe = probe
        self.settled = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled; the tests' fake backend subclasses it
class RedisBackend:
    """One Redis as seen by the limiters that use it: batching, the budget, the backoff, the counters.

    ``state`` is ``"up"``, ``"down"`` (skipping Redis until the backoff ends) or ``"probing"``. Counters,
    in checks: ``calls``; ``answered`` (a reply came); ``failures`` (sent, no usable reply: an error, a
    broken connection or the budget), of which ``timeouts``; ``skipped`` (not sent: down or probing).
    ``batches`` counts pipelines sent, ``transitions`` up → down changes. ``clock`` (monotonic seconds)
    drives the backoff.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        budget: float = BUDGET,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.budget = budget
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.max_in_flight = max_in_flight
        self._clock = clock
        #: Lua scripts that commands call by ``EVALSHA``, by SHA1 (:meth:`script`): the GCRA's, the cache's.
        self.scripts: dict[str, str] = {}
        self.sha = self.script(GCRA_SCRIPT)
        self.state = UP
        self.backoff = 0.0
        self.retry_at = 0.0
        self.down_since: float | None = None
        self.last_error: str | None = None
        self._open: _Batch | None = None
        self._flush_scheduled = False
        self._in_flight: set[_Batch] = set()
        self.calls = 0
        self.answered = 0
        self.failures = 0
        self.timeouts = 0
        self.skipped = 0
        self.batches = 0
        self.transitions = 0

    @property
    def skipping(self) -> bool:
        """Would a check be skipped now (down within the backoff, or a probe in flight)?"""
        return self.state == PROBING or (self.state == DOWN and self._clock() < self.retry_at)

    def script(self, source: str) -> str:
        """Register a Lua script for ``EVALSHA`` commands; returns its SHA1. A ``NOSCRIPT`` reply (a restarted
        or flushed Redis) to an ``EVALSHA`` of a registered script is answered by sending it with ``EVAL``
        once, which caches it again."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self.scripts[sha] = source
        return sha

    def evaluate(self, key: bytes, argv: Sequence[bytes], done: Done) -> None:
        """Run the GCRA script for ``key``; ``done(reply or NO_REPLY)`` is called once, later, from the
        loop."""
        self.command((b"EVALSHA", self.sha, 1, key, *argv), done)

    def command(self, command: Command, done: Done) -> None:
        """Send ``command`` in the next pipeline (the rate limits' script, the cache's ``GET`` and
        ``SET``: one backend, one budget, one backoff for all of them); ``done(reply or NO_REPLY)`` is
        called once, later, from the loop, within the budget."""
        loop = asyncio.get_running_loop()
        self.calls += 1
        state = self.state
        probe = False
        if state != UP:
            if state == PROBING or self._clock() < self.retry_at:
                self.skipped += 1
                loop.call_soon(done, NO_REPLY)
                return
            self.state = PROBING
            probe = True
        batch = self._open
        if batch is None or probe:
            if batch is not None:  # cannot happen (going down settles it), but never strand checks
                self._settle(batch, None)
            batch = self._open = _Batch(probe)
            batch.timer = loop.call_later(self.budget, self._expire, batch)
        batch.items.append((command, done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch = self._open
        if batch is None or len(self._in_flight) >= self.max_in_flight:
            return  # sent when a pipeline in flight returns (or settled by its timer)
        self._open = None
        if self.state != UP and not batch.probe:
            self.skipped += len(batch.items)
            self._settle(batch, None)
            return
        self._in_flight.add(batch)
        self.batches += 1
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: _Batch) -> None:
        try:
            replies = await self._execute(batch.items)
        except asyncio.CancelledError:
            raise  # the budget's timer (or close) settled the batch already
        except Exception as exc:  # redis errors, OSError, a pool at its limit: all mean "no answer"
            if not batch.settled:
                self.failures += len(batch.items)
                self._settle(batch, None)
                self._went_wrong(batch, _describe(exc))
        else:
            if not batch.settled:
                self._replied(batch, replies)
        finally:
            self._in_flight.discard(batch)
            if self._open is not None and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _execute(self, items: list[tuple[Command, Done]]) -> list[Any]:
        replies = await self._round_trip([command for command, _ in items])
        scripts = self.scripts
        missing = [
            i
            for i, reply in enumerate(replies)
            if isinstance(reply, redis.exceptions.NoScriptError) and items[i][0][1] in scripts
        ]
        if missing:  # a restarted or flushed Redis: EVAL sends the script along and caches it again
            again = await self._round_trip(
                [(b"EVAL", scripts[items[i][0][1]], *items[i][0][2:]) for i in missing]
            )
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _round_trip(self, commands: list[Command]) -> list[Any]:
        """Send ``commands`` in one write on a pooled connection and read their replies (an error reply
        is that command's reply, as an exception object). The commands are encoded here (:func:`pack`)
        rather than through redis-py's ``Pipeline``, which costs about twice the client CPU per command
        (``bench/redis_client_bench.py``); the connection, its handshake (AUTH, SELECT, TLS) and the pool
        stay redis-py's. A connection that failed or was cancelled mid-way is dropped, never reused."""
        pool = self.client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # (redis-py's own typing)
        try:
            await conn.send_packed_command(b"".join(map(pack, commands)), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except redis.exceptions.ResponseError as error:  # that command's own error
                    replies.append(error)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
        return replies

    def _replied(self, batch: _Batch, replies: list[Any]) -> None:
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if errors and len(errors) == len(replies):
            self.failures += len(replies)
            self._settle(batch, None)
            self._went_wrong(batch, _describe(errors[0]))
            return
        self.answered += len(replies) - len(errors)
        self.failures += len(errors)
        if errors:
            self.last_error = _describe(errors[0])
        self._settle(batch, replies)
        if batch.probe:
            self._went_up()

    def _expire(self, batch: _Batch) -> None:
        """The budget's timer: whatever has not been answered falls back now."""
        if batch.settled:
            return
        if batch is self._open:
            self._open = None
        self.failures += len(batch.items)
        self.timeouts += len(batch.items)
        self._settle(batch, None)
        if batch.task is not None:
            batch.task.cancel()
        self._went_wrong(batch, f"no answer within {self.budget * 1000:g} ms")

    def _settle(self, batch: _Batch, replies: list[Any] | None) -> None:
        batch.settled = True
        if batch.timer is not None:
            batch.timer.cancel()
        for i, (_, done) in enumerate(batch.items):
            reply = NO_REPLY if replies is None or isinstance(replies[i], Exception) else replies[i]
            try:
                done(reply)
            except Exception:  # a caller's bug must not strand the rest of the batch
                logger.exception("redis callback failed")

    def _went_wrong(self, batch: _Batch, reason: str) -> None:
        self.last_error = reason
        now = self._clock()
        if self.state == UP:
            self.state = DOWN
            self.transitions += 1
            self.down_since = now
            self.backoff = self.backoff_first
            self.retry_at = now + self.backoff
            logger.warning(
                "redis unavailable (%s): global rate limits fall back to local limits, shared caches"
                " are bypassed; retrying in %gs",
                reason,
                self.backoff,
            )
            if self._open is not None:
                pending, self._open = self._open, None
                self.skipped += len(pending.items)
                self._settle(pending, None)
        elif batch.probe and self.state == PROBING:
            self.state = DOWN
            self.backoff = min(self.backoff * 2, self.backoff_max)
            self.retry_at = now + self.backoff
            logger.debug("redis still unavailable (%s): retrying in %gs", reason, self.backoff)
        # Otherwise a batch sent before going down failed late: nothing new to learn.

    def _went_up(self) -> None:
        if self.state == UP:
            return
        down_for = self._clock() - (self.down_since or 0.0)
        self.state = UP
        self.backoff = 0.0
        self.down_since = None
        self.last_error = None
        logger.warning(
            "redis available again after %.1fs: global rate limits and shared caches restored", down_for
        )

    def close(self) -> None:
        """Settle every pending check with None and cancel the pipelines in flight (not the client)."""
        if self._open is not None:
            pending, self._open = self._open, None
            self._settle(pending, None)
        for batch in list(self._in_flight):
            if not batch.settled:
                self._settle(batch, None)
            if batch.task is not None:
                batch.task.cancel()

    def status(self) -> dict[str, Any]:
        """For ``/health`` and the admin view: the state, why, since when, and the counters."""
        detail: dict[str, Any] = {"state": self.state}
        if self.state != UP:
            now = self._clock()
            detail["downSeconds"] = round(now - (self.down_since or now), 3)
            detail["retryInSeconds"] = round(max(0.0, self.retry_at - now), 3)
            detail["lastError"] = self.last_error
        detail.update(
            calls=self.calls,
            answered=self.answered,
            failures=self.failures,
            timeouts=self.timeouts,
            skipped=self.skipped,
            batches=self.batches,
            transitions=self.transitions,
        )
        return detail

    def __repr__(self) -> str:
        return (
            f"<RedisBackend {self.state} calls={self.calls} answered={self.answered}"
            f" failures={self.failures} skipped={self.skipped} in_flight={len(self._in_flight)}>"
        )


def pack(command: Command) -> bytes:
    """One command in RESP (an array of bulk strings): bytes as they are, str in UTF-8, numbers as text."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedisLimiter:
    """GCRA at ``rate``/``burst`` with buckets in Redis under ``key_prefix`` (see the module docstring).

    ``backend`` is shared by every limiter of one Redis (so that an outage is noticed, backed off and
    logged once); without one, the limiter makes its own with ``budget``. Counters: ``calls``,
    ``fallbacks`` (checks answered None).
    """

    __slots__ = ("_argv", "_prefix", "backend", "burst", "calls", "fallbacks", "rate")

    def __init__(
        self,
        client: redis.asyncio.Redis,
        rate: float,
        burst: int,
        key_prefix: str = KEY_PREFIX,
        *,
        backend: RedisBackend | None = None,
        budget: float = BUDGET,
    ) -> None:
        if backend is not None and backend.client is not client:
            raise ValueError("the backend belongs to another client")
        validate(rate, burst)
        self.backend = backend if backend is not None else RedisBackend(client, budget=budget)
        self.rate = float(rate)
        self.burst = int(burst)
        interval_us = 1e6 / self.rate
        self._argv = (b"%.17g" % interval_us, b"%.17g" % (self.burst * interval_us))
        self._prefix = key_prefix.encode()
        self.calls = 0
        self.fallbacks = 0

    def redis_key(self, key: Key) -> bytes:
        """The Redis key of ``key``'s bucket (long keys are digested, as in the local table)."""
        key = compact_key(key)
        return self._prefix + (key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key)

    @property
    def skipping(self) -> bool:
        """Would a check be answered None at once (Redis down, within its backoff)?"""
        return self.backend.skipping

    def check_cb(self, key: Key, callback: Callable[[Decision | None], None]) -> None:
        """Check ``key``; ``callback(decision or None)`` is called once, later, from the running loop,
        within the budget. None: Redis could not answer (down, slow, skipped); the caller falls back."""
        self.calls += 1

        def done(reply: Reply) -> None:
            decision = _decision(reply)
            if decision is None:
                self.fallbacks += 1
            callback(decision)

        self.backend.evaluate(self.redis_key(key), self._argv, done)

    async def check(self, key: Key) -> Decision | None:
        """:meth:`check_cb` as a coroutine."""
        future: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
        self.check_cb(key, _resolver(future))
        return await future

    def __repr__(self) -> str:
        return (
            f"<RedisLimiter {self.rate:g}/s burst={self.burst} calls={self.calls} fallbacks={self.fallbacks}>"
        )


def _resolver(future: asyncio.Future[Any]) -> Callable[[Any], None]:
    def resolve(value: Any) -> None:
        if not future.done():  # the awaiting task may have been cancelled
            future.set_result(value)

    return resolve


def _decision(reply: Reply) -> Decision | None:
    try:
        allowed, remaining, retry_us, reset_us = reply
        return Decision(allowed == 1, retry_us / 1e6, int(remaining), reset_us / 1e6)
    except (TypeError, ValueError):
        return None


class GlobalLimit:
    """The Global scope as the proxy calls it: Redis first, ``local_fallback`` when Redis gives no answer.

    ``local_fallback`` is a :class:`~kubegate.dataplane.policies.ratelimit.Gcra` at ``rate / replicas``
    (same burst, or its share: the caller's choice), read on ``clock``; the proxy's is a
    :class:`~kubegate.dataplane.policies.ratelimit.ReplicaShare`, which follows the replica count the
    operator sets at run time (resized in place at its next check, its buckets kept). Counters:
    ``calls``, ``fallbacks`` (decisions that came from the local limiter).
    """

    __slots__ = ("calls", "clock", "fallbacks", "local", "redis")

    def __init__(
        self,
        redis_limiter: RedisLimiter,
        local_fallback: Gcra,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis_limiter
        self.local = local_fallback
        self.clock = clock
        self.calls = 0
        self.fallbacks = 0

    def decide(self, key: Key, resume: Callable[[Decision], None]) -> Decision | None:
        """The :class:`~kubegate.dataplane.policies.ratelimit.Limiter` shape: while Redis is skipped
        (down, within its backoff) the local decision at once; otherwise None, and ``resume(decision)``
        is called once, later (within the budget), with Redis's decision or the local one."""
        if self.redis.skipping:
            self.calls += 1
            self.fallbacks += 1
            return self.local.check(key, self.clock())
        self.check_cb(key, resume)
        return None

    def check_cb(self, key: Key, callback: Callable[[Decision], None]) -> None:
        """``callback(decision)`` once, later, from the loop: Redis's, or the local fallback's."""
        self.calls += 1

        def done(decision: Decision | None) -> None:
            if decision is None:
                self.fallbacks += 1
                decision = self.local.check(key, self.clock())
            callback(decision)

        self.redis.check_cb(key, done)

    async def check(self, key: Key) -> Decision:
        """:meth:`check_cb` as a coroutine."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self.check_cb(key, _resolver(future))
        return await future

    def __repr__(self) -> str:
        return f"<GlobalLimit calls={self.calls} fallbacks={self.fallbacks} {self.redis!r} {self.local!r}>"
