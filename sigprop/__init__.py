"""sigprop: signal propagation through very deep residual networks.

Three faces that must agree: symbolic derivations (sympy), the infinite-width theory
(:func:`theory`) and finite-width Monte Carlo. See DESIGN.md for the conventions.
"""

from . import presets
from .compare import compare
from .data import load, save
from .errors import (
                     ConfigError,
                     MonteCarloOverflow,
                     OverflowInTheory,
                     SigpropError,
                     UnsupportedComposition,
)
from .inputs import Inputs
from .montecarlo import simulate
from .ops import Act, BatchNorm, Dense, LayerNorm, Op, Repeat, Residual, RMSNorm, Scale, Serial
from .params import Sweep, sweep
from .theory import theory

__all__ = [
    "Act", "BatchNorm", "ConfigError", "Dense", "Inputs", "LayerNorm", "MonteCarloOverflow", "Op",
    "OverflowInTheory",
    "RMSNorm", "Repeat", "Residual", "Scale", "Serial", "SigpropError", "Sweep",
    "UnsupportedComposition", "compare", "load", "presets", "save", "simulate", "sweep",
    "theory",
]
__version__ = "0.1.0"
