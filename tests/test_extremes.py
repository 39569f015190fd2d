"""Exact zeros stay zero, extremes stay finite (issue 13.5).

An exactly-zero mean is 0 at any depth (not 0 x inf); a nonzero mean stays finite and exact
relative to the signal's scale; q = 1e-300 and 1e300 run in the theory and in Monte Carlo like
q = 1 (both carry the scale in log space), and no RuntimeWarning reaches the user.
"""

import math
import warnings

import numpy as np
import pytest

import sigprop as sp
from sigprop.analysis.compare import summary

pytestmark = pytest.mark.filterwarnings("error")  # any RuntimeWarning fails the test

EXTREME_Q = (1e-300, 1e300)


def test_zero_mean_is_exactly_zero_and_a_carried_mean_finite_at_any_depth():
    # resnet, relu, no norm: q doubles per block, so log q passes 709 (e^ls overflows) at
    # layer ~2047. The branch ends with a bias-free Dense: its mean is 0, so the stream's mean
    # is exactly the input's at every layer (0 and 0.5 here).
    depth = 2100
    layers = [0, 1, 1000, 2000, 2046, 2047, 2048, depth]
    th = sp.theory(sp.presets.resnet(depth=depth, act="relu"),
                   sp.Inputs(q=[1.0, 2.0], corr=0.5, mean=[0.0, 0.5]), layers=layers)
    mean, log_q = th["mean"].values, th["log_q"].values
    assert np.all(np.isfinite(log_q)) and log_q[-1, 0] > 2 * 709  # past float64 for e^(2 ls)
    assert np.all(mean[:, 0] == 0.0)  # exact, not 1e-17 and not 0 x inf = nan
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(th["var"].values[log_q < 709]))
    # the carried mean is exact up to rounding while it is a normal float64 relative to the
    # rms; below that (|m|/sqrt(q) < 2.2e-308) it reads 0, never a subnormal that grows with
    # the scale (5e-324 x e^ls). Rounding: each layer rescales m by exp(difference of log
    # scales), whose absolute error is ulp(ls) = 1.1e-13 at ls ~ 700: at most L x 1.1e-13.
    tol = depth * 1.2e-13
    resolved = math.log(0.5) - log_q[:, 1] / 2 > math.log(1e-300)  # |m| / sqrt(q) > 1e-300
    assert resolved[:3].all() and not resolved[-1]
    np.testing.assert_allclose(mean[resolved, 1], 0.5, rtol=tol)
    assert np.all((mean[~resolved, 1] == 0.0) | (np.abs(mean[~resolved, 1] - 0.5) < 0.5 * tol))


@pytest.mark.parametrize("q", EXTREME_Q)
def test_theory_is_scale_free_at_extreme_q(q):
    # resnet relu without bias is positively homogeneous: log q shifts by log q0, corr and the
    # gradient are unchanged (rounding only: ls is a sum of ~depth logs of O(1)).
    net = sp.presets.resnet(depth=8, act="relu")
    at_q = sp.theory(net, sp.Inputs(q=[q, 3 * q], corr=0.5))
    at_1 = sp.theory(net, sp.Inputs(q=[1.0, 3.0], corr=0.5))
    np.testing.assert_allclose(at_q.log_q - math.log(q), at_1.log_q, rtol=0, atol=1e-9)
    np.testing.assert_allclose(at_q.corr, at_1.corr, rtol=1e-12)
    np.testing.assert_allclose(at_q.log_grad_q, at_1.log_grad_q, rtol=0, atol=1e-9)


def test_layernorm_eps_dominated_regime_is_the_same_at_1e_200_and_1e_300():
    # q << eps: pre-LN's LayerNorm is x / sqrt(eps) (var/eps < 1e-195 is below float64
    # resolution at both q), so the net is linear-homogeneous in x and q = 1e-200 and 1e-300
    # give the same corr and the same log q - log q0. A factor of 1e-147 left in K (not in
    # its log scale) underflowed inside the next law and gave corr = 1.
    net = sp.presets.preln(depth=4, act="relu")
    a = sp.theory(net, sp.Inputs(q=[1e-200, 1e-200], corr=0.5))
    b = sp.theory(net, sp.Inputs(q=[1e-300, 1e-300], corr=0.5))
    np.testing.assert_allclose(b.corr, a.corr, rtol=1e-12)
    np.testing.assert_allclose(b.log_q - math.log(1e-300), a.log_q - math.log(1e-200),
                               rtol=0, atol=1e-9)
    assert float(b.corr[-1, 0, 1]) < 0.9  # not the underflowed corr = 1


@pytest.mark.parametrize("q", EXTREME_Q)
def test_simulate_log_scales_its_inputs(q):
    # Monte Carlo builds the inputs in units of sqrt(q) with log sqrt(q) in the log scale: at
    # an extreme q the same seeds give the same arrays, so on a homogeneous net (resnet relu, no
    # bias) log q is log q0 + that at q0 = 1 to float64 rounding of the log scale, and corr is
    # identical; the theory then agrees at q exactly as it does at 1 (test_montecarlo_theory).
    net = sp.presets.resnet(depth=4, act="relu")
    kw = {"width": 64, "seeds": 3, "backend": "numpy", "root_seed": 5}
    at_q = sp.simulate(net, sp.Inputs(q=[q, 2 * q], corr=0.3, mean=[0.0, 0.5 * math.sqrt(q)]), **kw)
    at_1 = sp.simulate(net, sp.Inputs(q=[1.0, 2.0], corr=0.3, mean=[0.0, 0.5]), **kw)
    assert np.all(np.isfinite(at_q.log_q)) and np.all(np.isfinite(at_q.corr))
    np.testing.assert_allclose(at_q.log_q - math.log(q), at_1.log_q, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(at_q.corr, at_1.corr)
    np.testing.assert_allclose(at_q.log_grad_q, at_1.log_grad_q, rtol=0, atol=1e-9)
    th = sp.theory(net, sp.Inputs(q=[q, 2 * q], corr=0.3, mean=[0.0, 0.5 * math.sqrt(q)]))
    # finite and within finite-width reach of the theory: depth 4, width 64: the spread of
    # log q over seeds is ~ sqrt(5 L / N) = 0.56 (DESIGN.md, plain relu bound; a resnet is
    # tamer), so |mean over 3 seeds - theory| < 4 x 0.56 / sqrt(3) + 5 L / (2N) (the log-mean
    # bias E log q_L - log q_L,inf = -5L/(2N) of a plain relu net, tests/test_finite_width.py).
    gap = np.abs(at_q.log_q.mean("seed") - th.log_q).values
    assert np.all(gap < 4 * 0.56 / math.sqrt(3) + 5 * 4 / (2 * 64))


def test_a_float32_tanh_stack_that_shrinks_past_float32_follows_the_theory():
    """Dense(sigma_w 1e-3) -> tanh -> Dense: q falls ~1e-6 per block. tanh needs the true
    values, which float32 holds only down to ~1e-38: the run came out log q = -inf from layer 15
    without a word (a review's find). The cause: mean_sq squared in float32, so a row of true
    values ~1e-27 read as zero and its scale never moved into ls. It then raised
    MonteCarloOverflow; now, below the dtype's normal range, tanh is its small-scale limit (the
    linear map, exact there to float32's precision), and the run agrees with the theory in
    float32 as in float64 (sp.compare's verdict, at its family level). A float32 tanh net at q =
    1e-66, whose true values are normal float32 numbers, runs (a floor at tiny / eps, 1e-31,
    refused it). (Breaks: mean_sq's squares in float32 again: -inf; true_scale's floor at 0:
    the subnormal scale passes; the limit's slope r dropped in the Monte Carlo: q DISAGREE.)"""
    net = sp.presets.plain(20, act="tanh", sigma_w1=1e-3)
    x0 = sp.Inputs(q=[1.0, 2.0], corr=0.4)
    th = sp.theory(net, x0)
    for dtype in ("float32", "float64"):
        mc = sp.simulate(net, x0, width=128, seeds=16, backend="numpy", dtype=dtype)
        assert np.all(np.isfinite(mc.log_q)) and np.all(np.isfinite(mc.corr))
        flags = {r["variable"]: r["flag"] for r in summary(sp.compare(th, mc))}
        assert flags["q"] == flags["grad_q"] == flags["corr"] == "ok", (dtype, flags)
    small = sp.simulate(sp.presets.plain(3, act="tanh"), sp.Inputs(q=1e-66, n=1), width=64,
                        seeds=2, backend="numpy", dtype="float32")
    assert np.all(np.isfinite(small.log_q))
    from sigprop.state.arrays import mean_sq, true_scale
    tiny = np.full((1, 8), 1e-27, np.float32)
    np.testing.assert_allclose(mean_sq(tiny), float(tiny[0, 0]) ** 2, rtol=1e-12)
    # a subnormal scale (float32: below 1.18e-38) is NaN: the true values would have no digits
    floor = np.finfo(np.float32).tiny
    e = true_scale(np.log([1e-44, 0.5 * floor, 2 * floor, 1e-33, 1.0]), np.float32)
    assert np.all(np.isnan(e[:2])) and np.all(np.isfinite(e[2:]))


@pytest.mark.parametrize("q", EXTREME_Q)
def test_preln_at_extreme_q_no_warning(q):
    # LayerNorm needs the true scale (eps); at q = 1e-300 eps dominates, at 1e300 it vanishes.
    # Both engines run without a RuntimeWarning (the module-level filter) and stay finite.
    net = sp.presets.preln(depth=3, act="relu")
    x0 = sp.Inputs(q=[q, q], corr=0.5)
    th = sp.theory(net, x0)
    mc = sp.simulate(net, x0, width=64, seeds=2, backend="numpy")
    for ds in (th, mc):
        for name in ("log_q", "corr", "mean", "log_grad_q"):
            assert np.all(np.isfinite(ds[name].values)), name


@pytest.mark.parametrize("q", [1e160, 1e300])
def test_tanh_kernel_at_huge_q_is_the_sign_kernel(q):
    # At q -> inf, tanh(u) -> sign(u): E[sign u sign v] = (2/pi) arcsin(c), corrections
    # O(q^-1/2) = 1e-80 or less; the quadrature's own error here is ~5e-13 (c = 0.9). The cosine
    # must come from sqrt(q1) sqrt(q2): q1 q2 overflows beyond q = 1e154 and gave c = 0.
    from sigprop.kernels.gaussian import get_activation
    from sigprop.state.ns import NUMERIC

    c = np.array([0.5, -0.3, 0.9])
    off = c * q * math.sqrt(2)  # inputs of second moments q and 2q
    K = np.stack([[[q, o], [o, 2 * q]] for o in off])
    out = get_activation("tanh").gram_kernel(K, NUMERIC)
    np.testing.assert_allclose(out[:, 0, 1], 2 / np.pi * np.arcsin(c), rtol=0, atol=1e-11)
    np.testing.assert_allclose(out[:, 0, 0], 1.0, rtol=0, atol=1e-12)


# -- constants added in true units to a signal far below them (issue 13.5, q < 1e-308) ----------
# A Dense bias or a norm's eps meets a signal of log scale ls; its term b^2 e^(-2 ls) overflowed
# below q ~ 1e-308 (0 x inf = nan, or a norm's scale of 0 that dropped the branch). The ops now
# work in units lifted past the constant (sigprop.state.moments.lift). The references below are
# at a q small enough for the constant to dominate to float64 resolution (q / b^2 < 1e-17) yet
# large enough that the units are not lifted (b e^-ls < 2^64): the plain formula.


def test_dense_bias_below_the_smallest_normal_q_is_the_bias_dominated_limit():
    # resnet with bias, one input at q = 1e-320 (subnormal) and one at q = 1: after the first
    # Dense the tiny input is the bias to float64 resolution (q / sigma_b^2 = 1e-319, and its
    # cross term sqrt(q) ~ 1e-160), exactly as at q = 1e-36 (1e-35 relative, unlifted since
    # 0.3 / 1e-18 < 2^64). Rounding only: ls is a sum of a few logs of O(1).
    net = sp.presets.resnet(depth=3, act="relu", sigma_b=0.3)
    tiny = sp.theory(net, sp.Inputs(q=[1e-320, 1.0], corr=0.5))
    ref = sp.theory(net, sp.Inputs(q=[1e-36, 1.0], corr=0.5))
    np.testing.assert_allclose(tiny.log_q[1:], ref.log_q[1:], rtol=0, atol=1e-12)
    np.testing.assert_allclose(tiny.corr[1:], ref.corr[1:], rtol=0, atol=1e-12)
    np.testing.assert_allclose(tiny.log_grad_q, ref.log_grad_q, rtol=0, atol=1e-12)


def test_a_subnormal_bias_variance_on_a_far_smaller_signal_is_the_bias():
    # q = 1e-400 (carried in ls) plus sigma_b^2 = 1e-320 (subnormal): the bias, 1e80 times the
    # signal, is the output to float64 resolution: log q = log sigma_b^2 (of the stored
    # subnormal, computed the same way), corr = 1. The lifted units stop at sqrt(TINY), else
    # e^(-2 ls) = 1e320 would overflow.
    net = sp.Serial(sp.Scale(1e-200), sp.Dense(1.0, 1e-160))
    out = sp.theory(net, sp.Inputs(q=[1.0, 2.0], corr=0.5))
    np.testing.assert_allclose(out.log_q[-1], math.log(1e-160**2), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.corr[-1], 1.0, rtol=0, atol=1e-15)


def test_bias_free_dense_below_the_smallest_normal_q_is_scale_free():
    # without bias the net is positively homogeneous down to q = 1e-320 (the bias's factor
    # e^-ls, 0 x inf there, is not formed); as test_theory_is_scale_free_at_extreme_q.
    net = sp.presets.resnet(depth=4, act="relu")
    q = 1e-320  # subnormal, but 2 q is exactly twice it, so the inputs are those at q0 = 1 scaled
    at_q = sp.theory(net, sp.Inputs(q=[q, 2 * q], corr=0.5))
    at_1 = sp.theory(net, sp.Inputs(q=[1.0, 2.0], corr=0.5))
    np.testing.assert_allclose(at_q.log_q - math.log(q), at_1.log_q, rtol=0, atol=1e-9)
    np.testing.assert_allclose(at_q.corr, at_1.corr, rtol=1e-12)
    np.testing.assert_allclose(at_q.log_grad_q, at_1.log_grad_q, rtol=0, atol=1e-9)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_eps_below_the_smallest_normal_q_is_the_eps_dominated_limit(norm):
    # q << eps: the norm is x / sqrt(eps) and the net is linear-homogeneous (as in
    # test_layernorm_eps_dominated_regime_is_the_same_at_1e_200_and_1e_300), so q = 1e-320 gives
    # the log q - log q0, corr and gradient of q = 1e-40 (q / eps = 1e-35, unlifted since
    # sqrt(eps / q) = 3e17 < 2^64). eps e^(-2 ls) overflowed and the branch was dropped.
    net = sp.presets.preln(depth=3, act="relu", norm=norm, final_norm=True)
    tiny = sp.theory(net, sp.Inputs(q=[1e-320, 1e-320], corr=0.5))
    ref = sp.theory(net, sp.Inputs(q=[1e-40, 1e-40], corr=0.5))
    np.testing.assert_allclose(tiny.log_q - math.log(1e-320), ref.log_q - math.log(1e-40),
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(tiny.corr, ref.corr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tiny.log_grad_q, ref.log_grad_q, rtol=0, atol=1e-9)
    assert float(tiny.corr[-1, 0, 1]) < 0.9  # the branch acts (corr = 1 would mean dropped)


def test_batchnorm_monte_carlo_at_tiny_q_is_the_eps_dominated_limit():
    # q << eps: BatchNorm is P u / sqrt(eps), linear, so Dense-BN-relu is homogeneous there and
    # the Monte Carlo at q = 1e-300 is the one at q = 1e-30 (q / eps = 1e-25) scaled: the same
    # seeds give the same arrays up to float32 rounding (the inputs are rescaled by e^(ls - t),
    # whose float64 rounding at ls ~ -690 is 1e-13 relative, then cast to float32: outputs agree
    # to a few float32 ulps). Its output underflowed to 0 in float32 (log q = -inf, corr nan).
    net = sp.Repeat(sp.Serial(sp.Dense(math.sqrt(2)), sp.BatchNorm(), sp.Act("relu")), 2)
    kw = {"width": 1024, "seeds": 8, "backend": "numpy", "root_seed": 3}
    x0 = [sp.Inputs(q=[q, 2 * q, 0.5 * q], corr=0.5, law="gaussian") for q in (1e-300, 1e-30)]
    tiny, ref = (sp.simulate(net, x, **kw) for x in x0)
    np.testing.assert_allclose(tiny.log_q - math.log(1e-300), ref.log_q - math.log(1e-30),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(tiny.corr, ref.corr, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tiny.log_grad_q, ref.log_grad_q, rtol=0, atol=1e-6)
    # and the law at q = 1e-30 scaled: within 4 standard errors over seeds plus the O(L / N)
    # finite-width bias of a log-mean (5 L / N, DESIGN.md's plain relu bound).
    th = sp.theory(net, x0[1])
    shift = {"log_q": math.log(1e-300) - math.log(1e-30), "corr": 0.0, "log_grad_q": 0.0}
    for name, by in shift.items():
        mc = tiny[name]
        se = mc.std("seed").values / math.sqrt(kw["seeds"])
        gap = np.abs(mc.mean("seed").values - by - th[name].values)
        assert np.all(gap <= 4 * se + 5 * 2 / kw["width"] + 1e-12), name


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("net", ["plain", "resnet"])
def test_gelu_at_huge_q_is_relu_scaled(net, act):
    # gelu(x) = x Phi(x) -> relu(x) as |x| -> inf (and gelu_tanh, x (1 + tanh(k (x + c x^3)))
    # / 2, whose x^3 overflowed at x ~ 1e103 long after tanh saturates): at q = 1e300 the law is
    # relu's at q = 1 scaled (relu is positively homogeneous), corrections O(q^-1/2) = 1e-150;
    # the quadrature's own error is ~1e-13 in log q. gelu's closed-form inner expectation
    # m phi(m/r) / r^3 took r^3 with r ~ 1e150 (an overflow warning); it is below 0.25 / r^2
    # there, and taken as 0.
    make = getattr(sp.presets, net)
    kw = {"depth": 3, "sigma_w1": math.sqrt(2)}  # the relu-like default, stated for gelu_tanh
    gelu = sp.theory(make(act=act, **kw), sp.Inputs(q=[1e300, 3e300], corr=0.5))
    relu = sp.theory(make(act="relu", **kw), sp.Inputs(q=[1.0, 3.0], corr=0.5))
    np.testing.assert_allclose(gelu.log_q - math.log(1e300), relu.log_q, rtol=0, atol=1e-11)
    np.testing.assert_allclose(gelu.corr, relu.corr, rtol=0, atol=1e-11)
    np.testing.assert_allclose(gelu.log_grad_q, relu.log_grad_q, rtol=0, atol=1e-11)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("q", [1e250, 1e300])
def test_gelu_kernels_at_huge_q_are_the_arc_cosine_kernels(q, act):
    # The gradient Gram's off-diagonal (no dataset variable shows it): gelu' -> step(u) and
    # gelu(u) / sqrt(q) -> relu(u / sqrt(q)) as q -> inf, so E[gelu' gelu'] -> (pi - t)/(2 pi)
    # and E[gelu gelu] -> sqrt(q1 q2) (sin t + (pi - t) c)/(2 pi), t = acos c (Cho & Saul),
    # corrections O(q^-1/2) = 1e-125 or less; the quadrature's own error here is ~1.3e-13.
    from sigprop.kernels.gaussian import get_activation
    from sigprop.state.ns import NUMERIC

    c = np.array([0.5, -0.3, 0.9])
    off = c * q * math.sqrt(2)  # inputs of second moments q and 2q
    K = np.stack([[[q, o], [o, 2 * q]] for o in off])
    gelu, t = get_activation(act), np.arccos(c)
    grad, value = gelu.gram_grad_kernel(K, NUMERIC), gelu.gram_kernel(K, NUMERIC)
    np.testing.assert_allclose(grad[:, 0, 1], (np.pi - t) / (2 * np.pi), rtol=0, atol=1e-12)
    np.testing.assert_allclose(value[:, 0, 1] / (q * math.sqrt(2)),
                               (np.sqrt(1 - c * c) + (np.pi - t) * c) / (2 * np.pi),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("q", [1e-3, 1.0, 1e8, 1e20, 1e150])
def test_erf_grad_kernel_on_the_diagonal_has_no_cancellation(q):
    """On the diagonal (c = 1) det(I + 2 Sigma) = 1 + 4q exactly; the product form
    (1 + 2q)^2 - 4q^2 cancels to 0 or noise from q ~ 1e8 on (inf, or a divide-by-zero warning).
    Exact in float64 up to the rounding of a few operations."""
    from sigprop.kernels.gaussian import get_activation

    got = get_activation("erf").grad_kernel(np.float64(q), np.float64(q), np.float64(1.0))
    assert got == pytest.approx(4 / np.pi / np.sqrt(1 + 4 * q), rel=1e-14)


@pytest.mark.parametrize("q", [1e160, 1e300])
def test_erf_grad_kernel_at_huge_q_off_the_diagonal(q):
    """det(I + 2 Sigma) = 1 + 2 q1 + 2 q2 + 4 q1 q2 (1 - c^2): q1 q2 overflowed past q = 1e154
    (numpy's warning, then 0 by 1 / inf). Against det / (q1 q2) = 4 (1 - c^2) + 2 / q1 + 2 / q2
    + 1 / (q1 q2) taken apart (no cancellation: c^2 <= 0.81 here), to a few roundings."""
    from sigprop.kernels.gaussian import get_activation
    from sigprop.state.ns import NUMERIC

    c = np.array([0.5, -0.3, 0.9])
    off = c * q * math.sqrt(2)  # inputs of second moments q and 2q
    K = np.stack([[[q, o], [o, 2 * q]] for o in off])
    got = get_activation("erf").gram_grad_kernel(K, NUMERIC)[:, 0, 1]
    q1, q2 = q, 2 * q
    want = 4 / np.pi / (math.sqrt(q1) * math.sqrt(q2)
                        * np.sqrt(4 * (1 - c * c) + 2 / q1 + 2 / q2 + 1 / q1 / q2))
    np.testing.assert_allclose(got, want, rtol=1e-14)


@pytest.mark.parametrize(("net", "width"), [
    (sp.Serial(sp.Dense(1.3e154), sp.Act("relu"), sp.Dense(), sp.Act("tanh")), None),
    (sp.Serial(sp.Dense(), sp.Scale(1e100), sp.Act("relu"), sp.Dense(), sp.Act("erf")), None),
    (sp.Repeat(sp.Serial(sp.Dense(1e150), sp.BatchNorm(), sp.Act("relu")), 2), None),
    (sp.Serial(sp.Dense(1e50), sp.BatchNorm(), sp.Act("relu"), sp.Dense(), sp.Act("relu")), None),
    (sp.Repeat(sp.Residual(sp.Serial(sp.LayerNorm(gain=1e150), sp.Dense(), sp.Act("relu"),
                                     sp.Dense())), 2), 64),
    (sp.Serial(sp.Dense(), sp.Scale(1e150), sp.RMSNorm(), sp.Act("relu")), 64),
    (sp.Serial(sp.Dense(), sp.LayerNorm(gain=1e200), sp.Act("relu")), 64),
    (sp.Serial(sp.Dense(), sp.FeatureAffine(shift=1e100, shift_sq=1e300)), 64),
    (sp.Repeat(sp.Residual(sp.Serial(sp.Dense(), sp.Act("relu")), alpha=1e100), 2), 64),
    (sp.Repeat(sp.Residual(sp.Serial(sp.Dense(), sp.Act("relu")), alpha=1e200), 2), 64),
], ids=["sigma_w-1.3e154", "erf-after-1e100", "batchnorm-at-1e300", "batchnorm-at-1e100",
        "layernorm-gain-1e150", "rmsnorm-after-1e150", "layernorm-gain-1e200",
        "varying-shift-1e100", "alpha-1e100", "alpha-1e200"])
def test_extreme_parameters_give_numbers_or_a_reason(net, width):
    """Legal parameters that take the signal near or past float64's range: each ran into
    numpy's overflow warnings (the erf gradient kernel's q1 q2; BatchNorm's t^power at the
    nodes, past a matrix's last and, at power 3, before it (q = 1e100: now numbers); the
    finite-width tangent's r^3 and a norm's output scale in true units, then an eigh
    LinAlgError at gain 1e200; the 4th cumulants of features of scale 1e100, drawn though past
    half of float64's range; the cumulants a relu resnet never uses, alpha^4 at alpha = 1e100;
    a branch past float64). Now a SigpropError, or values finite, or NaN with a
    FiniteWidthWarning that says why."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", sp.FiniteWidthWarning)  # (RuntimeWarning: an error)
        try:
            ds = sp.theory(net, sp.Inputs(q=1.0, corr=0.5, n=2), width=width)
        except sp.SigpropError:
            return
    names = ["log_q", "corr", "log_grad_q"] + ([] if width is None else [
        "log_q_correction", "corr_correction", "var_log_q", "grad_q_rel_correction"])
    nan = [k for k in names if np.isnan(ds[k].values).any()]
    assert all(np.isfinite(ds[k].values[~np.isnan(ds[k].values)]).all() for k in names)
    assert not nan or any("NaN" in str(w.message) or "beyond float64" in str(w.message)
                          for w in said), (nan, [str(w.message) for w in said])


def _linear_recursion(q0, gains):
    """log q of phi's small-scale limit: q' = g q per layer (no kernel: a product)."""
    return math.log(q0) + np.concatenate([[0.0], np.cumsum(np.log(gains))])


@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_a_shrinking_stream_below_float64_follows_the_activations_small_scale_limit(engine):
    """A stream whose true scale leaves float64's normal range through a non-homogeneous
    activation: its law on true moments underflowed, log q = -inf where the true value is
    finite (the numpy engine silently; the compiled engine refused and named the numpy one).
    Below q ~ 1e-292 tanh's law is the linear map's, elu(a)'s the leaky relu's of slope a, to
    float64's precision. Expected values: the products of the small-scale gains by hand,
    q' = sigma_w^2 phi'(0)^2 q (tanh: 1), c^2 (1 + a^2) / 2 q (elu(a), a Scale c before it).
    (Breaks: the limit's r^2 dropped (tanh's r = 1: caught by erf's 4/pi); elu's kink as
    phi'(0)^2: 1.25 / 2 read 0.25; the Dense's sigma_w^2 in true units: -inf again.)"""
    if engine == "jax":
        pytest.importorskip("jax")
    run = {"engine": engine}
    # tanh at sigma_w = 1e-155: sigma_w^2 is subnormal, q shrinks by 1e-310 a layer
    th = sp.theory(sp.Repeat(sp.Serial(sp.Dense(sigma_w=1e-155), sp.Act("tanh")), 3),
                   sp.Inputs(q=1.0), **run)
    want = _linear_recursion(1.0, [1e-155**2] * 3)  # (1e-155**2: Python's own subnormal)
    want[1:] = np.arange(1, 4) * 2 * math.log(1e-155)
    np.testing.assert_allclose(th.log_q.values.ravel(), want, rtol=1e-13)
    np.testing.assert_allclose(th.log_grad_q.values.ravel(), want[::-1], rtol=1e-13)
    # erf, sigma_w = 0.5, 800 layers: q = 0.25 (4/pi) q once q is below ~1e-292
    L = 800
    th = sp.theory(sp.Repeat(sp.Serial(sp.Dense(sigma_w=0.5), sp.Act("erf")), L),
                   sp.Inputs(q=1.0), **run)
    log_q = th.log_q.values.ravel()
    start = int(np.argmax(log_q < 2 * -340))  # well inside the small-scale regime
    assert 0 < start < L - 100
    np.testing.assert_allclose(log_q[start:], log_q[start] + np.arange(L + 1 - start)
                               * math.log(0.25 * 4 / math.pi), rtol=1e-12)
    # inputs on both sides of the regime at one grid point: no law is exact across them
    # (the compiled engine first ran it, the limit written over the NaN that marks it)
    with pytest.raises(sp.OverflowInTheory, match="some inputs reach a true scale below"):
        sp.theory(sp.Serial(sp.Dense(), sp.Act("tanh"), sp.Dense(), sp.Act("tanh")),
                  sp.Inputs(q=[1e-310, 1.0], corr=0.3), **run)
    if engine == "numpy":  # a subnormal Scale: the compiled engine refuses it (below)
        a, c = 0.5, 1e-310
        th = sp.theory(sp.Repeat(sp.Serial(sp.Dense(), sp.Scale(c), sp.Act(f"elu({a})")), 3),
                       sp.Inputs(q=1.0))
        np.testing.assert_allclose(th.log_q.values.ravel()[1:],
                                   np.arange(1, 4) * (2 * math.log(c) + math.log((1 + a * a) / 2)),
                                   rtol=1e-13)


def test_the_compiled_engine_refuses_a_subnormal_number_it_would_read_as_zero():
    """XLA on the CPU flushes subnormal numbers to 0: a Scale of 1e-310 gave log q = -inf."""
    pytest.importorskip("jax")
    net = sp.Repeat(sp.Serial(sp.Dense(), sp.Scale(1e-310), sp.Act("tanh")), 3)
    with pytest.raises(sp.OverflowInTheory, match=r"Scale\.c = 1e-310 is below 2.2.*numpy"):
        sp.theory(net, sp.Inputs(q=1.0), engine="jax")
    # a bias whose square is subnormal: the program read it as 0 (q from sigma_w alone: log q
    # -921 where numpy gives -737, a review)
    biased = sp.Serial(sp.Dense(1e-200, sigma_b=1e-160), sp.Act("relu"))
    with pytest.raises(sp.OverflowInTheory, match=r"Dense\.sigma_b = 1e-160 is below 1.49e-154"):
        sp.theory(biased, sp.Inputs(q=1.0), engine="jax")
    swept = sp.Serial(sp.Dense(sigma_w=sp.sweep("sigma_w", [1.0, 1e-320])), sp.Act("tanh"))
    with pytest.raises(sp.OverflowInTheory, match=r"Dense\.sigma_w = 1e-320"):
        sp.theory(swept, sp.Inputs(q=1.0), engine="jax")


def test_monte_carlo_of_a_stream_below_float64_matches_the_theory():
    """The Monte Carlo's Dense applied sigma_w / sqrt(n) to the array (1e-157 at sigma_w =
    1e-155), tanh's output came back in true units, so the features' squares underflowed: log q
    = -inf from layer 2 on, without a word. Now a far factor goes into the log scale, the
    activation's output keeps the input's units, and below the dtype's normal range it is its
    small-scale limit. z against the theory: the seeds' own standard error; the finite-width bias of E log
    q is -Var/2 = -(L / N) (2 per layer for a linear map: Var log q_L = 2 L / N), well within."""
    L, N, S = 3, 256, 8  # (erf: its slope at 0, 2 / sqrt(pi), is no 1 a dropped r could hide;
    # sigma_w = 1e-162: the array's squares would be ~1e-326, 0 in float64)
    net = sp.Repeat(sp.Serial(sp.Dense(sigma_w=1e-162), sp.Act("erf")), L)
    mc = sp.simulate(net, sp.Inputs(q=1.0), width=N, seeds=S, dtype="float64")
    th = sp.theory(net, sp.Inputs(q=1.0))
    for name in ("log_q", "log_grad_q"):
        x = mc[name].values.reshape(S, -1)
        assert np.all(np.isfinite(x)), name
        se = x.std(axis=0, ddof=1) / math.sqrt(S)
        bias = 2 * L / N / 2
        err = np.abs(x.mean(axis=0) - th[name].values.ravel())
        assert np.all(err[1:-1] <= 4 * se[1:-1] + bias), (name, err, se)
