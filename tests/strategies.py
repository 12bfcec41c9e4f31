"""Hypothesis strategies for the log's events, built from the event classes' own type hints."""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from typing import Any

from hypothesis import strategies as st

TIMESTAMP_FIELDS = frozenset({"created_at", "time", "decided_at"})
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: Avro timestamp-millis as Python reads it

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def for_type(tp: Any, name: str = "") -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | for_type(inner[0], name)
    if origin is tuple:
        return st.lists(for_type(typing.get_args(tp)[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), for_type(typing.get_args(tp)[1]), max_size=3)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return events(tp)
    if tp is str:
        return st.text(max_size=24)
    if tp is bytes:
        return st.binary(max_size=32)
    if tp is float:
        return finite
    if tp is int:
        if name in TIMESTAMP_FIELDS:
            return st.integers(0, MAX_TIMESTAMP_MS)
        if name == "partition":
            return st.integers(0, 2**31 - 1)
        return st.integers(-(2**63), 2**63 - 1)
    raise TypeError(f"no strategy for {tp!r}")


def events(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Any valid instance of an event class (finite numbers: NaN never equals itself)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: for_type(hints[f.name], f.name) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)
