"""Fixtures of the tests against a real control plane: one etcd + kube-apiserver per test session.

The binaries come from ``bash hack/tools.sh`` (see ``tests/controlplane.py``). When they are missing
the tests skip with one line saying so; with ``KUBEGATE_REQUIRE_TOOLS=1`` (``.ci/run`` sets it, after
building them) they fail instead, so that CI cannot go green with the control-plane tests unrun.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import controlplane

REQUIRE_TOOLS = "KUBEGATE_REQUIRE_TOOLS"
HERE = Path(__file__).resolve().parent


def _missing_reason() -> str | None:
    missing = controlplane.missing_tools()
    return f"{', '.join(missing)} not built: run `{controlplane.BUILD_COMMAND}`" if missing else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without the tools (and without ``KUBEGATE_REQUIRE_TOOLS=1``), skip every test here that needs the
    control plane by a mark, so that pytest sums the skips up in one line per file, not one per test."""
    reason = _missing_reason()
    if reason is None or os.environ.get(REQUIRE_TOOLS) == "1":
        return
    for item in items:
        if HERE in item.path.parents and "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.ControlPlane]:
    """A running etcd + kube-apiserver with an admin kubeconfig, shared by the whole session."""
    reason = _missing_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_TOOLS) == "1":
            pytest.fail(f"{reason} ({REQUIRE_TOOLS}=1: a missing tool is a failure)", pytrace=False)
        pytest.skip(reason)
    plane = controlplane.ControlPlane(workdir=tmp_path_factory.mktemp("controlplane"))
    plane.start()  # raises ControlPlaneError with the servers' log tails; never hangs
    try:
        yield plane
    finally:
        plane.stop()
