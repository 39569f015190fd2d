"""sigprop: signal propagation through very deep residual networks.

Three faces that must agree: symbolic derivations (sympy), the infinite-width theory
(:func:`theory`) and finite-width Monte Carlo. See DESIGN.md for the conventions.
"""

from sigprop import presets
from sigprop.analysis.compare import compare
from sigprop.data import load, save
from sigprop.engines.montecarlo import simulate
from sigprop.engines.theory import theory
from sigprop.errors import (
                     ConfigError,
                     MonteCarloOverflow,
                     OverflowInTheory,
                     SigpropError,
                     UnsupportedComposition,
)
from sigprop.ops import (
                     Act,
                     BatchNorm,
                     Dense,
                     LayerNorm,
                     Op,
                     Repeat,
                     Residual,
                     RMSNorm,
                     Scale,
                     Serial,
)
from sigprop.state.inputs import Inputs
from sigprop.state.params import Sweep, sweep

__all__ = [
    "Act", "BatchNorm", "ConfigError", "Dense", "Inputs", "LayerNorm", "MonteCarloOverflow", "Op",
    "OverflowInTheory",
    "RMSNorm", "Repeat", "Residual", "Scale", "Serial", "SigpropError", "Sweep",
    "UnsupportedComposition", "compare", "load", "presets", "save", "simulate", "sweep",
    "theory",
]
__version__ = "0.1.0"
