"""The wire contract: every record documented, round trips, evolution both ways, golden fingerprints, bad bytes."""

from __future__ import annotations

import dataclasses
import io
import json
import math
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
    from_record,
    load_schema,
    make_codec,
    schema_fingerprint,
    schema_path,
    to_record,
)
from schemas.events import EVENT_TYPES, Event, Proposal, Side
from tests.strategies import events

# A released schema never changes by accident: change one deliberately, then update its fingerprint here.
GOLDEN_FINGERPRINTS = {
    "Proposal": "649828da9520dfa2",
    "Fill": "37138fdbe8b7d31f",
    "PnlMark": "5eb03205e59aa9fd",
    "MarketResolution": "94e4a39caac84760",
    "Decision": "ef49d4ee8e23ec8c",
    "GovernorEvent": "b705d4eccd3cc9ca",
    "ControlCommand": "fb8b3b4b31585976",
    "DeadLetter": "033802151ef9f93f",
}

SPEC_PROPOSAL_FIELDS = [
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
    assert [f["name"] for f in load_schema(Proposal)["fields"]] == SPEC_PROPOSAL_FIELDS
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
        (_valid()[:10], "does not decode"),
        (_valid()[:-4], "does not decode"),
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
