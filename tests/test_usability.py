"""Small things users expect: readable nets in Jupyter, helpful errors for typos."""

import pytest

import sigprop as sp


def test_net_html_repr_is_a_collapsible_tree_of_every_op():
    net = sp.presets.preln(depth=3, act="gelu")
    html = net._repr_html_()
    assert html.count("<details") == html.count("</details>") >= 3
    labels = [op.label() for op in net.walk()]
    for label in labels:  # every op of the tree is shown, escaped
        assert label.replace("'", "&#x27;") in html


def test_unknown_preset_attribute_is_a_config_error_with_a_suggestion():
    with pytest.raises(sp.ConfigError, match="did you mean 'preln'"):
        sp.presets.pre_ln  # noqa: B018
    assert not hasattr(sp.presets, "no_such_preset")  # still an AttributeError for hasattr


@pytest.mark.parametrize("act", ["relu", "linear", "leaky_relu", "leaky_relu(0.2)"])
def test_a_homogeneous_activations_default_gain_keeps_q(act):
    """The presets' first Dense before a positively homogeneous activation keeps q through it
    (He's gain: E phi(u)^2 = q for u ~ N(0, sigma_w^2 q)); relu's is sqrt 2 exactly. A review
    found leaky_relu(s) at gain 1 (q halved per Dense-act pair) beside relu at sqrt 2."""
    net = sp.Serial(sp.Dense(sp.presets.first_gain(act)), sp.Act(act))
    th = sp.theory(net, sp.Inputs(q=[1.0, 3.0], corr=0.2))
    assert abs(float(th.q.isel(layer=-1, input=1)) - 3.0) < 1e-12
    assert sp.presets.first_gain("relu") == 2 ** 0.5


def test_gelus_approximation_takes_gelus_gain():
    """Switching gelu for gelu_tanh (its tanh approximation) kept the first Dense at sqrt 2,
    not 1 (a review's find: it halved the first layer's variance)."""
    for act in ("gelu", "gelu_tanh", "silu"):
        assert sp.presets.first_gain(act) == 2 ** 0.5
    assert sp.presets.first_gain("tanh") == sp.presets.first_gain("erf") == 1.0


@pytest.mark.parametrize("name", sorted(sp.presets.PRESETS))
def test_a_preset_refuses_an_argument_it_does_not_take(name):
    """Every preset, called from Python, answers an unknown keyword with a ConfigError listing
    what it takes (was a bare TypeError from deep inside, e.g. branch() for beta=)."""
    with pytest.raises(sp.ConfigError, match=rf"presets\.{name} argument='beta'.*sigma_b"):
        sp.presets.PRESETS[name](4, beta=0.5)


def test_missing_cupy_names_the_cuda_extras():
    from sigprop.engines.montecarlo import gpu_module

    if gpu_module() is not None:
        pytest.skip("a CuPy GPU is usable here")
    with pytest.raises(sp.ConfigError, match=r"sigprop\[cuda12\].*sigprop\[cuda13\]"):
        sp.simulate(sp.presets.preln(depth=1), sp.Inputs(q=1.0), width=8, seeds=1,
                    backend="cupy")


def test_missing_zarr_or_dask_names_the_scale_extra(tmp_path, monkeypatch):
    import importlib.util

    from sigprop.data import check_output
    from sigprop.pipeline import sweep

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "zarr" else real(name, *a))
    with pytest.raises(sp.ConfigError, match=r"sigprop\[scale\]"):
        check_output(tmp_path / "out.zarr")
    with pytest.raises(sp.ConfigError, match=r"sigprop\[scale\]"):
        sweep._require("no_such_module_for_this_test", "dask")
