"""Active health checks: every data-plane replica probes the endpoints of backends that ask for it.

For each backend of the served table whose route has ``healthCheck``, one task on the traffic event loop
sends ``GET <path>`` to every endpoint each ``interval`` (concurrently, each bounded by ``timeout``); a 2xx
or 3xx answer passes, anything else (another status, refused, reset, timed out) fails. Results go to the
backend's :class:`~kubegate.dataplane.policies.health.HealthCheck`, whose thresholds decide when an
endpoint leaves and rejoins the rotation. The probes are off the hot path, so they use httpx, imported
only when some route has a health check. A backend that speaks TLS is probed over TLS with its own
verification (its ``SSLContext``, and its server name as SNI and the name checked): one httpx client per
distinct verification.

On every table swap, :meth:`HealthProber.sync` keeps the task of a backend that is still there (pointing it
at the backend's new runtime object, which kept the endpoints' state if the policy is unchanged), starts
tasks for new ones and cancels those of backends that left.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from kubegate.dataplane.policies.runtime import PolicyBackend
from kubegate.dataplane.snapshot import Snapshot
from kubegate.dataplane.upstreamtls import UpstreamTls

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("kubegate.health")
# httpx logs every request at INFO: one line per probe per endpoint every interval would drown the log
logging.getLogger("httpx").setLevel(logging.WARNING)

USER_AGENT = "kubegate-health-check"


class HealthProber:
    def __init__(self) -> None:
        self._backends: dict[tuple[str, str], PolicyBackend] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._tls_clients: dict[UpstreamTls, httpx.AsyncClient] = {}

    def sync(self, snapshot: Snapshot) -> None:
        """Follow the backends with health checks of ``snapshot`` (called on the event loop)."""
        wanted: dict[tuple[str, str], PolicyBackend] = {}
        for rid, rt in snapshot.routes.items():
            if rt.policies is not None:
                for b in rt.policies.health_checks():
                    wanted[(rid, b.name)] = b
        for key in [k for k in self._tasks if k not in wanted]:
            self._tasks.pop(key).cancel()
        self._backends = wanted
        for key in wanted:
            if key not in self._tasks:
                self._tasks[key] = asyncio.get_running_loop().create_task(self._run(key))

    async def _run(self, key: tuple[str, str]) -> None:
        while True:
            backend = self._backends.get(key)
            if backend is None or backend.health is None:
                return
            check = backend.health
            addrs = list(check.states)
            tls = backend.tls
            results = await asyncio.gather(*(self.probe(a, check.path, check.timeout, tls) for a in addrs))
            for addr, ok in zip(addrs, results, strict=True):
                if check.observe(addr, ok):
                    host, port = addr
                    logger.info(
                        "endpoint %s:%d of %s is now %s",
                        host,
                        port,
                        "/".join(key),
                        "healthy" if ok else "unhealthy",
                        extra={"route": key[0], "backend": key[1], "endpoint": f"{host}:{port}"},
                    )
            await asyncio.sleep(check.interval)

    async def probe(
        self, addr: tuple[str, int], path: str, timeout: float, tls: UpstreamTls | None = None
    ) -> bool:
        import httpx

        if tls is None:
            client = self._client
            if client is None:
                client = self._client = httpx.AsyncClient(
                    headers={"user-agent": USER_AGENT}, follow_redirects=False
                )
        else:
            client = self._tls_clients.get(tls)
            if client is None:
                client = self._tls_clients[tls] = httpx.AsyncClient(
                    headers={"user-agent": USER_AGENT}, follow_redirects=False, verify=tls.context
                )
        host, port = addr
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        scheme = "https" if tls is not None else "http"
        extensions = {"sni_hostname": tls.server_name} if tls is not None else None
        try:
            response = await client.get(
                f"{scheme}://{authority}{path}", timeout=timeout, extensions=extensions
            )
        except Exception:  # refused, reset, timed out, malformed, a failed handshake: all mean "failed"
            return False
        return 200 <= response.status_code < 400

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        for client in self._tls_clients.values():
            await client.aclose()
        self._tls_clients.clear()

    def __repr__(self) -> str:
        return f"<HealthProber {len(self._tasks)} backends>"
