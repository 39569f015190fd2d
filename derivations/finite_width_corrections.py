"""First-order finite-width corrections of a plain net Dense -> Act, in closed form.

The realised output Gram of a layer of width N is F(K) + xi: F the layer's infinite-width law
(the ops' own theory_forward over sympy), xi the mean of N i.i.d. feature terms, Cov xi =
Sigma / N with Sigma from the fourth moments of phi (sigprop.symbolic.finite_width). The delta
method (sympy derivatives of F) carries E delta = b/N, Cov delta = C/N from layer to layer:
b' = J b + H:C / 2, C' = J C J^T + Sigma. Per layer, from an exact input, E log q gains
-kappa/(2N) and Var log q gains kappa/N, kappa = E[phi^4] / E[phi^2]^2 - 1: 5 for relu,
2 for linear (Hanin & Nica; Wishart), a Gaussian integral for erf. For degree-1 activations
log q_{l+1} - log q_l does not depend on q, so the corrections add over depth:
E log q_L = log q_L,inf - kappa L / (2N), Var log q_L = kappa L / N. For two inputs the
correlation's per-layer bias and variance follow the same way (linear: Olkin-Pratt,
-c (1 - c^2) / (2N) and (1 - c^2)^2 / N). Checked against sp.theory(width=...)'s
central-difference engine (sigprop.engines.finite_width.coefficients).

The weight gradient of a linear block x -> W_2 W_1 x (widths N -> rN -> N) on Gaussian inputs,
from its definition (sigprop.symbolic.finite_width.linear_block_weight_gradient): E W is exact
and N Var log W = 4 + 2 (sigma_2^4 + r^2 sigma_1^4) / (r (sigma_2^2 + r sigma_1^2)^2), the two
Denses' terms correlated through the shared input and output cotangent. Checked against the
engine's tangent walk (sigprop.engines.finite_width.gradient_coefficient, weights=True).
"""

import sys

import numpy as np
import sympy

import sigprop as sp
from sigprop import presets
from sigprop import symbolic as S
from sigprop.engines import finite_width as fw
from sigprop.kernels.gaussian import get_activation
from sigprop.symbolic import finite_width as F

NAME = "finite_width_corrections"
DEPTH = 3  # layers of the recursion checked against the engine
TOL = 1e-5  # the engine's central differences: truncation STEP^2 = 1e-6 relative to the terms
# of the delta step (J b, H:C ~ the variance coefficient v), times a few per layer; quadrature
# (polar rule, 1e-12) and mpmath's integral are far below. Errors are |symbolic - engine| /
# max(|a|, |v|, 1): the corr bias is a small difference of O(v) terms.
KNOWN = {"relu": 5, "linear": 2}  # kappa: Hanin & Nica (relu), the Wishart chi^2 (linear)
BLOCKS = [(1.0, 1.0, 1.0, 1.0), (1.0, 1.3, 2.0, 1.2), (0.7, 1.1, 0.5, 0.8)]  # sigma_1, sigma_2,
# r, q_a of the linear blocks whose weight gradient is checked against the engine


def engine_rows(act, s1, inputs):
    c = fw.coefficients(presets.plain(DEPTH, act, shape="dense_act", sigma_w1=s1), inputs)[0]
    out = [{"log_q": (c["log_q"][k, 0], c["var_log_q"][k, 0])} for k in range(DEPTH + 1)]
    if inputs.n == 2:
        for k, row in enumerate(out):
            row["corr"] = (c["corr"][k, 0, 1], np.nan)  # the engine reports Var of log q only
    return out


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "Finite width: first-order corrections of a plain Dense -> Act net")
    c = S.C_AB
    for act in ("relu", "linear", "erf"):
        B = 2 if get_activation(act).degree == 1 else 1
        blk = S.preset_block("plain", act, shape="dense_act", sigma_b=0)
        law1 = F.layer_law(blk, 1)
        one = F.one_layer(law1)["log_q"]
        kappa = S.simplify(one[1])
        lhs = sympy.Symbol(r"\kappa_{\mathrm{" + act + "}}")
        if kappa.has(sympy.Integral):  # typeset with the integral named, s = sigma_1^2 q_a
            moment, s = sympy.Symbol("M_4", positive=True), sympy.Symbol("s", positive=True)
            shown = kappa.xreplace({e: moment for e in kappa.atoms(sympy.Integral)})
            d.equation(f"{act}_kappa", lhs, shown.subs(S.Q_A, s / S.SIGMA_1**2),
                       "N Var log q added per layer (one input; M_4 = E[phi(u)^4], u ~ N(0, s), "
                       "s = sigma_1^2 q_a)")
            d.equation(f"{act}_kappa_integral", lhs, kappa, "the same, integral written out")
        else:
            d.equation(f"{act}_kappa", lhs, kappa, "N Var log q added per layer (one input)")
        d.check_true(f"{act}: per-layer bias of log q is -kappa/2",
                     S.is_zero(one[0] + kappa / 2), str(one[0]))
        if act in KNOWN:
            d.check_true(f"{act}: kappa = {KNOWN[act]} (independent value)",
                         kappa == KNOWN[act], str(kappa))
            (a, v), (a1, v1) = F.in_log_coordinates(law1)
            d.check_true(f"{act}: the (a, v) map of log q is free of q and sigma_1",
                         not (a1.free_symbols | v1.free_symbols) - {a, v}, f"{a1}, {v1}")
            for sym, nxt, lhs, tex in ((a, a1, "E_log_q", r"N\,(\mathrm{E}\log q_l - \log q_l^{\infty})"),
                                       (v, v1, "Var_log_q", r"N\,\mathrm{Var}\log q_l")):
                sol = S.solve_depth(nxt, sym, 0)
                d.check_true(f"{act}: depth closed form of N {lhs} found", sol.found, sol.method)
                if sol.found:
                    d.equation(f"{act}_{lhs}", sympy.Symbol(tex), sol.closed,
                               "exact input, N -> infinity at fixed l (deviation of log q "
                               "from its infinite-width value)")
            # the polar fourth moments against the activation's own second-moment law
            qa, qb = S.Q_A, S.Q_B
            law_k = get_activation(act).kernel(qa, qb, c, sp.state.ns.SYMBOLIC)
            d.check_true(f"{act}: polar E[phi(u) phi(v)] = the kernel law",
                         S.is_zero(F.polar_moment(get_activation(act), 1, 1, qa, qb, c) - law_k))
        if B == 2:
            corr = F.one_layer(F.layer_law(blk, 2))["corr"]
            bias = sympy.Symbol(r"N\,(\mathrm{E}\,c' - c'_{\infty})")
            d.equation(f"{act}_corr_bias", bias, corr[0],
                       f"{act}: one layer from an exact input of correlation c_ab")
            d.equation(f"{act}_corr_var", sympy.Symbol(r"N\,\mathrm{Var}\,c'"), corr[1])
            d.equation(f"{act}_corr_bias_at_0", bias.subs({}), S.simplify(corr[0].subs(c, 0)),
                       f"{act}: orthogonal inputs, c_ab = 0")
            if act == "linear":
                d.check_true("linear: corr bias = -c (1 - c^2)/2 (Olkin-Pratt)",
                             S.is_zero(corr[0] + c * (1 - c**2) / 2), str(corr[0]))
                d.check_true("linear: N Var corr = (1 - c^2)^2 (Fisher)",
                             S.is_zero(corr[1] - (1 - c**2) ** 2), str(corr[1]))
            d.check_true(f"{act}: corr bias vanishes at c = 1",
                         S.is_zero(corr[0].subs(c, 1)) and S.is_zero(corr[1].subs(c, 1)))
        # against the engine, at a few points
        law = F.layer_law(blk, B) if B == 2 else law1
        for s1 in ((1.3, 0.8) if not quick else (1.3,)):
            inputs = sp.Inputs(q=[0.7, 1.3], corr=0.4) if B == 2 else sp.Inputs(q=0.7)
            x0 = (0.7, 0.4 * np.sqrt(0.7 * 1.3), 1.3) if B == 2 else (0.7,)
            sym = F.iterate(law, {S.SIGMA_1: s1, S.SIGMA_B: 0}, x0, DEPTH)
            eng = engine_rows(act, s1, inputs)
            for stat in sym[0]:
                err = max(abs(s[stat][i] - e[stat][i]) / max(abs(s[stat][0]), abs(s[stat][1]), 1)
                          for s, e in zip(sym, eng) for i in (0, 1) if np.isfinite(e[stat][i]))
                d.check(f"{act}, sigma_1 = {s1}: {stat} corrections vs the engine "
                        f"({DEPTH} layers)", err, TOL)
    weight_gradient(d)
    return d


def weight_gradient(d):
    """The linear block's weight gradient: N Var log W in closed form, E W exact, against the
    engine's walk of t = J_2 T_2 h + J_1 T_1 x at the points of BLOCKS."""
    a, v = F.linear_block_weight_gradient()
    d.equation("linear_block_weight_var", sympy.Symbol(r"N\,\mathrm{Var}\log W"),
               4 + sympy.factor(v - 4),
               "weight_grad_q W of one block x -> W_2 W_1 x (widths N -> rN -> N, r = ratio) "
               "on Gaussian inputs, its two Denses' terms correlated through x and delta")
    d.check_true("linear block: E log W = log W_inf - Var log W / 2 (E W exact)",
                 S.is_zero(a + v / 2), str(a))
    d.check_true("linear block: N Var log W of one Dense's term alone is 4 + 2 / r",
                 S.is_zero(v.subs(S.SIGMA_2, 0) - 4 - 2 / S.RATIO), str(v.subs(S.SIGMA_2, 0)))
    errors = []
    for s1, s2, r, q0 in BLOCKS:
        block = sp.Residual(sp.Serial(sp.Dense(s1, ratio=r), sp.Dense(s2, ratio=1 / r)),
                            beta=0.0)
        got = fw.gradient_coefficient(sp.Serial(block), sp.Inputs(q=q0, law="gaussian"),
                                      layers=[1], weights=True)[1]
        want = float(v.subs({S.SIGMA_1: s1, S.SIGMA_2: s2, S.RATIO: r}))
        errors += [abs(float(got.var_log_q.ravel()[0]) - want) / want,
                   abs(float(got.coef.ravel()[0]))]  # (E W exact: the engine's c is 0)
    d.check(f"linear block: N Var log W and E W vs the engine ({len(BLOCKS)} blocks)",
            max(errors), TOL)


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
