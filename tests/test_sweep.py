"""Sweeps on dask.distributed writing one zarr store: bit-identity with the single-process runs,
chunk-size independence, a worker killed mid-task, a client killed and resumed, a task raising.

Every comparison is exact (``assert_identical``: values, dims, coordinates and attributes, bar
the creation time): a sweep redoes the same engine calls, so it must give the same bits
(theory grid chunks through the quadrature included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import xarray as xr

pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

from sigprop.data import load, save
from sigprop.errors import ConfigError
from sigprop.pipeline.config import Sim, SimConfigError, SimSpec
from sigprop.pipeline.runs import run_montecarlo, run_theory
from sigprop.pipeline.sweep import (
    SweepFailed,
    SweepIncomplete,
    _compute,
    _placed,
    plan_montecarlo,
    region_of,
    sweep_load,
    sweep_run,
    task_key,
    tasks_of,
)
from sigprop.pipeline.sweep import (
    _markers as finished_tasks,
)

ROOT = Path(__file__).resolve().parent.parent
# Two architectures (tanh: the quadrature kernels; relu: closed forms), two batch sizes (the
# input dim padded with NaN for B = 2), two sweep dims, two widths.
TINY = """
description = "sweep test"
root_seed = 7
[[arch]]
label = "Pre-LN tanh"
preset = "preln"
act = "tanh"
[[arch]]
label = "Post-LN relu"
preset = "postln"
act = "relu"
[inputs]
q = 1.0
corr = 0.5
[sweeps]
sigma_w1 = [0.5, 1.0, 1.5]
alpha = [0.1, 1.0]
[profiles.quick]
depth = {depth}
batch_sizes = [2, 3]
widths = [8, 16]
seeds = 5
[profiles.paper]
depth = 4
"""


# For the fault tests: one batch size, 2 archs x 2 x 2 grid points (x seeds tasks).
SMALL = TINY.replace("batch_sizes = [2, 3]", "batch_sizes = [2]").replace("[0.5, 1.0, 1.5]",
                                                                           "[0.5, 1.0]")


def write_sim(tmp_path, depth=4, text=TINY) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text.replace("{depth}", str(depth)))
    return path


def assert_same(sweep: xr.Dataset, single: xr.Dataset):
    """Bit-identical: every value, dim order, coordinate and attribute but the creation time
    (and the history line, which starts with it)."""
    a, b = sweep.copy(), single.copy()
    for ds in (a, b):
        ds.attrs.pop("created_at")
        ds.attrs.pop("history", None)
    xr.testing.assert_identical(a, b)
    for name in b.variables:
        assert a[name].dtype == b[name].dtype and a[name].dims == b[name].dims, name


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes (not threads), shared by the module's tests."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


# -- bit-identity with the single-process runs ------------------------------------------------
def test_theory_sweep_on_a_cluster_is_the_single_process_dataset(tmp_path, client):
    sim = Sim.load(write_sim(tmp_path))
    store = tmp_path / "tiny.zarr"
    report = sweep_run(sim, store, client=client, montecarlo=False)
    assert report.total == {"theory": 4} and report.computed == {"theory": 4}
    ds = sweep_load(store, "theory")
    assert_same(ds, run_theory(sim, "quick"))
    nc = save(ds, tmp_path / "tiny.theory.nc")  # to netCDF and back: nothing lost
    back = load(nc)
    back.attrs.pop("checksum", None)
    xr.testing.assert_identical(back, ds)


def test_montecarlo_sweep_on_a_cluster_is_the_single_process_dataset(tmp_path, client):
    sim = Sim.load(write_sim(tmp_path))
    opts = {"theory": False, "widths": [8], "seeds": 3}
    report = sweep_run(sim, tmp_path / "a.zarr", client=client, seed_chunk=2, **opts)
    assert report.total == {"montecarlo": 2 * 2 * 6 * 1 * 2}  # arch batch grid width seeds
    single = run_montecarlo(sim, "quick", widths=[8], seeds=3)
    assert_same(sweep_load(tmp_path / "a.zarr", "montecarlo"), single)
    # other seed chunks, run here (no dask): the same bits
    sweep_run(sim, tmp_path / "b.zarr", seed_chunk=1, **opts)
    assert_same(sweep_load(tmp_path / "b.zarr", "montecarlo"), single)


def test_theory_grid_chunks(tmp_path):
    """Any grid chunk gives the same bits, for the closed-form kernels (relu) and the
    quadrature ones (tanh, gelu_tanh, silu) alike: the quadrature sums its nodes in a fixed order per
    grid point (kernels/quadrature.py, ``_node_sum``), whatever other points share the chunk."""
    text = TINY.replace('[[arch]]\nlabel = "Post-LN relu"', "".join(
        f'[[arch]]\nlabel = "Pre-LN {act}"\npreset = "preln"\nact = "{act}"\n'
        for act in ("gelu_tanh", "silu")) + '[[arch]]\nlabel = "Post-LN relu"')
    sim = Sim.load(write_sim(tmp_path, text=text))
    single = run_theory(sim, "quick")
    assert single.sizes["arch"] == 4
    for chunk in (1, 2):
        sweep_run(sim, tmp_path / f"g{chunk}.zarr", grid_chunk=chunk, montecarlo=False)
        assert_same(sweep_load(tmp_path / f"g{chunk}.zarr", "theory"), single)


# -- faults -----------------------------------------------------------------------------------
def test_worker_killed_mid_task_reruns_its_task(tmp_path, client):
    sim = Sim.load(write_sim(tmp_path, depth=48, text=SMALL))
    store = tmp_path / "k.zarr"
    result = {}
    runner = threading.Thread(target=lambda: result.update(report=sweep_run(
        sim, store, client=client, theory=False, widths=[16], seeds=3, seed_chunk=1)))
    pids = client.run(os.getpid)
    runner.start()
    busy = []
    while not busy and runner.is_alive():
        time.sleep(0.02)
        busy = [w for w, keys in client.processing().items() if keys and w in pids]
    assert busy, "the sweep ended before a worker could be killed"
    victim = busy[0]
    os.kill(pids[victim], signal.SIGKILL)  # mid-task: it was processing
    runner.join(timeout=300)
    assert not runner.is_alive()
    # the nanny restarted it (a fresh pid), and the scheduler reran what it was doing
    assert set(client.run(os.getpid).values()) != set(pids.values())
    report = result["report"]
    assert report.computed == report.total and not report.failed
    assert_same(sweep_load(store, "montecarlo"),
                run_montecarlo(sim, "quick", widths=[16], seeds=3))


def _markers(store: Path, kind: str) -> int:
    """The tasks finished, as the sweep counts them: a marker whose attributes a kill cut short
    is not one (counting the files saw it, and its task's data stayed masked: 2 against 1)."""
    if not (store / "sweep" / kind).exists():
        return 0
    return len(finished_tasks(str(store), kind))


def kill_and_resume(tmp_path, command, kill, depth, timeout=120):
    """Start ``command`` (a sweep), kill it once 2 tasks have finished, then finish the sweep
    here; returns (markers at the kill, the resumed report, the sim)."""
    path = write_sim(tmp_path, depth=depth, text=SMALL)
    store = tmp_path / "r.zarr"
    proc = subprocess.Popen([sys.executable, "-c", command.format(sim=path, store=store)],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while _markers(store, "montecarlo") < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the sweep never got going"
        time.sleep(0.02)
    kill(proc)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    proc.stderr.close()
    finished = _markers(store, "montecarlo")
    sim = Sim.load(path)
    with pytest.raises(SweepIncomplete, match="not finished"):
        sweep_load(store, "montecarlo")  # a reader never sees the unfinished chunks ...
    partial = sweep_load(store, "montecarlo", partial=True)  # ... unless asked, as NaN
    finite = np.isfinite(partial.log_q).any(("layer", "input"))  # one cell per task here
    assert int(finite.sum()) == finished
    total = len(tasks_of(plan_montecarlo(sim, "quick", store, widths=[16], seeds=3,
                                         seed_chunk=1).layout))
    assert partial.attrs["unfinished"].startswith(f"{total - finished} of {total} tasks")
    # a task killed between its data and its marker: its chunk is not shown, and is redone
    plan = plan_montecarlo(sim, "quick", store, widths=[16], seeds=3, seed_chunk=1)
    todo = [t for t in tasks_of(plan.layout) if not (store / "sweep" / "montecarlo" /
                                                      task_key(t) / ".zattrs").exists()]
    _placed(plan, _compute(plan, todo[-1])[0]).to_zarr(
        store, group="montecarlo", region=region_of(todo[-1]), mode="r+", consolidated=False)
    assert int(np.isfinite(sweep_load(store, "montecarlo", partial=True).log_q).any(
        ("layer", "input")).sum()) == finished
    report = sweep_run(sim, store, theory=False, widths=[16], seeds=3, seed_chunk=1)
    return finished, report, sim, store


def test_client_killed_mid_sweep_resumes_only_the_missing_chunks(tmp_path):
    command = ("from sigprop.pipeline.sweep import sweep_run; "
               "sweep_run('{sim}', '{store}', theory=False, widths=[16], seeds=3, seed_chunk=1)")
    finished, report, sim, store = kill_and_resume(tmp_path, command, lambda p: p.kill(),
                                                   depth=24)
    total = report.total["montecarlo"]
    assert 2 <= finished < total
    assert report.skipped["montecarlo"] == finished
    assert report.computed["montecarlo"] == total - finished
    assert_same(sweep_load(store, "montecarlo"),
                run_montecarlo(sim, "quick", widths=[16], seeds=3))


@pytest.mark.slow
def test_cli_on_a_local_cluster_killed_with_its_workers_then_resumed(tmp_path):
    command = ("import sys; from sigprop.pipeline.cli import app; sys.argv = ['sigprop', 'sweep', "
               "'{sim}', '-o', '{store}', '--local', '2', '--no-theory', '--width', '16', "
               "'--seeds', '3', '--seed-chunk', '1']; app()")
    finished, report, sim, store = kill_and_resume(
        tmp_path, command, lambda p: os.killpg(p.pid, signal.SIGKILL), depth=64)
    assert report.skipped["montecarlo"] == finished
    assert report.computed["montecarlo"] == report.total["montecarlo"] - finished
    assert_same(sweep_load(store, "montecarlo"),
                run_montecarlo(sim, "quick", widths=[16], seeds=3))


def test_a_task_that_raises_is_named_and_the_others_finish(tmp_path, client):
    text = TINY.replace("[0.5, 1.0, 1.5]", "[0.5, -1.0]")
    with pytest.raises(SimConfigError, match=r"tiny\.toml: sweeps .*Dense\.sigma_w=-1\.0"):
        Sim.load(write_sim(tmp_path, text=text))  # refused at load, naming the file
    # a task that raises in a worker: the same sim built past the load's checks, so that
    # sigma_w1 = -1 is refused when the task builds its net, in that task only
    sim = Sim(SimSpec.model_validate(tomllib.loads(text.replace("{depth}", "4"))), "tiny")
    store = tmp_path / "f.zarr"
    with pytest.raises(SweepFailed) as err:
        sweep_run(sim, store, client=client, theory=False, widths=[8], seeds=2)
    report = err.value.report
    assert len(report.failed) == 2 * 2 * 2  # arch x batch x alpha, at sigma_w1 = -1
    assert all("sigma_w1=-1" in where and "Dense.sigma_w=-1.0 is invalid" in why
               for where, why in report.failed)
    assert report.computed["montecarlo"] == report.total["montecarlo"] - len(report.failed)
    with pytest.raises(SweepIncomplete):
        sweep_load(store, "montecarlo")
    partial = sweep_load(store, "montecarlo", partial=True)
    assert partial.log_q.sel(sigma_w1=-1.0).isnull().all()  # nothing marked that is not done
    good = Sim.load(write_sim(tmp_path, text=TINY.replace("[0.5, 1.0, 1.5]", "[0.5]")))
    single = run_montecarlo(good, "quick", widths=[8], seeds=2)
    xr.testing.assert_identical(partial.drop_attrs().sel(sigma_w1=[0.5]), single.drop_attrs())


def test_bad_requests_are_refused_before_any_work(tmp_path):
    sim = Sim.load(write_sim(tmp_path))
    with pytest.raises(ConfigError, match=r"\.zarr"):
        sweep_run(sim, tmp_path / "out.nc")
    with pytest.raises(ConfigError, match="seed_chunk"):
        sweep_run(sim, tmp_path / "x.zarr", seed_chunk=0)
    with pytest.raises(ConfigError, match="at most one"):
        sweep_run(sim, tmp_path / "x.zarr", local=2, scheduler="tcp://nowhere:8786")
    sweep_run(sim, tmp_path / "y.zarr", montecarlo=False, grid_chunk=2)
    with pytest.raises(ConfigError, match="split"):  # resuming with other chunks: refused
        sweep_run(sim, tmp_path / "y.zarr", montecarlo=False, grid_chunk=1)
    with pytest.raises(ConfigError, match="sweep"):
        sweep_load(tmp_path / "nothing.zarr")


def test_cli_sweep_here_resume_and_export(tmp_path):
    from typer.testing import CliRunner

    from sigprop.pipeline.cli import app

    path = write_sim(tmp_path)
    args = ["sweep", str(path), "-o", str(tmp_path / "c.zarr"), "--seeds", "2", "--width", "8",
            "--export", str(tmp_path / "nc")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, args)
    assert "montecarlo: 24 chunks, 24 already done, 0 computed" in again.output
    mc = load(tmp_path / "nc" / "tiny.montecarlo.nc")
    assert mc.sizes["seed"] == 2 and mc.attrs["backend"] == "numpy"
    # an --export under a file is refused before any task runs (it was after all of them)
    (tmp_path / "file").write_text("")
    bad = [a if a != str(tmp_path / "nc") else str(tmp_path / "file" / "nc") for a in args]
    bad[3] = str(tmp_path / "d.zarr")
    refused = CliRunner().invoke(app, bad)
    assert refused.exit_code == 2 and "output" in refused.output
    assert not (tmp_path / "d.zarr").exists()


def test_a_theory_failure_on_one_grid_chunk_is_nan_with_its_reason(tmp_path):
    """A theory case (arch, batch) that fails on one chunk of its grid (here an overflow: alpha
    = 1e200 takes the stream to log q ~ 920, beyond what tanh's law can take) is NaN on all of
    its grid, with the reason recorded in attrs['unsupported'], as ``run_theory`` does; the other
    case is computed; the sweep itself succeeds (a theory failure is a result, not a crash)."""
    text = (SMALL.replace('preset = "preln"\nact = "tanh"', 'preset = "resnet"\nact = "tanh"')
            .replace("alpha = [0.1, 1.0]", "alpha = [1.0, 1e200]"))
    sim = Sim.load(write_sim(tmp_path, text=text))
    report = sweep_run(sim, tmp_path / "o.zarr", grid_chunk=1, montecarlo=False)
    assert report.failed == [] and report.computed == {"theory": 2 * 4}
    ds, single = sweep_load(tmp_path / "o.zarr", "theory"), run_theory(sim, "quick")
    from sigprop.data import unsupported_of

    # the reason is that of the first failing chunk, the whole grid's in run_theory: the same
    # op and error, but the log q it quotes is the chunk's own maximum
    reasons, single_reasons = unsupported_of(ds), unsupported_of(single)
    assert list(reasons) == list(single_reasons) == ["Pre-LN tanh (B=2)"]
    for why in (reasons["Pre-LN tanh (B=2)"], single_reasons["Pre-LN tanh (B=2)"]):
        assert "OverflowInTheory: net > layer 2 Residual > branch > [1] Act" in why
    assert_same(*(d.assign_attrs(unsupported="") for d in (ds, single)))
    assert ds.log_q.sel(arch="Pre-LN tanh").isnull().all()  # all of its grid, alpha = 1 too
    assert ds.log_q.sel(arch="Post-LN relu").notnull().all()


@pytest.mark.parametrize("missing", ["zarr", "distributed"])
def test_missing_scale_packages_give_the_install_hint(tmp_path, monkeypatch, missing):
    from typer.testing import CliRunner

    from sigprop.pipeline.cli import app

    monkeypatch.setitem(sys.modules, missing, None)  # import zarr / distributed now fails
    sim = Sim.load(write_sim(tmp_path))
    where = {"local": 1} if missing == "distributed" else {}
    with pytest.raises(ConfigError, match=r"pip install 'sigprop\[scale\]'"):
        sweep_run(sim, tmp_path / "m.zarr", montecarlo=False, **where)
    args = ["sweep", str(tmp_path / "tiny.toml"), "-o", str(tmp_path / "c.zarr"), "--no-montecarlo"]
    result = CliRunner().invoke(app, args + (["--local", "1"] if where else []))
    # one line with the hint, no traceback ("[scale]" itself is eaten by the CLI's rich markup
    # until cli.py escapes error messages: reported)
    assert result.exit_code == 2 and "not installed" in result.output, result.output
    assert "pip install" in result.output and "Traceback" not in result.output


def test_bad_overrides_and_an_unreached_scheduler_make_no_store(tmp_path, monkeypatch):
    """--width 0 or 2 (B = 2 fixed inputs need 3), --backend foo, a width given twice (its
    stack's fit of 1/N was singular in compare): exit 2 before the store is
    made (it was made, the theory ran, the Monte Carlo tasks failed, and the corrected rerun was
    refused as another sweep); a scheduler that does not answer: exit 2, no store."""
    from typer.testing import CliRunner

    from sigprop.pipeline.cli import app

    store = tmp_path / "sw.zarr"
    args = ["sweep", str(write_sim(tmp_path, text=SMALL)), "-o", str(store), "--seeds", "2"]
    for bad, says in ((["--width", "0"], "width=0"), (["--width", "2"], "width=2"),
                      (["--backend", "foo"], "backend='foo'"),
                      (["--width", "8", "--width", "8"], "distinct widths")):
        r = CliRunner().invoke(app, args + bad)
        assert r.exit_code == 2 and says in r.output and not store.exists(), r.output

    def unreachable(address):
        raise OSError(f"Timed out trying to connect to {address} after 30 s")

    monkeypatch.setattr(distributed, "Client", unreachable)
    r = CliRunner().invoke(app, args + ["--scheduler", "tcp://127.0.0.1:1"])
    assert r.exit_code == 2 and "Timed out" in r.output and not store.exists(), r.output
    with pytest.raises(ConfigError, match=r"local=0 .*worker processes"):
        sweep_run(Sim.load(tmp_path / "tiny.toml"), store, local=0)


def test_a_store_with_no_finished_task_does_not_block_another_sweep(tmp_path):
    from sigprop.pipeline.sweep import _prepare

    sim = Sim.load(write_sim(tmp_path, text=SMALL))
    store = tmp_path / "sw.zarr"
    _prepare(plan_montecarlo(sim, "quick", store, widths=[16], seeds=2), overwrite=False)
    report = sweep_run(sim, store, theory=False, widths=[8], seeds=2)  # (was: widths differ)
    assert report.computed == {"montecarlo": 8} and report.failed == []
    with pytest.raises(ConfigError, match=r"\['widths'\] differ; 8 task\(s\) finished"):
        sweep_run(sim, store, theory=False, widths=[16], seeds=2)


def test_a_store_made_by_other_code_is_not_resumed(tmp_path, monkeypatch):
    """A hostile review: a store resumed after the code changed returned the old numbers as
    finished, or old chunks beside new ones. The layout holds the code's version
    (cache.code_version, as reproduce keys its cache): other code is refused by name once a
    task finished."""
    from sigprop.pipeline import cache

    sim = Sim.load(write_sim(tmp_path, text=SMALL))
    store = tmp_path / "sw.zarr"
    assert sweep_run(sim, store, theory=False, widths=[8], seeds=2).computed == {"montecarlo": 8}
    assert sweep_run(sim, store, theory=False, widths=[8], seeds=2).computed == {"montecarlo": 0}
    # sp.load of a store said "not a sigprop dataset (attrs['kind'] = None)"
    with pytest.raises(ConfigError, match="sweep's store.*sp.sweep_load"):
        load(store)
    monkeypatch.setattr(cache, "code_version", lambda: "another")
    with pytest.raises(ConfigError, match=r"\['code'\] differ; 8 task\(s\) finished.*code"):
        sweep_run(sim, store, theory=False, widths=[8], seeds=2)


def test_a_partial_loads_unfinished_attr_names_at_most_20_tasks(tmp_path):
    """sweep_load(partial=True) names the unfinished tasks in attrs['unfinished']: their count
    of the total, then at most 20 of their names and ', ...' (24 here: 8 tasks at each of 3
    widths, none finished)."""
    from sigprop.pipeline.sweep import _prepare

    sim = Sim.load(write_sim(tmp_path, text=SMALL))
    store = tmp_path / "sw.zarr"
    _prepare(plan_montecarlo(sim, "quick", store, widths=[8, 16, 32], seeds=2), overwrite=False)
    said = sweep_load(store, "montecarlo", partial=True).attrs["unfinished"]
    head, names = said.split(": ", 1)
    assert head == "24 of 24 tasks not finished (NaN)", said
    listed = names.split(", ")
    assert len(listed) == 21 and listed[-1] == "..." and len(set(listed[:20])) == 20, said
