"""The compiled hot path (setup.py, hack/compile.sh) and the guard against a stale build (_compiled.py).

The guard is checked on a package laid out in a temporary folder (an empty file stands for a compiled
module: the guard looks at files, it never imports them). The installed package's own compiled set is
either nothing (plain Python) or exactly the modules setup.py compiles; with KUBEGATE_REQUIRE_COMPILED=1
(CI sets it, after hack/compile.sh) it must be the compiled set, and the modules the proxy runs must be the
compiled ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from kubegate import _compiled

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = EXTENSION_SUFFIXES[0]


def _dotted(relative: str) -> str:
    return "kubegate." + relative[: -len(".py")].replace("/", ".")


def _package(tmp_path: Path, sources: dict[str, str], compiled: list[str], recorded: list[str]) -> Path:
    package = tmp_path / "kubegate"
    for relative, text in sources.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for relative in compiled:
        (package / relative).with_suffix(SUFFIX).write_bytes(b"")
    manifest = {
        "kubegate." + r[: -len(".py")].replace("/", "."): hashlib.sha256(
            (package / r).read_bytes()
        ).hexdigest()
        for r in recorded
    }
    if recorded:
        (package / "_compiled.json").write_text(json.dumps(manifest))
    return package


def test_a_plain_install_has_nothing_to_check(tmp_path: Path) -> None:
    package = _package(tmp_path, {"dataplane/proxy.py": "x = 1\n"}, compiled=[], recorded=[])
    assert _compiled.compiled_modules(package) == []
    assert _compiled.problems(package) == []
    _compiled.check(package)


def test_a_fresh_build_passes_and_an_edited_source_is_refused(tmp_path: Path) -> None:
    sources = {"dataplane/proxy.py": "x = 1\n", "dataplane/policies/retry.py": "y = 2\n"}
    package = _package(tmp_path, sources, compiled=list(sources), recorded=list(sources))
    assert _compiled.compiled_modules(package) == [
        "kubegate.dataplane.policies.retry",
        "kubegate.dataplane.proxy",
    ]
    _compiled.check(package)
    (package / "dataplane/proxy.py").write_text("x = 2\n")
    assert _compiled.problems(package) == ["kubegate.dataplane.proxy: proxy.py changed after it was compiled"]
    with pytest.raises(_compiled.StaleBuild, match=r"proxy\.py changed.*hack|KUBEGATE_COMPILE=1"):
        _compiled.check(package)


def test_a_compiled_module_without_a_record_is_refused(tmp_path: Path) -> None:
    sources = {"dataplane/proxy.py": "x = 1\n", "dataplane/stats.py": "s = 1\n"}
    package = _package(tmp_path, sources, compiled=list(sources), recorded=["dataplane/proxy.py"])
    assert _compiled.problems(package) == ["kubegate.dataplane.stats is compiled but not in _compiled.json"]
    (package / "_compiled.json").write_text("[]")
    with pytest.raises(_compiled.StaleBuild, match="not a JSON object"):
        _compiled.check(package)


def test_clean_goes_back_to_plain_python(tmp_path: Path) -> None:
    sources = {"dataplane/proxy.py": "x = 1\n"}
    package = _package(tmp_path, sources, compiled=list(sources), recorded=list(sources))
    group = tmp_path / f"kubegate__mypyc{SUFFIX}"
    group.write_bytes(b"")
    removed = _compiled.clean(package)
    assert {p.name for p in removed} == {f"proxy{SUFFIX}", "_compiled.json", group.name}
    assert _compiled.compiled_modules(package) == [] and not group.exists()
    assert (package / "dataplane/proxy.py").exists()


def _setup_py_modules() -> list[str]:
    text = (ROOT / "setup.py").read_text()
    listed = re.search(r"COMPILED = \[(.*?)\]", text, re.S)
    assert listed is not None
    return sorted(
        "kubegate." + m[: -len(".py")].replace("/", ".") for m in re.findall(r'"([^"]+)"', listed[1])
    )


def test_the_installed_package_is_plain_or_exactly_the_compiled_hot_path() -> None:
    compiled = _compiled.compiled_modules()
    assert compiled in ([], _setup_py_modules())
    assert _compiled.problems() == []
    if os.environ.get("KUBEGATE_REQUIRE_COMPILED") == "1":
        assert compiled, "KUBEGATE_REQUIRE_COMPILED=1 but the hot path is not compiled: bash hack/compile.sh"
        from kubegate.dataplane import proxy

        assert proxy.__file__ is not None and proxy.__file__.endswith(SUFFIX)


def test_the_command_reports_what_is_compiled() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kubegate._compiled"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    count = len(_compiled.compiled_modules())
    assert out.startswith(f"{count} compiled modules")
