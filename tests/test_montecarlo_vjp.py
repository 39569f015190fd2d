"""Monte Carlo faces: every op's vector-Jacobian product against central finite differences.

Tiny nets in float64 with the explicit sampler (so a net is a fixed function of its input once
the seed is fixed). Signals enter with non-zero log scales ls, so the log-space bookkeeping
(eps scaled by e^(-2 ls), BatchNorm's common scale, residual mixing) is differentiated too.
Central differences have error O(h^2 f''') ~ 1e-8 at h = 1e-4 on O(1) values; we assert 1e-6
relative to the size of the directional derivative.
"""

import numpy as np
import pytest

import sigprop as sp
from sigprop.engines.samplers import SAMPLERS, Conditional
from sigprop.state.arrays import Env, Sig
from sigprop.state.rng import Streams

S, B, N = 2, 3, 6
H = 1e-4
RTOL = 1e-6


def _env(sampler="explicit"):
    return Env(np, np.dtype("float64"), Streams(np, 7, np.arange(S)), SAMPLERS[sampler], block=1)


def _true(s: Sig):
    return np.exp(s.ls)[..., None] * s.x


def _branch(act="tanh", bias=0.3):
    return sp.Serial(sp.Dense(1.3, bias, ratio=2), sp.Act(act), sp.Dense(0.9, bias, ratio=0.5))


OPS = {
    "dense": sp.Dense(1.4, 0.5, ratio=2),
    "relu": sp.Act("relu"),
    "tanh": sp.Act("tanh"),
    "layernorm": sp.LayerNorm(eps=0.3, gain=1.5),
    "rmsnorm": sp.RMSNorm(eps=0.3),
    "batchnorm": sp.BatchNorm(eps=0.3),
    "scale": sp.Scale(-0.7),
    "residual": sp.Residual(_branch(), alpha=0.6, beta=0.8),
    "serial": sp.Serial(sp.LayerNorm(0.1), _branch("relu"), sp.RMSNorm(0.2)),
    "repeat": sp.Repeat(sp.Residual(sp.Serial(sp.BatchNorm(0.2), _branch()), alpha=0.5), 3),
    "postln": sp.presets.postln(2, act="tanh").block,
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_vjp_matches_central_differences(name):
    op, env = OPS[name], _env()
    rng = np.random.default_rng(1)
    ls = rng.uniform(-2.0, 2.0, (S, B))  # true input e^ls x: exercises the log-scale paths
    x = rng.standard_normal((S, B, N))
    g = rng.standard_normal((S, B, op.mc_forward(Sig(x, ls), env)[0].x.shape[-1]))
    v = rng.standard_normal((S, B, N))

    def f(xt):  # <g, true output> as a function of the (scaled) input
        return np.sum(g * _true(op.mc_forward(Sig(xt, ls), env)[0]))

    _, res = op.mc_forward(Sig(x, ls), env)
    gin = _true(op.mc_vjp(res, Sig(g, np.zeros((S, B))), env))
    # d/dt f(x + t v) with x scaled: the true input moves by e^ls v
    fd = (f(x + H * v) - f(x - H * v)) / (2 * H)
    an = np.sum(gin * np.exp(ls)[..., None] * v)
    assert an == pytest.approx(fd, rel=RTOL, abs=RTOL * np.abs(gin).sum())


@pytest.mark.parametrize("rank", [3, 2, 1])
def test_conditional_vjp_is_consistent_with_forward(rank):
    # The implicit W satisfies W x_b = a_b, so <D W, X> = sum_b d_b . W x_b = <D, A> exactly,
    # also when X is rank deficient (repeated inputs): rounding only (float64).
    env = _env("conditional")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((S, rank, N))
    x = np.concatenate([x, x[:, :B - rank] * 2.0], axis=1)  # rows beyond the rank are repeats
    a, res = Conditional().forward(x, 0.8, 5, env)
    d = rng.standard_normal(a.shape)
    g = Conditional().vjp(res, d, 0.8, env)
    np.testing.assert_allclose(np.einsum("sbi,sci->sbc", g, x), np.einsum("sbj,scj->sbc", d, a),
                               rtol=1e-10, atol=1e-10)


def test_conditional_forward_repeated_inputs_give_repeated_images():
    # Identical inputs see the same W: their images must be identical (rank-1 square root).
    env = _env("conditional")
    x = np.repeat(np.random.default_rng(3).standard_normal((S, 1, N)), B, axis=1)
    a, _ = Conditional().forward(x, 1.0, 4, env)
    np.testing.assert_allclose(a, np.repeat(a[:, :1], B, axis=1), rtol=1e-12, atol=1e-12)
