"""The lognormal estimator's null law of z (Cox's ybar + s^2/2 against log E X), its max |z|
test and nominal rate in summary: the tail integrals against simulation, against their sigma ->
0 and sigma -> inf limits and against an independent rule; the sup over sigma; the flag's null
rate and power, each predicted by the law (an integrator of this file's own, :func:`_grid_tails`,
not the code's ``quad``)."""

import math

import numpy as np
import pytest
import xarray as xr
from scipy import special, stats

import sigprop as sp
from sigprop.analysis.compare import (
    FAMILY_LEVEL,
    compare,
    estimate,
    lognormal_critical,
    lognormal_rate,
    lognormal_tails,
    nominal_rate,
    summary,
    synthetic,
)


def _grid_tails(c, S, sigma, shift=0.0, m=200_001):
    """(P(z > c), P(z < -c)) by the trapezoid rule in log V on m points (V ~ chi^2_{S-1}),
    z = (Z / sqrt(S) + sigma (w - 1) / 2 + shift / sigma) / sqrt(w / S + sigma^2 w^2 / (2n)),
    w = V / n: the theory off by ``shift`` on the log scale (0: the null)."""
    n = S - 1
    v = np.exp(np.linspace(np.log(stats.chi2.ppf(1e-25, n)), np.log(stats.chi2.isf(1e-25, n)),
                           m))
    w = v / n
    d = np.sqrt(w / S + sigma**2 * w**2 / (2 * n))
    mid = sigma * (w - 1) / 2 + shift / sigma
    density = stats.chi2.pdf(v, n) * v  # (d V = V d log V)
    up = special.ndtr(-math.sqrt(S) * (c * d - mid)) * density
    down = special.ndtr(-math.sqrt(S) * (c * d + mid)) * density
    h = np.log(v[1] / v[0])
    return tuple(h * (f.sum() - (f[0] + f[-1]) / 2) for f in (up, down))


def _z(S, sigma, reps, rng):
    """z of the lognormal estimator (compare's ``estimate``) on ``reps`` normal samples of log X
    (S seeds, sd sigma), against the true log E X."""
    y = xr.DataArray(sigma * rng.standard_normal((reps, S)), dims=("rep", "seed"))
    est, se = estimate(np.exp(y), "lognormal", log=y)
    return ((est - sigma**2 / 2) / se).values


@pytest.mark.parametrize("S", [16, 32])
def test_tails_match_simulated_normal_samples(S):
    """P(z > c) and P(z < -c) from the law against 100 000 simulated samples at sigma = 0.3, 1,
    3 and c = 2, 3 (rates 1e-10 to 0.07). Catches a wrong law (the s^4 / (2 (S - 1)) term of
    the standard error dropped: a lower tail several times too light)."""
    rng = np.random.default_rng(S)
    reps = 100_000
    for sigma in (0.3, 1.0, 3.0):
        z = _z(S, sigma, reps, rng)
        for c in (2.0, 3.0):
            for p, seen in zip(lognormal_tails(c, S, sigma), (np.mean(z > c), np.mean(z < -c))):
                se = math.sqrt(p * (1 - p) / reps)  # binomial sd of the simulated rate
                assert abs(seen - p) <= 4 * se + 1 / reps, (S, sigma, c, p, seen)


def test_tails_limits_and_an_independent_rule():
    """sigma -> 0: Student t with S - 1 dof, both tails; sigma -> inf: z -> sqrt(n/2) (1 - n/V),
    P(z < -c) = F(n / (1 + c sqrt(2/n))), P(z > c) = 1 - F(n / (1 - c sqrt(2/n))) (0 past
    sqrt(n/2)). The integral at sigma = 1e-6 and 1e6 meets them to 1e-4 at c where the tails are
    ~1e-7 .. 0.3, and at sigma = 0.3, 1, 3 (S = 16, 32) it meets this file's trapezoid rule to
    1e-4 relative (below 1e-11, 1e-15 absolute). Catches: the s^4 term dropped; the lower and
    upper tails swapped; a sign of sigma (w - 1) / 2."""
    for S in (4, 16, 32, 256):
        n = S - 1
        r = math.sqrt(n / 2)
        for c in (1.0, 3.0, 6.0):
            t = stats.t.sf(c, n)
            for p in lognormal_tails(c, S, 1e-6):
                assert p == pytest.approx(t, rel=1e-4), (S, c)
            assert lognormal_tails(c, S, 0.0) == (t, t)
            limit = (stats.chi2.sf(n / (1 - c / r), n) if c < r else 0.0,
                     stats.chi2.cdf(n / (1 + c / r), n))
            assert lognormal_tails(c, S, math.inf) == pytest.approx(limit, rel=1e-12)
            far = lognormal_tails(c, S, 1e6)
            assert far[1] == pytest.approx(limit[1], rel=1e-4), (S, c)
            assert far[0] == pytest.approx(limit[0], rel=1e-4, abs=1e-12), (S, c)
            if S in (16, 32):
                for sigma in (0.3, 1.0, 3.0):
                    got, want = lognormal_tails(c, S, sigma), _grid_tails(c, S, sigma)
                    assert got == pytest.approx(want, rel=1e-4, abs=1e-15), (S, c, sigma)
    assert min(lognormal_tails(6.0, 32, 1.0)) < 1e-7  # (the depth the rule was checked to)


def test_each_tails_sup_over_sigma_is_its_limit():
    """At the critical values for p = 1e-7, 1e-3 and 0.05 (S = 3 .. 1024), on 36 sds of log X
    from 1e-3 to 1e4: the upper tail stays below Student t's p (sigma -> 0) and the lower
    below the sigma -> inf law's p, so lognormal_critical's closed forms are the sups. And
    lognormal_rate is the largest two-sided rate on that grid (to 1e-6). Catches: c_lo and
    c_hi swapped; c_lo from Student t."""
    grid = np.logspace(-3, 4, 36)
    for S in (3, 8, 16, 64, 1024):
        for p in (1e-7, 1e-3, 0.05):
            c_lo, c_hi = lognormal_critical(p, S)
            assert stats.t.sf(c_hi, S - 1) == pytest.approx(p, rel=1e-9)
            assert lognormal_tails(c_lo, S, math.inf)[1] == pytest.approx(p, rel=1e-9)
            up = max(lognormal_tails(c_hi, S, s)[0] for s in grid)
            down = max(lognormal_tails(c_lo, S, s)[1] for s in grid)
            assert up <= p * (1 + 1e-6) and down <= p * (1 + 1e-6), (S, p, up / p, down / p)
            assert down > 0.9 * p  # (approached: the sup is not loose)
        for k in (2.0, 3.0):
            rate = lognormal_rate(k, S)
            assert rate >= max(sum(lognormal_tails(k, S, s)) for s in grid) * (1 - 1e-6)
            assert rate == pytest.approx(sum(lognormal_tails(k, S, math.inf)), rel=1e-6)
    assert lognormal_rate(3.0, 16) > 5 * nominal_rate(3.0, 16)  # (0.047 against t's 0.009)


@pytest.fixture(scope="module")
def theory():
    """10 points of q (5 layers x 2 inputs), each an independent synthetic sample."""
    return sp.theory(sp.presets.resnet(depth=4, act="relu"), sp.Inputs(q=[1.0, 2.0], corr=0.3))


def _flags(theory, S, sigma, runs, level, scale=1.0, root_seed=0):
    """summary's flags over ``runs`` independent synthetic runs (S seeds, log X of sd sigma, E X
    the theory's q), the theory's q times ``scale``; the rate test off (threshold 50), so that
    a flag is the max |z| test's."""
    runs_theory = theory.expand_dims(run=runs)
    mc = synthetic(runs_theory, seeds=S, noise=sigma, root_seed=root_seed)
    wrong = runs_theory.copy()
    wrong["q"], wrong["log_q"] = runs_theory["q"] * scale, runs_theory["log_q"] + np.log(scale)
    cmp = compare(wrong, mc, variables=["q"], estimator="lognormal")
    assert cmp["q"].attrs["estimator"] == "lognormal"
    return [summary(cmp.isel(run=r), threshold=50.0, level=level)[0] for r in range(runs)]


@pytest.mark.parametrize("sigma", [0.03, 20.0])
def test_null_rate_of_the_max_z_flag_is_the_laws(theory, sigma):
    """A correct theory (E X exact), 16 seeds, 10 independent points, level 0.3 (0.015 a tail a
    point): the rate of runs flagged by max |z| over 600 runs is the law's 1 - (1 - P(z > c_hi)
    - P(z < -c_lo))^10 (this file's integrator; 0.137 at sigma = 0.03, 0.138 at 20) within 4
    binomial sd, and at most the level. sigma = 0.03 is near Student t (the upper tail at 0.96
    of its sup), 20 near the sigma -> inf law (the lower tail at 0.99 of its): the test is
    exact per tail at the worst sigma, and conservative overall (each worst sigma leaves the
    other tail ~0). Catches: c_lo and c_hi swapped (0.55 expected at sigma = 20); t's quantile
    for both signs (the old rule's, had it run: 0.26 at 0.03, 0.55 at 20); the lower quantile
    at level / n (0.26 at 20)."""
    S, n, runs, level = 16, 10, 600, 0.3
    rows = _flags(theory, S, sigma, runs, level, root_seed=int(100 * sigma))
    assert all(r["points"] == n for r in rows)
    c_lo, c_hi = lognormal_critical(level / (2 * n), S)
    up, down = _grid_tails(c_hi, S, sigma)[0], _grid_tails(c_lo, S, sigma)[1]
    expected = 1 - (1 - up - down) ** n
    seen = np.mean([r["flag"] == "DISAGREE" for r in rows])
    se = math.sqrt(expected * (1 - expected) / runs)  # binomial sd of the flagged rate
    assert expected <= level
    assert abs(seen - expected) <= 4 * se, (sigma, seen, expected)
    assert seen <= level + 4 * math.sqrt(level * (1 - level) / runs)


def test_a_theory_three_percent_off_is_found(theory):
    """64 seeds, sd of log X 0.05 (se ~ 0.0063), 10 points: a theory 3 % below E X puts every z
    near +4.7, past t's Bonferroni quantile (3.86): the law (with the shift) gives the flag
    probability 1 - 1e-7, and the run is flagged; 3 % above puts them near -4.7, against the
    heavy lower tail's quantile (6.17), which the law finds with probability 0.69 only (the
    asymmetry: s^2 underestimated is the common way for z to be far below). Catches: the max
    test off for lognormal (the old rule)."""
    S, sigma, n = 64, 0.05, 10
    c_lo, c_hi = lognormal_critical(FAMILY_LEVEL / (2 * n), S)
    assert 3.8 < c_hi < 3.9 and 6.1 < c_lo < 6.2
    for scale, sign in ((1 / 1.03, 1), (1.03, -1)):
        shift = -np.log(scale)  # (estimate - theory on the log scale, besides the noise)
        up, down = _grid_tails(c_hi, S, sigma, shift)[0], _grid_tails(c_lo, S, sigma, shift)[1]
        power = 1 - (1 - up - down) ** n
        if sign > 0:
            assert power > 0.999, power
            row = _flags(theory, S, sigma, 1, FAMILY_LEVEL, scale, root_seed=5)[0]
            assert row["flag"] == "DISAGREE" and row["max_z"] > c_hi, row
        else:
            assert 0.6 < power < 0.8, power


def _one(z, seeds, estimator="lognormal", fitted=False):
    """summary's row of a hand-made comparison whose points have z-scores ``z``."""
    z = np.asarray(z, dtype=float)
    n = z.size
    names = ["estimate", "stderr", "theory", "z"] + (["a", "a_stderr"] if fitted else [])
    stat = np.stack([np.ones(n)] * 3 + [z] + [np.ones(n)] * (2 if fitted else 0))
    da = xr.DataArray(stat, dims=("stat", "layer"), coords={"stat": names},
                      attrs={"estimator": estimator})
    return summary(xr.Dataset({"q": da}, attrs={"seeds": seeds}))[0]


def test_one_point_far_above_is_flagged_far_below_need_not_be():
    """One point at 16 seeds, FAMILY_LEVEL: c_hi = t_15's 0.00135 quantile (3.59), c_lo = 8.48
    (chi^2_15's). z = +7.6 has sup-over-sigma probability 2e-6 (t_15), flagged; z = -7.6 has
    sup P(z < -7.6) = F(15 / (1 + 7.6 sqrt(2/15))) = 0.0022 > 0.00135 (the sigma -> inf law: s^2
    below 0.27 sigma^2 gives it), not flagged; -8.5 is. max_z is |z| either way. Under the
    old rule (no max test for lognormal) +7.6 read ok; a stack's T_inf (fitted stats a,
    a_stderr) still has no max test."""
    c_lo, c_hi = lognormal_critical(FAMILY_LEVEL / 2, 16)
    assert c_hi == pytest.approx(3.586, abs=1e-3) and c_lo == pytest.approx(8.478, abs=1e-3)
    assert lognormal_tails(7.6, 16, 0.0)[0] < 1e-5  # the upper tail's sup (sigma -> 0)
    assert lognormal_tails(7.6, 16, math.inf)[1] == pytest.approx(0.00218, rel=1e-2)
    assert lognormal_tails(7.6, 16, math.inf)[1] > FAMILY_LEVEL / 2
    for z, flag in ((7.6, "DISAGREE"), (-7.6, "ok"), (-8.5, "DISAGREE"), (3.5, "ok")):
        row = _one([z], 16)
        assert row["flag"] == flag and row["max_z"] == abs(z), (z, row)
    assert _one([-7.6], 16, "mean")["flag"] == "DISAGREE"  # (t's, both signs)
    assert _one([7.6], 16, fitted=True)["flag"] == "ok"


def test_lognormal_rows_rate_test_reads_its_own_nominal_rate():
    """100 points at 16 seeds, 8 at z = -3.5 (rate 0.08): lognormal's nominal rate of |z| > 3 is
    its law's sup, 0.0469 (sigma -> inf), bound 0.0469 + 3 sd + 1/100 = 0.120: ok; Student t's
    is 0.0090, bound 0.047: a mean row with the same z DISAGREEs. Catches: t's nominal rate for
    lognormal."""
    z = np.full(100, 0.5)
    z[:8] = -3.5
    row, t_row = _one(z, 16), _one(z, 16, "mean")
    assert row["nominal"] == pytest.approx(0.04690, abs=1e-5) == lognormal_rate(3.0, 16)
    assert t_row["nominal"] == pytest.approx(nominal_rate(3.0, 16))
    assert row["flag"] == "ok" and t_row["flag"] == "DISAGREE", (row, t_row)
