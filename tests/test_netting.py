"""rules.md §6: opposite proposals on one market are matched in priority order before sizing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from allocator.engine.netting import net_opposites
from allocator.engine.validation import priority
from schemas.events import Proposal, Side


def prop(pid: str, side: Side, size: float, *, market: str = "m", edge: float = 0.04) -> Proposal:
    return Proposal(pid, "a", "s", market, side, 0.5, edge, 0.9, size, min(size, 10.0), 0.1, 0.1, "k", 0)


def test_matched_amounts_are_netted_and_only_the_larger_side_keeps_a_residual() -> None:
    out = net_opposites([prop("b1", Side.BUY, 500), prop("s1", Side.SELL, 200)], priority)
    assert (out[("a", "b1")].netted_size, out[("a", "b1")].residual) == (200, 300)
    assert (out[("a", "s1")].netted_size, out[("a", "s1")].residual) == (200, 0)


def test_pairs_in_priority_order() -> None:
    high = prop("b-high", Side.BUY, 100, edge=0.09)
    low = prop("b-low", Side.BUY, 100, edge=0.01)
    out = net_opposites([low, high, prop("s", Side.SELL, 150)], priority)
    assert out[("a", "b-high")].residual == 0 and out[("a", "b-high")].netted_size == 100
    assert out[("a", "b-low")].netted_size == 50 and out[("a", "b-low")].residual == 50


def test_other_markets_and_one_sided_markets_are_untouched() -> None:
    out = net_opposites([prop("b", Side.BUY, 100, market="x"), prop("s", Side.SELL, 100, market="y")], priority)
    assert out[("a", "b")].residual == 100 and out[("a", "s")].residual == 100


sizes = st.lists(st.floats(1.0, 1e4), min_size=0, max_size=6)


@given(sizes, sizes)
def test_netting_conserves_size_and_leaves_one_side(buys: list[float], sells: list[float]) -> None:
    ps = [prop(f"b{i}", Side.BUY, s) for i, s in enumerate(buys)] + [
        prop(f"s{i}", Side.SELL, s) for i, s in enumerate(sells)
    ]
    out = net_opposites(ps, priority)
    buy_net = sum(out[(p.agent_id, p.proposal_id)].netted_size for p in ps if p.side is Side.BUY)
    sell_net = sum(out[(p.agent_id, p.proposal_id)].netted_size for p in ps if p.side is Side.SELL)
    assert abs(buy_net - sell_net) <= 1e-6 * max(1.0, buy_net)
    assert abs(buy_net - min(sum(buys), sum(sells))) <= 1e-6 * max(1.0, buy_net)
    buy_left = sum(out[(p.agent_id, p.proposal_id)].residual for p in ps if p.side is Side.BUY)
    sell_left = sum(out[(p.agent_id, p.proposal_id)].residual for p in ps if p.side is Side.SELL)
    assert min(buy_left, sell_left) <= 1e-6 * max(1.0, buy_net)
    for p in ps:
        n = out[(p.agent_id, p.proposal_id)]
        assert abs(n.netted_size + n.residual - p.requested_size) <= 1e-9 * p.requested_size


def test_two_agents_may_use_one_proposal_id() -> None:
    """rules.md §2.2: ids are unique per agent, so two agents' "p" are netted as two proposals."""
    mine = prop("p", Side.BUY, 300)
    theirs = Proposal("p", "b", "s", "m", Side.SELL, 0.5, 0.04, 0.9, 100, 10.0, 0.1, 0.1, "k", 0)
    out = net_opposites([mine, theirs], priority)
    assert (out[("a", "p")].netted_size, out[("a", "p")].residual) == (100, 200)
    assert (out[("b", "p")].netted_size, out[("b", "p")].residual) == (100, 0)
