"""Closed forms in the depth index: recursions solved by rsolve after a change of variable
that makes them affine, and products over depth."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from sigprop.symbolic.maps import factor_roots_unbounded
from sigprop.symbolic.symbols import L, l
from sigprop.symbolic.timeouts import TimedOut, bounded, is_zero, simplify

# Closed forms in depth.

X = sympy.Function("x")


@dataclass
class DepthSolution:
    """x_l for x_{l+1} = step(x_l), x_0 = x0: ``closed`` (None if not found) and how."""

    step: sympy.Expr
    closed: sympy.Expr | None
    method: str
    residual_zero: bool = False
    transform: str = ""  # p = T(x) in which the recursion is affine: p' = a p + b
    a: sympy.Expr | None = None
    b: sympy.Expr | None = None

    @property
    def found(self) -> bool:
        return self.closed is not None


_TRANSFORMS = {
    # name: (p = T(x), x = T^{-1}(p)); p obeys a linear recursion when x obeys a Mobius one
    "identity": (lambda x: x, lambda p: p),
    "reciprocal": (lambda x: 1 / x, lambda p: 1 / p),
    "log": (sympy.log, sympy.exp),
}


def solve_depth(step, x, x0, *, index=l, timeout: float | None = None) -> DepthSolution:
    """Solve ``x_{l+1} = step(x_l)`` from ``x_0 = x0`` in closed form, within the time bound.

    Tries p = x, 1/x and log x: if p_{l+1} is affine in p_l (coefficients free of p), sympy's
    ``rsolve`` solves it and x_l = T^{-1}(p_l). The result is checked by substituting it back
    (``residual_zero``). ``closed`` is None when no transform gives a linear recursion or
    rsolve overruns; the recursion ``step`` is returned all the same.
    """
    step = sympy.sympify(step)
    p = sympy.Dummy("p", positive=True)
    why = []
    for name, (T, Tinv) in _TRANSFORMS.items():
        nxt = bounded(_normal_form, T(step.subs(x, Tinv(p))), timeout=timeout)
        if isinstance(nxt, TimedOut) or not _affine_in(nxt, p):
            why.append(f"{name}(x): not affine")
            continue
        a, b = nxt.coeff(p, 1), nxt.coeff(p, 0)
        hide = {i: sympy.Dummy(f"I{k}") for k, i in enumerate(
            sorted((a + b).atoms(sympy.Integral), key=sympy.default_sort_key))}
        sol = bounded(sympy.rsolve, X(index + 1) - (a * X(index) + b).xreplace(hide), X(index),
                      {X(0): T(x0)}, timeout=timeout)
        if isinstance(sol, TimedOut) or sol is None:
            why.append(f"{name}(x): rsolve gave {sol!r}")
            continue
        sol = sol.xreplace({v: k for k, v in hide.items()})
        closed = simplify(Tinv(sol), timeout)
        ok = is_zero(closed.subs(index, index + 1) - step.subs(x, closed), timeout)
        return DepthSolution(step, closed, f"rsolve on {name}(x)", ok, name, a, b)
    return DepthSolution(step, None, "no closed form found: " + "; ".join(why))


def _normal_form(expr):
    """Cancelled, log-expanded, expanded: enough to expose an affine recursion in p."""
    return sympy.expand(sympy.expand_log(sympy.cancel(factor_roots_unbounded(expr)), force=True))


def _affine_in(expr, p) -> bool:
    return expr.is_polynomial(p) and sympy.degree(expr, p) <= 1


def depth_product(factor, index=l, lo=0, hi=None, timeout: float | None = None):
    """prod_{index=lo}^{hi} factor, in closed form (gamma-simplified) or None if none found."""
    hi = L - 1 if hi is None else hi
    out = bounded(lambda: sympy.gammasimp(sympy.product(factor, (index, lo, hi))
                                          .rewrite(sympy.gamma)), timeout=timeout)
    if isinstance(out, TimedOut) or out.has(sympy.Product):
        return None
    return out
