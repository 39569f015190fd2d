"""``sigprop reproduce``: derivations -> every sim (theory, Monte Carlo) -> every figure -> PDF.

Every ``sims/*.toml`` runs (under ``--profile``; a sim that does not define that profile is
listed as skipped), and each figure a sim declares (``[[figure]]``, see
:class:`sigprop.pipeline.config.FigureSpec`) is drawn by :func:`sigprop.plot` into
``paper/figures/<name>.pdf`` beside the paper's own figures (:mod:`sigprop.figures`). A sims
file that does not load is reported as a failed step and skipped while the others run.

Each step is skipped when the hash of what it depends on is unchanged (:mod:`sigprop.pipeline.cache`):
simulations are keyed on (resolved sim config, compute code version), figures on (the import
closure of their module, the keys of their data, the generated equations), the PDF on its
sources. So a second run with nothing changed recomputes nothing, and restyling a figure
redraws it without rerunning a simulation. Outputs are written atomically and stamped last
with their hashes; a failed, timed-out or interrupted step is never stamped (it is shown as
failed and reruns next time), and the whole run holds the cache's lock. Missing collaborators degrade gracefully and say so: without
:mod:`sigprop.engines.montecarlo` figures show theory only; without :mod:`sigprop.symbolic` the paper
prints "not generated" notes; without ``latexmk`` the PDF is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import track
from rich.table import Table

from sigprop.data import load, remove_stale_temporaries, save
from sigprop.errors import ConfigError, SigpropError
from sigprop.figures import FIGURES, has_numbers, module, render
from sigprop.pipeline import cache as cachemod
from sigprop.pipeline.config import FigureSpec, Sim, SimConfigError, load_each
from sigprop.pipeline.processes import child_env, kill_group
from sigprop.pipeline.runs import check_backend, run_montecarlo, run_theory

PAPER = Path("paper")
QUICK_DERIVE_TIMEOUT = 720.0  # the quick profile must finish on a 2-core CPU in < 15 min (its
# derivations, one core while the sims take the other: block_recursions alone measured 407 s
# with the other core busy, and stopped at 480 s under a load of 4)
TEX_HINT = ("install TeX to build it, e.g. apt-get install -y latexmk texlive-latex-base "
            "texlive-latex-recommended texlive-latex-extra")


def find_root(start=None) -> Path:
    """The project root: the nearest folder at or above ``start`` (default: the working folder)
    holding ``pyproject.toml`` and ``sims/``, else the nearest holding ``sims/``."""
    here = Path(start or Path.cwd()).resolve()
    above = (here, *here.parents)
    for found in ([f for f in above if (f / "pyproject.toml").is_file() and (f / "sims").is_dir()]
                  or [f for f in above if (f / "sims").is_dir()]):
        return found
    raise ConfigError("project root", str(here), "a folder with sims/<name>.toml (and "
                      "pyproject.toml), this one or one above it; or give --root")


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

    def __post_init__(self):
        if self.derive_timeout is None and self.profile == "quick":
            self.derive_timeout = QUICK_DERIVE_TIMEOUT

    @property
    def failed(self) -> list[str]:
        """Steps that failed (or could not run because a step they need failed)."""
        return [name for name, status, _ in self.rows if status.startswith(FAILED)]

    def todo(self, name: str, key: str) -> str | None:
        """Why ``name`` must run under ``key``, or None (recorded as 'cached' or 'would run');
        a stamped output that no longer matches its hash is said and recomputed."""
        why = "--force" if self.force else self.cache.stale(name, key)
        if why is None:
            self.rows.append((name, "cached", 0.0))
            return None
        if why.startswith("output "):
            self.console.log(f"[yellow]{name}: {why}: recomputing")
        if self.dry_run:
            self.rows.append((name, "would run", 0.0))
            return None
        return why

    def step(self, name: str, key: str, fn, outputs=()) -> str:
        """Run ``fn`` unless ``name`` is fresh under ``key``; stamp it only when it succeeded.

        Returns 'cached', 'would run', 'ran' or 'failed' (an exception in ``fn``: shown in the
        table with its log, never stamped, so the next run retries it).
        """
        why = self.todo(name, key)
        if why is None:
            return self.rows[-1][1]
        start = time.perf_counter()
        self.console.log(f"[bold]{name}[/]: running ({escape(why)})")
        caught = []
        try:
            with warnings.catch_warnings(record=True) as caught:  # shown as the step's notes
                warnings.simplefilter("always")
                fn()
            self.cache.mark(name, key, outputs() if callable(outputs) else list(outputs))
        except Exception as e:  # noqa: BLE001  (any failure of a step is reported, not cached)
            self.fail(name, f"{type(e).__name__}: {e}", time.perf_counter() - start,
                      traceback.format_exc())
            return FAILED
        finally:
            for w in {str(w.message): w for w in caught}.values():
                self.console.log(f"[yellow]{name}: {w.category.__name__}[/]: "
                                 f"{escape(str(w.message))}", highlight=False)
        self.rows.append((name, "ran", time.perf_counter() - start))
        return "ran"

    def fail(self, name: str, why: str, seconds: float = 0.0, log: str | None = None):
        """Record a failed step (with its traceback in ``<cache>/logs/`` when given)."""
        if log is not None:
            path = self.cache.root / "logs" / f"{name.replace(' ', '_')}.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(log)
            why = f"{why.splitlines()[0] if why else ''} (log: {path})"
        self.rows.append((name, f"{FAILED}: {why}", seconds))

    def note(self, name: str, why: str):
        self.rows.append((name, f"skipped: {why}", 0.0))


FAILED = "failed"


def reproduce(run: Run) -> list[tuple[str, str, float]]:
    """Every step, in order, under the cache's lock; returns (step, status, seconds) rows (also
    printed). A failed step is in ``run.failed``; an interrupt cancels the derivations and
    propagates, with nothing half-done stamped."""
    start = time.perf_counter()
    check_backend(run.backend)
    sims, broken = load_each(run.sims_dir)
    profiles = sorted({p for s in sims.values() for p in s.spec.profiles})
    if sims and run.profile not in profiles:
        raise ConfigError("--profile", run.profile, f"a profile that a sim defines: "
                          f"{', '.join(profiles)}")
    for name in [n for n, s in sims.items() if run.profile in s.spec.profiles]:
        try:  # (the labels of the profile's depth and widths: checked before any step runs)
            sims[name].check_figures(run.profile)
        except SigpropError as e:
            broken[name] = e
            del sims[name]
    own = _own_figures(sims, broken)
    known = tuple(dict.fromkeys((*FIGURES, *own, *sims, *broken)))
    unknown = [o for o in run.only if o not in known]
    if unknown:
        why = "".join(f"; sim {n} does not load ({e})" for n, e in broken.items())
        raise ConfigError("--only", unknown[0], f"a figure or sim name: {', '.join(known)}{why}")

    def wanted(name, sim):
        return not run.only or name in run.only or sim in run.only

    figures = [f for f in FIGURES if wanted(f, module(f).SIM)]
    absent = {f: module(f).SIM for f in figures if module(f).SIM not in (*sims, *broken)}
    asked = [f for f in absent if f in run.only]
    if asked:  # a paper figure asked for by name; otherwise (a project of one's own) skipped
        raise SigpropError(f"figure {asked[0]} needs sims/{absent[asked[0]]}.toml, which is not "
                           f"in {run.sims_dir}/")
    figures = [f for f in figures if f not in absent]
    own = {n: (sim, spec) for n, (sim, spec) in own.items() if wanted(n, sim)}
    needed = {module(f).SIM for f in figures} | {sim for sim, _ in own.values()} | {
        s for s in (*sims, *broken) if wanted(s, s)}
    generated = run.paper_dir / "generated"
    figures_dir = run.paper_dir / "figures"

    # a dry run writes nothing, so it neither takes the lock nor creates the cache
    with contextlib.nullcontext() if run.dry_run else run.cache.lock(log=run.console.log):
        for folder in () if run.dry_run else (generated, figures_dir):
            remove_stale_temporaries(folder)
        pool = _start_derive(run, generated, needed=bool(figures) or not run.only)
        try:
            keys = {name: _simulate(run, sims.get(name), broken.get(name), name)
                    for name in sorted(needed)}
            if pool is not None:
                run.console.log("waiting for the derivations")
                pool.finish()
        except BaseException:
            if pool is not None:
                pool.cancel()
            raise
        for name in figures:
            _figure(run, name, keys[module(name).SIM], generated, figures_dir)
        for name, (sim, spec) in own.items():
            _own_figure(run, name, sims[sim], spec, keys[sim], figures_dir)
        for name, sim in absent.items() if (run.paper_dir / "main.tex").is_file() else ():
            run.note(f"figure {name}", f"no {run.sims_dir}/{sim}.toml")  # (the paper's project)
        if run.paper and not run.only and (absent or not (run.paper_dir / "main.tex").is_file()):
            run.note("paper", f"needs {run.paper_dir}/main.tex and every paper figure's sim")
        elif run.paper and not run.only:
            _agreement(run, sims, keys, figures_dir)
            _claims(run, keys, figures_dir)
            _derivation_list(run, generated, figures_dir)
            _run_status(run, figures_dir)
            _pdf(run)
    _report(run, time.perf_counter() - start)
    return run.rows


# -- steps ------------------------------------------------------------------------------------

def _start_derive(run: Run, generated: Path, needed: bool = True) -> DerivePool | None:
    """Start the derivations that are not fresh in subprocesses (beside the sims, on the other
    core); returns their pool, or None when there is nothing to run.

    Each derivation is its own step (``derive NAME``), keyed on the compute code and its
    script; one that fails its checks, crashes or is stopped at ``run.derive_timeout`` is
    recorded as failed and not stamped. Not ``needed``: ``--only`` selects no paper figure.
    """
    if not run.derive or not needed:
        run.note("derive", "--no-derive" if not run.derive else "no paper figure in --only")
        return None
    from sigprop.symbolic import derivation

    code = cachemod.code_version()
    keys = {n: cachemod.digest(code, cachemod.file_digest(derivation.DERIVATIONS_DIR / f"{n}.py"))
            for n in derivation.derivation_names()}
    todo = [n for n, key in keys.items() if run.todo(f"derive {n}", key)]
    if not todo:
        return None
    logs = run.cache.root / "derive"
    logs.mkdir(parents=True, exist_ok=True)
    run.console.log(f"[bold]derive[/]: running {len(todo)} derivations in the background "
                    f"(logs: {logs}/)")
    return DerivePool(run, {n: keys[n] for n in _longest_first(todo, generated)}, generated, logs)


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

    ``jobs`` starts at 1 (one core for the derivations while the sims use the other) and is
    raised by :meth:`finish`; past ``run.derive_timeout`` seconds the running ones are stopped
    and the rest skipped. Each child leads its own process group (a terminal's Ctrl-C reaches
    only this process, which stops them all) and dies with its parent (``PR_SET_PDEATHSIG``).
    """

    def __init__(self, run: Run, keys: dict[str, str], generated: Path, logs: Path, jobs: int = 1):
        self.run, self.keys, self.generated, self.logs = run, keys, generated, logs
        self.queue, self.jobs = list(keys), jobs
        self.timeout = run.derive_timeout
        self.outcome: dict[str, tuple[str, float]] = {}  # name -> (status, seconds)
        self.running: dict[str, tuple[subprocess.Popen, float]] = {}
        self.cancelled, self.done = threading.Event(), threading.Event()
        self.start = time.perf_counter()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _launch(self, name: str) -> subprocess.Popen:
        for old in (self.generated / f"{name}{suffix}" for suffix in (".tex", ".json")):
            old.unlink(missing_ok=True)  # (a run that fails or times out leaves none: a
            # referee found the paper built from the last run's laws)
        with open(self.logs / f"{name}.log", "w") as fh:
            return subprocess.Popen(
                [sys.executable, "-m", "sigprop.pipeline.cli", "derive", name, "--out",
                 str(self.generated)], stdout=fh, stderr=subprocess.STDOUT, env=child_env(),
                start_new_session=True)

    def _loop(self):
        try:
            self._schedule()
        finally:  # cancelled (or broken): stop what still runs
            for proc, _ in self.running.values():
                kill_group(proc)
                proc.wait()
            self.done.set()

    def _schedule(self):
        while (self.queue or self.running) and not self.cancelled.is_set():
            late = self.timeout is not None and time.perf_counter() - self.start > self.timeout
            for name, (proc, began) in list(self.running.items()):
                if late:
                    kill_group(proc)
                if proc.poll() is not None:
                    del self.running[name]
                    status = (f"{FAILED}: stopped after {self.timeout:.0f} s (run `sigprop derive "
                              f"{name}`)" if late else "ran" if proc.returncode == 0 else
                              f"{FAILED}: not verified (exit {proc.returncode}; log: "
                              f"{self.logs / name}.log)")
                    self.outcome[name] = (status, time.perf_counter() - began)
            if late:
                self.outcome.update({n: (f"{FAILED}: not started within {self.timeout:.0f} s", 0.0)
                                     for n in self.queue})
                self.queue = []
            while self.queue and len(self.running) < self.jobs and not self.cancelled.is_set():
                name = self.queue.pop(0)
                self.running[name] = (self._launch(name), time.perf_counter())
            time.sleep(0.05)

    def finish(self):
        """Use every core, wait for every derivation, then record each (stamping only those
        that ran and verified)."""
        self.jobs = os.cpu_count() or 1
        while not self.done.wait(0.5):  # (an interrupted Thread.join can report a live thread
            pass                        # as finished, so completion is an event of our own)
        for name, (status, seconds) in self.outcome.items():
            step = f"derive {name}"
            if status == "ran":
                outputs = [self.generated / f"{name}{s}" for s in (".tex", ".json")]
                try:
                    self.run.cache.mark(step, self.keys[name], outputs)
                except FileNotFoundError as e:
                    status = f"{FAILED}: {e}"
            self.run.rows.append((step, status, seconds))

    def cancel(self):
        """Stop every running derivation (their whole process groups) and start no other."""
        self.cancelled.set()
        self.done.wait(10)
        for proc, _ in list(self.running.values()):  # had the loop not stopped them
            kill_group(proc)


def _own_figures(sims: dict[str, Sim], broken: dict) -> dict[str, tuple[str, FigureSpec]]:
    """The figures the sims declare, by name -> (sim, spec). A sim whose figure name is taken
    (by a paper figure or another sim's figure) moves to ``broken``."""
    out: dict[str, tuple[str, FigureSpec]] = {}
    for name in list(sims):
        figures = sims[name].figures()
        taken = [f for f in figures if f in FIGURES or f in out]
        if taken:
            broken[name] = SimConfigError(sims.pop(name).path, "figure.name", taken[0],
                                          "a name no paper figure and no other sim's figure "
                                          "uses", "is taken")
            continue
        out.update({f: (name, spec) for f, spec in figures.items()})
    return out


SKIPPED = "skipped"  # a sim without the run's profile


def _simulate(run: Run, sim: Sim | None, error: Exception | None = None, name: str = ""):
    """Theory and Monte Carlo of one sim; returns the paths of the cached results, None when
    the sim did not load (``error``) or a step failed, or SKIPPED (no such profile)."""
    if sim is None:
        run.fail(f"load {name}", str(error))
        return None
    if run.profile not in sim.spec.profiles:
        run.note(f"sim {sim.name}", f"no profile {run.profile!r} in {sim.path}")
        return SKIPPED
    config, code = sim.config(run.profile), cachemod.code_version()
    out = {}
    key = cachemod.digest("theory", config, code)
    path = run.cache.data("theory", sim.name, key)
    status = run.step(f"theory {sim.name}", key,
                      lambda: save_quietly(run_theory(sim, run.profile, progress), path), [path])
    out["theory"] = path
    prof = sim.profile(run.profile)
    out["montecarlo"] = None
    if prof.montecarlo and any(a.montecarlo for a in sim.spec.arch):
        key = cachemod.digest("montecarlo", config, code)
        path = run.cache.data("montecarlo", sim.name, key)
        mc = run.step(f"simulate {sim.name}", key,
                      lambda: save_quietly(run_montecarlo(sim, run.profile, backend=run.backend,
                                                          progress=progress), path), [path])
        status = FAILED if FAILED in (status, mc) else status
        out["montecarlo"] = path
    return None if status == FAILED else out


def _figure(run: Run, name: str, data: dict | None, generated: Path, out_dir: Path):
    from sigprop.analysis.plots import FigureData

    step = f"figure {name}"
    if data is None or data == SKIPPED:
        _no_data(run, step, module(name).SIM, data)
        return
    mod = module(name)
    key = cachemod.digest(cachemod.closure_digest(mod.__name__),
                          cachemod.closure_digest("sigprop.figures"),
                          {k: str(v) for k, v in data.items()},
                          cachemod.file_digest(*sorted(generated.glob("*.json"))))

    def go():
        mc = load(data["montecarlo"]) if data["montecarlo"] else None
        with cachemod.staged(out_dir) as tmp:
            render(name, FigureData(load(data["theory"]), mc, generated), tmp)

    suffixes = (".pdf", ".png", ".caption.tex") + ((".numbers.tex",) if has_numbers(mod)
                                                    else ())
    run.step(step, key, go, [out_dir / f"{name}{s}" for s in suffixes])


def _no_data(run: Run, step: str, sim: str, data) -> None:
    if data == SKIPPED:
        run.note(step, f"sim {sim} has no profile {run.profile!r}")
    else:
        run.fail(step, f"sim {sim} failed")


def _own_figure(run: Run, name: str, sim: Sim, spec: FigureSpec, data, out_dir: Path):
    """A ``[[figure]]`` of a sim, drawn by :func:`sigprop.plot`; keyed on the plotting code,
    the spec and the data (so restyling redraws it without rerunning the sim)."""
    from sigprop.analysis import plots
    from sigprop.analysis.plot import plot

    step = f"figure {name}"
    if data is None or data == SKIPPED:
        _no_data(run, step, sim.name, data)
        return
    key = cachemod.digest(cachemod.closure_digest("sigprop.analysis.plot"),
                          spec.model_dump(mode="json"), {k: str(v) for k, v in data.items()})

    def go():
        mc = load(data["montecarlo"]) if data["montecarlo"] else None
        fig = plot(load(data["theory"]), mc, **spec.plot_kwargs())
        caption = spec.caption or f"{sim.spec.description} ({spec.var}; sims/{sim.name}.toml)."
        with cachemod.staged(out_dir) as tmp:
            plots.save(fig, name, tmp, caption)

    run.step(step, key, go, [out_dir / f"{name}{s}" for s in (".pdf", ".png", ".caption.tex")])


def _claims(run: Run, keys: dict, out_dir: Path):
    from sigprop.figures import claims

    needed = {s: keys[s] for s in claims.SIMS if s in keys and keys[s] != SKIPPED}
    failed = [s for s, d in needed.items() if d is None]
    if failed:
        run.fail("claims table", f"sims {', '.join(failed)} failed")
        return
    key = cachemod.digest(cachemod.closure_digest(claims.__name__),
                          {s: {k: str(v) for k, v in d.items()} for s, d in needed.items()})
    path = out_dir / "claims_table.tex"

    def go():
        datasets = {s: {k: load(v) if v else None for k, v in d.items()} for s, d in needed.items()}
        with cachemod.staged(out_dir) as tmp:
            claims.write_table(claims.audit(datasets), tmp / path.name)
            claims.write_numbers(datasets, tmp / numbers.name)  # the paper's \input numbers

    numbers = out_dir / "numbers.tex"
    run.step("claims table", key, go, [path, numbers])


def _agreement(run: Run, sims: dict, keys: dict, out_dir: Path):
    """``agreement.tex`` (rows in ``agreement.json``): sp.compare's verdict of each sim's theory
    against its Monte Carlo (:mod:`sigprop.figures.agreement`); a DISAGREE the sim does not
    declare (its ``disagree`` table) fails the run, after the table is written."""
    from sigprop.figures import agreement

    needed = {s: d for s, d in sorted(keys.items())
              if d not in (None, SKIPPED) and d.get("montecarlo")}
    declared = {s: sims[s].spec.model_dump(mode="json")["disagree"] for s in needed}
    key = cachemod.digest(cachemod.closure_digest(agreement.__name__), declared,
                          {s: {k: str(v) for k, v in d.items()} for s, d in needed.items()})
    path, rows_path = out_dir / "agreement.tex", out_dir / "agreement.json"

    def go():
        rows = agreement.verdicts({s: agreement.comparison(load(d["theory"]),
                                                           load(d["montecarlo"]), declared[s])
                                   for s, d in needed.items()})
        with cachemod.staged(out_dir) as tmp:
            (tmp / path.name).write_text(agreement.table(rows, declared))
            (tmp / rows_path.name).write_text(json.dumps(rows, indent=1))

    if run.step("agreement", key, go, [path, rows_path]) in (FAILED, "would run"):
        return
    bad = agreement.undeclared(json.loads(rows_path.read_text()), declared)
    if bad:
        run.fail("agreement check", f"theory and Monte Carlo disagree at {', '.join(bad)}, "
                 f"which no sim declares (a sim's `disagree` table: variable = reason); see "
                 f"{path}")


def _derivation_list(run: Run, generated: Path, out_dir: Path):
    """``derivations_list.tex``: one guarded ``\\derivation{name}{title}`` per script."""
    from sigprop.figures.claims import derivation_list

    scripts = sorted(Path("derivations").glob("[!_]*.py"))
    path = out_dir / "derivations_list.tex"
    key = cachemod.digest([p.name for p in scripts],
                          cachemod.file_digest(*sorted(generated.glob("*.json"))))

    def go():
        with cachemod.staged(out_dir) as tmp:
            (tmp / path.name).write_text(derivation_list([p.stem for p in scripts], generated))

    run.step("derivations list", key, go, [path])


def _run_status(run: Run, out_dir: Path):
    """``run_status.tex``, which the paper prints under its title: a red box naming the steps
    that failed in this run (the PDF is still built, from what there is), or nothing."""
    from sigprop.analysis.plots import latex_escape

    failed = run.failed
    text = "% Generated by sigprop reproduce: the steps that failed in the run that built this.\n"
    if failed:
        text += (r"\noindent\fbox{\parbox{0.97\linewidth}{\color{red}Built from a run in which "
                 r"these steps failed: " + latex_escape(", ".join(failed)) + "}}\n")
    if not run.dry_run:
        with cachemod.staged(out_dir) as tmp:
            (tmp / "run_status.tex").write_text(text)


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
        style = {"ran": "green", "cached": "dim"}.get(status, "red" if status.startswith(FAILED)
                                                      else "yellow")
        table.add_row(escape(name), escape(status), f"{t:.1f}", style=style)
    run.console.print(table)
    ran = [r for r in run.rows if r[1] == "ran"]
    if run.dry_run:
        todo = sum(r[1] == "would run" for r in run.rows)
        run.console.print(f"dry run: {todo} step(s) would run, nothing was computed.")
    if run.failed:
        run.console.print(f"[bold red]{len(run.failed)} step(s) failed: {', '.join(run.failed)}; "
                          "they are not cached and will run again next time.")
    elif run.dry_run:
        return
    elif not ran:
        run.console.print(f"[bold green]Everything is up to date: nothing was recomputed "
                          f"({seconds:.1f} s).")
    else:
        drawn = any(name.startswith("figure ") for name, _, _ in ran)
        where = f"{run.cache.root}/" + (f", figures in {run.paper_dir}/figures/" if drawn else "")
        run.console.print(f"[bold]{len(ran)} step(s) ran in {seconds:.1f} s; results in {where}.")
