"""The last known good table, stored in a Secret so that a new replica serves while the operator is down.

Data-plane pods mount the Secret and start with ``kubegate serve --bootstrap /path/table.json.gz``
(:func:`kubegate.dataplane.routesfile.load_bootstrap` recognises gzip). A Secret, because a table may
carry key material. The key is :data:`DATA_KEY`; the content hash is kept in an annotation so that an
unchanged table is not rewritten (nor after an operator restart).

Size: Kubernetes refuses objects over about 1 MiB (etcd's request limit is 1.5 MiB, but the API server's
object limit for Secrets is 1 MiB of data). The compressed table is base64-encoded in the Secret (4/3 larger),
so we refuse to write when the encoded data would exceed :data:`MAX_SECRET_DATA` (900 KiB, leaving room
for metadata): the previous table stays in the Secret, an error is logged and
``kubegate_operator_bootstrap_writes_total{result="too_large"}`` counts it. (Measured: 10,000 typical
routes compress to well under that; see the operator notes for the figure.)
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubegate.compiler import table as tables
from kubegate_operator import metrics as metrics_mod
from kubegate_operator.settings import ObjectRef

logger = logging.getLogger("kubegate.operator.bootstrap")

DATA_KEY = "table.json.gz"
HASH_ANNOTATION = "kubegate.dev/table-hash"
VERSION_ANNOTATION = "kubegate.dev/table-version"
MAX_SECRET_DATA = 900 * 1024  # base64 bytes

GetSecret = Callable[[ObjectRef], Awaitable[Mapping[str, Any] | None]]
PutSecret = Callable[[ObjectRef, Mapping[str, Any], bool], Awaitable[None]]  # body, exists


def encode(table: tables.RouteTable) -> bytes:
    """Gzip-compressed compact JSON of the wire form (deterministic: mtime 0)."""
    return gzip.compress(table.encode(), compresslevel=9, mtime=0)


def encoded_size(data: bytes) -> int:
    return (len(data) + 2) // 3 * 4


def secret_body(ref: ObjectRef, table: tables.RouteTable, data: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": ref.name,
            "namespace": ref.namespace,
            "labels": {"app.kubernetes.io/managed-by": "kubegate-operator"},
            "annotations": {HASH_ANNOTATION: table.content_hash(), VERSION_ANNOTATION: table.version},
        },
        "data": {DATA_KEY: base64.b64encode(data).decode()},
    }


class BootstrapWriter:
    def __init__(
        self,
        *,
        ref: ObjectRef,
        get: GetSecret,
        put: PutSecret,
        metrics: metrics_mod.Metrics | None = None,
        limit: int = MAX_SECRET_DATA,
    ) -> None:
        self.ref = ref
        self._get = get
        self._put = put
        self._metrics = metrics
        self.limit = limit
        self._written_hash: str | None = None
        self._exists: bool | None = None

    async def write(self, table: tables.RouteTable) -> str:
        """Store ``table`` unless already stored; returns ok, unchanged, too_large or error."""
        digest = table.content_hash()
        if digest == self._written_hash:
            return "unchanged"
        # zlib releases the GIL: compressing 3.4 MB (10,000 routes) in a thread keeps the loop pushing
        data = await asyncio.to_thread(encode, table)
        size = encoded_size(data)
        if self._metrics is not None:
            self._metrics.bootstrap_bytes.set(len(data))
        if size > self.limit:
            logger.error(
                "bootstrap table %s not stored in Secret %s: %d bytes base64 > limit %d "
                "(the Secret keeps the previous table)",
                table.version,
                self.ref,
                size,
                self.limit,
            )
            return self._result("too_large")
        try:
            if self._exists is None:
                current = await self._get(self.ref)
                self._exists = current is not None
                annotations = ((current or {}).get("metadata") or {}).get("annotations") or {}
                if annotations.get(HASH_ANNOTATION) == digest:
                    self._written_hash = digest
                    return "unchanged"
            await self._put(self.ref, secret_body(self.ref, table, data), self._exists)
        except Exception as error:
            self._exists = None  # look again next time (deleted or created by someone else)
            logger.warning("bootstrap Secret %s not written: %s", self.ref, error)
            return self._result("error")
        self._exists = True
        self._written_hash = digest
        logger.info("bootstrap Secret %s holds table %s (%d bytes gzip)", self.ref, table.version, len(data))
        return self._result("ok")

    def _result(self, result: str) -> str:
        if self._metrics is not None:
            self._metrics.bootstrap_writes.labels(result=result).inc()
        return result
