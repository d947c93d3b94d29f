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

Secrets: kopf watches every Secret of the watched namespaces, but this view keeps the data of only those
that some route's ``spec.auth`` names (in the route's own namespace, like backends; see
:func:`secret_names`). Any other Secret is dropped on arrival: only its name is remembered (in
``secrets_seen``), so that a route that starts naming it later knows that it exists. Such a Secret
becomes *wanted* (:attr:`ClusterState.wanted`): the reconciler reads it from the API (one GET) and
hands it back through :meth:`ClusterState.fetched`. Each time a Secret becomes wanted it gets a new
ticket, and a read is applied only if its ticket is still the current one: a watch event that
arrived meanwhile (newer data, or a deletion) or a route that stopped naming it makes the read stale.
That is simpler than keeping every Secret (the cluster's Secrets stay out of the operator's memory) and
than re-listing them (one read per newly named Secret).

Secret material never reaches a log line: kept Secrets are :class:`SecretBody` objects, whose repr
shows only their name and keys; this module logs names only.

Gateway classes (several kubegate instances in one cluster): this view holds only the routes of its
operator's class (:meth:`ClusterState.serves`: ``spec.gatewayClassName`` equal to ``--gateway-class``, or
unset when that is the default class, ``kubegate``). A route of another class is treated as absent the
moment its event arrives (a route that moves to another class is dropped as if deleted), so it never
reaches a compile, not even the first one after a restart. The filter is here rather than in the
compiler, which stays a pure function of its bundle and knows nothing of operators: the bundle simply
is one instance's input, so conflicts (the same match in two routes) are found among the routes of one
class only, as they should be (two gateways may serve the same path), and another class's routes cost
no validation, no Secret tracking and no recompile. For the same reason the bundle holds only the
Services and EndpointSlices that this class's routes name (every one in scope is kept, slimmed, so that
a route that starts naming one needs no read), and a change to any other one triggers no compile.

A route that leaves this class after this operator wrote its status is remembered in
:attr:`ClusterState.released` with the ``observedGeneration`` of that (now stale) status: the status
writer removes it, unless another instance has written the route's status since (see
:mod:`kubegate_operator.status`).

The Secrets kubegate uses itself are never route Secrets, even when a route names one: the bootstrap
Secret (``reserved``, by name) and, in the data plane's namespace, every Secret labelled
``app.kubernetes.io/part-of: kubegate`` (the chart's push-token Secret). Such a route gets
``ResolvedRefs=False`` (``SecretNotFound``) and a warning in the log.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kubegate.compiler import resources
from kubegate_operator.settings import DEFAULT_GATEWAY_CLASS

logger = logging.getLogger("kubegate.operator")

Key = tuple[str, str]  # (namespace, name)
ADMIN_PORT_NAME = "admin"

GATEWAYROUTE = "GatewayRoute"
ENDPOINTSLICE = "EndpointSlice"
SERVICE = "Service"
SECRET = "Secret"
KINDS = (GATEWAYROUTE, ENDPOINTSLICE, SERVICE, SECRET)

PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "kubegate"  # the chart's label on the Secrets it creates (the push token)


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


class SecretBody(dict[str, Any]):
    """A kept Secret (slimmed): a plain dict for the compiler, whose repr names the Secret and its keys
    but never shows a value."""

    def __repr__(self) -> str:
        meta = self.get("metadata") or {}
        keys = sorted({*(self.get("data") or {}), *(self.get("stringData") or {})})
        return f"<Secret {meta.get('namespace')}/{meta.get('name')} keys={keys}>"

    __str__ = __repr__


def _slim_secret(body: Mapping[str, Any]) -> SecretBody:
    meta = _meta(body)
    out = SecretBody(
        apiVersion=resources.CORE_API_VERSION,
        kind=SECRET,
        metadata={"name": meta.get("name"), "namespace": meta.get("namespace")},
    )
    for field in ("data", "stringData"):  # the API server returns data only; stringData: kept as given
        values = body.get(field)
        if isinstance(values, Mapping):
            out[field] = {k: v for k, v in values.items() if isinstance(k, str) and isinstance(v, str)}
    return out


def route_class(route: Mapping[str, Any]) -> str | None:
    """``spec.gatewayClassName`` of a route body; None when unset. A value that is not a string (the CRD
    refuses it; only a server without the CRD's schema lets one through) counts as unset, so that the
    default class reports the route as invalid rather than nobody reporting it at all."""
    spec = route.get("spec")
    name = spec.get("gatewayClassName") if isinstance(spec, Mapping) else None
    return name if isinstance(name, str) else None


def service_names(route: Mapping[str, Any]) -> frozenset[str]:
    """The Services (names, in the route's namespace) a route body's backends name."""
    spec = route.get("spec")
    backends = spec.get("backends") if isinstance(spec, Mapping) else None
    if not isinstance(backends, list):
        return frozenset()
    names = (backend.get("service") for backend in backends if isinstance(backend, Mapping))
    return frozenset(name for name in names if isinstance(name, str) and name)


def secret_names(route: Mapping[str, Any]) -> frozenset[str]:
    """The Secrets (names, in the route's namespace) a route body names: the same fields as
    :func:`kubegate.compiler.edge.secret_refs` (spec.auth: jwt.jwksSecretRef, jwt.secretRef,
    apiKey.secretRef), :func:`kubegate.compiler.tls.secret_refs` (spec.tls.certificateRefs) and
    :func:`kubegate.compiler.backendtls.secret_refs` (spec.backends[].tls.caSecretRef), read from the raw
    object so that an invalid spec costs nothing (it is rejected anyway)."""
    spec = route.get("spec")
    if not isinstance(spec, Mapping):
        return frozenset()
    refs: list[object] = []
    auth = spec.get("auth")
    if isinstance(auth, Mapping):
        jwt, api_key = auth.get("jwt"), auth.get("apiKey")
        if isinstance(jwt, Mapping):
            refs += [jwt.get("jwksSecretRef"), jwt.get("secretRef")]
        if isinstance(api_key, Mapping):
            refs.append(api_key.get("secretRef"))
    tls = spec.get("tls")
    if isinstance(tls, Mapping) and isinstance(tls.get("certificateRefs"), list):
        refs += tls["certificateRefs"]
    backends = spec.get("backends")
    if isinstance(backends, list):
        for backend in backends:
            backend_tls = backend.get("tls") if isinstance(backend, Mapping) else None
            if isinstance(backend_tls, Mapping):
                refs.append(backend_tls.get("caSecretRef"))
    names = (ref.get("name") for ref in refs if isinstance(ref, Mapping))
    return frozenset(name for name in names if isinstance(name, str) and name)


_SLIMMERS = {GATEWAYROUTE: _slim_route, ENDPOINTSLICE: _slim_slice, SERVICE: _slim_service}


class ClusterState:
    """The routes of one gateway class, slices, services and the Secrets routes name, by (namespace,
    name); ``revision`` counts compiler-visible changes."""

    def __init__(
        self,
        *,
        namespaces: tuple[str, ...] = (),
        dataplane_service: tuple[str, str] | None = None,
        reserved: Iterable[Key] = (),
        gateway_class: str = DEFAULT_GATEWAY_CLASS,
    ) -> None:
        self.namespaces = frozenset(namespaces)
        self.gateway_class = gateway_class
        self.dataplane_service = dataplane_service
        self.reserved = frozenset(reserved)  # kubegate's own Secrets (the bootstrap Secret)
        self.objects: dict[str, dict[Key, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self._loaded: dict[str, dict[Key, resources.Bundle]] = {kind: {} for kind in KINDS}
        self._order: dict[str, list[Key] | None] = {kind: None for kind in KINDS}  # sorted keys
        # Secrets: which route names which (names only), the existing ones not kept, kubegate's own.
        self._route_secrets: dict[Key, frozenset[Key]] = {}
        self._referrers: dict[Key, set[Key]] = {}
        self.secrets_seen: set[Key] = set()
        self._own_secrets: set[Key] = set()
        self.wanted: dict[Key, int] = {}  # Secret → ticket: named, existing, not kept; to be read
        self._tickets = itertools.count(1)
        # Services that routes name (names only): only those (and their slices) go into the bundle.
        self._route_services: dict[Key, frozenset[Key]] = {}
        self._service_referrers: dict[Key, int] = {}  # Service → how many routes name it
        # "ns/name" → observedGeneration of the stale status of a route that left this class (see above)
        self.released: dict[str, int] = {}
        self._foreign: set[Key] = set()  # the routes of other classes (names only)
        self.observed_status: dict[str, Mapping[str, Any]] = {}  # "ns/name" → status seen on the route
        # The statuses the operator wrote ("ns/name" → status): a watch event bringing one back is kept as
        # that same object rather than a second copy (10,000 routes: ~15 MB).
        self.written_status: Mapping[str, Mapping[str, Any]] = {}
        self.revision = 0
        self.replicas_revision = 0
        self._generations: tuple[int, dict[str, int | None]] | None = None
        # Objects listed at start-up that no event has delivered yet (see :meth:`expect`).
        self._expected: dict[str, set[Key]] = {kind: set() for kind in KINDS}

    def _in_scope(self, kind: str, key: Key) -> bool:
        if kind == ENDPOINTSLICE and self.dataplane_service and key[0] == self.dataplane_service[0]:
            return True
        return not self.namespaces or key[0] in self.namespaces

    def expect(self, kind: str, keys: set[Key]) -> None:
        """Objects that exist (a listing at start-up): :attr:`missing` counts those no event has brought
        yet. Until it is 0 the view is partial, and compiling it would drop the routes not seen yet."""
        arrived = set(self.objects[kind])
        if kind == SECRET:  # most Secrets arrive and are dropped
            arrived |= self.secrets_seen | self._own_secrets
        if kind == GATEWAYROUTE:  # and so do other classes' routes
            arrived |= self._foreign
        self._expected[kind] = {key for key in keys if self._in_scope(kind, key)} - arrived

    @property
    def missing(self) -> int:
        return sum(len(keys) for keys in self._expected.values())

    def serves(self, route: Mapping[str, Any]) -> bool:
        """Whether a route body belongs to this state's gateway class."""
        name = route_class(route)
        return name == self.gateway_class if name is not None else self.gateway_class == DEFAULT_GATEWAY_CLASS

    def upsert(self, kind: str, body: Mapping[str, Any]) -> bool:
        """Record an added or modified object; True when the compiler (or replica set) sees a change."""
        key = _identity(body)
        if key is None or not self._in_scope(kind, key):
            return False
        self._expected[kind].discard(key)
        if kind == SECRET:
            return self._upsert_secret(key, body)
        if kind == GATEWAYROUTE:
            if not self.serves(body):
                return self._leave(key, body)
            self._foreign.discard(key)
            self.released.pop(f"{key[0]}/{key[1]}", None)
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
        before = table.get(key)
        table[key] = slim
        self._loaded[kind].pop(key, None)
        if kind == GATEWAYROUTE:
            self._name_secrets(key, secret_names(slim))
            self._name_services(key, service_names(slim))
        return self._changed(kind, key, slim, before)

    def delete(self, kind: str, body: Mapping[str, Any]) -> bool:
        key = _identity(body)
        if key is not None:
            self._expected[kind].discard(key)
            if kind == SECRET:
                self.secrets_seen.discard(key)
                self._own_secrets.discard(key)
                self.wanted.pop(key, None)
            if kind == GATEWAYROUTE:
                self._foreign.discard(key)
                self.released.pop(f"{key[0]}/{key[1]}", None)
        if key is None:
            return False
        return self._drop(kind, key)

    def _drop(self, kind: str, key: Key) -> bool:
        slim = self.objects[kind].pop(key, None)
        if slim is None:
            return False
        self._loaded[kind].pop(key, None)
        self._order[kind] = None
        if kind == GATEWAYROUTE:
            self.observed_status.pop(f"{key[0]}/{key[1]}", None)
            self._name_secrets(key, frozenset())
            self._name_services(key, frozenset())
        return self._changed(kind, key, slim)

    def _leave(self, key: Key, body: Mapping[str, Any]) -> bool:
        """A route of another class: absent from this view. If it was in it (it has just moved to another
        class) and carries a status older than its generation, that status is ours to remove."""
        route = f"{key[0]}/{key[1]}"
        self._foreign.add(key)
        if key in self.objects[GATEWAYROUTE]:
            status, generation = body.get("status"), _meta(body).get("generation")
            observed = status.get("observedGeneration") if isinstance(status, Mapping) else None
            if isinstance(observed, int) and not (isinstance(generation, int) and observed >= generation):
                self.released[route] = observed
        self.observed_status.pop(route, None)
        return self._drop(GATEWAYROUTE, key)

    # --- Secrets ---------------------------------------------------------------------------------

    def _is_own_secret(self, key: Key, body: Mapping[str, Any]) -> bool:
        if key in self.reserved:
            return True
        if self.dataplane_service is None or key[0] != self.dataplane_service[0]:
            return False
        labels = _meta(body).get("labels")
        return isinstance(labels, Mapping) and labels.get(PART_OF_LABEL) == PART_OF

    def _upsert_secret(self, key: Key, body: Mapping[str, Any]) -> bool:
        if self._is_own_secret(key, body):  # (the bootstrap Secret comes back after every table write)
            if key not in self._own_secrets:
                self._own_secrets.add(key)
                if key in self._referrers:
                    self._warn_own(key)
            self.secrets_seen.discard(key)
            self.wanted.pop(key, None)
            return self._drop_secret(key)
        self._own_secrets.discard(key)
        self.secrets_seen.add(key)
        if key not in self._referrers:
            return self._drop_secret(key)  # nobody names it: never kept
        self.wanted.pop(key, None)
        slim = _slim_secret(body)
        table = self.objects[SECRET]
        if table.get(key) == slim:
            return False
        if key not in table:
            self._order[SECRET] = None
        table[key] = slim
        self._loaded[SECRET].pop(key, None)
        return self._changed(SECRET, key, slim)

    def _drop_secret(self, key: Key) -> bool:
        slim = self.objects[SECRET].pop(key, None)
        if slim is None:
            return False
        self._loaded[SECRET].pop(key, None)
        self._order[SECRET] = None
        return self._changed(SECRET, key, slim)

    def _name_secrets(self, route: Key, names: frozenset[str]) -> None:
        """Route ``route`` now names the Secrets ``names`` (in its namespace): keep, want or drop them."""
        new = frozenset((route[0], name) for name in names)
        old = self._route_secrets.get(route, frozenset())
        if new == old:
            return
        if new:
            self._route_secrets[route] = new
        else:
            self._route_secrets.pop(route, None)
        for key in old - new:
            referrers = self._referrers.get(key)
            if referrers is not None:
                referrers.discard(route)
                if not referrers:
                    del self._referrers[key]
                    self.wanted.pop(key, None)
                    self._drop_secret(key)
        for key in new - old:
            self._referrers.setdefault(key, set()).add(route)
            if key in self._own_secrets:
                self._warn_own(key)
            elif key in self.secrets_seen and key not in self.objects[SECRET] and key not in self.wanted:
                self.wanted[key] = next(self._tickets)

    def _warn_own(self, key: Key) -> None:
        routes = ", ".join(sorted(f"{ns}/{name}" for ns, name in self._referrers.get(key, ())))
        logger.warning(
            "Secret %s/%s belongs to kubegate itself and is never used by routes (named by %s)",
            key[0],
            key[1],
            routes,
        )

    def fetched(self, key: Key, ticket: int, body: Mapping[str, Any] | None) -> bool:
        """The answer to the read of a wanted Secret (None: not found). Applied only if the Secret is still
        wanted under this ``ticket``: otherwise a watch event (or a route change) came after the read
        started, and the read may be stale. True when the compiler sees a change."""
        if self.wanted.get(key) != ticket:
            return False
        del self.wanted[key]
        if body is None or _identity(body) != key:
            self.secrets_seen.discard(key)  # gone: its DELETED event is on its way (or came already)
            return False
        return self.upsert(SECRET, body)

    def secrets_named(self) -> set[Key]:
        """Every Secret some route names (whether it exists or not)."""
        return set(self._referrers)

    # --- Services ---------------------------------------------------------------------------------

    def _name_services(self, route: Key, names: frozenset[str]) -> None:
        """Route ``route`` now names the Services ``names`` (in its namespace)."""
        new = frozenset((route[0], name) for name in names)
        old = self._route_services.get(route, frozenset())
        if new == old:
            return
        if new:
            self._route_services[route] = new
        else:
            self._route_services.pop(route, None)
        for key in old - new:
            count = self._service_referrers[key] - 1
            if count:
                self._service_referrers[key] = count
            else:
                del self._service_referrers[key]
        for key in new - old:
            self._service_referrers[key] = self._service_referrers.get(key, 0) + 1

    def services_named(self) -> set[Key]:
        """Every Service some route of this class names (whether it exists or not)."""
        return set(self._service_referrers)

    def _compiled(self, kind: str, key: Key, slim: Mapping[str, Any]) -> bool:
        """Whether the compiler reads this object: every route and kept Secret; a Service or an
        EndpointSlice only when a route names its Service."""
        if kind == SERVICE:
            return key in self._service_referrers
        if kind == ENDPOINTSLICE:
            service = slim["metadata"]["labels"].get(resources.SERVICE_NAME_LABEL)
            return (key[0], service) in self._service_referrers
        return True

    def _changed(
        self, kind: str, key: Key, slim: Mapping[str, Any], before: Mapping[str, Any] | None = None
    ) -> bool:
        """Count a change from ``before`` to ``slim`` (or the removal of ``slim``); True when the compiler
        or the replica set sees it (either version mattered: a slice relabelled away from a Service that
        a route names changes what that route compiles to)."""
        versions = (slim,) if before is None else (slim, before)
        compiled = any(self._compiled(kind, key, version) for version in versions)
        if compiled:
            self.revision += 1
        replicas = kind == ENDPOINTSLICE and any(self._is_dataplane_slice(v, key) for v in versions)
        if replicas:
            self.replicas_revision += 1
        return compiled or replicas

    def _is_dataplane_slice(self, slim: Mapping[str, Any], key: Key) -> bool:
        if self.dataplane_service is None or key[0] != self.dataplane_service[0]:
            return False
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
        """The compiler's input: every route of this class, and the Services, slices and Secrets they
        name, each loaded once per change."""
        out = resources.Bundle()
        for kind in (GATEWAYROUTE, SERVICE, ENDPOINTSLICE, SECRET):
            objects, loaded = self.objects[kind], self._loaded[kind]
            order = self._order[kind]
            if order is None:
                order = self._order[kind] = sorted(objects)
            for key in order:
                if kind in (SERVICE, ENDPOINTSLICE) and not self._compiled(kind, key, objects[key]):
                    continue
                part = loaded.get(key)
                if part is None:
                    source = f"cluster:{kind}/{key[0]}/{key[1]}"
                    part = loaded[key] = resources.from_objects([objects[key]], source=source)
                out.routes.extend(part.routes)
                out.endpoint_slices.extend(part.endpoint_slices)
                out.services.extend(part.services)
                out.secrets.extend(part.secrets)
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
        return (
            f"<ClusterState class={self.gateway_class} revision={self.revision}: {counts}; "
            f"{len(self._foreign)} routes of other classes>"
        )
