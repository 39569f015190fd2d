"""Monte Carlo (N = 256 and 512, L = 64, 64 seeds each) against the infinite-width theory, every preset.

No allowance: for each statistic T at each layer the seed means at the two widths are fitted as
T(N) = T_inf + a/N (weighted least squares, :func:`sigprop.analysis.compare.compare`; seeds are
independent across widths), which removes the O(1/N) finite-width bias (the curvature of the
laws in the realised Gram, and backward the forward-backward weight correlation that gradient
independence ignores), and

    |T_inf - T^theory| <= z sqrt(SE_inf^2 + (rtol T^theory)^2),

* SE_inf: the standard error of T_inf from the fit (about 1.9 times a single width's);
* z: Bonferroni over the m comparisons of one test at family-wise level ALPHA = 1e-3,
  z = Phi^-1(1 - ALPHA / 2m) (~4.8 for m ~ 1000): a correct simulation fails one test in 1000;
* rtol = 1e-5: float32 rounding of the Monte Carlo sums.

The residual O(1/N^2) term of the fit is O(L^2 / (256 * 512)) relative at most; measured, every
preset sits below 3.8 of its z (benchmarks/RESULTS.md). Squared norms use the estimator
``auto`` picks (log-moments once log X spreads by more than 0.25 over seeds).

Heavy tails: BatchNorm's backward has E[1/s^4] finite only for B - 1 > 4 inputs per batch
(s^2 ~ chi^2_(B-1)), so the BatchNorm preset runs on B = 6 Gaussian inputs, where the seed mean
of grad_q has a finite variance and its standard error is meaningful.

Injected errors that the earlier allowances (corr +- l/N absolute, grad_q +- exp(k(L-l)/N) - 1)
let pass and this comparison catches: :func:`test_injected_errors_fail`.
"""

import importlib.util
import warnings

import numpy as np
import pytest
from scipy import stats

import sigprop as sp
from sigprop.analysis.compare import compare, stack_widths
from sigprop.presets import PRESETS

WIDTHS, L, S = (256, 512), 64, 64
ALPHA = 1e-3
STATS = ("q", "mean", "corr", "grad_q")

X_FIXED = sp.Inputs(q=[1.0, 2.25], corr=0.3, mean=[0.2, -0.5])
X_GAUSS = sp.Inputs(q=[1.0, 2.25, 0.5, 1.5, 2.0, 0.8], corr=0.3, law="gaussian")

COMBOS = ([(p, a, None) for p in ("plain", "resnet", "deepnorm", "skipinit") for a in ("relu", "tanh")]
          + [(p, a, n) for p in ("preln", "postln", "periln") for a in ("relu", "tanh")
             for n in ("layernorm", "rmsnorm")]
          + [("prebn", a, None) for a in ("relu", "tanh")]
          + [("prebn", "relu", None, "act_dense")])  # x + Dense(relu(BN x)): relu after BN
DEFAULT = {("plain", "relu", None), ("resnet", "tanh", None), ("preln", "relu", "layernorm"),
           ("postln", "tanh", "rmsnorm"), ("prebn", "relu", None),
           ("prebn", "relu", None, "act_dense")}


def _net(preset, act, norm, shape="mlp"):
    kw = {"norm": norm} if norm else {}
    if preset == "skipinit":
        kw["alpha"] = 0.1
    net = PRESETS[preset](L, act=act, shape=shape, **kw)
    return net, (X_GAUSS if preset == "prebn" else X_FIXED)


def agreement(combo, widths=WIDTHS, seeds=S, root_seed=2024):
    """For each statistic: (max over layers and inputs of |z| / z_Bonferroni, the layer where it
    is reached, and a description). The test asserts every ratio <= 1."""
    net, x0 = _net(*combo)
    th = sp.theory(net, x0)
    mc = stack_widths([sp.simulate(net, x0, width=w, seeds=seeds, root_seed=root_seed + i)
                       for i, w in enumerate(widths)])
    B = x0.n
    z_max = stats.norm.isf(ALPHA / (2 * (L + 1) * B * (3 + B)))  # q, mean, grad_q + corr
    cmp = compare(th, mc, variables=list(STATS))
    out = {}
    for name in STATS:
        da = cmp[name]
        z = abs(da.sel(stat="z")).fillna(np.inf)  # no finite z: a failure, never a pass
        w = z.argmax(...)
        at = {d: int(i) for d, i in w.items()}
        pick = da.isel(at)
        out[name] = (float(z.isel(at)) / z_max, at["layer"],
                     (f"T_inf {float(pick.sel(stat='estimate')):.6g} +- "
                     f"{float(pick.sel(stat='stderr')):.3g} ({da.attrs['scale']}), theory "
                     f"{float(pick.sel(stat='theory')):.6g}, a {float(pick.sel(stat='a')):.3g}"))
    return out


@pytest.mark.parametrize("combo", [pytest.param(c, marks=() if c in DEFAULT else pytest.mark.slow,
                                                id="-".join(str(x) for x in c)) for c in COMBOS])
def test_montecarlo_agrees_with_theory(combo):
    """Every statistic within z_Bonferroni standard errors of the width-extrapolated estimate."""
    for name, (ratio, layer, what) in agreement(combo).items():
        assert ratio <= 1, f"{name} at layer {layer}: {what}"


def test_mean_stream_gradient_gap_is_the_weight_correlation():
    """x + relu(Dense x), alpha = 1/sqrt(L): the branch adds a positive mean every block
    (mean^2 / var = 13 at L = 64). With exact weights the Monte Carlo log E G_0 sits far above
    the theory at moderate width (3.7 at N = 128, 1.7 at N = 2048, 1.3 at N = 8192, against
    0.99), yet with a fresh W in every VJP (sampler "independent", the theory's gradient
    independence) it agrees at every width. So the gap is the forward-backward weight correlation,
    an O(A/N) effect: through the relu gate the forward's W couples the cotangent's mean mode
    (1/N of G_0 at the top) to the stream mean, which grows it by about 1 + alpha sigma_w mu_l /
    sqrt(2 pi q_l) per block, so A ~ prod_l (...)^2 ~ 10^3 here, and log E G_0 ~ log(1 + A/N).

    GIA check: relu with a fresh W keeps E[G | forward] linear in G per block (E q exact, as in
    :func:`agreement`), so the allowance is only the O(1/N) per-block coupling of later gates to
    this block's features, l/N in total (as for corr), and z SE with 64 seeds.
    """
    L, N, S = 64, 256, 64
    net = sp.presets.resnet(L, act="relu", shape="dense_act", alpha="1/sqrt(L)")
    x0 = sp.Inputs(q=1.0, corr=0.5, n=2)
    g_th = sp.theory(net, x0).grad_q.values[0, 0]
    z = stats.norm.isf(ALPHA / 4)  # two samplers x two-sided
    for sampler, agrees in (("independent", True), ("conditional", False)):
        g = sp.simulate(net, x0, width=N, seeds=S, sampler=sampler, backend="numpy",
                        dtype="float64").grad_q.values[:, 0, 0]
        gap = abs(g.mean() - g_th) / (z * g.std(ddof=1) / np.sqrt(S) + g_th * L / N)
        assert (gap <= 1) == agrees, (sampler, g.mean(), g_th)


def test_gated_and_free_cotangents_meet_at_batchnorm():
    """Dense -> BN -> Scale(-2) -> x + 2 relu(x) -> Dense, 3 blocks, B = 5: the cotangent at the
    BatchNorm output is the skip part (independent of the batch) plus the relu-gated part, which
    BatchNorm's backward integrates jointly with its Jacobian. Monte Carlo at N = 2048, 256 seeds,
    float64. Tolerance as in :func:`agreement`: z SE (Bonferroni over 2 x 5 statistics) plus the
    finite-width allowance, l / N for q after BatchNorm and expm1(k L / N) for the gradient with
    k = 3 Dense/normalisation ops per block: about 4.4 SE in all. Measured: the theory is within
    1.3 SE; the law that takes the gate as independent of the batch is 6.7-8.3 SE away.
    """
    L, N, S = 3, 2048, 256
    blk = sp.Serial(sp.Dense(1.3), sp.BatchNorm(eps=0.1), sp.Scale(-2.0),
                    sp.Residual(sp.Act("relu"), alpha=2.0), sp.Dense(1.0))
    net, x0 = sp.Repeat(blk, L), sp.Inputs(q=[1.0, 2.0, 1.5, 0.7, 1.2], corr=0.3)
    th = sp.theory(net, x0)
    mc = sp.simulate(net, x0, width=N, seeds=S, dtype="float64", backend="numpy")
    z = stats.norm.isf(ALPHA / (2 * 10))
    for name, ref, allow in (("q", th.q.values[-1], L / N),
                             ("grad_q", th.grad_q.values[0], np.expm1(3 * L / N))):
        v = mc[name].values[:, -1 if name == "q" else 0]
        se = v.std(0, ddof=1) / np.sqrt(S)
        assert np.all(np.abs(v.mean(0) - ref) <= z * se + allow * ref), (name, v.mean(0), ref)


@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)", "gelu"])
def test_layernorm_of_constant_features_meets_phi_prime_at_0(act):
    """Inputs of zero variance (mean^2 = q): Pre-LN's LayerNorm makes the branch's
    pre-activation exactly 0, where a real net computes phi'(0) (relu'(0) = 0, leaky_relu's
    slope), and the branch's backward carries the LayerNorm's Jacobian, 1/sqrt(eps) of a
    variance-0 input. The theory took relu's Gaussian limit 1/2 there: log grad_q 46 at layer 0
    against the Monte Carlo's 0 (the cotangent passes the dead branch by the skip alone);
    leaky_relu's limit (1 + s^2)/2 against s^2. gelu, smooth at 0, had its value already.

    No finite-width allowance: the stream never changes, so each block is exact at any width;
    z: Bonferroni over the 5 x 2 grad_q entries at ALPHA. The branch's q and weight gradient
    are exactly 0 in both (log -inf at every seed: compared without a RuntimeWarning)."""
    L, N, S = 4, 256, 16
    net = sp.presets.preln(L, act=act)
    x0 = sp.Inputs(q=[1.0, 4.0], corr=1.0, mean=[1.0, 2.0])
    z = stats.norm.isf(ALPHA / (2 * 2 * (L + 1)))
    with warnings.catch_warnings():  # (a knife edge for relu's: test_a_knife_edge_is_named)
        warnings.simplefilter("ignore", sp.KnifeEdgeWarning)
        mc = sp.simulate(net, x0, width=N, seeds=S, dtype="float64", backend="numpy")
    for engine in ("numpy", "jax") if importlib.util.find_spec("jax") else ("numpy",):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            warnings.simplefilter("ignore", sp.KnifeEdgeWarning)
            cmp = compare(sp.theory(net, x0, engine=engine), mc)
        worst = float(abs(cmp.grad_q.sel(stat="z")).max())
        assert worst <= z, (engine, cmp.grad_q.sel(stat="theory").values.ravel())
        for name in ("branch_q", "weight_grad_q"):
            assert float(abs(cmp[name].sel(stat="z")).max()) == 0, (engine, name)
        with warnings.catch_warnings():  # on the log scale: log 0 = -inf in both, agreement
            warnings.simplefilter("ignore", sp.KnifeEdgeWarning)
            logs = compare(sp.theory(net, x0, engine=engine), mc, variables=["branch_q"],
                           estimator="logmean")
        assert float(abs(logs.branch_q.sel(stat="z", layer=slice(1, None))).max()) == 0


def test_a_knife_edge_is_named():
    """Where a norm meets a variance of exactly 0, the gradient jumps: the theory computes
    phi'(0) of an exact 0, but a float net's rounding can leave +-1e-16 there (the Monte Carlo's
    too, at some widths), where relu' is 0 or 1 at random and the norm's Jacobian 1/sqrt(eps).
    A review measured torch at 1e9 against the theory's 1 (identical inputs into BatchNorm, B =
    3). sp.theory (both engines) and sp.simulate warn, for a LayerNorm that meets inputs of one
    value across features before a Dense mixes them and for a BatchNorm on identical inputs,
    when an activation's derivative jumps at 0; not for gelu, nor for inputs with a variance.
    The compiled engine takes such inputs log-scaled, as the numpy engine does (it kept the
    user's q and mean: var 1.8e-15 against 0, log grad_q 33.6 against 0 at layer 0)."""
    f = np.full(256, 3.7)  # measured on constant features: mean^2 = q up to rounding
    flat = sp.Inputs(q=[np.mean(f**2), 1.0], mean=[np.mean(f), 0.5], corr=0.5)
    bn = sp.Repeat(sp.Residual(sp.Serial(sp.Dense(1.0), sp.BatchNorm(), sp.Act("relu"),
                                         sp.Dense(1.0))), 2)
    runs = [lambda net, x: sp.theory(net, x),
            lambda net, x: sp.simulate(net, x, width=16, seeds=2, backend="numpy")]
    if importlib.util.find_spec("jax"):
        runs.append(lambda net, x: sp.theory(net, x, engine="jax"))
    for run in runs:
        cases = ((sp.presets.preln(2), flat, r"inputs \[0\] have features of one value"),
                 (bn, sp.Inputs(q=1.0, corr=1.0, n=3), "3 inputs are identical"),
                 (sp.presets.preln(2, act="leaky_relu(0.2)"), flat, "one value"),
                 (sp.Serial(sp.Scale(2.0), sp.presets.preln(2)), flat, "one value"))  # (2 x a
        # constant is a constant)
        for net, x, what in cases:
            with pytest.warns(sp.KnifeEdgeWarning, match=what):
                run(net, x)
        with warnings.catch_warnings():  # no knife edge: a smooth phi', inputs with a
            # variance, a batch that differs, a LayerNorm that meets x + F(x) (Post-LN) or a
            # Dense's features (a review measured both continuous in the mean at 1 - 1e-9)
            warnings.simplefilter("error", sp.KnifeEdgeWarning)
            run(sp.presets.preln(2, act="gelu"), flat)
            run(sp.presets.preln(2), sp.Inputs(q=[1.0, 1.0], mean=[0.99, 0.5], corr=0.5))
            run(bn, sp.Inputs(q=1.0, corr=0.99, n=3))
            run(sp.presets.postln(2), flat)
            run(sp.Serial(sp.Dense(1.0), sp.LayerNorm(), sp.Act("relu"), sp.Dense(1.0)), flat)
    if importlib.util.find_spec("jax"):  # the engines take the knife edge alike: log-scaled
        with warnings.catch_warnings():  # (the compiled one kept the user's var, 1.8e-15:
            warnings.simplefilter("ignore", sp.KnifeEdgeWarning)  # e^33 apart at layer 0)
            a, b = (sp.theory(sp.presets.preln(3), flat, engine=e) for e in ("numpy", "jax"))
        np.testing.assert_allclose(a.log_grad_q.values, b.log_grad_q.values, rtol=0, atol=1e-12)


def _corr_error(delta):
    """Act(tanh)'s forward with its off-diagonal Gram scaled by 1 + delta (a correlation map
    error), as :func:`sigprop.testing.mutate` would install it."""
    law = sp.Act.forward_law

    def wrong(self, s, ctx, record=None):
        out = law(self, s, ctx, record)
        if self.name != "tanh":
            return out
        eye = np.eye(out.K.shape[-1], dtype=bool)
        return out.replace(K=np.where(eye, out.K, out.K * (1 + delta)))

    return wrong


def test_injected_errors_fail(monkeypatch):
    """Two of the issue's injected errors, each a law wrong per block: Pre-LN's block backward
    0.8 % per block (the Residual's backward law: 66 % at layer 0) and resnet-tanh's correlation
    of 0.31 at layer 64 against 0.148 (Act(tanh)'s off-diagonal Gram 26 % high per block; tanh
    contracts correlations, so the error stays bounded over depth). Each must push its statistic
    beyond z_Bonferroni."""
    from sigprop.testing import mutate

    with mutate(sp.Residual, "backward", 0.008):
        ratio, _, what = agreement(("preln", "relu", "layernorm"))["grad_q"]
    assert ratio > 1, f"Pre-LN grad_q: injected error not detected ({what})"
    monkeypatch.setattr(sp.Act, "forward_law", _corr_error(0.26))
    ratio, _, what = agreement(("resnet", "tanh", None))["corr"]
    assert ratio > 1, f"resnet-tanh corr: injected error not detected ({what})"


@pytest.mark.slow
def test_injected_q_error_fails():
    """The third: q 0.2 % per block (resnet-tanh's Residual forward law: 14 % at layer 64). At
    64 seeds per width the extrapolated q has a 2 % standard error there and the error is only
    ~4.3 SE (below z_Bonferroni = 4.8, measured); 256 seeds halve the SE."""
    from sigprop.testing import mutate

    with mutate(sp.Residual, "forward", 1.14 ** (1 / L) - 1):
        ratio, _, what = agreement(("resnet", "tanh", None), seeds=4 * S)["q"]
    assert ratio > 1, f"resnet-tanh q: injected error not detected ({what})"


def test_a_stream_of_zeros_has_the_schemas_corr_in_both_faces():
    """A Dense of sigma_w 0 makes the stream exactly 0, whose cosines are 0/0. The theory gave
    corr 0 everywhere, the diagonal included (the schema says 1 there), and the Monte Carlo NaN,
    so compare's corr there was NOT COMPARABLE. Both now give the identity: 1 on the diagonal,
    0 off it, and the comparison is exact there."""
    net, x0 = sp.presets.plain(2, sigma_w1=0.0), sp.Inputs(q=[1.0, 2.0], corr=0.5)
    th = sp.theory(net, x0)
    mc = sp.simulate(net, x0, width=64, seeds=4, backend="numpy")
    eye = np.eye(2)
    np.testing.assert_array_equal(th.corr.isel(layer=-1).values, eye)
    np.testing.assert_array_equal(mc.corr.isel(layer=-1).values, np.broadcast_to(eye, (4, 2, 2)))
    z = compare(th, mc, variables=["corr"]).corr.sel(stat="z", layer=slice(1, None))
    assert float(abs(z).max()) == 0  # (layer 0: the float32 inputs' corr, 0.5 to 2e-8)
