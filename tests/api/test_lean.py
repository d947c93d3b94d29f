"""Models that share one "fields set" per class (``kubegate.api.lean``) behave like plain pydantic models.

Aspects: instances of a class share the set, which holds every field; equality, dumps (also of fields
left at their defaults) and copies with updates are those of a plain model, and a copy with updates
gets its own set (pydantic adds the updated names to a copy of it, never to the shared one).
"""

from __future__ import annotations

from datetime import UTC, datetime

from kubegate.api import models
from kubegate.compiler import table


def _condition(message: str) -> models.Condition:
    return models.Condition(
        type="Accepted",
        status="True",
        reason="Accepted",
        message=message,
        lastTransitionTime=datetime(2026, 1, 1, tzinfo=UTC),
        observedGeneration=1,
    )


def test_instances_share_one_set_of_every_field() -> None:
    a, b = _condition("a"), _condition("b")
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    assert a.model_fields_set == set(models.Condition.model_fields)
    route = table.CompiledRoute.model_validate(
        {"id": "a/b", "namespace": "a", "name": "b", "backends": [{"name": "x"}]}
    )
    assert route.model_fields_set == set(table.CompiledRoute.model_fields)


def test_equality_dumps_and_copies_are_unchanged() -> None:
    a = _condition("same")
    assert a == _condition("same") and a != _condition("other")
    assert models.Condition.model_validate(a.model_dump(by_alias=True)) == a
    copy = a.model_copy(update={"message": "changed"})
    assert copy.message == "changed" and a.message == "same"
    assert copy.__pydantic_fields_set__ is not a.__pydantic_fields_set__  # pydantic changed a copy of it
    status = models.GatewayRouteStatus(conditions=[a])  # observedGeneration left at its default
    assert status.model_dump(by_alias=True, exclude_none=True) == {
        "conditions": [a.model_dump(by_alias=True, exclude_none=True)]
    }
