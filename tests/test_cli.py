"""The sigprop CLI through typer's CliRunner: theory, simulate, compare, errors, derive, bench."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import sigprop as sp
from sigprop.pipeline.cli import app

runner = CliRunner()
TINY = """
description = "tiny"
[[arch]]
label = "Pre-LN"
preset = "preln"
act = "relu"
[[arch]]
preset = "resnet"
act = "relu"
alpha = "1/sqrt(L)"
[inputs]
q = 1.0
corr = 0.5
n = 2
[profiles.quick]
depth = 4
widths = [32]
seeds = 4
[profiles.paper]
depth = 8
widths = [64]
seeds = 8
"""


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_theory_simulate_compare_round_trip(tiny, tmp_path):
    th, mc, cmp = tmp_path / "th.nc", tmp_path / "mc.nc", tmp_path / "cmp.nc"
    r = invoke("theory", tiny, "-o", th)
    assert r.exit_code == 0, r.output
    assert sp.load(th).sizes["arch"] == 2
    r = invoke("simulate", tiny, "-o", mc, "--backend", "numpy", "--width", 16, "--seeds", 3)
    assert r.exit_code == 0, r.output
    ds = sp.load(mc)
    assert ds.sizes["seed"] == 3 and list(ds["width"].values) == [16]
    r = invoke("compare", th, mc, "-o", cmp)
    assert r.exit_code == 0, r.output
    assert "theory vs Monte Carlo" in r.output and cmp.is_file()


def test_paper_profile_and_bad_profile(tiny, tmp_path):
    r = invoke("theory", tiny, "-o", tmp_path / "p.nc", "--profile", "paper")
    assert r.exit_code == 0 and sp.load(tmp_path / "p.nc").sizes["layer"] == 9
    r = invoke("theory", tiny, "-o", tmp_path / "x.nc", "--profile", "huge")
    assert r.exit_code == 2 and "profile" in r.output and "quick" in r.output


def test_bad_config_is_one_clean_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("depth = 4", "depth = 4\nwidht = 3"))
    r = invoke("theory", bad, "-o", tmp_path / "o.nc")
    assert r.exit_code == 2
    assert "bad.toml" in r.output and "widht" in r.output and "widths" in r.output
    assert "Traceback" not in r.output


def test_compare_rejects_two_theories(tiny, tmp_path):
    th = tmp_path / "th.nc"
    invoke("theory", tiny, "-o", th)
    r = invoke("compare", th, th)
    assert r.exit_code == 2 and "seed" in r.output


def test_reproduce_dry_run_lists_steps(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sims").symlink_to(root / "sims")
    r = invoke("reproduce", "--dry-run", "--no-derive", "--cache-dir", tmp_path / "cache")
    assert r.exit_code == 0, r.output
    assert "would run" in r.output and "nothing was computed" in r.output
    assert not (tmp_path / "cache").exists()


def test_derive_and_bench_commands_exist():
    for cmd in ("derive", "bench", "reproduce", "simulate", "theory", "compare"):
        r = invoke(cmd, "--help")
        assert r.exit_code == 0, (cmd, r.output)
