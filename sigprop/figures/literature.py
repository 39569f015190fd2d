"""Three published results at initialisation, reproduced as computed comparisons.

Each is a depth scan of the infinite-width theory (``sp.theory`` of a preset at depths
:data:`DEPTHS`, Xavier weights as the papers assume: sigma_w = 1 in both Denses of a ReLU
branch, no biases) read through the weight-gradient statistic of the schema, ``weight_grad_q``
(N^-2 sum over a block's Dense ops of ||dl/dW||_F^2, l = <delta, x_L>, delta ~ N(0, I)), and
each verdict is decided here from the numbers, so it changes if the toolkit's answer changes.
:func:`numbers` gives the paper's macros (written with the claims numbers, ``numbers.tex``).

* Xiong et al. (2020), Theorem 1: ||dL/dW^{2,L}||_F, the gradient of the last layer's FFN
  weight, is O(d sqrt(ln d)) for Post-LN and O(d sqrt(ln d / L)) for Pre-LN (with its final
  LayerNorm): in L, exponent 0 against -1/2. Here: the last Dense block's weight-gradient norm
  N sqrt(weight_grad_q) against L, its exponent fitted on log-log axes (:func:`xiong_theorem1`),
  with Monte Carlo at small depths (:func:`xiong_monte_carlo`).
* Liu et al. (2020, Admin): the output change under a random perturbation of the parameters,
  Var[F(x, W) - F(x, W*)], is O(N) for Post-LN and O(log N) for Pre-LN, N layers.
  Here: :func:`perturbation_sum`, a sum of the statistic over layers (its docstring derives it),
  fitted by a + b L and by a + b ln L (:func:`liu_admin`).
* Wang et al. (2022, DeepNet): the model update ||dF|| after one optimiser step is bounded by a
  sum over the residual sublayers, O(N eta) for Post-LN, O(eta) with DeepNorm's constants. Here:
  the first-order update of one SGD step, the same sum (:func:`perturbation_sum`), its depth
  exponent for Post-LN and DeepNorm (:func:`deepnet_update`).
"""

from __future__ import annotations

import numpy as np

DEPTHS = (8, 16, 32, 64, 128, 256, 512, 1024)  # the depth scans (blocks)
EXPONENT_TOL = 0.1  # a fitted depth exponent "matches" a published one within 0.1
MC_DEPTHS = (2, 4, 8, 16)  # Monte Carlo check of the Xiong scan at small depth
MC_WIDTHS, MC_SEEDS, MC_ROOT = (256, 512), 200, 20200  # two widths: T(N) = T_inf + a/N removed
MC_ALPHA = 1e-3  # family-wise false-failure rate of the Monte Carlo agreement
ARCHS = ("Post-LN", "Pre-LN", "DeepNorm")


def net(arch: str, L: int):
    """The preset of ``arch`` at depth L with Xavier branch weights (sigma_w = 1, ReLU).
    Pre-LN has its final LayerNorm (the Transformer of Xiong et al. and Liu et al.)."""
    from sigprop import presets

    kw = {"act": "relu", "sigma_w1": 1.0}
    if arch == "Post-LN":
        return presets.postln(L, **kw)
    if arch == "Pre-LN":
        return presets.preln(L, final_norm=True, **kw)
    if arch == "DeepNorm":
        return presets.deepnorm(L, **kw)
    from sigprop.errors import ConfigError

    raise ConfigError("arch", arch, f"one of {ARCHS}")


def _theory(arch: str, L: int):
    from sigprop.engines.theory import theory
    from sigprop.state.inputs import Inputs

    return theory(net(arch, L), Inputs(q=1.0, n=1))


def last_dense_layer(arch: str, L: int) -> int:
    """The layer index of the last block with a Dense (L; Pre-LN's final LayerNorm is L + 1)."""
    from sigprop.ops import Dense, layers_of

    blocks = layers_of(net(arch, L))
    return max(l for l, b in enumerate(blocks, 1) if any(isinstance(o, Dense) for o in b.walk()))


def perturbation_sum(ds) -> float:
    """U = sum over blocks l of weight_grad_q_l (input 0), for nets whose Denses all have
    n_in = n_out = N (ratio 1, as here).

    Liu et al.'s output change: W* = W + dW with each Dense's dW_D of i.i.d. entries of variance
    eps / n_in, independent of W and of each other. To first order F(x, W*) - F(x, W) =
    sum_D J_D dW_D x_D, J_D the Jacobian of the output with respect to D's output; the terms are
    uncorrelated with mean 0, and E_dW ||J_D dW_D x_D||^2 = (eps ||x_D||^2 / n_in) ||J_D||_F^2,
    with ||J_D||_F^2 = E_delta ||J_D^T delta||^2 = E ||g_D||^2 for delta ~ N(0, I). So
    E ||F(x, W*) - F(x, W)||^2 = eps sum_D n_out gq_out q_in = eps N U, i.e. eps U per output
    coordinate: Var[F - F*] = eps U.

    One SGD step theta* = theta - eta grad l on l = <delta, F>: to first order <delta, F(theta*)
    - F(theta)> = -eta ||grad l||^2 = -eta sum_D ||g_D||^2 ||x_D||^2 = -eta N^2 U (DeepNet's
    update along the gradient). A step of fixed size ||dW_D||_F = eta in a random direction
    per Dense gives E ||dF||^2 = eta^2 sum_D q_in gq_out = eta^2 U as well.
    """
    return float(ds["weight_grad_q"].isel(input=0).sum("layer", skipna=True))


def exponent(L, y) -> float:
    """Least-squares slope of log y against log L."""
    return float(np.polyfit(np.log(np.asarray(L, float)), np.log(np.asarray(y, float)), 1)[0])


def fit_residual(x, y) -> float:
    """Relative RMS residual of the least-squares line y = a + b x (RMS / mean |y|)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    res = y - np.polyval(np.polyfit(x, y, 1), x)
    return float(np.sqrt(np.mean(res**2)) / np.mean(np.abs(y)))


def _shown(x: float) -> float:
    """An exponent as the paper prints it: 3 decimals (a zero slope at rounding level is 0)."""
    return round(x, 3) + 0.0


def growth_form(L, U) -> tuple[str, float, float]:
    """("linear" or "logarithmic", the relative residual of a + b L, of a + b ln L): the form
    with the smaller residual."""
    lin, log = fit_residual(L, U), fit_residual(np.log(np.asarray(L, float)), U)
    return ("linear" if lin < log else "logarithmic"), lin, log


def scan(arch: str, depths=DEPTHS) -> dict[str, np.ndarray]:
    """Per depth L: the last Dense block's weight_grad_q and the sum U (:func:`perturbation_sum`)."""
    last, total = [], []
    for L in depths:
        ds = _theory(arch, L)
        last.append(float(ds["weight_grad_q"].sel(layer=last_dense_layer(arch, L), input=0)))
        total.append(perturbation_sum(ds))
    return {"L": np.asarray(depths), "last": np.asarray(last), "sum": np.asarray(total)}


def xiong_theorem1(scans) -> dict:
    """Depth exponents of the last block's weight-gradient norm N sqrt(weight_grad_q_L):
    Xiong et al.'s Theorem 1 has 0 (Post-LN) and -1/2 (Pre-LN)."""
    post = exponent(scans["Post-LN"]["L"], np.sqrt(scans["Post-LN"]["last"]))
    pre = exponent(scans["Pre-LN"]["L"], np.sqrt(scans["Pre-LN"]["last"]))
    ok = abs(post) <= EXPONENT_TOL and abs(pre + 0.5) <= EXPONENT_TOL
    return {"XiongThmPostExp": _shown(post), "XiongThmPreExp": _shown(pre),
            "XiongThmVerdict": "reproduced" if ok else "not reproduced"}


def xiong_monte_carlo() -> dict:
    """Monte Carlo of the last Dense block's weight_grad_q, Post-LN and Pre-LN at
    :data:`MC_DEPTHS`, two widths and :data:`MC_SEEDS` seeds each, against the theory
    (:func:`sigprop.analysis.compare.compare`: T(N) = T_inf + a/N fitted over the widths removes
    the O(1/N) bias, and z = (T_inf - theory) / its standard error). Agreement: every |z| below
    the Bonferroni bound at family-wise level :data:`MC_ALPHA`."""
    from scipy import stats

    from sigprop.analysis.compare import compare, stack_widths
    from sigprop.engines.montecarlo import simulate
    from sigprop.state.inputs import Inputs

    x0 = Inputs(q=1.0, n=1)
    zs = []
    for i, (arch, L) in enumerate((a, L) for a in ("Post-LN", "Pre-LN") for L in MC_DEPTHS):
        mc = stack_widths([simulate(net(arch, L), x0, width=w, seeds=MC_SEEDS, backend="numpy",
                                    root_seed=MC_ROOT + 10 * i + j)
                           for j, w in enumerate(MC_WIDTHS)])
        at = {"layer": [last_dense_layer(arch, L)]}
        cmp = compare(_theory(arch, L).sel(at), mc.sel(at), variables=["weight_grad_q"])
        zs.append(float(cmp["weight_grad_q"].sel(stat="z", input=0).squeeze("layer")))
    z_max = float(stats.norm.isf(MC_ALPHA / (2 * len(zs))))
    worst = float(np.max(np.abs(zs)))
    return {"XiongMCMaxZ": worst, "XiongMCZBound": z_max, "XiongMCDepth": max(MC_DEPTHS),
            "XiongMCWidthA": MC_WIDTHS[0], "XiongMCWidthB": MC_WIDTHS[1],
            "XiongMCSeeds": MC_SEEDS,
            "XiongMCVerdict": "agrees" if worst <= z_max else "disagrees"}


def liu_admin(scans) -> dict:
    """Which of a + b L and a + b ln L fits U(L) (:func:`perturbation_sum`) better, per
    placement: Liu et al. have O(N) for Post-LN, O(log N) for Pre-LN."""
    out = {}
    for arch, key in (("Post-LN", "Post"), ("Pre-LN", "Pre")):
        form, lin, log = growth_form(scans[arch]["L"], scans[arch]["sum"])
        out.update({f"Liu{key}Form": form, f"Liu{key}LinRes": lin, f"Liu{key}LogRes": log,
                    f"Liu{key}UMax": float(scans[arch]["sum"][-1])})
    ok = out["LiuPostForm"] == "linear" and out["LiuPreForm"] == "logarithmic"
    out["LiuPostPerBlock"] = float(np.polyfit(scans["Post-LN"]["L"], scans["Post-LN"]["sum"], 1)[0])
    out["LiuPreLogSlope"] = float(np.polyfit(np.log(scans["Pre-LN"]["L"]), scans["Pre-LN"]["sum"],
                                             1)[0])
    out["LiuVerdict"] = "reproduced" if ok else "not reproduced"
    return out


def deepnet_update(scans) -> dict:
    """Depth exponent of the first-order SGD update U(L) for Post-LN and DeepNorm: DeepNet's
    bound grows like the number of sublayers for Post-LN (exponent 1) and is O(eta) with
    DeepNorm (exponent 0)."""
    post = exponent(scans["Post-LN"]["L"], scans["Post-LN"]["sum"])
    dn = exponent(scans["DeepNorm"]["L"], scans["DeepNorm"]["sum"])
    ok = abs(post - 1) <= EXPONENT_TOL and abs(dn) <= EXPONENT_TOL
    return {"DeepNetPostExp": _shown(post), "DeepNetNormExp": _shown(dn),
            "DeepNetPostUMax": float(scans["Post-LN"]["sum"][-1]),
            "DeepNetNormUMax": float(scans["DeepNorm"]["sum"][-1]),
            "DeepNetVerdict": "reproduced" if ok else "not reproduced"}


def numbers(monte_carlo: bool = True) -> dict:
    """The paper's macros for the three comparisons (verdicts are words, the rest numbers)."""
    scans = {arch: scan(arch) for arch in ARCHS}
    out = {"LitDepthMin": DEPTHS[0], "LitDepthMax": DEPTHS[-1], "LitExpTol": EXPONENT_TOL}
    out.update(xiong_theorem1(scans))
    out.update(liu_admin(scans))
    out.update(deepnet_update(scans))
    if monte_carlo:
        out.update(xiong_monte_carlo())
    return out
