"""Benchmark: the compiled theory engine (``engine="jax"``) against the numpy engine, one process.

Each row runs ``sp.theory(net, inputs, layers=[0, L])`` both ways, interleaved, and keeps the
minimum of ``--repeats`` runs; the compiled engine's first call (tracing and XLA compilation)
is reported apart. B = 2 inputs (q = 1, 2; corr 0.5), the grid one ``sp.sweep`` of sigma_w1 over
[1, 2] (one point: sigma_w1 = sqrt 2), as in ``theory_speed.py``. Agreement: the largest
relative difference of log q_L and of log grad_q_0 over the grid (the issue asks 1e-12).

jax is an optional extra (``pip install 'sigprop[jax]'``, ``make jax-cpu``); without it this
script says so and exits with status 0. Run: ``python benchmarks/compiled_speed.py [--quick]``;
``--host``: the nets whose laws the compiled program calls back to the host for (quadrature
activations, BatchNorm), depth 100 (Pre-BN on Gaussian inputs).
``--forward-only``: ``backward=False``, both engines.
``--ops``: instead, the traced operations (jaxpr equations) of one layer of each net, grouped
by the law that emits them (the innermost op method on the call stack; the engine's own steps
by name): the forward loop's body alone (``backward=False``) and with the backward's gains (a
net without BatchNorm, whose backward rides the forward), or the reverse scan's body (one with).
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings

import numpy as np
from theory_speed import CORR0, EPS, Q0, Row, sigma_w1  # the rows' nets, as theory_speed's

import sigprop as sp
from sigprop.errors import FiniteWidthWarning

ROWS = (Row("resnet", "relu", 1000, 1), Row("resnet", "relu", 1000, 10_000),
        Row("preln", "erf", 1000, 1), Row("preln", "erf", 1000, 10_000))
QUICK = (Row("resnet", "relu", 100, 1), Row("resnet", "relu", 100, 1000),
         Row("preln", "erf", 100, 1), Row("preln", "erf", 100, 1000))
HOST = tuple(Row(preset, act, 100, points) for preset, act in
             (("preln", "tanh"), ("preln", "silu"), ("prebn", "relu")) for points in (1, 100))


def net_of(row: Row):
    s = sigma_w1(row.points)
    s1 = sp.sweep("sigma_w1", s) if row.points > 1 else float(s[0])
    kw = {"eps": EPS} if row.preset == "preln" else {}
    return sp.presets.get(row.preset)(row.depth, act=row.act, sigma_w1=s1, **kw)


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def measure(row: Row, repeats: int, backward: bool = True) -> dict:
    law = "gaussian" if row.preset == "prebn" else "fixed"  # BatchNorm needs Gaussian inputs
    net, x0 = net_of(row), sp.Inputs(q=list(Q0), corr=CORR0, law=law)

    def run(engine):
        return lambda: sp.theory(net, x0, layers=[0, row.depth], engine=engine, backward=backward)

    first, _ = timed(run("jax"))
    best = {"numpy": np.inf, "jax": np.inf}
    out = {}
    for _ in range(repeats):
        for engine in ("numpy", "jax"):
            t, out[engine] = timed(run(engine))
            best[engine] = min(best[engine], t)
    a, b = out["numpy"], out["jax"]

    def rel(name, layer):
        u, v = (d[name].sel(layer=layer).values for d in (a, b))
        return float(np.max(np.abs(u - v) / np.maximum(np.abs(u), 1.0)))

    return {"first": first, **best, "log_q": rel("log_q", row.depth),
            "log_grad_q": rel("log_grad_q", 0) if backward else np.nan}


def _law(frames) -> str:
    """The law an equation comes from: the innermost op method (Residual: its mixing), the
    state helpers the engine calls itself (to_unit_diagonal, the weight-gradient sink), or the
    engine's own step (the finiteness check)."""
    helper = None
    for fr in frames:  # innermost first
        where, fn = fr.file_name, fr.function_name
        if where.endswith("engines/compiled.py"):
            return helper or fn.rsplit(".", 1)[-1]
        if "sigprop/ops/" in where and "." in fn and fn.split(".")[0] not in ("Op", "Serial"):
            return "Residual mixing" if fn == "Residual._mix" else fn.split(".")[0]
        if helper is None and fn.endswith(("to_unit_diagonal", "_log_diag", "log_diag", "dense",
                                           "take")) and "sigprop/" in where:
            helper = fn.rsplit(".", 1)[-1] if "to_unit" in fn else "WeightGrads sink"
    return helper or "other (jax)"


def ops_per_layer(row: Row) -> dict:
    """{'forward'|'forward with gains'|'backward'...: Counter(law -> equations)} of the loop
    bodies over the copies."""
    import jax

    from sigprop.engines import compiled
    from sigprop.ops import layers_of, sweeps_of

    law = "gaussian" if row.preset == "prebn" else "fixed"  # BatchNorm needs Gaussian inputs
    net, x0 = net_of(row), sp.Inputs(q=list(Q0), corr=CORR0, law=law)
    s0, grid, blocks = x0.moments(), sweeps_of(net), layers_of(net)
    found: dict = {}
    gains = compiled._diagonal(net)

    def walk(j, into, forward):
        for e in j.eqns:
            subs = [getattr(v, "jaxpr", v) for v in e.params.values() if hasattr(v, "jaxpr")]
            if e.primitive.name == "cond" and into is not None:  # a copy's backward: the
                # recorded branch (true, the last) as the layer's count, the other apart
                walk(e.params["branches"][-1].jaxpr, into, forward)
                walk(e.params["branches"][0].jaxpr,
                     found.setdefault("backward, not recorded", collections.Counter()), forward)
            elif e.primitive.name == "while" and into is None:  # a forward loop over copies
                # without a record: the last one counts, the settled run's (the first copy,
                # unrolled, has a loop of its own; the recorded copies' body is apart, uncounted)
                found[forward] = collections.Counter()
                walk(e.params["body_jaxpr"].jaxpr, found[forward], forward)
            elif e.primitive.name == "scan" and e.params["reverse"] and e.params["length"] > 1:
                walk(subs[0], found.setdefault("backward", collections.Counter()), forward)
            elif subs:
                for sub in subs:
                    walk(sub, into, forward)
            elif into is not None:
                tb = e.source_info.traceback
                into[_law(tb.frames if tb else ())] += 1

    for backward in (False, True):
        with compiled._x64(jax):
            prog, _ = compiled._trace(net, compiled._runs(blocks), len(blocks), grid, s0.law,
                                      x0.n, (0, row.depth), row.points, None, backward)
            values = tuple(np.asarray(s.values) for s in grid.values())
            jaxpr = jax.make_jaxpr(prog)(values, s0.K, s0.m, s0.ls).jaxpr
        walk(jaxpr, None, "forward with gains" if backward and gains else "forward")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="depth 100, 1000 points")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ops", action="store_true", help="traced operations per layer, by law")
    ap.add_argument("--forward-only", action="store_true", help="the forward pass alone "
                    "(backward=False: the computation neural-tangents does)")
    ap.add_argument("--host", action="store_true", help="the laws run on the host from the "
                    "compiled program (tanh, silu quadrature; Pre-BN's t-integrals), depth 100")
    a = ap.parse_args()
    try:
        import jax  # noqa: F401
    except ImportError:
        print("jax is not installed (pip install 'sigprop[jax]'); nothing to measure.")
        return
    if a.ops:
        print("| net | direction | equations per layer | by law |\n|---|---|---|---|")
        for row in (Row("resnet", "relu", 10, 4), Row("preln", "erf", 10, 4)):
            for direction, count in ops_per_layer(row).items():
                laws = ", ".join(f"{k} {v}" for k, v in count.most_common())
                print(f"| {row.preset} {row.act} | {direction} | {sum(count.values())} | {laws} |")
        return
    print("| net | depth | points | numpy (s) | jax (s) | jax compile (s) | numpy ns/pt-layer "
          "| jax ns/pt-layer | numpy / jax | max rel d log q_L | max rel d log grad_q_0 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    warnings.simplefilter("ignore", FiniteWidthWarning)  # Pre-BN at B = 2: not timed here
    for row in HOST if a.host else QUICK if a.quick else ROWS:
        r = measure(row, a.repeats, backward=not a.forward_only)
        n = row.depth * row.points
        print(f"| {row.preset} {row.act} | {row.depth} | {row.points} | {r['numpy']:.4g} | "
              f"{r['jax']:.4g} | {r['first'] - r['jax']:.3g} | {r['numpy'] / n * 1e9:.4g} | "
              f"{r['jax'] / n * 1e9:.4g} | {r['numpy'] / r['jax']:.3g} | {r['log_q']:.2g} | "
              f"{r['log_grad_q']:.2g} |", flush=True)


if __name__ == "__main__":
    main()
