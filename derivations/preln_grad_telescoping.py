"""Pre-LN and Peri-LN: the backward pass telescopes.

Backward through one Pre-LN block (eps = 0, stream variance v_l = q_l - m_l^2):

    g_l = g_{l+1} (1 + lambda / v_l),   lambda = alpha^2 sigma_1^2 sigma_2^2 gain^2 E[phi'(u)^2],

and forward v_{l+1} = v_l + rho (see preln_q_linear). With x_0 = v_0 / rho and
kappa = lambda / rho,

    g_0 / g_L = prod_{l<L} (x_0 + l + kappa) / (x_0 + l)
              = Gamma(x_0 + L + kappa) Gamma(x_0) / (Gamma(x_0 + L) Gamma(x_0 + kappa))
              ~ L^kappa Gamma(x_0) / Gamma(x_0 + kappa)            (L -> infinity).

For ReLU (and linear) kappa = 1 and the product telescopes: g_0 / g_L = v_L / v_0 (= q_L / q_0
at zero mean). In general kappa = q_u E[phi'^2] / E[phi^2] at u ~ N(0, q_u), q_u = sigma_1^2
gain^2, which is >= 1 for odd phi (Gaussian Poincare inequality). Peri-LN: the same with
rho = alpha^2 gain^2 and lambda = kappa rho.
"""

import sys

import numpy as np
import sympy
import xarray as xr

import sigprop as sp
from sigprop import symbolic as S

NAME = "preln_grad_telescoping"
DEPTH = 40
X0, KAPPA = sympy.symbols("x_0 kappa", positive=True)
V0 = sympy.Symbol("v_0", positive=True)  # stream variance q_0 - m_0^2 at the input


def laws(preset, act):
    """(block, rho, lambda) of the Pre-/Peri-LN block with eps = 0, sigma_b = 0."""
    blk = S.preset_block(preset, act, eps=0, sigma_b=0, beta=1, ratio=1)
    rho = S.simplify(S.block_map(blk, 1)["q_a"] - S.Q_A)
    factor = S.simplify(S.backward_map(blk, 1)["grad_q_a"] / S.G_A)
    lam = S.simplify((factor - 1) * (S.Q_A - S.M_A**2))
    return blk, rho, lam


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "Pre-LN / Peri-LN gradient: Gamma-function product, ReLU telescoping")
    # the product, once, on the generic symbols (x_0, kappa)
    gamma_form = S.depth_product((X0 + S.l + KAPPA) / (X0 + S.l))
    d.check_true("product of (x0 + l + kappa)/(x0 + l) found in closed form",
                 gamma_form is not None, str(gamma_form))
    d.equation("gamma_form", S.G_0 / S.G_L, gamma_form,
               "x_0 = v_0 / rho, kappa = lambda / rho")
    asym = S.L**KAPPA * sympy.gamma(X0) / sympy.gamma(X0 + KAPPA)
    d.equation("large_L", S.G_0 / S.G_L, asym, "L -> infinity")
    log_ratio = (sympy.loggamma(X0 + S.L + KAPPA) - sympy.loggamma(X0 + S.L)
                 - KAPPA * sympy.log(S.L))
    ser = S.bounded(lambda: sympy.series(log_ratio, S.L, sympy.oo, 4).removeO())
    d.check_true("asymptotic series of the Gamma ratio", not isinstance(ser, S.TimedOut))
    ser = sympy.expand(S.simplify(ser))
    c1, c2, c3 = (S.simplify(ser.coeff(S.L, -k)) for k in (1, 2, 3))
    d.check_true("log(Gamma ratio / L^kappa) -> 0",
                 S.simplify(ser - c1 / S.L - c2 / S.L**2 - c3 / S.L**3) == 0)
    d.equation("large_L_correction", sympy.log(S.G_0 / S.G_L),
               sympy.log(asym) + c1 / S.L + c2 / S.L**2, "+ O(L^-3)")

    x0 = sp.Inputs(q=[0.7, 2.3], mean=[0.2, -0.5], corr=0.3)
    v0 = xr.DataArray(np.asarray(x0.q) - np.asarray(x0.mean) ** 2, dims="input")
    for preset in ("preln", "periln"):
        for act in S.available_acts(quick=quick):
            tag = f"{preset}_{act}"
            blk, rho, lam = laws(preset, act)
            d.check_true(f"{tag}: g_l/g_(l+1) = 1 + lambda / v_l, lambda free of (q, m)",
                         not lam.has(S.Q_A, S.M_A), str(lam))
            kappa = S.simplify(lam / rho)
            closed = gamma_form.subs({X0: V0 / rho, KAPPA: kappa})
            if act == "relu":
                v_L = V0 + S.L * rho
                d.check_true(f"{tag}: kappa = 1, telescoping g_0/g_L = v_L / v_0",
                             S.simplify(kappa - 1) == 0
                             and S.is_zero(closed - v_L / V0))
                d.equation(tag, S.G_0 / S.G_L,
                           sympy.Symbol("v_L") / sympy.Symbol("v_0"),
                           "v = q - m^2; at zero mean g_0/g_L = q_L/q_0")
            elif act not in ("linear",):
                d.equation(f"{tag}_kappa", sympy.Symbol("kappa"), kappa, f"{preset}, {act}")
            if act in S.CLOSED_FORM_ACTS:
                values = S.random_sweeps(["alpha", "sigma_1", "sigma_2", "gain"], seed=2)
                tol = 1e-10
            else:
                values, tol = {"alpha": 0.8, "sigma_1": 1.3, "sigma_2": 0.9, "gain": 1.2}, 1e-9
            ds = S.theory_of(blk, DEPTH, x0, eps=0, sigma_b=0, beta=1, ratio=1, **values)
            scalars = {k: v for k, v in values.items() if not isinstance(v, sp.Sweep)}
            pred = S.on_dataset(closed.subs(S.L, DEPTH), ds, v_0=v0, **scalars)
            ratio = ds.grad_q.isel(layer=0) / ds.grad_q.isel(layer=-1)
            d.check(f"{tag}: g_0/g_L vs sp.theory ({DEPTH} blocks)", S.rel_error(pred, ratio), tol)
    # the large-L law against a long iteration: erf Pre-LN (kappa != 1)
    if "erf" in S.available_acts(quick=quick):
        n = 10000 if slow else 300 if quick else 1000
        blk, rho, lam = laws("preln", "erf")
        vals = {"alpha": 0.7, "sigma_1": 1.4, "sigma_2": 0.8, "gain": 1.1}
        ds = S.theory_of(blk, n, sp.Inputs(q=1.5), eps=0, sigma_b=0, beta=1, ratio=1, **vals)
        sub = {X0: 1.5 / rho, KAPPA: lam / rho}
        at = {**{S.SYMBOLS[k]: v for k, v in vals.items()}}
        actual = float(ds.log_grad_q.values[0, 0] - ds.log_grad_q.values[-1, 0])
        lead = S.evaluate(sympy.log(asym).subs(sub).subs(S.L, n), at)
        corr = S.evaluate((c1 / S.L + c2 / S.L**2).subs(sub).subs(S.L, n), at)
        third = abs(S.evaluate((c3 / S.L**3).subs(sub).subs(S.L, n), at))
        d.check(f"preln erf: log(g_0/g_L) - [kappa log L + log Gamma ratio + c1/L + c2/L^2] at "
                f"L = {n} (tol: 2 |c3| / L^3 + 1e-15 L accumulated rounding)",
                actual - lead - corr, 2 * third + 1e-15 * n)
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
