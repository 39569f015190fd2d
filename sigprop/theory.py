"""Infinite-width theory engine: ``sp.theory(net, inputs)`` -> Dataset (kind='theory').

Forward, layer by layer, the law of each block (``Op.theory_forward``) maps the moments of the
stream; the state is brought back to unit diagonal after every layer with the scale carried in
log space, so that depth 10^6 never overflows. Backward, the cotangent Gram starts at the
identity (``delta_L ~ N(0, I)`` drawn independently of the net) and each block pulls it back
from its stored input state. Every hyperparameter given as ``sp.sweep(...)`` becomes a grid dim
and the whole grid is propagated in one vectorised pass.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .errors import ConfigError, OverflowInTheory
from .inputs import Inputs
from .moments import Moments, canonical, corr_of
from .ns import NUMERIC
from .ops import Op, Repeat, Serial
from .params import Context, Sweep
from .provenance import make_attrs


def layers_of(net: Op) -> list[Op]:
    """The blocks that make the layers: a top-level Repeat gives n, a top-level Serial concatenates."""
    if isinstance(net, Repeat):
        return [net.block] * net.n
    if isinstance(net, Serial):
        return [blk for op in net.layers for blk in layers_of(op)]
    return [net]


def sweeps_of(net: Op) -> dict[str, Sweep]:
    """Every sweep used by the net, in order of first appearance; one name means one grid."""
    found: dict[str, Sweep] = {}
    for op in net.walk():
        for value in vars(op).values():
            if isinstance(value, Sweep):
                if found.setdefault(value.name, value) != value:
                    raise ConfigError(f"sweep {value.name!r}", value.values,
                                      f"the same values wherever it is used ({found[value.name].values})")
    return found


def _check_args(net, inputs):
    if not isinstance(net, Op):
        raise ConfigError("net", type(net).__name__, "an Op (e.g. sp.presets.preln(depth=64))")
    if not isinstance(inputs, Inputs):
        raise ConfigError("inputs", type(inputs).__name__, "sp.Inputs(q=..., corr=..., mean=...)")


def theory(net: Op, inputs: Inputs, *, progress: bool = False) -> xr.Dataset:
    """Propagate ``inputs`` through ``net`` at infinite width, forward and backward."""
    _check_args(net, inputs)
    blocks = layers_of(net)
    grid = sweeps_of(net)
    dims = tuple(grid)
    shape = tuple(len(s.values) for s in grid.values())
    ctx = Context(NUMERIC, dims)
    B = inputs.n

    states, branches = [inputs.moments()], [None]
    for l, blk in enumerate(_progress(blocks, progress, "theory forward"), start=1):
        record: dict = {}
        where = ctx.at(f"layer {l} {type(blk).__name__}")
        s = canonical(blk.theory_forward(states[-1], where, record))
        _check_finite(s, where.path, "forward")
        states.append(s)
        branches.append(record.get("branch"))

    g = Moments(K=np.eye(B), m=np.zeros(B), ls=np.zeros(B))
    grads = [g]
    for l in _progress(range(len(blocks), 0, -1), progress, "theory backward"):
        where = ctx.at(f"layer {l} {type(blocks[l - 1]).__name__} (backward)")
        g = canonical(blocks[l - 1].theory_backward(states[l - 1], g, where))
        _check_finite(g, where.path, "backward")
        grads.append(g)
    grads.reverse()

    data = _dataset(states, grads, branches, shape, B)
    coords = {"layer": np.arange(len(states)), "input": np.arange(B), "input_b": np.arange(B),
              "block": ("layer", ["input"] + [type(b).__name__ for b in blocks])}
    coords.update({name: np.asarray(s.values) for name, s in grid.items()})
    vdims = ("layer", *dims, "input")
    ds = xr.Dataset({k: (vdims + (("input_b",) if k == "corr" else ()), v) for k, v in data.items()},
                    coords=coords)
    ds.attrs = make_attrs("theory", {"net": net.to_dict(), "inputs": inputs.to_dict()}, "numpy")
    return ds


def _check_finite(s: Moments, where: str, direction: str):
    bad = ~np.isfinite(s.K) | ~np.isfinite(s.ls[..., None])
    if np.any(bad):
        raise OverflowInTheory(f"{where}: the {direction} law produced a non-finite value "
                               "(overflow, or an op outside its valid range)")


def _log_diag(s: Moments):
    d = np.diagonal(s.K, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore"):
        return 2 * s.ls + np.log(d)


def _dataset(states, grads, branches, shape, B):
    def full(x, extra=(B,)):
        return np.broadcast_to(x, shape + extra)

    nan = np.full(shape + (B,), np.nan)
    with np.errstate(over="ignore", invalid="ignore"):
        return _variables(states, grads, branches, full, nan, B)


def _variables(states, grads, branches, full, nan, B):
    log_q = np.stack([full(_log_diag(s)) for s in states])
    mean = np.stack([full(s.m * np.exp(s.ls)) for s in states])
    var = np.stack([full((np.diagonal(s.K, axis1=-2, axis2=-1) - s.m**2) * np.exp(2 * s.ls))
                    for s in states])
    corr = np.stack([full(corr_of(s.K), (B, B)) for s in states])
    log_grad_q = np.stack([full(_log_diag(g)) for g in grads])
    log_branch_q = np.stack([nan if f is None else full(_log_diag(f)) for f in branches])
    return {"q": np.exp(log_q), "log_q": log_q, "mean": mean, "var": var, "corr": corr,
            "grad_q": np.exp(log_grad_q), "log_grad_q": log_grad_q,
            "branch_q": np.exp(log_branch_q), "log_branch_q": log_branch_q}


def _progress(it, enabled: bool, what: str):
    if not enabled:
        return it
    from rich.progress import track

    return track(it, description=what, transient=True)
