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


def nets(data):
    """([(label, net, inputs)] per architecture of the sim, its depth L), rebuilt from the
    theory's config (presets at the theory's last layer; a sim without sweeps)."""
    import json

    from sigprop import presets
    from sigprop.state.inputs import Inputs

    cfg = json.loads(data.theory.attrs.get("config", "{}"))
    L = int(data.theory["layer"][-1])
    inputs = Inputs(**cfg.get("inputs", {}))
    out = []
    for arch in cfg.get("arch", []):
        kw = {k: v for k, v in arch.items() if k not in ("preset", "label", "montecarlo")}
        out.append((arch.get("label") or arch["preset"],
                    presets.PRESETS[arch["preset"]](depth=L, **kw), inputs))
    return out, L


def at_width(data, width: int):
    """The sim's forward theory at width N = ``width`` (``sp.theory(net, inputs, width=N,
    backward=False)`` per architecture, stacked on ``arch`` as ``data.theory`` is), which
    :func:`sigprop.plot` draws at its first order in 1/N. An architecture whose corrections are
    NaN somewhere (an op with no finite-width rule) is named in the caption."""
    import warnings

    import xarray as xr

    from sigprop.engines.theory import theory
    from sigprop.errors import FiniteWidthWarning

    parts, labels = [], []
    for label, net, inputs in nets(data)[0]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FiniteWidthWarning)  # (said in the caption)
            ds = theory(net, inputs, width=width, backward=False)
        if ds["log_q_correction"].isnull().any():
            data.note(f"{label}: no finite-width rule at some layers; drawn at infinite width "
                      "there.")
        parts.append(ds)
        labels.append(label)
    out = xr.concat(parts, dim="arch", combine_attrs="override")
    return out.assign_coords(arch=labels)
