"""The spread of an activation on the residual stream at finite width: a model, against Monte Carlo.

``sp.theory(net, inputs, width=N)`` has no first-order rule for an activation whose input is the
residual stream itself (``shape="act_dense"``: x_l = x_{l-1} + alpha W_l phi(x_{l-1})): the
stream's features are no fresh draw given the realised Gram, so their law's fluctuation beyond
the Gram is not known to the walk (:mod:`sigprop.engines.finite_width`). This script checks a
model of it before any engine carries it, on N Var log q_l of one Gaussian input (issue 16).

The model. Given the past, W_l phi(x_{l-1}) has i.i.d. rows N(0, s_l^2), s_l^2 = alpha^2 sigma_w^2
Phi_{l-1}, Phi = mean_i phi(x_i)^2 realised. So each feature's row follows a Gaussian trajectory
x_{l,i} = x_{0,i} + sum_{k <= l} s_k z_{k,i} (z i.i.d. N(0, 1)), and to first order in 1/N every
realised average splits into (a) nu_l(f) = mean_i f(xbar_{l,i}) - E f, the trajectories' own
noise at the infinite-width s_k (jointly Gaussian across layers: N Cov(nu_a(f), nu_b(h)) =
Cov(f(u_a), h(u_b)), (u_a, u_b) ~ N(0, [[q_a, q_min], [q_min, q_b]])), and (b) the feedback of
the realised s_k: by Stein's lemma d E f(x_l) / d s_k^2 = d E f / d q, so
delta Phi_l = nu_l(phi^2) + D_l sum_{k <= l} s_k^2 eps_k, delta q_l = nu_l(x^2) + sum_k s_k^2 eps_k,
eps_k = delta Phi_{k-1} / Phi_{k-1}, D_l = d E[phi^2] / d q at q_l. Var log q_l = Var delta q_l /
q_l^2. The covariances come from the finite-width engine's own quadrature
(:func:`~sigprop.engines.finite_width.gaussian_rule`) and the activation's kernel, so the model
holds for any activation. Monte Carlo: ``sp.simulate`` (float64), N Var log q_l across seeds
with its standard error from the sample's 4th moment; z = (measured - predicted) / SE, and z
of the model with one part left out (``predicted(..., drop=...)``), which it should reject.

    .venv/bin/python benchmarks/stream_row_law.py [--seeds 4000] [--widths 128 256 512 1024]
"""

import argparse

import numpy as np

import sigprop as sp
from sigprop.engines.finite_width import gaussian_rule
from sigprop.kernels.gaussian import get_activation

DEPTH = 8
NETS = (("relu", 0.5), ("tanh", 1.0))  # (activation, alpha)


def predicted(net, act: str, depth: int, q0: float = 1.0, drop: str | None = None) -> dict:
    """{"var": N Var log q_l, "slope": N (E log q_l - log q_l,inf)}, l = 0..depth, by the model
    of the module docstring; ``drop``: one part left out, to show what the comparison can reject
    ("layers": the trajectories' noise taken as independent across layers; "D": the feedback of
    the realised s_k on Phi; "mean": E delta q_l, the slope then -Var / 2 alone)."""
    phi = get_activation(act)
    dense = next(op for op in net.walk() if isinstance(op, sp.Dense))
    alpha = next(op for op in net.walk() if isinstance(op, sp.Residual)).alpha
    gain = alpha**2 * dense.sigma_w**2

    def e2(q):  # E phi(u)^2, u ~ N(0, q)
        return float(phi.kernel(np.array(q), np.array(q), np.array(1.0)))

    def f2(u):  # (phi^2)'' = 2 (phi'^2 + phi phi'')
        h = 1e-5 * max(1.0, float(np.max(np.abs(u))))
        return 2 * (phi.grad(u) ** 2 + phi.fn(u) * (phi.grad(u + h) - phi.grad(u - h)) / (2 * h))

    q = [q0]
    for _ in range(depth):
        q.append(q[-1] + gain * e2(q[-1]))
    q, n, h = np.array(q), depth + 1, 1e-4
    D = np.array([(e2(v * (1 + h)) - e2(v * (1 - h))) / (2 * h * v) for v in q])
    D2 = np.array([(e2(v * (1 + h)) - 2 * e2(v) + e2(v * (1 - h))) / (h * v) ** 2 for v in q])
    C = np.zeros((2 * n, 2 * n))  # N Cov of (nu_a(phi^2), nu_a(x^2)) over layers a
    G = np.zeros((n, n))  # G[a, k] = N Cov(nu_a(phi^2), nu_a(g)), g = (1/2) E (phi^2)''(x_k)
    for a in range(n):
        for b in range(a, n if drop != "layers" else a + 1):
            u, w = gaussian_rule(np.array([[q[a], q[a]], [q[a], q[b]]]))  # (a <= b: q_min = q_a)
            y = np.concatenate([phi.fn(u) ** 2, u**2, f2(u[:, 1:]) / 2], axis=-1)
            d = y - w @ y  # columns: phi_a^2, phi_b^2, x_a^2, x_b^2, g_b
            cov = (w[:, None] * d).T @ d
            for i, j, (r, c) in ((0, 1, (a, b)), (2, 3, (n + a, n + b)), (2, 1, (n + a, b)),
                                 (0, 3, (a, n + b))):
                C[r, c] = C[c, r] = cov[i, j]
            G[a, b] = cov[0, 4]
    dPhi, dq = np.eye(n, 2 * n), np.eye(n, 2 * n, k=n)  # rows: the nu's each is made of
    for layer in range(1, n):
        for k in range(1, layer + 1):
            eps = gain * dPhi[k - 1]  # s_k^2 eps_k = gain Phi_{k-1} (delta Phi_{k-1} / Phi_{k-1})
            dPhi[layer] += (drop != "D") * D[layer] * eps
            dq[layer] += eps
    var_q = np.einsum("li,ij,lj->l", dq, C, dq)
    # N E delta Phi_k: the realised s_j^2 (j <= k) smooth phi^2 by their mean, their covariance
    # with the rows' average of the smoothed second derivative, and their variance
    cov = dPhi @ C @ dPhi.T  # N Cov(delta Phi_a, delta Phi_b)
    bias = np.zeros(n)
    for k in range(1, n):
        for j in range(1, k + 1):
            feedback = gain * cov[j - 1, :j - 1].sum()  # (the rows' s_m^2, m < j, in A(g))
            bias[k] += gain * (D[k] * bias[j - 1] + dPhi[j - 1, :n] @ G[:, k]
                               + (drop != "D") * D2[k] * feedback
                               + D2[k] * gain * cov[j - 1, j - 1] / 2)
    bias_q = gain * np.concatenate([[0.0], np.cumsum(bias[:-1])])  # E q_l = E q_l-1 + gain E Phi
    return {"var": var_q / q**2,
            "slope": (drop != "mean") * bias_q / q - var_q / (2 * q**2)}


def measured(net, width: int, seeds: int) -> dict:
    """{"var": (N Var log q_l, SE), "slope": (N (mean log q_l - log q_l,inf), SE)} across seeds
    of one Gaussian input."""
    x0 = sp.Inputs(q=1.0, n=1, law="gaussian")
    mc = sp.simulate(net, x0, width=width, seeds=seeds, backend="numpy", dtype="float64",
                     root_seed=width)
    y = mc.log_q.isel(input=0).values
    d = y - y.mean(0)
    inf = sp.theory(net, x0, backward=False).log_q.isel(input=0).values
    return {"var": (width * y.var(0, ddof=1),
                    width * np.sqrt(((d**4).mean(0) - (d**2).mean(0) ** 2) / len(y))),
            "slope": (width * (y.mean(0) - inf), width * y.std(0, ddof=1) / np.sqrt(len(y)))}


def main(seeds: int, widths):
    print("| net | N | layer | N Var log q: predicted | measured ± SE | z | z, layers' noise "
          "independent | z, no D | N (E log q - log q_inf): predicted | measured ± SE | z | z, "
          "no E delta q |\n" + "|---" * 12 + "|")
    for act, alpha in NETS:
        net = sp.presets.resnet(DEPTH, act=act, alpha=alpha, shape="act_dense")
        preds = [predicted(net, act, DEPTH, drop=drop) for drop in (None, "layers", "D", "mean")]
        for width in widths:
            got = measured(net, width, seeds)
            for layer in (1, DEPTH // 2, DEPTH):
                cells = []
                for stat, models in (("var", preds[:3]), ("slope", preds[::3])):
                    v, se = (x[layer] for x in got[stat])
                    cells += [f"{models[0][stat][layer]:.3f}", f"{v:.3f} ± {se:.3f}"]
                    cells += [f"{(v - p[stat][layer]) / se:+.2f}" for p in models]
                print(f"| x + {alpha:g} W {act}(x) | {width} | {layer} | {' | '.join(cells)} |",
                      flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=4000)
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 1024])
    a = ap.parse_args()
    main(a.seeds, a.widths)
