"""compare's signed test (sum t), its weights, its floor, its flag and its table, checked
against values worked out by hand (the textbook one-sample t of the per-seed sums), not
against the code's own output. Written from a mutation-testing pass: each test names the
mutation it is the first to catch."""

import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats

import sigprop as sp
from sigprop.analysis.compare import (
    FAMILY_LEVEL,
    compare,
    print_table,
    signed_t,
    summary,
    synthetic,
)


@pytest.fixture(scope="module")
def theory():
    return sp.theory(sp.presets.resnet(depth=6, act="relu", alpha="1/sqrt(L)"),
                     sp.Inputs(q=[1.0, 2.0], corr=0.3))


def _small():
    """5 seeds x 3 layers; the last layer not counted; seed 4 NaN at a counted point."""
    ref = xr.DataArray([1.0, 2.0, 4.0], dims="layer")
    weight = xr.DataArray([1.0, 0.5, 0.25], dims="layer")
    counted = xr.DataArray([True, True, False], dims="layer")
    dev = np.array([[0.1, 0.2, 100.0],
                    [0.3, 0.0, -50.0],
                    [-0.1, 0.4, 7.0],
                    [0.2, 0.2, 3.0],
                    [0.0, np.nan, 0.0]])
    samples = ref + xr.DataArray(dev, dims=("seed", "layer"))
    return samples, ref, weight, counted


def test_signed_t_is_the_one_sample_t_of_the_per_seed_weighted_sums():
    """By hand: u_s = sum_i w_i (x_is - T_i) over the counted points = 0.2, 0.3, 0.1, 0.3 (seed
    4 is NaN at a counted point: dropped; the uncounted layer's +-100 never enters); mean
    0.225, sum of squared deviations 0.0275, so sd (ddof 1) = sqrt(0.0275 / 3) and t = 0.225 /
    (sd / sqrt 4). Catches: ddof 0; NaN seeds summed as partial sums (skipna); the uncounted
    points summed."""
    samples, ref, weight, counted = _small()
    t, seeds = signed_t(samples, ref, weight, counted)
    assert seeds == 4
    assert t == pytest.approx(0.225 / math.sqrt(0.0275 / 3 / 4), rel=1e-12)  # 4.7001


def test_signed_t_takes_the_floor_off_once_per_counted_point_and_stops_at_zero():
    """floor f per counted point (2 of them): |mean u| - 2 f, so f = 0.01 gives (0.225 - 0.02)
    / se; a floor past the mean (2 x 0.2 > 0.225) gives t = 0 exactly, not a t of the other
    sign. Catches: the floor taken once, or n - 1 times; no clamp at 0."""
    samples, ref, weight, counted = _small()
    se = math.sqrt(0.0275 / 3 / 4)
    assert signed_t(samples, ref, weight, counted, 0.01)[0] == pytest.approx(0.205 / se,
                                                                            rel=1e-12)
    assert signed_t(samples, ref, weight, counted, 0.2)[0] == 0.0
    negative = ref - (samples - ref)  # (every deviation's sign flipped: t too)
    assert signed_t(negative, ref, weight, counted, 0.01)[0] == pytest.approx(-0.205 / se,
                                                                             rel=1e-12)


def test_signed_t_needs_three_seeds():
    """Documented: NaN with fewer than 3 seeds finite at every counted point (2 here: t of 1
    dof would be read against FAMILY_LEVEL's quantile 235.8). Catches: len(u) < 2."""
    samples, ref, weight, counted = _small()
    t, seeds = signed_t(samples.isel(seed=[0, 1, 4]), ref, weight, counted)
    assert math.isnan(t) and seeds == 2


def _hand_signed(theory, mc, name, log, rtol):
    """The signed test of compare's docstring, by hand: w = 1 / |T| on the linear scale (q:
    no rounding unit but |T|), 1 on the log scale; every point counted (noise everywhere)."""
    x = mc[name].isel(width=0).values  # (seed, layer, input)
    T = theory[name].values
    u = ((np.log(x) - np.log(T)) if log else (x - T) / np.abs(T)).sum(axis=(1, 2))
    n = T.size
    m = u.mean()
    m = math.copysign(max(abs(m) - rtol * n, 0.0), m)
    return m / (u.std(ddof=1) / math.sqrt(len(u)))


@pytest.mark.parametrize("estimator", ["mean", "logmean"])
def test_compares_signed_t_weights_one_over_theory_on_the_linear_scale(theory, estimator):
    """Absolute noise (not proportional to T) and a bias of 1 % of the noise: the weights
    change t (1 / T, 1 or 1 / T^2 give different sums). The floor rtol is taken off once per
    point (n = 7 layers x 2 inputs = 14). Catches: weights 1 or 1 / T^2; the floor 1.1 rtol."""
    rng = np.random.default_rng(3)
    seeds = 7
    mc = synthetic(theory, seeds=seeds, root_seed=4)
    e = rng.standard_normal(mc["q"].shape)
    mc["q"] = mc["q"].copy(data=np.broadcast_to(theory["q"].values, mc["q"].shape) +
                           0.05 * (e + 0.5))
    mc["log_q"] = np.log(mc["q"])
    rtol = 1e-3  # (a floor that matters: 14 x 1e-3 beside |mean u| ~ 0.1 .. 0.3)
    row = compare(theory, mc, variables=["q"], estimator=estimator, rtol=rtol)["q"]
    assert row.attrs["signed_seeds"] == seeds
    expected = _hand_signed(theory, mc, "q", estimator == "logmean", rtol)
    assert abs(expected) > 1  # (not a trivial 0)
    assert row.attrs["signed_t"] == pytest.approx(expected, rel=1e-9)


def test_no_signed_test_under_the_median(theory):
    """Documented (summary): the t-test of per-seed sums only under mean and logmean
    (T_ESTIMATORS), lognormal's own (its law, tests/test_compare_lognormal_law.py); the
    median's z has neither, so its signed_t is NaN and never flags. Catches: signed_t
    computed for every estimator."""
    mc = synthetic(theory, seeds=8, root_seed=9)
    da = compare(theory, mc, variables=["q"], estimator="median")["q"]
    assert math.isnan(da.attrs["signed_t"]) and da.attrs["signed_seeds"] == 0
    da = compare(theory, mc, variables=["q"], estimator="lognormal")["q"]
    assert np.isfinite(da.attrs["signed_t"]) and da.attrs["signed_seeds"] == 8


def _one_row(signed, signed_seeds):
    """A comparison of 10 unremarkable points (|z| = 0.5: neither the rate nor max |z| flags)
    whose signed test gave ``signed`` on ``signed_seeds`` seeds."""
    n = 10
    stat = np.stack([np.ones(n), np.ones(n), np.ones(n), np.full(n, 0.5)])
    da = xr.DataArray(stat, dims=("stat", "layer"),
                      coords={"stat": ["estimate", "stderr", "theory", "z"]},
                      attrs={"estimator": "mean", "signed_t": signed,
                             "signed_seeds": signed_seeds})
    return summary(xr.Dataset({"q": da}, attrs={"seeds": signed_seeds}))[0]["flag"]


def test_summary_flags_a_signed_t_past_the_two_sided_quantile_of_s_minus_1_dof():
    """At 5 seeds sum t is t with 4 dof: the two-sided FAMILY_LEVEL quantile t_4(1 - 0.00135)
    (= 6.62, between the tables' 5.598 at 0.0025 and 7.173 at 0.001; t_5's is 5.51, the
    one-sided t_4(1 - 0.0027) 5.48). 1 % past it flags, of either
    sign; 1 % short of it does not. Catches: one-sided level, S dof instead of S - 1, the
    sign ignored (only t > q flagged)."""
    q = stats.t.isf(FAMILY_LEVEL / 2, 4)
    assert 5.598 < q < 7.173  # (t_4's table: one-sided 0.0025 and 0.001)
    assert _one_row(1.01 * q, 5) == "DISAGREE"
    assert _one_row(-1.01 * q, 5) == "DISAGREE"
    assert _one_row(0.99 * q, 5) == "ok"
    assert _one_row(-0.99 * q, 5) == "ok"
    assert _one_row(float("nan"), 0) == "ok"


def test_rich_tables_columns_hold_their_own_numbers(theory, capsys):
    """Each column under its own header: variable, flag, estimator, points, eff., max |z|, sum
    t, rate (a swap of two numeric columns kept the row a line); the exact points (z = 0, not
    counted) are named under the table. Catches: eff. and max |z| swapped; the exact points'
    line dropped."""
    from rich.console import Console

    mc = synthetic(theory, seeds=8, root_seed=1)
    mc["q"] = mc["q"].where(mc["layer"] > 0, theory["q"])  # (layer 0 exact at every seed)
    mc["log_q"] = np.log(mc["q"])
    rows = print_table(compare(theory, mc, variables=["q", "grad_q"]),
                       console=Console(width=100))
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "variable" in line)
    assert header.split() == ["variable", "flag", "estimator", "points", "eff.", "max", "|z|",
                              "sum", "t", "rate"], out
    for r in rows:
        cells = next(line.split() for line in out.splitlines()
                     if line.split()[:1] == [r["variable"]])
        assert cells == [r["variable"], r["flag"], r["estimator"], str(r["points"]),
                         f"{r['effective_points']:.3g}", f"{r['max_z']:.2f}",
                         f"{r['signed_t']:.2f}", f"{r['rate']:.4f}"], (cells, r)
    q = next(r for r in rows if r["variable"] == "q")
    assert q["exact"] == 2  # (two inputs at layer 0)
    assert "exact points (not counted): q 2" in out, out


def test_where_a_not_comparable_rows_max_lies_is_printed_under_the_table(capsys):
    """Every flagged row (not only DISAGREE) says where its max |z| lies under the table: 10
    points, one with no finite z (NOT COMPARABLE), the largest |z| = 1.2 at layer 3. Catches:
    the place printed for DISAGREE rows alone."""
    from rich.console import Console

    n = 10
    z = np.full(n, 0.5)
    z[3], z[9] = 1.2, np.nan
    stat = np.stack([np.ones(n), np.ones(n), np.ones(n), z])
    da = xr.DataArray(stat, dims=("stat", "layer"),
                      coords={"stat": ["estimate", "stderr", "theory", "z"],
                              "layer": np.arange(n)},
                      attrs={"estimator": "mean", "signed_t": 0.3, "signed_seeds": 8})
    rows = print_table(xr.Dataset({"q": da}, attrs={"seeds": 8}), console=Console(width=100))
    assert rows[0]["flag"].startswith("NOT COMPARABLE")
    assert "q: max |z| at layer=3" in capsys.readouterr().out


def test_the_signed_tests_minimum_detectable_error_is_its_power_point():
    """signed_mde: the common error (in units of 1 / w) that the signed test finds with
    probability 0.8 at FAMILY_LEVEL, lambda sd(u) / (sqrt(S') n). By hand on _small: u = 0.2,
    0.3, 0.1, 0.3 (n = 2 counted points, S' = 4), lambda from a grid search of scipy's
    noncentral t (3 dof). Its power, run on independent Gaussian points (24 seeds, 40 points,
    600 runs, sigma known): a shift of lambda sigma_u / (sqrt S n) is found as often as 0.8
    within 4 binomial sd. (With the seeds' own sd, as compare takes it, on the synthetic law:
    0.735 +- 0.03 of 200 runs. Caught: lambda as t_{1-level/2} + t_0.8, 13 % low at 3 dof.)"""
    from sigprop.analysis.compare import _noncentrality, signed_mde

    samples, ref, weight, counted = _small()
    u = np.array([0.2, 0.3, 0.1, 0.3])
    crit = stats.t.isf(FAMILY_LEVEL / 2, 3)
    grid = np.arange(5.0, 20.0, 1e-3)
    lam = grid[np.argmin(abs(stats.nct.sf(crit, 3, grid) - 0.8))]
    assert signed_mde(samples, ref, weight, counted) == pytest.approx(
        lam * u.std(ddof=1) / (2 * 2), rel=1e-3)
    rng = np.random.default_rng(4)
    S, n, runs = 24, 40, 600
    shift = _noncentrality(S - 1, FAMILY_LEVEL, 0.8) * np.sqrt(n) / (np.sqrt(S) * n)
    zero = xr.DataArray(np.zeros(n), dims="point")
    ones, every = xr.ones_like(zero), xr.ones_like(zero, dtype=bool)
    found = 0
    for _ in range(runs):
        x = xr.DataArray(shift + rng.standard_normal((S, n)), dims=("seed", "point"))
        found += abs(signed_t(x, zero, ones, every)[0]) > stats.t.isf(FAMILY_LEVEL / 2, S - 1)
    assert abs(found / runs - 0.8) <= 4 * np.sqrt(0.8 * 0.2 / runs), found
