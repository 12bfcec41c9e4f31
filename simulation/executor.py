"""The simulated executor: reads the book's decisions and reports a fill for every funded allocation, with
failures, partial fills and slippage. Each allocation's fate is drawn from the seed and the proposal id, so the
same proposal meets the same venue in both demo runs."""

from __future__ import annotations

import random
from dataclasses import dataclass

from allocator.service.clients import BookClient, DecisionFeed
from schemas.events import Decision, Fill, FillStatus, Side
from simulation.market import World


@dataclass(frozen=True)
class ExecutorParams:
    fail_rate: float = 0.05
    partial_rate: float = 0.10
    max_slippage: float = 0.01  # adverse, as a fraction of the contract's price
    fee_rate: float = 0.0005  # of the filled size
    broken: tuple[tuple[int, int, float], ...] = ()  # (from step, to step, failure rate) while the venue is broken

    def failure_rate(self, step: int) -> float:
        for start, end, rate in self.broken:
            if start <= step < end:
                return rate
        return self.fail_rate


class Executor:
    def __init__(self, world: World, params: ExecutorParams, seed: int, client: BookClient, feed: DecisionFeed):
        self.world = world
        self.params = params
        self.seed = seed
        self.client = client
        self.feed = feed

    def execute(self, step: int) -> list[Fill]:
        """Act on every decision published since the last call, in the order the decisions rank allocations."""
        fills: list[Fill] = []
        for decision in self.feed.drain():
            fills.extend(self.fills_for(decision, step))
        for fill in fills:
            self.client.report_fill(fill)
        self.client.flush()
        return fills

    def fills_for(self, decision: Decision, step: int) -> list[Fill]:
        out: list[Fill] = []
        for i, a in enumerate(x for x in decision.allocations if x.size > 0 and x.side is not None):
            side = a.side or Side.BUY
            rng = random.Random(f"{self.seed}:{a.proposal_id}")
            fail, partial, fraction, slip = rng.random(), rng.random(), rng.uniform(0.4, 0.95), rng.random()
            fill_id = f"fill-{decision.decision_id}-{i}"
            time = decision.decided_at + 500 + i
            market = self.world.market(a.market_id)
            if not self.world.is_open(market, step):
                out.append(Fill(fill_id, decision.decision_id, a.proposal_id, a.market_id, side, a.size, 0.0, 0.5,
                                0.0, FillStatus.REJECTED, "market closed", time, a.agent_id))  # fmt: skip
                continue
            price = self.world.contract_price(a.market_id, side, step)
            price = round(min(price * (1.0 + self.params.max_slippage * slip), 0.99), 4)
            if fail < self.params.failure_rate(step):
                out.append(Fill(fill_id, decision.decision_id, a.proposal_id, a.market_id, side, a.size, 0.0, price,
                                0.0, FillStatus.FAILED, "venue did not confirm the order", time,
                                a.agent_id))  # fmt: skip
                continue
            filled = round(a.size * fraction, 2) if partial < self.params.partial_rate else a.size
            # One report per order, its final one: FILLED with what was executed (rules.md §11.1: PARTIAL would say
            # more may come, and keep the rest reserved until fill_timeout_s).
            why = "partially executed; the rest was not" if filled < a.size else None
            fee = round(filled * self.params.fee_rate, 2)
            out.append(Fill(fill_id, decision.decision_id, a.proposal_id, a.market_id, side, a.size, filled, price,
                            fee, FillStatus.FILLED, why, time, a.agent_id))  # fmt: skip
        return out
