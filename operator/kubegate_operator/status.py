"""GatewayRoute status: the compiler's conditions plus ``Programmed``, written only when it changes.

``Accepted`` and ``ResolvedRefs`` come from the compiler. ``Programmed`` is ours: True only when every
current data-plane replica has acknowledged a table that contains this generation of the route, with
the count in the message ("2/3 replicas"). The writer compares each desired status with the one last
written (or, after a restart, the one found on the object), so a steady state writes nothing, and patches
the ``status`` subresource with bounded concurrency. An ``Accepted`` transition also produces a
Kubernetes Event on the route.

What was written is remembered per object, not per name: a route deleted and created again under the
same name (``kubectl replace --force``, or a delete and an apply within one debounce) is a new object with
no status, while its name, generation and spec, and so its desired status, are the old one's. Compared
with the status written to the old object, it would never be written at all; so a status written to
another ``metadata.uid`` is not taken for the object's, and the new route is compared with what it
carries (nothing).

Several instances (gateway classes) share the cluster's routes, and each writes the status of its own
routes only. The status stays one flat list of conditions rather than Gateway API's per-controller
``status.parents[]``: a route names at most one class, so exactly one instance is responsible for it at
any generation (see the README). What keeps two instances from overwriting each other is the patch: a
status computed from generation *g* is written only while the route's ``metadata.generation`` is still
*g* (a JSON patch whose first operation tests it). The class is part of the spec, so when a route moves
to another class its generation changes, and a write of the old owner that was under way fails
(``stale``) instead of landing on top of the new owner's. When a route leaves this instance's class, the
status it wrote is removed (:meth:`StatusWriter.clear`), by a patch that tests the status's
``observedGeneration`` first: a status the new owner wrote meanwhile is never removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from kubegate.api import models
from kubegate_operator import metrics as metrics_mod

logger = logging.getLogger("kubegate.operator.status")

PROGRAMMED = "Programmed"
ACCEPTED = "Accepted"

WireStatus = dict[str, Any]
#: ``ok``; ``gone``: no such route; ``stale``: the route is no longer at the generation the patch tests
PatchResult = Literal["ok", "gone", "stale"]
#: ns, name, status → result; writes only while metadata.generation equals the status's observedGeneration
PatchStatus = Callable[[str, str, WireStatus], Awaitable[PatchResult]]
#: ns, name, observedGeneration → result; removes the status only while it has that observedGeneration
ClearStatus = Callable[[str, str, int], Awaitable[PatchResult]]
# ns, name, uid, type, reason, message
PostEvent = Callable[[str, str, str | None, str, str, str], Awaitable[None]]


def _wire(model: models.Condition | models.GatewayRouteStatus) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def _condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    if not status:
        return None
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def programmed_condition(
    *,
    acked: int,
    replicas: int,
    accepted: bool,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The ``Programmed`` condition (wire form), keeping ``lastTransitionTime`` while status is unchanged."""
    message = f"{acked}/{replicas} replicas"
    status: Literal["True", "False"]
    if not accepted:
        status, reason, message = "False", "NotAccepted", f"not in the table (see Accepted); {message}"
    elif replicas == 0:
        status, reason, message = "False", "NoReplicas", f"no data-plane replica found; {message}"
    elif acked == replicas:
        status, reason = "True", "Programmed"
    else:
        status, reason = "False", "Pending"
    before = _condition(previous, PROGRAMMED)
    if before is not None and before.get("status") == status and before.get("lastTransitionTime"):
        transition: Any = before["lastTransitionTime"]
    else:
        transition = now.astimezone(UTC).replace(microsecond=0)
    return _wire(
        models.Condition(
            type=PROGRAMMED,
            status=status,
            reason=reason,
            message=message,
            lastTransitionTime=transition,
            observedGeneration=generation,
        )
    )


def desired_status(
    compiled: Mapping[str, Any],
    *,
    acked: int,
    replicas: int,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> WireStatus:
    """``compiled`` is the compiler's status in wire form; the result adds ``Programmed``."""
    accepted = _condition(compiled, ACCEPTED)
    conditions = [c for c in compiled.get("conditions") or () if c.get("type") != PROGRAMMED]
    conditions.append(
        programmed_condition(
            acked=acked,
            replicas=replicas,
            accepted=accepted is not None and accepted.get("status") == "True",
            generation=compiled.get("observedGeneration"),
            previous=previous,
            now=now,
        )
    )
    return {**compiled, "conditions": conditions}


class StatusWriter:
    def __init__(
        self,
        *,
        patch: PatchStatus,
        clear: ClearStatus | None = None,
        event: PostEvent | None = None,
        uid: Callable[[str], str | None] | None = None,
        metrics: metrics_mod.Metrics | None = None,
        concurrency: int = 16,
    ) -> None:
        self._patch = patch
        self._clear = clear
        self._event = event
        self._uid = uid or (lambda key: None)  # "ns/name" → metadata.uid (Events name the object by uid)
        self._metrics = metrics
        self._limit = asyncio.Semaphore(concurrency)
        self.written: dict[str, WireStatus] = {}  # "ns/name" → the status as last written
        self._written_to: dict[str, str | None] = {}  # "ns/name" → the uid of the object written to

    def previous(self, key: str, observed: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
        """The status the route carries, as far as we know: the one last written to this very object,
        else the one its last watch event brought."""
        written = self.written.get(key)
        if written is not None and self._written_to.get(key) == self._uid(key):
            return written
        return observed.get(key)

    def diff(
        self, desired: Mapping[str, WireStatus], observed: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, WireStatus]:
        """The statuses that differ from what the objects carry (as far as we know)."""
        changed = {}
        for key, st in desired.items():
            before = self.previous(key, observed)
            if before is not st and before != st:
                changed[key] = st
        return changed

    def forget(self, keys: set[str]) -> None:
        for key in set(self.written) - keys:
            del self.written[key]
        for key in set(self._written_to) - set(self.written):
            del self._written_to[key]

    async def write(
        self, desired: Mapping[str, WireStatus], observed: Mapping[str, Mapping[str, Any]]
    ) -> int:
        """Patch every changed status; returns how many were written."""
        changes = self.diff(desired, observed)
        if not changes:
            return 0
        results = await asyncio.gather(
            *(self._write_one(key, status, self.previous(key, observed)) for key, status in changes.items())
        )
        return sum(results)

    async def _write_one(self, key: str, status: WireStatus, before: Mapping[str, Any] | None) -> int:
        namespace, name = key.split("/", 1)
        async with self._limit:
            # Recorded before the patch: its watch event can arrive before its answer, and the cluster
            # state then keeps this object instead of a second, equal copy (see ClusterState.upsert).
            last = self.written.get(key), self._written_to.get(key)
            self.written[key] = status
            self._written_to[key] = self._uid(key)
            try:
                result = await self._patch(namespace, name, status)
            except Exception as error:
                self._restore(key, last)
                logger.warning("status write for %s failed: %s", key, error)
                self._count("error")
                return 0
        self._count(result)
        if result != "ok":  # gone, or changed since (its next generation brings another status)
            self._restore(key, last)
            return 0
        await self._accepted_event(namespace, name, before, status)
        return 1

    async def clear(self, released: Mapping[str, int]) -> list[str]:
        """Remove the statuses of routes that left this instance's class (``"ns/name"`` → the
        ``observedGeneration`` of the status found on them); returns the routes done with (removed, or
        rewritten or deleted by someone else meanwhile). A failed patch is left for the next call."""
        if self._clear is None or not released:
            return []
        results = await asyncio.gather(*(self._clear_one(key, gen) for key, gen in released.items()))
        return [key for key, done in zip(released, results, strict=True) if done]

    async def _clear_one(self, key: str, generation: int) -> bool:
        assert self._clear is not None
        namespace, name = key.split("/", 1)
        async with self._limit:
            try:
                result = await self._clear(namespace, name, generation)
            except Exception as error:
                logger.warning("status removal for %s failed: %s", key, error)
                self._count("error")
                return False
        self.written.pop(key, None)
        self._written_to.pop(key, None)
        self._count("cleared" if result == "ok" else result)
        if result == "ok":
            logger.info("%s belongs to another gateway class now: its status is removed", key)
        return True

    def _restore(self, key: str, last: tuple[WireStatus | None, str | None]) -> None:
        status, uid = last
        if status is None:
            self.written.pop(key, None)
            self._written_to.pop(key, None)
        else:
            self.written[key] = status
            self._written_to[key] = uid

    async def _accepted_event(
        self, namespace: str, name: str, before: Mapping[str, Any] | None, after: Mapping[str, Any]
    ) -> None:
        if self._event is None:
            return
        old, new = _condition(before, ACCEPTED), _condition(after, ACCEPTED)
        if new is None or (old is not None and old.get("status") == new.get("status")):
            return
        if old is None and new.get("status") == "True":
            kind, reason = "Normal", "Accepted"
        else:
            kind = "Normal" if new.get("status") == "True" else "Warning"
            reason = "Accepted" if new.get("status") == "True" else str(new.get("reason") or "Rejected")
        uid = self._uid(f"{namespace}/{name}")
        try:
            await self._event(namespace, name, uid, kind, reason, str(new.get("message", ""))[:1024])
        except Exception as error:  # events are best effort
            logger.warning("event for %s/%s not posted: %s", namespace, name, error)

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.status_writes.labels(result=result).inc()
