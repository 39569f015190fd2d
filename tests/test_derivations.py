"""Every script of derivations/ derives, verifies and writes its LaTeX + JSON record.

The default run is each script's quick mode (closed-form activations, short iterations);
``-m slow`` runs every activation and the long iterations (10^4 - 10^6 blocks). A failing
check is named in the assertion message.
"""

import json

import pytest

from sigprop import symbolic as S

NAMES = S.derivation_names()


def _run(name, tmp_path, slow):
    d = S.run_one(name, tmp_path, slow=slow, quick=not slow)
    assert d.verified, S.summary(d)
    rec = json.loads((tmp_path / f"{name}.json").read_text())
    assert rec["verified"] and rec["equations"], rec
    tex = (tmp_path / f"{name}.tex").read_text()
    assert r"\begin{align}" in tex and r"\newcommand" not in tex
    return d


def test_every_result_has_a_script():
    assert {"preln_q_linear", "preln_grad_telescoping", "postln_q_constant",
            "postln_grad_factor", "resnet_growth", "alpha_scaling_limits", "deepnorm_limits",
            "corr_asymptotics", "edge_of_chaos"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_derivation_fast(name, tmp_path):
    _run(name, tmp_path, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_derivation_slow(name, tmp_path):
    _run(name, tmp_path, slow=True)


def test_run_derivations_entry_point(tmp_path):
    out = S.run_derivations(["postln_q_constant"], out_dir=tmp_path, quick=True)
    assert [d.name for d in out] == ["postln_q_constant"] and out[0].verified
    assert (tmp_path / "postln_q_constant.tex").exists()
