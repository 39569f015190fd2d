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
