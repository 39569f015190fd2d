"""The NumPy streams' float32 Box-Muller draw (sigprop.state.rng.box_muller32): its law, its
documented element-by-element definition, and the naming contract of the streams."""

import math

import numpy as np
import pytest
from scipy import stats

from sigprop.state.rng import BOX_MULLER_BLOCK, BOX_MULLER_MIN, Streams, box_muller32

ROOT = 7
# float32 against the float64 definition: r carries a relative error of a few float32 ulps
# (6e-8 each: the log, its product, the sqrt): RTOL; the angle t <= 2 pi is rounded to float32
# (<= 2.4e-7) and its constant 2 pi 2^-24 too (relative 6e-8: <= 3.7e-7 at t = 2 pi), so
# cos t and sin t are off by up to ~6e-7 absolute (plus their own ulp), times r <= 5.77: ATOL
RTOL, ATOL = 2e-6, 5e-6


def _bits(seed, name):
    """numpy's Philox at the stream (ROOT, seed, name), as Streams.normal keys it."""
    return np.random.Philox(counter=np.array([0, *name], dtype=np.uint64),
                            key=np.array([ROOT, seed], dtype=np.uint64))


def _reference(seed, name, n):
    """The docstring's definition, element by element in float64 (independent of the blocked,
    vectorised code): block b of P, k_j = v_(Pb+j) >> 8, r_j = sqrt(-2 log((k_j + 1) 2^-24)),
    normal Pb + j = r_j cos(t_j), normal Pb + H + j = r_j sin(t_j), t_j = 2 pi k_(H+j) 2^-24."""
    P, H = BOX_MULLER_BLOCK, BOX_MULLER_BLOCK // 2
    blocks = -(-n // P)
    w = _bits(seed, name).random_raw(blocks * H)
    v = np.empty(blocks * P, dtype=np.int64)
    v[0::2], v[1::2] = w & 0xFFFFFFFF, w >> 32  # little-endian halves
    k = (v >> 8).reshape(blocks, P)
    r = np.sqrt(-2.0 * np.log((k[:, :H] + 1) * 2.0**-24))
    t = 2 * np.pi * k[:, H:] * 2.0**-24
    return np.concatenate([r * np.cos(t), r * np.sin(t)], axis=1).reshape(-1)[:n]


def test_box_muller_draw_is_its_documented_definition():
    # n: several vectorised steps (rng._BLOCKS_PER_STEP = 16 blocks each) and a partial last block
    n = 130 * BOX_MULLER_BLOCK + 1234
    got = Streams(np, ROOT, [3]).normal(2, 1, 0, (n,), np.float32)[0]
    want = _reference(3, (2, 1, 0), n)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_box_muller_law():
    """2^21 draws: mean, variance, fourth moment and the KS distance of N(0, 1)."""
    n = 1 << 21
    z = np.empty(n, dtype=np.float32)
    box_muller32(_bits(0, (1, 2, 3)), z)
    z = z.astype(np.float64)
    se = 1 / math.sqrt(n)  # standard errors: mean 1, variance sqrt 2, E z^4 sqrt(105 - 9) (/sqrt n)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * math.sqrt(2) * se
    assert abs(np.mean(z**4) - 3) < 5 * math.sqrt(96) * se
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert np.abs(z).max() <= math.sqrt(48 * math.log(2)) + 1e-5


def test_pairs_are_independent():
    """cos and sin halves of a block: uncorrelated, and so are their squares (Box-Muller pairs
    are independent; a wrong pairing, e.g. one uniform for both, correlates the squares)."""
    n = 1 << 21
    z = Streams(np, ROOT, [1]).normal(0, 0, 2, (n,), np.float32)[0].astype(np.float64)
    P, H = BOX_MULLER_BLOCK, BOX_MULLER_BLOCK // 2
    a, b = z.reshape(-1, P)[:, :H].ravel(), z.reshape(-1, P)[:, H:].ravel()
    se = 1 / math.sqrt(a.size)  # Pearson r of independent variables: sd 1/sqrt(m)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 * se
    assert abs(np.corrcoef(a * a, b * b)[0, 1]) < 5 * se


def test_which_draws_use_box_muller():
    """float32 draws of >= BOX_MULLER_MIN normals per seed: Box-Muller; smaller float32 draws and
    float64 draws: numpy's ziggurat on the same stream."""
    zig = np.random.Generator(_bits(4, (1, 0, 0)))
    small = (BOX_MULLER_MIN // 8 - 1, 8)
    np.testing.assert_array_equal(Streams(np, ROOT, [4]).normal(1, 0, 0, small, np.float32)[0],
                                  zig.standard_normal(small, dtype=np.float32))
    zig = np.random.Generator(_bits(4, (1, 0, 0)))
    big = (BOX_MULLER_MIN // 8, 8)
    np.testing.assert_array_equal(Streams(np, ROOT, [4]).normal(1, 0, 0, big, np.float64)[0],
                                  zig.standard_normal(big))
    got = Streams(np, ROOT, [4]).normal(1, 0, 0, big, np.float32)[0]
    np.testing.assert_allclose(got.ravel(), _reference(4, (1, 0, 0), got.size), rtol=RTOL,
                               atol=ATOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_seeds_draw_is_its_own_and_names_differ(dtype):
    shape = (64, 1100)  # above BOX_MULLER_MIN in float32, a partial last block
    a = Streams(np, ROOT, np.arange(5)).normal(3, 2, 1, shape, dtype)
    b = Streams(np, ROOT, [2, 4]).normal(3, 2, 1, shape, dtype)
    np.testing.assert_array_equal(a[[2, 4]], b)  # chunking the seeds changes nothing
    for other in [(4, 2, 1), (3, 3, 1), (3, 2, 0)]:  # another block, op, direction
        c = Streams(np, ROOT, [2]).normal(*other, shape, dtype)[0]
        assert abs(np.corrcoef(c.ravel(), a[2].ravel())[0, 1]) < 5 / math.sqrt(c.size)
    d = Streams(np, ROOT + 1, [2]).normal(3, 2, 1, shape, dtype)[0]  # another root seed
    assert abs(np.corrcoef(d.ravel(), a[2].ravel())[0, 1]) < 5 / math.sqrt(d.size)


def test_a_longer_draw_extends_a_shorter_block_by_block():
    n = 20 * BOX_MULLER_BLOCK
    short = Streams(np, ROOT, [0]).normal(0, 1, 0, (n,), np.float32)[0]
    long = Streams(np, ROOT, [0]).normal(0, 1, 0, (n + 5 * BOX_MULLER_BLOCK + 7,), np.float32)[0]
    np.testing.assert_array_equal(long[:n], short)


def test_width_root_seed_is_its_documented_xor_and_keeps_every_stream_apart():
    """width_root_seed is part of every published Monte Carlo number (a sim's run draws width w
    with it, its ``streams`` attr records WIDTH_STREAMS), so its value is pinned to the marker's
    words, root XOR (w << 32), salt into bit 63, by hand: root 2024 at w = 256 is 2024 + 2^40 =
    1099511629800, with salt 1 that plus 2^63, and root 2^40 + 7 gives 7. Over widths 1 ..
    4096 and both salts of one root the roots are distinct and fit the 64-bit key Streams
    takes; width 0 and 2^31 are refused.
    Catches: a shift of 31 (the numbers drawn change, the marker lies); + for XOR; the salt
    into bit 62 (a width with bit 30 set would share the fresh fit's streams); a dropped salt."""
    from sigprop.state.rng import MAX_STREAM_WIDTH, WIDTH_STREAMS, width_root_seed

    assert "(w << 32)" in WIDTH_STREAMS
    assert width_root_seed(2024, 256) == 1099511629800
    assert width_root_seed(2024, 256, salt=1) == 1099511629800 + 2**63
    assert width_root_seed(2**40 + 7, 256) == 7  # (XOR: w's bit 40 clears the root's)
    big = (1 << 30) | 5000  # bit 30 set: its root must not be another width's salted one
    assert width_root_seed(2024, big) == 2024 + big * 2**32
    roots = {width_root_seed(ROOT, w, s) for w in range(1, 4097) for s in (0, 1)}
    roots |= {width_root_seed(ROOT, w, s) for w in (big, big ^ (1 << 30)) for s in (0, 1)}
    assert len(roots) == 2 * 4096 + 4 and ROOT not in roots
    assert all(0 <= r < 2**64 for r in roots)
    for bad in (0, MAX_STREAM_WIDTH):
        with pytest.raises(ValueError, match="widths 1 .."):
            width_root_seed(ROOT, bad)
