"""Linear maps: ``Dense`` (random weights and biases), ``Scale`` (a fixed factor) and
``FeatureAffine`` (fixed per-feature gain and shift vectors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import sympy

from sigprop.errors import ConfigError
from sigprop.ops.base import (
    FINITE,
    NONNEG_SQUARABLE,
    POSITIVE,
    SQUARABLE,
    Op,
    cotangent_affine,
    is_zero,
    vec,
)
from sigprop.state import arrays as mc
from sigprop.state.moments import (
    DECOUPLED,
    GAUSSIAN,
    GENERAL,
    Moments,
    Ref,
    affine,
    far_factor,
    far_split,
    lift_factors,
    outer,
)
from sigprop.state.params import Sweep, check, values_of
from sigprop.state.rng import BACKWARD, BIAS, FORWARD, uniform_of_normal

INITS = ("normal", "uniform")  # the law of a Dense's weights and bias (same variances)


@dataclass(frozen=True)
class Dense(Op):
    """y = W x + b, W_ij ~ N(0, sigma_w^2/n_in), b_i ~ N(0, sigma_b^2), n_out = ratio n_in.

    Forward: K' = sigma_w^2 K + sigma_b^2, m' = 0, features Gaussian and independent of the
    input's features (cross moments decouple); in log-scaled units lifted where sigma_b e^-ls
    would overflow (:func:`~sigprop.state.moments.lift`). Backward: G_in = sigma_w^2 ratio G_out.

    ``init="uniform"``: W_ij uniform with the same variance (torch's default kaiming_uniform(a=
    sqrt 5) is W ~ U(+-1/sqrt(n_in)): sigma_w^2 = 1/3), the bias Gaussian as above. The
    infinite-width law depends on the variances only (the CLT makes W x Gaussian either way);
    the Monte Carlo draws the uniform weights themselves, explicitly (conditioning is exact for
    Gaussian weights only), and pulls back through the forward's W, or under
    ``sampler="independent"`` through a fresh uniform W (BACKWARD stream), as the Gaussian path
    does. A uniform bias is no sum: with O(1) variance it would leave the pre-activations a
    mixture over it, non-Gaussian at every width (an activation after it off by ~40 standard
    errors at N = 4096, sigma_b = 1.5), a law the theory does not carry. torch's own bias,
    U(+-1/sqrt(n_in)) of variance 1/(3 n_in), differs from the Gaussian one by its 4th
    cumulant, an O(1/N^2) effect.

    ``sigma_b_fan_in``: a bias variance that falls with the input width, b_i ~ N(0, sigma_b^2 +
    sigma_b_fan_in^2 / n_in) (torch's U(+-1/sqrt(n_in)): sigma_b_fan_in^2 = 1/3). It leaves
    the infinite-width law; at width N its first-order part is the law's derivative in
    sigma_b^2 times sigma_b_fan_in^2 / n_in (:mod:`sigprop.engines.finite_width`).
    """

    sigma_w: Any = 1.0
    sigma_b: Any = 0.0
    ratio: Any = 1.0
    init: str = field(default="normal", metadata={"omit_default": True})
    sigma_b_fan_in: Any = field(default=0.0, metadata={"omit_default": True})
    SYMBOLIC_ROLES: ClassVar[dict[str, str]] = {"sigma_w": "sigma_w", "sigma_b": "sigma_b", "ratio": "ratio"}

    def __post_init__(self):
        if self.init not in INITS:
            raise ConfigError("Dense.init", self.init, f"one of {INITS}")
        object.__setattr__(self, "sigma_w", check("Dense.sigma_w", self.sigma_w, *NONNEG_SQUARABLE))
        object.__setattr__(self, "sigma_b", check("Dense.sigma_b", self.sigma_b, *NONNEG_SQUARABLE))
        object.__setattr__(self, "ratio", check("Dense.ratio", self.ratio, *POSITIVE))
        object.__setattr__(self, "sigma_b_fan_in", check("Dense.sigma_b_fan_in",
                                                         self.sigma_b_fan_in, *NONNEG_SQUARABLE))

    def forward_law(self, s, ctx, record=None):
        ns = ctx.ns
        sw2, shift = self._weight_scale(ctx)
        ls = s.ls if shift is None else s.ls + shift
        refs = tuple(Ref(m=r.m, X=DECOUPLED) for r in s.refs)
        if is_zero(self.sigma_b):  # no bias (static): lift would keep ls (d = 1), add 0
            K = sw2[..., None, None] * s.K
        else:
            sb2 = ns.asarray(ctx.p(self.sigma_b) ** 2)
            ls, d, e = lift_factors(ls, sb2[..., None], 1, ns)  # units where sb e^-ls is finite
            K = sw2[..., None, None] * (s.K * outer(d, d)) + sb2[..., None, None] * outer(e, e)
        return Moments(K=K, m=0 * s.m, ls=ls + 0 * sw2[..., None], law=GAUSSIAN, refs=refs)

    def diag_bound(self, lo, hi, s):
        """q' = sigma_w^2 q + sigma_b^2 grows with q (a bias beyond 1e30 is out of any range
        the engine bounds, so the lift of its units never applies here)."""
        w2, b2 = values_of(self.sigma_w) ** 2, values_of(self.sigma_b) ** 2
        return float(w2.min() * lo + b2.min()), float(w2.max() * hi + b2.max())

    def backward_law(self, s, g, ctx):
        """G_in = sigma_w^2 ratio G; the mean modes decouple (W is fresh). With a ``ctx.sink``
        the weight gradient dl/dW = g x^T is reported to it from the input state ``s`` and the
        output cotangent ``g`` (:class:`sigprop.engines.theory.WeightGrads`).

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        if ctx.sink is not None:
            ctx.sink.dense(s, g, ctx.ns.asarray(ctx.p(self.ratio)))
        sw2, shift = self._weight_scale(ctx)
        gain = ctx.ns.asarray(sw2 * ctx.p(self.ratio))  # 0-d object: an array
        refs = tuple(Ref(m=r.m, X=DECOUPLED) for r in g.refs)
        return g.replace(K=gain[..., None, None] * g.K, refs=refs,
                         ls=g.ls if shift is None else g.ls + shift)

    def _weight_scale(self, ctx):
        """(s^2, log-scale shift per input or None for 0): sigma_w = s e^shift, its factor far
        from 1 in the log scale (:func:`~sigprop.state.moments.far_split`), so that a sigma_w
        whose square is below float64's normal range (|sigma_w| < 1.5e-154) scales the stream
        exactly."""
        sw, shift = far_split(ctx.p(self.sigma_w), ctx.ns)
        sw2 = ctx.ns.asarray(sw * sw)  # (0-d object arrays multiply to a sympy number)
        if isinstance(shift, (int, float)):
            return sw2, (None if shift == 0 else shift)
        return sw2, vec(shift)

    def mc_widths(self, n):
        n_out = mc.dense_width(n, self.ratio)
        return n_out, max(n, n_out), n * n_out

    def width_ratio(self, p=None):
        if p is not None:
            return p(self.ratio)
        return float(self.ratio) if isinstance(self.ratio, (int, float)) else None

    def mc_forward(self, x, env, record=None):
        """A = X W^T by ``env.sampler`` (W acts on the scaled signal: ls unchanged), plus b;
        uniform weights are drawn in full (FORWARD stream, mapped by :func:`uniform_of_normal`)
        and kept for the VJP unless it draws its own (:func:`_fresh_backward`)."""
        n_in = x.x.shape[-1]
        n_out = mc.dense_width(n_in, self.ratio)
        std, shift = far_factor(self.sigma_w / n_in**0.5)  # (std = std' e^shift)
        if self.init == "uniform":
            w = uniform_of_normal(env.normal(FORWARD, (n_out, n_in)), env.xp)
            a, res = (x.x @ w.swapaxes(-1, -2)) * std, None if _fresh_backward(env) else w
        else:
            a, res = env.sampler.forward(x.x, std, n_out, env)
        y = mc.Sig(a, x.ls + shift)
        sigma_b = (self.sigma_b**2 + self.sigma_b_fan_in**2 / n_in) ** 0.5 \
            if self.sigma_b_fan_in else self.sigma_b
        if sigma_b:  # Gaussian whatever the init (class docstring)
            z = env.normal(BIAS, (1, n_out))
            y = mc.weighted_sum(1.0, y, sigma_b, mc.Sig(z, env.xp.zeros_like(x.ls[:, :1])))
        return y, (n_in, res, _log_sq_norm(x))

    def mc_vjp(self, res, g, env):
        """D W by ``env.sampler``; uniform weights: the forward's W, or a fresh uniform W
        (BACKWARD stream) where the sampler pulls back through fresh weights
        (:func:`_fresh_backward`). With an ``env.sink``, adds log ||dl/dW||_F^2 = log ||g||^2 +
        log ||x||^2 per (seed, input) to it (dl/dW = g x^T: the realised g, the kept ||x||^2)."""
        n_in, res, log_x2 = res
        if env.sink is not None:
            env.sink.add(_log_sq_norm(g) + log_x2)
        std, shift = far_factor(self.sigma_w / n_in**0.5)
        if self.init == "uniform":
            if _fresh_backward(env):
                shape = (mc.dense_width(n_in, self.ratio), n_in)
                res = uniform_of_normal(env.normal(BACKWARD, shape), env.xp)
            return mc.Sig((g.x @ res) * std, g.ls + shift)
        return mc.Sig(env.sampler.vjp(res, g.x, std, env), g.ls + shift)


@dataclass(frozen=True)
class Scale(Op):
    """y = c x. K' = c^2 K, m' = c m; G_in = c^2 G."""

    c: Any = 1.0

    def __post_init__(self):
        object.__setattr__(self, "c", check("Scale.c", self.c, *FINITE))

    def forward_law(self, s, ctx, record=None):
        a = vec(ctx.p(self.c)) + 0 * s.m
        return affine(s, a, None, s.ls + 0 * a, ctx.ns)

    def diag_bound(self, lo, hi, s):
        """q' = c^2 q."""
        c2 = values_of(self.c) ** 2
        return float(c2.min() * lo), float(c2.max() * hi)

    def backward_law(self, s, g, ctx):
        """G_in = c^2 G (a fixed scale; no weights, so exact).

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        return cotangent_affine(g, vec(ctx.p(self.c)) + 0 * g.m, 0, ctx.ns)

    def mc_forward(self, x, env, record=None):
        c, shift = far_factor(self.c)
        return mc.Sig(c * x.x, x.ls + shift), None

    def mc_vjp(self, res, g, env):
        c, shift = far_factor(self.c)
        return mc.Sig(c * g.x, g.ls + shift)


@dataclass(frozen=True)
class FeatureAffine(Op):
    """y_i = gamma_i x_i + beta_i with fixed per-feature vectors gamma, beta (a norm layer's
    affine parameters, a per-channel branch scale such as LayerScale, BatchNorm in eval mode),
    given by their empirical moments: ``gain`` = E[gamma], ``gain_sq`` = E[gamma^2], ``shift`` =
    E[beta], ``shift_sq`` = E[beta^2], ``gain_shift`` = E[gamma beta] (E: the mean over the
    features; None: the vector is constant, gain_sq = gain^2, shift_sq = shift^2, gain_shift =
    gain shift).

    At infinite width the features x_i are exchangeable and independent of the fixed vectors,
    so (1/N) sum_i f(gamma_i, beta_i) h(x_i) -> E[f(gamma, beta)] E[h(x)]:
    K'_ab = E[gamma^2] K_ab + E[gamma beta] (m_a + m_b) + E[beta^2], m' = E[gamma] m + E[beta],
    the cross moment with a residual input r X' = E[gamma] X + E[beta] m_r 1^T. Backward (an
    independent cotangent): G_in = E[gamma^2] G, its cross moments times E[gamma]. The output is
    Gaussian (or BatchNorm-normalised, rescaled) only when gamma is constant and beta = 0;
    otherwise each feature has its own law and an activation after it is refused.

    Monte Carlo: gamma = E[gamma] + sd_gamma e, beta = E[beta] + sd_beta (rho e + sqrt(1 -
    rho^2) f), rho the correlation of the vectors, e and f random directions made exactly
    centred, orthogonal and of mean square 1 (so the empirical moments are the declared ones),
    fresh per op and seed: the law assumes the vectors independent of the stream's features,
    which a vector shared by several layers of a residual stream is not. The finite-width
    theory (:mod:`sigprop.engines.finite_width`) takes the vectors' higher moments from the
    same Gaussian law.
    """

    gain: Any = 1.0
    shift: Any = 0.0
    gain_sq: Any = None
    shift_sq: Any = None
    gain_shift: Any = None

    def __post_init__(self):
        for name in ("gain", "shift", "gain_sq", "shift_sq", "gain_shift"):
            value = getattr(self, name)
            if value is not None:
                rule = SQUARABLE if name in ("gain", "shift") else FINITE  # (the rest: squares)
                object.__setattr__(self, name, check(f"FeatureAffine.{name}", value, *rule))
        plain = all(isinstance(v, float) for v in self._moments())
        if plain:
            g, b, g2, b2, gb = self._moments()
            if g2 < g * g * (1 - 1e-12) or b2 < b * b * (1 - 1e-12):
                raise ConfigError("FeatureAffine (gain_sq, shift_sq)", (g2, b2),
                                  "E[gamma^2] >= E[gamma]^2 and E[beta^2] >= E[beta]^2")
            if (gb - g * b) ** 2 > max(g2 - g * g, 0) * max(b2 - b * b, 0) * (1 + 1e-9) + 1e-300:
                raise ConfigError("FeatureAffine.gain_shift", gb, "|E[gamma beta] - E[gamma] E[beta]| "
                                  "<= sd(gamma) sd(beta) (Cauchy-Schwarz)")

    def _moments(self):
        """(E[gamma], E[beta], E[gamma^2], E[beta^2], E[gamma beta]), the Nones filled in."""
        g, b = self.gain, self.shift
        pick = (lambda v, default: default if v is None else v)
        if isinstance(g, (Sweep, sympy.Basic)) or isinstance(b, (Sweep, sympy.Basic)):
            if (self.gain_sq, self.shift_sq, self.gain_shift) != (None, None, None):
                raise ConfigError("FeatureAffine", "a sweep or symbol with explicit moments",
                                  "constant vectors only when gain or shift is swept")
            return g, b, None, None, None  # constant vectors: resolved per point by _point
        return (g, b, pick(self.gain_sq, g * g), pick(self.shift_sq, b * b),
                pick(self.gain_shift, g * b))

    def _point(self, ctx):
        """The moments as grid arrays (..., 1)."""
        g, b, g2, b2, gb = self._moments()
        if g2 is None:  # constant vectors, swept
            g, b = vec(ctx.p(g)), vec(ctx.p(b))
            return g, b, g * g, b * b, g * b
        return tuple(vec(ctx.p(v)) for v in (g, b, g2, b2, gb))

    def _constant_gain_no_shift(self) -> bool:
        g, b, g2, b2, _ = self._moments()
        return is_zero(b) and (b2 is None or is_zero(b2)) and (g2 is None or g2 == g * g)

    def forward_law(self, s, ctx, record=None):
        ns = ctx.ns
        g, b, g2, b2, gb = self._point(ctx)
        e = ns.exp(-s.ls)  # beta in the stream's scaled units
        K = (g2[..., None] * s.K + gb[..., None] * (outer(s.m, e) + outer(e, s.m))
             + b2[..., None] * outer(e, e))
        refs = tuple(r if r.X is DECOUPLED or r.X is None
                     else Ref(m=r.m, X=g[..., None] * r.X + b[..., None] * outer(r.m, e))
                     for r in s.refs)
        law = (s.law.after_affine(g + 0 * s.m, 0 * s.ls, False, ns)
               if self._constant_gain_no_shift() else GENERAL)
        return s.replace(K=K + 0 * s.K, m=g * s.m + b * e, ls=s.ls + 0 * g, refs=refs, law=law)

    def backward_law(self, s, g, ctx):
        """G_in = E[gamma^2] G; cross moments times E[gamma]; a relu gate (constant gamma only)
        rescaled like the cotangent.

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        gm, _, g2, _, _ = self._point(ctx)
        refs = tuple(r if r.X is DECOUPLED or r.X is None
                     else Ref(m=r.m, X=r.X * gm[..., None]) for r in g.refs)
        gate = g.gate and g.gate.scaled(gm + 0 * g.m)
        return g.replace(K=g2[..., None] * g.K, ls=g.ls + 0 * gm, refs=refs, gate=gate)

    def vectors(self, z):
        """(gamma, beta) (..., n) with exactly the declared moments (class docstring), from
        standard normals z (..., 2, n), float64."""
        g, b, g2, b2, gb = (float(v) for v in self._moments())
        xp = mc.array_module(z)
        z = z.astype(mc.F64) - z.mean(axis=-1, keepdims=True, dtype=mc.F64)
        e = z[..., 0, :]
        f = z[..., 1, :] - e * ((e * z[..., 1, :]).sum(-1, keepdims=True) / (e * e).sum(-1, keepdims=True))
        e, f = (v / xp.sqrt((v * v).mean(-1, keepdims=True)) for v in (e, f))
        sg, sb = np.sqrt(max(g2 - g * g, 0.0)), np.sqrt(max(b2 - b * b, 0.0))
        rho = (gb - g * b) / (sg * sb) if sg * sb > 0 else 0.0
        rho = min(max(rho, -1.0), 1.0)
        return g + sg * e, b + sb * (rho * e + np.sqrt(1 - rho * rho) * f)

    def mc_forward(self, x, env, record=None):
        """gamma * x in scaled units, plus beta (a true-scale term, as a Dense bias); the
        vectors are drawn per seed from the op's FORWARD stream, so each FeatureAffine of a
        net (each copy in a Repeat) has its own, as each layer of a model has."""
        gamma, beta = self.vectors(env.normal(FORWARD, (2, x.x.shape[-1]), mc.F64))
        gamma, beta = gamma[:, None, :], beta[:, None, :]
        y = mc.Sig(x.x * gamma.astype(x.x.dtype), x.ls)
        if bool((beta != 0).any()):
            y = mc.weighted_sum(1.0, y, 1.0, mc.Sig(beta.astype(x.x.dtype), 0 * x.ls[:, :1]))
        return y, gamma

    def mc_vjp(self, res, g, env):
        return mc.Sig(g.x * res.astype(g.x.dtype), g.ls)


def _fresh_backward(env) -> bool:
    """Whether ``env.sampler`` pulls back through fresh weights, independent of the forward's
    (the independent sampler, :mod:`sigprop.engines.samplers`: gradient independence)."""
    return getattr(env.sampler, "name", None) == "independent"


def _log_sq_norm(s: mc.Sig):
    """log ||e^ls x||^2 = 2 ls + log(n mean(x^2)) per (seed, input), float64."""
    return 2 * s.ls + mc.array_module(s.x).log(mc.mean_sq(s.x) * s.x.shape[-1])
