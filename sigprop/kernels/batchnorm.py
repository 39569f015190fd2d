"""Exact infinite-width kernels of BatchNorm over a batch of B inputs.

At infinite width each feature is a vector u in R^B (one entry per input), u ~ N(0, S) with S
(B x B) symmetric positive semi-definite, possibly singular. BatchNorm per feature, with
P = I - 11^T/B:

    w = P u,   s^2 = |w|^2 / B + eps,   y = w / s,
    J = dy/du = (1/s) (I - w w^T / (B s^2)) P.

The cotangent g ~ N(0, G) at the output is independent of u (exact at infinite width), so the
backward kernel is E[J^T G J].

An activation after BatchNorm (z = D y, D = diag(scale) from any per-input scaling in between)
sees a non-Gaussian law. For phi positively homogeneous of degree 1 (relu, linear) phi(D w / s)
= phi(D w) / s, so its moments are the same t-integrals of phi's Gaussian kernels
(:func:`bn_expectation`, :func:`bn_activation`); phi' is scale free, so the backward needs no
integral at all. A non-homogeneous phi (tanh, erf, ...) would need a (B-1)-dimensional integral
over the law of y and is refused by the theory engine.

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
from scipy.special import gamma, gammaln

from sigprop.errors import ConfigError
from sigprop.kernels.gaussian import get_activation

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


def bn_expectation(S, eps, fn, power, scale=None, degree=None, args=(), min_rank=1):
    """E[f(D w) / s^(2 power)] for u ~ N(0, S), w = P u, D = diag(scale) (default I), where
    fn(C, *args) = E_{v ~ N(0, C)}[f(v)] is given on stacks of covariances C (m, nodes, B, B)
    (each of ``args`` arrives as (m, 1, ...), its leading dims broadcast with S's) and is
    homogeneous, fn(l C) = l^degree fn(C) (degree defaults to power: a function of D y).
    ``min_rank``: the rank of P S P the integral needs to converge at eps = 0 (ConfigError
    otherwise); 3 where the integrand holds 1/s^2 (:func:`_prepare`).

    1/s^(2p) = (1/Gamma(p)) int t^(p-1) e^{-t s^2} dt and the Gaussian tilt give
    int_0^inf t^(p-1)/Gamma(p) e^{-t eps} det(I + 2t Sw/B)^(-1/2) fn(D Sw_t D) dt, done by the
    trapezoid rule of this module with fn evaluated at every node. Shape: the broadcast leading
    dims of S, eps, scale and args, then fn's trailing shape.
    """
    lam, V, eps, c = _prepare(S, eps, min_rank_at_eps0=min_rank)
    B = V.shape[-2]
    scale = np.ones(B) if scale is None else np.asarray(scale, dtype=float)
    args = [np.asarray(a, dtype=float) for a in args]
    fits = scale.shape[-1:] == (B,)
    try:
        lead = np.broadcast_shapes(lam.shape[:-1], scale.shape[:-1],
                                   *(a.shape[:-2] for a in args))
    except ValueError:
        fits = False
    if not fits:
        raise ConfigError("scale shape", scale.shape, f"(..., {B}) broadcastable to {S.shape[:-2]}")

    def flat(x, trailing):
        return np.broadcast_to(x, lead + trailing).reshape((-1,) + trailing)

    DV = flat(scale[..., :, None] * V, (B, B - 1))
    c = flat(c, ())
    lam, eps = flat(lam, (B - 1,)) / c[:, None], flat(eps, ()) / c
    args = [flat(a, a.shape[-2:]) for a in args]
    chunk = max(1, CHUNK * 4 // B**2)  # fn sees (chunk, nodes, B, B) covariances
    left = _left_end_weights(power)
    out = []
    for i in range(0, len(eps), chunk):
        part = slice(i, i + chunk)
        inv_q, base = _t_nodes(lam[part], eps[part], B, left, power, min_rank)
        C = np.einsum("mbk,mkn,mck->mnbc", DV[part], lam[part, :, None] * inv_q, DV[part])
        vals = np.asarray(fn(C, *(a[part, None] for a in args)))
        out.append(np.einsum("mn,mn...->m...", base, vals))
    res = np.concatenate(out)
    res = res * (c ** ((power if degree is None else degree) - power)).reshape(
        (-1,) + (1,) * (res.ndim - 1))
    return res.reshape(lead + res.shape[1:])


def bn_activation(S, eps, scale, act):
    """(E[phi(z) phi(z)^T], E[phi(z)]) for z = D y, y = BN(u), u ~ N(0, S), where ``act`` (an
    :class:`~sigprop.kernels.gaussian.Activation`) is positively homogeneous of degree 1:
    phi(D w / s) = phi(D w) / s gives powers 1 and 1/2 of :func:`bn_expectation` of its
    Gaussian faces."""
    K = bn_expectation(S, eps, act.gram_kernel, 1.0, scale)
    m = bn_expectation(S, eps, lambda C: act.mean(np.diagonal(C, axis1=-2, axis2=-1)), 0.5, scale)
    return (K + np.swapaxes(K, -1, -2)) / 2, m


def bn_relu_backward(S, H, signs, eps):
    """E[J^T M J], M = (r r^T) o H, r_b = relu'(signs_b w_b): the BatchNorm backward of the
    cotangent relu'(z) o h at z = D y (signs = sign D), h ~ N(0, H) independent of u. Unlike
    :func:`bn_backward` the cotangent depends on u, through the same w as J.

    In the flipped coordinates v = E w (E = diag(signs), H^ = E H E), with the bracket of
    :func:`bn_backward`, E[J^T M J] = P E [T1 - (T2 + T2^T) / B + T3 / B^2] E P, where
    T1 = E[(r r^T o H^) / s^2], T2 = E[v v^T (r r^T o H^) / s^4] and
    T3 = E[(v^T (r r^T o H^) v) v v^T / s^6] are t-integrals (powers 1, 2, 3) of Gaussian
    expectations under C = Cov v. By Stein's lemma, with A = P(v_a > 0, v_b > 0) and
    R = E[relu(v_a) relu(v_b)] (relu's Gaussian faces) and Dl_bc = E[delta(v_b) relu(v_c)]
    = sqrt(C_cc - C_bc^2 / C_bb) / (2 pi sqrt(C_bb)) (0 for b = c):
    E[v_a relu(v_c) 1(v_b > 0)] = C_ac A_cb + C_ab Dl_bc, so T2 = C (A o H^) + C diag(Dl H^);
    E[v_a v_b relu(v_c) relu(v_d)] = C_ab R_cd + (C_ac C_bd + C_ad C_bc) A_cd
    + C_ac C_bc Dl_cd + C_ad C_bd Dl_dc, so T3 = sum(R o H^) C + 2 C (A o H^ + diag(rowsum(Dl o
    H^))) C.
    """
    signs = np.where(np.asarray(signs, dtype=float) < 0, -1.0, 1.0)
    H = np.asarray(H, dtype=float) * signs[..., :, None] * signs[..., None, :]
    B = H.shape[-1]

    relu = get_activation("relu")

    def stein_terms(C):
        A, q = relu.gram_grad_kernel(C), np.diagonal(C, axis1=-2, axis2=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cond = np.maximum(q[..., None, :] - C**2 / q[..., :, None], 0.0)
            Dl = np.where(q[..., :, None] > 0, np.sqrt(cond / q[..., :, None]) / (2 * np.pi), 0)
        return A, Dl * (1 - np.eye(B))

    def t1(C, H):
        return stein_terms(C)[0] * H

    def t2(C, H):
        A, Dl = stein_terms(C)
        return C @ (A * H) + C * np.einsum("...bc,...cb->...b", Dl, H)[..., None, :]

    def t3(C, H):
        A, Dl = stein_terms(C)
        inner = A * H + np.eye(B) * (Dl * H).sum(-1)[..., None]
        return (relu.gram_kernel(C) * H).sum((-2, -1))[..., None, None] * C + 2 * C @ inner @ C

    T1, T2, T3 = (bn_expectation(S, eps, t, p, signs, degree=p - 1, args=(H,), min_rank=3)
                  for t, p in ((t1, 1.0), (t2, 2.0), (t3, 3.0)))
    inner = T1 - (T2 + np.swapaxes(T2, -1, -2)) / B + T3 / B**2
    EP = signs[..., :, None] * (np.eye(B) - 1.0 / B)  # (E P)^T inner (E P) = P E inner E P
    out = np.swapaxes(EP, -1, -2) @ inner @ EP
    return (out + np.swapaxes(out, -1, -2)) / 2


def centred_cov(S, scale):
    """D P S P D: the covariance of D w, whose sign pattern is that of z = D y (s > 0)."""
    P = np.eye(S.shape[-1]) - 1.0 / S.shape[-1]
    return scale[..., :, None] * (P @ S @ P) * scale[..., None, :]


def _as_square_batch(name, X):
    """X as a float64 array of shape (..., B, B), B >= 2, finite; ConfigError otherwise."""
    X = np.ascontiguousarray(X, dtype=float)  # C order for eigh and matmul stacks
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
    left = _left_end_weights(1.0)
    parts = [_closed_t_integrals(lam[i:i + CHUNK], eps[i:i + CHUNK], B, left, backward)
             for i in range(0, len(eps), CHUNK)]
    if not backward:
        return np.concatenate(parts).reshape(lead + (k,))
    return tuple(np.concatenate(p).reshape(lead + (k, k)) for p in zip(*parts))


def _left_end_weights(power):
    """Weights on the first LEFT_TERMS nodes that give the trapezoid nodes left of the first,
    TAU_STEP * sum_{j >= 1} f(-TAU_LEFT - j TAU_STEP), exactly for f = t^p, p = power + 0, 1, ..
    LEFT_TERMS - 1 (the integrand near t = 0 is t^power times a power series)."""
    p = power + np.arange(LEFT_TERMS)[:, None]
    r = np.exp(-p * TAU_STEP)
    growth = np.exp(p * TAU_STEP * np.arange(LEFT_TERMS))  # t^p at node j, over t^p at node 0
    return TAU_STEP * np.linalg.solve(growth, (r / (1 - r))[:, 0])


def _t_nodes(lam, eps, B, left, power, min_rank):
    """Trapezoid rule in tau = log t for lam (m, B-1), eps (m,) in scaled units: returns
    (inv_q, base), inv_q = 1/q_k at the nodes (m, B-1, n) and base (m, n) such that
    sum_n base f(t_n) = (1/Gamma(power)) int t^(power-1) e^{-t eps} D(t) f(t) dt, with
    ``left`` (:func:`_left_end_weights`) added to the first weights.

    Each matrix has its own last node (EPS_CUTOFF / eps, or TAIL_SPAN past 1/a_min); nodes past
    it get weight 0, so a result does not depend on the other matrices of its chunk.
    """
    a = 2 * lam / B
    a_min = np.min(np.where(a > 0, a, np.inf), axis=-1)
    # the integrand's t^(-1/2)-or-faster tail needs rank(Sw) >= min_rank
    decays = np.count_nonzero(a, axis=-1) >= min_rank
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
    t_eps = np.minimum(eps[:, None] * t, EXP_ARG_MAX)  # clipped only where weight = 0
    if power == 1:
        base = np.sqrt(np.prod(inv_q, axis=1))  # D = det(I + 2t Sw/B)^(-1/2)
        base *= np.exp(-t_eps)
        base *= weight * t
        return inv_q, base
    # t^power passes float64 (t ~ 36 / eps at eps / lam ~ 1e-98, power 3) where t^power D need
    # not, and D's product may underflow where it does not: the node's factor in logs; beyond
    # float64 only where the integral is (or past a matrix's last node: weight 0 there)
    log_d = 0.5 * np.log(inv_q).sum(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        factor = np.exp(power * tau + log_d - t_eps - gammaln(power))
        return inv_q, np.where(weight != 0, weight * factor, 0.0)


def _closed_t_integrals(lam, eps, B, left, backward):
    """:func:`_t_integrals` on lam (m, B-1), eps (m,), in the eigenbasis (no per-node matrices)."""
    inv_q, base = _t_nodes(lam, eps, B, left, 1.0, min_rank=3 if backward else 1)
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


# -- the typical (E log) backward gain of a width-N BatchNorm -------------------------------------
# E log of a mean of N i.i.d. positive terms r: Frullani, log X = int_0^inf (e^-t - e^-tX) dt/t,
# and E e^{-t mean_N r} = phi(t/N)^N with phi(s) = E e^{-s r}, so
# E log mean_N r = int_0^inf (e^-t - phi(t/N)^N) dt/t: a t-integral, as the means above.
LOG_STEP = 0.1  # trapezoid step in log rho (the integrand is analytic in a strip about the axis)
T_STEP = 0.3  # trapezoid step in tau = log t: analytic in |Im tau| < pi (branch points where
#               1 + 2 s sigma^2 = 0), as TAU_STEP above; error ~ exp(-2 pi^2 / T_STEP) ~ 1e-28
T_MIN = 1e-30  # first t node: the integrand is ~ t (E r - 1) below it (E r < 1e12 here)
TAU_MAX = 700.0  # last log t tried: e^700 ~ 1e304 (a law of sigma2 above 1e-290 ends before it)
BINS = 20000  # points of each input's law of sigma2 in the t-integral (:func:`_compressed`)
RHO_MAX = 12.0  # radius of the whitened w (a chi_{B-1} variable): P(rho > 12) < 1e-30
RHO_MIN_TAIL = 1e-17  # P(rho < rho_min) ~ rho_min^(B-1) <= this, the part left out
ANGLES = {1: 1, 2: 24, 3: (48, 96)}  # directions on the sphere S^(B-2): the two points; on
# the circle Gauss-Legendre panels between the sign changes of w; Gauss-Legendre x uniform on
# the 2-sphere. Measured (tests/test_finite_width_typical.py, and 8 random S): the nodes' mean
# against bn_backward to < 2e-12 at B = 2, 3 and < 1e-6 at B = 4 (peaked in angle when the
# eigenvalues of P S P spread: 40x spread, (24, 48) gave 7e-4); gated by relu (kinks on the
# sphere at B = 4: not supported there) against bn_relu_backward: 1e-9 (B = 2), 1e-13 (B = 3).


def _directions(M):
    """Unit vectors e (n, k) and weights (n,) averaging over the sphere S^(k-1), k = B - 1 <= 3,
    for w = M e rho (M: B x k). k = 2: Gauss-Legendre panels between the angles where some w_a
    changes sign (a gate phi'(w) jumps there; the rule stays exponentially accurate)."""
    k = M.shape[-1]
    if k == 1:
        return np.array([[1.0], [-1.0]]), np.array([0.5, 0.5])
    if k == 2:
        kinks = np.mod(np.arctan2(M[:, 1], M[:, 0])[:, None] + np.array([0.5, 1.5]) * np.pi,
                       2 * np.pi).ravel()
        edges = np.unique(np.concatenate([kinks, [0.0, 2 * np.pi]]))
        x, wx = np.polynomial.legendre.leggauss(ANGLES[2])
        a = ((edges[1:] - edges[:-1])[:, None] * (x + 1) / 2 + edges[:-1, None]).ravel()
        wa = ((edges[1:] - edges[:-1])[:, None] * wx / 2).ravel() / (2 * np.pi)
        return np.stack([np.cos(a), np.sin(a)], -1), wa
    if k == 3:
        nz, nphi = ANGLES[3]
        z, wz = np.polynomial.legendre.leggauss(nz)
        a = 2 * np.pi * np.arange(nphi) / nphi
        r = np.sqrt(1 - z**2)[:, None]
        e = np.stack([np.broadcast_to(z[:, None], (nz, nphi)), r * np.cos(a), r * np.sin(a)], -1)
        return e.reshape(-1, 3), (wz[:, None] / 2 / nphi * np.ones(nphi)).reshape(-1)
    raise ConfigError("batch size B for the typical BatchNorm gradient", k + 1, "2, 3 or 4")


def bn_backward_nodes(S, G, Gamma, eps, act=None):
    """Quadrature of the per-feature backward of a BatchNorm with a skip: nodes sigma2 (n, B)
    and weights (n,), sigma2_a = Var[(d + J^T g)_a | u] = G_aa + (J^T Gamma J)_aa with u ~ N(0, S)
    (one S, B <= 4), J the BatchNorm Jacobian at u, d ~ N(0, G) and g ~ N(0, Gamma) independent.
    So sum_n weights sigma2 = diag(G + bn_backward(S, Gamma, eps)). ``act``: an activation of
    degree 1 right after the BatchNorm, whose derivative gates g (g -> phi'(y) o g; phi'(y) =
    phi'(w), scale free), as in :func:`bn_relu_backward`. w = P u is whitened,
    w = V sqrt(lam) rho e, over directions e (:func:`_directions`) and rho in log steps."""
    lam, V, eps_, _ = _prepare(S, eps, min_rank_at_eps0=3)
    eps_ = float(eps_)
    B = V.shape[-2]
    k = B - 1
    if act is not None and (act.degree != 1 or k == 3 and act.name != "linear"):
        raise ConfigError("activation after BatchNorm for the typical gradient", act.name,
                          "degree 1 (relu-like) at B = 2, 3; linear at B = 4 (a gate's kinks "
                          "on the sphere defeat its rule)")
    M = V * np.sqrt(lam)
    e, we = _directions(M)
    lo = np.log(RHO_MIN_TAIL) / k
    tau = np.arange(lo, np.log(RHO_MAX) + LOG_STEP, LOG_STEP)
    rho = np.exp(tau)
    dens = rho**k * np.exp(-rho**2 / 2) / (2 ** (k / 2 - 1) * gamma(k / 2)) * LOG_STEP  # chi_k
    w = np.einsum("bk,nk,r->nrb", M, e, rho).reshape(-1, B)
    weight = (we[:, None] * dens[None, :]).reshape(-1)
    weight = weight / weight.sum()  # the chi_k tails left out (< 1e-17), and the rule's error
    s2 = np.einsum("nb,nb->n", w, w) / B + eps_
    P = np.eye(B) - 1.0 / B
    if B == 2:  # w along P's one direction: (I - w w^T/Bs^2) P = P eps/s^2, without the
        A = P[None] * (eps_ / s2)[:, None, None]  # cancellation (lost below eps/lam ~ 1e-16)
    else:
        A = P[None] - w[:, :, None] * w[:, None, :] / (B * s2)[:, None, None]  # (I - ww^T/Bs^2)P
    r = np.ones_like(w) if act is None else act.grad(w)
    JGJ = np.einsum("nab,nb,bc,nc,nac->na", A, r, np.asarray(Gamma, dtype=float), r, A)
    return np.diagonal(np.asarray(G, dtype=float))[None, :] + JGJ / s2[:, None], weight


def _compressed(x, weight):
    """The law of the values x (n,) with ``weight``, as at most BINS points: the weighted mean
    of x in each of BINS equal bins of log x (the mean is kept exactly; a smooth function of
    log x moves by O(bin width^2): on typical gains 1e-9 at N = 256, 3e-7 at N = 16, measured
    against 10^8 bins; 2000 bins: 100 times that)."""
    pos = x > 0  # a node of zero variance (a gate that closes every input) stays as it is
    zero = ([0.0], [weight[~pos].sum()]) if not pos.all() else ([], [])
    if not pos.any():
        return np.array(zero[0]), np.array(zero[1])
    x, weight = x[pos], weight[pos]
    lx = np.log(x)
    lo, hi = lx.min(), lx.max()
    k = np.minimum(((lx - lo) / max(hi - lo, 1e-300) * BINS).astype(int), BINS - 1)
    w = np.bincount(k, weight, BINS)
    xw = np.bincount(k, weight * x, BINS)
    keep = w > 0
    return np.concatenate([xw[keep] / w[keep], zero[0]]), np.concatenate([w[keep], zero[1]])


def log_mean_of(sigma2, weight, width):
    """E log[(1/N) sum_i x_i^2] for N i.i.d. x_i, x | node ~ N(0, sigma2) with the node law of
    ``weight`` (sigma2 (n, B) -> (B,)): int (e^-t - phi(t/N)^N) dt/t, phi(s) = E (1 + 2 s
    sigma2)^(-1/2), 1 - phi computed without cancellation; each input's law
    :func:`_compressed` first. The t grid ends where phi(t/N)^N < 1e-16 (later the smaller the
    sigma2); -inf when a node of sigma2 = 0 keeps phi^N above it (P(mean = 0) > 0)."""
    N = float(width)
    out = np.zeros(sigma2.shape[-1])
    for a in range(sigma2.shape[-1]):
        s2, w = _compressed(sigma2[:, a], weight)
        tau_hi = np.log(N / 2) + 2 * np.log(1e16) / N + 1.0  # enough when sigma2 >= 1
        while _log_phi_n(np.exp([tau_hi]), s2, w, N)[0] > np.log(1e-16) and tau_hi < TAU_MAX:
            tau_hi += 1.0
        if tau_hi >= TAU_MAX:
            out[a] = -np.inf
            continue
        t = np.exp(np.arange(np.log(T_MIN), tau_hi + T_STEP, T_STEP))
        out[a] = T_STEP * np.sum(np.expm1(-t) - np.expm1(_log_phi_n(t, s2, w, N)))
    return out


def _log_phi_n(t, s2, w, N):
    """N log phi(t/N) at each t, phi(s) = sum_k w_k (1 + 2 s s2_k)^(-1/2): by log1p(-(1 - phi))
    near phi = 1, 1 - phi = sum_k w_k x_k / (r_k (1 + r_k)) (x = 2 s s2, r = sqrt(1 + x));
    by phi itself below 1/2 (1 - phi would floor phi at the weights' rounding, 1 - sum w ~
    1e-16, which kept phi^N above the grid's end at N = 1 until 2 t s2 overflowed: a NaN)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # (far t: x = inf)
        x = 2 * (t / N)[:, None] * s2  # (t, n)
        root = np.sqrt(1 + x)
        lost = np.minimum((x / (root * (1 + root))) @ w, 1.0)
        out = np.log1p(-lost)
        far = ~(lost < 0.5)  # (NaN where x overflowed: far too)
        out[far] = np.log((1 / root[far]) @ w)
        return N * out


def bn_typical_log_gain(S, G, Gamma, eps, width, ref=None, act=None):
    """E log[(1/N) sum_i (d_i + J_i^T g_i)_a^2] - E log[(1/N) sum_i r_ia^2], per input a (B,):
    the typical (E log) gain of the mean square of a cotangent d ~ N(0, G) plus the BatchNorm
    backward J^T g of an independent g ~ N(0, Gamma) (gated by ``act``, as
    :func:`bn_backward_nodes`), over N i.i.d. features u ~ N(0, S) (one S, B = 2, 3, 4),
    relative to N i.i.d. r ~ N(0, ref) (default G). The mean gain is
    log(diag(G + bn_backward(S, Gamma, eps)) / diag(ref)); at B <= 3 it is carried by features
    of batch variance ~ eps that a width-N net rarely holds, and the typical gain is far below
    it. The second term is digamma(N/2) - log(N/2) + log ref_aa."""
    from scipy.special import digamma

    d = np.diagonal(np.asarray(G if ref is None else ref, dtype=float)).copy()
    if not np.all(d > 0):
        raise ConfigError("ref", "a zero diagonal entry", "a cotangent Gram with ref_aa > 0")
    sigma2, weight = bn_backward_nodes(S, G, Gamma, eps, act)
    with np.errstate(over="ignore", invalid="ignore"):
        sigma2 = sigma2 / d  # each input in units of its own cotangent scale (a ratio)
    if not np.isfinite(sigma2).all():  # beyond float64: no number to give
        return np.full(d.shape, np.nan)
    return log_mean_of(sigma2, weight, width) - (digamma(width / 2) - np.log(width / 2))
