"""Calibration and power of the spreads' z (``sp.compare(..., variables=["var_log_q", ...])``).

(a) Synthetic samples of known variance: for each seed count S and sample law (normal, t5,
chi^2 with 1 and 4 degrees of freedom, log-normal, uniform; all of variance 1), ``--samples``
samples; z of each sample's variance against sigma^2 = 1 (a correct theory) and against 2 and
1/2 (wrong by a factor 2). z as compare has it (:func:`sigprop.analysis.compare._spread_parts`,
the sample kurtosis floored at 3) and, beside it, with the sample kurtosis alone (the rule
before the floor). Nominal: |z| > 3 at 0.27 %, |z| > 4 at 0.0063 %.
(b) Real nets (``--nets``): a run of many seeds cut into independent runs of S seeds, each
compared with the theory at the run's width; the share of points with |z| > 3, both rules.

    .venv/bin/python benchmarks/spread_calibration.py [--samples 40000] [--nets]
"""

import argparse

import numpy as np
import xarray as xr
from scipy import stats

import sigprop as sp
from sigprop.analysis import compare as C

SEEDS = (16, 32, 50, 100)
LAWS = {  # each of mean 0 and variance 1
    "normal": lambda g, s: g.standard_normal(s),
    "t5": lambda g, s: g.standard_t(5, s) / np.sqrt(5 / 3),
    "chi^2(1)": lambda g, s: (g.chisquare(1, s) - 1) / np.sqrt(2),
    "chi^2(4)": lambda g, s: (g.chisquare(4, s) - 4) / np.sqrt(8),
    "log-normal(0.5)": lambda g, s: ((np.exp(0.5 * g.standard_normal(s)) - np.exp(0.125))
                                     / np.sqrt((np.exp(0.25) - 1) * np.exp(0.25))),
    "uniform": lambda g, s: (g.random(s) - 0.5) * np.sqrt(12),
}


def z_both(x: xr.DataArray, sigma2):
    """z against ``sigma2`` by compare's rule (floored kurtosis) and by the sample kurtosis."""
    v, r = C._spread_parts(x)
    S = x.sizes["seed"]
    c = x - x.mean("seed")
    k = (c**4).mean("seed") / (c**2).mean("seed") ** 2
    r_raw = np.maximum(k - (S - 3) / (S - 1), 1e-300) / S
    return C.spread_z(v, sigma2, r), C.spread_z(v, sigma2, r_raw)


def synthetic(samples: int) -> str:
    g = np.random.default_rng(2026)
    rows = [("| seeds | sample law | sd of z | \\|z\\| > 3 (%) | \\|z\\| > 4 (%) | \\|z\\| > 3 at "
            "sigma^2 x 2, 1/2 (%) | sample kurtosis alone: sd, \\|z\\| > 3, \\|z\\| > 4 (%) |"),
            "|---|---|---|---|---|---|---|"]
    for S in SEEDS:
        for name, law in LAWS.items():
            x = xr.DataArray(law(g, (samples, S)), dims=("sample", "seed"))
            (z, z_raw), (hi, _), (lo, _) = (z_both(x, s2) for s2 in (1.0, 2.0, 0.5))
            rate = (lambda z, k: 100 * float((abs(z) > k).mean()))
            rows.append(f"| {S} | {name} | {float(z.std()):.2f} | {rate(z, 3):.2f} | "
                        f"{rate(z, 4):.3f} | {rate(hi, 3):.0f}, {rate(lo, 3):.0f} | "
                        f"{float(z_raw.std()):.2f}, {rate(z_raw, 3):.2f}, {rate(z_raw, 4):.3f} |")
    return "\n".join(rows)


def nets() -> str:
    x0 = sp.Inputs(q=1.0, corr=0.5, n=2)
    rows = [("| net | width | seeds per run | runs | points | \\|z\\| > 3 (%) | sample kurtosis "
            "alone (%) |"), "|---|---|---|---|---|---|---|"]
    for label, net, width in (("Pre-LN relu, depth 4", sp.presets.preln(4), 64),
                              ("plain tanh MLP, depth 4",
                               sp.presets.plain(4, "tanh", shape="dense_act"), 128)):
        th = sp.theory(net, x0, width=width)
        mc = sp.simulate(net, x0, width=width, seeds=6400, root_seed=7)
        names = [n for n in C.SPREADS if bool(np.isfinite(th[n]).any())]
        for S in (16, 32, 100):
            runs = mc.sizes["seed"] // S
            zs, raws = [], []
            for name in names:
                x = C.spread_samples(mc, name)
                ref = th[name].broadcast_like(x.isel(seed=0))
                cut = (x.isel(seed=slice(0, runs * S)).drop_vars("seed", errors="ignore")
                       .coarsen(seed=S).construct(seed=("run", "one")).rename(one="seed"))
                z, raw = z_both(cut, ref)
                live = np.isfinite(z.values) & (ref.broadcast_like(z).values > 1e-12)
                zs.append(z.values[live])
                raws.append(raw.values[live])
            z, raw = np.concatenate(zs), np.concatenate(raws)
            rows.append(f"| {label} | {width} | {S} | {runs} | {z.size} | "
                        f"{100 * np.mean(abs(z) > 3):.2f} | {100 * np.mean(abs(raw) > 3):.2f} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=40000, help="synthetic samples per row")
    ap.add_argument("--nets", action="store_true", help="also real nets (a 6400-seed run each)")
    args = ap.parse_args()
    print(f"nominal: |z| > 3 at {200 * stats.norm.sf(3):.2f} %, |z| > 4 at "
          f"{200 * stats.norm.sf(4):.4f} %\n")
    print(synthetic(args.samples))
    if args.nets:
        print()
        print(nets())


if __name__ == "__main__":
    main()
