"""Tests of the default risk model: determinism, marginals, dependence, tails, sides, book losses."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.engine.scenarios import (
    book_losses,
    market_latents,
    market_stake_returns,
    market_uniforms,
    seed_from_decision_id,
    stake_returns,
    win_probability,
)

S_LARGE = 40_000


@pytest.fixture(scope="module")
def two_keys() -> np.ndarray:
    # Markets 0, 1, 2 share key 0; market 3 is alone under key 1.
    return market_uniforms([0, 0, 0, 1], 2, S_LARGE, seed=12345)


def test_same_inputs_give_identical_numbers() -> None:
    a = market_uniforms([0, 1, 1, 2], 3, 500, seed=7)
    b = market_uniforms([0, 1, 1, 2], 3, 500, seed=7)
    assert a.tobytes() == b.tobytes()
    assert market_uniforms([0, 1, 1, 2], 3, 500, seed=8).tobytes() != a.tobytes()


def test_shape_and_range() -> None:
    u = market_uniforms([0, 0, 1], 2, 300, seed=1)
    assert u.shape == (300, 3)
    assert np.all((u > 0.0) & (u < 1.0))


def test_marginals_are_uniform(two_keys: np.ndarray) -> None:
    tolerance = 4.0 * np.sqrt(0.25 / S_LARGE)
    for level in (0.05, 0.25, 0.5, 0.75, 0.95):
        share = (two_keys < level).mean(axis=0)
        assert np.all(np.abs(share - level) < tolerance), (level, share)


def test_win_rates_match_win_probability(two_keys: np.ndarray) -> None:
    price = np.array([0.2, 0.5, 0.7, 0.4])
    edge = np.array([0.05, 0.02, 0.08, 0.03])
    q = win_probability(price, edge)
    for side in (1, -1):
        returns = stake_returns(two_keys, price, q, np.full(4, side))
        win_rate = (returns > 0).mean(axis=0)
        tolerance = 4.0 * np.sqrt(q * (1 - q) / S_LARGE)
        assert np.all(np.abs(win_rate - q) < tolerance), (side, win_rate, q)
        # A unit stake's mean return is its stated expected profit: q·(1-p)/p - (1-q) = q/p - 1.
        assert np.all(np.abs(returns.mean(axis=0) - edge) < 6.0 * returns.std(axis=0) / np.sqrt(S_LARGE))


def _normal_scores_correlation(u: np.ndarray, a: int, b: int) -> float:
    from scipy.special import ndtri

    z = ndtri(u[:, [a, b]])
    return float(np.corrcoef(z.T)[0, 1])


def test_dependence_within_a_key_is_stronger_than_across(two_keys: np.ndarray) -> None:
    within = _normal_scores_correlation(two_keys, 0, 1)
    across = _normal_scores_correlation(two_keys, 0, 3)
    assert 0.35 < within < 0.65
    assert 0.0 < across < 0.2
    assert within > across + 0.25


def test_joint_extreme_losses_within_a_key_are_far_more_frequent_than_independence(
    two_keys: np.ndarray,
) -> None:
    tail = 0.02
    # For BUY stakes a loss is U above 1 - q; the extreme tail is U close to 1.
    joint_within = np.mean((two_keys[:, 0] > 1 - tail) & (two_keys[:, 1] > 1 - tail))
    joint_across = np.mean((two_keys[:, 0] > 1 - tail) & (two_keys[:, 3] > 1 - tail))
    independent = tail * tail
    assert joint_within > 8 * independent
    assert joint_within > 3 * joint_across
    # All three markets of the key failing together: rare under independence (8e-6), common here.
    all_three = np.mean(np.all(two_keys[:, :3] > 1 - tail, axis=1))
    assert all_three > 50 * tail**3


def test_t_tails_are_heavier_than_gaussian_with_the_same_correlation() -> None:
    # Same correlation structure, nu large ≈ Gaussian copula: the t(4) copula must show more joint extremes.
    keys = [0] * 2
    heavy = market_uniforms(keys, 1, S_LARGE, seed=3, tail_dof=4.0)
    light = market_uniforms(keys, 1, S_LARGE, seed=3, tail_dof=1e6)
    tail = 0.01

    def joint(u: np.ndarray) -> float:
        return float(np.mean((u[:, 0] > 1 - tail) & (u[:, 1] > 1 - tail)))

    assert joint(heavy) > 1.5 * joint(light)


def test_buy_and_sell_in_one_market_are_anti_aligned() -> None:
    u = market_uniforms([0], 1, 5000, seed=99)
    both = np.repeat(u, 2, axis=1)
    price = np.array([0.45, 0.5])  # YES at 0.45, NO at 0.5: q_yes + q_no < 1
    q = win_probability(price, np.array([0.04, 0.03]))
    returns = stake_returns(both, price, q, np.array([1, -1]))
    buy_wins, sell_wins = returns[:, 0] > 0, returns[:, 1] > 0
    assert not np.any(buy_wins & sell_wins)
    assert np.asarray(np.corrcoef(returns.T))[0, 1] < -0.8


def test_stake_returns_values() -> None:
    u = np.array([[0.1, 0.1], [0.9, 0.9]])
    r = stake_returns(u, np.array([0.25, 0.25]), np.array([0.3, 0.3]), np.array([1, -1]))
    assert r[0, 0] == pytest.approx(3.0)  # BUY wins when U < q
    assert r[1, 0] == -1.0
    assert r[0, 1] == -1.0  # SELL wins when U > 1 - q
    assert r[1, 1] == pytest.approx(3.0)


def test_book_losses_of_a_fairly_marked_book_average_to_zero() -> None:
    u = market_uniforms([0, 1, 1], 2, S_LARGE, seed=5)
    losses = book_losses(u, np.array([0, 2]), np.array([1, -1]), np.array([500.0, 300.0]), np.array([0.3, 0.6]))
    assert losses.shape == (S_LARGE,)
    # Marked at the win probability there is no edge: mean loss ≈ 0; worst loss is the whole book.
    assert abs(losses.mean()) < 4 * losses.std() / np.sqrt(S_LARGE)
    assert losses.max() == pytest.approx(800.0)


def test_empty_book_has_zero_losses() -> None:
    u = market_uniforms([0], 1, 10, seed=5)
    assert np.all(book_losses(u, np.zeros(0, dtype=int), np.zeros(0), np.zeros(0), np.zeros(0)) == 0.0)


def test_seed_from_decision_id_is_stable_and_64_bit() -> None:
    seed = seed_from_decision_id("decision-0001")
    assert seed == seed_from_decision_id("decision-0001")
    assert seed != seed_from_decision_id("decision-0002")
    assert 0 <= seed < 2**64
    # Pinned: a change here would silently change the scenarios of every replayed decision.
    assert seed == 0x94DDC59BAF9B27EC


@settings(max_examples=30, deadline=None)
@given(
    keys=st.lists(st.integers(0, 3), min_size=1, max_size=6),
    seed=st.integers(0, 2**63),
    count=st.integers(1, 50),
)
def test_any_inputs_are_reproducible(keys: list[int], seed: int, count: int) -> None:
    a = market_uniforms(keys, 4, count, seed)
    assert a.shape == (count, len(keys))
    assert a.tobytes() == market_uniforms(keys, 4, count, seed).tobytes()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"market_key": [0, 5], "n_keys": 2}, "market_key"),
        ({"scenario_count": 0}, "scenario_count"),
        ({"within_key_correlation": 0.05, "common_correlation": 0.1}, "correlations"),
        ({"tail_dof": 0.0}, "tail_dof"),
    ],
)
def test_invalid_inputs_name_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"market_key": [0, 1], "n_keys": 2, "scenario_count": 10, "seed": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        market_uniforms(**args)  # type: ignore[arg-type]


def test_stake_returns_rejects_bad_prices_and_sides() -> None:
    u = np.full((2, 1), 0.5)
    with pytest.raises(ValueError, match="price"):
        stake_returns(u, np.array([1.0]), np.array([0.5]), np.array([1]))
    with pytest.raises(ValueError, match="side"):
        stake_returns(u, np.array([0.5]), np.array([0.5]), np.array([0]))


def test_latents_and_returns_are_the_numbers_replayed_decisions_were_made_with() -> None:
    # Pinned from the release that computed them on whole arrays: 150 markets (more than one block of the blocked
    # arithmetic) under 7 keys, and 130 stakes on them. Any change here changes every replayed decision.
    keys = [(i * 5) % 7 for i in range(150)]
    latents = market_latents(keys, 7, 300, seed=2024)
    markets = np.array([(j * 37) % 150 for j in range(130)])
    price = np.linspace(0.1, 0.9, 130)
    q = win_probability(price, np.linspace(0.0, 0.1, 130))
    side = np.where(np.arange(130) % 3 == 0, -1, 1)
    returns = market_stake_returns(latents, markets, price, q, side, latent_dof=4.0)
    assert hashlib.sha256(latents.tobytes()).hexdigest()[:32] == "47eca1d4b7aebe49f326118c2075795f"
    assert hashlib.sha256(np.asfortranarray(returns).tobytes()).hexdigest()[:32] == "f049541d600c8a58777aa05df523dac7"


@settings(max_examples=40, deadline=None)
@given(
    markets=st.integers(1, 140),
    stakes=st.lists(st.tuples(st.integers(0, 10**6), st.floats(0.01, 0.99), st.booleans()), max_size=150),
    count=st.integers(1, 400),
    seed=st.integers(0, 2**63),
)
def test_stake_returns_from_market_rows_equal_those_of_the_gathered_columns(
    markets: int, stakes: list[tuple[int, float, bool]], count: int, seed: int
) -> None:
    latents = market_latents([m % 5 for m in range(markets)], 5, count, seed)
    where = np.array([m % markets for m, _, _ in stakes], dtype=np.int64)
    price = np.array([p for _, p, _ in stakes])
    q = win_probability(price, np.full(len(stakes), 0.05))
    side = np.array([1 if buy else -1 for _, _, buy in stakes], dtype=np.int64)
    gathered = stake_returns(latents[:, where.tolist()], price, q, side, latent_dof=4.0)
    from_rows = market_stake_returns(latents, where, price, q, side, latent_dof=4.0)
    # The same bits in the same layout: the solver's products and sums depend on both.
    assert from_rows.shape == gathered.shape
    for layout in ("C_CONTIGUOUS", "F_CONTIGUOUS"):
        assert from_rows.flags[layout] == gathered.flags[layout]
    assert from_rows.tobytes() == gathered.tobytes()
