"""`allocator serve`'s Prometheus metrics (an adapter): the book, its decisions, its lag and its transactions.

One `ServiceMetrics` per service, each with its own `CollectorRegistry` (never the process-wide default), so tests
and a process serving several books never share series. The service calls it at a few points — after `start`,
after each published cycle, on an abort, when idle — never per record: the cost is one pass over the book's
holdings and the decision's allocations per cycle. docs/operations.md lists every metric.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from allocator.service.sequencer import BookState
from book.portfolio import PortfolioState
from eventlog.port import EventLog, TopicPartition
from schemas.events import Decision, GovernorState

# Seconds: a cycle is milliseconds to a few seconds (the solver's time limit is 250 ms by default).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WORK_BUCKETS = (0.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)
# How often an idle service re-reads the log's end offsets (a cycle always does).
IDLE_LAG_INTERVAL_S = 1.0
# How often the exposure ratios (a pass over every holding) are recomputed: a scrape comes every 15 s or so, and a
# cycle runs every `cycle_interval_s` (1 s by default) or faster under load; the cheap gauges move every cycle.
EXPOSURE_INTERVAL_S = 1.0


def consumer_lag(log: EventLog, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """End offset minus `positions` per input partition: one `end_offsets` call (cheap; once per cycle)."""
    topics = sorted({tp.topic for tp in positions})
    ends = log.end_offsets(topics) if topics else {}
    return {tp: max(ends.get(tp, offset) - offset, 0) for tp, offset in positions.items()}


class ServiceMetrics:
    """The metrics of one book's allocator service; `ready()` is what `/readyz` answers."""

    def __init__(
        self, book_id: str, registry: CollectorRegistry | None = None, exposure_interval_s: float = EXPOSURE_INTERVAL_S
    ) -> None:
        self.book = book_id
        self.exposure_interval_s = exposure_interval_s
        self._exposure_at = float("-inf")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r, b = self.registry, ["book"]
        self.governor_state = Gauge(
            "allocator_governor_state", "1 for the book's current governor state, 0 for the others",
            ["book", "state"], registry=r,
        )  # fmt: skip
        self.governor_engaged = Gauge(
            "allocator_governor_engaged", "1 while this governor holds the book (tripped, paused or halted)",
            ["book", "governor"], registry=r,
        )  # fmt: skip
        self.equity = Gauge("allocator_equity", "Equity E: cash plus marked holdings (currency)", b, registry=r)
        self.available = Gauge(
            "allocator_available_capital", "Available capital W: cash minus reservations (currency)", b, registry=r
        )
        self.high_water_mark = Gauge("allocator_high_water_mark", "High-water mark of equity (currency)", b, registry=r)
        self.drawdown = Gauge("allocator_drawdown_ratio", "Drawdown from the high-water mark, 0..1", b, registry=r)
        self.kill_switch_drawdown = Gauge(
            "allocator_kill_switch_drawdown_ratio", "The drawdown at which the kill switch trips", b, registry=r
        )
        self.market_exposure = Gauge(
            "allocator_market_exposure_ratio", "|signed exposure| of a market over its cap (market_cap x equity)",
            ["book", "market"], registry=r,
        )  # fmt: skip
        self.key_exposure = Gauge(
            "allocator_correlation_key_exposure_ratio", "Gross exposure under a correlation key over its cap",
            ["book", "correlation_key"], registry=r,
        )  # fmt: skip
        self.pending = Gauge("allocator_pending_proposals", "Proposals received and not yet decided", b, registry=r)
        self.cycle = Gauge("allocator_cycle", "The last published cycle number", b, registry=r)
        self.last_decision = Gauge(
            "allocator_last_decision_timestamp_seconds", "Wall-clock time the last decision was published", b,
            registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "allocator_decisions", "Decisions published, by solver path", ["book", "solver_path"], registry=r
        )
        self.allocations = Counter(
            "allocator_allocations", "Allocations decided, by status and reason code (NONE: no reason)",
            ["book", "status", "reason"], registry=r,
        )  # fmt: skip
        self.inputs = Counter("allocator_input_records", "Input records folded into published cycles", b, registry=r)
        self.dead_letters = Counter("allocator_dead_letters", "Dead letters published", b, registry=r)
        self.cycle_seconds = Histogram(
            "allocator_cycle_duration_seconds", "Fold, decide and publish of one cycle", b, registry=r,
            buckets=DURATION_BUCKETS,
        )  # fmt: skip
        self.solve_seconds = Histogram(
            "allocator_solve_duration_seconds", "The solver's time in a cycle (Decision.solve_ms)", b, registry=r,
            buckets=DURATION_BUCKETS,
        )  # fmt: skip
        self.solve_limit = Gauge(
            "allocator_solver_time_limit_seconds", "The configured solver time limit", b, registry=r
        )
        self.work_used = Histogram(
            "allocator_solver_work_used", "Solver work units a cycle used (Decision.work_used; 0 until reported)", b,
            registry=r, buckets=WORK_BUCKETS,
        )  # fmt: skip
        self.work_last = Gauge("allocator_solver_work_used_last", "Work units of the last cycle", b, registry=r)
        self.work_budget = Gauge(
            "allocator_solver_work_budget", "The configured work budget per solve (0: none configured)", b, registry=r
        )
        self.lag = Gauge(
            "allocator_consumer_lag_records", "End offset minus the consumer's position, per input partition",
            ["book", "topic", "partition"], registry=r,
        )  # fmt: skip
        self.aborts = Counter("allocator_transaction_aborts", "Transactions aborted and retried", b, registry=r)
        self.fenced = Gauge(
            "allocator_fenced", "1 once another instance took over the book (the process then exits 3)", b, registry=r
        )
        self.started = Gauge(
            "allocator_transactions_ready", "1 once the transactional producer is initialised", b, registry=r
        )
        self.up = Gauge("allocator_ready", "1 while /readyz answers 200: started and caught up", b, registry=r)
        self._started = False
        self._fenced = False
        self._caught_up = False
        self._lag_at = float("-inf")
        self._markets: dict[str, Any] = {}
        self._keys: dict[str, Any] = {}
        self._state_children = {state: self.governor_state.labels(self.book, state.value) for state in GovernorState}
        # The book's counters exist from the start at 0: a rate or an alert over one that appeared only at its first
        # increment would miss it (`allocator_dead_letters_total` was absent until the first dead letter).
        for counter in (self.inputs, self.dead_letters, self.aborts):
            counter.labels(self.book)
        governors = ("KILL_SWITCH", "FAILURE_RATE", "OPERATOR")
        self._engaged = {g: self.governor_engaged.labels(self.book, g) for g in governors}
        self._gauges = {
            "equity": self.equity.labels(self.book), "available": self.available.labels(self.book),
            "hwm": self.high_water_mark.labels(self.book), "drawdown": self.drawdown.labels(self.book),
            "kill": self.kill_switch_drawdown.labels(self.book), "pending": self.pending.labels(self.book),
            "solve_limit": self.solve_limit.labels(self.book), "work_budget": self.work_budget.labels(self.book),
        }  # fmt: skip
        for state in GovernorState:
            self.governor_state.labels(self.book, state.value).set(0)
        self.fenced.labels(self.book).set(0)
        self.started.labels(self.book).set(0)
        self.up.labels(self.book).set(0)

    # --- hooks the service calls ---------------------------------------------------------------------------

    def on_start(self, state: BookState, log: EventLog, positions: Mapping[TopicPartition, int]) -> None:
        """After fencing and the rebuild: the producer is ready; the book and the lag as the log left them."""
        self._started = True
        self.started.labels(self.book).set(1)
        self.observe_book(state.portfolio, pending=len(state.portfolio.pending))
        self.cycle.labels(self.book).set(state.cycle)
        self.observe_lag(log, positions)

    def on_cycle(
        self,
        state: BookState,
        decision: Decision,
        inputs: int,
        dead_letters: int,
        seconds: float,
        log: EventLog,
        positions: Mapping[TopicPartition, int],
    ) -> None:
        """After a published cycle: the decision's counters, the book's gauges, the lag (one end_offsets call)."""
        self.observe_decision(decision, seconds)
        self.inputs.labels(self.book).inc(inputs)
        if dead_letters:
            self.dead_letters.labels(self.book).inc(dead_letters)
        self.observe_book(state.portfolio, pending=len(state.portfolio.pending))
        self.cycle.labels(self.book).set(state.cycle)
        self.observe_lag(log, positions)

    def on_idle(self, log: EventLog, positions: Mapping[TopicPartition, int], buffered: int) -> None:
        """A poll that found nothing: re-read the lag at most once a second (a caught-up service is ready)."""
        now = time.monotonic()
        if buffered or now - self._lag_at < IDLE_LAG_INTERVAL_S:
            return
        self.observe_lag(log, positions)

    def on_abort(self) -> None:
        self.aborts.labels(self.book).inc()

    def on_fenced(self) -> None:
        self._fenced = True
        self.fenced.labels(self.book).set(1)
        self.up.labels(self.book).set(0)

    # --- the observations ------------------------------------------------------------------------------------

    def observe_book(self, book: PortfolioState, pending: int) -> None:
        """The governor, equity, drawdown and exposure gauges from the fold's state: one pass over holdings and
        reservations, children looked up once (this runs every cycle; the fold benchmark measures its cost)."""
        config = book.config
        status = book.governor
        current = status.state
        for state, child in self._state_children.items():
            child.set(1 if state is current else 0)
        self._engaged["KILL_SWITCH"].set(1 if status.kill_switch_tripped else 0)
        self._engaged["FAILURE_RATE"].set(1 if status.failure_paused else 0)
        self._engaged["OPERATOR"].set(1 if status.operator_halted else 0)
        equity = book.equity
        g = self._gauges
        g["equity"].set(equity)
        g["available"].set(book.available)
        g["hwm"].set(status.high_water_mark)
        g["drawdown"].set(status.drawdown)
        g["kill"].set(config.kill_switch_drawdown)
        g["pending"].set(pending)
        g["solve_limit"].set(config.solver_time_limit_ms / 1000.0)
        g["work_budget"].set(float(config.solver_work_limit))
        now = time.monotonic()
        if now - self._exposure_at >= self.exposure_interval_s:
            self._exposure_at = now
            self.observe_exposure(book, equity)

    def observe_exposure(self, book: PortfolioState, equity: float) -> None:
        """Exposure as the cycle sizes against it (Portfolio.market_exposure / group_exposure): holdings at their
        marked value, reservations at their size, each over its cap."""
        config = book.config
        markets: dict[str, float] = {}
        keys: dict[str, float] = {}
        for h in book.holdings.values():
            value = book.holding_value(h)
            if value <= 0:
                continue
            markets[h.market_id] = markets.get(h.market_id, 0.0) + h.side.sign * value
            keys[h.correlation_key] = keys.get(h.correlation_key, 0.0) + value
        for r in book.reservations.values():
            markets[r.market_id] = markets.get(r.market_id, 0.0) + r.side.sign * r.size
            keys[r.correlation_key] = keys.get(r.correlation_key, 0.0) + abs(r.size)
        market_cap = config.market_cap * equity
        group_caps, group_cap = config.group_caps, config.group_cap * equity
        market_ratios = {m: _ratio(abs(x), market_cap) for m, x in markets.items()}
        _replace(self.market_exposure, self.book, self._markets, market_ratios)
        _replace(self.key_exposure, self.book, self._keys,
                 {k: _ratio(x, float(group_caps.get(k, group_cap))) for k, x in keys.items()})  # fmt: skip

    def observe_decision(self, decision: Decision, seconds: float) -> None:
        self.decisions.labels(self.book, decision.solver_path.value).inc()
        counts: dict[tuple[str, str], int] = {}
        for a in decision.allocations:
            codes = {r.code.value for r in a.reasons} or {"NONE"}
            for code in codes:
                key = (a.status.value, code)
                counts[key] = counts.get(key, 0) + 1
        for (status, reason), n in counts.items():
            self.allocations.labels(self.book, status, reason).inc(n)
        self.cycle_seconds.labels(self.book).observe(seconds)
        self.solve_seconds.labels(self.book).observe(decision.solve_ms / 1000.0)
        self.work_used.labels(self.book).observe(decision.work_used)
        self.work_last.labels(self.book).set(decision.work_used)
        self.last_decision.labels(self.book).set(time.time())

    def observe_lag(self, log: EventLog, positions: Mapping[TopicPartition, int]) -> None:
        lag = consumer_lag(log, positions)
        self._lag_at = time.monotonic()
        for tp, n in lag.items():
            self.lag.labels(self.book, tp.topic, str(tp.partition)).set(n)
        self._caught_up = all(n == 0 for n in lag.values())
        self.up.labels(self.book).set(1 if self.ready() else 0)

    def ready(self) -> bool:
        """Started (the transactional producer is initialised), not fenced, and caught up with the log."""
        return self._started and not self._fenced and self._caught_up


def _ratio(value: float, cap: float) -> float:
    return value / cap if cap > 0 else (0.0 if value == 0 else float("inf"))


def _replace(gauge: Gauge, book: str, children: dict[str, Any], now: Mapping[str, float]) -> None:
    """Set `now`'s series (children cached by name) and drop those no longer exposed (a closed market leaves no
    stale series)."""
    for name in [n for n in children if n not in now]:
        gauge.remove(book, name)
        del children[name]
    for name, value in now.items():
        child = children.get(name)
        if child is None:
            child = children[name] = gauge.labels(book, name)
        child.set(value)
