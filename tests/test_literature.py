"""The literature comparisons (sigprop.figures.literature): their depth scans against closed
forms derived here by hand, their fits on data with known answers, and verdict flips.

Closed forms (ReLU, Xavier sigma_w = 1 in both Denses, one input of q = 1, eps -> 0), with a
Dense's term q_in gq_out (all widths N):

* Post-LN block LN(x + F(x)): the sum s = x + F(x) has q_s = 1 + 1/2; the LayerNorm's backward
  divides the cotangent's second moment by q_s, and the per-block gradient factor is 1
  (gq = 1 at every block output). Dense 2: q_in = 1/2, gq_out = 1/q_s; Dense 1: q_in = 1,
  gq_out = (1/q_s)(1/2). Every block: weight_grad_q = 1/q_s = 2/3, so U = 2L/3.
* Pre-LN with a final LayerNorm: q_l = 1 + l/2 (Xiong et al.'s Lemma 2); the final LN gives
  gq_L = 1/q_L and the stream telescopes, gq_l = 1/q_l. Block l: Dense 2 q_in = 1/2, gq_out =
  gq_l; Dense 1 q_in = 1 (after the LN), gq_out = gq_l / 2: weight_grad_q_l = gq_l = 1/(1 + l/2).
* DeepNorm LN(a x + F(x)), both Denses with gain b (a = L^(1/4), b = (4L)^(-1/4)): q_s = a^2 +
  b^4 / 2; Dense 2 q_in = b^2/2, gq_out = 1/q_s; Dense 1 q_in = 1, gq_out = b^2 / (2 q_s):
  weight_grad_q = b^2 / q_s per block.

Tolerance: LayerNorm's eps = 1e-5 shrinks each normalised second moment by a relative 1e-5;
a statistic crosses at most L + 2 LayerNorms on its forward and backward paths, so
rtol = 1e-5 (L + 2).
"""

import numpy as np
import pytest

from sigprop.figures import literature as lit

EPS = 1e-5
DEPTHS = (8, 64)


def _rtol(L):
    return EPS * (L + 2)


@pytest.mark.parametrize("L", DEPTHS)
def test_post_ln_closed_form(L):
    s = lit.scan("Post-LN", (L,))
    np.testing.assert_allclose(s["last"], [2 / 3], rtol=_rtol(L))
    np.testing.assert_allclose(s["sum"], [2 * L / 3], rtol=_rtol(L))


@pytest.mark.parametrize("L", DEPTHS)
def test_pre_ln_closed_form(L):
    s = lit.scan("Pre-LN", (L,))
    l = np.arange(1, L + 1)
    np.testing.assert_allclose(s["last"], [1 / (1 + L / 2)], rtol=_rtol(L))
    np.testing.assert_allclose(s["sum"], [np.sum(1 / (1 + l / 2))], rtol=_rtol(L))


@pytest.mark.parametrize("L", DEPTHS)
def test_deepnorm_closed_form(L):
    a2, b2 = L**0.5, (4 * L) ** -0.5
    per_block = b2 / (a2 + b2**2 / 2)
    s = lit.scan("DeepNorm", (L,))
    np.testing.assert_allclose(s["sum"], [L * per_block], rtol=_rtol(L))


def test_fits_on_known_curves():
    L = np.asarray(lit.DEPTHS, float)
    assert lit.exponent(L, 3 * L**-0.5) == pytest.approx(-0.5, abs=1e-12)
    assert lit.growth_form(L, 3 + 2 * L)[0] == "linear"
    assert lit.growth_form(L, 1 + 2 * np.log(L))[0] == "logarithmic"
    assert lit.fit_residual(L, 3 + 2 * L) < 1e-12


@pytest.fixture(scope="module")
def scans():
    return {arch: lit.scan(arch) for arch in lit.ARCHS}


def test_the_three_results_are_reproduced(scans):
    assert lit.xiong_theorem1(scans)["XiongThmVerdict"] == "reproduced"
    assert lit.liu_admin(scans)["LiuVerdict"] == "reproduced"
    assert lit.deepnet_update(scans)["DeepNetVerdict"] == "reproduced"


def test_verdicts_flip(scans):
    """Swapped placements (Post-LN's numbers read as Pre-LN's, DeepNorm's as Post-LN's) give
    the opposite depth laws, and each verdict says so."""
    swap = {"Post-LN": scans["Pre-LN"], "Pre-LN": scans["Post-LN"], "DeepNorm": scans["Post-LN"]}
    assert lit.xiong_theorem1(swap)["XiongThmVerdict"] == "not reproduced"
    assert lit.liu_admin(swap)["LiuVerdict"] == "not reproduced"
    dn = {"Post-LN": scans["DeepNorm"], "DeepNorm": scans["Post-LN"]}
    assert lit.deepnet_update(dn)["DeepNetVerdict"] == "not reproduced"


@pytest.mark.slow
def test_monte_carlo_agrees_at_small_depth():
    """Monte Carlo (two widths, 1/N fitted away) within the Bonferroni bound (about 7 s)."""
    out = lit.xiong_monte_carlo()
    assert out["XiongMCVerdict"] == "agrees", out
