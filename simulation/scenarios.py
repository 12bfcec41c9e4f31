"""The demo's stress scenarios: each makes one governor fire, and says when and why it should."""

from __future__ import annotations

from dataclasses import dataclass, field

from book.config import AllocatorConfig
from schemas.events import Command, Governor
from simulation.market import Shock


@dataclass(frozen=True)
class OperatorAction:
    """A command the scripted operator sends at a step, through the same API as `allocator control`."""

    step: int
    command: Command
    reason: str
    limits: dict[str, float] | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    story: str
    governor: Governor  # the governor it is meant to make fire
    shocks: tuple[Shock, ...] = ()
    broken: tuple[tuple[int, int, float], ...] = ()  # executor failure windows (from, to, rate)
    operator: tuple[OperatorAction, ...] = field(default=())


def _at(steps: int, fraction: float) -> int:
    return max(1, round(fraction * steps))


def election_shock(steps: int) -> Scenario:
    season, shock = _at(steps, 0.7), _at(steps, 0.8)
    return Scenario(
        "election-shock",
        f"At step {season} the risk committee loosens the limits for election season (position cap 5%, group cap "
        f"25%, CVaR budget 25%); at step {shock}, the night before the states resolve, the national result comes "
        "in far from every poll (the national factor drops 4 log-odds) and the shock spreads to every market "
        "through the common factor. The kill switch is the last line of defence.",
        Governor.KILL_SWITCH,
        shocks=(Shock(shock, "national-election", -4.0, common=-1.5, cause="election night upset"),),
        operator=(
            OperatorAction(
                season,
                Command.SET_LIMITS,
                "election season: the risk committee raises the limits",
                {"position_cap": 0.05, "group_cap": 0.25, "cvar_limit": 0.25},
            ),
            OperatorAction(
                _at(steps, 0.93), Command.RESET_KILL_SWITCH, "election losses booked and reviewed; trading may restart"
            ),
        ),
    )


def broken_executor(steps: int) -> Scenario:
    start, end = _at(steps, 0.25), _at(steps, 0.5)
    return Scenario(
        "broken-executor",
        f"The venue's order gateway breaks from step {start} to step {end}: 90% of orders fail to confirm; an "
        f"operator resumes at step {_at(steps, 0.52)}, once it is fixed.",
        Governor.FAILURE_RATE,
        broken=((start, end, 0.9),),
        operator=(OperatorAction(_at(steps, 0.52), Command.RESUME, "venue gateway fixed; executor reconnected"),),
    )


# The budget the demo's book starts with (the configuration's default): what the operator restores.
_BOOK_BUDGET = AllocatorConfig().solver_work_limit


def slow_solver(steps: int) -> Scenario:
    return Scenario(
        "slow-solver",
        "An operator squeezes the solver's work budget to 300 units (a host too slow for the book) and restores "
        "it 20% of the session later: solves run out of budget, the opportunity window halves, then doubles back.",
        Governor.SOLVER_TIMEOUT,
        operator=(
            OperatorAction(
                _at(steps, 0.12),
                Command.SET_LIMITS,
                "host overloaded: solver work budget cut to 300 units",
                {"solver_work_limit": 300.0},
            ),
            OperatorAction(
                _at(steps, 0.32),
                Command.SET_LIMITS,
                f"host healthy again: work budget back to {_BOOK_BUDGET:,} units",
                {"solver_work_limit": float(_BOOK_BUDGET)},
            ),
        ),
    )


SCENARIOS = {"election-shock": election_shock, "broken-executor": broken_executor, "slow-solver": slow_solver}
