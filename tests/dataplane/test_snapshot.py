"""Building snapshots from pushed tables: unchanged routes are reused, changed ones validated afresh.

Aspects: a push that repeats most routes reuses their validated objects and runtime state (balancer
position); a changed route gets a new object and fresh state; the result equals a table validated from
scratch (same hash); a route whose pushed form is invalid is still rejected even if its id is known.
Deltas (``TableDelta``): applying the delta between two tables to the first gives the second (same hash,
unchanged route objects kept); a delta made for another table, or announcing another result, is refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from kubegate.compiler.table import DeltaConflict, RouteTable, TableDelta
from kubegate.dataplane.snapshot import SnapshotStore


def _wire(version: str, ports: dict[str, int]) -> dict[str, Any]:
    return RouteTable.from_wire(
        {
            "version": version,
            "routes": [
                {
                    "id": f"ns/{name}",
                    "namespace": "ns",
                    "name": name,
                    "match": {"path": {"type": "Prefix", "value": f"/{name}"}},
                    "backends": [{"name": f"b-{name}", "endpoints": [{"host": "127.0.0.1", "port": port}]}],
                }
                for name, port in ports.items()
            ],
        }
    ).to_wire()


def test_unchanged_routes_are_reused_and_keep_runtime_state() -> None:
    store = SnapshotStore(clock=lambda: 0.0)
    first = store.load(RouteTable.from_wire(_wire("v1", {"a": 1, "b": 2, "c": 3})))
    first.routes["ns/a"].split.pick()  # some runtime state

    pushed = _wire("v2", {"a": 1, "b": 20, "d": 4})
    table = RouteTable.from_wire(pushed, previous=store.current.table if store.current else None)
    second = store.load(table)

    assert second.routes["ns/a"] is first.routes["ns/a"]  # unchanged: same object, same balancer
    assert second.routes["ns/b"] is not first.routes["ns/b"]
    assert second.routes["ns/b"].route.backends[0].endpoints[0].port == 20
    assert set(second.routes) == {"ns/a", "ns/b", "ns/d"}
    assert second.hash == RouteTable.from_wire(pushed).content_hash()
    assert second.matcher.match("GET", "h", "/b/x", "", {}) is second.routes["ns/b"]


def test_a_known_id_with_invalid_content_is_still_rejected() -> None:
    previous = RouteTable.from_wire(_wire("v1", {"a": 1}))
    bad = _wire("v2", {"a": 1})
    bad["routes"][0]["backends"] = []
    with pytest.raises(ValidationError):
        RouteTable.from_wire(bad, previous=previous)


def test_a_delta_turns_the_base_table_into_the_target() -> None:
    base = RouteTable.from_wire(_wire("v1", {"a": 1, "b": 2, "c": 3}))
    target = RouteTable.from_wire(_wire("v2", {"a": 1, "b": 20, "d": 4}))
    delta = TableDelta.between(base, target)
    assert [r.id for r in delta.upsert] == ["ns/b", "ns/d"] and delta.remove == ("ns/c",)

    # over the wire and back, as PATCH /table receives it
    applied = TableDelta.model_validate(delta.to_wire()).apply(base)
    assert applied.content_hash() == target.content_hash() and applied.version == "v2"
    assert applied.routes[0] is base.routes[0]  # ns/a: the base's object, not a copy
    assert [r.id for r in applied.routes] == ["ns/a", "ns/b", "ns/d"]
    assert TableDelta.between(target, target).upsert == ()


def test_a_delta_for_another_table_or_with_a_wrong_result_is_refused() -> None:
    base = RouteTable.from_wire(_wire("v1", {"a": 1, "b": 2}))
    other = RouteTable.from_wire(_wire("v1", {"a": 1, "b": 3}))
    target = RouteTable.from_wire(_wire("v2", {"a": 1, "b": 2, "c": 3}))
    delta = TableDelta.between(base, target)
    with pytest.raises(DeltaConflict, match="applies to table"):
        delta.apply(other)
    lying = delta.model_copy(update={"hash": other.content_hash()})
    with pytest.raises(DeltaConflict, match="not the announced"):
        lying.apply(base)


def test_the_assembled_encoding_is_the_wire_form() -> None:
    """``encode()`` (joined from the routes' cached encodings) is ``to_wire()`` as JSON, and
    ``encoded_size()`` its exact length without building it."""
    for table in (RouteTable.from_wire(_wire("v1", {"a": 1, "b": 2})), RouteTable(version="empty")):
        assert json.loads(table.encode()) == table.to_wire()
        assert table.encoded_size() == len(table.encode())
