"""Publishing: every data-plane replica gets the current table, and we know which one serves what.

Each replica has its own worker task, so a replica that is slow or unreachable never holds back the
others: the worker pushes the desired table (bearer token re-read from the token file on every push,
so a rotated Secret takes effect; for a grace period after a change, the previous token rides along in
``kubegate-previous-token``, so that a replica whose copy of the Secret has not changed yet still admits
the push: see :mod:`kubegate.pushtoken`), retries with exponential backoff, and records the acknowledged
``(version, hash)``. When the replica acknowledged a table the publisher still knows, the push is a
``PATCH /table`` with the routes that changed (:class:`~kubegate.compiler.table.TableDelta`): a
one-route change at 10,000 routes sends a kilobyte instead of 3.4 MB, and the replica validates and
re-indexes only that route. A replica that answers 409 (it serves something else) gets the whole table
with ``PUT /table`` right away. A periodic check (``GET /table`` on every replica) catches restarted
pods, bootstrap tables and missed pushes, and wakes the worker of any replica whose version or hash
differs (an answer is ignored when a push to that replica was acknowledged while it was on its way: it
may predate the push).

For the ``Programmed`` condition the publisher remembers, for every table version still served or
wanted, which route generations it contains: :meth:`Publisher.programmed` counts the current replicas
whose acknowledged table holds a given generation of a route.

Each replica is also told how many replicas there are (:attr:`Publisher.replica_count`, the replicas it
currently targets): a Global rate limit falls back to ``requestsPerSecond / replicas`` on each of them
while Redis is away. The count rides along with every table push (a ``kubegate-replicas`` header, applied
with the table), and when the replica set changes while the table does not (a scale-up from 3 to 5 with
the same routes), the same worker sends it alone with ``PUT /replicas``, with the same token, retries and
backoff as a push, its failures logged as a push's are and counted by result in :attr:`Publisher.tells`
and ``kubegate_operator_replica_count_updates_total`` (not in ``kubegate_operator_pushes_total``, which
counts tables pushed). The replicas say
which count they use in every answer (``GET /table`` and pushes), so the periodic check also re-tells a
restarted replica that came back with a table it already had, and an operator restart tells nothing to
replicas that already know. A replica without a table gets the count with its first one (it serves
nothing before).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import httpx

from kubegate import pushtoken
from kubegate.compiler import table as tables
from kubegate_operator import metrics as metrics_mod
from kubegate_operator import tokensecret
from kubegate_operator.state import Replica

logger = logging.getLogger("kubegate.operator.publisher")


@dataclasses.dataclass(frozen=True)
class Desired:
    """The table every replica should serve. Its JSON (3.4 MB at 10,000 routes) is assembled from the
    routes' cached encodings only when a replica needs the whole table: most pushes are deltas."""

    version: str
    hash: str
    table: tables.RouteTable = dataclasses.field(repr=False)
    routes: Mapping[str, int | None] = dataclasses.field(repr=False)  # route id → generation

    @classmethod
    def of(cls, table: tables.RouteTable) -> Desired:
        return cls(
            version=table.version,
            hash=table.content_hash(),
            table=table,
            routes={route.id: route.generation for route in table.routes},
        )

    @functools.cached_property
    def body(self) -> bytes:
        return self.table.encode()


# A delta is sent instead of the whole table while it changes at most this share of the routes.
DELTA_MAX_SHARE = 0.5
#: The header of a table push that carries the replica count (the data plane's ``admin.REPLICAS_HEADER``).
REPLICAS_HEADER = "kubegate-replicas"


@dataclasses.dataclass(frozen=True)
class Ack:
    version: str | None
    hash: str | None
    at: float
    replicas: int | None = None  # the replica count it said it uses (None: it did not say)


def _replicas(info: object) -> int | None:
    """The ``replicas`` of a replica's JSON answer, when it is a count."""
    value = info.get("replicas") if isinstance(info, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclasses.dataclass
class ReplicaSync:
    """What one replica serves, as last acknowledged or observed, and how pushing to it goes."""

    replica: Replica
    ack: Ack | None = None
    failures: int = 0
    last_error: str = ""
    tried: str | None = None  # the last version a push of ended (acknowledged or failed)
    told: int | None = None  # the replica count it uses, as last acknowledged or observed (None: unknown)
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, repr=False)
    task: asyncio.Task[None] | None = dataclasses.field(default=None, repr=False)

    def serves(self, desired: Desired) -> bool:
        return self.ack is not None and (self.ack.version, self.ack.hash) == (desired.version, desired.hash)


def token_reader(
    path: Path | None, fallback: Callable[[], str | None] = lambda: None
) -> Callable[[], str | None]:
    """The push token from ``path``, re-read on every call (``fallback`` while the file has none): see
    :func:`kubegate_operator.tokensecret.token_source`."""
    return tokensecret.token_source(path, fallback)


class Publisher:
    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        token: Callable[[], str | None] | pushtoken.RotatingToken,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        timeout: float = 10.0,
        metrics: metrics_mod.Metrics | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.token = token if isinstance(token, pushtoken.RotatingToken) else pushtoken.RotatingToken(token)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.timeout = timeout
        self._metrics = metrics
        self._on_change = on_change or (lambda: None)
        self._clock = clock
        self.desired: Desired | None = None
        self.syncs: dict[Replica, ReplicaSync] = {}
        self._tables: dict[str, Desired] = {}  # every version still served or wanted
        self._deltas: dict[tuple[str, str], bytes | None] = {}  # (base, target version) → PATCH body
        self.active = True  # False: a standby (not the leader) keeps state but pushes nothing
        self.tells: collections.Counter[str] = collections.Counter()  # PUT /replicas by result

    # --- inputs ----------------------------------------------------------------------------------

    def publish(self, table: tables.RouteTable) -> Desired:
        desired = Desired.of(table)
        self.desired = desired
        self._tables[desired.version] = desired
        self._deltas.clear()
        self._prune()
        if self._metrics is not None:
            self._metrics.table_bytes.set(desired.table.encoded_size())
            self._metrics.table_routes.set(len(desired.routes))
        for sync in self.syncs.values():
            sync.wake.set()
        self._changed()
        return desired

    def set_replicas(self, replicas: Iterable[Replica]) -> None:
        wanted = set(replicas)
        for replica in list(self.syncs):
            if replica not in wanted:
                sync = self.syncs.pop(replica)
                if sync.task is not None:
                    sync.task.cancel()
                logger.info("replica %s is gone", replica)
        for replica in sorted(wanted - set(self.syncs)):
            sync = ReplicaSync(replica=replica)
            self.syncs[replica] = sync
            sync.task = asyncio.create_task(self._worker(sync), name=f"push {replica}")
            logger.info("replica %s discovered", replica)
        for sync in self.syncs.values():
            if sync.told != self.replica_count:  # it is told by its worker (new ones start anyway)
                sync.wake.set()
        if self._metrics is not None:
            self._metrics.replicas.set(len(self.syncs))
        self._changed()

    @property
    def replica_count(self) -> int:
        """What every replica is told: the number of replicas this publisher targets."""
        return len(self.syncs)

    def set_active(self, active: bool) -> None:
        self.active = active
        for sync in self.syncs.values():
            sync.wake.set()

    async def close(self) -> None:
        tasks = [s.task for s in self.syncs.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.syncs.clear()

    # --- views ----------------------------------------------------------------------------------

    def in_sync(self) -> int:
        desired = self.desired
        return 0 if desired is None else sum(1 for s in self.syncs.values() if s.serves(desired))

    def all_in_sync(self) -> bool:
        return self.desired is not None and self.in_sync() == len(self.syncs)

    def settled(self) -> bool:
        """No push of the desired table is still under way: every replica serves it, or the push to it
        ended in a failure (an unreachable replica is not waited for)."""
        desired = self.desired
        if desired is None or not self.active:
            return True
        return all(s.serves(desired) or s.tried == desired.version for s in self.syncs.values())

    def programmed(self, route_id: str, generation: int | None) -> tuple[int, int]:
        """(replicas whose acknowledged table holds this generation of the route, current replicas)."""
        count = 0
        for sync in self.syncs.values():
            if sync.ack is None or sync.ack.version is None:
                continue
            table = self._tables.get(sync.ack.version)
            if table is not None and table.routes.get(route_id, ...) == generation:
                count += 1
        return count, len(self.syncs)

    def __repr__(self) -> str:
        version = self.desired.version if self.desired else None
        told = sum(1 for s in self.syncs.values() if s.told == self.replica_count)
        return (
            f"<Publisher table={version}: {self.in_sync()}/{len(self.syncs)} replicas in sync,"
            f" {told}/{len(self.syncs)} told the replica count>"
        )

    # --- the work --------------------------------------------------------------------------------

    def _changed(self) -> None:
        if self._metrics is not None:
            self._metrics.replicas_in_sync.set(self.in_sync())
        self._on_change()

    def _prune(self) -> None:
        keep = {s.ack.version for s in self.syncs.values() if s.ack is not None}
        if self.desired is not None:
            keep.add(self.desired.version)
        for version in list(self._tables):
            if version not in keep:
                del self._tables[version]

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.pushes.labels(result=result).inc()

    async def _worker(self, sync: ReplicaSync) -> None:
        """Bring one replica to the desired table, then to the current replica count, and keep it there."""
        while True:
            sync.wake.clear()
            desired = self.desired
            if not self.active or desired is None:
                await sync.wake.wait()
                continue
            pushing = not sync.serves(desired)
            if pushing:
                ok = await self._already_serves(sync, desired) or await self._push(sync, desired)
                sync.tried = desired.version
                if ok:
                    sync.failures = 0
                    self._prune()
                    self._changed()
                    continue
            elif sync.told != self.replica_count:  # the same table, another replica set
                if await self._tell(sync):
                    sync.failures = 0
                    continue
            else:
                await sync.wake.wait()
                continue
            sync.failures += 1
            if pushing:  # what the replica serves is news for the statuses; its replica count is not
                self._changed()
            delay = min(self.backoff_initial * 2 ** (sync.failures - 1), self.backoff_max)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sync.wake.wait(), timeout=delay)

    async def _already_serves(self, sync: ReplicaSync, desired: Desired) -> bool:
        """On first contact (a new replica, or this operator just started), ask what the replica serves.
        After an operator restart the replicas usually serve the very table compiled again, and a replica
        that serves a table the publisher knows gets a delta."""
        if sync.ack is not None:
            return False
        with contextlib.suppress(httpx.HTTPError, ValueError):
            sync.ack = await self._observe(sync)
            if sync.ack.replicas is not None:
                sync.told = sync.ack.replicas
        return sync.serves(desired)

    def _delta(self, sync: ReplicaSync, desired: Desired) -> bytes | None:
        """The PATCH body taking this replica from what it acknowledged to ``desired``, when the base table
        is known and the delta is small enough; None for a whole-table push."""
        ack = sync.ack
        if ack is None or ack.version is None:
            return None
        base = self._tables.get(ack.version)
        if base is None or base.hash != ack.hash or base is desired:
            return None
        key = (base.version, desired.version)
        if key not in self._deltas:
            delta = tables.TableDelta.between(base.table, desired.table)
            small = len(delta.upsert) + len(delta.remove) <= DELTA_MAX_SHARE * max(len(desired.routes), 1)
            self._deltas[key] = json.dumps(delta.to_wire(), separators=(",", ":")).encode() if small else None
        return self._deltas[key]

    def _credentials(self) -> dict[str, str] | None:
        """The push's token headers: the current token, and the previous one during its grace (None: no
        token)."""
        token = self.token.current()
        if not token:
            return None
        headers = {"authorization": f"Bearer {token}"}
        previous = self.token.previous()
        if previous is not None and previous != token:
            headers[pushtoken.PREVIOUS_HEADER] = previous
        return headers

    async def _push(self, sync: ReplicaSync, desired: Desired) -> bool:
        token = self._credentials()
        if token is None:
            sync.last_error = "no push token"
            self._count("error")
            return False
        delta = self._delta(sync, desired)
        if delta is not None:
            outcome = await self._send(sync, desired, token, delta)
            if self._metrics is not None:
                self._metrics.delta_pushes.labels(result=outcome).inc()
            if outcome != "conflict":
                return outcome == "ok"
            logger.info("replica %s does not serve %s: pushing the whole table", sync.replica, sync.ack)
        outcome = await self._send(sync, desired, token, None)
        return outcome == "ok"

    async def _send(
        self, sync: ReplicaSync, desired: Desired, token: Mapping[str, str], delta: bytes | None
    ) -> str:
        """One push (``PATCH`` with ``delta``, else ``PUT`` of the whole table): ok, conflict (409 to a
        delta), error (unreachable) or rejected."""
        body = desired.body if delta is None else delta
        count = self.replica_count
        try:
            response = await self._client.request(
                "PUT" if delta is None else "PATCH",
                sync.replica.url + "/table",
                content=body,
                headers={
                    **token,
                    "content-type": "application/json",
                    REPLICAS_HEADER: str(count),
                },
                timeout=self.timeout,
            )
        except httpx.HTTPError as error:
            sync.last_error = f"{type(error).__name__}: {error}"
            if sync.failures in (0, 3) or sync.failures % 20 == 0:
                logger.warning("push of %s to %s failed: %s", desired.version, sync.replica, sync.last_error)
            self._count("error")
            return "error"
        if delta is not None and response.status_code == 409:
            self._count("conflict")
            return "conflict"
        if response.status_code != 200:
            sync.last_error = f"HTTP {response.status_code}: {response.text[:500]}"
            logger.error("push of %s to %s refused: %s", desired.version, sync.replica, sync.last_error)
            self._count("rejected")
            return "rejected"
        try:
            info = response.json()
        except ValueError:
            info = {}
        told = _replicas(info)
        sync.ack = Ack(version=info.get("version"), hash=info.get("hash"), at=self._clock(), replicas=told)
        sync.told = told if told is not None else count  # applied with the table
        if not sync.serves(desired):
            sync.last_error = (
                f"acknowledged {info.get('version')} {info.get('hash')}, expected {desired.hash}"
            )
            logger.error("push of %s to %s: %s", desired.version, sync.replica, sync.last_error)
            self._count("rejected")
            return "rejected"
        sync.last_error = ""
        self._count("ok")
        logger.debug("replica %s serves %s", sync.replica, desired.version)
        return "ok"

    def _told(self, result: str) -> None:
        self.tells[result] += 1
        if self._metrics is not None:
            self._metrics.replica_count_updates.labels(result=result).inc()

    async def _tell(self, sync: ReplicaSync) -> bool:
        """``PUT /replicas`` with the current count (the table is unchanged); True once acknowledged.
        Failures are logged as a push's are, and counted in :attr:`tells`."""
        count = self.replica_count
        token = self._credentials()
        if token is None:
            sync.last_error = "no push token"
            self._told("error")
            return False
        try:
            response = await self._client.put(
                sync.replica.url + "/replicas",
                json={"replicas": count},
                headers=token,
                timeout=self.timeout,
            )
        except httpx.HTTPError as error:
            sync.last_error = f"{type(error).__name__}: {error}"
            if sync.failures in (0, 3) or sync.failures % 20 == 0:
                logger.warning("replica count %d to %s failed: %s", count, sync.replica, sync.last_error)
            self._told("error")
            return False
        if response.status_code != 200:
            sync.last_error = f"HTTP {response.status_code}: {response.text[:500]}"
            logger.error("replica count %d to %s refused: %s", count, sync.replica, sync.last_error)
            self._told("rejected")
            return False
        try:
            told = _replicas(response.json())
        except ValueError:
            told = None
        sync.told = told if told is not None else count
        sync.last_error = ""
        self._told("ok")
        logger.info("replica %s told: %d replicas", sync.replica, sync.told)
        return True

    async def check(self) -> None:
        """``GET /table`` on every replica; wake the worker of any that serves something else."""
        if not self.syncs:
            return
        syncs = list(self.syncs.values())
        known = [sync.ack for sync in syncs]
        results = await asyncio.gather(*(self._observe(s) for s in syncs), return_exceptions=True)
        changed = False
        for sync, ack, observed in zip(syncs, known, results, strict=True):
            if not isinstance(observed, Ack):
                continue  # unreachable: keep what it acknowledged; its worker retries if it must
            if sync.ack is not ack:
                # A push was acknowledged while the GET was under way: the answer may predate it, and
                # would take the replica back to the table it served before (and push it all again).
                continue
            before = sync.ack
            if before is None or (before.version, before.hash) != (observed.version, observed.hash):
                logger.info(
                    "replica %s serves %s (acknowledged %s): re-pushing",
                    sync.replica,
                    observed.version,
                    before.version if before else None,
                )
                sync.ack = observed
                sync.wake.set()
                changed = True
            if observed.replicas is not None and observed.replicas != sync.told:
                sync.told = observed.replicas  # a restarted replica is back at 1, say
                if sync.told != self.replica_count:
                    logger.info(
                        "replica %s uses a replica count of %d, not %d: telling it again",
                        sync.replica,
                        sync.told,
                        self.replica_count,
                    )
                    sync.wake.set()
        if changed:
            self._prune()
            self._changed()

    async def _observe(self, sync: ReplicaSync) -> Ack:
        response = await self._client.get(sync.replica.url + "/table", timeout=self.timeout)
        response.raise_for_status()
        info = response.json()
        return Ack(
            version=info.get("version"), hash=info.get("hash"), at=self._clock(), replicas=_replicas(info)
        )

    async def resync_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.active:
                try:
                    await self.check()
                except Exception:  # a bug here must not stop the loop
                    logger.exception("replica check failed")
