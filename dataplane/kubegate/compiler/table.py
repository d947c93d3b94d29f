"""The compiled route table: the intermediate representation between the compiler and the data plane.

The compiler produces a :class:`RouteTable`; the operator pushes it as JSON to every data-plane replica
(``PUT /table``); standalone mode builds it in-process. The data plane validates it with these same models
before swapping it in, so a malformed push is rejected with the model's own error messages.

Every route carries provenance (``id`` = ``namespace/name``, ``generation``) so that the data plane's
``/routes`` view, metrics labels and the operator's ``Programmed`` condition all name the object that
produced it. The content hash covers the routes only (not the version string), so compiling the same
inputs twice gives the same hash. It is built from one digest per route (sha256 over the route's canonical
JSON, computed once per route object), so a table that shares most route objects with the last one hashes
in a millisecond, and a data plane can check a :class:`TableDelta` (the routes that changed) against it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from kubegate.api.lean import LeanModel

TableApiVersion = Literal["kubegate.dev/v1alpha1"]
TABLE_API_VERSION: TableApiVersion = "kubegate.dev/v1alpha1"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024

PathType = Literal["Exact", "Prefix", "Glob"]
ValueType = Literal["Exact", "RegularExpression"]


class _Frozen(LeanModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class PathMatch(_Frozen):
    type: PathType = "Prefix"
    value: str = "/"


class ValueMatch(_Frozen):
    """A header or query-parameter condition. Header names are compared case-insensitively."""

    name: str = Field(min_length=1)
    value: str
    type: ValueType = "Exact"

    @model_validator(mode="after")
    def _regex_compiles(self) -> ValueMatch:
        if self.type == "RegularExpression":
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {self.value!r}: {exc}") from exc
        return self


class RouteMatch(_Frozen):
    path: PathMatch = PathMatch()
    methods: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = Field(default=(), alias="queryParams")


class Endpoint(_Frozen):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


class CompiledBackend(_Frozen):
    """One weighted backend of a route.

    ``error`` is set when the backend reference could not be resolved (for example a Service that does
    not exist): the share of traffic that picks this backend gets 500, as the Gateway API specifies.
    An empty ``endpoints`` list with no error means "exists, nothing ready": 503.
    """

    name: str = Field(min_length=1)
    weight: int = Field(default=1, ge=0)
    endpoints: tuple[Endpoint, ...] = ()
    error: str | None = None


class CompiledRoute(_Frozen):
    id: str = Field(min_length=1, description="namespace/name of the GatewayRoute")
    namespace: str
    name: str
    generation: int | None = None
    created: str = Field(default="", description="creationTimestamp, for precedence between equal matches")
    match: RouteMatch = RouteMatch()
    backends: tuple[CompiledBackend, ...] = Field(min_length=1)
    timeout_ms: int | None = Field(default=None, ge=1, alias="timeoutMs")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=0, alias="maxBodyBytes")

    _digest: bytes | None = PrivateAttr(default=None)
    _encoded: bytes | None = PrivateAttr(default=None)

    # The caches below are read through ``__pydantic_private__`` (a slot) rather than as ``self._wire``:
    # pydantic resolves private attributes in ``__getattr__``, which made hashing a table of 10,000
    # already-hashed routes take 0.1 s instead of 3 ms.

    def wire(self) -> dict[str, object]:
        """The route's JSON-able form (not kept: at 10,000 routes the dicts weigh 13 MB, and the encoding and
        digest below are what pushes and hashes need)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def encoded(self) -> bytes:
        """The route's canonical JSON (sorted keys, no spaces), computed once: the operator assembles whole
        tables from these without encoding 10,000 routes again for every push."""
        private = _private(self)
        encoded: bytes | None = private["_encoded"]
        if encoded is None:
            encoded = private["_encoded"] = _canonical(self.wire())
        return encoded

    def digest(self) -> bytes:
        """sha256 of the route's canonical JSON, computed once."""
        private = _private(self)
        digest: bytes | None = private["_digest"]
        if digest is None:
            encoded = private["_encoded"]
            # a data plane hashes every pushed route once: no need to keep the encoding
            digest = hashlib.sha256(encoded).digest() if encoded is not None else _digest(self.wire())
            private["_digest"] = digest
        return digest


def _canonical(wire: object) -> bytes:
    return json.dumps(wire, sort_keys=True, separators=(",", ":")).encode()


def _digest(wire: object) -> bytes:
    """A route's digest from its wire form (what :meth:`CompiledRoute.digest` computes)."""
    return hashlib.sha256(_canonical(wire)).digest()


def _private(model: BaseModel) -> dict[str, Any]:
    private = model.__pydantic_private__
    assert private is not None  # the model declares private attributes
    return private


class RouteTable(_Frozen):
    api_version: TableApiVersion = Field(default=TABLE_API_VERSION, alias="apiVersion")
    version: str = Field(default="0", min_length=1)
    routes: tuple[CompiledRoute, ...] = ()

    # The hash, computed once per routes tuple. Keyed by the tuple's identity, so
    # ``model_copy(update={"version": ...})`` shares it and a copy with other routes does not.
    _hash_cache: tuple[int, str] | None = PrivateAttr(default=None)

    def content_hash(self) -> str:
        """sha256 over the routes' digests, in table order; the version string is not part of it."""
        cache = self._hash_cache
        if cache is None or cache[0] != id(self.routes):
            cache = self._hash_cache = (id(self.routes), hash_routes(self.routes))
        return cache[1]

    def to_wire(self) -> dict[str, object]:
        """The JSON-able form pushed to ``PUT /table`` and printed by ``kubegate compile``."""
        return {
            "apiVersion": self.api_version,
            "version": self.version,
            "routes": [r.wire() for r in self.routes],
        }

    def encode(self) -> bytes:
        """``to_wire()`` as compact JSON, assembled from the routes' cached encodings."""
        head, tail = self._frame()
        return head + b",".join(r.encoded() for r in self.routes) + tail

    def encoded_size(self) -> int:
        """``len(self.encode())``, without building it."""
        head, tail = self._frame()
        commas = max(len(self.routes) - 1, 0)
        return len(head) + sum(len(r.encoded()) for r in self.routes) + commas + len(tail)

    def _frame(self) -> tuple[bytes, bytes]:
        """What :meth:`encode` puts around the routes' encodings."""
        head = json.dumps({"apiVersion": self.api_version, "version": self.version}, separators=(",", ":"))
        return head[:-1].encode() + b',"routes":[', b"]}"

    @classmethod
    def from_wire(cls, data: object, *, previous: RouteTable | None = None) -> RouteTable:
        """Validate a pushed table. Routes equal (in wire form) to one of ``previous`` reuse its
        already-validated object, so a push that changes a few of 10,000 routes validates a few."""
        if previous is not None and isinstance(data, dict) and isinstance(data.get("routes"), list):
            known = {r.id: r for r in previous.routes}
            routes: list[object] = []
            for item in data["routes"]:
                old = known.get(str(item.get("id"))) if isinstance(item, dict) else None
                # equal canonical JSON, equal route (pydantic's dump is canonical: what we push is a dump)
                same = old is not None and _digest(item) == old.digest()
                routes.append(old if same else item)
            data = {**data, "routes": routes}
        return cls.model_validate(data)


def hash_routes(routes: Sequence[CompiledRoute]) -> str:
    digest = hashlib.sha256()
    for route in routes:
        digest.update(route.digest())
    return "sha256:" + digest.hexdigest()


class TableDelta(_Frozen):
    """The difference between two tables, pushed with ``PATCH /table`` instead of the whole table.

    ``base`` is the content hash of the table the delta applies to and ``hash`` the content hash of the
    result; the result's routes are ordered by ``id`` (the compiler's order). A data plane serving another
    table answers 409, and the sender pushes the whole table instead.
    """

    api_version: TableApiVersion = Field(default=TABLE_API_VERSION, alias="apiVersion")
    version: str = Field(min_length=1)
    base: str = Field(min_length=1)
    hash: str = Field(min_length=1)
    upsert: tuple[CompiledRoute, ...] = ()
    remove: tuple[str, ...] = ()

    @classmethod
    def between(cls, base: RouteTable, target: RouteTable) -> TableDelta:
        """The delta turning ``base`` into ``target`` (whose routes must be ordered by id)."""
        before = {r.id: r for r in base.routes}
        upsert = []
        for route in target.routes:
            old = before.pop(route.id, None)
            if old is None or (old is not route and old.digest() != route.digest()):
                upsert.append(route)
        return cls(
            version=target.version,
            base=base.content_hash(),
            hash=target.content_hash(),
            upsert=tuple(upsert),
            remove=tuple(sorted(before)),
        )

    def to_wire(self) -> dict[str, object]:
        return {
            "apiVersion": self.api_version,
            "version": self.version,
            "base": self.base,
            "hash": self.hash,
            "upsert": [r.wire() for r in self.upsert],
            "remove": list(self.remove),
        }

    def apply(self, base: RouteTable) -> RouteTable:
        """The table this delta makes of ``base``. Raises :class:`DeltaConflict` when ``base`` is not the
        table it was made for, or when the result is not the one it announces."""
        if base.content_hash() != self.base:
            raise DeltaConflict(
                f"the delta applies to table {self.base}, this one serves {base.content_hash()}"
            )
        routes = {r.id: r for r in base.routes}
        for route_id in self.remove:
            routes.pop(route_id, None)
        for route in self.upsert:
            routes[route.id] = route
        ordered = tuple(routes[key] for key in sorted(routes))
        # Every route is already validated (the base's, or this delta's): no need to validate 10,000 again.
        table = RouteTable.model_construct(version=self.version, routes=ordered)
        if table.content_hash() != self.hash:
            raise DeltaConflict(
                f"the delta gives table {table.content_hash()}, not the announced {self.hash}"
            )
        return table


class DeltaConflict(ValueError):
    """A :class:`TableDelta` does not fit the table being served."""
