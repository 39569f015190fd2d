"""Post-LN: the per-block gradient factor (1 + chi) / (1 + v) and the sign of its log.

At the stationary Post-LN state (q = gain^2, m = 0, eps = 0, sigma_b = 0) the backward law of
one block x -> LN(x + alpha F(x)) is

    g_l = g_{l+1} (1 + chi) / (1 + v),
    chi = alpha^2 sigma_1^2 sigma_2^2 E[phi'(u)^2]    (the residual's backward gain - 1),
    v   = alpha^2 sigma_2^2 E[phi(u)^2] / gain^2     (branch second moment / stream's),

u ~ N(0, q_u), q_u = sigma_1^2 gain^2. So log((1 + chi)/(1 + v)) has the sign of
S(q_u) = q_u E[phi'(u)^2] - E[phi(u)^2]: 0 for linear and ReLU (degree-1 homogeneous), > 0 for
odd phi by the Gaussian Poincare inequality Var phi(u) <= q_u E[phi'(u)^2] (for erf in closed
form: S(0) = 0, S'(q) = 16 q^2 / (pi (1 + 2q) (1 + 4q)^{3/2}) > 0). Through L blocks from the
stationary state g_0 / g_L = ((1 + chi)/(1 + v))^L; with alpha = 1/sqrt(L) it tends to
exp(chi_1 - v_1) (chi_1, v_1 at alpha = 1).
"""

import sys

import numpy as np
import sympy

import sigprop as sp
from sigprop import symbolic as S

NAME = "postln_grad_factor"
DEPTH = 40
QU = sympy.Symbol("q_u", positive=True)


def factor_parts(act):
    """(block, F, chi, v) at the stationary state q = gain^2, m = 0."""
    blk = S.preset_block("postln", act, eps=0, sigma_b=0, beta=1, ratio=1)
    at = {S.Q_A: S.GAIN**2}
    F = S.simplify(S.backward_map(blk, 1, mean=False)["grad_q_a"].subs(at) / S.G_A)
    res = blk.layers[0]
    chi = S.simplify(S.backward_map(res, 1, mean=False)["grad_q_a"].subs(at) / S.G_A - 1)
    v = S.simplify(S.ALPHA**2 * S.block_map(res, 1, mean=False)["branch_q_a"].subs(at)
                   / S.GAIN**2)
    return blk, F, chi, v


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "Post-LN per-block gradient factor (1 + chi)/(1 + v)")
    x0 = sp.Inputs(q=1.44, corr=0.3, n=2)  # stationary: q_0 = gain^2 = 1.2^2, zero mean
    for act in S.available_acts(quick=quick):
        blk, F, chi, v = factor_parts(act)
        d.check_true(f"{act}: backward factor = (1 + chi)/(1 + v)",
                     S.is_zero(F - (1 + chi) / (1 + v)), str(F))
        gap = S.simplify((chi - v) * S.GAIN**2 / (S.ALPHA**2 * S.SIGMA_2**2))
        gap = S.simplify(gap.subs(S.SIGMA_1, sympy.sqrt(QU) / S.GAIN))
        d.check_true(f"{act}: gamma^2 (chi - v)/(alpha sigma_2)^2 = S(q_u) depends on q_u only",
                     gap.free_symbols <= {QU}, str(gap))
        if act in S.CLOSED_FORM_ACTS:
            d.equation(f"{act}_chi", sympy.Symbol("chi"), chi)
            d.equation(f"{act}_v", sympy.Symbol("v"), v)
            d.equation(f"{act}_S", sympy.Function("S")(QU), gap, "sign of log((1+chi)/(1+v))")
        if act in ("linear", "relu"):
            d.check_true(f"{act}: S = 0, the factor is exactly 1", gap == 0)
        elif act == "erf":
            slope = S.simplify(sympy.diff(gap, QU))
            at0 = S.bounded(sympy.limit, gap, QU, 0)
            d.check_true("erf: S(0) = 0 and S'(q) > 0 for q > 0 (so log factor > 0)",
                         at0 == 0 and bool(slope.is_positive), f"S' = {slope}")
            d.equation("erf_S_slope", sympy.Derivative(sympy.Function("S")(QU), QU), slope)
        else:  # Gaussian expectations by quadrature: the sign on a grid of q_u
            vals = [S.evaluate(gap, {QU: q}) for q in (0.05, 0.3, 1.0, 3.0, 10.0)]
            d.note(f"{act}: S(q_u) at q_u = 0.05, 0.3, 1, 3, 10: "
                   + ", ".join(f"{x:.4g}" for x in vals))
            d.check_true(f"{act}: S(q_u) > 0 on the grid (log factor > 0)", min(vals) > 0)
        # against the numeric engine: per-block log factor from the stationary state
        if act in S.CLOSED_FORM_ACTS:
            values = S.random_sweeps(["alpha", "sigma_1", "sigma_2"], seed=4)
            tol = 1e-10
        else:
            values, tol = {"alpha": 0.8, "sigma_1": 1.3, "sigma_2": 0.9}, 1e-9
        ds = S.theory_of(blk, DEPTH, x0, eps=0, sigma_b=0, beta=1, ratio=1, gain=1.2, **values)
        scalars = {k: v for k, v in values.items() if not isinstance(v, sp.Sweep)}
        pred = S.on_dataset(DEPTH * sympy.log(F), ds, gain=1.2, **scalars)
        actual = ds.log_grad_q.isel(layer=0) - ds.log_grad_q.isel(layer=-1)
        err = float(np.max(np.abs((pred - actual).values)))
        d.check(f"{act}: log(g_0/g_L) = L log F vs sp.theory ({DEPTH} blocks; abs err, "
                f"tol {tol:g} x L)", err, tol * DEPTH)
    # alpha = 1/sqrt(L): (F at alpha^2 = 1/L)^L -> exp(chi_1 - v_1)
    for act in ("erf",) if "erf" in S.available_acts(quick=quick) else ():
        _, F, chi, v = factor_parts(act)
        expo = S.bounded(sympy.limit, S.L * sympy.log(F.subs(S.ALPHA, 1 / sympy.sqrt(S.L))),
                         S.L, sympy.oo)
        want = (chi - v).subs(S.ALPHA, 1)
        d.check_true(f"{act}, alpha = 1/sqrt(L): L log F -> chi_1 - v_1",
                     not isinstance(expo, S.TimedOut) and S.is_zero(expo - want), str(expo))
        d.equation(f"{act}_sqrtL_limit", S.G_0 / S.G_L, sympy.exp(want),
                   "alpha = 1/sqrt(L), L -> infinity")
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
