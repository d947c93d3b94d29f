"""Golden tests of the compiler: ``golden/<case>.in.yaml`` → ``golden/<case>.out.yaml``.

The out-file is exactly what ``kubegate compile <case>.in.yaml`` prints (content hash, table in wire
form, every route's status, load problems), compiled with a fixed ``now``. Run pytest with
``--regen-golden`` to rewrite the out-files (and delete those whose in-file is gone), then review the
YAML diff.

Aspects covered: defaults, every match field, service and url backends against EndpointSlices,
unresolved and idle backends, each invalid field, semantic checks (regex, glob, weights, duplicate
backends), conflicts, and invalid objects not disturbing valid ones.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kubegate.compiler import compile as compiler
from kubegate.compiler import render, resources
from tests import golden

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
CASES = sorted(path.name.removesuffix(".in.yaml") for path in GOLDEN.glob("*.in.yaml"))


def compile_case(case: str) -> str:
    """The rendered result; sources are named relative to golden/, independent of the checkout."""
    source = f"{case}.in.yaml"
    bundle = resources.load_yaml((GOLDEN / source).read_text(encoding="utf-8"), source=source)
    return render.render_result(compiler.compile_bundle(bundle, now=NOW), "yaml")


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, regen_golden: bool) -> None:
    actual = compile_case(case)
    out = GOLDEN / f"{case}.out.yaml"
    if regen_golden:
        out.write_text(actual, encoding="utf-8")
        return
    assert out.exists(), f"{out.name} is missing: run pytest with --regen-golden"
    assert actual == out.read_text(encoding="utf-8"), f"{out.name} differs: review, then --regen-golden"


def test_no_stale_golden_outputs(regen_golden: bool) -> None:
    golden.check_no_stale_outputs(GOLDEN, CASES, regen=regen_golden)
