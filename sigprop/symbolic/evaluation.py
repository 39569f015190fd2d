"""Numeric evaluation of symbolic results (expressions may hold unevaluated Gaussian
expectations), on datasets, and the symbolic-versus-theory comparison helpers."""

from __future__ import annotations

import numpy as np
import scipy.integrate
import sympy
import xarray as xr

from sigprop.symbolic.symbols import SYMBOLS, canonical_symbols, l

Z_CUT = 40.0
"""The Gaussian expectations of sigprop.kernels.gaussian integrate over standard normal variables;
their infinite limits are cut at +-Z_CUT (the density is below e^{-800} there), which keeps
exp(-sqrt(q) z) in the integrands finite."""


def _limit(x) -> float:
    return float(max(-Z_CUT, min(Z_CUT, float(x))))


def _integral_value(integral: sympy.Integral) -> float:
    """A 1-D or 2-D Gaussian expectation evaluated by adaptive quadrature (scipy)."""

    if integral.free_symbols:
        raise ValueError(f"unbound symbols {integral.free_symbols} in {integral}")
    limits = integral.limits
    with np.errstate(all="ignore"):
        if len(limits) == 1:
            (v, a, b), = limits
            f = sympy.lambdify(v, integral.function, "numpy")
            return scipy.integrate.quad(f, _limit(a), _limit(b), epsabs=1e-14, epsrel=1e-13,
                                        limit=500)[0]
        if len(limits) == 2:
            (v1, a1, b1), (v2, a2, b2) = limits
            f = sympy.lambdify((v2, v1), integral.function, "numpy")
            return scipy.integrate.dblquad(f, _limit(a2), _limit(b2), _limit(a1), _limit(b1),
                                           epsabs=1e-13, epsrel=1e-12)[0]
    raise ValueError(f"integral of dimension {len(limits)}")


def evaluate(expr, values: dict | None = None) -> float:
    """Float value of ``expr`` at ``values`` ({symbol or name: number}); integrals by quadrature."""
    expr = sympy.sympify(expr)
    names = {s.name: s for s in expr.free_symbols}
    subs = {names.get(k, sympy.Symbol(k)) if isinstance(k, str) else k: sympy.Float(v, 30)
            for k, v in (values or {}).items()}
    expr = expr.xreplace(subs)
    if expr.has(sympy.Integral):
        expr = expr.replace(lambda e: isinstance(e, sympy.Integral),
                            lambda e: sympy.Float(_integral_value(e), 30))
    return float(sympy.N(expr, 30))


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
                            lambda e: sympy.Float(_integral_value(e), 30))
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
