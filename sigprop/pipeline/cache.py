"""Content-addressed cache of the reproduce pipeline (``.sigprop-cache/``).

A step's key is the hash of everything its result depends on: the resolved sim config and the
*code version* (a hash of the sigprop sources that compute results). Presentation code (the
CLI, comparison, plotting, figure modules, the pipeline itself) is left out of the compute
version, so restyling a figure never reruns a simulation; a figure's own key hashes its module,
the shared style and the keys of the data it draws.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
DEFAULT_DIR = Path(".sigprop-cache")
# code that draws or orchestrates results without changing a number (paths under sigprop/)
PRESENTATION = ("pipeline/cli.py", "pipeline/cache.py", "pipeline/reproduce.py", "analysis", "figures")


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


class Cache:
    """Data files keyed by hash, and stamps that record which key produced which outputs."""

    def __init__(self, root=None):
        self.root = Path(root or os.environ.get("SIGPROP_CACHE") or DEFAULT_DIR)

    def data(self, step: str, name: str, key: str, suffix=".nc") -> Path:
        """Where a result of ``step`` (theory, montecarlo, ...) for ``name`` under ``key`` lives."""
        return self.root / step / f"{name}-{key}{suffix}"

    def _stamp(self, step: str) -> Path:
        return self.root / "stamps" / f"{step}.json"

    def fresh(self, step: str, key: str) -> bool:
        """True when ``step`` last ran with ``key`` and all its recorded outputs still exist."""
        path = self._stamp(step)
        if not path.is_file():
            return False
        try:
            stamp = json.loads(path.read_text())
        except json.JSONDecodeError:
            return False
        return stamp.get("key") == key and all(Path(o).exists() for o in stamp.get("outputs", []))

    def mark(self, step: str, key: str, outputs) -> None:
        """Record that ``step`` ran with ``key`` and wrote ``outputs``."""
        path = self._stamp(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "outputs": [str(o) for o in outputs]}, indent=1))

    def outputs(self, step: str) -> list[str]:
        path = self._stamp(step)
        return json.loads(path.read_text()).get("outputs", []) if path.is_file() else []
