"""The dataset variables: one list, shared by theory, Monte Carlo, saving and comparison.

Every result dataset (kind ``theory``, ``montecarlo`` or ``symbolic``) carries these variables
under these names, in this order (DESIGN.md, "Dataset schema"). Each :class:`Variable` states
its own dims (Monte Carlo puts ``seed`` in front; sweeps add their grid dims after ``layer``), a
``long_name``, ``units`` (``"1"``: every quantity here is dimensionless) and which variable it
is the log-space companion of. Scales that grow exponentially with depth are computed in log
space; the linear variable is ``exp`` of its companion (:func:`complete`), so it may overflow to
inf where the log stays finite.

A foundation module: imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PER_INPUT = ("layer", "input")
PER_PAIR = ("layer", "input", "input_b")


@dataclass(frozen=True)
class Variable:
    """One dataset variable.

    ``log_of``: the variable this one is the natural log of (``log_q`` -> ``q``), else None.
    ``scale``: a second moment (positive, exponential in depth, heavy-tailed at finite width).
    ``backward``: a backward-pass statistic (at layer l it depends on the blocks above l).
    """

    name: str
    dims: tuple[str, ...]
    long_name: str
    units: str
    description: str
    log_of: str | None = None
    scale: bool = False
    backward: bool = False

    @property
    def pairwise(self) -> bool:
        """True for a variable over pairs of inputs (dims end in ``input_b``)."""
        return "input_b" in self.dims

    def dims_with(self, lead: tuple[str, ...] = (), grid: tuple[str, ...] = ()) -> tuple[str, ...]:
        """The dims in a dataset: ``lead`` (e.g. ``seed``), ``layer``, ``grid`` (sweeps), the rest."""
        return (*lead, self.dims[0], *grid, *self.dims[1:])


VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable("q", PER_INPUT, "second moment of the stream", "1",
             "(1/N) sum_i x_i^2 of the residual stream", scale=True),
    Variable("log_q", PER_INPUT, "log second moment of the stream", "1",
             "log q, finite at any depth (q itself may overflow to inf in float64)",
             log_of="q"),
    Variable("mean", PER_INPUT, "feature mean of the stream", "1",
             "(1/N) sum_i x_i, the mean over features"),
    Variable("var", PER_INPUT, "feature variance of the stream", "1",
             "q - mean^2, the biased variance over features", scale=True),
    Variable("corr", PER_PAIR, "cosine similarity between inputs", "1",
             "<x_a, x_b> / (|x_a| |x_b|) for each pair of inputs (1 on the diagonal)"),
    Variable("grad_q", PER_INPUT, "gradient second moment", "1",
             "(1/N) ||delta_l||^2 of the cotangent pulled back from delta_L ~ N(0, I)",
             scale=True, backward=True),
    Variable("log_grad_q", PER_INPUT, "log gradient second moment", "1",
             "log grad_q, finite at any depth", log_of="grad_q", backward=True),
    Variable("branch_q", PER_INPUT, "second moment of the residual branch output", "1",
             "(1/N) sum_i f_i^2 of the branch output of block l (NaN where there is none)",
             scale=True),
    Variable("log_branch_q", PER_INPUT, "log second moment of the residual branch output", "1",
             "log branch_q, finite at any depth", log_of="branch_q"),
)}

NAMES = tuple(VARIABLES)
PRIMARY = tuple(n for n, v in VARIABLES.items() if v.log_of is None)  # not a log companion
LOG_NAME = {v.log_of: n for n, v in VARIABLES.items() if v.log_of}  # "q" -> "log_q"


def complete(computed: dict) -> dict:
    """Every variable, in dataset order, from ``computed``: a linear variable missing from it is
    ``exp`` of its log companion (overflow to inf allowed). Arrays are passed through unchanged."""
    out = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name in VARIABLES:
            out[name] = computed[name] if name in computed else np.exp(computed[LOG_NAME[name]])
    return out
