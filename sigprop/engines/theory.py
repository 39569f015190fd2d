"""Infinite-width theory engine: ``sp.theory(net, inputs)`` -> Dataset (kind='theory').

Forward, layer by layer, the law of each block (``Op.theory_forward``) maps the moments of the
stream; the state is brought back to unit diagonal after every layer with the scale carried in
log space, so that depth 10^6 never overflows. Backward, the cotangent Gram starts at the
identity (``delta_L ~ N(0, I)`` drawn independently of the net) and each block pulls it back
from its stored input state. Every hyperparameter given as ``sp.sweep(...)`` becomes a grid dim
and the whole grid is propagated in one vectorised pass.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import sympy
import xarray as xr

from sigprop import schema
from sigprop.engines import memory
from sigprop.engines.dataset import build
from sigprop.errors import ConfigError, OverflowInTheory
from sigprop.ops import Op, Residual, layers_of, sweeps_of
from sigprop.ops.edges import warn_knife_edge
from sigprop.provenance import make_attrs
from sigprop.state.inputs import Inputs
from sigprop.state.moments import Cotangent, Gram, corr_of, rescale, to_unit_diagonal
from sigprop.state.ns import NUMERIC
from sigprop.state.params import Context, Sink


def _check_args(net, inputs, width=None, backward=True, layers=None, stacklevel=4):
    """Refuse a bad net, inputs, width or backward flag before any work (a width the warnings
    would quote), and a run whose arrays would not fit (:func:`memory_estimate`; counted before
    the list of the net's blocks or of its recorded layers is built: a depth of 10^11 is a
    refusal, not a MemoryError)."""
    if not isinstance(backward, (bool, np.bool_)):
        raise ConfigError("backward", backward, "True (forward and backward) or False (forward "
                          "only)")
    if not isinstance(net, Op):
        raise ConfigError("net", type(net).__name__, "an Op (e.g. sp.presets.preln(depth=64))")
    if not isinstance(inputs, Inputs):
        raise ConfigError("inputs", type(inputs).__name__, "sp.Inputs(q=..., corr=..., mean=...)")
    if width is not None:
        from sigprop.engines.finite_width import check_width
        from sigprop.engines.montecarlo import check_room

        check_width(width)
        check_room(width, inputs)
    warn_knife_edge(net, inputs, stacklevel)  # (at the caller of sp.theory)
    grid = sweeps_of(net)
    ctx = Context(NUMERIC, tuple(grid))
    for op in net.walk():  # (a swept Dense ratio: a branch's width checked at every point)
        if isinstance(op, Residual):
            op.check_branch_width(ctx)
        for field, value in vars(op).items():  # (sympy's TypeError from deep in a law)
            if isinstance(value, sympy.Basic) and not value.is_number:
                raise ConfigError(f"{type(op).__name__}.{field}", value, "a number, not a symbol "
                                  "(a symbol is for the symbolic face, sigprop.symbolic)")
    L, P = net.n_blocks(), math.prod(len(s.values) for s in grid.values())
    recorded = L + 1 if layers is None else min(L + 1, len(layers) if hasattr(layers, "__len__")
                                                else 1)  # (counted, not built: range(10^11))
    memory.check(memory_estimate(L, recorded, P, inputs.n),
                 f"the theory of {recorded} recorded layers x {P} grid points x B = {inputs.n} "
                 f"inputs (depth {L})", "record fewer layers (layers=[...], e.g. every 10th), "
                 "split the grid (sigprop sweep --grid-chunk), or build a shallower net")


TAPE_BUDGET = 2**28  # bytes: below it the forward keeps every layer's intermediate states
ARRAY_OVERHEAD = 128  # bytes a kept array costs beyond its data (header, Python object)


def check_engine(engine: str):
    """ConfigError unless ``engine`` is 'numpy' or 'jax'; for 'jax', an ImportError with the
    install hint when jax is missing."""
    if engine not in ("numpy", "jax"):
        raise ConfigError("engine", engine, "'numpy' (the default) or 'jax' (compiled)")
    if engine == "jax":
        from sigprop.state.ns import jax_namespace

        jax_namespace()


def theory(net: Op, inputs: Inputs, *, layers=None, progress: bool = False,
           width=None, engine: str = "numpy", backward: bool = True) -> xr.Dataset:
    """Propagate ``inputs`` through ``net`` at infinite width, forward and backward.

    ``backward=False``: the forward pass alone (the kernels, as neural-tangents' nngp); the
    Dataset then has no gradient variables (``schema.FORWARD`` only, and with ``width`` no
    gradient corrections) and records ``backward: false`` in its config.

    ``engine``: ``"numpy"`` (this module), or ``"jax"``: the same laws traced and compiled
    (:mod:`sigprop.engines.compiled`; needs jax, ``pip install 'sigprop[jax]'``; every op, the
    quadrature laws called back on the host; its programs are kept across processes in
    ``SIGPROP_JAX_CACHE``, default the user's cache folder, ``off``: not).

    ``progress``: progress bars of the forward and backward passes (the numpy engine's) and,
    with ``width``, of the finite-width walks (most of such a call; a count of the blocks
    walked).

    ``width``: a stream width N; adds the first-order finite-width corrections and the spread
    across seeds at N (:mod:`sigprop.engines.finite_width`, schema ``FINITE_WIDTH_VARIABLES``).
    From an op with no finite-width rule on they are NaN, with a ``FiniteWidthWarning`` naming
    it; a reason that holds at some grid points only (a stream of zeros, an activation's bend
    far below its input's scale, float64's range) leaves the other points their values.

    ``layers``: the layer indices to record (default all); the backward runs down to the
    lowest recorded one only (below it nothing recorded depends on it). The numpy engine runs
    each block's forward law once when every layer's intermediate states fit in
    ``TAPE_BUDGET`` (measured on layer 1); beyond it the backward keeps a checkpoint every
    ~sqrt(L) layers and recomputes each segment once, so memory is O((sqrt(L) + recorded) x
    grid x B^2). (``engine="jax"``: :mod:`sigprop.engines.compiled`; without BatchNorm it keeps
    no states for the backward.) The recorded quantities are derived from the
    kept states once, for all recorded layers together. A run whose estimate
    (:func:`memory_estimate`) exceeds ``SIGPROP_MEMORY_FRACTION`` of the available memory is
    refused before it starts (:mod:`sigprop.engines.memory`).
    """
    check_engine(engine)
    if engine == "jax":
        from sigprop.engines.compiled import theory_compiled

        return theory_compiled(net, inputs, layers=layers, width=width, backward=backward,
                               progress=progress)
    _check_args(net, inputs, width, backward, layers)
    blocks = layers_of(net)
    L = len(blocks)
    grid = sweeps_of(net)
    dims = tuple(grid)
    shape = tuple(len(s.values) for s in grid.values())
    record = _recorded(layers, L)
    ctx = Context(NUMERIC, dims)
    B = inputs.n

    def step(s, l, tape):
        """Layer l's forward law from its input ``s``; intermediate states go to ``tape``."""
        where = ctx.block(f"layer {l} {type(blocks[l - 1]).__name__}", tape)
        found: dict = {}
        s = to_unit_diagonal(blocks[l - 1].theory_forward(s, where, found))
        _check_finite(s, where.path, "forward")
        return s, found.get("branch")

    s = inputs.moments()
    rows = {0: (s, None)} if 0 in record else {}
    checkpoints, tapes, every = {0: s}, {}, 1 if backward else L + 1  # forward only: no tapes
    lowest = lowest_block(record)  # (the backward's; the blocks below keep no tape)
    for l in _progress(range(1, L + 1), progress, "theory forward"):
        tape: dict | None = {} if every == 1 else None
        s, f = step(s, l, tape)
        if backward and l == 1 < L and _nbytes([tape, s]) * (L + 1 - lowest) > TAPE_BUDGET:
            every, tape = max(1, math.isqrt(L)), None  # (L = 1: kept)
        if tape is not None and l >= lowest:
            tapes[l] = tape
        if l in record:
            rows[l] = (s, f)
        if l % every == 0 and l + every >= lowest:
            checkpoints[l] = s
    kept = sorted(record)
    if not backward:
        data = _variables([rows[l] for l in kept], None, None, shape, B)
        return dataset(net, inputs, kept, data, "numpy", width, backward=False, progress=progress)

    g = Cotangent(K=np.eye(B), m=np.zeros(B), ls=np.zeros(B))
    grad_rows = {L: _log_diag(g)} if L in record else {}
    sink, wgrad_rows = WeightGrads(), {}
    needed = sorted((c for c in checkpoints if min(c + every, L) >= lowest), reverse=True)
    for start in _progress(needed, progress, "theory backward"):
        end = min(start + every, L)
        states = [checkpoints[start]]  # the inputs of layers start + 1 .. end
        for l in range(start + 1, end + 1):
            if l not in tapes:
                tapes[l] = {}
                out = step(states[l - 1 - start], l, tapes[l])[0]
                if l < end:
                    states.append(out)
        for l in range(end, max(start, lowest - 1), -1):
            where = ctx.block(f"layer {l} {type(blocks[l - 1]).__name__} (backward)", tapes.pop(l),
                              sink.at(l in record))
            g = to_unit_diagonal(blocks[l - 1].theory_backward(states[l - 1 - start], g, where))
            _check_finite(g, where.path, "backward")
            if l in record:
                wgrad_rows[l] = sink.take(shape + (B,))
            if l - 1 in record:
                grad_rows[l - 1] = _log_diag(g)
    # relative to the input's width N = n_0: log(n_0 / n_L), the blocks below the backward's
    # lowest one by their ratios
    log_width = sink.log_width - log_ratio(blocks[:lowest - 1], ctx)
    wgrad_rows = {l: v - 2 * log_width[..., None] for l, v in wgrad_rows.items()}
    if 0 in record:
        wgrad_rows[0] = np.full(shape + (B,), np.nan)  # the input: no weights

    data = _variables([rows[l] for l in kept], [grad_rows[l] for l in kept],
                      [wgrad_rows[l] for l in kept], shape, B)
    return dataset(net, inputs, kept, data, "numpy", width, progress=progress)


def dataset(net: Op, inputs: Inputs, kept, data: dict, backend: str, width=None,
            backward: bool = True, progress: bool = False) -> xr.Dataset:
    """The theory Dataset of ``net`` from its variables ``data`` (:func:`variables`) at the
    layers ``kept`` (sorted), computed by ``backend``; with ``width``, extended by the
    finite-width corrections (the forward ones alone without ``backward``; ``progress``: their
    walks' progress shown). Shared by the engines of this module and
    :mod:`sigprop.engines.compiled`."""
    blocks, grid, B = layers_of(net), sweeps_of(net), inputs.n
    coords = {"layer": np.asarray(kept), "input": np.arange(B), "input_b": np.arange(B),
              "block": ("layer", [type(blocks[l - 1]).__name__ if l else "input" for l in kept])}
    coords.update({name: np.asarray(s.values) for name, s in grid.items()})
    ds = build(data, {k: schema.VARIABLES[k].dims_with(grid=tuple(grid)) for k in data}, coords,
               make_attrs("theory", {"net": net.to_dict(), "inputs": inputs.to_dict(),
                                     **({} if backward else {"backward": False})}, backend))
    from sigprop.engines import finite_width

    if backward:  # (its warning is about the gradient)
        finite_width.warn_batchnorm(net, inputs, ds, width)
    if width is not None:
        with finite_width.walks_shown(progress):
            ds = finite_width.extend(ds, net, inputs, width, backward)
    return schema.describe(ds, copy=False)  # a dataset made here, shared with no one


def _nbytes(obj, seen=None) -> int:
    """Bytes held by the arrays of a state or a tape (an array shared by several states once)."""
    seen = set() if seen is None else seen
    if isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        if id(base) in seen:
            return 0
        seen.add(id(base))
        return obj.nbytes + ARRAY_OVERHEAD
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj):
        return sum(_nbytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return 0


def memory_estimate(L: int, recorded: int, grid: int, B: int) -> int:
    """Peak bytes of a theory run, from its shapes (float64): per recorded layer its state and
    branch state (K, m, ls: B^2 + 2B each), gradient diagonal and weight-gradient row (B each),
    then the dataset's variables (corr B^2, ten of B) built from them with as much again in
    temporaries; plus
    the ~2 sqrt(L) states of the checkpointed backward; and the list of the L blocks (a pointer
    each). Measured peaks (tracemalloc) are 0.8 to 0.93 of it at (L, grid, B) = (300, 3000, 1),
    (300, 1000, 2), (100, 1000, 4)."""
    state = B * B + 2 * B
    per_layer = 2 * state + 2 * B + 2 * (B * B + 10 * B)
    return 8 * grid * (recorded * per_layer + 2 * (math.isqrt(L) + 1) * state) + 8 * L


def lowest_block(record) -> int:
    """The lowest block whose backward the recorded layers need: block l's gives the weight
    gradient at layer l and, pulled through, grad_q at layer l - 1. Below it the backward
    computes nothing recorded and is not run."""
    return max(min(record), 1)


def log_ratio(blocks, ctx: Context):
    """log(n_out / n_in) of ``blocks`` one after the other, over the sweep grid of ``ctx`` (in
    its namespace): a sum of logs, n log r per run of n copies of one block (a product of
    ratios over 10^3 blocks leaves float64)."""
    return sum((len(list(run)) * ctx.ns.log(blk.width_ratio(ctx.p))
                for blk, run in itertools.groupby(blocks)), np.zeros(()))


def _recorded(layers, L) -> set[int]:
    if layers is None:
        return set(range(L + 1))
    given = np.atleast_1d(np.asarray(layers, dtype=object))  # (2.5 and True were taken as 2, 1)
    if not all(isinstance(l, (int, np.integer)) and not isinstance(l, bool) for l in given):
        raise ConfigError("layers", layers, f"integers in [0, {L}]")
    chosen = {int(l) for l in given}
    if not chosen or min(chosen) < 0 or max(chosen) > L:
        raise ConfigError("layers", layers, f"a non-empty set of integers in [0, {L}]")
    return chosen


def _check_finite(s: Gram, where: str, direction: str):
    bad = ~np.isfinite(s.K) | ~np.isfinite(s.ls[..., None])
    if np.any(bad):
        raise OverflowInTheory(f"{where}: the {direction} law produced a non-finite value "
                               "(overflow, or an op outside its valid range)")


class WeightGrads(Sink):
    """The backward pass's sink (``Context.sink``) for schema ``log_weight_grad_q``.

    A Dense D with input x (width n_in) and output cotangent g (width n_out) has dl/dW_D = g x^T,
    so ||dl/dW_D||_F^2 = ||g||^2 ||x||^2; at infinite width g is independent of x (gradient
    independence) and E ||dl/dW_D||_F^2 = n_out gq_out n_in q_in, with gq_out and q_in the
    per-feature second moments of g and x (:meth:`Dense.backward_law
    <sigprop.ops.dense.Dense.backward_law>` reports them, :meth:`dense`). The widths are tracked
    here: backward laws visit a block's ops last to first and a residual branch ends at the
    stream's width, so ``log_width`` = log(n / n_L), n the width of the cotangent being pulled
    back and n_L the net output's, is divided by each Dense's ratio on the way down. While
    recording, each Dense adds log(gq_out q_in n_in n_out / n_L^2) (log space: no overflow at any
    depth), gq_out including the gain of the residual branches around it (:class:`Sink`);
    :meth:`take` sums a block's terms.
    """

    def __init__(self, ns=NUMERIC):
        super().__init__()
        self.ns = ns
        self.log_width = np.zeros(())
        self.terms: list = []
        self.recording = False
        self.known: dict = {}  # id(K), id(ls) -> their _log_diag, computed once (see log_diag)

    def at(self, recording: bool) -> WeightGrads:
        """This sink, recording the next block's Denses or not (their widths are tracked)."""
        self.recording = recording
        return self

    def dense(self, s: Gram, g: Gram, ratio):
        """A Dense of n_out / n_in = ``ratio`` with input state ``s`` and output cotangent ``g``."""
        log_in = self.log_width - self.ns.log(ratio)
        if self.recording:
            self.terms.append(self.log_diag(s) + self.log_diag(g)
                              + (self.log_gain + log_in + self.log_width)[..., None])
        self.log_width = log_in

    def log_diag(self, s: Gram):
        """:func:`_log_diag` of ``s``, or the value given for its arrays in ``known`` (the
        compiled engine's backward carries the output cotangent's, computed the step before)."""
        found = self.known.get((id(s.K), id(s.ls)))
        return _log_diag(s, self.ns) if found is None else found

    def take(self, shape) -> np.ndarray:
        """log of the sum of the terms recorded since the last call, broadcast to ``shape``
        (NaN for none: a block without Dense has no weights, as schema ``log_branch_q`` is NaN
        for a block without a branch)."""
        xp = self.ns.xp
        terms, self.terms = [xp.broadcast_to(t, shape) for t in self.terms], []
        if not terms:
            return np.full(shape, np.nan)
        return functools.reduce(xp.logaddexp, terms)  # = np.logaddexp.reduce, bit for bit


def _log_diag(s: Gram, ns=NUMERIC):
    d = ns.xp.diagonal(s.K, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore"):
        return 2 * s.ls + ns.xp.log(d)


def _variables(rows, grad_rows, wgrad_rows, shape, B):
    """:func:`variables` from the recorded (state, branch output) pairs of the forward (lists
    over the layers), the log gradient diagonals and the log weight-gradient statistics (None:
    forward only)."""
    def stack(items, extra=(B,)):  # (broadcast only where needed: ~3 us an array)
        full = shape + extra
        return np.stack([x if np.shape(x) == full else np.broadcast_to(x, full) for x in items])

    branch = [f for _, f in rows if f is not None]
    fK = stack([f.K for f in branch], (B, B)) if branch else None
    fls = stack([f.ls for f in branch]) if branch else None
    return variables(stack([s.K for s, _ in rows], (B, B)), stack([s.m for s, _ in rows]),
                     stack([s.ls for s, _ in rows]),
                     None if grad_rows is None else stack(grad_rows),
                     None if wgrad_rows is None else stack(wgrad_rows),
                     fK, fls, [f is not None for _, f in rows])


def variables(K, m, ls, log_grad_q, log_weight_grad_q, fK=None, fls=None, has_branch=None):
    """The schema's variables (layer first) from the recorded states (K, m, ls: layer x grid x
    (B, B) / B), the branch outputs (fK, fls) of the layers flagged in ``has_branch`` (none:
    None), the log gradient diagonals and the log weight-gradient statistics; scales from
    their logs (:func:`schema.complete`). ``log_grad_q`` None: the forward variables alone."""
    d = np.diagonal(K, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore"):
        log_q = 2 * ls + np.log(d)
        centred = d - m**2
        log_var = 2 * ls + np.log(np.maximum(centred, 0.0))
    log_branch_q = np.full(log_q.shape, np.nan)
    if fK is not None:
        with np.errstate(divide="ignore"):
            log_branch_q[has_branch] = 2 * fls + np.log(np.diagonal(fK, axis1=-2, axis2=-1))
    with np.errstate(over="ignore", invalid="ignore"):  # q, mean, var may overflow to inf
        # true values m e^ls and (d - m^2) e^2ls in log space: an exact 0 stays 0 at any scale
        computed = {"log_q": log_q, "mean": rescale(m, ls, 0, NUMERIC),
                    "var": rescale(centred, 2 * ls, 0, NUMERIC), "log_var": log_var,
                    "corr": corr_of(K), "log_branch_q": log_branch_q}
    if log_grad_q is None:
        return schema.complete(computed, backward=False)
    computed.update(log_grad_q=log_grad_q, log_weight_grad_q=log_weight_grad_q)
    return schema.complete(computed)


def _progress(it, enabled: bool, what: str):
    if not enabled:
        return it
    from rich.progress import track

    return track(it, description=what, transient=True)
