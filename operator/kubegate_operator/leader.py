"""High availability: leader election with a ``coordination.k8s.io/v1`` Lease.

Why a Lease and not kopf peering: kopf peering pauses the standby operators entirely (no watching), so
a take-over starts from a cold state, and it needs kopf's own peering CRDs in the cluster. With a Lease,
every replica keeps watching and compiling (a warm standby), and only the holder pushes tables, writes
status and the bootstrap Secret. It is the mechanism every Kubernetes controller uses, needing only
``get/create/patch`` on one Lease.

The holder renews every ``duration / 3``; a candidate takes the Lease over when it has not seen the Lease
change for ``duration`` seconds of its *own* clock (as client-go does: the ``renewTime`` written by another
node is not compared with the local wall clock, so clock skew between nodes cannot cause an early
take-over). Updates are optimistic (a JSON patch that tests ``resourceVersion``), so two candidates can
never both win the same round. A leader steps down at once when it finds the Lease held by someone else,
and by itself when it cannot renew for ``2/3`` of the duration. On a graceful shutdown the leader releases
the Lease (empty holder), so a standby takes over within one retry interval instead of a whole duration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubegate_operator.kube import Kube
from kubegate_operator.settings import ObjectRef

logger = logging.getLogger("kubegate.operator.leader")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        *,
        kube: Kube,
        ref: ObjectRef,
        identity: str,
        duration: float,
        on_change: Callable[[bool], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.ref = ref
        self.identity = identity
        self.duration = duration
        self.on_change = on_change
        self.leading = False
        self._renewed = 0.0  # monotonic time of our last successful acquire/renew
        self._observed: tuple[object, float] | None = None  # (the Lease record as last seen, when first seen)
        self._clock = clock

    def _spec(self, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = _now_micro()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _expired(self, spec: dict[str, Any], record: object) -> bool:
        """Whether the holder has let the Lease lapse: unchanged for its duration by our own clock."""
        now = self._clock()
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, now)
            return False
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        return now - self._observed[1] > duration

    async def try_acquire(self) -> bool:
        lease = await self.kube.get_lease(self.ref)
        if lease is None:
            return await self.kube.create_lease(self.ref, self._spec(0, None))
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        version = str((lease.get("metadata") or {}).get("resourceVersion", ""))
        record = (version, holder, spec.get("renewTime"))
        if holder not in (None, "", self.identity) and not self._expired(spec, record):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        return await self.kube.update_lease(self.ref, version, self._spec(transitions, acquired))

    async def release(self) -> bool:
        """Give the Lease up if we hold it (graceful shutdown; call after publishing has stopped)."""
        was_leading = self.leading
        self._set(False, "shutting down")
        if not was_leading:
            return False
        try:
            lease = await self.kube.get_lease(self.ref)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return False
            version = str((lease.get("metadata") or {}).get("resourceVersion", ""))
            released = {
                **spec,
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "renewTime": _now_micro(),
            }
            done = await self.kube.update_lease(self.ref, version, released)
        except Exception as error:
            logger.warning("lease %s not released: %s", self.ref, error)
            return False
        if done:
            logger.info("released leadership of %s", self.ref)
        return done

    def _set(self, leading: bool, why: str = "") -> None:
        if leading != self.leading:
            self.leading = leading
            verb = "acquired" if leading else "gave up"
            logger.info("%s leadership of %s%s", verb, self.ref, f" ({why})" if why else "")
            self.on_change(leading)

    async def run(self) -> None:
        interval = max(0.2, self.duration / 3)
        while True:
            try:
                if await self.try_acquire():
                    self._renewed = self._clock()
                    self._set(True)
                elif self.leading:  # someone else holds it now (or changed it under us): stop at once
                    self._set(False, "the Lease is held by another replica")
            except Exception as error:
                logger.warning("lease %s: %s", self.ref, error)
            if self.leading and self._clock() - self._renewed > self.duration * 2 / 3:
                self._set(False, "could not renew in time")  # before another one takes over
            await asyncio.sleep(interval)
