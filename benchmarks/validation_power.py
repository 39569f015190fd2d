"""Calibration and power of the per-op Monte Carlo checks (:mod:`sigprop.testing`).

(a) Calibration: ``--cal-reps`` (>= 200) independent Monte Carlo runs of the ``Act(relu)`` probe
(Dense -> relu, where E q, the mean and the gradient are exact at any width and corr carries an
O(1/N) bias that the extrapolation removes), each checked against the correct theory; the share
of family p-values below 1e-2 and 1e-3 (nominal: at most that), with 95 % Clopper-Pearson
intervals. Sized by ``--cal-seeds`` (seeds per width; the law of z does not depend on it).
(b) Power: for every probe (every op and activation), ``--reps`` Monte Carlo runs at the default
test budget (``sigprop.testing.SEEDS`` seeds at ``WIDTHS``); each is checked against the theory
with the op's forward or backward law scaled by 1 + eps per block, eps in 0.2 %, 1 %, 5 %; the
share rejected at the test's level ``ALPHA`` = 1e-3 and the median |z| of the worst point.
Writes its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/validation_power.py [--reps 3] [--cal-reps 200] [--cal-seeds 256]
"""

import argparse
import time

import numpy as np

from sigprop import testing as T
from sigprop.pipeline.bench import write_section

EPS = (0.002, 0.01, 0.05)
LEVELS = (1e-2, 1e-3)


def _z(result) -> float:
    return abs(float(result.worst.rsplit("=", 1)[-1])) if "=" in result.worst else np.inf


def calibration(reps: int, seeds: int) -> str:
    net = T.probes()["Act(relu)"]
    p = []
    for rep in range(reps):
        p.append(T.check(net, T.simulate_widths(net, seeds=seeds, root_seed=10_000 + rep)).p)
    p = np.array(p)
    rows = ["| nominal level | rejected | rate | 95 % interval |", "|---|---|---|---|"]
    for level in LEVELS:
        rate, lo, hi = T.rejection_rate(p < level)
        rows.append(f"| {level:g} | {int(np.sum(p < level))} / {reps} | {rate:.4f} | "
                    f"[{lo:.4f}, {hi:.4f}] |")
    return "\n".join(rows)


def power(reps: int) -> str:
    head = "| probe | face | " + " | ".join(f"eps = {e:.1%}" for e in EPS) + " |"
    rows = [head, "|---|---|" + "---|" * len(EPS)]
    probes = T.probes()
    for i, (name, net) in enumerate(probes.items()):
        mcs = [T.simulate_widths(net, root_seed=20_000 + 100 * i + r) for r in range(reps)]
        cls, where = T.target(name)
        for face in ("forward", "backward"):
            cells = []
            for eps in EPS:
                with T.mutate(cls, face, eps, where):
                    res = [T.check(net, mc) for mc in mcs]
                hit = sum(r.rejects() for r in res)
                cells.append(f"{hit}/{reps} (z {np.median([_z(r) for r in res]):.1f})")
            rows.append(f"| {name} | {face} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cal-reps", type=int, default=200)
    ap.add_argument("--cal-seeds", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/RESULTS.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cal = calibration(args.cal_reps, args.cal_seeds)
    print(cal, flush=True)
    t1 = time.perf_counter()
    pw = power(args.reps)
    t2 = time.perf_counter()
    body = (
        f"`benchmarks/validation_power.py` (probes of `sigprop.testing`: {T.DEPTH} blocks "
        f"Dense -> op, {T.PROBE_INPUTS.n} inputs, widths {T.WIDTHS} extrapolated as "
        "T_inf + a/N, family p-value Bonferroni over q, mean, corr at the last layer and "
        "grad_q at the input).\n\n"
        f"**Calibration**: {args.cal_reps} independent runs of the Act(relu) probe "
        f"({args.cal_seeds} seeds per width) against the correct theory; rejection rate at "
        f"each nominal family level, 95 % Clopper-Pearson interval ({t1 - t0:.0f} s).\n\n"
        f"{cal}\n\n"
        f"**Power**: detected / runs ({args.reps} independent Monte Carlo runs per probe at the "
        f"default test budget, {T.SEEDS} seeds per width, level {T.ALPHA:g}) and the median "
        "|z| of the worst point, for the op's law scaled by 1 + eps per occurrence per block "
        f"({t2 - t1:.0f} s).\n\n{pw}\n")
    write_section(args.out, "Per-op checks: calibration and power", body)


if __name__ == "__main__":
    main()
