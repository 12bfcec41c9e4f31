"""Signed, hash-chained decisions and signed operator commands: the pure part (schemas/signing.py) and the key
files (allocator/service/keys.py); docs/security.md, rules.md §9, §11."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from allocator.service.chain import ALTERED, FORGED, DecisionSigner, canonical_of
from allocator.service.keys import load_signing_key, load_trusted_keys, new_key_pair
from eventlog.port import Record
from schemas.codec import SingleObjectCodec
from schemas.events import (
    Allocation,
    AllocationStatus,
    Command,
    ControlCommand,
    Decision,
    GovernorState,
    InputPosition,
    Side,
    SolverPath,
)
from schemas.signing import (
    GENESIS,
    SigningKeyError,
    canonical_bytes,
    check_signature,
    decision_hash,
    key_id_of,
    sign,
)

codec = SingleObjectCodec()


def decision(n: int = 3, cycle: int = 1) -> Decision:
    allocations = tuple(
        Allocation(f"p{i}", "alpha", f"m{i}", Side.BUY, 10.0 + i, 0.0, AllocationStatus.FUNDED, ()) for i in range(n)
    )
    return Decision(f"b.main-{cycle:010d}", "main", cycle, 1_790_000_000_000, (InputPosition("b.proposals", 0, 5),),
                    "1", "h" * 64, 7, GovernorState.ACTIVE, 300_000, 1e5, 1e5, 1e5, SolverPath.MIP_OPTIMAL, 1.0,
                    2.0, 0.0, allocations, ())  # fmt: skip


def test_sign_and_verify_round_trip_and_any_change_breaks_it() -> None:
    key = Ed25519PrivateKey.generate()
    trusted = {key_id_of(key.public_key()): key.public_key()}
    signed = sign(dataclasses.replace(decision(), previous_hash=GENESIS), key)
    assert signed.key_id == key_id_of(key.public_key()) and len(signed.key_id) == 16
    assert check_signature(signed, trusted) is None
    # Through the wire and back: still verifies; its canonical bytes are the record's with signature None.
    back = codec.decode(codec.encode(signed))
    assert isinstance(back, Decision) and check_signature(back, trusted) is None
    assert canonical_bytes(back) == canonical_bytes(dataclasses.replace(signed, signature=None))
    changed = dataclasses.replace(signed, objective=signed.objective + 1)
    assert (check_signature(changed, trusted) or "").startswith("bad signature")
    assert (check_signature(signed, {}) or "").startswith("unknown key")
    assert (check_signature(decision(), trusted) or "").startswith("unsigned")
    assert decision_hash(signed) != decision_hash(changed)


def test_operator_command_signature_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    trusted = {key_id_of(key.public_key()): key.public_key()}
    command = ControlCommand("c1", "ops", Command.HALT, "because", None, 5)
    signed = sign(command, key)
    assert check_signature(signed, trusted) is None
    assert check_signature(codec.decode(codec.encode(signed)), trusted) is None  # type: ignore[arg-type]
    assert (check_signature(dataclasses.replace(signed, command=Command.RESUME), trusted) or "").startswith("bad")


def test_the_signer_splices_the_signature_into_the_unsigned_message_and_readers_cut_it_off() -> None:
    signer = DecisionSigner(Ed25519PrivateKey.generate())
    signed, message = signer.seal(decision(1000), codec, "b.decisions")
    assert codec.decode(message) == signed
    assert message == codec.encode(signed)  # the splice is exactly what encoding the signed record gives
    assert canonical_of(message, signed, codec) == canonical_bytes(signed)
    assert signed.previous_hash == GENESIS and signer.head == decision_hash(signed)
    second, _ = signer.seal(decision(2, cycle=2), codec, "b.decisions")
    assert second.previous_hash == decision_hash(signed)


def test_the_verifier_names_forged_and_altered_decisions() -> None:
    from allocator.service.chain import ChainVerifier

    signer = DecisionSigner(Ed25519PrivateKey.generate())
    other = DecisionSigner(Ed25519PrivateKey.generate())
    _, genuine = signer.seal(decision(cycle=1), codec, "t")
    _, forged = other.seal(decision(cycle=2), codec, "t")
    flipped = bytearray(genuine)
    flipped[40] ^= 0x01
    verifier = ChainVerifier({signer.key_id: signer.public_key}, codec)

    def record(value: bytes, offset: int) -> Record:
        return Record("t", 0, offset, None, value, 1)

    first = verifier.check(record(genuine, 0))
    assert isinstance(first, Decision)
    assert getattr(verifier.check(record(forged, 1)), "kind", None) == FORGED
    assert getattr(verifier.check(record(bytes(flipped), 2)), "kind", None) in (ALTERED, "undecodable")


def test_keys_new_writes_a_private_key_only_its_owner_reads_and_a_public_key(tmp_path: Path) -> None:
    key_id, private, public = new_key_pair(tmp_path / "keys")
    assert private.name == f"{key_id}.key" and public.name == f"{key_id}.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_signing_key(private)
    assert key_id_of(key.public_key()) == key_id
    assert list(load_trusted_keys(tmp_path / "keys")) == [key_id]
    assert list(load_trusted_keys(public)) == [key_id]
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(SigningKeyError, match=r"bad\.key"):
        load_signing_key(tmp_path / "bad.key")
    with pytest.raises(SigningKeyError, match="nowhere"):
        load_trusted_keys(tmp_path / "nowhere")


def test_trusted_keys_that_are_not_public_keys_are_named_for_what_they_are(tmp_path: Path) -> None:
    """An outside probe of `--trusted-keys`: an empty path read the current folder, a private key file was "not a PEM
    public key", a folder of private keys had "no *.pub files", and /dev/null was "no such file or folder"."""
    _, private, _ = new_key_pair(tmp_path / "keys")
    (tmp_path / "private-only").mkdir()
    private.rename(tmp_path / "private-only" / private.name)
    with pytest.raises(SigningKeyError, match="name a public key file, or a folder of"):
        load_trusted_keys("")
    with pytest.raises(SigningKeyError, match=r"a private key; trust its public key \(the \.pub file beside it\)"):
        load_trusted_keys(tmp_path / "private-only" / private.name)
    with pytest.raises(SigningKeyError, match=r"no \*\.pub files in the folder \(it holds private keys"):
        load_trusted_keys(tmp_path / "private-only")
    with pytest.raises(SigningKeyError, match="/dev/null: not a file or folder of trusted keys"):
        load_trusted_keys("/dev/null")


def test_a_folder_with_one_private_key_names_it_and_one_with_several_is_refused(tmp_path: Path) -> None:
    key_id, _, _ = new_key_pair(tmp_path / "keys")  # what `keys new --out DIR` leaves: serve --signing-key DIR
    assert key_id_of(load_signing_key(tmp_path / "keys").public_key()) == key_id
    other, _, _ = new_key_pair(tmp_path / "keys")
    with pytest.raises(SigningKeyError, match=rf"exactly one \*\.key file \({min(key_id, other)}\.key"):
        load_signing_key(tmp_path / "keys")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SigningKeyError, match=r"no \*\.key file"):
        load_signing_key(tmp_path / "empty")
