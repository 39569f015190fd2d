"""Finite-width deviation of log q from infinite width vs depth/width (plain ReLU MLP blocks).

Exact finite-N law. A block x -> W2 relu(W1 x) (W1 ~ N(0, s1^2/N), W2 ~ N(0, s2^2/N), no
biases) maps q to q s1^2 s2^2 chi2_K chi2'_N / N^2 with K ~ Binomial(N, 1/2) active units and
independent chi-squares: by rotational invariance the ratio does not depend on x, so the log
ratios of the blocks are i.i.d. Hence, per block, relative to the infinite-width value
log(s1^2 s2^2 / 2):

    E log-ratio deviation = E_K[psi(K/2)] + psi(N/2) + 3 log 2 - 2 log N   (about -3.5 / N)
    Var log-ratio         = E_K[psi'(K/2)] + Var_K[psi(K/2)] + psi'(N/2)    (about 7 / N)

(psi the digamma function; K = 0, of probability 2^-N, is left out). Both grow linearly in
depth, so the deviation is a function of depth/width to leading order.
"""

import json

import numpy as np
from scipy import special, stats

from sigprop.analysis import plots

SIM = "finite_width"
CAPTION = (
    "Finite-width deviation for a plain ReLU net (MLP blocks, no skip): seed variance of "
    "$\\log q_\\ell$ (left) and mean of $\\log q_\\ell$ minus its infinite-width value "
    "(right) vs depth/width $\\ell/N$, one colour per width. Lines: the exact finite-width law "
    "(a sum of independent digamma terms per block); "
    "points: Monte Carlo (mean of logs $\\pm$2 standard errors). Infinite-width theory is the "
    "horizontal zero line.")


def per_block(N: int) -> tuple[float, float]:
    """(mean deviation, variance) of the log q ratio of one block at width N."""
    k = np.arange(1, N + 1)
    w = stats.binom.pmf(k, N, 0.5)
    w = w / w.sum()
    psi = special.digamma(k / 2)
    mean = w @ psi + special.digamma(N / 2) + 3 * np.log(2) - 2 * np.log(N)
    var = w @ special.polygamma(1, k / 2) + w @ (psi - w @ psi) ** 2 + special.polygamma(1, N / 2)
    return float(mean), float(var)


def _exact_applies(data) -> bool:
    cfg = json.loads(data.theory.attrs.get("config", "{}"))
    archs = cfg.get("arch", [])
    return len(archs) == 1 and archs[0].get("preset") == "plain" and \
        archs[0].get("act", "relu") == "relu" and archs[0].get("shape", "mlp") == "mlp" and \
        not archs[0].get("sigma_b")


def draw(data: plots.FigureData):
    fig, (ax_v, ax_m) = plots.panels(2)
    th = plots.pick(data.theory, arch=plots.arch_labels(data.theory)[0])
    log_q = th["log_q"].sel(input=0)
    depth = int(th["layer"][-1])
    widths = [int(w) for w in data.mc["width"].values] if data.mc is not None else [64, 256, 1024]
    exact = _exact_applies(data)
    if not exact:
        data.note("The exact finite-width law holds only for plain ReLU MLP blocks without "
                  "biases; it is not drawn for this sim.")
    layers = np.arange(depth + 1)
    if exact:
        N = widths[-1]
        mean, var = per_block(N)
        data.note(f"At N = {N} the exact law gives Var $\\log q_\\ell$ = {var * N:.3g} $\\ell/N$ "
                  f"and a mean shift {mean * N:.3g} $\\ell/N$ to leading order.")
    for i, N in enumerate(widths):
        if exact:
            mean, var = per_block(N)
            plots.theory_line(ax_v, layers / N, var * layers, i, label=f"N = {N}")
            plots.theory_line(ax_m, layers / N, mean * layers, i)
        if data.mc is None:
            continue
        logs = np.log(plots.pick(data.mc, arch=th["arch"].item() if "arch" in th.coords else None)
                      ["q"].sel(input=0, width=N))
        S = logs.sizes["seed"]
        v = logs.var("seed", ddof=1)
        v_se = v * np.sqrt(2 / (S - 1))
        d = logs.mean("seed") - log_q
        d_se = np.sqrt(v / S)
        x = logs["layer"] / N
        plots.mc_points(ax_v, x, v, v - 2 * v_se, v + 2 * v_se, i,
                        label=None if exact else f"N = {N}")
        plots.mc_points(ax_m, x, d, d - 2 * d_se, d + 2 * d_se, i)
    ax_m.axhline(0.0, color="0.4", lw=0.8)
    ax_v.set_ylabel("Var$_{\\mathrm{seeds}}[\\log q_\\ell]$")
    ax_m.set_ylabel("E$[\\log q_\\ell] - \\log q_\\ell^{(\\infty)}$")
    for ax in (ax_v, ax_m):
        ax.set_xlabel("depth / width  $\\ell / N$")
    plots.legend(ax_v, loc="upper left")
    plots.mc_note(data)
    plots.params_note(data)
    return fig
