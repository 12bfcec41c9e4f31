"""The writer's transaction state machine both log adapters share: which call is allowed when, and the errors.

Pure: no I/O. An adapter asks it before doing anything (the call is refused with the port's error naming the call
and the state) and wraps the I/O of a transition in it, so the state moves only when the I/O succeeded:

    plain ──init_transactions──▶ idle ──begin──▶ in transaction ──commit / abort──▶ idle
    any open state ──FencedError──▶ fenced (every later write refused)     any ──close──▶ closed

A plain writer produces and flushes without transactions; `init_transactions` is allowed only there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

from eventlog.port import FencedError, LogError


class TxnState(Enum):
    """Where a log's writer stands."""

    PLAIN = "plain"
    IDLE = "idle"
    IN_TRANSACTION = "in transaction"
    FENCED = "fenced"
    CLOSED = "closed"


class Transactions:
    """One log instance's writer state. `log_name` says which log in the errors (e.g. "embedded log x.sqlite")."""

    def __init__(self, log_name: str) -> None:
        self.log_name = log_name
        self._state = TxnState.PLAIN
        self._transactional_id: str | None = None
        self._fenced_by: str | None = None

    def __repr__(self) -> str:
        return f"Transactions({self.log_name!r}, state={self._state.value!r}, id={self._transactional_id!r})"

    @property
    def state(self) -> TxnState:
        return self._state

    @property
    def transactional_id(self) -> str | None:
        """The id given to `init_transactions` (from the moment it is attempted), None for a plain writer."""
        return self._transactional_id

    @property
    def transactional(self) -> bool:
        return self._transactional_id is not None

    @property
    def in_transaction(self) -> bool:
        return self._state is TxnState.IN_TRANSACTION

    @property
    def closed(self) -> bool:
        return self._state is TxnState.CLOSED

    # --- checks -------------------------------------------------------------------------------------------

    def check_open(self, call: str) -> None:
        """Any call but `close` on a closed log is refused."""
        if self._state is TxnState.CLOSED:
            raise LogError(f"{call}(): {self.log_name} is closed")

    def check_writer(self, call: str) -> None:
        """A writing call needs an open log whose writer was not fenced."""
        self.check_open(call)
        if self._state is TxnState.FENCED:
            raise FencedError(
                f"{call}(): transactional id {self._transactional_id!r} was fenced (state {self._state.value}) and "
                f"this instance must stop: {self._fenced_by}"
            )

    def check_produce(self) -> None:
        """A plain writer produces at any time, a transactional one only inside a transaction."""
        self.check_writer("produce")
        if self._state is TxnState.IDLE:
            raise LogError(
                f"produce() on a transactional writer outside a transaction (state {self._state.value}): "
                "call begin() first"
            )

    def _check_in_transaction(self, call: str) -> None:
        self.check_writer(call)
        if self._state is TxnState.PLAIN:
            raise LogError(
                f"{call}() without an open transaction (state {self._state.value}): this writer is not "
                "transactional, call init_transactions() and begin() first"
            )
        if self._state is TxnState.IDLE:
            hint = ": call begin() first" if call == "commit" else ""
            raise LogError(f"{call}() without an open transaction (state {self._state.value}){hint}")

    # --- transitions: each checks on entry and moves when its block finishes without an exception ------------

    @contextmanager
    def _moving_to(self, target: TxnState) -> Iterator[None]:
        try:
            yield
        except FencedError as exc:
            self.fence(str(exc))
            raise
        self._state = target

    @contextmanager
    def init_transactions(self, transactional_id: str) -> Iterator[None]:
        """plain → idle, once per instance."""
        self.check_writer("init_transactions")
        if not transactional_id:
            raise ValueError("transactional_id must be a non-empty string")
        if self._transactional_id is not None:
            raise LogError(
                f"init_transactions() was already called (transactional id {self._transactional_id!r}, "
                f"state {self._state.value})"
            )
        self._transactional_id = transactional_id
        try:
            yield
        except FencedError as exc:
            self.fence(str(exc))
            raise
        except BaseException:
            self._transactional_id = None
            raise
        self._state = TxnState.IDLE

    @contextmanager
    def begin(self) -> Iterator[None]:
        """idle → in transaction."""
        self.check_writer("begin")
        if self._state is TxnState.PLAIN:
            raise LogError(
                f"begin() needs a transactional writer (state {self._state.value}): call init_transactions() first"
            )
        if self._state is TxnState.IN_TRANSACTION:
            raise LogError(
                f"begin() while a transaction is open (state {self._state.value}): commit() or abort() it first"
            )
        with self._moving_to(TxnState.IN_TRANSACTION):
            yield

    @contextmanager
    def commit(self) -> Iterator[None]:
        """in transaction → idle; a failed commit stays in the transaction, to be aborted (or fenced)."""
        self._check_in_transaction("commit")
        with self._moving_to(TxnState.IDLE):
            yield

    @contextmanager
    def abort(self) -> Iterator[None]:
        """in transaction → idle."""
        self._check_in_transaction("abort")
        with self._moving_to(TxnState.IDLE):
            yield

    def fence(self, reason: str) -> None:
        """→ fenced, for good: a newer instance took over, or the client failed fatally. The first reason stays."""
        if self._state is TxnState.CLOSED:
            return
        if self._state is not TxnState.FENCED:
            self._fenced_by = reason
        self._state = TxnState.FENCED

    def close(self) -> TxnState:
        """→ closed; returns the state it left, so the adapter knows whether to abort (CLOSED: already closed)."""
        left, self._state = self._state, TxnState.CLOSED
        return left
