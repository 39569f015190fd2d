"""Phase diagram of the per-block gradient factor over (sigma_w^2, alpha), one panel per arch.

The factor is chi = (G_0 / G_L)^(1/L): the geometric mean over blocks of how much the gradient
second moment grows per block going from the output to the input (chi > 1: exploding,
chi < 1: vanishing). The grid is one vectorised ``sp.theory`` call with two sweep dims.
"""

import matplotlib.pyplot as plt
import numpy as np

from sigprop.analysis import plots

SIM = "phase"
EPS_LEVEL = 1e-4  # |log chi| below 10 x LayerNorm's eps (1e-5) is eps, not a phase
CAPTION = (
    "Per-block gradient factor $\\chi = (G_0/G_L)^{1/L}$ over the first branch weight variance "
    "$\\sigma_w^2$ and the branch scale $\\alpha$ (tanh MLP branches), from one vectorised "
    "infinite-width theory call over the grid. Colour: $\\log \\chi$ on one sequential scale "
    "for all panels; white line: the phase boundary $\\chi = 1$ where the panel crosses it. "
    "$\\chi$ is depth-independent only for Post-LN (a stationary per-block factor); without "
    "normalisation $\\log(G_0/G_L)$ grows like $\\sqrt L$ and for Pre-LN like $\\log L$, so "
    "those panels are specific to this $L$.")


def factor(th):
    """log chi = (log G_0 - log G_L) / L for every grid point (input 0)."""
    g = th["log_grad_q"].sel(input=0)
    L = int(th["layer"][-1])
    return (g.isel(layer=0) - g.isel(layer=-1)) / L


def draw(data: plots.FigureData):
    th = data.theory
    labels = plots.arch_labels(th)
    fig, axes = plots.panels(len(labels), layout="constrained")
    logchi = factor(th)
    lo, hi = float(np.nanmin(logchi)), float(np.nanmax(logchi))
    L = int(th["layer"][-1])
    for ax, arch in zip(axes, labels):
        z = plots.pick(logchi, arch=arch).transpose("alpha", "sigma_w1")
        x = z["sigma_w1"].values ** 2
        y = z["alpha"].values
        mesh = ax.pcolormesh(x, y, z.values, cmap="viridis", vmin=lo, vmax=hi, shading="auto")
        zmin, zmax = float(np.nanmin(z.values)), float(np.nanmax(z.values))
        if -EPS_LEVEL < zmin < 0:  # chi < 1 only by LayerNorm's eps: no phase boundary
            data.note(f"{arch}: $\\chi \\ge 1$ on the grid up to LayerNorm's eps "
                      f"(smallest $\\log\\chi$ = {zmin:.1e}, above $-${EPS_LEVEL:g}); "
                      "no boundary drawn.")
        elif zmin < 0 < zmax:
            ax.contour(x, y, z.values, levels=[0.0], colors="white", linewidths=1.2)
        else:
            data.note(f"{arch}: $\\chi$ {'>' if zmin >= 0 else '<'} 1 on the whole grid "
                      f"($\\chi$ from {np.exp(zmin):.4g} to {np.exp(zmax):.4g}), no boundary.")
        ax.set_yscale("log")
        ax.set_xlabel("$\\sigma_w^2$ (first Dense)")
        ax.set_title(f"{arch}, L = {L}", fontsize=plots.RC["axes.titlesize"])
    axes[0].set_ylabel("branch scale $\\alpha$")
    with plt.rc_context(plots.RC):
        fig.colorbar(mesh, ax=axes, label="$\\log \\chi$", shrink=0.9)
    sw, al = th["sigma_w1"].values, th["alpha"].values
    data.note(f"Grid: {len(sw)} values of $\\sigma_w$ from {sw.min():.3g} to {sw.max():.3g} "
              f"and {len(al)} of $\\alpha$ from {al.min():.3g} to {al.max():.3g} (log-spaced); "
              f"L = {L}; LayerNorm eps = $10^{{-5}}$; one input, $q_0$ = "
              f"{float(th['q'].isel(layer=0).max()):.3g}.")
    return fig
