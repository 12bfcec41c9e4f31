"""Configuration: the defaults of docs/rules.md, and errors that name the key (a typo never switches a limit off)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from book.config import AllocatorConfig, ConfigError


def test_defaults_are_the_spec_numbers() -> None:
    c = AllocatorConfig()
    assert (c.position_cap, c.market_cap, c.group_cap, c.kill_switch_drawdown) == (0.02, 0.10, 0.05, 0.15)
    assert (c.failure_rate_limit, c.failure_window, c.failure_min_samples) == (0.30, 50, 20)
    assert (c.cvar_alpha, c.cvar_limit, c.scenario_count, c.solver_time_limit_ms) == (0.95, 0.05, 2000, 1000.0)
    assert c.solver_work_limit == 40_000
    from allocator.engine.solver_fast.budget import DEFAULT_TIME_LIMIT_S, DEFAULT_WORK_LIMIT

    assert (c.solver_work_limit, c.solver_time_limit_ms) == (DEFAULT_WORK_LIMIT, DEFAULT_TIME_LIMIT_S * 1000.0)


def test_an_unknown_key_is_an_error_that_names_it() -> None:
    with pytest.raises(ConfigError, match="position_cpa"):
        AllocatorConfig.from_mapping({"position_cpa": 0.5})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("position_cap", 0.0, "position_cap"),
        ("market_cap", 1.5, "market_cap"),
        ("cvar_alpha", 1.0, "cvar_alpha"),
        ("scenario_count", 2.5, "scenario_count"),
        ("failure_window", True, "failure_window"),
        ("group_caps", {"k": -1}, "group_caps"),
        ("agents", "alpha", "agents"),
        ("kill_switch_drawdown", float("nan"), "kill_switch_drawdown"),
    ],
)
def test_bad_values_name_their_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AllocatorConfig.from_mapping({key: value})


def test_the_hash_changes_with_any_value_and_not_with_key_order() -> None:
    a = AllocatorConfig.from_mapping({"position_cap": 0.01, "agents": ["a", "b"]})
    b = AllocatorConfig.from_mapping({"agents": ["a", "b"], "position_cap": 0.01})
    assert a.config_hash == b.config_hash
    assert a.config_hash != AllocatorConfig().config_hash
    assert a.replace(group_caps={"k": 5000.0}).group_caps == {"k": 5000.0}


def test_the_operations_guide_names_every_configuration_key() -> None:
    from dataclasses import fields
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [f.name for f in fields(AllocatorConfig) if f"`{f.name}`" not in guide]
    assert not missing, f"docs/operations.md does not mention {missing}"


def test_the_hash_of_a_first_release_configuration_never_changes() -> None:
    """Decisions record the hash; keys added later must not change the hash of a configuration that predates
    them (the golden log's decisions audit against it)."""
    from book.config import FIRST_RELEASE_KEYS

    # The first release's defaults, with solver_time_limit_ms at its old default of 250 ms: the default moved to
    # 1,000 ms when it became a safety net, which is a different configuration and hashes differently. Likewise
    # it ran solver revision 1, which a configuration recorded without `solver_revision` reads as
    # (`from_recorded`), with the work budget then in force (32,000; `ABSENT_MEANS`); today's defaults, revision 4
    # and its larger budget, are a different configuration. And it counted every execution report in the failure
    # window (`failure_reports_per_allocation` 0), and its signed operator commands named no book
    # (`operator_commands_name_book` 0), and it checked a proposal's ids by rules 1 (`proposal_id_rules`).
    first_release = AllocatorConfig(solver_time_limit_ms=250.0, solver_revision=1, solver_work_limit=32_000,
                                    failure_reports_per_allocation=0, failure_report_rules=1,
                                    operator_commands_name_book=0,
                                    proposal_id_rules=1, fill_rules=1,
                                    max_fill_price_improvement=1.0, max_undecided_proposals=0,
                                    max_undecided_per_agent=0, cap_reasons=1)  # fmt: skip
    assert first_release.config_hash == "607540db3e91a9f69234783d877fcb59d72a50716824b5f0d999df0ac5a858dc"
    assert {f.name for f in dataclasses.fields(AllocatorConfig)} >= FIRST_RELEASE_KEYS
    recorded = {k: v for k, v in first_release.to_mapping().items() if k in FIRST_RELEASE_KEYS}
    assert AllocatorConfig.from_recorded(recorded).config_hash == first_release.config_hash


def test_set_limits_changes_agents_one_agent_key_at_a_time() -> None:
    book = AllocatorConfig.from_mapping({"agents": ["alpha", "beta"]})
    assert book.with_limits({"agent:zed": 1.0, "agent:gamma": 1.0}).agents == ("alpha", "beta", "gamma", "zed")
    assert book.with_limits({"agent:alpha": 0.0, "agent:alpha2": 0.0}).agents == ("beta",)
    assert book.with_limits({"agent:beta": 1.0, "position_cap": 0.01}) == book.replace(position_cap=0.01)
    for limits, named in (
        ({"agent:gamma": 2.0}, "agent:gamma: 1 adds the agent, 0 removes it"),
        ({"agent:a.b": 1.0}, "agent:a.b: 'a.b' is not an agent id"),
        ({"agent:": 1.0}, "agent:: '' is not an agent id"),
        ({"agents": 1.0}, "agents: must be a list"),
    ):
        with pytest.raises(ConfigError, match=re.escape(named)):
            book.with_limits(limits)
    with pytest.raises(ConfigError, match="accepts every agent"):
        AllocatorConfig().with_limits({"agent:gamma": 1.0})


def _keyring(n: int) -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from allocator.service.keys import public_key_hex
    from schemas.signing import key_id_of

    keys = [Ed25519PrivateKey.generate().public_key() for _ in range(n)]
    return {key_id_of(k): public_key_hex(k) for k in keys}


# One valid value other than the default for every key: a new key must be added here (the test below says so).
_NOT_DEFAULT: dict[str, object] = {
    "config_version": "1", "position_cap": 0.01, "market_cap": 0.2, "group_cap": 0.06, "group_caps": {"k": 5.0},
    "kill_switch_drawdown": 0.2, "failure_rate_limit": 0.4, "failure_window": 60, "failure_min_samples": 10,
    "solver_timeout_trigger": 4, "solver_timeout_window": 12, "solver_recovery_solves": 5, "min_window_s": 2.0,
    "cycle_interval_s": 3.0, "opportunity_window_s": 90.0, "max_clock_skew_s": 7.0, "initial_cash": 5_000.0,
    "max_pending": 50, "fill_timeout_s": 60.0, "max_fee_rate": 0.01, "cvar_alpha": 0.9, "cvar_limit": 0.08,
    "scenario_count": 500, "within_key_correlation": 0.4, "common_correlation": 0.05, "tail_dof": 6.0,
    "solver_work_limit": 50_000, "solver_time_limit_ms": 2_000.0, "mip_rel_gap": 1e-3, "solver_revision": 1,
    "agents": ["alpha"], "operator_keys": _keyring(2), "kill_switch_reset_quorum": 2,
    "kill_switch_reset_window_s": 60.0, "failure_reports_per_allocation": 3, "failure_report_rules": 1,
    "operator_commands_name_book": 0,
    "proposal_id_rules": 1, "fill_rules": 1, "max_fill_price_improvement": 0.1,
    "max_undecided_proposals": 7, "max_undecided_per_agent": 2, "cap_reasons": 1,
}  # fmt: skip


def test_every_key_at_another_value_hashes_and_reads_back_from_a_decision() -> None:
    """A book decides only if its configuration hashes (the decision records the hash): each key, set alone to a
    value other than its default, must give a hash of its own, and the configuration a decision records must read
    back (`from_recorded`) as the same one. A key added later that the hash mishandles fails here."""
    names = {f.name for f in dataclasses.fields(AllocatorConfig)}
    assert set(_NOT_DEFAULT) == names, f"give these keys a value in _NOT_DEFAULT: {sorted(names - set(_NOT_DEFAULT))}"
    default = AllocatorConfig().config_hash
    for key, value in _NOT_DEFAULT.items():
        if key == "config_version":
            continue  # one version exists
        extra = {"operator_keys": _NOT_DEFAULT["operator_keys"]} if key == "kill_switch_reset_quorum" else {}
        config = AllocatorConfig.from_mapping({key: value, **extra})
        assert getattr(config, key) != getattr(AllocatorConfig(), key), key
        assert config.config_hash != default, key
        assert AllocatorConfig.from_recorded(config.to_mapping()).config_hash == config.config_hash, key


def test_the_keys_the_guides_call_configuration_only_are_the_ones_set_limits_refuses() -> None:
    """security.md lists the keys SET_LIMITS cannot change and operations.md marks them "Configuration only": a key
    added to one and not to the fold's CONFIGURATION_ONLY (the new fill and intake rules, at first) could be lifted
    by an operator's command."""
    from book.config import CONFIGURATION_ONLY

    root = Path(__file__).resolve().parent.parent
    guide = (root / "docs" / "operations.md").read_text(encoding="utf-8")
    marked = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|.*Configuration only \|$", guide, re.MULTILINE)}
    security = (root / "docs" / "security.md").read_text(encoding="utf-8")
    sentence = security.split("`SET_LIMITS` cannot change ")[1].split(": they are configuration only")[0]
    listed = set(re.findall(r"`(\w+)`", sentence))
    assert marked <= CONFIGURATION_ONLY
    assert listed == CONFIGURATION_ONLY


def test_a_whole_number_far_out_of_range_is_named_by_its_size_not_its_digits() -> None:
    """An outside probe: `scenario_count: 1e300` was refused with its value written out, 301 digits."""
    with pytest.raises(ConfigError) as refused:
        AllocatorConfig.from_mapping({"scenario_count": 1e300})
    assert str(refused.value) == "scenario_count: must be in [1, 20000], got 1e+300"


@pytest.mark.parametrize(
    ("limits", "named"),
    [
        ({"solver_revision": 7.0}, "solver_revision: must be in [1, 6], got 7"),
        ({"solver_revision": 5.5}, "solver_revision: must be a whole number, got 5.5"),
        ({"position_cap": -1.0}, "position_cap: must be in (0, 1], got -1.0"),
        ({"scenario_count": 1e300}, "scenario_count: must be in [1, 20000], got 1e+300"),
        ({"no_such_key": 1.0, "position_cap": 0.01}, "unknown configuration key(s): no_such_key"),
        ({"operator_keys": 1.0}, "operator_keys: set by the configuration only, never by SET_LIMITS"),
        ({"cap_reasons": 3.0}, "cap_reasons: set by the configuration only, never by SET_LIMITS"),
        ({"agent:bad id": 1.0}, "agent:bad id: 'bad id' is not an agent id"),
        ({"agent:x": 2.0}, "agent:x: 1 adds the agent, 0 removes it; got 2.0"),
        ({"agents": 1.0}, "agents: must be a list of agent ids, got 1.0"),
        ({"config_version": 2.0}, "config_version: must be a string, got 2.0"),
        ({"min_window_s": 5.0, "opportunity_window_s": 4.0}, "min_window_s: must not exceed opportunity_window_s"),
        ({"position_cap": 2.0, "solver_revision": 0.5}, "solver_revision: must be a whole number, got 0.5"),
    ],
)
def test_a_set_limits_no_configuration_takes_is_refused_as_the_fold_refuses_it(
    limits: dict[str, float], named: str
) -> None:
    """`check_set_limits` is what a SET_LIMITS breaks whatever the configuration (so `allocator control` can refuse
    it before sending): the book's fold refuses the same command with the same words, on the first key it names."""
    from book.config import check_set_limits
    from book.portfolio import PortfolioState
    from schemas.events import Command, ControlCommand

    with pytest.raises(ConfigError) as refused:
        check_set_limits(limits)
    assert str(refused.value).startswith(named)
    for config in (AllocatorConfig(), AllocatorConfig(agents=("alpha",), opportunity_window_s=3.0)):
        book = PortfolioState.new(config)
        [change] = book.apply(ControlCommand("c1", "ops", Command.SET_LIMITS, "r", limits, 1))
        assert change.cause == f"SET_LIMITS c1 by ops rejected, limits unchanged: {refused.value}"


def test_a_rule_between_keys_and_an_agent_key_are_left_to_the_configuration_in_force() -> None:
    """What one configuration refuses and another takes (a key above another it must not exceed, an agent on a book
    that accepts every agent) is not refused by `check_set_limits`: `with_limits` judges it on the configuration."""
    from book.config import check_set_limits

    roomy = AllocatorConfig(opportunity_window_s=600.0, failure_window=100, within_key_correlation=0.7, agents=("a",))
    for limits in ({"min_window_s": 400.0}, {"failure_min_samples": 60.0}, {"common_correlation": 0.6},
                   {"agent:gamma": 1.0}, {"opportunity_window_s": 0.5}):  # fmt: skip
        check_set_limits(limits)
        with pytest.raises(ConfigError):
            AllocatorConfig().with_limits(limits)
        roomy.replace(min_window_s=0.1).with_limits(limits)
