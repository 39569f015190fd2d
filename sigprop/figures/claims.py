"""The claims audit of the seed essay: each claim (paraphrased), a verdict, its evidence.

Verdicts whose evidence is numeric are decided here from the theory (and Monte Carlo) results
of the sims, so the table changes if the toolkit's answer changes; the others rest on the
definitions of the ops (DESIGN.md) or are marked out of scope (sigprop studies signal
propagation at initialisation, not training). :func:`write_table` writes the LaTeX table the
paper inputs (``paper/figures/claims_table.tex``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sigprop.analysis.plots import latex_escape

SIMS = ("placement", "norms", "meanshift", "phase")

# Thresholds of the verdicts. The values are infinite-width theory (no sampling error), so each
# threshold is a physical quantity, not a number of standard errors.
STABLE_FACTOR = 10.0  # a gradient "stable" through the stack: G_0 / G_L within one decade
VAR_GROWTH = 2.0  # a stream "not kept at constant variance": var_L / var_0 above 2 (doubled)
MEAN_DOMINATES = 1.0  # a mean "not near zero": mu_L^2 above the variance var_L
BATCH_INVARIANT = 1e-9  # "does not depend on B": spread over B at rounding level (exact law)
BATCH_EFFECT = STABLE_FACTOR  # BatchNorm "depends on B": G_0 moves by more than one decade
CHI_TOL = 0.05  # a per-block gradient factor "predictable": |log chi| <= 5 % on the whole grid


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
    """LaTeX reference to a derivation's equations (Sec. derivations, by script name)."""
    return rf"Sec.~\ref{{sec:derivations}} (\texttt{{{latex_escape(name)}}})"


def _th(data, sim):
    return (data.get(sim) or {}).get("theory")


def _last(th, arch, var, **sel):
    return float(th[var].sel(arch=arch, **sel).isel(layer=-1))


def _first(th, arch, var, input=0):
    return float(th[var].sel(arch=arch, input=input).isel(layer=0))


def _vanishing_verdict(th, none1) -> str:
    """"Misleading" when the unnormalised stack's gradient does not vanish (G_0 / G_L above
    1 / STABLE_FACTOR: nothing to cure), "Supported" when it does; unknown without that arch."""
    if none1 is None:
        return "not computed"
    return "Misleading" if _growth(th, none1) > -np.log(STABLE_FACTOR) else "Supported"


def _post_tanh_logchi(phase) -> float:
    """max |log chi| of Post-LN over the phase grid (0 when the phase sim lacks Post-LN)."""
    if phase is None or "Post-LN" not in [str(a) for a in phase["arch"].values]:
        return 0.0
    from sigprop.figures.phase import factor

    return float(np.abs(factor(phase).sel(arch="Post-LN")).max())


def _growth(th, arch, var="log_grad_q"):
    """log X_0 - log X_L (input 0)."""
    x = th[var].sel(arch=arch, input=0)
    return float(x.isel(layer=0) - x.isel(layer=-1))


def _post_tanh(phase) -> str:
    """What Post-LN's per-block gradient factor does over the phase grid, as text."""
    if phase is None or "Post-LN" not in [str(a) for a in phase["arch"].values]:
        return "(phase sim without Post-LN: the tanh case is not computed)"
    from sigprop.figures.phase import factor

    x = factor(phase).sel(arch="Post-LN")
    lo, hi = float(np.exp(x.min())), float(np.exp(x.max()))
    trend = ("grows towards the input" if lo >= 1 else "shrinks towards the input" if hi <= 1
             else "grows or shrinks towards the input")
    return (f"with tanh branches its gradient {trend}, per-block factor $\\chi$ from "
            f"{lo:.3g} to {hi:.3g} over the phase grid, compounding as $\\chi^L$")


def placement_rows(th, phase=None) -> list[Row]:
    L = int(th["layer"][-1])
    archs = [str(a) for a in th["arch"].values]
    post = next(a for a in archs if a.startswith("Post-LN"))
    pre = next(a for a in archs if a.startswith("Pre-LN"))
    none1 = next((a for a in archs if a.startswith("none") and "sqrt" not in a), None)
    g_pre, g_post = _growth(th, pre), _growth(th, post)
    v_pre, v_post = _last(th, pre, "var", input=0), _last(th, post, "var", input=0)
    rows = []
    rows.append(Row(
        "Put the normalisation after the residual addition (Post-LN), ahead of the "
        "activation, to stabilise deep residual stacks.",
        "Supported" if max(abs(g_post), _post_tanh_logchi(phase) * L) <= np.log(STABLE_FACTOR)
        else "Not supported as a rule",
        f"Post-LN pins the stream (var$_L$ = {v_post:.3g} at L = {L}) and, with ReLU "
        f"branches only, its gradient ratio $G_0/G_L$ = {np.exp(g_post):.3g}; "
        f"{_post_tanh(phase)}. Pre-LN leaves the stream unnormalised (var$_L$ = {v_pre:.4g}) "
        "but its per-block gradient factor tends to 1 with depth. In these blocks a Dense, "
        "not an activation, follows the normalisation.",
        figs("variance", "gradient", "phase")))
    expl = f"{np.exp(min(_growth(th, none1), 700.0)):.3g}" if none1 else "n/a"
    rows.append(Row(
        "LayerNorm keeps gradients large, curing vanishing gradients in deep residual stacks.",
        _vanishing_verdict(th, none1),
        f"No residual stack here shows vanishing gradients at initialisation: the skip path "
        f"keeps $G_0 \\ge G_L$ even without normalisation (ratio {expl} at alpha = 1, i.e. "
        f"exploding). LayerNorm bounds the growth: Pre-LN $G_0/G_L$ = {np.exp(g_pre):.3g} "
        f"(polynomial in L), Post-LN {np.exp(g_post):.3g}.",
        figs("gradient")))
    rows.append(Row(
        "LayerNorm keeps the layer outputs at zero mean and constant variance through depth.",
        "False for Pre-LN" if v_pre / _first(th, pre, "var") > VAR_GROWTH else "Supported",
        f"Only the branch input is normalised: the Pre-LN stream variance grows linearly, "
        f"var$_L$ = {v_pre:.4g} at L = {L} (derivation: $q_L = q_0 + L\\alpha^2$); Post-LN "
        f"and DeepNorm fix it at {v_post:.3g}.",
        figs("variance") + "; " + derivation("preln_q_linear")))
    return rows


def meanshift_rows(th) -> list[Row]:
    archs = [str(a) for a in th["arch"].values]
    pre_relu = next((a for a in archs if a.startswith("Pre-LN") and "ReLU" in a), None)
    if pre_relu is None:
        return []
    m2 = _last(th, pre_relu, "mean", input=0) ** 2
    v = _last(th, pre_relu, "var", input=0)
    return [Row(
        "LayerNorm keeps the mean of the activations near zero.",
        "False for the stream" if m2 / v > MEAN_DOMINATES else "Supported",
        f"With a branch ending in a ReLU, Pre-LN's stream accumulates a mean: "
        f"$\\mu_L^2$ = {m2:.4g} against var$_L$ = {v:.4g}; a branch ending in a Dense adds no "
        "mean.",
        figs("meanshift"))]


def _at(th, mc, arch: str, B: int, pick) -> tuple[float, str]:
    """``pick(ds)`` for one arch and batch size: theory, or the Monte Carlo median without it."""
    t = float(pick(th).sel(arch=arch, batch=B))
    if np.isfinite(t):
        return t, "theory"
    if mc is not None and arch in mc["arch"].values:
        m = pick(mc).sel(arch=arch, batch=B)
        m = m.isel(width=-1) if "width" in m.dims else m
        return float(m.median("seed")), "Monte Carlo median; no theory"
    return float("nan"), "not computed"


def norm_rows(th, mc=None) -> list[Row]:
    def corr(ds):
        return ds["corr"].sel(input=0, input_b=1).isel(layer=-1)

    def grad(ds):
        return ds["grad_q"].sel(input=0).isel(layer=0)

    archs = [str(a) for a in th["arch"].values]
    ln, bn = "Pre-LN", next((a for a in archs if a.startswith("Pre-BN")), None)
    if ln not in archs or bn is None:
        return []
    spread_ln = float(np.ptp(corr(th).sel(arch=ln).values)) + \
        float(np.ptp(np.log(grad(th).sel(arch=ln).values)))
    b = [int(x) for x in th["batch"].values]
    (c0, src_c0), (c1, _) = _at(th, mc, bn, b[0], corr), _at(th, mc, bn, b[-1], corr)
    (g0, src_g0), (g1, _) = _at(th, mc, bn, b[0], grad), _at(th, mc, bn, b[-1], grad)
    return [Row(
        "LayerNorm does not depend on the batch size, unlike BatchNorm; instance norm "
        "normalises each sample on its own.",
        ("Supported (LN, RMSNorm); IN not modelled"
         if spread_ln <= BATCH_INVARIANT and abs(np.log(g0 / g1)) > np.log(BATCH_EFFECT)
         else "Not supported"),
        f"Over B = {b[0]}..{b[-1]} the Pre-LN and Pre-RMSNorm curves do not move (spread "
        f"{spread_ln:.1e}); {bn}'s final correlation goes from {c0:.3g} ({src_c0}) to "
        f"{c1:.3g}. On feature vectors instance norm has no spatial axis to normalise over, so "
        "it is not an op here.",
        figs("norms")),
        Row(
        "BatchNorm is noisy at small batch sizes, LayerNorm is not.",
        ("Supported, and stronger (even at infinite width)"
         if abs(np.log(g0 / g1)) > np.log(BATCH_EFFECT) and spread_ln <= BATCH_INVARIANT
         else "Not supported at infinite width"),
        f"Even at infinite width, with no sampling noise, BatchNorm changes the signal with B: "
        f"the input gradient of {bn} is $G_0$ = {g0:.3g} at B = {b[0]} ({src_g0}) against "
        f"{g1:.3g} at B = {b[-1]}; at B = 2 each feature is normalised to $\\pm 1$ and the "
        "backward pass divides by a near-zero spread.",
        figs("norms"))]


def phase_rows(th) -> list[Row]:
    from sigprop.figures.phase import factor

    logchi = factor(th)
    out = []
    for arch in [str(a) for a in th["arch"].values]:
        x = logchi.sel(arch=arch)
        out.append(f"{arch} up to $|\\log\\chi|$ = {float(np.abs(x).max()):.2g}")
    post = float(np.abs(logchi.sel(arch="Post-LN")).max()) if "Post-LN" in logchi["arch"] else 0
    return [Row(
        "LayerNorm gives a consistent, predictable gradient flow through the network.",
        "Placement-dependent" if post > CHI_TOL else "Supported",
        "Over the ($\\sigma_w^2$, alpha) grid of tanh branches the per-block gradient factor "
        "$\\chi$ moves away from 1 by: " + "; ".join(out) + ". It depends on the "
        "initialisation and on where the normalisation sits.", figs("phase"))]


STATIC = (
    Row("LayerNorm normalises each feature over the mini-batch.", "False (definition)",
        "LayerNorm averages over the features of one example; averaging each feature over "
        "the batch is BatchNorm (DESIGN.md op definitions).", r"Sec.~\ref{sec:conventions}"),
    Row("Tune LayerNorm's momentum for its moving averages.", "False (definition)",
        "LayerNorm has no running statistics, so no momentum: its parameters are eps and the "
        "gain, and it computes the same map in training and inference. Momentum belongs to "
        "BatchNorm's running averages.", r"Sec.~\ref{sec:conventions}"),
    Row("LayerNorm reduces internal covariate shift, hence faster convergence (Ba et al. 2016).",
        "Not testable here",
        "A statement about training dynamics; sigprop measures signal propagation at "
        "initialisation. The only fact it shows is trivial: a normalised branch input has a "
        "fixed second moment.", "--"),
    Row("Cited studies: Wu et al. (2018) robustness; +2.5\\% top-1 for a 152-layer ResNet "
        "with LayerNorm on ImageNet.", "Unsupported",
        "No experiment or source is given for the accuracy figure and sigprop runs no "
        "training, so nothing here can confirm it; the citations are left unverified.", "--"),
    Row("Residual connections alone let networks scale to thousands of layers.",
        "Not without scaling", "", figs("variance")),
)


def audit(data: dict) -> list[Row]:
    """Rows of the audit; ``data[sim] = {"theory": Dataset, "montecarlo": Dataset | None}``."""
    rows: list[Row] = []
    if (th := _th(data, "placement")) is not None:
        rows += placement_rows(th, _th(data, "phase"))
    if (th := _th(data, "meanshift")) is not None:
        rows += meanshift_rows(th)
    if (th := _th(data, "norms")) is not None:
        rows += norm_rows(th, (data.get("norms") or {}).get("montecarlo"))
    if (th := _th(data, "phase")) is not None:
        rows += phase_rows(th)
    for row in STATIC:
        if row.verdict == "Not without scaling":
            row = _depth_row(_th(data, "placement"), row)
        rows.append(row)
    return rows


def _depth_row(th, row: Row) -> Row:
    if th is None:
        return Row(row.claim, "not computed", "placement sim missing", row.where)
    L = int(th["layer"][-1])
    logs = {str(a): float(th["log_q"].sel(arch=a, input=0).isel(layer=-1)) for a in th["arch"].values}
    none1 = next((a for a in logs if a.startswith("none") and "sqrt" not in a), None)
    scaled = next((a for a in logs if a.startswith("none") and "sqrt" in a), None)
    blown = none1 and scaled and logs[none1] - np.log(_first(th, none1, "q")) > np.log(STABLE_FACTOR)
    tamed = scaled and abs(logs[scaled] - np.log(_first(th, scaled, "q"))) <= np.log(STABLE_FACTOR)
    verdict = ("not computed" if not (none1 and scaled)
               else "Not without scaling" if blown and tamed else "Supported")
    ev = (f"Without normalisation and alpha = 1, $\\log q_L$ = {logs[none1]:.4g} at L = {L} "
          f"(q doubles per block); with alpha = $1/\\sqrt{{L}}$ it is {logs[scaled]:.3g}. Depth "
          "needs a branch scale or a normalisation, not the skip alone.") if none1 and scaled \
        else "placement sim lacks the unnormalised arches"
    return Row(row.claim, verdict, ev, row.where)


def numbers(data: dict) -> dict[str, float]:
    """The numbers the paper's prose quotes, by macro name (``paper/generated/numbers.tex``)."""
    out: dict[str, float] = {}
    if (th := _th(data, "placement")) is not None:
        archs = [str(a) for a in th["arch"].values]
        pre = next(a for a in archs if a.startswith("Pre-LN"))
        post = next(a for a in archs if a.startswith("Post-LN"))
        out.update(PlacementDepth=int(th["layer"][-1]),
                   PreLNVarL=_last(th, pre, "var", input=0),
                   PostLNVarL=_last(th, post, "var", input=0))
    if (th := _th(data, "meanshift")) is not None:
        arch = next((str(a) for a in th["arch"].values if str(a).startswith("none")), None)
        if arch is not None:
            out.update(MeanShiftDepth=int(th["layer"][-1]),
                       MeanShiftMuSqOverVar=_last(th, arch, "mean", input=0) ** 2
                       / _last(th, arch, "var", input=0),
                       MeanShiftLogGzero=float(th["log_grad_q"].sel(arch=arch, input=0)
                                               .isel(layer=0) - th["log_grad_q"]
                                               .sel(arch=arch, input=0).isel(layer=-1)))
    return out


def write_numbers(data: dict, path) -> Path:
    """``\\newcommand{\\Name}{value}`` per :func:`numbers` (3 significant digits) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["% Generated by sigprop.figures.claims (sigprop reproduce); do not edit."]
    for name, value in numbers(data).items():
        text = str(value) if isinstance(value, int) else f"{value:.3g}"
        if "e" in text:  # 1.2e+03 -> 1.2\times10^{3} (the macros are used in math mode)
            mantissa, exponent = text.split("e")
            text = rf"{mantissa}\times10^{{{int(exponent)}}}"
        lines.append(rf"\newcommand{{\{name}}}{{{text}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_table(rows: list[Row], path) -> Path:
    """A LaTeX longtable (claim, verdict, evidence, where) at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r"% Generated by sigprop.figures.claims (sigprop reproduce); do not edit.",
             r"\begin{longtable}{" + "".join(rf">{{\raggedright\arraybackslash}}p{{{w}\linewidth}}"
                                           for w in (0.26, 0.13, 0.43, 0.1)) + "}",
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
