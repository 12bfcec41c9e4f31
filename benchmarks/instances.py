"""Seeded random allocation instances shaped like the solver measurements note."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from allocator.engine.problem import AllocationProblem, cvar
from allocator.engine.scenarios import book_losses, market_uniforms, stake_returns, win_probability
from schemas.events import Proposal, Side


@dataclass(frozen=True)
class InstanceConfig:
    """The knobs of one instance family; defaults follow the rules' configuration and the measurements note.

    `cvar_limit` is a fraction of equity. The default 0.05 binds at the optimum on most instances here
    because the candidates' total upper bounds are far above what a 5%-of-equity tail loss allows (with
    within-key correlation 0.5 and t tails, one key's bets lose together); `benchmarks.bench_solve --cells`
    style runs report how often it binds.
    """

    equity: float = 100_000.0
    position_cap: float = 0.02
    group_cap: float = 0.05
    market_cap: float = 0.10
    cvar_alpha: float = 0.95
    cvar_limit: float = 0.05
    price_range: tuple[float, float] = (0.15, 0.85)
    profit_range: tuple[float, float] = (0.01, 0.09)
    confidence_range: tuple[float, float] = (0.6, 1.0)
    requested_range: tuple[float, float] = (300.0, 4000.0)
    min_fraction_range: tuple[float, float] = (0.1, 1.0)
    # Open positions (a book of a fixed size, whatever n): this many markets hold one, of this marked value.
    held_positions: int = 4
    held_value_range: tuple[float, float] = (100.0, 500.0)
    # Markets per candidate (< 1 so some markets carry several proposals) and candidates per correlation key.
    markets_per_candidate: float = 0.8
    candidates_per_key: float = 5.0


def make_instance(
    n: int, scenario_count: int, seed: int, config: InstanceConfig = InstanceConfig()
) -> AllocationProblem:
    """A random AllocationProblem with exactly n candidates, built the way the cycle would build it."""
    if n < 1:
        raise ValueError("n: must be >= 1")
    rng = np.random.Generator(np.random.PCG64(seed))
    equity = config.equity
    n_keys = max(1, round(n / config.candidates_per_key))
    n_markets = max(1, round(n * config.markets_per_candidate))
    market_key = rng.integers(0, n_keys, n_markets)
    market_side = rng.choice(np.array([1, -1]), n_markets)

    # Candidates: every market gets one, the rest land on random markets; after netting a market is one-sided.
    market = np.concatenate([np.arange(min(n, n_markets)), rng.integers(0, n_markets, max(0, n - n_markets))])
    price = rng.uniform(*config.price_range, n)
    profit = rng.uniform(*config.profit_range, n)
    confidence = rng.uniform(*config.confidence_range, n)
    requested = rng.uniform(*config.requested_range, n)
    minimum = requested * rng.uniform(*config.min_fraction_range, n)
    execution_risk = rng.uniform(0.0, 0.3, n)
    urgency = 1.0 / rng.uniform(5.0, 60.0, n)
    # The caller rejects candidates whose cap falls below their min (POSITION_CAP); redraw their min so the
    # instance keeps exactly n candidates.
    upper = np.minimum(requested, config.position_cap * equity)
    too_big = minimum > upper
    minimum[too_big] = upper[too_big] * rng.uniform(*config.min_fraction_range, int(too_big.sum()))
    direction = market_side[market]
    group = market_key[market]

    held_markets = np.sort(rng.choice(n_markets, min(config.held_positions, n_markets), replace=False))
    held_side = rng.choice(np.array([1, -1]), held_markets.size)
    held_value = rng.uniform(*config.held_value_range, held_markets.size)
    held_price = rng.uniform(*config.price_range, held_markets.size)
    market_held = np.zeros(n_markets)
    market_held[held_markets] = held_side * held_value
    group_held = np.bincount(market_key[held_markets], weights=held_value, minlength=n_keys)

    uniforms = market_uniforms(market_key, n_keys, scenario_count, seed ^ 0x5EED)
    q = win_probability(price, profit)
    returns = stake_returns(uniforms[:, market], price, q, direction)
    losses0 = book_losses(uniforms, held_markets, held_side, held_value, held_price)
    bound = max(config.cvar_limit * equity, cvar(losses0, config.cvar_alpha))

    priority = profit * confidence / (np.maximum(execution_risk, 0.01) * (1.0 + 1.0 / urgency))
    return AllocationProblem(
        value=profit * confidence,
        lower=minimum,
        upper=upper,
        priority=priority,
        group=group,
        group_room=np.asarray(config.group_cap * equity - group_held, dtype=np.float64),
        market=market,
        direction=direction,
        market_held=market_held,
        market_limit=config.market_cap * equity,
        capital=equity - float(held_value.sum()),
        returns=returns,
        book_losses=losses0,
        cvar_alpha=config.cvar_alpha,
        cvar_bound=bound,
    )


def live_proposal(
    pid: str, created_at: int, rng: random.Random, *, urgency: float = 0.5, strategy_tag: str = "synthetic"
) -> Proposal:
    """A proposal as a live agent might send it: ~40 markets, ~8 correlation keys, five agents, sizes 200-2,500,
    min size 10-100% of the request. Used by the crash test and the streaming benchmark alike."""
    requested = round(rng.uniform(200, 2_500), 2)
    return Proposal(
        proposal_id=pid,
        agent_id=rng.choice(["arb", "bayes", "mm", "news", "elections"]),
        strategy_tag=strategy_tag,
        market_id=f"m{rng.randrange(40)}",
        side=Side.BUY if rng.random() < 0.6 else Side.SELL,
        price=round(rng.uniform(0.2, 0.8), 3),
        expected_profit=round(rng.uniform(0.01, 0.08), 4),
        confidence=round(rng.uniform(0.5, 1.0), 3),
        requested_size=requested,
        min_size=round(requested * rng.uniform(0.1, 1.0), 2),
        execution_risk=round(rng.uniform(0.0, 0.3), 3),
        urgency=urgency,
        correlation_key=f"k{rng.randrange(8)}",
        created_at=created_at,
    )
