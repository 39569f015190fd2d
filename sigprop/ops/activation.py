"""``Act``: an elementwise activation, on Gaussian pre-activations or after BatchNorm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sigprop.errors import OverflowInTheory
from sigprop.kernels.batchnorm import bn_activation, centred_cov
from sigprop.kernels.gaussian import get_activation
from sigprop.ops.base import Op
from sigprop.state import arrays as mc
from sigprop.state.moments import (
    DECOUPLED,
    FAR,
    TRACED_LS_MIN,
    BatchNormed,
    Gate,
    Moments,
    Ref,
    outer,
    true_moments,
)

AFTER_BATCHNORM = ("relu", "linear")  # activations whose law after BatchNorm is implemented


@dataclass(frozen=True)
class Act(Op):
    """Elementwise activation phi. Needs jointly Gaussian pre-activations (a Dense before it), or
    for relu and linear a (rescaled) BatchNorm output.

    Forward: K'_ab = E[phi(u_a) phi(u_b)], m'_a = E[phi(u_a)], u ~ N(0, K); a cross moment still
    coupled to the residual input follows Stein's lemma, X' = m_r E[phi]^T + X diag E[phi'].
    Backward: G_in = E[phi'(u_a) phi'(u_b)] * G_out.
    After BatchNorm (z = D P u / s): phi(z) = phi(D P u) / s for phi of degree 1, so K' and m'
    are 1-D t-integrals of the Gaussian faces (:func:`~sigprop.kernels.batchnorm.bn_activation`);
    Stein's lemma holds under every tilt of the t-integral, so X' is as above; and phi'(z) =
    phi'(D P u), so the backward is the Gaussian grad kernel at D P S P D.
    """

    name: str = "relu"

    def __post_init__(self):
        # one name per activation ("leaky_relu(0.01)" is "leaky_relu", "elu(1)" is "elu"), so
        # equal nets are equal ops and share cache keys; a ConfigError names the allowed ones
        object.__setattr__(self, "name", get_activation(self.name).name)

    def requires(self, s):
        if isinstance(s.law, BatchNormed):
            return None if self.name in AFTER_BATCHNORM else (
                f"Act({self.name!r}) directly after BatchNorm: the BatchNorm "
                "output is not Gaussian, and sigprop integrates it exactly only through "
                "relu and linear, where phi(Pu/s) = phi(Pu)/s turns it into a 1-D integral "
                "and phi' is a relu gate BatchNorm's backward knows. For this activation the "
                "law is a (B-1)-dimensional integral (leaky_relu: a forward 1-D integral, but a "
                "two-sided gate backward, not implemented); put a Dense between BatchNorm and "
                f"Act({self.name!r}), or use sp.simulate.")
        return None if s.law.gaussian else (
            f"Act({self.name!r}) meets a stream whose features are not jointly "
            "Gaussian (e.g. the input, a residual sum with a non-Gaussian part, a "
            "BatchNorm output, or a FeatureAffine's with a shift or varying gains), "
            "so its infinite-width law is not a Gaussian integral. Put a "
            "Dense before the activation, or use Inputs(law='gaussian') when the stream is "
            "a sum of Gaussian parts.")

    def _pre(self, s, ctx):
        """(act, K, ls, small): the Gram of the Gaussian pre-activation in the units the kernel is
        evaluated in; after BatchNorm, that of D P u (true units), which has phi's sign pattern.
        ``small`` (:meth:`_small`): where the true scale is below float64's, K is 0 there."""
        act = get_activation(self.name)
        if isinstance(s.law, BatchNormed):
            return act, centred_cov(s.law.S, s.law.scale), 0 * s.ls, None
        if act.degree == 1:  # phi(lambda u) = lambda phi(u): evaluate at the scaled Gram
            return act, s.K, s.ls, None
        small = self._small(act, s, ctx)
        K, _ = true_moments(s, ctx.path, ctx.ns)
        if small is not None:  # (a traced law's true moments are NaN there)
            K = ctx.ns.xp.where(small[2][..., None, None], 0.0, K)
        return act, K, 0 * s.ls, small

    def _small(self, act, s, ctx):
        """(r, phi0, at): the grid points ``at`` whose every input has a true scale below
        e^TRACED_LS_MIN (q < ~1e-292), where phi's law on true moments underflows (log q = -inf
        for a signal that is not 0) and phi's is r^2 times phi0's (:attr:`Activation.small_scale
        <sigprop.kernels.gaussian.Activation.small_scale>`), exact to float64 and scale free; None
        where there is no such point (numpy) or phi(0) != 0 (its law then stays in range)."""
        ns = ctx.ns
        if ns.symbolic or ns.unscaled or act.small_scale is None:  # (true units: the compiled
            return None  # engine keeps every state within TRUE_RANGE, else runs log-scaled)
        below = s.ls < TRACED_LS_MIN
        if not ns.traced and not np.any(below):
            return None
        mixed = below.any(-1) & ~below.all(-1)
        if not ns.traced and np.any(mixed):
            raise OverflowInTheory(
                f"{ctx.path}: some inputs reach a true scale below float64's (log q < "
                f"{2 * TRACED_LS_MIN:.4g}) and others do not, at one grid point; {self.name}'s "
                "law is exact at either scale, not across them. Normalise the stream "
                "(LayerNorm/RMSNorm) or give the inputs comparable scales.")
        return (*act.small_scale, below.all(-1) | mixed)  # mixed, traced: NaN below

    def forward_law(self, s, ctx, record=None):
        ns = ctx.ns
        act, K, ls, small = self._pre(s, ctx)
        d = ns.xp.diagonal(K, axis1=-2, axis2=-1)
        if isinstance(s.law, BatchNormed):
            S, eps, scale = s.law.S, s.law.eps, s.law.scale
            lead = np.broadcast_shapes(S.shape[:-2], np.shape(eps), np.shape(scale)[:-1])
            K_out, m = ns.host(lambda *a: bn_activation(*a, act), (lead + S.shape[-2:],
                               lead + S.shape[-1:]), S, eps, scale)
        else:
            K_out, m = act.gram_kernel(K, ns), act.mean(d, ns)
        coupled = [ref.X is not DECOUPLED and ref.X is not None for ref in s.refs]
        slope = act.grad_mean(d, ns) * ns.exp(s.ls - ls) if any(coupled) else None
        if small is not None:  # phi0 on the scaled Gram, its scale kept
            r, phi0, at = small
            where, at = ns.xp.where, at[..., None]
            d0 = ns.xp.diagonal(s.K, axis1=-2, axis2=-1)
            K_out = where(at[..., None], r * r * phi0.gram_kernel(s.K, ns), K_out)
            if ns.traced:  # an input below and one above at a point: no law (reported)
                K_out = where(at[..., None] & (s.ls[..., None] >= TRACED_LS_MIN), np.nan, K_out)
            m, ls = where(at, r * phi0.mean(d0, ns), m), where(at, s.ls, ls)
            if slope is not None:
                slope = where(at, r * phi0.grad_mean(d0, ns), slope)
        refs = tuple(Ref(m=ref.m, X=outer(ref.m, m) + s.cross(ref) * slope[..., None, :])
                     if c else ref for ref, c in zip(s.refs, coupled, strict=True))
        return Moments(K=K_out, m=m, ls=ls, refs=refs)

    def diag_bound(self, lo, hi, s):
        """E phi(u)^2 at q = lo and hi, where it grows with q (a closed form; not after
        BatchNorm, whose output is not Gaussian)."""
        if isinstance(s.law, BatchNormed):
            return None
        return get_activation(self.name).second_moment_bounds(lo, hi)

    def backward_law(self, s, g, ctx):
        """G_in = E[phi'(u) phi'(v)] G (and the mean modes through E[phi'(u)]).

        Gradient independence assumed: see the paragraph in :mod:`sigprop.ops.base` (reference, regime)."""
        ns = ctx.ns
        act, K, _, small = self._pre(s, ctx)
        d = ns.xp.diagonal(K, axis1=-2, axis2=-1)
        coupled = [ref.X is not DECOUPLED and ref.X is not None for ref in g.refs]
        grad_mean = act.grad_mean(d, ns) if any(coupled) else None
        grad_kernel = act.gram_grad_kernel(K, ns)
        if small is not None:  # phi0' is scale free
            r, phi0, at = small
            d0 = ns.xp.diagonal(s.K, axis1=-2, axis2=-1)
            grad_kernel = ns.xp.where(at[..., None, None], r * r * phi0.gram_grad_kernel(s.K, ns),
                                      grad_kernel)
            if grad_mean is not None:
                grad_mean = ns.xp.where(at[..., None], r * phi0.grad_mean(d0, ns), grad_mean)
        refs = tuple(Ref(m=ref.m, X=ref.X * grad_mean[..., None, :]) if c else ref
                     for ref, c in zip(g.refs, coupled, strict=True))
        gate = None
        if isinstance(s.law, BatchNormed) and act.name != "linear":  # relu' and BN share u
            gate = Gate(H=g.K, signs=ns.xp.sign(s.law.scale))
        return g.replace(K=grad_kernel * g.K, refs=refs, gate=gate)

    def mc_forward(self, x, env, record=None):
        """phi on the scaled signal when phi(c u) = c phi(u) (c > 0), else on the true one, its
        output in the input's units where they are below the true ones (log scale min(ls, 0):
        phi(u) ~ phi'(0) u for a small u, whose square would underflow in true units: a
        sigma_w of 1e-155 gave log q = -inf from the second layer on); where the true scale is
        below the dtype's normal range, phi's small-scale limit on the scaled signal
        (:attr:`~sigprop.kernels.gaussian.Activation.small_scale`, as the theory takes it)."""
        act = get_activation(self.name)
        if act.degree == 1:
            return mc.Sig(act.fn(x.x, env.xp), x.ls), x.x
        xp = env.xp
        u = mc.times(x.x, mc.true_scale(x.ls, x.x.dtype))
        ls = xp.minimum(x.ls, 0)
        y = mc.times(act.fn(u, xp).astype(u.dtype), mc.true_scale(-ls, u.dtype))
        info = np.finfo(x.x.dtype)  # (below tiny the true scale is NaN; below tiny / eps a
        below = x.ls < np.log(info.tiny / info.eps)  # feature of size eps would be subnormal)
        if act.small_scale is None or (xp is np and not below.any()):
            return mc.Sig(y, ls), u
        r, phi0 = act.small_scale  # phi(u) = r phi0(u) to the dtype's precision, scale free
        below = below[..., None]
        return (mc.Sig(xp.where(below, r * phi0.fn(x.x, xp), y), ls),
                xp.where(below, x.x * FAR, u))  # (phi' there: phi'(0+-), from a tiny u)

    def mc_vjp(self, res, g, env):
        """g phi'(u); phi' is scale free when phi is positively homogeneous."""
        grad = get_activation(self.name).grad(res, env.xp)
        return mc.Sig(g.x * grad.astype(g.x.dtype, copy=False), g.ls)
