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

import codecs
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from kubegate.api import models
from kubegate.api.lean import LeanModel
from kubegate.compiler import regex
from kubegate.compiler.edge import EdgePolicy
from kubegate.compiler.policy import RoutePolicy
from kubegate.compiler.tls import RouteTls

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
    """A header or query-parameter condition. Header names are compared case-insensitively.

    A RegularExpression value is compiled (RE2, see :mod:`kubegate.compiler.regex`) when the model is
    validated, and the pattern is kept on this object: the matcher uses it, and it goes away with the
    table. A value RE2 cannot run, or one over 1024 bytes, fails validation (a pushed table gets 400).
    """

    name: str = Field(min_length=1)
    value: str
    type: ValueType = "Exact"

    _pattern: regex.Pattern | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _regex_compiles(self) -> ValueMatch:
        if self.type == "RegularExpression":
            try:
                _private(self)["_pattern"] = regex.compile(self.value)
            except regex.RegexError as exc:
                raise ValueError(f"value: {exc}") from exc
        return self

    def pattern(self) -> regex.Pattern | None:
        """The compiled pattern of a RegularExpression match (None for Exact). Compiled here when the
        object was built without validation (``model_construct``); raises :class:`regex.RegexError`."""
        if self.type != "RegularExpression":
            return None
        private = _private(self)
        pattern: regex.Pattern | None = private["_pattern"]
        if pattern is None:
            pattern = private["_pattern"] = regex.compile(self.value)
        return pattern


class RouteMatch(_Frozen):
    path: PathMatch = PathMatch()
    methods: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = Field(default=(), alias="queryParams")

    @model_validator(mode="after")
    def _regex_count(self) -> RouteMatch:
        count = sum(m.type == "RegularExpression" for m in (*self.headers, *self.query_params))
        if count > models.MAX_REGEX_MATCHES:
            raise ValueError(
                f"headers, queryParams: {count} RegularExpression matches, "
                f"more than {models.MAX_REGEX_MATCHES}"
            )
        return self


class Endpoint(_Frozen):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


class BackendTls(_Frozen):
    """TLS to a backend: verified against ``ca`` (PEM certificates from the route's Secret) or, when it
    is None, the system's CAs, for ``server_name`` (also the SNI); ``verify`` False skips verification
    (``insecureSkipVerify``). The CA is public material, but like every Secret-sourced value it is hidden
    from the table's views (:func:`kubegate.compiler.edge.redacted`)."""

    server_name: str = Field(min_length=1, alias="serverName")
    ca: str | None = None
    verify: bool = True


class CompiledBackend(_Frozen):
    """One weighted backend of a route.

    ``error`` is set when the backend reference could not be resolved (for example a Service that does
    not exist, or a CA Secret that is missing): the share of traffic that picks this backend gets 500,
    as the Gateway API specifies. An empty ``endpoints`` list with no error means "exists, nothing
    ready": 503. ``tls`` set: the gateway speaks TLS to it.
    """

    name: str = Field(min_length=1)
    weight: int = Field(default=1, ge=0)
    endpoints: tuple[Endpoint, ...] = ()
    error: str | None = None
    tls: BackendTls | None = None


class CompiledRoute(_Frozen):
    id: str = Field(min_length=1, description="namespace/name of the GatewayRoute")
    namespace: str
    name: str
    generation: int | None = None
    created: str = Field(default="", description="creationTimestamp, for precedence between equal matches")
    match: RouteMatch = RouteMatch()
    backends: tuple[CompiledBackend, ...] = Field(default=(), description="none only with edge.redirect")
    timeout_ms: int | None = Field(default=None, ge=1, alias="timeoutMs")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=0, alias="maxBodyBytes")
    policy: RoutePolicy | None = Field(default=None, description="traffic policies; None: plain proxying")
    edge: EdgePolicy | None = Field(
        default=None, description="CORS, transforms, rewrite, redirect; None: none"
    )
    tls: RouteTls | None = Field(
        default=None, description="certificates for the route's hosts (private keys: redacted in views)"
    )

    @model_validator(mode="after")
    def _backends_or_redirect(self) -> CompiledRoute:
        redirect = self.edge is not None and self.edge.redirect is not None
        if redirect == bool(self.backends):
            raise ValueError("a route has backends or a redirect, not both or neither")
        return self

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
    def from_wire(
        cls, data: object, *, previous: RouteTable | None = None, limits: WireLimits | None = None
    ) -> RouteTable:
        """Validate a pushed table. Routes equal (in wire form) to one of ``previous`` reuse its
        already-validated object, so a push that changes a few of 10,000 routes validates a few.

        Within ``limits`` (see :class:`WireLimits`): too many routes or endpoints raise
        :class:`TableTooLarge` before anything is validated; two routes with one id are an error; routes
        are validated a chunk at a time (so another thread gets the interpreter in between) and
        validation stops at ``max_errors`` errors. Invalid tables raise pydantic's ``ValidationError``.
        """
        limits = limits or WIRE_LIMITS
        if not isinstance(data, dict) or not isinstance(data.get("routes"), list):
            return cls.model_validate(data)  # the model's own error: not a table
        errors = _check_wire_routes(data["routes"], limits, where="routes")
        errors += _check_version(data.get("version"), limits)
        items: list[object] = data["routes"]
        if previous is not None and not errors:
            known = {r.id: r for r in previous.routes}
            items = []
            for item in data["routes"]:
                old = known.get(str(item.get("id"))) if isinstance(item, dict) else None
                # equal canonical JSON, equal route (pydantic's dump is canonical: what we push is a dump)
                same = old is not None and _digest(item) == old.digest()
                items.append(old if same else item)
        routes, checked = _validate_routes(items, limits, errors, where="routes")
        if errors:
            raise _invalid(cls, {**data, "routes": []}, errors, limits, (checked, len(items), "routes"))
        return cls.model_validate({**data, "routes": routes})


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
    def from_wire(cls, data: object, *, limits: WireLimits | None = None) -> TableDelta:
        """Validate a pushed delta within ``limits``, as :meth:`RouteTable.from_wire` does a table."""
        limits = limits or WIRE_LIMITS
        if not isinstance(data, dict) or not isinstance(data.get("upsert", []), list):
            return cls.model_validate(data)
        upsert: list[object] = data.get("upsert", [])
        remove = data.get("remove", [])
        if isinstance(remove, list) and len(remove) > limits.max_routes:
            raise TableTooLarge(f"remove: {len(remove)} ids, more than the limit of {limits.max_routes}")
        errors = _check_wire_routes(upsert, limits, where="upsert")
        errors += _check_version(data.get("version"), limits)
        routes, checked = _validate_routes(upsert, limits, errors, where="upsert")
        if errors:
            raise _invalid(cls, {**data, "upsert": []}, errors, limits, (checked, len(upsert), "routes"))
        return cls.model_validate({**data, "upsert": routes})

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


# --- loading pushed tables within limits ------------------------------------------------------------------


@dataclass(frozen=True)
class WireLimits:
    """What a data plane accepts in one pushed (``PUT``/``PATCH /table``) or bootstrap table.

    They keep the work and memory of one push proportionate to a real table: ``bench/table_bench.py``'s
    10,000 routes are 3.3 MB of JSON holding about 260,000 JSON values and 10,000 endpoints. Past the
    size bounds the answer is :class:`TableTooLarge` (413 on the admin port), decided before anything is
    validated; ``max_errors`` bounds the reasons a refusal lists (and stops validation there).
    """

    max_routes: int = 50_000
    max_endpoints: int = 500_000  # all backends of all routes together
    max_values: int = 2_000_000  # JSON values in one document: bounds parsing time and memory
    max_version_chars: int = 256
    max_errors: int = 100


WIRE_LIMITS = WireLimits()
_CHUNK = 128  # routes validated per call into pydantic-core (a few milliseconds each)
_ROUTE_LIST: TypeAdapter[list[CompiledRoute]] = TypeAdapter(list[CompiledRoute])


class TableTooLarge(ValueError):
    """A document, table or delta over a :class:`WireLimits` size bound."""


def load_json(raw: bytes | bytearray, limits: WireLimits | None = None) -> object:
    """Parse a pushed JSON document (UTF-8) within ``limits``.

    The number of values is bounded before parsing (commas and brackets, counted in C: an upper bound),
    so that a small document of a million values is refused in milliseconds. The admin port parses in
    a thread next to the traffic port's, and the interpreter can only switch threads between two steps
    of Python, so the work is cut into short steps: counting and decoding go a mebibyte at a time, and
    objects and numbers go through Python callbacks (the C parser alone held the interpreter for 0.1 s
    per 3 MB). What stays one step is one JSON string: at most the document's size (64 MiB on the admin
    port, about 0.1 s). Nesting deeper than the interpreter's recursion limit raises ``ValueError``, like
    malformed JSON; ``NaN`` and ``Infinity`` are refused (they are not JSON).
    """
    limits = limits or WIRE_LIMITS
    values = 1
    for start in range(0, len(raw), _SLICE):
        end = start + _SLICE
        values += raw.count(b",", start, end) + raw.count(b"[", start, end) + raw.count(b"{", start, end)
        if values > limits.max_values:
            raise TableTooLarge(f"the document holds more than the limit of {limits.max_values} JSON values")
    view = memoryview(raw)
    decoder = codecs.getincrementaldecoder("utf-8")()
    text = "".join([decoder.decode(view[i : i + _SLICE]) for i in range(0, len(raw), _SLICE)])
    text += decoder.decode(b"", final=True)
    try:
        return json.loads(
            text,
            object_hook=_json_object,
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_nan,
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


_SLICE = 1 << 20


def _json_object(value: dict[str, object]) -> dict[str, object]:
    return value


def _json_int(text: str) -> int:
    return int(text)


def _json_float(text: str) -> float:
    return float(text)


def _json_nan(text: str) -> float:
    raise ValueError(f"{text} is not a JSON value")


def check_size(table: RouteTable, limits: WireLimits | None = None) -> None:
    """Raise :class:`TableTooLarge` if ``table`` (for example the result of a delta) is over ``limits``."""
    limits = limits or WIRE_LIMITS
    if len(table.routes) > limits.max_routes:
        raise TableTooLarge(f"{len(table.routes)} routes, more than the limit of {limits.max_routes}")
    endpoints = sum(len(b.endpoints) for r in table.routes for b in r.backends)
    if endpoints > limits.max_endpoints:
        raise TableTooLarge(f"{endpoints} endpoints, more than the limit of {limits.max_endpoints}")


def _check_wire_routes(items: list[object], limits: WireLimits, *, where: str) -> list[InitErrorDetails]:
    """Counts and ids of a list of wire-form routes, before any validation: :class:`TableTooLarge` over
    the size bounds; an error for each route whose id an earlier route already has."""
    if len(items) > limits.max_routes:
        raise TableTooLarge(f"{where}: {len(items)} routes, more than the limit of {limits.max_routes}")
    endpoints = 0
    first: dict[str, int] = {}
    errors: list[InitErrorDetails] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        backends = item.get("backends")
        if isinstance(backends, list):
            for backend in backends:
                if isinstance(backend, dict) and isinstance(backend.get("endpoints"), list):
                    endpoints += len(backend["endpoints"])
        route_id = item.get("id")
        if isinstance(route_id, str) and first.setdefault(route_id, i) != i:
            errors.append(
                _error(
                    "duplicate_id",
                    f"route id {route_id!r} is also the id of {where}.{first[route_id]}",
                    (where, i, "id"),
                    route_id,
                )
            )
    if endpoints > limits.max_endpoints:
        raise TableTooLarge(f"{where}: {endpoints} endpoints, more than the limit of {limits.max_endpoints}")
    return errors


def _check_version(version: object, limits: WireLimits) -> list[InitErrorDetails]:
    if isinstance(version, str) and len(version) > limits.max_version_chars:
        message = f"longer than {limits.max_version_chars} characters"
        return [_error("version_too_long", message, ("version",), version[:64])]
    return []


def _validate_routes(
    items: Sequence[object], limits: WireLimits, errors: list[InitErrorDetails], *, where: str
) -> tuple[list[CompiledRoute], int]:
    """Validate routes a chunk at a time, adding errors (located in the whole list) to ``errors`` and
    stopping once there are ``limits.max_errors`` of them. Returns the routes and how many were checked."""
    routes: list[CompiledRoute] = []
    for start in range(0, len(items), _CHUNK):
        if len(errors) >= limits.max_errors:
            return routes, start
        try:
            routes += _ROUTE_LIST.validate_python(items[start : start + _CHUNK])
        except ValidationError as exc:
            for e in exc.errors():
                index, *rest = e["loc"]
                loc = (where, start + index if isinstance(index, int) else index, *rest)
                errors.append(_error(e["type"], e["msg"], loc, e["input"]))
    return routes, len(items)


def _error(kind: str, message: str, loc: tuple[int | str, ...], value: object) -> InitErrorDetails:
    return {"type": PydanticCustomError(kind, "{message}", {"message": message}), "loc": loc, "input": value}


def _invalid(
    model: type[BaseModel],
    rest: dict[str, object],
    errors: list[InitErrorDetails],
    limits: WireLimits,
    checked: tuple[int, int, str],
) -> ValidationError:
    """One ``ValidationError`` with the errors of the model's other fields first, then ``errors``, at
    most ``limits.max_errors`` of them, and a last one saying what was left out: errors not listed, and
    routes not validated (``checked``: how many of how many)."""
    try:
        model.model_validate(rest)
    except ValidationError as exc:
        errors = [_error(e["type"], e["msg"], e["loc"], e["input"]) for e in exc.errors()] + errors
    shown = errors[: limits.max_errors]
    left_out = []
    if len(errors) > limits.max_errors:
        left_out.append(f"{len(errors) - limits.max_errors} more errors not listed")
    done, total, what = checked
    if done < total:
        left_out.append(f"validation stopped after {done} of {total} {what}")
    if left_out:
        shown.append(_error("too_many_errors", "; ".join(left_out), (), None))
    return ValidationError.from_exception_data(model.__name__, shown)
