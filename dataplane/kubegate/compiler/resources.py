"""The compiler's input: Kubernetes-shaped objects gathered into one :class:`Bundle`.

``kubegate compile FILE`` and standalone mode read multi-document YAML with :func:`load_file` or
:func:`load_yaml`; the operator hands over the objects of its kopf indexes with :func:`from_objects`.
Either way the compiler sees the same bundle.

Only a YAML syntax error stops a load (:class:`LoadError`, with file and line). Everything else that is
wrong with a document (an unknown kind, a missing name, a malformed EndpointSlice, a duplicate) becomes a
:class:`LoadProblem` naming the document, and the rest still loads. GatewayRoutes stay raw here: the
compiler validates them so that their errors become conditions on the route itself. Supporting objects
(EndpointSlice, Service) are parsed leniently into small typed views; Secrets are kept raw but never
printed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kubegate import gcpause
from kubegate.api import models

DEFAULT_NAMESPACE = "default"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

ROUTE_API_VERSION = models.API_VERSION
ENDPOINT_SLICE_API_VERSION = "discovery.k8s.io/v1"
CORE_API_VERSION = "v1"


class LoadError(Exception):
    """The input is not YAML at all; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where an object came from: the source (file name), its document index (0-based) and line."""

    source: str
    index: int
    line: int | None = None  # 1-based line where the object starts (its document, its List item)
    item: int | None = None  # position inside a ``kind: List`` document

    @property
    def where(self) -> str:
        """``file:line`` (just the source when the object was not read from YAML)."""
        return self.source if self.line is None else f"{self.source}:{self.line}"

    def __str__(self) -> str:
        detail = f"document index {self.index}" + ("" if self.item is None else f", item {self.item}")
        return f"{self.where} ({detail})"


@dataclasses.dataclass(frozen=True)
class LoadProblem:
    """A document that was skipped (or partly ignored), and why.

    ``message`` says what is wrong and what ``kubegate compile`` (or the operator) does about it ("...
    (ignored)"); ``cause`` only what is wrong, for a reader that refuses the whole input instead
    (``kubegate serve --routes``).
    """

    origin: Origin
    message: str
    cause: str = ""

    def __str__(self) -> str:
        return f"{self.origin}: {self.message}"

    @property
    def refusal(self) -> str:
        """The problem without what the compiler does about it: ``origin: cause``."""
        return f"{self.origin}: {self.cause or self.message}"


@dataclasses.dataclass(frozen=True)
class RawObject:
    """An object as read, with its identity pulled out. ``body`` is left out of the repr (Secrets)."""

    api_version: str
    kind: str
    namespace: str
    name: str
    origin: Origin
    body: Mapping[str, Any] = dataclasses.field(repr=False)

    # Cached: a compile of 10,000 routes reads these several times per route.
    @functools.cached_property
    def key(self) -> str:
        """``namespace/name``: the id used in the table and the status map."""
        return f"{self.namespace}/{self.name}"

    @property
    def metadata(self) -> Mapping[str, Any]:
        meta = self.body.get("metadata")
        return meta if isinstance(meta, Mapping) else {}

    @functools.cached_property
    def revision(self) -> tuple[str, str] | None:
        """``(uid, generation)`` when the API server set them: the spec and the fields a compile reads
        change only together with them (status writes bump resourceVersion, not generation)."""
        uid, generation = self.metadata.get("uid"), self.metadata.get("generation")
        return (str(uid), str(generation)) if uid and generation is not None else None

    @functools.cached_property
    def generation(self) -> int | None:
        value = self.metadata.get("generation")
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    @functools.cached_property
    def creation_timestamp(self) -> str:
        """RFC 3339 in UTC (``2024-05-01T12:00:00Z``), or "" when absent; YAML may have made it a datetime."""
        return _timestamp(self.metadata.get("creationTimestamp"))


def _timestamp(value: object) -> str:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
    elif isinstance(value, datetime):
        parsed = value
    else:
        return ""
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Lenient(BaseModel):
    """Views of objects we do not own: ignore what we do not use, accept what the API server would."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class SliceConditions(_Lenient):
    ready: bool | None = None
    terminating: bool | None = None


class SliceEndpoint(_Lenient):
    addresses: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    conditions: SliceConditions = SliceConditions()

    @property
    def usable(self) -> bool:
        """Ready (a missing ``ready`` counts as ready) and not terminating."""
        return self.conditions.ready is not False and self.conditions.terminating is not True


class SlicePort(_Lenient):
    name: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: str = "TCP"


class EndpointSliceView(_Lenient):
    """The parts of a ``discovery.k8s.io/v1`` EndpointSlice the compiler reads."""

    namespace: str
    name: str
    service_name: str | None = None
    address_type: str = Field(alias="addressType")
    endpoints: tuple[SliceEndpoint, ...] = ()
    ports: tuple[SlicePort, ...] = ()


class ServicePortView(_Lenient):
    name: str | None = None
    port: int


class ServiceView(_Lenient):
    """A ``v1`` Service: its existence, and its port names to find the matching EndpointSlice port."""

    namespace: str
    name: str
    ports: tuple[ServicePortView, ...] = ()


@dataclasses.dataclass
class Bundle:
    """All objects of one compile, by kind, plus the problems met while loading them."""

    routes: list[RawObject] = dataclasses.field(default_factory=list)
    endpoint_slices: list[EndpointSliceView] = dataclasses.field(default_factory=list)
    services: list[ServiceView] = dataclasses.field(default_factory=list)
    secrets: list[RawObject] = dataclasses.field(default_factory=list)
    problems: list[LoadProblem] = dataclasses.field(default_factory=list)


_KINDS = {
    (ROUTE_API_VERSION, models.KIND): "routes",
    (ENDPOINT_SLICE_API_VERSION, "EndpointSlice"): "endpoint_slices",
    (CORE_API_VERSION, "Service"): "services",
    (CORE_API_VERSION, "Secret"): "secrets",
}


def _pydantic_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
    return "; ".join(parts)


class _Loader:
    def __init__(self) -> None:
        self.bundle = Bundle()
        self._seen: set[tuple[str, str, str]] = set()

    def problem(self, origin: Origin, cause: str, effect: str | None = "ignored") -> None:
        """Record ``cause`` (what is wrong) and, in parentheses, ``effect`` (what the compiler does)."""
        message = cause if effect is None else f"{cause} ({effect})"
        self.bundle.problems.append(LoadProblem(origin=origin, message=message, cause=cause))

    def add(self, doc: object, origin: Origin, item_lines: list[int] | None = None) -> None:
        if doc is None:  # an empty document, e.g. after a trailing '---'
            return
        if not isinstance(doc, Mapping):
            self.problem(origin, f"expected an object (a mapping), got {type(doc).__name__}")
            return
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        if kind == "List" and api_version == CORE_API_VERSION:
            items = doc.get("items")
            if not isinstance(items, list):
                self.problem(origin, "a List needs an 'items' list", None)
                return
            lines = item_lines if item_lines is not None and len(item_lines) == len(items) else None
            for position, item in enumerate(items):
                line = origin.line if lines is None else lines[position]
                self.add(item, dataclasses.replace(origin, item=position, line=line))
            return
        slot = _KINDS.get((str(api_version), str(kind)))
        if slot is None:
            self.problem(origin, _unsupported(kind, api_version))
            return
        meta = doc.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        name, namespace = meta.get("name"), meta.get("namespace") or DEFAULT_NAMESPACE
        if not isinstance(name, str) or not name:
            self.problem(origin, f"{kind} without metadata.name")
            return
        if not isinstance(namespace, str):
            self.problem(origin, f"{kind} {name}: metadata.namespace must be a string")
            return
        identity = (str(kind), namespace, name)
        if identity in self._seen:
            self.problem(origin, f"duplicate {kind} {namespace}/{name}", "ignored; the first one is used")
            return
        self._seen.add(identity)
        raw = RawObject(
            api_version=str(api_version),
            kind=str(kind),
            namespace=namespace,
            name=name,
            origin=origin,
            body=doc,
        )
        if slot == "routes":
            self.bundle.routes.append(raw)
        elif slot == "secrets":
            self.bundle.secrets.append(raw)
        elif slot == "endpoint_slices":
            self._add_slice(raw)
        else:
            self._add_service(raw)

    def _add_slice(self, raw: RawObject) -> None:
        labels = raw.metadata.get("labels")
        service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
        data = {**raw.body, "namespace": raw.namespace, "name": raw.name, "service_name": service}
        try:
            view = EndpointSliceView.model_validate(data)
        except ValidationError as error:
            detail = _pydantic_message(error)
            self.bundle.problems.append(
                LoadProblem(
                    raw.origin,
                    f"EndpointSlice {raw.key} ignored: {detail}",
                    f"EndpointSlice {raw.key}: {detail}",
                )
            )
            return
        if view.service_name is None:
            self.problem(raw.origin, f"EndpointSlice {raw.key} has no {SERVICE_NAME_LABEL} label")
            return
        self.bundle.endpoint_slices.append(view)

    def _add_service(self, raw: RawObject) -> None:
        spec = raw.body.get("spec")
        ports = spec.get("ports", ()) if isinstance(spec, Mapping) else ()
        try:
            view = ServiceView.model_validate({"namespace": raw.namespace, "name": raw.name, "ports": ports})
        except ValidationError as error:
            detail = _pydantic_message(error)
            self.bundle.problems.append(
                LoadProblem(
                    raw.origin, f"Service {raw.key} ignored: {detail}", f"Service {raw.key}: {detail}"
                )
            )
            return
        self.bundle.services.append(view)


def _unsupported(kind: object, api_version: object) -> str:
    if kind is None and api_version is None:
        return "not a Kubernetes object: no apiVersion and no kind"
    if kind is None:
        return f"no kind (apiVersion {api_version})"
    if api_version is None:
        return f"{kind} without apiVersion"
    return f"unsupported kind {kind} ({api_version})"


def from_objects(objects: Iterable[object], *, source: str = "<objects>") -> Bundle:
    """Bundle already-parsed objects (e.g. from the operator's indexes); the index is the position."""
    loader = _Loader()
    for index, doc in enumerate(objects):
        loader.add(doc, Origin(source=source, index=index))
    return loader.bundle


# libyaml's loader when PyYAML was built with it (about 10x faster on large route files).
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _documents(text: str) -> list[tuple[object, int, list[int] | None]]:
    """Each document of a YAML stream with the (1-based) line it starts on and, when it has an ``items``
    sequence (a ``kind: List``), the line each item starts on."""
    parser = _SafeLoader(text)
    try:
        docs = []
        while parser.check_node():
            node = parser.get_node()
            if node is None:
                break
            docs.append((parser.construct_document(node), node.start_mark.line + 1, _item_lines(node)))
        return docs
    finally:
        parser.dispose()


def _item_lines(node: yaml.Node) -> list[int] | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "items" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return None


def load_yaml(text: str, *, source: str = "<string>") -> Bundle:
    """Bundle the documents of a multi-document YAML text. Raises :class:`LoadError` on bad YAML."""
    try:
        with gcpause.paused():
            docs = _documents(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        what = " ".join(str(p) for p in (error.context, error.problem) if p)
        raise LoadError(f"{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as error:
        raise LoadError(f"{source}: invalid YAML: {error}") from None
    loader = _Loader()
    for index, (doc, line, item_lines) in enumerate(docs):
        loader.add(doc, Origin(source=source, index=index, line=line), item_lines)
    return loader.bundle


def load_file(path: str | os.PathLike[str]) -> Bundle:
    """Bundle the documents of a YAML file; :class:`LoadError` when it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LoadError(f"{os.fspath(path)}: cannot read: {error}") from None
    return load_yaml(text, source=os.fspath(path))
