"""sigprop.pipeline.bench: runs end to end on a tiny size and writes its own markdown section.

No timing is asserted (timings belong to benchmarks/RESULTS.md, not to unit tests)."""

from sigprop.pipeline import bench


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Other\n\nkeep me\n")
    bench.write_section(path, "Monte Carlo x", "first")
    bench.write_section(path, "Monte Carlo x", "second")
    text = path.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    assert text.count("## Monte Carlo x") == 1


def test_bench_main_quick(tmp_path):
    out = tmp_path / "RESULTS.md"
    md = bench.main(widths=(64,), batch=(2,), depth=2, seeds=1, out=str(out), quick=True,
                    backend="numpy")
    row = [line for line in md.splitlines() if line.startswith("| 64 | 2 |")]
    assert len(row) == 1 and "widest N (conditional)" in md
    assert "## Monte Carlo bench (numpy, sigprop bench)" in out.read_text()


def test_bench_main_takes_a_command_line(tmp_path):
    # `sigprop bench ARGS` passes its arguments as one list of strings
    md = bench.main(["--widths", "32", "--batch", "2", "--depth", "1", "--seeds", "1", "--quick",
                     "--out", ""])
    assert any(line.startswith("| 32 | 2 |") for line in md.splitlines())


def test_bench_writes_no_file_unless_asked(tmp_path, monkeypatch):
    """``sigprop bench`` in a checkout replaced the tracked benchmarks/RESULTS.md's section (a
    review's find); by default it now prints alone (``make bench`` passes --out)."""
    monkeypatch.chdir(tmp_path)
    bench.main(["--widths", "32", "--batch", "2", "--depth", "1", "--seeds", "1", "--quick",
                "--backend", "numpy"])
    assert not any(tmp_path.rglob("*.md"))


def test_bench_help_lists_its_options():
    from typer.testing import CliRunner

    from sigprop.pipeline.cli import app

    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    for option in ("--widths", "--batch", "--depth", "--seeds", "--backend", "--out", "--quick"):
        assert option in result.output
