"""Finding and running the helm binaries that the chart tests use.

The tests run every helm check with each helm major version found: ``.tools/bin/helm`` (helm 4) and
``.tools/bin/helm3`` (helm 3), which ``bash hack/tools.sh`` builds from source at pinned versions (``.ci/run``
runs it), else ``helm`` on PATH or ``.ci/bin/helm``. ``$KUBEGATE_HELM`` and ``$KUBEGATE_HELM3`` name a
binary that wins over those. Helm's cache, config and data go to a temporary directory, never the user's.
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

TOOLS_BIN = ROOT / ".tools" / "bin"
GET_HELM = "bash hack/tools.sh (from the repository root; builds helm 3 and 4 into .tools/bin)"


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
    for variable in ("KUBEGATE_HELM", "KUBEGATE_HELM3"):
        named = os.environ.get(variable)
        if named:
            if not Path(named).is_file():  # asked for explicitly: a wrong path is an error, not a skip
                raise RuntimeError(f"{variable}={named} does not exist")
            candidates.append(Path(named))
    candidates += [path for path in (TOOLS_BIN / "helm", TOOLS_BIN / "helm3") if path.is_file()]
    on_path = shutil.which("helm")
    if on_path:
        candidates.append(Path(on_path))
    if (ROOT / ".ci/bin/helm").is_file():
        candidates.append(ROOT / ".ci/bin/helm")
    found: dict[int, Helm] = {}
    for path in candidates:
        helm = Helm(path=path, version=_version(path))
        found.setdefault(helm.major, helm)
    return found
