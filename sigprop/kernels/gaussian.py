"""Activations: their array faces and their Gaussian faces, in one table.

For u, v jointly Gaussian with zero mean, Var u = q1, Var v = q2 and correlation c, an
activation phi has the Gaussian faces

    kernel = E[phi(u) phi(v)]        grad_kernel = E[phi'(u) phi'(v)]
    mean   = E[phi(u)]               grad_mean   = E[phi'(u)]   (Stein: E[u phi(u)] = q E[phi'(u)])

linear, relu, erf, gelu and leaky_relu have closed forms, each written once over a
:class:`~sigprop.state.ns.Namespace` (numpy values with NUMERIC, exact sympy expressions with
SYMBOLIC). tanh, gelu_tanh, silu and elu have none: NUMERIC evaluates them by
:mod:`sigprop.kernels.quadrature`, a traced namespace by the same quadrature on the host
(``ns.host``), SYMBOLIC returns the Gaussian expectation as an unevaluated
:class:`~sigprop.kernels.integral.GaussianIntegral`. Most activations obey
phi(-x) = p phi(x) + b x + g (odd, or x/2 + even, or 1/2 + odd), which the quadrature uses.

Parametric families take their parameter in the name: ``leaky_relu`` (negative slope 0.01,
torch's default) or ``leaky_relu(0.2)``; ``elu`` (alpha 1) or ``elu(0.5)``.

May import: ``sigprop.state`` and ``sigprop.errors`` (and the kernels modules).
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.special
import sympy

from sigprop.errors import ConfigError
from sigprop.kernels.integral import integral_kernel, integral_mean
from sigprop.kernels.quadrature import kernel_quad, tabulated
from sigprop.state.ns import NUMERIC, Namespace

_SQRT_2PI = np.sqrt(2 * np.pi)
GRAD_FACES = ("grad_kernel", "grad_mean", "grad_kernel_diag")  # the faces of phi'

# --- Closed forms, each written once over ns (q1, q2, c may be sympy symbols / object arrays).

def _full(ns: Namespace, value, *like):
    """``value`` broadcast to the shape of ``like`` (a sympy number when symbolic)."""
    shape = np.broadcast_shapes(*(np.shape(x) for x in like))
    if ns.symbolic:
        v = sympy.sympify(value)
        return np.full(shape, v, dtype=object) if shape else v
    return np.full(shape, float(value))


def _linear_kernel(q1, q2, c, ns):
    return c * ns.sqrt(q1) * ns.sqrt(q2)


def _relu_kernel(q1, q2, c, ns):
    """Arc-cosine kernel of degree 1 (Cho & Saul 2009): sqrt(q1 q2)/(2 pi) (sin t + (pi - t) c)."""
    t = ns.acos(c)
    return ns.sqrt(q1) * ns.sqrt(q2) / (2 * ns.pi) * (ns.sqrt((1 - c) * (1 + c)) + (ns.pi - t) * c)


def _relu_grad_kernel(q1, q2, c, ns):
    """Arc-cosine kernel of degree 0: P(u > 0, v > 0) = (pi - acos c) / (2 pi)."""
    return (ns.pi - ns.acos(c)) / (2 * ns.pi) + _full(ns, 0, q1, q2)


def _angle(s, root, ns):
    """asin s from s and root = sqrt(1 - s^2) (1 - s^2 by :func:`_gap`), as atan2(s, root). As
    |s| -> 1 (q -> inf) asin s has slope 1 / root: it multiplies the rounding of s by ~sqrt q
    (E[erf(u)^2] was 6e-9 off at q = 1e16); atan2 carries the rounding of s and root alone.
    Not atan(s / root): XLA's CPU atan rounds an array's last elements by another path than
    the rest, so a grid point's bits would depend on the grid's size (its atan2 of two arrays,
    asin, log and exp do not; ``benchmarks/xla_ops.py --slices``). The compiled engine's atan2
    is :func:`sigprop.state.ns._atan2`, in arithmetic alone (it vectorises; XLA's is a scalar
    libm call per element), within 2 ulp of numpy's and with the same bits at any grid size.
    The symbolic face keeps asin s: the derivations and the paper's closed forms are written
    with it."""
    if ns.symbolic:
        return ns.asin(s)
    return ns.atan2(s, root)


def _gap(a1, a2, b1, b2, c):
    """1 - a1 a2 c^2 (a_i + b_i = 1, a_i, b_i >= 0) as b1 + a1 b2 + a1 a2 (1 - c)(1 + c): a sum
    of non-negative terms, with no cancellation at c = +-1 (the diagonal)."""
    return b1 + a1 * b2 + (a1 * (1 - c)) * (a2 * (1 + c))


def _erf_gap(q1, q2, c):
    """(b1, b2, 1 - s^2) for erf's kernels, s = 2 c sqrt(q1 q2) / sqrt((1 + 2 q1)(1 + 2 q2)),
    b_i = 1 / (1 + 2 q_i): 1 - s^2 = det(I + 2 Sigma) / ((1 + 2 q1)(1 + 2 q2)) = :func:`_gap` of
    the b_i and a_i = 2 q_i b_i, bounded (no product of q's to overflow: q1 q2 passes float64
    at q = 1e154)."""
    b1, b2 = 1 / (1 + 2 * q1), 1 / (1 + 2 * q2)
    return b1, b2, _gap(2 * q2 * b2, 2 * q1 * b1, b2, b1, c)


def _erf_kernel(q1, q2, c, ns):
    """Williams (1997): (2/pi) asin s, s = 2 c sqrt(q1 q2) / sqrt((1 + 2 q1)(1 + 2 q2)), the
    roots taken one by one (:func:`_angle`: with asin s, identical inputs after a Dense of
    sigma_w = 1e8 had corr 1 + 6e-9, and the kernel was NaN at q = 1e100, c = 1)."""
    s = 2 * c * ns.sqrt(q1) * ns.sqrt(q2) / (ns.sqrt(1 + 2 * q1) * ns.sqrt(1 + 2 * q2))
    return 2 / ns.pi * _angle(s, ns.sqrt(_erf_gap(q1, q2, c)[2]), ns)


def _erf_grad_kernel(q1, q2, c, ns):
    """(4/pi) E[exp(-u^2 - v^2)] = (4/pi) / sqrt(det(I + 2 Sigma)), det = (1 + 2 q1)(1 + 2 q2)
    (1 - s^2) (:func:`_erf_gap`)."""
    b1, b2, gap = _erf_gap(q1, q2, c)
    return 4 / ns.pi * ns.sqrt(b1) * ns.sqrt(b2) / ns.sqrt(gap)


def _erf_diag(q, ns):
    """E[erf(u)^2] = (2/pi) asin s, s = 2 q / (1 + 2 q) = 2 q b, 1 - s^2 = b (1 + s) with b = 1 /
    (1 + 2 q) (:func:`_angle`; no 4 q to overflow)."""
    b = 1 / (1 + 2 * q)
    s = 2 * q * b
    return 2 / ns.pi * _angle(s, ns.sqrt(b * (1 + s)), ns)


def _gelu_parts(q1, q2, c, ns):
    """(k, s, b1, b2, 1 - s^2) for gelu's kernels: k = c sqrt(q1 q2), a_i = q_i / (1 + q_i),
    b_i = 1 / (1 + q_i), s = c sqrt(a1 a2) = k / sqrt((1 + q1)(1 + q2)), and
    1 - s^2 = b1 + a1 b2 + a1 a2 (1 - c)(1 + c) (no cancellation, no overflow at q = 1e300)."""
    a1, a2, b1, b2 = q1 / (1 + q1), q2 / (1 + q2), 1 / (1 + q1), 1 / (1 + q2)
    s = c * ns.sqrt(a1) * ns.sqrt(a2)
    return c * ns.sqrt(q1) * ns.sqrt(q2), s, b1, b2, _gap(a1, a2, b1, b2, c)


def _gelu_kernel(q1, q2, c, ns):
    """E[gelu(u) gelu(v)], gelu(x) = x Phi(x) (Tsuchida et al. 2021, as neural-tangents):
    k/4 + (k asin s + (k^2 + q1 q2 D^2) / ((1 + q1)(1 + q2) D)) / (2 pi), D^2 = (1 + q1)(1 + q2)
    - k^2; in the bounded variables of :func:`_gelu_parts`, the last term is
    s^2 / (r1 r2 sqrt(1 - s^2)) + sqrt(q1 q2 a1 a2 (1 - s^2)), r_i = sqrt(1 + q_i)."""
    k, s, _, _, d = _gelu_parts(q1, q2, c, ns)
    root = ns.sqrt(d)
    last = (s * s / (ns.sqrt(1 + q1) * ns.sqrt(1 + q2) * root)
            + ns.sqrt(q1) * ns.sqrt(q2) * ns.sqrt(q1 / (1 + q1)) * ns.sqrt(q2 / (1 + q2)) * root)
    return k / 4 + (k * _angle(s, root, ns) + last) / (2 * ns.pi)


def _gelu_grad_kernel(q1, q2, c, ns):
    """E[gelu'(u) gelu'(v)] = 1/4 + asin(s) / (2 pi) + (k / D)(1 / D^2 + (2 + q1 + q2) / ((1 +
    q1)(1 + q2))) / (2 pi), i.e. with k / D = s / sqrt(1 - s^2), 1 / D^2 = b1 b2 / (1 - s^2) and
    (2 + q1 + q2) / ((1 + q1)(1 + q2)) = b1 + b2 (:func:`_gelu_parts`). As q -> inf it tends to
    relu's (pi - acos c) / (2 pi)."""
    _, s, b1, b2, d = _gelu_parts(q1, q2, c, ns)
    root = ns.sqrt(d)
    return 1 / 4 + (_angle(s, root, ns) + s / root * (b1 * b2 / d + b1 + b2)) / (2 * ns.pi)


class _Closed(NamedTuple):
    kernel: Callable
    grad_kernel: Callable
    mean: Callable
    grad_mean: Callable
    kernel_diag: Callable  # E[phi(u)^2], u ~ N(0, q): the kernel at q1 = q2 = q, c = 1
    grad_kernel_diag: Callable  # E[phi'(u)^2]: the grad kernel there


_LINEAR = _Closed(
    kernel=_linear_kernel,
    grad_kernel=lambda q1, q2, c, ns: _full(ns, 1, q1, q2, c),
    mean=lambda q, ns: _full(ns, 0, q),
    grad_mean=lambda q, ns: _full(ns, 1, q),
    kernel_diag=lambda q, ns: q,
    grad_kernel_diag=lambda q, ns: _full(ns, 1, q),
)
_RELU = _Closed(
    kernel=_relu_kernel,
    grad_kernel=_relu_grad_kernel,
    mean=lambda q, ns: ns.sqrt(q / (2 * ns.pi)),  # E[max(u, 0)] = sqrt(q / (2 pi))
    grad_mean=lambda q, ns: _full(ns, sympy.Rational(1, 2), q),
    kernel_diag=lambda q, ns: q / 2,  # acos 1 = 0: sqrt(q q) / (2 pi) (0 + pi)
    grad_kernel_diag=lambda q, ns: _full(ns, sympy.Rational(1, 2), q),
)
_ERF = _Closed(
    kernel=_erf_kernel,
    grad_kernel=_erf_grad_kernel,
    mean=lambda q, ns: _full(ns, 0, q),  # erf is odd
    grad_mean=lambda q, ns: 2 / ns.sqrt(ns.pi * (1 + 2 * q)),  # (2/sqrt(pi)) E[exp(-u^2)]
    kernel_diag=_erf_diag,
    grad_kernel_diag=lambda q, ns: 4 / ns.pi / ns.sqrt(1 + 4 * q),  # det(I + 2 Sigma) = 1 + 4 q
)


_GELU = _Closed(
    kernel=_gelu_kernel,
    grad_kernel=_gelu_grad_kernel,
    mean=lambda q, ns: ns.sqrt(q) * ns.sqrt(q / (1 + q)) / ns.sqrt(2 * ns.pi),  # q E[phi(u)]
    grad_mean=lambda q, ns: _full(ns, sympy.Rational(1, 2), q),  # E[Phi(u)] + E[u phi(u)] = 1/2
    kernel_diag=lambda q, ns: _gelu_kernel(q, q, _full(ns, 1, q), ns),
    grad_kernel_diag=lambda q, ns: _gelu_grad_kernel(q, q, _full(ns, 1, q), ns),
)


def _leaky_closed(slope: float) -> _Closed:
    """phi(x) = max(x, 0) + s min(x, 0) = (1 - s) relu(x) + s x. Since (u, v) -> (-u, -v) keeps
    the law, E[relu(u) v] = E[u v] / 2 and E[relu'(u)] = 1/2, so the cross terms collapse:
    kernel = (1 - s)^2 K_relu + s c sqrt(q1 q2), grad_kernel = (1 - s)^2 P(u, v > 0) + s,
    mean = (1 - s) sqrt(q / (2 pi)), grad_mean = (1 + s) / 2."""

    def num(ns):
        return sympy.nsimplify(slope) if ns.symbolic else slope

    return _Closed(
        kernel=lambda q1, q2, c, ns: ((1 - num(ns)) ** 2 * _relu_kernel(q1, q2, c, ns)
                                      + num(ns) * _linear_kernel(q1, q2, c, ns)),
        grad_kernel=lambda q1, q2, c, ns: ((1 - num(ns)) ** 2 * _relu_grad_kernel(q1, q2, c, ns)
                                           + num(ns)),
        mean=lambda q, ns: (1 - num(ns)) * ns.sqrt(q / (2 * ns.pi)),
        grad_mean=lambda q, ns: _full(ns, (1 + num(ns)) / 2, q),
        kernel_diag=lambda q, ns: ((1 - num(ns)) ** 2 / 2 + num(ns)) * q,
        grad_kernel_diag=lambda q, ns: _full(ns, (1 - num(ns)) ** 2 / 2 + num(ns), q),
    )


# --- Symbolic face of tanh, silu and the others without closed form: unevaluated integrals
# (sigprop.kernels.integral).

def _elementwise(fn, *xs):
    """Apply a scalar sympy builder elementwise over object arrays (a scalar for scalars)."""
    out = np.frompyfunc(fn, len(xs), 1)(*xs)
    return out if isinstance(out, np.ndarray) else sympy.sympify(out)


# --- Array faces.

def _special(xp):
    """scipy.special for numpy, cupyx.scipy.special for cupy (imported only when cupy is used)."""
    if "cupy" in getattr(xp, "__name__", ""):
        return importlib.import_module("cupyx.scipy.special")
    return scipy.special


def _normal_cdf(x, xp):
    return 0.5 * _special(xp).erfc(-x / np.sqrt(2))


def _tanh_grad(x, xp):
    t = xp.tanh(x)
    return 1 - t * t


def _gelu_grad(x, xp):
    return _normal_cdf(x, xp) + x * xp.exp(-x * x / 2) / _SQRT_2PI


_GELU_TANH_K = np.sqrt(2 / np.pi)  # torch's GELU(approximate="tanh"):
_GELU_TANH_C = 0.044715             # x/2 (1 + tanh(k (x + c x^3)))


_TANH_FLAT = 1e10  # tanh(k (x + c x^3)) is exactly +-1 from |x| ~ 6; x^3 finite in float32


def _gelu_tanh_tanh(x, xp):
    """tanh(k (x + c x^3)) and x clipped to +-1e10 (the same tanh: it is +-1 there)."""
    x = xp.clip(x, -_TANH_FLAT, _TANH_FLAT)
    return xp.tanh(_GELU_TANH_K * (x + _GELU_TANH_C * x**3)), x


def _gelu_tanh(x, xp):
    return 0.5 * x * (1 + _gelu_tanh_tanh(x, xp)[0])


def _gelu_tanh_grad(x, xp):
    t, xc = _gelu_tanh_tanh(x, xp)  # 1 - t^2 = 0 where clipped: the polynomial stays finite
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_TANH_K * (1 + 3 * _GELU_TANH_C * xc * xc)


def _sym_gelu_tanh(x):
    k, c = sympy.sqrt(2 / sympy.pi), sympy.Rational(44715, 10**6)
    return x / 2 * (1 + sympy.tanh(k * (x + c * x**3)))


def _silu_grad(x, xp):
    s = _special(xp).expit(x)
    return s * (1 + x * (1 - s))


@dataclass(frozen=True)
class Activation:
    """An activation phi with its array faces (fn, grad) and Gaussian faces (see the module).

    ``degree`` is the degree of positive homogeneity, phi(l x) = l^degree phi(x) for l > 0
    (1 for relu and linear), or None.
    """

    name: str
    degree: int | None
    _fn: Callable = field(repr=False)
    _grad: Callable = field(repr=False)
    _expr: Callable = field(repr=False)  # sympy expression phi(x) of a sympy x
    _closed: _Closed | None = field(default=None, repr=False)
    _bend: float = field(default=1.0, repr=False)  # width of phi's bend at 0 (0: a kink)
    _parity: tuple = field(default=(None, None), repr=False)  # (p, b, g) of phi and phi':
    # phi(-x) = p phi(x) + b x + g (odd: (-1, 0, 0); x/2 + even: (1, -1, 0); 1/2 + odd: (-1, 0, 1))
    _grows: bool = field(default=False, repr=False)  # phi^2 grows with |x| on each side of 0
    _halfway: bool = field(default=False, repr=False)  # x/2 <= phi(x) <= x for x >= 0, and
    # |phi(x)| <= |x| for x < 0: so q/8 <= E phi(u)^2 <= q (E u^2 1{u > 0} = q/2)

    @functools.cached_property
    def small_scale(self) -> tuple[float, Activation] | None:
        """(r, phi0) with phi(x) = r phi0(x) (1 + O(x)) as x -> 0, phi0 positively homogeneous:
        the linear map where phi' is continuous at 0 (tanh, gelu, ...), leaky_relu(l / r) where
        it jumps from l to r there (elu(alpha)); None where phi(0) != 0 or phi'(0+) = 0. Below
        q ~ 1e-292, where a law on true moments underflows, phi's law is phi0's, scale free, to
        float64's precision."""
        at = np.array([-1e-300, 0.0, 1e-300])
        left, right = (float(g) for g in self.grad(at[[0, 2]]))
        if self.fn(at)[1] != 0 or right == 0:
            return None
        return right, get_activation("linear" if left == right
                                     else activation_name("leaky_relu", left / right))

    # Array faces: elementwise on numpy or cupy arrays.
    def fn(self, x, xp=np):
        """phi(x)."""
        return self._fn(xp.asarray(x), xp)

    def grad(self, x, xp=np):
        """phi'(x) (relu'(0) := 0)."""
        return self._grad(xp.asarray(x), xp)

    def _at_zero_variance(self, face, out, q1, q2, ns):
        """``out``, the closed form's ``face`` at (q1, q2) (grad_mean and grad_kernel_diag: at
        q1, q2 the same array), with the point mass where a variance is exactly 0 in a grad
        face. A Gaussian of variance 0 is the point 0, where a real net (and the Monte Carlo)
        computes phi'(0) of the array face: E[phi'(u) phi'(v)] = phi'(0) E[phi'(v)] and
        E[phi'(u)] = phi'(0) there (a LayerNorm of constant features). The closed form of a
        kinked phi gives its limit q -> 0+ instead, which differs where phi' jumps at 0 (relu:
        1/2 against relu'(0) = 0); for the other activations, and for the quadrature (which
        evaluates phi' at 0 itself), the two are one value."""
        if face not in GRAD_FACES or self._bend != 0 or not (
                ns.traced or ns.symbolic or np.any(q1 == 0) or (q2 is not q1 and np.any(q2 == 0))):
            return out
        g0, mean = float(self._grad(np.zeros(()), np)), self._closed.grad_mean
        if ns.symbolic:  # a sympy zero only (a symbol is taken nonzero, as the closed form takes it)
            g0 = sympy.nsimplify(g0)

            def one(a, b, o):
                zero_a, zero_b = sympy.sympify(a).is_zero, sympy.sympify(b).is_zero
                if face != "grad_kernel":
                    return g0 ** (1 if face == "grad_mean" else 2) if zero_a else o
                return (g0 * (g0 if zero_b else mean(b, ns)) if zero_a
                        else g0 * mean(a, ns) if zero_b else o)

            return _elementwise(one, q1, q2, out)
        where = ns.xp.where
        if face == "grad_mean":
            return where(q1 == 0, g0, out)
        if face == "grad_kernel_diag":
            return where(q1 == 0, g0 * g0, out)
        return where(q1 == 0, g0 * where(q2 == 0, g0, mean(q2, ns)),
                     where(q2 == 0, g0 * mean(q1, ns), out))

    def second_moment_bounds(self, lo: float, hi: float) -> tuple[float, float] | None:
        """Bounds on E phi(u)^2, u ~ N(0, q), over q in [lo, hi]: its values at lo and hi where
        phi^2 grows with |u| on each side of 0 (then so does E phi(sqrt(q) z)^2 with q) and has
        a closed form; (lo / 8, hi) where phi lies between x/2 and x (gelu, silu); else None."""
        if self._grows and self._closed is not None:
            return tuple(float(self._closed.kernel_diag(np.float64(q), NUMERIC)) for q in (lo, hi))
        return (lo / 8, hi) if self._halfway else None

    # Gaussian faces.
    def kernel(self, q1, q2, c, ns: Namespace = NUMERIC):
        """E[phi(u) phi(v)], u, v ~ N(0, [[q1, c sqrt(q1 q2)], [c sqrt(q1 q2), q2]])."""
        return self._pair("kernel", self._fn, self._expr, q1, q2, c, ns)

    def grad_kernel(self, q1, q2, c, ns: Namespace = NUMERIC):
        """E[phi'(u) phi'(v)] for the same (u, v)."""
        return self._pair("grad_kernel", self._grad, self._grad_expr, q1, q2, c, ns)

    def gram_kernel(self, K, ns: Namespace = NUMERIC):
        """E[phi(u) phi(u)^T] for u ~ N(0, K), over a stack of Grams K (..., B, B)."""
        return self._gram(self.kernel, "kernel_diag", K, ns)

    def gram_grad_kernel(self, K, ns: Namespace = NUMERIC):
        """E[phi'(u) phi'(u)^T] for u ~ N(0, K), over a stack of Grams K (..., B, B)."""
        return self._gram(self.grad_kernel, "grad_kernel_diag", K, ns)

    def _gram(self, pair, diag_face, K, ns):
        """``pair(q_a, q_b, c_ab)`` for every entry of the Grams: numerically on the B(B-1)/2
        entries a < b only, mirrored (the result is symmetric), and on the diagonal (c = 1) by
        the closed form of E[phi(u)^2] (``diag_face``; no acos of 1) or the pair face at c = 1;
        in Fortran order like K."""
        if ns.symbolic:
            return pair(*_gram_args(K, ns), ns)
        K = ns.asarray(K)
        if ns.traced and self._closed is None:  # the whole Gram in one host call (~0.1 ms each)
            return ns.host(lambda k: self._gram(pair, diag_face, k, NUMERIC), K.shape, K)
        B = K.shape[-1]
        q = ns.xp.diagonal(K, axis1=-2, axis2=-1)
        if self._closed is not None:
            diag = self._at_zero_variance(diag_face, getattr(self._closed, diag_face)(q, ns),
                                          q, q, ns)
        else:  # c = 1, q1 = q2: the quadrature's own diagonal (tabulated)
            diag = pair(q, q, np.ones(q.shape), ns)
        a, b = _upper(B)
        off = pair(*_gram_args_upper(K, a, b, ns), ns) if len(a) else None
        if ns.traced and off is None:  # B = 1
            return diag[..., None]
        if ns.traced:  # no assignment into traced arrays: concatenate the entries, so that
            # a law reading only the diagonal leaves ``off`` unused (XLA then drops it)
            index, diag, off = _mirror(B), diag[..., None, :], off[..., None, :]  # (..., 1, n)
            rows = [ns.xp.concatenate([diag[..., i:i + 1] if i == j else
                                       off[..., index[i, j]:index[i, j] + 1]
                                       for j in range(B)], -1) for i in range(B)]
            return ns.xp.concatenate(rows, -2)
        out = np.empty(np.shape(diag)[:-1] + K.shape[-2:], order="F")
        i = np.arange(B)
        out[..., i, i] = diag
        if off is not None:
            out[..., a, b] = off
            out[..., b, a] = off
        return out

    def mean(self, q, ns: Namespace = NUMERIC):
        """E[phi(u)], u ~ N(0, q)."""
        return self._single("mean", self._fn, self._expr, q, ns)

    def grad_mean(self, q, ns: Namespace = NUMERIC):
        """E[phi'(u)], u ~ N(0, q): the Stein coefficient, E[u phi(u)] = q E[phi'(u)]."""
        return self._single("grad_mean", self._grad, self._grad_expr, q, ns)

    def _grad_expr(self, x):
        t = sympy.Dummy("t", real=True)
        return sympy.diff(self._expr(t), t).subs(t, x)

    def _pair(self, face, f, expr, q1, q2, c, ns):
        if ns.symbolic:
            if self._closed is not None:
                return self._at_zero_variance(face, getattr(self._closed, face)(q1, q2, c, ns),
                                              q1, q2, ns)
            return _elementwise(lambda a, b, r: integral_kernel(expr, a, b, r), q1, q2, c)
        q1, q2, c = ns.xp.broadcast_arrays(*(ns.asarray(x) for x in (q1, q2, c)))
        if self._closed is None and ns.traced:  # the quadrature picks its rule by value
            return ns.host(lambda *a: self._pair(face, f, expr, *a, NUMERIC), q1.shape, q1, q2, c)
        c = _unit(c, ns.xp)
        if self._closed is not None:
            out = getattr(self._closed, face)(q1, q2, c, ns)
            return self._at_zero_variance(face, out, q1, q2, ns)[()]
        out = np.empty(q1.shape)
        diag = (c == 1) & (q1 == q2)
        out[diag] = tabulated((self.name, face), lambda x: f(x, np) ** 2, q1[diag], self._bend)
        out[~diag] = kernel_quad(lambda x: f(x, np), q1[~diag], q2[~diag], c[~diag], self._bend,
                                 parity=self._parity[face == "grad_kernel"])
        return out[()]

    def _single(self, face, f, expr, q, ns):
        if ns.symbolic:
            if self._closed is not None:
                return self._at_zero_variance(face, getattr(self._closed, face)(q, ns), q, q, ns)
            return _elementwise(lambda a: integral_mean(expr, a), q)
        q = ns.asarray(q)
        if self._closed is not None:
            return self._at_zero_variance(face, getattr(self._closed, face)(q, ns), q, q, ns)[()]
        if ns.traced:
            return ns.host(lambda x: self._single(face, f, expr, x, NUMERIC), q.shape, q)
        return tabulated((self.name, face), lambda x: f(x, np), q, self._bend)[()]


def _gram_args(K, ns):
    """(q1, q2, c) of a Gram for the activation kernels; c is exactly 1 on the diagonal."""
    d = np.diagonal(K, axis1=-2, axis2=-1)
    q1, q2 = d[..., :, None], d[..., None, :]
    B = K.shape[-1]
    eye = np.eye(B, dtype=bool)
    if ns.symbolic:
        c = K / ns.sqrt(q1 * q2)
        c = np.where(eye, sympy.Integer(1), c)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            c = _unit(K / (np.sqrt(q1) * np.sqrt(q2)))  # q1 q2 overflows beyond q = 1e154
        c = (c + np.swapaxes(c, -1, -2)) / 2  # exactly symmetric: relu' kernel is steep at |c| = 1
        c = np.where(eye, 1.0, np.where(np.isfinite(c), c, 0.0))
    return q1, q2, c


def _unit(c, xp=np):
    """c clipped to [-1, 1] (np.clip's values, at a third of its call overhead)."""
    return xp.minimum(xp.maximum(c, -1.0), 1.0)


@functools.cache
def _upper(B: int):
    """Row and column indices of the entries a < b of a B x B matrix."""
    return np.triu_indices(B, 1)


@functools.cache
def _mirror(B: int):
    """(B, B) positions in the :func:`_upper` list: entry (a, b) and (b, a) read the same one
    (the diagonal, which is not in it, reads entry 0)."""
    a, b = _upper(B)
    index = np.zeros((B, B), dtype=int)
    index[a, b] = index[b, a] = np.arange(len(a))
    return index


def _gram_args_upper(K, a, b, ns=NUMERIC):
    """(q1, q2, c) of :func:`_gram_args` at the off-diagonal entries a < b of the Grams only,
    each (..., P): the same operations on the same numbers, so the same values there."""
    xp = ns.xp
    d = xp.diagonal(K, axis1=-2, axis2=-1)
    q1, q2 = ns.take(d, a), ns.take(d, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = xp.sqrt(q1) * xp.sqrt(q2)  # as _gram_args
        c = (_unit(ns.take(K, a, b) / root, xp) + _unit(ns.take(K, b, a) / root, xp)) / 2
    c = xp.where(xp.isfinite(c), c, 0.0)
    return q1, q2, c


def _sym_normal_cdf(x):
    return (1 + sympy.erf(x / sympy.sqrt(2))) / 2


_ODD, _EVEN, _HALF_X, _HALF_ONE = (-1, 0, 0), (1, 0, 0), (1, -1, 0), (-1, 0, 1)  # parities

ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("linear", 1, lambda x, xp: x, lambda x, xp: xp.ones_like(x), lambda x: x,
               _LINEAR, _bend=np.inf, _parity=(_ODD, _EVEN), _grows=True),
    Activation("relu", 1, lambda x, xp: xp.maximum(x, 0), lambda x, xp: (x > 0).astype(x.dtype),
               lambda x: sympy.Max(x, 0), _RELU, _bend=0.0, _parity=(_HALF_X, _HALF_ONE),
               _grows=True),
    Activation("erf", None, lambda x, xp: _special(xp).erf(x),
               lambda x, xp: 2 / np.sqrt(np.pi) * xp.exp(-x * x), sympy.erf, _ERF,
               _parity=(_ODD, _EVEN), _grows=True),
    Activation("tanh", None, lambda x, xp: xp.tanh(x), _tanh_grad, sympy.tanh,
               _parity=(_ODD, _EVEN)),
    Activation("gelu", None, lambda x, xp: x * _normal_cdf(x, xp), _gelu_grad,
               lambda x: x * _sym_normal_cdf(x), _GELU, _parity=(_HALF_X, _HALF_ONE),
               _halfway=True),
    Activation("silu", None, lambda x, xp: x * _special(xp).expit(x), _silu_grad,
               lambda x: x / (1 + sympy.exp(-x)), _parity=(_HALF_X, _HALF_ONE), _halfway=True),
    Activation("gelu_tanh", None, _gelu_tanh, _gelu_tanh_grad, _sym_gelu_tanh,
               _parity=(_HALF_X, _HALF_ONE), _halfway=True),
)}


def _leaky_relu(name: str, slope: float) -> Activation:
    """max(x, 0) + slope min(x, 0): degree 1, closed forms (:func:`_leaky_closed`)."""
    return Activation(
        name, 1, lambda x, xp: xp.where(x > 0, x, slope * x),
        lambda x, xp: xp.where(x > 0, 1.0, slope).astype(x.dtype),
        lambda x: sympy.Max(x, 0) + sympy.nsimplify(slope) * sympy.Min(x, 0),
        _leaky_closed(slope), _bend=0.0,
        _parity=((1, -(1 + slope), 0), (-1, 0, 1 + slope)),  # phi(-x) = phi(x) - (1 + s) x
        _grows=True)


# ELU bends on the scale 1 (e^x) and has a kink at 0 (in phi' unless alpha = 1, then in phi''):
# neither a plain kink (bend 0: no grading, misses e^x at large q, 3e-8 relative at q = 1e4)
# nor a smooth bend (bend 1: Gauss-Hermite at small q, blind to the kink). A bend width far
# below 1 makes the rule split at the kink and grade towards it for q > (ELU_BEND / 1.4)^2
# (Gauss-Hermite below: 5e-9, where the kink is of size sqrt(q); the grading, 14 levels at
# most, reaches the scale of e^x up to q ~ 1e4), more panels than
# e^x needs); its error against scipy's adaptive quad: see tests/test_activations.py.
ELU_BEND = 1e-4


def _elu(name: str, alpha: float) -> Activation:
    """x for x > 0, alpha (e^x - 1) otherwise (torch's ELU); quadrature."""
    return Activation(
        name, None, lambda x, xp: xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0))),
        lambda x, xp: xp.where(x > 0, 1.0, alpha * xp.exp(xp.minimum(x, 0))).astype(x.dtype),
        lambda x: sympy.Piecewise((x, x > 0), (sympy.nsimplify(alpha) * (sympy.exp(x) - 1), True)),
        _bend=ELU_BEND)


FAMILIES = {"leaky_relu": (_leaky_relu, 0.01), "elu": (_elu, 1.0)}  # name: (maker, default)
ACTIVATIONS.update({name: make(name, default) for name, (make, default) in FAMILIES.items()})
_FAMILY_NAME = re.compile(r"(\w+)\(([^()]*)\)")


@functools.cache
def _family_member(family: str, param: float) -> Activation:
    return FAMILIES[family][0](f"{family}({param!r})", param)


def activation_name(family: str, param: float) -> str:
    """The name of ``family`` at ``param`` (the family's own name at its default)."""
    param = float(param)
    return family if param == FAMILIES[family][1] else f"{family}({param!r})"


def get_activation(name: str) -> Activation:
    """The activation called ``name`` (a table entry, or ``family(param)`` of a parametric
    family: ``leaky_relu(0.2)``, ``elu(0.5)``); ConfigError naming the allowed ones otherwise."""
    if isinstance(name, str) and name in ACTIVATIONS:
        return ACTIVATIONS[name]
    found = _FAMILY_NAME.fullmatch(name) if isinstance(name, str) else None
    if found and found.group(1) in FAMILIES:
        try:
            param = float(found.group(2))
        except ValueError:
            param = math.nan
        # the laws square 1 + param (at 1e308 a kernel raised OverflowError); the default
        # member is the table entry
        if 0 <= param and math.isfinite((1 + param) * (1 + param)):
            canonical = activation_name(found.group(1), param)
            return ACTIVATIONS.get(canonical) or _family_member(found.group(1), param)
    raise ConfigError("act", name, f"one of {sorted(ACTIVATIONS)}, or leaky_relu(slope) or "
                      "elu(alpha) with a number >= 0 whose square is finite")
