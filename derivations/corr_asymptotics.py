"""ReLU correlation near the fixed point c* = 1: power law or logarithm, per preset.

The normalised ReLU correlation map (arc-cosine kernel, from the ops' own law) is
f(c) = (sqrt(1 - c^2) + (pi - acos c) c) / pi, and near c = 1, e = 1 - c,

    1 - f(1 - e) = e - A e^{3/2} - sqrt(2) e^{5/2} / (30 pi) + ...,   A = 2 sqrt(2) / (3 pi).

Every preset with a ReLU mlp branch (sigma_b = 0, eps = 0) maps c_{l+1} = c_l + h (f(c_l) - c_l):
plain h = 1; resnet and Post-LN h = r / (1 + r), r = alpha^2 sigma_1^2 sigma_2^2 / 2; Pre-LN
h_l = rho / (q_l + rho) (q_l = q_0 + l rho), Peri-LN the same with rho = alpha^2 gain^2. With
u = (1 - c)^{-1/2}, u_{l+1} - u_l = h A/2 + 3 h^2 A^2 / (8 u) + O(u^{-2}), hence

    constant h:  u_l = (h A/2) l + (3 h A/4) log l + O(1),  1 - c_l ~ 9 pi^2 / (2 h^2 l^2);
    Pre-LN:      u_l = u_0 + (A/2)(psi(x_0 + l + 1) - psi(x_0 + 1)) + O(1), x_0 = q_0 / rho,
                 so 1 - c_l ~ 9 pi^2 / (2 log^2 l)  (logarithmic, whatever alpha and q_0).
                 The stored law ``<preset>_law`` is the digamma form (the leading log-law,
                 ``<preset>_leading``, overestimates 1 - c_l several-fold at l <= 10^3).

Checked against float64 iterations of the exact maps (10^4 blocks by default, 10^6 slow) and
against sp.theory (400 blocks by default, 10^4 slow): D_l = u_l - (derived law) must converge,
|D(N) - D(N/10)| within the derived next-order remainder.
"""

import math
import sys

import numpy as np
import scipy.special
import sympy

import sigprop as sp
from sigprop import symbolic as S

NAME = "corr_asymptotics"
H = sympy.Symbol("h", positive=True)
RHO = sympy.Symbol("rho", positive=True)
C0 = 0.5  # initial correlation of the two inputs
DEFAULTS = {"alpha": 1.0, "sigma_1": math.sqrt(2.0), "sigma_2": 1.0, "gain": 1.0}
CASES = {  # preset: (fixed values, extra alpha points)
    "plain": ({}, ()),
    "resnet": ({"beta": 1}, (0.5,)),
    "postln": ({"beta": 1, "eps": 0}, (0.5,)),
    "preln": ({"beta": 1, "eps": 0}, (0.5,)),
    "periln": ({"beta": 1, "eps": 0}, ()),
}


def maps(preset):
    """(block, c-map at q_a = q_b = q, q-map) of the preset, ReLU mlp branch."""
    blk = S.preset_block(preset, "relu", sigma_b=0, ratio=1, **CASES[preset][0])
    fwd = S.block_map(blk, 2, mean=False)
    return blk, fwd["c_ab"].subs(S.Q_B, S.Q_A), fwd["q_a"]


T_SWITCH = 0.05  # below it E(t)/t^2 comes from its Taylor polynomial (no cancellation)
SERIES_ORDER = 16  # truncation (t/sqrt 2)^16 < 1e-20 at t = T_SWITCH


def ratio_series(E):
    """Coefficients of E(t)/t^2 = sum_k a_k t^k, k < SERIES_ORDER (a_0 = 1)."""
    ser = S.bounded(lambda: sympy.series(E / S.SQRT_ONE_MINUS_C**2, S.SQRT_ONE_MINUS_C, 0, SERIES_ORDER).removeO())
    failed = isinstance(ser, S.TimedOut)
    if failed:
        raise RuntimeError(f"series of the e-map: {ser.reason}")
    ser = sympy.expand(ser)
    return [S.simplify(ser.coeff(S.SQRT_ONE_MINUS_C, k)) for k in range(SERIES_ORDER)]


def iterate(E, coeffs, qstep, params, n, q0=1.0, c0=C0):
    """Float64 iteration of u = (1 - c)^{-1/2}: u' = u (E(t)/t^2)^{-1/2}, t = 1/u; q' = qstep(q).

    Below T_SWITCH E(t)/t^2 is its Taylor polynomial: it carries 1 - hA t + ... to full relative
    precision, so rounding stays ~1e-16 of u per block even at 10^6 blocks (the closed form
    would lose 1e-16 / t of it to cancellation). Returns (e_l, q_l), l = 0..n.
    """
    e_fn = sympy.lambdify((S.Q_A, S.SQRT_ONE_MINUS_C), (E / S.SQRT_ONE_MINUS_C**2).subs(params), "math")
    a_fn = [sympy.lambdify(S.Q_A, a.subs(params), "math") for a in coeffs or ()]
    # the stream's q matters only where the map depends on it (Pre-/Peri-LN); elsewhere it may
    # grow geometrically (resnet), so it is not iterated
    q_fn = sympy.lambdify(S.Q_A, qstep.subs(params) if E.has(S.Q_A) else S.Q_A, "math")
    u, q = np.empty(n + 1), np.empty(n + 1)
    u[0], q[0] = (1 - c0) ** -0.5, q0
    a = [fn(q0) for fn in a_fn]
    for k in range(n):
        t = 1 / u[k]
        if a_fn and t < T_SWITCH:
            if k and q[k] != q[k - 1]:
                a = [fn(q[k]) for fn in a_fn]
            r = 0.0
            for ak in reversed(a):
                r = r * t + ak
        else:
            r = e_fn(q[k], t)
        u[k + 1] = u[k] / math.sqrt(r)
        q[k + 1] = q_fn(q[k])
    return u ** -2.0, q


def rounding_tol(e, n):
    """Relative error of 1 - c after n float64 blocks: c holds 1.1e-16 absolute per block and
    the kernel's sqrt(1 - c^2) turns it into ~1.1e-16 / sqrt(2 e) on the next c; as a random
    walk over n blocks: sqrt(n) 1.1e-16 / (sqrt(2) e^{3/2}), plus 1e-12."""
    return math.sqrt(n) * 1.1e-16 / (math.sqrt(2) * e**1.5) + 1e-12


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "ReLU: 1 - c_l per preset (power law or logarithm) and constants")
    f = S.corr_map("relu")
    d.check_true("f(c) depends on c only", f.free_symbols == {S.C_AB}, str(f))
    expansion = S.near_one(f, order=7)
    eps = S.ONE_MINUS_C
    A = -expansion.coeff(eps ** sympy.Rational(3, 2))
    d.equation("f_near_one", 1 - sympy.Function("f")(1 - eps), expansion, "+ O(e^{7/2})")
    d.check_true("1 - f(1 - e) = e - A e^{3/2} + O(e^{5/2}) with A = 2 sqrt(2)/(3 pi)",
                 S.simplify(A - 2 * sympy.sqrt(2) / (3 * sympy.pi)) == 0
                 and expansion.coeff(eps, 1) == 1 and expansion.coeff(eps**2) == 0)
    a_h = S.increment_series(expansion, H, order=3)
    a0_1 = a_h[0].subs(H, 1)
    n_it = 10**6 if slow else 10**4
    n_th = 10000 if slow else 200 if quick else 400
    for preset, (fixed, extra_alpha) in CASES.items():
        blk, cmap, qmap = maps(preset)
        h = S.simplify(S.factor_roots((cmap - S.C_AB) / (f - S.C_AB)))
        d.check_true(f"{preset}: c' = c + h (f(c) - c) with h free of c", not h.has(S.C_AB),
                     str(h))
        d.check_true(f"{preset}: c* = 1 is a fixed point", S.simplify(cmap.subs(S.C_AB, 1)) == 1)
        const = not h.has(S.Q_A)
        rho = S.simplify(qmap - S.Q_A)
        # e-map with symbolic hyperparameters: its O(1) terms cancel exactly here (with float
        # parameters they would leave ~1e-16 per block, which 10^6 blocks turn into 1e-10)
        E_sym = S.eps_map(cmap)
        d.check_true(f"{preset}: the e-map has no O(1) term (E(t = 0) = 0 exactly)",
                     S.simplify(E_sym.subs(S.SQRT_ONE_MINUS_C, 0)) == 0, str(E_sym.subs(S.SQRT_ONE_MINUS_C, 0)))
        coeffs = None  # 10^4 blocks: the closed form keeps enough digits (t > 1e-3)
        if slow:
            coeffs = ratio_series(E_sym)
            d.check_true(f"{preset}: E(t)/t^2 = 1 - h A t + O(t^2)", S.is_zero(coeffs[0] - 1)
                         and S.is_zero(coeffs[1] + h * A), str(coeffs[:2]))
        if const:
            a0, b = (x.subs(H, h) for x in S.log_law(expansion, H))
            K = S.simplify(1 / a0**2)
            d.equation(f"{preset}_h", sympy.Symbol("h"), h)
            d.equation(f"{preset}_law", 1 - sympy.Symbol("c_l"), K / S.l**2,
                       "l -> infinity; u_l = a_0 l + b log l + O(1)")
            d.equation(f"{preset}_log_coefficient", sympy.Symbol("b_log"), b)
        else:
            d.check_true(f"{preset}: h = rho / (q + rho), q' = q + rho",
                         not rho.has(S.Q_A) and S.is_zero(h - rho / (S.Q_A + rho)), str(h))
            # the law the checks below verify (u_l to O(1)): 1 - c_l = u_l^{-2} with
            # u_l = u_0 + (A/2)(psi(x_0 + l + 1) - psi(x_0 + 1)), x_0 = q_0 / rho; its
            # leading term 9 pi^2 / (2 log^2 l) is reached only logarithmically (at l = 10^3
            # it is still ~4x the law), so the digamma form is what the figure draws
            x0 = S.Q0 / rho
            u_law = (1 - S.C0) ** sympy.Rational(-1, 2) + a0_1 * (
                sympy.digamma(x0 + S.l + 1) - sympy.digamma(x0 + 1))
            X0 = sympy.Symbol("x_0", positive=True)
            d.equation(f"{preset}_h", sympy.Symbol("h_l"), RHO / (S.Q_l + RHO), "q = q_l")
            d.equation(f"{preset}_rho", RHO, rho, "q_{l+1} = q_l + rho")
            d.equation(f"{preset}_u", sympy.Symbol("u_l"), u_law.subs(x0, X0),
                       "1 - c_l = u_l^(-2) up to a bounded error in u_l; x_0 = q_0 / rho")
            d.equation(f"{preset}_law", 1 - sympy.Symbol("c_l"), u_law**-2,
                       "the same law in the branch parameters (drawn in the figure)")
            d.equation(f"{preset}_leading", 1 - sympy.Symbol("c_l"),
                       S.simplify(1 / a0_1**2) / sympy.log(S.l) ** 2, "l -> infinity")
        for alpha in (1.0,) + (() if quick else extra_alpha):
            params = {S.SYMBOLS[k]: v for k, v in {**DEFAULTS, "alpha": alpha}.items()}
            tag = f"{preset} (alpha = {alpha:g})"
            e, q = iterate(E_sym, coeffs, qmap, params, n_it)
            u = e ** -0.5
            ls = np.arange(n_it + 1, dtype=float)
            l1, l2 = n_it // 10, n_it
            if const:
                a0n, bn = float(a0.subs(params)), float(b.subs(params))
                D = u - a0n * ls - bn * np.log(np.maximum(ls, 1))
                R = bn / a0n * (bn * (math.log(l1) + 1) + abs(D[l2])) / l1
                d.check(f"{tag}: u_l - a0 l - b log l converges, |D({l2}) - D({l1})| "
                        "(tol: 2 x derived O(log l / l) remainder)",
                        D[l2] - D[l1], 2 * R + 1e-12 * u[l2])
                d.check(f"{tag}: l^2 (1 - c_l) at l = {l2} vs the constant {float(1 / a0n**2):.6g} "
                        "(tol: the derived relative correction 2 (b log l + |D|) / (a0 l))",
                        l2**2 * e[l2] * a0n**2 - 1,
                        3 * (bn * math.log(l2) + abs(D[l2])) / (a0n * l2))
            else:
                rho_n = float(rho.subs(params))
                x0 = q[0] / rho_n
                S_l = scipy.special.digamma(x0 + ls + 1) - scipy.special.digamma(x0 + 1)
                D = u - u[0] - float(a0_1) * S_l
                hk = rho_n / q[l1 + 1:l2 + 1]
                a1 = sympy.lambdify(H, a_h[1])(hk)
                a2 = sympy.lambdify(H, a_h[2])(hk)
                R = float(np.sum(np.abs(a1) / u[l1:l2] + np.abs(a2) / u[l1:l2] ** 2))
                d.check(f"{tag}: u_l - u_0 - (A/2)(psi(x0+l+1) - psi(x0+1)) converges, "
                        f"|D({l2}) - D({l1})| (tol: 2 x derived next-order sum)",
                        D[l2] - D[l1], 2 * R + 1e-12 * u[l2])
                law_fn = sympy.lambdify(S.l, u_law.subs({**params, S.Q0: q[0], S.C0: C0}),
                                        "scipy")
                d.check(f"{tag}: the stored law {preset}_law is the checked u_l (relative)",
                        float(law_fn(l2)) / (u[0] + float(a0_1) * S_l[l2]) - 1, 1e-12)
                d.note(f"{tag}: 1 - c_l at l = {l2}: iterated {e[l2]:.4g}, digamma law "
                       f"{float(law_fn(l2)) ** -2:.4g}, leading log-law "
                       f"{float(1 / a0_1**2) / math.log(l2) ** 2:.4g}")
                d.note(f"{tag}: log^2(l) (1 - c_l) at l = {l2}: {math.log(l2)**2 * e[l2]:.4g} "
                       f"(-> {float(1 / a0_1**2):.4g} only logarithmically; u_l - (A/2) log l "
                       f"= {u[l2] - float(a0_1) * math.log(l2):.4g})")
            if alpha != 1.0:
                continue
            # the numeric engine: same trajectory, same law
            x_in = sp.Inputs(q=1.0, corr=C0, n=2)
            vals = {k: v for k, v in DEFAULTS.items()}
            ds = S.theory_of(blk, n_th, x_in, sigma_b=0, ratio=1, **fixed, **vals)
            e_th = 1 - ds.corr.values[:, 0, 1]
            dev = abs(e_th[n_th] / e[n_th] - 1)
            d.check(f"{preset}: sp.theory 1 - c_l vs the iterated map at l = {n_th} (relative; "
                    "tol: float64 rounding random walk)", dev, rounding_tol(e[n_th], n_th))
            u_th = e_th ** -0.5
            m1, m2 = n_th // 10, n_th
            if const:
                lt = np.arange(n_th + 1, dtype=float)
                D_th = u_th - a0n * lt - bn * np.log(np.maximum(lt, 1))
                R = bn / a0n * (bn * (math.log(m1) + 1) + abs(D_th[m2])) / m1
            else:
                D_th = u_th - u_th[0] - float(a0_1) * S_l[:n_th + 1]
                hk = rho_n / q[m1 + 1:m2 + 1]
                R = float(np.sum(np.abs(sympy.lambdify(H, a_h[1])(hk)) / u_th[m1:m2]
                                 + np.abs(sympy.lambdify(H, a_h[2])(hk)) / u_th[m1:m2] ** 2))
            d.check(f"{preset}: the law on sp.theory, |D({m2}) - D({m1})| (tol: 2 x remainder "
                    "+ the theory's measured rounding, u dev)", D_th[m2] - D_th[m1],
                    2 * R + u_th[m2] * dev + 1e-12 * u_th[m2])
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
