"""A compile that reuses per-route work (:class:`CompileMemo`) gives exactly what a full compile gives.

Aspects: unchanged objects are reused (the memo is exercised, also across status-only updates), and
after every kind of change (a spec edit, an EndpointSlice change, a deletion, a new conflict, an invalid
route fixed) the table, its hash and every status equal those of a compile without the memo.
"""

from __future__ import annotations

import copy
import itertools
import random
from datetime import UTC, datetime
from typing import Any

from kubegate.compiler import resources
from kubegate.compiler.compile import CompileMemo, compile_bundle

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _route(name: str, path: str, backends: list[dict[str, Any]], rv: int = 1, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubegate.dev/v1alpha1",
        "kind": "GatewayRoute",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": str(rv),
                     "generation": rv, **meta},
        "spec": {"match": {"path": {"type": "Prefix", "value": path}}, "backends": backends},
    }  # fmt: skip


def _slice(service: str, ips: list[str], rv: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-x", "namespace": "ns", "uid": f"uid-s-{service}",
                     "resourceVersion": str(rv), "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
    }  # fmt: skip


def _check(objects: dict[str, dict[str, Any]], memo: CompileMemo) -> None:
    bundle = resources.from_objects(copy.deepcopy(list(objects.values())))
    with_memo = compile_bundle(bundle, now=NOW, memo=memo)
    full = compile_bundle(resources.from_objects(copy.deepcopy(list(objects.values()))), now=NOW)
    assert with_memo.table.to_wire() == full.table.to_wire()
    assert with_memo.table.content_hash() == full.table.content_hash()
    assert with_memo.statuses == full.statuses


def test_memo_compile_equals_full_compile_through_changes() -> None:
    svc = [{"service": "svc", "port": 8080}]
    url = [{"url": "http://127.0.0.1:9001"}]
    objects = {f"r{i}": _route(f"r{i}", f"/p{i}", svc if i % 2 else url) for i in range(20)}
    objects["bad"] = _route("bad", "/bad", [{"url": "http://127.0.0.1:9001", "weight": -1}])
    objects["slice"] = _slice("svc", ["10.0.0.1", "10.0.0.2"])
    memo = CompileMemo()
    _check(objects, memo)
    _check(objects, memo)
    assert memo.hits == 21  # every route of the second compile was reused
    objects["r1"]["metadata"]["resourceVersion"] = "99"  # a status write: same generation
    objects["r1"]["status"] = {"observedGeneration": 1, "conditions": []}
    _check(objects, memo)
    assert memo.hits == 42

    objects["r3"] = _route("r3", "/moved", svc, rv=2)  # a spec edit
    _check(objects, memo)
    objects["slice"] = _slice("svc", ["10.0.0.9"], rv=2)  # endpoints change: backends re-resolved
    _check(objects, memo)
    del objects["r4"]  # a deletion
    _check(objects, memo)
    objects["dup"] = _route("dup", "/p5", svc, creationTimestamp="2020-01-01T00:00:00Z")  # now wins over r5
    _check(objects, memo)
    objects["bad"] = _route("bad", "/bad", url, rv=2)  # fixed
    _check(objects, memo)
    del objects["slice"]  # services vanish: BackendNotFound
    _check(objects, memo)
    assert set(memo.validated) == {("ns/" + k, f"uid-{k}", str(o["metadata"]["generation"]))
                                   for k, o in objects.items()}  # fmt: skip


def test_objects_without_revision_are_not_memoised() -> None:
    route = _route("plain", "/", [{"url": "http://127.0.0.1:9001"}])
    del route["metadata"]["generation"]
    memo = CompileMemo()
    for _ in range(2):
        compile_bundle(resources.from_objects([route]), now=NOW, memo=memo)
    assert memo.hits == 0 and memo.validated == {}


def test_memo_with_previous_statuses_equals_full_compile() -> None:
    """As the operator compiles: each compile gets the last one's statuses as ``previous`` (which lets the
    memo hand back an unchanged status as is) and a later ``now``; statuses still equal a full compile's,
    lastTransitionTime included, and unchanged ones are the very same objects."""
    svc = [{"service": "svc", "port": 8080}]
    objects = {f"r{i}": _route(f"r{i}", f"/p{i}", svc) for i in range(6)}
    objects["slice"] = _slice("svc", ["10.0.0.1"])
    memo = CompileMemo()
    previous = None
    for step, change in enumerate(["none", "none", "slice-gone", "none", "slice-back", "edit", "conflict"]):
        if change == "slice-gone":
            del objects["slice"]
        elif change == "slice-back":
            objects["slice"] = _slice("svc", ["10.0.0.2"], rv=2)
        elif change == "edit":
            objects["r2"] = _route("r2", "/edited", svc, rv=2)
        elif change == "conflict":
            objects["r9"] = _route("r9", "/p3", svc, creationTimestamp="2020-01-01T00:00:00Z")
        now = datetime(2026, 1, 1, 0, step, tzinfo=UTC)
        with_memo = compile_bundle(resources.from_objects(list(objects.values())), now=now, previous=previous,
                                   memo=memo)  # fmt: skip
        full = compile_bundle(resources.from_objects(list(objects.values())), now=now, previous=previous)
        assert with_memo.statuses == full.statuses, change
        assert with_memo.table.content_hash() == full.table.content_hash()
        if change == "none" and previous is not None:
            assert all(with_memo.statuses[k] is previous[k] for k in previous)
        previous = with_memo.statuses


def test_random_changes_compile_like_a_full_compile() -> None:
    """A seeded random walk of edits, re-creations, deletions, conflicts, invalid specs and Service and
    EndpointSlice changes: after every step the memoised compile (which reuses whole results of routes
    whose inputs did not change) equals a full compile, statuses included."""
    rng = random.Random(20261129)
    objects: dict[str, dict[str, Any]] = {}
    loaded: dict[str, tuple[dict[str, Any], resources.Bundle]] = {}

    def bundle() -> resources.Bundle:
        """Like the operator's state: an unchanged object keeps its loaded views (the same objects)."""
        out = resources.Bundle()
        for name, body in objects.items():
            if name not in loaded or loaded[name][0] is not body:
                loaded[name] = (body, resources.from_objects([body]))
            part = loaded[name][1]
            out.routes += part.routes
            out.endpoint_slices += part.endpoint_slices
        return out

    revisions = itertools.count(2)
    memo = CompileMemo()
    previous = None
    for step in range(60):
        for _ in range(rng.randint(1, 4)):
            action = rng.random()
            name = f"r{rng.randint(0, 24)}"
            if action < 0.45:  # create or edit a route (few paths, so matches collide: conflicts)
                backends = rng.choice([[{"service": "a", "port": 8080}], [{"service": "b", "port": 8080}],
                                       [{"url": "http://127.0.0.1:9001"}],
                                       [{"service": "a", "port": 8080, "weight": 0}]])  # fmt: skip
                rv = next(revisions)
                body = _route(name, rng.choice(["/x", "/y", "/z", f"/{name}"]), backends, rv=rv,
                              creationTimestamp=f"2026-01-01T00:00:{rng.randint(0, 3):02d}Z")  # fmt: skip
                if name in objects and rng.random() < 0.7:  # an edit keeps the uid
                    body["metadata"]["uid"] = objects[name]["metadata"]["uid"]
                else:
                    body["metadata"]["uid"] = f"uid-{name}-{rv}"
                objects[name] = body
            elif action < 0.6:
                objects.pop(name, None)
            elif action < 0.8:
                service = rng.choice(["a", "b"])
                ips = rng.sample(["10.0.0.1", "10.0.0.2", "10.0.0.3"], 2)
                objects[f"slice-{service}"] = _slice(service, ips, rv=next(revisions))
            elif action < 0.9:
                objects.pop(f"slice-{rng.choice(['a', 'b'])}", None)
            elif name in objects:  # a status write: same generation, new resourceVersion
                objects[name] = {**objects[name], "status": {"conditions": []}}
        now = datetime(2026, 1, 1, 0, step, tzinfo=UTC)
        with_memo = compile_bundle(bundle(), now=now, previous=previous, memo=memo)
        full = compile_bundle(resources.from_objects(list(objects.values())), now=now, previous=previous)
        assert with_memo.statuses == full.statuses, step
        assert with_memo.table.to_wire() == full.table.to_wire(), step
        previous = with_memo.statuses
    assert memo.reused > 100, "the whole-result reuse was never exercised"
