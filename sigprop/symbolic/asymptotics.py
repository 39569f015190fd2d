"""Correlation maps near c = 1: the series in sqrt(1 - c), the float-safe form of 1 - f(1 - t^2),
and the law of 1 - c_l it implies at large depth."""

from __future__ import annotations

import sympy

from sigprop.symbolic.hyperparams import preset_block
from sigprop.symbolic.maps import block_map, factor_roots
from sigprop.symbolic.symbols import C_AB, ONE_MINUS_C, Q_A, Q_B, SQRT_ONE_MINUS_C
from sigprop.symbolic.timeouts import TimedOut, bounded, simplify


def near_one(cmap, c=C_AB, order: int = 5, timeout: float | None = None):
    """1 - cmap(1 - epsilon) as a series in sqrt(epsilon) up to epsilon^{order/2} (exclusive).

    Returns the expansion as a polynomial in ``ONE_MINUS_C`` with half-integer powers (no O term).
    """
    expr = (1 - sympy.sympify(cmap)).subs(c, 1 - SQRT_ONE_MINUS_C**2)
    ser = bounded(lambda: sympy.series(expr, SQRT_ONE_MINUS_C, 0, order).removeO(), timeout=timeout)
    failed = isinstance(ser, TimedOut)
    if failed:
        raise RuntimeError(f"series of the correlation map at c = 1: {ser.reason}")
    return sympy.expand(ser.subs(SQRT_ONE_MINUS_C, sympy.sqrt(ONE_MINUS_C)))


def corr_map(act: str = "relu"):
    """The correlation map c' = f(c) of Dense -> act at equal second moments q_a = q_b.

    Read off the ops' law (plain ``dense_act`` block, sigma_b = 0); it depends on sigma_1 and
    q_a only through sigma_1^2 q_a (and not at all for ReLU and linear).
    """
    blk = preset_block("plain", act, "dense_act", sigma_b=0, ratio=1)
    cmap = block_map(blk, 2, mean=False, simplify=False)["c_ab"].subs(Q_B, Q_A)
    return simplify(factor_roots(cmap))


def eps_map(cmap, c=C_AB):
    """1 - cmap(1 - t^2) in a form that float64 evaluates without losing 1 - c (t = sqrt(1-c)).

    acos(z) is rewritten 2 asin(sqrt((1 - z)/2)), the result is put over one denominator and
    its numerator expanded, so that the O(1) terms cancel symbolically, not in floating point.
    Returns an expression in :data:`SQRT_ONE_MINUS_C` (= t).
    """
    expr = sympy.sympify(cmap).replace(
        sympy.acos, lambda z: 2 * sympy.asin(sympy.sqrt((1 - z) / 2)))
    expr = factor_roots(expr.subs(c, 1 - SQRT_ONE_MINUS_C**2))  # sqrt(t^2 (2 - t^2)) = t sqrt(2 - t^2)
    expr = sympy.together(1 - expr)
    num, den = sympy.fraction(expr)
    return sympy.expand(num) / den



def increment_series(expansion, h=1, order: int = 3):
    """Coefficients a_0..a_{order-1} of u_{l+1} - u_l = sum_k a_k u_l^{-k} + O(u^{-order}).

    Here u = (1 - c)^{-1/2} and the map is 1 - c_{l+1} = e - h (e - (1 - f(1 - e))),
    e = 1 - c_l, with ``expansion`` = 1 - f(1 - e) from :func:`near_one` (its powers of e must
    reach e^{(order+2)/2}). h may be a symbol (a depth-dependent mixing weight).
    """
    u = sympy.Symbol("u", positive=True)
    e = 1 / u**2
    nxt = e - h * (e - sympy.sympify(expansion).subs(ONE_MINUS_C, e))
    inc = bounded(lambda: sympy.expand(sympy.series(1 / sympy.sqrt(nxt) - u, u, sympy.oo, order)
                                       .removeO()))
    failed = isinstance(inc, TimedOut)
    if failed:
        raise RuntimeError(f"series of the increment of (1 - c)^(-1/2): {inc.reason}")
    return [simplify(inc.coeff(u, -k)) for k in range(order)]


def log_law(expansion, h=1):
    """Law of u_l = (1 - c_l)^{-1/2} for a constant mixing weight h (see increment_series).

    With ``1 - f(1 - e) = e - A e^{3/2} + O(e^{5/2})``, u_{l+1} - u_l = a0 + a1 / u_l + O(u^{-2}),
    so u_l = a0 l + (a1 / a0) log l + O(1) and 1 - c_l = 1 / (a0 l)^2 (1 + O(log l / l)).
    Returns ``(a0, a1 / a0)``.
    """
    a0, a1 = increment_series(expansion, h, order=2)
    return a0, simplify(a1 / a0)
