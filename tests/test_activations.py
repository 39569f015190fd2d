"""Activations: closed forms, quadrature, Monte Carlo, symbolic face, names, derivatives."""

import math

import numpy as np
import pytest
import scipy.integrate
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import sigprop as sp
from sigprop.errors import ConfigError
from sigprop.kernels.gaussian import ACTIVATIONS, get_activation
from sigprop.kernels.quadrature import expect, kernel_quad
from sigprop.state.ns import NUMERIC, SYMBOLIC

CLOSED = ("linear", "relu", "erf", "gelu", "leaky_relu", "leaky_relu(0.2)")
QUAD = ("tanh", "silu", "gelu_tanh", "elu", "elu(0.5)")


def _faces(act):
    """(face, array function, its parity) of the two kernels, as the quadrature takes them."""
    return (("kernel", act.fn, act._parity[0]), ("grad_kernel", act.grad, act._parity[1]))


# --- 1. The generic quadrature route reproduces every closed form.

@pytest.mark.parametrize("name", CLOSED)
def test_quadrature_route_matches_closed_forms(name):
    act = get_activation(name)
    qs = np.array([1e-3, 0.1, 1.0, 30.0, 1e3])
    cs = np.array([-1.0, -0.999, -0.5, 0.0, 0.3, 0.999, 1.0])
    q1, q2, c = np.meshgrid(qs, qs, cs, indexing="ij")
    scale = np.maximum(1.0, np.sqrt(q1 * q2))  # kernels of degree-1 activations grow like q
    for face, f, parity in _faces(act):
        exact = getattr(act, face)(q1, q2, c)
        for par in (None, parity):  # the plain rule, and the one folded by phi's parity
            quad = kernel_quad(f, q1, q2, c, act._bend, parity=par)
            assert np.max(np.abs(quad - exact) / scale) < 1e-10, (face, par)
    for face, f in (("mean", act.fn), ("grad_mean", act.grad)):
        exact = getattr(act, face)(qs)
        quad = expect(f, 0.0, np.sqrt(qs), act._bend)
        assert np.max(np.abs(quad - exact) / np.maximum(1, np.sqrt(qs))) < 1e-10, face


# --- 2. tanh, gelu, silu against scipy's adaptive integrator (independent scalar activations).

SQRT2 = math.sqrt(2.0)
_K = math.sqrt(2 / math.pi)


def _silu(x):
    return x / (1 + math.exp(-x)) if x > -700 else 0.0


def _sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x > -700 else 0.0


SCALAR = {  # name: (phi, phi')
    "tanh": (math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    "gelu": (lambda x: x * 0.5 * math.erfc(-x / SQRT2),
             lambda x: 0.5 * math.erfc(-x / SQRT2) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "silu": (_silu, lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
    # torch's GELU(approximate="tanh") and ELU(alpha), written independently of the package
    "gelu_tanh": (lambda x: 0.5 * x * (1 + math.tanh(_K * (x + 0.044715 * x**3))),
                  lambda x: 0.5 * (1 + math.tanh(_K * (x + 0.044715 * x**3)))
                  + 0.5 * x * _K * (1 + 3 * 0.044715 * x * x)
                  * (1 - math.tanh(_K * (x + 0.044715 * x**3)) ** 2)),
    "elu": (lambda x: x if x > 0 else math.expm1(x), lambda x: 1.0 if x > 0 else math.exp(x)),
    "elu(0.5)": (lambda x: x if x > 0 else 0.5 * math.expm1(x),
                 lambda x: 1.0 if x > 0 else 0.5 * math.exp(x)),
}


def _quad_normal(g, kink, width):
    """int g(z) phi(z) dz by scipy's adaptive quad on [-9, 9] (tail mass 2e-19), with
    breakpoints at the kink and graded around it on the scale width."""
    pts = {kink + s * width * k for s in (-1, 1) for k in (0, 1, 3, 10, 30)}
    pts = sorted(p for p in pts if -9 < p < 9)
    val, _ = scipy.integrate.quad(lambda z: g(z) * math.exp(-z * z / 2), -9.0, 9.0, points=pts,
                                  epsabs=1e-15, epsrel=1e-13, limit=500)
    return val / math.sqrt(2 * math.pi)


def _scipy_kernel(f, q1, q2, c):
    """E[f(u) f(v)] by nested adaptive quad: outer over Z1, inner over Z2 given Z1."""
    a, b = math.sqrt(q1), math.sqrt(q2)
    if abs(c) == 1:
        return _quad_normal(lambda z: f(a * z) * f(c * b * z), 0.0, 1 / max(a, b, 1e-300))
    sig = b * math.sqrt(1 - c * c)

    def inner(z1):
        m = c * b * z1
        return _quad_normal(lambda z2: f(m + sig * z2), -m / sig, 1 / sig)

    return _quad_normal(lambda z1: f(a * z1) * inner(z1), 0.0,
                        min(1 / a, max(sig, 1.0) / abs(c * b)) if c else 1 / a)


POINTS_2D = [  # (q1, q2, c): the hard cases of STYLE.md and a spread over the range
    (4.5, 4.5, 0.98), (1.0, 2.0, 0.5), (1e-6, 1.0, -0.3), (1e3, 1e3, 0.999999),
    (1e4, 1e4, 0.9), (1e4, 1e-2, -0.98),
]
POINTS_1D = [1e-6, 1e-3, 0.3, 4.5, 1e3, 1e4]  # q for mean, grad_mean and the diagonal


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")  # roundoff at 1e-15
@pytest.mark.parametrize("name", QUAD + ("gelu",))  # and gelu's closed form
def test_quadrature_matches_scipy(name):
    act, (f, df) = get_activation(name), SCALAR[name]
    for q1, q2, c in POINTS_2D + [(q, q, 1.0) for q in POINTS_1D] + [(2.0, 30.0, -1.0)]:
        for face, g in (("kernel", f), ("grad_kernel", df)):
            if face == "grad_kernel" and q1 > 1e3:
                continue  # (keeps the file fast: the kernel covers the same rule there)
            ref = _scipy_kernel(g, q1, q2, c)
            val = getattr(act, face)(q1, q2, c)
            tol = 1e-9 * abs(ref) + 1e-15 * max(1.0, math.sqrt(q1 * q2))  # relative 1e-9
            assert abs(val - ref) <= tol, (face, q1, q2, c, val, ref)
    for q in POINTS_1D:
        a = math.sqrt(q)
        for face, g in (("mean", f), ("grad_mean", df)):
            ref = _quad_normal(lambda z, g=g, a=a: g(a * z), 0.0, 1 / a)
            val = getattr(act, face)(q)
            # relative 1e-9 (absolute 1e-15 sqrt(q) where the mean vanishes: tanh)
            assert abs(val - ref) <= 1e-9 * abs(ref) + 1e-15 * math.sqrt(q), (face, q)


def test_gelu_closed_forms_at_any_scale():
    """gelu's kernels against the literature form (Tsuchida et al. 2021; D^2 = (1 + q1)(1 + q2)
    - k^2, atan2) in 40-digit mpmath, q from 1e-6 to 1e20, c = +-1 included: to 2e-16 (kernel
    relative to max(1, q)). With asin(s) at |s| -> 1 the error was ~eps sqrt(q): 2e-9 at q = 1e16,
    and the wrong sign at c = -1."""
    mpmath = pytest.importorskip("mpmath")
    gelu = get_activation("gelu")
    with mpmath.workdps(40):
        for q in (1e-6, 1e-2, 1.0, 1e4, 1e8, 1e12, 1e16, 1e20):
            for c in (1.0, -1.0, 0.3, -0.999):
                for q2 in (q, 0.37 * q):
                    a, b, r = mpmath.mpf(q), mpmath.mpf(q2), mpmath.mpf(c)
                    k = r * mpmath.sqrt(a * b)
                    d2 = (1 + a) * (1 + b) - k * k
                    d, t = mpmath.sqrt(d2), mpmath.atan2(k, mpmath.sqrt(d2))
                    value = k / 4 + (k * t + (k * k + a * b * d2) / ((1 + a) * (1 + b) * d)) / (
                        2 * mpmath.pi)
                    grad = (mpmath.mpf(1) / 4 + t / (2 * mpmath.pi)
                            + k * (1 / d2 + (1 - a * b) / ((1 + a) * (1 + b)) + 1) / (2 * mpmath.pi * d))
                    assert abs(float(gelu.kernel(q, q2, c)) - float(value)) <= 2e-16 * max(1, q)
                    assert abs(float(gelu.grad_kernel(q, q2, c)) - float(grad)) <= 2e-16


def test_erf_kernels_at_any_scale():
    """erf's kernel (2/pi) asin s, s = 2 k / sqrt((1 + 2 q1)(1 + 2 q2)), k = c sqrt(q1 q2), and
    its gradient kernel (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 k^2), against 40-digit mpmath at
    the same float arguments: q from 1e-8 to 6e307, c = +-1 and 1 - 1e-6 included, on the
    diagonal of a Gram (E[erf(u)^2]) and off it (the pair faces). Tolerance 2.2e-15 relative:
    ~20 rounded operations (s, 1 - s^2, atan2, the factor 2/pi), each within eps/2 = 1.1e-16
    relative, and atan2 and the square roots do not amplify them (condition <= 1). With asin s,
    whose slope ~sqrt(q) as |s| -> 1 multiplies the rounding of s, E[erf(u)^2] was 6e-9 off at
    q = 1e16 and the pair face 1.3e-14 off at q = 1e4, c = 1 (NaN at q = 1e100); with
    atan2(2 q, sqrt(1 + 4 q)) on the diagonal, 4 q overflowed past q = 4.5e307 (0, not 1)."""
    mpmath = pytest.importorskip("mpmath")
    erf = get_activation("erf")

    def exact(q1, q2, c):
        a, b, r = mpmath.mpf(q1), mpmath.mpf(q2), mpmath.mpf(c)
        det = 1 + 2 * a + 2 * b + 4 * a * b * (1 - r) * (1 + r)  # (no cancellation at 40 digits)
        s = 2 * r * mpmath.sqrt(a * b) / mpmath.sqrt((1 + 2 * a) * (1 + 2 * b))
        return float(2 / mpmath.pi * mpmath.asin(s)), float(4 / mpmath.pi / mpmath.sqrt(det))

    with mpmath.workdps(40):
        for q in (1e-8, 1e-3, 0.3, 1.0, 7.0, 1e4, 1e8, 1e12, 1e16, 1e20, 1e100, 1e300, 6e307):
            diag = erf.gram_kernel(np.array([[q]]))[0, 0]
            assert abs(diag - exact(q, q, 1.0)[0]) <= 2.2e-15 * exact(q, q, 1.0)[0], q
            for c in (1.0, -1.0, 1 - 1e-6, 0.3):
                for q2 in (q, q / 4):
                    kernel, grad = exact(q, q2, c)
                    assert abs(float(erf.kernel(q, q2, c)) - kernel) <= 2.2e-15 * abs(kernel), (
                        q, q2, c)
                    assert abs(float(erf.grad_kernel(q, q2, c)) - grad) <= 2.2e-15 * grad, (
                        q, q2, c)


# --- 3. Monte Carlo sanity for every activation.

MC_POINTS = [(1.0, 1.0, 0.5), (0.3, 2.5, -0.7), (30.0, 20.0, 0.95)]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS) + ["leaky_relu(0.2)", "elu(0.5)"])
def test_monte_carlo(name):
    act = get_activation(name)
    rng = np.random.default_rng(12345)
    n = 10**6
    for q1, q2, c in MC_POINTS:
        z1, z2 = rng.standard_normal((2, n))
        u = math.sqrt(q1) * z1
        v = math.sqrt(q2) * (c * z1 + math.sqrt(1 - c * c) * z2)
        samples = {
            "kernel": act.fn(u) * act.fn(v), "grad_kernel": act.grad(u) * act.grad(v),
            "mean": act.fn(u), "grad_mean": act.grad(u),
        }
        for face, s in samples.items():
            args = (q1,) if face.endswith("mean") else (q1, q2, c)
            exact = getattr(act, face)(*args)
            se = s.std() / math.sqrt(n)  # standard error of the sample mean
            # 5 standard errors (tiny floor: constant samples such as linear's phi' have SE 0)
            assert abs(s.mean() - exact) <= 5 * se + 1e-12, (face, q1, q2, c)


# --- 4. Symbolic face.

def test_relu_kernel_symbolic_at_zero_correlation():
    q = sympy.Symbol("q", positive=True)
    k = get_activation("relu").kernel(q, q, sympy.Integer(0), SYMBOLIC)
    assert sympy.simplify(k - q / (2 * sympy.pi)) == 0


@pytest.mark.parametrize("name", CLOSED)
def test_closed_forms_symbolic_equal_numeric(name):
    act = get_activation(name)
    R = sympy.Rational
    pts = [(R(1), R(1), R(1)), (R(1, 3), R(5, 2), R(-7, 10)), (R(30), R(1, 100), R(999, 1000)),
           (R(2), R(2), R(-1)), (R(0), R(3), R(1, 2))]
    q1, q2, c = (np.array(col, dtype=object) for col in zip(*pts))  # object arrays
    for face in ("kernel", "grad_kernel"):
        sym = getattr(act, face)(q1, q2, c, SYMBOLIC)
        num = getattr(act, face)(q1.astype(float), q2.astype(float), c.astype(float), NUMERIC)
        got = np.array([float(sympy.N(e, 30)) for e in sym])
        np.testing.assert_allclose(got, num, rtol=1e-12, atol=1e-12, err_msg=face)
    for face in ("mean", "grad_mean"):
        sym = getattr(act, face)(q1, SYMBOLIC)
        got = np.array([float(sympy.N(e, 30)) for e in np.broadcast_to(sym, q1.shape)])
        np.testing.assert_allclose(got, getattr(act, face)(q1.astype(float)), rtol=1e-12,
                                   atol=1e-12, err_msg=face)


def test_quadrature_activations_symbolic_are_integrals():
    tanh = get_activation("tanh")
    q, c = sympy.symbols("q c", positive=True)
    assert isinstance(tanh.kernel(q, q, c, SYMBOLIC), sympy.Integral)
    assert isinstance(tanh.mean(q, SYMBOLIC), sympy.Integral)
    R = sympy.Rational
    cases = [
        (tanh.mean(R(3, 2), SYMBOLIC), tanh.mean(1.5)),
        (tanh.grad_mean(R(3, 2), SYMBOLIC), tanh.grad_mean(1.5)),
        (tanh.kernel(R(3, 2), R(3, 2), 1, SYMBOLIC), tanh.kernel(1.5, 1.5, 1.0)),
        (tanh.kernel(R(1), R(2), R(1, 2), SYMBOLIC), tanh.kernel(1.0, 2.0, 0.5)),
    ]
    for expr, num in cases:
        assert abs(float(expr.evalf()) - num) < 1e-8
    assert abs(float(cases[0][0].doit()) - cases[0][1]) < 1e-8


# --- 5. Names.

def test_unknown_activation():
    with pytest.raises(ConfigError) as err:
        get_activation("bogus")
    for name in ACTIVATIONS:
        assert name in str(err.value)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=12).filter(lambda s: s not in ACTIVATIONS))
def test_unknown_names_raise(name):
    with pytest.raises(ConfigError):
        get_activation(name)


# --- 6. Array faces: phi' is the derivative of phi.

@pytest.mark.parametrize("name", sorted(ACTIVATIONS) + ["leaky_relu(0.2)", "elu(0.5)"])
def test_grad_is_derivative(name):
    act = get_activation(name)
    x = np.linspace(-6, 6, 241)
    x = x[np.abs(x) > 1e-3]  # off relu's kink
    h = 1e-5
    fd = (act.fn(x + h) - act.fn(x - h)) / (2 * h)  # error ~ h^2 |phi'''| / 6 + 1e-16 |phi| / h
    np.testing.assert_allclose(act.grad(x), fd, rtol=0, atol=1e-8)
    if name == "relu":
        assert act.grad(np.array([0.0]))[0] == 0.0  # relu'(0) := 0


# --- Shapes, limits and the fast paths.

@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_shapes_limits_and_symmetry(name):
    act = get_activation(name)
    rng = np.random.default_rng(0)
    q = rng.uniform(0.2, 3.0, (4, 3))
    c = np.clip(rng.uniform(-1, 1, (4, 3, 3)), -1, 1)
    c = (c + np.swapaxes(c, -1, -2)) / 2
    c[..., np.arange(3), np.arange(3)] = 1.0
    q1, q2 = q[..., :, None], q[..., None, :]
    for face in ("kernel", "grad_kernel"):
        K = getattr(act, face)(q1, q2, c)
        assert K.shape == (4, 3, 3) and np.all(np.isfinite(K))
        np.testing.assert_allclose(K, np.swapaxes(K, -1, -2), rtol=1e-14, atol=1e-300)
        diag = getattr(act, face)(q, q, 1.0)
        np.testing.assert_allclose(np.diagonal(K, axis1=-2, axis2=-1), diag, rtol=1e-13)
    # q = 0 and |c| = 1 (and beyond, clipped) stay finite and take the limit
    zero = act.kernel(0.0, 2.0, np.array([-1.0, 0.3, 1.0, 1.0 + 1e-15]))
    np.testing.assert_allclose(zero, act.fn(np.array(0.0)) * act.mean(2.0), atol=1e-14)
    assert np.all(np.isfinite(act.grad_kernel(0.0, 0.0, np.array([-1.0, 1.0]))))
    assert act.mean(np.zeros(2)).shape == (2,)
    # c -> 1 is continuous across the switch to the 1-D rule
    near = act.kernel(2.0, 3.0, np.array([1 - 1e-13, 1 - 1e-9]))
    assert abs(near[0] - near[1]) < 1e-7


@pytest.mark.parametrize("name", CLOSED + QUAD)
def test_grad_faces_at_zero_variance_take_phi_prime_at_0(name):
    """A Gaussian of variance exactly 0 is the point 0, where a real net computes phi'(0) of
    the array face (relu'(0) := 0): E[phi'(u) phi'(v)] = phi'(0) E[phi'(v)] and E[phi'(u)] =
    phi'(0) there, for the closed forms as for the quadrature (which evaluates phi' at 0 itself).
    relu's closed forms gave their limit q -> 0+, 1/2, instead; a Pre-LN net on constant
    features then had a gradient 1e5 larger per layer than the Monte Carlo's
    (test_montecarlo_theory)."""
    act = get_activation(name)
    g0 = float(act.grad(np.array(0.0)))
    c = np.array([-1.0, 0.3, 1.0])
    np.testing.assert_allclose(act.grad_kernel(0.0, 2.0, c), g0 * act.grad_mean(2.0), rtol=1e-12)
    np.testing.assert_allclose(act.grad_kernel(2.0, 0.0, c), g0 * act.grad_mean(2.0), rtol=1e-12)
    np.testing.assert_allclose(act.grad_kernel(0.0, 0.0, c), g0**2, rtol=1e-12)
    assert act.grad_mean(np.zeros(2)).tolist() == [g0, g0]
    K = np.array([[0.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(act.gram_grad_kernel(K),
                               [[g0**2, g0 * act.grad_mean(2.0)],
                                [g0 * act.grad_mean(2.0), act.grad_kernel(2.0, 2.0, 1.0)]],
                               rtol=1e-12)
    # a variance above 0, however small, keeps the Gaussian face (relu: 1/2)
    assert act.grad_mean(1e-300) == pytest.approx(act.grad_mean(1e-12), rel=1e-6)
    if name in CLOSED:  # the symbolic face at a sympy zero (a symbol keeps the closed form)
        zero, three = sympy.Integer(0), sympy.Integer(3)
        assert float(act.grad_mean(zero, SYMBOLIC)) == pytest.approx(g0, rel=1e-14, abs=1e-300)
        assert float(act.grad_kernel(zero, three, sympy.Rational(1, 2), SYMBOLIC)) == \
            pytest.approx(g0 * act.grad_mean(3.0), rel=1e-14, abs=1e-300)


@pytest.mark.parametrize("name", QUAD)
def test_tables_match_direct_quadrature(name):
    act = get_activation(name)
    q = np.geomspace(1e-7, 1e5, 97) * 1.01  # off the table's nodes
    for face, h in (("mean", act.fn), ("grad_mean", act.grad)):
        direct = expect(h, 0.0, np.sqrt(q), act._bend)
        np.testing.assert_allclose(getattr(act, face)(q), direct, rtol=1e-12, atol=1e-15)
    direct = expect(lambda x: act.fn(x) ** 2, 0.0, np.sqrt(q), act._bend)
    np.testing.assert_allclose(act.kernel(q, q, 1.0), direct, rtol=1e-12)


# --- Parametric families.

def test_parametric_names():
    """leaky_relu(s), elu(a): the parameter is read from the name; the family name is its
    default (torch's); bad parameters are refused by name."""
    from sigprop.kernels.gaussian import activation_name

    assert get_activation("leaky_relu(0.01)").kernel(1.0, 2.0, 0.3) == \
        get_activation("leaky_relu").kernel(1.0, 2.0, 0.3)
    assert get_activation("leaky_relu(0.20)") is get_activation("leaky_relu(0.2)")
    assert activation_name("leaky_relu", 0.01) == "leaky_relu"
    assert activation_name("elu", 0.5) == "elu(0.5)"
    x = np.array([-2.0, 3.0])
    np.testing.assert_allclose(get_activation("leaky_relu(0.2)").fn(x), [-0.4, 3.0])
    np.testing.assert_allclose(get_activation("leaky_relu(0)").kernel(1.0, 2.0, 0.3),
                               get_activation("relu").kernel(1.0, 2.0, 0.3), rtol=1e-14)
    np.testing.assert_allclose(get_activation("leaky_relu(1)").kernel(1.0, 2.0, 0.3),
                               get_activation("linear").kernel(1.0, 2.0, 0.3), rtol=1e-14)
    for bad in ("leaky_relu(-1)", "leaky_relu(x)", "elu(inf)", "tanh(2)", "leaky_relu()"):
        with pytest.raises(ConfigError):
            get_activation(bad)


def test_one_name_per_activation():
    """A family member spelled at its default, or with another float spelling, is the same op
    (equal nets, one cache key): leaky_relu(0.01) is leaky_relu, elu(1) is elu."""
    assert sp.Act("leaky_relu(0.01)") == sp.Act("leaky_relu")
    assert sp.Act("elu(1.0)") == sp.Act("elu") and sp.Act("elu(1)").name == "elu"
    assert sp.Act("leaky_relu(0.20)") == sp.Act("leaky_relu(0.2)") != sp.Act("leaky_relu")
