"""Mutation testing of the modules where a silent bug is a security or data-loss bug (issue 14).

Not a test and not part of CI (it takes minutes to an hour): it changes one small thing in the code at a
time (a mutant: ``<`` for ``<=``, ``and`` for ``or``, a constant, a deleted statement, an element taken out
of a set of hop-by-hop headers, ...), runs the focused tests of that module, and prints the mutants the tests
did not notice ("survivors"), with the score killed/total per module. A survivor is either a missing test or
an equivalent mutant (one that does not change behaviour); the note of issue 14 lists which is which.

The tool is this file: a small AST mutator, no dependency. mutmut 3 and cosmic-ray were considered:
mutmut 3 mutates only function bodies through trampolines, so module-level constants such as
``httpbits.HOP_BY_HOP`` (the security-relevant part of that module) are never mutated, and it cannot target
a nested function (the push-token check is ``build_admin_app.read_push``); cosmic-ray mutates the files of
the tree it runs in, has no filter by function and runs every operator (many noisy mutants). Here a
target is a module plus, optionally, the qualified names of the functions to mutate (``TableDelta.apply``,
``build_admin_app.read_push``; ``<module>`` for the module-level statements).

Safety: the working tree is never written to. The repository (without ``.git``, ``.venv``, ``.ci`` and caches)
is copied to a temporary directory, the mutant is written there, and the tests run there with
``PYTHONPATH`` pointing at the copy (ahead of the editable install; subprocesses such as ``kubegate serve``
inherit it) and ``PYTHONDONTWRITEBYTECODE=1`` (a same-size mutant written in the same second must not reuse
a stale ``.pyc``). The script checks that the copy is what gets imported before it starts, and that the
focused tests pass on the unmutated copy. One mutant runs at a time (``pytest -x``, fastest test file first,
so most mutants are killed in seconds; a survivor costs the whole selection). A mutant whose tests run past
``--timeout`` (default: 3 x the baseline + 30 s) counts as killed (a hang is noticed).

How to run (from the repository root, with the project's venv)::

    .venv/bin/python bench/mutation.py --list                     # targets, their tests, every mutant
    .venv/bin/python bench/mutation.py pathnorm                   # one target
    .venv/bin/python bench/mutation.py pathnorm httpbits admin-auth  # several, one after the other
    .venv/bin/python bench/mutation.py httpbits --only 12,40      # re-run some mutants (numbers as listed)
    .venv/bin/python bench/mutation.py httpbits --before          # without the quick mutant-killing tests
    .venv/bin/python bench/mutation.py all --json out.json        # every target

Each target's tests run in two tiers: its ``quick`` unit tests (written against earlier survivors, about a
second) and then, only for the mutants those miss, the module's other tests (``tests``). A survivor always
costs both tiers.

How long (measured 2026-11-30 on the shared 2-core development machine, other jobs running): ``pathnorm``
121 mutants in 4 minutes; ``httpbits`` 114 mutants in 6 minutes (each of its 9 equivalent survivors costs
the 30 s of the proxy tests; with ``--before`` every mutant runs the proxy tests: about an hour);
``admin-auth`` 34 mutants in 1.6 minutes (``--before``: about 30 s per mutant, the admin tests start real
data planes); ``table-delta`` 53 mutants in 2 minutes; ``push-token`` (20 mutants) and
``status`` (150 mutants, 10 s of tests each) not measured yet, estimated 10 and 25 minutes. Exit status: 0
when every selected target ran, 2 when a baseline failed, a test file is missing or the copy was not the
code imported; 128 + the signal number when stopped (the copy is removed either way).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    name: str
    source: str  # path of the module, relative to the repository root
    module: str  # its import name (to check that the copy is what gets imported)
    tests: tuple[str, ...]  # the module's own tests, fastest first: pytest -x stops at the first failure
    functions: tuple[str, ...] = ()  # qualified names to mutate ("<module>": top level); empty: everything
    # Fast unit tests written against the survivors of earlier runs: run first, the slower ``tests`` only
    # for the mutants these miss. ``--before`` leaves them out (the score the rest of the suite gets).
    quick: tuple[str, ...] = ()


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "pathnorm",
            "dataplane/kubegate/dataplane/pathnorm.py",
            "kubegate.dataplane.pathnorm",
            ("tests/dataplane/test_pathnorm.py",),
            quick=("tests/dataplane/test_pathnorm_mutants.py",),
        ),
        Target(
            "httpbits",
            "dataplane/kubegate/dataplane/httpbits.py",
            "kubegate.dataplane.httpbits",
            (
                "tests/dataplane/test_differential.py",
                "tests/dataplane/test_smuggling.py",
                "tests/dataplane/test_proxy.py",
            ),
            quick=("tests/dataplane/test_httpbits.py",),
        ),
        Target(
            "admin-auth",
            "dataplane/kubegate/dataplane/admin.py",
            "kubegate.dataplane.admin",
            ("tests/dataplane/test_admin_hardening.py",),
            functions=("build_admin_app.read_push",),
            quick=("tests/dataplane/test_admin_auth.py",),
        ),
        Target(
            "push-token",
            "dataplane/kubegate/dataplane/server.py",
            "kubegate.dataplane.server",
            ("tests/dataplane/test_admin_hardening.py",),
            functions=("push_token_source",),
        ),
        Target(
            "table-delta",
            "dataplane/kubegate/compiler/table.py",
            "kubegate.compiler.table",
            ("tests/dataplane/test_snapshot.py", "tests/compiler"),
            functions=("TableDelta",),
        ),
        Target(
            "status",
            "operator/kubegate_operator/status.py",
            "kubegate_operator.status",
            ("tests/operator/test_units.py",),
        ),
    )
}

# --- the mutator ------------------------------------------------------------------------------------------

_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
}
_SKIPPED_CALLS = {"debug", "info", "warning", "error", "exception"}  # logging: text only


@dataclass
class Mutant:
    number: int
    line: int
    function: str
    kind: str
    before: str
    after: str
    apply: Callable[[], None] = field(repr=False, compare=False)

    def describe(self) -> str:
        where = f"{self.function}, " if self.function else ""
        return f"#{self.number} line {self.line} ({where}{self.kind}): {self.before}  ->  {self.after}"


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _children(node: ast.AST) -> Iterator[tuple[str, int | None, ast.AST]]:
    for name, value in ast.iter_fields(node):
        if isinstance(value, ast.AST):
            yield name, None, value
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, ast.AST):
                    yield name, i, item


def _replace(parent: ast.AST, name: str, index: int | None, new: ast.AST) -> None:
    if index is None:
        setattr(parent, name, new)
    else:
        getattr(parent, name)[index] = new


def enumerate_mutants(tree: ast.Module, functions: tuple[str, ...]) -> list[Mutant]:
    """Every mutant of ``tree`` (in a fixed order); each one's ``apply`` edits ``tree`` in place."""
    found: list[Mutant] = []

    def wanted(qual: str) -> bool:
        if not functions:
            return True
        return any(qual == f or qual.startswith(f + ".") for f in functions) or (
            "<module>" in functions and qual == ""
        )

    def add(
        node: ast.AST, qual: str, kind: str, after: Callable[[], ast.AST], apply: Callable[[], None]
    ) -> None:
        before = ast.unparse(node)
        found.append(
            Mutant(
                len(found) + 1, getattr(node, "lineno", 0), qual, kind, before, ast.unparse(after()), apply
            )
        )

    def visit(node: ast.AST, qual: str, parent: ast.AST | None, name: str, index: int | None) -> None:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            qual = f"{qual}.{node.name}" if qual else node.name
            # decorators, defaults and annotations belong to the definition, not to its body
            for i, stmt in enumerate(node.body):
                if not (i == 0 and _is_docstring(stmt)):
                    visit(stmt, qual, node, "body", i)
            return
        if isinstance(node, ast.arg | ast.JoinedStr) or name in ("annotation", "returns"):
            return  # annotations and f-string text (messages)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "Literal"
        ):
            return  # a type alias
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in _SKIPPED_CALLS:
                return
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            # the exception type and its arguments are not mutated (the message is text); the raise is dropped
            if wanted(qual) and parent is not None:
                add(
                    node,
                    qual,
                    "raise removed",
                    ast.Pass,
                    lambda p=parent, n=name, i=index: _replace(p, n, i, ast.Pass()),
                )
            return
        if wanted(qual) and parent is not None:
            mutate(node, qual, parent, name, index)
        for child_name, child_index, child in _children(node):
            visit(child, qual, node, child_name, child_index)

    def mutate(node: ast.AST, qual: str, parent: ast.AST, name: str, index: int | None) -> None:
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                swap = _COMPARE_SWAPS.get(type(op))
                if swap is not None:

                    def apply(node: ast.Compare = node, i: int = i, swap: type[ast.cmpop] = swap) -> None:
                        node.ops[i] = swap()

                    add(node, qual, "comparison", lambda a=apply, n=node: _preview(n, a), apply)
        elif isinstance(node, ast.BoolOp):

            def apply_bool(node: ast.BoolOp = node) -> None:
                node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()

            add(node, qual, "and/or", lambda: _preview(node, apply_bool), apply_bool)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAPS:

            def apply_bin(node: ast.BinOp = node) -> None:
                node.op = _BINOP_SWAPS[type(node.op)]()

            add(node, qual, "operator", lambda: _preview(node, apply_bin), apply_bin)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            add(
                node,
                qual,
                "not removed",
                lambda: node.operand,
                lambda: _replace(parent, name, index, node.operand),
            )
        elif isinstance(node, ast.Constant) and not isinstance(parent, ast.Expr):
            new = _constant_mutation(node.value)
            if new is not _NO_MUTATION:

                def apply_const(node: ast.Constant = node, new: object = new) -> None:
                    node.value = new

                add(node, qual, "constant", lambda: ast.Constant(new), apply_const)
        elif isinstance(node, ast.Set | ast.List | ast.Tuple) and isinstance(
            getattr(node, "ctx", ast.Load()), ast.Load
        ):
            elts = node.elts
            if 1 < len(elts) <= 32 and all(isinstance(e, ast.Constant) for e in elts):
                for i in range(len(elts)):

                    def apply_drop(node: ast.Set | ast.List | ast.Tuple = node, i: int = i) -> None:
                        del node.elts[i]

                    add(
                        node, qual, "element removed", lambda a=apply_drop, n=node: _preview(n, a), apply_drop
                    )
        elif (
            isinstance(node, ast.Return)
            and node.value is not None
            and not (isinstance(node.value, ast.Constant) and node.value.value is None)
        ):

            def apply_return(node: ast.Return = node) -> None:
                node.value = ast.Constant(None)

            add(node, qual, "returns None", lambda: _preview(node, apply_return), apply_return)
        elif isinstance(node, ast.Expr | ast.AugAssign | ast.Continue | ast.Break) and index is not None:
            if not _is_docstring(node):
                add(
                    node,
                    qual,
                    "statement removed",
                    ast.Pass,
                    lambda: _replace(parent, name, index, ast.Pass()),
                )
        elif (
            isinstance(node, ast.Assign)
            and qual  # a module-level name set to None only breaks the import
            and not (isinstance(node.value, ast.Constant) and node.value.value is None)
        ):

            def apply_assign(node: ast.Assign = node) -> None:
                node.value = ast.Constant(None)

            add(node, qual, "assigned None", lambda: _preview(node, apply_assign), apply_assign)

    visit(tree, "", None, "", None)
    return found


_NO_MUTATION = object()


def _constant_mutation(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return "XX" + value + "XX"
    if isinstance(value, bytes):
        return b"XX" + value + b"XX"
    return _NO_MUTATION


def _preview(node: ast.AST, apply: Callable[[], None]) -> ast.AST:
    """``node`` as ``apply`` would make it, without changing ``node``."""
    saved = copy.deepcopy(node)
    apply()
    result = copy.deepcopy(node)
    node.__dict__.update(saved.__dict__)
    return result


def mutated_source(source: str, functions: tuple[str, ...], number: int) -> str:
    tree = ast.parse(source)
    mutant = enumerate_mutants(tree, functions)[number - 1]
    mutant.apply()
    ast.fix_missing_locations(tree)
    text = ast.unparse(tree)
    compile(text, "<mutant>", "exec")
    return text


# --- running ----------------------------------------------------------------------------------------------

_IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".ci",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "__pycache__",
    "*.egg-info",
    "mutants",
)


def copy_tree(dest: Path) -> Path:
    work = dest / "repo"
    shutil.copytree(ROOT, work, ignore=_IGNORED, symlinks=True)
    return work


def test_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(work / "dataplane"), str(work / "operator"), str(work)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_tests(work: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    """``passed``, ``failed`` or ``timeout``, and the seconds it took."""
    args = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    proc = subprocess.Popen(
        args,
        cwd=work,
        env=test_env(work),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout", time.monotonic() - start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return ("passed" if code == 0 else "failed"), time.monotonic() - start


def check_import(work: Path, target: Target) -> bool:
    code = f"import {target.module} as m; print(m.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        env=test_env(work),
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() == str(work / target.source)


def run_target(target: Target, work: Path, args: argparse.Namespace) -> dict[str, object]:
    path = work / target.source
    original = path.read_text()
    mutants = enumerate_mutants(ast.parse(original), target.functions)
    only = {int(n) for n in args.only.split(",")} if args.only else None
    selected = [m for m in mutants if only is None or m.number in only]
    tiers = [tier for tier in ((() if args.before else target.quick), target.tests) if tier]
    print(f"\n== {target.name}: {target.source} {list(target.functions) or ''}", flush=True)
    for tier in tiers:
        print(f"   tests: {' '.join(tier)}")
    missing = [t for tier in tiers for t in tier if not (work / t).exists()]
    if missing:
        print(f"   ERROR: no such test file: {' '.join(missing)}", flush=True)
        return {"target": target.name, "error": "missing test files"}
    if not check_import(work, target):
        print("   ERROR: the copy is not what gets imported; refusing to run", flush=True)
        return {"target": target.name, "error": "import check failed"}
    timeouts = []
    for tier in tiers:
        status, baseline = run_tests(work, tier, timeout=args.baseline_timeout)
        if status != "passed":
            print(f"   ERROR: {' '.join(tier)} fail on the unmutated copy ({status})", flush=True)
            return {"target": target.name, "error": f"baseline {status}"}
        timeouts.append(args.timeout or baseline * 3 + 30)
        print(f"   baseline {baseline:.1f} s, timeout {timeouts[-1]:.0f} s: {' '.join(tier)}", flush=True)
    print(f"   {len(selected)} of {len(mutants)} mutants", flush=True)
    survivors: list[Mutant] = []
    killed = 0
    start = time.monotonic()
    try:
        for mutant in selected:
            try:
                path.write_text(mutated_source(original, target.functions, mutant.number))
            except (SyntaxError, ValueError):
                print(f"   skipped (does not compile): {mutant.describe()}")
                continue
            took = 0.0
            for tier, timeout in zip(tiers, timeouts, strict=True):
                status, seconds = run_tests(work, tier, timeout)
                took += seconds
                if status != "passed":
                    break
            if status == "passed":
                survivors.append(mutant)
                print(f"   SURVIVED ({took:.0f} s) {mutant.describe()}", flush=True)
            else:
                killed += 1
                if args.verbose:
                    print(f"   killed ({status}, {took:.0f} s) {mutant.describe()}", flush=True)
            done = killed + len(survivors)
            if done % 20 == 0:
                print(
                    f"   ... {done}/{len(selected)} ({(time.monotonic() - start) / 60:.1f} min)", flush=True
                )
    finally:
        path.write_text(original)
    total = killed + len(survivors)
    elapsed = time.monotonic() - start
    print(
        f"   score {target.name}: {killed}/{total} killed, {len(survivors)} survived"
        f" ({elapsed / 60:.1f} min)",
        flush=True,
    )
    return {
        "target": target.name,
        "killed": killed,
        "total": total,
        "seconds": round(elapsed),
        "survivors": [m.describe() for m in survivors],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"'all' or some of: {', '.join(TARGETS)}")
    parser.add_argument(
        "--list", action="store_true", help="print the targets and their mutants, run nothing"
    )
    parser.add_argument("--only", help="comma-separated mutant numbers (with one target)")
    parser.add_argument(
        "--before", action="store_true", help="without the targets' quick (mutant-killing) test files"
    )
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 3 x baseline + 30)")
    parser.add_argument("--baseline-timeout", type=float, default=600)
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print the killed mutants")
    args = parser.parse_args(argv)
    names = (
        list(TARGETS)
        if (args.targets in ([], ["all"]) and args.list) or args.targets == ["all"]
        else args.targets
    )
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        parser.error(f"unknown target(s) {unknown}; choose from: all, {', '.join(TARGETS)}")
    if args.only and len(names) != 1:
        parser.error("--only needs exactly one target")
    if args.list:
        for name in names:
            target = TARGETS[name]
            mutants = enumerate_mutants(ast.parse((ROOT / target.source).read_text()), target.functions)
            print(f"== {name}: {target.source} {list(target.functions) or ''}: {len(mutants)} mutants")
            print(f"   tests: {' '.join(target.quick + target.tests)}")
            for mutant in mutants:
                print(f"   {mutant.describe()}")
        return 0

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds: the module is restored, the copy removed

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    results = []
    with tempfile.TemporaryDirectory(prefix="kubegate-mutation-") as tmp:
        work = copy_tree(Path(tmp))
        for name in names:
            results.append(run_target(TARGETS[name], work, args))
    print("\nsummary")
    for result in results:
        if "error" in result:
            print(f"  {result['target']:12} ERROR {result['error']}")
        else:
            print(
                f"  {result['target']:12} {result['killed']}/{result['total']} killed ({result['seconds']} s)"
            )
            for line in result["survivors"]:  # type: ignore[attr-defined]
                print(f"      {line}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 2 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
