"""Where a data plane's table comes from when no operator pushes one: a routes file or a bootstrap file.

A *routes file* is what a user writes in standalone mode: the same GatewayRoute / EndpointSlice / Secret
objects a cluster would hold, compiled here by the same pure compiler the operator uses. A file is applied
only when it compiles cleanly; any problem is reported with file, object and field, and the table already
serving stays.

A *bootstrap file* is a compiled table (wire form, JSON or YAML, optionally gzip-compressed) that the
operator stores in a Secret, so that a new replica serves before the operator can push to it.
"""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import ValidationError

from kubegate.compiler.compile import compile_bundle
from kubegate.compiler.resources import LoadError, load_file
from kubegate.compiler.table import RouteTable


class RoutesFileError(Exception):
    """A routes or bootstrap file that cannot be applied; the message says where and why."""


class RoutesFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.loads = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        return self._stat() != self._stamp

    def compile(self, *, force: bool = False) -> RouteTable | None:
        """Compile the file; None if unchanged since the last call (unless forced)."""
        stamp = self._stat()
        if stamp == self._stamp and not force:
            return None
        self._stamp = stamp
        if stamp is None:
            raise RoutesFileError(f"{self.path}: cannot read the file")
        try:
            bundle = load_file(self.path)
        except LoadError as exc:
            raise RoutesFileError(str(exc)) from exc
        result = compile_bundle(bundle, now=datetime.now(UTC))
        problems = [str(p) for p in result.problems]
        for key in sorted(result.rejected()):
            cond = result.statuses[key].condition("Accepted")
            detail = f"{cond.reason}: {cond.message}" if cond is not None else "not accepted"
            problems.append(f"{self.path}: GatewayRoute {key}: {detail}")
        if problems:
            raise RoutesFileError("; ".join(problems))
        self.loads += 1
        table = result.table
        return table.model_copy(update={"version": f"file-{self.loads}-{table.content_hash()[7:19]}"})


def load_bootstrap(path: Path) -> RouteTable:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RoutesFileError(f"{path}: cannot read: {exc.strerror}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise RoutesFileError(f"{path}: corrupt gzip data") from exc
    try:
        data = json.loads(raw) if raw.lstrip()[:1] == b"{" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise RoutesFileError(f"{path}: not JSON or YAML: {exc}") from exc
    try:
        return RouteTable.from_wire(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RoutesFileError(f"{path}: invalid route table: {loc}: {first['msg']}") from exc
