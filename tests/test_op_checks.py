"""Per-op Monte Carlo checks, generated from ``Op.REGISTRY`` (:mod:`sigprop.testing`).

Every op class (and every activation of the Gaussian table) gets a probe of
``sigprop.testing.DEPTH`` blocks Dense -> op; its theory is compared with Monte Carlo at the widths
``sigprop.testing.WIDTHS`` extrapolated to infinite width (T(N) = T_inf + a/N), for q, mean, corr
after the last block and the gradient at the input. Tolerance: standard errors only; a check
rejects when the Bonferroni family p-value over its points is below ``sigprop.testing.ALPHA``
(1e-3), so the correct laws fail one probe in ~1000. Each probe's Monte Carlo has a fixed root
seed (the test is deterministic) and is run once for all the laws compared with it: it does not
depend on the theory. Power and calibration are measured in benchmarks/validation_power.py.
"""

import numpy as np
import pytest

import sigprop as sp
from sigprop import testing as T

PROBES = T.probes()
NAMES = sorted(PROBES)


@pytest.fixture(scope="module")
def monte_carlo():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = T.simulate_widths(PROBES[name], root_seed=1 + NAMES.index(name))
        return cache[name]

    return get


def test_every_registered_op_and_activation_has_a_probe():
    from sigprop.kernels.gaussian import ACTIVATIONS

    expected = {n for n in sp.Op.REGISTRY if n != "Act"} | {f"Act({a})" for a in ACTIVATIONS}
    assert set(PROBES) == expected
    for name, net in PROBES.items():
        cls, where = T.target(name)
        assert any(isinstance(op, cls) and (where is None or where(op)) for op in net.walk()), name


@pytest.mark.parametrize("name", NAMES)
def test_op_law_agrees_with_monte_carlo(name, monte_carlo):
    r = T.check(PROBES[name], monte_carlo(name))
    assert not r.rejects(), f"{name}: family p = {r.p:.2g} < {T.ALPHA} ({r.worst})"


@pytest.mark.parametrize("face", ["forward", "backward"])
@pytest.mark.parametrize("name", NAMES)
def test_one_percent_mutation_is_detected(name, face, monte_carlo):
    """The law scaled by 1.01 per occurrence per block: the same check must reject."""
    cls, where = T.target(name)
    with T.mutate(cls, face, 0.01, where):
        r = T.check(PROBES[name], monte_carlo(name))
    assert r.rejects(), f"{name} {face} x 1.01 not detected: p = {r.p:.2g} ({r.worst})"


def test_mutation_scales_the_law_and_is_undone():
    net, x0 = PROBES["Act(tanh)"], T.PROBE_INPUTS
    before = sp.theory(net, x0)
    with T.mutate(sp.Act, "forward", 0.05, lambda op: op.name == "tanh"):
        during = sp.theory(net, x0)
    with T.mutate(sp.Act, "forward", 0.05, lambda op: op.name == "relu"):
        other = sp.theory(net, x0)  # filtered out: no tanh op is touched
    after = sp.theory(net, x0)
    assert "forward_law" in vars(sp.Act) and vars(sp.Act)["forward_law"].__name__ == "forward_law"
    np.testing.assert_array_equal(after.q.values, before.q.values)
    np.testing.assert_array_equal(other.q.values, before.q.values)
    assert np.all(during.q.values[1:] != before.q.values[1:])
    with pytest.raises(sp.ConfigError, match="face"), T.mutate(sp.Act, "sideways", 0.01):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_op_law_agrees_at_four_times_the_budget(name):
    """Four times the seeds: se halved, so a law error of ~0.3 % per block would show."""
    mc = T.simulate_widths(PROBES[name], seeds=4 * T.SEEDS, root_seed=100 + NAMES.index(name))
    r = T.check(PROBES[name], mc)
    assert not r.rejects(), f"{name}: family p = {r.p:.2g} ({r.worst})"


def test_relu_gate_through_a_rescaled_batchnorm_output(monkeypatch):
    """BN -> Scale(-2) -> relu: the gated cotangent is rescaled by the Scale on its way back to
    BatchNorm (Cotangent._rescaled). The law agrees with Monte Carlo at the default budget, and
    the gate left unscaled (H off by the factor 4) is rejected (measured z = 6.8 on grad_q)."""
    from sigprop.state.moments import Cotangent

    block = sp.Serial(sp.Dense(), sp.BatchNorm(), sp.Scale(-2.0), sp.Act("relu"), sp.Dense())
    net = sp.Repeat(sp.Residual(block, alpha=1.0, beta=0.0), 2)
    mc = T.simulate_widths(net, root_seed=7)
    r = T.check(net, mc)
    assert not r.rejects(), f"family p = {r.p:.2g} ({r.worst})"
    monkeypatch.setattr(Cotangent, "_rescaled", lambda self, a, dls, shifted, ns: {"gate": self.gate})
    r = T.check(net, mc)
    assert r.rejects(), f"unscaled gate not detected: p = {r.p:.2g} ({r.worst})"
