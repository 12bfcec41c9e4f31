"""The writer's transaction state machine on its own: every allowed move, every refused call and its error."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from eventlog.port import AbortableError, FencedError, LogError
from eventlog.transactions import Transactions, TxnState


def machine(state: TxnState) -> Transactions:
    """A machine brought to `state` through its own transitions."""
    txn = Transactions("test log")
    if state is TxnState.PLAIN:
        return txn
    if state is TxnState.CLOSED:
        txn.close()
        return txn
    with txn.init_transactions("txn-1"):
        pass
    if state is TxnState.IN_TRANSACTION:
        with txn.begin():
            pass
    elif state is TxnState.FENCED:
        txn.fence("epoch 1 took over")
    assert txn.state is state
    return txn


Move = Callable[[Transactions], AbstractContextManager[None]]

MOVES: dict[str, Move] = {
    "init_transactions": lambda txn: txn.init_transactions("txn-2"),
    "begin": lambda txn: txn.begin(),
    "commit": lambda txn: txn.commit(),
    "abort": lambda txn: txn.abort(),
}


def test_a_new_machine_is_a_plain_open_writer() -> None:
    txn = Transactions("test log")
    assert txn.state is TxnState.PLAIN
    assert not txn.transactional and not txn.in_transaction and not txn.closed
    assert txn.transactional_id is None
    txn.check_open("poll")
    txn.check_writer("produce")
    txn.check_produce()


def test_the_transaction_cycle_goes_idle_in_transaction_idle() -> None:
    txn = Transactions("test log")
    during_init: list[tuple[TxnState, str | None]] = []
    with txn.init_transactions("allocator-book"):
        during_init.append((txn.state, txn.transactional_id))
    assert during_init == [(TxnState.PLAIN, "allocator-book")]  # the id is known while the adapter's I/O runs
    assert (txn.state, txn.transactional_id, txn.transactional) == (TxnState.IDLE, "allocator-book", True)
    seen: list[TxnState] = []
    for finish in (txn.commit, txn.abort, txn.commit):
        with txn.begin():
            seen.append(txn.state)
        seen.append(txn.state)
        txn.check_produce()
        with finish():
            seen.append(txn.state)
        seen.append(txn.state)
    assert seen == [TxnState.IDLE, TxnState.IN_TRANSACTION, TxnState.IN_TRANSACTION, TxnState.IDLE] * 3


@pytest.mark.parametrize(
    ("state", "call", "error", "message"),
    [
        (TxnState.PLAIN, "begin", LogError, r"begin\(\) needs a transactional writer \(state plain\).*init_trans"),
        (TxnState.PLAIN, "commit", LogError, r"commit\(\) without an open transaction \(state plain\)"),
        (TxnState.PLAIN, "abort", LogError, r"abort\(\) without an open transaction \(state plain\)"),
        (TxnState.IDLE, "init_transactions", LogError, r"already called \(transactional id 'txn-1', state idle\)"),
        (TxnState.IDLE, "commit", LogError, r"commit\(\) without an open transaction \(state idle\): call begin"),
        (TxnState.IDLE, "abort", LogError, r"abort\(\) without an open transaction \(state idle\)$"),
        (TxnState.IN_TRANSACTION, "init_transactions", LogError, r"already called .*state in transaction"),
        (TxnState.IN_TRANSACTION, "begin", LogError, r"begin\(\) while a transaction is open \(state in trans"),
        (TxnState.FENCED, "init_transactions", FencedError, r"init_transactions\(\): .*fenced.*epoch 1 took over"),
        (TxnState.FENCED, "begin", FencedError, r"begin\(\): transactional id 'txn-1' was fenced \(state fenced"),
        (TxnState.FENCED, "commit", FencedError, r"commit\(\): .*must stop: epoch 1 took over"),
        (TxnState.FENCED, "abort", FencedError, r"abort\(\): .*fenced"),
        (TxnState.CLOSED, "init_transactions", LogError, r"init_transactions\(\): test log is closed"),
        (TxnState.CLOSED, "begin", LogError, r"begin\(\): test log is closed"),
        (TxnState.CLOSED, "commit", LogError, r"commit\(\): test log is closed"),
        (TxnState.CLOSED, "abort", LogError, r"abort\(\): test log is closed"),
    ],
)
def test_a_call_in_the_wrong_state_is_refused_naming_the_call_and_the_state_and_nothing_moves(
    state: TxnState, call: str, error: type[LogError], message: str
) -> None:
    txn = machine(state)
    ran: list[str] = []
    with pytest.raises(error, match=message) as refused, MOVES[call](txn):
        ran.append(call)
    assert ran == [], "the adapter's I/O must not run when the call is refused"
    assert txn.state is state
    assert isinstance(refused.value, FencedError) == (error is FencedError)


@pytest.mark.parametrize(
    ("state", "allowed"),
    [
        (TxnState.PLAIN, True),
        (TxnState.IDLE, False),
        (TxnState.IN_TRANSACTION, True),
        (TxnState.FENCED, False),
        (TxnState.CLOSED, False),
    ],
)
def test_produce_is_allowed_plain_or_inside_a_transaction(state: TxnState, allowed: bool) -> None:
    txn = machine(state)
    if allowed:
        txn.check_produce()
        return
    expected = {
        TxnState.IDLE: (LogError, r"produce\(\) on a transactional writer outside a transaction \(state idle\).*begin"),
        TxnState.FENCED: (FencedError, r"produce\(\): .*fenced"),
        TxnState.CLOSED: (LogError, r"produce\(\): test log is closed"),
    }[state]
    with pytest.raises(expected[0], match=expected[1]):
        txn.check_produce()


@pytest.mark.parametrize("state", list(TxnState))
def test_reads_are_refused_only_once_closed(state: TxnState) -> None:
    txn = machine(state)
    if state is TxnState.CLOSED:
        with pytest.raises(LogError, match=r"poll\(\): test log is closed"):
            txn.check_open("poll")
    else:
        txn.check_open("poll")


@pytest.mark.parametrize("call", ["init_transactions", "begin", "commit", "abort"])
def test_a_failed_transition_stays_where_it_was(call: str) -> None:
    start = {"init_transactions": TxnState.PLAIN, "begin": TxnState.IDLE}.get(call, TxnState.IN_TRANSACTION)
    txn = machine(start)
    with pytest.raises(AbortableError), MOVES[call](txn):
        raise AbortableError("the broker said no")
    assert txn.state is start
    if call == "init_transactions":
        assert txn.transactional_id is None  # a failed init leaves a plain writer
    else:
        with txn.abort() if start is TxnState.IN_TRANSACTION else txn.begin():
            pass  # and the writer is still usable


@pytest.mark.parametrize("call", ["init_transactions", "begin", "commit", "abort"])
def test_a_fenced_error_during_a_transition_fences_for_good(call: str) -> None:
    start = {"init_transactions": TxnState.PLAIN, "begin": TxnState.IDLE}.get(call, TxnState.IN_TRANSACTION)
    txn = machine(start)
    with pytest.raises(FencedError, match="epoch 7 took over"), MOVES[call](txn):
        raise FencedError("epoch 7 took over")
    assert txn.state is TxnState.FENCED
    assert txn.transactional
    for move in ("begin", "commit", "abort"):
        with pytest.raises(FencedError, match=f"{move}.*must stop: epoch 7 took over"), MOVES[move](txn):
            pass
    with pytest.raises(FencedError):
        txn.check_produce()
    txn.check_open("poll")


def test_fencing_keeps_the_first_reason_and_a_closed_log_stays_closed() -> None:
    txn = machine(TxnState.IN_TRANSACTION)
    txn.fence("first")
    txn.fence("second")
    with pytest.raises(FencedError, match=r"must stop: first$"):
        txn.check_writer("commit")
    assert txn.close() is TxnState.FENCED
    txn.fence("after close")
    assert txn.state is TxnState.CLOSED


@pytest.mark.parametrize("state", list(TxnState))
def test_close_returns_the_state_it_left_and_closing_again_does_nothing(state: TxnState) -> None:
    txn = machine(state)
    assert txn.close() is state
    assert txn.closed
    assert txn.close() is TxnState.CLOSED
    assert txn.state is TxnState.CLOSED


def test_init_transactions_needs_a_non_empty_id() -> None:
    txn = Transactions("test log")
    with pytest.raises(ValueError, match="non-empty"), txn.init_transactions(""):
        pass
    assert (txn.state, txn.transactional_id) == (TxnState.PLAIN, None)


def test_the_adapters_own_refusal_inside_init_leaves_a_plain_writer_that_may_try_again() -> None:
    txn = Transactions("test log")
    with pytest.raises(LogError, match="before any produce"), txn.init_transactions("txn"):
        raise LogError("init_transactions() must come before any produce()")
    assert (txn.state, txn.transactional_id) == (TxnState.PLAIN, None)
    with txn.init_transactions("txn"):
        pass
    assert txn.state is TxnState.IDLE
