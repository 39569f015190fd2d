"""Cosine similarity of two inputs vs depth, and 1 - corr on log axes with derived asymptotes.

Asymptotes come from the derivations (``paper/generated/*.json`` of :mod:`sigprop.symbolic`):
every equation labelled ``<preset>_law`` whose left side is ``1 - c_l`` gives the large-depth
law of that preset as an expression in ``l`` and the branch parameters ``alpha``, ``sigma_1``,
``sigma_2`` (ReLU MLP branches without biases, as derived), evaluated at each arch's values.
Without such a file the lines are omitted and the caption says so. The laws are rebuilt from
their stored ``srepr`` by :func:`sigprop.symbolic.derivation.expr_from_srepr`, which runs no
code from the file (``sympy.sympify`` would evaluate it).
"""

import json
from pathlib import Path

import numpy as np
import sympy

from sigprop import presets
from sigprop.analysis import plots
from sigprop.errors import ConfigError
from sigprop.symbolic.derivation import expr_from_srepr

SIM = "correlation"
CAPTION = (
    "Cosine similarity $c_\\ell$ of two inputs (left) and $1 - c_\\ell$ on log axes (right) vs "
    "depth. Lines: infinite-width theory; points: Monte Carlo.")


def asymptotes(generated_dir) -> dict[str, sympy.Expr]:
    """{preset: law of 1 - c_l} from the generated derivation records (a stored expression
    that is not a plain sympy srepr is a ConfigError naming its file)."""
    laws = {}
    for path in sorted(Path(generated_dir).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        for eq in record.get("equations", []) if isinstance(record, dict) else []:
            if not isinstance(eq, dict):
                continue
            label, lhs = eq.get("label", ""), (eq.get("lhs") or {}).get("str", "")
            if isinstance(label, str) and label.endswith("_law") and \
                    str(lhs).replace(" ", "") == "1-c_l":
                try:
                    laws[label.removesuffix("_law")] = expr_from_srepr(eq["rhs"]["srepr"])
                except (ConfigError, KeyError, TypeError) as e:
                    raise ConfigError(f"{path}: equation {label!r} rhs", "srepr",
                                      f"a sympy srepr of whitelisted constructors ({e})") from None
    return laws


def arch_values(arch: dict, depth: int) -> dict | None:
    """Values of the laws' symbols for one arch, or None where the derived law does not apply."""
    if arch.get("act", "relu") != "relu" or arch.get("shape", "mlp") != "mlp" or \
            arch.get("sigma_b") or arch.get("ratio", 1) != 1:
        return None
    return {"alpha": presets.branch_scale(arch.get("alpha", "1"), depth),
            "sigma_1": arch.get("sigma_w1") or 2**0.5, "sigma_2": arch.get("sigma_w2", 1.0)}


def draw(data: plots.FigureData):
    fig, (ax_c, ax_d) = plots.panels(2)
    depth = int(data.theory["layer"][-1])
    pair = {"input": 0, "input_b": 1}
    plots.layer_curves(ax_c, data, "corr", sel=pair, log_x=depth >= 100)
    plots.layer_curves(ax_d, data, "corr", sel=pair, transform=lambda c: 1 - c, log_x=True)
    ax_c.set_ylabel("correlation $c_\\ell$")
    ax_d.set_ylabel("$1 - c_\\ell$")
    plots.depth_axis(ax_c, depth)
    plots.depth_axis(ax_d, max(depth, 100))
    if _draw_asymptotes(ax_d, data, depth):
        data.note("Dashed: the derived large-depth laws of $1 - c_\\ell$ (paper/generated), "
                  "evaluated at each architecture's parameters; Pre-LN approaches its law only "
                  "logarithmically, and a ResNet with alpha = $1/\\sqrt{L}$ only for "
                  "$\\ell \\gg 1/\\alpha^2 = L$, beyond the net (its line lies off scale).")
    else:
        data.note("No derived asymptote was available (no '<preset>_law' equation for "
                  "$1 - c_\\ell$ in paper/generated/*.json): the asymptote lines are omitted.")
    plots.fit_log_ylim(ax_d)
    plots.figure_legend(fig, ax_c)
    return fig


def _draw_asymptotes(ax, data, depth) -> bool:
    laws = asymptotes(data.generated_dir)
    archs = json.loads(data.theory.attrs.get("config", "{}")).get("arch", [])
    layers = np.unique(np.geomspace(max(depth // 100, 2), depth, 60).astype(int)).astype(float)
    drawn = False
    for i, arch in enumerate(archs):
        values = arch_values(arch, depth)
        if arch["preset"] not in laws or values is None:
            continue
        expr = laws[arch["preset"]]
        expr = expr.subs({s: values[s.name] for s in expr.free_symbols if s.name in values})
        if any(s.name != "l" for s in expr.free_symbols):  # a law in other parameters
            continue
        f = sympy.lambdify([s for s in expr.free_symbols] or [sympy.Symbol("l")], expr, "numpy")
        y = np.broadcast_to(np.asarray(f(layers), dtype=float), layers.shape)
        plots.theory_line(ax, layers, y, i, ls="--", lw=1.0)
        drawn = True
    return drawn
