"""The base of every op: its faces as methods, validation, printing, (de)serialisation.

Faces (an op adds a face by adding a method to its class, never a parallel module):

* theory: ``forward_law(s, ctx, record)`` and ``backward_law(s, g, ctx)``, the infinite-width law
  on :class:`~sigprop.state.moments.Moments` / :class:`~sigprop.state.moments.Cotangent`,
  written once over ``ctx.ns`` so that the numeric (numpy) and symbolic (sympy) faces are the
  same source. Callers go through ``theory_forward`` / ``theory_backward``, which first check
  the op's declared precondition (:meth:`Op.requires`, :attr:`Op.symbolic_law`) in one place;
* Monte Carlo: ``mc_forward`` (arrays) and its vector-Jacobian product ``mc_vjp``, the random
  streams it takes (``mc_ops``) and the widths and weight sizes it implies (``mc_widths``);
* symbolic: ``SYMBOLIC_ROLES``, which hyperparameter of the op plays which role in a preset's
  symbolic block (:mod:`sigprop.symbolic.hyperparams`).

Conventions are those of DESIGN.md: ``Dense`` draws ``W_ij ~ N(0, sigma_w^2 / n_in)``,
``b_i ~ N(0, sigma_b^2)``, ``n_out = ratio * n_in``; ``Residual`` maps x to
``beta x + alpha branch(x)``.

Every backward law assumes **gradient independence**: the weights met backward are taken
independent of those met forward (Schoenholz et al. 2017; Yang 2019 shows the resulting
backward laws exact for the gradient Gram as N -> infinity at fixed depth, for a readout
drawn independently of the net). It is not uniform in depth: a stream that carries a mean
couples the cotangent's mean mode to it, with a correction that grows with depth (see
``sampler="independent"`` in :mod:`sigprop.engines.montecarlo`, which isolates it).
"""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any, ClassVar

import sympy

from sigprop.errors import ConfigError, UnsupportedComposition
from sigprop.state import arrays as mc
from sigprop.state.moments import Cotangent, Moments, affine
from sigprop.state.params import Context, Sweep

POSITIVE = (lambda x: x > 0, "> 0")
NONNEG = (lambda x: x >= 0, ">= 0")
FINITE = (lambda x: True, "a finite number")
# a scale the laws square (sigma_w^2, gamma^2): its square a float64 too (|x| < 1.34e154)
SQUARABLE = (lambda x: math.isfinite(x * x), "a number whose square is finite (|x| < 1.34e154)")
NONNEG_SQUARABLE = (lambda x: x >= 0 and math.isfinite(x * x),
                    ">= 0, its square finite (below 1.34e154)")


def vec(p):
    """A grid-shaped parameter as a per-input vector (..., 1)."""
    return p[..., None]


def is_zero(v) -> bool:
    """A parameter that is statically 0 (the number, or a sweep of zeros)."""
    if isinstance(v, Sweep):
        return all(x == 0 for x in v.values)
    return isinstance(v, (int, float)) and v == 0


class Op:
    """Base of every op: validation, printing as a tree, (de)serialisation."""

    REGISTRY: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Op.REGISTRY[cls.__name__] = cls

    # -- structure ------------------------------------------------------------------------
    def children(self) -> tuple[Op, ...]:
        return ()

    def label(self) -> str:
        args = ", ".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self)
                         if not isinstance(getattr(self, f.name), (Op, tuple)))
        return f"{type(self).__name__}({args})"

    def tree(self, prefix: str = "") -> str:
        lines = [self.label()]
        kids = self.children()
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            sub = kid.tree(prefix + ("    " if last else "│   "))
            lines.append(prefix + ("└── " if last else "├── ") + sub)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.tree()

    def _repr_html_(self) -> str:
        """Jupyter: the tree as nested collapsible ``<details>`` elements."""
        kids = self.children()
        label = html.escape(self.label())
        if not kids:
            return f"<div><code>{label}</code></div>"
        body = "".join(kid._repr_html_() for kid in kids)
        return (f"<details open><summary><code>{label}</code></summary>"
                f"<div style='margin-left:1.5em'>{body}</div></details>")

    def blocks(self) -> list[Op]:
        """The blocks that make this op's layers when it is a whole net (itself, by default)."""
        return [self]

    def n_blocks(self) -> int:
        """``len(self.blocks())``; Serial and Repeat count without the list (a Repeat of 10^11
        blocks)."""
        return len(self.blocks())

    def walk(self):
        yield self
        for kid in self.children():
            yield from kid.walk()

    @classmethod
    def from_fields(cls, **fields) -> Op:
        """The op with these dataclass field values (the inverse of reading its fields)."""
        return cls(**fields)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"op": type(self).__name__}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("omit_default") and value == f.default:
                continue  # a field added later: configs written before it keep their form
            out[f.name] = _encode(value)
        return out

    # -- preconditions ---------------------------------------------------------------------
    symbolic_law: ClassVar[bool] = True  # whether the law is written over the sympy namespace too
    # whether an input's output or cotangent depends on the other inputs' (BatchNorm's batch
    # statistics); where no op of a net does, its backward keeps a diagonal cotangent diagonal,
    # which the compiled engine's backward relies on (compiled._diagonal)
    couples_inputs: ClassVar[bool] = False

    def requires(self, s: Moments) -> str | None:
        """Why this op's law cannot take a stream in state ``s``; None when it can."""
        return None

    def _check(self, s: Moments, ctx: Context):
        if ctx.ns.symbolic and not self.symbolic_law:
            raise UnsupportedComposition(
                f"{ctx.path}: {type(self).__name__} has no closed-form symbolic law")
        reason = self.requires(s)
        if reason is not None:
            raise UnsupportedComposition(f"{ctx.path}: {reason}")

    # -- theory face ----------------------------------------------------------------------
    def theory_forward(self, s: Moments, ctx: Context, record: dict | None = None) -> Moments:
        """The infinite-width law of the stream through this op (precondition checked; the
        output reported to ``ctx.guard``)."""
        self._check(s, ctx)
        return _guarded(self, s, self.forward_law(s, ctx, record), ctx)

    def theory_backward(self, s: Moments, g: Cotangent, ctx: Context) -> Cotangent:
        """Pull the cotangent ``g`` at this op's output back to its input ``s`` (checked)."""
        self._check(s, ctx)
        return _guarded(self, s, self.backward_law(s, g, ctx), ctx)

    def forward_law(self, s: Moments, ctx: Context, record: dict | None = None) -> Moments:
        raise NotImplementedError

    def diag_bound(self, lo: float, hi: float, s: Moments) -> tuple[float, float] | None:
        """(lo', hi'): bounds on the diagonal of the forward law's output K for every input
        state of ``s``'s law whose K diagonal is within [lo, hi] and whose log scale is 0, at
        every value of the op's sweeps; None where the op has none (the default). The compiled
        engine in true units checks at run time only the states it cannot bound this way."""
        return None

    def backward_law(self, s: Moments, g: Cotangent, ctx: Context) -> Cotangent:
        """The cotangent at the input from the one at the output, under gradient independence
        (this module's docstring: reference and regime)."""
        raise NotImplementedError

    # -- Monte Carlo face (arrays (seeds, inputs, width) in log-scaled form, sigprop.state.arrays) ---
    def mc_forward(self, x: mc.Sig, env: mc.Env, record: dict | None = None):
        """Forward on a batch of signals; returns (output, residuals that mc_vjp needs)."""
        raise NotImplementedError

    def mc_vjp(self, res, g: mc.Sig, env: mc.Env) -> mc.Sig:
        """Vector-Jacobian product: the cotangent ``g`` at the output pulled back to the input."""
        raise NotImplementedError

    def mc_ops(self) -> int:
        """How many op indices (names of random streams) this op and its children take."""
        return 1 + sum(kid.mc_ops() for kid in self.children())

    def mc_widths(self, n: int) -> tuple[int, int, int]:
        """(output width, widest width, largest weight n_in n_out) on width-``n`` features."""
        return n, n, 0

    def width_ratio(self, p=None) -> Any:
        """n_out / n_in (None where a swept or symbolic ratio leaves it open; with ``p``, a
        :meth:`Context.p <sigprop.state.params.Context.p>`, over the sweep grid)."""
        return 1.0

    # -- symbolic face ----------------------------------------------------------------------
    SYMBOLIC_ROLES: ClassVar[dict[str, str]] = {}  # field -> role in a preset's symbolic block

    def map_fields(self, fn) -> Op:
        """The same op with every field value v replaced by fn(name, v) (children included)."""
        return self.from_fields(**{f.name: fn(f.name, getattr(self, f.name))
                                   for f in dataclasses.fields(self)})


def _guarded(op: Op, s: Moments, out, ctx: Context):
    """``out``, the output of ``op`` at its input ``s``, reported to ``ctx.guard`` where there
    is one."""
    if ctx.guard is not None:
        ctx.guard.report(op, s, out)
    return out


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, Sweep):
        return f"sweep({v.name!r}, n={len(v.values)})"
    return repr(v)


def _encode(v):
    if isinstance(v, Op):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_encode(x) for x in v]
    if isinstance(v, Sweep):
        return {"sweep": v.name, "values": list(v.values)}
    if isinstance(v, sympy.Basic):
        return {"sympy": sympy.srepr(v)}
    return v


def _decode(v):
    if isinstance(v, dict) and "op" in v:
        return op_from_dict(v)
    if isinstance(v, dict) and "sweep" in v:
        return Sweep(v["sweep"], tuple(v["values"]))
    if isinstance(v, dict) and "sympy" in v:
        return sympy.sympify(v["sympy"])
    if isinstance(v, list):
        return tuple(_decode(x) for x in v)
    return v


def op_from_dict(d: dict) -> Op:
    """Inverse of :meth:`Op.to_dict`."""
    cls = Op.REGISTRY.get(d.get("op"))
    if cls is None:
        raise ConfigError("op", d.get("op"), f"one of {sorted(Op.REGISTRY)}")
    return cls.from_fields(**{k: _decode(v) for k, v in d.items() if k != "op"})


def cotangent_affine(g: Cotangent, a, ls_shift, ns) -> Cotangent:
    """Backward of y = a (x - t): G_in = a_a a_b G (cotangent mean 0), log scale shifted."""
    return affine(g, a, None, g.ls + ls_shift, ns)
