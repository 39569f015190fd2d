"""First-order finite-width theory: ``sp.theory(net, inputs, width=N)``.

At width N the realised state of the stream (its Gram K, feature mean m and, inside an open
residual branch, the cross moment X with each enclosing residual input) is theta + delta with
E delta = b/N and Cov delta = C/N + O(N^-2); theta is the infinite-width state. The state is
a stack of frames (frame 0 the stream, frame j the j-th open residual branch), flattened in the
scaled units of the infinite-width state. Two kinds of steps move (b, C):

* a deterministic map F of the realised state (LayerNorm, RMSNorm, Scale, the residual sum, a
  change of units, and the law of a fresh stream given the realised state it was drawn from):
  the delta method, b' = J b + 1/2 H:C and C' = J C J^T. J and H come from the op's own
  forward law by central differences along b and along the eigen-directions w_k of C
  (C = sum_k w_k w_k^T, so H:C = sum_k D^2F[w_k, w_k]): no per-op derivative code;
* the draw of fresh features. After a Dense the features are i.i.d. given the past, and the
  elementwise ops after it keep them so, up to the next op that reduces over features (a
  Dense, a norm, a residual sum; or where a statistic is read). There each realised one is a mean
  of N' = ratio N i.i.d. terms: unbiased given the past, with covariance Sigma / N' from the
  feature law y = phi(u), u ~ N(0, K_u) (:func:`feature_noise`; for y = u it is the Wishart
  K_ac K_bd + K_ad K_bc). Sigma is the one new per-op quantity, and only elementwise ops enter
  it (through their ``fn``), so it lives here rather than as a face of every op. Its assembly
  from the feature moments (:func:`noise_of_moments`) serves the symbolic face too
  (:mod:`sigprop.symbolic.finite_width`, exact moments).

Statistics s(theta) of the final state follow by the same delta step: E s = s + (grad s . b +
1/2 H_s:C)/N, Var s = grad s C grad s^T / N (var = q - mean^2 among them, so E var holds the
realised mean's variance; and, where a residual branch closes, its output's q: branch_q). For
a net of Dense -> ReLU layers this gives Var log q_L = 5 L / N to leading order (Hanin & Nica):
Sigma_qq / q^2 = E[phi^4]/E[phi^2]^2 - 1 = 5 (a Dense -> ReLU -> Dense block adds the second
Dense's Wishart 2: 7 per block).

Scope: the feature law's 4th moments are a 2-D polar quadrature (exact in the radius for
degree-1 activations, to round-off in the angle; ~1e-12 for the others up to q = 30, and at
larger scales too: where their bend at |u| ~ 1 is a small part of the law, its panels are
graded toward it, :func:`_levels`), so B > 2 inputs are walked pair by pair (every op with a
rule here acts on each input alone), the pairs stacked on a leading axis of one walk, as the
inputs of the gradient's walks are (the walk is vectorised over the grid). A FeatureAffine
whose vectors are constant is a Scale plus a shift (in a fresh stream's chain, or a map of the
realised state); one whose vectors vary over the features is taken with Gaussian vectors of the
declared moments (as the Monte Carlo draws them; :func:`_vector_rule`): in a fresh stream's
chain the draw's covariance is the mean over them of the features' covariance given them (their
moments up to the 2nd are the declared ones exactly); on a settled stream (after a norm: a
LayerNorm's affine), or after another such op in the chain, the op's law of the realised
statistics plus the noise of the vectors' assignment to the features, which needs the features'
4th moments (:meth:`_Walk._varying_affine`). Uniform weights (torch's default init) add one
term, their 4th cumulant's (:meth:`_Walk._uniform_term`), which needs the 4th moments of the
Dense's input features: for both, the walk carries each frame's 3rd and 4th joint cumulants (0
for the inputs, drawn at each fresh draw and post-norm draw, mapped by norms and scales, added
at a residual sum whose branch holds a Dense; unknown behind a residual branch with no Dense
or a BatchNorm).
A norm of a Dense's features (through linear maps) joins their chain: where elementwise ops
follow it before the next reduction, the features f(norm(u)) are drawn with the norm's centre
and scale realised over the same features, each feature's influence on the statistics and the
plug-in's bias (:func:`post_norm_noise`; uniform weights' term with the norm's statistics
held, which their 4th cumulant leaves be); with none, the norm is a map of the drawn
statistics.
BatchNorm over a batch of two inputs, in the forward walk, is a map of the realised Gram (its
output Gram c [[1, -1], [-1, 1]], c = mean_i d_i^2 / (d_i^2 + eps), taken as E at d ~ N(0, v)
of the realised v), with the part of c the realised Gram does not explain (mean and
variance below sqrt(eps / v) / N) and its output's feature means' spread added as noise of
their own (exact for Gaussian input features but for two BatchNorms' parts' correlation, left
out where eps / v <= BN_MAP_RATIO, lost elsewhere); its cross moments with the enclosing
residual stream have no first-order law, so a residual sum or branch that reads them before a
Dense loses the walk (:meth:`_Walk._batchnorm`: Pre-BN's branch, BN -> Dense -> ..., is
covered).
An activation on the residual stream itself (beta x + alpha (W phi(x) + b), the pre-activation
ResNet) has no rule in the walk: the stream's features are no fresh draw given its realised
Gram. A net made only of such blocks, on Gaussian inputs, takes the stream-row model instead
(:func:`stream_rows`): given the past, each feature's row is a Gaussian trajectory across the
layers, so each input's q, mean, var and branch_q follow from 2-D integrals over pairs of
layers (checked against Monte Carlo in benchmarks/stream_row_law.py); a pair's corr would need
4-D ones and is NaN, as is the gradient.
Ops with no fluctuation rule here (BatchNorm over B > 2 inputs, and in the gradient's walks at
any B; an activation on any other stream that is not fresh; a varying FeatureAffine on a
branch's copy of a non-Gaussian stream or on features of unknown cumulants; uniform weights
there too) leave NaN corrections from that layer on, with a :class:`FiniteWidthWarning`, as
does a stream of zeros (zero weights, a zero Scale or FeatureAffine) at any grid point.
Backward: the input gradient's E grad_q_0 is E |J t|^2 / N for a random tangent t, so the same
walk of the pair (x, J t) gives its correction with exact weights, and its spread Var log
grad_q_0 (|J^T delta|^2 has the law of |J t|^2) (:func:`gradient_coefficient`; every other
layer's grad_q by the walk from that layer up, all of them from one recorded walk and one
adjoint pass down it, :func:`_adjoint`; t brought back to x's scale at every layer, units
only; where a layer ends between a norm of a Dense's features and the activation after it,
t joins at the norm's output and is drawn with the activation's features,
:attr:`_Walk.after_norm`; where it ends at a uniform Dense's output, t joins after its
weights, :attr:`_Walk.after_dense`). Its part in a stream x + alpha phi(W x) that carries a
mean, the coupling through the forward weights, also in closed form
(:func:`mean_mode_coefficient`). The weight gradient's E weight_grad_q and Var log
weight_grad_q: weight_grad_q = N^-2 sum_D ||g_D||^2 ||x_D||^2 over a block's Denses D, with one
delta_L, has the law of N^-1 |sum_D J_D T_D x_D|^2 (T_D independent random directions of the
Denses' weights: the derivative along a random direction of all the block's weights), the same
pair walk with t started at the block's first Dense as T x and gaining T_D x_D at each later
one, of the realised x's scale (:meth:`_Walk._start_at_weights`), joining the input gradient's
recorded walk at its block's end, read by the same adjoint pass
(``gradient_coefficient(..., weights=True)``).
Validity: per statistic the width where the correction is 10 % of the leading term
(``valid_width_*``), and warnings where N is below the coefficient, where an expectation is
carried by events no practical width samples (:func:`warn_unreachable`: BatchNorm at B <= 3),
or by rare nets (:func:`_warn_rare_nets`: Var log q > 1 across nets); corr's coefficient NaN,
with a warning, where the central differences do not resolve it, a pair's Gram near singular
(:func:`_resolved`: a second walk at smaller steps). For BatchNorm, the typical value E log
grad_q at width N (:func:`typical_log_grad_q`: BatchNorm's per-feature backward averaged over N
features, by a t-integral), not a 1/N expansion.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import itertools
import math
import warnings
from typing import NamedTuple

import mpmath
import numpy as np
import xarray as xr
from scipy.special import digamma

from sigprop import schema
from sigprop.errors import ConfigError, FiniteWidthWarning, warn
from sigprop.kernels.gaussian import get_activation
from sigprop.ops import (
    Act,
    BatchNorm,
    Dense,
    FeatureAffine,
    LayerNorm,
    Op,
    Repeat,
    Residual,
    RMSNorm,
    Scale,
    Serial,
    at_point,
    grid_points,
    layers_of,
    replace_sweeps,
    sweeps_of,
)
from sigprop.ops.base import is_zero, vec
from sigprop.state.moments import (
    DECOUPLED,
    TRUE_LS_MAX,
    Moments,
    Ref,
    moments_of_sum,
    outer,
    to_unit_diagonal,
)
from sigprop.state.ns import NUMERIC
from sigprop.state.params import Context, Sweep

STEP = 1e-3  # central-difference step, as a fraction of the largest entry of a direction (and
# of the room to a Gram's singular boundary, :func:`_steps`); steps h and 2h combined by
# Richardson (:func:`_differences`): truncation O(STEP^4), round-off ~1.4e-16 / STEP^2 ~ 1e-10
# (second differences). With one step, O(STEP^2) truncation along a direction w is ~STEP^2
# |w|^2 in absolute terms, and C's directions grow with depth (Var log q adds 5 per relu layer):
# a deep relu net's corr correction (~0.003, a near cancellation) came out 6 % off at depth 100
# the one-sided step of a fan-in bias's derivative (:meth:`_Walk._push_draw`), a fraction of
# the Dense's output variance: its Richardson truncation, O(h^2), and round-off, ~1e-16 / h,
# meet near 1e-10 (against the infinite-width theory's central differences in sigma_b^2: 1e-9
# at h = 1e-5, 2e-6 at 1e-3, 2e-9 at 1e-6 on Dense(uniform) -> LayerNorm -> tanh nets)
BIAS_STEP = 1e-5
SINGULAR = 1e-12  # a Gram's smallest eigenvalue below this of its largest: round-off (corr = 1)
VAR_RESOLVED = 1e-9  # var / q below this: var = q - mean^2 to float64 leaves var's first order
# to round-off (a review measured N var_rel_correction -0.9999954 at var / q = 1e-10, where it
# is -1, and -0.25 at 1e-12)
# C's eigen-directions below this of its largest are not stepped along (0 where some grid
# points need them; the flattened state repeats K's symmetric entries, so C is singular; a
# third of the directions of a residual walk): what they drop is below 1e-12 of C per step
NULL = 1e-12
ANGLE_NODES = 48  # Gauss-Legendre nodes per angular panel of the pair rule (kinks on its edges)
# per panel (times the degree) where the integrand is a product of up to four features of
# degree 1 in the radius (relu, linear; :func:`_degree`), on each panel a trigonometric
# polynomial of degree <= 4 once integrated over the radius: 16 nodes gave the feature
# moments to 2e-15 of the 64-node rule's (12: 5e-13, 8: 1e-6) at correlations 0 to 1 - 1e-12
# and scale ratios 1e-3 to 30
HOMOGENEOUS_ANGLE_NODES = 16
# composite Gauss-Legendre in the radius: panels with these edges (fractions of RHO_MAX sd),
# geometric so that a saturating activation's bend at |u| ~ 1 is resolved over a wide range of
# scales (erf: 1e-13 up to q = 30, 1e-11 at q = 300, 1e-7 at q = 1e4; 4 equal panels left
# 1e-6 at q = 30)
# the smallest true log scale the feature law takes, TRUE_LS_MAX's mirror: q >= e^-700 ~
# 1e-304 is a normal number (at q ~ 1e-321, subnormal, corrections came out 3x off, unsaid)
TRUE_LS_MIN = -350.0
RADIAL_EDGES, RADIAL_NODES = (0.0, 1 / 64, 1 / 16, 1 / 4, 1 / 2, 1.0), 16
# where a non-homogeneous activation bends over widths far below the scale of its inputs, both
# rules add geometric panels (ratio 4) toward where the bend collapses: the radius 0 and (pair
# rule) the angles where a ray crosses an axis, whose band narrows to 1 / (RHO_MAX scale) at the
# largest radius; GRADED_NODES nodes each (:func:`_levels`). Without them erf's E phi'^4 was
# 3e-5 off at q = 1e4, 36 % at q = 1e6, and the gradient's c and v wrong with no sign of it.
ANGLE_BEND, RADIAL_BEND, GRADED_NODES = 4.0, 8.0, 16
# beyond 1e6 bend widths an activation's features sit in its bend with probability ~1e-6: a
# saturating one's gradient lives there, which no practical width samples (its v grows ~ the
# ratio), and the rule's angles lose ~ratio 1e-16 to round-off, which the central differences'
# 1 / STEP^2 lifts to 1e-3 in erf's c at 1e6 and 1e-2 at 1e7: the walk is lost, with a
# warning. For the others (gelu, silu, elu: relu + a 1/ratio part) the panels stop growing
BEND_MAX = 1e6
RHO_MAX = 9.0  # in standard deviations (whitened radius): exp(-81/2) ~ 2.6e-18
VALID_FRACTION = 0.1  # a statistic is "valid" at widths where its correction is < 10 % of it
# the forward coefficients are walked again with CHECK_STEP times the step where some
# pair's Gram is near singular (1 - |corr_inf| < NEAR_SINGULAR at a recorded layer): there a
# step is bounded by STEP of the smallest eigenvalue (:func:`_steps`), the second differences'
# round-off grows as its inverse square, and a deep relu net's corr coefficient came out 83 %
# off at depth 1000 (the two walks' difference tracks the error within a factor 2 where it is
# resolved: 3.5e-3 against 7e-3 at layer 200, benchmarks/RESULTS.md). Smaller, not larger:
# where the step's floor binds, a larger one can cross the singular boundary (a tanh net's
# coefficient at 1 - corr = 2e-6 agreed to 1 % at factors 0.5 to 1 and moved 20x at 1.5). A
# coefficient the two walks give more than VALID_FRACTION apart (and more than UNRESOLVED_FLOOR
# of its statistic's scale: one that is 0 by symmetry) is not resolved: NaN, with a warning
CHECK_STEP, NEAR_SINGULAR, UNRESOLVED_FLOOR = 2 / 3, 1e-2, 1e-6
_STEP_FACTOR = contextvars.ContextVar("finite_width_step_factor", default=1.0)
_TICK = contextvars.ContextVar("finite_width_tick", default=None)  # :func:`walks_shown`
# inside the walks of the pairs of a larger batch (:func:`_by_pairs`): a BatchNorm there
# normalises over more inputs than the walk holds, so the batch-of-two rule does not apply
_PAIRED = contextvars.ContextVar("finite_width_paired", default=False)
# a BatchNorm over two inputs is a map of the realised Gram where eps / v is at most this (v =
# E d^2 the batch variance, :meth:`_Walk._batchnorm`): the part of its output's fluctuation
# the map leaves out is then at most 0.94 sqrt(eps / v) / N = 0.03 / N in its mean and
# 0.63 sqrt(eps / v) / N = 0.02 / N in its variance (relative), under 1.5 % of the least
# fluctuation a draw after it adds (a Dense's Wishart variance, 2 / N at ratio 1)
BN_MAP_RATIO = 1e-3
PRACTICAL_WIDTH = 4096  # the widest nets users run (issue 16: 256-4096); beyond it: a warning
PAIRED = frozenset({"corr", "var_corr"})  # coefficients per pair of inputs (..., B, B)
SPREAD_MAX = 1.0  # Var log q across nets past which a mean over nets is carried by rare nets


# -- the state vector ------------------------------------------------------------------------
def _lead(frames):
    """The leading (direction, grid) shape the states of ``frames`` broadcast to."""
    return np.broadcast_shapes(*[f.K.shape[:-2] for f in frames], *[f.m.shape[:-1] for f in frames],
                               *[f.ls.shape[:-1] for f in frames])


def flatten(frames, ref):
    """The stack as a vector (..., D): per frame K (B^2), m (B), then X with each outer frame
    (B^2 each), in the scaled units (log scales) of the reference stack ``ref``."""
    lead = _lead(frames)
    parts = []
    for f, r in zip(frames, ref):
        e = np.exp(f.ls - r.ls)
        parts += [(f.K * outer(e, e)), (f.m * e)[..., None]]
        for i, rf in enumerate(f.refs):
            ei = np.exp(frames[i].ls - ref[i].ls)
            parts.append(f.cross(rf) * outer(ei, e))
    return np.concatenate([np.broadcast_to(p, lead + p.shape[-2:]).reshape(lead + (-1,))
                           for p in parts], axis=-1)


def _frame_start(i: int, B: int) -> int:
    """Where frame i's K starts in a vector of :func:`flatten`'s layout (its m follows)."""
    return i * (B * B + B) + B * B * i * (i - 1) // 2


def _frame_gram(v, i: int, B: int):
    """Frame i's K (..., B, B) in a vector of :func:`flatten`'s layout."""
    start = _frame_start(i, B)
    return v[..., start:start + B * B].reshape(v.shape[:-1] + (B, B))


def _frame_moments(v, i: int, B: int, one: float):
    """Frame i's moment matrix [[K, m], [m^T, one]] (..., B + 1, B + 1) in a vector of
    :func:`flatten`'s layout: the Gram of its features with a constant feature (``one`` = 1)
    appended, PSD as long as K - m m^T is (``one`` = 0: a direction's change of it)."""
    start = _frame_start(i, B) + B * B
    m = v[..., start:start + B]
    corner = np.full(m.shape[:-1] + (1, 1), one)
    return np.concatenate([np.concatenate([_frame_gram(v, i, B), m[..., :, None]], -1),
                           np.concatenate([m[..., None, :], corner], -1)], -2)


def unflatten(v, ref):
    """Inverse of :func:`flatten`: the stack with the reference's log scales and laws."""
    B = ref[0].K.shape[-1]
    frames, k = [], 0

    def take(n, shape):
        nonlocal k
        k += n
        return v[..., k - n:k].reshape(v.shape[:-1] + shape)

    for r in ref:
        K = take(B * B, (B, B))
        K = (K + np.swapaxes(K, -1, -2)) / 2
        m = take(B, (B,))
        refs = tuple(Ref(m=frames[i].m, X=take(B * B, (B, B))) for i in range(len(r.refs)))
        frames.append(r.replace(K=K, m=m, refs=refs))
    return frames


def _flat(fn, ref_in, ref_out):
    """A map of frames as a map of their flattened scaled state (:func:`flatten`)."""
    return lambda x: flatten(fn(unflatten(x, ref_in)), ref_out)


def delta_step(fn, x0, b, C, ref=None, linear=False):
    """(fn(x0), J b + 1/2 H:C, J C J^T) for a vector map ``fn`` (leading dims broadcast), by
    central differences along b and along w_k with C = sum_k w_k w_k^T (C's scaled eigenvectors,
    those of eigenvalue below :data:`NULL` of the largest 0, and dropped where 0 at every grid
    point); fn is evaluated once on all 4M + 1 points of :func:`_differences`. ``ref``: the
    frames x0 flattens (:func:`flatten`), whose Grams bound the steps (:func:`_steps`).
    ``linear``: fn is affine, so J b and J w_k are one central difference each, exact to
    round-off at any step (2M + 1 points, steps STEP over the direction's largest entry), and
    H = 0."""
    lam, V = np.linalg.eigh(C)
    lam = np.clip(lam, 0, None)  # ascending: C's null directions first
    null = lam <= NULL * lam[..., -1:]  # (0 where a direction is null at some points only, as
    # it is skipped at a point alone: each point's numbers do not depend on the others)
    W = V * np.sqrt(np.where(null, 0.0, lam))[..., None, :]
    W = W[..., int(np.min(np.sum(null, axis=-1))) if lam.size else 0:]
    dirs = np.moveaxis(np.concatenate([b[..., :, None], W], axis=-1), -1, 0)  # (M, ..., D)
    x0 = np.broadcast_to(x0, dirs.shape[1:])
    if linear:
        y0, Jd, _ = _differences(fn, x0, dirs, _steps(dirs, x0, None), second=False)
        return y0, Jd[0], np.einsum("k...i,k...j->...ij", Jd[1:], Jd[1:])
    y0, Jd, d2 = _differences(fn, x0, dirs, _steps(dirs, x0, ref, first=1))
    bias = Jd[0] + 0.5 * d2[1:].sum(axis=0)
    cov = np.einsum("k...i,k...j->...ij", Jd[1:], Jd[1:])
    return y0, bias, cov


def _step() -> float:
    """STEP, times the factor of a resolution check's second walk (:func:`_resolved`)."""
    return STEP * _STEP_FACTOR.get()


def _differences(fn, x0, dirs, h, second=True):
    """(fn(x0), D1, D2): fn's first and second derivatives along each direction of ``dirs`` (M,
    ..., D) from x0, by central differences at steps h and 2h (h broadcasts with fn's output)
    combined by Richardson, (4 D(h) - D(2h)) / 3, which cancels their O(h^2) error; fn is
    evaluated once on all 4M + 1 points stacked on a new leading axis. Without ``second``
    (fn affine): D1 from step h alone (2M + 1 points), D2 None."""
    M = len(dirs)
    if not second:
        ys = fn(np.concatenate([x0[None], x0 + h * dirs, x0 - h * dirs]))
        return ys[0], (ys[1:M + 1] - ys[M + 1:]) / (2 * h), None
    steps = np.concatenate([h * dirs, 2 * h * dirs])
    ys = fn(np.concatenate([x0[None], x0 + steps, x0 - steps]))
    y0, yp, ym = ys[0], ys[1:2 * M + 1], ys[2 * M + 1:]
    d1 = [(yp[k] - ym[k]) / (2 * s) for k, s in ((slice(0, M), h), (slice(M, None), 2 * h))]
    with np.errstate(over="ignore"):  # a direction of entries ~1e-160 (a tiny b) steps by
        # ~1e157, whose square overflows: its second difference is 0, as it is to float64
        d2 = [(yp[k] + ym[k] - 2 * y0) / s**2
              for k, s in ((slice(0, M), h), (slice(M, None), 2 * h))]
    return y0, (4 * d1[0] - d1[1]) / 3, (4 * d2[0] - d2[1]) / 3


def _steps(dirs, x0, ref, first=0):
    """The central differences' step along each direction (M, ..., D) from x0: STEP over its
    largest entry, and no more than STEP of each Gram's smallest eigenvalue lam over the rate
    |v^T dK v| at which the direction moves it (v its eigenvector; the Gram blocks of the
    frames ``ref``, when given). A law has a kink where a Gram turns singular (relu's kernel
    ~ theta^3 = (2 (1 - c))^(3/2) at corr -> 1) and a step that crossed it, where 1 - corr is
    ~ STEP, gave deep relu nets' corr correction the wrong sign (depth 150); a step relative to
    lam keeps the differences' truncation small there (the rate v^T dK v is first order in the
    step: a direction that moves lam at second order only is not bounded). The bound shrinks a
    step by at most STEP (STEP^2 for the ``first`` directions, whose first derivative alone is
    used): second differences' round-off grows as 1 / step^2, and at a Gram singular to
    round-off (corr = 1) the directions that cross its boundary are round-off themselves; lam
    is taken to be at least SINGULAR of the largest eigenvalue (below it, lam and the rate are
    round-off). Last, a step whose 2h would move the smallest eigenvalue mu of a frame's moment
    matrix [[K, m], [m^T, 1]] (PSD while the centred Gram K - m m^T is, which a norm reads) by
    more than half of it, to second order (2h |w^T dM w| + 4h^2 sum_k (w_k^T dM w)^2 / (mu_k -
    mu), w its eigenvectors: two small eigenvalues close together, as in a norm of a stream its
    mean dominates, var / q ~ 1 / depth in Pre-LN with relu branches), is cut to move it by a
    quarter, below that floor if need be (:func:`_uncrossed`); elsewhere it is unchanged."""
    step = _step()
    size = np.max(np.abs(dirs), axis=-1, keepdims=True)
    h = plain = step / np.where(size > 0, size, 1.0)
    if ref is None:
        return h
    B = ref[0].K.shape[-1]
    for i in range(len(ref)):
        lam, V = np.linalg.eigh(_frame_gram(x0, i, B))
        v = V[..., 0]
        rate = np.abs(np.einsum("...a,...ab,...b->...", v, _frame_gram(dirs, i, B), v))[..., None]
        room = step * np.maximum(lam[..., :1], SINGULAR * lam[..., -1:])
        h = np.where(rate * h > room, room / np.where(rate > 0, rate, 1.0), h)
    floor = np.full((len(dirs),) + (1,) * (h.ndim - 1), step)
    floor[:first] = step**2
    h = np.maximum(h, floor * plain)
    for i in range(len(ref)):
        h = _uncrossed(h, *np.linalg.eigh(_frame_moments(x0, i, B, 1.0)),
                       _frame_moments(dirs, i, B, 0.0))
    return h


def _uncrossed(h, mu, W, dM):
    """The steps h (M, ..., 1), each cut where its 2h might move the smallest eigenvalue mu_0
    of a moment matrix (eigenpairs mu, W) by more than mu_0 / 2 along its direction's change
    dM (M, ..., B + 1, B + 1): by both second-order perturbation, 2h r + 4h^2 s (r = |w_0^T dM
    w_0|, s = sum_k (w_k^T dM w_0)^2 / (mu_k - mu_0)), and Weyl's bound 2h |dM|_F (which holds
    where the first is no guide: mu_0 near another eigenvalue). Cut to the larger of the steps
    that move it by mu_0 / 4 by either; not where mu_0 is round-off (below SINGULAR of the
    largest)."""
    low = mu[..., :1]
    dW = np.einsum("...ak,...ab,...b->...k", W, dM, W[..., 0])
    rate = np.abs(dW[..., :1])
    size = np.sqrt(np.sum(dM**2, axis=(-2, -1)))[..., None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bend = np.sum(dW[..., 1:] ** 2 / (mu[..., 1:] - low), axis=-1, keepdims=True)
        moved = np.minimum(np.where(np.isfinite(bend), 2 * h * rate + 4 * h**2 * bend, np.inf),
                           2 * h * size)
        root = np.maximum(np.nan_to_num(low / 4 / (rate + np.sqrt(rate**2 + bend * low))),
                          low / 8 / size)
    cut = (low > SINGULAR * mu[..., -1:]) & (moved > low / 2)
    return np.where(cut, np.minimum(h, root), h) if np.any(cut) else h


@functools.cache
def _legendre(n):
    """Gauss-Legendre nodes and weights on [-1, 1] (computed once per n: an eigenproblem)."""
    return np.polynomial.legendre.leggauss(n)


def _gl(n, a, b):
    x, w = _legendre(n)
    return (b - a) / 2 * x + (b + a) / 2, (b - a) / 2 * w


def _levels(K, bend):
    """(angular, radial) graded panels for a rule on N(0, K) whose integrand bends over
    ``bend`` (true units, one value or one per coordinate; None: only at kinks on u_a = 0,
    which the panels' edges take), from the largest scale in bend widths (:func:`_bend_ratio`):
    1 + log_4(ratio / ANGLE_BEND) and log_4(ratio / RADIAL_BEND), rounded up, where positive
    (erf's E phi'^2, E phi'^4 and E phi'(u_0)^2 phi'(u_1)^2 to 3e-10 from q = 1 to 1e12, the
    angles' round-off growing ~ sqrt(q) 1e-16; the plain rule where ratio <= ANGLE_BEND)."""
    if bend is None:
        return 0, 0
    ratio = _bend_ratio(K, bend)
    if not np.isfinite(ratio):
        raise ConfigError("the scale of a bending activation's input", ratio,
                          "finite (a walk loses such a stream first)")
    ratio = min(ratio, BEND_MAX)  # (the walk loses a stream beyond it; its differences may not)

    def up(x):
        return math.ceil(math.log(x, 4)) if x > 1 else 0

    return (1 + up(ratio / ANGLE_BEND) if ratio > ANGLE_BEND else 0), up(ratio / RADIAL_BEND)


def _bend_ratio(K, bend) -> float:
    """max over the grid and coordinates a of sqrt(K_aa) / bend_a."""
    d = np.sqrt(np.diagonal(K, axis1=-2, axis2=-1))
    return float(np.max(d / np.asarray(bend, dtype=float)))


def _graded(n, levels):
    """A composite Gauss-Legendre rule on [0, 1]: n nodes on the middle and ``levels`` panels
    of :data:`GRADED_NODES` toward each end, with edges 4^-k / 2 from it (k = 1 .. levels)."""
    if levels == 0:
        return _gl(n, 0.0, 1.0)
    near = [0.5 * 4.0**-k for k in range(levels, 0, -1)]  # ascending
    edges = [0.0, *near, *(1 - x for x in reversed(near)), 1.0]
    parts = [_gl(n if a == near[-1] else GRADED_NODES, a, b)
             for a, b in itertools.pairwise(edges)]
    return tuple(np.concatenate(x) for x in zip(*parts))


def _radial(levels):
    """Fractions s of RHO_MAX and weights: :data:`RADIAL_EDGES`'s panels, and ``levels`` more
    geometric ones (ratio 4) below their first edge."""
    edges = [RADIAL_EDGES[1] * 4.0**-k for k in range(levels, 0, -1)]
    edges = [0.0, *edges, *RADIAL_EDGES[1:]]
    parts = [_gl(RADIAL_NODES, a, b) for a, b in itertools.pairwise(edges)]
    return tuple(np.concatenate(x) for x in zip(*parts))


@functools.cache
def _ray_gauss(dim, n):
    """The n-node Gauss rule on [0, inf) for the weight r^(dim - 1) exp(-r^2 / 2), exact for
    polynomials in r of degree < 2n: Golub-Welsch from the weight's moments mu_j =
    2^((j + dim)/2 - 1) Gamma((j + dim)/2), in 50-digit arithmetic (their Hankel matrix is
    ill-conditioned in float64)."""
    with mpmath.workdps(50):
        half = [mpmath.mpf(j + dim) / 2 for j in range(2 * n + 1)]
        mu = [mpmath.mpf(2) ** (h - 1) * mpmath.gamma(h) for h in half]
        R = mpmath.cholesky(mpmath.matrix([[mu[i + j] for j in range(n + 1)]
                                           for i in range(n + 1)])).T  # H = R^T R
        J = mpmath.zeros(n, n)  # the Jacobi matrix of the orthogonal polynomials' recurrence
        for j in range(n):
            J[j, j] = R[j, j + 1] / R[j, j] - (R[j - 1, j] / R[j - 1, j - 1] if j else 0)
            if j + 1 < n:
                J[j, j + 1] = J[j + 1, j] = R[j + 1, j + 1] / R[j, j]
        nodes, vectors = mpmath.eigsy(J)
        r = np.array([float(x) for x in nodes])
        w = np.array([float(mu[0] * vectors[0, i] ** 2) for i in range(n)])
    order = np.argsort(r)
    return r[order], w[order]


def _ray_rule(dim, levels, degree):
    """Nodes r >= 0 (in standard deviations) and weights on a ray of a ``dim``-D standard normal:
    sum_i w_i f(r_i) = int f(r) r^(dim - 1) exp(-r^2 / 2) dr. ``degree``: f is a polynomial of
    degree <= 4 degree in r (a product of up to four features of that degree, :func:`_degree`),
    which :func:`_ray_gauss` with 2 degree + 1 nodes integrates exactly; None: the composite
    panels (:func:`_radial`, graded by ``levels``) truncated at RHO_MAX."""
    if degree is not None:
        return _ray_gauss(dim, 2 * degree + 1)
    s, ws = _radial(levels)
    r = RHO_MAX * s
    return r, ws * RHO_MAX * r ** (dim - 1) * np.exp(-r**2 / 2)


def gaussian_rule(K, bend=None, degree=None):
    """Nodes u (..., P, B) and weights (..., P) with sum_p w_p f(u_p) = E f(u), u ~ N(0, K).

    B = 2: polar in whitened variables, u = sqrt(diag K) (A z) with A A^T = R (R the
    correlation matrix, A its Cholesky factor) and z ~ N(0, I): E f = int dtheta / (2 pi)
    int rho exp(-rho^2 / 2) f(A rho e_theta) drho. The angular panels end where a ray crosses
    an axis u_a = 0 (four angles), so that kinks of elementwise functions fall on panel edges;
    the integrand is isotropic at any correlation (a rule polar in u itself lost 1e-2 of a 4th
    moment at |corr| = 0.99) and at any ratio of the scales (a tangent grown by its Jacobian).
    The two rays +-1 for B = 1. Degree-1 activations make the radial integrand a power of rho
    times the Gaussian density, which the Gauss-Legendre panels (truncated at 9 sd) integrate
    to ~1e-12 (the arc-cosine kernel check) and, given ``degree``, a Gauss rule exactly; smooth
    saturating ones (erf, tanh) to ~1e-13 for q <= 30 (geometric panels, :data:`RADIAL_EDGES`).
    ``bend``: the width (true units) over which f bends away from u_a = 0 (1 for tanh, erf,
    gelu; None: f is smooth but at u_a = 0): where the scale is many times it, panels graded
    toward radius 0 and toward each axis crossing resolve the bend (:func:`_levels`).
    ``degree``: f is a product of up to four features that are polynomials of this degree in
    rho on each ray (positively homogeneous ones, relu and linear of degree 1, plus constants:
    :func:`_degree`), which :func:`_ray_rule` integrates exactly (3 radial nodes for degree 1
    where the panels take 80), with fewer angular nodes (:data:`HOMOGENEOUS_ANGLE_NODES`).
    B <= 2 only. K = 0 throughout (a residual branch of zero weights: u = 0 at every feature):
    its one node u = 0.
    """
    B = K.shape[-1]
    if np.all(K == 0):
        return np.zeros(K.shape[:-2] + (1,) + K.shape[-1:]), np.ones(K.shape[:-2] + (1,))
    angular, radial = _levels(K, bend)
    if B == 1:
        rho, wr = _ray_rule(1, radial, degree)
        rho = rho * np.sqrt(K[..., 0, 0])[..., None]  # (..., R)
        u = np.concatenate([rho, -rho], axis=-1)[..., None]
        return u, np.broadcast_to(np.concatenate([wr, wr]) / np.sqrt(2 * np.pi), u.shape[:-1])
    if B != 2:
        raise ConfigError("number of inputs B with width=", B,
                          "1 or 2 (the finite-width feature law is a 2-D quadrature)")
    if np.any(np.diagonal(K, axis1=-2, axis2=-1) <= 0):
        raise ConfigError("K (gaussian_rule's Gram)", "a zero diagonal entry",
                          "positive diagonal entries (a walk loses a stream of zeros first)")
    scale = np.sqrt(np.diagonal(K, axis1=-2, axis2=-1))
    r = np.clip(K[..., 0, 1] / (scale[..., 0] * scale[..., 1]), -1.0, 1.0)
    c = np.sqrt(1 - r * r)  # A = [[1, 0], [r, c]]: u_0 = 0 at theta = pi/2, 3 pi/2; u_1 = 0
    # (|r| = 1, identical inputs up to sign: u_1 = r u_0, a panel of width 0)
    theta0 = np.arctan2(-r, c) % np.pi  # where r cos + c sin = 0, and theta0 + pi
    edges = np.sort(np.stack([np.full_like(r, np.pi / 2), np.full_like(r, 3 * np.pi / 2),
                              theta0, theta0 + np.pi], axis=-1), axis=-1)
    edges = np.concatenate([edges, edges[..., :1] + 2 * np.pi], axis=-1)  # (..., 5)
    x, wx = _graded(ANGLE_NODES if degree is None else HOMOGENEOUS_ANGLE_NODES * max(degree, 1),
                    angular)
    width = np.diff(edges, axis=-1)[..., None]  # (..., 4, 1)
    theta = (edges[..., :-1, None] + width * x).reshape(r.shape + (-1,))  # (..., A)
    wtheta = (width * wx).reshape(r.shape + (-1,))
    rho, wr = _ray_rule(2, radial, degree)  # (R,)
    z = rho[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=-1)[..., :, None, :]
    u = np.stack([z[..., 0], r[..., None, None] * z[..., 0] + c[..., None, None] * z[..., 1]],
                 axis=-1) * scale[..., None, None, :]  # (..., A, R, 2)
    w = wtheta[..., :, None] * wr / (2 * np.pi)
    lead = w.shape[:-2]
    return u.reshape(lead + (-1, 2)), w.reshape(lead + (-1,))


def feature_moments(y, w):
    """E[y_a], E[y_a y_b], E[y_a y_b y_c], E[y_a y_b y_c y_d] of features y on quadrature nodes
    (..., P, B) with weights (..., P): sums over the nodes as matrix products of y and of its
    pair products y_a y_b ((..., P, B^2); a 5-operand einsum's loop took 5-9x longer)."""
    B = y.shape[-1]
    pairs = (y[..., :, :, None] * y[..., :, None, :]).reshape(y.shape[:-1] + (B * B,))
    wy, wpairs = (np.swapaxes(w[..., :, None] * x, -1, -2) for x in (y, pairs))
    lead = np.broadcast_shapes(w.shape[:-1], y.shape[:-2])
    return ((w[..., None, :] @ y)[..., 0, :], wy @ y, (wpairs @ y).reshape(lead + (B,) * 3),
            (wpairs @ pairs).reshape(lead + (B,) * 4))


def feature_noise(y, w, cross_means, cross_grams):
    """Sigma (..., D, D) of the realised statistics of N i.i.d. features y (nodes (..., P, B),
    weights w): :func:`noise_of_moments` of their :func:`feature_moments`."""
    return noise_of_moments(*feature_moments(y, w), cross_means, cross_grams)


def noise_of_moments(E1, E2, E3, E4, cross_means, cross_grams):
    """Sigma (..., D, D) of the realised statistics [K (B^2), m (B), X^i (B^2 each)] of N i.i.d.
    features y with moments E1..E4 (:func:`feature_moments`; numbers, or object arrays of
    sympy expressions for the symbolic face): :func:`noise_of_covariances` of Cov(y_a, y_c),
    Cov(y_b, y_c y_d) and Cov(y_a y_b, y_c y_d)."""
    c11 = E2 - outer(E1, E1)  # Cov(y_a, y_c)
    c3 = E3 - E1[..., :, None, None] * E2[..., None, :, :]  # Cov(y_b, y_c y_d) [b, c, d]
    c4 = E4 - E2[..., :, :, None, None] * E2[..., None, None, :, :]
    return noise_of_covariances(c11, c3, c4, cross_means, cross_grams)


def noise_of_covariances(c11, c3, c4, cross_means, cross_grams, features=None):
    """Sigma (..., D, D) of the realised statistics [K (B^2), m (B), X^i (B^2 each)] of N i.i.d.
    features, each statistic the mean of a per-feature term: Cov(K_ab, K_cd) = c4[a, b, c, d],
    Cov(m_b, K_cd) = c3[b, c, d], Cov(m_a, m_c) = c11[a, c]; for the cross moment X^i_ab = mean_n
    r_na y_nb with a fixed stream r^i of feature mean m_i and cross Grams R_ij = mean_n
    r^i_na r^j_nc: Cov(X^i_ab, K_cd) = m_ia c3[b, c, d], Cov(X^i_ab, m_c) = m_ia c11[b, c],
    Cov(X^i_ab, X^j_cd) = R_ij,ac c11[b, d]. ``features``: Cov(y_b, y_d) of the features where
    m's term is y + a (:func:`post_norm_noise`: its terms a, of mean 0, from the features alone):
    X^i's is then r y + m_i a, and Cov(X^i_ab, X^j_cd) = R_ij,ac features[b, d] + m_ia m_jc
    (c11 - features)[b, d]."""
    B = c11.shape[-1]

    def block(spec, x, rows, cols):
        out = np.einsum(spec, *x)
        return out.reshape(out.shape[:out.ndim - len(spec.split("->...")[1])] + (rows, cols))

    def cross(i, j):
        if features is None:
            return block("...ac,...bd->...abcd", [cross_grams[i][j], c11], B * B, B * B)
        return (block("...ac,...bd->...abcd", [cross_grams[i][j], features], B * B, B * B)
                + block("...a,...c,...bd->...abcd", [cross_means[i], cross_means[j],
                                                      c11 - features], B * B, B * B))

    n = len(cross_means)
    grid = [[block("...abcd->...abcd", [c4], B * B, B * B),
             block("...cab->...abc", [c3], B * B, B)]
            + [block("...c,...dab->...abcd", [cross_means[j], c3], B * B, B * B) for j in range(n)],
            [None, block("...ac->...ac", [c11], B, B)]
            + [block("...c,...ad->...acd", [cross_means[j], c11], B, B * B) for j in range(n)]]
    for i in range(n):
        grid.append([None, None] + [cross(i, j) for j in range(n)])
    for r, row in enumerate(grid):  # the lower blocks are the transposes of the upper ones
        for c in range(r):
            row[c] = np.swapaxes(grid[c][r], -1, -2)
    lead = np.broadcast_shapes(*[x.shape[:-2] for row in grid for x in row])
    return np.concatenate([np.concatenate([np.broadcast_to(x, lead + x.shape[-2:]) for x in row],
                                          axis=-1) for row in grid], axis=-2)


# -- the walk -----------------------------------------------------------------------------
class Lost(str):
    """Why a walk stopped (the message); ``pointwise``: a reason that holds at some grid points
    only (a stream of zeros, an activation's bend, float64's range), so that walking the
    grid in parts (:func:`each_point`) keeps the others; ``points``: the indices of the grid
    points it holds at, in :func:`~sigprop.ops.grid_points` order (None: not known per point,
    one walk served the grid); ``below``: a tangent walk's reason that holds only for tangents
    started below where it was met (a tangent of 0 there), not for the layers that joined its
    walk above that point (:func:`_close`); ``partial``: only the statistics the message names
    are NaN, at every layer (the others hold)."""

    pointwise: bool
    points: frozenset | None
    below: bool
    partial: bool

    def __new__(cls, why: str, pointwise: bool = False, points: frozenset | None = None,
                below: bool = False, partial: bool = False):
        self = super().__new__(cls, why)
        self.pointwise, self.points, self.below, self.partial = pointwise, points, below, partial
        return self


class _Walk:
    """(reference stack, b, C) pushed op by op through a net; ``chain``: the ops met since the
    top frame's features were last drawn fresh (None when its statistics are settled; [] where
    they are Gaussian features still to be drawn, whose law the top frame holds)."""

    def __init__(self, s0: Moments, ctx: Context, fresh: bool, tangent: bool = False,
                 cumulants: bool = False):
        self.ctx, self.frames, self.widths, self.tangent = ctx, [s0], [1.0], tangent
        self.t_ls = 0.0  # a tangent walk: t's log scale where it starts
        self.stop_when_lost = tangent  # no laws past a lost op (a walk kept for its frames: on)
        D = _frame_start(1, s0.K.shape[-1])  # (one frame's K and m)
        lead = _lead(self.frames)
        self.b, self.C = np.zeros(lead + (D,)), np.zeros(lead + (D, D))
        self.chain = [] if fresh else None
        self.chain_ctx = ctx  # where the chain's Dense is (the messages of its draw name it)
        self.chain_end = ctx  # where its last op is (the scale its features reach is told there)
        self.norm_ctx = ctx  # and its norm
        self.fan_in = 1.0  # the chain's Dense's input width (a multiple of N)
        # per frame: the 3rd and 4th joint cumulants of its features (true units; None:
        # unknown), which uniform weights and a varying FeatureAffine on a settled stream need
        # (``cumulants``: tracked, for a net with either, :func:`_tracks_cumulants`);
        # the inputs' are 0 (Gaussian features, as the Monte Carlo draws them); and whether a
        # branch frame was drawn by a Dense since it opened (its features then independent of
        # the stream's, so cumulants add at the sum)
        self.track = cumulants
        B = s0.K.shape[-1]
        self.cumulants = [_gaussian_cumulants(lead, B)]
        self.drawn = [True]
        # per frame: its cross moments with the enclosing frames are a placeholder (0) with no
        # first-order law, which no law may read (a batch-of-two BatchNorm's output,
        # :meth:`_batchnorm`), until a Dense draws the frame afresh
        self.cross_unknown = [False]
        self.lost: Lost | None = None  # the first op with no fluctuation rule
        self.batchnorms: list = []  # (eps, input state, (l, beta^2 | None)) of each BatchNorm
        self.block: tuple | None = None  # (l, op): the top-level layer being walked
        self.branch = None  # its recorded residual branch's [a log q, a q/q_inf, v log q]
        # (B each: :meth:`_records_branch`, :meth:`_branch_stats`; NaN where not resolved)
        self.tape: list | None = None  # its steps, kept for an adjoint pass (:func:`_adjoint`)
        self.waiting: list = []  # (join, chain length): layers that joined an open chain
        self.stale: list = []  # their joins where the chain grew before it was drawn
        self.start_note = ""  # why the stream here is drawn (a tangent walk's start), told
        # where an activation then has no rule (until a reduction)
        self.after_norm = False  # a tangent walk whose t starts at the output of the norm in
        # its open chain (only linear maps after it): t is a placeholder before the norm, and
        # joins fresh at its output (:func:`_tangent_walk`)
        self.after_dense = False  # likewise at the output of the Dense that opens the chain
        # (uniform weights, whose features are drawn with the chain: only linear maps after)
        self.weights_at = None  # a weight-gradient walk through its block: how many of the
        # block's Denses it has met, each adding to t the derivative along a random direction
        # of its weights (:meth:`_start_at_weights`); None: no such walk, or past its block
        self.after_weights = None  # T x joins t at the output of the chain's Dense: the factor
        # of K_xx in its variance, in t's units (:func:`_tangent_dense`)

    @property
    def joins_open(self) -> bool:
        """t starts inside x's open chain (:attr:`after_norm`, :attr:`after_dense`): drawn by
        a walk of its own, which joins a recorded walk after its draw (:meth:`settle`)."""
        return self.after_norm or self.after_dense

    def push(self, fn, kurtosis=None, linear=False, top=False):
        """A deterministic map of the stack (the delta method). ``kurtosis``: (M_of, k, fixed)
        adds k H:M / 2 to the bias, M = M_of(cumulants) (..., D, D) PSD, H the Hessian of
        ``fixed`` (a map of the stack; None: fn) (the uniform weights' term,
        :meth:`_uniform_term`). ``linear``: fn is affine in the realised statistics (a residual
        sum, a branch's copy of the stream, a Scale), so in the scaled state too: H = 0.
        ``top``: fn is fr[:-1] + [law(fr[-1])], a map of the top frame alone (the adjoint
        differentiates it along fewer coordinates, :func:`_coordinates`)."""
        ref_in = self.frames
        with np.errstate(over="ignore", invalid="ignore"):  # (past float64: checked below)
            ref_out = fn(ref_in)
        if self.lost:
            self.frames = ref_out
            return
        lead = _lead(ref_out + ref_in)
        x0 = np.broadcast_to(flatten(ref_in, ref_in), lead + (self.b.shape[-1],))
        flat = _flat(fn, ref_in, ref_out)
        if kurtosis is not None:  # (its Hessian's map, flattened: by default the pushed one)
            M_of, k, fixed = kurtosis
            kurtosis = M_of, k, flat if fixed is None else _flat(fixed, ref_in, ref_out)
        b, C = self.b, self.C
        with np.errstate(over="ignore", invalid="ignore"):  # (checked below)
            _, self.b, self.C = delta_step(flat, x0, np.broadcast_to(b, x0.shape),
                                           np.broadcast_to(C, x0.shape + x0.shape[-1:]),
                                           ref_in, linear)
        if self.tape is not None:
            self.tape.append((flat, x0, kurtosis, linear,
                              _coordinates(len(ref_in), ref_in[0].K.shape[-1], top)))
        if kurtosis is not None:
            M = np.broadcast_to(M_of(self.cumulants), x0.shape + x0.shape[-1:])
            self.b = self.b + np.asarray(k)[..., None] * delta_step(kurtosis[2], x0, 0 * x0, M,
                                                                    ref_in)[1]
        self.frames = ref_out
        if not (np.all(np.isfinite(self.b)) and np.all(np.isfinite(self.C))):
            where = f"layer {self.block[0]}" if self.block else "the inputs"
            if not any(self._beyond_float64(f, where) for f in ref_out):  # (else: said there)
                self.lose(f"{where}: a law evaluated at the central differences' steps left "
                          "float64 (its state near the edge of the valid moments, a singular "
                          "Gram): no finite-width expansion resolved there", pointwise=True)

    def rescale_tangent(self):
        """A pair walk's tangent brought back to x's scale: J t and c J t have one law up to the
        factor c (every law is homogeneous in t), so this changes units only (its scaled
        state, b and C stay); the tape keeps the log q it removed. Without it the tangent
        would leave float64 where the gradient grows, however far up the layers it is read."""
        f = self.frames[0]
        with np.errstate(invalid="ignore"):  # (past float64: inf - inf, lost where drawn)
            d = 2 * (f.ls[..., 1] - f.ls[..., 0])
        self.frames = [f.replace(ls=np.stack([f.ls[..., 0], f.ls[..., 0]], -1))]
        if self.track:  # true units: t's entries scale
            c = np.stack(np.broadcast_arrays(np.ones_like(d), np.exp(-d / 2)), -1)
            self._cumulant_step(lambda ks: [_transformed(ks[0], c[..., :, None] * np.eye(2))])
        self.t_ls = self.t_ls - d / 2  # where it started, in the new units
        if self.tape is not None:
            self.tape.append(("rescale", d))

    def settle(self):
        """Draw the top frame's features: the law given the realised past (a delta step), then
        the i.i.d. fluctuation of its realised statistics (:func:`feature_noise`). The layers
        waiting on the draw are drawn with it, unless an op joined the chain after them or the
        draw lost the walk (then they are stale: walked on their own). A layer whose t joined
        at a norm's output (:attr:`after_norm`) is drawn by its own walk, with the ops that
        joined the chain since, and joins here: after the draw both pairs have the same
        infinite-width state (K_xt = 0, m_t = 0, in units of unit diagonal). So is one whose t
        joined at the output of a uniform Dense (:attr:`after_dense`)."""
        if self.chain is None:
            return
        chain = self.chain
        n = len(chain) - bool(chain and _is_norm(chain[-1]))  # (drawn before a norm that
        self._draw()  # ends it, :meth:`_draw`)
        for join, k in self.waiting:
            start = join[5]
            if start.joins_open and not self.lost:
                drawn = copy.copy(start)
                drawn.chain = start.chain + chain[k:]
                drawn.norm_ctx = self.norm_ctx  # (where a norm among those ops is)
                drawn.settle()
                with np.errstate(divide="ignore", invalid="ignore"):  # (t's log q from its
                    log_q = _tangent_log_q(self) - _tangent_log_q(drawn) + 2 * drawn.t_ls
                    # start to here, and the shared tangent's above; a tangent of 0 there is
                    # lost at the next Dense, with its reason)
                if drawn.lost:  # (its own walk says why)
                    self.stale.append(join)
                else:  # (its cumulants, in true units, put in this walk's: the uniform
                    # weights' terms above read them with this walk's moments)
                    cumulants = [_transformed(k, np.exp(f.ls - g.ls)[..., :, None] * np.eye(2))
                                 for k, f, g in zip(drawn.cumulants, self.frames, drawn.frames)]
                    self.tape.append(join[:2] + (drawn.b, drawn.C) + join[4:6]
                                     + (cumulants, log_q))
            elif k == n and not self.lost:
                self.tape.append(join + (_tangent_log_q(self),))
            else:
                self.stale.append(join)
        self.waiting = []

    def _draw(self):
        chain, self.chain, ctx = self.chain, None, self.chain_ctx
        if chain and _is_norm(chain[-1]) and not self.after_norm:  # nothing after the norm:
            self.chain = chain[:-1]  # the features before it drawn, then the norm as a map of
            # their statistics (a tangent that starts after the norm is drawn with its output)
            self._draw()
            self._map(chain[-1], self.norm_ctx)
            return
        base = self.frames
        if self._beyond_float64(base[-1], (ctx if chain else self.chain_end).path):  # (no
            return  # chain: base holds the law of features a block's end left to draw)
        dense = bool(chain) and isinstance(chain[0], Dense)
        with np.errstate(over="ignore", invalid="ignore"):  # (checked at once)
            gauss = self.law(chain[0], base[-1], ctx) if dense else base[-1]
        if self._beyond_float64(gauss, ctx.path):
            return
        zero = np.diagonal(gauss.K, axis1=-2, axis2=-1) <= 0
        if self.after_norm:  # (t's placeholder is no tangent: x's alone)
            zero = zero[..., :1]
        weights = dense and np.any(np.asarray(ctx.p(chain[0].sigma_w)) == 0)
        constant = len(self.frames) > 1 and weights and bool(np.all(zero))  # x + 0 F(x)
        if np.any(zero) and not constant:  # (its frames: below)
            cause = "zero weights" if weights else "its input is 0"
            self.lose(f"{ctx.path}: " + (f"the tangent J t (or the stream) is exactly 0 after "
                      f"this Dense ({cause}): no relative correction to its gradient"
                      if self.tangent else f"the {'stream' if len(self.frames) == 1 else 'branch'}"
                      f" is exactly 0 here ({cause}): its log q has no finite-width expansion"),
                      pointwise=True, below=self.tangent)
        if any(_is_norm(op) for op in chain):  # (lost or not)
            self._draw_after_norm(chain, gauss, ctx)
            return
        chain_law = (functools.partial(_tangent_chain, after=self.after_dense,
                                       weights=self.after_weights) if self.tangent
                     else _unit_chain)
        self.after_dense, self.after_weights = False, None  # (t, drawn with the chain's
        # features, is a tangent from here)
        if self.lost:  # its frames only (past float64 they are inf or NaN: no word needed)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                self.push(lambda fr: fr[:-1] + [chain_law(chain, fr[-1], ctx)], top=True)
            return
        elementwise = chain[1:] if dense else chain
        bend = _bend(elementwise, ctx)  # (a tangent walk's J t enters linearly: x's only)
        bend = bend if bend is None or not self.tangent else (bend, np.inf)
        Ku = gauss.K * outer(np.exp(gauss.ls), np.exp(gauss.ls))
        ratio = None if bend is None or constant else _bend_ratio(Ku, bend)
        if not self.lost and ratio is not None and _saturates(elementwise) and \
                not ratio <= BEND_MAX:
            self.lose(f"{ctx.path}: an activation here bends over a width "
                      f"{1 / ratio:.2g} of its input's scale (below "
                      f"{1 / BEND_MAX:g}): its features fall in the bend with about that "
                      "probability, which no practical width samples", pointwise=True)
            return
        kurtosis = self._uniform_weights(chain, base, ctx)
        self._push_draw(lambda s, extra=None: chain_law(chain, s, ctx, extra=extra), chain, ctx,
                        kurtosis)
        if self.lost or self._beyond_float64(self.frames[-1], self.chain_end.path):  # (the
            # features' scale, past the chain's last op)
            return
        top = self.frames[-1]
        u, w = gaussian_rule(Ku, bend, _degree(elementwise, ctx))
        y, v = _features(elementwise, u, ctx, self.tangent)
        if self.track:  # of the features as they are: over the vectors' nodes too
            drawn = _cumulants(y, _mixed(w, v))
            self._cumulant_step(lambda ks: ks[:-1] + [drawn])
        self.drawn = self.drawn[:-1] + [self.drawn[-1] or dense]
        y = y * np.exp(-top.ls)[..., None, :]
        means, grams = self._enclosing()
        # given the vectors (their moments up to the 2nd are the declared ones exactly, so the
        # realised statistics' means are too): the mean over them of the features' covariance
        y = np.moveaxis(y.reshape(y.shape[:-2] + (-1, len(v), y.shape[-1])), -2, 0)
        sigma = np.einsum("q,q...->...", v, feature_noise(y, w, means, grams))
        if len(v) > 1 and means:
            sigma = sigma + _assignment_noise(np.einsum("...p,...pb->...b", w, y), v, means,
                                              grams)
        self._add_draw(sigma)

    def _enclosing(self):
        """(feature means, cross Grams) of the frames enclosing the top one, as
        :func:`feature_noise` takes them."""
        outer_frames = self.frames[:-1]
        return [f.m for f in outer_frames], [[_cross_gram(outer_frames, i, j)
                                              for j in range(len(outer_frames))]
                                             for i in range(len(outer_frames))]

    def _push_draw(self, law, chain, ctx: Context, kurtosis=None):
        """:meth:`push` of the top frame through ``law`` (a chain's, law(s, extra=None)). Where
        the chain opens with a Dense whose bias has a fan-in part, of variance c / n_in (c =
        ``sigma_b_fan_in``^2, n_in = fan_in N), that variance moves the law's mean by dF/de c /
        n_in (F: the law with e added to the Dense's output variance), a first-order term of
        its own: b gains dF/de c / fan_in, by one-sided differences at e = h, 2h (Richardson,
        O(h^2); h = BIAS_STEP of the output variance; e 1 1^T keeps every Gram positive),
        taped as a draw's bias for the adjoint."""
        frames = self.frames
        self.push(lambda fr: fr[:-1] + [law(fr[-1])], kurtosis, top=True)
        dense = chain[0] if chain and isinstance(chain[0], Dense) else None
        if self.lost or dense is None or is_zero(dense.sigma_b_fan_in):
            return
        c = np.asarray(ctx.p(dense.sigma_b_fan_in), dtype=float) ** 2 / np.asarray(self.fan_in)
        K = _true(self.law(dense, frames[-1], ctx))[0]
        var = np.min(np.diagonal(K, axis1=-2, axis2=-1)[..., :1 if self.tangent else None], -1)
        h = BIAS_STEP * np.where(var > 0, var, 1.0)  # (0: a branch of zero weights, x + 0 F(x))
        out = self.frames

        def moved(e):
            return flatten(frames[:-1] + [law(frames[-1], extra=e)], out) - flatten(out, out)

        shift = (4 * moved(h) - moved(2 * h)) / (2 * h[..., None]) * c[..., None]
        self.b = self.b + shift
        if self.tape is not None:
            self.tape.append(("bias", shift))

    def _add_draw(self, sigma, bias=None):
        """A draw's fluctuation on the top frame's statistics, per 1 / n (n the stream's width
        there): C gains Sigma / n, and b gains ``bias`` / n where given (the post-norm
        plug-in's); the tape keeps both for the adjoint (f gains G:Sigma and g.b there). One
        frame then goes back to unit diagonal (the scaled state O(1) at any depth)."""
        width = np.asarray(self.widths[-1])
        D, d = self.C.shape[-1], sigma.shape[-1]
        extra = np.zeros(np.broadcast_shapes(self.C.shape, sigma.shape[:-2] + (D, D)))
        extra[..., D - d:, D - d:] = sigma / width[..., None, None]
        self.C = self.C + extra
        if self.tape is not None:
            self.tape.append(extra)
        if bias is not None:
            shift = np.zeros(extra.shape[:-1])
            shift[..., D - d:] = bias / width[..., None]
            self.b = self.b + shift
            if self.tape is not None:
                self.tape.append(("bias", shift))
        if len(self.frames) == 1:
            self.to_unit_diagonal()

    def _draw_after_norm(self, chain, gauss: Moments, ctx: Context):
        """Draw a chain (Dense ->) linear maps -> norm -> elementwise ops: the realised
        statistics of f(norm(u)), the norm's centre and scale realised over the same N features
        u (:func:`post_norm_noise`), after the chain's infinite-width law given the past."""
        k = next(i for i, op in enumerate(chain) if _is_norm(op))
        pre, norm, post = chain[:k], chain[k], chain[k + 1:]  # (post: no varying vectors,
        # which settle the chain, :meth:`walk`); the norm's input and output in true units:
        linear = pre[1:] if pre and isinstance(pre[0], Dense) else pre
        after, after_dense, at_weights = self.after_norm, self.after_dense, self.after_weights
        with np.errstate(over="ignore", invalid="ignore"):
            u = functools.reduce(lambda s, op: self.law(op, s, ctx), linear, gauss)
            y = self.law(norm, u, ctx)
        self.after_norm = self.after_dense = False  # (t, drawn with the norm's output, is a
        self.after_weights = None  # tangent from here on)
        for f in (u, y):
            if self._beyond_float64(f, self.norm_ctx.path, fourth=True):
                break
        if self.tangent:  # the pair (x, J t): the norm's Jacobian on t (or t starting after
            def norm_input(s, extra=None):  # it: ``after``), then (f, f' J t)
                return (_tangent_chain(pre, s, ctx, after=after_dense, extra=extra,
                                       weights=at_weights) if pre else s)

            def law(s, at=None, extra=None):
                out = _tangent_norm(norm, norm_input(s, extra), ctx, after=after, at=at)
                return _tangent_chain(post, out, ctx) if post else out
        else:  # (lost: the laws' own log scales, which stay finite where true units do not)
            def norm_input(s):
                return _apply(pre, s, ctx)

            def law(s, at=None, extra=None):
                if at is None:
                    return (_apply if self.lost else _unit_chain)(chain, s, ctx, extra)
                return _unit_chain(post, _tangent_norm(norm, norm_input(s), ctx, tangent=False,
                                                       at=at), ctx)
        def held(ref):  # the law with the norm's statistics held at ref's (uniform weights)
            at = norm_input(ref[-1])
            return lambda fr: fr[:-1] + [law(fr[-1], at)]

        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            kurtosis = self._uniform_weights(chain, self.frames, ctx, held)
            self._push_draw(law, chain, ctx, kurtosis)
        if self.lost or self._beyond_float64(self.frames[-1], self.chain_end.path):
            return
        got = post_norm_noise(linear, norm, post, gauss, np.exp(-self.frames[-1].ls),
                              self.tangent, ctx, *self._enclosing(), after=after)
        if got is None:
            self.lose(f"{self.norm_ctx.path}: an activation after this {type(norm).__name__} "
                      f"bends over a width below {1 / BEND_MAX:g} of its input's scale: its "
                      "features fall in the bend with about that probability, which no "
                      "practical width samples", pointwise=True)
            return
        sigma, bias, drawn = got
        top = self.frames[-1]  # (its cumulants, tracked for uniform weights or a varying
        # FeatureAffine elsewhere: the features' at the norm's statistics, 0 where only linear
        # maps follow the norm, whose output is then Gaussian given them)
        self._cumulant_step(lambda ks: ks[:-1] + [
            drawn if any(isinstance(op, Act) for op in post)
            else _gaussian_cumulants(_lead([top]), top.K.shape[-1])])
        self.drawn = self.drawn[:-1] + [True]
        self._add_draw(sigma, bias)

    def to_unit_diagonal(self):
        """The one frame in units of unit diagonal (:func:`to_unit_diagonal`). A change of
        units is linear in the scaled state: with e = diag(K)^(-1/2) of the reference, each
        K_ab scales by e_a e_b and m_a by e_a. b and C are scaled exactly, no differences,
        and the tape keeps the factors (an adjoint step with J = diag of them, H = 0)."""
        f = self.frames[0]
        d = np.diagonal(f.K, axis1=-2, axis2=-1)
        e = 1 / np.sqrt(np.where(d > 0, d, 1.0))
        self.frames = [to_unit_diagonal(f)]
        if self.lost:
            return
        s = np.concatenate([outer(e, e).reshape(e.shape[:-1] + (-1,)), e], -1)
        self.b, self.C = self.b * s, self.C * outer(s, s)
        if self.tape is not None:
            self.tape.append(("units", s))

    def _cumulant_step(self, fn):
        """The frames' cumulants (a list) mapped by ``fn``, which the tape keeps (the adjoint
        replays them from each layer's own start: :func:`_replayed_terms`); nothing for a walk
        that does not track them (in true units they overflow where the scale does)."""
        if not self.track:
            return
        self.cumulants = fn(self.cumulants)
        if self.tape is not None:
            self.tape.append(("cumulants", fn))

    def _uniform_weights(self, chain, frames, ctx: Context, held=None):
        """The uniform weights' term (:meth:`_uniform_term`) for :meth:`push` where the chain's
        Dense has them, its Hessian that of ``held(frames)`` where given (built only then);
        None for Gaussian weights, or where the 4th moments it reads are unknown (the walk then
        lost, with why)."""
        if self.lost or not (chain and isinstance(chain[0], Dense)
                             and chain[0].init == "uniform"):
            return None
        if self.cumulants[-1] is None:
            self.lose(f"{ctx.path}: uniform weights on features whose 3rd and 4th "
                      "cumulants are not known here (behind a residual branch with no Dense or "
                      "a BatchNorm)")
            return None
        return self._uniform_term(frames, held and held(frames))

    def _uniform_term(self, frames, fixed=None):
        """Uniform weights W_ij ~ U(+-sqrt(3 / n) sigma_w) (excess kurtosis -6/5): given the
        realised input x the pre-activations h_i are i.i.d. with the Gaussian law's covariance
        and 4th cumulant kappa_abcd = -(6/5) sigma_w^4 M_abcd / n, M = mean_j x_aj x_bj x_cj x_dj.
        By Edgeworth E f(h) = E_G f + kappa : E_G[d^4 f] / 24 + O(1/n^2), and E_G[d_abcd f] =
        4 d^2 E_G f / dS_ab dS_cd (S the covariance, = sigma_w^2 K_x + sigma_b^2): the bias
        gains -(2/5) H:M / 2 per 1/n, H the Hessian in the input's Gram K_x. After a norm, f
        is the features at the norm's statistics, which read h's moments up to the 2nd only
        (its centre, scale and tangent cross moment), so kappa leaves them be: H is then the
        Hessian of ``fixed``, the pushed map with the norm's statistics held at the
        reference's. (M_of, -2/5 / n_in, fixed) for :meth:`push`: M_of(cumulants) is M of the
        top frame's cumulants in the list (NaN where they are unknown), in the top frame's K
        block, scaled units."""
        top = frames[-1]
        K, m, _ = _true(top)
        e = np.exp(-top.ls)
        B = m.shape[-1]
        D = flatten(frames, frames).shape[-1]
        start = D - (B * B + B + B * B * (len(frames) - 1))  # the top frame's K

        def M_of(cumulants):
            k = cumulants[-1]
            M = (raw_fourth_moments(K, m, *k) if k is not None
                 else np.full(K.shape[:-2] + (B,) * 4, np.nan))
            M = M * np.einsum("...a,...b,...c,...d->...abcd", e, e, e, e)
            full = np.zeros(M.shape[:-4] + (D, D))
            full[..., start:start + B * B, start:start + B * B] = M.reshape(M.shape[:-4]
                                                                            + (B * B,) * 2)
            return full

        return M_of, -0.4 / np.asarray(self.fan_in), fixed

    def _beyond_float64(self, s: Moments, where: str, fourth=False) -> bool:
        """Lose the walk (True) where ``s`` is past float64 in true units, which the feature
        law and the tangent's laws need, or below ``TRUE_LS_MIN`` (a walk already lost goes
        on: its frames serve), the reason told at ``where``; the true log scale is ls + log
        K_aa / 2 (a law may leave its scale in K: a Dense's), NaN where a law overflowed.
        ``fourth``: its 4th moments are taken in true units (:func:`post_norm_noise`)."""
        if self.lost:
            return False
        # tracked cumulants take the 4th moments, ~q^2, in true units: half the range
        top, bottom = (TRUE_LS_MAX / 2, TRUE_LS_MIN / 2) if self.track or fourth else (
            TRUE_LS_MAX, TRUE_LS_MIN)
        with np.errstate(divide="ignore", invalid="ignore"):
            true = s.ls + np.log(np.diagonal(s.K, axis1=-2, axis2=-1)) / 2
        under = (true < bottom) & (true > -np.inf)  # (-inf: a stream of zeros, said apart)
        if np.all((true <= top) & ~under):  # (NaN: a law that overflowed on the way there)
            return False
        over = true[~(true <= top)]
        over = over[~np.isnan(over)]
        reach = (2 * float(over.max()) if over.size else 2 * float(true[under].min())
                 if under.any() else None)
        self.lose(f"{where}: the stream " + ("leaves float64 (a law overflowed on its way)"
                                             if reach is None else
                                             f"reaches log q = {reach:.4g}, beyond float64 (or "
                                             "too near its smallest normal number)")
                  + " in the true units its finite-width law needs", pointwise=True)
        return True

    def law(self, op: Op, s: Moments, ctx: Context, extra=None) -> Moments:
        """The op's infinite-width law; in a tangent walk, that of the pair (x, J t) (a Scale
        is linear: its own law serves both). ``extra``: a Dense's output variance raised by
        it (true units, :meth:`_push_draw`)."""
        if not self.tangent or isinstance(op, Scale):
            return _apply([op], s, ctx, extra)
        if _is_norm(op):
            return _tangent_norm(op, s, ctx, after=self.after_norm)
        if isinstance(op, Dense):
            return _tangent_dense(op, s, ctx, after=self.after_dense, extra=extra,
                                  weights=self.after_weights)
        return _tangent_affine(op, s, ctx)

    def lose(self, why: str, pointwise: bool = False, below: bool = False):
        if not self.lost:
            self.lost = Lost(why, pointwise, below=below)
            self.b, self.C = self.b * np.nan, self.C * np.nan

    def layer(self, l: int, block: Op):
        """Walk top-level block ``l`` (1-based), then end the layer (:meth:`end_layer`)."""
        if (tick := _TICK.get()) is not None:
            tick()
        self.block, self.branch = (l, block), None
        self.walk(block, self.ctx.at(f"layer {l} {type(block).__name__}"))
        self.end_layer()

    def walk(self, op: Op, ctx: Context):
        """Push the walk through ``op``, whose context (and path, for messages) is ``ctx``."""
        if self.stop_when_lost and self.lost:  # laws past that op: not needed (nor defined)
            return
        if not isinstance(op, (Serial, Repeat, Scale, FeatureAffine, Act)):
            self.start_note = ""  # (a reduction or a new draw: a start's note no longer applies)
        if len(self.frames) == 1 and isinstance(op, (Scale, FeatureAffine, LayerNorm)) \
                and _zeroes(op, ctx):
            self.settle()
            self.lose(f"{ctx.path}: the stream is exactly 0 after this {type(op).__name__} (a "
                      "zero factor): its log q has no finite-width expansion",
                      pointwise=True)
            if self.stop_when_lost:
                return
        affine = isinstance(op, FeatureAffine) and _constant_vectors(op, ctx)
        second = (isinstance(op, FeatureAffine) and not affine and self.chain is not None
                  and any(isinstance(o, FeatureAffine) and not _constant_vectors(o, ctx)
                          or _is_norm(o) for o in self.chain))  # a second one with varying
        # vectors, or one after a norm: on the settled stream
        if isinstance(op, Serial):
            for kid in op.layers:
                self.walk(kid, ctx.at(type(kid).__name__))
        elif isinstance(op, Repeat):
            for _ in range(op.n):
                self.walk(op.block, ctx.at(type(op.block).__name__))
        elif isinstance(op, Dense):
            self.settle()
            if self.weights_at is not None:
                self._start_at_weights(op, ctx)
            self.chain, self.chain_ctx, self.fan_in = [op], ctx, self.widths[-1]
            self.chain_end = ctx
            self.cross_unknown = self.cross_unknown[:-1] + [False]  # (its draw: X decoupled)
            ratio = np.asarray(ctx.p(op.ratio))
            self.widths[-1] = self.widths[-1] * ratio
            grid = 0 * ratio + 0 * np.asarray(ctx.p(op.sigma_b_fan_in))
            if grid.ndim:  # a swept ratio or fan-in bias moves no infinite-width law: the
                # frames take its grid (units only)
                self.frames = [f.replace(ls=f.ls + grid[..., None]) for f in self.frames]
        elif (isinstance(op, (Act, Scale)) or isinstance(op, FeatureAffine) and not second) \
                and self.chain is not None:
            self.chain.append(op)
            self.chain_end = ctx
        elif _is_norm(op) and not self.lost and (self.chain == []
                                                 or self._gaussian_chain(dense=True)):
            self.chain.append(op)  # (its features' statistics: drawn with the ops after it)
            self.norm_ctx = self.chain_end = ctx
        elif isinstance(op, (LayerNorm, RMSNorm, Scale)) or affine:
            self.settle()
            self._map(op, ctx)
        elif isinstance(op, FeatureAffine):  # vectors that vary, on a settled stream
            self.settle()
            self._varying_affine(op, ctx)
        elif _as_scale(op) is not op:  # beta x: a branch it never adds (ReZero at init; a
            if self._records_branch():  # BatchNorm there is not met); its output's statistics
                probe = copy.copy(self)  # from a walk of it as it is, which the stream leaves
                probe.widths, probe.tape = list(self.widths), None
                probe.batchnorms, probe.waiting, probe.stale = [], [], []
                probe._residual(op, ctx)
                B = self.frames[0].K.shape[-1]
                self.branch = (np.full(_lead(self.frames) + (3 * B,), np.nan)
                               if probe.branch is None else probe.branch)
            self.walk(_as_scale(op), ctx)
        elif isinstance(op, Residual):
            self._residual(op, ctx)
        elif isinstance(op, BatchNorm):
            self.settle()
            self._batchnorm(op, ctx)
        else:  # an Act on a settled stream, other ops
            self.settle()
            self._without_rule(op, ctx, f"{ctx.path}: no finite-width rule for "
                               f"{type(op).__name__} here" + (self.start_note or (
                                   " (its input's statistics are settled: a residual branch "
                                   "and its skip both read the stream, or a norm, BatchNorm or "
                                   "FeatureAffine of a settled stream made it; an activation "
                                   "has a rule only in the chain of a Dense's fresh features)"
                                   if isinstance(op, Act) else "")))

    def _batchnorm(self, op: BatchNorm, ctx: Context):
        """A BatchNorm on the settled top frame, recorded for :func:`warn_batchnorm` (its
        layer l; in a residual's branch, its beta^2). Over two inputs (a batch of two, not a
        pair of a larger one) each feature's output is y_i = (1, -1) d_i / sqrt(d_i^2 + eps),
        d_i = (u_i1 - u_i2) / 2: the output Gram is c [[1, -1], [-1, 1]], c = mean_i h(d_i),
        h(d) = d^2 / (d^2 + eps). The forward walk takes c as a map of the realised Gram, c =
        E h(d) at d ~ N(0, v), v = (K_11 + K_22 - 2 K_12) / 4 (the op's law, :meth:`push`),
        exact for Gaussian features (a Dense's, or the Gaussian stream of Pre-BN) but for the
        part r of c the realised Gram does not explain: by Stein the regression of h(d) on the
        features' quadratics is the map's derivative, so r is uncorrelated with every Gram and
        mean of the walk's state, and E r = -F''(v) v^2 / N (the map's curvature also acts on
        the Gram's own sampling noise, 2 v^2 / N, which E c does not see), Var r = (Var h - 2
        v^2 F'(v)^2) / N (F(v) = E h). For eps / v -> 0 these are (3/4) sqrt(pi/2) sqrt(eps /
        v) / N and sqrt(pi/8) sqrt(eps / v) / N, and below that at any eps / v (0.94 and 0.63
        sqrt(eps / v) at 1e-6, 0.88 and 0.56 at 1e-3: 1-D integrals); two BatchNorms' r
        correlate only through features with |d| ~ sqrt(eps) at both, by ~2.5 sqrt(eps / g)
        of Var r, g the batch variance added between them. r's mean and variance, and the
        spread of the output's feature means, are added (:meth:`_batch_of_two_noise`); the
        correlation of two BatchNorms' r is left out where eps / v <= BN_MAP_RATIO at every
        grid point (lost elsewhere, those points alone). The output's
        cross moments with the enclosing frames (E x y, no function of the realised Gram: y ~
        sign d) are a placeholder (:attr:`cross_unknown`): a Dense after it draws them afresh,
        and a residual sum or branch that would read them first loses the walk. Its 3rd and
        4th cumulants are unknown. Elsewhere (B > 2; the gradient's walks, whose BatchNorm
        backward is carried by rare features: :func:`typical_log_grad_q`) no rule: lost."""
        l, blk = self.block or (None, None)
        branch = (l, vec(ctx.p(blk.beta)) ** 2 if isinstance(blk, Residual)
                  and len(self.frames) > 1 else None)
        self.batchnorms.append((np.asarray(ctx.p(op.eps)), self.frames[-1], branch))
        two = self.frames[-1].K.shape[-1] == 2 and not self.tangent and not _PAIRED.get()
        if self.lost or not two:
            self._without_rule(op, ctx, f"{ctx.path}: no finite-width rule for BatchNorm here "
                               "(one for the forward statistics of a batch of two inputs only)"
                               + self.start_note)
            return
        K = _true(self.frames[-1])[0]
        eps = np.asarray(ctx.p(op.eps), dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):  # (v = 0: identical inputs)
            ratio = eps / ((K[..., 0, 0] + K[..., 1, 1] - 2 * K[..., 0, 1]) / 4)
        if not np.all(ratio <= BN_MAP_RATIO):
            self._without_rule(op, ctx, f"{ctx.path}: a BatchNorm over two inputs whose batch "
                               f"variance v is within {1 / BN_MAP_RATIO:g} eps (eps / v up to "
                               f"{float(np.nanmax(np.where(np.isnan(ratio), np.inf, ratio))):.3g}"
                               "): its output's fluctuation beyond the map of the realised Gram, "
                               "~sqrt(eps / v) / N, is not left out there", pointwise=True)
            return
        self._cumulant_step(lambda ks: ks[:-1] + [None])
        v = eps / ratio  # (the realised batch variance at the walk's point, true units)
        self.push(lambda fr: fr[:-1] + [_batch_of_two(op, fr[-1], ctx)], top=True)
        self._batch_of_two_noise(v, eps)
        if len(self.frames) > 1:
            self.cross_unknown = self.cross_unknown[:-1] + [True]

    def _batch_of_two_noise(self, v, eps):
        """What a BatchNorm over two inputs adds to its output's realised statistics beyond the
        map of the realised Gram (:meth:`_batchnorm`), per 1/n (n the frame's features): its c
        the part r, E r = -v^2 F''(v), Var r = Var h - 2 (v F'(v))^2 along K = [[1, -1], [-1,
        1]]; its feature means m_1 = -m_2 = mean_i y_i1 (0 in the map; y_i1 = d_i / sqrt(d_i^2
        + eps) is odd in d_i, so uncorrelated with every quadratic of the features and with
        r), Var m_1 = E y^2 = F(v) (:func:`batch_of_two_moments`). Both left out, the BatchNorm
        output's own q had a 30-100x too small spread (0.6 sqrt(eps / v) / n, not ~(eps / v)
        / n), and a FeatureAffine with a shift after it (its K reads m) none of its
        (2 gamma beta)^2 F / n."""
        if self.lost:
            return
        F, var_h, vF1, v2F2 = batch_of_two_moments(v, eps)
        B, i = 2, len(self.frames) - 1
        start = _frame_start(i, B)
        e = np.exp(np.asarray(self.frames[-1].ls, dtype=float))  # (scaled = true / e e^T)
        width = np.asarray(self.widths[-1], dtype=float)
        D = self.b.shape[-1]
        lead = np.broadcast_shapes(self.b.shape[:-1], np.shape(v), e.shape[:-1], width.shape)
        k_dir = np.zeros(lead + (D,))
        k_dir[..., start:start + B * B] = (np.array([[1.0, -1.0], [-1.0, 1.0]])
                                           / outer(e, e)).reshape(e.shape[:-1] + (B * B,))
        m_dir = np.zeros(lead + (D,))
        m_dir[..., start + B * B:start + B * B + B] = np.array([1.0, -1.0]) / e
        n = width[..., None]
        self.b = self.b + (-v2F2)[..., None] * k_dir / n
        self.C = (self.C + ((var_h - 2 * vF1**2)[..., None] / n)[..., None] * k_dir[..., :, None]
                  * k_dir[..., None, :] + (F[..., None] / n)[..., None] * m_dir[..., :, None]
                  * m_dir[..., None, :])

    def _without_rule(self, op: Op, ctx: Context, why: str, pointwise: bool = False):
        """Lose the walk at ``op``, which has no finite-width rule here (``why``); where the walk
        goes on, the op's infinite-width law carries its frames."""
        self.lose(why, pointwise=pointwise)
        if not self.stop_when_lost:
            with np.errstate(over="ignore", invalid="ignore"):  # (a lost walk's true units
                # may leave float64's range; its numbers are NaN)
                self.frames = self.frames[:-1] + [op.theory_forward(self.frames[-1], ctx)]

    def _unread_cross(self, ctx: Context, what: str):
        """Lose the walk where ``what`` would read the top frame's placeholder cross moments
        (:attr:`cross_unknown`)."""
        if self.cross_unknown[-1]:
            self.lose(f"{ctx.path}: {what} reads the cross moment of a BatchNorm's output with "
                      "the enclosing residual stream before a Dense draws it afresh; it has no "
                      "first-order law here")

    def _start_at_weights(self, op: Dense, ctx: Context):
        """A weight-gradient walk meets a Dense D of its block: t gains T_D x at D's output, the
        derivative of D's output along a direction T_D of its weights, i.i.d. N(0, 1/N) entries
        independent of the net and of the other Denses' (:func:`_tangent_dense`: D's law draws
        it per feature as N(0, K_xx) given the realised x, independent of W x and W t). At
        the top t = sum_D J_D T_D x_D (J_D: the output's Jacobian in D's output), and given the
        net |t|^2 has the law of sum_D ||x_D||^2 |J_D^T delta|^2 / N for one delta ~ N(0, I)
        shared by the Denses (both are Gaussian quadratic forms of the matrix sum_D ||x_D||^2
        J_D J_D^T / N, with the same nonzero spectrum): so N^-1 |t|^2 has the law of
        weight_grad_q, whose mean is then the Denses' sum of N^-2 E ||g_D||^2 ||x_D||^2 and
        whose spread holds their covariances through the shared delta (Cov_delta(|A^T
        delta|^2, |B^T delta|^2) = 2 ||A^T B||_F^2 for two parts, t's cross term), x's
        fluctuation and its coupling to the J_D carried by the walk. At the block's first Dense
        every t before it is dropped (0 in every frame: a linear map) and t's starting log
        scale is -log(n_in / N) / 2 (Var t_i = (n_in / N) K_xx); a later one's T x joins in t's
        units, n_in / N e^(2 t_ls) times K_xx."""
        first = self.weights_at == 0
        self.weights_at += 1
        if op.init != "normal":
            self.lose(f"{ctx.path}: no weight-gradient rule for a Dense with {op.init} weights "
                      "(their 4th cumulant acts on W x, not on the direction T x)")
            return
        if np.any((np.asarray(ctx.p(op.sigma_w)) == 0) & (np.asarray(ctx.p(op.sigma_b)) == 0)):
            self.lose(f"{ctx.path}: no weight-gradient rule for a Dense of zero weights and "
                      "bias (its output is exactly 0: the features are T x alone)",
                      pointwise=True)
            return
        width = np.asarray(self.widths[-1], dtype=float)
        if first:
            t_ls = self.frames[-1].ls[..., 1:]
            self.push(lambda fr: [_without_tangent(f, t_ls) for f in fr[:-1]]
                      + [_without_tangent(fr[-1])], linear=True)
            if self.track:
                P = np.diag(X_ROW)
                self._cumulant_step(lambda ks: [k if k is None else _transformed(k, P)
                                                for k in ks])
            self.t_ls = -0.5 * np.log(width)
        self.after_weights = width * np.exp(2 * self.t_ls)

    def _records_branch(self) -> bool:
        """Whether a residual met now is the one whose branch output the layer records (schema
        ``branch_q``): the first on the stream itself (not nested in another's branch), as the
        infinite-width engine and the Monte Carlo record it; not in a tangent walk."""
        return len(self.frames) == 1 and self.branch is None and not self.tangent \
            and not self.lost

    def _residual(self, op: Residual, ctx: Context):
        """x -> beta x + alpha F(x): F walked on a copy of the stream (a frame of its own), its
        output's statistics recorded (:meth:`_records_branch`), then the sum."""
        records = self._records_branch()
        self.settle()
        self._unread_cross(ctx, "a residual branch opened here (its draws)")
        self.push(lambda fr: fr + [fr[-1].push_ref()], linear=True)
        self.widths.append(self.widths[-1])
        self._cumulant_step(lambda ks: ks + ks[-1:])
        self.drawn = self.drawn + [False]
        self.cross_unknown = self.cross_unknown + [False]
        before = self.lost
        self.walk(op.branch, ctx.at(type(op.branch).__name__))
        self.settle()
        self._unread_cross(ctx, "this residual sum")
        self.cross_unknown = self.cross_unknown[:-1]
        if records and not self.lost:
            self.branch = self._branch_stats()
        if self.lost and not before and isinstance(op.alpha, Sweep) and 0 in op.alpha.values:
            # a branch lost where alpha = 0 adds nothing: those points walk alone
            self.lost = Lost(self.lost, pointwise=True)
        self.widths.pop()
        beta, alpha = vec(ctx.p(op.beta)), vec(ctx.p(op.alpha))
        self._sum_cumulants(beta, alpha)
        self.push(lambda fr: fr[:-2] + [moments_of_sum(beta, fr[-2], alpha, fr[-1], NUMERIC)],
                  linear=True)

    def _map(self, op: Op, ctx: Context):
        """A norm, Scale or constant FeatureAffine on the settled top frame: a map of its
        realised statistics (:meth:`push`)."""
        if isinstance(op, LayerNorm) and not self.lost and _no_spread(self.frames[-1]):
            self.lose(f"{ctx.path}: the LayerNorm's input features have no spread (q = "
                      "mean^2 to float64's precision): its output is 0, with no "
                      "finite-width expansion", pointwise=True)
        if self.tangent and (self._beyond_float64(self.frames[-1], ctx.path) or  # (in and
                self._beyond_float64(op.theory_forward(self.frames[-1], ctx), ctx.path)):  # out)
            return
        if self.track and not self.lost:
            self._transform_cumulants(_linear_part(op, self.frames[-1], ctx, self.tangent))
        self.push(lambda fr: fr[:-1] + [self.law(op, fr[-1], ctx)],
                  linear=not _is_norm(op), top=True)

    def _varying_affine(self, op: FeatureAffine, ctx: Context):
        """y = gamma x + beta on a settled frame, (gamma, beta) per feature independent of it:
        the realised statistics' mean given x is the op's law of x's (a map, :meth:`push`); the
        vectors' assignment adds (1/n) sum_kl Xi_kl Cov_x(phi_k, phi_l) (:func:`_affine_noise`),
        which needs x's 4th moments: its tracked cumulants, and Gaussian joint cumulants with
        the enclosing frames (a refusal where those would not be 0)."""
        k = self.cumulants[-1]
        if self.lost:
            self.push(lambda fr: fr[:-1] + [self.law(op, fr[-1], ctx)], top=True)
            return
        # the joint cumulants of (enclosing frames, top frame) taken 0: so they are where the
        # top frame was drawn by a Dense since its branch opened (independent of them), or
        # where every frame's are 0 (a norm of the stream's copy is a map per feature)
        joint = (len(self.frames) > 1 and not self.drawn[-1]
                 and not all(_gaussian(c, f) for c, f in zip(self.cumulants, self.frames)))
        if k is None or joint:
            known = ("4th moments are not known here (behind a residual branch with no Dense or "
                     "a BatchNorm)" if k is None else
                     "joint 4th moments with an enclosing residual stream are not Gaussian")
            self.lose(f"{ctx.path}: no finite-width rule for a FeatureAffine with vectors that "
                      f"vary, on features whose {known}")
            return
        frames = self.frames
        sel = np.array([1.0, 0.0]) if self.tangent else 1.0  # the rows the shift acts on
        self.push(lambda fr: fr[:-1] + [self.law(op, fr[-1], ctx)], top=True)
        out_ls, shape, width = self.frames[-1].ls, self.C.shape, np.asarray(self.widths[-1])

        def noise(cumulants):  # (the covariance it adds to C, y's cumulants)
            sigma, y = _affine_noise(op, ctx, frames, cumulants[-1], sel, out_ls)
            D, d = shape[-1], sigma.shape[-1]
            extra = np.zeros(np.broadcast_shapes(shape, sigma.shape[:-2] + (D, D)))
            extra[..., D - d:, D - d:] = sigma / width[..., None, None]
            return extra, y

        extra, y = noise(self.cumulants)
        self.cumulants = self.cumulants[:-1] + [y]
        if self.tape is not None:  # from the cumulants, to y's: replayed per layer's start
            self.tape.append(("affine", noise))
        self.C = self.C + extra

    def _transform_cumulants(self, A):
        """The top frame's features mapped per feature by y = A x + c (A (..., B, B))."""
        self._cumulant_step(lambda ks: ks[:-1] + [_transformed(ks[-1], A)])

    def _sum_cumulants(self, beta, alpha):
        """Close a residual: beta x + alpha f. Cumulants add when f was drawn by a Dense since
        the branch opened (then independent of x per feature at infinite width), else unknown."""
        b, a = (np.asarray(v)[..., 0] for v in (beta, alpha))
        drawn = self.drawn[-1]

        def add(ks):
            x, f = ks[-2:]
            if x is None or f is None or not drawn:
                return ks[:-2] + [None]
            return ks[:-2] + [tuple(b[(...,) + (None,) * (3 + i)] ** (3 + i) * x[i]
                                    + a[(...,) + (None,) * (3 + i)] ** (3 + i) * f[i]
                                    for i in range(2))]

        self._cumulant_step(add)
        self.drawn = self.drawn[:-1]

    def _branch_stats(self):
        """[a of log q (B), a of q / q_inf (B), v of log q (B)] of the settled top frame (a
        residual branch's output, as schema ``branch_q``): E stat = stat_inf + a/N, Var stat =
        v/N; 0 for a branch that is 0 at every width (zero weights, a zero Scale)."""
        f, j = self.frames[-1], len(self.frames) - 1
        B = f.K.shape[-1]
        zero = f.diag == 0
        diag = np.where(zero, 1.0, f.diag)
        x0 = flatten(self.frames, self.frames)
        lead = np.broadcast_shapes(x0.shape[:-1], self.b.shape[:-1], self.C.shape[:-2])

        def stats(x):
            d = np.where(zero, diag, np.diagonal(_frame_gram(x, j, B), axis1=-2, axis2=-1))
            return np.concatenate([2 * f.ls + np.log(d), d / diag], axis=-1)

        D = x0.shape[-1]
        _, a, V = delta_step(stats, np.broadcast_to(x0, lead + (D,)),
                             np.broadcast_to(self.b, lead + (D,)),
                             np.broadcast_to(self.C, lead + (D, D)), self.frames)
        return np.concatenate([a, np.diagonal(V, axis1=-2, axis2=-1)[..., :B]], axis=-1)

    def end_layer(self):
        """The end of a top-level block: its statistics (:meth:`settled`); the stream stays
        fresh when it is, for an elementwise op that opens the next block. A stream that ends
        the block with Gaussian features not yet drawn (a Dense's output: a pre-activation,
        :meth:`_gaussian_chain`) takes their law now, still to be drawn (chain []), so a
        tangent can start there (:func:`_tangent_walk`). A tangent walk brings t back to x's scale
        (:meth:`rescale_tangent`)."""
        if self.chain is None:
            self.to_unit_diagonal()
        elif self._gaussian_chain():
            chain, ctx, self.chain = self.chain, self.chain_ctx, []

            def law(s, extra=None):
                s = self.law(chain[0], s, ctx, extra)
                return to_unit_diagonal(functools.reduce(lambda s, op: self.law(op, s, ctx),
                                                         chain[1:], s))

            with np.errstate(over="ignore", invalid="ignore"):  # (checked where it is drawn)
                self._push_draw(law, chain, ctx)
        if self.tangent and not self.lost and len(self.frames) == 1:
            self.rescale_tangent()

    def _gaussian_chain(self, dense=False) -> bool:
        """The stream's features, not yet drawn, are Gaussian: a Gaussian Dense's output (its
        weights, or for x alone its bias, nonzero at every point), then linear maps per
        feature (Scale, a FeatureAffine with constant vectors). ``dense``: the features of a
        Dense, in any frame, its weights Gaussian or uniform (whose 4th cumulant, O(1/n), is a
        term of their draw): a norm of them joins the chain, :meth:`_draw_after_norm`."""
        if not self.chain or self.lost or not (dense and isinstance(self.chain[0], Dense)
                                                or len(self.frames) == 1):
            return False
        first, ctx = self.chain[0], self.chain_ctx
        if isinstance(first, Dense):
            weights = np.asarray(ctx.p(first.sigma_w)) != 0  # (else a tangent is 0: its draw
            bias = np.asarray(ctx.p(first.sigma_b)) != 0  # names the zero weights)
            if first.init != "normal" and not dense or not np.all(
                    weights | (bias & (not self.tangent or self.after_dense
                                       or self.after_weights is not None))):
                return False
        return all(isinstance(op, Scale)
                   or isinstance(op, FeatureAffine) and _constant_vectors(op, ctx)
                   for op in self.chain[1 if isinstance(first, Dense) else 0:])

    def settled(self):
        """The walk with the top frame's statistics drawn (itself when they are)."""
        if self.chain is None:
            return self
        seen = copy.copy(self)
        seen.settle()
        return seen


def _gaussian_cumulants(lead, B: int):
    """The 3rd and 4th joint cumulants (lead + (B,) * 3, lead + (B,) * 4) of Gaussian features:
    0."""
    return np.zeros(lead + (B,) * 3), np.zeros(lead + (B,) * 4)


def _is_norm(op: Op) -> bool:
    return isinstance(op, (LayerNorm, RMSNorm))


def _apply(chain, s, ctx, extra=None):
    """The chain's laws in turn; ``extra``: a variance (true units) added to every entry of
    its first op's output Gram (a Dense's: :meth:`_Walk._push_draw`)."""
    for i, op in enumerate(chain):
        s = op.theory_forward(s, ctx)
        if i == 0 and extra is not None:
            e = np.exp(-s.ls)
            s = s.replace(K=s.K + np.asarray(extra)[..., None, None] * outer(e, e))
    return s


def _unit_chain(chain, s, ctx, extra=None):
    """The law of a fresh stream's features (:func:`_apply`) in scaled units of unit diagonal:
    a law that hands back true units (gelu, silu, elu: not homogeneous) would leave the walk's
    state ~q until the next rescale (never, in a residual branch), where the central
    differences' step is round-off (log q's correction -1e15 at q = 1e12)."""
    out = _apply(chain, s, ctx, extra)
    with np.errstate(over="ignore", invalid="ignore"):  # (past float64: inf or NaN, which the
        return _scaled(out, *_true(out))  # walk's checks lose, naming where)


def _bend(ops, ctx):
    """The width (true units of the chain's input) over which the elementwise ``ops`` bend
    away from u = 0: 1 / gain for each activation that is not homogeneous (gain: the largest
    factor the Scales and FeatureAffines before it apply), the narrowest; None if none is."""
    gain, bend = 1.0, None
    for op in ops:
        if isinstance(op, Act):
            if get_activation(op.name).degree is None:
                bend = min(bend or np.inf, 1 / gain)
        else:
            gain = gain * float(np.max(np.abs(_vector_rule(op, ctx)[0])))
    return bend


def _degree(ops, ctx):
    """The degree d such that the features after the elementwise ``ops`` are polynomials of
    degree <= d in the radius on each ray u = rho v of their Gaussian input (the product of
    the activations' degrees of positive homogeneity; Scales and FeatureAffines keep it, and a
    shift after the last activation adds a constant), or None (an activation that is not
    homogeneous, or one after a shift: relu(rho v + beta) bends at rho = -beta / v)."""
    degree, shifted = 1, False
    for op in ops:
        if isinstance(op, Act):
            d = get_activation(op.name).degree
            if d is None or shifted:
                return None
            degree *= d
        else:
            shifted = shifted or bool(np.any(_vector_rule(op, ctx)[1] != 0))
    return degree


def _saturates(ops) -> bool:
    """Whether an activation among ``ops`` is flat away from its bend (phi'(+-1e4) = 0: erf,
    tanh, sigmoid), so that its gradient lives in the bend (gelu, silu, elu grow like relu:
    beyond BEND_MAX their bend is a 1/ratio part, which the capped panels leave out)."""
    far = np.array([-1e4, 1e4])
    return any(isinstance(op, Act) and not np.any(get_activation(op.name).grad(far, np))
               for op in ops)


def _features(ops, u, ctx, tangent: bool):
    """The features after the elementwise ``ops`` on Gaussian nodes ``u`` (..., P, B); for a
    tangent walk (B = 2: x, t) the pair (phi(u_0), phi'(u_0) u_1), chained; and the weights v
    (Q,) of the vectors' nodes (:func:`_vector_rule`): each node p becomes Q nodes (p, q), so
    the features are (..., P Q, B) (tangent: (..., P Q, 2))."""
    y, dy = (u[..., 0], u[..., 1]) if tangent else (u, None)
    v = np.ones(1)
    for op in ops:
        if isinstance(op, Act):
            act = get_activation(op.name)
            dy = None if dy is None else act.grad(y, np) * dy
            y = act.fn(y, np)
            continue
        c, shift, vq = _vector_rule(op, ctx)  # Scale c, or FeatureAffine: c y + shift
        if dy is None:
            y = (y[..., None, :] * c[..., None, :, None] + shift[..., None, :, None])
            y = y.reshape(y.shape[:-3] + (-1, y.shape[-1]))
        else:
            yq = y[..., None] * c[..., None, :] + shift[..., None, :]
            dyq = np.broadcast_to(dy[..., None] * c[..., None, :], yq.shape)
            y, dy = (a.reshape(a.shape[:-2] + (-1,)) for a in (yq, dyq))
        v = (v[:, None] * vq).reshape(-1)
    return (y if dy is None else np.stack(np.broadcast_arrays(y, dy), axis=-1)), v


def _pair_moments(t):
    """The 2nd moments [[u_x^2, u_x u_t], [., .]] of the pair's stats t = (m_x, m_t, u_x^2,
    u_x u_t) (K_tt, which no norm's Jacobian reads, set to u_x u_t)."""
    return np.stack([np.stack([t[..., 2], t[..., 3]], -1), np.stack([t[..., 3], t[..., 3]], -1)],
                    -2)


def post_norm_noise(pre, norm, post, law: Moments, scale, tangent: bool, ctx: Context,
                    means=(), grams=(), after=False):
    """(Sigma (..., D, D), b (..., D), cumulants): the covariance and the bias, per 1/N, of the
    realised statistics [K, m, X^i] (in units ``scale`` = e^-ls; X^i with the enclosing frames of
    feature means ``means`` and cross Grams ``grams``, as :func:`feature_noise`) of N features y_n =
    f(norm(u_n)) after the linear maps ``pre``, the ``norm`` and the elementwise ops ``post`` (f),
    the u_n i.i.d. Gaussian given the past (``law``: their frame), the norm's centre and scale
    realised over the same features: their stats t, the mean of T(u) = (u_a, u_a^2) (``tangent``,
    the pair (x, t): (u_x, u_t, u_x^2, u_x u_t), for the norm's Jacobian on t; ``after``, t starting
    at the norm's output, N(0, 1) per feature independent of the rest: (u_x, u_x^2)).
    With F(u; t) the statistics of one feature at the norm's stats t, G(t) = E F(u; t) at u's
    law and t* = E T, the realised statistics are mean F(u_n; t*) + dG . (t - t*) + O(1/N):
    Sigma = Cov(F + dG . T) (each feature's influence), and their mean is G(t*) +
    (1/2 d2G : Cov T + sum_k Cov(d_k F, T_k)) / N (the plug-in's bias). G(t*) is the chain's
    infinite-width law (:meth:`_Walk.push`); the rest by :func:`_split_rule` on the norm's
    output, Gaussian at any t (y = M (u - c), :func:`_linear_part`, affine in u), derivatives
    in t by :func:`_derivatives` along T's standard deviations. Third: the features' 3rd and
    4th joint cumulants at t* (true units). None where an activation that saturates bends over
    less than 1 / BEND_MAX of its input's scale (no practical width samples its bend, as in
    :meth:`_Walk._draw`)."""
    K, mu, _ = _true(law)
    Cu = K - outer(mu, mu)
    for op in pre:  # u' = c u + shift: the norm's input, Gaussian
        c, shift, _ = _vector_rule(op, ctx)
        mu, Cu = c * mu + shift, c[..., None] ** 2 * Cu
    B = Cu.shape[-1]
    if after:  # (t before the norm is a placeholder)
        mu, Cu = mu * X_ROW, Cu * outer(X_ROW, X_ROW) + E11
    mu = np.broadcast_to(mu, Cu.shape[:-1])
    var = np.diagonal(Cu, axis1=-2, axis2=-1)
    x = slice(0, 1 if after else None)  # the norm reads x alone: (u_x, u_x^2) like one input's
    if tangent and not after:  # E T and T's standard deviations
        t0 = np.stack([mu[..., 0], mu[..., 1], var[..., 0] + mu[..., 0] ** 2,
                       Cu[..., 0, 1] + mu[..., 0] * mu[..., 1]], -1)
        size = np.sqrt(np.stack([var[..., 0], var[..., 1], 2 * var[..., 0] ** 2
                                 + 4 * mu[..., 0] ** 2 * var[..., 0],
                                 var[..., 0] * var[..., 1] + Cu[..., 0, 1] ** 2
                                 + mu[..., 0] ** 2 * var[..., 1] + mu[..., 1] ** 2 * var[..., 0]
                                 + 2 * mu[..., 0] * mu[..., 1] * Cu[..., 0, 1]], -1))
    else:
        t0 = np.concatenate([mu[..., x], var[..., x] + mu[..., x] ** 2], -1)
        size = np.concatenate([np.sqrt(var[..., x]), np.sqrt(2 * var[..., x] ** 2
                                                            + 4 * (mu * mu * var)[..., x])], -1)
    size = np.where(size > 0, size, 1.0)

    def statistics(u):  # T(u) (..., P, len(t0))
        if tangent and not after:
            return np.stack([u[..., 0], u[..., 1], u[..., 0] ** 2, u[..., 0] * u[..., 1]], -1)
        return np.concatenate([u[..., x], u[..., x] ** 2], -1)

    def integrals(tau, nodes=False):
        """G and E[F (T_k - t*_k) / size_k] at t = t* + size tau."""
        at = norm_input(t0 + size * tau)
        c = _centring(norm, at)[1]
        M = _linear_part(norm, at, ctx, tangent, after)
        y, w = _split_rule(np.einsum("...ab,...b->...a", M, mu - c),
                           M @ Cu @ np.swapaxes(M, -1, -2), kink, levels)
        u = c[..., None, :] + np.einsum("...ab,...pb->...pa", np.linalg.inv(M), y)
        T = (statistics(u) - t0[..., None, :]) / size[..., None, :]
        f = _features(post, y, ctx, tangent)[0] * scale[..., None, :]
        F = np.concatenate([(f[..., :, None] * f[..., None, :]).reshape(f.shape[:-1] + (-1,)),
                            f], -1)
        if nodes:
            return F, T, w, f
        wF = np.swapaxes(w[..., None] * F, -1, -2)  # (..., E, P): sums over nodes by matmul
        return np.concatenate([wF.sum(-1), (wF @ T).reshape(F.shape[:-2] + (-1,))], -1)

    def norm_input(t):  # a frame of the norm's input statistics t (true units)
        if after:  # (t's row: a unit placeholder, which the norm does not read)
            m = t[..., :1] * X_ROW
            K = (t[..., 1:, None] * E00 + E11)
        else:
            m = t[..., :B]
            K = _pair_moments(t) if tangent else t[..., B:, None] * np.eye(B)
        return law.replace(K=K, m=m, ls=np.zeros_like(m), refs=())

    bend = _bend(post, ctx)  # (the tangent's J t enters linearly: x's only)
    levels = 0
    if bend is not None:
        M0 = _linear_part(norm, norm_input(t0), ctx, tangent, after)
        ratio = _bend_ratio(M0 @ Cu @ np.swapaxes(M0, -1, -2), (bend, np.inf) if tangent else bend)
        if ratio > BEND_MAX and _saturates(post):
            return None
        levels = _split_levels(min(ratio, BEND_MAX))
    gain, shift = 1.0, 0.0  # the first activation's kink: where gain y + shift = 0
    for op in itertools.takewhile(lambda op: not isinstance(op, Act), post):
        c, b, _ = _vector_rule(op, ctx)
        gain, shift = gain * c[..., 0], shift * c[..., 0] + b[..., 0]
    kink = np.divide(-shift, gain, out=np.zeros(np.broadcast(shift, gain).shape), where=gain != 0)
    kink = np.stack(np.broadcast_arrays(kink, kink if B > 1 and not tangent else 0 * kink), -1)
    E, n = B * B + B, t0.shape[-1]
    J, H = _derivatives(lambda tau: np.stack([integrals(t) for t in tau]),  # (one direction at
                        np.zeros(t0.shape))  # a time: the nodes are (grid, P, ...) each)
    dG, d2G = J[..., :E, :], H[..., :E, :, :]
    cross = np.einsum("...ekk->...e", J[..., E:, :].reshape(J.shape[:-2] + (E, n, n)))
    F, T, w, f = integrals(np.zeros(t0.shape), nodes=True)

    def cov(a, b):  # over the nodes
        a, b = (x - np.einsum("...p,...pe->...e", w, x)[..., None, :] for x in (a, b))
        return np.einsum("...p,...pe,...pf->...ef", w, a, b)

    influence = cov(F + np.einsum("...pk,...ek->...pe", T, dG),
                    F + np.einsum("...pk,...ek->...pe", T, dG))
    lead = influence.shape[:-2]
    sigma = noise_of_covariances(influence[..., B * B:, B * B:],
                                 influence[..., B * B:, :B * B].reshape(lead + (B,) * 3),
                                 influence[..., :B * B, :B * B].reshape(lead + (B,) * 4),
                                 means, grams, features=cov(f, f))
    bias = 0.5 * np.einsum("...ekl,...kl->...e", d2G, cov(T, T)) + cross
    return sigma, np.concatenate([bias] + [(m[..., :, None] * bias[..., None, B * B:]).reshape(
        lead + (B * B,)) for m in means], -1), _cumulants(f / scale[..., None, :], w)


POST_NORM_NODES = 24  # Gauss-Legendre nodes per panel of :func:`_split_rule`: z^4 phi(z) over
# [0, 9] to 4e-15 (16: 3e-8)


def _split_levels(ratio: float) -> int:
    """:func:`_split_rule`'s levels for a bend of width 1 / ``ratio`` of the scale."""
    return max(1, math.ceil(math.log(9 * ratio / 4, 4)))


def _split_rule(m, C, kink, levels=0):
    """Nodes y (..., P, B) and weights (..., P) of N(m, C), B <= 2, for integrands that kink
    where y_a = kink_a (relu after a shift) at any mean (:func:`gaussian_rule` is polar about
    0): y_0 = m_0 + s_0 z_0, then y_1 = its mean given y_0 + s z_1, each z in [-RHO_MAX,
    RHO_MAX] by Gauss-Legendre on two sides split at the kink (a side of width 0 where it is
    not inside), each side in 1 + ``levels`` panels with edges 4^-k of its length from the
    kink (k = 1 .. levels): a bend of width 1 / ratio there (tanh at scale ratio) is resolved
    with log_4(9 ratio / 4) levels, at least 1 (E sech(s z)^4 and E tanh(s z)^2 (s z)^2 to
    1e-14 for s = 0.5 to 30; two panels alone left 7e-5 of sech^4 at s = 3, and 16 nodes per
    panel 1e-13); relu's polynomials of degree <= 4 need none (E relu(z)^4 to 4e-15).
    P = (2 (1 + levels) POST_NORM_NODES)^B."""
    x, wx = _legendre(POST_NORM_NODES)
    edges = [0.0, *(4.0**-k for k in range(levels, 0, -1)), 1.0]  # from the kink, ascending

    def panels(at):  # N(0, 1) on [-R, at] and [at, R]: nodes and weights (..., 2 (1 + levels) n)
        at = np.clip(at, -RHO_MAX, RHO_MAX)[..., None]
        z, w = [], []
        for side, length in ((-1.0, at + RHO_MAX), (1.0, RHO_MAX - at)):
            for lo, hi in itertools.pairwise(edges):
                half = (hi - lo) * length / 2
                z.append(at + side * (lo * length + half * (x + 1)))
                w.append(half * wx)
        z = np.concatenate(z, -1)
        return z, np.concatenate(w, -1) * np.exp(-z * z / 2) / np.sqrt(2 * np.pi)

    def at_zero(mean, sd):  # where mean + sd z = 0 (sd = 0: no kink inside)
        return np.divide(-mean, sd, out=np.full(np.broadcast(mean, sd).shape, RHO_MAX),
                         where=sd > 0)

    s0 = np.sqrt(C[..., 0, 0])
    z0, w0 = panels(at_zero(m[..., 0] - kink[..., 0], s0))
    y0 = m[..., :1] + s0[..., None] * z0  # (..., 2n)
    if C.shape[-1] == 1:
        return y0[..., None], w0
    beta = np.divide(C[..., 0, 1], C[..., 0, 0], out=np.zeros_like(s0), where=s0 > 0)
    sc = np.sqrt(np.maximum(C[..., 1, 1] - beta * C[..., 0, 1], 0.0))[..., None]
    mean1 = m[..., 1:] + beta[..., None] * (y0 - m[..., :1])  # (..., 2n)
    z1, w1 = panels(at_zero(mean1 - kink[..., 1:], sc))  # (..., 2n, 2n)
    y1 = mean1[..., None] + sc[..., None] * z1
    y = np.stack(np.broadcast_arrays(y0[..., None], y1), -1)
    return y.reshape(y.shape[:-3] + (-1, 2)), (w0[..., None] * w1).reshape(w1.shape[:-2] + (-1,))


HERMITE_NODES, HERMITE_WEIGHTS = np.polynomial.hermite_e.hermegauss(3)
HERMITE_WEIGHTS = HERMITE_WEIGHTS / HERMITE_WEIGHTS.sum()  # for N(0, 1)


def _vector_rule(op: Op, ctx: Context):
    """(c, shift, v): nodes (..., Q) of a Scale's or FeatureAffine's per-feature (gamma, beta)
    and their weights (Q,). Vectors that vary over the features are taken Gaussian over them
    with the declared means, variances and correlation (as the Monte Carlo draws them): a 3 x 3
    Gauss-Hermite rule, exact for the polynomials of degree <= 5 in them that the walk takes
    (the features' moments up to the 4th); constant ones: one node."""
    if isinstance(op, Scale):
        return np.asarray(ctx.p(op.c), dtype=float)[..., None], np.zeros(1), np.ones(1)
    g, b, g2, b2, gb = (np.asarray(x, dtype=float)[..., 0] for x in op._point(ctx))
    if _constant_vectors(op, ctx):
        return g[..., None], b[..., None], np.ones(1)
    z, wz = HERMITE_NODES, HERMITE_WEIGHTS
    z1, z2, v = (np.repeat(z, 3), np.tile(z, 3), np.outer(wz, wz).reshape(-1))
    sg = np.sqrt(np.maximum(g2 - g * g, 0.0))
    rho_sb = np.divide(gb - g * b, sg, out=np.zeros_like(sg), where=sg > 0)  # along gamma
    rest = np.sqrt(np.maximum(b2 - b * b - rho_sb**2, 0.0))
    return (g[..., None] + sg[..., None] * z1,
            b[..., None] + rho_sb[..., None] * z1 + rest[..., None] * z2, v)


def _assignment_noise(mu, v, means, grams):
    """The covariance (..., D, D) that the vectors' assignment to the features adds to the
    realised statistics [K, m, X^i] of features drawn with vectors that vary (nodes q, weights
    v; mu (Q, ..., B) the features' mean given the vectors): the vectors are drawn
    independently of the enclosing streams r^i, so X^i_ab = mean_n r^i_na y_nb keeps
    mean_n r^i_na mu_b(v_n), whose covariance is (R_ij,ac - m_ia m_jc) Cov_v(mu_b, mu_d) / N
    (R_ij the streams' cross Gram); K and m keep none (their means given the vectors are
    polynomials of degree <= 2 in them, whose empirical moments are the declared ones)."""
    mean = np.einsum("q,q...->...", v, mu)
    C = np.einsum("q,q...b,q...d->...bd", v, mu, mu) - outer(mean, mean)
    B, n = mu.shape[-1], len(means)
    blocks = [[np.einsum("...ac,...bd->...abcd", grams[i][j] - outer(means[i], means[j]), C)
               for j in range(n)] for i in range(n)]
    lead = np.broadcast_shapes(*[x.shape[:-4] for row in blocks for x in row])
    out = np.zeros(lead + ((n + 1) * B * B + B,) * 2)
    for i, j in itertools.product(range(n), repeat=2):
        rows, cols = (slice(B * B + B + k * B * B, B * B + B + (k + 1) * B * B) for k in (i, j))
        out[..., rows, cols] = blocks[i][j].reshape(lead + (B * B, B * B))
    return out


def _mixed(w, v):
    """The weights (..., P Q) of nodes (p, q) from the Gaussian rule's w (..., P) and the
    vectors' v (Q,) (:func:`_features`)."""
    return (w[..., :, None] * v).reshape(w.shape[:-1] + (-1,))


def _transformed(k, A):
    """Cumulants k (3rd, 4th; None: unknown) of features mapped per feature by y = A x + c."""
    if k is None:
        return None
    return (np.einsum("...ai,...bj,...ck,...ijk->...abc", A, A, A, k[0]),
            np.einsum("...ai,...bj,...ck,...dl,...ijkl->...abcd", A, A, A, A, k[1]))


def _tracks_cumulants(net: Op) -> bool:
    """Whether the walk tracks the features' cumulants: for a Dense with uniform weights, or a
    FeatureAffine (whose vectors may vary, on a settled stream: :meth:`_Walk._varying_affine`)."""
    return any(isinstance(op, Dense) and op.init == "uniform" or isinstance(op, FeatureAffine)
               for op in net.walk())


def _cumulants(y, w):
    """The 3rd and 4th joint cumulants of features y on quadrature nodes (..., P, B)."""
    yc = y - np.einsum("...p,...pa->...a", w, y)[..., None, :]
    C = np.einsum("...p,...pa,...pb->...ab", w, yc, yc)
    k3 = np.einsum("...p,...pa,...pb,...pc->...abc", w, yc, yc, yc)
    k4 = np.einsum("...p,...pa,...pb,...pc,...pd->...abcd", w, yc, yc, yc, yc)
    return k3, k4 - _sym4(C[..., :, :, None, None] * C[..., None, None, :, :], 3)


def _raw_third_moments(K, m, k3):
    """E[y_a y_b y_c] from K = E[y y^T], the mean m and the 3rd joint cumulants k3."""
    C = K - outer(m, m)
    return (k3 + np.einsum("...ab,...c->...abc", C, m) + np.einsum("...ac,...b->...abc", C, m)
            + np.einsum("...bc,...a->...abc", C, m) + np.einsum("...a,...b,...c->...abc", m, m, m))


def _cumulants_of_moments(E1, E2, E3, E4):
    """The 3rd and 4th joint cumulants from the raw moments E[y], ..., E[y y y y]."""
    k3 = (E3 - np.einsum("...ab,...c->...abc", E2, E1) - np.einsum("...ac,...b->...abc", E2, E1)
          - np.einsum("...bc,...a->...abc", E2, E1) + 2 * np.einsum("...a,...b,...c->...abc",
                                                                   E1, E1, E1))
    k4 = (E4 - _sym4(E3[..., :, :, :, None] * E1[..., None, None, None, :], 4)
          - _sym4(E2[..., :, :, None, None] * E2[..., None, None, :, :], 3)
          + 2 * _sym4(E2[..., :, :, None, None] * outer(E1, E1)[..., None, None, :, :], 6)
          - 6 * np.einsum("...a,...b,...c,...d->...abcd", E1, E1, E1, E1))
    return k3, k4


def raw_fourth_moments(K, m, k3, k4):
    """E[y_a y_b y_c y_d] from the second moments K = E[y y^T], the mean m and the 3rd and 4th
    joint cumulants (covariance C = K - m m^T): k4 + 4 sym(k3 m) + 3 sym(C C) + 6 sym(C m m)
    + m m m m."""
    C = K - outer(m, m)
    return (k4 + _sym4(k3[..., :, :, :, None] * m[..., None, None, None, :], 4)
            + _sym4(C[..., :, :, None, None] * C[..., None, None, :, :], 3)
            + _sym4(C[..., :, :, None, None] * outer(m, m)[..., None, None, :, :], 6)
            + np.einsum("...a,...b,...c,...d->...abcd", m, m, m, m))


def _sym4(t, count):
    """The sum of the ``count`` distinct index permutations of a 4-index tensor built as a
    product (k3 m: 4, C C: 3, C m m: 6), by symmetrising over all 24 and rescaling."""
    lead = tuple(range(t.ndim - 4))
    return sum(np.transpose(t, lead + tuple(len(lead) + i for i in p))
               for p in itertools.permutations(range(4))) * (count / 24)


def _linear_part(op: Op, s: Moments, ctx: Context, tangent: bool, after: bool = False):
    """A (..., B, B) of a norm, Scale or constant FeatureAffine acting per feature as
    y = A x + c on the stream (true units); on the pair (x, J t), the tangent's map (``after``:
    t starts at the norm's output, which it passes unchanged)."""
    B = s.K.shape[-1]
    eye = np.eye(B)
    if isinstance(op, Scale):
        return np.asarray(ctx.p(op.c), dtype=float)[..., None, None] * eye
    if isinstance(op, FeatureAffine):
        return np.asarray(op._point(ctx)[0], dtype=float)[..., None] * eye
    _, _, _, Kc = _centring(op, s)
    g = np.asarray(ctx.p(op.gain), dtype=float) if isinstance(op, LayerNorm) else np.asarray(1.0)
    r2 = np.diagonal(Kc, axis1=-2, axis2=-1) + np.asarray(ctx.p(op.eps), dtype=float)[..., None]
    if not tangent:  # each input by its own norm
        return g[..., None, None] * eye / np.sqrt(r2)[..., :, None]
    # the pair (x, t): both rows by x's norm r, and d r / dt = k / r, k = Kc_xt: the tangent
    # row gains -g k / r^3 x
    r2 = r2[..., 0]
    A = np.zeros(np.broadcast_shapes(Kc.shape[:-2], g.shape, r2.shape) + (2, 2))
    A[..., 0, 0] = A[..., 1, 1] = g / np.sqrt(r2)
    A[..., 1, 0] = -g * (Kc[..., 0, 1] / r2) / np.sqrt(r2)  # (r2^1.5 overflows past q = 1e205)
    if after:
        A[..., 1, :] = [0.0, 1.0]
    return A


def _centring(op: Op, s: Moments):
    """(X, c, m, Kc): the residual cross moments X and mean m of ``s`` in true units, the
    norm's centring c (LayerNorm: the mean; RMSNorm: 0) and the centred Gram
    Kc = K - c m^T - m c^T + c c^T."""
    K, m, X = _true(s)
    c = m if isinstance(op, LayerNorm) else np.zeros_like(m)
    return X, c, m, K - outer(c, m) - outer(m, c) + outer(c, c)


def _constant_vectors(op: FeatureAffine, ctx: Context) -> bool:
    """gamma and beta the same on every feature (E[gamma^2] = E[gamma]^2, E[beta^2] =
    E[beta]^2 at every grid point): the op is then a map of the realised statistics."""
    g, b, g2, b2, _ = (np.asarray(v, dtype=float) for v in op._point(ctx))
    return bool(np.allclose(g2, g * g, rtol=1e-12, atol=0) and
                np.allclose(b2, b * b, rtol=1e-12, atol=0))


def _zeroes(op: Op, ctx: Context) -> bool:
    """A Scale of c = 0, a LayerNorm of gain 0, or a FeatureAffine of E[gamma^2] = E[beta^2] =
    0, at some grid point (on the stream: in a residual branch it zeroes the branch, x + 0 F(x),
    which walks)."""
    if isinstance(op, (Scale, LayerNorm)):
        return bool(np.any(np.asarray(ctx.p(op.c if isinstance(op, Scale) else op.gain)) == 0))
    _, _, g2, b2, _ = (np.asarray(v, dtype=float) for v in op._point(ctx))
    return bool(np.any((g2 == 0) & (b2 == 0)))


def _no_spread(f: Moments) -> bool:
    """Whether some input's features are all equal (K_aa = m_a^2) at some grid point."""
    d = np.diagonal(f.K, axis1=-2, axis2=-1)
    return bool(np.any(d - f.m**2 <= 0))


def _gaussian(k, f: Moments) -> bool:
    """Whether a frame's tracked cumulants k are 0 (to rounding, against its covariance)."""
    if k is None:
        return False
    K, m, _ = _true(f)
    size = np.max(np.abs(K - outer(m, m)), axis=(-2, -1))  # the covariance (a mean moves no k)
    return bool(np.all(np.abs(k[0]) <= 1e-9 * size[(...,) + (None,) * 3] ** 1.5)
                and np.all(np.abs(k[1]) <= 1e-9 * size[(...,) + (None,) * 4] ** 2))


def _affine_noise(op: FeatureAffine, ctx: Context, frames, k, sel, out_ls):
    """(Sigma, cumulants of y) for y = gamma z + beta sel on the top frame z of ``frames``
    (scaled units: the shift is beta exp(-ls) sel; Sigma in the units of the output's log
    scales ``out_ls``), the vectors Gaussian over the features
    (:func:`_vector_rule`) with their declared 1st and 2nd moments exact. The statistics'
    deviations from their means given z are sum_k xi_k phi_k, xi = (gamma^2, gamma beta, gamma,
    beta) centred and phi polynomials of degree <= 2 in (1, z, r^i) (K_ab: z_a z_b, s_a z_b +
    z_a s_b; m_a: z_a, s_a; X^i_ab: r_a z_b, r_a s_b, with s = exp(-ls) sel), so their
    covariance per 1/n is sum_kl Xi_kl Cov(phi_k, phi_l), the moments of the augmented vector
    (1, z, r^1, ...) from the frames' Grams and cross moments, z's cumulants k (the enclosing
    frames': 0, :meth:`_Walk._varying_affine`). The cumulants of y from its moments."""
    top = frames[-1]
    outer_frames = frames[:-1]
    B, n = top.K.shape[-1], len(outer_frames)
    s = np.exp(-top.ls) * sel
    # the augmented vector's mean and second moments (scaled units)
    means = [np.ones(top.m.shape[:-1] + (1,)), top.m] + [f.m for f in outer_frames]
    blocks = [[None] * (n + 1) for _ in range(n + 1)]  # z, r^1, ..., r^n
    for i in range(n):
        blocks[0][i + 1] = np.swapaxes(top.cross(top.refs[i]), -1, -2)  # E[z_a r_b]
        for j in range(n):
            blocks[i + 1][j + 1] = _cross_gram(outer_frames, i, j)
    blocks[0][0] = top.K
    for i in range(n):
        blocks[i + 1][0] = np.swapaxes(blocks[0][i + 1], -1, -2)
    lead = _lead(frames)
    m1 = np.concatenate([np.broadcast_to(v, lead + v.shape[-1:]) for v in means], -1)
    d = m1.shape[-1]
    K2 = np.zeros(lead + (d, d))
    K2[..., 0, :] = K2[..., :, 0] = m1
    for i, j in itertools.product(range(n + 1), repeat=2):
        K2[..., 1 + i * B:1 + (i + 1) * B, 1 + j * B:1 + (j + 1) * B] = blocks[i][j]
    k3, k4 = np.zeros(lead + (d,) * 3), np.zeros(lead + (d,) * 4)
    e = np.exp(-top.ls)  # z's cumulants (true units) scaled
    z = slice(1, 1 + B)
    k3[..., z, z, z] = np.einsum("...abc,...a,...b,...c->...abc", k[0], e, e, e)
    k4[..., z, z, z, z] = np.einsum("...abcd,...a,...b,...c,...d->...abcd", k[1], e, e, e, e)
    M4 = raw_fourth_moments(K2, m1, k3, k4)
    # phi: coefficients P[stat, k, i, j] of the monomial w_i w_j of the augmented vector w
    zi = 1 + np.arange(B)
    S = B * B + B + n * B * B
    P = np.zeros(lead + (S, 4, d, d))
    for a, b in itertools.product(range(B), repeat=2):
        row = a * B + b
        P[..., row, 0, zi[a], zi[b]] = 1.0
        P[..., row, 1, 0, zi[b]] += s[..., a]
        P[..., row, 1, 0, zi[a]] += s[..., b]
        for i in range(n):
            r = 1 + (i + 1) * B + a
            P[..., B * B + B + i * B * B + row, 2, r, zi[b]] = 1.0
            P[..., B * B + B + i * B * B + row, 3, 0, r] = s[..., b]
    for a in range(B):
        P[..., B * B + a, 2, 0, zi[a]] = 1.0
    mean = np.einsum("...skij,...ij->...sk", P, K2)
    cov = (np.einsum("...skij,...tlmn,...ijmn->...sktl", P, P, M4)
           - np.einsum("...sk,...tl->...sktl", mean, mean))
    c, shift, v = _vector_rule(op, ctx)  # gamma, beta nodes (..., Q) and weights (Q,)
    xi = np.stack([c * c, c * shift, c, shift], -1)
    xi = xi - np.einsum("q,...qk->...k", v, xi)[..., None, :]
    Xi = np.einsum("q,...qk,...ql->...kl", v, xi, xi)
    to = np.exp(top.ls - out_ls)  # the output's units: K_ab by to_a to_b, m_a by to_a, X_ab by to_b
    f = np.concatenate([outer(to, to).reshape(to.shape[:-1] + (B * B,)), to]
                       + [np.repeat(to[..., None, :], B, -2).reshape(to.shape[:-1] + (B * B,))]
                       * n, -1)
    sigma = np.einsum("...kl,...sktl->...st", Xi, cov) * outer(f, f)
    # y's cumulants (true units): y_a = gamma V_0a.w + beta V_1a.w, w the augmented vector
    V = np.zeros(lead + (2, B, d))
    V[..., 0, range(B), zi] = np.exp(top.ls)
    V[..., 1, :, 0] = sel
    wq = np.stack(np.broadcast_arrays(c, shift), -1)  # (..., Q, 2)
    moments = []
    for order, raw in enumerate((m1, K2, _raw_third_moments(K2, m1, k3), M4), start=1):
        ws, ys, zs = "uvwx"[:order], "abcd"[:order], "ijkl"[:order]  # (gamma, beta), y, w
        Ew = np.einsum(f"q,{','.join(f'...q{x}' for x in ws)}->...{ws}", v, *[wq] * order)
        Vs = ",".join(f"...{x}{y}{z}" for x, y, z in zip(ws, ys, zs))
        moments.append(np.einsum(f"...{ws},{Vs},...{zs}->...{ys}", Ew, *[V] * order, raw))
    return sigma, _cumulants_of_moments(*moments)

E00 = np.array([[1.0, 0.0], [0.0, 0.0]])  # a pair (x, t)'s x entry
E11 = np.array([[0.0, 0.0], [0.0, 1.0]])  # and t's
X_ROW = np.array([1.0, 0.0])


def _scaled(out: Moments, K, m, X=None) -> Moments:
    """``out`` with true (K, m) and residual cross moments X (true columns; None: keep out's)
    put back in scaled units of unit diagonal (the walk's differences stay O(1) at any scale).
    A ref that ``out`` holds decoupled stays so (X = m_r m^T in any units), as the laws after
    it (a BatchNorm's) need to know."""
    unit = to_unit_diagonal(out.replace(K=K, m=m, ls=np.zeros_like(m)))
    e = np.exp(unit.ls)
    return unit if X is None else unit.replace(refs=tuple(
        r if r.X is DECOUPLED else Ref(m=r.m, X=x / e[..., None, :])
        for r, x in zip(out.refs, X)))


def batch_of_two_moments(v, eps):
    """(F, Var h, v F', v^2 F'') at d ~ N(0, v) of h(d) = d^2 / (d^2 + eps), F(v) = E h: with
    s = v / eps, u = 1 / sqrt(2 s), g1 = E 1/(1 + s z^2) = sqrt(pi) u erfcx(u) and g2 = E
    1/(1 + s z^2)^2 = g1 (1/2 - u^2) + u^2 (z ~ N(0, 1)): F = 1 - g1, Var h = g2 - g1^2, v F'
    = (g1 (1 + 2 u^2) - 2 u^2) / 2, and v^2 F'' = d(v F')/d log v - v F' (a central
    difference in log v, step 1e-4: ~1e-9 relative). eps = 0: h = 1, all 0 but F."""
    from scipy.special import erfcx

    v, eps = np.asarray(v, dtype=float), np.asarray(eps, dtype=float)
    with np.errstate(divide="ignore"):
        u = np.sqrt(eps / (2 * v))

    def g1(u):
        return np.sqrt(np.pi) * u * erfcx(u)

    def vF1(u):
        return (g1(u) * (1 + 2 * u * u) - 2 * u * u) / 2

    h = 1e-4
    a = g1(u)
    d = (vF1(u * np.exp(-h / 2)) - vF1(u * np.exp(h / 2))) / (2 * h)  # (u ~ v^-1/2)
    return 1 - a, a * (0.5 - u * u) + u * u - a * a, vF1(u), d - vF1(u)


def _batch_of_two(op: BatchNorm, s: Moments, ctx: Context) -> Moments:
    """A BatchNorm over two inputs as a map of the realised state (:meth:`_Walk._batchnorm`):
    its law, with its cross moments with the enclosing frames a placeholder, 0 (decoupled)."""
    out = op.theory_forward(s, ctx)
    return out.replace(refs=tuple(Ref(m=r.m, X=DECOUPLED) for r in out.refs))


def _true(f: Moments):
    """(K, m) of a frame in true units, and its refs' cross moments with true columns."""
    e = np.exp(f.ls)
    return (f.K * outer(e, e), f.m * e,
            [f.cross(r) * e[..., None, :] for r in f.refs])


def _tangent_dense(op: Dense, s: Moments, ctx: Context, after: bool = False,
                   extra=None, weights=None) -> Moments:
    """Dense on the pair (x, t): (W x + b, W t), K' = sigma_w^2 K + sigma_b^2 E_00 (no bias on
    the tangent); refs and law those of the op's own law (decoupled, Gaussian). ``after``: t
    starts at the output, N(0, 1) per feature independent of the weights (t in ``s`` is a
    placeholder): K'_tt = 1, K'_xt = 0. ``weights`` (a factor w, or None): t gains T x at the
    output, T of i.i.d. entries independent of the net and of t (:meth:`_Walk._start_at_weights`;
    t in ``s`` is 0 at a block's first Dense): K'_tt gains w K_xx, the realised x's, K'_xt
    nothing. ``extra``: added to sigma_b^2 (:func:`_apply`)."""
    out = op.theory_forward(s, ctx)
    bias = np.asarray(ctx.p(op.sigma_b), dtype=float) ** 2 + (0.0 if extra is None else extra)
    K = _true(s)[0] * np.asarray(ctx.p(op.sigma_w), dtype=float)[..., None, None] ** 2 \
        + np.asarray(bias)[..., None, None] * E00
    if after:
        K = K * outer(X_ROW, X_ROW) + E11
    elif weights is not None:
        K = K + np.asarray(weights)[..., None, None] * _true(s)[0][..., :1, :1] * E11
    return _scaled(out, K, np.zeros(K.shape[:-1]))


def _without_tangent(f: Moments, t_ls=None) -> Moments:
    """A frame of the pair (x, t) with t = 0: its entries of K, m and the cross moments.
    ``t_ls``: t's log scale (..., 1) given to it, for a frame that a branch is added to: the
    branch's, which the sum then keeps (a stream of scale 1e80 and a t of 1 overflowed its
    change of units; one of e^-350 overflowed the next branch's law where alpha = 0)."""
    ls = f.ls if t_ls is None else f.ls * X_ROW + t_ls * (1 - X_ROW)
    return f.replace(K=f.K * outer(X_ROW, X_ROW), m=f.m * X_ROW, ls=ls, refs=tuple(
        r if r.X is None or r.X is DECOUPLED
        else Ref(m=r.m * X_ROW, X=r.X * outer(X_ROW, X_ROW)) for r in f.refs))


def _tangent_affine(op: FeatureAffine, s: Moments, ctx: Context) -> Moments:
    """FeatureAffine on the pair (x, t): (gamma x + beta, gamma t), so with e = (1, 0) K' =
    E[gamma^2] K + E[gamma beta] (m e^T + e m^T) + E[beta^2] e e^T, m' = E[gamma] m +
    E[beta] e, and each residual cross moment X' = E[gamma] X + E[beta] m_r e^T (true units,
    returned scaled; the vectors' means over the features)."""
    g, b, g2, b2, gb = (np.asarray(v, dtype=float)[..., None] for v in op._point(ctx))
    K, m, X = _true(s)
    e = np.array([1.0, 0.0])
    X = [g * x + b * outer(r.m, e) for r, x in zip(s.refs, X)]
    return _scaled(op.theory_forward(s, ctx), g2 * K + gb * (outer(m, e) + outer(e, m))
                   + b2 * E00, g[..., 0] * m + b[..., 0] * e, X)


def _tangent_norm(op: Op, s: Moments, ctx: Context, after: bool = False, tangent: bool = True,
                  at: Moments | None = None) -> Moments:
    """LayerNorm (c = m) or RMSNorm (c = 0) on the pair (x, t): the norm of x and its Jacobian
    on t, y' = M (y - c) with M = g [[1/r, 0], [-k/r^3, 1/r]], r^2 = K_xx - c_x^2 + eps and
    k = K_xt - c_x c_t (d r / dt = k / r): K' = M (K - c m^T - m c^T + c c^T) M^T, m' = M (m - c),
    each residual cross moment X' = (X - m_r c^T) M^T (in true units, returned scaled).
    ``after``: t starts at the norm's output, N(0, 1) per feature independent of x and of the
    enclosing frames (t in ``s`` is a placeholder): t replaced so, and M = [[g/r, 0], [0, 1]].
    ``tangent`` False: B inputs, each by its own norm (M diagonal). ``at``: the norm's
    statistics (c, and r, k in M) read at that state and held fixed, an affine map of ``s``
    (None: at ``s``, the norm's law)."""
    if after:
        s, at = ((f if f is None else f.replace(
            K=f.K * outer(X_ROW, X_ROW) + E11, m=f.m * X_ROW, ls=f.ls * X_ROW,
            refs=tuple(r if r.X is None or r.X is DECOUPLED else Ref(m=r.m, X=r.X * X_ROW)
                       for r in f.refs))) for f in (s, at))
    at = s if at is None else at
    out = op.theory_forward(s, ctx)
    X, _, m, _ = _centring(op, s)
    c = _centring(op, at)[1]
    M = _linear_part(op, at, ctx, tangent=tangent, after=after)
    MT = np.swapaxes(M, -1, -2)
    X = [(x - outer(r.m, c)) @ MT for r, x in zip(s.refs, X)]
    Kc = _true(s)[0] - outer(c, m) - outer(m, c) + outer(c, c)
    return _scaled(out, M @ Kc @ MT, np.einsum("...ij,...j->...i", M, m - c), X)


def _tangent_chain(chain, s: Moments, ctx: Context, after: bool = False,
                   extra=None, weights=None) -> Moments:
    """The law of the features (f(h), f'(h) tau) after a Dense (h, tau) and elementwise ops f
    (true units inside): with tau = beta h + xi (xi independent of h, variance v), 1-D Gaussian
    expectations over h: E f'^2 tau^2 = beta^2 E h^2 f'^2 + v E f'^2, E f f' tau =
    beta E h f f', E f' tau = beta E h f'. ``after``, ``extra``, ``weights``: the Dense's
    (:func:`_tangent_dense`)."""
    dense = bool(chain) and isinstance(chain[0], Dense)
    K = _true(_tangent_dense(chain[0], s, ctx, after, extra, weights) if dense else s)[0]
    elementwise = chain[1:] if dense else chain
    u, w = gaussian_rule(K[..., :1, :1], _bend(elementwise, ctx), _degree(elementwise, ctx))
    y, vq = _features(elementwise, np.concatenate([u, np.ones_like(u)], -1), ctx, tangent=True)
    f, df = np.moveaxis(y, -1, 0)
    h, w = np.repeat(u[..., 0], len(vq), axis=-1), _mixed(w, vq)  # over the vectors' nodes too
    with np.errstate(divide="ignore", invalid="ignore"):  # (h = 0: a zero branch, tau = 0 too)
        beta = np.where(K[..., 0, 0] > 0, K[..., 0, 1] / K[..., 0, 0], 0.0)
    v = K[..., 1, 1] - beta * K[..., 0, 1]

    def E(x):
        return np.einsum("...p,...p->...", w, x)

    cross = beta * E(h * f * df)
    out = np.stack([np.stack([E(f * f), cross], -1),
                    np.stack([cross, beta**2 * E(h * h * df * df) + v * E(df * df)], -1)], -2)
    return _scaled(_chain_frame(chain, s, ctx) if dense else _apply(chain, s, ctx), out,
                   np.stack([E(f), beta * E(h * df)], -1))


def _chain_frame(chain, s: Moments, ctx: Context) -> Moments:
    """The frame a chain starting with a Dense maps ``s`` to, but for its K, m and ls, which
    :func:`_scaled` replaces: its refs are the Dense's, decoupled (fresh weights), which the
    elementwise ops after it keep, and its law (what is known of the features' joint law) is
    the chain's, which depends on the ops alone, so it is taken from the chain's laws at one
    state of ``s`` (not at every point of a central difference's stack, where an activation's
    kernel on the pair (x, t) cost a quarter of a tanh walk)."""
    one = (0,) * (s.K.ndim - 2)
    law = _apply(chain, s.replace(K=s.K[one], m=s.m[one[:s.m.ndim - 1]],
                                  ls=s.ls[one[:s.ls.ndim - 1]], refs=()), ctx).law
    return s.replace(refs=tuple(Ref(m=r.m, X=DECOUPLED) for r in s.refs), law=law)


class GradientCoefficients(NamedTuple):
    """:func:`gradient_coefficient`'s arrays (layer, *grid, input) and reason."""

    coef: np.ndarray  # c: E grad_q_l = grad_q_l,inf (1 + c/N) + O(1/N^2)
    log_q: np.ndarray  # the infinite-width log grad_q_l (the tangent's log q at the top)
    lost: str | None  # why c is NaN (None: it is not)
    var_log_q: np.ndarray  # v: Var log grad_q_l = v/N at leading order


def gradient_coefficient(net: Op, inputs, layers=(0,), ctx: Context | None = None,
                         own_walks: bool = False, split: bool = True, stacked: bool = True,
                         weights: bool = False):
    """Per layer l of ``layers`` (default: the input) and input a, the coefficient c with
    E grad_q_l = grad_q_l,inf (1 + c/N) + O(1/N^2), and the leading
    variance of log grad_q_l across nets (:class:`GradientCoefficients`).

    grad_q_l = |J_l^T delta_L|^2 / N (J_l: the output's Jacobian in the layer-l stream) with
    delta_L ~ N(0, I) has mean E tr(J_l J_l^T) / N = E |J_l t|^2 / N for t ~ N(0, I)
    independent of the net: the forward tangent t through the same weights, so the backward's
    coupling to the forward weights (which gradient independence drops) is in it. The walk of
    x_a alone up to layer l, then of the pair (x_a, J t) (:meth:`_Walk.law`); t's own
    fluctuation given x_l (|t|^2 / N, x.t / N and mean(t), each O(1/sqrt N)) joins the
    covariance there (at a Dense's output, Gaussian features still to be drawn: with the pair's
    features, where they are drawn); the statistic is the tangent's q / q_inf at the top.
    Var log grad_q_l is the tangent's Var log q: the nonzero spectra of J_l J_l^T and J_l^T J_l
    agree, so |J_l^T delta|^2 and |J_l t|^2 have one law (sum_i s_i^2 z_i^2), the fluctuation
    of delta (|delta|^2 / N) included as t's.

    The layers share one walk: the pair's laws are homogeneous in t, so in the walk's scaled
    units the pair walks from every layer meet the same maps above it, and only their starting
    (b, C) differ. One pair walk from the lowest of them records its steps
    (:attr:`_Walk.tape`); one adjoint pass down it (:func:`_adjoint`) gives each layer's c and
    variance as linear functions of that layer's start: O(L) blocks for all layers, not O(L)
    per layer. The input (l = 0) joins it only where the next layer asked for is in the lower
    half of the net: a recorded walk and its adjoint pass cost ~1.5 plain walks, so the input's
    walk of its own (all L blocks) is cheaper where the shared one would start higher up.
    Uniform weights' bias terms and a varying FeatureAffine's noise on a settled stream depend
    on the pair's cumulants, which do depend on where the tangent started (t's are 0 there):
    the tape keeps the cumulants' maps and each layer's are replayed from its start
    (:func:`_replayed_terms`; no law is evaluated again, O(L) per layer).
    ``own_walks``: every layer a walk of its own (the reference the adjoint is checked
    against). ``split``: as for :func:`coefficients`. ``stacked``: the inputs walked at once,
    on a leading axis (:func:`_stacked`); where a walk stops, each input again alone, so
    that a reason is told for the inputs it holds for (False: each alone).

    ``weights``: (the gradient's, weight_grad_q's) from the same pass. Per layer l > 0 whose
    block has a Dense, a pair walk of block l whose t is the derivative along a random
    direction of all the block's weights (:func:`_weight_walk`) joins the same recorded walk
    at the block's end, with its own (b, C) and its t's log q there (the walk's steps above
    are the same maps whichever member started it): weight_grad_q's c and v per layer
    (:func:`_weight_sums`). One x walk, one recorded walk and one adjoint pass serve both."""
    blocks = layers_of(net)
    L = len(blocks)
    want = sorted({int(l) for l in np.atleast_1d(layers)})
    if not want or want[0] < 0 or want[-1] > L:
        raise ConfigError("layers", layers, f"layers in [0, {L}]")
    grid = sweeps_of(net)
    ctx = ctx or Context(NUMERIC, tuple(grid))
    s0, gaussian, track = inputs.moments(), inputs.law == "gaussian", _tracks_cumulants(net)
    shape = tuple(len(v.values) for v in grid.values())
    rows = [(l, False) for l in want] + ([  # (layer, whether weight_grad_q's); grad's first
        (l, True) for l in want if l > 0 and _has_dense(blocks[l - 1])] if weights else [])
    coef, log_q, var = (np.full((len(rows), *shape, inputs.n), np.nan) for _ in range(3))
    why: dict = {}  # row index -> why its c is NaN (the lowest one's is reported)
    top_width = None  # n_L / N, where a walk reached the top
    joins = len(want) > 1 and 2 * want[1] <= L  # the input's walk: the shared one (above)
    for a in [None] if stacked else range(inputs.n):  # None: every input at once
        own = []  # (index, layer, start) of the layers walked on their own
        x = (_stacked(s0, np.arange(inputs.n)[:, None], len(shape)) if a is None else
             s0.replace(K=s0.K[a:a + 1, a:a + 1], m=s0.m[a:a + 1], ls=s0.ls[a:a + 1]))
        col = slice(None) if a is None else a
        walk = _Walk(x, ctx, fresh=gaussian, cumulants=track)
        walk.stop_when_lost = True  # one input: BatchNorm's law would not even take it
        shared, members = None, []  # the recorded pair walk the layers above 0 join; theirs
        below = {}  # weights: row -> its walk through its block, from x's walk below it
        offsets = {}  # weights: row -> t's log q where it joins the shared walk (from D's x)

        for l in range(L + 1):
            if shared is not None and l > 0:
                shared.layer(l, blocks[l - 1])
            starts = []  # (None: the walk from the layer, made where it is needed)
            if l in want and walk.lost:  # x's fluctuation unknown from there on: NaN
                why.setdefault(want.index(l), walk.lost)
            elif l in want:
                starts.append((want.index(l), None))
            starts += [(k, below.pop(k)) for k in sorted(below) if rows[k][0] == l]
            for k, start in starts:
                if start is not None and start.lost:  # (a weight walk lost in its block)
                    why.setdefault(k, start.lost)
                elif own_walks or (l == 0 and not joins):
                    own.append((k, l, start or _tangent_walk(walk)))
                elif (start := start or _tangent_walk(walk)).joins_open and (
                        shared is None or shared.lost):
                    own.append((k, l, start))  # (t starts inside x's open chain: a walk
                    # that records the steps above starts where a pair is drawn)
                else:
                    if start.lost:  # (its (b, C): NaN)
                        why.setdefault(k, start.lost)
                    if shared is None or shared.lost:
                        if shared is not None:
                            _close(shared, members, own, why)
                        shared, members, start.tape = start, [], []
                    members.append(k)
                    if rows[k][1]:
                        offsets[k] = _tangent_log_q(start) - 2 * start.t_ls
                    join = ("join", k, start.b, start.C, l, start, start.cumulants)
                    if not shared.chain:  # drawn, or Gaussian features still to be (a Dense's)
                        shared.tape.append(join + (_tangent_log_q(shared),))
                    else:  # its features are drawn at the next reduction
                        shared.waiting.append((join, len(shared.chain)))
            if weights and l < L:
                for k, (j, w) in enumerate(rows):
                    if j != l + 1 or not w:
                        continue
                    if walk.lost:  # (x's fluctuation unknown: NaN)
                        why.setdefault(k, walk.lost)
                    elif start := _weight_walk(walk, l + 1, blocks[l]):
                        below[k] = start
                    else:  # the block's weight gradient is 0 at every width
                        coef[k, ..., col], log_q[k, ..., col] = 0.0, -np.inf
                        var[k, ..., col] = 0.0
            if l < want[-1]:
                walk.layer(l + 1, blocks[l])
        if shared is not None:
            shared.settle()
            _close(shared, members, own, why)
            if not shared.lost:
                top_width = shared.widths[0]
                for k, (c, q, v) in _adjoint(shared):
                    got = _by_input((c, q + offsets.get(k, 0.0), v), a)
                    coef[k, ..., col], log_q[k, ..., col], var[k, ..., col] = got
        for k, l, start in own:  # a walk of its own
            for j, block in enumerate(blocks[l:], start=l + 1):
                start.layer(j, block)
            seen = start.settled()
            if seen.lost:
                why.setdefault(k, seen.lost)
            else:
                top_width = seen.widths[0]
                got = _by_input(_tangent_q(seen), a)
                coef[k, ..., col], log_q[k, ..., col], var[k, ..., col] = got
    pointwise = bool(grid) and any(w.pointwise for w in why.values())
    if stacked and why and not (pointwise and split):  # which inputs' walks a reason holds
        # for: each walked alone (as the parts of a split grid are)
        return gradient_coefficient(net, inputs, want, ctx, own_walks, split, stacked=False,
                                    weights=weights)
    n = len(want)
    kinds = [(coef[:n], log_q[:n], var[:n], {k: w for k, w in why.items() if k < n})]
    if weights:
        kinds.append(_weight_sums(rows[n:], want, coef[n:], log_q[n:], var[n:], top_width,
                                  {k - n: w for k, w in why.items() if k >= n}))
    out = []
    for c, q, v, w in kinds:
        lost = w[min(w)] if w else None
        if lost and pointwise:  # (a part of a grid its caller splits, :func:`_halves`)
            lost = Lost(lost, True, lost.points)
        out.append(GradientCoefficients(c, q, lost, v))
    if pointwise and split:
        def at(part):
            got = gradient_coefficient(part, inputs, layers=want, own_walks=own_walks,
                                       split=False, stacked=False, weights=weights)
            got = got if weights else (got,)
            arrays = {f"{f}{i}": getattr(g, f) for i, g in enumerate(got)
                      for f in ("coef", "log_q", "var_log_q")}
            arrays |= {f"lost{i}": np.full((1,) + g.coef.shape[1:-1], g.lost, dtype=object)
                       for i, g in enumerate(got)}  # (each kind's reason, by point)
            return arrays, next((g.lost for g in got if g.lost), None)

        got, _ = _halves(net, at, walked=True)
        out = [GradientCoefficients(got[f"coef{i}"], got[f"log_q{i}"],
                                    _named_points(grid, got[f"lost{i}"][0]),
                                    got[f"var_log_q{i}"]) for i in range(len(out))]
    return tuple(out) if weights else out[0]


def _has_dense(op: Op) -> bool:
    """Whether ``op`` holds a Dense (weights, so a weight gradient; a Repeat has n >= 1)."""
    return any(isinstance(k, Dense) for k in op.walk())


def _weight_walk(walk: _Walk, l: int, block: Op) -> _Walk:
    """The pair walk of block ``l`` from x's ``walk`` below it whose t is the derivative of the
    block along a random direction of all its weights (:meth:`_Walk._start_at_weights`: t
    starts at the block's first Dense as T x, every later Dense adds its own), at the end of
    the block drawn (or Gaussian features still to be drawn) as a tangent started there is
    (:func:`_tangent_walk`), to join the walk above. None where t is exactly 0 there (the
    Denses in a branch of weight 0, x + 0 F(x), or whose later weights are 0: the block's
    weight gradient is 0 at every width); lost where it is at some grid points only."""
    out = _tangent_walk(walk)  # (its t a placeholder until the first Dense)
    out.weights_at = 0
    out.layer(l, block)
    met, out.weights_at = out.weights_at, None  # (the walk above adds no weights)
    if out.chain:
        out.settle()
    if out.lost:
        return out
    if not met:  # (every Dense in a branch of weight 0, walked as a Scale: never met)
        return None
    zero = out.frames[0].K[..., 1, 1] <= 0
    if not np.any(zero):
        return out
    if np.all(zero):
        return None
    out.lose(f"layer {l}: the tangent T x of the block's weights is exactly 0 past its block at "
             "some grid points (later weights 0 there)", pointwise=True)
    return out


def _weight_sums(rows, want, coef, log_q, var, top_width, why):
    """weight_grad_q's (c, log E, v, why) per layer of ``want`` from its block's row (``rows``:
    (layer, True)): E weight_grad_q = (n_L / N) E |t|^2 / n_L, t the derivative along a random
    direction of the block's weights (:meth:`_Walk._start_at_weights`; q: the walk's log q of t
    at the top), c its relative correction and v its Var log (N^-1 |t|^2 has the law of
    weight_grad_q, the Denses' covariances through the shared delta_L included); NaN at layer
    0 and for a block without Dense (no weights). ``why``: by row, then by layer."""
    shape = (len(want),) + coef.shape[1:]
    c, log_e, v = (np.full(shape, np.nan) for _ in range(3))
    width = np.log(np.asarray(top_width if top_width is not None else 1.0, dtype=float))
    by_layer = {}
    for k, (l, _) in enumerate(rows):
        i = want.index(l)
        c[i], v[i] = coef[k], var[k]
        log_e[i] = log_q[k] + (width[..., None] if width.ndim else width)
        if k in why:
            by_layer[i] = why[k]
    return c, log_e, v, by_layer


def _stacked(s0: Moments, groups, ndim: int) -> Moments:
    """The state of each group of inputs (``groups``: (P, k) indices into s0's) alone, the
    groups stacked on a leading axis before the ``ndim`` grid axes: the walks are vectorised
    over the grid, so they walk every group at once (one walk's Python, not P)."""
    lead, k = (len(groups),) + (1,) * ndim, groups.shape[1]
    return s0.replace(K=s0.K[groups[:, :, None], groups[:, None, :]].reshape(lead + (k, k)),
                      m=s0.m[groups].reshape(lead + (k,)), ls=s0.ls[groups].reshape(lead + (k,)))


def _by_input(got, a):
    """A walk's arrays with the input axis of :func:`_stacked` (``a`` None) moved last."""
    return got if a is not None else [np.moveaxis(np.asarray(g), 0, -1) for g in got]


def each_point(net: Op, compute):
    """``compute(part)`` -> (dict of arrays (layer, *grid, ...), why or None), one walk of the
    grid of ``part`` (a part of ``net``'s grid, or one point of it) that does not split it
    itself, stacked over ``net``'s grid; why: each reason, naming the points it holds at.
    Called where one walk of the whole grid stopped for all of it for a reason that holds at
    some points only (:class:`Lost`): the grid is halved along its longest sweep and each half
    walked as one, and so on down to single points where such a reason holds (:func:`_halves`:
    about 2 log2 P walks for one lost point of a P-point grid, where a walk per point was P)."""
    out, reasons = _halves(net, compute, walked=True)
    return out, _named_points(sweeps_of(net), reasons)


def _named_points(grid, reasons):
    """One :class:`Lost` of each point's reason or None (an object array over ``grid``, of
    :func:`_halves`), naming the points each holds at; None where none has one."""
    points = grid_points(grid)
    where: dict[str, list[int]] = {}  # reason -> the indices of the points it holds at
    for i, why in enumerate(reasons.ravel()):
        if why:
            where.setdefault(str(why), []).append(i)
    if not where:
        return None

    def named(idx):
        listed = "; ".join(_point_text(points[i]) for i in idx[:4])
        return listed + (f" and {len(idx) - 4} more" if len(idx) > 4 else "")

    listed = [f"{why} (the first reason at {len(idx)} of {len(points)} grid points: "
              f"{named(idx)})" for why, idx in where.items()]
    more = f"; {len(listed) - 3} more reasons at other points" if len(listed) > 3 else ""
    return Lost("; ".join(listed[:3]) + more,
                points=frozenset(i for idx in where.values() for i in idx),
                partial=all(getattr(why, "partial", False) for why in reasons.ravel() if why))


def _halves(net: Op, compute, walked=False):
    """(arrays (layer, *grid, ...), each point's reason or None as an object array (*grid)) of
    :func:`each_point`: one walk of the grid (``walked``: known to stop for a reason
    of some points only, not walked again), kept unless it stopped for such a reason; else the
    two halves of its longest sweep, each by itself. A point alone is the net built there."""
    grid = sweeps_of(net)
    shape = tuple(len(s.values) for s in grid.values())
    if math.prod(shape) == 1:
        got, why = compute(at_point(net, grid_points(grid)[0]))
        return ({k: v.reshape(v.shape[:1] + shape + v.shape[1:]) for k, v in got.items()},
                np.full(shape, why, dtype=object))
    if not walked:
        got, why = compute(net)
        if not (why and why.pointwise):
            return got, np.full(shape, why, dtype=object)
    axis = int(np.argmax(shape))
    name, values = list(grid)[axis], grid[list(grid)[axis]].values
    parts = [_halves(replace_sweeps(net, {name: Sweep(name, half)}), compute)
             for half in (values[:len(values) // 2], values[len(values) // 2:])]
    return ({k: np.concatenate([p[0][k] for p in parts], axis=1 + axis) for k in parts[0][0]},
            np.concatenate([p[1] for p in parts], axis=axis))


def _over_grid(parts, grid):
    """Arrays (layer, ...) of each grid point, in :func:`~sigprop.ops.grid_points` order,
    stacked as (layer, *grid, ...)."""
    a = np.stack(parts, 1)
    return a.reshape(a.shape[:1] + tuple(len(s.values) for s in grid.values()) + a.shape[2:])


def _close(shared: _Walk, members, own, why):
    """A shared walk done with: its stale joins go to ``own`` (walked on their own); if it was
    lost, the other layers that joined it (``members``) are NaN, for its reason, unless that
    reason holds only for tangents started below where it was met (``Lost.below``): then each
    layer that joined it is walked on its own too, and finds its own."""
    own.extend((j, i, st) for _, j, _, _, i, st, _ in shared.stale)
    stale = {join[1] for join in shared.stale}
    if shared.lost and shared.lost.below:
        for step in shared.tape:
            if isinstance(step, tuple) and step[0] == "join" and step[5] is not shared \
                    and step[1] not in stale:
                own.append((step[1], step[4], step[5]))
                stale.add(step[1])
    for k in members if shared.lost else ():
        if k not in stale:
            why.setdefault(k, shared.lost)


def _tangent_log_q(w: _Walk):
    """The tangent's true log q in a pair walk whose statistics are drawn (or Gaussian features
    still to be drawn, whose law the frame holds)."""
    f = w.frames[0]
    with np.errstate(divide="ignore"):  # (a tangent past float64: lost where it is drawn)
        return 2 * f.ls[..., 1] + np.log(f.K[..., 1, 1])


def _derivatives(fn, x0, linear=False, coordinates=None):
    """(J, H) of a vector map ``fn`` at x0 (..., D): J (..., E, D) and H (..., E, D, D), by
    :func:`_differences` along each coordinate direction u_k and each pair u_k + u_l (step
    ``STEP``: the walk's states are O(1) in its scaled units); ``linear`` (fn affine): J along
    the u_k alone, H None (0). ``coordinates``: (U, S, T) of :func:`_coordinates`, the
    directions u_k (U's rows) of the coordinates fn reads, J = J_u S + T and H = S^T H_u S;
    None: every axis e_i."""
    D = x0.shape[-1]
    U, S, T = coordinates or (np.eye(D), np.eye(D), 0.0)
    n, shape = len(U), (-1,) + (1,) * (x0.ndim - 1) + (D,)
    if linear:
        _, d1, _ = _differences(fn, x0, U.reshape(shape), _step(), second=False)
        return np.moveaxis(d1, 0, -1) @ S + T, None
    i, j = np.triu_indices(n, 1)  # (the pairs k < l)
    y0, d1, d2 = _differences(fn, x0, np.concatenate([U, U[i] + U[j]]).reshape(shape), _step())
    H = np.zeros(y0.shape + (n, n))
    H[..., range(n), range(n)] = np.moveaxis(d2[:n], 0, -1)
    H[..., i, j] = H[..., j, i] = np.moveaxis(d2[n:] - d2[i] - d2[j], 0, -1) / 2
    return np.moveaxis(d1[:n], 0, -1) @ S + T, S.T @ H @ S


@functools.cache
def _coordinates(frames: int, B: int, top: bool):
    """(U, S, T) for :func:`_derivatives` of a map of the flattened stack of ``frames`` frames
    of B inputs (:func:`flatten`'s layout). Each frame's K is read as (K + K^T) / 2
    (:func:`unflatten`), so K_ab and K_ba (a < b) are one coordinate, k_ab, stepped along
    u = e_ab + e_ba (S's row s = e_ab / 2 + e_ba / 2: S U^T = I). ``top``: the map takes the
    top frame alone to its new state (fr[:-1] + [law(fr[-1])]), which reads that frame and
    the enclosing frames' means (its refs'); the other coordinates it passes through unread,
    J's part T = sum of their u s^T (0 without ``top``). A map of a frame inside a residual
    branch has 66 directions (11 coordinates and their pairs) where the axes are 136."""
    starts = [i * (B * B + B) + B * B * i * (i - 1) // 2 for i in range(frames + 1)]
    D = starts[frames]  # (frame i: K, m, then X with each enclosing frame, up to starts[i + 1])
    read = np.ones(D, dtype=bool)
    if top:
        read[:starts[frames - 1]] = False
        for i in range(frames - 1):
            read[starts[i] + B * B:starts[i] + B * B + B] = True
    rows = []
    for i in range(frames):
        K = starts[i] + np.arange(B * B).reshape(B, B)
        rows += [[K[a, b], K[b, a]] if a < b else [K[a, b]] for a in range(B) for b in range(a, B)]
        rows += [[c] for c in range(starts[i] + B * B, starts[i + 1])]
    U, S = np.zeros((len(rows), D)), np.zeros((len(rows), D))
    for k, r in enumerate(rows):
        U[k, r], S[k, r] = 1.0, 1.0 / len(r)
    kept = read[[r[0] for r in rows]]
    return U[kept], S[kept], U[~kept].T @ S[~kept] if top else 0.0


def _contract(A, B):
    return np.einsum("...ij,...ij->...", A, B)


def _adjoint(seen: _Walk):
    """Per layer joining the recorded walk ``seen`` (settled at the top), (index, (c, log q,
    v)) as :func:`_tangent_q` would give for a walk of its own from there: the top statistics
    are f = g.b + G:C (c: g and G = H/2 of the tangent's q / q_inf; v: G = grad log q_t grad
    log q_t^T, g = 0), pulled back through each step (a map with derivatives J, H: g <- J^T g,
    G <- J^T G J + 1/2 sum_i g_i H_i; a draw's covariance Sigma: f gains G:Sigma) down to the
    join, where f is read at that layer's own start (b, C); the terms that depend on the
    pair's cumulants above it (uniform weights' bias, a varying FeatureAffine's noise on a
    settled stream), from that layer's own cumulants (:func:`_replayed_terms`)."""
    top = seen.frames[0]
    x0 = flatten([top], [top])
    J, H = _derivatives(lambda x: _stats(x, top), x0)
    g, G = J[..., 3, :], H[..., 3, :, :] / 2  # the tangent's q / q_inf
    Gv = J[..., 1, :, None] * J[..., 1, None, :]  # the tangent's log q
    f = fv = 0.0
    log_q_top = _stats(x0, top)[..., 1]  # (plus the log q taken off by the rescales above)
    replayed = {}  # tape position -> the pulled-back weights of a term the cumulants set
    for pos in reversed(range(len(seen.tape))):
        step = seen.tape[pos]
        if isinstance(step, np.ndarray):  # a draw's fluctuation
            f, fv = f + _contract(G, step), fv + _contract(Gv, step)
        elif step[0] == "bias":  # a draw's bias beyond its law's: f gains g.b
            f = f + np.einsum("...i,...i->...", g, step[1])
        elif step[0] in ("rescale", "cumulants"):
            log_q_top = log_q_top + (step[1] if step[0] == "rescale" else 0.0)
        elif step[0] == "affine":  # a varying FeatureAffine's noise: G:Sigma, Gv:Sigma
            replayed[pos] = (G, Gv)
        elif step[0] == "units":  # J = diag(s), H = 0
            g, G, Gv = g * step[1], G * outer(step[1], step[1]), Gv * outer(step[1], step[1])
        elif step[0] == "join":
            _, k, b, C, _, _, cumulants, log_q_join = step  # the layer's own start
            c, v = _replayed_terms(seen.tape, pos, cumulants, replayed) if replayed else (0, 0)
            yield k, (np.einsum("...i,...i->...", g, b) + _contract(G, C) + f + c,
                      log_q_top - log_q_join, _contract(Gv, C) + fv + v)
        else:
            fn, x, kurtosis, linear, coordinates = step
            J, H = _derivatives(fn, x, linear, coordinates)
            JT = np.swapaxes(J, -1, -2)
            gH = 0.0 if linear else np.einsum("...i,...ijk->...jk", g, H) / 2
            if kurtosis is not None:  # its bias gained k H:M / 2 (:meth:`_Walk.push`), H that
                # of its own map where it is not fn's (held norm statistics)
                Hk = None if kurtosis[2] is fn else _derivatives(kurtosis[2], x, False,
                                                                 coordinates)[1]
                gHk = gH if Hk is None else np.einsum("...i,...ijk->...jk", g, Hk) / 2
                replayed[pos] = np.asarray(kurtosis[1])[..., None, None] * gHk
            G = JT @ G @ J + gH
            g = np.einsum("...ij,...i->...j", J, g)
            Gv = JT @ Gv @ J


def _replayed_terms(tape, pos, cumulants, replayed):
    """(c, v) terms, pulled back to the top, of a tangent walk that starts at tape position
    ``pos`` with ``cumulants``: the tape's cumulant maps replayed from there, and at each step
    that the cumulants set, its term from them: a uniform Dense's bias (k g.H / 2):M (M affine
    in them), a varying FeatureAffine's noise G:Sigma and Gv:Sigma (``replayed``: the weights,
    by position; the FeatureAffine's step also maps the cumulants to y's). O(L) per layer."""
    c = v = 0.0
    for i in range(pos + 1, len(tape)):
        step = tape[i]
        kind = step[0] if isinstance(step, tuple) and isinstance(step[0], str) else None
        if kind == "affine":
            extra, y = step[1](cumulants)
            cumulants = cumulants[:-1] + [y]
            G, Gv = replayed[i]
            c, v = c + _contract(G, extra), v + _contract(Gv, extra)
        elif i in replayed:
            c = c + _contract(replayed[i], step[2][0](cumulants))
        elif kind == "cumulants":
            cumulants = step[1](cumulants)
    return c, v


def _tangent_walk(walk: _Walk) -> _Walk:
    """A tangent walk of the pair (x, t) from the state of ``walk`` (one input): x's
    fluctuation carried, t ~ N(0, q_x I) independent of it (c does not depend on t's scale;
    x's keeps the walk's numbers O(1)). Where x's features are drawn (settled), t's realised
    statistics fluctuate per 1/n in x's scaled units (n = w N the stream's width there): Var
    x.t = K_xx, Var |t|^2 = 2, Var mean(t) = 1, Cov(x.t, mean t) = m_x. Where they are still
    to be drawn (chain []: Gaussian inputs at layer 0, a Gaussian Dense's output), (x_i, t_i)
    are i.i.d. Gaussian features with Gram diag(K_xx, 1), and the pair's features are drawn at
    its first reduction, t's fluctuation with them. Where x's open chain has a norm and no
    activation after it (a layer ends between a norm and the activations after it), the chain
    stays open and t ~ N(0, 1) per feature joins at the norm's output (:attr:`_Walk.after_norm`;
    a Scale or a constant FeatureAffine after the norm scales it, which leaves c as it is and
    moves t's starting scale), to be drawn with it (:func:`post_norm_noise`). So where the
    chain is a uniform Dense's output and linear maps (:attr:`_Walk.after_dense`): its
    features, whose 4th cumulant is a term of their draw, are drawn with their input's
    cumulants known, and t ~ N(0, 1) per feature joins after the weights."""
    fresh = walk.chain == []
    norm = next((i for i, op in enumerate(walk.chain or ()) if _is_norm(op)), None)
    after = (norm is not None and not walk.lost
             and not any(isinstance(op, Act) for op in walk.chain[norm + 1:]))
    after_dense = (norm is None and not fresh and walk.chain is not None and not walk.lost
                   and isinstance(walk.chain[0], Dense) and walk.chain[0].init == "uniform"
                   and walk._gaussian_chain(dense=True))  # (then only linear maps after it)
    if after or after_dense:  # (the linear maps after the norm or Dense scale t by these;
        start = norm + 1 if after else 1  # one of 0 would drop it)
        factors = [np.abs(_vector_rule(op, walk.ctx)[0][..., 0]) for op in walk.chain[start:]]
        after, after_dense = (flag and all(np.all(f > 0) for f in factors)
                              for flag in (after, after_dense))
    seen = walk if fresh or after or after_dense else walk.settled()
    f = seen.frames[0]
    lead = _lead([f])
    K, m = np.broadcast_to(f.K[..., 0, 0], lead), np.broadcast_to(f.m[..., 0], lead)
    zero, one = np.zeros(lead), np.ones(lead)
    ls = np.broadcast_to(f.ls[..., 0], lead)
    pair = f.replace(K=np.stack([np.stack([K, zero], -1), np.stack([zero, one], -1)], -2),
                     m=np.stack([m, zero], -1), ls=np.stack([ls, ls], -1))
    out = _Walk(pair, walk.ctx, fresh=fresh, tangent=True, cumulants=walk.track)
    out.t_ls, out.lost, out.chain_ctx, out.chain_end = ls, seen.lost, seen.chain_ctx, seen.chain_end
    if after or after_dense:  # (t's log scale at the start)
        out.t_ls = sum((np.log(f) for f in factors), np.zeros(lead))
    b, C = np.zeros(lead + (6,)), np.zeros(lead + (6, 6))  # [K_xx, K_xt, K_tx, K_tt, m_x, m_t]
    b[..., [0, 4]] = np.broadcast_to(seen.b, lead + (2,))
    if not (fresh or after or after_dense):
        C[..., [[1], [2]], [1, 2]] = K[..., None, None]
        C[..., [1, 2], 5] = C[..., 5, [1, 2]] = m[..., None]
        C[..., 3, 3], C[..., 5, 5] = 2.0, 1.0
        C = C / np.asarray(seen.widths[-1])[..., None, None]  # t's, per 1/n
    C[..., [[0], [4]], [0, 4]] = np.broadcast_to(seen.C, lead + (2, 2))  # x's, per 1/N
    out.b, out.C, out.widths = b, C, list(seen.widths)
    if fresh:  # (the cumulants: those of the features drawn)
        return out
    if after or after_dense:
        out.chain, out.fan_in = list(walk.chain), walk.fan_in
        out.after_norm, out.after_dense = after, after_dense
        if after:
            out.norm_ctx = walk.norm_ctx
    elif walk.chain:  # (an activation next has no rule on the drawn stream: say why)
        out.start_note = (f" (the gradient at {walk.chain_ctx.path}'s output starts on its "
                          "features drawn: a tangent started before they are needs a "
                          "Dense's features, then linear maps with nonzero factors, constant "
                          "over the features)")
    k = seen.cumulants[0]  # t: Gaussian, independent of x (its joint cumulants with x are 0)
    if k is None:
        out.cumulants = [None]
    else:
        k3, k4 = out.cumulants[0]
        k3[..., 0, 0, 0], k4[..., 0, 0, 0, 0] = k[0][..., 0, 0, 0], k[1][..., 0, 0, 0, 0]
    return out


def _tangent_q(seen: _Walk):
    """(c, log q, v) of the tangent row of a settled tangent walk: its q / q_inf's first-order
    coefficient, its infinite-width log q and the leading variance v of its log q (v/N)."""
    top = seen.frames[0]
    x0 = flatten([top], [top])
    D, lead = x0.shape[-1], _lead([top])
    y, c, V = delta_step(lambda x: _stats(x, top), x0,
                         np.broadcast_to(seen.b[..., :D], lead + (D,)),
                         np.broadcast_to(seen.C[..., :D, :D], lead + (D, D)), [top])
    # [log q, q / q_inf, ...] of the pair (x, J t): the tangent's are entries 1 and 3
    return c[..., 3], y[..., 1] - 2 * seen.t_ls, V[..., 1, 1]


def _cross_gram(frames, i, j):
    """mean_n r^i_na r^j_nc between two settled frames (frame i's Gram when i = j)."""
    if i == j:
        return frames[i].K
    if i > j:
        return np.swapaxes(_cross_gram(frames, j, i), -1, -2)
    f = frames[j]
    return f.cross(f.refs[i])


# -- statistics ---------------------------------------------------------------------------
def _stats(x, s: Moments):
    """[log q (B), q / q_inf (B), corr (B^2), mean (B), var / var_inf (B)] of a top-level state
    vector (var = q - mean^2; var / var_inf taken as 0 where var_inf = 0, a stream whose features
    are all equal, and NaN where var_inf is below VAR_RESOLVED of q_inf: round-off); the mean
    in the state's scaled units (:func:`_true_mean`: its coefficients in true units)."""
    B = s.K.shape[-1]
    K = x[..., :B * B].reshape(x.shape[:-1] + (B, B))
    m = x[..., B * B:B * B + B]
    d = np.diagonal(K, axis1=-2, axis2=-1)
    corr = K / np.sqrt(outer(d, d))
    var_inf = s.diag - s.m ** 2
    spread = np.divide(d - m ** 2, var_inf, out=np.zeros(np.broadcast_shapes(d.shape,
                       var_inf.shape)), where=var_inf > 0)
    spread = np.where((var_inf > 0) & (var_inf < VAR_RESOLVED * s.diag), np.nan, spread)
    return np.concatenate([2 * s.ls + np.log(d), d / s.diag, corr.reshape(x.shape[:-1] + (B * B,)),
                           m, spread], axis=-1)


def _true_mean(a, v, s: Moments):
    """The coefficients a and v of :func:`_stats` with the mean's in true units: times e^ls and
    e^{2 ls} (a linear statistic of the scaled state); 0 where they are 0 (a zero-mean stream's
    mean at any scale), and +-inf where the scale passes float64, as the dataset's linear
    variables do (:func:`sigprop.schema.complete`)."""
    B = s.K.shape[-1]
    at = slice(2 * B + B * B, 3 * B + B * B)
    a, v = a.copy(), v.copy()
    with np.errstate(over="ignore", invalid="ignore"):  # (0 inf: NaN, not taken)
        e = np.exp(s.ls)
        for x, scale in ((a, e), (v, e * e)):
            x[..., at] = np.where(x[..., at] == 0, 0.0, x[..., at] * scale)
    return a, v


def coefficients(net: Op, inputs, ctx: Context | None = None, split: bool = True):
    """Per layer l = 0..L: the first-order coefficients a (E stat = stat_inf + a/N) and the
    leading variances v (Var stat = v/N) of log q, q/q_inf, corr, mean and var/var_inf (those
    of log q, corr and mean as ``var_log_q``, ``var_corr``, ``var_mean``, and var/var_inf's as
    ``var_log_var``: log var - log var_inf = var/var_inf - 1 at leading order), the
    coefficients a of the residual branch's log q and q/q_inf (``log_branch_q``, ``branch_q``)
    and v of its log q (``var_log_branch_q``), as a dict of arrays (L+1, *grid, ...); and the
    reason (or None) why they are NaN from some layer on. B > 2:
    from the walks of the B(B-1)/2 pairs (:func:`_by_pairs`). ``split``: where the one walk of
    the grid stops for a reason of some points only, walk its parts (:func:`each_point`);
    False: that walk's numbers (NaN at every point from there). A net of activations on the
    residual stream (:func:`_stream_blocks`) on Gaussian inputs: the stream-row model instead
    (:func:`_stream_coefficients`), whose reason is ``partial``."""
    stream, points = None, grid_points(sweeps_of(net))  # (stream: why the stream-row model
    # that covers the net gave no numbers)
    if inputs.law == "gaussian" and _stream_blocks(at_point(net, points[0])):
        try:
            return _stream_coefficients(net, inputs), (Lost(STREAM_LOST, partial=True)
                                                       if inputs.n > 1 else None)
        except _Unresolved as e:  # (it may hold at other grid points: walked each alone)
            if split and len(points) > 1:
                return each_point(net, lambda part: coefficients(part, inputs, split=False))
            stream = e
    if inputs.n > 2:  # (its walks: pairs of a larger batch, :data:`_PAIRED`)
        token = _PAIRED.set(True)
        try:
            return _by_pairs(net, inputs, ctx, split)
        finally:
            _PAIRED.reset(token)
    grid = sweeps_of(net)
    ctx = ctx or Context(NUMERIC, tuple(grid))
    rows, why = _coefficient_rows(net, inputs.moments(), inputs.law == "gaussian", ctx, split)
    if rows is None:
        return each_point(net, lambda part: coefficients(part, inputs, split=False))
    if stream and why:
        why = Lost(f"{why}; {stream}", pointwise=True, points=why.points, below=why.below)
    return _statistics(rows, inputs.n, tuple(len(v.values) for v in grid.values())), why


def _statistics(rows, B: int, shape) -> dict:
    """The arrays (L+1, *shape, ...) of :func:`coefficients` from its rows: per layer, (a, v)
    over :func:`_stats`' layout [log q (B), q / q_inf (B), corr (B^2), mean (B), var / var_inf
    (B)], and the branch's [a of log q, a of q / q_inf, v of log q]
    (:meth:`_Walk._branch_stats`; None: no branch, NaN)."""
    def part(k, lo, hi, extra):
        return np.stack([np.broadcast_to(r[k][..., lo:hi], shape + (hi - lo,))
                         .reshape(shape + extra) for r in rows])

    def branch(lo):
        return np.stack([np.full(shape + (B,), np.nan) if r[2] is None else
                         np.broadcast_to(r[2][..., lo:lo + B], shape + (B,)) for r in rows])

    return {"log_q": part(0, 0, B, (B,)), "q": part(0, B, 2 * B, (B,)),
            "corr": part(0, 2 * B, 2 * B + B * B, (B, B)),
            "mean": part(0, 2 * B + B * B, 3 * B + B * B, (B,)),
            "var": part(0, 3 * B + B * B, 4 * B + B * B, (B,)),
            "var_log_q": part(1, 0, B, (B,)),
            "var_corr": part(1, 2 * B, 2 * B + B * B, (B, B)),
            "var_mean": part(1, 2 * B + B * B, 3 * B + B * B, (B,)),
            "var_log_var": part(1, 3 * B + B * B, 4 * B + B * B, (B,)),
            "log_branch_q": branch(0), "branch_q": branch(B), "var_log_branch_q": branch(2 * B)}


def _coefficient_rows(net: Op, s0: Moments, gaussian: bool, ctx: Context, split: bool):
    """(rows, why) of :func:`coefficients` from the inputs' state ``s0`` (its leading axes
    broadcast with the grid's): per layer, a and v of the statistics of :func:`_stats`; rows
    None where ``split`` and a reason of some grid points only stopped the walk (its rest is
    not needed: the caller walks the grid's parts)."""
    walk = _Walk(s0, ctx, fresh=gaussian, cumulants=_tracks_cumulants(net))
    rows, blocks, first = [], layers_of(net), None  # first: the reason of the first NaN row
    grid = sweeps_of(net)
    for l, block in enumerate([None, *blocks]):
        if block is not None:
            walk.layer(l, block)
        seen = walk.settled()
        if seen.lost and seen.lost.pointwise and grid and split:
            return None, seen.lost
        first = first or seen.lost  # (a settled copy's, which the walk may go on past: where
        # its draw lost it, not a later op's)
        if l < len(blocks) and _opens_settled(blocks[l]):
            walk = seen  # (the next block would draw these same features first)
        s = seen.frames[0]
        lead = _lead([s])
        if seen.lost:  # (not its stats: a stream of zeros has no log q)
            nan = np.full(lead + (4 * s.K.shape[-1] + s.K.shape[-1] ** 2,), np.nan)
            rows.append((nan, nan, None))
            continue
        x0 = flatten([s], [s])
        D = x0.shape[-1]
        b = np.broadcast_to(seen.b[..., :D], lead + (D,))
        C = np.broadcast_to(seen.C[..., :D, :D], lead + (D, D))
        _, a, V = delta_step(lambda x, s=s: _stats(x, s), x0, b, C, [s])
        rows.append((*_true_mean(a, np.diagonal(V, axis1=-2, axis2=-1), s), seen.branch))
    return rows, first  # (a loss in the last block's chain is seen settling it)


def _opens_settled(op: Op) -> bool:
    """Whether walking ``op`` starts by drawing the stream's pending features (its first op is
    not elementwise, which would join the open chain, nor a norm, which may)."""
    while isinstance(op, (Serial, Repeat)):
        op = op.layers[0] if isinstance(op, Serial) else op.block
    return not isinstance(op, (Act, Scale, FeatureAffine, LayerNorm, RMSNorm))


def _merged(reasons) -> Lost | None:
    """One reason for several walks (B > 2: a walk per pair): their distinct messages, at the
    union of their points (None where one holds at points not known)."""
    reasons = [r for r in reasons if r]
    if not reasons:
        return None
    points = (None if any(r.points is None for r in reasons)
              else frozenset().union(*(r.points for r in reasons)))
    return Lost("; ".join(dict.fromkeys(reasons)), any(r.pointwise for r in reasons), points)


def _stacked_pairs(net: Op, inputs, pairs, ctx):
    """Per pair, :func:`coefficients` of that pair alone, from one walk of every pair at once
    (:func:`_stacked`: one walk's Python, not B(B-1)/2); None where it stops for some reason
    (the pairs are then walked each alone, so that the reason is told for the pairs it holds
    for)."""
    grid = sweeps_of(net)
    ctx = ctx or Context(NUMERIC, tuple(grid))
    two = _stacked(inputs.moments(), np.asarray(pairs), len(grid))
    rows, why = _coefficient_rows(net, two, inputs.law == "gaussian", ctx, split=False)
    shape = tuple(len(v.values) for v in grid.values())
    return None if why else [_statistics([(a[p], v[p], None if branch is None else branch[p])
                                          for a, v, branch in rows], 2, shape)
                             for p in range(len(pairs))]


def _by_pairs(net: Op, inputs, ctx, split, stacked=True):
    """:func:`coefficients` of B > 2 inputs from the walk of each pair (a, b): every op with a
    rule here acts on each input alone (BatchNorm, which couples them, has none: the walks stop
    there), so the realised Grams of a pair, and their first-order laws, are those of the pair
    alone. An input's own statistics (and corr's diagonal: 0, or NaN where lost) come from its
    first pair. ``stacked``: the pairs walked at once (:func:`_stacked_pairs`)."""
    B, pairs = inputs.n, [(a, b) for a in range(inputs.n) for b in range(a + 1, inputs.n)]
    walked = _stacked_pairs(net, inputs, pairs, ctx) if stacked else None
    out, lost, seen = None, None, set()
    for n, (a, b) in enumerate(pairs):
        if walked is not None:
            got, why = walked[n], None
        else:
            two = type(inputs)(q=[inputs.q[a], inputs.q[b]],
                               mean=[inputs.mean[a], inputs.mean[b]], corr=inputs.corr[a][b],
                               law=inputs.law)
            got, why = coefficients(net, two, ctx, split)
        lost = _merged([lost, why])
        if out is None:
            out = {k: np.zeros(v.shape[:-2] + (B, B) if k in PAIRED else v.shape[:-1] + (B,))
                   for k, v in got.items()}
        for k in PAIRED:
            out[k][..., [a, b], [b, a]] = got[k][..., [0, 1], [1, 0]]
        for i, j in ((a, 0), (b, 1)):
            if i not in seen:
                seen.add(i)
                for k in got.keys() - PAIRED:
                    out[k][..., i] = got[k][..., j]
                for k in PAIRED:
                    out[k][..., i, i] = got[k][..., j, j]
    return out, lost


def check_width(width):
    """A ConfigError unless ``width`` is an integer N from 1 to ``schema.MAX_WIDTH``."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not \
            1 <= width <= schema.MAX_WIDTH:
        raise ConfigError("width", width, f"an integer from 1 to {schema.MAX_WIDTH:.3g} (the "
                          "stream width N)")


def check_feature_counts(net: Op, width: int):
    """A ConfigError unless every Dense has a whole number of features, n_out = ratio n_in a
    positive integer, on a stream of ``width`` features, at every value of a swept ratio (as
    :func:`sp.simulate <sigprop.engines.montecarlo.simulate>` requires: the corrections are a
    net's of that width)."""
    swept = {op.ratio.name for op in net.walk() if isinstance(op, Dense)
             and isinstance(op.ratio, Sweep)}
    for point in grid_points({k: s for k, s in sweeps_of(net).items() if k in swept}):
        try:
            at_point(net, point).mc_widths(width)
        except ConfigError as e:
            raise ConfigError(e.field, e.value, f"{e.allowed} at width {width}"
                              + (f", {_point_text(point)}" if point else "")) from None


@contextlib.contextmanager
def walks_shown(enabled: bool):
    """Within it, a progress bar counts the blocks the walks pass (``sp.theory(..., width=N,
    progress=True)``: the walks, not the infinite-width passes, are most of such a call; how
    many blocks they pass depends on where they stop and join, so the bar shows a count)."""
    if not enabled:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("finite-width walks: {task.completed} blocks"),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("finite-width walks", total=None)
        token = _TICK.set(lambda: bar.advance(task))
        try:
            yield
        finally:
            _TICK.reset(token)


def extend(ds: xr.Dataset, net: Op, inputs, width, backward: bool = True) -> xr.Dataset:
    """``ds`` (an infinite-width theory dataset) with the first-order finite-width variables at
    ``width`` (schema ``FINITE_WIDTH_VARIABLES``; without ``backward``, the forward ones), and
    the validity warnings."""
    check_width(width)
    check_feature_counts(net, width)
    coef, lost = coefficients(net, inputs)
    if lost:
        warn(lost if lost.partial else f"{lost}: finite-width corrections are NaN from there on"
             + (", and the gradient's at every layer below it" if backward else ""),
             FiniteWidthWarning)
    N = float(width)
    layers = ds["layer"].values
    corr_inf = ds["corr"].transpose("layer", ...).values
    coef, unresolved = _resolved(net, inputs, coef, corr_inf, layers)
    if unresolved:
        rows, bound, gap = unresolved
        warn(f"corr_correction is not resolved by the central differences at layers "
             f"{rows}: walked with steps {CHECK_STEP:.2g} times as large it moves by "
             f"more than {VALID_FRACTION:.0%} (their round-off, where a pair's Gram is "
             f"near singular: 1 - |corr| down to {gap:.2g}); NaN there, where E corr -"
             f" corr_inf is of order {bound / float(width):.1g} or less at width "
             f"{width}",
             FiniteWidthWarning)
    with np.errstate(divide="ignore", invalid="ignore"):
        computed = {
            "log_q_correction": coef["log_q"] / N,
            "q_rel_correction": coef["q"] / N,
            "corr_correction": coef["corr"] / N,
            "mean_correction": coef["mean"] / N,
            "var_rel_correction": coef["var"] / N,
            "log_branch_q_correction": coef["log_branch_q"] / N,
            "branch_q_rel_correction": coef["branch_q"] / N,
            "var_log_q": coef["var_log_q"] / N,
            "var_mean": coef["var_mean"] / N,
            "var_corr": coef["var_corr"] / N,
            "var_log_var": coef["var_log_var"] / N,
            "var_log_branch_q": coef["var_log_branch_q"] / N,
        }
    computed = {k: v[layers] for k, v in computed.items()}
    # corr's A against max(|corr_inf|, VALID_FRACTION): where corr crosses 0 no width makes its
    # correction small against it, yet the expansion holds (and at corr_inf = 0 by symmetry
    # both are round-off: their ratio was inf, or 1e5 for a correction that is 0)
    needs = {"q": np.abs(coef["q"][layers]),
             "corr": np.abs(coef["corr"][layers]) / np.maximum(np.abs(corr_inf), VALID_FRACTION),
             "var": np.abs(coef["var"][layers]), "branch_q": np.abs(coef["branch_q"][layers])}
    computed.update({f"valid_width_{k}": v / VALID_FRACTION for k, v in needs.items()})
    grid = sweeps_of(net)
    broken = _warn_invalid(needs, width, grid)
    lost_var = np.isnan(computed["var_rel_correction"]) & ~np.isnan(computed["q_rel_correction"])
    if lost_var.any():
        at = sorted(set(layers[np.nonzero(lost_var)[0]].tolist()))
        warn(f"var_rel_correction is NaN at {int(lost_var.sum())} points (layers "
             f"{at}): the stream's mean "
             f"carries all but < {VAR_RESOLVED:.0e} of its q there, so var = q - "
             "mean^2 leaves its first order to float64's round-off",
             FiniteWidthWarning)
    rows = range(len(coef["var_log_q"]))
    # (a branch's draw starts from its input stream's spread: _warn_spread's ``before``)
    held = {}  # per statistic: whether its spread is the first-order law's, from small draws
    for name, before in (("q", None), ("branch_q", coef["var_log_q"])):
        v = coef[f"var_log_{name}"]
        held[name] = not _warn_spread(v, rows, width, name, 0, grid, before) \
            and name not in broken
        if held[name]:
            _warn_rare_nets(v, rows, width, name, grid, coef[f"log_{name}"])
    if backward:
        computed.update(_gradient_corrections(ds, net, inputs, width, lost,
                                              computed["var_log_q"].shape,
                                              held["q"] and held["branch_q"]))
    out = ds.assign({k: (schema.FINITE_WIDTH_VARIABLES[k].dims_with(grid=tuple(grid)), v)
                     for k, v in computed.items()})
    out.attrs["width"] = int(width)
    return out


def _resolved(net: Op, inputs, coef: dict, corr_inf, layers):
    """(``coef``, unresolved): the forward coefficients of :func:`coefficients` with corr's
    NaN at the recorded ``layers`` where the central differences do not resolve it, and (those
    layers, the largest |corr correction| there by the two walks, per 1/N, and the smallest 1 -
    |corr_inf| there) or None. Checked where some pair's Gram is near singular at a recorded
    layer (1 - |corr_inf| < NEAR_SINGULAR; ``corr_inf`` (layer, *grid, B, B)): corr's
    coefficient walked again with CHECK_STEP times the step is not resolved where it moves by
    more than VALID_FRACTION of itself and UNRESOLVED_FLOOR of 1 - |corr_inf| (its scale: the
    coefficient falls with it), unless the Gram is singular to round-off (1 - |corr_inf| < SINGULAR: identical
    inputs, or corr converged to 1 to float64's precision; the coefficient is then round-off,
    ~1e-8 at layer 20 of a relu net, 3e-9 in a tanh net whose corr is 1 - 1e-15: its part of
    E corr is ~1e-10 at N = 100). The others, far from their kinks, are resolved to ~1e-7
    there (benchmarks/RESULTS.md: log q's coefficient 1.6e-7 at depth 1000, where corr's is 83 %
    off)."""
    off = ~np.eye(inputs.n, dtype=bool)
    gap = (1 - np.abs(corr_inf))[..., off]
    if not np.any(gap < NEAR_SINGULAR) or np.all(np.isnan(coef["corr"][..., off])):
        return coef, None
    token = _STEP_FACTOR.set(CHECK_STEP)
    try:
        again = coefficients(net, inputs)[0]["corr"][layers][..., off]
    finally:
        _STEP_FACTOR.reset(token)
    c = coef["corr"][layers]
    got = c[..., off]
    moved = np.abs(again - got)
    with np.errstate(invalid="ignore"):
        bad = (moved > VALID_FRACTION * np.maximum(np.abs(got), UNRESOLVED_FLOOR * gap)) & (
            gap >= SINGULAR)
    if not np.any(bad):
        return coef, None
    bound, least = float(np.max((np.abs(got) + moved)[bad])), float(np.min(gap[bad]))
    got[bad] = np.nan
    c[..., off] = got
    out = dict(coef, corr=coef["corr"].copy())
    out["corr"][layers] = c
    rows = [int(layers[i]) for i in np.flatnonzero(bad.reshape(len(layers), -1).any(-1))]
    return out, (rows, bound, least)


def _gradient_corrections(ds, net, inputs, width, lost, shape, forward_held=True) -> dict:
    """The gradient's finite-width variables of :func:`extend` (``shape``: theirs; ``lost``:
    where the forward walk stopped), and their warnings (``forward_held``: whether Var log q
    and Var log branch_q are the first-order law's own, from small draws: the weight gradient's
    spread holds theirs)."""
    N, layers, grid = float(width), ds["layer"].values, sweeps_of(net)

    def mean_mode(idx):  # A at the grid point of idx (a layer row first), or None
        at = dict(zip(grid, idx[1:]))
        one = at_point(net, {k: grid[k].values[i] for k, i in at.items()})
        if _mean_mode_blocks(one) is None:
            return None
        if ds.sizes["layer"] != len(layers_of(net)) + 1:
            from sigprop.engines.theory import theory

            return mean_mode_coefficient(one, theory(one, inputs))
        return mean_mode_coefficient(one, ds.isel(at))

    rows = sorted({0, *(int(l) for l in layers)})  # the input (its warning), every recorded one
    grads, weights = gradient_coefficient(net, inputs, layers=rows, weights=True)
    c, _, why, v = grads
    # (where the forward walk stops, this one does too: warned above, unless the two stop at
    # different grid points, or the forward's reason names statistics of its own)
    if why and (not lost or lost.partial or lost.points != why.points):
        nan = [l for l, row in zip(rows, c) if np.isnan(row).any()]
        warn(f"{why}: the gradient's correction is NaN at layers {nan}",
             FiniteWidthWarning)
    grad, valid, var = (np.full(shape, np.nan) for _ in range(3))
    at = [list(layers).index(l) for l in rows if l in layers]
    got = [rows.index(l) for l in rows if l in layers]
    grad[at], valid[at], var[at] = c[got] / N, np.abs(c[got]) / VALID_FRACTION, v[got] / N
    computed = {"valid_width_grad_q": valid, "var_log_grad_q": var}
    L = len(layers_of(net))
    every = rows == list(range(L + 1))  # (every draw checked only when every layer is recorded)
    broken = _warn_gradient(c, rows, width, mean_mode, grid)
    held = not _warn_spread(v[::-1], rows[::-1], width, "grad_q", L, grid) and not broken
    if held:
        _warn_rare_nets(v, rows, width, "grad_q", grid, checked=every)
    computed["grad_q_rel_correction"] = grad
    computed.update(_weight_gradient_correction(net, weights, rows, layers, N, shape, why))
    # (a broken gradient's warning covers the weights' too; their spread holds the gradient's
    # and the forward stream's, so it is the law's own prediction where both of those are)
    if not broken and not _warn_gradient(weights[0], rows, width, lambda idx: None, grid,
                                         "weight_grad_q") and held and forward_held:
        _warn_rare_nets(weights[3], rows, width, "weight_grad_q", grid, checked=every)
    typical = typical_log_grad_q(net, inputs, width)
    if typical is None and any(isinstance(op, BatchNorm) for op in net.walk()):
        warn(f"typical_log_grad_q is NaN: {COVERS}", FiniteWidthWarning)
    computed["typical_log_grad_q"] = (np.full(grad.shape, np.nan) if typical is None
                                      else typical[layers].reshape(grad.shape))
    return computed


def _weight_gradient_correction(net: Op, weights, rows, layers, N: float, shape, why) -> dict:
    """weight_grad_q_rel_correction, var_log_weight_grad_q and valid_width_weight_grad_q
    (``shape`` each) at the recorded ``layers``: c/N, v/N and |c| / 10 % of ``weights``, the
    weight rows of :func:`gradient_coefficient` (computed at ``rows``), warned where NaN for a
    reason other than the gradient's (``why``)."""
    c, _, lost, v = weights
    if lost and lost != why:
        blocks = layers_of(net)
        nan = [l for l, row in zip(rows, c)
               if l > 0 and _has_dense(blocks[l - 1]) and np.isnan(row).any()]
        warn(f"{lost}: the weight gradient's correction and spread are NaN at layers {nan}",
             FiniteWidthWarning)
    at = [list(layers).index(l) for l in rows if l in layers]
    got = [rows.index(l) for l in rows if l in layers]
    out = {name: np.full(shape, np.nan) for name in (
        "weight_grad_q_rel_correction", "var_log_weight_grad_q", "valid_width_weight_grad_q")}
    for x, value in zip(out.values(), (c / N, v / N, np.abs(c) / VALID_FRACTION)):
        x[at] = value[got]
    return out


def _at(grid, quoted, idx, first=1) -> str:
    """The text ' at a = 1, w = 0.5': the sweep values at the index ``idx`` of the arrays
    ``quoted`` (the values a message quotes, of one shape), whose grid axes start at
    ``first``; a sweep along which none of them changes there (to 1e-6: below what a message
    prints, above the central differences' round-off, ~1e-8) is not named; '' if none is."""
    quoted = [np.asarray(v) for v in quoted]
    if quoted[0].ndim < first + len(grid):  # (no grid axes: the same everywhere)
        return ""
    named = {}
    for k, (name, sweep) in enumerate(grid.items()):
        ax = first + k
        if any(not np.allclose(v[idx[:ax] + (slice(None),) + idx[ax + 1:]], v[idx], rtol=1e-6,
                               atol=0, equal_nan=True) for v in quoted):
            named[name] = sweep.values[idx[ax]]
    return f" at {_point_text(named)}" if named else ""


def _point_text(point: dict) -> str:
    """'a = 1, w = 0.5': a grid point (sweep name -> value) in messages."""
    return ", ".join(f"{k} = {v:.10g}" for k, v in point.items())


def _warn_gradient(c, rows, width, mean_mode, grid, name="grad_q"):
    """Warn when a gradient's first-order correction c/N (c: per layer of ``rows``, then the
    sweeps of ``grid``) is as large as its leading term; ``mean_mode(idx)``: the closed-form A
    of a mean-carrying stream's coupling at the grid point of the index idx of c, or None;
    ``name``: grad_q, or weight_grad_q (block l's weights). Whether it warned."""
    size = np.where(np.isnan(c), -np.inf, np.abs(c))
    if not size.size or size.max() < width:
        return False
    idx = np.unravel_index(np.argmax(size), size.shape)
    l, worst = rows[idx[0]], float(size[idx])
    A = mean_mode(idx)
    why = ("" if A is None else " The stream carries a mean that couples the backward through "
           f"the forward weights (that mode alone, in closed form: A = {float(np.max(A)):.4g}).")
    what = ("the input gradient grad_q_0" if (name, l) == ("grad_q", 0) else
            f"the gradient grad_q_{l} at layer {l}" if name == "grad_q" else
            f"the weight gradient weight_grad_q_{l} of block {l}")
    warn(
        f"width {width}{_at(grid, [size], idx)}: the first-order correction to "
        f"{what} reaches "
        f"{worst / width:.3g} x its infinite-width value (coefficient c = {worst:.4g}); the 1/N "
        f"expansion holds only for N >> c (10 % at N = {10 * worst:.4g}).{why} The "
        "infinite-width gradient is not what a net of this width does: run sp.simulate "
        "at this width instead.", FiniteWidthWarning)
    return True


def _warn_invalid(needs, width, grid):
    """Warn when a first-order correction is as large as the leading term: ``needs``, per
    statistic, the width A (correction = leading term at N = A) per layer, then the sweeps of
    ``grid``. The statistics it warned of."""
    warned = set()
    for stat, need in needs.items():
        if np.nanmax(need, initial=0.0) >= width:
            idx = np.unravel_index(np.nanargmax(need), need.shape)
            worst = float(need[idx])
            against = " (or 0.1 where |corr| is smaller)" if stat == "corr" else ""
            warn(
                f"width {width}{_at(grid, [need], idx)}: the first-order "
                f"correction to {stat} reaches "
                f"{worst / width:.3g} x its infinite-width value{against} (coefficient A = "
                f"{worst:.4g}); the 1/N expansion holds only for N >> A (10 % at N = "
                f"{10 * worst:.4g}). Run sp.simulate at this width instead.",
                FiniteWidthWarning)
            warned.add(stat)
    return warned


def _warn_spread(v, rows, width, name, first, grid, before=None):
    """Warn where one layer's draw adds 1 or more to Var log q = v / N (its increment of v >= N:
    a bottleneck of few features, or N ~ 1): each draw's expansion takes its fluctuation to be
    small. Not the total: a deep relu net's Var log q = 5 L / N grows past 1 from independent
    draws, each small, and the first-order law holds there (Hanin & Nica's log-normal; what it
    means for a mean over nets: :func:`_warn_rare_nets`). ``v``
    per layer of ``rows``, in the order the draws add to it (the gradient's from the top): the
    increments between adjacent layers, and at ``first`` (the input for q, the top for grad_q)
    its own draw; then the sweeps of ``grid``. ``before``: the spread each draw starts from,
    per row (default ``v``): a residual branch's v_l less its input stream's, Var log q_(l-1),
    all of which a scale-covariant branch carries (a norm leaves less: the increment is then a
    lower bound). Whether it warned."""
    rows = np.asarray(rows)
    before = v if before is None else before
    step = np.concatenate([v[:1] if rows[0] == first else np.nan * v[:1], v[1:] - before[:-1]])
    step[1:][np.abs(np.diff(rows)) != 1] = np.nan  # (several layers' draws: not one)
    worst = float(np.nanmax(step, initial=0.0))
    if worst >= width:
        idx = np.unravel_index(np.nanargmax(step), step.shape)
        layer, sd = int(rows[idx[0]]), math.sqrt(worst / width)
        warn(
            f"width {width}{_at(grid, [step], idx)}: one draw adds "
            f"{worst / width:.3g} to Var log {name} across nets (layer {layer}: v = "
            f"{worst:.4g}, Var = v / N), so {name} varies by a factor of about {_exp(sd)} from "
            "net to net there; the 1/N "
            "expansion of a draw takes its fluctuation to be small and holds only for N >> v (a "
            "bottleneck of few features, or N ~ 1). Run sp.simulate at this width instead.",
            FiniteWidthWarning)
    return worst >= width


def _warn_rare_nets(v, rows, width, name, grid, log_coef=None, checked=True):
    """Warn where Var log {name} = v / N across nets (v per layer of ``rows``, then the sweeps
    of ``grid``) passes ``SPREAD_MAX`` from draws each small (:func:`_warn_spread` otherwise)
    and the expansion holds (the callers skip a statistic whose correction broke it), so this
    spread is its prediction: {name} is then about
    log-normal across nets (Hanin & Nica), its mean over nets e^(Var/2) times its median and
    carried by rare nets (the mean of S nets is within 10 % for S ~ (e^Var - 1) / 0.1^2), so the
    infinite-width value, a mean, is not what a typical net does. ``log_coef``: the coefficient
    of E log {name}, to say where the typical net is; ``checked``: whether :func:`_warn_spread`
    saw every draw (not where layers went unrecorded)."""
    var = np.asarray(v, dtype=float) / width
    if not np.nanmax(var, initial=0.0) > SPREAD_MAX:
        return
    idx = np.unravel_index(np.nanargmax(var), var.shape)
    s2, layer = float(var[idx]), int(np.asarray(rows)[idx[0]])
    log_seeds = s2 + math.log(-math.expm1(-s2)) - 2 * math.log(VALID_FRACTION)  # log S
    typical = ("" if log_coef is None else f" The typical net's log {name} there is the "
               f"infinite-width log {name} plus log_{name}_correction = "
               f"{float(np.asarray(log_coef)[idx]) / width:.3g}.")
    where = _at(grid, [var] + ([] if log_coef is None else [log_coef]), idx)  # (both quoted)
    warn(
        f"width {width}{where}: Var log {name} across nets "
        f"reaches {s2:.3g} at layer {layer} (above {SPREAD_MAX:g}; the first-order law's own "
        "prediction, " + ("from many small draws" if checked else "if no one layer's draw adds "
                          "much, which the recorded layers do not show: record every layer to "
                          "check") + f"): {name} is about log-normal "
        f"across nets, its mean over nets {_exp(s2 / 2)} x its median and carried by rare "
        f"nets; the mean of S nets is within 10 % only for S ~ {_exp(log_seeds)}.{typical} "
        f"Compare medians or means of log {name} with Monte Carlo, not means.",
        FiniteWidthWarning)


def _exp(x) -> str:
    """e^x as text, written e^x past float64's range."""
    return f"e^{x:.4g}" if x >= 700 else f"{math.exp(x):.3g}"


# -- the backward mean mode of a mean-carrying stream ------------------------------------------
MEAN_MODE_MAX_DEPTH = 4096  # the model solves an L x L linear system


def _as_scale(op: Op) -> Op:
    """x -> beta x + 0 F(x) as the Scale(beta) it is (a branch it never adds); other ops as
    they are."""
    return Scale(op.beta) if isinstance(op, Residual) and is_zero(op.alpha) else op


def _mean_mode_blocks(net: Op):
    """(alpha, sigma_w, activation) per layer when every block is x + alpha phi(W x) with phi
    of degree 1 (the branch Serial(Dense, Act), no bias, beta = 1, numbers: a swept net is
    taken at one grid point, :func:`~sigprop.ops.at_point`); else None."""
    out = []
    for blk in layers_of(net):
        br = blk.branch if isinstance(blk, Residual) else None
        kids = br.layers if isinstance(br, Serial) else ()
        if not (len(kids) == 2 and isinstance(kids[0], Dense) and isinstance(kids[1], Act)
                and isinstance(blk.alpha, float) and blk.beta == 1.0
                and isinstance(kids[0].sigma_w, float) and kids[0].sigma_b == 0.0
                and kids[0].sigma_b_fan_in == 0.0
                and kids[0].ratio == 1.0 and get_activation(kids[1].name).degree == 1):
            return None
        out.append((blk.alpha, kids[0].sigma_w, get_activation(kids[1].name)))
    return out


def mean_mode_coefficient(net: Op, ds: xr.Dataset):
    """A per input (array (B,)), with E G_0 = G_0,inf (1 + A/N) at first order, for a stream
    x_{l+1} = x_l + alpha phi(W_l x_l) (phi of degree 1); None for other nets.

    Backward, delta_l = delta_{l+1} + alpha W_l^T (phi'(h_l) o delta_{l+1}), h_l = W_l x_l. Given
    the forward, W_l = h_l x_l^T / |x_l|^2 + W~_l P_perp with W~_l independent of everything
    (Gaussian conditioning), so W_l^T g = x_l s_l / q_l + P_perp W~_l^T g with s_l = <h_l, g> =
    <f_l, delta_{l+1}> (h phi'(h) = phi(h) = f); gradient independence keeps only the W~ part.
    Write delta_l = rho_l + sum_{k >= l} c_k x_k, c_k = alpha s_k / q_k, rho the gradient-
    independent part (Gram G). Then s_l = xi_l + sum_{k > l} c_k <f_l, x_k>, xi_l = <f_l,
    rho_{l+1}>, with the infinite-width overlaps <f_l, x_k> = mu_l m_k + alpha Var phi_l (k > l),
    <x_k, x_k'> = q_k + alpha m_k sum_{k <= j < k'} mu_j, and xi Gaussian. rho_{l+1} is delta_L
    plus the noise of layers j > l, of covariance (G_j - G_{j+1}) P_perp(x_j): white but for the
    x_j direction, which the conditioning moved into c_j x_j. So N Cov(xi_l, xi_l') =
    <f_l, f_l'> G_{m+1} - sum_{j > m} (G_j - G_{j+1}) <f_l, x_j> <f_l', x_j> / q_j (m = max(l,
    l')). Then N (E G_0 - G_0) = N E<D, D> + 2 N sum_k E[c_k <rho_{k+1}, x_k>] + (D's noise through
    the lower layers: sum_j (G_j / G_{j+1} - 1) (G_0 / G_j) N E<D_{>j}, D_{>j}>), D = sum_k c_k
    x_k, with N Cov(xi_l, <rho_{k+1}, x_k>) from the same sum, x_k in place of f_l'. When the
    stream carries a mean, mu_l m_k / q_k couples the layers coherently and A grows geometrically
    with depth; and rho's noise loses its x_j component, N (G_j - G_{j+1}) / N, carried to
    layer 0 with gain G_0 / G_j. For L = 1 this is exact (Stein's lemma on E[W_ii phi'(h_i)]);
    left out beyond it: fluctuations of the realised forward overlaps (second order in A/N
    where they meet c, unamplified elsewhere).
    """
    blocks = _mean_mode_blocks(net)
    L = len(blocks or ())
    if (not blocks or L > MEAN_MODE_MAX_DEPTH or ds.sizes["layer"] != L + 1
            or len(ds["log_q"].dims) != 2):
        return None
    alpha = np.array([b[0] for b in blocks])
    out = []
    for a in range(ds.sizes["input"]):
        q = np.exp(ds["log_q"].values[:, a])
        m = ds["mean"].values[:, a]
        G = np.exp(ds["log_grad_q"].values[:, a] - ds["log_grad_q"].values[-1, a])
        qh = np.array([b[1] ** 2 for b in blocks]) * q[:L]
        mu = np.array([b[2].mean(np.asarray(v), NUMERIC) for b, v in zip(blocks, qh)])
        f2 = np.exp(ds["log_branch_q"].values[1:, a])  # E phi(h_l)^2: block l + 1's branch output
        k = np.arange(L)
        later = k[None, :] > k[:, None]
        FX = mu[:, None] * m[None, :L] + np.where(later, (alpha * (f2 - mu**2))[:, None], 0.0)
        FF = np.outer(mu, mu)
        FF[k, k] = f2
        gain = G[np.maximum.outer(k, k) + 1]
        cum = np.concatenate([[0.0], np.cumsum(alpha * mu)])  # alpha sum_{j < k} mu_j
        lo, hi = np.minimum.outer(k, k), np.maximum.outer(k, k)
        XX = q[lo] + m[lo] * (cum[hi] - cum[lo])
        T = np.linalg.inv(np.eye(L) - np.where(later, FX * (alpha / q[:L])[None, :], 0.0))
        c = (alpha / q[:L])[:, None] * T  # c = c-matrix xi: c_k = sum_l (alpha/q_k) T_kl xi_l
        # the noise of layer j is P_perp(x_j)-projected: its x_j component is not in rho
        Y = np.where(later, FX, 0.0) * ((G[:L] - G[1:]) / q[:L])[None, :]
        Z = np.where(later, XX, 0.0)
        xi = FF * gain - Y @ np.where(later, FX, 0.0).T
        DD = np.einsum("kl,lm,jm,kj->kj", c, xi, c, XX)  # E<c_k x_k, c_j x_j> (x N)
        cross = np.einsum("kl,lk->", c, FX * gain - Y @ Z.T)
        tail = np.cumsum(np.cumsum(DD[::-1, ::-1], 0), 1)[::-1, ::-1]  # E<D_{>=j}, D_{>=j}>
        through = np.sum((G[:L] / G[1:] - 1) * G[0] / G[:L] * np.append(tail.diagonal()[1:], 0))
        lost = np.sum((G[:L] - G[1:]) * G[0] / G[:L])  # rho's noise loses its x_j component
        out.append((DD.sum() + 2 * cross + through - lost) / G[0])
    return np.array(out)


# -- the typical backward gain of BatchNorm blocks ----------------------------------------------
def _block_gain(blk: Op, s: Moments, g, ctx: Context, width):
    """E log grad_q_in - E log grad_q_out (B,) through one block at width N, or None when the
    block is none of x -> beta x + alpha F(BN x) with F starting with a Dense (Pre-BN),
    Serial(Dense, BatchNorm, Act) with a degree-1 activation (the pre-activation BatchNorm
    block), and the exact scales Scale(c) (log c^2) and x -> beta x + 0 F(x) (log beta^2);
    numbers only (:func:`typical_log_grad_q` takes a sweep point by point)."""
    from sigprop.kernels.batchnorm import bn_typical_log_gain
    from sigprop.state.moments import true_moments

    def gram(x):
        return true_moments(x, "typical", NUMERIC)[0]

    def spread(S):  # the BatchNorm's input Gram, once it has one to take
        lam = _batch_variance(S)
        if not (lam > 0 and np.isfinite(S).all()):
            raise _Unresolved(f"a BatchNorm meets a batch with no spread over its inputs (batch "
                              f"variance {lam:.3g}: identical inputs, or a scale outside "
                              "float64's range)")
        return S

    def finite(gain):
        if not np.isfinite(gain).all():
            raise _Unresolved("a BatchNorm's typical gain is beyond float64 here")
        return gain

    def number(*vs):
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs)

    B = g.K.shape[-1]
    scale = _as_scale(blk)
    if isinstance(scale, Scale):  # delta_in = c delta_out exactly (c^2 underflows at |c| =
        with np.errstate(divide="ignore"):  # 1e-200)
            return np.full(B, 2 * np.log(abs(float(scale.c))))
    if isinstance(blk, Residual) and isinstance(blk.branch, Serial) and blk.branch.layers:
        bn, rest = blk.branch.layers[0], Serial(blk.branch.layers[1:])
        first = rest
        while isinstance(first, Serial) and first.layers:
            first = first.layers[0]
        if not (isinstance(bn, BatchNorm) and isinstance(first, Dense)
                and number(blk.alpha, blk.beta, bn.eps)):
            return None
        S = spread(gram(s))
        y = bn.theory_forward(s.push_ref(), ctx)
        Gam = gram(rest.theory_backward(y, g.push_ref(), ctx))
        G = gram(g)  # the gain is relative to grad_q_out, the mean square of g ~ N(0, G)
        with np.errstate(over="ignore", invalid="ignore"):  # (beyond float64: NaN, said)
            return finite(bn_typical_log_gain(S, blk.beta**2 * G, blk.alpha**2 * Gam, bn.eps,
                                              width, ref=G))
    kids = blk.layers if isinstance(blk, Serial) else ()
    if not (len(kids) == 3 and isinstance(kids[0], Dense) and isinstance(kids[1], BatchNorm)
            and isinstance(kids[2], Act) and number(kids[0].sigma_w, kids[0].ratio, kids[1].eps)
            and kids[0].ratio == 1 and kids[0].init == "normal"):
        return None
    act = get_activation(kids[2].name)
    if act.degree != 1 or B == 4 and act.name != "linear":
        return None
    if kids[0].sigma_w == 0:  # W = 0: the gradient below is exactly 0 (and the stream too)
        return np.full(B, -np.inf)
    # delta_in = W^T J^T (phi'(y) o delta_out): the BatchNorm's gain on the mean square, then
    # W^T (n x n) multiplies it by sigma_w^2 chi^2_N / N given it
    G = gram(g)
    gain = finite(bn_typical_log_gain(spread(gram(kids[0].theory_forward(s, ctx))), 0 * G, G,
                                      kids[1].eps, width, ref=G, act=act))
    return gain + math.log(kids[0].sigma_w**2) + digamma(width / 2) - math.log(width / 2)


COVERS = ("it covers nets made (through any Serial and Repeat) of Pre-BN blocks x -> beta x + "
          "alpha F(BN x), F starting with a Dense, Dense -> BatchNorm -> Act runs (the Dense of "
          "Gaussian weights and ratio 1) of a degree-1 activation (linear only at B = 4), "
          "Scales, and x -> beta x + 0 F(x); B = 2 to 4 inputs")


class _Unresolved(Exception):
    """Why a model that covers a net gives no value: a supported stack's typical gradient at a
    grid point; the stream-row model past its range or budget, or at a point it does not cover."""


def typical_log_grad_q(net: Op, inputs, width, where="") -> np.ndarray | None:
    """E log grad_q_l (l = 0..L, per input; (L+1, B)) at width N for a net of Pre-BN blocks
    x -> beta x + alpha F(BN x), pre-activation blocks Dense -> BN -> Act and exact scales
    (:func:`_units`, :func:`_block_gain`; (L+1, *grid, B) with sweeps, each grid point on its
    own); None for other nets, or batches B outside 2..4.

    Per feature i of a BatchNorm, J_i is its Jacobian at the feature's batch vector u_i ~ N(0,
    S_l) and g_i ~ N(0, Gamma_l) the cotangent the ops after it bring back, independent of u_i
    (a Dense follows; or a relu gate phi'(y_i), a function of u_i), delta_{l+1} ~ N(0, G_{l+1}):
    the infinite-width laws. Pre-BN: delta_l = beta delta_{l+1} + alpha J_i^T g_i;
    pre-activation: delta_l = W^T J^T (phi'(y) o delta_{l+1}). grad_q_l / grad_q_{l+1} is then
    a ratio of means of N i.i.d. terms, and by linearity E log grad_q_l = E log grad_q_{l+1} +
    :func:`~sigprop.kernels.batchnorm.bn_typical_log_gain` (+ the Dense's E log sigma_w^2
    chi^2_N / N). The sum over blocks treats a block's features as independent of the cotangent
    of the blocks above (in a residual stream a feature of small batch variance persists over
    blocks; tested against Monte Carlo). ``where``: the grid point, for the warnings."""
    from sigprop.state.moments import Cotangent

    B = inputs.n
    if not 2 <= B <= 4 or not any(isinstance(op, BatchNorm) for op in net.walk()):
        return None
    grid = sweeps_of(net)
    if grid:
        got, outside = [], []
        for point in grid_points(grid):
            at = _point_text(point)
            got.append(typical_log_grad_q(at_point(net, point), inputs, width, " at " + at))
            if got[-1] is None:
                outside.append(at)
        if len(outside) == len(got):
            return None
        if outside:
            warn(f"typical_log_grad_q is NaN at {'; '.join(outside)}: {COVERS}",
                 FiniteWidthWarning)
        shape = next(g for g in got if g is not None).shape
        return _over_grid([np.full(shape, np.nan) if g is None else g for g in got], grid)
    ctx = Context(NUMERIC, ())
    blocks = layers_of(net)
    units = _units([(l, op) for l, blk in enumerate(blocks, start=1) for op in _leaves(blk)])
    if units is None:
        return None
    states = [inputs.moments()]
    for _, _, u in units:
        states.append(to_unit_diagonal(u.theory_forward(states[-1], ctx)))
    g = Cotangent(K=np.eye(B), m=np.zeros(B), ls=np.zeros(B))
    out = np.zeros((len(blocks) + 1, B))
    out[-1] = digamma(width / 2) - math.log(width / 2)  # grad_q_L = |delta_L|^2/N, N(0, I)
    below = out[-1]  # E log grad_q below the units walked so far
    for i in range(len(units) - 1, -1, -1):
        l, last, u = units[i]
        try:
            gain = _block_gain(u, states[i], g, ctx, width)
        except _Unresolved as why:
            warn(f"typical_log_grad_q is NaN at {_layers(0, last - 1)}{where}: layer "
                 f"{l}: {why}", FiniteWidthWarning)
            out[:last] = np.nan  # (a run over layers l..last: the rows inside it too)
            return out
        if gain is None:
            return None
        below = out[l - 1] = below + gain  # (a layer's first unit writes its row last)
        if last > l:
            warn(f"typical_log_grad_q is NaN at {_layers(l, last - 1)}{where}: inside "
                 f"a Dense -> BatchNorm -> Act run split over layers {l}..{last} (its "
                 "typical gain is the run's as a whole)", FiniteWidthWarning)
            out[l:last] = np.nan
        if np.all(below == -np.inf):  # a zero scale or zero weights: the gradient below is 0
            out[:l] = -np.inf
            return out
        g = to_unit_diagonal(u.theory_backward(states[i], g, ctx))
    return out


def _layers(first, last) -> str:
    """'layer 3' or 'layers 0..3'."""
    return f"layer {first}" if first == last else f"layers {first}..{last}"


def _units(ops) -> list | None:
    """The ops ((layer, op) pairs, in order) as the blocks :func:`_block_gain` takes, each as
    (its first layer, its last, block): a Dense -> BatchNorm -> Act run kept as one (its ops
    may come from several top-level layers); None where another op stands outside a
    Residual."""
    out = []
    while ops:
        if len(ops) >= 3 and [type(o) for _, o in ops[:3]] == [Dense, BatchNorm, Act]:
            out.append((ops[0][0], ops[2][0], Serial(*(o for _, o in ops[:3]))))
            ops = ops[3:]
        elif isinstance(ops[0][1], (Residual, Scale)):
            out.append((ops[0][0], ops[0][0], ops[0][1]))
            ops = ops[1:]
        else:
            return None
    return out


def _leaves(op: Op) -> list[Op]:
    """The ops of ``op`` in order, its :meth:`~sigprop.ops.Op.blocks` opened down to ops that
    are their own (Serials and Repeats opened, however nested; a Residual kept whole)."""
    parts = op.blocks()
    return [op] if parts[0] is op else [leaf for part in parts for leaf in _leaves(part)]


# -- an activation on the residual stream: each feature's row a Gaussian trajectory -------------
STREAM_MAX_NODES = 5e7  # the model's 2-D rules over every pair of layers, (L + 1)(L + 2) / 2
# of them, at most this many nodes in all (~0.4 us each: ~20 s; 192 nodes a pair for relu, depth
# ~720; 15000 or more for a smooth activation, graded as q grows past its bend: tanh and erf at
# alpha = 1 to depth ~50, gelu ~30)
STREAM_MAX_Q = 1e300  # its nodes' phi(u)^2 and u^2 reach ~81 q (radius 9 sd) in float64, and
# down to 1e-300 they are normal numbers
STREAM_BATCH_NODES = 1e6  # nodes per batch of 2-D rules (memory: ~20 floats a node, 160 MB)
STREAM_LOST = ("corr_correction and var_corr are NaN: on a stream beta x + alpha (W phi(x) + b), "
               "each input's statistics follow its features' rows (the stream-row model), but a "
               "pair's rows need 4-D integrals, which this engine does not take")


def _stream_blocks(net: Op):
    """(activation, [(alpha^2, sigma_w^2, sigma_b^2, beta)] per block) when every block is beta
    x + alpha (W phi(x) + b), the branch Serial(Act, Dense) of one phi, Gaussian weights, ratio
    1, no fan-in bias (``sigma_b_fan_in`` 0), and a branch that is not zero (sigma_w or sigma_b
    not 0) (numbers: a swept net is taken at one grid point): given the past, the branch's rows
    are i.i.d. N(0, sigma_w^2 Phi + sigma_b^2), Phi the realised mean of phi(x)^2 over the
    features; else None."""
    out, acts = [], set()
    for blk in layers_of(net):
        br = blk.branch if isinstance(blk, Residual) else None
        kids = br.layers if isinstance(br, Serial) else ()
        if not (len(kids) == 2 and isinstance(kids[0], Act) and isinstance(kids[1], Dense)
                and kids[1].init == "normal" and kids[1].ratio == 1.0
                and kids[1].sigma_b_fan_in == 0.0
                and not (is_zero(kids[1].sigma_w) and is_zero(kids[1].sigma_b))):
            return None
        acts.add(kids[0].name)
        out.append((blk.alpha**2, kids[1].sigma_w**2, kids[1].sigma_b**2, blk.beta))
    return (get_activation(acts.pop()), out) if len(acts) == 1 else None


def stream_rows(act, q0: float, blocks, drop: str | None = None) -> dict:
    """The first-order moments of x_l = beta x_{l-1} + alpha (W_l phi(x_{l-1}) + b_l), l =
    1..L, from Gaussian input features N(0, q0) (``blocks``: those of :func:`_stream_blocks`; g
    = alpha^2 sigma_w^2, c = alpha^2 sigma_b^2), relative to their infinite-width values; arrays
    over l = 0..L: "q", "Phi" (E phi^2 at q), "q_bias" = N E delta q / q, "q_var" = N Var delta q
    / q^2, "Phi_bias", "Phi_var" (the same of Phi, the realised mean of phi^2).

    Given the past, each feature's row is a Gaussian trajectory x_{l,i} = beta^l x_{0,i} +
    sum_{k<=l} beta^(l-k) s_k z_{k,i} (one beta shown), so to first order each realised average
    is (a) nu_l(f) = mean_i f(xbar_{l,i}) - E f, the trajectories' noise at the infinite-width
    s_k, jointly Gaussian across layers with N Cov(nu_a(f), nu_b(h)) = Cov(f(u_a), h(u_b)),
    (u_a, u_b) ~ N(0, [[q_a, r q_a], [r q_a, q_b]]), r = beta_{a+1} ... beta_b (a <= b), plus (b)
    the feedback of the realised s_k^2 (Stein: d E f(x_l) / d s_k^2 = beta^(2(l-k)) d E f / d
    q): delta Phi_l = nu_l(phi^2) + D_l S_l, delta q_l = nu_l(x^2) + S_l, S_l = beta_l^2
    S_{l-1} + g_l delta Phi_{l-1}, D = d E phi^2 / d q. E delta Phi_l to second order: D_l E S_l
    + Cov(S_l, nu_l(h)) + D2_l Var(S_l) / 2, h = (phi^2)'' / 2, D2 = d^2 E phi^2 / d q^2; E
    delta q_l = E S_l. Carried in relative units (each nu over its mean, S_l over q_l; D and D2
    as the log-derivatives D q / Phi and D2 q^2 / Phi), so that a stream whose q grows to 1e300
    stays in float64's range. Checked against Monte Carlo in benchmarks/stream_row_law.py
    (``drop``: one part left out, to show what that comparison rejects: "layers", the noise
    taken as independent across layers; "D", the feedback on Phi; "mean", E delta q)."""
    a2, w2, b2, beta = (np.array([0.0, *x]) for x in zip(*blocks))  # (index l: block l)
    g, c, skip = a2 * w2, a2 * b2, beta**2
    n, h = len(g), 1e-4
    reach = np.ones((n, n))  # reach[a, b] = beta_{a+1} ... beta_b, a < b
    for l in range(1, n):
        reach[:l, l] = reach[:l, l - 1] * beta[l]

    def e2(q):  # E phi(u)^2, u ~ N(0, q)
        q = np.asarray(q, dtype=float)
        return act.kernel(q, q, np.ones_like(q))

    q = np.empty(n)
    q[0] = q0
    for l in range(n):
        if l:
            q[l] = skip[l] * q[l - 1] + g[l] * e2(q[l - 1]) + c[l]
        if not 1 / STREAM_MAX_Q <= q[l] * (1 + h) <= STREAM_MAX_Q:
            raise _Unresolved(f"the stream-row model that covers this net takes q from "
                              f"{1 / STREAM_MAX_Q:.0e} to {STREAM_MAX_Q:.0e} (float64's range), "
                              f"which layer {l}'s leaves")
    bend, degree = _bend([Act(act.name)], None), _degree([Act(act.name)], None)
    pairs = n * (n + 1) // 2 if drop != "layers" else n
    widest = gaussian_rule(np.array([[q[0], q[0]], [q[0], q.max()]]), bend, degree)[1].size
    if pairs * widest > STREAM_MAX_NODES:
        raise _Unresolved(f"the stream-row model that covers this net takes its {pairs} pairs "
                          f"of layers' 2-D rules of {widest} nodes up to "
                          f"{STREAM_MAX_NODES:.0e} nodes in all")
    a, b = np.triu_indices(n) if drop != "layers" else (np.arange(n),) * 2
    batch = max(1, int(STREAM_BATCH_NODES // widest))
    Phi = e2(q)
    up, down = e2(q * (1 + h)), e2(q * (1 - h))
    D = (up - down) / (2 * h * q)
    slope, curve = D * q / Phi, (up - 2 * Phi + down) / (h * h * Phi)  # (log-derivatives)
    unit = np.where(D != 0, D, 1.0)  # (of h's noise: E h = D)
    C = np.zeros((2 * n, 2 * n))  # N Cov of (nu_l(phi^2) / Phi_l, nu_l(x^2) / q_l) over layers l
    G = np.zeros((n, n))  # G[a, b] = N Cov(nu_a(phi^2) / Phi_a, nu_b(h) / unit_b), a <= b
    for lo in range(0, len(a), batch):
        i, j = a[lo:lo + batch], b[lo:lo + batch]
        r = reach[i, j]
        K = np.stack([np.stack([q[i], r * q[i]], -1), np.stack([r * q[i], q[j]], -1)], -2)
        u, w = gaussian_rule(K, bend, degree)  # (P, nodes, 2), (P, nodes)
        du = 1e-5 * np.maximum(1.0, np.abs(u[..., 1]))
        second = act.grad(u[..., 1]) ** 2 + act.fn(u[..., 1]) * (
            act.grad(u[..., 1] + du) - act.grad(u[..., 1] - du)) / (2 * du)
        y = np.stack([act.fn(u[..., 0]) ** 2 / Phi[i, None], act.fn(u[..., 1]) ** 2 / Phi[j, None],
                      u[..., 0] ** 2 / q[i, None], u[..., 1] ** 2 / q[j, None],
                      second / unit[j, None]], -1)
        d = y - np.einsum("pn,pnk->pk", w, y)[:, None]
        cov = np.einsum("pn,pnk,pnm->pkm", w, d, d)
        for (r, s), (x, z) in (((0, 1), (i, j)), ((2, 3), (n + i, n + j)),
                               ((0, 3), (i, n + j))):  # (x^2 never meets a later phi^2)
            C[x, z] = C[z, x] = cov[:, r, s]
        G[i, j] = cov[:, 0, 4]
    dPhi = np.zeros((n, 2 * n))  # rows: each delta Phi_l / Phi_l as a combination of the nu's
    S = np.zeros((n, 2 * n))  # S_l / q_l
    for l in range(n):
        if l:
            S[l] = (skip[l] * q[l - 1] * S[l - 1] + g[l] * Phi[l - 1] * dPhi[l - 1]) / q[l]
        dPhi[l, l] = 1.0
        dPhi[l] += (drop != "D") * slope[l] * S[l]
    dq = S + np.eye(n, 2 * n, k=n)
    var_Phi = np.einsum("li,ij,lj->l", dPhi, C, dPhi)
    if drop != "D":
        var_S = np.einsum("li,ij,lj->l", S, C, S)
    else:  # without the feedback: only its terms' own variances (their cross terms are it)
        var_S = np.zeros(n)
        for l in range(1, n):
            var_S[l] = ((skip[l] * q[l - 1]) ** 2 * var_S[l - 1] + (g[l] * Phi[l - 1]) ** 2
                        * var_Phi[l - 1]) / q[l] ** 2
    bias_Phi, mean_S = np.zeros(n), np.zeros(n)  # N E delta Phi / Phi, N E S / q
    for l in range(1, n):
        mean_S[l] = (skip[l] * q[l - 1] * mean_S[l - 1] + g[l] * Phi[l - 1]
                     * bias_Phi[l - 1]) / q[l]
        bias_Phi[l] = slope[l] * (mean_S[l] + S[l, :n] @ G[:, l]) + curve[l] * var_S[l] / 2
    return {"q": q, "Phi": Phi, "q_bias": (drop != "mean") * mean_S,
            "q_var": np.einsum("li,ij,lj->l", dq, C, dq), "Phi_bias": bias_Phi,
            "Phi_var": var_Phi}


def _stream_coefficients(net: Op, inputs) -> dict:
    """:func:`coefficients` of a net of :func:`_stream_blocks` on Gaussian inputs, per input
    and grid point by :func:`stream_rows`: E and Var of log q and q; mean: E 0, N Var = q_l (the
    rows' mean); var = q - mean^2: E var / var_inf - 1 = (a_q - 1) / N, N Var log var = N Var
    log q; the branch W phi(x) + b (its rows given the past: s^2 chi^2_N / N, s^2 = sigma_w^2
    Phi + sigma_b^2): a of branch_q / branch_q_inf = r E delta Phi / Phi, v of its log = r^2 Var
    delta Phi / Phi^2 + 2, r = sigma_w^2 Phi / s^2 (NaN at layer 0); corr's off-diagonal NaN
    (:data:`STREAM_LOST`)."""
    grid = sweeps_of(net)
    parts = []
    for point in grid_points(grid):
        covered = _stream_blocks(at_point(net, point))
        if covered is None:
            raise _Unresolved(f"the stream-row model does not cover the net at "
                              f"{_point_text(point)} (its branch is zero there: sigma_w = sigma_b "
                              "= 0)")
        act, blocks = covered
        w2, b2 = (np.array(x) for x in list(zip(*blocks))[1:3])
        rows = {q0: stream_rows(act, q0, blocks) for q0 in set(inputs.q)}
        by_input = []
        for q0 in inputs.q:
            r = rows[q0]
            q, a_q, v_q = r["q"], r["q_bias"], r["q_var"]
            share = w2 * r["Phi"][:-1] / (w2 * r["Phi"][:-1] + b2)
            a_b = np.concatenate([[np.nan], share * r["Phi_bias"][:-1]])
            v_b = np.concatenate([[np.nan], share**2 * r["Phi_var"][:-1] + 2])
            by_input.append({"log_q": a_q - v_q / 2, "q": a_q, "mean": 0 * q, "var": a_q - 1,
                             "var_log_q": v_q, "var_mean": q, "var_log_var": v_q,
                             "log_branch_q": a_b - v_b / 2, "branch_q": a_b,
                             "var_log_branch_q": v_b})
        point_rows = {k: np.stack([x[k] for x in by_input], -1) for k in by_input[0]}
        off = np.where(np.eye(inputs.n, dtype=bool), 0.0, np.nan)
        point_rows["corr"] = point_rows["var_corr"] = np.broadcast_to(
            off, (len(point_rows["q"]),) + off.shape)
        parts.append(point_rows)
    return {k: _over_grid([p[k] for p in parts], grid) for k in parts[0]}


# -- expectations carried by rare events -----------------------------------------------------
def _batch_variance(S):
    """lam = tr(P S P) / (B - 1), P = I - 11^T / B: the mean non-zero eigenvalue of the batch-
    centred Gram S (..., B, B), a feature's mean batch variance times B / (B - 1)."""
    B = S.shape[-1]
    P = np.eye(B) - 1.0 / B
    return np.trace(P @ S @ P, axis1=-2, axis2=-1) / (B - 1)


def batchnorm_reach(S, eps, B, layers, N=PRACTICAL_WIDTH):
    """(width, deficit): for E[1/s^2], s^2 = |P u|^2 / B + eps (u ~ N(0, S), the BatchNorm
    backward's factor), the width at which the mean of N features misses less than 10 % / layers
    of it (``layers``: the BatchNorms that compound it, each counted by its share of the
    gradient: a sum below 1 lets each miss more; the features below the 1/N quantile of
    the batch variance are the part a width-N net does not sample), and the fraction it misses
    at width ``N``. Batch variance v = lam chi^2_k / B
    with k = B - 1 and lam the mean non-zero eigenvalue of P S P (equal eigenvalues assumed)."""
    from scipy import integrate, optimize, stats

    k = B - 1
    lam = _batch_variance(S)
    if not lam > 0:  # identical inputs (or a spread below the float range): s^2 = eps throughout
        return 1.0, 0.0
    with np.errstate(over="ignore"):
        eps = eps / lam  # the answer depends on eps / lam only: in units of lam (any scale)
    if not eps < 1e100:  # s^2 = eps to 1e-100 at every feature: no rare event carries E[1/s^2]
        return 1.0, 0.0
    law = stats.chi2(k, scale=1.0 / B)

    # the integrand in z = log v is ~ e^(z k / 2) / max(v, eps) below v's scale (1 / B): from 80
    # e-folds below the smaller of that scale and eps, what is left out is e^(-40 k) of it (from
    # below 1 / B alone it missed the part near eps where eps is far smaller: the reach 1 % low
    # at eps = 1e-30, and 2.7e17 at any eps below ~1e-40); taken in logs, as v = e^z underflows
    log_eps = math.log(eps) if eps > 0 else -math.inf
    lo = min(math.log(1.0 / B), log_eps if eps > 0 else math.inf) - 80.0  # (eps = 0: as eps
    # -> 0, E[1/v] is infinite at B <= 3; the integral from there is what it was)
    # log of v's density (chi^2_k / B) times v, the Jacobian of z
    const = math.log(B) + (k / 2 - 1) * math.log(B) - (k / 2) * math.log(2) - math.lgamma(k / 2)

    def integrand(z):  # (log(v + eps) as max + log1p(e^-|gap|): math, not numpy, per node)
        top = max(z, log_eps)
        log_s = top + math.log1p(math.exp(min(z, log_eps) - top))
        return math.exp(const + (k / 2) * z - math.exp(z) * B / 2 - log_s)

    def part(p):  # E[1/(v + eps); v below its p-quantile], over z = log v (density ~ v^(k/2-1))
        hi = math.log(law.ppf(min(p, 1 - 1e-15)))
        cut = [log_eps] if lo < log_eps < hi else None
        return integrate.quad(integrand, lo, hi, limit=400, points=cut)[0]

    total = part(1.0)
    target = VALID_FRACTION / layers if layers > 0 else math.inf

    def missing(logn):
        return part(math.exp(-logn)) / total - target

    deficit = part(1 / N) / total
    if target >= 1:  # (all of it missed is within the share's 10 %)
        return 1.0, deficit
    hi = 200.0  # widths up to e^200
    if missing(hi) > 0:
        return math.inf, deficit
    return math.exp(optimize.brentq(missing, 0.0, hi)), deficit


def warn_batchnorm(net: Op, inputs, ds: xr.Dataset, width=None):
    """:func:`warn_unreachable` for the BatchNorms of ``net`` at ``width`` (a walk of the
    infinite-width laws only, run when some BatchNorm meets a batch of B <= 3), each weighed by
    its share of the gradient (:func:`_gradient_share`), asked for only when the warning
    counting each whole would be given. The walk is over the net's ops with its Serials and
    Repeats opened (:func:`_leaves`, the same law), so that a residual inside a layer's block
    is a layer of its own. The shares are read from ``ds`` (the net's theory) where it holds
    the layers they need; else the theory runs again, recording those layers, with its warnings
    off: on the same engine, or (the opened net, when its layers are not the net's: a BatchNorm
    may stand alone in a layer, which the compiled engine refuses) the numpy engine. A rerun
    the memory check refuses leaves each BatchNorm counted whole."""
    if _RERUN.get() or inputs.n > 3 or not any(isinstance(op, BatchNorm) for op in net.walk()):
        return
    walk = _Walk(inputs.moments(), Context(NUMERIC, tuple(sweeps_of(net))), fresh=False)
    walk.lose("laws only")
    flat = _leaves(net)
    for l, block in enumerate(flat, start=1):
        walk.layer(l, block)
    same = len(flat) == net.n_blocks()  # (one op per layer: the same layers)

    def shares():
        have = set(ds["layer"].values.tolist())
        lg0 = ds["log_grad_q"].sel(layer=0).values if 0 in have else None  # (any net's layer 0)
        needed = set()
        for *_, (l, beta2) in walk.batchnorms:
            if beta2 is not None:
                needed |= {l - 1, l}
            elif lg0 is None or not np.isfinite(lg0).all():  # (grad_q_0 > 0: every one > 0)
                needed.add(l - 1)
        if not needed:  # (on the stream's path alone, a gradient > 0 throughout: 1 each)
            return [1.0] * len(walk.batchnorms)
        got = ds
        if not (same and needed <= have):
            from sigprop.engines.theory import theory

            token = _RERUN.set(True)
            try:
                got = theory(net if same else Serial(*flat), inputs, layers=sorted(needed),
                             engine=ds.attrs["backend"] if same else "numpy")
            except ConfigError:  # (the memory check: each counted whole)
                got = None
            finally:
                _RERUN.reset(token)
        return [_gradient_share(branch, got) for *_, branch in walk.batchnorms]

    def typical():  # whether typical_log_grad_q covers the net (asked only when it warns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FiniteWidthWarning)
            got = typical_log_grad_q(net, inputs, width or PRACTICAL_WIDTH)
        return got is not None and bool(np.isfinite(got[0]).all())  # (at the input, at every
        # grid point; the rows inside a Dense -> BN -> Act run split over layers are NaN anyway)

    warn_unreachable([(eps, s) for eps, s, _ in walk.batchnorms], inputs.n, width,
                     sweeps_of(net), typical, shares)


_RERUN = contextvars.ContextVar("batchnorm_share_rerun", default=False)  # no warning inside it


def _gradient_share(branch, ds: xr.Dataset | None):
    """The share of grad_q_{l-1} a BatchNorm's backward carries (per grid point, the largest
    over the inputs). ``branch``: (l, beta^2) in the branch of residual layer l, x -> beta x +
    alpha F(x): 1 - beta^2 grad_q_l / grad_q_{l-1} (the skip's part; the two paths are
    uncorrelated at infinite width); (l, None) on the stream's own path at layer l: 1. A
    BatchNorm inside a residual nested in another's branch takes the outer one's share (an
    upper bound of its own). Where grad_q_{l-1} = 0 the share is 0 (nothing to miss); where it
    is otherwise undefined (inf / inf), or ``ds`` lacks the layers (None: no Dataset), 1."""
    l, beta2 = branch
    if ds is None or l is None or l - 1 not in ds["layer"].values:
        return 1.0
    lg = ds["log_grad_q"]
    below = lg.sel(layer=l - 1).values
    share = np.ones_like(below)
    if beta2 is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            share = 1.0 - beta2 * np.exp(lg.sel(layer=l).values - below)
    share = np.where(below == -np.inf, 0.0, np.where(np.isnan(share), 1.0, share))
    return np.clip(np.max(share, axis=-1), 0.0, 1.0)


def warn_unreachable(bns, B, width=None, grid=None, typical=lambda: False, shares=None):
    """Warn (once, for the worst of the BatchNorms met, ``bns``: (eps, input state) each, the
    10 % shared among them by their shares of the gradient, ``shares()``: one each, per grid
    point; None: each 1) when a backward
    expectation E[1/s^2] is carried by features with a batch variance below eps, sampled only
    beyond ``width`` (None: the widest practical, ``PRACTICAL_WIDTH``; B <= 3: E[1/chi^2_{B-1}]
    is infinite at eps = 0); ``grid``: the sweeps, to name the point. A BatchNorm's missed part
    of E[1/s^2] is that part of its share of grad_q: over the blocks, the shares' sum (at the
    worst point) times the worst BatchNorm's deficit is what must stay below 10 %.
    ``typical()``: whether :func:`typical_log_grad_q` covers the net (then the warning points
    at it; else at Monte Carlo). The reach grows with the shares' sum: ``shares`` and
    ``typical`` are asked for only when counting each BatchNorm whole would warn."""
    if B > 3 or not bns:
        return
    gshape = tuple(len(s.values) for s in (grid or {}).values())
    worst = None  # (eps / lam, S, eps, eps swept, where, grid index) at the BatchNorm and point
    for eps, s in bns:
        shape = np.broadcast_shapes(gshape, np.shape(eps), s.K.shape[:-2], s.ls.shape[:-1])
        e = np.broadcast_to(np.exp(s.ls), shape + (B,))
        S = np.broadcast_to(s.K, shape + (B, B)) * outer(e, e)
        swept, eps = np.size(eps) > 1, np.broadcast_to(eps, shape)  # (swept: named in where)
        lam = _batch_variance(S)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # (a stream of
            ratio = np.where(lam > 0, eps / lam, np.inf)  # zeros: s^2 = eps throughout)
        idx = np.unravel_index(np.argmin(ratio), eps.shape)
        if worst is None or ratio[idx] < worst[0]:
            where = _at(grid or {}, [ratio], idx, first=0)
            worst = (ratio[idx], S[idx], float(eps[idx]), swept, where, idx[:len(gshape)])
    # the reach depends on eps / lam only and grows as it shrinks: one evaluation, at the worst
    _, S, eps, swept, where, at = worst
    N = PRACTICAL_WIDTH if width is None else width
    if shares is None or batchnorm_reach(S, eps, B, len(bns), N)[0] <= N:
        share = float(len(bns))  # (each whole; or silent whole, then silent weighed too)
    else:
        share = float(sum(np.broadcast_to(w, gshape) for w in shares())[at])
    need, deficit = batchnorm_reach(S, eps, B, share, N)
    counted = ("" if f"{share:.3g}" == f"{len(bns):.3g}" else
               f" ({share:.3g} counted by their share of grad_q)")
    if need > N:
        warn(
            f"BatchNorm at batch B = {B}{'' if swept else f' (eps = {eps:.3g})'}{where}: the "
            "infinite-width backward "
            f"expectation E[1/s^2] is carried by features whose batch variance is near eps; a net "
            f"of width {N} misses {100 * deficit:.3g} % of it per BatchNorm, and "
            f"reaching it within 10 % over {len(bns)} BatchNorm{'s' * (len(bns) > 1)}{counted} "
            "needs "
            f"width ~{need:.3g}. Compare "
            "typical values (medians, E log) at practical widths, not the mean: "
            + ("sp.theory(net, inputs, width=N) gives E log grad_q as typical_log_grad_q."
               " (sp.compare(theory, mc, estimator='logmean') compares it at that N)"
               if typical() else "by Monte Carlo (sp.simulate); typical_log_grad_q does not "
               f"cover this net ({COVERS})."),
            FiniteWidthWarning)
