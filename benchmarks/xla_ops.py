"""Benchmark: what XLA's CPU backend makes of the compiled engine's elementwise work (float64).

* ``--per-op``: ns per float64 of one jitted op over 2 x 10^6 numbers (minimum of 5): the
  transcendentals the closed-form kernels use (asin, acos, atan, atan2, log, exp, sqrt), and
  the compiled engine's own atan2 (``sigprop.state.ns._atan2``) and acos.
* ``--slices``: whether an op's bits depend on the array's length. Each op runs on an array of
  4096 numbers and on slices of 1 to 16 of its first 64; the count is of values that differ
  from the same elements of the whole run (0: a grid point's bits do not depend on the grid).
* ``--census``: the forward scan body of Pre-LN erf and of the relu resnet (B = 2, 5000 points,
  one program of :mod:`sigprop.engines.compiled`), from XLA's optimised HLO: its fusions, and
  the elementwise operations they hold, counted by output size per grid point.
* ``--shards``: one thread, Pre-LN erf, depth 400, forward alone: ns per point-layer at 256 to
  8192 points (is the program bound by memory, so that smaller pieces of the grid would pay?).

jax is an optional extra (``make jax-cpu``); without it this script says so and exits with
status 0. Run: ``python benchmarks/xla_ops.py [--per-op] [--slices] [--census] [--shards]``
(no option: all four).
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import numpy as np
from compiled_speed import CORR0, Q0, Row, net_of

import sigprop as sp

LOGIC = {"compare", "select", "and", "or", "not"}
FREE = {"parameter", "constant", "bitcast", "broadcast", "reshape", "slice", "concatenate",
        "tuple", "get-tuple-element", "convert", "copy", "transpose", "iota", "dynamic-slice",
        "dynamic-update-slice"}


def _ops(jnp, jsp):
    """name -> one-array function, each op on numbers in (0.01, 0.99) (atan2 of two arrays, and
    of an array and a constant, which XLA folds; the compiled engine's own atan2 of two arrays,
    :func:`sigprop.state.ns._atan2`, and the acos it makes of it)."""
    from sigprop.state.ns import jax_namespace

    return {"add": lambda x: x + 1.0, "sqrt": jnp.sqrt, "exp": jnp.exp, "log": jnp.log,
            "log1p": jnp.log1p, "expm1": jnp.expm1, "asin": jnp.arcsin, "acos": jnp.arccos,
            "atan": jnp.arctan, "atan2 (two arrays)": lambda x: jnp.arctan2(x, 1.3 - x),
            "atan2 (sigprop's, two arrays)": lambda x: jax_namespace().atan2(x, 1.3 - x),
            "acos (sigprop's)": lambda x: jax_namespace().acos(x),
            "atan2 (array, 1)": lambda x: jnp.arctan2(x, jnp.ones_like(x)),
            "tanh": jnp.tanh, "erf": jsp.erf}


def per_op(jax, jnp, jsp):
    x = jnp.asarray(np.random.default_rng(0).uniform(0.01, 0.99, 2_000_000))
    print("| op | ns per float64 |\n|---|---|")
    for name, f in _ops(jnp, jsp).items():
        g = jax.jit(f)
        g(x).block_until_ready()
        best = np.inf
        for _ in range(5):
            t = time.perf_counter()
            g(x).block_until_ready()
            best = min(best, time.perf_counter() - t)
        print(f"| {name} | {best / x.size * 1e9:.2f} |")


def slices(jax, jnp, jsp):
    x = np.random.default_rng(0).uniform(0.01, 0.99, 4096)
    print("| op | values that differ over slices of 1-16 (of 64 x 6 sizes) |\n|---|---|")
    for name, f in _ops(jnp, jsp).items():
        g = jax.jit(lambda v, f=f: f(v * 1.0000001))
        whole = np.asarray(g(jnp.asarray(x)))
        differ = sum(int(np.sum(np.asarray(g(jnp.asarray(x[i:i + n]))) != whole[i:i + n]))
                     for n in (1, 3, 4, 7, 8, 16) for i in range(0, 64, n))
        print(f"| {name} | {differ} |")


def _op_counts(text: str, points: int) -> tuple[int, collections.Counter]:
    """(fusions, op -> count per grid point) of the loop body of an optimised HLO module: the
    non-entry computation that calls the most fusions, its fusions' operations counted by
    output size over ``points``."""
    comps = {}
    for block in re.split(r"\n(?=\S.*\{\n)", text):
        m = re.match(r"(ENTRY )?%?(\S+) ", block)
        if m:
            comps[m.group(2)] = (block, bool(m.group(1)))
    body = max((b for b, entry in comps.values() if not entry),
               key=lambda b: len(re.findall(r" fusion\(", b)))
    counts: collections.Counter = collections.Counter()
    todo = re.findall(r"calls=%?([\w.\-]+)", body)
    while todo:
        for line in comps.get(todo.pop(), ("", False))[0].split("\n")[1:]:
            m = re.match(r"\s*(?:ROOT )?\S+ = (\S+) ([\w\-]+)\(", line)
            if m:
                dims = re.findall(r"\[([\d,]*)\]", m.group(1))
                size = np.prod([int(d) for d in dims[0].split(",")]) if dims and dims[0] else 1
                counts[m.group(2)] += size / points
                todo += re.findall(r"calls=%?([\w.\-]+)", line)
    return len(re.findall(r" fusion\(", body)), counts


def census(jax):
    from sigprop.engines import compiled
    from sigprop.ops import layers_of, sweeps_of

    print("| net | fusions per layer | arithmetic ops per point-layer | compare/select/and/or "
          "| largest arithmetic kinds |\n|---|---|---|---|---|")
    for row in (Row("preln", "erf", 10, 5000), Row("resnet", "relu", 10, 5000)):
        net, x0 = net_of(row), sp.Inputs(q=list(Q0), corr=CORR0)
        s0, grid, blocks = x0.moments(), sweeps_of(net), layers_of(net)
        with compiled._x64(jax):
            prog, _ = compiled._trace(net, compiled._runs(blocks), len(blocks), grid, s0.law,
                                      x0.n, (0, row.depth), row.points, None, backward=False)
            values = tuple(np.asarray(s.values) for s in grid.values())
            text = jax.jit(prog).lower(values, s0.K, s0.m, s0.ls).compile().as_text()
        fusions, counts = _op_counts(text, row.points)
        arith = {k: v for k, v in counts.items() if k not in FREE | LOGIC and k != "fusion"}
        top = ", ".join(f"{k} {v:.0f}" for k, v in sorted(arith.items(), key=lambda kv: -kv[1])[:8])
        print(f"| {row.preset} {row.act} | {fusions} | {sum(arith.values()):.0f} | "
              f"{sum(counts[k] for k in LOGIC):.0f} | {top} |")


def shards():
    from sigprop.engines import compiled

    compiled.SHARD_POINTS = 10**9  # one thread
    depth = 400
    print("| points | ns per point-layer |\n|---|---|")
    for points in (256, 512, 1024, 2048, 4096, 8192):
        net, x0 = net_of(Row("preln", "erf", depth, points)), sp.Inputs(q=list(Q0), corr=CORR0)

        def run(net=net, x0=x0):
            return sp.theory(net, x0, layers=[0, depth], engine="jax", backward=False)

        run()
        best = np.inf
        for _ in range(3):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        print(f"| {points} | {best * 1e9 / (points * depth):.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for part, text in (("per-op", "ns per float64 of one jitted op"),
                       ("slices", "whether an op's bits depend on the array's length"),
                       ("census", "the forward scan body's fusions and operations (HLO)"),
                       ("shards", "one thread's ns per point-layer at 256-8192 points")):
        ap.add_argument(f"--{part}", action="store_true", help=text)
    a = ap.parse_args()
    try:
        import jax
        import jax.numpy as jnp
        import jax.scipy.special as jsp
    except ImportError:
        print("jax is not installed (pip install 'sigprop[jax]'); nothing to measure.")
        return
    every = not (a.per_op or a.slices or a.census or a.shards)
    jax.config.update("jax_enable_x64", True)
    if every or a.per_op:
        per_op(jax, jnp, jsp)
    if every or a.slices:
        slices(jax, jnp, jsp)
    if every or a.census:
        census(jax)
    if every or a.shards:
        shards()


if __name__ == "__main__":
    main()
