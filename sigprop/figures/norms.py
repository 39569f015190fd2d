"""LayerNorm vs RMSNorm vs BatchNorm across batch sizes B (B = number of inputs), with the
closed forms of BatchNorm at infinite width for exchangeable inputs.

Exchangeable inputs (equal q_0, equal pairwise c_0, zero mean) stay exchangeable through every
block. BatchNorm centres each feature over the batch, so per feature sum_a y_a = 0 and (eps = 0)
sum_a y_a^2 = B; averaging over the features, a permutation-symmetric Gram with unit diagonal
has off-diagonal

    c_BN = -1 / (B - 1)                                   (the fixed point of Post-BN: exact)

whatever its input. Pre-BN x -> x + alpha F(BN x) with an MLP branch Dense(sigma_1)-ReLU-
Dense(sigma_2) adds per block rho = alpha^2 sigma_1^2 sigma_2^2 / 2 to q and rho f(c_BN) to the
cross moment (f: the ReLU arc-cosine map, Cho & Saul 2009), so

    c_L = (q_0 c_0 + L rho f(-1/(B-1))) / (q_0 + L rho).

Backward, BatchNorm divides by the batch spread s, s^2 ~ lambda chi^2_{B-1} / B per feature
(lambda the mean non-zero eigenvalue of the centred batch Gram), and E[1/s^2] =
B / ((B - 3) lambda): the gradient's mean diverges at eps = 0 for B <= 3 (then eps sets it).
"""

import numpy as np

from sigprop.analysis import plots
from sigprop.data import unsupported_of

SIM = "norms"
MIN_GRAD_BATCH = 4  # E[1/s^2] = B/((B-3) lambda) is finite only for B > 3: smaller B are not drawn
MIN_SE_BATCH = 6  # E[1/s^4] ~ 1/((B-3)(B-5)): G's variance, so its standard error, needs B > 5
CAPTION = (
    "LayerNorm, RMSNorm and BatchNorm across batch sizes $B$ (Gaussian inputs, ReLU MLP "
    "branches, and the pre-activation branch Dense(ReLU(BN x)) of ResNet v2): correlation "
    "between two inputs (left) and gradient second moment at the input (right) after $L$ "
    "blocks. LayerNorm and RMSNorm act on each input alone, so their curves cannot depend on "
    "$B$ (Pre-RMSNorm lies under Pre-LN, drawn dashed); BatchNorm couples the inputs of a "
    "batch. Lines with dots: infinite-width theory of the engine; open points: Monte Carlo "
    "($\\pm2$ standard errors). Left, black dotted: the Post-BN fixed point $-1/(B-1)$, "
    "exact at infinite width for exchangeable inputs (per-feature centring); grey crosses: "
    "the Pre-BN closed form $c_L = (q_0c_0 + L\\rho f(-1/(B-1)))/(q_0 + L\\rho)$. Right: "
    "only $B \\ge 4$, since BatchNorm's backward carries $\\mathrm{E}[1/s^2] \\propto 1/(B-3)$, "
    "infinite for $B \\le 3$ (there the value is set by $\\epsilon$, not by $B$).")

PANELS = (
    ("corr", {"input": 0, "input_b": 1}, -1, "correlation $c_L$ of two inputs"),
    ("grad_q", {"input": 0}, 0, "input gradient $G_0$"),
)


def relu_corr(c):
    """ReLU arc-cosine correlation map f(c) = (sqrt(1 - c^2) + (pi - arccos c) c) / pi."""
    c = np.asarray(c, dtype=float)
    return (np.sqrt(1 - c**2) + (np.pi - np.arccos(c)) * c) / np.pi


def postbn_corr(batch):
    """The BatchNorm output's correlation for exchangeable inputs: -1 / (B - 1)."""
    return -1.0 / (np.asarray(batch, dtype=float) - 1)


def prebn_corr(depth, batch, q0, c0, rho=1.0):
    """Pre-BN (ReLU MLP branch) after ``depth`` blocks: (q0 c0 + L rho f(c_BN)) / (q0 + L rho)."""
    return (q0 * c0 + depth * rho * relu_corr(postbn_corr(batch))) / (q0 + depth * rho)


def branch_rho(th, label="Pre-BN"):
    """rho = alpha^2 sigma_1^2 sigma_2^2 / 2 of the ReLU MLP branch of arch ``label`` (config)."""
    import json

    from sigprop import presets

    cfg = next(a for a in json.loads(th.attrs["config"])["arch"] if a["label"] == label)
    alpha = presets.branch_scale(cfg.get("alpha", "1"), int(th["layer"][-1]))
    s1 = cfg.get("sigma_w1") or 2**0.5
    return alpha**2 * s1**2 * cfg.get("sigma_w2", 1.0) ** 2 / 2


def inputs_of(th):
    """(q_0, c_0) of the (exchangeable) inputs: the theory's layer 0, inputs 0 and 1."""
    start = th.isel(layer=0, **{d: 0 for d in ("arch", "batch") if d in th.dims})
    return float(start["q"].sel(input=0)), float(start["corr"].sel(input=0, input_b=1))


def draw(data: plots.FigureData):
    fig, axes = plots.panels(len(PANELS))
    th = data.theory
    layers = th["layer"].values
    big = [int(b) for b in th["batch"].values if b >= MIN_GRAD_BATCH]
    for ax, (var, sel, layer, label) in zip(axes, PANELS):
        plots.curves(ax, data, var, sel={**sel, "layer": int(layers[layer])}, x="batch",
                     select={"batch": big} if var == "grad_q" else None,
                     xscale={"value": "log", "base": 2}, yscale="log" if var == "grad_q"
                     else "linear", xlabel="batch size $B$", ylabel=label,
                     theory_kw={"marker": "."}, note_missing=False)
    _closed_forms(axes[0], th)
    heavy = [b for b in big if b < MIN_SE_BATCH]
    if data.mc is not None and heavy:
        data.note(f"At B = {', '.join(map(str, heavy))} the gradient's band is no standard "
                  "error: $\\mathrm{E}[1/s^4] \\propto 1/((B-3)(B-5))$ is infinite there, so "
                  "the variance of $G_0$ across nets is too, and no estimate of its mean from "
                  "the seeds (the sample mean's or the log-normal one's) has the spread its "
                  "band shows.")
    plots.figure_legend(fig, axes[0])
    plots.params_note(data)
    data.note(f"Pre-BN branch: $\\rho = \\alpha^2\\sigma_1^2\\sigma_2^2/2$ = {branch_rho(th):.3g}.")
    missing: dict[str, list] = {}
    for case, why in unsupported_of(th).items():
        arch, _, b = case.partition(" (B=")
        missing.setdefault(arch, [why, []])[1].append(b.rstrip(")"))
    for arch, (why, batches) in missing.items():
        if arch == "Post-BN":
            data.note(f"The engine has no law for Post-BN: {_short(why)} Its correlation is "
                      "the exact fixed point $-1/(B-1)$ drawn dotted.")
            continue
        data.note(f"No infinite-width theory for {arch} at B = {', '.join(batches)}: "
                  f"{_short(why)} Shown as Monte Carlo only.")
    return fig


def _closed_forms(ax, th):
    b = np.asarray(th["batch"].values, dtype=float)
    q0, c0 = inputs_of(th)
    ax.plot(b, postbn_corr(b), color="black", ls=":", lw=1.2, label="$-1/(B-1)$ (Post-BN, exact)")
    ax.plot(b, prebn_corr(int(th["layer"][-1]), b, q0, c0, branch_rho(th)), ls="none", marker="x",
            color="0.4", ms=5, label="Pre-BN closed form")


def _short(why: str) -> str:
    """The reason of an UnsupportedComposition without its op path."""
    return why.split(": ", 1)[-1].split(";")[0].rstrip(".") + "."
