"""The infinite-width BatchNorm kernels against quadrature, Monte Carlo and closed forms.

y = P u / s, s^2 = |P u|^2 / B + eps, u ~ N(0, S); J = dy/du; backward kernel E[J^T G J].
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from sigprop.errors import ConfigError
from sigprop.kernels.batchnorm import (
    _centred_basis,
    bn_activation,
    bn_backward,
    bn_expectation,
    bn_forward,
    bn_relu_backward,
    centred_cov,
)
from sigprop.kernels.gaussian import get_activation


def centring(B):
    return np.eye(B) - 1.0 / B


def random_cov(rng, B, log10_lo=-6.0, log10_hi=6.0):
    """Random S with eigenvalues log-uniform in [10^lo, 10^hi], both ends included."""
    Q, _ = np.linalg.qr(rng.standard_normal((B, B)))
    ev = 10.0 ** rng.uniform(log10_lo, log10_hi, B)
    ev[:2] = 10.0**log10_lo, 10.0**log10_hi
    S = (Q * ev) @ Q.T
    return (S + S.T) / 2


def random_sym(rng, B):
    A = rng.standard_normal((B, B))
    return A + A.T


# --- 1. the same t-integrals by scipy's adaptive quadrature ------------------------------------


def quad_reference(S, G, eps):
    """E[y y^T], E[J^T G J] as scipy quad_vec integrals over tau = log t of the literal formulas
    E[y y^T] = int e^{-t eps} D Sw_t dt and E[J^T G J] = P [E[1/s^2] G - (E[w w^T/s^4] G + G
    E[w w^T/s^4]) / B + E[w w^T G w w^T/s^6] / B^2] P, with E[w w^T G w w^T ...] by Isserlis.

    It takes the spectrum of P S P on 1^perp from the same float64 eigh as the module
    (``_centred_basis``): that spectrum is only defined to ~1e-16 ||S|| / lam_min, which for
    eigenvalues 1e-6 .. 1e6 is far above 1e-10, so sharing it makes this a test of the
    quadrature and of the algebra, not of float64 conditioning.
    """
    B = len(S)
    Q = _centred_basis(B)
    lam, U = np.linalg.eigh(Q.T @ S @ Q)
    V = Q @ U
    Gv, Pv = V.T @ G @ V, V.T @ centring(B) @ V  # Pv = I on 1^perp, kept for the literal form
    lo = -np.log(2 * lam.max() / B + eps) - 45.0
    hi = np.log(70.0 / eps) if eps > 0 else np.log(B / (2 * lam.min())) + 90.0
    scales = [np.log(B / (2 * x)) for x in lam] + ([np.log(1 / eps)] if eps > 0 else [])
    k = B - 1

    def integrand(tau):
        t = np.exp(tau)
        q = 1 + 2 * t * lam / B
        Swt = np.diag(lam / q)
        base = t * np.exp(-t * eps) / np.sqrt(np.prod(q))  # dt = t dtau
        ww_s4 = base * t * Swt
        ww_G_ww_s6 = 0.5 * base * t**2 * (np.trace(Gv @ Swt) * Swt + 2 * Swt @ Gv @ Swt)
        bwd = (base * Pv @ Gv @ Pv - Pv @ (ww_s4 @ Gv + Gv @ ww_s4) @ Pv / B
               + Pv @ ww_G_ww_s6 @ Pv / B**2)
        return np.concatenate([(base * Swt).ravel(), bwd.ravel()])

    points = sorted(p for p in scales if lo < p < hi)
    with np.errstate(over="ignore"):
        r = integrate.quad_vec(integrand, lo, hi, epsabs=0, epsrel=1e-12, points=points,
                               limit=2000)[0]
    return V @ r[:k * k].reshape(k, k) @ V.T, V @ r[k * k:].reshape(k, k) @ V.T


@pytest.mark.parametrize("B", [2, 3, 4, 8])
def test_matches_adaptive_quadrature_of_the_t_integrals(B):
    rng = np.random.default_rng(100 + B)
    for _ in range(3):
        S, G = random_cov(rng, B), random_sym(rng, B)
        for eps in [1e-8, 1e-6, 1e-4, 1e-2, 1.0] + ([0.0] if B >= 4 else []):
            ref_f, ref_b = quad_reference(S, G, eps)
            # relative to the largest entry: the rule measures ~2e-14 here, its documented worst
            # case is 1e-15 per cutoff and 7e-15 per tail span (sigprop.kernels.batchnorm)
            assert np.abs(bn_forward(S, eps) - ref_f).max() <= 1e-12 * np.abs(ref_f).max()
            assert np.abs(bn_backward(S, G, eps) - ref_b).max() <= 1e-12 * np.abs(ref_b).max()


# --- 2. Monte Carlo -----------------------------------------------------------------------------


def monte_carlo(S, G, eps, n, seed, chunk=100_000):
    """Sample means and standard errors of y y^T and of J^T G J = (P - y y^T/B) G (P - y y^T/B)
    / s^2 = d A + sum_r w_r a_r b_r^T, d = 1/s^2, A = PGP, (w_r, a_r, b_r) = (-d/B, PGy, y),
    (-d/B, y, PGy), (d y^T G y / B^2, y, y): per-entry sums and sums of squares as matmuls."""
    B = len(S)
    lam, U = np.linalg.eigh(S)
    root = U * np.sqrt(np.clip(lam, 0, None))
    A = centring(B) @ G @ centring(B)
    rng = np.random.default_rng(seed)
    sums = np.zeros((4, B, B))  # sum yy^T, sum (yy^T)^2, sum J^TGJ, sum (J^TGJ)^2
    for start in range(0, n, chunk):
        u = rng.standard_normal((min(chunk, n - start), B)) @ root.T
        w = u - u.mean(-1, keepdims=True)
        s2 = (w**2).sum(-1) / B + eps
        y, d = w / np.sqrt(s2)[:, None], 1 / s2
        Gy = y @ G
        PGy = Gy - Gy.mean(-1, keepdims=True)
        terms = [(-d / B, PGy, y), (-d / B, y, PGy), (d * (Gy * y).sum(-1) / B**2, y, y)]
        sums[0] += y.T @ y
        sums[1] += (y * y).T @ (y * y)
        sums[2] += A * d.sum() + sum((wr[:, None] * a).T @ b for wr, a, b in terms)
        sums[3] += (A**2 * (d**2).sum()
                    + 2 * A * sum(((d * wr)[:, None] * a).T @ b for wr, a, b in terms)
                    + sum(((w1 * w2)[:, None] * a1 * a2).T @ (b1 * b2)
                          for w1, a1, b1 in terms for w2, a2, b2 in terms))
    mean = sums[0::2] / n
    se = np.sqrt((sums[1::2] / n - mean**2) / (n - 1))
    return {"fwd": (mean[0], se[0]), "bwd": (mean[1], se[1])}


@pytest.mark.parametrize("B, eps, duplicate", [(2, 0.1, False), (3, 0.1, False),
                                               (4, 0.05, True), (8, 1e-3, False)])
def test_matches_monte_carlo(B, eps, duplicate):
    rng = np.random.default_rng(7 + B)
    X = rng.standard_normal((B, B + 1))
    if duplicate:  # inputs 0 and 1 identical: P S P has rank B - 2
        X[1] = X[0]
    S = X @ X.T / (B + 1)
    G = random_sym(rng, B) + 2 * B * np.eye(B)
    mc = monte_carlo(S, G, eps, n=10**6, seed=B)
    for key, theory in (("fwd", bn_forward(S, eps)), ("bwd", bn_backward(S, G, eps))):
        mean, se = mc[key]
        # se: per-entry standard error of the mean of 10^6 i.i.d. samples (from the samples);
        # 5 se bounds every one of the 2 B^2 entries with probability > 1 - 1e-4 (Gaussian CLT)
        assert np.all(np.abs(mean - theory) <= 5 * se + 1e-14), (key, (mean - theory) / se)


# --- 3. closed forms and exact identities --------------------------------------------------------


@pytest.mark.parametrize("B", [2, 3, 4, 8])
def test_isotropic_without_eps_is_BP_over_B_minus_1(B):
    """S = sigma^2 I, eps = 0: y = sqrt(B) w/|w| is uniform on a sphere of P R^B, so
    E[y y^T] = B P / (B - 1)."""
    for sigma2 in [1e-3, 1.0, 7.5e4]:
        expected = B / (B - 1) * centring(B)
        assert np.abs(bn_forward(sigma2 * np.eye(B), 0.0) - expected).max() <= 1e-10


@pytest.mark.parametrize("B", [4, 5, 8])
def test_isotropic_backward_without_eps(B):
    """S = sigma^2 I, eps = 0, r = B - 1, w = sqrt(rho) theta (rho ~ sigma^2 chi^2_r, theta
    uniform on the unit sphere of P R^B): E[1/rho] = 1/(sigma^2 (r-2)) and
    E[theta theta^T A theta theta^T] = (tr(PAP) P + 2 PAP) / (r (r+2)) give
    E[J^T G J] = B / (sigma^2 (r-2)) [(r^2-2) PGP + tr(PGP) P] / (r (r+2))."""
    rng = np.random.default_rng(B)
    G, P, r = random_sym(rng, B), centring(B), B - 1
    for sigma2 in [0.01, 3.0]:
        PGP = P @ G @ P
        expected = B / (sigma2 * (r - 2)) * ((r**2 - 2) * PGP + np.trace(PGP) * P) / (r * (r + 2))
        got = bn_backward(sigma2 * np.eye(B), G, 0.0)
        assert np.abs(got - expected).max() <= 1e-10 * np.abs(expected).max()


def chi2_moments(r, sigma2, c):
    """E[f(rho)], rho ~ sigma2 chi^2_r, for f = rho/(rho+c), 1/(rho+c), rho/(rho+c)^2,
    rho^2/(rho+c)^3, by adaptive quadrature over the density of rho."""

    def pdf(x):
        return np.exp((r / 2 - 1) * np.log(x / sigma2) - x / (2 * sigma2)
                      - special.gammaln(r / 2)) / (2 ** (r / 2) * sigma2)

    def mean(f):
        pieces = [(0, c), (c, sigma2 * r), (sigma2 * r, np.inf)]
        return sum(integrate.quad(lambda x: f(x) * pdf(x), a, b, epsabs=0, epsrel=1e-13,
                                  limit=200)[0] for a, b in pieces)

    return [mean(f) for f in (lambda x: x / (x + c), lambda x: 1 / (x + c),
                              lambda x: x / (x + c) ** 2, lambda x: x**2 / (x + c) ** 3)]


@pytest.mark.parametrize("B", [2, 3, 4, 8])
def test_isotropic_with_eps_against_radial_integrals(B):
    """S = sigma^2 I, eps > 0: by symmetry every kernel reduces to 1-D integrals over
    rho = |w|^2 ~ sigma^2 chi^2_{B-1} (an integral independent of the t-representation):
    E[y y^T] = B/r E[rho/(rho + B eps)] P, and E[J^T G J] = B E[1/(rho + B eps)] PGP
    - 2B/r E[rho/(rho + B eps)^2] PGP + B E[rho^2/(rho + B eps)^3] (tr(PGP) P + 2 PGP)/(r(r+2))."""
    rng = np.random.default_rng(B)
    G, P, r = random_sym(rng, B), centring(B), B - 1
    PGP = P @ G @ P
    for sigma2, eps in [(1.0, 1e-4), (1.0, 0.3), (50.0, 2.0)]:
        m_fwd, m_inv, m_1_2, m_2_3 = chi2_moments(r, sigma2, B * eps)
        fwd = B / r * m_fwd * P
        bwd = (B * m_inv * PGP - 2 * B / r * m_1_2 * PGP
               + B * m_2_3 * (np.trace(PGP) * P + 2 * PGP) / (r * (r + 2)))
        S = sigma2 * np.eye(B)
        assert np.abs(bn_forward(S, eps) - fwd).max() <= 1e-10 * np.abs(fwd).max()
        assert np.abs(bn_backward(S, G, eps) - bwd).max() <= 1e-10 * np.abs(bwd).max()


def test_two_inputs_closed_form():
    """B = 2: w = sqrt(lam) z v with v = (1, -1)/sqrt 2, lam = (S11 + S22 - 2 S12)/2, so with
    a = lam/(2 eps), x = 1/sqrt(2a) and E[(1 + a z^2)^-n] = F_n:
    E[y y^T] = 2 (1 - F_1) P, F_1 = sqrt(pi) x erfcx(x);
    J = (eps / s^3) v v^T, E[J^T G J] = (v^T G v) F_3 / eps P with
    F_3 = sqrt(pi) x erfcx(x) (3 - 4x^2 + 4x^4)/8 + (3x^2 - 2x^4)/4 (from
    F_(n+1) = F_n + a F_n'(a) / n); checked for x <= 1.5 where it does not cancel."""
    P = centring(2)
    v = np.array([1.0, -1.0]) / np.sqrt(2)
    G = np.array([[2.0, -0.7], [-0.7, 0.5]])
    S = np.array([[1.3, 0.2], [0.2, 0.9]])
    lam = (S[0, 0] + S[1, 1] - 2 * S[0, 1]) / 2
    for eps in [1e-8, 1e-5, 1e-2, 0.5 * lam]:
        x = np.sqrt(eps / lam)
        F1 = np.sqrt(np.pi) * x * special.erfcx(x)
        F3 = F1 * (3 - 4 * x**2 + 4 * x**4) / 8 + (3 * x**2 - 2 * x**4) / 4
        fwd, bwd = 2 * (1 - F1) * P, (v @ G @ v) * F3 / eps * P
        assert np.abs(bn_forward(S, eps) - fwd).max() <= 1e-10 * np.abs(fwd).max()
        assert np.abs(bn_backward(S, G, eps) - bwd).max() <= 1e-10 * np.abs(bwd).max()
    assert np.abs(bn_forward(S, 0.0) - 2 * P).max() <= 1e-12


@pytest.mark.parametrize("B", [2, 3, 5])
def test_exact_identities(B):
    """Rows of both kernels sum to 0 (P kills 1); tr E[y y^T] = B E[|w|^2/(|w|^2 + B eps)]
    is B at eps = 0 and below B for eps > 0; S + 1x^T + x1^T gives the same kernels (P S P is
    unchanged); scale: (cS, c eps) gives the same E[y y^T] and E[J^T G J] / c."""
    rng = np.random.default_rng(B)
    S, G = random_cov(rng, B, -2, 2), random_sym(rng, B)
    one = np.ones(B)
    for eps in [1e-6, 0.1]:
        f, b = bn_forward(S, eps), bn_backward(S, G, eps)
        assert np.abs(f @ one).max() <= 1e-12 * np.abs(f).max()
        assert np.abs(b @ one).max() <= 1e-12 * np.abs(b).max()
        assert np.abs(one @ b).max() <= 1e-12 * np.abs(b).max()
        assert np.trace(f) < B
        x = rng.standard_normal(B)
        shifted = S + np.outer(one, x) + np.outer(x, one) + 5 * np.outer(one, one)
        assert np.abs(bn_forward(shifted, eps) - f).max() <= 1e-9 * np.abs(f).max()
        assert np.abs(bn_backward(shifted, G, eps) - b).max() <= 1e-9 * np.abs(b).max()
        c = 32.0  # a power of 2: cS and c eps are exact
        assert np.abs(bn_forward(c * S, c * eps) - f).max() <= 1e-12 * np.abs(f).max()
        assert np.abs(c * bn_backward(c * S, G, c * eps) - b).max() <= 1e-12 * np.abs(b).max()
    assert abs(np.trace(bn_forward(S, 0.0)) - B) <= 1e-10 * B


@settings(max_examples=40, deadline=None)
@given(B=st.integers(2, 6), seed=st.integers(0, 2**32 - 1),
       log_eps=st.floats(-8, 0), rank=st.integers(0, 6))
def test_forward_is_a_correlation_like_psd_matrix(B, seed, log_eps, rank):
    """For any S (rank 0 included): E[y y^T] is PSD, finite, in the range of P, and its trace
    is at most B (|y|^2 = B |w|^2 / (|w|^2 + B eps) < B)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, rank)) * 10.0 ** rng.uniform(-3, 3, rank)
    f = bn_forward(X @ X.T, 10.0**log_eps)
    assert np.all(np.isfinite(f))
    assert np.linalg.eigvalsh(f).min() >= -1e-12 * max(1.0, np.abs(f).max())
    assert np.trace(f) <= B * (1 + 1e-12)
    assert np.abs(f.sum(-1)).max() <= 1e-12 * max(1.0, np.abs(f).max())


# --- 4. rank-deficient S and broadcasting --------------------------------------------------------


@pytest.mark.parametrize("B", [2, 3, 6])
def test_equal_inputs_give_zero_output_and_P_G_P_over_eps(B):
    """S = c 11^T (all inputs equal; also S = 0): w = 0, y = 0 and J = P / sqrt(eps)."""
    G = random_sym(np.random.default_rng(B), B)
    PGP = centring(B) @ G @ centring(B)
    for S in [2.5 * np.ones((B, B)), np.zeros((B, B))]:
        for eps in [1e-8, 0.3]:
            f = bn_forward(S, eps)
            assert np.all(f == 0.0)
            b = bn_backward(S, G, eps)
            assert np.abs(b - PGP / eps).max() <= 1e-12 * np.abs(PGP / eps).max()


def test_duplicated_inputs():
    """Inputs 0 and 1 identical: y_0 = y_1, so rows 0 and 1 of E[y y^T] are equal."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 3))
    X[1] = X[0]
    f = bn_forward(X @ X.T, 1e-5)
    assert np.abs(f[0] - f[1]).max() <= 1e-12 * np.abs(f).max()
    assert np.all(np.isfinite(bn_backward(X @ X.T, np.eye(5), 1e-5)))


def test_broadcasts_over_leading_dims():
    rng = np.random.default_rng(5)
    B = 4
    S = np.stack([random_cov(rng, B, -1, 1) for _ in range(3)])[:, None]  # (3, 1, B, B)
    eps = np.array([[1e-6, 1e-3, 0.1, 0.0]])  # (1, 4)
    G = np.stack([random_sym(rng, B) for _ in range(4)])  # (4, B, B)
    f, b = bn_forward(S, eps), bn_backward(S, G, eps)
    assert f.shape == b.shape == (3, 4, B, B)
    for i in range(3):
        for j in range(4):
            np.testing.assert_allclose(f[i, j], bn_forward(S[i, 0], eps[0, j]), rtol=0,
                                       atol=1e-14 * np.abs(f[i, j]).max())
            np.testing.assert_allclose(b[i, j], bn_backward(S[i, 0], G[j], eps[0, j]), rtol=0,
                                       atol=1e-14 * np.abs(b[i, j]).max())
    assert bn_backward(S[0, 0], G, 0.01).shape == (4, B, B)  # G alone carries the batch dim


# --- 5. an activation after BatchNorm (phi positively homogeneous) -------------------------------


def phi_after_bn(act_name, S, eps, scale):
    """(E[phi(z) phi(z)^T], E[phi(z)]) of z = diag(scale) BN(u) by the module."""
    return bn_activation(S, eps, scale, get_activation(act_name))


def arccos1(c):
    """E[relu(u) relu(v)] for unit-variance u, v of correlation c (Cho & Saul 2009)."""
    return (np.sqrt(1 - c * c) + (np.pi - np.arccos(c)) * c) / (2 * np.pi)


@pytest.mark.parametrize("B", [2, 3, 4, 8])
def test_linear_activation_is_the_forward_kernel(B):
    # phi = identity: bn_expectation with fn(C) = C must be bn_forward (same nodes, other path)
    rng = np.random.default_rng(B)
    S, scale = random_cov(rng, B, -3, 3), rng.uniform(-2, 2, B)
    for eps in (0.0, 1e-3, 1.0):
        K, m = phi_after_bn("linear", S, eps, scale)
        ref = np.outer(scale, scale) * bn_forward(S, eps)
        assert np.abs(K - ref).max() <= 1e-13 * np.abs(ref).max()
        assert np.abs(m).max() <= 1e-15  # E[y] = 0 (u -> -u)


@pytest.mark.parametrize("B", [2, 3, 5, 8])
def test_relu_isotropic_without_eps_closed_form(B):
    # P S P = sigma^2 P, eps = 0: y = sqrt(B - 1) (x_a . u), u uniform on S^(d-1), d = B - 1,
    # |x_a| = 1, x_a . x_b = -1/(B-1). With u = g/|g| independent of |g| (g ~ N(0, I_d)):
    # E[relu(y_a) relu(y_b)] = (B-1) arccos1(x_a . x_b) / d = arccos1(-1/(B-1)), and
    # E[relu(y_a)] = sqrt(B-1) E|u_1| / 2 = sqrt(B-1) Gamma(d/2) / (2 sqrt(pi) Gamma((d+1)/2)).
    d = B - 1
    S = 2.5 * np.eye(B) + 0.7  # the 11^T part is removed by P
    K, m = phi_after_bn("relu", S, 0.0, np.ones(B))
    off = arccos1(-1.0 / d)
    expected = np.where(np.eye(B, dtype=bool), 0.5, off)
    assert np.abs(K - expected).max() <= 1e-13
    mean = np.sqrt(d) * special.gamma(d / 2) / (2 * np.sqrt(np.pi) * special.gamma((d + 1) / 2))
    assert np.abs(m - mean).max() <= 1e-13


@pytest.mark.parametrize("B", [2, 3, 5])
def test_relu_diagonal_is_half_the_bn_second_moment(B):
    # y and -y have the same law, so E[relu(y_a)^2] = E[y_a^2] / 2 for any S, eps; and a negative
    # scale only mirrors: E[relu(-y_a)^2] is the same.
    rng = np.random.default_rng(10 + B)
    S = random_cov(rng, B, -4, 4)
    for eps in (0.0, 1e-4, 0.3):
        scale = np.where(np.arange(B) % 2, -1.5, 1.5)
        K, _ = phi_after_bn("relu", S, eps, scale)
        ref = 1.5**2 * np.diagonal(bn_forward(S, eps)) / 2
        assert np.abs(np.diagonal(K) - ref).max() <= 1e-13 * ref.max()


@pytest.mark.parametrize("B, eps", [(2, 0.1), (3, 0.0), (4, 0.05), (6, 1e-3)])
def test_relu_after_bn_matches_monte_carlo(B, eps):
    rng = np.random.default_rng(100 + B)
    X = rng.standard_normal((B, B + 1))
    S = X @ X.T / (B + 1)
    scale = rng.uniform(0.5, 2.0, B) * rng.choice([-1.0, 1.0], B)
    K, m = phi_after_bn("relu", S, eps, scale)
    n, sums = 10**6, np.zeros((4, B, B))
    for start in range(0, n, 10**5):
        u = rng.standard_normal((10**5, B)) @ np.linalg.cholesky(S).T
        w = u - u.mean(-1, keepdims=True)
        z = np.maximum(scale * w / np.sqrt((w * w).sum(-1, keepdims=True) / B + eps), 0)
        sums += [z.T @ z, (z * z).T @ (z * z), np.diag(z.sum(0)), np.diag((z * z).sum(0))]
    mean = sums[0::2] / n
    se = np.sqrt((sums[1::2] / n - mean**2) / (n - 1))
    # se: standard error of the mean of 10^6 i.i.d. samples; 5 se bounds each of the B^2 + B
    # entries with probability > 1 - 1e-4 (CLT). At B = 2 the off-diagonal products of two
    # same-sign scales are exactly 0 (y_1 = -y_0): se = 0 there, and the theory must be ~0.
    assert np.all(np.abs(mean[0] - K) <= 5 * se[0] + 1e-14), (mean[0] - K) / se[0]
    assert np.all(np.abs(np.diag(mean[1]) - m) <= 5 * np.diag(se[1]))


def test_relu_after_bn_against_adaptive_quadrature():
    # The same t-integrals by scipy's quad_vec (in tau = log t, a relu kernel per node), on a
    # spectrum spanning 1e-3 .. 1e3: checks the trapezoid rule, its ends and the power-1/2 weights.
    rng = np.random.default_rng(5)
    B = 4
    S, scale = random_cov(rng, B, -3, 3), np.array([1.0, -0.5, 2.0, 1.0])
    relu = get_activation("relu")
    Q = _centred_basis(B)
    lam, U = np.linalg.eigh(Q.T @ S @ Q)
    DV = scale[:, None] * (Q @ U)
    for eps in (0.0, 1e-2):
        def integrand(tau, power, eps):
            t = np.exp(tau)
            q = 1 + 2 * t * lam / B
            C = (DV * (lam / q)) @ DV.T
            weight = t**power / special.gamma(power) * np.exp(-t * eps) / np.sqrt(np.prod(q))
            if power == 1:
                return weight * relu.gram_kernel(C).ravel()
            return weight * relu.mean(np.diag(C))
        hi = np.log(70.0 / eps) if eps > 0 else np.log(B / (2 * lam.min())) + 90.0
        lo = -np.log(2 * lam.max() / B + eps) - 80.0
        K_ref = integrate.quad_vec(integrand, lo, hi, args=(1.0, eps), epsrel=1e-13, limit=2000)[0]
        m_ref = integrate.quad_vec(integrand, lo, hi, args=(0.5, eps), epsrel=1e-13, limit=2000)[0]
        K, m = phi_after_bn("relu", S, eps, scale)
        assert np.abs(K.ravel() - K_ref).max() <= 1e-11 * np.abs(K_ref).max()
        assert np.abs(m - m_ref).max() <= 1e-11 * np.abs(m_ref).max()


@pytest.mark.parametrize("B, eps", [(3, 0.1), (5, 0.0), (6, 1e-3)])
def test_relu_gated_backward_matches_monte_carlo(B, eps):
    # g_u = J^T (relu'(signs w) o h), h ~ N(0, H) independent of u: the sample mean of
    # g_u g_u^T over 2 10^6 draws. 5 se per entry (B^2 entries, CLT) fails with prob. < 1e-4.
    # Power: treating relu'(z) as independent of J (bn_backward of E[relu' relu'^T] o H) is
    # off by many se, so this test separates the two laws.
    rng = np.random.default_rng(20 + B)
    X = rng.standard_normal((B, B + 1))
    S = X @ X.T / (B + 1)
    A = rng.standard_normal((B, B))
    H = A @ A.T / B + np.eye(B)
    signs = rng.choice([-1.0, 1.0], B)
    theory = bn_relu_backward(S, H, signs, eps)
    n, reps, sums = 4 * 10**5, 5, np.zeros((2, B, B))
    root_S, root_H = np.linalg.cholesky(S), np.linalg.cholesky(H)
    for _ in range(reps):
        u = rng.standard_normal((n, B)) @ root_S.T
        w = u - u.mean(1, keepdims=True)
        s = np.sqrt((w * w).sum(1, keepdims=True) / B + eps)
        gy = (signs * w > 0) * (rng.standard_normal((n, B)) @ root_H.T)
        gu = (gy - gy.mean(1, keepdims=True) - w / s * (w / s * gy).sum(1, keepdims=True) / B) / s
        prod = gu[:, :, None] * gu[:, None, :]
        sums += [prod.mean(0), (prod**2).mean(0)]
    mean = sums[0] / reps
    se = np.sqrt((sums[1] / reps - mean**2) / (reps * n - 1))
    assert np.all(np.abs(mean - theory) <= 5 * se), (mean - theory) / se
    P = centring(B)
    ungated = bn_backward(S, get_activation("relu").gram_grad_kernel(P @ S @ P * np.outer(signs, signs)) * H, eps)
    assert np.max(np.abs(mean - ungated) / se) > 5


@pytest.mark.parametrize("B", [2, 3, 4, 7])
def test_relu_gated_backward_with_both_gates_is_the_plain_backward(B):
    # relu'(v) + relu'(-v) = 1 (v != 0 a.s.), so for a diagonal H the cotangents gated by signs
    # and by -signs add up to the ungated one: E[J^T diag(r o h) J] + (same, 1 - r) = E[J^T H J].
    # bn_backward integrates in the eigenbasis without any Gaussian kernel, so this checks the
    # Stein terms and the power-2, -3 quadratures of bn_relu_backward to rounding.
    rng = np.random.default_rng(30 + B)
    S = random_cov(rng, B, -3, 3)
    H = np.diag(rng.uniform(0.5, 2.0, B))
    signs = rng.choice([-1.0, 1.0], B)
    for eps in (1e-4, 0.5) + ((0.0,) if B >= 4 else ()):
        both = bn_relu_backward(S, H, signs, eps) + bn_relu_backward(S, H, -signs, eps)
        plain = bn_backward(S, H, eps)
        assert np.abs(both - plain).max() <= 1e-11 * np.abs(plain).max()


def test_activation_moments_broadcast_over_leading_dims():
    rng = np.random.default_rng(3)
    B = 3
    S = np.stack([random_cov(rng, B, -1, 1) for _ in range(4)])[:, None]  # (4, 1, B, B)
    eps, scale = np.array([0.0, 0.1]), rng.uniform(-1, 1, (2, B))  # eps (2,), scale (2, B)
    K, m = phi_after_bn("relu", S, eps, scale)
    assert K.shape == (4, 2, B, B) and m.shape == (4, 2, B)
    for i in range(4):
        for j in range(2):
            Kij, mij = phi_after_bn("relu", S[i, 0], eps[j], scale[j])
            np.testing.assert_allclose(K[i, j], Kij, rtol=0, atol=1e-15)
            np.testing.assert_allclose(m[i, j], mij, rtol=0, atol=1e-15)


def test_centred_cov_is_the_covariance_of_D_P_u():
    rng = np.random.default_rng(4)
    S, scale = random_cov(rng, 3, -1, 1), np.array([2.0, -1.0, 0.5])
    P = centring(3)
    np.testing.assert_allclose(centred_cov(S, scale), np.diag(scale) @ P @ S @ P @ np.diag(scale),
                               rtol=1e-14, atol=1e-15)


# --- 6. bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("call, field", [
    (lambda: bn_forward(np.ones((1, 1)), 1e-5), "batch size B"),
    (lambda: bn_backward(np.ones((1, 1)), np.ones((1, 1)), 1e-5), "batch size B"),
    (lambda: bn_forward(np.eye(3), -1e-5), "eps"),
    (lambda: bn_forward(np.eye(3), np.nan), "eps"),
    (lambda: bn_forward(np.eye(3), [1e-5, np.inf]), "eps"),
    (lambda: bn_forward(np.diag([1.0, np.nan, 1.0]), 1e-5), "S"),
    (lambda: bn_forward(np.diag([1.0, np.inf, 1.0]), 1e-5), "S"),
    (lambda: bn_backward(np.eye(3), np.diag([1.0, np.nan, 1.0]), 1e-5), "G"),
    (lambda: bn_forward(np.array([[1.0, 0.5], [0.0, 1.0]]), 1e-5), "S"),
    (lambda: bn_forward(np.diag([1.0, -1.0, 1.0]), 1e-5), "S"),
    (lambda: bn_backward(np.eye(3), np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0.0]]), 1e-5), "G"),
    (lambda: bn_forward(np.ones((2, 3)), 1e-5), "S shape"),
    (lambda: bn_backward(np.eye(3), np.eye(4), 1e-5), "G shape"),
    (lambda: bn_forward(np.ones((3, 3)), 0.0), "eps"),  # P S P = 0: y = 0/0
    (lambda: bn_backward(np.eye(2), np.eye(2), 0.0), "eps"),  # rank 1: E[1/s^2] diverges
    (lambda: bn_backward(np.eye(3), np.eye(3), 0.0), "eps"),  # rank 2: diverges (log)
    (lambda: bn_forward(np.stack([np.eye(3)] * 2), np.zeros(3)), "eps shape"),
    (lambda: bn_expectation(np.eye(3), 0.1, lambda C: C, 1.0, np.ones(4)), "scale shape"),
    (lambda: bn_expectation(np.ones((3, 3)), 0.0, lambda C: C, 1.0), "eps"),  # y = 0/0
    (lambda: bn_relu_backward(np.eye(3), np.eye(3), np.ones(3), 0.0), "eps"),  # rank 2: diverges
])
def test_bad_input_raises_config_error(call, field):
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.field == field


def test_batch_of_one_message():
    with pytest.raises(ConfigError, match="BatchNorm over one input is undefined"):
        bn_forward(np.ones((1, 1)), 1e-5)
