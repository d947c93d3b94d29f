"""The compiled route table: the intermediate representation between the compiler and the data plane.

The compiler produces a :class:`RouteTable`; the operator pushes it as JSON to every data-plane replica
(``PUT /table``); standalone mode builds it in-process. The data plane validates it with these same models
before swapping it in, so a malformed push is rejected with the model's own error messages.

Every route carries provenance (``id`` = ``namespace/name``, ``generation``) so that the data plane's
``/routes`` view, metrics labels and the operator's ``Programmed`` condition all name the object that
produced it. The content hash covers the routes only (not the version string), so compiling the same
inputs twice gives the same hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

TableApiVersion = Literal["kubegate.dev/v1alpha1"]
TABLE_API_VERSION: TableApiVersion = "kubegate.dev/v1alpha1"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024

PathType = Literal["Exact", "Prefix", "Glob"]
ValueType = Literal["Exact", "RegularExpression"]


class _Frozen(BaseModel):
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

    _wire: dict[str, object] | None = PrivateAttr(default=None)

    def wire(self) -> dict[str, object]:
        """The route's JSON-able form, computed once (the operator reuses unchanged routes between tables)."""
        if self._wire is None:
            self._wire = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return self._wire


class RouteTable(_Frozen):
    api_version: TableApiVersion = Field(default=TABLE_API_VERSION, alias="apiVersion")
    version: str = Field(default="0", min_length=1)
    routes: tuple[CompiledRoute, ...] = ()

    # The routes' wire form and hash, computed once per routes tuple: the operator hashes, pushes and
    # stores every table, and dumping 10,000 routes is the expensive part. Keyed by the tuple's identity,
    # so ``model_copy(update={"version": ...})`` shares it and a copy with other routes does not.
    _wire_cache: tuple[int, list[dict[str, object]], str] | None = PrivateAttr(default=None)

    def _routes_wire(self) -> tuple[list[dict[str, object]], str]:
        cache = self._wire_cache
        if cache is None or cache[0] != id(self.routes):
            wire = [r.wire() for r in self.routes]
            blob = json.dumps(wire, sort_keys=True, separators=(",", ":")).encode()
            cache = self._wire_cache = (id(self.routes), wire, "sha256:" + hashlib.sha256(blob).hexdigest())
        return cache[1], cache[2]

    def content_hash(self) -> str:
        """sha256 over the canonical JSON of the routes; the version string is not part of it."""
        return self._routes_wire()[1]

    def to_wire(self) -> dict[str, object]:
        """The JSON-able form pushed to ``PUT /table`` and printed by ``kubegate compile``."""
        return {"apiVersion": self.api_version, "version": self.version, "routes": self._routes_wire()[0]}

    @classmethod
    def from_wire(cls, data: object, *, previous: RouteTable | None = None) -> RouteTable:
        """Validate a pushed table. Routes equal (in wire form) to one of ``previous`` reuse its
        already-validated object, so a push that changes a few of 10,000 routes validates a few."""
        if previous is not None and isinstance(data, dict) and isinstance(data.get("routes"), list):
            known = {r.id: r for r in previous.routes}
            routes: list[object] = []
            for item in data["routes"]:
                old = known.get(str(item.get("id"))) if isinstance(item, dict) else None
                routes.append(old if old is not None and old.wire() == item else item)
            data = {**data, "routes": routes}
        return cls.model_validate(data)
