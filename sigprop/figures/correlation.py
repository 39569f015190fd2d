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
from sympy.printing.latex import LatexPrinter

from sigprop import presets
from sigprop.analysis import plots
from sigprop.errors import ConfigError
from sigprop.symbolic.derivation import expr_from_srepr

SIM = "correlation"
CAPTION = (
    "Cosine similarity $c_\\ell$ of two inputs (left) and $1 - c_\\ell$ on log axes (right) vs "
    "depth. Lines: infinite-width theory; points: Monte Carlo.")


def asymptotes(generated_dir, suffix: str = "_law") -> dict[str, sympy.Expr]:
    """{preset: law of 1 - c_l} from the generated derivation records (equations labelled
    ``<preset><suffix>``; a stored expression that is not a plain sympy srepr is a ConfigError
    naming its file)."""
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
            if isinstance(label, str) and label.endswith(suffix) and \
                    str(lhs).replace(" ", "") == "1-c_l":
                try:
                    laws[label.removesuffix(suffix)] = expr_from_srepr(eq["rhs"]["srepr"])
                except (ConfigError, KeyError, TypeError) as e:
                    raise ConfigError(f"{path}: equation {label!r} rhs", "srepr",
                                      f"a sympy srepr of whitelisted constructors ({e})") from None
    return laws


def arch_values(arch: dict, depth: int, q0: float = 1.0, c0: float = 0.5) -> dict | None:
    """Values of the laws' symbols for one arch (its branch parameters, the LN gain 1 and the
    inputs' q_0, c_0), or None where the derived law does not apply."""
    if arch.get("act", "relu") != "relu" or arch.get("shape", "mlp") != "mlp" or \
            arch.get("sigma_b") or arch.get("ratio", 1) != 1:
        return None
    return {"alpha": presets.branch_scale(arch.get("alpha", "1"), depth),
            "sigma_1": arch.get("sigma_w1") or 2**0.5, "sigma_2": arch.get("sigma_w2", 1.0),
            "gain": 1.0, "q_0": q0, "c_0": c0}


def draw(data: plots.FigureData):
    fig, (ax_c, ax_d) = plots.panels(2)
    depth = int(data.theory["layer"][-1])
    pair = {"input": 0, "input_b": 1}
    plots.curves(ax_c, data, "corr", sel=pair, ylabel="correlation $c_\\ell$")
    plots.curves(ax_d, data, "corr", sel=pair, transform=lambda c: 1 - c, xscale="log",
                 yscale="log", ylabel="$1 - c_\\ell$")
    if drawn := _draw_asymptotes(ax_d, data, depth):
        slow = "; ".join(f"{r['label']}: $1 - c_\\ell = {r['law_tex']}$, its leading term "
                         f"${r['leading_tex']}$" for r in drawn if r["leading"] is not None)
        data.note("Dashed: the derived large-depth laws of $1 - c_\\ell$ (paper/generated), "
                  "evaluated at each architecture's parameters and the inputs' $q_0$, $c_0$"
                  + (f" ({slow}; the leading terms, reached only logarithmically, are not "
                     "drawn)" if slow else "") + ". A ResNet with $\\alpha = 1/\\sqrt{L}$ "
                  "reaches its power law only for $\\ell \\gg 1/\\alpha^2 = L$, beyond the "
                  "net (its line lies off scale).")
    else:
        data.note("No derived asymptote was available (no '<preset>_law' equation for "
                  "$1 - c_\\ell$ in paper/generated/*.json): the asymptote lines are omitted.")
    plots.fit_log_ylim(ax_d)
    plots.figure_legend(fig, ax_c)
    plots.params_note(data)
    return fig


def law_values(expr, values, layers):
    """A law of 1 - c_l at ``layers`` with ``values`` substituted (None if other symbols stay)."""
    expr = expr.subs({s: values[s.name] for s in expr.free_symbols if s.name in values})
    if any(s.name != "l" for s in expr.free_symbols):  # a law in other parameters
        return None
    f = sympy.lambdify([s for s in expr.free_symbols] or [sympy.Symbol("l")], expr,
                       ["scipy", "numpy"])  # scipy: the digamma of the Pre-LN law
    return np.broadcast_to(np.asarray(f(layers), dtype=float), np.shape(layers))


def laws(data: plots.FigureData) -> list[dict]:
    """Per arch with a derived law of 1 - c_l: its label, the layers l the law is drawn at
    (log-spaced from max(L/100, 2) to L), the law there, the theory's 1 - c_l of the first pair
    there, and the law's leading term there (None where no ``<preset>_leading`` equation); the
    law and its leading term as LaTeX (``law_tex``, ``leading_tex``)."""
    found, leading = asymptotes(data.generated_dir), asymptotes(data.generated_dir, "_leading")
    depth = int(data.theory["layer"][-1])
    archs = json.loads(data.theory.attrs.get("config", "{}")).get("arch", [])
    start = data.theory.isel(layer=0)
    q0 = float(start["q"].sel(input=0).isel(arch=0) if "arch" in start.dims else start["q"].sel(input=0))
    c0 = start["corr"].sel(input=0, input_b=1)
    c0 = float(c0.isel(arch=0) if "arch" in c0.dims else c0)
    layers = np.unique(np.geomspace(max(depth // 100, 2), depth, 60).astype(int)).astype(float)
    out = []
    for arch in archs:
        values = arch_values(arch, depth, q0, c0)
        if arch["preset"] not in found or values is None:
            continue
        y = law_values(found[arch["preset"]], values, layers)
        if y is None:
            continue
        th = 1 - plots.pick(data.theory, arch=arch["label"])["corr"].sel(
            input=0, input_b=1, layer=layers.astype(int)).values
        lead = leading.get(arch["preset"])
        out.append({"label": arch["label"], "layers": layers, "law": y, "theory": th,
                    "law_tex": tex(found[arch["preset"]]),
                    "leading": None if lead is None else law_values(lead, values, layers),
                    "leading_tex": None if lead is None else tex(lead)})
    return out


SYMBOLS = {"l": r"\ell", "gain": r"\gamma"}  # the laws' symbols as the paper writes them


class _LawPrinter(LatexPrinter):
    """LaTeX with the digamma polygamma(0, x) written psi(x)."""

    def _print_polygamma(self, expr, exp=None):
        if expr.args[0] == 0:
            out = rf"\psi\left({self._print(expr.args[1])}\right)"
        else:  # (LatexPrinter has no _print_polygamma to defer to: it raised AttributeError)
            args = ", ".join(self._print(a) for a in expr.args)
            out = rf"\operatorname{{polygamma}}\left({args}\right)"
        return out if exp is None else rf"{out}^{{{exp}}}"


def tex(expr) -> str:
    """A derived law as LaTeX (symbols as :data:`SYMBOLS`, logs as ln, the digamma as psi)."""
    names = {s: SYMBOLS[s.name] for s in expr.free_symbols if s.name in SYMBOLS}
    return _LawPrinter({"symbol_names": names, "ln_notation": True}).doprint(expr)


def numbers(data: plots.FigureData) -> dict[str, float | str]:
    """The prose's words on the leading terms: over every depth drawn and every arch with one,
    the least and largest ratio of the leading term to the theory's 1 - c_l
    (``CorrLeadRatioMin``, ``CorrLeadRatioMax``), the verb they support
    (``CorrLeadVerb``: overestimates where every ratio exceeds 1, underestimates where none
    does, else misses), the leading terms as derived (``CorrLeadTerm``) and the depths
    (``CorrLeadDepthMin``, ``CorrLeadDepthMax``)."""
    rows = [r for r in laws(data) if r["leading"] is not None]
    if not rows:
        return {}
    ratios = np.concatenate([r["leading"] / r["theory"] for r in rows])
    low, high = float(ratios.min()), float(ratios.max())
    verb = "overestimates" if low > 1 else "underestimates" if high < 1 else "misses"
    terms = dict.fromkeys(r["leading_tex"] for r in rows)  # (one per distinct term, in order)
    layers = np.concatenate([r["layers"] for r in rows])
    return {"CorrLeadRatioMin": low, "CorrLeadRatioMax": high, "CorrLeadVerb": verb,
            "CorrLeadTerm": " and ".join(f"${t}$" for t in terms),
            "CorrLeadDepthMin": int(layers.min()), "CorrLeadDepthMax": int(layers.max())}


def _draw_asymptotes(ax, data, depth) -> list[dict]:
    """Draws each :func:`laws` row on ``ax``, its distance from the theory in the caption;
    returns the rows drawn."""
    drawn = laws(data)
    for r in drawn:
        if r["leading"] is not None:  # how far the drawn law and its leading term are off
            th, y, lead = r["theory"][-1], r["law"][-1], r["leading"][-1]
            data.note(f"{r['label']} at $\\ell$ = {depth}: theory $1 - c_\\ell$ = {th:.3g}, "
                      f"the drawn law {y:.3g} ({y / th:.3g} times), its leading term "
                      f"${r['leading_tex']}$ {lead:.3g} ({lead / th:.2g} times).")
        plots.theory_line(ax, r["layers"], r["law"], r["label"], ls=(0, (4, 2)), lw=1.0,
                          gid="reference")
    return drawn
