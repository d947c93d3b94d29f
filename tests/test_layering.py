"""Import rules between the layers (what kopf checks with import-linter, here as a plain AST scan).

- the compiler and the API models are pure: no kopf, no Kubernetes client, no web stack, no data plane;
- the data plane never imports the operator, kopf or a Kubernetes client;
- the operator may use the compiler and the API models, not the data plane.
A second test imports the data plane for real and checks that none of those modules got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
K8S = ("kopf", "kubernetes", "kubernetes_asyncio", "kubegate_operator")
RULES: dict[str, tuple[str, ...]] = {
    "dataplane/kubegate/api": (
        *K8S,
        "kubegate.dataplane",
        "kubegate.compiler",
        "starlette",
        "uvicorn",
        "httpx",
    ),
    "dataplane/kubegate/compiler": (*K8S, "kubegate.dataplane", "starlette", "uvicorn", "httpx"),
    "dataplane/kubegate/dataplane": K8S,
    "operator/kubegate_operator": ("kubegate.dataplane",),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(RULES))
def test_layer_imports(folder: str) -> None:
    forbidden = RULES[folder]
    offences = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in sorted(_imports(path))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert offences == []


def test_serving_loads_no_operator_code() -> None:
    code = (
        "import sys, kubegate.cli, kubegate.dataplane.server, kubegate.compiler.compile\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {K8S!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
