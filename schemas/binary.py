"""Avro binary readers compiled per record schema: bytes straight to the event class, for the codec's hot path.

fastavro reads a record into a dict and the codec then rebuilds the dataclass from it, field by field; for the
small records of the fold that doubles the cost of decoding. `compile_reader` turns one schema (writer = reader,
the case of every message this package writes) into straight-line Python that reads the Avro binary encoding
and fills the frozen dataclass directly.

The compiled reader only ever vouches for plain data: anything it does not expect (a negative length, a long
over 64 bits, an int over 32, a block with a byte size, an unknown union branch or enum index, a timestamp
outside the years 1-9999, bad UTF-8, truncated or trailing bytes) makes it return None, and the caller decodes
those bytes with fastavro as before.
So what it returns is always what fastavro plus `from_record` would have returned, and every error is still
worded by that path. Schemas it does not know how to read (types this package does not use, or a class that
does not mirror its schema) compile to None and stay entirely on fastavro.
"""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# fastavro reads timestamp-millis into a datetime, which exists only for the years 1 to 9999.
_MIN_MILLIS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // datetime.resolution // 1000
_MAX_MILLIS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // datetime.resolution // 1000
_INT32 = (-(2**31), 2**31 - 1)

Reader = Callable[[bytes, int], Any]
"""(data, start) -> the record in data[start:], or None: not plain data, left to fastavro."""


class NotPlain(Exception):
    """Bytes the compiled reader leaves to fastavro (which then decodes them or says why not)."""


class _Unsupported(Exception):
    """A schema, or a schema and class pair, that is not compiled."""


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint that fits 64 bits exactly (where fastavro's unsigned 64-bit arithmetic agrees)."""
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = data[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise NotPlain("long over 64 bits")
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _length(data: bytes, pos: int) -> tuple[int, int]:
    n, pos = _long(data, pos)
    if n < 0:
        raise NotPlain("negative length")
    return n, pos


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and len(typing.get_args(tp)) == 2:
            return inner[0], True
        raise _Unsupported(f"union {tp!r}")
    return tp, False


class _Compiler:
    """Emits one Python function per record type (source text, exec'd once) and the constants it refers to.

    Generated code names only counters (v1, _set2, ...), never a name taken from a schema.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.named: dict[str, tuple[Any, str]] = {}
        self.env: dict[str, Any] = {
            "_long": _long,
            "_length": _length,
            "NotPlain": NotPlain,
            "_new": object.__new__,
            "_MIN_MILLIS": _MIN_MILLIS,
            "_MAX_MILLIS": _MAX_MILLIS,
        }
        self.functions: list[str] = []
        self.records: dict[tuple[str, type[Any]], str] = {}
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def constant(self, prefix: str, value: Any) -> str:
        key = self.name(prefix)
        self.env[key] = value
        return key

    def full_name(self, schema: Mapping[str, Any], namespace: str) -> str:
        name = str(schema["name"])
        return name if "." in name else f"{schema.get('namespace', namespace)}.{name}"

    def resolve(self, schema: Any, namespace: str) -> tuple[Any, str]:
        """The schema a type reference names (defining named types on first sight), and its namespace."""
        if isinstance(schema, str):
            if schema in self.named:
                return self.named[schema]
            qualified = f"{namespace}.{schema}"
            if qualified in self.named:
                return self.named[qualified]
            return schema, namespace
        if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
            full = self.full_name(schema, namespace)
            inner = full.rpartition(".")[0]
            self.named[full] = (schema, inner)
            self.named[str(schema["name"])] = (schema, inner)
            return schema, inner
        return schema, namespace

    # --- code for one value: lines that leave it in `target` and advance `pos` ---------------------------

    def value(self, schema: Any, tp: Any, target: str, namespace: str, indent: str) -> list[str]:
        schema, namespace = self.resolve(schema, namespace)
        if isinstance(schema, list):
            return self.union(schema, tp, target, namespace, indent)
        kind = schema.get("type") if isinstance(schema, dict) else schema
        if isinstance(schema, dict) and kind not in ("record", "enum", "array", "map"):
            logical = schema.get("logicalType")
            if logical == "timestamp-millis" and kind == "long" and tp is int:
                return [
                    *self.value(kind, int, target, namespace, indent),
                    f"{indent}if not _MIN_MILLIS <= {target} <= _MAX_MILLIS:",
                    f"{indent}    raise NotPlain('timestamp outside the years 1-9999')",
                ]
            if logical is not None:
                raise _Unsupported(f"logical type {logical}")
            return self.value(kind, tp, target, namespace, indent)
        if kind == "string" and tp is str:
            return self.sized(target, ".decode()", indent)
        if kind == "bytes" and tp is bytes:
            return self.sized(target, "", indent)
        if kind == "double" and tp is float:
            unpack = self.constant("_double", struct.Struct("<d").unpack_from)
            return [f"{indent}{target} = {unpack}(data, pos)[0]", f"{indent}pos += 8"]
        if kind in ("long", "int") and tp is int:
            # `_long`, inline: a timestamp is six bytes, one per loop turn.
            lines = [
                f"{indent}b = data[pos]",
                f"{indent}pos += 1",
                f"{indent}if b < 0x80:",
                f"{indent}    {target} = (b >> 1) ^ -(b & 1)",
                f"{indent}else:",
                f"{indent}    n = b & 0x7F",
                f"{indent}    shift = 7",
                f"{indent}    while b & 0x80:",
                f"{indent}        b = data[pos]",
                f"{indent}        pos += 1",
                f"{indent}        if shift == 63 and b > 1:",
                f"{indent}            raise NotPlain('long over 64 bits')",
                f"{indent}        n |= (b & 0x7F) << shift",
                f"{indent}        shift += 7",
                f"{indent}    {target} = (n >> 1) ^ -(n & 1)",
            ]
            if kind == "int":
                lines += [
                    f"{indent}if not {_INT32[0]} <= {target} <= {_INT32[1]}:",
                    f"{indent}    raise NotPlain('int out of range')",
                ]
            return lines
        if kind == "enum" and isinstance(tp, type) and issubclass(tp, Enum):
            by_byte: dict[int, Any] = {}
            for i, symbol in enumerate(schema["symbols"]):
                if i < 64:  # one zig-zag byte; a larger index (or an unknown symbol) goes to fastavro
                    try:
                        by_byte[2 * i] = tp(symbol)
                    except ValueError:
                        continue
            table = self.constant("_enum", by_byte)
            return [f"{indent}{target} = {table}[data[pos]]", f"{indent}pos += 1"]
        if kind == "record" and isinstance(tp, type) and dataclasses.is_dataclass(tp):
            reader = self.record(schema, tp, namespace)
            return [f"{indent}{target}, pos = {reader}(data, pos)"]
        if kind == "array" and typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            if len(args) != 2 or args[1] is not Ellipsis:
                raise _Unsupported(f"tuple type {tp!r}")
            item, items = self.name("x"), self.name("items")
            return [
                *self.blocks(items, "[]", indent),
                *self.value(schema["items"], args[0], item, namespace, indent + "        "),
                f"{indent}        {items}.append({item})",
                f"{indent}{target} = tuple({items})",
            ]
        if kind == "map" and typing.get_origin(tp) is dict and typing.get_args(tp)[0] is str:
            key, item = self.name("k"), self.name("x")
            return [
                *self.blocks(target, "{}", indent),
                *self.value("string", str, key, namespace, indent + "        "),
                *self.value(schema["values"], typing.get_args(tp)[1], item, namespace, indent + "        "),
                f"{indent}        {target}[{key}] = {item}",
            ]
        raise _Unsupported(f"Avro {kind!r} as {tp!r}")

    def sized(self, target: str, convert: str, indent: str) -> list[str]:
        """A length-prefixed string or bytes; a length under 64 is one byte, read inline."""
        return [
            f"{indent}b = data[pos]",
            f"{indent}if b < 0x80 and not b & 1:",
            f"{indent}    pos += 1",
            f"{indent}    end = pos + (b >> 1)",
            f"{indent}else:",
            f"{indent}    n, pos = _length(data, pos)",
            f"{indent}    end = pos + n",
            # Past the end the slice comes back short, but `pos` lands beyond the data: never vouched for.
            f"{indent}{target} = data[pos:end]{convert}",
            f"{indent}pos = end",
        ]

    def blocks(self, target: str, empty: str, indent: str) -> list[str]:
        """The loop over an array's or map's blocks; the caller adds the body for one item, 8 spaces deeper."""
        count = self.name("n")
        return [
            f"{indent}{target} = {empty}",
            f"{indent}while True:",
            f"{indent}    {count}, pos = _long(data, pos)",
            f"{indent}    if {count} <= 0:",
            f"{indent}        if {count}:",
            f"{indent}            raise NotPlain('block with a byte size')",
            f"{indent}        break",
            f"{indent}    for _ in range({count}):",
        ]

    def union(self, branches: list[Any], tp: Any, target: str, namespace: str, indent: str) -> list[str]:
        inner, optional = _strip_optional(tp)
        if len(branches) != 2 or not optional or "null" not in branches:
            raise _Unsupported(f"union {branches!r} as {tp!r}")
        lines = [f"{indent}b = data[pos]", f"{indent}pos += 1"]
        for i, branch in enumerate(branches):
            lines.append(f"{indent}{'if' if i == 0 else 'elif'} b == {2 * i}:")
            if branch == "null":
                lines.append(f"{indent}    {target} = None")
            else:
                lines += self.value(branch, inner, target, namespace, indent + "    ")
        lines += [f"{indent}else:", f"{indent}    raise NotPlain('unknown union branch')"]
        return lines

    def record(self, schema: Mapping[str, Any], cls: type[Any], namespace: str, top: bool = False) -> str:
        """The name of the compiled function reading one record of `schema` into a `cls`.

        A nested record's function returns (record, position after it) and raises on anything but plain data;
        the top one returns the record if it ends exactly at the end of the data, else None.
        """
        key = (self.full_name(schema, namespace), cls)
        if key in self.records and not top:
            return self.records[key]
        fields = dataclasses.fields(cls)
        if [f["name"] for f in schema["fields"]] != [f.name for f in fields]:
            raise _Unsupported(f"{cls.__name__} does not mirror record {schema['name']}")
        if "__slots__" not in vars(cls) or hasattr(cls, "__post_init__"):
            raise _Unsupported(f"{cls.__name__} is not a plain slotted dataclass")
        function = self.name(f"_read_{cls.__name__}_")
        if not top:
            self.records[key] = function
        hints = typing.get_type_hints(cls)
        indent = "        " if top else "    "
        body: list[str] = []
        names: list[str] = []
        doubles: list[str] = []  # a run of double fields is read by one struct call
        for f in schema["fields"]:
            local = self.name("v")
            names.append(local)
            if f["type"] == "double" and hints[f["name"]] is float:
                doubles.append(local)
                continue
            body += self.doubles(doubles, indent)
            body += self.value(f["type"], hints[f["name"]], local, namespace, indent)
        body += self.doubles(doubles, indent)
        # The class is frozen: set its slots through their descriptors, as its own __init__ would (it has no
        # __post_init__ or defaults to apply), at half the cost of calling it.
        new = self.constant("_cls", cls)
        body.append(f"{indent}o = _new({new})")
        for f, local in zip(fields, names, strict=True):
            setter = self.constant("_set", vars(cls)[f.name].__set__)
            body.append(f"{indent}{setter}(o, {local})")
        if top:
            lines = [
                f"def {function}(data, pos):",
                "    try:",
                *body,
                "    except Exception:  # not plain data",
                "        return None",
                "    return o if pos == len(data) else None",
            ]
        else:
            lines = [f"def {function}(data, pos):", *body, "    return o, pos"]
        self.functions.append("\n".join(lines))
        return function

    def doubles(self, run: list[str], indent: str) -> list[str]:
        """Read the pending run of double fields (and empty the run)."""
        if not run:
            return []
        unpack = self.constant("_doubles", struct.Struct(f"<{len(run)}d").unpack_from)
        targets = ", ".join(run) + ("," if len(run) == 1 else "")
        lines = [f"{indent}{targets} = {unpack}(data, pos)", f"{indent}pos += {8 * len(run)}"]
        run.clear()
        return lines


def compile_reader(schema: Mapping[str, Any], cls: type[Any], namespace: str) -> Reader | None:
    """A reader of `schema`'s binary encoding into `cls` (see the module docstring), or None if not compiled."""
    compiler = _Compiler(namespace)
    try:
        resolved, inner = compiler.resolve(dict(schema), namespace)
        function = compiler.record(resolved, cls, inner, top=True)
    except _Unsupported:
        return None
    source = "\n\n".join(compiler.functions)
    env = dict(compiler.env)
    exec(compile(source, f"<avro reader {cls.__name__}>", "exec"), env)  # generated from our own schema files
    reader: Reader = env[function]
    return reader
