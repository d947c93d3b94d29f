"""Pydantic models kept by the ten thousand: one shared "fields set" per class instead of one per object.

Pydantic remembers, on every instance, which fields were given explicitly (``__pydantic_fields_set__``, a
``set``). From six fields on, that set takes 728 bytes: more than the instance's values (a ``Condition``'s
``__dict__`` is 272 bytes). The operator keeps, per GatewayRoute, a validated spec, a compiled route and
a status with two conditions, all of them models; with 10,000 routes the sets alone weighed about 35 MB.
kubegate never asks which fields were set (no ``exclude_unset``, no ``model_fields_set``), so these
models share, per class, the set of all their fields: as if every field had been given. Equality,
validation, dumps and copies are unchanged (pydantic copies the set before it changes one).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}


class LeanModel(BaseModel):
    """A model whose instances share one "fields set" (see the module's docstring)."""

    def model_post_init(self, context: Any, /) -> None:
        cls = type(self)
        shared = _ALL_FIELDS.get(cls)
        if shared is None:
            shared = _ALL_FIELDS[cls] = set(cls.model_fields)
        object.__setattr__(self, "__pydantic_fields_set__", shared)
