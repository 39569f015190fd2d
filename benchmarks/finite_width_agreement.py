"""First-order finite-width theory against Monte Carlo at four widths (issue 16).

For each preset (depth 8, inputs q = 1, corr = 0.5) simulates widths 64, 128, 256, 512 with
independent seeds (root seed 2024 + width), fits each statistic as c + a/N by weighted least
squares and compares the fitted 1/N slope a (or, for Var log q, the leading coefficient c of
N Var log q) with the prediction of ``sp.theory(net, inputs, width=N)``; z = (fitted -
predicted) / SE. Writes its section of benchmarks/RESULTS.md.

Its second section, the typical BatchNorm gradient: Pre-BN (presets.prebn, eps = 1e-5, L = 16,
issue 16) at B = 2, 3, 4 and four widths, the predicted E log G_0 (``typical_log_grad_q`` at
layer 0) against the Monte Carlo mean of log G_0 (input 0) and its standard error, the Monte
Carlo median, and the infinite-width log E G_0; the offset (MC - predicted) fitted per B as
c + a/N; (``--part batchnorm-two``) Pre-BN's forward statistics at a batch of two, where
BatchNorm is a map of the realised Gram; (``--part batchnorm-wide``) the same statistics
measured at B = 3 and 4, where the theory has no first-order rule (its NaN and its warning
shown), beside B = 2's prediction and measurement; (``--part batchnorm-two-exact``) the same
net's N Var log q against its exact law as eps -> 0 (:func:`sigprop.testing.norm_branch_chain`):
the prediction, the fit over widths, and the Monte Carlo at each width.

Its third (``--part backward``), the input gradient's 1/N coefficient: predicted by the walk of
a forward tangent against the Monte Carlo slope with exact weights, and the slope under
gradient independence. Its fourth (``--part affine``), a FeatureAffine with constant vectors in
a residual branch (and the same net with a Scale; and vectors that vary over the features),
forward and backward. Its fifth (``--part
spread``), Var log grad_q_0 across nets, predicted against Monte Carlo. Its sixth (``--part
layers``), the gradient's c and Var log grad_q at the layers above the input (one recorded
walk and an adjoint pass), against Monte Carlo, and (``--part preactivation``) at a Dense's
output before its activation. Its seventh (``--part uniform``), the same c at
every layer of a net with uniform weights (explicit draws, 8x the seeds). Its eighth (``--part
norm-affine``), a FeatureAffine whose vectors vary, right after a LayerNorm; (``--part
after-norm``) activations after a norm of a Dense's features, on the stream and in a residual
branch, forward and the input gradient; (``--part norm-start``) the gradient at a layer
that ends between a norm and its activation; (``--part uniform-mlp``) imported MLPs with
uniform weights (before an activation, and before a norm and its activation), each
coefficient's uniform part against the coupled Monte Carlo difference from Gaussian weights;
(``--part torch-mlp``, ``--part torch-preln``) real torch nets at their default init (an MLP
with LayerNorms; a Linear and two Pre-LN GELU blocks), re-initialised by ``sp.simulate_torch``. Its ninth (``--part exact``, no Monte Carlo), a deep relu net's coefficients against the same
recursion with exact derivatives (the symbolic face), where corr -> 1 approaches relu's kink.
Its tenth (``--part weight-grad``), weight_grad_q's 1/N coefficient, and (``--part
weight-spread``) its spread Var log weight_grad_q with it, at blocks of one Dense and of two.

    .venv/bin/python benchmarks/finite_width_agreement.py [--seeds 4000] [--part typical]
"""

import argparse
import math
import warnings

import numpy as np

import sigprop as sp
from sigprop import presets
from sigprop.analysis.compare import fit_inverse_width
from sigprop.engines.finite_width import gradient_coefficient
from sigprop.errors import FiniteWidthWarning
from sigprop.ops import layers_of
from sigprop.pipeline.bench import write_section
from sigprop.testing import (
    gaussian_weights,
    measure,
    measure_gradient,
    measure_gradient_layers,
    measure_gradient_spread,
    measure_layers,
    measure_mean_mode,
    measure_uniform_term,
    measure_weight_gradient,
    with_dense,
)

DEPTH = 8
WIDTHS = [64, 128, 256, 512]
PRESETS = {
    "plain relu": presets.plain(DEPTH, "relu", shape="dense_act"),
    "plain tanh": presets.plain(DEPTH, "tanh", shape="dense_act"),
    "Pre-LN (relu mlp)": presets.preln(DEPTH),
    "Post-LN (relu mlp)": presets.postln(DEPTH),
}

MEAN_STREAMS = [
    ("L = 32, alpha = 1/4", presets.resnet(32, "relu", alpha=0.25, shape="dense_act"),
     [1024, 2048, 4096], 300),
    ("L = 64, alpha = 1/8 (issue 16)", presets.resnet(64, "relu", alpha="1/sqrt(L)",
                                                      shape="dense_act"), [1024, 2048], 300),
]


def _write(title, out, lines):
    """The section's markdown (its lines joined), written to ``out`` unless that is empty."""
    md = "\n".join(lines)
    if out:
        write_section(out, title, md)
    return md


def _z_rows(name, found):
    """Markdown rows | name | statistic | predicted | fitted ± SE | z | of ``found`` ((statistic,
    predicted, fitted, se) each), printed as they come."""
    rows = []
    for stat, pred, fit, se in found:
        rows.append(f"| {name} | {stat} | {pred:.4g} | {fit:.4g} ± {se:.2g} | "
                    f"{(fit - pred) / se:+.2f} |")
        print(rows[-1], flush=True)
    return rows


def _beside(label, predicted, fitted, se) -> str:
    """A markdown row | label | each prediction | fitted ± SE | z against each |, the first
    prediction the one checked and the others beside it, printed as it comes."""
    row = (f"| {label} | " + " | ".join(f"{p:+.4g}" for p in predicted)
           + f" | {fitted:+.4g} ± {se:.2g} | "
           + " | ".join(f"{(fitted - p) / se:+.2f}" for p in predicted) + " |")
    print(row, flush=True)
    return row


def first_order(seeds=4000, out="benchmarks/RESULTS.md"):
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    rows = ["| preset | statistic (layer 8) | predicted | fitted ± SE | z |",
            "|---|---|---|---|---|"]
    for name, net in PRESETS.items():
        rows += _z_rows(name, measure(net, inputs, WIDTHS, seeds, root_seed=2024))
    rows += ["", "| mean-carrying stream | widths | seeds | A predicted | A measured ± SE | z |",
             "|---|---|---|---|---|---|"]
    for name, net, widths, n in MEAN_STREAMS:
        pred, fit, se = measure_mean_mode(net, sp.Inputs(q=1.0), widths, n, root_seed=2024)
        rows.append(f"| {name} | {widths} | {n} | {pred:.4g} | {fit:.4g} ± {se:.2g} | "
                    f"{(fit - pred) / se:+.2f} |")
        print(rows[-1], flush=True)
    intro = (f"`benchmarks/finite_width_agreement.py`: depth {DEPTH}, inputs q = 1, corr = 0.5, "
             f"widths {WIDTHS}, {seeds} seeds per width (root seed 2024 + width), input 0 (pair "
             "0, 1 for corr). Slopes: a in E[stat](N) = c + a/N fitted by weighted least squares "
             "on the per-width means; N Var log q, N Var corr, N Var log var and N Var log "
             "branch_q: the intercept of N Var(N) = V + c/N (the SE of each sample variance from "
             "its fourth moment); var = q - mean^2 over var_inf (its slope holds the realised "
             "mean's variance, -1 per fresh draw of zero-mean features); log branch_q where the "
             "block has a residual branch. "
             "Predicted: "
             "`sp.theory(net, inputs, width=N)` (sigprop.engines.finite_width). Second table: "
             "the backward mean mode of x + alpha relu(W x), E G_0 = G_0,inf (1 + A/N) "
             "(`mean_mode_coefficient`); measured: N (mean over seeds of G_0 / G_0,inf - 1), "
             "inverse-variance weighted over the widths (SE from the spread over seeds; G_0 is "
             "heavy-tailed, so the SE is optimistic where A/N is not small).")
    return _write("Finite width: first-order correction, predicted vs fitted", out,
                  [intro, "", *rows])


TYPICAL_DEPTH = 16
TYPICAL_WIDTHS = [128, 256, 512, 1024]


def typical(seeds=4000, out="benchmarks/RESULTS.md"):
    """The typical BatchNorm gradient table (module docstring); returns its markdown."""
    net = presets.prebn(TYPICAL_DEPTH)
    rows = ["| B | N | predicted E log G_0 | MC mean ± SE | z | MC median | log E G_0 (N = inf) |",
            "|---|---|---|---|---|---|---|"]
    fits = ["| B | c ± SE (N-independent) | c / SE | a ± SE (1/N slope) | chi^2 / dof |",
            "|---|---|---|---|---|"]
    for B in (2, 3, 4):
        inputs = sp.Inputs(q=1.0, corr=0.5, n=B, law="gaussian")
        off, off_se = [], []
        for N in TYPICAL_WIDTHS:
            with warnings.catch_warnings():  # the unreachable-mean warning is the point here
                warnings.simplefilter("ignore", FiniteWidthWarning)
                th = sp.theory(net, inputs, width=N, layers=[0])
            mc = sp.simulate(net, inputs, width=N, seeds=seeds, backend="numpy",
                             dtype="float64", root_seed=2024 + 1000 * B + N)
            pred = float(th["typical_log_grad_q"].values[0, 0])
            x = mc["log_grad_q"].values[:, 0, 0]
            se = x.std(ddof=1) / math.sqrt(seeds)
            off.append(x.mean() - pred)
            off_se.append(se)
            rows.append(f"| {B} | {N} | {pred:.3f} | {x.mean():.3f} ± {se:.3f} | "
                        f"{(x.mean() - pred) / se:+.2f} | {np.median(x):.3f} | "
                        f"{float(th['log_grad_q'].values[0, 0]):.3f} |")
            print(rows[-1], flush=True)
        c, se_c, a, se_a = fit_inverse_width(TYPICAL_WIDTHS, off, off_se)
        chi2 = float(np.sum(((np.array(off) - c - a / np.array(TYPICAL_WIDTHS))
                             / np.array(off_se)) ** 2))
        fits.append(f"| {B} | {c:+.3f} ± {se_c:.3f} | {c / se_c:+.1f} | {a:+.1f} ± {se_a:.1f} | "
                    f"{chi2:.1f} / {len(TYPICAL_WIDTHS) - 2} |")
        print(fits[-1], flush=True)
    intro = (f"`benchmarks/finite_width_agreement.py --part typical`: Pre-BN "
             f"(`presets.prebn({TYPICAL_DEPTH})`, eps = 1e-5), Gaussian inputs q = 1, corr = 0.5, "
             f"batch B, widths {TYPICAL_WIDTHS}, {seeds} seeds per width (root seed 2024 + "
             "1000 B + N), input 0. Predicted: E log G_0 at width N, `typical_log_grad_q` of "
             "`sp.theory(net, inputs, width=N)` (per block a t-integral over N i.i.d. features, "
             "`bn_typical_log_gain`, blocks summed as independent). z = (MC mean - predicted) / "
             "SE. The infinite-width log E G_0 is far above both at B = 2, 3: the mean is "
             "carried by features of batch variance ~ eps that no practical width holds.")
    note = ("Second table: the offset MC mean - predicted fitted per B as c + a/N (weighted "
            "least squares, `fit_inverse_width`). a: the per-block O(1/N) term the model leaves "
            "out (the realised forward and branch-cotangent Grams fluctuate by O(1/sqrt N) about "
            "their laws). c, not shrinking with N: each block is given the infinite-width "
            "(mean-law) cotangent Gram G_{l+1}, while a width-N net's realised G_{l+1} is "
            "carried by a few heavy-tailed features, so its diagonal ratios across inputs "
            "G_bb / G_aa spread by O(1) at every N, and a block's gain for input a, convex in "
            "them, is on average larger. Plugging the realised Gram into the block's t-integral "
            "recovers the excess of the lowest block; mixing the stream between blocks by a "
            "random orthogonal map leaves c unchanged, so it is not the persistence of a feature "
            "along the skip (measurements: tests/test_finite_width_typical.py). The spread of "
            "the realised Gram needs the law of a heavy-tailed random matrix, which the model "
            "does not carry.")
    return _write("Finite width: typical BatchNorm gradient (Pre-BN, L = 16)", out,
                  [intro, "", *rows, "", note, "", *fits])


BN_TWO_LAYERS = (1, 4, 8)


def batchnorm_two(seeds=4000, out="benchmarks/RESULTS.md"):
    """Pre-BN at a batch of two (BatchNorm as a map of the realised Gram): the first-order
    theory against Monte Carlo at layers ``BN_TWO_LAYERS``; returns its markdown."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2, law="gaussian")
    rows = ["| layer | statistic | predicted | fitted ± SE | z |", "|---|---|---|---|---|"]
    with warnings.catch_warnings():  # (the gradient's NaN: not read here)
        warnings.simplefilter("ignore", FiniteWidthWarning)
        found = measure_layers(presets.prebn(DEPTH), inputs, WIDTHS, seeds, BN_TWO_LAYERS,
                               root_seed=2024)
    for layer in BN_TWO_LAYERS:
        rows += _z_rows(layer, found[layer])
    intro = (f"`benchmarks/finite_width_agreement.py --part batchnorm-two`: `presets.prebn"
             f"({DEPTH})` (eps = 1e-5), Gaussian inputs q = 1, corr = 0.5, B = 2, widths "
             f"{WIDTHS}, {seeds} seeds per width (root seed 2024 + width), input 0 (pair 0, 1 for "
             "corr); statistics and fits as in the first-order table above (`sigprop.testing."
             "measure`). Predicted: `sp.theory(net, inputs, width=N)`, BatchNorm over two inputs "
             "as a map of the realised Gram.")
    return _write("Finite width: Pre-BN at a batch of two, predicted vs fitted", out,
                  [intro, "", *rows])


BN_WIDE_BATCHES = (3, 4)
# the theory's variable for each statistic of ``measure``: N x it is the statistic's prediction
BN_WIDE_THEORY = {"slope of E log q": "log_q_correction", "slope of E corr": "corr_correction",
                  "N Var log q": "var_log_q", "N Var corr": "var_corr",
                  "slope of E var / var_inf": "var_rel_correction",
                  "N Var log var": "var_log_var",
                  "slope of E log branch_q": "log_branch_q_correction",
                  "N Var log branch_q": "var_log_branch_q",
                  "slope of E mean": "mean_correction", "N Var mean": "var_mean"}


def _bn_theory(inputs):
    """N x each :data:`BN_WIDE_THEORY` variable of ``sp.theory(prebn, inputs, width=N)`` at
    each layer of ``BN_TWO_LAYERS`` (input 0; pair 0, 1 for corr), per N of ``WIDTHS``
    ({layer: {statistic: [value per N]}}), and the first lines of the FiniteWidthWarnings the
    calls gave that say the theory has no rule."""
    values = {layer: {k: [] for k in BN_WIDE_THEORY} for layer in BN_TWO_LAYERS}
    said = []
    for N in WIDTHS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FiniteWidthWarning)
            th = sp.theory(presets.prebn(DEPTH), inputs, width=N).isel(input=0)
        for w in caught:
            line = str(w.message).splitlines()[0]
            if issubclass(w.category, FiniteWidthWarning) and "no finite-width rule" in line \
                    and line not in said:
                said.append(line)
        for layer in BN_TWO_LAYERS:
            for stat, var in BN_WIDE_THEORY.items():
                v = th[var].isel(layer=layer)
                values[layer][stat].append(N * float(v.isel(input_b=1) if "input_b" in v.dims
                                                     else v))
    return values, said


def _no_rule(values) -> str:
    """'no rule (NaN)' where the theory's values are all NaN, else their range as read."""
    v = np.asarray(values)
    if np.all(np.isnan(v)):
        return "no rule (NaN)"
    return f"{np.nanmin(v):.4g}" if np.allclose(v, v[0]) else f"{v.min():.4g} to {v.max():.4g}"


def batchnorm_wide(seeds=4000, out="benchmarks/RESULTS.md"):
    """Pre-BN at batches of three and four, where ``sp.theory(net, inputs, width=N)`` has no
    first-order rule for BatchNorm: the statistics of :func:`batchnorm_two` measured at layers
    ``BN_TWO_LAYERS`` (root seed 20240 + 1000 B + N), the theory's NaN and its warning beside
    them, and for reference B = 2's prediction (read from ``sp.theory`` at B = 2) and its
    Monte Carlo at the same seeds. Returns its markdown."""
    batches = (2, *BN_WIDE_BATCHES)
    inputs = {B: sp.Inputs(q=1.0, corr=0.5, n=B, law="gaussian") for B in batches}
    theory_at, said = {}, {}
    for B in batches:
        theory_at[B], said[B] = _bn_theory(inputs[B])
    rows = ["| layer | statistic | " + " | ".join(f"B = {B} predicted | B = {B} fitted ± SE"
                                                 for B in BN_WIDE_BATCHES)
            + " | B = 2's prediction (reference) | B = 2 fitted ± SE | "
            + " | ".join(f"B = {B}: z from B = 2's prediction" for B in BN_WIDE_BATCHES) + " |",
            "|---" * (4 + 3 * len(BN_WIDE_BATCHES)) + "|"]
    measured = {}
    for B in batches:
        with warnings.catch_warnings():  # (its NaN predictions: read from sp.theory above)
            warnings.simplefilter("ignore", FiniteWidthWarning)
            measured[B] = measure_layers(presets.prebn(DEPTH), inputs[B], WIDTHS, seeds,
                                         BN_TWO_LAYERS, root_seed=20240 + 1000 * B)
    found = {}
    for layer in BN_TWO_LAYERS:
        fitted = {B: {stat: (fit, se) for stat, _, fit, se in measured[B][layer]}
                  for B in batches}
        for stat in fitted[2]:
            ref = theory_at[2][layer][stat]
            if not np.allclose(ref, ref[0], rtol=1e-6, atol=1e-9):
                raise AssertionError(f"B = 2's N x {BN_WIDE_THEORY[stat]} varies over the "
                                     f"widths: {ref}")
            ref = ref[0]
            row = f"| {layer} | {stat} | "
            for B in BN_WIDE_BATCHES:
                fit, se = fitted[B][stat]
                row += f"{_no_rule(theory_at[B][layer][stat])} | {fit:.4g} ± {se:.2g} | "
            fit2, se2 = fitted[2][stat]
            row += f"{ref:.4g} | {fit2:.4g} ± {se2:.2g} | " + " | ".join(
                f"{(fitted[B][stat][0] - ref) / fitted[B][stat][1]:+.2f}"
                for B in BN_WIDE_BATCHES) + " |"
            rows.append(row)
            print(row, flush=True)
            found[layer, stat] = {B: fitted[B][stat] for B in batches} | {"ref": ref}
    warned = [f"- B = {B}: \"{line}\"" for B in BN_WIDE_BATCHES for line in said[B]]
    for B in BN_WIDE_BATCHES:
        if not said[B]:
            warned.append(f"- B = {B}: (no FiniteWidthWarning saying there is no rule)")
    print(*warned, sep="\n", flush=True)
    intro = (f"`benchmarks/finite_width_agreement.py --part batchnorm-wide`: `presets.prebn"
             f"({DEPTH})` (eps = 1e-5), Gaussian inputs q = 1, corr = 0.5, B = "
             f"{', '.join(map(str, BN_WIDE_BATCHES))}, widths {WIDTHS}, {seeds} seeds per width "
             "(root seed 20240 + 1000 B + width), input 0 (pair 0, 1 for corr); statistics and "
             "fits as in the first-order table above (`sigprop.testing.measure`). Predicted: N "
             "times the matching variable of `sp.theory(net, inputs, width=N)` at each width "
             "(`log_q_correction`, `corr_correction`, `var_log_q`, `var_corr`, "
             "`var_rel_correction`, `var_log_var`, `log_branch_q_correction`, "
             "`var_log_branch_q`); at B = 3 and 4 the theory has no first-order rule for "
             "BatchNorm and gives NaN (no rule). For reference, not a prediction for B = 3 "
             "or 4: B = 2's prediction of the same statistic at the same layer (`sp.theory` on "
             "the same inputs at B = 2, where BatchNorm is a map of the realised Gram), the "
             "Monte Carlo at B = 2 with the same seeds, and z = (fitted at B - B = 2's "
             "prediction) / SE at B.")
    said_intro = "The theory's FiniteWidthWarning at each B (first line):"
    return _write("Finite width: Pre-BN at B = 3 and 4, measured (no first-order rule)", out,
                  [intro, "", *rows, "", said_intro, "", *warned, "", _bn_wide_note(found)])


def _bn_wide_note(found) -> str:
    """What the measurement shows, its numbers read from ``found``: each spread at B = 3, 4 as a
    ratio to B = 2's prediction per layer, the largest |z| of the slopes from B = 2's, the
    slopes of E log q and E log branch_q against -N Var / 2 of the same B, how many spreads lie
    more than 3 SE above B = 2's prediction, and N Var log q at the first and last layer."""
    def ratios(stat, B):
        return ", ".join(f"{found[l, stat][B][0] / found[l, stat]['ref']:.2f}"
                         for l in BN_TWO_LAYERS)

    spreads = "; ".join(
        f"{stat}: " + ", ".join(f"B = {B} {ratios(stat, B)}" for B in BN_WIDE_BATCHES)
        + " (B = 2 measured " + ratios(stat, 2) + ")"
        for stat in ("N Var log q", "N Var corr", "N Var log branch_q"))
    slopes = [s for (_, s) in found if s.startswith("slope")]
    z = {B: max(abs(found[k][B][0] - found[k]["ref"]) / found[k][B][1]
                for k in found if k[1] in slopes) for B in BN_WIDE_BATCHES}

    def half(mean, spread, B):  # z of a slope against -(its spread) / 2, SEs as independent
        return max(abs((found[l, mean][B][0] + found[l, spread][B][0] / 2)
                       / math.hypot(found[l, mean][B][1], found[l, spread][B][1] / 2))
                   for l in BN_TWO_LAYERS)

    pairs = (("slope of E log q", "N Var log q"),
             ("slope of E log branch_q", "N Var log branch_q"))
    spread_keys = [k for k in found if k[1].startswith("N Var")]

    def above(B):  # spreads more than 3 SE above B = 2's prediction
        return sum((found[k][B][0] - found[k]["ref"]) / found[k][B][1] > 3 for k in spread_keys)

    q, first, last = "N Var log q", BN_TWO_LAYERS[0], BN_TWO_LAYERS[-1]
    return (f"Measured over B = 2's prediction at layers {', '.join(map(str, BN_TWO_LAYERS))}: "
            f"{spreads}. The 1/N slopes of the means ({', '.join(dict.fromkeys(slopes))}) lie "
            "within " + " and ".join(f"{z[B]:.1f} SE (B = {B})" for B in BN_WIDE_BATCHES)
            + " of B = 2's prediction; the slopes of E log q and E log branch_q lie within "
            + " and ".join(f"{max(half(m, v, B) for m, v in pairs):.1f} SE (B = {B})"
                           for B in BN_WIDE_BATCHES)
            + " of -N Var / 2 measured at the same B (SEs combined as independent), as B = 2's "
            "rule has them (E q and E branch_q without a 1/N term). Spreads more than 3 SE "
            "above B = 2's prediction: " + ", ".join(
                f"{above(B)} of {len(spread_keys)} at B = {B}" for B in BN_WIDE_BATCHES)
            + f". N Var log q from layer {first} to {last}: B = 2's prediction "
            f"{found[first, q]['ref']:.3g} to {found[last, q]['ref']:.3g}; measured "
            + ", ".join(f"B = {B} {found[first, q][B][0]:.3g} to {found[last, q][B][0]:.3g}"
                        for B in BN_WIDE_BATCHES) + ".")


CHAIN_WIDTHS = [64, 128, 256, 512, 1024, 2048, 4096]
CHAIN_FITS = [[64, 128, 256, 512], [128, 256, 512, 1024], [256, 512, 1024, 2048],
              [512, 1024, 2048, 4096]]
CHAIN_LAYERS = (1, 2, 4, 6, 7, 8, 12, 16)
# fresh Monte Carlo runs against the exact law: (root seed, widths, multiple of --seeds)
CHAIN_MC_RUNS = [(31337, WIDTHS, 32), (4242, [128], 64), (5151, [256], 40)]


def batchnorm_two_exact(seeds=4000, samples=10**6, chunks=20, out="benchmarks/RESULTS.md"):
    """Pre-BN at a batch of two against its exact law as eps -> 0
    (:func:`sigprop.testing.norm_branch_chain`, depth 16, ``chunks`` x ``samples`` per width):
    the walk's N Var log q against the fit V + c/N of the exact N Var(N) over each of
    ``CHAIN_FITS`` (is the fit biased?), and the Monte Carlo's N Var log q at each width
    (``CHAIN_MC_RUNS``: eps = 1e-5, root seed ``width_root_seed(root, N)``) against the exact
    law's at that width, no fit. Returns its markdown."""
    from sigprop.engines import finite_width
    from sigprop.state.rng import width_root_seed
    from sigprop.testing import norm_branch_chain_spread, sample_variance

    L, inputs = max(CHAIN_LAYERS), sp.Inputs(q=1.0, corr=0.5, n=2, law="gaussian")
    with warnings.catch_warnings():  # (the gradient's NaN: not read here)
        warnings.simplefilter("ignore", FiniteWidthWarning)
        pred = {eps: np.asarray(finite_width.coefficients(presets.prebn(L, eps=eps), inputs)[0][
            "var_log_q"])[:, 0] for eps in (1e-13, 1e-5)}
    exact = {N: norm_branch_chain_spread(L, N, samples, chunks) for N in CHAIN_WIDTHS}
    for N, (v, se) in exact.items():
        print(N, " ".join(f"{a:.4f}±{b:.4f}" for a, b in zip(v, se)), flush=True)
    rows = ["| layer | predicted (eps -> 0) | predicted (eps = 1e-5) | "
            + " | ".join(f"fit {w[0]}-{w[-1]} − predicted (z)" for w in CHAIN_FITS) + " |",
            "|---" * (3 + len(CHAIN_FITS)) + "|"]
    for l in CHAIN_LAYERS:
        cells = []
        for w in CHAIN_FITS:
            c, se, _, _ = fit_inverse_width(w, [exact[N][0][l] for N in w],
                                            [exact[N][1][l] for N in w])
            cells.append(f"{c - pred[1e-13][l]:+.4f} ± {se:.4f} ({(c - pred[1e-13][l]) / se:+.1f})")
        rows.append(f"| {l} | {pred[1e-13][l]:.4f} | {pred[1e-5][l]:.4f} | " + " | ".join(cells)
                    + " |")
        print(rows[-1], flush=True)
    mc_rows = ["| root | N | seeds | layer | Monte Carlo ± SE | exact ± SE | z |",
               "|---|---|---|---|---|---|---|"]
    for root, widths, k in CHAIN_MC_RUNS:
        for N in widths:
            mc = sp.simulate(presets.prebn(8), inputs, width=N, seeds=k * seeds, backend="numpy",
                             dtype="float64", root_seed=width_root_seed(root, N))
            for l in range(1, 9):
                v, se = (N * x for x in sample_variance(mc.log_q.values[:, l, 0]))
                ex, ex_se = exact[N][0][l], exact[N][1][l]
                mc_rows.append(f"| {root} | {N} | {k * seeds} | {l} | {v:.4f} ± {se:.4f} | "
                               f"{ex:.4f} ± {ex_se:.4f} | {(v - ex) / math.hypot(se, ex_se):+.2f} |")
                print(mc_rows[-1], flush=True)
    intro = (f"`benchmarks/finite_width_agreement.py --part batchnorm-two-exact`: N Var log q of "
             f"input 0 of `presets.prebn({L})`, Gaussian inputs q = 1, corr = 0.5, B = 2. Exact: "
             f"`sigprop.testing.norm_branch_chain_spread` ({chunks} x {samples} samples per "
             "width), the law as eps -> 0. Predicted: `sp.theory(net, inputs, width=N)`.")
    return _write("Finite width: Pre-BN at a batch of two against its exact law", out,
                  [intro, "", *rows, "", *mc_rows])


BACKWARD = [  # (name, net, inputs, widths); root seed 4048 + N
    ("Post-LN (relu mlp)", presets.postln(8), None, [128, 256, 512, 1024]),
    ("Post-LN (relu mlp)", presets.postln(32), None, [256, 512, 1024, 2048]),
    ("Pre-LN (relu mlp)", presets.preln(8), None, [128, 256, 512, 1024]),
    ("plain tanh", presets.plain(8, "tanh", shape="dense_act"), None, [128, 256, 512, 1024]),
    ("x + relu(W x), a mean", presets.resnet(8, "relu", alpha=1.0, shape="dense_act"),
     sp.Inputs(q=1.0), [128, 256, 512, 1024]),
]


def backward(seeds=4000, out="benchmarks/RESULTS.md"):
    """The input gradient's 1/N coefficient: predicted (the walk of a forward tangent) against
    the Monte Carlo slope with exact weights, and the slope under gradient independence."""
    rows = [("| preset | L | widths | c predicted | a, exact weights ± SE | z | "
             "a, gradient independence ± SE | exact - independent |"),
            "|---|---|---|---|---|---|---|---|"]
    for name, net, inputs, widths in BACKWARD:
        inputs = inputs or sp.Inputs(q=1.0, corr=0.5, n=2)
        c, a, se = measure_gradient(net, inputs, widths, seeds, root_seed=4048)
        _, g, se_g = measure_gradient(net, inputs, widths, seeds, root_seed=4048,
                                      sampler="independent")
        rows.append(f"| {name} | {len(layers_of(net))} | {widths} | {c:+.3f} | {a:+.3f} ± "
                    f"{se:.3f} | {(a - c) / se:+.2f} | {g:+.3f} ± {se_g:.3f} | "
                    f"{a - g:+.3f} ± {math.hypot(se, se_g):.3f} |")
        print(rows[-1], flush=True)
    intro = (f"`benchmarks/finite_width_agreement.py --part backward`: E G_0 / G_0,inf - 1 = b + "
             f"a/N fitted by weighted least squares over the widths, {seeds} seeds per width "
             "(root seed 4048 + N), inputs q = 1, corr = 0.5 (the last row: q = 1 alone), "
             "input 0, with the Monte Carlo's exact weights (`sampler=\"conditional\"`) and "
             "with fresh backward weights (`sampler=\"independent\"`, gradient independence). "
             "Predicted: c of `grad_q_rel_correction` = c/N at layer 0 of `sp.theory(net, "
             "inputs, width=N)` (`gradient_coefficient`: E grad_q_0 = E |J t|^2 / N, the "
             "walk of the pair (x, J t) through the same weights). z = (a - c) / SE. The last "
             "column is the part of a that the coupling of the backward to the forward "
             "weights makes, which gradient independence drops.")
    return _write("Finite width: the input gradient's 1/N term, predicted vs measured", out,
                  [intro, "", *rows])


AFFINE = sp.Repeat(sp.Residual(sp.Serial(sp.Dense(1.3, 0.2), sp.Act("tanh"),
                                         sp.FeatureAffine(gain=0.7, shift=0.5), sp.Dense(1.0))), 3)
SCALE = sp.Repeat(sp.Residual(sp.Serial(sp.Dense(1.3, 0.2), sp.Act("tanh"), sp.Scale(0.7),
                                        sp.Dense(1.0))), 3)
VARYING_OP = sp.FeatureAffine(  # gamma 0.7 +- 0.6, beta 0.5 +- 0.4, correlation 0.5
    gain=0.7, shift=0.5, gain_sq=0.7**2 + 0.6**2, shift_sq=0.5**2 + 0.4**2,
    gain_shift=0.35 + 0.5 * 0.6 * 0.4)
VARYING = sp.Repeat(sp.Residual(sp.Serial(sp.Dense(1.3, 0.2), sp.Act("tanh"), VARYING_OP,
                                          sp.Dense(1.0))), 3)


def affine(seeds=4000, out="benchmarks/RESULTS.md"):
    """FeatureAffine in a residual branch, with constant vectors (and the same net with a
    Scale, the shift removed) and with vectors that vary over the features: forward slopes and
    the input gradient's c against Monte Carlo."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    rows = ["| branch op | statistic (layer 3) | predicted | fitted ± SE | z |",
            "|---|---|---|---|---|"]
    for name, net in (("FeatureAffine(gain=0.7, shift=0.5)", AFFINE), ("Scale(0.7)", SCALE),
                      ("FeatureAffine, vectors varying", VARYING)):
        found = measure(net, inputs, WIDTHS, seeds, root_seed=2024)
        found.append(("c of E grad_q_0", *measure_gradient(net, inputs, [32, 64, 128, 256],
                                                           seeds, root_seed=4048)))
        rows += _z_rows(name, found)
    intro = (f"`benchmarks/finite_width_agreement.py --part affine`: 3 blocks x + Dense(1.0) "
             "op(tanh(Dense(1.3, 0.2) x)), inputs q = 1, corr = 0.5, input 0; forward: widths "
             f"{WIDTHS} (root seed 2024 + N), the gradient: widths [32, 64, 128, 256] (root "
             f"seed 4048 + N), {seeds} seeds per width, fitted as in the first section. The "
             "last rows: vectors that vary over the features, gamma of mean 0.7 and sd 0.6, "
             "beta of mean 0.5 and sd 0.4, correlation 0.5 (the theory takes them Gaussian "
             "over the features, as the Monte Carlo draws them).")
    return _write("Finite width: FeatureAffine", out, [intro, "", *rows])


def spread(seeds=4000, out="benchmarks/RESULTS.md"):
    """Var log grad_q_0 across nets: predicted (the tangent walk) against N Var fitted as
    V + c/N over the widths, for the first section's presets."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    rows = ["| preset | N Var log grad_q_0 predicted | fitted ± SE | z |", "|---|---|---|---|"]
    for name, net in PRESETS.items():
        v, V, se = measure_gradient_spread(net, inputs, WIDTHS, seeds, root_seed=6072)
        rows.append(f"| {name} | {v:.4g} | {V:.4g} ± {se:.2g} | {(V - v) / se:+.2f} |")
        print(rows[-1], flush=True)
    intro = (f"`benchmarks/finite_width_agreement.py --part spread`: depth {DEPTH}, inputs q = "
             f"1, corr = 0.5, widths {WIDTHS}, {seeds} seeds per width (root seed 6072 + N), "
             "input 0. Predicted: v of `var_log_grad_q` = v/N (`gradient_coefficient`: the "
             "tangent walk's Var log |J t|^2, which has the law of the gradient's |J^T delta|^2). "
             "Fitted: N Var(N) = V + c/N, as for Var log q in the first section.")
    return _write("Finite width: the spread of the input gradient, Var log grad_q_0", out,
                  [intro, "", *rows])


GRADIENT_LAYERS = [2, 4, 6]


def _layer_rows(nets, layers, seeds, root_seed):
    """The gradient's c and v per net and layer, predicted by one recorded tangent walk and an
    adjoint pass, against one Monte Carlo run per width: the table's rows."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    rows = [("| net | layer | c predicted | a fitted ± SE | z | N Var log grad_q predicted | "
             "fitted ± SE | z |"), "|---|---|---|---|---|---|---|---|"]
    for name, net in nets.items():
        found = measure_gradient_layers(net, inputs, WIDTHS, seeds, root_seed=root_seed,
                                        layers=layers)
        for l, (c, a, se_a, v, V, se_v) in zip(layers, found):
            rows.append(f"| {name} | {l} | {c:+.4g} | {a:+.4g} ± {se_a:.2g} | "
                        f"{(a - c) / se_a:+.2f} | {v:.4g} | {V:.4g} ± {se_v:.2g} | "
                        f"{(V - v) / se_v:+.2f} |")
            print(rows[-1], flush=True)
    return rows


def gradient_layers(seeds=4000, out="benchmarks/RESULTS.md"):
    """The gradient's c and v at layers above the input (:data:`GRADIENT_LAYERS`)."""
    rows = _layer_rows(PRESETS, GRADIENT_LAYERS, seeds, 8096)
    intro = (f"`benchmarks/finite_width_agreement.py --part layers`: depth {DEPTH}, inputs q = 1, "
             f"corr = 0.5, widths {WIDTHS}, {seeds} seeds per width (root seed 8096 + N), input "
             "0, the gradient at layers above the input. Predicted: `grad_q_rel_correction` = "
             "c/N and `var_log_grad_q` = v/N of `sp.theory(net, inputs, width=N)`, every layer "
             "from one recorded walk of the pair (x, J t) and one adjoint pass down it "
             "(`gradient_coefficient`). Fitted from one simulation per width: E G_l / G_l,inf - "
             "1 = b + a/N and N Var log G_l = V + c'/N, as in the sections above.")
    return _write("Finite width: the gradient at every layer", out, [intro, "", *rows])


FLAT = {  # Dense and activation as layers of their own: odd layers are pre-activations
    f"flat {act}": sp.Serial(*[op for _ in range(3) for op in (sp.Dense(1.5, 0.3), sp.Act(act))],
                             sp.Dense(1.0))
    for act in ("tanh", "erf")}


def preactivation(seeds=4000, out="benchmarks/RESULTS.md"):
    """The gradient's c and v at pre-activation layers (a Dense's output, before its
    activation) and at the activations' outputs, of :data:`FLAT`."""
    rows = _layer_rows(FLAT, [1, 2, 3, 5], seeds, 10240)
    intro = (f"`benchmarks/finite_width_agreement.py --part preactivation`: {', '.join(FLAT)}: "
             "Dense(1.5, 0.3) and the activation as separate layers, 3 times, then Dense(1.0); "
             f"inputs q = 1, corr = 0.5, widths {WIDTHS}, {seeds} seeds per width (root seed "
             "10240 + N), input 0. At layers 1, 3, 5 (a Dense's output) the tangent starts on "
             "the Dense's Gaussian features before they are drawn; predicted and fitted as in "
             "the section \"the gradient at every layer\".")
    return _write("Finite width: the gradient at a pre-activation", out, [intro, "", *rows])


NORM_AFFINE = {  # a LayerNorm's affine with vectors that vary (imported models have them)
    "Pre-LN, affine after the norm": sp.Repeat(sp.Residual(sp.Serial(
        sp.LayerNorm(), VARYING_OP, sp.Dense(1.0), sp.Act("relu"), sp.Dense(1.0))), 3),
    "Post-LN, affine after the norm": sp.Repeat(sp.Serial(sp.Residual(sp.Serial(
        sp.Dense(1.4), sp.Act("relu"), sp.Dense(1.0))), sp.LayerNorm(), VARYING_OP), 3),
}


NORM_AFFINE_WIDTHS = [128, 256, 512, 1024, 2048]  # (at 64-512 Post-LN's N Var log q was 2.4 %
NORM_AFFINE_GRAD_WIDTHS = [128, 256, 512, 1024]  # low, z = -2.7: curvature beyond V + c/N)


def norm_affine(seeds=32000, out="benchmarks/RESULTS.md"):
    """A FeatureAffine whose vectors vary, on a settled stream (after a LayerNorm): forward
    slopes and N Var log q, and the gradient's c and v at layers 0 and 1."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    rows = ["| net | statistic (layer 3) | predicted | fitted ± SE | z |", "|---|---|---|---|---|"]
    for name, net in NORM_AFFINE.items():
        found = measure(net, inputs, NORM_AFFINE_WIDTHS, seeds, root_seed=2024)
        for l, (c, a, se_a, v, V, se_v) in zip([0, 1], measure_gradient_layers(
                net, inputs, NORM_AFFINE_GRAD_WIDTHS, seeds, root_seed=4048, layers=[0, 1])):
            found += [(f"c of E grad_q_{l}", c, a, se_a), (f"N Var log grad_q_{l}", v, V, se_v)]
        rows += _z_rows(name, found)
    intro = ("`benchmarks/finite_width_agreement.py --part norm-affine`: 3 blocks, the "
             "FeatureAffine of the section above with varying vectors right after a LayerNorm "
             "(Pre-LN: on the branch's normalised copy of the stream; Post-LN: on the stream), "
             f"inputs q = 1, corr = 0.5, input 0; forward: widths {NORM_AFFINE_WIDTHS} (root "
             f"seed 2024 + N), the gradient: widths {NORM_AFFINE_GRAD_WIDTHS} (root seed 4048 + "
             f"N), {seeds} seeds per width. Predicted: the op's law of the realised statistics plus "
             "the vectors' assignment noise from the features' 4th moments "
             "(`_Walk._varying_affine`); in Post-LN it is all of N Var log q (0 without it).")
    return _write("Finite width: FeatureAffine after a norm", out, [intro, "", *rows])


AFTER_NORM = {  # an activation after a norm of a Dense's features (the inputs of the last: a mean)
    "3 x (Dense -> LayerNorm -> tanh)": (
        sp.Repeat(sp.Serial(sp.Dense(1.4, 0.2), sp.LayerNorm(), sp.Act("tanh")), 3),
        sp.Inputs(q=1.0, corr=0.5, n=2)),
    "3 x (Dense -> RMSNorm -> relu)": (
        sp.Repeat(sp.Serial(sp.Dense(1.4, 0.2), sp.RMSNorm(), sp.Act("relu")), 3),
        sp.Inputs(q=1.0, corr=0.5, n=2)),
    "3 x (x + tanh(LayerNorm(Dense x)))": (  # (the sum reads the draw's cross moments)
        sp.Repeat(sp.Residual(sp.Serial(sp.Dense(1.2, 0.1), sp.LayerNorm(), sp.Act("tanh"))), 3),
        sp.Inputs(q=1.0, corr=0.5, mean=0.6, n=2)),
}


# the relu nets' gradient at widths 32-256 fitted c + a/N 0.7-0.9 above c (z +2.1 to +2.9 at
# 16000 seeds), within SE at 128-1024: their 1/N^2 term, not yet small at 32
AFTER_NORM_GRAD_WIDTHS = [128, 256, 512, 1024]


def after_norm(seeds=4000, out="benchmarks/RESULTS.md"):
    """Activations after a norm of a Dense's features (:func:`post_norm_noise`): forward slopes,
    N Var log q and the input gradient's c against Monte Carlo."""
    rows = ["| net | statistic (layer 3) | predicted | fitted ± SE | z |", "|---|---|---|---|---|"]
    for name, (net, inputs) in AFTER_NORM.items():
        found = measure(net, inputs, WIDTHS, seeds, root_seed=2024)
        found.append(("c of E grad_q_0", *measure_gradient(net, inputs, AFTER_NORM_GRAD_WIDTHS,
                                                           4 * seeds, root_seed=4048)))
        rows += _z_rows(name, found)
    intro = ("`benchmarks/finite_width_agreement.py --part after-norm`: inputs q = 1, corr = 0.5 "
             "(the residual net's with mean 0.6, so that the branch's cross moments with the "
             f"stream carry a mean), input 0; forward: widths {WIDTHS} (root seed 2024 + N), "
             f"{seeds} seeds per width; the gradient: widths {AFTER_NORM_GRAD_WIDTHS} (root "
             f"seed 4048 + N), {4 * seeds} seeds per width; fitted as in the first section. "
             "Predicted: the features after the norm with its centre and scale realised over "
             "the same features (each feature's influence on the statistics, and the plug-in's "
             "bias, `post_norm_noise`).")
    return _write("Finite width: activations after a norm", out, [intro, "", *rows])


# each op a layer, so layers 2 and 5 end between a norm and the activation after it
NORM_START = sp.Serial(sp.Dense(1.4, 0.2), sp.LayerNorm(), sp.Act("tanh"), sp.Dense(1.2, 0.1),
                       sp.RMSNorm(), sp.Act("tanh"))
NORM_START_LAYERS = [1, 2, 4, 5]


def norm_start(seeds=16000, out="benchmarks/RESULTS.md"):
    """The gradient at a layer that ends between a norm and its activation (the tangent joined
    at the norm's output, drawn with it), beside the Dense outputs' before it."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    found = []
    for widths in (WIDTHS, AFTER_NORM_GRAD_WIDTHS):
        got = measure_gradient_layers(NORM_START, inputs, widths, seeds, root_seed=31,
                                      layers=NORM_START_LAYERS)
        for l, (c, a, se_a, v, V, se_v) in zip(NORM_START_LAYERS, got):
            found += [(f"c of E grad_q_{l}, widths {widths}", c, a, se_a),
                      (f"N Var log grad_q_{l}, widths {widths}", v, V, se_v)]
    rows = ["| net | statistic | predicted | fitted ± SE | z |", "|---|---|---|---|---|",
            *_z_rows("Dense -> LayerNorm -> tanh -> Dense -> RMSNorm -> tanh", found)]
    intro = ("`benchmarks/finite_width_agreement.py --part norm-start`: a Serial whose ops are "
             "layers of their own (layers 2 and 5: a norm's output, before its activation; 1 "
             "and 4: a Dense's), inputs q = 1, corr = 0.5, input 0, "
             f"{seeds} seeds per width (root seed 31 + N), fitted as in the first section over "
             "two sets of widths. Predicted: the tangent joins at the norm's output, N(0, 1) per "
             "feature, and is drawn with the activation's features and the norm's statistics "
             "(`_Walk.after_norm`, `post_norm_noise`).")
    return _write("Finite width: a gradient that starts between a norm and its activation", out,
                  [intro, "", *rows])


UNIFORM_WIDTHS = [64, 128, 256]


def uniform(seeds=32000, out="benchmarks/RESULTS.md"):
    """The gradient's c at every layer with uniform weights (explicit draws), against the
    prediction with them and with Gaussian weights of the same variance."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    layers = [0, 1, 2]
    net = sp.Repeat(sp.Serial(sp.Dense(2.0, 0.5, init="uniform"), sp.Act("erf")), 3)
    gauss = sp.Repeat(sp.Serial(sp.Dense(2.0, 0.5), sp.Act("erf")), 3)
    normal = gradient_coefficient(gauss, inputs, layers=layers).coef[..., 0]
    found = measure_gradient_layers(net, inputs, UNIFORM_WIDTHS, seeds, root_seed=9120,
                                    layers=layers)
    rows = [("| layer | c predicted, uniform | c predicted, Gaussian weights | a fitted ± SE | "
             "z (uniform) | z (Gaussian) |"), "|---|---|---|---|---|---|"]
    for l, (c, a, se_a, *_), cn in zip(layers, found, normal):
        rows.append(_beside(l, (c, cn), a, se_a))
    intro = ("`benchmarks/finite_width_agreement.py --part uniform`: 3 blocks Dense(2.0, 0.5, "
             "init='uniform') -> erf, inputs q = 1, corr = 0.5, input 0, widths "
             f"{UNIFORM_WIDTHS}, {seeds} seeds per width (root seed 9120 + N; every weight "
             "drawn). Predicted: `grad_q_rel_correction` = c/N of `sp.theory(net, inputs, "
             "width=N)`, every layer from the one recorded walk and adjoint pass, the uniform "
             "weights' bias terms replayed from each layer's own start; the column beside it is "
             "the same net's prediction with Gaussian weights. Fitted as in the section above.")
    return _write("Finite width: the gradient at every layer, uniform weights", out,
                  [intro, "", *rows])


def _rows(forward, grad):
    """measure_uniform_term's row names: E log q and E corr at ``forward``, the gradient at
    ``grad``."""
    return ([f"E {k} at layer {l}" for k in ("log q", "corr") for l in forward]
            + [f"E grad_q / grad_q_inf at layer {l}" for l in grad])


UNIFORM_MLPS = {  # (net, the rows whose uniform part is not 0 by symmetry, or is told)
    "Dense(u) -> tanh -> Dense(u) -> Scale -> tanh -> Dense(u)": (
        sp.Serial(sp.Dense(1.5, 0.2, init="uniform"), sp.Act("tanh"),
                  sp.Dense(1.5, 0.2, init="uniform"), sp.Scale(0.8), sp.Act("tanh"),
                  sp.Dense(1.0, init="uniform")),
        _rows([1, 2, 5], [1, 2, 3, 4, 5])),
    "Dense(u) -> LayerNorm -> tanh -> Dense(u) -> RMSNorm -> tanh": (
        sp.Serial(sp.Dense(1.4, 0.2, init="uniform"), sp.LayerNorm(), sp.Act("tanh"),
                  sp.Dense(1.2, 0.1, init="uniform"), sp.RMSNorm(), sp.Act("tanh")),
        _rows([3, 6], [1, 2, 3, 4, 5])),
}


def uniform_mlp(seeds=16000, out="benchmarks/RESULTS.md"):
    """Imported MLPs (each op a layer, torch's uniform init): the uniform weights' part of each
    coefficient, against the coupled Monte Carlo difference from the same net with Gaussian
    weights; the gradient's at every layer."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    rows = ["| net | statistic | predicted | fitted ± SE | z |", "|---|---|---|---|---|"]
    for name, (net, names) in UNIFORM_MLPS.items():
        layers = sorted({int(r.rsplit(" ", 1)[1]) for r in names})
        got = {r[0]: r for r in measure_uniform_term(net, inputs, WIDTHS, seeds, layers,
                                                     root_seed=77)}
        rows += _z_rows(name, [got[r] for r in names])
    intro = ("`benchmarks/finite_width_agreement.py --part uniform-mlp`: Serials whose ops are "
             "layers of their own (Dense(u): uniform weights), inputs q = 1, corr = 0.5, widths "
             f"{WIDTHS}, {seeds} seeds per width (root seed 77 + N). Each row is the uniform "
             "weights' part of a 1/N coefficient: the prediction for the net less that for the "
             "same net with Gaussian weights, against a of the Monte Carlo difference of the "
             "two nets on the same seeds, a/N + b/N^2 (N times it fitted as a + b/N: the two "
             "nets share their infinite-width law; explicit sampler: the uniform weights are "
             "sqrt 3 erf(z / sqrt 2) of the Gaussian ones, z; `sigprop.testing."
             "measure_uniform_term`). Predicted: the 4th cumulant's Edgeworth term "
             "(`_Walk._uniform_term`), after a norm with the Hessian at the norm's statistics "
             "held; at a Dense's output t joins after the weights (`_Walk.after_dense`). "
             "E log q and E corr at a Dense's output (layer 1) are predicted 0 at first "
             "order (the uniform part of E log q there is O(1/N^2): the 4th cumulant's share "
             "of Var q / 2 q^2).")
    return _write("Finite width: imported MLPs with uniform weights", out, [intro, "", *rows])


TORCH_WIDTHS = [64, 128, 256, 512]


def _torch_agreement(part, title, describe, model, q_layers, corr_layer, grad_layers, seeds,
                     out):
    """Real torch nets ``model(N)`` at their default init over re-initialisations
    (`sp.simulate_torch`): N (E_mc - T_inf) fitted as c + b/N against the predicted coefficient
    c of the import (`weights="init"`: uniform weights, and torch's bias U(+-1/sqrt(n)), of
    variance 1/(3 n): ``sigma_b_fan_in^2 = 1/3``, 0 in T_inf). Beside it, the prediction
    without the bias's term and with Gaussian weights."""
    import torch

    from sigprop.engines.finite_width import coefficients
    from sigprop.interop.torch import from_torch, simulate_torch

    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    net = from_torch(model(8).eval(), torch.randn(2, 8), weights="init")  # (any width)
    nets = (net, with_dense(net, sigma_b_fan_in=0.0), gaussian_weights(net))
    coef = [coefficients(n, inputs)[0] for n in nets]
    grad = [gradient_coefficient(n, inputs, layers=grad_layers).coef[..., 0] for n in nets]
    predicted = {f"E log q at layer {l}": [c["log_q"][l, 0] for c in coef] for l in q_layers}
    predicted[f"E corr at layer {corr_layer}"] = [c["corr"][corr_layer, 0, 1] for c in coef]
    for k, l in enumerate(grad_layers):
        predicted[f"E grad_q / grad_q_inf at layer {l}"] = [g[k] for g in grad]
    th = sp.theory(net, inputs)
    found = {}
    for N in TORCH_WIDTHS:
        mc = simulate_torch(model(N), inputs, seeds=seeds, root_seed=3 + N, net=net)
        stats = {f"E log q at layer {l}": (mc.log_q.values[:, l, 0], th.log_q.values[l, 0])
                 for l in q_layers}
        stats[f"E corr at layer {corr_layer}"] = (mc.corr.values[:, corr_layer, 0, 1],
                                                  th.corr.values[corr_layer, 0, 1])
        for l in grad_layers:
            stats[f"E grad_q / grad_q_inf at layer {l}"] = (
                np.exp(mc.log_grad_q.values[:, l, 0] - th.log_grad_q.values[l, 0]), 1.0)
        for name, (x, inf) in stats.items():
            d = N * (x - inf)
            found.setdefault(name, []).append((d.mean(), d.std(ddof=1) / math.sqrt(seeds)))
    table = [("| statistic | predicted | without the bias's term | Gaussian weights | "
              "fitted ± SE | z | z (no bias term) | z (Gaussian) |"),
             "|---|---|---|---|---|---|---|---|"]
    for name, est in found.items():
        c, se, _, _ = fit_inverse_width(TORCH_WIDTHS, *zip(*est))
        table.append(_beside(name, predicted[name], c, se))
    intro = (f"`benchmarks/finite_width_agreement.py --part {part}`: torch nets {describe} at "
             f"torch {torch.__version__}'s default init, widths {TORCH_WIDTHS}, {seeds} "
             "re-initialisations per width (`sp.simulate_torch`, root seed 3 + N), inputs "
             "q = 1, corr = 0.5. Predicted: the 1/N coefficient c of `sp.theory(net, inputs, "
             "width=N)` for the import as it is (`sp.from_torch(..., weights='init')`: uniform "
             "weights, and the bias's variance 1/(3 n_in) as `sigma_b_fan_in^2 = 1/3`, 0 at "
             "infinite width); fitted: N (E - T_inf) as c + b/N, T_inf the import's "
             "infinite-width theory. Beside it, the predictions for the same net without the "
             "bias's term (`sigma_b_fan_in = 0`) and with Gaussian weights.")
    return _write(title, out, [intro, "", *table])


def torch_mlp(seeds=16000, out="benchmarks/RESULTS.md"):
    """Linear -> LayerNorm -> Tanh twice -> Linear (:func:`_torch_agreement`)."""
    from torch import nn

    def model(N):
        return nn.Sequential(nn.Linear(N, N), nn.LayerNorm(N), nn.Tanh(), nn.Linear(N, N),
                             nn.LayerNorm(N), nn.Tanh(), nn.Linear(N, N))

    return _torch_agreement(
        "torch-mlp", "Finite width: torch MLPs at their default init",
        "`nn.Sequential(Linear, LayerNorm, Tanh, Linear, LayerNorm, Tanh, Linear)`", model,
        (3, 7), 7, [0, 1, 2, 3, 4, 5], seeds, out)


def torch_preln(seeds=4000, out="benchmarks/RESULTS.md"):
    """A Linear, then two Pre-LN blocks x + Linear(4N -> N)(GELU(Linear(N -> 4N)(LayerNorm(x))))
    (:func:`_torch_agreement`)."""
    from torch import nn

    class PreLN(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.ln, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            return x + self.down(nn.functional.gelu(self.up(self.ln(x))))

    def model(N):
        return nn.Sequential(nn.Linear(N, N), PreLN(N), PreLN(N))

    return _torch_agreement(
        "torch-preln", "Finite width: torch Pre-LN blocks at their default init",
        "`nn.Sequential(Linear, PreLN, PreLN)`, PreLN: x + Linear(4N, N)(GELU(Linear(N, 4N)("
        "LayerNorm(x))))", model, (1, 2, 3), 3, [0, 1, 2], seeds, out)


# the corr coefficient's round-off bound per layer^2 (tests/test_finite_width_symbolic.py)
ROUND_OFF = 3e-9
EXACT_DEPTH, EXACT_LAYERS = 1000, [10, 30, 50, 100, 150, 200, 400, 600, 800, 1000]


def exact(out="benchmarks/RESULTS.md"):
    """Plain relu (sigma_w^2 = 2, corr 0.5 in): the engine's coefficients (central differences)
    against :func:`sigprop.symbolic.finite_width.iterate` (the recursion with sympy's exact
    derivatives) as corr -> 1 with depth."""
    from sigprop import symbolic as S
    from sigprop.engines.finite_width import STEP, coefficients
    from sigprop.symbolic import finite_width as F

    law = F.layer_law(S.preset_block("plain", "relu", shape="dense_act", sigma_b=0), 2)
    ref = F.iterate(law, {S.SIGMA_1: math.sqrt(2.0), S.SIGMA_B: 0}, (1.0, 0.5, 1.0),
                    EXACT_DEPTH)
    net = presets.plain(EXACT_DEPTH, "relu", shape="dense_act")
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    got = coefficients(net, inputs)[0]
    corr_inf = sp.theory(net, inputs)["corr"].values[:, 0, 1]
    rows = [("| layer | 1 - corr_inf | corr coefficient, exact | engine | relative error | "
             "absolute error | round-off bound | log q coefficient, relative error | "
             "N Var log q, relative error |"),
            "|---|---|---|---|---|---|---|---|---|"]
    for l in EXACT_LAYERS:
        e, c = ref[l], got["corr"][l, 0, 1]
        log_q, var = got["log_q"][l, 0] / e["log_q"][0], got["var_log_q"][l, 0] / e["log_q"][1]
        rows.append(f"| {l} | {1 - corr_inf[l]:.3g} | {e['corr'][0]:.6g} | {c:.6g} | "
                    f"{c / e['corr'][0] - 1:+.1e} | {abs(c - e['corr'][0]):.1e} | "
                    f"{ROUND_OFF * l**2:.1e} | {log_q - 1:+.1e} | {var - 1:+.1e} |")
        print(rows[-1], flush=True)
    unresolved = next((l for l in EXACT_LAYERS if ROUND_OFF * l**2 > abs(ref[l]["corr"][0])),
                      "none")
    intro = ("`benchmarks/finite_width_agreement.py --part exact`: plain relu (Dense -> relu, "
             f"sigma_w^2 = 2), inputs q = 1, corr = 0.5, depth {EXACT_DEPTH}. Engine: "
             "`coefficients` (central differences, STEP = "
             f"{STEP:g}, steps h and 2h combined by Richardson, each step bounded by STEP of "
             "its Gram's smallest eigenvalue); exact: `sigprop.symbolic.finite_width.iterate`, "
             "the same delta-method recursion with sympy's derivatives of the layer law and "
             "closed-form feature noise. Round-off bound: the second differences' round-off "
             f"summed over the layers, {ROUND_OFF:g} l^2 (derived in "
             "`tests/test_finite_width_symbolic.py`, which asserts it at layers 30-150). The "
             "coefficient falls like 1 - corr_inf while the bound grows like l^2: from layer "
             f"{unresolved} of these on the bound is larger than the coefficient, which the "
             "central differences no longer resolve; E corr itself is off by the absolute "
             "error over N there.")
    return _write("Finite width: a deep relu net against the exact recursion", out,
                  [intro, "", *rows])


WEIGHT_NETS = {  # (net, widths): the mean-carrying stream's c ~ 30 wants wider nets
    "Post-LN (relu mlp)": (presets.postln(DEPTH), WIDTHS),
    "Pre-LN (relu mlp)": (presets.preln(DEPTH), WIDTHS),
    "plain tanh": (presets.plain(DEPTH, "tanh", shape="dense_act"), WIDTHS),
    "plain relu": (presets.plain(DEPTH, "relu", shape="dense_act"), WIDTHS),
    "x + relu(W x), a mean": (presets.resnet(DEPTH, "relu", shape="dense_act"),
                              [128, 256, 512, 1024]),
}
WEIGHT_LAYERS = [1, 3, 5, 8]


def weight_gradient(seeds=8000, out="benchmarks/RESULTS.md"):
    """weight_grad_q's c at layers :data:`WEIGHT_LAYERS` (:data:`WEIGHT_NETS`)."""
    inputs = sp.Inputs(q=[1.0, 1.5], corr=0.5)
    rows = ["| net | widths | layer | c predicted | a fitted ± SE | z |", "|---|---|---|---|---|---|"]
    for name, (net, widths) in WEIGHT_NETS.items():
        found = measure_weight_gradient(net, inputs, widths, seeds, root_seed=12144,
                                        layers=WEIGHT_LAYERS)
        for l, (c, a, se, *_) in zip(WEIGHT_LAYERS, found):
            rows.append(f"| {name} | {widths} | {l} | {c:+.4g} | {a:+.4g} ± {se:.2g} | "
                        f"{(a - c) / se:+.2f} |")
            print(rows[-1], flush=True)
    intro = ("`benchmarks/finite_width_agreement.py --part weight-grad`: depth "
             f"{DEPTH}, inputs q = [1, 1.5], corr = 0.5, {seeds} seeds per width (root seed "
             "12144 + N), input 0. Predicted: c of `weight_grad_q_rel_correction` = c/N of "
             "`sp.theory(net, inputs, width=N)` (`gradient_coefficient(..., weights=True)`: per "
             "Dense D the walk of the tangent T x_D from D's output). Fitted: E W_l / W_l,inf - 1 "
             "= b + a/N by weighted least squares over the widths (W = weight_grad_q, the mean "
             "over seeds and its standard error per width).")
    return _write("Finite width: the weight gradient's 1/N term (issue 16, continued)", out,
                  [intro, "", *rows])


WEIGHT_SPREAD_DEPTH = 6
WEIGHT_SPREAD_NETS = {  # one Dense per block, and two (their parts share delta_L)
    "plain relu": presets.plain(WEIGHT_SPREAD_DEPTH, "relu", shape="dense_act"),
    "resnet (relu mlp)": presets.resnet(WEIGHT_SPREAD_DEPTH),
    "Pre-LN (relu mlp)": presets.preln(WEIGHT_SPREAD_DEPTH),
    "Post-LN (relu mlp)": presets.postln(WEIGHT_SPREAD_DEPTH),
}
WEIGHT_SPREAD_LAYERS = [1, 3, 6]


def weight_spread(seeds=4000, out="benchmarks/RESULTS.md"):
    """weight_grad_q's c and v (Var log weight_grad_q) at :data:`WEIGHT_SPREAD_LAYERS`
    (:data:`WEIGHT_SPREAD_NETS`), against one Monte Carlo run per width."""
    inputs = sp.Inputs(q=[1.0, 1.5], corr=0.5)
    rows = [("| net | layer | c predicted | a fitted ± SE | z | N Var log W predicted | "
             "fitted ± SE | z |"), "|---|---|---|---|---|---|---|---|"]
    for name, net in WEIGHT_SPREAD_NETS.items():
        found = measure_weight_gradient(net, inputs, WIDTHS, seeds, root_seed=16016,
                                        layers=WEIGHT_SPREAD_LAYERS)
        for l, (c, a, se_a, v, V, se_v) in zip(WEIGHT_SPREAD_LAYERS, found):
            rows.append(f"| {name} | {l} | {c:+.4g} | {a:+.4g} ± {se_a:.2g} | "
                        f"{(a - c) / se_a:+.2f} | {v:.4g} | {V:.4g} ± {se_v:.2g} | "
                        f"{(V - v) / se_v:+.2f} |")
            print(rows[-1], flush=True)
    intro = ("`benchmarks/finite_width_agreement.py --part weight-spread`: depth "
             f"{WEIGHT_SPREAD_DEPTH}, inputs q = [1, 1.5], corr = 0.5, widths {WIDTHS}, {seeds} "
             "seeds per width (root seed 16016 + N), input 0. Predicted: "
             "`weight_grad_q_rel_correction` = c/N and `var_log_weight_grad_q` = v/N of "
             "`sp.theory(net, inputs, width=N)` (`gradient_coefficient(..., weights=True)`: the "
             "walk of t = sum_D J_D T_D x_D, the derivative along a random direction of all the "
             "block's weights, whose |t|^2 / N has the law of weight_grad_q). Fitted from one "
             "simulation per width: E W_l / W_l,inf - 1 = b + a/N and N Var log W_l = V + c'/N "
             "(W = weight_grad_q), as in the sections above.")
    return _write("Finite width: the spread of the weight gradient, Var log weight_grad_q", out,
                  [intro, "", *rows])


def main(seeds=4000, out="benchmarks/RESULTS.md", part="all"):
    """Every section (``part`` "all"), or one: "first-order", "typical", "batchnorm-two",
    "batchnorm-wide", "batchnorm-two-exact" (the Monte Carlo at 32-64x ``seeds``), "backward",
    "affine", "spread", "layers", "preactivation", "uniform", "norm-affine" (8x ``seeds``
    each), "after-norm", "norm-start", "uniform-mlp", "torch-mlp" (4x each; torch needed),
    "torch-preln" (torch needed), "exact", "weight-grad" (2x) or "weight-spread"."""
    if part in ("all", "first-order"):
        first_order(seeds, out)
    if part in ("all", "typical"):
        typical(seeds, out)
    if part in ("all", "batchnorm-two"):
        batchnorm_two(seeds, out)
    if part in ("all", "batchnorm-wide"):
        batchnorm_wide(seeds, out)
    if part in ("all", "batchnorm-two-exact"):
        batchnorm_two_exact(seeds, out=out)
    if part in ("all", "backward"):
        backward(seeds, out)
    if part in ("all", "affine"):
        affine(seeds, out)
    if part in ("all", "spread"):
        spread(seeds, out)
    if part in ("all", "layers"):
        gradient_layers(seeds, out)
    if part in ("all", "preactivation"):
        preactivation(seeds, out)
    if part in ("all", "uniform"):
        uniform(8 * seeds, out)
    if part in ("all", "norm-affine"):
        norm_affine(8 * seeds, out)
    if part in ("all", "after-norm"):
        after_norm(seeds, out)
    if part in ("all", "norm-start"):
        norm_start(4 * seeds, out)
    if part in ("all", "uniform-mlp"):
        uniform_mlp(4 * seeds, out)
    if part in ("all", "torch-mlp"):
        torch_mlp(4 * seeds, out)
    if part in ("all", "torch-preln"):
        torch_preln(seeds, out)
    if part in ("all", "exact"):
        exact(out)
    if part in ("all", "weight-grad"):
        weight_gradient(2 * seeds, out)
    if part in ("all", "weight-spread"):
        weight_spread(seeds, out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4000)
    p.add_argument("--out", default="benchmarks/RESULTS.md")
    p.add_argument("--part", choices=["all", "first-order", "typical", "batchnorm-two",
                                       "batchnorm-wide", "batchnorm-two-exact",
                                       "backward", "affine",
                                       "spread", "layers", "preactivation", "uniform",
                                       "norm-affine", "after-norm", "norm-start",
                                       "uniform-mlp", "torch-mlp", "torch-preln", "exact",
                                       "weight-grad", "weight-spread"],
                   default="all")
    a = p.parse_args()
    main(a.seeds, a.out, a.part)
