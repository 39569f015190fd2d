"""The weight-gradient statistic (schema ``weight_grad_q``): theory and Monte Carlo.

For block l, weight_grad_q = N^-2 sum over the block's Dense ops D of ||dl/dW_D||_F^2 =
N^-2 sum_D ||g_D||^2 ||x_D||^2 (g_D the cotangent at D's output, x_D its input, N the input's
width). At infinite width E = sum_D (n_in n_out / N^2) q_in gq_out.

* theory: against closed forms computed here from the net's definition (a width-changing
  Dense / relu / Dense stack, a linear stack at depth 2000 whose scale overflows float64), and
  against the per-Dense sum rebuilt by hand from the q and grad_q the engine reports for a
  residual net; in both memory modes (taped; checkpointed with recomputation);
* breakage: the theory with n_in/N dropped, with q_out in place of q_in, with the input
  cotangent in place of the output's, each fails the closed form (:func:`test_breakage_is_caught`);
* Monte Carlo: a linear residual net, where E weight_grad_q equals the theory at any width (below),
  so the only allowance is the standard error; a Pre-LN ReLU net with an O(1/N) bias, removed by
  fitting T(N) = T_inf + a/N over two widths (:func:`sigprop.analysis.compare.compare`).
"""

import math

import numpy as np
import pytest
from scipy import stats

import sigprop as sp
from sigprop.analysis.compare import compare, stack_widths
from sigprop.engines import theory as engine
from sigprop.ops import Dense

RTOL = 1e-12  # closed forms vs the engine: float64 rounding of a few dozen operations
BUDGETS = ["taped", "checkpoints"]


@pytest.fixture(params=BUDGETS)
def budget(request, monkeypatch):
    """Both memory modes of sp.theory: every layer taped, or (budget 0) sqrt(L) checkpoints
    with each segment's forward recomputed for the backward."""
    if request.param == "checkpoints":
        monkeypatch.setattr(engine, "TAPE_BUDGET", 0)
    return request.param


S1, S2, Q0 = 1.3, 0.7, [1.0, 2.5]


def width_changing_net():
    """Three blocks: Dense(S1, ratio 2) (N -> 2N), relu, Dense(S2, ratio 1/2) (2N -> N)."""
    return sp.Serial(Dense(S1, ratio=2.0), sp.Act("relu"), Dense(S2, ratio=0.5))


def width_changing_closed_form(q0):
    """By hand. Forward q1 = S1^2 q0 (width 2N), q2 = q1 / 2 (relu of a centred Gaussian).
    Backward from gq3 = 1: block 3 (n_in = 2N, n_out = N) gives 2 q2 gq3 = S1^2 q0, and
    gq2 = S2^2 (1/2) gq3; block 2 has no Dense and gq1 = gq2 / 2 (the relu gate); block 1
    (n_in = N, n_out = 2N) gives 2 q0 gq1 = q0 S2^2 / 2. No weights (layer 0, the relu block):
    NaN."""
    q0 = np.asarray(q0)
    nan = np.full_like(q0, np.nan)
    return np.stack([nan, q0 * S2**2 / 2, nan, S1**2 * q0])


def test_closed_form_width_changing_net(budget):
    th = sp.theory(width_changing_net(), sp.Inputs(q=Q0, corr=0.3))
    expected = width_changing_closed_form(Q0)
    got = th["weight_grad_q"].values
    np.testing.assert_allclose(got, expected, rtol=RTOL)  # NaN where expected NaN
    # one block recorded: the widths are still tracked through the others
    for kept in ([1], [3]):
        sub = sp.theory(width_changing_net(), sp.Inputs(q=Q0, corr=0.3), layers=kept)
        np.testing.assert_allclose(sub["weight_grad_q"].values, expected[kept], rtol=RTOL)
    assert th["weight_grad_q"].attrs["long_name"]  # described by the schema


def test_residual_blocks_rebuilt_from_q_and_grad_q(budget):
    """x -> x + alpha Dense(S2) relu(Dense(S1) x), inputs with a mean. Per block l, by hand from
    the engine's own q_{l-1} and grad_q_l: Dense 2 sees x = relu(h), q = S1^2 q_{l-1} / 2, and
    g = alpha delta_l (gq = alpha^2 grad_q_l); Dense 1 sees x_{l-1} and the cotangent
    S2^2 alpha^2 grad_q_l / 2 (Dense 2's transpose, then the relu gate): the sum is
    alpha^2 (S1^2 + S2^2) q_{l-1} grad_q_l / 2 (all widths N)."""
    alpha, L = 0.6, 7
    net = sp.presets.resnet(L, act="relu", alpha=alpha, sigma_w1=S1, sigma_w2=S2)
    th = sp.theory(net, sp.Inputs(q=Q0, corr=0.3, mean=[0.4, -0.2]))
    q, gq = th["q"].values, th["grad_q"].values
    expected = alpha**2 * (S1**2 + S2**2) * q[:-1] * gq[1:] / 2
    np.testing.assert_allclose(th["weight_grad_q"].values[1:], expected, rtol=1e-10)


def test_deep_linear_stack_stays_finite_in_log_space(budget):
    """L blocks Dense(s) (no activation): q_{l-1} = s^(2(l-1)) q0, gq_l = s^(2(L-l)), so every
    block has weight_grad_q = s^(2(L-1)) q0: at s = 2, L = 2000 that is e^2771, beyond float64,
    while its log is exact."""
    L, s = 2000, 2.0
    th = sp.theory(sp.Repeat(Dense(s), L), sp.Inputs(q=Q0, corr=0.3), layers=[0, 1, 1000, L])
    log_w = th["log_weight_grad_q"].values
    expected = 2 * (L - 1) * math.log(s) + np.log(Q0)
    np.testing.assert_allclose(log_w[1:], np.broadcast_to(expected, log_w[1:].shape), rtol=1e-12)
    assert np.all(np.isnan(log_w[0])) and np.all(th["weight_grad_q"].values[1:] == np.inf)


def test_memory_modes_and_recorded_layers_agree(monkeypatch):
    """The same numbers taped, checkpointed, and for a subset of recorded layers (rounding)."""
    net = sp.presets.preln(10, act="relu", ratio=4.0, final_norm=True,
                           sigma_w1=sp.sweep("sigma_w1", [0.8, 1.5]))
    x0 = sp.Inputs(q=[1.0, 2.0], corr=0.5)
    taped = sp.theory(net, x0)["log_weight_grad_q"]
    monkeypatch.setattr(engine, "TAPE_BUDGET", 0)
    ckpt = sp.theory(net, x0)["log_weight_grad_q"]
    kept = [0, 3, 4, 10, 11]
    sub = sp.theory(net, x0, layers=kept)["log_weight_grad_q"]
    np.testing.assert_allclose(ckpt.values, taped.values, rtol=RTOL)
    np.testing.assert_array_equal(sub.values, ckpt.sel(layer=kept).values)
    assert np.all(np.isnan(taped.sel(layer=11).values))  # the final LayerNorm: no weights


def test_finite_width_face_still_runs():
    """theory(width=N) adds its corrections and keeps the weight-gradient statistic as it is."""
    net, x0 = sp.presets.preln(4, act="relu"), sp.Inputs(q=[1.0, 2.0], corr=0.5)
    inf, fw = sp.theory(net, x0), sp.theory(net, x0, width=256)
    np.testing.assert_array_equal(fw["log_weight_grad_q"].values, inf["log_weight_grad_q"].values)


def _broken_backward(kind):
    """Dense.backward_law reporting a wrong weight gradient (the breakages the tests catch)."""
    law = Dense.backward_law

    def broken(self, s, g, ctx):
        sink = ctx.sink
        ratio = np.asarray(ctx.p(self.ratio))
        g_in = law(self, s, g, ctx.block("probe", None, None))  # nothing reported
        if sink is not None:
            if kind == "no_width":  # n_in / N dropped: ratio 1 as seen by the sink
                sink.dense(s, g, np.ones_like(ratio))
            elif kind == "q_out":  # the output's q (sigma_w^2 q_in) in place of the input's
                sink.dense(self.forward_law(s, ctx), g, ratio)
            elif kind == "flipped":  # the input cotangent in place of the output's
                sink.dense(s, g_in, ratio)
        return g_in

    return broken


@pytest.mark.parametrize("kind", ["no_width", "q_out", "flipped"])
def test_breakage_is_caught(kind, monkeypatch):
    """Each wrong law moves some layer of the closed form by far more than RTOL (by a factor
    2, S1^2 or S2^2 / 2: none of them is 1 at S1 = 1.3, S2 = 0.7)."""
    monkeypatch.setattr(Dense, "backward_law", _broken_backward(kind))
    th = sp.theory(width_changing_net(), sp.Inputs(q=Q0, corr=0.3))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(th["weight_grad_q"].values, width_changing_closed_form(Q0),
                                   rtol=RTOL)


# -- Monte Carlo --------------------------------------------------------------------------------
ALPHA = 1e-3  # family-wise false-failure rate of one Monte Carlo test


def _z_max(m):
    """Bonferroni: two-sided normal quantile at level ALPHA over m comparisons."""
    return stats.norm.isf(ALPHA / (2 * m))


@pytest.mark.parametrize("sampler", ["conditional", "explicit"])
def test_monte_carlo_exact_for_a_linear_residual_net(sampler):
    """x -> x + 0.6 Dense(1/2) Dense(2) x, widths N -> 2N -> N: every weight enters once, so x_D
    (blocks below and D's own block before D) and g_D (blocks above, delta_L, and the later
    Dense of D's block) are independent, and E||x||^2, E||g||^2 are the theory's at any width
    (a Dense maps E||x||^2 exactly; a residual sum's cross term has mean 0). E weight_grad_q is
    then the theory exactly, and the only allowance is the standard error of the seed mean:
    |mean - theory| <= z se, z Bonferroni over the L x B comparisons."""
    L, N, S = 3, 48, 600
    net = sp.presets.resnet(L, act="linear", alpha=0.6, ratio=2.0)
    x0 = sp.Inputs(q=Q0, corr=0.3, mean=[0.3, 0.0])
    th = sp.theory(net, x0)["weight_grad_q"].values[1:]
    w = sp.simulate(net, x0, width=N, seeds=S, backend="numpy", dtype="float64",
                    sampler=sampler, root_seed=11)["weight_grad_q"].values[:, 1:]
    z = (w.mean(0) - th) / (w.std(0, ddof=1) / math.sqrt(S))
    assert np.all(np.abs(z) < _z_max(z.size)), z


@pytest.mark.parametrize("sampler", ["conditional", "explicit"])
def test_monte_carlo_matches_theory_preln_ffn(sampler):
    """Pre-LN, ReLU FFN of ratio 4, final LayerNorm: the forward and backward passes share
    weights through the relu gates and the LayerNorms, an O(1/N) bias per block. Two widths,
    T(N) = T_inf + a/N fitted by compare (which removes it), and T_inf against the theory
    within z times its standard error (Bonferroni over the L x B comparisons); the O(1/N^2)
    remainder is O((L / N)^2) ~ 1e-3 relative at L = 4, N = 128, below the standard error
    (about 1 % here)."""
    net = sp.presets.preln(3, act="relu", ratio=4.0, final_norm=True)
    x0 = sp.Inputs(q=[1.0, 2.0], corr=0.5)
    th = sp.theory(net, x0)
    mc = stack_widths([sp.simulate(net, x0, width=w, seeds=300, backend="numpy",
                                   sampler=sampler, root_seed=5 + i)
                       for i, w in enumerate((128, 256))])
    blocks = {"layer": slice(1, 4)}  # the Dense blocks (not the input, not the final LayerNorm)
    cmp = compare(th.isel(blocks), mc.isel(blocks), variables=["weight_grad_q"])["weight_grad_q"]
    z = cmp.sel(stat="z").values
    assert np.all(np.abs(z) < _z_max(z.size)), z
