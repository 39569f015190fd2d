"""Symbolic face of the first-order finite-width theory (:mod:`sigprop.engines.finite_width`).

A layer Dense -> Act of a plain net, at width N. Given the realised input Gram K (its unique
entries x = (K_11, K_12, K_22), or x = q for one input), the realised output Gram is
F(x) + xi with F the layer's infinite-width law (the ops' own ``theory_forward`` over
:data:`~sigprop.state.ns.SYMBOLIC`, not re-typed) and xi the mean of N i.i.d. centred feature
terms: E xi = 0, Cov xi = Sigma(x) / N, Sigma from the fourth moments of y = phi(u),
u ~ N(0, K_u) (K_u the Dense's law), assembled by the engine's own
:func:`~sigprop.engines.finite_width.noise_of_moments`. With E delta = b/N, Cov delta = C/N
for the input's deviation, the delta method (sympy derivatives of F) gives

    b' = J b + 1/2 H:C + beta,     C' = J C J^T + Sigma,

beta = sigma_b_fan_in^2 dF/d(sigma_b^2) where the Dense's bias has a fan-in part (variance
sigma_b_fan_in^2 / N: a shift of the law, first order), else 0;
and a statistic s of the state has E s = s_inf + (grad s . b + 1/2 H_s:C)/N, Var s =
grad s C grad s^T / N. The engine computes J, H by central differences and Sigma by quadrature;
here they are exact.

Fourth moments of a positively homogeneous activation of degree 1 (phi(x) = s_+ x for x > 0,
s_- x for x < 0; the slopes read off the activation's own sympy expression) are polar
integrals: with u = sqrt(q_a) rho cos(t), v = sqrt(q_b) rho cos(t - theta), cos theta = c,
E[phi(u)^p phi(v)^r] = q_a^(p/2) q_b^(r/2) 2^(n/2) Gamma(n/2 + 1) A_pr(theta) / (2 pi), n = p + r,
A_pr the angular integral over the four sign sectors. Other activations (erf): one input only,
E[phi(u)^3], E[phi(u)^4] left as Gaussian integrals (:func:`~sigprop.kernels.integral.integral_mean`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import sympy

from sigprop.engines.finite_width import noise_of_moments
from sigprop.errors import UnsupportedComposition
from sigprop.kernels.gaussian import get_activation
from sigprop.kernels.integral import integral_mean
from sigprop.ops import Act, Dense, Op, Serial
from sigprop.state.moments import GENERAL, Moments, true_moments
from sigprop.state.ns import SYMBOLIC
from sigprop.state.params import Context
from sigprop.symbolic.symbols import C_AB, Q_A, Q_B, RATIO, SIGMA_1, SIGMA_2
from sigprop.symbolic.timeouts import simplify

K_AB = sympy.Symbol("k_ab", real=True)  # the off-diagonal Gram entry c_ab sqrt(q_a q_b)
_T, _THETA = sympy.symbols("t theta", real=True)
_SP, _SM = sympy.symbols("s_p s_m", real=True)


def state_symbols(B: int):
    """The unique Gram entries x of a state of B = 1 or 2 inputs: (q_a,) or (q_a, k_ab, q_b)."""
    return (Q_A,) if B == 1 else (Q_A, K_AB, Q_B)


def _gram(x):
    if len(x) == 1:
        return np.array([[x[0]]], dtype=object)
    return np.array([[x[0], x[1]], [x[1], x[2]]], dtype=object)


def _unique(B):
    """Indices of the unique entries x in the flattened Gram (row-major, as the engine)."""
    return [0] if B == 1 else [0, 1, 3]


@functools.cache
def _angular(p: int, r: int):
    """A_pr(theta) with the slopes s_+, s_- as symbols: int over t in [-pi/2, 3 pi/2) of
    phi(cos t)^p phi(cos(t - theta))^r, split where cos t or cos(t - theta) changes sign
    (theta in [0, pi])."""
    pi = sympy.pi
    edges = [-pi / 2, _THETA - pi / 2, pi / 2, _THETA + pi / 2, 3 * pi / 2]
    slopes = [(_SP, _SM), (_SP, _SP), (_SM, _SP), (_SM, _SM)]
    return sum(sympy.integrate(a**p * b**r * sympy.cos(_T)**p * sympy.cos(_T - _THETA)**r,
                               (_T, lo, hi))
               for (a, b), lo, hi in zip(slopes, edges[:-1], edges[1:]))


def slopes(act) -> tuple:
    """(s_+, s_-) of a degree-1 activation from its own sympy expression phi(x)."""
    x = sympy.Symbol("x", positive=True)
    expr = act._expr  # the activation's sympy face
    sp, sm = sympy.simplify(expr(x) / x), sympy.simplify(expr(-x) / (-x))
    if sp.has(x) or sm.has(x):
        raise UnsupportedComposition(f"{act.name}: not positively homogeneous of degree 1")
    return sp, sm


def polar_moment(act, p: int, r: int, qa, qb, c):
    """E[phi(u)^p phi(v)^r], (u, v) ~ N(0, [[qa, c sqrt(qa qb)], [., qb]]), phi of degree 1."""
    sp, sm = slopes(act)
    n = p + r
    A = _angular(p, r).subs({_SP: sp, _SM: sm, _THETA: sympy.acos(c)})
    return (qa ** sympy.Rational(p, 2) * qb ** sympy.Rational(r, 2)
            * 2 ** sympy.Rational(n, 2) * sympy.gamma(sympy.Rational(n, 2) + 1) * A / (2 * sympy.pi))


def feature_moments(act, Ku):
    """E1..E4 (object arrays (B,), ..., (B, B, B, B)) of y = phi(u), u ~ N(0, Ku), B = 1, 2.

    E1, E2 are the activation's own Gaussian laws (``mean``, ``gram_kernel``); E3, E4 are polar
    integrals (degree 1), or for one input Gaussian integrals of phi^3, phi^4."""
    B = Ku.shape[-1]
    E1 = np.array([act.mean(Ku[a, a], SYMBOLIC) for a in range(B)], dtype=object)
    E2 = act.gram_kernel(Ku, SYMBOLIC)
    if act.degree == 1:
        q = [Ku[a, a] for a in range(B)]
        c = Ku[0, 1] / sympy.sqrt(q[0] * q[1]) if B == 2 else sympy.Integer(1)

        def moment(idx):
            p = idx.count(0)
            return polar_moment(act, p, len(idx) - p, q[0], q[-1], c if p < len(idx) else 1)
    elif B == 1:
        def moment(idx):
            return integral_mean(lambda x: act._expr(x) ** len(idx), Ku[0, 0])
    else:
        raise UnsupportedComposition(f"{act.name} with two inputs: the mixed fourth moments "
                                     "have no closed form (one input only)")
    E3 = np.empty((B,) * 3, dtype=object)
    E4 = np.empty((B,) * 4, dtype=object)
    for idx in np.ndindex(E3.shape):
        E3[idx] = moment(sorted(idx))
    for idx in np.ndindex(E4.shape):
        E4[idx] = moment(sorted(idx))
    return E1, E2, E3, E4


@dataclass
class LayerLaw:
    """One layer Dense -> Act on the unique Gram entries x: law F, its Jacobian J and Hessians
    H (sympy derivatives), the feature noise Sigma and the fan-in bias's term beta (all
    functions of x)."""

    x: tuple
    F: sympy.Matrix
    J: sympy.Matrix
    H: list
    Sigma: sympy.Matrix
    beta: sympy.Matrix


def layer_law(block: Op, B: int) -> LayerLaw:
    """The :class:`LayerLaw` of ``block`` = Serial(Dense, Act) (a symbolic or numeric block)."""
    kids = block.layers if isinstance(block, Serial) else ()
    if not (len(kids) == 2 and isinstance(kids[0], Dense) and isinstance(kids[1], Act)):
        raise UnsupportedComposition("finite-width symbolic face: a layer Serial(Dense, Act)")
    if kids[0].ratio != 1:  # the noise below is that of N features: n = ratio N would scale it
        raise UnsupportedComposition("finite-width symbolic face: a Dense of ratio 1 "
                                     f"(got ratio={kids[0].ratio})")
    x = state_symbols(B)
    zero = np.array([sympy.Integer(0)] * B, dtype=object)
    s = Moments(K=_gram(x), m=zero, ls=zero.copy(), law=GENERAL)
    ctx = Context(ns=SYMBOLIC, path="Serial")
    Ku, _ = true_moments(kids[0].theory_forward(s, ctx), ctx.path, SYMBOLIC)
    idx = _unique(B)
    e = sympy.Symbol("e", nonnegative=True)  # a variance added to the bias's
    biased = dataclasses.replace(kids[0], sigma_b=sympy.sqrt(sympy.sympify(kids[0].sigma_b)**2
                                                             + e))
    K1, _ = true_moments(Serial(biased, kids[1]).theory_forward(s, ctx), ctx.path, SYMBOLIC)
    Fe = sympy.Matrix([K1.reshape(-1)[i] for i in idx])
    F = Fe.subs(e, 0)
    beta = sympy.sympify(kids[0].sigma_b_fan_in) ** 2 * Fe.diff(e).subs(e, 0)
    sigma = noise_of_moments(*feature_moments(get_activation(kids[1].name), Ku), [], [])
    Sigma = sympy.Matrix([[sigma[i, j] for j in idx] for i in idx])
    X = sympy.Matrix(x)
    return LayerLaw(x, F, F.jacobian(X), [sympy.hessian(f, X) for f in F], Sigma, beta)


def _contract(H, C):
    """H:C = sum_ij H_ij C_ij (sympy matrices or numpy arrays)."""
    return sum((H[i, j] * C[i, j] for i in range(C.shape[0]) for j in range(C.shape[1])),
               sympy.Integer(0) if isinstance(C, sympy.MatrixBase) else 0.0)


def delta_step(J, H, Sigma, b, C, beta=0):
    """(b', C') = (J b + 1/2 H:C + beta, J C J^T + Sigma): one layer of the delta method, on
    sympy matrices (b, beta columns) or on numpy arrays (vectors) alike."""
    vec = sympy.Matrix if isinstance(J, sympy.MatrixBase) else np.array
    return J @ b + vec([_contract(h, C) / 2 for h in H]) + beta, J @ C @ J.T + Sigma


def delta_statistic(g, H, b, C):
    """(a, v) with E s = s_inf + a/N, Var s = v/N for a statistic of gradient g (a row) and
    Hessian H at the state: a = g b + 1/2 H:C, v = g C g^T (sympy or numpy alike)."""
    gb, gCg = g @ b, g @ C @ g.T
    if isinstance(g, sympy.MatrixBase):
        gb, gCg = gb[0], gCg[0]
    return gb + _contract(H, C) / 2, gCg


def step(law: LayerLaw, b, C):
    """:func:`delta_step` of the law (sympy, at the law's symbolic state x)."""
    return delta_step(law.J, law.H, law.Sigma, b, C, law.beta)


def statistic(s, x, b, C):
    """(a, v): :func:`delta_statistic` of a statistic s(x) (sympy derivatives)."""
    X = sympy.Matrix(x)
    return delta_statistic(sympy.Matrix([s]).jacobian(X), sympy.hessian(s, X), b, C)


def corr_of(x):
    """c_ab of the unique Gram entries (q_a, k_ab, q_b)."""
    return x[1] / sympy.sqrt(x[0] * x[2])


def one_layer(law: LayerLaw):
    """The first-order corrections a layer adds to an exact input state: {name: (a, v)} for
    log q_a (and c_ab for two inputs), as functions of the input state (q_a, c_ab, q_b) and
    the hyperparameters."""
    D = len(law.x)
    b, C = step(law, sympy.zeros(D, 1), sympy.zeros(D, D))
    y = sympy.symbols(f"y_0:{D}", positive=True)  # the output state, then F(x) put in
    at = dict(zip(y, law.F))
    out = {"log_q": statistic(sympy.log(y[0]), y, b, C)}
    if D == 3:
        out["corr"] = statistic(corr_of(y), y, b, C)
    to_c = {K_AB: C_AB * sympy.sqrt(Q_A * Q_B)}
    return {k: tuple(simplify(e.subs(at).subs(to_c)) for e in v) for k, v in out.items()}


def in_log_coordinates(law: LayerLaw):
    """One input: the per-layer map of (a, v) = N (E log q - log q_inf, Var log q), from
    b = q (a + v/2), C = v q^2 (so that a = b/q - C/(2 q^2), v = C/q^2) into :func:`step`."""
    a, v = sympy.symbols("a_l v_l", real=True)
    q = law.x[0]
    b1, C1 = step(law, sympy.Matrix([q * (a + v / 2)]), sympy.Matrix([[v * q**2]]))
    y = sympy.Symbol("y", positive=True)
    a1, v1 = statistic(sympy.log(y), (y,), b1, C1)
    return (a, v), tuple(simplify(e.subs(y, law.F[0])) for e in (a1, v1))


def linear_block_weight_gradient():
    """(a, v) of log weight_grad_q for one block x -> W_2 W_1 x (widths N -> rN -> N, r =
    :data:`~sigprop.symbolic.symbols.RATIO`; weight variances sigma_1^2 / N and sigma_2^2 /
    (rN)) on Gaussian inputs x ~ N(0, q_a I) with an output cotangent delta ~ N(0, I): E log W =
    log W_inf + a/N, Var log W = v/N. The model, written from the definition (not from the
    engine's tangent walk): N^2 W = ||delta||^2 ||W_1 x||^2 + ||W_2^T delta||^2 ||x||^2 = N^2 A C
    (r sigma_1^2 (1 + e_1) + sigma_2^2 (1 + e_2)), with A = |x|^2 / N, C = |delta|^2 / N, e_1 =
    |W_1 x|^2 / (r sigma_1^2 N A) - 1 (chi^2_rN / rN - 1 given x), e_2 = |W_2^T delta|^2 /
    (sigma_2^2 N C) - 1 (given delta): independent, of means q_a, 1, 0, 0 and N Cov diag(2
    q_a^2, 2, 2 / r, 2 / r). The two Denses' terms share A and C, so their covariance is in v."""
    A, C, e1, e2 = z = sympy.symbols("A C e_1 e_2", real=True)
    r, s1, s2 = RATIO, SIGMA_1, SIGMA_2
    log_w = sympy.log(A * C * (r * s1**2 * (1 + e1) + s2**2 * (1 + e2)))
    at = {A: Q_A, C: 1, e1: 0, e2: 0}
    cov = sympy.diag(2 * Q_A**2, 2, 2 / r, 2 / r)
    X = sympy.Matrix(z)
    a, v = delta_statistic(sympy.Matrix([log_w]).jacobian(X).subs(at),
                           sympy.hessian(log_w, X).subs(at), sympy.zeros(4, 1), cov)
    return simplify(a), simplify(v)


def iterate(law: LayerLaw, values: dict, x0, depth: int):
    """The recursion of :func:`step` evaluated numerically through ``depth`` layers from an
    exact input x0 (b = C = 0), with the hyperparameters ``values`` ({symbol: number}): per
    layer l = 0..depth, {name: (a, v)} for log q_a (and c_ab for two inputs). Gaussian
    integrals (erf) are evaluated by :func:`~sigprop.symbolic.evaluation.evaluate`."""
    from sigprop.symbolic.evaluation import evaluate

    D = len(law.x)
    parts = [p.subs(values) for p in (law.F, law.J, *law.H, law.Sigma, law.beta)]

    def num(M, x):
        at = dict(zip(law.x, x))
        return np.array([[evaluate(e, at) for e in row] for row in M.tolist()], dtype=float)

    y = sympy.symbols(f"y_0:{D}", positive=True)
    stats = {"log_q": sympy.log(y[0])} | ({"corr": corr_of(y)} if D == 3 else {})
    grads = {k: (sympy.lambdify([y], sympy.Matrix([s]).jacobian(sympy.Matrix(y))),
                 sympy.lambdify([y], sympy.hessian(s, sympy.Matrix(y)))) for k, s in stats.items()}
    x, b, C = np.asarray(x0, dtype=float), np.zeros(D), np.zeros((D, D))
    rows = []
    for layer in range(depth + 1):
        if layer:
            F, J, *H, Sig, beta = (num(p, x) for p in parts)
            b, C = delta_step(J, H, Sig, b, C, beta[:, 0])
            x = F[:, 0]
        at = {k: (np.asarray(g(x), dtype=float)[0], np.asarray(h(x), dtype=float))
              for k, (g, h) in grads.items()}
        rows.append({k: tuple(map(float, delta_statistic(g, h, b, C))) for k, (g, h) in at.items()})
    return rows
