"""The allocator's and governors' configuration: one typed object owning every default, loaded at the edge."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class ConfigError(ValueError):
    """A configuration that must not be used: it names the key and what is wrong with it."""


# Far above any useful budget (about 1,000x the default): a guard against a typo'd extra digit or two.
MAX_SOLVER_WORK_LIMIT = 50_000_000


@dataclass(frozen=True)
class AllocatorConfig:
    """Every limit and parameter of docs/rules.md, with its defaults. Fractions are of equity E unless noted."""

    config_version: str = "1"
    # rules.md §4 and §7: the caps
    position_cap: float = 0.02
    market_cap: float = 0.10
    group_cap: float = 0.05
    group_caps: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # rules.md §7: governors
    kill_switch_drawdown: float = 0.15
    failure_rate_limit: float = 0.30
    failure_window: int = 50
    failure_min_samples: int = 20
    solver_timeout_trigger: int = 3
    solver_timeout_window: int = 10
    solver_recovery_solves: int = 10
    min_window_s: float = 1.0
    # rules.md §3: cycles and lifetimes
    cycle_interval_s: float = 1.0
    opportunity_window_s: float = 300.0
    # The book: its starting cash, when a cycle runs early, and how long capital stays reserved for a fill
    initial_cash: float = 100_000.0
    max_pending: int = 1_000
    fill_timeout_s: float = 300.0
    # rules.md §4 and §8: tail risk and the default risk model
    cvar_alpha: float = 0.95
    cvar_limit: float = 0.05
    scenario_count: int = 2000
    within_key_correlation: float = 0.5
    common_correlation: float = 0.1
    tail_dof: float = 4.0
    # rules.md §4: the solver. `solver_work_limit` (deterministic work units, see
    # allocator/engine/solver_fast/budget.py) shapes the decision: calibrated so a whole decision at N=100,
    # S=2000 takes <= 250 ms on the project's machine. `solver_time_limit_ms` is only a safety net (4x that); its
    # trip is the one machine-dependent outcome (path MIP_TIME_LIMIT).
    solver_work_limit: int = 32_000
    solver_time_limit_ms: float = 1_000.0
    mip_rel_gap: float = 1e-4
    # rules.md §2: agents allowed to propose; None accepts every agent
    agents: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _check_fraction("position_cap", self.position_cap)
        _check_fraction("market_cap", self.market_cap)
        _check_fraction("group_cap", self.group_cap)
        for key, cap in self.group_caps.items():
            if not isinstance(cap, int | float) or not math.isfinite(cap) or cap < 0:
                raise ConfigError(f"group_caps[{key!r}]: must be a finite amount >= 0, got {cap!r}")
        _check_fraction("kill_switch_drawdown", self.kill_switch_drawdown)
        _check_fraction("failure_rate_limit", self.failure_rate_limit)
        _check_positive_int("failure_window", self.failure_window)
        _check_positive_int("failure_min_samples", self.failure_min_samples)
        if self.failure_min_samples > self.failure_window:
            raise ConfigError("failure_min_samples: must not exceed failure_window")
        _check_positive_int("solver_timeout_window", self.solver_timeout_window)
        _check_positive_int("solver_timeout_trigger", self.solver_timeout_trigger)
        if self.solver_timeout_trigger > self.solver_timeout_window:
            raise ConfigError("solver_timeout_trigger: must not exceed solver_timeout_window")
        _check_positive_int("solver_recovery_solves", self.solver_recovery_solves)
        _check_positive("min_window_s", self.min_window_s)
        _check_positive("cycle_interval_s", self.cycle_interval_s)
        _check_positive("opportunity_window_s", self.opportunity_window_s)
        _check_positive("initial_cash", self.initial_cash)
        _check_positive_int("max_pending", self.max_pending)
        _check_positive("fill_timeout_s", self.fill_timeout_s)
        if self.min_window_s > self.opportunity_window_s:
            raise ConfigError("min_window_s: must not exceed opportunity_window_s")
        if not 0.0 < self.cvar_alpha < 1.0:
            raise ConfigError(f"cvar_alpha: must be in (0, 1), got {self.cvar_alpha!r}")
        _check_positive("cvar_limit", self.cvar_limit)
        _check_positive_int("scenario_count", self.scenario_count)
        if not 0.0 <= self.common_correlation <= self.within_key_correlation < 1.0:
            raise ConfigError("within_key_correlation, common_correlation: need 0 <= common <= within < 1")
        _check_positive("tail_dof", self.tail_dof)
        _check_positive("solver_time_limit_ms", self.solver_time_limit_ms)
        _check_positive_int("solver_work_limit", self.solver_work_limit)
        if self.solver_work_limit > MAX_SOLVER_WORK_LIMIT:
            raise ConfigError(
                f"solver_work_limit: must be at most {MAX_SOLVER_WORK_LIMIT:,}, got {self.solver_work_limit!r}"
            )
        if not 0.0 < self.mip_rel_gap < 1.0:
            raise ConfigError(f"mip_rel_gap: must be in (0, 1), got {self.mip_rel_gap!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AllocatorConfig:
        """Defaults overridden by `values`; an unknown key is an error, so a typo never switches a limit off."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            kwargs[key] = _coerce(key, known[key], value)
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Plain JSON-ready values, keys sorted: what the config hash is taken over."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = dict(sorted(value.items()))
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return dict(sorted(out.items()))

    @property
    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of every value: decisions record it for the audit."""
        text = json.dumps(self.to_mapping(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def replace(self, **changes: Any) -> AllocatorConfig:
        return AllocatorConfig.from_mapping({**self.to_mapping(), **changes})


def _coerce(key: str, spec: dataclasses.Field[Any], value: Any) -> Any:
    kind = spec.type
    if key == "group_caps":
        if not isinstance(value, Mapping):
            raise ConfigError(f"group_caps: must be an object of correlation_key -> amount, got {value!r}")
        return MappingProxyType({str(k): _number(f"group_caps[{k!r}]", v) for k, v in value.items()})
    if key == "agents":
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(a, str) and a for a in value):
            raise ConfigError(f"agents: must be a list of agent ids, got {value!r}")
        return tuple(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be a whole number, got {value!r}")
        return value
    if kind == "float":
        return _number(key, value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {kind}")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be finite, got {value!r}")
    return float(value)


def _check_fraction(key: str, value: float) -> None:
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ConfigError(f"{key}: must be a fraction in (0, 1], got {value!r}")


def _check_positive(key: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: must be finite and > 0, got {value!r}")


def _check_positive_int(key: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}: must be a whole number > 0, got {value!r}")
