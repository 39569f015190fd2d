"""Variance of the residual stream vs depth, one curve per normalisation placement."""

from sigprop.analysis import plots

SIM = "placement"
VAR, LABEL = "var", "variance of the stream, var$_\\ell$"
CAPTION = (
    "Variance of the residual stream vs depth $\\ell$ for each placement of LayerNorm (ReLU MLP "
    "branches; 'none' is the unnormalised ResNet). Lines: infinite-width theory; points: "
    "Monte Carlo.")


def draw(data: plots.FigureData):
    return two_scales(data, VAR, LABEL)


def two_scales(data: plots.FigureData, var: str, label: str):
    """``var`` vs layer per arch, drawn by ``sp.plot`` on log y: left, the nets whose theory
    stays within three decades; right, in its own narrower panel, the ones that do not (the
    unnormalised ResNet at alpha = 1: 2^l)."""
    th = data.theory
    bounded = plots.bounded_archs(th, var)
    wild = [a for a in plots.arch_labels(th) if a not in bounded]
    fig, axes = plots.panels(2 if wild else 1, gridspec_kw={"width_ratios": [2.2, 1]} if wild
                             else {})
    for ax, archs in zip(axes, (bounded, wild)):
        plots.curves(ax, data, var, select={"arch": archs}, yscale="log", ylabel=label)
    if wild:
        no_mc = [a for a in wild if data.mc is None or a not in data.mc["arch"].values]
        data.note(f"Right panel, on its own scale: {', '.join(wild)}"
                  + (f" (theory only: {', '.join(no_mc)} is not simulated, its q overflows "
                     "float32)" if no_mc else "") + ".")
    handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
    labels = [t for ax in axes for t in ax.get_legend_handles_labels()[1]]
    if handles:
        import matplotlib.pyplot as plt

        with plt.rc_context(plots.RC):
            fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.98), ncol=3)
    plots.params_note(data)
    pairs = plots.coinciding(th, var, bounded)
    if pairs:
        data.note("Curves that coincide (theory within 1 % at every layer): "
                  + "; ".join(f"{a} and {b}" for a, b in pairs)
                  + "; the second of each pair is drawn dashed over the first.")
    return fig
