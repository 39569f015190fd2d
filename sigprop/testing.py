"""Validation that can fail: per-op Monte Carlo checks, and mutations of an op's law to prove it.

* :func:`probes`: a probe per op class of ``Op.REGISTRY`` (and one per activation of the
  Gaussian table), built from the class's defaults, so a new op gets its check with no list to
  edit. Each probe is :data:`DEPTH` blocks ``Residual(Serial(Dense(), op), alpha=1, beta=0)``
  (a per-block error compounds over them, while the noise grows like its square root): the Dense makes the
  op's input jointly Gaussian; the ``beta = 0`` Residual (an identity wrapper, x -> branch(x))
  keeps the Serial as one block, so the theory engine calls the law of every op in it (a
  top-level Serial or Repeat is flattened into blocks and its own law is never called). Fields
  that hold ops get :data:`PROBE_BRANCH`.
* :func:`check`: theory against Monte Carlo at two or more widths, extrapolated to infinite
  width (:func:`sigprop.analysis.compare.compare`), for q, mean and corr after the block and the
  gradient at its input. The verdict is Bonferroni over the checked points: reject when
  min p * m < ``alpha``; no allowance but the standard errors.
* :func:`mutate`: scale one op class's forward law (the output's second moments times 1 + eps,
  its mean times sqrt(1 + eps)) or backward law (the cotangent Gram times 1 + eps), at each call,
  i.e. once per occurrence of the op in a block; restored on exit.
* :func:`measure`, :func:`measure_mean_mode`: the first-order finite-width theory against Monte
  Carlo at several widths (fitted 1/N slopes; N Var log q, N Var corr, N Var log var and N Var
  log branch_q; the mean mode's A).
* :func:`norm_branch_chain`: the exact finite-width law of log q in Pre-LN and in Pre-BN at a
  batch of two as eps -> 0, a scalar Markov chain (an independent reference for both).
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import stats

from sigprop.analysis.compare import compare, fit_inverse_width, spread, stack_widths
from sigprop.engines import finite_width
from sigprop.engines.montecarlo import simulate
from sigprop.engines.theory import theory
from sigprop.errors import ConfigError
from sigprop.kernels.gaussian import ACTIVATIONS
from sigprop.ops import Act, Dense, Op, Repeat, Residual, Serial
from sigprop.state.inputs import Inputs

# B = 6 inputs: BatchNorm's backward has E[1/s^4] finite only for B - 1 > 4 (s^2 ~ chi^2_(B-1)),
# so the seed mean of its gradient has a finite variance
PROBE_INPUTS = Inputs(q=[1.0, 2.25, 0.5, 1.5, 2.0, 0.8], corr=0.3)
PROBE_BRANCH = Serial(Dense(2.0**0.5), Act("relu"), Dense())
DEPTH = 4  # blocks per probe: a per-block mutation compounds to (1 + eps)^DEPTH
WIDTHS = (128, 512)  # extrapolation T_inf = (4 T_512 - T_128) / 3: se inflated by ~1.5
SEEDS = 1536  # the default test budget, seeds per width (see benchmarks/validation_power.py)
DTYPE = "float32"  # rounding ~1e-7 relative per op, far below the standard errors (~1e-3)
ALPHA = 1e-3  # family-wise false-alarm rate of one check
FACES = {"forward": "forward_law", "backward": "backward_law"}


def example(cls: type) -> Op:
    """``cls`` with its defaults; fields that hold ops get :data:`PROBE_BRANCH`."""
    fields = {}
    for f in dataclasses.fields(cls):
        if "tuple[Op" in str(f.type):
            fields[f.name] = (PROBE_BRANCH,)
        elif str(f.type) == "Op":
            fields[f.name] = PROBE_BRANCH
        elif f.default is not dataclasses.MISSING:
            fields[f.name] = f.default
    return cls.from_fields(**fields)


def probe(op: Op, depth: int = DEPTH) -> Op:
    """``depth`` blocks exercising ``op``'s law: x -> Dense x -> op (see the module docstring)."""
    return Repeat(Residual(Serial(Dense(), op), alpha=1.0, beta=0.0), depth)


def probes() -> dict[str, Op]:
    """name -> probe block, for every registered op class and every activation."""
    out = {}
    for name in sorted(Op.REGISTRY):
        cls = Op.REGISTRY[name]
        if cls is Act:
            out.update({f"Act({a})": probe(Act(a)) for a in ACTIVATIONS})
        else:
            out[name] = probe(example(cls))
    return out


@dataclass
class Result:
    """One check: the family p-value (Bonferroni), its worst point, and the comparison."""

    p: float
    worst: str
    points: int
    comparison: xr.Dataset

    def rejects(self, alpha: float = ALPHA) -> bool:
        return self.p < alpha


def simulate_widths(net: Op, inputs: Inputs = PROBE_INPUTS, widths=WIDTHS, seeds: int = SEEDS,
                    root_seed: int = 0, dtype: str = DTYPE) -> xr.Dataset:
    """Monte Carlo of ``net`` at each width, stacked (:func:`~sigprop.analysis.compare.stack_widths`);
    each width has its own root seed (root_seed * 1000 + index), so widths are independent."""
    if len(widths) < 2:
        raise ConfigError("widths", widths, "two or more widths (the check extrapolates)")
    return stack_widths([simulate(net, inputs, width=w, seeds=seeds, backend="numpy", dtype=dtype,
                                  root_seed=root_seed * 1000 + i) for i, w in enumerate(widths)])


def check(net: Op, mc: xr.Dataset, inputs: Inputs = PROBE_INPUTS) -> Result:
    """Theory of ``net`` vs its Monte Carlo ``mc`` at two or more widths (:func:`simulate_widths`),
    extrapolated to infinite width.

    Checked points: q, mean and corr (i < j) at the last layer, grad_q at layer 0. Each z is
    (T_inf - theory) / se (:func:`~sigprop.analysis.compare.compare`, estimator ``mean``), its
    two-sided normal p-value (S >= 100 seeds: Student t and normal agree to < 2 % in p at
    p = 1e-4); the family p-value is min(1, m min p). A point with no finite z fails the check.
    The Monte Carlo does not depend on the theory, so one run serves every mutated law.
    """
    th = theory(net, inputs)
    cmp = compare(th, mc, variables=["q", "mean", "corr", "grad_q"],
                  estimator="mean")
    last = cmp.sizes["layer"] - 1
    B = inputs.n
    upper = [(i, j) for i in range(B) for j in range(i + 1, B)]
    zs = {f"q[{i}]": cmp["q"].sel(stat="z", layer=last, input=i) for i in range(B)}
    zs |= {f"mean[{i}]": cmp["mean"].sel(stat="z", layer=last, input=i) for i in range(B)}
    zs |= {f"corr[{i},{j}]": cmp["corr"].sel(stat="z", layer=last, input=i, input_b=j)
           for i, j in upper}
    zs |= {f"grad_q[{i}]": cmp["grad_q"].sel(stat="z", layer=0, input=i) for i in range(B)}
    z = {k: float(v) for k, v in zs.items()}
    bad = [k for k, v in z.items() if not math.isfinite(v)]
    if bad:
        return Result(0.0, f"no finite z at {bad}", len(z), cmp)
    worst = max(z, key=lambda k: abs(z[k]))
    p = min(1.0, len(z) * 2 * float(stats.norm.sf(abs(z[worst]))))
    return Result(p, f"{worst}: z = {z[worst]:.2f}", len(z), cmp)


@contextmanager
def mutate(op_cls: type, face: str, eps: float, where=None):
    """Within the block, ``op_cls``'s ``face`` law ("forward" or "backward") is scaled by
    (1 + eps): its output's log scale shifted by log(1 + eps) / 2 (second moments and cross
    moments times 1 + eps, mean times sqrt(1 + eps)). ``where(op)``: only ops it accepts (e.g.
    ``lambda op: op.name == "tanh"``). The class's own attribute is restored on exit."""
    if face not in FACES:
        raise ConfigError("face", face, f"one of {tuple(FACES)}")
    if not (isinstance(op_cls, type) and issubclass(op_cls, Op)):
        raise ConfigError("op_cls", op_cls, "an op class from Op.REGISTRY")
    if not eps > -1:
        raise ConfigError("eps", eps, "> -1 (the law is scaled by 1 + eps)")
    attr = FACES[face]
    own = op_cls.__dict__.get(attr)
    law = getattr(op_cls, attr)
    shift = 0.5 * math.log1p(eps)

    def scaled(self, *args, **kw):
        out = law(self, *args, **kw)
        return out if where is not None and not where(self) else out.replace(ls=out.ls + shift)

    setattr(op_cls, attr, scaled)
    try:
        yield
    finally:
        if own is None:
            delattr(op_cls, attr)
        else:
            setattr(op_cls, attr, own)


def target(name: str) -> tuple[type, object]:
    """(op class, ``where`` filter) that a mutation of probe ``name`` ("Act(tanh)", "Dense")
    scales."""
    if name.startswith("Act("):
        act = name[4:-1]
        return Act, (lambda op: op.name == act)
    if name not in Op.REGISTRY:
        raise ConfigError("probe", name, f"one of {sorted(probes())}")
    return Op.REGISTRY[name], None


def rejection_rate(results) -> tuple[float, float, float]:
    """(rate, lower, upper): the share of True in ``results`` with its 95 % Clopper-Pearson
    interval."""
    k, n = int(np.sum(results)), len(results)
    lo = stats.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return k / n, float(lo), float(hi)


def measure(net: Op, inputs, widths, seeds: int, layer: int = -1, root_seed: int = 0):
    """Monte Carlo at each width (independent streams: root seed ``root_seed + width``) against
    the first-order theory (:mod:`sigprop.engines.finite_width`), at ``layer``, input 0 (and the
    pair 0, 1 for corr). Returns rows (statistic, predicted, fitted, se): the 1/N slopes of
    E log q and E corr (fitted as c + a/N over the widths; estimates: the mean over seeds and its
    standard error), the leading coefficients of Var log q, Var corr and Var log var (N Var
    fitted as V + c/N; :func:`sample_variance`), the 1/N slope of E var / var_inf (var = q -
    mean^2), of E mean and the leading coefficient of Var mean (the stream's feature mean) and,
    where the layer has a residual branch, of E log branch_q (both as E log q's) and the
    leading coefficient of Var log branch_q."""
    return measure_layers(net, inputs, widths, seeds, [layer], root_seed)[layer]


def measure_layers(net: Op, inputs, widths, seeds: int, layers, root_seed: int = 0) -> dict:
    """{layer: the rows of :func:`measure` at that layer} for each of ``layers``, from one
    Monte Carlo run per width (every layer is recorded by each)."""
    coef = finite_width.coefficients(net, inputs)[0]
    full = theory(net, inputs)
    mcs = [simulate(net, inputs, width=int(N), seeds=seeds, backend="numpy", dtype="float64",
                    root_seed=root_seed + int(N)) for N in widths]
    return {layer: _measured(coef, full.isel(layer=layer, input=0), mcs, inputs, widths, seeds,
                             layer) for layer in layers}


def _measured(coef, inf, mcs, inputs, widths, seeds: int, layer: int):
    """The rows of :func:`measure` at ``layer`` from the runs ``mcs`` (one per width), the
    first-order coefficients ``coef`` and the infinite-width theory ``inf`` at that layer."""
    pick = {"log_q": lambda ds: ds.log_q.values[:, layer, 0],
            "corr": lambda ds: ds.corr.values[:, layer, 0, 1],
            "var": lambda ds: ds["var"].values[:, layer, 0] / float(inf["var"]),
            "mean": lambda ds: ds["mean"].values[:, layer, 0],
            "log_branch_q": lambda ds: ds.log_branch_q.values[:, layer, 0]}
    spread_of = {"spread": "log_q", "spread_corr": "corr", "spread_var": "var",
                 "spread_branch": "log_branch_q", "spread_mean": "mean"}
    read = [k for k in pick if (k != "corr" or inputs.n > 1)
            and (k != "log_branch_q" or np.isfinite(inf["log_branch_q"]))
            and (k != "mean" or coef["var_mean"][layer][..., 0] != 0)]  # (a mean held at 0 by
    # a norm: its Monte Carlo spread is round-off, ~1e-31, with no standard error to speak of)
    est = {k: [] for k in ("log_q", "corr", "spread", "spread_corr", "var", "spread_var",
                           "log_branch_q", "spread_branch", "mean", "spread_mean")}
    for N, mc in zip(widths, mcs):
        for k in read:
            est[k].append(width_estimate(pick[k](mc), N))
        for k, of in spread_of.items():
            if of in read and (of != "var" or float(inf["var"]) > 0):  # (else no log var)
                x = np.log(pick[of](mc)) if of == "var" else pick[of](mc)
                est[k].append(width_estimate(x, N, spread=True))
    rows = []
    predicted = {"log_q": coef["log_q"][layer][..., 0], "spread": coef["var_log_q"][layer][..., 0],
                 "var": coef["var"][layer][..., 0],
                 "spread_var": coef["var_log_var"][layer][..., 0],
                 "log_branch_q": coef["log_branch_q"][layer][..., 0],
                 "spread_branch": coef["var_log_branch_q"][layer][..., 0],
                 "mean": coef["mean"][layer][..., 0],
                 "spread_mean": coef["var_mean"][layer][..., 0]}
    if inputs.n > 1:
        predicted["corr"] = coef["corr"][layer][..., 0, 1]
        predicted["spread_corr"] = coef["var_corr"][layer][..., 0, 1]
    for k, pairs in est.items():
        if not pairs:
            continue
        fitted, se = width_coefficient(widths, pairs, spread=k in spread_of)
        name = {"log_q": "slope of E log q", "corr": "slope of E corr", "spread": "N Var log q",
                "spread_corr": "N Var corr", "var": "slope of E var / var_inf",
                "spread_var": "N Var log var", "log_branch_q": "slope of E log branch_q",
                "spread_branch": "N Var log branch_q", "mean": "slope of E mean",
                "spread_mean": "N Var mean"}[k]
        rows.append((name, float(predicted[k]), float(fitted), float(se)))
    return rows


def width_estimate(x, width: int, spread: bool = False) -> tuple[float, float]:
    """(estimate, se) at one width of the per-seed sample ``x``: its mean and the mean's se,
    or (``spread``) N s^2 and its se (:func:`sample_variance`)."""
    if spread:
        v, se = sample_variance(x)
        return width * v, width * se
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def width_coefficient(widths, estimates, spread: bool = False) -> tuple[float, float]:
    """(coefficient, se) over the widths from :func:`width_estimate`'s rows: the slope a of E x
    = c + a/N, or (``spread``) the leading V of N Var x = V + c/N
    (:func:`~sigprop.analysis.compare.fit_inverse_width`)."""
    c, se_c, a, se_a = fit_inverse_width(widths, *zip(*estimates))
    return (float(c), float(se_c)) if spread else (float(a), float(se_a))


def sample_variance(x) -> tuple[float, float]:
    """(s^2, its standard error) of a 1-D sample (:func:`sigprop.analysis.compare.spread`)."""
    v, se = spread(xr.DataArray(np.asarray(x, dtype=float), dims="seed"))
    return float(v), float(se)


def measure_gradient_layers(net: Op, inputs, widths, seeds: int, root_seed: int = 0,
                            layers=(0,), sampler: str = "conditional"):
    """Monte Carlo of the gradient's first-order coefficient c and leading variance v at each
    of ``layers`` (:func:`~sigprop.engines.finite_width.gradient_coefficient`, input 0), from
    one simulation per width (independent root seeds ``root_seed + N``): c against the mean
    over seeds of G_l / G_l,inf - 1 at each width, with its standard error, fitted as b + a/N;
    v against N Var log G_l fitted as V + c'/N (the SE of a sample variance from its fourth
    moment, :func:`sample_variance`) (:func:`width_estimate`, :func:`width_coefficient`).
    Returns per layer of ``layers``, sorted, (c, a, se of a, v, V, se of V)."""
    return _measure_backward(net, inputs, widths, seeds, root_seed, layers, sampler, False)


def with_dense(net: Op, **fields) -> Op:
    """``net`` with these fields of every Dense replaced, the rest as it is."""
    def one(_, v):
        if isinstance(v, tuple):
            return tuple(with_dense(x, **fields) if isinstance(x, Op) else x for x in v)
        return with_dense(v, **fields) if isinstance(v, Op) else v

    out = net.map_fields(one)
    return dataclasses.replace(out, **fields) if isinstance(out, Dense) else out


def gaussian_weights(net: Op) -> Op:
    """``net`` with every Dense's weights Gaussian (``init="normal"``), the rest as it is."""
    return with_dense(net, init="normal")


def measure_uniform_term(net: Op, inputs, widths, seeds: int, layers, root_seed: int = 0):
    """The uniform weights' part of the 1/N coefficients of a net with them: its coefficients
    less those of :func:`gaussian_weights` (net), against the Monte Carlo difference of the
    two nets run on the same seeds by the explicit sampler, whose Gaussian weights z are the
    normals that the uniform ones map (sqrt 3 erf(z / sqrt 2)): the pair is coupled, and the
    difference's standard error a few times below either's. The two nets share their
    infinite-width law (it reads the weights' variances alone), so the difference is
    a/N + b/N^2 + ...: N times it is fitted as a + b/N (weights 1/se^2), whose b takes the
    second order that a fit c + a/N of the difference would read into a (at these standard
    errors, a few hundredths). At each of ``layers``: rows (statistic, predicted, fitted, se)
    for the coefficients of E log q, E corr (input pair 0, 1) and E grad_q_l / grad_q_l,inf
    (input 0), but where the difference is 0 on every seed (the input, a norm's q, the top
    layer's gradient), which has no standard error."""
    layers = sorted({int(l) for l in layers})
    nets = net, gaussian_weights(net)
    pred = [finite_width.coefficients(n, inputs)[0] for n in nets]
    grad = [finite_width.gradient_coefficient(n, inputs, layers=layers).coef[..., 0]
            for n in nets]
    g_inf = np.exp(theory(net, inputs, layers=layers)["log_grad_q"].values[:, 0])
    pick = {"E log q": lambda ds: ds.log_q.values[:, layers, 0],
            "E corr": lambda ds: ds.corr.values[:, layers, 0, 1],
            "E grad_q / grad_q_inf": lambda ds: np.exp(ds.log_grad_q.sel(
                layer=layers).values[..., 0]) / g_inf}
    found = {k: [] for k in pick}
    for N in widths:
        mc = [simulate(n, inputs, width=int(N), seeds=seeds, backend="numpy", dtype="float64",
                       sampler="explicit", root_seed=root_seed + int(N)) for n in nets]
        for k, f in pick.items():
            d = N * (f(mc[0]) - f(mc[1]))
            found[k].append((d.mean(0), d.std(0, ddof=1) / math.sqrt(seeds)))
    predicted = {"E log q": pred[0]["log_q"][layers][:, 0] - pred[1]["log_q"][layers][:, 0],
                 "E corr": pred[0]["corr"][layers][:, 0, 1] - pred[1]["corr"][layers][:, 0, 1],
                 "E grad_q / grad_q_inf": grad[0] - grad[1]}
    rows = []
    for k, est in found.items():
        for i, l in enumerate(layers):
            se = [e[1][i] for e in est]
            if not np.any(se):
                continue
            a, se_a, _, _ = fit_inverse_width(widths, [e[0][i] for e in est], se)
            rows.append((f"{k} at layer {l}", float(predicted[k][i]), a, se_a))
    return rows


def measure_gradient(net: Op, inputs, widths, seeds: int, root_seed: int = 0,
                     sampler: str = "conditional", layer: int = 0):
    """:func:`measure_gradient_layers`' c at one layer: (predicted, a, se of a)."""
    return measure_gradient_layers(net, inputs, widths, seeds, root_seed, [layer], sampler)[0][:3]


def measure_gradient_spread(net: Op, inputs, widths, seeds: int, root_seed: int = 0,
                            layer: int = 0):
    """:func:`measure_gradient_layers`' v at one layer: (v, V, se of V)."""
    return measure_gradient_layers(net, inputs, widths, seeds, root_seed, [layer])[0][3:]


def measure_mean_mode(net: Op, inputs, widths, seeds: int, root_seed: int = 0):
    """Monte Carlo of A for :func:`~sigprop.engines.finite_width.mean_mode_coefficient`: at each width, N (E G_0 / G_0,inf - 1)
    from the mean over seeds of G_0 (input 0), with the standard error of that mean;
    combined over widths by inverse-variance weighting. Returns (predicted, fitted, se)."""
    ds = theory(net, inputs)
    A = float(finite_width.mean_mode_coefficient(net, ds)[0])
    g_inf = math.exp(float(ds["log_grad_q"].values[0, 0]))
    est, var = [], []
    for N in widths:
        mc = simulate(net, inputs, width=int(N), seeds=seeds, backend="numpy", dtype="float64",
                      root_seed=root_seed + int(N))
        g = np.exp(mc["log_grad_q"].values[:, 0, 0]) / g_inf
        est.append(N * (g.mean() - 1))
        var.append((N * g.std(ddof=1)) ** 2 / seeds)
    w = 1 / np.asarray(var)
    return A, float(np.sum(w * est) / np.sum(w)), float(1 / math.sqrt(np.sum(w)))


def measure_weight_gradient(net: Op, inputs, widths, seeds: int, root_seed: int = 0,
                            layers=(1,)):
    """:func:`measure_gradient_layers` for weight_grad_q (W_l in place of G_l; the prediction
    :func:`~sigprop.engines.finite_width.gradient_coefficient` with ``weights``). Returns per
    layer of ``layers``, sorted, (c, a, se of a, v, V, se of V)."""
    return _measure_backward(net, inputs, widths, seeds, root_seed, layers, "conditional", True)


def _measure_backward(net: Op, inputs, widths, seeds: int, root_seed: int, layers, sampler: str,
                      weights: bool):
    """The rows of :func:`measure_gradient_layers` (``weights``: of
    :func:`measure_weight_gradient`)."""
    layers = sorted({int(l) for l in layers})
    name = "log_weight_grad_q" if weights else "log_grad_q"
    pred = finite_width.gradient_coefficient(net, inputs, layers=layers, weights=weights)
    pred = pred[1] if weights else pred
    at_inf = np.exp(theory(net, inputs, layers=layers)[name].values[:, 0])
    mean, var = [], []  # per width: (value, se) per layer
    for N in widths:
        mc = simulate(net, inputs, width=int(N), seeds=seeds, backend="numpy", dtype="float64",
                      sampler=sampler, root_seed=root_seed + int(N))
        log_x = mc[name].sel(layer=layers).values[..., 0]  # (seed, layer)
        mean.append([width_estimate(r, N) for r in (np.exp(log_x) / at_inf - 1).T])
        var.append([width_estimate(x, N, spread=True) for x in log_x.T])
    return [(float(pred.coef[k].flat[0]), *width_coefficient(widths, [m[k] for m in mean]),
             float(pred.var_log_q[k].flat[0]),
             *width_coefficient(widths, [v[k] for v in var], spread=True))
            for k in range(len(layers))]


def norm_branch_chain(depth: int, width: int, samples: int, rng, gaussian: bool = True):
    """Samples (samples, depth + 1) of log q of input 0 at layers 0..depth of ``presets.prebn``
    at a batch of two (``gaussian``: inputs ``law="gaussian"``, q_0 = chi^2_N / N) or of
    ``presets.preln`` (fixed inputs, q_0 = 1), relu mlp branch at its defaults, alpha = 1, in
    the limit eps -> 0, exactly at width N. There the norm's output y has a fixed Gram (a batch
    of two: y = (1, -1) sign d per feature; LayerNorm: |y|^2 / N = 1), so the branch's first
    Dense draws u ~ N(0, 2) per feature independent of the past, R = |relu u|^2 / N = 2
    chi^2_K / N with K ~ Bin(N, 1/2), and its last Dense adds g ~ N(0, R) per feature,
    independent of the stream x: q' = |x + g|^2 / N = q + 2 sqrt(q R / N) Z + R (Z^2 +
    chi^2_(N-1)) / N (Z: g along x). Input 0's q is a Markov chain of its own, O(1) per layer
    whatever N."""
    N = int(width)
    q = rng.chisquare(N, samples) / N if gaussian else np.ones(samples)
    out = [np.log(q)]
    for _ in range(depth):
        K = rng.binomial(N, 0.5, samples)
        R = 4 * rng.standard_gamma(K / 2) / N  # 2 chi^2_K / N, chi^2_K = 2 Gamma(K / 2)
        Z = rng.standard_normal(samples)
        rest = rng.chisquare(N - 1, samples)
        q = q + 2 * np.sqrt(q * R / N) * Z + R * (Z * Z + rest) / N
        out.append(np.log(q))
    return np.stack(out, 1)


def norm_branch_chain_spread(depth: int, width: int, samples: int, chunks: int = 1,
                             gaussian: bool = True, seed: int = 12345):
    """N Var log q of :func:`norm_branch_chain` at layers 0..depth and its standard error
    (each an array of depth + 1): the mean of ``chunks`` unbiased sample variances of
    ``samples`` each (numpy's generator keyed by (seed, width, gaussian)), the SE of each
    from its fourth moment."""
    rng = np.random.default_rng([seed, int(width), int(gaussian)])
    v, v4 = [], []
    for _ in range(chunks):
        lq = norm_branch_chain(depth, width, samples, rng, gaussian)
        c = lq - lq.mean(0)
        s2 = (c**2).sum(0) / (samples - 1)
        v.append(s2)
        v4.append(((c**4).mean(0) - s2**2 * (samples - 3) / (samples - 1)) / samples)
    return width * np.mean(v, 0), width * np.sqrt(np.sum(v4, 0)) / chunks
