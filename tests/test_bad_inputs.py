"""Every bad input of issue 13 is one clean error: in the CLI a single red line naming the file,
the key and what is allowed (exit 2, no traceback); in the API a ConfigError. Plus a
hypothesis fuzz of sims files and command-line arguments: never a traceback."""

import importlib.util
import math

import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config import GOOD
from typer.testing import CliRunner

import sigprop as sp
from sigprop.pipeline.cli import app
from sigprop.pipeline.config import Sim, SimConfigError

ARCH = '[[arch]]\npreset = "preln"\nact = "relu"\n'


def edit(old, new):
    assert old in GOOD
    return GOOD.replace(old, new, 1)


BAD_SIMS = {  # what, sims text, a word the error must contain
    "empty arch list": (edit(ARCH, "arch = []\n"), "arch"),
    "linspace with n < 0": (GOOD + '[sweeps]\nalpha = {linspace = [0.1, 1, -5]}\n', "n >= 1"),
    "logspace past float64": (GOOD + '[sweeps]\nalpha = {logspace = [-2, 400, 3]}\n', "finite"),
    "sweep with nan": (GOOD + "[sweeps]\nalpha = [0.5, nan]\n", "finite"),
    "sweep with inf": (GOOD + "[sweeps]\nalpha = [inf]\n", "finite"),
    "label mathtext cannot parse": (edit('act = "relu"', 'act = "relu"\nlabel = "$\\\\frac{$"'),
                                    "mathtext"),
    "BatchNorm over one input": (edit('preset = "preln"', 'preset = "postbn"')
                                 .replace("[profiles.quick]", "[profiles.quick]\nbatch_sizes = [1]"),
                                 "batch"),
    "depth = true": (edit("depth = 3", "depth = true"), "depth"),
    'depth = "4"': (edit("depth = 3", 'depth = "4"'), "depth"),
    'q = "1.0"': (edit("q = 1.0", 'q = "1.0"'), "inputs.q"),
    'montecarlo = "yes"': (edit('act = "relu"', 'act = "relu"\nmontecarlo = "yes"'), "montecarlo"),
    "widths = [1.7]": (edit("widths = [16]", "widths = [1.7]"), "widths"),
    "non-PSD corr at q = 1e200": (edit("q = 1.0\ncorr = 0.5\nn = 2", "q = 1e200\ncorr = "
                                       "[[1, 0.99, -0.5], [0.99, 1, 0.5], [-0.5, 0.5, 1]]"),
                                  "semi-definite"),
}


def one_clean_line(result, *words):
    """Exit 2, no traceback, and one 'error:' line containing every word."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or \
        isinstance(result.exception, SystemExit), result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") and text.count("error:") == 1, result.output
    for w in words:
        assert w in text, (w, text)


@pytest.mark.parametrize("what", list(BAD_SIMS))
def test_bad_sims_file_is_one_clean_error(tmp_path, what):
    text, word = BAD_SIMS[what]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SimConfigError, match=word):
        Sim.load(path)
    one_clean_line(CliRunner().invoke(app, ["theory", str(path), "-o", str(tmp_path / "o.nc")]),
                   "bad.toml", word)


def test_non_utf8_sims_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(GOOD.replace("tiny", "caf\xe9").encode("latin-1"))
    one_clean_line(CliRunner().invoke(app, ["theory", str(path), "-o", str(tmp_path / "o.nc")]),
                   "latin1.toml", "UTF-8")


@pytest.fixture()
def good(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    return path


def test_bad_outputs_are_refused_before_any_work(good, tmp_path):
    runner = CliRunner()
    (tmp_path / "dir.nc").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [(tmp_path / "dir.nc", "directory"), (tmp_path / "file" / "o.nc", "writable folder"),
             (tmp_path / "o.txt", ".nc or .zarr")]
    if importlib.util.find_spec("zarr") is None:
        cases.append((tmp_path / "o.zarr", "zarr is not installed"))
    for output, word in cases:
        for cmd in ("theory", "simulate"):
            one_clean_line(runner.invoke(app, [cmd, str(good), "-o", str(output)]), "output", word)


def test_unreadable_datasets_and_unknown_names(good, tmp_path):
    runner = CliRunner()
    text = tmp_path / "text.nc"
    text.write_text("not a dataset")
    one_clean_line(runner.invoke(app, ["compare", str(text), str(text)]), "text.nc")
    one_clean_line(runner.invoke(app, ["reproduce", "--only", "nosuch", "--dry-run",
                                       "--no-derive"]), "nosuch", "finite_width")


@pytest.mark.parametrize("make, field", [
    (lambda: sp.Inputs(q=[]), "Inputs.q"),
    (lambda: sp.sweep("a", ["a"]), "sweep 'a'"),
    (lambda: sp.sweep("a", [[1.0, 2.0], [3.0, 4.0]]), "sweep 'a'"),
    (lambda: sp.sweep("a", [0.5, math.nan]), "sweep 'a'"),
    (lambda: sp.sweep("a", [math.inf]), "sweep 'a'"),
    (lambda: sp.Inputs(q=1e200, corr=[[1, 0.99, -0.5], [0.99, 1, 0.5], [-0.5, 0.5, 1]]),
     "Inputs.corr"),
    (lambda: sp.Inputs(q=1e-200, corr=[[1, 0.99, -0.5], [0.99, 1, 0.5], [-0.5, 0.5, 1]]),
     "Inputs.corr"),  # the check on K = C q underflowed to 0 and passed
    (lambda: sp.Inputs(q=1e-200, corr=0.5, mean=[1e-100, -1e-100]), "Inputs (corr, mean)"),
    (lambda: sp.Inputs(n=117295), "Inputs.n"),  # hypothesis found it: a 103 GiB corr matrix
    (lambda: sp.Inputs(q=[1.0] * 5000), "Inputs"),
    # a branch ending at another width than the stream's (the theory took it and drifted)
    (lambda: sp.Residual(sp.Serial(sp.Dense(ratio=2.0), sp.Act("relu"))), "Residual branch"),
    (lambda: sp.Residual(sp.Repeat(sp.Dense(ratio=0.5), 3)), "Residual branch"),
    # ... at one point of a swept ratio, which the op cannot check (the theory took it, with
    # finite-width numbers for a net it refuses when written with that number)
    (lambda: sp.theory(sp.Repeat(sp.Residual(sp.Serial(sp.Dense(ratio=sp.sweep("r", [1, 4])),
                                                       sp.Act("relu"), sp.Dense())), 2),
                       sp.Inputs(q=1.0, n=1), width=64), "Residual branch"),
    (lambda: sp.presets.preln(4, ratio=sp.sweep("r", [1.0, 4.0])), "ratio"),  # (a TypeError)
    # a scale the laws square, past sqrt(float64's max) (numpy's overflow warnings, then an
    # OverflowInTheory or a NaN)
    (lambda: sp.Dense(sigma_w=1e155), "Dense.sigma_w"),
    (lambda: sp.Dense(sigma_b=sp.sweep("b", [1.0, 1e160])), "Dense.sigma_b"),
    (lambda: sp.FeatureAffine(gain=-1e200), "FeatureAffine.gain"),
    (lambda: sp.FeatureAffine(shift=1e155), "FeatureAffine.shift"),
    # what a hostile review found (bare OverflowError / AttributeError / TypeError before)
    (lambda: sp.simulate(sp.presets.preln(2), sp.Inputs(q=1.0, n=1), width=8, seeds=1,
                         first_seed=2**63), "first_seed"),
    (lambda: sp.compare(sp.theory(sp.presets.preln(2), sp.Inputs(q=1.0, n=1)), None), "mc"),
    (lambda: sp.presets.preln(4, alpha=None), "alpha"),
    (lambda: sp.theory(sp.Serial(sp.Dense(), sp.Act("leaky_relu(1e308)")), sp.Inputs(q=1.0, n=1)),
     "act"),
    (lambda: sp.theory(sp.Dense(sigma_w=sympy.Symbol("s")), sp.Inputs(q=1.0, n=1)),
     "Dense.sigma_w"),
    *((lambda name=name: sp.sweep(name, [1.0]), "sweep name")
      for name in ("block", "arch", "width", "stat")),
])
def test_bad_api_input_is_a_config_error(make, field):
    with pytest.raises(sp.ConfigError) as err:
        make()
    assert err.value.field.startswith(field), err.value


def test_a_review_found_a_dict_saved_and_a_numpy_depth_refused(tmp_path):
    """sp.save of a dict gave AttributeError; a preset refused np.int64 depth (a loop over
    np.arange), which Repeat and width= accept."""
    with pytest.raises(sp.ConfigError, match="ds"):
        sp.save({"a": 1}, tmp_path / "y.nc")
    import numpy as np

    assert sp.presets.preln(np.int64(4)) == sp.presets.preln(4)


def test_extreme_but_valid_inputs_are_accepted():
    for q in (1e-200, 1e200):
        x = sp.Inputs(q=q, corr=0.5, mean=[0.5 * q**0.5, 0.0], n=2)
        assert x.n == 2


# -- fuzz: random sims files and arguments give a clean result or one clean error -------------

toml_value = st.one_of(st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                       st.booleans(), st.text(max_size=6), st.lists(st.integers(-2, 64),
                                                                    max_size=3))
KEYS = ["depth", "widths", "seeds", "q", "corr", "mean", "n", "act", "alpha", "preset", "label",
        "montecarlo", "batch_sizes", "sampler", "dtype", "mc_depth", "law"]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return str(value)


@given(key=st.sampled_from(KEYS), value=toml_value, where=st.sampled_from(
    ["[[arch]]", "[inputs]", "[profiles.quick]"]))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_sims_file_loads_or_is_a_clean_error(tmp_path, key, value, where):
    lines = GOOD.splitlines()
    out, section = [], None
    for line in lines:  # replace or add `key` in the chosen table
        if line.startswith("["):
            section = line
        if section == where and line.split(" = ")[0] == key:
            continue
        out.append(line)
        if line == where:
            out.append(f"{key} = {_toml(value)}")
    path = tmp_path / "fuzz.toml"
    path.write_text("\n".join(out) + "\n")
    try:
        Sim.load(path)
    except SimConfigError as e:
        assert "fuzz.toml" in str(e)


@given(args=st.lists(st.one_of(st.sampled_from(["--width", "-n", "--seeds", "-s", "--profile",
                                                "--backend", "-o", "--only", "--force"]),
                               st.text(max_size=5), st.integers(-3, 5).map(str)), max_size=5))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_cli_arguments_never_give_a_traceback(good, tmp_path, args):
    for cmd in (["theory", str(good), "-o", str(tmp_path / "f.nc")], ["simulate", str(good)]):
        result = CliRunner().invoke(app, [*cmd, *args])
        assert result.exit_code in (0, 1, 2), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            (args, repr(result.exception))


def test_a_swapped_compare_says_pass_the_theory_first():
    """sp.compare(mc, theory), the arguments swapped, said that the second (the theory) had no
    seed dim, as though the run were the wrong one; it says to pass the theory first."""
    net, x = sp.presets.preln(2), sp.Inputs(q=1.0, n=1)
    th, mc = sp.theory(net, x), sp.simulate(net, x, width=8, seeds=2)
    with pytest.raises(sp.ConfigError, match="pass theory first") as err:
        sp.compare(mc, th)
    assert err.value.field == "theory dims"
    with pytest.raises(sp.ConfigError, match="with a 'seed' dim"):
        sp.compare(th, th)
