"""The kopf registry: thin event handlers that feed the reconciler, and the start-up/clean-up wiring.

Handlers are ``@kopf.on.event`` only: they need no finalizers and no annotations on the objects (the
operator never blocks a deletion, and a compile looks at the whole set anyway). Each one hands the body
to :class:`~kubegate_operator.reconciler.Reconciler` and returns; everything slow happens in its loops.

Secrets are watched like the rest (routes' ``spec.auth`` names them), but :mod:`kubegate_operator.state`
keeps only those that some route names; the handler never logs a body (kopf's own logger is kept at
WARNING and logs no bodies there either).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import httpx
import kopf

from kubegate import pushtoken
from kubegate_operator import bootstrap, leader, publisher, reconciler, state, status, tokensecret
from kubegate_operator import metrics as metrics_mod
from kubegate_operator.kube import Kube, field_manager
from kubegate_operator.settings import ObjectRef, Settings

logger = logging.getLogger("kubegate.operator")

PRIME_TIMEOUT = 60.0  # the longest wait for the objects listed at start-up before compiling anyway
LIST_GRACE = 5.0  # when that listing fails: wait this long for kopf's events, then compile

WATCHED = (
    (state.GATEWAYROUTE, ("kubegate.dev", "v1alpha1", "gatewayroutes")),
    (state.ENDPOINTSLICE, ("discovery.k8s.io", "v1", "endpointslices")),
    (state.SERVICE, ("", "v1", "services")),
    (state.SECRET, ("", "v1", "secrets")),
)


class App:
    """Everything the operator runs, created at kopf start-up, torn down at clean-up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = metrics_mod.Metrics()
        dp = settings.dataplane_service
        boot = settings.bootstrap_secret
        own = [ref for ref in (boot, settings.push_token_secret) if ref is not None]
        self.state = state.ClusterState(
            namespaces=settings.namespaces,
            dataplane_service=(dp.namespace, dp.name) if dp else None,
            reserved=[(ref.namespace, ref.name) for ref in own],
            gateway_class=settings.gateway_class,
        )
        self.kube: Kube | None = None
        self.http: httpx.AsyncClient | None = None
        self.reconciler: reconciler.Reconciler | None = None
        self.elector: leader.LeaderElector | None = None
        self.token_secret: tokensecret.PushTokenSecret | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        if s.metrics_port is not None:
            self.metrics.serve(s.metrics_port)
        logger.info("serving the routes of gateway class %r", s.gateway_class)
        self.kube = await Kube.connect(manager=field_manager(s.gateway_class))
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200), trust_env=False)
        if s.push_token_secret is not None:
            await self._ensure_push_token(s.push_token_secret, s.push_token_key)
        pusher = publisher.Publisher(
            client=self.http,
            token=pushtoken.RotatingToken(
                publisher.token_reader(s.push_token_file, self._push_token_of_secret),
                grace=s.push_token_grace,
            ),
            backoff_initial=s.backoff_initial,
            backoff_max=s.backoff_max,
            timeout=s.push_timeout,
            metrics=self.metrics,
        )
        writer = status.StatusWriter(
            patch=self.kube.patch_route_status,
            clear=self.kube.clear_route_status,
            event=self.kube.post_event,
            uid=self.state.route_uid,
            metrics=self.metrics,
        )
        boot = None
        if s.bootstrap_secret is not None:
            boot = bootstrap.BootstrapWriter(
                ref=s.bootstrap_secret,
                get=self.kube.get_secret,
                put=self.kube.put_secret,
                metrics=self.metrics,
            )
        self.reconciler = reconciler.Reconciler(
            cluster=self.state,
            pusher=pusher,
            writer=writer,
            bootstrapper=boot,
            metrics=self.metrics,
            holdoff=s.holdoff,
            max_delay=s.max_delay,
            read_secret=self.kube.read_secret,
        )
        if s.leader_lease is not None:
            identity = s.identity or f"{socket.gethostname()}-{os.getpid()}"
            self.reconciler.set_active(False)
            self.elector = leader.LeaderElector(
                kube=self.kube,
                ref=s.leader_lease,
                identity=identity,
                duration=s.lease_duration,
                on_change=self.reconciler.set_active,
            )
            self._tasks.append(asyncio.create_task(self.elector.run(), name="leader"))
        else:
            self.reconciler.set_active(True)
        await self._expect_listed()
        self.reconciler.start(s.resync_interval)

    async def _ensure_push_token(self, ref: ObjectRef, key: str) -> None:
        """Read or create the push token's Secret before anything is pushed; when the API server does not
        answer, go on (the token file may have it) and keep trying in the background."""
        assert self.kube is not None
        self.token_secret = tokensecret.PushTokenSecret(
            ref=ref, key=key, read=self.kube.read_secret, create=self.kube.create_secret
        )
        try:
            await self.token_secret.ensure()
        except Exception as error:
            logger.warning("push token Secret %s not read or created yet: %s", ref, error)
            task = asyncio.create_task(self.token_secret.ensure_forever(), name="push-token")
            self._tasks.append(task)

    def _push_token_of_secret(self) -> str | None:
        return self.token_secret.token if self.token_secret is not None else None

    async def _expect_listed(self) -> None:
        """List the names of every watched object before kopf starts watching: the reconciler compiles
        only once all of them have come through kopf (see :meth:`Reconciler.prime`)."""
        assert self.kube is not None and self.reconciler is not None
        namespaces: tuple[str | None, ...] = self.settings.watched_namespaces() or (None,)
        try:
            for kind, _ in WATCHED:
                keys: set[state.Key] = set()
                for namespace in namespaces:
                    keys |= await self.kube.list_keys(kind, namespace)
                self.state.expect(kind, keys)
        except Exception as error:  # the API is unreachable or refuses: wait a little, then compile
            logger.warning("cannot list the watched objects (%s): compiling after %.0f s", error, LIST_GRACE)
            self._tasks.append(asyncio.create_task(self._prime_later(LIST_GRACE), name="prime"))
            return
        logger.info("%d objects exist: waiting for them before compiling", self.state.missing)
        self._tasks.append(asyncio.create_task(self.reconciler.prime_after(PRIME_TIMEOUT), name="prime"))

    async def _prime_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.reconciler is not None:
            self.reconciler.prime(reason="start-up listing failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.reconciler is not None:
            await self.reconciler.stop()  # nothing is pushed or written from here on ...
        if self.elector is not None:
            await self.elector.release()  # ... so a standby may take over at once
        if self.http is not None:
            await self.http.aclose()
        if self.kube is not None:
            await self.kube.close()

    def on_event(self, kind: str, event: dict[str, Any], body: Any) -> None:
        if self.reconciler is None:
            return
        if event.get("type") == "DELETED":
            self.reconciler.delete(kind, body)
        else:
            self.reconciler.upsert(kind, body)


def build_registry(app: App) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return await kopf.login_via_async_client(**kwargs)  # in-cluster or $KUBECONFIG, like kube.py

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # No cluster-wide list/watch of Namespaces and CRDs (kopf's "scanning"): the operator's RBAC does
        # not grant them. The namespaces are exactly those given (or all), the resources those found at
        # start-up. Runs before kopf starts its observers.
        settings.scanning.disabled = True
        settings.posting.enabled = False  # our Events are about routes, not about handlers
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        await app.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await app.stop()

    for kind, (group, version, plural) in WATCHED:

        def make(kind: str) -> Any:
            async def handler(event: dict[str, Any], body: Any, **_: Any) -> None:
                app.on_event(kind, event, body)

            handler.__name__ = f"on_{kind.lower()}"
            return handler

        kopf.on.event(group, version, plural, registry=registry, id=f"feed-{kind.lower()}")(make(kind))
    return registry
