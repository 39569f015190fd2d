"""Named architectures, each only a composition of ops (DESIGN.md, "Presets").

Every preset takes ``depth``, ``act``, the branch ``shape`` (``mlp``: Dense-act-Dense with an
expansion ``ratio``; ``act_dense``: pre-activation; ``dense_act``), the branch scale ``alpha``
(a number, a sweep, or one of the schedules ``"1"``, ``"1/sqrt(L)"``, ``"1/L"``) and overrides of
the default weight scales: the first Dense has ``sigma_w^2 = 2`` for relu-like activations and
1 otherwise, the last Dense ``sigma_w = 1``, biases 0.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers

from sigprop.errors import ConfigError, UnknownName
from sigprop.kernels.gaussian import get_activation
from sigprop.ops import Act, BatchNorm, Dense, LayerNorm, Op, Repeat, Residual, RMSNorm, Serial
from sigprop.state.params import Sweep

RELU_LIKE = ("gelu", "silu", "gelu_tanh")  # not homogeneous: He's sqrt(2) by convention
SHAPES = ("mlp", "act_dense", "dense_act")
SCHEDULES = {"1": lambda L: 1.0, "1/sqrt(L)": lambda L: 1 / math.sqrt(L), "1/L": lambda L: 1 / L}
NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm, "batchnorm": BatchNorm}


def branch_scale(alpha, depth: int):
    """A number, a sweep, or a named schedule evaluated at ``depth``."""
    if isinstance(alpha, str):
        if alpha not in SCHEDULES:
            raise ConfigError("alpha", alpha, f"a number or one of {list(SCHEDULES)}")
        return SCHEDULES[alpha](depth)
    if isinstance(alpha, Sweep):
        return alpha
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
        raise ConfigError("alpha", alpha, f"a number, a sweep or one of {list(SCHEDULES)}")
    return float(alpha)


def first_gain(act: str) -> float:
    """The default sigma_w of the Dense before ``act``: for a positively homogeneous act, the
    gain that keeps q, 1 / sqrt(E phi(z)^2) (relu sqrt 2, leaky_relu(s) sqrt(2 / (1 + s^2)),
    linear 1); sqrt 2 for the relu-like gelu, silu and gelu_tanh; else 1."""
    phi = get_activation(act)
    if phi.degree == 1:
        return _homogeneous_gain(phi.name)
    return math.sqrt(2.0) if phi.name in RELU_LIKE else 1.0


@functools.cache  # (a kernel evaluation, ~10 us of each preset built)
def _homogeneous_gain(name: str) -> float:
    """1 / sqrt(E phi(z)^2) of the positively homogeneous activation ``name``."""
    return math.sqrt(1 / float(get_activation(name).kernel(1.0, 1.0, 1.0)))


def branch(act="relu", shape="mlp", ratio=1.0, sigma_w1=None, sigma_w2=1.0, sigma_b=0.0,
           sigma_b_fan_in=0.0) -> Op:
    """The residual branch F. ``sigma_w1`` defaults to :func:`first_gain` of ``act``; each
    Dense's bias variance is sigma_b^2 + sigma_b_fan_in^2 / n_in (torch's: sigma_b = 0,
    sigma_b_fan_in^2 = 1/3)."""
    if shape not in SHAPES:
        raise ConfigError("shape", shape, f"one of {SHAPES}")
    s1 = first_gain(act) if sigma_w1 is None else sigma_w1
    if shape == "mlp":
        if isinstance(ratio, Sweep):  # (its second Dense would need a sweep of 1 / ratio)
            raise ConfigError("ratio", ratio, "a number: a swept hidden width needs the second "
                              "Dense's ratio swept as its inverse; build the branch by hand, "
                              "one net per ratio")
        return Serial(Dense(s1, sigma_b, ratio, sigma_b_fan_in=sigma_b_fan_in), Act(act),
                      Dense(sigma_w2, sigma_b, 1 / ratio, sigma_b_fan_in=sigma_b_fan_in))
    dense = Dense(s1, sigma_b, sigma_b_fan_in=sigma_b_fan_in)
    return Serial(Act(act), dense) if shape == "act_dense" else Serial(dense, Act(act))


def _norm(norm: str, eps: float) -> Op:
    if norm not in NORMS:
        raise ConfigError("norm", norm, f"one of {list(NORMS)}")
    return NORMS[norm](eps=eps)


def _depth(depth) -> int:
    """``depth`` as an int (a numpy integer too: ``for L in np.arange(...)``), else refused."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ConfigError("depth", depth, "an integer >= 1")
    return int(depth)


def _checked(preset):
    """``preset`` refusing an argument it does not take (its own, and the branch's where it
    forwards ``**kw``) with a ConfigError that lists those it takes."""
    params = inspect.signature(preset).parameters
    takes = [p for p, v in params.items() if v.kind is not v.VAR_KEYWORD]
    if any(v.kind is v.VAR_KEYWORD for v in params.values()):
        takes += [p for p in inspect.signature(branch).parameters if p not in takes]

    @functools.wraps(preset)
    def checked(*args, **kw):
        unknown = [k for k in kw if k not in takes]
        if unknown:
            raise ConfigError(f"presets.{preset.__name__} argument", unknown[0],
                              f"one of {', '.join(takes)}")
        return preset(*args, **kw)

    return checked


@_checked
def plain(depth: int, act="relu", **kw) -> Op:
    """No skip connection: x -> F(x), repeated."""
    return Repeat(branch(act, **kw), _depth(depth))


@_checked
def resnet(depth: int, act="relu", alpha="1", **kw) -> Op:
    """No normalisation: x -> x + alpha F(x)."""
    return Repeat(Residual(branch(act, **kw), branch_scale(alpha, _depth(depth))), depth)


@_checked
def preln(depth: int, act="relu", alpha="1", final_norm=False, norm="layernorm", eps=1e-5, **kw):
    """Pre-LN: x -> x + alpha F(LN x); optionally a final LN after the stack."""
    if not isinstance(final_norm, bool):  # ("no" is true)
        raise ConfigError("final_norm", final_norm, "true or false (a final norm after the stack)")
    blk = Residual(Serial(_norm(norm, eps), branch(act, **kw)), branch_scale(alpha, _depth(depth)))
    net = Repeat(blk, depth)
    return Serial(net, _norm(norm, eps)) if final_norm else net


@_checked
def postln(depth: int, act="relu", alpha="1", norm="layernorm", eps=1e-5, **kw) -> Op:
    """Post-LN: x -> LN(x + alpha F(x))."""
    blk = Serial(Residual(branch(act, **kw), branch_scale(alpha, _depth(depth))), _norm(norm, eps))
    return Repeat(blk, depth)


@_checked
def periln(depth: int, act="relu", alpha="1", norm="layernorm", eps=1e-5, **kw) -> Op:
    """Peri-LN: x -> x + alpha LN(F(LN x))."""
    inner = Serial(_norm(norm, eps), branch(act, **kw), _norm(norm, eps))
    return Repeat(Residual(inner, branch_scale(alpha, _depth(depth))), depth)


@_checked
def deepnorm(depth: int, act="relu", eps=1e-5, sublayers: int = 2, **kw) -> Op:
    """DeepNorm (Wang et al. 2022, encoder constants): x -> LN(a x + F(x)), every branch Dense
    initialised with an extra gain b.

    DeepNet's constants are a = (2N)^{1/4}, b = (8N)^{-1/4} for N *layers*, a layer holding
    ``sublayers`` residual sublayers (2 in DeepNet: attention and FFN, each
    x -> LN(a x + G(x))). Here one block is one sublayer, so L blocks are N = L / sublayers
    layers and

        a = (2 L / sublayers)^{1/4},   b = (8 L / sublayers)^{-1/4};

    with DeepNet's counting (the default, sublayers = 2) a = L^{1/4}, b = (4L)^{-1/4}, which
    keep DeepNet's per-sublayer update bound 2 b^2 / a^2 = 1 / L (one over the number of
    residual sublayers). ``sublayers = 1`` counts each block as a DeepNet layer
    (a = (2L)^{1/4}, b = (8L)^{-1/4})."""
    L = _depth(depth)
    if isinstance(sublayers, bool) or not isinstance(sublayers, int) or sublayers < 1:
        raise ConfigError("sublayers", sublayers, "an integer >= 1 (residual sublayers per "
                          "DeepNet layer; DeepNet has 2)")
    a, b = (2 * L / sublayers) ** 0.25, (8 * L / sublayers) ** -0.25
    s1 = kw.pop("sigma_w1", None)
    s1 = first_gain(act) if s1 is None else s1
    s2 = kw.pop("sigma_w2", 1.0)
    f = branch(act, sigma_w1=b * s1, sigma_w2=b * s2, **kw)
    return Repeat(Serial(Residual(f, alpha=1.0, beta=a), LayerNorm(eps=eps)), L)


@_checked
def skipinit(depth: int, act="relu", alpha=0.0, **kw) -> Op:
    """SkipInit: x -> x + alpha F(x) with alpha = 0 (or small) at initialisation."""
    return resnet(depth, act, alpha=alpha, **kw)


@_checked
def prebn(depth: int, act="relu", alpha="1", eps=1e-5, **kw) -> Op:
    """Pre-BN counterpart of Pre-LN: x -> x + alpha F(BN x); its inputs must be Gaussian,
    ``sp.Inputs(..., law="gaussian")`` (BatchNorm's laws take jointly Gaussian features)."""
    return preln(depth, act, alpha, norm="batchnorm", eps=eps, **kw)


@_checked
def postbn(depth: int, act="relu", alpha="1", eps=1e-5, **kw) -> Op:
    """Post-BN counterpart of Post-LN: x -> BN(x + alpha F(x)); its inputs must be Gaussian,
    ``sp.Inputs(..., law="gaussian")``."""
    return postln(depth, act, alpha, norm="batchnorm", eps=eps, **kw)


PRESETS = {f.__name__: f for f in (plain, resnet, preln, postln, periln, deepnorm, skipinit,
                                   prebn, postbn)}


def get(name: str):
    if name not in PRESETS:
        raise UnknownName("preset", name, PRESETS)
    return PRESETS[name]


def __getattr__(name: str):
    """``sp.presets.<typo>``: a ConfigError naming the presets, not a bare AttributeError."""
    if name.startswith("__"):
        raise AttributeError(name)
    raise UnknownName("preset", name, PRESETS)
