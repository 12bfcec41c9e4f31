"""The signing part of the streaming benchmark: sign and verify one decision of N allocations (docs/security.md)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from allocator.service.chain import DecisionSigner
from benchmarks.bench_signing import decision, median_ms
from benchmarks.stream.table import Report, Row, verdict_at_most
from schemas.codec import SingleObjectCodec
from schemas.events import Decision
from schemas.signing import GENESIS, canonical_of_message, check_signature, decision_hash, with_signature

TARGET_US = 1_000.0


def bench_signing(allocations: int, repeat: int, report: Report) -> None:
    """What serve adds to publishing a decision (sign) and a reader to reading it (verify), medians."""
    codec = SingleObjectCodec()
    key = Ed25519PrivateKey.generate()
    signer = DecisionSigner(key)
    trusted = {signer.key_id: signer.public_key}
    header = codec.header(Decision)
    d = replace(decision(allocations), previous_hash=GENESIS, key_id=signer.key_id)
    body = codec.encode(d, "t")[len(header) :]
    signed, message = DecisionSigner(key).seal(d, codec, "t")

    def sign() -> object:
        signature = key.sign(body)
        return header + with_signature(body, signature), hashlib.sha256(body + signature).hexdigest()

    def verify() -> object:
        canonical = canonical_of_message(message, signed, header)
        if check_signature(signed, trusted, canonical) is not None:
            raise AssertionError("the benchmark's own signature does not verify")
        return decision_hash(signed, canonical)

    sign_ms, verify_ms = median_ms(sign, repeat), median_ms(verify, repeat)
    total = sign_ms + verify_ms
    report.rows.append(
        Row("sign", f"sign + verify one decision of {allocations:,} allocations", "1", "",
            p50=f"{total:.3f} ms", note=f"sign {sign_ms:.3f} ms, verify {verify_ms:.3f} ms; median of {repeat}")
    )  # fmt: skip
    report.targets.append(
        verdict_at_most(f"sign + verify ({allocations:,} allocations)", total * 1000.0, TARGET_US, "us")
    )
