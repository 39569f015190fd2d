"""The documentation is built and tested: mkdocs --strict, the schema page against
sigprop.schema and real datasets, the tutorial notebook executed, the README's API lines true."""

import html
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

import sigprop as sp
from sigprop import schema
from sigprop.analysis.compare import print_table, stack_widths, summary
from sigprop.analysis.plot import plot

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "tutorial.ipynb"
TUTORIAL_BUDGET_S = 60  # the notebook's promise to a laptop CPU (about 15 s measured here)


def _gen_schema():
    spec = importlib.util.spec_from_file_location("gen_schema", DOCS / "gen_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``mkdocs build --strict`` into a temporary folder: any warning fails the build (not
    ``--quiet``: it hides the warnings from strict mode's count, and the build passes)."""
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                          "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
                         check=False, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    assert "WARNING" not in run.stderr, run.stderr
    return out


def _words(text: str) -> str:
    """The words and numbers of a text, in order (markup, quotes and symbols dropped)."""
    return " ".join(re.findall(r"[A-Za-z0-9]+", text))


def _blocks(text: str, lang: str) -> list[str]:
    """The fenced code blocks of a Markdown text in language ``lang``, in order."""
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.DOTALL)


def _page_words(page: Path) -> str:
    return _words(html.unescape(re.sub(r"<[^>]+>", " ", page.read_text())))


@pytest.mark.parametrize("obj", [
    sp.theory, sp.simulate, sp.compare, plot, sp.Inputs, sp.sweep, sp.Sweep, sp.save, sp.load,
    sp.Dense, sp.Act, sp.LayerNorm, sp.RMSNorm, sp.BatchNorm, sp.Scale, sp.Residual, sp.Serial,
    sp.Repeat, sp.presets.preln, sp.presets.postln, sp.presets.deepnorm, sp.ConfigError,
    sp.Op, summary, print_table, stack_widths,
], ids=lambda o: o.__name__)
def test_api_reference_shows_each_docstring(site, obj):
    first_line = re.sub(r":\w+:`~?", "`", obj.__doc__.strip().splitlines()[0])  # (the roles
    # are shown as code: test_api_reference_shows_signatures_not_roles)
    assert _words(first_line) in _page_words(site / "api" / "index.html"), \
        f"{obj.__name__}: its docstring is not in the API page"


def test_api_reference_shows_signatures_not_roles(site):
    """A constructor's arguments are on the page (merge_init_into_class), and the docstrings'
    Sphinx roles are rendered as code (docs/hooks.py), not left as ':func:' before it."""
    page = (site / "api" / "index.html").read_text()
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())
    assert "Dense( sigma_w=1.0, sigma_b=0.0, ratio=1.0" in text
    assert "Inputs(q=1.0, corr=0.0, mean=0.0, n=None" in text
    assert not re.search(r":(func|mod|class|data|meth|attr|exc|obj):", text)
    assert "__getattr__" not in text


def test_every_page_is_built(site):
    for page in ("index", "guide", "api", "schema", "architecture"):
        path = site / page / "index.html" if page != "index" else site / "index.html"
        assert path.is_file(), page
    assert (site / "tutorial.ipynb").is_file()  # linked from the guide and the index


def test_schema_table_is_generated_from_sigprop_schema():
    gen = _gen_schema()
    text = (DOCS / "schema.md").read_text()
    assert gen.render(text) == text, "docs/schema.md is stale: run python docs/gen_schema.py"


def _documented_attrs() -> dict[str, set]:
    """{attribute: who carries it} from the attributes table of docs/schema.md ('; ' between
    carriers)."""
    section = (DOCS / "schema.md").read_text().split("## Dataset attributes", 1)[1]
    rows = re.findall(r"^\| `([A-Za-z_]+)` \| ([^|]+) \|", section, flags=re.MULTILINE)
    return {name: {c.strip() for c in who.split(";")} for name, who in rows}


def test_schema_attributes_are_those_datasets_carry(tmp_path):
    """Both ways: every attribute a dataset carries is documented for its producer, and every
    documented one is there."""
    from sigprop.pipeline.config import Sim
    from sigprop.pipeline.runs import run_montecarlo, run_theory

    doc = _documented_attrs()

    def documented(*who):
        return {name for name, carriers in doc.items() if carriers & {"every dataset", *who}}

    net, x0 = sp.presets.preln(depth=2), sp.Inputs(q=[1.0, 2.0], corr=0.5)
    th, mc = sp.theory(net, x0), sp.simulate(net, x0, width=8, seeds=2)
    assert set(th.attrs) == documented()
    assert set(sp.theory(net, x0, width=64).attrs) == documented("a theory at a width")
    assert set(mc.attrs) == documented("Monte Carlo", "`sp.simulate`")
    saved = sp.load(sp.save(th, tmp_path / "th.nc"))
    assert set(saved.attrs) - set(th.attrs) == documented("a saved file") - documented()
    toml = tmp_path / "tiny.toml"
    toml.write_text('description = "tiny"\n[[arch]]\npreset = "preln"\n'
                    "[profiles.quick]\ndepth = 2\nwidths = [8]\nseeds = 2\n"
                    "[profiles.paper]\ndepth = 2\n")
    sim = Sim.load(toml)
    assert set(run_theory(sim, "quick").attrs) == documented("the pipeline",
                                                             "the pipeline's theory")
    assert set(run_montecarlo(sim, "quick", backend="numpy").attrs) == documented(
        "Monte Carlo", "the pipeline", "the pipeline's Monte Carlo")


def test_tutorial_is_stored_without_outputs():
    nb = nbformat.read(TUTORIAL, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_tutorial_runs(tmp_path):
    """Executed by a Jupyter kernel, as a reader would: no error, every figure displayed,
    within its time budget."""
    from nbclient import NotebookClient

    nb = nbformat.read(TUTORIAL, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=TUTORIAL_BUDGET_S, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - start
    assert seconds < 2 * TUTORIAL_BUDGET_S, f"{seconds:.0f} s"  # 2x: a loaded shared machine
    plots = [c for c in nb.cells if c.cell_type == "code" and "sp.plot(" in c.source]
    assert plots
    for cell in plots:
        kinds = [k for o in cell.outputs for k in o.get("data", {})]
        assert "image/png" in kinds, f"no figure shown by: {cell.source}"
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs)
    assert "Pre-LN" in printed and "Post-LN" in printed


def _readme_api() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Ten lines of API", 1)[1]
    return _blocks(section, "python")[0]


def test_readme_same_law_comment_is_true():
    """The README says the hand-built net has the same law as the preset (not that the trees
    are equal): the theory of both agrees exactly."""
    lines = _readme_api().splitlines()
    net_line = next(line for line in lines if line.startswith("net = sp.Repeat("))
    assert "same law as sp.presets.preln(depth=256" in net_line
    namespace = {}
    exec("\n".join(lines[:3]), namespace)  # noqa: S102 (the README's import and block, as written)
    block = namespace["block"]
    x0 = sp.Inputs(q=[1.0, 2.25], corr=0.5)
    by_hand, preset = sp.Repeat(block, 256), sp.presets.preln(depth=256, act="relu")
    assert by_hand != preset
    a, b = sp.theory(by_hand, x0), sp.theory(preset, x0)
    for name in schema.NAMES:
        np.testing.assert_array_equal(a[name].values, b[name].values)


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """The README's API lines, its plot snippet and (where torch is installed: the optional
    extra) its PyTorch example, as written (about 30 s)."""
    import importlib.util

    text = (ROOT / "README.md").read_text()
    blocks = _blocks(text, "python")
    torch_blocks = [b for b in blocks if "import torch" in b]
    assert len(torch_blocks) == 1
    if importlib.util.find_spec("torch") is None:
        blocks.remove(torch_blocks[0])
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(block, namespace)  # noqa: S102 (the README's code, as written)
    assert (tmp_path / "corr.pdf").is_file()


def test_guide_python_runs(tmp_path, monkeypatch):
    """The guide's Python, in order, up to the command-line section (which needs its files)."""
    before_cli = (DOCS / "guide.md").read_text().split("## The command line", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in _blocks(before_cli, "python"):
        exec(block, namespace)  # noqa: S102 (the guide's code, as written)
    assert (tmp_path / "grad_q.pdf").is_file() and (tmp_path / "th.nc").is_file()


@pytest.mark.slow
def test_guide_command_line_walkthrough(tmp_path, monkeypatch):
    """A newcomer's path: the guide's TOML saved as sims/mine.toml, its sigprop commands run,
    then its Python draws the result (about 40 s: three CLI start-ups)."""
    text = (DOCS / "guide.md").read_text().split("## The command line", 1)[1]
    (tmp_path / "sims").mkdir()
    (tmp_path / "sims" / "mine.toml").write_text(_blocks(text, "toml")[0])
    sigprop = Path(sys.executable).with_name("sigprop")
    for line in _blocks(text, "sh")[0].splitlines():
        args = line.split("#", 1)[0].split()
        run = subprocess.run([str(sigprop), *args[1:]], cwd=tmp_path, check=False,
                             capture_output=True, text=True)
        assert run.returncode == 0, f"{line}\n{run.stdout}\n{run.stderr}"
    monkeypatch.chdir(tmp_path)
    exec(_blocks(text, "python")[0], {"sp": sp})  # noqa: S102 (the guide's code, as written)
    assert (tmp_path / "grad_q.pdf").is_file()


@pytest.mark.slow
def test_guide_own_experiment_and_its_figure(tmp_path, monkeypatch):
    """A newcomer's path, as the guide writes it: its TOML with its [[figure]] saved as
    sims/mine.toml, its `sigprop reproduce` line run from a subfolder -> the figure (about
    25 s: the guide's quick profile, Monte Carlo of 2 archs x 3 alphas)."""
    from typer.testing import CliRunner

    from sigprop.pipeline.cli import app

    cli = (DOCS / "guide.md").read_text().split("## The command line", 1)[1]
    own = cli.split("## Your own experiment and its figure", 1)[1]
    (tmp_path / "sims").mkdir()
    (tmp_path / "sims" / "mine.toml").write_text(_blocks(cli, "toml")[0] + _blocks(own, "toml")[0])
    (tmp_path / "notes").mkdir()
    monkeypatch.chdir(tmp_path / "notes")  # the project root is found from a subfolder
    line, = _blocks(own, "sh")[0].strip().splitlines()
    args = line.split("#", 1)[0].split()
    assert args[:2] == ["sigprop", "reproduce"]
    r = CliRunner().invoke(app, [*args[1:], "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "paper" / "figures" / "mine_grad_q.pdf").read_bytes().startswith(b"%PDF")
