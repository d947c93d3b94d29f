"""The container images' recipes, checked without Docker (there is no Docker engine here).

Aspects covered, for ``Dockerfile.dataplane`` and ``Dockerfile.operator``: multi-stage with the final
stage on ``python:3.11-slim`` and nothing but the virtualenv copied from the build stage; no compiler
installed in the final stage; a numeric non-root USER; the entry point is the ``kubegate`` console script
with a subcommand the real CLI has; the operator image installs the operator extra; OCI labels and
EXPOSEd ports; every file a COPY names exists and is not excluded by ``.dockerignore`` (and the
package sources pyproject.toml needs are copied); the build context excludes tests, .git, virtualenvs and
a checkout's own compiled modules; the data-plane image builds its wheel with the hot path compiled
(``KUBEGATE_COMPILE=1``, setup.py), without build isolation, in the build stage only.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path

import pytest

from kubegate import cli
from tests.delivery.helm import ROOT

IMAGES = {
    "Dockerfile.dataplane": {"command": "serve", "ports": {"8080", "8443", "9090"}},
    "Dockerfile.operator": {"command": "operator", "ports": {"8000"}},
}
OCI_LABELS = {"title", "description", "version", "revision", "licenses"}
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|make|python3?-dev)\b")


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments)


def parse(path: Path) -> list[Stage]:
    """Instructions by stage: comments dropped, continuation lines joined, ARG defaults substituted."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        if instruction == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name, instructions=[]))
        elif stages:
            stages[-1].instructions.append((instruction, rest))
    return stages


def _glob_part(part: str) -> str:
    special = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    if part in special:
        return special[part]
    return part if part.startswith("[") else re.escape(part)


def dockerignore_excludes(relative: str) -> bool:
    """Docker's rules: patterns in order, the last that matches the path or a parent wins; '!' re-includes."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(_glob_part(part) for part in re.split(r"(\*\*/?|\*|\?|\[[^]]*\])", pattern))
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_final_stage_is_slim_python_without_compilers(dockerfile: str) -> None:
    stages = parse(ROOT / dockerfile)
    assert len(stages) >= 2, "multi-stage: build stage, then the runtime stage"
    final = stages[-1]
    assert final.base == "python:3.11-slim"
    runs = " ".join(rest for ins, rest in final.instructions if ins == "RUN")
    assert not COMPILERS.search(runs), f"final stage installs a compiler: {runs}"
    copies_from = [rest for ins, rest in final.instructions if ins == "COPY" and rest.startswith("--from")]
    assert copies_from == [f"--from={stages[0].name} /opt/kubegate /opt/kubegate"]
    assert any(ins == "RUN" and "pip wheel" in rest for ins, rest in stages[0].instructions)


def test_dataplane_image_compiles_the_hot_path() -> None:
    build, final = parse(ROOT / "Dockerfile.dataplane")[0], parse(ROOT / "Dockerfile.dataplane")[-1]
    runs = [rest for ins, rest in build.instructions if ins == "RUN"]
    wheel = next(rest for rest in runs if "pip wheel" in rest)
    assert "KUBEGATE_COMPILE=1" in wheel and "--no-build-isolation" in wheel
    # mypyc needs the dependencies' types: installed before the wheel is built, in the same stage
    assert wheel.index("pip install .") < wheel.index("pip wheel") and "mypy" in wheel
    assert COMPILERS.search(" ".join(runs)), "the build stage needs a C compiler for mypyc"
    assert "KUBEGATE_COMPILE" not in " ".join(rest for _, rest in final.instructions)
    copies = " ".join(rest for ins, rest in build.instructions if ins == "COPY")
    assert "setup.py" in copies.split()


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_runs_as_numeric_non_root_user(dockerfile: str) -> None:
    final = parse(ROOT / dockerfile)[-1]
    users = [rest for ins, rest in final.instructions if ins == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {users[-1]} is not a numeric non-root user"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    env = " ".join(rest for ins, rest in final.instructions if ins == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root: Python must not write .pyc files


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_entrypoint_is_the_kubegate_cli(dockerfile: str) -> None:
    final = parse(ROOT / dockerfile)[-1]
    (entrypoint,) = [json.loads(rest) for ins, rest in final.instructions if ins == "ENTRYPOINT"]
    command = IMAGES[dockerfile]["command"]
    assert entrypoint == ["kubegate", command]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubegate"] == "kubegate.cli:main"
    choices = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    assert choices is not None
    assert command in choices


def test_operator_image_installs_the_operator_extra() -> None:
    build = parse(ROOT / "Dockerfile.operator")[0]
    assert any(ins == "RUN" and "[operator]" in rest for ins, rest in build.instructions)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "operator" in extras


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_labels_and_ports(dockerfile: str) -> None:
    final = parse(ROOT / dockerfile)[-1]
    labels = " ".join(rest for ins, rest in final.instructions if ins == "LABEL")
    assert {m for m in re.findall(r"org\.opencontainers\.image\.(\w+)=", labels)} >= OCI_LABELS
    exposed = {p for ins, rest in final.instructions if ins == "EXPOSE" for p in rest.split()}
    assert exposed == IMAGES[dockerfile]["ports"]


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_copied_files_exist_and_reach_the_build_context(dockerfile: str) -> None:
    sources: list[str] = []
    for stage in parse(ROOT / dockerfile):
        for ins, rest in stage.instructions:
            if ins in ("COPY", "ADD") and not rest.startswith("--from"):
                sources += [w for w in rest.split()[:-1] if not w.startswith("--")]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"{dockerfile}: COPY {source}: no such file"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        # (a checkout's own compiled build, hack/compile.sh, stays out: the image compiles its own)
        files = [
            p
            for p in files
            if "__pycache__" not in p.parts and p.suffix != ".so" and p.name != "_compiled.json"
        ]
        assert files, f"{dockerfile}: COPY {source}: nothing to copy"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(relative), (
                f"{dockerfile}: {relative} is excluded by .dockerignore"
            )
    # What building the wheel needs: pyproject.toml, its readme and its package directories.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= {s.rstrip("/") for s in sources}


def test_build_context_leaves_out_what_images_do_not_need() -> None:
    for path in [
        ".git/config",
        "tests/conftest.py",
        ".venv/bin/python",
        "bench/README.md",
        "charts/kubegate/Chart.yaml",
        "dataplane/kubegate/__pycache__/cli.cpython-311.pyc",
        "kubegate.egg-info/PKG-INFO",
        "dataplane/kubegate/dataplane/proxy.cpython-311-x86_64-linux-gnu.so",
        "dataplane/kubegate/_compiled.json",
    ]:
        assert dockerignore_excludes(path), path
    for path in [
        "pyproject.toml",
        "setup.py",
        "README.md",
        "dataplane/kubegate/cli.py",
        "operator/kubegate_operator/__init__.py",
    ]:
        assert not dockerignore_excludes(path), path
