"""The symbolic face (sigprop.symbolic) against independent derivations and the numeric face.

Expected values are derived by hand beside each test (DESIGN.md conventions), never copied from
the code's output. The central property: a block's sympy map, evaluated at numbers, is the
numeric theory's one-block map (one law, two faces).
"""

import json
import math
import time

import numpy as np
import pytest
import sympy

import sigprop as sp
from sigprop import symbolic as S

PRESETS = ("plain", "resnet", "preln", "postln", "periln", "deepnorm", "skipinit")


def test_dense_map_by_hand():
    # Dense: K' = sigma_w^2 K + sigma_b^2, m' = 0; backward G_in = sigma_w^2 ratio G.
    blk = sp.Dense(S.SIGMA_W, S.SIGMA_B, S.RATIO)
    fwd = S.block_map(blk, 2, simplify=False)
    assert S.simplify(fwd["q_a"] - (S.SIGMA_W**2 * S.Q_A + S.SIGMA_B**2)) == 0
    assert fwd["m_a"] == 0
    want_c = (S.SIGMA_W**2 * S.C_AB * sympy.sqrt(S.Q_A * S.Q_B) + S.SIGMA_B**2) / sympy.sqrt(
        (S.SIGMA_W**2 * S.Q_A + S.SIGMA_B**2) * (S.SIGMA_W**2 * S.Q_B + S.SIGMA_B**2))
    assert S.is_zero(fwd["c_ab"] - want_c)
    assert S.simplify(S.backward_map(blk, simplify=False)["grad_q_a"]
                      - S.SIGMA_W**2 * S.RATIO * S.G_A) == 0


def test_relu_act_map_by_hand():
    # Cho & Saul: E[relu(u)^2] = q/2, E[relu(u)] = sqrt(q/(2 pi)), E[relu'(u)^2] = 1/2.
    fwd = S.block_map(sp.Act("relu"), 1, gaussian=True, simplify=False)
    assert S.simplify(fwd["q_a"] - S.Q_A / 2) == 0
    assert S.simplify(fwd["m_a"] - sympy.sqrt(S.Q_A / (2 * sympy.pi))) == 0
    assert S.simplify(S.backward_map(sp.Act("relu"), 1, gaussian=True, simplify=False)["grad_q_a"]
                      - S.G_A / 2) == 0


def test_layernorm_map_by_hand():
    # LN: q' = gain^2 v / (v + eps), v = q - m^2; m' = 0; G_in = gain^2 G / (v + eps).
    blk = sp.LayerNorm(S.EPS, S.GAIN)
    v = S.Q_A - S.M_A**2
    fwd = S.block_map(blk, 1, simplify=False)
    assert S.is_zero(fwd["q_a"] - S.GAIN**2 * v / (v + S.EPS)) and fwd["m_a"] == 0
    assert S.is_zero(S.backward_map(blk, simplify=False)["grad_q_a"]
                     - S.GAIN**2 * S.G_A / (v + S.EPS))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("act", ["relu", "erf"])  # linear: in the derivations
def test_symbolic_block_is_the_numeric_block(preset, act):
    """One block, two inputs with means: sympy map at numbers == sp.theory (same law)."""
    blk = S.preset_block(preset, act)
    vals = {"alpha": 0.7, "beta": 1.3, "sigma_1": 1.2, "sigma_2": 0.8, "sigma_b": 0.3,
            "eps": 0.05, "gain": 1.4, "ratio": 1, "b": 0.6}
    x0 = sp.Inputs(q=[0.9, 1.7], mean=[0.3, -0.4], corr=0.35)
    ds = S.theory_of(blk, 1, x0, **{k: v for k, v in vals.items()
                                     if S.SYMBOLS[k] in S.op_symbols(blk)})
    fwd = S.block_map(blk, 2, simplify=False)
    state = {S.Q_A: 0.9, S.Q_B: 1.7, S.M_A: 0.3, S.M_B: -0.4, S.C_AB: 0.35}
    at = {**{S.SYMBOLS[k]: v for k, v in vals.items()}, **state}
    got = [S.evaluate(fwd[k], at) for k in ("q_a", "q_b", "m_a", "m_b", "c_ab")]
    want = [*ds.q.values[1], *ds["mean"].values[1], ds.corr.values[1, 0, 1]]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    grad = S.backward_map(blk, 1, simplify=False)["grad_q_a"]
    g_th = ds.grad_q.values[0, 0] / ds.grad_q.values[1, 0]
    assert S.evaluate(grad, {**at, S.G_A: 1.0}) == pytest.approx(g_th, rel=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_block_with_defaults_is_the_preset(preset):
    """preset_block + preset_defaults reproduces presets.<name> (DeepNet constants included)."""
    L = 8
    defaults = S.preset_defaults(preset, "relu")
    blk = S.preset_block(preset, "relu", **{k.name: v.subs(S.L, L) for k, v in defaults.items()})
    x0 = sp.Inputs(q=[0.9, 1.7], mean=[0.3, -0.4], corr=0.35)
    mine = sp.theory(sp.Repeat(S.substitute(blk, {}), L), x0)
    ref = sp.theory(sp.presets.get(preset)(L, act="relu"), x0)
    for var in ("q", "mean", "corr", "grad_q"):
        np.testing.assert_allclose(mine[var].values, ref[var].values, rtol=1e-12, atol=1e-15)


def test_deepnet_constants_by_hand():
    """Wang et al. 2022 (encoder): alpha = (2N)^{1/4}, beta = (8N)^{-1/4} for N layers of two
    sublayers; one block here is one sublayer, so N = L/2: alpha = L^{1/4}, beta = (4L)^{-1/4}."""
    assert S.DEEPNET[S.BETA].subs(S.L, 16) == 2  # N = 8: (2 * 8)^{1/4}
    assert S.DEEPNET[S.B_DN].subs(S.L, 4) == sympy.Rational(1, 2)  # N = 2: (8 * 2)^{-1/4}


@pytest.mark.parametrize(("L", "sublayers", "N"), [(16, 2, 8), (16, 1, 16), (12, 3, 4)])
def test_deepnorm_preset_counts_deepnet_layers(L, sublayers, N):
    """presets.deepnorm: skip gain (2N)^{1/4} and branch gain (8N)^{-1/4} on both Denses, with
    N = L / sublayers DeepNet layers (default 2 sublayers per layer, as in DeepNet)."""
    kw = {} if sublayers == 2 else {"sublayers": sublayers}
    ops = list(sp.presets.deepnorm(L, act="relu", **kw).walk())
    res = next(o for o in ops if isinstance(o, sp.Residual))
    d1, d2 = [o for o in ops if isinstance(o, sp.Dense)]
    assert res.beta == pytest.approx((2 * N) ** 0.25, rel=1e-14)
    assert d1.sigma_w == pytest.approx(2**0.5 * (8 * N) ** -0.25, rel=1e-14)
    assert d2.sigma_w == pytest.approx((8 * N) ** -0.25, rel=1e-14)


@pytest.mark.parametrize("bad", [0, 1.5, True, "2"])
def test_deepnorm_rejects_bad_sublayer_counts(bad):
    with pytest.raises(sp.ConfigError, match="sublayers"):
        sp.presets.deepnorm(8, sublayers=bad)


def _sleep(x):
    time.sleep(x)
    return x


def _boom():
    raise ZeroDivisionError("boom")


def test_bounded_time_limit_and_errors():
    t = time.perf_counter()
    out = S.bounded(_sleep, 30, timeout=0.5)
    assert isinstance(out, S.TimedOut) and "0.5" in out.reason
    assert time.perf_counter() - t < 10
    err = S.bounded(_boom, timeout=5)
    assert isinstance(err, S.TimedOut) and "ZeroDivisionError" in err.reason
    assert S.bounded(sympy.expand, (S.Q_A + 1) ** 2, timeout=10) == S.Q_A**2 + 2 * S.Q_A + 1


def test_solve_depth_cases():
    x, x0 = sympy.symbols("x x0", positive=True)
    # x' = 2x + 1: x_l = 2^l (x0 + 1) - 1 (by hand)
    sol = S.solve_depth(2 * x + 1, x, x0)
    assert sol.found and sol.residual_zero and S.is_zero(sol.closed - (2**S.l * (x0 + 1) - 1))
    # x' = x / (1 + x): 1/x' = 1/x + 1, so x_l = x0 / (1 + l x0) (reciprocal transform)
    sol = S.solve_depth(x / (1 + x), x, x0)
    assert sol.transform == "reciprocal" and S.is_zero(sol.closed - x0 / (1 + S.l * x0))
    # x' = x + sin(x): no closed form; the recursion is still returned
    sol = S.solve_depth(x + sympy.sin(x), x, x0)
    assert not sol.found and sol.step == x + sympy.sin(x) and "not affine" in sol.method


def test_relu_correlation_expansion():
    # 1 - f(1 - e) = e - (2 sqrt 2 / (3 pi)) e^{3/2} + O(e^{5/2}) (expand acos(1 - e) by hand)
    ex = S.near_one(S.corr_map("relu"), order=5)
    assert S.simplify(ex - (S.ONE_MINUS_C - 2 * sympy.sqrt(2) / (3 * sympy.pi)
                            * S.ONE_MINUS_C ** sympy.Rational(3, 2))) == 0
    a0, b = S.log_law(ex, 1)
    # u' - u = A/2 + 3 A^2 / (8 u): a0 = A/2, b = 3A/4
    A = 2 * sympy.sqrt(2) / (3 * sympy.pi)
    assert S.simplify(a0 - A / 2) == 0 and S.simplify(b - 3 * A / 4) == 0


def test_integral_expectation_evaluates():
    # E[tanh(u)^2], u ~ N(0, 1), against an independent Gauss-Hermite rule of order 200
    q_tanh = S.block_map(sp.Act("tanh"), 1, gaussian=True, simplify=False)["q_a"]
    assert q_tanh.has(sympy.Integral)
    z, w = np.polynomial.hermite_e.hermegauss(200)
    ref = np.sum(w * np.tanh(z) ** 2) / math.sqrt(2 * math.pi)
    assert S.evaluate(q_tanh, {S.Q_A: 1.0}) == pytest.approx(ref, rel=1e-12)


def test_eps_map_is_stable():
    # 1 - f(1 - t^2) for the ReLU map evaluated at t = 1e-6 (1 - c = 1e-12) keeps its digits:
    # compare with the series e - A e^{3/2} (next term ~ e^{5/2} = 1e-30, negligible)
    E = S.eps_map(S.corr_map("relu"))
    t = 1e-6
    got = float(E.subs(S.SQRT_ONE_MINUS_C, t))
    e = t * t
    want = e - 2 * math.sqrt(2) / (3 * math.pi) * e**1.5
    assert got == pytest.approx(want, rel=1e-9)


def test_derivation_record_roundtrip(tmp_path):
    d = S.Derivation("demo", "a demo")
    d.equation("post", sympy.Symbol("q_l"), S.GAIN**2)
    d.check("exact", 0.0, 0.0)
    tex, js = d.write(tmp_path)
    text = tex.read_text()
    assert r"\gamma^{2}" in text and r"\label{eq:demo:post}" in text and r"\newcommand" not in text
    rec = json.loads(js.read_text())
    assert rec["verified"] and rec["equations"][0]["rhs"]["free_symbols"] == ["gain"]
    assert sympy.sympify(rec["equations"][0]["rhs"]["srepr"]) == S.GAIN**2
    d.check("too big", 1.0, 0.5)
    assert not d.verified and [c.what for c in d.failures()] == ["too big"]


def test_bad_values_and_depths_are_refused_by_name():
    """A hostile review: evaluate with a misspelt name raised sympy's "Cannot convert
    expression to float", naming neither; a NaN value returned NaN; symbolic_dataset's depth
    -1, 2.5 or "3" raised numpy's IndexError or TypeError."""
    from sigprop.errors import ConfigError

    assert S.evaluate(S.ALPHA**2, {"alpha": 2}) == 4.0
    with pytest.raises(ConfigError, match=r"\['alpha'\].*does not hold: \['alpah'\]"):
        S.evaluate(S.ALPHA**2, {"alpah": 2})
    for bad in (float("nan"), float("inf"), "two", True):
        with pytest.raises(ConfigError, match="value of alpha"):
            S.evaluate(S.ALPHA**2, {"alpha": bad})
    blk, x0 = S.preset_block("resnet", "relu"), sp.Inputs(q=1.0)
    for depth in (-1, 2.5, "3", 0):
        with pytest.raises(ConfigError, match="^depth="):
            S.symbolic_dataset(blk, depth, x0, alpha=0.5, beta=1.0, sigma_1=1.3, sigma_2=1.0,
                               sigma_b=0.0)


@pytest.mark.parametrize("preset", ["resnet", "preln", "postln"])
def test_symbolic_dataset_matches_theory(preset):
    """The iterated symbolic recursion (kind='symbolic') is the theory's trajectory."""
    blk = S.preset_block(preset, "relu")
    vals = {"alpha": 0.6, "beta": 1.0, "sigma_1": 1.3, "sigma_2": 0.9, "sigma_b": 0.2,
            "eps": 0.01, "gain": 1.1, "ratio": 1}
    vals = {k: v for k, v in vals.items() if S.SYMBOLS[k] in S.op_symbols(blk)}
    x0 = sp.Inputs(q=[0.8, 1.9, 1.2], mean=[0.2, -0.3, 0.0], corr=0.4)
    sym = S.symbolic_dataset(blk, 25, x0, **vals)
    th = S.theory_of(blk, 25, x0, **vals)
    assert sym.attrs["kind"] == "symbolic"
    for var in ("q", "mean", "corr", "grad_q"):
        np.testing.assert_allclose(sym[var].values, th[var].values, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("law", ["fixed", "gaussian"])
def test_symbolic_dataset_carries_a_mean_the_block_makes(law):
    """Centred inputs into x + relu(D x): the block gives the stream a mean, which the next
    block's map must take. The centred map was iterated at every layer, so q was 8 at layer 3
    against the theory's 13.2 (a second review's find); on Gaussian inputs the law after the
    first block is the general one. A block that needs Gaussian features it no longer has
    after one block (x + relu(RMSNorm x)) is refused, as the theory refuses it."""
    blk = sp.Residual(sp.Serial(sp.Dense(2**0.5), sp.Act("relu")))
    x0 = sp.Inputs(q=[1.0, 2.0], corr=0.3, law=law)
    sym, th = S.symbolic_dataset(blk, 4, x0), sp.theory(sp.Repeat(blk, 4), x0)
    for var in ("q", "mean", "corr", "grad_q"):
        np.testing.assert_allclose(sym[var].values, th[var].values, rtol=1e-12, atol=1e-14)
    if law == "gaussian":
        with pytest.raises(sp.UnsupportedComposition, match="layer 2"):
            S.symbolic_dataset(sp.Residual(sp.Serial(sp.RMSNorm(), sp.Act("relu"))), 3, x0)


def test_rel_error_is_relative_and_refuses_nan_and_shape_mismatch():
    """The derivations' checker, by hand: |1.1e-3 - 1e-3| / 1e-3 = 0.1 (relative, not absolute
    below 1: an absolute error would pass every small value); the worst of several points; an
    absolute error where the reference is 0; inf for a NaN or shapes that do not broadcast."""
    from sigprop.symbolic.checks import rel_error

    assert rel_error(1.1e-3, 1e-3) == pytest.approx(0.1, rel=1e-12)
    assert rel_error([2.0, 0.5], [1.0, 0.25]) == 1.0
    assert rel_error([1.0, 0.25], [1.0, 0.0]) == 0.25
    assert rel_error([1.0, float("nan")], [1.0, 1.0]) == float("inf")
    assert rel_error([1.0, 2.0, 3.0], [1.0, 2.0]) == float("inf")


def test_symbolic_dataset_names_a_value_it_cannot_use():
    """A value for no symbol of the block was dropped without a word, a sweep failed inside
    sympy, and a missing symbol read 'values=[...] is invalid: allowed given'."""
    blk = S.preset_block("preln", "relu")
    x0 = sp.Inputs(q=[0.8, 1.9], mean=[0.2, -0.3], corr=0.4)
    vals = {"alpha": 0.6, "beta": 1.0, "sigma_1": 1.3, "sigma_2": 0.9, "sigma_b": 0.2,
            "eps": 0.01, "gain": 1.1}
    S.symbolic_dataset(blk, 2, x0, **vals)
    with pytest.raises(sp.ConfigError, match="value='foo'.*op's symbols"):
        S.symbolic_dataset(blk, 2, x0, **vals, foo=1.0)
    # substitute (and theory_of through it): a misspelt name left its symbol in the net
    with pytest.raises(sp.ConfigError, match="substitute value='sigam_1'.*op's symbols"):
        S.substitute(blk, {**vals, "sigam_1": 1.3})
    with pytest.raises(sp.ConfigError, match="'sigam_w'"):
        S.theory_of(blk, 2, x0, **vals, sigam_w=1.0)
    S.theory_of(blk, 2, x0, **vals, ratio=1, sigma_w=1.0)  # (a canonical name the block
    # lacks: a set of values shared by several blocks, as the derivations pass them)
    with pytest.raises(sp.ConfigError, match=r"none for \['ratio'\]"):  # (a TypeError from
        S.theory_of(blk, 2, x0, **vals)  # deep in a law before)
    # every symbol given is bound (ratio, not given, stays: the infinite-width laws cancel it)
    assert {str(x) for x in S.op_symbols(S.substitute(blk, vals))} == {"ratio"}
    with pytest.raises(sp.ConfigError, match="alpha=Sweep.*a number"):
        S.symbolic_dataset(blk, 2, x0, **{**vals, "alpha": sp.sweep("alpha", [0.5, 1.0])})
    with pytest.raises(sp.ConfigError, match=r"none for \['gain'\]"):
        S.symbolic_dataset(blk, 2, x0, **{k: v for k, v in vals.items() if k != "gain"})


def test_evaluate_binds_a_symbol_given_by_name_whatever_its_assumptions():
    """evaluate maps a value's key to the expression's symbol by name: a plain
    sympy.Symbol('alpha') (no assumptions) binds the expression's real ALPHA (alpha^2 at 3 is
    9), as the string 'alpha' does."""
    import sympy

    assert S.ALPHA != sympy.Symbol("alpha")  # (the assumptions differ: another symbol)
    assert S.evaluate(S.ALPHA**2 + 1, {sympy.Symbol("alpha"): 3}) == 10.0
    assert S.evaluate(S.ALPHA**2 + 1, {"alpha": 3}) == 10.0


def test_evaluates_unbound_error_lists_only_the_names_the_expression_lacks():
    """With a good name and a misspelt one ({'alpha': 2, 'btea': 3} for alpha^2 beta), the
    error names beta as unbound and lists only 'btea' as given for a name the expression does
    not hold ('alpha' it holds)."""
    from sigprop.errors import ConfigError

    with pytest.raises(ConfigError, match=r"values=\['beta'\].*does not hold: \['btea'\]$"):
        S.evaluate(S.ALPHA**2 * S.BETA, {"alpha": 2, "btea": 3})
