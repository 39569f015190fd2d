"""Every bad input gives a ConfigError (a ValueError) naming the field and the allowed range."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sigprop as sp
from sigprop.engines.samplers import Explicit
from sigprop.kernels.gaussian import ACTIVATIONS


class _Nameless:
    """A sampler with Explicit's methods and no name."""

    def forward(self, x, std, n_out, env):
        return Explicit().forward(x, std, n_out, env)

    def vjp(self, z, d, std, env):
        return Explicit().vjp(z, d, std, env)


bad_number = st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.text(max_size=3),
                       st.none())
negative = st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("make, field", [
    (lambda: sp.Inputs(q=-1.0), "Inputs.q"),
    (lambda: sp.Inputs(q=[1.0, 0.0]), "Inputs.q"),
    (lambda: sp.Inputs(q=1.0, mean=2.0), "Inputs.mean"),
    (lambda: sp.Inputs(q=1.0, corr=1.5, n=2), "Inputs.corr"),
    (lambda: sp.Inputs(q=1.0, corr=-0.9, n=3), "Inputs.corr"),  # not PSD for 3 inputs
    (lambda: sp.Inputs(q=1.0, corr=1.5), "Inputs.corr"),  # a cosine at B = 1 too (accepted
    (lambda: sp.Inputs(q=1.0, corr=-3, n=1), "Inputs.corr"),  # and recorded before)
    (lambda: sp.Inputs(q=[1.0, 2.0], n=3), "Inputs sizes"),
    (lambda: sp.Inputs(q=1.0, mean=0.5, law="gaussian"), "Inputs.mean"),
    (lambda: sp.Inputs(q=1.0, corr="0", n=2), "Inputs.corr"),  # numpy would read "0" as 0.0
    (lambda: sp.Inputs(q=["1", 2.0]), "Inputs.q"),
    (lambda: sp.Inputs(q=True), "Inputs.q"),
    (lambda: sp.Inputs(q=[1.0, [2.0, 3.0]]), "Inputs.q"),  # ragged
    (lambda: sp.Inputs(law="uniform"), "Inputs.law"),
    (lambda: sp.presets.preln(0), "depth"),
    (lambda: sp.presets.preln(2.5), "depth"),
    (lambda: sp.Repeat(sp.Dense(), 0), "Repeat.n"),
    (lambda: sp.Act("swish2"), "act"),
    (lambda: sp.Dense(sigma_w=-1.0), "Dense.sigma_w"),
    (lambda: sp.Dense(ratio=0.0), "Dense.ratio"),
    (lambda: sp.LayerNorm(eps=-1e-5), "LayerNorm.eps"),
    (lambda: sp.Residual(sp.Dense(), alpha=0.0, beta=0.0), "Residual (alpha, beta)"),
    (lambda: sp.Residual("relu"), "Residual.branch"),
    (lambda: sp.Serial(sp.Dense(), "relu"), "Serial layer 1"),
    (lambda: sp.presets.resnet(4, alpha="1/L^2"), "alpha"),
    (lambda: sp.presets.preln(4, norm="groupnorm"), "norm"),
    (lambda: sp.presets.resnet(4, shape="conv"), "shape"),
    (lambda: sp.sweep("layer", [1.0]), "sweep name"),
    (lambda: sp.sweep("alpha", []), "sweep 'alpha' values"),
    # a sweep named as a variable replaced it by its coordinate (theory.q was the sweep's
    # values, and compare failed inside xarray); repeated values made a repeated index
    (lambda: sp.sweep("q", [0.5, 1.0]), "sweep name"),
    (lambda: sp.sweep("var_log_q", [0.5, 1.0]), "sweep name"),
    (lambda: sp.sweep("alpha", [1.0, 1.0]), "sweep 'alpha' values"),
    (lambda: sp.theory("preln", sp.Inputs()), "net"),
    (lambda: sp.theory(sp.presets.preln(2), {"q": 1.0}), "inputs"),
    # a sampler without a name failed after the whole run (the result records it); its class,
    # not an instance, failed inside an op's Monte Carlo face
    (lambda: sp.simulate(sp.presets.preln(2), sp.Inputs(), 8, 1, sampler=_Nameless()),
     "sampler"),
    (lambda: sp.simulate(sp.presets.preln(2), sp.Inputs(), 8, 1, sampler=Explicit), "sampler"),
    # a width float64 cannot count was refused as a branch of unequal width; fixed inputs
    # that no net of the width holds got corrections from sp.theory (sp.simulate refused them)
    (lambda: sp.simulate(sp.presets.preln(2), sp.Inputs(), 2**53 + 1, 1), "width"),
    (lambda: sp.theory(sp.presets.preln(2), sp.Inputs(n=5), width=2), "width"),
])
def test_bad_config_names_the_field(make, field):
    with pytest.raises(sp.ConfigError) as err:
        make()
    assert err.value.field.startswith(field), err.value
    assert "allowed" in str(err.value)


def test_batchnorm_over_one_input_is_refused():
    net = sp.Serial(sp.Dense(), sp.BatchNorm())
    with pytest.raises(sp.ConfigError, match="batch size B"):
        sp.theory(net, sp.Inputs(q=1.0, n=1))


@pytest.mark.parametrize("net, where", [
    (sp.Serial(sp.Act("relu")), "Act"),                                   # act on the raw input
    (sp.Repeat(sp.Residual(sp.Act("relu")), 3), "Act"),
    (sp.presets.postbn(3), "BatchNorm"),                                  # BN of a non-Gaussian stream
])
def test_nonsensical_compositions_are_refused_with_the_op_path(net, where):
    with pytest.raises(sp.UnsupportedComposition, match=where) as err:
        sp.theory(net, sp.Inputs(q=1.0, corr=0.2, n=2))
    assert "layer 1" in str(err.value)


@given(value=st.one_of(bad_number, negative))
@settings(max_examples=60, deadline=None)
def test_hypothesis_bad_dense_scales(value):
    with pytest.raises(sp.ConfigError):
        sp.Dense(sigma_w=value)


@given(q=st.one_of(bad_number, st.floats(max_value=0.0, allow_nan=False)),
       corr=st.floats(min_value=-1.0, max_value=1.0))
@settings(max_examples=60, deadline=None)
def test_hypothesis_bad_second_moment(q, corr):
    with pytest.raises(sp.ConfigError):
        sp.Inputs(q=q, corr=corr, n=2)


@given(corr=st.one_of(st.floats(min_value=1.0, exclude_min=True, allow_nan=False),
                      st.floats(max_value=-1.0, exclude_max=True, allow_nan=False), bad_number))
@settings(max_examples=60, deadline=None)
def test_hypothesis_corr_outside_unit_interval(corr):
    with pytest.raises(sp.ConfigError):
        sp.Inputs(q=1.0, corr=corr, n=2)


@given(depth=st.one_of(st.integers(max_value=0), st.floats(), st.text(max_size=2), st.booleans()),
       preset=st.sampled_from(sorted(sp.presets.PRESETS)))
@settings(max_examples=80, deadline=None)
def test_hypothesis_bad_depth_for_every_preset(depth, preset):
    with pytest.raises(sp.ConfigError):
        sp.presets.get(preset)(depth)


@given(name=st.text(min_size=0, max_size=12).filter(lambda s: s not in ACTIVATIONS))
@settings(max_examples=60, deadline=None)
def test_hypothesis_unknown_activation(name):
    with pytest.raises(sp.ConfigError, match="allowed"):
        sp.Act(name)


@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_hypothesis_random_valid_nets_never_give_nan(data):
    # Any valid preset on valid inputs either succeeds with finite log moments or raises a
    # SigpropError: never a numpy traceback, never a silent NaN.
    preset = data.draw(st.sampled_from(["plain", "resnet", "preln", "postln", "periln", "deepnorm",
                                        "skipinit"]))
    act = data.draw(st.sampled_from(["relu", "linear", "erf"]))
    depth = data.draw(st.integers(1, 40))
    q = data.draw(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=3))
    x0 = sp.Inputs(q=q, corr=data.draw(st.floats(-0.4, 1.0)) if len(q) < 3 else 0.3)
    try:
        th = sp.theory(sp.presets.get(preset)(depth, act=act), x0)
    except sp.SigpropError:
        return
    for name in ("log_q", "corr", "log_grad_q"):
        assert np.all(np.isfinite(th[name].values)), name
