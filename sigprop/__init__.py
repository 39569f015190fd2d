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
from sigprop.pipeline.sweep import sweep_load, sweep_run
from sigprop.state.inputs import Inputs
from sigprop.state.params import Sweep, sweep

__all__ = [
    "Act", "BatchNorm", "ConfigError", "Dense", "Inputs", "LayerNorm", "MonteCarloOverflow", "Op",
    "OverflowInTheory",
    "RMSNorm", "Repeat", "Residual", "Scale", "Serial", "SigpropError", "Sweep",
    "UnsupportedComposition", "compare", "load", "plot", "presets", "save", "simulate", "sweep",
    "sweep_load", "sweep_run", "theory",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``sp.plot`` (:func:`sigprop.analysis.plot.plot`), imported on first use: matplotlib
    costs ~0.5 s of start-up that theory, simulate and the CLI do not need."""
    if name == "plot":
        from sigprop.analysis.plot import plot
        return plot
    raise AttributeError(f"module 'sigprop' has no attribute {name!r}")
