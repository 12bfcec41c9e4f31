"""Avro schema resolution checked on the schemas: can a newer version read the older one's data, and what changed.

`check_backward_compatible(old, new)` applies Avro's resolution rules with `new` as the reader and `old` as the
writer, and names every field where a record written with `old` would not decode, or would decode wrongly:

- a field the reader has and the writer does not needs a `default` (of the field's type; for a union, of its
  first branch); a field the writer has and the reader does not is skipped, which is fine;
- a field keeps its type, except for Avro's promotions: int to long, float or double; long to float or double;
  float to double; string to bytes and bytes to string; a logical type (timestamp-millis) never changes;
- every branch of a writer's union must be readable by the reader;
- an enum keeps all its symbols, and an enum that gains symbols carries a `default` symbol;
- records, enums and fixed types keep their names (or the reader lists the old one in `aliases`).

`schema_changes(old, new)` says, for people, what a new version added, removed or changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from fastavro.schema import expand_schema

PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
"""The writer's type -> the reader types Avro promotes it to."""

_NAMED = ("record", "enum", "fixed")


def _expanded(schema: Mapping[str, Any]) -> Any:
    """The schema with every named-type reference replaced by its definition, names fully qualified."""
    return expand_schema(json.loads(json.dumps(dict(schema))))


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return str(schema["type"])
    return str(schema)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _describe(schema: Any) -> str:
    if isinstance(schema, list):
        return "union [" + ", ".join(_describe(b) for b in schema) + "]"
    if isinstance(schema, dict):
        kind = schema["type"]
        if kind in _NAMED:
            return f"{kind} {_short(schema['name'])}"
        if kind == "array":
            return f"array of {_describe(schema['items'])}"
        if kind == "map":
            return f"map of {_describe(schema['values'])}"
        if "logicalType" in schema:
            return f"{kind} ({schema['logicalType']})"
        return str(kind)
    return str(schema)


def _same_name(writer: Mapping[str, Any], reader: Mapping[str, Any]) -> bool:
    names = {_short(reader["name"]), *(_short(a) for a in reader.get("aliases", []))}
    return _short(writer["name"]) in names


def _fits(schema: Any, value: Any) -> bool:
    """Whether `value` is a valid JSON default for `schema` (a union's default belongs to its first branch)."""
    kind = _kind(schema)
    if kind == "union":
        return bool(schema) and _fits(schema[0], value)
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in ("float", "double"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind in ("string", "bytes"):
        return isinstance(value, str)
    if kind == "fixed":
        return isinstance(value, str) and len(value) == schema["size"]
    if kind == "enum":
        return value in schema["symbols"]
    if kind == "array":
        return isinstance(value, list) and all(_fits(schema["items"], v) for v in value)
    if kind == "map":
        return isinstance(value, dict) and all(_fits(schema["values"], v) for v in value.values())
    if kind == "record":
        return isinstance(value, dict) and all(
            _fits(f["type"], value[f["name"]]) if f["name"] in value else "default" in f for f in schema["fields"]
        )
    return False


class _Resolution:
    """One check of a writer schema against a reader schema; `problems` collects what does not resolve."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}")

    def matching_branch(self, writer: Any, branches: list[Any]) -> Any | None:
        """The reader union's branch that data of `writer` resolves to: the same type first, then a promotion."""
        kind = _kind(writer)
        for branch in branches:
            if _kind(branch) == kind and (kind not in _NAMED or _same_name(writer, branch)):
                return branch
        for branch in branches:
            if _kind(branch) in PROMOTIONS.get(kind, ()):
                return branch
        return None

    def resolve(self, writer: Any, reader: Any, where: str) -> None:
        if isinstance(writer, list):
            for branch in writer:
                if isinstance(reader, list) or self.matching_branch(branch, [reader]) is not None:
                    self.resolve(branch, reader, where)
                else:
                    self.problem(where, f"a writer's {_describe(branch)} is not readable as {_describe(reader)}")
            return
        if isinstance(reader, list):
            branch = self.matching_branch(writer, reader)
            if branch is None:
                self.problem(where, f"{_describe(writer)} is not a branch of the reader's {_describe(reader)}")
            else:
                self.resolve(writer, branch, where)
            return
        w_kind, r_kind = _kind(writer), _kind(reader)
        if w_kind != r_kind:
            if r_kind not in PROMOTIONS.get(w_kind, ()):
                self.problem(where, f"type changed from {_describe(writer)} to {_describe(reader)}")
            return
        w_logical = writer.get("logicalType") if isinstance(writer, dict) else None
        r_logical = reader.get("logicalType") if isinstance(reader, dict) else None
        if w_logical != r_logical:
            self.problem(where, f"type changed from {_describe(writer)} to {_describe(reader)}")
            return
        if w_kind in _NAMED and not _same_name(writer, reader):
            self.problem(where, f"{w_kind} renamed from {_short(writer['name'])} to {_short(reader['name'])}")
            return
        if w_kind == "record":
            self.record(writer, reader, where)
        elif w_kind == "enum":
            self.enum(writer, reader, where)
        elif w_kind == "array":
            self.resolve(writer["items"], reader["items"], where)
        elif w_kind == "map":
            self.resolve(writer["values"], reader["values"], where)
        elif w_kind == "fixed" and writer["size"] != reader["size"]:
            self.problem(where, f"fixed size changed from {writer['size']} to {reader['size']}")

    def record(self, writer: Mapping[str, Any], reader: Mapping[str, Any], where: str) -> None:
        written = {f["name"]: f for f in writer["fields"]}
        for field in reader["fields"]:
            path = f"{where}.{field['name']}"
            source = next((written[n] for n in (field["name"], *field.get("aliases", [])) if n in written), None)
            if source is not None:
                self.resolve(source["type"], field["type"], path)
            elif "default" not in field:
                self.problem(path, f"field added without a default (older records have no {field['name']})")
            elif not _fits(field["type"], field["default"]):
                self.problem(path, f"default {json.dumps(field['default'])} is not a {_describe(field['type'])}")

    def enum(self, writer: Mapping[str, Any], reader: Mapping[str, Any], where: str) -> None:
        name = _short(reader["name"])
        removed = [s for s in writer["symbols"] if s not in reader["symbols"]]
        added = [s for s in reader["symbols"] if s not in writer["symbols"]]
        if removed:
            self.problem(where, f"enum {name} lost symbol(s) {', '.join(removed)}")
        if added and "default" not in reader:
            self.problem(where, f"enum {name} gained symbol(s) {', '.join(added)} without a default symbol")


def check_backward_compatible(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What stops `new`, as the reader, from reading every record written with `old`: empty when nothing does.

    Each problem starts with the field's path from the top record, e.g. `Decision.allocations.status: ...`.
    """
    top = _short(str(new["name"]))
    expanded = []
    for role, schema in (("old", old), ("new", new)):
        try:
            expanded.append(_expanded(schema))
        except Exception as exc:  # fastavro says why a schema does not parse: that is the problem to report
            return [f"{top}: the {role} schema is not valid Avro: {exc}"]
    resolution = _Resolution()
    resolution.resolve(expanded[0], expanded[1], top)
    return resolution.problems


# --- what changed, for people -------------------------------------------------------------------------------


def _fields(schema: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(path, type) of every field in the schema, nested records' fields included."""
    kind = _kind(schema)
    if kind == "union":
        for branch in schema:
            yield from _fields(branch, where)
    elif kind == "array":
        yield from _fields(schema["items"], where)
    elif kind == "map":
        yield from _fields(schema["values"], where)
    elif kind == "record":
        for field in schema["fields"]:
            path = f"{where}.{field['name']}"
            yield path, field["type"]
            yield from _fields(field["type"], path)


def _enums(schema: Any, out: dict[str, list[str]]) -> dict[str, list[str]]:
    kind = _kind(schema)
    if kind == "union":
        for branch in schema:
            _enums(branch, out)
    elif kind == "array":
        _enums(schema["items"], out)
    elif kind == "map":
        _enums(schema["values"], out)
    elif kind == "record":
        for field in schema["fields"]:
            _enums(field["type"], out)
    elif kind == "enum":
        out.setdefault(_short(schema["name"]), list(schema["symbols"]))
    return out


def schema_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What `new` changed against `old`, one phrase each: fields added or removed, types changed, enum symbols.

    Empty when the two differ only in what the wire never sees (docs, field defaults, formatting).
    """
    top = _short(str(new["name"]))
    before, after = dict(_fields(_expanded(old), top)), dict(_fields(_expanded(new), top))
    changes = [
        f"added field `{path}`" for path in after if path not in before and path.rsplit(".", 1)[0] in (top, *before)
    ]
    changes += [
        f"removed field `{path}`" for path in before if path not in after and path.rsplit(".", 1)[0] in (top, *after)
    ]
    changes += [
        f"`{path}` changed from {_describe(before[path])} to {_describe(after[path])}"
        for path in after
        if path in before and _describe(before[path]) != _describe(after[path])
    ]
    old_enums, new_enums = _enums(_expanded(old), {}), _enums(_expanded(new), {})
    for name, symbols in new_enums.items():
        previous = old_enums.get(name)
        if previous is None:
            continue
        added = [s for s in symbols if s not in previous]
        removed = [s for s in previous if s not in symbols]
        if added:
            changes.append(f"enum `{name}` gained {', '.join(added)}")
        if removed:
            changes.append(f"enum `{name}` lost {', '.join(removed)}")
    return changes
