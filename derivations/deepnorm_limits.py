"""DeepNorm (ReLU): constant q and gradient, correlation frozen as L -> infinity.

Block x -> LN(beta x + F(x)) with the branch Denses scaled by b; DeepNet's encoder constants
(2N)^{1/4}, (8N)^{-1/4} for N layers of two sublayers, i.e. for L = 2N blocks (one sublayer
each) beta = L^{1/4}, b = (4L)^{-1/4} (presets.deepnorm, sublayers = 2). With eps = 0 and a
ReLU mlp branch, q_l = gain^2 (l >= 1), the backward factor per block is exactly 1 at the
stationary state (as for Post-LN, ReLU), and the correlation map is c' = c + h (f(c) - c) with

    h = r / (1 + r),
    r = b^4 sigma_1^2 sigma_2^2 / (2 beta^2) = sigma_1^2 sigma_2^2 / (8 L^{3/2}).

Over L blocks the total mixing is L h = O(L^{-1/2}), so c_L -> c_0 and, with g(c) = f(c) - c,

    sqrt(L) (c_L - c_0) -> sigma_1^2 sigma_2^2 g(c_0) / 8,

the next term being (L h)^2 g g'(c_0) / 2 (the flow dc/dt = h g(c) to second order).
"""

import math
import sys

import sympy

import sigprop as sp
from sigprop import symbolic as S

NAME = "deepnorm_limits"


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "DeepNorm (ReLU): q = gain^2, unit gradient factor, c_L -> c_0")
    blk = S.preset_block("deepnorm", "relu", eps=0, sigma_b=0, alpha=1, ratio=1)
    fwd = S.block_map(blk, 2, mean=False)
    d.check_true("q' = gain^2", S.simplify(fwd["q_a"] - S.GAIN**2) == 0, str(fwd["q_a"]))
    F = S.simplify(S.backward_map(blk, 1, mean=False)["grad_q_a"].subs(S.Q_A, S.GAIN**2) / S.G_A)
    d.check_true("backward factor at the stationary state = 1 (any beta, b)", F == 1, str(F))
    f = S.corr_map("relu")
    cmap = fwd["c_ab"].subs(S.Q_B, S.Q_A)
    h = S.simplify(S.factor_roots((cmap - S.C_AB) / (f - S.C_AB)))
    r = S.B_DN**4 * S.SIGMA_1**2 * S.SIGMA_2**2 / (2 * S.BETA**2)
    d.check_true("c' = c + h (f(c) - c), h = r/(1 + r), r = b^4 sigma_1^2 sigma_2^2/(2 beta^2)",
                 S.is_zero(h - r / (1 + r)), str(h))
    r_L = S.simplify(r.subs(S.DEEPNET))
    d.equation("r", sympy.Symbol("r"), r_L, "DeepNet constants")
    K = S.bounded(sympy.limit, S.L ** sympy.Rational(3, 2) * (r_L / (1 + r_L)), S.L, sympy.oo)
    d.check_true("L^{3/2} h -> sigma_1^2 sigma_2^2 / 8 (beta = L^{1/4}, b = (4L)^{-1/4})",
                 S.is_zero(K - S.SIGMA_1**2 * S.SIGMA_2**2 / 8), str(K))
    g = S.simplify(f - S.C_AB)
    dg = S.simplify(sympy.diff(g, S.C_AB))
    d.equation("limit", sympy.sqrt(S.L) * (S.C_L - S.C0), K * g.subs(S.C_AB, S.C0),
               "L -> infinity")
    d.equation("g_prime", sympy.Derivative(sympy.Function("g")(S.C_AB), S.C_AB), dg)
    c0 = 0.3
    defaults = S.preset_defaults("deepnorm", "relu")
    s12 = float((S.SIGMA_1**2 * S.SIGMA_2**2).subs(defaults))
    d2g = S.simplify(sympy.diff(dg, S.C_AB))
    g0, dg0, d2g0 = (float(e.subs(S.C_AB, c0)) for e in (g, dg, d2g))
    for n in ((100, 1000, 10000) if slow else (100,) if quick else (100, 400)):
        ds = sp.theory(sp.presets.deepnorm(n, eps=0.0), sp.Inputs(q=1.0, corr=c0, n=2))
        c_L = float(ds.corr.values[-1, 0, 1])
        hn = float((r_L / (1 + r_L)).subs({**defaults, S.L: n}))
        T = n * hn
        second = math.sqrt(n) * (T + T**2 * dg0 / 2) * g0
        third = T**3 * abs(dg0**2 + g0 * d2g0) / 6  # flow to third order
        euler = n * hn**2 * abs(dg0) / 2  # discrete steps vs the flow
        tol = 2 * math.sqrt(n) * abs(g0) * (third + euler)
        d.check(f"presets.deepnorm(L = {n}): sqrt(L)(c_L - c_0) vs L h g + (L h)^2 g g'/2 "
                "(tol: 2 x third-order + Euler-step term)", math.sqrt(n) * (c_L - c0) - second,
                tol + 1e-13 * n)
        d.note(f"L = {n}: sqrt(L)(c_L - c_0) = {math.sqrt(n) * (c_L - c0):.6g}, limit "
               f"{s12 * g0 / 8:.6g}")
        d.check(f"presets.deepnorm(L = {n}): q_l = 1 (gain 1), grad constant",
                max(abs(ds.q.values[1:] - 1).max(), abs(ds.grad_q.values[1:] - 1).max()), 1e-12)
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
