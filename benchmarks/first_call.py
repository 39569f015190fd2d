"""Benchmark: the compiled engine's first call in a process, with and without the programs an
earlier process compiled (jax's persistent cache in ``SIGPROP_JAX_CACHE``).

A net's first ``sp.theory(..., engine="jax")`` in a process traces its laws and has XLA compile
them; a later call in the same process reuses the program. Each row runs its call in fresh
processes, three ways, interleaved, ``--repeats`` times (minimum kept):

* ``off``: ``SIGPROP_JAX_CACHE=off``, every process compiles (the behaviour before the cache);
* ``cold``: an empty cache folder, which the process fills;
* ``warm``: the folder the cold process filled (what every later process on the machine sees).

Times are the call's alone (measured inside the process, import excluded). Run:
``python benchmarks/first_call.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

RUN = """
import time, numpy as np, sigprop as sp
grid = sp.sweep("sigma_w1", np.linspace(1.0, 2.0, {points}))
net = sp.presets.get("{preset}")({depth}, act="{act}", sigma_w1=grid)
t = time.perf_counter()
sp.theory(net, sp.Inputs(q=[1.0, 2.0], corr=0.5), layers=[0, {depth}], engine="jax")
print(time.perf_counter() - t)
"""
ROWS = (("resnet", "relu", 300, 2000), ("preln", "erf", 300, 2000), ("preln", "gelu", 100, 100),
        ("postln", "relu", 1000, 1))


def first_call(row, folder: str) -> float:
    preset, act, depth, points = row
    env = {**os.environ, "SIGPROP_JAX_CACHE": folder}
    out = subprocess.run([sys.executable, "-c", RUN.format(preset=preset, act=act, depth=depth,
                                                           points=points)],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print("| net | depth | points | off (s) | cold (s) | warm (s) | off / warm |")
    print("|---|---|---|---|---|---|---|")
    for row in ROWS:
        best = dict.fromkeys(("off", "cold", "warm"), float("inf"))
        for _ in range(a.repeats):
            with tempfile.TemporaryDirectory() as folder:
                for way, where in (("off", "off"), ("cold", folder), ("warm", folder)):
                    best[way] = min(best[way], first_call(row, where))
        preset, act, depth, points = row
        print(f"| {preset} {act} | {depth} | {points} | {best['off']:.3g} | {best['cold']:.3g} | "
              f"{best['warm']:.3g} | {best['off'] / best['warm']:.3g} |", flush=True)


if __name__ == "__main__":
    main()
