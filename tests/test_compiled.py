"""The compiled theory engine (``engine="jax"``, sigprop.engines.compiled) against the numpy one.

Both evaluate the same laws (the ops' source, traced with jax.numpy or run with numpy) in
float64, layer by layer in the same order. They differ only in the implementations of the
elementwise functions (XLA's exp/log/acos against libm's, a few ulp apart) and in XLA's
reassociation-free fusion of the same operations, so each layer adds a rounding difference of
order eps = 1.1e-16 per operation (~50 per layer) to log q, and over the depths below (<= 12)
the accumulated difference is at most ~12 x 50 x eps ~ 7e-14 relative. TOL = 1e-12 (the
issue's bar) therefore fails for any law that differs by more than ~1e-12 per layer (a scale
of 1 + 1e-9 on one law: :func:`test_tolerance_sees_a_perturbed_law`), and passes rounding.
"""

import dataclasses
import math
import sys
from collections import OrderedDict

import numpy as np
import pytest

pytest.importorskip("jax")

import sigprop as sp
from sigprop.engines import compiled
from sigprop.errors import ConfigError, OverflowInTheory, UnsupportedComposition
from sigprop.kernels import gaussian
from sigprop.ops import (
    Act,
    BatchNorm,
    Dense,
    FeatureAffine,
    LayerNorm,
    Op,
    Repeat,
    Residual,
    RMSNorm,
    Scale,
    Serial,
)
from sigprop.state import ns as namespaces
from sigprop.state.moments import GAUSSIAN, Moments
from sigprop.state.params import Context

TOL = 1e-12  # module docstring: rounding over <= 12 layers is ~7e-14
CORR3 = [[1, 0.3, 0.2], [0.3, 1, 0.6], [0.2, 0.6, 1]]
X3 = sp.Inputs(q=[1.0, 2.0, 0.5], corr=CORR3, mean=[0.1, -0.2, 0.3])  # B = 3, a mean: every
# entry of the laws is used
X2 = sp.Inputs(q=[1.0, 2.0], corr=0.5)
G3 = sp.Inputs(q=[1.0, 2.0, 0.5], corr=CORR3, law="gaussian")  # BatchNorm needs Gaussian inputs
G2 = sp.Inputs(q=[1.0, 2.0], corr=0.5, law="gaussian")
# At B = 2 a BatchNorm output has corr exactly -1 (y = (d, -d) / s), where relu's gradient
# kernel (pi - acos c) / (2 pi) ~ sqrt(2 (1 + c)) / (2 pi) has an infinite slope: a rounding of
# c by k ulp (k <= 4) moves it by up to sqrt(2 k eps) / (2 pi) = 4.7e-9 per such layer, in G's
# off-diagonal, whichever engine rounds. The bound per layer, for the B = 2 BatchNorm nets:
TOL_C1 = math.sqrt(2 * 4 * np.finfo(float).eps / 2) / (2 * math.pi)  # eps / 2: the unit roundoff
LOGS = ("log_q", "log_grad_q", "log_branch_q", "log_weight_grad_q")  # relative to max(|.|, 1)
LINEAR = ("corr", "mean")  # absolute (|corr| <= 1; the means here are O(1))


def worst(a, b) -> float:
    """The largest difference of ``b`` from ``a`` over the compared variables; their NaN and
    infinite entries must be the same (else the difference is infinite)."""
    out = 0.0
    for name in [n for n in LOGS + LINEAR if n in a.data_vars]:  # (forward only: no gradients)
        u, v = a[name].values, b[name].values
        assert u.shape == v.shape, name
        finite = np.isfinite(u)
        if not (np.array_equal(finite, np.isfinite(v))
                and np.array_equal(u[~finite], v[~finite], equal_nan=True)):
            return np.inf
        u, v = u[finite], v[finite]
        scale = np.maximum(np.abs(u), 1.0) if name in LOGS else 1.0
        out = max(out, float(np.max(np.abs(u - v) / scale, initial=0.0)))
    return out


def agree(net, inputs, tol=TOL, **kw):
    a, b = sp.theory(net, inputs, **kw), sp.theory(net, inputs, engine="jax", **kw)
    assert b.attrs["backend"] == "jax" and a.attrs["backend"] == "numpy"
    assert dict(a.sizes) == dict(b.sizes) and list(a.data_vars) == list(b.data_vars)
    assert all(np.array_equal(a[c].values, b[c].values) for c in a.coords)
    assert worst(a, b) <= tol
    return a, b


def test_resnet_sweep_and_single_point():
    """A 1-D sweep and a net without one (no vmap: one point), B = 2 and B = 3 with a mean."""
    agree(sp.presets.resnet(8, sigma_w1=sp.sweep("sigma_w1", [1.0, 1.4, 2.0])), X3)
    agree(sp.presets.resnet(8), X2)


def test_one_input_has_only_diagonal_kernel_entries():
    """B = 1: the Gram kernels have no entry a < b, only their closed-form diagonal (relu's
    and erf's, forward and backward)."""
    one = sp.Inputs(q=[1.5])
    agree(sp.presets.resnet(4, sigma_w1=sp.sweep("sigma_w1", [1.0, 1.5])), one)
    agree(sp.presets.preln(4, act="erf"), one)


def test_preln_two_dim_grid_final_norm_and_recorded_layers():
    """A 2-D grid (erf: true-scale kernels), a final LayerNorm (a second run of blocks) and a
    subset of recorded layers."""
    net = sp.presets.preln(6, act="erf", final_norm=True, alpha=sp.sweep("alpha", [0.2, 1.0]),
                           sigma_w1=sp.sweep("sigma_w1", [0.8, 1.1, 1.5]))
    agree(net, X3)
    agree(net, X3, layers=[0, 3, 7])


def test_law_settling_and_mixed_runs():
    """Fixed inputs meet a Repeat whose law settles after one copy (plain: GENERAL in,
    Gaussian out), between other blocks; biases (lifted units), Scale and RMSNorm."""
    block = Residual(Serial(RMSNorm(), Dense(1.3, 0.2), Act("relu"), Dense(1.0), Scale(0.7)))
    net = Serial(Dense(1.5, 0.1), Repeat(block, 4), Act("erf"),
                 sp.presets.plain(3, act="linear"), LayerNorm(gain=2.0))
    agree(net, X3)
    agree(sp.presets.plain(5, act="leaky_relu(0.2)"), X3)


def test_scaled_and_closed_skips_one_input_and_the_input_layer_alone():
    """The paths the slow all-preset test covers, at depth 4 in the fast suite: DeepNorm's skip
    beta != 1, SkipInit's alpha = 0 inside a sweep, Post-LN, B = 1, and layers=[0] (an empty
    set of recorded blocks: was a jax indexing error)."""
    agree(sp.presets.deepnorm(4), X3)
    agree(sp.presets.resnet(4, alpha=sp.sweep("alpha", [0.0, 0.5])), X3)
    agree(sp.presets.postln(4, act="erf"), sp.Inputs(q=[2.0]))
    agree(sp.presets.resnet(4), X2, layers=[0])


def test_equal_blocks_built_one_by_one_are_one_scan():
    """A Serial of equal blocks made separately is one run (one trace, one scan), as a Repeat's
    copies are (it was unrolled: a compile of ~14 s at L = 50), with the same values."""
    def block():
        return Residual(Serial(Dense(1.4), Act("relu"), Dense(1.0)), alpha=0.5)

    blocks = [block() for _ in range(6)] + [Residual(Serial(Dense(1.4), Act("relu")))]
    assert [(first, n) for _, first, n in compiled._runs(blocks)] == [(1, 6), (7, 1)]
    agree(Serial(*blocks), X2)
    # the same object repeated (a Repeat's copies, grouped by identity first) and equal ones
    a, other = block(), blocks[-1]
    mixed = [a, a, block(), a, block(), block(), other, a, a]
    assert [(first, n) for _, first, n in compiled._runs(mixed)] == [(1, 6), (7, 1), (8, 2)]


def test_a_repeat_is_checked_once_per_call_not_once_per_layer(monkeypatch):
    """The unsupported-op check and the tape's size run once per run of one block: per layer,
    they were ~90 % of a one-point call at depth 4000 (benchmarks/RESULTS.md, 'One grid
    point'). Counted, not timed: a Repeat of 50 copies checks its block's ops once."""
    calls = {"refuse": 0, "taped": 0}
    refuse, taped = compiled._refuse, compiled._taped_states

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(compiled, "_refuse", counted("refuse", refuse))
    monkeypatch.setattr(compiled, "_taped_states", counted("taped", taped))
    net = sp.presets.resnet(50)
    sp.theory(net, X2, engine="jax", layers=[50])
    ops = sum(1 for _ in sp.ops.layers_of(net)[0].walk())
    assert calls == {"refuse": ops, "taped": 1}


def test_a_subnormal_true_scale_is_the_small_scale_limit_not_a_silent_zero():
    """XLA on the CPU flushes subnormals to zero: at q = 1e-310 an erf law on the true scale
    gave -inf and corr 0 under jax while numpy kept the value; it was then refused. Below
    TRACED_LS_MIN both engines now take the activation's small-scale limit (erf: the linear
    map times 2/sqrt(pi), exact there to float64), and agree."""
    net = Serial(Dense(1.0), Act("erf"), Dense(1.0), Act("erf"))
    x0 = sp.Inputs(q=[1e-310, 2e-310], corr=0.5)
    assert np.all(np.isfinite(sp.theory(net, x0)["log_q"].values))
    agree(net, x0)


def test_a_true_scale_near_the_subnormals_is_not_rounded():
    """Above the subnormals, a law's rounding-level terms still reach them: a tanh resnet at q =
    1e-300 was 1.5e-8 off numpy in log q (at 1e-307: 2.1, its branch's q exactly 0), with no
    word. A traced law takes no true scale below tiny / eps = 1e-292 (TRACED_LS_MIN): at 1e-290
    the true-scale law, at q = 1e-300 and 1e-307 the small-scale limit, in both engines."""
    net = sp.presets.resnet(3, act="tanh")
    for q in (1e-290, 1e-300, 1e-307):
        agree(net, sp.Inputs(q=[q, 2 * q], corr=0.5))


def _units(monkeypatch) -> list:
    """The units of each program the calls below run, in order ('true' or 'log-scaled')."""
    ran: list = []
    program = compiled._program

    def spy(key, *args):
        ran.append("true" if key[-1] else "log-scaled")
        return program(key, *args)

    monkeypatch.setattr(compiled, "_program", spy)
    monkeypatch.setattr(compiled, "_SCALED", OrderedDict())
    return ran


def test_true_units_where_every_state_stays_in_range(monkeypatch):
    """A Pre-LN net (q grows like the depth) runs once, in true units, and agrees with the
    numpy engine; its layers at depth 300 are within TRUE_RANGE."""
    ran = _units(monkeypatch)
    agree(sp.presets.preln(300, "erf", sigma_w1=sp.sweep("sigma_w1", [1.0, 2.0])), X3,
          layers=[0, 1, 150, 300])
    assert ran == ["true"]


def test_a_state_out_of_range_reruns_the_log_scaled_program(monkeypatch):
    """Where a state in true units leaves TRUE_RANGE the run is made again log-scaled, the
    same numbers as the numpy engine's, and the net goes log-scaled from then on, whatever it
    records:
    a relu resnet's q doubles per block (beyond 1e30 by layer 100); a branch whose inner ops
    scale by 1e-300 and back, forward alone (its output in range, its inner q = 1e-600
    flushed to 0 in true units: without the inner ops' guard (``Context.guard`` never
    filled) its branch was 0 and log q off by log 2 per layer). Inputs outside the range go
    log-scaled at once."""
    ran = _units(monkeypatch)
    deep = sp.presets.resnet(120)
    agree(deep, X2)
    agree(deep, X2)
    agree(deep, X2, layers=[0, 60, 120])  # (other records: the same net, known to need it)
    assert ran == ["true", "log-scaled", "log-scaled", "log-scaled"]
    ran.clear()
    inner = Repeat(Residual(Serial(Scale(1e-150), Scale(1e-150), Dense(1.0), Scale(1e150),
                                   Scale(1e150))), 3)
    agree(inner, X2, backward=False)
    assert ran == ["true", "log-scaled"]
    ran.clear()
    agree(sp.presets.preln(3), sp.Inputs(q=[1e-40, 1.0], corr=0.5))
    assert ran == ["log-scaled"]
    ran.clear()  # a residual sum whose scales put its output's factor in ls, at the last layer
    # (no later layer's guard sees it): the carried state is checked too. By hand, q_1 =
    # beta^2 q + alpha^2 q = 2e-320 q (log 2e-320 = -736.13, below the smallest normal float)
    _, b = agree(Residual(Dense(1.0), alpha=1e-160, beta=1e-160), X2)
    assert ran == ["true", "log-scaled"]
    np.testing.assert_allclose(b.log_q.isel(layer=1).values,
                               np.log(2.0) - 320 * np.log(10.0) + np.log([1.0, 2.0]), rtol=1e-14)


def test_nets_that_differ_in_their_numbers_share_one_program(monkeypatch):
    """The program takes the numbers of ``compiled.LIFTED`` fields as arguments
    (``compiled._lifted``): a loop over sigma_w traced each value anew. Values in one octave
    share one trace; 3.0, in the next, has its own, as does 1.0, which stays in the program (a
    factor of 1 folded away). Each agrees with the numpy engine. The checks the program skips
    rest on bounds over the octave, not over the value it was traced at: twelve scales by c in a
    block are bounded by 4^k (1e25 x 4^k leaves TRUE_RANGE at the ninth), so after the trace at
    c = 1.1, c = 1.9 from q = 2e23 (1.9^24 x 2e23 = 1e30, past the checked 1e25) is caught and
    rerun log-scaled; bounded by 1.1^2k the last outputs went unchecked (watched: Scale's bound
    read at the octave's lower end alone)."""
    traced = []
    trace = compiled._trace
    monkeypatch.setattr(compiled, "_trace", lambda *a, **k: traced.append(a[0]) or trace(*a, **k))
    monkeypatch.setattr(compiled, "_CACHE", OrderedDict())
    ran = _units(monkeypatch)
    for sw in (1.1, 1.5, 1.9, 1.2):
        agree(sp.presets.resnet(6, sigma_w1=sw), X2)
    assert len(traced) == 1
    agree(sp.presets.resnet(6, sigma_w1=3.0), X2)
    agree(sp.presets.resnet(6, sigma_w1=1.0), X2)
    assert len(traced) == 3 and ran == ["true"] * 6
    ran.clear()
    big = sp.Inputs(q=[1e23, 2e23], corr=0.5)
    for c, units in ((1.1, ["true"]), (1.9, ["true", "log-scaled"])):
        agree(Repeat(Serial(*[Scale(c)] * 12, RMSNorm()), 2), big, backward=False)
        assert ran == units, c
        ran.clear()


def test_what_a_review_of_the_lifted_numbers_found():
    """A hostile review of compiled._lifted: a user's sweep named lifted__0 (nothing lifted)
    and a lifted 1.5 made equal templates, whose program read one's grid as the other's
    sigma_w (log q off by ~9 where the shards' sizes met); a sweep named lifted__x raised
    int()'s ValueError; the octave of a number past 2^511 failed its op's check (its square
    overflows) or overflowed itself (1e308), and alpha = 1e-310 traced as an argument gave
    log(0) = -inf in its weight gradient (XLA flushes subnormals). A lifted number is a
    _Lifted sweep (never a user's), and numbers outside 2^-511..2^511 stay in the program."""
    x = sp.sweep("x", [0.25, 0.5])

    def net(v):
        return Serial(Dense(v), Act("relu"), Residual(Serial(Dense(v), Act("relu")), alpha=x,
                                                      beta=v))

    user, lifted = net(sp.sweep("lifted__0", [1.0, 2.0])), net(1.5)
    assert compiled._lifted(user)[0] != compiled._lifted(lifted)[0]
    for n in (user, lifted, net(sp.sweep("lifted__x", [1.0, 1.5]))):
        agree(n, X2)
    for n in (Serial(Dense(1e154), Act("relu"), Dense(1.0)), Scale(1.7e308),
              Residual(Serial(Dense(1.0), Act("relu")), alpha=1e308, beta=-1e308),
              Serial(LayerNorm(gain=1e308), Dense(1.0)),
              Residual(Serial(Dense(1.0), Act("relu")), alpha=1e-310)):
        agree(n, X2)


def test_an_inner_cotangent_out_of_range_reruns_the_log_scaled_program(monkeypatch):
    """The backward guards the cotangents inside a layer, not only the layer's: a branch whose
    last Dense is carried by its bias (sigma_w 1e-3, sigma_b 1) keeps every forward state and
    the layer's cotangents near 1, while the cotangent at that Dense's input is 1e-6 of them.
    With TRUE_RANGE narrowed to (1e-3, 1e3) that inner cotangent alone leaves it (the forward
    states the backward recomputes are not guarded again: the forward checked or bounded
    them; with no margin, so that the forward checks its states within that range too)."""
    monkeypatch.setattr(compiled, "TRUE_RANGE", (1e-3, 1e3))
    monkeypatch.setattr(compiled, "BOUND_MARGIN", 1.0)
    ran = _units(monkeypatch)
    net = Repeat(Residual(Serial(Dense(1.0), Dense(1e-3, sigma_b=1.0))), 2)
    agree(net, X2, backward=False)
    assert ran == ["true"]
    agree(net, X2)
    assert ran == ["true", "true", "log-scaled"]



def test_a_gain_out_of_range_reruns_the_log_scaled_program(monkeypatch):
    """A net without BatchNorm has its backward's gains summed along the forward, each copy's
    pull-back of a unit cotangent checked by its gain alone where no op's gain escapes its
    forward states' bounds (no bias): a LayerNorm of an input of q 2e-3 then a Scale of 30
    keeps every forward state within TRUE_RANGE narrowed to (1e-3, 1e3) (2e-3, 1, 900), while
    the block's gain is 900 / 2e-3 = 4.5e5. Left unchecked, the true-units program's numbers
    would stand; checked, the log-scaled program reruns and agrees."""
    monkeypatch.setattr(compiled, "TRUE_RANGE", (1e-3, 1e3))
    monkeypatch.setattr(compiled, "BOUND_MARGIN", 1.0)
    ran = _units(monkeypatch)
    net, small = Repeat(Serial(LayerNorm(), Scale(30.0)), 2), sp.Inputs(q=[2e-3, 3e-3], corr=0.5)
    assert compiled._diagonal(net) and not compiled._unbounded_gains(net)
    agree(net, small, backward=False)
    assert ran == ["true"]
    agree(net, small)
    assert ran == ["true", "true", "log-scaled"]


def test_gains_above_a_huge_one_are_not_rounded_by_it():
    """A review: the gains were one running sum from the lowest layer, and log G_l its last
    value less its value at l, so after a block of gain 1e6000 (20 Scales of 1e300, log gain
    2.8e4) every later gain was rounded to the ulp of 2.8e4; over 300 layers log grad_q at
    layer 1 was off by ~3e-10 (against the numpy engine's reverse pass, 1e-15). Each recorded
    layer now closes a segment of the sum, and log G_l adds the segments above l from the top."""
    net = Serial(Repeat(Serial(*[Scale(1e300)] * 20), 1),
                 Repeat(Serial(Dense(math.sqrt(2) * (1 + 1e-9)), Act("relu")), 300))
    agree(net, X2)
    agree(net, X2, layers=[0, 1, 150, 301])


def test_a_gain_of_zero_gives_the_gradients_below_it_minus_infinity():
    """A review: a Dense of sigma_w 0 (its bias carries the forward), a Scale of 0 at one grid
    point, or a residual x - x pulls the gradient back to exactly 0: log grad_q is -inf below
    it in the numpy engine, where the gains on the forward raised OverflowInTheory (a log gain
    of -inf taken for one out of range; and S_L - S_l would give -inf - (-inf) = NaN)."""
    for net in (Serial(Dense(1.0), Act("relu"), Dense(0.0, sigma_b=1.0), Act("relu"), Dense(1.0)),
                Serial(Dense(1.0), Scale(sp.sweep("c", [0.0, 2.0])), Dense(1.0, sigma_b=1.0)),
                Serial(Dense(1.0), Residual(Scale(1.0), alpha=-1.0, beta=1.0), Dense(1.0, 1.0))):
        a, _ = agree(net, X2)
        assert np.isneginf(a.log_grad_q.sel(layer=0)).any()

BOUNDED = [Dense(1.3), Dense(sp.sweep("w", [0.2, 3.0]), sigma_b=sp.sweep("b", [0.0, 0.7])),
           Scale(-0.3), Scale(sp.sweep("c", [1e-3, 2.0])), Act("relu"), Act("linear"),
           Act("erf"), Act("leaky_relu(0.2)"), Act("leaky_relu(1.5)"), Act("gelu"), Act("silu")]


@pytest.mark.parametrize("op", BOUNDED, ids=repr)
@pytest.mark.parametrize("ends", [(1e-25, 1e25), (0.5, 0.5), (3e-7, 2.0)])
def test_an_ops_diag_bound_holds_on_its_own_law(op, ends):
    """``Op.diag_bound``, which lets the compiled engine leave an op's output unchecked, bounds
    the diagonal its own numpy law gives: 200 Gaussian states of B = 3 with log-uniform
    diagonals in [lo, hi] and the ends themselves, random correlations, at every sweep value.
    Only rounding may cross it (relative 1e-12; a bound off by a factor 1 + 1e-6, or a
    bias's sigma_b^2 left out, fails)."""
    lo, hi = ends
    rng = np.random.default_rng(5)
    q = np.exp(rng.uniform(np.log(lo), np.log(hi), (200, 3)))
    q[0], q[1] = lo, hi
    C = np.stack([np.corrcoef(rng.standard_normal((3, 6))) for _ in range(200)])
    K = np.sqrt(q)[:, :, None] * C * np.sqrt(q)[:, None, :]
    s = Moments(K=K, m=np.zeros((200, 3)), ls=np.zeros((200, 3)), law=GAUSSIAN)
    dims = tuple(sp.ops.sweeps_of(op)) or ()
    ctx = Context(dims=("state",) + dims)
    expand = (slice(None),) + (None,) * len(dims)
    s = Moments(K=K[expand], m=s.m[expand], ls=s.ls[expand], law=GAUSSIAN)
    out = np.diagonal(op.theory_forward(s, ctx).K, axis1=-2, axis2=-1)
    b_lo, b_hi = op.diag_bound(lo, hi, s)
    assert out.min() >= b_lo * (1 - 1e-12) and out.max() <= b_hi * (1 + 1e-12)
    assert np.all(np.isfinite(out))


def test_an_activations_bound_rests_on_what_it_declares_of_phi():
    """An activation bounds E phi(u)^2 over q in [lo, hi] by its ends where phi^2 grows with
    |u| on each side of 0 (then E phi(sqrt(q) z)^2 grows with q), and by (lo / 8, hi) where phi
    lies between x/2 and x for x >= 0 and within |x| below (gelu, silu: they dip below 0, so
    phi^2 does not grow there): each declaration checked on phi itself (x in -40 .. 40), and the
    bounds against the closed form over q in 1e-40 .. 1e40. Declaring gelu's phi^2 growing
    fails the first check; tanh declares neither (|tanh x| < x/2 for x > 2)."""
    x = np.linspace(0, 40, 4001)
    q = np.logspace(-40, 40, 801)
    for name in ("linear", "relu", "erf", "leaky_relu", "leaky_relu(0.2)", "leaky_relu(1.5)",
                 "gelu", "silu", "gelu_tanh", "tanh", "elu"):
        act = gaussian.get_activation(name)
        if act._grows:
            for side in (x, -x):
                assert np.all(np.diff(act.fn(side) ** 2) >= 0), name
        if act._halfway:
            assert np.all((x / 2 <= act.fn(x)) & (act.fn(x) <= x)), name
            assert np.all(np.abs(act.fn(-x)) <= x), name
        if act._closed is not None and act.second_moment_bounds(1.0, 1.0) is not None:
            diag = act._closed.kernel_diag(q, namespaces.NUMERIC)
            lo, hi = np.array([act.second_moment_bounds(a, a) for a in q]).T
            assert np.all((lo <= diag * (1 + 1e-13)) & (diag <= hi * (1 + 1e-13))), name
            if act._grows:
                assert np.all(np.diff(diag) >= 0), name
    assert gaussian.get_activation("tanh").second_moment_bounds(1.0, 2.0) is None


def test_only_the_states_no_bound_covers_are_checked(monkeypatch):
    """Forward, the engine checks at run time only the op outputs it cannot bound from the
    block's input (module docstring): in a Pre-LN erf block the LayerNorm's output alone (the
    Dense and erf after it are bounded; the block's own output is checked as it is carried
    on); in a relu resnet's block none. Backward, every cotangent."""
    seen = {}

    class Spy(compiled._Guard):
        def drop(self, out):
            super().drop(out)
            seen.setdefault(self.forward, []).append(
                [type(t).__name__ for t in self.checked])

    monkeypatch.setattr(compiled, "_Guard", Spy)
    monkeypatch.setattr(compiled, "_CACHE", OrderedDict())
    monkeypatch.setattr(compiled, "_SCALED", OrderedDict())
    agree(sp.presets.preln(4, "erf"), X2, backward=False)
    assert seen[True] and all(c == ["Moments"] for c in seen[True])
    seen.clear()
    agree(sp.presets.resnet(4, "relu"), X2, backward=False)
    assert seen[True] and all(c == [] for c in seen[True])


def test_bounded_ops_that_leave_the_range_are_checked(monkeypatch):
    """A Dense whose bound leaves TRUE_RANGE is checked: a branch whose q falls to 1e-40 by two
    Dense of sigma_w 1e-10 and back reruns log-scaled, and agrees with the numpy engine (with
    the bound taken as it is, it stayed in true units; past 1e-308 the log-scaled program
    refuses a Dense too, whose factor is not moved into the log scale as a Scale's is)."""
    ran = _units(monkeypatch)
    agree(Repeat(Residual(Serial(Dense(1e-10), Dense(1e-10), Dense(1e10), Dense(1e10))), 3), X2,
          backward=False)
    assert ran == ["true", "log-scaled"]


def test_a_checked_state_whose_log_scale_is_not_0_reruns(monkeypatch):
    """A bound holds for an input of log scale 0 (its K is then its true moments): an inner
    residual sum of alpha = beta = 1e-100 (checked: no bound) carries its factor 1e-200 in its
    log scale, with K ~ 1, so the erf after it reads q ~ 1e-200, and its output, bounded from
    K, is far below TRUE_RANGE. The check of a state covers its log scale: the run goes
    log-scaled (without that, it stayed in true units)."""
    ran = _units(monkeypatch)
    inner = Residual(Dense(1.0), alpha=1e-100, beta=1e-100)
    agree(Residual(Serial(Dense(1.0), inner, Act("erf"), Dense(1.0))), X2, backward=False)
    assert ran == ["true", "log-scaled"]


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("name", sorted(sp.presets.PRESETS))
def test_every_preset(name, act):
    """Every preset, with a closed-form and a quadrature activation (sigma_b swept: one grid
    dim); the BatchNorm presets on Gaussian inputs (Post-BN past its first block is refused by
    both engines, for the numpy engine's reason: the compiled engine's own, that the first block
    hands its BatchNorm output on, told users to try engine='numpy', which refuses it too; its
    one-block net agrees)."""
    net = sp.presets.get(name)(12, act=act, sigma_b=sp.sweep("sigma_b", [0.0, 0.3]))
    if name == "postbn":  # the second BatchNorm meets a non-Gaussian sum
        for engine in ("numpy", "jax"):
            with pytest.raises(UnsupportedComposition, match=r"layer 2 Serial > \[1\] BatchNorm"):
                sp.theory(net, G3, engine=engine)
        net = sp.presets.postbn(1, act=act, sigma_b=sp.sweep("sigma_b", [0.0, 0.3]))
    agree(net, G3 if "bn" in name else X3)


def test_quadrature_activations_and_batchnorm():
    """The laws whose numeric rule depends on values (the quadrature activations, BatchNorm's
    t-integrals) run on the host inside the compiled program, the numpy functions themselves:
    agreement to rounding, forward and backward, with BatchNorm's gated relu, a FeatureAffine
    and a swept eps; at B = 2 to relu's conditioning at corr -1 (TOL_C1 per layer)."""
    for act in ("tanh", "silu", "elu(0.5)"):
        agree(sp.presets.preln(3, act=act, alpha=sp.sweep("alpha", [0.3, 1.0])), X3)
    agree(sp.presets.prebn(4, eps=sp.sweep("eps", [1e-5, 0.1])), G3)
    bn_relu = Repeat(Serial(Dense(1.4, 0.1), BatchNorm(0.01), FeatureAffine(gain=0.7),
                            Act("relu")), 4)
    agree(bn_relu, G3)
    agree(bn_relu, G2, tol=4 * TOL_C1)
    agree(sp.presets.prebn(4), G2, tol=4 * TOL_C1)


def test_unrecorded_layers_skip_only_their_weight_gradients():
    """A copy whose layers are not recorded runs its backward without the weight-gradient sink
    (a third of the time at 10^4 points), still tracking the widths: a net whose width grows
    by 1.5 per block, recorded at a few layers, in one scan and checkpointed."""
    net = Repeat(Serial(Dense(1.4, 0.1, ratio=1.5), Act("relu")), 8)
    a, _ = agree(net, X3, layers=[0, 3, 4, 8])
    assert np.all(np.isfinite(a["log_weight_grad_q"].sel(layer=[3, 4, 8]).values))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compiled, "TAPE_BYTES", 0)
        mp.setattr(compiled, "_CACHE", OrderedDict())
        agree(net, X3, layers=[0, 5])


def test_grid_split_over_threads_is_the_same_run(monkeypatch):
    """A large grid is split over threads, one per core (XLA runs a program on one core): the
    same numbers bit for bit as one thread, with a padded last shard (7 points over 2 and 3
    threads), host laws called from several threads at once, and the checkpointed scan."""
    def runs(net, inputs, shards, **kw):
        out = []
        for k in shards:
            monkeypatch.setattr(compiled, "_shards", lambda P, k=k: min(k, P))
            out.append(sp.theory(net, inputs, engine="jax", **kw))
        return out

    def same(a, b):
        return all(np.array_equal(a[v].values, b[v].values, equal_nan=True) for v in a.data_vars)

    sigma = sp.sweep("sigma_w1", np.linspace(1.0, 2.0, 7))
    one, two, three = runs(sp.presets.resnet(6, sigma_w1=sigma), X3, (1, 2, 3), layers=[0, 2, 6])
    assert same(one, two) and same(one, three) and one.sizes["sigma_w1"] == 7
    one, two = runs(sp.presets.preln(3, act="tanh", sigma_w1=sigma), X2, (1, 2))
    assert same(one, two)
    monkeypatch.setattr(compiled, "TAPE_BYTES", 0)
    one, two = runs(sp.presets.preln(6, act="erf", sigma_w1=sigma), X2, (1, 2))
    assert same(one, two)


def test_a_shard_out_of_range_reruns_the_whole_grid(monkeypatch):
    """The shards' range flags join by "and": a grid whose second shard alone leaves
    TRUE_RANGE (a linear Dense chain, q_L = s^(2L) q_0: 10^400 at s = 10) is rerun log-scaled,
    and every point has its exact log q_L = 2 L log s + log q_0 (by hand; with the flags joined
    by "or" the s = 10 shard came back inf)."""
    monkeypatch.setattr(compiled, "_shards", lambda P: min(2, P))
    ran = _units(monkeypatch)
    s, L = np.array([1.0, 1.1, 10.0, 11.0]), 200  # (1.1^400 = 4e16: in range)
    net = Repeat(Dense(sp.sweep("s", s)), L)
    _, b = agree(net, X2, backward=False)
    assert ran == ["true", "log-scaled"]
    want = 2 * L * np.log(s)[:, None] + np.log([1.0, 2.0])
    np.testing.assert_allclose(b.log_q.isel(layer=-1).transpose("s", "input").values, want,
                               rtol=1e-13)


def test_host_laws_run_once_per_layer(monkeypatch):
    """A block with host laws keeps its internal states from the forward scan for the backward
    (a host call costs ~0.1 ms beyond its work): tanh's off-diagonal kernel quadrature runs once
    per layer forward and its gradient kernel's once backward, as in the numpy engine (which
    tapes them too); recomputed, the forward kernel ran twice."""
    calls = []
    quad = gaussian.kernel_quad
    monkeypatch.setattr(gaussian, "kernel_quad",  # counted where it has entries to integrate
                        lambda f, q1, *a, **k: calls.append(np.size(q1) > 0) or quad(f, q1, *a, **k))
    net = sp.presets.preln(5, act="tanh")
    counts = []
    for engine in ("numpy", "jax"):
        sp.theory(net, X2, engine=engine)  # a first call traces (and compiles) the program
        calls.clear()
        sp.theory(net, X2, engine=engine)
        counts.append(sum(calls))
    assert counts == [2 * 5, 2 * 5]
    # the same with unrecorded layers (their backward a lax.cond branch, which must find the
    # tape too): two tanh per block, each output read by a Dense (so no call is dead code)
    net = Repeat(Serial(Dense(1.3), Act("tanh"), Dense(1.1), Act("tanh")), 6)
    counts = []
    for engine in ("numpy", "jax"):
        sp.theory(net, X2, engine=engine, layers=[0, 6])
        calls.clear()
        sp.theory(net, X2, engine=engine, layers=[0, 6])
        counts.append(sum(calls))
    assert counts == [4 * 6, 4 * 6]


def test_the_backward_stops_at_the_lowest_recorded_layer(monkeypatch):
    """Below the lowest recorded layer l the backward computes nothing recorded (grad_q at l
    needs blocks l + 1 .., the weight gradient at l block l): neither engine pulls back there
    (the compiled one's gains, summed by the forward, start there). Counted by the tanh gradient
    kernel's quadrature, one call per tanh pulled back (two per block) beside the forward's two
    per block: layers [4, 6] of 6 blocks pull back 3; it was 6. The reverse scan (a net with
    BatchNorm's) checkpointed (blocks 1 and 2 unrolled, then chunks of blocks 3-4 and 5-6), the chunk that
    holds the lowest block needed is recomputed and pulled back whole, the chunks below
    neither: layers [5, 6], forward 12, blocks 5-6 recomputed 4 and pulled back 4 (it was 32,
    every chunk). The values are those of the full run, the weight gradient's width
    normalisation (its log(n_0 / n_L)) included, with the blocks below taken by their ratios
    (a swept ratio; a sum of logs past float64's range)."""
    calls = []
    quad = gaussian.kernel_quad
    monkeypatch.setattr(gaussian, "kernel_quad",
                        lambda f, q1, *a, **k: calls.append(np.size(q1) > 0) or quad(f, q1, *a, **k))
    ratio = sp.sweep("r", [0.5, 2.0])
    net = Repeat(Serial(Dense(1.3, ratio=ratio), Act("tanh"), Dense(1.1, ratio=1.0),
                        Act("tanh"), Dense(1.0, ratio=1.0)), 6)

    def counted(engine, layers):
        sp.theory(net, X2, engine=engine, layers=layers)  # (a first call traces)
        calls.clear()
        ds = sp.theory(net, X2, engine=engine, layers=layers)
        return ds, sum(calls)

    full = sp.theory(net, X2)
    for layers, pulled in (([4, 6], 3), ([6], 1), ([0, 6], 6), ([1, 5], 6)):
        for engine in ("numpy", "jax"):
            ds, count = counted(engine, layers)
            assert count == 2 * 6 + 2 * pulled, (engine, layers, count)
            for name in ("log_grad_q", "log_weight_grad_q", "log_q"):
                np.testing.assert_allclose(ds[name], full[name].sel(layer=layers), rtol=0,
                                           atol=1e-12, err_msg=f"{engine} {layers} {name}")
    # the blocks below by a sum of logs: n_L / n_0 = 2^1100 leaves float64 (it gave inf)
    deep = Repeat(Serial(Dense(1.0, ratio=2.0), Act("relu")), 1100)
    want = sp.theory(deep, X2).log_weight_grad_q.sel(layer=[1100])
    for engine in ("numpy", "jax"):
        np.testing.assert_allclose(sp.theory(deep, X2, layers=[1100], engine=engine)
                                   .log_weight_grad_q, want, rtol=1e-12, err_msg=engine)
    monkeypatch.setattr(compiled, "TAPE_BYTES", 0)  # chunks of 2 blocks (isqrt(6)), in the
    monkeypatch.setattr(compiled, "_diagonal", lambda net: False)  # reverse scan (BatchNorm's)
    for layers, count in (([5, 6], 12 + 4 + 4), ([4, 6], 12 + 8 + 8), ([0, 6], 32)):
        ds, counts = counted("jax", layers)
        assert counts == count, (layers, counts)
        for name in ("log_grad_q", "log_weight_grad_q"):
            np.testing.assert_allclose(ds[name], full[name].sel(layer=layers), rtol=0,
                                       atol=1e-12, err_msg=f"{layers} {name}")


def test_batchnorm_limits_and_host_errors():
    """A BatchNorm output handed to the next layer is refused (its law holds the batch
    covariance and the next Act's relu gate, which the engine does not carry between layers;
    carried without the gate the values were off by 0.13); the net's last layer may end in one.
    An error inside a host law is the numpy engine's error, naming the op (was a jax runtime
    error)."""
    with pytest.raises(UnsupportedComposition, match=r"net > layer 2 BatchNorm: a layer hands"):
        sp.theory(Serial(Dense(1.0), BatchNorm(), Act("relu")), G3, engine="jax")
    with pytest.raises(UnsupportedComposition, match=r"net > layer 1 Serial: a layer hands"):
        sp.theory(Repeat(Serial(Dense(1.4), BatchNorm(0.01)), 3), G3, engine="jax")
    agree(Serial(Dense(1.0), BatchNorm()), G3)
    for engine in ("numpy", "jax"):
        with pytest.raises(ConfigError, match=r"eps=0.0 is invalid.*rank\(P S P\) >= 3"):
            sp.theory(sp.presets.prebn(3, eps=0.0), G2, engine=engine)


def test_refusals():
    @dataclasses.dataclass(frozen=True)
    class Doubling(Op):  # a user's op, its laws in numpy: not traceable
        def forward_law(self, s, ctx, record=None):
            return s.replace(ls=s.ls + np.log(2.0))

    @dataclasses.dataclass(frozen=True)
    class HalfScale(Scale):  # a subclass of a traced op, its law in numpy (was traced: a jax
        def forward_law(self, s, ctx, record=None):  # TracerArrayConversionError)
            return s.replace(ls=np.asarray(s.ls) + np.log(self.c / 2))

    try:
        with pytest.raises(UnsupportedComposition,
                           match=r"net > layer 2 Residual > Serial > Doubling: Doubling.*default "):
            sp.theory(Serial(Dense(1.0), Residual(Serial(Doubling(), Dense(1.0)))), X2,
                      engine="jax")
        net = Repeat(Residual(Serial(Dense(1.0), Act("relu"), HalfScale(1.0))), 3)
        sp.theory(net, X2, backward=False)  # (the numpy engine runs it)
        with pytest.raises(UnsupportedComposition,
                           match=r"net > layer 1 Residual > Serial > HalfScale: HalfScale is not"):
            sp.theory(net, X2, engine="jax")
    finally:  # every Op subclass registers itself (serialisation): not this test's ones
        Op.REGISTRY.pop("Doubling")
        Op.REGISTRY.pop("HalfScale")
    # a net both engines refuse: the numpy engine's reason (the compiled engine's own told
    # users to try engine='numpy', which refuses it too)
    with pytest.raises(UnsupportedComposition, match=r"layer 2 Serial > \[1\] BatchNorm: .*"
                                                     r"not jointly Gaussian"):
        sp.theory(sp.presets.postbn(3), G3, engine="jax")
    with pytest.raises(ConfigError, match="engine"):
        sp.theory(sp.presets.resnet(3), X2, engine="torch")


def test_overflow_names_the_op():
    """erf needs the true scale: past float64 the numpy engine raises at the Act, and the
    compiled one (NaN while tracing) names the same op, inside its block, with the numpy
    engine's message (its rerun of the layers up to the first non-finite one)."""
    net = Serial(Repeat(Dense(1e30), 12),  # ls = 69 per layer: e^(2 ls) > 1e308
                 Residual(Serial(Dense(1.0), Act("erf"), Dense(1.0))))
    for engine in ("numpy", "jax"):
        with pytest.raises(OverflowInTheory, match=r"layer 13 Residual > branch > \[1\] Act: the "
                                                   r"signal reaches log q = 16\d\d"):
            sp.theory(net, X2, engine=engine)
    # blocks that are Serials themselves (a Serial of them would flatten and renumber them)
    nested = Serial(Repeat(Serial(Dense(1e30), Scale(1.0)), 12), Serial(Dense(1.0), Act("erf")))
    for engine in ("numpy", "jax"):
        with pytest.raises(OverflowInTheory, match=r"net > layer 14 Act"):
            sp.theory(nested, X2, engine=engine)


def test_missing_jax_says_how_to_install(monkeypatch):
    namespaces.jax_namespace.cache_clear()
    monkeypatch.setitem(sys.modules, "jax", None)
    try:
        with pytest.raises(ImportError, match=r"pip install 'sigprop\[jax\]'"):
            sp.theory(sp.presets.resnet(2), X2, engine="jax")
    finally:
        namespaces.jax_namespace.cache_clear()


def test_tolerance_sees_a_perturbed_law(monkeypatch):
    """The check above fails when one function of the traced laws is off by 1e-9 relative
    (acos, only under the jax namespace: the relu kernels); so TOL is not too loose."""
    def off(unscaled=False):
        jax_ns = namespaces.jax_namespace(unscaled)
        return dataclasses.replace(jax_ns, acos=lambda c: jax_ns.acos(c) * (1 + 1e-9))

    monkeypatch.setattr(compiled, "jax_namespace", off)
    monkeypatch.setattr(compiled, "_CACHE", OrderedDict())  # a program traced with it is not kept
    net = sp.presets.resnet(4)
    assert worst(sp.theory(net, X2), sp.theory(net, X2, engine="jax")) > 10 * TOL


def test_forward_only(monkeypatch):
    """backward=False: the numpy engine's forward-only Dataset (to TOL), from a compiled
    program of its own; past TAPE_BYTES nothing is checkpointed where no reverse scan runs
    (no backward; a backward whose gains ride the forward), while a reverse scan (a net with
    BatchNorm's) is."""
    monkeypatch.setattr(compiled, "_CACHE", OrderedDict())
    net = sp.presets.preln(6, act="erf", alpha=sp.sweep("alpha", [0.2, 1.0]))
    _, b = agree(net, X3, backward=False, layers=[0, 2, 6])
    assert list(b.data_vars) == list(sp.schema.FORWARD)
    monkeypatch.setattr(compiled, "TAPE_BYTES", 0)
    agree(net, X3, backward=False)
    agree(net, X3)

    def chunks():  # (key: ..., chunk, backward, unscaled; layers 0..L recorded)
        return {key[-2]: key[-3] for key in compiled._CACHE if key[3] == tuple(range(7))}

    assert chunks() == {False: None, True: None}
    monkeypatch.setattr(compiled, "_CACHE", OrderedDict())
    monkeypatch.setattr(compiled, "_diagonal", lambda net: False)
    agree(net, X3)
    assert chunks()[True] is not None


def test_checkpointed_tape_recomputes_each_chunk(monkeypatch):
    """Past TAPE_BYTES the backward keeps one state per chunk of ~sqrt(L) layers and recomputes
    the rest: the same values. Depth 12 (chunks of 3: three and a tail of two after the
    unrolled first copy), depth 13 with a final norm (a second run), and recorded subsets that
    fall in a chunk, in the tail, on the input alone, and unevenly over the chunks (each chunk's
    forward records as many copies as the fullest, :func:`compiled._split`)."""
    monkeypatch.setattr(compiled, "TAPE_BYTES", 0)
    monkeypatch.setattr(compiled, "_CACHE", OrderedDict())
    assert compiled._chunk(12, 1, 2) == 3
    agree(sp.presets.resnet(12, sigma_w1=sp.sweep("sigma_w1", [1.0, 1.4, 2.0])), X3)
    agree(sp.presets.resnet(12), X2, layers=[0, 3, 7, 11])
    agree(sp.presets.resnet(12), X2, layers=[0, 2, 3, 8])  # chunks keeping 2, 0 and 1 copies
    net = sp.presets.preln(13, act="erf", final_norm=True, alpha=sp.sweep("alpha", [0.2, 1.0]))
    agree(net, X3)
    agree(net, X3, layers=[0])
    agree(net, X3, layers=[5, 13, 14])
    agree(sp.presets.prebn(12, act="relu"), G3)  # host laws: a chunk's states taped backward


def test_ops_benchmark_counts_each_direction():
    """``benchmarks/compiled_speed.py --ops`` traces the engine's own program (it calls
    ``compiled._trace``, a private function whose signature the engine may change): every row
    of its table counts some equations, for both nets: the forward alone, and more with the
    backward's gains (neither net has a BatchNorm, so the gains ride the forward)."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "compiled_speed.py"
    run = subprocess.run([sys.executable, str(script), "--ops"], capture_output=True, text=True,
                         cwd=script.parent, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines()[2:]]
    got = {(net.strip(), direction.strip()): int(n) for net, direction, n, _ in rows}
    for net in ("resnet relu", "preln erf"):
        assert got[(net, "forward")] > 0
        assert got[(net, "forward with gains")] > got[(net, "forward")]


def test_xla_ops_benchmark_runs_and_the_kernels_ops_keep_their_bits():
    """``benchmarks/xla_ops.py --slices --census`` (it calls ``compiled._trace`` too): the
    census counts fusions and operations for both nets, and the ops the closed-form kernels
    use to take an angle (atan2 of two arrays, asin, acos) and their logs and exps give the
    same bits for an element whatever the array's length (``sigprop.kernels.gaussian._angle``
    relies on it; XLA's atan does not, and the script shows it)."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "xla_ops.py"
    run = subprocess.run([sys.executable, str(script), "--slices", "--census"],
                         capture_output=True, text=True, cwd=script.parent, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in run.stdout.splitlines()
             if line.startswith("| ") and not line.startswith("| op") and "---" not in line]
    differ = {c[0]: int(c[1]) for c in cells if len(c) == 2}
    for op in ("atan2 (two arrays)", "atan2 (sigprop's, two arrays)", "acos (sigprop's)",
               "asin", "acos", "log", "exp", "sqrt"):
        assert differ[op] == 0, (op, differ)
    census = {c[0]: c for c in cells if len(c) == 5}
    for net in ("preln erf", "resnet relu"):
        assert int(census[net][1]) > 0 and float(census[net][2]) > 0, census


def test_the_compiled_engines_atan2_and_acos_are_numpys_to_two_ulp():
    """The jax namespace's atan2 (:func:`sigprop.state.ns._atan2`, arithmetic alone, so that
    it vectorises) against numpy's (glibc's) under jit: within 2 ulp on the kernels' arguments
    (|y| <= 1, 0 <= x <= 1, and y = sin t, x = cos t), within 1 ulp over y, x of any size and
    sign (where the angle is normal), and the special values: signed zeros, x = 0, NaN. Its
    acos, atan2(sqrt((1 - c)(1 + c)), c) as XLA expands acos, within 2 ulp of numpy's on [-1,
    1], c near +-1 included."""
    import jax

    rng = np.random.default_rng(3)
    n = 100_000
    t = rng.uniform(-np.pi / 2, np.pi / 2, n)
    wide = [10.0 ** rng.uniform(-300, 300, n) * rng.choice([-1, 1], n) for _ in range(2)]
    special = np.array([[0.0, 1.0], [-0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 0.0],
                        [1e-300, 1.0], [1.0, 1e-300], [1e308, 1.7e308], [1.0, -1.0],
                        [-1.0, -1.0], [0.5, -2.0], [1.0, 1.0], [-0.0, 0.0]]).T
    with compiled._x64(jax):
        f = jax.jit(namespaces.jax_namespace().atan2)
        for (y, x), ulps in (((np.sin(t), np.cos(t)), 2), ((rng.uniform(-1, 1, n),
                             rng.uniform(0, 1, n)), 2), (wide, 1), (special, 0)):
            got, want = np.asarray(f(y, x)), np.arctan2(y, x)
            normal = np.abs(want) >= np.finfo(float).tiny * 2**60  # (XLA flushes subnormals)
            assert np.all(np.abs(got - want)[normal] <= ulps * np.spacing(np.abs(want))[normal])
            assert np.array_equal(np.signbit(got), np.signbit(want))
        assert np.isnan(f(np.nan, 1.0)) and np.isnan(f(1.0, np.nan))
        c = np.concatenate([rng.uniform(-1, 1, n), 1 - 10.0 ** rng.uniform(-16, 0, 1000),
                            -1 + 10.0 ** rng.uniform(-16, 0, 1000), [1.0, -1.0, 0.0, -0.0]])
        got, want = np.asarray(jax.jit(namespaces.jax_namespace().acos)(c)), np.arccos(c)
        assert np.all(np.abs(got - want) <= 2 * np.spacing(want)) and got[-4] == 0.0


def test_batchnorm_warning_of_a_net_the_compiled_engine_would_refuse_opened():
    """The BatchNorm warning opens the net's Serials (a residual inside a block is a layer of its
    own) and reruns the theory on that: the compiled engine refuses the opened form of a
    Dense -> BatchNorm -> relu block (its BatchNorm alone in a layer), so the rerun is the numpy
    engine's, and both engines warn the same."""
    block = Residual(Serial(Dense(1.0), BatchNorm(), Act("relu"), Dense(2**0.5)), alpha=0.5)
    net = Serial(Repeat(Serial(Dense(2**0.5), BatchNorm(), Act("relu")), 2),
                 Repeat(Serial(block, block), 2))
    said = {}
    for engine in ("numpy", "jax"):
        with pytest.warns(sp.FiniteWidthWarning) as rec:
            sp.theory(net, G2, width=256, engine=engine)
        said[engine] = [str(w.message) for w in rec if "BatchNorm at batch" in str(w.message)]
    assert len(said["jax"]) == 1 and said["jax"] == said["numpy"]


PERSIST_RUN = """
import logging, sys
import jax, sigprop as sp
hits = []
class Hits(logging.Handler):
    def emit(self, record):
        hits.append("cache hit" in record.getMessage())
logger = logging.getLogger("jax._src.compiler")
logger.setLevel(logging.DEBUG)
logger.addHandler(Hits())
ds = sp.theory(sp.presets.plain(3), sp.Inputs(q=[1.0, 2.0], corr=0.5), engine="jax")
print(repr(float(ds.log_q[-1, 1])), jax.config.values["jax_compilation_cache_dir"], any(hits))
"""


def _persist_run(tmp_path, **env):
    """(log q_L of input 1, jax's cache folder, whether jax reported a hit) from a fresh process
    (jax sets up its persistent cache once per process) with these environment variables."""
    import os
    import subprocess

    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # (tiny programs)
           **env}
    out = subprocess.run([sys.executable, "-c", PERSIST_RUN], env=env, capture_output=True,
                         text=True, cwd=tmp_path, check=True).stdout.split()
    return float(out[0]), out[1], out[2] == "True"


def test_compiled_programs_are_kept_across_processes(tmp_path):
    """A net's XLA program, compiled in one process, is loaded by the next (jax's persistent
    cache in SIGPROP_JAX_CACHE), with the same values; a cache folder the user gave jax is left
    as it is; 'off' (any case, or '0') turns it off, and a folder that cannot be made leaves
    jax as it is (it warned at every program; 'OFF' made a folder of that name)."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    value, folder, hit = _persist_run(tmp_path, SIGPROP_JAX_CACHE=str(ours))
    assert folder == str(ours) and not hit and any(ours.iterdir())
    again, _, hit = _persist_run(tmp_path, SIGPROP_JAX_CACHE=str(ours))
    assert hit and again == value
    kept = sorted(p.name for p in ours.iterdir())
    _, folder, _ = _persist_run(tmp_path, SIGPROP_JAX_CACHE=str(ours),
                                JAX_COMPILATION_CACHE_DIR=str(theirs))
    assert folder == str(theirs) and any(theirs.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == kept
    for off in ("off", "OFF", "0"):
        _, folder, _ = _persist_run(tmp_path, SIGPROP_JAX_CACHE=off)
        assert folder == "None" and not (tmp_path / off).exists()
    _, folder, _ = _persist_run(tmp_path, SIGPROP_JAX_CACHE="/proc/no-such-cache")  # (can't
    assert folder == "None"  # be made: jax left as it is, no warning per program)


def test_a_users_sweep_named_like_a_lifted_number_beside_a_number_to_lift():
    """A user's sweep named lifted__0 in a net that also holds a number _lifted would lift
    (Dense(1.5)): nothing is lifted (docstring: "a name is one grid dim"), so the program's
    grid dim lifted__0 is the user's sweep alone, and each point is the numpy engine's. A
    lifted 1.5 named lifted__0 beside it read one for the other."""
    net = Serial(Dense(sp.sweep("lifted__0", [0.5, 2.5])), Act("relu"), Dense(1.5),
                 Act("relu"))
    template, lifted = compiled._lifted(net)
    assert lifted == () and template == net
    agree(net, X2)


def test_a_loop_over_sigma_b_within_an_octave_traces_once(monkeypatch):
    """LIFTED: a Dense's sigma_b is its program's argument as sigma_w is (module docstring:
    "nets that differ only in them, within an octave of each, share one program"): sigma_b =
    0.55, 0.7, 0.9 (octave [0.5, 1)) trace once, each the numpy engine's value."""
    traced = []
    trace = compiled._trace
    monkeypatch.setattr(compiled, "_trace", lambda *a, **k: traced.append(a[0]) or trace(*a, **k))
    monkeypatch.setattr(compiled, "_CACHE", OrderedDict())
    for b in (0.55, 0.7, 0.9):
        agree(Serial(Dense(1.3, sigma_b=b), Act("relu"), Dense(1.1, sigma_b=b)), X2)
    assert len(traced) == 1


def test_a_lifted_numbers_sweep_spans_its_own_octave_and_0_and_1_stay():
    """_lifted's docstring, by hand: each number becomes a sweep over the powers of 2 on either
    side of it, sign kept (1.5 -> (1, 2); 0.5, a power of 2 itself, -> (0.5, 1); -0.3 -> (-0.25,
    -0.5)), what diag_bound bounds over; 0 and 1 stay in the template (a Dense without bias;
    a residual's beta = 1, folded away)."""
    net = Serial(Dense(1.5, sigma_b=0.0), Act("relu"),
                 Residual(Serial(Dense(0.5), Act("relu"), Scale(-0.3)), alpha=0.5, beta=1.0))
    template, lifted = compiled._lifted(net)
    assert sorted(lifted) == [-0.3, 0.5, 1.5]
    sweeps = {s for op in template.walk() for s in vars(op).values()
              if isinstance(s, compiled._Lifted)}
    ends = {float(lifted[s.index]): s.values for s in sweeps}
    assert ends == {1.5: (1.0, 2.0), 0.5: (0.5, 1.0), -0.3: (-0.25, -0.5)}
    dense, _, residual = template.layers
    assert dense.sigma_b == 0.0 and residual.beta == 1.0


def _random_net(rng: np.random.Generator):
    """A random composition of the ops the gains-on-the-forward backward takes (no BatchNorm):
    Dense (bias, top-level ratio), Scale (negative), FeatureAffine (varying gain, shift), every
    closed-form activation (tanh now and then: the host quadrature), LayerNorm / RMSNorm (gain,
    eps), Residual (alpha, beta negative or 0, nested, a branch without a Dense), Repeat of a
    Serial; a sweep sometimes."""
    acts = ["relu", "erf", "leaky_relu(0.2)", "gelu", "linear", "leaky_relu(1.5)"]
    swept = [False]

    def num(*choices):
        return float(rng.choice(choices))

    def sweep_or(value, name):
        if not swept[0] and rng.random() < 0.15:
            swept[0] = True
            return sp.sweep(name, [value, 1.3 * value])
        return value

    def unit(depth, top):
        kind = rng.integers(0, 7 if depth < 2 else 5)
        if kind == 0:  # Dense, Act: a Gaussian stream into the activation
            act = "tanh" if rng.random() < 0.1 else str(rng.choice(acts))
            return Serial(Dense(sweep_or(num(0.6, 1.0, 1.4, 2.0), "w"),
                                num(0.0, 0.0, 0.3, 1.0),
                                ratio=num(1.0, 0.5, 2.0) if top else 1.0), Act(act))
        if kind == 1:
            return Scale(num(-0.7, 1.3, -2.0, 0.25))
        if kind == 2:
            g, b = num(0.8, -1.2), num(0.0, 0.3)
            return FeatureAffine(gain=g, gain_sq=2.0, shift=b, shift_sq=0.2, gain_shift=g * b + 0.05)
        if kind == 3:
            return LayerNorm(eps=num(1e-5, 0.3), gain=num(1.0, 0.5, -1.7))
        if kind == 4:
            return RMSNorm(eps=num(1e-5, 0.5))
        if kind == 5:  # a branch without a Dense: one acting on each input linearly
            return Residual(Serial(LayerNorm(gain=num(1.0, 0.4)), Scale(num(0.6, -1.1))),
                            alpha=num(1.0, -0.5), beta=num(1.0, 0.7))
        alpha, beta = num(1.0, 0.5, -0.7, 0.0), num(1.0, -0.6, 1.2)
        start = [Dense(1.0), Serial(LayerNorm(), Dense(1.2)), Serial(RMSNorm(), Dense(0.9, 0.2))]
        branch = [start[rng.integers(3)]] + [unit(depth + 1, False)
                                             for _ in range(rng.integers(0, 3))]
        return Residual(Serial(*branch), alpha=sweep_or(alpha, "alpha") if alpha else alpha,
                        beta=beta)

    blocks = []
    for _ in range(rng.integers(1, 4)):
        if rng.random() < 0.5:
            blocks.append(Repeat(Serial(*[unit(0, False) for _ in range(rng.integers(1, 3))]),
                                 int(rng.integers(1, 5))))
        else:
            blocks.append(unit(0, True))
    if rng.random() < 0.5:  # a change of width above the layers below (log width ratios)
        blocks.append(Serial(Dense(1.1, ratio=num(0.5, 2.0)), Act(str(rng.choice(acts)))))
    return Serial(*blocks)


def _random_inputs(rng):
    """B = 1..3 inputs: a random centred Gram plus, half the time, a mean (else Gaussian or
    fixed centred inputs)."""
    B = int(rng.integers(1, 4))
    A = rng.normal(size=(B, B + 1))
    centred = rng.random() < 0.5
    m = np.zeros(B) if centred else rng.uniform(-0.8, 0.8, size=B)
    K = A @ A.T / (B + 1) + np.outer(m, m)
    q = np.diag(K).copy()
    corr = np.clip(K / np.sqrt(np.outer(q, q)), -1, 1)
    np.fill_diagonal(corr, 1.0)
    return sp.Inputs(q=list(q), corr=corr.tolist(), mean=0.0 if centred else list(m),
                     law="gaussian" if centred and rng.random() < 0.5 else "fixed")


def test_random_compositions_without_batchnorm_agree_with_the_numpy_engine():
    """A composition fuzz of the backward whose gains ride the forward (no BatchNorm): random
    nets, inputs (B = 1..3, a mean), sweeps and recorded layers, the compiled engine against
    the numpy one; a net the numpy engine refuses or overflows on is refused by both."""
    rng = np.random.default_rng(20240611)
    compared = 0
    for _ in range(14):
        net, inputs = _random_net(rng), _random_inputs(rng)
        L = len(sp.ops.layers_of(net))
        pick = rng.integers(0, 5)
        layers = (None, None, [0], [L], sorted({int(l) for l in rng.integers(0, L + 1, size=2)}))[pick]
        try:
            sp.theory(net, inputs, layers=layers)
        except (UnsupportedComposition, OverflowInTheory, ConfigError) as e:
            with pytest.raises(type(e)):
                sp.theory(net, inputs, layers=layers, engine="jax")
            continue
        agree(net, inputs, layers=layers)
        compared += 1
    assert compared >= 10
