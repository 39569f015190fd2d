"""The dataset variables: one list, shared by theory, Monte Carlo, saving and comparison.

Every result dataset (kind ``theory``, ``montecarlo`` or ``symbolic``) carries these variables
under these names, in this order (DESIGN.md, "Dataset schema"). Each :class:`Variable` states
its own dims (Monte Carlo puts ``seed`` in front; sweeps add their grid dims after ``layer``), a
``long_name``, ``units`` (``"1"``: every quantity here is dimensionless) and which variable it
is the log-space companion of. Scales that grow exponentially with depth are computed in log
space; the linear variable is ``exp`` of its companion (:func:`complete`), so it may overflow to
inf where the log stays finite.

:func:`describe` writes this onto a dataset: each variable's ``long_name``, ``units`` and
``description`` attributes, and the dataset's CF attributes (``Conventions``, ``title``,
``history``, ``source``); the engines and :func:`sigprop.save` call it.

A foundation module: imports numpy and the standard library only.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sigprop.version import __version__

MAX_WIDTH = 2**53  # the largest width N a theory takes: the integers float64 holds exactly
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
    Variable("log_var", PER_INPUT, "log feature variance of the stream", "1",
             "log var, finite at any depth (var itself may overflow to inf in float64; -inf "
             "where var is exactly 0)", log_of="var"),
    Variable("corr", PER_PAIR, "cosine similarity between inputs", "1",
             "<x_a, x_b> / (|x_a| |x_b|) for each pair of inputs (1 on the diagonal; 0 off it "
             "for an input of zeros, whose cosine is 0/0)"),
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
    Variable("weight_grad_q", PER_INPUT, "weight-gradient second moment of the block", "1",
             "N^-2 sum over the block's Dense ops D of ||dl/dW_D||_F^2 = N^-2 sum_D ||g_D||^2 "
             "||x_D||^2 for input a's loss l = <delta_L, x_L> alone (delta_L ~ N(0, I)), g_D the "
             "cotangent at D's output, x_D its input, N the width of the net's input (layer 0); "
             "the theory's value is E = sum_D (n_in n_out / N^2) q_in gq_out (gradient "
             "independence). Biases excluded; NaN where there are no weights (layer 0, a block "
             "without Dense, as branch_q is NaN without a branch) and from sp.from_torch, which "
             "does not measure it",
             scale=True, backward=True),
    Variable("log_weight_grad_q", PER_INPUT, "log weight-gradient second moment of the block",
             "1", "log weight_grad_q, finite at any depth",
             log_of="weight_grad_q", backward=True),
)}

NAMES = tuple(VARIABLES)
PRIMARY = tuple(n for n, v in VARIABLES.items() if v.log_of is None)  # not a log companion
LOG_NAME = {v.log_of: n for n, v in VARIABLES.items() if v.log_of}  # "q" -> "log_q"
FORWARD = tuple(n for n, v in VARIABLES.items() if not v.backward)  # sp.theory(backward=False)


def _spread(name: str, dims, of: str, note: str = "", called: str | None = None) -> Variable:
    """A finite-width variable: Var[``of``] across random nets at the dataset's width N."""
    return Variable(name, dims, f"variance of {called or of} across seeds", "1",
                    f"Var[{of}] over random nets at the dataset's width N, leading order (O(1/N)"
                    + (f"; {note})" if note else ")"))


# Added by ``sp.theory(net, inputs, width=N)`` (sigprop.engines.finite_width), at the width N
# in the dataset's ``width`` attr; a correction is E[stat at width N] - stat_inf to O(1/N).
FINITE_WIDTH_VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable("log_q_correction", PER_INPUT, "first-order finite-width correction to E log q", "1",
             "a/N with E[log q] = log q_inf + a/N + O(1/N^2) at the dataset's width N"),
    Variable("q_rel_correction", PER_INPUT, "first-order relative correction to E q", "1",
             "E[q]/q_inf - 1 to O(1/N) at the dataset's width N"),
    Variable("corr_correction", PER_PAIR, "first-order finite-width correction to E corr", "1",
             "E[corr] - corr_inf to O(1/N) at the dataset's width N (NaN, with a warning, "
             "where the central differences do not resolve it: a pair's Gram near singular, "
             "corr_inf within ~1e-4 of +-1)"),
    Variable("mean_correction", PER_INPUT, "first-order finite-width correction to E mean", "1",
             "E[mean] - mean_inf to O(1/N) at the dataset's width N"),
    Variable("var_rel_correction", PER_INPUT, "first-order relative correction to E var", "1",
             "E[var]/var_inf - 1 to O(1/N) at the dataset's width N (var = q - mean^2: E q's term "
             "less E mean^2's, which holds the realised mean's variance)"),
    Variable("log_branch_q_correction", PER_INPUT,
             "first-order finite-width correction to E log branch_q", "1",
             "a/N with E[log branch_q] = log branch_q_inf + a/N at the dataset's width N (the "
             "branch of the block's first residual on the stream, as branch_q; NaN where there "
             "is none)"),
    Variable("branch_q_rel_correction", PER_INPUT, "first-order relative correction to E branch_q",
             "1", "E[branch_q]/branch_q_inf - 1 to O(1/N) at the dataset's width N (NaN where "
             "there is no branch)"),
    _spread("var_log_q", PER_INPUT, "log q"),
    _spread("var_mean", PER_INPUT, "mean", "a zero-mean stream's E mean^2", "the feature mean"),
    _spread("var_corr", PER_PAIR, "corr", "0 on the diagonal"),
    _spread("var_log_var", PER_INPUT, "log var", "var = q - mean^2; 0 where var_inf = 0, NaN "
            "where var_rel_correction is"),
    _spread("var_log_branch_q", PER_INPUT, "log branch_q", "NaN where there is no branch"),
    Variable("grad_q_rel_correction", PER_INPUT, "first-order relative correction to E grad_q",
             "1", "E[grad_q]/grad_q_inf - 1 = c/N at every layer l, exact weights: c from the "
             "walk of a forward tangent, E grad_q_l = E |J_l t|^2 / N (the layers above the input "
             "by one adjoint pass; NaN from an op with no finite-width rule)", backward=True),
    Variable("weight_grad_q_rel_correction", PER_INPUT,
             "first-order relative correction to E weight_grad_q", "1",
             "E[weight_grad_q]/weight_grad_q_inf - 1 = c/N at every layer l, exact weights: "
             "weight_grad_q has the law of N^-1 |t|^2, t = sum_D J_D T_D x_D the derivative of "
             "the output along a random direction of all block l's weights (T_D of D's, "
             "independent), the walk of the tangent that starts at the block's first Dense as "
             "T x and gains T_D x_D at each Dense, with x's fluctuation carried (NaN at layer 0, "
             "a block without Dense, and from an op with no finite-width rule)",
             backward=True),
    Variable("var_log_grad_q", PER_INPUT, "variance of log grad_q across seeds", "1",
             "Var[log grad_q] over random nets and output cotangents at the dataset's width N, "
             "leading order (O(1/N)), at every layer as grad_q_rel_correction (the walk of a "
             "forward tangent J_l t, whose |J_l t|^2 has the law of |J_l^T delta|^2)",
             backward=True),
    Variable("var_log_weight_grad_q", PER_INPUT, "variance of log weight_grad_q across seeds",
             "1", "Var[log weight_grad_q] over random nets and output cotangents at the "
             "dataset's width N, leading order (O(1/N)), at every layer as "
             "weight_grad_q_rel_correction (the walk of t = sum_D J_D T_D x_D, whose N^-1 |t|^2 "
             "has the law of N^-2 sum_D ||g_D||^2 ||x_D||^2 with the block's Denses sharing one "
             "delta_L: their covariances included; NaN where weight_grad_q_rel_correction is)",
             backward=True),
    Variable("typical_log_grad_q", PER_INPUT, "typical log gradient second moment", "1",
             "E[log grad_q] at the dataset's width N for a net made (through any Serial and "
             "Repeat) of Pre-BN blocks x + alpha F(BN x) (B = 2..4 inputs), Dense -> BN -> relu "
             "blocks (B = 2, 3) and exact scales (Scale, x -> beta x + 0 F(x)): "
             "per block the E log of a ratio of means of N i.i.d. features (Laplace t-integral; "
             "far below log E grad_q at B <= 3, whose mean is carried by features of batch "
             "variance ~ eps). NaN for other nets",
             backward=True),
    Variable("valid_width_q", PER_INPUT, "width where the correction to q is 10 %", "1",
             "10 |a_q|: above this width |E q / q_inf - 1| < 10 % at first order"),
    Variable("valid_width_corr", PER_PAIR, "width where the correction to corr is 10 %", "1",
             "10 |a_corr| / max(|corr_inf|, 0.1): above it the correction to corr is < 10 % "
             "of corr (< 0.01 where |corr_inf| < 0.1, as it crosses 0)"),
    Variable("valid_width_var", PER_INPUT, "width where the correction to var is 10 %", "1",
             "10 |c| (var_rel_correction = c/N): above it |E var / var_inf - 1| < 10 % at first "
             "order. NaN where var_rel_correction is"),
    Variable("valid_width_branch_q", PER_INPUT, "width where the correction to branch_q is 10 %",
             "1", "10 |c| (branch_q_rel_correction = c/N): above it |E branch_q / branch_q_inf - "
             "1| < 10 % at first order. NaN where there is no branch"),
    Variable("valid_width_grad_q", PER_INPUT, "width where the correction to grad_q is 10 %",
             "1", "10 |c| (grad_q_rel_correction = c/N): above it |E grad_q / grad_q_inf - 1| < "
             "10 % at first order. NaN where grad_q_rel_correction is",
             backward=True),
    Variable("valid_width_weight_grad_q", PER_INPUT,
             "width where the correction to weight_grad_q is 10 %", "1",
             "10 |c| (weight_grad_q_rel_correction = c/N): above it |E weight_grad_q / "
             "weight_grad_q_inf - 1| < 10 % at first order. NaN where "
             "weight_grad_q_rel_correction is", backward=True),
)}
ALL_VARIABLES = {**VARIABLES, **FINITE_WIDTH_VARIABLES}  # every variable a dataset may hold


def complete(computed: dict, backward: bool = True) -> dict:
    """Every variable (without ``backward``: every forward one), in dataset order, from
    ``computed``: a linear variable missing from it is ``exp`` of its log companion (overflow to
    inf allowed). Arrays are passed through unchanged."""
    out = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name in VARIABLES if backward else FORWARD:
            out[name] = computed[name] if name in computed else np.exp(computed[LOG_NAME[name]])
    return out


CONVENTIONS = "CF-1.11"  # the netCDF Climate and Forecast conventions the attributes follow
VARIABLE_ATTRS = ("long_name", "units", "description")
# name -> the attributes :func:`describe` writes on that variable (built once: a call's fixed cost)
_DESCRIBED = {name: {k: getattr(v, k) for k in VARIABLE_ATTRS}
              for name, v in ALL_VARIABLES.items()}


def _command() -> str:
    """How this process was started (``sigprop theory sims/x.toml -o x.nc``, ``pytest ...``)."""
    if not sys.argv or not sys.argv[0]:
        return "python"
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def describe(ds, title: str | None = None, *, copy: bool = True):
    """A shallow copy of the xarray Dataset ``ds`` made self-describing: each schema variable
    gets ``long_name``, ``units`` and ``description`` from :data:`VARIABLES`; the dataset gets
    ``Conventions`` (CF), ``title`` (``title``, else the one it has, else one made from its
    ``kind`` and ``sim``), ``history`` (``<created_at> <command>``) and ``source`` (the sigprop
    version). The variable attributes are always the schema's; dataset attributes already there
    are kept (so a saved and reloaded dataset is unchanged). ``copy=False``: ``ds`` itself is
    described and returned (for a dataset its caller has just made and shares with no one)."""
    if copy:
        ds = ds.copy(deep=False)
    for name, var in ds.data_vars.variables.items():  # Variables: no DataArray built per name
        described = _DESCRIBED.get(str(name))
        if described is not None:
            var.attrs.update(described)
    attrs = ds.attrs
    kind = attrs.get("kind", "result")
    if title is not None:
        attrs["title"] = title
    attrs.setdefault("title", f"sigprop {kind}" + (f" of sim {attrs['sim']}" if "sim" in attrs
                                                  else ": signal propagation by depth"))
    attrs.setdefault("Conventions", CONVENTIONS)
    attrs.setdefault("source", f"sigprop {__version__} ({kind})")
    if "created_at" in attrs:
        attrs.setdefault("history", f"{attrs['created_at']} {_command()}")
    return ds


AXIS_SCALES = ("auto", "linear", "log")  # a plot axis: log where the data span decades, or fixed
