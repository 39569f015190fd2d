"""How a Dense layer's Gaussian weights are realised: explicitly, or by exact conditioning.

Rows are inputs: X (S, B, n_in) holds the B inputs of each seed, A = X W^T (S, B, n_out) their
images, D (S, B, n_out) the cotangents, W_ij ~ N(0, s / n_in) with s = sigma_w^2 and
``std = sqrt(s / n_in)``. A sampler realises A from X (``forward``) and W^T-applied cotangents
D W (``vjp``); the bias is added by the op.

* :class:`Explicit` draws W (n_out n_in normals) and keeps it for the VJP.
* :class:`Independent` is :class:`Conditional` forward with a fresh W backward (GIA; a
  diagnostic, not a network's law).
* :class:`Conditional` draws only what the net can see. Given X, the columns of A are i.i.d.
  N(0, (s/n_in) G) across the n_out features, G = X X^T: A = C Z with the root
  C = sqrt(s/n_in) R, R = D Q^(1/2) (Q = D^-1 G D^-1 of unit diagonal, D = diag(sqrt G_aa): scale
  free, :func:`~sigprop.state.arrays.gram_root`) and Z (B x n_out) standard normal. Given X and
  A, W = A^T G^+ X + W~ (I - P_X) with W~ a fresh draw of W's law and P_X = U^T U the projection
  on the row space of X, U = Q^(+1/2) D^-1 X (orthonormal rows). Since A^T G^+ X = sqrt(s/n_in)
  Z^T R^T G^+ X = sqrt(s/n_in) Z^T U,

      D W = M + (sqrt(s/n_in) D Z^T - M U^T) U,   M = C' Z',  C' C'^T = (s/n_in) D D^T,

  Z' (B x n_in) standard normal (M is D W~). Exact in distribution jointly over all layers,
  forward and backward: given the forward pass, each layer's W depends only on its own (X, A),
  and the cotangent reaching it only on later layers and the independent top cotangent. Z and
  Z' come from the op's FORWARD and BACKWARD streams, so checkpointed recomputation replays the
  same A. The backward uses the exact draws Z, never the rounded A, and U is formed in float64
  from the exact X, so nearly collinear inputs (corr -> 1) lose only what the conditioning
  costs (U U^T is I to ~eps / (1 - corr)); eigenvalues of G
  at rounding level (``EIGH_RTOL``) are 0: rank deficiency (B > n_in, repeated inputs, zero
  cotangents) is exact. Cost O(B^2 (n_in + n_out)) per seed instead of O(n_in n_out).
"""

from __future__ import annotations

from sigprop.state.arrays import F64, gram, gram_root
from sigprop.state.rng import BACKWARD, FORWARD


class Explicit:
    """Reference sampler: W drawn in full (FORWARD stream) and kept in the residual for the VJP,
    which uses the very numbers of the forward. Each W is drawn once when every block's residuals
    fit in memory, else once per pass (the forward, and the backward's recomputation of its
    segment): :func:`sigprop.engines.montecarlo.plan_segments`. At float32 and n_in n_out >=
    ``BOX_MULLER_MIN`` the draw is :func:`sigprop.state.rng.box_muller32`."""

    name = "explicit"

    def forward(self, x, std: float, n_out: int, env):
        z = env.normal(FORWARD, (n_out, x.shape[-1]))
        return (x @ z.swapaxes(-1, -2)) * std, z

    def vjp(self, z, d, std: float, env):
        return (d @ z) * std


class Conditional:
    """Exact Gaussian-conditioning sampler (module docstring): no n_in x n_out draw."""

    name = "conditional"

    def forward(self, x, std: float, n_out: int, env):
        z = env.normal(FORWARD, (x.shape[-2], n_out))
        return (std * gram_root(gram(x, x), 0.5)).astype(x.dtype) @ z, (x, z)

    def vjp(self, res, d, std: float, env):
        x, z = res
        u = self.basis(x)
        m = self.fresh(d, x.shape[-1], std, env)
        return m + ((std * gram(d, z) - gram(m, u)) @ u).astype(d.dtype)

    @staticmethod
    def basis(x):
        """U = R X in float64, R the forward's matched root (:func:`gram_root`): orthonormal rows
        spanning the row space of X."""
        return gram_root(gram(x, x), -0.5) @ x.astype(F64)

    @staticmethod
    def fresh(d, n_in: int, std: float, env):
        """M = D W~ for a fresh W~ (BACKWARD stream): rows N(0, (s/n_in) D D^T) per feature."""
        c = (std * gram_root(gram(d, d), 0.5)).astype(d.dtype)
        return c @ env.normal(BACKWARD, (d.shape[-2], n_in))


class Independent(Conditional):
    """Gradient independence (GIA): the VJP pulls back through a fresh W, independent of the
    forward's. Not the law of a real network: it is the infinite-width theory's assumption at
    finite width, for telling the part of a theory-vs-Monte Carlo gap that comes from the
    forward-backward weight correlation from the rest."""

    name = "independent"

    def vjp(self, res, d, std: float, env):
        return self.fresh(d, res[0].shape[-1], std, env)


SAMPLERS = {s.name: s for s in (Explicit(), Conditional(), Independent())}
