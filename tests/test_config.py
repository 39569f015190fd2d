"""sims/*.toml: every shipped config loads; bad configs fail with the file, key and allowed values."""

from pathlib import Path

import pytest

import sigprop as sp
from sigprop.pipeline.config import PROFILES, Sim, SimConfigError, load_all
from sigprop.pipeline.runs import run_theory

SIMS = Path(__file__).resolve().parent.parent / "sims"
GOOD = """
description = "tiny"
[[arch]]
preset = "preln"
act = "relu"
[inputs]
q = 1.0
corr = 0.5
n = 2
[profiles.quick]
depth = 3
widths = [16]
seeds = 2
[profiles.paper]
depth = 5
"""


def write(tmp_path, text, name="bad.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(SIMS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_sim_loads_with_both_profiles(path):
    sim = Sim.load(path)
    for profile in PROFILES:
        cfg = sim.config(profile)
        assert cfg["sim"] == path.stem and list(cfg["profiles"]) == [profile]


def test_every_figure_has_a_sim():
    from sigprop.figures import FIGURES, module

    sims = load_all(SIMS)
    assert {module(f).SIM for f in FIGURES} <= set(sims)


def test_good_config_runs_theory(tmp_path):
    ds = run_theory(Sim.load(write(tmp_path, GOOD, "tiny.toml")), "quick")
    assert ds.attrs["kind"] == "theory" and ds.sizes["layer"] == 4
    assert list(ds["arch"].values) == ["preln"]


@pytest.mark.parametrize("edit, key, allowed", [
    (("depth = 3", "depht = 3"), "profiles.quick.depht", "depth"),
    (('preset = "preln"', 'preset = "prelnn"'), "arch.0.preset", "postln"),
    (('act = "relu"', 'act = "relu"\nalpah = 1'), "arch.0", "alpha"),
    (("[inputs]", "[inputs]\nlaw = 'uniform'"), "inputs.law", "gaussian"),
    (("seeds = 2", "seeds = -1"), "profiles.quick.seeds", "greater than or equal to 0"),
    (("[profiles.quick]", "[profiles.'my quick']"), "profiles", "letters, digits"),
    (("[[arch]]", "[[figure]]\nvar = 'gradq'\n[[arch]]"), "figure.0.var", "grad_q"),
    (("[[arch]]", "[[figure]]\nhue = 'archh'\n[[arch]]"), "figure.0.hue = 'archh'", "arch, batch"),
    (("[[arch]]", "[[figure]]\nyscale = 'logg'\n[[arch]]"), "yscale", "linear, log"),
    (("[[arch]]", "[[figure]]\nhues = 'arch'\n[[arch]]"), "figure.0.hues", "hue"),
    (("corr = 0.5", "corr = 1.5"), "inputs", "cosines in [-1, 1]"),
    (('act = "relu"', 'act = "sigmoid"'), "arch 'preln'", "relu"),
    (('description = "tiny"', 'colour = "red"\ndescription = "tiny"'), "colour", "description"),
    (('act = "relu"', 'act = "relu"\ncolour = 1'), "'colour' is not an argument", "sigma_w1"),
])
def test_bad_config_names_file_key_and_allowed(tmp_path, edit, key, allowed):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(SimConfigError) as err:
        Sim.load(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and allowed in msg, msg
    assert isinstance(err.value, sp.ConfigError)


def test_bad_toml_syntax_and_missing_file(tmp_path):
    with pytest.raises(SimConfigError, match="does not parse"):
        Sim.load(write(tmp_path, "description = \n"))
    with pytest.raises(SimConfigError, match="not found"):
        Sim.load(tmp_path / "nope.toml")


def test_sweep_must_be_a_preset_argument(tmp_path):
    text = GOOD + "[sweeps]\nsigma = [1.0, 2.0]\n"
    with pytest.raises(SimConfigError, match="sigma_w1"):
        Sim.load(write(tmp_path, text))


def test_sweeps_and_grids_resolve(tmp_path):
    text = GOOD + "[sweeps]\nalpha = { logspace = [-1, 0, 3] }\nsigma_w1 = [1.0, 1.5]\n"
    sim = Sim.load(write(tmp_path, text, "grid.toml"))
    sweeps = sim.sweeps("quick")
    assert sweeps["alpha"].values == pytest.approx((0.1, 10**-0.5, 1.0))
    ds = run_theory(sim, "quick")
    assert ds.sizes["alpha"] == 3 and ds.sizes["sigma_w1"] == 2


def test_unsupported_theory_is_nan_and_noted(tmp_path):
    text = GOOD.replace('preset = "preln"', 'preset = "postbn"').replace(
        "n = 2", "n = 2\nlaw = 'gaussian'")
    ds = run_theory(Sim.load(write(tmp_path, text, "bn.toml")), "quick")
    from sigprop.data import unsupported_of

    assert "postbn" in unsupported_of(ds)
    assert bool(ds["q"].isnull().all())


def test_profiles_are_named_freely_and_none_is_mandatory(tmp_path):
    text = GOOD.replace("[profiles.paper]", "[profiles.laptop]")
    sim = Sim.load(write(tmp_path, text, "free.toml"))
    assert list(sim.spec.profiles) == ["quick", "laptop"]
    assert sim.config("laptop")["profiles"]["laptop"]["depth"] == 5
    assert run_theory(sim, "laptop").sizes["layer"] == 6  # layers 0..depth
    with pytest.raises(SimConfigError, match="quick, laptop"):
        sim.profile("paper")
    no_profiles = GOOD.split("[profiles.quick]")[0]
    with pytest.raises(SimConfigError, match="profiles"):
        Sim.load(write(tmp_path, no_profiles, "none.toml"))


FIGURES_TOML = """
[[figure]]
var = "grad_q"
hue = "arch"
caption = "gradient"
[[figure]]
name = "q_vs_layer"
var = "q"
yscale = "log"
sel = { input = 1 }
"""


def test_figures_declared_in_a_sim(tmp_path):
    sim = Sim.load(write(tmp_path, GOOD + FIGURES_TOML, "figs.toml"))
    figs = sim.figures()
    assert list(figs) == ["figs_grad_q", "q_vs_layer"]
    assert figs["figs_grad_q"].plot_kwargs()["hue"] == "arch"
    assert figs["q_vs_layer"].plot_kwargs()["sel"] == {"input": 1}
    assert "caption" not in figs["q_vs_layer"].plot_kwargs()
    plain = Sim.load(write(tmp_path, GOOD, "figs.toml"))  # a figure is not part of the data key
    assert plain.config("quick") == sim.config("quick")
    twice = GOOD + FIGURES_TOML.replace('name = "q_vs_layer"', 'name = "figs_grad_q"')
    with pytest.raises(SimConfigError, match="used twice"):
        Sim.load(write(tmp_path, twice, "figs.toml"))
