"""Fixtures of the delivery tests: the helm binaries (one test per helm major found) and cached renders.

A test that needs helm skips, with the reason and the command that installs it, when that helm major
version is not found (see ``tests/delivery/helm.py``), and so does one that needs kubernetes-validate when
it is not installed. With ``KUBEGATE_REQUIRE_TOOLS=1`` (``.ci/run`` sets it) such a test fails instead: in
CI a missing tool would leave the chart unchecked while the suite goes green.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from types import ModuleType
from typing import NoReturn

import pytest

from tests.delivery import helm as helmtools

NO_VALIDATOR = "kubernetes-validate is not installed (pip install kubernetes-validate; the test extra has it)"
MAJORS = (4, 3)
HOW_TO_GET = {
    4: f"helm 4 not found on PATH, $KUBEGATE_HELM or .ci/bin/helm: run {helmtools.GET_HELM}",
    3: "helm 3 not found: point $KUBEGATE_HELM3 at a helm 3 binary "
    "(HELM_MAJOR=3 bash ../shared/tools/get-helm.sh .ci/bin/helm3)",
}


REQUIRE_TOOLS = "KUBEGATE_REQUIRE_TOOLS"


def missing(reason: str) -> NoReturn:
    """A tool this test needs is not there: skip, or fail when ``KUBEGATE_REQUIRE_TOOLS=1``."""
    if os.environ.get(REQUIRE_TOOLS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_TOOLS}=1: a missing tool is a failure)", pytrace=False)
    pytest.skip(reason)


def import_tool(module: str, reason: str) -> ModuleType:
    """``pytest.importorskip``, except that it fails when ``KUBEGATE_REQUIRE_TOOLS=1``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(reason)


@pytest.fixture(params=MAJORS, ids=[f"helm{m}" for m in MAJORS])
def helm(request: pytest.FixtureRequest) -> helmtools.Helm:
    """Each helm major version in turn; skipped (or failed, see ``missing``) when not found."""
    found = helmtools.available().get(request.param)
    if found is None:
        missing(HOW_TO_GET[request.param])
    return found


@pytest.fixture
def newest_helm() -> helmtools.Helm:
    """The newest helm found, for checks whose outcome does not depend on helm's version."""
    found = helmtools.available()
    if not found:
        missing(HOW_TO_GET[4])
    return found[max(found)]


@cache
def render_case(helm: helmtools.Helm, values_file: str) -> str:
    """``helm template`` of the chart with one values file (cached: several tests read each render)."""
    result = helm.template("-f", values_file)
    if result.returncode != 0:
        raise AssertionError(f"helm {helm.version} template -f {values_file} failed:\n{result.stderr}")
    return result.stdout
