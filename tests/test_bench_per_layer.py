"""sigprop bench's per-layer time: the per-call fixed cost cancels (a fake clock; no timing is
asserted against the machine)."""

import pytest

from sigprop.pipeline import bench


class Clock:
    """perf_counter stand-in: a call of ``run(depth)`` advances it by fixed + depth seeds c,
    except the first (cold: imports, caches) which costs ``cold`` more."""

    def __init__(self, fixed, c, seeds, cold):
        self.now, self.fixed, self.c, self.seeds, self.cold = 0.0, fixed, c, seeds, cold
        self.calls = []

    def __call__(self):
        return self.now

    def run(self, depth):
        self.now += self.fixed + depth * self.seeds * self.c + (self.cold if not self.calls else 0)
        self.calls.append(depth)


@pytest.mark.parametrize("depth, seeds, repeats", [(8, 4, 3), (2, 1, 1), (1, 3, 2)])
def test_per_layer_removes_the_fixed_cost(depth, seeds, repeats, monkeypatch):
    clock = Clock(fixed=1e-3, c=2e-5, seeds=seeds, cold=0.5)
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    got = bench.per_layer(clock.run, depth, seeds, repeats)
    if depth == 1:  # no slope: the fixed cost is spread over the seeds
        assert got == pytest.approx(clock.c + clock.fixed / seeds, rel=1e-9)
    else:
        assert got == pytest.approx(clock.c, rel=1e-9)
    assert clock.calls[0] == 1  # the warm-up call (the cold one) is not timed
    assert clock.calls.count(1) == repeats + 1
    assert depth == 1 or clock.calls.count(depth) == repeats
