"""Your own PyTorch model in sigprop: ``from_torch`` (its op tree), ``simulate_torch`` (its own
statistics over re-initialisations, in the dataset schema of ``sp.simulate``).

    net = from_torch(model, x)                    # traced by torch.fx, printed by net.tree()
    th = sp.theory(net, sp.Inputs(q=1.0, corr=0.5, n=2))
    mc = simulate_torch(model, sp.Inputs(q=1.0, corr=0.5, n=2), seeds=64, net=net)
    sp.compare(th, mc)                            # (net=net: recorded as the net th ran)

PyTorch is an optional extra (``pip install sigprop[torch]``), imported inside the functions.

What maps to what (anything else is refused, each module named with its place in the graph):

* ``nn.Linear`` -> ``Dense``: sigma_w^2 = n_in mean(W^2), sigma_b^2 = mean(b^2) (the bias
  law Gaussian: see ``Dense``), ratio =
  n_out / n_in, the weight law uniform when the weights' kurtosis says so (``weights=
  "empirical"``, the default); ``weights="init"``: torch's default init by name, W ~
  U(+-1/sqrt(n_in)) (sigma_w^2 = 1/3) and its bias U(+-1/sqrt(n_in)), of variance 1/(3 n_in):
  ``sigma_b_fan_in^2 = 1/3``, 0 at infinite width, a 1/N term of ``sp.theory(..., width=N)``.
  Weights whose mean is far from 0 (|mean| > 6 standard errors) are refused: the law assumes
  zero-mean weights.
* ``nn.LayerNorm`` / ``nn.RMSNorm`` / ``nn.BatchNorm1d`` (train mode, or without running
  statistics) -> ``LayerNorm`` / ``RMSNorm`` / ``BatchNorm`` with the same eps (RMSNorm's
  ``eps=None`` is the machine epsilon of its dtype, as in torch), then their per-feature
  weight and bias: a ``gain`` of the op when the weight is constant and the bias 0 (torch's
  init), a ``FeatureAffine`` with the vectors' moments otherwise;
* ``nn.BatchNorm1d`` in eval mode (running statistics mu, v) -> the fixed affine map
  y = a x + c, a = gamma / sqrt(v + eps), c = beta - a mu: a ``Scale`` (1 / sqrt(1 + eps) at
  init) or a ``FeatureAffine``;
* ``nn.ReLU, GELU (approximate 'none' or 'tanh'), Tanh, SiLU, LeakyReLU, ELU`` and their
  functional forms -> ``Act``;
* ``nn.Identity`` -> nothing; ``nn.Dropout`` and ``F.dropout`` -> nothing: the statistics are
  those of the network with dropout off (eval mode), which is also how ``simulate_torch`` runs it;
* ``a * x``, ``x / a`` (a number) -> ``Scale``; ``x * p`` with a parameter vector p
  (LayerScale) -> ``Scale`` or ``FeatureAffine``; ``x + p`` -> ``FeatureAffine``;
* ``b * x + a * f(x)`` (or ``-``), where f is a chain of the above starting from x ->
  ``Residual(f, alpha=a, beta=b)``.

The top-level net is a ``Serial`` whose layers are the stream's ops in order, so layer l of a
dataset is the output of the torch node that op came from (``net`` records them; an op with
no node of its own, a norm's affine split off into a ``FeatureAffine``, has NaN statistics in
``simulate_torch``: it is inside one torch module).

May import: every layer up to ``engines`` and ``analysis``.
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
from dataclasses import dataclass

import numpy as np

from sigprop.engines.montecarlo import input_signals, mc_dataset, signal_stats
from sigprop.errors import ConfigError, UnsupportedComposition
from sigprop.kernels.gaussian import activation_name
from sigprop.ops import (
    Act,
    BatchNorm,
    Dense,
    FeatureAffine,
    LayerNorm,
    Op,
    Repeat,
    Residual,
    RMSNorm,
    Scale,
    Serial,
    layers_of,
)
from sigprop.provenance import make_attrs
from sigprop.state.arrays import Env
from sigprop.state.inputs import Inputs
from sigprop.state.rng import Streams

INSTALL_HINT = "pip install sigprop[torch]"
WEIGHTS = ("empirical", "init")
MEAN_Z = 6.0  # a weight mean beyond 6 standard errors of the mean is not a zero-mean init
UNIFORM_KURTOSIS = 2.4  # between the uniform law's kurtosis 1.8 and the normal's 3 (the sample
#                         kurtosis of 1e3 entries has sd ~0.15 (normal), ~0.04 (uniform))
UNIFORM_MIN_ENTRIES = 1000  # fewer: the sd grows as 1/sqrt(n) and the test loses its 4 sd margin
CONSTANT_RTOL = 1e-9  # a per-feature vector is constant when its spread is below this


def _torch():
    try:
        import torch
        import torch.fx
    except ImportError as err:
        raise ImportError(f"sigprop's PyTorch bridge needs PyTorch: {INSTALL_HINT}") from err
    return torch


@dataclass
class _Plan:
    """The net and, per layer, the torch node whose output it is (None: inside a module), the
    node of its residual branch's output (None: not a residual), the stream width, and per layer
    the torch code of its node (a module path, or the graph node and its function)."""

    net: Op
    nodes: list
    branches: list
    width: int | None
    sources: list


def from_torch(module, example_input=None, weights: str = "empirical") -> Op:
    """The sigprop op tree of a torch module (see the module docstring for what maps to what).

    ``example_input`` (B, n), when given, is run through the module to check that every tensor
    on the way is a batch of feature vectors (B, N). ``weights``: "empirical" (the variances
    of the module's own weights) or "init" (torch's default init by name).

    A single torch.nn layer (``nn.Linear(16, 16)``) is read as ``nn.Sequential(layer)``. A
    module called more than once (shared weights, weight tying) is read as that many layers
    with independent weights: the theory of the untied network.
    """
    return _convert(module, weights, example_input).net


def layer_map(module, example_input=None, weights: str = "empirical") -> str:
    """The layers of ``from_torch(module)`` beside the torch code they come from: one line per
    layer l = 1..L, ``l  <op>  <-  <module path or graph node>`` (an op inside a mapped module,
    e.g. LayerNorm's affine, points to no node of its own: "(inside)")."""
    plan = _convert(module, weights, example_input)
    rows = [f"{l:>4}  {op.label():<48}  <-  {src or '(inside)'}"
            for l, (op, src) in enumerate(zip(layers_of(plan.net), plan.sources), start=1)]
    return "\n".join(rows)


# -- conversion ---------------------------------------------------------------------------------
def _convert(module, weights: str, example_input=None) -> _Plan:
    torch = _torch()
    if weights not in WEIGHTS:
        raise ConfigError("weights", weights, f"one of {WEIGHTS}")
    gm = _trace(torch, module)
    x = None
    if example_input is not None:
        try:
            x = torch.as_tensor(example_input)
        except (TypeError, ValueError, RuntimeError):
            x = None
        if x is None or not x.is_floating_point():
            raise ConfigError("example_input", type(example_input).__name__,
                              "a (B, n) array or tensor of floats: B inputs of n features")
        if x.ndim != 2:
            raise ConfigError("example_input shape", tuple(x.shape),
                              "(B, n): B inputs of n features")
    plan = _Converter(gm, weights).plan()
    if x is not None:
        _check_shapes(torch, copy.deepcopy(gm), x, plan.width, "example_input features")
    return plan


def _trace(torch, module):
    """The fx graph of ``module``, in-place ops made out-of-place; a leaf module of torch.nn
    (``nn.Linear(...)`` on its own) is traced as ``nn.Sequential(module)``, as fx traces the
    modules inside a model."""
    if not isinstance(module, torch.nn.Module):
        raise ConfigError("module", type(module).__name__, "a torch.nn.Module")
    if torch.fx.Tracer().is_leaf_module(module, ""):
        module = torch.nn.Sequential(module)
    try:
        return _out_of_place(torch, torch.fx.symbolic_trace(module))
    except Exception as err:  # noqa: BLE001 - fx raises many types; say what happened
        raise UnsupportedComposition(
            f"torch.fx could not trace {type(module).__name__} ({type(err).__name__}: {err}); "
            "sigprop reads the forward code as a graph, so data-dependent control flow is "
            "not supported") from None


def _check_shapes(torch, gm, x, width, field):
    """Run ``x`` (B, n) through ``gm`` (its modules may update running statistics: pass a
    copy) and check that every tensor on the way is (B, N); ``field`` names ``n`` in errors."""
    if width is not None and x.shape[1] != width:
        raise ConfigError(field, x.shape[1], f"{width}, the input width of the module's first "
                          "layer")
    run = torch.fx.Interpreter(gm, garbage_collect_values=False)
    try:
        with torch.no_grad():
            run.run(x.to(next(iter(gm.parameters()), x).dtype))
    except Exception as err:  # noqa: BLE001 - torch raises many types; name the node
        node = next(n for n in gm.graph.nodes if n not in run.env)
        raise UnsupportedComposition(
            f"the module fails on a {tuple(x.shape)} input at {node.name}, "
            f"{_describe(gm, node)}: {str(err).splitlines()[0]}") from None
    bad = [f"{n.name} {tuple(v.shape)}" for n, v in run.env.items()
           if n.op not in ("output", "get_attr") and torch.is_tensor(v) and v.ndim not in (0, 2)]
    if bad:
        raise UnsupportedComposition(
            "sigprop's features are the last dim of (B, N) tensors; these nodes have other "
            f"shapes: {', '.join(bad)}")


class _Converter:
    """Walks the fx graph from the output back to the input (see :func:`from_torch`)."""

    def __init__(self, gm, weights):
        self.gm, self.weights = gm, weights
        self.users = {n: len(n.users) for n in gm.graph.nodes}
        self._anc: dict = {}
        self.rules = {}
        problems = []
        for i, node in enumerate(gm.graph.nodes):
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            try:
                self.rules[node] = self._rule(node)
            except _Refused as why:
                problems.append(f"  [{i}] {node.name}: {_describe(gm, node)}: {why}")
        inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            problems.append(f"  the module takes {len(inputs)} inputs; sigprop needs one tensor")
        if problems:
            raise UnsupportedComposition(
                f"{type(gm).__name__}: these parts have no sigprop op:\n"
                + "\n".join(problems))
        self.input = inputs[0]
        self.width = None

    # -- per node ----------------------------------------------------------------------------
    def _rule(self, node):
        """('ops', [ops], input node) or ('sum', a, b, sign) or ('scale', c, input node)."""
        torch = _torch()
        F = torch.nn.functional
        if node.op == "call_module":
            return ("ops", self._module_ops(self.gm.get_submodule(node.target)),
                    _tensor_arg(node))
        fn = node.target
        if node.op == "call_method":
            fn = {"relu": torch.relu, "tanh": torch.tanh, "add": operator.add,
                  "mul": operator.mul, "div": operator.truediv, "sub": operator.sub}.get(fn, fn)
        acts = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh",
                F.silu: "silu", torch.erf: "erf"}
        if fn in acts:
            return ("ops", [Act(acts[fn])], _tensor_arg(node))
        if fn is F.gelu:
            approx = node.kwargs.get("approximate", "none")
            return ("ops", [Act({"none": "gelu", "tanh": "gelu_tanh"}[approx])], _tensor_arg(node))
        if fn is F.leaky_relu:
            slope = _arg(node, 1, "negative_slope", 0.01)
            return ("ops", [_act(activation_name("leaky_relu", slope))], _tensor_arg(node))
        if fn is F.elu:
            return ("ops", [_act(activation_name("elu", _arg(node, 1, "alpha", 1.0)))],
                    _tensor_arg(node))
        if fn is F.dropout:
            return ("ops", [], _tensor_arg(node))
        if fn in (operator.add, torch.add, operator.sub, torch.sub, operator.iadd):
            return self._sum_rule(node, fn)
        if fn in (operator.mul, torch.mul, operator.truediv, torch.div):
            return self._product_rule(node, fn)
        raise _Refused(f"no sigprop op for {getattr(fn, '__name__', fn)!s}")

    def _module_ops(self, m):
        torch = _torch()
        nn = torch.nn
        if isinstance(m, nn.Linear):
            return [self._dense(m)]
        if isinstance(m, nn.LayerNorm):
            if len(m.normalized_shape) != 1:
                raise _Refused("LayerNorm over more than the last dim")
            return _with_affine(LayerNorm(eps=m.eps), m.weight, m.bias)
        if hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm):
            if len(m.normalized_shape) != 1:
                raise _Refused("RMSNorm over more than the last dim")
            eps = m.eps if m.eps is not None else torch.finfo(
                m.weight.dtype if m.weight is not None else torch.get_default_dtype()).eps
            return _with_affine(RMSNorm(eps=eps), m.weight, None)
        if isinstance(m, nn.BatchNorm1d):
            if m.training or not m.track_running_stats:
                return _with_affine(BatchNorm(eps=m.eps), m.weight, m.bias)
            inv = 1 / torch.sqrt(m.running_var.double() + m.eps)
            gamma = inv if m.weight is None else m.weight.detach().double() * inv
            beta = -gamma * m.running_mean.double()
            beta = beta if m.bias is None else beta + m.bias.detach().double()
            return _affine_ops(gamma, beta)
        acts = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.SiLU: "silu"}
        if type(m) in acts:
            return [Act(acts[type(m)])]
        if isinstance(m, nn.GELU):
            return [Act({"none": "gelu", "tanh": "gelu_tanh"}[m.approximate])]
        if isinstance(m, nn.LeakyReLU):
            return [_act(activation_name("leaky_relu", m.negative_slope))]
        if isinstance(m, nn.ELU):
            return [_act(activation_name("elu", m.alpha))]
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return []
        raise _Refused("no sigprop op for this module")

    def _dense(self, lin):
        n_in, n_out = lin.in_features, lin.out_features
        if self.weights == "init":
            return Dense(sigma_w=math.sqrt(1 / 3), ratio=n_out / n_in, init="uniform",
                         sigma_b_fan_in=0.0 if lin.bias is None else math.sqrt(1 / 3))
        W = lin.weight.detach().double().cpu().numpy().ravel()
        mean, var = W.mean(), W.var()
        if W.size > 1 and abs(mean) > MEAN_Z * math.sqrt(var / W.size):
            raise _Refused(f"weights of mean {mean:.3g} (sd {math.sqrt(var):.3g}): sigprop's "
                           "Dense has zero-mean weights")
        kurt = np.mean((W - mean) ** 4) / var**2 if var > 0 else 3.0
        law = "uniform" if W.size >= UNIFORM_MIN_ENTRIES and kurt < UNIFORM_KURTOSIS else "normal"
        b = 0.0 if lin.bias is None else float((lin.bias.detach().double() ** 2).mean())
        return Dense(sigma_w=math.sqrt(n_in * float(np.mean(W * W))), sigma_b=math.sqrt(b),
                     ratio=n_out / n_in, init=law)

    def _sum_rule(self, node, fn):
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        sign = -1.0 if fn in (operator.sub, _torch().sub) else 1.0
        if "alpha" in node.kwargs:
            raise _Refused("torch.add/sub with alpha=: write the scalar product out")
        if not (_is_tensor(a) and (_is_tensor(b) or _is_param(b))):
            if _is_tensor(a) and isinstance(b, (int, float)) and b == 0:
                return ("ops", [], a)
            raise _Refused("a sum with a constant: no sigprop op (a shift is a parameter "
                           "vector, x + p)")
        if _is_param(b):
            return ("ops", _affine_ops(None, sign * self._param(b)), a)
        return ("sum", a, b, sign)

    def _product_rule(self, node, fn):
        a, b = node.args[0], node.args[1]
        divide = fn in (operator.truediv, _torch().div)
        if _is_tensor(b) and not _is_tensor(a) and not divide:
            a, b = b, a
        if not _is_tensor(a) or _is_tensor(b):
            raise _Refused("a product of two signals (a gate): no sigprop op")
        if isinstance(b, (int, float)):
            if divide and b == 0:  # (x / 0 is inf or NaN at every feature: no Scale)
                raise _Refused("a division by 0: no sigprop op")
            return ("scale", 1 / b if divide else float(b), a)
        if _is_param(b):
            p = self._param(b)
            return ("ops", _affine_ops(1 / p if divide else p, None), a)
        raise _Refused(f"a product with {b!r}")

    def _param(self, node):
        p = self.gm.get_parameter(node.target) if node.target in dict(
            self.gm.named_parameters()) else self.gm.get_buffer(node.target)
        if p.ndim > 1 or (p.ndim == 1 and p.numel() == 1):
            p = p.reshape(-1)
        return p.detach().double()

    # -- the walk ----------------------------------------------------------------------------
    def plan(self) -> _Plan:
        out = next(n for n in self.gm.graph.nodes if n.op == "output")
        last = out.args[0]
        if not _is_tensor(last):
            raise UnsupportedComposition("the module must return one tensor")
        layers = self._chain(last, self.input, top=True)
        if not layers:
            raise UnsupportedComposition("the module maps to no op at all (an identity)")
        ops, nodes, branches = zip(*layers)
        return _Plan(Serial(*ops), [n.name if n is not None else None for n in nodes],
                     [n.name if n is not None else None for n in branches], self._width(),
                     [None if n is None else n.target if n.op == "call_module" else
                      f"{n.name} ({n.op} {getattr(n.target, '__name__', n.target)})"
                      for n in nodes])

    def _chain(self, node, start, top=False):
        """[(op, node after it or None, branch node or None)] taking ``start`` to ``node``."""
        out = []
        while node is not start:
            if node.op == "placeholder":
                raise UnsupportedComposition(
                    f"{node.name}: a residual branch reaches the module's input without "
                    "passing its skip point: the sum's two sides are not a skip and a branch")
            rule = self.rules[node]
            if rule[0] == "ops":
                ops = rule[1]
                out += [(op, node if i == len(ops) - 1 else None, None)
                        for i, op in reversed(list(enumerate(ops)))]
                node = rule[2]
            elif rule[0] == "scale":
                out.append((Scale(rule[1]), node, None))
                node = rule[2]
            else:
                here = node
                op, branch, node = self._residual(node, *rule[1:])
                out.append((op, here, branch))
        return out[::-1]

    def _residual(self, node, a, b, sign):
        beta, a0 = self._strip(a)
        alpha, b0 = self._strip(b)
        alpha *= sign
        if a0 is b0:
            return Scale(alpha + beta), None, a0
        if a0 not in self._ancestors(b0):
            if b0 not in self._ancestors(a0):
                raise UnsupportedComposition(
                    f"{node.name}: a sum of two paths neither of which is the stream itself "
                    "(a projection shortcut, or two parallel branches); sigprop's Residual is "
                    "x -> beta x + alpha f(x)")
            (alpha, a0), (beta, b0) = (beta, b0), (alpha, a0)
        branch = [op for op, _, _ in self._chain(b0, a0)]
        if not branch:
            return Scale(alpha + beta), None, a0
        f = branch[0] if len(branch) == 1 else Serial(*branch)
        return Residual(f, alpha=alpha, beta=beta), b0, a0

    def _strip(self, node):
        """(c, base): node = c * base through single-use scalar multiplications."""
        c = 1.0
        while self.users[node] == 1 and self.rules.get(node, ("",))[0] == "scale":
            c *= self.rules[node][1]
            node = self.rules[node][2]
        return c, node

    def _ancestors(self, node):
        if node not in self._anc:
            seen, stack = set(), [node]
            while stack:
                for p in stack.pop().all_input_nodes:
                    if p not in seen:
                        seen.add(p)
                        stack.append(p)
            self._anc[node] = seen
        return self._anc[node]

    def _width(self):
        """The stream width at the input: the feature size of the first module it meets."""
        torch = _torch()
        for user in self.input.users:
            if user.op == "call_module":
                m = self.gm.get_submodule(user.target)
                for attr in ("in_features", "num_features"):
                    if hasattr(m, attr):
                        return int(getattr(m, attr))
                if isinstance(m, torch.nn.LayerNorm) or (
                        hasattr(torch.nn, "RMSNorm") and isinstance(m, torch.nn.RMSNorm)):
                    return int(m.normalized_shape[0])
        return None


class _Refused(Exception):
    """Why one node has no sigprop op (collected, then raised together)."""


def _describe(gm, node):
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} at '{node.target}'"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {name}"


def _is_tensor(a) -> bool:
    return hasattr(a, "op") and a.op in ("placeholder", "call_module", "call_function",
                                         "call_method")


def _is_param(a) -> bool:
    return hasattr(a, "op") and a.op == "get_attr"


def _tensor_arg(node):
    tensors = [a for a in node.all_input_nodes if _is_tensor(a)]
    if len(tensors) != 1 or any(_is_param(a) for a in node.all_input_nodes):
        raise _Refused("an op of more than one signal, or with a parameter tensor")
    return tensors[0]


def _arg(node, i, name, default):
    value = node.args[i] if len(node.args) > i else node.kwargs.get(name, default)
    if not isinstance(value, (int, float)):
        raise _Refused(f"a non-constant {name}")
    return float(value)


def _act(name):
    try:
        return Act(name)
    except ConfigError as err:
        raise _Refused(str(err)) from None


def _constant(v) -> bool:
    return v is None or float(v.max() - v.min()) <= CONSTANT_RTOL * max(1.0, float(v.abs().max()))


def _affine_ops(gamma, beta) -> list[Op]:
    """The ops of y = gamma x + beta (per-feature torch vectors, None: 1 and 0)."""
    if gamma is not None and gamma.ndim != 1 or beta is not None and beta.ndim != 1:
        raise _Refused("a parameter that is not a per-feature vector")
    zero_shift = beta is None or float(beta.abs().max()) == 0
    if _constant(gamma) and zero_shift:
        c = 1.0 if gamma is None else float(gamma.mean())
        return [] if c == 1.0 else [Scale(c)]
    g = beta * 0 + 1 if gamma is None else gamma
    b = 0 * g if beta is None else beta
    if g.shape != b.shape:
        raise _Refused("gain and shift vectors of different sizes")
    moments = {"gain": float(g.mean()), "shift": float(b.mean())}
    if not _constant(g) or not _constant(b):
        moments |= {"gain_sq": float((g * g).mean()), "shift_sq": float((b * b).mean()),
                    "gain_shift": float((g * b).mean())}
    return [FeatureAffine(**moments)]


def _with_affine(norm, weight, bias) -> list[Op]:
    """A norm followed by its affine parameters: folded into its ``gain`` when the weight is
    constant and the bias 0 (LayerNorm), a Scale or a FeatureAffine otherwise."""
    w = None if weight is None else weight.detach().double()
    b = None if bias is None else bias.detach().double()
    rest = _affine_ops(w, b)
    if isinstance(norm, LayerNorm) and len(rest) == 1 and isinstance(rest[0], Scale):
        return [LayerNorm(eps=norm.eps, gain=rest[0].c)]
    return [norm] + rest


# -- simulate_torch -------------------------------------------------------------------------------
def simulate_torch(module, inputs: Inputs, seeds: int, *, init=None, weights: str = "empirical",
                   net: Op | None = None, root_seed: int = 0, dtype: str = "float64",
                   first_seed: int = 0, width: int | None = None):
    """Statistics of ``module`` itself at its own width, over ``seeds`` re-initialisations, in
    the dataset schema of ``sp.simulate`` (dims seed, layer, input[, input_b]; kind montecarlo).

    Per seed s (torch's global generator forked and seeded with (root_seed, s), restored after):
    every submodule's ``reset_parameters()`` (BatchNorm's running statistics too), then
    ``init(module)`` when given (a custom init); the inputs are those of ``sp.simulate`` for
    the same ``root_seed`` and seed; the cotangent delta ~ N(0, I) at the output; gradients by
    autograd. Layer l holds the output of the torch node of the op tree's layer l (``net``,
    default ``from_torch`` of the module as re-initialised for the first seed, so it describes
    the nets simulated, not the module's current weights; NaN where an op has no node of its
    own). Runs on a deep copy in ``dtype``, dropout off, in-place ops made out-of-place; the
    module itself is left untouched.

    ``net`` must have the structure of ``from_torch(module)`` (op types, nesting, activation
    names; its numbers may differ), else a ConfigError names the first difference. ``width``:
    the module's input width, needed only when it cannot be read off the first module the input
    meets (a Linear's ``in_features``, a norm's size); any other value is refused.
    """
    torch = _torch()
    from sigprop.engines.montecarlo import (
        MAX_ROOT_SEED,
        check_dtype,
        check_first_seed,
        check_int,
        check_room,
        raise_nonfinite,
    )

    seeds, root_seed = check_int("seeds", seeds, 1), check_int("root_seed", root_seed, 0,
                                                                          MAX_ROOT_SEED)
    first_seed = check_first_seed(first_seed, seeds)
    if not isinstance(inputs, Inputs):
        raise ConfigError("inputs", type(inputs).__name__, "sp.Inputs(q=..., corr=..., mean=...)")
    dtype = check_dtype(dtype)
    if not isinstance(module, torch.nn.Module):
        raise ConfigError("module", type(module).__name__, "a torch.nn.Module")
    if net is not None and not isinstance(net, Op):
        raise ConfigError("net", type(net).__name__, "an op tree: from_torch(module), or one of "
                          "its structure")
    if init is not None and not callable(init):
        raise ConfigError("init", type(init).__name__, "a function init(module) or None")
    width = None if width is None else check_int("width", width, 1)
    model = copy.deepcopy(module).to(getattr(torch, dtype))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
        if hasattr(m, "inplace"):  # an in-place op would overwrite the layer values recorded
            m.inplace = False
    # the net of the nets simulated: read off the module as re-initialised (not its current,
    # perhaps trained, weights)
    with torch.random.fork_rng(devices=[]):
        _reinit(torch, model, first_seed, root_seed, init)
    plan = _convert(model, weights)
    net = plan.net if net is None else net
    if len(layers_of(net)) != len(plan.nodes):
        raise ConfigError("net", f"{len(layers_of(net))} layers", f"the {len(plan.nodes)} layers "
                          "of from_torch(module): net names the model's own layers")
    for l, (mine, theirs) in enumerate(zip(layers_of(net), layers_of(plan.net)), start=1):
        diff = _difference(mine, theirs, f"layer {l}")
        if diff is not None:
            raise ConfigError("net", diff, "the structure of from_torch(module) (op types, "
                              "nesting, activation names; the numbers may differ)")
    n = width or plan.width
    if n is None:
        raise ConfigError("width", None, "the module's input width (it could not be read from "
                          "the first module the input meets)")
    check_room(n, inputs)  # (below B + 1 the inputs came out wrong, unsaid)
    if any(isinstance(op, BatchNorm) for op in net.walk()):
        BatchNorm.check_batch(inputs.n)  # (torch's own error on one input, in train mode)
    gm = _trace(torch, model)
    with torch.random.fork_rng(devices=[]):
        _check_shapes(torch, gm, torch.zeros(2, n, dtype=getattr(torch, dtype)), plan.width,
                      "width")
    nodes = {node.name: node for node in gm.graph.nodes}
    out_node = next(nd for nd in gm.graph.nodes if nd.op == "output").args[0]
    stats = []
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # (log 0 of a dead
        for s in range(first_seed, first_seed + seeds):  # unit; past the range: raised below)
            stats.append(_one_seed(torch, model, gm, nodes, out_node, plan, inputs, n, s,
                                   root_seed, init, getattr(torch, dtype)))
    data = {k: np.stack([st[k] for st in stats]) for k in stats[0]}
    node = np.array([True] + [name is not None for name in plan.nodes])[:, None, None]
    for key, direction in (("log_q", "forward"), ("log_grad_q", "backward")):  # (a layer
        # with no node of its own is NaN by design)
        raise_nonfinite(np.where(node, np.moveaxis(data[key], 0, 1), 0.0), direction,
                        layers_of(net))
    config = {"net": net.to_dict(), "inputs": inputs.to_dict(), "width": n, "seeds": seeds,
              "root_seed": root_seed, "dtype": dtype, "sampler": "torch"}
    attrs = make_attrs("montecarlo", config, "torch", root_seed=root_seed, width=n, dtype=dtype,
                       sampler="torch", seeds=seeds, module=type(module).__name__)
    return mc_dataset(data, layers_of(net), attrs, first_seed)


def _sequence(op):
    """``op`` as the ops it applies in turn: Serials and Repeats unrolled, lazily."""
    if isinstance(op, Serial):
        for layer in op.layers:
            yield from _sequence(layer)
    elif isinstance(op, Repeat):
        for _ in range(op.n):
            yield from _sequence(op.block)
    else:
        yield op


def _kind(op) -> str:
    """An op's structural name: its type, an activation's name with it."""
    return "nothing" if op is None else f"Act({op.name!r})" if isinstance(op, Act) \
        else type(op).__name__


def _difference(mine, theirs, where):
    """The first place where the op trees ``mine`` and ``theirs`` (from_torch's) differ in
    structure, as "<kind> at <where>, where from_torch(module) has <kind>"; None: the same."""
    for i, (a, b) in enumerate(itertools.zip_longest(_sequence(mine), _sequence(theirs))):
        if _kind(a) != _kind(b):
            return f"{_kind(a)} at {where}, op {i}, where from_torch(module) has {_kind(b)}"
        for ka, kb in zip(a.children(), b.children()):  # the same type: as many children
            diff = _difference(ka, kb, f"{where}, op {i} {_kind(a)}'s branch")
            if diff is not None:
                return diff
    return None


def _reinit(torch, model, seed, root_seed, init):
    """Seed torch's global generator from (root_seed, seed) (a SeedSequence: distinct pairs give
    unrelated seeds), ``reset_parameters()`` every submodule, then ``init(model)`` if given."""
    torch.manual_seed(int(np.random.SeedSequence([root_seed, seed]).generate_state(1, np.uint64)[0]
                          >> np.uint64(1)))
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if init is not None:
        init(model)


def _out_of_place(torch, gm):
    """``gm`` with its in-place operations made out-of-place (``relu_()``, ``F.relu(...,
    inplace=True)``; torch.fx already records ``x += y`` as an addition): the same outputs, but
    no recorded layer value overwritten by a later node."""
    for node in gm.graph.nodes:
        if node.op == "call_method" and node.target.endswith("_") \
                and not node.target.startswith("_"):
            node.target = node.target[:-1]
        if node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
    gm.recompile()
    return gm


def _one_seed(torch, model, gm, nodes, out_node, plan, inputs, n, seed, root_seed, init, dt):
    env = Env(np, np.dtype(np.float64), Streams(np, root_seed, [seed]), None, block=0)
    x0 = input_signals(inputs, n, env)
    x = torch.as_tensor(np.exp(x0.ls)[0, :, None] * x0.x[0], dtype=dt).requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        _reinit(torch, model, seed, root_seed, init)
        interp = torch.fx.Interpreter(gm, garbage_collect_values=False)
        out = interp.run(x)
        delta = torch.randn(out.shape, dtype=dt)
    wanted = [x] + [None if name is None else interp.env[nodes[name]] for name in plan.nodes]
    live = [v for v in wanted if v is not None]
    grads = iter(torch.autograd.grad((out * delta).sum(), live, allow_unused=True))
    grad_of = {id(v): next(grads) for v in live}
    B = x.shape[0]
    nan = np.full(B, np.nan)
    G, m, gq, bq = [], [], [], []
    for v, bname in zip(wanted, [None] + plan.branches):
        if v is None:
            G.append(np.full((B, B), np.nan))
            m.append(nan)
            gq.append(nan)
        else:
            a = v.detach().double().numpy()
            G.append(a @ a.T / a.shape[-1])
            m.append(a.mean(-1))
            g = grad_of[id(v)]
            gq.append(nan if g is None else (g.detach().double().numpy() ** 2).mean(-1))
        if bname is None:
            bq.append(nan)
        else:
            f = interp.env[nodes[bname]].detach().double().numpy()
            bq.append((f * f).mean(-1))
    G, m = np.stack(G), np.stack(m)
    log_q, mean, log_var, corr = signal_stats(G, m, np.zeros_like(m))
    return {"log_q": log_q, "mean": mean, "log_var": log_var, "corr": corr,
            "log_grad_q": np.log(np.stack(gq)), "log_branch_q": np.log(np.stack(bq)),
            "log_weight_grad_q": np.full_like(m, np.nan)}  # not measured here (schema)
