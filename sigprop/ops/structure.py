"""Combinators: ``Serial`` (composition), ``Repeat`` (a block n times), ``Residual`` (a skip)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from sigprop.errors import ConfigError, UnsupportedComposition
from sigprop.ops.base import FINITE, Op, is_zero, vec
from sigprop.state import arrays as mc
from sigprop.state.moments import moments_of_sum
from sigprop.state.params import Sweep, branch_gain, check


@dataclass(frozen=True, init=False)
class Serial(Op):
    """Composition, applied left to right."""

    layers: tuple[Op, ...] = field(default=())

    def __init__(self, *layers: Op):
        flat = tuple(layers[0]) if len(layers) == 1 and isinstance(layers[0], (list, tuple)) \
            else layers
        for i, op in enumerate(flat):
            if not isinstance(op, Op):
                raise ConfigError(f"Serial layer {i}", op, "an Op such as sp.Dense() or sp.Act('relu')")
        if not flat:
            raise ConfigError("Serial layers", (), "at least one op")
        object.__setattr__(self, "layers", flat)

    @classmethod
    def from_fields(cls, layers):
        return cls(*layers)

    def children(self):
        return self.layers

    def label(self):
        return "Serial"

    def _states(self, s, ctx, record=None, upto=None):
        """[s, layer 0 (s), layer 1 (layer 0 (s)), ...] through the first ``upto`` layers (all)."""
        states = [s]
        for i, op in enumerate(self.layers[:upto]):
            states.append(op.theory_forward(states[-1], ctx.at(f"[{i}] {type(op).__name__}"),
                                            record))
        return states

    def forward_law(self, s, ctx, record=None):
        """Left to right; on a taped context the layers' inputs are kept for the backward."""
        states = self._states(s, ctx, record)
        if ctx.tape is not None:
            ctx.tape[ctx.key] = states[:-1]
        return states[-1]

    def backward_law(self, s, g, ctx):
        """Right to left, each layer at its input: taped by this block's forward, or recomputed
        (the last layer's output is not needed).

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        states = ctx.tape.pop(ctx.key, None) if ctx.tape is not None else None
        if states is None:
            states = self._states(s, ctx, upto=-1)
        for i in reversed(range(len(self.layers))):
            g = self.layers[i].theory_backward(states[i], g, ctx.at(f"[{i}] {type(self.layers[i]).__name__}"))
        return g

    def blocks(self):
        return [blk for op in self.layers for blk in op.blocks()]

    def n_blocks(self):
        return sum(op.n_blocks() for op in self.layers)

    def mc_widths(self, n):
        return _chain_widths(self.layers, n)

    def width_ratio(self, p=None):
        ratios = [op.width_ratio(p) for op in self.layers]
        return None if any(r is None for r in ratios) else math.prod(ratios)

    def _mc_envs(self, env):
        """Each layer's env: op index offset by the ops of the layers before it."""
        offset = 1
        for op in self.layers:
            yield op, env.child(offset)
            offset += op.mc_ops()

    def mc_forward(self, x, env, record=None):
        res = []
        for op, e in self._mc_envs(env):
            x, r = op.mc_forward(x, e, record)
            res.append(r)
        return x, res

    def mc_vjp(self, res, g, env):
        for (op, e), r in reversed(list(zip(self._mc_envs(env), res))):
            g = op.mc_vjp(r, g, e)
        return g


@dataclass(frozen=True)
class Repeat(Op):
    """``block`` applied ``n`` times. At the top level of a net each copy is one layer."""

    block: Op
    n: int = 1

    def __post_init__(self):
        if not isinstance(self.block, Op):
            raise ConfigError("Repeat.block", self.block, "an Op")
        if isinstance(self.n, bool) or not isinstance(self.n, (int, np.integer)) or self.n < 1:
            raise ConfigError("Repeat.n (depth)", self.n, "an integer >= 1")
        object.__setattr__(self, "n", int(self.n))

    def children(self):
        return (self.block,)

    def label(self):
        return f"Repeat(n={self.n})"

    def forward_law(self, s, ctx, record=None):
        return Serial(*([self.block] * self.n)).theory_forward(s, ctx, record)

    def backward_law(self, s, g, ctx):
        """The Serial of n copies, right to left.

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        return Serial(*([self.block] * self.n)).theory_backward(s, g, ctx)

    def blocks(self):
        return [self.block] * self.n

    def n_blocks(self):
        return self.n

    def mc_ops(self):
        return 1 + self.n * self.block.mc_ops()

    def mc_widths(self, n):
        return _chain_widths([self.block] * self.n, n)

    def width_ratio(self, p=None):
        r = self.block.width_ratio(p)
        return None if r is None else r**self.n

    def _mc_envs(self, env):
        size = self.block.mc_ops()
        return [env.child(1 + j * size) for j in range(self.n)]

    def mc_forward(self, x, env, record=None):
        """Copy j gets its own streams; the scale moves to ls after each copy (exact)."""
        res = []
        for e in self._mc_envs(env):
            x, r = self.block.mc_forward(x, e, record)
            x = mc.to_unit_rms(x)
            res.append(r)
        return x, res

    def mc_vjp(self, res, g, env):
        for e, r in reversed(list(zip(self._mc_envs(env), res))):
            g = mc.to_unit_rms(self.block.mc_vjp(r, g, e))
        return g


@dataclass(frozen=True)
class Residual(Op):
    """x -> beta x + alpha branch(x).

    K' = beta^2 K + alpha^2 K_f + alpha beta (X + X^T), with X the cross moment of the stream and
    the branch output (m m_f^T once the branch has passed a Dense); the backward is the same
    mixing law applied to the cotangents (:func:`sigprop.state.moments.moments_of_sum`).
    """

    branch: Op
    alpha: Any = 1.0
    beta: Any = 1.0

    def __post_init__(self):
        if not isinstance(self.branch, Op):
            raise ConfigError("Residual.branch", self.branch, "an Op")
        object.__setattr__(self, "alpha", check("Residual.alpha", self.alpha, *FINITE))
        object.__setattr__(self, "beta", check("Residual.beta", self.beta, *FINITE))
        if is_zero(self.alpha) and is_zero(self.beta):
            raise ConfigError("Residual (alpha, beta)", (self.alpha, self.beta),
                              "not both zero (the block would output 0)")
        self.check_branch_width()

    def check_branch_width(self, ctx=None):
        """The branch ends at the stream's width (its Dense ratios multiply to 1): on the ops'
        numbers, or with ``ctx`` (a numeric Context) at every point of a swept ratio's grid,
        which the op alone cannot check (the engines call it)."""
        ratio = self.branch.width_ratio(None if ctx is None else ctx.p)
        if ratio is None:
            return
        bad = np.abs(np.asarray(ratio, dtype=float) - 1) > 1e-9
        if np.any(bad):
            where = "" if ctx is None else f" at every point of the sweep over {list(ctx.dims)}"
            raise ConfigError("Residual branch width ratio",
                              float(np.max(np.asarray(ratio, dtype=float)[bad])),
                              f"1{where}: the branch must end at the stream's width (Dense "
                              "ratios in a branch multiply to 1)")

    SYMBOLIC_ROLES: ClassVar[dict[str, str]] = {"alpha": "alpha", "beta": "beta"}

    def children(self):
        return (self.branch,)

    def _mix(self, x, f, ctx, what):
        if f.cross_unknown():
            raise UnsupportedComposition(
                f"{ctx.path}: the {what} cross moment between the stream and the branch is not "
                "determined at infinite width (the branch has no Dense, and contains an op whose "
                "feature-wise coupling to its input is non-linear). Start the branch with a "
                "Dense or a normalisation followed by a Dense.")
        return moments_of_sum(vec(ctx.p(self.beta)), x, vec(ctx.p(self.alpha)), f, ctx.ns)

    def forward_law(self, s, ctx, record=None):
        f = self.branch.theory_forward(s.push_ref(), ctx.at("branch"))
        if record is not None and "branch" not in record:
            record["branch"] = f
        return self._mix(s, f, ctx, "forward")

    def backward_law(self, s, g, ctx):
        """G_in = beta^2 G + alpha^2 G_branch + cross terms through the shared refs.

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        with branch_gain(ctx.sink, ctx.p(self.alpha)):  # weight gradients see alpha g
            gf = self.branch.theory_backward(s.push_ref(), g.push_ref(), ctx.at("branch"))
        if g.gate is not None and gf.gate is not None:
            raise UnsupportedComposition(
                f"{ctx.path}: the stream and the branch both reach a BatchNorm through a relu "
                "(two gated cotangents of one batch); their joint backward is not implemented.")
        return self._mix(g, gf, ctx, "backward")

    def mc_widths(self, n):
        n_out, widest, weight = self.branch.mc_widths(n)
        if n_out != n:
            raise ConfigError("Residual branch output width", n_out,
                              f"the width of the stream ({n}): Dense ratios in a branch must "
                              "multiply to 1")
        return n, widest, weight

    def mc_forward(self, x, env, record=None):
        f, res = self.branch.mc_forward(x, env.child(1))
        if record is not None and "branch" not in record:
            record["branch"] = f
        return mc.weighted_sum(self.beta, x, self.alpha, f), res

    def mc_vjp(self, res, g, env):
        with branch_gain(env.sink, self.alpha):  # weight gradients see alpha g
            gf = self.branch.mc_vjp(res, g, env.child(1))
        return mc.weighted_sum(self.beta, g, self.alpha, gf)


def _chain_widths(ops, n):
    """:meth:`Op.mc_widths` of ops applied one after the other."""
    widest, weight = n, 0
    for op in ops:
        n, w, wt = op.mc_widths(n)
        widest, weight = max(widest, w), max(weight, wt)
    return n, widest, weight


def layers_of(net: Op) -> list[Op]:
    """The blocks that make the layers: a top-level Repeat gives n, a top-level Serial concatenates."""
    return net.blocks()


def sweeps_of(net: Op) -> dict[str, Sweep]:
    """Every sweep used by the net, in order of first appearance; one name means one grid."""
    found: dict[str, Sweep] = {}
    for op in net.walk():
        for value in vars(op).values():
            if isinstance(value, Sweep) and found.setdefault(value.name, value) != value:
                raise ConfigError(f"sweep {value.name!r}", value.values,
                                  f"the same values wherever it is used ({found[value.name].values})")
    return found


def grid_points(sweeps: dict[str, Sweep]) -> list[dict[str, float]]:
    """Every point of the grid of ``sweeps`` ({} when there are none), the last dim fastest."""
    return [dict(zip(sweeps, point)) for point in
            itertools.product(*(s.values for s in sweeps.values()))]


def at_point(net: Op, point: dict[str, float]) -> Op:
    """``net`` with each sweep replaced by its value at ``point`` (sweep name -> value)."""
    return replace_sweeps(net, point)


def replace_sweeps(net: Op, by: dict) -> Op:
    """``net`` with each sweep named in ``by`` replaced by ``by[name]`` (a value, or another
    sweep: a part of the grid); the others kept."""
    def one(_, v):
        if isinstance(v, Sweep):
            return by.get(v.name, v)
        if isinstance(v, tuple):
            return tuple(replace_sweeps(x, by) if isinstance(x, Op) else x for x in v)
        return replace_sweeps(v, by) if isinstance(v, Op) else v

    return net.map_fields(one)
