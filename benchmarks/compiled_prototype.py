"""Prototype of the compiled route: the ReLU resnet law under JAX ``lax.scan`` x ``vmap``.

Not sigprop code: the block law x -> x + Dense(1) relu Dense(s1) x (no bias, B = 2, zero mean)
is written here by hand, in sigprop's log-scaled form (unit-diagonal Gram, log scale ls):

    forward   K1 = s1^2 K;  K' = K + k1(K1)  with k1 the arc-cosine kernel of degree 1,
    backward  G_in = G + s1^2 k0(c_1) o G    with k0 = (pi - acos c) / (2 pi), c_1 = corr of K,

one ``lax.scan`` over the layers forward (keeping each layer's correlation, L x grid numbers),
one in reverse for the gradient, ``vmap`` over the grid, float64, compile excluded. It measures
what a traced engine would reach on this CPU and checks itself against ``sp.theory`` (log q_L
and log grad_q_0 to 1e-12). Needs jax (a benchmark-only extra, see theory_speed.py); exits
cleanly without it. Run: ``python benchmarks/compiled_prototype.py [--depth 1000 --points 10000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import sigprop as sp

Q0, CORR0 = (1.0, 2.0), 0.5


def prototype(depth: int):
    import jax
    import jax.numpy as jnp

    def k1(c):  # E[relu(u) relu(v)] / sqrt(q_u q_v)
        return (jnp.sqrt((1 - c) * (1 + c)) + (jnp.pi - jnp.arccos(c)) * c) / (2 * jnp.pi)

    def k0(c):
        return (jnp.pi - jnp.arccos(c)) / (2 * jnp.pi)

    def layer(state, _, s1):
        ls0, ls1, c = state  # K = [[e^2ls0, c e^(ls0+ls1)], [., e^2ls1]]
        w = s1 * s1
        q0, q1, x = 1 + w * 0.5, 1 + w * 0.5, c + w * k1(c)  # scaled by e^(ls_a + ls_b)
        return (ls0 + 0.5 * jnp.log(q0), ls1 + 0.5 * jnp.log(q1),
                x / jnp.sqrt(q0 * q1)), c

    def back(g, c, s1):
        g0, g1, r = g  # log diagonal of G and its correlation
        diag = 1 + s1 * s1 * 0.5  # 1 + s1^2 k0(1)
        return (g0 + jnp.log(diag), g1 + jnp.log(diag), r * (1 + s1 * s1 * k0(c)) / diag), None

    def run(s1):
        ls = 0.5 * jnp.log(jnp.asarray(Q0))
        (l0, l1, _), cs = jax.lax.scan(lambda st, x: layer(st, x, s1),
                                       (ls[0], ls[1], jnp.asarray(CORR0)), None, length=depth)
        (g0, g1, _), _ = jax.lax.scan(lambda g, c: back(g, c, s1), (0.0, 0.0, 0.0), cs,
                                      reverse=True)
        return jnp.stack([2 * l0, 2 * l1]), jnp.stack([g0, g1])

    return jax.jit(jax.vmap(run))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
    except ImportError:
        print("jax is not installed (a benchmark-only extra); nothing to measure.")
        return
    s1 = np.linspace(1.0, 2.0, a.points)
    f = prototype(a.depth)
    log_q, log_g = (np.asarray(v) for v in jax.block_until_ready(f(s1)))  # compile
    net = sp.presets.resnet(a.depth, sigma_w1=sp.sweep("sigma_w1", s1))
    x0 = sp.Inputs(q=list(Q0), corr=CORR0)
    best = {"prototype": np.inf, "sigprop": np.inf}
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(s1))
        best["prototype"] = min(best["prototype"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        th = sp.theory(net, x0, layers=[0, a.depth])
        best["sigprop"] = min(best["sigprop"], time.perf_counter() - t0)
    ref_q = th.log_q.sel(layer=a.depth).transpose("sigma_w1", "input").values
    ref_g = th.log_grad_q.sel(layer=0).transpose("sigma_w1", "input").values
    dq, dg = np.max(np.abs(log_q - ref_q)), np.max(np.abs(log_g - ref_g))
    per = {k: v / (a.depth * a.points) * 1e9 for k, v in best.items()}
    print(f"resnet relu, depth {a.depth}, {a.points} points, forward + backward: prototype "
          f"{best['prototype']:.4g} s ({per['prototype']:.3g} ns per point-layer), sigprop "
          f"{best['sigprop']:.4g} s ({per['sigprop']:.3g} ns); sigprop / prototype "
          f"{best['sigprop'] / best['prototype']:.3g}; max |d log q_L| {dq:.2g}, "
          f"max |d log grad_q_0| {dg:.2g}")


if __name__ == "__main__":
    main()
