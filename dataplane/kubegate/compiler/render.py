"""Printing a :class:`~kubegate.compiler.compile.CompileResult`: the ``kubegate compile`` output.

The printed document is the table in its wire form (what the operator pushes to ``PUT /table``, except
that secret material, the JWKS documents, HMAC keys and API-key hashes that routes' auth took from
Secrets, and TLS private keys, is shown as ``(redacted)``), its content hash, the status of every route
and the load problems. The golden compiler tests compare this same YAML, so what reviewers read in a
golden diff is what users see.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TextIO

import yaml

from kubegate.compiler import compile as compiler
from kubegate.compiler import edge, resources, tls

FORMATS = ("yaml", "json")


def _redacted(wire: dict[str, object]) -> dict[str, object]:
    routes = wire["routes"]
    assert isinstance(routes, list)
    return {**wire, "routes": [edge.redacted(route) for route in routes]}


def result_document(result: compiler.CompileResult) -> dict[str, object]:
    """The JSON-able form of a result: ``contentHash``, ``table``, ``statuses``, ``problems``."""
    return {
        "contentHash": result.table.content_hash(),
        "table": _redacted(result.table.to_wire()),
        "statuses": {
            key: status.model_dump(mode="json", by_alias=True, exclude_none=True)
            for key, status in result.statuses.items()
        },
        "problems": [str(problem) for problem in result.problems],
    }


def render_result(result: compiler.CompileResult, fmt: str) -> str:
    """The result as ``"yaml"`` or ``"json"`` text (ending with a newline); ValueError for other formats."""
    document = result_document(result)
    if fmt == "yaml":
        return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=120)
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    raise ValueError(f"unknown output format {fmt!r}: expected one of {', '.join(FORMATS)}")


def _summary(result: compiler.CompileResult, origins: Mapping[str, resources.Origin]) -> list[str]:
    """One line per load problem and per condition that is not True, a route's led by ``file:line:``."""
    lines = [f"load problem: {problem}" for problem in result.problems]
    for key, status in result.statuses.items():
        origin = origins.get(key)
        where = f"{origin.where}: " if origin is not None else ""
        for condition in status.conditions:
            if condition.type == compiler.ACCEPTED and condition.status != "True":
                level = "error"
            elif condition.status == "False" or condition.reason == tls.CERTIFICATE_EXPIRING:
                level = "warning"
            else:
                continue
            verdict = f"{condition.type}={condition.status} ({condition.reason})"
            lines.append(f"{where}{level}: {key}: {verdict}: {condition.message}")
    return lines


def compile_main(path: str, fmt: str, out: TextIO, err: TextIO, now: datetime) -> int:
    """``kubegate compile PATH`` ("-" reads stdin): print the result to ``out``, a summary to ``err``.

    Returns 0 when every route is accepted and nothing was skipped, 1 when a route is not accepted or a
    document had a load problem, 2 when the input cannot be read or parsed or the format is unknown.
    """
    if fmt not in FORMATS:
        err.write(f"kubegate compile: unknown format {fmt!r}: expected one of {', '.join(FORMATS)}\n")
        return 2
    try:
        if path == "-":
            bundle = resources.load_yaml(sys.stdin.read(), source="<stdin>")
        else:
            bundle = resources.load_file(path)
    except resources.LoadError as error:
        err.write(f"kubegate compile: {error}\n")
        return 2
    result = compiler.compile_bundle(bundle, now=now)
    out.write(render_result(result, fmt))
    for line in _summary(result, {raw.key: raw.origin for raw in bundle.routes}):
        err.write(line + "\n")
    rejected = result.rejected()
    routes = len(result.statuses)
    err.write(
        f"{routes} route(s): {routes - len(rejected)} accepted, {len(rejected)} not accepted; "
        f"{len(result.problems)} load problem(s)\n"
    )
    return 1 if rejected or result.problems else 0
