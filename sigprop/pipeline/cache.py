"""Content-addressed, verified and locked cache of the reproduce pipeline (``.sigprop-cache/``).

A step's key is the hash of everything its result depends on. A simulation is keyed on the
resolved sim config and the *code version* (a hash of the sigprop sources that compute
results: presentation code, i.e. the CLI, comparison, plotting, figure modules and the
pipeline itself, is left out, so restyling a figure never reruns a simulation). A figure is
keyed on its :func:`import_closure` (every sigprop module it imports, transitively) and the
keys of the data it draws.

Honesty rules: every output is written atomically (:func:`sigprop.data.atomic_path`,
:func:`staged`); a step's stamp is written last, atomically, with the SHA-256 of each output;
:meth:`Cache.stale` re-hashes the outputs, so a truncated, corrupted or edited output is
"missing" and its step reruns. One run at a time holds the cache's :meth:`Cache.lock` (a
second waits); a lock left by a killed run is released by the kernel and reported as stale.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import filelock

from sigprop.data import TMP_MARK, atomic_path, remove_stale_temporaries

PACKAGE = Path(__file__).resolve().parents[1]
DEFAULT_DIR = Path(".sigprop-cache")
# code that draws or orchestrates results without changing a number (paths under sigprop/)
PRESENTATION = ("__main__.py", "pipeline/cli.py", "pipeline/cache.py", "pipeline/reproduce.py",
                "analysis", "figures")


def digest(*parts) -> str:
    """A short stable hash of JSON-able parts (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(*paths) -> str:
    """Hash of the bytes of files (missing files hash as absent)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(str(p.name).encode())
        h.update(p.read_bytes() if p.is_file() else b"<absent>")
    return h.hexdigest()[:16]


def content_hash(path) -> str | None:
    """SHA-256 of a file, or of a folder's files and their relative names; None if absent."""
    path = Path(path)
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path)).encode() if path.is_dir() else b"")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def sources(exclude=PRESENTATION) -> list[Path]:
    """The sigprop package's .py files, sorted, minus those under the excluded paths."""
    out = []
    for p in sorted(PACKAGE.rglob("*.py")):
        rel = p.relative_to(PACKAGE)
        if "__pycache__" in rel.parts or any(rel.is_relative_to(e) for e in exclude):
            continue
        out.append(p)
    return out


def code_version(exclude=PRESENTATION) -> str:
    """Hash of the sources that compute results (``exclude=()``: the whole package)."""
    h = hashlib.sha256()
    for p in sources(exclude):
        h.update(str(p.relative_to(PACKAGE)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _module_file(module: str) -> Path | None:
    """The source file of a sigprop module name, or None when there is none."""
    base = PACKAGE.parent.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(path: Path):
    """sigprop modules a file imports anywhere (lazy imports in functions too); for ``from M
    import x``, ``M.x`` when it is a module, else ``M``."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "sigprop")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "sigprop":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield sub if _module_file(sub) else node.module


def import_closure(module: str) -> list[Path]:
    """Source files of ``module`` and of every sigprop module it imports, transitively.

    A module reached is followed through all its imports; the ``__init__`` of a package that
    is only passed through (``from sigprop.analysis import plots``) is not, so the closure of a
    figure is the code that can change what it draws, not the whole package.
    """
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen[name] = path
        todo.extend(_imported_modules(path))
    return sorted(seen.values())


def closure_digest(module: str) -> str:
    """Hash of the sources of :func:`import_closure` (names relative to the package)."""
    h = hashlib.sha256()
    for p in import_closure(module):
        h.update(str(p.relative_to(PACKAGE)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def staged(folder):
    """Yield a temporary folder inside ``folder``; when the block succeeds, every file written
    there is fsynced and renamed into ``folder`` (on an exception nothing is moved)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".staging{TMP_MARK}{os.getpid()}-", dir=folder))
    try:
        yield tmp
        for f in sorted(tmp.iterdir()):
            with atomic_path(folder / f.name) as target:
                os.replace(f, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Cache:
    """Data files keyed by hash, and stamps that record which key produced which outputs
    (with their content hashes), under one lock per cache directory."""

    def __init__(self, root=None):
        self.root = Path(root or os.environ.get("SIGPROP_CACHE") or DEFAULT_DIR)

    def data(self, step: str, name: str, key: str, suffix=".nc") -> Path:
        """Where a result of ``step`` (theory, montecarlo, ...) for ``name`` under ``key`` lives."""
        return self.root / step / f"{name}-{key}{suffix}"

    def _stamp(self, step: str) -> Path:
        return self.root / "stamps" / f"{step}.json"

    def _read_stamp(self, step: str) -> dict | None:
        try:
            stamp = json.loads(self._stamp(step).read_text())
        except (OSError, ValueError):
            return None
        return stamp if isinstance(stamp, dict) else None

    def stale(self, step: str, key: str) -> str | None:
        """Why ``step`` must run under ``key`` (never run, other key, an output missing or not
        matching its recorded hash), or None when it is fresh."""
        stamp = self._read_stamp(step)
        if stamp is None:
            return "first run"
        if stamp.get("key") != key:
            return "its inputs or code changed"
        outputs = stamp.get("outputs")
        if not isinstance(outputs, dict):
            return "its stamp has no output hashes"
        for path, recorded in outputs.items():
            actual = content_hash(path)
            if actual is None:
                return f"output {path} is missing"
            if actual != recorded:
                return f"output {path} does not match its recorded hash (truncated or corrupted)"
        return None

    def fresh(self, step: str, key: str) -> bool:
        """True when ``step`` last ran with ``key`` and every recorded output is intact."""
        return self.stale(step, key) is None

    def mark(self, step: str, key: str, outputs) -> None:
        """Record, atomically and after its outputs, that ``step`` ran with ``key`` and wrote
        ``outputs`` (each with its SHA-256)."""
        hashes = {str(o): content_hash(o) for o in outputs}
        missing = [o for o, h in hashes.items() if h is None]
        if missing:
            raise FileNotFoundError(f"step {step!r} did not write {missing}")
        with atomic_path(self._stamp(step)) as tmp:
            tmp.write_text(json.dumps({"key": key, "outputs": hashes}, indent=1))

    def forget(self, step: str) -> None:
        """Remove the stamp of ``step`` (it will run next time)."""
        self._stamp(step).unlink(missing_ok=True)

    def outputs(self, step: str) -> list[str]:
        stamp = self._read_stamp(step) or {}
        return list(stamp.get("outputs") or [])

    @contextlib.contextmanager
    def lock(self, log=print, timeout: float = -1):
        """Hold this cache directory's lock for the block (another run waits, saying for whom).

        The lock is an OS file lock (``filelock``): the kernel frees it when its holder dies,
        so a lock left by a killed run never blocks; its owner record, left behind, is reported
        and the killed run's temporary files are removed.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        owner = self.root / "lock.owner"
        lock = filelock.FileLock(self.root / "lock")
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            log(f"waiting for the run that holds {self.root}/lock ({_read(owner)})")
            lock.acquire(timeout=timeout)
        try:
            if owner.exists():
                log(f"stale lock of a killed run ({_read(owner)}) released")
            remove_stale_temporaries(self.root)
            owner.write_text(f"pid {os.getpid()}, started "
                             f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}")
            yield
        finally:
            owner.unlink(missing_ok=True)
            lock.release()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "owner unknown"
