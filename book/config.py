"""The allocator's and governors' configuration: one typed object owning every default, loaded at the edge."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from governors.state import GovernorLimits
from schemas.signing import SigningKeyError, key_id_of, public_key_from_hex

# An agent id names the agent's own proposals topic `<prefix>.proposals.<agent>`: a topic-name part without dots
# (the same rule as eventlog.port.check_agent_id, which the pure core may not import).
_AGENT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


AGENT_KEY = "agent:"
"""A SET_LIMITS key `agent:<id>`: 1 adds the agent to `agents`, 0 removes it (`AllocatorConfig.with_limits`)."""


class ConfigError(ValueError):
    """A configuration that must not be used: it names the key and what is wrong with it."""


# The keys an operator's SET_LIMITS may not change (rules.md §7.7, §11.3): the keyring and the rules a configuration
# file alone sets. The fold refuses a command naming one (`check_configuration_only`).
CONFIGURATION_ONLY = frozenset(
    {"operator_keys", "kill_switch_reset_quorum", "kill_switch_reset_window_s", "operator_commands_name_book",
     "failure_report_rules", "proposal_id_rules", "fill_rules", "max_fill_price_improvement", "max_undecided_proposals",
     "max_undecided_per_agent", "cap_reasons"}
)  # fmt: skip


def check_configuration_only(limits: Mapping[str, float]) -> None:
    """Raises ConfigError naming the first (in sorted order) key of a SET_LIMITS that only the configuration sets."""
    fixed = sorted(set(limits) & CONFIGURATION_ONLY)
    if fixed:
        raise ConfigError(f"{fixed[0]}: set by the configuration only, never by SET_LIMITS")


def check_set_limits(limits: Mapping[str, float]) -> None:
    """What a SET_LIMITS breaks whatever the configuration it is applied to, checked in the order the fold checks
    it (`check_configuration_only`, then `AllocatorConfig.with_limits`): a configuration-only key, a malformed
    `agent:` key or a value other than 0 and 1, an unknown key, a value of the wrong type for its key (a fraction for
    a whole-number key), a value outside its key's own range, and a rule between keys that the command sets both of.
    Raises ConfigError with the text the fold's refusal gives. What depends on the configuration in force, a rule
    between a key given and one not given, or `agent:` keys on a book whose `agents` is null, is left to
    `with_limits` on that configuration. Lets a client refuse a command before sending it, with the book's rule."""
    check_configuration_only(limits)
    for key in sorted(k for k in limits if k.startswith(AGENT_KEY)):
        _agent_of(key, limits[key])
    plain = {key: value for key, value in limits.items() if not key.startswith(AGENT_KEY)}
    known = _fields()
    _check_known(plain, known)
    given = {key: _coerce(key, known[key], plain[key]) for key in sorted(plain)}
    for name, (low, high, low_open) in _RANGES.items():
        if name in given:
            _check_range(name, given[name], low, high, low_open)
    for low_key, high_key in _NOT_ABOVE:
        if low_key in given and high_key in given:
            _check_not_above(low_key, given[low_key], high_key, given[high_key])


# Far above any useful budget (about 1,000x the default): a guard against a typo'd extra digit or two.
MAX_SOLVER_WORK_LIMIT = 50_000_000
# The solver revisions this release can run (rules.md §4.8): 1, the solver before the key existed, 2 to 6.
MAX_SOLVER_REVISION = 6


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
    # rules.md §2: how far a proposal's created_at may run ahead of the log time it was received
    max_clock_skew_s: float = 5.0
    # The book: its starting cash, when a cycle runs early, and how long capital stays reserved for a fill
    initial_cash: float = 100_000.0
    max_pending: int = 1_000
    fill_timeout_s: float = 300.0
    # rules.md §11.1: a fill's fee may be at most this fraction of the money it moved (fee <= rate x filled_size)
    max_fee_rate: float = 0.05
    # rules.md §4 and §8: tail risk and the default risk model
    cvar_alpha: float = 0.95
    cvar_limit: float = 0.05
    scenario_count: int = 2000
    within_key_correlation: float = 0.5
    common_correlation: float = 0.1
    tail_dof: float = 4.0
    # rules.md §4: the solver. `solver_work_limit` (deterministic work units, see
    # allocator/engine/solver_fast/budget.py) shapes the decision: calibrated so a whole decision at N=100,
    # S=2000 takes <= 250 ms on the project's machine (revisions 2 and 3: 32,000 for the search, 8,000 for the
    # certified bound; docs/operations.md gives the budget for larger books). `solver_time_limit_ms` is only a
    # safety net (4x that); its trip is the one machine-dependent outcome (path MIP_TIME_LIMIT).
    solver_work_limit: int = 40_000
    solver_time_limit_ms: float = 1_000.0
    mip_rel_gap: float = 1e-4
    # rules.md §4.8: which solver decides. 1 is the solver of the releases before this key existed, and a recorded
    # configuration without the key ran on it (`from_recorded`); 2 adds LP-ranked and seeded multi-start roundings
    # to it (allocator/engine/solver_fast/search.py); 3 ranks by early interior-point iterates (every candidate up
    # to 250) where the simplex LP cannot take them all within the budget (ranked.py; at the default budget, more
    # than 69 candidates over 2,000 scenarios); 4 spends what 3 spent on more roundings there on moves from its best
    # sized set, each screened by its exact tail before any LP (climb.py); 5 draws the fills 4 left undrawn where
    # no LP fits (N=1,000 at the default budget), after the final re-optimisation; 6 lets that re-optimisation
    # spend the certified bound's share too. New books get 6; a book keeps the revision its log records.
    solver_revision: int = 6
    # rules.md §2: agents allowed to propose; None accepts every agent
    agents: tuple[str, ...] | None = None
    # rules.md §11: the operator keyring, key_id -> raw Ed25519 public key in hex; empty accepts unsigned commands
    operator_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # rules.md §7.1: signed RESET_KILL_SWITCH commands from this many distinct operator keys, within the window
    kill_switch_reset_quorum: int = 1
    kill_switch_reset_window_s: float = 300.0
    # rules.md §7.4: how many execution reports one funded allocation may add to the failure window (its first
    # ones); 0 counts every report, the rule of the releases before the key (`ABSENT_MEANS`)
    failure_reports_per_allocation: int = 1
    # rules.md §7.4: 2 leaves PARTIAL reports out of the failure window, so an allocation counts by its final report
    # (FILLED, FAILED, REJECTED): an acknowledgement sent as a zero-size PARTIAL before the FAILED one counted as a
    # success and hid the failure (an outside probe: six failed allocations paused nothing). 1 counts the first
    # reports whatever their status, as the releases before the key did (`ABSENT_MEANS`). 3 also counts a FILLED
    # report that leaves its allocation filled below the proposal's min size as a failure: a FILLED report of 1e-9
    # ended the allocation as a success and the real FAILED one after it was refused (an outside probe: 25 failed
    # allocations paused nothing)
    failure_report_rules: int = 3
    # rules.md §11.3: 1 refuses a signed operator command that does not name this book (`<topic prefix>.<book id>`);
    # 0 takes one naming no book, as the releases before ControlCommand version 3 did (`ABSENT_MEANS`)
    operator_commands_name_book: int = 1
    # rules.md §2: 2 refuses control characters in a proposal's ids, names a rejected one by a bounded form and
    # settles it with the decision that rejects it; 1 takes any string of 1-128 characters and keeps a proposal whose
    # id is bad pending (rejected again each cycle), as the releases before the key did (`ABSENT_MEANS`)
    proposal_id_rules: int = 2
    # rules.md §11.1: 2 refuses a fill whose fill_id an earlier report used (accepted or refused: a repeated id is the
    # same report delivered again); 1 takes it, as the releases before the key did (`ABSENT_MEANS`). 3 (an outside
    # probe) also refuses a FILLED report of nothing (it ended its allocation as a success and hid the FAILED after it
    # from the failure window), a FAILED or REJECTED one that says it filled something, an empty id and a time
    # outside [0, 2**62], and takes a FAILED or REJECTED report on a market that has resolved (it only releases the
    # reservation)
    fill_rules: int = 3
    # rules.md §2: at most this many proposals wait for a decision (pending, conflicting re-sends and refused ones
    # together); a proposal past it is a dead letter, not received. A decision names every one of them, so without a
    # bound one agent's flood grew decisions past the log's 16 MiB record limit and stopped the book. 0 sets no bound,
    # as the releases before the key did (`ABSENT_MEANS`)
    max_undecided_proposals: int = 5_000
    # rules.md §2: at most this many of those may be one writer's (an agent's own topic names the writer; elsewhere the
    # proposal's agent_id): past it that writer's next proposal is a dead letter, so one agent's flood cannot fill the
    # book's bound and keep every other agent's proposals out. 0 sets no bound, as the releases before the key did
    # (`ABSENT_MEANS`)
    max_undecided_per_agent: int = 1_000
    # rules.md §6.3: 3 names, on a proposal rejected by its caps, the smallest (several when equal), and on one cut
    # short of its caps, only the constraints binding at its size; 2 names, on a proposal cut by a cap, the cap that
    # bounds its size (the smallest; several when equal), but rejects naming the first cap below the min size and
    # cuts naming every constraint its whole request would break; 1 named every cap below its request, a looser one
    # too, as the releases before the key did (`ABSENT_MEANS`)
    cap_reasons: int = 3
    # rules.md §11.1: a fill that moves money may be at most this share below its allocation's limit price (price
    # improvement; it buys size/price contracts: a price near 0 made a 1,500 fill worth 1.5e9 on resolution); 1 takes
    # any price, as the releases before the key did (`ABSENT_MEANS`)
    max_fill_price_improvement: float = 0.5

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name}: must be a whole number, got {value!r}")
        for name, (low, high, low_open) in _RANGES.items():
            _check_range(name, getattr(self, name), low, high, low_open)
        for key, cap in self.group_caps.items():
            if not isinstance(cap, int | float) or not math.isfinite(cap) or not 0 <= cap <= MAX_AMOUNT:
                raise ConfigError(f"group_caps[{key!r}]: must be an amount in [0, {MAX_AMOUNT:g}], got {cap!r}")
        _check_operator_keys(self.operator_keys)
        if self.kill_switch_reset_quorum > 1 and len(self.operator_keys) < self.kill_switch_reset_quorum:
            raise ConfigError(
                f"kill_switch_reset_quorum: {self.kill_switch_reset_quorum} needs at least as many operator_keys, "
                f"got {len(self.operator_keys)}"
            )
        for low_key, high_key in _NOT_ABOVE:
            _check_not_above(low_key, getattr(self, low_key), high_key, getattr(self, high_key))

    @property
    def max_clock_skew_ms(self) -> float:
        return self.max_clock_skew_s * 1000.0

    def governor_limits(self) -> GovernorLimits:
        """The one mapping from the configuration to the limits the governors enforce (seconds become ms)."""
        return GovernorLimits(
            kill_switch_drawdown=self.kill_switch_drawdown,
            failure_rate_limit=self.failure_rate_limit,
            failure_window=self.failure_window,
            failure_min_samples=self.failure_min_samples,
            solver_timeout_trigger=self.solver_timeout_trigger,
            solver_timeout_window=self.solver_timeout_window,
            solver_recovery_solves=self.solver_recovery_solves,
            min_window_ms=round(self.min_window_s * 1000),
            opportunity_window_ms=round(self.opportunity_window_s * 1000),
        )

    def with_limits(self, limits: Mapping[str, float]) -> AllocatorConfig:
        """An operator's SET_LIMITS applied, validated exactly as a configuration file is: all keys or none.

        Raises ConfigError naming the first bad key; integer keys accept integral doubles (the command's
        values travel as Avro doubles). A key `agent:<id>` adds that agent to `agents` (value 1) or removes it
        (value 0): the command's values are numbers, so the list is changed one agent per key (rules.md §7.7)."""
        plain = {key: value for key, value in limits.items() if not key.startswith(AGENT_KEY)}
        values = {**self.to_mapping(), **plain}
        changes = {key: value for key, value in limits.items() if key.startswith(AGENT_KEY)}
        if changes:
            values["agents"] = list(self._agents_changed(changes))
        return AllocatorConfig.from_mapping(values)

    def _agents_changed(self, changes: Mapping[str, float]) -> tuple[str, ...]:
        """`agents` with the `agent:<id>` keys applied: new ids appended in sorted order, removed ones dropped."""
        agents = list(self.agents) if self.agents is not None else None
        for key in sorted(changes):
            agent, value = _agent_of(key, changes[key]), changes[key]
            if agents is None:
                raise ConfigError(f"{key}: the book accepts every agent (agents is null); name its agents in the "
                                  "configuration first")  # fmt: skip
            if value == 1 and agent not in agents:
                agents.append(agent)
            elif value == 0 and agent in agents:
                agents.remove(agent)
        return tuple(agents or ())

    @classmethod
    def from_recorded(cls, values: Mapping[str, Any]) -> AllocatorConfig:
        """A configuration as a decision recorded it: like `from_mapping`, except that a key the recording release
        did not have takes the value that release ran with (`ABSENT_MEANS`), not today's default."""
        return cls.from_mapping({**ABSENT_MEANS, **values})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AllocatorConfig:
        """Defaults overridden by `values`; an unknown key is an error, so a typo never switches a limit off."""
        known = _fields()
        _check_known(values, known)
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
            if f.name in _ADDED_AT_DEFAULT_OMITTED and value == _ADDED_AT_DEFAULT_OMITTED[f.name]:
                continue  # a key added later is left out at its default, so older books' hashes stay the same
            out[f.name] = value
        return dict(sorted(out.items()))

    @property
    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of the configuration: decisions record it for the audit.

        A key added after the first release is left out while it holds the value every configuration written
        before it had (its default, or its `ABSENT_MEANS` value), so such a configuration hashes as it always did
        and old decisions still audit against it."""
        omitted_at = {**_defaults(), **ABSENT_MEANS}  # `to_mapping` already left out _ADDED_AT_DEFAULT_OMITTED
        hashed = {
            key: value
            for key, value in self.to_mapping().items()
            if key in FIRST_RELEASE_KEYS or key not in omitted_at or value != omitted_at[key]
        }
        text = json.dumps(hashed, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickled as its plain mapping (a read-only mapping proxy does not pickle): the audit ships requests to
        worker processes."""
        return (AllocatorConfig.from_mapping, (self.to_mapping(),))

    def replace(self, **changes: Any) -> AllocatorConfig:
        return AllocatorConfig.from_mapping({**self.to_mapping(), **changes})


# The keys of the first release. Every later key must keep this hash stable: see `config_hash`.
FIRST_RELEASE_KEYS = frozenset(
    {
        "config_version", "position_cap", "market_cap", "group_cap", "group_caps", "kill_switch_drawdown",
        "failure_rate_limit", "failure_window", "failure_min_samples", "solver_timeout_trigger",
        "solver_timeout_window", "solver_recovery_solves", "min_window_s", "cycle_interval_s",
        "opportunity_window_s", "initial_cash", "max_pending", "fill_timeout_s", "cvar_alpha", "cvar_limit",
        "scenario_count", "within_key_correlation", "common_correlation", "tail_dof", "solver_time_limit_ms",
        "mip_rel_gap", "agents",
    }
)  # fmt: skip


# Keys whose absence from a recorded configuration (a decision's `config`) means another value than today's default:
# the value the releases before the key (or before its default changed) ran with. `config_hash` also leaves such a
# key out at that value, so those configurations keep their hashes. A configuration file or a snapshot still gets
# the default for a missing key. `solver_work_limit` was 32,000 by default until revision 2's bound took a share;
# `failure_reports_per_allocation` was unbounded (0) before it existed, and before `failure_report_rules` a partial
# report counted like a final one (1); before `operator_commands_name_book` a
# signed command named no book (0); before `proposal_id_rules` a proposal's ids were checked by rules 1; before
# `fill_rules` a fill's id was not checked (1), before `max_fill_price_improvement` nor its price (1); before
# `max_undecided_proposals` nothing bounded the proposals waiting (0), before `max_undecided_per_agent` nor one
# writer's share of them (0); before `cap_reasons` a cut named every cap
# below its request (1).
ABSENT_MEANS: Mapping[str, Any] = MappingProxyType(
    {"solver_revision": 1, "solver_work_limit": 32_000, "failure_reports_per_allocation": 0,
     "failure_report_rules": 1, "operator_commands_name_book": 0, "proposal_id_rules": 1, "fill_rules": 1,
     "max_fill_price_improvement": 1.0, "max_undecided_proposals": 0, "max_undecided_per_agent": 0,
     "cap_reasons": 1}
)  # fmt: skip


@functools.cache
def _defaults() -> dict[str, Any]:
    return AllocatorConfig().to_mapping()


@functools.cache
def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(AllocatorConfig)}


def _check_known(values: Mapping[str, Any], known: Mapping[str, dataclasses.Field[Any]]) -> None:
    """An unknown key is an error, so a typo never switches a limit off."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")


def _agent_of(key: str, value: float) -> str:
    """The agent id of a SET_LIMITS key `agent:<id>`, after checking the id and that the value is 1 or 0."""
    agent = key[len(AGENT_KEY) :]
    if _AGENT_ID.fullmatch(agent) is None:
        raise ConfigError(f"{key}: {agent!r} is not an agent id: 1-128 characters of a-z, A-Z, 0-9, '_', '-'")
    if isinstance(value, bool) or value not in (0, 1):
        raise ConfigError(f"{key}: 1 adds the agent, 0 removes it; got {value!r}")
    return agent


def _check_not_above(low_key: str, low: float, high_key: str, high: float) -> None:
    if low > high:
        raise ConfigError(f"{low_key}: must not exceed {high_key}")


def _coerce(key: str, spec: dataclasses.Field[Any], value: Any) -> Any:
    kind = spec.type
    if key == "group_caps":
        if not isinstance(value, Mapping):
            raise ConfigError(f"group_caps: must be an object of correlation_key -> amount, got {value!r}")
        return MappingProxyType({str(k): _number(f"group_caps[{k!r}]", v) for k, v in value.items()})
    if key == "operator_keys":
        if not isinstance(value, Mapping):
            raise ConfigError(f"operator_keys: must be an object of key_id -> public key hex, got {value!r}")
        return MappingProxyType({str(k): v for k, v in value.items()})
    if key == "agents":
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(a, str) and a for a in value):
            raise ConfigError(f"agents: must be a list of agent ids, got {value!r}")
        for agent in value:
            if _AGENT_ID.fullmatch(agent) is None:
                raise ConfigError(
                    f"agents: {agent!r} is not an agent id: 1-128 characters of a-z, A-Z, 0-9, '_' and '-' "
                    "(each agent's proposals topic is named after it)"
                )
        return tuple(value)
    if kind == "int":
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
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
    try:
        number = float(value)
    except OverflowError:  # an integer past any float: named by its size, not quoted whole
        raise ConfigError(f"{key}: an integer of {int(value).bit_length()} bits is out of range") from None
    if not math.isfinite(number):
        raise ConfigError(f"{key}: must be finite, got {value!r}")
    return number


def _check_range(key: str, value: float, low: float, high: float, low_open: bool) -> None:
    """Every number has a range, so no accepted value can overflow a computation or exhaust memory."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        opening = "(" if low_open else "["
        shown = repr(value) if len(repr(value)) <= 24 else f"{float(value):g}"  # 1e300 as a whole number: 301 digits
        raise ConfigError(f"{key}: must be in {opening}{low:g}, {high:g}], got {shown}")


def _check_operator_keys(keys: Mapping[str, str]) -> None:
    """Each entry is a raw Ed25519 public key in hex under its own key id (rules.md §11)."""

    for key_id, text in keys.items():
        if not isinstance(text, str):
            raise ConfigError(f"operator_keys[{key_id!r}]: must be the public key as 64 hex characters")
        try:
            key = public_key_from_hex(text, f"operator_keys[{key_id!r}]")
        except SigningKeyError as exc:
            raise ConfigError(str(exc)) from exc
        if key_id_of(key) != key_id:
            raise ConfigError(f"operator_keys[{key_id!r}]: the key's id is {key_id_of(key)}, not {key_id!r}")


# Keys added after books were written: left out of the canonical mapping (and its hash) at these defaults.
_ADDED_AT_DEFAULT_OMITTED: dict[str, Any] = {
    "operator_keys": {},
    "kill_switch_reset_quorum": 1,
    "kill_switch_reset_window_s": 300.0,
}

# The rules between keys (after each key's range): the first key must not exceed the second, in this order.
_NOT_ABOVE: tuple[tuple[str, str], ...] = (
    ("failure_min_samples", "failure_window"),
    ("solver_timeout_trigger", "solver_timeout_window"),
    ("min_window_s", "opportunity_window_s"),
    ("common_correlation", "within_key_correlation"),
)

MAX_PENDING = 10_000  # proposals one cycle may decide: bounds the problem's size (with scenario_count)
MAX_AMOUNT = 1e15  # currency: far above any book, far below where sums of sizes lose whole units
_DAY_S = 86_400.0
# Each key's range: (low, high, whether low itself is excluded). Fractions of equity are in (0, 1].
_RANGES: dict[str, tuple[float, float, bool]] = {
    "position_cap": (0.0, 1.0, True),
    "market_cap": (0.0, 1.0, True),
    "group_cap": (0.0, 1.0, True),
    "kill_switch_drawdown": (0.0, 1.0, True),
    "failure_rate_limit": (0.0, 1.0, True),
    "failure_window": (1, 100_000, False),
    "failure_min_samples": (1, 100_000, False),
    "solver_timeout_trigger": (1, 10_000, False),
    "solver_timeout_window": (1, 10_000, False),
    "solver_recovery_solves": (1, 10_000, False),
    "min_window_s": (0.0, 30 * _DAY_S, True),
    "cycle_interval_s": (0.001, _DAY_S, False),
    "opportunity_window_s": (0.0, 30 * _DAY_S, True),
    "max_clock_skew_s": (0.0, _DAY_S, False),
    "initial_cash": (0.0, MAX_AMOUNT, True),
    "max_pending": (1, MAX_PENDING, False),
    "fill_timeout_s": (0.0, 30 * _DAY_S, True),
    "max_fee_rate": (0.0, 1.0, False),
    "cvar_alpha": (0.0, 0.9999, True),
    "cvar_limit": (0.0, 1.0, True),
    "scenario_count": (1, 20_000, False),
    "within_key_correlation": (0.0, 0.99, False),
    "common_correlation": (0.0, 0.99, False),
    "tail_dof": (1.0, 1_000.0, False),
    "solver_time_limit_ms": (0.0, 3_600_000.0, True),
    "solver_work_limit": (1, MAX_SOLVER_WORK_LIMIT, False),
    "solver_revision": (1, MAX_SOLVER_REVISION, False),
    "mip_rel_gap": (0.0, 0.5, True),
    "kill_switch_reset_quorum": (1, 2, False),
    "kill_switch_reset_window_s": (0.0, _DAY_S, True),
    "failure_reports_per_allocation": (0, 100_000, False),
    "failure_report_rules": (1, 3, False),
    "operator_commands_name_book": (0, 1, False),
    "proposal_id_rules": (1, 2, False),
    "fill_rules": (1, 3, False),
    "max_fill_price_improvement": (0.0, 1.0, False),
    "max_undecided_proposals": (0, 1_000_000, False),
    "max_undecided_per_agent": (0, 1_000_000, False),
    "cap_reasons": (1, 3, False),
}
