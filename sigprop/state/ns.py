"""Namespaces over which every propagation law is written once.

A law is a function of arrays and a namespace ``ns``; with :data:`NUMERIC` the arrays are
float64 numpy arrays (broadcast over grid dims), with :data:`SYMBOLIC` they are numpy object
arrays of sympy expressions. The same source therefore gives the numeric and symbolic faces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special
import sympy


@dataclass(frozen=True)
class Namespace:
    name: str
    symbolic: bool
    sqrt: Callable[[Any], Any]
    exp: Callable[[Any], Any]
    log: Callable[[Any], Any]
    acos: Callable[[Any], Any]
    asin: Callable[[Any], Any]
    erf: Callable[[Any], Any]
    abs: Callable[[Any], Any]
    pi: Any

    def asarray(self, x):
        """An array of this namespace (object dtype of sympy expressions when symbolic)."""
        if self.symbolic:
            return np.asarray(x, dtype=object)
        return np.asarray(x, dtype=float)


def _elementwise(f):
    """Apply a sympy function elementwise to scalars or object arrays."""
    vec = np.frompyfunc(f, 1, 1)

    def g(x):
        out = vec(x)
        return out if isinstance(out, np.ndarray) else sympy.sympify(out)

    return g


NUMERIC = Namespace(
    name="numpy", symbolic=False, sqrt=np.sqrt, exp=np.exp, log=np.log, acos=np.arccos,
    asin=np.arcsin, erf=scipy.special.erf, abs=np.abs, pi=np.pi,
)

SYMBOLIC = Namespace(
    name="sympy", symbolic=True, sqrt=_elementwise(sympy.sqrt), exp=_elementwise(sympy.exp),
    log=_elementwise(sympy.log), acos=_elementwise(sympy.acos), asin=_elementwise(sympy.asin),
    erf=_elementwise(sympy.erf), abs=_elementwise(sympy.Abs), pi=sympy.pi,
)
