"""Exact infinite-width kernels of BatchNorm over a batch of B inputs.

At infinite width each feature is a vector u in R^B (one entry per input), u ~ N(0, S) with S
(B x B) symmetric positive semi-definite, possibly singular. BatchNorm per feature, with
P = I - 11^T/B:

    w = P u,   s^2 = |w|^2 / B + eps,   y = w / s,
    J = dy/du = (1/s) (I - w w^T / (B s^2)) P.

The cotangent g ~ N(0, G) at the output is independent of u (exact at infinite width), so the
backward kernel is E[J^T G J].

Method. 1/s^(2k) = (1/Gamma(k)) int_0^inf t^(k-1) exp(-t s^2) dt, and the Gaussian tilt

    E[f(w) exp(-t |w|^2 / B)] = det(I + 2t Sw/B)^(-1/2) E_{w ~ N(0, Sw_t)}[f(w)],

with Sw = P S P and Sw_t = Sw (I + 2t Sw/B)^(-1). In the eigenbasis V of Sw on 1^perp
(eigenvalues lam_k, a_k = 2 lam_k / B, q_k = 1 + a_k t) Sw_t = V diag(lam_k / q_k) V^T and
det = prod_k q_k, so one batched ``eigh`` leaves only elementwise work per t. Fourth moments
follow from Isserlis: E[w w^T A w w^T] = tr(A C) C + 2 C A C for w ~ N(0, C), A symmetric.
The t-integrals are done by the trapezoid rule in tau = log t, after scaling S and eps by
c = max_k a_k + eps (BatchNorm is scale invariant: y(S, eps) = y(S/c, eps/c) and
J^T G J (S, eps) = J^T G J (S/c, eps/c) / c).

eps = 0 is allowed where the result is finite: in the forward kernel unless P S P = 0 (all
inputs equal, y = 0/0); in the backward kernel only when rank(P S P) >= 3 (so B >= 4), since
E[1/s^2] = B E[1/|w|^2] diverges for a Gaussian w of rank r <= 2.

Conditioning. Rounding S to float64 moves the eigenvalues of P S P by ~1e-16 ||S||, so an
eigenvalue lam_min << ||S|| is known only to ~1e-16 ||S|| / lam_min, and the kernels (through
terms like log(lam_max / lam_min) in E[1/s^2]) inherit about that relative error, whatever the
quadrature; the quadrature itself adds < 1e-13 (see the constants below).
"""

from __future__ import annotations

import numpy as np

from sigprop.errors import ConfigError

# Quadrature in tau = log t, in the scaled units where max_k a_k + eps = 1. Measured against
# scipy.integrate.quad_vec (epsrel 1e-13) of the same integrals, on the same spectrum, on 110
# cases (B = 2, 3, 4, 8; eigenvalues of S spanning 1e-6 .. 1e6; eps in 1e-8 .. 1 and 0):
# max |error| / max |entry| is 2e-15 (forward) and 2e-14 (backward). Beside each constant,
# the error it alone leaves (the others set generously), and that of a coarser setting.
TAU_STEP = 0.3  # trapezoid step: 2e-14 (0.35: 2e-12, 0.5: 9e-9). The integrand is analytic
#                 in |Im tau| < pi/2 (singularities at Im tau = +-pi; exp(-t eps) grows past
#                 pi/2), so the error falls like exp(-2 pi d / TAU_STEP), d ~ 1.4.
TAU_LEFT = 10.0  # first node at t = exp(-10). The integrand is a power series c1 t + c2 t^2 + ...
#                  there; the nodes left of the first are summed exactly for its first
#                  LEFT_TERMS terms by corrections to the first LEFT_TERMS weights
#                  (:func:`_left_end_weights`), leaving O(exp(-10 (LEFT_TERMS + 1))):
#                  1e-15 (8: 9e-13; 10 with 2 terms: 2e-12).
LEFT_TERMS = 3
EPS_CUTOFF = 36.0  # last node at t = 36 / eps, where exp(-t eps) ends it: < 1e-15 (25: 8e-12).
TAIL_SPAN = 64.0  # without that cutoff (eps = 0 or tiny) the integrand decays like t^(-1/2) or
#                   faster past t = 1/a_min (a_min: smallest non-zero a_k); last node at
#                   t = exp(64) / a_min: 7e-15 (56: 4e-13, 40: 1e-9).
TAU_MAX = 700.0  # exp(700) is finite in float64; reached only for eps / c < 1e-290.
EXP_ARG_MAX = 700.0  # exp(-t eps) is clipped at exp(-700) (past the last node: avoids the slow
#                      underflow path of exp).
RANK_RTOL = 1e-13  # eigenvalues of P S P below RANK_RTOL * B * max|S_ij| (>= ||S||) are the
#                    rounding noise of eigh and are set to 0.
PSD_RTOL = 1e-8  # an eigenvalue of P S P below -PSD_RTOL * B * max|S_ij|: S is not PSD.
SYMMETRY_RTOL = 1e-10  # |X - X^T| allowed for S and G, relative to B * max|X_ij|.
CHUNK = 256  # matrices per quadrature pass (arrays of CHUNK * (B-1) * ~120 nodes stay in cache)


def bn_forward(S, eps):
    """E[y y^T] for u ~ N(0, S): shape (..., B, B) over the broadcast leading dims of S, eps.

    E[y y^T] = int_0^inf exp(-t eps) det(I + 2t Sw/B)^(-1/2) Sw_t dt = V diag(F) V^T with
    F_k = lam_k int exp(-t eps) D / q_k dt, D = prod_k q_k^(-1/2).
    """
    lam, V, eps, c = _prepare(S, eps, min_rank_at_eps0=1)
    F = _t_integrals(lam / c[..., None], eps / c, V.shape[-2], backward=False)
    return (V * F[..., None, :]) @ np.swapaxes(V, -1, -2)


def bn_backward(S, G, eps):
    """E[J^T G J] for u ~ N(0, S), J = dy/du, G symmetric: shape (..., B, B), broadcast.

    J^T G J = P [G/s^2 - (w w^T G + G w w^T)/(B s^4) + w w^T G w w^T/(B^2 s^6)] P. With
    Gv = V^T G V and rho_k = t lam_k / (B q_k) in (0, 1/2), the t-integrals combine without
    cancellation into E[J^T G J] = V R V^T, R = K o Gv + diag(C @ diag(Gv)) / 2 (o: entrywise),
    K_kl = int exp(-t eps) D (1 - rho_k)(1 - rho_l) dt, C_kl = int exp(-t eps) D rho_k rho_l dt.
    """
    G = _as_square_batch("G", G)
    lam, V, eps, c = _prepare(S, eps, min_rank_at_eps0=3)
    B = V.shape[-2]
    if G.shape[-1] != B:
        raise ConfigError("G shape", G.shape, f"(..., {B}, {B}), the shape of S")
    try:
        np.broadcast_shapes(G.shape[:-2], lam.shape[:-1])
    except ValueError:
        raise ConfigError("G leading dims", G.shape[:-2], f"broadcastable to {lam.shape[:-1]}")
    _check_symmetric("G", G)
    K, C = _t_integrals(lam / c[..., None], eps / c, B, backward=True)
    Vt = np.swapaxes(V, -1, -2)
    Gv = Vt @ (G + np.swapaxes(G, -1, -2)) @ V / 2
    R = K * Gv + np.einsum("...kl,...ll->...k", C, Gv)[..., None] * np.eye(B - 1) / 2
    return V @ R @ Vt / c[..., None, None]


def _as_square_batch(name, X):
    """X as a float64 array of shape (..., B, B), B >= 2, finite; ConfigError otherwise."""
    X = np.asarray(X, dtype=float)
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ConfigError(f"{name} shape", X.shape, "(..., B, B)")
    if X.shape[-1] < 2:
        raise ConfigError("batch size B", X.shape[-1], ">= 2 (BatchNorm over one input is undefined)")
    if not np.all(np.isfinite(X)):
        raise ConfigError(name, "non-finite entries", "finite entries")
    return X


def _check_symmetric(name, X):
    """ConfigError unless |X - X^T| <= SYMMETRY_RTOL * B * max|X_ij| entrywise."""
    scale = X.shape[-1] * np.abs(X).max(axis=(-2, -1), keepdims=True)
    if np.any(np.abs(X - np.swapaxes(X, -1, -2)) > SYMMETRY_RTOL * scale):
        raise ConfigError(name, "not symmetric", "a symmetric matrix (a covariance)")


def _centred_basis(B):
    """B x (B-1) orthonormal basis Q of 1^perp: the Householder reflection taking e_0 to
    1/sqrt(B), first column dropped. P = Q Q^T, and Q^T 1 = 0 to rounding."""
    v = np.full(B, -1.0 / np.sqrt(B))
    v[0] += 1.0
    return (np.eye(B) - np.outer(v, v) / (1.0 - 1.0 / np.sqrt(B)))[:, 1:]


def _prepare(S, eps, min_rank_at_eps0):
    """Spectrum of Sw = P S P on 1^perp and the scale c, broadcast over leading dims of S, eps.

    Returns (lam, V, eps, c): the B-1 eigenvalues of Q^T S Q (rounding noise set to 0), the
    eigenvectors V = Q U (B x (B-1), orthogonal to 1), eps, and c = 2 max(lam) / B + eps > 0.
    Working on 1^perp keeps the null vector 1 of Sw exact (an eigh of P S P itself mixes it
    with small eigenvalues). eps = 0 needs rank(Sw) >= min_rank_at_eps0.
    """
    S = _as_square_batch("S", S)
    B = S.shape[-1]
    eps = np.asarray(eps, dtype=float)
    if not np.all(np.isfinite(eps) & (eps >= 0)):
        raise ConfigError("eps", float(eps[~(np.isfinite(eps) & (eps >= 0))].flat[0]),
                          "finite and >= 0")
    try:
        lead = np.broadcast_shapes(S.shape[:-2], eps.shape)
    except ValueError:
        raise ConfigError("eps shape", eps.shape, f"broadcastable to {S.shape[:-2]}")
    _check_symmetric("S", S)
    Q = _centred_basis(B)
    lam, U = np.linalg.eigh(Q.T @ S @ Q)
    scale = B * np.abs(S).max(axis=(-2, -1))[..., None]
    if np.any(lam < -PSD_RTOL * scale):
        raise ConfigError("S", f"eigenvalue {lam.min():.3g} of P S P", "positive semi-definite")
    lam = np.broadcast_to(np.where(lam > RANK_RTOL * scale, lam, 0.0), lead + (B - 1,))
    V = np.broadcast_to(Q @ U, lead + (B, B - 1))
    eps = np.broadcast_to(eps, lead)
    if np.any((eps == 0) & (np.count_nonzero(lam, axis=-1) < min_rank_at_eps0)):
        why = ("P S P != 0 (y = 0/0 when all inputs are equal)" if min_rank_at_eps0 == 1 else
               "rank(P S P) >= 3 (E[1/s^2] diverges otherwise, e.g. always for B <= 3)")
        raise ConfigError("eps", 0.0, f"> 0; eps = 0 only where {why}")
    return lam, V, eps, 2 * lam.max(axis=-1) / B + eps


def _t_integrals(lam, eps, B, backward):
    """The t-integrals in scaled units (2 max(lam)/B + eps = 1), in chunks of leading dims.

    Forward: F of :func:`bn_forward`, shape (..., B-1). Backward: K and C of
    :func:`bn_backward`, each (..., B-1, B-1).
    """
    lead, k = lam.shape[:-1], lam.shape[-1]
    lam, eps = lam.reshape(-1, k), eps.reshape(-1)
    left = _left_end_weights()
    parts = [_t_integrals_flat(lam[i:i + CHUNK], eps[i:i + CHUNK], B, left, backward)
             for i in range(0, len(eps), CHUNK)]
    if not backward:
        return np.concatenate(parts).reshape(lead + (k,))
    return tuple(np.concatenate(p).reshape(lead + (k, k)) for p in zip(*parts))


def _left_end_weights():
    """Weights on the first LEFT_TERMS nodes that give the trapezoid nodes left of the first,
    TAU_STEP * sum_{j >= 1} f(-TAU_LEFT - j TAU_STEP), exactly for f = t^p, p = 1..LEFT_TERMS."""
    p = np.arange(1, LEFT_TERMS + 1)[:, None]
    r = np.exp(-p * TAU_STEP)
    growth = np.exp(p * TAU_STEP * np.arange(LEFT_TERMS))  # t^p at node j, over t^p at node 0
    return TAU_STEP * np.linalg.solve(growth, (r / (1 - r))[:, 0])


def _t_integrals_flat(lam, eps, B, left, backward):
    """:func:`_t_integrals` on lam (m, B-1), eps (m,): trapezoid rule in tau = log t, with
    ``left`` (:func:`_left_end_weights`) added to the first weights.

    Each matrix has its own last node (EPS_CUTOFF / eps, or TAIL_SPAN past 1/a_min); nodes past
    it get weight 0, so a result does not depend on the other matrices of its chunk.
    """
    a = 2 * lam / B
    a_min = np.min(np.where(a > 0, a, np.inf), axis=-1)
    # the integrand's t^(-1/2)-or-faster tail needs rank >= 1 (forward) or >= 3 (backward)
    decays = np.count_nonzero(a, axis=-1) >= (3 if backward else 1)
    with np.errstate(divide="ignore"):
        tau_hi = np.minimum(np.log(EPS_CUTOFF / eps),
                            np.where(decays, TAIL_SPAN - np.log(a_min), np.inf))
    tau_hi = np.minimum(tau_hi, TAU_MAX)
    tau = -TAU_LEFT + TAU_STEP * np.arange(int((tau_hi.max() + TAU_LEFT) / TAU_STEP) + 1)
    t = np.exp(tau)
    weight = np.where(tau <= tau_hi[:, None], TAU_STEP, 0.0)  # (m, n)
    weight[:, :LEFT_TERMS] += left
    # in-place steps: the temporaries of plain expressions cost more than the arithmetic here
    inv_q = a[:, :, None] * t  # (m, B-1, n)
    inv_q += 1.0
    np.reciprocal(inv_q, out=inv_q)
    base = np.sqrt(np.prod(inv_q, axis=1))  # D = det(I + 2t Sw/B)^(-1/2)
    t_eps = np.minimum(eps[:, None] * t, EXP_ARG_MAX)  # clipped only where weight = 0
    base *= np.exp(-t_eps)
    base *= weight * t
    if not backward:
        return lam * (inv_q @ base[:, :, None])[:, :, 0]
    # 1 - rho_k = (1 + 1/q_k) / 2 and rho_k = (1 - 1/q_k) / 2, so K and C follow from the
    # moments s0 = sum base, s_k = sum base / q_k, s_kl = sum base / (q_k q_l); C is exact
    # to ~1e-16 s0 <= 4e-16 K_kk (s0 <= 4 K_kk as rho_k < 1/2).
    s0 = base.sum(-1)[:, None, None]
    s_k = inv_q @ base[:, :, None]
    s_kl = (inv_q * base[:, None, :]) @ np.swapaxes(inv_q, -1, -2)
    K = (s0 + s_k + np.swapaxes(s_k, -1, -2) + s_kl) / 4
    C = (s0 - s_k - np.swapaxes(s_k, -1, -2) + s_kl) / 4
    return K, C
