"""Depth-scaled branches: alpha = 1/sqrt(L) and alpha = 1/L limits.

ResNet, ReLU mlp branch, sigma_b = 0: q_L / q_0 = g_0 / g_L = (1 + alpha^2 x)^L, x =
sigma_1^2 sigma_2^2 / 2 (resnet_growth). With alpha = 1/sqrt(L):

    q_L / q_0 = (1 + x/L)^L -> exp(x),  log(q_L/q_0) = x - x^2/(2L) + x^3/(3L^2) + O(L^-3);

with alpha = 1/L, q_L / q_0 -> 1 (log ratio ~ x / L). Pre-LN (eps = 0): q_L = q_0 + L alpha^2
rho_1 = q_0 + rho_1 for alpha = 1/sqrt(L) at every L (rho_1 = sigma_1^2 sigma_2^2 gain^2 / 2),
and g_0/g_L = v_L/v_0 = 1 + rho_1 / v_0. Peri-LN: q_L = q_0 + gain^2.
"""

import math
import sys

import sympy

import sigprop as sp
from sigprop import symbolic as S

NAME = "alpha_scaling_limits"
XS = sympy.Symbol("x", positive=True)


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "alpha = 1/sqrt(L) and 1/L limits (ResNet, Pre-LN, Peri-LN)")
    blk = S.preset_block("resnet", "relu", sigma_b=0, beta=1, ratio=1)
    step = S.block_map(blk, 1)["q_a"]
    sol = S.solve_depth(step, S.Q_A, S.Q0)
    ratio = S.simplify(sol.closed.subs(S.l, S.L) / S.Q0)
    x = S.SIGMA_1**2 * S.SIGMA_2**2 / 2
    d.check_true("resnet relu: q_L/q_0 = (1 + alpha^2 x)^L", S.is_zero(ratio - (1 + S.ALPHA**2 * x)
                                                                       ** S.L))
    for name, alpha, want in (("sqrtL", 1 / sympy.sqrt(S.L), sympy.exp(x)), ("L", 1 / S.L, 1)):
        lim = S.bounded(sympy.limit, ratio.subs(S.ALPHA, alpha), S.L, sympy.oo)
        d.check_true(f"resnet relu, alpha = 1/{name}: limit of q_L/q_0 = {want}",
                     not isinstance(lim, S.TimedOut) and S.is_zero(lim - want), str(lim))
        d.equation(f"resnet_relu_{name}", S.Q_L / S.Q0, lim, f"alpha = 1/{name}, "
                   "L -> infinity (also g_0/g_L)")
    # next orders of log(q_L/q_0) at alpha = 1/sqrt(L), on the generic x
    ser = S.bounded(lambda: sympy.series(S.L * sympy.log(1 + XS / S.L), S.L, sympy.oo, 4)
                    .removeO())
    ser = sympy.expand(ser)
    c = [ser.coeff(S.L, -k) for k in range(4)]
    d.check_true("L log(1 + x/L) = x - x^2/(2L) + x^3/(3L^2) - x^4/(4L^3) + O(L^-4)",
                 S.is_zero(ser - sum(ck / S.L**k for k, ck in enumerate(c)))
                 and S.is_zero(c[1] + XS**2 / 2))
    d.equation("resnet_relu_sqrtL_series", sympy.log(S.Q_L / S.Q0),
               (c[0] + c[1] / S.L).subs(XS, x), "+ O(L^-2), alpha = 1/sqrt(L)")
    n = 10000 if slow else 300 if quick else 1000
    sig1 = sp.sweep("sigma_1", [1.0, math.sqrt(2.0), 1.8])
    ds = S.theory_of(blk, n, sp.Inputs(q=[0.5, 2.0]), sigma_b=0, beta=1, ratio=1,
                     alpha=1 / math.sqrt(n), sigma_1=sig1, sigma_2=0.9)
    logr = ds.log_q.isel(layer=-1) - ds.log_q.isel(layer=0)
    xv = ds.sigma_1**2 * 0.81 / 2
    pred = sum(S.on_dataset(ck / S.L**k, ds, x=xv, L=n) for k, ck in enumerate(c[:3]))
    tol = abs(S.on_dataset(c[3] / S.L**3, ds, x=xv, L=n)).max()
    d.check(f"resnet relu alpha = 1/sqrt(L), L = {n}: log(q_L/q_0) - (x - x^2/(2L) + x^3/(3L^2))"
            " (tol: 2 |x^4/(4L^3)| + 1e-15 L)", abs(logr - pred).max(), 2 * float(tol) + 1e-15 * n)
    glog = ds.log_grad_q.isel(layer=0) - ds.log_grad_q.isel(layer=-1)
    d.check(f"resnet relu alpha = 1/sqrt(L), L = {n}: log(g_0/g_L) = log(q_L/q_0)",
            abs(glog - logr).max(), 1e-15 * n)
    # Pre-LN / Peri-LN: exact at every L
    for preset, rho1 in (("preln", S.SIGMA_1**2 * S.SIGMA_2**2 * S.GAIN**2 / 2),
                         ("periln", S.GAIN**2)):
        pb = S.preset_block(preset, "relu", eps=0, sigma_b=0, beta=1, ratio=1)
        qsol = S.solve_depth(S.block_map(pb, 1)["q_a"], S.Q_A, S.Q0)
        qL = S.simplify(qsol.closed.subs({S.l: S.L, S.ALPHA: 1 / sympy.sqrt(S.L)}))
        d.check_true(f"{preset}, alpha = 1/sqrt(L): q_L = q_0 + rho_1 at every L",
                     S.is_zero(qL - S.Q0 - rho1), str(qL))
        d.equation(f"{preset}_sqrtL", sympy.Symbol("q_L"), qL, "alpha = 1/sqrt(L), any L")
        ds = S.theory_of(pb, n, sp.Inputs(q=[0.5, 2.0]), eps=0, sigma_b=0, beta=1, ratio=1,
                         alpha=1 / math.sqrt(n), sigma_1=1.3, sigma_2=0.9, gain=1.1)
        want = S.on_dataset(S.Q0 + rho1, ds, q_0=ds.q.isel(layer=0), sigma_1=1.3,
                            sigma_2=0.9, gain=1.1)
        d.check(f"{preset}: q_L vs sp.theory at L = {n}", S.rel_error(want, ds.q.isel(layer=-1)),
                1e-12 * math.sqrt(n))
        g = ds.grad_q.isel(layer=0) / ds.grad_q.isel(layer=-1)
        d.check(f"{preset}: g_0/g_L = q_L/q_0 (zero mean) vs sp.theory at L = {n}",
                S.rel_error(ds.q.isel(layer=-1) / ds.q.isel(layer=0), g), 1e-12 * math.sqrt(n))
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
