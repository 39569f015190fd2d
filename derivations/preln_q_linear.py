"""Pre-LN and Peri-LN: the stream's second moment grows linearly in depth.

Pre-LN block x -> x + alpha F(LN x) with eps = 0: LN x has second moment gain^2 whatever x is,
the branch ends in a Dense (mean 0, decoupled from the stream), so

    q_{l+1} = q_l + rho,   rho = alpha^2 (sigma_2^2 E[phi(u)^2] + sigma_b^2),
    u ~ N(0, sigma_1^2 gain^2 + sigma_b^2),     m_{l+1} = m_l,

hence q_l = q_0 + l rho (rsolve). For the preset's ReLU branch (sigma_1^2 = 2, sigma_2 = 1,
gain 1) rho = alpha^2: q_L = q_0 + L alpha^2. Peri-LN (x -> x + alpha LN(F(LN x))) normalises
the branch output as well, so rho = alpha^2 gain^2 for every activation.
"""

import sys

import numpy as np

import sigprop as sp
from sigprop import symbolic as S

NAME = "preln_q_linear"
DEPTH = 40  # agreement with sp.theory is exact (closed-form kernels): any depth will do


def rho_of(preset, act):
    """(block, rho) with q' = q + rho; raises if the step is not a q-independent shift."""
    blk = S.preset_block(preset, act, eps=0, sigma_b=0, beta=1, ratio=1)
    fwd = S.block_map(blk, 1)
    rho = S.simplify(fwd["q_a"] - S.Q_A)
    return blk, fwd, rho


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "Pre-LN / Peri-LN: q_l = q_0 + l rho (eps = 0)")
    x0 = sp.Inputs(q=[0.7, 2.3], mean=[0.2, -0.5], corr=0.3)
    q0 = np.asarray(x0.q)
    import xarray as xr

    env = {"q_0": xr.DataArray(q0, dims="input")}
    for preset in ("preln", "periln"):
        for act in S.available_acts(quick=quick):
            blk, fwd, rho = rho_of(preset, act)
            tag = f"{preset}_{act}"
            d.check_true(f"{tag}: step is q + rho with rho free of (q, m)",
                         not rho.has(S.Q_A, S.M_A), str(rho))
            d.check_true(f"{tag}: mean is carried unchanged", S.simplify(fwd["m_a"] - S.M_A) == 0)
            sol = S.solve_depth(fwd["q_a"], S.Q_A, S.Q0)
            d.check_true(f"{tag}: closed form found and satisfies the recursion",
                         sol.found and sol.residual_zero, sol.method)
            if not sol.found:
                continue
            if act in ("relu", "linear", "tanh") or preset == "preln" and act == "erf":
                d.equation(tag, S.Q_l, sol.closed, f"{preset}, {act} branch")
            # agreement with the numeric engine at random parameter points
            if act in S.CLOSED_FORM_ACTS:
                values = S.random_sweeps(["alpha", "sigma_1", "sigma_2", "gain"], seed=1)
            else:  # expectations by quadrature: one point
                values = {"alpha": 0.8, "sigma_1": 1.3, "sigma_2": 0.9, "gain": 1.2}
            ds = S.theory_of(blk, DEPTH, x0, eps=0, sigma_b=0, beta=1, ratio=1, **values)
            pred = S.on_dataset(sol.closed, ds, **env, **{k: v for k, v in values.items()
                                                          if not isinstance(v, sp.Sweep)})
            tol = 1e-10 if act in S.CLOSED_FORM_ACTS else 1e-9  # quadrature ~1e-10 each side
            d.check(f"{tag}: q_l vs sp.theory ({DEPTH} blocks, {ds.q.size // (DEPTH + 1)} "
                    "points)", S.rel_error(pred, ds.q), tol)
            d.check(f"{tag}: mean vs sp.theory", np.max(np.abs(ds["mean"].values
                                                               - np.asarray(x0.mean))), 1e-12)
    missing = set(S.CLOSED_FORM_ACTS + S.INTEGRAL_ACTS) - set(S.available_acts())
    if missing:
        d.note(f"activations not available, not derived: {sorted(missing)}")
    # the preset's ReLU branch: rho = alpha^2 (independent derivation in the module docstring)
    _, _, rho = rho_of("preln", "relu")
    defaults = S.preset_defaults("preln", "relu")
    rho_default = S.simplify(rho.subs({S.SIGMA_1: defaults[S.SIGMA_1],
                                       S.SIGMA_2: defaults[S.SIGMA_2], S.GAIN: 1}))
    d.equation("preln_relu_default", S.Q_L, S.Q0 + S.L * rho_default,
               "preset ReLU branch, sigma_1^2 = 2, sigma_2 = 1, gain = 1")
    d.check_true("preln relu default: rho = alpha^2", S.simplify(rho_default - S.ALPHA**2) == 0)
    if slow:
        blk, _, rho = rho_of("preln", "relu")
        n = 10000
        ds = S.theory_of(blk, n, sp.Inputs(q=1.0), eps=0, sigma_b=0, beta=1, ratio=1,
                         alpha=0.3, sigma_1=2**0.5, sigma_2=1.0, gain=1.0)
        d.check(f"preln relu: q_L = q_0 + L alpha^2 at L = {n}",
                S.rel_error(1.0 + 0.09 * n, ds.q.values[-1]), 1e-10)
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
