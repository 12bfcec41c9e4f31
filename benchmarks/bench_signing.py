"""Benchmark signing and verifying one decision of N allocations (docs/security.md); target ≤ 1 ms for 1,000.

Columns per size (medians):
  encode, decode     what publishing and reading a decision cost anyway (for scale)
  sign               what serve adds to publishing: Ed25519 over the unsigned message's body (its canonical
                     bytes), the signature spliced in, the chain hash
  verify             what a reader adds after decoding: the canonical bytes cut from the message, Ed25519
                     verification, the chain hash
  verify(re-encode)  the same for a message not written with the current schema: the decision is re-encoded

Run from the repository root:  python -m benchmarks.bench_signing [--sizes 10,100,1000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from allocator.service.chain import DecisionSigner
from schemas.codec import SingleObjectCodec
from schemas.events import (
    Allocation,
    AllocationStatus,
    Decision,
    GovernorState,
    InputPosition,
    Side,
    SolverPath,
)
from schemas.signing import (
    GENESIS,
    canonical_bytes,
    canonical_of_message,
    check_signature,
    decision_hash,
    with_signature,
)


def decision(n: int) -> Decision:
    allocations = tuple(
        Allocation(
            f"proposal-{i:06d}",
            f"agent-{i % 5}",
            f"market-{i % 97}",
            Side.BUY,
            100.0 + i,
            0.0,
            AllocationStatus.FUNDED,
            (),
        )
        for i in range(n)
    )
    return Decision("bench.main-0000000001", "main", 1, 1_790_000_000_000, (InputPosition("bench.proposals", 0, n),),
                    "1", "0" * 64, 7, GovernorState.ACTIVE, 300_000, 1e5, 1e5, 1e5, SolverPath.MIP_OPTIMAL, 12.0,
                    42.0, 0.0, allocations, ())  # fmt: skip


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10,100,1000", help="allocations per decision, comma-separated")
    parser.add_argument("--repeat", type=int, default=200, help="timed repetitions per row (median reported)")
    args = parser.parse_args(argv)
    codec = SingleObjectCodec()
    key = Ed25519PrivateKey.generate()
    signer = DecisionSigner(key)
    trusted = {signer.key_id: signer.public_key}
    print(f"{'allocations':>11} {'encode':>9} {'decode':>9} {'sign':>9} {'verify':>9} {'sign+verify':>12} "
          f"{'verify(re-encode)':>18}")  # fmt: skip
    header = codec.header(Decision)
    for n in (int(x) for x in args.sizes.split(",")):
        d = replace(decision(n), previous_hash=GENESIS, key_id=signer.key_id)
        unsigned = codec.encode(d, "t")  # what the loop encodes anyway
        body = unsigned[len(header) :]

        def sign_step(body: bytes = body) -> object:
            signature = key.sign(body)
            message = header + with_signature(body, signature)
            return message, hashlib.sha256(body + signature).hexdigest()

        signed, message = DecisionSigner(key).seal(d, codec, "t")

        def verify_step(message: bytes = message, signed: Decision = signed) -> object:
            canonical = canonical_of_message(message, signed, header)
            assert check_signature(signed, trusted, canonical) is None
            return decision_hash(signed, canonical)

        def verify_reencode(signed: Decision = signed) -> object:
            canonical = canonical_bytes(signed)
            assert check_signature(signed, trusted, canonical) is None
            return decision_hash(signed, canonical)

        encode_ms = median_ms(lambda d=d: codec.encode(d, "t"), args.repeat)  # type: ignore[misc]
        decode_ms = median_ms(lambda m=message: codec.decode(m), args.repeat)  # type: ignore[misc]
        sign_ms = median_ms(sign_step, args.repeat)
        verify_ms = median_ms(verify_step, args.repeat)
        reencode_ms = median_ms(verify_reencode, max(args.repeat // 10, 5))
        print(f"{n:>11} {encode_ms:>7.3f}ms {decode_ms:>7.3f}ms {sign_ms:>7.3f}ms {verify_ms:>7.3f}ms "
              f"{sign_ms + verify_ms:>10.3f}ms {reencode_ms:>16.3f}ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
