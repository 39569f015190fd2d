"""sp.simulate: API and schema, arguments, random streams, determinism, exact scale at depth,
overflow reporting, BatchNorm batch statistics, and the CuPy path (gpu marker)."""

import math

import numpy as np
import pytest
from scipy import stats

import sigprop as sp
from sigprop.engines.samplers import SAMPLERS
from sigprop.errors import MonteCarloOverflow
from sigprop.state.arrays import Env, Sig
from sigprop.state.rng import Streams, box_muller_philox, philox4x32, philox_normal, seed_keys

X0 = sp.Inputs(q=[1.0, 2.25], corr=0.3, mean=[0.2, -0.5])
SMALL = sp.presets.preln(3, act="relu")


# -- random streams ------------------------------------------------------------------------
@pytest.mark.parametrize("ctr, key, expected", [
    # Known-answer vectors of Random123 (kat_vectors, philox4x32 10 rounds).
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
])
def test_philox_known_answers(ctr, key, expected):
    words = philox4x32([np.array([c], dtype=np.uint64) for c in ctr],
                       [np.array([k], dtype=np.uint64) for k in key])
    assert [int(w[0]) for w in words] == expected


def test_gpu_draw_is_standard_normal_and_independent_across_seeds():
    # The CuPy draw (Philox + Box-Muller), run here on NumPy: 2 x 50000 normals. KS at
    # alpha = 1e-3 against N(0, 1); the correlation of two seeds' streams is N(0, 1/n) under
    # independence, so |r| < 4.5/sqrt(n) fails with probability 7e-6.
    z = philox_normal(np, seed_keys(11, [0, 1]), (1, 0, 0), 50_000, np.float64)
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-3
    assert abs(np.corrcoef(z)[0, 1]) < 4.5 / math.sqrt(z.shape[1])


def test_streams_do_not_depend_on_the_chunk():
    a = Streams(np, 5, np.arange(6)).normal(3, 2, 1, (4, 7), np.float32)
    b = Streams(np, 5, np.arange(3, 6)).normal(3, 2, 1, (4, 7), np.float32)
    np.testing.assert_array_equal(a[3:], b)
    c = Streams(np, 5, np.arange(6)).normal(3, 2, 0, (4, 7), np.float32)  # other direction
    assert not np.any(a == c)


def test_box_muller_kernel_is_elementwise():
    # The fused CuPy kernel must be a pure elementwise map: evaluating it on a slice of the
    # counters gives the same numbers as on all of them.
    k = [np.array([[w]], dtype=np.uint64) for w in (1, 2, 3, 4, 5)]
    i = np.arange(10, dtype=np.uint64)[None, :]
    full = box_muller_philox(i, *k)
    part = box_muller_philox(i[:, 4:], *k)
    for f, p in zip(full, part):
        np.testing.assert_array_equal(f[:, 4:], p)


# -- API, schema, arguments ----------------------------------------------------------------
def test_dataset_schema_matches_theory():
    mc = sp.simulate(SMALL, X0, width=16, seeds=3, backend="numpy")  # "auto" is cupy on a GPU
    th = sp.theory(SMALL, X0)
    assert set(th.data_vars) == set(mc.data_vars)
    for name in th.data_vars:
        assert mc[name].dims == ("seed",) + th[name].dims
    assert list(mc.block.values) == list(th.block.values)
    assert mc.attrs["kind"] == "montecarlo" and mc.attrs["backend"] == "numpy"
    assert (mc.attrs["width"], mc.attrs["sampler"], mc.attrs["dtype"]) == (16, "conditional",
                                                                            "float32")
    assert np.isnan(mc.branch_q.values[:, 0]).all() and np.isfinite(mc.branch_q.values[:, 1:]).all()


def test_fixed_inputs_are_exact():
    # Layer 0 carries exactly the prescribed q, mean and cosines (float32 rounding only).
    mc = sp.simulate(SMALL, X0, width=16, seeds=4)
    np.testing.assert_allclose(mc.q.values[:, 0], np.broadcast_to(X0.q, (4, 2)), rtol=1e-6)
    np.testing.assert_allclose(mc["mean"].values[:, 0], np.broadcast_to(X0.mean, (4, 2)),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mc.corr.values[:, 0], np.broadcast_to(X0.corr, (4, 2, 2)),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mc["var"].values[:, 0], np.broadcast_to([0.96, 2.0], (4, 2)),
                               rtol=1e-6)  # q - mean^2


def test_the_independent_sampler_draws_each_backward_weight_afresh():
    """sampler='independent' (gradient independence): each vjp draws a fresh W', so E |W'^T
    g|^2 / n = sigma_w^2 |g|^2 / n whatever g is, and through a linear stack of L Dense(1)
    E[grad_q_0 / grad_q_L] = 1 exactly. The ratio is a product of L chi^2_N / N (variance ~
    2 L / N = 1 at L = 8, N = 16): its mean over 4000 seeds has se ~0.018, allowed 4 se; a
    1 % error in the backward's scale (1.01^16 = 1.17) is 9 se."""
    L, S = 8, 4000
    mc = sp.simulate(sp.Repeat(sp.Dense(1.0), L), sp.Inputs(q=1.0, n=1), width=16, seeds=S,
                     sampler="independent", dtype="float64")
    r = mc.grad_q.values[:, 0, 0] / mc.grad_q.values[:, L, 0]
    assert abs(r.mean() - 1) < 4 * r.std(ddof=1) / math.sqrt(S)


def test_the_independent_sampler_redraws_uniform_weights_too():
    """A uniform Dense under sampler='independent' pulls back through a fresh W, not the
    forward's: the forward is the explicit sampler's to the bit, the backward is not."""
    net = sp.Repeat(sp.Residual(sp.Serial(sp.LayerNorm(), sp.Dense(2**0.5, init="uniform"),
                                          sp.Act("relu"), sp.Dense(1.0, init="uniform"))), 4)
    x0 = sp.Inputs(q=[1.0, 2.25], corr=0.5)
    ex, ind = (sp.simulate(net, x0, width=64, seeds=4, backend="numpy", sampler=s)
               for s in ("explicit", "independent"))
    np.testing.assert_array_equal(ex.q.values, ind.q.values)
    assert not np.allclose(ex.grad_q.values[:, :-1], ind.grad_q.values[:, :-1], rtol=1e-3)


def test_the_independent_sampler_draws_fresh_weights_of_the_uniform_law():
    """Through one Dense(sigma_w, init='uniform') at width N = 2, R = grad_q_0 / grad_q_1 /
    sigma_w^2 = |W^T u|^2 / N with u = g / |g| uniform on the circle and W (unit-variance
    entries, excess kurtosis k) independent of it: E R = 1 and E R^2 = (N + 2 + 3 k / (N + 2))
    / N = 1.55 for the uniform law (k = -6/5), 2 for a Gaussian W. Over 8000 seeds the se of
    the mean of R^2 is ~0.023 (~0.05 for a Gaussian W, then ~9 se off), allowed 4 se."""
    S, N, sw, k = 8000, 2, 1.5, -1.2
    mc = sp.simulate(sp.Dense(sw, init="uniform"), sp.Inputs(q=1.0, n=1), width=N, seeds=S,
                     sampler="independent", dtype="float64", backend="numpy")
    r = mc.grad_q.values[:, 0, 0] / mc.grad_q.values[:, 1, 0] / sw**2
    for stat, expected in ((r, 1.0), (r**2, (N + 2 + 3 * k / (N + 2)) / N)):
        assert abs(stat.mean() - expected) < 4 * stat.std(ddof=1) / math.sqrt(S)


@pytest.mark.parametrize("sampler", ["explicit", "conditional"])
def test_nested_ops_draw_independent_weights(sampler):
    """Each op draws from its own random stream, nested ones included (a Repeat inside a block,
    a Serial inside a Serial): through k independent Dense(1) layers E[q_1 / q_0] = 1 exactly,
    while two that share one W at width 2 give E = 1 + 2 / N^2 = 1.5 (Wick). The ratio's
    variance at width 2 is 2^k - 1 (at most 7); over 20 000 seeds the se is <= 0.019, allowed 5
    se; a shared W is >= 25 se off."""
    for net in (sp.Repeat(sp.Repeat(sp.Dense(1.0), 2), 1),
                sp.Repeat(sp.Serial(sp.Serial(sp.Dense(1.0), sp.Dense(1.0)), sp.Dense(1.0)), 1)):
        mc = sp.simulate(net, sp.Inputs(q=1.0, n=1), width=2, seeds=20000, sampler=sampler,
                         dtype="float64")
        r = mc.q.values[:, 1, 0] / mc.q.values[:, 0, 0]
        assert abs(r.mean() - 1) < 5 * r.std(ddof=1) / math.sqrt(r.size), net.tree()


def test_gaussian_inputs_have_the_prescribed_law():
    # law='gaussian': features i.i.d. N(0, K), so n q_a / K_aa ~ chi^2_n for each seed: the
    # seed mean of q over 200 seeds, n = 16, has standard error q sqrt(2/n/200) = 2.5% of q.
    x0 = sp.Inputs(q=[1.0, 4.0], corr=0.5, law="gaussian")
    mc = sp.simulate(SMALL, x0, width=16, seeds=200)
    q = mc.q.values[:, 0]
    np.testing.assert_allclose(q.mean(0), x0.q, rtol=4.5 * math.sqrt(2 / 16 / 200))
    assert stats.kstest(16 * q[:, 1] / 4.0, stats.chi2(16).cdf).pvalue > 1e-3


@pytest.mark.parametrize("kwargs, field", [
    ({"width": 1}, "width"), ({"width": 2.5}, "width"), ({"seeds": 0}, "seeds"),
    ({"backend": "tpu"}, "backend"), ({"sampler": "magic"}, "sampler"),
    ({"dtype": "float16"}, "dtype"), ({"root_seed": -1}, "root_seed"),
    ({"root_seed": 2**64}, "root_seed"),
    ({"seed_chunk": 0}, "seed_chunk"), ({"width": 2}, "width"),  # 2 inputs need width >= 3
])
def test_bad_arguments_raise_config_error(kwargs, field):
    args = {"net": SMALL, "inputs": X0, "width": 16, "seeds": 2} | kwargs
    with pytest.raises(sp.ConfigError, match=field):
        sp.simulate(**args)


def test_a_dtype_is_read_by_its_name_and_anything_else_is_refused():
    """A numpy dtype or scalar type of float32/float64 is recorded by its name; None (which
    np.dtype reads as float64) and what numpy cannot read as a dtype at all (3, np.dtype's
    TypeError) are refused by name, as 'float16' is."""
    for dtype, name in ((np.float32, "float32"), (np.dtype("float64"), "float64")):
        ds = sp.simulate(SMALL, X0, width=16, seeds=2, dtype=dtype, backend="numpy")
        assert ds.attrs["dtype"] == name
    for dtype in (None, 3, np.float16):
        with pytest.raises(sp.ConfigError, match="dtype=.* is invalid: allowed one of"):
            sp.simulate(SMALL, X0, width=16, seeds=2, dtype=dtype, backend="numpy")


def test_non_integer_widths_and_sweeps_are_refused():
    ffn = sp.Repeat(sp.Residual(sp.presets.branch("relu", ratio=1.5)), 2)
    with pytest.raises(sp.ConfigError, match="ratio"):
        sp.simulate(ffn, X0, width=15, seeds=1)  # 1.5 * 15 is not an integer
    swept = sp.presets.resnet(2, alpha=sp.sweep("alpha", [0.5, 1.0]))
    with pytest.raises(sp.ConfigError, match="sweep"):
        sp.simulate(swept, X0, width=16, seeds=1)
    bn = sp.Repeat(sp.Serial(sp.Dense(), sp.BatchNorm()), 2)
    with pytest.raises(sp.ConfigError, match="batch size"):
        sp.simulate(bn, sp.Inputs(q=1.0), width=16, seeds=1)


def test_cupy_backend_refused_without_a_gpu():
    from sigprop.engines.montecarlo import gpu_module

    if gpu_module() is not None:
        pytest.skip("a GPU is usable here")
    with pytest.raises(sp.ConfigError, match="backend"):
        sp.simulate(SMALL, X0, width=16, seeds=1, backend="cupy")


def test_progress_and_backend_logging(caplog):
    with caplog.at_level("INFO", logger="sigprop.engines.montecarlo"):
        mc = sp.simulate(SMALL, X0, width=16, seeds=2, progress=True, backend="numpy")
    assert "backend numpy" in caplog.text and mc.attrs["backend"] == "numpy"


# -- determinism -----------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["conditional", "explicit"])
def test_same_root_seed_same_arrays_and_chunking_changes_nothing(sampler):
    net = sp.presets.postln(3, act="tanh")
    a = sp.simulate(net, X0, width=16, seeds=64, sampler=sampler, root_seed=3)
    b = sp.simulate(net, X0, width=16, seeds=64, sampler=sampler, root_seed=3, seed_chunk=16)
    c = sp.simulate(net, X0, width=16, seeds=64, sampler=sampler, root_seed=4)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    # corr, not q: post-LN pins q to 1 within ~1e-5, inside allclose's tolerance
    assert not np.allclose(a.corr.values[:, 1:], c.corr.values[:, 1:])


# -- scale carried in log space ---------------------------------------------------------------
def _deep_relu_resnet_log_q(depth, width, seeds):
    """Unnormalised ReLU resnet x + W2 relu(W1 x), sigma_1^2 = 2, sigma_2 = 1, no bias.

    Per block r = q_{l+1}/q_l = 1 + q_f/q + 2 x.f/(N q), i.i.d. over blocks (W1 x is isotropic
    given x). E r = 2; Var(q_f/q) = (1 + 5/N)(1 + 2/N) - 1 (relu^2 features: E u^4/(E u^2)^2
    = 6; chi^2_N for W2), Var(2 x.f/(N q)) = 4/N, so Var r = 11/N + 10/N^2 and
    E ln r = ln 2 - Var r / 8 + O(N^-2): E ln q_L = ln q_0 + L (ln 2 - Var r / 8),
    Var ln q_L = L Var r / 4. The dropped O(N^-2) terms (third and fourth cumulants of r)
    contribute < 0.25 over L = 10^4 at N = 256 (|k3| < 60/N^2, 3 Var^2/64).
    """
    x0 = sp.Inputs(q=1.0, n=1)
    mc = sp.simulate(sp.presets.resnet(depth, act="relu"), x0, width=width, seeds=seeds)
    var_r = 11 / width + 10 / width**2
    expect = depth * (math.log(2) - var_r / 8)
    sd = math.sqrt(depth * var_r / 4)
    return mc, expect, sd


@pytest.mark.parametrize("depth", [1100, pytest.param(10_000, marks=pytest.mark.slow)])
def test_unnormalised_relu_resnet_is_exact_at_depth(depth):
    # q_L ~ 2^L overflows float64 (q = inf) but log_q is finite and has the derived law.
    seeds, width = 8, 256
    mc, expect, sd = _deep_relu_resnet_log_q(depth, width, seeds)
    log_q = mc.log_q.values[:, -1, 0]
    assert np.isfinite(log_q).all() and np.isinf(mc.q.values[:, -1]).all()
    assert np.isfinite(mc.log_grad_q.values).all()
    # 4.5 standard errors of the seed mean + 0.25 for the O(N^-2) terms (docstring).
    assert abs(log_q.mean() - expect) < 4.5 * sd / math.sqrt(seeds) + 0.25


def _overflowing_net():
    """20 ReLU blocks of gain 200: ls = 20 ln(200/sqrt(2)) = 99 > ln(float32 max) = 88.7. gelu
    is not homogeneous and needs the true values: e^99 (and 0 * e^99) leave float32, not
    float64 (where gelu(u) = u for large u keeps everything finite)."""
    blocks = sp.Repeat(sp.Serial(sp.Dense(200.0), sp.Act("relu")), 20)
    return sp.Serial(blocks, sp.Act("gelu"), sp.Dense())


def test_overflow_is_reported_with_its_layer():
    with pytest.raises(MonteCarloOverflow, match="layer 21 \\(Act\\)"):
        sp.simulate(_overflowing_net(), X0, width=16, seeds=2)
    ok = sp.simulate(_overflowing_net(), X0, width=16, seeds=2, dtype="float64")
    assert np.isfinite(ok.log_q.values).all()


# -- BatchNorm uses the simulated batch --------------------------------------------------------
@pytest.mark.parametrize("B", [2, 5])
def test_batchnorm_normalises_each_feature_over_the_batch(B):
    # Per (seed, feature): mean over the B inputs 0 and mean square v / (v + eps) exactly.
    # At B = 2 the two normalised values are +-sqrt(v/(v+eps)): q is the same for both inputs.
    env = Env(np, np.dtype("float64"), Streams(np, 0, np.arange(3)), SAMPLERS["explicit"], 1)
    rng = np.random.default_rng(0)
    x = Sig(rng.standard_normal((3, B, 8)), rng.uniform(-1, 1, (3, B)))
    y, _ = sp.BatchNorm(eps=0.1).mc_forward(x, env)
    u = np.exp(x.ls)[..., None] * x.x
    v = u.var(axis=1)
    np.testing.assert_allclose(y.x.mean(axis=1), 0.0, atol=1e-14)
    np.testing.assert_allclose((y.x**2).mean(axis=1), v / (v + 0.1), rtol=1e-12)
    if B == 2:
        np.testing.assert_allclose(np.abs(y.x[:, 0]), np.abs(y.x[:, 1]), rtol=1e-12)


# -- CuPy ------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cupy_draw_matches_the_numpy_reference_bitwise():
    cupy = pytest.importorskip("cupy")
    ref = philox_normal(np, seed_keys(3, np.arange(5)), (2, 1, 0), 1001, np.float64)
    got = Streams(cupy, 3, np.arange(5)).normal(2, 1, 0, (1001,), np.float64)
    np.testing.assert_allclose(cupy.asnumpy(got), ref, rtol=1e-14, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["conditional", "explicit"])
def test_cupy_backend_agrees_with_numpy(sampler):
    # Same keys, other numbers: compare seed means. preln relu: E q_L = q_0 + L exactly and
    # Var q_L / q_L^2 <= 7 L / N (per block 7/N, docstring of test_montecarlo_theory); with 256
    # seeds the two means differ by < 4.5 sqrt(2) SE.
    pytest.importorskip("cupy")
    net = sp.presets.preln(8, act="relu")
    a = sp.simulate(net, X0, width=128, seeds=256, backend="numpy", sampler=sampler)
    b = sp.simulate(net, X0, width=128, seeds=256, backend="cupy", sampler=sampler)
    assert b.attrs["backend"] == "cupy"
    qa, qb = a.q.values[:, -1], b.q.values[:, -1]
    se = np.sqrt(qa.var(0) / 256 + qb.var(0) / 256)
    assert np.all(np.abs(qa.mean(0) - qb.mean(0)) < 4.5 * se)


@pytest.mark.gpu
def test_cupy_kernels_match_the_numpy_maths():
    # The fused CuPy paths of sigprop.state.arrays (Gram, mean square, to_unit_rms, Jacobi psd_power) against
    # the NumPy code they replace, up to float64 rounding.
    cupy = pytest.importorskip("cupy")
    from sigprop.state import arrays

    rng = np.random.default_rng(7)
    for dt_a, dt_b, n in [(np.float32, np.float32, 100), (np.float32, np.float64, 40_000),
                          (np.float64, np.float64, 3)]:
        a = rng.standard_normal((3, 4, n)).astype(dt_a)
        b = rng.standard_normal((3, 2, n)).astype(dt_b)
        got = cupy.asnumpy(arrays.gram(cupy.asarray(a), cupy.asarray(b)))
        np.testing.assert_allclose(got, arrays.gram(a, b), rtol=1e-12, atol=1e-12 * n)
    x = (rng.standard_normal((3, 2, 50)) * [[[1e-3]], [[1e3]], [[1.0]]]).astype(np.float32)
    x[1, 1] = 0.0  # a zero row stays zero, its ls unchanged
    s = Sig(x, rng.standard_normal((3, 2)))
    c = arrays.to_unit_rms(Sig(cupy.asarray(x), cupy.asarray(s.ls)))
    ref = arrays.to_unit_rms(s)
    np.testing.assert_allclose(cupy.asnumpy(c.x), ref.x, rtol=1e-6)
    np.testing.assert_allclose(cupy.asnumpy(c.ls), ref.ls, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(cupy.asnumpy(arrays.mean_sq(cupy.asarray(x))), arrays.mean_sq(x),
                               rtol=1e-12)
    for B in (1, 2, 3, 8, 32, 33):  # 33: cuSOLVER
        X = rng.standard_normal((5, B, B + 3))
        X[0, -1] = X[0, 0]  # rank deficient
        X[1] = 0.0
        G = X @ X.swapaxes(-1, -2)
        for power in (0.5, -0.5):
            got = cupy.asnumpy(arrays.psd_power(cupy.asarray(G), power))
            np.testing.assert_allclose(got, arrays.psd_power(G, power), rtol=1e-9, atol=1e-9)
    G[2, 0, 0] = np.nan
    assert np.isnan(cupy.asnumpy(arrays.psd_power(cupy.asarray(G[:, :8, :8]), 0.5))[2]).all()
