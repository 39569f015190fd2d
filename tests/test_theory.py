"""The theory engine against closed forms derived by hand (each cited beside its check).

With closed-form kernels the engine is exact, so agreement is asserted to ~1e-12 (float64
rounding accumulated over the depth), not to a loose tolerance.
"""

import importlib.util
import json
import math

import numpy as np
import pytest

import sigprop as sp
from sigprop.kernels.batchnorm import bn_relu_backward

RTOL = 1e-12


def relu_kernel(q1, q2, c):
    """Arc-cosine kernel of degree 1 (Cho & Saul 2009): E[relu(u) relu(v)]."""
    th = math.acos(max(-1.0, min(1.0, c)))
    return math.sqrt(q1 * q2) / (2 * math.pi) * (math.sin(th) + (math.pi - th) * c)


def test_relu_one_layer_c_map_from_zero_is_one_over_pi():
    # Cho & Saul: at c = 0, k1 = sqrt(q1 q2)/(2 pi); with sigma_w^2 = 2, q' = q, so c' = 1/pi.
    x0 = sp.Inputs(q=1.0, corr=0.0, n=2)
    th = sp.theory(sp.presets.plain(1, shape="dense_act"), x0)
    assert th.corr.values[-1, 0, 1] == pytest.approx(1 / math.pi, rel=RTOL)
    assert th.q.values[-1] == pytest.approx([1.0, 1.0], rel=RTOL)


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_preln_relu_q_grows_linearly(alpha):
    # Pre-LN, eps = 0: LN x has q = 1; Dense(2) -> q = 2; relu -> q = 1; Dense(1) -> q = 1; the
    # branch ends in a Dense so its cross moment with the stream is m m_f = 0:
    # q_{l+1} = q_l + alpha^2, hence q_L = q_0 + L alpha^2 (mean stays m_0).
    L = 300
    x0 = sp.Inputs(q=[1.0, 2.25], corr=0.5, mean=[0.5, 1.0])
    th = sp.theory(sp.presets.preln(L, eps=0.0, alpha=alpha), x0)
    layers = np.arange(L + 1)[:, None]
    np.testing.assert_allclose(th.q.values, np.array(x0.q) + alpha**2 * layers, rtol=RTOL)
    np.testing.assert_allclose(th["mean"].values, np.broadcast_to(x0.mean, (L + 1, 2)), rtol=RTOL)


def test_preln_relu_gradient_telescopes():
    # Backward through one block, eps = 0: G_l = G_{l+1} (1 + alpha^2 sigma1^2 sigma2^2 E[relu'^2]
    # / v_l) = G_{l+1} (q_l + alpha^2) / q_l (zero input mean: v = q), so grad_q_0 / grad_q_L =
    # q_L / q_0.
    x0 = sp.Inputs(q=[1.0, 3.0], corr=0.2)
    th = sp.theory(sp.presets.preln(200, eps=0.0), x0)
    ratio = th.grad_q.values[0] / th.grad_q.values[-1]
    np.testing.assert_allclose(ratio, th.q.values[-1] / th.q.values[0], rtol=1e-11)


def test_postln_q_is_gain_squared():
    # LN output has mean 0 and q = gain^2 v/(v + eps) = gain^2 at eps = 0, whatever came in.
    gain = 1.7
    net = sp.Repeat(sp.Serial(sp.Residual(sp.presets.branch("tanh")), sp.LayerNorm(0.0, gain)), 40)
    th = sp.theory(net, sp.Inputs(q=[0.3, 5.0], corr=-0.4, mean=[0.1, -0.5]))
    np.testing.assert_allclose(th.q.values[1:], gain**2, rtol=RTOL)
    np.testing.assert_allclose(th["mean"].values[1:], 0.0, atol=1e-14)


def test_unnormalised_relu_resnet_growth_rate_in_log_space():
    # resnet block: q' = q + alpha^2 s1^2 s2^2 q/2 (relu halves q; branch decorrelated from x), so
    # q_L = q_0 (1 + alpha^2 s1^2 s2^2 / 2)^L. Depth 10^4 with alpha = 1 is e^6931: q overflows,
    # log_q must not.
    L, alpha, s1, s2 = 10_000, 1.0, math.sqrt(2), 1.3
    th = sp.theory(sp.presets.resnet(L, alpha=alpha, sigma_w1=s1, sigma_w2=s2), sp.Inputs(q=2.0, n=2))
    expected = math.log(2.0) + L * math.log1p(alpha**2 * s1**2 * s2**2 / 2)
    assert np.all(np.isfinite(th.log_q.values)) and np.all(np.isfinite(th.log_grad_q.values))
    np.testing.assert_allclose(th.log_q.values[-1], expected, rtol=RTOL)
    assert np.isinf(th.q.values[-1]).all()  # beyond float64, as documented: read log_q


@pytest.mark.slow
def test_relu_resnet_depth_one_million_is_finite():
    th = sp.theory(sp.presets.resnet(10**6), sp.Inputs(q=1.0))
    expected = 10**6 * math.log(2.0)
    np.testing.assert_allclose(th.log_q.values[-1], expected, rtol=1e-10)
    assert np.all(np.isfinite(th.log_grad_q.values))


@pytest.mark.parametrize("branch", [
    [sp.FeatureAffine(gain=1.0, shift=0.7), sp.LayerNorm()],
    [sp.LayerNorm(), sp.FeatureAffine(gain=1.3, shift=0.2)],
    [sp.FeatureAffine(gain=0.5, shift=0.7), sp.RMSNorm()],
], ids=["affine-ln", "ln-affine", "affine-rms"])
def test_a_branch_without_weights_is_the_deterministic_nets(branch):
    """A residual branch of norms and fixed affines draws no weight: x + F(x) is one function
    of the inputs, and on inputs of exactly the prescribed q, mean and corr (law 'fixed') the
    Monte Carlo's arrays give the theory's q, mean and corr at any width, to rounding. The
    branch's cross moment with the stream is then the whole test (a LayerNorm meeting a mean
    t not along the stream's m: its transpose moved corr 0.417 -> 0.346)."""
    x0 = sp.Inputs(q=[1.0, 4.0], mean=[0.5, -0.4], corr=0.3)
    net = sp.Repeat(sp.Residual(sp.Serial(*branch)), 2)
    th, mc = sp.theory(net, x0), sp.simulate(net, x0, width=64, seeds=2, dtype="float64")
    for v in ("q", "mean", "corr"):
        np.testing.assert_allclose(mc[v].values, np.broadcast_to(th[v].values, mc[v].shape),
                                   rtol=1e-12, atol=1e-12, err_msg=v)


def test_branch_ending_in_relu_tracks_the_mean_exactly():
    # x + a relu(W x): u = W x ~ N(0, s^2 K) independent of x's features, so
    # m' = m + a mu,  K' = K + a^2 k(s^2 K) + a (m mu^T + mu m^T),  mu_a = sqrt(s^2 q_a / (2 pi)).
    a, s2, L = 0.7, 2.0, 25
    q, m, c = [1.0, 2.0], [0.6, -0.3], 0.35
    x0 = sp.Inputs(q=q, mean=m, corr=c)
    net = sp.Repeat(sp.Residual(sp.Serial(sp.Dense(math.sqrt(s2)), sp.Act("relu")), alpha=a), L)
    th = sp.theory(net, x0)
    K = x0.gram.copy()
    mv = np.array(m)
    for _ in range(L):
        mu = np.sqrt(s2 * np.diag(K) / (2 * math.pi))
        k = np.array([[relu_kernel(s2 * K[i, i], s2 * K[j, j], K[i, j] / math.sqrt(K[i, i] * K[j, j]))
                       for j in range(2)] for i in range(2)])
        K = K + a**2 * k + a * (np.outer(mv, mu) + np.outer(mu, mv))
        mv = mv + a * mu
    np.testing.assert_allclose(th.q.values[-1], np.diag(K), rtol=RTOL)
    np.testing.assert_allclose(th["mean"].values[-1], mv, rtol=RTOL)
    np.testing.assert_allclose(th.corr.values[-1, 0, 1], K[0, 1] / math.sqrt(K[0, 0] * K[1, 1]),
                               rtol=RTOL)


def test_pre_activation_branch_needs_gaussian_stream():
    # x + Dense(relu(x)): with Gaussian inputs the stream is Gaussian; K' = K + s^2 k(K).
    net = sp.presets.resnet(10, shape="act_dense")
    with pytest.raises(sp.UnsupportedComposition, match="Act"):
        sp.theory(net, sp.Inputs(q=1.0, corr=0.3, n=2))
    x0 = sp.Inputs(q=1.0, corr=0.3, n=2, law="gaussian")
    th = sp.theory(net, x0)
    K = x0.gram.copy()
    for _ in range(10):
        k = np.array([[relu_kernel(K[i, i], K[j, j], K[i, j] / math.sqrt(K[i, i] * K[j, j]))
                       for j in range(2)] for i in range(2)])
        K = K + 2.0 * k
    np.testing.assert_allclose(th.q.values[-1], np.diag(K), rtol=RTOL)
    np.testing.assert_allclose(th.corr.values[-1, 0, 1], K[0, 1] / K[0, 0], rtol=RTOL)


def test_sweep_equals_pointwise_calls():
    alphas = [0.0, 0.25, 1.0]
    x0 = sp.Inputs(q=[1.0, 0.5], corr=0.1, mean=[0.2, 0.0])
    grid = sp.theory(sp.presets.postln(30, alpha=sp.sweep("alpha", alphas)), x0)
    assert grid.log_q.dims == ("layer", "alpha", "input")
    for i, a in enumerate(alphas):
        one = sp.theory(sp.presets.postln(30, alpha=a), x0)
        for name in ("log_q", "corr", "log_grad_q", "mean"):
            np.testing.assert_allclose(grid[name].isel(alpha=i).values, one[name].values, rtol=1e-13,
                                       atol=1e-15)


def test_batchnorm_relu_sweep_equals_pointwise_calls():
    # the BatchNorm law (S, eps, scale) and the relu gate carry the grid dims (alpha x eps)
    x0 = sp.Inputs(q=[1.0, 2.0, 0.5], corr=0.3, law="gaussian")
    alphas, epss = [0.5, 1.0], [1e-5, 0.1, 1.0]
    grid = sp.theory(sp.presets.prebn(8, shape="act_dense", alpha=sp.sweep("alpha", alphas),
                                      eps=sp.sweep("eps", epss)), x0)
    assert grid.log_grad_q.dims == ("layer", "alpha", "eps", "input")
    for a in alphas:
        for e in epss:
            one = sp.theory(sp.presets.prebn(8, shape="act_dense", alpha=a, eps=e), x0)
            for name in ("log_q", "corr", "log_grad_q"):
                np.testing.assert_allclose(grid[name].sel(alpha=a, eps=e).values, one[name].values,
                                           rtol=1e-13, atol=1e-15)


def test_linear_plain_net_backward_is_sigma_w_squared_per_layer():
    # Dense backward: G_in = sigma_w^2 ratio G_out; linear act passes it through.
    L, s = 50, 1.1
    net = sp.presets.plain(L, act="linear", shape="dense_act", sigma_w1=s)
    th = sp.theory(net, sp.Inputs(q=1.0))
    np.testing.assert_allclose(th.log_grad_q.values[:, 0], 2 * math.log(s) * (L - np.arange(L + 1)),
                               rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(th.log_q.values[:, 0], 2 * math.log(s) * np.arange(L + 1), rtol=RTOL)


def test_dataset_schema_and_provenance():
    th = sp.theory(sp.presets.preln(4, final_norm=True), sp.Inputs(q=[1.0, 2.0], corr=0.5))
    assert set(sp.data.SCHEMA) <= set(th.data_vars)
    assert th.corr.dims == ("layer", "input", "input_b")
    assert list(th.block.values) == ["input"] + ["Residual"] * 4 + ["LayerNorm"]
    for key in ("kind", "config", "versions", "git_commit", "created_at", "backend"):
        assert key in th.attrs
    assert th.attrs["kind"] == "theory"
    cfg = sp.data.config_of(th)
    rebuilt = sp.ops.op_from_dict(cfg["net"])
    assert rebuilt == sp.presets.preln(4, final_norm=True)
    assert sp.Inputs.from_dict(cfg["inputs"]) == sp.Inputs(q=[1.0, 2.0], corr=0.5)


def test_save_load_round_trip(tmp_path):
    th = sp.theory(sp.presets.resnet(2000, alpha=sp.sweep("alpha", [0.5, 1.0])), sp.Inputs(q=1.0, n=2))
    path = sp.save(th, tmp_path / "th.nc")
    back = sp.load(path)
    import xarray as xr

    assert back.attrs.pop("checksum").startswith("sha256:")  # added by save, verified by load
    xr.testing.assert_identical(th, back)
    assert np.isinf(back.q.values).any()  # inf survives the round trip


def test_ops_are_hashable_and_print_as_trees():
    a = sp.presets.periln(8)
    b = sp.presets.periln(8)
    assert hash(a) == hash(b) and a == b
    text = str(a)
    assert text.splitlines()[0] == "Repeat(n=8)" and "LayerNorm(eps=1e-05, gain=1)" in text


def test_recording_a_subset_of_layers_gives_the_same_values():
    # The backward recomputes ~sqrt(L)-long segments from checkpoints; the recorded layers must
    # hold exactly what the full record holds.
    net, x0 = sp.presets.periln(37, act="relu"), sp.Inputs(q=[1.0, 4.0], corr=0.3)
    full = sp.theory(net, x0)
    part = sp.theory(net, x0, layers=[0, 5, 36, 37])
    for name in ("log_q", "corr", "log_grad_q", "log_branch_q"):
        np.testing.assert_array_equal(part[name].values, full[name].sel(layer=[0, 5, 36, 37]).values)
    for bad in ([38], [2.5], [True], "all", [[1, 2], [3]]):  # (2.5 and True were recorded as
        # layers 2 and 1; a ragged list was numpy's ValueError)
        for engine in ("numpy", "jax") if importlib.util.find_spec("jax") else ("numpy",):
            with pytest.raises(sp.ConfigError, match="layers"):
                sp.theory(net, x0, layers=bad, engine=engine)
    np.testing.assert_array_equal(sp.theory(net, x0, layers=np.int64(5)).layer.values, [5])


def test_forward_only_is_the_forward_of_the_full_run():
    """backward=False: the forward variables alone (schema.FORWARD), equal to the full run's
    (the same forward calls, without a tape), recorded in the config; with a width, the forward
    corrections alone, equal to the full run's; a flag that is not a bool is refused."""
    net = sp.presets.periln(37, act="relu", sigma_w1=sp.sweep("sigma_w1", [1.0, 1.5]))
    x0 = sp.Inputs(q=[1.0, 4.0], corr=0.3, mean=[0.2, -0.1])
    full = sp.theory(net, x0, layers=[0, 5, 37])
    fwd = sp.theory(net, x0, layers=[0, 5, 37], backward=False)
    assert list(fwd.data_vars) == list(sp.schema.FORWARD)
    for name in fwd.data_vars:
        np.testing.assert_array_equal(fwd[name].values, full[name].values)
    assert json.loads(fwd.attrs["config"])["backward"] is False
    assert "backward" not in json.loads(full.attrs["config"])
    small = sp.presets.preln(6)
    wide, wide_fwd = (sp.theory(small, x0, width=256, backward=b) for b in (True, False))
    corrections = [v for v in wide.data_vars if v in sp.schema.FINITE_WIDTH_VARIABLES]
    forward = [v for v in corrections if not sp.schema.FINITE_WIDTH_VARIABLES[v].backward]
    assert len(forward) < len(corrections)  # (some are the gradient's)
    assert sorted(v for v in wide_fwd.data_vars if v in corrections) == sorted(forward)
    for name in forward:
        np.testing.assert_array_equal(wide_fwd[name].values, wide[name].values)
    with pytest.raises(sp.ConfigError, match="backward"):
        sp.theory(small, x0, backward="no")


def test_prebn_relu_pre_activation_exchangeable_closed_form():
    # x -> x + alpha Dense(relu(BN x)), eps = 0, B exchangeable Gaussian inputs (K = (q - k) I
    # + k 11^T): P K P = sigma^2 P with sigma^2 = q - k, so BN x is sqrt(d) times a uniform
    # direction (d = B - 1) whatever the layer, and (test_batchnorm_kernel) E[relu(y_a)^2] = 1/2,
    # E[relu(y_a) relu(y_b)] = arccos1(-1/d). Forward: q_l = q_0 + l alpha^2 sigma_1^2 / 2,
    # k_l = k_0 + l alpha^2 sigma_1^2 arccos1(-1/d). Backward from G_L = I: the branch cotangent
    # relu'(z) o W^T g is gated by the same batch as BN's Jacobian, so
    # G_l = G_(l+1) + alpha^2 bn_relu_backward(K_l, sigma_1^2 G_(l+1)) (that kernel is checked
    # against Monte Carlo and exact identities in test_batchnorm_kernel; here the chain through
    # the ops: the gate's scaling, its split at BatchNorm, the residual sum).
    # The BN t-quadratures are accurate to ~1e-13 per op, so rtol 1e-11 over 20 blocks.
    B, L, alpha, q0, c0 = 5, 20, 0.7, 1.5, 0.3
    d, s1 = B - 1, 2.0
    th = sp.theory(sp.presets.prebn(L, act="relu", shape="act_dense", eps=0.0, alpha=alpha),
                   sp.Inputs(q=q0, corr=c0, n=B, law="gaussian"))
    acos1 = (math.sqrt(1 - 1 / d**2) + (math.pi - math.acos(-1 / d)) * (-1 / d)) / (2 * math.pi)
    layers = np.arange(L + 1)
    q = q0 + layers * alpha**2 * s1 / 2
    k = c0 * q0 + layers * alpha**2 * s1 * acos1
    np.testing.assert_allclose(th.q.values, np.repeat(q[:, None], B, 1), rtol=1e-11)
    np.testing.assert_allclose(th.corr.values[:, 0, 1], k / q, rtol=1e-11)
    G, grad = np.eye(B), [1.0]
    for l in range(L - 1, -1, -1):
        K = (q[l] - k[l]) * np.eye(B) + k[l]
        G = G + alpha**2 * bn_relu_backward(K, s1 * G, np.ones(B), 0.0)
        grad.append(G[0, 0])
    np.testing.assert_allclose(th.grad_q.values, np.repeat(np.array(grad[::-1])[:, None], B, 1),
                               rtol=1e-11)
    assert np.all(th["mean"].values == 0)


@pytest.mark.parametrize("rescale", [sp.Scale(-2.0), sp.LayerNorm(eps=0.0, gain=-2.0)])
def test_relu_residual_on_a_rescaled_batchnorm_output(rescale):
    # x = c y, y = BN(Dense u) with eps = 0 on B exchangeable inputs, c = -2 (a Scale, or a
    # LayerNorm: each y_a has feature variance E[y_a^2] = 1 and mean 0, so LN multiplies by its
    # gain). Then x + alpha relu(x): E[y y^T] = (B/d) P (d = B - 1, uniform direction),
    # relu(c y) has the law of relu(|c| y) (y -> -y), so its kernel is c^2 [1/2 on the diagonal,
    # arccos1(-1/d) off it] and its mean |c| sqrt(d) Gamma(d/2) / (2 sqrt(pi) Gamma((d+1)/2));
    # the cross moment E[x_a relu(x_b)] = E[x_a (x_b + |x_b|)] / 2 = K_ab / 2 (x -> -x).
    B, c, alpha = 4, -2.0, 0.5
    d = B - 1
    net = sp.Serial(sp.Dense(1.3), sp.BatchNorm(eps=0.0), rescale,
                    sp.Residual(sp.Act("relu"), alpha=alpha))
    th = sp.theory(net, sp.Inputs(q=2.0, corr=0.4, n=B))
    P = np.eye(B) - 1.0 / B
    Kx = c**2 * B / d * P
    acos1 = (math.sqrt(1 - 1 / d**2) + (math.pi - math.acos(-1 / d)) * (-1 / d)) / (2 * math.pi)
    kappa = c**2 * np.where(np.eye(B, dtype=bool), 0.5, acos1)
    K = Kx + alpha**2 * kappa + alpha * Kx
    mean = alpha * abs(c) * math.sqrt(d) * math.gamma(d / 2) / (
        2 * math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    np.testing.assert_allclose(th.q.values[-1], np.diag(K), rtol=1e-12)
    np.testing.assert_allclose(th.corr.values[-1], K / np.diag(K)[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(th["mean"].values[-1], mean, rtol=1e-12)


def test_smooth_activation_after_batchnorm_is_refused_with_the_reason():
    net = sp.Serial(sp.Dense(), sp.BatchNorm(), sp.Act("tanh"))
    with pytest.raises(sp.UnsupportedComposition, match="layer 3 Act: .*directly after BatchNorm"):
        sp.theory(net, sp.Inputs(q=1.0, corr=0.2, n=3))
    # a residual sum ends the BatchNorm law: relu of (BN output + Gaussian) is refused too
    net = sp.Serial(sp.Dense(), sp.BatchNorm(), sp.Residual(sp.Dense()), sp.Act("relu"))
    with pytest.raises(sp.UnsupportedComposition, match="not jointly Gaussian"):
        sp.theory(net, sp.Inputs(q=1.0, corr=0.2, n=3))
