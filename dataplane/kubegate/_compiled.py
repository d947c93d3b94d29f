"""Which modules of this install are compiled (mypyc), and a refusal to run compiled code that is stale.

``KUBEGATE_COMPILE=1 pip install ...`` compiles the data plane's hot path with mypyc (``setup.py`` lists
the modules; the container image and CI build it so). An editable install puts each compiled module next
to its source (``proxy.cpython-311-x86_64-linux-gnu.so`` beside ``proxy.py``), and Python imports the
compiled one first: after an edit of ``proxy.py`` the old compiled code would run, silently, in the
tests and in ``kubegate serve``. So ``setup.py`` records the SHA-256 of every compiled module's source in
``_compiled.json``, and :func:`check` (run when ``kubegate.dataplane``, the package of every compiled
module, is imported) compares it with the source on
disk: a compiled module whose source changed, or one without a record, stops the import with the two
ways out (rebuild, or ``python -m kubegate._compiled --clean`` to run as plain Python). Without a
manifest and without compiled modules (a plain install) there is nothing to check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MANIFEST = PACKAGE / "_compiled.json"

REBUILD = (
    "rebuild it (KUBEGATE_COMPILE=1 pip install -e . from the repository root) or run as plain Python "
    "(python -m kubegate._compiled --clean)"
)


class StaleBuild(ImportError):
    """A compiled module does not match its source."""


def _compiled_files(package: Path) -> dict[str, Path]:
    """The compiled modules present in ``package``, by dotted name."""
    found: dict[str, Path] = {}
    for path in package.rglob("*.*"):
        relative = str(path.relative_to(package.parent))
        # the longest suffix first: ".cpython-311-x86_64-linux-gnu.so" before ".so"
        suffix = next((s for s in EXTENSION_SUFFIXES if relative.endswith(s)), None)
        if suffix is not None:
            found[relative[: -len(suffix)].replace("/", ".")] = path
    return found


def _manifest(package: Path) -> dict[str, str]:
    manifest = package / MANIFEST.name
    try:
        data = json.loads(manifest.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StaleBuild(f"{manifest} cannot be read ({exc}): {REBUILD}") from exc
    if not isinstance(data, dict):
        raise StaleBuild(f"{manifest} is not a JSON object: {REBUILD}")
    return {str(k): str(v) for k, v in data.items()}


def _source(package: Path, name: str) -> Path:
    return package.parent.joinpath(*name.split(".")).with_suffix(".py")


def compiled_modules(package: Path = PACKAGE) -> list[str]:
    """The dotted names of the compiled modules this install imports (empty: plain Python)."""
    return sorted(_compiled_files(package))


def problems(package: Path = PACKAGE) -> list[str]:
    """What is stale: compiled modules whose source changed since they were compiled, or that have no
    record in the manifest. Empty when every compiled module matches its source."""
    compiled = _compiled_files(package)
    if not compiled:
        return []
    recorded = _manifest(package)
    found = []
    for name in sorted(compiled):
        digest = recorded.get(name)
        if digest is None:
            found.append(f"{name} is compiled but not in {MANIFEST.name}")
            continue
        source = _source(package, name)
        try:
            data = source.read_bytes()
        except OSError:
            continue  # an install without sources (none is built so): nothing to compare with
        if hashlib.sha256(data).hexdigest() != digest:
            found.append(f"{name}: {source.name} changed after it was compiled")
    return found


def check(package: Path = PACKAGE) -> None:
    """Raise :class:`StaleBuild` when a compiled module does not match its source."""
    found = problems(package)
    if found:
        listed = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise StaleBuild(f"kubegate's compiled modules are stale ({listed}): {REBUILD}")


def clean(package: Path = PACKAGE) -> list[Path]:
    """Remove the compiled modules and the manifest (an editable install then runs as plain Python)."""
    removed = list(_compiled_files(package).values())
    manifest = package / MANIFEST.name
    if manifest.exists():
        removed.append(manifest)
    # the group's shared library: beside the package (a wheel) or at the repository root (editable)
    group = [
        path
        for folder in (package.parent, package.parent.parent)
        for path in folder.glob("kubegate__mypyc.*")
        if path.suffix in (".so", ".pyd")
    ]
    for path in [*removed, *group]:
        path.unlink()
    return [*removed, *group]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubegate._compiled", description=__doc__)
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules (plain Python)")
    args = parser.parse_args(argv)
    if args.clean:
        for path in clean():
            print(f"removed {path}")
        return 0
    names = compiled_modules()
    print(f"{len(names)} compiled modules" + (" (mypyc)" if names else " (plain Python)"))
    for name in names:
        print(f"  {name}")
    found = problems()
    for problem in found:
        print(f"stale: {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
