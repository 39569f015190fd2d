"""The symbolic face of the first-order finite-width theory (sigprop.symbolic.finite_width):
exact known values, and its feature noise against the engine's quadrature. The agreement of the
whole recursion with the engine over depth is a check of derivations/finite_width_corrections.py
(run by tests/test_derivations.py)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy

from sigprop import symbolic as S
from sigprop.engines import finite_width as fw
from sigprop.errors import UnsupportedComposition
from sigprop.symbolic import finite_width as F


def _law(act, B):
    return F.layer_law(S.preset_block("plain", act, shape="dense_act", sigma_b=0), B)


def test_hanin_nica_and_wishart_per_layer():
    """Exact input, one layer: relu adds -5/(2N) to E log q and 5/N to Var log q (Hanin &
    Nica); linear -1/N and 2/N (chi^2_N / N), and its correlation the Olkin-Pratt bias
    -c (1 - c^2) / (2N) with Fisher's variance (1 - c^2)^2 / N."""
    assert F.one_layer(_law("relu", 1))["log_q"] == (sympy.Rational(-5, 2), 5)
    lin = F.one_layer(_law("linear", 2))
    c = S.C_AB
    assert lin["log_q"] == (-1, 2)
    assert S.is_zero(lin["corr"][0] + c * (1 - c**2) / 2)
    assert S.is_zero(lin["corr"][1] - (1 - c**2) ** 2)


def test_symbolic_noise_matches_the_engine_quadrature():
    """Sigma of the realised Gram for relu, two inputs: the polar closed forms against the
    engine's polar Gauss-Legendre panels (accurate to ~1e-12 for degree-1 activations) and
    against its rule for homogeneous features (exact in the radius, 16 angular nodes per
    panel: round-off, 1e-14; seen 1.5e-15, the panels 1.3e-14)."""
    law = _law("relu", 2)
    q1, q2, c, s1 = 0.7, 1.3, 0.4, 1.3
    x = (q1, c * np.sqrt(q1 * q2), q2)
    at = dict(zip(law.x, x)) | {S.SIGMA_1: s1}
    sym = np.array(law.Sigma.subs(at).evalf(), dtype=float)
    Ku = s1**2 * np.array([[x[0], x[1]], [x[1], x[2]]])
    for degree, rtol in ((None, 1e-10), (1, 1e-14)):
        u, w = fw.gaussian_rule(Ku, degree=degree)
        num = fw.feature_noise(np.maximum(u, 0), w, [], [])[np.ix_([0, 1, 3], [0, 1, 3])]
        np.testing.assert_allclose(sym, num, rtol=rtol, err_msg=str(degree))


def test_two_input_erf_is_refused():
    with pytest.raises(UnsupportedComposition, match="no closed form"):
        _law("erf", 2)


def test_a_dense_that_changes_the_width_is_refused():
    """The layer noise is that of N features; a Dense of ratio r makes r N (Sigma / r)."""
    import sigprop as sp

    with pytest.raises(UnsupportedComposition, match="ratio 1"):
        F.layer_law(sp.Serial(sp.Dense(ratio=2.0), sp.Act("relu")), 2)


def test_a_deep_relu_nets_corr_correction_is_the_exact_recursions():
    """Plain relu at sigma_w^2 = 2, corr 0.5 in: 1 - corr falls to 1.7e-3 at depth 150, near
    the central differences' STEP, where relu's kernel has its kink (corr = 1). The engine's
    corr coefficient against :func:`F.iterate` (the same recursion with exact sympy derivatives)
    at layers 30-150. Tolerance: the second differences' round-off, ~1.4 eps |w|^2 / STEP^2 per
    direction and layer at the plain step (|w|^2 <= C ~ N Var log q = 5 l in the walk's scaled
    units; ~4 directions), summed over the layers: 4 x 1.4 x 2.2e-16 x 2.5 l^2 / STEP^2 ~ 3e-9
    l^2; plus the direction along the gap (|w| ~ 0.01), whose step the bound shrinks up to
    1/STEP: 1.4 eps (|w| / STEP^2)^2 ~ 3e-8 per layer, 3e-8 l (below the first term from l ~
    10 on); Richardson's truncation, O(STEP^4), is far below. A step that crossed the kink
    gave -0.162 for 0.0017 at depth 150; one central difference (O(STEP^2 C) truncation per
    layer), 6 % off at depth 100."""
    import sigprop as sp

    L = 150
    law = F.layer_law(S.preset_block("plain", "relu", shape="dense_act", sigma_b=0), 2)
    exact = F.iterate(law, {S.SIGMA_1: np.sqrt(2.0), S.SIGMA_B: 0}, (1.0, 0.5, 1.0), L)
    net = sp.presets.plain(L, "relu", shape="dense_act")
    got = fw.coefficients(net, sp.Inputs(q=1.0, corr=0.5, n=2))[0]["corr"][:, 0, 1]
    for l in (30, 60, 100, 150):
        assert abs(got[l] - exact[l]["corr"][0]) < 3e-9 * l**2, (l, got[l], exact[l]["corr"])
