"""The decision chain: the allocator signs and links every decision it publishes, and every reader verifies
the chain before acting on a decision (docs/security.md, rules.md §9, §11).

A decision is *verified* when it is signed by a trusted key, its signature holds over its canonical bytes
(`schemas/signing.py`), its `previous_hash` is the hash of the previous verified decision and its cycle is new.
Decisions written before the chain existed (no previous_hash, key or signature) are "before the chain"; once a
chained decision has been verified, an unsigned one is refused. What does not verify is a `Rejection`, named by
kind and position: serve never folds it, the decision feed never hands it to an executor, the audit reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from allocator.service.sequencer import config_problem, read_records
from eventlog.port import EventLog, Record, Topics
from schemas.codec import EventCodec, SingleObjectCodec, UndecodableMessage
from schemas.events import Decision
from schemas.signing import (
    GENESIS,
    canonical_bytes,
    canonical_of_message,
    check_signature,
    decision_hash,
    key_id_of,
    with_signature,
)

FORGED = "forged"
ALTERED = "altered"
REORDERED = "reordered"
UNSIGNED = "unsigned after the chain began"
UNDECODABLE = "undecodable"
DUPLICATE = "duplicate cycle"
KINDS = (FORGED, ALTERED, REORDERED, UNSIGNED, UNDECODABLE, DUPLICATE)

Trusted = Mapping[str, Ed25519PublicKey]


@dataclass(frozen=True)
class Rejection:
    """A record on the decisions topic that does not verify: never folded, never executed."""

    kind: str  # one of KINDS
    topic: str
    partition: int
    offset: int
    detail: str
    decision_id: str | None = None
    cycle: int | None = None
    key_id: str | None = None  # the key the record names, if any (trusted or not)

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    def describe(self) -> str:
        what = f"decision {self.decision_id} (cycle {self.cycle})" if self.decision_id is not None else "a record"
        return f"{self.kind}: {what} at {self.where}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        """The rejection as plain data: its kind, position, why, and the decision it claims to be."""
        return {"kind": self.kind, "topic": self.topic, "partition": self.partition, "offset": self.offset,
                "decision_id": self.decision_id, "cycle": self.cycle, "key_id": self.key_id, "detail": self.detail,
                "describe": self.describe()}  # fmt: skip


def _header(codec: EventCodec) -> bytes | None:
    return codec.header(Decision) if isinstance(codec, SingleObjectCodec) else None


def canonical_of(value: bytes, decision: Decision, codec: EventCodec) -> bytes:
    """The decision's canonical bytes, cut from the message when it was written with the current schema."""
    return canonical_of_message(value, decision, _header(codec))


class ChainVerifier:
    """Verifies decisions in log order; `head` is the hash of the last verified decision (GENESIS when none)."""

    def __init__(self, trusted: Trusted, codec: EventCodec) -> None:
        self.trusted = dict(trusted)
        self.codec = codec
        self.began = False  # a chained decision has been verified
        self.last_cycle = 0
        self._head = GENESIS
        self._unhashed: tuple[bytes, Decision] | None = None  # the last pre-chain decision, hashed on demand

    @property
    def head(self) -> str:
        if self._unhashed is not None:
            value, decision = self._unhashed
            self._head = decision_hash(decision, canonical_of(value, decision, self.codec))
            self._unhashed = None
        return self._head

    def check(self, record: Record) -> Decision | Rejection:
        """The record's decision when it verifies (the head moves on), else why not (the head stays)."""

        def reject(kind: str, detail: str, d: Decision | None = None) -> Rejection:
            return Rejection(kind, record.topic, record.partition, record.offset, detail,
                             d.decision_id if d else None, d.cycle if d else None, d.key_id if d else None)  # fmt: skip

        if record.value is None:
            return reject(UNDECODABLE, "empty message (no value)")
        try:
            event = self.codec.decode(record.value, record.topic, record.partition, record.offset)
        except UndecodableMessage as exc:
            return reject(UNDECODABLE, exc.reason)
        if not isinstance(event, Decision):
            return reject(UNDECODABLE, f"a {type(event).__name__} does not belong on {record.topic}")
        d = event
        unreadable = config_problem(d)
        if unreadable is not None:
            return reject(UNDECODABLE, unreadable, d)
        if d.signature is None and d.key_id is None and d.previous_hash is None:
            if self.began:
                return reject(UNSIGNED, "an unsigned decision after the chain began", d)
            # Before the chain: duplicates are the replay's to report (rules.md §10), as they always were.
            self._unhashed = (record.value, d)
            self.last_cycle = max(self.last_cycle, d.cycle)
            return d
        canonical = canonical_of(record.value, d, self.codec)
        problem = check_signature(d, self.trusted, canonical)
        if problem is not None:
            kind = FORGED if problem.startswith("unknown key") else ALTERED if problem.startswith("bad") else UNSIGNED
            if kind == UNSIGNED and not self.began:
                problem = f"{problem}, yet it claims a place in the chain"
            return reject(kind, problem, d)
        head = self.head
        if d.previous_hash != head:
            return reject(REORDERED, f"previous_hash {d.previous_hash} is not the hash of the previous verified "
                                     f"decision ({head})", d)  # fmt: skip
        if d.cycle <= self.last_cycle:
            return reject(DUPLICATE, f"cycle {d.cycle} was already decided (last verified cycle {self.last_cycle})", d)
        self.began = True
        self.last_cycle = d.cycle
        self._head = decision_hash(d, canonical)
        return d


@dataclass
class VerifiedLog:
    """The decisions topic read and verified: what may be folded, and what may not."""

    accepted: list[tuple[Record, Decision]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    head: str = GENESIS
    began: bool = False


def verify_records(records: Iterable[Record], trusted: Trusted, codec: EventCodec) -> VerifiedLog:
    verifier = ChainVerifier(trusted, codec)
    out = VerifiedLog()
    for record in records:
        checked = verifier.check(record)
        if isinstance(checked, Rejection):
            out.rejections.append(checked)
        else:
            out.accepted.append((record, checked))
    out.head, out.began = verifier.head, verifier.began
    return out


def verify_log(reader: EventLog, codec: EventCodec, topics: Topics, trusted: Trusted) -> VerifiedLog:
    """Every committed record of the decisions topic, in log order, verified."""
    records = read_records(reader, [topics.decisions], reader.end_offsets([topics.decisions]))
    records.sort(key=lambda r: (r.partition, r.offset))
    return verify_records(records, trusted, codec)


def signing_keys(verified: VerifiedLog) -> dict[str, int]:
    """Each key id the log's decisions name, verified or not, with how many decisions name it."""
    named = [d.key_id for _, d in verified.accepted] + [r.key_id for r in verified.rejections]
    out: dict[str, int] = {}
    for key_id in named:
        if key_id is not None:
            out[key_id] = out.get(key_id, 0) + 1
    return out


def unverified_chain(verified: VerifiedLog, trusted: Trusted) -> str | None:
    """Why nothing on the log can be trusted, or None: the book's decisions are signed and not one of them
    verified (no trusted keys, or none of the keys that signed them). Then the chain never began for this reader,
    so even an unsigned decision appended after the signed ones counts as "before the chain": what the log
    records cannot be told from a forgery, and a reader must not take its configuration from it."""
    keys = signing_keys(verified)
    if verified.began or not keys:
        return None
    named = ", ".join(f"key {key_id} on {count}" for key_id, count in sorted(keys.items(), key=lambda kv: -kv[1]))
    mine = sorted(set(trusted) & set(keys))
    if not trusted:
        why = "no --trusted-keys was given"
    elif mine and set(keys) - set(trusted):  # a rotation: the trusted key's decisions link to an untrusted key's
        earlier = ", ".join(sorted(set(keys) - set(trusted)))
        why = (
            f"those of trusted key {', '.join(mine)} link to decisions signed by {earlier}, which is not trusted "
            "(after a key rotation, trust the earlier key too)"
        )
    elif mine:  # every decision names a trusted key, and the first does not verify: it was changed after signing
        why = (
            f"the chain's first decision does not verify under trusted key {', '.join(mine)} (altered or forged: "
            "`allocator audit` names it), so none after it links to a verified one"
        )
    else:
        why = f"no trusted key ({', '.join(sorted(trusted))}) signed one"
    return f"the book's decisions are signed ({named}) and {why}: none of them is verified"


def cut_chain(verified: VerifiedLog, trusted: Trusted, book: str | None = None) -> str | None:
    """Why the verified chain is not the book's whole history (a sentence), or None: a decision whose signature by
    a trusted key holds, for a cycle after the last verified one, does not link to the chain (reordered). A trusted
    key signed past the verified head: the chain was cut (a decision deleted or changed in the middle of the log, so
    every genuine one after it is refused), or another writer holds the key. Either way deciding those cycles again
    would fork the book. A copy of a decision already folded (its cycle not after the last verified one) is a replay,
    named and skipped. What no trusted signature holds on (forged, altered, unsigned, undecodable) anyone who can
    write the log could append, so it is named and skipped too: it cannot stop the book. With `book`
    (`<prefix>.<id>`), only that book's decisions count: another book's signed by the same key (copied onto this log)
    is named and skipped."""
    last = max((d.cycle for _, d in verified.accepted), default=0)
    cut = [
        r
        for r in verified.rejections
        if r.kind == REORDERED
        and r.key_id in trusted
        and (r.cycle or 0) > last
        and (book is None or (r.decision_id or "").startswith(f"{book}-"))
    ]
    if not cut:
        return None
    first = cut[0]
    return (
        f"the book's verified chain ends at cycle {last}, but {len(cut)} later decision(s) signed by its trusted keys "
        f"are not linked to it (the first: {first.describe()}): a decision before them was deleted or changed"
    )


class UnverifiedBook(ValueError):
    """The book's decisions are signed and not one verifies under the keys given: serving it would start the book over
    from nothing (its configuration, keyring, tripped kill switch and equity lost) beside its real chain."""


@dataclass
class DecisionSigner:
    """The allocator's key and the chain head it extends; `seal` signs a decision and moves the head."""

    key: Ed25519PrivateKey
    head: str = GENESIS

    @property
    def key_id(self) -> str:
        return key_id_of(self.key.public_key())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def seal(self, decision: Decision, codec: EventCodec, topic: str) -> tuple[Decision, bytes]:
        """The decision linked to the head and signed, and its message; the head becomes its hash."""
        linked = replace(decision, previous_hash=self.head, key_id=self.key_id, signature=None)
        header = _header(codec)
        if header is not None:
            # The message of the unsigned record is its header and its canonical bytes: sign them and splice.
            canonical = codec.encode(linked, topic)[len(header) :]
            signature = self.key.sign(canonical)
            message = header + with_signature(canonical, signature)
            signed = replace(linked, signature=signature)
        else:
            canonical = canonical_bytes(linked)
            signed = replace(linked, signature=self.key.sign(canonical))
            message = codec.encode(signed, topic)
        self.head = decision_hash(signed, canonical)
        return signed, message


@dataclass
class ChainSettings:
    """What serve knows of the chain: its own key (None: decisions are unsigned) and the keys it trusts."""

    signer: DecisionSigner | None = None
    trusted: dict[str, Ed25519PublicKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.signer is not None:
            self.trusted.setdefault(self.signer.key_id, self.signer.public_key)


def report_rejections(rejections: Sequence[Rejection], say: Callable[[str], None]) -> None:
    for r in rejections:
        say(f"refused to fold {r.describe()}")


def head_reached(verified: VerifiedLog, head: str, codec: EventCodec) -> bool:
    """Whether the verified log reaches `head`, a decision hash someone saw (docs/audit.md, `--head`).

    On the chain: it is where the chain ends, or the hash a later verified decision links to (an executor's stored
    head is usually older than the newest decision; only a head the chain no longer passes through shows a cut).
    Before the chain (an unsigned book, or the decisions a signed one began after) nothing links to a decision, so
    an older head could not pass at all: the audit of an unsigned book refused every head once one more decision
    was written. There it passes when it is the hash of a verified decision: that decision is still on the log,
    unchanged, which says nothing of the decisions before it."""
    head = head.lower()
    if head == verified.head or any(d.previous_hash == head for _, d in verified.accepted):
        return True
    return any(
        decision_hash(d, canonical_of(record.value, d, codec)) == head
        for record, d in verified.accepted
        if d.previous_hash is None and record.value is not None
    )


def chain_findings(verified: VerifiedLog, codec: EventCodec, head: str | None = None) -> list[dict[str, Any]]:
    """The audit's findings on the chain (docs/audit.md): one per rejected record, verdict the kind upper-cased
    (FORGED, ALTERED, REORDERED, UNSIGNED_AFTER_THE_CHAIN_BEGAN, UNDECODABLE, DUPLICATE_CYCLE), and
    HEAD_NOT_REACHED when `head` is given and the verified log does not reach it (`head_reached`)."""
    out: list[dict[str, Any]] = [
        {
            "decision_id": r.decision_id or "",
            "cycle": r.cycle if r.cycle is not None else -1,
            "offset": r.offset,
            "solver_path": "",
            "verdict": r.kind.upper().replace(" ", "_"),
            "problems": [r.describe()],
        }
        for r in verified.rejections
    ]
    if head is not None and not head_reached(verified, head, codec):
        last = verified.accepted[-1] if verified.accepted else None
        out.append(
            {
                "decision_id": last[1].decision_id if last else "",
                "cycle": last[1].cycle if last else -1,
                "offset": last[0].offset + 1 if last else 0,
                "solver_path": "",
                "verdict": "HEAD_NOT_REACHED",
                "problems": [
                    f"head not reached: the verified chain ends at {verified.head} and never passes the expected "
                    f"head {head} (a decision was deleted or the log is not the one the head was taken from)"
                ],
            }
        )
    return out
