"""The paper's prose asserts no number that a run does not write (issue 12, item 5).

A decimal literal (``0.99``), an ``\\approx`` or ``=`` followed by a number with a decimal point
or a power of ten, anywhere in paper/sections/*.tex outside comments, citations, references and
labels, must be a macro of the generated numbers file (figures/numbers.tex) instead.
"""

import re
from pathlib import Path

import pytest

SECTIONS = sorted((Path(__file__).resolve().parent.parent / "paper" / "sections").glob("*.tex"))
SKIP = re.compile(r"(?<!\\)%.*$|\\(?:cite\w*|ref|label|eqref|texttt|input)\{[^}]*\}")
TYPED = re.compile(r"\d+\.\d+|\\approx\s*\d|\d\s*\\times\s*10\^|\d+\s*--\s*\d+\s*\\times")


def typed_numbers(text: str) -> list[str]:
    """Lines of ``text`` that carry a typed number (see the module docstring)."""
    return [line for line in text.splitlines() if TYPED.search(SKIP.sub("", line))]


@pytest.mark.parametrize("path", SECTIONS, ids=[p.name for p in SECTIONS])
def test_sections_have_no_typed_numbers(path):
    assert typed_numbers(path.read_text()) == []


@pytest.mark.parametrize("line", [r"converges to $\log G_0=0.99$ slowly",
                                  r"the fit gives $A\approx 2\text{--}3\times10^3$",
                                  r"a factor of 1.42 at $B=6$"])
def test_a_planted_number_is_caught(line):
    assert typed_numbers(line) == [line]


def test_comments_and_citations_are_not_numbers():
    assert typed_numbers(r"see \cite{yang2019v2.1} % 0.99 in an old draft") == []
    assert typed_numbers(r"$L=\num{MeanShiftDepth}$ and $x+\alpha F(x)$") == []


def test_a_mean_is_printed_to_the_decimal_of_its_standard_error():
    """Two significant digits of the SE, the mean to the same decimal (27 +- 0.239 read as if
    the mean were known to the unit)."""
    from sigprop.figures.claims import mean_and_error

    assert mean_and_error(26.950676, 0.239159) == ("26.95", "0.24")
    assert mean_and_error(10.9511955, 0.0575718) == ("10.951", "0.058")
    assert mean_and_error(1234.5, 56.0) == ("1234", "56")
