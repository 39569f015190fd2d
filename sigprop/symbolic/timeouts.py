"""Time bounds: a sympy call that may not finish runs in a forked child and is abandoned
after ``timeout`` seconds (reported as :class:`TimedOut`, never a hang)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

import numpy as np
import sympy

from sigprop.symbolic.evaluation import evaluate

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
