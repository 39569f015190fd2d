"""Hyperparameter values: numbers, sweeps (one grid dim each) or sympy symbols, validated."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy

from sigprop.errors import ConfigError
from sigprop.state.ns import NUMERIC, Namespace


@dataclass(frozen=True)
class Sweep:
    """A hyperparameter swept over ``values``; the theory gets one grid dim named ``name``."""

    name: str
    values: tuple[float, ...]

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError("sweep name", self.name, "a Python identifier such as 'sigma_w'")
        if self.name in RESERVED_DIMS:
            raise ConfigError("sweep name", self.name, f"not one of the reserved dims {RESERVED_DIMS}")
        from sigprop.schema import ALL_VARIABLES

        if self.name in ALL_VARIABLES:  # (its coordinate replaced the variable of its name)
            raise ConfigError("sweep name", self.name, "not the name of a dataset variable "
                              "(q, corr, log_q, var_log_q, ...): name it after its parameter, "
                              "e.g. 'alpha'")
        field = f"sweep {self.name!r} values"
        allowed = "at least one finite real number, as a flat list"
        try:
            array = np.atleast_1d(np.asarray(self.values))
        except (TypeError, ValueError):  # ragged nesting
            raise ConfigError(field, self.values, allowed) from None
        if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iuf" or \
                not np.all(np.isfinite(array)):
            raise ConfigError(field, self.values, allowed)
        values = tuple(float(v) for v in array)
        if len(set(values)) < len(values):  # (a coordinate of repeated labels)
            raise ConfigError(field, self.values, "distinct values")
        object.__setattr__(self, "values", values)


# the datasets' dims and coordinates (block: on layer), the pipeline's (arch, batch, width)
# and sp.compare's (stat): a sweep of one of these names was taken, then collided
RESERVED_DIMS = ("layer", "block", "input", "input_b", "seed", "arch", "batch", "width", "stat")


def sweep(name: str, values) -> Sweep:
    """``sp.sweep("sigma_w", [1.0, 1.5, 2.0])``: sweep a hyperparameter in one vectorised call."""
    return Sweep(name, values)


def check(field: str, value, ok: Callable[[float], bool], allowed: str):
    """Validate a number (or every value of a sweep); symbols pass unchecked. Returns value."""
    if isinstance(value, sympy.Basic) and not value.is_number:
        return value
    values = value.values if isinstance(value, Sweep) else (value,)
    for v in values:
        if isinstance(v, (str, bytes)):
            raise ConfigError(field, v, allowed)
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ConfigError(field, v, allowed) from None
        if isinstance(v, bool) or not math.isfinite(x) or not ok(x):
            raise ConfigError(field, v, allowed)
    return value if isinstance(value, (Sweep, sympy.Basic)) else float(value)


class Sink:
    """Base of the engines' backward sinks (``Context.sink``, ``Env.sink``): the gain of the
    cotangent that the laws carry. A ``Residual`` pulls the unscaled cotangent through its
    branch and scales the result by alpha (the backward is linear in it), but a weight inside
    the branch has its gradient at alpha times that cotangent: ``log_gain`` = log alpha^2 of the
    enclosing branches (0 outside any), set by :meth:`gain` around the branch's backward.
    ``ns``: the namespace of the arrays it takes (jax's in the compiled engine)."""

    ns: Namespace = NUMERIC

    def __init__(self):
        self.log_gain = np.zeros(())

    @contextmanager
    def gain(self, alpha):
        """Within: the true cotangent is ``alpha`` (a number or grid array) times the carried one."""
        saved = self.log_gain
        with np.errstate(divide="ignore"):  # alpha = 0: no gradient reaches the branch
            self.log_gain = saved + 2 * self.ns.log(self.ns.abs(self.ns.asarray(alpha)))
        try:
            yield self
        finally:
            self.log_gain = saved


def values_of(value) -> np.ndarray:
    """Every value a parameter takes: a sweep's values, or the one value (1-D float array)."""
    if isinstance(value, Sweep):
        return np.asarray(value.values, dtype=float)
    return np.atleast_1d(np.asarray(float(value)))


def branch_gain(sink: Sink | None, alpha):
    """``sink.gain(alpha)``, or nothing to do without a sink."""
    return nullcontext() if sink is None else sink.gain(alpha)


@dataclass(frozen=True)
class Context:
    """Where a law is evaluated: the namespace, the sweep grid and the op's path (for errors).

    ``tape``: where combinators keep the intermediate states of a forward law, keyed by ``key``
    (the op's position inside its block), for the backward law of the same block to reuse
    instead of recomputing them (None: nothing kept). ``params``: the grid-shaped arrays of the
    sweeps already met, shared by every context derived with :meth:`at` (one array per sweep
    per run, not one per call). ``sink``: where a backward law reports what the engine records
    beyond the cotangent (the weight-gradient norms of :meth:`Dense.backward_law
    <sigprop.ops.dense.Dense.backward_law>`, :class:`sigprop.engines.theory.WeightGrads`);
    shared, like ``tape``, by every context derived with :meth:`at` (None: nothing reported).
    ``guard``: where every op reports its output state, with its input and itself (shared the
    same way; None: not kept), for an engine in true units to check or bound their range
    (:mod:`sigprop.engines.compiled`).
    """

    ns: Namespace = NUMERIC
    dims: tuple[str, ...] = ()
    path: str = "net"
    tape: dict | None = field(default=None, repr=False, compare=False)
    key: str = ""
    params: dict = field(default_factory=dict, repr=False, compare=False)
    sink: Any = field(default=None, repr=False, compare=False)
    guard: list | None = field(default=None, repr=False, compare=False)

    def at(self, name: str) -> Context:
        return Context(self.ns, self.dims, f"{self.path} > {name}", self.tape,
                       f"{self.key}/{name}", self.params, self.sink, self.guard)

    def block(self, name: str, tape: dict | None = None, sink=None, guard=None) -> Context:
        """The context of one block of a net, named ``name`` (a block's key starts empty, so its
        forward and backward contexts find the same entries of ``tape``), reporting to ``sink``
        and ``guard``."""
        return Context(self.ns, self.dims, f"{self.path} > {name}", tape, "", self.params, sink,
                       guard)

    def p(self, value) -> Any:
        """A parameter as an array broadcasting against the grid dims ``(*dims,)``."""
        if isinstance(value, Sweep):
            if self.ns.symbolic:
                return np.asarray(sympy.Symbol(value.name), dtype=object)
            cached = self.params.get(id(value))
            if cached is None or cached[0] is not value:
                shape = [1] * len(self.dims)
                shape[self.dims.index(value.name)] = len(value.values)
                array = np.asarray(value.values, dtype=float).reshape(shape)
                array.flags.writeable = False  # shared by every law that reads it
                cached = self.params[id(value)] = (value, array)
            return cached[1]
        if self.ns.symbolic:
            return np.asarray(sympy.sympify(value), dtype=object)
        if isinstance(value, sympy.Basic):
            value = float(value)
        return np.asarray(value, dtype=float)
