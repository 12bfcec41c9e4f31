"""The wire contract: every record documented, round trips, evolution both ways, golden fingerprints, bad bytes."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import struct
import typing
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import (
    NAMESPACE,
    SINGLE_OBJECT_MARKER,
    RegistryCodec,
    SingleObjectCodec,
    UndecodableMessage,
    compiled_reader,
    from_record,
    load_schema,
    make_codec,
    schema_fingerprint,
    schema_path,
    to_record,
)
from schemas.events import EVENT_TYPES, DeadLetter, Event, PnlMark, Proposal, Side
from tests.strategies import events

# A released schema never changes by accident: change one deliberately, then update its fingerprint here.
GOLDEN_FINGERPRINTS = {
    "Proposal": "649828da9520dfa2",
    "Fill": "0ba6a05fe9d99fa8",
    "PnlMark": "5eb03205e59aa9fd",
    "MarketResolution": "94e4a39caac84760",
    "Decision": "76fa6234833d83b3",
    "GovernorEvent": "b705d4eccd3cc9ca",
    "ControlCommand": "6fbec0f5b55f30a8",
    "DeadLetter": "033802151ef9f93f",
}

RULES_PROPOSAL_FIELDS = [
    "proposal_id", "agent_id", "strategy_tag", "market_id", "side", "price", "expected_profit", "confidence",
    "requested_size", "min_size", "execution_risk", "urgency", "correlation_key", "created_at",
]  # fmt: skip

any_event = st.one_of([events(t) for t in EVENT_TYPES])
codec = SingleObjectCodec()


def _walk_records(schema: Any) -> typing.Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            yield schema
            for f in schema["fields"]:
                yield from _walk_records(f["type"])
        elif schema.get("type") == "array":
            yield from _walk_records(schema["items"])
        elif schema.get("type") == "map":
            yield from _walk_records(schema["values"])
    elif isinstance(schema, list):
        for branch in schema:
            yield from _walk_records(branch)


def test_golden_fingerprints() -> None:
    actual = {t.__name__: schema_fingerprint(load_schema(t)).hex() for t in EVENT_TYPES}
    assert actual == GOLDEN_FINGERPRINTS


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_field_is_documented_in_one_namespace(event_type: type[Event]) -> None:
    schema = load_schema(event_type)
    assert schema_path(event_type).exists()
    assert schema["namespace"] == NAMESPACE
    for record in _walk_records(schema):
        assert record.get("doc"), f"record {record['name']} has no doc"
        assert record.get("namespace", NAMESPACE) == NAMESPACE
        for f in record["fields"]:
            assert f.get("doc"), f"{record['name']}.{f['name']} has no doc"


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_event_class_mirrors_its_schema(event_type: type[Event]) -> None:
    schema_fields = [f["name"] for f in load_schema(event_type)["fields"]]
    assert schema_fields == [f.name for f in dataclasses.fields(event_type)]


def test_proposal_has_exactly_the_spec_fields() -> None:
    assert [f["name"] for f in load_schema(Proposal)["fields"]] == RULES_PROPOSAL_FIELDS
    created_at = next(f for f in load_schema(Proposal)["fields"] if f["name"] == "created_at")
    assert created_at["type"] == {"type": "long", "logicalType": "timestamp-millis"}


@settings(max_examples=300)
@given(any_event)
def test_single_object_round_trip(event: Event) -> None:
    data = codec.encode(event)
    assert data[:2] == SINGLE_OBJECT_MARKER
    assert data[2:10] == schema_fingerprint(load_schema(type(event)))
    assert codec.decode(data) == event


def test_nan_and_infinity_survive_the_wire_so_validation_can_reject_them() -> None:
    proposal = Proposal(
        "p", "a", "s", "m", Side.SELL, None, math.nan, math.inf, -1.0, 0.0, 2.0, 0.0, "k", 1_790_000_000_000
    )
    decoded = codec.decode(codec.encode(proposal))
    assert isinstance(decoded, Proposal)
    assert math.isnan(decoded.expected_profit) and decoded.confidence == math.inf


def _next_version(event_type: type[Event]) -> dict[str, Any]:
    schema = load_schema(event_type)
    schema["fields"].append(
        {"name": "added_later", "type": ["null", "string"], "default": None, "doc": "A field of the next version."}
    )
    return schema


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=25)
@given(data=st.data())
def test_next_version_reads_current_data(event_type: type[Event], data: st.DataObject) -> None:
    event = data.draw(events(event_type))
    body = codec.encode(event)[10:]
    current = fastavro.parse_schema(load_schema(event_type), named_schemas={})
    following = fastavro.parse_schema(_next_version(event_type), named_schemas={})
    record = typing.cast(dict[str, Any], fastavro.schemaless_reader(io.BytesIO(body), current, following))
    assert record["added_later"] is None
    record.pop("added_later")
    assert from_record(event_type, record) == event


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
@settings(max_examples=25)
@given(data=st.data())
def test_current_version_reads_next_versions_data(event_type: type[Event], data: st.DataObject) -> None:
    event = data.draw(events(event_type))
    following = _next_version(event_type)
    out = io.BytesIO()
    fastavro.schemaless_writer(
        out, fastavro.parse_schema(following, named_schemas={}), {**to_record(event), "added_later": "x"}
    )
    message = SINGLE_OBJECT_MARKER + schema_fingerprint(following) + out.getvalue()
    # A reader that was told about the next version resolves its data onto the current class ...
    assert SingleObjectCodec(writer_schemas=[following]).decode(message) == event
    # ... and one that was not says exactly that, instead of guessing.
    with pytest.raises(UndecodableMessage, match="unknown schema fingerprint"):
        codec.decode(message, "proposals", 0, 9)


def _valid() -> bytes:
    return codec.encode(
        Proposal("p", "a", "s", "m", Side.BUY, 0.5, 0.04, 0.9, 100.0, 10.0, 0.1, 0.01, "k", 1_790_000_000_000)
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not Avro single-object encoding"),
        (b'{"json": true}', "not Avro single-object encoding"),
        # An outside probe: these said only "EOFError: " and "IndexError: string index out of range".
        (_valid()[:10], r"does not decode: the body \(0 bytes after the 10-byte header\) ends before its record does"),
        (_valid()[:-4], r"does not decode: the body \(\d+ bytes after the 10-byte header\) ends before its record"),
        (_valid() + b"\x00", "trailing bytes"),
        (SINGLE_OBJECT_MARKER + b"\x00" * 8 + b"\x02", "unknown schema fingerprint 0000000000000000"),
    ],
    ids=["empty", "json", "header-only", "truncated", "trailing", "unknown-fingerprint"],
)
def test_bad_bytes_raise_the_domain_error_with_their_position(data: bytes, message: str) -> None:
    with pytest.raises(UndecodableMessage, match=message) as info:
        codec.decode(data, "allocator.proposals", 3, 1234)
    error = info.value
    assert (error.topic, error.partition, error.offset) == ("allocator.proposals", 3, 1234)
    assert "allocator.proposals[3]@1234" in str(error)


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_anything_but_the_domain_error(data: bytes) -> None:
    try:
        decoded = codec.decode(SINGLE_OBJECT_MARKER + codec.header(Proposal)[2:] + data)
    except UndecodableMessage as exc:
        assert exc.reason
    else:
        assert isinstance(decoded, Proposal)


def test_a_bad_enum_symbol_index_is_the_domain_error() -> None:
    good = bytearray(_valid())
    # Side is the fifth field; after four 1-char strings (2 bytes each) its zig-zag index byte follows.
    good[10 + 8] = 0x0E  # index 7: Side has two symbols
    with pytest.raises(UndecodableMessage):
        codec.decode(bytes(good))


REGISTRY = RegistryCodec("mock://round-trip")


@settings(max_examples=50, deadline=None)
@given(any_event)
def test_registry_wire_format_round_trip(event: Event) -> None:
    registry = REGISTRY
    data = registry.encode(event, "allocator.test")
    assert data[0] == 0  # Confluent magic byte, then a 4-byte schema id
    assert registry.decode(data, "allocator.test") == event


@pytest.mark.parametrize("at", [2**62, 253_402_300_800_000, -62_135_596_800_001, -(2**63), 2**63 - 1])
def test_the_registry_codec_reads_a_time_outside_python_s_dates_as_the_long_it_is(at: int) -> None:
    """Timestamp fields travel as longs; beyond year 9999 or before year 1 a reader that made them dates would fail
    on a record it wrote (the single-object codec is held to this in test_far_timestamps.py)."""
    proposal = Proposal("p", "a", "s", "m", Side.BUY, None, 0.04, 0.9, 100.0, 10.0, 0.1, 0.01, "k", at)
    for event in (DeadLetter("t", 0, 0, "e", None, at), proposal):
        assert REGISTRY.decode(REGISTRY.encode(event, "allocator.test"), "allocator.test") == event


def test_the_registry_codec_refuses_bytes_after_the_record_as_the_single_object_codec_does() -> None:
    data = REGISTRY.encode(DeadLetter("t", 0, 0, "e", None, 5), "allocator.test")
    with pytest.raises(UndecodableMessage, match="1 trailing bytes after the record"):
        REGISTRY.decode(data + b"\x00", "allocator.test")


def test_registry_codec_rejects_single_object_bytes_with_position() -> None:
    registry = make_codec("mock://reject")
    assert isinstance(registry, RegistryCodec)
    with pytest.raises(UndecodableMessage, match="not Confluent wire format") as info:
        registry.decode(_valid(), "allocator.proposals", 0, 42)
    assert info.value.offset == 42


def test_default_codec_needs_no_registry() -> None:
    assert isinstance(make_codec(None), SingleObjectCodec)


def test_schema_files_are_valid_json_and_parse_standalone() -> None:
    for event_type in EVENT_TYPES:
        text = schema_path(event_type).read_text(encoding="utf-8")
        fastavro.parse_schema(json.loads(text), named_schemas={})


# --- the compiled readers: the same events and the same errors as fastavro, on any bytes ---------------------


def _outcome(decode: typing.Callable[[bytes], Event], data: bytes) -> tuple[str, str]:
    try:
        return "event", repr(decode(data))  # repr: a NaN read from mutated bytes never equals itself
    except UndecodableMessage as exc:
        return "error", re.sub(r" at 0x[0-9a-f]+", "", exc.reason)  # fastavro may name a buffer's address


def _through_fastavro(data: bytes) -> Event:
    return codec._decode(data, "", -1, -1)


def test_every_current_schema_has_acompiled_reader() -> None:
    # A schema change the compiler does not follow would silently halve decode speed: say so here instead.
    missing = [t.__name__ for t in EVENT_TYPES if compiled_reader(t) is None]
    assert missing == []


@settings(max_examples=300)
@given(any_event)
def testcompiled_readers_read_what_fastavro_reads(event: Event) -> None:
    data = codec.encode(event)
    reader = compiled_reader(type(event))
    assert reader is not None
    assert reader(data, 10) == _through_fastavro(data) == event


@settings(max_examples=500)
@given(
    any_event,
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 10_000) | st.none(),
    st.binary(max_size=3),
)
def testcompiled_readers_agree_with_fastavro_on_damaged_bytes(
    event: Event, flips: list[tuple[int, int]], cut: int | None, tail: bytes
) -> None:
    message = bytearray(codec.encode(event))
    for where, byte in flips:
        message[10 + where % max(1, len(message) - 10)] = byte
    damaged = bytes(message[: 10 + cut] if cut is not None else message) + tail
    assert _outcome(codec.decode, damaged) == _outcome(_through_fastavro, damaged)


@pytest.mark.parametrize(
    "event",
    [
        Proposal("p", "a", "s", "m", Side.BUY, None, 0.04, 0.9, 100.0, 10.0, 0.1, 0.01, "k", -62_135_596_800_000),
        Proposal("p", "a", "s", "m", Side.BUY, None, 0.04, 0.9, 100.0, 10.0, 0.1, 0.01, "k", -62_135_596_800_001),
        Proposal("p", "a", "s", "m", Side.BUY, None, 0.04, 0.9, 100.0, 10.0, 0.1, 0.01, "k", 253_402_300_799_999),
        Proposal("p", "a", "s", "m", Side.BUY, None, 0.04, 0.9, 100.0, 10.0, 0.1, 0.01, "k", 253_402_300_800_000),
        Proposal("p" * 64, "é" * 40, "", "m", Side.SELL, 0.5, -0.0, math.inf, 1e308, 5e-324, 0.1, 0.01, "k", 0),
        DeadLetter("t", 2**31 - 1, -(2**63), "e", b"\x00" * 100, 2**62),
        DeadLetter("t", 0, 2**63 - 1, "e", None, 0),
    ],
    ids=["first-ms", "before-year-1", "last-ms", "after-year-9999", "edges", "int-and-long-limits", "max-long"],
)
def testcompiled_readers_agree_with_fastavro_at_the_edges(event: Event) -> None:
    out = io.BytesIO()
    header, parsed = codec.header(type(event)), fastavro.parse_schema(load_schema(type(event)), named_schemas={})
    record = to_record(event)
    fastavro.schemaless_writer(out, parsed, record)
    data = header + out.getvalue()
    assert _outcome(codec.decode, data) == _outcome(_through_fastavro, data)


_HALF = struct.pack("<d", 0.5)


@pytest.mark.parametrize(
    ("event_type", "body"),
    [
        (PnlMark, b"\x03m" + _HALF + b"\x02"),  # a one-byte negative length
        (PnlMark, b"\x81\x01m" + _HALF + b"\x02"),  # a longer negative length
        (PnlMark, b"\x02m" + _HALF + b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"),  # an 11-byte long
        (DeadLetter, b"\x02t\x00" + b"\xff" * 9 + b"\x02" + b"\x02e\x00\x00"),  # a long over 64 bits
        (DeadLetter, b"\x02t\x00" + b"\xff" * 9 + b"\x01" + b"\x02e\x00\x00"),  # the longest 64-bit long
        (DeadLetter, b"\x02t\x80\x80\x80\x80\x10\x00\x02e\x00\x00"),  # an int over 32 bits
        (DeadLetter, b"\x02t\x00\x00\x02e\x04\x00"),  # a union branch that does not exist
        (PnlMark, b"\x04\xff\xfe" + _HALF + b"\x02"),  # bad UTF-8
    ],
    ids=["odd-length", "negative-length", "long-11-bytes", "long-65-bits", "long-64-bits", "int-33-bits",
         "union-branch", "utf8"],
)  # fmt: skip
def testcompiled_readers_agree_with_fastavro_on_crafted_bytes(event_type: type[Event], body: bytes) -> None:
    data = codec.header(event_type) + body
    assert _outcome(codec.decode, data) == _outcome(_through_fastavro, data)
