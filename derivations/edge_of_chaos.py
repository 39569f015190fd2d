"""Plain nets: the edge of chaos chi_1 = sigma_w^2 E[phi'(u)^2] = 1 at the fixed point q*.

Block h -> W phi(h) + b (the plain ``act_dense`` preset; the stream is the Gaussian
pre-activation). Forward q' = sigma_w^2 E[phi(u)^2] + sigma_b^2, u ~ N(0, q); the slope of the
correlation map at c = 1 is dc'/dc = sigma_w^2 E[phi'(u)^2] q / q', which at a fixed point
q' = q is chi_1 = sigma_w^2 E[phi'(u)^2] -- the same number as the backward law's gradient
factor per block. The edge of chaos is {q' = q, chi_1 = 1}, linear in (sigma_w^2, sigma_b^2)
for a given q*:

    relu:  chi_1 = sigma_w^2 / 2, a fixed point needs sigma_b = 0: the single point sigma_w^2 = 2
           (there the correlation slope is 1 for every sigma_w: the ReLU map is critical in c);
    erf:   sigma_w^2 = pi sqrt(1 + 4 q*) / 4,
           sigma_b^2 = q* - sqrt(1 + 4 q*) asin(2 q* / (1 + 2 q*)) / 2  (>= 0: Poincare, as in
           postln_grad_factor), a line from (pi/4, 0) at q* -> 0;
    gelu:  the same two linear equations with its closed-form kernels (sigprop.kernels.gaussian);
    tanh, silu: the same, with the expectations by quadrature.

On the line one block of sp.theory maps q* to q* with g_0 / g_1 = 1; over many blocks q stays
at q* only where the length map is stable there, lambda_q = dq'/dq (q*) < 1 -- true for erf and
tanh, false for gelu and silu at small q* (the q fixed point on their edge of chaos is repelling:
rounding grows like lambda_q^l), which the script reports.
"""

import sys

import sympy

import sigprop as sp
from sigprop import symbolic as S

NAME = "edge_of_chaos"
SW2 = sympy.Symbol("sigma_w^2", positive=True)
SB2 = sympy.Symbol("sigma_b^2", nonnegative=True)
QS = sympy.Symbol("q^*", positive=True)
DEPTH = 300


def laws(act):
    """(block, q-map, chi) of the plain act_dense block (sigma_1 -> sigma_w)."""
    blk = S.preset_block("plain", act, "act_dense", ratio=1)
    fwd = S.block_map(blk, 2, gaussian=True)
    chi = S.simplify(S.backward_map(blk, 1, gaussian=True)["grad_q_a"] / S.G_A)
    return blk, fwd, chi


def derive(slow=False, quick=False):
    d = S.Derivation(NAME, "Plain nets: edge of chaos chi_1 = sigma_w^2 E[phi'^2] = 1")
    sub = {S.SIGMA_1: sympy.sqrt(SW2), S.SIGMA_B: sympy.sqrt(SB2)}
    for act in S.available_acts(quick=quick):
        blk, fwd, chi = laws(act)
        qmap = S.simplify(fwd["q_a"].subs(sub))
        chi = S.simplify(chi.subs(sub))
        if act in S.CLOSED_FORM_ACTS:
            cmap = fwd["c_ab"].subs(S.Q_B, S.Q_A)
            slope = S.bounded(sympy.limit, sympy.diff(cmap, S.C_AB), S.C_AB, 1, "-")
            want = chi.subs(sub) * S.Q_A / fwd["q_a"]
            d.check_true(f"{act}: dc'/dc at c = 1 equals chi q / q' (backward factor)",
                         not isinstance(slope, S.TimedOut)
                         and S.is_zero(slope.subs(sub) - want.subs(sub)), str(slope))
        # the line: q' = q* and chi(q*) = 1, linear in (sigma_w^2, sigma_b^2)
        eqs = [qmap.subs(S.Q_A, QS) - QS, chi.subs(S.Q_A, QS) - 1]
        # (linear in the two: linsolve takes 0.7 s for gelu, where solve took 9 s of its 20)
        sol = S.bounded(sympy.linsolve, eqs, [SW2, SB2])
        if isinstance(sol, S.TimedOut) or len(sol) != 1:
            d.check_true(f"{act}: edge-of-chaos line solved", False, str(sol))
            continue
        line = {k: S.simplify(v) for k, v in zip((SW2, SB2), next(iter(sol)))}
        if act in ("relu", "linear"):
            d.note(f"{act}: chi = {chi}; line {line} (degenerate: a fixed point needs "
                   "sigma_b = 0 and q is then arbitrary)")
            d.equation(f"{act}_chi", sympy.Symbol("chi_1"), chi)
            continue
        if act == "erf":
            d.equation("erf_sigma_w2", SW2, line[SW2], "edge of chaos, parametrised by q*")
            d.equation("erf_sigma_b2", SB2, line[SB2])
            at0 = S.bounded(sympy.limit, line[SW2], QS, 0)
            d.check_true("erf: the line starts at sigma_w^2 = pi/4, sigma_b = 0",
                         at0 == sympy.pi / 4 and S.bounded(sympy.limit, line[SB2], QS, 0) == 0)
        slope_q = sympy.diff(qmap, S.Q_A)
        if act == "erf":
            lam = S.simplify(slope_q.subs(S.Q_A, QS).subs(line))
            d.equation("erf_lambda_q", sympy.Symbol("lambda_q"), lam, "dq'/dq on the line")
            d.check_true("erf: lambda_q = 1/(1 + 2 q*) < 1 (the q fixed point is attracting)",
                         S.is_zero(lam - 1 / (1 + 2 * QS)))
        for q_star in (0.5, 2.0) if slow or act in S.CLOSED_FORM_ACTS else (2.0,):
            sw2 = S.evaluate(line[SW2], {QS: q_star})
            sb2 = S.evaluate(line[SB2], {QS: q_star})
            lam = S.evaluate(slope_q, {SW2: sw2, SB2: sb2, S.Q_A: q_star})
            d.check_true(f"{act}: sigma_b^2 >= 0 on the line at q* = {q_star}", sb2 >= 0)
            depth = (50 if quick else DEPTH) if lam < 1 else 1
            d.note(f"{act}, q* = {q_star}: sigma_w^2 = {sw2:.8g}, sigma_b^2 = {sb2:.8g}, "
                   f"lambda_q = dq'/dq = {lam:.6g} ({'stable' if lam < 1 else 'repelling'})")
            ds = S.theory_of(blk, depth, sp.Inputs(q=q_star, corr=0.6, n=2, law="gaussian"),
                             ratio=1, sigma_1=sw2**0.5, sigma_b=sb2**0.5)
            tol = 1e-10 if act in S.CLOSED_FORM_ACTS else 1e-9  # quadrature ~1e-10 per block
            d.check(f"{act}, q* = {q_star}: q_l = q* over {depth} block(s)",
                    S.rel_error(q_star, ds.q), tol * depth)
            d.check(f"{act}, q* = {q_star}: g_0/g_L = 1 (chi_1 = 1) over {depth} block(s)",
                    abs(ds.log_grad_q.values[0] - ds.log_grad_q.values[-1]).max(), tol * depth)
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
