"""Benchmark: ``sp.theory`` at depth 10^4 over a 100 x 100 grid of (sigma_w1, alpha), B = 2.

Forward and backward of a Pre-LN ReLU net; every 100th layer recorded (the backward keeps
sqrt(L) checkpoints). Prints wall time and peak RSS. Run: ``python benchmarks/theory_grid.py``.
"""

import argparse
import resource
import time

import numpy as np

import sigprop as sp


def main(depth=10_000, n=100, preset="preln"):
    net = sp.presets.get(preset)(depth, sigma_w1=sp.sweep("sigma_w1", np.linspace(0.5, 2.0, n)),
                                 alpha=sp.sweep("alpha", np.linspace(0.01, 1.0, n)))
    x0 = sp.Inputs(q=[1.0, 2.0], corr=0.5)
    t0, c0 = time.perf_counter(), time.process_time()
    th = sp.theory(net, x0, layers=range(0, depth + 1, 100))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    finite = bool(np.isfinite(th.log_q).all() and np.isfinite(th.log_grad_q).all())
    print(f"{preset}: depth {depth}, grid {n}x{n} = {n * n} points, B = 2: {dt:.1f} s "
          f"({dt / depth * 1e3:.2f} ms per layer forward+backward; CPU {cpu:.1f} s), peak RSS {rss:.2f} GiB, "
          f"all finite: {finite}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=10_000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--preset", default="preln")
    a = ap.parse_args()
    main(a.depth, a.n, a.preset)
