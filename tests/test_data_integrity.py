"""sp.save / sp.load: atomic writes, a verified checksum, and a clear error for every bad file."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

import sigprop as sp
import sigprop.data as datamod
from sigprop.data import (
    CorruptData,
    atomic_path,
    checksum,
    file_hash,
    load,
    save,
    stale_temporaries,
)


@pytest.fixture(scope="module")
def theory_ds():
    return sp.theory(sp.presets.preln(3), sp.Inputs(q=[1.0, 2.0], corr=0.5))


@pytest.fixture()
def saved(theory_ds, tmp_path):
    return save(theory_ds, tmp_path / "th.nc")


def test_round_trip_keeps_the_checksum_and_leaves_no_temporary(saved, theory_ds):
    back = load(saved)
    assert back.attrs["checksum"] == checksum(back) == checksum(theory_ds.assign_attrs(
        checksum=back.attrs["checksum"]))
    xr.testing.assert_identical(back.drop_attrs(), theory_ds.drop_attrs())
    assert sorted(os.listdir(saved.parent)) == ["th.nc", "th.nc.sha256"]
    assert (saved.parent / "th.nc.sha256").read_text() == f"{file_hash(saved)}  th.nc\n"


def test_a_zarr_store_is_format_2_and_written_without_warnings(theory_ds, tmp_path):
    """``*.zarr`` is written as zarr format 2, which zarr-python 2 and 3 and other readers
    share; under format 3, zarr 3 warned that the string coordinates' fixed-width unicode has no
    specification there ("may be unreadable by other Zarr libraries"), and that consolidated
    metadata is not part of it."""
    zarr = pytest.importorskip("zarr")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = save(theory_ds, tmp_path / "th.zarr")
        back = load(path)
    assert zarr.open_group(path, mode="r").metadata.zarr_format == 2
    assert back.attrs["checksum"] == checksum(back)
    xr.testing.assert_identical(back.drop_attrs(), theory_ds.drop_attrs())


@pytest.fixture()
def never_opened(monkeypatch):
    """Fail if sp.load hands the file to h5py/h5netcdf in this process."""
    def opened(path):
        raise AssertionError(f"{path} was opened in-process before its bytes were verified")
    monkeypatch.setattr(datamod, "_read_or_error", opened)


def test_flipped_bytes_and_truncation_are_refused_before_opening(saved, never_opened):
    # Some flips of HDF5 metadata crash or hang the HDF5 library: sp.load compares the file's
    # bytes with th.nc.sha256 (written by sp.save) first, so such a file is never opened.
    good = saved.read_bytes()
    for offset in (0, 8, 100, len(good) // 3, len(good) // 2, len(good) - 1):
        flipped = bytearray(good)
        flipped[offset] ^= 0x01
        saved.write_bytes(bytes(flipped))
        with pytest.raises(CorruptData, match=r"th\.nc: the file does not match its checksum in "
                                              r"th\.nc\.sha256"):
            load(saved)
    saved.write_bytes(good[: len(good) - 1])
    with pytest.raises(CorruptData, match="th.nc.sha256"):
        load(saved)


def test_a_file_without_its_hash_is_probed_in_a_child(saved, never_opened):
    # copied without th.nc.sha256: a child process opens and reads it first; a truncated file
    # fails there (an error naming the file), and this process never opens it
    bad = saved.with_name("alone.nc")
    bad.write_bytes(saved.read_bytes()[:2000])
    with pytest.raises(CorruptData, match="alone.nc: not a readable sigprop dataset"):
        load(bad)


def test_every_flipped_byte_is_refused_or_leaves_the_content_unchanged(saved, theory_ds):
    # A flip (in a copy without its hash file) that h5py and the checksum both miss can only be
    # in bytes that do not hold the content (padding, free space): then the loaded values must
    # equal the saved ones. A flip that makes the HDF5 library crash or loop forever does so in
    # sp.load's child process (_probe), never here: a clean error, never a wrong result.
    data = saved.read_bytes()
    bad = saved.with_name("flipped.nc")
    refused = 0
    for offset in range(0, len(data), max(1, len(data) // 24)):
        flipped = bytearray(data)
        flipped[offset] ^= 0x04
        bad.write_bytes(bytes(flipped))
        try:
            back = load(bad)
        except CorruptData as e:
            assert str(bad) in str(e)
            refused += 1
            continue
        xr.testing.assert_identical(back.drop_attrs(), theory_ds.drop_attrs())
    assert refused > 0


def test_edited_attribute_is_refused(saved):
    with h5py.File(saved, "r+") as f:
        f.attrs["config"] = f.attrs["config"].replace('"q": [1.0, 2.0]', '"q": [1.0, 2.5]')
    with pytest.raises(CorruptData, match="does not match its checksum"):
        load(saved)
    assert load(saved, verify=False).attrs["kind"] == "theory"


def test_edited_value_is_refused(saved):
    with h5py.File(saved, "r+") as f:
        f["q"][0, 0] = f["q"][0, 0] * (1 + 1e-12)
    with pytest.raises(CorruptData, match="th.nc"):
        load(saved)


@pytest.mark.parametrize("part", ["dataset attribute", "variable attribute", "value"])
def test_an_edit_of_a_file_copied_without_its_sidecar_is_refused(saved, part):
    """Without its .sha256 sidecar (a file copied alone) the content checksum alone guards the
    file: it covers the dataset's attributes, each variable's attributes and the values."""
    datamod.hash_path(saved).unlink()
    assert load(saved).attrs["kind"] == "theory"  # (unedited: loads)
    with h5py.File(saved, "r+") as f:
        if part == "dataset attribute":
            f.attrs["config"] = f.attrs["config"].replace('"q": [1.0, 2.0]', '"q": [1.0, 2.5]')
        elif part == "variable attribute":
            key = next(k for k in f["q"].attrs if not k.startswith(("_", "DIMENSION")))
            f["q"].attrs[key] = str(f["q"].attrs[key]) + " (edited)"
        else:
            f["q"][0, 0] = f["q"][0, 0] * (1 + 1e-12)
    with pytest.raises(CorruptData, match="its content does not match its checksum"):
        load(saved)


@pytest.mark.parametrize("content", [b"", b"hello, not a dataset\n", "truncated"])
def test_text_empty_truncated_files_are_clear_errors(saved, content):
    path = saved.with_name("bad.nc")
    path.write_bytes(saved.read_bytes()[: len(saved.read_bytes()) // 2]
                     if content == "truncated" else content)
    with pytest.raises(CorruptData, match="bad.nc"):
        load(path)


def test_foreign_netcdf_and_missing_checksum(tmp_path, theory_ds):
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"x": ("t", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(CorruptData, match="not a sigprop dataset"):
        load(foreign)
    old = tmp_path / "old.nc"
    theory_ds.to_netcdf(old, engine="h5netcdf")  # as an older sigprop wrote it
    with pytest.raises(CorruptData, match="verify=False"):
        load(old)
    assert load(old, verify=False).sizes == theory_ds.sizes


def test_bad_output_paths_are_refused_before_writing(theory_ds, tmp_path):
    (tmp_path / "d.nc").mkdir()
    with pytest.raises(sp.ConfigError, match="directory"):
        save(theory_ds, tmp_path / "d.nc")
    with pytest.raises(sp.ConfigError, match=r"\.nc or \.zarr"):
        save(theory_ds, tmp_path / "out.txt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(sp.ConfigError, match="writable folder"):
        save(theory_ds, tmp_path / "file" / "out.nc")  # a folder that is a file


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_touches_no_other_file_of_its_folder(tmp_path, monkeypatch):
    """Writers share folders (the derivations write paper/generated side by side): a write
    opens only its own file and its folder, never a neighbour, which may be another writer's
    temporary that is renamed away between a listing and an open (CI once saw a derivation
    exit on exactly that FileNotFoundError). Also a folder written atomically (a zarr store)."""
    (tmp_path / ".other.tmp-1-abcd.json").write_text("another writer's")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x").write_text("x")
    opened = []
    real_open = os.open
    monkeypatch.setattr(datamod.os, "open", lambda p, *a, **k: opened.append(Path(p)) or
                        real_open(p, *a, **k))
    with atomic_path(tmp_path / "mine.json") as tmp:
        tmp.write_text("{}")
    with atomic_path(tmp_path / "store.zarr") as tmp:
        (tmp / "a").mkdir(parents=True)
        (tmp / "a" / "0").write_text("chunk")
    allowed = {tmp_path, tmp_path / "mine.json", tmp_path / "store.zarr"}
    strangers = [p for p in opened if p not in allowed and not p.relative_to(
        tmp_path).parts[0].startswith((".mine.tmp-", ".store.tmp-"))]  # (its own temporaries)
    assert not strangers, strangers
    assert (tmp_path / "store.zarr" / "a" / "0").read_text() == "chunk"


def test_temporaries_of_dead_writers_are_stale_and_live_ones_are_not(tmp_path):
    dead = tmp_path / ".out.tmp-999999999-abcd.nc"  # no such pid
    live = tmp_path / f".out.tmp-{os.getpid()}-abcd.nc"
    dead.write_text("x")
    live.write_text("x")
    assert stale_temporaries(tmp_path) == [dead]


@pytest.mark.parametrize("where", ["dataset", "q"])
@pytest.mark.parametrize("value", [True, {"a": 1}, None, ["a", 1.5], b"abc", 2**70, [1, 2**70]])
def test_an_attribute_netcdf_cannot_hold_is_refused_by_name(theory_ds, tmp_path, where, value):
    """A bool, a dict, None or a mixed list among the attributes failed deep in h5netcdf or
    xarray's writer (a second review's find), an int past 64 bits in h5py, and bytes came back
    as a string, so load called the file corrupted (a third's); each is refused by name,
    before anything is written, and a list of strings or of numbers is written as before."""
    ds = theory_ds.copy()
    (ds.attrs if where == "dataset" else ds[where].attrs)["note"] = value
    with pytest.raises(sp.ConfigError, match=f"attrs of {where}.*note"):
        sp.save(ds, tmp_path / "x.nc")
    assert not any(tmp_path.iterdir())
    for ok in (["a", "b"], [1, 2.5], "text", 3):
        (ds.attrs if where == "dataset" else ds[where].attrs)["note"] = ok
        sp.load(sp.save(ds, tmp_path / "x.nc"))


@pytest.mark.parametrize("where", ["dataset", "q"])
def test_a_list_of_bytes_attribute_is_refused_as_bytes_alone_are(theory_ds, tmp_path, where):
    """Bytes come back from netCDF as a string (load then calls the file corrupted); a list of
    them is refused by name too, not only a single value, before anything is written."""
    ds = theory_ds.copy()
    (ds.attrs if where == "dataset" else ds[where].attrs)["note"] = [b"ab", b"cd"]
    with pytest.raises(sp.ConfigError, match=f"attrs of {where}.*note"):
        sp.save(ds, tmp_path / "x.nc")
    assert not (tmp_path / "x.nc").exists()


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_a_variable_of_objects_other_than_strings_is_refused(theory_ds, tmp_path, suffix):
    """A None among a variable's strings came back as a string, and load called the file
    corrupted (a hostile review); refused by name, and a variable of strings round-trips."""
    ds = theory_ds.copy()
    ds["label"] = ("layer", np.array(["a", None] + ["c"] * (ds.sizes["layer"] - 2), dtype=object))
    with pytest.raises(sp.ConfigError, match=r"variables of object dtype=\['label'\]"):
        sp.save(ds, tmp_path / f"x{suffix}")
    ds["label"] = ("layer", np.array(["a"] * ds.sizes["layer"], dtype=object))
    assert list(sp.load(sp.save(ds, tmp_path / f"y{suffix}"))["label"].values) == list(
        ds["label"].values)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_a_name_or_attribute_no_file_can_hold_is_refused_by_name(theory_ds, tmp_path, suffix):
    """A hostile review: a variable named 'a/b' was dropped from a .zarr store, whose load
    then called the file corrupted (its checksum had counted it), and failed in xarray's
    writer for .nc; an attribute holding a NUL failed in h5py. Both are refused by name first."""
    if suffix == ".zarr":
        pytest.importorskip("zarr")
    with pytest.raises(sp.ConfigError, match=r"variable names=\['a/b'\]"):
        sp.save(theory_ds.assign({"a/b": theory_ds["q"]}), tmp_path / f"x{suffix}")
    with pytest.raises(sp.ConfigError, match=r"attrs=\['dataset: note'\]"):
        sp.save(theory_ds.assign_attrs(note="a\x00b"), tmp_path / f"x{suffix}")
    listed, on_q = theory_ds.assign_attrs(note=["a", "b\x00"]), theory_ds.copy()
    on_q["q"].attrs["note"] = "a\x00b"  # (a variable's attrs, and strings in a list)
    for ds, where in ((listed, "dataset"), (on_q, "q")):
        with pytest.raises(sp.ConfigError, match=rf"attrs=\['{where}: note'\]"):
            sp.save(ds, tmp_path / f"x{suffix}")
    assert not any(tmp_path.iterdir())
    swept = sp.theory(sp.presets.resnet(2, alpha=sp.sweep("sweep", [0.5, 1.0])),
                      sp.Inputs(q=1.0))  # (its coordinate "sweep" is no sweep store's group)
    xr.testing.assert_identical(sp.load(sp.save(swept, tmp_path / f"s{suffix}")).drop_attrs(),
                                swept.drop_attrs())


def test_check_writable_asks_the_folder_itself_for_write_and_search(tmp_path, monkeypatch):
    """check_writable(folder=True) on an existing folder asks that folder, not its parent, and
    asks for write and search (os.W_OK | os.X_OK): a cache folder that cannot be written is
    refused though its parent can. (os.access is faked: root may write anywhere.)"""
    import os

    from sigprop import data

    cache = tmp_path / "cache"
    cache.mkdir()
    real = os.access

    def access(p, mode):  # (cache: readable, not writable)
        if Path(p) == cache:
            return not mode & (os.W_OK | os.X_OK)
        return real(p, mode)

    monkeypatch.setattr(data.os, "access", access)
    with pytest.raises(sp.ConfigError, match=r"--cache-dir=.*writable folder \(.*cache is not\)"):
        data.check_writable("--cache-dir", cache, folder=True)
    other = tmp_path / "other"  # (a writable folder beside it: accepted)
    other.mkdir()
    assert data.check_writable("--cache-dir", other, folder=True) == other


def test_a_nul_in_an_attributes_name_is_refused_by_name(theory_ds, tmp_path):
    """save refuses a NUL in an attribute's name as in its value (h5py: "VLEN strings do not
    support embedded NULLs"), naming where."""
    with pytest.raises(sp.ConfigError, match=r"attrs=\['dataset: a\\x00b'\]"):
        sp.save(theory_ds.assign_attrs({"a\x00b": "x"}), tmp_path / "x.nc")
    assert not any(tmp_path.iterdir())
