"""Monte Carlo: real random networks of finite width, many seeds, NumPy or CuPy.

``sp.simulate(net, inputs, width, seeds)`` runs ``seeds`` independent random nets on the same
inputs, forward and backward, and returns the schema's Dataset with dims
(seed, layer, input[, input_b]); every seed is kept.

* State: arrays (seeds, inputs, width) with a per-(seed, input) log scale (:mod:`sigprop.state.arrays`);
  after every block the root mean square moves into the log scale, so positively homogeneous
  stacks (relu/linear, LayerNorm/RMSNorm, no bias) of any depth are simulated exactly. A
  statistic that leaves the floating-point range anyway (a non-homogeneous op such as tanh meeting
  a scale beyond the dtype) raises :class:`MonteCarloOverflow` naming the block.
* Randomness: counter-based streams keyed by (root seed, seed, block, op, direction)
  (:mod:`sigprop.state.rng`); weights are regenerated on the backward pass, never stored across
  passes, and chunking the seeds changes no number.
* Weights: ``sampler="explicit"`` draws every W; ``"conditional"`` (the default, exact for Gaussian
  weights) samples W X and W^T D by Gaussian conditioning (:mod:`sigprop.engines.samplers`);
  ``"independent"`` pulls back through fresh weights (the theory's gradient independence).
* Backward: delta_L ~ N(0, I) from its own stream, pulled back by each op's ``mc_vjp``, with
  checkpoints every k = ceil(sqrt(L)) blocks: the forward keeps the states at blocks 0, k, 2k, ...
  and the residuals of the last segment; the backward recomputes the other segments, one of k
  blocks at a time, keeping their residuals. When weights are kept (explicit sampler, uniform
  Dense), recomputing a segment redraws its n_in n_out weights, so every block's residuals are
  kept instead (k = L: each W drawn once) whenever they fit (:func:`plan_segments`).

Memory law (per seed, itemsize b, B inputs, widest feature width n, ``r`` residual arrays per
block, at most 2 per op): ``b B n (ceil(L/k) + k r + 8)`` for the activations, plus, for the
explicit sampler, ``b n_in n_out`` for each weight of a segment (k blocks: the VJP reuses the
forward's or the recomputation's draw; k = L when kept whole) and the workspace of the W being
drawn (:func:`~sigprop.state.rng.draw_workspace`). At k = sqrt(L) this is O(sqrt(L)): pre-LN,
L = 10^4, n = 1024, B = 2, 4 seeds, float32: 47 MiB by the law, 28 MiB measured
(benchmarks/RESULTS.md), against 4.6 GiB if every block's residuals were kept. A run
whose chunk (NumPy) and recorded statistics would exceed ``SIGPROP_MEMORY_FRACTION`` of the
available memory is refused before it starts (:mod:`sigprop.engines.memory`).
"""

from __future__ import annotations

import functools
import logging
import math
from contextlib import contextmanager

import numpy as np
import sympy
import xarray as xr

from sigprop import schema
from sigprop.engines import memory
from sigprop.engines.dataset import build
from sigprop.engines.samplers import SAMPLERS, Explicit
from sigprop.errors import ConfigError, MonteCarloOverflow
from sigprop.ops import Dense, Op, layers_of
from sigprop.ops.edges import warn_knife_edge
from sigprop.provenance import make_attrs
from sigprop.state.arrays import (
    F64,
    Env,
    Sig,
    array_module,
    gram,
    mean_sq,
    psd_power,
    to_unit_rms,
)
from sigprop.state.inputs import Inputs
from sigprop.state.moments import corr_of
from sigprop.state.params import Sink, Sweep
from sigprop.state.rng import COTANGENT, INPUT, Streams, draw_workspace

log = logging.getLogger(__name__)

BACKENDS = ("auto", "numpy", "cupy")
DTYPES = ("float32", "float64")
SAMPLER_NAMES = ("auto",) + tuple(SAMPLERS)
MEMORY_BUDGET = 2**30  # bytes per chunk of seeds when seed_chunk is not given
MAX_ROOT_SEED = 2**64 - 1  # root seeds are 64-bit (Philox keys: rng.seed_keys)


def simulate(net: Op, inputs: Inputs, width: int, seeds: int, backend: str = "auto",
             dtype: str = "float32", root_seed: int = 0, sampler="auto", seed_chunk=None,
             progress: bool = False, first_seed: int = 0) -> xr.Dataset:
    """Simulate ``seeds`` random nets of stream width ``width`` on ``inputs``, forward and backward.

    ``backend``: "numpy", "cupy" or "auto" (CuPy when a GPU is usable; logged). ``sampler``:
    "conditional" (exact Gaussian conditioning, the "auto" choice), "explicit" (every weight
    drawn), "independent" (a fresh W in every VJP: gradient independence, a diagnostic), or a
    sampler object (an instance) with the same ``forward``/``vjp`` methods and a ``name``, which
    the result records (checked before any work). ``seed_chunk``: seeds
    run together (default: as many as fit in ``MEMORY_BUDGET``); results do not depend on it.
    ``first_seed``: the seeds are ``first_seed .. first_seed + seeds - 1`` (coordinate ``seed``,
    int64: below 2^63), so seeds split over calls are the same numbers as in one call.
    Hyperparameter sweeps are refused: run one point per call.
    """
    _check_net(net, inputs)
    width, seeds, root_seed = check_width(width, inputs), check_int("seeds", seeds, 1), \
        check_int("root_seed", root_seed, 0, MAX_ROOT_SEED)
    first_seed = check_first_seed(first_seed, seeds)
    dtype = check_dtype(dtype)
    smp = _sampler(sampler)
    if seed_chunk is not None:
        seed_chunk = check_int("seed_chunk", seed_chunk, 1)
    L = net.n_blocks()
    memory.check(recorded_bytes(seeds, L, inputs.n),  # (before the list of L blocks is built)
                 f"the statistics of {seeds} seeds x {L + 1} layers x B = {inputs.n} inputs",
                 "fewer layers, or the seeds split over calls (first_seed=...)")
    blocks = layers_of(net)
    name, xp = resolve_backend(backend)
    k, seed_chunk, per_seed = plan_segments(blocks, inputs.n, width, np.dtype(dtype).itemsize,
                                            smp, seeds, seed_chunk, host=xp is np)
    # host memory: the chunk's arrays (on the host with NumPy) and the recorded statistics
    working = per_seed * min(seed_chunk, seeds) if xp is np else 0
    memory.check(working + recorded_bytes(seeds, L, inputs.n),
                 f"Monte Carlo of {seeds} seeds x width {width} x B = {inputs.n} inputs x "
                 f"{L + 1} layers ({min(seed_chunk, seeds)} seeds at a time)",
                 "fewer seeds at a time (seed_chunk=...), a smaller width, or the seeds split "
                 "over calls (first_seed=...)")

    parts = []
    with _progress(progress, 2 * len(blocks) * math.ceil(seeds / seed_chunk)) as tick:
        for start in range(first_seed, first_seed + seeds, seed_chunk):
            stop = min(first_seed + seeds, start + seed_chunk)
            streams = Streams(xp, root_seed, np.arange(start, stop))
            env = Env(xp, np.dtype(dtype), streams, smp, block=0)
            parts.append(_run_chunk(blocks, inputs, width, env, tick, k))
    data = {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}
    config = {"net": net.to_dict(), "inputs": inputs.to_dict(), "width": width, "seeds": seeds,
              "root_seed": root_seed, "dtype": dtype, "sampler": smp.name}
    attrs = make_attrs("montecarlo", config, name, root_seed=root_seed, width=width, dtype=dtype,
                       sampler=smp.name, seeds=seeds)
    return mc_dataset(data, blocks, attrs, first_seed)


# -- one chunk of seeds ------------------------------------------------------------------------
def _run_chunk(blocks, inputs, width, env, tick, k):
    """Forward (recording every layer), then the checkpointed backward; host arrays (S, L+1, ...)."""
    xp, L = env.xp, len(blocks)
    last = (L - 1) // k * k  # the last segment's start: the forward keeps its residuals (the
    # backward's first segment, so the peak of the memory law is unchanged) for its VJPs

    def at(l, sink=None):
        return Env(env.xp, env.dtype, env.streams, env.sampler, block=l, sink=sink)

    # Per layer only the reductions over the features are taken (_moments, _mean_sq); the
    # elementwise maths on the (S, B) results runs once on the stacked layers (signal_stats, _log_q):
    # the same numbers, a fraction of the array calls (on a GPU each call is a launch).
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        x = to_unit_rms(input_signals(inputs, width, env))
        fwd, branch, ckpt, kept = [_moments(x)], [None], {0: x}, []
        for l in range(1, L + 1):
            record: dict = {}
            y, res = blocks[l - 1].mc_forward(x, at(l), record)
            if l > last:
                kept.append(res)
            x = to_unit_rms(y)
            fwd.append(_moments(x))
            f = record.get("branch")
            branch.append(None if f is None else _mean_sq(f))
            if l % k == 0 and l < L:
                ckpt[l] = x
            tick()
        fwd = signal_stats(*(xp.stack(v) for v in zip(*fwd)))
        raise_nonfinite(fwd[0], "forward", blocks)

        g = to_unit_rms(Sig(env.normal(COTANGENT, (inputs.n, x.x.shape[-1])), xp.zeros_like(x.ls)))
        grads, wgrads = [_mean_sq(g)], []
        for start in reversed(range(0, L, k)):
            x, tape = ckpt.pop(start), []
            if start == last:
                tape = kept
            else:
                for l in range(start + 1, min(start + k, L) + 1):
                    y, res = blocks[l - 1].mc_forward(x, at(l))
                    tape.append(res)
                    x = to_unit_rms(y)
            for l in reversed(range(start + 1, min(start + k, L) + 1)):
                sink = WeightGradTerms()
                g = to_unit_rms(blocks[l - 1].mc_vjp(tape.pop(), g, at(l, sink)))
                grads.append(_mean_sq(g))
                wgrads.append(functools.reduce(xp.logaddexp, sink.terms) if sink.terms
                              else None)  # log of the sum over the block's Dense; None: none
                tick()
        log_grad_q = _log_q(*(xp.stack(v) for v in zip(*grads[::-1])))
        raise_nonfinite(log_grad_q, "backward", blocks)
        # schema weight_grad_q: N^-2 sum_D ||g_D||^2 ||x_D||^2, N the input's width; NaN at layer
        # 0 (the input) and for a block without Dense: no weights there
        rows = [None] + wgrads[::-1]
        log_wgrad = xp.stack([xp.full_like(g.ls, -np.inf) if w is None else w for w in rows]) \
            - 2 * math.log(width)
        raise_nonfinite(log_wgrad, "backward", blocks)
        for l in [l for l, w in enumerate(rows) if w is None]:
            log_wgrad[l] = np.nan

        nan = (xp.full_like(fwd[0][0], np.nan), xp.zeros_like(fwd[0][0]))
        log_branch_q = _log_q(*(xp.stack(v) for v in zip(*(nan if b is None else b
                                                            for b in branch))))
    out = {"log_q": fwd[0], "mean": fwd[1], "log_var": fwd[2], "corr": fwd[3],
           "log_grad_q": log_grad_q, "log_branch_q": log_branch_q,
           "log_weight_grad_q": log_wgrad}
    host = xp.asnumpy if xp is not np else np.asarray
    return {name: np.swapaxes(host(v), 0, 1) for name, v in out.items()}  # (seed, layer, ...)


def input_signals(inputs: Inputs, n: int, env) -> Sig:
    """B inputs in R^n per seed (float64 maths, then the working dtype), log-scaled like the
    theory's input state (:meth:`Inputs.moments`): x_a = sqrt(q_a) xt_a with ``ls_a = log
    sqrt(q_a)`` and xt built from the scale-free C (cosines) and mu = m / sqrt(q), so q = 1e-300
    or 1e300 is as exact as q = 1.

    law="fixed": xt_a = mu_a 1 + sqrt(n) sum_k F_ak e_k with F F^T = C - mu mu^T and e_k
    orthonormal directions orthogonal to 1 (random per seed: Gaussian rows, centred, made
    orthonormal by (Z Z^T)^(-1/2) Z), so q, mean and cosines are exactly the prescribed ones.
    law="gaussian": features i.i.d. N(0, C) in scaled units: xt = C^(1/2) Z.
    """
    xp = env.xp
    s = inputs.moments()
    C, mu = xp.asarray(s.K), xp.asarray(s.m)
    z = env.normal(INPUT, (inputs.n, n), F64)
    if inputs.law == "gaussian":
        x = psd_power(C, 0.5) @ z
    else:
        z = z - z.mean(axis=-1, keepdims=True)
        e = psd_power(gram(z, z), -0.5) @ z
        x = mu[:, None] + math.sqrt(n) * psd_power(C - xp.outer(mu, mu), 0.5) @ e
    return Sig(x.astype(env.dtype), xp.zeros(x.shape[:-1]) + xp.asarray(s.ls))


def _mean_sq(s: Sig):
    """(mean(x^2), ls) per (seed, input): the reduction of :func:`_log_q`."""
    return mean_sq(s.x), s.ls


def _log_q(ms, ls):
    """log q = 2 ls + log mean(x^2) per (seed, input)."""
    return 2 * ls + array_module(ms).log(ms)


class WeightGradTerms(Sink):
    """``Env.sink`` of one block's VJP: each Dense's log ||dl/dW||_F^2 per (seed, input)
    (:meth:`sigprop.ops.dense.Dense.mc_vjp`), plus the gain of the residual branches around it."""

    def __init__(self):
        super().__init__()
        self.terms: list = []

    def add(self, log_sq):
        self.terms.append(log_sq + float(self.log_gain))


def _moments(s: Sig):
    """(G / n, row means, ls) of a batch of signals, float64: the reductions of :func:`signal_stats`."""
    return gram(s.x, s.x) / s.x.shape[-1], s.x.mean(axis=-1, dtype=F64), s.ls


def signal_stats(G, m, ls):
    """log q, mean, log var (..., B) and corr (..., B, B) from :func:`_moments`, float64.

    mean is formed in log space (exp(ls + log|m|)): it may overflow to inf at extreme depth,
    like q and var (exp of their logs), but is never inf * 0.
    """
    xp = array_module(G)
    d = xp.diagonal(G, axis1=-2, axis2=-1)
    corr = corr_of(G)
    mean = xp.sign(m) * xp.exp(ls + xp.log(xp.abs(m)))
    log_var = 2 * ls + xp.log(xp.maximum(d - m * m, 0.0))
    return 2 * ls + xp.log(d), mean, log_var, corr


def raise_nonfinite(v, direction, blocks):
    """Raise at the first layer (in the pass's own order) whose log statistic is NaN or +inf."""
    v = v if isinstance(v, np.ndarray) else v.get()
    bad = np.isnan(v) | (v == np.inf)  # -inf is log 0: a signal that is exactly zero (dead relu)
    bad = np.flatnonzero(bad.reshape(v.shape[0], -1).any(axis=1))
    if bad.size:
        l = int(bad[0] if direction == "forward" else bad[-1])
        where = "the inputs" if l == 0 else f"layer {l} ({type(blocks[l - 1]).__name__})"
        raise MonteCarloOverflow(
            f"{direction} pass: a statistic left the floating-point range at {where}. The scale "
            "is carried exactly only through positively homogeneous ops (relu/linear, "
            "LayerNorm/RMSNorm, no bias); use dtype='float64', normalise the stream, or reduce "
            "depth/branch scale.")


# -- arguments -----------------------------------------------------------------------------
def check_width(width, inputs) -> int:
    """``width`` as an int from 2 to ``schema.MAX_WIDTH`` (float64 counts features exactly
    below it), with room for the inputs (:func:`check_room`)."""
    width = check_int("width", width, 2, schema.MAX_WIDTH)
    check_room(width, inputs)
    return width


def check_room(width: int, inputs) -> None:
    """Refuse a width below B + 1 for fixed inputs (the directions that hold B inputs with
    exact q, mean and cosines); the finite-width theory of such a net refuses it too."""
    if inputs.law == "fixed" and width < inputs.n + 1:
        raise ConfigError("width", width, f">= {inputs.n + 1} to hold {inputs.n} fixed inputs "
                          "with exact q, mean and cosines (B + 1 directions)")


def check_int(field, value, lo, hi=None) -> int:
    """``value`` as an int in [lo, hi], else a ConfigError naming ``field`` (bools refused)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= lo \
        and (hi is None or value <= hi)
    if not ok:
        raise ConfigError(field, value, f"an integer >= {lo}" + ("" if hi is None else f" and <= {hi}"))
    return int(value)


def check_dtype(dtype) -> str:
    """``dtype`` as one of :data:`DTYPES` by name (a numpy dtype or scalar type of one too:
    ``np.dtype("float32") in DTYPES`` is True, and its object then failed outside sigprop)."""
    try:
        name = dtype if isinstance(dtype, str) or dtype is None else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ConfigError("dtype", dtype, f"one of {DTYPES}")
    return name


def check_first_seed(first_seed, seeds: int) -> int:
    """``first_seed`` as an int whose run of ``seeds`` seeds fits the int64 ``seed`` coordinate
    (2^63 gave a bare OverflowError)."""
    return check_int("first_seed", first_seed, 0, 2**63 - seeds)


def _check_net(net, inputs):
    if not isinstance(net, Op):
        raise ConfigError("net", type(net).__name__, "an Op (e.g. sp.presets.preln(depth=64))")
    if not isinstance(inputs, Inputs):
        raise ConfigError("inputs", type(inputs).__name__, "sp.Inputs(q=..., corr=..., mean=...)")
    for op in net.walk():
        for field, value in vars(op).items():
            if isinstance(value, Sweep):
                raise ConfigError(f"{type(op).__name__}.{field}", f"sweep {value.name!r}",
                                  "a number: sp.simulate runs one point; loop over the sweep "
                                  "values (as the CLI does)")
            if isinstance(value, sympy.Basic):
                raise ConfigError(f"{type(op).__name__}.{field}", value, "a number, not a symbol")
    warn_knife_edge(net, inputs)


def _sampler(sampler):
    if isinstance(sampler, str):
        if sampler not in SAMPLER_NAMES:
            raise ConfigError("sampler", sampler, f"one of {SAMPLER_NAMES} or a sampler object")
        return SAMPLERS["conditional" if sampler == "auto" else sampler]
    if (isinstance(sampler, type) or not isinstance(getattr(sampler, "name", None), str)
            or not all(callable(getattr(sampler, a, None)) for a in ("forward", "vjp"))):
        raise ConfigError("sampler", sampler, f"one of {SAMPLER_NAMES} or a sampler object (an "
                          "instance, not its class) with forward and vjp methods and a name "
                          "(str, recorded in the result)")
    return sampler


def resolve_backend(backend):
    """(name, array module) of ``backend`` ("auto", "numpy" or "cupy"); CuPy without a usable
    GPU is a ConfigError with the install hint."""
    if backend not in BACKENDS:
        raise ConfigError("backend", backend, f"one of {BACKENDS}")
    if backend != "numpy":
        xp = gpu_module()
        if xp is not None:
            log.info("sigprop.simulate: backend cupy (GPU)")
            return "cupy", xp
        if backend == "cupy":
            raise ConfigError("backend", backend, "'numpy' or 'auto' here: no usable CuPy GPU (CuPy: "
                              "pip install 'sigprop[cuda12]' or 'sigprop[cuda13]', by CUDA major)")
    log.info("sigprop.simulate: backend numpy (CPU)")
    return "numpy", np


def gpu_module():
    """cupy when it imports and sees a CUDA device, else None."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except cupy.cuda.runtime.CUDARuntimeError:  # no driver or no device
        return None


# -- memory --------------------------------------------------------------------------------
def memory_per_seed(blocks, B: int, width: int, itemsize: int, sampler, k=None) -> int:
    """Bytes per seed by the module's memory law with checkpoints every ``k`` blocks (default
    ceil(sqrt(L))); also validates every Dense ratio and that every residual branch keeps the
    stream's width."""
    L = len(blocks)
    k = k or math.ceil(math.sqrt(L))
    widest, weight = width, 0
    n, seen = width, {}
    for blk in blocks:  # (each block at the width it meets: a Dense of ratio 2 repeated
        key = (id(blk), n)  # doubles it each time; a block at a width it met before, once)
        if key not in seen:
            seen[key] = blk.mc_widths(n)
        n, w, wt = seen[key]
        widest, weight = max(widest, w), max(weight, wt)
    act = itemsize * B * widest * stored_signals(L, 2 * max(blk.mc_ops() for blk in blocks), k)
    # the explicit sampler, and a uniform Dense under any sampler, keeps each W of a recomputed
    # segment (k blocks) for its VJP
    kept = kept_weights(blocks, sampler)
    draw = draw_workspace(weight, np.dtype(f"f{itemsize}")) if kept else 0  # a W being drawn
    return act + itemsize * weight * k * kept + draw


def kept_weights(blocks, sampler) -> int:
    """Most weights one block keeps for its VJP: each Dense under the explicit sampler, and a
    uniform Dense under any sampler."""
    explicit = isinstance(sampler, Explicit)
    return max(sum(isinstance(op, Dense) and (explicit or op.init == "uniform")
                   for op in blk.walk()) for blk in blocks)


def plan_segments(blocks, B, width, itemsize, sampler, seeds, seed_chunk, host):
    """(k, seeds per chunk, bytes per seed): checkpoints every k blocks.

    k = ceil(sqrt(L)) and as many seeds as fit in ``MEMORY_BUDGET`` (``seed_chunk`` when given),
    except where blocks keep weights (:func:`kept_weights`): recomputing a segment would redraw
    them (n_in n_out normals each, the explicit sampler's main cost), so k = L (every block's
    residuals kept, nothing recomputed) when that chunk fits in ``MEMORY_BUDGET``; on the host
    (``host``: NumPy, whose draws run a chunk's seeds one after another anyway) the chunk may
    shrink to as few as one seed for it.
    """
    L = len(blocks)
    per_seed = memory_per_seed(blocks, B, width, itemsize, sampler)
    chunk = seed_chunk or max(1, min(seeds, MEMORY_BUDGET // per_seed))
    if kept_weights(blocks, sampler):
        whole = memory_per_seed(blocks, B, width, itemsize, sampler, k=L)
        if host and seed_chunk is None and whole <= MEMORY_BUDGET:
            chunk = min(chunk, MEMORY_BUDGET // whole)
        if whole * min(chunk, seeds) <= MEMORY_BUDGET:
            return L, chunk, whole
    return math.ceil(math.sqrt(L)), chunk, per_seed


def recorded_bytes(seeds: int, L: int, B: int) -> int:
    """Bytes of the recorded statistics (float64, every layer and seed: corr B^2 and ten
    variables of B), about three times over while the chunks are joined and completed."""
    return 3 * 8 * seeds * (L + 1) * (B * B + 10 * B)


def stored_signals(L: int, r: int, k=None) -> int:
    """Signals of B x width held at once: ceil(L/k) checkpoints + k blocks of r residuals + 8
    (k: default ceil(sqrt(L)))."""
    k = k or math.ceil(math.sqrt(L))
    return math.ceil(L / k) + k * r + 8


# -- output --------------------------------------------------------------------------------
def mc_dataset(data, blocks, attrs, first_seed=0) -> xr.Dataset:
    """The schema's variables (dims seed first) from the log scales and moments of the chunks."""
    S, L1, B = data["log_q"].shape
    data = schema.complete(data)
    coords = {"seed": first_seed + np.arange(S), "layer": np.arange(L1), "input": np.arange(B),
              "input_b": np.arange(B),
              "block": ("layer", ["input"] + [type(b).__name__ for b in blocks])}
    ds = build(data, {k: schema.VARIABLES[k].dims_with(lead=("seed",)) for k in data}, coords,
               attrs)
    return schema.describe(ds, copy=False)  # a dataset made here, shared with no one


@contextmanager
def _progress(enabled: bool, total: int):
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("Monte Carlo", total=total)
        yield lambda: bar.advance(task)

