"""One module per paper figure. Each defines ``SIM`` (the sims/<name>.toml it draws),
``CAPTION`` and ``draw(data: sigprop.analysis.plots.FigureData) -> matplotlib Figure``; notes added with
``data.note`` are appended to the caption. :func:`render` writes PDF, PNG and caption."""

from __future__ import annotations

import importlib

FIGURES = ("variance", "gradient", "correlation", "meanshift", "norms", "finite_width", "phase")


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
    return save(fig, name, out_dir, caption)
