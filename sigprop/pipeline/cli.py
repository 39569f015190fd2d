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

from sigprop.errors import SigpropError

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
    from sigprop.data import unsupported_of
    from sigprop.pipeline.config import Sim
    from sigprop.pipeline.reproduce import save_quietly
    from sigprop.pipeline.runs import run_theory

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
    from sigprop.pipeline.config import Sim
    from sigprop.pipeline.reproduce import save_quietly
    from sigprop.pipeline.runs import run_montecarlo

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
                  help="default .sigprop-cache")] = None):
    """Every sim -> every figure -> the paper PDF; unchanged steps are skipped."""
    from sigprop.pipeline.cache import Cache
    from sigprop.pipeline.config import PROFILES
    from sigprop.pipeline.reproduce import Run
    from sigprop.pipeline.reproduce import reproduce as run_all

    if profile not in PROFILES:
        raise SigpropError(f"--profile {profile!r} is invalid; allowed: {', '.join(PROFILES)}")
    run_all(Run(profile=profile, force=force, dry_run=dry_run, only=tuple(only or ()),
                backend=backend, derive=derive_, paper=paper, cache=Cache(cache_dir),
                console=console))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_clean_errors
def bench(ctx: typer.Context):
    """Benchmarks (sigprop.pipeline.bench.main); extra arguments are passed through."""
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
    try:
        from sigprop.symbolic import derivation_names, run_one, summary
    except ImportError:
        raise SigpropError("sigprop.symbolic is not available in this checkout") from None
    failed = 0
    for name in _progress(names or derivation_names(), "derivations"):
        d = run_one(name, out, slow)
        console.print(summary(d), highlight=False)
        failed += not d.verified
    if failed:
        console.print(f"[bold red]{failed} derivation(s) not verified")
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
