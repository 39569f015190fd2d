"""sigprop.engines.dataset.build: the public constructor's Dataset, made without its merge."""

import numpy as np
import pytest
import xarray as xr

from sigprop.engines.dataset import build


def _args(S=3, L=4, B=2, grid=None):
    rng = np.random.default_rng(0)
    lead, gdims = ("seed",) if S else (), tuple(grid or {})
    gshape = tuple(len(v) for v in (grid or {}).values())
    lead_shape = (S,) if S else ()
    data = {"log_q": rng.normal(size=lead_shape + (L + 1,) + gshape + (B,)),
            "corr": rng.normal(size=lead_shape + (L + 1,) + gshape + (B, B))}
    dims = {"log_q": (*lead, "layer", *gdims, "input"),
            "corr": (*lead, "layer", *gdims, "input", "input_b")}
    coords = {"layer": np.arange(L + 1), "input": np.arange(B), "input_b": np.arange(B),
              "block": ("layer", ["input"] + ["Residual"] * L)}
    if S:
        coords = {"seed": 5 + np.arange(S), **coords}
    coords.update(grid or {})
    return data, dims, coords, {"kind": "theory", "config": "{}"}


def _public(data, dims, coords, attrs):
    return xr.Dataset({k: (dims[k], v) for k, v in data.items()}, coords=coords, attrs=attrs)


@pytest.mark.parametrize("case", [
    {"S": 3},                                                   # Monte Carlo: seed first
    {"S": 0, "grid": {"sigma_w1": np.linspace(0.5, 2.0, 5)}},    # theory with a float sweep dim
    {"S": 0, "L": 0, "B": 1},                                   # one layer, one input
    {"S": 2, "L": 2000},                                        # a layer index beyond the cache
])
def test_build_is_the_public_constructors_dataset(case):
    args = _args(**case)
    got, want = build(*args), _public(*args)
    assert got.identical(want)
    assert list(got.variables) == list(want.variables)
    assert list(got.coords) == list(want.coords) and dict(got.sizes) == dict(want.sizes)
    assert set(got.xindexes) == set(want.xindexes)
    for name in want.xindexes:
        assert got.xindexes[name].equals(want.xindexes[name])
    assert got.attrs == want.attrs and got.attrs is not args[3]


def test_cached_indexes_are_not_shared_state():
    """Two datasets with the same coordinates: renaming, selecting or editing one leaves the
    other as built (the cached index is immutable, the coordinate Variables are per dataset)."""
    a, b = build(*_args()), build(*_args())
    a["layer"].attrs["units"] = "1"
    a = a.assign_coords(layer=a.layer * 10).sel(layer=[0, 20])
    assert b.identical(_public(*_args()))
    assert list(b.layer.values) == [0, 1, 2, 3, 4] and "units" not in b["layer"].attrs


def test_inconsistent_sizes_are_refused():
    data, dims, coords, attrs = _args()
    coords["layer"] = np.arange(7)  # data have 5 layers
    with pytest.raises(ValueError):
        build(data, dims, coords, attrs)


def test_describe_copies_unless_told_not_to():
    from sigprop import schema

    data, dims, coords, attrs = _args()
    ds = build(data, dims, coords, attrs)
    described = schema.describe(ds)
    assert described is not ds and "Conventions" not in ds.attrs
    assert "long_name" not in ds["log_q"].attrs and "long_name" in described["log_q"].attrs
    same = schema.describe(ds, copy=False)
    assert same is ds and ds.attrs["Conventions"] == schema.CONVENTIONS
    assert ds["log_q"].attrs == described["log_q"].attrs
