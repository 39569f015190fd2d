"""``sigprop reproduce``: derivations -> every sim (theory, Monte Carlo) -> every figure -> PDF.

Each step is skipped when the hash of what it depends on is unchanged (:mod:`sigprop.pipeline.cache`):
simulations are keyed on (resolved sim config, compute code version), figures on (figure code,
shared style, the keys of their data, the generated equations), the PDF on its sources. So a
second run with nothing changed recomputes nothing, and restyling a figure redraws it without
rerunning a simulation. Missing collaborators degrade gracefully and say so: without
:mod:`sigprop.engines.montecarlo` figures show theory only; without :mod:`sigprop.symbolic` the paper
prints "not generated" notes; without ``latexmk`` the PDF is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from sigprop.data import load, save
from sigprop.errors import SigpropError
from sigprop.figures import FIGURES, module, render
from sigprop.pipeline import cache as cachemod
from sigprop.pipeline.config import Sim, load_all
from sigprop.pipeline.runs import run_montecarlo, run_theory

PAPER = Path("paper")
QUICK_DERIVE_TIMEOUT = 480.0  # the quick profile must finish on a 2-core CPU in < 15 min
TEX_HINT = ("install TeX to build it, e.g. apt-get install -y latexmk texlive-latex-base "
            "texlive-latex-recommended texlive-latex-extra")


def save_quietly(ds, path):
    """:func:`sigprop.save` without h5netcdf's notice about its (lossless) invalid_netcdf mode."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*invalid netcdf features.*")
        return save(ds, path)


def progress(items, what):
    """A rich progress bar with ETA over ``items``."""
    return track(items, description=what, transient=True)


@dataclass
class Run:
    """Options and bookkeeping of one reproduce run."""

    profile: str = "quick"
    force: bool = False
    dry_run: bool = False
    only: tuple[str, ...] = ()
    backend: str = "auto"
    paper: bool = True
    derive: bool = True
    derive_timeout: float | None = None  # seconds; None: wait for every derivation
    sims_dir: Path = Path("sims")
    paper_dir: Path = PAPER
    cache: cachemod.Cache = field(default_factory=cachemod.Cache)
    console: Console = field(default_factory=Console)
    rows: list[tuple[str, str, float]] = field(default_factory=list)

    def step(self, name: str, key: str, fn, outputs=()):
        """Run ``fn`` unless ``name`` is fresh under ``key``; record the outcome."""
        if not self.force and self.cache.fresh(name, key):
            self.rows.append((name, "cached", 0.0))
            return "cached"
        if self.dry_run:
            self.rows.append((name, "would run", 0.0))
            return "would run"
        start = time.perf_counter()
        self.console.log(f"[bold]{name}[/]: running")
        result = fn()
        written = outputs() if callable(outputs) else list(outputs)
        if result is not False:
            self.cache.mark(name, key, written)
        status = "ran" if result is not False else "skipped"
        self.rows.append((name, status, time.perf_counter() - start))
        return status

    def __post_init__(self):
        if self.derive_timeout is None and self.profile == "quick":
            self.derive_timeout = QUICK_DERIVE_TIMEOUT

    def note(self, name: str, why: str):
        self.rows.append((name, f"skipped: {why}", 0.0))


def reproduce(run: Run) -> list[tuple[str, str, float]]:
    """Every step, in order; returns (step, status, seconds) rows (also printed)."""
    start = time.perf_counter()
    sims = load_all(run.sims_dir)
    figures = [f for f in FIGURES if not run.only or f in run.only or module(f).SIM in run.only]
    needed = {module(f).SIM for f in figures}
    missing = needed - set(sims)
    if missing:
        raise SigpropError(f"figures need sims {sorted(missing)} that are not in {run.sims_dir}/")
    generated = run.paper_dir / "generated"
    figures_dir = run.paper_dir / "figures"

    wait_derive = _start_derive(run, generated)
    try:
        keys = {name: _simulate(run, sims[name]) for name in sorted(needed)}
    finally:
        if wait_derive is not None:
            run.console.log("waiting for the derivations")
            wait_derive()
    for name in figures:
        _figure(run, name, keys[module(name).SIM], generated, figures_dir)
    if run.paper and not run.only:
        _claims(run, keys, figures_dir)
        _derivation_list(run, generated, figures_dir)
        _pdf(run)
    _report(run, time.perf_counter() - start)
    return run.rows


# -- steps ------------------------------------------------------------------------------------

def _start_derive(run: Run, generated: Path):
    """Start the derivations in subprocesses (beside the sims, on the other core).

    Returns a function that waits for them (at most ``run.derive_timeout`` seconds) and
    records the step, or None when there is nothing to wait for.
    """
    if not run.derive:
        run.note("derive", "--no-derive")
        return None
    from sigprop import symbolic

    names = symbolic.derivation_names()
    scripts = [symbolic.DERIVATIONS_DIR / f"{n}.py" for n in names]
    key = cachemod.digest(cachemod.code_version(), cachemod.file_digest(*scripts))
    if not run.force and run.cache.fresh("derive", key):
        run.rows.append(("derive", "cached", 0.0))
        return None
    if run.dry_run:
        run.rows.append(("derive", "would run", 0.0))
        return None
    logs = run.cache.root / "derive"
    logs.mkdir(parents=True, exist_ok=True)
    pool = DerivePool(_longest_first(names, generated), generated, logs, run.derive_timeout)
    run.console.log(f"[bold]derive[/]: running {len(names)} derivations in the background "
                    f"(logs: {logs}/)")

    def finish():
        pool.jobs = os.cpu_count() or 1  # the sims are done: use every core
        failed, stopped = pool.wait()
        status = "ran"
        if failed:
            status = f"ran; not verified: {', '.join(failed)} (logs in {logs}/)"
        if stopped:
            status = (f"stopped after {run.derive_timeout:.0f} s, not run: {', '.join(stopped)} "
                      "(run `sigprop derive NAME`)")
        outputs = [p for n in names for p in (generated / f"{n}.tex", generated / f"{n}.json")
                   if p.exists()]
        run.cache.mark("derive", key, outputs)
        run.rows.append(("derive", status, pool.seconds))

    return finish


def _longest_first(names: list[str], generated: Path) -> list[str]:
    """Order derivations by their last recorded duration, longest first (unknown: first)."""
    def last(name):
        try:
            return json.loads((generated / f"{name}.json").read_text())["seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            return float("inf")

    return sorted(names, key=last, reverse=True)


class DerivePool:
    """``sigprop derive NAME`` subprocesses, at most ``jobs`` at a time, in a background thread.

    ``jobs`` starts at 1 (one core for the derivations while the sims use the other) and may be
    raised later; past ``timeout`` seconds the running ones are stopped and the rest skipped.
    """

    def __init__(self, names, generated, logs: Path, timeout=None, jobs: int = 1):
        self.queue, self.generated, self.logs = list(names), generated, logs
        self.timeout, self.jobs = timeout, jobs
        self.failed: list[str] = []
        self.stopped: list[str] = []
        self.start = time.perf_counter()
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        running: dict[str, subprocess.Popen] = {}
        while self.queue or running:
            late = self.timeout is not None and time.perf_counter() - self.start > self.timeout
            for name, proc in list(running.items()):
                if late:
                    proc.kill()
                if proc.poll() is not None:
                    del running[name]
                    (self.stopped if late else self.failed if proc.returncode else []).append(name)
            if late:
                self.stopped += self.queue
                self.queue = []
            while self.queue and len(running) < self.jobs:
                name = self.queue.pop(0)
                with open(self.logs / f"{name}.log", "w") as fh:
                    running[name] = subprocess.Popen(
                        [sys.executable, "-m", "sigprop.pipeline.cli", "derive", name, "--out",
                         str(self.generated)], stdout=fh, stderr=subprocess.STDOUT)
            time.sleep(0.2)
        self.seconds = time.perf_counter() - self.start

    def wait(self) -> tuple[list[str], list[str]]:
        """Block until every derivation ended; returns (not verified, stopped or skipped)."""
        self.thread.join()
        return self.failed, self.stopped


def _simulate(run: Run, sim: Sim) -> dict[str, Path | None]:
    """Theory and Monte Carlo of one sim; returns the paths of the cached results."""
    config, code = sim.config(run.profile), cachemod.code_version()
    out = {}
    key = cachemod.digest("theory", config, code)
    path = run.cache.data("theory", sim.name, key)
    run.step(f"theory {sim.name}", key,
             lambda: save_quietly(run_theory(sim, run.profile, progress), path), [path])
    out["theory"] = path
    prof = sim.profile(run.profile)
    out["montecarlo"] = None
    if not prof.montecarlo or not any(a.montecarlo for a in sim.spec.arch):
        return out
    key = cachemod.digest("montecarlo", config, code)
    path = run.cache.data("montecarlo", sim.name, key)
    run.step(f"simulate {sim.name}", key,
             lambda: save_quietly(run_montecarlo(sim, run.profile, backend=run.backend,
                                         progress=progress), path), [path])
    out["montecarlo"] = path
    return out


def _figure(run: Run, name: str, data: dict, generated: Path, out_dir: Path):
    from sigprop.analysis.plots import FigureData

    mod = module(name)
    code = cachemod.file_digest(mod.__file__, *(cachemod.PACKAGE / f for f in
                                                 ("analysis/plots.py", "analysis/compare.py", "figures/__init__.py")))
    key = cachemod.digest(code, {k: str(v) for k, v in data.items()},
                          cachemod.file_digest(*sorted(generated.glob("*.json"))))

    def go():
        mc = load(data["montecarlo"]) if data["montecarlo"] else None
        render(name, FigureData(load(data["theory"]), mc, generated), out_dir)

    run.step(f"figure {name}", key, go,
             [out_dir / f"{name}{s}" for s in (".pdf", ".png", ".caption.tex")])


def _claims(run: Run, keys: dict, out_dir: Path):
    from sigprop.figures import claims

    needed = {s: keys[s] for s in claims.SIMS if s in keys}
    key = cachemod.digest(cachemod.file_digest(claims.__file__),
                          {s: {k: str(v) for k, v in d.items()} for s, d in needed.items()})
    path = out_dir / "claims_table.tex"

    def go():
        datasets = {s: {k: load(v) if v else None for k, v in d.items()} for s, d in needed.items()}
        claims.write_table(claims.audit(datasets), path)

    run.step("claims table", key, go, [path])


def _derivation_list(run: Run, generated: Path, out_dir: Path):
    """``derivations_list.tex``: one guarded ``\\derivation{name}{title}`` per script."""
    from sigprop.figures.claims import derivation_list

    scripts = sorted(Path("derivations").glob("[!_]*.py"))
    path = out_dir / "derivations_list.tex"
    key = cachemod.digest([p.name for p in scripts],
                          cachemod.file_digest(*sorted(generated.glob("*.json"))))
    run.step("derivations list", key,
             lambda: path.write_text(derivation_list([p.stem for p in scripts], generated)),
             [path])


def _pdf(run: Run):
    paper = run.paper_dir
    latexmk = shutil.which("latexmk")
    if latexmk is None or shutil.which("pdflatex") is None:
        run.note("paper PDF", f"latexmk/pdflatex not found; {TEX_HINT}")
        return
    sources = sorted(p for p in paper.rglob("*") if p.is_file() and p.suffix in
                     (".tex", ".pdf", ".png", ".bib") and p.name != "main.pdf")
    key = cachemod.file_digest(*sources)

    def go():
        cmd = [latexmk, "-g", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "main.tex"]
        res = subprocess.run(cmd, cwd=paper, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            tail = "\n".join(res.stdout.splitlines()[-25:])
            raise SigpropError(f"latexmk failed (paper/main.log has the details):\n{tail}")

    run.step("paper PDF", key, go, [paper / "main.pdf"])


def _report(run: Run, seconds: float):
    table = Table(title=f"reproduce --profile {run.profile}")
    for col in ("step", "status", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for name, status, t in run.rows:
        style = "green" if status == "ran" else ("dim" if status == "cached" else "yellow")
        table.add_row(name, status, f"{t:.1f}", style=style)
    run.console.print(table)
    ran = [r for r in run.rows if r[1] == "ran"]
    if run.dry_run:
        todo = sum(r[1] == "would run" for r in run.rows)
        run.console.print(f"dry run: {todo} step(s) would run, nothing was computed.")
    elif not ran:
        run.console.print(f"[bold green]Everything is up to date: nothing was recomputed "
                          f"({seconds:.1f} s).")
    else:
        run.console.print(f"[bold]{len(ran)} step(s) ran in {seconds:.1f} s; results in "
                          f"{run.cache.root}/, figures in {run.paper_dir / 'figures'}/.")
