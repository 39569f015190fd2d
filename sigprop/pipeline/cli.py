"""The ``sigprop`` command line (typer): theory, simulate, compare, reproduce, bench, derive.

Every command turns a :class:`sigprop.SigpropError` into one red line and exit code 2 (no
traceback): a bad sims file names the file, the key and the allowed values.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sigprop.errors import ConfigError, SigpropError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Signal propagation through deep residual networks: theory, Monte Carlo, "
                       "comparison, figures and the paper.")
console = Console()
Profile = Annotated[str, typer.Option("--profile", "-p",
                                      help="quick (2-core CPU) or paper (one GPU)")]
SimPath = Annotated[Path, typer.Argument(help="sims/<name>.toml")]
Output = Annotated[Path, typer.Option("--output", "-o", help="output .nc or .zarr")]

def _clean_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SigpropError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def _progress(items, what):
    from rich.progress import track

    return track(items, description=what, transient=True, console=console)


@app.command()
@_clean_errors
def theory(sim: SimPath, output: Output, profile: Profile = "quick"):
    """Infinite-width theory of every case of a sim -> one Dataset (kind=theory)."""
    from sigprop.data import check_output, unsupported_of
    from sigprop.pipeline.config import Sim
    from sigprop.pipeline.reproduce import save_quietly
    from sigprop.pipeline.runs import run_theory

    check_output(output)
    s = Sim.load(sim)
    ds = run_theory(s, profile, _progress)
    save_quietly(ds, output)
    for case, why in unsupported_of(ds).items():
        console.print(f"[yellow]no theory for {case}[/]: {why}")
    console.print(f"theory of {s.name} ({profile}): dims {dict(ds.sizes)} -> {output}")


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
            threshold: Annotated[float, typer.Option(
                help="|z| above which a point disagrees")] = 3.0,
            output: Annotated[Path | None, typer.Option(
                "--output", "-o", help="write the comparison Dataset")] = None,
            strict: Annotated[bool, typer.Option(
                help="exit 1 when a variable is flagged")] = False):
    """z-scores of Monte Carlo against theory per variable and layer, as a table."""
    from sigprop.analysis.compare import compare as run_compare
    from sigprop.analysis.compare import print_table
    from sigprop.data import load

    cmp = run_compare(load(theory_nc), load(mc_nc), estimator=estimator)
    rows = print_table(cmp, threshold, console)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        cmp.to_netcdf(output, engine="h5netcdf")
        console.print(f"comparison -> {output}")
    if strict and any(r["flag"] == "DISAGREE" for r in rows):
        raise typer.Exit(1)


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
                  help="default .sigprop-cache")] = None,
              allow_partial: Annotated[bool, typer.Option(
                  "--allow-partial", help="exit 0 even when a step failed")] = False):
    """Every sim -> every figure -> the paper PDF; unchanged steps are skipped.

    Exit codes: 0 done; 1 a step failed (not cached; it reruns next time); 2 bad input;
    128 + n stopped by signal n (130 Ctrl-C, 143 SIGTERM), with nothing half-done cached.
    """
    import signal

    from sigprop.pipeline.cache import Cache
    from sigprop.pipeline.config import PROFILES
    from sigprop.pipeline.processes import interrupts
    from sigprop.pipeline.reproduce import Run
    from sigprop.pipeline.reproduce import reproduce as run_all

    if profile not in PROFILES:
        raise SigpropError(f"--profile {profile!r} is invalid; allowed: {', '.join(PROFILES)}")
    run = Run(profile=profile, force=force, dry_run=dry_run, only=tuple(only or ()),
              backend=backend, derive=derive_, paper=paper, cache=Cache(cache_dir),
              console=console)
    with interrupts() as received:
        try:
            run_all(run)
        except KeyboardInterrupt:
            signum = received.get("signal", signal.SIGINT)
            console.print(f"[bold red]interrupted ({signal.Signals(signum).name})[/]: stopped; "
                          "nothing half-done was cached, a rerun resumes")
            raise typer.Exit(128 + signum) from None
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
    failed = 0
    for name in _progress(names or known, "derivations"):
        d = run_one(name, out, slow)
        console.print(summary(d), highlight=False)
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
    from sigprop.data import save
    from sigprop.pipeline.sweep import SweepFailed, sweep_load, sweep_run

    try:
        report = sweep_run(sim, store, profile=profile, theory=theory_, montecarlo=montecarlo,
                           scheduler=scheduler, local=local, grid_chunk=grid_chunk,
                           seed_chunk=seed_chunk, backend=backend, widths=width, seeds=seeds,
                           overwrite=overwrite, progress=True)
    except SweepFailed as e:
        console.print(f"[bold red]{e}", highlight=False)
        raise typer.Exit(1) from None
    for kind, total in report.total.items():
        console.print(f"{kind}: {total} chunks, {report.skipped[kind]} already done, "
                      f"{report.computed[kind]} computed -> {report.store}/{kind}")
        if export is not None:
            path = save(sweep_load(report.store, kind), export / f"{sim.stem}.{kind}.nc")
            console.print(f"  -> {path}")


if __name__ == "__main__":  # pragma: no cover
    app()
