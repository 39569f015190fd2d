"""Real PyTorch models: ``from_torch`` (the op tree) against ``simulate_torch`` (the model's own
statistics over re-initialisations), for the architectures of issue 17.

Each architecture is built at two widths (``WIDTHS``) and run over ``SEEDS`` re-initialisations
per width; ``sp.compare`` fits T(N) = T_inf + a/N over the two widths (the O(1/N) finite-width
bias of the infinite-width theory, and the 1/(3 N) bias variance of torch's default init, 0 at
infinite width: the reference's ``sigma_b_fan_in``) and gives z = (T_inf - theory) / se. Checked: q, mean,
corr (i < j) and the input gradient grad_q at every layer. Tolerance: standard errors only, a
Bonferroni bound over the checked points of one architecture (family false-alarm rate
``ALPHA``); no other allowance.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")
nn = torch.nn

import sigprop as sp
from sigprop.analysis.compare import stack_widths
from sigprop.data import config_of
from sigprop.errors import UnsupportedComposition
from sigprop.interop.torch import from_torch, simulate_torch
from sigprop.ops import Dense, FeatureAffine, layers_of
from sigprop.ops.base import op_from_dict
from sigprop.testing import gaussian_weights

WIDTHS = (64, 256)
SEEDS = 160  # per width
ALPHA = 1e-3  # family-wise false-alarm rate of one architecture's check
X2 = sp.Inputs(q=[1.0, 2.25], corr=0.5, mean=[0.3, -0.2])  # fixed inputs with a mean
G4 = sp.Inputs(q=[1.0, 2.25, 0.5, 1.5], corr=0.3, law="gaussian")
# BatchNorm: the input gradient holds E[1/s^4], s^2 ~ chi^2_(B-1): a finite seed variance
# needs B - 1 > 4; B = 8 keeps the tail index (B - 1)/2 = 3.5 clear of 2
G8 = sp.Inputs(q=[1.0, 2.25, 0.5, 1.5, 2.0, 0.8, 1.2, 0.7], corr=0.3, law="gaussian")


# -- the architectures, written as ordinary torch code ---------------------------------------
class PreLN(nn.Module):
    """x + W2 act(W1 LN(x)) (ratio 4), torch's default init."""

    def __init__(self, d, act=nn.GELU):
        super().__init__()
        self.ln, self.fc1, self.act = nn.LayerNorm(d), nn.Linear(d, 4 * d), act()
        self.fc2, self.drop = nn.Linear(4 * d, d), nn.Dropout(0.1)

    def forward(self, x):
        return x + self.drop(self.fc2(self.act(self.fc1(self.ln(x)))))


class PostLN(nn.Module):
    """LN(x + W2 act(W1 x)) (ratio 4)."""

    def __init__(self, d, act=nn.GELU):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, 4 * d), act(), nn.Linear(4 * d, d)
        self.ln = nn.LayerNorm(d)

    def forward(self, x):
        return self.ln(x + self.fc2(self.act(self.fc1(x))))


class ResNetV1(nn.Module):
    """relu(x + W2 relu(BN(W1 x))): an activation after the residual sum."""

    def __init__(self, d, last_bn=False):
        super().__init__()
        self.fc1, self.bn1, self.fc2 = nn.Linear(d, d), nn.BatchNorm1d(d), nn.Linear(d, d)
        self.bn2 = nn.BatchNorm1d(d) if last_bn else nn.Identity()

    def forward(self, x):
        return torch.relu(x + self.bn2(self.fc2(torch.relu(self.bn1(self.fc1(x))))))


class PreActResNet(nn.Module):
    """x + W2 relu(BN(W1 relu(BN(x)))) (He et al. 2016, identity mappings)."""

    def __init__(self, d):
        super().__init__()
        self.bn1, self.fc1 = nn.BatchNorm1d(d), nn.Linear(d, d, bias=False)
        self.bn2, self.fc2 = nn.BatchNorm1d(d), nn.Linear(d, d, bias=False)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.bn2(self.fc1(torch.relu(self.bn1(x))))))


class LayerScaleBlock(nn.Module):
    """x + gamma * W2 silu(W1 RMSNorm(x)), gamma a per-channel parameter (CaiT's LayerScale)."""

    def __init__(self, d, scale=0.5):
        super().__init__()
        self.norm, self.fc1 = nn.RMSNorm(d), nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.gamma = nn.Parameter(scale * torch.ones(d))

    def forward(self, x):
        return x + self.gamma * self.fc2(nn.functional.silu(self.fc1(self.norm(x))))


def seq(*blocks):
    return nn.Sequential(*blocks)


def mlp(d, act=nn.ReLU, bn_eval=False):
    """torchvision.ops.MLP style: (Linear, [BatchNorm], act, Dropout) x 2, Linear."""
    layers = []
    for n_in, n_out in ((d, 2 * d), (2 * d, d)):
        layers += [nn.Linear(n_in, n_out)]
        if bn_eval:
            layers += [nn.BatchNorm1d(layers[-1].out_features)]
        layers += [act(), nn.Dropout(0.2)]
    layers += [nn.Linear(d, d)]
    net = nn.Sequential(*layers)
    return net.eval() if bn_eval else net


def gaussian_init(sigma_w, sigma_b):
    """A custom init: W ~ N(0, sigma_w^2 / n_in), b ~ N(0, sigma_b^2) for every Linear."""
    def init(model):
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, sigma_w / math.sqrt(m.in_features))
                if m.bias is not None:
                    nn.init.normal_(m.bias, 0.0, sigma_b)
    return init


def affine_ln_init(model):
    """LayerNorm weight ~ 1 + 0.3 N(0, 1), bias ~ 0.2 N(0, 1) (a trained-looking norm)."""
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.2)


def built(make, init, width, seed=0):
    torch.manual_seed(seed)
    model = make(width)
    if init is not None:
        init(model)
    return model


D = sp.Dense
SQ3 = math.sqrt(1 / 3)  # torch's default Linear init: W, b ~ U(+-1/sqrt(n_in)), variance 1/(3 n_in)


def T(ratio=1.0):
    """nn.Linear at torch's default init, bias included."""
    return D(SQ3, ratio=ratio, init="uniform", sigma_b_fan_in=SQ3)


ARCHS = {
    # name: (make(width), init, inputs, reference op tree, written by hand in sigprop's terms)
    "preln_gelu_x2": (lambda d: seq(nn.Linear(d, d), PreLN(d), PreLN(d)), None, X2, sp.Serial(
        T(), *[sp.Residual(sp.Serial(sp.LayerNorm(), T(ratio=4), sp.Act("gelu"), T(ratio=0.25)))]
        * 2)),
    "postln_gelu_tanh": (lambda d: seq(PostLN(d, lambda: nn.GELU(approximate="tanh"))), None, X2,
                         sp.Serial(sp.Residual(sp.Serial(T(ratio=4), sp.Act("gelu_tanh"),
                                                         T(ratio=0.25))), sp.LayerNorm())),
    "resnet_v1": (lambda d: seq(ResNetV1(d)), None, G8, sp.Serial(sp.Residual(sp.Serial(
        T(), sp.BatchNorm(), sp.Act("relu"), T())), sp.Act("relu"))),
    "preact_resnet_x2": (lambda d: seq(PreActResNet(d), PreActResNet(d)), None, G8, sp.Serial(
        *[sp.Residual(sp.Serial(sp.BatchNorm(), sp.Act("relu"), D(SQ3, init="uniform"),
                                sp.BatchNorm(), sp.Act("relu"), D(SQ3, init="uniform")))] * 2)),
    "mlp_relu_default": (lambda d: mlp(d), None, X2, sp.Serial(
        T(ratio=2), sp.Act("relu"), T(ratio=0.5), sp.Act("relu"), T())),
    "mlp_tanh_gaussian_init": (lambda d: mlp(d, nn.Tanh), gaussian_init(1.5, 0.3), X2, sp.Serial(
        D(1.5, 0.3, ratio=2), sp.Act("tanh"), D(1.5, 0.3, ratio=0.5), sp.Act("tanh"), D(1.5, 0.3))),
    "mlp_leaky_bn_eval": (lambda d: mlp(d, lambda: nn.LeakyReLU(0.2), bn_eval=True),
                          gaussian_init(2**0.5, 0.0), X2, sp.Serial(
        D(2**0.5, ratio=2), sp.Scale(1 / math.sqrt(1 + 1e-5)), sp.Act("leaky_relu(0.2)"),
        D(2**0.5, ratio=0.5), sp.Scale(1 / math.sqrt(1 + 1e-5)), sp.Act("leaky_relu(0.2)"),
        D(2**0.5))),
    "mlp_elu_default": (lambda d: mlp(d, nn.ELU), None, X2, sp.Serial(
        T(ratio=2), sp.Act("elu"), T(ratio=0.5), sp.Act("elu"), T())),
    "layerscale_rmsnorm_silu": (lambda d: seq(nn.Linear(d, d), LayerScaleBlock(d)), None, X2,
                                sp.Serial(T(), sp.Residual(sp.Serial(
                                    sp.RMSNorm(eps=float(torch.finfo(torch.float32).eps)),
                                    T(ratio=2), sp.Act("silu"), T(ratio=0.5), sp.Scale(0.5))))),
    "preln_affine_ln": (lambda d: seq(nn.Linear(d, d, bias=False), PreLN(d, nn.ReLU)),
                        lambda m: (gaussian_init(1.0, 0.1)(m), affine_ln_init(m)), X2, sp.Serial(
        D(1.0), sp.Residual(sp.Serial(
            sp.LayerNorm(), FeatureAffine(gain=1.0, shift=0.0, gain_sq=1.09, shift_sq=0.04,
                                          gain_shift=0.0),
            D(1.0, 0.1, ratio=4), sp.Act("relu"), D(1.0, 0.1, ratio=0.25))))),
}
DEFAULT = ["preln_gelu_x2", "postln_gelu_tanh", "resnet_v1", "preact_resnet_x2",
           "mlp_relu_default", "mlp_tanh_gaussian_init", "mlp_leaky_bn_eval",
           "layerscale_rmsnorm_silu"]
SLOW = ["mlp_elu_default", "preln_affine_ln"]


def agreement(name, seeds=SEEDS, widths=WIDTHS):
    """The width-extrapolated comparison of one architecture and its checked z-scores."""
    make, init, inputs, ref = ARCHS[name]
    mcs = [simulate_torch(built(make, init, w), inputs, seeds, init=init, net=ref,
                          root_seed=100 * i + 7) for i, w in enumerate(widths)]
    cmp = sp.compare(sp.theory(ref, inputs), stack_widths(mcs),
                     variables=["q", "mean", "corr", "grad_q"], estimator="mean")
    B = inputs.n
    rows = []
    for var in ("q", "mean", "corr", "grad_q"):
        da = cmp[var]
        for layer in da.layer.values:
            pairs = [(i, j) for i in range(B) for j in range(i + 1, B)] if var == "corr" \
                else [(i, None) for i in range(B)]
            for i, j in pairs:
                sel = {"layer": layer, "input": i} | ({} if j is None else {"input_b": j})
                v = {s: float(da.sel(stat=s, **sel)) for s in ("estimate", "stderr", "theory", "z")}
                if var == "mean" and v["theory"] == 0 and v["stderr"] < 1e-12:
                    continue  # exactly 0 in both (LayerNorm, BatchNorm outputs): nothing to test
                rows.append((name, var, int(layer), i if j is None else (i, j), v))
    return cmp, rows


def worst_z(rows):
    """(the row of largest |z|, the bound): Bonferroni over the m checked points, two-sided
    |z| bound at family rate ALPHA (S = 160 seeds per width: Student t and normal agree to
    < 2 % in p at this level)."""
    zs = np.array([r[4]["z"] for r in rows])
    assert np.all(np.isfinite(zs)), [r[:4] for r in rows if not np.isfinite(r[4]["z"])]
    return max(rows, key=lambda r: abs(r[4]["z"])), stats.norm.isf(ALPHA / (2 * len(zs)))


def assert_agrees(rows):
    worst, bound = worst_z(rows)
    assert abs(worst[4]["z"]) < bound, (worst, bound)


# -- tests ------------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of 2-8 inputs: torch's thread pool only adds contention (10x slower measured
    on the shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", DEFAULT)
def test_from_torch_reads_the_architecture(name):
    """from_torch of the model is the hand-written tree: exactly, by the init scheme's name, for
    torch's default init; from the weights themselves for a custom init (variances within their
    sampling error: relative sd sqrt(2 / (n_in n_out)) <= 0.03 at width 64, 6 sd < 0.2; a zero
    bias exactly)."""
    make, init, _, ref = ARCHS[name]
    model = built(make, init, 64, seed=3)
    got = from_torch(model, torch.zeros(8, 64), weights="init" if init is None else "empirical")
    rtol = 1e-12 if init is None else 0.2
    assert _close(got.to_dict(), ref.to_dict(), rtol=rtol), (got.tree(), ref.tree())
    assert got.tree().splitlines()[0] == "Serial"


def test_from_torch_reads_default_init_weights():
    """Empirical reading of torch's default Linear init: sigma_w^2 = n_in mean(W^2) -> 1/3,
    sigma_b^2 = mean(b^2) -> 1/(3 n_in), the uniform law recognised by its kurtosis (1.8 vs 3);
    a Gaussian init is read as normal. Tolerances: 6 sampling sd of the mean of squares of
    n entries of a uniform law (relative sd sqrt(0.8 / n))."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 512)
    d = from_torch(nn.Sequential(lin))
    d = d.layers[0] if isinstance(d, sp.Serial) else d
    assert d.init == "uniform" and d.ratio == 2.0
    assert abs(d.sigma_w**2 * 3 - 1) < 6 * math.sqrt(0.8 / (256 * 512))
    assert abs(d.sigma_b**2 * 3 * 256 - 1) < 6 * math.sqrt(0.8 / 512)
    nn.init.normal_(lin.weight, 0, 0.1)
    assert from_torch(nn.Sequential(lin)).layers[0].init == "normal"
    nn.init.normal_(lin.weight, 0.05, 0.1)  # not zero-mean: refused
    with pytest.raises(UnsupportedComposition, match="zero-mean"):
        from_torch(nn.Sequential(lin))


@pytest.mark.parametrize("name", DEFAULT)
def test_theory_agrees_with_the_torch_model(name):
    _, rows = agreement(name)
    assert_agrees(rows)


@pytest.mark.slow
@pytest.mark.parametrize("name", DEFAULT + SLOW)
def test_theory_agrees_with_the_torch_model_at_four_times_the_seeds(name):
    _, rows = agreement(name, seeds=4 * SEEDS, widths=(64, 256, 1024))
    assert_agrees(rows)


def test_a_wrong_law_is_rejected():
    """The check can fail: the MLP's reference with its first sigma_w^2 10 % too large (q
    moves by 10 % from layer 1 on, ~5 standard errors of the extrapolated estimate)."""
    make, init, inputs, ref = ARCHS["mlp_relu_default"]
    first = ref.layers[0]
    wrong = sp.Serial(sp.Dense(first.sigma_w * 1.1**0.5, ratio=first.ratio, init="uniform"),
                      *ref.layers[1:])
    ARCHS["_wrong"] = (make, init, inputs, wrong)
    try:
        worst, bound = worst_z(agreement("_wrong")[1])
    finally:
        ARCHS.pop("_wrong")
    assert abs(worst[4]["z"]) > bound and worst[1] in ("q", "grad_q"), (worst, bound)


def test_simulate_torch_dataset_schema_and_determinism():
    make, init, inputs, _ = ARCHS["preln_gelu_x2"]
    model = built(make, init, 32)
    before = [p.detach().clone() for p in model.parameters()]
    a = simulate_torch(model, inputs, 3, root_seed=5)
    b = simulate_torch(model, inputs, 2, root_seed=5, first_seed=1)
    mc = sp.simulate(from_torch(model), inputs, width=32, seeds=3, backend="numpy", root_seed=5,
                     dtype="float64")
    assert set(a.data_vars) == set(mc.data_vars) and a["q"].dims == mc["q"].dims
    assert a.sizes == mc.sizes and list(a.block.values) == list(mc.block.values)
    np.testing.assert_allclose(a.q.values[1:], b.q.values)  # a seed is its own numbers
    np.testing.assert_allclose(a.q.values[:, 0], mc.q.values[:, 0], rtol=1e-12)  # same inputs
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # untouched
    assert a.attrs["kind"] == "montecarlo" and a.attrs["sampler"] == "torch"
    # delta ~ N(0, I): grad_q at the output is a mean of n = 32 squares (sd sqrt(2/32) per seed
    # and input); over the seeds x inputs (independent deltas) the sd is sqrt(2 / (32 k)): 5 sd
    k = a.grad_q.values[:, -1].size
    np.testing.assert_allclose(a.grad_q.values[:, -1].mean(), 1.0, atol=5 * (2 / (32 * k)) ** 0.5)


# -- what is refused, and why -----------------------------------------------------------------
class Unsupported(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc, self.gate, self.sig = nn.Linear(d, d), nn.Linear(d, d), nn.Sigmoid()
        self.soft = nn.Softmax(dim=-1)

    def forward(self, x):
        return self.soft(self.fc(x) * self.sig(self.gate(x)))


class DivideBy(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc, self.c = nn.Linear(8, 8), c

    def forward(self, x):
        return self.fc(x) / self.c


class Projection(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.skip, self.fc = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return self.skip(x) + torch.relu(self.fc(x))


REFUSED = {  # model -> (where it is refused, what the message names)
    "sigmoid, softmax, gating product": (lambda: Unsupported(8), "from_torch",
                                         ["Sigmoid at 'sig'", "Softmax at 'soft'",
                                          "a product of two signals"]),
    "projection shortcut": (lambda: Projection(8), "from_torch", ["neither of which"]),
    "resnet_v1 with BatchNorm last in the branch": (
        lambda: ResNetV1(8, last_bn=True), "theory", ["not jointly Gaussian"]),
    "gelu right after BatchNorm": (
        lambda: nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.GELU(), nn.Linear(8, 8)),
        "theory", ["directly after BatchNorm"]),
    "3-D tensors (tokens)": (lambda: nn.Sequential(nn.Linear(8, 8)), "shape", ["(B, n)"]),
    "a division by 0": (lambda: DivideBy(0.0), "from_torch", ["a division by 0"]),  # (was
    # Python's ZeroDivisionError)
    "an example input of no floats": (lambda: nn.Sequential(nn.Linear(8, 8)), "example",
                                      ["example_input='str'", "tensor of floats"]),  # (torch's
    # TypeError)
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_the_reason(case):
    make, where, words = REFUSED[case]
    with pytest.raises((UnsupportedComposition, sp.ConfigError)) as err:
        if where == "shape":
            from_torch(make(), torch.zeros(2, 3, 8))
        elif where == "example":
            from_torch(make(), "abc")
        else:
            net = from_torch(make(), torch.zeros(8, 8))
            sp.theory(net, G8 if where == "theory" else X2)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_missing_torch_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install sigprop\[torch\]"):
        from_torch(object())


def _close(a, b, rtol):
    """Two op dicts equal, numbers within rtol."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rtol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rtol * abs(b)
    return a == b


class _Relu(torch.nn.Module):
    """Linear then relu, the relu written as ``how``: "module" (nn.ReLU(inplace=True)),
    "functional" (F.relu(inplace=True)), "method" (``relu_``) or "out" (out of place)."""

    def __init__(self, d, how):
        super().__init__()
        self.lin, self.how = nn.Linear(d, d), how
        self.act = nn.ReLU(inplace=how == "module")

    def forward(self, x):
        h = self.lin(x)
        if self.how == "functional":
            return torch.nn.functional.relu(h, inplace=True)
        return h.relu_() if self.how == "method" else self.act(h)


@pytest.mark.parametrize("how", ["module", "functional", "method"])
def test_in_place_ops_record_the_same_values_as_out_of_place_ones(how):
    """An in-place relu would overwrite the recorded output of the Linear before it (its layer
    q about halved); run out of place, the statistics equal the out-of-place model's bit for bit."""
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    runs = [simulate_torch(nn.Sequential(_Relu(32, h), nn.Linear(32, 32)), inputs, seeds=4)
            for h in (how, "out")]
    for name in ("q", "corr", "grad_q"):
        np.testing.assert_array_equal(runs[0][name].values, runs[1][name].values)


def test_the_recorded_net_is_the_one_simulated_not_the_current_weights():
    """Weights scaled x3 after init (a "trained" module): every seed re-initialises, so the
    recorded net reads the re-initialised weights, sigma_w^2 = 1/3 (torch's default), not 3."""
    model = nn.Sequential(_Relu(64, "out"), nn.Linear(64, 64))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    ds = simulate_torch(model, sp.Inputs(q=1.0, corr=0.5, n=2), seeds=2,
                        root_seed=2**64 - 1)  # (the largest, as sp.simulate's)
    net = op_from_dict(config_of(ds)["net"])
    dense = [op for op in net.walk() if isinstance(op, sp.Dense)]
    assert len(dense) == 2
    # empirical sigma_w^2 of a U(+-1/sqrt n) matrix: relative sd sqrt(0.8 / n^2) = 0.014 at n = 64
    for op in dense:
        assert abs(op.sigma_w**2 * 3 - 1) < 6 * math.sqrt(0.8) / 64


def test_the_readmes_compare_of_a_model_runs_with_its_net_and_is_refused_without():
    """The README's ``sp.compare(sp.theory(net, inputs), sp.simulate_torch(model, inputs,
    seeds=64, net=net))`` with ``net = sp.from_torch(model, x)``: with ``net=net`` the pair is
    one experiment; without, the runs are recorded as the first re-initialisation reads, whose
    measured sigma_w differs from the model's by sampling, and the pair is refused by name (a
    review found the README's line without ``net=net``)."""
    model = nn.Sequential(_Relu(32, "out"), nn.Linear(32, 32))
    net, inputs = from_torch(model, torch.randn(8, 32)), sp.Inputs(q=1.0, corr=0.5, n=2)
    th = sp.theory(net, inputs)
    assert "q" in sp.compare(th, simulate_torch(model, inputs, seeds=2, net=net))
    with pytest.raises(sp.ConfigError, match="architecture differs"):
        sp.compare(th, simulate_torch(model, inputs, seeds=2))
    with pytest.raises(sp.ConfigError, match="first_seed"):  # (a bare OverflowError before)
        simulate_torch(model, inputs, seeds=1, first_seed=2**63)
    with pytest.raises(sp.ConfigError, match="root_seed.*<= 18446744073709551615"):  # (as
        simulate_torch(model, inputs, seeds=1, root_seed=2**64)  # sp.simulate's bound)


def test_layer_map_names_the_torch_code_of_each_layer():
    """One line per layer, pointing to the module path (or graph node) whose output it is."""
    from sigprop.interop.torch import layer_map

    model = nn.Sequential(_Relu(16, "out"), nn.Linear(16, 16), nn.Tanh())
    lines = layer_map(model).splitlines()
    net = from_torch(model)
    assert len(lines) == len(net.blocks()) == 4
    assert [line.split("<-")[1].strip() for line in lines] == ["0.lin", "0.act", "1", "2"]
    assert lines[1].split()[1].startswith("Act(name='relu')")


# the one finite-width gap of torch's default init: the weight gradient's term with uniform
# weights (their 4th cumulant acts on W x, not on the direction T x of the weight-gradient walk)
UNIFORM_WEIGHT_GRAD = "net > .*no weight-gradient rule for a Dense with uniform weights"


def _weight_gradient_not_covered(net, ds):
    """weight_grad_q's correction: NaN at every layer with a uniform Dense, and said so (the
    warning the tests above ignore), never a silent NaN."""
    with pytest.warns(sp.FiniteWidthWarning, match=UNIFORM_WEIGHT_GRAD):
        sp.theory(net, sp.Inputs(q=1.0, corr=0.5, n=2), width=256)
    blocks = [op for op in net.blocks()]
    uniform = [l + 1 for l, blk in enumerate(blocks)
               if any(isinstance(op, Dense) and op.init == "uniform" for op in blk.walk())]
    assert uniform and np.isnan(ds.weight_grad_q_rel_correction.sel(layer=uniform).values).all()


def test_finite_width_theory_of_a_model_whose_norm_weights_vary():
    """A Pre-LN model whose LayerNorm weights vary over the features (as a trained one's do):
    the import puts them in a FeatureAffine on the branch's normalised copy of the stream,
    which the finite-width walk takes (the rule's checks: tests/test_finite_width.py), so the
    corrections are finite at every layer and nothing warns (they were NaN from layer 1)."""
    torch.manual_seed(0)
    blocks = [PreLN(32, act=nn.ReLU) for _ in range(2)]
    for block in blocks:
        with torch.no_grad():
            block.ln.weight.normal_(1.0, 0.3)
            block.ln.bias.normal_(0.0, 0.2)
    net = from_torch(nn.Sequential(*blocks).eval(), torch.randn(2, 32))
    assert any(isinstance(op, FeatureAffine) and op.gain_sq is not None for op in net.walk())
    with warnings.catch_warnings():
        warnings.simplefilter("error", sp.FiniteWidthWarning)
        warnings.filterwarnings("ignore", UNIFORM_WEIGHT_GRAD, sp.FiniteWidthWarning)
        ds = sp.theory(net, sp.Inputs(q=1.0, corr=0.5, n=2), width=256)
    for name in ("log_q_correction", "var_log_q", "corr_correction", "grad_q_rel_correction"):
        assert np.isfinite(ds[name].values).all(), name
    _weight_gradient_not_covered(net, ds)


def test_finite_width_theory_of_a_default_init_mlp_with_layernorm():
    """nn.Sequential(Linear, LayerNorm, Tanh, ...) at torch's default init: uniform weights
    before a norm and its activation, each module a layer, so gradients start at Linear outputs
    and at norm outputs. Every correction is finite and nothing warns (they were NaN from the
    first Tanh on); the uniform weights' terms are in them (the same net with Gaussian weights
    differs: the rules' checks are in tests/test_finite_width.py)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32), nn.Tanh(),
                          nn.Linear(32, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 32))
    net = from_torch(model.eval(), torch.randn(2, 32))
    assert sum(isinstance(op, Dense) and op.init == "uniform" for op in net.walk()) == 3
    inputs = sp.Inputs(q=1.0, corr=0.5, n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sp.FiniteWidthWarning)
        warnings.filterwarnings("ignore", UNIFORM_WEIGHT_GRAD, sp.FiniteWidthWarning)
        ds = sp.theory(net, inputs, width=256)
        gauss = sp.theory(gaussian_weights(net), inputs, width=256)
    for name in ("log_q_correction", "var_log_q", "corr_correction", "grad_q_rel_correction",
                 "var_log_grad_q"):
        assert np.isfinite(ds[name].values).all(), name
    _weight_gradient_not_covered(net, ds)
    assert np.abs(ds.grad_q_rel_correction - gauss.grad_q_rel_correction).max() > 1e-4


def test_trained_and_subtracting_modules_are_read_by_the_documented_formulas():
    """Parameters a fresh init never has, against torch's own formulas: an eval-mode
    BatchNorm y = gamma (x - mu) / sqrt(v + eps) + beta is a FeatureAffine of gain gamma /
    sqrt(v + eps) and shift beta - mu gain (a running mean of 0 hides the shift's sign); x -
    f(x) is a Residual of alpha -1; a LayerNorm's per-feature weight g and bias b give the
    FeatureAffine's E g b (a product of means when they are independent, here they are not)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(8)
    with torch.no_grad():
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(2.0)
        bn.bias.fill_(0.1)
    affine = from_torch(nn.Sequential(nn.Linear(8, 8), bn.eval()), torch.randn(2, 8)).layers[1]
    gain = 2.0 / math.sqrt(4.0 + bn.eps)
    assert affine.gain == pytest.approx(gain, rel=1e-6)
    assert affine.shift == pytest.approx(0.1 - 0.5 * gain, rel=1e-6)

    class Subtract(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return x - torch.relu(self.fc(x))

    assert from_torch(Subtract(), torch.randn(2, 16)).layers[0].alpha == -1.0
    ln, z = nn.LayerNorm(64), torch.randn(64, dtype=torch.float64)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * z)
        ln.bias.copy_(0.2 * z)
    read = from_torch(nn.Sequential(nn.Linear(64, 64), ln, nn.Linear(64, 64)),
                      torch.randn(2, 64)).layers[2]
    assert read.gain_shift == pytest.approx(float(((1 + 0.3 * z) * (0.2 * z)).mean()), rel=1e-6)


def _preln_relu_x3(d=32):
    torch.manual_seed(0)
    return nn.Sequential(*[PreLN(d, nn.ReLU) for _ in range(3)])


def test_a_net_of_another_structure_is_refused_by_its_first_difference():
    """``net=`` names the model's layers, so it must have from_torch(model)'s structure: a
    plain tanh net of as many layers was recorded as the model's (compare then showed q
    DISAGREE, |z| 72); an activation changed inside a branch is found there. The numbers may
    differ (a hand-written reference), and a Repeat reads as its copies."""
    model, inputs = _preln_relu_x3(), sp.Inputs(q=1.0, corr=0.5, n=2)
    with pytest.raises(sp.ConfigError, match="Dense at layer 1, op 0, where from_torch"):
        simulate_torch(model, inputs, seeds=1, net=sp.presets.plain(depth=3, act="tanh"))
    wrong = from_torch(nn.Sequential(PreLN(32, nn.ReLU), PreLN(32, nn.ReLU), PreLN(32, nn.Tanh)))
    with pytest.raises(sp.ConfigError, match=r"Act\('tanh'\) at layer 3, op 0 Residual's branch, "
                                             r"op 2, where from_torch\(module\) has Act\('relu'\)"):
        simulate_torch(model, inputs, seeds=1, net=wrong)
    ref = sp.Repeat(sp.Residual(sp.Serial(sp.LayerNorm(), T(ratio=4), sp.Act("relu"),
                                          T(ratio=0.25))), 3)
    assert simulate_torch(model, inputs, seeds=1, net=ref).sizes["layer"] == 4


@pytest.mark.parametrize("make, x, error, words", [
    (lambda: nn.Sequential(nn.Linear(16, 16)), (4, 17), sp.ConfigError,
     "example_input features=17 is invalid: allowed 16"),
    (lambda: nn.Sequential(nn.ReLU(), nn.Linear(16, 16)), (4, 17), UnsupportedComposition,
     "fails on a (4, 17) input at _1, Linear at '1': mat1 and mat2"),
    (lambda: nn.Sequential(nn.Linear(16, 16), nn.LayerNorm([2, 8])), (4, 16),
     UnsupportedComposition, "LayerNorm at '1': LayerNorm over more than the last dim"),
    (lambda: nn.Sequential(nn.Conv1d(16, 16, 1)), (4, 16), UnsupportedComposition,
     "Conv1d at '0': no sigprop op"),
    (lambda: nn.Sequential(nn.Embedding(16, 16)), (4, 16), UnsupportedComposition,
     "Embedding at '0': no sigprop op"),
])
def test_an_input_or_module_torch_cannot_run_is_named_not_a_torch_traceback(
        make, x, error, words, capsys):
    """A wrong input width, or a module sigprop has no op for, is a sigprop error naming the
    module (torch's own RuntimeError, with a printed traceback, before), and nothing is
    printed."""
    with pytest.raises(error) as err:
        from_torch(make(), torch.randn(*x))
    assert words in str(err.value)
    assert capsys.readouterr().err == ""


def test_simulate_torch_refuses_bad_arguments_by_name():
    """A width other than the model's own (torch's "Given normalized_shape=[32]" before), or one
    the model fails on; a net or init of the wrong type (an AttributeError and a TypeError)."""
    model, inputs = _preln_relu_x3(), sp.Inputs(q=1.0, corr=0.5, n=2)
    with pytest.raises(sp.ConfigError, match="width=64 is invalid: allowed 32"):
        simulate_torch(model, inputs, seeds=1, width=64)
    with pytest.raises(UnsupportedComposition, match="fails on a .2, 17. input at _1, Linear"):
        simulate_torch(nn.Sequential(nn.ReLU(), nn.Linear(16, 16)), inputs, seeds=1, width=17)
    with pytest.raises(sp.ConfigError, match="net='str'"):
        simulate_torch(model, inputs, seeds=1, net="x")
    with pytest.raises(sp.ConfigError, match="init='int'"):
        simulate_torch(model, inputs, seeds=1, init=3)


def test_simulate_torch_refuses_what_simulate_refuses():
    """A hostile review's calls, each given back as sp.simulate gives it: a model narrower than
    B + 1 (its inputs came out wrong: q = 0, or corr 1, unsaid), a float32 net past its range
    (inf and NaN in log_q, unsaid), a BatchNorm over one input (torch's own ValueError), and
    a numpy dtype (accepted, then a TypeError in the provenance: recorded by name now)."""
    inputs = sp.Inputs(q=[1.0, 2.0], corr=0.5)
    with pytest.raises(sp.ConfigError, match=r"width=2 is invalid: allowed >= 3"):
        simulate_torch(nn.Sequential(nn.Linear(2, 16), nn.ReLU()), inputs, seeds=1)
    mlp = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(sp.MonteCarloOverflow, match="forward pass"):
            simulate_torch(mlp, sp.Inputs(q=1e80), seeds=1, dtype="float32")
    with pytest.raises(sp.ConfigError, match="batch size B .* >= 2 for BatchNorm"):
        simulate_torch(nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16)), sp.Inputs(q=1.0),
                       seeds=1)
    ds = simulate_torch(mlp, inputs, seeds=1, dtype=np.dtype("float32"))
    assert ds.attrs["dtype"] == "float32"
    np.testing.assert_allclose(np.exp(ds.log_q.isel(layer=0, seed=0).values), [1.0, 2.0],
                               rtol=1e-6)  # (sp.simulate's exact inputs, rounded to float32:
    # 16 squares of relative error 6e-8 each)


def test_a_torch_run_stacks_with_a_simulate_run_of_its_net():
    """simulate_torch draws the model's own weights (re-initialised per seed), the law the
    conditional sampler draws for its net: the two runs, at widths 16 and 32, stack as runs of
    one law of the weights; an independent-sampler run of the same net does not."""
    model = nn.Sequential(nn.Linear(16, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False))
    x0 = sp.Inputs(q=1.0, corr=0.5, n=2)
    own = simulate_torch(model, x0, seeds=4, root_seed=1)
    net = op_from_dict(config_of(own)["net"])
    wide = sp.simulate(net, x0, width=32, seeds=4, root_seed=2, backend="numpy")
    assert stack_widths([own, wide])["width"].values.tolist() == [16, 32]
    fresh = sp.simulate(net, x0, width=32, seeds=4, root_seed=2, sampler="independent",
                        backend="numpy")
    with pytest.raises(sp.ConfigError, match=r"samplers=\['torch', 'independent'\]"):
        stack_widths([own, fresh])


def test_an_example_input_of_integers_is_refused_by_name():
    """An example input of ints (a tensor or an array) is no (B, n) array of floats: refused
    by name, as a string is, rather than run through the module."""
    model = nn.Sequential(nn.Linear(8, 8))
    for example in (torch.zeros(4, 8, dtype=torch.long), np.zeros((4, 8), dtype=int)):
        with pytest.raises(sp.ConfigError, match="example_input.*tensor of floats"):
            from_torch(model, example)


class MultiplyBy(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc, self.c = nn.Linear(8, 8), c

    def forward(self, x):
        return self.fc(x) * self.c


def test_a_multiplication_by_0_is_a_scale_of_0_where_a_division_by_0_is_refused():
    """x * 0 is a Scale of 0 (the signal is exactly 0: q = 0 at once); only x / 0, inf or NaN
    at every feature, has no sigprop op."""
    net = from_torch(MultiplyBy(0.0), torch.zeros(8, 8))
    scales = [op for op in net.walk() if isinstance(op, sp.Scale)]
    assert len(scales) == 1 and scales[0].c == 0
    q = sp.theory(net, X2)["q"].isel(layer=-1).values
    assert (q == 0).all()


def test_simulate_torch_raises_where_the_gradients_alone_leave_float32():
    """Two bias-free Linears with weights ~1e20 on inputs of q = 1e-60: the forward stays in
    float32 (|x| ~ 1e-30, 1e-10, 1e10) but the gradient at the inputs is ~1e40, past float32's
    3.4e38; raised as the backward pass's overflow (was inf in log_grad_q, unsaid), and in
    float64 the same run is finite."""
    def big(model):
        with torch.no_grad():
            for lin in model:
                lin.weight.mul_(1e20)

    mlp = nn.Sequential(nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False))
    with pytest.raises(sp.MonteCarloOverflow, match="backward pass"):
        simulate_torch(mlp, sp.Inputs(q=1e-60), seeds=1, init=big, dtype="float32")
    ds = simulate_torch(mlp, sp.Inputs(q=1e-60), seeds=1, init=big, dtype="float64")
    assert np.isfinite(ds.log_grad_q.values).all() and np.isfinite(ds.log_q.values).all()


def test_a_layer_with_no_torch_node_of_its_own_is_nan_not_an_overflow():
    """A LayerNorm whose weight is not one number is LayerNorm + FeatureAffine: two layers of
    one torch node, so the LayerNorm's own layer has no value (NaN by design, per the
    docstring). That NaN is no overflow: the run is not refused, and every other layer is
    finite."""
    def spread_gain(model):
        with torch.no_grad():
            model[1].weight.copy_(torch.linspace(0.5, 1.5, 16))

    model = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU())
    ds = simulate_torch(model, X2, seeds=2, init=spread_gain)
    kinds = [type(op).__name__ for op in layers_of(op_from_dict(config_of(ds)["net"]))]
    assert kinds == ["Dense", "LayerNorm", "FeatureAffine", "Act"]
    for name in ("log_q", "log_grad_q"):
        nan = np.isnan(ds[name]).all(["seed", "input"]).values
        assert nan.tolist() == [False, False, True, False, False], name
        assert np.isfinite(ds[name].isel(layer=[0, 1, 3, 4])).all()


@pytest.mark.parametrize("make", [lambda: nn.Linear(16, 16), lambda: nn.LayerNorm(16),
                                  lambda: nn.BatchNorm1d(16).eval()])
def test_a_single_layer_is_read_as_it_is_inside_sequential(make):
    """A bare torch.nn layer was refused ("no sigprop op for linear", a trace error for
    BatchNorm): fx traced into its forward; it is read as nn.Sequential(layer), and simulated."""
    torch.manual_seed(0)
    layer, x = make(), torch.randn(4, 16)
    assert from_torch(layer, x).to_dict() == from_torch(nn.Sequential(layer), x).to_dict()
    ds = simulate_torch(layer, sp.Inputs(q=1.0, corr=0.5, n=2), seeds=1)
    assert ds.sizes["layer"] == 2
