"""``sp.plot``: one variable of theory and Monte Carlo datasets, faceted in the manner of xarray.

Theory is drawn as lines, Monte Carlo as points with a band of +-2 standard errors, with the
estimator of :mod:`sigprop.analysis.compare` chosen per panel (the mean with its standard error
for light-tailed samples, log-moments or the median for heavy-tailed squared norms; see
:func:`sigprop.analysis.plots.mc_summary`). Every dim of the variable is either the x axis, a
colour (``hue``), a column or row of panels (``col``, ``row``), or fixed by ``sel``; a few are
fixed by default and named in the panel titles: the first ``input``, for ``corr`` the first
other ``input_b`` (with ``input`` drawn, each input's first other), the last ``layer`` when x
is another dim, the widest Monte Carlo ``width``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sigprop import schema
from sigprop.analysis import plots
from sigprop.analysis.compare import (
    ESTIMATORS,
    SPREADS,
    check_role,
    check_same_experiment,
    elementwise,
    first_order,
    first_order_of,
    no_spread_value,
    one_width,
    spread_samples,
    spread_seeds,
    spread_source,
)
from sigprop.data import atomic_path
from sigprop.errors import ConfigError, warn

DECADES = 2.0  # an axis is logarithmic when its positive data span more than this many decades
DRAWABLE = 1e250  # beyond, matplotlib's log-axis transforms overflow (1e280 did)
SHARED_COLOUR = 6  # black in plots.PALETTE: a theory line shared by every hue


def plot(theory, mc=None, var: str = "q", x: str = "layer", hue: str | None = None,
         col: str | None = None, row: str | None = None, *, sel: Mapping | None = None,
         estimator: str = "auto", xscale: str | Mapping = "auto",
         yscale: str | Mapping = "auto", max_points: int = 16, sharey: bool = True, ax=None,
         transform: Callable | None = None, xlabel: str | None = None,
         ylabel: str | None = None, theory_kw: Mapping | None = None, legend: bool = True,
         titles: bool = True):
    """Draw ``var`` against ``x``: theory as lines, Monte Carlo as points with +-2 SE bands.

    ``theory``: a theory dataset (no ``seed`` dim), or a mapping ``{label: dataset}`` stacked
    along a new dim ``arch``; likewise ``mc`` (datasets with a ``seed`` dim), or None. Either
    may be None, not both; with both, a run of another net or inputs than the theory's (its
    first blocks aside) is refused, as by sp.compare. ``hue``, ``col``, ``row``: dims drawn as
    colours, panel columns and panel rows; when ``hue`` is None and exactly one dim with several
    values is left, it becomes the hue (as in xarray). ``sel``: ``{dim: label}`` fixing other
    dims. ``estimator``: as in ``sp.compare`` (``auto`` picks per panel). ``xscale``/``yscale``:
    ``auto`` is logarithmic when the positive values drawn span more than ``DECADES`` = 2
    decades (then x <= 0, e.g. layer 0, is left out); magnitudes beyond ``DRAWABLE`` (and inf)
    are reported by a warning and not drawn; a mapping is the keyword arguments of matplotlib's
    ``set_xscale`` (e.g. ``{"value": "log", "base": 2}``, ``{"value": "symlog", "linthresh":
    1e-3}``). Along ``layer`` Monte Carlo points are thinned to about ``max_points`` (evenly
    spaced on the x scale). ``ax``: draw into this axes (no col/row).

    ``transform``: a function of the variable drawn instead of it (applied to the theory and to
    each Monte Carlo seed before the estimator, e.g. ``lambda m: m**2``, ``lambda c: 1 - c``);
    name it with ``ylabel``. A theory from ``sp.theory(..., width=N)`` is drawn at its first
    order in 1/N, E X at width N, or at the Monte Carlo's width (the one drawn) as
    ``sp.compare`` takes it (q, corr, mean, var, branch_q, grad_q, weight_grad_q, and E log X
    for log_q, log_branch_q, log_grad_q; :func:`~sigprop.analysis.compare.first_order`); with a
    ``transform``, E f(X) = f(x) + f'(x) (E X - x) + f''(x) Var X / 2 where the theory has Var
    X (mean, q, corr, var, branch_q, grad_q, weight_grad_q;
    :func:`~sigprop.analysis.compare.first_order_of`),
    else infinite width, as the legend says (also where an op has no finite-width rule). Its
    spreads (``var="var_log_q"``, var_corr, ...) beside a run of at least 16 seeds are drawn at
    the run's width against the variance across its seeds, the band the variances whose
    sp.compare z is within +-2 (:func:`~sigprop.analysis.compare.spread_band`).
    ``xlabel``/``ylabel`` replace the axis labels; ``theory_kw``: extra matplotlib arguments
    of the theory lines (``{"marker": "."}``); ``legend=False`` draws no
    legend (a figure of several calls draws one for all), ``titles=False`` no panel titles.
    A hue label that names one of the paper's nets (``plots.NET_STYLES``: "Pre-LN", "Post-LN",
    ...) is drawn in that net's colour, line style and marker, the same in every figure; other
    labels take the palette in order. A hue whose theory is all NaN (no law) keeps its label
    on its Monte Carlo points, "(Monte Carlo only)".
    Returns the matplotlib Figure.
    """
    given = theory, mc  # (a mapping's datasets are checked label by label: stacked, their
    # differing configs are dropped)
    if _labelled(theory) and _labelled(mc) and set(map(str, mc)) - set(map(str, theory)):
        raise ConfigError("mc labels", sorted(set(map(str, mc)) - set(map(str, theory))),
                          f"labels of the theory mapping {sorted(map(str, theory))} (a Monte "
                          "Carlo run is drawn against its own architecture's theory)")
    th, mc = _dataset(theory, "theory", seed=False), _dataset(mc, "mc", seed=True)
    if th is None and mc is None:
        raise ConfigError("theory, mc", (None, None), "at least one dataset")
    for role, dim in (("x", x), ("hue", hue), ("col", col), ("row", row)):
        if not (isinstance(dim, str) or dim is None and role != "x"):
            raise ConfigError(role, dim, "the name of a dim" + ("" if role == "x" else " or None"))
    if sel is not None and not isinstance(sel, Mapping):
        raise ConfigError("sel", sel, "a mapping {dim: label}")
    if ax is not None and not isinstance(ax, Axes):
        raise ConfigError("ax", type(ax).__name__, "a matplotlib Axes")
    _check_choice("estimator", estimator, ESTIMATORS)
    xscale, yscale = _check_scale("xscale", xscale), _check_scale("yscale", yscale)
    if transform is not None and not callable(transform):
        raise ConfigError("transform", transform, "a function of the variable, or None")
    transform = None if transform is None else elementwise(transform, "transform")
    if int(max_points) < 2:
        raise ConfigError("max_points", max_points, "an integer >= 2")
    present = [ds for ds in (th, mc) if ds is not None]
    names = [n for n in schema.ALL_VARIABLES if all(n in ds for ds in present)]
    spreads = var in SPREADS and th is not None and mc is not None and var in th \
        and spread_source(var) in mc  # a theory's spread against the run's across seeds
    if spreads and "width" not in th.attrs:  # (a mapping of theories at several widths)
        raise ConfigError("theory", "at several widths", f"one width N for {var} (V/N)")
    if var not in names and not spreads:
        raise ConfigError("var", var, f"one of {names}" + (
            f"; {var} beside a run needs a theory at a width (sp.theory(..., width=N)) and the "
            f"run's {spread_source(var)}" if var in SPREADS else ""))
    if spreads:  # (as sp.compare: it drew 8 seeds, an empty figure, and ignored estimator)
        if transform is not None:
            raise ConfigError("transform", transform, f"None for a spread ({var})")
        if estimator != "auto":
            raise ConfigError("estimator", estimator, f"auto for a spread ({var}: the variance "
                              "across seeds)")
        if not bool(th[var].notnull().any()):
            raise ConfigError("var", var, f"a spread the theory has a value of ({var}: "
                              f"{no_spread_value(var)})")
        spread_seeds(mc, [var])
    das = {"theory": th[var], "mc": spread_samples(mc, var)} if spreads else \
        {k: ds[var] for k, ds in (("theory", th), ("mc", mc)) if ds is not None}
    estimator = "spread" if spreads else estimator
    if spreads and yscale == "auto":  # (layer 0's spread is the run's rounding, ~1e-17: no
        yscale = "linear"  # reason for a log axis)
    dims = list(dict.fromkeys(d for da in das.values() for d in da.dims if d != "seed"))
    roles = {"x": x, "hue": hue, "col": col, "row": row}
    for role, dim in roles.items():
        if dim is not None and dim not in dims:
            raise ConfigError(role, dim, f"a dim of {var!r}: one of {dims}")
    used = [d for d in roles.values() if d is not None]
    if len(set(used)) != len(used):
        raise ConfigError("x, hue, col, row", roles, "distinct dims")
    if ax is not None and (col or row):
        raise ConfigError("ax", "given with col/row", "ax only for a single panel")
    fixed = _fixed(das, dims, used, dict(sel or {}), x)
    if th is not None and mc is not None:  # (a run of another net was drawn beside a theory)
        for pair in _labelled_pairs(*given, fixed.get("arch")):
            _check_experiment(*pair, fixed)
    width, at_width, ruled = None, None, None  # a theory at width N: E X (or E f(X)) there
    if th is not None and "width" in th.attrs:  # (at the Monte Carlo's width, as sp.compare;
        # at each of its widths where width is drawn as x, hue, col or row)
        width = (mc["width"].astype(float) if mc is not None and "width" in used else
                 int(fixed.get("width") or (mc is not None and one_width(mc))
                     or th.attrs["width"]))
        term = (das["theory"] * (th.attrs["width"] / width - 1) if var in SPREADS
                else first_order(th, var, "mean", width))  # (a spread: V/N at that N)
        with np.errstate(divide="ignore", invalid="ignore"):  # (a transform's inf where it
            at_width = (term if transform is None  # is drawn is reported: _warn_nonfinite)
                        else first_order_of(th, var, transform, width))
        ruled = None if term is None else term.notnull() | das["theory"].isnull()  # (no
        # value there, as branch_q at layer 0: no term missing)
    if at_width is not None and transform is None:  # E X = X + its term
        das["theory"] = das["theory"] + at_width.fillna(0.0)
    elif at_width is not None:  # E f(X) itself
        das["theory"] = at_width
    das, partner = _pairs(das, dims, used, fixed)
    das = {k: da.sel({d: v for d, v in fixed.items() if d in da.dims}) for k, da in das.items()}
    left = [d for d in dims if d not in used and d not in fixed
            and max(da.sizes.get(d, 1) for da in das.values()) > 1]
    if hue is None and len(left) == 1:
        hue, left = left[0], []
    if left:
        raise ConfigError("dims with several values", left,
                          "each as x, hue, col or row, or fixed by sel={dim: label}")
    das = {k: da.squeeze([d for d in da.dims if d not in (*used, hue, "seed")], drop=True)
           for k, da in das.items()}
    if transform is not None:  # (the theory at width N is already E f(X))
        with np.errstate(divide="ignore", invalid="ignore"):
            made = {k: da if k == "theory" and at_width is not None else transform(da)
                    for k, da in das.items()}
        for k, da in made.items():  # (a NaN the transform made: left out, and said)
            n = int((da.isnull() & das[k].notnull()).sum())
            if n:
                warn(f"the transform of {var} is NaN at {n} "
                     + ("Monte Carlo samples (left out of the estimates)"
                        if k == "mc" else "theory points (not drawn)"))
        das = made
    style = {"transform": transform is not None, "xlabel": xlabel, "ylabel": ylabel,
             "theory_kw": dict(theory_kw or {}), "legend": legend, "titles": titles,
             "given_ax": ax is not None, "partner": partner,
             "theory": (f"theory (leading order at {_n(width)})" if spreads else
                        _theory_label(width if at_width is not None else None, ruled, fixed))}
    return _draw(das, mc, var, x, hue, col, row, fixed, estimator, xscale, yscale,
                 int(max_points), sharey, ax, style)


def _theory_label(width, ruled, fixed) -> str:
    """The theory's legend: first order at N = ``width`` where its term is known (``ruled``,
    over the drawn points), infinite width where it is not (an op with no finite-width rule)."""
    if width is not None and ruled is not None:
        ruled = ruled.sel({d: v for d, v in fixed.items() if d in ruled.dims})
    if width is None or ruled is None or not bool(ruled.any()):
        return "theory (infinite width)"
    return f"theory (first order at {_n(width)}" + (
        ")" if bool(ruled.all()) else "; infinite width where it has no finite-width rule)")


def _pairs(das, dims, used, fixed):
    """A pair variable (corr) with ``input`` drawn (x, hue, col, row) and ``input_b`` left free:
    each input with its partner, the first other input (fixing input_b for all drew input 0's
    own corr, 1, in its panel). Returns the data and {input: partner}, or None."""
    if "input_b" not in dims or "input_b" in used or "input_b" in fixed or "input" not in used:
        return das, None
    labels = _labels(das, "input")
    partner = {i: next((b for b in labels if b != i), i) for i in labels}
    pick = xr.DataArray([partner[i] for i in labels], coords={"input": labels}, dims="input")
    return {k: da.sel(input_b=pick) if "input_b" in da.dims else da
            for k, da in das.items()}, partner


def _n(width) -> str:
    """The width a theory line is drawn at, for its legend: N = W, or each run's (a width dim)."""
    return f"N={width}" if np.ndim(width) == 0 else "each run's width"


def savefig(fig: Figure, path) -> Path:
    """Write ``fig`` to ``path`` in the paper's style (the suffix names the format: .pdf, .png,
    .svg, ...), atomically, and close it."""
    path = Path(path)
    formats = fig.canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        plt.close(fig)
        raise ConfigError("output", str(path), f"a file ending in one of "
                          f"{', '.join('.' + f for f in sorted(formats))}")
    with atomic_path(path) as tmp, plt.rc_context(plots.RC):
        fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=150)
    plt.close(fig)
    return path


def _draw(das, mc, var, x, hue, col, row, fixed, estimator, xscale, yscale, max_points, sharey,
          ax, style):
    xs = _labels(das, x)
    xscale = _scale(xscale, np.asarray(xs, dtype=float) if _numeric(xs) else None)
    log_x = xscale["value"] == "log"
    rows, cols, hues = _labels(das, row), _labels(das, col), _labels(das, hue)
    if ax is None:
        fig, axes = plots.panels(len(rows) * len(cols), nrows=len(rows), sharex=True,
                                 sharey=sharey, layout="constrained")
    else:
        fig, axes = ax.figure, [ax]
    th = das.get("theory")
    shared = th is not None and hue is not None and hue not in th.dims  # one line for all hues
    summarised = "transformed" if style["transform"] else var  # the estimator's rule
    drawn, estimators, labelled = [], set(), set()  # labelled: hues with a legend entry
    with plt.rc_context(plots.RC):  # entered after the figure exists: see plots.panels
        for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
            panel = axes[k]
            where = {d: v for d, v in ((row, r), (col, c)) if d is not None}
            for i, h in enumerate(hues):
                at = {**where, **({hue: h} if hue is not None else {})}
                key = h if plots.is_net(h) else i  # a net's own colour, else the palette's
                # the first panel that draws a hue labels it (a per-arch sweep's padding
                # leaves an arch out of some panels)
                label = _label(hue, h) if hue is not None and h not in labelled else None
                y = _at(th, at) if not (shared and i > 0) else None
                if not (shared and i > 0):  # the x where the theory is finite (one for all
                    known = np.array([])  # hues where the theory is shared)
                if y is not None:
                    if x not in y.dims:  # the infinite-width theory does not depend on width
                        y = y.expand_dims({x: xs})
                    xv, yv = _on_axis(y, x, log_x)
                    yv = _drawable(yv)
                    known = np.asarray(xv)[np.isfinite(yv)]
                    _warn_nonfinite(yv, var, "theory", at, style["transform"])
                    if np.isfinite(yv).any():
                        plots.theory_line(panel, xv, np.where(np.isfinite(yv), yv, np.nan),
                                          SHARED_COLOUR if shared else key,
                                          label=None if shared else label, **style["theory_kw"])
                        drawn.append(yv)
                        if not shared and label is not None:
                            labelled.add(h)
                            label = None
                    elif label is not None:
                        label = f"{label} (Monte Carlo only)"
                m = _at(das.get("mc"), at)
                if m is not None:
                    m = _thin(m, x, log_x, max_points)
                    with np.errstate(invalid="ignore"):  # (inf samples: reported below)
                        centre, lo, hi, used = plots.mc_summary(m.transpose(x, "seed"),
                                                                summarised, estimator)
                    estimators.add(used)
                    xv = _on_axis(centre, x, log_x)[0]
                    cv, lo, hi = (_drawable(_on_axis(v, x, log_x)[1]) for v in (centre, lo, hi))
                    _warn_lost(m.transpose(x, "seed"), cv, xv, known, var, at)
                    if not np.isfinite(cv).any() or \
                            not plots.mc_points(panel, xv, cv, lo, hi, key, label=label):
                        _warn_nonfinite(cv, var, "Monte Carlo", at,  # no points: no label
                                        style["transform"])
                    elif label is not None:
                        labelled.add(h)
                    drawn.append(cv)
            if style["titles"]:
                pair = style["partner"] and ({"input_b": style["partner"][where["input"]]}
                                             if "input" in where else {"input_b": "first other"})
                panel.set_title(", ".join(_label(d, v) for d, v in
                                          {**where, **fixed, **(pair or {})}.items()))
        _style_axes(axes, var, x, xscale, _scale(yscale, _values(drawn)), sharey, das, style)
        if style["legend"]:
            _legend(fig if ax is None else ax, axes, mc, fixed, estimators, ncol=len(cols),
                    theory=style["theory"])
    return fig


def _dataset(ds, role: str, seed: bool) -> xr.Dataset | None:
    """``ds`` checked for its role; a mapping of datasets stacked along ``arch``."""
    if ds is None:
        return None
    if _labelled(ds):
        if not ds or not all(isinstance(v, xr.Dataset) for v in ds.values()):
            raise ConfigError(role, type(ds).__name__, "a non-empty mapping {label: xr.Dataset}")
        parts = [v.drop_vars("block", errors="ignore") for v in ds.values()]
        ds = xr.concat(parts, dim=pd.Index([str(k) for k in ds], name="arch"),
                       combine_attrs="drop_conflicts", join="outer")
    if not isinstance(ds, xr.Dataset):
        raise ConfigError(role, type(ds).__name__, "an xarray.Dataset (or {label: Dataset})")
    if ("seed" in ds.dims) != seed:
        want = "a Monte Carlo dataset (with a 'seed' dim)" if seed else \
            "a theory dataset (no 'seed' dim; Monte Carlo goes in mc=)"
        raise ConfigError(f"{role} dims", tuple(ds.dims), want)
    empty = [d for d in ds.dims if ds.sizes[d] == 0]
    if empty:  # (an IndexError deep in the drawing)
        raise ConfigError(f"{role} dims", {d: 0 for d in empty}, "at least one label each")
    check_role(ds, role)
    return ds


def _labelled(ds) -> bool:
    """Whether ``ds`` is a {label: Dataset} mapping (stacked along ``arch`` to be drawn)."""
    return isinstance(ds, Mapping) and not isinstance(ds, xr.Dataset)


def _labelled_pairs(theory, mc, label=None):
    """The (theory, Monte Carlo) pairs that are drawn as one experiment: the datasets given, or
    where both are {label: Dataset} mappings, each label's pair (only ``label``'s when the plot
    is cut to one); where one alone is a mapping, the other with each of its datasets."""
    def drawn(k):
        return label is None or str(k) == str(label)

    if _labelled(theory) and _labelled(mc):
        return [(theory[k], mc[k]) for k in theory if k in mc and drawn(k)]
    if _labelled(theory):
        return [(ds, mc) for k, ds in theory.items() if drawn(k)]
    if _labelled(mc):
        return [(theory, ds) for k, ds in mc.items() if drawn(k)]
    return [(theory, mc)]


def _check_experiment(th: xr.Dataset, mc: xr.Dataset, fixed: dict) -> None:
    """sp.compare's check that ``th`` and ``mc`` are one experiment, on what is drawn (each cut
    to the ``fixed`` labels it has); either may be the other's first blocks."""
    def cut(ds):
        try:
            return ds.sel({d: v for d, v in fixed.items() if d in ds.dims})
        except KeyError:  # (a label only the other has: drawn from one dataset)
            return ds

    pair = [cut(th), cut(mc)]
    try:
        check_same_experiment(*pair, prefix=True)
    except ConfigError:  # (the run may be the deeper one)
        check_same_experiment(*pair[::-1], prefix=True)


def _check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(field, value, f"one of {list(allowed)}")


def _check_scale(field: str, value) -> str | dict:
    """One of :data:`schema.AXIS_SCALES`, or the keyword arguments of matplotlib's
    ``set_xscale`` with a registered scale name as ``value``."""
    if isinstance(value, Mapping):
        from matplotlib.scale import get_scale_names

        if value.get("value") not in get_scale_names():
            raise ConfigError(f"{field}['value']", value.get("value"),
                              f"one of {get_scale_names()} (matplotlib's scales)")
        try:  # (its keywords: matplotlib's TypeError when the panel is drawn)
            Figure().add_subplot().set_xscale(**value)
        except (TypeError, ValueError) as err:
            raise ConfigError(field, dict(value), f"keywords that scale takes ({err})") from None
        return dict(value)
    _check_choice(field, value, schema.AXIS_SCALES)
    return value


def _fixed(das, dims, used, sel, x) -> dict:
    """``sel`` checked against the dims and labels, plus the defaults for dims left over."""
    for d, v in sel.items():
        if d not in dims or d in used:
            raise ConfigError("sel", d, f"a dim of the variable not used as x/hue/col/row: "
                              f"one of {[d for d in dims if d not in used]}")
        if _match(v, _labels(das, d)) is None:
            raise ConfigError(f"sel[{d!r}]", v, f"one of {_labels(das, d)}")
    fixed = {d: _match(v, _labels(das, d)) for d, v in sel.items()}
    free = [d for d in dims if d not in used and d not in fixed]
    if "input" in free:
        fixed["input"] = _labels(das, "input")[0]
    if "input_b" in free and "input" not in used:  # (input drawn: each its partner, _pairs)
        others = [b for b in _labels(das, "input_b") if b != fixed.get("input")]
        fixed["input_b"] = (others or _labels(das, "input_b"))[0]
    if "layer" in free and x != "layer":
        fixed["layer"] = _labels(das, "layer")[-1]
    if "width" in free and "mc" in das:
        fixed["width"] = _labels(das, "width")[-1]
    return fixed


def _labels(das, dim) -> list:
    """The labels of ``dim`` in order, over all datasets (theory first); [None] for no dim."""
    if dim is None:
        return [None]
    out = []
    for da in das.values():
        if dim in da.dims:
            out += [v for v in da[dim].values.tolist() if _match(v, out) is None]
    return out


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isclose(a, b))


def _match(value, labels):
    """The label equal to ``value`` (floats within rounding), or None."""
    return next((lab for lab in labels if _same(value, lab)), None)


def _at(da, at: dict):
    """``da`` at the facet/hue labels it has; None where a label is absent (e.g. an arch
    without Monte Carlo)."""
    if da is None:
        return None
    sel = {d: _match(v, da[d].values.tolist()) for d, v in at.items() if d in da.dims}
    return None if any(v is None for v in sel.values()) else da.sel(sel)


def _on_axis(y, x: str, log_x: bool):
    """(x values, y values) as arrays, without x <= 0 on a log axis."""
    xv = np.asarray(y[x].values)
    keep = xv > 0 if log_x else np.ones(xv.shape, bool)
    return xv[keep], np.asarray(y, dtype=float)[keep]


def _thin(m: xr.DataArray, x: str, log_x: bool, n: int) -> xr.DataArray:
    """About ``n`` Monte Carlo layers (evenly spaced on the axis' scale); other x kept whole."""
    if x != "layer":
        return m
    return m.sel(layer=plots.sample_layers(m["layer"].values, n=n, linear=not log_x))


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _values(arrays) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.array([])


def _scale(scale, values) -> dict:
    """The axis scale as ``set_xscale`` arguments: a mapping as given; ``auto``: log when the
    positive ``values`` span more than DECADES decades (and none is negative), else linear."""
    if isinstance(scale, dict):
        return scale
    if scale == "auto":
        v = values[np.isfinite(values)] if values is not None else np.array([])
        v = v if not (v < 0).any() else np.array([])
        v = v[v > 0]
        scale = "log" if v.size > 1 and np.log10(v.max() / v.min()) > DECADES else "linear"
    return {"value": scale}


def _drawable(y: np.ndarray) -> np.ndarray:
    """``y`` with magnitudes beyond :data:`DRAWABLE` set to +-inf (then reported, not drawn)."""
    return np.where(np.abs(y) > DRAWABLE, np.copysign(np.inf, y), y)


def _warn_nonfinite(y, var: str, what: str, at: dict, transformed: bool) -> None:
    """Say where the drawn values are infinite: ``var`` overflowed (its log companion, where it
    has one, stays finite), or the transform of it is infinite there (log(1 - corr) at 1)."""
    n = int(np.isinf(np.asarray(y, dtype=float)).sum())
    if n:
        where = ", ".join(_label(d, v) for d, v in at.items()) or "the curve"
        said = (f"the transform of {var} is infinite" if transformed else
                f"{var} overflowed (inf, or beyond {DRAWABLE:g})")
        log = f"log_{var}" if not transformed and f"log_{var}" in schema.ALL_VARIABLES else None
        warn(f"{what}: {said} at {n} points of {where}: those are not drawn"
             + (f"; its log companion {log} stays finite" if log else ""))


def _warn_lost(samples, centre, x, known, var: str, at: dict) -> None:
    """Say where the Monte Carlo lost what the theory has: points with no estimate (NaN: every
    seed lost) where the theory is finite (``known``: its x there), and points estimated from
    fewer seeds than the run has (the estimators skip a NaN seed). A referee: NaN points and
    seeds were left out without a word, and the caption still named every seed."""
    where = ", ".join(_label(d, v) for d, v in at.items()) or "the curve"
    gone = int((np.isnan(np.asarray(centre, dtype=float)) & np.isin(x, known)).sum())
    if gone:
        warn(f"Monte Carlo: {var} has no estimate at {gone} points of {where} where the theory "
             "has one (every seed NaN): those are not drawn")
    bad = np.asarray(np.isnan(samples)).sum(axis=-1)  # (x,): NaN seeds per point (an inf
    seeds = samples.shape[-1]  # one overflowed: _warn_nonfinite's)
    partly = (bad > 0) & (bad < seeds)
    if partly.any():
        warn(f"Monte Carlo: {var} at {int(partly.sum())} points of {where}: up to "
             f"{int(bad[partly].max())} of {seeds} seeds NaN; drawn from the rest")


def _label(dim, value) -> str:
    if dim == "arch":
        return str(value)
    return f"{dim}={value:g}" if isinstance(value, float) else f"{dim}={value}"


def _style_axes(axes, var, x, xscale, yscale, sharey, das, style) -> None:
    attrs = next(iter(das.values())).attrs
    long_name = attrs.get("long_name") or schema.ALL_VARIABLES[var].long_name
    log_y = yscale["value"] == "log"
    for panel in axes:
        if xscale["value"] != "linear":
            panel.set_xscale(**xscale)
        if log_y:
            plots.fit_log_ylim(panel)
        if yscale["value"] != "linear":
            panel.set_yscale(**yscale)
        panel.set_xlabel(style["xlabel"] or ("layer $\\ell$" if x == "layer" else x))
        spec = panel.get_subplotspec()  # a grid of panels made here: labels on its left side
        if style["given_ax"] or spec is None or spec.is_first_col():
            if style["ylabel"]:
                panel.set_ylabel(style["ylabel"])
            else:
                _fit_ylabel(panel, f"{long_name} ({var})")
    if log_y and sharey:  # the limits of every panel's data, not the last panel's
        lims = np.array([panel.get_ylim() for panel in axes])
        for panel in axes:
            panel.set_ylim(lims[:, 0].min(), lims[:, 1].max())


def _fit_ylabel(panel, text: str, room: float = 0.85) -> None:
    """``text`` as the panel's y label, wrapped into lines that fit ``room`` of the panel's
    height (a long default label, as 'first-order relative correction to E weight_grad_q
    (weight_grad_q_rel_correction)', ran past the figure's top and bottom)."""
    label = panel.set_ylabel(text)
    try:
        renderer = panel.figure.canvas.get_renderer()
    except AttributeError:  # (a canvas that cannot measure text: left as it is)
        return
    height = panel.get_position().height * panel.figure.bbox.height * room
    long = label.get_window_extent(renderer).height
    if long > height > 0:
        chars = max(12, int(len(text) * height / long))
        panel.set_ylabel("\n".join(textwrap.wrap(text, chars)))


def _legend(where, axes, mc, fixed, estimators, ncol: int, theory: str) -> None:
    """The hue labels of every panel (a hue may be drawn in some panels only), and a key saying
    what lines (``theory``) and points are (width, seeds, estimator): above the panels of a
    figure (``ncol`` columns), or inside a given axes."""
    seen = {}
    for panel in axes:
        for handle, label in zip(*panel.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    handles, labels = list(seen.values()), list(seen)
    grey = plots.color(SHARED_COLOUR)
    handles.append(Line2D([], [], color=grey))
    labels.append(theory)
    if mc is not None:
        width = fixed.get("width", mc.attrs.get("width")) if "width" not in mc.dims or \
            "width" in fixed else None
        size = f"N={width}, " if width is not None else ""
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", color=grey))
        band = (f"band |z| $\\leq$ {plots.BAND_SE:g}" if estimators == {"spread"} else
                f"$\\pm${plots.BAND_SE:g} SE")
        labels.append(f"Monte Carlo ({size}{mc.sizes['seed']} seeds): "
                      f"{'/'.join(sorted(estimators))} {band}")
    if isinstance(where, Figure):
        where.legend(handles, labels, loc="outside upper center", ncol=min(3, ncol, len(labels)))
    else:
        where.legend(handles, labels)
