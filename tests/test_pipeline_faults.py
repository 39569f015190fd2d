"""reproduce under faults: flipped bytes and truncated outputs, failed steps and derivations,
edited imported modules, kill -9 at random points, two concurrent runs, Ctrl-C / SIGTERM.

Every run here is the tiny ``finite_width`` sim of tests/test_reproduce.py in tmp_path (a few
seconds). The subprocess tests run the real ``sigprop`` command; their fast versions run a
couple of trials and the slow suite (``make test-all``) runs 20.
"""

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from rich.console import Console
from test_reproduce import TINY
from typer.testing import CliRunner

import sigprop.pipeline.reproduce as rep
from sigprop.data import checksum, load, stale_temporaries
from sigprop.figures import FIGURES
from sigprop.pipeline import cache as cachemod
from sigprop.pipeline.cache import Cache
from sigprop.pipeline.cli import app
from sigprop.symbolic import derivation

SIGPROP = [sys.executable, "-m", "sigprop.pipeline.cli"]
REPRODUCE = [*SIGPROP, "reproduce", "--only", "finite_width", "--cache-dir", "c"]
GOOD = """
from sigprop.symbolic import Derivation
def derive(slow=False, quick=False):
    d = Derivation("good", "a derivation that verifies")
    d.check("zero error", 0.0, 1e-12)
    return d
"""
BAD = """
def derive(slow=False, quick=False):
    raise RuntimeError("this derivation crashes")
"""
SLOW = """
import os, time
from pathlib import Path
def derive(slow=False, quick=False):
    Path(os.environ["SIGPROP_TEST_PIDFILE"]).write_text(str(os.getpid()))
    time.sleep(600)
"""


@pytest.fixture()
def project(tmp_path, monkeypatch):
    (tmp_path / "sims").mkdir()
    (tmp_path / "sims" / "finite_width.toml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    # the code version read once: an edit of the checkout while the suite runs must not
    # turn the "cached" these tests expect into "ran"
    version = cachemod.code_version()
    monkeypatch.setattr(cachemod, "code_version", lambda *_, **__: version)
    return tmp_path


@pytest.fixture()
def scripts(tmp_path, monkeypatch):
    """Derivation scripts of our own: one verifies, one crashes, one never ends."""
    folder = tmp_path / "derivations"
    folder.mkdir()
    for name, text in (("good", GOOD), ("bad", BAD), ("slow", SLOW)):
        (folder / f"{name}.py").write_text(text)
    monkeypatch.setenv("SIGPROP_DERIVATIONS", str(folder))
    monkeypatch.setenv("SIGPROP_TEST_PIDFILE", str(tmp_path / "slow.pid"))
    monkeypatch.setattr(derivation, "DERIVATIONS_DIR", folder)
    return folder


def run(project, **kw):
    opts = {"only": ("finite_width",), "derive": False, "cache": Cache(project / "c"),
            "console": Console(width=1000, record=True)}  # (a message on one line, whatever
    # the tmp path's length: a longer user name or pytest-xdist's worker folder split one)
    r = rep.Run(**{**opts, **kw})
    rows = {name: status for name, status, _ in rep.reproduce(r)}
    return rows, r.console.export_text(), r


def signature(root: Path) -> dict[str, str]:
    """What a run produced, minus what legitimately differs between runs (creation times)."""
    out = {}
    for p in sorted((root / "paper" / "figures").glob("*")):
        data = p.read_bytes()
        if p.suffix == ".pdf":
            data = re.sub(rb"/CreationDate \(.*?\)", b"", data)
        out[p.name] = hashlib.sha256(data).hexdigest()
    for p in sorted((root / "c").glob("*/*.nc")):
        out[p.parent.name] = checksum(load(p).assign_attrs(created_at="", history=""))
    return out


def stamped_outputs(root: Path) -> list[Path]:
    cache = Cache(root / "c")
    return [Path(o) for s in sorted((root / "c" / "stamps").glob("*.json"))
            for o in cache.outputs(s.stem)]


def test_flipped_byte_or_truncation_of_any_cached_output_is_recomputed(project):
    rows, _, _ = run(project)
    assert set(rows.values()) == {"ran", "skipped: --no-derive"}
    reference = signature(project)
    outputs = stamped_outputs(project)
    assert len(outputs) == 5  # theory, Monte Carlo, figure pdf, png, caption
    for i, path in enumerate(outputs):
        data = bytearray(path.read_bytes())
        if i % 2:
            data = data[: len(data) // 2]  # truncated, as by a kill mid-write
        else:
            data[len(data) // 2] ^= 0x01  # one flipped bit
        path.write_bytes(bytes(data))
        rows, text, r = run(project)
        assert "does not match its recorded hash" in text and str(path) in text, text
        assert not r.failed and sum(s == "ran" for s in rows.values()) >= 1, rows
        assert signature(project) == reference, path


def test_failed_step_is_shown_not_cached_and_rerun(project, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the Monte Carlo engine broke")

    working = rep.run_montecarlo
    monkeypatch.setattr(rep, "run_montecarlo", broken)
    runner = CliRunner()
    args = ["reproduce", "--only", "finite_width", "--no-derive", "--cache-dir", "c"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "2 step(s) failed: simulate finite_width, figure finite_width" in text
    assert "not cached" in text
    assert not (project / "c" / "stamps" / "simulate finite_width.json").exists()
    assert not (project / "c" / "stamps" / "figure finite_width.json").exists()
    assert (project / "c" / "logs" / "simulate_finite_width.log").read_text().count("broke")
    assert runner.invoke(app, [*args, "--allow-partial"]).exit_code == 0
    monkeypatch.setattr(rep, "run_montecarlo", working)
    rows, _, r = run(project)
    assert rows["simulate finite_width"] == "ran" and rows["figure finite_width"] == "ran"
    assert rows["theory finite_width"] == "cached" and not r.failed


def test_step_warnings_and_bracketed_errors_are_shown_as_written(project, monkeypatch):
    """A step's warnings are printed once each as its notes (not as raw Python warnings), and
    a failure text with [brackets] reaches the table whole (rich markup would eat '[names]')."""
    def warns(*args, **kwargs):
        warnings.warn("carried by rare events [see typical_log_grad_q]", UserWarning,
                      stacklevel=1)
        warnings.warn("carried by rare events [see typical_log_grad_q]", UserWarning,
                      stacklevel=1)
        raise ValueError("give it `sweeps = [names]` or an [arch.sweeps] table")

    monkeypatch.setattr(rep, "run_montecarlo", warns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping the step would raise here
        _, text, _ = run(project)
    text = " ".join(text.split())
    assert text.count("UserWarning: carried by rare events [see typical_log_grad_q]") == 1
    assert "`sweeps = [names]` or an [arch.sweeps] table" in text


def test_failed_and_timed_out_derivations_are_not_cached(project, scripts):
    rows, _, r = run(project, derive=True, derive_timeout=30.0)
    logs = project / "c" / "derive"
    assert rows["derive good"] == "ran", (logs / "good.log").read_text()  # why, if it ever fails
    assert rows["derive bad"].startswith("failed: not verified"), rows
    assert rows["derive slow"].startswith("failed: stopped after 30 s"), rows
    assert set(r.failed) == {"derive bad", "derive slow"}
    rows, _, _ = run(project, derive=True, dry_run=True)
    assert rows["derive good"] == "cached"
    assert rows["derive bad"] == rows["derive slow"] == "would run"


def test_editing_an_imported_module_redraws_the_figures_that_import_it(project, monkeypatch):
    closure = {p.relative_to(cachemod.PACKAGE).as_posix()
               for p in cachemod.import_closure("sigprop.figures.gradient")}
    assert {"figures/gradient.py", "figures/variance.py", "analysis/plots.py"} <= closure
    assert "figures/meanshift.py" not in closure
    copy = project / "pkg" / "sigprop"
    shutil.copytree(cachemod.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cachemod, "PACKAGE", copy)

    def keys():
        return {f: cachemod.closure_digest(f"sigprop.figures.{f}") for f in FIGURES}

    before = keys()
    with open(copy / "figures" / "variance.py", "a") as fh:
        fh.write("\n# restyled\n")
    assert {f for f, k in keys().items() if k != before[f]} == {"variance", "gradient"}
    run(project)
    with open(copy / "analysis" / "plots.py", "a") as fh:  # imported by every figure
        fh.write("\n# restyled\n")
    rows, _, _ = run(project)
    assert rows["figure finite_width"] == "ran" and rows["simulate finite_width"] == "cached"


def test_derive_names_cannot_leave_their_folder(tmp_path):
    out = tmp_path / "generated"
    for name in ("../../escaped", "nosuch"):
        result = CliRunner().invoke(app, ["derive", name, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "preln_q_linear" in result.output  # the known names are listed
    assert not out.exists() and not list(tmp_path.parent.glob("escaped*"))


# -- subprocesses: kill -9, concurrency, interrupts -------------------------------------------

def _spawn(cwd, *extra, env=None):
    return subprocess.Popen([*REPRODUCE, *extra], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


def _finish(cwd, *extra):
    proc = _spawn(cwd, "--no-derive", *extra)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def _project(path: Path) -> Path:
    (path / "sims").mkdir(parents=True)
    (path / "sims" / "finite_width.toml").write_text(TINY)
    return path


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("trials", [pytest.param(2, id="2 trials"),
                                    pytest.param(20, id="20 trials", marks=pytest.mark.slow)])
def test_kill_9_at_random_points_then_rerun_equals_an_uninterrupted_run(tmp_path, trials):
    reference = _project(tmp_path / "reference")
    start = time.perf_counter()
    _finish(reference)
    full = time.perf_counter() - start
    expected = signature(reference)
    work = _project(tmp_path / "work")
    rng = random.Random(20261202)  # fixed: a failure reproduces
    for trial in range(trials):
        # odd trials kill a --force run, i.e. while complete outputs are being rewritten
        proc = _spawn(work, "--no-derive", *(("--force",) if trial % 2 else ()))
        time.sleep(rng.uniform(0.0, full))
        proc.kill()
        proc.wait()
        _finish(work)
        assert signature(work) == expected, f"trial {trial}"
        assert not stale_temporaries(work), f"trial {trial}"


def test_two_concurrent_runs_both_succeed_with_identical_outputs(tmp_path):
    reference = _project(tmp_path / "reference")
    _finish(reference)
    work = _project(tmp_path / "work")
    procs = [_spawn(work, "--no-derive") for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert any("waiting for the run that holds" in " ".join(o.split()) for o in outs), outs
    assert signature(work) == signature(reference)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                          (signal.SIGKILL, -signal.SIGKILL)])
def test_interrupt_stops_promptly_and_leaves_no_child(tmp_path, scripts, signum, code):
    work = _project(tmp_path / "work")
    pidfile = Path(os.environ["SIGPROP_TEST_PIDFILE"])
    (scripts / "bad.py").unlink()  # only the never-ending derivation, and the good one
    proc = _spawn(work)
    deadline = time.monotonic() + 120
    while not (pidfile.exists() and pidfile.read_text().strip()):  # (write_text creates the
        # file before it writes: a loaded machine read it empty once)
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.1)
    child = int(pidfile.read_text())
    os.killpg(proc.pid, signum)  # like a terminal: the whole foreground group
    start = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    assert time.monotonic() - start < 10  # seconds, not the derivation's 600
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:  # SIGKILL: the child's death signal
        time.sleep(0.1)
    assert not _alive(child)
    assert not (work / "c" / "stamps" / "derive slow.json").exists()
