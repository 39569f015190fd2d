"""Exact conditional sampler vs explicit weights vs gradient independence (GIA), against width.

For each N, on a plain tanh and a plain relu stack (L = 4 blocks Dense-act-Dense, B = 2 fixed
inputs, 2000 seeds, float32): the seed mean of grad_q at layer 0 (input 0) under the exact
conditional sampler, the explicit-weight sampler, and GIA (pull back through an independent W:
the infinite-width theory's assumption), with standard errors; and the KS p-value of log grad_q_0
for each against explicit. Writes its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/mc_sampler_law.py [--seeds 2000]
"""

import argparse
import math

from scipy import stats

import sigprop as sp
from sigprop.pipeline.bench import write_section

WIDTHS = (16, 32, 64, 128, 256)


def _grad0(act, width, seeds, sampler, root_seed):
    x0 = sp.Inputs(q=[1.0, 2.25], corr=0.3, mean=[0.2, -0.5])
    ds = sp.simulate(sp.presets.plain(4, act=act), x0, width, seeds, sampler=sampler,
                     root_seed=root_seed)
    return ds.grad_q.values[:, 0, 0], ds.log_grad_q.values[:, 0, 0]


def main(seeds=2000, out="benchmarks/RESULTS.md"):
    rows = [("| act | N | explicit E grad_q_0 | conditional | GIA | (GIA - explicit) / explicit "
            "| KS p conditional | KS p GIA |"), "|" + "---|" * 8]
    for act in ("tanh", "relu"):
        for N in WIDTHS:
            g_e, l_e = _grad0(act, N, seeds, "explicit", 1)
            g_c, l_c = _grad0(act, N, seeds, "conditional", 2)
            g_i, l_i = _grad0(act, N, seeds, "independent", 3)

            def fmt(g):
                return f"{g.mean():.4f} +- {g.std(ddof=1) / math.sqrt(seeds):.4f}"
            rel = g_i.mean() / g_e.mean() - 1
            rel_se = math.hypot(g_i.std() / g_i.mean(), g_e.std() / g_e.mean()) / math.sqrt(seeds)
            rows.append(f"| {act} | {N} | {fmt(g_e)} | {fmt(g_c)} | {fmt(g_i)} | "
                        f"{rel:+.3f} +- {rel_se:.3f} | {stats.ks_2samp(l_c, l_e).pvalue:.2g} | "
                        f"{stats.ks_2samp(l_i, l_e).pvalue:.2g} |")
            print(rows[-1], flush=True)
    md = "\n".join([
        (f"`benchmarks/mc_sampler_law.py`: plain stack of 4 blocks Dense-act-Dense, B = 2, "
        f"{seeds} seeds per sampler (independent root seeds), float32. grad_q_0 = (1/N)|delta_0|^2"
        " of input 0. The conditional sampler matches explicit weights at every N (KS p-values "
        "uniform); GIA is biased at O(1/N) per layer for tanh and is rejected at small N, while "
        "for relu its bias in E grad_q vanishes (the forward-backward coupling cancels per Dense "
        "pair)."), "", *rows])
    if out:
        write_section(out, "Monte Carlo sampler law: conditional vs explicit vs GIA", md)
    return md


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2000)
    p.add_argument("--out", default="benchmarks/RESULTS.md")
    a = p.parse_args()
    main(a.seeds, a.out)
