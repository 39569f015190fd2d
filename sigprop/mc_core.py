"""Array state and shared array maths of the Monte Carlo faces (any array module ``xp``).

A batch of signals is a :class:`Sig`: ``x`` of shape (seeds, inputs, width) in the working
dtype and a log scale ``ls`` of shape (seeds, inputs) in float64, the true signal being
``exp(ls) * x``. Positively homogeneous ops act on ``x`` alone; a scale that grows like c^L is
thus carried exactly in ``ls`` and never overflows. Cotangents use the same type.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import ConfigError, MonteCarloOverflow  # noqa: F401  (re-exported)

F64 = np.float64


def array_module(x):
    """numpy or cupy, whichever ``x`` belongs to (numpy when cupy is not installed)."""
    if isinstance(x, np.ndarray):
        return np
    cupy = _cupy()
    return np if cupy is None else cupy.get_array_module(x)


@functools.cache
def _cupy():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


@dataclass(frozen=True)
class Sig:
    """True signal ``exp(ls)[..., None] * x``; ``x`` (S, B, n) in the working dtype, ``ls`` (S, B)."""

    x: Any
    ls: Any


@dataclass(frozen=True)
class Env:
    """Where an op's Monte Carlo face runs: backend, dtype, random streams, sampler.

    ``block`` and ``op`` (the op's depth-first index inside its block) name its random streams.
    """

    xp: Any
    dtype: Any
    streams: Any
    sampler: Any
    block: int
    op: int = 0

    def child(self, offset: int) -> Env:
        """The env of a child op, ``offset`` indices after this op in depth-first order."""
        return replace(self, op=self.op + offset)

    def normal(self, direction: int, shape, dtype=None):
        return self.streams.normal(self.block, self.op, direction, shape, dtype or self.dtype)


def times(x, f):
    """``x * f[..., None]`` with the per-(seed, input) factor ``f`` cast to x's dtype."""
    return x * f[..., None].astype(x.dtype)


def true_scale(ls, dtype):
    """e^ls in ``dtype``, NaN where it over- or underflows: an op that needs the true values
    then yields NaN, which the driver reports with its block (a zero signal stays a valid 0)."""
    xp = array_module(ls)
    e = xp.exp(ls).astype(dtype)
    return xp.where((e > 0) & xp.isfinite(e), e, np.nan).astype(dtype)


def gram(a, b):
    """Batched ``a b^T`` over the last axis, accumulated in float64: (S, B, n) -> (S, B, B)."""
    a64 = a.astype(F64, copy=False)
    return a64 @ (a64 if b is a else b.astype(F64, copy=False)).swapaxes(-1, -2)


def mean_sq(x):
    """(1/n) sum_i x_i^2 per row, float64."""
    return (x * x).sum(axis=-1, dtype=F64) / x.shape[-1]


def canonical(s: Sig) -> Sig:
    """Move the root mean square of each row into ``ls`` (exact; zero rows are left alone)."""
    xp = array_module(s.x)
    r = xp.sqrt(mean_sq(s.x))
    ok = (r > 0) & xp.isfinite(r)
    r = xp.where(ok, r, 1.0)
    return Sig(times(s.x, 1 / r), s.ls + xp.log(r))


def mix(beta: float, x: Sig, alpha: float, f: Sig) -> Sig:
    """``beta x + alpha f`` in log-scaled form: ls = max(ls_x + log|beta|, ls_f + log|alpha|).

    Both parts are rescaled by factors <= 1, so nothing overflows. Used by the residual sum,
    its vector-Jacobian product and the Dense bias.
    """
    if x.x.shape[-1] != f.x.shape[-1]:
        raise ConfigError("Residual branch output width", f.x.shape[-1],
                          f"the width of the stream ({x.x.shape[-1]}): Dense ratios in a branch "
                          "must multiply to 1")
    xp = array_module(x.x)
    with np.errstate(divide="ignore"):
        lx, lf = x.ls + np.log(abs(beta)), f.ls + np.log(abs(alpha))
    ls = xp.maximum(lx, lf)
    return Sig(times(x.x, np.sign(beta) * xp.exp(lx - ls))
               + times(f.x, np.sign(alpha) * xp.exp(lf - ls)), ls)


def feature_norm(s: Sig, eps: float, gain: float, center: bool):
    """LayerNorm (``center``) or RMSNorm over features: y = gain z / sqrt(mean(z^2) + eps).

    z = x - mean(x) (LayerNorm) or x. With x = e^ls xt: y = gain zt / st with
    st = sqrt(mean(zt^2) + eps e^(-2 ls)), evaluated as log st by logaddexp, so the output is
    ``Sig(gain zt, -log st)`` for any ls. Returns the output and (yh = zt / st, ls shift).
    """
    xp = array_module(s.x)
    z = s.x - s.x.mean(axis=-1, keepdims=True) if center else s.x
    with np.errstate(divide="ignore"):
        log_st = 0.5 * xp.logaddexp(xp.log(mean_sq(z)), np.log(eps) - 2 * s.ls)
    y = Sig(gain * z, -log_st)
    return y, (times(z, xp.exp(-log_st)), -log_st - s.ls)


def feature_norm_vjp(res, g: Sig, gain: float, center: bool) -> Sig:
    """J^T g = (gain / s)(P g - yh (yh . g) / n), P the centring (LayerNorm) or I (RMSNorm)."""
    yh, shift = res
    n = g.x.shape[-1]
    pg = g.x - g.x.mean(axis=-1, keepdims=True) if center else g.x
    dot = (yh * g.x).sum(axis=-1, keepdims=True) / n
    return Sig(gain * (pg - yh * dot.astype(yh.dtype)), g.ls + shift)


def dense_width(n_in: int, ratio: float) -> int:
    """n_out = ratio * n_in, which must be a positive integer."""
    n_out = round(ratio * n_in)
    if n_out < 1 or abs(n_out - ratio * n_in) > 1e-9 * max(1.0, ratio * n_in):
        raise ConfigError("Dense.ratio", ratio,
                          f"a ratio with ratio * n_in a positive integer (n_in = {n_in})")
    return n_out


def psd_eigh(K):
    """Eigen-decomposition of symmetric PSD (..., B, B) matrices in float64, eigenvalues >= 0."""
    xp = array_module(K)
    lam, V = xp.linalg.eigh(K.astype(F64))
    return xp.maximum(lam, 0.0), V


# A float64 eigh of a B x B symmetric matrix returns eigenvalues with absolute error ~B eps64
# max(lam) (Golub & Van Loan, 8.1); below EIGH_RTOL max(lam) (B <= 100) an eigenvalue is rounding
# noise, so a square root keeps the exact rank of a rank-deficient Gram (repeated inputs).
EIGH_RTOL = 1e-13


def psd_power(K, power: float, rtol: float = EIGH_RTOL):
    """V diag(lam^power) V^T, eigenvalues <= rtol * max(lam) set to 0 (so power -1 is pinv)."""
    xp = array_module(K)
    lam, V = psd_eigh(K)
    keep = lam > rtol * lam.max(axis=-1, keepdims=True)
    d = xp.where(keep, xp.where(keep, lam, 1.0) ** power, 0.0)
    return (V * d[..., None, :]) @ V.swapaxes(-1, -2)
