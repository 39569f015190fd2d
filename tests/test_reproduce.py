"""reproduce: a second run with nothing changed recomputes nothing; --force and --dry-run."""

from pathlib import Path

import pytest
from rich.console import Console

from sigprop.pipeline import cache as cachemod
from sigprop.pipeline.cache import Cache
from sigprop.pipeline.reproduce import Run, reproduce

ROOT = Path(__file__).resolve().parent.parent
TINY = """
description = "finite width, tiny"
[[arch]]
label = "plain ReLU"
preset = "plain"
act = "relu"
[inputs]
q = 1.0
n = 1
[profiles.quick]
depth = 4
widths = [16, 32]
seeds = 8
[profiles.paper]
depth = 8
"""


@pytest.fixture()
def project(tmp_path, monkeypatch):
    (tmp_path / "sims").mkdir()
    (tmp_path / "sims" / "finite_width.toml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(project, **kw):
    opts = {"only": ("finite_width",), "derive": False, "cache": Cache(project / "cache"),
            "console": Console(width=150, record=True)}
    opts.update(kw)
    r = Run(**opts)
    rows = {name: status for name, status, _ in reproduce(r)}
    return rows, r.console.export_text()


def test_cached_dry_forced_redrawn_and_config_change(project):
    rows, _ = run(project)
    assert rows["theory finite_width"] == "ran" and rows["figure finite_width"] == "ran"
    figure = project / "paper" / "figures" / "finite_width.pdf"
    assert figure.stat().st_size > 0
    rows, text = run(project)  # nothing changed: nothing recomputed, and it says so
    assert set(rows.values()) <= {"cached", "skipped: --no-derive"}
    assert "nothing was recomputed" in text
    figure.unlink()  # a lost figure is redrawn without rerunning the sim
    rows, _ = run(project, dry_run=True)
    assert rows["figure finite_width"] == "would run" and rows["theory finite_width"] == "cached"
    assert not figure.exists()
    rows, _ = run(project)
    assert rows["figure finite_width"] == "ran" and rows["simulate finite_width"] == "cached"
    rows, _ = run(project, force=True, dry_run=True)
    assert rows["theory finite_width"] == "would run"
    path = project / "sims" / "finite_width.toml"
    path.write_text(path.read_text().replace("seeds = 8", "seeds = 6"))
    rows, _ = run(project)
    assert rows["simulate finite_width"] == "ran"  # the config is part of the key


def test_code_version_ignores_presentation_code():
    names = {p.name for p in cachemod.sources()}
    assert "theory.py" in names and "plots.py" not in names and "cli.py" not in names
    assert not any("figures" in str(p) for p in cachemod.sources())
    assert cachemod.code_version() != cachemod.code_version(exclude=())


def test_missing_latexmk_is_a_clear_note_not_an_error(project, monkeypatch):
    import sigprop.pipeline.reproduce as rep

    monkeypatch.setattr(rep.shutil, "which", lambda name: None)
    r = Run(cache=Cache(project / "cache"), console=Console(record=True))
    rep._pdf(r)
    (name, status, _), = r.rows
    assert name == "paper PDF" and status.startswith("skipped: latexmk") and "apt-get" in status
