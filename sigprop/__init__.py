"""sigprop: signal propagation through very deep residual networks.

Three faces that must agree: symbolic derivations (sympy), the infinite-width theory
(:func:`theory`) and finite-width Monte Carlo. The conventions: docs/guide.md, docs/schema.md.

The public names are imported on first use (PEP 562, as SPEC 1's ``lazy_loader`` does): the
imports under ``TYPE_CHECKING`` below are read by type checkers and the API docs, and the
literal table ``_WHERE`` is what :func:`__getattr__` follows (tests/test_init.py checks that
the two list the same names from the same modules). So ``import sigprop`` costs only this
file, and the command line starts without numpy, xarray, scipy, sympy or matplotlib.
"""

from __future__ import annotations

import importlib

from sigprop.version import __version__

# Not ``from typing import TYPE_CHECKING``: importing typing would double this file's import
# time. Type checkers (mypy, pyright) read a name TYPE_CHECKING as true whatever defines it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from sigprop import presets
    from sigprop.analysis.compare import compare
    from sigprop.analysis.plot import plot
    from sigprop.data import load, save
    from sigprop.engines.montecarlo import simulate
    from sigprop.engines.theory import theory
    from sigprop.errors import (
        ConfigError,
        FiniteWidthWarning,
        KnifeEdgeWarning,
        MonteCarloOverflow,
        OverflowInTheory,
        SigpropError,
        UnsupportedComposition,
    )
    from sigprop.interop.torch import from_torch, simulate_torch
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
    )
    from sigprop.pipeline.sweep import sweep_load, sweep_run
    from sigprop.state.inputs import Inputs
    from sigprop.state.params import Sweep, sweep

# name -> the module of its ``from <module> import <name>`` above; module "sigprop" means the
# name is a subpackage (``sp.presets``).
_WHERE: dict[str, str] = {
    "presets": "sigprop",
    "compare": "sigprop.analysis.compare",
    "plot": "sigprop.analysis.plot",
    "load": "sigprop.data",
    "save": "sigprop.data",
    "simulate": "sigprop.engines.montecarlo",
    "theory": "sigprop.engines.theory",
    **dict.fromkeys(("ConfigError", "FiniteWidthWarning", "KnifeEdgeWarning", "MonteCarloOverflow",
                     "OverflowInTheory", "SigpropError", "UnsupportedComposition"),
                    "sigprop.errors"),
    "from_torch": "sigprop.interop.torch",
    "simulate_torch": "sigprop.interop.torch",
    **dict.fromkeys(("Act", "BatchNorm", "Dense", "FeatureAffine", "LayerNorm", "Op", "Repeat",
                     "Residual", "RMSNorm", "Scale", "Serial"), "sigprop.ops"),
    "sweep_load": "sigprop.pipeline.sweep",
    "sweep_run": "sigprop.pipeline.sweep",
    "Inputs": "sigprop.state.inputs",
    "Sweep": "sigprop.state.params",
    "sweep": "sigprop.state.params",
}
__all__ = sorted(_WHERE)  # noqa: PLE0605 (the names of the TYPE_CHECKING imports)


def __getattr__(name: str):
    """Import a public name's module on first use and keep the name here; a subpackage
    (``sp.data``, ``sp.ops``) is imported as ``import sigprop.<name>`` would."""
    module = _WHERE.get(name)
    if module is None or module == __name__:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # the subpackage exists, a dependency is missing
                raise
            raise AttributeError(f"module 'sigprop' has no attribute {name!r}") from None
        if module is None:
            return value
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the subpackages imported so far, not this module's machinery
    (``sp.<tab>`` offered TYPE_CHECKING, annotations and importlib)."""
    machinery = {"TYPE_CHECKING", "annotations", "importlib"}
    return sorted({n for n in globals() if not n.startswith("_")} - machinery | {*__all__})
