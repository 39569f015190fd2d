"""The op vocabulary. Each op owns all its faces in one place.

Faces (an op adds a face by adding methods here, never a parallel module):

* ``theory_forward(s, ctx, record)`` and ``theory_backward(s, g, ctx)``: the infinite-width law
  on :class:`~sigprop.state.moments.Moments`, written once over ``ctx.ns`` so that the numeric
  (numpy) and the symbolic (sympy) faces are the same source;
* the Monte Carlo face (forward on arrays and its vector-Jacobian product) lives beside it.

Conventions are those of DESIGN.md: ``Dense`` draws ``W_ij ~ N(0, sigma_w^2 / n_in)``,
``b_i ~ N(0, sigma_b^2)``, ``n_out = ratio * n_in``; ``Residual`` maps x to
``beta x + alpha branch(x)``. The backward laws pull the gradient Gram back under an
independent readout (the cotangent at the top is drawn independently of the net), for which
cotangents have feature mean 0 and are uncorrelated with the forward features.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import sympy

from sigprop.errors import ConfigError
from sigprop.state import arrays as mc
from sigprop.state.moments import Moments, affine
from sigprop.state.params import Context, Sweep

POSITIVE = (lambda x: x > 0, "> 0")
NONNEG = (lambda x: x >= 0, ">= 0")
FINITE = (lambda x: True, "a finite number")


def vec(p):
    """A grid-shaped parameter as a per-input vector (..., 1)."""
    return p[..., None]


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
            out[f.name] = _encode(getattr(self, f.name))
        return out

    # -- theory face ----------------------------------------------------------------------
    def theory_forward(self, s: Moments, ctx: Context, record: dict | None = None) -> Moments:
        raise NotImplementedError

    def theory_backward(self, s: Moments, g: Moments, ctx: Context) -> Moments:
        """Pull the cotangent moments ``g`` at this op's output back to its input ``s``."""
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


def cotangent_affine(g: Moments, a, ls_shift) -> Moments:
    """Backward of y = a (x - t): G_in = a_a a_b G (cotangent mean 0), log scale shifted."""
    return affine(g, a, None, g.ls + ls_shift)
