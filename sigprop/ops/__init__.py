"""The op vocabulary. Each op owns all its faces in one place.

An op is a frozen dataclass; its faces are methods: the infinite-width law (forward and backward,
written once over a namespace that is numpy or sympy, so the symbolic face is the same source),
the Monte Carlo face (forward on arrays and its vector-Jacobian product), and the hooks the
engines ask of it. Modules: ``base`` (:class:`Op`, validation, serialisation), ``dense``
(``Dense``, ``Scale``, ``FeatureAffine``), ``activation`` (``Act``), ``norms`` (``LayerNorm``, ``RMSNorm``,
``BatchNorm``), ``structure`` (``Serial``, ``Repeat``, ``Residual``; the blocks of a net).

May import: ``sigprop.kernels``, ``sigprop.state`` and ``sigprop.errors``; never an engine.
"""

from sigprop.ops.activation import Act
from sigprop.ops.base import Op, op_from_dict
from sigprop.ops.dense import Dense, FeatureAffine, Scale
from sigprop.ops.norms import BatchNorm, LayerNorm, RMSNorm
from sigprop.ops.structure import (
    Repeat,
    Residual,
    Serial,
    at_point,
    grid_points,
    layers_of,
    replace_sweeps,
    sweeps_of,
)
