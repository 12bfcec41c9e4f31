"""The default risk model of rules.md §8: seeded t-copula outcomes, per-unit stake returns, book losses."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

FloatArray = npt.NDArray[np.float64]

WITHIN_KEY_CORRELATION = 0.5
COMMON_CORRELATION = 0.1
TAIL_DOF = 4.0
# Keeps a market's win probability strictly inside (0, 1) so every scenario set can show both outcomes.
PROBABILITY_EPSILON = 1e-9
# Markets per block of the latent arithmetic: 64 rows of 5,000 scenarios (2.5 MB) stay in a core's cache.
_BLOCK_ROWS = 64


def seed_from_decision_id(decision_id: str) -> int:
    """A stable 64-bit seed for a decision id (blake2b: the same in every process and Python version)."""
    digest = hashlib.blake2b(decision_id.encode("utf-8"), digest_size=8, person=b"alloc-scenarios").digest()
    return int.from_bytes(digest, "big")


def market_latents(
    market_key: Sequence[int] | npt.NDArray[np.integer],
    n_keys: int,
    scenario_count: int,
    seed: int,
    *,
    within_key_correlation: float = WITHIN_KEY_CORRELATION,
    common_correlation: float = COMMON_CORRELATION,
    tail_dof: float = TAIL_DOF,
) -> FloatArray:
    """SxM latent uniforms, one per scenario and market, from a one-factor t-copula per correlation key.

    X_mj = √rho_c·G_j + √(rho_k-rho_c)·F_key(m),j + √(1-rho_k)·e_mj, divided by √(W_key(m),j/nu) with W ~
    χ²_nu drawn per key and scenario, then U = t_nu-CDF(X). Markets of one key share F and W (hence tail
    dependence: one small W makes all of them extreme together); keys share only the weak Gaussian G. Draws
    happen in one fixed order (G, F, e, W) from PCG64(seed), so equal inputs give bit-identical output.
    """
    keys = np.asarray(market_key)
    if keys.ndim != 1:
        raise ValueError("market_key: expected a 1-D sequence of key indices")
    if keys.size and not np.all(np.equal(np.mod(keys, 1), 0)):
        raise ValueError("market_key: entries must be integers")
    key_index = keys.astype(np.int64)
    if n_keys < 1 and key_index.size:
        raise ValueError("n_keys: must be >= 1")
    if key_index.size and (key_index.min() < 0 or key_index.max() >= n_keys):
        raise ValueError(f"market_key: entries must lie in [0, {n_keys})")
    if scenario_count < 1:
        raise ValueError("scenario_count: must be >= 1")
    if not 0.0 <= common_correlation <= within_key_correlation < 1.0:
        raise ValueError("correlations: need 0 <= common_correlation <= within_key_correlation < 1")
    if not tail_dof > 0.0:
        raise ValueError("tail_dof: must be > 0")

    rng = np.random.Generator(np.random.PCG64(seed))
    n_markets = key_index.shape[0]
    key_count = max(n_keys, 1)
    common = rng.standard_normal(scenario_count)
    # Market- and key-major layouts (one contiguous row per market or key): the per-market gathers below
    # are then row copies, several times faster than column gathers at N=1000 x S=5000.
    key_factor = rng.standard_normal((key_count, scenario_count))
    own = rng.standard_normal((n_markets, scenario_count))
    mixing = rng.chisquare(tail_dof, (key_count, scenario_count))

    # X = ((own·a + b·G) + c·F[key]) · √(nu/W)[key], in that order for every entry: done a block of markets at a
    # time (the block stays in cache, and no S x M temporary is made), each entry takes the same operations in the
    # same order as on the whole array, so the floats are the same bit for bit.
    own_scale = np.sqrt(1.0 - within_key_correlation)
    shared = np.sqrt(common_correlation) * common
    key_part = np.sqrt(within_key_correlation - common_correlation) * key_factor
    tail_scale = np.sqrt(tail_dof / mixing)
    latent = own
    for first in range(0, n_markets, _BLOCK_ROWS):
        block = latent[first : first + _BLOCK_ROWS]
        keys_here = key_index[first : first + _BLOCK_ROWS]
        block *= own_scale
        block += shared
        block += key_part[keys_here]
        block *= tail_scale[keys_here]
    result: FloatArray = latent.T  # S x M, as every caller indexes it
    return result


def market_uniforms(
    market_key: Sequence[int] | npt.NDArray[np.integer],
    n_keys: int,
    scenario_count: int,
    seed: int,
    *,
    within_key_correlation: float = WITHIN_KEY_CORRELATION,
    common_correlation: float = COMMON_CORRELATION,
    tail_dof: float = TAIL_DOF,
) -> FloatArray:
    """The latents of `market_latents` mapped to uniforms by the t CDF: U = t-CDF(X), tail_dof degrees of
    freedom.

    The cycle compares latents with t-quantile thresholds instead (`latent_dof=` below): the same events,
    without a CDF evaluation per scenario and market.
    """
    latent = market_latents(
        market_key,
        n_keys,
        scenario_count,
        seed,
        within_key_correlation=within_key_correlation,
        common_correlation=common_correlation,
        tail_dof=tail_dof,
    )
    uniforms: FloatArray = special.stdtr(tail_dof, latent)
    return uniforms


def win_probability(
    price: npt.ArrayLike, expected_profit: npt.ArrayLike, epsilon: float = PROBABILITY_EPSILON
) -> FloatArray:
    """q = clip(p·(1 + expected_profit), ε, 1-ε): the win probability that makes the stated edge true."""
    p = np.asarray(price, dtype=np.float64)
    edge = np.asarray(expected_profit, dtype=np.float64)
    result: FloatArray = np.clip(p * (1.0 + edge), epsilon, 1.0 - epsilon)
    return result


def stake_returns(
    uniforms: npt.ArrayLike,
    price: npt.ArrayLike,
    win_prob: npt.ArrayLike,
    side: npt.ArrayLike,
    *,
    latent_dof: float | None = None,
) -> FloatArray:
    """Sxn per-unit returns of binary stakes: (1-p)/p on a win, -1 on a loss.

    `uniforms` holds, per column, the latent uniform of that stake's market (so stakes in one market share
    it); `side` is +1 for BUY, -1 for SELL. A BUY wins when U < q, a SELL (buying the NO contract, priced
    `price`) when U > 1 - q, so opposite sides in one market win in opposite scenarios.
    """
    u = np.asarray(uniforms, dtype=np.float64)
    if u.ndim != 2:
        raise ValueError("uniforms: expected an Sxn array")
    p, q, d = _stakes(u.shape[1], price, win_prob, side)
    if latent_dof is None:
        win = np.where(d > 0, u < q, u > 1.0 - q)
    else:
        # `uniforms` holds latents X with U = t-CDF(X): U < q exactly when X < t-quantile(q).
        below, above = special.stdtrit(latent_dof, q), special.stdtrit(latent_dof, 1.0 - q)
        win = np.where(d > 0, u < below, u > above)
    result: FloatArray = np.where(win, (1.0 - p) / p, -1.0)
    return result


def _stakes(
    n: int, price: npt.ArrayLike, win_prob: npt.ArrayLike, side: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, npt.NDArray[Any]]:
    """n stakes' prices, win probabilities and sides as arrays, each checked."""
    p = np.asarray(price, dtype=np.float64)
    q = np.asarray(win_prob, dtype=np.float64)
    d = np.asarray(side)
    for name, arr in (("price", p), ("win_prob", q), ("side", d)):
        if arr.shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    if not np.all((p > 0.0) & (p < 1.0)):
        raise ValueError("price: every entry must lie in (0, 1)")
    if not np.all((q >= 0.0) & (q <= 1.0)):
        raise ValueError("win_prob: every entry must lie in [0, 1]")
    if not np.all((d == 1) | (d == -1)):
        raise ValueError("side: every entry must be +1 (BUY) or -1 (SELL)")
    return p, q, d


def market_stake_returns(
    latents: FloatArray,
    stake_market: npt.ArrayLike,
    price: npt.ArrayLike,
    win_prob: npt.ArrayLike,
    side: npt.ArrayLike,
    *,
    latent_dof: float,
) -> FloatArray:
    """`stake_returns(latents[:, stake_market], ..., latent_dof=latent_dof)`, bit for bit and in the same memory
    layout (S x n, one contiguous column per stake), without the S x n gather and boolean temporaries: the
    stakes are taken a block at a time from their markets' rows of `market_latents`' output."""
    markets = np.asarray(stake_market, dtype=np.int64)
    if latents.ndim != 2:
        raise ValueError("latents: expected an SxM array")
    n = markets.shape[0]
    if markets.ndim != 1 or (n and (markets.min() < 0 or markets.max() >= latents.shape[1])):
        raise ValueError("stake_market: entries must index the columns of latents")
    p, q, d = _stakes(n, price, win_prob, side)
    rows = np.ascontiguousarray(latents.T)  # M x S: a view when `latents` comes from market_latents
    below, above = special.stdtrit(latent_dof, q), special.stdtrit(latent_dof, 1.0 - q)
    payoff = (1.0 - p) / p
    out = np.empty((n, latents.shape[0]))
    for first in range(0, n, _BLOCK_ROWS):
        last = min(first + _BLOCK_ROWS, n)
        u = rows[markets[first:last]]
        buy = (d[first:last] > 0)[:, None]
        win = np.where(buy, u < below[first:last, None], u > above[first:last, None])
        out[first:last] = np.where(win, payoff[first:last, None], -1.0)
    result: FloatArray = out.T
    return result


def book_losses(
    uniforms: npt.ArrayLike,
    position_market: npt.ArrayLike,
    position_side: npt.ArrayLike,
    marked_value: npt.ArrayLike,
    mark_price: npt.ArrayLike,
    *,
    latent_dof: float | None = None,
) -> FloatArray:
    """L0 per scenario for open positions held at their current mark (no edge assumed: q = mark price).

    `uniforms` is the SxM market array from `market_uniforms`; `position_market` indexes its columns.
    """
    u = np.asarray(uniforms, dtype=np.float64)
    markets = np.asarray(position_market, dtype=np.int64)
    value = np.asarray(marked_value, dtype=np.float64)
    price = np.asarray(mark_price, dtype=np.float64)
    if u.ndim != 2:
        raise ValueError("uniforms: expected an SxM array")
    if markets.ndim != 1 or (markets.size and (markets.min() < 0 or markets.max() >= u.shape[1])):
        raise ValueError("position_market: entries must index the columns of uniforms")
    if value.shape != markets.shape or not np.all(np.isfinite(value)):
        raise ValueError("marked_value: expected one finite value per position")
    returns = stake_returns(u[:, markets], price, price, position_side, latent_dof=latent_dof)
    losses: FloatArray = -(returns @ value)
    return losses
