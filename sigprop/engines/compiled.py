"""Compiled infinite-width theory engine: ``sp.theory(net, inputs, engine="jax")``.

The same laws as :mod:`sigprop.engines.theory`, not a copy of them: each block's
``theory_forward`` / ``theory_backward`` is traced once with the jax namespace
(:func:`sigprop.state.ns.jax_namespace`, float64) into the body of a ``lax.scan`` over the
consecutive copies of that block (the blocks of a ``Repeat`` are one op, so one trace). The
sweep grid is flattened to one dim of P points, which the laws broadcast over as they do over
the numpy engine's grid dims (``vmap`` instead measured no faster). Forward, the scan keeps every layer's
state (unit diagonal, scale in ``ls``, :func:`~sigprop.state.moments.to_unit_diagonal`) and
branch output; backward, a reverse scan pulls the cotangent back from each layer's input state
(the block's forward recomputed inside its backward law, as the numpy engine's checkpointed
segments do) and reports the weight gradients to the same sink
(:class:`~sigprop.engines.theory.WeightGrads`). The Dataset is assembled by the numpy engine's
own functions (:func:`~sigprop.engines.theory.variables`, :func:`~sigprop.engines.theory.dataset`).

A scan body needs the same static structure in and out: the law of the stream
(:class:`~sigprop.state.moments.Law`) is static, so the first copies of a block run unrolled
until the law they hand on is the law they took (one copy, or two when the inputs' law differs
from the stream's). Values are unknown while tracing, so a law that would raise on a value
(:func:`~sigprop.state.moments.true_moments` beyond float64) gives NaN there instead, and the
engine reports the first layer with a non-finite state as :class:`OverflowInTheory`, as the
numpy engine does.

Supported: :data:`SUPPORTED` ops and the activations with closed-form kernels; anything else is
refused before tracing (:class:`UnsupportedComposition`, naming the op). The compiled function
is cached per (net, inputs' law, B, recorded layers), so a second call runs without tracing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from sigprop.engines import memory
from sigprop.engines.theory import (
    WeightGrads,
    _check_args,
    _log_diag,
    _recorded,
    dataset,
    memory_estimate,
    variables,
)
from sigprop.errors import OverflowInTheory, UnsupportedComposition
from sigprop.kernels.gaussian import get_activation
from sigprop.ops import (
    Act,
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
from sigprop.state.inputs import Inputs
from sigprop.state.moments import Cotangent, Moments, to_unit_diagonal
from sigprop.state.ns import jax_namespace
from sigprop.state.params import Context, Sweep

SUPPORTED = (Dense, Scale, FeatureAffine, Act, LayerNorm, RMSNorm, Residual, Serial, Repeat)
MAX_UNROLLED = 3  # copies of a block run before its scan, waiting for the stream's law to settle
CACHE_SIZE = 16  # compiled programs kept (each holds its XLA executable)
_CACHE: OrderedDict = OrderedDict()


def theory_compiled(net: Op, inputs: Inputs, *, layers=None, width=None):
    """:func:`sigprop.theory` (same arguments, same Dataset) with every law traced into one
    compiled function (module docstring); ``attrs['backend']`` is ``'jax'``."""
    _check_args(net, inputs)
    refuse_unsupported(net)
    jax = _jax()
    blocks = layers_of(net)
    L, B = len(blocks), inputs.n
    grid = sweeps_of(net)
    shape = tuple(len(s.values) for s in grid.values())
    kept = sorted(_recorded(layers, L))
    # every layer's state stays on the device (the backward's inputs): as if all were recorded
    memory.check(memory_estimate(L, L + 1, math.prod(shape), B),
                 f"the compiled theory of {L} layers x {math.prod(shape)} grid points x B = {B} "
                 "inputs", "split the grid (sigprop sweep --grid-chunk), or use the default "
                 "engine, which keeps sqrt(L) checkpoints")
    s0 = inputs.moments()
    points = [np.ravel(a) for a in np.meshgrid(*(np.asarray(s.values) for s in grid.values()),
                                                indexing="ij")]
    with _x64(jax):
        program, branches = _program(net, blocks, grid, s0.law, B, tuple(kept))
        out = jax.device_get(program(tuple(points), s0.K, s0.m, s0.ls))
    _check_finite(out, blocks)
    return dataset(net, inputs, kept, _arrays(out, branches, kept, shape, B), "jax", width)


def refuse_unsupported(net: Op, path: str = "net"):
    """:class:`UnsupportedComposition` naming the first op of ``net`` without a traced law."""
    hint = "use the default engine, sp.theory(net, inputs) (engine='numpy')"
    if not isinstance(net, SUPPORTED):
        raise UnsupportedComposition(
            f"{path}: {type(net).__name__} is not supported by the compiled theory engine "
            f"(engine='jax' traces {', '.join(c.__name__ for c in SUPPORTED)}); {hint}")
    if isinstance(net, Act) and get_activation(net.name)._closed is None:
        raise UnsupportedComposition(
            f"{path}: Act({net.name!r}) has no closed-form Gaussian kernel (its quadrature "
            f"chooses its rule by value, which a traced law cannot); {hint}")
    for i, kid in enumerate(net.children()):
        refuse_unsupported(kid, f"{path} > [{i}] {type(kid).__name__}")


def _jax():
    """jax; ImportError with the install hint when it is missing."""
    jax_namespace()
    import jax

    return jax


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
    for l, blk in enumerate(blocks, start=1):
        if runs and (runs[-1][0] is blk or runs[-1][0] == blk):
            runs[-1][2] += 1
        else:
            runs.append([blk, l, 1])
    return [tuple(r) for r in runs]


def _program(net, blocks, grid, law0, B, kept):
    """:func:`_trace`, cached (module docstring)."""
    key = (net, law0, B, kept)
    if key not in _CACHE:
        P = math.prod(len(s.values) for s in grid.values())
        _CACHE[key] = _trace(net, blocks, grid, law0, B, kept, P)
        if len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def _trace(net, blocks, grid, law0, B, kept, P):
    """(the jitted function (sweep values at each of the P points, K0, m0, ls0) -> dict of
    arrays, layer first; whether each layer's block has a branch, known once traced)."""
    import jax
    import jax.numpy as jnp

    ns, f64 = jax_namespace(), jnp.float64
    runs, names = _runs(blocks), list(grid)
    sweeps = [v for op in net.walk() for v in vars(op).values() if isinstance(v, Sweep)]
    branches: list[bool] = []  # per layer, filled while tracing (static)

    def state(cls, K, m, ls, **extra):
        """A state of the fixed shapes (P, B, B), (P, B) and dtype (a scan's carry keeps them)."""
        return cls(K=jnp.broadcast_to(K, (P, B, B)).astype(f64),
                   m=jnp.broadcast_to(m, (P, B)).astype(f64),
                   ls=jnp.broadcast_to(ls, (P, B)).astype(f64), **extra)

    def finite(s):
        return jnp.all(jnp.isfinite(s.K)) & jnp.all(jnp.isfinite(s.ls))

    def program(values, K0, m0, ls0):
        ctx = Context(ns, ("point",), params={id(s): (s, values[names.index(s.name)])
                                              for s in sweeps})

        def forward(blk, name, s):
            """The layer's output state, its record (branch K, ls; finite) and whether it has
            a branch, from its input state ``s``."""
            found: dict = {}
            out = to_unit_diagonal(blk.theory_forward(s, ctx.block(name), found), ns)
            f = found.get("branch")
            fK, fls = ((jnp.full((P, B, B), np.nan, f64), jnp.full((P, B), np.nan, f64))
                       if f is None else (jnp.broadcast_to(f.K, (P, B, B)),
                                          jnp.broadcast_to(f.ls, (P, B))))
            out = state(Moments, out.K, out.m, out.ls, law=out.law)
            return out, (out.K, out.m, out.ls, fK, fls, finite(out)), f is not None

        s = state(Moments, K0, m0, ls0, law=law0)
        branches.clear()  # a retrace (new grid size) fills it again
        segments, rows = [], []  # (block, first layer, count, input law); their stacked records
        for blk, first, n in runs:
            done, settled, branch = 0, False, False
            while done < n:
                name = f"layer {first + done} {type(blk).__name__}"
                if settled:  # the last copy handed on the law it took: scan the others

                    def body(carry, _, blk=blk, law=s.law, name=name):
                        out, rec, _ = forward(blk, name, Moments(*carry, law=law))
                        return (out.K, out.m, out.ls), rec

                    (K, m, ls), ys = jax.lax.scan(body, (s.K, s.m, s.ls), None, length=n - done)
                    segments.append((blk, first + done, n - done, s.law))
                    rows.append(ys)
                    branches.extend([branch] * (n - done))
                    s, done = Moments(K, m, ls, law=s.law), n
                    continue
                if done == MAX_UNROLLED:
                    raise UnsupportedComposition(
                        f"net > {name}: the stream's law has not settled after {MAX_UNROLLED} "
                        "copies of the block (a scan needs it fixed); use engine='numpy'")
                out, rec, branch = forward(blk, name, s)
                segments.append((blk, first + done, 1, s.law))
                rows.append(tuple(x[None] for x in rec))
                branches.append(branch)
                settled = out.law == s.law
                s, done = out, done + 1
        K, m, ls, fK, fls, ok = (jnp.concatenate([r[i] for r in rows]) for i in range(6))
        # every layer once (jax clamps an index past the end: a missing row would go unseen)
        assert K.shape[0] == len(blocks) == len(branches), (K.shape, len(blocks))
        s0 = state(Moments, K0, m0, ls0)
        K, m, ls = (jnp.concatenate([x0[None], x]) for x0, x in ((s0.K, K), (s0.m, m), (s0.ls, ls)))

        def backward(blk, name, law, x, g, lw, log_g):
            """The cotangent at the layer's input from ``g`` at its output (``log_g``: its
            log diagonal, the previous step's record), the log width after it, and its record
            (log gradient diagonal, weight gradients, finite)."""
            sink = WeightGrads(ns).at(True)
            sink.log_width = lw
            g = Cotangent(*g)
            sink.known[id(g.K), id(g.ls)] = log_g  # a Dense at the block's output reads it
            g = blk.theory_backward(Moments(*x, law=law), g,
                                    ctx.block(name + " (backward)", None, sink))
            g = to_unit_diagonal(g, ns)
            g = state(Cotangent, g.K, g.m, g.ls)
            log_g = _log_diag(g, ns)
            return ((g.K, g.m, g.ls), jnp.broadcast_to(sink.log_width, (P,)).astype(f64),
                    log_g, (log_g, sink.take((P, B)), finite(g)))

        g0 = state(Cotangent, jnp.eye(B), jnp.zeros(B), jnp.zeros(B))
        carry = ((g0.K, g0.m, g0.ls), jnp.zeros(P, f64), _log_diag(g0, ns))
        back = []
        for blk, first, n, law in reversed(segments):
            name = f"layer {first}" + (f"..{first + n - 1}" if n > 1 else "") + \
                f" {type(blk).__name__}"

            def step(carry, x, blk=blk, name=name, law=law):
                g, lw, log_g, rec = backward(blk, name, law, x, *carry)
                return (g, lw, log_g), rec

            inputs = tuple(a[first - 1:first - 1 + n] for a in (K, m, ls))
            carry, ys = jax.lax.scan(step, carry, inputs, reverse=True)
            back.insert(0, ys)
        grad, wgrad, okb = (jnp.concatenate([r[i] for r in back]) for i in range(3))
        grad = jnp.concatenate([grad, jnp.zeros((1, P, B), f64)])  # layer L: G = I
        rows_kept = np.asarray(kept)
        layers_kept = np.asarray([l - 1 for l in kept if l > 0], dtype=int)  # [] for layers=[0]
        return {"K": K[rows_kept], "m": m[rows_kept], "ls": ls[rows_kept],
                "grad": grad[rows_kept], "fK": fK[layers_kept], "fls": fls[layers_kept],
                "wgrad": wgrad[layers_kept], "log_width": carry[1], "ok": ok, "okb": okb}

    return jax.jit(program), branches


def _check_finite(out, blocks):
    """:class:`OverflowInTheory` at the first layer whose state is not finite somewhere on the
    grid (forward from the input, then backward from the output, as the numpy engine meets them)."""
    for key, direction, pick in (("ok", "forward", min), ("okb", "backward", max)):
        bad = np.flatnonzero(~np.asarray(out[key]))  # per layer: finite at every point
        if bad.size:
            l = pick(bad) + 1
            raise OverflowInTheory(
                f"net > layer {l} {type(blocks[l - 1]).__name__}: the {direction} law produced "
                "a non-finite value (an overflow; a true scale q below 2.2e-308, which XLA "
                "flushes to zero; or an op outside its valid range). engine='numpy' keeps "
                "subnormal scales and names the op of an overflow")


def _arrays(out, branches, kept, shape, B):
    """:func:`~sigprop.engines.theory.variables` from the per-point arrays of a run."""
    def layer_first(x):  # (layers, points, ...) -> (layers, *grid, ...)
        x = np.asarray(x)
        return x.reshape(x.shape[:1] + shape + x.shape[2:])

    wgrad = layer_first(out["wgrad"]) - 2 * np.asarray(out["log_width"]).reshape(shape)[..., None]
    if kept[0] == 0:  # the input: no weights
        wgrad = np.concatenate([np.full((1,) + shape + (B,), np.nan), wgrad])
    has = [l > 0 and branches[l - 1] for l in kept]
    with_branch = np.asarray([branches[l - 1] for l in kept if l > 0], dtype=bool)
    fK = fls = None
    if any(has):
        fK, fls = (layer_first(out[k])[with_branch] for k in ("fK", "fls"))
    return variables(layer_first(out["K"]), layer_first(out["m"]), layer_first(out["ls"]),
                     layer_first(out["grad"]), wgrad, fK, fls, has)

