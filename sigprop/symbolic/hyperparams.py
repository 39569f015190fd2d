"""Presets with their hyperparameters as symbols, and the substitution of values back."""

from __future__ import annotations

import sympy

from sigprop import presets
from sigprop.errors import ConfigError, UnsupportedComposition
from sigprop.ops import Op, layers_of
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

ROLE_SYMBOLS = {"alpha": ALPHA, "beta": BETA, "eps": EPS, "gain": GAIN, "sigma_b": SIGMA_B}
"""The symbol of each role in ``Op.SYMBOLIC_ROLES`` with one symbol (``sigma_w`` and ``ratio``
take one per Dense, in order)."""


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

    The preset is built (depth 1) and each hyperparameter is replaced by the role its op
    declares (``Op.SYMBOLIC_ROLES``): the residual ``alpha``, ``beta``; the branch Denses
    ``sigma_1``, ``sigma_2`` (DeepNorm: ``b sigma_1``, ``b sigma_2``), their ``sigma_b`` and
    ``ratio`` (mlp: ``ratio`` then ``1/ratio``); every norm's ``eps``, ``gain``. ``values`` (by
    symbol name) replaces a symbol by a number, a sympy expression or a ``Sweep``, so the same
    tree serves sp.theory. The preset's own defaults are :func:`preset_defaults`.
    """
    unknown = set(values) - set(SYMBOLS)
    if unknown:
        raise ConfigError("preset_block values", sorted(unknown), f"names among {sorted(SYMBOLS)}")
    block = _preset_net(name, act, shape)
    n_dense = sum("sigma_w" in op.SYMBOLIC_ROLES.values() for op in block.walk())

    def val(sym):
        v = values.get(sym.name, sym)
        return v if isinstance(v, Sweep) else sympy.sympify(v)

    sigmas = iter((SIGMA_1, SIGMA_2))
    ratios = iter((val(RATIO), 1 / val(RATIO)) if n_dense == 2 else (sympy.Integer(1),))

    def role(name_of_role):
        if name_of_role == "sigma_w":
            sw = val(next(sigmas))
            return _times(val(B_DN), sw) if name == "deepnorm" else sw
        if name_of_role == "ratio":
            return next(ratios)
        return val(ROLE_SYMBOLS[name_of_role])

    def rewrite(op: Op) -> Op:
        if not op.symbolic_law:
            raise UnsupportedComposition(f"preset {name!r}: {type(op).__name__} has no symbolic law")
        roles = op.SYMBOLIC_ROLES
        return op.map_fields(lambda field, v: role(roles[field]) if field in roles
                             else _map_ops(v, rewrite))

    return rewrite(block)


def _map_ops(v, fn):
    """fn applied to an op, or to each op of a tuple of ops; other values as they are."""
    if isinstance(v, Op):
        return fn(v)
    if isinstance(v, tuple):
        return tuple(_map_ops(x, fn) for x in v)
    return v


def _preset_net(name, act, shape) -> Op:
    return layers_of(presets.get(name)(1, act=act, shape=shape))[0]


def preset_defaults(name: str, act: str = "relu", shape: str = "mlp") -> dict:
    """The preset's default value of each symbol of :func:`preset_block` (read off the preset).

    DeepNorm's ``beta`` and ``b`` are the DeepNet constants in the depth ``L`` (:data:`DEEPNET`);
    ``gain`` (not exposed by presets) is LayerNorm's default 1.
    """
    out = {RATIO: sympy.Integer(1), GAIN: sympy.Integer(1)}
    sigmas = iter((SIGMA_1, SIGMA_2))
    for op in presets.branch(act, shape).walk():  # the branch before any DeepNorm rescaling
        for field, r in op.SYMBOLIC_ROLES.items():
            if r == "sigma_w":
                out[next(sigmas)] = sympy.nsimplify(getattr(op, field))
            elif r == "sigma_b":
                out.setdefault(SIGMA_B, sympy.nsimplify(getattr(op, field)))
    for op in _preset_net(name, act, shape).walk():
        for field, r in op.SYMBOLIC_ROLES.items():
            if r in ("alpha", "beta", "eps"):
                out[ROLE_SYMBOLS[r]] = sympy.nsimplify(getattr(op, field))
    if name == "deepnorm":
        out.update(DEEPNET)
    return out



def check_names(op: Op, values: dict, who: str = "substitute value", shared: bool = False):
    """Each key of ``values`` names a symbol of ``op`` (a typo would leave it unbound); with
    ``shared``, or a canonical symbol it lacks (one set of values for several blocks)."""
    symbols = {str(x) for x in op_symbols(op)}
    allowed = symbols | ({str(x) for x in SYMBOLS.values()} if shared else set())
    for k in values:
        if str(SYMBOLS.get(k, k)) not in allowed:
            raise ConfigError(who, k, f"one of the op's symbols {sorted(symbols)}"
                              + (" or a canonical one" if shared else ""))


def substitute(op: Op, values: dict) -> Op:
    """A copy of ``op`` with the symbols named in ``values`` replaced (numbers or Sweeps); a
    name that is neither a symbol of ``op`` nor a canonical one (``SYMBOLS``) is refused."""
    check_names(op, values, shared=True)
    return _substituted(op, values)


def _substituted(op: Op, values: dict) -> Op:
    subs = {SYMBOLS.get(k, sympy.Symbol(k)) if isinstance(k, str) else k: v
            for k, v in values.items()}

    def one(field, v):
        if isinstance(v, (Op, tuple)):
            return _map_ops(v, lambda kid: _substituted(kid, values))
        if isinstance(v, sympy.Basic) and not v.is_number:
            sweeps = [subs[s] for s in v.free_symbols if isinstance(subs.get(s), Sweep)]
            if sweeps and v in subs:
                return subs[v]
            if sweeps:
                raise ConfigError("a swept symbol", v, "used alone (not inside an expression)")
            out = v.xreplace({s: sympy.sympify(subs[s]) for s in v.free_symbols if s in subs})
            return float(out) if out.is_number else out
        return float(v) if isinstance(v, sympy.Basic) else v

    return op.map_fields(one)
