"""Counter-based random streams for the Monte Carlo: every draw is named, none is sequential.

A draw is named by ``(root seed, seed index, block, op, direction)``: the Philox key is fixed by
(root seed, seed index) and the counter is ``(element, block, op, direction)``. Philox (Salmon et
al. 2011, "Parallel random numbers: as easy as 1, 2, 3") is a keyed bijection of the counter, so
distinct names never share a random word. Any layer's weights can be regenerated on the backward
pass instead of stored, and a seed's numbers do not depend on the other seeds drawn with it
(chunking the seeds changes nothing).

* NumPy: ``numpy.random.Philox`` (Philox4x64-10) with key (root, seed), started at counter
  (0, block, op, direction); ziggurat normals.
* CuPy: one batched draw for all seeds: Philox4x32-10 with the 64-bit key K(root, seed) =
  words 0-1 of Philox4x32-10 keyed by the root at counter (seed, 0, 0, 0), counter
  (element, block, op, direction), then Box-Muller; fused into one kernel.

Both backends name streams the same way; they do not produce the same numbers.
"""

from __future__ import annotations

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


def seed_keys(root_seed: int, seeds) -> np.ndarray:
    """The 64-bit Philox4x32 key of each seed as 2 words, shape (S, 2) (the CuPy draw)."""
    seeds = np.asarray(seeds, dtype=np.uint64)
    zero = np.zeros_like(seeds)
    key = (np.uint64(root_seed & 0xFFFFFFFF), np.uint64(root_seed >> 32))
    return np.stack(philox4x32((seeds, zero, zero, zero), key)[:2], axis=-1)


def _box_muller(xp):
    """The Box-Muller kernel with ``xp``'s ufuncs (``cupy.fuse`` traces only CuPy ufuncs)."""

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


def philox_normal(xp, keys, name, n: int, dtype, kernel=box_muller_philox):
    """(S, n) standard normals for (S, 2) seed keys and the stream ``name`` = (block, op,
    direction), on array module ``xp`` (the CuPy draw; runs on NumPy too)."""
    keys = xp.asarray(keys, dtype=xp.uint64)
    i = xp.arange((n + 3) // 4, dtype=xp.uint64)[None, :]
    words = [xp.uint64(w) for w in name]
    z = xp.stack(kernel(i, keys[:, :1], keys[:, 1:], *words), axis=-1)
    return z.reshape(keys.shape[0], -1)[:, :n].astype(dtype)


class Streams:
    """Normal draws for the seeds ``seeds`` of one chunk, on array module ``xp``."""

    def __init__(self, xp, root_seed: int, seeds):
        self.xp, self.root_seed, self.seeds = xp, int(root_seed), np.asarray(seeds)
        if xp is np:  # one generator, re-keyed per draw (3x cheaper than a new one)
            self._bits = np.random.Philox(key=np.zeros(2, dtype=np.uint64))
            self._gen = np.random.Generator(self._bits)
        else:
            self._keys = seed_keys(self.root_seed, self.seeds)
            self._kernel = xp.fuse(kernel_name="philox_box_muller")(_box_muller(xp))

    def normal(self, block: int, op: int, direction: int, shape, dtype):
        """Standard normals of shape (S, *shape), one independent stream per seed."""
        shape = tuple(int(s) for s in shape)
        if self.xp is not np:
            z = philox_normal(self.xp, self._keys, (block, op, direction), int(np.prod(shape)),
                              dtype, self._kernel)
            return z.reshape((-1,) + shape)
        out = np.empty((len(self.seeds),) + shape, dtype=dtype)
        counter = np.array([0, block, op, direction], dtype=np.uint64)
        for s, seed in enumerate(self.seeds):
            key = np.array([self.root_seed, seed], dtype=np.uint64)
            self._bits.state = {"bit_generator": "Philox", "buffer": np.zeros(4, dtype=np.uint64),
                                "state": {"counter": counter, "key": key},
                                "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
            self._gen.standard_normal(out=out[s], dtype=dtype)
        return out
