"""Linear maps: ``Dense`` (random weights and biases) and ``Scale`` (a fixed factor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sigprop.ops.base import FINITE, NONNEG, POSITIVE, Op, cotangent_affine, vec
from sigprop.state import arrays as mc
from sigprop.state.moments import DECOUPLED, GAUSSIAN, Moments, Ref, affine, outer
from sigprop.state.params import check
from sigprop.state.rng import BIAS


@dataclass(frozen=True)
class Dense(Op):
    """y = W x + b, W_ij ~ N(0, sigma_w^2/n_in), b_i ~ N(0, sigma_b^2), n_out = ratio n_in.

    Forward: K' = sigma_w^2 K + sigma_b^2, m' = 0, features Gaussian and independent of the
    input's features (cross moments decouple). Backward: G_in = sigma_w^2 ratio G_out.
    """

    sigma_w: Any = 1.0
    sigma_b: Any = 0.0
    ratio: Any = 1.0
    SYMBOLIC_ROLES: ClassVar[dict[str, str]] = {"sigma_w": "sigma_w", "sigma_b": "sigma_b", "ratio": "ratio"}

    def __post_init__(self):
        object.__setattr__(self, "sigma_w", check("Dense.sigma_w", self.sigma_w, *NONNEG))
        object.__setattr__(self, "sigma_b", check("Dense.sigma_b", self.sigma_b, *NONNEG))
        object.__setattr__(self, "ratio", check("Dense.ratio", self.ratio, *POSITIVE))

    def forward_law(self, s, ctx, record=None):
        ns = ctx.ns
        sw2, sb2 = np.asarray(ctx.p(self.sigma_w) ** 2), np.asarray(ctx.p(self.sigma_b) ** 2)
        e = ns.exp(-s.ls)
        K = sw2[..., None, None] * s.K + sb2[..., None, None] * outer(e, e)
        refs = tuple(Ref(m=r.m, X=DECOUPLED) for r in s.refs)
        return Moments(K=K, m=0 * s.m, ls=s.ls + 0 * sw2[..., None], law=GAUSSIAN, refs=refs)

    def backward_law(self, s, g, ctx):
        """G_in = sigma_w^2 ratio G; the mean modes decouple (W is fresh).

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        gain = np.asarray(ctx.p(self.sigma_w) ** 2 * ctx.p(self.ratio))  # 0-d object stays an array
        refs = tuple(Ref(m=r.m, X=DECOUPLED) for r in g.refs)
        return g.replace(K=gain[..., None, None] * g.K, refs=refs)

    def mc_widths(self, n):
        n_out = mc.dense_width(n, self.ratio)
        return n_out, max(n, n_out), n * n_out

    def mc_forward(self, x, env, record=None):
        """A = X W^T by ``env.sampler`` (W acts on the scaled signal: ls unchanged), plus b."""
        n_in = x.x.shape[-1]
        n_out = mc.dense_width(n_in, self.ratio)
        a, res = env.sampler.forward(x.x, self.sigma_w / n_in**0.5, n_out, env)
        y = mc.Sig(a, x.ls)
        if self.sigma_b:
            b = mc.Sig(env.normal(BIAS, (1, n_out)), env.xp.zeros_like(x.ls[:, :1]))
            y = mc.weighted_sum(1.0, y, self.sigma_b, b)
        return y, (n_in, res)

    def mc_vjp(self, res, g, env):
        n_in, res = res
        return mc.Sig(env.sampler.vjp(res, g.x, self.sigma_w / n_in**0.5, env), g.ls)


@dataclass(frozen=True)
class Scale(Op):
    """y = c x. K' = c^2 K, m' = c m; G_in = c^2 G."""

    c: Any = 1.0

    def __post_init__(self):
        object.__setattr__(self, "c", check("Scale.c", self.c, *FINITE))

    def forward_law(self, s, ctx, record=None):
        a = vec(ctx.p(self.c)) + 0 * s.m
        return affine(s, a, None, s.ls + 0 * a)

    def backward_law(self, s, g, ctx):
        """G_in = c^2 G (a fixed scale; no weights, so exact).

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        return cotangent_affine(g, vec(ctx.p(self.c)) + 0 * g.m, 0)

    def mc_forward(self, x, env, record=None):
        return mc.Sig(self.c * x.x, x.ls), None

    def mc_vjp(self, res, g, env):
        return mc.Sig(self.c * g.x, g.ls)
