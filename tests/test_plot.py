"""sp.plot: the drawn data are the datasets' values, the bands the stated estimator's +-2 SE.

Every expected value is computed here from the datasets with numpy (not by the plotting code's
own estimators): theory lines against the theory variable, Monte Carlo points against the
mean over seeds (or the log-normal moment estimate for heavy tails), bands against
estimate +- 2 standard errors.
"""

import io
import subprocess
import sys
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection

import sigprop as sp
from sigprop.analysis import plots
from sigprop.analysis.compare import compare, stack_widths, synthetic

X0 = sp.Inputs(q=[1.0, 2.25], corr=0.5)
DEPTH = 8  # layers 0..8: less than two decades, linear axes
SEEDS = 8


@pytest.fixture(scope="module")
def nets():
    return {"Pre-LN": sp.presets.preln(depth=DEPTH, act="relu"),
            "Post-LN": sp.presets.postln(depth=DEPTH, act="relu")}


@pytest.fixture(scope="module")
def th(nets):
    return {k: sp.theory(net, X0) for k, net in nets.items()}


@pytest.fixture(scope="module")
def mc(nets):
    return {k: sp.simulate(net, X0, width=64, seeds=SEEDS, root_seed=3) for k, net in nets.items()}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def solid_lines(ax):
    return [line for line in ax.get_lines() if line.get_linestyle() == "-"]


def point_sets(ax):
    return [line for line in ax.get_lines() if line.get_marker() not in ("None", "", None)]


def band(ax, x):
    """(low, high) of the shaded band at each x (the fill_between polygon's vertices)."""
    (poly,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    v = np.concatenate([p.vertices for p in poly.get_paths()])
    lo = np.array([v[np.isclose(v[:, 0], xi), 1].min() for xi in x])
    hi = np.array([v[np.isclose(v[:, 0], xi), 1].max() for xi in x])
    return lo, hi


def test_theory_line_is_the_theory_variable(th):
    fig = sp.plot(th["Pre-LN"], var="grad_q")
    (ax,) = fig.axes
    (line,) = solid_lines(ax)
    want = th["Pre-LN"]["grad_q"].sel(input=0)  # the first input by default, named in the title
    np.testing.assert_array_equal(line.get_xdata(), np.arange(DEPTH + 1))
    np.testing.assert_array_equal(line.get_ydata(), want.values)
    assert ax.get_title() == "input=0"
    assert ax.get_xscale() == ax.get_yscale() == "linear"
    assert "grad_q" in ax.get_ylabel()


def test_a_theory_at_a_width_plots_its_corrections(nets):
    """A finite-width variable of ``sp.theory(..., width=N)`` is a schema variable too (the
    README: "draws any variable of the dataset schema"); beside Monte Carlo, which has none,
    it is refused with the list of those both have."""
    th = sp.theory(nets["Pre-LN"], X0, width=256)
    fig = sp.plot(th, var="log_q_correction")
    (line,) = solid_lines(fig.axes[0])
    np.testing.assert_array_equal(line.get_ydata(), th["log_q_correction"].sel(input=0).values)
    assert "finite-width" in fig.axes[0].get_ylabel()
    mc = sp.simulate(nets["Pre-LN"], X0, width=64, seeds=2, root_seed=3)
    with pytest.raises(sp.ConfigError, match="var='log_q_correction' is invalid"):
        sp.plot(th, mc, var="log_q_correction")


def _pair(da):
    return da.sel(input=0, input_b=1)


def test_a_theory_at_a_width_is_drawn_at_its_first_order():
    """The line of sp.theory(..., width=N) is E X at N: q (1 + c/N) and corr + a/N (the
    infinite-width line without the width; here they differ by > 1e-4). With a ``transform``
    it is E f(X) = f(x) + f'(x) (E X - x) + f''(x) Var X / 2 where the theory has Var X: the
    same line for f = identity, for f = q^2, q^2 + 2 q (E q - q) + q^2 Var log q, and for
    corr^2, corr^2 + 2 corr (E corr - corr) + Var corr. log q is drawn at E log q, log q plus
    log_q_correction; weight_grad_q with a transform at its first order (it has Var log X); a
    log companion with a transform, which has no Var of its own, at f(T_inf), labelled as
    infinite width."""
    th = sp.theory(sp.presets.plain(3, "tanh", shape="dense_act"), X0, width=64)
    for var, want in (("q", th.q * (1 + th.q_rel_correction)),
                      ("corr", th.corr + th.corr_correction)):
        (line,) = solid_lines(sp.plot(th, var=var).axes[0])
        want = want.sel(input=0) if var == "q" else want.sel(input=0, input_b=1)
        np.testing.assert_allclose(line.get_ydata(), want.values, rtol=1e-12)
        assert np.max(np.abs(line.get_ydata() - (th[var].sel(input=0) if var == "q" else
                                                  th[var].sel(input=0, input_b=1)).values)) > 1e-4
    q, t, v = (th[k].sel(input=0).values for k in ("q", "q_rel_correction", "var_log_q"))
    for f, want in ((lambda q: q, q * (1 + t)), (lambda q: q**2, q**2 * (1 + 2 * t + v))):
        (line,) = solid_lines(sp.plot(th, var="q", transform=f).axes[0])
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-9)  # (central differences)
    c, a, v = (_pair(th[k]).values for k in ("corr", "corr_correction", "var_corr"))
    (line,) = solid_lines(sp.plot(th, var="corr", transform=lambda c: c**2).axes[0])
    np.testing.assert_allclose(line.get_ydata(), c**2 + 2 * c * a + v, rtol=1e-9)
    (line,) = solid_lines(sp.plot(th, var="log_q").axes[0])
    np.testing.assert_allclose(line.get_ydata(), (th.log_q + th.log_q_correction).sel(input=0),
                               rtol=1e-12)
    w, c = (th[k].sel(input=0).values for k in ("weight_grad_q", "weight_grad_q_rel_correction"))
    (line,) = solid_lines(sp.plot(th, var="weight_grad_q", transform=lambda x: 2 * x).axes[0])
    np.testing.assert_allclose(line.get_ydata(), 2 * w * (1 + c), rtol=1e-9)
    fig = sp.plot(th, var="log_weight_grad_q", transform=lambda x: 2 * x)
    (line,) = solid_lines(fig.axes[0])
    np.testing.assert_array_equal(line.get_ydata(), 2 * th.log_weight_grad_q.sel(input=0).values)
    assert "theory (infinite width)" in [t.get_text() for t in fig.legends[0].get_texts()]
    labels = [t.get_text() for t in sp.plot(th, var="q").legends[0].get_texts()]
    assert "theory (first order at N=64)" in labels, labels


def test_a_theory_at_a_width_is_drawn_at_the_monte_carlos_width_and_says_where_it_has_no_rule():
    """As sp.compare, a theory from sp.theory(..., width=256) beside Monte Carlo at N = 64 is
    drawn at N = 64 (its term times 256/64) and labelled so. A net whose corrections are NaN
    from its first BatchNorm on (no finite-width rule) is labelled first order only where it
    has one; its gradient, NaN at every layer, as infinite width; compare lists only the
    variables it corrected somewhere."""
    net = sp.presets.plain(3, "tanh", shape="dense_act")
    th = sp.theory(net, X0, width=256)
    mc = sp.simulate(net, X0, width=64, seeds=8, root_seed=3, backend="numpy")
    fig = sp.plot(th, mc, var="q")
    (line,) = solid_lines(fig.axes[0])
    want = (th.q * (1 + th.q_rel_correction * 256 / 64)).sel(input=0).values
    np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
    assert "theory (first order at N=64)" in [t.get_text() for t in fig.legends[0].get_texts()]
    x0 = sp.Inputs(q=[1.0, 2.0, 0.5], corr=0.5, law="gaussian")
    bn = sp.presets.prebn(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sp.FiniteWidthWarning)
        th = sp.theory(bn, x0, width=16)
    mc = sp.simulate(bn, x0, width=16, seeds=8, root_seed=3, backend="numpy")
    for var, label in (("q", ("theory (first order at N=16; infinite width where it has no "
                              "finite-width rule)")),
                       ("grad_q", "theory (infinite width)")):
        labels = [t.get_text() for t in sp.plot(th, mc, var=var).legends[0].get_texts()]
        assert label in labels, labels
    note = compare(th, mc).attrs["finite_width"]
    assert "for q, mean, var, corr;" in note, note


def test_a_spread_is_drawn_against_the_runs_variance_across_seeds():
    """var="var_corr" with a run: the line is the theory's V/N at the run's width (its V/256
    times 256/64), the points the variance of corr across seeds, the band the variances whose
    sp.compare z is within +-2 (the line is inside it exactly where |z| <= 2; above 0, where
    s^2 +- 2 se went below); Var log var's points from the run's log companion log_var; a
    transform, an estimator, fewer than 16 seeds and a spread the theory has
    no value of are refused (they drew, and the last an empty figure)."""
    from sigprop.analysis.compare import spread

    net = sp.presets.preln(3)
    th = sp.theory(net, X0, width=256)
    mc = sp.simulate(net, X0, width=64, seeds=40, root_seed=3, backend="numpy")
    for var, samples in (("var_corr", _pair(mc.corr)), ("var_log_var", mc.log_var.sel(input=0))):
        fig = sp.plot(th, mc, var=var)
        (line,) = solid_lines(fig.axes[0])
        want = th[var] * 4
        want = _pair(want) if var == "var_corr" else want.sel(input=0)
        np.testing.assert_allclose(line.get_ydata(), want.values, rtol=1e-12)
        (points,) = point_sets(fig.axes[0])
        est, _ = spread(samples)
        np.testing.assert_allclose(points.get_ydata(), est.values, rtol=1e-12)
        lo, hi = band(fig.axes[0], points.get_xdata())
        z = compare(th, mc, variables=[var])[var].sel(stat="z")
        z = (_pair(z) if var == "var_corr" else z.sel(input=0)).values
        inside = (lo <= line.get_ydata()) & (line.get_ydata() <= hi)
        np.testing.assert_array_equal(inside[1:], np.abs(z[1:]) <= 2)  # (layer 0: the rounding
        assert (lo[1:] > 0).all()  # floor's own z)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "theory (leading order at N=64)" in labels and any("spread" in t for t in labels)
    for kw, field in (({"transform": np.sqrt}, "transform"), ({"estimator": "median"},
                                                                "estimator")):
        with pytest.raises(sp.ConfigError, match=field):
            sp.plot(th, mc, var="var_corr", **kw)
    with pytest.raises(sp.ConfigError, match="seeds=15 is invalid: allowed >= 16"):
        sp.plot(th, mc.isel(seed=slice(15)), var="var_corr")
    plain = sp.presets.plain(2)
    with pytest.raises(sp.ConfigError, match="no residual branch"):
        sp.plot(sp.theory(plain, X0, width=64), sp.simulate(plain, X0, width=64, seeds=16),
                var="var_log_branch_q")


def test_points_are_the_monte_carlo_mean_and_the_band_two_standard_errors(th, mc):
    fig = sp.plot(th["Pre-LN"], mc["Pre-LN"], var="corr", estimator="mean")
    ax = fig.axes[0]
    (points,) = point_sets(ax)
    x = points.get_xdata()
    np.testing.assert_array_equal(x, np.arange(DEPTH + 1))  # 9 layers < max_points: all drawn
    samples = mc["Pre-LN"]["corr"].sel(input=0, input_b=1).transpose("layer", "seed").values
    mean = samples.mean(axis=1)
    se = samples.std(axis=1, ddof=1) / np.sqrt(SEEDS)
    np.testing.assert_allclose(points.get_ydata(), mean, rtol=1e-12)
    lo, hi = band(ax, x)
    np.testing.assert_allclose(lo, mean - 2 * se, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hi, mean + 2 * se, rtol=1e-9, atol=1e-12)
    assert ax.get_title() == "input=0, input_b=1"  # the first pair off the diagonal
    assert "mean $\\pm$2 SE" in " ".join(t.get_text() for t in fig.legends[0].get_texts())


def test_heavy_tails_use_log_moments(th):
    """Synthetic log-normal samples (sd of log 0.6 > HEAVY_LOG_SD = 0.25): auto picks the
    log-normal estimator, points exp(ybar + s^2/2), band exp(. +- 2 sqrt(s^2/S + s^4/(2(S-1))))."""
    seeds = 16
    sim = synthetic(th["Pre-LN"], seeds=seeds, widths=(64,), noise=0.3, root_seed=5)
    fig = sp.plot(th["Pre-LN"], sim, var="q")
    ax = fig.axes[0]
    (points,) = point_sets(ax)
    y = np.log(sim["q"].isel(width=0).sel(input=0).transpose("layer", "seed").values)
    s2 = y.var(axis=1, ddof=1)
    est = y.mean(axis=1) + s2 / 2
    se = np.sqrt(s2 / seeds + s2**2 / (2 * (seeds - 1)))
    np.testing.assert_allclose(points.get_ydata(), np.exp(est), rtol=1e-10)
    lo, hi = band(ax, points.get_xdata())
    np.testing.assert_allclose(lo, np.exp(est - 2 * se), rtol=1e-10)
    np.testing.assert_allclose(hi, np.exp(est + 2 * se), rtol=1e-10)
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "lognormal" in legend and "N=64" in legend and f"{seeds} seeds" in legend


def test_log_axes_where_the_data_span_decades():
    deep = sp.theory(sp.presets.resnet(depth=128, act="relu", alpha="1"), X0)  # q doubles
    ax = sp.plot(deep, var="q").axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    (line,) = solid_lines(ax)
    assert line.get_xdata()[0] == 1  # layer 0 cannot sit on a log axis
    np.testing.assert_array_equal(line.get_ydata(), deep["q"].sel(input=0).values[1:])
    # corr stays within [0.5, 1]: linear y on the same log depth axis
    ax = sp.plot(deep, var="corr").axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    ax = sp.plot(deep, var="q", xscale="linear", yscale="linear").axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "linear"


def test_monte_carlo_points_are_thinned_along_depth():
    net = sp.presets.preln(depth=200, act="relu")
    mc = sp.simulate(net, X0, width=16, seeds=2, root_seed=0)
    ax = sp.plot(sp.theory(net, X0), mc, var="var", max_points=10).axes[0]
    (points,) = point_sets(ax)
    x = points.get_xdata()
    assert 2 < len(x) <= 10 and x[0] == 1 and x[-1] == 200
    assert np.all(np.diff(np.log(x)) > 0)  # increasing, spaced on the log axis


def test_hue_col_row_make_lines_and_panels(th):
    three = {**th, "ResNet": sp.theory(sp.presets.resnet(depth=DEPTH, act="relu"), X0)}
    fig = sp.plot(three, var="q")  # the mapping's labels become dim 'arch', the one dim left: hue
    (ax,) = fig.axes
    assert [line.get_color() for line in solid_lines(ax)] == list(plots.PALETTE[:3])
    for line, ds in zip(solid_lines(ax), three.values()):
        np.testing.assert_array_equal(line.get_ydata(), ds["q"].sel(input=0).values)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:3] == list(three)
    fig = sp.plot(th, var="q", hue="arch", col="input")
    assert len(fig.axes) == 2 and all(len(solid_lines(a)) == 2 for a in fig.axes)
    fig = sp.plot(th, var="q", row="arch", col="input")
    assert len(fig.axes) == 4 and all(len(solid_lines(a)) == 1 for a in fig.axes)
    ax = fig.axes[3]  # row Post-LN, column input=1
    assert ax.get_title() == "Post-LN, input=1"
    np.testing.assert_array_equal(solid_lines(ax)[0].get_ydata(),
                                  th["Post-LN"]["q"].sel(input=1).values)


def test_monte_carlo_only_for_some_hues(th, mc):
    """An arch without Monte Carlo gets its line only; the others their points."""
    fig = sp.plot(th, {"Post-LN": mc["Post-LN"]}, var="q")
    ax = fig.axes[0]
    assert len(solid_lines(ax)) == 2 and len(point_sets(ax)) == 1


def test_width_as_hue_shares_one_theory_line(th):
    sims = []
    for width in (32, 128):
        s = synthetic(th["Pre-LN"], seeds=4, widths=(width,), noise=0.05).isel(width=0)
        sims.append(s.assign_attrs(width=width))
    fig = sp.plot(th["Pre-LN"], stack_widths(sims), var="q", hue="width")
    ax = fig.axes[0]
    assert len(solid_lines(ax)) == 1 and len(point_sets(ax)) == 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "width=32" in labels and "width=128" in labels


def test_draws_into_a_given_axes(th):
    fig, ax = plt.subplots()
    assert sp.plot(th["Pre-LN"], var="q", ax=ax) is fig
    assert len(solid_lines(ax)) == 1 and ax.get_legend() is not None


@pytest.mark.parametrize("kwargs, names", [
    ({"var": "variance"}, ["q", "log_q", "corr", "grad_q"]),
    ({"x": "depth"}, ["layer", "input"]),
    ({"hue": "alpha"}, ["layer", "input"]),
    ({"col": "layer"}, ["distinct dims"]),
    ({"sel": {"input": 7}}, ["[0, 1]"]),
    ({"sel": {"width": 1}}, ["sel", "['input']"]),
    ({"estimator": "max"}, ["lognormal", "median"]),
    ({"yscale": "symlog"}, ["linear", "log"]),
    # a hostile review's (numpy's, xarray's or matplotlib's own errors before)
    ({"sel": 3}, ["sel=3", "a mapping"]),
    ({"x": None}, ["x=None", "the name of a dim"]),
    ({"ax": 3}, ["ax='int'", "Axes"]),
    ({"yscale": {"value": "log", "nope": 1}}, ["keywords that scale takes", "nope"]),
    ({"transform": lambda a: a.isel(layer=0)}, ["keeps its input's shape"]),
])
def test_bad_arguments_name_what_is_allowed(th, kwargs, names):
    with pytest.raises(sp.ConfigError) as err:
        sp.plot(th["Pre-LN"], **kwargs)
    for name in names:
        assert name in str(err.value)


def test_bad_datasets_are_config_errors(th, mc):
    with pytest.raises(sp.ConfigError, match="seed"):
        sp.plot(mc["Pre-LN"])  # Monte Carlo passed as theory
    with pytest.raises(sp.ConfigError, match="seed"):
        sp.plot(th["Pre-LN"], th["Post-LN"])  # theory passed as Monte Carlo
    with pytest.raises(sp.ConfigError, match="at least one"):
        sp.plot(None)
    with pytest.raises(sp.ConfigError, match="arch"):  # two archs, hue taken by input
        sp.plot(th, var="q", hue="input")
    with pytest.raises(sp.ConfigError, match=r"mc dims=\{'seed': 0\}"):  # (IndexErrors before)
        sp.plot(th["Pre-LN"], mc["Pre-LN"].isel(seed=[]))
    with pytest.raises(sp.ConfigError, match=r"theory dims=\{'layer': 0\}"):
        sp.plot(th["Pre-LN"].isel(layer=[]))


def test_an_infinite_transform_is_reported_as_the_transforms(th, mc):
    """log(1 - corr) at corr = 1 (the diagonal panel of col='input' at input_b=0) is the
    transform's inf, not an overflow of corr (which has no log companion): said so, with no
    numpy RuntimeWarning from the entries not drawn."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        sp.plot(th["Pre-LN"], mc["Pre-LN"], var="corr", transform=lambda c: np.log(1 - c),
                col="input", sel={"input_b": 0})
    texts = [str(w.message) for w in said]
    assert any("the transform of corr is infinite" in t for t in texts), texts
    assert not [t for t in texts if "log_corr" in t or "overflowed" in t], texts
    assert not [w for w in said if issubclass(w.category, RuntimeWarning)], texts


def test_a_transform_of_bare_arrays_works_and_its_nans_and_errors_are_said(th, mc):
    """np.where returns a bare array: drawn as the DataArray it came from; a NaN the transform
    makes is said (the estimates leave those samples out); math.log fails on arrays: a
    ConfigError, not numpy's TypeError from inside plot."""
    import math

    pre, run = th["Pre-LN"], mc["Pre-LN"]
    fig = sp.plot(pre, run, var="q", transform=lambda q: np.where(q > 0, 2 * q, 0.0))
    (line,) = solid_lines(fig.axes[0])
    np.testing.assert_allclose(line.get_ydata(), 2 * pre.q.sel(input=0).values)
    with pytest.warns(UserWarning, match="the transform of q is NaN at .* Monte Carlo samples"):
        sp.plot(pre, run, var="q", transform=lambda q: q.where(q < float(q.median())))
    with pytest.raises(sp.ConfigError, match="math.log"):
        sp.plot(pre, run, var="q", transform=math.log)


def test_corr_by_input_draws_each_input_with_another():
    """col="input" for corr fixed input_b for all panels, so input 0's panel drew its own corr,
    1; each input is now drawn with the first other input, named in its title."""
    x3 = sp.Inputs(q=[1.0, 2.0, 0.5], corr=[[1, 0.3, 0.2], [0.3, 1, 0.6], [0.2, 0.6, 1]])
    for width in (None, 64):  # (at a width: each pair's first order)
        th = sp.theory(sp.presets.preln(3), x3, width=width)
        fig = sp.plot(th, var="corr", col="input")
        want = th.corr + (0 if width is None else th.corr_correction)
        for ax, (a, b) in zip(fig.axes, [(0, 1), (1, 0), (2, 0)]):
            assert ax.get_title() == f"input={a}, input_b={b}"
            (line,) = solid_lines(ax)
            np.testing.assert_allclose(line.get_ydata(), want.sel(input=a, input_b=b).values,
                                       rtol=1e-12)


def test_overflow_is_reported_not_drawn():
    deep = sp.theory(sp.presets.resnet(depth=1100, act="relu", alpha="1"), X0)  # 2^1100 > 1e308
    assert np.isinf(deep["q"]).any() and np.isfinite(deep["log_q"]).all()
    with pytest.warns(UserWarning, match="overflowed"):
        fig = sp.plot(deep, var="q")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow inside matplotlib's transforms either
        fig.savefig(io.BytesIO(), format="png")
    y = solid_lines(fig.axes[0])[0].get_ydata()
    assert np.isfinite(y[~np.isnan(y)]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sp.plot(deep, var="log_q")  # the log companion draws without a warning


def test_exported_lazily():
    assert "plot" in sp.__all__
    from sigprop.analysis.plot import plot
    assert sp.plot is plot
    code = "import sys, sigprop; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # import sigprop does not pay for matplotlib


def test_sweep_labels_match_within_rounding():
    """sel and hue labels of a float sweep match within rounding (0.1 + 0.2 is 0.3 here)."""
    grid = sp.theory(sp.presets.preln(DEPTH, alpha=sp.sweep("alpha", [0.1, 0.3])), X0)
    ax = sp.plot(grid, var="q", sel={"alpha": 0.1 + 0.2}).axes[0]
    (line,) = solid_lines(ax)
    np.testing.assert_array_equal(line.get_ydata(), grid["q"].sel(alpha=0.3, input=0).values)
    assert ax.get_title() == "alpha=0.3, input=0"
    ax = sp.plot(grid, var="q", x="alpha").axes[0]  # at the last layer, named in the title
    np.testing.assert_array_equal(solid_lines(ax)[0].get_ydata(),
                                  grid["q"].sel(layer=DEPTH, input=0).values)
    assert ax.get_title() == f"input=0, layer={DEPTH}"


# -- the options the paper's figures draw with (one plotting path) -------------------------------
def test_transform_is_applied_to_the_theory_and_to_each_seed(th, mc):
    """mean -> mean^2: the line is the theory's mean squared, the points the average over seeds
    of each seed's squared mean (not the square of the average: the transform comes first)."""
    fig = sp.plot(th["Pre-LN"], mc["Pre-LN"], var="mean", transform=lambda m: m**2,
                  estimator="mean", ylabel="squared mean")
    ax = fig.axes[0]
    (line,) = solid_lines(ax)
    np.testing.assert_array_equal(line.get_ydata(),
                                  th["Pre-LN"]["mean"].sel(input=0).values ** 2)
    (points,) = point_sets(ax)
    samples = mc["Pre-LN"]["mean"].sel(input=0).transpose("layer", "seed").values ** 2
    np.testing.assert_allclose(points.get_ydata(), samples.mean(axis=1), rtol=1e-12)
    se = samples.std(axis=1, ddof=1) / np.sqrt(SEEDS)
    lo, hi = band(ax, points.get_xdata())
    np.testing.assert_allclose(hi - lo, 4 * se, rtol=1e-9, atol=1e-15)
    assert ax.get_ylabel() == "squared mean"
    with pytest.raises(sp.ConfigError, match="transform"):
        sp.plot(th["Pre-LN"], transform="square")


def test_nets_keep_their_colours_other_labels_the_palette(th):
    """A label naming a net of plots.NET_STYLES takes that net's colour, line style and marker
    in every figure; other labels the palette in order."""
    deep = sp.theory(sp.presets.deepnorm(depth=DEPTH, act="relu"), X0)
    fig = sp.plot({"DeepNorm": deep, "mine": th["Pre-LN"]}, var="q")
    lines = [line for line in fig.axes[0].get_lines()]
    assert [line.get_label() for line in lines] == ["DeepNorm", "mine"]
    assert lines[0].get_color() == plots.NET_STYLES["DeepNorm"][0]
    assert lines[0].get_linestyle() == "--"  # dashed: DeepNorm's theory coincides with Post-LN's
    assert lines[1].get_color() == plots.PALETTE[1] and lines[1].get_linestyle() == "-"


def test_scales_labels_legend_and_titles_are_options(th):
    _, ax = plt.subplots()
    sp.plot(th, var="q", ax=ax, xscale={"value": "log", "base": 2},
            yscale={"value": "symlog", "linthresh": 1e-3}, xlabel="block", ylabel="q_l",
            theory_kw={"marker": "."}, legend=False, titles=False)
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert ax.get_yscale() == "symlog" and ax.yaxis.get_transform().linthresh == 1e-3
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("block", "q_l", "")
    assert ax.get_legend() is None
    assert all(line.get_marker() == "." for line in ax.get_lines())
    assert min(line.get_xdata().min() for line in ax.get_lines()) == 1  # layer 0: not on log x
    with pytest.raises(sp.ConfigError, match="symlog"):  # names matplotlib's scales
        sp.plot(th, var="q", xscale={"value": "logg"})


def test_a_hue_without_theory_labels_its_monte_carlo_points(th, mc):
    """An arch with no law (theory all NaN) draws no line; its points carry its label."""
    lawless = th["Post-LN"].copy(deep=True)
    lawless["q"] = lawless["q"] * np.nan
    _, ax = plt.subplots()
    sp.plot({"Pre-LN": th["Pre-LN"], "Post-LN": lawless}, mc, var="q", ax=ax, legend=False)
    assert [line.get_label() for line in solid_lines(ax)] == ["Pre-LN"]
    labels = [p.get_label() for p in point_sets(ax)]
    assert "Post-LN (Monte Carlo only)" in labels


def test_the_legend_names_a_hue_drawn_in_later_panels_only(th):
    """A per-arch sweep pads an arch with NaN where it was not run: Post-LN exists only in the
    second column here, and the figure's legend still names it (it was read off panel 0)."""
    pad = th["Post-LN"].copy(deep=True)
    pad["q"] = pad["q"].where(pad["input"] == 1)  # input 0 (the first column): not computed
    fig = sp.plot({"Pre-LN": th["Pre-LN"], "Post-LN": pad}, var="q", hue="arch", col="input")
    assert len(solid_lines(fig.axes[0])) == 1  # Post-LN has no line in the first panel
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["Pre-LN", "Post-LN"]


def test_a_run_of_another_net_is_not_drawn_beside_a_theory():
    """sp.plot drew a Post-LN run beside a Pre-LN theory, as sp.compare refuses to compare
    them; a run of the theory's first blocks is drawn (as compare's prefix=True)."""
    th = sp.theory(sp.presets.preln(3), X0)
    other = sp.simulate(sp.presets.postln(3), X0, width=16, seeds=4, backend="numpy")
    with pytest.raises(sp.ConfigError, match="architecture differs"):
        sp.plot(th, other, var="q")
    shallow = sp.simulate(sp.presets.preln(2), X0, width=16, seeds=4, backend="numpy")
    assert len(point_sets(sp.plot(th, shallow, var="q").axes[0])) == 1


def test_labelled_runs_are_checked_label_by_label():
    """{label: Dataset} mappings are stacked along arch, which drops their differing configs:
    a Post-LN run under the Pre-LN label (and the reverse) was drawn without a word (a review's
    find). Each label's pair is now checked; the right pairing is drawn; a plot cut to one
    label checks that label's pair alone."""
    pre, post = sp.presets.preln(3), sp.presets.postln(3)
    th = {"Pre-LN": sp.theory(pre, X0), "Post-LN": sp.theory(post, X0)}
    runs = {"Pre-LN": sp.simulate(pre, X0, width=16, seeds=4, backend="numpy"),
            "Post-LN": sp.simulate(post, X0, width=16, seeds=4, backend="numpy")}
    sp.plot(th, runs, var="q", hue="arch")
    swapped = {"Pre-LN": runs["Post-LN"], "Post-LN": runs["Pre-LN"]}
    with pytest.raises(sp.ConfigError, match="architecture differs"):
        sp.plot(th, swapped, var="q", hue="arch")
    with pytest.raises(sp.ConfigError, match="architecture differs"):
        sp.plot(th["Pre-LN"], swapped, var="q", hue="arch")  # (one theory, a mapping of runs)
    half = {"Pre-LN": runs["Pre-LN"], "Post-LN": runs["Pre-LN"]}
    sp.plot(th, half, var="q", sel={"arch": "Pre-LN"})
    # a run under a label the theory mapping lacks was drawn as a hue of its own, unchecked
    with pytest.raises(sp.ConfigError, match="mc labels"):
        sp.plot(th, {"Pre-LN": runs["Pre-LN"], "Peri-LN": runs["Post-LN"]}, var="q", hue="arch")
    sp.plot(th, {"Pre-LN": runs["Pre-LN"]}, var="q", hue="arch")  # (a theory alone: drawn)


def test_what_plot_checks_is_what_it_draws():
    """The experiment check reads plot's own sel (a swept theory drawn at the run's alpha was
    refused), and a run deeper than the theory is drawn on the theory's layers, as before."""
    alphas = [0.25, 1.0]
    th = sp.theory(sp.presets.resnet(3, alpha=sp.sweep("alpha", alphas)), X0)
    run = sp.simulate(sp.presets.resnet(3, alpha=1.0), X0, width=16, seeds=4, backend="numpy")
    sp.plot(th, run, var="q", sel={"alpha": 1.0, "input": 0})
    with pytest.raises(sp.ConfigError, match="architecture differs"):
        sp.plot(th, run, var="q", hue="alpha")  # (the alpha = 1 run under every hue)
    deep = sp.simulate(sp.presets.preln(5), X0, width=16, seeds=4, backend="numpy")
    sp.plot(sp.theory(sp.presets.preln(3), X0), deep, var="q")


def test_monte_carlo_points_and_seeds_lost_to_nan_are_named():
    """A referee: NaN Monte Carlo points (every seed NaN where the theory is finite) and NaN
    seeds (the estimators skip them) were left out without a word, the caption naming every
    seed. Both are now warned (and a paper figure's caption says them: plots.curves)."""
    net = sp.presets.preln(6)
    x0 = sp.Inputs(q=[1.0, 2.0], corr=0.5)
    th, mc = sp.theory(net, x0), sp.simulate(net, x0, 64, 8)
    for name in ("q", "log_q"):
        mc[name].loc[{"layer": [4, 5, 6]}] = np.nan
        mc[name].loc[{"layer": [1], "seed": [0, 1]}] = np.nan
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        sp.plot(th, mc, var="q")
    text = [str(w.message) for w in said]
    assert any("no estimate at 3 points" in t for t in text), text
    assert any("at 1 points" in t and "2 of 8 seeds NaN" in t for t in text), text
    with warnings.catch_warnings(record=True) as said:  # (weight_grad_q at layer 0: NaN in
        warnings.simplefilter("always")  # both, no point lost)
        sp.plot(th, sp.simulate(net, x0, 64, 8), var="weight_grad_q")
    assert not [w for w in said if "Monte Carlo:" in str(w.message)]


def test_a_long_default_ylabel_is_wrapped_inside_the_figure():
    """The default y label, '<long name> (<var>)', ran past the figure's top and bottom for 22
    variables of a theory at a width (weight_grad_q_rel_correction's 681 px on a 405 px
    figure); it is wrapped to the panel. A label the caller gives is left as given."""
    th = sp.theory(sp.presets.preln(2), sp.Inputs(q=1.0, n=1), width=64)
    for var in ("weight_grad_q_rel_correction", "var_log_weight_grad_q", "weight_grad_q"):
        fig = sp.plot(th, var=var)
        fig.canvas.draw()
        label = fig.axes[0].yaxis.label
        box = label.get_window_extent(fig.canvas.get_renderer())
        assert 0 <= box.y0 and box.y1 <= fig.bbox.height, (var, box, fig.bbox)
        assert " ".join(label.get_text().split()).endswith(f"({var})")
        plt.close(fig)
    fig = sp.plot(th, var="weight_grad_q", ylabel="a label of my own, as long as it may be")
    assert fig.axes[0].get_ylabel() == "a label of my own, as long as it may be"
    plt.close(fig)


def test_a_batchnorm_theorys_log_grad_q_is_drawn_at_its_typical_value():
    """A theory at a width draws log_grad_q at E log grad_q there; for a BatchNorm net, whose
    gradient has no 1/N term, that is typical_log_grad_q (it drew the infinite-width log
    grad_q, 17.2 against a typical 4.8 at layer 0 of prebn(4) at N = 64)."""
    inputs = sp.Inputs(q=[1.0, 2.25], corr=0.5, law="gaussian")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sp.FiniteWidthWarning)
        th = sp.theory(sp.presets.prebn(3, act="relu"), inputs, width=64)
    fig = sp.plot(th, var="log_grad_q")
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(),
                               th.typical_log_grad_q.sel(input=0).values, rtol=1e-12)
    plt.close(fig)
    # beside Monte Carlo at several widths (the width a DataArray: int() of it raised)
    runs = stack_widths([sp.simulate(sp.presets.prebn(3, act="relu"), inputs, width=w, seeds=4)
                         for w in (32, 64)])
    plt.close(sp.plot(th, runs, var="log_grad_q", hue="width"))
