"""Benchmark: ``sp.theory`` at depth 10^4 over a 100 x 100 grid of (sigma_w1, alpha), B = 2.

Forward and backward of a Pre-LN ReLU net; every 100th layer recorded (the numpy engine keeps
sqrt(L) checkpoints; the compiled one keeps no states: its backward's gains ride the forward).
Prints wall time and peak RSS per engine; ``--engine both`` runs the numpy and the compiled
(jax) engines in one process (jax twice: the first call includes tracing and compiling) and
prints their ratio and largest difference. Run: ``python benchmarks/theory_grid.py``.
"""

import argparse
import resource
import time

import numpy as np

import sigprop as sp


def timed(net, x0, layers, engine):
    t0, c0 = time.perf_counter(), time.process_time()
    th = sp.theory(net, x0, layers=layers, engine=engine)
    return th, time.perf_counter() - t0, time.process_time() - c0


def report(label, th, dt, cpu, depth):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    finite = bool(np.isfinite(th.log_q).all() and np.isfinite(th.log_grad_q).all())
    print(f"  {label}: {dt:.1f} s ({dt / depth * 1e3:.2f} ms per layer forward+backward; CPU "
          f"{cpu:.1f} s), peak RSS of the process so far {rss:.2f} GiB, all finite: {finite}")


def largest_difference(a, b) -> float:
    """Largest |a - b| / max(|a|, 1) over log_q and log_grad_q."""
    return max(float(np.max(np.abs(a[v] - b[v]) / np.maximum(np.abs(a[v]), 1.0)))
               for v in ("log_q", "log_grad_q"))


def main(depth=10_000, n=100, preset="preln", engine="numpy"):
    net = sp.presets.get(preset)(depth, sigma_w1=sp.sweep("sigma_w1", np.linspace(0.5, 2.0, n)),
                                 alpha=sp.sweep("alpha", np.linspace(0.01, 1.0, n)))
    x0 = sp.Inputs(q=[1.0, 2.0], corr=0.5)
    layers = range(0, depth + 1, 100)
    print(f"{preset}: depth {depth}, grid {n}x{n} = {n * n} points, B = 2")
    runs = {}
    for e in ("numpy", "jax") if engine == "both" else (engine,):
        if e == "jax":
            th, dt, cpu = timed(net, x0, layers, e)
            report("jax, first call (tracing and compiling included)", th, dt, cpu, depth)
        runs[e] = timed(net, x0, layers, e)
        report(e, *runs[e], depth)
    if len(runs) == 2:
        (a, ta, _), (b, tb, _) = runs["numpy"], runs["jax"]
        print(f"  numpy / jax: {ta / tb:.2f}; largest relative difference of log_q, log_grad_q: "
              f"{largest_difference(a, b):.2g}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--preset", default="preln")
    ap.add_argument("--engine", choices=("numpy", "jax", "both"), default="numpy")
    a = ap.parse_args()
    main(a.depth, a.n, a.preset, a.engine)
