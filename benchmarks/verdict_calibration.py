"""Benchmark: how often ``summary``'s DISAGREE flag fires on a correct theory, and on a wrong one,
this checkout against a baseline revision, on the same Monte Carlo runs.

The net: Pre-LN gelu (alpha 0.5, inputs q = 1 and 2.25, corr 0.5) of depth ``--depth``,
simulated at width 128 over ``--runs`` root seeds for each seed count in ``--seeds``; the
theory: ``sp.theory(net, inputs, width=128)`` (its first-order correction at the run's width,
so the comparison is correct up to O(1/N^2)). Wrong theories: above the inputs (layer 0,
exact; with ``--top K`` the top K blocks' layers alone), q and log q scaled by 1 + d and
corr's off-diagonal shifted by d, for each d in ``--shifts``. Each comparison is made by both
packages' ``compare`` and ``summary``; the table counts the runs flagged DISAGREE per variable
(false alarms at d = 0, power above). Run:
``python benchmarks/verdict_calibration.py [--baseline REV] [--runs 20]``.
"""

from __future__ import annotations

import argparse
import importlib
import warnings

import numpy as np
from theory_speed import baseline

import sigprop as sp

VARIABLES = ["q", "var", "corr", "grad_q"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", metavar="REV", default="HEAD")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.005, 0.01])
    ap.add_argument("--top", type=int, default=None, metavar="K",
                    help="shift the top K layers alone (default: every layer above the inputs)")
    a = ap.parse_args()
    if a.top is not None and not 1 <= a.top <= a.depth:
        ap.error(f"--top {a.top}: between 1 and --depth ({a.depth}); layer 0's inputs are exact")
    old = baseline(a.baseline)
    warnings.simplefilter("ignore")
    x0 = sp.Inputs(q=[1.0, 2.25], corr=0.5)
    net = sp.presets.preln(a.depth, act="gelu", alpha=0.5)
    theory = sp.theory(net, x0, width=128)
    print(f"| seeds | shift d | package | {' | '.join(VARIABLES)} |")
    print("|---|---|---|" + "---|" * len(VARIABLES))
    for seeds in a.seeds:
        runs = [sp.simulate(net, x0, 128, seeds, backend="numpy", root_seed=3000 + r)
                for r in range(a.runs)]
        for d in a.shifts:
            wrong = theory.copy(deep=True)
            # (the inputs are exact: a shift there is found at once)
            above = wrong["layer"] > (0 if a.top is None else a.depth - a.top)
            wrong["q"] = wrong["q"] * (1 + d * above)
            wrong["log_q"] = wrong["log_q"] + np.log1p(d) * above
            wrong["corr"] = wrong["corr"] + d * (wrong["input"] != wrong["input_b"]) * above
            for label, m in ((f"baseline {a.baseline}", old), ("now", sp)):
                flagged = dict.fromkeys(VARIABLES, 0)
                for mc in runs:
                    cmp = m.compare(wrong, mc, variables=VARIABLES)
                    summary = importlib.import_module(f"{m.__name__}.analysis.compare").summary
                    for row in summary(cmp):
                        flagged[row["variable"]] += row["flag"] == "DISAGREE"
                print(f"| {seeds} | {d} | {label} | "
                      + " | ".join(f"{flagged[v]}/{a.runs}" for v in VARIABLES) + " |",
                      flush=True)


if __name__ == "__main__":
    main()
