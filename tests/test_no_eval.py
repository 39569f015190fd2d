"""Stored symbolic results are read back without running code (no sympify of data)."""

import json

import pytest
import sympy

import sigprop as sp
from sigprop.figures import correlation
from sigprop.symbolic.derivation import expr_from_srepr

L, ALPHA = sympy.Symbol("l", positive=True), sympy.Symbol("alpha")
LAWS = [2 * sympy.sqrt(2) / (3 * sympy.pi * L**2), ALPHA**2 / sympy.log(L) ** 2,
        sympy.Float("0.25") * L ** sympy.Rational(-3, 2) + sympy.E, 1 - sympy.Function("f")(1 - L),
        sympy.erf(L) * sympy.exp(-L) + sympy.Abs(ALPHA) - sympy.oo]


@pytest.mark.parametrize("expr", LAWS, ids=str)
def test_srepr_round_trip(expr):
    assert expr_from_srepr(sympy.srepr(expr)) == expr


def _record(tmp_path, srepr, text):
    eq = {"label": "preln_law", "lhs": {"str": "1 - c_l"}, "rhs": {"str": text, "srepr": srepr}}
    path = tmp_path / "planted.json"
    path.write_text(json.dumps({"name": "planted", "equations": [eq]}))
    return path


@pytest.mark.parametrize("attack", [
    "__import__('os').system('touch {marker}')",
    "Symbol('x').__class__.__init__.__globals__['os'].system('touch {marker}')",
    "Function('system')(Symbol('touch {marker}'))",
    "Add(Integer(1), lambda: __import__('os').system('touch {marker}'))",
    "Pow(Integer(10), Integer(10000000))",  # no code, but sympy would evaluate it eagerly
])
def test_planted_malicious_json_runs_no_code(tmp_path, attack):
    marker = tmp_path / "pwned"
    code = attack.format(marker=marker)
    _record(tmp_path, code, code)
    with pytest.raises(sp.ConfigError, match="planted.json"):
        correlation.asymptotes(tmp_path)
    assert not marker.exists()


def test_the_printed_form_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    law = LAWS[0]
    _record(tmp_path, sympy.srepr(law), f"__import__('os').system('touch {marker}')")
    assert correlation.asymptotes(tmp_path) == {"preln": law}
    assert not marker.exists()
