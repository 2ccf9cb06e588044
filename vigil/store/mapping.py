"""From a database row to a record of ``vigil.model``: one mechanism for every table.

A record's fields are read from the row's columns of the same names and converted by
the field's declared type: an enumeration from its stored value, a tuple from a JSON
list, a mapping from a JSON object, ``X | None`` as X unless NULL. A field whose stored
form is not the record's (a host's fencing levels, a recovery's steps) is given by the
caller. The table of converters is built once per record type.

SQLAlchemy's imperative mapping could load the frozen records directly, but it would
own their construction (and their immutability) everywhere; vigil keeps its records
plain dataclasses and its rows (``vigil.store.rows``) private to the store's SQL
modules, with this one bridge.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
Converter = Callable[[Any], Any]


def record_of(cls: type[T], row: Any, **given: Any) -> T:
    """The ``cls`` record of ``row``; ``given`` fields are taken as they are."""
    values = {
        name: given[name] if name in given else convert(getattr(row, name))
        for name, convert in _converters(cls).items()
    }
    return cls(**values)


def _same(value: Any) -> Any:
    return value


def _optional(convert: Converter) -> Converter:
    def optional(value: Any) -> Any:
        return None if value is None else convert(value)

    return optional


def _converter(hint: Any) -> Converter:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _converter(args[0]) if len(args) == 1 else _same
        return _optional(inner) if inner is not _same else _same
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if origin is tuple:
        return tuple
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return dict
    return _same


_CONVERTERS: dict[type, dict[str, Converter]] = {}


def _converters(cls: type) -> dict[str, Converter]:
    known = _CONVERTERS.get(cls)
    if known is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a record type")
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        known = _CONVERTERS[cls] = {f.name: _converter(hints[f.name]) for f in fields if f.init}
    return known
