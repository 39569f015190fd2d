"""The sigprop CLI through typer's CliRunner: theory, simulate, compare, errors, derive, bench."""

import inspect
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
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
    from sigprop.data import file_hash

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
    assert (tmp_path / "cmp.nc.sha256").read_text().split()[0] == file_hash(cmp)
    r = invoke("compare", th, mc, "-o", tmp_path / "cmp.txt")  # (HDF5 under any suffix)
    assert r.exit_code == 2 and ".nc" in r.output and not (tmp_path / "cmp.txt").exists()


def test_compare_a_spread_from_the_command_line(tiny, tmp_path):
    """--variable picks what is compared: a spread of a theory at a width against the run's
    variance across seeds, beside a plain variable."""
    th, mc, cmp = tmp_path / "th.nc", tmp_path / "mc.nc", tmp_path / "cmp.nc"
    assert invoke("theory", tiny, "-o", th, "--width", 16).exit_code == 0
    r = invoke("simulate", tiny, "-o", mc, "--backend", "numpy", "--width", 16, "--seeds", 16)
    assert r.exit_code == 0, r.output
    r = invoke("compare", th, mc, "-o", cmp, "--variable", "var_log_q", "-v", "q")
    assert r.exit_code == 0, r.output
    out = xr.open_dataset(cmp, engine="h5netcdf")
    assert set(out.data_vars) == {"q", "var_log_q"} and out.var_log_q.attrs["estimator"] == "spread"


def test_compare_refuses_runs_of_another_sim(tiny, tmp_path):
    """A sim's datasets have no net in their config, so compare said 'not checked' and compared
    a relu theory with a tanh run (and corr 0.5 with 0.9); now their arch specs and inputs are
    checked, and a run of the same archs and inputs from another sim file passes."""
    th = tmp_path / "th.nc"
    assert invoke("theory", tiny, "-o", th).exit_code == 0
    for old, new, said in (('act = "relu"\n[[arch]]', 'act = "tanh"\n[[arch]]',
                            "architecture differs"),
                           ("corr = 0.5", "corr = 0.9", "inputs differ"),
                           ('description = "tiny"', 'description = "another"', None)):
        other, mc = tmp_path / "other.toml", tmp_path / "mc.nc"
        other.write_text(TINY.replace(old, new))
        r = invoke("simulate", other, "-o", mc, "--backend", "numpy", "--seeds", 2)
        assert r.exit_code == 0, r.output
        r = invoke("compare", th, mc)
        if said is None:
            assert r.exit_code == 0 and "theory vs Monte Carlo" in r.output, r.output
        else:
            assert r.exit_code == 2 and said in r.output, r.output
    paper = tmp_path / "paper.nc"  # depth 8: the resnet's alpha = 1/sqrt(L) is another net
    assert invoke("simulate", tiny, "-o", paper, "--backend", "numpy", "--seeds", 2,
                  "--profile", "paper").exit_code == 0
    r = invoke("compare", th, paper)
    assert r.exit_code == 2 and "profile depth" in r.output, r.output
    from sigprop.analysis.compare import compare

    same = tmp_path / "same.nc"
    assert invoke("simulate", tiny, "-o", same, "--backend", "numpy", "--seeds", 2).exit_code == 0
    theory, run = sp.load(th), sp.load(same)
    assert "q" in compare(theory.sel(layer=3), run, variables=["q"])  # (None - int, a crash)
    cut = compare(theory.isel(layer=[1, 2, 3]), run, variables=["grad_q"], prefix=True)
    assert "grad_q" in cut and not [k for k in cut.attrs if k.startswith("skipped")]


def test_paper_profile_and_bad_profile(tiny, tmp_path):
    r = invoke("theory", tiny, "-o", tmp_path / "p.nc", "--profile", "paper")
    assert r.exit_code == 0 and sp.load(tmp_path / "p.nc").sizes["layer"] == 9
    r = invoke("theory", tiny, "-o", tmp_path / "x.nc", "--profile", "huge")
    assert r.exit_code == 2 and "profile" in r.output and "quick" in r.output


def test_theory_refused_for_memory_stops_the_run(tiny, tmp_path, monkeypatch):
    """sigprop theory made each case's ConfigError (the memory refusal among them) a NaN grid
    of the refused size and exited 0; a net of depth 1e8 then grew until the machine ran out of
    memory (a review's find). The refusal now ends the run with exit 2 and no file."""
    monkeypatch.setenv("SIGPROP_MEMORY_FRACTION", "1e-12")
    out = tmp_path / "th.nc"
    r = invoke("theory", tiny, "-o", out)
    assert r.exit_code == 2 and "memory" in r.output and not out.exists()


def test_what_a_newcomers_review_found_is_one_clean_error(tiny, tmp_path):
    """--seeds 0 ran the profile's seeds (exit 0) and --seeds -3 was reported as 0; --threshold
    -1 printed a nominal rate of 1.67 and exit 0; an output path under a file gave a Python
    traceback (FileExistsError). Each is now one line and exit 2 naming what is wrong."""
    r = invoke("simulate", tiny, "-o", tmp_path / "m.nc", "--backend", "numpy", "--seeds", 0)
    assert r.exit_code == 2 and "seeds" in r.output, r.output
    r = invoke("simulate", tiny, "-o", tmp_path / "m.nc", "--backend", "numpy", "--seeds", -3)
    assert r.exit_code == 2 and "-3" in r.output, r.output
    th, mc = tmp_path / "th.nc", tmp_path / "mc.nc"
    assert invoke("theory", tiny, "-o", th).exit_code == 0
    assert invoke("simulate", tiny, "-o", mc, "--backend", "numpy", "--width", 16,
                  "--seeds", 3).exit_code == 0
    for bad in (-1, 0):
        r = invoke("compare", th, mc, "--threshold", bad)
        assert r.exit_code == 2 and "threshold" in r.output, r.output
    r = invoke("plot", th, mc, "--var", "q", "-o", th / "p.pdf")  # (th is a file)
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output, r.output
    cmp = tmp_path / "cmp.nc"  # (sigprop's own comparison file was read back as "corrupt")
    assert invoke("compare", th, mc, "-o", cmp).exit_code == 0
    r = invoke("plot", cmp, "--var", "q", "-o", tmp_path / "p.pdf")
    assert r.exit_code == 2 and "comparison" in r.output and "Corrupt" not in r.output, r.output


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


def test_the_theory_command_is_not_listed_as_infinite_width_only():
    """`sigprop --help` listed `theory` as "Infinite-width theory of every case", though its
    --width N adds the finite-width corrections and spreads."""
    listing = " ".join(invoke("--help").output.split())
    assert "Infinite-width theory" not in listing and "--width N" in listing, listing
    r = invoke("theory", "--help")
    assert "--width" in r.output and "spreads" in " ".join(r.output.split()), r.output


def test_cli_starts_without_heavy_modules():
    """`sigprop --help`/`--version` must start fast: importing the CLI (and so sigprop's
    __init__, which the console script imports first) loads none of the heavy libraries."""
    import subprocess
    import sys

    heavy = ("numpy", "xarray", "scipy", "sympy", "matplotlib", "pydantic")
    code = ("import sys, sigprop, sigprop.pipeline.cli; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_version_and_lazy_public_names():
    from importlib import metadata

    r = invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == f"sigprop {metadata.version('sigprop')}"
    assert set(sp.__all__) <= set(dir(sp))
    for name in sp.__all__:  # every public name resolves, to the object its module defines
        assert getattr(sp, name) is not None
    assert callable(sp.theory) and callable(sp.compare) and callable(sp.plot)
    assert sp.presets.__name__ == "sigprop.presets"
    with pytest.raises(AttributeError):
        sp.no_such_name  # noqa: B018


@pytest.fixture()
def th_mc(tiny, tmp_path):
    th, mc = tmp_path / "th.nc", tmp_path / "mc.nc"
    assert invoke("theory", tiny, "-o", th).exit_code == 0
    r = invoke("simulate", tiny, "-o", mc, "--backend", "numpy", "--width", 16, "--seeds", 3)
    assert r.exit_code == 0, r.output
    return th, mc


def test_plot_command_writes_the_figure(th_mc, tmp_path):
    th, mc = th_mc
    fig = tmp_path / "out" / "fig.pdf"
    r = invoke("plot", th, mc, "--var", "grad_q", "--hue", "arch", "-o", fig)
    assert r.exit_code == 0, r.output
    assert fig.read_bytes().startswith(b"%PDF")
    r = invoke("plot", th, "--var", "corr", "--hue", "arch", "-o", tmp_path / "c.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")


def test_plot_command_routes_datasets_and_options_to_sp_plot(th_mc, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    import sigprop.analysis.plot as plot_module

    seen = {}

    def spy(theory, mc=None, **kw):
        seen.update(theory=theory, mc=mc, **kw)
        return plt.figure()

    monkeypatch.setattr(plot_module, "plot", spy)
    th, mc = th_mc
    r = invoke("plot", mc, th, "--var", "q", "--x", "layer", "--col", "arch",
               "--sel", "input=1", "--sel", "width=16", "--yscale", "log", "-o", tmp_path / "f.svg")
    assert r.exit_code == 0, r.output
    assert "seed" not in seen["theory"].dims and "seed" in seen["mc"].dims  # order-free
    assert seen["sel"] == {"input": 1, "width": 16} and seen["col"] == "arch"
    assert seen["yscale"] == "log" and seen["hue"] is None


def test_plot_command_sel_takes_labels_as_the_dataset_holds_them(tmp_path, monkeypatch):
    """Arch labels "1" and "2" (strings that look like numbers): --sel arch=1 and arch="2" give
    the strings (they gave ints, refused), a numeric dim still an int."""
    import matplotlib.pyplot as plt

    import sigprop.analysis.plot as plot_module

    path, th = tmp_path / "nl.toml", tmp_path / "nl.nc"
    path.write_text(TINY.replace('label = "Pre-LN"', 'label = "1"')
                    .replace('preset = "resnet"', 'label = "2"\npreset = "resnet"'))
    assert invoke("theory", path, "-o", th).exit_code == 0
    seen = []
    monkeypatch.setattr(plot_module, "plot", lambda *a, **kw: seen.append(kw) or plt.figure())
    for sel, label in (("arch=1", "1"), ('arch="2"', "2"), ("arch='1'", "1")):
        r = invoke("plot", th, "--sel", sel, "--sel", "input=1", "-o", tmp_path / "x.png")
        assert r.exit_code == 0, r.output
        assert seen[-1]["sel"] == {"arch": label, "input": 1}


@pytest.mark.parametrize("args, says", [
    (("--var", "gradq"), "grad_q"),
    (("--sel", "width"), "DIM=LABEL"),
    (("--hue", "nope"), "arch"),
    (("--sel", "input=0", "--sel", "input=1"), "input is fixed twice"),
])
def test_plot_command_errors_are_one_line(th_mc, tmp_path, args, says):
    th, mc = th_mc
    r = invoke("plot", th, mc, *args, "-o", tmp_path / "f.pdf")
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
    r = invoke("plot", th, th, "-o", tmp_path / "f.pdf")
    assert r.exit_code == 2 and "at most one theory" in r.output
    r = invoke("plot", th, "-o", tmp_path / "f.xyz")
    assert r.exit_code == 2 and ".pdf" in r.output


def test_reproduce_from_a_subfolder_reports_a_broken_sim_and_exits_1(tiny, tmp_path,
                                                                     monkeypatch):
    project = tmp_path / "project"
    (project / "sims").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    (project / "sims" / "mine.toml").write_text(tiny.read_text())
    (project / "sims" / "half.toml").write_text("description = 'half-wr")
    (project / "paper").mkdir()
    monkeypatch.chdir(project / "paper")
    cache = tmp_path / "cache"
    r = invoke("reproduce", "--dry-run", "--no-derive", "--cache-dir", cache)
    assert r.exit_code == 1, r.output
    assert f"project root: {project.resolve()}" in r.output
    assert "load half" in r.output and "step(s) failed: load half" in " ".join(r.output.split())
    assert "theory mine" in r.output and "would run" in r.output  # the others still run
    r = invoke("reproduce", "--dry-run", "--no-derive", "--only", "mien")
    assert r.exit_code == 2 and "'mien'" in r.output and "mine" in r.output, r.output
    monkeypatch.chdir(tmp_path)
    r = invoke("reproduce", "--dry-run", "--no-derive", "--only", "mine", "--root", project)
    assert r.exit_code == 0 and "theory mine" in r.output, r.output
    r = invoke("reproduce", "--dry-run", "--root", tmp_path / "nowhere")
    assert r.exit_code == 2 and "--root" in r.output


BATCHNORM_B2 = """
description = "Pre-BN at batch 2"
[[arch]]
label = "Pre-BN"
preset = "prebn"
act = "relu"
[inputs]
q = 1.0
corr = 0.5
n = 2
law = "gaussian"
[profiles.quick]
depth = 16
"""

MEAN_STREAM = """
description = "mean-carrying stream x + relu(W x) / sqrt(L)"
[[arch]]
preset = "resnet"
act = "relu"
shape = "dense_act"
alpha = "1/sqrt(L)"
[inputs]
q = 1.0
n = 1
[profiles.quick]
depth = 64
"""


@pytest.mark.parametrize(("toml", "args", "says"), [
    (BATCHNORM_B2, [], "Pre-BN: BatchNorm at batch B = 2"),
    (MEAN_STREAM, ["--width", 128], "resnet: width 128: the first-order correction to the input"),
], ids=["batchnorm-B2", "mean-stream-N128"])
def test_theory_prints_finite_width_warnings_as_lines(tmp_path, toml, args, says):
    """One line per distinct warning, naming the case (the arch's label, else its preset)."""
    path, out = tmp_path / "sim.toml", tmp_path / "th.nc"
    path.write_text(toml)
    r = invoke("theory", path, "-o", out, *args)
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("finite width: ")]
    assert len(lines) == 1 and lines[0].startswith("finite width: " + says), r.output
    others = [line for line in r.output.splitlines() if line.strip() and line not in lines]
    assert len(others) == 1 and others[0].startswith("theory of "), r.output  # (not wrapped at
    # the console's width, 80 here: a log or a pipe kept the warning as several lines)
    assert "FiniteWidthWarning" not in r.output and "warnings.warn" not in r.output
    ds = sp.load(out)
    if args:  # the corrections at the width asked for are in the dataset
        assert ds.attrs["width"] == 128 and "grad_q_rel_correction" in ds
    else:
        assert "log_q_correction" not in ds


def test_a_case_named_warning_meets_the_callers_module_filters():
    """run_theory names each case's FiniteWidthWarnings; re-issued, they still answer a filter
    on the module they are attributed to (they came back from the file path, which no module
    filter matches): the caller's, here this test module's, not sigprop's."""
    from sigprop.pipeline.runs import _named

    net = sp.presets.resnet(64, "relu", alpha="1/sqrt(L)", shape="dense_act")
    for module, expected in ((None, 1), (r"sigprop\.", 1), (re.escape(__name__), 0)):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            if module:
                warnings.filterwarnings("ignore", module=module)
            with _named("case A"):
                sp.theory(net, sp.Inputs(q=1.0), width=128)
        assert len(said) == expected and all(str(w.message).startswith("case A: ")
                                             for w in said)


def test_a_finite_width_warning_names_the_callers_line():
    """The warning points at the user's own call, not at a line inside sigprop (it named
    sigprop/engines/theory.py, whichever call of the user's it came from)."""
    net = sp.presets.resnet(64, "relu", alpha="1/sqrt(L)", shape="dense_act")
    line = inspect.currentframe().f_lineno + 2
    with pytest.warns(sp.FiniteWidthWarning) as said:
        sp.theory(net, sp.Inputs(q=1.0), width=128)
    assert [(w.filename, w.lineno) for w in said] == [(__file__, line)]


def test_a_case_named_warning_from_code_with_no_module_file_is_still_shown(monkeypatch):
    """python -c and a notebook cell have no module whose __file__ is theirs: re-issued with
    module=None passed on, the warning was dropped, shown nowhere; and with the working
    directory inside the package a '<string>' frame was taken for sigprop's (the warning said
    'sys:1')."""
    from sigprop.pipeline.runs import _named

    monkeypatch.chdir(Path(sp.__file__).parent)
    cell = compile("with _named('case A'):\n    sp.theory(net, sp.Inputs(q=1.0), width=128)\n",
                   "<string>", "exec")
    net = sp.presets.resnet(64, "relu", alpha="1/sqrt(L)", shape="dense_act")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        exec(cell, {"_named": _named, "sp": sp, "net": net})  # noqa: S102 (a cell of our own)
    assert [(w.filename, w.lineno) for w in said] == [("<string>", 2)]
    assert str(said[0].message).startswith("case A: width 128")


def test_every_warning_of_a_command_is_one_line(tmp_path, tiny):
    """A command's warnings are lines ('warning: ...'), never Python's format with a source
    line (it named typer/main.py, the first frame outside sigprop)."""
    th = tmp_path / "th.nc"
    assert invoke("theory", tiny, "-o", th).exit_code == 0
    ds = sp.load(th)
    ds["q"] = ds.q.where(ds.layer < ds.layer.max(), np.inf)
    sp.save(ds, tmp_path / "inf.nc")
    r = invoke("plot", tmp_path / "inf.nc", "-o", tmp_path / "q.png")
    assert r.exit_code == 0, r.output
    said = [line for line in r.output.splitlines() if line.startswith("warning: ")]
    assert said and "q overflowed" in said[0], r.output
    assert "typer" not in r.output and "Warning" not in r.output, r.output


def test_python_dash_m_runs_the_command():
    """``python -m sigprop`` is the ``sigprop`` command (it said 'No module named
    sigprop.__main__')."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sigprop", "--help"], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0 and "Usage: sigprop" in r.stdout and "theory" in r.stdout, r.stderr


def test_theory_width_must_be_positive(tiny, tmp_path):
    for bad in (0, 2**53 + 1):  # (the second ran, logging a ConfigError per case, and exited 0)
        r = invoke("theory", tiny, "-o", tmp_path / "th.nc", "--width", bad)
        assert r.exit_code != 0 and "Traceback" not in r.output
        assert not (tmp_path / "th.nc").exists()


def test_theory_forward_only_and_engine_options(tmp_path, monkeypatch):
    """--forward-only writes the forward variables alone, equal to a full run's, and says so in
    its config (so compare skips the gradients); a case the theory cannot integrate is NaN in
    that schema too (its NaN dataset carried the gradients into the stacked one). --engine
    takes numpy or jax only; jax gives the numpy engine's numbers to round-off."""
    import json

    import numpy as np

    from sigprop import schema

    text = TINY + '[[arch]]\npreset = "postbn"\n'  # (no theory at the inputs' default law)
    path = tmp_path / "sim.toml"
    path.write_text(text)
    full, fwd = tmp_path / "full.nc", tmp_path / "fwd.nc"
    assert invoke("theory", path, "-o", full).exit_code == 0
    r = invoke("theory", path, "-o", fwd, "--forward-only")
    assert r.exit_code == 0, r.output
    a, b = sp.load(full), sp.load(fwd)
    assert "postbn" in b.attrs["unsupported"]
    assert set(b.data_vars) == set(schema.FORWARD) < set(a.data_vars)
    for name in schema.FORWARD:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert json.loads(b.attrs["config"])["backward"] is False
    assert "backward" not in json.loads(a.attrs["config"])
    r = invoke("theory", path, "-o", tmp_path / "x.nc", "--engine", "torch")
    assert r.exit_code != 0 and "Traceback" not in r.output and "numpy" in r.output
    assert not (tmp_path / "x.nc").exists()
    from sigprop.state import ns

    def missing():
        raise ImportError("the compiled theory engine needs jax: pip install 'sigprop[jax]'")

    with monkeypatch.context() as m:  # jax missing: its hint in one line, before any case runs
        m.setattr(ns, "jax_namespace", missing)
        r = invoke("theory", path, "-o", tmp_path / "x.nc", "--engine", "jax")
    assert r.exit_code == 2 and "Traceback" not in r.output and "sigprop[jax]" in r.output
    assert len(r.output.strip().splitlines()) <= 2 and not (tmp_path / "x.nc").exists()
    pytest.importorskip("jax")
    from sigprop.engines import compiled

    ran, run = [], compiled.theory_compiled
    monkeypatch.setattr(compiled, "theory_compiled", lambda *a, **k: ran.append(1) or run(*a, **k))
    r = invoke("theory", path, "-o", tmp_path / "jax.nc", "--engine", "jax")
    assert r.exit_code == 0, r.output
    assert len(ran) == 3  # every case on the compiled engine (postbn refused by it too)
    c = sp.load(tmp_path / "jax.nc")
    assert c.attrs["backend"] == "jax" and a.attrs["backend"] == "numpy"
    for name in ("log_q", "corr", "log_grad_q"):  # (the compiled engine's tested tolerance)
        np.testing.assert_allclose(c[name].values, a[name].values, rtol=1e-12, atol=1e-12)


def test_an_error_is_one_line_at_any_console_width(tmp_path):
    """A long error (a missing sim file of a long path) is one line, however narrow the console
    (80 columns here): it was broken over several lines in a log or a pipe."""
    missing = tmp_path / ("a" * 60) / ("b" * 60) / "sim.toml"
    r = invoke("theory", missing, "-o", tmp_path / "x.nc")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("error: ") and str(missing) in r.output


def test_derive_prints_each_check_tag(monkeypatch):
    """sigprop derive's summary lines keep their [ok] / [FAIL] tags (rich read them as markup
    and printed nothing in their place)."""
    from sigprop import symbolic
    from sigprop.symbolic.derivation import Check, Derivation

    name = symbolic.derivation_names()[0]
    fake = Derivation(name, "a title", checks=[Check("holds", 0.0, 1e-12),
                                                 Check("breaks", 1.0, 1e-12)])
    monkeypatch.setattr(symbolic, "run_one", lambda *a, **k: fake)
    r = invoke("derive", name)
    assert r.exit_code == 1
    assert "[ok] holds: 0 <= 1e-12" in r.output and "[FAIL] breaks: 1 <= 1e-12" in r.output


def test_an_output_or_cache_folder_that_cannot_be_written_is_refused_first(tmp_path):
    """A hostile review: `derive --out FILE` ran its derivation (~30 s) before failing with a
    raw `[Errno 17] File exists`; `bench --out FILE/x.md` after the whole benchmark; and
    `reproduce --cache-dir FILE` named no option. Each is refused first, naming its option."""
    file = tmp_path / "th.nc"
    file.write_text("")
    for args, says in ((["derive", "preln_q_linear", "--out", file], "--out"),
                       (["bench", "--quick", "--out", file / "x.md"], "--out"),
                       (["reproduce", "--dry-run", "--cache-dir", file, "--root",
                         Path(__file__).resolve().parent.parent],
                        "--cache-dir")):
        r = invoke(*args)
        assert r.exit_code == 2 and r.output.startswith(f"error: {says}="), r.output
        assert "Errno" not in r.output and not (file / "x.md").exists()


def test_a_relative_sigprop_cache_is_this_folders_where_it_is_checked_and_used(
        tmp_path, monkeypatch):
    """A mutation review: a relative SIGPROP_CACHE was checked against the caller's folder, then
    used inside the project root (reproduce moves there): a file of that name here refused a
    valid run, and one in the root passed the check and was met later. Both now read it here."""
    from sigprop.pipeline import cache as cachemod

    root = Path(__file__).resolve().parent.parent
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    seen = []
    real = cachemod.Cache.__init__

    def spy(self, path=None):
        real(self, path)
        seen.append(self.root)
    monkeypatch.setattr(cachemod.Cache, "__init__", spy)
    (here / "blocker").write_text("")
    monkeypatch.setenv("SIGPROP_CACHE", "blocker")
    r = invoke("reproduce", "--dry-run", "--no-derive", "--root", root)
    assert r.exit_code == 2 and "SIGPROP_CACHE='blocker'" in r.output, r.output
    monkeypatch.setenv("SIGPROP_CACHE", "cache")
    r = invoke("reproduce", "--dry-run", "--no-derive", "--root", root, "--only", "phase")
    assert r.exit_code == 0, r.output
    assert seen[-1] == here / "cache" and not (root / "cache").exists()
