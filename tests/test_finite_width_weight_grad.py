"""weight_grad_q's first-order finite-width correction and spread
(``weight_grad_q_rel_correction``, ``var_log_weight_grad_q``).

weight_grad_q of block l has the law of N^-1 |t|^2, t = sum_D J_D T_D x_D the derivative of the
output along a random direction of all the block's weights (T_D with i.i.d. N(0, 1/N) entries,
independent of the net and of each other): given the net both are Gaussian quadratic forms of
sum_D ||x_D||^2 J_D J_D^T / N, the Denses sharing one delta_L. The walk of the pair (x, t)
with t started at the block's first Dense as T x (every t before it dropped) and gaining T_D x_D
at each later Dense, whose per-feature variance is the realised K_xx of D's input, so x's
fluctuation and its covariance with the Jacobian above D are carried by the walk
(:meth:`sigprop.engines.finite_width._Walk._start_at_weights`); its Var log |t|^2 holds the
Denses' covariances.

Tolerances: against the infinite-width engine and the walks of their own, as
tests/test_finite_width.py (rounding ~1e-12 per layer; the central differences' O(STEP^2)); the
exact Gaussian-input reference to the central differences' truncation (~1e-6 relative, here
and in the reference's own differences); Monte Carlo at 3 standard errors of the fitted slope,
or of the fitted V of N Var log W.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import integrate, stats

import sigprop as sp
from sigprop import presets
from sigprop.analysis.compare import first_order
from sigprop.engines import finite_width as fw
from sigprop.testing import measure_weight_gradient

PAIR = sp.Inputs(q=[1.0, 1.5], corr=0.5)
NETS = [
    presets.postln(4, eps=0.1),
    presets.preln(3, norm="rmsnorm", final_norm=True),
    presets.resnet(4, "relu", shape="dense_act", sigma_b=0.4),  # a stream with a mean
    presets.plain(3, "tanh", shape="dense_act", sigma_b=0.3),
    sp.Serial(sp.Serial(sp.Dense(1.2, 0.1, ratio=2.0), sp.Act("tanh")),
              sp.Serial(sp.Dense(1.0, ratio=0.5), sp.Act("relu")),
              sp.Residual(sp.Serial(sp.LayerNorm(), sp.Dense(1.0), sp.Act("gelu"), sp.Dense(0.7)))),
    presets.preln(3, act="erf", alpha=sp.sweep("alpha", [0.3, 1.0])),
    sp.Serial(sp.Serial(sp.Dense(1.2, 0.1, ratio=2.0), sp.LayerNorm(), sp.Act("tanh")),
              sp.Serial(sp.Dense(1.0, 0.2), sp.LayerNorm(), sp.Act("tanh")), sp.Dense(1.1),
              sp.Act("tanh")),  # a block's last Dense drawn with a norm after it
]
IDS = ["postln", "preln-rms", "resnet-mean", "plain-tanh", "widths-and-norms", "swept",
       "dense-norm-chain"]


def weight_coef(net, inputs=PAIR, **kw):
    L = len(sp.ops.layers_of(net))
    return fw.gradient_coefficient(net, inputs, layers=range(L + 1), weights=True, **kw)[1]


@pytest.mark.parametrize("net", NETS, ids=IDS)
def test_the_weight_walks_value_is_the_backward_engines(net):
    """exp of the walks' log q at the top, summed over the block's Denses with n_L / N, is the
    infinite-width engine's weight_grad_q (its backward laws and weight sink): two codes, to
    rounding and the polar rule (~1e-12 per layer): 1e-11 over <= 5 layers."""
    got = weight_coef(net)
    want = sp.theory(net, PAIR)["log_weight_grad_q"].transpose("layer", ...).values
    assert got.lost is None
    np.testing.assert_allclose(got.log_q, want, rtol=1e-11, atol=1e-11)  # (NaN at layer 0)
    assert (np.isfinite(got.coef) == np.isfinite(want)).all()  # (no Dense: layer 0, a final
    # norm)


@pytest.mark.parametrize("net", NETS, ids=IDS)
def test_the_weight_walks_by_one_adjoint_pass_are_their_own_walks(net, monkeypatch):
    """Each Dense's walk joins the recorded walk at the end of its block and is read by the
    adjoint pass, against a walk of its own to the top: equal up to the central differences'
    O(STEP^2) truncation (STEP = 2.5e-4, as test_every_layers_gradient_by_one_adjoint_pass_is
    _its_own_walk)."""
    monkeypatch.setattr(fw, "STEP", 2.5e-4)
    shared, own = weight_coef(net), weight_coef(net, own_walks=True)
    np.testing.assert_allclose(shared.coef, own.coef, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(shared.log_q, own.log_q, rtol=1e-11, atol=1e-11)


def test_a_dense_on_gaussian_inputs_is_exact():
    """Dense(s1, b) -> tanh -> Dense(s2) on Gaussian inputs x_j ~ N(0, q0): the first Dense's
    term is s2^2 E[q G(s1^2 q + b^2)] exactly (E over W_2 and delta: ||g||^2 = s2^2 sum_i
    phi'(h_i)^2; h_i | x ~ N(0, s1^2 q + b^2), q = |x|^2 / N ~ q0 chi^2_N / N), so with
    f(q) = q G(s1^2 q + b^2), G(v) = E phi'(sqrt(v) z)^2, Var q = 2 q0^2 / N:
    c = q0^2 f''(q0) / f(q0). Its q G coupling (the realised q sets both ||x||^2 and h's
    scale) is the covariance term: with it dropped, c = q0^2 g''(q0) / g(q0), g(q) = G(s1^2 q
    + b^2) (E q = q0 exactly), 0.27 away. f'' by central differences at step 1e-3 of adaptive
    quadratures (1e-13): truncation ~1e-7, round-off ~1e-7; the walk's ~1e-6: 1e-5 relative."""
    s1, b, s2, q0 = 1.5, 0.3, 1.1, 1.2
    net = sp.Serial(sp.Dense(s1, b), sp.Act("tanh"), sp.Dense(s2))

    def G(v):
        return integrate.quad(lambda z: np.cosh(math.sqrt(v) * z) ** -4 * stats.norm.pdf(z),
                              -12, 12, epsabs=1e-14, epsrel=1e-13, limit=200)[0]

    def second(f, h=1e-3):
        return (f(q0 + h) - 2 * f(q0) + f(q0 - h)) / h**2

    def f(q):
        return q * G(s1**2 * q + b**2)

    def g(q):
        return G(s1**2 * q + b**2)

    exact, dropped = q0**2 * second(f) / f(q0), q0**2 * second(g) / g(q0)
    c = fw.gradient_coefficient(net, sp.Inputs(q=q0, law="gaussian"), layers=[1],
                                weights=True)[1].coef[0, 0]
    assert abs(c - exact) < 1e-5 * abs(exact), (c, exact)
    assert abs(dropped - exact) > 0.2  # (the check sees the covariance term)


def test_a_blocks_denses_are_the_layers_they_make_apart():
    """The Denses of one block (Serial(D1, tanh, D2, tanh) as a branch x -> 0 x + F(x), one
    layer) against the same ops as layers of their own (the same random net): E W_block =
    E W_1 + E W_3, so c_block is the parts' c weighted by their leading values (equal weights
    give 0.0053 where it is -0.0072) and log E W_block their log-sum; to the central
    differences' ~1e-7."""
    ops = [sp.Dense(1.5, 0.2, ratio=2.0), sp.Act("tanh"), sp.Dense(1.3, 0.1, ratio=0.5),
           sp.Act("tanh"), sp.Dense(0.9)]
    block = weight_coef(sp.Serial(sp.Residual(sp.Serial(*ops[:4]), beta=0.0), ops[4]))
    apart = weight_coef(sp.Serial(*ops))
    w = np.exp(apart.log_q[[1, 3]])
    np.testing.assert_allclose(block.coef[1], (w * apart.coef[[1, 3]]).sum(0) / w.sum(0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(block.log_q[1], np.log(w.sum(0)), rtol=1e-11)
    np.testing.assert_allclose(block.coef[2], apart.coef[5], rtol=1e-5, atol=1e-7)


def test_a_relu_nets_weight_gradient_has_no_correction():
    """A bias-free ReLU net: D's output W_D x_D / |x_D| ~ N(0, s^2 / n I) whatever x_D is, so
    J_D (the net above D: its masks and weights) is independent of x_D, E ||x_D||^2 |J_D t|^2
    = E ||x_D||^2 E |J_D t|^2, and both are exact at any width: c = 0 up to the walk's
    differencing (~1e-6 of the O(L) terms that cancel)."""
    c = weight_coef(presets.plain(5, "relu", shape="dense_act")).coef
    assert np.all(np.abs(c[1:]) < 1e-5), c


def test_a_uniform_dense_has_no_weight_rule_and_says_so():
    """A uniform Dense's weight gradient (its 4th cumulant acts on W x, not on T x): NaN at its
    block with the reason, the other blocks' finite; sp.theory warns."""
    net = sp.Serial(sp.Dense(1.2, 0.1), sp.Act("tanh"), sp.Dense(1.0, init="uniform"),
                    sp.Act("tanh"), sp.Dense(1.0))
    got = weight_coef(net)
    assert np.isnan(got.coef[3]).all() and np.isfinite(got.coef[[1, 5]]).all()
    assert "uniform weights" in got.lost
    with pytest.warns(sp.FiniteWidthWarning,  # (the layers it makes NaN, not those without
                      # weights: layer 0 and the Acts', NaN as weight_grad_q itself is)
                      match=r"weight gradient's correction and spread are NaN at layers \[3\]"):
        sp.theory(net, PAIR, width=256)


def test_the_theory_at_a_width_and_compare_carry_it():
    """sp.theory(..., width=N) holds c/N at every recorded layer (NaN at layer 0), and compare's
    first order at one width M reads it as weight_grad_q c/M (under the mean)."""
    net, N = presets.postln(3), 256
    ds = sp.theory(net, PAIR, width=N)
    c = weight_coef(net).coef
    np.testing.assert_allclose(ds.weight_grad_q_rel_correction.values, c / N)
    term = first_order(ds, "weight_grad_q", "mean", 128)
    np.testing.assert_allclose(term.values, (ds.weight_grad_q * c / 128).values)
    v = weight_coef(net).var_log_q  # E log W = log E W - Var log W / 2 at first order
    np.testing.assert_allclose(ds.var_log_weight_grad_q.values, v / N)
    np.testing.assert_allclose(first_order(ds, "weight_grad_q", "logmean", 128).values,
                               (c - v / 2) / 128)


@pytest.mark.parametrize("s1, s2, r, q0", [(1.0, 1.0, 1.0, 1.0), (1.0, 1.3, 2.0, 1.2),
                                           (0.7, 1.1, 0.5, 0.8)])
def test_a_linear_blocks_spread_is_exact(s1, s2, r, q0):
    """One block x -> W_2 W_1 x (widths N -> rN -> N; Residual(beta=0) holds both Denses) on
    Gaussian inputs x ~ N(0, q0 I): N^2 W = ||W_2^T delta||^2 ||x||^2 + ||delta||^2 ||W_1 x||^2
    = N^2 A C (s2^2 (1 + e_2) + r s1^2 (1 + e_1)), A = |x|^2 / N, C = |delta|^2 / N (N Var log:
    2 each) and e_1, e_2 (chi^2_rN / rN - 1, N Var 2 / r) independent of them and of each other:
    N Var log W = 4 + 2 (s2^4 + r^2 s1^4) / (r (s2^2 + r s1^2)^2) and E W = q0 (s2^2 + r s1^2)
    exactly (c = 0). The two Denses' terms share A and C (delta and x): with their covariance
    dropped, sum_D w_D^2 v_D (each part's v_D = 4 + 2 / r, w_D its share of E W) is 1.1 to 2.0
    below. A single Dense: N Var log W = 2 + 2 / r. To the central differences' ~1e-6."""
    block = sp.Residual(sp.Serial(sp.Dense(s1, ratio=r), sp.Dense(s2, ratio=1 / r)), beta=0.0)
    gauss = sp.Inputs(q=q0, law="gaussian")
    got = fw.gradient_coefficient(sp.Serial(block), gauss, layers=[1], weights=True)[1]
    w = np.array([s2**2, r * s1**2]) / (s2**2 + r * s1**2)
    exact = 4 + 2 * (s2**4 + r**2 * s1**4) / (r * (s2**2 + r * s1**2) ** 2)
    dropped = np.sum(w**2) * (4 + 2 / r)
    np.testing.assert_allclose(got.var_log_q.ravel(), exact, rtol=1e-6)
    np.testing.assert_allclose(np.exp(got.log_q).ravel(), q0 * (s2**2 + r * s1**2), rtol=1e-11)
    assert np.abs(got.coef).max() < 1e-6
    assert exact - dropped > 1.0  # (the check sees the parts' covariance)
    one = fw.gradient_coefficient(sp.Dense(s1, ratio=r), gauss, layers=[1], weights=True)[1]
    np.testing.assert_allclose(one.var_log_q.ravel(), 2 + 2 / r, rtol=1e-6)


def test_the_spread_against_monte_carlo():
    """Post-LN, depth 2 (two Denses a block, sharing delta_L): N Var log W_l fitted as V + c'/N
    over widths 32, 64, 128 (3000 seeds each, conditional sampler) within 3.3 SE of v = 9.31
    and 4.31 (|z| < 3.3: Bonferroni over the 2 layers at a 1e-3 rate; SE 0.30 and 0.14, from
    the samples' 4th moments through the fit; over 8 root seeds |z| <= 1.7 here and <= 2.1 at
    1500 seeds: no O(1/N^2) bias seen at this SE). With the parts' covariance dropped, v = 5.86
    and 3.08, 11 and 9 SE away. ~2 s."""
    for c, a, se_a, v, V, se_v in measure_weight_gradient(presets.postln(2), PAIR, [32, 64, 128],
                                                          3000, root_seed=5, layers=[1, 2]):
        assert abs(V - v) < 3.3 * se_v, (v, V, se_v)  # 3.3 SE (above)


def test_compare_reads_the_spread():
    """sp.compare(..., variables=["var_log_weight_grad_q"]) sets the theory's v/N beside the
    run's variance of log weight_grad_q across seeds (NaN theory at layer 0, no weights), its z
    finite at the blocks (|z| < 4: 4 points at N = 128, 400 seeds, where the O(1/N^2) remainder
    is ~3 % of v, well under the ~7 % SE), and skips it, as var_log_grad_q, where the run is
    shallower (prefix=True: the gradient depends on the depth above)."""
    net = presets.postln(2)
    th = sp.theory(net, PAIR, width=128)
    mc = sp.simulate(net, PAIR, 128, 400, backend="numpy", dtype="float64", root_seed=3)
    got = sp.compare(th, mc, variables=["weight_grad_q", "var_log_weight_grad_q"])
    spread = got["var_log_weight_grad_q"]
    np.testing.assert_array_equal(spread.sel(stat="theory").values,
                                  th.var_log_weight_grad_q.values)
    z = spread.sel(stat="z").values
    assert np.isnan(z[0]).all() and np.all(np.abs(z[1:]) < 4), z
    deep = sp.theory(presets.postln(3), PAIR, width=128)
    cut = sp.compare(deep, mc, variables=["var_log_weight_grad_q", "var_log_q"], prefix=True)
    assert list(cut) == ["var_log_q"] and "depth above" in cut.attrs[
        "skipped_var_log_weight_grad_q"]


@pytest.mark.slow
def test_the_weight_gradient_against_monte_carlo():
    """Post-LN, depth 4 (c = 3.8 at layer 1, -0.9 at the top, where the gradient's own c is 0):
    the fitted 1/N slope of E W_l / W_l,inf within 3 SE of c (SE ~0.4 at 4000 seeds over widths
    32-256; the O(1/N^2) term, ~c^2 / N^2, biases the slope by < 0.1 at N >= 32). ~20 s."""
    for c, a, se, *_ in measure_weight_gradient(presets.postln(4), PAIR, [32, 64, 128, 256],
                                                4000, root_seed=19, layers=[1, 4]):
        assert abs(a - c) < 3 * se, (c, a, se)  # 3 SE


def test_a_block_whose_weights_get_no_gradient_has_no_correction():
    """A residual branch never added (alpha = 0, constant or at a swept point) or ending in a
    zero Scale: its Denses' weight gradient is exactly 0 at every width (weight_grad_q = 0),
    so its correction and its spread are 0, with no warning. The alpha = 0 branch was never
    walked, so the row took the input gradient's own c (-0.008 / N, a number for another
    quantity); the zero Scale left 0/0, a silent NaN. The other layers' numbers are the net's
    without the block's effect (alpha = 0.5 at the other point: the unswept net's)."""
    def net(alpha, *tail):
        return sp.Serial(sp.Dense(1.2, 0.1), sp.Act("tanh"),
                         sp.Residual(sp.Serial(sp.Dense(1.0), sp.Act("tanh"), sp.Dense(1.0),
                                               *tail), alpha=alpha),
                         sp.Dense(1.0), sp.Act("tanh"))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero, scaled = (sp.theory(n, PAIR, width=64) for n in (net(0.0), net(1.0, sp.Scale(0.0))))
        swept = sp.theory(net(sp.sweep("alpha", [0.0, 0.5])), PAIR, width=64)
    for ds in (zero, scaled, swept.sel(alpha=0.0)):
        assert (ds.weight_grad_q.sel(layer=3) == 0).all()
        for name in ("weight_grad_q_rel_correction", "var_log_weight_grad_q"):
            np.testing.assert_array_equal(ds[name].sel(layer=3), 0.0)
        assert np.isfinite(ds.var_log_weight_grad_q.sel(layer=[1, 4])).all()
    unswept = sp.theory(net(0.5), PAIR, width=64)
    for name in ("weight_grad_q_rel_correction", "var_log_weight_grad_q"):
        np.testing.assert_allclose(swept[name].sel(alpha=0.5), unswept[name], rtol=1e-9)


def test_a_repeat_in_a_block_is_its_copies_written_out():
    """A block whose branch is Repeat(Serial(Dense, tanh), 2) is the same random net as one whose
    branch is the two copies written out: its weight gradient has both Denses' terms (c and log
    E equal to the walks' rounding, 1e-9); counting the Repeat's Denses once left the second
    copy's weights out. Its spread too."""
    dt = [sp.Dense(1.2, 0.1), sp.Act("tanh")]
    rep = weight_coef(sp.Serial(sp.Residual(sp.Repeat(sp.Serial(*dt), 2)), sp.Dense(1.0)))
    out = weight_coef(sp.Serial(sp.Residual(sp.Serial(*dt, *dt)), sp.Dense(1.0)))
    np.testing.assert_allclose(rep.coef, out.coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rep.log_q, out.log_q, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rep.var_log_q, out.var_log_q, rtol=1e-9, atol=1e-12)


def test_a_net_wider_than_N_at_the_top_has_the_engines_weight_gradient():
    """A top width n_L = 2 N (Dense(ratio=2) last; the nets above end at N): weight_grad_q sums
    (n_L / N) E |J_D T x|^2 / n_L, so log E carries log 2, as the infinite-width engine's
    log_weight_grad_q does (1e-11, as test_the_weight_walks_value_is_the_backward_engines)."""
    net = sp.Serial(sp.Dense(1.2, 0.1), sp.Act("tanh"), sp.Dense(1.0, ratio=2.0), sp.Act("tanh"))
    want = sp.theory(net, PAIR)["log_weight_grad_q"].transpose("layer", ...).values
    np.testing.assert_allclose(weight_coef(net).log_q, want, rtol=1e-11, atol=1e-11)


def test_a_huge_stream_beside_the_branch_is_its_scale_invariant_limit():
    """A stream of scale 1e80 (or 1e40) beside a residual branch that reads it through a
    LayerNorm, a relu Dense on top: at either scale the branch adds a relative 1e-40 or less and
    the norm's eps counts for 1e-85 or less, and the output's Jacobian in the stream does not
    depend on the scale (relu, no bias), so weight_grad_q of the branch is the same at both, and
    the first Dense's (its gradient) and the top one's (its input) are 1e80 times larger (log E
    by 2 log 1e40), to
    the walks' rounding (c is 0 up to the central differences' ~1e-7 here: atol 1e-6; log E and
    v to 1e-9). The branch's first Dense hands t's log scale to the stream's frame as well
    (:func:`_without_tangent`'s t_ls): without it, 1e80 overflowed the change of units and the
    branch's c and v were -inf and inf with no warning."""
    def net(scale):
        return sp.Serial(sp.Serial(sp.Dense(1.0, 0.1), sp.Act("relu"), sp.Scale(scale)),
                         sp.Residual(sp.Serial(sp.LayerNorm(), sp.Dense(1.0), sp.Act("tanh"),
                                               sp.Dense(0.8))),
                         sp.Serial(sp.Dense(1.0), sp.Act("relu")))

    huge, big = weight_coef(net(1e80)), weight_coef(net(1e40))
    assert huge.lost is None and np.isfinite(huge.var_log_q[4]).all()
    np.testing.assert_allclose(huge.coef, big.coef, rtol=0, atol=1e-6)
    shift = np.zeros((len(huge.log_q), 1))
    shift[[1, 5]] = 2 * np.log(1e40)  # (the first Dense's gradient and the top Dense's input
    # carry the scale)
    np.testing.assert_allclose(huge.log_q, big.log_q + shift, rtol=1e-9)
    np.testing.assert_allclose(huge.var_log_q, big.var_log_q, rtol=1e-9)


def test_a_walk_lost_below_a_block_leaves_its_weight_rows_nan_with_the_reason():
    """x's walk lost below a block (a BatchNorm in a residual branch, no finite-width rule
    there): the weight rows from that block up are NaN with that reason (the blocks' weight
    walks are not started from a lost x: one of them failed on the lost state's shapes), and
    the rows below are finite."""
    net = sp.Serial(sp.Dense(1.2, 0.1), sp.Act("tanh"),
                    sp.Residual(sp.Serial(sp.BatchNorm(), sp.Dense(1.0), sp.Act("tanh"))),
                    sp.Dense(1.0), sp.Act("tanh"))
    for kw in ({}, {"own_walks": True}, {"stacked": False}):
        got = weight_coef(net, **kw)
        assert "BatchNorm" in got.lost
        assert np.isnan(got.coef[3:]).all() and np.isnan(got.var_log_q[3:]).all()

