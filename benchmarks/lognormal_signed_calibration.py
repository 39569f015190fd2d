"""Benchmark: the ``lognormal`` estimator's signed and shape tests, false alarms and power.

Calibration: normal log samples y (S seeds x n points) whose true log E X is known, drawn in
shapes that stress the test's law: one point (the point's own z), points moving as one (a
single factor: z is then exactly one point's z at sigma_eff), AR(1) chains over the layers
(rho 0.9 and 0.5, sd rising with the layer from sigma / 5 to sigma) and independent points.
For each seed count and sd, the rate at which :func:`lognormal_signed_flag` fires on the true
theory (nominal ``FAMILY_LEVEL``, two-sided), beside the rate at which z read as Student t
would (the law the mean's test uses), and the rate of the shape test
(``lognormal_shape``, p from :func:`lognormal_shape_p` below the level; the layers are the
points' order), with binomial standard errors. Power: ``synthetic``
lognormal Monte Carlo of a Pre-LN gelu theory (independent points) with every point's log E X
shifted by d per-point standard errors; the share of runs ``summary`` flags DISAGREE with the
signed test and without it (its attrs blanked). The MDE: one point at a known sd, the theory
off by the test's reported MDE (:func:`lognormal_mde_shift` at that sd, times Cox's SE) either
way; the share of runs flagged, 0.8 asked. Run:
``python benchmarks/lognormal_signed_calibration.py [--runs 4000] [--seeds 8 16 32 128]``.
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
from scipy import stats

import sigprop as sp
from sigprop.analysis.compare import (
    FAMILY_LEVEL,
    _lognormal_parts,
    _lognormal_z,
    _shape_components,
    compare,
    lognormal_mde_shift,
    lognormal_shape_p,
    lognormal_signed_flag,
    summary,
    synthetic,
)

SHAPES = ("one point", "one factor, 50 points", "AR(1) 0.9, 50 points",
          "AR(1) 0.5, 50 points", "independent, 20 points")


def draw(rng, shape: str, seeds: int, sigma: float):
    """(y (seeds, n), true log E X per point) of one of :data:`SHAPES`."""
    if shape == "one point":
        sd = np.array([sigma])
        y = rng.standard_normal((seeds, 1)) * sd
    elif shape.startswith("one factor"):
        sd = sigma * np.linspace(0.2, 1, 50)
        y = rng.standard_normal((seeds, 1)) * sd
    elif shape.startswith("AR"):
        rho = float(shape.split()[1].rstrip(","))
        n = np.arange(50)
        root = np.linalg.cholesky(rho ** np.abs(np.subtract.outer(n, n)))
        sd = sigma * np.linspace(0.2, 1, 50)
        y = rng.standard_normal((seeds, 50)) @ root.T * sd
    else:
        sd = np.full(20, sigma)
        y = rng.standard_normal((seeds, 20)) * sd
    return y, sd**2 / 2


def cox_se(seeds: int, sigma: float) -> float:
    """Cox's SE of one point's ybar + s^2 / 2 (``seeds`` normal samples of sd ``sigma``)."""
    return math.sqrt(sigma**2 / seeds + sigma**4 / (2 * (seeds - 1)))


def calibration(runs: int, seeds_list, sigmas):
    rng = np.random.default_rng(20261207)
    print("| shape | seeds | sd of log X | flagged (lognormal law) | flagged (z as Student t) |"
          " shape test flagged |")
    print("|---|---|---|---|---|---|")
    nominal = FAMILY_LEVEL
    for shape in SHAPES:
        for seeds in seeds_list:
            crit = float(stats.t.isf(nominal / 2, seeds - 1))
            for sigma in sigmas:
                own = student = trend = 0
                for _ in range(runs):
                    y, truth = draw(rng, shape, seeds, sigma)
                    w, layer = np.ones(y.shape[1]), np.arange(y.shape[1])
                    # (the arrays lognormal_signed and lognormal_shape reduce their DataArrays
                    # to: tests/test_compare_lognormal_law.py checks the two agree)
                    z, S, sd = _lognormal_z(_lognormal_parts(y, truth, w))
                    own += lognormal_signed_flag(z, S, sd)
                    student += abs(z) > crit
                    zs, sds = _shape_components(y, truth, w, layer)
                    trend += bool(zs) and lognormal_shape_p(zs, sds, S) < nominal
                se = math.sqrt(nominal * (1 - nominal) / runs)
                print(f"| {shape} | {seeds} | {sigma:g} | {own / runs:.4f} | "
                      f"{student / runs:.4f} | {trend / runs:.4f} |", flush=True)
    print(f"\nnominal {nominal:.4f}; binomial se of a rate at it over {runs} runs: {se:.4f}")


def power(runs: int, seeds: int, sigmas, shifts):
    warnings.simplefilter("ignore")
    x0 = sp.Inputs(q=[1.0, 2.25], corr=0.5)
    theory = sp.theory(sp.presets.preln(16, act="gelu", alpha=0.5), x0)
    print(f"\n| sd of log X | shift (per-point se) | flagged with the signed test | without it |"
          f" signed z (mean) | seeds {seeds} |")
    print("|---|---|---|---|---|---|")
    for sigma in sigmas:
        se = cox_se(seeds, sigma)
        for d in shifts:
            wrong = theory.copy(deep=True)
            above = wrong["layer"] > 0
            wrong["log_q"] = wrong["log_q"] - d * se * above  # (the theory below the truth)
            wrong["q"] = np.exp(wrong["log_q"])
            with_signed = without = 0
            zs = []
            for r in range(runs):
                mc = synthetic(theory, seeds=seeds, noise=sigma, root_seed=7000 + r)
                cmp = compare(wrong, mc, variables=["q"], estimator="lognormal")
                zs.append(cmp["q"].attrs["signed_t"])
                with_signed += summary(cmp)[0]["flag"] == "DISAGREE"
                cmp["q"].attrs["signed_t"] = math.nan
                without += summary(cmp)[0]["flag"] == "DISAGREE"
            print(f"| {sigma:g} | {d:g} | {with_signed / runs:.3f} | {without / runs:.3f} | "
                  f"{np.mean(zs):.2f} | |", flush=True)


def mde_power(runs: int, cells=((8, 1.0), (16, 1.0), (32, 0.3), (32, 3.0), (128, 1.0))):
    rng = np.random.default_rng(11)
    print("\n| seeds | sd of log X | MDE / SE | flagged, theory too low | too high |")
    print("|---|---|---|---|---|")
    for seeds, sigma in cells:
        se = cox_se(seeds, sigma)
        mde = lognormal_mde_shift(seeds, sigma) * se
        found = []
        for sign in (1, -1):  # (+1: the theory below the truth)
            theory = np.array([sigma**2 / 2 - sign * mde])
            found.append(np.mean([lognormal_signed_flag(*_lognormal_z(_lognormal_parts(
                sigma * rng.standard_normal((seeds, 1)), theory, np.ones(1))))
                for _ in range(runs)]))
        print(f"| {seeds} | {sigma:g} | {mde / se:.2f} | {found[0]:.3f} | {found[1]:.3f} |",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=4000, help="runs per calibration cell")
    ap.add_argument("--seeds", type=int, nargs="+", default=[8, 16, 32, 128])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0, 10.0])
    ap.add_argument("--power-runs", type=int, default=100)
    ap.add_argument("--power-seeds", type=int, default=32)
    ap.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--mde-runs", type=int, default=2000, help="runs per MDE cell and direction")
    a = ap.parse_args()
    calibration(a.runs, a.seeds, a.sigmas)
    power(a.power_runs, a.power_seeds, [0.3, 1.0], a.shifts)
    mde_power(a.mde_runs)


if __name__ == "__main__":
    main()
