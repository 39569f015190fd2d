"""Infinite-width state of a signal and of its cotangent, in log-scaled form.

At infinite width the N features of a signal are i.i.d.; across the B inputs a feature has
Gram ``K_ab = (1/N) sum_i x_ia x_ib`` and feature mean ``m_a = (1/N) sum_i x_ia``. We store
``K = exp(ls_a + ls_b) * Kt`` and ``m = exp(ls_a) * mt`` with a per-input log scale ``ls``, so
that a stack whose scale grows like ``c^L`` stays finite in float64 at any depth (DESIGN.md).

Residual sums need the cross moment ``X_ab = (1/N) sum_i r_ia s_ib`` between the residual's
input ``r`` and the current signal ``s`` inside its branch. Each enclosing residual pushes a
:class:`Ref`; ops update every ref. Once the branch passes a ``Dense``, the features of ``s``
are independent of those of ``r`` and ``X = m_r m_s^T`` (:data:`DECOUPLED`); where an op cannot
say what ``X`` becomes the ref holds ``None`` (:meth:`Gram.cross_unknown`).

Two states share these fields (:class:`Gram`): :class:`Moments`, a signal, which also carries
what is known of its features' joint law (:class:`Law`: Gaussian, BatchNorm-normalised, or
nothing usable), and :class:`Cotangent`, whose ``K`` is the gradient Gram ``G`` (mean 0 under
the independent-readout law, so a decoupled cross moment is 0) and which may carry a relu
:class:`Gate` for BatchNorm's backward. The generic operations (:func:`moments_of_sum`, :func:`affine`,
:func:`to_unit_diagonal`) act on both and ask the state to carry its own extra through.

Numeric laws run on float64 arrays of shape ``(*grid, B, B)`` / ``(*grid, B)``; symbolic laws on
object arrays of sympy expressions with ``ls == 0`` (the same code, see :mod:`sigprop.state.ns`).

Every law takes its array module from the namespace ``ns`` (:mod:`sigprop.state.ns`), so the
compiled engine can trace them with jax.numpy.

May import: ``sigprop.errors``, ``sigprop.state.ns``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sigprop.errors import OverflowInTheory
from sigprop.state.arrays import array_module
from sigprop.state.ns import NUMERIC

DECOUPLED = "decoupled"
TINY = np.finfo(np.float64).tiny  # smallest normal float64; below it digits are lost
TRUE_LS_MAX = 350.0  # the largest log scale a law on true moments takes (q = e^700 < 1.8e308)
# the smallest a traced law takes: q >= tiny / eps (~1e-292). XLA on the CPU flushes subnormals
# (< 2.2e-308) to 0, and a law's rounding-level terms reach them from q ~ tiny / eps on: tanh's
# Gram was 1.5e-8 off at q = 1e-300 and log q 2.1 off at 1e-307, silently (exact to 1e-16 at
# q = 1e-295); below the bound the compiled engine refuses and names engine='numpy'
TRACED_LS_MIN = 0.5 * float(np.log(np.finfo(float).tiny / np.finfo(float).eps))
FAR = 2.0**-64  # an affine factor smaller than this, or larger than 1/FAR, goes into ls


@dataclass(frozen=True)
class Ref:
    """Cross moment with an enclosing residual input r: true X_ab = e^{ls_r,a + ls_b} Xt_ab."""

    m: Any  # scaled feature mean of r (zero for a cotangent)
    X: Any  # Xt, DECOUPLED or None (unknown)


# -- what is known of the features' joint law ------------------------------------------------
class Law:
    """The joint law of a stream's features across the inputs, as far as the laws can use it.

    The base is "nothing usable" (fixed inputs, an activation's output, a sum with such a part).
    Ops that need more (an activation needs Gaussian features, BatchNorm too) ask ``gaussian``
    or the type in :meth:`~sigprop.ops.base.Op.requires`; nobody else looks.
    """

    gaussian = False

    def after_affine(self, a, dls, shifted: bool, ns) -> Law:
        """The law after y_b = a_b (x_b - t_b) in scaled units with log scale moved by ``dls``
        (true factor a e^dls; ``dls=None``: a change of units only, true values unchanged);
        ``shifted``: whether some t_b is nonzero; ``ns``: the namespace of a and dls."""
        return GENERAL

    def plus(self, other: Law) -> Law:
        """The law of a weighted sum of a stream of this law and one of ``other``."""
        return GENERAL


class Gaussian(Law):
    """Features i.i.d. jointly N(0, K) across inputs (after a Dense; ``Inputs(law='gaussian')``)."""

    gaussian = True

    def after_affine(self, a, dls, shifted, ns):
        return self  # Gaussian features have mean 0: a centring shift is 0

    def plus(self, other):
        return self if other.gaussian else GENERAL


GENERAL = Law()
GAUSSIAN = Gaussian()


@dataclass(frozen=True)
class BatchNormed(Law):
    """Features z_b = scale_b y_b, y = BatchNorm_eps(u) over the batch, u ~ N(0, S) i.i.d. across
    features (true units). A rescaling keeps the law; a shift or a sum loses it."""

    S: Any
    eps: Any
    scale: Any

    def after_affine(self, a, dls, shifted, ns):
        if dls is None:
            return self
        return GENERAL if shifted else replace(self, scale=self.scale * a * ns.exp(dls))


@dataclass(frozen=True)
class Gate:
    """A cotangent relu'(z) o h at a (rescaled) BatchNorm output z = D y, with h ~ N(0, H)
    independent of the forward (H in the scaled units of the cotangent's K, which includes the
    gated Gram E[relu'(z) relu'(z)^T] o H); ``signs`` = sign(D). BatchNorm's backward needs it,
    since relu'(z) and BatchNorm's Jacobian are functions of the same batch."""

    H: Any
    signs: Any

    def scaled(self, a):
        """The gate of the cotangent a_a a_b-rescaled (an affine map, a change of log scale)."""
        return replace(self, H=outer(a, a) * self.H)


# -- the two states ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Gram:
    """Gram ``K`` (..., B, B), mean ``m`` (..., B), log scale ``ls`` (..., B), all scaled."""

    K: Any
    m: Any
    ls: Any
    refs: tuple[Ref, ...] = ()

    def replace(self, **changes):
        return replace(self, **changes)

    @property
    def diag(self):
        return np.diagonal(self.K, axis1=-2, axis2=-1)

    def cross(self, ref: Ref):
        """The scaled cross moment Xt with ``ref`` (materialised when decoupled)."""
        return ref.m[..., :, None] * self.m[..., None, :] if ref.X is DECOUPLED else ref.X

    def cross_unknown(self) -> bool:
        """Whether the cross moment with the innermost residual input is undetermined."""
        return self.cross(self.refs[-1]) is None

    def push_ref(self):
        """Open a residual branch: its input r is the state itself, so X = K."""
        return self.replace(refs=self.refs + (Ref(m=self.m, X=self.K),))


@dataclass(frozen=True)
class Moments(Gram):
    """A signal's state; ``law`` is what is known of its features' joint law."""

    law: Law = GENERAL

    def _rescaled(self, a, dls, shifted: bool, ns) -> dict:
        """The extra fields after an affine map (arguments of :meth:`Law.after_affine`)."""
        return {"law": self.law.after_affine(a, dls, shifted, ns)}

    def _summed(self, other: Moments, own, others) -> dict:
        """The extra fields of own * self + others * other (scaled units)."""
        return {"law": self.law.plus(other.law)}


@dataclass(frozen=True)
class Cotangent(Gram):
    """A cotangent's state: ``K`` is the gradient Gram G, ``m`` = 0; ``gate`` is the part of it
    gated by a relu right after a BatchNorm (None when there is none)."""

    gate: Gate | None = None

    def _rescaled(self, a, dls, shifted: bool, ns) -> dict:
        return {"gate": self.gate and self.gate.scaled(a)}  # H is in the scaled units of K

    def _summed(self, other: Cotangent, own, others) -> dict:
        """At most one of two summed cotangents is gated (``Residual`` refuses two)."""
        return {"gate": (self.gate and self.gate.scaled(own))
                or (other.gate and other.gate.scaled(others))}


def outer(a, b):
    return a[..., :, None] * b[..., None, :]


def rescale(coef, ls_from, ls_to, ns):
    """``coef * exp(ls_from - ls_to)`` evaluated without overflow (|result| <= |coef| e^0 ...).

    With the numeric namespace ``coef`` is folded into the exponent so that ``coef = 0`` with
    ``ls_from - ls_to = +inf`` gives 0, not nan.
    """
    if ns.symbolic:
        return coef * ns.exp(ls_from - ls_to)
    xp = ns.xp
    with np.errstate(divide="ignore", invalid="ignore"):
        out = xp.sign(coef) * xp.exp(ls_from + xp.log(xp.abs(coef)) - ls_to)
    return xp.where(coef == 0, 0.0, out)


def lift(ls, b2, ns):
    """Log scales for adding a true-scale constant of square ``b2`` (a Dense bias variance, a
    norm's eps) to a signal of log scale ``ls``: ``(ls', lc)``, its term being b2 e^(-2 lc).

    ls' = ls where sqrt(b2) e^-ls <= 1/FAR, else log sqrt(b2) (no lower than sqrt(TINY), so
    that e^(-2 ls') stays finite for a subnormal b2): the units in which the constant has
    ordinary size, so that its term never overflows (q = 1e-320); where b2 is ordinary the
    units, and the numbers, are unchanged. lc = ls' where b2 > 0, else 0 (the term is then 0,
    not 0 x inf).
    """
    if ns.symbolic:
        return ls, ls
    xp = ns.xp
    log_b, units = _lift_units(b2, xp)
    ls = xp.where(log_b - ls > -np.log(FAR), units, ls)
    return ls, xp.where(b2 > 0, ls, 0.0)


def _lift_units(b2, xp):
    """(log sqrt(b2), the lifted log scale max(log sqrt(b2), log sqrt(TINY))) of :func:`lift`."""
    with np.errstate(divide="ignore"):  # b2 = 0: log 0 = -inf, never lifted
        log_b = 0.5 * xp.log(b2)
    return log_b, xp.maximum(log_b, 0.5 * np.log(TINY))


def lift_factors(ls, b2, k, ns):
    """(ls', e^(ls - ls'), e^(-k lc)) with (ls', lc) of :func:`lift`, by one exp per entry of
    ``ls``: where ls' = ls, the first is e^0 = 1 and the second needs the exp; where lifted,
    lc = ls' is a function of ``b2`` alone (a constant of the law), so only the first does."""
    ls2, lc = lift(ls, b2, ns)
    if ns.symbolic:
        return ls2, ns.exp(ls - ls2), ns.exp(-k * lc)
    xp = ns.xp
    moved = ls2 != ls
    z = ns.exp(xp.where(moved, ls - ls2, -k * lc))
    return ls2, xp.where(moved, z, 1.0), xp.where(moved, ns.exp(-k * _lift_units(b2, xp)[1]), z)


def moments_of_sum(beta, x: Gram, alpha, f: Gram, ns) -> Gram:
    """The state of ``beta x + alpha f`` given ``f.refs[-1]``, the cross moment of x with f.

    K' = b^2 K_x + a^2 K_f + a b (X + X^T), m' = b m_x + a m_f; outer refs mix linearly.
    Used by the residual sum forward and backward alike; the caller checks beforehand that the
    cross moment is known (:meth:`Gram.cross_unknown`).
    """
    X = f.cross(f.refs[-1])
    xp = ns.xp
    if ns.symbolic:
        ls, bx, af = x.ls, rescale(beta, x.ls, x.ls, ns), rescale(alpha, f.ls, x.ls, ns)
    else:
        ls, bx, af = _sum_scales(beta, x.ls, alpha, f.ls, ns)
    K = (outer(bx, bx) * x.K + outer(af, af) * f.K
         + outer(bx, af) * X + xp.swapaxes(outer(bx, af) * X, -1, -2))
    refs = []
    for rx, rf in zip(x.refs, f.refs[:-1]):
        if rx.X is DECOUPLED and rf.X is DECOUPLED:
            refs.append(rx)
            continue
        Xx, Xf = x.cross(rx), f.cross(rf)
        mixed = None if Xx is None or Xf is None else Xx * bx[..., None, :] + Xf * af[..., None, :]
        refs.append(Ref(m=rx.m, X=mixed))
    return type(x)(K=K, m=bx * x.m + af * f.m, ls=ls, refs=tuple(refs), **x._summed(f, bx, af))


def _sum_scales(beta, ls_x, alpha, ls_f, ns):
    """(ls, b', a') of beta x + alpha f: ls = max(u, v), u = ls_x + log|beta|, v = ls_f +
    log|alpha|, and the factors b' = beta e^(ls_x - ls), a' = alpha e^(ls_f - ls) of
    :func:`rescale`, with one exp per entry: the larger part's factor is sign(coef) e^0 = +-1,
    the other's sign(coef) e^-|u - v| (u - v = -(v - u) exactly: the same values); 0 for a
    zero coefficient."""
    xp = ns.xp
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = ls_x + xp.log(xp.abs(beta)), ls_f + xp.log(xp.abs(alpha))
        other = xp.exp(-xp.abs(u - v))
    first = u >= v
    bx = xp.where(beta == 0, 0.0, xp.sign(beta) * xp.where(first, 1.0, other))
    af = xp.where(alpha == 0, 0.0, xp.sign(alpha) * xp.where(first, other, 1.0))
    return xp.maximum(u, v), bx, af


def far_split(a, ns=NUMERIC):
    """(a', log_shift) with a = a' e^log_shift: a numeric factor far from 1 (|a| outside 2^-64 ..
    2^64, nonzero) as its sign and log|a|, one of ordinary size as it is (shift 0); in the
    symbolic face and in true units (``ns.unscaled``) always as it is."""
    if ns.symbolic or ns.unscaled:
        return a, 0
    one = isinstance(a, (int, float))
    if one or (type(a) is np.ndarray and a.ndim == 0):  # (one number: ~30x less time than
        size = abs(float(a))  # the array ops, 0.2 against 7 us, twice per Dense)
        if size == 0 or FAR <= size <= 1 / FAR:
            return a, 0.0
        sign = math.copysign(1.0, float(a))
        return (sign if one else np.asarray(sign)), math.log(size)
    xp = ns.xp
    size = xp.abs(a)
    far = (size > 0) & ((size < FAR) | (size > 1 / FAR))
    with np.errstate(divide="ignore"):
        return xp.where(far, xp.sign(a), a), xp.where(far, xp.log(size), 0.0)


def far_factor(f: float) -> tuple[float, float]:
    """:func:`far_split` of one number (a Monte Carlo op's scale: the weights' std of a sigma_w
    of 1e-155 made the features' squares subnormal, log q = -inf from the next layer on)."""
    return far_split(float(f))


def affine(s: Gram, a, t, ls_out, ns=NUMERIC) -> Gram:
    """Per-input affine map y_b = a_b (x_b - t_b) in scaled units (LayerNorm, RMSNorm, Scale).

    K' = a a^T (K - m m^T + d d^T) with d = m - t, m' = a d, X' = (X - m_r t^T) a; ``t=None``
    means t = 0. A decoupled cross moment m_r m^T stays decoupled (m_r m'^T); the state's law
    or gate follows by its own rule (true z' = e^(ls_out - ls) a z).

    A numeric factor far from 1 (|a| outside 2^-64 .. 2^64, nonzero) is carried in the log
    scale (a -> sign a, ls_out -> ls_out + log|a|: the same true values), so that a LayerNorm
    whose eps dominates at q = 1e-300 does not leave K at 1e-295, where the next law's products
    underflow; factors of ordinary size are applied as they are (the same numbers as before).
    A traced namespace cannot tell whether t is zero: it counts as shifted (so the compiled
    engine loses a :class:`BatchNormed` law at a norm right after the BatchNorm, whose
    centring t the numpy engine finds to be 0). A namespace in true units (``ns.unscaled``)
    applies every factor as it is: its engine checks that no state leaves the range where
    that is exact.
    """
    a, shift = far_split(a, ns)
    ls_out = ls_out + shift
    if t is None:
        K, d = s.K, s.m
    else:
        d = s.m - t
        K = s.K - outer(s.m, s.m) + outer(d, d)
    refs = tuple(r if r.X is None or r.X is DECOUPLED
                 else Ref(m=r.m, X=(r.X if t is None else r.X - outer(r.m, t)) * a[..., None, :])
                 for r in s.refs)
    shifted = t is not None and (ns.traced or bool(np.any(t)))
    extra = s._rescaled(a, ls_out - s.ls, shifted, ns)
    return s.replace(K=outer(a, a) * K, m=a * d, ls=ls_out, refs=refs, **extra)


def to_unit_diagonal(s: Gram, ns=NUMERIC) -> Gram:
    """Move the diagonal of Kt into ls so Kt has unit diagonal (numeric, refs-free states).

    The arrays are returned in Fortran order, grid axes innermost in memory: the laws broadcast
    over the small trailing (B, B) axes, and numpy then runs its inner loops over the grid
    rather than over B (about 2x faster on a 100 x 100 grid at B = 2; values unchanged); a
    traced namespace keeps its own layout.
    """
    xp = ns.xp
    d = xp.diagonal(s.K, axis1=-2, axis2=-1)
    pos = d > 0
    root = xp.sqrt(xp.where(pos, d, 1.0))
    ls = s.ls + xp.log(root)
    extra = s._rescaled(1 / root, None, False, ns)  # a change of units: true values unchanged
    m = s.m / root
    # A mean below TINY of the rms is subnormal: its digits are gone and it stops decaying
    # (5e-324 * 0.7 rounds back to 5e-324), so e^ls m would grow without bound. Flush it to 0:
    # the mean stays exact relative to the signal's scale, and an exact 0 stays 0.
    m = xp.where(xp.abs(m) < TINY, 0.0, m)
    f = (lambda x: x) if ns.traced else np.asfortranarray
    return s.replace(K=f(s.K / outer(root, root)), m=f(m), ls=f(ls), **extra)


def true_moments(s: Gram, where: str, ns):
    """Unscaled (K, m), for ops whose law is not positively homogeneous; raise on overflow."""
    if ns.symbolic:
        return s.K * outer(ns.exp(s.ls), ns.exp(s.ls)), s.m * ns.exp(s.ls)
    if ns.traced:  # no values to test while tracing: NaN there, which the engine reports
        out_of_range = (s.ls > TRUE_LS_MAX) | (s.ls < TRACED_LS_MIN)
        e = ns.exp(ns.xp.where(out_of_range, np.nan, s.ls))
        return s.K * outer(e, e), s.m * e
    if np.any(s.ls > TRUE_LS_MAX):
        raise OverflowInTheory(
            f"{where}: the signal reaches log q = {2 * float(np.max(s.ls)):.4g}, beyond float64, "
            "and this op is not positively homogeneous, so its law needs the true scale. "
            "Normalise the stream (LayerNorm/RMSNorm) or reduce depth/branch scale.")
    e = np.exp(s.ls)
    return s.K * outer(e, e), s.m * e


def corr_of(K):
    """Cosine similarity K_ab / sqrt(K_aa K_bb), exactly 1 on the diagonal; for an input of zeros
    (K_aa = 0, its cosine 0/0) 0 off the diagonal and 1 on it, as the schema has it, in both
    faces (the Monte Carlo's :func:`~sigprop.engines.montecarlo.signal_stats` calls this on
    numpy or cupy arrays)."""
    xp = array_module(K)
    d = xp.diagonal(K, axis1=-2, axis2=-1)
    root = xp.sqrt(xp.where(d > 0, d, np.inf))
    return xp.where(xp.eye(K.shape[-1], dtype=bool), 1.0, K / outer(root, root))
