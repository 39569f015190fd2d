"""The typical (E log) backward gain of BatchNorm at width N (sigprop.kernels.batchnorm
bn_typical_log_gain, sigprop.engines.finite_width.typical_log_grad_q) against direct sampling of
its model and against Monte Carlo of Pre-BN and Dense -> BN -> relu nets.

Tolerances: 3 standard errors of the sampled mean of logs (the estimates are means over
independent draws), plus, against Monte Carlo nets, a bound on what the model leaves out,
measured on large runs with other seeds. Two parts:
(i) per block O(1/N): the realised forward and branch-cotangent Grams fluctuate by O(1/sqrt N)
about their laws and enter the gain smoothly; one block at N = 128, 20000 seeds (root seeds
1000 + N): N (MC - model) = -1.9 +- 0.6 (B = 3), -3.2 +- 2.0 (B = 2), so 4/N a block.
(ii) not shrinking with N: each block is given the infinite-width (mean-law) cotangent Gram
G_{l+1}, while the realised G_{l+1} of a width-N net is carried by a few heavy-tailed features:
its diagonal ratios across inputs spread by O(1) at every N (sd of log G_bb / G_00 = 0.55,
0.46, 0.29 below blocks 0, 8, 13 of Pre-BN L = 16, B = 3, N = 512), and a block's gain for
input a is convex in them (per block, L = 16, B = 3, N = 512, 4000 seeds: MC - model = +0.004
to +0.025, SE 0.006-0.010, in each of blocks 0..9; within 1 SE in blocks 10..15). Plugging
each seed's realised G_1 into the t-integral of block 0 gives 2.309 +- 0.012 against the
model's 2.280 and Monte Carlo 2.305 +- 0.010 (300 and 4000 seeds). Not the persistence of a
feature along the skip: mixing the stream between blocks by a random orthogonal map (Hadamard
times random signs and a permutation; same infinite-width law) leaves MC - model at +0.12 +-
0.03 (Pre-BN L = 16, B = 3, N = 256, 3000 seeds; unmixed: +0.13 +- 0.03).
benchmarks/RESULTS.md, "Finite width: typical BatchNorm gradient": Pre-BN L = 16, MC - model =
c + a/N over N = 128 .. 1024 (4000 seeds each): c = +0.161 +- 0.023, a = -2 +- 6 (B = 3);
c = -0.07 +- 0.09 (B = 2); c = +0.016 +- 0.007 (B = 4); so at most 0.015 a block.
Generic bound: L (4/N + 0.015). Where a test needs a tighter one (to see a 2 % error of the
predictor), its bound is measured at its own setting: |MC - model| + 3 SE of a reference run
(stated at the test). The pre-activation block Dense -> BN -> relu (no skip): L = 16, B = 3,
800 seeds: +0.80 +- 0.12, +0.63 +- 0.10, +0.60 +- 0.10, +0.58 +- 0.09 at N = 128 .. 1024 (the
cotangent of a block is not independent of the features below it: 0.04 a block); B = 2:
+0.24 +- 0.38 at N = 256. One such block (N = 128, 20000 seeds): N (MC - model) = -1.8 +- 0.8
(B = 3), -13.5 +- 3.5 (B = 2: the Dense's weights also carry the features' batch vectors,
which gradient independence drops). Bound there: L (15/N + 0.04)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.special import digamma

import sigprop as sp
from sigprop import presets
from sigprop.engines import finite_width as fw
from sigprop.errors import ConfigError, FiniteWidthWarning
from sigprop.kernels import batchnorm as bn
from sigprop.kernels.gaussian import get_activation


def _case(B, seed=0):
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(B, B)), rng.normal(size=(B, B))
    return X @ X.T + 0.3 * np.eye(B), np.diag(rng.uniform(0.5, 2, B)), Y @ Y.T / B


@pytest.mark.parametrize("B", [2, 3, 4])
def test_nodes_reproduce_the_mean_backward(B):
    """The quadrature of the per-feature variance averages to G + E[J^T Gamma J] (bn_backward,
    an independent t-integral) to the rules' measured accuracy (< 1e-13 at B <= 3, 2e-5 with
    the sphere rule at B = 4: 4e-5, the constants' comment in sigprop.kernels.batchnorm)."""
    S, G, Gam = _case(B)
    for eps in (1e-5, 1e-2):
        s2, w = bn.bn_backward_nodes(S, G, Gam, eps)
        want = np.diag(G) + np.diag(bn.bn_backward(S, Gam, eps))
        assert np.max(np.abs(s2.T @ w / want - 1)) < (1e-12 if B <= 3 else 1e-4)


@pytest.mark.parametrize("B", [2, 3])
def test_gated_nodes_reproduce_the_relu_backward(B):
    """With a relu after the BatchNorm the cotangent is gated by relu'(y), a function of u:
    the nodes average to bn_relu_backward (Stein-lemma t-integrals), to 1e-9 (B = 2; that
    kernel's own accuracy) and 1e-13 (B = 3: panels between the gate's kinks); refused at
    B = 4, where the kinks lie on great circles of the sphere rule."""
    S, _, H = _case(B)
    relu = get_activation("relu")
    for eps in (1e-5, 1e-2):
        s2, w = bn.bn_backward_nodes(S, np.zeros((B, B)), H, eps, relu)
        want = np.diag(bn.bn_relu_backward(S, H, np.ones(B), eps))
        assert np.max(np.abs(s2.T @ w / want - 1)) < (1e-8 if B == 2 else 1e-12)
    with pytest.raises(ConfigError, match="B = 4"):
        bn.bn_backward_nodes(_case(4)[0], np.zeros((4, 4)), np.eye(4), 1e-5, relu)


def test_log_mean_of_a_chi_square_and_its_limits():
    """sigma^2 = c: E log (c chi^2_N / N) = log c + digamma(N/2) - log(N/2) exactly, at scales
    c far below 1 too (the t grid then ends later: an end fixed for c >= 1 gave -2.9 at
    c = 1e-8, N = 16); a node of sigma^2 = 0 puts mass on mean = 0: -inf; a two-point law at
    N = 1 is the mean of the logs of its points, and at N -> infinity the log of its mean."""
    for c in (1e-8, 1.0, 1e4):
        for N in (1, 7, 16, 256):
            got = bn.log_mean_of(np.full((3, 1), c), np.full(3, 1 / 3), N)[0]
            assert abs(got - (math.log(c) + digamma(N / 2) - math.log(N / 2))) < 1e-8
    assert bn.log_mean_of(np.array([[0.0], [1.0]]), np.array([0.5, 0.5]), 16)[0] == -np.inf
    s2, w = np.array([[3.0], [0.5]]), np.array([0.5, 0.5])
    assert abs(bn.log_mean_of(s2, w, 1)[0]
               - (0.5 * math.log(1.5) + digamma(0.5) + math.log(2))) < 1e-8
    assert abs(bn.log_mean_of(s2, w, 10**9)[0] - math.log(1.75)) < 1e-6


def test_typical_gain_at_one_feature_is_the_mean_log_of_its_nodes():
    """At N = 1, E log x^2 for x | node ~ N(0, sigma2) is E log sigma2 + digamma(1/2) + log 2
    (no t-integral): the BatchNorm nodes of a Pre-BN block's second layer (three inputs) give
    that to within the binning of their law (:func:`bn._compressed` keeps each bin's mean, so
    log's Jensen gap is at most h^2 / 8, h the bin width in log sigma2). The weights sum to 1
    - 2e-16 there, and 1 - phi floored phi at it: the t grid ran to e^700, where 2 t sigma2
    overflowed, and the gain came out NaN at eps = 1e-5 (said to be beyond float64) on
    numpy 2.4; phi is now taken by itself below 1/2."""
    def sym(d, o):
        return np.full((3, 3), o) + (d - o) * np.eye(3)

    S, G, Gam = sym(1.0, 0.5), sym(5.0842, -2.0421), sym(5.0842, -0.6807)
    for eps in (1e-6, 1e-5, 1e-4):
        s2, w = bn.bn_backward_nodes(S, G, Gam, eps, None)
        h = np.log(s2.max() / s2.min()) / bn.BINS
        want = w @ np.log(s2 / np.diagonal(G)) + math.log(2) + math.log(0.5)
        got = bn.bn_typical_log_gain(S, G, Gam, eps, 1)
        np.testing.assert_allclose(got, want, rtol=0, atol=h**2 / 8)


@pytest.mark.parametrize("B", [2, 3])
def test_typical_gain_against_sampling_its_model(B):
    """Direct draws of the model: N features, u ~ N(0, S), d ~ N(0, G), g ~ N(0, Gamma),
    the log of mean_i (d + J^T g)_a^2 over mean_i d_a^2; 40000 draws, 3 standard errors
    (sd of the logs 1.3-1.7 at B = 2, 0.4-0.6 at B = 3: SE 0.007-0.008 and 0.002-0.003, so a
    2 % error of the t-integral, 0.014 on input 0 at B = 3, is outside by 2 SE)."""
    S, G, Gam = _case(B, seed=1)
    eps, N, draws = 1e-4, 64, 40000
    pred = bn.bn_typical_log_gain(S, G, Gam, eps, N)
    rng = np.random.default_rng(5)
    P = np.eye(B) - 1 / B
    u = rng.multivariate_normal(np.zeros(B), S, size=(draws, N))
    d = rng.multivariate_normal(np.zeros(B), G, size=(draws, N))
    g = rng.multivariate_normal(np.zeros(B), Gam, size=(draws, N))
    w = u @ P
    s2 = np.sum(w * w, -1) / B + eps
    Jg = (g @ P - w * (np.sum(w * (g @ P), -1) / (B * s2))[..., None]) / np.sqrt(s2)[..., None]
    logs = np.log(np.mean((d + Jg) ** 2, 1)) - np.log(np.mean(d**2, 1))
    se = logs.std(axis=0, ddof=1) / math.sqrt(draws)
    assert np.all(np.abs(logs.mean(0) - pred) < 3 * se), (logs.mean(0), pred, se)
    mean_gain = np.log(1 + np.diag(bn.bn_backward(S, Gam, eps)) / np.diag(G))
    assert np.all(pred < mean_gain)  # Jensen: the typical gain is below the mean gain


def test_typical_in_the_theory_dataset_and_nan_for_other_nets():
    """sp.theory(width=N) carries it at the recorded layers for Pre-BN (at the top, grad_q_L =
    |delta_L|^2 / N with delta_L ~ N(0, I): E log = digamma(N/2) - log(N/2), about -1/N),
    NaN for a Pre-LN net; None for B outside 2..4; a zero cotangent is refused."""
    net, inputs = presets.prebn(3), sp.Inputs(q=1.0, corr=0.5, n=2, law="gaussian")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FiniteWidthWarning)
        ds = sp.theory(net, inputs, width=64, layers=[0, 3])
        other = sp.theory(presets.preln(3), sp.Inputs(q=1.0, corr=0.5, n=2), width=64)
    want = fw.typical_log_grad_q(net, inputs, 64)[[0, 3]]
    np.testing.assert_array_equal(ds["typical_log_grad_q"].values, want)
    assert want[0, 0] > 0
    np.testing.assert_allclose(want[1], digamma(32) - np.log(32), rtol=1e-15)
    assert np.all(np.isnan(other["typical_log_grad_q"].values))
    with pytest.warns(FiniteWidthWarning) as rec:  # no first-order rule for BatchNorm
        three = sp.theory(presets.prebn(2), sp.Inputs(q=1.0, corr=0.5, n=3, law="gaussian"),
                          width=64)
    assert any("BatchNorm" in str(w.message) and "NaN from there on" in str(w.message)
               for w in rec)
    assert np.all(np.isnan(three["var_log_q"].values[1:]))  # from the first block on
    assert np.all(np.isfinite(three["typical_log_grad_q"].values))
    assert fw.typical_log_grad_q(presets.prebn(2), sp.Inputs(q=1.0, corr=0.5, n=5,
                                                             law="gaussian"), 64) is None
    with pytest.raises(ConfigError):
        bn.bn_typical_log_gain(np.eye(2), np.zeros((2, 2)), np.eye(2), 1e-5, 8)


@pytest.mark.parametrize("N", [4, 16])
def test_a_batchnorm_of_huge_eps_is_a_fixed_linear_map_in_the_typical_gradient(N):
    """Dense(sigma_w) -> BatchNorm(eps = 1e8) -> linear, B = 4: at eps >> the batch variance
    the norm's Jacobian is the constant P / sqrt(eps) (P = I - 11^T / B), so the gradient is
    the top cotangent's |g|^2 / N (chi^2_N / N) times the Dense's |W^T v|^2 / |v|^2 (an
    independent sigma_w^2 chi^2_N / N) times (1 - 1/B) / eps: E log grad_q_0 = log(sigma_w^2
    (B - 1) / (B eps)) + 2 (digamma(N / 2) - log(N / 2)), up to O(1 / eps). (A sampling of W
    and the cotangent apart from the engine gave -18.7276 +- 0.0025 at N = 4 against the
    closed form's -18.7244.) Without the Dense's chi^2 term the block was 0.27 off at N = 4."""
    sw, B, eps = 1.3, 4, 1e8
    net = sp.Repeat(sp.Serial(sp.Dense(sigma_w=sw), sp.BatchNorm(eps=eps), sp.Act("linear")), 1)
    x0 = sp.Inputs(q=1.0, corr=0.5, n=B, law="gaussian")
    exact = math.log(sw**2 * (B - 1) / (B * eps)) + 2 * (digamma(N / 2) - math.log(N / 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FiniteWidthWarning)
        typical = fw.typical_log_grad_q(net, x0, N)[0]
    np.testing.assert_allclose(typical, exact, rtol=1e-6)


def test_a_run_of_uniform_weights_is_not_covered():
    """The pre-activation block's Dense term is E log of sigma_w^2 chi^2_N / N, the law of
    |W^T v|^2 / |v|^2 for Gaussian weights only: for uniform ones it differs (at N = 1, E log
    W^2 = log 3 - 2 = -0.90 for W uniform of unit variance against digamma(1/2) + log 2 = -1.27),
    so such a run is outside what typical_log_grad_q covers: None, and NaN in sp.theory, said."""
    assert abs((math.log(3) - 2) - (digamma(0.5) + math.log(2))) > 0.3
    x0 = sp.Inputs(q=1.0, corr=0.5, n=4, law="gaussian")
    for init, covered in (("normal", True), ("uniform", False)):
        net = sp.Repeat(sp.Serial(sp.Dense(sigma_w=1.3, init=init), sp.BatchNorm(eps=1e8),
                                  sp.Act("linear")), 1)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            typical = fw.typical_log_grad_q(net, x0, 1)
            ds = sp.theory(net, x0, width=1)
        assert (typical is not None) == covered
        assert np.isfinite(ds.typical_log_grad_q.values).all() == covered
        assert any("typical_log_grad_q is NaN: it covers" in str(w.message)
                   and "Gaussian weights" in str(w.message) for w in rec) != covered


def test_typical_over_a_sweep_is_each_points_own():
    """A swept net (the warning for BatchNorm at small batch points users to this variable) gets
    at each grid point the value of the net built at that point (it was NaN everywhere)."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2, law="gaussian")
    net = presets.prebn(3, alpha=sp.sweep("alpha", [0.5, 1.0]), sigma_w1=sp.sweep("w", [1.0, 3.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FiniteWidthWarning)
        ds = sp.theory(net, inputs, width=64)
        for alpha in (0.5, 1.0):
            for w in (1.0, 3.0):
                one = sp.theory(presets.prebn(3, alpha=alpha, sigma_w1=w), inputs, width=64)
                np.testing.assert_array_equal(
                    ds["typical_log_grad_q"].sel(alpha=alpha, w=w).values,
                    one["typical_log_grad_q"].values)
    assert np.unique(ds["typical_log_grad_q"].isel(layer=0, input=0).values).size == 4  # (relu:
    # the gain depends on alpha sigma_w1 only)


def test_typical_of_a_net_however_written():
    """The same net written through nested Repeats, or with exact scales between its blocks,
    has the same typical gradient (it was NaN): Repeat(Repeat(b, 2), 2) is Repeat(b, 4) at its
    layers 0, 2, 4; Scale(1) after each block changes nothing; Scale(2) after
    x -> x + F(BN x) is x -> 2 x + 2 F(BN x) (BN x being scale-free)."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2, law="gaussian")
    blk = presets.prebn(1).blocks()[0]

    def typical(net):
        return fw.typical_log_grad_q(net, inputs, 128)

    plain = typical(sp.Repeat(blk, 4))
    np.testing.assert_array_equal(typical(sp.Repeat(sp.Repeat(blk, 2), 2)), plain[::2])
    np.testing.assert_array_equal(typical(sp.Repeat(sp.Serial(blk, sp.Scale(1.0)), 4)), plain)
    np.testing.assert_allclose(
        typical(sp.Repeat(sp.Serial(blk, sp.Scale(2.0)), 4)),
        typical(sp.Repeat(sp.Residual(blk.branch, alpha=2.0, beta=2.0), 4)),
        rtol=1e-12)  # (the same laws in other units: round-off)
    assert np.isfinite(plain).all()


def test_typical_through_a_zero_scale_or_a_run_split_over_layers():
    """Below a Scale(0) the gradient is exactly 0: E log grad_q = -inf there (it raised a
    ConfigError from the BatchNorm kernel, fed a zero cotangent); a top-level Serial(Dense,
    BatchNorm, Act) is three layers, the run's gain lands on its first (as Repeat(run, 1)
    has it) and the rows inside it are NaN, said (all of it was NaN). At a swept scale the
    NaN of each point is named by its point."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2, law="gaussian")

    def run():
        return sp.Serial(sp.Dense(), sp.BatchNorm(), sp.Act("relu"))

    def typical(net):
        return sp.theory(net, inputs, width=64).typical_log_grad_q.values

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        zero = typical(sp.Repeat(sp.Serial(run(), sp.Scale(0.0)), 2))
        split, one = typical(run()), typical(sp.Repeat(run(), 1))
        typical(sp.Repeat(sp.Serial(run(), sp.Scale(sp.sweep("c", [1e-200, 1.0]))), 2))
    assert (zero[:2] == -np.inf).all() and np.isfinite(zero[2]).all()
    np.testing.assert_array_equal(split[[0, 3]], one)
    assert np.isnan(split[1:3]).all()
    assert any("NaN at layers 1..2: inside a Dense -> BatchNorm -> Act run" in str(w.message)
               for w in said)
    assert any("NaN at layers 0..1 at c = 1e-200: layer 2" in str(w.message) for w in said)
    # unresolved in a run split over layers: the rows inside it NaN too (they kept 0.0)
    with pytest.warns(FiniteWidthWarning, match="NaN at layers 0..3: layer 2: a BatchNorm"):
        tiny = typical(sp.Serial(sp.Scale(1e-200), run()))
    assert np.isnan(tiny[:4]).all() and np.isfinite(tiny[4]).all()


def test_a_batchnorm_in_a_branch_it_never_adds():
    """x -> beta x + 0 F(x) with F = Dense -> BN -> relu (ReZero at init) at B = 2 is beta x:
    every correction 0 and grad_q_l = beta^(2 (L - l)) |delta_L|^2 / N, so E log grad_q_l =
    2 (L - l) log beta + digamma(N/2) - log(N/2), and no BatchNorm warning (its branch never
    reaches the output). It warned of BatchNorm's rare features and gave NaN; at alpha = 0.3
    the same branch raised a TypeError from deep inside the warning's walk (a decoupled cross
    moment stored as an array, which BatchNorm's law reads as unknown)."""
    def net(alpha, beta=2.0):
        return sp.Repeat(sp.Residual(sp.Serial(sp.Dense(), sp.BatchNorm(), sp.Act("relu")),
                                     alpha=alpha, beta=beta), 3)

    N, inputs = 64, sp.Inputs(q=1.0, corr=0.5, n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = sp.theory(net(0.0), inputs, width=N)
    for k in ("log_q_correction", "corr_correction", "mean_correction", "var_log_q"):
        np.testing.assert_array_equal(ds[k].values, 0.0, err_msg=k)
    np.testing.assert_allclose(ds.grad_q_rel_correction.values, 0.0,
                               atol=1e-8)  # (second differences at step 1e-3: 1e-16 / 1e-6 x L)
    want = 2 * (3 - np.arange(4)) * math.log(2.0) + digamma(N / 2) - math.log(N / 2)
    np.testing.assert_allclose(ds.typical_log_grad_q.values, want[:, None] + 0 * ds.input.values,
                               rtol=1e-14)  # (sums of logs: round-off)
    with pytest.warns(FiniteWidthWarning, match="BatchNorm at batch B = 2"):
        ds = sp.theory(net(0.3), inputs)
    assert np.isfinite(ds.log_q.values).all()
    # swept over alpha = 0 and 0.5: each point its own (at 0 the branch's BatchNorm, which has
    # no finite-width rule, made the whole grid NaN)
    swept = sp.theory(net(sp.sweep("a", [0.0, 0.5])), inputs, width=N)
    for k in ("log_q_correction", "var_log_q", "typical_log_grad_q"):
        np.testing.assert_array_equal(swept[k].sel(a=0.0).values,
                                      sp.theory(net(0.0), inputs, width=N)[k].values)


def test_zero_weights_before_a_batchnorm():
    """Dense(sigma_w = 0) -> BatchNorm -> relu: the stream is exactly 0 (log q = -inf) and so is
    the gradient below the Dense (typical log grad_q = -inf, as log grad_q), with the zero
    stream named in the warning; the other grid point is its own net's, and its BatchNorm
    warning is given (the zero point's s^2 = eps throughout is not the worst). It raised 'BatchNorm
    meets features that are not jointly Gaussian' (the warning's walk left the Dense out at
    a zero stream), then numpy's 'zero-size array' from the t-integral at a zero Gram."""
    def net(w):
        return sp.Repeat(sp.Serial(sp.Dense(w), sp.BatchNorm(), sp.Act("relu")), 9)

    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        warnings.simplefilter("error", RuntimeWarning)
        ds = sp.theory(net(sp.sweep("w", [0.0, 1.0])), inputs, width=64)
        one = sp.theory(net(1.0), inputs, width=64)
        sp.theory(net(sp.sweep("w", [0.0, 1.0])), inputs)  # (the BatchNorm warning alone)
    assert any("exactly 0 here (zero weights)" in str(w.message) for w in said)
    assert any("BatchNorm at batch B = 2" in str(w.message) for w in said)  # (at w = 1)
    zero = ds.sel(w=0.0)
    assert (zero.log_q.sel(layer=slice(1, None)) == -np.inf).all()
    for name in ("typical_log_grad_q", "log_grad_q"):
        assert (zero[name].sel(layer=slice(0, 2)) == -np.inf).all()
        np.testing.assert_allclose(ds[name].sel(w=1.0).values, one[name].values,
                                   rtol=1e-14)  # (a sweep's broadcast laws: round-off)


def test_batch_of_two_at_any_eps():
    """B = 2: BatchNorm's Jacobian is P eps / s^3 (w lies along P), all of it the part that
    P - w w^T / (B s^2) leaves after a cancellation; below eps / lam ~ 1e-16 that lost its
    digits and the typical gain froze (-65.6 from eps = 1e-25 on). Dense -> BN -> relu at small
    eps: E log grad_q_0 = 2 log eps + const + O(eps / lam), so 20 log 10 per 10 decades."""
    inputs = sp.Inputs(q=1.0, corr=0.0, n=2, law="gaussian")

    def typical(eps):
        net = sp.Repeat(sp.Serial(sp.Dense(1.0), sp.BatchNorm(eps=eps), sp.Act("relu")), 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FiniteWidthWarning)
            return sp.theory(net, inputs, width=128).typical_log_grad_q.values[0, 0]

    np.testing.assert_allclose(typical(1e-20) - typical(1e-30), 20 * math.log(10),
                               atol=5e-7)  # (_compressed's bins: ~1e-9 of each value, ~1e2)


def test_unresolved_typical_values_are_nan_with_a_reason():
    """Where the typical gain has no number (a batch with no spread: identical inputs, or a
    scale below float64; a gain beyond float64) it is NaN from that layer down with a warning
    saying why (they raised numpy's ValueError from inside the t-integral), and a BatchNorm
    net outside the stacks it covers says so (it was NaN unsaid, though the BatchNorm warning
    points to it); the BatchNorm warning itself takes any scale (ZeroDivisionError at sigma_w
    = 1e-160). No numpy RuntimeWarning reaches the user."""
    def blk(sw=1.0, eps=1e-5):
        return sp.Serial(sp.Dense(sw), sp.BatchNorm(eps=eps), sp.Act("relu"))

    three = sp.Inputs(q=1.0, corr=0.5, n=3, law="gaussian")
    cases = [(sp.Repeat(blk(), 2), sp.Inputs(q=1.0, corr=1.0, n=3, law="gaussian"),
              r"NaN at layers 0..1: layer 2: a BatchNorm meets a batch with no spread"),
             (sp.Repeat(blk(1e-100), 2), three, r"NaN at layers 0..1: layer 2: .*no spread"),
             (presets.prebn(2, alpha=1e150), sp.Inputs(q=1.0, corr=0.5, n=2, law="gaussian"),
              r"NaN at layer 0: layer 1: a BatchNorm's typical gain is beyond float64"),
             (presets.prebn(4, shape="act_dense"), three, r"typical_log_grad_q is NaN: it covers")]
    for net, inputs, said in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            with pytest.warns(FiniteWidthWarning, match=said):
                ds = sp.theory(net, inputs, width=64)
        assert np.isnan(ds.typical_log_grad_q.values[0]).all()
    with warnings.catch_warnings():  # at N = 1 every layer has a number (it was NaN: the test
        warnings.simplefilter("error", RuntimeWarning)  # of the nodes above)
        ds = sp.theory(presets.prebn(2), three, width=1)
    assert np.isfinite(ds.typical_log_grad_q.values).all()
    for net in (sp.Repeat(blk(1e-160), 2), sp.Repeat(blk(eps=1e155), 2)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            sp.theory(net, three)
    # the t-integral's own domain: nodes all of sigma2 = 0 (a mean of zeros): -inf
    assert (bn.log_mean_of(np.zeros((5, 2)), np.full(5, 0.2), 64) == -np.inf).all()


def _typical_and_monte_carlo(net, inputs, N, seeds, root_seed):
    """(theory at width N, log grad_q_0 of input 0 per seed, its standard error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FiniteWidthWarning)
        th = sp.theory(net, inputs, width=N)
        mc = sp.simulate(net, inputs, width=N, seeds=seeds, backend="numpy", dtype="float64",
                         root_seed=root_seed)
    x = mc["log_grad_q"].values[:, 0, 0]
    return th, x, x.std(ddof=1) / math.sqrt(seeds)


@pytest.mark.parametrize("B", [2, 3, 4])
def test_prebn_typical_gradient_against_monte_carlo(B):
    """Pre-BN, L = 4 blocks, alpha = 0.7, width 256: the predicted E log grad_q_0 against the
    mean over seeds of log grad_q_0 (input 0), 3 standard errors + the model's error measured
    at this setting (below); the infinite-width log E grad_q_0 lies far outside at B = 2 (the
    point of it)."""
    L, N, seeds = 4, 256, 4000
    net, inputs = presets.prebn(L, alpha=0.7), sp.Inputs(q=1.0, corr=0.5, n=B, law="gaussian")
    th, x, se = _typical_and_monte_carlo(net, inputs, N, seeds, root_seed=11)
    pred = float(th["typical_log_grad_q"].values[0, 0])
    # Model error here, |MC - model| + 3 SE of a reference run (20000 seeds, root seeds 50000 +
    # 100 B + k, k < 10): MC 9.8956 +- 0.0254, 4.3601 +- 0.0076, 2.8269 +- 0.0030 against the
    # model's 9.9030, 4.3412, 2.8271 (B = 2, 3, 4): 0.084, 0.042, 0.009, below the generic
    # L (4/N + 0.015) = 0.12 (module docstring). A predictor 2 % high is caught at B = 4 (0.057
    # against 3 SE + 0.010 = 0.03); at B = 2, 3 the spread over seeds (sd 3.6, 1.1) and the
    # unmodelled excess hide it (2 % is 0.20, 0.087).
    model_error = {2: 0.085, 3: 0.045, 4: 0.010}[B]
    assert abs(x.mean() - pred) < 3 * se + model_error, (x.mean(), pred, se)
    if B == 2:
        assert float(th["log_grad_q"].values[0, 0]) - x.mean() > 10 * se


@pytest.mark.parametrize("B, beta", [(3, 0.8), (4, 0.8), (3, 0.0)])
def test_prebn_typical_gradient_with_a_scaled_or_no_skip(B, beta):
    """x -> beta x + alpha F(BN x) with beta != 1: each block's gain is relative to the mean
    square of the cotangent it receives, not of beta times it (a beta^2 reference was off by
    -L log beta^2, 1.34 here at beta = 0.8; beta = 0 was refused). L = 3, N = 128, 200 seeds;
    bound 3 SE + L (4/N + 0.015) (module docstring)."""
    L, N, seeds = 3, 128, 200
    blk = sp.Residual(sp.Serial(sp.BatchNorm(eps=1e-5), sp.Dense(sigma_w=2**0.5), sp.Act("relu"),
                                sp.Dense()), alpha=0.7, beta=beta)
    net, inputs = sp.Repeat(blk, L), sp.Inputs(q=1.0, corr=0.5, n=B, law="gaussian")
    th, x, se = _typical_and_monte_carlo(net, inputs, N, seeds, root_seed=5)
    pred = float(th["typical_log_grad_q"].values[0, 0])
    assert abs(x.mean() - pred) < 3 * se + L * (4 / N + 0.015), (x.mean(), pred, se)


def _bn_block(depth, eps=1e-5):
    """The pre-activation BatchNorm block of issue 16: Dense, BatchNorm, relu (no skip)."""
    return sp.Repeat(sp.Serial(sp.Dense(sigma_w=2**0.5), sp.BatchNorm(eps=eps), sp.Act("relu")),
                     depth)


@pytest.mark.parametrize("B", [2, 3])
def test_preactivation_block_typical_gradient_against_monte_carlo(B):
    """Dense -> BN -> relu, L = 4, width 256: as the Pre-BN test, with the model's error
    measured at this setting (below; the generic bound is L (15/N + 0.04), module docstring);
    the infinite-width log E grad_q_0 lies far outside at B = 2."""
    L, N, seeds = 4, 256, 4000
    net, inputs = _bn_block(L), sp.Inputs(q=1.0, corr=0.5, n=B)
    th, x, se = _typical_and_monte_carlo(net, inputs, N, seeds, root_seed=13)
    pred = float(th["typical_log_grad_q"].values[0, 0])
    # Model error here, |MC - model| + 3 SE of a reference run (20000 seeds, root seeds 50000 +
    # 100 B + k, k < 10): MC 10.4686 +- 0.0388, 6.0005 +- 0.0107 against the model's 10.4888,
    # 5.8578 (B = 2, 3): 0.137, 0.175, below the generic L (15/N + 0.04) = 0.39.
    model_error = {2: 0.14, 3: 0.18}[B]
    assert abs(x.mean() - pred) < 3 * se + model_error, (x.mean(), pred, se)
    if B == 2:
        assert float(th["log_grad_q"].values[0, 0]) - x.mean() > 10 * se
    assert fw.typical_log_grad_q(net, sp.Inputs(q=1.0, corr=0.5, n=4), N) is None  # relu gate


@pytest.mark.slow
@pytest.mark.parametrize("B, N, seeds", [(2, 256, 4000), (2, 1024, 10000), (3, 256, 4000),
                                         (4, 256, 4000)])
def test_prebn_issue_depth(B, N, seeds):
    """Issue 16's depth, L = 16: 3 SE + the model's error measured at each setting (below); the
    infinite-width log E grad_q_0 is outside by more than 3 standard errors."""
    L = 16
    net, inputs = presets.prebn(L), sp.Inputs(q=1.0, corr=0.5, n=B, law="gaussian")
    th, x, se = _typical_and_monte_carlo(net, inputs, N, seeds, root_seed=17)
    pred = float(th["typical_log_grad_q"].values[0, 0])
    # Model error, |MC - model| + 3 SE of benchmarks/finite_width_agreement.py's runs (4000
    # seeds, root seed 2024 + 1000 B + N): MC 27.285 +- 0.118, 44.678 +- 0.093, 11.018 +- 0.029,
    # 6.790 +- 0.010 against the model's 27.221, 44.810, 10.851, 6.766 at (B, N) = (2, 256),
    # (2, 1024), (3, 256), (4, 256): 0.42, 0.41, 0.26, 0.053, below the generic L (4/N + 0.015)
    # = 0.49 (0.30 at N = 1024). A predictor 2 % high is caught at (2, 1024) (0.90 against
    # 3 SE + 0.42 = 0.60 with 10000 seeds; 0.71 with 4000, too close) and at B = 4 (0.135
    # against 0.08); at B = 3 the unmodelled excess (+0.16, module docstring) is itself 1.5 %.
    model_error = {(2, 256): 0.42, (2, 1024): 0.42, (3, 256): 0.26, (4, 256): 0.055}[B, N]
    assert abs(x.mean() - pred) < 3 * se + model_error, (x.mean(), pred, se)
    assert float(th["log_grad_q"].values[0, 0]) - x.mean() > 3 * se
