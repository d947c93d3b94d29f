"""Where a data plane's table comes from when no operator pushes one: a routes file or a bootstrap file.

A *routes file* is what a user writes in standalone mode: the same GatewayRoute / EndpointSlice / Secret
objects a cluster would hold, compiled here by the same pure compiler the operator uses. A file is applied
only whole, when it compiles cleanly (where ``kubegate compile`` drops a bad route or document and
compiles the rest); any problem is reported with file, line, object and field, and the table already
serving stays. A file that does not exist (:class:`RoutesFileMissing`) or holds nothing but whitespace,
comments and ``---`` (:class:`RoutesFileEmpty`: truncated, or being written) never replaces a table
either; a file with objects but no GatewayRoute (``{apiVersion: v1, kind: List, items: []}``) is served as
an empty table.

A *bootstrap file* is a compiled table (wire form, JSON or YAML, optionally gzip-compressed) that the
operator stores in a Secret, so that a new replica serves before the operator can push to it. It is
loaded within the limits of a push (:class:`~kubegate.compiler.table.WireLimits`), and so that its memory
stays proportionate to what it holds: at most 64 MiB read and 64 MiB decompressed (a gzip bomb stops
there), YAML without aliases (a few kilobytes of them expand to gigabytes), at most
:data:`MAX_YAML_DEPTH` levels deep, built from the parser's events rather than PyYAML's node graph.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import re
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubegate.compiler import resources
from kubegate.compiler.compile import RESOLVED_REFS, compile_bundle
from kubegate.compiler.table import WIRE_LIMITS, RouteTable, TableTooLarge, WireLimits, load_json

MAX_BOOTSTRAP_BYTES = 64 * 1024 * 1024  # read, and decompressed: the admin port's push limit
MAX_YAML_DEPTH = 64  # a compiled table is 7 levels deep


class RoutesFileError(Exception):
    """A routes or bootstrap file that cannot be applied; the message says where and why."""


class RoutesFileMissing(RoutesFileError):
    """The routes file does not exist (yet, or any more)."""


class RoutesFileEmpty(RoutesFileError):
    """The routes file holds nothing but whitespace, comments and document markers."""


@dataclasses.dataclass(frozen=True)
class CompiledFile:
    """A routes file compiled cleanly: its table, and what is worth a warning about it (one line each:
    a route with a backend that does not resolve)."""

    table: RouteTable
    warnings: tuple[str, ...] = ()


class RoutesFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._read = False  # compiled at least once: a missing file is reported the first time too
        self.loads = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        return self._stat() != self._stamp

    def compile(self, *, force: bool = False) -> CompiledFile | None:
        """Compile the file; None if unchanged since the last call (unless forced).

        :class:`RoutesFileMissing`, :class:`RoutesFileEmpty`, or :class:`RoutesFileError` naming every
        problem (``file:line``, object, field) when the file cannot be applied as a whole.
        """
        stamp = self._stat()
        if self._read and stamp == self._stamp and not force:
            return None
        self._stamp, self._read = stamp, True
        source = os.fspath(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise RoutesFileMissing(f"{source} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise RoutesFileError(f"{source}: cannot read: {exc}") from exc
        if _holds_nothing(text):
            raise RoutesFileEmpty(f"{source} is empty (nothing but whitespace, comments or '---')")
        try:
            bundle = resources.load_yaml(text, source=source)
        except resources.LoadError as exc:
            raise RoutesFileError(str(exc)) from exc
        result = compile_bundle(bundle, now=datetime.now(UTC))
        origins = {raw.key: raw.origin.where for raw in bundle.routes}
        problems = [p.refusal for p in result.problems]
        for key in sorted(result.rejected()):
            cond = result.statuses[key].condition("Accepted")
            detail = f"{cond.reason}: {cond.message}" if cond is not None else "not accepted"
            problems.append(f"{origins.get(key, source)}: GatewayRoute {key}: {detail}")
        if problems:
            raise RoutesFileError("; ".join(problems))
        warnings = []
        for key, status in sorted(result.statuses.items()):
            cond = status.condition(RESOLVED_REFS)
            if cond is not None and cond.status == "False":
                hint = (
                    "; with no cluster, a Service is found only when the routes file holds it or its "
                    "EndpointSlices (or use a url: backend)"
                    if cond.reason == "BackendNotFound"
                    else "; with no cluster, a Secret is found only when the routes file holds it"
                    if cond.reason == "SecretNotFound"
                    else ""
                )
                warnings.append(
                    f"{origins.get(key, source)}: GatewayRoute {key}: {cond.reason}: {cond.message}{hint}"
                )
        self.loads += 1
        table = result.table
        table = table.model_copy(update={"version": f"file-{self.loads}-{table.content_hash()[7:19]}"})
        return CompiledFile(table=table, warnings=tuple(warnings))


def _holds_nothing(text: str) -> bool:
    """True for a text with no YAML content: only blank lines, comments, document markers (``---``,
    ``...``) and directives. Reads lines only up to the first one with content."""
    for raw in io.StringIO(text.removeprefix("\ufeff")):
        line = raw.strip()
        if line[:3] in ("---", "...") and line[3:4] in ("", " ", "\t"):
            line = line[3:].lstrip()
        if line and not line.startswith(("#", "%")):
            return False
    return True


def load_bootstrap(
    path: Path, *, limits: WireLimits = WIRE_LIMITS, max_bytes: int = MAX_BOOTSTRAP_BYTES
) -> RouteTable:
    """The compiled table in ``path``; :class:`RoutesFileError`, in one line, for anything wrong with it."""
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise RoutesFileError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(raw) > max_bytes:
        raise RoutesFileError(f"{path}: larger than {max_bytes} bytes")
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as unzipped:
                raw = unzipped.read(max_bytes + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise RoutesFileError(f"{path}: corrupt gzip data") from exc
        if len(raw) > max_bytes:
            raise RoutesFileError(f"{path}: decompresses to more than {max_bytes} bytes")
    try:
        data = load_json(raw, limits) if _JSON_START.match(raw) else load_yaml(raw, limits)
    except TableTooLarge as exc:
        raise RoutesFileError(f"{path}: too large: {exc}") from exc
    except (ValueError, yaml.YAMLError) as exc:
        raise RoutesFileError(f"{path}: not JSON or YAML: {_first_line(exc)}") from exc
    try:
        return RouteTable.from_wire(data, limits=limits)
    except TableTooLarge as exc:
        raise RoutesFileError(f"{path}: route table too large: {exc}") from exc
    except ValidationError as exc:
        errors = exc.errors()
        loc = ".".join(str(p) for p in errors[0]["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RoutesFileError(f"{path}: invalid route table: {loc}: {errors[0]['msg']}{more}") from exc


_JSON_START = re.compile(rb"[ \t\r\n]*\{")
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp", "binary")
)
_MAP_TAGS = frozenset({None, "!", "tag:yaml.org,2002:map"})
_SEQ_TAGS = frozenset({None, "!", "tag:yaml.org,2002:seq"})


def load_yaml(raw: bytes, limits: WireLimits = WIRE_LIMITS) -> object:
    """One YAML document as plain data (what ``yaml.safe_load`` gives), refusing aliases, more than
    :data:`MAX_YAML_DEPTH` levels and more than ``limits.max_values`` values. Built from the parser's
    events, so that memory follows the result: PyYAML's own loader first builds a graph of nodes (with
    libyaml, 230 MB for a table of 3.5 MB)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(raw)
    try:
        return _from_events(loader, limits)
    finally:
        loader.dispose()


class _Open:
    """A mapping or sequence being filled, and a mapping's key waiting for its value."""

    __slots__ = ("key", "value")

    def __init__(self, value: dict[Any, Any] | list[Any]) -> None:
        self.value = value
        self.key: Any = _NO_KEY


_NO_KEY = object()


def _from_events(loader: Any, limits: WireLimits) -> object:
    def refuse(message: str, event: Any) -> yaml.YAMLError:
        return yaml.constructor.ConstructorError(None, None, message, event.start_mark)

    stack: list[_Open] = []
    root: list[object] = []
    values = documents = 0

    def add(value: object, event: Any) -> None:
        if not stack:
            root.append(value)
            return
        top = stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
        elif top.key is _NO_KEY:
            if isinstance(value, dict | list):
                raise refuse("a mapping key must be a scalar", event)
            top.key = value
        else:
            top.value[top.key] = value
            top.key = _NO_KEY

    while loader.check_event():
        event = loader.get_event()
        if isinstance(event, yaml.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag not in _SCALAR_TAGS:
                raise refuse(f"tag {tag} is not allowed in a route table", event)
            marks: tuple[Any, Any] = (event.start_mark, event.end_mark)
            node = yaml.ScalarNode(tag, event.value, *marks, style=event.style)
            add(loader.yaml_constructors[tag](loader, node), event)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            mapping = isinstance(event, yaml.MappingStartEvent)
            if event.tag not in (_MAP_TAGS if mapping else _SEQ_TAGS):
                raise refuse(f"tag {event.tag} is not allowed in a route table", event)
            if len(stack) >= MAX_YAML_DEPTH:
                raise refuse(f"nested more than {MAX_YAML_DEPTH} levels", event)
            container: dict[Any, Any] | list[Any] = {} if mapping else []
            add(container, event)
            stack.append(_Open(container))
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            stack.pop()
            continue
        elif isinstance(event, yaml.AliasEvent):
            raise refuse("aliases are not allowed in a route table", event)
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise refuse("more than one document", event)
            continue
        else:
            continue
        values += 1
        if values > limits.max_values:
            raise TableTooLarge(f"more than {limits.max_values} YAML values")
    return root[0] if root else None


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:300] + "..."
