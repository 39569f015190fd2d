"""Infinite-width state of a signal and of its cotangent, in log-scaled form.

At infinite width the N features of a signal are i.i.d.; across the B inputs a feature has
Gram ``K_ab = (1/N) sum_i x_ia x_ib`` and feature mean ``m_a = (1/N) sum_i x_ia``. We store
``K = exp(ls_a + ls_b) * Kt`` and ``m = exp(ls_a) * mt`` with a per-input log scale ``ls``, so
that a stack whose scale grows like ``c^L`` stays finite in float64 at any depth (DESIGN.md).

Residual sums need the cross moment ``X_ab = (1/N) sum_i r_ia s_ib`` between the residual's
input ``r`` and the current signal ``s`` inside its branch. Each enclosing residual pushes a
:class:`Ref`; ops update every ref. Once the branch passes a ``Dense``, the features of ``s``
are independent of those of ``r`` and ``X = m_r m_s^T`` (:data:`DECOUPLED`); where an op cannot
say what ``X`` becomes the ref holds ``None`` and a residual sum that needs it raises.

Cotangents use the same two types: ``Moments.K`` is then the gradient Gram ``G`` (mean 0 under
the independent-readout law, so a decoupled cross moment is 0).

Numeric laws run on float64 arrays of shape ``(*grid, B, B)`` / ``(*grid, B)``; symbolic laws on
object arrays of sympy expressions with ``ls == 0`` (the same code, see :mod:`sigprop.state.ns`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

DECOUPLED = "decoupled"


@dataclass(frozen=True)
class Ref:
    """Cross moment with an enclosing residual input r: true X_ab = e^{ls_r,a + ls_b} Xt_ab."""

    m: Any  # scaled feature mean of r (zero for a cotangent)
    X: Any  # Xt, DECOUPLED or None (unknown)


@dataclass(frozen=True)
class BNLaw:
    """The law of a BatchNorm output, possibly rescaled per input: features z_b = scale_b y_b,
    y = BatchNorm_eps(u) over the batch, u ~ N(0, S) i.i.d. across features (true units)."""

    S: Any
    eps: Any
    scale: Any


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


@dataclass(frozen=True)
class Moments:
    """Gram ``K`` (..., B, B), mean ``m`` (..., B), log scale ``ls`` (..., B), all scaled."""

    K: Any
    m: Any
    ls: Any
    gaussian: bool = False  # features i.i.d. jointly N(0, K) across inputs
    refs: tuple[Ref, ...] = ()
    bn: BNLaw | None = None  # features are a (rescaled) BatchNorm output of this law
    gate: Gate | None = None  # (cotangents) part of the cotangent is gated by relu' after BN

    def replace(self, **changes) -> Moments:
        return replace(self, **changes)

    @property
    def diag(self):
        return np.diagonal(self.K, axis1=-2, axis2=-1)

    def cross(self, ref: Ref):
        """The scaled cross moment Xt with ``ref`` (materialised when decoupled)."""
        return ref.m[..., :, None] * self.m[..., None, :] if ref.X is DECOUPLED else ref.X

    def push_ref(self) -> Moments:
        """Open a residual branch: its input r is the signal itself, so X = K."""
        return self.replace(refs=self.refs + (Ref(m=self.m, X=self.K),))


def outer(a, b):
    return a[..., :, None] * b[..., None, :]


def rescale(coef, ls_from, ls_to, ns):
    """``coef * exp(ls_from - ls_to)`` evaluated without overflow (|result| <= |coef| e^0 ...).

    With the numeric namespace ``coef`` is folded into the exponent so that ``coef = 0`` with
    ``ls_from - ls_to = +inf`` gives 0, not nan.
    """
    if ns.symbolic:
        return coef * ns.exp(ls_from - ls_to)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.sign(coef) * np.exp(ls_from + np.log(np.abs(coef)) - ls_to)
    return np.where(coef == 0, 0.0, out)


def mix(beta, x: Moments, alpha, f: Moments, ns) -> Moments:
    """Moments of ``beta x + alpha f`` given ``f.refs[-1]``, the cross moment of x with f.

    K' = b^2 K_x + a^2 K_f + a b (X + X^T), m' = b m_x + a m_f; outer refs mix linearly.
    Used by the residual sum forward and backward alike.
    """
    inner = f.refs[-1]
    X = f.cross(inner)
    if X is None:
        raise ValueError("cross moment unknown")  # caller turns this into a named error
    if ns.symbolic:
        ls = x.ls
    else:
        with np.errstate(divide="ignore"):
            ls = np.maximum(x.ls + np.log(np.abs(beta)), f.ls + np.log(np.abs(alpha)))
    bx = rescale(beta, x.ls, ls, ns)
    af = rescale(alpha, f.ls, ls, ns)
    K = (outer(bx, bx) * x.K + outer(af, af) * f.K
         + outer(bx, af) * X + np.swapaxes(outer(bx, af) * X, -1, -2))
    refs = []
    for rx, rf in zip(x.refs, f.refs[:-1]):
        if rx.X is DECOUPLED and rf.X is DECOUPLED:
            refs.append(rx)
            continue
        Xx, Xf = x.cross(rx), f.cross(rf)
        mixed = None if Xx is None or Xf is None else Xx * bx[..., None, :] + Xf * af[..., None, :]
        refs.append(Ref(m=rx.m, X=mixed))
    gates = [g for g in (x.gate and x.gate.scaled(bx), f.gate and f.gate.scaled(af)) if g]
    if len(gates) == 2:
        raise ValueError("two gated cotangents")  # caller turns this into a named error
    return Moments(K=K, m=bx * x.m + af * f.m, ls=ls, gaussian=x.gaussian and f.gaussian,
                   refs=tuple(refs), gate=gates[0] if gates else None)


def affine(s: Moments, a, t, ls_out) -> Moments:
    """Per-input affine map y_b = a_b (x_b - t_b) in scaled units (LayerNorm, RMSNorm, Scale).

    K' = a a^T (K - m m^T + d d^T) with d = m - t, m' = a d, X' = (X - m_r t^T) a; ``t=None``
    means t = 0. A decoupled cross moment m_r m^T stays decoupled (m_r m'^T); Gaussian features
    stay Gaussian (t = m = 0 for them), and a rescaled BatchNorm output stays one when t = 0.
    """
    if t is None:
        K, d = s.K, s.m
    else:
        d = s.m - t
        K = s.K - outer(s.m, s.m) + outer(d, d)
    refs = tuple(r if r.X is None or r.X is DECOUPLED
                 else Ref(m=r.m, X=(r.X if t is None else r.X - outer(r.m, t)) * a[..., None, :])
                 for r in s.refs)
    bn = s.bn
    if bn is not None:  # true z' = e^(ls_out - ls) a z
        bn = (replace(bn, scale=bn.scale * a * np.exp(ls_out - s.ls))
              if t is None or not np.any(t) else None)
    gate = s.gate and s.gate.scaled(a)
    return s.replace(K=outer(a, a) * K, m=a * d, ls=ls_out, refs=refs, bn=bn, gate=gate)


def canonical(s: Moments) -> Moments:
    """Move the diagonal of Kt into ls so Kt has unit diagonal (numeric, refs-free states).

    The arrays are returned in Fortran order, grid axes innermost in memory: the laws broadcast
    over the small trailing (B, B) axes, and numpy then runs its inner loops over the grid
    rather than over B (about 2x faster on a 100 x 100 grid at B = 2; values unchanged).
    """
    d = s.diag
    pos = d > 0
    root = np.sqrt(np.where(pos, d, 1.0))
    ls = s.ls + np.log(root)
    gate = s.gate and s.gate.scaled(1 / root)
    f = np.asfortranarray
    return s.replace(K=f(s.K / outer(root, root)), m=f(s.m / root), ls=f(ls), gate=gate)


def true_moments(s: Moments, where: str, ns):
    """Unscaled (K, m), for ops whose law is not positively homogeneous; raise on overflow."""
    if ns.symbolic:
        return s.K * outer(ns.exp(s.ls), ns.exp(s.ls)), s.m * ns.exp(s.ls)
    from sigprop.errors import OverflowInTheory

    if np.any(s.ls > 350.0):
        raise OverflowInTheory(
            f"{where}: the signal reaches log q = {2 * float(np.max(s.ls)):.4g}, beyond float64, "
            "and this op is not positively homogeneous, so its law needs the true scale. "
            "Normalise the stream (LayerNorm/RMSNorm) or reduce depth/branch scale.")
    e = np.exp(s.ls)
    return s.K * outer(e, e), s.m * e


def corr_of(K):
    """Cosine similarity K_ab / sqrt(K_aa K_bb); 0 where a diagonal entry is 0."""
    d = np.diagonal(K, axis1=-2, axis2=-1)
    root = np.sqrt(np.where(d > 0, d, np.inf))
    return K / outer(root, root)
