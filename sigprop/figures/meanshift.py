"""Signal-propagation plot: squared feature mean, variance and branch variance per block; the
theory at the Monte Carlo's width to first order in 1/N (:func:`sigprop.figures.at_width`), so
that the mean's finite-width random walk is a line too."""

import dataclasses

from sigprop.analysis import plots
from sigprop.figures import at_width

SIM = "meanshift"
CAPTION = (
    "Signal-propagation plot per block: squared feature mean $\\mu_\\ell^2$ of the stream "
    "(left), its variance (middle) and the second moment of the residual branch output (right), "
    "first input. A branch that ends in a ReLU adds a positive mean in every block (mean shift). "
    "One that ends in a zero-mean Dense adds none at infinite width; at width $N$ the feature mean "
    "walks, $\\mathrm{E}\\,\\mu_\\ell^2 \\approx \\ell\\, q_{\\rm branch}/N$. Lines: the theory "
    "at the Monte Carlo's width to first order in $1/N$ ($\\mathrm{E}\\,\\mu^2=\\mu_\\infty^2+"
    "2\\mu_\\infty(\\mathrm{E}\\,\\mu-\\mu_\\infty)+\\mathrm{Var}\\,\\mu$; infinite width where "
    "there is no Monte Carlo); points: Monte Carlo.")

QUANTITIES = (  # (variable, transform, y label, y scale: mu^2 is 0 at infinite width, so symlog)
    ("mean", lambda m: m**2, "squared feature mean $\\mu_\\ell^2$",
     {"value": "symlog", "linthresh": 1e-3}),
    ("var", None, "variance var$_\\ell$", "log"),
    ("branch_q", None, "branch second moment", "log"),
)


def draw(data: plots.FigureData):
    if data.mc is not None and "width" in data.mc.dims:
        data = dataclasses.replace(data, theory=at_width(data, int(data.mc["width"].max())))
    fig, axes = plots.panels(len(QUANTITIES), layout="constrained")
    for ax, (var, transform, label, yscale) in zip(axes, QUANTITIES):
        plots.curves(ax, data, var, transform=transform, yscale=yscale, ylabel=label,
                     xlabel="block $\\ell$")
    plots.figure_legend(fig, axes[0])
    plots.params_note(data)
    return fig
