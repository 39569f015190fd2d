"""Theory versus Monte Carlo: estimates, standard errors, width extrapolation, z-scores.

For each variable the seeds of the Monte Carlo dataset are reduced by one estimator, stated in
the output attrs:

* ``mean``: the sample mean, standard error s / sqrt(S), against the theory value;
* ``lognormal``: log-moments. With y = log X, the estimate of log E[X] is
  ybar + s_y^2 / 2 (log-normal moments), standard error sqrt(s_y^2/S + s_y^4 / (2 (S - 1)))
  (Cox's method), against the theory ``log X``. Robust where X is heavy-tailed (squared norms
  of deep nets at depth/width of order one are log-normal-like), and still aimed at log E[X],
  which the infinite-width theory predicts (exactly, for linear and ReLU nets, see below);
* ``logmean``: the mean of logs ybar, standard error s_y / sqrt(S), against theory ``log X``:
  the typical value. At finite width it sits O(depth / width) below log E[X] (Jensen);
* ``median``: the median of log X, standard error sqrt(pi/2) s_y / sqrt(S) (Gaussian
  efficiency), against theory ``log X``.

``estimator="auto"`` takes ``mean`` for ``mean`` and ``corr`` and for the squared norms (``q``,
``var``, ``grad_q``, ``branch_q``) while they are light-tailed, switching to ``lognormal`` when
the seed spread of log X exceeds :data:`HEAVY_LOG_SD` anywhere.

Finite width. The infinite-width theory T_inf is biased at width N by a/N + O(1/N^2). When the
Monte Carlo has two or more widths (a ``width`` dim, e.g. from :func:`stack_widths`), each
variable and layer is fitted as T(N) = T_inf + a/N (+ b/N^2 with three or more widths) by
weighted least squares on the per-width estimates (weights 1/se^2; the estimates are taken as
independent across widths, as they are where each width drew with its own root seed, as a sim's
run does: :func:`stack_widths` warns otherwise), and T_inf, with its standard error from the fit's
covariance, is tested against the theory; the fitted a and its standard error are reported
(stats ``a`` and ``a_stderr``: a measured finite-width coefficient). With one width N the bias
stays in the estimate: a theory from ``sp.theory(net, inputs, width=W)`` is then compared with
its first-order prediction at N, T_inf + a/N (its a/W times W/N; :func:`first_order`: q, corr,
mean, var, branch_q, grad_q and weight_grad_q, on the estimator's scale; not under ``median``,
whose offset
from the mean of a log is itself O(1/N), by log X's skewness), and otherwise nothing is
allowed beyond the standard error; the attrs say which. Where the expansion has no term (a
BatchNorm's gradient) and the run is at the theory's own width, ``logmean`` compares grad_q
with the theory's E log grad_q at that width, ``typical_log_grad_q`` (:data:`TYPICAL`). With
several widths such a theory's a is reported beside the fitted one (stat ``a_theory``, NaN
where it has none).

Spreads. A theory at a width predicts the spread across nets (``var_log_q``, ``var_corr``,
...: :data:`SPREADS`); named in ``variables``, each is compared with the variance across the
run's seeds at its width (a stack: at each width, kept as a ``width`` dim), z by Wilson and
Hilferty's cube root (:func:`_compare_spreads`).

Heavy tails. The tail index of each per-seed sample is estimated (Hill, :func:`tail_index`).
Where the variance is not finite (the upper 95 % bound of the index is below 2) the sample mean
has no standard error: a squared norm is compared in log space (``lognormal``), any other
variable is marked not comparable (z = NaN, counted in attrs and flagged by :func:`summary`).

Same experiment. ``compare`` reads the ``config`` attrs of both datasets and refuses
(``ConfigError`` naming the difference) when the architectures, depths or inputs differ;
``prefix=True`` accepts a Monte Carlo of the theory's first blocks only (forward statistics on
the shared layers; gradients, which depend on the blocks above, are skipped).

z = (estimate - theory) / sqrt(se^2 + floor^2), floor = rtol * |theory| on the linear scale and
rtol on the log scale (a relative error of X is an absolute one of log X): the floor ``rtol``
(default 1e-5, float32 rounding of Monte Carlo sums) keeps exact entries (layer 0, the diagonal
of corr; log q = 0 there too) from dividing by zero. A cosine's rounding is absolute and a
feature mean's relative to the features' size, so for corr the floor is rtol * max(|theory|, 1)
and for mean rtol * max(|theory|, sqrt(q)) (:func:`_unit`: an exact 0 that the theory computes
as 3e-20 is 0 to rounding). Under the null z is close to Student t
with S - 1 degrees of freedom; the nominal rate of |z| > k is reported beside the observed one.
Not under ``lognormal``: for normal y (sd sigma), ybar and s_y^2 are independent, s_y^2 =
sigma^2 w, w ~ chi^2_n / n (n = S - 1), so its z = (Z / sqrt(S) + sigma (w - 1) / 2) /
sqrt(w / S + sigma^2 w^2 / (2n)), Z standard normal: a law of S and sigma alone, Student t as
sigma -> 0 and sqrt(n/2) (1 - 1/w) as sigma -> inf (below sqrt(n/2); a heavy lower tail, where
s_y^2 is underestimated). Given w each tail is a normal tail, so each is one integral over w
(:func:`lognormal_tails`); :func:`summary` reads the largest lognormal z against the upper
tail's supremum over the unknown sigma (Student t's, at sigma -> 0), each point's lower tail by
a p-value over a confidence bound on its own sigma (:func:`lognormal_lower_p`; the lower tail's
supremum over all sigma, sigma -> inf, is far out at few seeds), and the rate of |z| > k against
its supremum over sigma (:func:`lognormal_rate`). Under ``lognormal`` at one width each
variable carries the stat ``log_sd``, the seeds' sd of log X per point, which that bound reads
(a comparison with such a variable gives every variable the stat, NaN where it has none). Its
signed test sums the points' estimates, with Cox's variance of the sum from the seeds'
covariance across points (:func:`lognormal_signed`): points that move as one give exactly one
point's z, read by the same law at a bound on the sum's own sd (attr ``signed_log_sd``). Its
shape test (:func:`lognormal_shape`) reads the shape test's Legendre-weighted sums so, each by
the heavier (lower) tail, Bonferroni over them (attrs ``shape_z``, ``shape_log_sd``).

Where the theory is exact at any width. For ``E q``: in a net of Dense, ReLU / linear
activations and residual sums with zero-mean weights, E[q' | x] is a linear function of q
(a Dense gives sigma_w^2 q + sigma_b^2 exactly for any N, plus sigma_b_fan_in^2 / n_in, the
bias's fan-in part, which the infinite-width theory leaves out; a ReLU after a Dense gives
sigma_w^2 q / 2 exactly, a residual sum adds the branch with zero cross term since the last
Dense has mean-zero weights independent of x), so E q_L equals the infinite-width recursion by
the tower rule. The feature mean after a Dense has expectation 0 exactly. Correlations,
normalised quantities and gradients (the forward and backward passes share weights) carry an
O(1/N) bias per block at fixed depth instead (gradient independence, :mod:`sigprop.ops.base`).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import numbers
from typing import NamedTuple

import numpy as np
import xarray as xr
from scipy import optimize, stats

from sigprop import schema
from sigprop.errors import ConfigError, FiniteWidthWarning, warn
from sigprop.ops import layers_of, op_from_dict, replace_sweeps, sweeps_of
from sigprop.provenance import make_attrs
from sigprop.state.rng import WIDTH_STREAMS, width_root_seed

VARIABLES = schema.PRIMARY  # the log companions are not compared: they are the log estimators
SCALE_VARIABLES = tuple(n for n in VARIABLES if schema.VARIABLES[n].scale)
# comparable only when both nets have the same depth
BACKWARD_VARIABLES = tuple(n for n in VARIABLES if schema.VARIABLES[n].backward)
ESTIMATORS = ("auto", "mean", "lognormal", "logmean", "median")
HEAVY_LOG_SD = 0.25  # seed sd of log X above which the sample mean of X is poorly behaved
BOUNDED = ("corr",)  # |corr| <= 1: a sample's variance is finite whatever its tail estimate says
DESCRIPTION = {
    "mean": "sample mean over seeds, se = s/sqrt(S), vs theory X",
    "lognormal": "log-moments (Cox): mean(log X) + var(log X)/2, "
                 "se = sqrt(s^2/S + s^4/(2(S-1))), vs theory log X",
    "logmean": "mean of log X over seeds, se = s/sqrt(S), vs theory log X (typical value)",
    "median": "median of log X over seeds, se = sqrt(pi/2) s/sqrt(S), vs theory log X",
}
MEDIAN_SE = math.sqrt(math.pi / 2)  # sd of a normal sample's median over its mean's, large S
STATS = ("estimate", "stderr", "theory", "z")
THEORY_KINDS = ("theory", "symbolic")  # the attrs kind of a dataset compare takes as theory
FIT_STATS = ("a", "a_stderr")  # the fitted finite-width coefficient T(N) = T_inf + a/N + ...
THEORY_A = "a_theory"  # beside them: the coefficient a of a theory at finite width
FIRST_ORDER = {  # the variables of sp.theory(..., width=N) each compared variable reads
    "q": ("q_rel_correction", "log_q_correction"),
    "branch_q": ("branch_q_rel_correction", "log_branch_q_correction"),
    "grad_q": ("grad_q_rel_correction", "var_log_grad_q"),
    "weight_grad_q": ("weight_grad_q_rel_correction", "var_log_weight_grad_q"),
    "corr": ("corr_correction",), "mean": ("mean_correction",),
    "var": ("var_rel_correction", "var_log_var")}
TYPICAL = {"grad_q": "typical_log_grad_q"}  # E log X at the theory's width N itself (BatchNorm
# nets, where the 1/N expansion has no term): the logmean estimator's value there, at N only
SPREADS = {  # a spread of sp.theory(..., width=N): the variable X it is Var X or Var log X of
    "var_log_q": ("q", True), "var_corr": ("corr", False), "var_mean": ("mean", False),
    "var_log_var": ("var", True), "var_log_branch_q": ("branch_q", True),
    "var_log_grad_q": ("grad_q", True), "var_log_weight_grad_q": ("weight_grad_q", True)}
SPREAD_OF = {x: (name, log) for name, (x, log) in SPREADS.items()}  # X -> its spread
BACKWARD_SPREADS = tuple(n for n, (x, _) in SPREADS.items() if schema.VARIABLES[x].backward)
BEND_MAX = 2.0  # |D4| / |D2| of f over X's spread: E f(X)'s next term over its V term
ROUND_OFF = 1e-10  # differences of f below this (relative to 1 + |f|) are f's rounding
SPREAD_ESTIMATOR = ("sample variance over seeds, se from the sample's fourth moment (its "
                    "kurtosis no lower than 3), vs the "
                    "theory's V/N at the Monte Carlo's width N; z by Wilson and Hilferty's cube "
                    "root (s^2 / sigma^2 is skewed)")
MIN_SPREAD_SEEDS = 16  # a spread's z reads the sample kurtosis: at 8 seeds its fourth moment is
# noise (a heavy tail's rate of |z| > 3 measured in benchmarks/RESULTS.md)
NORMAL_KURTOSIS = 3.0  # the floor of a spread's sample kurtosis (:func:`_spread_parts`)
TAIL_Z = 1.645  # one-sided 95 %: variance called infinite when alpha_hat (1 + z/sqrt(k)) < 2
FAMILY_LEVEL = 0.0027  # summary's max |z|, signed and shape tests: the two-sided 3-sigma level,
# each
MDE_POWER = 0.8  # the MDE: the smallest error the signed test finds with this probability
SHAPE_DEGREE = 3  # the shape test's Legendre polynomials of the layer: degrees 1 .. 3
MAX_CONDITION = 1e12  # the shape test's covariance past this condition number: no test (NaN)
CANCELLED = 1e-9  # a lognormal shape component whose SE is below this share of its points' own
# (summed as if independent) is round-off: blind to the seeds (:func:`lognormal_shape`)
ROUNDOFF = 1e-12  # a lognormal sum's round-off allowance relative to sum_i |w_i| (|ybar_i| + |T_i|)
# (float64 sums of ~1e3 terms: ~1e-13); an SE below it is round-off too
# estimators whose z is Student t for normal samples (the premise of the max |z| test at t's
# quantile, and of the signed and shape tests); lognormal's has its own law (read against t's
# quantile its max |z| passed the level in 1.7-5 % of null runs, not 0.27 %: the lower tail,
# s^2 underestimated), which summary reads (:func:`lognormal_lower_p`); the median's is not t
T_ESTIMATORS = ("mean", "logmean")
LOG_SD_GRID = tuple(np.logspace(-2, 3, 26))  # the sds of log X (besides 0 and inf) over which
# :func:`lognormal_rate` takes the largest two-sided rate
LOG_SD = "log_sd"  # the stat of the seeds' sd of log X per point, under lognormal at one width
LOWER_GAMMA = 0.1  # the share of each point's lower-tail level that its sigma bound takes
# (:func:`lognormal_lower_p`): 0.05-0.2 give lower critical z within ~0.1 of each other
# at 16 and 32 seeds, sd of log X 0.1-3, 1e-5 and 0.00135 a point (least near 0.1)
MAX_CORRELATED = 4096  # points (spread evenly) whose correlations give effective_points
# fewer seeds: Hill's estimate with k = sqrt(S) calls 1 % of Gaussian samples heavy at S = 16
# (measured, 20000 samples); 0.02 % at S = 32
MIN_TAIL_SEEDS = 32
# config entries that may differ between datasets of one experiment
RUN_KEYS = ("width", "seeds", "root_seed", "dtype", "sampler")
EXACT_SAMPLERS = ("conditional", "explicit", "torch")  # runs of the net's own weights (a torch
# model's too); "independent" draws fresh backward weights (gradient independence)
MAX_JOINED_POINTS = 1000  # a run joined along sweeps of more points than this: not checked


def check_seeds(fewest: int) -> None:
    """Refuse fewer than two seeds behind a point: no standard error."""
    if fewest < 2:
        raise ConfigError("Monte Carlo seeds", fewest, ">= 2 to estimate a standard error")


def check_no_gaps(mc: xr.Dataset, names) -> None:
    """Refuse a NaN sample where other seeds hold a value, unless its seed is missing from that
    run (NaN at every layer and input of a width or sweep point: a stack's or a join's unequal
    seed counts). ``sp.simulate`` writes no other NaN (its own are at every seed: layer 0's
    branch_q), so such a NaN is an edited or corrupted run, which the estimates would otherwise
    leave out without a word."""
    for name in names:
        gap = mc[name].isnull()
        run = [d for d in gap.dims if d in schema.PER_PAIR]  # one run's samples
        bad = gap & ~gap.all("seed")
        if any(d not in run + ["seed"] for d in gap.dims):  # (width, sweeps: several runs)
            bad = bad & ~gap.all(run)  # (a seed absent from a run)
        if bool(bad.any()):
            at = {d: bad[d].values[i] for d, i in zip(bad.dims, np.argwhere(bad.values)[0])}
            raise ConfigError(f"mc {name}", f"NaN at {', '.join(f'{d} {v}' for d, v in at.items())}"
                              f" ({int(bad.sum())} such samples)", "no NaN where other seeds "
                              "hold a value, but in a seed missing from its whole run (an edited "
                              "or corrupted run: sp.simulate writes none; drop its seeds with "
                              "mc.drop_sel(seed=[...]) or rerun it)")


def estimate(x: xr.DataArray, estimator: str, dim="seed",
             log: xr.DataArray | None = None) -> tuple[xr.DataArray, xr.DataArray]:
    """(estimate, standard error) of one variable over ``dim`` (NaN entries, e.g. the padding of
    unequal seed counts across widths, left out); log scale unless ``mean``, from ``log`` (the
    samples' log companion, finite where x overflowed float64) when given, else log x."""
    y = x if estimator == "mean" else _log(x) if log is None else log
    S = y.notnull().sum(dim)  # (the seeds of the samples read: x's NaN where its log is not)
    check_seeds(int(S.where(S > 0).min().fillna(x.sizes[dim])))  # (all-NaN entries: no data)
    if estimator == "mean":
        return x.mean(dim), x.std(dim, ddof=1) / np.sqrt(S)
    with np.errstate(invalid="ignore"):  # (log 0 = -inf: NaN, which :func:`_zero_seeds` names)
        s = y.std(dim, ddof=1)
    if estimator == "lognormal":
        s2 = s**2
        return y.mean(dim) + s2 / 2, np.sqrt(s2 / S + s2**2 / (2 * (S - 1)))
    if estimator == "logmean":
        return y.mean(dim), s / np.sqrt(S)
    if estimator == "median":
        return y.median(dim), MEDIAN_SE * s / np.sqrt(S)
    raise ConfigError("estimator", estimator, f"one of {ESTIMATORS}")


def spread(x: xr.DataArray, dim="seed") -> tuple[xr.DataArray, xr.DataArray]:
    """(s^2, its standard error) of each sample over ``dim`` (NaN entries left out): Var s^2 =
    s^4 r, r = (k - (S - 3) / (S - 1)) / S (:func:`_spread_parts`; 2 / (S - 1) for a normal
    sample, k = 3; a heavier tail, as corr's near +-1, widens it)."""
    v, r = _spread_parts(x, dim)
    return v, v * np.sqrt(r)


def spread_band(x: xr.DataArray, k: float = 2.0, dim="seed"):
    """(s^2, low, high): the variances sigma^2 whose z against the sample's s^2
    (:func:`_compare_spreads`, Wilson and Hilferty's cube root) is within +-k, s^2 / (1 - c
    +- k sqrt(c))^3, c = r / 9 (:func:`_cube_root_c`); always above 0 (s^2 +- k se went
    below), high inf where 1 - c - k sqrt(c) <= 0 (few seeds, a heavy tail)."""
    v, r = _spread_parts(x, dim)
    c = _cube_root_c(r)
    with np.errstate(divide="ignore"):
        return (v, v / (1 - c + k * np.sqrt(c)) ** 3,
                v / np.maximum(1 - c - k * np.sqrt(c), 0.0) ** 3)


def spread_z(v, sigma2, r):
    """z of a sample variance ``v`` (Var v / sigma^4 = ``r``, :func:`_spread_parts`) against
    the variance ``sigma2``: Wilson and Hilferty's cube root, ((v / sigma^2)^(1/3) - 1 + c) /
    sqrt(c), c = :func:`_cube_root_c`; about standard normal where the sample is."""
    c = _cube_root_c(r)
    return ((v / sigma2) ** (1 / 3) - 1 + c) / np.sqrt(c)


def _cube_root_c(r):
    """Wilson and Hilferty's 2 / (9 nu) for s^2 / sigma^2 ~ chi^2_nu / nu, nu = 2 / r: r / 9."""
    return r / 9


def _spread_parts(x: xr.DataArray, dim="seed"):
    """(s^2, r): the sample variance and Var s^2 / sigma^4 = (k - (S - 3) / (S - 1)) / S, k =
    max(m4 / m2^2, 3), the sample's kurtosis no lower than the normal law's (scale-free: r
    does not move with s^2; a constant sample's k is 3).

    The floor: a sample kurtosis is biased low and noisy at few seeds, and it is largest where
    s^2 is (one far seed raises both), so z read it anti-conservative: at 16 normal seeds
    |z| > 3 at 1.6 % of samples (nominal 0.27 %), 0.8 % at 32. Floored, 0.2 % at 16 and
    32; a heavy tail (t5, chi^2) still widens r (``benchmarks/spread_calibration.py``)."""
    S = x.notnull().sum(dim)
    centred = x - x.mean(dim)
    m2, m4 = (centred**2).mean(dim), (centred**4).mean(dim)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.maximum((m4 / m2**2).fillna(3.0), NORMAL_KURTOSIS)
        return m2 * S / (S - 1), (k - (S - 3) / (S - 1)) / S


def tail_index(x: xr.DataArray, dim="seed") -> xr.DataArray:
    """Hill's estimate of the tail index alpha of each sample over ``dim``.

    On |x - median| (x itself for a positive sample): with the k = ceil(sqrt(S)) largest values
    x_(1) >= ... >= x_(k+1), alpha_hat = k / sum_{i<=k} log(x_(i) / x_(k+1)) (Hill 1975), with
    relative standard error 1/sqrt(k). The variance of the sample mean is finite iff alpha > 2.
    A constant sample gets alpha = inf.
    """
    def hill(a):
        k = int(np.ceil(np.sqrt(max(int(np.isfinite(a).sum(-1).min()), 4))))
        a = np.sort(np.where(np.isfinite(a), a, -np.inf), axis=-1)[..., ::-1]
        top, ref = a[..., :k], a[..., k:k + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.sum(np.log(top / ref), axis=-1)
            return np.where(s > 0, k / s, np.inf)

    centred = xr.where((x > 0).all(dim), x, abs(x - x.median(dim)))  # (per sample)
    return xr.apply_ufunc(hill, centred.transpose(..., dim), input_core_dims=[[dim]])


def infinite_variance(x: xr.DataArray, dim="seed") -> xr.DataArray:
    """True where the sample's tail index is below 2 at one-sided 95 % (see :func:`tail_index`);
    all False below :data:`MIN_TAIL_SEEDS` seeds, where the test is not run."""
    S = int(x.notnull().sum(dim).max())
    if S < MIN_TAIL_SEEDS:
        return xr.zeros_like(x.isel({dim: 0}, drop=True), dtype=bool)
    return tail_index(x, dim) * (1 + TAIL_Z / np.sqrt(np.ceil(np.sqrt(S)))) < 2


def choose(mc: xr.DataArray, name: str, estimator: str = "auto",
           log: xr.DataArray | None = None) -> str:
    """The estimator ``auto`` resolves to for variable ``name`` of Monte Carlo samples ``mc``
    (``log``: their log companion, as :func:`estimate` takes it): a log estimator where log X
    spreads (over the live seeds: a dead net's X is exactly 0), where the tail is heavy, or
    where X overflowed float64 (inf where its log is not). A log estimator has no value where
    some seeds are dead (:func:`compare` names those points not comparable): the mean of such a
    heavy-tailed sample misses its rare large seeds, and would read as a disagreement."""
    if estimator != "auto":
        if estimator not in ESTIMATORS:
            raise ConfigError("estimator", estimator, f"one of {ESTIMATORS}")
        return estimator if name in SCALE_VARIABLES else "mean"
    if name not in SCALE_VARIABLES:
        return "mean"
    y = _log(mc) if log is None else log
    with np.errstate(invalid="ignore"):  # the live seeds' spread (a dead net's log 0 = -inf
        sd = y.where(y > -np.inf).std("seed", ddof=1)  # left out; a sample of exact zeros: NaN)
    heavy = float(sd.max(skipna=True).fillna(0)) > HEAVY_LOG_SD
    overflowed = bool(((mc == np.inf) & np.isfinite(y)).any())
    return "lognormal" if heavy or overflowed or bool(infinite_variance(mc).any()) else "mean"


def _zero_seeds(y: xr.DataArray) -> xr.DataArray:
    """Per sample of log X, whether some seeds but not all are log 0 = -inf (X exactly 0: a
    dead net), where a log estimator has no value."""
    dead = y == -np.inf
    return dead.any("seed") & ~(dead | y.isnull()).all("seed")


def stack_widths(datasets) -> xr.Dataset:
    """Monte Carlo datasets of one experiment at several widths, stacked on a ``width`` dim
    (seed counts may differ: the missing seeds are NaN, which :func:`estimate` leaves out); a
    warning where two share a root seed (their seeds' draws are shared, not independent)."""
    datasets = list(datasets)
    if not datasets or any("seed" not in ds.dims for ds in datasets):
        raise ConfigError("datasets", len(datasets), "Monte Carlo datasets (with a 'seed' dim)")
    for ds in datasets[1:]:
        check_same_experiment(datasets[0], ds)
    widths = [one_width(ds) or 0 for ds in datasets]
    if min(widths) < 1 or len(set(widths)) != len(widths):
        raise ConfigError("widths", widths, "distinct widths, one recorded in each dataset (its "
                          "width attr or a width coordinate of one value)")
    laws = [_weights_law(ds) for ds in datasets]
    if len(set(laws)) > 1:
        raise ConfigError("the runs' samplers", [ds.attrs.get("sampler") for ds in datasets],
                          "one law of the weights at every width: the net's own (conditional, "
                          "explicit, a torch model) or one other sampler's, not mixed (a fit "
                          "over the widths would mix their 1/N terms)")
    roots = [_drawn_root(ds, w) for ds, w in zip(datasets, widths)]
    if None not in roots and len(set(roots)) < len(roots):
        warn(f"the runs at widths {widths} share root seeds ({roots}): the same seeds at two "
             "widths share their random draws, so their estimates are correlated and a fit "
             "over the widths, which takes them as independent, understates its standard "
             "errors; give each width its own root_seed (sigprop.state.rng.width_root_seed, "
             "as a sim's run does)")
    out = xr.concat([(ds.squeeze("width", drop=True) if "width" in ds.dims else
                      ds.drop_vars("width", errors="ignore")).expand_dims(width=[w])
                     for ds, w in zip(datasets, widths)], dim="width", join="outer",
                    combine_attrs="drop_conflicts")
    configs = [_config(ds) for ds in datasets]
    if all(configs):  # (kept, so compare still checks the experiment: it was dropped as a
        # conflict of widths, and compare said 'not checked'); net and inputs are the first
        # run's (checked the same above, however written), a run's own keys lists where they
        # differ (width, seeds, ...)
        keys = dict.fromkeys(k for c in configs for k in c)
        merged = {k: [c.get(k) for c in configs] for k in keys}
        out.attrs["config"] = json.dumps({
            k: v[0] if k in ("net", "inputs") or v.count(v[0]) == len(v) else v
            for k, v in merged.items()})
    return out.assign_attrs(width=json.dumps(widths))


def _weights_law(ds: xr.Dataset) -> str | None:
    """The law of the weights a run drew: "exact" for the net's own (:data:`EXACT_SAMPLERS`),
    else its sampler's name (None where unrecorded)."""
    name = ds.attrs.get("sampler")
    return "exact" if name in EXACT_SAMPLERS else name


def _drawn_root(ds: xr.Dataset, width: int) -> int | None:
    """The root seed a run at ``width`` drew with: its ``root_seed`` attr, or for a sim's run
    (its ``streams`` attr) that width's own (:func:`~sigprop.state.rng.width_root_seed`)."""
    root = ds.attrs.get("root_seed")
    if root is None:
        return None
    return (width_root_seed(int(root), width) if ds.attrs.get("streams") == WIDTH_STREAMS
            else int(root))


def check_same_experiment(a: xr.Dataset, b: xr.Dataset, prefix: bool = False) -> str:
    """Raise ``ConfigError`` naming the difference when the two datasets' ``config`` attrs
    describe different architectures, depths or inputs; return how the check went.

    ``prefix``: ``b``'s blocks may be the first blocks of ``a``'s (a shallower run).
    """
    ca, cb = _config(a), _config(b)
    la, lb = a.sizes.get("layer"), b.sizes.get("layer")
    if ca and cb and all("arch" in c and "net" not in c for c in (ca, cb)):
        return _same_sims(ca, cb, la, lb, prefix)
    if ca is None or cb is None or "net" not in ca or "net" not in cb:
        _same_layers(la, lb, prefix)
        return "not checked: a dataset has no config attr with the net"
    if ca.get("inputs") != cb.get("inputs"):
        diff = {k: (ca["inputs"].get(k), cb["inputs"].get(k))
                for k in sorted(set(ca["inputs"]) | set(cb["inputs"]))
                if ca["inputs"].get(k) != cb["inputs"].get(k)}
        raise ConfigError("inputs differ", diff, "the same sp.Inputs in both datasets")
    nets = {id(a): op_from_dict(ca["net"]), id(b): op_from_dict(cb["net"])}
    joined = {name: list(sweep.values) for x, y in ((a, b), (b, a))  # (a run joined along a
              for name, sweep in sweeps_of(nets[id(x)]).items()  # sweep by xr.concat keeps its
              if name in y.coords and name not in sweeps_of(nets[id(y)])}  # first point's config)
    points = [dict(zip(joined, p)) for p in itertools.product(*joined.values())]
    if len(points) > MAX_JOINED_POINTS:
        return f"not checked: a run joined along {sorted(joined)} ({len(points)} points)"
    errors = []
    for point in points:  # (one, {}, unless joined: its config's point is one of them)
        ba, bb = (layers_of(_selected(x, replace_sweeps(nets[id(x)], {
            k: v for k, v in point.items() if k in sweeps_of(nets[id(x)])}), y))
                  for x, y in ((a, b), (b, a)))
        error = _difference(ba, bb, prefix)
        if error is None:
            return "same architecture, depth and inputs" + (
                "" if len(ba) == len(bb) else f" (Monte Carlo: the first {len(bb)} of "
                f"{len(ba)} blocks)") + (f" (a run joined along {sorted(joined)}: at its "
                                         "config's point)" if joined else "")
        errors.append(error)
    raise errors[0]


def check_role(ds: xr.Dataset, role: str) -> None:
    """ConfigError unless ``ds`` was made for its ``role`` ('theory' or 'mc'): its attrs kind
    where it has one, and a Monte Carlo's seeds distinct (runs joined along 'seed' with the
    same first seed are copies, not a spread: the standard error would be too small)."""
    kinds = THEORY_KINDS if role == "theory" else ("montecarlo",)
    kind = ds.attrs.get("kind")
    if kind is not None and kind not in kinds:
        raise ConfigError(f"{role} attrs kind", kind, f"one of {kinds} (theory: a dataset made "
                          "by sp.theory; mc: one made by sp.simulate)")
    seeds = ds.indexes.get("seed")
    if seeds is not None and seeds.has_duplicates:
        raise ConfigError(f"{role} seeds", f"repeated {list(seeds[seeds.duplicated()].unique())[:5]}",
                          "distinct seeds (runs joined along 'seed' need distinct first_seed "
                          "and one root_seed)")


def _difference(ba: list, bb: list, prefix: bool) -> ConfigError | None:
    """How two nets' blocks differ (``prefix``: ``bb`` may be ``ba``'s first blocks), or None."""
    if len(ba) != len(bb) and not (prefix and len(bb) <= len(ba)):
        return ConfigError("depth", f"{len(ba)} blocks vs {len(bb)}", "the same depth (or "
                           "prefix=True for a Monte Carlo of the theory's first blocks)")
    for i, (x, y) in enumerate(zip(ba, bb)):
        if x != y:
            swept = sorted(set(sweeps_of(x)) ^ set(sweeps_of(y)))
            return ConfigError(f"architecture differs at block {i + 1}",
                               f"{x.tree()}  vs  {y.tree()}", "the same net in both datasets"
                               + (f" (one sweeps {swept}: cut it to the other's value, "
                                  f"theory.sel({swept[0]}=...))" if swept else ""))
    return None


def _compare_spreads(theory: xr.Dataset, mc: xr.Dataset, names, rtol: float) -> xr.Dataset:
    """The spreads ``names`` (:data:`SPREADS`) of a theory at a width against the variance of
    their Monte Carlo variable x across seeds, at the Monte Carlo's width N (the theory's V/W
    times W/N; at each width of a stack, which keeps its ``width`` dim), as :func:`compare`'s
    stats (estimate, stderr, theory, z). s^2 / sigma^2
    is skewed (chi^2 / nu for a normal x), so z is Wilson and Hilferty's: ((s^2 / sigma^2)^(1/3)
    - 1 + 2 / (9 nu)) / sqrt(2 / (9 nu)), sigma^2 = V/N, nu = 2 / r (:func:`_spread_parts`,
    the sample's kurtosis floored at 3; its rates of |z| > 3 on normal, heavy-tailed and real
    nets' samples: ``benchmarks/spread_calibration.py``). Where sigma^2 is below the rounding floor
    rtol^2 (1 + E x^2) (float32: a layer whose x is exact, layer 0, varies by ~1e-17), z =
    (s^2 - sigma^2) / sqrt(se^2 + floor^2)."""
    W = theory.attrs.get("width")
    N = mc["width"] if mc.sizes.get("width", 1) > 1 else one_width(mc)  # (a stack: each width)
    if W is None:
        raise ConfigError("theory", "at infinite width", "sp.theory(net, inputs, width=N): the "
                          f"spreads {names} across nets are its finite-width variables")
    if N is None:
        raise ConfigError("Monte Carlo width", mc.attrs.get("width"), "a run that records its "
                          "width (a width coordinate or attr): a spread is V/N at the run's N")
    sources = {n: spread_source(n) for n in names}
    missing = [n for n in names if n not in theory or sources[n] not in mc]
    if missing:
        forward = json.loads(theory.attrs.get("config", "{}")).get("backward") is False
        backward = [n for n in missing if n in BACKWARD_SPREADS]
        raise ConfigError("variables", missing, "spreads whose variable both datasets hold ("
                          + ", ".join(f"{n}: {sources[n]}" for n in missing) + ")"
                          + ("; the theory ran the forward pass alone: rerun it with "
                             f"backward=True for {', '.join(backward)}"
                             if forward and backward else ""))
    if "width" in mc.coords and "width" not in mc.dims:
        mc = mc.drop_vars("width")
    th, mc, left_out = _align(theory[names], mc[list(dict.fromkeys(sources.values()))])
    check_no_gaps(mc, mc.data_vars)  # (the points compared, as read)
    valued = [n for n in names if bool(th[n].notnull().any())]
    if not valued:  # (it said 'seeds=0': a net with no branch has no branch_q in its run)
        raise ConfigError("variables", names, "spreads the theory has a value of; here "
                          + "; ".join(f"{n}: {no_spread_value(n)}" for n in names))
    seeds = spread_seeds(mc, valued)
    out, attrs = {}, {}
    for name in names:
        x = spread_samples(mc, name)
        with np.errstate(all="ignore"):
            (est, r), ref = _spread_parts(x), th[name] * (float(W) / N)
            floor = rtol**2 * (1 + (x**2).mean("seed"))
            se = est * np.sqrt(r)
            z = xr.where(ref > floor, spread_z(est, ref, r),
                         xr.where(est == ref, 0.0, (est - ref) / np.sqrt(se**2 + floor**2)))
        da = xr.concat([p.broadcast_like(est) for p in (est, se, ref.broadcast_like(est), z)],
                       dim="stat").assign_coords(stat=list(STATS)).transpose("stat", ...)
        lost = int((~np.isfinite(z) & ref.notnull()).sum())
        counted = _counted(z)
        with np.errstate(invalid="ignore"):  # (x's correlations: their variances' are ~rho^2,
            effective = effective_points(x, counted)  # so this errs towards fewer points)
        out[name] = da.assign_attrs(estimator="spread", scale="linear", not_comparable=lost,
                                    effective_points=effective)
        if lost:
            attrs[f"not_comparable_{name}"] = (f"{lost} points where the run's variance is not "
                                               "finite (a seed of inf there; NaN seeds are left "
                                               "out, as a stack's padding: see 'seeds')")
        if name not in valued:
            attrs[f"skipped_{name}"] = f"the theory has no value: {no_spread_value(name)}"
    return xr.Dataset(out, attrs={
        "kind": "comparison", "seeds": seeds, "rtol": rtol,
        "finite_width": f"spreads at the run's {'widths' if np.ndim(N) else 'width'} N = "
                        f"{np.asarray(N).tolist()}: the "
                        f"theory's V/{W} times {W}/N, its leading order (an O(1/N^2) remainder "
                        "shows in z where N is small)",
        **attrs, **{f"estimator_{n}": f"spread: {SPREAD_ESTIMATOR}" for n in names},
        **({"left_out": left_out} if left_out else {})})


def spread_seeds(mc: xr.Dataset, names) -> int:
    """The fewest seeds behind a point of the spreads ``names``' Monte Carlo variables (a
    stack's NaN padding is no seed); a ConfigError below ``MIN_SPREAD_SEEDS``."""
    sources = list(dict.fromkeys(spread_source(n) for n in names))
    counts = mc[sources].notnull().sum("seed").to_array()
    seeds = int(counts.where(counts > 0).min().fillna(0))
    if seeds < MIN_SPREAD_SEEDS:
        raise ConfigError("Monte Carlo seeds", seeds, f">= {MIN_SPREAD_SEEDS} for a spread (its "
                          "standard error reads the sample's fourth moment)")
    return seeds


def no_spread_value(name: str) -> str:
    """Why a theory at a width has no value of the spread ``name`` anywhere."""
    return ("the net has no residual branch" if name == "var_log_branch_q" else
            "an op of the net has no finite-width rule (the theory's FiniteWidthWarning names it)")


def spread_source(name: str) -> str:
    """The Monte Carlo variable a spread is the variance of: X, or X's log companion (log_q)
    for Var log X where X has one (var has none: its log is taken)."""
    x, log = SPREADS[name]
    return f"log_{x}" if log and f"log_{x}" in schema.VARIABLES else x


def spread_samples(mc: xr.Dataset, name: str) -> xr.DataArray:
    """The per-seed values whose variance across seeds the spread ``name`` predicts."""
    source = spread_source(name)
    return _log(mc[source]) if SPREADS[name][1] and source == SPREADS[name][0] else mc[source]


def _depths(theory: xr.Dataset, mc: xr.Dataset) -> tuple:
    """The nets' depths (prefix=True: a shallower run), by their configs where both say (a
    layer cut, theory.isel(layer=[2, 3]), is no depth: it was taken for one): their nets, or
    a sim's profile depth and the run's mc_depth; else by their layer dims."""
    configs = [_config(theory) or {}, _config(mc) or {}]
    if all(c.get("net") for c in configs):
        return tuple(len(layers_of(op_from_dict(c["net"]))) for c in configs)
    if all("arch" in c for c in configs):
        return _sim_depth(configs[0]), _sim_depth(configs[1], run=True)
    return theory.sizes.get("layer", 0) - 1, mc.sizes.get("layer", 0) - 1


def _sim_depth(cfg: dict, run: bool = False):
    """A sim config's profile depth L (``run``: its Monte Carlo's, mc_depth where set)."""
    profile = cfg.get("profiles", {}).get(cfg.get("profile"), {})
    return (run and profile.get("mc_depth")) or profile.get("depth")


def _selected(ds: xr.Dataset, net, other: xr.Dataset):
    """``net`` (the dataset's), each sweep the dataset was cut to one value of
    (``ds.sel(alpha=0.5)``: a scalar coordinate; ``ds.isel(alpha=[1])``: a dim of one value)
    replaced by that value; a sweep it still has
    whole, by the value ``other`` was cut to (the grids are then aligned, or a sweep left
    whole named, by :func:`compare`)."""
    cut = [{n: d[n].values.item() for n in d.coords if d[n].size == 1} for d in (other, ds)]
    values = {**cut[0], **cut[1]}
    return replace_sweeps(net, {name: values[name] for name in sweeps_of(net) if name in values})


def _names(variables) -> list[str]:
    """``variables`` as a list of known names (one name may be a string), or a ConfigError
    (an unknown name was dropped without a word where another was known)."""
    allowed = f"names of {VARIABLES} or of the spreads {tuple(SPREADS)}"
    try:
        names = [variables] if isinstance(variables, str) else list(dict.fromkeys(variables))
    except TypeError:
        raise ConfigError("variables", variables, f"a name or a list of {allowed}") from None
    unknown = [v for v in names if not isinstance(v, str) or v not in schema.VARIABLES
               and v not in SPREADS]  # (a log companion: refused below, with its estimator)
    if unknown or not names:
        raise ConfigError("variables", unknown or names, allowed)
    return names


def compare(theory: xr.Dataset, mc: xr.Dataset, variables=None, estimator: str = "auto",
            rtol: float = 1e-5, prefix: bool = False) -> xr.Dataset:
    """Per variable and layer: estimate, standard error, theory value, z-score (and, with two
    or more widths, the width-extrapolated estimate and the fitted finite-width coefficient).

    ``theory`` has no ``seed`` dim; ``mc`` has one. They are aligned on their shared dims
    (layer, input, sweeps, arch, ...; inner join); a ``width`` dim of ``mc`` is extrapolated
    away (see the module docstring). Each output variable has a leading dim ``stat`` =
    (estimate, stderr, theory, z; also log_sd where a variable is lognormal at one width, NaN
    for the others; a, a_stderr and a_theory over several widths); its attrs and the dataset's
    attrs name the estimator, the finite-width treatment and the points that are not
    comparable.
    ``variables`` may also name spreads of a theory at a width (:data:`SPREADS`: var_log_q,
    var_corr, ...), compared with the run's variance across seeds (:func:`_compare_spreads`).
    A BatchNorm net's theory at the run's width compares grad_q under ``estimator="logmean"``
    with its ``typical_log_grad_q`` (E log grad_q at that width), where the 1/N expansion has
    no term.
    """
    for role, ds in (("theory", theory), ("mc", mc)):
        if not isinstance(ds, xr.Dataset):
            raise ConfigError(role, type(ds).__name__, "an xarray.Dataset (sp.theory, "
                              "sp.simulate or sp.load)")
    if "seed" in theory.dims:  # (first: a swapped pair is told so, not that mc has no seed)
        raise ConfigError("theory dims", tuple(theory.dims), "no 'seed' dim (pass theory first)")
    if "seed" not in mc.dims:
        raise ConfigError("mc dims", tuple(mc.dims), "a Monte Carlo dataset with a 'seed' dim")
    check_role(theory, "theory")
    check_role(mc, "mc")
    check_seeds(mc.sizes.get("seed", 0))  # (none: every variable was then "not measured")
    if estimator not in ESTIMATORS:
        raise ConfigError("estimator", estimator, f"one of {ESTIMATORS}")
    if not isinstance(rtol, numbers.Real) or isinstance(rtol, bool) or not 0 <= rtol < math.inf:
        raise ConfigError("rtol", rtol, "a finite number >= 0 (the relative rounding floor)")
    W = theory.attrs.get("width")
    if W is not None and (not isinstance(W, (int, np.integer)) or W < 1):
        raise ConfigError("theory attrs width", W, "a width N >= 1 (sp.theory(..., width=N)), "
                          "or none for infinite width")
    variables = None if variables is None else _names(variables)
    made = _made(theory, mc, {"variables": variables, "estimator": estimator,  # (the call's)
                              "rtol": float(rtol), "prefix": bool(prefix)})
    same = check_same_experiment(theory, mc, prefix)
    spreads = [v for v in variables or () if v in SPREADS]
    if spreads:
        skipped = {}
        for name in [n for n in spreads if n in BACKWARD_SPREADS]:
            if len(set(_depths(theory, mc))) > 1:  # (prefix=True: as grad_q)
                spreads.remove(name)
                skipped[name] = ("the gradient at layer l depends on the depth above l: "
                                 "theory and Monte Carlo differ in depth")
        out = _compare_spreads(theory, mc, spreads, rtol) if spreads else xr.Dataset()
        out.attrs.update({"experiment": same, **{f"skipped_{k}": v for k, v in skipped.items()}})
        rest = [v for v in variables if v not in SPREADS]
        if rest:
            main = compare(theory, mc, rest, estimator, rtol, prefix)
            note = "; ".join(filter(None, (main.attrs["finite_width"],
                                           out.attrs.get("finite_width"))))
            out = xr.merge([main, out], join="outer", compat="no_conflicts",
                           combine_attrs="override").assign_attrs({**out.attrs, **main.attrs,
                                                                   "finite_width": note})
        if not out.data_vars:
            raise ConfigError("variables", variables, f"some comparable: {skipped}")
        return out.assign_attrs(made)
    companions = {v: schema.VARIABLES[v].log_of for v in variables or ()
                  if v in schema.VARIABLES and schema.VARIABLES[v].log_of}
    if companions:
        raise ConfigError("variables", sorted(companions), "variables of their own scale: "
                          + ", ".join(f"{v} is compared as {x} with estimator='logmean' (E log "
                                      f"{x}, with its first-order term at a width)"
                                      for v, x in companions.items()))
    names = [v for v in (variables or VARIABLES) if v in theory and v in mc]
    forward_only = json.loads(theory.attrs.get("config", "{}")).get("backward") is False
    skipped = {name: "the theory ran the forward pass alone (sp.theory(..., backward=False)); "
               "rerun it with backward=True" for name in (variables or VARIABLES)
               if forward_only and name in BACKWARD_VARIABLES and name in mc}
    for name in [n for n in names if bool(mc[n].isnull().all())]:
        names.remove(name)  # (from_torch's weight_grad_q: not measured)
        skipped[name] = "the Monte Carlo dataset has no value of it (not measured)"
    depth, mc_depth = _depths(theory, mc)  # (each rebuilds the two nets from their configs)
    if depth != mc_depth:
        for name in [n for n in names if n in BACKWARD_VARIABLES]:
            names.remove(name)
            skipped[name] = (f"the gradient at layer l depends on the depth above l: theory "
                             f"has {depth} blocks, Monte Carlo {mc_depth}")
    if not names:
        raise ConfigError("variables", variables, f"some of {VARIABLES} present in both datasets"
                          f", or a spread of a theory at a width ({tuple(SPREADS)})"
                          + (f" (skipped: {skipped})" if skipped else ""))
    terms = [v for name in names for v in FIRST_ORDER.get(name, ()) if v in theory]
    terms += [v for name in names if TYPICAL.get(name) in theory
              for v in (TYPICAL[name], schema.LOG_NAME[name]) if v in theory and v not in terms]
    mc_width = one_width(mc)
    if "width" in mc.coords and "width" not in mc.dims:  # (a stack cut to one width: read)
        mc = mc.drop_vars("width")
    units = ["q"] if "mean" in names and "q" in theory and "q" not in names + terms else []
    logs = {n: schema.LOG_NAME[n] for n in names  # log q where q overflows: from log_q
            if schema.LOG_NAME.get(n) in theory and schema.LOG_NAME.get(n) in mc}
    th, mc, left_out = _align(theory[names + terms + units + list(logs.values())],
                    mc[names + list(logs.values())])
    check_no_gaps(mc, mc.data_vars)  # (the points compared, as read: x and its log)
    widths = [int(w) for w in mc["width"].values] if "width" in mc.dims else []
    independent = mc.attrs.get("sampler") == "independent"
    out, attrs, corrected = {}, {}, []
    for name in names:
        log = mc[logs[name]] if name in logs else None
        est_name = choose(mc[name], name, estimator, log)
        est, se = estimate(mc[name], est_name, log=log)
        ref = th[name] if est_name == "mean" else th[logs[name]] if name in logs \
            else _log(th[name])
        heavy = (infinite_variance(mc[name]) if est_name == "mean" and name not in BOUNDED
                 else xr.zeros_like(est, bool))
        samples = mc[name] if est_name == "mean" else _log(mc[name]) if log is None else log
        zeros = xr.zeros_like(est, bool) if est_name == "mean" else _zero_seeds(samples)
        term = first_order(th, name, est_name, mc_width or 1)
        if _typical_used(th, name, est_name, mc_width):
            attrs[f"typical_{name}"] = (
                f"E log {name} at N = {mc_width} is the theory's {TYPICAL[name]} where its 1/N "
                "expansion has no term (a BatchNorm)")
        elif _typical_elsewhere(th, name, est_name, mc_width):
            attrs[f"typical_not_used_{name}"] = (
                f"{TYPICAL[name]} is E log {name} at the theory's width "
                f"{theory.attrs['width']} itself, not a 1/N term to carry to the run's width "
                f"{mc_width}: compared with T_inf; run sp.theory(..., width={mc_width})")
        if term is not None and name in BACKWARD_VARIABLES and independent:
            # (the theory's 1/N term is the exact weights' coupling, which the run drops; a
            # BatchNorm's E log at N is the batch's, which it keeps: the typical value stays)
            typical = _typical_used(th, name, est_name, mc_width)
            term = term.where(th[FIRST_ORDER[name][0]].isnull()) if typical else None
            attrs[f"first_order_missing_{name}"] = (
                "the run drew fresh backward weights (sampler='independent'), whose O(1/N) term "
                "is not the theory's (that of the net's own weights): compared with T_inf"
                + (f" where it has one ({TYPICAL[name]} kept: the batch's, not the weights')"
                   if typical else ""))
        if term is not None and mc_width:
            ref = ref + term.fillna(0.0)
            missing = int((term.isnull() & th[name].notnull()).sum())  # (no rule; not no value)
            if missing < int(th[name].notnull().sum()):
                corrected.append(name)
            if missing:
                attrs[f"first_order_missing_{name}"] = (
                    f"{missing} points where the theory has no first-order term (NaN: an op with "
                    "no finite-width rule, see its warning): compared with T_inf there")
        unit = _unit(th, name, ref) if est_name == "mean" else xr.ones_like(ref)
        floor = rtol * unit
        # equal: z = 0, unless both overflowed (inf = inf says nothing; log -inf is an exact 0);
        # so too within the rounding floor with no spread above it (the inputs at layer 0); with
        # several widths, equal at each (the extrapolated T_inf's standard error is never 0)
        rounding = (se <= floor) & (abs(est - ref) <= floor)
        equal = ((est == ref) | rounding) & (np.isfinite(est)
                                             | ((est == -np.inf) & (est_name != "mean")))
        fit = None
        if len(widths) >= 2:
            fit = extrapolate(est, se, floor)
            est, se = fit["T_inf"], fit["T_inf_stderr"]
        heavy, zeros = (v.any("width") if "width" in v.dims else v for v in (heavy, zeros))
        if "width" in equal.dims:
            equal = equal.all("width")
        heavy, zeros = heavy & ~equal, zeros & ~equal  # (an exact point is compared)
        est, se = (v.squeeze("width", drop=True) if "width" in v.dims else v for v in (est, se))
        scale = np.sqrt(se**2 + floor**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = xr.where(equal, 0.0, (est - ref) / scale).where(~(heavy | zeros))
        parts, stat = [est, se, ref.broadcast_like(est), z], list(STATS)
        if est_name == "lognormal" and fit is None:  # (summary's bound on each point's sigma)
            with np.errstate(invalid="ignore"):
                sd = samples.std("seed", ddof=1)
            parts.append(sd.squeeze("width", drop=True) if "width" in sd.dims else sd)
            stat.append(LOG_SD)
        if fit is not None:
            parts += [fit["a"], fit["a_stderr"]]
            stat += FIT_STATS
            if "width" in theory.attrs:  # (NaN for a variable it has no term for)
                parts.append(xr.full_like(est, np.nan) if term is None else term)
                stat.append(THEORY_A)
        da = xr.concat([p.broadcast_like(est) for p in parts], dim="stat")
        out[name] = da.assign_coords(stat=stat)
        out[name] = out[name].transpose("stat", ...)
        n_heavy, n_zeros = int(heavy.sum()), int(zeros.sum())
        counted = _counted(z)
        with np.errstate(divide="ignore"):
            weight = xr.where(unit > 0, 1 / unit, 0.0)
        signed, signed_seeds, signed_sd, mde, shape_p, shape_k = (math.nan, 0, math.nan,
                                                                  math.nan, math.nan, 0)
        if len(widths) < 2 and est_name in T_ESTIMATORS:  # (a stack's T_inf is not per seed)
            signed, signed_seeds = signed_t(samples, ref, weight, counted, rtol)
            mde = signed_mde(samples, ref, weight, counted)
            shape_p, shape_k = shape_test(samples, ref, weight, counted, rtol)
        elif len(widths) < 2 and est_name == "lognormal":
            y, T, w, layer = _lognormal_rows(samples, ref, weight, counted)  # (once: both
            parts = _lognormal_parts(y, T, w)  # tests read these rows)
            signed, signed_seeds, signed_sd = _lognormal_z(parts, rtol)
            mde = lognormal_signed_mde(parts)
            shape_z, shape_sd = _shape_components(y, T, w, layer, rtol)
            shape_k = len(shape_z)
            shape_p = lognormal_shape_p(shape_z, shape_sd, signed_seeds)
        out[name].attrs = {"estimator": est_name, "scale": "linear" if est_name == "mean" else "log",
                           "not_comparable": n_heavy + n_zeros,
                           "effective_points": effective_points(samples, counted),
                           "signed_t": signed, "signed_seeds": signed_seeds,
                           "signed_mde": mde, "signed_log_sd": signed_sd,
                           **({"shape_z": shape_z, "shape_log_sd": shape_sd}
                              if est_name == "lognormal" and shape_k else {}),
                           "shape_p": shape_p, "shape_degree": shape_k}
        attrs[f"estimator_{name}"] = f"{est_name}: {DESCRIPTION[est_name]}"
        unmeasured = int((z.isnull() & ref.notnull() & ~(heavy | zeros)).sum())
        if unmeasured:  # (from_torch's layers with no node of their own: NaN at every seed)
            attrs[f"unmeasured_{name}"] = (f"{unmeasured} points where the theory has a value "
                                           "and the run has none (NaN at every seed): z = NaN, "
                                           "not counted")
        if n_heavy:
            attrs[f"not_comparable_{name}"] = (
                f"{n_heavy} points whose per-seed sample has tail index < 2 (infinite variance): "
                "the sample mean has no standard error there; z = NaN")
        if n_zeros:
            attrs[f"not_comparable_{name}"] = (
                f"{n_zeros} points where some seeds are exactly 0 (dead nets), whose log is "
                f"-inf: the {est_name} estimator has no value there, and the mean of so "
                "heavy-tailed a sample misses its rare large seeds (more seeds or a wider net "
                "help); z = NaN")
    if any(LOG_SD in da["stat"] for da in out.values()):  # every variable gets the stat (NaN
        # where it has none): xarray's union of unequal stat coordinates would sort them
        out = {name: da if LOG_SD in da["stat"] else
               da.reindex(stat=[*da["stat"].values, LOG_SD]) for name, da in out.items()}
    ds = xr.Dataset(out)
    # seeds behind each point; a point no case computed (a per-arch sweep's padding) has none
    per_point = mc[names[0]].notnull().sum("seed")
    seeds = int(per_point.where(per_point > 0).min().fillna(mc["seed"].size))
    ds.attrs = {**made, "seeds": seeds, "rtol": rtol, "experiment": same,
                "z": "(estimate - theory) / sqrt(stderr^2 + floor^2), floor = rtol * |theory| "
                     "(linear scale; at least rtol for corr, rtol sqrt(q) for mean) or rtol "
                     "(log scale)",
                "finite_width": _finite_width_note(widths, mc_width, corrected,
                                                   theory.attrs.get("width")),
                "tails": ("Hill tail index per sample; variance called infinite where its upper "
                          "95 % bound is < 2" if seeds >= MIN_TAIL_SEEDS else
                          f"tail index not estimated (fewer than {MIN_TAIL_SEEDS} seeds)"), **attrs,
                **{f"skipped_{k}": v for k, v in skipped.items()},
                **({"left_out": left_out} if left_out else {})}
    return ds


def _made(theory: xr.Dataset, mc: xr.Dataset, call: dict) -> dict:
    """A comparison's provenance: kind, the call's arguments as its config, versions, commit,
    time, and its inputs' creation times and commits."""
    return make_attrs("comparison", call, "numpy", **{
        f"{role}_{key}": ds.attrs.get(key) for role, ds in (("theory", theory), ("mc", mc))
        for key in ("created_at", "git_commit")})


def _pairs(da: xr.DataArray):
    """Where an entry is one point: a pair of inputs (a, b) once, a < b (corr's (b, a) is the
    same value, its diagonal exact); True for a variable per input."""
    return (da["input"] < da["input_b"]) if "input_b" in da.dims else True


def _counted(z: xr.DataArray) -> xr.DataArray:
    """The points :func:`summary` counts: a finite z, not 0 (an exact point), a pair once."""
    return np.isfinite(z) & (z != 0) & _pairs(z)


def signed_t(samples: xr.DataArray, ref: xr.DataArray, weight: xr.DataArray,
             counted: xr.DataArray, floor: float = 0.0) -> tuple[float, int]:
    """(t, S') of one t-test of the counted points' deviations together: u_s = sum_i w_i (x_is
    - T_i) per seed s (x the per-seed samples on the estimator's scale, T the theory), whose
    spread across seeds carries every correlation between the points, so that t = mean u /
    (sd u / sqrt(S')) is Student t with S' - 1 dof under the null for normal samples (S' the
    seeds finite at every counted point; NaN with fewer than 3). The weights w must not come
    from the seeds: 1 / se_i, the seeds' own, made t anti-conservative at few seeds (its
    variance w^T Sigma w / w^T Sigma_hat w: benchmarks/RESULTS.md, "a signed test of the points
    together"); :func:`compare` takes 1 / |T| (:func:`_unit`) on the linear scale
    and 1 on the log scale. ``floor``: the weighted rounding w_i floor_i each point may differ
    by (rtol, as z allows it), taken off |mean u| first, so that a bias within rounding is no
    deviation. It finds a deviation of one sign spread over points that a max or a rate of |z|
    misses (a theory a few % off over correlated layers, each ~2 se); with one point and no
    floor it is that point's t. Every seed's sum the same (no spread): infinite past the floor
    (no spread explains it), NaN within."""
    u = _seed_sums(samples, ref, weight, counted)[:, 0]
    if len(u) < 3 or not counted.any():
        return math.nan, len(u)
    sd, m = u.std(ddof=1), u.mean()
    m = math.copysign(max(abs(m) - floor * int(counted.sum()), 0.0), m)
    if not sd > 0:
        return (math.copysign(math.inf, m) if m else math.nan), len(u)
    return float(m / (sd / math.sqrt(len(u)))), len(u)


def signed_mde(samples: xr.DataArray, ref: xr.DataArray, weight: xr.DataArray,
               counted: xr.DataArray, level: float = FAMILY_LEVEL,
               power: float = MDE_POWER) -> float:
    """The smallest error common to the n counted points, in units of 1 / w (relative to the
    theory on the linear scale, absolute on the log scale), that :func:`signed_t` finds at
    ``level`` with probability ``power``: lambda sd(u) / (sqrt(S') n), lambda the noncentrality
    at which |t| (noncentral t, S' - 1 dof) passes the two-sided quantile with that
    probability, sd(u) from the same per-seed sums (the seeds' estimate of it). NaN where the
    signed test has none."""
    u = _seed_sums(samples, ref, weight, counted)[:, 0]
    n = int(counted.sum())
    if len(u) < 3 or n == 0:
        return math.nan
    return float(_noncentrality(len(u) - 1, level, power) * u.std(ddof=1)
                 / (math.sqrt(len(u)) * n))


def lognormal_signed(samples: xr.DataArray, ref: xr.DataArray, weight: xr.DataArray,
                     counted: xr.DataArray, floor: float = 0.0) -> tuple[float, int, float]:
    """(z, S', sigma_eff) of the ``lognormal`` estimator's signed test: the counted points'
    weighted deviations m_i - T_i together, m_i = ybar_i + s_i^2 / 2 (y = log X, over the S'
    seeds finite at every counted point), z = sum_i w_i (m_i - T_i) / SE with Cox's variance of
    the sum, SE^2 = w^T S w / S' + sum_ij w_i w_j S_ij^2 / (2 (S' - 1)) (S the seeds' covariance
    of y across points: ybar and the s_ij are independent for normal y, Cov(s_i^2, s_j^2) = 2
    S_ij^2 / (S' - 1)), from S' x S' products: with D the centred seeds, w^T S w = |D w|^2 /
    (S' - 1) and sum w w S^2 = |D diag(w) D^T|_F^2 / (S' - 1)^2. The sample's S_ij^2 is biased
    up by S_ii S_jj / (S' - 1) at every pair (at n independent points the sum's square term
    ~n / (S' - 1) times its value, z shrunk toward 0): the sum taken is (S' - 1) / (S' - 2)
    (sum w w S^2 - (sum w_i S_ii)^2 / (S' - 1)), >= 0, the plug-in's for one point and for
    points moving as one (S_ij^2 = S_ii S_jj), and at independent points as biased as one
    point's s^4. One point: that point's z.
    Points moving as one (y_i = mu_i + a_i e): z is exactly one point's z at sd sigma_eff =
    (sum w a^2 / sum w a) sd(e), whose law :func:`lognormal_tails` gives (w > 0: with weights
    of mixed sign sum w a^2 < 0 swaps z's tails); sigma_eff^2, that square sum over w^T S w,
    estimates it in general, and :func:`summary` reads z's lower tail at a
    confidence bound on it (:func:`lognormal_lower_p`), its upper tail against Student t's
    (the upper tail's sup over sigma). Points that do not move as one average the s^2 terms'
    skew away: their z comes nearer normal (benchmarks/RESULTS.md, "the lognormal estimator's
    signed test"). ``floor``: as :func:`signed_t`'s. NaN with fewer than 3 seeds; with no
    spread along w, infinite past the floor and round-off, NaN within (:func:`_lognormal_z`)."""
    y, T, w, _ = _lognormal_rows(samples, ref, weight, counted)
    return _lognormal_z(_lognormal_parts(y, T, w), floor)


def _lognormal_z(parts, floor: float = 0.0) -> tuple[float, int, float]:
    """:func:`lognormal_signed`'s (z, S', sigma_eff) from :func:`_lognormal_parts`: |sum| less
    ``floor`` sum_i |w_i|, over SE. Where the seeds do not spread along the weights (SE
    round-off: ``blind``), no spread explains a deviation: z is infinite where |sum| passes
    that floor and its round-off, NaN (left out) within them."""
    beyond = max(abs(parts.dev) - floor * parts.size, 0.0)
    if math.isnan(parts.se):
        return math.nan, parts.seeds, math.nan
    if parts.blind:
        z = math.copysign(math.inf, parts.dev) if beyond > parts.roundoff else math.nan
        return z, parts.seeds, math.nan
    return math.copysign(beyond, parts.dev) / parts.se, parts.seeds, parts.sigma


def lognormal_signed_mde(parts, level: float = FAMILY_LEVEL, power: float = MDE_POWER) -> float:
    """:func:`signed_mde` for :func:`lognormal_signed`, from :func:`_lognormal_parts`: rho SE /
    n, rho :func:`lognormal_mde_shift` at S' and sigma_eff."""
    if parts.blind or math.isnan(parts.se) or math.isnan(parts.sigma):
        return math.nan
    return lognormal_mde_shift(parts.seeds, parts.sigma, level, power) * parts.se / parts.n


def lognormal_mde_shift(seeds: int, sigma: float, level: float = FAMILY_LEVEL,
                        power: float = MDE_POWER) -> float:
    """rho, the shift (in Cox SEs) at which the signed test's z, by its one-factor law at sd
    ``sigma`` (:func:`lognormal_tails`), passes its critical values
    (:func:`lognormal_signed_crits`) with probability ``power``; the larger rho of the two
    directions (the theory too low, too high: the law's tails differ), to 1 %. Each direction
    counts its own tail alone (the other adds less than level / 2 to the power: rho is at most
    that much high)."""
    up, low = lognormal_signed_crits(seeds, sigma, level)
    law = min(sigma, 1e6)  # (the shifted law needs a finite sigma, sigma^2 below overflow; at
    # 1e6 it is the sigma -> inf law's to ~1e-9 in rho)

    def short(rho, sign):  # (its tail's power at a shift of sign rho SEs, less ``power``)
        tails = lognormal_tails(up if sign > 0 else low, seeds, law, sign * rho, sides=(sign,))
        return tails[0 if sign > 0 else 1] - power

    rhos = []
    for sign in (1, -1):
        hi = 2.0
        while short(hi, sign) < 0:  # (the power rises to 1 with |rho|)
            hi *= 2
        rhos.append(optimize.brentq(short, 0.0, hi, args=(sign,), rtol=1e-2))
    return max(rhos)


def _lognormal_rows(samples, ref, weight, counted):
    """(y, T, w, layer): the samples at the counted points (a column each; the rows: the seeds
    finite at every one), and their theory, weight and layer, in float64 (float32 samples'
    sums in float32 leave a shape component blind to the seeds a round-off SE past
    CANCELLED). The theory, weights and mask are broadcast against one seed's points only
    (not copied per seed)."""
    if "width" in samples.dims:
        samples = samples.squeeze("width", drop=True)
    first, T, w, keep = xr.broadcast(samples.isel(seed=0, drop=True), ref, weight, counted)
    dims = first.dims
    keep = keep.transpose(*dims).values.ravel().astype(bool)
    layer = (first["layer"].broadcast_like(first).transpose(*dims).values.ravel()[keep]
             if "layer" in first.dims else None)
    T, w = (v.transpose(*dims).values.ravel()[keep].astype(np.float64) for v in (T, w))
    y = samples.broadcast_like(first).transpose("seed", *dims).values
    y = y.reshape(len(y), -1)[:, keep].astype(np.float64)
    return y[np.isfinite(y).all(axis=1)], T, w, layer


class _Parts(NamedTuple):
    """:func:`_lognormal_parts`: the sum, its SE (NaN with fewer than 3 seeds or no point),
    S', n, sigma_eff; sum_i |w_i|; whether the SE is round-off (below :data:`CANCELLED` of the
    points' own Cox SEs summed as if independent, or below the sum's round-off allowance: the
    seeds do not spread along w); that allowance, :data:`ROUNDOFF` sum_i |w_i| (|ybar_i| +
    |T_i|)."""

    dev: float
    se: float
    seeds: int
    n: int
    sigma: float
    size: float
    blind: bool
    roundoff: float


def _lognormal_parts(y, T, w) -> _Parts:
    """The sum sum_i w_i (m_i - T_i) of :func:`lognormal_signed` and what its tests read
    (:class:`_Parts`), from the rows ``y`` (seeds x points), theory T and weights w."""
    S, n = y.shape
    size = float(np.abs(w).sum())
    if S < 3 or n == 0:
        return _Parts(math.nan, math.nan, S, n, math.nan, size, False, math.nan)
    ybar = y.mean(axis=0)
    D = y - ybar
    v = (D**2).sum(axis=0) / (S - 1)
    m = ybar + v / 2
    a = D @ w
    linear = float(a @ a) / (S - 1)  # w^T S w
    nu, M = S - 1, (D * w) @ D.T  # D diag(w) D^T: sum w w S^2 = |M|^2 / nu^2, sum w S_ii = tr M / nu
    # sum_ij w_i w_j S_ij^2 less the pairs' bias S_ii S_jj / nu, scaled to equal it for one
    # point and for points moving as one (S_ij^2 = S_ii S_jj); >= 0 (Cauchy-Schwarz over M's
    # at most nu nonzero eigenvalues)
    square = max(float(np.sum(M**2)) - float(np.trace(M)) ** 2 / nu, 0.0) / ((nu - 1) * nu)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = math.sqrt(square / linear) if linear > 0 else math.nan
    se = math.sqrt(linear / S + square / (2 * (S - 1)))
    own = float((w**2) @ (v / S + v**2 / (2 * (S - 1))))  # (each point's Cox variance)
    roundoff = ROUNDOFF * float(np.abs(w) @ (np.abs(ybar) + np.abs(T)))
    return _Parts(float(w @ (m - T)), se, S, n, sigma, size,
                  not se > max(CANCELLED * math.sqrt(own), roundoff), roundoff)


def lognormal_shape(samples: xr.DataArray, ref: xr.DataArray, weight: xr.DataArray,
                    counted: xr.DataArray, floor: float = 0.0) -> tuple[list, list, int]:
    """(z_j, sigma_j, S') for j = 1..k of the ``lognormal`` estimator's shape test: the
    signed test's z (:func:`lognormal_signed`) of the points weighted by w_i P_j(t_i), P_j the
    Legendre polynomials of :func:`shape_test` (made orthogonal to a uniform offset over the
    counted points, so that the signed test's deviation moves none of them), each with its
    own sigma_eff. Points moving as one give each z_j exactly one point's z at sigma_eff, up to
    its sign: with weights of both signs sum w P_j a^2 may be negative, which swaps the tails,
    so :func:`lognormal_shape_p` reads each |z_j| by the heavier, lower tail. ``floor``: each
    |sum| less floor sum_i |w_i P_j(t_i)|. A component blind to the seeds (its SE round-off:
    :class:`_Parts`) is left out, unless its sum passes its floor by more than its round-off:
    z_j is then infinite (no spread of the seeds explains it; p 0). Empty where there is no
    layer dim, fewer than 2 counted layers or 3 seeds."""
    y, T, w, layer = _lognormal_rows(samples, ref, weight, counted)
    return (*_shape_components(y, T, w, layer, floor), len(y))


def _shape_components(y, T, w, layer, floor: float = 0.0) -> tuple[list, list]:
    """:func:`lognormal_shape`'s (z_j, sigma_j) from the rows of :func:`_lognormal_rows`."""
    if layer is None or len(y) < 3:
        return [], []
    used, per_layer = np.unique(layer, return_counts=True)
    k = min(SHAPE_DEGREE, len(used) - 1, len(y) - 2)
    if k < 1:
        return [], []
    t = 2 * (used - used.min()) / (used.max() - used.min()) - 1
    P = np.stack([np.polynomial.legendre.Legendre.basis(j)(t) for j in range(k + 1)])
    P = _orthogonal(P, per_layer)[1:][:, np.searchsorted(used, layer)]  # (k, points)
    zs, sigmas = [], []
    for Pj in P:  # (a component blind to the seeds, as P_2 and P_3 are to points moving as
        # one with a linear sd: its z infinite past its floor and round-off, else left out)
        z, _, sigma = _lognormal_z(_lognormal_parts(y, T, w * Pj), floor)
        if not math.isnan(z):
            zs.append(z)
            sigmas.append(sigma)
    return zs, sigmas


def lognormal_shape_p(zs, sigmas, seeds: int, level: float = FAMILY_LEVEL) -> float:
    """The p of :func:`lognormal_shape`'s k components together: min(1, k min_j 2 p_j), p_j
    the lower tail's p of -|z_j| (:func:`lognormal_lower_p`, at the bound on sigma_j, gamma =
    LOWER_GAMMA level / (2 k)): each tail of z_j is below the lower tail at sigma's bound (the
    upper stays below Student t's, which the lower never falls under), and Bonferroni over the
    components; 0 where one is infinite. NaN where there is none."""
    k = len(zs)
    if any(math.isinf(z) for z in zs):  # (a deviation where the seeds do not spread)
        return 0.0
    ps = [2 * lognormal_lower_p(-abs(z), seeds, s, LOWER_GAMMA * level / (2 * k))
          for z, s in zip(zs, sigmas) if np.isfinite(z)]
    return min(1.0, k * min(ps)) if ps else math.nan


def lognormal_signed_flag(z: float, seeds: int, sigma: float,
                          level: float = FAMILY_LEVEL) -> bool:
    """Whether :func:`lognormal_signed`'s z passes its two-sided ``level``: above Student t's
    upper level / 2 quantile, or below minus it with :func:`lognormal_lower_p` (at the bound
    on ``sigma``, gamma = LOWER_GAMMA level / 2) under level / 2. NaN: False."""
    alpha = level / 2
    upper = float(stats.t.isf(alpha, max(seeds - 1, 1)))
    return bool(z > upper or (z < -upper and lognormal_lower_p(z, seeds, sigma,
                                                                 LOWER_GAMMA * alpha) < alpha))


def lognormal_signed_crits(seeds: int, sigma: float, level: float = FAMILY_LEVEL):
    """(upper, lower) critical |z| of :func:`lognormal_signed` at two-sided ``level``: Student
    t's upper level / 2 quantile (the upper tail's sup over sigma), and the c at which
    :func:`lognormal_lower_p` of -c, at the bound on ``sigma`` with gamma = LOWER_GAMMA level /
    2, is level / 2."""
    alpha = level / 2
    upper = float(stats.t.isf(alpha, max(seeds - 1, 1)))

    def excess(c):
        return lognormal_lower_p(-c, seeds, sigma, LOWER_GAMMA * alpha) - alpha

    hi = 2 * upper
    while excess(hi) > 0:  # (the lower tail's sup, sigma -> inf, is finite: it ends)
        hi *= 2
    return upper, (optimize.brentq(excess, upper, hi, xtol=1e-6) if excess(upper) > 0
                   else upper)


@functools.lru_cache(maxsize=256)
def _noncentrality(dof: int, level: float, power: float) -> float:
    """lambda with P(|T| > t_{1 - level/2}) = power for T noncentral t (dof, lambda); where
    scipy's noncentral t gives no number (few dof), crit + t_power (its normal approximation,
    ~1 % low at 23 dof)."""
    crit = stats.t.isf(level / 2, dof)
    approx = crit + stats.t.ppf(power, dof)
    with np.errstate(all="ignore"):
        try:
            return optimize.brentq(  # (the lower tail, ~0 there, is NaN in scipy at large lam)
                lambda lam: np.nan_to_num(stats.nct.sf(crit, dof, lam), nan=1.0)
                + np.nan_to_num(stats.nct.cdf(-crit, dof, lam), nan=0.0) - power, 0.0, 2 * approx)
        except ValueError:
            return approx


def _seed_sums(samples, ref, weight, counted, by: tuple = ()):
    """u_s = sum_i w_i (x_is - T_i) over the counted points, a row per seed finite at all of
    them, a column per value of the dims ``by`` (one column without)."""
    if "width" in samples.dims:
        samples = samples.squeeze("width", drop=True)
    with np.errstate(invalid="ignore"):
        u = ((samples - ref) * weight).where(counted, 0.0)
    u = u.sum([d for d in u.dims if d not in ("seed", *by)], skipna=False)
    u = u.transpose("seed", *by).values.reshape(u.sizes["seed"], -1)
    return u[np.isfinite(u).all(axis=1)]


def shape_test(samples: xr.DataArray, ref: xr.DataArray, weight: xr.DataArray,
               counted: xr.DataArray, floor: float = 0.0) -> tuple[float, int]:
    """(p, k) of one test of the counted points' deviations as a shape over depth: per seed s
    and j = 1..k, u_sj = sum_i w_i P_j(t_i) (x_is - T_i), P_j the Legendre polynomial of degree
    j of the point's layer mapped onto [-1, 1] (the lowest and highest counted layers), and
    Hotelling's T^2 = S' u^T C^-1 u (u the mean over the S' seeds finite at every counted point,
    C their sample covariance), (S' - k) T^2 / (k (S' - 1)) ~ F(k, S' - k) under the null for
    normal samples, at any correlation between the points (C carries it; the weights, as
    :func:`signed_t`'s, do not come from the seeds). k = min(``SHAPE_DEGREE``, counted layers -
    1, S' - 2); p NaN where k < 1 or C is singular to ``MAX_CONDITION``. P_1..P_k are first made
    orthogonal to P_0 and to each other over the counted points, so that a uniform offset (the
    signed test's sum) moves none of them: this test sees a deviation that changes with depth
    (a trend, or one confined to the top or the bottom layers) that the sum dilutes with the
    layers that agree. ``floor``: as :func:`signed_t`'s; T^2 is the least over the offsets of
    u within the rounding the points may differ by (|delta_j| <= floor sum_i |P_j(t_i)|)."""
    if "layer" not in counted.dims:
        return math.nan, 0
    others = [d for d in counted.dims if d != "layer"]
    layers = counted["layer"].values.astype(float)
    per_layer = counted.sum(others).values  # counted points per layer
    used = layers[per_layer > 0]
    if len(used) < 2:
        return math.nan, 0
    t = 2 * (layers - used.min()) / (used.max() - used.min()) - 1
    d = _seed_sums(samples, ref, weight, counted, by=("layer",))
    S, k = len(d), min(SHAPE_DEGREE, len(used) - 1, len(d) - 2)
    if k < 1:
        return math.nan, 0
    P = np.stack([np.polynomial.legendre.Legendre.basis(j)(t) for j in range(k + 1)])
    P[:, per_layer == 0] = 0.0  # (a layer of no counted point adds nothing: u 0 there)
    P = _orthogonal(P, per_layer)[1:]  # (P_0 is the signed test's: a uniform offset is its)
    u = d @ P.T  # (S', k)
    mean, cov = u.mean(axis=0), np.atleast_2d(np.cov(u, rowvar=False))
    if not np.linalg.cond(cov) < MAX_CONDITION:  # (the seeds span fewer than k directions)
        return math.nan, k
    root = np.linalg.cholesky(np.linalg.inv(cov))  # C^-1 = root root^T
    bound = floor * np.abs(P) @ per_layer
    if np.any(bound > 0):  # the least T^2 over offsets within the rounding the points allow
        # (each |u_j| shrunk alone made T^2 larger where the u_j are correlated: a review)
        fit = optimize.lsq_linear(root.T, root.T @ mean, bounds=(-bound, bound + 1e-300))
        mean = mean - fit.x
    t2 = S * float(np.sum((root.T @ mean) ** 2))
    return float(stats.f.sf((S - k) * t2 / (k * (S - 1)), k, S - k)), k


def _orthogonal(P, weight):
    """The rows of ``P`` made orthogonal in order (Gram-Schmidt) under sum_l weight_l f_l g_l."""
    out = []
    for p in P:
        for q in out:
            p = p - (p * weight) @ q / ((q * weight) @ q) * q
        out.append(p)
    return np.stack(out)


def effective_points(samples: xr.DataArray, counted: xr.DataArray) -> float:
    """n_eff = n^2 / sum_ij rho_ij^2 over the n points where ``counted`` (the points
    :func:`summary` counts), rho_ij the correlation across seeds of the per-seed ``samples`` of
    points i and j (Bretherton et al. 1999's effective number of independent values): the
    points of one variable share their nets (every layer, input and sweep value is drawn from
    the same seeds), so their z-scores rise and fall together and the rate of |z| > k varies
    far more than a binomial of n points (a correct Pre-LN net flagged DISAGREE in 6-13 % of
    runs of 8 or 64 seeds). rho^2 is not corrected for its upward bias (~1/(S - 1) at rho =
    0), which errs towards fewer points: at most ~S - 1 with S seeds. At most
    ``MAX_CORRELATED`` points, spread evenly, enter (a stack's padding seeds, NaN at every
    point, left out); of a sample with non-finite values scattered over seeds and points, the
    seeds finite at every point where they are at least half, else the points finite at every
    seed; n_eff is then theirs (fewer), or S - 1 where none is left. A stack of widths (a
    mean's T_inf combines them): the least of each width's n_eff; points at each width (a
    spread's, compared width by width, each width of its own seeds): the sum."""
    if "width" in counted.dims:
        return sum(effective_points(samples.sel(width=w), counted.sel(width=w))
                   for w in counted["width"].values)
    mask = counted.values.ravel()
    n = int(mask.sum())
    if n <= 1:
        return float(n)
    used = min(n, MAX_CORRELATED)
    found = []
    for part in samples.transpose("width", ...) if "width" in samples.dims else [samples]:
        x = part.transpose("seed", *counted.dims).values.reshape(part.sizes["seed"], -1)[:, mask]
        x = x[:, np.unique(np.linspace(0, n - 1, used).astype(int))]
        x = x[~np.isnan(x).all(axis=1)]
        whole = np.isfinite(x).all(axis=1)  # seeds finite at every point: those, if they are
        x = x[whole] if whole.sum() >= max(3, len(x) / 2) else x[:, np.isfinite(x).all(axis=0)]
        S, m = x.shape  # (most; else the points finite at every seed)
        if S < 3 or m == 0:
            found.append(max(1, min(used, S - 1)))
            continue
        sd = x.std(axis=0, ddof=1)
        moving = sd > 0  # (a constant point: correlated with none)
        Z = (x[:, moving] - x[:, moving].mean(axis=0)) / sd[moving]
        found.append(m**2 / (float(np.sum((Z @ Z.T) ** 2)) / (S - 1) ** 2 + int((~moving).sum())))
    return float(min(used, *found))


def inverse_width_fit(widths, est, var, terms: int):
    """Weighted least squares of est(N) = sum_{j < terms} beta_j u^j, u = N_0/N (N_0 the smallest
    width, for conditioning), over the last axis of ``est`` and ``var`` (the widths'; independent
    estimates, weights 1/var; all var = 0: equal weights). Returns beta (..., terms) and its
    covariance (X^T W X)^-1 (..., terms, terms); NaN where some width has no finite estimate."""
    N = np.asarray(widths, dtype=float)
    X = np.stack([(N.min() / N) ** j for j in range(terms)], axis=1)  # (W, terms)
    y, var = np.asarray(est, dtype=float), np.asarray(var, dtype=float)
    bad = ~(np.isfinite(y) & np.isfinite(var)).all(-1)
    with np.errstate(divide="ignore"):
        w = np.where(var > 0, 1 / var, 1.0)
    w, y = np.where(bad[..., None], 1.0, w), np.where(bad[..., None], 0.0, y)
    cov = np.where(bad[..., None, None], np.nan,
                   np.linalg.inv(np.einsum("...w,wi,wj->...ij", w, X, X)))
    return np.einsum("...ij,...j->...i", cov, np.einsum("...w,wi,...w->...i", w, X, y)), cov


def fit_inverse_width(widths, est, se):
    """est(N) = c + a/N by :func:`inverse_width_fit` (weights 1/se^2): (c, se_c, a, se_a)."""
    beta, cov = inverse_width_fit(widths, est, np.square(se), terms=2)
    n0 = float(np.min(widths))
    return (float(beta[0]), math.sqrt(cov[0, 0]), n0 * float(beta[1]),
            n0 * math.sqrt(cov[1, 1]))


def extrapolate(est: xr.DataArray, se: xr.DataArray, floor=0.0) -> dict[str, xr.DataArray]:
    """Weighted least squares over ``width`` of T(N) = T_inf + a/N (+ b/N^2 with >= 3 widths)
    by :func:`inverse_width_fit`, with sigma^2 = se^2 + floor^2 per width. Returns T_inf, a and
    their standard errors."""
    N = est["width"].astype(float)
    var = (se**2 + floor**2).broadcast_like(est)
    beta, cov = inverse_width_fit(
        N.values, np.moveaxis(est.transpose("width", ...).values, 0, -1),
        np.moveaxis(var.transpose("width", ...).values, 0, -1),
        terms=2 if est.sizes["width"] == 2 else 3)
    dims = [d for d in est.transpose("width", ...).dims if d != "width"]
    coords = {d: est[d] for d in dims if d in est.coords}
    n0 = float(N.min())

    def da(v):
        return xr.DataArray(v, dims=dims, coords=coords)

    return {"T_inf": da(beta[..., 0]), "T_inf_stderr": da(np.sqrt(cov[..., 0, 0])),
            "a": da(n0 * beta[..., 1]), "a_stderr": da(n0 * np.sqrt(cov[..., 1, 1]))}


def first_order(theory: xr.Dataset, name: str, est_name: str, width: int):
    """The first-order term a/N at width N = ``width`` that ``sp.theory(net, inputs, width=W)``
    predicts for ``name`` on the scale of the estimator ``est_name`` (its stored a/W times
    W/N), or None where it has none: ``mean``: E X = X (1 + c/N) for q, branch_q, var, grad_q
    and weight_grad_q, E corr and E mean plus their terms; ``lognormal`` (log E X): c/N for
    those five; ``logmean`` (E log X): E log q's and E log branch_q's own terms, and (c -
    v/2)/N for grad_q, weight_grad_q and var (v: N Var log X; log E X - E log X = Var log X / 2
    at leading order). None under
    ``median``: the median of log X sits O(1/N) from its mean (log X's skewness, which the
    theory does not give), the order of the term itself; and for corr and mean under the log
    estimators (not theirs). A log companion (log_q, ...) under ``mean`` is E log X: its
    variable's term under ``logmean``."""
    W = theory.attrs.get("width")
    log_of = schema.VARIABLES[name].log_of if name in schema.VARIABLES else None
    if log_of and est_name == "mean":
        return first_order(theory, log_of, "logmean", width)
    if W is None or est_name == "median" or name not in FIRST_ORDER:
        return None
    if name in ("corr", "mean"):
        needs = FIRST_ORDER[name] if est_name == "mean" else None
    elif est_name == "logmean":
        needs = {"q": FIRST_ORDER["q"][1:], "branch_q": FIRST_ORDER["branch_q"][1:],
                 "grad_q": FIRST_ORDER["grad_q"], "weight_grad_q": FIRST_ORDER["weight_grad_q"],
                 "var": FIRST_ORDER["var"]}.get(name)
    else:
        needs = FIRST_ORDER[name][:1]
    if needs is None or any(v not in theory for v in needs):
        return None
    term = theory[needs[0]]
    if name in ("grad_q", "weight_grad_q", "var") and est_name == "logmean":
        term = term - theory[needs[1]] / 2
    elif name in ("q", "branch_q", "var", "grad_q", "weight_grad_q") and est_name == "mean":
        term = theory[name] * term
    term = term * (float(W) / width)
    if est_name == "logmean" and TYPICAL.get(name) in theory:
        # where the expansion has no term (a BatchNorm), E log X at N itself: typical_log_grad_q,
        # at the theory's own width only (``width``: a number, or a DataArray of several)
        other = np.logical_not(width == int(W))
        log = theory[schema.LOG_NAME[name]] if schema.LOG_NAME[name] in theory \
            else _log(theory[name])
        term = term.where(term.notnull() | other, theory[TYPICAL[name]] - log)
    return term


def _typical_used(theory: xr.Dataset, name: str, est_name: str, width) -> bool:
    """Whether :func:`first_order` reads the theory's E log X at its own width (``TYPICAL``)
    at some point: the run is at that width and the expansion has no term there."""
    W = theory.attrs.get("width")
    if est_name != "logmean" or W is None or not width or int(W) != int(width) \
            or TYPICAL.get(name) not in theory or any(v not in theory for v in FIRST_ORDER[name]):
        return False
    return bool((theory[FIRST_ORDER[name][0]].isnull() & theory[TYPICAL[name]].notnull()).any())


def _typical_elsewhere(theory: xr.Dataset, name: str, est_name: str, width) -> bool:
    """Whether the theory's E log X at its own width (``TYPICAL``) has values that
    :func:`first_order` leaves out because the run is at another width."""
    W = theory.attrs.get("width")
    return (est_name == "logmean" and W is not None and bool(width) and int(W) != int(width)
            and TYPICAL.get(name) in theory and bool(theory[TYPICAL[name]].notnull().any()))


def first_order_of(theory: xr.Dataset, name: str, f, width: int):
    """E f(X) at width N = ``width`` to first order for a theory from ``sp.theory(net, inputs,
    width=W)``: f(x) + f'(x) t + f''(x) V / 2, with t :func:`first_order`'s term (E X - x) and
    V = Var X at N (:data:`SPREADS`: ``var_mean`` for the mean, ``var_corr`` for corr, X^2 Var
    log X for q, var, branch_q, grad_q and weight_grad_q; each times W/N); f' and f'' by
    central differences of step sqrt(V) / 100 (exact for a quadratic f). None where the theory
    has no V for
    ``name``; where t or V is NaN (no finite-width rule), f(x). A ``FiniteWidthWarning`` where
    f bends over X's spread (:func:`_bends`), where the expansion does not hold."""
    if name not in theory:
        raise ConfigError("name", name, f"a variable of the theory (E f(X) for {list(SPREAD_OF)})")
    if not np.all(np.asarray(width, dtype=float) >= 1):  # (an array: the runs' widths)
        raise ConfigError("width", width, "a width N >= 1")
    W = theory.attrs.get("width")
    spread_name, log = SPREAD_OF.get(name, (None, False))
    if W is None or spread_name not in theory:
        return None
    x = theory[name]
    V = (theory[spread_name] * (x**2 if log else 1.0) * (float(W) / width)).fillna(0)
    t = first_order(theory, name, "mean", width)
    t = 0.0 if t is None else t.fillna(0)
    h = xr.where(V > 0, np.sqrt(V) / 100, 1e-6 * np.maximum(abs(x), 1.0))
    f = elementwise(f, "f")
    with np.errstate(divide="ignore", invalid="ignore"):  # (corr's diagonal, c = 1: f(1 + h))
        f0, up, down = f(x), f(x + h), f(x - h)
    bent = _bends(f, x, f0, V)
    if bent.any():
        at = bent.any([d for d in bent.dims if d != "layer"]) if "layer" in bent.dims else bent
        layers = at["layer"].values[at.values].tolist() if "layer" in at.dims else []
        at_n = width if np.ndim(width) == 0 else np.asarray(width).tolist()
        warn(f"E f({name}) at width {at_n}: at {int(bent.sum())} points"
             + (f" (layers {layers})" if layers else "") + f" f bends over {name}'s "
             "spread across nets, or leaves its domain within it: its expansion to Var "
             f"{name} does not hold there (a larger width, or sp.simulate at this one)",
             FiniteWidthWarning)
    return f0 + (up - down) / (2 * h) * t + (up - 2 * f0 + down) / h**2 * V / 2


def elementwise(f, field: str):
    """``f`` for DataArrays: its result as a DataArray of the input's dims and coordinates
    where it returns a bare array (``np.where``); a ConfigError naming ``field`` where it fails
    on arrays (``math.log``) or changes the shape."""
    def g(da: xr.DataArray) -> xr.DataArray:
        try:
            out = f(da)
        except TypeError as err:
            raise ConfigError(field, f, "a function that works elementwise on arrays "
                              f"(np.log, not math.log): {err}") from None
        if isinstance(out, xr.DataArray) and dict(out.sizes) == dict(da.sizes):
            return out.transpose(*da.dims)
        if isinstance(out, xr.DataArray) or np.shape(out) != da.shape:
            raise ConfigError(field, f, f"a function that keeps its input's shape "
                              f"{da.shape} (it gave {np.shape(out)})")
        return da.copy(data=np.asarray(out, dtype=float))
    return g


def _bends(f, x, f0, V) -> xr.DataArray:
    """Where E f(X) = f + f' t + f'' V / 2 does not hold: the next term of f's expansion over
    X's spread passes BEND_MAX times the V term, |D4| > BEND_MAX |D2| (D2, D4: f's 2nd and
    4th differences at step s = sqrt(V) / 2; for a Gaussian X the next term, f's 4th derivative
    times 3 V^2 / 24, is D4 / D2 times the V term), or f is not finite within x +- sqrt(V)
    (log(1 - corr) as corr's spread reaches 1). D4 at round-off (f a quadratic there) is no
    bend."""
    s = np.sqrt(V) / 2
    with np.errstate(all="ignore"):
        near = [f(x + k * s) for k in (-2, -1, 1, 2)]
        d2 = near[1] - 2 * f0 + near[2]
        d4 = near[0] - 4 * near[1] + 6 * f0 - 4 * near[2] + near[3]
        resolved = abs(d4) > ROUND_OFF * (1 + abs(f0))
        finite = np.isfinite(near[0]) & np.isfinite(near[3])
        return (V > 0) & np.isfinite(f0) & (~finite | (resolved & (abs(d4) > BEND_MAX * abs(d2))))


def one_width(mc: xr.Dataset) -> int | None:
    """The width of a Monte Carlo run at one width (a ``width`` dim of one value, a scalar
    ``width`` coordinate, or its attr), else None."""
    if "width" in mc.coords and mc["width"].size == 1:
        return int(mc["width"].values.ravel()[0])
    if "width" in mc.dims:
        return None
    width = mc.attrs.get("width")
    return int(width) if isinstance(width, (int, np.integer)) else None


def _finite_width_note(widths, width, corrected, theory_width) -> str:
    if len(widths) >= 2:
        model = "T_inf + a/N" + (" + b/N^2" if len(widths) >= 3 else "")
        return (f"removed: T(N) = {model} fitted over widths {widths} by weighted least squares; "
                "estimate/stderr are T_inf and its standard error, a is the fitted coefficient"
                + (f" and a_theory the theory's (sp.theory(..., width={theory_width}))"
                   if corrected or theory_width else ""))
    if corrected:
        return (f"first order: at the one width {width} the theory is T_inf + a/N, a from "
                f"sp.theory(..., width={theory_width}) (for {', '.join(corrected)}; the other "
                "variables at T_inf, an O(1/N) bias left to show as z)")
    return (f"not removed: one width ({width or 'not recorded'}); no allowance beyond the "
            "standard error, so an O(1/N) bias of the theory shows as z")


def _same_sims(ca: dict, cb: dict, la, lb, prefix: bool) -> str:
    """:func:`check_same_experiment` of two sims' datasets (the pipeline's config: its arch
    specs and inputs; they said 'not checked', and runs of another activation and inputs were
    compared): the same inputs, and each arch both hold the same spec (its sweep grid aside:
    the grids are aligned)."""
    if ca.get("inputs") != cb.get("inputs"):
        raise ConfigError("inputs differ", (ca.get("inputs"), cb.get("inputs")), "the same "
                          "inputs in both sims")
    specs = [{arch.get("label") or arch.get("preset"): {k: v for k, v in arch.items()
                                                        if k not in ("montecarlo", "sweeps")}
              for arch in c["arch"]} for c in (ca, cb)]
    shared = specs[0].keys() & specs[1].keys()
    differ = {k: (specs[0][k], specs[1][k]) for k in sorted(shared) if specs[0][k] != specs[1][k]}
    if differ or not shared:
        raise ConfigError("architecture differs", differ or (list(specs[0]), list(specs[1])),
                          "the same arch specs in both sims")
    depths = [_sim_depth(c) for c in (ca, cb)]
    if depths[0] != depths[1]:  # (an arch's constants may depend on it: alpha = 1/sqrt(L))
        raise ConfigError("profile depth", depths, "the same depth L in both sims' profiles")
    _same_layers(la, lb, prefix)
    return f"same archs {sorted(shared)} and inputs (the sims' configs)"


def _same_layers(la, lb, prefix: bool) -> None:
    """Datasets whose configs give no net's depth: the same number of layers (prefix=True: any;
    a dataset cut to one layer has no layer dim: not checked)."""
    if None not in (la, lb) and la != lb and not prefix:
        raise ConfigError("depth", f"{la - 1} blocks vs {lb - 1}", "the same depth (or "
                          "prefix=True to compare a shallower run on its layers)")


def _config(ds: xr.Dataset) -> dict | None:
    raw = ds.attrs.get("config")
    if not isinstance(raw, str):
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return cfg if isinstance(cfg, dict) else None


def _log(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _unit(th: xr.Dataset, name: str, ref):
    """What a rounding of variable ``name`` on the linear scale is relative to: |theory|, at
    least 1 for a cosine (corr) and at least sqrt(q) for a feature mean (mean)."""
    if name == "corr":
        return np.maximum(abs(ref), 1.0)
    if name == "mean" and "q" in th:
        return np.maximum(abs(ref), np.sqrt(th["q"]))
    return abs(ref)


def _align(th: xr.Dataset, mc: xr.Dataset):
    """The two datasets on their shared coordinates, and what of the Monte Carlo's that left
    out ('' if nothing: it has no theory there; the theory's own extra points, a finer sweep
    grid, go unsaid); a dim one of them was cut to one value of (``theory.sel(layer=4)``: a
    scalar coordinate) is cut the same in the other (it was broadcast against every
    value)."""
    differ = {d: (th[d].item(), mc[d].item()) for d in th.coords if d in mc.coords
              and th[d].ndim == 0 and mc[d].ndim == 0 and not _same_value(th[d], mc[d])}
    if differ:  # (th.sel(layer=4) against mc.sel(layer=1) was compared, as one layer)
        raise ConfigError("coordinates cut to different values (theory, Monte Carlo)", differ,
                          "the same value in both")
    for a, b in ((th, mc), (mc, th)):
        cut = {d: a[d].item() for d in a.coords if a[d].ndim == 0 and d in b.dims}
        if cut:
            try:
                cut_b = b.sel(cut)
            except KeyError:
                raise ConfigError("coordinates cut in one dataset", cut, "values the other "
                                  "dataset has") from None
            th, mc = (th, cut_b) if a is th else (cut_b, mc)
    shared = [d for d in th.dims if d in mc.dims]
    missing = [d for d in th.dims if d not in mc.dims and th.sizes[d] > 1]
    if missing:
        raise ConfigError("theory dims missing from the Monte Carlo dataset", missing,
                          "select one value of each (e.g. theory.sel(alpha=0.5)) before comparing")
    th = th.squeeze([d for d in th.dims if d not in mc.dims], drop=True)
    left = {d: mc.indexes[d].difference(th.indexes[d]) for d in shared
            if d in th.indexes and d in mc.indexes}
    th, mc = xr.align(th, mc, join="inner", exclude=[d for d in mc.dims if d not in shared])
    empty = [d for d in shared if th.sizes[d] == 0]
    if empty:
        raise ConfigError("shared coordinates", empty, "overlapping values in theory and mc")
    left = "; ".join(f"{d} = {list(v)}" for d, v in left.items() if len(v))
    return th, mc, left and f"Monte Carlo points with no theory, not compared: {left}"


def _same_value(u: xr.DataArray, v: xr.DataArray) -> bool:
    """Two scalar coordinates' values equal (numbers: to float32's rounding; both NaN)."""
    x, y = u.values.item(), v.values.item()
    if isinstance(x, numbers.Real) and isinstance(y, numbers.Real):
        return bool(np.isclose(x, y, rtol=1e-6, atol=0.0, equal_nan=True))
    return x == y


def nominal_rate(k: float, seeds: int) -> float:
    """P(|T| > k) for Student t with seeds - 1 degrees of freedom (the null law of z)."""
    return float(2 * stats.t.sf(k, max(seeds - 1, 1)))


@functools.lru_cache(maxsize=4096)
def lognormal_tails(c: float, seeds: int, sigma: float, shift: float = 0.0,
                    sides: tuple = (1, -1)) -> tuple[float, float]:
    """(P(z > c), P(z < -c)), c >= 0, for the ``lognormal`` estimator's z on S = ``seeds``
    normal samples y of sd ``sigma`` against the true log E X = mu + sigma^2 / 2 (no rounding
    floor: it only shrinks |z|), or against a theory below it by ``shift`` times Cox's SE,
    sqrt(sigma^2 / S + sigma^4 / (2n)) (the alternative of a power; d = shift SE / sigma).
    ybar ~ N(mu, sigma^2 / S) and s^2 = sigma^2 w, w = V / n, V ~ chi^2_n, n = S - 1, are
    independent, so with Z standard normal and D(w) = sqrt(w / S + sigma^2 w^2 / (2n)), z = (Z
    / sqrt(S) + sigma (w - 1) / 2 + d) / D(w), and

        P(z > c)  = E_V Phi(-sqrt(S) (c D(w) - sigma (w - 1) / 2 - d)),
        P(z < -c) = E_V Phi(-sqrt(S) (c D(w) + sigma (w - 1) / 2 + d)),

    each one integral over V (``quad``, relative tolerance 1e-10, V's chi^2 mass beyond its
    1e-20 quantiles left out; breakpoints where Phi's argument is 0, the roots of (sigma^2 / 4
    - c^2 sigma^2 / (2n)) w^2 - (sigma^2 / 2 + c^2 / S - sigma d) w + sigma^2 / 4 - sigma d +
    d^2, and around them at multiples of the argument's slope: at large sigma a step of width
    ~ 1 / (sigma sqrt(S)) in w). The limits, exactly: sigma = 0, Student t with n dof (z -> (Z
    + shift) / sqrt(w): noncentral); sigma = inf (no shift), z -> sqrt(n/2) (1 - n / V), so
    P(z < -c) = F(n / (1 + c sqrt(2/n))) and P(z > c) = 1 - F(n / (1 - c sqrt(2/n))) for c <
    sqrt(n/2), else 0 (F: chi^2_n's cdf). ``sides``: the tails integrated (+1 the upper, -1
    the lower); the other NaN (both given at sigma = 0 and inf)."""
    from scipy import integrate, special

    n = max(seeds - 1, 1)
    if sigma == 0:
        if shift:
            return float(stats.nct.sf(c, n, shift)), float(stats.nct.cdf(-c, n, shift))
        p = float(stats.t.sf(c, n))
        return p, p
    r = math.sqrt(n / 2)
    if sigma == math.inf:
        if shift:
            raise ValueError("lognormal_tails: a shift needs a finite sigma")
        return (float(stats.chi2.sf(n / (1 - c / r), n)) if c < r else 0.0,
                float(stats.chi2.cdf(n / (1 + c / r), n)))
    root_s, power = math.sqrt(seeds), n / 2 - 1
    log_norm = float(special.gammaln(n / 2)) + n / 2 * math.log(2)  # chi^2_n's density's
    d = shift * math.sqrt(1 / seeds + sigma**2 / (2 * n))  # (shift SE / sigma)

    def argument(v, sign):  # Phi's argument at V = v: sign +1 the upper tail, -1 the lower
        w = v / n
        return root_s * (c * math.sqrt(w / seeds + sigma**2 * w**2 / (2 * n))
                         - sign * (sigma * (w - 1) / 2 + d))

    lo, hi = float(stats.chi2.ppf(1e-20, n)), float(stats.chi2.isf(1e-20, n))
    base = [float(q) for q in stats.chi2.ppf([1e-12, 1e-8, 1e-5, 1e-3, 0.1, 0.5, 0.9], n)]
    a2 = sigma**2 * (0.25 - c**2 / (2 * n))
    a1, a0 = -(sigma**2 / 2 + c**2 / seeds) + sigma * d, sigma**2 / 4 - sigma * d + d**2
    roots = np.roots([a2, a1, a0]) if a2 != 0 else np.array([-a0 / a1])
    steps = [n * float(w.real) for w in roots if abs(w.imag) < 1e-12 and w.real > 0]
    tails = []
    for sign in (1, -1):
        if sign not in sides:
            tails.append(math.nan)
            continue
        points = list(base)
        for v0 in steps:
            h = 1e-6 * v0
            slope = abs(argument(v0 + h, sign) - argument(v0 - h, sign)) / (2 * h)
            if slope > 0:
                points += [v0 + j / slope for j in (-40, -10, -3, -1, 0, 1, 3, 10, 40)]

        def f(v, sign=sign):
            return math.exp(power * math.log(v) - v / 2 - log_norm) * special.ndtr(
                -argument(v, sign))

        tails.append(float(integrate.quad(
            f, lo, hi, epsabs=0.0, epsrel=1e-10, limit=500,
            points=sorted(p for p in points if lo < p < hi))[0]))
    return tails[0], tails[1]


def lognormal_lower_p(z: float, seeds: int, log_sd: float,
                      gamma: float = 0.0) -> float:
    """A p-value of one ``lognormal`` z below the theory, valid whatever the unknown sd sigma
    of log X (Berger and Boos 1994): with sigma_up = s sqrt(n / q_gamma) (s = ``log_sd``, the
    seeds' sd of log X at the point, n = S - 1, q_gamma chi^2_n's lower ``gamma`` quantile),
    [0, sigma_up] is a 1 - gamma confidence set of sigma (s^2 n / sigma^2 ~ chi^2_n), and

        p = sup_{sigma <= sigma_up} P_sigma(z' <= z) + gamma = P_{sigma_up}(z' <= z) + gamma,

    the sup at sigma_up because the lower tail rises with sigma (:func:`lognormal_tails`: it
    never fell on 57 sigma from 1e-3 to 1e4 with 0 and inf, S = 3 to 1024, c from t's to the
    sigma -> inf law's quantile at 1e-10 to 0.05, where above 1e-14; the tests check a part,
    tests/test_compare_lognormal_law.py). Valid for any gamma in (0, 1), though s^2 is in z (z
    and sigma_up are dependent): with sigma the true sd, P(p <= a) <= P(sigma > sigma_up) +
    P(sigma <= sigma_up, P_sigma(z' <= z) + gamma <= a) <= gamma + P(P_sigma(z' <= z) <= a -
    gamma) <= gamma + (a - gamma), a union bound and the probability integral transform at the
    true sigma, with no use of their joint law. (A point of more seeds than S, whose s has more
    dof, gets a wider bound than it needs.) At 32 seeds and s = 0.3 one z reaches p = 0.00135
    (gamma its tenth) at -3.76, where the sup over all sigma needs -5.77; at s = 10 the bound
    costs: -5.85. ``log_sd`` NaN (a comparison without the stat) or ``gamma`` 0: the sup over
    every sigma, sigma -> inf (chi^2_n's cdf at n / (1 + c sqrt(2/n)), c = -z), with nothing
    added; z >= 0: 1."""
    n = max(seeds - 1, 1)
    c = -float(z)
    if c <= 0:
        return 1.0
    if gamma <= 0 or math.isnan(log_sd):
        return lognormal_tails(c, int(seeds), math.inf)[1]
    sigma_up = float(log_sd) * math.sqrt(n / float(stats.chi2.ppf(gamma, n)))
    if sigma_up > LOG_SD_GRID[-1]:  # (the sigma -> inf law past it, the larger: quad's
        sigma_up = math.inf  # integrand has a step of width ~1 / sigma there)
    return lognormal_tails(c, int(seeds), sigma_up)[1] + gamma


@functools.lru_cache(maxsize=256)
def lognormal_rate(k: float, seeds: int) -> float:
    """The ``lognormal`` estimator's nominal rate of |z| > k: the largest P(z > k) + P(z < -k)
    (:func:`lognormal_tails`) over sigma = 0, :data:`LOG_SD_GRID` and inf (the two tails move
    oppositely in sigma: the sum is largest as sigma -> inf for k >= 1.5, as sigma -> 0 for k
    near 1; 0.00897 at sigma = 0 and 0.0469 at inf for k = 3, S = 16)."""
    return max(sum(lognormal_tails(float(k), int(seeds), s))
               for s in (0.0, *LOG_SD_GRID, math.inf))


def summary(cmp: xr.Dataset, threshold: float = 3.0, level: float = FAMILY_LEVEL) -> list[dict]:
    """One row per variable: points, max |z| and where, the signed test's t, the shape test's
    p, rate of |z| > threshold vs nominal.

    ``nominal``: P(|z| > threshold) under the null, Student t's with S - 1 dof, or for the
    ``lognormal`` estimator at one width its own law's supremum over the sd of log X
    (:func:`lognormal_rate`). ``flag``: DISAGREE when the rate exceeds the nominal one by more
    than 3 binomial sd (+1/n) of the ``effective_points`` n_eff the points' correlation across
    seeds leaves (:func:`effective_points`: the points share their nets), or when max |z|
    passes the Student-t quantile that n points pass together at ``FAMILY_LEVEL`` (Bonferroni,
    level / (2n) a tail: whatever their correlation; estimators whose z is t,
    :data:`T_ESTIMATORS`: a skewed sample's mean comes nearer the level the more seeds it has),
    or, under ``lognormal`` at one width (a stack's T_inf has no such law: no test), when the
    largest z passes t's quantile at level / (2n) (the upper tail's sup over sigma, at sigma
    -> 0) or some point's lower-tail p is below level / (2n) (:func:`lognormal_lower_p`, over
    a 1 - gamma upper bound of the point's own sd of log X, its stat ``log_sd``, gamma a tenth
    of level / (2n): at 32 seeds and sd 0.3 one point below -3.76 at FAMILY_LEVEL, where the
    sup over all sigma, sigma -> inf, needs -5.77; without the stat, that sup), or when the
    signed test's t (``signed_t``
    in the variable's attrs, :func:`signed_t`: the points' deviations of one sign together; one
    width) passes t's two-sided quantile at ``FAMILY_LEVEL`` (same estimators; under
    ``lognormal`` its z, :func:`lognormal_signed`, by that law: :func:`lognormal_signed_flag`),
    or when the
    shape test's p (``shape_p``, :func:`shape_test`: a deviation that changes with depth; under
    ``lognormal`` :func:`lognormal_shape_p` at this level) is
    below ``FAMILY_LEVEL`` (``level``: these three tests' level, FAMILY_LEVEL unless given;
    a gate over many variables divides it among them); NOT
    COMPARABLE when some points have no finite z (infinite variance, no theory value, dead
    nets under a log estimator). ``by``: the tests that fired ("rate", "max |z|", "sum t",
    "shape"; empty unless DISAGREE).
    A point that neither dataset has (NaN in both: an arch's part of a per-arch sweep grid it
    was not run on, weight_grad_q at layer 0) is not a point, nor is one of z exactly 0 (the
    Monte Carlo equal to the theory to rounding, with no spread: the inputs at layer 0, corr's
    diagonal), which tests nothing; a pair of inputs is one point (corr's (a, b) and (b, a) are
    one value)."""
    if not (isinstance(threshold, numbers.Real) and 0 < threshold < math.inf):
        raise ConfigError("threshold", threshold, "a number > 0 (the |z| above which a point "
                          "disagrees)")
    rows = []
    seeds = int(cmp.attrs.get("seeds", 2))
    for name, da in cmp.data_vars.items():
        z = da.sel(stat="z")  # (signed: the lognormal law's tails differ)
        lognormal = (da.attrs["estimator"] == "lognormal"
                     and not set(FIT_STATS) & set(np.atleast_1d(da["stat"].values)))
        nominal = (lognormal_rate(threshold, seeds) if lognormal
                   else nominal_rate(threshold, seeds))
        pairs = _pairs(da)
        exact = int(((z == 0) & pairs).sum())
        finite = z.where(_counted(z))
        n = int(finite.count())
        exists = (da.sel(stat="theory").notnull() | da.sel(stat="estimate").notnull()) & pairs
        lost = int(exists.sum()) - n - exact
        if n == 0:
            rows.append({"variable": name, "estimator": da.attrs["estimator"], "points": 0,
                         "effective_points": 0.0, "exact": exact, "max_z": float("nan"), "where": "",
                         "signed_t": float("nan"), "mde": float("nan"), "shape_p": float("nan"),
                         "rate": float("nan"), "nominal": nominal,
                         "not_comparable": lost, "by": [],
                         "flag": f"NOT COMPARABLE ({lost} points)" if lost else
                         "ok" if exact else "no data"})
            continue
        size = abs(finite)
        where = size.fillna(-1).argmax(...)
        loc = ", ".join(f"{d}={finite[d].values[i].item() if d in finite.coords else int(i)}"
                        for d, i in ((d, int(v)) for d, v in where.items()))
        rate = float((size > threshold).sum()) / n
        effective = min(float(n), float(da.attrs.get("effective_points", n)))
        bound = nominal + 3 * np.sqrt(nominal * (1 - nominal) / effective) + 1 / effective
        top = float(size.max())
        crit = stats.t.isf(level / (2 * n), max(seeds - 1, 1))  # (a tail's share: level / 2n)
        if da.attrs["estimator"] in T_ESTIMATORS:
            beyond = top > crit
        elif lognormal:
            beyond = (float(finite.max()) > crit
                      or _lower_flag(finite, da, seeds, level / (2 * n), crit))
        else:
            beyond = False
        signed, dof = float(da.attrs.get("signed_t", np.nan)), da.attrs.get("signed_seeds", 0) - 1
        if lognormal:  # (its own law: t's upper tail, the lower at a bound on its sd)
            together = dof >= 2 and lognormal_signed_flag(
                signed, dof + 1, float(da.attrs.get("signed_log_sd", np.nan)), level)
        else:
            together = dof >= 1 and abs(signed) > stats.t.isf(level / 2, dof)
        shape_p = float(da.attrs.get("shape_p", np.nan))
        if lognormal and "shape_z" in da.attrs:  # (its gamma is a share of this level)
            shape_p = lognormal_shape_p(list(np.atleast_1d(da.attrs["shape_z"])),
                                        list(np.atleast_1d(da.attrs["shape_log_sd"])),
                                        dof + 1, level)
        by = [test for test, fired in (("rate", rate > bound), ("max |z|", beyond),
                                       ("sum t", together), ("shape", shape_p < level)) if fired]
        rows.append({"variable": name, "estimator": da.attrs["estimator"], "points": n,
                     "effective_points": effective, "exact": exact, "max_z": top, "where": loc,
                     "signed_t": signed, "mde": float(da.attrs.get("signed_mde", np.nan)),
                     "shape_p": shape_p, "rate": rate, "nominal": nominal,
                     "not_comparable": lost, "by": by,
                     "flag": "DISAGREE" if by else
                     f"NOT COMPARABLE ({lost} points)" if lost else "ok"})
    return rows


def _lower_flag(z: xr.DataArray, da: xr.DataArray, seeds: int, alpha: float,
                crit: float) -> bool:
    """Whether some counted point's lower-tail p (:func:`lognormal_lower_p`, gamma =
    :data:`LOWER_GAMMA` alpha, the sd of log X from the stat ``log_sd``; without it, the sup
    over every sigma) is below ``alpha``. Only z below -``crit``, Student t's upper alpha
    quantile, can be (p >= P_0(z' <= z), Student t's, as the tail rises with sigma), and z
    whose sup over all sigma, a closed form, is below alpha - gamma are at once: the integral
    runs for the points in between alone, most negative z first, until one is below."""
    gamma = LOWER_GAMMA * alpha
    below = z < -crit
    if not bool(below.any()):
        return False
    sd = (da.sel(stat=LOG_SD) if LOG_SD in da["stat"] else xr.full_like(z, np.nan))
    zs, sds = z.values[below.values], sd.broadcast_like(z).values[below.values]
    for zi, si in sorted(zip(zs.tolist(), sds.tolist())):
        if (lognormal_tails(-zi, int(seeds), math.inf)[1] < alpha - gamma  # (every sigma's)
                or lognormal_lower_p(zi, seeds, si, gamma) < alpha):
            return True
    return False


def print_table(cmp: xr.Dataset, threshold: float = 3.0, console=None) -> list[dict]:
    """Print :func:`summary` as a rich table; returns the rows."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = summary(cmp, threshold)
    rates = {}  # nominal rate -> the estimators of its rows (lognormal's law has its own)
    for r in rows:
        rates.setdefault(f"{r['nominal']:.4f}", {})[r["estimator"]] = None
    nominal = (", nominal rate " + ", ".join(
        p + (f" ({', '.join(e)})" if len(rates) > 1 else "") for p, e in rates.items())
               if rows else "")
    table = Table(title=f"theory vs Monte Carlo ({cmp.attrs.get('seeds')} seeds, |z| > "
                  f"{threshold}{nominal})", box=box.SIMPLE_HEAD, collapse_padding=True)
    columns = ("variable", "flag", "estimator", "points", "eff.", "max |z|", "sum t", "rate")
    for col in columns:  # (one line a row in 80 columns; a long flag folds)
        table.add_column(col, justify="left" if col in columns[:3] else "right",
                         no_wrap=col != "flag", overflow="fold", min_width={"flag": 8}.get(col))
    for r in rows:
        signed = r["signed_t"]
        table.add_row(r["variable"], r["flag"], r["estimator"], f"{r['points']}",
                      f"{r['effective_points']:.3g}", f"{r['max_z']:.2f}",
                      "" if math.isnan(signed) else f"{signed:.2f}", f"{r['rate']:.4f}",
                      style="" if r["flag"] == "ok" else "bold red")
    console.print(table)
    for r in rows:
        if r["flag"] != "ok" and r["where"]:
            console.print(f"[red]{r['variable']}[/]: "
                          + (f"DISAGREE by {', '.join(r['by'])}; " if r["by"] else "")
                          + f"max |z| at {r['where']}"
                          + (f"; shape over depth p = {r['shape_p']:.2g}"
                             if r["shape_p"] < FAMILY_LEVEL else ""))
    exact = ", ".join(f"{r['variable']} {r['exact']}" for r in rows if r["exact"])
    if exact:
        console.print(f"exact points (not counted): {exact}")
    console.print(f"finite-width bias: {cmp.attrs.get('finite_width', 'unknown')}")
    for key, why in cmp.attrs.items():
        if key.startswith("not_comparable_"):
            console.print(f"[red]{key.removeprefix('not_comparable_')}[/]: {why}")
        if key.startswith("skipped_"):
            console.print(f"[yellow]{key.removeprefix('skipped_')} not compared[/]: {why}")
        if key.startswith("unmeasured_"):
            console.print(f"[yellow]{key.removeprefix('unmeasured_')}[/]: {why}")
        if key.startswith("typical_"):  # (each names its variable)
            console.print(why)
    if "left_out" in cmp.attrs:
        console.print(f"[yellow]{cmp.attrs['left_out']}[/]")
    console.print("flag: DISAGREE when the rate of |z| > threshold exceeds the nominal "
                  "rate (Student t's; lognormal's own law's, its sup over the sd of log X) "
                  "by more than 3 binomial standard errors (+1/n) of the eff. points (the "
                  "points share their nets: n^2 / sum of their squared correlations across "
                  "seeds), or, under the mean and logmean estimators, max |z| passes the t "
                  f"quantile all points pass together at {FAMILY_LEVEL} (Bonferroni), under "
                  "lognormal (one width) the largest z passes t's quantile or a point's "
                  "lower-tail p passes the level (level / 2n each; the upper tail's sup over "
                  "the sd of log X, the lower's over its confidence bound at each point), or the "
                  "sum t does at that level: the t of the per-seed sum of the points' "
                  "deviations relative to the theory, one test of their common sign (one "
                  "width), or the shape test's p is below it: Hotelling's T^2 of those sums "
                  f"weighted by Legendre polynomials of the layer (degrees 1 to {SHAPE_DEGREE}), "
                  "a deviation that changes with depth. exact: "
                  "points where every seed gives the theory's value to rounding (z = 0; not "
                  "counted).")
    return rows


def synthetic(theory: xr.Dataset, seeds: int = 32, widths=(256,), noise: float = 0.1,
              root_seed: int = 0, bias: float = 0.0) -> xr.Dataset:
    """Monte Carlo-shaped samples whose law is known exactly (for calibration and tests).

    Squared norms are ``x * exp(s e - s^2/2)`` (log-normal, E = x exactly) with
    ``s = noise * sqrt(256 / width)``; ``mean`` and off-diagonal ``corr`` get additive Gaussian
    noise of sd ``s`` (``mean`` scaled by sqrt(var)); log variables are recomputed. Every entry
    is independent, so z-scores of distinct entries are independent. ``bias``: a known
    finite-width bias, squared norms times (1 + bias/width), off-diagonal corr and mean plus
    bias/width (times sqrt(var) for mean), from layer 1 on.
    """
    rng = np.random.default_rng(root_seed)
    parts = []
    for width in widths:
        s = noise * np.sqrt(256 / width)
        ds = {}
        for name in VARIABLES:
            x = theory[name].expand_dims(seed=seeds).copy()
            e = x.copy(data=rng.standard_normal(x.shape))
            shift = xr.where(x["layer"] > 0, bias / width, 0.0)
            if name in SCALE_VARIABLES:
                x = x * (1 + shift) * np.exp(s * e - s**2 / 2)
            elif schema.VARIABLES[name].pairwise:  # corr: exact on the diagonal
                off = x["input"] != x["input_b"]
                x = x + xr.where(off, s * e + shift, 0.0)
            else:  # mean
                x = x + (s * e + shift) * np.sqrt(np.abs(theory["var"]))
            ds[name] = x
        out = xr.Dataset(ds)
        for name, log_name in schema.LOG_NAME.items():
            out[log_name] = _log(out[name])
        parts.append(out.expand_dims(width=[width]))
    out = xr.concat(parts, dim="width").transpose("seed", ...)
    out.attrs = {**theory.attrs, "kind": "montecarlo", "backend": "synthetic",
                 "synthetic_noise": noise}
    return out
