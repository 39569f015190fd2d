"""The ``sigprop`` command line (typer): theory, simulate, compare, plot, reproduce, bench,
derive, sweep.

Every command turns a :class:`sigprop.SigpropError` into one red line and exit code 2 (no
traceback): a bad sims file names the file, the key and the allowed values. This module imports
only typer, rich and :mod:`sigprop.errors` at start-up; each command imports what it runs, so
``sigprop --help`` and ``sigprop --version`` start without numpy, xarray, scipy or matplotlib.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from sigprop.errors import ConfigError, FiniteWidthWarning, SigpropError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Signal propagation through deep residual networks: theory, Monte Carlo, "
                       "comparison, figures and the paper.")
console = Console(soft_wrap=True)  # a message is one line (the terminal wraps it; a log keeps it)


class Engine(str, enum.Enum):
    """``sigprop theory --engine``: ``sp.theory``'s engines."""

    numpy = "numpy"
    jax = "jax"


Profile = Annotated[str, typer.Option("--profile", "-p", help="a profile of the sim: quick "
                                      "(2-core CPU), paper (one GPU) or another it defines")]
SimPath = Annotated[Path, typer.Argument(help="sims/<name>.toml")]
Output = Annotated[Path, typer.Option("--output", "-o", help="output .nc or .zarr")]


def _version(value: bool):
    if value:
        from sigprop.version import __version__

        console.print(f"sigprop {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")] = False):
    """Signal propagation through deep residual networks: theory, Monte Carlo, comparison,
    figures and the paper."""


def _clean_errors(fn):
    """A SigpropError, or an OSError (an output path in a folder that cannot be made, a
    scheduler that does not answer), as one red line and exit status 2; every warning as a
    line (:func:`_warnings_as_lines`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _warnings_as_lines():
                return fn(*args, **kwargs)
        except BrokenPipeError:  # (`sigprop ... | head`: not bad input)
            raise
        except (SigpropError, OSError) as e:
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _progress(items, what):
    from rich.progress import track

    return track(items, description=what, transient=True, console=console)


@app.command()
@_clean_errors
def theory(sim: SimPath, output: Output, profile: Profile = "quick",
           width: Annotated[int | None, typer.Option(
               "--width", "-n", min=1, help="add the first-order finite-width corrections at "
               "this width N (sp.theory(..., width=N))")] = None,
           engine: Annotated[Engine, typer.Option(
               help="numpy, or jax: the same laws compiled (pip install 'sigprop\\[jax]')")
           ] = "numpy",
           backward: Annotated[bool, typer.Option(
               "--backward/--forward-only", help="--forward-only: the forward pass alone, no "
               "gradient variables (sp.theory(..., backward=False))")] = True):
    """Theory of every case of a sim -> one Dataset (kind=theory); --width N adds its 1/N terms.

    Infinite width, or with --width N also the first-order corrections and the spreads across
    nets at N (sp.theory(..., width=N)). Finite-width warnings (sigprop.errors.FiniteWidthWarning) are printed as yellow lines."""
    from sigprop.data import check_output, unsupported_of
    from sigprop.engines.theory import check_engine
    from sigprop.pipeline.config import Sim
    from sigprop.pipeline.reproduce import save_quietly
    from sigprop.pipeline.runs import run_theory

    check_output(output)
    engine = Engine(engine).value
    try:
        check_engine(engine)
    except ImportError as e:  # the optional extra missing: its install hint in one line
        raise ConfigError("--engine", engine, f"numpy; {e}") from None
    s = Sim.load(sim)
    with _warnings_as_lines():  # (before the summary line below)
        ds = run_theory(s, profile, _progress, width=width, engine=engine, backward=backward)
    save_quietly(ds, output)
    for case, why in unsupported_of(ds).items():
        console.print(f"[yellow]no theory for {case}[/]: {escape(why)}")
    at = "" if width is None else f" with first-order corrections at N = {width}"
    console.print(f"theory of {s.name} ({profile}){at}: dims {dict(ds.sizes)} -> {output}")


@contextlib.contextmanager
def _warnings_as_lines():
    """Print each distinct warning raised in the block once, as a yellow line: 'finite width:
    ...' for a FiniteWidthWarning, 'warning: ...' for any other (a command's user has no source
    line to look at: Python's format named one inside typer)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for w in caught:
        said = ("finite width" if issubclass(w.category, FiniteWidthWarning) else "warning",
                str(w.message))
        if said not in seen:
            seen.add(said)
            console.print(f"[yellow]{said[0]}: {escape(said[1])}[/]", highlight=False)


@app.command()
@_clean_errors
def simulate(sim: SimPath, output: Output,
             backend: Annotated[str, typer.Option(help="auto, numpy or cupy")] = "auto",
             width: Annotated[list[int] | None, typer.Option(
                 "--width", "-n", help="override the profile's widths")] = None,
             seeds: Annotated[int | None, typer.Option(
                 "--seeds", "-s", help="override the profile's seeds")] = None,
             profile: Profile = "quick"):
    """Monte Carlo of every case of a sim -> one Dataset (kind=montecarlo, dims seed, width)."""
    from sigprop.data import check_output
    from sigprop.pipeline.config import Sim
    from sigprop.pipeline.reproduce import save_quietly
    from sigprop.pipeline.runs import run_montecarlo

    check_output(output)
    s = Sim.load(sim)
    ds = run_montecarlo(s, profile, backend=backend, widths=width, seeds=seeds,
                        progress=_progress)
    save_quietly(ds, output)
    console.print(f"Monte Carlo of {s.name} ({profile}, backend {ds.attrs['backend']}): "
                  f"dims {dict(ds.sizes)} -> {output}")


@app.command()
@_clean_errors
def compare(theory_nc: Annotated[Path, typer.Argument(metavar="THEORY", help="theory .nc")],
            mc_nc: Annotated[Path, typer.Argument(metavar="MC", help="Monte Carlo .nc")],
            estimator: Annotated[str, typer.Option(
                help="auto, mean, lognormal, logmean, median")] = "auto",
            variable: Annotated[list[str] | None, typer.Option(
                "--variable", "-v", help="a variable to compare (repeat; default: q, mean, "
                "var, corr, grad_q, branch_q, weight_grad_q); also a spread of a theory at a "
                "width (var_log_q, var_corr, ...) against the run's variance across seeds")]
            = None,
            threshold: Annotated[float, typer.Option(
                help="|z| above which a point disagrees")] = 3.0,
            output: Annotated[Path | None, typer.Option(
                "--output", "-o", help="write the comparison Dataset")] = None,
            strict: Annotated[bool, typer.Option(
                help="exit 1 when a variable is flagged")] = False):
    """z-scores of Monte Carlo against theory per variable and layer, as a table."""
    from sigprop.analysis.compare import compare as run_compare
    from sigprop.analysis.compare import print_table
    from sigprop.data import check_output, load, write

    if output is not None:
        output = check_output(output)
    cmp = run_compare(load(theory_nc), load(mc_nc), variables=variable or None,
                      estimator=estimator)
    rows = print_table(cmp, threshold, console)
    if output is not None:
        console.print(f"comparison -> {write(cmp, output)}")
    if strict and any(r["flag"] == "DISAGREE" for r in rows):
        raise typer.Exit(1)


def _label_value(text: str, coords: list):
    """A label given on the command line as the datasets' coordinates ``coords`` hold it: the
    text (without quotes around it) where they hold strings, else an int, a float or the text."""
    if any(c.dtype.kind in "OSU" for c in coords):
        quoted = len(text) > 1 and text[0] == text[-1] and text[0] in "'\""
        return text[1:-1] if quoted else text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@app.command()
@_clean_errors
def plot(datasets: Annotated[list[Path], typer.Argument(
             metavar="DATASET...", help="a theory .nc and/or a Monte Carlo .nc (by its seed dim)")],
         output: Annotated[Path, typer.Option("--output", "-o", help="fig.pdf, .png or .svg")],
         var: Annotated[str, typer.Option(help="the variable: q, grad_q, corr, ...")] = "q",
         x: Annotated[str, typer.Option(help="the dim along the x axis")] = "layer",
         hue: Annotated[str | None, typer.Option(help="a dim drawn as colours")] = None,
         col: Annotated[str | None, typer.Option(help="a dim drawn as panel columns")] = None,
         row: Annotated[str | None, typer.Option(help="a dim drawn as panel rows")] = None,
         sel: Annotated[list[str] | None, typer.Option(
             help="fix a dim: DIM=LABEL (repeatable)")] = None,
         estimator: Annotated[str, typer.Option(help="Monte Carlo: auto, mean, lognormal, "
                                                     "logmean, median")] = "auto",
         xscale: Annotated[str, typer.Option(help="auto, linear or log")] = "auto",
         yscale: Annotated[str, typer.Option(help="auto, linear or log")] = "auto"):
    """Draw a variable of theory and Monte Carlo datasets (sp.plot).

    Theory as lines, Monte Carlo as points with +-2 SE bands."""
    from sigprop.analysis.plot import plot as draw
    from sigprop.analysis.plot import savefig
    from sigprop.data import load

    loaded = {"theory": [], "mc": []}
    for path in datasets:
        ds = load(path)
        loaded["mc" if "seed" in ds.dims else "theory"].append(ds)
    if any(len(v) > 1 for v in loaded.values()):
        raise ConfigError("DATASET", [str(d) for d in datasets], "at most one theory and one "
                          "Monte Carlo dataset (a Monte Carlo one has a 'seed' dim)")
    fixed = {}
    for item in sel or ():
        dim, eq, label = (part.strip() for part in item.partition("="))
        if not eq or not dim:
            raise ConfigError("--sel", item, "DIM=LABEL, e.g. --sel width=256")
        if dim in fixed:
            raise ConfigError("--sel", item, f"one --sel per dim ({dim} is fixed twice)")
        coords = [ds[dim] for v in loaded.values() for ds in v if dim in ds.coords]
        fixed[dim] = _label_value(label, coords)
    fig = draw(*(v[0] if v else None for v in loaded.values()), var=var, x=x, hue=hue, col=col,
               row=row, sel=fixed, estimator=estimator, xscale=xscale, yscale=yscale)
    console.print(f"{var} -> {savefig(fig, output)}")


@app.command()
@_clean_errors
def reproduce(profile: Profile = "quick",
              force: Annotated[bool, typer.Option("--force", help="recompute every step")] = False,
              dry_run: Annotated[bool, typer.Option(
                  "--dry-run", help="list what would run")] = False,
              only: Annotated[list[str] | None, typer.Option(
                  "--only", help="a figure or sim name (repeatable)")] = None,
              backend: Annotated[str, typer.Option(help="Monte Carlo backend")] = "auto",
              derive_: Annotated[bool, typer.Option(
                  "--derive/--no-derive", help="run the symbolic derivations")] = True,
              paper: Annotated[bool, typer.Option(
                  "--paper/--no-paper", help="claims table and PDF")] = True,
              cache_dir: Annotated[Path | None, typer.Option(
                  help="default: $SIGPROP_CACHE (relative to this folder), else .sigprop-cache in "
                       "the project folder")] = None,
              allow_partial: Annotated[bool, typer.Option(
                  "--allow-partial", help="exit 0 even when a step failed")] = False,
              root: Annotated[Path | None, typer.Option(
                  help="the project folder (default: found from here upwards: the folder "
                       "with pyproject.toml and sims/)")] = None):
    """Every sim -> every figure -> the paper PDF; unchanged steps are skipped.

    Every sims/*.toml runs, and the figures it declares (\\[\\[figure]]) are drawn into
    paper/figures/. A sims file that does not load is reported and skipped (exit 1 at the end).
    Exit codes: 0 done; 1 a step failed (not cached; it reruns next time); 2 bad input;
    128 + n stopped by signal n (130 Ctrl-C, 143 SIGTERM), with nothing half-done cached.
    """
    import os
    import signal

    from sigprop.data import check_writable
    from sigprop.pipeline.cache import DEFAULT_DIR, Cache
    from sigprop.pipeline.processes import interrupts
    from sigprop.pipeline.reproduce import Run, find_root
    from sigprop.pipeline.reproduce import reproduce as run_all

    if root is not None and not (root / "sims").is_dir():
        raise ConfigError("--root", str(root), "a folder with sims/<name>.toml")
    # --cache-dir, else $SIGPROP_CACHE, each relative to this folder (resolved before the move
    # to the root: a relative SIGPROP_CACHE was checked here and used there), else the root's
    chosen = cache_dir
    if cache_dir is not None:
        check_writable("--cache-dir", cache_dir, folder=True)
    elif os.environ.get("SIGPROP_CACHE"):
        chosen = Path(os.environ["SIGPROP_CACHE"])
        check_writable("SIGPROP_CACHE", chosen, folder=True)
    root = (root or find_root()).resolve()
    cache = Cache(chosen.resolve() if chosen is not None else root / DEFAULT_DIR)
    if root != Path.cwd().resolve():
        console.print(f"project root: {root}", highlight=False)
    here = os.getcwd()
    os.chdir(root)  # sims/, paper/, derivations/ and the default cache are relative to it
    try:
        run = Run(profile=profile, force=force, dry_run=dry_run, only=tuple(only or ()),
                  backend=backend, derive=derive_, paper=paper, cache=cache, console=console)
        with interrupts() as received:
            try:
                run_all(run)
            except KeyboardInterrupt:
                signum = received.get("signal", signal.SIGINT)
                console.print(f"[bold red]interrupted ({signal.Signals(signum).name})[/]: "
                              "stopped; nothing half-done was cached, a rerun resumes")
                raise typer.Exit(128 + signum) from None
    finally:
        os.chdir(here)
    if run.failed and not allow_partial:
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)  # --help goes to bench's own parser, which lists its options
@_clean_errors
def bench(ctx: typer.Context):
    """Benchmarks (sigprop.pipeline.bench.main); `sigprop bench --help` lists the options."""
    try:
        from sigprop.pipeline.bench import main
    except ImportError:
        raise SigpropError("sigprop.pipeline.bench is not available in this checkout") from None
    takes_args = bool(inspect.signature(main).parameters)
    result = main(list(ctx.args)) if takes_args else main()
    if isinstance(result, int) and result:
        raise typer.Exit(result)


@app.command()
@_clean_errors
def derive(names: Annotated[list[str] | None, typer.Argument(
               help="derivations (default: all)")] = None,
           out: Annotated[Path, typer.Option("--out", help="output folder")] = Path(
               "paper/generated"),
           slow: Annotated[bool, typer.Option("--slow", help="also the long checks")] = False):
    """Run the symbolic derivations -> paper/generated/<name>.tex and .json."""
    from sigprop.data import check_writable
    from sigprop.pipeline.processes import die_with_parent

    die_with_parent()
    try:
        from sigprop.symbolic import derivation_names, run_one, summary
    except ImportError:
        raise SigpropError("sigprop.symbolic is not available in this checkout") from None
    known = derivation_names()
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise ConfigError("derivation", unknown[0], f"one of {', '.join(known)}")
    check_writable("--out", out, folder=True)
    failed = 0
    for name in _progress(names or known, "derivations"):
        d = run_one(name, out, slow)
        console.print(summary(d), highlight=False, markup=False)  # ([ok] is text, not a tag)
        failed += not d.verified
    if failed:
        console.print(f"[bold red]{failed} derivation(s) not verified")
        raise typer.Exit(1)



@app.command()
@_clean_errors
def sweep(sim: SimPath,
          store: Annotated[Path, typer.Option(
              "--output", "-o", help="the sim's zarr store (a rerun resumes it)")],
          scheduler: Annotated[str | None, typer.Option(
              help="a dask scheduler to run on, e.g. tcp://host:8786")] = None,
          local: Annotated[int | None, typer.Option(
              help="run on a dask LocalCluster of N worker processes")] = None,
          grid_chunk: Annotated[int | None, typer.Option(
              help="theory: sweep points per task along each sweep dim (default all)")] = None,
          seed_chunk: Annotated[int | None, typer.Option(
              help="Monte Carlo: seeds per task (default all)")] = None,
          theory_: Annotated[bool, typer.Option("--theory/--no-theory")] = True,
          montecarlo: Annotated[bool | None, typer.Option(
              "--montecarlo/--no-montecarlo", help="default: when the profile has seeds")] = None,
          backend: Annotated[str, typer.Option(help="Monte Carlo: auto, numpy or cupy")] = "auto",
          width: Annotated[list[int] | None, typer.Option(
              "--width", "-n", help="override the profile's widths")] = None,
          seeds: Annotated[int | None, typer.Option(
              "--seeds", "-s", help="override the profile's seeds")] = None,
          overwrite: Annotated[bool, typer.Option(
              help="discard a store holding another sweep")] = False,
          export: Annotated[Path | None, typer.Option(
              help="then write <dir>/<sim>.<kind>.nc")] = None,
          profile: Profile = "quick"):
    """A sim as tasks on dask (or here) -> one zarr store, resumable; sp.sweep_load reads it."""
    from sigprop.data import check_output, save
    from sigprop.pipeline.sweep import SweepFailed, sweep_load, sweep_run

    if export is not None:  # (checked after the run, it failed once the work was done)
        check_output(export / f"{sim.stem}.theory.nc")
    try:
        report = sweep_run(sim, store, profile=profile, theory=theory_, montecarlo=montecarlo,
                           scheduler=scheduler, local=local, grid_chunk=grid_chunk,
                           seed_chunk=seed_chunk, backend=backend, widths=width, seeds=seeds,
                           overwrite=overwrite, progress=True)
    except SweepFailed as e:
        console.print(f"[bold red]{escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None
    for kind, total in report.total.items():
        console.print(f"{kind}: {total} chunks, {report.skipped[kind]} already done, "
                      f"{report.computed[kind]} computed -> {report.store}/{kind}")
        if export is not None:
            path = save(sweep_load(report.store, kind), export / f"{sim.stem}.{kind}.nc")
            console.print(f"  -> {path}")


if __name__ == "__main__":  # pragma: no cover
    app()
