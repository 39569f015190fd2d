"""The explicit sampler's memory plan (montecarlo.plan_segments): the memory law counts every W
it keeps, with the whole tape (k = L) and with sqrt(L) segments."""

import math
import tracemalloc

import numpy as np
import pytest

import sigprop as sp
from sigprop.engines import montecarlo as mc
from sigprop.ops import layers_of

X0 = sp.Inputs(q=[1.0, 2.0], corr=0.5)


def _net(depth):
    return sp.Repeat(sp.Serial(sp.Dense(math.sqrt(2.0)), sp.Act("relu")), depth)


def _peak(run):
    """tracemalloc's peak over ``run()``, after one untraced call (first-use imports, caches)."""
    run()
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("tape", ["whole", "segments"])
def test_memory_law_bounds_the_peak_and_counts_the_kept_weights(tape, monkeypatch):
    # depth 9, width 384, 2 seeds, float32: a W is 576 KiB, a signal (B = 2) 3 KiB, so the peak
    # is the kept W's (whole tape: 9 per seed; segments, k = 3: 3 per seed) and the workspace of
    # the W being drawn (rng.draw_workspace). Measured estimate / peak: 1.10 (whole), 1.21
    # (segments); within 2x. Fails: a law with k = 3 W's for the whole tape (0.48), or without
    # the draw workspace (0.96 whole).
    L, N, seeds = 9, 384, 2
    blocks = layers_of(_net(L))
    k = L if tape == "whole" else math.ceil(math.sqrt(L))
    law = mc.memory_per_seed(blocks, X0.n, N, 4, mc.SAMPLERS["explicit"], k=k)
    if tape == "segments":  # room for the sqrt(L) law's chunk of 2 seeds, not for the whole tape
        monkeypatch.setattr(mc, "MEMORY_BUDGET", 2 * law)
    assert mc.plan_segments(blocks, X0.n, N, 4, mc.SAMPLERS["explicit"], seeds, None,
                            host=True) == (k, seeds, law)
    peak = _peak(lambda: sp.simulate(_net(L), X0, N, seeds, backend="numpy", sampler="explicit"))
    estimate = seeds * law + mc.recorded_bytes(seeds, L, X0.n)
    assert peak <= estimate <= 2 * peak, (peak, estimate)


def test_the_host_chunk_shrinks_for_the_whole_tape(monkeypatch):
    """NumPy: the chunk shrinks (to one seed here) so the whole tape fits; a GPU keeps the sqrt
    law's chunk and its segments; the numbers are the same either way (no number depends on
    the chunk or the segments: the recomputation replays the same streams)."""
    L, N, seeds = 4, 64, 3
    blocks = layers_of(_net(L))
    explicit = mc.SAMPLERS["explicit"]
    sqrt_law = mc.memory_per_seed(blocks, X0.n, N, 4, explicit)
    whole = mc.memory_per_seed(blocks, X0.n, N, 4, explicit, k=L)
    monkeypatch.setattr(mc, "MEMORY_BUDGET", max(3 * sqrt_law, whole))
    assert 3 * sqrt_law < 3 * whole  # so the whole tape of 3 seeds does not fit
    assert mc.plan_segments(blocks, X0.n, N, 4, explicit, seeds, None, host=True)[:2] == (L, 1)
    assert mc.plan_segments(blocks, X0.n, N, 4, explicit, seeds, None, host=False)[:2] == (2, 3)
    assert mc.plan_segments(blocks, X0.n, N, 4, explicit, seeds, 3, host=True)[:2] == (2, 3)
    a = sp.simulate(_net(L), X0, N, seeds, backend="numpy", sampler="explicit")
    monkeypatch.setattr(mc, "MEMORY_BUDGET", 2**40)
    b = sp.simulate(_net(L), X0, N, seeds, backend="numpy", sampler="explicit", seed_chunk=3)
    for var in ("log_q", "corr", "log_grad_q", "log_branch_q", "log_weight_grad_q"):
        np.testing.assert_array_equal(a[var].values, b[var].values)
