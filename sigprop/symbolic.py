"""The symbolic face: sympy recursions obtained by running the ops' own theory laws.

Nothing here re-types a propagation law. A block's per-layer map is what its
``theory_forward`` / ``theory_backward`` return when they run over :data:`~sigprop.ns.SYMBOLIC`
on a :class:`~sigprop.moments.Moments` whose entries are the state symbols
(``q_a, m_a, c_ab``; gradient ``g_a``) and whose log scale is 0 (DESIGN.md, "One op, every
face"). On top of these maps the module offers

* :func:`block_map` / :func:`backward_map` — the next-state expressions of any op or block;
* :func:`preset_block` — the block of a named preset with its hyperparameters as symbols;
* :func:`solve_depth`, :func:`depth_product` — closed forms in the depth index, where they exist;
* :func:`near_one` and :func:`log_law` — the expansion of a correlation map at ``c = 1`` and the
  law of ``1 - c_l`` it implies;
* :func:`bounded` — every potentially slow sympy call runs in a forked child with a time limit,
  so no derivation can hang (a timeout is reported as "no closed form found", the recursion is
  still returned);
* :class:`Derivation` and :func:`run_derivations` — the record (LaTeX + JSON) each script in
  ``derivations/`` writes to ``paper/generated/``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import multiprocessing
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sympy

from . import presets
from .errors import ConfigError, UnsupportedComposition
from .moments import Moments, true_moments
from .ns import SYMBOLIC
from .ops import Act, Dense, LayerNorm, Op, Repeat, Residual, RMSNorm, Scale, Serial
from .params import Context, Sweep

# ---------------------------------------------------------------------------------------------
# Symbols. One table, so that every derivation and every map speaks of the same objects.

SIGMA_W = sympy.Symbol("sigma_w", positive=True)
SIGMA_1 = sympy.Symbol("sigma_1", positive=True)
SIGMA_2 = sympy.Symbol("sigma_2", positive=True)
SIGMA_B = sympy.Symbol("sigma_b", nonnegative=True)
ALPHA = sympy.Symbol("alpha", real=True)
BETA = sympy.Symbol("beta", positive=True)
EPS = sympy.Symbol("eps", nonnegative=True)
GAIN = sympy.Symbol("gain", positive=True)  # a sign flip of every feature changes no moment
RATIO = sympy.Symbol("ratio", positive=True)
B_DN = sympy.Symbol("b", positive=True)  # DeepNet's initialisation gain of the branch Denses

Q_A, Q_B = sympy.symbols("q_a q_b", positive=True)
_V_A, _V_B = sympy.symbols("v_a v_b", positive=True)  # q - m^2 inside the maps (see state)
M_A, M_B = sympy.symbols("m_a m_b", real=True)
C_AB = sympy.Symbol("c_ab", real=True)
G_A, G_B = sympy.symbols("g_a g_b", positive=True)

l = sympy.Symbol("l", integer=True, nonnegative=True)  # the depth index
L = sympy.Symbol("L", integer=True, positive=True)
Q0 = sympy.Symbol("q_0", positive=True)
M0 = sympy.Symbol("m_0", real=True)
C0 = sympy.Symbol("c_0", real=True)

# display-only symbols for the left-hand sides of the equations the derivations write
G_0, G_L, Q_L, Q_l, C_L = sympy.symbols("g_0 g_L q_L q_l c_L", positive=True)

SYMBOLS = {s.name: s for s in (SIGMA_W, SIGMA_1, SIGMA_2, SIGMA_B, ALPHA, BETA, EPS, GAIN, RATIO,
                               B_DN, Q_A, Q_B, M_A, M_B, C_AB, G_A, G_B, l, L, Q0, M0, C0)}

LATEX_NAMES = {GAIN: r"\gamma", EPS: r"\epsilon", B_DN: "b", C_AB: "c_{ab}", Q0: "q_0",
               M0: "m_0", C0: "c_0"}

DEEPNET = {BETA: (2 * L) ** sympy.Rational(1, 4), B_DN: (8 * L) ** sympy.Rational(-1, 4)}
"""DeepNet encoder constants (Wang et al. 2022) in terms of the depth L, as presets.deepnorm."""


def canonical_symbols(expr):
    """Replace assumption-free symbols (e.g. from a ``Sweep``) by the table's namesakes."""
    expr = sympy.sympify(expr)
    subs = {s: SYMBOLS[s.name] for s in expr.free_symbols
            if s.name in SYMBOLS and s != SYMBOLS[s.name]}
    return expr.xreplace(subs) if subs else expr


def latex(expr) -> str:
    """sympy.latex with the table's display names (gain -> gamma, eps -> epsilon, ...)."""
    return sympy.latex(expr, symbol_names=LATEX_NAMES)


# ---------------------------------------------------------------------------------------------
# Time bound: a sympy call that may not finish runs in a forked child and is abandoned after
# ``timeout`` seconds.

TIMEOUT_S = 20.0


class TimedOut:
    """The value of a bounded call that did not finish (or failed); ``reason`` says which."""

    def __init__(self, reason: str):
        self.reason = reason

    def __bool__(self):
        return False

    def __repr__(self):
        return f"TimedOut({self.reason!r})"


def _child(conn, fn, args, kwargs):
    try:
        conn.send((True, fn(*args, **kwargs)))
    except BaseException as exc:  # noqa: BLE001  (report anything; never hang the parent)
        conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def bounded(fn: Callable, *args, timeout: float | None = None, **kwargs):
    """``fn(*args, **kwargs)`` in a forked child, or :class:`TimedOut` after ``timeout`` s.

    The child is killed (by its own pid) when it overruns; an exception in it comes back as a
    ``TimedOut`` whose reason names it. Where ``fork`` is unavailable the call runs inline.
    """
    timeout = TIMEOUT_S if timeout is None else timeout
    if "fork" not in multiprocessing.get_all_start_methods():
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (as the forked path: a failure is a value)
            return TimedOut(f"{type(exc).__name__}: {exc}")
    mp = multiprocessing.get_context("fork")
    recv, send = mp.Pipe(duplex=False)
    proc = mp.Process(target=_child, args=(send, fn, args, kwargs), daemon=False)
    proc.start()
    send.close()
    try:
        if recv.poll(timeout):
            try:
                ok, value = recv.recv()
            except EOFError:
                ok, value = False, "the child exited without an answer"
            return value if ok else TimedOut(value)
        return TimedOut(f"no answer within {timeout:g} s")
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
        proc.join()


_SIMPLIFIED: dict = {}


def _quick_then_full(expr):
    quick = sympy.cancel(expr)
    return quick if quick.is_number else sympy.simplify(expr)


def simplify(expr, timeout: float | None = None):
    """``sympy.simplify`` within the time bound (memoised); the expression itself on overrun.

    Unevaluated integrals (Gaussian expectations) are held as opaque symbols meanwhile, so
    simplify never tries to integrate them.
    """
    expr = sympy.sympify(expr)
    if expr.is_Atom:
        return expr
    if expr not in _SIMPLIFIED:
        integrals = sorted(expr.atoms(sympy.Integral), key=sympy.default_sort_key)
        hide = {i: sympy.Dummy(f"I{k}") for k, i in enumerate(integrals)}
        out = bounded(_quick_then_full, expr.xreplace(hide), timeout=timeout)
        out = expr if isinstance(out, TimedOut) else out.xreplace({v: k for k, v in hide.items()})
        _SIMPLIFIED[expr] = out
    return _SIMPLIFIED[expr]


def is_zero(expr, timeout: float | None = None, points: int = 5, seed: int = 0) -> bool:
    """Whether ``expr`` is identically 0: simplify (bounded), else random numeric points.

    The numeric fallback draws every free symbol from (0.3, 2) (positive and small enough to
    sit in every domain used here) and asks |expr| < 1e-12 at ``points`` points.
    """
    expr = sympy.sympify(expr)
    done = simplify(expr, timeout)
    if done == 0:
        return True
    rng = np.random.default_rng(seed)
    syms = sorted(expr.free_symbols, key=str)
    for _ in range(points):
        val = evaluate(expr, {s: float(rng.uniform(0.3, 2.0)) for s in syms})
        if not abs(val) < 1e-12:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Symbolic states and maps.

def state(n_inputs: int = 1, *, mean: bool = True, gaussian: bool = False) -> Moments:
    """The symbolic input state: K = [[q_a, c_ab sqrt(q_a q_b)], ...], m = (m_a, m_b), ls = 0.

    With a mean, q_a is written v_a + m_a^2 with v_a > 0 (the variance), so that sympy knows
    the signs it needs; the maps substitute v_a = q_a - m_a^2 back at the end.

    ``gaussian=True`` makes the features jointly N(0, K) (mean 0), as after a Dense, so that a
    block that starts with an activation has a Gaussian law to integrate.
    """
    if n_inputs not in (1, 2):
        raise ConfigError("n_inputs", n_inputs, "1 or 2")
    m = [M_A, M_B][:n_inputs] if mean and not gaussian else [sympy.Integer(0)] * n_inputs
    q = [Q_A, Q_B][:n_inputs] if m[0] == 0 else [v + mu**2 for v, mu in zip((_V_A, _V_B), m)]
    K = np.empty((n_inputs, n_inputs), dtype=object)
    for i in range(n_inputs):
        for j in range(n_inputs):
            K[i, j] = q[i] if i == j else C_AB * sympy.sqrt(q[i] * q[j])
    zero = np.array([sympy.Integer(0)] * n_inputs, dtype=object)
    return Moments(K=K, m=np.array(m, dtype=object), ls=zero, gaussian=gaussian)


def cotangent(n_inputs: int = 1) -> Moments:
    """The symbolic cotangent at a block's output: G = diag(g_a, g_b), mean 0, ls = 0.

    Off-diagonal entries start at 0 (the readout delta_L ~ N(0, I) is independent across
    inputs) and every backward law is entrywise, so they stay 0.
    """
    G = np.full((n_inputs, n_inputs), sympy.Integer(0), dtype=object)
    for i, g in enumerate([G_A, G_B][:n_inputs]):
        G[i, i] = g
    zero = np.array([sympy.Integer(0)] * n_inputs, dtype=object)
    return Moments(K=G, m=zero.copy(), ls=zero)


_SUFFIX = ("a", "b")


def _factor_roots(expr):
    return expr.replace(lambda e: e.is_Pow and e.exp in (sympy.S.Half, -sympy.S.Half),
                        lambda e: sympy.factor(e.base) ** e.exp)


def factor_roots(expr, timeout: float | None = None):
    """Factor the radicand of every square root: sqrt((x + 2)^2) -> x + 2 when x + 2 > 0.

    Within the time bound; the expression unchanged if factoring overruns.
    """
    expr = sympy.sympify(expr)
    if not any(p.exp in (sympy.S.Half, -sympy.S.Half) for p in expr.atoms(sympy.Pow)):
        return expr
    out = bounded(_factor_roots, expr, timeout=timeout)
    return expr if isinstance(out, TimedOut) else out


def _tidy(expr, simplify_it: bool, timeout):
    expr = canonical_symbols(expr)
    expr = simplify(factor_roots(expr), timeout) if simplify_it else expr
    return expr.xreplace({_V_A: Q_A - M_A**2, _V_B: Q_B - M_B**2})


def block_map(block: Op, n_inputs: int = 1, *, mean: bool = True, gaussian: bool = False,
              simplify: bool = True, timeout: float | None = None) -> dict[str, sympy.Expr]:
    """Next-state expressions of ``block``: ``q_a, m_a`` (and ``q_b, m_b, c_ab`` for 2 inputs).

    Obtained by running ``block.theory_forward`` over SYMBOLIC on :func:`state`. A residual
    block also gives ``branch_q_a`` (the branch output's second moment, as the theory records).
    """
    ctx = Context(ns=SYMBOLIC, path=type(block).__name__)
    record: dict = {}
    out = block.theory_forward(state(n_inputs, mean=mean, gaussian=gaussian), ctx, record)
    K, m = true_moments(out, ctx.path, SYMBOLIC)
    res = {}
    for i in range(n_inputs):
        res[f"q_{_SUFFIX[i]}"] = K[i, i]
        res[f"m_{_SUFFIX[i]}"] = m[i]
    if n_inputs == 2:
        res["c_ab"] = K[0, 1] / sympy.sqrt(K[0, 0] * K[1, 1])
    if "branch" in record:
        Kf, _ = true_moments(record["branch"], ctx.path, SYMBOLIC)
        for i in range(n_inputs):
            res[f"branch_q_{_SUFFIX[i]}"] = Kf[i, i]
    return {k: _tidy(v, simplify, timeout) for k, v in res.items()}


def backward_map(block: Op, n_inputs: int = 1, *, mean: bool = True, gaussian: bool = False,
                 simplify: bool = True, timeout: float | None = None) -> dict[str, sympy.Expr]:
    """``grad_q_a`` (and ``grad_q_b``) at the block's input, given ``g_a`` at its output.

    Obtained by running ``block.theory_backward`` over SYMBOLIC from the state :func:`state`.
    """
    ctx = Context(ns=SYMBOLIC, path=type(block).__name__)
    g = block.theory_backward(state(n_inputs, mean=mean, gaussian=gaussian), cotangent(n_inputs),
                              ctx)
    G, _ = true_moments(g, ctx.path, SYMBOLIC)
    return {f"grad_q_{_SUFFIX[i]}": _tidy(G[i, i], simplify, timeout) for i in range(n_inputs)}


# ---------------------------------------------------------------------------------------------
# Presets with symbolic hyperparameters.

def _times(a, b):
    if isinstance(a, Sweep) or isinstance(b, Sweep):
        raise ConfigError("a DeepNorm branch scale", (a, b), "numbers or sympy expressions")
    return a * b


def op_symbols(op) -> set:
    """The free sympy symbols among the hyperparameters of ``op`` and everything inside it."""
    out = set()
    for o in op.walk():
        for v in vars(o).values():
            if isinstance(v, sympy.Basic):
                out |= v.free_symbols
    return out


def preset_block(name: str, act: str = "relu", shape: str = "mlp", **values) -> Op:
    """The block of ``presets.<name>`` with its hyperparameters as symbols.

    The preset is built (depth 1) and each hyperparameter is replaced by role: the residual
    ``alpha``, ``beta``; the branch Denses ``sigma_1``, ``sigma_2`` (DeepNorm: ``b sigma_1``,
    ``b sigma_2``), their ``sigma_b`` and ``ratio`` (mlp: ``ratio`` then ``1/ratio``); every
    LayerNorm ``eps``, ``gain``. ``values`` (by symbol name) replaces a symbol by a number,
    a sympy expression or a ``Sweep``, so the same tree serves sp.theory. The preset's own
    defaults are :func:`preset_defaults`.
    """
    unknown = set(values) - set(SYMBOLS)
    if unknown:
        raise ConfigError("preset_block values", sorted(unknown), f"names among {sorted(SYMBOLS)}")
    block = _preset_net(name, act, shape)
    n_dense = sum(isinstance(op, Dense) for op in block.walk())

    def val(sym):
        v = values.get(sym.name, sym)
        return v if isinstance(v, Sweep) else sympy.sympify(v)

    sigmas = iter((SIGMA_1, SIGMA_2))
    ratios = iter((val(RATIO), 1 / val(RATIO)) if n_dense == 2 else (sympy.Integer(1),))

    def rewrite(op: Op) -> Op:
        if isinstance(op, Serial):
            return Serial(*(rewrite(o) for o in op.layers))
        if isinstance(op, Repeat):
            return Repeat(rewrite(op.block), op.n)
        if isinstance(op, Residual):
            return Residual(rewrite(op.branch), alpha=val(ALPHA), beta=val(BETA))
        if isinstance(op, Dense):
            sw = val(next(sigmas))
            sw = _times(val(B_DN), sw) if name == "deepnorm" else sw
            return Dense(sigma_w=sw, sigma_b=val(SIGMA_B), ratio=next(ratios))
        if isinstance(op, LayerNorm):
            return LayerNorm(eps=val(EPS), gain=val(GAIN))
        if isinstance(op, RMSNorm):
            return RMSNorm(eps=val(EPS))
        if isinstance(op, (Act, Scale)):
            return op
        raise UnsupportedComposition(f"preset {name!r}: {type(op).__name__} has no symbolic law")

    return rewrite(block)


def _preset_net(name, act, shape) -> Op:
    from .theory import layers_of

    return layers_of(presets.get(name)(1, act=act, shape=shape))[0]


def preset_defaults(name: str, act: str = "relu", shape: str = "mlp") -> dict:
    """The preset's default value of each symbol of :func:`preset_block` (read off the preset).

    DeepNorm's ``beta`` and ``b`` are the DeepNet constants in the depth ``L`` (:data:`DEEPNET`);
    ``gain`` (not exposed by presets) is LayerNorm's default 1.
    """
    net = _preset_net(name, act, shape)
    out = {RATIO: sympy.Integer(1), GAIN: sympy.Integer(1)}
    branch = presets.branch(act, shape)
    dense = [op for op in branch.walk() if isinstance(op, Dense)]
    for sym, op in zip((SIGMA_1, SIGMA_2), dense):
        out[sym] = sympy.nsimplify(op.sigma_w)
    out[SIGMA_B] = sympy.nsimplify(dense[0].sigma_b)
    for op in net.walk():
        if isinstance(op, Residual):
            out[ALPHA] = sympy.nsimplify(op.alpha)
            out[BETA] = sympy.nsimplify(op.beta)
        if isinstance(op, (LayerNorm, RMSNorm)):
            out[EPS] = sympy.nsimplify(op.eps)
    if name == "deepnorm":
        out.update(DEEPNET)
    return out


# ---------------------------------------------------------------------------------------------
# Closed forms in depth.

X = sympy.Function("x")


@dataclass
class DepthSolution:
    """x_l for x_{l+1} = step(x_l), x_0 = x0: ``closed`` (None if not found) and how."""

    step: sympy.Expr
    closed: sympy.Expr | None
    method: str
    residual_zero: bool = False
    transform: str = ""  # p = T(x) in which the recursion is affine: p' = a p + b
    a: sympy.Expr | None = None
    b: sympy.Expr | None = None

    @property
    def found(self) -> bool:
        return self.closed is not None


_TRANSFORMS = {
    # name: (p = T(x), x = T^{-1}(p)); p obeys a linear recursion when x obeys a Mobius one
    "identity": (lambda x: x, lambda p: p),
    "reciprocal": (lambda x: 1 / x, lambda p: 1 / p),
    "log": (sympy.log, sympy.exp),
}


def solve_depth(step, x, x0, *, index=l, timeout: float | None = None) -> DepthSolution:
    """Solve ``x_{l+1} = step(x_l)`` from ``x_0 = x0`` in closed form, within the time bound.

    Tries p = x, 1/x and log x: if p_{l+1} is affine in p_l (coefficients free of p), sympy's
    ``rsolve`` solves it and x_l = T^{-1}(p_l). The result is checked by substituting it back
    (``residual_zero``). ``closed`` is None when no transform gives a linear recursion or
    rsolve overruns; the recursion ``step`` is returned all the same.
    """
    step = sympy.sympify(step)
    p = sympy.Dummy("p", positive=True)
    why = []
    for name, (T, Tinv) in _TRANSFORMS.items():
        nxt = bounded(_normal_form, T(step.subs(x, Tinv(p))), timeout=timeout)
        if isinstance(nxt, TimedOut) or not _affine_in(nxt, p):
            why.append(f"{name}(x): not affine")
            continue
        a, b = nxt.coeff(p, 1), nxt.coeff(p, 0)
        hide = {i: sympy.Dummy(f"I{k}") for k, i in enumerate(
            sorted((a + b).atoms(sympy.Integral), key=sympy.default_sort_key))}
        sol = bounded(sympy.rsolve, X(index + 1) - (a * X(index) + b).xreplace(hide), X(index),
                      {X(0): T(x0)}, timeout=timeout)
        if isinstance(sol, TimedOut) or sol is None:
            why.append(f"{name}(x): rsolve gave {sol!r}")
            continue
        sol = sol.xreplace({v: k for k, v in hide.items()})
        closed = simplify(Tinv(sol), timeout)
        ok = is_zero(closed.subs(index, index + 1) - step.subs(x, closed), timeout)
        return DepthSolution(step, closed, f"rsolve on {name}(x)", ok, name, a, b)
    return DepthSolution(step, None, "no closed form found: " + "; ".join(why))


def _normal_form(expr):
    """Cancelled, log-expanded, expanded: enough to expose an affine recursion in p."""
    return sympy.expand(sympy.expand_log(sympy.cancel(_factor_roots(expr)), force=True))


def _affine_in(expr, p) -> bool:
    return expr.is_polynomial(p) and sympy.degree(expr, p) <= 1


def depth_product(factor, index=l, lo=0, hi=None, timeout: float | None = None):
    """prod_{index=lo}^{hi} factor, in closed form (gamma-simplified) or None if none found."""
    hi = L - 1 if hi is None else hi
    out = bounded(lambda: sympy.gammasimp(sympy.product(factor, (index, lo, hi))
                                          .rewrite(sympy.gamma)), timeout=timeout)
    if isinstance(out, TimedOut) or out.has(sympy.Product):
        return None
    return out


# ---------------------------------------------------------------------------------------------
# Correlation maps near c = 1.

EPSILON = sympy.Symbol("varepsilon", positive=True)  # 1 - c
_T = sympy.Symbol("t", positive=True)  # sqrt(1 - c)


def near_one(cmap, c=C_AB, order: int = 5, timeout: float | None = None):
    """1 - cmap(1 - epsilon) as a series in sqrt(epsilon) up to epsilon^{order/2} (exclusive).

    Returns the expansion as a polynomial in ``EPSILON`` with half-integer powers (no O term).
    """
    expr = (1 - sympy.sympify(cmap)).subs(c, 1 - _T**2)
    ser = bounded(lambda: sympy.series(expr, _T, 0, order).removeO(), timeout=timeout)
    failed = isinstance(ser, TimedOut)
    if failed:
        raise RuntimeError(f"series of the correlation map at c = 1: {ser.reason}")
    return sympy.expand(ser.subs(_T, sympy.sqrt(EPSILON)))


def corr_map(act: str = "relu"):
    """The correlation map c' = f(c) of Dense -> act at equal second moments q_a = q_b.

    Read off the ops' law (plain ``dense_act`` block, sigma_b = 0); it depends on sigma_1 and
    q_a only through sigma_1^2 q_a (and not at all for ReLU and linear).
    """
    blk = preset_block("plain", act, "dense_act", sigma_b=0, ratio=1)
    cmap = block_map(blk, 2, mean=False, simplify=False)["c_ab"].subs(Q_B, Q_A)
    return simplify(factor_roots(cmap))


def eps_map(cmap, c=C_AB):
    """1 - cmap(1 - t^2) in a form that float64 evaluates without losing 1 - c (t = sqrt(1-c)).

    acos(z) is rewritten 2 asin(sqrt((1 - z)/2)), the result is put over one denominator and
    its numerator expanded, so that the O(1) terms cancel symbolically, not in floating point.
    Returns an expression in :data:`T_EPS` (= t).
    """
    expr = sympy.sympify(cmap).replace(
        sympy.acos, lambda z: 2 * sympy.asin(sympy.sqrt((1 - z) / 2)))
    expr = factor_roots(expr.subs(c, 1 - T_EPS**2))  # sqrt(t^2 (2 - t^2)) = t sqrt(2 - t^2)
    expr = sympy.together(1 - expr)
    num, den = sympy.fraction(expr)
    return sympy.expand(num) / den


T_EPS = _T


def increment_series(expansion, h=1, order: int = 3):
    """Coefficients a_0..a_{order-1} of u_{l+1} - u_l = sum_k a_k u_l^{-k} + O(u^{-order}).

    Here u = (1 - c)^{-1/2} and the map is 1 - c_{l+1} = e - h (e - (1 - f(1 - e))),
    e = 1 - c_l, with ``expansion`` = 1 - f(1 - e) from :func:`near_one` (its powers of e must
    reach e^{(order+2)/2}). h may be a symbol (a depth-dependent mixing weight).
    """
    u = sympy.Symbol("u", positive=True)
    e = 1 / u**2
    nxt = e - h * (e - sympy.sympify(expansion).subs(EPSILON, e))
    inc = bounded(lambda: sympy.expand(sympy.series(1 / sympy.sqrt(nxt) - u, u, sympy.oo, order)
                                       .removeO()))
    failed = isinstance(inc, TimedOut)
    if failed:
        raise RuntimeError(f"series of the increment of (1 - c)^(-1/2): {inc.reason}")
    return [simplify(inc.coeff(u, -k)) for k in range(order)]


def log_law(expansion, h=1):
    """Law of u_l = (1 - c_l)^{-1/2} for a constant mixing weight h (see increment_series).

    With ``1 - f(1 - e) = e - A e^{3/2} + O(e^{5/2})``, u_{l+1} - u_l = a0 + a1 / u_l + O(u^{-2}),
    so u_l = a0 l + (a1 / a0) log l + O(1) and 1 - c_l = 1 / (a0 l)^2 (1 + O(log l / l)).
    Returns ``(a0, a1 / a0)``.
    """
    a0, a1 = increment_series(expansion, h, order=2)
    return a0, simplify(a1 / a0)


# ---------------------------------------------------------------------------------------------
# Numeric evaluation (expressions may hold unevaluated Gaussian expectations).

Z_CUT = 40.0
"""The Gaussian expectations of sigprop.activations integrate over standard normal variables;
their infinite limits are cut at +-Z_CUT (the density is below e^{-800} there), which keeps
exp(-sqrt(q) z) in the integrands finite."""


def _limit(x) -> float:
    return float(max(-Z_CUT, min(Z_CUT, float(x))))


def _integral_value(integral: sympy.Integral) -> float:
    """A 1-D or 2-D Gaussian expectation evaluated by adaptive quadrature (scipy)."""
    import scipy.integrate

    if integral.free_symbols:
        raise ValueError(f"unbound symbols {integral.free_symbols} in {integral}")
    limits = integral.limits
    with np.errstate(all="ignore"):
        if len(limits) == 1:
            (v, a, b), = limits
            f = sympy.lambdify(v, integral.function, "numpy")
            return scipy.integrate.quad(f, _limit(a), _limit(b), epsabs=1e-14, epsrel=1e-13,
                                        limit=500)[0]
        if len(limits) == 2:
            (v1, a1, b1), (v2, a2, b2) = limits
            f = sympy.lambdify((v2, v1), integral.function, "numpy")
            return scipy.integrate.dblquad(f, _limit(a2), _limit(b2), _limit(a1), _limit(b1),
                                           epsabs=1e-13, epsrel=1e-12)[0]
    raise ValueError(f"integral of dimension {len(limits)}")


def evaluate(expr, values: dict | None = None) -> float:
    """Float value of ``expr`` at ``values`` ({symbol or name: number}); integrals by quadrature."""
    expr = sympy.sympify(expr)
    names = {s.name: s for s in expr.free_symbols}
    subs = {names.get(k, sympy.Symbol(k)) if isinstance(k, str) else k: sympy.Float(v, 30)
            for k, v in (values or {}).items()}
    expr = expr.xreplace(subs)
    if expr.has(sympy.Integral):
        expr = expr.replace(lambda e: isinstance(e, sympy.Integral),
                            lambda e: sympy.Float(_integral_value(e), 30))
    return float(sympy.N(expr, 30))


def numeric(expr, args):
    """A numpy function of ``args`` (symbols) for an integral-free ``expr`` (scipy special)."""
    if sympy.sympify(expr).has(sympy.Integral):
        raise ValueError("expression holds an integral: use evaluate() point by point")
    return sympy.lambdify(args, expr, modules=["scipy", "numpy"])


def on_dataset(expr, ds, **env):
    """``expr`` evaluated on the coordinates of a theory Dataset (an xarray DataArray).

    Symbols are bound by name: ``env`` (numbers or DataArrays, e.g. ``q_0`` over ``input``),
    then ``l`` -> ``ds.layer``, then any swept coordinate of ``ds`` of the same name. Gaussian
    expectations left as integrals are evaluated by quadrature once the scalars are bound.
    """
    import xarray as xr

    expr = canonical_symbols(expr)
    scalars = {SYMBOLS.get(k, sympy.Symbol(k)): v for k, v in env.items()
               if not isinstance(v, xr.DataArray)}
    expr = expr.subs(scalars)
    if expr.has(sympy.Integral):
        expr = expr.replace(lambda e: isinstance(e, sympy.Integral) and not e.free_symbols,
                            lambda e: sympy.Float(_integral_value(e), 30))
    syms = sorted(expr.free_symbols, key=str)
    args = []
    for s in syms:
        if s.name in env:
            args.append(env[s.name])
        elif s == l:
            args.append(ds["layer"].astype(float))
        elif s.name in ds.coords:
            args.append(ds[s.name])
        else:
            raise ValueError(f"no value for {s} (give it in env)")
    if expr.has(sympy.Integral):
        f = np.vectorize(lambda *a: evaluate(expr, dict(zip(syms, a))))
        return xr.apply_ufunc(f, *args)
    out = numeric(expr, syms)(*args)
    return out if isinstance(out, xr.DataArray) else xr.DataArray(out)


CLOSED_FORM_ACTS = ("linear", "relu", "erf")
INTEGRAL_ACTS = ("tanh", "gelu", "silu")


def available_acts(acts=None, quick: bool = False) -> tuple[str, ...]:
    """The activations (closed-form ones only when ``quick``) that sigprop.activations has."""
    from .activations import get_activation

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
    import xarray as xr

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
    from .theory import theory

    return theory(Repeat(substitute(block, values), depth), inputs)


def symbolic_dataset(block: Op, depth: int, inputs, **values):
    """The recursion of :func:`block_map` / :func:`backward_map`, iterated numerically.

    Returns a Dataset in the common schema (``q, log_q, mean, var, corr, grad_q``; attrs
    ``kind='symbolic'``) for ``Repeat(block, depth)`` on ``inputs`` with the block's symbols set
    to ``values`` (numbers), so that ``sp.compare`` can set the symbolic face beside the others.
    Pairs of inputs use the two-input map. Plain float64 (no log-space carrying): meant for
    moderate depths, and for integral-free maps (closed-form activations).
    """
    import xarray as xr

    from .provenance import make_attrs

    B = inputs.n
    mean = any(x != 0 for x in inputs.mean)
    gaussian = inputs.law == "gaussian"
    n_in = 2 if B > 1 else 1
    fwd = block_map(block, n_in, mean=mean, gaussian=gaussian, simplify=False)
    bwd = backward_map(block, 1, mean=mean, gaussian=gaussian, simplify=False)["grad_q_a"]
    at = {SYMBOLS.get(k, sympy.Symbol(k)): sympy.Float(v) for k, v in values.items()}
    args = (Q_A, Q_B, M_A, M_B, C_AB, G_A)

    def fn(expr):
        expr = canonical_symbols(expr).xreplace(at)
        if expr.has(sympy.Integral):
            raise UnsupportedComposition("symbolic_dataset: the map holds a Gaussian integral "
                                         "(non-closed-form activation); use sp.theory")
        left = expr.free_symbols - set(args)
        if left:
            raise ConfigError("symbolic_dataset values", sorted(map(str, left)), "given")
        return sympy.lambdify(args, expr, modules=["scipy", "numpy"])

    f_q, f_m, f_g = fn(fwd["q_a"]), fn(fwd["m_a"]), fn(bwd)
    f_c = fn(fwd["c_ab"]) if n_in == 2 else None
    q = np.empty((depth + 1, B))
    m = np.empty((depth + 1, B))
    c = np.empty((depth + 1, B, B))
    q[0], m[0], c[0] = inputs.q, inputs.mean, inputs.corr
    iu = np.triu_indices(B, 1)
    for k in range(depth):
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
        g[k] = f_g(q[k], q[k], m[k], m[k], 1.0, g[k + 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        data = {"q": q, "log_q": np.log(q), "mean": m, "var": q - m**2, "grad_q": g,
                "log_grad_q": np.log(g)}
    ds = xr.Dataset({k: (("layer", "input"), v) for k, v in data.items()},
                    coords={"layer": np.arange(depth + 1), "input": np.arange(B),
                            "input_b": np.arange(B)})
    ds["corr"] = (("layer", "input", "input_b"), c)
    config = {"net": Repeat(substitute(block, values), depth).to_dict(),
              "inputs": inputs.to_dict()}
    ds.attrs = make_attrs("symbolic", config, "sympy")
    return ds


def substitute(op: Op, values: dict) -> Op:
    """A copy of ``op`` with the symbols named in ``values`` replaced (numbers or Sweeps)."""
    subs = {SYMBOLS.get(k, sympy.Symbol(k)) if isinstance(k, str) else k: v
            for k, v in values.items()}

    def one(v):
        if isinstance(v, Op):
            return substitute(v, values)
        if isinstance(v, tuple):
            return tuple(one(x) for x in v)
        if isinstance(v, sympy.Basic) and not v.is_number:
            sweeps = [subs[s] for s in v.free_symbols if isinstance(subs.get(s), Sweep)]
            if sweeps and v in subs:
                return subs[v]
            if sweeps:
                raise ConfigError("a swept symbol", v, "used alone (not inside an expression)")
            out = v.xreplace({s: sympy.sympify(subs[s]) for s in v.free_symbols if s in subs})
            return float(out) if out.is_number else out
        return float(v) if isinstance(v, sympy.Basic) else v

    if isinstance(op, Serial):
        return Serial(*(substitute(o, values) for o in op.layers))
    kwargs = {f.name: one(getattr(op, f.name)) for f in dataclasses.fields(op)}
    return type(op)(**kwargs)


# ---------------------------------------------------------------------------------------------
# Records written for the paper.

@dataclass
class Equation:
    label: str
    lhs: Any
    rhs: Any
    note: str = ""


@dataclass
class Check:
    what: str
    error: float
    tol: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error) and abs(self.error) <= self.tol)


@dataclass
class Derivation:
    """What one derivation script produced: equations, checks, notes; written as .tex + .json."""

    name: str
    title: str
    equations: list[Equation] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def equation(self, label, lhs, rhs, note=""):
        self.equations.append(Equation(label, sympy.sympify(lhs), sympy.sympify(rhs), note))
        return rhs

    def check(self, what, error, tol, detail=""):
        """Record |error| <= tol (error is a number; the worst over the points checked)."""
        error = float(np.max(np.abs(np.asarray(error, dtype=float))))
        self.checks.append(Check(what, error, float(tol), detail))
        return self.checks[-1].passed

    def check_true(self, what, ok: bool, detail=""):
        return self.check(what, 0.0 if ok else np.inf, 0.0, detail)

    def note(self, text):
        self.notes.append(text)

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def tex(self) -> str:
        lines = [f"% Generated by derivations/{self.name}.py (sigprop.symbolic); do not edit.",
                 f"% {self.title}",
                 f"% verified: {self.verified} ({len(self.checks)} checks)"]
        for c in self.checks:
            lines.append(f"%   [{'ok' if c.passed else 'FAIL'}] {c.what}: {c.error:.3g} "
                         f"(tol {c.tol:.3g})")
        lines.append(r"\begin{align}")
        body, note = [], ""
        for eq in self.equations:
            # each new qualifier (e.g. "preln, relu") as a line of text above its equations
            head = (f"  \\intertext{{\\small\\texttt{{\\detokenize{{{eq.note}}}}}}}\n"
                    if eq.note and eq.note != note else "")
            note = eq.note or note
            tag = f" \\label{{eq:{self.name}:{eq.label}}}"
            body.append(f"{head}  {latex(eq.lhs)} &= \\fitmath{{{latex(eq.rhs)}}}{tag}")
        lines.append(" \\\\\n".join(body))
        lines.append(r"\end{align}")
        return "\n".join(lines) + "\n"

    def record(self) -> dict:
        def expr(e):
            return {"str": str(e), "srepr": sympy.srepr(e), "latex": latex(e),
                    "free_symbols": sorted(str(s) for s in e.free_symbols)}

        return {
            "name": self.name, "title": self.title, "verified": self.verified,
            "seconds": round(self.seconds, 3),
            "equations": [{"label": e.label, "lhs": expr(e.lhs), "rhs": expr(e.rhs),
                           "note": e.note} for e in self.equations],
            "checks": [{"what": c.what, "error": c.error, "tol": c.tol, "passed": c.passed,
                        "detail": c.detail} for c in self.checks],
            "notes": self.notes,
        }

    def write(self, out_dir) -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tex, js = out / f"{self.name}.tex", out / f"{self.name}.json"
        tex.write_text(self.tex())
        js.write_text(json.dumps(self.record(), indent=1, default=_json_default) + "\n")
        return tex, js


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


# ---------------------------------------------------------------------------------------------
# Running the scripts of derivations/.

DERIVATIONS_DIR = Path(__file__).resolve().parent.parent / "derivations"


def derivation_names(scripts_dir=None) -> list[str]:
    """The derivation scripts available (``derivations/<name>.py``, not ``_``-prefixed)."""
    d = Path(scripts_dir) if scripts_dir else DERIVATIONS_DIR
    return sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))


def load_derivation(name: str, scripts_dir=None):
    """Import ``derivations/<name>.py`` as a module (it defines ``derive(slow=False)``)."""
    d = Path(scripts_dir) if scripts_dir else DERIVATIONS_DIR
    path = d / f"{name}.py"
    if not path.exists():
        raise ConfigError("derivation", name, f"one of {derivation_names(d)} (in {d})")
    spec = importlib.util.spec_from_file_location(f"sigprop_derivation_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_one(name: str, out_dir="paper/generated", slow: bool = False, scripts_dir=None,
            write: bool = True, quick: bool = False) -> Derivation:
    """Run one derivation: derive, verify, write ``<out_dir>/<name>.tex`` and ``.json``.

    ``slow`` adds the long iterations (10^4 - 10^6 blocks); ``quick`` (the default test run)
    keeps the closed-form activations only and the shortest checks.
    """
    start = time.perf_counter()
    try:
        d = load_derivation(name, scripts_dir).derive(slow=slow, quick=quick and not slow)
    except Exception:  # noqa: BLE001  (a crashing script is a failed, recorded derivation)
        d = Derivation(name, f"{name} (failed)")
        d.check("the derivation ran", np.inf, 0.0, traceback.format_exc(limit=5))
    d.seconds = time.perf_counter() - start
    if write:
        d.write(out_dir)
    return d


def run_derivations(names=None, out_dir="paper/generated", slow: bool = False,
                    scripts_dir=None, quick: bool = False) -> list[Derivation]:
    """Run the named derivations (all by default); returns their records (see ``.verified``).

    This is what ``sigprop derive`` / ``make derivations`` call: every script writes
    ``<out_dir>/<name>.tex`` and ``<name>.json``. A failed check does not raise; the caller
    inspects ``[d for d in out if not d.verified]`` (and :func:`summary`).
    """
    names = derivation_names(scripts_dir) if names is None else list(names)
    return [run_one(n, out_dir, slow, scripts_dir, quick=quick) for n in names]


def script_main(name: str, argv=None) -> int:
    """``python derivations/<name>.py [--slow] [--out DIR]``: run, print a summary, exit code."""
    import argparse

    ap = argparse.ArgumentParser(description=f"derivation {name}")
    ap.add_argument("--slow", action="store_true", help="also the long (10^5-10^6 block) checks")
    ap.add_argument("--quick", action="store_true", help="closed-form activations only")
    ap.add_argument("--out", default="paper/generated", help="output folder")
    args = ap.parse_args(argv)
    d = run_one(name, args.out, args.slow, Path(sys.argv[0]).resolve().parent, quick=args.quick)
    print(summary(d))
    return 0 if d.verified else 1


def summary(d: Derivation) -> str:
    lines = [(f"{d.name}: {'verified' if d.verified else 'NOT VERIFIED'} ({d.seconds:.1f} s) "
              f"- {d.title}")]
    for eq in d.equations:
        lines.append(f"  {eq.label}: {eq.lhs} = {eq.rhs}")
    for c in d.checks:
        why = f"  ({c.detail.splitlines()[-1]})" if c.detail and not c.passed else ""
        lines.append(f"  [{'ok' if c.passed else 'FAIL'}] {c.what}: {c.error:.3g} <= "
                     f"{c.tol:.3g}{why}")
    for n in d.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


__all__ = [
    "ALPHA",
    "BETA",
    "B_DN",
    "C0",
    "CLOSED_FORM_ACTS",
    "C_AB",
    "C_L",
    "DEEPNET",
    "EPS",
    "EPSILON",
    "GAIN",
    "G_0",
    "G_A",
    "G_B",
    "G_L",
    "INTEGRAL_ACTS",
    "M0",
    "M_A",
    "M_B",
    "Q0",
    "Q_A",
    "Q_B",
    "Q_L",
    "RATIO",
    "SIGMA_1",
    "SIGMA_2",
    "SIGMA_B",
    "SIGMA_W",
    "T_EPS",
    "Check",
    "DepthSolution",
    "Derivation",
    "Equation",
    "L",
    "Q_l",
    "TimedOut",
    "available_acts",
    "backward_map",
    "block_map",
    "bounded",
    "canonical_symbols",
    "corr_map",
    "cotangent",
    "depth_product",
    "eps_map",
    "evaluate",
    "factor_roots",
    "increment_series",
    "l",
    "latex",
    "log_law",
    "near_one",
    "numeric",
    "on_dataset",
    "preset_block",
    "preset_defaults",
    "random_sweeps",
    "rel_error",
    "run_derivations",
    "run_one",
    "script_main",
    "simplify",
    "solve_depth",
    "state",
    "substitute",
    "symbolic_dataset",
    "theory_of",
]
