"""High availability: leader election with a ``coordination.k8s.io/v1`` Lease.

Why a Lease and not kopf peering: kopf peering pauses the standby operators entirely (no watching), so
a take-over starts from a cold state, and it needs kopf's own peering CRDs in the cluster. With a Lease,
every replica keeps watching and compiling (a warm standby), and only the holder pushes tables, writes
status and the bootstrap Secret. It is the mechanism every Kubernetes controller uses, needing only
``get/create/patch`` on one Lease.

The holder renews every ``duration / 3``; a candidate takes the Lease over when it has not been renewed
for ``duration`` seconds. Updates are optimistic (a JSON patch that tests ``resourceVersion``), so two
candidates can never both win the same round. A leader that cannot renew in time steps down by itself.
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


def _parse_time(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class LeaderElector:
    def __init__(
        self,
        *,
        kube: Kube,
        ref: ObjectRef,
        identity: str,
        duration: float,
        on_change: Callable[[bool], None],
    ) -> None:
        self.kube = kube
        self.ref = ref
        self.identity = identity
        self.duration = duration
        self.on_change = on_change
        self.leading = False
        self._renewed = 0.0  # monotonic time of our last successful acquire/renew

    def _spec(self, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = _now_micro()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def try_acquire(self) -> bool:
        lease = await self.kube.get_lease(self.ref)
        if lease is None:
            return await self.kube.create_lease(self.ref, self._spec(0, None))
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse_time(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        expired = renewed is None or time.time() > renewed + duration
        if holder not in (None, "", self.identity) and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        version = str((lease.get("metadata") or {}).get("resourceVersion", ""))
        return await self.kube.update_lease(self.ref, version, self._spec(transitions, acquired))

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            logger.info("%s leadership of %s", "acquired" if leading else "lost", self.ref)
            self.on_change(leading)

    async def run(self) -> None:
        interval = max(0.2, self.duration / 3)
        while True:
            try:
                if await self.try_acquire():
                    self._renewed = time.monotonic()
                    self._set(True)
            except Exception as error:
                logger.warning("lease %s: %s", self.ref, error)
            if self.leading and time.monotonic() - self._renewed > self.duration * 2 / 3:
                self._set(False)  # could not renew: step down before another one takes over
            await asyncio.sleep(interval)
