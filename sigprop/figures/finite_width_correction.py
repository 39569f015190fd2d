"""First-order finite-width correction, predicted vs measured (issue 16).

At width N, E log q_L = log q_L,inf + a/N + O(1/N^2) and Var log q_L = V/N + O(1/N^2), with a
and V from :func:`sigprop.engines.finite_width.coefficients` (the delta method on the Wishart
fluctuation of the realised Gram); for a stream x + alpha phi(W x) the input gradient has
E G_0 = G_0,inf (1 + c/N), c from :func:`~sigprop.engines.finite_width.gradient_coefficient`
(the walk of a forward tangent, exact weights), beside the closed form A of its mean mode
(:func:`~sigprop.engines.finite_width.mean_mode_coefficient`, the coupling of the backward to
the forward weights alone). Measured: a and V by weighted least
squares of c + a/N over the widths (:func:`~sigprop.analysis.compare.fit_inverse_width`);
A as the intercept of N (mean_seeds G_0 / G_0,inf - 1) = A + A_2/N, fitted the same way.
"""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from sigprop.analysis import plots
from sigprop.analysis.plots import latex_escape
from sigprop.figures import nets as figure_nets
from sigprop.ops import Residual

SIM = "finite_width_correction"
CAUSE_TESTS = 3  # _cause's comparisons (own fit vs 0, vs the fresh one, fresh vs 0): the level's share
CAPTION = (
    "Finite-width correction, predicted vs measured. (a) $\\mathrm{E}\\log q_L - "
    "\\log q_L^{(\\infty)}$ against $1/N$: lines, the first-order prediction $a/N$; points, Monte "
    "Carlo (mean of logs over seeds $\\pm$2 standard errors). (b) $N\\,\\mathrm{Var}\\log q_L$ "
    "across seeds against $1/N$: lines, the leading-order prediction $V$; points, Monte Carlo "
    "($\\pm$2 SE of a sample variance). (c) The input gradient of the mean-carrying stream: "
    "$\\log(\\mathrm{E}\\,G_0/G_0^{(\\infty)})$ against $N$: solid, $\\log(1+c/N)$ with the "
    "predicted $c$; dotted, the mean mode's closed form $A$ alone; dashed, with the coefficient "
    "fitted to the Monte Carlo; points, the mean over seeds $\\pm$2 SE (delta method).")


def _slug(label: str) -> str:
    """A macro-safe name for a net's label: its words, capitalised (letters only)."""
    return "".join(w.capitalize() for w in re.findall("[A-Za-z]+", label))


def _mean_mode_fit(widths, g):
    """A from samples g (width, seed) of G_0 / G_0,inf: N (mean g - 1) = A + A_2/N fitted by
    weighted least squares over the widths (SE of each: N sd(g) / sqrt(seeds)). (A, se)."""
    from sigprop.analysis.compare import fit_inverse_width

    N = np.asarray(widths, dtype=float)
    est = N * (g.mean(axis=1) - 1)
    se = N * g.std(axis=1, ddof=1) / math.sqrt(g.shape[1])
    A, se_A, _, _ = fit_inverse_width(N, est, se)
    return float(A), float(se_A)


def summary(data: plots.FigureData, fresh: bool = False) -> list[dict]:
    """Per net: label; predicted a, V, the input gradient's c, and A (None where no mean mode);
    and, with Monte Carlo,
    per width the estimates (d: E log q_L - log q_inf, v: N Var log q_L, g: E G_0 / G_0,inf,
    each with its SE) and the fits (a, V, A with their SEs). Notes what cannot be computed.
    ``fresh``: for a mean mode of a sim's run (its ``streams`` attr: each width its own root
    seed), also A fitted to a Monte Carlo of the same widths, seeds and dtype whose cotangent
    is pulled back through fresh weights (``sampler="independent"``, gradient independence),
    on streams of its own (:func:`~sigprop.state.rng.width_root_seed` with salt 1), so that the
    two fits are independent: ``A_fresh``, ``A_fresh_se``."""
    from sigprop.analysis.compare import fit_inverse_width
    from sigprop.engines.finite_width import (
        coefficients,
        gradient_coefficient,
        mean_mode_coefficient,
    )
    from sigprop.engines.montecarlo import simulate
    from sigprop.state.rng import WIDTH_STREAMS, width_root_seed

    nets, L = figure_nets(data)
    rows = []
    for label, net, inputs in nets:
        th = plots.pick(data.theory, arch=label)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coef = coefficients(net, inputs)[0]
            A = mean_mode_coefficient(net, th)
            c = gradient_coefficient(net, inputs)[0][0]
        for w in caught:
            data.note(f"{label}: {w.message}")
        row = {"label": label, "a": float(coef["log_q"][-1, 0]),
               "V": float(coef["var_log_q"][-1, 0]), "A": None if A is None else float(A[0]),
               "c": float(c.flat[0])}
        if A is not None:  # (the stream's branch scale, which the prose names)
            row["alpha"] = float(next(op.alpha for op in net.walk() if isinstance(op, Residual)))
        mc = plots.pick(data.mc, arch=label) if data.mc is not None else None
        if mc is None or "width" not in mc.dims or int(mc["layer"][-1]) != L:
            rows.append(row)
            continue
        widths = [int(w) for w in mc["width"].values]
        S = mc.sizes["seed"]
        logs = mc["log_q"].sel(input=0).isel(layer=-1).transpose("width", "seed").values
        d = logs.mean(axis=1) - float(th["log_q"].sel(input=0).isel(layer=-1))
        d_se = logs.std(axis=1, ddof=1) / math.sqrt(S)
        N = np.asarray(widths, dtype=float)
        v = N * logs.var(axis=1, ddof=1)
        v_se = v * math.sqrt(2 / (S - 1))  # a sample variance of near-normal logs
        row.update(widths=N, d=d, d_se=d_se, v=v, v_se=v_se, seeds=S)
        if len(widths) >= 2:
            _, _, row["a_fit"], row["a_se"] = fit_inverse_width(N, d, d_se)
            row["V_fit"], row["V_se"], _, _ = fit_inverse_width(N, v, v_se)
        if row["A"] is not None and len(widths) >= 2:
            g0 = math.exp(float(th["log_grad_q"].sel(input=0).isel(layer=0)))
            g = np.exp(mc["log_grad_q"].sel(input=0).isel(layer=0)
                       .transpose("width", "seed").values) / g0
            row.update(g=g.mean(axis=1), g_se=g.std(axis=1, ddof=1) / math.sqrt(S))
            row["A_fit"], row["A_se"] = _mean_mode_fit(N, g)
            if fresh and data.mc.attrs.get("streams") == WIDTH_STREAMS:
                cfg = json.loads(data.mc.attrs["config"])
                dtype = cfg["profiles"][cfg["profile"]]["dtype"]
                root = int(data.mc.attrs["root_seed"])
                row["A_fresh"], row["A_fresh_se"] = _mean_mode_fit(N, np.stack([np.exp(
                    simulate(net, inputs, width=w, seeds=S, backend="numpy", dtype=dtype,
                             sampler="independent", root_seed=width_root_seed(root, w, salt=1))
                    ["log_grad_q"].sel(input=0).isel(layer=0).values) / g0 for w in widths]))
        rows.append(row)
    return rows


def _cause(own: tuple[float, float], fresh: tuple[float, float]) -> str:
    """What the fits (A, SE) with the net's own weights and with fresh backward weights (two
    independent runs) say of the stream's finite-width gap: the coupling of the forward and
    backward weights where the own fit departs from zero and from the fresh one, and the fresh
    one does not depart from zero, each by the bound of :func:`agreement_bound` for these three
    comparisons."""
    from sigprop.figures.claims import agreement_bound

    bound = agreement_bound(CAUSE_TESTS)
    z_own, z_fresh = own[0] / own[1], fresh[0] / fresh[1]
    z_diff = (own[0] - fresh[0]) / math.hypot(own[1], fresh[1])
    if abs(z_own) > bound and abs(z_diff) > bound and abs(z_fresh) <= bound:
        return ("the gap is the correlation between the forward and backward weights, which "
                "gradient independence drops")
    return ("these fits do not single out the correlation between the forward and backward "
            "weights as the gap")


def draw(data: plots.FigureData):
    fig, (ax_a, ax_v, ax_g) = plots.panels(3, layout="constrained")
    rows = summary(data)
    N_min = min((r["widths"].min() for r in rows if "widths" in r), default=64.0)
    x = np.linspace(0, 1 / N_min, 50)
    for r in rows:
        key = r["label"]
        plots.theory_line(ax_a, x, r["a"] * x, key, label=key)
        plots.theory_line(ax_v, x, np.full_like(x, r["V"]), key)
        fit = f", fitted {r['a_fit']:.3g} $\\pm$ {r['a_se']:.2g}" if "a_fit" in r else ""
        fitv = f", fitted {r['V_fit']:.3g} $\\pm$ {r['V_se']:.2g}" if "V_fit" in r else ""
        data.note(f"{key}: slope a of E $\\log q_L$ predicted {r['a']:.3g}{fit}; "
                  f"N Var $\\log q_L$ predicted {r['V']:.3g}{fitv}.")
        if "widths" in r:
            xi = 1 / r["widths"]
            plots.mc_points(ax_a, xi, r["d"], r["d"] - 2 * r["d_se"], r["d"] + 2 * r["d_se"], key)
            plots.mc_points(ax_v, xi, r["v"], r["v"] - 2 * r["v_se"], r["v"] + 2 * r["v_se"], key)
    stream = [r for r in rows if r["A"] is not None]
    for r in stream:
        key = r["label"]
        Ns = np.geomspace(N_min / 2, r["widths"].max() * 2 if "widths" in r else 4096, 60)
        plots.theory_line(ax_g, Ns, np.log1p(r["c"] / Ns), key)
        plots.theory_line(ax_g, Ns, np.log1p(r["A"] / Ns), key, ls=":")
        text = f"{key}: c predicted {r['c']:.3g} (the mean mode's closed form A {r['A']:.3g})"
        if "A_fit" in r:
            plots.theory_line(ax_g, Ns, np.log1p(r["A_fit"] / Ns), key, ls="--")
            lo = np.log(np.clip(r["g"] - 2 * r["g_se"], 1e-300, None))
            plots.mc_points(ax_g, r["widths"], np.log(r["g"]), lo,
                            np.log(r["g"] + 2 * r["g_se"]), key)
            text += f", fitted {r['A_fit']:.3g} $\\pm$ {r['A_se']:.2g} (SE)"
        data.note(text + ".")
    if not stream:
        data.note("No net of this sim is a mean-carrying stream x + alpha phi(W x): panel (c) "
                  "is empty.")
    ax_g.set_xscale("log")
    for ax in (ax_a, ax_g):
        ax.axhline(0.0, color="0.4", lw=0.8)
    ax_v.set_yscale("log")
    ax_v.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks, plain labels
    ax_v.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_v.yaxis.set_minor_formatter(NullFormatter())
    ax_a.set_xlabel("$1/N$")
    ax_v.set_xlabel("$1/N$")
    ax_g.set_xlabel("width $N$")
    ax_a.set_ylabel("E$\\log q_L - \\log q_L^{(\\infty)}$")
    ax_v.set_ylabel("$N\\,$Var$\\log q_L$")
    ax_g.set_ylabel("$\\log($E$\\,G_0 / G_0^{(\\infty)})$")
    for ax, tag in zip((ax_a, ax_v, ax_g), "abc"):
        ax.set_title(f"({tag})", loc="left")
    plots.figure_legend(fig, ax_a, ncol=4)
    plots.mc_note(data)
    plots.params_note(data)
    return fig


def numbers(data: plots.FigureData) -> dict[str, float | int]:
    """The numbers the paper quotes from this figure, by macro name: per net (its label's
    words) the predicted and fitted slope a and N Var V, and the words on every fit against its
    prediction (``FWCFitVerdict``); for the mean-carrying stream c, A, the fit and its SE and
    the words on the fit against c and against A; the Monte Carlo widths and seeds."""
    from sigprop.figures.claims import agreement_bound, agreement_words

    out: dict[str, float | int | str] = {"FWCDepth": int(data.theory["layer"][-1])}
    fits = []  # (where, z) of each fitted a and V against its prediction
    rows = summary(data, fresh=True)
    for r in rows:
        s = _slug(r["label"])
        fits += [(f"{latex_escape(r['label'])}'s {what}", (r[k + "_fit"] - r[k]) / r[k + "_se"])
                 for k, what in (("a", "slope"), ("V", "$N$ Var")) if k + "_fit" in r]
        out.update({f"FWC{s}Slope": r["a"], f"FWC{s}Var": r["V"]})
        for k, name in (("a_fit", "SlopeFit"), ("a_se", "SlopeSE"), ("V_fit", "VarFit"),
                        ("V_se", "VarSE")):
            if k in r:
                out[f"FWC{s}{name}"] = float(r[k])
        if r["A"] is not None and "FWCMeanA" not in out:
            out.update(FWCMeanA=r["A"], FWCMeanC=r["c"], FWCMeanAlpha=r["alpha"])
            if "A_fit" in r:
                out.update(FWCMeanAFit=r["A_fit"], FWCMeanASE=r["A_se"])
                for key, value, target in (("C", r["c"], "the tangent walk's $c$"),
                                           ("A", r["A"], "the closed form's $A$")):
                    out[f"FWCMean{key}Verdict"] = agreement_words(
                        [("this stream", (r["A_fit"] - value) / r["A_se"])], target, "")
            if "A_fresh" in r:
                own, fresh = (r["A_fit"], r["A_se"]), (r["A_fresh"], r["A_fresh_se"])
                out.update(FWCMeanAFresh=r["A_fresh"], FWCMeanAFreshSE=r["A_fresh_se"],
                           FWCMeanFreshVerdict=agreement_words(  # (at _cause's bound: one
                               [("fresh weights", fresh[0] / fresh[1])], "zero", "",  # say)
                               bound=agreement_bound(CAUSE_TESTS)),
                           FWCMeanCause=_cause(own, fresh))
            if "widths" in r:
                out.update(FWCWidthMin=int(r["widths"].min()), FWCWidthMax=int(r["widths"].max()),
                           FWCSeeds=int(r["seeds"]))
    if fits:
        out["FWCFitVerdict"] = agreement_words(fits, "its prediction", "for every net")
    return {**out, **per_layer_variances()}


def per_layer_variances() -> dict[str, float]:
    """N Var log q at the output of one ReLU layer on an input of exact q, from
    :func:`~sigprop.engines.finite_width.coefficients`: after a Dense (``FWReluKappa``,
    E phi^4 / (E phi^2)^2 - 1, Hanin & Nica's per-layer term) and after an RMSNorm of a Dense's
    features (``FWRmsReluKappa``: the norm's scale taken from the same features)."""
    from sigprop import presets
    from sigprop.engines.finite_width import coefficients
    from sigprop.ops import Act, Dense, RMSNorm, Serial
    from sigprop.state.inputs import Inputs

    relu = presets.plain(1, "relu", shape="dense_act")
    normed = Serial(Dense(presets.first_gain("relu")), RMSNorm(), Act("relu"))
    return {name: float(coefficients(net, Inputs(q=1.0))[0]["var_log_q"][-1, 0])
            for name, net in (("FWReluKappa", relu), ("FWRmsReluKappa", normed))}
