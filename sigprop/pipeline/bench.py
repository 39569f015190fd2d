"""``sigprop bench``: time per (layer . seed) of the Monte Carlo samplers, forward and backward.

The timed net is a plain stack of Dense(sqrt 2) -> relu blocks (one Dense per layer), run with
gradients. In one process, for each width N and batch B:

* ``conditional``: ``sp.simulate(sampler="conditional")`` (the default sampler);
* ``explicit``: ``sp.simulate(sampler="explicit")`` (every W drawn once and kept for its VJP
  where the whole tape fits, else recomputed segments draw theirs again:
  :func:`sigprop.engines.montecarlo.plan_segments`, :func:`weight_draws`);
* ``numpy loop``: a plain NumPy loop, W drawn once per layer and kept for the backward;
* ``torch loop``: the same in PyTorch with autograd, when torch is installed;
* floors: ``layer floor`` is measured (draw N^2 normals + the B x N x N GEMM of one layer), and
  the model floors max(normals / RNG rate, bytes / bandwidth) of each sampler, with the RNG rate
  and the copy bandwidth measured here.

Times are seconds per layer per seed (median of ``repeats`` runs). The sp.simulate columns are
the slope between depth 1 and ``depth`` (:func:`per_layer`: the per-call fixed cost, ~1 ms,
cancels), after one untimed call (imports, caches, the provenance read, allocator warm-up);
torch is initialised once before any timing.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import numpy as np

from sigprop.data import check_writable
from sigprop.engines.montecarlo import (
    memory_per_seed,
    plan_segments,
    resolve_backend,
    simulate,
    stored_signals,
)
from sigprop.engines.samplers import SAMPLERS
from sigprop.ops import Act, Dense, Repeat, Serial, layers_of
from sigprop.state.inputs import Inputs
from sigprop.state.rng import Streams

WIDTHS = (256, 1024, 4096, 16384)
WIDE = (65536, 262144, 1048576)  # conditional only: widths no explicit W fits comfortably
EXPLICIT_MAX = 16384  # explicit comparators up to here (a 16384^2 float32 W is 1 GiB)
QUICK_WIDTHS = (256, 1024, 4096)


def _net(depth):
    return Repeat(Serial(Dense(math.sqrt(2.0)), Act("relu")), depth)


def _inputs(B):
    return Inputs(q=1.0, corr=0.5, n=B)


def _timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def per_layer(run, depth, seeds, repeats):
    """Seconds per layer per seed of ``run(depth)`` (one sp.simulate call): the slope
    (t(depth) - t(1)) / ((depth - 1) seeds) of the median times, which removes the per-call fixed
    cost (argument checks, provenance, dataset assembly: ~1 ms, 10-20 % of a depth-8 call at
    N = 256) instead of spreading it over the layers; t(1) / seeds at depth 1. ``run(1)`` runs
    once untimed first (imports, caches, allocator)."""
    run(1)
    one = _timed(lambda: run(1), repeats)
    if depth == 1:
        return one / seeds
    return (_timed(lambda: run(depth), repeats) - one) / ((depth - 1) * seeds)


def _numpy_loop(N, B, depth, seeds):
    """Plain explicit-weight forward and backward in NumPy (float32), W kept for the backward."""
    rng = np.random.default_rng(0)
    std = np.float32(math.sqrt(2.0 / N))
    for _ in range(seeds):
        x = rng.standard_normal((B, N), dtype=np.float32)
        tape = []
        for _ in range(depth):
            W = rng.standard_normal((N, N), dtype=np.float32) * std
            h = x @ W.T
            tape.append((W, h))
            x = np.maximum(h, 0)
        g = rng.standard_normal((B, N), dtype=np.float32)
        for W, h in reversed(tape):
            g = (g * (h > 0)) @ W


def _torch_loop(N, B, depth, seeds, device):
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    std = math.sqrt(2.0 / N)
    for _ in range(seeds):
        x = torch.randn(B, N, generator=gen, device=device, requires_grad=True)
        h = x
        for _ in range(depth):
            W = torch.randn(N, N, generator=gen, device=device) * std
            h = torch.relu(h @ W.T)
        h.backward(torch.randn(B, N, generator=gen, device=device))
    if device == "cuda":
        torch.cuda.synchronize()


def _torch_device(xp):
    try:
        import torch
    except ImportError:
        return None
    if xp is not np:
        return "cuda" if torch.cuda.is_available() else None
    return "cpu"


def _sync(xp):
    """Wait for the device (a no-op with NumPy)."""
    return (lambda: None) if xp is np else xp.cuda.Device().synchronize


def machine_rates(xp=np):
    """(normals per second of sigprop's float32 stream draw, copy bandwidth in bytes per second)
    measured on ``xp``."""
    n = 1 << 24
    s, sync = Streams(xp, 0, [0]), _sync(xp)
    rng_rate = n / _timed(lambda: (s.normal(0, 0, 0, (n,), np.float32), sync()), 3)
    a, b = xp.ones(n, dtype=np.float32), xp.empty(n, dtype=np.float32)
    bandwidth = 2 * a.nbytes / _timed(lambda: (b.__setitem__(slice(None), a), sync()), 5)
    return rng_rate, bandwidth


def _layer_floor(N, B, xp):
    """Measured: draw one N x N float32 W from sigprop's stream and apply it to B inputs (one
    explicit layer)."""
    s, sync = Streams(xp, 0, [0]), _sync(xp)
    x = xp.asarray(np.random.default_rng(1).standard_normal((B, N), dtype=np.float32))
    return _timed(lambda: (x @ s.normal(0, 0, 0, (N, N), np.float32)[0].T, sync()), 3)


def model_floors(N, B, rng_rate, bandwidth, itemsize=4, draws=1.0):
    """Per layer and seed, forward + backward (with the recomputation sp.simulate does).

    explicit: ``draws`` N^2 normals (1 when every block's residuals are kept and the VJP reuses
    the forward's W; 1 + the recomputed share of the blocks otherwise: :func:`weight_draws`),
    each W written once and read once forward, once backward: (2 + draws) N^2 words.
    conditional: 3 B N normals (Z forward, recompute, Z' backward) and ~40 passes over B N words
    (Grams, roots, products, activation, statistics, checkpoints).
    """
    expl = max(draws * N * N / rng_rate, (2 + draws) * N * N * itemsize / bandwidth)
    cond = max(3 * B * N / rng_rate, 40 * B * N * itemsize / bandwidth)
    return expl, cond


def weight_draws(N, B, depth, seeds, host, itemsize=4) -> float:
    """Draws of each W per layer and seed by the explicit sampler's plan
    (:func:`~sigprop.engines.montecarlo.plan_segments`): 1 when it keeps every block's
    residuals, else 1 + the share of blocks whose segment the backward recomputes."""
    blocks = layers_of(_net(depth))
    k = plan_segments(blocks, B, N, itemsize, SAMPLERS["explicit"], seeds, None, host)[0]
    L = len(blocks)
    return 1.0 if k >= L else 1 + (L - 1) // k * k / L


def available_memory(xp=np) -> int:
    """Bytes of memory this process can fill (physical memory, or free GPU memory)."""
    if xp is not np:
        return int(xp.cuda.runtime.memGetInfo()[0])
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def limits(B, seeds, depth, memory, itemsize=4):
    """Widest N per sampler for (B, seeds, depth), and deepest L at N = 1024, within half of
    ``memory``, by the memory law of :mod:`sigprop.engines.montecarlo`."""
    budget = memory // 2
    out = {}
    for name, smp in SAMPLERS.items():
        n = 256
        while seeds * memory_per_seed(layers_of(_net(depth)), B, 2 * n, itemsize, smp) <= budget:
            n *= 2
        out[f"widest N ({name})"] = n
    r = 2 * _net(1).block.mc_ops()
    L = depth
    while seeds * itemsize * B * 1024 * stored_signals(4 * L, r) <= budget:
        L *= 4
    out["deepest L at N=1024 (conditional)"] = L
    return out


def run_bench(widths=None, batch=(2, 8), depth=8, seeds=4, backend="auto", quick=False,
              repeats=None) -> dict:
    """Time every method on every (N, B); returns the rows and the machine rates."""
    name, xp = resolve_backend(backend)
    repeats = repeats or (1 if quick else 3)
    if widths is None:
        widths = QUICK_WIDTHS if quick else WIDTHS + WIDE
    device = _torch_device(xp)
    if device is not None:
        _torch_loop(64, 2, 1, 1, device)  # first call initialises torch: keep it out of timings
    rng_rate, bandwidth = machine_rates(xp)
    rows = []
    for N in widths:
        for B in batch:
            x0 = _inputs(B)
            row = {"N": N, "B": B}

            row["conditional"] = per_layer(
                lambda d, n=N, x=x0: simulate(_net(d), x, n, seeds, backend=name), depth, seeds,
                repeats)
            if N <= (4096 if quick else EXPLICIT_MAX):
                # explicit comparators at 16384 run one layer for one seed (a W is 1 GiB)
                d, s = (depth, seeds) if N <= 4096 else (1, 1)
                args = (N, B, d, s)
                row["explicit"] = per_layer(lambda dd, n=N, x=x0, s=s: simulate(
                    _net(dd), x, n, s, backend=name, sampler="explicit"), d, s, 1)
                if xp is np:
                    row["numpy loop"] = _timed(lambda a=args: _numpy_loop(*a), 1) / (d * s)
                if device is not None:
                    row["torch loop"] = _timed(lambda a=args: _torch_loop(*a, device), 1) / (d * s)
                row["layer floor"] = _layer_floor(N, B, xp)
            draws = weight_draws(N, B, depth, seeds, host=xp is np)
            row["floor explicit"], row["floor conditional"] = model_floors(N, B, rng_rate,
                                                                           bandwidth, draws=draws)
            rows.append(row)
    lim = {B: limits(B, seeds, depth, available_memory(xp)) for B in batch}
    return {"backend": name, "depth": depth, "seeds": seeds, "rng_rate": rng_rate,
            "bandwidth": bandwidth, "rows": rows, "limits": lim, "torch": device}


def to_markdown(res: dict) -> str:
    """The bench table: seconds per layer per seed, and the ratios to the conditional sampler."""
    cols = ["conditional", "explicit", "numpy loop", "torch loop", "layer floor",
            "floor conditional", "floor explicit"]
    head = ["N", "B"] + cols + ["explicit / cond", "numpy loop / cond", "torch loop / cond",
                                "explicit / layer floor", "cond / its floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        def ratio(a, b, r=r):
            return f"{r[a] / r[b]:.3g}" if a in r and b in r else "-"
        vals = [str(r["N"]), str(r["B"])] + [f"{r[c]:.3g}" if c in r else "-" for c in cols]
        vals += [ratio("explicit", "conditional"), ratio("numpy loop", "conditional"),
                 ratio("torch loop", "conditional"), ratio("explicit", "layer floor"),
                 ratio("conditional", "floor conditional")]
        lines.append("| " + " | ".join(vals) + " |")
    lim = "; ".join(f"B={B}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                    for B, d in res["limits"].items())
    intro = (f"Backend {res['backend']}, depth {res['depth']}, {res['seeds']} seeds, float32, "
             "forward + backward; seconds per layer per seed. Measured RNG rate "
             f"{res['rng_rate'] / 1e6:.3g} M normals/s, copy bandwidth "
             f"{res['bandwidth'] / 1e9:.3g} GB/s. torch: {res['torch'] or 'not installed'}.")
    key = [r for r in res["rows"] if (r["N"], r["B"]) == (4096, 2) and "numpy loop" in r]
    summary = (f"At N = 4096, B = 2 the conditional sampler is "
               f"{key[0]['numpy loop'] / key[0]['conditional']:.0f}x faster than the plain NumPy "
               "explicit-weight loop (same depth and seeds)." if key else "")
    return "\n".join([intro, "", *lines, "", summary,
                      f"Memory limits (half of this machine's memory, memory law): {lim}."])


def write_section(path, heading: str, body: str):
    """Replace (or append) the section ``## heading`` of the markdown file ``path``."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) \
        else text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(widths=None, batch=(2, 8), depth=8, seeds=4, backend="auto",
         out="", quick=False) -> str:
    """Run the bench, print the table, write it to ``out`` (its own section; '': nowhere, so a
    run in a checkout leaves its tracked ``benchmarks/RESULTS.md`` alone: ``make bench``
    passes it); return markdown.

    ``widths`` may also be a command line (a list of strings, as ``sigprop bench`` passes it):
    ``--widths 256,1024 --batch 2,8 --depth 8 --seeds 4 --backend auto --out PATH --quick``.
    """
    if widths is not None and all(isinstance(w, str) for w in widths):
        return main(**_parse_argv(list(widths)))
    if out:
        check_writable("--out", out)
    if quick:
        depth, seeds = min(depth, 8), min(seeds, 2)
    res = run_bench(widths, batch, depth, seeds, backend, quick)
    md = to_markdown(res)
    print(md)
    if out:
        write_section(out, f"Monte Carlo bench ({res['backend']}, sigprop bench)", md)
    return md


def _parse_argv(argv: list[str]) -> dict:
    import argparse

    def ints(text):
        return tuple(int(v) for v in text.split(","))

    p = argparse.ArgumentParser(prog="sigprop bench", description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=ints, default=None,
                   help=f"comma-separated widths N (default {','.join(map(str, WIDTHS + WIDE))}; "
                        f"--quick: {','.join(map(str, QUICK_WIDTHS))})")
    p.add_argument("--batch", type=ints, default=(2, 8), help="comma-separated batch sizes B (default 2,8)")
    p.add_argument("--depth", type=int, default=8, help="layers per timed run (default 8)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per timed run (default 4)")
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "cupy"),
                   help="array backend (default auto: CuPy when a GPU is usable)")
    p.add_argument("--out", default="", help="markdown file to write the table to, as its own "
                   "section (default: none, the table is printed; make bench: "
                   "benchmarks/RESULTS.md)")
    p.add_argument("--quick", action="store_true",
                   help="widths up to 4096, depth <= 8, 2 seeds, one timed run each")
    return vars(p.parse_args(argv))
