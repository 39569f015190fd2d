"""Infinite-width theory engine: ``sp.theory(net, inputs)`` -> Dataset (kind='theory').

Forward, layer by layer, the law of each block (``Op.theory_forward``) maps the moments of the
stream; the state is brought back to unit diagonal after every layer with the scale carried in
log space, so that depth 10^6 never overflows. Backward, the cotangent Gram starts at the
identity (``delta_L ~ N(0, I)`` drawn independently of the net) and each block pulls it back
from its stored input state. Every hyperparameter given as ``sp.sweep(...)`` becomes a grid dim
and the whole grid is propagated in one vectorised pass.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from sigprop import schema
from sigprop.errors import ConfigError, OverflowInTheory
from sigprop.ops import Op, layers_of, sweeps_of
from sigprop.provenance import make_attrs
from sigprop.state.inputs import Inputs
from sigprop.state.moments import Cotangent, Gram, Moments, corr_of, to_unit_diagonal
from sigprop.state.ns import NUMERIC
from sigprop.state.params import Context


def _check_args(net, inputs):
    if not isinstance(net, Op):
        raise ConfigError("net", type(net).__name__, "an Op (e.g. sp.presets.preln(depth=64))")
    if not isinstance(inputs, Inputs):
        raise ConfigError("inputs", type(inputs).__name__, "sp.Inputs(q=..., corr=..., mean=...)")


def theory(net: Op, inputs: Inputs, *, layers=None, progress: bool = False) -> xr.Dataset:
    """Propagate ``inputs`` through ``net`` at infinite width, forward and backward.

    ``layers``: the layer indices to record (default all). Memory is O((sqrt(L) + recorded) x
    grid x B^2): the backward keeps a checkpoint every ~sqrt(L) layers and recomputes each segment.
    """
    _check_args(net, inputs)
    blocks = layers_of(net)
    L = len(blocks)
    grid = sweeps_of(net)
    dims = tuple(grid)
    shape = tuple(len(s.values) for s in grid.values())
    record = _recorded(layers, L)
    ctx = Context(NUMERIC, dims)
    B = inputs.n
    every = max(1, math.isqrt(L))

    def step(s, l):
        where = ctx.at(f"layer {l} {type(blocks[l - 1]).__name__}")
        found: dict = {}
        s = to_unit_diagonal(blocks[l - 1].theory_forward(s, where, found))
        _check_finite(s, where.path, "forward")
        return s, found.get("branch")

    s = inputs.moments()
    rows = {0: _forward_row(s, None)} if 0 in record else {}
    checkpoints = {0: s}
    for l in _progress(range(1, L + 1), progress, "theory forward"):
        s, f = step(s, l)
        if l in record:
            rows[l] = _forward_row(s, f)
        if l % every == 0:
            checkpoints[l] = s

    g = Cotangent(K=np.eye(B), m=np.zeros(B), ls=np.zeros(B))
    grad_rows = {L: _log_diag(g)} if L in record else {}
    for start in _progress(sorted(checkpoints, reverse=True), progress, "theory backward"):
        states = [checkpoints[start]]
        for l in range(start + 1, min(start + every, L)):
            states.append(step(states[-1], l)[0])
        for l in range(min(start + every, L), start, -1):
            where = ctx.at(f"layer {l} {type(blocks[l - 1]).__name__} (backward)")
            g = to_unit_diagonal(blocks[l - 1].theory_backward(states[l - 1 - start], g, where))
            _check_finite(g, where.path, "backward")
            if l - 1 in record:
                grad_rows[l - 1] = _log_diag(g)

    kept = sorted(record)
    coords = {"layer": np.asarray(kept), "input": np.arange(B), "input_b": np.arange(B),
              "block": ("layer", [type(blocks[l - 1]).__name__ if l else "input" for l in kept])}
    coords.update({name: np.asarray(s.values) for name, s in grid.items()})
    data = _variables([rows[l] for l in kept], [grad_rows[l] for l in kept], shape, B)
    ds = xr.Dataset({k: (schema.VARIABLES[k].dims_with(grid=dims), v) for k, v in data.items()},
                    coords=coords)
    ds.attrs = make_attrs("theory", {"net": net.to_dict(), "inputs": inputs.to_dict()}, "numpy")
    return ds


def _recorded(layers, L) -> set[int]:
    if layers is None:
        return set(range(L + 1))
    try:
        chosen = {int(l) for l in np.atleast_1d(np.asarray(layers))}
    except (TypeError, ValueError):
        raise ConfigError("layers", layers, f"integers in [0, {L}]") from None
    if not chosen or min(chosen) < 0 or max(chosen) > L:
        raise ConfigError("layers", layers, f"a non-empty set of integers in [0, {L}]")
    return chosen


def _check_finite(s: Gram, where: str, direction: str):
    bad = ~np.isfinite(s.K) | ~np.isfinite(s.ls[..., None])
    if np.any(bad):
        raise OverflowInTheory(f"{where}: the {direction} law produced a non-finite value "
                               "(overflow, or an op outside its valid range)")


def _log_diag(s: Gram):
    d = np.diagonal(s.K, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore"):
        return 2 * s.ls + np.log(d)


def _forward_row(s: Moments, f: Moments | None) -> dict:
    """The recorded forward quantities of one layer (log scales kept, overflow deferred)."""
    d = np.diagonal(s.K, axis1=-2, axis2=-1)
    return {"log_q": _log_diag(s), "mt": s.m, "ls": s.ls, "vt": d - s.m**2, "corr": corr_of(s.K),
            "log_branch_q": None if f is None else _log_diag(f)}


def _variables(rows, grad_rows, shape, B):
    """The schema's variables (layer first): scales from their logs (:func:`schema.complete`)."""
    def stack(items, extra=(B,)):
        return np.stack([np.broadcast_to(x, shape + extra) for x in items])

    nan = np.full(shape + (B,), np.nan)
    with np.errstate(over="ignore", invalid="ignore"):
        computed = {
            "log_q": stack([r["log_q"] for r in rows]),
            "mean": stack([r["mt"] * np.exp(r["ls"]) for r in rows]),
            "var": stack([r["vt"] * np.exp(2 * r["ls"]) for r in rows]),
            "corr": stack([r["corr"] for r in rows], (B, B)),
            "log_grad_q": stack(grad_rows),
            "log_branch_q": stack([nan if r["log_branch_q"] is None else r["log_branch_q"]
                                   for r in rows])}
    return schema.complete(computed)


def _progress(it, enabled: bool, what: str):
    if not enabled:
        return it
    from rich.progress import track

    return track(it, description=what, transient=True)
