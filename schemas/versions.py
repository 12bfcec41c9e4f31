"""The catalogue of released schema versions: every `versions/<Record>/<n>.avsc` of every record, with fingerprints."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.events import EVENT_TYPES

VERSIONS_DIR = Path(__file__).resolve().parent / "versions"
"""The versions this package ships; `<Record>.avsc` beside this module is byte for byte the highest one."""


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    """The 8 bytes single-object encoding puts after C3 01: CRC-64-AVRO of the parsing canonical form."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(dict(schema)), "CRC-64-AVRO"))


@dataclass(frozen=True)
class SchemaVersion:
    """One released version of one record: its file, the file's text exactly as shipped, and its fingerprint."""

    record: str
    version: int
    path: Path
    text: str
    fingerprint: bytes

    @property
    def schema(self) -> dict[str, Any]:
        """The schema as JSON (a fresh copy the caller may change)."""
        loaded: dict[str, Any] = json.loads(self.text)
        return loaded


class VersionRow(NamedTuple):
    """One line of the catalogue: a record, one of its versions, its fingerprint in hex, whether it is current."""

    record: str
    version: int
    fingerprint: str
    current: bool


def _version_number(path: Path) -> int:
    stem = path.stem
    if not stem.isdecimal() or str(int(stem)) != stem or int(stem) < 1:
        raise ValueError(f"{path}: a version file is named <n>.avsc, n = 1, 2, ...")
    return int(stem)


def record_versions(record: str, versions_dir: Path | str = VERSIONS_DIR) -> tuple[SchemaVersion, ...]:
    """Every released version of one record, oldest first; the last one is current.

    Raises ValueError unless the folder holds versions 1 to n without a gap, each a record of that name.
    """
    folder = Path(versions_dir) / record
    paths = {_version_number(p): p for p in folder.glob("*.avsc")}
    if not paths:
        raise ValueError(f"no released versions of {record}: {folder} has no <n>.avsc")
    if sorted(paths) != list(range(1, len(paths) + 1)):
        raise ValueError(f"versions of {record} in {folder} are {sorted(paths)}, not 1 to n without a gap")
    released = []
    for number in sorted(paths):
        text = paths[number].read_text(encoding="utf-8")
        schema = json.loads(text)
        if str(schema.get("name", "")).split(".")[-1] != record:
            raise ValueError(f"{paths[number]} defines {schema.get('name')!r}, not record {record}")
        released.append(SchemaVersion(record, number, paths[number], text, schema_fingerprint(schema)))
    return tuple(released)


def all_versions(versions_dir: Path | str = VERSIONS_DIR) -> dict[str, tuple[SchemaVersion, ...]]:
    """Every record on the log, in the order of `EVENT_TYPES`, with its released versions."""
    return {t.__name__: record_versions(t.__name__, versions_dir) for t in EVENT_TYPES}


def version_rows(versions_dir: Path | str = VERSIONS_DIR) -> list[VersionRow]:
    """The catalogue as rows: each record's versions, oldest first; `current` marks the version written today."""
    return [
        VersionRow(v.record, v.version, v.fingerprint.hex(), v is released[-1])
        for released in all_versions(versions_dir).values()
        for v in released
    ]


def format_versions_table(rows: Iterable[VersionRow] | None = None) -> str:
    """The catalogue as a plain-text table, one line per version (the package's versions unless rows are given)."""
    lines = [f"{'record':<18} {'version':>7}  {'fingerprint (CRC-64-AVRO)':<26} current"]
    for row in version_rows() if rows is None else rows:
        lines.append(f"{row.record:<18} {row.version:>7}  {row.fingerprint:<26} {'yes' if row.current else 'no'}")
    return "\n".join(lines) + "\n"


def single_object_version(data: bytes, versions_dir: Path | str = VERSIONS_DIR) -> tuple[str, int] | None:
    """The record and version that wrote single-object encoded bytes (None: another encoding or an unknown
    fingerprint). Lets a reader apply the rules in force when an old record was written."""
    if len(data) < 10 or data[:2] != b"\xc3\x01":
        return None
    return _by_fingerprint(str(versions_dir)).get(bytes(data[2:10]))


@functools.cache
def _by_fingerprint(versions_dir: str) -> dict[bytes, tuple[str, int]]:
    return {v.fingerprint: (record, v.version) for record, vs in all_versions(versions_dir).items() for v in vs}
