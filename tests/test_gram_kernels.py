"""Activation kernels over stacks of Grams: evaluated on the B(B+1)/2 distinct entries and
mirrored, they equal the face evaluated entry by entry on all B^2 (q_a, q_b, c_ab)."""

import numpy as np
import pytest

from sigprop.kernels.gaussian import ACTIVATIONS, _gram_args
from sigprop.state.ns import NUMERIC


def _grams(rng, shape, B):
    """Random PSD Grams, with a zero input (q = 0) and two identical inputs (c = 1) among them."""
    X = rng.normal(size=shape + (B, B + 1)) * rng.uniform(0.1, 3.0, size=shape + (B, 1))
    X[..., 1, :] = 0.0
    X[..., 3, :] = X[..., 2, :]
    K = X @ np.swapaxes(X, -1, -2)
    K += 1e-13 * np.abs(K) * rng.uniform(-1, 1, size=K.shape)  # rounding-level asymmetry, as
    return np.asfortranarray(K)  # the laws leave it: c_ab and c_ba are averaged


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("face", ["gram_kernel", "gram_grad_kernel"])
def test_gram_faces_equal_the_entrywise_face(name, face):
    act = ACTIVATIONS[name]
    K = _grams(np.random.default_rng(7), (3, 2), 5)
    got = getattr(act, face)(K)
    entrywise = (act.kernel if face == "gram_kernel" else act.grad_kernel)(*_gram_args(K, NUMERIC))
    assert got.shape == K.shape
    np.testing.assert_array_equal(got, np.swapaxes(got, -1, -2))  # mirrored exactly
    a, b = np.triu_indices(5, 1)
    # a < b: the same operations on the same numbers; a > b: the mirror of a product whose
    # factors the entrywise face multiplies in the other order; a = b: the closed form of
    # E[phi(u)^2] (relu q/2, erf (2/pi) asin(2q/(1+2q))) against the face at c = 1, the same
    # value by other operations (a few ulp: rounding only)
    np.testing.assert_array_equal(got[..., a, b], entrywise[..., a, b])
    np.testing.assert_allclose(got, entrywise, rtol=1e-14, atol=1e-300)

