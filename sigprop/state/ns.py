"""Namespaces over which every propagation law is written once.

A law is a function of arrays and a namespace ``ns``; with :data:`NUMERIC` the arrays are
float64 numpy arrays (broadcast over grid dims), with :data:`SYMBOLIC` they are numpy object
arrays of sympy expressions. The same source therefore gives the numeric and symbolic faces.
:func:`jax_namespace` is a third, for the compiled engine (:mod:`sigprop.engines.compiled`): the
same laws traced with ``jax.numpy`` (float64) into one compiled function.

Array operations beyond the elementwise functions (where, maximum, diagonal, ...) go through
``ns.xp``, the array module (numpy for NUMERIC and SYMBOLIC, ``jax.numpy`` for JAX). A traced
namespace (``ns.traced``) has no values at trace time: a law may not branch on them. A law
whose numeric rule does (the quadratures choose their nodes by value) runs that rule through
``ns.host``: called directly by NUMERIC, a host callback in the traced program (the same numpy
function, so the same values).
"""

from __future__ import annotations

import functools
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
    xp: Any = np  # the array module: where, maximum, diagonal, swapaxes, ...
    traced: bool = False  # values unknown while the law runs (jax tracing)
    # states handed on in true units (the compiled engine's first try, its range checked by the
    # engine): affine applies a far factor as it is (:func:`sigprop.state.moments.affine`)
    unscaled: bool = False
    host: Callable[..., Any] = lambda fn, shapes, *args: fn(*args)  # see ``_jax_host``
    atan2: Callable[[Any, Any], Any] | None = None  # numeric faces (the symbolic one keeps asin)

    def asarray(self, x):
        """An array of this namespace (object dtype of sympy expressions when symbolic)."""
        if self.symbolic:
            return np.asarray(x, dtype=object)
        return self.xp.asarray(x, dtype=float)

    def take(self, x, *index):
        """``x[..., *index]`` for constant integer arrays ``index`` (one per trailing axis).
        Traced: one static slice per entry, stacked (XLA compiles a gather, even of constant
        indices, to a generic loop ~10x slower than the fused slices on the CPU)."""
        if not self.traced:
            return x[(Ellipsis, *index)]
        index = np.broadcast_arrays(*(np.asarray(i) for i in index))
        parts = [x[(Ellipsis, *(int(i.flat[k]) for i in index))] for k in range(index[0].size)]
        return self.xp.stack(parts, -1).reshape(x.shape[:x.ndim - len(index)] + index[0].shape)


def _elementwise(f):
    """Apply a sympy function elementwise to scalars or object arrays."""
    vec = np.frompyfunc(f, 1, 1)

    def g(x):
        out = vec(x)
        return out if isinstance(out, np.ndarray) else sympy.sympify(out)

    return g


NUMERIC = Namespace(
    name="numpy", symbolic=False, sqrt=np.sqrt, exp=np.exp, log=np.log, acos=np.arccos,
    asin=np.arcsin, atan2=np.arctan2, erf=scipy.special.erf, abs=np.abs, pi=np.pi,
)

SYMBOLIC = Namespace(
    name="sympy", symbolic=True, sqrt=_elementwise(sympy.sqrt), exp=_elementwise(sympy.exp),
    log=_elementwise(sympy.log), acos=_elementwise(sympy.acos), asin=_elementwise(sympy.asin),
    erf=_elementwise(sympy.erf), abs=_elementwise(sympy.Abs), pi=sympy.pi,
)


JAX_HINT = "pip install 'sigprop[jax]'"

# atan t = t + t z P(z) / Q(z), z = t^2, for |t| <= 0.66 (Cephes' atan, S. L. Moshier: relative
# error 1.8e-16 peak on (-10, 10)); beyond, atan t = pi/4 + atan((t - 1) / (t + 1)) up to
# tan(3 pi / 8), and pi/2 + atan(-1 / t) past it.
_ATAN_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
           -1.228866684490136173410e2, -6.485021904942025371773e1)
_ATAN_Q = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
           4.853903996359136964868e2, 1.945506571482613964425e2)
_TAN_3PI_8 = 2.41421356237309504880
_PI_2_LO = 6.123233995736765886130e-17  # pi/2 - float(pi/2)


def _atan2(xp):
    """atan2 over the array module ``xp`` in its elementwise arithmetic alone (+ - * /,
    compare, select), for the compiled engine: XLA's CPU atan2 is a scalar libm call per
    element (6.6 ns against 0.9 for this, ``benchmarks/xla_ops.py --per-op``), while these
    vectorise, and give an element the same bits whatever the array's length
    (XLA's atan does not: :func:`sigprop.kernels.gaussian._angle`). The ratio of |y| and |x|
    is reduced as Cephes' atan does, from |y| and |x| themselves (one division: -|x| / |y|,
    (|y| - |x|) / (|y| + |x|) or |y| / |x|), then the quadrant and sign are restored. Within 2
    ulp of numpy's arctan2 (glibc's) on the kernels' arguments (|y| <= 1, 0 <= x <= 1), 2.2e-16
    relative to 40-digit mpmath like numpy's; atan2(0, 0) = 0, NaN in, NaN out; (inf, inf)
    gives NaN, not pi/4 (no law takes an angle of infinities)."""

    def atan2(y, x):
        y, x = xp.broadcast_arrays(xp.asarray(y, dtype=float), xp.asarray(x, dtype=float))
        a, b = xp.abs(y), xp.abs(x)
        big = xp.maximum(a, b) > 2.0**1000  # a + b would overflow: a common power of 2 off
        a, b = xp.where(big, a * 2.0**-4, a), xp.where(big, b * 2.0**-4, b)
        far, mid = a > _TAN_3PI_8 * b, a > 0.66 * b
        num = xp.where(far, -b, xp.where(mid, a - b, a))
        den = xp.where(far, a, xp.where(mid, a + b, b))
        t = xp.where(den == 0, 0.0, num / den)
        z = t * t
        P, Q = _ATAN_P, _ATAN_Q
        p = (((P[0] * z + P[1]) * z + P[2]) * z + P[3]) * z + P[4]
        q = ((((z + Q[0]) * z + Q[1]) * z + Q[2]) * z + Q[3]) * z + Q[4]
        base = xp.where(far, np.pi / 2, xp.where(mid, np.pi / 4, 0.0))
        low = xp.where(far, _PI_2_LO, xp.where(mid, 0.5 * _PI_2_LO, 0.0))
        r = base + ((t + t * (z * p / q)) + low)  # atan(|y| / |x|)
        r = xp.where(x < 0, (np.pi - r) + 2 * _PI_2_LO, r)
        return xp.copysign(r, y)

    return atan2


@functools.cache
def jax_namespace(unscaled: bool = False) -> Namespace:
    """The namespace of ``jax.numpy`` (the compiled engine traces the laws over it; float64
    needs ``jax_enable_x64`` while tracing and running), ``unscaled`` or not (:class:`Namespace`).
    ImportError with the install hint when jax is missing."""
    try:
        import jax.numpy as jnp
        import jax.scipy.special
    except ImportError as e:
        raise ImportError(f"the compiled theory engine needs jax: {JAX_HINT}") from e
    atan2 = jax.jit(_atan2(jnp))  # (traced once per shape: inline, ~60 ops a call took ~20 ms
    # of tracing each, a fifth of a Pre-LN erf net's first call)
    return Namespace(
        name="jax", symbolic=False, sqrt=jnp.sqrt, exp=jnp.exp, log=jnp.log,
        acos=lambda c: atan2(jnp.sqrt((1 - c) * (1 + c)), c),  # (XLA's own expansion of acos)
        asin=jnp.arcsin, atan2=atan2, erf=jax.scipy.special.erf, abs=jnp.abs, pi=np.pi,
        xp=_JaxArrays(jnp), traced=True, host=_jax_host, unscaled=unscaled,
    )


HOST_ERRORS: list = []  # exceptions of host laws in compiled runs (the run goes on with NaN)


def _jax_host(fn, shapes, *args):
    """``fn(*args)`` of numpy float64 arrays, called back from the compiled program
    (``jax.pure_callback``); ``shapes``: the shape of its array result, or a tuple of shapes
    when it returns a tuple of arrays. Arguments and results cross as their bits, pairs of
    uint32: jax would round float64 to float32 on the callback's thread, where the caller's
    ``enable_x64`` does not reach (the same values, bit for bit)."""
    import jax
    import jax.numpy as jnp

    many = isinstance(shapes, tuple) and any(isinstance(s, tuple) for s in shapes)
    shapes = list(shapes) if many else [shapes]
    specs = tuple(jax.ShapeDtypeStruct((*s, 2), np.uint32) for s in shapes)

    def on_host(*bits):
        try:
            out = fn(*(np.ascontiguousarray(b).view(np.float64)[..., 0] for b in bits))
        except Exception as e:  # noqa: BLE001 - kept for the caller, who raises it after the
            HOST_ERRORS.append(e)  # run (an exception here would reach the user as a jax one)
            out = [np.full(s, np.nan) for s in shapes] if many else np.nan
        return tuple(np.ascontiguousarray(np.broadcast_to(np.asarray(o, np.float64), s))
                     .view(np.uint32).reshape(*s, 2) for o, s in zip(out if many else [out], shapes))

    bits = [jax.lax.bitcast_convert_type(jnp.asarray(a, jnp.float64), jnp.uint32) for a in args]
    out = [jax.lax.bitcast_convert_type(o, jnp.float64)
           for o in jax.pure_callback(on_host, specs, *bits)]
    return tuple(out) if many else out[0]


class _JaxArrays:
    """``jax.numpy`` with ``diagonal`` of the trailing (B, B) axes as B static slices (jnp's
    is a gather: see :meth:`Namespace.take`)."""

    def __init__(self, jnp):
        self._jnp = jnp

    def __getattr__(self, name):
        return getattr(self._jnp, name)

    def diagonal(self, x, axis1=-2, axis2=-1):
        if (axis1, axis2) != (-2, -1):
            return self._jnp.diagonal(x, axis1=axis1, axis2=axis2)
        return self._jnp.stack([x[..., i, i] for i in range(x.shape[-1])], -1)
