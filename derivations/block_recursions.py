"""Per-block recursions of every preset, generated from the ops' own laws.

For each preset (plain, resnet, preln, postln, periln, deepnorm, skipinit) and each closed-form
activation, the block maps the state (q, m) of one input, the correlation c of two inputs of
equal second moment q and zero mean, and the gradient g (backward factor g_l / g_{l+1}); the
hyperparameters stay symbols (alpha, beta, sigma_1, sigma_2, sigma_b, eps, gain; DeepNorm's b).
Each map is checked against one block of sp.theory at a random parameter point (1e-12).
"""

import sys

import sympy

import sigprop as sp
from sigprop import symbolic as S

NAME = "block_recursions"
PRESETS = ("plain", "resnet", "preln", "postln", "periln", "deepnorm", "skipinit")
POINT = {"alpha": 0.7, "beta": 1.3, "sigma_1": 1.2, "sigma_2": 0.8, "sigma_b": 0.3,
         "eps": 0.05, "gain": 1.4, "b": 0.6}


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "Per-block recursions (q, m, c, gradient factor) of every preset")
    q1, m1, c1, g1 = sympy.symbols("q_{l+1} m_{l+1} c_{l+1} g_{l+1}")
    g_l = sympy.Symbol("g_l")
    tidy = not quick  # quick (tests): the numeric checks only, no simplification
    ql, ml, cl = S.Q_l, sympy.Symbol("m_l", real=True), sympy.Symbol("c_l", real=True)
    to_l = {S.Q_A: ql, S.M_A: ml, S.C_AB: cl}
    for act in S.available_acts(acts=("relu",) if quick else S.CLOSED_FORM_ACTS):
        for preset in PRESETS:
            tag = f"{preset}_{act}"
            blk = S.preset_block(preset, act, ratio=1)
            one = S.block_map(blk, 1, simplify=tidy)
            two = S.block_map(blk, 2, mean=False, simplify=False)
            cmap = S.factor_roots(two["c_ab"].subs(S.Q_B, S.Q_A))
            factor = S.backward_map(blk, 1, simplify=False)["grad_q_a"] / S.G_A
            if tidy:
                cmap, factor = S.simplify(cmap), S.simplify(factor)
            for lhs, rhs in ((q1, one["q_a"]), (m1, one["m_a"]), (c1, cmap), (g_l / g1, factor)):
                label = {q1: "q", m1: "m", c1: "c"}.get(lhs, "grad")
                d.equation(f"{tag}_{label}", lhs, rhs.xreplace(to_l), f"{preset}, {act}")
            used = {s.name for s in S.op_symbols(blk)}
            vals = {k: v for k, v in POINT.items() if k in used}
            x0 = sp.Inputs(q=[0.9, 0.9], mean=[0.3, 0.3], corr=0.35)
            ds = S.theory_of(blk, 1, x0, ratio=1, **vals)
            at = {**{S.SYMBOLS[k]: v for k, v in vals.items()}, S.Q_A: 0.9, S.M_A: 0.3}
            got = [S.evaluate(one["q_a"], at), S.evaluate(one["m_a"], at),
                   S.evaluate(factor, at)]
            want = [ds.q.values[1, 0], ds["mean"].values[1, 0],
                    ds.grad_q.values[0, 0] / ds.grad_q.values[1, 0]]
            d.check(f"{tag}: q, m, gradient factor vs one sp.theory block",
                    S.rel_error(got, want), 1e-12)
            xz = sp.Inputs(q=0.9, corr=0.35, n=2)
            dz = S.theory_of(blk, 1, xz, ratio=1, **vals)
            cz = S.evaluate(cmap, {**at, S.C_AB: 0.35})
            d.check(f"{tag}: c vs one sp.theory block (zero mean)",
                    S.rel_error(cz, dz.corr.values[1, 0, 1]), 1e-12)
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
