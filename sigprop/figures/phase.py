"""Phase diagram of the per-block gradient factor over (sigma_w^2, alpha), one panel per arch.

The factor is chi = (G_0 / G_L)^(1/L): the geometric mean over blocks of how much the gradient
second moment grows per block going from the output to the input (chi > 1: exploding,
chi < 1: vanishing). The grid is one vectorised ``sp.theory`` call with two sweep dims.
"""

import matplotlib.pyplot as plt
import numpy as np

from sigprop.analysis import plots

SIM = "phase"
CAPTION = (
    "Per-block gradient factor $\\chi = (G_0/G_L)^{1/L}$ over the first branch weight variance "
    "$\\sigma_w^2$ and the branch scale $\\alpha$ (tanh MLP branches), from one vectorised "
    "infinite-width theory call over the grid. Colour: $\\log \\chi$ (red: the gradient grows "
    "towards the input, blue: it shrinks); black line: $\\chi = 1$.")


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
    lim = float(np.nanmax(np.abs(logchi))) or 1.0
    for ax, arch in zip(axes, labels):
        z = plots.pick(logchi, arch=arch).transpose("alpha", "sigma_w1")
        x = z["sigma_w1"].values ** 2
        y = z["alpha"].values
        mesh = ax.pcolormesh(x, y, z.values, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="auto")
        if np.nanmin(z.values) < 0 < np.nanmax(z.values):
            ax.contour(x, y, z.values, levels=[0.0], colors="black", linewidths=1.0)
        ax.set_yscale("log")
        ax.set_xlabel("$\\sigma_w^2$ (first Dense of the branch)")
        ax.set_title(f"{arch}, L = {int(th['layer'][-1])}", fontsize=9)
    axes[0].set_ylabel("branch scale $\\alpha$")
    with plt.rc_context(plots.RC):
        fig.colorbar(mesh, ax=axes, label="$\\log \\chi$", shrink=0.9)
    return fig
