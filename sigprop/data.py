"""Saving and loading result datasets (netCDF via h5netcdf, or zarr for ``*.zarr``).

Writes are atomic (a temporary file beside the target, fsynced, then renamed: a reader or a
rerun after a crash sees the old file or the new one, never half of one), and every dataset
carries ``attrs['checksum']``, a SHA-256 of its variables, coordinates and other attributes,
that :func:`load` verifies: an edited, truncated or corrupted file is an error naming it.

A corrupted HDF5 file can crash or hang the HDF5 library itself, before any checksum can be
read, so a netCDF file is checked before it is opened: :func:`save` writes beside it a SHA-256
of its bytes (``<name>.sha256``, the ``sha256sum`` format), which :func:`load` compares first;
a file without one (copied alone, or older) is opened first in a child process with a time
limit (:func:`_probe`), so that a crash or a hang there is an error naming the file.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import json
import numbers
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from sigprop import schema
from sigprop.errors import ConfigError, SigpropError

SCHEMA = schema.NAMES  # the dataset variables, in order (their dims etc.: sigprop.schema)
KINDS = ("theory", "montecarlo", "symbolic")
SUFFIXES = (".nc", ".zarr")
# zarr stores: format 2, which zarr-python 2 and 3 and other readers share; it specifies the
# fixed-width unicode of the string coordinates (block, arch), which format 3 does not yet
# (zarr 3 warns that such arrays "may be unreadable by other Zarr libraries")
ZARR_FORMAT = 2
CHECKSUM = "checksum"
TMP_MARK = ".tmp-"  # temporary files are named .<stem>.tmp-<pid>-<random><suffix>
HASH_SUFFIX = ".sha256"  # th.nc -> th.nc.sha256: SHA-256 of the file's bytes (netCDF only)
PROBE_TIMEOUT = 30.0  # s a child may take to open and read a netCDF file that has no hash


class CorruptData(SigpropError, ValueError):
    """A file is not a complete, unedited dataset written by :func:`save` (names the file)."""


# -- atomic files ---------------------------------------------------------------------------

def _fsync(path: Path, entries_only: bool = False) -> None:
    """Flush a file, or every file of a folder and the folder itself, to disk; with
    ``entries_only``, a folder's own entries alone (after a rename into it: the files beside
    it may be other processes' temporaries, there one moment and renamed the next)."""
    tree = path.is_dir() and not entries_only
    paths = [p for p in path.rglob("*") if p.is_file()] + [path] if tree else [path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; when the block succeeds, fsync what was written
    there and rename it onto ``path``. On any exception (Ctrl-C included) it is removed and
    ``path`` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        if path.is_dir() and not path.is_symlink():  # a directory cannot be renamed over
            old = tmp.with_name(tmp.name + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        _fsync(path.parent, entries_only=True)
    finally:
        _remove(tmp)


def stale_temporaries(folder) -> list[Path]:
    """Temporary files in ``folder`` (recursively) whose writer (the pid in their name) is
    dead: what a killed run left behind; safe to remove while other writers run."""
    folder = Path(folder)
    found = sorted(folder.rglob(f".*{TMP_MARK}*")) if folder.is_dir() else []
    return [p for p in found if not _alive(_writer_pid(p))]


def _writer_pid(path: Path) -> int:
    match = re.search(re.escape(TMP_MARK) + r"(\d+)-", path.name)
    return int(match.group(1)) if match else -1


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove :func:`stale_temporaries` of ``folder``; returns what was removed."""
    found = stale_temporaries(folder)
    for p in found:
        _remove(p)
    return found


# -- checksums ------------------------------------------------------------------------------

def _canonical(value) -> bytes:
    """Bytes of an attribute or array that survive a netCDF/zarr round trip unchanged."""
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        return arr.astype(float).tobytes() + str(arr.shape).encode()
    if arr.dtype.kind == "c":
        return arr.astype(complex).tobytes() + str(arr.shape).encode()
    return json.dumps(np.asarray(arr, dtype=object).tolist(), default=str).encode()


def checksum(ds: xr.Dataset) -> str:
    """SHA-256 of every variable and coordinate (name, dims, values) and every attribute but
    the checksum itself, in a form that a save/load round trip leaves unchanged."""
    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        var = ds.variables[name]
        for part in (name, str(var.dims)):
            h.update(part.encode())
        h.update(_canonical(var.values))
        for key in sorted(var.attrs):
            h.update(key.encode() + _canonical(var.attrs[key]))
    for key in sorted(k for k in ds.attrs if k != CHECKSUM):
        h.update(key.encode() + _canonical(ds.attrs[key]))
    return "sha256:" + h.hexdigest()


# -- save and load --------------------------------------------------------------------------

def check_output(path) -> Path:
    """Refuse, before any work, an output path that :func:`save` could not write."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError("output", str(path), f"a path ending in {' or '.join(SUFFIXES)}")
    if path.suffix == ".zarr" and importlib.util.find_spec("zarr") is None:
        raise ConfigError("output", str(path), "a .nc path (zarr is not installed: "
                          "pip install 'sigprop[scale]' to write .zarr)")
    return check_writable("output", path, folder=path.suffix == ".zarr")


def check_writable(option: str, path, folder: bool = False) -> Path:
    """Refuse, before any work, a path that ``option`` names and that cannot be written: a
    file where a folder stands or the reverse (``folder``: the path is one), or a path under
    no writable folder (a file among its parents)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ConfigError(option, str(path), "a folder path (this is a file)" if folder else
                          "a file path (this is a directory)")
    parent = next((p for p in [path, *path.parents][0 if folder else 1:] if p.exists()),
                  Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(option, str(path), f"a path in a writable folder ({parent} is not)")
    return path


def save(ds: xr.Dataset, path) -> Path:
    """Write ``ds`` losslessly and atomically, with ``attrs['checksum']``: netCDF4 (h5netcdf)
    by default, zarr when the path ends in .zarr. The file is self-describing: each variable
    takes the schema's long_name, units and description (over any it carries), and the
    dataset the CF attributes of :func:`sigprop.schema.describe` where missing."""
    path = check_output(path)
    if not isinstance(ds, xr.Dataset):
        raise ConfigError("ds", type(ds).__name__, "an xarray.Dataset of sigprop's")
    if ds.attrs.get("kind") not in KINDS:
        raise ConfigError("dataset attrs['kind']", ds.attrs.get("kind"), f"one of {KINDS}")
    slashed = [str(name) for name in ds.variables if "/" in str(name)]
    if slashed:  # (zarr dropped such a variable, so its checksum failed on load; netCDF refused)
        raise ConfigError("variable names", slashed, "names without '/' (a path separator in "
                          "netCDF and zarr)")
    loose = [str(k) for k, v in ds.variables.items()
             if v.dtype == object and not all(isinstance(x, str) for x in np.ravel(v.values))]
    if loose:  # (a None came back as a string, and failed the checksum)
        raise ConfigError("variables of object dtype", loose, "strings only (what netCDF and "
                          "zarr give back as they were)")
    attr_sets = [("dataset", ds.attrs), *((k, v.attrs) for k, v in ds.variables.items())]
    nul = [f"{where}: {k}" for where, attrs in attr_sets
           for k, v in attrs.items() if _has_nul(k) or _has_nul(v)]
    if nul:  # (h5py's raw "VLEN strings do not support embedded NULLs")
        raise ConfigError("attrs", nul, "strings without NUL characters")
    if path.suffix != ".zarr":
        for where, attrs in attr_sets:
            bad = {k: type(v).__name__ for k, v in attrs.items() if not _netcdf_attr(v)}
            if bad:  # (h5netcdf or xarray failed on it after the checks, deep in the writer)
                raise ConfigError(f"attrs of {where}", bad, "a string, a number, or a list of "
                                  "strings or of numbers in a netCDF file (JSON-encode a dict, "
                                  "str() a bool or None), or a .zarr path")
    ds = schema.describe(ds)  # a copy with the variables' and CF attributes
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != CHECKSUM}
    ds.attrs[CHECKSUM] = checksum(ds)
    return write(ds, path)


def _has_nul(v) -> bool:
    """Whether a string, or a string in a list or array, holds a NUL character."""
    return any(isinstance(x, str) and "\x00" in x for x in np.ravel(np.asarray(v, dtype=object)))


def _netcdf_attr(v) -> bool:
    """Whether netCDF gives the attribute value ``v`` back as it was: a string, a real number
    of a native dtype (not a bool; not an int past 64 bits, which h5py refused), or a list of
    strings or of such numbers (bytes came back as a string, and failed the checksum)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        items = np.ravel(np.asarray(v, dtype=object))
        return all(isinstance(x, str) for x in items) or all(
            _netcdf_attr(x) and not isinstance(x, str) for x in items)
    return isinstance(v, str) or (isinstance(v, numbers.Real) and not isinstance(v, (
        bool, np.bool_)) and np.asarray(v).dtype != object)


def write(ds: xr.Dataset, path: Path) -> Path:
    """Write ``ds`` to ``path`` (checked by :func:`check_output`) atomically: netCDF4
    (h5netcdf) with its SHA-256 beside it, or zarr when the path ends in .zarr. No check of
    what it holds (:func:`save` makes those; ``sigprop compare -o`` writes a comparison)."""
    side = hash_path(path)
    try:
        side.unlink(missing_ok=True)  # a crash before the new hash leaves none, never a stale one
        with atomic_path(path) as tmp:
            if path.suffix == ".zarr":
                ds.to_zarr(tmp, mode="w", zarr_format=ZARR_FORMAT)
            else:
                ds.to_netcdf(tmp, engine="h5netcdf")
                digest = file_hash(tmp)
        if path.suffix != ".zarr":
            with atomic_path(side) as tmp:
                tmp.write_text(f"{digest}  {path.name}\n")
    except OSError as e:
        raise ConfigError("output", str(path), f"a writable path ({e.strerror or e})") from None
    return path


def hash_path(path) -> Path:
    """The file holding the SHA-256 of a netCDF file's bytes (``th.nc.sha256``)."""
    path = Path(path)
    return path.with_name(path.name + HASH_SUFFIX)


def file_hash(path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_bytes(path: Path, verify: bool) -> None:
    """Before a netCDF file is opened here: its bytes match its hash file, or (no hash file, or
    a mismatch under ``verify=False``) a child process opened and read it all without crashing
    or hanging."""
    side = hash_path(path)
    if side.is_file():
        recorded = (side.read_text(errors="replace").split() or [""])[0]
        if recorded == file_hash(path):
            return
        if verify:
            raise CorruptData(f"{path}: the file does not match its checksum in {side.name} "
                              "(edited, truncated or corrupted since sp.save); recompute it")
    _probe(path)


_PROBE = """import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    def read(name, obj):
        dict(obj.attrs)
        if isinstance(obj, h5py.Dataset):
            obj[()]
    dict(f.attrs)
    f.visititems(read)
"""


def _probe(path: Path) -> None:
    """Open and read ``path`` with h5py in a child process: a crash (a signal), a hang (more
    than ``PROBE_TIMEOUT``) or an error there is :class:`CorruptData` here."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise CorruptData(f"{path}: not a readable sigprop dataset (the HDF5 library did not "
                          f"finish reading it within {PROBE_TIMEOUT:g} s: corrupted?)") from None
    if done.returncode < 0:
        why = f"the HDF5 library crashed reading it (signal {-done.returncode})"
    elif done.returncode:
        lines = done.stderr.strip().splitlines()
        why = lines[-1] if lines else f"exit status {done.returncode}"
    else:
        return
    raise CorruptData(f"{path}: not a readable sigprop dataset (empty, truncated, corrupted or "
                      f"not netCDF4): {why}")


def _read(path: Path) -> xr.Dataset:
    if path.suffix == ".zarr":
        return xr.open_zarr(path).load()
    with h5py.File(path, "r"):  # h5py refuses most broken files before h5netcdf opens them
        pass
    return xr.load_dataset(path, engine="h5netcdf")


def _read_or_error(path: Path) -> tuple[xr.Dataset | None, str | None]:
    """(dataset, None), or (None, why it could not be read) without h5netcdf's 'Exception
    ignored' noise when a half-opened broken file is freed."""
    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
    try:
        try:
            return _read(path), None
        except Exception as e:  # noqa: BLE001  (h5py/zarr raise many types for a broken file)
            error = f"{type(e).__name__}: {e}"
        gc.collect()  # free the half-opened file while its noise is silenced
        return None, error
    finally:
        sys.unraisablehook = hook


def load(path, verify: bool = True) -> xr.Dataset:
    """Read a dataset written by :func:`save` (fully into memory) and verify its checksum.

    ``verify=False`` reads a file without (or with a wrong) checksum, e.g. one written by an
    older sigprop; a file that is not a sigprop dataset is refused either way. A netCDF file is
    checked before it is opened (the module docstring): by its hash file, or in a child process.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError("path", str(path), "an existing .nc or .zarr file written by sp.save")
    if path.is_file():
        _check_bytes(path, verify)
    elif (path / "sweep" / ".zgroup").is_file():  # (a store's groups: "not a sigprop dataset";
        # a dataset's sweep named "sweep" is an array there, no group)
        raise ConfigError("path", str(path), "a dataset file: this is a sweep's store (sigprop "
                          "sweep); read it with sp.sweep_load(path, 'theory' or 'montecarlo')")
    ds, error = _read_or_error(path)
    if error is not None:
        raise CorruptData(f"{path}: not a readable sigprop dataset (empty, truncated, corrupted "
                          f"or not netCDF4/zarr): {error}")
    if ds.attrs.get("kind") == "comparison":  # (was called corrupt: sigprop wrote it)
        raise ConfigError("path", str(path), "a theory, Monte Carlo or symbolic dataset: this is "
                          "a comparison (sigprop compare -o, sp.compare), a table of z-scores; "
                          "open it with xarray.open_dataset")
    if ds.attrs.get("kind") not in KINDS:
        raise CorruptData(f"{path}: not a sigprop dataset (attrs['kind'] = "
                          f"{ds.attrs.get('kind')!r}; sigprop writes one of {KINDS})")
    if verify:
        stored = ds.attrs.get(CHECKSUM)
        if stored is None:
            raise CorruptData(f"{path}: has no attrs['{CHECKSUM}'] (written by an older sigprop?);"
                              " sp.load(path, verify=False) reads it unverified")
        if stored != checksum(ds):
            raise CorruptData(f"{path}: its content does not match its checksum (the file was "
                              "edited or corrupted); recompute it")
    return ds


def config_of(ds: xr.Dataset) -> dict:
    """The config a dataset was made from (``attrs['config']`` parsed)."""
    return json.loads(ds.attrs["config"])


def unsupported_of(ds: xr.Dataset) -> dict[str, str]:
    """The cases a theory dataset could not integrate (label -> reason), from
    ``attrs['unsupported']`` (written by :func:`sigprop.pipeline.runs.run_theory`)."""
    return json.loads(ds.attrs.get("unsupported", "{}"))
