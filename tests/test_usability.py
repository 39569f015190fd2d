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
