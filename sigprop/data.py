"""Saving and loading result datasets (netCDF via h5netcdf, or zarr for ``*.zarr``)."""

from __future__ import annotations

import json
from pathlib import Path

import xarray as xr

from sigprop import schema
from sigprop.errors import ConfigError

SCHEMA = schema.NAMES  # the dataset variables, in order (their dims etc.: sigprop.schema)
KINDS = ("theory", "montecarlo", "symbolic")


def save(ds: xr.Dataset, path) -> Path:
    """Write ``ds`` losslessly: netCDF4 (h5netcdf) by default, zarr when the path ends in .zarr."""
    path = Path(path)
    if ds.attrs.get("kind") not in KINDS:
        raise ConfigError("dataset attrs['kind']", ds.attrs.get("kind"), f"one of {KINDS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zarr":
        ds.to_zarr(path, mode="w")
    else:
        ds.to_netcdf(path, engine="h5netcdf")
    return path


def load(path) -> xr.Dataset:
    """Read a dataset written by :func:`save` (fully into memory)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("path", str(path), "an existing .nc or .zarr file written by sp.save")
    if path.suffix == ".zarr":
        return xr.open_zarr(path).load()
    return xr.load_dataset(path, engine="h5netcdf")


def config_of(ds: xr.Dataset) -> dict:
    """The config a dataset was made from (``attrs['config']`` parsed)."""
    return json.loads(ds.attrs["config"])


def unsupported_of(ds: xr.Dataset) -> dict[str, str]:
    """The cases a theory dataset could not integrate (label -> reason), from
    ``attrs['unsupported']`` (written by :func:`sigprop.pipeline.runs.run_theory`)."""
    return json.loads(ds.attrs.get("unsupported", "{}"))
