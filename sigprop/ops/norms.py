"""Normalisations: ``LayerNorm`` and ``RMSNorm`` over features, ``BatchNorm`` over the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sigprop.errors import ConfigError
from sigprop.kernels.batchnorm import bn_backward, bn_forward, bn_relu_backward, centred_cov
from sigprop.kernels.gaussian import get_activation
from sigprop.ops.base import FINITE, NONNEG, Op, cotangent_affine, vec
from sigprop.state import arrays as mc
from sigprop.state.moments import (
    DECOUPLED,
    BatchNormed,
    Moments,
    Ref,
    affine,
    lift,
    lift_factors,
    outer,
    true_moments,
)
from sigprop.state.ns import NUMERIC
from sigprop.state.params import check


def _feature_scale(s, v, eps, gain, ns):
    """(a, ls'): gain / sqrt(v + eps) = a e^(-ls') in true units, v = e^(2 ls) vt the
    (centred) second moment. In units lifted past eps (:func:`~sigprop.state.moments.lift`),
    a = gain / sqrt(vt e^(2(ls - ls')) + eps e^(-2 ls')): finite at any ls, and ls' = ls
    (the plain formula) unless eps e^(-2 ls) would overflow."""
    eps = vec(eps)
    ls, d, e2 = lift_factors(s.ls, eps, 2, ns)  # d = e^(ls - ls'), e2 = e^(-2 lc)
    return gain / ns.sqrt(v * (d * d) + eps * e2), ls


@dataclass(frozen=True)
class LayerNorm(Op):
    """y = gain (x - mean(x)) / sqrt(var(x) + eps) over features (biased variance).

    Forward: K' = gain^2 (K - m m^T)_ab / sqrt((v_a + eps)(v_b + eps)), m' = 0. Backward (the
    Jacobian (gain/s)(P - y y^T/N) against a mean-zero independent cotangent):
    G_in = gain^2 G_ab / sqrt((v_a + eps)(v_b + eps)).
    """

    eps: Any = 1e-5
    gain: Any = 1.0
    SYMBOLIC_ROLES: ClassVar[dict[str, str]] = {"eps": "eps", "gain": "gain"}

    def __post_init__(self):
        object.__setattr__(self, "eps", check("LayerNorm.eps", self.eps, *NONNEG))
        object.__setattr__(self, "gain", check("LayerNorm.gain", self.gain, *FINITE))

    def _scale(self, s, ctx):
        v = ctx.ns.xp.diagonal(s.K, axis1=-2, axis2=-1) - s.m * s.m
        return _feature_scale(s, v, ctx.p(self.eps), vec(ctx.p(self.gain)), ctx.ns)

    def forward_law(self, s, ctx, record=None):
        a, ls = self._scale(s, ctx)
        return affine(s, a, s.m, s.ls - ls, ctx.ns)

    def backward_law(self, s, g, ctx):
        """G_in = G_ab scale_a scale_b (the class docstring).

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        a, ls = self._scale(s, ctx)
        return cotangent_affine(g, a, -ls, ctx.ns)

    def mc_forward(self, x, env, record=None):
        return mc.feature_norm(x, self.eps, self.gain, center=True)

    def mc_vjp(self, res, g, env):
        return mc.feature_norm_vjp(res, g, self.gain, center=True)


@dataclass(frozen=True)
class RMSNorm(Op):
    """y = x / sqrt(mean(x^2) + eps). K' = K_ab / sqrt((q_a + eps)(q_b + eps)); G likewise."""

    eps: Any = 1e-5
    SYMBOLIC_ROLES: ClassVar[dict[str, str]] = {"eps": "eps"}

    def __post_init__(self):
        object.__setattr__(self, "eps", check("RMSNorm.eps", self.eps, *NONNEG))

    def _scale(self, s, ctx):
        return _feature_scale(s, ctx.ns.xp.diagonal(s.K, axis1=-2, axis2=-1), ctx.p(self.eps), 1,
                              ctx.ns)

    def forward_law(self, s, ctx, record=None):
        a, ls = self._scale(s, ctx)
        return affine(s, a, None, s.ls - ls, ctx.ns)

    def backward_law(self, s, g, ctx):
        """G_in = G_ab scale_a scale_b (the class docstring).

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        a, ls = self._scale(s, ctx)
        return cotangent_affine(g, a, -ls, ctx.ns)

    def mc_forward(self, x, env, record=None):
        return mc.feature_norm(x, self.eps, 1.0, center=False)

    def mc_vjp(self, res, g, env):
        return mc.feature_norm_vjp(res, g, 1.0, center=False)


def _gram_shape(eps, *grams):
    """The shape of a BatchNorm t-integral: the broadcast of eps (per grid point) and the
    leading dims of the Grams (..., B, B), then (B, B)."""
    return np.broadcast_shapes(np.shape(eps), *(g.shape[:-2] for g in grams)) + grams[0].shape[-2:]


@dataclass(frozen=True)
class BatchNorm(Op):
    """Per feature over the batch of inputs: y = P u / sqrt(|P u|^2 / B + eps), P = I - 11^T/B.

    Needs jointly Gaussian inputs (a Dense before it, or Gaussian inputs); its kernel and its
    batch-coupled backward are exact 1-D integrals (:mod:`sigprop.kernels.batchnorm`). The output
    carries its law (:class:`~sigprop.state.moments.BatchNormed`) for a relu or linear Act after
    it. No symbolic law (the t-integrals have no closed form in general).
    """

    eps: Any = 1e-5
    symbolic_law: ClassVar[bool] = False
    couples_inputs: ClassVar[bool] = True

    def __post_init__(self):
        object.__setattr__(self, "eps", check("BatchNorm.eps", self.eps, *NONNEG))

    def requires(self, s):
        return None if s.law.gaussian else (
            "BatchNorm meets features that are not jointly Gaussian (a residual "
            "stream carrying the input or a previous BatchNorm output); its exact law needs "
            "Gaussian features: put it right after a Dense (or first, on "
            "Inputs(law='gaussian')).")

    @staticmethod
    def check_batch(B: int) -> None:
        """Refuse a batch of fewer than two inputs, over which no feature is normalised."""
        if B < 2:
            raise ConfigError("batch size B (number of inputs)", B,
                              ">= 2 for BatchNorm (it normalises each feature over the batch)")

    def _cov(self, s, ctx):
        self.check_batch(s.K.shape[-1])
        return true_moments(s, ctx.path, ctx.ns)[0]

    def forward_law(self, s, ctx, record=None):
        ns = ctx.ns
        S, eps = self._cov(s, ctx), ns.asarray(ctx.p(self.eps))
        refs = tuple(r if r.X is DECOUPLED else Ref(m=r.m, X=None) for r in s.refs)
        K = ns.host(bn_forward, _gram_shape(eps, S), S, eps)  # t-integrals: by value
        return Moments(K=K, m=0 * s.m, ls=0 * s.ls, refs=refs,
                       law=BatchNormed(S=S, eps=eps, scale=np.ones(S.shape[:-1])))

    def backward_law(self, s, g, ctx):
        """E[J^T G J] for a cotangent independent of u; a part gated by a relu after this op
        (g.gate) depends on u and goes through :func:`bn_relu_backward` instead.

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        ns = ctx.ns
        top = ns.xp.max(g.ls, axis=-1, keepdims=True)
        u = ns.exp(g.ls - top)
        S, eps, G = self._cov(s, ctx), ns.asarray(ctx.p(self.eps)), outer(u, u) * g.K
        shape = _gram_shape(eps, S, G)
        if g.gate is None:
            G = ns.host(bn_backward, shape, S, G, eps)
        else:
            H, signs = outer(u, u) * g.gate.H, g.gate.signs
            gated = get_activation("relu").gram_grad_kernel(centred_cov(S, signs), ns) * H  # in G
            G = (ns.host(bn_backward, shape, S, G - gated, eps)
                 + ns.host(bn_relu_backward, _gram_shape(eps, S, H), S, H, signs, eps))
        refs = tuple(r if r.X is DECOUPLED else Ref(m=r.m, X=None) for r in g.refs)
        return g.replace(K=G, ls=top + 0 * g.ls, refs=refs, gate=None)

    def mc_forward(self, x, env, record=None):
        """Batch statistics of the simulated batch. With t = max_b ls_b, u = e^(ls - t) xt:
        y = P u / s, s^2 = |P u|^2 / B + eps e^(-2t) per (seed, feature), P = I - 11^T / B.
        In units t' lifted past eps (:func:`~sigprop.state.moments.lift`; t' = t unless eps
        e^(-2t) is far from 1): y = e^(t - t') P u / s', s'^2 = |P u|^2 e^(2(t - t')) / B +
        eps e^(-2t'), so y is O(1) with its scale t - t' in ls (at q = 1e-300 it underflowed)."""
        xp, B = env.xp, x.x.shape[-2]
        self.check_batch(B)
        top = x.ls.max(axis=-1, keepdims=True)
        lt, lc = lift(top, self.eps, NUMERIC)
        u = mc.times(x.x, xp.exp(x.ls - top))
        w = u - u.mean(axis=-2, keepdims=True)
        d = xp.exp(top - lt)  # e^(t - t'), 1 unless lifted
        s2 = ((w * w).sum(axis=-2, keepdims=True, dtype=mc.F64) / B * (d * d)[..., None]
              + self.eps * xp.exp(-2 * lc)[..., None])
        inv_s = (1 / xp.sqrt(s2)).astype(w.dtype)
        y = w * inv_s
        ls = xp.broadcast_to(top - lt, x.ls.shape).copy()
        return mc.Sig(y, ls), (mc.times(y, d), inv_s, lt)  # the backward needs the true y

    def mc_vjp(self, res, g, env):
        """J^T g = (1/s)(P g - y (y . g) / B) over the batch (true y), g brought to a common
        scale; 1/s = e^(-t') / s'."""
        y, inv_s, lt = res
        gtop = g.ls.max(axis=-1, keepdims=True)
        h = mc.times(g.x, env.xp.exp(g.ls - gtop))
        h = h - h.mean(axis=-2, keepdims=True) - y * (y * h).mean(axis=-2, keepdims=True)
        return mc.Sig(inv_s * h, env.xp.broadcast_to(gtop - lt, g.ls.shape))
