"""Unnormalised ResNet (and SkipInit): geometric growth of q and of the gradient.

Block x -> x + alpha F(x) with no normalisation. The branch ends in a Dense, so
m_{l+1} = m_l and, with a ReLU mlp branch,

    q_{l+1} = (1 + r) q_l + s,  r = alpha^2 sigma_1^2 sigma_2^2 / 2,
    s = alpha^2 sigma_b^2 (1 + sigma_2^2 / 2),

so q_l = (q_0 + s/r)(1 + r)^l - s/r (rsolve), q_L = q_0 (1 + alpha^2 sigma_1^2 sigma_2^2/2)^L
without biases; linear: r = alpha^2 sigma_1^2 sigma_2^2. Backward g_l = g_{l+1}(1 + r) (ReLU:
E[relu'^2] = 1/2 whatever the scale), so g_0/g_L = (1 + r)^L. SkipInit is alpha = 0 (q_l = q_0)
or small alpha (the same law). A saturating branch (erf, tanh, ...) gives a recursion with no
closed form; it is reported as such, recursion included.
"""

import sys

import numpy as np
import sympy
import xarray as xr

import sigprop as sp
from sigprop import symbolic as S

NAME = "resnet_growth"
DEPTH = 40


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "ResNet without normalisation: q_l and g_0/g_L in closed form")
    x0 = sp.Inputs(q=[0.7, 2.3], mean=[0.2, -0.5], corr=0.3)
    q0 = xr.DataArray(np.asarray(x0.q), dims="input")
    for act in S.available_acts(quick=quick):
        blk = S.preset_block("resnet", act, beta=1, ratio=1)
        fwd = S.block_map(blk, 1)
        d.check_true(f"{act}: mean carried unchanged", S.simplify(fwd["m_a"] - S.M_A) == 0)
        sol = S.solve_depth(fwd["q_a"], S.Q_A, S.Q0)
        if not sol.found:
            d.note(f"{act}: no closed form in depth; recursion q_(l+1) = {fwd['q_a']}")
            d.equation(f"{act}_recursion", sympy.Symbol("q_{l+1}"),
                       fwd["q_a"].subs(S.Q_A, sympy.Symbol("q_l", positive=True)),
                       "no closed form")
            continue
        d.check_true(f"{act}: closed form satisfies the recursion", sol.residual_zero, sol.method)
        d.equation(f"{act}_q", S.Q_l, sol.closed, "with biases")
        # gradient: the backward factor is state independent for degree-1 activations
        F = S.simplify(S.backward_map(blk, 1)["grad_q_a"] / S.G_A)
        d.check_true(f"{act}: backward factor independent of the state", not F.has(S.Q_A, S.M_A))
        ratio = S.depth_product(F)
        d.equation(f"{act}_grad", S.G_0 / S.G_L, ratio)
        values = S.random_sweeps(["alpha", "sigma_1", "sigma_2", "sigma_b"], seed=5)
        ds = S.theory_of(blk, DEPTH, x0, beta=1, ratio=1, **values)
        d.check(f"{act}: q_l vs sp.theory ({DEPTH} blocks, 32 points)",
                S.rel_error(S.on_dataset(sol.closed, ds, q_0=q0), ds.q), 1e-10)
        g = ds.grad_q.isel(layer=0) / ds.grad_q.isel(layer=-1)
        d.check(f"{act}: g_0/g_L vs sp.theory", S.rel_error(
            S.on_dataset(ratio.subs(S.L, DEPTH), ds), g), 1e-10)
        if act == "relu":
            no_bias = S.simplify(sol.closed.subs(S.SIGMA_B, 0))
            want = S.Q0 * (1 + S.ALPHA**2 * S.SIGMA_1**2 * S.SIGMA_2**2 / 2) ** S.l
            d.check_true("relu, sigma_b = 0: q_l = q_0 (1 + alpha^2 sigma_1^2 sigma_2^2/2)^l",
                         S.is_zero(no_bias - want))
            d.equation("relu_no_bias", S.Q_L, want.subs(S.l, S.L))
            d.check_true("skipinit (alpha = 0): q_l = q_0", no_bias.subs(S.ALPHA, 0) == S.Q0)
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
