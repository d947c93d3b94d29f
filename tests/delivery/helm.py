"""Finding and running the helm binaries that the chart tests use.

The tests run every helm check with each helm major version found: ``helm`` on PATH or ``.ci/bin/helm``
(where ``.ci/run`` installs it with ``../shared/tools/get-helm.sh``), and the binary named by
``$KUBEGATE_HELM3`` (CI installs helm 3 there with ``HELM_MAJOR=3``). ``$KUBEGATE_HELM`` overrides the
first. Helm's cache, config and data go to a temporary directory, never the user's.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubegate"
RELEASE = "kubegate"
NAMESPACE = "kubegate-system"

GET_HELM = "bash ../shared/tools/get-helm.sh .ci/bin (from the repository root)"


@dataclasses.dataclass(frozen=True)
class Helm:
    path: Path
    version: str  # "v4.1.4"

    @property
    def major(self) -> int:
        return int(self.version.lstrip("v").split(".")[0])

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.path), *args],
            capture_output=True,
            text=True,
            env=_helm_env(),
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)


@cache
def _helm_env() -> dict[str, str]:
    home = tempfile.mkdtemp(prefix="kubegate-helm-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env.update(
        HELM_CACHE_HOME=f"{home}/cache",
        HELM_CONFIG_HOME=f"{home}/config",
        HELM_DATA_HOME=f"{home}/data",
        KUBECONFIG=f"{home}/no-kubeconfig",  # never talk to a real cluster
    )
    return env


def _version(path: Path) -> str:
    out = subprocess.run(
        [str(path), "version", "--short"], capture_output=True, text=True, env=_helm_env(), timeout=30
    )
    match = re.match(r"v\d+\.\d+\.\d+", out.stdout.strip())
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"{path} does not look like helm: {out.stdout!r} {out.stderr!r}")
    return match.group(0)


@cache
def available() -> dict[int, Helm]:
    """The helm binaries found, by major version (the first found wins for each major)."""
    candidates: list[Path] = []
    primary = os.environ.get("KUBEGATE_HELM") or shutil.which("helm")
    if primary:
        candidates.append(Path(primary))
    if (ROOT / ".ci/bin/helm").is_file():
        candidates.append(ROOT / ".ci/bin/helm")
    helm3 = os.environ.get("KUBEGATE_HELM3")
    if helm3:
        if not Path(helm3).is_file():  # asked for explicitly: a wrong path is an error, not a skip
            raise RuntimeError(f"KUBEGATE_HELM3={helm3} does not exist")
        candidates.append(Path(helm3))
    found: dict[int, Helm] = {}
    for path in candidates:
        helm = Helm(path=path, version=_version(path))
        found.setdefault(helm.major, helm)
    return found
