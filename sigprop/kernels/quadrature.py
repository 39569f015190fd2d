"""One-dimensional Gaussian expectations E[g(Z)], Z ~ N(0, 1), and the activation kernel
E[f(u) f(v)] built from them, by fixed rules measured against adaptive integrators.

Write u = sqrt(q1) Z1, v = sqrt(q2) (c Z1 + sqrt(1 - c^2) Z2) with q1 >= q2 (the kernel is
symmetric) and integrate Z2 first: kernel = E_Z1[f(u) G(Z1)], where
G(Z1) = E[f(v) | Z1] = E[f(m + sigma Z2)], m = c sqrt(q2) Z1, sigma = sqrt(q2 (1 - c^2)).
Every level is a 1-D Gaussian expectation E[g(Z)] done by one rule, :func:`_expect_z`:

* g smooth on the scale of the density (its bend is >= 1.4 standard deviations wide):
  Gauss-Hermite, with the density as weight;
* otherwise (a kink, as relu's, or a steep bend: tanh, gelu and silu bend on the scale
  1/sqrt(q) in Z, where a plain Gauss-Hermite rule converges slowly): composite
  Gauss-Legendre on [-Z_MAX, Z_MAX], the density folded into the weights, split at a base mesh
  (which resolves the density) and at the kink z0 (where f's argument is 0), with panels
  graded geometrically towards z0 down to the bend's width.

|c| = 1 is the 1-D E[f(sqrt(q1) Z) f(c sqrt(q2) Z)]. A parity f(-x) = p f(x) + b x + g folds
the outer integral onto Z1 > 0. A 1-D E[h(sqrt(q) Z)] (a mean, or the diagonal q1 = q2, c = 1),
a function of q alone, is interpolated from a table built once from the same rule
(:func:`tabulated`). Cost per element: ~0.1 us on the tables; off the diagonal, ~5e3 (q ~ 1) to
~1.6e4 (q ~ 1e3) integrand values.

May import: numpy only (no other sigprop module).
"""

from __future__ import annotations

import numpy as np

# --- Quadrature. Orders and meshes were tuned against a reference rule of twice the order and
# finer meshes (itself checked against mpmath to 1e-16). The errors quoted are the worst case
# of E[g(mu + s Z)] over mu in [-1e3, 1e3], s in [1e-3, 150], g in phi, phi', phi^2, phi'^2,
# phi(x) phi(r x) of tanh, gelu, silu, relu: absolute for bounded g, relative to |mu| + s (or
# to its square) for growing ones. Errors of the kernels themselves: see _MEASURED below.
Z_MAX = 8.5  # truncation in standard deviations: P(|Z| > 8.5) = 1.9e-17
GL_ORDER = 12  # Gauss-Legendre nodes per panel (order 10: 5e-10, 12: 7e-12, 14: 2e-13)
BASE_MESH = (-Z_MAX, -4.5, -2.0, 0.0, 2.0, 4.5, Z_MAX)  # panels that resolve the normal density
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
    # in place where it can be: a new (panels, nodes, n) array costs page faults (on a 2-core VM,
    # 360k nodes: exp(-z * z / 2) 3 ms, in place 0.4 ms); the same operations, so the same bits
    z = half_len * (1 + _GL_X[:, None])
    z += lo
    density = np.square(z)
    density *= -0.5
    w = half_len * (_GL_W[:, None] / _SQRT_2PI)
    w *= np.exp(density, out=density)
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
                out[part] = _node_sum(g(z[:, None], *(a[part] for a in args)) * w[:, None])
            else:
                zp, wp = _graded_rule(z0[part], width[part], depth, half)
                out[part] = _node_sum(g(zp, *(a[part] for a in args)) * wp)
    return out.reshape(shape)


def _node_sum(terms):
    """Sum of ``terms`` (nodes, n) over the nodes by a fixed pairwise tree of elementwise adds
    (the top half folded onto the bottom, in place). Each element's rounding then depends on its
    own terms only, not on how many elements share the block: a grid point gives the same bits
    whatever chunk of the grid it is computed in (a BLAS product or numpy's own pairwise sum
    changes its order with the block's shape)."""
    n = terms.shape[0]
    while n > 1:
        h = (n + 1) // 2
        terms[: n - h] += terms[h:n]
        n = h
    return terms[0]


def expect(f, mu, s, bend=1.0):
    """E[f(mu + s Z)], Z ~ N(0, 1); f has a kink (bend = 0) or bends on the scale bend at 0."""
    mu, s = np.broadcast_arrays(np.asarray(mu, float), np.asarray(s, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        z0 = np.where(s > 0, -mu / s, 0.0)
        width = np.where(s > 0, bend / s, np.inf)
    return _expect_z(lambda z, m, t: f(m + t * z), z0, width, mu, s, kink=bend == 0)


def kernel_quad(f, q1, q2, c, bend=1.0, parity=None):
    """E[f(u) f(v)] for float arrays q1, q2 >= 0 and c in [-1, 1] (see the module docstring).

    ``parity = (p, b, g)`` with f(-x) = p f(x) + b x + g, when known, folds the outer
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
        inner = expect(f, bc * z, sig, bend)
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


def tabulated(key, h, q, bend):
    """E[h(sqrt(q) Z)] for a float array q, from the table ``key`` inside TABLE_Q."""
    q = np.asarray(q, dtype=float)
    out = np.empty(q.shape)
    inside = (q >= TABLE_Q[0]) & (q <= TABLE_Q[1])
    if inside.any():
        if key not in _TABLES:
            _TABLES[key] = _Table(lambda x: expect(h, 0.0, np.sqrt(x), bend))
        out[inside] = _TABLES[key](q[inside])
    out[~inside] = expect(h, 0.0, np.sqrt(q[~inside]), bend)
    return out
