"""The one Avro codec for the log: single-object encoding by default, Confluent wire format with a registry."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import struct
import types
import typing
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

import fastavro

from schemas.binary import Reader, compile_reader
from schemas.events import EVENT_TYPES, Event
from schemas.versions import VERSIONS_DIR, record_versions
from schemas.versions import schema_fingerprint as schema_fingerprint

SCHEMA_DIR = Path(__file__).resolve().parent
NAMESPACE = "capital.allocator"
SINGLE_OBJECT_MARKER = b"\xc3\x01"
_CONFLUENT_MAGIC = 0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

E = TypeVar("E", bound=Event)
T = TypeVar("T")


class UndecodableMessage(Exception):
    """Bytes on the log that are not a known event: they go to the dead letters, the consumer moves on."""

    def __init__(self, reason: str, *, topic: str = "", partition: int = -1, offset: int = -1) -> None:
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(f"undecodable message at {topic or '?'}[{partition}]@{offset}: {reason}")


class EventCodec(Protocol):
    """What a log adapter needs: events to bytes and back. `topic` names the subject and the error's place."""

    def encode(self, event: Event, topic: str = "") -> bytes: ...

    def decode(self, data: bytes, topic: str = "", partition: int = -1, offset: int = -1) -> Event: ...


# --- schemas --------------------------------------------------------------------------------------------


def schema_path(event_type: type[Event]) -> Path:
    return SCHEMA_DIR / f"{event_type.__name__}.avsc"


@cache
def _raw_schema_text(name: str) -> str:
    return (SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8")


def load_schema(event_type: type[Event]) -> dict[str, Any]:
    """The released schema of an event type, as JSON (a fresh copy the caller may change)."""
    loaded: dict[str, Any] = json.loads(_raw_schema_text(event_type.__name__))
    return loaded


def _plain_longs(schema: Any) -> Any:
    """The schema with every `timestamp-millis` long read as the plain long it is on the wire. fastavro would make
    each a datetime, which exists only for the years 1 to 9999: a log time or `created_at` outside them (a writer's
    clock, a damaged log) made the whole record undecodable, even a decision the allocator had just published. The
    events hold milliseconds anyway (`_millis`), and the bytes, the fingerprints and the logical type on the wire
    stay as released."""
    if isinstance(schema, list):
        return [_plain_longs(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "long" and schema.get("logicalType") == "timestamp-millis":
        return {k: v for k, v in schema.items() if k != "logicalType"}
    return {k: _plain_longs(v) if k in ("type", "fields", "items", "values") else v for k, v in schema.items()}


def _parse(schema: Mapping[str, Any]) -> Any:
    # Each file is self-contained, so each gets its own name space: two files may both define `Side`.
    return fastavro.parse_schema(_plain_longs(dict(schema)), named_schemas={})


def _full_name(schema: Mapping[str, Any]) -> str:
    name = str(schema["name"])
    return name if "." in name else f"{schema.get('namespace', NAMESPACE)}.{name}"


# --- dataclass <-> Avro record ---------------------------------------------------------------------------


def _millis(value: Any) -> int:
    if isinstance(value, datetime):
        return (value - _EPOCH) // _ONE_MS
    return int(value)


def _decoder(tp: Any) -> Callable[[Any], Any]:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        dec = _decoder(inner[0])
        return lambda v: None if v is None else dec(v)
    if origin is tuple:
        item = _decoder(typing.get_args(tp)[0])
        return lambda v: tuple(item(x) for x in v)
    if origin is dict:
        val = _decoder(typing.get_args(tp)[1])
        return lambda v: {str(k): val(x) for k, x in v.items()}
    if isinstance(tp, type) and issubclass(tp, Enum):
        # A dict lookup is ten times cheaper than calling the enum; anything not a member's value asks the enum.
        members = {m.value: m for m in tp}
        enum_type = tp
        return lambda v: members.get(v) or enum_type(v)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _record_decoder(tp)
    if tp is int:
        return _millis
    if tp is float:
        return float
    if tp is str:
        return str
    if tp is bytes:
        return bytes
    raise TypeError(f"no Avro decoder for {tp!r}")


def _encoder(tp: Any) -> Callable[[Any], Any]:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        enc = _encoder(inner[0])
        return lambda v: None if v is None else enc(v)
    if origin is tuple:
        item = _encoder(typing.get_args(tp)[0])
        return lambda v: [item(x) for x in v]
    if origin is dict:
        val = _encoder(typing.get_args(tp)[1])
        return lambda v: {str(k): val(x) for k, x in v.items()}
    if isinstance(tp, type) and issubclass(tp, Enum):
        return lambda v: v.value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _record_encoder(tp)
    if tp is float:
        return float
    if tp in (int, str, bytes):
        return lambda v: v
    raise TypeError(f"no Avro encoder for {tp!r}")


@cache
def _record_decoder(cls: type[Any]) -> Callable[[Mapping[str, Any]], Any]:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(cls)]

    def decode(record: Mapping[str, Any]) -> Any:
        return cls(*[dec(record[name]) for name, dec in fields])

    return decode


@cache
def _record_encoder(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _encoder(hints[f.name])) for f in dataclasses.fields(cls)]

    def encode(obj: Any) -> dict[str, Any]:
        return {name: enc(getattr(obj, name)) for name, enc in fields}

    return encode


def to_record(event: Event) -> dict[str, Any]:
    """An event as the plain dict fastavro writes (enums as symbols, tuples as lists)."""
    encoder: Callable[[Any], dict[str, Any]] = _record_encoder(typing.cast(Hashable, type(event)))
    return encoder(event)


def from_record(event_type: type[E], record: Mapping[str, Any]) -> E:
    """The event a decoded Avro record (a dict) stands for."""
    result: E = _record_decoder(typing.cast(Hashable, event_type))(record)
    return result


# --- single-object encoding ------------------------------------------------------------------------------


_COMPILED: dict[tuple[type[Event], str], Reader | None] = {}


def _compiled(event_type: type[Event], schema_text: str) -> Reader | None:
    """The compiled reader of one schema's text into an event type, built once per process."""
    key = (event_type, schema_text)
    if key not in _COMPILED:
        _COMPILED[key] = compile_reader(json.loads(schema_text), event_type, NAMESPACE)
    return _COMPILED[key]


def compiled_reader(event_type: type[Event]) -> Reader | None:
    """The compiled reader of an event type's current schema (built once per process), or None if it has none."""
    return _compiled(event_type, _raw_schema_text(event_type.__name__))


@dataclasses.dataclass(frozen=True)
class _Writer:
    event_type: type[Event]
    parsed: Any


class SingleObjectCodec:
    """Avro single-object encoding (C3 01, 8-byte CRC-64-AVRO fingerprint, body): no registry needed.

    Every version of every record in `versions_dir` (`<Record>/<n>.avsc`; by default the versions this package
    ships) is a writer schema this codec reads, and the highest version of each is current: the one it writes,
    and the reader that Avro's resolution rules map every older version onto, fields added since taking their
    defaults. `writer_schemas` adds further versions (a newer producer's, say) to read the same way.
    Messages written with a current schema are read by a reader compiled from it (`schemas.binary`), which
    hands anything but plain data back to fastavro; other versions always go through fastavro.
    """

    def __init__(
        self, writer_schemas: Iterable[Mapping[str, Any]] = (), *, versions_dir: Path | str = VERSIONS_DIR
    ) -> None:
        self._by_type: dict[type[Event], tuple[bytes, Any]] = {}
        self._by_name: dict[str, type[Event]] = {}
        self._writers: dict[bytes, _Writer] = {}
        self._compiled: dict[bytes, Reader] = {}  # by the 10-byte header of a current schema
        for event_type in EVENT_TYPES:
            *older, current = record_versions(event_type.__name__, versions_dir)
            raw = current.schema
            parsed = _parse(raw)
            header = SINGLE_OBJECT_MARKER + current.fingerprint
            self._by_type[event_type] = (header, parsed)
            self._by_name[_full_name(raw)] = event_type
            for version in older:
                self._writers[version.fingerprint] = _Writer(event_type, _parse(version.schema))
            self._writers[current.fingerprint] = _Writer(event_type, parsed)
            compiled = _compiled(event_type, current.text)
            if compiled is not None:
                self._compiled[header] = compiled
        for other in writer_schemas:
            name = _full_name(other)
            if name not in self._by_name:
                raise ValueError(f"writer schema {name} is not a record this codec reads")
            self._writers[schema_fingerprint(other)] = _Writer(self._by_name[name], _parse(other))

    def header(self, event_type: type[Event]) -> bytes:
        """The 10 bytes every message of this type starts with."""
        return self._by_type[event_type][0]

    def encode(self, event: Event, topic: str = "") -> bytes:
        header, parsed = self._by_type[type(event)]
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, parsed, to_record(event))
        return out.getvalue()

    def decode(self, data: bytes, topic: str = "", partition: int = -1, offset: int = -1) -> Event:
        compiled = self._compiled.get(data[:10]) if data is not None else None
        if compiled is not None:
            event: Event | None = compiled(data, 10)
            if event is not None:
                return event
        return self._decode(data, topic, partition, offset)

    def decode_record(
        self, data: bytes, topic: str = "", partition: int = -1, offset: int = -1
    ) -> tuple[type[Event], dict[str, Any]]:
        """A message's event type and its record as the current version reads it, before it becomes an event.

        Fields the writer's version did not have hold their defaults. Always through fastavro.
        """
        return self._read(data, topic, partition, offset, lambda event_type, record: (event_type, record))

    def _decode(self, data: bytes, topic: str, partition: int, offset: int) -> Event:
        """Through fastavro: any writer schema this codec knows, and the errors, worded for the dead letters."""
        return self._read(data, topic, partition, offset, from_record)

    def _read(
        self, data: bytes, topic: str, partition: int, offset: int, then: Callable[[type[Event], dict[str, Any]], T]
    ) -> T:
        """`then` of the message's event type and its record resolved onto the current version; errors worded."""

        def bad(reason: str) -> UndecodableMessage:
            return UndecodableMessage(reason, topic=topic, partition=partition, offset=offset)

        if data is None:
            raise bad("empty message (no value)")
        if len(data) < 10 or data[:2] != SINGLE_OBJECT_MARKER:
            raise bad(f"not Avro single-object encoding (starts with {bytes(data[:2]).hex() or 'nothing'})")
        fp = bytes(data[2:10])
        writer = self._writers.get(fp)
        if writer is None:
            raise bad(f"unknown schema fingerprint {fp.hex()}")
        _, reader = self._by_type[writer.event_type]
        body = io.BytesIO(data[10:])
        try:
            record = typing.cast(dict[str, Any], fastavro.schemaless_reader(body, writer.parsed, reader))
            if body.tell() != len(data) - 10:
                raise ValueError(f"{len(data) - 10 - body.tell()} trailing bytes after the record")
            return then(writer.event_type, record)
        except UndecodableMessage:
            raise
        except Exception as exc:  # any decoding failure is the message's fault, never the consumer's
            raise bad(f"{writer.event_type.__name__} body does not decode: {_decode_failure(exc, data, 10)}") from exc


# --- Confluent wire format -------------------------------------------------------------------------------


class RegistryCodec:
    """Confluent wire format (magic 0, 4-byte schema id, body) through confluent_kafka's registry serializers.

    Subjects follow the topic-record strategy, so one topic may carry several record types. The highest version
    of each record in `versions_dir` is the one written and the reader schema; a message names its writer's
    schema by id, so whatever version the registry holds for it resolves onto the current one.
    """

    def __init__(
        self, url: str, extra_config: Mapping[str, Any] | None = None, *, versions_dir: Path | str = VERSIONS_DIR
    ) -> None:
        with warnings.catch_warnings():
            # The registry client imports authlib's httpx integration, which warns about itself on import and
            # forces its warnings to "always" process-wide; inside this block both stay local.
            with contextlib.suppress(ImportError):
                import authlib.deprecate  # noqa: F401  (its import installs the "always" filter first)
            warnings.simplefilter("ignore", DeprecationWarning)
            from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
            from confluent_kafka.schema_registry.avro import AvroSerializer

        # new_client gives the in-process mock for mock:// URLs (tests, demos), a REST client otherwise
        self._client = SchemaRegistryClient.new_client({"url": url, **(extra_config or {})})
        conf = {"auto.register.schemas": True, "subject.name.strategy": topic_record_subject_name_strategy}
        self._serializers: dict[type[Event], Any] = {}
        # Read with fastavro and the timestamps as plain longs (`_parse`), writer and reader alike: the registry's
        # deserializer would make them datetimes and fail on a time outside the years 1-9999.
        self._readers: dict[str, tuple[type[Event], Any]] = {}
        for event_type in EVENT_TYPES:
            current = record_versions(event_type.__name__, versions_dir)[-1].schema
            self._serializers[event_type] = AvroSerializer(
                self._client, json.dumps(current), to_dict=lambda obj, _ctx: to_record(obj), conf=conf
            )
            self._readers[_full_name(current)] = (event_type, _parse(current))
        self._writers: dict[int, tuple[str, Any]] = {}  # schema id -> (record name, parsed writer schema)

    def encode(self, event: Event, topic: str = "") -> bytes:
        from confluent_kafka.serialization import MessageField, SerializationContext

        data: bytes = self._serializers[type(event)](event, SerializationContext(topic, MessageField.VALUE))
        return data

    def _writer(self, schema_id: int) -> tuple[str, Any]:
        known = self._writers.get(schema_id)
        if known is None:
            schema = json.loads(self._client.get_schema(schema_id).schema_str or "{}")
            known = (_full_name(schema), _parse(schema))
            self._writers[schema_id] = known
        return known

    def decode(self, data: bytes, topic: str = "", partition: int = -1, offset: int = -1) -> Event:
        def bad(reason: str) -> UndecodableMessage:
            return UndecodableMessage(reason, topic=topic, partition=partition, offset=offset)

        if data is None or len(data) < 5 or data[0] != _CONFLUENT_MAGIC:
            raise bad("not Confluent wire format (magic byte 0 and a schema id)")
        (schema_id,) = struct.unpack(">I", data[1:5])
        try:
            name, writer = self._writer(schema_id)
        except Exception as exc:
            raise bad(f"unknown schema id {schema_id}: {exc}") from exc
        known = self._readers.get(name)
        if known is None:
            raise bad(f"schema id {schema_id} is record {name}, not an event of ours")
        event_type, reader = known
        try:
            body = io.BytesIO(data[5:])
            record = typing.cast(dict[str, Any], fastavro.schemaless_reader(body, writer, reader))
            if body.tell() != len(data) - 5:
                raise ValueError(f"{len(data) - 5 - body.tell()} trailing bytes after the record")
            return from_record(event_type, record)
        except Exception as exc:
            raise bad(f"{event_type.__name__} body does not decode: {_decode_failure(exc, data, 5)}") from exc


def make_codec(schema_registry_url: str | None = None, *, versions_dir: Path | str = VERSIONS_DIR) -> EventCodec:
    """Single-object encoding unless a schema registry URL is configured; `versions_dir` as for either codec."""
    if schema_registry_url:
        return RegistryCodec(schema_registry_url, versions_dir=versions_dir)
    return SingleObjectCodec(versions_dir=versions_dir)


def _decode_failure(exc: Exception, data: bytes, header: int) -> str:
    """What a decoder's exception says of a record body: the reader running past the end of a body too short for
    its record (EOFError, IndexError, struct errors) named as such, with the body's length, not a bare class name."""
    if isinstance(exc, EOFError | IndexError | struct.error):
        return f"the body ({len(data) - header} bytes after the {header}-byte header) ends before its record does"
    return f"{type(exc).__name__}: {exc}"
