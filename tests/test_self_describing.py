"""Self-describing datasets: every variable carries its long_name, units and description from
sigprop.schema, and every dataset the CF attributes Conventions, title, history and source."""

from importlib import metadata

import pytest

import sigprop as sp
from sigprop import schema
from sigprop.pipeline.config import Sim
from sigprop.pipeline.runs import run_montecarlo, run_theory

TOML = """
description = "Pre-LN at depth 2, to check the attributes"
[[arch]]
preset = "preln"
[profiles.quick]
depth = 2
widths = [8]
seeds = 2
"""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attrs")
    net, x0 = sp.presets.preln(depth=2), sp.Inputs(q=[1.0, 2.0], corr=0.5)
    th, mc = sp.theory(net, x0), sp.simulate(net, x0, width=8, seeds=2)
    path = tmp / "sim.toml"
    path.write_text(TOML)
    sim = Sim.load(path)
    return {"theory": th, "montecarlo": mc, "saved": sp.load(sp.save(th, tmp / "th.nc")),
            "pipeline theory": run_theory(sim, "quick"),
            "pipeline montecarlo": run_montecarlo(sim, "quick", backend="numpy")}


@pytest.mark.parametrize("which", ["theory", "montecarlo", "saved", "pipeline theory",
                                   "pipeline montecarlo"])
def test_every_variable_and_dataset_describes_itself(datasets, which):
    ds = datasets[which]
    assert set(schema.NAMES) <= set(ds.data_vars)
    for name in ds.data_vars:
        v = schema.VARIABLES[name]
        assert {k: ds[name].attrs.get(k) for k in ("long_name", "units", "description")} == \
            {"long_name": v.long_name, "units": v.units, "description": v.description}, name
    assert ds.attrs["Conventions"].startswith("CF-")
    assert ds.attrs["source"].startswith(f"sigprop {metadata.version('sigprop')} ")
    assert ds.attrs["history"].startswith(ds.attrs["created_at"] + " ")
    assert ds.attrs["title"]
    if which.startswith("pipeline"):
        assert ds.attrs["title"] == "Pre-LN at depth 2, to check the attributes"


def test_describe_keeps_what_is_there_and_copies():
    th = sp.theory(sp.presets.preln(depth=1), sp.Inputs(q=1.0))
    th.attrs["title"] = "mine"
    del th["q"].attrs["long_name"]
    out = schema.describe(th)
    assert out.attrs["title"] == "mine" and out["q"].attrs["long_name"]
    assert "long_name" not in th["q"].attrs  # the argument is not modified
    assert schema.describe(th, title="given").attrs["title"] == "given"


def test_save_describes_a_dataset_made_elsewhere(tmp_path):
    th = sp.theory(sp.presets.preln(depth=1), sp.Inputs(q=1.0))
    bare = th.copy()
    for name in bare.data_vars:
        bare[name].attrs = {}
    bare.attrs = {k: v for k, v in th.attrs.items()
                  if k not in ("Conventions", "title", "history", "source")}
    loaded = sp.load(sp.save(bare, tmp_path / "bare.nc"))
    assert loaded["grad_q"].attrs["long_name"] == schema.VARIABLES["grad_q"].long_name
    assert {"Conventions", "title", "history", "source"} <= set(loaded.attrs)
