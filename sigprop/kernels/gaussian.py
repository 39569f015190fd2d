"""Activations: their array faces and their Gaussian faces.

For u, v jointly Gaussian with zero mean, Var u = q1, Var v = q2 and correlation c, an
activation phi has the Gaussian faces

    kernel = E[phi(u) phi(v)]        grad_kernel = E[phi'(u) phi'(v)]
    mean   = E[phi(u)]               grad_mean   = E[phi'(u)]   (Stein: E[u phi(u)] = q E[phi'(u)])

linear, relu and erf have closed forms, each written once over a :class:`~sigprop.state.ns.Namespace`
(numpy values with NUMERIC, exact sympy expressions with SYMBOLIC). tanh, gelu and silu have
none: NUMERIC evaluates them by the quadrature below, SYMBOLIC returns the Gaussian expectation
as an unevaluated :class:`GaussianIntegral` (``.evalf()`` / ``.doit()`` evaluate it).

Quadrature. Write u = sqrt(q1) Z1, v = sqrt(q2) (c Z1 + sqrt(1 - c^2) Z2) with q1 >= q2 (the
kernel is symmetric) and integrate Z2 first: kernel = E_Z1[phi(u) G(Z1)], where
G(Z1) = E[phi(v) | Z1] = E[phi(m + sigma Z2)], m = c sqrt(q2) Z1, sigma = sqrt(q2 (1 - c^2)).
Every level is a 1-D Gaussian expectation E[g(Z)] done by one rule, :func:`_expect_z`:

* g smooth on the scale of the density (its bend is >= 1.4 standard deviations wide):
  Gauss-Hermite, with the density as weight;
* otherwise (a kink, as relu's, or a steep bend: tanh, gelu and silu bend on the scale
  1/sqrt(q) in Z, where a plain Gauss-Hermite rule converges slowly): composite
  Gauss-Legendre on [-Z_MAX, Z_MAX], the density folded into the weights, split at a base mesh
  (which resolves the density) and at the kink z0 (where phi's argument is 0), with panels
  graded geometrically towards z0 down to the bend's width.

|c| = 1 is the 1-D E[phi(sqrt(q1) Z) phi(c sqrt(q2) Z)]. Each activation obeys
phi(-x) = p phi(x) + b x + g (odd, or x/2 + even, or 1/2 + odd), which folds the outer integral
onto Z1 > 0; gelu's inner expectation has a closed form (:func:`_gelu_smoothed`). Means and the
diagonal (q1 = q2, c = 1), functions of q alone, are interpolated from tables built once from
the same rule (:class:`_Table`). Cost per element: ~0.1 us on the tables; off the diagonal,
~50-100 integrand values for gelu, ~5e3 (q ~ 1) to ~1.6e4 (q ~ 1e3) for tanh and silu.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import mpmath
import numpy as np
import scipy.integrate
import scipy.special
import sympy

from sigprop.errors import ConfigError
from sigprop.state.ns import NUMERIC, Namespace

# --- Quadrature. Orders and meshes were tuned against a reference rule of twice the order and
# finer meshes (itself checked against mpmath to 1e-16). The errors quoted are the worst case
# of E[g(mu + s Z)] over mu in [-1e3, 1e3], s in [1e-3, 150], g in phi, phi', phi^2, phi'^2,
# phi(x) phi(r x) of tanh, gelu, silu, relu: absolute for bounded g, relative to |mu| + s (or
# to its square) for growing ones. Errors of the kernels themselves: see _MEASURED below.
Z_MAX = 8.5  # truncation in standard deviations: P(|Z| > 8.5) = 1.9e-17
GL_ORDER = 12  # Gauss-Legendre nodes per panel (order 10: 5e-10, 12: 7e-12, 14: 2e-13)
BASE_MESH = (-8.5, -4.5, -2.0, 0.0, 2.0, 4.5, 8.5)  # panels that resolve the normal density
GRADE_RATIO = 3.0  # ratio of successive panels graded towards the kink
GRADE_TOP = 2.0  # grade from the bend width up to this distance from the kink (in Z units)
MAX_DEPTH = 14  # grading levels at most: widths down to 2 / 3**14 = 4e-7 (q up to ~6e12)
# Smooth integrands (bend width >= 1.4 in Z) use Gauss-Hermite, error ~ exp(-2 width sqrt(n)):
GH_RULES = ((10.0, 24), (3.3, 32), (2.0, 64), (1.4, 96))  # (min width, nodes): errors 6e-16,
# 3e-14, 1e-13, 2e-12
FLAT = 1e-12  # 1 - c^2 below this: v = c sqrt(q2/q1) u (error ~ FLAT * q)
_CHUNK = 1 << 17  # element x node entries per vectorised block (1 MB: stays in cache)
# _MEASURED: worst kernel / grad_kernel errors, absolute (gelu and silu kernels relative to
# max(1, sqrt(q1 q2))), against the reference rule (order 24, ratio 2, 20-point base mesh,
# Z_MAX 9.5) on q1, q2 in {1e-6, 1e-3, 0.1, 1, 4.5, 30, 1e3, 1e4}, c in {+-1, +-0.999999,
# +-0.98, -0.5, 0, 0.3, 0.9, 0.999} and 200 random points (1 - |c| down to 1e-9):
#   tanh 3e-14 / 3e-14, gelu 6e-14 / 5e-12, silu 2e-15 / 3e-14 (relu, erf: 2e-14 vs closed
#   forms); against scipy's adaptive quad (tests): relative <= 3e-13, except gelu' at c = -1,
#   q = (2, 30): 9e-11 relative, 1.5e-12 absolute.

_GL_X, _GL_W = np.polynomial.legendre.leggauss(GL_ORDER)
_BASE = np.asarray(BASE_MESH)
_SQRT_2PI = np.sqrt(2 * np.pi)
_GH = [np.polynomial.hermite_e.hermegauss(n) for _, n in GH_RULES]
_GH = [(z, w / _SQRT_2PI) for z, w in _GH]


def _plan(width, kink):
    """Rule per element: i < len(GH_RULES) is Gauss-Hermite rule i (g smooth on the scale
    ``width``); len(GH_RULES) + d is the graded rule of depth d (kink, or steep bend)."""
    code = np.full(width.shape, len(GH_RULES))
    if not kink:
        for i, (w_min, _) in reversed(list(enumerate(GH_RULES))):
            code[width >= w_min] = i
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.ceil(np.log(GRADE_TOP / width) / np.log(GRADE_RATIO))
    graded = (code == len(GH_RULES)) & (width > 0) & (width < GRADE_TOP)
    code[graded] += np.minimum(d[graded], MAX_DEPTH).astype(int)
    return code


def _graded_rule(z0, width, depth, half=False):
    """Composite Gauss-Legendre nodes and weights, each (P, n): base mesh + kinks z0 graded
    (``half``: on [0, Z_MAX] only, for z0 = 0)."""
    off = GRADE_RATIO ** np.arange(depth)[:, None] * width
    base = _BASE[_BASE >= 0] if half else _BASE
    kinks = off if half else np.concatenate([z0[None], z0 - off, z0 + off])
    base = np.broadcast_to(base[:, None], (base.size, z0.size))
    bp = np.sort(np.concatenate([base, np.clip(kinks, -Z_MAX, Z_MAX)]), axis=0)
    lo, half_len = bp[:-1, None, :], np.diff(bp, axis=0)[:, None, :] / 2
    z = lo + half_len * (1 + _GL_X[:, None])
    w = half_len * (_GL_W[:, None] / _SQRT_2PI) * np.exp(-z * z / 2)
    return z.reshape(-1, z0.size), w.reshape(-1, z0.size)


def _expect_z(g, z0, width, *args, kink=False, half=False):
    """E[g(Z, *args)], Z ~ N(0, 1), elementwise over the broadcast of z0, width and args.

    ``g`` has its kink or bend at ``z0``, bending on the scale ``width`` (0: nowhere smooth
    there; inf: no feature); ``kink`` says g may have a true kink at z0 (no Gauss-Hermite). g is
    called on blocks: nodes of shape (P, n) and each arg of shape (n,). ``half``: integrate over
    Z > 0 only (z0 = 0; g is then the folded h(z) + h(-z)).
    """
    z0, width, *args = np.broadcast_arrays(z0, width, *args)
    shape = z0.shape
    z0, width, args = z0.ravel(), width.ravel(), [a.ravel() for a in args]
    code = _plan(width, kink)
    out = np.empty(z0.size)
    for k in np.unique(code):
        idx = np.flatnonzero(code == k)
        depth = k - len(GH_RULES)
        if depth < 0:
            z, w = _GH[k]
            z, w = (z[z > 0], w[z > 0]) if half else (z, w)
            nodes = z.size
        else:
            panels = np.sum(_BASE >= 0) + depth - 1 if half else _BASE.size + 2 * depth
            nodes = panels * GL_ORDER
        for part in np.array_split(idx, -(-idx.size * nodes // _CHUNK)):
            if depth < 0:
                out[part] = w @ g(z[:, None], *(a[part] for a in args))
            else:
                zp, wp = _graded_rule(z0[part], width[part], depth, half)
                out[part] = np.einsum("ij,ij->j", g(zp, *(a[part] for a in args)), wp)
    return out.reshape(shape)


def _expect(f, mu, s, bend=1.0):
    """E[f(mu + s Z)], Z ~ N(0, 1); f has a kink (bend = 0) or bends on the scale bend at 0."""
    mu, s = np.broadcast_arrays(np.asarray(mu, float), np.asarray(s, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        z0 = np.where(s > 0, -mu / s, 0.0)
        width = np.where(s > 0, bend / s, np.inf)
    return _expect_z(lambda z, m, t: f(m + t * z), z0, width, mu, s, kink=bend == 0)


def _kernel_quad(f, q1, q2, c, bend=1.0, smoothed=None, parity=None):
    """E[f(u) f(v)] for float arrays q1, q2 >= 0 and c in [-1, 1] (see the module docstring).

    ``smoothed(m, s) = E[f(m + s Z)]`` in closed form, when known, replaces the inner
    quadrature. ``parity = (p, b, g)`` with f(-x) = p f(x) + b x + g, when known, folds the outer
    integral onto Z1 > 0 (the pair (Z1, Z2) -> (-Z1, -Z2) maps f(u) to p f(u) + b u + g).
    Symmetric in (q1, q2): each distinct (min q, max q, c) is integrated once.
    """
    q1, q2, c = np.broadcast_arrays(q1, q2, c)
    shape = q1.shape
    rows = np.stack([np.minimum(q1, q2).ravel(), np.maximum(q1, q2).ravel(), c.ravel()], 1)
    rows, inverse = np.unique(rows, axis=0, return_inverse=True)
    b, a, c = np.sqrt(rows[:, 0]), np.sqrt(rows[:, 1]), rows[:, 2]  # inner: the smaller q
    bc, sig = b * c, b * np.sqrt(1 - c * c)
    out = np.empty(c.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        wa = np.where(bend / a > 0, bend / a, np.inf)  # f(a Z): a true kink needs no grading
        wb = np.maximum(sig, bend) / np.abs(bc)  # G(Z) bends on this scale (relu: sig / |bc|)
        w_flat = np.minimum(bend / a, bend / np.abs(bc))

    def fold(z, a, bc, fu, fv):
        """f(u) f(v) at Z1 = z (u = a z, E[f(v) | Z1] = fv), plus its mirror at -z if known."""
        if parity is None:
            return fu * fv
        p, b_, g_ = parity
        return fu * fv + (p * fu + b_ * a * z + g_) * (p * fv + b_ * bc * z + g_)

    def flat_pair(z, a, bc):
        return fold(z, a, bc, f(a * z), f(bc * z))

    def outer(z, a, bc, sig):
        inner = smoothed(bc * z, sig) if smoothed else _expect(f, bc * z, sig, bend)
        return fold(z, a, bc, f(a * z), inner)

    kink, half = bend == 0, parity is not None
    flat = 1 - c * c <= FLAT
    out[flat] = _expect_z(flat_pair, 0.0, w_flat[flat], a[flat], bc[flat], kink=kink, half=half)
    rest = ~flat
    out[rest] = _expect_z(outer, 0.0, np.minimum(wa, wb)[rest], a[rest], bc[rest], sig[rest],
                          kink=kink, half=half)
    return out[inverse.ravel()].reshape(shape)


# --- Fast path: a 1-D expectation E[h(sqrt(q) Z)] (a mean, or a kernel on the diagonal q1 = q2,
# c = 1) is a smooth function of t = ln q; it is interpolated from a piecewise Chebyshev table
# built once from the rule above (it reproduces the rule to 1e-12 relative; outside TABLE_Q
# the rule is used directly).
TABLE_Q = (1e-7, 1e5)  # tabulated range of q
TABLE_PIECE = 1.0  # width of a piece in ln q
TABLE_DEGREE = 20  # Chebyshev degree per piece
_TABLES: dict = {}


class _Table:
    """Piecewise Chebyshev interpolant in t = ln q of a vectorised function of q."""

    def __init__(self, fn):
        self.t0, t1 = np.log(TABLE_Q)
        pieces = int(np.ceil((t1 - self.t0) / TABLE_PIECE))
        theta = np.pi * (np.arange(TABLE_DEGREE + 1) + 0.5) / (TABLE_DEGREE + 1)
        t = self.t0 + TABLE_PIECE * (np.arange(pieces)[:, None] + (1 + np.cos(theta)) / 2)
        cos_k = np.cos(np.outer(theta, np.arange(TABLE_DEGREE + 1)))  # T_k at the nodes
        self.coef = fn(np.exp(t)) @ cos_k * (2 / (TABLE_DEGREE + 1))
        self.coef[:, 0] /= 2

    def __call__(self, q):
        u = (np.log(q) - self.t0) / TABLE_PIECE
        i = np.clip(np.floor(u).astype(int), 0, len(self.coef) - 1)
        x, coef = 2 * (u - i) - 1, self.coef[i]
        b1 = b2 = 0.0
        for k in range(TABLE_DEGREE, 0, -1):  # Clenshaw
            b1, b2 = coef[:, k] + 2 * x * b1 - b2, b1
        return coef[:, 0] + x * b1 - b2


def _tabulated(key, h, q, bend):
    """E[h(sqrt(q) Z)] for a float array q, from the table ``key`` inside TABLE_Q."""
    q = np.asarray(q, dtype=float)
    out = np.empty(q.shape)
    inside = (q >= TABLE_Q[0]) & (q <= TABLE_Q[1])
    if inside.any():
        if key not in _TABLES:
            _TABLES[key] = _Table(lambda x: _expect(h, 0.0, np.sqrt(x), bend))
        out[inside] = _TABLES[key](q[inside])
    out[~inside] = _expect(h, 0.0, np.sqrt(q[~inside]), bend)
    return out


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


def _erf_kernel(q1, q2, c, ns):
    """Williams (1997): (2/pi) asin(2 c sqrt(q1 q2) / sqrt((1 + 2 q1)(1 + 2 q2)))."""
    return 2 / ns.pi * ns.asin(2 * c * ns.sqrt(q1) * ns.sqrt(q2)
                               / ns.sqrt((1 + 2 * q1) * (1 + 2 * q2)))


def _erf_grad_kernel(q1, q2, c, ns):
    """(4/pi) E[exp(-u^2 - v^2)] = (4/pi) / sqrt(det(I + 2 Sigma))."""
    return 4 / ns.pi / ns.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * c * c * q1 * q2)


class _Closed(NamedTuple):
    kernel: Callable
    grad_kernel: Callable
    mean: Callable
    grad_mean: Callable


_LINEAR = _Closed(
    kernel=_linear_kernel,
    grad_kernel=lambda q1, q2, c, ns: _full(ns, 1, q1, q2, c),
    mean=lambda q, ns: _full(ns, 0, q),
    grad_mean=lambda q, ns: _full(ns, 1, q),
)
_RELU = _Closed(
    kernel=_relu_kernel,
    grad_kernel=_relu_grad_kernel,
    mean=lambda q, ns: ns.sqrt(q / (2 * ns.pi)),  # E[max(u, 0)] = sqrt(q / (2 pi))
    grad_mean=lambda q, ns: _full(ns, sympy.Rational(1, 2), q),
)
_ERF = _Closed(
    kernel=_erf_kernel,
    grad_kernel=_erf_grad_kernel,
    mean=lambda q, ns: _full(ns, 0, q),  # erf is odd
    grad_mean=lambda q, ns: 2 / ns.sqrt(ns.pi * (1 + 2 * q)),  # (2/sqrt(pi)) E[exp(-u^2)]
)


# --- Unevaluated Gaussian integrals (the SYMBOLIC face of tanh, gelu, silu).

class GaussianIntegral(sympy.Integral):
    """A Gaussian expectation without closed form, left as an integral over R or R^2.

    ``.evalf()`` and ``.doit()`` evaluate it numerically once no free symbol is left: 1-D by
    mpmath at the requested precision, 2-D by scipy's ``dblquad`` (double precision).
    """

    def doit(self, **hints):
        return self if self.free_symbols else self.evalf()

    def _eval_evalf(self, prec):
        if self.free_symbols:
            return None
        variables = [lim[0] for lim in self.limits]
        if len(variables) == 1:
            f = sympy.lambdify(variables, self.function, "mpmath")
            with mpmath.workprec(prec + 10):
                return sympy.Float(mpmath.quad(f, [-mpmath.inf, 0, mpmath.inf]), precision=prec)
        f = sympy.lambdify(variables, self.function, ["scipy", "numpy"])  # f(inner, outer)
        with np.errstate(all="ignore"):  # exp(-x) overflows far in the tails, where f = 0
            val, _ = scipy.integrate.dblquad(f, -np.inf, np.inf, -np.inf, np.inf,
                                             epsabs=1e-14, epsrel=1e-13)
        return sympy.Float(val, precision=min(prec, 53))


_Z1, _Z2 = sympy.symbols("z_1 z_2", real=True)
_OO = sympy.oo


_NORMAL = sympy.exp(-_Z1**2 / 2) / sympy.sqrt(2 * sympy.pi)  # density of z_1 ~ N(0, 1)


def _integral_mean(expr, q):
    """E[phi(sqrt(q) Z)], Z ~ N(0, 1), as an integral."""
    return GaussianIntegral(expr(sympy.sqrt(q) * _Z1) * _NORMAL, (_Z1, -_OO, _OO))


def _integral_kernel(expr, q1, q2, c):
    """E[phi(u) phi(v)] as an integral over z = (u/sqrt(q1), v/sqrt(q2)), a standard bivariate
    normal of correlation c (so both kinks lie on the axes); over z_1 alone when c = +-1."""
    u = expr(sympy.sqrt(q1) * _Z1)
    if c in (1, -1):
        return GaussianIntegral(u * expr(c * sympy.sqrt(q2) * _Z1) * _NORMAL, (_Z1, -_OO, _OO))
    density = sympy.exp(-(_Z1**2 - 2 * c * _Z1 * _Z2 + _Z2**2) / (2 * (1 - c**2))) / (
        2 * sympy.pi * sympy.sqrt(1 - c**2))
    return GaussianIntegral(u * expr(sympy.sqrt(q2) * _Z2) * density, (_Z2, -_OO, _OO),
                            (_Z1, -_OO, _OO))


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


def _gelu_smoothed(m, s):
    """E[gelu(x)], x ~ N(m, s^2): m Phi(m/r) + s^2 phi(m/r)/r, r = sqrt(1 + s^2) (Stein)."""
    r = np.sqrt(1 + s * s)
    return m * scipy.special.ndtr(m / r) + s * s * np.exp(-m * m / (2 * r * r)) / (_SQRT_2PI * r)


def _gelu_grad_smoothed(m, s):
    """E[gelu'(x)] = E[Phi(x) + x phi(x)], x ~ N(m, s^2): Phi(m/r) + m phi(m/r)/r^3."""
    r = np.sqrt(1 + s * s)
    return scipy.special.ndtr(m / r) + m * np.exp(-m * m / (2 * r * r)) / (_SQRT_2PI * r**3)


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
    _smoothed: tuple | None = field(default=None, repr=False)  # E[phi(m + sZ)], E[phi'(..)]
    _parity: tuple = field(default=(None, None), repr=False)  # (p, b, g) of phi and phi':
    # phi(-x) = p phi(x) + b x + g (odd: (-1, 0, 0); x/2 + even: (1, -1, 0); 1/2 + odd: (-1, 0, 1))

    # Array faces: elementwise on numpy or cupy arrays.
    def fn(self, x, xp=np):
        """phi(x)."""
        return self._fn(xp.asarray(x), xp)

    def grad(self, x, xp=np):
        """phi'(x) (relu'(0) := 0)."""
        return self._grad(xp.asarray(x), xp)

    # Gaussian faces.
    def kernel(self, q1, q2, c, ns: Namespace = NUMERIC):
        """E[phi(u) phi(v)], u, v ~ N(0, [[q1, c sqrt(q1 q2)], [c sqrt(q1 q2), q2]])."""
        return self._pair("kernel", self._fn, self._expr, q1, q2, c, ns)

    def grad_kernel(self, q1, q2, c, ns: Namespace = NUMERIC):
        """E[phi'(u) phi'(v)] for the same (u, v)."""
        return self._pair("grad_kernel", self._grad, self._grad_expr, q1, q2, c, ns)

    def gram_kernel(self, K, ns: Namespace = NUMERIC):
        """E[phi(u) phi(u)^T] for u ~ N(0, K), over a stack of Grams K (..., B, B)."""
        return self.kernel(*_gram_args(K, ns), ns)

    def gram_grad_kernel(self, K, ns: Namespace = NUMERIC):
        """E[phi'(u) phi'(u)^T] for u ~ N(0, K), over a stack of Grams K (..., B, B)."""
        return self.grad_kernel(*_gram_args(K, ns), ns)

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
                return getattr(self._closed, face)(q1, q2, c, ns)
            return _elementwise(lambda a, b, r: _integral_kernel(expr, a, b, r), q1, q2, c)
        q1, q2, c = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (q1, q2, c)))
        c = np.clip(c, -1.0, 1.0)
        if self._closed is not None:
            return getattr(self._closed, face)(q1, q2, c, ns)[()]
        out = np.empty(q1.shape)
        diag = (c == 1) & (q1 == q2)
        out[diag] = _tabulated((self.name, face), lambda x: f(x, np) ** 2, q1[diag], self._bend)
        i = face == "grad_kernel"
        smoothed = self._smoothed and self._smoothed[i]
        out[~diag] = _kernel_quad(lambda x: f(x, np), q1[~diag], q2[~diag], c[~diag], self._bend,
                                  smoothed, self._parity[i])
        return out[()]

    def _single(self, face, f, expr, q, ns):
        if ns.symbolic:
            if self._closed is not None:
                return getattr(self._closed, face)(q, ns)
            return _elementwise(lambda a: _integral_mean(expr, a), q)
        q = np.asarray(q, dtype=float)
        if self._closed is not None:
            return getattr(self._closed, face)(q, ns)[()]
        return _tabulated((self.name, face), lambda x: f(x, np), q, self._bend)[()]


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
            c = np.clip(K / np.sqrt(q1 * q2), -1.0, 1.0)
        c = (c + np.swapaxes(c, -1, -2)) / 2  # exactly symmetric: relu' kernel is steep at |c| = 1
        c = np.where(eye, 1.0, np.where(np.isfinite(c), c, 0.0))
    return q1, q2, c


def _sym_normal_cdf(x):
    return (1 + sympy.erf(x / sympy.sqrt(2))) / 2


_ODD, _EVEN, _HALF_X, _HALF_ONE = (-1, 0, 0), (1, 0, 0), (1, -1, 0), (-1, 0, 1)  # parities

ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation("linear", 1, lambda x, xp: x, lambda x, xp: xp.ones_like(x), lambda x: x,
               _LINEAR, _bend=np.inf, _parity=(_ODD, _EVEN)),
    Activation("relu", 1, lambda x, xp: xp.maximum(x, 0), lambda x, xp: (x > 0).astype(x.dtype),
               lambda x: sympy.Max(x, 0), _RELU, _bend=0.0, _parity=(_HALF_X, _HALF_ONE)),
    Activation("erf", None, lambda x, xp: _special(xp).erf(x),
               lambda x, xp: 2 / np.sqrt(np.pi) * xp.exp(-x * x), sympy.erf, _ERF,
               _parity=(_ODD, _EVEN)),
    Activation("tanh", None, lambda x, xp: xp.tanh(x), _tanh_grad, sympy.tanh,
               _parity=(_ODD, _EVEN)),
    Activation("gelu", None, lambda x, xp: x * _normal_cdf(x, xp), _gelu_grad,
               lambda x: x * _sym_normal_cdf(x), _smoothed=(_gelu_smoothed, _gelu_grad_smoothed),
               _parity=(_HALF_X, _HALF_ONE)),
    Activation("silu", None, lambda x, xp: x * _special(xp).expit(x), _silu_grad,
               lambda x: x / (1 + sympy.exp(-x)), _parity=(_HALF_X, _HALF_ONE)),
)}


def get_activation(name: str) -> Activation:
    """The activation called ``name``; ConfigError naming the allowed ones otherwise."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError("act", name, f"one of {sorted(ACTIVATIONS)}") from None

