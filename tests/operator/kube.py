"""A Kubernetes API emulator for operator tests: kmock, made realistic enough for kopf, in its own thread.

Stock ``kmock.KubernetesEmulator`` stamps no ``resourceVersion``/``uid``/``generation``, never bumps them,
answers a failed JSON-patch ``test`` with 500 and keeps every request in a log it matches against (so it
slows down as a test goes on). :class:`RealisticEmulator` fixes those: it computes each patch itself,
stamps the metadata an API server would, answers 422 on a failed ``test`` (kopf and our lease code treat
that as a conflict), 409 on a duplicate create, lets a patch of the status subresource remove the status
(as the API server does), and trims the request log.

:class:`KubeAPI` runs the emulator on its own event loop in a background thread (the operator under test
runs as a separate process with ``KUBECONFIG`` pointing here) and gives tests a small synchronous client
(``create``, ``patch``, ``delete``, ``get``, ``list``), like ``kubectl`` would, and ``history``: every
version an object has had (for instance the Lease records written by competing operators).

Also fixed here: kmock 0.8 cannot parse ``/api/v1/namespaces`` (it takes ``namespaces`` for the start of a
namespaced path and fails with 500), so the path parser is wrapped to read it as the cluster-scoped
``namespaces`` resource; the emulator creates a Namespace object for every namespace an object is created
in (a real API server refuses objects in a missing namespace; tests here never create Namespaces first);
``metadata.generateName`` gets a random suffix as on a real server (kopf and our Events use it). The
emulator records which client (User-Agent) asked for which path, so that tests can check what the operator
requests (for instance, never the cluster-wide Namespaces or CRDs its RBAC does not grant).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import secrets
import string
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import httpx
import jsonpatch
import kmock
import kmock._internal.parsing as kmock_parsing
import yaml

ROUTES = "kubegate.dev/v1alpha1/gatewayroutes"
SLICES = "discovery.k8s.io/v1/endpointslices"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
LEASES = "coordination.k8s.io/v1/leases"
NAMESPACES = "v1/namespaces"

_NAMESPACES = kmock.resource("", "v1", "namespaces")
_original_parse_path = kmock_parsing.parse_path


def _parse_path(path: str) -> kmock_parsing.ParsedPath:
    """kmock's parser, except that ``/api/v1/namespaces[/NAME]`` is the cluster-scoped Namespace resource
    (kmock reads ``namespaces`` as the start of ``/namespaces/NS/...`` and crashes on the missing NS)."""
    parts = path.strip("/").split("/")
    if len(parts) in (3, 4) and parts[0] == "api" and parts[2] == "namespaces":
        name = parts[3] if len(parts) == 4 else None
        return kmock_parsing.ParsedPath(group="", version=parts[1], plural="namespaces", name=name)
    return _original_parse_path(path)


kmock_parsing.parse_path = _parse_path


def _merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch turning ``old`` into ``new`` (None deletes; lists and scalars replace)."""
    out: dict[str, Any] = {}
    for key in old:
        if key not in new:
            out[key] = None
    for key, value in new.items():
        before = old.get(key, ...)
        if isinstance(before, Mapping) and isinstance(value, Mapping):
            sub = _merge_diff(before, value)
            if sub:
                out[key] = sub
        elif before != value:
            out[key] = value
    return out


def _merge(old: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(old) if isinstance(old, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


@attrs.define(kw_only=True)
class RealisticEmulator(kmock.KubernetesEmulator):
    _rv: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)
    # (client, method, path, watch?) of every request seen; client is the User-Agent's product name.
    seen: set[tuple[str, str, str, bool]] = attrs.field(factory=set, init=False)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        agent = str(request.headers.get("User-Agent", "")).split("/", 1)[0]
        watch = request.params.get("watch") in ("true", "1")
        self.seen.add((agent, str(request.method.value), request.url.path, watch))
        try:
            return await self._realistic(request)
        finally:
            self._forget(request)

    def requested(self, path_part: str, *, exclude_agent: str = "python-httpx") -> set[str]:
        """Paths containing ``path_part`` asked for by any client but ``exclude_agent`` (the test's own)."""
        return {
            f"{method} {path}{'?watch' if watch else ''}"
            for agent, method, path, watch in self.seen
            if path_part in path and agent != exclude_agent
        }

    async def _ensure_namespace(self, namespace: str | None) -> None:
        if not namespace or (_NAMESPACES, None, namespace) in self.objects:
            return
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(next(self._rv)),
                "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "status": {"phase": "Active"},
        }
        async with self._lock:
            self.objects[_NAMESPACES, None, namespace] = body
            await self._buses[_NAMESPACES].put({"type": "ADDED", "object": body})

    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[Any]:
        """kmock finds the objects of every request by scanning all objects (15 ms per request with 10,000
        routes); a request naming one object looks it up by key instead."""
        named = request.name is not None and request.resource is not None
        if named and (strict or request.namespace is not None):
            found = self._objects._objects.get((request.resource, request.namespace, request.name))
            if found is not None:
                return [found]
        return list(super()._KubernetesEmulator__get_objs(request, strict))  # type: ignore[misc]

    def _forget(self, request: kmock.Request) -> None:
        """kmock matches each request against its whole log (by identity): drop finished ones, so that
        it does not slow down as a test goes on (no test asserts on the log)."""
        self._requests[:] = [r for r in self._requests if r is not request]
        for payload in self._payloads:
            payload._requests[:] = [r for r in payload._requests if r is not request]

    async def _replace(self, request: kmock.Request, data: Any) -> aiohttp.web.StreamResponse:
        """Handle ``request`` with its body replaced by ``data`` (kmock finds requests in its log)."""
        new = attrs.evolve(request, data=data)
        self._requests.append(new)
        try:
            return await super()._handle(new)
        finally:
            self._forget(new)

    async def _realistic(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None:
            return await super()._handle(request)
        if request.action == kmock.action.CREATE and isinstance(request.data, Mapping):
            body = copy.deepcopy(dict(request.data))
            meta = body.setdefault("metadata", {})
            meta.setdefault("namespace", request.namespace)
            if meta.get("namespace") is None:
                del meta["namespace"]
            if not meta.get("name") and meta.get("generateName"):
                alphabet = string.ascii_lowercase + string.digits
                meta["name"] = str(meta["generateName"]) + "".join(secrets.choice(alphabet) for _ in range(5))
            await self._ensure_namespace(meta.get("namespace"))
            key = (request.resource, meta.get("namespace"), meta.get("name"))
            if key in self.objects and not self.objects[key].deleted:
                raise kmock.KubernetesError(status=409, reason="AlreadyExists", message="already exists")
            meta.update(
                uid=str(uuid.uuid4()),
                resourceVersion=str(next(self._rv)),
                creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                generation=1,
            )
            body.pop(
                "status", None
            ) if "spec" in body and request.resource.plural == "gatewayroutes" else None
            return await self._replace(request, body)
        if request.action == kmock.action.UPDATE and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            old = copy.deepcopy(self.objects[key].raw)
            data = request.data
            if isinstance(data, list):
                try:
                    new = jsonpatch.apply_patch(old, data, in_place=False)
                except jsonpatch.JsonPatchTestFailed as error:
                    raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from None
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                    raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from None
            elif isinstance(data, Mapping):
                new = _merge(old, data)
            else:
                raise kmock.KubernetesError(status=415, reason="UnsupportedMediaType", message="bad patch")
            new = copy.deepcopy(new)
            meta = new.setdefault("metadata", {})
            for field in ("uid", "creationTimestamp", "name", "namespace"):
                if field in old.get("metadata", {}):
                    meta[field] = old["metadata"][field]
            if request.subresource == "status":  # the status subresource changes the status only ...
                status = {"status": new["status"]} if "status" in new else {}  # ... or removes it
                new = {**{k: v for k, v in old.items() if k != "status"}, **status}
                new["metadata"] = dict(old.get("metadata", {}))
                meta = new["metadata"]
            elif "status" in old and request.resource.plural == "gatewayroutes":
                new["status"] = old["status"]  # ... and the main resource never changes the status
            generation = int(old.get("metadata", {}).get("generation", 1))
            if new.get("spec") != old.get("spec"):
                generation += 1
            meta["generation"] = generation
            meta["resourceVersion"] = str(next(self._rv))
            return await self._replace(request, _merge_diff(old, new))
        return await super()._handle(request)


GATEWAYROUTE_INFO = kmock.ResourceInfo(
    kind="GatewayRoute",
    singular="gatewayroute",
    namespaced=True,
    shortnames={"gwr"},
    verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    subresources={"status"},
)


class KubeClient:
    """A tiny kubectl over ``self.client`` (an ``httpx.Client`` whose base URL is an API server): the calls
    the tests and ``bench/convergence_bench.py`` make, against the emulator or a real API server."""

    client: httpx.Client

    @staticmethod
    def _base(resource: str, namespace: str | None) -> str:
        group_version, plural = resource.rsplit("/", 1)
        prefix = "/api/" + group_version if "/" not in group_version else "/apis/" + group_version
        return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"

    def _check(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise RuntimeError(
                f"{response.request.method} {response.request.url}: {response.status_code} "
                f"{response.text[:300]}"
            )
        return dict(response.json())

    def create(self, resource: str, body: Mapping[str, Any]) -> dict[str, Any]:
        namespace = body["metadata"].get("namespace", "default")
        return self._check(self.client.post(self._base(resource, namespace), json=dict(body)))

    def patch(self, resource: str, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self._check(
            self.client.patch(
                f"{self._base(resource, namespace)}/{name}",
                json=dict(patch),
                headers={"content-type": "application/merge-patch+json"},
            )
        )

    def delete(self, resource: str, namespace: str, name: str) -> None:
        self._check(self.client.delete(f"{self._base(resource, namespace)}/{name}"))

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        response = self.client.get(f"{self._base(resource, namespace)}/{name}")
        return None if response.status_code == 404 else self._check(response)

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return list(self._check(self.client.get(self._base(resource, namespace)))["items"])


class KubeAPI(KubeClient):
    """The emulator on a background thread, plus a synchronous client for the test itself."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.emulator: RealisticEmulator | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, daemon=True, name="kube-api")
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the Kubernetes API emulator did not start")
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        emulator = RealisticEmulator()
        emulator.resources.load_bundled()
        emulator.resources[ROUTES] = GATEWAYROUTE_INFO
        async with emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        self.client.close()
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "kmock-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            "current-context": "kmock",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def history(self, resource: str, namespace: str, name: str) -> list[dict[str, Any]]:
        """Every version the object has had, oldest first (kmock keeps them; None marks a deletion and
        is left out), read on the emulator's own loop."""

        async def read() -> list[dict[str, Any]]:
            assert self.emulator is not None
            try:
                versions = list(self.emulator.objects[resource, namespace, name].history)
            except KeyError:
                return []
            return [copy.deepcopy(dict(v.raw)) for v in versions if v is not None]

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)
