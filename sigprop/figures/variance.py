"""Variance of the residual stream vs depth, one curve per normalisation placement."""

from sigprop.analysis import plots

SIM = "placement"
VAR, LABEL = "var", "variance of the stream, var$_\\ell$"
CAPTION = (
    "Variance of the residual stream vs depth $\\ell$ for each placement of LayerNorm (ReLU MLP "
    "branches; 'none' is the unnormalised ResNet), all placements (left) and those that stay "
    "within three decades (right). Lines: infinite-width theory; points: Monte "
    "Carlo.")


def draw(data: plots.FigureData):
    return two_scales(data, VAR, LABEL)


def two_scales(data: plots.FigureData, var: str, label: str):
    """Left: every arch on a log scale; right: the bounded ones on a linear scale."""
    fig, (ax_all, ax_zoom) = plots.panels(2)
    depth = int(data.theory["layer"][-1])
    plots.layer_curves(ax_all, data, var, log_x=depth >= 100)
    plots.layer_curves(ax_zoom, data, var, log_x=depth >= 100,
                       archs=plots.bounded_archs(data.theory, var))
    for ax in (ax_all, ax_zoom):
        plots.fit_log_ylim(ax)
        ax.set_ylabel(label)
        plots.depth_axis(ax, depth)
    plots.figure_legend(fig, ax_all)
    return fig
