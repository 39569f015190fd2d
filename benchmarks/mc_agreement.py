"""Monte Carlo against the theory for every preset: the width-extrapolated check of the package.

For each preset x activation (BatchNorm presets on B = 6 Gaussian inputs, where E[1/s^4] is
finite and the seed mean of grad_q has a meaningful standard error), the Monte Carlo at two
widths is extrapolated to infinite width and compared with the theory by
:func:`sigprop.testing.check` (q, mean, corr at the last layer and grad_q at layer 0; family
p-value with Bonferroni). Reported: the worst point, its z, and the family p-value (a correct
theory gives p uniform on [0, 1]; p < 1e-3 is a rejection). Writes its section of
benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/mc_agreement.py [--depth 16] [--seeds 256] [preset ...]
"""

import argparse

from sigprop.errors import UnsupportedComposition
from sigprop.pipeline.bench import write_section
from sigprop.presets import PRESETS
from sigprop.state.inputs import Inputs
from sigprop.testing import ALPHA, check, simulate_widths

ACTS = ("relu", "tanh")
X_FIXED = Inputs(q=[1.0, 2.25], corr=0.3, mean=[0.2, -0.5])
X_GAUSS = Inputs(q=[1.0, 2.25, 0.5, 1.5, 2.0, 0.8], corr=0.3, law="gaussian")
WIDTHS = (256, 512)


def agreement(preset: str, act: str, depth: int, seeds: int):
    """(worst point, family p) of ``sigprop.testing.check`` for one preset and activation."""
    kw = {"alpha": 0.1} if preset == "skipinit" else {}
    net = PRESETS[preset](depth, act=act, **kw)
    x0 = X_GAUSS if preset in ("prebn", "postbn") else X_FIXED
    res = check(net, simulate_widths(net, x0, widths=WIDTHS, seeds=seeds), x0)
    return res.worst, res.p


def main(presets=None, depth=16, seeds=256, out="benchmarks/RESULTS.md"):
    rows = ["| preset | act | worst point | family p | rejected at 1e-3 |", "|---|---|---|---|---|"]
    for preset in presets or PRESETS:
        for act in ACTS:
            try:
                worst, p = agreement(preset, act, depth, seeds)
            except UnsupportedComposition as e:
                rows.append(f"| {preset} | {act} | no theory: {str(e)[:60]} | -- | -- |")
                continue
            rows.append(f"| {preset} | {act} | {worst} | {p:.3g} | {'yes' if p < ALPHA else 'no'} |")
            print(rows[-1], flush=True)
    intro = (f"`benchmarks/mc_agreement.py`: `sigprop.testing.check` (width-extrapolated, "
             f"Bonferroni family p-value) per preset, depth {depth}, widths {WIDTHS}, "
             f"{seeds} seeds per width.")
    md = "\n".join([intro, "", *rows])
    if out:
        write_section(out, "Monte Carlo vs theory: width-extrapolated check per preset", md)
    return md


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=256)
    a = ap.parse_args()
    main(a.presets or None, a.depth, a.seeds)
