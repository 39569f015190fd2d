"""Presets with their hyperparameters as symbols, and the substitution of values back."""

from __future__ import annotations

import dataclasses

import sympy

from sigprop import presets
from sigprop.errors import ConfigError, UnsupportedComposition
from sigprop.ops import (
    Act,
    Dense,
    LayerNorm,
    Op,
    Repeat,
    Residual,
    RMSNorm,
    Scale,
    Serial,
    layers_of,
)
from sigprop.state.params import Sweep
from sigprop.symbolic.symbols import (
    ALPHA,
    B_DN,
    BETA,
    DEEPNET,
    EPS,
    GAIN,
    RATIO,
    SIGMA_1,
    SIGMA_2,
    SIGMA_B,
    SYMBOLS,
)

# Presets with symbolic hyperparameters.

def _times(a, b):
    if isinstance(a, Sweep) or isinstance(b, Sweep):
        raise ConfigError("a DeepNorm branch scale", (a, b), "numbers or sympy expressions")
    return a * b


def op_symbols(op) -> set:
    """The free sympy symbols among the hyperparameters of ``op`` and everything inside it."""
    out = set()
    for o in op.walk():
        for v in vars(o).values():
            if isinstance(v, sympy.Basic):
                out |= v.free_symbols
    return out


def preset_block(name: str, act: str = "relu", shape: str = "mlp", **values) -> Op:
    """The block of ``presets.<name>`` with its hyperparameters as symbols.

    The preset is built (depth 1) and each hyperparameter is replaced by role: the residual
    ``alpha``, ``beta``; the branch Denses ``sigma_1``, ``sigma_2`` (DeepNorm: ``b sigma_1``,
    ``b sigma_2``), their ``sigma_b`` and ``ratio`` (mlp: ``ratio`` then ``1/ratio``); every
    LayerNorm ``eps``, ``gain``. ``values`` (by symbol name) replaces a symbol by a number,
    a sympy expression or a ``Sweep``, so the same tree serves sp.theory. The preset's own
    defaults are :func:`preset_defaults`.
    """
    unknown = set(values) - set(SYMBOLS)
    if unknown:
        raise ConfigError("preset_block values", sorted(unknown), f"names among {sorted(SYMBOLS)}")
    block = _preset_net(name, act, shape)
    n_dense = sum(isinstance(op, Dense) for op in block.walk())

    def val(sym):
        v = values.get(sym.name, sym)
        return v if isinstance(v, Sweep) else sympy.sympify(v)

    sigmas = iter((SIGMA_1, SIGMA_2))
    ratios = iter((val(RATIO), 1 / val(RATIO)) if n_dense == 2 else (sympy.Integer(1),))

    def rewrite(op: Op) -> Op:
        if isinstance(op, Serial):
            return Serial(*(rewrite(o) for o in op.layers))
        if isinstance(op, Repeat):
            return Repeat(rewrite(op.block), op.n)
        if isinstance(op, Residual):
            return Residual(rewrite(op.branch), alpha=val(ALPHA), beta=val(BETA))
        if isinstance(op, Dense):
            sw = val(next(sigmas))
            sw = _times(val(B_DN), sw) if name == "deepnorm" else sw
            return Dense(sigma_w=sw, sigma_b=val(SIGMA_B), ratio=next(ratios))
        if isinstance(op, LayerNorm):
            return LayerNorm(eps=val(EPS), gain=val(GAIN))
        if isinstance(op, RMSNorm):
            return RMSNorm(eps=val(EPS))
        if isinstance(op, (Act, Scale)):
            return op
        raise UnsupportedComposition(f"preset {name!r}: {type(op).__name__} has no symbolic law")

    return rewrite(block)


def _preset_net(name, act, shape) -> Op:
    return layers_of(presets.get(name)(1, act=act, shape=shape))[0]


def preset_defaults(name: str, act: str = "relu", shape: str = "mlp") -> dict:
    """The preset's default value of each symbol of :func:`preset_block` (read off the preset).

    DeepNorm's ``beta`` and ``b`` are the DeepNet constants in the depth ``L`` (:data:`DEEPNET`);
    ``gain`` (not exposed by presets) is LayerNorm's default 1.
    """
    net = _preset_net(name, act, shape)
    out = {RATIO: sympy.Integer(1), GAIN: sympy.Integer(1)}
    branch = presets.branch(act, shape)
    dense = [op for op in branch.walk() if isinstance(op, Dense)]
    for sym, op in zip((SIGMA_1, SIGMA_2), dense):
        out[sym] = sympy.nsimplify(op.sigma_w)
    out[SIGMA_B] = sympy.nsimplify(dense[0].sigma_b)
    for op in net.walk():
        if isinstance(op, Residual):
            out[ALPHA] = sympy.nsimplify(op.alpha)
            out[BETA] = sympy.nsimplify(op.beta)
        if isinstance(op, (LayerNorm, RMSNorm)):
            out[EPS] = sympy.nsimplify(op.eps)
    if name == "deepnorm":
        out.update(DEEPNET)
    return out



def substitute(op: Op, values: dict) -> Op:
    """A copy of ``op`` with the symbols named in ``values`` replaced (numbers or Sweeps)."""
    subs = {SYMBOLS.get(k, sympy.Symbol(k)) if isinstance(k, str) else k: v
            for k, v in values.items()}

    def one(v):
        if isinstance(v, Op):
            return substitute(v, values)
        if isinstance(v, tuple):
            return tuple(one(x) for x in v)
        if isinstance(v, sympy.Basic) and not v.is_number:
            sweeps = [subs[s] for s in v.free_symbols if isinstance(subs.get(s), Sweep)]
            if sweeps and v in subs:
                return subs[v]
            if sweeps:
                raise ConfigError("a swept symbol", v, "used alone (not inside an expression)")
            out = v.xreplace({s: sympy.sympify(subs[s]) for s in v.free_symbols if s in subs})
            return float(out) if out.is_number else out
        return float(v) if isinstance(v, sympy.Basic) else v

    if isinstance(op, Serial):
        return Serial(*(substitute(o, values) for o in op.layers))
    kwargs = {f.name: one(getattr(op, f.name)) for f in dataclasses.fields(op)}
    return type(op)(**kwargs)
