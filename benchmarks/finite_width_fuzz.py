"""Random compositions: the first-order finite-width theory against Monte Carlo (issue 16).

Draws small nets from a seeded generator (2-4 blocks, each a random composition of Dense,
Act, LayerNorm / RMSNorm, Scale, FeatureAffine with constant vectors and Residual around a
branch that starts with a norm or a Dense; and the presets preln, postln, resnet, plain and
periln with random parameters), inputs q = [1, 1.7], corr = 0.4 (a third of them with a mean
[0.3, -0.2]). For each net the coefficients that ``sp.theory(net, inputs, width=N)`` predicts
(times N) are compared with Monte Carlo at ``--widths`` (``--seeds`` seeds each, every width its
own root seed, ``sigprop.state.rng.width_root_seed``; default 64, 128, 256), fitted over 1/N as
``sigprop.testing.measure`` and ``measure_gradient_layers`` do (the fit of
``width_coefficient``): at the last layer and a middle one, inputs 0 and 1, the 1/N slopes of
E log q and E corr and the leading coefficients of N Var log q and N Var corr; at layer 0 the
input gradient's c (E G_0 / G_0,inf - 1 = b + a/N) and N Var log grad_q_0; at the last and
the middle layer, where its block has a Dense, the weight gradient's c and N Var log
weight_grad_q (``sigprop.testing.measure_weight_gradient``). z = (fitted - predicted) / SE.

Nets the theory refuses (``UnsupportedComposition``, or NaN with a ``FiniteWidthWarning``
where a rule is missing) are counted and not tested; statistics a norm fixes to eps-level
(|predicted|, |fitted| and SE all below 1e-6) are left out. A z beyond the Bonferroni bound
over all z's of the run (family level ``--alpha``) flags its net, which is rerun with
``--follow-factor`` times the seeds at the widths less the smallest plus twice and four times
the largest (fresh root seeds: a wrong coefficient stays, a 1/N^2 term that the fit read into
the slope fades); a statistic that stays beyond the follow-up's own Bonferroni bound, same
sign, is minimised at the follow-up's widths and seeds: ops are dropped (blocks, residual
wrappers, single ops, biases, gains, a Repeat's count) one at a time while it still disagrees. Writes a JSON log and a markdown summary.

    .venv/bin/python benchmarks/finite_width_fuzz.py [--nets 24] [--seeds 1500] [--seed 16]
        [--widths 64 128 256] [--follow-factor 4] [--json out.json] [--md out.md]
"""

import argparse
import dataclasses
import json
import math
import time
import warnings

import numpy as np
from scipy import stats

import sigprop as sp
from sigprop import presets
from sigprop.errors import ConfigError, FiniteWidthWarning, UnsupportedComposition
from sigprop.ops import (
    Act,
    Dense,
    FeatureAffine,
    LayerNorm,
    Repeat,
    Residual,
    RMSNorm,
    Scale,
    Serial,
    layers_of,
)
from sigprop.state.rng import width_root_seed
from sigprop.testing import width_coefficient, width_estimate

ACTS = ("relu", "tanh", "erf", "gelu", "linear")
PRESETS = ("preln", "postln", "resnet", "plain", "periln")
WIDTHS = [64, 128, 256]
INPUTS = sp.Inputs(q=[1.0, 1.7], corr=0.4)
MEAN_INPUTS = sp.Inputs(q=[1.0, 1.7], corr=0.4, mean=[0.3, -0.2])
NEGLIGIBLE = 1e-6  # |predicted|, |fitted| and SE all below: a statistic a norm fixes (eps-level)
IMPORTS = ("from sigprop.ops import Act, Dense, FeatureAffine, LayerNorm, Repeat, Residual, "
           "RMSNorm, Scale, Serial")


# ---------------------------------------------------------------- drawing nets

def _r(rng, lo, hi):
    return round(float(rng.uniform(lo, hi)), 2)


def _dense(rng, ratio=1.0):
    sigma_b = _r(rng, 0.05, 0.5) if rng.random() < 0.3 else 0.0
    return Dense(_r(rng, 0.8, 1.6), sigma_b, ratio)


def _norm(rng):
    if rng.random() < 0.5:
        return RMSNorm()
    return LayerNorm(gain=_r(rng, 0.6, 1.5)) if rng.random() < 0.4 else LayerNorm()


def _act(rng):
    return Act(str(rng.choice(ACTS)))


def _extra(rng):
    """A Scale or a FeatureAffine with constant vectors (sometimes a shift)."""
    if rng.random() < 0.5:
        return Scale(_r(rng, 0.5, 1.5))
    shift = _r(rng, -0.5, 0.5) if rng.random() < 0.5 else 0.0
    return FeatureAffine(gain=_r(rng, 0.5, 1.5), shift=shift)


def _core(rng):
    """Dense-Act, Dense-Act-Dense (ratio 1, 2 or 1/2, balanced), or Dense."""
    kind = rng.choice(["dense_act", "mlp", "dense"], p=[0.35, 0.5, 0.15])
    if kind == "dense":
        return [_dense(rng)]
    if kind == "dense_act":
        return [_dense(rng), _act(rng)]
    r = float(rng.choice([1.0, 2.0, 0.5]))
    return [_dense(rng, r), _act(rng), _dense(rng, 1 / r)]


def _branch(rng):
    ops = ([_norm(rng)] if rng.random() < 0.5 else []) + _core(rng)
    if rng.random() < 0.35:  # an extra op somewhere after the start
        ops.insert(int(rng.integers(1, len(ops) + 1)), _extra(rng))
    if rng.random() < 0.15:
        ops.append(_norm(rng))
    return Serial(*ops) if len(ops) > 1 else ops[0]


def _block(rng, first):
    kind = rng.choice(["residual", "dense_act", "norm", "extra", "act"],
                      p=[0.55, 0.2, 0.12, 0.08, 0.05])
    if first and kind != "residual":  # (the inputs are fixed: an activation on them is refused)
        kind = "dense_act"
    if kind == "residual":
        beta = _r(rng, 0.5, 1.2) if rng.random() < 0.25 else 1.0
        return [Residual(_branch(rng), alpha=_r(rng, 0.3, 1.0), beta=beta)]
    if kind == "dense_act":
        return [_dense(rng), _act(rng)]
    if kind == "norm":
        return [_norm(rng)]
    if kind == "extra":
        return [_extra(rng)]
    return [_act(rng)]


def _preset(rng):
    name = str(rng.choice(PRESETS))
    kw = {"act": str(rng.choice(ACTS)), "shape": str(rng.choice(["mlp", "dense_act",
                                                                   "act_dense"]))}
    if kw["shape"] == "mlp" and rng.random() < 0.3:
        kw["ratio"] = 2.0
    if rng.random() < 0.3:
        kw["sigma_b"] = _r(rng, 0.05, 0.4)
    if name != "plain":
        kw["alpha"] = _r(rng, 0.3, 1.0)
    depth = int(rng.integers(2, 5))
    return getattr(presets, name)(depth, **kw), f"presets.{name}({depth}, **{kw})"


def draw_net(rng):
    """(net, description, inputs) from ``rng``."""
    inputs = MEAN_INPUTS if rng.random() < 1 / 3 else INPUTS
    if rng.random() < 0.25:
        net, desc = _preset(rng)
        return net, desc, inputs
    ops = []
    for i in range(int(rng.integers(2, 5))):
        ops += _block(rng, i == 0)
    net = Serial(*ops)
    return net, source(net), inputs


def source(op) -> str:
    """``op`` as Python that builds it (names from ``sigprop.ops``; fields at their defaults
    left out)."""
    if isinstance(op, Serial):
        return "Serial(" + ", ".join(source(x) for x in op.layers) + ")"
    if isinstance(op, Repeat):
        return f"Repeat({source(op.block)}, {op.n})"
    if isinstance(op, Residual):
        return f"Residual({source(op.branch)}, alpha={op.alpha!r}, beta={op.beta!r})"
    args = [f"{f.name}={getattr(op, f.name)!r}" for f in dataclasses.fields(op)
            if f.default is dataclasses.MISSING or getattr(op, f.name) != f.default]
    return f"{type(op).__name__}({', '.join(args)})"


# ---------------------------------------------------------------- predictions

def predict(net, inputs, width=256):
    """stat -> predicted coefficient (the theory at ``width`` times ``width``), and the
    infinite-width log G_0 per input; raises UnsupportedComposition. Also the warnings' texts."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FiniteWidthWarning)
        th = sp.theory(net, inputs, width=width)
    last = th.sizes["layer"] - 1
    mid = last // 2
    out = {}
    layers = {"last": last} | ({"mid": mid} if 0 < mid < last else {})
    for tag, l in layers.items():
        for a in (0, 1):
            out[f"slope E log q[{a}] @{tag}"] = width * float(th.log_q_correction[l, a])
            out[f"N Var log q[{a}] @{tag}"] = width * float(th.var_log_q[l, a])
        out[f"slope E corr @{tag}"] = width * float(th.corr_correction[l, 0, 1])
        out[f"N Var corr @{tag}"] = width * float(th.var_corr[l, 0, 1])
    g_inf = {}  # gradient statistic -> its infinite-width log value
    for a in (0, 1):
        out[f"c grad_q[{a}] @0"] = width * float(th.grad_q_rel_correction[0, a])
        out[f"N Var log grad_q[{a}] @0"] = width * float(th.var_log_grad_q[0, a])
        g_inf[f"c grad_q[{a}] @0"] = float(th.log_grad_q[0, a])
        for tag, l in layers.items():
            if math.isfinite(float(th.log_weight_grad_q[l, a])):
                k = f"weight_grad_q[{a}] @{tag}"
                out["c " + k] = width * float(th.weight_grad_q_rel_correction[l, a])
                out["N Var log " + k] = width * float(th.var_log_weight_grad_q[l, a])
                g_inf["c " + k] = float(th.log_weight_grad_q[l, a])
    texts = sorted({str(w.message).split("\n")[0][:160] for w in caught
                    if issubclass(w.category, FiniteWidthWarning)})
    return out, layers, g_inf, texts


# ---------------------------------------------------------------- Monte Carlo

def measure(net, inputs, widths, seeds, root, pred, layers, g_inf):
    """Rows {stat, predicted, fitted, se, z} for the finite predictions ``pred``: one
    simulation per width (root seed ``width_root_seed(root, N)``), fitted over the widths as
    ``sigprop.testing.measure`` does (:func:`sigprop.testing.width_estimate` and
    ``width_coefficient``: slopes a of c + a/N on the per-width means; N Var: V of V + c/N on N
    s^2, its SE from the 4th moment)."""
    est = {k: [] for k, v in pred.items() if math.isfinite(v)}
    for N in widths:
        mc = sp.simulate(net, inputs, width=int(N), seeds=seeds, backend="numpy",
                         dtype="float64", root_seed=width_root_seed(root, int(N)))
        for k, found in est.items():
            found.append(width_estimate(_sample(mc, k, layers, g_inf), N,
                                        spread=k.startswith("N Var")))
    rows = []
    for k, pairs in est.items():
        vals, ses = map(np.asarray, zip(*pairs))
        if not (np.all(np.isfinite(vals)) and np.all(ses > 0)):
            continue  # (deterministic in the Monte Carlo: no SE)
        fit, se = width_coefficient(widths, pairs, spread=k.startswith("N Var"))
        if max(abs(pred[k]), abs(fit), se) < NEGLIGIBLE:
            continue
        rows.append({"stat": k, "predicted": pred[k], "fitted": fit, "se": se,
                     "z": (fit - pred[k]) / se})
    return rows


def _sample(mc, k, layers, g_inf):
    """The per-seed sample of statistic ``k`` (see :func:`predict`'s names): for a gradient's c,
    G / G_inf - 1 (``g_inf``: log G_inf per c statistic)."""
    a = int(k.split("[")[1][0]) if "[" in k else 0
    l = 0 if k.endswith("@0") else layers[k.split("@")[1]]
    if "grad_q" in k:
        name = "log_weight_grad_q" if "weight_grad_q" in k else "log_grad_q"
        log_g = mc[name].values[:, l, a]
        return log_g if k.startswith("N Var") else np.exp(log_g - g_inf[k]) - 1
    if "corr" in k:
        return mc.corr.values[:, l, 0, 1]
    return mc.log_q.values[:, l, a]


def bonferroni(m, alpha):
    """|z| bound of a two-sided test over ``m`` z's at family level ``alpha``."""
    return float(stats.norm.isf(alpha / (2 * max(m, 1))))


# ---------------------------------------------------------------- minimising

def _wrap(ops):
    return ops[0] if len(ops) == 1 else Serial(*ops)


def _try(make):
    """``make()``, or None where the op refuses its fields (e.g. an unbalanced ratio)."""
    try:
        return make()
    except (ConfigError, ValueError):
        return None


def reductions(op):
    """Nets one step smaller than ``op``: a block, op or residual wrapper dropped, a bias or a
    gain or a beta reset, a Repeat's count lowered (those an op refuses are left out)."""
    for make in _reductions(op):
        cand = _try(make)
        if cand is not None:
            yield cand


def _reductions(op):
    """Thunks of :func:`reductions`' candidates."""
    if isinstance(op, Serial):
        ls = list(op.layers)
        if len(ls) > 1:
            for i in range(len(ls)):
                yield lambda i=i: _wrap(ls[:i] + ls[i + 1:])
        for i, sub in enumerate(ls):
            for r in reductions(sub):
                yield lambda i=i, r=r: _wrap(ls[:i] + [r] + ls[i + 1:])
    elif isinstance(op, Repeat):
        if op.n > 1:
            yield lambda: Repeat(op.block, op.n - 1) if op.n > 2 else op.block
        for r in reductions(op.block):
            yield lambda r=r: Repeat(r, op.n)
    elif isinstance(op, Residual):
        yield lambda: op.branch
        if op.beta != 1:
            yield lambda: dataclasses.replace(op, beta=1.0)
        if op.alpha != 1:
            yield lambda: dataclasses.replace(op, alpha=1.0)
        for r in reductions(op.branch):
            yield lambda r=r: dataclasses.replace(op, branch=r)
    elif isinstance(op, Dense) and op.sigma_b:
        yield lambda: dataclasses.replace(op, sigma_b=0.0)
    elif isinstance(op, LayerNorm) and op.gain != 1:
        yield lambda: LayerNorm()
    elif isinstance(op, FeatureAffine) and op.shift:
        yield lambda: FeatureAffine(gain=op.gain)


def truncate(net, layer):
    """The net's first ``layer`` layers (so that layer is its last)."""
    return _wrap(list(layers_of(net))[:layer])


def disagreement(net, inputs, stat, widths, seeds, root, bound, sign):
    """The row of ``stat`` if it is beyond ``bound`` with sign ``sign``, else None (also where
    the net is refused or the statistic not finite)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred, layers, g_inf, _ = predict(net, inputs)
    except (UnsupportedComposition, ConfigError, ValueError):
        return None
    if stat not in pred or not math.isfinite(pred[stat]):
        return None
    rows = measure(net, inputs, widths, seeds, root, {stat: pred[stat]}, layers, g_inf)
    if rows and abs(rows[0]["z"]) > bound and np.sign(rows[0]["z"]) == sign:
        return rows[0]
    return None


def minimise(net, inputs, stat, widths, seeds, root, bound, sign, budget_s, log):
    """Greedy: the first one-step reduction that still disagrees is taken, until none does or
    ``budget_s`` is spent. Returns (net, its row, steps)."""
    t0, steps = time.time(), 0
    row = disagreement(net, inputs, stat, widths, seeds, root, bound, sign)
    while row is not None and time.time() - t0 < budget_s:
        seen = set()
        for cand in reductions(net):
            key = source(cand)
            if key in seen:
                continue
            seen.add(key)
            r = disagreement(cand, inputs, stat, widths, seeds, root + 7 * steps + 1, bound, sign)
            if r is not None:
                net, row, steps = cand, r, steps + 1
                log(f"    step {steps}: z = {r['z']:+.2f} {source(cand)}")
                break
            if time.time() - t0 > budget_s:
                break
        else:
            break
    return net, row, steps


# ---------------------------------------------------------------- the run

def run(nets=24, seeds=1500, seed=16, alpha=0.01, follow_factor=4, minimise_s=600,
        out_json="finite_width_fuzz.json", out_md=None, widths=WIDTHS):
    widths = sorted(int(w) for w in widths)
    follow_widths = [*widths[1:], 2 * widths[-1], 4 * widths[-1]]  # (a 1/N^2 term fades)
    rng = np.random.default_rng(seed)
    log = print
    counts = {"drawn": 0, "refused": 0, "no_rule": 0, "tested": 0}
    missing, tested = {}, []
    t_start = time.time()
    while counts["tested"] < nets:
        counts["drawn"] += 1
        net, desc, inputs = draw_net(rng)
        try:
            pred, layers, g_inf, texts = predict(net, inputs)
        except (UnsupportedComposition, ConfigError) as e:
            counts["refused"] += 1
            log(f"refused #{counts['drawn']}: {type(e).__name__}: {str(e)[:120]}")
            continue
        finite = {k: v for k, v in pred.items() if math.isfinite(v)}
        for k in pred:
            if k not in finite:
                missing[k.split("[")[0].split(" @")[0]] = missing.get(
                    k.split("[")[0].split(" @")[0], 0) + 1
        if not finite:
            counts["no_rule"] += 1
            log(f"no rule #{counts['drawn']}: {texts[:1]}")
            continue
        counts["tested"] += 1
        t = time.time()
        root = 1000 * seed + counts["drawn"]
        rows = measure(net, inputs, widths, seeds, root, pred, layers, g_inf)
        worst = max(rows, key=lambda r: abs(r["z"])) if rows else None
        log(f"net {counts['tested']} (#{counts['drawn']}, {time.time() - t:.0f} s, "
            f"{len(rows)} z's, worst {worst['stat'] if worst else '-'} z = "
            f"{worst['z'] if worst else float('nan'):+.2f}): {desc}")
        tested.append({"index": counts["drawn"], "net": desc, "source": source(net),
                       "mean": bool(np.any(inputs.mean)), "root": root, "warnings": texts,
                       "layers": layers, "rows": rows, "obj": net, "inputs": inputs})
    m = sum(len(t["rows"]) for t in tested)
    bound = bonferroni(m, alpha)
    log(f"{m} z's, Bonferroni bound at family level {alpha}: |z| > {bound:.2f} "
        f"({time.time() - t_start:.0f} s)")
    flagged = [(t, r) for t in tested for r in t["rows"] if abs(r["z"]) > bound]
    follow_bound = bonferroni(len(flagged), alpha)
    follow_seeds = follow_factor * seeds
    persistent = []
    for t, r in flagged:
        log(f"flagged net #{t['index']} {r['stat']}: z = {r['z']:+.2f}; rerun with "
            f"{follow_seeds} seeds at {follow_widths}")
        pred, layers, g_inf, _ = predict(t["obj"], t["inputs"])
        root2 = 1000 * seed + 500 + t["index"]
        again = measure(t["obj"], t["inputs"], follow_widths, follow_seeds, root2,
                        {r["stat"]: pred[r["stat"]]}, layers, g_inf)
        r2 = again[0] if again else None
        r["follow"] = r2 | {"seeds": follow_seeds, "widths": follow_widths, "root": root2} \
            if r2 else None
        log(f"  follow-up: {r2}")
        if not r2 or abs(r2["z"]) <= follow_bound or np.sign(r2["z"]) != np.sign(r["z"]):
            continue
        net, stat = t["obj"], r["stat"]
        if stat.endswith("@mid"):  # the middle layer made the last: the minimiser reads "last"
            net, stat = truncate(net, layers["mid"]), stat.replace("@mid", "@last")
        small, row, steps = minimise(net, t["inputs"], stat, follow_widths, follow_seeds,
                                     1000 * seed + 700 + 50 * t["index"], follow_bound,
                                     np.sign(r2["z"]), minimise_s, log)
        persistent.append({"net_index": t["index"], "stat": stat, "first": r, "follow": r2,
                           "minimal": source(small), "minimal_row": row, "steps": steps,
                           "inputs_mean": t["mean"], "seeds": follow_seeds,
                           "widths": follow_widths})
        log(f"  minimal ({steps} steps): {source(small)}\n  {row}")
    per_stat = {}
    for t in tested:
        for r in t["rows"]:
            key = r["stat"].split("[")[0].split(" @")[0] + " @" + r["stat"].split("@")[1]
            per_stat.setdefault(key, []).append(abs(r["z"]))
    summary = {"counts": counts, "missing_rules": missing, "z_count": m, "bound": bound,
               "follow_bound": follow_bound, "alpha": alpha, "seeds": seeds, "seed": seed,
               "widths": widths, "follow_widths": follow_widths,
               "follow_seeds": follow_seeds, "per_stat": {k: {"n": len(v), "max_abs_z": max(v),
                                                   "frac_abs_z_gt_2": float(np.mean(
                                                       np.asarray(v) > 2))}
                                              for k, v in per_stat.items()},
               "persistent": persistent, "elapsed_s": time.time() - t_start,
               "nets": [{k: v for k, v in t.items() if k not in ("obj", "inputs")}
                        for t in tested]}
    if out_json:
        with open(out_json, "w") as f:
            json.dump(summary, f, indent=1, default=float)
    md = markdown(summary)
    print(md)
    if out_md:
        with open(out_md, "w") as f:
            f.write(md + "\n")
    return summary


def markdown(s):
    c = s["counts"]
    lines = [(f"`benchmarks/finite_width_fuzz.py --nets {c['tested']} --seeds {s['seeds']} "
             f"--seed {s['seed']} --widths {' '.join(map(str, s['widths']))}`: {c['drawn']} nets drawn, {c['refused']} refused "
             f"(UnsupportedComposition), {c['no_rule']} with no finite-width rule for any "
             f"statistic, {c['tested']} tested; widths {s['widths']}, {s['seeds']} seeds per "
             f"width. {s['z_count']} z's, Bonferroni bound at family level {s['alpha']}: "
             f"|z| > {s['bound']:.2f}."), "",
             "| statistic | z's | max abs z | share abs z > 2 |", "|---|---|---|---|"]
    for k, v in sorted(s["per_stat"].items()):
        lines.append(f"| {k} | {v['n']} | {v['max_abs_z']:.2f} | {v['frac_abs_z_gt_2']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", type=int, default=24, help="nets to test (refused ones not counted)")
    p.add_argument("--seeds", type=int, default=1500, help="Monte Carlo seeds per width")
    p.add_argument("--seed", type=int, default=16, help="the generator's seed (and the roots')")
    p.add_argument("--alpha", type=float, default=0.01, help="family level of the flags")
    p.add_argument("--follow-factor", type=int, default=4, help="seeds of a follow-up, times")
    p.add_argument("--minimise-s", type=float, default=600, help="time per minimisation")
    p.add_argument("--widths", type=int, nargs="+", default=WIDTHS)
    p.add_argument("--json", default="finite_width_fuzz.json")
    p.add_argument("--md", default=None)
    a = p.parse_args()
    run(a.nets, a.seeds, a.seed, a.alpha, a.follow_factor, a.minimise_s, a.json, a.md,
        a.widths)
