"""Binding a row to a domain dataclass, in one place: by field name, with the field's own type.

asyncpg's Record values are `Any`; each is bound at once to an annotated field. A UUID becomes its
canonical text (ids are strings in the domain), a text column becomes the field's enum when the
field is one; other values pass as they are. Columns the dataclass does not name are ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


_MISSING = object()


def bind(cls: type[T], row: Mapping[str, Any] | asyncpg.Record, prefix: str = "") -> T:
    """An instance of the dataclass `cls` from the row's columns named `prefix + field`.

    A field with a default may be missing from the row; any other missing column is a KeyError.
    """
    values = {}
    for name, convert, optional in _binders(cls):  # type: ignore[arg-type]  # classes are hashable
        value = row.get(prefix + name, _MISSING)
        if value is _MISSING:
            if optional:
                continue
            raise KeyError(prefix + name)
        values[name] = convert(value)
    return cls(**values)


@functools.cache
def _binders(cls: type[Any]) -> tuple[tuple[str, Callable[[Any], Any], bool], ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        (
            field.name,
            _converter(hints[field.name]),
            field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING,
        )
        for field in dataclasses.fields(cls)
        if field.init
    )


def _converter(hint: Any) -> Callable[[Any], Any]:
    kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
    target = kinds[0]
    if isinstance(target, type) and issubclass(target, enum.Enum):
        return lambda value: None if value is None else target(value)
    if target is str:
        return lambda value: str(value) if isinstance(value, uuid.UUID) else value
    return _same


def _same(value: Any) -> Any:
    return value
