"""Golden-file bookkeeping shared by the compiler, matcher and chart tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def check_no_stale_outputs(folder: Path, cases: Iterable[str], *, regen: bool) -> None:
    """Out-files whose case is gone fail the test; ``--regen-golden`` deletes them instead."""
    known = set(cases)
    stale = [p for p in folder.glob("*.out.yaml") if p.name.removesuffix(".out.yaml") not in known]
    if regen:
        for path in stale:
            path.unlink()
        return
    assert not stale, f"out-files without an input case (delete them with pytest --regen-golden): {stale}"
