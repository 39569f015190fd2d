"""sims/*.toml: every shipped config loads; bad configs fail with the file, key and allowed values."""

import re
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


def test_a_monte_carlo_of_the_whole_depth_is_allowed(tmp_path):
    """mc_depth may equal depth (the Monte Carlo of the whole net) and no more."""
    sim = Sim.load(write(tmp_path, GOOD.replace("depth = 3", "depth = 3\nmc_depth = 3")))
    assert sim.profile("quick").mc_depth == 3
    with pytest.raises(SimConfigError, match="mc_depth"):
        Sim.load(write(tmp_path, GOOD.replace("depth = 3", "depth = 3\nmc_depth = 4")))


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
    (("[[arch]]", "[[figure]]\nhue = 'archh'\n[[arch]]"), "figure.0.hue = 'archh'",
     "arch, layer, input, width"),
    (("[[arch]]", "[[figure]]\nyscale = 'logg'\n[[arch]]"), "yscale", "linear, log"),
    (("[[arch]]", "[[figure]]\nhues = 'arch'\n[[arch]]"), "figure.0.hues", "hue"),
    (("corr = 0.5", "corr = 1.5"), "inputs", "cosines in [-1, 1]"),
    (('act = "relu"', 'act = "sigmoid"'), "arch 'preln'", "relu"),
    (('description = "tiny"', 'colour = "red"\ndescription = "tiny"'), "colour", "description"),
    (('act = "relu"', 'act = "relu"\ncolour = 1'), "'colour' is not an argument", "sigma_w1"),
    (("[inputs]", "[arch.sweeps]\nalpha = { linspce = [0.1, 1.0, 3] }\n[inputs]"),
     "arch.0.sweeps.alpha.linspce =", "linspace, logspace"),
    (("[inputs]", "[arch.sweeps]\nalpha = 'x'\n[inputs]"), "arch.0.sweeps.alpha = 'x'",
     "valid list"),
    # the top level's [sweeps] was named profiles.quick.sweeps (a review)
    (("[inputs]", "[sweeps]\nalpha = []\n[inputs]"), ": sweeps (sweep 'alpha' values) = []",
     "finite real number"),
    # an expected disagreement names a variable sp.compare judges, and gives its reason
    (("[inputs]", "[disagree]\ngradq = 'x'\n[inputs]"), "disagree", "grad_q"),
    (("[inputs]", "[disagree]\ngrad_q = ' '\n[inputs]"), "disagree", "why the theory"),
    (("[inputs]", "[disagree]\ngrad_q = 'a $1/N term'\n[inputs]"), "disagree", "LaTeX math"),
    # ... or the points it covers: labels of the sim's archs, batch sizes, nothing else
    (("[inputs]", "[disagree.grad_q]\nwhy = 'x'\nwhere = { arch = ['nope'] }\n[inputs]"),
     "disagree.grad_q.where.arch", "the sim's arch labels"),
    (("[inputs]", "[disagree.grad_q]\nwhy = 'x'\nwhere = { layer = [1] }\n[inputs]"),
     "disagree.grad_q.Disagreement.where.layer", "'arch' or 'batch'"),
    (("[inputs]", "[disagree.grad_q]\nwhy = 'x'\nwhere = { batch = [] }\n[inputs]"),
     "where.batch is empty", "batch labels"),
    (("[inputs]", "[disagree.grad_q]\nwhy = ' '\nwhere = { batch = [2] }\n[inputs]"),
     "disagree", "why the theory"),
    (("[inputs]", "[disagree.grad_q]\nwhy = 'x'\nwhere = { batch = [7] }\n[inputs]"),
     "where.batch names 7", "the sim's batch labels"),  # (a where that matches no point)
    (("[inputs]", "[disagree.grad_q]\nwhy = 'x'\nwher = { batch = [2] }\n[inputs]"),
     "disagree.grad_q.Disagreement.wher", "keys why, where"),
    # an empty where would select every point (no dim restricts it): the whole variable left
    # out of the comparison, silenced rather than declared
    (("[inputs]", "[disagree.grad_q]\nwhy = 'x'\nwhere = {}\n[inputs]"),
     "disagree.grad_q.Disagreement.where", "at least 1 item"),
    # a bad sweep value is refused at load, naming the file (it failed at run time, unnamed)
    (("[inputs]", "[sweeps]\nsigma_w1 = [-1.0, 0.5]\n[inputs]"), "sweeps = {'sigma_w1'",
     ">= 0"),
])
def test_bad_config_names_file_key_and_allowed(tmp_path, edit, key, allowed):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(SimConfigError) as err:
        Sim.load(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and allowed in msg, msg
    assert msg.count("allowed") == 1, msg  # (an arch that did not build listed it twice)
    assert isinstance(err.value, sp.ConfigError)


def test_bad_toml_syntax_and_missing_file(tmp_path):
    with pytest.raises(SimConfigError, match="does not parse"):
        Sim.load(write(tmp_path, "description = \n"))
    with pytest.raises(SimConfigError, match="not found"):
        Sim.load(tmp_path / "nope.toml")
    with pytest.raises(SimConfigError, match="is a folder"):  # (it said "not found")
        Sim.load(tmp_path)


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


# -- sweeps per arch -----------------------------------------------------------------------------
PER_ARCH = """
description = "Pre-LN over alpha, DeepNorm at its own constants, Post-LN at alpha = 1"
[[arch]]
label = "Pre-LN"
preset = "preln"
act = "relu"
[arch.sweeps]
alpha = [0.25, 1.0]
sigma_b = [0.0]
[[arch]]
label = "DeepNorm"
preset = "deepnorm"
act = "relu"
sweeps = ["sigma_b"]
[[arch]]
label = "Post-LN"
preset = "postln"
act = "relu"
[arch.sweeps]
alpha = [1.0]
sigma_b = [0.5]
[inputs]
q = 1.0
corr = 0.5
n = 2
[sweeps]
sigma_b = [0.0, 0.5]
[profiles.quick]
depth = 3
widths = [16]
seeds = 2
"""


def test_sweeps_per_arch_resolve(tmp_path):
    """An [arch.sweeps] table replaces the sim's sweeps for that arch, a list picks some of
    them, and an arch without ``sweeps`` has the sim's."""
    sim = Sim.load(write(tmp_path, PER_ARCH, "per_arch.toml"))
    pre, deep, post = sim.spec.arch
    assert {k: s.values for k, s in sim.sweeps("quick", pre).items()} == {
        "alpha": (0.25, 1.0), "sigma_b": (0.0,)}
    assert {k: s.values for k, s in sim.sweeps("quick", deep).items()} == {"sigma_b": (0.0, 0.5)}
    assert {k: s.values for k, s in sim.sweeps("quick", post).items()} == {
        "alpha": (1.0,), "sigma_b": (0.5,)}
    with pytest.raises(sp.ConfigError, match="the same sweeps on every arch"):
        sim.sweeps("quick")  # one grid for all archs (sweep_run) is refused, not guessed
    from sigprop.pipeline.sweep import plan_theory

    with pytest.raises(sp.ConfigError, match="sweep_run's zarr store"):
        plan_theory(sim, "quick", tmp_path / "per_arch.zarr")
    cfg = sim.config("quick")  # an arch's own sweeps are part of the config (the cache key)
    assert cfg["arch"][0]["sweeps"] == {"alpha": [0.25, 1.0], "sigma_b": [0.0]}
    assert cfg["arch"][1]["sweeps"] == {"sigma_b": [0.0, 0.5]}
    other = Sim.load(write(tmp_path, PER_ARCH.replace("[0.25, 1.0]", "[0.5, 1.0]"), "o.toml"))
    assert other.config("quick")["arch"] != cfg["arch"]


@pytest.mark.parametrize("edit, match", [
    # the sim's sweep alpha reaches DeepNorm, whose preset has no alpha: names preset and args
    (('sweeps = ["sigma_b"]', ""), "sweep 'alpha' is not an argument of preset 'deepnorm'"),
    (('sweeps = ["sigma_b"]', "[arch.sweeps]\nalpha = [1.0]"),
     "sweep 'alpha' is not an argument of preset 'deepnorm' .*allowed: act, eps, sublayers"),
    (('sweeps = ["sigma_b"]', 'sweeps = ["sigma_w2"]'), "names 'sigma_w2', which is no sweep"),
    (('sweeps = ["sigma_b"]', "[arch.sweeps]\nlayer = [1.0]"), "reserved dim name"),
    # Post-LN takes alpha, which Pre-LN sweeps: one alpha shown at every alpha is refused
    (("[arch.sweeps]\nalpha = [1.0]\nsigma_b = [0.5]", 'alpha = "1"\nsweeps = ["sigma_b"]'),
     "arch 'Post-LN' .*takes 'alpha', which another arch sweeps"),
    (('sweeps = ["sigma_b"]', "[arch.sweeps]\nsigma_b = [0.0, 0.5]"),
     "sweep 'sigma_b' .* is swept by no arch"),
    (("alpha = [0.25, 1.0]", "alpha = [0.25, inf]"), "arch 'Pre-LN'.sweeps"),
])
def test_sweeps_per_arch_refused(tmp_path, edit, match):
    text = PER_ARCH.replace(*edit)
    if edit[1] == "":  # DeepNorm without sweeps gets the sim's: make the sim sweep alpha
        text = text.replace("[sweeps]\nsigma_b = [0.0, 0.5]", "[sweeps]\nalpha = [1.0]")
    path = write(tmp_path, text)
    with pytest.raises(SimConfigError, match=match) as err:
        Sim.load(path)
    assert str(path) in str(err.value)


def test_sweeps_per_arch_run_and_stack(tmp_path):
    """Theory and Monte Carlo of archs swept differently: each arch's rows at each point of its
    own grid are its own run there; NaN where its grid lacks a value of a dim it is swept over;
    along a dim its preset does not take (DeepNorm: alpha) its values repeat (they do not
    depend on it)."""
    import numpy as np

    from sigprop.pipeline.runs import grid_points, run_montecarlo

    sim = Sim.load(write(tmp_path, PER_ARCH, "per_arch.toml"))
    x0 = sim.spec.inputs.build()
    th = run_theory(sim, "quick")
    assert list(th["alpha"].values) == [0.25, 1.0] and list(th["sigma_b"].values) == [0.0, 0.5]
    presets = {"Pre-LN": sp.presets.preln, "DeepNorm": sp.presets.deepnorm,
               "Post-LN": sp.presets.postln}
    checked = 0
    for arch in sim.spec.arch:
        for point in grid_points(sim.sweeps("quick", arch)):
            alone = sp.theory(presets[arch.name](3, act="relu", **point), x0)["q"]
            rows = th["q"].sel(arch=arch.name, **point)
            rest = [d for d in ("alpha", "sigma_b") if d not in point]  # DeepNorm: alpha
            rows = rows.transpose(*rest, *alone.dims)
            np.testing.assert_allclose(rows.values, np.broadcast_to(alone.values, rows.shape),
                                       rtol=1e-12)
            checked += 1
    assert checked == 2 + 2 + 1
    assert bool(th["q"].sel(arch="Pre-LN", sigma_b=0.5).isnull().all())
    post = th["q"].sel(arch="Post-LN")
    assert bool(post.sel(alpha=0.25).isnull().all()) and bool(post.sel(sigma_b=0.0).isnull().all())
    mc = run_montecarlo(sim, "quick", backend="numpy")
    for arch in sim.spec.arch:
        for point in grid_points(sim.sweeps("quick", arch)):
            assert bool(mc["q"].sel(arch=arch.name, **point).notnull().all()), (arch, point)
    assert bool(mc["q"].sel(arch="Pre-LN", sigma_b=0.5).isnull().all())
    assert bool(mc["q"].sel(arch="Post-LN", alpha=0.25).isnull().all())


def test_sweep_a_preset_cannot_vectorise_is_refused_at_load(tmp_path):
    """DeepNorm scales sigma_w1 by its constant b in Python (b * s1): a sweep of it does not
    build, and the file is refused when it loads, not when the run reaches it."""
    text = GOOD.replace('preset = "preln"', 'preset = "deepnorm"').replace(
        "[inputs]", "[arch.sweeps]\nsigma_w1 = [1.0, 1.5]\n[inputs]")
    with pytest.raises(SimConfigError, match="arch 'deepnorm'.sweeps.*do not build"):
        Sim.load(write(tmp_path, text))


def test_the_guides_per_arch_example_loads_and_runs(tmp_path):
    """docs/guide.md, "Sweeps per architecture": its TOML loads as written; Pre-LN varies with
    alpha, DeepNorm (no alpha argument) is the same at every alpha."""
    import numpy as np

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    section = guide.split("### Sweeps per architecture", 1)[1]
    text = re.findall(r"```toml\n(.*?)```", section, flags=re.DOTALL)[0]
    sim = Sim.load(write(tmp_path, text, "mine.toml"))
    q = run_theory(sim, "quick")["q"].isel(layer=-1, input=0)
    pre, deep = q.sel(arch="Pre-LN"), q.sel(arch="DeepNorm")
    assert q.sizes["alpha"] == 3 and float(pre.max() - pre.min()) > 0.1 * float(pre.max())
    np.testing.assert_array_equal(deep.values, np.full(3, float(deep[0])))
    assert np.isfinite(deep.values).all()


def test_a_figure_must_place_every_dim_with_several_values(tmp_path):
    """Refused when the file loads (not after the sims ran, when sp.plot would refuse it): the
    per-arch grid has alpha {0.25, 1} and sigma_b {0, 0.5} (unions over the archs) and three
    archs; one dim left over becomes the hue when none is given (sp.plot's rule)."""
    bad = PER_ARCH + '[[figure]]\nvar = "grad_q"\nhue = "arch"\ncol = "alpha"\n'
    with pytest.raises(SimConfigError,
                       match=r"\[.sigma_b.\] leaves dims with several values.*row = .sigma_b."):
        Sim.load(write(tmp_path, bad, "per_arch.toml"))
    for good in ('hue = "arch"\ncol = "alpha"\nrow = "sigma_b"\n',
                 'col = "alpha"\nrow = "sigma_b"\n',  # arch, the one left, is the hue
                 'hue = "arch"\ncol = "alpha"\nsel = { sigma_b = 0.5 }\n'):
        Sim.load(write(tmp_path, PER_ARCH + f'[[figure]]\nvar = "grad_q"\n{good}',
                       "per_arch.toml"))


@pytest.mark.parametrize("figure, says", [
    ("sel = { input = 5 }", "sel.input = 5 is not a label of its datasets; allowed: one of [0, 1]"),
    ('hue = "arch"\nsel = { arch = "preln" }', "figure.0.sel.arch = 'preln' fixes arch"),
    ("sel = { input_b = 1 }", "figure.0.sel.input_b = 'input_b' is not a dim"),
    ('hue = "input_b"', "allowed: a dim of q (profile quick): arch, layer, input, width"),
    ('x = "input"\nhue = "input"', "places a dim twice"),
    ("sel = { alpha = 0.5 }", "figure.0.sel.alpha = 'alpha' is not a dim"),
])
def test_a_figures_sel_and_dims_are_checked_at_load(tmp_path, figure, says):
    """Refused when the file loads (sp.plot refused them after the sims ran): a dim the
    variable does not have, a label beyond the sim's inputs, a dim both drawn and fixed."""
    with pytest.raises(SimConfigError, match=re.escape(says)):
        Sim.load(write(tmp_path, GOOD + f"[[figure]]\nvar = 'q'\n{figure}\n", "figt.toml"))


def test_a_figures_width_and_layer_are_checked_once_the_profile_is_chosen(tmp_path):
    """The labels of a profile's widths and depth: quick has width 16 and layers 0..3, paper no
    Monte Carlo (no width dim) and layers 0..5."""
    def sim(sel):
        figure = f"[[figure]]\nx = 'input'\nsel = {{ {sel} }}\n"
        return Sim.load(write(tmp_path, GOOD + figure, "figt.toml"))

    sim("width = 16").check_figures("quick")
    with pytest.raises(SimConfigError, match=r"sel.width = 999 .*one of \[16\] \(profile quick"):
        sim("width = 999").check_figures("quick")
    with pytest.raises(SimConfigError, match=r"sel.width = 'width' is not a dim.*profile paper"):
        sim("width = 16").check_figures("paper")
    sim("layer = 5").check_figures("paper")
    with pytest.raises(SimConfigError, match=r"sel.layer = 5 .*\[0, 1, 2, 3\]"):
        sim("layer = 5").check_figures("quick")


def test_what_a_review_of_the_pipeline_found_is_refused_or_joined(tmp_path):
    """A hostile review: a sim whose archs all have montecarlo = false crashed `simulate` with
    an IndexError (it is refused by name, as `sweep` refuses it); `final_norm = "no"` added a
    final LayerNorm (a non-empty string is true); a linspace grid's 0.30000000000000004 was a
    label apart from a list's 0.3, so two archs swept over 0.1..0.5, one by linspace and one
    by a list, were NaN at each other's label (now one label, 15 significant digits). A run
    with --width / --seeds named the profile's widths and seeds in its config."""
    import json

    from sigprop.errors import ConfigError
    from sigprop.pipeline.runs import run_montecarlo

    mc = run_montecarlo(Sim.load(write(tmp_path, GOOD, "good.toml")), "quick", backend="numpy",
                        widths=[8], seeds=3)
    ran = json.loads(mc.attrs["config"])["profiles"]["quick"]
    assert (ran["widths"], ran["seeds"]) == ([8], 3) and list(mc["width"].values) == [8]
    off = GOOD.replace('act = "relu"', 'act = "relu"\nmontecarlo = false')
    with pytest.raises(ConfigError, match="montecarlo = false for all"):
        run_montecarlo(Sim.load(write(tmp_path, off)), "quick", backend="numpy")
    for bad in ("no", "false", 1):
        with pytest.raises(ConfigError, match="final_norm"):
            sp.presets.preln(2, final_norm=bad)
    assert len(sp.theory(sp.presets.preln(2, final_norm=True), sp.Inputs(q=1.0)).layer) == 4
    two = GOOD.replace('[[arch]]\npreset = "preln"\nact = "relu"',
                       '[[arch]]\npreset = "preln"\nact = "relu"\n'
                       '[arch.sweeps]\nalpha = {linspace = [0.1, 0.5, 5]}\n'
                       '[[arch]]\npreset = "postln"\nact = "relu"\n'
                       '[arch.sweeps]\nalpha = [0.1, 0.2, 0.3, 0.4, 0.5]')
    th = run_theory(Sim.load(write(tmp_path, two, "two.toml")), "quick")
    assert list(th["alpha"].values) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert bool(th["q"].notnull().all())
