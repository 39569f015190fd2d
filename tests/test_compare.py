"""sp.compare: alignment, estimators, and calibration of its z-scores.

Calibration. Under the null the z-score of S seeds is close to Student t with S - 1 degrees
of freedom, so the rate of |z| > k must match P(|t_{S-1}| > k) within its binomial error
(n independent z-scores: sd = sqrt(p (1 - p) / n); we allow 4 sd). The synthetic Monte Carlo
of :func:`sigprop.analysis.compare.synthetic` draws every entry independently with a known law centred on
the theory (log-normal with E = theory for squared norms), so every z-score is an independent
draw from the null. The real check uses a plain ReLU net where E q is exact at any width
(see sigprop.analysis.compare's docstring) and independent groups of seeds.
"""

import numpy as np
import pytest
import xarray as xr

import sigprop as sp
from sigprop.analysis.compare import (
    compare,
    estimate,
    nominal_rate,
    print_table,
    summary,
    synthetic,
)


@pytest.fixture(scope="module")
def theory():
    return sp.theory(sp.presets.resnet(depth=24, act="relu", alpha="1/sqrt(L)"),
                     sp.Inputs(q=[1.0, 2.0], corr=0.3))


def rate_ok(z, k, seeds):
    z = np.abs(np.asarray(z))
    z = z[np.isfinite(z)]
    p = nominal_rate(k, seeds)
    n = z.size
    observed = np.mean(z > k)
    return abs(observed - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1 / n, observed, p, n


@pytest.mark.parametrize("estimator", ["mean", "lognormal"])
def test_calibration_on_synthetic_monte_carlo(theory, estimator):
    seeds = 24
    z = []
    for rep in range(12):
        mc = synthetic(theory, seeds=seeds, widths=(256,), noise=0.1, root_seed=rep)
        cmp = compare(theory, mc, variables=["q", "grad_q"], estimator=estimator)
        for name in ("q", "grad_q"):
            z.append(cmp[name].sel(stat="z").isel(layer=slice(1, None)).values.ravel())
    z = np.concatenate(z)
    for k in (2.0, 3.0):
        ok, observed, p, n = rate_ok(z, k, seeds)
        assert ok, f"|z| > {k}: rate {observed:.4f} vs nominal {p:.4f} over {n}"


def test_heavy_tails_switch_to_log_moments(theory):
    mc = synthetic(theory, seeds=16, widths=(16,), noise=0.2)  # sd of log = 0.8
    cmp = compare(theory, mc)
    assert cmp["q"].attrs["estimator"] == "lognormal"
    assert cmp["corr"].attrs["estimator"] == "mean"
    assert "Cox" in cmp.attrs["estimator_q"]
    light = compare(theory, synthetic(theory, seeds=16, noise=0.01))
    assert light["q"].attrs["estimator"] == "mean"


def test_detects_a_wrong_theory(theory):
    mc = synthetic(theory, seeds=32, noise=0.05)
    wrong = theory.copy()
    wrong["q"] = theory["q"] * 1.2
    rows = {r["variable"]: r for r in summary(compare(wrong, mc))}
    assert rows["q"]["flag"] == "DISAGREE" and rows["q"]["max_z"] > 10
    assert rows["corr"]["flag"] == "ok"


def test_alignment_broadcasts_width_and_rejects_unselected_sweeps(theory):
    mc = synthetic(theory, seeds=8, widths=(64, 256))
    cmp = compare(theory, mc)
    assert cmp["q"].dims[:2] == ("stat", "width") or "width" in cmp["q"].dims
    swept = sp.theory(sp.presets.resnet(depth=4, alpha=sp.sweep("alpha", [0.1, 0.5])),
                      sp.Inputs(q=1.0, n=1))
    with pytest.raises(sp.ConfigError, match="select one value"):
        compare(swept, synthetic(swept.sel(alpha=0.1), seeds=4))
    with pytest.raises(sp.ConfigError, match="seed"):
        compare(theory, theory)


def test_gradients_are_not_compared_across_depths(theory):
    mc = synthetic(theory.isel(layer=slice(0, 10)), seeds=8)
    cmp = compare(theory, mc)
    assert "grad_q" not in cmp and "depends on the depth" in cmp.attrs["skipped_grad_q"]
    assert cmp.sizes["layer"] == 10


def test_estimators_agree_on_lognormal_samples():
    rng = np.random.default_rng(1)
    s, S = 0.5, 4000
    x = xr.DataArray(np.exp(s * rng.standard_normal(S) - s**2 / 2), dims="seed")  # E x = 1
    for name, target in (("mean", 1.0), ("lognormal", 0.0), ("logmean", -s**2 / 2),
                         ("median", -s**2 / 2)):
        est, se = estimate(x, name)
        assert abs(float(est) - target) < 4 * float(se), name


def test_exact_layers_do_not_divide_by_zero(theory):
    mc = synthetic(theory, seeds=8)
    z = compare(theory, mc)["q"].sel(stat="z", layer=0)
    assert np.all(np.isfinite(z))


def test_rich_table_prints(theory, capsys):
    from rich.console import Console

    rows = print_table(compare(theory, synthetic(theory, seeds=8)), console=Console(width=120))
    assert {r["variable"] for r in rows} >= {"q", "corr", "grad_q"}
    assert "theory vs Monte Carlo" in capsys.readouterr().out


def test_calibration_on_real_monte_carlo():
    """Plain ReLU net, E q exact at any width: z of q at the last layer over independent groups.

    Depth 2, width 128: the seed spread of log q is ~0.23, so q is only mildly skewed and the
    t law of z holds; 200 groups of 32 seeds give 200 independent z-scores.
    """
    net = sp.presets.plain(depth=2, act="relu")
    x0 = sp.Inputs(q=1.0, n=1)
    th = sp.theory(net, x0)
    groups, per = 200, 32
    mc = sp.simulate(net, x0, width=128, seeds=groups * per, backend="numpy", dtype="float64")
    z = []
    for g in range(groups):
        part = mc.isel(seed=slice(g * per, (g + 1) * per))
        z.append(float(compare(th, part, variables=["q"], estimator="mean")["q"]
                       .sel(stat="z", input=0).isel(layer=-1)))
    for k in (2.0, 3.0):
        ok, observed, p, n = rate_ok(z, k, per)
        assert ok, f"|z| > {k}: rate {observed:.4f} vs nominal {p:.4f} over {n}"
