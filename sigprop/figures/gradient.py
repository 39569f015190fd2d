"""Gradient second moment vs layer, one curve per normalisation placement."""

from sigprop.analysis import plots
from sigprop.figures.variance import two_scales

SIM = "placement"
CAPTION = (
    "Gradient second moment $G_\\ell = \\|\\delta_\\ell\\|^2 / N$ vs layer for each LayerNorm "
    "placement, with a unit-variance cotangent drawn independently of the net at the output "
    "layer. Lines: "
    "infinite-width theory; points: Monte Carlo.")


def draw(data: plots.FigureData):
    return two_scales(data, "grad_q", "gradient second moment $G_\\ell$")
