"""Counter-based random streams for the Monte Carlo: every draw is named, none is sequential.

A draw is named by ``(root seed, seed index, block, op, direction)``: the Philox key is fixed by
(root seed, seed index) and the counter is ``(element, block, op, direction)``. Philox (Salmon et
al. 2011, "Parallel random numbers: as easy as 1, 2, 3") is a keyed bijection of the counter, so
distinct names never share a random word. Any layer's weights can be regenerated on the backward
pass instead of stored, and a seed's numbers do not depend on the other seeds drawn with it
(chunking the seeds changes nothing).

* NumPy: ``numpy.random.Philox`` (Philox4x64-10) with key (root, seed), started at counter
  (0, block, op, direction). A float32 draw of at least ``BOX_MULLER_MIN`` normals per seed (a
  weight matrix, a wide batch) is :func:`box_muller32` of the stream's words, ~2.4x the rate of
  numpy's float32 ziggurat (230 against 95 M normals/s on a 2-core x86 with AVX-512; the
  explicit sampler's cost is this draw); smaller float32 draws and every float64 draw are
  numpy's ziggurat on the same stream (a small Box-Muller draw costs more in call overhead than
  it saves). Each draw's numbers are a function of (name, shape, dtype) alone: a seed's numbers never depend on the other seeds of its chunk, nor on
  the memory plan. Box-Muller runs numpy's float32 log/cos/sin, so its numbers are the same on
  one machine and numpy build and agree elsewhere to the last bits of those functions; the
  ziggurat's are the same everywhere. (Before this draw, float32 draws of any size were the
  ziggurat's: float32 runs with such draws, explicit weights at n_in n_out >= 2^16 or a
  conditional draw of B n >= 2^16, now give other numbers, of the same law.)
* CuPy: one batched draw for all seeds: Philox4x32-10 with the 64-bit key K(root, seed) =
  words 0-1 of Philox4x32-10 keyed by the root at counter (seed, 0, 0, 0), counter
  (element, block, op, direction), then Box-Muller; one CUDA kernel per draw
  (:data:`_DRAW_SRC`, the same integer and float64 operations as :func:`box_muller_philox`).

Both backends name streams the same way; they do not produce the same numbers.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np

# Directions: which random object of an op a stream draws (the last counter word).
FORWARD, BACKWARD, BIAS, INPUT, COTANGENT = range(5)

_MASK = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
_MUL = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))  # Philox4x32 multipliers
_WEYL = (np.uint64(0x9E3779B9), np.uint64(0xBB67AE85))  # key schedule increments
_ROUNDS = 10


def philox4x32(ctr, key):
    """Philox4x32-10 on 32-bit words held in uint64 arrays (any array module, broadcasting).

    ``ctr``: 4 word arrays, ``key``: 2 word arrays; returns the 4 output words.
    """
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(_ROUNDS):
        p0, p1 = c0 * _MUL[0], c2 * _MUL[1]  # exact 64-bit products of 32-bit words
        c0, c1, c2, c3 = (p1 >> _SHIFT) ^ c1 ^ k0, p1 & _MASK, (p0 >> _SHIFT) ^ c3 ^ k1, p0 & _MASK
        k0, k1 = (k0 + _WEYL[0]) & _MASK, (k1 + _WEYL[1]) & _MASK
    return c0, c1, c2, c3


WIDTH_STREAMS = "each width w drawn with root seed root_seed XOR (w << 32) (rng.width_root_seed)"
MAX_STREAM_WIDTH = 1 << 31  # widths below it keep width_root_seed's roots distinct and 64-bit


def width_root_seed(root_seed: int, width: int, salt: int = 0) -> int:
    """The root seed a run draws width ``width`` with (``width`` < MAX_STREAM_WIDTH): the run's
    with the width XORed into its high word (and ``salt``, a run of its own beside it, into bit
    63). Every width then draws its own streams: the key is (root, seed), not the width, so
    under one root seed seeds 0..S-1 at two widths share their draws (per-seed correlation
    0.6-0.7 across neighbouring widths of sims/finite_width_correction.toml, a review), and a
    fit over the widths, which takes their estimates as independent, understated its standard
    errors by 17-40 %. A sim's run records the marker WIDTH_STREAMS in its ``streams`` attr."""
    if not 0 < width < MAX_STREAM_WIDTH:
        raise ValueError(f"width {width}: the streams take widths 1 .. {MAX_STREAM_WIDTH - 1}")
    return root_seed ^ (width << 32) ^ (salt << 63)


def seed_keys(root_seed: int, seeds) -> np.ndarray:
    """The 64-bit Philox4x32 key of each seed as 2 words, shape (S, 2) (the CuPy draw)."""
    seeds = np.asarray(seeds, dtype=np.uint64)
    zero = np.zeros_like(seeds)
    key = (np.uint64(root_seed & 0xFFFFFFFF), np.uint64(root_seed >> 32))
    return np.stack(philox4x32((seeds, zero, zero, zero), key)[:2], axis=-1)


def _box_muller(xp):
    """The Box-Muller kernel with ``xp``'s ufuncs (the reference of the CUDA draw)."""

    def box_muller_philox(i, k0, k1, block, op, direction):
        """Four standard normals (float64) from the Philox4x32-10 block at counter
        (i, block, op, direction) under key (k0, k1).

        Uniforms u = (w + 1/2) / 2^32 lie in (0, 1), so log u is finite; the normals are exact
        Box-Muller pairs r (cos, sin)(2 pi v), r = sqrt(-2 log u), truncated only beyond 6.7
        sigma (probability 2e-11 per draw).
        """
        w = philox4x32((i, block, op, direction), (k0, k1))
        u = [(x.astype(np.float64) + 0.5) * 2.0**-32 for x in w]
        r0, r1 = (-2.0 * xp.log(u[0])) ** 0.5, (-2.0 * xp.log(u[2])) ** 0.5
        t0, t1 = 2 * np.pi * u[1], 2 * np.pi * u[3]
        return r0 * xp.cos(t0), r0 * xp.sin(t0), r1 * xp.cos(t1), r1 * xp.sin(t1)

    return box_muller_philox


box_muller_philox = _box_muller(np)


# The CuPy draw: box_muller_philox for every (seed, block of 4) in one launch, written straight
# into the (S, n) output in its dtype (a cupy.fuse of the same function needed 7 launches per
# draw: counters, the kernel, a 4-way stack, the cast).
_DRAW_SRC = r"""
extern "C" __global__ void philox_box_muller(const unsigned long long* keys, OUT* out,
                                             const long long n, const long long nblk,
                                             const long long total,
                                             const unsigned long long block,
                                             const unsigned long long op,
                                             const unsigned long long direction) {
    const unsigned long long M = 0xFFFFFFFFull;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long s = idx / nblk, i = idx - s * nblk;
        unsigned long long c0 = i, c1 = block, c2 = op, c3 = direction;
        unsigned long long k0 = keys[2 * s], k1 = keys[2 * s + 1];
        for (int r = 0; r < 10; r++) {
            const unsigned long long p0 = c0 * 0xD2511F53ull, p1 = c2 * 0xCD9E8D57ull;
            const unsigned long long n0 = (p1 >> 32) ^ c1 ^ k0, n2 = (p0 >> 32) ^ c3 ^ k1;
            c0 = n0; c1 = p1 & M; c2 = n2; c3 = p0 & M;
            k0 = (k0 + 0x9E3779B9ull) & M; k1 = (k1 + 0xBB67AE85ull) & M;
        }
        const double u0 = ((double)c0 + 0.5) * 2.3283064365386963e-10;
        const double u1 = ((double)c1 + 0.5) * 2.3283064365386963e-10;
        const double u2 = ((double)c2 + 0.5) * 2.3283064365386963e-10;
        const double u3 = ((double)c3 + 0.5) * 2.3283064365386963e-10;
        const double r0 = pow(-2.0 * log(u0), 0.5), r1 = pow(-2.0 * log(u2), 0.5);
        const double t0 = 6.283185307179586 * u1, t1 = 6.283185307179586 * u3;
        const double z[4] = {r0 * cos(t0), r0 * sin(t0), r1 * cos(t1), r1 * sin(t1)};
        OUT* o = out + s * n + 4 * i;
        for (int k = 0; k < 4 && 4 * i + k < n; k++) o[k] = (OUT)z[k];
    }
}
"""


@functools.cache
def _draw_kernel(xp, dtype):
    ctype = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]
    return xp.RawKernel(f"#define OUT {ctype}\n" + _DRAW_SRC, "philox_box_muller")


def cuda_normal(xp, keys, name, n: int, dtype):
    """philox_normal(xp, keys, name, n, dtype) for CuPy (keys on the device) in one launch."""
    out = xp.empty((keys.shape[0], n), dtype=dtype)
    nblk = (n + 3) // 4
    total = keys.shape[0] * nblk
    if total:
        threads = 256
        blocks = min((total + threads - 1) // threads, 65536)
        _draw_kernel(xp, dtype)((blocks,), (threads,),
                                (keys, out, np.int64(n), np.int64(nblk), np.int64(total),
                                 *(np.uint64(w) for w in name)))
    return out


def philox_normal(xp, keys, name, n: int, dtype, kernel=box_muller_philox):
    """(S, n) standard normals for (S, 2) seed keys and the stream ``name`` = (block, op,
    direction), on array module ``xp`` (the CuPy draw; runs on NumPy too)."""
    keys = xp.asarray(keys, dtype=xp.uint64)
    i = xp.arange((n + 3) // 4, dtype=xp.uint64)[None, :]
    words = [xp.uint64(w) for w in name]
    z = xp.stack(kernel(i, keys[:, :1], keys[:, 1:], *words), axis=-1)
    return z.reshape(keys.shape[0], -1)[:, :n].astype(dtype)


def uniform_of_normal(z, xp=np):
    """Uniform draws on (-sqrt 3, sqrt 3) (mean 0, variance 1) from standard normals z, by the
    probability integral transform sqrt(3) (2 Phi(z) - 1) = sqrt(3) erf(z / sqrt 2): exactly
    uniform when z is exactly normal, and named by the same stream."""
    if xp is np:
        from scipy.special import erf
    else:
        from cupyx.scipy.special import erf
    return (np.sqrt(3.0) * erf(z / np.sqrt(2.0))).astype(z.dtype, copy=False)


BOX_MULLER_MIN = 1 << 16  # float32 draws of at least this many normals per seed: box_muller32
BOX_MULLER_BLOCK = 4096  # normals per Box-Muller block (2048 words; part of the stream's contract)
_BLOCKS_PER_STEP = 16  # blocks per vectorised step: 0.8 MiB of temporaries (draw_workspace)
_2_M24 = np.float32(2.0**-24)
_TWO_PI_2_M24 = np.float32(2 * np.pi * 2.0**-24)


def box_muller32(bits, out) -> None:
    """Fill the float32 vector ``out`` (n values) with standard normals from the next words of
    the bit generator ``bits`` (float32 maths throughout).

    The 64-bit words, read as little-endian 32-bit halves v_0, v_1, ..., are taken in blocks of
    P = ``BOX_MULLER_BLOCK``: block b is v_(Pb + j), j < P; let k_j = floor(v_(Pb+j) / 2^8), 24
    random bits, and H = P/2. Normal Pb + j is r_j cos(t_j) and normal Pb + H + j is r_j sin(t_j),
    j < H, with r_j = sqrt(-2 log((k_j + 1) 2^-24)) and t_j = 2 pi k_(H+j) 2^-24: Box-Muller, whose
    pairs are exactly independent normals for uniforms on (0, 1] and [0, 2 pi); here the
    uniforms are on 2^24-point grids (exact in float32), so |z| <= sqrt(48 log 2) = 5.77 (a
    normal exceeds it with probability 8e-9). A draw of n normals uses ceil(n / P) blocks and
    keeps the first n, so a longer draw of the same name extends a shorter one block by block.
    """
    n, P, H = out.size, BOX_MULLER_BLOCK, BOX_MULLER_BLOCK // 2
    blocks = -(-n // P)
    for b0 in range(0, blocks, _BLOCKS_PER_STEP):
        g = min(_BLOCKS_PER_STEP, blocks - b0)
        k = bits.random_raw(g * H).astype("<u8", copy=False).view("<u4").reshape(g, P)
        k >>= np.uint32(8)
        r = k[:, :H].astype(np.float32)
        r += np.float32(1.0)  # k + 1 <= 2^24: exact
        r *= _2_M24
        np.log(r, out=r)
        r *= np.float32(-2.0)
        np.sqrt(r, out=r)
        t = k[:, H:].astype(np.float32)
        t *= _TWO_PI_2_M24
        lo = b0 * P
        hi = min(n, lo + g * P)
        z = out[lo:hi].reshape(g, P) if hi - lo == g * P else np.empty((g, P), np.float32)
        np.cos(t, out=z[:, :H])
        np.sin(t, out=z[:, H:])
        z[:, :H] *= r
        z[:, H:] *= r
        if hi - lo < g * P:
            out[lo:hi] = z.reshape(-1)[: hi - lo]


def uses_box_muller(n: int, dtype) -> bool:
    """Whether a host draw of ``n`` normals of ``dtype`` is :func:`box_muller32` (else the
    ziggurat)."""
    return np.dtype(dtype) == np.float32 and n >= BOX_MULLER_MIN


def draw_workspace(n: int, dtype) -> int:
    """Bytes of temporaries while one seed's draw of ``n`` normals of ``dtype`` runs: at most
    12 per normal of a :func:`box_muller32` step (words 4, r and t 2 each, a partial last block
    4); the ziggurat writes into its output."""
    if not uses_box_muller(n, dtype):
        return 0
    return 12 * min(n, _BLOCKS_PER_STEP * BOX_MULLER_BLOCK) + 4096  # + array headers


_LOCAL = threading.local()


def _thread_generator():
    """This thread's Philox generator: every draw sets its whole state (key, counter, buffer)
    first, so sharing it between Streams of one thread changes no number."""
    gen = getattr(_LOCAL, "gen", None)
    if gen is None:
        gen = _LOCAL.gen = np.random.Generator(np.random.Philox(key=np.zeros(2, dtype=np.uint64)))
    return gen


class Streams:
    """Normal draws for the seeds ``seeds`` of one chunk, on array module ``xp``."""

    def __init__(self, xp, root_seed: int, seeds):
        self.xp, self.root_seed, self.seeds = xp, int(root_seed), np.asarray(seeds)
        if xp is np:  # one generator per thread, re-keyed per draw (3x cheaper than a new one)
            self._gen = _thread_generator()
            self._bits = self._gen.bit_generator
        else:
            # on the device once, not copied from the host at every draw
            self._keys = xp.asarray(seed_keys(self.root_seed, self.seeds))

    def normal(self, block: int, op: int, direction: int, shape, dtype):
        """Standard normals of shape (S, *shape), one independent stream per seed."""
        shape = tuple(int(s) for s in shape)
        if self.xp is not np:
            z = cuda_normal(self.xp, self._keys, (block, op, direction), int(np.prod(shape)),
                            dtype)
            return z.reshape((-1,) + shape)
        out = np.empty((len(self.seeds),) + shape, dtype=dtype)
        counter = np.array([0, block, op, direction], dtype=np.uint64)
        box_muller = uses_box_muller(math.prod(shape), dtype)
        for s, seed in enumerate(self.seeds):
            key = np.array([self.root_seed, seed], dtype=np.uint64)
            self._bits.state = {"bit_generator": "Philox", "buffer": np.zeros(4, dtype=np.uint64),
                                "state": {"counter": counter, "key": key},
                                "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
            if box_muller:
                box_muller32(self._bits, out[s].reshape(-1))
            else:
                self._gen.standard_normal(out=out[s], dtype=dtype)
        return out
