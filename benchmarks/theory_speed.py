"""Benchmark: sigprop's theory engine against neural-tangents, side by side in one process.

Each row runs the same net both ways, interleaved, and keeps the minimum of ``--repeats`` runs:

* sigprop: ``sp.theory(net, inputs, layers=[0, L])``, forward and backward (the backward gives
  grad_q at every layer down to the input), B = 2 inputs (q = 1, 2; corr 0.5), a grid given as one ``sp.sweep`` of sigma_w1;
* neural-tangents: ``jit(vmap(kernel_fn))`` over ``stax.repeat(block, L)``, nngp and ntk, float64,
  compile excluded; vmap over sigma_w1 (one point: ``jit(kernel_fn)``). neural-tangents needs
  Gaussian inputs to a residual sum, so its net starts with a Dense(W_std=1) (the same nngp).
* sigprop's compiled engine, the same call with ``engine="jax"`` (it runs on the jax that
  neural-tangents needs), and with ``backward=False`` ("jax fwd"): the forward pass alone, the
  computation neural-tangents does (its ntk is a second forward kernel, sigprop's the branch's);
* with ``--baseline REV``, also sigprop at git revision REV (``git archive``, imported as
  ``sigprop_baseline``: the before/after ratio of the same call in the same process), with the
  engine of ``--baseline-engine`` (numpy or jax; compared with sigprop's own on that engine).

Agreement: the largest |log q_L (sigprop) - log nngp_aa (neural-tangents)| over the grid points
where neural-tangents' q_L is finite (it carries q unscaled: 3^1000 overflows float64). tanh
has no closed-form kernel: neural-tangents integrates it by a ``deg`` x ``deg`` Gauss-Hermite
rule (``ElementwiseNumerical``); ``--tanh-degree`` chooses deg, and ``degree_for`` measures the
smallest degree of a doubling ladder whose one-layer kernel is within 1e-10 of sigprop's.

neural-tangents is a benchmark-only extra, never a dependency of sigprop or of ``make test``:
``pip install neural-tangents 'jax==0.4.30' 'jaxlib==0.4.30' 'tf2jax==0.3.6'`` (neural-tangents
0.6.5 imports ``jax.core.Jaxpr``, gone from later jax; jax alone is sigprop's optional ``jax``
extra, for ``sp.theory(..., engine="jax")``, timed against the numpy engine by
``compiled_speed.py``). Without them this script says so and exits with status 0. Run:
``python benchmarks/theory_speed.py [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import sigprop as sp

Q0, CORR0 = (1.0, 2.0), 0.5
TOL = 1e-10  # kernel accuracy asked of the tanh rule (sigprop's quadrature: ~1e-13, see kernels)


@dataclass(frozen=True)
class Row:
    preset: str
    act: str
    depth: int
    points: int


ROWS = (Row("resnet", "relu", 1000, 10_000), Row("resnet", "relu", 1000, 1),
        Row("plain", "relu", 100, 1), Row("preln", "erf", 1000, 10_000),
        Row("preln", "tanh", 100, 1), Row("preln", "gelu", 100, 1), Row("preln", "gelu", 100, 100))
QUICK = (Row("resnet", "relu", 100, 10_000), Row("resnet", "relu", 100, 1),
         Row("plain", "relu", 100, 1), Row("preln", "erf", 100, 1000), Row("preln", "tanh", 30, 1),
         Row("preln", "gelu", 30, 1))
EPS = 1e-12  # LayerNorm eps of both (neural-tangents' default)


def sigma_w1(points: int) -> np.ndarray:
    return np.linspace(1.0, 2.0, points) if points > 1 else np.array([2**0.5])


def sigprop_call(m, row: Row, engine: str = "numpy", backward: bool = True):
    """() -> log q_L (points, B) with the package ``m`` (sigprop or a baseline of it) and its
    theory ``engine``; ``backward=False``: the forward pass alone (neural-tangents' work)."""
    s1 = m.sweep("sigma_w1", sigma_w1(row.points)) if row.points > 1 else float(sigma_w1(1)[0])
    kw = {"eps": EPS} if row.preset == "preln" else {}
    net = m.presets.get(row.preset)(row.depth, act=row.act, sigma_w1=s1, **kw)
    x0 = m.Inputs(q=list(Q0), corr=CORR0)

    def run():
        flag = {} if backward else {"backward": False}  # (a baseline may predate the flag)
        # (with the input recorded too: the backward pulls back every layer, as it did before
        # it stopped at the lowest recorded one; layer L alone pulls back its last block only)
        th = m.theory(net, x0, layers=[0, row.depth], engine=engine, **flag)
        return th.log_q.isel(layer=-1).transpose(..., "input").values.reshape(-1, 2)

    return run


def nt_call(row: Row, tanh_degree: int):
    """() -> log nngp_aa at layer L (points, B) by neural-tangents, compiled."""
    import jax
    import jax.numpy as jnp
    from neural_tangents import stax

    act = {"relu": stax.Relu, "erf": stax.Erf, "gelu": lambda: stax.Gelu(approximate=False),
           "tanh": lambda: stax.ElementwiseNumerical(jnp.tanh, tanh_degree)}[row.act]

    def branch(s1):
        return stax.serial(stax.Dense(2, W_std=s1), act(), stax.Dense(2, W_std=1.0))

    def block(s1):
        if row.preset == "plain":
            return branch(s1)
        inner = stax.serial(stax.LayerNorm(eps=EPS), branch(s1)) if row.preset == "preln" \
            else branch(s1)
        return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), inner), stax.FanInSum())

    K0 = np.array([[Q0[0], CORR0 * np.sqrt(Q0[0] * Q0[1])], [CORR0 * np.sqrt(Q0[0] * Q0[1]), Q0[1]]])
    x = np.linalg.cholesky(K0) * np.sqrt(2.0)  # x x^T / 2 = K0

    def kernel(s1):
        _, _, kernel_fn = stax.serial(stax.Dense(2, W_std=1.0), stax.repeat(block(s1), row.depth))
        k = kernel_fn(x, None, ("nngp", "ntk"))
        return k.nngp, k.ntk

    s = jnp.asarray(sigma_w1(row.points))
    f = jax.jit(jax.vmap(kernel)) if row.points > 1 else jax.jit(lambda s: kernel(s[0]))

    def run():
        nngp, _ = jax.block_until_ready(f(s))  # the ntk is computed, as timed, and unused
        return np.log(np.diagonal(np.asarray(nngp).reshape(-1, 2, 2), axis1=-2, axis2=-1))

    return run


def degree_for(act="tanh", q=2.0, cs=(0.0, 0.5, 0.9, 0.98, 0.999, 0.99999), tol=TOL) -> int:
    """Smallest deg in 25 * 2^k whose neural-tangents kernel of ``act`` at (q, q, c) is within
    ``tol`` of sigprop's at every c of ``cs`` (q = 2: after LN and Dense(sqrt 2), as in ROWS)."""
    import jax.numpy as jnp
    from neural_tangents import stax

    from sigprop.kernels.gaussian import get_activation

    want = get_activation(act).kernel(q, q, np.asarray(cs))
    for deg in (25, 50, 100, 200, 400, 800, 1600):
        _, _, kernel_fn = stax.serial(stax.Dense(2, W_std=1.0),
                                      stax.ElementwiseNumerical(getattr(jnp, act), deg))
        err = 0.0
        for c, w in zip(cs, want):
            x = np.array([[1.0, 0.0], [c, np.sqrt(1 - c * c)]]) * np.sqrt(2.0 * q)  # Gram q [1 c]
            err = max(err, abs(float(kernel_fn(x, None, "nngp")[0, 1]) - w))
        if err <= tol:
            return deg
    raise RuntimeError(f"no degree up to 1600 reaches {tol} for {act}")


def baseline(rev: str):
    """sigprop as of git revision ``rev``, imported as ``sigprop_baseline`` (git archive: the
    working tree and the index are not touched)."""
    repo = Path(__file__).resolve().parents[1]
    tar = subprocess.run(["git", "--no-optional-locks", "archive", rev, "sigprop"], cwd=repo,
                         check=True, capture_output=True).stdout
    root = Path(tempfile.mkdtemp(prefix="sigprop_baseline_"))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(root, filter="data")
    (root / "sigprop").rename(root / "sigprop_baseline")
    for path in (root / "sigprop_baseline").rglob("*.py"):
        text = re.sub(r"\bsigprop(?=[. \"]|$)", "sigprop_baseline", path.read_text(), flags=re.MULTILINE)
        path.write_text(text)
    sys.path.insert(0, str(root))
    return importlib.import_module("sigprop_baseline")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shallower, smaller rows (~1 min)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", metavar="REV", help="also time sigprop at git revision REV")
    ap.add_argument("--baseline-engine", choices=("numpy", "jax"), default="numpy",
                    help="the theory engine of the baseline and of the sigprop it is compared with")
    ap.add_argument("--tanh-degree", type=int, default=None,
                    help="neural-tangents' Gauss-Hermite degree for tanh (default: measured)")
    a = ap.parse_args()
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import neural_tangents  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any failure to import the extras
        print(f"neural-tangents/jax not usable ({type(e).__name__}: {e}); they are benchmark-only "
              "extras (see this script's docstring). Nothing to compare.")
        return
    import warnings

    warnings.filterwarnings("ignore", message=".*FanIn.*")
    deg = a.tanh_degree or degree_for("tanh")
    print(f"tanh: neural-tangents Gauss-Hermite degree {deg} (kernel within {TOL:g} at q = 2)")
    base = baseline(a.baseline) if a.baseline else None
    print("| preset | act | depth | points | sigprop (s) | neural-tangents (s) | sigprop / NT | "
          "sigprop ns per point-layer | max abs diff log q_L | sigprop jax (s) | jax / NT | "
          "jax ns per point-layer | jax fwd (s) | jax fwd / NT | jax fwd ns per point-layer |"
          + (f" baseline (s) | baseline / sigprop {a.baseline_engine} |" if base else ""))
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
          + ("---|---|" if base else ""))
    for row in (QUICK if a.quick else ROWS):
        calls = {"sigprop": sigprop_call(sp, row), "nt": nt_call(row, deg),
                 "jax": sigprop_call(sp, row, "jax"), "fwd": sigprop_call(sp, row, "jax", False)}
        if base:
            calls["baseline"] = sigprop_call(base, row, a.baseline_engine)
        outs = {k: f() for k, f in calls.items()}  # warm-up (and neural-tangents' compile)
        best = dict.fromkeys(calls, np.inf)
        for _ in range(a.repeats):
            for k, f in calls.items():
                dt, outs[k] = timed(f)
                best[k] = min(best[k], dt)
        finite = np.isfinite(outs["nt"])  # neural-tangents' unscaled q overflows past 1e308
        diff = float(np.max(np.abs(outs["sigprop"] - outs["nt"])[finite])) if finite.any() \
            else np.nan
        per, per_jax, per_fwd = (best[k] / (row.depth * row.points) * 1e9
                                 for k in ("sigprop", "jax", "fwd"))
        assert np.allclose(outs["fwd"], outs["jax"], rtol=1e-12, atol=0), "forward alone differs"
        line = (f"| {row.preset} | {row.act} | {row.depth} | {row.points} | {best['sigprop']:.4g} | "
                f"{best['nt']:.4g} | {best['sigprop'] / best['nt']:.3g} | {per:.4g} | {diff:.2g} "
                f"({finite.mean():.0%} finite in NT) | {best['jax']:.4g} | "
                f"{best['jax'] / best['nt']:.3g} | {per_jax:.4g} | {best['fwd']:.4g} | "
                f"{best['fwd'] / best['nt']:.3g} | {per_fwd:.4g} |")
        if base:
            own = best["jax" if a.baseline_engine == "jax" else "sigprop"]
            line += f" {best['baseline']:.4g} | {best['baseline'] / own:.3g} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()
