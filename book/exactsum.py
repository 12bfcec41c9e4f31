"""An exact running sum of floats: add and remove one value in O(1), read back exactly what `math.fsum` returns.

Every finite double is an integer multiple of 2**-1074, so a sum of doubles is kept exactly as one Python integer
of such units. Reading it rounds once, to nearest with ties to even, as `math.fsum` does: the result depends only
on which values are in the sum, never on the order they were added or removed in. That is what lets the portfolio
fold keep equity incrementally and still give the same bits live, after a restart and in replay.
"""

from __future__ import annotations

_UNIT_EXPONENT = -1074  # the smallest subnormal double is 2**-1074
_ONE = 1 << -_UNIT_EXPONENT  # 1.0 in units
# Above about 2**1000 `math.fsum` can overflow in its partial sums where an exact sum would not; such sums are
# left to `math.fsum` itself so that even its errors stay the same.
_SAFE_BITS = 1000 - _UNIT_EXPONENT


def units(x: float) -> int:
    """A finite float as an exact integer number of 2**-1074 units."""
    numerator, denominator = x.as_integer_ratio()  # denominator is 2**k with k <= 1074
    return numerator << (1 - _UNIT_EXPONENT - denominator.bit_length())


def rounded(total_units: int) -> float | None:
    """The sum of `total_units` units rounded to the nearest float, as `math.fsum` rounds it.

    None where `math.fsum` must decide instead: a zero sum (fsum picks the sign of zero from its summands) and
    sums near the top of the float range.
    """
    if not total_units or total_units.bit_length() > _SAFE_BITS:
        return None
    # Python's int / int is correctly rounded (to nearest, ties to even): one rounding of the exact quotient.
    return total_units / _ONE
