"""Running a sim (:class:`sigprop.pipeline.config.Sim`) on the engines.

One theory call per (arch, batch size), vectorised over the arch's sweeps; Monte Carlo per
(arch, batch size, width, sweep point). Results of several architectures, batch sizes and
widths are stacked along the dims ``arch``, ``batch`` and ``width`` (``input`` is padded with NaN
where batch sizes differ). Archs may be swept differently (``sweeps`` of an ``[[arch]]``): the
stacked grid is the union, NaN where an arch's grid lacks a value of a dim it is swept over, and
an arch's values are repeated along a dim it is not swept over (the config refuses that unless
the arch's preset does not take that argument, so its values do not depend on it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import warnings
from typing import Any

import numpy as np
import xarray as xr

from sigprop import schema
from sigprop.errors import (
    ConfigError,
    FiniteWidthWarning,
    OverflowInTheory,
    UnsupportedComposition,
)
from sigprop.ops import grid_points, sweeps_of
from sigprop.pipeline.config import ArchSpec, Sim
from sigprop.provenance import make_attrs
from sigprop.state.params import Sweep
from sigprop.state.rng import WIDTH_STREAMS, width_root_seed


def run_theory(sim: Sim, profile: str, progress=None, width: int | None = None,
               engine: str = "numpy", backward: bool = True) -> xr.Dataset:
    """Infinite-width theory of every case of ``sim`` (with ``width`` N: and its first-order
    finite-width corrections at N; ``engine`` and ``backward`` as ``sp.theory``'s).

    A case the theory cannot integrate (:class:`UnsupportedComposition`) or that overflows
    (:class:`OverflowInTheory`) is NaN, with the reason in ``attrs['unsupported']``; a
    :class:`ConfigError` (e.g. the memory refusal of a net too deep for this machine) stops the
    run. (Every case NaN is a run: its Monte Carlo is drawn alone, "(Monte Carlo only)".)
    """
    from sigprop.engines.theory import check_engine

    check_engine(engine)  # (a bad width or engine is no case's failure: refused before any runs)
    if width is not None:
        from sigprop.engines.finite_width import check_width

        check_width(width)
    prof = sim.profile(profile)
    items, unsupported = [], {}
    cases = list(itertools.product(sim.spec.arch, sim.batch_sizes(profile)))
    for arch, batch in _iterate(cases, progress, f"theory {sim.name}"):
        with _named(case_label(arch, batch)):
            ds, reason = theory_case(sim, arch, batch, prof.depth, sim.sweeps(profile, arch),
                                     width, engine, backward)
        if reason is not None:
            unsupported[case_label(arch, batch)] = reason
        items.append(({"arch": arch.name, "batch": batch}, strip_case_attrs(ds)))
    out = _stack(items)
    config = sim.config(profile) | ({} if backward else {"backward": False})  # as sp.theory's
    out.attrs = make_attrs("theory", config, engine, sim=sim.name, profile=profile,
                           unsupported=json.dumps(unsupported),
                           **({} if width is None else {"width": int(width)}))
    return schema.describe(out, title=sim.spec.description)


def run_montecarlo(sim: Sim, profile: str, *, backend="auto", widths=None, seeds=None,
                   progress=None) -> xr.Dataset:
    """Monte Carlo (``sp.simulate``) of every case; dims ``seed`` and ``width`` added."""
    widths, seeds = montecarlo_size(sim, profile, widths, seeds)
    check_backend(backend)
    archs = [a for a in sim.spec.arch if a.montecarlo]
    if not archs:
        raise ConfigError(f"{sim.name}: arch", "montecarlo = false for all",
                          "at least one arch with Monte Carlo to simulate")
    cases = [(arch, batch, point, width) for arch in archs
             for batch, point, width in itertools.product(
                 sim.batch_sizes(profile), grid_points(sim.sweeps(profile, arch)), widths)]
    items, used = [], set()
    for arch, batch, point, width in _iterate(cases, progress, f"simulate {sim.name}"):
        ds = montecarlo_case(sim, profile, arch, batch, point, width, range(seeds), backend)
        used.add(ds.attrs.get("backend", backend))
        items.append(({"arch": arch.name, "batch": batch, **point, "width": width},
                      strip_case_attrs(ds)))
    out = _stack(items)
    out.attrs = make_attrs("montecarlo", montecarlo_config(sim, profile, widths, seeds),
                           ",".join(sorted(used)),
                           sim=sim.name, profile=profile, seeds=seeds,
                           root_seed=sim.spec.root_seed, streams=WIDTH_STREAMS)
    return schema.describe(out, title=sim.spec.description)


def montecarlo_config(sim: Sim, profile: str, widths, seeds: int) -> dict:
    """The sim's config of ``profile`` with the widths and seeds the run used (the overrides
    --width and --seeds, which it named the profile's otherwise)."""
    config = sim.config(profile)
    config["profiles"][profile].update(widths=list(widths), seeds=seeds)
    return config


def check_backend(backend: str, here: bool = True):
    """Refuse, before any work, an unknown Monte Carlo backend, or cupy without a usable GPU
    where the Monte Carlo runs ``here`` (in this process; dask workers probe their own)."""
    from sigprop.engines.montecarlo import BACKENDS, resolve_backend

    if backend not in BACKENDS:
        raise ConfigError("backend", backend, f"one of {BACKENDS}")
    if here and backend == "cupy":
        resolve_backend(backend)


def montecarlo_size(sim: Sim, profile: str, widths=None, seeds=None) -> tuple[tuple, int]:
    """(widths, seeds) of a Monte Carlo run: the profile's where not given (None), refused
    without a width or with seeds < 1 (``--seeds 0`` ran the profile's seeds, -3 was called 0),
    or with a width that cannot hold the inputs (checked before any case runs)."""
    from sigprop.engines.montecarlo import check_int, check_width

    prof = sim.profile(profile)
    widths, seeds = tuple(widths or prof.widths), prof.seeds if seeds is None else seeds
    if not widths or seeds < 1:
        raise ConfigError(f"{sim.name}: profile {profile} (widths, seeds)", (widths, seeds),
                          "at least one width and seeds >= 1 for Monte Carlo")
    if len(set(widths)) < len(widths):  # (a width dim of repeated labels: its fit is singular)
        raise ConfigError("widths (--width)", list(widths), "distinct widths")
    widest = max((sim.spec.inputs.build(b) for b in sim.batch_sizes(profile)),
                 key=lambda inputs: inputs.n)  # (the most inputs: the most directions)
    return tuple(check_width(w, widest) for w in widths), check_int("seeds", seeds, 1)


def theory_case(sim: Sim, arch: ArchSpec, batch, depth: int, sweeps: dict[str, Sweep],
                width: int | None = None, engine: str = "numpy", backward: bool = True):
    """(dataset, None) for one (arch, batch) case over ``sweeps``, or (the NaN dataset, reason)
    when the theory cannot integrate it or overflows (a ConfigError is raised: the memory
    refusal was made a NaN grid of the very size it refused, and the run went on to exhaust
    memory)."""
    from sigprop.engines.theory import theory

    inputs = sim.spec.inputs.build(batch)
    order = tuple(sweeps)  # the grid dims: the engine's order when the net builds
    try:
        net = sim.net(arch, depth, sweeps)
        order = tuple(sweeps_of(net))
        return theory(net, inputs, width=width, engine=engine, backward=backward), None
    except UnsupportedComposition as e:
        reason = str(e)
    except OverflowInTheory as e:  # keep the other cases, say which failed
        reason = f"the theory failed: {type(e).__name__}: {e}"
    return _nan_dataset(depth, inputs.n, {k: sweeps[k] for k in order}, backward), reason


def montecarlo_case(sim: Sim, profile: str, arch: ArchSpec, batch, point: dict, width: int,
                    seeds: range, backend: str) -> xr.Dataset:
    """``sp.simulate`` of one (arch, batch, grid point, width) case on the seeds ``seeds``
    (consecutive: split the seeds over calls and the numbers do not change), with the width's
    own root seed (:func:`~sigprop.state.rng.width_root_seed`)."""
    from sigprop.engines.montecarlo import simulate

    prof = sim.profile(profile)
    net = sim.net(arch, prof.depth, point, blocks=prof.mc_depth)
    return simulate(net, sim.spec.inputs.build(batch), width=width, seeds=len(seeds),
                    first_seed=seeds.start, backend=backend, dtype=prof.dtype,
                    root_seed=width_root_seed(sim.spec.root_seed, width), sampler=prof.sampler)


def case_label(arch: ArchSpec, batch) -> str:
    """The name of one (architecture, batch size) case in messages and attributes."""
    return arch.name if batch is None else f"{arch.name} (B={batch})"


@contextlib.contextmanager
def _named(case: str):
    """The block's FiniteWidthWarnings with ``case`` before their message (which case of a sim
    said it); every warning then meets the caller's filters (by module too) as it would have."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        reissue(w, f"{case}: {w.message}" if issubclass(w.category, FiniteWidthWarning) else None)


def reissue(w: warnings.WarningMessage, message=None):
    """Warn a caught warning ``w`` again (as ``message`` if given) from its own place and
    module, so the caller's filters (by module too) meet it as they would have."""
    module = next((m for m in list(sys.modules.values())
                   if getattr(m, "__file__", None) == w.filename), None)
    known = {} if module is None else {  # (none for python -c or a notebook cell: a module=None
        # passed on shows nothing at all)
        "module": module.__name__, "registry": vars(module).setdefault("__warningregistry__", {})}
    warnings.warn_explicit(w.message if message is None else message, w.category, w.filename,
                           w.lineno, **known)


def _iterate(items, progress, what):
    if progress is None:
        return items
    return progress(items, what)


def strip_case_attrs(ds: xr.Dataset) -> xr.Dataset:
    """Drop per-case attrs and the per-arch ``block`` labels before stacking."""
    ds = ds.drop_vars([c for c in ("block",) if c in ds.coords])
    ds.attrs = {}
    return ds


def _nan_dataset(depth: int, B: int, sweeps: dict[str, Sweep], backward: bool = True
                 ) -> xr.Dataset:
    """The theory schema (without ``backward``: its forward part) filled with NaN (a case the
    theory cannot integrate)."""
    shape = (depth + 1, *(len(s.values) for s in sweeps.values()), B)
    nan, nan_pairs = np.full(shape, np.nan), np.full(shape + (B,), np.nan)
    # per-input variables first, then the pairwise ones (the order these datasets have had)
    data = {v.name: (v.dims_with(grid=tuple(sweeps)), nan_pairs if v.pairwise else nan)
            for v in sorted(schema.VARIABLES.values(), key=lambda v: v.pairwise)
            if backward or v.name in schema.FORWARD}
    coords = {"layer": np.arange(depth + 1), "input": np.arange(B), "input_b": np.arange(B),
              **{k: np.asarray(s.values) for k, s in sweeps.items()}}
    return xr.Dataset(data, coords=coords)


def _stack(items: list[tuple[dict, xr.Dataset]]) -> xr.Dataset:
    """Concatenate datasets keyed by coordinate dicts along each key, in order (None: no dim).
    The keys after the first may differ between its groups (an arch's own sweep dims)."""
    keys = [k for k in items[0][0] if items[0][0][k] is not None]
    if not keys:
        return items[0][1]
    first = keys[0]
    groups: dict[Any, list] = {}
    for coords, ds in items:
        groups.setdefault(coords[first], []).append(
            ({k: v for k, v in coords.items() if k != first}, ds))
    parts = [_stack(g) for g in groups.values()]
    return xr.concat(parts, dim=xr.DataArray(list(groups), dims=first, name=first),
                     join="outer", coords="minimal", compat="override")
