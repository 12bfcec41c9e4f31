"""The simulated world: binary markets whose true odds move, whose public marks lag and misprice them, and which
resolve YES or NO. Seeded and computed up front, so both demo runs face the very same world.

The world's model is deliberately not the allocator's (rules.md §8): log-odds follow an event factor and a common
factor with heavier tails (Student-t, 2.5 degrees of freedom, against the allocator's 4), news jumps and
scripted shocks; complementary pairs resolve exactly opposite, which the allocator's model cannot know.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from schemas.events import Outcome, Side

FloatArray = npt.NDArray[np.float64]

STEP_MS = 5_000  # one step of the session is five seconds of log time
START_MS = 1_790_000_000_000  # log time of step 0
MARK_FLOOR, MARK_CEILING = 0.02, 0.98


@dataclass(frozen=True)
class Market:
    market_id: str
    event: str  # the hidden risk factor it loads on; agents name it as the correlation key
    opens: int  # the first step it trades
    resolves: int | None  # the step it resolves at (None: still open when the session ends)
    base: float  # log-odds of YES at the start
    loading: float = 1.0  # on its event's factor
    complement: str | None = None  # the other half of a structural pair: exactly one of the two resolves YES


@dataclass(frozen=True)
class Shock:
    """A jump in log-odds from one step on: on one event's factor, and on the common factor (contagion)."""

    step: int
    event: str
    size: float
    common: float = 0.0
    cause: str = ""


@dataclass(frozen=True)
class WorldParams:
    steps: int = 100
    factor_dof: float = 2.5
    factor_vol: float = 0.08  # per step, on each event's factor
    common_vol: float = 0.03
    common_loading: float = 0.6
    idio_vol: float = 0.04
    mispricing_keep: float = 0.8  # persistence of the mark's mispricing from one step to the next
    mispricing_vol: float = 0.12
    news_rate: float = 0.05  # chance of news per corporate market per step
    news_size: float = 0.9  # log-odds
    shocks: tuple[Shock, ...] = ()


def catalog(steps: int) -> tuple[Market, ...]:
    """The markets of a session of `steps` steps. Games, weather days and rate meetings list and resolve all
    session long, so capital turns over; corporate and election markets run long."""

    def at(fraction: float) -> int:
        return max(1, round(fraction * steps))

    out: list[Market] = []
    for k, opens in enumerate(range(0, steps, 25)):  # structural pairs: exactly one of each pair resolves YES
        cut, hold = f"fed-m{k + 1}-cut", f"fed-m{k + 1}-hold"
        base = 0.3 * (-1) ** k
        out.append(Market(cut, "fed", opens, opens + 30, base, complement=hold))
        out.append(Market(hold, "fed", opens, opens + 30, -base, complement=cut))
    for k, opens in enumerate(range(0, steps, 10)):
        out.append(Market(f"rain-day-{k + 1}", "weather", opens, opens + 12, -0.5 + 0.1 * (k % 5), 0.6))
    for k, opens in enumerate(range(0, steps, 8)):  # each game: three books on one event (the market maker's)
        game = f"game-{k + 1:02d}"
        for book, base, loading in (
            ("winner-home", 0.2, 1.0),
            ("total-over", 0.0, 0.8),
            ("first-score-home", 0.1, 0.9),
        ):
            out.append(Market(f"{game}-{book}", game, opens, opens + 10, base + 0.05 * (k % 3), loading))
    out += [
        Market("ceo-exit", "corporate", 0, at(0.5), -0.8, 0.7),
        Market("merger-close", "corporate", 0, at(0.8), 0.6, 0.7),
        Market("earnings-beat", "corporate", at(0.25), None, 0.1, 0.7),
    ]
    election_night = at(0.85)  # one national outcome through five state markets: one big bet
    for state, base in (("pa", 0.35), ("mi", 0.45), ("wi", 0.30), ("az", 0.10), ("ga", 0.05)):
        out.append(Market(f"state-{state}", "national-election", 0, election_night, base, 1.2))
    return tuple(m if m.resolves is None or m.resolves <= steps else replace(m, resolves=None) for m in out)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True)
class World:
    """One seeded draw of everything the markets will do in a session."""

    params: WorldParams
    seed: int
    markets: tuple[Market, ...]
    truth: dict[str, FloatArray] = field(repr=False)  # log-odds of YES per step
    marks: dict[str, FloatArray] = field(repr=False)  # the public YES mark per step
    news: dict[int, tuple[tuple[str, float], ...]] = field(repr=False)  # step -> (market, jump in log-odds)
    outcomes: dict[str, Outcome] = field(repr=False)

    def market(self, market_id: str) -> Market:
        return next(m for m in self.markets if m.market_id == market_id)

    def is_open(self, market: Market, step: int) -> bool:
        return market.opens <= step and (market.resolves is None or step < market.resolves)

    def open_markets(self, step: int, event: str | None = None) -> list[Market]:
        return [m for m in self.markets if self.is_open(m, step) and (event is None or m.event == event)]

    def mark(self, market_id: str, step: int) -> float:
        return float(self.marks[market_id][step])

    def true_probability(self, market_id: str, step: int) -> float:
        return _sigmoid(float(self.truth[market_id][step]))

    def contract_price(self, market_id: str, side: Side, step: int) -> float:
        """What one contract of `side` costs at the step's mark: YES for BUY, NO for SELL."""
        mark = self.mark(market_id, step)
        return mark if side is Side.BUY else 1.0 - mark

    def resolving(self, step: int) -> list[Market]:
        return [m for m in self.markets if m.resolves == step]


def simulate_world(seed: int, params: WorldParams | None = None) -> World:
    """Draw the world of one session. Same seed and parameters, same world, bit for bit."""
    params = params or WorldParams()
    steps = params.steps
    markets = catalog(steps)
    rng = np.random.default_rng([seed, 20_261_125])
    events = sorted({m.event for m in markets})
    factor = {
        e: np.concatenate(([0.0], np.cumsum(params.factor_vol * rng.standard_t(params.factor_dof, steps))))
        for e in events
    }
    common = np.concatenate(([0.0], np.cumsum(params.common_vol * rng.standard_t(params.factor_dof, steps))))
    for shock in params.shocks:
        if 0 <= shock.step <= steps:
            factor[shock.event][shock.step :] += shock.size
            common[shock.step :] += shock.common

    truth: dict[str, FloatArray] = {}
    news: dict[int, list[tuple[str, float]]] = {}
    for m in markets:
        if m.complement is not None and m.complement in truth:
            truth[m.market_id] = -truth[m.complement]
            continue
        idio = np.concatenate(([0.0], np.cumsum(params.idio_vol * rng.standard_normal(steps))))
        x = m.base + m.loading * factor[m.event] + params.common_loading * common + idio
        if m.event == "corporate":
            hits = rng.random(steps + 1) < params.news_rate
            jumps = np.where(hits, rng.choice([-1.0, 1.0], steps + 1) * params.news_size, 0.0)
            for step in np.flatnonzero(jumps):
                news.setdefault(int(step), []).append((m.market_id, float(jumps[step])))
            x = x + np.cumsum(jumps)
        truth[m.market_id] = x

    marks: dict[str, FloatArray] = {}
    for m in markets:
        mis = np.zeros(steps + 1)
        noise = rng.standard_normal(steps + 1)
        for t in range(1, steps + 1):
            mis[t] = params.mispricing_keep * mis[t - 1] + params.mispricing_vol * noise[t]
        lagged = np.concatenate(([truth[m.market_id][0]], truth[m.market_id][:-1]))  # the mark lags a step
        raw = 1.0 / (1.0 + np.exp(-(lagged + mis)))
        marks[m.market_id] = np.round(np.clip(raw, MARK_FLOOR, MARK_CEILING), 4).astype(np.float64)

    outcomes: dict[str, Outcome] = {}
    for m in markets:
        if m.resolves is None:
            continue
        if m.complement is not None and m.complement in outcomes:
            partner = outcomes[m.complement]
            outcomes[m.market_id] = Outcome.NO if partner is Outcome.YES else Outcome.YES
            continue
        u = float(rng.random())
        p_yes = _sigmoid(float(truth[m.market_id][min(m.resolves, steps)]))
        outcomes[m.market_id] = Outcome.YES if u < p_yes else Outcome.NO
    return World(
        params=params,
        seed=seed,
        markets=markets,
        truth=truth,
        marks=marks,
        news={k: tuple(v) for k, v in news.items()},
        outcomes=outcomes,
    )
