"""One module per paper figure. Each defines ``SIM`` (the sims/<name>.toml it draws),
``CAPTION`` and ``draw(data: sigprop.analysis.plots.FigureData) -> matplotlib Figure``; notes added with
``data.note`` are appended to the caption. :func:`render` writes PDF, PNG and caption, and, for a
module that defines ``macros(data) -> str`` (LaTeX ``\\newcommand`` lines of the numbers the
paper quotes), ``<name>.numbers.tex``."""

from __future__ import annotations

import importlib
from pathlib import Path

FIGURES = ("variance", "gradient", "correlation", "meanshift", "norms", "finite_width", "phase",
           "finite_width_correction")


def module(name: str):
    if name not in FIGURES:
        from sigprop.errors import ConfigError

        raise ConfigError("figure", name, f"one of {FIGURES}")
    return importlib.import_module(f"{__name__}.{name}")


def render(name: str, data, out_dir="paper/figures"):
    """Draw figure ``name`` from ``data`` and write it; returns the written paths."""
    from sigprop.analysis.plots import save

    mod = module(name)
    fig = mod.draw(data)
    caption = " ".join([mod.CAPTION.strip(), *data.notes])
    paths = save(fig, name, out_dir, caption)
    if hasattr(mod, "macros"):
        paths.append(Path(out_dir) / f"{name}.numbers.tex")
        paths[-1].write_text(mod.macros(data))
    return paths
