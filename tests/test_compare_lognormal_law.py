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
    LOG_SD,
    LOWER_GAMMA,
    _lower_flag,
    compare,
    estimate,
    lognormal_lower_p,
    lognormal_rate,
    lognormal_signed,
    lognormal_signed_flag,
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


def _cox_se(S, sigma):
    """Cox's SE of one point's ybar + s^2 / 2 (S normal samples of sd sigma)."""
    return math.sqrt(sigma**2 / S + sigma**4 / (2 * (S - 1)))


def _identical_seeds(offset):
    """(theory, Monte Carlo): 12 layers of q whose 8 seeds are all the same, the theory's log q
    off by ``offset`` at every layer."""
    layer = {"layer": np.arange(1, 13)}
    y = np.linspace(0.1, 1.2, 12)
    mc = xr.DataArray(np.exp(np.tile(y, (8, 1))), dims=("seed", "layer"),
                      coords=layer).to_dataset(name="q")
    mc["log_q"] = np.log(mc["q"])
    theory = xr.Dataset({"log_q": xr.DataArray(y + offset, dims="layer", coords=layer)})
    theory["q"] = np.exp(theory["log_q"])
    return theory, mc


def _tilted_resnet(S=32, sigma=0.3):
    """(theory, the theory tilted linearly over depth from -2 to +2 per-point se, synthetic
    lognormal Monte Carlo of the theory): relu resnet, depth 16, 2 inputs."""
    theory = sp.theory(sp.presets.resnet(depth=16, act="relu"), sp.Inputs(q=[1.0, 2.0], corr=0.3))
    wrong = theory.copy(deep=True)
    tilt = xr.where(wrong["layer"] > 0, (wrong["layer"] - 8.5) / 7.5, 0.0)
    wrong["log_q"] = wrong["log_q"] + 2 * _cox_se(S, sigma) * tilt
    wrong["q"] = np.exp(wrong["log_q"])
    return theory, wrong, synthetic(theory, seeds=S, noise=sigma, root_seed=13)


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


def test_lower_tail_rises_with_sigma_upper_stays_below_t():
    """On 36 sds of log X from 1e-3 to 1e4, with sigma = 0 (Student t) and inf at the ends, at
    c = t's and the sigma -> inf law's quantiles for p = 1e-7, 1e-3, 0.05 (S = 3 .. 1024): the
    lower tail P(z < -c) never falls as sigma grows, so its sup over [0, sigma_up] is at sigma_up
    (lognormal_lower_p's one evaluation) and over all sigma the sigma -> inf law's; the upper
    tail stays below t's p (its sup, at sigma -> 0: summary's upper quantile). lognormal_rate is
    the largest two-sided rate on the grid. Catches: a lower tail read at sigma -> 0 (t)."""
    grid = np.logspace(-3, 4, 36)
    for S in (3, 8, 16, 64, 1024):
        n = S - 1
        for p in (1e-7, 1e-3, 0.05):
            c_t = stats.t.isf(p, n)
            c_inf = math.sqrt(n / 2) * (n / stats.chi2.ppf(p, n) - 1)
            assert lognormal_tails(c_inf, S, math.inf)[1] == pytest.approx(p, rel=1e-9)
            for c in (c_t, c_inf):
                tails = [lognormal_tails(float(c), S, float(s)) for s in grid]
                lower = np.array([stats.t.sf(c, n), *(t[1] for t in tails),
                                  lognormal_tails(float(c), S, math.inf)[1]])
                assert np.all(np.diff(lower) >= -(1e-9 * lower[1:] + 1e-15)), (S, p, c)
                if c == c_t:
                    assert max(t[0] for t in tails) <= p * (1 + 1e-6), (S, p)
        for k in (2.0, 3.0):
            rate = lognormal_rate(k, S)
            assert rate >= max(sum(lognormal_tails(k, S, s)) for s in grid) * (1 - 1e-6)
            assert rate == pytest.approx(sum(lognormal_tails(k, S, math.inf)), rel=1e-6)
    assert lognormal_rate(3.0, 16) > 5 * nominal_rate(3.0, 16)  # (0.047 against t's 0.009)


def test_lower_p_is_the_tail_at_the_sds_upper_bound_plus_gamma():
    """lognormal_lower_p(z, S, s, gamma) = P_{sigma_up}(z' <= z) + gamma, sigma_up = s sqrt(n /
    q), q chi^2_n's lower gamma quantile (s^2 n / sigma^2 ~ chi^2_n: sigma <= sigma_up with
    probability 1 - gamma), against this file's integrator, at tails 1e-4 .. 1e-2; without s
    (NaN) the sup over all sigma, the sigma -> inf law, with nothing added; z >= 0: 1. Catches:
    the + gamma dropped; s itself for sigma_up; chi^2's upper gamma quantile for the lower."""
    gamma = 1e-4
    for S, s, z in ((16, 0.1, -4.0), (16, 1.0, -7.0), (32, 0.3, -4.0), (32, 3.0, -6.0)):
        n = S - 1
        up = s * math.sqrt(n / stats.chi2.ppf(gamma, n))
        tail = _grid_tails(-z, S, up)[1]
        assert 1e-4 < tail < 1e-2, (S, s, z, tail)
        assert lognormal_lower_p(z, S, s, gamma) == pytest.approx(tail + gamma, rel=1e-5)
    n = 15
    assert lognormal_lower_p(-7.6, 16, math.nan, gamma) == pytest.approx(
        stats.chi2.cdf(n / (1 + 7.6 * math.sqrt(2 / n)), n), rel=1e-12)
    assert lognormal_lower_p(0.5, 16, 1.0, gamma) == 1.0


def _z_sd(S, sigma, reps, rng):
    """(z, s): compare's lognormal z on ``reps`` normal samples of log X (S seeds, sd sigma)
    against the true log E X, and each sample's sd of log X (compare's stat log_sd)."""
    y = xr.DataArray(sigma * rng.standard_normal((reps, S)), dims=("rep", "seed"))
    est, se = estimate(np.exp(y), "lognormal", log=y)
    return ((est - sigma**2 / 2) / se).values, y.std("seed", ddof=1).values


def _lower_rate(S, sigmas, reps, alpha, rng):
    """The rate of runs (``reps``, each one point per sd in ``sigmas``, independent) that
    summary's lower-tail test (_lower_flag, alpha a point) flags, under the null. Runs with no
    z below t's alpha quantile are not flagged (p >= t's cdf: the tail rises with sigma), so
    are not passed to it."""
    z, sd = (np.stack(v, -1) for v in zip(*(_z_sd(S, s, reps, rng) for s in sigmas)))
    stat = ["estimate", "stderr", "theory", "z", LOG_SD]
    flagged, crit = 0, stats.t.isf(alpha, S - 1)
    for r in np.flatnonzero((z < -crit).any(-1)):
        one = np.ones(len(sigmas))
        da = xr.DataArray(np.stack([one, one, one, z[r], sd[r]]), dims=("stat", "layer"),
                          coords={"stat": stat})
        flagged += _lower_flag(da.sel(stat="z"), da, S, alpha, crit)
    return flagged / reps


def test_null_rate_of_the_lower_tail_test_is_within_its_level():
    """Normal samples of log X, the theory exact: the rate of runs whose lower-tail p is below
    alpha = 0.05 a point is at most alpha within 3 binomial sd (2000 runs: 0.065), at 16 and 32
    seeds and sd 0.1, 0.3, 1, 3 and at 8 seeds and sd 3 (0.042 .. 0.049: the test spends most
    of its level at every sigma, where the sup over all sigma spent 0.005 at 16 seeds and sd
    0.1), and over 4 points of sds 0.1 .. 3 at 16 seeds at 0.1 / 4 a point (0.075, at most
    0.1). Catches: chi^2's upper quantile for sigma_up (0.069 at 16 seeds, sd 3); s itself for
    sigma_up (0.073 at 8 seeds, sd 3); the stat log_sd not read (the sup over all sigma: below
    alpha / 3)."""
    rng = np.random.default_rng(11)
    reps, alpha = 2000, 0.05
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)
    for S, sigma in [(S, s) for S in (16, 32) for s in (0.1, 0.3, 1.0, 3.0)] + [(8, 3.0)]:
        rate = _lower_rate(S, (sigma,), reps, alpha, rng)
        assert rate <= bound, (S, sigma, rate)
        assert rate > alpha / 3, (S, sigma, rate)  # (not the sup over all sigma's 0.005)
    level = 0.1
    rate = _lower_rate(16, (0.1, 0.3, 1.0, 3.0), reps, level / 4, rng)
    assert level / 3 < rate <= level + 3 * math.sqrt(level * (1 - level) / reps), rate


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
    cmp["q"].attrs["signed_t"] = math.nan  # (compare's one signed test of every run's points
    # together, which each run's row would read: not that run's, nor the max |z| test)
    return [summary(cmp.isel(run=r), threshold=50.0, level=level)[0] for r in range(runs)]


@pytest.mark.parametrize("sigma", [0.03, 20.0])
def test_null_rate_of_the_max_z_flag_is_within_the_level(theory, sigma):
    """A correct theory (E X exact), 16 seeds, 10 independent points, level 0.3 (0.015 a tail a
    point), through compare (its stat log_sd) and summary: the rate of runs flagged over 600
    runs is at most the level within 3 binomial sd (0.237 at sigma = 0.03, 0.127 at 20), and at
    least the upper tail's part, 1 - (1 - P(z > c_hi))^10 (this file's integrator; 0.135 at
    sigma = 0.03, 0 at 20) less 4 sd. sigma = 0.03 is near Student t in both tails, 20 near the
    sigma -> inf law below. Catches: t's quantile below (0.55 expected at sigma = 20)."""
    S, n, runs, level = 16, 10, 600, 0.3
    rows = _flags(theory, S, sigma, runs, level, root_seed=int(100 * sigma))
    assert all(r["points"] == n for r in rows)
    up = _grid_tails(stats.t.isf(level / (2 * n), S - 1), S, sigma)[0]
    upper = 1 - (1 - up) ** n
    seen = np.mean([r["flag"] == "DISAGREE" for r in rows])
    assert seen <= level + 3 * math.sqrt(level * (1 - level) / runs), (sigma, seen)
    assert seen >= upper - 4 * math.sqrt(upper * (1 - upper) / runs), (sigma, seen, upper)


def test_a_theory_three_percent_off_is_found(theory):
    """64 seeds, sd of log X 0.05 (se ~ 0.0063), 10 points: a theory 3 % below E X puts every z
    near +4.7, past t's Bonferroni quantile (3.86): the law (with the shift) gives the flag
    probability 1 - 1e-7, and the run is flagged; 3 % above puts them near -4.7, which the sup
    over all sigma (6.17, the sigma -> inf law's quantile) found with probability 0.69 only,
    and each point's p over its sd's bound finds (one point past -4.0 is enough, sd 0.05).
    Catches: the max test off for lognormal (the old rule)."""
    S, sigma, n = 64, 0.05, 10
    alpha = FAMILY_LEVEL / (2 * n)
    c_hi = stats.t.isf(alpha, S - 1)
    c_inf = math.sqrt((S - 1) / 2) * ((S - 1) / stats.chi2.ppf(alpha, S - 1) - 1)
    assert 3.8 < c_hi < 3.9 and 6.1 < c_inf < 6.2
    assert lognormal_lower_p(-4.0, S, sigma, LOWER_GAMMA * alpha) < alpha
    for scale, sign in ((1 / 1.03, 1), (1.03, -1)):
        shift = -np.log(scale)  # (estimate - theory on the log scale, besides the noise)
        up, down = _grid_tails(c_hi, S, sigma, shift)[0], _grid_tails(c_inf, S, sigma, shift)[1]
        power = 1 - (1 - up - down) ** n
        assert power > 0.999 if sign > 0 else 0.6 < power < 0.8, power
        row = _flags(theory, S, sigma, 1, FAMILY_LEVEL, scale, root_seed=5)[0]
        assert row["flag"] == "DISAGREE", (sign, row)


def test_a_theory_too_high_is_found_at_the_sds_bound(theory):
    """32 seeds, sd of log X 0.28, 4 points (layers 1, 2 x 2 inputs), rate test off: a theory
    30 % above E X (z ~ -5) is flagged, and 50 % above (z ~ -8); one point's lower critical z
    at sd 0.28 is 4.40 here, the sup over all sigma's 7.19, which the 30 % run stays within.
    Catches: the sup over all sigma (the old rule); the stat log_sd not read (its fallback is
    that sup)."""
    S, sigma, four = 32, 0.28, theory.isel(layer=[1, 2])
    alpha = FAMILY_LEVEL / 8
    c_inf = math.sqrt((S - 1) / 2) * ((S - 1) / stats.chi2.ppf(alpha, S - 1) - 1)
    assert 7.1 < c_inf < 7.3
    assert lognormal_lower_p(-4.5, S, sigma, LOWER_GAMMA * alpha) < alpha
    assert lognormal_lower_p(-4.3, S, sigma, LOWER_GAMMA * alpha) > alpha
    for scale in (1.3, 1.5):
        runs_theory = four.expand_dims(run=1)
        mc = synthetic(runs_theory, seeds=S, noise=sigma, root_seed=0)
        wrong = runs_theory.copy()
        wrong["q"], wrong["log_q"] = four["q"] * scale, four["log_q"] + np.log(scale)
        cmp = compare(wrong, mc, variables=["q"], estimator="lognormal").isel(run=0)
        z = cmp["q"].sel(stat="z").values
        assert np.all(cmp["q"].sel(stat=LOG_SD).values > 0.2)
        if scale == 1.3:
            assert -c_inf < z.min() < -4.5, z  # (past the bound's critical, within the sup's)
        cmp["q"].attrs["signed_t"] = math.nan  # (the signed test off: the max test's flag)
        row = summary(cmp, threshold=50.0)[0]
        assert row["points"] == 4 and row["flag"] == "DISAGREE", (scale, row, z)


def _one(z, seeds, estimator="lognormal", fitted=False, log_sd=None):
    """summary's row of a hand-made comparison whose points have z-scores ``z`` (and sds of log
    X ``log_sd``: the stat log_sd, absent if None)."""
    z = np.asarray(z, dtype=float)
    n = z.size
    names = (["estimate", "stderr", "theory", "z"] + (["a", "a_stderr"] if fitted else [])
             + ([LOG_SD] if log_sd is not None else []))
    stat = np.stack([np.ones(n)] * 3 + [z] + [np.ones(n)] * (2 if fitted else 0)
                    + ([np.full(n, log_sd)] if log_sd is not None else []))
    da = xr.DataArray(stat, dims=("stat", "layer"), coords={"stat": names},
                      attrs={"estimator": estimator})
    return summary(xr.Dataset({"q": da}, attrs={"seeds": seeds}))[0]


def test_one_point_far_above_is_flagged_far_below_by_its_sds_bound():
    """One point at 16 seeds, FAMILY_LEVEL: c_hi = t_15's 0.00135 quantile (3.59). z = +7.6 has
    sup-over-sigma probability 2e-6 (t_15), flagged. z = -7.6 with no sd of log X (no stat
    log_sd) reads the sup over all sigma, F(15 / (1 + 7.6 sqrt(2/15))) = 0.0022 > 0.00135 (the
    sigma -> inf law: s^2 below 0.27 sigma^2 gives it), not flagged, -8.5 is (past 8.478);
    with the seeds' sd 0.3 its p over sigma <= sigma_up is far below the level, flagged, and
    with sd 3 (the bound near the sup over all sigma, 8.23 its quantile) not. max_z is |z|
    either way. A stack's T_inf (fitted stats a, a_stderr) has no max test."""
    n = 15
    c_inf = math.sqrt(n / 2) * (n / stats.chi2.ppf(FAMILY_LEVEL / 2, n) - 1)
    assert stats.t.isf(FAMILY_LEVEL / 2, n) == pytest.approx(3.586, abs=1e-3)
    assert c_inf == pytest.approx(8.478, abs=1e-3)
    assert lognormal_tails(7.6, 16, 0.0)[0] < 1e-5  # the upper tail's sup (sigma -> 0)
    assert lognormal_tails(7.6, 16, math.inf)[1] == pytest.approx(0.00218, rel=1e-2)
    for z, sd, flag in ((7.6, None, "DISAGREE"), (-7.6, None, "ok"), (-8.5, None, "DISAGREE"),
                        (3.5, None, "ok"), (-7.6, 0.3, "DISAGREE"), (-7.6, 3.0, "ok"),
                        (-4.0, 0.1, "DISAGREE"), (-3.9, 0.1, "ok")):
        row = _one([z], 16, log_sd=sd)
        assert row["flag"] == flag and row["max_z"] == abs(z), (z, sd, row)
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


def test_the_rate_near_one_is_students_at_sigma_to_zero():
    """lognormal_rate is a supremum over sigma, so it is at least the rate at sigma -> 0, where
    z is Student t with S - 1 dof: 2 t.sf(k, S - 1) (scipy). At k = 1 that end is the larger
    (docstring: the sum is largest as sigma -> 0 for k near 1; 0.333 at S = 16 against the sigma
    -> inf law's 0.318, its closed form chi^2_n's cdf and sf). Catches: the rate read at sigma
    -> inf alone (the tests above use k = 2, 3, where that end is the sup)."""
    for S in (8, 16, 32):
        n = S - 1
        t_rate = 2 * stats.t.sf(1.0, n)
        r = math.sqrt(n / 2)
        inf_rate = stats.chi2.cdf(n / (1 + 1 / r), n) + stats.chi2.sf(n / (1 - 1 / r), n)
        assert t_rate > inf_rate * 1.01, (S, t_rate, inf_rate)  # (this k's sup is not at inf)
        assert lognormal_rate(1.0, S) >= t_rate * (1 - 1e-9), S


def test_a_point_whose_bound_p_is_above_the_level_is_not_flagged_by_the_shortcut():
    """_lower_flag's shortcut (the sup over every sigma, a closed form, below alpha - gamma) is
    only a faster way to the bound's p: p_bound <= sup + gamma. One point at 16 seeds, alpha =
    FAMILY_LEVEL / 2, gamma = LOWER_GAMMA alpha: z with the sigma -> inf law's tail at 0.95
    alpha (c from chi^2_15's quantile, closed form) and sd of log X 100 (sigma_up ~ 220, where
    the tail is the inf law's to ~1e-3, this file's integrator) has p = 0.95 alpha + gamma >
    alpha: not flagged; with sd 1 p ~ 0.27 alpha: flagged. Catches: the shortcut at alpha
    (it would flag every point whose sup over all sigma is below alpha, past the documented
    p-value's level by up to gamma)."""
    S, n = 16, 15
    alpha = FAMILY_LEVEL / 2
    gamma = LOWER_GAMMA * alpha
    c = (n / stats.chi2.ppf(0.95 * alpha, n) - 1) / math.sqrt(2 / n)  # the inf law at 0.95 alpha
    assert stats.chi2.cdf(n / (1 + c * math.sqrt(2 / n)), n) == pytest.approx(0.95 * alpha)
    for sd, flag in ((100.0, "ok"), (1.0, "DISAGREE")):
        up = sd * math.sqrt(n / stats.chi2.ppf(gamma, n))
        p = _grid_tails(c, S, up)[1] + gamma  # (integrator error << the 5 % margins used)
        assert (p > 1.02 * alpha) if flag == "ok" else (p < 0.5 * alpha), (sd, p / alpha)
        row = _one([-c], S, log_sd=sd)
        assert row["flag"] == flag, (sd, row)


def test_the_max_z_quantile_has_seeds_less_one_dof():
    """One point at 4 seeds, the rate test unable to flag it (n = 1: its bound passes 1): the
    max |z| test's quantile is Student t's with S - 1 = 3 dof at FAMILY_LEVEL / 2 (scipy:
    7.45; t with 4 dof: 5.60), for the mean and logmean estimators and lognormal's upper tail.
    A z between the two is ok, one past t_3's DISAGREE. Catches: S dof for S - 1."""
    c3, c4 = stats.t.isf(FAMILY_LEVEL / 2, 3), stats.t.isf(FAMILY_LEVEL / 2, 4)
    assert c3 - c4 > 1.5
    for estimator in ("mean", "logmean", "lognormal"):
        assert _one([(c3 + c4) / 2], 4, estimator)["flag"] == "ok", estimator
        assert _one([c3 + 0.1], 4, estimator)["flag"] == "DISAGREE", estimator


def test_max_z_is_located_at_the_largest_size_of_either_sign():
    """summary's max_z is the largest |z| and ``where`` names its point, below the theory too:
    z = (1, -6, 2) over layers 0..2 gives max_z 6 at layer=1. Catches: the location taken at the
    largest signed z (layer=2, a point the table would blame wrongly)."""
    for estimator in ("mean", "lognormal"):
        row = _one([1.0, -6.0, 2.0], 16, estimator)
        assert row["max_z"] == 6.0 and row["where"] == "layer=1", (estimator, row)


def _signed(y, truth, weight=None):
    """lognormal_signed on samples y (S, n) of log X against the truth per point."""
    da = xr.DataArray(y, dims=("seed", "layer"))
    ref = xr.DataArray(truth, dims="layer")
    w = xr.ones_like(ref) if weight is None else xr.DataArray(weight, dims="layer")
    return lognormal_signed(da, ref, w, xr.ones_like(ref, dtype=bool))


def test_the_signed_sum_by_hand():
    """The lognormal signed test's z against a brute-force sum: m_i = ybar_i + s_i^2 / 2, and
    Var sum w_i m_i = w^T S w / S + Q / (2 (S - 1)) from np.cov's full n x n covariance (the
    code takes S x S products), Q = sum_ij w_i w_j S_ij^2 less the pairs' bias, (S-1)/(S-2)
    (sum w w S^2 - (sum w_i S_ii)^2 / (S - 1)); sigma_eff^2 = Q / w^T S w. With one point it
    is that point's Cox z (compare's own estimate). Catches: the s^2 / 2 term, the square term
    of the variance, the weights left out of it."""
    rng = np.random.default_rng(3)
    S, n = 7, 4
    y = rng.standard_normal((S, n)) @ rng.standard_normal((n, n)) + [0.1, -0.2, 0.3, 0.0]
    truth, w = np.array([0.5, 0.1, -0.3, 0.2]), np.array([1.0, 0.5, 2.0, 1.5])
    C = np.cov(y, rowvar=False)
    m = y.mean(axis=0) + np.diag(C) / 2
    Q = (S - 1) / (S - 2) * (np.sum(np.outer(w, w) * C**2) - (w @ np.diag(C)) ** 2 / (S - 1))
    var = w @ C @ w / S + Q / (2 * (S - 1))
    z, seeds, sigma = _signed(y, truth, w)
    assert seeds == S
    assert z == pytest.approx(w @ (m - truth) / np.sqrt(var), rel=1e-12)
    assert sigma == pytest.approx(np.sqrt(Q / (w @ C @ w)), rel=1e-12)
    one = np.exp(xr.DataArray(y[:, 2], dims="seed"))
    est, se = estimate(one, "lognormal")
    assert _signed(y[:, [2]], truth[[2]])[0] == pytest.approx(float((est - truth[2]) / se),
                                                              rel=1e-12)


def test_points_moving_as_one_give_one_points_z_at_sigma_eff():
    """y_i = mu_i + a_i e (one factor): z is exactly one point's z for samples (B / A) e (A =
    sum w a, B = sum w a^2), whose law lognormal_tails gives, and sigma_eff = (B / A) sd(e):
    the premise of reading z's lower tail at a bound on sigma_eff."""
    rng = np.random.default_rng(4)
    S, a, w, mu = 12, np.array([0.3, 0.7, 1.1]), np.array([1.0, 2.0, 0.5]), np.array([1, 2, 3.0])
    e = rng.standard_normal(S)
    y = mu + np.outer(e, a)
    truth = mu + a**2 / 2  # (log E X of each point at e's sd 1)
    A, B = w @ a, w @ a**2
    z, _, sigma = _signed(y, truth, w)
    single, _, _ = _signed((B / A * e)[:, None], np.array([(B / A) ** 2 / 2]))
    assert z == pytest.approx(single, rel=1e-12)
    assert sigma == pytest.approx(B / A * e.std(ddof=1), rel=1e-12)


def test_the_signed_tests_null_rate_is_within_its_level_where_t_is_not():
    """At 16 seeds, 50 points moving as one with sd of log X rising to 3 (the law's worst
    shape, s^2 underestimated together), the signed test at FAMILY_LEVEL fires on the true
    theory in at most its level + 4 binomial sd of 600 runs, while the same z read as Student
    t (the mean's law) passes that bound (its lower tail: ~2 % of runs, benchmarks/RESULTS.md).
    Catches: the lower tail read as t's, a bound on sigma_eff that is too low."""
    rng = np.random.default_rng(6)
    runs, S = 600, 16
    crit = stats.t.isf(FAMILY_LEVEL / 2, S - 1)
    own = student = 0
    a = np.linspace(0.2, 1.0, 50) * 3.0
    for _ in range(runs):
        y = np.outer(rng.standard_normal(S), a)
        z, seeds, sigma = _signed(y, a**2 / 2)
        own += lognormal_signed_flag(z, seeds, sigma)
        student += abs(z) > crit
    bound = FAMILY_LEVEL + 4 * math.sqrt(FAMILY_LEVEL * (1 - FAMILY_LEVEL) / runs)
    assert own / runs <= bound, own
    assert student / runs > bound, student


def test_a_shift_of_every_point_by_one_se_is_found_by_the_signed_test(theory):
    """32 seeds, sd of log X 0.3, the theory's log E X 1.5 per-point se below the truth at
    every point above the inputs: no point's z passes the max test (each ~1), the signed z over
    the 8 points is ~sqrt(8) larger and summary flags DISAGREE through it alone (its attrs
    blanked: ok); the true theory: ok. Catches: summary not reading the lognormal signed test."""
    S, sigma = 32, 0.3
    se = _cox_se(S, sigma)
    wrong = theory.copy(deep=True)
    wrong["log_q"] = wrong["log_q"] - 1.5 * se * (wrong["layer"] > 0)
    wrong["q"] = np.exp(wrong["log_q"])
    mc = synthetic(theory, seeds=S, noise=sigma, root_seed=12)
    cmp = compare(wrong, mc, variables=["q"], estimator="lognormal")
    row = summary(cmp)[0]
    assert row["flag"] == "DISAGREE" and row["max_z"] < 3.5 and row["signed_t"] > 3.5, row
    assert 0 < row["mde"] < 1.5 * se, row  # (the signed test's power: below the shift)
    cmp["q"].attrs["signed_t"] = math.nan
    assert summary(cmp)[0]["flag"] == "ok"
    # below the theory, read by its own law: -4 passes t's quantile (3.26 at 31 dof) but not
    # the lower one at sigma_eff 3 (5.59; 3.76 at 0.3), as lognormal_signed_crits gives
    cmp["q"].attrs.update(signed_t=-4.0, signed_log_sd=3.0)
    assert summary(cmp)[0]["flag"] == "ok"
    cmp["q"].attrs.update(signed_log_sd=0.3)
    assert summary(cmp)[0]["flag"] == "DISAGREE"
    right = summary(compare(theory, mc, variables=["q"], estimator="lognormal"))[0]
    assert right["flag"] == "ok" and abs(right["signed_t"]) < 3, right


def test_the_signed_sums_variance_is_not_inflated_by_independent_points():
    """A review: sum w w S_ij^2, with S the seeds' sample covariance, is biased up by S_ii S_jj
    / (S' - 1) at every pair, ~n^2 sigma^4 / (S' - 1) in all, where the true square term is n
    sigma^4 for n independent points: at 200 points and 16 seeds of sd 1 the SE^2 was 5.7 times
    the sum's variance (null sd of z 0.42) and sigma_eff 3.9 times the points' sd. With the
    pairs' bias taken off, (S'-1)/(S'-2) (sum w w S^2 - (sum w S_ii)^2 / (S'-1)) (exact for one
    point and for points moving as one, whose S_ij^2 = S_ii S_jj), the mean SE^2 is within 20 %
    of the variance and sigma_eff within 20 % of sigma. Catches: the plug-in S_ij^2."""
    rng = np.random.default_rng(8)
    S, n, sigma, runs = 16, 200, 1.0, 300
    truth = np.full(n, sigma**2 / 2)
    variance = n * sigma**2 / S + n * sigma**4 / (2 * (S - 1))
    se2, sig, z = [], [], []
    for _ in range(runs):
        y = rng.standard_normal((S, n)) * sigma
        zi, _, si = _signed(y, truth)
        dev = np.sum(y.mean(axis=0) + y.var(axis=0, ddof=1) / 2 - truth)
        se2.append((dev / zi) ** 2)
        sig.append(si)
        z.append(zi)
    assert 0.8 < np.mean(se2) / variance < 1.2, np.mean(se2) / variance
    assert 0.8 < np.median(sig) / sigma < 1.2, np.median(sig)
    assert 0.8 < np.std(z) < 1.2, np.std(z)


def test_the_shape_components_of_a_dataarray_and_of_its_arrays_agree():
    """lognormal_shape reduces its DataArrays to rows (seeds finite at every counted point) and
    the points' layers; the benchmark calls _shape_components on arrays: the same z_j and
    sigma_j, in any dim order and with an uncounted point and a NaN seed left out. A uniform
    shift of the theory moves no z_j (P_j orthogonal to a constant over the counted points).
    Catches: the components not made orthogonal to the offset, layers misread."""
    from sigprop.analysis.compare import _shape_components, lognormal_shape

    rng = np.random.default_rng(8)
    S, L = 12, 6
    y = rng.standard_normal((S, L, 2)) * np.linspace(0.3, 1.0, L)[:, None]
    truth = rng.standard_normal((L, 2)) * 0.1
    da = xr.DataArray(y, dims=("seed", "layer", "input"), coords={"layer": np.arange(L)})
    da[3, 2, 1] = np.nan  # (a seed lost at one counted point)
    ref = xr.DataArray(truth, dims=("layer", "input"), coords={"layer": np.arange(L)})
    counted = xr.ones_like(ref, dtype=bool)
    counted[0, 0] = False
    zs, sds, seeds = lognormal_shape(da, ref, xr.ones_like(ref), counted)
    assert seeds == S - 1 and len(zs) == 3
    keep = counted.values.ravel()
    rows = np.delete(y.reshape(S, -1), 3, axis=0)[:, keep]
    layer = np.repeat(np.arange(L), 2)[keep]
    z2, s2 = _shape_components(rows, truth.ravel()[keep], np.ones(keep.sum()), layer)
    np.testing.assert_allclose(zs, z2, rtol=1e-12)
    np.testing.assert_allclose(sds, s2, rtol=1e-12)
    zt, _, _ = lognormal_shape(da.transpose("input", "seed", "layer"), ref + 0.0, xr.ones_like(ref),
                               counted)
    np.testing.assert_allclose(zs, zt, rtol=1e-12)
    shifted, _, _ = lognormal_shape(da, ref + 0.7, xr.ones_like(ref), counted)
    np.testing.assert_allclose(zs, shifted, rtol=1e-9, atol=1e-12)


def test_the_shape_tests_null_rate_is_within_its_level():
    """300 runs of 50 points moving as one, sd of log X rising to 3, 16 seeds: the shape test
    at FAMILY_LEVEL fires in at most its level + 4 binomial sd (each |z_j| by the lower
    tail's law at its sigma_j's bound, Bonferroni over the 3 components). Read by Student t's
    quantile instead, its components pass that bound (they are one point's z at sigma_j, up to
    sign). Catches: the tails read as t's, no Bonferroni over the components."""
    from sigprop.analysis.compare import _shape_components, lognormal_shape_p

    rng = np.random.default_rng(9)
    runs, S = 300, 16
    a = np.linspace(0.2, 1.0, 50) * 3.0
    layer = np.arange(50)
    own = student = 0
    crit = stats.t.isf(FAMILY_LEVEL / 6, S - 1)  # (each of 3 components, two-sided)
    for _ in range(runs):
        y = np.outer(rng.standard_normal(S), a) + rng.standard_normal((S, 50)) * 0.05
        zs, sds = _shape_components(y, (a**2 + 0.05**2) / 2, np.ones(50), layer)
        own += lognormal_shape_p(zs, sds, S) < FAMILY_LEVEL
        student += max(abs(z) for z in zs) > crit
    bound = FAMILY_LEVEL + 4 * math.sqrt(FAMILY_LEVEL * (1 - FAMILY_LEVEL) / runs)
    assert own / runs <= bound, own
    assert student / runs > bound, student


def test_a_tilt_over_depth_is_found_by_the_shape_test():
    """32 seeds, sd of log X 0.3, 32 points of q (16 layers above the inputs, 2 inputs): the
    theory's log E X tilted linearly from -2 to +2 per-point se from the lowest to the
    highest layer (no offset in sum: the signed test sees ~0; each point's z ~2 at most,
    short of the max test) is flagged DISAGREE through the shape test alone (its p below the
    level, above its floor 2 k gamma = LOWER_GAMMA FAMILY_LEVEL; blanked, ok); the true
    theory passes. Catches: summary not reading the lognormal shape test."""
    theory, wrong, mc = _tilted_resnet()
    cmp = compare(wrong, mc, variables=["q"], estimator="lognormal")
    row = summary(cmp)[0]
    assert row["flag"] == "DISAGREE" and abs(row["signed_t"]) < 2, row
    assert LOWER_GAMMA * FAMILY_LEVEL <= row["shape_p"] < FAMILY_LEVEL / 2, row
    cmp["q"].attrs.pop("shape_z")
    cmp["q"].attrs["shape_p"] = math.nan
    assert summary(cmp)[0]["flag"] == "ok"
    right = summary(compare(theory, mc, variables=["q"], estimator="lognormal"))[0]
    assert right["flag"] == "ok" and right["shape_p"] > 0.01, right


def test_a_shape_component_blind_to_the_seeds_is_left_out():
    """Points moving as one with a sd linear in the layer (y_i = a_i e, a_i linear): P_3 is
    orthogonal to both a and a^2, so its sum has no spread, only round-off (SE ~1e-16 of the
    points' own), and its z is noise over noise (it flagged 2.7 % of null runs at 32 seeds,
    sd 0.1, in the calibration benchmark's first run). It is left out: two components remain,
    and the null p stays O(1). Catches: the CANCELLED guard dropped."""
    from sigprop.analysis.compare import _shape_components, lognormal_shape_p

    rng = np.random.default_rng(10)
    a = np.linspace(0.02, 0.1, 50)
    y = np.outer(rng.standard_normal(32), a)
    zs, sds = _shape_components(y, a**2 / 2, np.ones(50), np.arange(50))
    assert len(zs) == 2, zs
    assert lognormal_shape_p(zs, sds, 32) > 0.01


def test_a_deviation_where_the_seeds_do_not_spread_is_flagged():
    """The blind component of test_a_shape_component_blind_to_the_seeds_is_left_out: a theory
    that differs from the truth along it (a cubic in the layer, 1e-3 at the ends in log X,
    ~1/5 of the lowest point's se and ~1/20 of the top one's) cannot be explained by any
    spread of these seeds: that component's z is infinite, p 0, and compare's verdict
    DISAGREE through the shape test alone (blanked: ok). Within the rounding floor (1e-3 a
    point here) it is left out again. Catches: a blind component dropped whatever its
    deviation; its infinite z dropped by lognormal_shape_p."""
    from sigprop.analysis.compare import _shape_components, lognormal_shape_p

    rng = np.random.default_rng(10)
    a = np.linspace(0.02, 0.1, 50)
    y = np.outer(rng.standard_normal(32), a)
    t = np.linspace(-1, 1, 50)
    cubic = 1e-3 * (5 * t**3 - 3 * t) / 2  # (P_3: orthogonal to a, a^2 and an offset)
    zs, sds = _shape_components(y, a**2 / 2 + cubic, np.ones(50), np.arange(50))
    assert len(zs) == 3 and math.isinf(zs[-1]) and np.isnan(sds[-1]), zs
    assert lognormal_shape_p(zs, sds, 32) == 0.0
    within, _ = _shape_components(y, a**2 / 2 + cubic, np.ones(50), np.arange(50), 1e-3)
    assert len(within) == 2, within
    layer = {"layer": np.arange(50)}
    mc = xr.DataArray(np.exp(y), dims=("seed", "layer"), coords=layer).to_dataset(name="q")
    theory = xr.Dataset({"q": xr.DataArray(np.exp(a**2 / 2 + cubic), dims="layer",
                                           coords=layer)})
    mc["log_q"], theory["log_q"] = np.log(mc["q"]), np.log(theory["q"])
    cmp = compare(theory, mc, variables=["q"], estimator="lognormal")
    row = summary(cmp)[0]
    assert row["flag"] == "DISAGREE" and row["shape_p"] == 0.0, row
    cmp["q"].attrs.pop("shape_z")
    cmp["q"].attrs["shape_p"] = math.nan
    assert summary(cmp)[0]["flag"] == "ok"


def test_float32_samples_give_the_blind_shape_component_no_false_alarms():
    """The blind component of test_a_shape_component_blind_to_the_seeds_is_left_out, on
    samples stored as float32 (a user's dataset, a float32 file) about log X ~ 5: summed in
    float32, the component's SE is float32 round-off (~1e-7 of its points' own, past
    CANCELLED), so it is kept, and its z is round-off over round-off: 18 of these 20 null runs
    flagged at FAMILY_LEVEL (and with rtol=0, 28 of 40 null comparisons DISAGREE). Summed in
    float64, the float32 rounding of the samples is a noise far above the sums' round-off,
    whose z is an honest one (the component is kept, its p O(1)). Catches: the rows kept in
    the samples' dtype."""
    from sigprop.analysis.compare import lognormal_shape, lognormal_shape_p

    rng = np.random.default_rng(10)
    a = np.linspace(0.02, 0.1, 50)
    layer = {"layer": np.arange(50)}
    ref = xr.DataArray(5.0 + a**2 / 2, dims="layer", coords=layer)
    mask = xr.ones_like(ref, dtype=bool)
    flagged = 0
    for _ in range(20):
        y = 5.0 + np.outer(rng.standard_normal(32), a)
        da = xr.DataArray(y.astype(np.float32), dims=("seed", "layer"), coords=layer)
        zs, sds, seeds = lognormal_shape(da, ref, xr.ones_like(ref), mask)
        flagged += lognormal_shape_p(zs, sds, seeds) < FAMILY_LEVEL
    assert flagged <= 1, flagged


def test_summary_reads_the_lognormal_shape_components_at_its_own_level_and_seeds():
    """summary recomputes the shape p from the attrs shape_z and shape_log_sd at its own level
    (a gate over many variables passes a share of FAMILY_LEVEL: the gamma of each sigma bound
    is a share of that level) and the signed test's S' (the rows both tests used), also after
    a netCDF round trip (one component comes back a scalar). Catches: summary reading them
    at FAMILY_LEVEL whatever its level, or at S' - 1 seeds."""
    from sigprop.analysis.compare import lognormal_shape_p

    theory = sp.theory(sp.presets.resnet(depth=6, act="relu"), sp.Inputs(q=[1.0, 2.0], corr=0.3))
    mc = synthetic(theory, seeds=8, noise=1.0, root_seed=3)
    cmp = compare(theory, mc, variables=["q"], estimator="lognormal")
    attrs = cmp["q"].attrs
    zs, sds, seeds = list(attrs["shape_z"]), list(attrs["shape_log_sd"]), attrs["signed_seeds"]
    zs[0] = -6.0  # (a p between the levels' floors: each level's gamma shows)
    cmp["q"].attrs["shape_z"] = zs
    for level in (FAMILY_LEVEL, FAMILY_LEVEL / 10):
        want = lognormal_shape_p(zs, sds, seeds, level)
        assert summary(cmp, level=level)[0]["shape_p"] == pytest.approx(want, rel=1e-9)
    assert lognormal_shape_p(zs, sds, seeds, FAMILY_LEVEL / 10) != pytest.approx(
        lognormal_shape_p(zs, sds, seeds), rel=1e-3)
    one = cmp.copy()
    one["q"].attrs = {**attrs, "shape_z": zs[:1], "shape_log_sd": sds[:1]}
    back = xr.Dataset.from_dict(one.to_dict())  # (a list of one: netCDF's scalar)
    back["q"].attrs["shape_z"], back["q"].attrs["shape_log_sd"] = zs[0], sds[0]
    assert summary(back)[0]["shape_p"] == pytest.approx(
        lognormal_shape_p(zs[:1], sds[:1], seeds), rel=1e-9)


def test_the_shape_p_is_the_documented_bonferroni_of_each_components_lower_tail():
    """lognormal_shape_p from its definition, recomputed here: sigma_up = s sqrt(n / q_gamma)
    (q_gamma chi^2_n's lower gamma quantile, gamma = LOWER_GAMMA level / (2 k)), p_j = 2
    (P_{sigma_up}(z' < -|z_j|) + gamma) by lognormal_tails, p = min(1, k min_j p_j); on one
    factor plus a little noise (three components), at FAMILY_LEVEL and a tenth of it.
    Catches: the point estimate of sigma in place of its bound, one tail, gamma left out or
    not shared among the components."""
    from sigprop.analysis.compare import _shape_components, lognormal_shape_p

    rng = np.random.default_rng(12)
    S, a = 16, np.linspace(0.2, 1.0, 20)
    y = np.outer(rng.standard_normal(S), a) + 0.1 * rng.standard_normal((S, 20))
    truth = (a**2 + 0.01) / 2 + 0.6 * np.linspace(-1, 1, 20)  # (a tilt: p below 1)
    zs, sds = _shape_components(y, truth, np.ones(20), np.arange(20))
    k, n = len(zs), S - 1
    assert k == 3
    for level in (FAMILY_LEVEL, FAMILY_LEVEL / 10):
        gamma = LOWER_GAMMA * level / (2 * k)
        ps = []
        for z, s in zip(zs, sds):
            up = s * math.sqrt(n / stats.chi2.ppf(gamma, n))
            ps.append(2 * (lognormal_tails(abs(z), S, up)[1] + gamma))
        expected = min(1.0, k * min(ps))
        assert expected < 1
        assert lognormal_shape_p(zs, sds, S, level) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("estimator", ["lognormal", "logmean"])
def test_a_uniform_offset_where_no_seed_differs_is_flagged_by_the_signed_test(estimator):
    """A review's case: 12 layers whose 8 seeds are all the same, a theory off by a uniform
    2.5 rtol in log X (each point's z = 2.5: the rounding floor as its only scale, short of
    the point tests; the shape test sees no offset). No spread of the seeds explains it: the
    signed test's z is infinite and the verdict DISAGREE; an offset of half the floor is no
    deviation (the points are exact, none counted). Catches: the signed test NaN where the seeds
    do not spread (the verdict was ok), under either estimator."""
    for offset, flag in ((2.5e-5, "DISAGREE"), (0.5e-5, "ok")):
        theory, mc = _identical_seeds(offset)
        row = summary(compare(theory, mc, variables=["q"], estimator=estimator))[0]
        assert row["flag"] == flag, row
        assert (math.isinf(row["signed_t"]) and row["max_z"] < 3 if flag == "DISAGREE"
                else row["points"] == 0), row


def test_shifted_tails_meet_the_trapezoid_rule_simulation_and_noncentral_t():
    """The law under a theory off by rho Cox SEs (the alternative a power reads): against this
    file's trapezoid rule (its shift in log X, rho SE) to 1e-4 relative at S = 8, 32, sigma =
    0.3, 1, 3, rho = -3 .. 3; against 200 000 simulated samples at S = 8, sigma = 3, rho = -2.5
    (binomial tolerance); rho 0 the unshifted law; sigma -> 0 noncentral t (z -> (Z + rho) /
    sqrt(w)). Catches: the shift's sign, or its scale (d = rho SE / sigma)."""
    for S in (8, 32):
        for sigma in (0.3, 1.0, 3.0):
            se = _cox_se(S, sigma)
            for rho in (-3.0, -1.0, 1.0, 3.0):
                got = lognormal_tails(2.5, S, sigma, rho)
                want = _grid_tails(2.5, S, sigma, shift=rho * se)
                assert got == pytest.approx(want, rel=1e-4, abs=1e-15), (S, sigma, rho)
            assert lognormal_tails(2.5, S, sigma, 0.0) == lognormal_tails(2.5, S, sigma)
    rng = np.random.default_rng(21)
    S, sigma, rho, reps = 8, 3.0, -2.5, 200_000
    se = _cox_se(S, sigma)
    y = sigma * rng.standard_normal((reps, S))
    s2 = y.var(axis=1, ddof=1)
    z = (y.mean(axis=1) + s2 / 2 - (sigma**2 / 2 - rho * se)) / np.sqrt(
        s2 / S + s2**2 / (2 * (S - 1)))
    for c in (2.0, 3.0):
        for p, seen in zip(lognormal_tails(c, S, sigma, rho), (np.mean(z > c), np.mean(z < -c))):
            assert abs(seen - p) <= 4 * math.sqrt(p * (1 - p) / reps) + 1 / reps, (c, p, seen)
    for c, rho in ((2.0, 1.5), (3.0, -2.0)):
        near = lognormal_tails(c, 16, 1e-7, rho)
        assert near == pytest.approx((stats.nct.sf(c, 15, rho), stats.nct.cdf(-c, 15, rho)),
                                     rel=1e-4)


def test_the_lognormal_mde_is_the_shift_its_law_finds_with_the_power_asked():
    """lognormal_mde_shift (lognormal_signed_mde's rho, which it multiplies by SE / n): the
    larger of the two directions' shifts at which the law's tail past its critical value is
    0.8. At S = 8, sigma = 3 (the lower tail the
    heavier) the power of the theory too high at rho is 0.8 to 1 % and too low at least 0.8;
    at sigma -> 0 rho is the t estimators' (noncentral t, _noncentrality) to 2 %. Measured
    against simulation in benchmarks/RESULTS.md. Catches: the smaller direction taken; the
    shift's sign crossed with the tail."""
    from sigprop.analysis.compare import (
        _noncentrality,
        lognormal_mde_shift,
        lognormal_signed_crits,
    )

    S, sigma = 8, 3.0
    rho = lognormal_mde_shift(S, sigma)
    up, low = lognormal_signed_crits(S, sigma)
    assert lognormal_tails(low, S, sigma, -rho)[1] == pytest.approx(0.8, abs=0.01)
    assert lognormal_tails(up, S, sigma, rho)[0] >= 0.8
    rho0 = lognormal_mde_shift(16, 1e-7)
    assert rho0 == pytest.approx(_noncentrality(15, FAMILY_LEVEL, 0.8), rel=0.02)


def test_the_mde_and_the_shifted_law_at_the_edges_of_sigma():
    """sigma_eff infinite or past sqrt(float max) (points whose sum nearly cancels: sigma_eff =
    sqrt(square / linear) unbounded) gives the sigma -> inf law's MDE, not a ValueError or an
    OverflowError from compare; sigma exactly 0 (the noncentral-t branch, which the integral at
    sigma 1e-9 must meet: its shift's sign) and the t estimators' signed test with no spread and
    a sum within its floor (NaN, not infinite: opposite deviations cancel)."""
    from sigprop.analysis.compare import _Parts, lognormal_signed_mde, signed_t

    far = lognormal_signed_mde(_Parts(0.0, 1.0, 8, 1, 1e100, 1.0, False, 0.0))
    for sigma in (1e200, math.inf):  # (through compare's own path, the parts)
        assert lognormal_signed_mde(_Parts(0.0, 1.0, 8, 1, sigma, 1.0, False, 0.0)) == (
            pytest.approx(far, rel=1e-6))
    for c, S, rho in ((2.5, 8, 1.5), (4.0, 16, -3.0), (19.2, 3, 30.0)):
        assert lognormal_tails(c, S, 0.0, rho) == pytest.approx(
            lognormal_tails(c, S, 1e-9, rho), rel=1e-6, abs=1e-12)
    dims, ones = ("seed", "layer"), xr.DataArray(np.ones(2), dims="layer")
    samples = xr.DataArray(np.tile([1.0, -1.0], (8, 1)), dims=dims)
    counted = xr.DataArray([True, True], dims="layer")
    assert math.isnan(signed_t(samples, 0 * ones, ones, counted, 0.1)[0])
    assert signed_t(samples + 0.5, 0 * ones, ones, counted, 0.1)[0] == math.inf


def test_a_disagreement_names_the_tests_that_fired():
    """summary's ``by`` lists the tests behind a DISAGREE, and print_table says it (a review:
    a row flagged by the signed test alone was explained as "max |z| at layer=4", a point
    whose |z| was 2.5). Here: the uniform offset where no seed differs (the sum t alone), and
    a tilt over depth (the shape test alone); a correct theory fires none. Catches: ``by``
    not matching the flag's tests."""
    import io

    from rich.console import Console

    from sigprop.analysis.compare import print_table

    cmp = compare(*_identical_seeds(2.5e-5), variables=["q"], estimator="logmean")
    assert summary(cmp)[0]["by"] == ["sum t"]
    out = io.StringIO()
    print_table(cmp, console=Console(file=out, width=100))
    assert "DISAGREE by sum t; max |z| at layer=" in out.getvalue()
    theory, wrong, mc = _tilted_resnet()
    assert summary(compare(wrong, mc, variables=["q"], estimator="lognormal"))[0]["by"] == [
        "shape"]
    assert summary(compare(theory, mc, variables=["q"], estimator="lognormal"))[0]["by"] == []
