"""Knife edges: inputs that put a norm on a variance of exactly 0, where the gradient jumps.

There the exact value is phi'(0) of an exact 0, which the theory computes. A float net's
rounding can leave +-1e-16 instead, where phi' is 0 or 1 at random (relu) and the norm's
Jacobian is 1/sqrt(eps): its gradient can be ~1/eps per norm larger, by the order of its sums.
The Monte Carlo is a float net too: on Pre-LN over constant inputs it gave 1 at width 256 and
e^11.5 at width 500. A review measured torch at 1e9 against the theory's 1 (identical inputs
into BatchNorm, B = 3).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from sigprop.errors import KnifeEdgeWarning
from sigprop.kernels.gaussian import get_activation
from sigprop.ops.activation import Act
from sigprop.ops.base import Op
from sigprop.ops.dense import Scale
from sigprop.ops.norms import BatchNorm, LayerNorm, RMSNorm
from sigprop.ops.structure import Repeat, Residual, Serial

ROUNDING = 1e-12  # a relative difference this small is taken as rounding (var / q, corr, q)
ONE_VALUE = (Act, Scale, RMSNorm, BatchNorm)  # a stream of one value across features stays so


def warn_knife_edge(net: Op, inputs, stacklevel: int = 4) -> None:
    """:class:`KnifeEdgeWarning` where ``inputs`` put a norm of ``net`` on a variance of 0, in a
    net whose activation's derivative jumps at 0 (relu, leaky_relu, elu(alpha != 1)): a
    LayerNorm that meets the inputs' features of one value (var / q <= ROUNDING) before any Dense
    or affine mixes them (:func:`_flat_meets_layernorm`: Pre-LN's, not Post-LN's, whose norm
    meets x + F(x)), or a BatchNorm on B >= 2 identical inputs (zero batch variance at every
    layer: identical inputs stay identical)."""
    ops = list(net.walk())
    if not any(isinstance(op, Act) and _jumps(op.name) for op in ops):
        return
    flat = one_value(inputs)
    if np.any(flat) and _flat_meets_layernorm(net, True)[1]:
        warnings.warn(
            f"inputs {np.flatnonzero(flat).tolist()} have features of one value (var / q = "
            f"{float(_var_over_q(inputs).min()):.2g}) and meet a LayerNorm, whose output is then 0, "
            "where the gradient jumps (relu'(0) := 0, and the norm's Jacobian is 1/sqrt(eps)): "
            "the theory gives the exact value, and a float net (the Monte Carlo too, at some "
            "widths), whose rounding leaves +-1e-16 there, can be ~1/eps per norm larger. Give "
            "the inputs some variance to study a nearly constant stream.", KnifeEdgeWarning,
            stacklevel=stacklevel)
    if any(isinstance(op, BatchNorm) for op in ops) and _identical(inputs):
        warnings.warn(
            f"the {inputs.n} inputs are identical: every BatchNorm sees a batch variance of 0 and "
            "outputs 0, where the gradient jumps (relu'(0) := 0, and the norm's Jacobian is "
            "1/sqrt(eps)): the theory gives the exact value, and a float net (the Monte Carlo "
            "too), whose rounding leaves +-1e-16 there, can be ~1/eps per BatchNorm larger "
            "(torch: 1e9 against 1). Make the inputs differ to study a nearly degenerate batch.",
            KnifeEdgeWarning, stacklevel=stacklevel)


def _identical(inputs) -> bool:
    """Whether there are B >= 2 inputs, all the same up to rounding."""
    q, m, C = np.asarray(inputs.q), np.asarray(inputs.mean), np.asarray(inputs.corr)
    return bool(inputs.n >= 2 and np.all(C >= 1 - ROUNDING) and np.ptp(q) <= ROUNDING * q.max()
                and np.ptp(m) <= ROUNDING * np.sqrt(q.max()))


def one_value(inputs) -> np.ndarray:
    """Per input, whether its features take one value: var / q <= ROUNDING (the compiled
    engine takes such inputs log-scaled, as the numpy engine does)."""
    return _var_over_q(inputs) <= ROUNDING


def _var_over_q(inputs) -> np.ndarray:
    """var / q = 1 - mu^2 per input, mu = mean / sqrt(q) (the scaled mean of the theory's state)."""
    return 1 - (np.asarray(inputs.mean) / np.sqrt(np.asarray(inputs.q))) ** 2


def _flat_meets_layernorm(op: Op, flat: bool) -> tuple[bool, bool]:
    """(whether the stream after ``op`` has one value across features, whether a LayerNorm met
    it so) for a stream in that state or not (``flat``). Dense, FeatureAffine and ops not known
    here end it (conservatively: no warning past them)."""
    if isinstance(op, LayerNorm):
        return flat, flat
    if isinstance(op, ONE_VALUE):
        return flat, False
    if isinstance(op, (Serial, Repeat)):  # (a Repeat's copies: the first decides)
        met = False
        for child in (op.layers if isinstance(op, Serial) else (op.block,)):
            flat, found = _flat_meets_layernorm(child, flat)
            met = met or found
        return flat, met
    if isinstance(op, Residual):
        out, met = _flat_meets_layernorm(op.branch, flat)
        return flat and out, met
    return False, False


@functools.cache
def _jumps(act: str) -> bool:
    """Whether phi' jumps at 0 (its values on either side of 0 differ)."""
    grad = get_activation(act).grad(np.array([-1e-300, 1e-300]))
    return bool(grad[0] != grad[1])
