"""The GatewayRoute CustomResourceDefinition, generated from the pydantic models.

The models in :mod:`kubegate.api.models` are the only hand-written description of the API. This module
turns their JSON schema into a Kubernetes *structural* schema: every ``$ref`` inlined, ``Optional[X]``
(``anyOf`` with ``null``) turned into plain ``X`` (the field is simply not required), titles and
pydantic-only keys dropped, every node typed, and exclusive bounds written the OpenAPI v3 way
(``minimum`` plus ``exclusiveMinimum: true``). Descriptions, enums, patterns, bounds, scalar defaults
and CEL rules (``x-kubernetes-validations``) are kept, so ``kubectl explain`` and API-server validation
follow the models.

Every list states its ``x-kubernetes-list-type`` (the generator refuses a list without one): ``set`` or
``map`` where a duplicate makes no sense (the API server refuses it, server-side apply merges items),
``atomic`` where order matters or items have no key (see :class:`kubegate.api.models.ListType`, which
also makes the models refuse the same duplicates).

The CRD carries the category ``kubegate`` (``kubectl get kubegate`` lists the routes) and printer
columns for what a route matches (Hosts, Path) and its conditions (Accepted, Programmed; ResolvedRefs
with ``-o wide``).

**Versioning.** ``v1alpha1`` is the only version, served and stored. ``v1beta1`` will be served beside
it with conversion strategy ``None`` (the API server only rewrites ``apiVersion``), so the two versions
must have the same fields: v1beta1 may tighten validation and add optional fields (added to v1alpha1
too), never rename, move or drop one. A conversion webhook would make every read and write of a route
depend on a running, TLS-serving kubegate pod; the API is kept convertible without one. The release that
adds v1beta1 keeps v1alpha1 as the storage version (so a rollback finds only objects it can read); the
next one stores v1beta1 and marks v1alpha1 deprecated, then the stored objects are rewritten (a no-op
update of each route, or a StorageVersionMigration) and v1alpha1 is dropped from the CRD's
``status.storedVersions``; only then can v1alpha1 stop being served. During the overlap kubegate reads
both: the operator watches the storage version, and routes files (:mod:`kubegate.compiler.resources`,
which knows one apiVersion today) accept either. The route table pushed to the data plane has its own
version (:data:`kubegate.compiler.table.TABLE_API_VERSION`), independent of this one.

``python -m kubegate.api.crd`` prints the CRD; ``--write`` refreshes the checked-in
``crds/gatewayroutes.kubegate.dev.yaml`` (a test fails when it is stale).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml

from kubegate.api import models

PLURAL = "gatewayroutes"
SINGULAR = "gatewayroute"
SHORT_NAMES = ["gwr"]
#: ``kubectl get kubegate`` lists every resource of these categories (only GatewayRoutes, for now).
CATEGORIES = ["kubegate"]
CRD_NAME = f"{PLURAL}.{models.GROUP}"
CRD_FILENAME = f"{CRD_NAME}.yaml"
HEADER = (
    "# Generated from kubegate.api.models by `python -m kubegate.api.crd --write`; do not edit by hand.\n"
)

# Keys a structural schema may carry; anything else pydantic emits (title, additionalProperties, $defs,
# discriminator, ...) is dropped.
_KEPT_KEYS = frozenset(
    {
        "type",
        "description",
        "properties",
        "required",
        "items",
        "enum",
        "pattern",
        "format",
        "default",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-validations",
        "x-kubernetes-preserve-unknown-fields",
    }
)
_JUNCTORS = ("oneOf", "anyOf", "allOf", "not")
_EXCLUSIVE_BOUNDS = {"exclusiveMinimum": "minimum", "exclusiveMaximum": "maximum"}
_FIRST_KEYS = ("type", "description")


def _resolve_ref(ref: str, defs: dict[str, Any]) -> Any:
    prefix = "#/$defs/"
    if not ref.startswith(prefix):
        raise ValueError(f"unsupported $ref {ref!r}")
    return defs[ref[len(prefix) :]]


def _structural(node: dict[str, Any], defs: dict[str, Any], *, in_junctor: bool = False) -> dict[str, Any]:
    """One JSON-schema node → one structural-schema node (recursively)."""
    node = dict(node)
    # Inline references; the referring node's own keys (the field's description) win over the target's.
    while "$ref" in node or (len(node.get("allOf", ())) == 1 and "$ref" in node["allOf"][0]):
        ref = node.pop("$ref") if "$ref" in node else node.pop("allOf")[0]["$ref"]
        node = {**_resolve_ref(ref, defs), **node}
    # Optional[X]: anyOf [X, null] → X; the outer keys (description, pattern) apply to X.
    branches = node.get("anyOf")
    if branches and any(b == {"type": "null"} for b in branches):
        non_null = [b for b in branches if b != {"type": "null"}]
        if len(non_null) != 1:
            raise ValueError(f"cannot express a union of {len(non_null)} types in a structural schema")
        del node["anyOf"]
        if node.get("default", ...) is None:
            del node["default"]
        return _structural({**non_null[0], **node}, defs, in_junctor=in_junctor)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEPT_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs, in_junctor=in_junctor)
        elif key == "not":
            out[key] = _structural(value, defs, in_junctor=True)
        elif key in _JUNCTORS:
            out[key] = [_structural(sub, defs, in_junctor=True) for sub in value]
        elif key in _EXCLUSIVE_BOUNDS:
            # JSON Schema 2020-12 (pydantic) gives the bound itself; OpenAPI v3, like draft 4, a minimum or
            # maximum plus a flag.
            out[_EXCLUSIVE_BOUNDS[key]] = value
            out[key] = True
        else:
            out[key] = value
    if out.get("type") == "array" and "x-kubernetes-list-type" not in out:
        raise ValueError(
            f"a list without x-kubernetes-list-type (annotate it with models.ListType): {node!r}"
        )
    if "type" not in out and not in_junctor and not out.get("x-kubernetes-preserve-unknown-fields"):
        if "enum" in out and all(isinstance(v, str) for v in out["enum"]):
            out["type"] = "string"
        else:
            raise ValueError(f"schema node without a type: {node!r}")
    ordered = {key: out[key] for key in _FIRST_KEYS if key in out}
    ordered.update((key, value) for key, value in out.items() if key not in ordered)
    return ordered


def structural_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The structural (Kubernetes) schema of one pydantic model, by alias, all references inlined."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    return _structural(schema, defs)


def openapi_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of a whole GatewayRoute object."""
    return {
        "type": "object",
        "description": "GatewayRoute routes matching HTTP requests to weighted backends "
        "(Services of its namespace or static URLs).",
        "properties": {
            "apiVersion": {"type": "string", "description": "kubegate.dev/v1alpha1"},
            "kind": {"type": "string", "description": "GatewayRoute"},
            "metadata": {"type": "object"},
            "spec": structural_schema(models.GatewayRouteSpec),
            "status": structural_schema(models.GatewayRouteStatus),
        },
        "required": ["spec"],
    }


def _condition_column(condition_type: str, *, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {
        "name": condition_type,
        "type": "string",
        "description": f"The status of the route's {condition_type} condition.",
        "jsonPath": f'.status.conditions[?(@.type=="{condition_type}")].status',
    }
    if priority:
        column["priority"] = priority
    return column


def printer_columns() -> list[dict[str, Any]]:
    """``kubectl get gwr``: what the route matches and whether it is served; ``-o wide`` (priority 1) adds
    ResolvedRefs. A list column shows the whole list (as JSON), the only way a column can."""
    return [
        {
            "name": "Hosts",
            "type": "string",
            "description": "match.hosts; empty: any host.",
            "jsonPath": ".spec.match.hosts",
        },
        {
            "name": "Path",
            "type": "string",
            "description": "match.path.value (Prefix unless match.path.type says otherwise).",
            "jsonPath": ".spec.match.path.value",
        },
        _condition_column("Accepted"),
        _condition_column("Programmed"),
        _condition_column("ResolvedRefs", priority=1),
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def build_crd() -> dict[str, Any]:
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition for GatewayRoute."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": models.GROUP,
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Writes a node shared by two fields (requestHeaders and responseHeaders are one model) twice, not
    as a YAML anchor and alias: the file reads, greps and diffs field by field."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd() -> str:
    """The CRD as YAML text, exactly as checked in."""
    body = yaml.dump(build_crd(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    return HEADER + body


def default_crd_path() -> Path:
    """``crds/gatewayroutes.kubegate.dev.yaml`` at the repository root (three levels above this package)."""
    return Path(__file__).resolve().parents[3] / "crds" / CRD_FILENAME


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubegate.api.crd", description="Print or write the GatewayRoute CRD."
    )
    parser.add_argument(
        "--write",
        nargs="?",
        const=str(default_crd_path()),
        metavar="PATH",
        help=f"write the CRD to PATH (default: the repository's crds/{CRD_FILENAME}) instead of printing it",
    )
    args = parser.parse_args(argv)
    text = render_crd()
    if args.write is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.write)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
