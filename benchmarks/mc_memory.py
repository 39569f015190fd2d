"""Peak memory of sp.simulate with gradients at depth 10^4, width 1024, 4 seeds, on the CPU.

Measured two ways: tracemalloc's peak (every NumPy buffer and Python object allocated during the
run) and the growth of the process's maximum resident set (ru_maxrss). Compared with the memory
law of sigprop.engines.montecarlo, and with what keeping every block's residuals (no checkpoints) would
take. Writes its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/mc_memory.py [--depth 10000] [--width 1024] [--seeds 4]
"""

import argparse
import resource
import time
import tracemalloc

import sigprop as sp
from sigprop.engines.montecarlo import memory_per_seed
from sigprop.engines.samplers import SAMPLERS
from sigprop.ops import layers_of
from sigprop.pipeline.bench import write_section


def main(depth=10_000, width=1024, seeds=4, out="benchmarks/RESULTS.md"):
    net = sp.presets.preln(depth, act="relu")
    x0 = sp.Inputs(q=[1.0, 2.25], corr=0.5)
    sp.simulate(sp.presets.preln(2, act="relu"), x0, width, seeds, backend="numpy")  # warm up
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    t = time.perf_counter()
    ds = sp.simulate(net, x0, width, seeds, backend="numpy")
    wall = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    blocks = layers_of(net)
    law = seeds * memory_per_seed(blocks, x0.n, width, 4, SAMPLERS["conditional"])
    law_explicit = seeds * memory_per_seed(blocks, x0.n, width, 4, SAMPLERS["explicit"])
    r = 2 * blocks[0].mc_ops()
    no_ckpt = seeds * 4 * x0.n * width * depth * (r + 1)
    finite = bool(ds.log_grad_q.notnull().all())
    md = "\n".join([
        (f"`benchmarks/mc_memory.py`: pre-LN relu, depth {depth}, width {width}, {seeds} seeds, "
        f"B = {x0.n}, float32, conditional sampler, NumPy, forward + checkpointed backward "
        f"(every {int(depth ** 0.5)} blocks), gradients finite at every layer: {finite}."),
        "",
        "| quantity | value |", "|---|---|",
        f"| tracemalloc peak (all arrays of the run) | {peak / 2**20:.1f} MiB |",
        f"| growth of max RSS during the run | {max(0, rss - rss0) / 2**20:.1f} MiB |",
        f"| max RSS of the process (Python, NumPy, libraries included) | {rss / 2**20:.0f} MiB |",
        f"| memory law, conditional (`memory_per_seed` x seeds) | {law / 2**20:.1f} MiB |",
        f"| memory law, explicit sampler (adds one W per seed) | {law_explicit / 2**20:.1f} MiB |",
        f"| without checkpoints (every block's residuals kept) | {no_ckpt / 2**30:.2f} GiB |",
        f"| wall time | {wall:.0f} s ({wall / depth / seeds * 1e3:.2f} ms per block per seed) |",
    ])
    print(md)
    if out:
        write_section(out, "Monte Carlo memory at depth 10^4 (CPU)", md)
    return md


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=10_000)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--out", default="benchmarks/RESULTS.md")
    a = p.parse_args()
    main(a.depth, a.width, a.seeds, a.out)
