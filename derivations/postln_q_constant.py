"""Post-LN: the stream's second moment is pinned by the final LayerNorm.

Block x -> LN(x + alpha F(x)). LN output has mean 0 and second moment gain^2 v / (v + eps),
v the variance of the residual sum. With eps = 0, q_l = gain^2 for every l >= 1, whatever the
activation and the input. With eps > 0 and a ReLU (or linear) branch at zero mean,
v = q (1 + r), r = alpha^2 sigma_1^2 sigma_2^2 / 2 (ReLU), and

    1/q_{l+1} = 1/gain^2 + eps / (gain^2 (1 + r)) * 1/q_l,

linear in 1/q_l (rsolve on the reciprocal): q_l -> q* = gain^2 - eps / (1 + r) geometrically,
at rate eps / (gain^2 (1 + r)) per block.
"""

import sys

import numpy as np
import sympy
import xarray as xr

import sigprop as sp
from sigprop import symbolic as S

NAME = "postln_q_constant"
DEPTH = 40


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "Post-LN: q_l = gain^2 (eps = 0); eps > 0 ReLU closed form")
    x0 = sp.Inputs(q=[0.7, 2.3], mean=[0.2, -0.5], corr=0.3)
    for act in S.available_acts(quick=quick):
        blk = S.preset_block("postln", act, eps=0, sigma_b=0, beta=1, ratio=1)
        fwd = S.block_map(blk, 1)
        d.check_true(f"{act}: q' = gain^2 and m' = 0 for any input state (eps = 0)",
                     S.simplify(fwd["q_a"] - S.GAIN**2) == 0 and fwd["m_a"] == 0, str(fwd["q_a"]))
        values = {"alpha": 0.8, "sigma_1": 1.3, "sigma_2": 0.9, "gain": 1.2}
        ds = S.theory_of(blk, DEPTH, x0, eps=0, sigma_b=0, beta=1, ratio=1, **values)
        d.check(f"{act}: q_l = gain^2 vs sp.theory, l = 1..{DEPTH}",
                S.rel_error(1.2**2, ds.q.isel(layer=slice(1, None))), 1e-12)
    d.equation("eps0", S.Q_l, S.GAIN**2, "l >= 1, eps = 0, any activation")

    for act in ("relu", "linear"):
        blk = S.preset_block("postln", act, sigma_b=0, beta=1, ratio=1)
        step = S.block_map(blk, 1, mean=False)["q_a"]
        sol = S.solve_depth(step, S.Q_A, S.Q0)
        d.check_true(f"{act}, eps > 0: closed form (reciprocal) satisfies the recursion",
                     sol.found and sol.residual_zero, sol.method)
        d.check_true(f"{act}, eps > 0: 1/q obeys an affine recursion",
                     sol.transform == "reciprocal")
        theta, pstar = S.simplify(sol.a), S.simplify(sol.b / (1 - sol.a))
        geometric = pstar + (1 / S.Q0 - pstar) * theta**S.l
        d.check_true(f"{act}, eps > 0: 1/q_l = p* + (1/q_0 - p*) theta^l equals rsolve's form",
                     S.is_zero(1 / sol.closed - geometric))
        d.equation(f"{act}_eps", 1 / S.Q_l, geometric, f"{act} branch, zero mean")
        d.equation(f"{act}_rate", sympy.Symbol("theta"), theta, "q_l -> q* iff theta < 1")
        d.equation(f"{act}_fixed_point", sympy.Symbol("q^*"), S.simplify(1 / pstar))
        d.check_true(f"{act}, eps > 0: q* is a fixed point of the block map",
                     S.is_zero(step.subs(S.Q_A, 1 / pstar) - 1 / pstar))
        values = S.random_sweeps(["alpha", "sigma_1", "sigma_2", "gain"], seed=3)
        values["eps"] = sp.sweep("eps", [0.01, 0.4])
        xz = sp.Inputs(q=[0.7, 2.3], corr=0.3)
        ds = S.theory_of(blk, DEPTH, xz, sigma_b=0, beta=1, ratio=1, **values)
        pred = S.on_dataset(sol.closed, ds, q_0=xr.DataArray(np.asarray(xz.q), dims="input"))
        d.check(f"{act}, eps > 0: q_l vs sp.theory ({DEPTH} blocks, 64 points)",
                S.rel_error(pred, ds.q), 1e-10)
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
