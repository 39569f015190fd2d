"""Array state and shared array maths of the Monte Carlo faces (any array module ``xp``).

A batch of signals is a :class:`Sig`: ``x`` of shape (seeds, inputs, width) in the working
dtype and a log scale ``ls`` of shape (seeds, inputs) in float64, the true signal being
``exp(ls) * x``. Positively homogeneous ops act on ``x`` alone; a scale that grows like c^L is
thus carried exactly in ``ls`` and never overflows. Cotangents use the same type.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sigprop.errors import ConfigError

F64 = np.float64


def array_module(x):
    """numpy or cupy, whichever ``x`` belongs to (numpy when cupy is not installed)."""
    if isinstance(x, np.ndarray):
        return np
    cupy = _cupy()
    return np if cupy is None else cupy.get_array_module(x)


@functools.cache
def _cupy():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


@dataclass(frozen=True)
class Sig:
    """True signal ``exp(ls)[..., None] * x``; ``x`` (S, B, n) in the working dtype, ``ls`` (S, B)."""

    x: Any
    ls: Any


@dataclass(frozen=True)
class Env:
    """Where an op's Monte Carlo face runs: backend, dtype, random streams, sampler.

    ``block`` and ``op`` (the op's depth-first index inside its block) name its random streams.
    ``sink``: where a VJP reports what the engine records beyond the cotangent (a Dense's
    log ||dl/dW||_F^2 per (seed, input), :meth:`sigprop.ops.dense.Dense.mc_vjp`), or None.
    """

    xp: Any
    dtype: Any
    streams: Any
    sampler: Any
    block: int
    op: int = 0
    sink: Any = None

    def child(self, offset: int) -> Env:
        """The env of a child op, ``offset`` indices after this op in depth-first order."""
        return replace(self, op=self.op + offset)

    def normal(self, direction: int, shape, dtype=None):
        return self.streams.normal(self.block, self.op, direction, shape, dtype or self.dtype)


def times(x, f):
    """``x * f[..., None]`` with the per-(seed, input) factor ``f`` cast to x's dtype."""
    return x * f[..., None].astype(x.dtype)


def true_scale(ls, dtype):
    """e^ls in ``dtype``, NaN where it overflows or is subnormal (below the smallest normal
    number of ``dtype``: the true values would carry fewer digits than the dtype's, then none).
    An op that needs the true values then yields NaN, which the driver reports with its block
    (a zero signal stays a valid 0)."""
    xp = array_module(ls)
    e = xp.exp(ls).astype(dtype)
    return xp.where((e >= np.finfo(dtype).tiny) & xp.isfinite(e), e, np.nan).astype(dtype)


def gram(a, b):
    """Batched ``a b^T`` over the last axis, accumulated in float64: (S, B, n) -> (S, B, B)."""
    xp = array_module(a)
    if xp is not np and _cuda_gram_fits(a, b):
        return _cuda_gram(xp, a, b)
    a64 = a.astype(F64, copy=False)
    return a64 @ (a64 if b is a else b.astype(F64, copy=False)).swapaxes(-1, -2)


def mean_sq(x):
    """(1/n) sum_i x_i^2 per row, float64, each x_i^2 too (in float32 it underflowed below
    |x_i| ~ 1e-19: a row of a float32 tanh net's true values at 1e-27 read as zero, so its
    scale was never moved into ``ls``)."""
    xp = array_module(x)
    if xp is not np and x.dtype in _CUDA_FLOATS:
        return _cuda_kernels(xp).sumsq(x, axis=-1) / x.shape[-1]
    if x.dtype == F64:  # (numpy's pairwise sum, as before)
        return (x * x).sum(axis=-1) / x.shape[-1]
    return xp.einsum("...i,...i->...", x, x, dtype=F64) / x.shape[-1]  # (no float64 copy of
    # x: 0.1 against 16 MiB peak at (32, 2, 65536), 1.4x the float32 squares' time, measured)


def to_unit_rms(s: Sig) -> Sig:
    """Move the root mean square of each row into ``ls`` (exact; zero rows are left alone)."""
    xp = array_module(s.x)
    if xp is not np and s.x.dtype in _CUDA_FLOATS:  # the same maths in 3 launches instead of 13
        f, ls = xp.empty(s.ls.shape, s.x.dtype), xp.empty_like(s.ls)
        k = _cuda_kernels(xp)
        k.unit_rms(k.sumsq(s.x, axis=-1), float(s.x.shape[-1]), s.ls, f, ls)
        return Sig(s.x * f[..., None], ls)
    r = xp.sqrt(mean_sq(s.x))
    ok = (r > 0) & xp.isfinite(r)
    r = xp.where(ok, r, 1.0)
    return Sig(times(s.x, 1 / r), s.ls + xp.log(r))


def weighted_sum(beta: float, x: Sig, alpha: float, f: Sig) -> Sig:
    """``beta x + alpha f`` in log-scaled form: ls = max(ls_x + log|beta|, ls_f + log|alpha|).

    Both parts are rescaled by factors <= 1, so nothing overflows. Used by the residual sum,
    its vector-Jacobian product and the Dense bias.
    """
    xp = array_module(x.x)
    with np.errstate(divide="ignore"):
        lx, lf = x.ls + np.log(abs(beta)), f.ls + np.log(abs(alpha))
    ls = xp.maximum(lx, lf)
    return Sig(times(x.x, np.sign(beta) * xp.exp(lx - ls))
               + times(f.x, np.sign(alpha) * xp.exp(lf - ls)), ls)


def feature_norm(s: Sig, eps: float, gain: float, center: bool):
    """LayerNorm (``center``) or RMSNorm over features: y = gain z / sqrt(mean(z^2) + eps).

    z = x - mean(x) (LayerNorm) or x. With x = e^ls xt: y = gain zt / st with
    st = sqrt(mean(zt^2) + eps e^(-2 ls)), evaluated as log st by logaddexp, so the output is
    ``Sig(gain zt, -log st)`` for any ls. Returns the output and (yh = zt / st, ls shift).
    """
    xp = array_module(s.x)
    z = s.x - s.x.mean(axis=-1, keepdims=True) if center else s.x
    with np.errstate(divide="ignore"):
        log_st = 0.5 * xp.logaddexp(xp.log(mean_sq(z)), np.log(eps) - 2 * s.ls)
    y = Sig(gain * z, -log_st)
    return y, (times(z, xp.exp(-log_st)), -log_st - s.ls)


def feature_norm_vjp(res, g: Sig, gain: float, center: bool) -> Sig:
    """J^T g = (gain / s)(P g - yh (yh . g) / n), P the centring (LayerNorm) or I (RMSNorm)."""
    yh, shift = res
    n = g.x.shape[-1]
    pg = g.x - g.x.mean(axis=-1, keepdims=True) if center else g.x
    dot = (yh * g.x).sum(axis=-1, keepdims=True) / n
    return Sig(gain * (pg - yh * dot.astype(yh.dtype)), g.ls + shift)


def dense_width(n_in: int, ratio: float) -> int:
    """n_out = ratio * n_in, which must be a positive integer."""
    n_out = round(ratio * n_in)
    if n_out < 1 or abs(n_out - ratio * n_in) > 1e-9 * max(1.0, ratio * n_in):
        raise ConfigError("Dense.ratio", ratio,
                          f"a ratio with ratio * n_in a positive integer (n_in = {n_in})")
    return n_out


def psd_eigh(K):
    """Eigen-decomposition of symmetric PSD (..., B, B) matrices in float64, eigenvalues >= 0."""
    xp = array_module(K)
    lam, V = xp.linalg.eigh(K.astype(F64))
    return xp.maximum(lam, 0.0), V


# A float64 eigh of a B x B symmetric matrix returns eigenvalues with absolute error ~B eps64
# max(lam) (Golub & Van Loan, 8.1); below EIGH_RTOL max(lam) (B <= 100) an eigenvalue is rounding
# noise, so a square root keeps the exact rank of a rank-deficient Gram (repeated inputs).
EIGH_RTOL = 1e-13


def psd_power(K, power: float, rtol: float = EIGH_RTOL):
    """V diag(lam^power) V^T, eigenvalues <= rtol * max(lam) set to 0 (so power -1 is pinv)."""
    xp = array_module(K)
    if xp is not np and K.shape[-1] <= JACOBI_MAX_B:
        return _cuda_psd_power(xp, K, power, rtol)
    lam, V = psd_eigh(K)
    keep = lam > rtol * lam.max(axis=-1, keepdims=True)
    d = xp.where(keep, xp.where(keep, lam, 1.0) ** power, 0.0)
    return (V * d[..., None, :]) @ V.swapaxes(-1, -2)


def gram_root(G, power: float):
    """A root of the Grams G (..., B, B) in scale-free form: D C^(1/2) for power 1/2 (R R^T = G),
    C^(+1/2) D^-1 for power -1/2 (R G R^T = I on G's range, so R X has orthonormal rows), with
    D = diag(sqrt G_aa) and C = D^-1 G D^-1 of unit diagonal. The two are matched: D C^(1/2)
    C^(+1/2) D^-1 X = X. psd_power of G itself drops an input's part orthogonal to the others
    where its scale is below EIGH_RTOL of theirs (inputs of q 1e-20 and 1 through a tanh: the
    small one's q 0.4x, its corr 0.71 against 0.46); C's eigenvalues are of order one unless
    the inputs are collinear. An input of zeros keeps a zero row (column)."""
    if power not in (0.5, -0.5):
        raise ValueError(f"gram_root: power 1/2 or -1/2, not {power}")
    xp = array_module(G)
    d = xp.sqrt(xp.diagonal(G, axis1=-2, axis2=-1))
    inv = xp.where(d > 0, 1 / xp.where(d > 0, d, 1.0), 0.0)
    C = G * inv[..., :, None] * inv[..., None, :]
    if power > 0:
        return d[..., :, None] * psd_power(C, power)
    return psd_power(C, power) * inv[..., None, :]


# -- CuPy: fused kernels -----------------------------------------------------------------------
# On a GPU the Monte Carlo is bound by the host, not the device: every CuPy call costs a launch
# and ~30 us of host time (H100 machine, benchmarks/RESULTS.md) whatever the width, and a layer
# made ~200 of them, cuSOLVER's batched eigh four times among them. The kernels below do the same
# maths as the NumPy code above in fewer launches; results agree with it up to float rounding
# (sums are taken in another order).
_CUDA_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# gram: one block of GRAM_THREADS per (matrix, i, j, chunk of the features), float64 sums reduced
# in a fixed order (deterministic); chunks (summed by a second launch) only where a row is long
# enough to leave SMs idle otherwise.
GRAM_THREADS = 256
GRAM_MIN_CHUNK = 16384
GRAM_TARGET_BLOCKS = 528  # 4 per SM of an H100

_GRAM_SRC = r"""
extern "C" __global__ void gram_part(const TA* a, const TB* b, double* part, const long long n,
                                     const int Ba, const int Bb, const int chunks,
                                     const long long len) {
    long long id = blockIdx.x;
    const int c = id % chunks; id /= chunks;
    const int j = id % Bb; id /= Bb;
    const int i = id % Ba;
    const long long s = id / Ba;
    const TA* ar = a + (s * Ba + i) * n;
    const TB* br = b + (s * Bb + j) * n;
    const long long lo = c * len, hi = min(n, lo + len);
    double acc = 0.0;
    for (long long k = lo + threadIdx.x; k < hi; k += NT) acc += (double)ar[k] * (double)br[k];
    __shared__ double sh[NT];
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int w = NT / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}
"""


@functools.cache
def _gram_kernel(xp, ta, tb):
    src = (f"#define TA {_CTYPE[ta]}\n#define TB {_CTYPE[tb]}\n#define NT {GRAM_THREADS}\n"
           + _GRAM_SRC)
    return xp.RawKernel(src, "gram_part")


def _cuda_gram_fits(a, b):
    return (a.ndim >= 2 and b.ndim == a.ndim and a.shape[:-2] == b.shape[:-2]
            and a.shape[-1] == b.shape[-1] and a.dtype in _CUDA_FLOATS and b.dtype in _CUDA_FLOATS)


def _cuda_gram(xp, a, b):
    *lead, Ba, n = a.shape
    Bb = b.shape[-2]
    a, b = xp.ascontiguousarray(a), xp.ascontiguousarray(b)
    pairs = int(np.prod(lead, dtype=np.int64)) * Ba * Bb
    chunks = max(1, min(-(-n // GRAM_MIN_CHUNK), -(-GRAM_TARGET_BLOCKS // max(pairs, 1))))
    part = xp.empty((*lead, Ba, Bb, chunks), F64)
    if part.size:
        _gram_kernel(xp, a.dtype, b.dtype)(
            (pairs * chunks,), (GRAM_THREADS,),
            (a, b, part, np.int64(n), np.int32(Ba), np.int32(Bb), np.int32(chunks),
             np.int64(-(-n // chunks))))
    return part.reshape(part.shape[:-1]) if chunks == 1 else part.sum(axis=-1)


# psd_power for B <= JACOBI_MAX_B: one warp per matrix runs cyclic Jacobi (Golub & Van Loan, 8.5)
# in float64 in shared memory on the lower triangle (the part eigh reads), each rotation's row and
# column updates spread over the warp, then forms V diag(d) V^T with psd_power's thresholds. An
# off-diagonal entry at or below JACOBI_TOL eps64 max(diag) counts as 0: below the backward error
# of eigh itself (~B eps64 max(lam)), and above the rounding noise of a rank-deficient Gram's zero
# block, so the sweeps end. A non-finite input gives an all-NaN output (reported as overflow).
JACOBI_MAX_B = 32
JACOBI_TOL = 0.1

_JACOBI_SRC = r"""
extern "C" __global__ void psd_power_jacobi(const double* K, double* out, const int B,
                                            const double power, const double rtol,
                                            const double tol) {
    __shared__ double a[32 * 32], v[32 * 32], d[32];
    const int t = threadIdx.x;  // blockDim.x == 32, one matrix per block
    K += (long long)blockIdx.x * B * B;
    out += (long long)blockIdx.x * B * B;
    bool ok = true;
    for (int e = t; e < B * B; e += 32) {
        const int i = e / B, j = e % B;
        const double x = (i >= j) ? K[e] : K[j * B + i];
        ok = ok && isfinite(x);
        a[e] = x;
        v[e] = (i == j) ? 1.0 : 0.0;
    }
    if (!__all_sync(0xffffffffu, ok)) {
        for (int e = t; e < B * B; e += 32) out[e] = nan("");
        return;
    }
    __syncthreads();
    double scale = 0.0;
    for (int k = 0; k < B; k++) scale = fmax(scale, fabs(a[k * B + k]));
    const double thresh = tol * scale;
    for (int sweep = 0; sweep < 50; sweep++) {
        bool rotated = false;
        for (int p = 0; p < B - 1; p++) {
            for (int q = p + 1; q < B; q++) {
                const double apq = a[p * B + q];
                if (!(fabs(apq) > thresh)) continue;  // the same on every thread
                rotated = true;
                const double theta = (a[q * B + q] - a[p * B + p]) / (2.0 * apq);
                const double tr = (fabs(theta) < 1e150)
                    ? copysign(1.0, theta) / (fabs(theta) + sqrt(1.0 + theta * theta))
                    : 0.5 / theta;
                const double c = 1.0 / sqrt(1.0 + tr * tr), s = tr * c;
                __syncthreads();
                if (t < B) {  // columns p, q of A and V
                    const double akp = a[t * B + p], akq = a[t * B + q];
                    a[t * B + p] = c * akp - s * akq;
                    a[t * B + q] = s * akp + c * akq;
                    const double vkp = v[t * B + p], vkq = v[t * B + q];
                    v[t * B + p] = c * vkp - s * vkq;
                    v[t * B + q] = s * vkp + c * vkq;
                }
                __syncthreads();
                if (t < B) {  // rows p, q of A
                    const double apk = a[p * B + t], aqk = a[q * B + t];
                    a[p * B + t] = c * apk - s * aqk;
                    a[q * B + t] = s * apk + c * aqk;
                }
                __syncthreads();
            }
        }
        if (!rotated) break;
    }
    double mx = 0.0;
    for (int k = 0; k < B; k++) mx = fmax(mx, fmax(a[k * B + k], 0.0));
    if (t < B) {
        const double lam = fmax(a[t * B + t], 0.0);
        d[t] = (lam > rtol * mx) ? (power == 0.5 ? sqrt(lam) : pow(lam, power)) : 0.0;
    }
    __syncthreads();
    for (int e = t; e < B * B; e += 32) {
        const int i = e / B, j = e % B;
        if (i < j) continue;
        double acc = 0.0;
        for (int k = 0; k < B; k++) acc += v[i * B + k] * d[k] * v[j * B + k];
        out[i * B + j] = acc;
        out[j * B + i] = acc;
    }
}
"""


def _cuda_psd_power(xp, K, power, rtol):
    """psd_power on the GPU in one launch, no host sync."""
    B = K.shape[-1]
    K = xp.ascontiguousarray(K, dtype=F64)
    out = xp.empty_like(K)
    nmat = K.size // (B * B) if B else 0
    if nmat:
        _cuda_kernels(xp).jacobi((nmat,), (32,), (K, out, np.int32(B), np.float64(power),
                                                   np.float64(rtol),
                                                   np.float64(JACOBI_TOL * np.finfo(F64).eps)))
    return out


class _Kernels:
    def __init__(self, xp):
        self.jacobi = xp.RawKernel(_JACOBI_SRC, "psd_power_jacobi")
        # sum of x*x per row in float64, x*x too (as mean_sq's einsum with dtype=float64)
        self.sumsq = xp.ReductionKernel("T x", "float64 y", "(double)x * (double)x", "a + b",
                                        "y = a", "0",
                                        "sigprop_sumsq", reduce_type="double")
        # to_unit_rms's per-row scale: r = sqrt(ss / n) (1 where 0 or not finite), 1/r, ls + log r
        self.unit_rms = xp.ElementwiseKernel(
            "float64 ss, float64 width, float64 ls", "T f, float64 ls_out",
            "double r = sqrt(ss / width); if (!(r > 0.0 && isfinite(r))) r = 1.0;"
            " f = (T)(1.0 / r); ls_out = ls + log(r);",
            "sigprop_unit_rms")


@functools.cache
def _cuda_kernels(xp):
    return _Kernels(xp)
