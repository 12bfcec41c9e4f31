"""A signed operator command copied back onto the control topic (anyone can read it on the log) never moves a
governor again: the keyring accepts each command id once; and one copied onto another book's control topic moves
nothing there: a command names its book, under its signature (rules.md §11.3)."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from allocator.service.keys import public_key_hex
from book.config import AllocatorConfig
from book.portfolio import PortfolioState
from schemas.events import Command, ControlCommand, Governor, GovernorState
from schemas.signing import canonical_bytes, key_id_of, sign

T = 1_700_000_000_000
CONFIG = AllocatorConfig.from_mapping({"scenario_count": 300})
BOOK = "allocator.main"


def keyring(n: int) -> tuple[list[Ed25519PrivateKey], dict[str, str]]:
    private = [Ed25519PrivateKey.generate() for _ in range(n)]
    return private, {key_id_of(k.public_key()): public_key_hex(k.public_key()) for k in private}


def signed(action: Command, i: int, key: Ed25519PrivateKey, book: str | None = BOOK) -> ControlCommand:
    command: ControlCommand = sign(ControlCommand(f"c{i}", "ops", action, "because", None, T + i, book), key)
    return command


def state(book: PortfolioState) -> GovernorState:
    return book.governor.state


def test_a_replayed_signed_resume_does_not_lift_a_later_halt() -> None:
    private, ring = keyring(1)
    book = PortfolioState.new(CONFIG.replace(operator_keys=ring), BOOK)
    resume = signed(Command.RESUME, 2, private[0])
    book.apply(signed(Command.HALT, 1, private[0]))
    book.apply(resume)
    assert state(book) is GovernorState.ACTIVE
    book.apply(signed(Command.HALT, 3, private[0]))
    changes = book.apply(resume)  # the same record, written again by whoever can write the control topic
    assert state(book) is GovernorState.PAUSED
    assert len(changes) == 1 and changes[0].governor is Governor.OPERATOR
    assert changes[0].old_state == changes[0].new_state == "PAUSED"
    assert "replayed" in changes[0].cause and "c2" in changes[0].cause


def test_one_operator_cannot_complete_a_two_person_reset_with_a_copy_of_the_others_old_reset() -> None:
    private, ring = keyring(2)
    book = PortfolioState.new(CONFIG.replace(operator_keys=ring, kill_switch_reset_quorum=2), BOOK)
    book.governor = dataclasses.replace(book.governor, kill_switch_tripped=True)
    book.last_time = T
    book.apply(signed(Command.RESET_KILL_SWITCH, 1, private[0]))
    second = signed(Command.RESET_KILL_SWITCH, 2, private[1])
    book.apply(second)
    assert not book.governor.kill_switch_tripped  # two keys: reset
    book.governor = dataclasses.replace(book.governor, kill_switch_tripped=True)  # tripped again, later
    book.last_time = T + 10_000_000
    book.apply(signed(Command.RESET_KILL_SWITCH, 3, private[0]))
    changes = book.apply(second)  # key 1's old reset, copied from the log
    assert book.governor.kill_switch_tripped
    assert "replayed" in changes[0].cause
    book.apply(signed(Command.RESET_KILL_SWITCH, 4, private[1]))  # the second operator really signs
    assert not book.governor.kill_switch_tripped


def test_without_a_keyring_commands_are_folded_as_before() -> None:
    book = PortfolioState.new(CONFIG)
    halt = ControlCommand("c1", "ops", Command.HALT, "r", None, T)
    resume = ControlCommand("c2", "ops", Command.RESUME, "r", None, T)
    for command in (halt, resume, halt):
        book.apply(command)
    assert book.governor.state is GovernorState.PAUSED


def test_a_command_signed_for_one_book_moves_nothing_on_another_that_shares_the_keys() -> None:
    private, ring = keyring(1)
    config = CONFIG.replace(operator_keys=ring)
    mine, other = PortfolioState.new(config, BOOK), PortfolioState.new(config, "allocator.other")
    halt = signed(Command.HALT, 1, private[0])
    assert mine.apply(halt) and state(mine) is GovernorState.PAUSED
    changes = other.apply(halt)  # the same record, copied onto the other book's control topic
    assert state(other) is GovernorState.ACTIVE
    assert len(changes) == 1 and changes[0].governor is Governor.OPERATOR
    assert "for book 'allocator.main', not this book 'allocator.other'" in changes[0].cause
    # Its id is not taken there: the other book's own command with that id still counts.
    other.apply(signed(Command.HALT, 1, private[0], "allocator.other"))
    assert state(other) is GovernorState.PAUSED


def _recorded_before_the_key(config: AllocatorConfig) -> AllocatorConfig:
    """`config` as a log written before `operator_commands_name_book` existed reads back."""
    return AllocatorConfig.from_recorded(
        {k: v for k, v in config.to_mapping().items() if k != "operator_commands_name_book"}
    )


def test_the_book_is_under_the_signature() -> None:
    private, ring = keyring(1)
    halt = signed(Command.HALT, 1, private[0])
    other = PortfolioState.new(CONFIG.replace(operator_keys=ring), "allocator.other")
    changes = other.apply(dataclasses.replace(halt, book="allocator.other"))  # re-addressed
    assert state(other) is GovernorState.ACTIVE and "bad signature" in changes[0].cause
    # Stripped of its book, to pass where commands naming none are still taken: the signature breaks too.
    old = PortfolioState.new(_recorded_before_the_key(CONFIG.replace(operator_keys=ring)), "allocator.other")
    changes = old.apply(dataclasses.replace(halt, book=None))
    assert state(old) is GovernorState.ACTIVE and "bad signature" in changes[0].cause


def test_a_signed_command_naming_no_book_is_refused_unless_the_book_ran_before_commands_named_one() -> None:
    private, ring = keyring(1)
    unbound = signed(Command.HALT, 1, private[0], book=None)  # as a client before ControlCommand version 3 signed
    new = PortfolioState.new(CONFIG.replace(operator_keys=ring), BOOK)
    changes = new.apply(unbound)
    assert state(new) is GovernorState.ACTIVE and "names no book" in changes[0].cause
    # A book whose log recorded its configuration before the key existed folds such a command as it did then.
    old = PortfolioState.new(_recorded_before_the_key(CONFIG.replace(operator_keys=ring)), BOOK)
    old.apply(unbound)
    assert state(old) is GovernorState.PAUSED


def test_a_command_naming_no_book_keeps_the_bytes_it_was_signed_over() -> None:
    """Commands signed before ControlCommand version 3 were signed over their version-2 body: reading them with
    today's schema (book None) gives the same canonical bytes, so their signatures still verify."""
    import io

    import fastavro

    from schemas.signing import _plain
    from schemas.versions import record_versions

    command = ControlCommand("c1", "ops", Command.HALT, "because", None, T)
    out = io.BytesIO()
    v2 = fastavro.parse_schema(record_versions("ControlCommand")[1].schema, named_schemas={})
    fastavro.schemaless_writer(out, v2, {k: v for k, v in _plain(command).items() if k != "book"})
    assert canonical_bytes(command) == out.getvalue()
    assert canonical_bytes(dataclasses.replace(command, book=BOOK)) != out.getvalue()
