"""Numeric evaluation of symbolic results (expressions may hold unevaluated Gaussian
expectations), on datasets, and the symbolic-versus-theory comparison helpers."""

from __future__ import annotations

import numpy as np
import sympy
import xarray as xr

from sigprop.errors import ConfigError
from sigprop.kernels.integral import integral_value
from sigprop.symbolic.symbols import SYMBOLS, canonical_symbols, l


def evaluate(expr, values: dict | None = None) -> float:
    """Float value of ``expr`` at ``values`` ({symbol or name: finite number}); integrals by
    :func:`~sigprop.kernels.integral.integral_value`. A symbol left unbound is refused by name
    (with the names given that ``expr`` does not hold), as is a value that is not finite."""
    expr = sympy.sympify(expr)
    names = {s.name: s for s in expr.free_symbols}
    values = values or {}
    for k, v in values.items():
        try:
            finite = not isinstance(v, bool) and np.isfinite(float(v))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise ConfigError(f"value of {k}", v, "a finite real number")
    subs = {names.get(str(k), k if isinstance(k, sympy.Symbol) else sympy.Symbol(str(k))):
            sympy.Float(v, 30) for k, v in values.items()}  # (a symbol by its name: its
    # assumptions may differ from the expression's)
    expr = expr.xreplace(subs)
    try:
        if expr.has(sympy.Integral):
            expr = expr.replace(lambda e: isinstance(e, sympy.Integral),
                                lambda e: sympy.Float(integral_value(e), 30))
        return float(sympy.N(expr, 30))
    except (TypeError, ValueError):  # (a symbol left that does not cancel)
        if not expr.free_symbols:
            raise
        stray = sorted(str(k) for k in values if str(k) not in names)
        raise ConfigError("values", sorted(str(s) for s in expr.free_symbols), "a value for "
                          "each symbol of the expression (unbound above)"
                          + (f"; given for names it does not hold: {stray}" if stray else "")
                          ) from None


def numeric(expr, args):
    """A numpy function of ``args`` (symbols) for an integral-free ``expr`` (scipy special)."""
    if sympy.sympify(expr).has(sympy.Integral):
        raise ValueError("expression holds an integral: use evaluate() point by point")
    return sympy.lambdify(args, expr, modules=["scipy", "numpy"])


def on_dataset(expr, ds, **env):
    """``expr`` evaluated on the coordinates of a theory Dataset (an xarray DataArray).

    Symbols are bound by name: ``env`` (numbers or DataArrays, e.g. ``q_0`` over ``input``),
    then ``l`` -> ``ds.layer``, then any swept coordinate of ``ds`` of the same name. Gaussian
    expectations left as integrals are evaluated by quadrature once the scalars are bound.
    """

    expr = canonical_symbols(expr)
    scalars = {SYMBOLS.get(k, sympy.Symbol(k)): v for k, v in env.items()
               if not isinstance(v, xr.DataArray)}
    expr = expr.subs(scalars)
    if expr.has(sympy.Integral):
        expr = expr.replace(lambda e: isinstance(e, sympy.Integral) and not e.free_symbols,
                            lambda e: sympy.Float(integral_value(e), 30))
    syms = sorted(expr.free_symbols, key=str)
    args = []
    for s in syms:
        if s.name in env:
            args.append(env[s.name])
        elif s == l:
            args.append(ds["layer"].astype(float))
        elif s.name in ds.coords:
            args.append(ds[s.name])
        else:
            raise ValueError(f"no value for {s} (give it in env)")
    if expr.has(sympy.Integral):
        f = np.vectorize(lambda *a: evaluate(expr, dict(zip(syms, a))))
        return xr.apply_ufunc(f, *args)
    out = numeric(expr, syms)(*args)
    return out if isinstance(out, xr.DataArray) else xr.DataArray(out)
