"""Per-block recursions of every preset, generated from the ops' own laws, checked against an
independent reference typed from the literature.

For each preset (plain, resnet, preln, postln, periln, deepnorm, skipinit) and each closed-form
activation, the block maps the state (q, m) of one input, the correlation c of two inputs of
equal second moment q and zero mean, and the gradient g (backward factor g_l / g_{l+1}); the
hyperparameters stay symbols (alpha, beta, sigma_1, sigma_2, sigma_b, eps, gain; DeepNorm's b).

The check: each map, at a parameter point, against :func:`reference_block`, a scalar recursion
written here from the Gaussian kernels of the literature (:data:`KERNELS`) and the op
definitions of DESIGN.md, sharing no code with sigprop's ops or kernels (1e-12).
"""

import math
import sys

import sympy

from sigprop import symbolic as S

NAME = "block_recursions"
PRESETS = ("plain", "resnet", "preln", "postln", "periln", "deepnorm", "skipinit")
POINT = {"alpha": 0.7, "beta": 1.3, "sigma_1": 1.2, "sigma_2": 0.8, "sigma_b": 0.3,
         "eps": 0.05, "gain": 1.4, "b": 0.6}


# --- Gaussian kernels from the literature: (u, v) ~ N(0, [[q1, k], [k, q2]]), typed from the
# papers, never from sigprop.kernels. Each returns (E[phi(u) phi(v)], E[phi'(u) phi'(v)], E[phi(u)]).

def arccos_kernels(q1, q2, k):
    """ReLU. Cho & Saul (2009), eq. (6)-(8): k_n(x, y) = (1/pi) |x|^n |y|^n J_n(theta) for
    k_n = 2 E_w[step(w.x) step(w.y) (w.x)^n (w.y)^n], w ~ N(0, I), with J_0 = pi - theta and
    J_1 = sin theta + (pi - theta) cos theta. Their E_w carries a factor 2, so with u = w.x:
    E[relu(u) relu(v)] = k_1 / 2 = sqrt(q1 q2) J_1(theta) / (2 pi) (= q/2 at theta = 0; for
    sigma_w^2 = 2 the correlation map is c' = J_1(arccos c) / pi), E[step(u) step(v)] = k_0 / 2
    = (pi - theta) / (2 pi); E[relu(u)] = sqrt(q1 / (2 pi)) (half-normal mean)."""
    c = k / math.sqrt(q1 * q2)
    theta = math.acos(max(-1.0, min(1.0, c)))
    j1 = math.sin(theta) + (math.pi - theta) * math.cos(theta)
    return (math.sqrt(q1 * q2) * j1 / (2 * math.pi), (math.pi - theta) / (2 * math.pi),
            math.sqrt(q1 / (2 * math.pi)))


def arcsine_kernels(q1, q2, k):
    """erf. Williams (1997), eq. (11): V_erf = (2/pi) arcsin(2 S12 / sqrt((1 + 2 S11)(1 + 2 S22))).
    Derivative: erf'(x) = (2/sqrt pi) exp(-x^2), and E[exp(-u^2 - v^2)] = det(I + 2 S)^{-1/2}
    (a Gaussian integral), so E[erf' erf'] = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 k^2);
    E[erf(u)] = 0 (odd)."""
    return (2 / math.pi * math.asin(2 * k / math.sqrt((1 + 2 * q1) * (1 + 2 * q2))),
            4 / math.pi / math.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * k * k), 0.0)


def gelu_kernels(q1, q2, k):
    """GELU, x Phi(x). Tsuchida, Pearce, van der Heide, Roosta, Gallagher (2021), "Avoiding
    kernel fixed points: computing with ELU and GELU infinite networks", Theorem 2, in the form
    neural-tangents implements (stax.Gelu): with D^2 = (1 + q1)(1 + q2) - k^2,
    E[gelu gelu] = k/4 + (k atan2(k, D) + (k^2 + q1 q2 D^2) / ((1 + q1)(1 + q2) D)) / (2 pi);
    E[gelu' gelu'] = 1/4 + atan2(k, D)/(2 pi) + k (1/D^2 + (1 - q1 q2)/((1 + q1)(1 + q2)) + 1)
    / (2 pi D); E[gelu(u)] = E[u Phi(u)] = q1 E[phi(u)] = q1 / sqrt(2 pi (1 + q1)) (Stein)."""
    d2 = (1 + q1) * (1 + q2) - k * k
    d, angle = math.sqrt(d2), math.atan2(k, math.sqrt(d2))
    value = k / 4 + (k * angle + (k * k + q1 * q2 * d2) / ((1 + q1) * (1 + q2) * d)) / (2 * math.pi)
    grad = 0.25 + angle / (2 * math.pi) + k * (1 / d2 + (1 - q1 * q2) / ((1 + q1) * (1 + q2)) + 1) \
        / (2 * math.pi * d)
    return value, grad, q1 / math.sqrt(2 * math.pi * (1 + q1))


def linear_kernels(q1, q2, k):
    """Identity: E[uv] = k, derivative 1, mean 0."""
    return k, 1.0, 0.0


KERNELS = {"linear": linear_kernels, "relu": arccos_kernels, "erf": arcsine_kernels,
           "gelu": gelu_kernels}


# --- One block of each preset on a pair of inputs of equal statistics: state (q, m, k) = (second
# moment, feature mean, cross second moment) and the gradient factor g. DESIGN.md ops: Dense
# W ~ N(0, s^2/n), b ~ N(0, sb^2) maps second moments to s^2 (.) + sb^2 with zero mean; LN maps
# K to gain^2 (K - m m) / (v + eps), v = q - m^2, backward gain^2 / (v + eps); a residual sum
# whose branch ends in a fresh Dense (or a norm of one) has no cross moment with the stream.

def _dense(st, s, sb):
    (q, _m, k), g = st
    return (s * s * q + sb * sb, 0.0, s * s * k + sb * sb), g * s * s


def _act(st, act):
    (q, m, k), g = st
    assert m == 0.0, "an activation follows a Dense in every preset branch"
    kk, _, mean = KERNELS[act](q, q, k)
    diag, grad_diag, _ = KERNELS[act](q, q, q)
    return (diag, mean, kk), g * grad_diag


def _ln(st, eps, gain):
    (q, m, k), g = st
    v = q - m * m
    return (gain**2 * v / (v + eps), 0.0, gain**2 * (k - m * m) / (v + eps)), g * gain**2 / (v + eps)


def _branch(st, act, p, b=1.0):
    st = _dense(st, b * p["sigma_1"], p["sigma_b"])
    return _dense(_act(st, act), b * p["sigma_2"], p["sigma_b"])


def _residual(st, branch_out, alpha, beta):
    """beta x + alpha F(x): second moments add (no cross moment), the mean scales by beta; the
    gradient factor is beta^2 + alpha^2 (branch factor)."""
    (q, m, k), _ = st
    (qf, mf, kf), gf = branch_out
    assert mf == 0.0, "every preset branch ends in a Dense or a norm"
    return (beta**2 * q + alpha**2 * qf, beta * m, beta**2 * k + alpha**2 * kf), beta**2 + alpha**2 * gf


def reference_block(preset, act, q, m, k, p):
    """(q', m', k', g_l / g_{l+1}) of one block of ``preset`` (DESIGN.md definitions)."""
    st = ((q, m, k), 1.0)
    a, be, eps, gain = p["alpha"], p["beta"], p["eps"], p["gain"]
    if preset == "plain":
        out = _branch(st, act, p)
    elif preset in ("resnet", "skipinit"):
        out = _residual(st, _branch(st, act, p), a, be)
    elif preset == "preln":
        out = _residual(st, _branch(_ln(st, eps, gain), act, p), a, be)
    elif preset == "periln":
        out = _residual(st, _ln(_branch(_ln(st, eps, gain), act, p), eps, gain), a, be)
    elif preset in ("postln", "deepnorm"):
        res = _residual(st, _branch(st, act, p, p["b"] if preset == "deepnorm" else 1.0), a, be)
        # the LN after the sum: its backward factor at its own input multiplies the block's
        out = _ln((res[0], 1.0), eps, gain)
        out = out[0], out[1] * res[1]
    else:
        raise ValueError(preset)
    (q1, m1, k1), g = out
    return q1, m1, k1, g


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
            p = {k: (v if k in used else {"alpha": 1.0, "beta": 1.0, "b": 1.0}.get(k, v))
                 for k, v in POINT.items()}
            at = {**{S.SYMBOLS[k]: v for k, v in POINT.items() if k in used}, S.Q_A: 0.9, S.M_A: 0.3}
            got = [S.evaluate(one["q_a"], at), S.evaluate(one["m_a"], at), S.evaluate(factor, at)]
            rq, rm, _, rg = reference_block(preset, act, 0.9, 0.3, 0.9 * 0.35, p)
            d.check(f"{tag}: q, m, gradient factor vs the literature reference",
                    S.rel_error(got, [rq, rm, rg]), 1e-12)
            zq, _, zk, _ = reference_block(preset, act, 0.9, 0.0, 0.9 * 0.35, p)
            cz = S.evaluate(cmap, {**at, S.M_A: 0.0, S.C_AB: 0.35})
            d.check(f"{tag}: c vs the literature reference (zero mean)",
                    S.rel_error(cz, zk / zq), 1e-12)
    return d


if __name__ == "__main__":
    sys.exit(S.script_main(NAME))
