"""A signed operator command copied back onto the control topic (anyone can read it on the log) never moves a
governor again: the keyring accepts each command id once (rules.md §11.3)."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from allocator.service.keys import public_key_hex
from book.config import AllocatorConfig
from book.portfolio import PortfolioState
from schemas.events import Command, ControlCommand, Governor, GovernorState
from schemas.signing import key_id_of, sign

T = 1_700_000_000_000
CONFIG = AllocatorConfig.from_mapping({"scenario_count": 300})


def keyring(n: int) -> tuple[list[Ed25519PrivateKey], dict[str, str]]:
    private = [Ed25519PrivateKey.generate() for _ in range(n)]
    return private, {key_id_of(k.public_key()): public_key_hex(k.public_key()) for k in private}


def signed(action: Command, i: int, key: Ed25519PrivateKey) -> ControlCommand:
    command: ControlCommand = sign(ControlCommand(f"c{i}", "ops", action, "because", None, T + i), key)
    return command


def state(book: PortfolioState) -> GovernorState:
    return book.governor.state


def test_a_replayed_signed_resume_does_not_lift_a_later_halt() -> None:
    private, ring = keyring(1)
    book = PortfolioState.new(CONFIG.replace(operator_keys=ring))
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
    book = PortfolioState.new(CONFIG.replace(operator_keys=ring, kill_switch_reset_quorum=2))
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
