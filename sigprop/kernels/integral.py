"""Gaussian expectations without closed form, kept as unevaluated sympy integrals (the SYMBOLIC
face of tanh, silu and the other quadrature activations), and the one numeric evaluator of such
an integral.

    E[phi(sqrt(q) Z)]  = int phi(sqrt(q) z1) N(z1) dz1
    E[phi(u) phi(v)]   = int int phi(sqrt(q1) z1) phi(sqrt(q2) z2) N_c(z1, z2) dz2 dz1

with N the standard normal density and N_c the standard bivariate one of correlation c (over
z1 alone, v = c sqrt(q2) z1, when c = +-1). The variables are standardised, so every
activation's kink or bend lies on an axis, at z = 0.

May import: nothing from sigprop (sympy, numpy, scipy only).
"""

from __future__ import annotations

import mpmath
import numpy as np
import scipy.integrate
import sympy

# The one evaluator, :func:`integral_value`; errors measured against sigprop.kernels.quadrature
# for tanh, gelu, silu (kernel, grad_kernel, mean, grad_mean), q in [1e-2, 1e6] (gelu's face is
# now its closed form; the measurement stands for the evaluator).
# 1-D: mpmath's tanh-sinh rule at the working precision, split at the kink. Its nodes crowd at
# the ends of each piece, where every activation kinks or bends (z = 0, on the scale 1/sqrt(q)),
# and exact arithmetic never overflows: agrees with the quadrature module within its measured
# errors at every q tried. scipy's quad over [-40, 40] was off by up to 1e-3 at q >= 1e4 and
# gave nan for silu' at q >= 315 (exp(-sqrt(q) z) = inf in floats).
KINK = 0  # where the 1-D integral is split (the variables are standardised)
GUARD_BITS = 10  # working bits of the 1-D rule beyond the precision asked for
# 2-D: scipy's dblquad, double precision (mpmath's 2-D tanh-sinh takes ~20 s a value).
Z_CUT = 40.0  # infinite limits are cut at +-Z_CUT standard deviations: the density is below
# e^{-800} there, and exp(-sqrt(q) z) in silu' stays finite for q up to 315 (over infinite
# limits dblquad gives nan for silu' at any q)
EPS_2D = (1e-13, 1e-12)  # (epsabs, epsrel): ~0.5 s a value; errors <= 2e-11 at the points
# tried, but 4e-9 (2e-9 relative) at the STYLE.md trap point (gelu kernel, q = 4.5, c = 0.98)


def _cut(x) -> float:
    return float(max(-Z_CUT, min(Z_CUT, float(x))))


def integral_value(integral: sympy.Integral, prec: int = 53) -> sympy.Float:
    """A 1-D or 2-D Gaussian expectation with no free symbol, to ``prec`` bits (2-D: 53 at most)."""
    if integral.free_symbols:
        raise ValueError(f"unbound symbols {integral.free_symbols} in {integral}")
    limits = integral.limits
    if len(limits) == 1:
        (v, a, b), = limits
        lo, hi = mpmath.mpf(float(a)), mpmath.mpf(float(b))
        pieces = [lo, KINK, hi] if lo < KINK < hi else [lo, hi]
        f = sympy.lambdify([v], integral.function, "mpmath")
        with mpmath.workprec(prec + GUARD_BITS):
            return sympy.Float(mpmath.quad(f, pieces), precision=prec)
    if len(limits) == 2:
        (v1, a1, b1), (v2, a2, b2) = limits  # v1 inner, v2 outer
        f = sympy.lambdify((v2, v1), integral.function, "numpy")
        with np.errstate(all="ignore"):  # exp overflows far in the tails, where the density is 0
            val, _ = scipy.integrate.dblquad(f, _cut(a2), _cut(b2), _cut(a1), _cut(b1),
                                             epsabs=EPS_2D[0], epsrel=EPS_2D[1])
        return sympy.Float(val, precision=min(prec, 53))
    raise ValueError(f"integral of dimension {len(limits)}")


class GaussianIntegral(sympy.Integral):
    """A Gaussian expectation without closed form, left as an integral over R or R^2.

    ``.evalf()`` and ``.doit()`` evaluate it by :func:`integral_value` once no free symbol is
    left: 1-D at the precision asked for, 2-D in double precision.
    """

    def doit(self, **hints):
        return self if self.free_symbols else self.evalf()

    def _eval_evalf(self, prec):
        if self.free_symbols:
            return None
        return integral_value(self, prec)


_Z1, _Z2 = sympy.symbols("z_1 z_2", real=True)
_OO = sympy.oo
_NORMAL = sympy.exp(-_Z1**2 / 2) / sympy.sqrt(2 * sympy.pi)  # density of z_1 ~ N(0, 1)


def integral_mean(expr, q):
    """E[phi(sqrt(q) Z)], Z ~ N(0, 1), as an integral (``expr(x)`` is phi(x) in sympy)."""
    return GaussianIntegral(expr(sympy.sqrt(q) * _Z1) * _NORMAL, (_Z1, -_OO, _OO))


def integral_kernel(expr, q1, q2, c):
    """E[phi(u) phi(v)] as an integral over z = (u/sqrt(q1), v/sqrt(q2)), a standard bivariate
    normal of correlation c (so both kinks lie on the axes); over z_1 alone when c = +-1."""
    u = expr(sympy.sqrt(q1) * _Z1)
    if c in (1, -1):
        return GaussianIntegral(u * expr(c * sympy.sqrt(q2) * _Z1) * _NORMAL, (_Z1, -_OO, _OO))
    density = sympy.exp(-(_Z1**2 - 2 * c * _Z1 * _Z2 + _Z2**2) / (2 * (1 - c**2))) / (
        2 * sympy.pi * sympy.sqrt(1 - c**2))
    return GaussianIntegral(u * expr(sympy.sqrt(q2) * _Z2) * density, (_Z2, -_OO, _OO),
                            (_Z1, -_OO, _OO))
