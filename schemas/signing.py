"""Canonical bytes, Ed25519 signatures and the hash chain of decisions and operator commands (docs/security.md).

Pure: no files, no log. The canonical bytes of a `Decision` or `ControlCommand` are the Avro binary body
(schemaless, the record's current schema; version 2 for a command naming no book) of the record with `signature`
set to None; a signature is Ed25519 over those bytes, and a key's id is the first 16 hex characters of the SHA-256
of its raw 32-byte public key.
A decision's hash — the link the next decision's `previous_hash` holds — is
`sha256(canonical_bytes + (signature or b""))` in hex; the chain's genesis is 64 zeros (rules.md §9, §11).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import fastavro
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.events import ControlCommand, Decision

GENESIS = "0" * 64
"""The `previous_hash` of the first chained decision of a book with no decision before the chain."""

KEY_ID_CHARS = 16
SIGNATURE_BYTES = 64

Signed = Decision | ControlCommand


class SigningKeyError(ValueError):
    """A key that cannot be used: the message names the key (file or id), never its material."""


_PARSED: dict[str, Any] = {}


def _parsed(event_type: type[Signed], version: int | None = None) -> Any:
    """The record's current schema (its .avsc beside this module; schemas/codec.py writes the same one), or the
    released `version` of it."""
    name = event_type.__name__
    key = name if version is None else f"{name}/{version}"
    if key not in _PARSED:
        here = Path(__file__).resolve().parent
        path = here / f"{name}.avsc" if version is None else here / "versions" / name / f"{version}.avsc"
        schema = json.loads(path.read_text(encoding="utf-8"))
        _PARSED[key] = fastavro.parse_schema(schema, named_schemas={})
    return _PARSED[key]


# An operator command naming no book (all written before ControlCommand version 3) is signed over its version-2
# body: its canonical bytes stay those it was signed over, so a command signed before the book field existed still
# verifies. One naming a book is signed over the current body, which holds the book: moving the signature to the
# same command with another book, or with none, breaks it.
_UNBOUND_COMMAND_VERSION = 2


def _plain(value: Any) -> Any:
    """An event as the plain data fastavro writes: enums as symbols, tuples as lists, records as dicts."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def canonical_bytes(event: Signed) -> bytes:
    """The Avro body of the record with `signature` None: what is signed and hashed."""
    unsigned = dataclasses.replace(event, signature=None) if event.signature is not None else event
    version = _UNBOUND_COMMAND_VERSION if isinstance(event, ControlCommand) and event.book is None else None
    out = io.BytesIO()
    fastavro.schemaless_writer(out, _parsed(type(event), version), _plain(unsigned))
    return out.getvalue()


def decision_hash(decision: Decision, canonical: bytes | None = None) -> str:
    """The chain link of a decision: hex SHA-256 of its canonical bytes and its signature (empty when unsigned)."""
    body = canonical if canonical is not None else canonical_bytes(decision)
    return hashlib.sha256(body + (decision.signature or b"")).hexdigest()


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(key: Ed25519PublicKey) -> str:
    """First 16 hex characters of SHA-256 of the raw public key."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:KEY_ID_CHARS]


def public_key_from_hex(text: str, where: str = "public key") -> Ed25519PublicKey:
    """A raw 32-byte Ed25519 public key given as 64 hex characters; `where` names it in the error."""
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where}: not hex") from exc
    if len(raw) != 32:
        raise SigningKeyError(f"{where}: an Ed25519 public key is 32 bytes (64 hex characters), got {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign(event: Signed, key: Ed25519PrivateKey) -> Any:
    """The event with `key_id` and `signature` set (a decision keeps the `previous_hash` it was given)."""
    with_key = dataclasses.replace(event, key_id=key_id_of(key.public_key()), signature=None)
    return dataclasses.replace(with_key, signature=key.sign(canonical_bytes(with_key)))


def check_signature(
    event: Signed, trusted: Mapping[str, Ed25519PublicKey], canonical: bytes | None = None
) -> str | None:
    """None when the event is signed by a trusted key and the signature holds; else why not, starting with one
    of "unsigned", "unknown key", "bad signature" (the word a caller classifies on)."""
    if event.signature is None or event.key_id is None:
        return "unsigned: no signature" if event.signature is None else "unsigned: a signature without a key_id"
    key = trusted.get(event.key_id)
    if key is None:
        return f"unknown key: key_id {event.key_id!r} is not a trusted key"
    try:
        key.verify(event.signature, canonical if canonical is not None else canonical_bytes(event))
    except InvalidSignature:
        return f"bad signature: the signature does not verify under key {event.key_id}"
    return None


# --- the wire's own bytes: a record's Avro body is its canonical bytes up to the signature -------------------
#
# `signature` is the record's last field, a ["null", "bytes"] union: with signature None the body ends with the
# branch index 0 (one byte 0x00); with a 64-byte signature it ends with 0x02 (branch 1), 0x80 0x01 (length 64)
# and the signature. So a writer that encoded the unsigned record signs its body and splices the signature in,
# and a reader of a message written with the current schema gets the canonical bytes by cutting it off: no
# re-encoding, which for a decision of 1,000 allocations costs several milliseconds.

_UNSIGNED_TAIL = b"\x00"
_SIGNED_TAIL = b"\x02\x80\x01"


def with_signature(canonical: bytes, signature: bytes) -> bytes:
    """The Avro body of the signed record, from the canonical bytes (the unsigned record's body)."""
    if not canonical.endswith(_UNSIGNED_TAIL) or len(signature) != SIGNATURE_BYTES:
        raise ValueError("signature: canonical bytes must end with a null signature and the signature be 64 bytes")
    return canonical[: -len(_UNSIGNED_TAIL)] + _SIGNED_TAIL + signature


def canonical_from_body(body: bytes, signature: bytes | None) -> bytes | None:
    """The canonical bytes of a record whose current-schema Avro body is `body` and whose decoded signature is
    `signature`; None when the body does not end as the encoding of that signature (re-encode instead)."""
    if signature is None:
        return bytes(body) if body.endswith(_UNSIGNED_TAIL) else None
    tail = len(_SIGNED_TAIL) + SIGNATURE_BYTES
    if len(signature) != SIGNATURE_BYTES or len(body) < tail or body[-tail:] != _SIGNED_TAIL + signature:
        return None
    return bytes(body[:-tail]) + _UNSIGNED_TAIL


def canonical_of_message(value: bytes, event: Signed, header: bytes | None) -> bytes:
    """The canonical bytes of the event a message decoded to: cut from the message when it starts with `header`
    (the current schema's single-object header), else re-encoded."""
    if header is not None and value[: len(header)] == header:
        cut = canonical_from_body(value[len(header) :], event.signature)
        if cut is not None:
            return cut
    return canonical_bytes(event)


def load_private_key_pem(data: bytes, where: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS8 PEM bytes; `where` (the file) names it in the error, never the bytes."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where}: not an unencrypted PKCS8 PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where}: not an Ed25519 private key")
    return key


def load_public_key(data: bytes, where: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or 64 hex characters of the raw key."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{where}: not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(f"{where}: not an Ed25519 public key")
        return key
    if not text or any(c not in b"0123456789abcdefABCDEF" for c in text):
        # Not the start of a PEM block, and not 64 hex characters: name both forms a public key may take.
        raise SigningKeyError(f"{where}: not a public key (a PEM public key, or 64 hex characters of the raw key)")
    return public_key_from_hex(text.decode("ascii", errors="replace"), where)


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
