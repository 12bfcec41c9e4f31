"""The simulated agents: five strategies, seven agents, each sizing as if it owned the whole wallet.

Each agent sees the public marks and its own noisy view of the truth, and sends proposals; it never sees the
book. What they propose depends only on the world and the seed, never on what the allocator decided, so the
allocator run and the naive run receive exactly the same proposals.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from schemas.events import Proposal, Side
from simulation.market import START_MS, STEP_MS, Market, World

WALLET = 100_000.0  # what every agent believes it trades with: the naive baseline's premise


@dataclass(frozen=True)
class AgentSpec:
    agent_id: str
    strategy_tag: str
    what: str  # one line for the report


AGENTS = (
    AgentSpec("arbitrageur", "structural-arb", "buys both halves of a mispriced complementary pair; all-or-nothing"),
    AgentSpec("bayesian", "bayes-directional", "slow directional bets from a careful model; moderate confidence"),
    AgentSpec("market-maker", "inventory", "keeps inventory on the three books of each game, on both sides"),
    AgentSpec("momentum", "news-momentum", "chases corporate news fast; overreacts; its build has a bug"),
    AgentSpec("election-pa", "cross-state", "bets on the national outcome through Pennsylvania"),
    AgentSpec("election-mi", "cross-state", "bets on the national outcome through Michigan"),
    AgentSpec("election-wi", "cross-state", "bets on the national outcome through Wisconsin"),
)
AGENT_IDS = tuple(a.agent_id for a in AGENTS)
_STRATEGY = {a.agent_id: a.strategy_tag for a in AGENTS}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class _Desk:
    """One agent's pen: turns a view into a proposal with the agent's own sizing."""

    def __init__(self, agent_id: str, seed: int) -> None:
        self.agent_id = agent_id
        self.rng = random.Random(f"{seed}:{agent_id}")
        self.sent = 0

    def bet(
        self,
        world: World,
        market: Market,
        step: int,
        side: Side,
        belief_yes: float,
        *,
        confidence: float,
        urgency: float,
        execution_risk: float,
        size: tuple[float, float] | None = None,
        min_fraction: float = 0.1,
        edge: float | None = None,
    ) -> Proposal | None:
        price = world.contract_price(market.market_id, side, step)
        belief = belief_yes if side is Side.BUY else 1.0 - belief_yes
        expected = edge if edge is not None else belief / price - 1.0
        if expected <= 0.0:
            return None
        if size is None:  # half Kelly of the whole wallet, as if the agent were alone
            kelly = max(belief - price, 0.0) / (1.0 - price)
            requested = min(max(0.5 * kelly * WALLET, 500.0), 20_000.0)
        else:
            requested = self.rng.uniform(*size)
        requested = round(requested, 2)
        self.sent += 1
        return Proposal(
            proposal_id=f"{self.agent_id}-{step:04d}-{self.sent:04d}",
            agent_id=self.agent_id,
            strategy_tag=_STRATEGY[self.agent_id],
            market_id=market.market_id,
            side=side,
            price=round(price, 4),
            expected_profit=round(expected, 4),
            confidence=round(confidence, 3),
            requested_size=requested,
            min_size=requested if min_fraction >= 1.0 else round(requested * min_fraction, 2),
            execution_risk=round(execution_risk, 3),
            urgency=urgency,
            correlation_key=market.event,
            created_at=START_MS + step * STEP_MS + 200 + self.rng.randrange(2_800),
        )


Strategy = Callable[[_Desk, World, int], list[Proposal]]


def _arbitrage(desk: _Desk, world: World, step: int) -> list[Proposal]:
    out: list[Proposal] = []
    for m in world.open_markets(step):
        if m.complement is None or m.market_id > m.complement:
            continue  # each pair once
        other = world.market(m.complement)
        total = world.mark(m.market_id, step) + world.mark(other.market_id, step)
        if 0.97 <= total <= 1.03:
            continue
        side = Side.BUY if total < 1.0 else Side.SELL
        cost = total if side is Side.BUY else 2.0 - total  # one contract of each leg pays exactly 1
        for leg in (m, other):
            p = desk.bet(world, leg, step, side, 0.5, confidence=0.95, urgency=0.25, execution_risk=0.02,
                         size=(1_000.0, 1_800.0), min_fraction=1.0, edge=(1.0 - cost) / cost)  # fmt: skip
            if p is not None:
                out.append(p)
    return out


def _bayesian(desk: _Desk, world: World, step: int) -> list[Proposal]:
    if desk.rng.random() >= 0.5:
        return []
    choices = [m for m in world.open_markets(step) if m.event in ("weather", "corporate", "fed")]
    if not choices:
        return []
    m = desk.rng.choice(choices)
    belief = _sigmoid(float(world.truth[m.market_id][step]) + desk.rng.gauss(0.0, 0.3))
    mark = world.mark(m.market_id, step)
    if abs(belief - mark) < 0.04:
        return []
    side = Side.BUY if belief > mark else Side.SELL
    p = desk.bet(world, m, step, side, belief, confidence=desk.rng.uniform(0.5, 0.7), urgency=0.005,
                 execution_risk=0.05, min_fraction=0.1)  # fmt: skip
    return [p] if p is not None else []


def _market_maker(desk: _Desk, world: World, step: int) -> list[Proposal]:
    out: list[Proposal] = []
    for m in (m for m in world.open_markets(step) if m.event.startswith("game-")):
        roll = desk.rng.random()
        if roll >= 0.8:
            continue
        fair = _sigmoid(float(world.truth[m.market_id][step]) + desk.rng.gauss(0.0, 0.5))
        sides = (
            [Side.BUY, Side.SELL] if roll < 0.2 else [Side.BUY if fair > world.mark(m.market_id, step) else Side.SELL]
        )
        for side in sides:  # quoting both sides at once: the allocator nets them
            p = desk.bet(world, m, step, side, fair, confidence=0.8, urgency=0.1, execution_risk=0.15,
                         size=(2_000.0, 6_000.0), min_fraction=0.15, edge=desk.rng.uniform(0.01, 0.025))  # fmt: skip
            if p is not None:
                out.append(p)
    return out


def _momentum(desk: _Desk, world: World, step: int) -> list[Proposal]:
    out: list[Proposal] = []
    signals = [(market_id, jump) for market_id, jump in world.news.get(step, ())]
    corporate = world.open_markets(step, "corporate")
    if corporate and desk.rng.random() < 0.1:  # a false signal: last step's move, read as news
        m = desk.rng.choice(corporate)
        move = world.mark(m.market_id, step) - world.mark(m.market_id, max(step - 1, 0))
        signals.append((m.market_id, 0.6 if move >= 0 else -0.6))
    for market_id, jump in signals:
        m = world.market(market_id)
        if not world.is_open(m, step):
            continue
        mark = min(max(world.mark(market_id, step), 0.03), 0.97)
        belief = _sigmoid(_logit(mark) + 0.7 * jump)
        side = Side.BUY if jump > 0 else Side.SELL
        p = desk.bet(world, m, step, side, belief, confidence=0.6, urgency=0.05, execution_risk=0.1)
        if p is None:
            continue
        if desk.sent % 25 == 0:  # the bug: an old build sends confidence as a percentage
            p = replace(p, confidence=round(p.confidence * 100.0, 1))
        out.append(p)
    return out


def _election(desk: _Desk, world: World, step: int) -> list[Proposal]:
    state = "state-" + desk.agent_id.removeprefix("election-")
    m = world.market(state)
    if not world.is_open(m, step) or desk.rng.random() >= 0.35:
        return []
    # The three read the same polls: one shared optimism about the national outcome, plus their own noise.
    belief = _sigmoid(float(world.truth[state][step]) + 0.5 + desk.rng.gauss(0.0, 0.2))
    if belief < world.mark(state, step) + 0.03:
        return []
    p = desk.bet(world, m, step, Side.BUY, belief, confidence=0.7, urgency=0.01, execution_risk=0.05,
                 min_fraction=0.1)  # fmt: skip
    return [p] if p is not None else []


_STRATEGIES: dict[str, Strategy] = {
    "arbitrageur": _arbitrage,
    "bayesian": _bayesian,
    "market-maker": _market_maker,
    "momentum": _momentum,
    "election-pa": _election,
    "election-mi": _election,
    "election-wi": _election,
}


def propose_all(world: World, seed: int) -> dict[int, list[Proposal]]:
    """Every agent's proposals, step by step (the order agents send them within a step is by time)."""
    desks = {agent_id: _Desk(agent_id, seed) for agent_id in AGENT_IDS}
    out: dict[int, list[Proposal]] = {}
    for step in range(world.params.steps):
        batch: list[Proposal] = []
        for agent_id in AGENT_IDS:
            batch.extend(_STRATEGIES[agent_id](desks[agent_id], world, step))
        out[step] = sorted(batch, key=lambda p: (p.created_at, p.proposal_id))
    return out
