"""The paper builds with pdflatex + BibTeX and its log is clean (issue 19): no overfull box, no
missing glyph, no undefined reference or citation, no multiply defined label.

Fast variant (default suite): the figures, claims table and numbers are drawn by the real figure
modules from tiny data (the theory of every sim at a tiny depth, synthetic Monte Carlo: see
tests/test_figures.py), and the derivations' LaTeX is reused from paper/generated when
``sigprop reproduce`` has written it (else a one-line stand-in per derivation script). Slow
variant: the paper as ``sigprop reproduce`` left it (paper/figures and paper/generated), skipped when absent.
Both are skipped without latexmk/pdflatex/bibtex.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sigprop.analysis.plots import FigureData
from sigprop.figures import FIGURES, claims, module, render

PAPER = Path(__file__).resolve().parent.parent / "paper"
TOOLS = ("latexmk", "pdflatex", "bibtex")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason="latexmk, pdflatex and bibtex are needed")

# What a clean log must not contain (pdflatex's own wording).
PROBLEMS = {
    "overfull box": re.compile(r"^Overfull \\[hv]box", re.MULTILINE),
    "missing character": re.compile(r"Missing character", re.MULTILINE),
    "undefined reference": re.compile(r"Reference `[^']*' on page \d+ undefined", re.MULTILINE),
    "undefined citation": re.compile(r"Citation `[^']*' on page \d+ undefined", re.MULTILINE),
    "multiply defined label": re.compile(r"multiply defined", re.MULTILINE),
    "missing generated file": re.compile(r"not generated \(run", re.MULTILINE),
}


def problems(log: str) -> dict[str, list[str]]:
    """{kind: offending log lines} for each kind of :data:`PROBLEMS` found in ``log``."""
    out = {}
    for kind, pattern in PROBLEMS.items():
        hits = [log[m.start():log.find("\n", m.start())] for m in pattern.finditer(log)]
        if hits:
            out[kind] = hits
    return out


def build(paper: Path) -> str:
    """latexmk -pdf in ``paper``; returns main.log (the build's own failure is an assertion)."""
    run = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error",
                          "main.tex"], cwd=paper, capture_output=True, text=True, timeout=300,
                         check=False)
    log = (paper / "main.log").read_text(errors="replace")
    assert run.returncode == 0, run.stdout[-3000:] + log[-3000:]
    # the PDF's own text: a placeholder for a missing file would show here, not in the log
    text = subprocess.run(["pdftotext", "main.pdf", "-"], cwd=paper, capture_output=True, check=False,
                          text=True).stdout if shutil.which("pdftotext") else ""
    return log + "\n" + text


def sources(dst: Path) -> Path:
    """The hand-written sources of the paper (no generated file) copied to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(PAPER / "main.tex", dst)
    shutil.copy(PAPER / "references.bib", dst)
    shutil.copytree(PAPER / "sections", dst / "sections")
    return dst


@pytest.fixture(scope="module")
def tiny_paper(tmp_path_factory):
    """The paper with figures, claims and numbers from tiny data (see the module docstring)."""
    from test_figures import make_tiny_data

    data = make_tiny_data()
    paper = sources(tmp_path_factory.mktemp("paper"))
    figures = paper / "figures"
    generated = paper / "generated"
    generated.mkdir()
    # one entry per derivations/<name>.py, as reproduce writes it; a record is copied where
    # reproduce has generated it, else (a fresh clone) a one-line stand-in, as the figures are
    # drawn from tiny data: the layout is under test here, the derivations in the slow variant
    names = sorted(p.stem for p in (PAPER.parent / "derivations").glob("[!_]*.py"))
    for name in names:
        records = list((PAPER / "generated").glob(f"{name}.*"))
        for record in records:
            shutil.copy(record, generated)
        if not records:
            (generated / f"{name}.tex").write_text("Stand-in for a tiny build.\n")
    for name in FIGURES:
        d = data[module(name).SIM]
        render(name, FigureData(d["theory"], d["montecarlo"], generated), figures)
    claims.write_table(claims.audit(data), figures / "claims_table.tex")
    claims.write_numbers(data, figures / "numbers.tex")
    (figures / "derivations_list.tex").write_text(claims.derivation_list(names, generated))
    return paper


def test_paper_from_tiny_data_builds_clean(tiny_paper):
    assert problems(build(tiny_paper)) == {}


@pytest.mark.slow
def test_reproduced_paper_builds_clean(tmp_path):
    """The paper as ``sigprop reproduce`` wrote it (its figures and generated equations)."""
    if not (PAPER / "figures" / "numbers.tex").is_file():
        pytest.skip("run sigprop reproduce first")
    paper = sources(tmp_path / "paper")
    shutil.copytree(PAPER / "figures", paper / "figures")
    shutil.copytree(PAPER / "generated", paper / "generated")
    assert problems(build(paper)) == {}


@pytest.mark.parametrize(("line", "kind"), [
    (r"see Fig.~\ref{fig:nowhere}.", "undefined reference"),
    (r"as shown by \citet{nobody1999}.", "undefined citation"),
    (r"\mbox{" + "x" * 400 + "}", "overfull box"),
    (r'{\usefont{OT1}{cmr}{m}{n}\char"FF}', "missing character"),  # no glyph in that slot
])
def test_a_planted_fault_is_caught(tmp_path, line, kind):
    """Each kind of fault, planted in a minimal document, is reported by :func:`problems`."""
    (tmp_path / "references.bib").write_text(
        "@article{a2000,author={A, B},title={T},journal={J},year={2000}}\n")
    (tmp_path / "main.tex").write_text(
        "\\documentclass{article}\\usepackage[T1]{fontenc}\\usepackage{natbib}"
        "\\tracinglostchars=1\n"
        "\\begin{document}\\citet{a2000}.\n" + line + "\n"
        "\\bibliographystyle{plainnat}\\bibliography{references}\\end{document}\n")
    subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "main.tex"], cwd=tmp_path, check=False,
                   capture_output=True, timeout=120)
    found = problems((tmp_path / "main.log").read_text(errors="replace"))
    assert kind in found, found
