"""The operator's in-memory view of its inputs, fed by thin kopf event handlers.

Holds a slimmed copy of every GatewayRoute (identity, generation, creation time, spec), EndpointSlice
and Service the compiler may need, so that a compile is a pure function of this view
(:meth:`ClusterState.bundle`). Each object is loaded (:func:`kubegate.compiler.resources.from_objects`)
once, when it changes, and the bundle is assembled from those pieces: with 10,000 routes, re-reading
every object on every compile took longer than the compile itself. Each update says whether
it changed anything the compiler reads: a status write by the operator itself (which comes back as a
watch event) or an unrelated annotation does not trigger a recompile.

It also derives the data-plane replicas (``host:port`` of the ``admin`` port) from the EndpointSlices of
the data-plane Service: every address, ready or not, because a new replica becomes ready only once it has
a table. The statuses last seen on the routes are kept apart, for the status writer to diff against.

Secrets are not watched yet: no GatewayRoute field references one (watching them would need list/watch
on every Secret of the cluster).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from kubegate.compiler import resources

Key = tuple[str, str]  # (namespace, name)
ADMIN_PORT_NAME = "admin"

GATEWAYROUTE = "GatewayRoute"
ENDPOINTSLICE = "EndpointSlice"
SERVICE = "Service"


@dataclasses.dataclass(frozen=True, order=True)
class Replica:
    """One data-plane replica's admin endpoint."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _identity(body: Mapping[str, Any]) -> Key | None:
    meta = _meta(body)
    name, namespace = meta.get("name"), meta.get("namespace") or resources.DEFAULT_NAMESPACE
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    return namespace, name


def _slim_route(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(body)
    slim_meta = {
        k: meta[k] for k in ("name", "namespace", "generation", "creationTimestamp", "uid") if k in meta
    }
    out: dict[str, Any] = {
        "apiVersion": body.get("apiVersion", resources.ROUTE_API_VERSION),
        "kind": body.get("kind", GATEWAYROUTE),
        "metadata": slim_meta,
    }
    for key, value in body.items():  # spec, and unknown top-level keys (the compiler reports those)
        if key not in ("apiVersion", "kind", "metadata", "status"):
            out[key] = value
    return out


def _slim_slice(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(body)
    labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
    assert isinstance(labels, Mapping)
    return {
        "apiVersion": resources.ENDPOINT_SLICE_API_VERSION,
        "kind": ENDPOINTSLICE,
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": {k: v for k, v in labels.items() if k == resources.SERVICE_NAME_LABEL},
        },
        "addressType": body.get("addressType"),
        "endpoints": [
            {"addresses": ep.get("addresses", []), "conditions": ep.get("conditions", {})}
            for ep in body.get("endpoints") or ()
            if isinstance(ep, Mapping)
        ],
        "ports": body.get("ports") or [],
    }


def _slim_service(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = _meta(body)
    spec = body.get("spec") if isinstance(body.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    return {
        "apiVersion": resources.CORE_API_VERSION,
        "kind": SERVICE,
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": {"ports": [{"name": p.get("name"), "port": p.get("port")} for p in spec.get("ports") or ()]},
    }


_SLIMMERS = {GATEWAYROUTE: _slim_route, ENDPOINTSLICE: _slim_slice, SERVICE: _slim_service}


class ClusterState:
    """Routes, slices and services by (namespace, name); ``revision`` counts compiler-visible changes."""

    def __init__(
        self, *, namespaces: tuple[str, ...] = (), dataplane_service: tuple[str, str] | None = None
    ) -> None:
        self.namespaces = frozenset(namespaces)
        self.dataplane_service = dataplane_service
        self.objects: dict[str, dict[Key, dict[str, Any]]] = {kind: {} for kind in _SLIMMERS}
        self._loaded: dict[str, dict[Key, resources.Bundle]] = {kind: {} for kind in _SLIMMERS}
        self._order: dict[str, list[Key] | None] = {kind: None for kind in _SLIMMERS}  # sorted keys
        self.observed_status: dict[str, Mapping[str, Any]] = {}  # "ns/name" → status seen on the route
        # The statuses the operator wrote ("ns/name" → status): a watch event bringing one back is kept as
        # that same object rather than a second copy (10,000 routes: ~15 MB).
        self.written_status: Mapping[str, Mapping[str, Any]] = {}
        self.revision = 0
        self.replicas_revision = 0
        self._generations: tuple[int, dict[str, int | None]] | None = None
        # Objects listed at start-up that no event has delivered yet (see :meth:`expect`).
        self._expected: dict[str, set[Key]] = {kind: set() for kind in _SLIMMERS}

    def _in_scope(self, kind: str, key: Key) -> bool:
        if kind == ENDPOINTSLICE and self.dataplane_service and key[0] == self.dataplane_service[0]:
            return True
        return not self.namespaces or key[0] in self.namespaces

    def expect(self, kind: str, keys: set[Key]) -> None:
        """Objects that exist (a listing at start-up): :attr:`missing` counts those no event has brought
        yet. Until it is 0 the view is partial, and compiling it would drop the routes not seen yet."""
        self._expected[kind] = {key for key in keys if self._in_scope(kind, key)} - set(self.objects[kind])

    @property
    def missing(self) -> int:
        return sum(len(keys) for keys in self._expected.values())

    def upsert(self, kind: str, body: Mapping[str, Any]) -> bool:
        """Record an added or modified object; True when the compiler (or replica set) sees a change."""
        key = _identity(body)
        if key is None or not self._in_scope(kind, key):
            return False
        self._expected[kind].discard(key)
        if kind == GATEWAYROUTE:
            status = body.get("status")
            if isinstance(status, Mapping):
                route = f"{key[0]}/{key[1]}"
                written = self.written_status.get(route)
                self.observed_status[route] = written if written is not None and written == status else status
        slim = _SLIMMERS[kind](body)
        table = self.objects[kind]
        if table.get(key) == slim:
            return False
        if key not in table:
            self._order[kind] = None
        table[key] = slim
        self._loaded[kind].pop(key, None)
        self._changed(kind, key)
        return True

    def delete(self, kind: str, body: Mapping[str, Any]) -> bool:
        key = _identity(body)
        if key is not None:
            self._expected[kind].discard(key)
        if key is None or self.objects[kind].pop(key, None) is None:
            return False
        self._loaded[kind].pop(key, None)
        self._order[kind] = None
        if kind == GATEWAYROUTE:
            self.observed_status.pop(f"{key[0]}/{key[1]}", None)
        self._changed(kind, key)
        return True

    def _changed(self, kind: str, key: Key) -> None:
        self.revision += 1
        if kind == ENDPOINTSLICE and self._is_dataplane_slice(self.objects[kind].get(key), key):
            self.replicas_revision += 1

    def _is_dataplane_slice(self, slim: Mapping[str, Any] | None, key: Key) -> bool:
        if self.dataplane_service is None or key[0] != self.dataplane_service[0]:
            return False
        if slim is None:  # deleted: it may have been one
            return True
        labels = slim["metadata"]["labels"]
        return bool(labels.get(resources.SERVICE_NAME_LABEL) == self.dataplane_service[1])

    def route_objects(self) -> Iterator[dict[str, Any]]:
        return iter(self.objects[GATEWAYROUTE].values())

    def route_generations(self) -> dict[str, int | None]:
        """``ns/name`` → metadata.generation of every route currently present (do not modify it)."""
        if self._generations is not None and self._generations[0] == self.revision:
            return self._generations[1]
        out: dict[str, int | None] = {}
        for (namespace, name), body in self.objects[GATEWAYROUTE].items():
            generation = body["metadata"].get("generation")
            out[f"{namespace}/{name}"] = generation if isinstance(generation, int) else None
        self._generations = (self.revision, out)
        return out

    def route_uid(self, key: str) -> str | None:
        """metadata.uid of the route ``ns/name``, if present."""
        namespace, _, name = key.partition("/")
        body = self.objects[GATEWAYROUTE].get((namespace, name))
        uid = body["metadata"].get("uid") if body is not None else None
        return uid if isinstance(uid, str) else None

    def bundle(self) -> resources.Bundle:
        """The compiler's input: every route, slice and service in scope, each loaded once per change."""
        out = resources.Bundle()
        for kind in (GATEWAYROUTE, SERVICE, ENDPOINTSLICE):
            objects, loaded = self.objects[kind], self._loaded[kind]
            order = self._order[kind]
            if order is None:
                order = self._order[kind] = sorted(objects)
            for key in order:
                part = loaded.get(key)
                if part is None:
                    source = f"cluster:{kind}/{key[0]}/{key[1]}"
                    part = loaded[key] = resources.from_objects([objects[key]], source=source)
                out.routes.extend(part.routes)
                out.endpoint_slices.extend(part.endpoint_slices)
                out.services.extend(part.services)
                out.problems.extend(part.problems)
        return out

    def replicas(self) -> list[Replica]:
        """Every address of the data-plane Service, ready or not (a replica gets ready once it has a table),
        except terminating ones."""
        if self.dataplane_service is None:
            return []
        found: set[Replica] = set()
        for key, slim in self.objects[ENDPOINTSLICE].items():
            if not self._is_dataplane_slice(slim, key):
                continue
            ports = [p.get("port") for p in slim["ports"] if isinstance(p, Mapping)]
            named = [
                p.get("port")
                for p in slim["ports"]
                if isinstance(p, Mapping) and p.get("name") == ADMIN_PORT_NAME
            ]
            port = named[0] if named else (ports[0] if len(ports) == 1 else None)
            if not isinstance(port, int):
                continue
            for endpoint in slim["endpoints"]:
                conditions = endpoint.get("conditions")
                if isinstance(conditions, Mapping) and conditions.get("terminating") is True:
                    continue  # shutting down: it will not serve a new table
                for address in endpoint.get("addresses") or ():
                    if isinstance(address, str) and address:
                        found.add(Replica(host=address, port=port))
        return sorted(found)

    def __repr__(self) -> str:
        counts = ", ".join(f"{len(v)} {k}" for k, v in self.objects.items())
        return f"<ClusterState revision={self.revision}: {counts}>"
