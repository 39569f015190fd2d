"""Symbolic per-block maps: an op's own ``theory_forward`` / ``theory_backward`` run over
:data:`~sigprop.state.ns.SYMBOLIC` on a state whose entries are the symbols ``q_a, m_a, c_ab``
(gradient ``g_a``) and whose log scale is 0. Nothing here re-types a propagation law."""

from __future__ import annotations

import numpy as np
import sympy

from sigprop.errors import ConfigError
from sigprop.ops import Op
from sigprop.state.moments import GAUSSIAN, GENERAL, Cotangent, Moments, true_moments
from sigprop.state.ns import SYMBOLIC
from sigprop.state.params import Context
from sigprop.symbolic.symbols import (
    _V_A,
    _V_B,
    C_AB,
    G_A,
    G_B,
    M_A,
    M_B,
    Q_A,
    Q_B,
    canonical_symbols,
)
from sigprop.symbolic.timeouts import TimedOut, bounded, simplify

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
    return Moments(K=K, m=np.array(m, dtype=object), ls=zero,
                   law=GAUSSIAN if gaussian else GENERAL)


def cotangent(n_inputs: int = 1) -> Cotangent:
    """The symbolic cotangent at a block's output: G = diag(g_a, g_b), mean 0, ls = 0.

    Off-diagonal entries start at 0 (the readout delta_L ~ N(0, I) is independent across
    inputs) and every backward law is entrywise, so they stay 0.
    """
    G = np.full((n_inputs, n_inputs), sympy.Integer(0), dtype=object)
    for i, g in enumerate([G_A, G_B][:n_inputs]):
        G[i, i] = g
    zero = np.array([sympy.Integer(0)] * n_inputs, dtype=object)
    return Cotangent(K=G, m=zero.copy(), ls=zero)


_SUFFIX = ("a", "b")


def factor_roots_unbounded(expr):
    """:func:`factor_roots` without its time bound (for callers already inside one)."""
    return expr.replace(lambda e: e.is_Pow and e.exp in (sympy.S.Half, -sympy.S.Half),
                        lambda e: sympy.factor(e.base) ** e.exp)


def factor_roots(expr, timeout: float | None = None):
    """Factor the radicand of every square root: sqrt((x + 2)^2) -> x + 2 when x + 2 > 0.

    Within the time bound; the expression unchanged if factoring overruns.
    """
    expr = sympy.sympify(expr)
    if not any(p.exp in (sympy.S.Half, -sympy.S.Half) for p in expr.atoms(sympy.Pow)):
        return expr
    out = bounded(factor_roots_unbounded, expr, timeout=timeout)
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
