"""The claims audit of the seed essay: each claim (paraphrased), a verdict, its evidence.

Verdicts whose evidence is numeric are decided here from the theory (and Monte Carlo) results
of the sims, so the table changes if the toolkit's answer changes; the others rest on the
definitions of the ops (DESIGN.md) or are marked out of scope (sigprop studies signal
propagation at initialisation, not training). :func:`write_table` writes the LaTeX table the
paper inputs (``paper/figures/claims_table.tex``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sigprop.analysis.plots import latex_escape
from sigprop.figures import tex_macros, tex_number
from sigprop.figures.norms import MIN_GRAD_BATCH

SIMS = ("placement", "norms", "meanshift", "phase")

# Thresholds of the verdicts. The values are infinite-width theory (no sampling error), so each
# threshold is a physical quantity, not a number of standard errors; Monte Carlo comparisons
# use agreement_bound standard errors (FAMILY_LEVEL shared among the cases of one verdict).
STABLE_FACTOR = 10.0  # a gradient "stable" through the stack: G_0 / G_L within one decade
VAR_GROWTH = 2.0  # a stream "not kept at constant variance": var_L / var_0 above 2 (doubled)
MEAN_DOMINATES = 1.0  # a mean "not near zero": mu_L^2 above the variance var_L
BATCH_INVARIANT = 1e-9  # "does not depend on B": spread over B at rounding level (exact law)
BATCH_EFFECT = STABLE_FACTOR  # BatchNorm "depends on B": G_0 moves by more than one decade
CORR_EFFECT = 0.1  # BatchNorm "depends on B": c_L moves by more than 0.1 over the batch sizes
CHI_TOL = 0.05  # a per-block gradient factor "predictable": |log chi| <= 5 % on the whole grid
EPS_LEVEL = 1e-4  # log chi above -EPS_LEVEL: "not below one" up to LayerNorm's eps (phase row)
EPS_EFFECT = 0.01  # eps "moves the signal": some q_l or G_l changes by more than 1 % over EPS_VALUES
EPS_VALUES = (1e-8, 1e-5, 1e-3)  # LayerNorm's eps: far below, at and above the usual 1e-5
EPS_SCALES = (1.0, 1e-6)  # the inputs' q_0: unit scale, and below the usual eps
RELATION_RTOL = 1e-6  # a relation the prose states (G_0/G_L = q_L/q_0) holds to this
DEFAULT_INIT = {"sigma_w1": 1.0, "alpha": 1.0}  # tanh branch at its default initialisation
HANIN_NICA_WIDTH = 4096  # width at which the per-block log-normal coefficients are quoted


@dataclass
class Row:
    claim: str
    verdict: str
    evidence: str
    where: str


def figs(*names: str) -> str:
    """LaTeX references to paper figures (``\\label{fig:<name>}`` in the paper)."""
    refs = ", ".join(rf"\ref{{fig:{n}}}" for n in names)
    return ("Figs.~" if len(names) > 1 else "Fig.~") + refs


def derivation(name: str) -> str:
    """LaTeX reference to a derivation's equations (appendix, by script name)."""
    return rf"App.~\ref{{sec:derivation:{name}}}"


def _th(data, sim):
    return (data.get(sim) or {}).get("theory")


def _mc_of(data, sim):
    return (data.get(sim) or {}).get("montecarlo")


def _last(th, arch, var, **sel):
    return float(th[var].sel(arch=arch, **sel).isel(layer=-1))


def _first(th, arch, var, input=0):
    return float(th[var].sel(arch=arch, input=input).isel(layer=0))


def _growth(th, arch, var="log_grad_q"):
    """log X_0 - log X_L (input 0)."""
    x = th[var].sel(arch=arch, input=0)
    return float(x.isel(layer=0) - x.isel(layer=-1))


def _arch(th, prefix, exclude=None):
    return next((str(a) for a in th["arch"].values if str(a).startswith(prefix)
                 and (exclude is None or exclude not in str(a))), None)


def postln_tanh_chi(phase) -> float | None:
    """Post-LN's per-block gradient factor chi with tanh branches at the default initialisation
    (:data:`DEFAULT_INIT`), read off the phase grid (chi is depth-independent for Post-LN: the
    stream is stationary from block 1). None when the grid lacks that point or Post-LN."""
    if phase is None or "Post-LN" not in [str(a) for a in phase["arch"].values]:
        return None
    from sigprop.figures.phase import factor

    x = factor(phase).sel(arch="Post-LN")
    at = {}
    for dim, want in DEFAULT_INIT.items():
        if dim not in x.dims:
            return None
        vals = np.asarray(x[dim].values, dtype=float)
        i = int(np.argmin(np.abs(vals - want)))
        if abs(vals[i] - want) > 1e-9 * want:
            return None
        at[dim] = i
    return float(np.exp(x.isel(at)))


def _post_chi_range(phase):
    """(min, max) of Post-LN's chi over the phase grid, or None."""
    if phase is None or "Post-LN" not in [str(a) for a in phase["arch"].values]:
        return None
    from sigprop.figures.phase import factor

    x = factor(phase).sel(arch="Post-LN")
    return float(np.exp(x.min())), float(np.exp(x.max()))


def _trend_word(log_ratio: float) -> str:
    """G_0 / G_L = e^log_ratio in words: within a decade of 1 "stable", else which way."""
    if abs(log_ratio) <= np.log(STABLE_FACTOR):
        return "stable"
    return "exploding" if log_ratio > 0 else "vanishing"


def _factor_word(log_ratio: float, L: int) -> str:
    """The per-block factor (G_0 / G_L)^(1/L): "exactly 1" where it is 1 to rounding."""
    return "exactly 1" if abs(log_ratio) < 1e-9 else f"{np.exp(log_ratio / L):.6g}"


def _factor_text(log_ratio: float, L: int) -> str:
    """:func:`_factor_word` as the prose reads it ("exactly one")."""
    return _factor_word(log_ratio, L).replace("exactly 1", "exactly one")


def _vanishing_verdict(g_none, g_least) -> str:
    """The unnormalised stack's log G_0/G_L (None: not run) and the least of the LayerNorm
    archs': a cure needs a vanishing gradient without LayerNorm and none with it."""
    if g_none is None:
        return "not computed"
    if g_least <= -np.log(STABLE_FACTOR):
        return "False (LayerNorm's own gradient vanishes)"
    return "Supported" if g_none <= -np.log(STABLE_FACTOR) else "Misleading"


def _placement_spread(phase) -> float:
    """The largest |log chi_Pre-LN - log chi_Post-LN| over the phase grid (0 without Pre-LN)."""
    from sigprop.figures.phase import factor

    if "Pre-LN" not in [str(a) for a in phase["arch"].values]:
        return 0.0
    logchi = factor(phase)
    return float(abs(logchi.sel(arch="Pre-LN") - logchi.sel(arch="Post-LN")).max())


def _flow_verdict(phase) -> str:
    """"Supported" where the per-block gradient factor moves by at most CHI_TOL (in log) both
    between Pre-LN and Post-LN at each point of the phase grid and over the grid for Post-LN,
    else which of the two it depends on."""
    from sigprop.figures.phase import factor

    post = factor(phase).sel(arch="Post-LN")
    place, init = _placement_spread(phase), float(post.max() - post.min())
    words = [w for w, on in (("placement-dependent", place > CHI_TOL),
                             ("initialisation-dependent", init > CHI_TOL)) if on]
    return ", ".join(words).capitalize() if words else "Supported"


def placement_rows(th, phase=None) -> list[Row]:
    L = int(th["layer"][-1])
    pre, post = _arch(th, "Pre-LN"), _arch(th, "Post-LN")
    none1 = _arch(th, "none", exclude="sqrt")
    g_pre, g_post = _growth(th, pre), _growth(th, post)
    v_pre, v_post = _last(th, pre, "var", input=0), _last(th, post, "var", input=0)
    chi = postln_tanh_chi(phase)
    rows = []
    if chi is None:
        verdict, tanh = "not computed", "the tanh per-block factor is not computed (phase sim)"
    else:
        verdict = ("Supported" if max(abs(g_post), L * abs(np.log(chi))) <= np.log(STABLE_FACTOR)
                   else "Not supported as a rule")
        tanh = (f"with tanh branches at the default initialisation its per-block gradient factor "
                f"is $\\chi$ = {chi:.4g}, a constant of the stationary Post-LN block, so "
                f"$G_0/G_L = \\chi^L = {tex_number(chi ** L)}$ at L = {L}")
    rows.append(Row(
        "Put the normalisation after the residual addition (Post-LN), ahead of the "
        "activation, to stabilise deep residual stacks.", verdict,
        f"Post-LN pins the stream (var$_L$ = {v_post:.3g}); with ReLU branches its per-block "
        f"gradient factor is {_factor_word(g_post, L)} ($G_0/G_L$ = {np.exp(g_post):.3g}), "
        f"but {tanh}. Pre-LN "
        f"leaves the stream unnormalised (var$_L$ = {v_pre:.4g}). In these blocks a Dense, not "
        "an activation, follows the normalisation.",
        figs("gradient", "phase") + "; " + derivation("postln_grad_factor")))
    g_none = None if none1 is None else _growth(th, none1)
    rows.append(Row(
        "LayerNorm keeps gradients large, curing vanishing gradients in deep residual stacks.",
        _vanishing_verdict(g_none, min(g_pre, g_post)),
        "not computed (no unnormalised arch)" if g_none is None else
        f"For MLP branches without a final LayerNorm (the nets here), without normalisation, "
        f"alpha = 1, the per-block factor is $\\chi$ = {np.exp(g_none / L):.4g} ($G_0/G_L = "
        f"{tex_number(float(np.exp(min(g_none, 700.0))))}$ at L = {L}: {_trend_word(g_none)}). With "
        f"LayerNorm: Pre-LN $G_0/G_L$ = {np.exp(g_pre):.4g} ({_trend_word(g_pre)}), "
        f"$\\kappa = \\ln(G_0/G_L)/\\ln L$ = {g_pre / np.log(L):.3g}; Post-LN "
        f"{np.exp(g_post):.3g} ({_trend_word(g_post)}).",
        figs("gradient") + "; " + derivation("preln_grad_telescoping")))
    rows.append(Row(
        "LayerNorm keeps the layer outputs at zero mean and constant variance through depth.",
        "False for Pre-LN" if v_pre / _first(th, pre, "var") > VAR_GROWTH else "Supported",
        f"Only the branch input is normalised: the Pre-LN stream variance grows linearly, "
        f"by {(v_pre - _first(th, pre, 'var')) / L:.4g} per block (derivation: "
        f"$q_L = q_0 + L\\alpha^2\\gamma^2\\sigma_1^2\\sigma_2^2/2$), to var$_L$ = {v_pre:.4g} "
        f"at L = {L}; Post-LN and DeepNorm fix it at {v_post:.3g}.",
        figs("variance") + "; " + derivation("preln_q_linear")))
    return rows


def meanshift_rows(th) -> list[Row]:
    """The mean claim: mu_L^2 / var_L of the streams whose branch ends in a ReLU, Pre-LN's (the
    stream the norm feeds) and Post-LN's (the norm's own output), against MEAN_DOMINATES."""
    archs = [str(a) for a in th["arch"].values]
    pre_relu = next((a for a in archs if a.startswith("Pre-LN") and "ReLU" in a), None)
    if pre_relu is None:
        return []
    post_relu = next((a for a in archs if a.startswith("Post-LN") and "ReLU" in a), None)

    def ratio(arch):
        return _last(th, arch, "mean", input=0) ** 2 / _last(th, arch, "var", input=0)
    pre = ratio(pre_relu)
    post = None if post_relu is None else ratio(post_relu)
    verdict = ("Supported" if pre <= MEAN_DOMINATES else
               "Only where LayerNorm ends the block (Post-LN); false for the Pre-LN stream"
               if post is not None and post <= MEAN_DOMINATES else "False for the stream")
    post_text = ("" if post is None else
                 f" Post-LN, whose stream is LayerNorm's centred output, has "
                 f"$\\mu_L^2/\\mathrm{{var}}_L$ = {post:.3g} with the same branch.")
    return [Row(
        "LayerNorm keeps the mean of the activations near zero.", verdict,
        f"With a branch ending in a ReLU, Pre-LN's stream accumulates a mean: "
        f"$\\mu_L^2/\\mathrm{{var}}_L$ = {pre:.4g}; a branch ending in a Dense adds no "
        f"mean at infinite width.{post_text}",
        figs("meanshift"))]


def batchnorm_table(th, mc=None) -> list[dict]:
    """Per batch size: the exact Post-BN correlation -1/(B-1) against Monte Carlo (input pair
    (0, 1), and the mean over all pairs), the Pre-BN closed form against the engine and Monte
    Carlo, and Pre-BN's input gradient with lambda E[1/s^2] = B/(B-3) (None for B <= 3)."""
    from sigprop.figures.norms import branch_rho, inputs_of, postbn_corr, prebn_corr

    L = int(th["layer"][-1])
    q0, c0 = inputs_of(th)
    rho = branch_rho(th)
    rows = []
    for B in [int(b) for b in th["batch"].values]:
        r = {"B": B, "postbn": float(postbn_corr(B)),
             "prebn_closed": float(prebn_corr(L, B, q0, c0, rho)),
             "prebn_engine": float(th["corr"].sel(arch="Pre-BN", batch=B, input=0, input_b=1)
                                   .isel(layer=-1)),
             "prebn_g0": float(th["grad_q"].sel(arch="Pre-BN", batch=B, input=0).isel(layer=0)),
             "inv_s2": B / (B - 3) if B > 3 else None}
        if mc is not None and "Post-BN" in mc["arch"].values:
            m = mc.sel(arch="Post-BN", batch=B)
            m = m.isel(width=-1) if "width" in m.dims else m
            c = m["corr"].isel(layer=-1)
            pair = c.sel(input=0, input_b=1)
            sub = c.isel(input=slice(0, B), input_b=slice(0, B))
            allp = (sub.sum(("input", "input_b")) - _diag(sub)) / (B * (B - 1))
            S = pair.sizes["seed"]
            for key, x in (("mc_pair", pair), ("mc_all", allp)):
                r[key] = float(x.mean("seed"))
                r[key + "_se"] = float(x.std("seed", ddof=1)) / np.sqrt(S)
        rows.append(r)
    return rows


def _diag(c):
    """Sum of the diagonal of the (input, input_b) block, per seed."""
    B = c.sizes["input"]
    return sum(c.isel(input=a, input_b=a) for a in range(B))


def _z(r, key):
    se = r.get(key + "_se")
    return abs(r[key] - r["postbn"]) / se if se else (0.0 if r[key] == r["postbn"] else np.inf)


def norm_rows(th, mc=None) -> list[Row]:
    def corr(ds):
        return ds["corr"].sel(input=0, input_b=1).isel(layer=-1)

    archs = [str(a) for a in th["arch"].values]
    ln, bn = "Pre-LN", _arch(th, "Pre-BN")
    if ln not in archs or bn is None:
        return []
    tab = batchnorm_table(th, mc)
    spread_ln = float(np.ptp(corr(th).sel(arch=ln).values))
    spread_bn = max(r["prebn_engine"] for r in tab) - min(r["prebn_engine"] for r in tab)
    ok = [r for r in tab if r["B"] >= MIN_GRAD_BATCH]
    g_lo, g_hi = (ok[0], ok[-1]) if len(ok) >= 2 else (None, None)
    bn_grad = g_lo is not None and abs(np.log(g_lo["prebn_g0"] / g_hi["prebn_g0"])) > \
        np.log(BATCH_EFFECT)
    closed = max(abs(r["prebn_closed"] - r["prebn_engine"]) for r in tab)
    with_mc = [r for r in tab if r["B"] > 2 and np.isfinite(r.get("mc_pair", np.nan))
               and r.get("mc_pair_se", 0) > 0]
    z_all = max((_z(r, "mc_pair") for r in with_mc), default=None)
    mc_text = ("; Monte Carlo at the last layer "
               + ", ".join(f"{r['mc_pair']:.3f} $\\pm$ {r['mc_pair_se']:.2f}" for r in with_mc)
               + " against " + ", ".join(f"{r['postbn']:.3f}" for r in with_mc)
               + f" at B = {', '.join(str(r['B']) for r in with_mc)} (largest |z| = {z_all:.2g}, "
               "the pair (0, 1))"
               if with_mc else "")
    postbn_ok = z_all is None or z_all <= agreement_bound(len(with_mc))
    b = [r["B"] for r in tab]
    rows = [Row(
        "LayerNorm does not depend on the batch size, unlike BatchNorm; instance norm "
        "normalises each sample on its own.",
        ("Supported (LN, RMSNorm); IN not modelled"
         if spread_ln <= BATCH_INVARIANT and spread_bn > CORR_EFFECT and postbn_ok
         else "Not supported"),
        f"LayerNorm acts on each example (by definition, so its curves are flat in B: spread "
        f"{spread_ln:.1e}). BatchNorm centres each feature over the batch, so for "
        f"exchangeable inputs its output correlation is exactly $-1/(B-1)$ at infinite width: "
        f"Post-BN sits at that fixed point{mc_text}. Pre-BN follows "
        f"$c_L = (q_0c_0 + L\\rho f(-1/(B-1)))/(q_0 + L\\rho)$, from {tab[0]['prebn_closed']:.3g} "
        f"at B = {b[0]} to {tab[-1]['prebn_closed']:.3g} at B = {b[-1]} (the engine agrees to "
        f"{closed:.1e}). On feature vectors instance norm has no spatial axis, so it is not an "
        "op here.",
        figs("norms") + r"; Tab.~\ref{tab:batchnorm}")]
    if g_lo is None:
        rows.append(Row("BatchNorm is noisy at small batch sizes, LayerNorm is not.",
                        "not computed", f"fewer than two batch sizes B >= {MIN_GRAD_BATCH}",
                        figs("norms")))
        return rows
    rows.append(Row(
        "BatchNorm is noisy at small batch sizes, LayerNorm is not.",
        ("Supported, and stronger (a deterministic B dependence at infinite width)"
         if bn_grad and spread_ln <= BATCH_INVARIANT else "Not supported at infinite width"),
        f"Even at infinite width, with no sampling noise, BatchNorm changes the signal with B: "
        f"Pre-BN's input gradient is $G_0 = {tex_number(g_lo['prebn_g0'])}$ at B = {g_lo['B']} "
        f"against ${tex_number(g_hi['prebn_g0'])}$ at B = {g_hi['B']}. The backward divides by the batch spread "
        f"s, and $\\lambda\\,\\mathrm{{E}}[1/s^2] = B/(B-3)$ ({g_lo['inv_s2']:.3g} at B = {g_lo['B']}; "
        "$\\lambda$ the batch's mean non-zero centred eigenvalue) "
        f"diverges for B $\\le$ 3, where $G_0$ is set by eps, not by B: those batch sizes are "
        "not used as evidence.",
        figs("norms") + r"; Tab.~\ref{tab:batchnorm}"))
    return rows


def phase_rows(th) -> list[Row]:
    rng = _post_chi_range(th)
    if rng is None:
        return []
    lo, hi = rng
    L = int(th["layer"][-1])
    place = _placement_spread(th)
    trend = ("only grows towards the input" if lo >= np.exp(-EPS_LEVEL) else
             "shrinks towards the input" if hi <= 1 else "grows or shrinks towards the input")
    return [Row(
        "LayerNorm gives a consistent, predictable gradient flow through the network.",
        _flow_verdict(th),
        f"Post-LN's per-block gradient factor is depth-independent; over the "
        f"($\\sigma_w^2$, alpha) grid of tanh branches it {trend}, $\\chi$ from {lo:.4g} to "
        f"{hi:.4g} per block (compounding as $\\chi^L$); at depth {L} Pre-LN's per-block "
        f"factor differs from Post-LN's by up to {place:.3g} in $\\log\\chi$ over the grid. "
        "With these tanh branches Pre-LN's $G_0/G_L$ grows like a power of L and the "
        "unnormalised stack's like $\\exp\\Theta(\\sqrt L)$, so their $\\chi$ depends on "
        "the depth.", figs("phase"))]


# Claims that data at initialisation cannot decide: the reason is the verdict's input.
TRAINING = "training dynamics"
LITERATURE = "a published experiment"


def scope_row(claim: str, scope: str, evidence: str, where: str, finding: str | None = None):
    """A claim about ``scope``: "Not testable here" unless a cited ``finding`` decides it."""
    verdict = f"Not testable here ({scope})" if finding is None else finding
    return Row(claim, verdict, evidence, where)


def definition_rows(norms) -> list[Row]:
    """Claims about what LayerNorm computes, decided by the ops: LayerNorm's fields (no
    running statistics) and whether its output for one input moves with the batch."""
    import dataclasses

    from sigprop.ops import LayerNorm

    fields = [f.name for f in dataclasses.fields(LayerNorm)]
    running = [f for f in fields if any(k in f for k in ("momentum", "running", "moving"))]
    over_batch = None
    if norms is not None and "Pre-LN" in norms["arch"].values:
        c = norms["corr"].sel(arch="Pre-LN", input=0, input_b=1).isel(layer=-1)
        over_batch = float(np.ptp(c.values)) > BATCH_INVARIANT
    return [
        Row("LayerNorm normalises each feature over the mini-batch.",
            "not computed" if over_batch is None else
            "Supported" if over_batch else "False (definition)",
            "LayerNorm averages over the features of one example: its output for one input "
            "does not move with the batch (Fig. norms); averaging each feature over the batch "
            "is BatchNorm.", r"Sec.~\ref{sec:conventions}"),
        Row("Tune LayerNorm's momentum for its moving averages.",
            "Supported" if running else "False (definition)",
            f"LayerNorm's parameters are {', '.join(fields)}: no running statistics, so no "
            "momentum; it computes the same map in training and inference. Momentum belongs to "
            "BatchNorm's running averages.", r"Sec.~\ref{sec:conventions}"),
    ]


# Group Normalization (Wu & He 2018), Table 1: ResNet-50 on ImageNet, 32 images per GPU,
# validation top-1 error (%). The essay's "Wu et al. (2018)" on LayerNorm in residual networks.
GROUP_NORM_ERRORS = {"BN": 23.6, "LN": 25.3, "IN": 28.4, "GN": 24.1}


def literature_rows() -> list[Row]:
    ln, bn = GROUP_NORM_ERRORS["LN"], GROUP_NORM_ERRORS["BN"]
    return [
        scope_row("LayerNorm reduces internal covariate shift, hence faster convergence "
                  "(Ba et al. 2016).", TRAINING,
                  "A statement about training dynamics; sigprop measures signal propagation at "
                  "initialisation. The only fact it shows is trivial: a normalised branch input "
                  "has a fixed second moment.", r"\cite{ba2016layer}"),
        scope_row("Cited studies: Wu et al. (2018) robustness; +2.5\\% top-1 for a 152-layer "
                  "ResNet with LayerNorm on ImageNet.", LITERATURE,
                  f"If the citation is Group Normalization (Wu and He 2018), that paper reports "
                  f"LayerNorm below BatchNorm on ResNet-50/ImageNet (top-1 error {ln:g}\\% "
                  f"against {bn:g}\\% at 32 images per GPU), not above it; the 152-layer figure "
                  "has no source. sigprop runs no training.", r"\cite{wu2018group}",
                  finding="Contradicted" if ln > bn else "Unverified"),
    ]


def audit(data: dict) -> list[Row]:
    """Rows of the audit; ``data[sim] = {"theory": Dataset, "montecarlo": Dataset | None}``."""
    rows: list[Row] = []
    if (th := _th(data, "placement")) is not None:
        rows += placement_rows(th, _th(data, "phase"))
    if (th := _th(data, "meanshift")) is not None:
        rows += meanshift_rows(th)
    if (th := _th(data, "norms")) is not None:
        rows += norm_rows(th, _mc_of(data, "norms"))
    if (th := _th(data, "phase")) is not None:
        rows += phase_rows(th)
    rows += definition_rows(_th(data, "norms"))
    rows += literature_rows()
    rows.append(_depth_row(_th(data, "placement")))
    if (th := _th(data, "placement")) is not None:
        rows.append(eps_row(int(th["layer"][-1])))
    return rows


EPS_CLAIM = ("Start LayerNorm's epsilon small, such as 1e-5, and adjust it for the stability "
             "observed.")


def eps_effect(depth: int, eps_values=EPS_VALUES, scales=EPS_SCALES) -> dict:
    """{(placement, q_0): (largest |change| of log q_l, of log G_l, over every layer l)} over
    ``eps_values`` of every LayerNorm in Pre-LN, Post-LN and Peri-LN stacks (ReLU MLP branches,
    ``depth`` blocks) with inputs of second moment q_0 in ``scales`` (infinite-width theory)."""
    from sigprop import presets
    from sigprop.engines.theory import theory
    from sigprop.state.inputs import Inputs

    out = {}
    for name in ("preln", "postln", "periln"):
        for q0 in scales:
            runs = [theory(presets.PRESETS[name](depth, eps=e), Inputs(q=q0)) for e in eps_values]
            out[name, q0] = tuple(
                float(np.ptp(np.stack([r[v].isel(input=0).values for r in runs]), axis=0).max())
                for v in ("log_q", "log_grad_q"))
    return out


def eps_row(depth: int) -> Row:
    """The epsilon claim, a statement about training: out of scope, with what eps does at
    initialisation (:func:`eps_effect`: the largest change of q_l and G_l over the layers, for
    unit inputs and for inputs at the scale of eps) against EPS_EFFECT."""
    effect = eps_effect(depth)
    unit = max(max(v) for (_, q0), v in effect.items() if q0 == 1.0)
    small_q = min(q0 for _, q0 in effect)
    small = max(max(v) for (_, q0), v in effect.items() if q0 == small_q)
    span = f"${tex_number(min(EPS_VALUES))}$ to ${tex_number(max(EPS_VALUES))}$"
    seen = [f"$q_0 = {tex_number(q0)}$" for q0, v in ((1.0, unit), (small_q, small))
            if v > np.log1p(EPS_EFFECT)]
    return scope_row(
        EPS_CLAIM, TRAINING,
        f"LayerNorm divides by $\\sqrt{{q + \\epsilon}}$. At initialisation, over eps from "
        f"{span}, Pre-LN, Post-LN and Peri-LN stacks of L = {depth} ReLU blocks keep $q_\\ell$ "
        f"and $G_\\ell$ at every layer within a factor {np.exp(unit):.6g} with inputs of "
        f"$q_0 = 1$ and {tex_number(float(np.exp(small)))} with inputs of $q_0 = "
        f"{tex_number(small_q)}$: eps moves the signal by more than {EPS_EFFECT * 100:g}\\% "
        + (f"at {' and '.join(seen)}." if seen else "at neither."),
        r"theory (\texttt{claims.eps\_effect})")


DEPTH_CLAIM = "Residual connections alone let networks scale to thousands of layers."


def _depth_row(th) -> Row:
    if th is None:
        return Row(DEPTH_CLAIM, "not computed", "placement sim missing", figs("variance"))
    L = int(th["layer"][-1])
    logs = {str(a): float(th["log_q"].sel(arch=a, input=0).isel(layer=-1)) for a in th["arch"].values}
    none1 = next((a for a in logs if a.startswith("none") and "sqrt" not in a), None)
    scaled = next((a for a in logs if a.startswith("none") and "sqrt" in a), None)
    if not (none1 and scaled):
        return Row(DEPTH_CLAIM, "not computed", "placement sim lacks the unnormalised arches",
                   figs("variance"))
    g1 = (logs[none1] - np.log(_first(th, none1, "q"))) / L
    g2 = logs[scaled] - np.log(_first(th, scaled, "q"))
    blown = L * g1 > np.log(STABLE_FACTOR)
    tamed = abs(g2) <= np.log(STABLE_FACTOR)
    verdict = ("Supported" if not blown else "Not without scaling" if tamed else
               "Not supported (q diverges with alpha = 1/sqrt(L) too)")
    return Row(DEPTH_CLAIM, verdict,
               f"Without normalisation and alpha = 1, q grows by a factor {np.exp(g1):.3g} per "
               f"block ($\\log q_L$ = {logs[none1]:.4g} at L = {L}); with alpha = $1/\\sqrt{{L}}$ "
               f"$\\log(q_L/q_0)$ = {g2:.3g}, "
               f"{'within' if tamed else 'beyond'} a factor {STABLE_FACTOR:g} of $q_0$.",
               figs("variance"))


def _floor_text(chi_range) -> str:
    """Post-LN's least per-block factor over the phase grid, in words."""
    return ("never below one beyond LayerNorm's $\\epsilon$" if chi_range[0] >= np.exp(-EPS_LEVEL)
            else "below one at some of its points")


def _placement_words(th, pre, post, L) -> dict[str, str]:
    """The relations the results' prose states, as computed text: Pre-LN's telescoping G_0/G_L
    = q_L/q_0 (stated only where the two agree to RELATION_RTOL), Post-LN's ReLU per-block
    factor, and which archs hold the stream's variance at Post-LN's."""
    g_pre, g_post = _growth(th, pre), _growth(th, post)
    log_q = th["log_q"].sel(arch=pre, input=0)
    q_ratio = float(log_q.isel(layer=-1) - log_q.isel(layer=0))
    relation = (r"$G_0/G_L=q_L/q_0=\num{PreLNGradRatio}$"
                if abs(g_pre - q_ratio) <= RELATION_RTOL * max(abs(q_ratio), 1.0) else
                rf"$G_0/G_L=\num{{PreLNGradRatio}}$ (and $q_L/q_0 = {tex_number(np.exp(q_ratio))}$)")
    v_post = _last(th, post, "var", input=0)
    held = [str(a) for a in th["arch"].values if str(a) != post and str(a).startswith("DeepNorm")
            and abs(_last(th, str(a), "var", input=0) / v_post - 1) <= RELATION_RTOL]
    return {"PreLNGradRelation": relation,
            "PostLNReluFactorText": _factor_text(g_post, L),
            "PlacementHeldVarText": latex_escape(" and ".join(["Post-LN", *held]))
            + (" hold" if held else " holds")}


def numbers(data: dict) -> dict[str, float]:
    """The numbers (and computed words) the paper's prose quotes, by macro name
    (``paper/figures/numbers.tex``)."""
    out: dict[str, float] = {}
    if (th := _th(data, "placement")) is not None:
        pre, post = _arch(th, "Pre-LN"), _arch(th, "Post-LN")
        L = int(th["layer"][-1])
        out.update(PlacementDepth=L,
                   PreLNVarL=_last(th, pre, "var", input=0),
                   PostLNVarL=_last(th, post, "var", input=0),
                   PreLNGradRatio=float(np.exp(_growth(th, pre))),
                   **deepnorm_constants(L), **xiong_lemma2(L))
        out.update(_placement_words(th, pre, post, L))
        dn = _arch(th, "DeepNorm")
        if dn is not None:
            c = th["corr"].sel(arch=dn, input=0, input_b=1)
            out.update(DeepNormCorrStart=float(c.isel(layer=0)),
                       DeepNormCorrDrift=float(c.isel(layer=-1) - c.isel(layer=0)),
                       DeepNormQL=float(np.exp(_last(th, dn, "log_q", input=0))),
                       DeepNormFactorText=_factor_text(_growth(th, dn), L))
        if (chi := postln_tanh_chi(_th(data, "phase"))) is not None:
            out.update(PostLNTanhChi=chi, PostLNTanhChiL=chi ** L)
    if (th := _th(data, "phase")) is not None and (rng := _post_chi_range(th)) is not None:
        out.update(PostLNChiMin=rng[0], PostLNChiMax=rng[1], PostLNChiFloorText=_floor_text(rng))
    from sigprop.figures.finite_width import per_block

    mean, var = per_block(HANIN_NICA_WIDTH)  # exact per-block law of log q, plain ReLU
    out.update(FiniteWidthVarCoef=var * HANIN_NICA_WIDTH,
               FiniteWidthMeanCoef=mean * HANIN_NICA_WIDTH, FiniteWidthN=HANIN_NICA_WIDTH)
    from sigprop.figures import literature

    out.update(literature.numbers())  # Xiong Thm 1, Liu (Admin), DeepNet: depth scans, verdicts
    if (th := _th(data, "meanshift")) is not None:
        arch = next((str(a) for a in th["arch"].values if str(a).startswith("none")), None)
        if arch is not None:
            out.update(MeanShiftDepth=int(th["layer"][-1]),
                       MeanShiftMuSqOverVar=_last(th, arch, "mean", input=0) ** 2
                       / _last(th, arch, "var", input=0),
                       MeanShiftLogGzero=float(th["log_grad_q"].sel(arch=arch, input=0)
                                               .isel(layer=0) - th["log_grad_q"]
                                               .sel(arch=arch, input=0).isel(layer=-1)))
    if (th := _th(data, "norms")) is not None and _arch(th, "Pre-BN") is not None:
        tab = batchnorm_table(th, _mc_of(data, "norms"))
        out.update(NormsDepth=int(th["layer"][-1]),
                   PreBNClosedMaxDev=max(abs(r["prebn_closed"] - r["prebn_engine"]) for r in tab))
    out.update(batchnorm_typical())
    from sigprop.analysis.compare import FAMILY_LEVEL, MDE_POWER

    out.update(AgreementLevel=FAMILY_LEVEL, AgreementPower=MDE_POWER)  # (the tests' settings)
    return out


def batchnorm_typical(depth=16, low=256, high=1024, seeds=1000, eps=1e-5) -> dict:
    """Pre-BN (ReLU MLP branches, Gaussian inputs q = 1, c = 0.5) at B = 2, 3, where the mean
    of the gradient is carried by features of batch variance ~ eps: the typical E log G_0 at
    width N (``typical_log_grad_q`` of ``sp.theory(net, x, width=N)``), the infinite-width
    log E G_0, and Monte Carlo's mean +- SE and median of log G_0 over ``seeds`` (NumPy), at
    widths ``low`` (suffix-free macros) and ``high`` (suffix ``High``); and the verdict on the
    typical value over all of them (``BNTypVerdict``, :func:`_typical_verdict`)."""
    import warnings

    from sigprop import presets
    from sigprop.engines.montecarlo import simulate
    from sigprop.engines.theory import theory
    from sigprop.errors import FiniteWidthWarning
    from sigprop.state.inputs import Inputs

    out = {"BNTypDepth": depth, "BNTypWidth": low, "BNTypWidthHigh": high,
           "BNTypSeeds": seeds, "BNTypEps": eps}
    checks = []
    for width, suffix in ((low, ""), (high, "High")):
        for B, name in ((2, "Two"), (3, "Three")):
            net, x0 = presets.prebn(depth, eps=eps), Inputs(q=1.0, corr=0.5, n=B, law="gaussian")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FiniteWidthWarning)  # the point made here
                th = theory(net, x0, width=width)
            g = simulate(net, x0, width=width, seeds=seeds, backend="numpy",
                         root_seed=2024)["log_grad_q"].values[:, 0, 0]
            typical, se = float(th["typical_log_grad_q"].values[0, 0]), float(
                g.std(ddof=1) / np.sqrt(seeds))
            mean, se_text = mean_and_error(float(g.mean()), se)
            checks.append((B, width, (float(g.mean()) - typical) / se))
            out.update({f"BNTypPred{name}{suffix}": typical,
                        f"BNTypMean{name}{suffix}": float(th["log_grad_q"].values[0, 0]),
                        f"BNTypMC{name}{suffix}": mean, f"BNTypSE{name}{suffix}": se_text,
                        f"BNTypMedian{name}{suffix}": float(np.median(g))})
    out["BNTypVerdict"] = _typical_verdict(checks)
    return out


def _typical_verdict(checks) -> str:
    """Words on Monte Carlo's mean of log G_0 against the typical value, from (B, N, z) per
    case (:func:`agreement_words`)."""
    return agreement_words([(f"$B = {B}$, $N = {N}$", z) for B, N, z in checks],
                           "the typical value", "at every batch size and width")


def agreement_bound(cases: int) -> float:
    """The |z| a verdict over ``cases`` comparisons allows each: the two-sided normal quantile
    at FAMILY_LEVEL shared among them (Bonferroni; 3.0 for one case)."""
    from scipy import stats

    from sigprop.analysis.compare import FAMILY_LEVEL

    return float(stats.norm.isf(FAMILY_LEVEL / (2 * max(cases, 1))))


def agreement_words(cases, target: str, every: str = "in every case",
                    bound: float | None = None) -> str:
    """Words on estimates against ``target`` from (where, z) per case: within ``bound``
    standard errors (default :func:`agreement_bound` of the cases; a verdict that shares the
    level with others passes theirs) at all of them (with the largest |z|), or where they
    depart and by how much; a NaN z (not measured) is named as such, never as agreement or
    departure."""
    lost = [where for where, z in cases if math.isnan(z)]
    cases = [(where, z) for where, z in cases if not math.isnan(z)]
    bound = agreement_bound(len(cases)) if bound is None else bound
    every = "" if lost else every
    off = [(where, z) for where, z in cases if abs(z) > bound]
    unmeasured = f"; not measured at {', '.join(lost)}" if lost else ""
    if not cases:
        return f"was not measured at {', '.join(lost)}"
    if not off:
        top = (f"$z = {cases[0][1]:.2g}$" if len(cases) == 1 else
               f"largest $|z| = {max(abs(z) for _, z in cases):.2g}$")
        return " ".join(filter(None, (f"lies within {bound:.3g} standard errors of {target}",
                                      every, f"({top}{unmeasured})")))
    return f"departs from {target} at " + ", ".join(
        f"{where} ($z = {z:.2g}$)" for where, z in off) + unmeasured


def mean_and_error(mean: float, se: float) -> tuple[str, str]:
    """``mean`` and ``se`` as printed: se to two significant digits, mean to the same decimal."""
    decimals = max(0, 1 - math.floor(math.log10(se)))
    return f"{mean:.{decimals}f}", f"{se:.{decimals}f}"


def xiong_lemma2(L: int) -> dict[str, float]:
    """Xiong et al. (2020), Lemma 2, at their initialisation (Xavier weights, sigma_w = 1 in
    both Denses of a ReLU FFN, no biases, unit-variance input): the squared norm per feature
    of the residual sum entering Post-LN's LayerNorm is 3/2, and Pre-LN's stream after l
    blocks is 1 + l/2. Returns those values and the infinite-width theory's (sp.theory of
    presets.postln / presets.preln with sigma_w1 = 1, L blocks), and the ratio Pre/Post."""
    from sigprop import presets
    from sigprop.engines.theory import theory
    from sigprop.state.inputs import Inputs

    x0 = Inputs(q=1.0, n=1)
    post = theory(presets.postln(L, act="relu", sigma_w1=1.0), x0)
    pre = theory(presets.preln(L, act="relu", sigma_w1=1.0), x0)
    # the sum x + F(x) before Post-LN's LayerNorm: the stream's q plus the branch's (the
    # branch's last Dense is independent of x, so the cross term vanishes)
    post_sum = float(post["q"].isel(layer=-2, input=0) + post["branch_q"].isel(layer=-1, input=0))
    pre_L = float(pre["q"].isel(layer=-1, input=0))
    return {"XiongPostTheory": post_sum, "XiongPostPaper": 1.5,
            "XiongPreTheory": pre_L, "XiongPrePaper": 1 + L / 2,
            "XiongRatio": pre_L / post_sum}


def deepnorm_constants(L: int) -> dict[str, float]:
    """DeepNorm's skip gain a and branch gain b at depth L, read off ``presets.deepnorm``
    (the skip's beta, and the last branch Dense's sigma_w, whose default is 1)."""
    from sigprop import presets
    from sigprop.ops import Dense, Residual

    ops = list(presets.deepnorm(L).walk())
    a = next(o.beta for o in ops if isinstance(o, Residual))
    b = [o.sigma_w for o in ops if isinstance(o, Dense)][-1]
    return {"DeepNormA": float(a), "DeepNormB": float(b)}


def batchnorm_rows_tex(data: dict) -> str:
    """The body of the BatchNorm table (one row per batch size), for ``\\BatchNormRows``."""
    th = _th(data, "norms")
    if th is None or _arch(th, "Pre-BN") is None:
        return r"\multicolumn{7}{c}{norms sim not run} \\"
    lines = []
    def pm(r, key):
        return (f"${r[key]:.3f} \\pm {r[key + '_se']:.1g}$"
                if np.isfinite(r.get(key, np.nan)) else "--")

    for r in batchnorm_table(th, _mc_of(data, "norms")):
        g0 = f"${tex_number(r['prebn_g0'])}$" if r["inv_s2"] is not None else \
            r"\textit{set by $\epsilon$}"
        inv = f"{r['inv_s2']:.3g}" if r["inv_s2"] is not None else r"$\infty$"
        lines.append(f"{r['B']} & ${r['postbn']:.3f}$ & {pm(r, 'mc_pair')} & {pm(r, 'mc_all')} & "
                     f"${r['prebn_closed']:.4f}$ & ${r['prebn_engine']:.4f}$ & {g0} & {inv} \\\\")
    return "\n".join(lines)


def write_numbers(data: dict, path) -> Path:
    """``\\newcommand{\\Name}{value}`` per :func:`numbers` (3 significant digits; integers and
    words as they are) and ``\\BatchNormRows`` (:func:`batchnorm_rows_tex`) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tex_macros(__name__, numbers(data), (
        r"\newcommand{\BatchNormRows}{" + batchnorm_rows_tex(data) + "}",)))
    return path


def write_table(rows: list[Row], path) -> Path:
    """A LaTeX longtable (claim, verdict, evidence, where) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r"% Generated by sigprop.figures.claims (sigprop reproduce); do not edit.",
             r"\begin{longtable}{" + "".join(rf">{{\raggedright\arraybackslash}}p{{{w}\linewidth}}"
                                           for w in (0.24, 0.14, 0.4, 0.1)) + "}",
             r"\toprule Claim (paraphrased) & Verdict & Evidence & Where \\ \midrule \endhead"]
    for i, r in enumerate(rows):
        cells = [_tex(r.claim), r"\textbf{" + _tex(r.verdict) + "}", _tex(r.evidence), r.where]
        rule = r"\bottomrule" if i == len(rows) - 1 else r"\midrule"
        lines.append(" & ".join(cells) + r" \\ " + rule)
    lines.append(r"\end{longtable}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _tex(text: str) -> str:
    """Escape prose but keep math and the already escaped percent sign."""
    return latex_escape(text.replace("\\%", "%"))


def derivation_list(names: list[str], generated: Path) -> str:
    """LaTeX: one ``\\derivation{name}{title}`` per derivation script (guarded in the paper)."""
    import json

    lines = ["% Generated by sigprop reproduce: one entry per derivations/<name>.py."]
    for name in names:
        js = Path(generated) / f"{name}.json"
        title = name.replace("_", " ")
        if js.is_file():
            try:
                title = json.loads(js.read_text()).get("title", title)
            except json.JSONDecodeError:
                pass
        lines.append(f"\\derivation{{{name}}}{{{latex_escape(title)}}}")
    return "\n".join(lines) + "\n"
