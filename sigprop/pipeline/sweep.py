"""Sweeps beyond one process: a sim split into tasks, run on dask.distributed, one zarr store.

``sweep_run(sim, "out/<sim>.zarr")`` splits a sim into tasks: (arch, batch, grid chunk) for the
theory, (arch, batch, grid point, width, seed chunk) for the Monte Carlo. A task makes the same
engine call as :mod:`sigprop.pipeline.runs` on its piece (``theory_case``, ``montecarlo_case``),
writes the piece into its own chunk-aligned region of the store, then its completion marker.
Tasks run on a ``dask.distributed`` client (``scheduler="tcp://host:8786"``, or ``local=N``
worker processes) or one after another in this process (the default: no dask needed).

The store (zarr format 2, one per sim)::

    <store>/theory, <store>/montecarlo   the datasets: the template (metadata only) is written
                                         first, then each task fills its chunks (region=, r+)
    <store>/sweep/<kind>                 a group whose attrs hold the layout being filled
    <store>/sweep/<kind>/<task>          one group per finished task, written after its data;
                                         attrs: its outcome (a theory failure, the MC backend)

* Resume: a rerun with the same layout (config, overrides, chunk sizes, code) computes only the
  tasks without a marker; another layout in the same store is refused once a task of it
  finished (``overwrite=True`` restarts), and replaces it before (nothing of it was computed).
* Readers: :func:`sweep_load` returns the Dataset ``run_theory``/``run_montecarlo`` return
  (schema, coordinates, attributes); a chunk without a marker is never shown.
* Determinism: a task's numbers depend only on its configuration (the theory is elementwise over
  the grid; the Monte Carlo streams are keyed by (root seed, seed index), :mod:`sigprop.state.rng`),
  so chunk sizes, the number of workers and kill/resume change no bit. As in ``run_theory``, a
  theory case (arch, batch) that fails on any chunk of its grid is NaN on all of it, with the
  reason of its first failing chunk.
* Faults: a worker that dies mid-task has its task rerun by the scheduler; a task that raises is
  reported (its configuration and the error, :class:`SweepFailed`) after the others finish, and
  gets no marker; a killed client leaves markers for exactly the tasks that finished.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from sigprop import schema
from sigprop.data import ZARR_FORMAT
from sigprop.errors import ConfigError, SigpropError
from sigprop.ops import sweeps_of
from sigprop.provenance import make_attrs
from sigprop.state.params import Sweep

if TYPE_CHECKING:  # the sim schema (pydantic) loads on first use: `import sigprop` stays light
    from sigprop.pipeline.config import ArchSpec, Sim

KINDS = ("theory", "montecarlo")
MARKERS = "sweep"  # the group holding each kind's layout and its tasks' completion markers


class SweepFailed(SigpropError):
    """Tasks of a sweep raised: names each one's configuration and error (the rest finished)."""

    def __init__(self, report: SweepReport):
        self.report = report
        lines = [f"  {where}: {error}" for where, error in report.failed]
        super().__init__(f"{len(report.failed)} task(s) of the sweep failed (no marker written; "
                         "a rerun retries them):\n" + "\n".join(lines))


class SweepIncomplete(SigpropError):
    """A store read before its sweep finished (``partial=True`` reads the finished chunks)."""


@dataclass
class SweepReport:
    """What a :func:`sweep_run` did: tasks per kind, those skipped (already done), those it
    computed, the failed ones (configuration, error), the task seconds, the dashboard link."""

    store: Path
    total: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    task_seconds: list[float] = field(default_factory=list)
    dashboard: str | None = None


# -- layout: dims, chunks, tasks ----------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One kind of a sim's sweep: what each task computes and where its piece goes.

    ``sizes``: every dim's length; ``split``: the dims cut into tasks with their chunk length
    (in task order: arch, batch, the grid, then width, seed); ``var_dims``: each variable's dims.
    """

    kind: str
    sim: Sim
    profile: str
    store: str
    archs: tuple[ArchSpec, ...]
    batches: tuple[int | None, ...]
    sweeps: dict[str, Sweep]
    sizes: dict[str, int]
    split: dict[str, int]
    var_dims: dict[str, tuple[str, ...]]
    widths: tuple[int, ...] = ()
    seeds: int = 0
    backend: str = "numpy"

    @functools.cached_property  # (read several times a run: the sources hashed once)
    def layout(self) -> dict:
        """The JSON a store must match to be resumed: config, overrides, dims and chunks, and
        the code that computes results (:func:`~sigprop.pipeline.cache.code_version`: a store
        resumed by other code held old numbers beside new ones, unsaid)."""
        from sigprop.pipeline.cache import code_version

        return json.loads(json.dumps({
            "kind": self.kind, "config": self.sim.config(self.profile), "code": code_version(),
            "widths": self.widths,
            "seeds": self.seeds, "backend": self.backend, "sizes": self.sizes,
            "split": self.split, "var_dims": self.var_dims}))


Task = tuple[tuple[str, int, int], ...]  # (dim, start, stop) along each split dim


def tasks_of(layout: dict) -> list[Task]:
    """Every task of a layout: the product of the chunk ranges of the split dims."""
    ranges = [[(dim, lo, min(lo + step, layout["sizes"][dim]))
               for lo in range(0, layout["sizes"][dim], step)]
              for dim, step in layout["split"].items()]
    return [tuple(t) for t in itertools.product(*ranges)]


def task_key(task: Task) -> str:
    """A task's name in the store: ``arch0-batch1-sigma_w0.2`` (stop omitted for one index)."""
    return "-".join(f"{d}{lo}" if hi == lo + 1 else f"{d}{lo}.{hi}" for d, lo, hi in task)


def region_of(task: Task) -> dict[str, slice]:
    return {d: slice(lo, hi) for d, lo, hi in task}


def plan_theory(sim: Sim, profile: str, store, grid_chunk: int | None = None) -> Plan:
    """Tasks (arch, batch, grid chunk): ``grid_chunk`` points along each sweep dim (default all)."""
    prof, sweeps = sim.profile(profile), sim.sweeps(profile)
    order = _theory_grid_order(sim, sim.spec.arch[0], sweeps)
    sweeps = {name: sweeps[name] for name in order}
    batches = tuple(sim.batch_sizes(profile))
    outer = ("arch",) + (("batch",) if batches != (None,) else ())
    sizes = {"arch": len(sim.spec.arch), "batch": len(batches),
             **{k: len(s.values) for k, s in sweeps.items()}, "layer": prof.depth + 1,
             **_input_sizes(sim, batches)}
    step = _positive("grid_chunk", grid_chunk)
    split = {d: 1 for d in outer} | {k: step or sizes[k] for k in sweeps}
    var_dims = {v.name: outer + v.dims_with(grid=tuple(sweeps)) for v in schema.VARIABLES.values()}
    return Plan("theory", sim, profile, _store_path(store), tuple(sim.spec.arch), batches, sweeps,
                _used(sizes, var_dims), split, var_dims)


def plan_montecarlo(sim: Sim, profile: str, store, *, widths=None, seeds=None,
                    seed_chunk: int | None = None, backend: str = "auto") -> Plan:
    """Tasks (arch, batch, grid point, width, seed chunk): ``seed_chunk`` seeds each (default all)."""
    from sigprop.pipeline.runs import montecarlo_size

    prof, sweeps = sim.profile(profile), sim.sweeps(profile)
    widths, seeds = montecarlo_size(sim, profile, widths, seeds)
    archs = tuple(a for a in sim.spec.arch if a.montecarlo)
    if not archs:
        raise ConfigError(f"{sim.name}: arch", "montecarlo = false for all",
                          "at least one arch with Monte Carlo for a Monte Carlo sweep")
    batches = tuple(sim.batch_sizes(profile))
    outer = ("arch",) + (("batch",) if batches != (None,) else ()) + tuple(sweeps) + ("width",)
    sizes = {"arch": len(archs), "batch": len(batches), **{k: len(s.values) for k, s in
                                                           sweeps.items()},
             "width": len(widths), "seed": seeds, "layer": (prof.mc_depth or prof.depth) + 1,
             **_input_sizes(sim, batches)}
    split = {d: 1 for d in outer} | {"seed": _positive("seed_chunk", seed_chunk) or seeds}
    var_dims = {v.name: outer + v.dims_with(lead=("seed",)) for v in schema.VARIABLES.values()}
    return Plan("montecarlo", sim, profile, _store_path(store), archs, batches, sweeps,
                _used(sizes, var_dims), split, var_dims, widths, seeds, backend)


def _theory_grid_order(sim: Sim, arch: ArchSpec, sweeps: dict[str, Sweep]) -> tuple[str, ...]:
    """The sweep dims in the order the theory gives them (``run_theory`` stacks its cases in the
    order of the first: the net's order, even when its theory fails, ``runs.theory_case``; the
    sim's order when the net itself cannot be built)."""
    try:
        return tuple(sweeps_of(sim.net(arch, 1, sweeps)))
    except SigpropError:
        return tuple(sweeps)


def _input_sizes(sim: Sim, batches) -> dict[str, int]:
    n = max(sim.spec.inputs.build(b).n for b in batches)  # smaller batches are padded with NaN
    return {"input": n, "input_b": n}


def _used(sizes: dict[str, int], var_dims) -> dict[str, int]:
    """``sizes`` of the dims the variables have (no ``batch`` when the sim has no batch sizes)."""
    dims = {d for dims in var_dims.values() for d in dims}
    return {d: n for d, n in sizes.items() if d in dims}


def _positive(name: str, value, allowed: str = "an integer >= 1 (or None: one chunk)"):
    ok = value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                           and value >= 1)
    if not ok:
        raise ConfigError(name, value, allowed)
    return None if value is None else int(value)


def _store_path(store) -> str:
    path = Path(store)
    if path.suffix != ".zarr":
        raise ConfigError("store", str(store), "a path ending in .zarr (one zarr store per sim)")
    return str(path.resolve())  # the same path on every worker of a shared file system


# -- the dataset: template, pieces, reading -------------------------------------------------
def _coords(plan: Plan) -> dict[str, np.ndarray]:
    coords = {"arch": np.array([a.name for a in plan.archs])}
    if "batch" in plan.sizes:
        coords["batch"] = np.array(plan.batches)
    coords.update({k: np.asarray(s.values) for k, s in plan.sweeps.items()})
    if plan.kind == "montecarlo":
        coords.update(width=np.array(plan.widths), seed=np.arange(plan.seeds))
    coords.update({d: np.arange(plan.sizes[d]) for d in ("layer", "input", "input_b")})
    return coords


def _template(plan: Plan) -> xr.Dataset:
    """The full dataset, NaN everywhere, as zero-copy views (nothing is stored for them)."""
    data = {name: (dims, np.broadcast_to(np.nan, tuple(plan.sizes[d] for d in dims)))
            for name, dims in plan.var_dims.items()}
    sim = plan.sim
    if plan.kind == "theory":
        attrs = make_attrs("theory", sim.config(plan.profile), "numpy", sim=sim.name,
                           profile=plan.profile, unsupported="{}")
    else:
        from sigprop.pipeline.runs import montecarlo_config
        from sigprop.state.rng import WIDTH_STREAMS

        attrs = make_attrs("montecarlo", montecarlo_config(sim, plan.profile, plan.widths,
                                                           plan.seeds), plan.backend,
                           sim=sim.name, profile=plan.profile, seeds=plan.seeds,
                           root_seed=sim.spec.root_seed, streams=WIDTH_STREAMS)
    return schema.describe(xr.Dataset(data, coords=_coords(plan), attrs=attrs),
                           title=sim.spec.description)  # as run_theory / run_montecarlo


def _compute(plan: Plan, task: Task) -> tuple[xr.Dataset, dict]:
    """The piece of one task (the engines' own dims) and its outcome for the marker."""
    from sigprop.pipeline.runs import case_label, montecarlo_case, theory_case

    at = {d: range(lo, hi) for d, lo, hi in task}
    arch, batch = plan.archs[at["arch"].start], plan.batches[at.get("batch", range(1)).start]
    if plan.kind == "theory":
        grid = {k: Sweep(k, s.values[at[k].start:at[k].stop]) for k, s in plan.sweeps.items()}
        ds, reason = theory_case(plan.sim, arch, batch, plan.sizes["layer"] - 1, grid)
        return ds, ({} if reason is None else {"case": case_label(arch, batch), "reason": reason})
    point = {k: s.values[at[k].start] for k, s in plan.sweeps.items()}
    ds = montecarlo_case(plan.sim, plan.profile, arch, batch, point,
                         plan.widths[at["width"].start], at["seed"], plan.backend)
    return ds, {"backend": ds.attrs["backend"]}


def _placed(plan: Plan, ds: xr.Dataset) -> xr.Dataset:
    """A piece in the template's shape: the split dims of length 1 added, ``input`` padded to
    the largest batch (NaN, as ``runs._stack`` does), dims in order, coordinates dropped."""
    from sigprop.pipeline.runs import strip_case_attrs

    ds = strip_case_attrs(ds)
    n = plan.sizes["input"]
    ds = ds.reindex(input=np.arange(n), input_b=np.arange(n))
    ds = ds.expand_dims([d for d in plan.split if d not in ds.dims])
    ds = ds.drop_vars(list(ds.coords))
    return xr.Dataset({name: ds[name].transpose(*dims) for name, dims in plan.var_dims.items()})


def run_task(plan: Plan, task: Task) -> dict:
    """Compute one task, write its region of the store, then its marker (returned)."""
    zarr = _require("zarr", "zarr")
    start = time.perf_counter()
    ds, outcome = _compute(plan, task)
    seconds = time.perf_counter() - start
    _placed(plan, ds).to_zarr(plan.store, group=plan.kind, region=region_of(task), mode="r+",
                              consolidated=False, write_empty_chunks=False)
    marker = {"done": True, "seconds": seconds, **outcome}
    zarr.create_group(plan.store, path=f"{MARKERS}/{plan.kind}/{task_key(task)}",
                      overwrite=True, attributes=marker, zarr_format=ZARR_FORMAT)
    return marker


def _stored_layout(store: str, kind: str) -> dict | None:
    zarr = _require("zarr", "zarr")
    try:
        return dict(zarr.open_group(store, path=f"{MARKERS}/{kind}", mode="r").attrs)["layout"]
    except (FileNotFoundError, KeyError, ValueError):  # no store, no group, or an old/partial one
        return None


def _markers(store: str, kind: str) -> dict[str, dict]:
    """The markers of the finished tasks, by task key."""
    zarr = _require("zarr", "zarr")
    out = {}
    for name, group in zarr.open_group(store, path=f"{MARKERS}/{kind}", mode="r").groups():
        try:
            attrs = dict(group.attrs)
        except ValueError:  # a marker cut short by a kill: the task is not finished
            continue
        if attrs.get("done"):
            out[name] = attrs
    return out


def _prepare(plan: Plan, overwrite: bool) -> dict[str, dict]:
    """Write the template and the layout (a new store, or one of another sweep with no task
    finished), or check the layout (a resumed one); returns the markers of the tasks already
    finished."""
    zarr = _require("zarr", "zarr")
    stored = _stored_layout(plan.store, plan.kind)
    done = {} if stored is None else _markers(plan.store, plan.kind)
    if stored == plan.layout and not overwrite:
        return done
    if done and not overwrite:
        differ = sorted(k for k in plan.layout if stored.get(k) != plan.layout[k])
        raise ConfigError(f"store {plan.store} ({plan.kind})", f"another sweep ({differ} "
                          f"differ; {len(done)} task(s) finished)", "the same sim, overrides, "
                          "chunk sizes and code (sigprop's sources that compute results) to "
                          "resume; a new store, or overwrite=True (--overwrite) to start again")
    template = _template(plan)
    encoding = {name: {"chunks": tuple(plan.split.get(d, plan.sizes[d]) for d in dims)}
                for name, dims in plan.var_dims.items()}
    template.to_zarr(plan.store, group=plan.kind, mode="w", compute=False, consolidated=False,
                     zarr_format=ZARR_FORMAT, encoding=encoding, write_empty_chunks=False)
    zarr.create_group(plan.store, path=f"{MARKERS}/{plan.kind}", overwrite=True,
                      attributes={"layout": plan.layout}, zarr_format=ZARR_FORMAT)
    return {}


def sweep_load(store, kind: str = "theory", partial: bool = False) -> xr.Dataset:
    """The dataset of a sweep's store, as ``run_theory`` / ``run_montecarlo`` return it.

    Only finished chunks (with a marker) are read: an unfinished sweep raises
    :class:`SweepIncomplete`, or with ``partial=True`` is NaN where a task has not finished,
    which ``attrs['unfinished']`` names.
    """
    if kind not in KINDS:
        raise ConfigError("kind", kind, f"one of {KINDS}")
    store = _store_path(store)
    layout = _stored_layout(store, kind)
    if layout is None:
        raise ConfigError("store", store, f"a zarr store with a {kind} sweep (sigprop sweep)")
    markers = _markers(store, kind)
    tasks = tasks_of(layout)
    missing = [t for t in tasks if task_key(t) not in markers]
    if missing and not partial:
        raise SweepIncomplete(f"{store} ({kind}): {len(missing)} of {len(tasks)} tasks are not "
                              "finished; rerun the sweep to complete it, or read it with "
                              "partial=True")
    ds = xr.open_dataset(store, group=kind, engine="zarr", chunks=None, consolidated=False).load()
    ds = ds[list(schema.NAMES)]
    for var in ds.variables.values():
        var.encoding = {}
    failed = {}  # theory: a case failing on any chunk is NaN on all of it, as in run_theory
    for task in tasks:
        marker = markers.get(task_key(task), {})
        if "reason" in marker:
            failed.setdefault(marker["case"], (marker["reason"], task))
    for region in [region_of(t) for t in missing] + [
            {d: region_of(t)[d] for d in ("arch", "batch") if d in region_of(t)}
            for _, t in failed.values()]:
        for name in schema.NAMES:
            ds[name][region] = np.nan
    if missing:  # (partial=True: said in the data, not only by its NaN)
        ds.attrs["unfinished"] = (f"{len(missing)} of {len(tasks)} tasks not finished (NaN): "
                                  + ", ".join(task_key(t) for t in missing[:20])
                                  + (", ..." if len(missing) > 20 else ""))
    if kind == "theory":
        ds.attrs["unsupported"] = json.dumps({case: why for case, (why, _) in failed.items()})
    elif markers:
        ds.attrs["backend"] = ",".join(sorted({m["backend"] for m in markers.values()}))
    return schema.describe(ds)  # the variables' and CF attributes, as the engines give them


# -- running ------------------------------------------------------------------------------------
def sweep_run(sim, store, *, profile: str = "quick", theory: bool = True,
              montecarlo: bool | None = None, scheduler: str | None = None,
              local: int | None = None, client=None, grid_chunk: int | None = None,
              seed_chunk: int | None = None, backend: str = "auto", widths=None, seeds=None,
              overwrite: bool = False, progress: bool = False) -> SweepReport:
    """Run a sim's theory and Monte Carlo as tasks writing one zarr store (see the module doc).

    ``sim``: a :class:`Sim` or a ``sims/<name>.toml`` path. ``montecarlo``: default when the
    profile has seeds (or ``seeds`` is given). Where tasks run: ``client`` (a
    ``distributed.Client``), ``scheduler`` (its address), ``local`` (a LocalCluster of that many
    worker processes), else here, one after another. Raises :class:`SweepFailed` when a task
    raised (after the others finished). Read the result with :func:`sweep_load`.
    """
    from sigprop.pipeline.config import Sim
    from sigprop.pipeline.runs import check_backend

    sim = sim if isinstance(sim, Sim) else Sim.load(sim)
    if sum(x is not None for x in (scheduler, local, client)) > 1:
        raise ConfigError("scheduler / local / client", (scheduler, local, client),
                          "at most one of them (none: run here, one task after another)")
    if local is not None:
        _positive("local", local, "an integer >= 1 (worker processes)")
    if montecarlo is None:
        montecarlo = seeds is not None or sim.profile(profile).montecarlo  # (--seeds 0: refused)
    plans = ([plan_theory(sim, profile, store, grid_chunk)] if theory else []) + (
        [plan_montecarlo(sim, profile, store, widths=widths, seeds=seeds, seed_chunk=seed_chunk,
                         backend=backend)] if montecarlo else [])
    if not plans:
        raise ConfigError("theory / montecarlo", (theory, montecarlo), "at least one kind")
    if montecarlo:
        check_backend(backend, here=scheduler is None and local is None and client is None)
    report = SweepReport(Path(plans[0].store))
    with _client(scheduler, local, client) as dask_client:  # (reached before the store is made)
        todo = []
        for plan in plans:
            done = _prepare(plan, overwrite)
            tasks = tasks_of(plan.layout)
            left = [t for t in tasks if task_key(t) not in done]
            todo += [(plan, t) for t in left]
            report.total[plan.kind], report.skipped[plan.kind] = len(tasks), len(tasks) - len(left)
            report.computed[plan.kind] = 0
        _run_todo(dask_client, todo, report, progress, sim.name)
    if report.failed:
        raise SweepFailed(report)
    return report


def _run_todo(dask_client, todo, report: SweepReport, progress: bool, name: str):
    """Run the tasks ``todo``, counting them in ``report``."""
    with _progress_bar(progress, sum(report.total.values()), sum(report.skipped.values()),
                       f"sweep {name}") as advance:
        if dask_client is not None:
            report.dashboard = dask_client.dashboard_link
            advance(0, f"dask dashboard: {report.dashboard}")
        for plan, task, marker, error in _execute(dask_client, todo):
            if error is None:
                report.computed[plan.kind] += 1
                report.task_seconds.append(marker["seconds"])
                advance(1)
            else:
                report.failed.append((describe(plan, task), f"{type(error).__name__}: {error}"))
                advance(0, f"[red]failed[/]: {report.failed[-1][0]}")


def describe(plan: Plan, task: Task) -> str:
    """A task's configuration in words (for reports of failures)."""
    parts = []
    for d, lo, hi in task:
        if d == "arch":
            parts.append(repr(plan.archs[lo].name))
        elif d == "batch":
            parts.append(f"B={plan.batches[lo]}")
        elif d == "width":
            parts.append(f"width={plan.widths[lo]}")
        elif d == "seed":
            parts.append(f"seeds {lo}..{hi - 1}")
        else:
            values = plan.sweeps[d].values[lo:hi]
            parts.append(f"{d}={values[0]:g}" if len(values) == 1 else
                         f"{d}={values[0]:g}..{values[-1]:g} ({len(values)} values)")
    return f"{plan.kind} of {plan.sim.name}: " + ", ".join(parts)


def _execute(client, todo):
    """Yield (plan, task, marker, None) or (plan, task, None, error) as tasks finish."""
    if client is None:
        for plan, task in todo:
            try:
                marker = run_task(plan, task)
            except Exception as e:  # noqa: BLE001  (reported with its configuration)
                yield plan, task, None, e
            else:
                yield plan, task, marker, None
        return
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    futures = {client.submit(run_task, plan, task, pure=False,
                             key=f"sigprop-{plan.kind}-{task_key(task)}-{run}"): (plan, task)
               for plan, task in todo}
    for future in as_completed(futures):
        plan, task = futures.pop(future)
        if future.status == "finished":
            yield plan, task, future.result(), None
        else:  # "error" (the task raised, or its workers kept dying: KilledWorker), "cancelled"
            error = future.exception() if future.status == "error" else RuntimeError(
                f"the task was {future.status}")
            yield plan, task, None, error


@contextlib.contextmanager
def _client(scheduler, local, client):
    """The dask client to run on (None: run here)."""
    if client is not None or (scheduler is None and local is None):
        yield client
        return
    distributed = _require("distributed", "dask.distributed")
    if scheduler is not None:
        with distributed.Client(scheduler) as c:
            yield c
        return
    with distributed.LocalCluster(n_workers=local, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, done: int, what: str):
    """``advance(n, message=None)``: n more chunks finished; a message printed above the bar."""
    if not enabled:
        yield lambda n, message=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), "chunks",
                  TimeRemainingColumn()) as bar:
        task = bar.add_task(what, total=total, completed=done)

        def advance(n, message=None):
            if message:
                bar.console.print(message, highlight=False)
            bar.advance(task, n)

        yield advance


def _require(module: str, what: str):
    """``module``, or a ConfigError with the install hint (zarr 3, hence sweeps, need Python
    >= 3.11: the ``scale`` extra leaves zarr out on 3.10)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = "pip install 'sigprop[scale]' (dask[distributed] and zarr, for sweeps)"
        if module == "zarr" and sys.version_info < (3, 11):
            hint = (f"Python >= 3.11 for sweeps (zarr 3 needs it; this is "
                    f"{sys.version_info.major}.{sys.version_info.minor}), then {hint}")
        raise ConfigError(what, "not installed", hint) from None
