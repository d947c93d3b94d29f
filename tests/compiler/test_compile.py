"""Compiler properties that golden files do not show.

Aspects: determinism (same inputs, in any order, give the same content hash); lastTransitionTime only
moves when a condition's status flips (from given previous statuses or the object's own status);
loading (YAML errors with file and line, unreadable files, Secrets never printed, malformed
EndpointSlices reported); ``compile_main`` output and exit codes.
"""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubegate.compiler import compile as compiler
from kubegate.compiler import render, resources

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)


def docs(case: str) -> list[Any]:
    return list(yaml.safe_load_all((GOLDEN / f"{case}.in.yaml").read_text(encoding="utf-8")))


def route(name: str, *, weight: int = 1, generation: int = 1, status: object = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubegate.dev/v1alpha1",
        "kind": "GatewayRoute",
        "metadata": {"name": name, "namespace": "default", "generation": generation},
        "spec": {
            "match": {"path": {"value": f"/{name}"}},
            "backends": [{"url": "http://10.0.0.1", "weight": weight}],
        },
    }
    if status is not None:
        body["status"] = status
    return body


def conditions(result: compiler.CompileResult, key: str) -> dict[str, Any]:
    return {c.type: c for c in result.statuses[key].conditions}


# --- determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["service-backends", "conflict", "full-match", "mixed"])
def test_same_inputs_in_any_order_give_the_same_hash(case: str) -> None:
    objects = docs(case)
    first = compiler.compile_bundle(resources.from_objects(objects), now=T0)
    shuffled = list(objects)
    random.Random(7).shuffle(shuffled)
    second = compiler.compile_bundle(resources.from_objects(shuffled), now=T1, version="42")
    assert first.table.content_hash() == second.table.content_hash()
    assert first.table.routes == second.table.routes
    assert second.table.version == "42"


def test_hash_changes_with_the_table() -> None:
    one = compiler.compile_bundle(resources.from_objects([route("a")]), now=T0)
    two = compiler.compile_bundle(resources.from_objects([route("a", weight=2)]), now=T0)
    assert one.table.content_hash() != two.table.content_hash()


# --- lastTransitionTime -----------------------------------------------------------------------------


def test_transition_time_kept_while_status_unchanged() -> None:
    first = compiler.compile_bundle(resources.from_objects([route("a")]), now=T0)
    again = compiler.compile_bundle(
        resources.from_objects([route("a", generation=2)]), now=T1, previous=first.statuses
    )
    accepted = conditions(again, "default/a")["Accepted"]
    assert accepted.status == "True"
    assert accepted.last_transition_time == T0
    assert accepted.observed_generation == 2
    assert again.statuses["default/a"].observed_generation == 2


def test_transition_time_moves_when_status_flips() -> None:
    first = compiler.compile_bundle(resources.from_objects([route("a")]), now=T0)
    broken = compiler.compile_bundle(
        resources.from_objects([route("a", weight=0)]), now=T1, previous=first.statuses
    )
    accepted = conditions(broken, "default/a")["Accepted"]
    assert (accepted.status, accepted.reason, accepted.last_transition_time) == ("False", "Invalid", T1)
    assert conditions(broken, "default/a")["ResolvedRefs"].last_transition_time == T0  # still True


def test_transition_time_kept_when_only_reason_or_message_changes() -> None:
    first = compiler.compile_bundle(resources.from_objects([route("a", weight=0)]), now=T0)
    other = route("a")
    other["spec"]["backends"] = [{"url": "http://10.0.0.1"}, {"url": "http://10.0.0.1:80"}]  # duplicate
    second = compiler.compile_bundle(resources.from_objects([other]), now=T1, previous=first.statuses)
    accepted = conditions(second, "default/a")["Accepted"]
    assert accepted.status == "False"
    assert "duplicates" in accepted.message
    assert accepted.last_transition_time == T0


def test_previous_status_defaults_to_the_objects_own_status() -> None:
    first = compiler.compile_bundle(resources.from_objects([route("a")]), now=T0)
    own = first.statuses["default/a"].model_dump(mode="json", by_alias=True, exclude_none=True)
    second = compiler.compile_bundle(resources.from_objects([route("a", status=own)]), now=T1)
    assert conditions(second, "default/a")["Accepted"].last_transition_time == T0
    garbage = compiler.compile_bundle(resources.from_objects([route("a", status={"conditions": 3})]), now=T1)
    assert conditions(garbage, "default/a")["Accepted"].last_transition_time == T1


def test_naive_now_is_utc_and_truncated_to_seconds() -> None:
    result = compiler.compile_bundle(
        resources.from_objects([route("a")]), now=datetime(2024, 6, 1, 12, 0, 0, 999)
    )
    assert conditions(result, "default/a")["Accepted"].last_transition_time == T0


# --- loading ----------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: v1\nkind: Service\n---\nmetadata: {name: [unclosed\n", encoding="utf-8")
    with pytest.raises(resources.LoadError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        resources.load_file(path)


def test_unreadable_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(resources.LoadError, match=r"missing\.yaml: cannot read"):
        resources.load_file(tmp_path / "missing.yaml")


def test_secrets_are_loaded_but_never_printed() -> None:
    bundle = resources.load_yaml(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData: {k: s3cr3t}\n"
    )
    [secret] = bundle.secrets
    assert secret.key == "default/keys"
    assert "s3cr3t" not in repr(secret) and "s3cr3t" not in repr(bundle)


def test_malformed_endpoint_slice_is_a_problem_not_a_crash() -> None:
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "users-1", "labels": {"kubernetes.io/service-name": "users"}},
        "addressType": "IPv4",
        "ports": [{"port": 0}],
        "endpoints": [{"addresses": [""]}],
    }
    users = route("users")
    users["spec"]["backends"] = [{"service": "users", "port": 80}]
    result = compiler.compile_bundle(resources.from_objects([users, slice_]), now=T0)
    [problem] = result.problems
    assert "EndpointSlice default/users-1 ignored" in str(problem)
    assert conditions(result, "default/users")["ResolvedRefs"].reason == "BackendNotFound"


def test_creation_timestamps_are_normalised() -> None:
    a = route("a")
    a["metadata"]["creationTimestamp"] = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)  # as PyYAML reads it
    b = route("b")
    b["metadata"]["creationTimestamp"] = "2024-05-01T12:00:00+02:00"
    result = compiler.compile_bundle(resources.from_objects([a, b]), now=T0)
    assert [r.created for r in result.table.routes] == ["2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"]


# --- compile_main -----------------------------------------------------------------------------------


def run_main(path: str, fmt: str = "yaml") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = render.compile_main(path, fmt, out, err, T0)
    return code, out.getvalue(), err.getvalue()


def test_compile_main_on_the_quickstart_example() -> None:
    code, out, err = run_main(str(ROOT / "examples" / "quickstart.yaml"))
    assert code == 0, err
    document = yaml.safe_load(out)
    assert [r["id"] for r in document["table"]["routes"]] == ["default/echo", "default/users"]
    assert "2 route(s): 2 accepted, 0 not accepted; 0 load problem(s)" in err


def test_compile_main_json_and_failures() -> None:
    code, out, err = run_main(str(GOLDEN / "mixed.in.yaml"), "json")
    assert code == 1
    document = json.loads(out)
    assert document["contentHash"].startswith("sha256:")
    assert "error: default/broken: Accepted=False (Invalid)" in err
    assert "load problem:" in err


def test_compile_main_warns_on_unresolved_backends_but_succeeds() -> None:
    code, _, err = run_main(str(GOLDEN / "missing-service.in.yaml"))
    assert code == 0
    assert "warning: default/partial: ResolvedRefs=False (BackendNotFound)" in err


def test_compile_main_input_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n", encoding="utf-8")
    assert run_main(str(bad))[0] == 2
    assert run_main(str(tmp_path / "missing.yaml"))[0] == 2
    code, _, err = run_main(str(GOLDEN / "minimal.in.yaml"), "toml")
    assert code == 2 and "unknown format" in err
    with pytest.raises(ValueError, match="unknown output format"):
        render.render_result(compiler.compile_bundle(resources.Bundle(), now=T0), "toml")
