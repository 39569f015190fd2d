"""The laws against forms NOT produced by sigprop's op code (issue 12, item 4).

* closed-form activations: the kernels of the literature, typed in derivations/block_recursions.py
  (Cho & Saul 2009 arc-cosine for relu, Williams 1997 arcsine for erf, linear), against both
  faces (sympy and numeric) and every preset block (:func:`reference_block`);
* Pre-LN: q_L = q_0 + L alpha^2 g (Xiong et al. 2020, Lemma 1: the Pre-LN stream's second moment
  grows linearly), with the branch gain g = sigma_2^2 E[phi(sigma_1 z)^2], z ~ N(0, 1), written
  from the Gaussian kernel (LN makes the branch input's second moment gain^2 = 1 at eps = 0);
* gelu's closed form against the literature's (Tsuchida et al. 2021), like the above;
* quadrature activations (tanh, silu): the sympy expression of the symbolic face
  evaluated by mpmath.quad (tanh-sinh, 1-D and 2-D) against the numeric kernels of
  sigprop.kernels.quadrature, a different integrator, to 1e-9;
* BatchNorm's sphere values (K_aa = 1/2 after BN + relu, and the arc-cosine kernel on the
  sphere) are checked in tests/test_batchnorm_kernel.py.
"""

import math

import mpmath
import numpy as np
import pytest
import sympy

import sigprop as sp
from sigprop import symbolic as S
from sigprop.kernels.gaussian import get_activation

LIT = S.load_derivation("block_recursions")
POINTS = [(0.3, 0.3, 0.9), (1.7, 0.6, -0.45), (4.5, 1.3, 0.98), (0.05, 2.0, 0.0)]  # (q1, q2, c)


@pytest.mark.parametrize("act", sorted(LIT.KERNELS))
@pytest.mark.parametrize("q1, q2, c", POINTS)
def test_closed_form_kernels_are_the_literature(act, q1, q2, c):
    """Numeric and symbolic faces of the kernel, its derivative kernel and the mean."""
    want_k, want_g, want_m = LIT.KERNELS[act](q1, q2, c * math.sqrt(q1 * q2))
    a = get_activation(act)
    q1a, q2a, ca = np.array(q1), np.array(q2), np.array(c)
    got = [float(a.kernel(q1a, q2a, ca)), float(a.grad_kernel(q1a, q2a, ca)), float(a.mean(q1a))]
    np.testing.assert_allclose(got, [want_k, want_g, want_m], rtol=1e-13, atol=1e-15)
    fwd = S.block_map(sp.Act(act), 2, gaussian=True, simplify=False)
    at = {S.Q_A: q1, S.Q_B: q2, S.C_AB: c}
    cov = S.evaluate(fwd["c_ab"] * sympy.sqrt(fwd["q_a"] * fwd["q_b"]), at)
    assert cov == pytest.approx(want_k, rel=1e-13, abs=1e-15)
    assert S.evaluate(fwd["m_a"], at) == pytest.approx(want_m, abs=1e-15)
    g_diag = LIT.KERNELS[act](q1, q1, q1)[1]
    grad = S.backward_map(sp.Act(act), 1, gaussian=True, simplify=False)["grad_q_a"]
    assert S.evaluate(grad, {S.Q_A: q1, S.G_A: 1.0}) == pytest.approx(g_diag, rel=1e-13)


def test_relu_he_correlation_map():
    # sigma_w^2 = 2 (He): q' = q and c' = (sqrt(1 - c^2) + (pi - arccos c) c) / pi (Cho & Saul)
    blk = sp.Serial(sp.Dense(math.sqrt(2)), sp.Act("relu"))
    for c in (-0.8, 0.0, 0.5, 0.99):
        ds = sp.theory(blk, sp.Inputs(q=1.3, corr=c, n=2))
        assert float(ds.q.values[-1, 0]) == pytest.approx(1.3, rel=1e-14)
        want = (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
        assert float(ds.corr.values[-1, 0, 1]) == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("act", sorted(LIT.KERNELS))
@pytest.mark.parametrize("preset", LIT.PRESETS)
def test_preset_blocks_are_the_literature_reference(preset, act):
    """One symbolic block at numbers == the hand recursion of block_recursions (q, m, c, g)."""
    blk = S.preset_block(preset, act, ratio=1)
    used = {s.name for s in S.op_symbols(blk)}
    p = {k: (v if k in used else 1.0 if k in ("alpha", "beta", "b") else v)
         for k, v in LIT.POINT.items()}
    at = {**{S.SYMBOLS[k]: v for k, v in LIT.POINT.items() if k in used},
          S.Q_A: 0.9, S.Q_B: 0.9, S.M_A: 0.3, S.M_B: 0.3, S.C_AB: 0.35}
    fwd = S.block_map(blk, 2, simplify=False)
    got = [S.evaluate(fwd[k], at) for k in ("q_a", "m_a")]
    got.append(S.evaluate(S.backward_map(blk, 1, simplify=False)["grad_q_a"], {**at, S.G_A: 1.0}))
    q, m, _, g = LIT.reference_block(preset, act, 0.9, 0.3, 0.0, p)
    np.testing.assert_allclose(got, [q, m, g], rtol=1e-12)
    zq, _, zk, _ = LIT.reference_block(preset, act, 0.9, 0.0, 0.9 * 0.35, p)  # zero mean
    c = S.evaluate(fwd["c_ab"], {**at, S.M_A: 0.0, S.M_B: 0.0})
    assert c == pytest.approx(zk / zq, rel=1e-12)


def _tanh_gain(s1):
    """E[tanh(s1 z)^2], z ~ N(0, 1), by mpmath's tanh-sinh rule (not sigprop's quadrature)."""
    return float(mpmath.quad(lambda z: mpmath.tanh(s1 * z) ** 2 * mpmath.npdf(z),
                             [-mpmath.inf, 0, mpmath.inf]))


@pytest.mark.parametrize("act", ["linear", "relu", "erf", "tanh"])
def test_preln_q_is_linear_in_depth(act):
    """Pre-LN at eps = 0: q_l = q_0 + l alpha^2 g, g = sigma_2^2 E[phi(sigma_1 z)^2]; the mean
    stays m_0 (the branch ends in a zero-mean Dense with no cross moment to the stream)."""
    s1, s2, alpha, L = 1.3, 0.8, 0.45, 40
    gain = _tanh_gain(s1) if act == "tanh" else LIT.KERNELS[act](s1**2, s1**2, s1**2)[0]
    net = sp.presets.preln(L, act=act, alpha=alpha, eps=0.0, sigma_w1=s1, sigma_w2=s2)
    ds = sp.theory(net, sp.Inputs(q=1.3, mean=0.4))
    layers = np.arange(L + 1)
    np.testing.assert_allclose(ds.q.values[:, 0], 1.3 + layers * alpha**2 * s2**2 * gain,
                               rtol=1e-12 if act != "tanh" else 1e-10)  # tanh: two quadratures
    np.testing.assert_allclose(ds["mean"].values[:, 0], 0.4, rtol=1e-14)


def _mp(expr, at, dps=25):  # dps 15 left gelu at q = 0.05 off by 2e-9 (vs dps 30)
    """A 1-D Gaussian expectation of the symbolic face by mpmath.quad, split at the kink z = 0."""
    (integral,) = [a for a in sympy.preorder_traversal(expr) if isinstance(a, sympy.Integral)]
    e = integral.subs(at)
    ((z, _, _),) = e.limits
    f = sympy.lambdify([z], e.function, "mpmath")
    with mpmath.workdps(dps):
        return float(mpmath.quad(f, [-mpmath.inf, 0, mpmath.inf]))


@pytest.mark.parametrize("act", ["tanh", "silu"])
@pytest.mark.parametrize("q", [0.05, 1.0, 4.5, 30.0])
def test_quadrature_faces_by_mpmath_1d(act, q):
    """E[phi^2], E[phi], E[phi'^2] of the sympy face by mpmath vs the numeric kernels (1e-9)."""
    a, qa = get_activation(act), np.array(q)
    fwd = S.block_map(sp.Act(act), 1, gaussian=True, simplify=False)
    grad = S.backward_map(sp.Act(act), 1, gaussian=True, simplify=False)["grad_q_a"]
    got = [_mp(fwd["q_a"], {S.Q_A: q}), _mp(fwd["m_a"], {S.Q_A: q}),
           _mp(grad.subs(S.G_A, 1), {S.Q_A: q})]
    want = [float(a.kernel(qa, qa, np.array(1.0))), float(a.mean(qa)),
            float(a.grad_kernel(qa, qa, np.array(1.0)))]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _mp_2d(act, q1, q2, c):
    """E[phi(u) phi(v)] from the 2-D integral of the sympy face: sympy substitutes
    z_2 = c z_1 + sqrt(1 - c^2) w (a separable density), mpmath.quad integrates over (z_1, w)."""
    fwd = S.block_map(sp.Act(act), 2, gaussian=True, simplify=False)
    (i2,) = [a for a in sympy.preorder_traversal(fwd["c_ab"])
             if isinstance(a, sympy.Integral) and len(a.limits) == 2]
    e = i2.subs({S.Q_A: q1, S.Q_B: q2, S.C_AB: c})
    (z2, _, _), (z1, _, _) = e.limits
    w, s = sympy.Symbol("w", real=True), sympy.sqrt(1 - sympy.Float(c) ** 2)
    f = sympy.lambdify((z1, w), e.function.subs(z2, c * z1 + s * w) * s, "mpmath")
    with mpmath.workdps(12):  # ~10 s a value; converged to ~1e-11 at the points below
        half = [-mpmath.inf, 0, mpmath.inf]
        return float(mpmath.quad(f, half, half))


@pytest.mark.parametrize("act, q1, q2, c", [("tanh", 0.7, 2.0, -0.4)])
def test_quadrature_kernel_by_mpmath_2d(act, q1, q2, c):
    want = float(get_activation(act).kernel(np.array(q1), np.array(q2), np.array(c)))
    assert _mp_2d(act, q1, q2, c) == pytest.approx(want, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("act", ["tanh", "silu"])
@pytest.mark.parametrize("q1, q2, c", [(4.5, 1.3, 0.98), (0.7, 2.0, -0.4), (9.0, 0.2, 0.6)])
def test_quadrature_kernel_by_mpmath_2d_slow(act, q1, q2, c):
    test_quadrature_kernel_by_mpmath_2d(act, q1, q2, c)
