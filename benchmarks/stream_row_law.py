"""An activation on the residual stream at finite width: the engine's stream-row model against
Monte Carlo (issue 16).

``sp.theory(net, inputs, width=N)`` takes a net of blocks x + alpha (W phi(x) + b) on Gaussian
inputs (``presets.resnet(..., shape="act_dense")``) by the stream-row model
(:func:`sigprop.engines.finite_width.stream_rows`): given the past, each feature's row is a
Gaussian trajectory across the layers, so each input's statistics follow from 2-D integrals over
pairs of layers. This script fits each statistic of one input (q0 = 1.7) over the widths by
:func:`sigprop.testing.measure_layers` (the 1/N slopes of E log q, E var / var_inf, E mean and E
log branch_q; the leading N Var of log q, log var, mean and log branch_q), compares the fit with
the engine's prediction (z = (fitted - predicted) / SE), and gives the z of the model with one
part left out (``stream_rows(..., drop=...)``), which the data should reject: "layers", the
trajectories' noise taken as independent across layers; "D", the feedback of each realised
Phi = mean phi^2 on the later rows; "mean", E delta q (the slope then -Var / 2 alone).

    .venv/bin/python benchmarks/stream_row_law.py [--seeds 16000] [--widths 64 128 256 512]
"""

import argparse
import warnings

import sigprop as sp
from sigprop.engines import finite_width as fw
from sigprop.errors import FiniteWidthWarning
from sigprop.pipeline.bench import write_section
from sigprop.testing import measure_layers

DEPTH, Q0 = 8, 1.7
NETS = {  # label: (activation, alpha, sigma_w, sigma_b)
    "x + 0.5 W relu(x), sigma_w^2 = 2": ("relu", 0.5, 2**0.5, 0.0),
    "x + W tanh(x)": ("tanh", 1.0, 1.0, 0.0),
    "x + (W tanh(x) + b), sigma_w = 1.2, sigma_b = 0.3": ("tanh", 1.0, 1.2, 0.3),
}
TITLE = "Finite width: an activation on the residual stream, in the engine (issue 16, continued)"


def stream_net(act: str, alpha: float, sigma_w: float, sigma_b: float):
    return sp.Repeat(sp.Residual(sp.Serial(sp.Act(act), sp.Dense(sigma_w, sigma_b)),
                                 alpha=alpha), DEPTH)


def wrong_z(rows, act, blocks, layer) -> dict:
    """{(statistic, part left out): z} of each wrong model of the stream_rows docstring."""
    out = {}
    wrong = {d: fw.stream_rows(act, Q0, blocks, drop=d) for d in ("layers", "D", "mean")}
    for name, _, fitted, se in rows:
        for d, r in wrong.items():
            v = r["q_var"][layer]
            if name == "N Var log q" and d != "mean":
                out[name, d] = (fitted - v) / se
            elif name == "slope of E log q" and d == "mean":
                out[name, d] = (fitted + v / 2) / se
    return out


def main(seeds: int, widths, out: str):
    lines = ["| net | layer | statistic | predicted | fitted ± SE | z | z, a part left out |",
             "|---|---|---|---|---|---|---|"]
    worst, rejected = 0.0, {}  # rejected: per part left out, each (layer, net, z)
    for label, (act_name, alpha, sigma_w, sigma_b) in NETS.items():
        net = stream_net(act_name, alpha, sigma_w, sigma_b)
        act, blocks = fw._stream_blocks(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FiniteWidthWarning)  # (the gradient's NaN)
            found = measure_layers(net, sp.Inputs(q=Q0, n=1, law="gaussian"), widths, seeds,
                                   (1, DEPTH // 2, DEPTH), root_seed=2024)
        for layer, rows in found.items():
            wrong = wrong_z(rows, act, blocks, layer)
            for (_, d), z in wrong.items():
                rejected.setdefault(d, []).append((layer, label, z))
            for name, predicted, fitted, se in rows:
                z = (fitted - predicted) / se
                worst = max(worst, abs(z))
                parts = ", ".join(f"{d}: {z:+.1f}" for (n, d), z in wrong.items() if n == name)
                lines.append(f"| {label} | {layer} | {name} | {predicted:.4g} | {fitted:.4g} ± "
                             f"{se:.2g} | {z:+.2f} | {parts} |")
                print(lines[-1], flush=True)
    seen = "; ".join(
        f"{d} (on {'N Var log q' if d != 'mean' else 'the slope of E log q'}): |z| > 3 at "
        f"{sum(abs(z) > 3 for *_, z in found)} of {len(found)} (net, layer) points, largest "
        f"{max(abs(z) for *_, z in found):.1f}" for d, found in rejected.items())
    body = (f"`python benchmarks/stream_row_law.py --seeds {seeds} --widths "
            f"{' '.join(map(str, widths))}`: depth {DEPTH}, one Gaussian input of q0 = {Q0}, "
            f"float64, root seed 2024 + width. Predicted: `sp.theory(net, inputs, width=N)` "
            f"(the stream-row model); fitted: c + a/N over the widths (slopes) or V + c/N (N "
            f"Var). Largest |z|: {worst:.2f} over {len(lines) - 2} comparisons. The model with "
            f"a part left out: {seen}.\n\n" + "\n".join(lines))
    if out:
        write_section(out, TITLE, body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=16000)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--out", default="", help="a markdown file to write the table's section to")
    a = ap.parse_args()
    main(a.seeds, a.widths, a.out)
