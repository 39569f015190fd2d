"""The theory engine's bookkeeping (tapes, checkpoints, batched records) against a plain engine.

The reference below is the engine without any of it: every layer's state kept, each block's
forward law run from its stored input, the backward law from the same input with no tape (a
``Serial`` then recomputes its internal states), every recorded quantity computed layer by
layer. It calls the ops' public faces only, so it checks that the engine's bookkeeping changes
no value: same operations on the same numbers, so agreement is to rounding (1e-12).
"""

import numpy as np
import pytest

import sigprop as sp
from sigprop.engines import theory as engine
from sigprop.ops import Dense, layers_of, sweeps_of
from sigprop.state.moments import Cotangent, corr_of, to_unit_diagonal
from sigprop.state.ns import NUMERIC
from sigprop.state.params import Context

RTOL = ATOL = 1e-12  # float64 rounding: the two engines do the same operations per layer


def _log_diag(s):
    with np.errstate(divide="ignore"):
        return 2 * s.ls + np.log(np.diagonal(s.K, axis1=-2, axis2=-1))


def reference(net, inputs):
    """The recorded variables of every layer, by the plain engine described above."""
    blocks = layers_of(net)
    grid = sweeps_of(net)
    shape = tuple(len(s.values) for s in grid.values())
    ctx = Context(NUMERIC, tuple(grid))
    B = inputs.n
    states, branch = [inputs.moments()], [None]
    for l, block in enumerate(blocks, 1):
        found = {}
        states.append(to_unit_diagonal(block.theory_forward(states[-1], ctx.at(f"{l}"), found)))
        branch.append(found.get("branch"))
    g = Cotangent(K=np.eye(B), m=np.zeros(B), ls=np.zeros(B))
    grads = [_log_diag(g)]
    for l in range(len(blocks), 0, -1):
        g = to_unit_diagonal(blocks[l - 1].theory_backward(states[l - 1], g, ctx.at(f"{l}")))
        grads.append(_log_diag(g))
    grads.reverse()
    out = {name: [] for name in ("log_q", "mean", "var", "corr", "log_grad_q", "log_branch_q")}
    for s, f, lg in zip(states, branch, grads):
        d = np.diagonal(s.K, axis1=-2, axis2=-1)
        with np.errstate(over="ignore", invalid="ignore"):
            row = {"log_q": _log_diag(s), "mean": s.m * np.exp(s.ls),
                   "var": (d - s.m**2) * np.exp(2 * s.ls), "corr": corr_of(s.K), "log_grad_q": lg,
                   "log_branch_q": np.full(shape + (B,), np.nan) if f is None else _log_diag(f)}
        for name, value in row.items():
            out[name].append(np.broadcast_to(value, shape + (B,) * (2 if name == "corr" else 1)))
    return {name: np.stack(v) for name, v in out.items()}


# postbn is refused by the theory beyond one block (its BatchNorm meets a non-Gaussian stream)
CASES = [(name, act) for name in sp.presets.PRESETS if name != "postbn" for act in ("relu", "tanh")]


def _net(name, act, depth):
    """The preset over a 2-point grid (of the branch scale; deepnorm fixes it: of eps)."""
    if name == "deepnorm":
        return sp.presets.deepnorm(depth, act=act, eps=sp.sweep("eps", [1e-5, 0.1]))
    return sp.presets.get(name)(depth, act=act, sigma_w1=sp.sweep("sigma_w1", [0.8, 1.5]))


@pytest.mark.parametrize("budget", ["taped", "checkpoints"])
@pytest.mark.parametrize(("name", "act"), CASES)
def test_engine_equals_plain_engine_on_every_preset(name, act, budget, monkeypatch):
    if budget == "checkpoints":  # every layer over the budget: sqrt(L) checkpoints, recomputation
        monkeypatch.setattr(engine, "TAPE_BUDGET", 0)
    depth = 10  # checkpoints every 3 layers: full segments and a short last one
    net = _net(name, act, depth)
    x0 = (sp.Inputs(q=[1.0, 2.25, 0.5], corr=0.4, law="gaussian") if name.endswith("bn")  # BN
          else sp.Inputs(q=[1.0, 2.25, 0.5], corr=0.4, mean=[0.3, 0.0, -0.2]))  # needs Gaussian
    th = sp.theory(net, x0)
    ref = reference(net, x0)
    for var, expected in ref.items():
        got = th[var].transpose("layer", *sweeps_of(net), "input", ...).values
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=var)


def test_recorded_subset_equals_the_full_record(monkeypatch):
    monkeypatch.setattr(engine, "TAPE_BUDGET", 0)
    net, x0 = _net("preln", "relu", 16), sp.Inputs(q=[1.0, 2.0], corr=0.5)
    kept = [0, 3, 4, 16]
    sub, full = sp.theory(net, x0, layers=kept), sp.theory(net, x0).sel(layer=kept)
    for var in ("log_q", "mean", "corr", "log_grad_q", "log_branch_q"):
        np.testing.assert_array_equal(sub[var].values, full[var].values)


def test_a_run_recorded_at_its_top_keeps_no_tape_below():
    """The backward stops at the lowest recorded layer, so the forward keeps the tapes and
    states of the blocks it pulls back only: recorded at layer 100 of 100 (200 grid points),
    the run's peak memory is a block's tape, not 100 of them (measured 0.17 MB against 5.8
    MB at [0, 100]; here within a quarter, far from the ~1/100 the tapes' count gives, and
    far from 1, which it was)."""
    import tracemalloc

    net = sp.presets.preln(100, sigma_w1=sp.sweep("s", np.linspace(1.0, 2.0, 200)))
    x0 = sp.Inputs(q=[1.0, 2.0], corr=0.5)
    peaks = []
    for layers in ([100], [0, 100]):
        sp.theory(net, x0, layers=layers)  # (caches filled before the measured call)
        tracemalloc.start()
        sp.theory(net, x0, layers=layers)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[0] < peaks[1] / 4, peaks


def _count_dense_forward(monkeypatch):
    calls = []
    law = Dense.forward_law

    def counted(self, *args, **kw):
        calls.append(1)
        return law(self, *args, **kw)

    monkeypatch.setattr(Dense, "forward_law", counted)
    return calls


@pytest.mark.parametrize(("budget", "runs"), [(None, 1), (0, 2)])
def test_forward_law_runs_once_taped_twice_with_checkpoints(budget, runs, monkeypatch):
    # 2 Dense per block; taped: the forward only; with checkpoints: forward + one recomputation
    # of each segment (the backward reuses the recomputation's tape, never a third run).
    if budget is not None:
        monkeypatch.setattr(engine, "TAPE_BUDGET", budget)
    calls = _count_dense_forward(monkeypatch)
    depth = 16
    sp.theory(sp.presets.preln(depth), sp.Inputs(q=1.0, n=2))
    assert len(calls) == runs * 2 * depth


@pytest.mark.parametrize("act", ["tanh", "gelu", "silu"])
def test_grid_chunks_are_bit_identical_for_quadrature_activations(act):
    """A grid point gives the same bits whichever other points share its pass (how a sweep
    splits the grid into chunks): the quadrature sums its nodes in a fixed order per element
    (kernels/quadrature.py, ``_node_sum``), not by a BLAS product whose rounding depends on how
    many elements are evaluated together. Exact equality: no tolerance."""
    values = list(np.linspace(0.3, 2.5, 40))
    x0 = sp.Inputs(q=[1.0, 2.0, 0.5], corr=0.5)
    for preset in ("preln", "resnet"):
        def run(vals, preset=preset):
            net = getattr(sp.presets, preset)(depth=5, act=act,
                                              sigma_w1=sp.sweep("sigma_w1", vals))
            return engine.theory(net, x0)

        whole = run(values)
        for start in range(0, len(values), 7):  # chunks of 7, the last one of 5
            part = run(values[start:start + 7])
            for name in whole.data_vars:
                np.testing.assert_array_equal(
                    part[name].values, whole[name].isel(sigma_w1=slice(start, start + 7)).values,
                    err_msg=f"{preset} {act} {name}, chunk at {start}")
        one = run(values[11:12])  # a point alone
        for name in whole.data_vars:
            np.testing.assert_array_equal(one[name].values,
                                          whole[name].isel(sigma_w1=slice(11, 12)).values)
