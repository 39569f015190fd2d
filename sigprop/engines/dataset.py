"""The engines' result Dataset, assembled directly from arrays that are aligned by construction.

``xr.Dataset(data_vars, coords=...)`` converts, aligns and merges its arguments: ~0.3 ms for the
schema's variables and four coordinates, a third of a depth-1 ``sp.theory`` call. The engines'
arrays share their dims by construction, so :func:`build` makes the Variables and the default
pandas indexes itself and hands them to ``Dataset._construct_direct`` (xarray's constructor
below the merge; it still checks that every dim has one size). The index of a numeric dimension
coordinate of up to ``CACHED_SIZE`` values is made once per process for those values, with its
coordinate Variable, of which each dataset gets a shallow copy (a pandas index is immutable;
xarray's shallow copies share theirs too). The result is the public
constructor's Dataset (``identical``, same variable order: tests/test_dataset_build.py, which
also fails first should a new xarray change that private constructor).
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr
from xarray.indexes import PandasIndex

CACHED_SIZE = 1024  # values of a dimension coordinate whose index is kept (64 of them at most)


def build(data: dict, dims: dict, coords: dict, attrs: dict | None = None) -> xr.Dataset:
    """``xr.Dataset({k: (dims[k], v) for k, v in data.items()}, coords=coords, attrs=attrs)``.

    ``coords``: name -> 1-D values of the dimension coordinate ``name`` (indexed), or name ->
    ``(dims, values)`` (a coordinate without an index, e.g. ``block`` along ``layer``).
    """
    # fastpath: a float ndarray is kept as it is (the conversion the public constructor does)
    variables = {k: xr.Variable(dims[k], v, fastpath=isinstance(v, np.ndarray)
                                and v.dtype.kind == "f") for k, v in data.items()}
    indexes = {}
    for name, c in coords.items():
        if isinstance(c, tuple):
            variables[name] = xr.Variable(*c)
        else:
            c = np.asarray(c)
            if c.dtype.kind in "biuf" and c.size <= CACHED_SIZE:
                indexes[name], made = _index(name, c.dtype.str, c.tobytes())
                made = {k: v.copy(deep=False) for k, v in made.items()}  # (attrs per dataset)
            else:
                indexes[name] = PandasIndex(c, name)
                made = indexes[name].create_variables()
            variables.update(made)
    return xr.Dataset._construct_direct(variables, set(coords), attrs=dict(attrs or {}), indexes=indexes)


@functools.lru_cache(maxsize=64)
def _index(name: str, dtype: str, values: bytes) -> tuple[PandasIndex, dict]:
    """The index of the dimension coordinate ``name`` with these (numeric) values, and its
    coordinate Variables (:meth:`PandasIndex.create_variables`, ~10 us each: :func:`build`
    hands out shallow copies, which share the immutable index data)."""
    index = PandasIndex(np.frombuffer(values, dtype), name)
    return index, index.create_variables()
