"""sigprop: signal propagation through very deep residual networks.

Three faces that must agree: symbolic derivations (sympy), the infinite-width theory
(:func:`theory`) and finite-width Monte Carlo. The conventions: docs/guide.md, docs/schema.md.

The public names are imported on first use (PEP 562, as SPEC 1's ``lazy_loader`` does): the
imports under ``TYPE_CHECKING`` below are the list of them, read by type checkers and the API
docs, and parsed once here into the table that :func:`__getattr__` follows. So
``import sigprop`` costs only this file, and the command line starts without numpy, xarray,
scipy, sympy or matplotlib.
"""

from __future__ import annotations

import ast
import importlib
from typing import TYPE_CHECKING

from sigprop.version import __version__

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


def _public() -> dict[str, tuple[str, str | None]]:
    """name -> (module, attribute; None when the name is the module), from the imports under
    ``TYPE_CHECKING`` in this file."""
    with open(__file__, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    block = next(n for n in tree.body if isinstance(n, ast.If)
                 and getattr(n.test, "id", None) == "TYPE_CHECKING")
    return {alias.name: (f"{node.module}.{alias.name}", None) if node.module == "sigprop"
            else (node.module, alias.name)
            for node in block.body for alias in node.names}


_WHERE = _public()
__all__ = sorted(_WHERE)  # noqa: PLE0605 (the names of the TYPE_CHECKING imports)


def __getattr__(name: str):
    """Import a public name's module on first use and keep the name here; a subpackage
    (``sp.data``, ``sp.ops``) is imported as ``import sigprop.<name>`` would."""
    if name not in _WHERE:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # the subpackage exists, a dependency is missing
                raise
            raise AttributeError(f"module 'sigprop' has no attribute {name!r}") from None
    module, attribute = _WHERE[name]
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
