"""Benchmark: this checkout's sigprop against a baseline revision, side by side in one process.

The baseline is ``git archive REV sigprop`` imported as ``sigprop_baseline`` (see
``theory_speed.baseline``). Each call runs once untimed, then ``--repeats`` times
(``--fixed-repeats`` for the fixed-cost rows) interleaved with its baseline twin; the minimum is
kept, so other jobs on the machine inflate the times less than the ratios. The load average is
printed before and after. Calls:

* fixed cost: ``sp.theory`` and ``sp.simulate`` (width 64, one seed) of a net of one Scale op
  (the per-call costs alone: checks, provenance, memory plan, inputs, dataset assembly), and of
  the depth-1 resnet preset (the same plus one residual block of two Dense layers); with jax
  installed, the compiled engine's call at one point, plain relu of depth 1 and 100, forward
  alone and forward + backward (neural-tangents' whole call there is ~0.02 ms); and the
  call of a loop over sigma_w1, a value no call has had each time (a new net);
* the explicit sampler, a plain Dense(sqrt 2)-relu stack, depth 8, 2 seeds, float32, forward +
  backward, at N = 1024 and 4096, B = 2, with the torch loop of ``sigprop bench`` beside it;
* theory rows at one point and on a grid (per layer: ms), tanh's quadrature on a tenth of it;
  with jax installed, the compiled engine (``engine="jax"``) on the grid at depth 1000, Pre-LN
  erf and gelu and the relu resnet, forward alone and forward + backward;
* the first-order finite-width theory (``width=256``) of a plain relu and a Pre-LN tanh net at
  one point, of Pre-LN relu and tanh nets over 10 values of sigma_w1, and of a plain relu net
  over 16, one of them 0 (a stream of zeros there: the walk stops at that point only); of the
  Pre-LN relu net over 100 (where the gradient's adjoint pass dominates) and at one point with
  B = 4 inputs (six pairs, four gradients).

Run: ``python benchmarks/before_after.py --baseline REV [--only SUBSTRING]``.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
from theory_speed import baseline

import sigprop as sp


def calls(m, quick: bool):
    """name -> zero-argument callable, built with the package ``m``."""
    x2 = m.Inputs(q=[1.0, 2.0], corr=0.5)
    out = {
        "theory, one Scale op (fixed cost)": lambda: m.theory(m.Scale(1.0), x2),
        "simulate, one Scale op, N 64, 1 seed (fixed cost)":
            lambda: m.simulate(m.Scale(1.0), x2, 64, 1, backend="numpy"),
        "theory, depth 1, one point (fixed cost)": lambda: m.theory(m.presets.resnet(1), x2),
        "simulate, depth 1, N 64, 1 seed (fixed cost)":
            lambda: m.simulate(m.presets.resnet(1), x2, 64, 1, backend="numpy"),
    }
    for N in (1024,) if quick else (1024, 4096):
        net = m.Repeat(m.Serial(m.Dense(math.sqrt(2.0)), m.Act("relu")), 8)
        out[f"explicit sampler, N {N}, B 2, depth 8, 2 seeds"] = (
            lambda net=net, N=N: m.simulate(net, x2, N, 2, backend="numpy", sampler="explicit"))
    gelu = m.presets.preln(8, act="gelu")  # (a law on true values)
    out["simulate preln gelu, N 1024, B 2, depth 8, 2 seeds"] = (
        lambda: m.simulate(gelu, x2, 1024, 2, backend="numpy"))
    grid = m.sweep("sigma_w1", np.linspace(0.5, 2.0, 1000 if quick else 10_000))
    for preset, act, L, s1 in (("resnet", "relu", 100, None), ("preln", "tanh", 30, None),
                               ("preln", "gelu", 30, None), ("resnet", "relu", 100, grid),
                               ("preln", "erf", 100, grid),
                               ("preln", "tanh", 30, m.sweep("sigma_w1", grid.values[::10]))):
        kw = {} if s1 is None else {"sigma_w1": s1}
        net = m.presets.get(preset)(L, act=act, **kw)
        points = 1 if s1 is None else len(s1.values)
        out[f"theory {preset} {act}, depth {L}, {points} points"] = (
            lambda net=net: m.theory(net, x2))
    if _have("jax"):  # the compiled engine, forward alone and with the backward
        for L in (1, 100):  # (a depth-1 program runs in ~0.05 ms: the rest is the call's)
            net = m.presets.plain(L)
            for backward in (False, True):
                out[f"theory (jax) plain relu, depth {L}, one point, "
                    f"{'forward + backward' if backward else 'forward'} (fixed cost)"] = (
                    lambda net=net, L=L, b=backward: m.theory(net, x2, layers=[L], engine="jax",
                                                              backward=b))
        fresh = iter(np.linspace(1.01, 1.99, 997))  # (a value no call has had: a new net)
        out["theory (jax) resnet relu, depth 100, one point, a new sigma_w1 each call"] = (
            lambda: m.theory(m.presets.resnet(100, sigma_w1=float(next(fresh))), x2,
                             layers=[100], engine="jax"))
        for preset, act in (("preln", "erf"), ("preln", "gelu"), ("preln", "relu"), ("resnet", "relu")):
            net = m.presets.get(preset)(1000, act=act, sigma_w1=grid)
            for backward in (False, True):
                out[f"theory (jax) {preset} {act}, depth 1000, {len(grid.values)} points, "
                    f"{'forward + backward' if backward else 'forward'}"] = (
                    lambda net=net, b=backward: m.theory(net, x2, layers=[0, 1000], engine="jax",
                                                         backward=b))
        net = m.presets.preln(1000, act="relu", sigma_w1=grid)  # (the top layer alone recorded:
        out[f"theory (jax) preln relu, depth 1000, {len(grid.values)} points, layers [1000], "
            "forward + backward"] = (  # the backward runs its last block only)
            lambda net=net: m.theory(net, x2, layers=[1000], engine="jax"))
    top = m.presets.preln(300, act="relu", sigma_w1=m.sweep("sigma_w1", grid.values[::10]))
    out[f"theory preln relu, depth 300, {len(grid.values[::10])} points, layers [150, 300], "
        "forward + backward"] = lambda net=top: m.theory(net, x2, layers=[150, 300])
    few = m.sweep("sigma_w1", np.linspace(1.0, 1.6, 10))
    zero = m.sweep("sigma_w1", [0.0, *np.linspace(1.0, 1.6, 15)])  # a stream of 0 at one point
    for preset, act, L, s1 in (("plain", "relu", 100, None), ("preln", "tanh", 16, None),
                               ("preln", "relu", 20, few), ("preln", "tanh", 20, few),
                               ("plain", "relu", 20, zero)):
        net = m.presets.get(preset)(L, act=act, **({} if s1 is None else {"sigma_w1": s1}))
        points = 1 if s1 is None else len(s1.values)
        out[f"theory at width 256 (finite width), {preset} {act}, depth {L}, {points} points"] = (
            lambda net=net: m.theory(net, x2, width=256))
    many = m.presets.preln(20, sigma_w1=m.sweep("sigma_w1", np.linspace(1.0, 1.6, 100)))
    out["theory at width 256 (finite width), preln relu, depth 20, 100 points"] = (
        lambda net=many: m.theory(net, x2, width=256))  # (the adjoint pass's work per point)
    flat = m.Serial(*[op for _ in range(12) for op in (m.Dense(1.4, 0.2), m.LayerNorm(),
                                                       m.Act("tanh"))])  # (each op a layer:
    out["theory at width 256 (finite width), 12 x (Dense, LayerNorm, tanh) as 36 layers"] = (
        lambda: m.theory(flat, x2, width=256))  # from_torch's; a gradient from each norm)
    x4 = m.Inputs(q=[1.0, 2.0, 0.5, 3.0], corr=0.5)
    net = m.presets.preln(20)
    out["theory at width 256 (finite width), preln relu, depth 20, 1 points, B 4"] = (
        lambda: m.theory(net, x4, width=256))
    return out


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def load() -> str:
    return "load average (1, 5, 15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def torch_loop(N):
    from sigprop.pipeline.bench import _torch_loop

    return lambda: _torch_loop(N, 2, 8, 2, "cpu")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", metavar="REV", default="HEAD")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fixed-repeats", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", metavar="SUBSTRING", default="", help="rows whose name contains it")
    a = ap.parse_args()
    old, new = calls(baseline(a.baseline), a.quick), calls(sp, a.quick)
    have_torch = _have("torch")
    print(load())
    print(f"| call | baseline {a.baseline} (s) | now (s) | baseline / now | torch loop (s) | "
          "now / torch |")
    print("|---|---|---|---|---|---|")
    for name in (n for n in new if a.only in n):
        pair = {"old": old[name], "new": new[name]}
        if have_torch and name.startswith("explicit"):
            pair["torch"] = torch_loop(int(name.split("N ")[1].split(",")[0]))
        for f in pair.values():
            f()
        best = dict.fromkeys(pair, np.inf)
        for _ in range(a.fixed_repeats if "fixed cost" in name else a.repeats):
            for k, f in pair.items():
                t0 = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t0)
        torch_cols = (f"{best['torch']:.4g} | {best['new'] / best['torch']:.3g}" if "torch" in best
                      else "- | -")
        print(f"| {name} | {best['old']:.4g} | {best['new']:.4g} | "
              f"{best['old'] / best['new']:.3g} | {torch_cols} |", flush=True)
    print(load())


if __name__ == "__main__":
    main()
