"""LayerNorm vs RMSNorm vs BatchNorm across batch sizes B (B = number of inputs)."""

import numpy as np

from sigprop.analysis import plots
from sigprop.data import unsupported_of

SIM = "norms"
CAPTION = (
    "LayerNorm, RMSNorm and BatchNorm across batch sizes $B$ (Gaussian inputs, pairwise cosine "
    "0.5, ReLU MLP branches, and the pre-activation branch Dense(ReLU(BN x)) of ResNet v2): "
    "correlation between two inputs (left) and gradient second moment "
    "at the input (right) after $L$ blocks. LayerNorm and RMSNorm act on each input alone, so "
    "their curves cannot depend on $B$; BatchNorm couples the inputs of a batch. Lines: "
    "infinite-width theory; points: Monte Carlo.")

PANELS = (
    ("corr", {"input": 0, "input_b": 1}, -1, "correlation $c_L$ of two inputs"),
    ("grad_q", {"input": 0}, 0, "input gradient $G_0$"),
)


def draw(data: plots.FigureData):
    fig, axes = plots.panels(len(PANELS))
    th = data.theory
    for ax, (var, sel, layer, label) in zip(axes, PANELS):
        for i, arch in enumerate(plots.arch_labels(th)):
            t = plots.pick(th, arch=arch)[var].sel(sel).isel(layer=layer)
            if bool(np.isfinite(t).any()):
                plots.theory_line(ax, t["batch"], t, i, label=arch, marker=".")
            mc = _mc(data, arch)
            if mc is None:
                continue
            m = mc[var].sel(sel).isel(layer=layer).dropna("batch", how="all")
            if m.sizes["batch"] == 0:
                continue
            centre, lo, hi, used = plots.mc_summary(m, var)
            if used == "median":
                data.note(plots.MEDIAN_NOTE.format(what=f"{arch}, {var}"))
            drawn = plots.mc_points(ax, m["batch"], centre, lo, hi, i, label=None if bool(
                np.isfinite(t).any()) else f"{arch} (MC only)")
            if not drawn:
                bad = [int(b) for b, c in zip(m["batch"].values, np.asarray(centre))
                       if not np.isfinite(c)]
                data.note(f"{arch}: the Monte Carlo {var} overflowed at B = {bad} (not drawn).")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size $B$")
        ax.set_ylabel(label)
    plots.fit_log_ylim(axes[1])
    plots.figure_legend(fig, axes[0])
    missing: dict[str, list] = {}
    for case, why in unsupported_of(th).items():
        arch, _, b = case.partition(" (B=")
        missing.setdefault(arch, [why, []])[1].append(b.rstrip(")"))
    for arch, (why, batches) in missing.items():
        data.note(f"No infinite-width theory for {arch} at B = {', '.join(batches)}: "
                  f"{_short(why)} Shown as Monte Carlo only.")
    plots.mc_note(data)
    return fig


def _mc(data, arch):
    if data.mc is None or arch not in data.mc["arch"].values:
        return None
    mc = data.mc.sel(arch=arch)
    return mc.isel(width=-1) if "width" in mc.dims else mc


def _short(why: str) -> str:
    """The reason of an UnsupportedComposition without its op path."""
    return why.split(": ", 1)[-1].split(";")[0].rstrip(".") + "."
