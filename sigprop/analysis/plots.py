"""One figure style for the paper: colour-blind-safe colours, theory lines, Monte Carlo points.

Theory is drawn as lines, Monte Carlo as points with a band of +-2 standard errors (the
estimator of :mod:`sigprop.analysis.compare`, so a heavy-tailed quantity is summarised by its
log-moments, never by a mean dominated by one seed). Figures are written as PDF (for the
paper) and PNG (for a quick look) with a caption file beside them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

if not os.environ.get("MPLBACKEND"):  # Jupyter names its inline backend there; else no GUI
    matplotlib.use("agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from sigprop.analysis.compare import HEAVY_LOG_SD, choose, estimate, spread_band

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PANEL = (3.4, 2.7)  # inches per panel (at most TEXT_WIDTH / columns wide)
TEXT_WIDTH = 6.5  # inches: under the paper's \linewidth (6.69 in), so figures print at scale >= 1
RC = {  # every text at >= 8 pt once the figure is printed at TEXT_WIDTH
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "lines.linewidth": 1.4, "lines.markersize": 3.5,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE), "savefig.bbox": "tight",
    "pdf.fonttype": 42, "figure.dpi": 150,
}
BAND_SE = 2.0  # Monte Carlo bands are estimate +- BAND_SE standard errors

# One colour (and line style) per net, the same in every figure. Nets whose theory curves
# coincide (Pre-LN / Peri-LN / Pre-RMSNorm: q_l = q_0 + l rho; Post-LN / DeepNorm: q = 1) get
# different line styles, so the one drawn on top does not hide the other.
NET_STYLES = {
    "plain": ("#000000", "-"),
    "none": ("#E69F00", "-"),
    "none, alpha=1/sqrt(L)": ("#999933", "-"),
    "Pre-LN": ("#0072B2", "-"),
    "Post-LN": ("#D55E00", "-"),
    "Peri-LN": ("#009E73", (0, (5, 2))),
    "DeepNorm": ("#CC79A7", (0, (5, 2))),
    "Pre-RMSNorm": ("#56B4E9", (0, (5, 2))),
    "Pre-BN": ("#882255", "-"),
    "Post-BN": ("#44AA99", "-"),
}
VARIANT_LS = (0, (1, 1.5))  # dotted: a variant of a net ("Pre-LN, Dense-ReLU branch")
NET_ALIASES = {"none, alpha=1": "none", "plain (no skip)": "plain", "plain ReLU": "plain",
               "Pre-LN, MLP branch": "Pre-LN"}


@dataclass
class FigureData:
    """What a figure module draws from: theory, Monte Carlo (or None), generated equations."""

    theory: xr.Dataset
    mc: xr.Dataset | None = None
    generated_dir: Path = Path("paper/generated")
    notes: list[str] = field(default_factory=list)

    def generated(self, name: str) -> dict | None:
        """``paper/generated/<name>.json`` written by the derivations, or None if absent."""
        path = Path(self.generated_dir) / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def note(self, text: str) -> None:
        """Add a sentence to the caption (e.g. what could not be drawn and why)."""
        if text not in self.notes:
            self.notes.append(text)


def style(key) -> dict:
    """Colour and line style of a net (its label; :data:`NET_STYLES`), or of the ``key``-th
    member of a family that is not a net (widths, batch sizes) when ``key`` is an int.

    A label ``"<net>, <variant>"`` takes its net's colour, dotted; an unknown label a palette
    colour fixed by its text (the same in every figure)."""
    if not isinstance(key, str):
        return {"color": PALETTE[int(key) % len(PALETTE)], "ls": "-"}
    key = NET_ALIASES.get(key, key)
    if key in NET_STYLES:
        c, ls = NET_STYLES[key]
        return {"color": c, "ls": ls}
    net = key.split(",")[0].strip()
    if net in NET_STYLES or net in NET_ALIASES:
        return {"color": style(net)["color"], "ls": VARIANT_LS}
    return {"color": PALETTE[sum(map(ord, key)) % len(PALETTE)], "ls": VARIANT_LS}


def is_net(label) -> bool:
    """Whether ``label`` names a net of :data:`NET_STYLES` (or an alias, or a variant
    ``"<net>, <variant>"``): drawn in that net's style in every figure and by ``sp.plot``."""
    if not isinstance(label, str):
        return False
    key = NET_ALIASES.get(label, label)
    net = key.split(",")[0].strip()
    return key in NET_STYLES or NET_ALIASES.get(net, net) in NET_STYLES


def color(key) -> str:
    """The colour of :func:`style` (a net's label, or an index into the palette)."""
    return style(key)["color"]


def marker(key) -> str:
    if isinstance(key, str):
        names = list(NET_STYLES)
        net = NET_ALIASES.get(key, key).split(",")[0].strip()
        net = NET_ALIASES.get(net, net)
        key = names.index(net) if net in names else sum(map(ord, key))
    return MARKERS[int(key) % len(MARKERS)]


def panels(n: int, nrows: int = 1, layout=None, **kw):
    """A styled figure with ``n`` panels in ``nrows`` rows (axes returned flat); ``kw`` go to
    ``Figure.subplots`` (``sharex``, ``gridspec_kw``, ...), ``rc`` overrides :data:`RC`."""
    ncols = -(-n // nrows)
    rc = {**RC, **kw.pop("rc", {})}
    # Created outside rc_context: a backend chosen on the first figure (Jupyter's inline one
    # turns interactive mode on) must not be undone when the context restores rcParams.
    width = min(PANEL[0] * ncols, TEXT_WIDTH)
    fig = plt.figure(figsize=(width, PANEL[1] * nrows), dpi=rc["figure.dpi"], layout=layout)
    with plt.rc_context(rc):
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def theory_line(ax, x, y, key, label=None, **kw):
    """Infinite-width theory: a line in the colour and style of ``key`` (:func:`style`)."""
    kw = {**style(key), **kw}
    with plt.rc_context(RC):
        return ax.plot(np.asarray(x), np.asarray(y), label=label, **kw)


def mc_summary(x: xr.DataArray, name: str, estimator: str = "auto"):
    """(centre, low, high, estimator) of Monte Carlo samples on the variable's own scale.

    The estimator is that of :func:`sigprop.analysis.compare.choose`: an estimate of the mean
    E[X] (the sample mean, or for heavy-tailed X its log-normal estimate), so the points are
    compared with the theory's mean, never a median with a mean; ``spread``: the variance
    across seeds, for a spread of the theory, and the variances whose z is within +-BAND_SE
    (:func:`~sigprop.analysis.compare.spread_band`: the theory is inside it where sp.compare's
    |z| <= 2).
    """
    if estimator == "spread":
        return (*spread_band(x, BAND_SE), estimator)
    est_name = choose(x, name, estimator)
    est, se = estimate(x, est_name)
    lo, hi = est - BAND_SE * se, est + BAND_SE * se
    if est_name != "mean":  # log-scale estimators: back to the variable's scale
        est, lo, hi = np.exp(est), np.exp(lo), np.exp(hi)
    return est, lo, hi, est_name


def mc_points(ax, x, centre, lo, hi, key, label=None) -> bool:
    """Monte Carlo: markers with a shaded band of +-2 standard errors.

    Non-finite values are left out; returns False if some were infinite (an overflow).
    """
    x = np.asarray(x)
    centre, lo, hi = (np.asarray(v, dtype=float) for v in (centre, lo, hi))
    finite = np.isfinite(centre)
    lo, hi = np.where(np.isfinite(lo), lo, np.nan), np.where(np.isfinite(hi), hi, np.nan)
    with plt.rc_context(RC):
        ax.fill_between(x, lo, hi, where=finite, color=color(key), alpha=0.25, lw=0)
        ax.plot(x[finite], centre[finite], ls="none", marker=marker(key), color=color(key),
                mfc="white", mew=1.0, label=label)
    return not bool(np.isinf(centre).any())


def fit_log_ylim(ax, margin: float = 3.0) -> None:
    """Log y-axis limits from the curves and markers only (bands and reference lines, those
    with ``gid="reference"``, may extend beyond and are clipped)."""
    ys = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()
          if line.get_gid() != "reference"]
    y = np.concatenate(ys) if ys else np.array([])
    y = y[np.isfinite(y) & (y > 0)]
    ax.set_yscale("log")
    if y.size:
        ax.set_ylim(y.min() / margin, y.max() * margin)


def sample_layers(layers, n: int = 16, linear: bool = False) -> np.ndarray:
    """About ``n`` layers for Monte Carlo markers: evenly spaced on a log scale (layers >= 1)
    or, with ``linear``, evenly spaced from layer 0 (always keeping the last)."""
    layers = np.asarray(layers)
    if linear:
        step = max(1, -(-len(layers) // n))
        return np.unique(np.append(layers[::step], layers[-1]))
    layers = layers[layers >= 1]
    if len(layers) <= n:
        return layers
    want = np.unique(np.round(np.geomspace(layers[0], layers[-1], n)).astype(int))
    return layers[np.isin(layers, want)]


def legend(ax, **kw):
    with plt.rc_context(RC):
        ax.legend(**kw)


def figure_legend(fig, ax, ncol: int = 3) -> None:
    """One legend for the whole figure, above the panels (taken from ``ax``)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        with plt.rc_context(RC):
            fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.98),
                       ncol=min(ncol, len(labels)))


def save(fig, stem: str, out_dir, caption: str) -> list[Path]:
    """Write ``<stem>.pdf``, ``<stem>.png`` and ``<stem>.caption.tex``; close the figure."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.pdf", out / f"{stem}.png", out / f"{stem}.caption.tex"]
    with plt.rc_context(RC):
        fig.savefig(paths[0])
        fig.savefig(paths[1], dpi=150)
    plt.close(fig)
    paths[2].write_text(latex_escape(caption) + "\n")
    return paths


def latex_escape(text: str) -> str:
    """Escape text for LaTeX, keeping $...$ math spans as written."""
    parts = text.split("$")
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
    for i in range(0, len(parts), 2):
        parts[i] = "".join(table.get(ch, ch) for ch in parts[i])
    return "$".join(parts)


def arch_labels(ds: xr.Dataset) -> list[str]:
    """The ``arch`` coordinate as strings (a single unnamed case gives [''])."""
    return [str(a) for a in ds["arch"].values] if "arch" in ds.dims else [""]


def pick(ds: xr.Dataset | None, **sel):
    """``ds.sel(**sel)`` restricted to the dims present; None stays None, missing labels -> None."""
    if ds is None:
        return None
    sel = {k: v for k, v in sel.items() if k in ds.dims}
    try:
        return ds.sel(sel)
    except KeyError:
        return None


def mc_note(data: FigureData, what: str = "Monte Carlo") -> None:
    """Say in the caption when a figure has no Monte Carlo points."""
    if data.mc is None:
        data.note(f"No {what} results were available (sigprop.engines.montecarlo missing or the sim "
                  "ran theory only): theory lines only.")


def curves(ax, data: FigureData, var: str, *, select: dict | None = None,
           note_missing: bool = True, **plot_kw) -> None:
    """One panel of a paper figure drawn by :func:`sigprop.plot` (theory lines, Monte Carlo
    points of the widest width, one hue per arch, no legend or title: the figure draws one
    legend for all panels); ``select`` restricts both datasets first (``{"arch": [...]}``,
    ``{"batch": [4, 8]}``; labels a dataset lacks are skipped). What could not be drawn (Monte
    Carlo that overflowed; with ``note_missing``, an arch without theory) goes to the caption."""
    import warnings

    from sigprop.analysis.plot import plot

    th, mc = (_restrict(ds, select or {}) for ds in (data.theory, data.mc))
    hue = "arch" if "arch" in th.dims else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot(th, mc, var=var, hue=hue, ax=ax, legend=False, titles=False, **plot_kw)
    for w in caught:
        if "overflowed" in str(w.message):
            data.note(str(w.message).split(":")[0] + ": not drawn.")
        elif str(w.message).startswith("Monte Carlo:"):  # (lost points or seeds: plot's words)
            data.note(latex_escape(str(w.message).removeprefix("Monte Carlo: ")) + ".")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for arch in arch_labels(th) if hue and note_missing else []:
        if not bool(np.isfinite(pick(th, arch=arch)[var]).any()):
            data.note(f"{arch}: no infinite-width theory (see the sim's unsupported cases).")
    mc_note(data)
    if data.mc is not None:
        data.note(f"Monte Carlo points estimate the mean (as the theory does): the sample mean, "
                  "or, for a squared norm $X$ whose log spreads across seeds by an sd above "
                  f"{HEAVY_LOG_SD:g} at some point of its curve (or whose tail is heavy), the "
                  "log-normal estimate $\\exp(\\bar y + s_y^2/2)$ from $y = \\log X$ (Cox); "
                  f"bands of $\\pm${BAND_SE:g} standard errors (on the log scale for the "
                  "latter). The appendix on theory against Monte Carlo tests them and gives "
                  "the smallest error their seeds resolve.")


def _restrict(ds: xr.Dataset | None, select: dict) -> xr.Dataset | None:
    """``ds`` at the labels of ``select`` it has (None when it has none of a dim's labels)."""
    if ds is None:
        return None
    for dim, labels in select.items():
        if dim in ds.dims:
            keep = [v for v in labels if v in ds[dim].values]
            if not keep:
                return None
            ds = ds.sel({dim: keep})
    return ds


def bounded_archs(ds: xr.Dataset, var: str, bound: float = 1e3) -> list[str]:
    """Labels whose theory ``var`` stays within [1/bound, bound] (for a zoomed panel)."""
    keep = []
    for arch in arch_labels(ds):
        x = np.asarray(pick(ds, arch=arch)[var], dtype=float)
        x = x[np.isfinite(x)]
        if x.size and x.max() <= bound and x.min() >= 1 / bound:
            keep.append(arch)
    return keep


def params_note(data: FigureData) -> None:
    """Add the run's parameters to the caption, read from the datasets (never typed): depth L,
    each net's branch scale alpha at that depth, the inputs' q_0 and c_0, and the Monte Carlo
    width(s), seeds and depth."""
    from sigprop import presets

    th = data.theory
    cfg = json.loads(th.attrs.get("config", "{}"))
    L = int(th["layer"][-1])
    parts = [f"L = {L}"]
    alphas = {}
    for arch in cfg.get("arch", []):
        if arch.get("preset") in ("plain", "deepnorm"):
            continue
        a = arch.get("alpha", "1")
        alphas.setdefault(f"{presets.branch_scale(a, L):.3g}" if not isinstance(a, (list, dict))
                          else "swept", []).append(arch.get("label", "?"))
    if len(alphas) == 1:
        parts.append(f"alpha = {next(iter(alphas))}")
    elif alphas:
        parts.append("alpha = " + ", ".join(f"{v} ({', '.join(k)})" for v, k in alphas.items()))
    for arch in cfg.get("arch", []):
        if arch.get("preset") == "deepnorm":
            s = arch.get("sublayers", 2)
            parts.append(f"{arch.get('label')}: $x \\mapsto \\mathrm{{LN}}(a x + F(x))$, "
                         f"a = $(2L/{s})^{{1/4}}$ = {(2 * L / s) ** 0.25:.3g}, branch gain "
                         f"b = $(8L/{s})^{{-1/4}}$ = {(8 * L / s) ** -0.25:.3g}")
    inp = cfg.get("inputs", {})
    if isinstance(inp.get("q"), list):
        parts.append(f"$q_0$ = {inp['q'][0]:g} (the first of the inputs {inp['q']}, drawn)")
    elif "q" in inp:
        parts.append(f"$q_0$ = {inp['q']:g}")
    if inp.get("n", 2) != 1 and "corr" in inp:
        parts.append(f"$c_0$ = {inp['corr']}")
    if data.mc is not None:
        widths = [int(w) for w in data.mc["width"].values] if "width" in data.mc.dims else []
        mc_depth = int(data.mc["layer"][-1])
        parts.append("Monte Carlo: " + (f"N = {', '.join(map(str, widths))}, " if widths else "")
                     + f"{data.mc.sizes.get('seed', 0)} seeds"
                     + (f", first {mc_depth} blocks" if mc_depth < L else ""))
    data.note("Parameters: " + "; ".join(parts) + ".")


def coinciding(ds: xr.Dataset, var: str, archs, rtol: float = 0.01) -> list[tuple[str, str]]:
    """Pairs of ``archs`` whose theory ``var`` (input 0) agrees within ``rtol`` at every layer,
    the solid-line one first (the other is drawn dashed over it by :data:`NET_STYLES`)."""
    curves = {a: np.asarray(pick(ds, arch=a)[var].sel(input=0), dtype=float) for a in archs}
    out = []
    for i, a in enumerate(archs):
        for b in archs[i + 1:]:
            x, y = curves[a], curves[b]
            if np.all(np.isfinite(x) & np.isfinite(y)) and np.allclose(x, y, rtol=rtol, atol=0):
                out.append((a, b) if style(b)["ls"] != "-" else (b, a))
    return out
