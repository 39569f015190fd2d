"""Compiled infinite-width theory engine: ``sp.theory(net, inputs, engine="jax")``.

The same laws as :mod:`sigprop.engines.theory`, not a copy of them: each block's
``theory_forward`` / ``theory_backward`` is traced once with the jax namespace
(:func:`sigprop.state.ns.jax_namespace`, float64) into the body of a loop (``lax.scan``,
``lax.fori_loop``) over the consecutive copies of that block (the blocks of a ``Repeat`` are
one op, so one trace). The sweep grid is flattened to one dim of P points, which the laws
broadcast over as they do over the numpy engine's grid dims (``vmap`` instead measured no
faster). Forward, the engine hands each layer's output state to the next (log-scaled: unit
diagonal, scale in ``ls``, :func:`~sigprop.state.moments.to_unit_diagonal`; in true units:
``ls`` 0, below; kept for every layer only as the reverse scan's tape, below), and writes the
recorded layers' states and branch outputs into a small buffer it carries, a row per recorded
copy; the copies between two recorded ones run in a loop of their own, which builds no record
(layer-long outputs of every copy's record cost a third of the time at 10^4 points, and
building a record each copy, even one overwritten, 15 % of the forward); ``backward=False``
stops there.

Backward, for a net whose ops act on each input alone (all but BatchNorm:
:func:`_diagonal`), no reverse pass: from G_L = I the
cotangent stays diagonal, each copy multiplying input a's entry by a gain g_a of a's forward
state, so each copy's forward also pulls a unit cotangent back from its output (its backward
law, whose recomputed forward states XLA shares with the forward's) and the carry sums the log
gains (and the log width ratios) from the lowest recorded layer on, in segments that each
recorded layer closes (a gain of 1e300 below then rounds none of the small ones above it);
log G_l is the sum of the segments above l, added from the top down, and a weight gradient
recorded at a unit cotangent moves by the same sum (no tape to keep; 1.8-3.3x
faster than the reverse scan at 10^4 points, measured before the segments:
``benchmarks/RESULTS.md``). A net with BatchNorm,
whose batch statistics couple the inputs' cotangents, takes the reverse scan: it
pulls the cotangent back, down to the lowest recorded layer (the copies below it are left out
of the scan; checkpointed, the chunks below the one that holds it), from each layer's input
state (the block's internal states recomputed inside its backward law, or, for a block with
host laws below, taped by the forward loops:
:func:`_pack`) and reports the weight gradients to the same sink
(:class:`~sigprop.engines.theory.WeightGrads`), only where they are recorded: a copy whose
output and input layers are both unrecorded takes a ``lax.cond`` branch without the sink (its
logs were a third of the time at 10^4 points; the same split into loops as the forward's
measured 10 % slower here). When the kept input states would pass ``TAPE_BYTES`` (depth 10^4 x
10^4 points), the scan is two-level: chunks of ~sqrt(L) copies, the forward keeping only each
chunk's first state and the backward recomputing a chunk's states from it before its reverse
scan (one more forward pass; memory ~sqrt(L) states). A grid of at least 2 x ``SHARD_POINTS``
points is split over threads, one per core (:func:`_shards`: XLA runs one program on one core
here and releases the GIL; the same numbers bit for bit, the tape's checkpointing decided on
the whole grid). The Dataset is assembled by the numpy engine's own functions
(:func:`~sigprop.engines.theory.variables`, :func:`~sigprop.engines.theory.dataset`).

True units first. The log scale ``ls`` keeps a state finite at any depth, at the price of an
exp or a log per entry in five laws (a quarter of Pre-LN erf's forward). Most nets never need
it, so the engine first runs a program whose layers hand on their states in true units: each
layer takes ``ls`` as the constant 0 (so the laws' exp and log of it fold away at compile time)
and folds the ``ls`` its laws return back into K and m (``ns.unscaled``: ``affine`` moves no
factor into ``ls``; a bias or a residual sum still may). Every op's output state, inner ones
included (``Context.guard``), must keep the diagonal of its K, the numbers the laws multiply,
within :data:`TRUE_RANGE`, forward and backward; where one leaves it (a relu resnet's q
doubles per block; an inner op scales by 1e-300: its q flushed to 0 while the layer's output
looks fine) the run is made again by the log-scaled program, which is the net's from then on
(``_SCALED``). Backward, the cotangents are checked (the forward states a backward law
recomputes were covered by the forward); where the gains ride the forward, each copy's gain,
and the cotangents inside only where an op's gain escapes its forward states' bounds
(:func:`_unbounded_gains`). Forward, a check costs more than its comparisons:
XLA computes the diagonals of states its fusions never build apart (checking every op output
cost a third of Pre-LN erf's forward). So only what cannot be bounded is checked
(:class:`_Guard`): the layer's input is checked within :data:`TRUE_RANGE` narrowed by
:data:`BOUND_MARGIN` at each end, and an op whose input is so bounded passes its bound on
through :meth:`Op.diag_bound <sigprop.ops.base.Op.diag_bound>` (a Dense's sigma_w^2 q +
sigma_b^2, a Scale's c^2 q, an activation's E phi^2 where it grows with q); an output whose
bound stays within :data:`TRUE_RANGE` goes unchecked. Any other (a norm's, a residual sum
inside a block, a bound that leaves the range) is checked within the narrowed range with log
scale 0, and bounds the ops after it from there; the layer's own output is checked as it is
carried on. The inputs start from the user's own q, corr and mean; outside
the range they go log-scaled at once. The same numbers to rounding: true units change where
each product is rounded, not what is computed. A net that needs the log scale pays one more run
(and trace) on its first call in a process (measured: 8.0 s against 4.8 s for a relu resnet of
depth 300 over 2000 points).

A scan body needs the same static structure in and out: the law of the stream
(:class:`~sigprop.state.moments.Law`) is static, so the first copies of a block run unrolled
until the law they hand on is the law they took (one copy, or two when the inputs' law differs
from the stream's). Values are unknown while tracing, so a law that would raise on a value
(:func:`~sigprop.state.moments.true_moments` beyond float64) gives NaN there instead, and the
engine reports the first layer with a non-finite state as :class:`OverflowInTheory`, with the
op named by the numpy engine rerun on the net (an error path: no cost otherwise).

Supported: every op of :mod:`sigprop.ops` (:data:`SUPPORTED`); a user's own op subclass is
refused before tracing (:class:`UnsupportedComposition`, naming it). The laws whose numeric
rule depends on the values (the quadrature activations tanh, silu, elu, gelu_tanh, and
BatchNorm's t-integrals) are called back on the host from the compiled program
(``ns.host``), the numpy functions themselves: the same values, at about the numpy engine's
pace (the host work is the same; each call adds ~0.1 ms). The numbers of the nets' usual
parameters (sigma_w, sigma_b, a residual's alpha and beta, a Scale's c, a LayerNorm's gain) are
the program's arguments, not constants in it (:func:`_lifted`), so nets that differ only in them,
within an octave of each, share one program. The compiled function is cached per (net with its
numbers lifted, inputs' law, B, recorded layers, shard size, chunk, backward, true units), so a
second call runs without tracing, a loop over sigma_w too; a later process traces again and
loads the XLA program jax's persistent cache kept (:func:`_persist`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import platformdirs

from sigprop.engines import memory
from sigprop.engines.theory import (
    WeightGrads,
    _check_args,
    _log_diag,
    _recorded,
    dataset,
    log_ratio,
    lowest_block,
    memory_estimate,
    theory,
    variables,
)
from sigprop.errors import OverflowInTheory, UnsupportedComposition
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
    layers_of,
    sweeps_of,
)
from sigprop.ops.base import is_zero
from sigprop.ops.edges import one_value
from sigprop.state.inputs import Inputs
from sigprop.state.moments import (
    TINY,
    TRACED_LS_MIN,
    BatchNormed,
    Cotangent,
    Moments,
    to_unit_diagonal,
)
from sigprop.state.ns import HOST_ERRORS, jax_namespace
from sigprop.state.params import Context, Sweep

SUPPORTED = (Dense, Scale, FeatureAffine, Act, LayerNorm, RMSNorm, BatchNorm, Residual, Serial,
             Repeat)
MAX_UNROLLED = 3  # copies of a block run before its scan, waiting for the stream's law to settle
TAPE_BYTES = 2**32  # beyond it the backward recomputes each chunk of ~sqrt(L) layers
SHARD_POINTS = 2048  # fewest grid points per thread (measured: 2 threads at 10^4 points)
CACHE_SIZE = 16  # compiled programs kept (each holds its XLA executable)
PERSIST_ENV = "SIGPROP_JAX_CACHE"  # where compiled programs are kept across processes; "off"
PERSIST_BYTES = 2**30  # the most that folder holds (jax evicts the least recently used)
PERSIST_OFF = ("off", "0", "false", "no", "none")  # SIGPROP_JAX_CACHE values that turn it off
_CACHE: OrderedDict = OrderedDict()
# the diagonal of every state in true units (:func:`theory_compiled`'s first try): a law
# multiplies a few entries at most (a product of two diagonals, BatchNorm's B x B Grams), which
# stay normal float64 from here
TRUE_RANGE = (1e-30, 1e30)
# the states checked at run time in the forward are checked within TRUE_RANGE narrowed by this
# factor at each end, so that a chain of ops bounded from them (Op.diag_bound) stays in TRUE_RANGE
BOUND_MARGIN = 1e5
# the fields whose numbers a program takes as arguments (:func:`_lifted`); FeatureAffine reads
# a swept gain otherwise than a number, and the norms' eps sits in branches on its value
LIFTED = {Dense: ("sigma_w", "sigma_b"), Residual: ("alpha", "beta"), Scale: ("c",),
          LayerNorm: ("gain",)}
# the numbers a law hands to the program as they are (or squared: a Dense's bias), by the least
# nonzero size whose value XLA does not read as 0 (a subnormal one, or square, is flushed); a
# sweep's values are such numbers too (TINY, unless named here); smaller ones are refused
# (:func:`_refuse`)
TRACED_NUMBERS = {(Scale, "c"): TINY, (LayerNorm, "gain"): TINY,
                  (Dense, "sigma_b"): math.sqrt(TINY)}
LIFT = "lifted__"  # the name of a lifted number's sweep, before its index
# the octaves of the numbers lifted: 2^k <= |v| < 2^(k + 1) for k in this range, so that their
# squares and products stay normal float64 (outside it a number stays in the program, as it was:
# its octave's end overflowed, and XLA flushed a subnormal alpha's log to -inf)
LIFT_OCTAVES = range(-511, 511)
_SCALED: OrderedDict = OrderedDict()  # (net, inputs' law, B, backward) whose run in true units
# left TRUE_RANGE


def theory_compiled(net: Op, inputs: Inputs, *, layers=None, width=None, backward=True,
                    progress=False):
    """:func:`sigprop.theory` (same arguments, same Dataset) with every law traced into one
    compiled function (module docstring); ``attrs['backend']`` is ``'jax'``; ``progress``:
    the finite-width walks' only (the compiled passes show none)."""
    _check_args(net, inputs, width, backward, layers, stacklevel=5)
    template, lifted = _lifted(net)  # (the program's net: its numbers are arguments)
    blocks = layers_of(template)
    runs = _runs(blocks)  # (per run, not per layer: a Repeat's copies are one block)
    _refuse_unsupported(runs)
    jax = _jax()
    L, B = len(blocks), inputs.n
    grid = sweeps_of(net)
    shape = tuple(len(s.values) for s in grid.values())
    kept = sorted(_recorded(layers, L))
    P = math.prod(shape)
    taped = max((_taped_states(blk) for blk, _, _ in runs), default=0)
    reverse = backward and not _diagonal(net)  # (a reverse scan, and its tape)
    chunk = _chunk(L, P, B, taped) if reverse else None  # (on the whole grid: the shards'
    tape = _tape_bytes(L, P, B, chunk, taped) if reverse else 0  # tapes add up)
    if tape:  # (without it, the estimate _check_args passed)
        memory.check(memory_estimate(L, len(kept), P, B) + tape,
                     f"the compiled theory of {L} layers x {P} grid points x B = {B} inputs",
                     "split the grid (sigprop sweep --grid-chunk), or record fewer layers")
    s0 = inputs.moments()
    points = [np.ravel(a) for a in np.meshgrid(*(np.asarray(s.values) for s in grid.values()),
                                                indexing="ij")]
    k = _shards(P)
    size = -(-P // k)
    points = [np.concatenate([p, np.repeat(p[-1:], k * size - P)]) for p in points]  # padded
    key = (net, s0.law, B, backward)  # (what decides whether a state leaves the range)
    program_key = (template, s0.law, B, tuple(kept), size, chunk, backward)
    K0 = inputs.gram
    np.fill_diagonal(K0, inputs.q)
    true = (K0, np.asarray(inputs.mean, dtype=float), 0 * s0.ls)  # the user's own numbers

    def attempt(unscaled):
        """The program's arrays, in true units or log-scaled; its layers' blocks' branches."""
        start = true if unscaled else (s0.K, s0.m, s0.ls)

        def shard(i):
            with _x64(jax):  # a thread of its own: the x64 flag is per thread
                out = program(tuple(p[i * size:(i + 1) * size] for p in points) + lifted,
                              *start)
            # (array by array: jax.device_get's overlapped copies measured ~20 us per array on
            # the CPU, a tenth of a one-point call)
            return {name: np.asarray(x) for name, x in out.items()}

        with _x64(jax):
            program, branches = _program(program_key + (unscaled,), runs, L, grid)
        HOST_ERRORS.clear()
        if k == 1:
            return shard(0), branches
        with ThreadPoolExecutor(k) as pool:
            return _joined(list(pool.map(shard, range(k))), P), branches

    try:  # (the first call traces)
        # (inputs of one value across features, var / q within rounding of 0, are a knife
        # edge: log-scaled, as the numpy engine takes them, not at the user's own var of 1e-15)
        unscaled = (key not in _SCALED and _in_range(np.diagonal(true[0]))
                    and not np.any(one_value(inputs)))
        out, branches = attempt(unscaled)
        if unscaled and not (HOST_ERRORS == [] and all(np.all(out[f]) for f in ("ok", "okb")
                                                       if f in out)):
            # a state left TRUE_RANGE: the log-scaled program, the first run's arrays freed
            # before it runs (its program kept, for the template's other numbers)
            _remember(_SCALED, key, True)
            out = None
            out, branches = attempt(False)
    except UnsupportedComposition:  # the numpy engine's own refusal first, where it has one
        theory(net, inputs, layers=[0], backward=False)  # (then neither engine runs the net)
        raise
    if HOST_ERRORS:  # a host law raised: the numpy engine raises it again, naming the op
        error = HOST_ERRORS[0]
        HOST_ERRORS.clear()
        theory(net, inputs, layers=[0], backward=backward)
        raise error
    _check_finite(out, net, blocks, inputs, backward)
    return dataset(net, inputs, kept, _arrays(out, branches, kept, shape, B), "jax", width,
                   backward, progress)


@dataclasses.dataclass(frozen=True)
class _Lifted(Sweep):
    """A number of a net as its program's argument number ``index`` among the lifted ones
    (:func:`_lifted`); ``values``: the ends of its octave. Never equal to a user's sweep."""

    index: int = 0


@functools.lru_cache(maxsize=4 * CACHE_SIZE)  # (a call's own costs: ~0.1 ms of rebuilt ops)
def _lifted(net: Op) -> tuple[Op, tuple]:
    """(template, values): ``net`` with each number of an octave of :data:`LIFT_OCTAVES` in a
    field of :data:`LIFTED` replaced by a :class:`_Lifted` sweep named ``LIFT`` + j, j counting
    the distinct numbers, and those numbers in that order (float64 scalars). The program traced
    from the template takes them as arguments beside the grid's, so that one program serves
    every net that differs only in them (a loop over sigma_w traced each value anew:
    benchmarks/RESULTS.md, "a net's numbers as its program's arguments"). The sweep's values are
    the powers of 2 on either side of the number (sign kept): what :meth:`Op.diag_bound
    <sigprop.ops.base.Op.diag_bound>` bounds the range over, so that the checks the program
    skips are skipped for every number it takes (a number in another octave: another program). 0
    and 1 stay in the template (a law's branch on 0: a Dense without bias; a factor of 1, a
    residual's beta, folded away: lifted, it cost 2-4 % at 10^4 points,
    benchmarks/before_after.py). Nothing is lifted where a sweep of the net is named like a
    lifted one (a name is one grid dim)."""
    if any(name.startswith(LIFT) for name in sweeps_of(net)):
        return net, ()
    found: dict[float, Sweep] = {}

    def lift(op: Op) -> Op:
        fields = LIFTED.get(type(op), ())

        def one(name, v):
            if isinstance(v, Op):
                return lift(v)
            if isinstance(v, tuple):
                return tuple(lift(x) if isinstance(x, Op) else x for x in v)
            if name not in fields or type(v) is not float or v in (0.0, 1.0):
                return v
            k = math.frexp(v)[1] - 1  # (exact: log2 rounded 1 ulp below 2^k up to k)
            if k not in LIFT_OCTAVES:
                return v
            if v not in found:
                found[v] = _Lifted(f"{LIFT}{len(found)}", (math.copysign(2.0**k, v),
                                                          math.copysign(2.0 ** (k + 1), v)),
                                   len(found))
            return found[v]

        return op.map_fields(one)

    template = lift(net)
    return template, tuple(np.float64(v) for v in found)


def _refuse_unsupported(runs):
    """:class:`UnsupportedComposition` naming the first op without a traced law in the blocks'
    ``runs`` (:func:`_runs`), by the numpy engine's path (``net > layer 1 Residual > Serial >
    BatchNorm``)."""
    for blk, first, _ in runs:
        _refuse(blk, f"net > layer {first} {type(blk).__name__}")


def _refuse(net: Op, path: str):
    hint = "use the default engine, sp.theory(net, inputs) (engine='numpy')"
    if type(net) not in SUPPORTED:  # (a subclass's laws may be numpy's own: not traceable)
        raise UnsupportedComposition(
            f"{path}: {type(net).__name__} is not supported by the compiled theory engine "
            f"(engine='jax' traces {', '.join(c.__name__ for c in SUPPORTED)}); {hint}")
    for field in dataclasses.fields(net):
        v = getattr(net, field.name)
        least = TRACED_NUMBERS.get((type(net), field.name), TINY if isinstance(v, Sweep) else 0)
        tiny = [x for x in (v.values if isinstance(v, Sweep) else (v,))
                if isinstance(x, (float, np.floating)) and 0 < abs(x) < least]
        if tiny:  # (XLA on the CPU reads it as 0: a Scale of 1e-310 gave log q = -inf, a
            # sigma_b of 1e-160 a q from sigma_w alone; the other numbers' far factors are
            # taken on the host)
            raise OverflowInTheory(f"{path}: {type(net).__name__}.{field.name} = {tiny[0]!r} is "
                                   f"below {least:.3g}, a number the compiled program would "
                                   f"read as 0; {hint}")
    for kid in net.children():
        _refuse(kid, f"{path} > {type(kid).__name__}")


def _jax():
    """jax, its compiled programs kept across processes (:func:`_persist`); ImportError with the
    install hint when it is missing."""
    jax_namespace()
    import jax

    _persist(jax)
    return jax


@functools.cache
def _persist(jax) -> None:
    """Turn on jax's persistent compilation cache in ``SIGPROP_JAX_CACHE`` (default: the user's
    cache folder, ``sigprop/jax``; ``off``, ``0``, ``false``, ``no`` or ``none``: none), at most
    ``PERSIST_BYTES``, oldest entries evicted: a net's first call in a later process loads its
    XLA program instead of compiling it (``benchmarks/first_call.py``; what is left is
    tracing). jax writes only programs that took longer than its
    ``jax_persistent_cache_min_compile_time_secs`` (1 s) to compile, and none with host
    callbacks. The setting is jax's, for the whole process: the user's own programs compiled
    after it are kept there too, and a cache folder set in jax after it is not read (jax reads
    it once). A cache folder the user gave jax before is left as it is; a folder that cannot be
    made (no writable home) leaves jax as it is."""
    folder = os.environ.get(PERSIST_ENV) or os.path.join(platformdirs.user_cache_dir("sigprop"),
                                                         "jax")
    if folder.lower() in PERSIST_OFF or \
            jax.config.values.get("jax_compilation_cache_dir") is not None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_compilation_cache_max_size", PERSIST_BYTES)


@contextmanager
def _x64(jax):
    """float64 while tracing and running (jax.enable_x64; jax.experimental's before 0.6)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:
        from jax.experimental import enable_x64 as enable
    with enable(True):
        yield


def _runs(blocks) -> list[tuple[Op, int, int]]:
    """(block, first layer, count) of each run of one block repeated (a Repeat's copies, or
    equal blocks built one by one: equal ops have the same law)."""
    runs: list = []
    first = 1
    for _, same in itertools.groupby(blocks, key=id):  # (a Repeat's copies: one group)
        n = len(list(same))
        blk = blocks[first - 1]
        if runs and runs[-1][0] == blk:
            runs[-1][2] += n
        else:
            runs.append([blk, first, n])
        first += n
    return [tuple(r) for r in runs]


def _program(key, runs, L, grid):
    """:func:`_trace` of ``key`` = (net, law0, B, kept, P, chunk, backward, unscaled), cached
    (module docstring)."""
    found = _CACHE.get(key)  # (each lookup hashes the net: one on a hit, not three)
    if found is None:
        net, *rest = key
        found = _trace(net, runs, L, grid, *rest)
        _remember(_CACHE, key, found)
    else:
        _CACHE.move_to_end(key)
    return found


def _remember(cache: OrderedDict, key, value):
    """``cache[key] = value``, the oldest of more than ``CACHE_SIZE`` entries dropped."""
    cache[key] = value
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


def _checked_range() -> tuple[float, float]:
    """Where the forward checks a state at run time: :data:`TRUE_RANGE` narrowed by
    :data:`BOUND_MARGIN`."""
    lo, hi = TRUE_RANGE
    return lo * BOUND_MARGIN, hi / BOUND_MARGIN


def _within(x, bounds=None):
    """Whether each entry of ``x`` is within ``bounds`` (:data:`TRUE_RANGE`; NaN is not)."""
    lo, hi = TRUE_RANGE if bounds is None else bounds
    return (x >= lo) & (x <= hi)


def _in_range(diagonal) -> bool:
    """Whether every entry of a numpy array is within the forward's checked range."""
    return bool(np.all(_within(diagonal, _checked_range())))


class _Guard:
    """What a block's ops report in true units (``Context.guard``): the states to check at run
    time. Backward, the cotangents (the forward states a backward law recomputes were covered by
    the forward). Forward, every op output but those bounded from the start: the block's input
    (checked, log scale 0) bounds an op's output by :meth:`Op.diag_bound
    <sigprop.ops.base.Op.diag_bound>` where its input is bounded, and a bound within
    :data:`TRUE_RANGE` needs no check (that output's log scale is its input's 0); a state
    checked is checked within :func:`_checked_range`, log scale 0, and bounds the ops after it
    from there (measured: checking every op output cost a third of Pre-LN erf's forward)."""

    def __init__(self, start: Moments | None = None):
        self.checked: list = []
        self.forward = start is not None
        self._bounds: dict = {}  # (id(K), id(ls)) of a state -> (the state, lo, hi)
        if start is not None:
            self._bounds[id(start.K), id(start.ls)] = (start, *_checked_range())

    def report(self, op: Op, s, out):
        if not self.forward:
            if isinstance(out, Cotangent):
                self.checked.append(out)
            return
        key = id(out.K), id(out.ls)
        if key in self._bounds:  # (a Serial's output: its last op's, already met)
            return
        known = self._bounds.get((id(s.K), id(s.ls)))
        with np.errstate(over="ignore", under="ignore"):  # (inf, 0: out of range)
            bound = None if known is None else op.diag_bound(known[1], known[2], s)
        lo, hi = TRUE_RANGE
        if bound is None or not (bound[0] >= lo and bound[1] <= hi):
            self.checked.append(out)
            bound = _checked_range()
        self._bounds[key] = (out, *bound)

    def drop(self, out):
        """Check ``out`` (the block's own output, which the engine checks as it carries it
        on) no more."""
        self.checked = [t for t in self.checked if t is not out]


def _diagonal(net: Op) -> bool:
    """Whether the net's backward keeps the cotangent diagonal and multiplies each input's
    entry by a gain of that input's forward state alone: no op couples the inputs
    (``Op.couples_inputs``: BatchNorm's batch statistics do), and the backward laws are linear
    in the cotangent. From G_L = I, then, G_l = diag(prod over layers k > l of g_k), so the
    forward scan sums each copy's log g (the pull-back of a unit cotangent from its output)
    and the backward needs no reverse pass (module docstring)."""
    return not any(op.couples_inputs for op in net.walk())


def _unbounded_gains(blk: Op) -> bool:
    """Whether an op of ``blk`` has a backward gain that its forward states do not bound
    from below: a Dense with a bias (sigma_w^2, however small, while the bias carries its
    output) or a FeatureAffine with a shift. Every other op's gain is within a ratio of
    checked forward states (a bias-free Dense's sigma_w^2 and a Scale's c^2 are its output's
    q over its input's; a norm's gain^2 / q_in; an activation's E phi'^2, bounded at any q in
    range), so a product of them stays normal float64 where they are."""
    def shifts(op):
        return not all(is_zero(v) for v in (op.shift, op.shift_sq, op.gain_shift)
                       if v is not None)

    return any(isinstance(op, Dense) and not (is_zero(op.sigma_b)
                                              and is_zero(op.sigma_b_fan_in))
               or isinstance(op, FeatureAffine) and shifts(op) for op in blk.walk())


def _host_laws(blk: Op) -> bool:
    """Whether a law of ``blk`` runs on the host (``ns.host``: a quadrature activation or a
    BatchNorm). Such a block's internal states are taped by the forward scan rather than
    recomputed by the backward: a host call costs ~0.1 ms beyond its own work (measured), while
    recomputing closed-form laws costs less than keeping their states (measured: taping them
    saved 0-6 %, and cost 3 % on Pre-LN erf at 10^4 points)."""
    return any(isinstance(op, BatchNorm) or (isinstance(op, Act)
                                             and get_activation(op.name)._closed is None)
               for op in blk.walk())


def _taped_states(blk: Op) -> int:
    """States the forward of ``blk`` tapes when :func:`_host_laws` (each Serial's inputs)."""
    return sum(len(op.layers) for op in blk.walk() if isinstance(op, Serial)) if _host_laws(blk) \
        else 0


def _shards(P: int) -> int:
    """Threads the P grid points are split over: one per core the process may use, each with
    at least ``SHARD_POINTS`` (XLA runs one program on one core here; it releases the GIL)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, P // SHARD_POINTS))


def _joined(parts: list[dict], P: int) -> dict:
    """One run's arrays from its shards': points on axis 1 (``log_width``: 0), cut to the P
    points before the padding; the per-layer finiteness flags hold where they hold in all."""
    out = {}
    for key in parts[0]:
        xs = [part[key] for part in parts]
        if key in ("ok", "okb"):
            out[key] = np.logical_and.reduce(xs)
        else:
            axis = 0 if key == "log_width" else 1
            out[key] = np.take(np.concatenate(xs, axis), np.arange(P), axis)
    return out


def _chunk(L: int, P: int, B: int, taped: int = 0) -> int | None:
    """Layers per checkpointed chunk, or None when every layer's tape fits in ``TAPE_BYTES``."""
    if L * _layer_bytes(P, B, taped) <= TAPE_BYTES:
        return None
    return max(2, math.isqrt(L))


def _layer_bytes(P: int, B: int, taped: int = 0) -> int:
    """float64 bytes one layer keeps on the full tape: its input state (K, m, ls: B^2 + 2B) and
    ``taped`` internal states (each counted with one enclosing residual's cross moments, B^2 +
    B); the recorded layers' rows are in :func:`memory_estimate`."""
    state = B * B + 2 * B
    return 8 * P * (state + taped * (state + B * B + B))


def _tape_bytes(L: int, P: int, B: int, chunk: int | None, taped: int = 0) -> int:
    """The tape's peak: every layer, or (chunk) one state per chunk plus a chunk's tape."""
    if chunk is None:
        return L * _layer_bytes(P, B, taped)
    return (L // chunk + 1) * 8 * P * (B * B + 2 * B) + chunk * _layer_bytes(P, B, taped)


def _slots(local, n: int) -> np.ndarray:
    """Row of each of n copies in a buffer of the wanted ``local`` ones (sorted, in [0, n)):
    its place among them, or len(local) for the others (the forward writes no row for them;
    the backward's buffers give them a last, shared row)."""
    slots = np.full(n, len(local))
    slots[np.asarray(local, dtype=int)] = np.arange(len(local))
    return slots


def _split(local, chunk: int, q: int, n: int):
    """:func:`_slots` for n copies as q chunks of ``chunk`` and the tail after them: per chunk the
    rows of its wanted copies in a buffer of m (the most any chunk has, at least 1), its next
    rows taken by its first other copies (every chunk's forward records m: the number is
    static) and m for the rest, shape (q, chunk); which of the q * m rows to keep; the tail's
    slots."""
    per = [[j - c * chunk for j in local if c * chunk <= j < (c + 1) * chunk] for c in range(q)]
    m = max([1] + [len(js) for js in per])
    slots, keep = np.full((q, chunk), m), []
    for c, js in enumerate(per):
        fill = [j for j in range(chunk) if j not in js][:m - len(js)]
        slots[c, js + fill] = np.arange(m)
        keep += [c * m + k for k in range(len(js))]
    tail = [j - q * chunk for j in local if j >= q * chunk]
    return slots, m, np.asarray(keep, dtype=int), _slots(tail, n - q * chunk)


def _trace(net, runs, L, grid, law0, B, kept, P, chunk, backward=True, unscaled=False):
    """(the jitted function (sweep values at each of the P points, then the lifted numbers of
    :func:`_lifted`, K0, m0, ls0) -> dict of arrays at the recorded layers (without
    ``backward``: the forward ones); whether each layer's block has a branch, known once
    traced). ``runs``: the L layers' blocks as
    :func:`_runs` gives them. ``unscaled``: the states handed between layers in true units
    (module docstring), and a layer finite only where the diagonal of every op's output state
    is within :data:`TRUE_RANGE` (the input state (K0, m0, ls0) given in true units)."""
    import jax
    import jax.numpy as jnp

    ns, f64 = jax_namespace(unscaled), jnp.float64
    sweeps = [v for op in net.walk() for v in vars(op).values() if isinstance(v, Sweep)]
    names = list(grid) + [s.name for s in sorted({s for s in sweeps if isinstance(s, _Lifted)},
                                                 key=lambda s: s.index)]
    branches: list[bool] = []  # per layer, filled while tracing (static)
    wanted, lowest, blocks = set(kept), lowest_block(kept), layers_of(net)
    gains = backward and _diagonal(net)

    def gain_in_range(g):
        """Whether a copy's gains ``g`` (:func:`with_gain`'s) are within :data:`TRUE_RANGE`;
        log-scaled, whether their logs are finite or -inf. The cotangents inside the copy's
        pull-back are checked only in a block with :func:`_unbounded_gains` (the checks cost a
        quarter of the call at 10^4 points): elsewhere each op's gain is bounded by its forward
        states, which the forward checked or bounded."""
        if unscaled:
            return (g >= TRUE_RANGE[0]) & (g <= TRUE_RANGE[1])
        return ~jnp.isnan(g) & (g < jnp.inf)  # (-inf: a gain of 0, exact)

    def no_gains():
        """The carry's sum of log gains and of log width ratios where it starts: (M, E, LW)."""
        return (jnp.full((P, B), 1.0 if unscaled else 0.0, f64), jnp.zeros((P, B), f64),
                jnp.zeros(P, f64))

    def with_gain(M, E, g):
        """The sum of log gains (M, E) with a copy's: in true units its gains g multiply M, and
        the binary exponent moves to E (frexp: no log per copy, which took a sixth of the
        call at 10^4 points); log-scaled, g is the log gain, added to M (E stays 0)."""
        if not unscaled:
            return M + g, E
        M, e = jnp.frexp(M * g)
        return M, E + e

    def log_gains(M, E):
        """The sum of log gains that (M, E) hold."""
        return (jnp.log(M) if unscaled else M) + E * np.log(2.0)

    def unit_cotangent():
        """G = I at a copy's output (K, m, ls), from which :func:`_diagonal` nets' backward
        laws give the copy's gains."""
        return (jnp.broadcast_to(jnp.eye(B), (P, B, B)).astype(f64), jnp.zeros((P, B), f64),
                jnp.zeros((P, B), f64))

    def state(cls, K, m, ls, **extra):
        """A state of the fixed shapes (P, B, B), (P, B) and dtype (a scan's carry keeps them)."""
        return cls(K=jnp.broadcast_to(K, (P, B, B)).astype(f64),
                   m=jnp.broadcast_to(m, (P, B)).astype(f64),
                   ls=jnp.broadcast_to(ls, (P, B)).astype(f64), **extra)

    def finite(s, guard=None):
        """Whether ``s`` is finite; in true units, and every diagonal entry of ``s`` and of the
        states ``guard`` checks (:class:`_Guard`) within range (forward: :func:`_checked_range`,
        the checked inner states at log scale 0; backward: :data:`TRUE_RANGE`), all in one
        reduction (the output's range in a reduction of its own measured ~3 ns per point-layer
        more on Pre-LN erf)."""
        if not unscaled:
            return jnp.all(jnp.isfinite(s.K)) & jnp.all(jnp.isfinite(s.ls))
        bounds = _checked_range() if guard.forward else None
        ok = jnp.where(np.eye(B, dtype=bool), _within(s.K, bounds), jnp.isfinite(s.K))
        for t in guard.checked:
            inside = _within(ns.xp.diagonal(t.K), bounds)
            ok = ok & (inside & (t.ls == 0) if guard.forward else inside)[..., None]
        return jnp.all(ok)

    def as_carried(s):
        """The state a law returned, as the next layer takes it: unit diagonal (log scale in
        ``ls``), or in true units (``ls`` folded in)."""
        if not unscaled:
            return to_unit_diagonal(s, ns)
        e = jnp.exp(s.ls)
        return s.replace(K=s.K * e[..., :, None] * e[..., None, :], m=s.m * e, ls=unit())

    def unit():
        """A log scale of 0 that XLA knows to be 0 (a carried one it does not)."""
        return jnp.zeros((P, B), f64)

    def taken(x):
        """A carried state (K, m, ls) as a law takes it."""
        return (x[0], x[1], unit()) if unscaled else x

    def program(values, K0, m0, ls0):
        ctx = Context(ns, ("point",), params={id(s): (s, values[names.index(s.name)])
                                              for s in sweeps})

        def forward(blk, name, law, x, tape=None):
            """The layer's output (K, m, ls) from its input ``x``; its record (the same, the
            branch's K and ls, finite); the output's law; whether it has a branch. The block's
            internal states go to ``tape`` (a dict) when one is given."""
            found: dict = {}
            s = Moments(*taken(x), law=law)
            guard = _Guard(s) if unscaled else None
            out = blk.theory_forward(s, ctx.block(name, tape, guard=guard), found)
            if unscaled:
                guard.drop(out)
            out = as_carried(out)
            f = found.get("branch")
            fK, fls = ((jnp.full((P, B, B), np.nan, f64), jnp.full((P, B), np.nan, f64))
                       if f is None else (jnp.broadcast_to(f.K, (P, B, B)),
                                          jnp.broadcast_to(f.ls, (P, B))))
            out = state(Moments, out.K, out.m, out.ls, law=out.law)
            y = (out.K, out.m, out.ls)
            return y, (*y, fK, fls, finite(out, guard)), out.law, f is not None

        def pull_back(blk, name, law, x, tape, g, lw, log_g, recording=True, checked=True):
            """The cotangent at the layer's input from ``g`` at its output (``log_g``: its
            log diagonal, the previous step's record), the log width after it, and its record
            (log gradient diagonal, weight gradients (NaN unless ``recording``), finite; None
            unless ``checked``); the block's internal states from ``tape`` (its forward's), or
            recomputed (None). Not ``checked`` (a gain's pull-back), the log diagonal is the
            laws' cotangent's, before it is carried (log-scaled, its unit diagonal would take
            a second log per entry: a quarter of the relu resnet's call at 10^4 points)."""
            sink = WeightGrads(ns).at(recording)
            sink.log_width = lw
            g = Cotangent(*taken(g))
            sink.known[id(g.K), id(g.ls)] = log_g  # a Dense at the block's output reads it
            guard = _Guard() if unscaled and checked else None
            g = blk.theory_backward(Moments(*taken(x), law=law), g,
                                    ctx.block(name + " (backward)", tape, sink, guard))
            uncarried = None if checked else _log_diag(g, ns)
            g = as_carried(g)
            g = state(Cotangent, g.K, g.m, g.ls)
            log_g = _log_diag(g, ns) if checked else jnp.broadcast_to(uncarried, (P, B))
            return ((g.K, g.m, g.ls), jnp.broadcast_to(sink.log_width, (P,)).astype(f64),
                    log_g, (log_g, sink.take((P, B)), finite(g, guard) if checked else None))

        def run(blk, name, law, x, first, n):
            """Forward over n copies of ``blk`` (layers first .. first + n - 1) from ``x``: the
            end state, the records at the recorded layers, finite per layer, and the backward
            over the same copies from the one that makes layer ``lowest`` on (a function of the
            carried cotangent: the carry; the rows; the lowest layer whose block it ran, or
            None if none)."""
            skeleton: list = []  # the tape's structure, the same for every copy (static)
            internal = _host_laws(blk)
            inner = gains and unscaled and _unbounded_gains(blk)  # (its pull-back checked)

            def stepper(recording, pulled=True):
                """One copy forward from the carry ``c``: (its output, (c, its tape, its
                record)). With ``gains``, the carry also holds the sums of log gains (M, E:
                :func:`with_gain`) and of log width ratios (LW) since the last recorded copy
                (from layer ``lowest`` on), and the copy's backward law pulls the unit
                cotangent back from its output (unless not ``pulled``: a copy below that
                layer): its gains join (M, E), its width ratio LW, its record gains the sums
                (its segment's), and the weight gradients at a unit cotangent (NaN unless
                ``recording``: a recorded copy, whose record closes the segment and whose
                carry starts the next), and its finite flag the gains'."""
                @jax.jit  # (traced once: eval_shape and the loops below reuse its jaxpr, which
                # XLA inlines; a Pre-LN block's forward law was traced 7 times per program, 3 now)
                def one(c, _):
                    tape = {} if internal else None
                    y, rec, _, _ = forward(blk, name, law, c[:3], tape)
                    if not gains:
                        leaves, rebuild = _pack(tape)
                        skeleton[:] = [rebuild]
                        return y, (c, leaves, rec)
                    if not pulled:  # (no record is kept below: its finite flag alone)
                        return (*y, *c[3:]), (c, [], rec)
                    (gK, _, _), lw, log_gain, (_, wg, okb) = pull_back(
                        blk, name, law, c[:3], tape, unit_cotangent(), jnp.zeros(P, f64),
                        jnp.zeros((P, B), f64), recording, checked=inner)
                    g = jnp.diagonal(gK, axis1=-2, axis2=-1) if unscaled else log_gain
                    M, E = with_gain(*c[3:5], g)
                    LW = c[5] + lw
                    ok = rec[5] & jnp.all(gain_in_range(g))
                    ok = ok & okb if inner else ok
                    segment = (log_gains(M, E), LW)  # (a recorded copy closes its segment)
                    carry = no_gains() if recording else (M, E, LW)
                    return (*y, *carry), (c, [], rec[:5] + segment + (wg, ok))
                return one

            one = stepper(True)
            one_plain = stepper(False) if gains else one  # (copies between recorded ones)

            def forward_scan(c, slots, count, tape=True, steps=(one, one_plain)):
                """``one`` over the copies of ``slots`` from ``c``: the end state; the records
                of the ``count`` kept copies (those with slots[i] < count, exactly ``count``:
                :func:`_split`; copy i's to row slots[i] of a carried buffer); per copy finite
                and, with ``tape``, its input state and tape. The copies between two kept ones
                run in a loop without the record (module docstring: the branch's state, which
                the laws otherwise fuse away, is then never built)."""
                shapes = ((B, B), (B,), (B,), (B, B), (B,))  # K, m, ls; the branch's K, ls
                if gains:  # a segment's log gains and widths; unit weight gradients
                    shapes += ((B,), (), (B,))
                ends = np.cumsum([math.prod(shape) for shape in shapes])
                slots = jnp.asarray(slots)
                n_copies = slots.shape[0]
                kept = jnp.nonzero(slots < count, size=count)[0]
                saved = jax.eval_shape(lambda c: one(c, None)[1][:2], c) if tape else ()
                taken = (jax.tree_util.tree_map(
                    lambda a: jnp.zeros((n_copies,) + a.shape, a.dtype), saved),
                    jnp.zeros(n_copies, bool))

                def copy(i, c, taken, step=steps[0]):  # copy i: its output, record; its input,
                    def tape_write(a, v):  # tape, finite (named: the --ops benchmark counts
                        return a.at[i].set(v)  # by name)

                    y, (x, leaves, rec) = step(c, None)
                    saved, ok = taken
                    if tape:
                        saved = jax.tree_util.tree_map(tape_write, saved, (x, leaves))
                    return y, rec, (saved, ok.at[i].set(rec[-1]))

                def plain(i, carry):
                    y, _, taken = copy(i, *carry, step=steps[1])
                    return y, taken

                def row(carry, j):  # the copies before kept copy j, then j and its record
                    c, taken, buf, i = carry
                    if count < n_copies:  # (every copy kept: no loop, whose entry costs)
                        c, taken = jax.lax.fori_loop(i, j, plain, (c, taken))
                    c, rec, taken = copy(j, c, taken)
                    line = jnp.concatenate([r.reshape(P, -1) for r in rec[:-1]], axis=1)
                    return (c, taken, buf.at[slots[j]].set(line), j + 1), None

                buf, i = jnp.zeros((count, P, ends[-1]), f64), jnp.zeros((), kept.dtype)
                if count:
                    (c, taken, buf, i), _ = jax.lax.scan(row, (c, taken, buf, i), kept)
                if count < n_copies:  # the copies after the last kept one
                    c, taken = jax.lax.fori_loop(i, n_copies, plain, (c, taken))
                saved, ok = taken
                rec = tuple(part.reshape((count, P) + shape) for part, shape in
                            zip(jnp.split(buf, ends[:-1], axis=2), shapes))
                ins, leaves = saved if tape else (None, None)
                return c, rec, ins, leaves, ok

            outs = [l - first for l in range(first, first + n) if l in wanted]  # and weights
            k = min(max(lowest - first, 0), n)  # the copies below k: no recorded row needs them
            if gains:  # (the backward done by the forward: no tape, no reverse scan)
                slots, ok_below = _slots(outs, n), []
                if k:
                    below = stepper(False, pulled=False)
                    x, _, _, _, ok_below = forward_scan(x, slots[:k], 0, False, (below, below))
                    ok_below = [ok_below]
                y, rec, _, _, ok = forward_scan(x, slots[k:], len(outs), tape=False)
                return y, rec, jnp.concatenate(ok_below + [ok]), None
            grads = [s - first + 1 for s in range(first - 1, first + n - 1) if s in wanted]
            recorded = np.isin(np.arange(n), outs + grads)  # copies whose backward is kept
            light = not recorded.all()

            def step(carry, xs):
                """One copy's backward; where its records are not kept (``light``: a flag per
                copy), without the weight gradients (a third of the time at 10^4 points)."""
                c, leaves, keep = xs

                def back(recording=True):  # a tape of its own: the backward pops its entries
                    tape = skeleton[0](leaves) if internal else None
                    return pull_back(blk, name, law, c, tape, *carry, recording=recording)

                g, lw, log_g, rec = (jax.lax.cond(keep, back, lambda: back(False)) if light
                                     else back())
                return (g, lw, log_g), rec

            def backward_scan(carry, ins, gslots, gcount, wslots, wcount):
                """``step`` back over the copies of ``ins`` (input states, tapes, kept): the
                carry; the log gradient diagonals of the ``gcount`` kept copies and the weight
                gradients of the ``wcount`` ones (copy i's to rows gslots[i], wslots[i]; a last
                row takes the others', and rows past a chunk's own kept copies, :func:`_split`,
                are dropped); finite."""
                bufs = (jnp.zeros((gcount + 1, P, B), f64), jnp.zeros((wcount + 1, P, B), f64))

                def body(cb, xs):
                    carry, lg, wg = cb
                    *xs, gs, ws = xs
                    carry, (a, b, okb) = step(carry, xs)
                    return (carry, lg.at[gs].set(a), wg.at[ws].set(b)), okb

                (carry, lg, wg), okb = jax.lax.scan(
                    body, (carry, *bufs), (*ins, jnp.asarray(gslots), jnp.asarray(wslots)),
                    reverse=True)
                return carry, (lg[:gcount], wg[:wcount], okb)
            q = 0 if chunk is None else n // chunk

            def finite_below(okb, below):  # (copies not pulled back are finite)
                return jnp.concatenate([jnp.ones(below, bool), okb])

            if k == n:  # (every copy below: not pulled back)
                def skipped(carry):
                    none = jnp.zeros((0, P, B), f64)
                    return carry, (none, none, jnp.ones(n, bool)), None

            if q < 2:  # the full tape: the input state of every copy the backward pulls back
                taped = k if backward else n  # (the copies below: a loop without the tape,
                ok_below = None  # and no record, which no layer below ``lowest`` has)
                if 0 < taped < n:
                    x, _, _, _, ok_below = forward_scan(x, _slots(outs, n)[:taped], 0, False)
                y, rec, ins, leaves, ok = forward_scan(
                    x, _slots(outs, n)[taped % n:], len(outs), backward and taped < n)
                if ok_below is not None:
                    ok = jnp.concatenate([ok_below, ok])
                ins = (ins, leaves, jnp.asarray(recorded[k:]))

                def back(carry):
                    carry, (lg, wg, okb) = backward_scan(
                        carry, ins, _slots(grads, n)[k:], len(grads), _slots(outs, n)[k:],
                        len(outs))
                    return carry, (lg, wg, finite_below(okb, k)), first + k

                return y, rec, ok, skipped if k == n else back
            # checkpointed: the input state of each chunk; a chunk's states recomputed backward
            slots, m, keep, tail = _split(outs, chunk, q, n)

            def chunk_forward(c, chunk_slots):
                y, rec, _, _, ok = forward_scan(c, chunk_slots, m, tape=False)
                return y, (c, rec, ok)

            y, (starts, rec, ok) = jax.lax.scan(chunk_forward, x, jnp.asarray(slots))
            rec = tuple(a.reshape((-1,) + a.shape[2:])[keep] for a in rec)
            ok, ins = ok.reshape(-1), None
            if n > q * chunk:
                y, rec_t, ins, leaves, ok_t = forward_scan(y, tail, len(outs) - len(keep))
                ins = (ins, leaves, jnp.asarray(recorded[q * chunk:]))
                rec = tuple(jnp.concatenate(pair) for pair in zip(rec, rec_t))
                ok = jnp.concatenate([ok, ok_t])
            gslots, gm, gkeep, gtail = _split(grads, chunk, q, n)

            def chunk_backward(carry, xs):
                c, gs, ws, kept_ = xs
                _, (states, leaves, _) = jax.lax.scan(one, c, None, length=chunk)
                return backward_scan(carry, (states, leaves, kept_), gs, gm, ws, m)

            def back(carry):
                kt, kc = max(k - q * chunk, 0), min(k // chunk, q)  # (in the tail; chunks)
                tail_rows = None
                if ins is not None:  # the last copies first
                    carry, (lg, wg, okb) = backward_scan(
                        carry, jax.tree_util.tree_map(lambda a: a[kt:], ins), gtail[kt:],
                        len(grads) - len(gkeep), tail[kt:], len(outs) - len(keep))
                    tail_rows = (lg, wg, finite_below(okb, kt))
                if kc == q:  # (every chunk below: only the tail pulled back)
                    none = jnp.zeros((0, P, B), f64)
                    got = (none, none, jnp.ones(q * chunk, bool))
                    stop = first + q * chunk + kt
                else:  # (a chunk that holds copy k is pulled back whole)
                    carry, (lg, wg, okb) = jax.lax.scan(
                        chunk_backward, carry,
                        (jax.tree_util.tree_map(lambda a: a[kc:], starts),
                         jnp.asarray(gslots[kc:]), jnp.asarray(slots[kc:]),
                         jnp.asarray(recorded[:q * chunk].reshape(q, chunk)[kc:])),
                        reverse=True)
                    got = (lg.reshape((-1, P, B))[gkeep - kc * gm],
                           wg.reshape((-1, P, B))[keep - kc * m],  # (its copies below k not
                           finite_below(okb.reshape(-1)[k - kc * chunk:], k))  # checked)
                    stop = first + kc * chunk
                if tail_rows is not None:
                    got = tuple(jnp.concatenate(pair) for pair in zip(got, tail_rows))
                return carry, got, stop

            return y, rec, ok, skipped if k == n else back

        start = state(Moments, K0, m0, ls0)
        x = (start.K, start.m, start.ls)
        if gains:
            x += no_gains()
        law, recs, oks, backs = law0, [], [], []
        branches.clear()  # a retrace (new grid size) fills it again
        for blk, first, n in runs:
            done, settled, branch = 0, False, False
            while done < n:
                name = f"layer {first + done} {type(blk).__name__}"
                if settled:  # the last copy handed on the law it took: scan the others
                    out_law, count = law, n - done
                elif done == MAX_UNROLLED:
                    raise UnsupportedComposition(
                        f"net > {name}: the stream's law has not settled after {MAX_UNROLLED} "
                        "copies of the block (a scan needs it fixed); use engine='numpy'")
                else:  # one copy (traced here for its law and branch; the values: by run)
                    _, _, out_law, branch = forward(blk, name, law, x[:3])
                    count = 1
                y, rec, ok, back = run(blk, name, law, x, first + done, count)
                recs.append(rec)
                oks.append(ok)
                backs.append(back)
                branches.extend([branch] * count)
                if isinstance(out_law, BatchNormed) and first + done + count <= L:
                    raise UnsupportedComposition(  # the law holds values, and the carry between
                        # layers holds no relu gate (the next layer's Act would need both)
                        f"net > {name}: a layer hands a BatchNorm output to the next layer, "
                        "whose law (the batch covariance) and relu gate the compiled engine "
                        "does not carry between layers; keep the BatchNorm and the ops after it "
                        "in one block (a Residual or a Repeat of a Serial), or use "
                        "engine='numpy'")
                settled = done + count < n and out_law == law  # (a BatchNormed one: refused)
                law, done = out_law, done + count
                x = y
        head = [(start.K[None], start.m[None], start.ls[None])] if 0 in wanted else []
        K, m, ls = (jnp.concatenate([r[i] for r in head + recs]) for i in range(3))
        fK, fls = (jnp.concatenate([r[i] for r in recs]) for i in (3, 4))
        out = {"K": K, "m": m, "ls": ls, "fK": fK, "fls": fls, "ok": jnp.concatenate(oks)}
        if not backward:
            return out
        if gains:  # each layer's log gradient: the segments above it, summed from the top
            S, LW, wg = (jnp.concatenate([r[i] for r in recs]) for i in (5, 6, 7))
            tails = log_gains(x[3], x[4]), x[5]  # (the copies above the last recorded layer)

            def above(seg, tail):  # per recorded layer >= 1; all of them (layer 0's)
                if not len(seg):
                    return seg, tail
                rows = jnp.cumsum(jnp.concatenate([seg[1:], tail[None]])[::-1], axis=0)[::-1]
                return rows, seg[0] + rows[0]

            (gain, all_gains), (width, all_widths) = above(S, tails[0]), above(LW, tails[1])
            grad = jnp.concatenate(([all_gains[None]] if 0 in wanted else []) + [gain])
            below = log_ratio(blocks[:lowest - 1], ctx)  # (the blocks not pulled back)
            return {**out, "grad": grad, "wgrad": wg + gain + 2 * width[..., None],
                    "log_width": all_widths - below}
        g0 = state(Cotangent, jnp.eye(B), jnp.zeros(B), jnp.zeros(B))
        carry = ((g0.K, g0.m, g0.ls), jnp.zeros(P, f64), _log_diag(g0, ns))
        back, stop = [], L + 1
        for step_back in reversed(backs):
            carry, got, ran = step_back(carry)
            back.insert(0, got)
            stop = stop if ran is None else ran
        grad, wgrad, okb = (jnp.concatenate([r[i] for r in back]) for i in range(3))
        if L in wanted:  # layer L: G = I
            grad = jnp.concatenate([grad, jnp.zeros((1, P, B), f64)])
        # log(n_0 / n_L): the blocks below the lowest one pulled back by their ratios
        log_width = carry[1] - log_ratio(blocks[:stop - 1], ctx)
        return {**out, "grad": grad, "wgrad": wgrad, "log_width": log_width, "okb": okb}

    return jax.jit(program), branches


class _Slot(int):
    """Where an array of a packed tape goes (:func:`_pack`)."""


def _pack(tape):
    """(leaves, rebuild): the arrays of a block's tape (states of dicts, lists and dataclasses)
    in order, and the function that puts arrays of the same shapes back in its structure."""
    leaves: list = []

    def slot(o):
        leaves.append(o)
        return _Slot(len(leaves) - 1)

    skeleton = _map_leaves(tape, lambda o: slot(o) if hasattr(o, "shape") and hasattr(o, "dtype")
                           else o)  # a traced or a numpy array
    return leaves, lambda values: _map_leaves(
        skeleton, lambda o: values[o] if isinstance(o, _Slot) else o)


def _map_leaves(o, leaf):
    """``o`` with ``leaf`` applied to everything below its dicts, lists, tuples (named too) and
    dataclass fields (copied, frozen ones included)."""
    if isinstance(o, dict):
        return {k: _map_leaves(v, leaf) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        items = [_map_leaves(v, leaf) for v in o]
        return type(o)(*items) if hasattr(o, "_fields") else type(o)(items)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        new = copy.copy(o)
        for f in dataclasses.fields(o):
            object.__setattr__(new, f.name, _map_leaves(getattr(o, f.name), leaf))
        return new
    return leaf(o)


def _check_finite(out, net, blocks, inputs, backward):
    """:class:`OverflowInTheory` at the first layer whose state is not finite somewhere on the
    grid (forward from the input, then backward from the output, as the numpy engine meets
    them). The numpy engine, rerun on the net (it stops at its first overflow), names the op
    where it overflows too; where it does not, the compiled engine's own limits are named (a
    traced law takes no true scale below :data:`TRACED_LS_MIN`: XLA flushes subnormals to zero)."""
    forward = "forward" if "okb" in out or not backward else "forward (or a block's gain)"
    for key, direction, pick in (("ok", forward, min), ("okb", "backward", max)):
        if key not in out:  # forward only
            continue
        bad = np.flatnonzero(~np.asarray(out[key]))  # per layer: finite at every point
        if bad.size:
            l = pick(bad) + 1
            try:
                theory(net, inputs, layers=[0], backward=backward)
            except OverflowInTheory as e:
                raise OverflowInTheory(f"{e} (engine='jax' stopped at layer {l}; engine='numpy' "
                                       "rerun to name the op)") from None
            raise OverflowInTheory(
                f"net > layer {l} {type(blocks[l - 1]).__name__}: the {direction} law produced "
                "a non-finite value where engine='numpy' does not (a true scale q below "
                f"{np.exp(2 * TRACED_LS_MIN):.2g}, near the subnormals XLA flushes to zero; or an "
                "op outside its valid range): use engine='numpy'")


def _arrays(out, branches, kept, shape, B):
    """:func:`~sigprop.engines.theory.variables` from the per-point arrays of a run."""
    def layer_first(x):  # (layers, points, ...) -> (layers, *grid, ...)
        x = np.asarray(x)
        return x.reshape(x.shape[:1] + shape + x.shape[2:])

    grad = wgrad = None
    if "grad" in out:  # (not forward only)
        grad = layer_first(out["grad"])
        log_width = np.asarray(out["log_width"]).reshape(shape)[..., None]
        wgrad = layer_first(out["wgrad"]) - 2 * log_width
        if kept[0] == 0:  # the input: no weights
            wgrad = np.concatenate([np.full((1,) + shape + (B,), np.nan), wgrad])
    has = [l > 0 and branches[l - 1] for l in kept]
    with_branch = np.asarray([branches[l - 1] for l in kept if l > 0], dtype=bool)
    fK = fls = None
    if any(has):
        fK, fls = (layer_first(out[k])[with_branch] for k in ("fK", "fls"))
    return variables(layer_first(out["K"]), layer_first(out["m"]), layer_first(out["ls"]),
                     grad, wgrad, fK, fls, has)

