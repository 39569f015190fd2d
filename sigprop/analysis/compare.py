"""Theory versus Monte Carlo: estimates, standard errors and z-scores (``sp.compare``).

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
* ``median``: the median of log X, standard error 1.2533 s_y / sqrt(S) (Gaussian efficiency),
  against theory ``log X``.

``estimator="auto"`` takes ``mean`` for ``mean`` and ``corr`` and for the squared norms (``q``,
``var``, ``grad_q``, ``branch_q``) while they are light-tailed, switching to ``lognormal`` when
the seed spread of log X exceeds :data:`HEAVY_LOG_SD` anywhere.

z = (estimate - theory) / sqrt(se^2 + (rtol * theory)^2): the floor ``rtol`` (default 1e-5,
float32 rounding of Monte Carlo sums) keeps exact entries (layer 0, the diagonal of corr) from
dividing by zero. Under the null z is close to Student t with S - 1 degrees of freedom; the
nominal rate of |z| > k is reported beside the observed one.

Where the theory is exact at any width. For ``E q``: in a net of Dense, ReLU / linear
activations and residual sums with zero-mean weights, E[q' | x] is a linear function of q
(a Dense gives sigma_w^2 q + sigma_b^2 exactly for any N, a ReLU after a Dense gives
sigma_w^2 q / 2 exactly, a residual sum adds the branch with zero cross term since the last
Dense has mean-zero weights independent of x), so E q_L equals the infinite-width recursion by
the tower rule. The feature mean after a Dense has expectation 0 exactly. Correlations,
normalised quantities and gradients (the forward and backward passes share weights) carry an
O(1/N) bias instead.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from sigprop import schema
from sigprop.errors import ConfigError

VARIABLES = schema.PRIMARY  # the log companions are not compared: they are the log estimators
SCALE_VARIABLES = tuple(n for n in VARIABLES if schema.VARIABLES[n].scale)
# comparable only when both nets have the same depth
BACKWARD_VARIABLES = tuple(n for n in VARIABLES if schema.VARIABLES[n].backward)
ESTIMATORS = ("auto", "mean", "lognormal", "logmean", "median")
HEAVY_LOG_SD = 0.25  # seed sd of log X above which the sample mean of X is poorly behaved
DESCRIPTION = {
    "mean": "sample mean over seeds, se = s/sqrt(S), vs theory X",
    "lognormal": "log-moments (Cox): mean(log X) + var(log X)/2, "
                 "se = sqrt(s^2/S + s^4/(2(S-1))), vs theory log X",
    "logmean": "mean of log X over seeds, se = s/sqrt(S), vs theory log X (typical value)",
    "median": "median of log X over seeds, se = 1.2533 s/sqrt(S), vs theory log X",
}
STATS = ("estimate", "stderr", "theory", "z")


def estimate(x: xr.DataArray, estimator: str, dim="seed") -> tuple[xr.DataArray, xr.DataArray]:
    """(estimate, standard error) of one variable over ``dim``; log scale unless ``mean``."""
    S = x.sizes[dim]
    if S < 2:
        raise ConfigError("Monte Carlo seeds", S, ">= 2 to estimate a standard error")
    if estimator == "mean":
        return x.mean(dim), x.std(dim, ddof=1) / np.sqrt(S)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(x)
    s = y.std(dim, ddof=1)
    if estimator == "lognormal":
        s2 = s**2
        return y.mean(dim) + s2 / 2, np.sqrt(s2 / S + s2**2 / (2 * (S - 1)))
    if estimator == "logmean":
        return y.mean(dim), s / np.sqrt(S)
    if estimator == "median":
        return y.median(dim), 1.2533 * s / np.sqrt(S)
    raise ConfigError("estimator", estimator, f"one of {ESTIMATORS}")


def choose(mc: xr.DataArray, name: str, estimator: str = "auto") -> str:
    """The estimator ``auto`` resolves to for variable ``name`` of Monte Carlo samples ``mc``."""
    if estimator != "auto":
        if estimator not in ESTIMATORS:
            raise ConfigError("estimator", estimator, f"one of {ESTIMATORS}")
        return estimator if name in SCALE_VARIABLES else "mean"
    if name not in SCALE_VARIABLES:
        return "mean"
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.log(mc).std("seed", ddof=1)
    return "lognormal" if float(sd.max(skipna=True).fillna(0)) > HEAVY_LOG_SD else "mean"


def compare(theory: xr.Dataset, mc: xr.Dataset, variables=None, estimator: str = "auto",
            rtol: float = 1e-5) -> xr.Dataset:
    """Per variable and layer: Monte Carlo estimate, standard error, theory value, z-score.

    ``theory`` has no ``seed`` dim; ``mc`` has one. They are aligned on their shared dims
    (layer, input, sweeps, arch, ...; inner join), extra Monte Carlo dims such as ``width``
    broadcast against the theory. Each output variable has a leading dim ``stat`` =
    (estimate, stderr, theory, z); its attrs and the dataset's attrs name the estimator.
    When the two depths differ (a shallower Monte Carlo run of the first blocks) the layers are
    matched from the input and gradients are skipped (attrs ``skipped_<name>`` say why).
    """
    if "seed" not in mc.dims:
        raise ConfigError("mc dims", tuple(mc.dims), "a Monte Carlo dataset with a 'seed' dim")
    if "seed" in theory.dims:
        raise ConfigError("theory dims", tuple(theory.dims), "no 'seed' dim (pass theory first)")
    names = [v for v in (variables or VARIABLES) if v in theory and v in mc]
    skipped = {}
    if theory.sizes.get("layer") != mc.sizes.get("layer"):
        for name in [n for n in names if n in BACKWARD_VARIABLES]:
            names.remove(name)
            skipped[name] = (f"the gradient at layer l depends on the depth above l: theory has "
                             f"{theory.sizes.get('layer', 0) - 1} blocks, Monte Carlo "
                             f"{mc.sizes.get('layer', 0) - 1}")
    if not names:
        raise ConfigError("variables", variables, f"some of {VARIABLES} present in both datasets"
                          + (f" (skipped: {skipped})" if skipped else ""))
    th, mc = _align(theory[names], mc[names])
    out, attrs = {}, {}
    for name in names:
        est_name = choose(mc[name], name, estimator)
        est, se = estimate(mc[name], est_name)
        ref = th[name] if est_name == "mean" else _log(th[name])
        scale = np.sqrt(se**2 + (rtol * np.abs(ref)) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = xr.where(est == ref, 0.0, (est - ref) / scale)
        da = xr.concat([est, se, ref.broadcast_like(est), z], dim="stat")
        out[name] = da.assign_coords(stat=list(STATS)).transpose("stat", ...)
        out[name].attrs = {"estimator": est_name, "scale": "linear" if est_name == "mean" else "log"}
        attrs[f"estimator_{name}"] = f"{est_name}: {DESCRIPTION[est_name]}"
    ds = xr.Dataset(out)
    ds.attrs = {"kind": "comparison", "seeds": int(mc.sizes["seed"]), "rtol": rtol,
                "z": "(estimate - theory) / sqrt(stderr^2 + (rtol * theory)^2)", **attrs,
                **{f"skipped_{k}": v for k, v in skipped.items()}}
    return ds


def _log(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _align(th: xr.Dataset, mc: xr.Dataset):
    shared = [d for d in th.dims if d in mc.dims]
    missing = [d for d in th.dims if d not in mc.dims and th.sizes[d] > 1]
    if missing:
        raise ConfigError("theory dims missing from the Monte Carlo dataset", missing,
                          "select one value of each (e.g. theory.sel(alpha=0.5)) before comparing")
    th = th.squeeze([d for d in th.dims if d not in mc.dims], drop=True)
    th, mc = xr.align(th, mc, join="inner", exclude=[d for d in mc.dims if d not in shared])
    empty = [d for d in shared if th.sizes[d] == 0]
    if empty:
        raise ConfigError("shared coordinates", empty, "overlapping values in theory and mc")
    return th, mc


def nominal_rate(k: float, seeds: int) -> float:
    """P(|T| > k) for Student t with seeds - 1 degrees of freedom (the null law of z)."""
    return float(2 * stats.t.sf(k, max(seeds - 1, 1)))


def summary(cmp: xr.Dataset, threshold: float = 3.0) -> list[dict]:
    """One row per variable: points, max |z| and where, rate of |z| > threshold vs nominal."""
    rows = []
    seeds = int(cmp.attrs.get("seeds", 2))
    nominal = nominal_rate(threshold, seeds)
    for name, da in cmp.data_vars.items():
        z = abs(da.sel(stat="z"))
        finite = z.where(np.isfinite(z))
        n = int(finite.count())
        if n == 0:
            rows.append({"variable": name, "estimator": da.attrs["estimator"], "points": 0,
                         "max_z": float("nan"), "where": "", "rate": float("nan"),
                         "nominal": nominal, "flag": "no data"})
            continue
        where = finite.fillna(-1).argmax(...)
        loc = ", ".join(f"{d}={finite[d].values[i].item() if d in finite.coords else int(i)}"
                        for d, i in ((d, int(v)) for d, v in where.items()))
        rate = float((finite > threshold).sum()) / n
        bound = nominal + 3 * np.sqrt(nominal * (1 - nominal) / n) + 1 / n
        rows.append({"variable": name, "estimator": da.attrs["estimator"], "points": n,
                     "max_z": float(finite.max()), "where": loc, "rate": rate,
                     "nominal": nominal, "flag": "DISAGREE" if rate > bound else "ok"})
    return rows


def print_table(cmp: xr.Dataset, threshold: float = 3.0, console=None) -> list[dict]:
    """Print :func:`summary` as a rich table; returns the rows."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = summary(cmp, threshold)
    table = Table(title=f"theory vs Monte Carlo ({cmp.attrs.get('seeds')} seeds, |z| > {threshold})")
    for col in ("variable", "estimator", "points", "max |z|", "at", "rate", "nominal", "flag"):
        table.add_column(col, justify="right" if col in ("points", "max |z|", "rate", "nominal")
                         else "left")
    for r in rows:
        style = "bold red" if r["flag"] == "DISAGREE" else ""
        table.add_row(r["variable"], r["estimator"], str(r["points"]), f"{r['max_z']:.2f}",
                      r["where"], f"{r['rate']:.4f}", f"{r['nominal']:.4f}", r["flag"], style=style)
    console.print(table)
    for key, why in cmp.attrs.items():
        if key.startswith("skipped_"):
            console.print(f"[yellow]{key.removeprefix('skipped_')} not compared[/]: {why}")
    console.print("flag: DISAGREE when the rate of |z| > threshold exceeds the nominal Student-t "
                  "rate by more than 3 binomial standard errors (+1/n); z-scores of neighbouring "
                  "layers are correlated, so read max |z| and its layer too.")
    return rows


def synthetic(theory: xr.Dataset, seeds: int = 32, widths=(256,), noise: float = 0.1,
              root_seed: int = 0) -> xr.Dataset:
    """Monte Carlo-shaped samples whose law is known exactly (for calibration and tests).

    Squared norms are ``x * exp(s e - s^2/2)`` (log-normal, E = x exactly) with
    ``s = noise * sqrt(256 / width)``; ``mean`` and off-diagonal ``corr`` get additive Gaussian
    noise of sd ``s`` (``mean`` scaled by sqrt(var)); log variables are recomputed. Every entry
    is independent, so z-scores of distinct entries are independent.
    """
    rng = np.random.default_rng(root_seed)
    parts = []
    for width in widths:
        s = noise * np.sqrt(256 / width)
        ds = {}
        for name in VARIABLES:
            x = theory[name].expand_dims(seed=seeds).copy()
            e = x.copy(data=rng.standard_normal(x.shape))
            if name in SCALE_VARIABLES:
                x = x * np.exp(s * e - s**2 / 2)
            elif schema.VARIABLES[name].pairwise:  # corr: exact on the diagonal
                off = x["input"] != x["input_b"]
                x = x + xr.where(off, s * e, 0.0)
            else:  # mean
                x = x + s * e * np.sqrt(np.abs(theory["var"]))
            ds[name] = x
        out = xr.Dataset(ds)
        for name, log_name in schema.LOG_NAME.items():
            out[log_name] = _log(out[name])
        parts.append(out.expand_dims(width=[width]))
    out = xr.concat(parts, dim="width").transpose("seed", ...)
    out.attrs = {**theory.attrs, "kind": "montecarlo", "backend": "synthetic",
                 "synthetic_noise": noise}
    return out
