"""The GatewayRoute CustomResourceDefinition, generated from the pydantic models.

The models in :mod:`kubegate.api.models` are the only hand-written description of the API. This module
turns their JSON schema into a Kubernetes *structural* schema: every ``$ref`` inlined, ``Optional[X]``
(``anyOf`` with ``null``) turned into plain ``X`` (the field is simply not required), titles and
pydantic-only keys dropped, every node typed, and exclusive bounds written the OpenAPI v3 way
(``minimum`` plus ``exclusiveMinimum: true``). Descriptions, enums, patterns, bounds, scalar defaults
and CEL rules (``x-kubernetes-validations``) are kept, so ``kubectl explain`` and API-server validation
follow the models.

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


def _condition_column(condition_type: str) -> dict[str, Any]:
    return {
        "name": condition_type,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{condition_type}")].status',
    }


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
                "shortNames": ["gwr"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        _condition_column("Accepted"),
                        _condition_column("Programmed"),
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render_crd() -> str:
    """The CRD as YAML text, exactly as checked in."""
    body = yaml.safe_dump(build_crd(), sort_keys=False, default_flow_style=False, width=100)
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
