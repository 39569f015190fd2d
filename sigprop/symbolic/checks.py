"""Helpers of the symbolic-versus-theory checks: which activations to run, random sweeps,
relative errors, the theory of a symbolic block, and symbolic results as a dataset."""

from __future__ import annotations

import numbers

import numpy as np
import sympy
import xarray as xr

from sigprop import schema
from sigprop.engines.theory import theory
from sigprop.errors import ConfigError, UnsupportedComposition
from sigprop.kernels.gaussian import get_activation
from sigprop.ops import Op, Repeat
from sigprop.provenance import make_attrs
from sigprop.state.params import Sweep
from sigprop.symbolic.hyperparams import check_names, op_symbols, substitute
from sigprop.symbolic.maps import backward_map, block_map
from sigprop.symbolic.symbols import C_AB, G_A, M_A, M_B, Q_A, Q_B, SYMBOLS, canonical_symbols

CLOSED_FORM_ACTS = ("linear", "relu", "erf", "gelu")
INTEGRAL_ACTS = ("tanh", "silu")


def available_acts(acts=None, quick: bool = False) -> tuple[str, ...]:
    """The activations (closed-form ones only when ``quick``) that sigprop.kernels.gaussian has."""

    if acts is None:
        acts = CLOSED_FORM_ACTS if quick else CLOSED_FORM_ACTS + INTEGRAL_ACTS
    out = []
    for name in acts:
        try:
            get_activation(name)
        except ConfigError:
            continue
        out.append(name)
    return tuple(out)


def random_sweeps(names, seed: int = 0, lo: float = 0.5, hi: float = 1.6, n: int = 2) -> dict:
    """{name: Sweep of n random values in (lo, hi)} (fixed seed): a grid of random points."""
    rng = np.random.default_rng(seed)
    return {name: Sweep(name, tuple(np.round(rng.uniform(lo, hi, n), 6))) for name in names}


def rel_error(pred, actual) -> float:
    """max |pred - actual| / |actual| over every point (absolute where actual is 0; inf when
    the shapes disagree or a value is NaN)."""

    if isinstance(pred, xr.DataArray) and isinstance(actual, xr.DataArray):
        pred = pred.broadcast_like(actual).transpose(*actual.dims)
    pred, actual = np.asarray(pred, dtype=float), np.asarray(actual, dtype=float)
    try:
        diff = np.abs(np.broadcast_to(pred, np.broadcast_shapes(pred.shape, actual.shape))
                      - actual)
        err = np.where(actual == 0, diff, diff / np.where(actual == 0, 1.0, np.abs(actual)))
    except ValueError:
        return float("inf")
    return float(np.max(err)) if np.all(np.isfinite(err)) else float("inf")


def theory_of(block: Op, depth: int, inputs, **values):
    """sp.theory of ``Repeat(block, depth)`` with ``values`` substituted into the block's symbols.

    ``block`` is a symbolic block (e.g. from :func:`preset_block`); each value is a number or a
    ``Sweep`` (one grid dim per sweep, the whole grid in one vectorised call).
    """

    net = substitute(block, values)
    left = sorted(map(str, op_symbols(net)))
    if left:  # (the numeric engine met them as a TypeError deep in a law)
        raise ConfigError("theory_of values", f"none for {left}", "a value for each symbol of "
                          "the block")
    return theory(Repeat(net, depth), inputs)


def symbolic_dataset(block: Op, depth: int, inputs, **values):
    """The recursion of :func:`block_map` / :func:`backward_map`, iterated numerically.

    Returns a Dataset in the common schema (``q, log_q, mean, var, corr, grad_q``; attrs
    ``kind='symbolic'``) for ``Repeat(block, depth)`` on ``inputs`` with the block's symbols set
    to ``values`` (numbers), so that ``sp.compare`` can set the symbolic face beside the others.
    Pairs of inputs use the two-input map. Plain float64 (no log-space carrying): meant for
    moderate depths, and for integral-free maps (closed-form activations).
    """
    from sigprop.engines.montecarlo import check_int

    depth = check_int("depth", depth, 1)
    B = inputs.n
    n_in = 2 if B > 1 else 1
    first = {"mean": any(x != 0 for x in inputs.mean), "gaussian": inputs.law == "gaussian"}
    maps = [(block_map(block, n_in, **first, simplify=False),
             backward_map(block, 1, **first, simplify=False)["grad_q_a"])]
    # the law a block hands on: a mean where it gives a centred stream one (a centred map drops
    # it), and Gaussian features only where the theory says so
    later = {"mean": first["mean"] or sympy.simplify(maps[0][0]["m_a"]) != 0, "gaussian": False}
    if later != first:
        try:
            fwd = block_map(block, n_in, **later, simplify=False)
        except UnsupportedComposition:  # the block needs Gaussian features: still so after it?
            theory(Repeat(substitute(block, values), 2), inputs, layers=[2], backward=False)
            later["gaussian"] = True
            fwd = block_map(block, n_in, **later, simplify=False)
        maps.append((fwd, backward_map(block, 1, **later, simplify=False)["grad_q_a"]))
    args = (Q_A, Q_B, M_A, M_B, C_AB, G_A)
    check_names(block, values, "symbolic_dataset value")
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ConfigError(f"symbolic_dataset {k}", v, "a number (one point: sweep it with "
                              "sp.theory)")
    at = {SYMBOLS.get(k, sympy.Symbol(k)): sympy.Float(v) for k, v in values.items()}

    def fn(expr):
        expr = canonical_symbols(expr).xreplace(at)
        if expr.has(sympy.Integral):
            raise UnsupportedComposition("symbolic_dataset: the map holds a Gaussian integral "
                                         "(non-closed-form activation); use sp.theory")
        left = expr.free_symbols - set(args)
        if left:
            raise ConfigError("symbolic_dataset values", f"none for {sorted(map(str, left))}",
                              "a number for each of the block's symbols (name=1.0)")
        return sympy.lambdify(args, expr, modules=["scipy", "numpy"])

    fns = [(fn(fwd["q_a"]), fn(fwd["m_a"]), fn(bwd), fn(fwd["c_ab"]) if n_in == 2 else None)
           for fwd, bwd in maps]
    q = np.empty((depth + 1, B))
    m = np.empty((depth + 1, B))
    c = np.empty((depth + 1, B, B))
    q[0], m[0], c[0] = inputs.q, inputs.mean, inputs.corr
    iu = np.triu_indices(B, 1)
    for k in range(depth):
        f_q, f_m, _, f_c = fns[min(k, len(fns) - 1)]  # (the first block's on the inputs' law)
        qa, ma = q[k], m[k]
        q[k + 1] = f_q(qa, qa, ma, ma, 1.0, 1.0)
        m[k + 1] = f_m(qa, qa, ma, ma, 1.0, 1.0)
        c[k + 1] = np.eye(B)
        if f_c is not None:
            a, b = iu
            cab = f_c(qa[a], qa[b], ma[a], ma[b], c[k][a, b], 1.0)
            c[k + 1][a, b] = c[k + 1][b, a] = cab
    g = np.empty((depth + 1, B))
    g[depth] = 1.0
    for k in range(depth - 1, -1, -1):
        g[k] = fns[min(k, len(fns) - 1)][2](q[k], q[k], m[k], m[k], 1.0, g[k + 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        data = {"q": q, "log_q": np.log(q), "mean": m, "var": q - m**2,
                "log_var": np.log(q - m**2), "corr": c, "grad_q": g,
                "log_grad_q": np.log(g)}  # the schema's variables but the branch's
    ds = xr.Dataset({k: (schema.VARIABLES[k].dims, v) for k, v in data.items()},
                    coords={"layer": np.arange(depth + 1), "input": np.arange(B),
                            "input_b": np.arange(B)})
    config = {"net": Repeat(substitute(block, values), depth).to_dict(),
              "inputs": inputs.to_dict()}
    ds.attrs = make_attrs("symbolic", config, "sympy")
    return ds
