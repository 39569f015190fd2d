"""Sweep scaling: tasks per second, overhead per task, and the speed-up of 2 workers over 1.

Two sweeps of the same sim shape, run side by side in this process on (a) this process (no
dask), (b) a LocalCluster of 1 worker process, (c) one of 2 workers:

* tiny tasks (depth 2, width 8, 1 seed): the time is all overhead (scheduling, pickling, the
  zarr region write and the marker); overhead per task = wall x workers / tasks - mean compute.
* a sweep large enough to amortise it (depth ``--depth``, width ``--width``): the speed-up
  wall(1 worker) / wall(2 workers).

Each cluster is started and warmed (one task per worker imports sigprop) before timing.
Usage: python benchmarks/sweep_scaling.py [--depth 400] [--width 256] [--seeds 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster

from sigprop.pipeline.config import Sim
from sigprop.pipeline.sweep import sweep_run

SIM = """
description = "sweep scaling"
[[arch]]
label = "Pre-LN"
preset = "preln"
act = "relu"
[[arch]]
label = "Post-LN"
preset = "postln"
act = "relu"
[inputs]
q = 1.0
corr = 0.5
n = 2
[sweeps]
alpha = [0.25, 0.5, 0.75, 1.0]
[profiles.quick]
depth = {depth}
widths = [{width}]
seeds = {seeds}
[profiles.paper]
depth = 2
"""


def timed(sim, folder: Path, name: str, **where) -> tuple[float, int, float]:
    """(wall seconds, tasks, mean compute seconds per task) of one Monte Carlo sweep."""
    start = time.perf_counter()
    report = sweep_run(sim, folder / f"{name}.zarr", theory=False, seed_chunk=1, **where)
    wall = time.perf_counter() - start
    n = report.computed["montecarlo"]
    return wall, n, sum(report.task_seconds) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=400)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sims = {}
        for label, depth, width, seeds in (("tiny", 2, 8, 16), ("large", args.depth, args.width,
                                                                 args.seeds)):
            path = folder / f"{label}.toml"
            path.write_text(SIM.format(depth=depth, width=width, seeds=seeds))
            sims[label] = Sim.load(path)
        rows = {}
        for label, sim in sims.items():
            rows[(label, "here")] = timed(sim, folder, f"{label}-here")
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                timed(sims["tiny"], folder, f"warm-{workers}", client=client)
                for label, sim in sims.items():
                    rows[(label, workers)] = timed(sim, folder, f"{label}-{workers}",
                                                   client=client)
    print("| sweep | where | tasks | wall s | tasks/s | compute s/task | overhead s/task |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (label, where), (wall, n, compute) in rows.items():
        w = 1 if where == "here" else where
        name = "this process" if where == "here" else f"{where} worker(s)"
        print(f"| {label} | {name} | {n} | {wall:.2f} | {n / wall:.1f} | {compute:.4f} | "
              f"{wall * w / n - compute:.4f} |")
    for label in sims:
        print(f"speed-up {label}: 2 workers / 1 worker = "
              f"{rows[(label, 1)][0] / rows[(label, 2)][0]:.2f}x; "
              f"2 workers / this process = {rows[(label, 'here')][0] / rows[(label, 2)][0]:.2f}x")


if __name__ == "__main__":
    main()
