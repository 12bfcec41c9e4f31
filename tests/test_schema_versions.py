"""Released schema versions: all shipped, each readable by the next, every one decoded into today's events."""

from __future__ import annotations

import ast
import dataclasses
import io
import itertools
import json
import re
import shutil
import struct
import tomllib
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import expand_schema
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schemas.codec import (
    SINGLE_OBJECT_MARKER,
    RegistryCodec,
    SingleObjectCodec,
    UndecodableMessage,
    from_record,
    make_codec,
    schema_fingerprint,
    schema_path,
    to_record,
)
from schemas.compatibility import check_backward_compatible, schema_changes
from schemas.docs import schemas_markdown
from schemas.events import EVENT_TYPES, Decision, Event, Proposal
from schemas.versions import (
    VERSIONS_DIR,
    VersionRow,
    format_versions_table,
    record_versions,
    version_rows,
)
from tests.strategies import events

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"

# A released version never changes: a new version adds its fingerprint here, and none is ever edited.
RELEASED_FINGERPRINTS = {
    ("Proposal", 1): "649828da9520dfa2",
    ("Fill", 1): "37138fdbe8b7d31f",
    ("PnlMark", 1): "5eb03205e59aa9fd",
    ("MarketResolution", 1): "94e4a39caac84760",
    ("Decision", 1): "ef49d4ee8e23ec8c",
    ("GovernorEvent", 1): "b705d4eccd3cc9ca",
    ("ControlCommand", 1): "fb8b3b4b31585976",
    ("DeadLetter", 1): "033802151ef9f93f",
    ("Decision", 2): "76fa6234833d83b3",
    ("ControlCommand", 2): "bd473c0eec976d6b",
    ("Fill", 2): "0ba6a05fe9d99fa8",
    ("ControlCommand", 3): "6fbec0f5b55f30a8",
}

codec = SingleObjectCodec()


# --- Avro data straight from a schema, and what resolution makes of it ------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLIS = (-62_135_596_800_000, 253_402_300_799_999)  # the years 1-9999, where Python's datetime reads them


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    return str(schema["type"]) if isinstance(schema, dict) else str(schema)


def avro_values(schema: Any) -> st.SearchStrategy[Any]:
    """Any datum of an expanded Avro schema, as fastavro writes it (NaN left out: it never equals itself)."""
    kind = _kind(schema)
    if kind == "union":
        return st.one_of([avro_values(branch) for branch in schema])
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: avro_values(f["type"]) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(avro_values(schema["items"]), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=4), avro_values(schema["values"]), max_size=3)
    if isinstance(schema, dict) and schema.get("logicalType") == "timestamp-millis":
        return st.integers(*_MILLIS)
    primitives: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(allow_nan=False, width=32),
        "double": st.floats(allow_nan=False),
        "string": st.text(max_size=8),
        "bytes": st.binary(max_size=8),
    }
    return primitives[kind]


def _written_branch(branches: list[Any], value: Any) -> Any:
    """The branch of a nullable union (the only unions on the log) that fastavro writes `value` with."""
    others = [b for b in branches if b != "null"]
    assert len(others) <= 1 and len(branches) - len(others) <= 1, f"not a nullable union: {branches}"
    return "null" if value is None else others[0]


_PROMOTED = {"int": ("long", "float", "double"), "long": ("float", "double"), "float": ("double",),
             "string": ("bytes",), "bytes": ("string",)}  # fmt: skip


def _name(schema: Any) -> Any:
    return schema.get("name") if isinstance(schema, dict) else None


def _reader_branch(writer: Any, branches: list[Any]) -> Any:
    """The reader's branch for data of `writer`: the same type (and name), else the first it is promoted to."""
    same = [b for b in branches if _kind(b) == _kind(writer) and _name(b) == _name(writer)]
    return same[0] if same else next(b for b in branches if _kind(b) in _PROMOTED.get(_kind(writer), ()))


def resolved(writer: Any, reader: Any, value: Any) -> Any:
    """What Avro resolution makes of `value`, written with `writer` and read with `reader` (both expanded)."""
    if isinstance(writer, list):
        writer = _written_branch(writer, value)
    if isinstance(reader, list):
        reader = _reader_branch(writer, reader)
    kind, reader_kind = _kind(writer), _kind(reader)
    if kind == "record":
        written = {f["name"]: f for f in writer["fields"]}
        out = {}
        for field in reader["fields"]:
            source = next((written[n] for n in (field["name"], *field.get("aliases", [])) if n in written), None)
            out[field["name"]] = (
                field["default"] if source is None else resolved(source["type"], field["type"], value[source["name"]])
            )
        return out
    if kind == "enum":
        return value if value in reader["symbols"] else reader["default"]
    if kind == "array":
        return [resolved(writer["items"], reader["items"], v) for v in value]
    if kind == "map":
        return {k: resolved(writer["values"], reader["values"], v) for k, v in value.items()}
    if kind in ("int", "long") and reader_kind in ("float", "double"):
        return float(value)
    if (kind, reader_kind) == ("string", "bytes"):
        return value.encode()
    if (kind, reader_kind) == ("bytes", "string"):
        return value.decode()
    return value


def plain(value: Any) -> Any:
    """A decoded value with timestamps as milliseconds and tuples as lists, to compare with what was written."""
    if isinstance(value, datetime):
        return (value - _EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def body(schema: dict[str, Any], datum: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), datum)
    return out.getvalue()


def read(writer: dict[str, Any], reader: dict[str, Any], data: bytes) -> Any:
    parse = fastavro.parse_schema
    return fastavro.schemaless_reader(
        io.BytesIO(data), parse(writer, named_schemas={}), parse(reader, named_schemas={})
    )


def assert_reads(old: dict[str, Any], new: dict[str, Any], datum: Any) -> None:
    """A record written with `old` reads under `new` as resolution says: kept fields equal, added ones defaulted."""
    expected = resolved(expand_schema(old), expand_schema(new), datum)
    assert plain(read(old, new, body(old, datum))) == plain(expected)


# --- the catalogue -------------------------------------------------------------------------------------------


def test_every_record_ships_its_versions_and_nothing_else_is_there() -> None:
    folders = sorted(p.name for p in VERSIONS_DIR.iterdir() if p.is_dir())
    assert folders == sorted(t.__name__ for t in EVENT_TYPES)
    assert [p.name for p in VERSIONS_DIR.iterdir() if not p.is_dir()] == []
    for folder in VERSIONS_DIR.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{v.version}.avsc" for v in record_versions(folder.name)
        )


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_the_current_schema_is_its_highest_version_byte_for_byte(event_type: type[Event]) -> None:
    highest = record_versions(event_type.__name__)[-1]
    assert schema_path(event_type).read_bytes() == highest.path.read_bytes(), (
        f"{schema_path(event_type).name} differs from {highest.path.relative_to(ROOT)}: a changed schema is a new"
        f" version, so copy it to versions/{event_type.__name__}/{highest.version + 1}.avsc"
    )


def test_released_versions_keep_their_fingerprints() -> None:
    assert {(r.record, r.version): r.fingerprint for r in version_rows()} == RELEASED_FINGERPRINTS


def test_the_rows_list_every_version_and_mark_the_highest_current() -> None:
    rows = version_rows()
    assert [r.record for r in rows if r.current] == [t.__name__ for t in EVENT_TYPES]
    for event_type in EVENT_TYPES:
        mine = [r for r in rows if r.record == event_type.__name__]
        assert [r.version for r in mine] == list(range(1, len(mine) + 1))
        assert [r.current for r in mine] == [False] * (len(mine) - 1) + [True]


def test_the_table_has_a_line_per_version() -> None:
    rows = [VersionRow("Decision", 1, "ef49d4ee8e23ec8c", False), VersionRow("Decision", 2, "0123456789abcdef", True)]
    lines = format_versions_table(rows).splitlines()
    assert lines[0].split() == ["record", "version", "fingerprint", "(CRC-64-AVRO)", "current"]
    assert [line.split() for line in lines[1:]] == [
        ["Decision", "1", "ef49d4ee8e23ec8c", "no"],
        ["Decision", "2", "0123456789abcdef", "yes"],
    ]
    table = format_versions_table()
    assert len(table.splitlines()) == 1 + len(RELEASED_FINGERPRINTS)
    assert all(fp in table for fp in RELEASED_FINGERPRINTS.values())


def _write(folder: Path, name: str, schema: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(schema), encoding="utf-8")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no released versions of PnlMark"),
        ({"1.avsc": "PnlMark", "3.avsc": "PnlMark"}, r"\[1, 3\], not 1 to n without a gap"),
        ({"01.avsc": "PnlMark"}, "a version file is named <n>.avsc"),
        ({"v1.avsc": "PnlMark"}, "a version file is named <n>.avsc"),
        ({"1.avsc": "Fill"}, "defines 'Fill', not record PnlMark"),
    ],
    ids=["none", "gap", "leading-zero", "not-a-number", "other-record"],
)
def test_a_malformed_versions_folder_is_refused(tmp_path: Path, files: dict[str, str], message: str) -> None:
    (tmp_path / "PnlMark").mkdir()
    for name, record in files.items():
        _write(tmp_path / "PnlMark", name, record_versions(record)[0].schema)
    with pytest.raises(ValueError, match=message):
        record_versions("PnlMark", tmp_path)


def test_the_package_data_ships_every_schema_file() -> None:
    """Each package's data patterns, from its own folder; the released versions are one (data-only) package per
    record folder, each listed among the packages, or an installed wheel would leave it out."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    shipped = {
        p
        for package, patterns in setuptools["package-data"].items()
        if package in setuptools["packages"]
        for pattern in patterns
        for p in (ROOT / package.replace(".", "/")).glob(pattern)
    }
    assert set(SCHEMAS.rglob("*.avsc")) <= shipped
    assert {v.path for versions in map(record_versions, [t.__name__ for t in EVENT_TYPES]) for v in versions} <= shipped


def test_no_schemas_module_imports_from_the_rest_of_the_project() -> None:
    outside = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name != "schemas"}
    for module in SCHEMAS.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & outside, f"{module.name} imports {names}"


# --- every version decodes into today's events ----------------------------------------------------------------


def test_the_codec_writes_each_records_highest_version() -> None:
    for event_type in EVENT_TYPES:
        assert codec.header(event_type) == SINGLE_OBJECT_MARKER + record_versions(event_type.__name__)[-1].fingerprint


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_a_record_of_any_released_version_decodes_into_todays_event(
    event_type: type[Event], data: st.DataObject
) -> None:
    *_, current = released = record_versions(event_type.__name__)
    for version in released:
        datum = data.draw(avro_values(expand_schema(version.schema)), label=f"version {version.version}")
        message = SINGLE_OBJECT_MARKER + version.fingerprint + body(version.schema, datum)
        expected = plain(resolved(expand_schema(version.schema), expand_schema(current.schema), datum))
        event = codec.decode(message, "t", 0, 7)
        assert type(event) is event_type
        assert plain(to_record(event)) == expected
        assert plain(codec.decode_record(message)[1]) == expected


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=40)
@given(data=st.data())
def test_each_version_reads_the_records_of_the_one_before(event_type: type[Event], data: st.DataObject) -> None:
    released = record_versions(event_type.__name__)
    for old, new in itertools.pairwise(released):
        assert_reads(old.schema, new.schema, data.draw(avro_values(expand_schema(old.schema))))


def test_an_unknown_fingerprint_is_still_the_domain_error() -> None:
    message = SINGLE_OBJECT_MARKER + bytes.fromhex("0123456789abcdef") + b"\x02"
    with pytest.raises(UndecodableMessage, match="unknown schema fingerprint 0123456789abcdef"):
        codec.decode(message, "t", 1, 2)
    with pytest.raises(UndecodableMessage, match="unknown schema fingerprint 0123456789abcdef"):
        codec.decode_record(message, "t", 1, 2)


# --- compatibility, checked on the schemas and proven on data --------------------------------------------------


def _field(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    """A field of a (nested) record by its path of field names; arrays are looked through."""
    record, field = schema, {}
    for name in path:
        field = next(f for f in record["fields"] if f["name"] == name)
        record = field["type"].get("items", field["type"]) if isinstance(field["type"], dict) else field["type"]
    return field


def _v1(record: str) -> dict[str, Any]:
    return record_versions(record)[0].schema


def _added_without_default() -> dict[str, Any]:
    schema = _v1("PnlMark")
    schema["fields"].append({"name": "venue", "type": "string", "doc": "Where the price was seen."})
    return schema


def _string_to_int() -> dict[str, Any]:
    schema = _v1("MarketResolution")
    _field(schema, "market_id")["type"] = "int"
    return schema


def _enum_symbol_removed() -> dict[str, Any]:
    schema = _v1("MarketResolution")
    _field(schema, "outcome")["type"]["symbols"].remove("VOID")
    return schema


def _nested_enum_symbol_removed() -> dict[str, Any]:
    schema = _v1("Decision")
    _field(schema, "allocations", "reasons", "code")["type"]["symbols"].remove("CVAR_LIMIT")
    return schema


def _enum_grows_without_default() -> dict[str, Any]:
    schema = _v1("Fill")
    _field(schema, "status")["type"]["symbols"].append("CANCELLED")
    return schema


def _optional_made_required() -> dict[str, Any]:
    schema = _v1("GovernorEvent")
    measured = _field(schema, "measured")
    measured["type"] = "double"
    del measured["default"]
    return schema


def _default_of_the_wrong_branch() -> dict[str, Any]:
    schema = _v1("DeadLetter")
    schema["fields"].append({"name": "note", "type": ["null", "string"], "default": "none", "doc": "A note."})
    return schema


def _record_renamed() -> dict[str, Any]:
    schema = _v1("PnlMark")
    schema["name"] = "PriceMark"
    return schema


PNL = {"market_id": "m", "mark_price": 0.5, "time": 0}
RESOLUTION = {"market_id": "m", "outcome": "VOID", "time": 0}
GOVERNOR = {
    "event_id": "e", "book_id": "b", "governor": "OPERATOR", "old_state": "ACTIVE", "new_state": "PAUSED",
    "cause": "c", "measured": None, "limit": None, "source": None, "time": 0,
}  # fmt: skip


@pytest.mark.parametrize(
    ("record", "new", "problem", "breaking_datum"),
    [
        ("PnlMark", _added_without_default, r"^PnlMark\.venue: field added without a default", PNL),
        ("MarketResolution", _string_to_int, r"^MarketResolution\.market_id: type changed from string to int$",
         RESOLUTION),
        ("MarketResolution", _enum_symbol_removed, r"^MarketResolution\.outcome: enum Outcome lost symbol\(s\) VOID$",
         RESOLUTION),
        ("Decision", _nested_enum_symbol_removed,
         r"^Decision\.allocations\.reasons\.code: enum ReasonCode lost symbol\(s\) CVAR_LIMIT$", None),
        ("Fill", _enum_grows_without_default,
         r"^Fill\.status: enum FillStatus gained symbol\(s\) CANCELLED without a default symbol$", None),
        ("GovernorEvent", _optional_made_required,
         r"^GovernorEvent\.measured: a writer's null is not readable as double$", GOVERNOR),
        ("DeadLetter", _default_of_the_wrong_branch,
         r'^DeadLetter\.note: default "none" is not a union \[null, string\]$', None),
        ("PnlMark", _record_renamed, r"^PriceMark: record renamed from PnlMark to PriceMark$", PNL),
    ],
    ids=["added-without-default", "string-to-int", "enum-symbol-removed", "nested-enum-symbol-removed",
         "enum-grows-without-default", "optional-made-required", "default-of-the-wrong-branch", "record-renamed"],
)  # fmt: skip
def test_an_incompatible_version_is_reported_with_its_field(
    record: str, new: typing.Callable[[], dict[str, Any]], problem: str, breaking_datum: dict[str, Any] | None
) -> None:
    old = _v1(record)
    problems = check_backward_compatible(old, new())
    assert len(problems) == 1 and re.search(problem, problems[0]), problems
    if breaking_datum is not None:  # and the data agrees: such a record does not resolve
        with pytest.raises(fastavro.read.SchemaResolutionError):
            read(old, new(), body(old, breaking_datum))


DECISION_WITH_A_CVAR_REASON = {
    "decision_id": "d", "book_id": "b", "cycle": 1, "decided_at": 0, "inputs": [], "config_version": "v",
    "config_hash": "h", "scenario_seed": 1, "governor_state": "ACTIVE", "opportunity_window_ms": 1, "equity": 1.0,
    "available": 1.0, "high_water_mark": 1.0, "solver_path": "NOT_RUN", "solve_ms": 0.0, "objective": 0.0,
    "gap": None, "orders": [],
    "allocations": [{"proposal_id": "p", "agent_id": "a", "market_id": "m", "side": None, "size": 0.0,
                     "netted_size": 0.0, "status": "REJECTED", "reasons": [{"code": "CVAR_LIMIT", "detail": None}]}],
}  # fmt: skip


def test_a_nested_problem_is_found_with_real_data_too() -> None:
    old = _v1("Decision")
    with pytest.raises(fastavro.read.SchemaResolutionError):
        read(old, _nested_enum_symbol_removed(), body(old, DECISION_WITH_A_CVAR_REASON))


def _promoted() -> dict[str, Any]:
    schema = _v1("DeadLetter")
    _field(schema, "partition")["type"] = "long"
    _field(schema, "error")["type"] = "bytes"
    return schema


def _int_to_double() -> dict[str, Any]:
    schema = _v1("DeadLetter")
    _field(schema, "partition")["type"] = "double"
    return schema


def _field_removed() -> dict[str, Any]:
    schema = _v1("Fill")
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "reason"]
    return schema


def _fields_added_with_defaults() -> dict[str, Any]:
    schema = _v1("Proposal")
    schema["fields"] += [
        {"name": "venue", "type": "string", "default": "any", "doc": "Where to trade."},
        {"name": "max_slippage", "type": ["null", "double"], "default": None, "doc": "Worst price move accepted."},
    ]
    return schema


def _enum_grows_with_default() -> dict[str, Any]:
    schema = _v1("Decision")
    state = _field(schema, "governor_state")["type"]
    state["symbols"].append("DRAINING")
    state["default"] = "ACTIVE"
    return schema


def _nested_field_renamed_with_alias() -> dict[str, Any]:
    schema = _v1("Decision")
    field = _field(schema, "allocations", "reasons", "detail")
    field["name"], field["aliases"] = "explanation", ["detail"]
    return schema


def _made_optional() -> dict[str, Any]:
    schema = _v1("Fill")
    _field(schema, "price")["type"] = ["double", "null"]
    return schema


COMPATIBLE = {
    "promotions": ("DeadLetter", _promoted),
    "int-to-double": ("DeadLetter", _int_to_double),
    "field-removed": ("Fill", _field_removed),
    "fields-added-with-defaults": ("Proposal", _fields_added_with_defaults),
    "enum-grows-with-default": ("Decision", _enum_grows_with_default),
    "nested-field-renamed-with-alias": ("Decision", _nested_field_renamed_with_alias),
    "made-optional": ("Fill", _made_optional),
}


@pytest.mark.parametrize("case", COMPATIBLE)
@settings(max_examples=30)
@given(data=st.data())
def test_a_compatible_version_passes_and_reads_the_old_data(case: str, data: st.DataObject) -> None:
    record, make = COMPATIBLE[case]
    old, new = _v1(record), make()
    assert check_backward_compatible(old, new) == []
    assert_reads(old, new, data.draw(avro_values(expand_schema(old))))


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_released_version_is_readable_by_the_next_and_by_the_current(event_type: type[Event]) -> None:
    *older, current = released = record_versions(event_type.__name__)
    for old, new in itertools.pairwise(released):
        assert check_backward_compatible(old.schema, new.schema) == [], f"version {new.version} breaks {old.version}"
    for old in older:
        assert check_backward_compatible(old.schema, current.schema) == [], f"current breaks version {old.version}"
    assert check_backward_compatible(current.schema, current.schema) == []


def test_a_schema_that_does_not_parse_is_a_problem_not_a_crash() -> None:
    broken = _v1("PnlMark")
    broken["fields"].append({"name": "x", "type": "long", "default": "soon", "doc": "."})
    [problem] = check_backward_compatible(_v1("PnlMark"), broken)
    assert problem.startswith("PnlMark: the new schema is not valid Avro")


def test_the_changes_of_a_version_are_named() -> None:
    assert schema_changes(_v1("Decision"), _v1("Decision")) == []
    assert schema_changes(_v1("Proposal"), _fields_added_with_defaults()) == [
        "added field `Proposal.venue`",
        "added field `Proposal.max_slippage`",
    ]
    assert schema_changes(_v1("Fill"), _field_removed()) == ["removed field `Fill.reason`"]
    assert schema_changes(_v1("Decision"), _enum_grows_with_default()) == ["enum `GovernorState` gained DRAINING"]
    assert schema_changes(_v1("DeadLetter"), _promoted()) == [
        "`DeadLetter.partition` changed from int to long",
        "`DeadLetter.error` changed from string to bytes",
    ]
    assert schema_changes(_v1("Decision"), _nested_enum_symbol_removed()) == ["enum `ReasonCode` lost CVAR_LIMIT"]
    assert schema_changes(_v1("Decision"), _nested_field_renamed_with_alias()) == [
        "added field `Decision.allocations.reasons.explanation`",
        "removed field `Decision.allocations.reasons.detail`",
    ]


# --- the mechanism end to end: a synthetic version 2 of Decision, in a folder of its own ------------------------
# The folder holds the first release of every record (1.avsc) and the synthetic Decision 2.avsc, so these tests
# keep showing the mechanism whatever versions the package has released since.

FIRST_RELEASE_FIELDS = {f["name"] for f in record_versions("Decision")[0].schema["fields"]}


def first_release_only(folder: Path) -> Path:
    """A copy of the package's versions with only each record's version 1."""
    shutil.copytree(VERSIONS_DIR, folder, dirs_exist_ok=True)
    for path in folder.glob("*/*.avsc"):
        if path.name != "1.avsc":
            path.unlink()
    return folder


def _first_release_symbols(enum: str) -> set[str]:
    found: list[set[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "enum" and node.get("name") == enum:
                found.append(set(node["symbols"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(record_versions("Decision")[0].schema)
    return found[0]


def fits_first_release(decision: Decision) -> bool:
    """Whether every enum symbol of the decision existed in version 1 (later symbols cannot be written as 1)."""
    codes = {r.code.value for a in decision.allocations for r in a.reasons}
    return decision.solver_path.value in _first_release_symbols("SolverPath") and codes <= _first_release_symbols(
        "ReasonCode"
    )


def as_first_release(decision: Decision) -> Decision:
    """The decision with every field added after version 1 at its default: what a version 1 record can carry."""
    defaults: dict[str, Any] = {
        f.name: f.default for f in dataclasses.fields(Decision) if f.name not in FIRST_RELEASE_FIELDS
    }
    return dataclasses.replace(decision, **defaults)


def decision_v2() -> dict[str, Any]:
    """Decision as its next version might be: two new fields with defaults, and a governor state more (with a
    default), on top of the current version."""
    schema = record_versions("Decision")[-1].schema
    schema["fields"] += [
        {"name": "risk_model", "type": "string", "default": "scenario-cvar", "doc": "The risk model used."},
        {"name": "note", "type": ["null", "string"], "default": None, "doc": "A remark for the operators."},
    ]
    state = _field(schema, "governor_state")["type"]
    state["symbols"].append("DRAINING")
    state["default"] = "ACTIVE"
    return schema


@pytest.fixture(scope="module")
def versions_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("versions")
    shutil.copytree(VERSIONS_DIR, folder, dirs_exist_ok=True)
    (folder / "Decision" / f"{NEXT}.avsc").write_text(json.dumps(decision_v2(), indent=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def first_release(tmp_path_factory: pytest.TempPathFactory) -> SingleObjectCodec:
    return SingleObjectCodec(versions_dir=first_release_only(tmp_path_factory.mktemp("first")))


NEXT = len(record_versions("Decision")) + 1  # the synthetic version's number
V2_FINGERPRINT = schema_fingerprint(decision_v2())
DECISION = as_first_release(
    from_record(Decision, {**DECISION_WITH_A_CVAR_REASON, "work_used": 0, "config": None, "previous_hash": None,
                           "key_id": None, "signature": None})
)  # fmt: skip


def test_version_2_is_compatible_and_its_changes_are_named() -> None:
    current = record_versions("Decision")[-1].schema
    assert check_backward_compatible(current, decision_v2()) == []
    assert schema_changes(current, decision_v2()) == [
        "added field `Decision.risk_model`",
        "added field `Decision.note`",
        "enum `GovernorState` gained DRAINING",
    ]


@settings(max_examples=50)
@given(decision=events(Decision))
def test_version_1_bytes_decode_into_version_2_data_with_the_defaults(
    versions_v2: Path, first_release: SingleObjectCodec, decision: Decision
) -> None:
    assume(fits_first_release(decision))
    decision = as_first_release(decision)
    v2 = SingleObjectCodec(versions_dir=versions_v2)
    v1_bytes = first_release.encode(decision)
    assert v1_bytes[2:10] == record_versions("Decision")[0].fingerprint != V2_FINGERPRINT
    event_type, record = v2.decode_record(v1_bytes)
    assert event_type is Decision
    assert (record["risk_model"], record["note"]) == ("scenario-cvar", None)
    assert plain({k: v for k, v in record.items() if k not in ("risk_model", "note")}) == plain(to_record(decision))
    assert v2.decode(v1_bytes) == decision


@settings(max_examples=30)
@given(data=st.data())
def test_any_version_1_record_reads_as_version_2(versions_v2: Path, data: st.DataObject) -> None:
    versions = record_versions("Decision", versions_v2)
    old, new = versions[0], versions[-1]
    assert_reads(old.schema, new.schema, data.draw(avro_values(expand_schema(old.schema))))


def test_version_2_is_written_and_read_back_and_unknown_to_a_version_1_reader(
    versions_v2: Path, first_release: SingleObjectCodec
) -> None:
    v2 = SingleObjectCodec(versions_dir=versions_v2)
    assert v2.header(Decision) == SINGLE_OBJECT_MARKER + V2_FINGERPRINT
    assert v2.header(Proposal) == first_release.header(Proposal)
    v2_bytes = v2.encode(DECISION)
    assert v2_bytes[2:10] == V2_FINGERPRINT
    assert v2.decode_record(v2_bytes)[1]["risk_model"] == "scenario-cvar"
    assert v2.decode(v2_bytes) == DECISION
    with pytest.raises(UndecodableMessage, match=f"unknown schema fingerprint {V2_FINGERPRINT.hex()}"):
        first_release.decode(v2_bytes, "allocator.decisions", 0, 5)
    assert SingleObjectCodec(writer_schemas=[decision_v2()]).decode(v2_bytes) == DECISION


def test_the_registry_path_reads_version_1_with_version_2_as_reader(
    versions_v2: Path, first_release: SingleObjectCodec
) -> None:
    registry = RegistryCodec("mock://versions", versions_dir=versions_v2)
    from confluent_kafka.schema_registry import Schema  # after the codec, which imports it quietly

    subject = "allocator.decisions-capital.allocator.Decision"
    schema_id = registry._client.register_schema(subject, Schema(record_versions("Decision")[0].text, "AVRO"))
    message = b"\x00" + struct.pack(">I", schema_id) + first_release.encode(DECISION)[10:]
    assert registry.decode(message, "allocator.decisions") == DECISION
    assert isinstance(make_codec(versions_dir=versions_v2), SingleObjectCodec)


def test_the_catalogue_and_the_docs_show_version_2(versions_v2: Path) -> None:
    rows = [r for r in version_rows(versions_v2) if r.record == "Decision"]
    assert rows == [
        *(VersionRow("Decision", n, RELEASED_FINGERPRINTS[("Decision", n)], False) for n in range(1, NEXT)),
        VersionRow("Decision", NEXT, V2_FINGERPRINT.hex(), True),
    ]
    table = format_versions_table(version_rows(versions_v2)).splitlines()
    assert ["Decision", str(NEXT), V2_FINGERPRINT.hex(), "yes"] in [line.split() for line in table]
    page = schemas_markdown(versions_v2)
    assert f"| Decision | 1 | `{RELEASED_FINGERPRINTS[('Decision', 1)]}` | first release |" in page
    assert (
        f"| Decision | {NEXT} (current) | `{V2_FINGERPRINT.hex()}` | added field `Decision.risk_model`;"
        " added field `Decision.note`; enum `GovernorState` gained DRAINING |"
    ) in page
    assert f"Version {NEXT}, fingerprint `{V2_FINGERPRINT.hex()}`." in page
    assert '| `risk_model` | string | The risk model used. Default `"scenario-cvar"`. |' in page
    assert "`GovernorState`: ACTIVE, PAUSED, HALTED, DRAINING." in page
