"""One writer of decisions per topic prefix (docs/operations.md, "One book per topic prefix"): the allocator's
transactional id is the prefix's, so two allocators started at once on a prefix with no decision yet never both
publish, whichever books they name; a second book on a prefix that holds another book's decisions is refused before
it fences the running one; and an instance of the release before, writing under the book's own id, is fenced at
start. On the embedded log and on the secured broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from allocator.service.chain import ChainSettings, DecisionSigner, UnverifiedBook
from allocator.service.loop import AllocatorService, OtherBook, group_of, legacy_transactional_id_of
from book.config import AllocatorConfig
from cli.main import main
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import FencedError, Topics
from schemas.codec import SingleObjectCodec
from schemas.events import Decision, Proposal, Side
from tests.conftest import Open, cycle

codec = SingleObjectCodec()
CONFIG = AllocatorConfig.from_mapping({"scenario_count": 300, "solver_time_limit_ms": 10_000})


def allocator(open_log: Open, topics: Topics, book: str, chain: ChainSettings | None = None) -> AllocatorService:
    """An allocator for `book`, not started."""
    return AllocatorService(open_log(group_of(topics, book)), open_log(), codec, book, CONFIG, topics,
                            say=lambda _: None, chain=chain)  # fmt: skip


def propose(open_log: Open, topics: Topics, *ids: str) -> None:
    now = int(time.time() * 1000)
    with open_log() as log:
        for pid in ids:
            p = Proposal(pid, "alpha", "s", f"m-{pid}", Side.BUY, 0.5, 0.04, 0.9, 800.0, 100.0, 0.05, 0.01, "k", now)
            log.produce(topics.proposals, codec.encode(p), key=p.market_id.encode())
        log.flush()


def books_decided(open_log: Open, topics: Topics) -> list[str]:
    """The book id of every committed decision on the prefix, in log order."""
    with open_log() as log:
        ends = log.end_offsets([topics.decisions])
        log.assign([topics.decisions])
        found: list[str] = []
        deadline = time.monotonic() + 30
        while any(log.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline
            for record in log.poll(100, 0.2):
                assert record.value is not None
                decision = codec.decode(record.value, record.topic, record.partition, record.offset)
                assert isinstance(decision, Decision)
                found.append(decision.book_id)
        return found


def close(*services: AllocatorService) -> None:
    for svc in services:
        svc.log.close()
        svc.reader.close()


def test_two_books_started_at_once_on_a_new_prefix_never_both_publish(log_kind: tuple[Open, Topics]) -> None:
    """Both find no decision on the prefix; the later start fences the earlier, whose cycle publishes nothing."""
    open_log, topics = log_kind
    alpha, beta = allocator(open_log, topics, "alpha"), allocator(open_log, topics, "beta")
    try:
        alpha.start()
        beta.start()
        propose(open_log, topics, "p1", "p2")
        with pytest.raises(FencedError):
            cycle(alpha, 2)
        decided = cycle(beta, 2)
        assert sorted(a.proposal_id for a in decided.allocations) == ["p1", "p2"]
        assert books_decided(open_log, topics) == ["beta"]
    finally:
        close(alpha, beta)


@pytest.mark.parametrize(
    ("signed", "books", "refusal", "says"),
    [
        (False, ("beta",), OtherBook, "book {prefix}.alpha's, not {prefix}.beta's"),  # another book's decisions
        (True, ("alpha", "beta"), UnverifiedBook, "none of them is verified"),  # signed, and no key given
    ],
)
def test_a_start_that_is_refused_is_refused_before_it_fences_the_running_book(
    log_kind: tuple[Open, Topics], signed: bool, books: tuple[str, ...], refusal: type[Exception], says: str
) -> None:
    """A mistaken `--book`, or a start without the keys of a signed book, does not stop the book that runs."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    open_log, topics = log_kind
    chain = ChainSettings(DecisionSigner(Ed25519PrivateKey.generate())) if signed else None
    alpha = allocator(open_log, topics, "alpha", chain)
    others = [allocator(open_log, topics, book) for book in books]
    try:
        alpha.start()
        propose(open_log, topics, "p1")
        cycle(alpha, 1)
        for other in others:
            with pytest.raises(refusal, match=says.format(prefix=topics.prefix)):
                other.start()
        propose(open_log, topics, "p2")
        cycle(alpha, 1)  # not fenced by the refused starts
        assert books_decided(open_log, topics) == ["alpha", "alpha"]
    finally:
        close(alpha, *others)


def test_an_instance_of_the_release_before_is_fenced_at_start(log_kind: tuple[Open, Topics]) -> None:
    """Releases before wrote a book's decisions under `allocator-<prefix>-<book>`: a new start fences that id, so
    such an instance still running cannot publish beside the new one."""
    open_log, topics = log_kind
    with open_log() as old:
        old.create_topics([topics.decisions])
        old.init_transactions(legacy_transactional_id_of(topics, "alpha"))
        old.begin()
        old.produce(topics.decisions, b"a decision of the release before", key=b"alpha")
        alpha = allocator(open_log, topics, "alpha")
        try:
            alpha.start()
            with pytest.raises(FencedError):
                old.commit()
            assert books_decided(open_log, topics) == []
        finally:
            close(alpha)


def test_a_start_never_fences_the_allocator_of_the_prefix_its_old_id_names(log_kind: tuple[Open, Topics]) -> None:
    """An outside probe: the id releases before wrote book `alpha` of prefix P under, `allocator-P-alpha`, is today's
    id of the allocator of prefix `P-alpha`; starting book alpha on P fenced it, and that book stopped ("another
    instance took over"). Where the prefix `P-alpha` has its topics, the old id is left alone."""
    open_log, topics = log_kind
    neighbour = Topics(f"{topics.prefix}-alpha")
    other = allocator(open_log, neighbour, "main")
    alpha = allocator(open_log, topics, "alpha")
    try:
        other.start()
        propose(open_log, neighbour, "p1")
        cycle(other, 1)
        alpha.start()
        propose(open_log, neighbour, "p2")
        cycle(other, 1)  # still its prefix's writer: not fenced
        assert books_decided(open_log, neighbour) == ["main", "main"]
    finally:
        close(other, alpha)


def test_a_foreign_decision_appended_to_an_unsigned_book_is_named_without_contradictory_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: one decision of book beta appended to book alpha's unsigned log made `serve --book alpha` say
    the decisions were beta's (serve --book beta) and `serve --book beta` say they were alpha's (serve --book alpha): a
    refusal loop whose advice contradicted itself. Both now name the two books, with counts and where each begins."""
    root = tmp_path
    proposals = str(Path(__file__).resolve().parent.parent / "examples" / "proposals.json")
    decisions = Topics().decisions
    for book in ("alpha", "beta"):
        log = ["--log", str(root / f"{book}.sqlite")]
        for argv in (["init", *log], ["propose", proposals, *log],
                     ["serve", "--book", book, *log, "--max-cycles", "1", "--duration", "60"]):  # fmt: skip
            assert main(argv) == 0, argv
    with EmbeddedEventLog(root / "beta.sqlite") as beta:
        beta.assign([decisions])
        (foreign,) = beta.poll(10, 0.5)
    with EmbeddedEventLog(root / "alpha.sqlite") as alpha:
        assert foreign.value is not None
        alpha.produce(decisions, foreign.value, timestamp_ms=foreign.timestamp_ms)
        alpha.flush()
    for book, other in (("alpha", "beta"), ("beta", "alpha")):
        capsys.readouterr()
        assert main(["serve", "--book", book, "--log", str(root / "alpha.sqlite"), "--max-cycles", "2"]) == 2
        err = capsys.readouterr().err
        assert f"are allocator.{book}'s (1) and another book's (allocator.{other}: 1 (the first at" in err, err
        assert "serve --book" not in err
