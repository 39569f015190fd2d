"""The symbolic face: sympy recursions obtained by running the ops' own theory laws.

Nothing here re-types a propagation law: a block's per-layer map is what its theory face
returns over :data:`~sigprop.state.ns.SYMBOLIC` on a state of symbols. Modules, lowest first:

* ``symbols`` — the one symbol table (``q_a, m_a, c_ab, g_a``, hyperparameters, depth);
* ``evaluation`` — numbers from expressions that may hold unevaluated Gaussian expectations;
* ``timeouts`` — every potentially slow sympy call in a forked child with a time limit;
* ``maps`` — :func:`block_map` / :func:`backward_map` of any op or block;
* ``hyperparams`` — :func:`preset_block` (a preset's block with symbols), :func:`substitute`;
* ``depth`` — closed forms in the depth index (:func:`solve_depth`, :func:`depth_product`);
* ``asymptotics`` — correlation maps near c = 1 and the law of 1 - c_l they imply;
* ``checks`` — symbolic results against the numeric theory engine;
* ``finite_width`` — the first-order finite-width corrections of a Dense -> Act layer in closed
  form (the delta method on the layer's law; the feature noise through the engine's own
  ``noise_of_moments``);
* ``derivation`` — the records the scripts of ``derivations/`` write for the paper, and their runner.

May import: ``sigprop.engines``, ``sigprop.ops``, ``sigprop.kernels``, ``sigprop.state`` and the
top-level foundation modules; never ``sigprop.pipeline``, ``sigprop.figures`` or ``sigprop.analysis``.
"""

from sigprop.symbolic.asymptotics import corr_map, eps_map, increment_series, log_law, near_one
from sigprop.symbolic.checks import (
    CLOSED_FORM_ACTS,
    INTEGRAL_ACTS,
    available_acts,
    random_sweeps,
    rel_error,
    symbolic_dataset,
    theory_of,
)
from sigprop.symbolic.depth import DepthSolution, depth_product, solve_depth
from sigprop.symbolic.derivation import (
    DERIVATIONS_DIR,
    Check,
    Derivation,
    Equation,
    derivation_names,
    load_derivation,
    run_derivations,
    run_one,
    script_main,
    summary,
)
from sigprop.symbolic.evaluation import evaluate, numeric, on_dataset
from sigprop.symbolic.hyperparams import op_symbols, preset_block, preset_defaults, substitute
from sigprop.symbolic.maps import backward_map, block_map, cotangent, factor_roots, state
from sigprop.symbolic.symbols import (
    ALPHA,
    B_DN,
    BETA,
    C0,
    C_AB,
    C_L,
    DEEPNET,
    EPS,
    G_0,
    G_A,
    G_B,
    G_L,
    GAIN,
    LATEX_NAMES,
    M0,
    M_A,
    M_B,
    ONE_MINUS_C,
    Q0,
    Q_A,
    Q_B,
    Q_L,
    RATIO,
    SIGMA_1,
    SIGMA_2,
    SIGMA_B,
    SIGMA_W,
    SQRT_ONE_MINUS_C,
    SYMBOLS,
    L,
    Q_l,
    canonical_symbols,
    l,
    latex,
)
from sigprop.symbolic.timeouts import TIMEOUT_S, TimedOut, bounded, is_zero, simplify
