"""The operator's pipeline, end to end: state → (debounced) compile → publish → status and bootstrap.

Event handlers only update :class:`~kubegate_operator.state.ClusterState` and poke the trigger; this
module's loops do the rest:

- the *compile loop* starts once the view is complete (:meth:`Reconciler.prime`: every object listed at
  start-up has come through kopf), then waits for a debounced burst, compiles the whole state with the
  pure compiler (keeping each condition's ``lastTransitionTime`` via the previous statuses) and hands
  the table to the publisher. The table version is derived from its content hash, so equal inputs give
  an equal version (an operator restart or a fail-over re-pushes nothing);
- the *status loop* wakes whenever a compile or an acknowledgement changes something, builds every
  route's status (compiler conditions + ``Programmed``) and writes those that differ (and removes the
  statuses it wrote on routes that have moved to another gateway class). While a new table
  is being pushed it first waits for the pushes to end (acknowledged, or failed: an unreachable replica
  is not waited for; at most ``STATUS_SETTLE``), so that a route gets one write saying "Programmed 3/3"
  rather than a "Pending 0/3" overwritten a moment later (at the initial sync of 10,000 routes: 10,000
  patches instead of 20,000);
- the *bootstrap loop* stores each new table in the bootstrap Secret;
- the publisher's *resync loop* checks what every replica serves;
- a *Secret read* per Secret that a route starts to name after the watch event of that Secret was
  dropped (see :mod:`kubegate_operator.state`): retried with backoff while still wanted; a compile
  waits for the first try of the reads under way (at most ``FETCH_WAIT``), so that a new route is not
  first published with ``SecretNotFound`` (and a read that keeps failing, say for lack of RBAC, does
  not hold back every compile).

Only the leader publishes and writes (see :mod:`kubegate_operator.leader`); a standby compiles too, so
that it takes over with a warm table.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

from kubegate import malloc
from kubegate.api import models
from kubegate.compiler import compile as compiler
from kubegate.compiler import table as tables
from kubegate_operator import bootstrap, debounce, publisher, state, status
from kubegate_operator import metrics as metrics_mod

logger = logging.getLogger("kubegate.operator")

BOOTSTRAP_DELAY = 1.0  # seconds between a new table and storing it in the bootstrap Secret
BURST_FACTOR = 4.0  # under a sustained burst, compile at most every BURST_FACTOR x the last compile time
STATUS_SETTLE = 10.0  # at most this long, the status loop waits for the pushes of a new table to end
FETCH_WAIT = 5.0  # at most this long, a compile waits for the Secret reads under way
FETCH_BACKOFF = (0.5, 30.0)  # initial and maximum delay between the tries of a failed Secret read

ReadSecret = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]  # (namespace, name) → body or None


def burst_max_delay(configured: float, compile_seconds: float) -> float:
    """The debounce's maximum delay for the next burst: the configured one, or longer when compiling is
    slow, so that a long burst (the initial listing of 10,000 routes) compiles and pushes a few times
    rather than every ``configured`` seconds. A single change still waits only for the hold-off."""
    return max(configured, BURST_FACTOR * compile_seconds)


def table_version(table: tables.RouteTable) -> str:
    return "t-" + table.content_hash().removeprefix("sha256:")[:16]


class Reconciler:
    def __init__(
        self,
        *,
        cluster: state.ClusterState,
        pusher: publisher.Publisher,
        writer: status.StatusWriter | None,
        bootstrapper: bootstrap.BootstrapWriter | None,
        metrics: metrics_mod.Metrics,
        holdoff: float,
        max_delay: float,
        status_settle: float = STATUS_SETTLE,
        clock: Callable[[], float] = time.monotonic,
        read_secret: ReadSecret | None = None,
        fetch_wait: float = FETCH_WAIT,
    ) -> None:
        self.state = cluster
        self.publisher = pusher
        self.writer = writer
        self.bootstrapper = bootstrapper
        self.metrics = metrics
        self.trigger = debounce.Trigger(holdoff=holdoff, max_delay=max_delay, clock=clock)
        self._max_delay = max_delay
        self._clock = clock
        self.result: compiler.CompileResult | None = None
        self._memo = compiler.CompileMemo()  # per-route work reused between compiles (same results)
        # the compiler's status of each route, and its wire form (dumped once per status object)
        self._status_dumps: dict[str, tuple[models.GatewayRouteStatus, dict[str, Any]]] = {}
        # per route: (compiled status, acked, replicas) → the desired status built from them, so that an
        # acknowledgement rebuilds the statuses of the routes it changes, not of all 10,000
        self._desired: dict[str, tuple[dict[str, Any], int, int, dict[str, Any]]] = {}
        self._primed = asyncio.Event()  # the state holds everything that existed at start-up
        self._status_dirty = asyncio.Event()
        self._acked = asyncio.Event()  # set on every acknowledgement change
        self._status_settle = status_settle
        self._bootstrap_dirty = asyncio.Event()
        self._lag: tuple[str, float] | None = None  # (version, first change) awaiting full acknowledgement
        self._tasks: list[asyncio.Task[None]] = []
        self._read_secret = read_secret
        self._fetch_wait = fetch_wait
        # Secret → (ticket, read, set once its first try has ended)
        self._fetches: dict[state.Key, tuple[int, asyncio.Task[None], asyncio.Event]] = {}
        self.active = True
        self.compiles = 0
        self._replicas_seen = -1
        pusher._on_change = self._acks_changed
        if writer is not None:
            cluster.written_status = writer.written

    # --- inputs from the event handlers ----------------------------------------------------------

    def upsert(self, kind: str, body: Mapping[str, Any]) -> None:
        self._after(self.state.upsert(kind, body))

    def delete(self, kind: str, body: Mapping[str, Any]) -> None:
        self._after(self.state.delete(kind, body))

    def prime(self, *, reason: str = "every object listed at start-up has arrived") -> None:
        """Compiling (and so publishing and writing statuses) may start. Before this, a compile would see a
        partial cluster: a restarted operator would push a table of the first 2,000 of 10,000 routes,
        or write ResolvedRefs=False for Services whose EndpointSlices it has not read yet."""
        if not self._primed.is_set():
            logger.info("starting to compile: %s (%r)", reason, self.state)
            self._primed.set()
            self.trigger.poke()

    async def prime_after(self, timeout: float) -> None:
        """Prime once nothing listed at start-up is missing, or after ``timeout`` seconds (an object
        deleted between that listing and kopf's own never arrives)."""
        if self.state.missing == 0:
            self.prime()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._primed.wait(), timeout)
        if not self._primed.is_set():
            self.prime(reason=f"{self.state.missing} listed objects never arrived in {timeout:.0f} s")

    def _after(self, changed: bool) -> None:
        if not self._primed.is_set() and self.state.missing == 0:
            self.prime()
        if self.state.wanted:
            self._fetch_wanted()
        if not changed:
            return
        if self.state.replicas_revision != self._replicas_seen:
            self._replicas_seen = self.state.replicas_revision
            self.publisher.set_replicas(self.state.replicas())
        self.trigger.poke()

    # --- Secrets that a route starts to name --------------------------------------------------------

    def _fetch_wanted(self) -> None:
        if self._read_secret is None:
            return
        for key, ticket in self.state.wanted.items():
            running = self._fetches.get(key)
            if running is not None and running[0] == ticket:
                continue
            if running is not None:
                running[1].cancel()  # wanted again since: its answer would be thrown away
            tried = asyncio.Event()
            task = asyncio.create_task(self._fetch(key, ticket, tried), name=f"read-secret {key[0]}/{key[1]}")
            self._fetches[key] = (ticket, task, tried)
            task.add_done_callback(functools.partial(self._fetch_done, key))

    def _fetch_done(self, key: state.Key, task: asyncio.Task[None]) -> None:
        running = self._fetches.get(key)
        if running is not None and running[1] is task:
            del self._fetches[key]

    async def _fetch(self, key: state.Key, ticket: int, tried: asyncio.Event) -> None:
        assert self._read_secret is not None
        namespace, name = key
        delay, ceiling = FETCH_BACKOFF
        while True:
            try:
                body = await self._read_secret(namespace, name)
            except Exception as error:
                tried.set()
                if self.state.wanted.get(key) != ticket:
                    return
                logger.warning(
                    "cannot read Secret %s/%s, named by a route (%s): retrying in %.1f s",
                    namespace,
                    name,
                    _error_summary(error),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, ceiling)
                continue
            self._after(self.state.fetched(key, ticket, body))
            tried.set()
            return

    async def _await_fetches(self) -> bool:
        """Wait (at most ``fetch_wait``) for the first try of every Secret read under way; True if there
        was one to wait for."""
        waits = [tried.wait() for _, _, tried in self._fetches.values() if not tried.is_set()]
        if not waits:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), self._fetch_wait)
        return True

    def set_active(self, active: bool) -> None:
        """Leadership changed: a leader publishes and writes, a standby only compiles."""
        self.active = active
        self.publisher.set_active(active)
        self.metrics.leader.set(1 if active else 0)
        if active:
            if self._lag is not None:  # a standby's pending batch: count its lag from the take-over
                self._lag = (self._lag[0], max(self._lag[1], self._clock()))
            self.writer_reset()
            self._status_dirty.set()
            self._bootstrap_dirty.set()

    def writer_reset(self) -> None:
        self._desired.clear()
        if self.writer is not None:
            self.writer.written.clear()  # another leader may have written meanwhile: diff against objects

    # --- loops -----------------------------------------------------------------------------------

    def start(self, resync_interval: float) -> None:
        def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
            self._tasks.append(asyncio.create_task(coro, name=name))

        spawn(self._compile_loop(), "compile")
        spawn(self._status_loop(), "status")
        spawn(self._bootstrap_loop(), "bootstrap")
        spawn(self.publisher.resync_forever(resync_interval), "resync")

    async def stop(self) -> None:
        tasks = self._tasks + [task for _, task, _ in self._fetches.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._fetches.clear()
        await self.publisher.close()

    async def _compile_loop(self) -> None:
        await self._primed.wait()
        while True:
            first = await self.trigger.wait()
            if await self._await_fetches():
                # The reads poked the trigger: this compile includes what they brought (and any change
                # that came meanwhile), so their burst is taken along with this one.
                later = self.trigger.debounce.take()
                first = min(first, later) if later is not None else first
            try:
                self.compile_now(first_change=first)
            except Exception:
                logger.exception("compile failed")  # a compiler bug; the served table stays

    def compile_now(self, *, first_change: float | None = None) -> tables.RouteTable:
        started = time.perf_counter()
        previous = self.result.statuses if self.result is not None else self._observed_statuses()
        result = compiler.compile_bundle(
            self.state.bundle(), now=datetime.now(UTC), previous=previous, memo=self._memo
        )
        table = result.table.model_copy(update={"version": table_version(result.table)})
        elapsed = time.perf_counter() - started
        self.metrics.compile_seconds.observe(elapsed)
        self.trigger.debounce.max_delay = burst_max_delay(self._max_delay, elapsed)
        rejected = len(result.rejected())
        self.metrics.routes_rejected.set(rejected)
        self.result = result
        self.compiles += 1
        # Serialise only the statuses that changed (the compiler hands back unchanged ones as is).
        dumps, self._status_dumps = self._status_dumps, {}
        for key, st in result.statuses.items():
            before = dumps.get(key)
            self._status_dumps[key] = before if before is not None and before[0] is st else (st, _dump(st))
        for problem in result.problems:
            logger.warning("input problem: %s", problem)
        changed = self.publisher.desired is None or self.publisher.desired.version != table.version
        if changed:
            logger.info(
                "compiled table %s: %d routes, %d rejected, in %.3f s",
                table.version,
                len(table.routes),
                rejected,
                elapsed,
            )
            self.publisher.publish(table)
            if first_change is not None:
                self._lag = (table.version, first_change)
            self._bootstrap_dirty.set()
        elif first_change is not None and self._lag is None:
            self.metrics.reconcile_lag.observe(max(0.0, self._clock() - first_change))
        self._status_dirty.set()
        return table

    def _observed_statuses(self) -> dict[str, models.GatewayRouteStatus]:
        out = {}
        for key, wire in self.state.observed_status.items():
            with contextlib.suppress(ValueError):
                out[key] = models.GatewayRouteStatus.model_validate(wire)
        return out

    def _acks_changed(self) -> None:
        self._acked.set()
        if self._lag is not None and self.publisher.all_in_sync():
            version, first = self._lag
            if self.publisher.desired is not None and self.publisher.desired.version == version:
                self.metrics.reconcile_lag.observe(max(0.0, self._clock() - first))
                self._lag = None
        self._status_dirty.set()

    def desired_statuses(self) -> dict[str, dict[str, Any]]:
        now = datetime.now(UTC)
        generations = self.state.route_generations()
        observed = self.state.observed_status
        cache, self._desired = self._desired, {}
        out = {}
        for key, (_, compiled) in self._status_dumps.items():
            if key not in generations:
                continue  # deleted since the compile
            acked, replicas = self.publisher.programmed(key, compiled.get("observedGeneration"))
            hit = cache.get(key)
            if hit is not None and hit[0] is compiled and hit[1] == acked and hit[2] == replicas:
                desired = hit[3]
            else:
                previous = self.writer.previous(key, observed) if self.writer is not None else None
                desired = status.desired_status(
                    compiled, acked=acked, replicas=replicas, previous=previous, now=now
                )
            self._desired[key] = (compiled, acked, replicas, desired)
            out[key] = desired
        return out

    async def _settle(self) -> None:
        """Wait until no push of the desired table is under way, at most ``status_settle`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._status_settle
        while self.active and not self.publisher.settled():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), remaining)

    async def _status_loop(self) -> None:
        while True:
            await self._status_dirty.wait()
            await self._settle()
            self._status_dirty.clear()
            if not self.active or self.writer is None:
                continue
            try:
                desired = self.desired_statuses()
                self.writer.forget(set(self.state.route_generations()))
                await self.writer.write(desired, self.state.observed_status)
                await self._clear_released()
            except Exception:
                logger.exception("status update failed")

    async def _clear_released(self) -> None:
        """Remove the statuses of the routes that left this class (see :mod:`kubegate_operator.state`)."""
        assert self.writer is not None
        released = dict(self.state.released)
        for key in await self.writer.clear(released):
            if self.state.released.get(key) == released[key]:  # not left again (or come back) meanwhile
                del self.state.released[key]

    async def _bootstrap_loop(self) -> None:
        while True:
            await self._bootstrap_dirty.wait()
            # The Secret only matters for cold starts: let the pushes go first and coalesce a burst of
            # tables into one write (encoding 10,000 routes takes a tenth of a second of the loop).
            await asyncio.sleep(BOOTSTRAP_DELAY)
            self._bootstrap_dirty.clear()
            malloc.trim()  # the compile's and the pushes' garbage is freed by now
            desired = self.publisher.desired
            if not self.active or self.bootstrapper is None or desired is None or self.result is None:
                continue
            table = self.result.table.model_copy(update={"version": desired.version})
            result = await self.bootstrapper.write(table)
            if result == "error":
                await asyncio.sleep(1.0)
                self._bootstrap_dirty.set()


def _error_summary(error: Exception) -> str:
    """What went wrong, without the error's text: an API error's text holds the answer's body."""
    status, reason = getattr(error, "status", None), getattr(error, "reason", None)
    if isinstance(status, int):
        return f"HTTP {status} {reason or ''}".rstrip()
    return type(error).__name__


def _dump(st: models.GatewayRouteStatus) -> dict[str, Any]:
    return st.model_dump(mode="json", by_alias=True, exclude_none=True)
