"""Errors sigprop raises on bad input: each names the field and what is allowed."""

import difflib
import os
import sys
import warnings


class SigpropError(Exception):
    """Base of every error sigprop raises on purpose."""


class ConfigError(SigpropError, ValueError):
    """A parameter is outside its allowed range (the message names field and range)."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is invalid: allowed {allowed}")


class UnknownName(ConfigError, AttributeError):
    """An attribute lookup of a name that is not there (``sp.presets.pre_ln``); lists the known
    names and the closest one. An AttributeError too, so ``hasattr`` keeps working."""

    def __init__(self, field: str, value: str, known):
        close = difflib.get_close_matches(value, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(field, value, f"one of {sorted(known)}{hint}")


class UnsupportedComposition(SigpropError, ValueError):
    """An op meets an input law the engine cannot integrate exactly (names the op path)."""


class OverflowInTheory(SigpropError, ArithmeticError):
    """A non-homogeneous op met a scale that float64 cannot hold (names the layer)."""


class MonteCarloOverflow(SigpropError, ArithmeticError):
    """A simulated statistic left the floating-point range (names the block and direction)."""


class FiniteWidthWarning(UserWarning):
    """An infinite-width expectation that no practical width reaches, or a first-order
    correction that is as large as the leading term."""


class KnifeEdgeWarning(UserWarning):
    """Inputs on which a norm meets a variance of exactly 0 (within rounding), where the
    gradient jumps: the theory's exact-arithmetic value and a float net's can differ."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category=UserWarning):
    """``warnings.warn`` attributed to the first frame outside sigprop: the user's own line,
    whatever the path inside the package (so the message names it, and filters by module
    meet the caller's module)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and _inside(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def _inside(filename: str) -> bool:
    """Whether a frame's file is sigprop's (``<string>``, ``<stdin>``, a cell's ``<...>``: not,
    wherever the working directory is)."""
    return not filename.startswith("<") and os.path.abspath(filename).startswith(_PACKAGE)
