"""``Act``: an elementwise activation, on Gaussian pre-activations or after BatchNorm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sigprop.kernels.batchnorm import bn_activation, centred_cov
from sigprop.kernels.gaussian import get_activation
from sigprop.ops.base import Op
from sigprop.state import arrays as mc
from sigprop.state.moments import DECOUPLED, BatchNormed, Gate, Moments, Ref, outer, true_moments

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
        """(act, K, ls): the Gram of the Gaussian pre-activation in the units the kernel is
        evaluated in; after BatchNorm, that of D P u (true units), which has phi's sign pattern."""
        act = get_activation(self.name)
        if isinstance(s.law, BatchNormed):
            return act, centred_cov(s.law.S, s.law.scale), 0 * s.ls
        if act.degree == 1:  # phi(lambda u) = lambda phi(u): evaluate at the scaled Gram
            return act, s.K, s.ls
        K, _ = true_moments(s, ctx.path, ctx.ns)
        return act, K, 0 * s.ls

    def forward_law(self, s, ctx, record=None):
        ns = ctx.ns
        act, K, ls = self._pre(s, ctx)
        d = ns.xp.diagonal(K, axis1=-2, axis2=-1)
        if isinstance(s.law, BatchNormed):
            S, eps, scale = s.law.S, s.law.eps, s.law.scale
            lead = np.broadcast_shapes(S.shape[:-2], np.shape(eps), np.shape(scale)[:-1])
            K_out, m = ns.host(lambda *a: bn_activation(*a, act), (lead + S.shape[-2:],
                               lead + S.shape[-1:]), S, eps, scale)
        else:
            K_out, m = act.gram_kernel(K, ns), act.mean(d, ns)
        refs = []
        for r in s.refs:
            if r.X is DECOUPLED or r.X is None:
                refs.append(r)
            else:
                slope = act.grad_mean(d, ns) * ns.exp(s.ls - ls)
                refs.append(Ref(m=r.m, X=outer(r.m, m) + s.cross(r) * slope[..., None, :]))
        return Moments(K=K_out, m=m, ls=ls, refs=tuple(refs))

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
        act, K, _ = self._pre(s, ctx)
        d = ns.xp.diagonal(K, axis1=-2, axis2=-1)
        refs = tuple(r if r.X is DECOUPLED or r.X is None
                     else Ref(m=r.m, X=r.X * act.grad_mean(d, ns)[..., None, :]) for r in g.refs)
        gate = None
        if isinstance(s.law, BatchNormed) and act.name != "linear":  # relu' and BN share u
            gate = Gate(H=g.K, signs=ns.xp.sign(s.law.scale))
        return g.replace(K=act.gram_grad_kernel(K, ns) * g.K, refs=refs, gate=gate)

    def mc_forward(self, x, env, record=None):
        """phi on the scaled signal when phi(c u) = c phi(u) (c > 0), else on the true one."""
        act = get_activation(self.name)
        if act.degree == 1:
            return mc.Sig(act.fn(x.x, env.xp), x.ls), x.x
        u = mc.times(x.x, mc.true_scale(x.ls, x.x.dtype))
        return mc.Sig(act.fn(u, env.xp).astype(u.dtype), env.xp.zeros_like(x.ls)), u

    def mc_vjp(self, res, g, env):
        """g phi'(u); phi' is scale free when phi is positively homogeneous."""
        grad = get_activation(self.name).grad(res, env.xp)
        return mc.Sig(g.x * grad.astype(g.x.dtype, copy=False), g.ls)
