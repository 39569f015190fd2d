"""Each figure module draws on tiny data (theory + synthetic Monte Carlo) and writes files."""

import json

import pytest

from sigprop.analysis.compare import synthetic
from sigprop.analysis.plots import FigureData, latex_escape
from sigprop.figures import FIGURES, claims, module, render
from sigprop.pipeline.config import Sim
from sigprop.pipeline.runs import run_theory

TINY = {  # sims/<name>.toml shrunk: depth and grids small enough for a fast test
    "phase": {"depth": 4, "sweeps": {"sigma_w1": [0.5, 1.0, 1.5], "alpha": [0.1, 1.0]}},
    "norms": {"depth": 3, "batch_sizes": [2, 4]},
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Theory of every shipped sim at a tiny depth, with synthetic Monte Carlo."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "sims"
    out = {}
    for name in sorted({module(f).SIM for f in FIGURES}):
        sim = Sim.load(root / f"{name}.toml")
        prof = sim.spec.profiles["quick"]
        changes = {"depth": 6, "mc_depth": None, **TINY.get(name, {})}
        spec = sim.spec.model_copy(update={"profiles": {
            **sim.spec.profiles, "quick": prof.model_copy(update=changes)}})
        th = run_theory(Sim(spec, name), "quick")
        mc = synthetic(th, seeds=4, widths=prof.widths, noise=0.05) if prof.montecarlo else None
        out[name] = {"theory": th, "montecarlo": mc}
    return out


CASES = [(f, True) for f in FIGURES] + [("variance", False), ("finite_width", False)]


@pytest.mark.parametrize(("name", "with_mc"), CASES,
                         ids=[f"{f}-{'mc' if m else 'theory-only'}" for f, m in CASES])
def test_figure_writes_nonempty_files(tiny_data, tmp_path, name, with_mc):
    d = tiny_data[module(name).SIM]
    data = FigureData(d["theory"], d["montecarlo"] if with_mc else None, tmp_path / "generated")
    paths = render(name, data, tmp_path / "figures")
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0, p
    assert paths[0].read_bytes().startswith(b"%PDF")
    caption = paths[2].read_text()
    assert caption.strip()
    if d["montecarlo"] is not None and not with_mc:
        assert "theory lines only" in caption
    if name == "correlation":  # no generated equations here
        assert "asymptote lines are omitted" in caption
    if name == "norms":
        assert "No infinite-width theory for Post-BN" in caption


def test_correlation_asymptote_from_generated_json(tiny_data, tmp_path):
    gen = tmp_path / "generated"
    gen.mkdir()
    law = {"label": "plain_law", "lhs": {"str": "1 - c_l"}, "rhs": {"str": "9*pi**2/(2*l**2)",
           "srepr": "Mul(Rational(9, 2), Pow(pi, Integer(2)), Pow(Symbol('l'), Integer(-2)))"}}
    (gen / "corr.json").write_text(json.dumps({"name": "corr", "equations": [law]}))
    data = FigureData(tiny_data["correlation"]["theory"], None, gen)
    render("correlation", data, tmp_path / "figures")
    assert any(n.startswith("Dashed") for n in data.notes)


def test_finite_width_exact_law_matches_leading_order():
    from sigprop.figures.finite_width import per_block

    mean, var = per_block(4096)
    assert mean * 4096 == pytest.approx(-3.5, rel=0.01)
    assert var * 4096 == pytest.approx(7.0, rel=0.01)


def test_claims_table_is_built_from_results(tiny_data, tmp_path):
    rows = claims.audit(tiny_data)
    verdicts = {r.verdict for r in rows}
    assert len(rows) >= 10 and "False (definition)" in verdicts
    path = claims.write_table(rows, tmp_path / "claims_table.tex")
    text = path.read_text()
    assert text.count(r"\\ \midrule") == len(rows) and "longtable" in text


def test_latex_escape_keeps_math():
    assert latex_escape("a_b 50% $x_1^2$") == r"a\_b 50\% $x_1^2$"


def _verdict(data, start):
    return next(r.verdict for r in claims.audit(data) if r.claim.startswith(start))


def _scaled(data, sim, var, arch_prefix, factor):
    """A copy of ``data`` with ``var`` of the arches named ``arch_prefix...`` scaled beyond layer 0."""
    th = data[sim]["theory"].copy(deep=True)
    archs = [a for a in th["arch"].values if str(a).startswith(arch_prefix)]
    th[var].loc[{"arch": archs}] = th[var].sel(arch=archs).where(th["layer"] == 0,
                                                                 th[var].sel(arch=archs) * factor)
    return {**data, sim: {**data[sim], "theory": th}}


def test_claims_verdicts_flip_with_the_data(tiny_data):
    """Each numeric verdict is computed: perturbing the data across its threshold flips it."""
    const = "LayerNorm keeps the layer outputs at zero mean and constant"
    assert _verdict(tiny_data, const) == "False for Pre-LN"
    first = tiny_data["placement"]["theory"]["var"].sel(input=0).isel(layer=0)
    flat = tiny_data["placement"]["theory"].copy(deep=True)
    flat["var"] = flat["var"] * 0 + first  # every layer at its input variance: constant
    assert _verdict({**tiny_data, "placement": {"theory": flat}}, const) == "Supported"
    mean = "LayerNorm keeps the mean of the activations near zero."
    assert _verdict(tiny_data, mean) == "False for the stream"
    assert _verdict(_scaled(tiny_data, "meanshift", "mean", "Pre-LN", 0.0), mean) == "Supported"


def test_numbers_file_has_a_macro_per_number(tiny_data, tmp_path):
    text = claims.write_numbers(tiny_data, tmp_path / "numbers.tex").read_text()
    for name in ("PreLNVarL", "MeanShiftMuSqOverVar", "MeanShiftLogGzero", "MeanShiftDepth"):
        assert rf"\newcommand{{\{name}}}" in text
    assert "nan" not in text
